//! The engine of the node's request streams, `Cache.Pipeline` ([`super::pipeline`]) and
//! `Internal.ReplicaStream` ([`super::replica_stream`]): tagged requests arrive in messages,
//! each runs concurrently through its unary handler, and the answers leave in messages. What
//! differs between the two (the messages, how a request runs, the error answer, metrics) is a
//! [`Protocol`]; the reading, the backpressure and the byte budget are here, once.
//!
//! The response stream does the work when HTTP/2 polls it (no task or channel of its own). Each
//! poll:
//! - sends first the answers left over from the last message, and reads nothing until they are
//!   out;
//! - otherwise reads the request messages that arrived, while fewer than
//!   [`Protocol::MAX_PENDING`] requests are started and not answered (backpressure: a peer that
//!   stops reading answers also stops this node reading its requests), and starts every request
//!   in arrival order; a message of more than [`Protocol::MAX_REQUESTS_PER_MESSAGE`] requests is
//!   not run: the answers already made are sent, then the stream ends with the protocol's status;
//! - answers a message before reading the next, so answers never wait for later input;
//! - returns the answers made as one message within the byte budget (the node's
//!   `max_message_bytes`, less room for the message's own fields): answers that would push it over
//!   wait for the next message, and an answer over the budget on its own is replaced by the
//!   protocol's error answer for its request ([`Protocol::oversized`]).
//!
//! When the node shuts down the stream stops reading, answers what it started, and ends.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Status, Streaming};

/// A request started and not yet answered.
pub(super) type Pending<A> = Pin<Box<dyn Future<Output = A> + Send>>;

/// What one kind of request stream makes of its messages.
pub(super) trait Protocol: Unpin {
    /// One message of requests.
    type Message: Send + 'static;
    /// One request of a message.
    type Request;
    /// One request's answer.
    type Answer: prost::Message + Unpin;
    /// One message of answers.
    type Output;

    /// Requests one stream may have started and not yet answered before it stops reading.
    const MAX_PENDING: usize;
    /// Most requests in one message; more ends the stream with [`Protocol::too_many`].
    const MAX_REQUESTS_PER_MESSAGE: usize;

    /// The message's requests.
    fn requests(message: Self::Message) -> Vec<Self::Request>;

    /// A message of `requests` requests was read (before its limit is checked).
    fn read(&self, _requests: usize) {}

    /// The status that ends a stream whose message had `requests` requests, over the limit.
    fn too_many(&self, requests: usize) -> Status;

    /// The request stream failed with `status` (a message over the size limit, a broken stream):
    /// the status the stream ends with once the answers already made are out, if any.
    fn read_failed(&self, status: Status) -> Option<Status>;

    /// Starts one request.
    fn dispatch(&self, request: Self::Request) -> Pending<Self::Answer>;

    /// The error answer that replaces `answer`, `size` bytes encoded, over `max_bytes` alone.
    fn oversized(answer: &Self::Answer, size: usize, max_bytes: usize) -> Self::Answer;

    /// The message that carries `answers`.
    fn output(&self, answers: Vec<Self::Answer>) -> Self::Output;
}

/// The response stream of one request stream of protocol `P`.
pub(super) struct Answers<P: Protocol> {
    protocol: P,
    inbound: Streaming<P::Message>,
    /// Most bytes of answers in one message (the node's message limit, less room).
    max_bytes: usize,
    /// Answers made but not sent: they did not fit in the last message.
    waiting: VecDeque<P::Answer>,
    /// Requests started and not yet answered.
    pending: FuturesUnordered<Pending<P::Answer>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Whether request messages are still read: false once the peer closed its side, the
    /// stream failed, the peer broke a limit, or the node is shutting down.
    reading: bool,
    /// The status that ends the stream once the answers already made are sent.
    error: Option<Status>,
    /// The stream ended with an error status; nothing more is sent.
    failed: bool,
}

impl<P: Protocol> Answers<P> {
    /// The answers of `inbound`'s requests, in messages within `max_message_bytes`; it stops
    /// reading once `shutdown` is cancelled.
    pub(super) fn new(
        protocol: P,
        inbound: Streaming<P::Message>,
        shutdown: CancellationToken,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            protocol,
            inbound,
            // Room for the message's own fields beside its answers.
            max_bytes: max_message_bytes.saturating_sub(64).max(1),
            waiting: VecDeque::new(),
            pending: FuturesUnordered::new(),
            shutdown: Box::pin(shutdown.cancelled_owned()),
            reading: true,
            error: None,
            failed: false,
        }
    }
}

impl<P: Protocol> Stream for Answers<P> {
    type Item = Result<P::Output, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        if this.waiting.is_empty()
            && let Some(status) = this.error.take()
        {
            // Requests still running are dropped with the stream: they are not answered.
            this.failed = true;
            return Poll::Ready(Some(Err(status)));
        }
        // Answers left over from the last message go first, and nothing is read until they are
        // out (backpressure).
        let carried = !this.waiting.is_empty();
        let mut answers: Vec<P::Answer> = this.waiting.drain(..).collect();
        while let Poll::Ready(Some(answer)) = this.pending.poll_next_unpin(cx) {
            answers.push(answer);
        }
        if this.reading && this.shutdown.as_mut().poll(cx).is_ready() {
            this.reading = false;
        }
        while this.reading && !carried && this.pending.len() < P::MAX_PENDING {
            let message = match this.inbound.poll_next_unpin(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(message))) => message,
                Poll::Ready(None) => {
                    this.reading = false;
                    break;
                }
                Poll::Ready(Some(Err(status))) => {
                    this.reading = false;
                    this.error = this.protocol.read_failed(status);
                    break;
                }
            };
            let requests = P::requests(message);
            this.protocol.read(requests.len());
            if requests.len() > P::MAX_REQUESTS_PER_MESSAGE {
                // None of this message runs; the answers already made go out, then the error.
                this.error = Some(this.protocol.too_many(requests.len()));
                this.reading = false;
                break;
            }
            answers.reserve(requests.len());
            for request in requests {
                let mut future = this.protocol.dispatch(request);
                match future.as_mut().poll(cx) {
                    Poll::Ready(answer) => answers.push(answer),
                    Poll::Pending => this.pending.push(future),
                }
            }
            // Answer this message before reading the next, so answers never wait for input.
            if !answers.is_empty() {
                break;
            }
        }
        if !answers.is_empty() {
            let answers = fit(this.max_bytes, answers, &mut this.waiting, P::oversized);
            return Poll::Ready(Some(Ok(this.protocol.output(answers))));
        }
        if let Some(status) = this.error.take() {
            this.failed = true;
            return Poll::Ready(Some(Err(status)));
        }
        if !this.reading && this.pending.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// The answers of `answers` that fit in `max_bytes`, in order (at least one); the rest go to
/// `waiting`. An answer over `max_bytes` alone is replaced by `oversized(answer, its size,
/// max_bytes)`.
pub(super) fn fit<A: prost::Message>(
    max_bytes: usize,
    answers: Vec<A>,
    waiting: &mut VecDeque<A>,
    oversized: impl Fn(&A, usize, usize) -> A,
) -> Vec<A> {
    let mut batch = Vec::with_capacity(answers.len());
    let mut bytes = 0usize;
    let mut answers = answers.into_iter();
    for mut answer in answers.by_ref() {
        let mut size = prost::encoding::message::encoded_len(1, &answer);
        if size > max_bytes {
            answer = oversized(&answer, size, max_bytes);
            size = prost::encoding::message::encoded_len(1, &answer);
        }
        if !batch.is_empty() && bytes.saturating_add(size) > max_bytes {
            waiting.push_back(answer);
            break;
        }
        bytes = bytes.saturating_add(size);
        batch.push(answer);
    }
    waiting.extend(answers);
    batch
}
