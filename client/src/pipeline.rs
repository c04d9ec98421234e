//! The pipelined per-connection stream (the fast path).
//!
//! Every `Cache` request to a node travels as a tagged entry of a long-lived bidirectional
//! `Cache.Pipeline` stream instead of a unary call of its own. Batching is opportunistic: a caller
//! queues its request and wakes the stream; when HTTP/2 asks the stream for its next message,
//! everything queued by then leaves as one batch. When nothing is in flight a request therefore
//! goes out at once, and while the connection is busy new requests gather into the next batch.
//! There is no timer and no added latency when idle.
//!
//! A stream (a [`Link`]) is opened on first use and replaced after it fails. When it fails,
//! queued requests that never left fail as not sent (the router may send them elsewhere), and
//! requests already handed to HTTP/2 fail as broken (they may have been applied). A node that
//! does not know `Pipeline` (UNIMPLEMENTED) makes the pool fall back to unary calls.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, task::AtomicWaker};
use ringcache_proto::{
    CURRENT_VERSION_METADATA,
    v1::{
        self as pb, PipelineRequest, PipelineRequestBatch, PipelineResponseBatch,
        cache_client::CacheClient, pipeline_request::Op, pipeline_response::Result as Answer,
    },
};
use tokio::{sync::oneshot, time::Instant};
use tonic::{Code, Status, metadata::MetadataValue};

use crate::{
    Error,
    conn::{Failure, FailureClass, Reply},
    observe,
    security::NodeChannel,
};

/// Most requests in one batch. Nodes take up to 4,096 requests per pipeline batch whatever their
/// settings (`max_batch_keys` bounds the keys of one multi-key request, not a batch); 256 keeps a
/// batch's encoding and its answers small enough to leave without waiting for the others.
const MAX_BATCH_REQUESTS: usize = 256;

/// A batch stops growing before its requests' encoded size would pass this, or the nodes'
/// message limit when smaller (the `max_batch_bytes` of each call); a bigger request still
/// travels, alone, so a batch never exceeds the larger of the cap and its one request (which the
/// router keeps within the nodes' message limit).
pub(crate) const MAX_BATCH_BYTES: usize = 1 << 20;

/// A `Cache` request that can travel on the pipeline, and its answer.
pub(crate) trait PipelineOp {
    /// The unary answer type.
    type Response;
    /// The request as a pipeline entry.
    fn into_op(self) -> Op;
    /// The answer of this request type, `None` if the node answered another type.
    fn from_answer(answer: Answer) -> Option<Self::Response>;
}

macro_rules! pipeline_ops {
    ($($req:ident => $resp:ident, $variant:ident;)*) => {$(
        impl PipelineOp for pb::$req {
            type Response = pb::$resp;
            fn into_op(self) -> Op {
                Op::$variant(self)
            }
            fn from_answer(answer: Answer) -> Option<pb::$resp> {
                match answer {
                    Answer::$variant(response) => Some(response),
                    _ => None,
                }
            }
        }
    )*};
}

pipeline_ops! {
    GetRequest => GetResponse, Get;
    SetRequest => SetResponse, Set;
    DeleteRequest => DeleteResponse, Delete;
    MGetRequest => MGetResponse, MGet;
    MSetRequest => MSetResponse, MSet;
    MDeleteRequest => MDeleteResponse, MDelete;
    IncrRequest => IncrResponse, Incr;
    CompareAndSetRequest => CompareAndSetResponse, CompareAndSet;
    ExpireRequest => ExpireResponse, Expire;
    PersistRequest => PersistResponse, Persist;
    TtlRequest => TtlResponse, Ttl;
    UpdateRequest => UpdateResponse, Update;
}

/// The outcome of a pipelined request.
pub(crate) enum Outcome<T> {
    /// The node answered (or the request failed in a way that says so).
    Done(Reply<T>),
    /// The node does not serve `Pipeline`: the request was not run; send it as a unary call.
    Unsupported,
}

/// What a request waiting on a stream receives: the answer with the node's topology digest, or
/// why the stream closed and whether the request had been handed to HTTP/2 by then.
type Delivery = Result<(Answer, u64), (Closed, bool)>;

/// Why a stream ended, as seen by one request on it.
#[derive(Clone, Debug)]
enum Closed {
    /// The node does not serve `Pipeline`.
    Unsupported,
    /// The stream failed with this status (a transport error or the node's stream-level status).
    Status(Status),
    /// The node ended the stream (it is shutting down).
    Ended,
    /// The pool was dropped.
    Dropped,
}

/// The pipeline of one pooled connection: the current stream, opened on demand.
pub(crate) struct Pipeline {
    cache: CacheClient<NodeChannel>,
    addr: String,
    link: Mutex<Option<Arc<Link>>>,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(link) = self
            .link
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            link.close(&Closed::Dropped);
        }
    }
}

impl Pipeline {
    pub(crate) fn new(cache: CacheClient<NodeChannel>, addr: &str) -> Self {
        Pipeline {
            cache,
            addr: addr.to_owned(),
            link: Mutex::new(None),
        }
    }

    /// Sends one request on the stream and waits for its answer, at most `timeout`. Batches
    /// of the stream stay within `max_batch_bytes` (at most [`MAX_BATCH_BYTES`]).
    pub(crate) async fn call<Req: PipelineOp>(
        &self,
        message: Req,
        timeout: Duration,
        max_batch_bytes: usize,
    ) -> Outcome<Req::Response> {
        // One clock read serves both the deadline and the elapsed time of a failure.
        let started = Instant::now();
        let deadline = started + timeout;
        let (reply, answer) = oneshot::channel();
        let mut queued = Queued {
            op: message.into_op(),
            reply,
        };
        // A stream that closed since it was last used is replaced, once.
        let mut attempts = 0;
        loop {
            let link = self.current_link();
            link.max_batch_bytes
                .store(max_batch_bytes.clamp(1, MAX_BATCH_BYTES), Ordering::Relaxed);
            match link.push(queued) {
                Ok(()) => break,
                Err(back) => {
                    self.forget(&link);
                    attempts += 1;
                    if attempts == 2 {
                        // Even a fresh stream closed at once: the request never left.
                        return Outcome::Done(Reply {
                            digest: None,
                            result: Err(Failure::not_sent(Error::Unavailable(format!(
                                "not sent: the pipeline stream to {} keeps closing",
                                self.addr
                            )))),
                        });
                    }
                    queued = back;
                }
            }
        }
        let delivery = match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => return Outcome::Done(timed_out(timeout)),
            // The request was dropped without an answer: only a closing stream does that, and
            // it answers everything it holds first, so this is a stream we could not even use.
            Ok(Err(_)) => Err((Closed::Ended, false)),
            Ok(Ok(delivery)) => delivery,
        };
        Outcome::Done(match delivery {
            Ok((answer, digest)) => Reply {
                digest: Some(digest),
                result: match answer {
                    Answer::Error(error) => Err(Failure::from_status(
                        &status_of(error),
                        started.elapsed(),
                        timeout,
                    )),
                    answer => Req::from_answer(answer).ok_or_else(|| Failure {
                        error: Error::Protocol(format!(
                            "{} answered a pipelined request with another type",
                            self.addr
                        )),
                        class: FailureClass::Answered,
                    }),
                },
            },
            Err((Closed::Unsupported, _)) => return Outcome::Unsupported,
            Err((closed, sent)) => Reply {
                digest: None,
                result: Err(self.failure(closed, sent, started, timeout)),
            },
        })
    }

    /// The open stream, or a new one. A stream that closed since is found out by
    /// [`Link::push`], and the caller then [`forget`](Self::forget)s it and asks again.
    fn current_link(&self) -> Arc<Link> {
        let mut current = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = current.as_ref() {
            return Arc::clone(link);
        }
        let link = Link::open(self.cache.clone());
        *current = Some(Arc::clone(&link));
        link
    }

    /// Drops `link` as the current stream if it still is.
    fn forget(&self, link: &Arc<Link>) {
        let mut current = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, link)) {
            *current = None;
        }
    }

    /// The failure of a request on a stream that closed; `sent` when the request had been
    /// handed to HTTP/2.
    fn failure(&self, closed: Closed, sent: bool, started: Instant, timeout: Duration) -> Failure {
        let addr = &self.addr;
        match closed {
            // Classified like a unary call's status: a connect error means nothing left. A
            // refusal of the credentials or the role (the node's answer to the stream itself)
            // is final even for requests that never left: another node would refuse them too.
            Closed::Status(status)
                if sent
                    || matches!(
                        status.code(),
                        Code::Unauthenticated | Code::PermissionDenied
                    ) =>
            {
                Failure::from_status(&status, started.elapsed(), timeout)
            }
            Closed::Status(status) => Failure::not_sent(Error::Unavailable(format!(
                "not sent: the pipeline stream to {addr} failed: {}",
                status.message()
            ))),
            _ if sent => Failure {
                error: Error::Unavailable(format!(
                    "{addr} closed the pipeline stream before answering"
                )),
                class: FailureClass::Broken,
            },
            _ => Failure::not_sent(Error::Unavailable(format!(
                "not sent: {addr} closed the pipeline stream"
            ))),
        }
    }
}

fn timed_out<T>(timeout: Duration) -> Reply<T> {
    Reply {
        digest: None,
        result: Err(Failure {
            error: Error::Timeout {
                after: Some(timeout),
            },
            class: FailureClass::TimedOut,
        }),
    }
}

/// A failed request's answer as the status its unary call would have returned.
fn status_of(error: pb::PipelineError) -> Status {
    let mut status = Status::new(Code::from(error.code), error.message);
    if let Some(version) = error.current_version {
        status
            .metadata_mut()
            .insert(CURRENT_VERSION_METADATA, MetadataValue::from(version));
    }
    status
}

/// A request waiting to leave.
struct Queued {
    op: Op,
    reply: oneshot::Sender<Delivery>,
}

/// One `Pipeline` stream: the queue of requests not yet sent, the requests sent and not yet
/// answered, and the task reading the answers.
struct Link {
    state: Mutex<LinkState>,
    /// Wakes the request stream when a request is queued or the link closes.
    waker: AtomicWaker,
    /// The size batches stop growing at: [`MAX_BATCH_BYTES`], or less when the nodes' message
    /// limit is smaller (set by each call).
    max_batch_bytes: AtomicUsize,
    /// Whether the link is a real stream, counted in the open streams gauge until it closes.
    counted: bool,
}

#[derive(Default)]
struct LinkState {
    queue: VecDeque<Queued>,
    in_flight: HashMap<u64, oneshot::Sender<Delivery>>,
    next_tag: u64,
    closed: Option<Closed>,
    /// HTTP/2 dropped the request side: nothing more can be sent; the reading task is about to
    /// close the link with the reason.
    outbound_gone: bool,
}

impl Link {
    /// Opens the stream on `cache`; the task reading answers runs until the stream ends.
    fn open(mut cache: CacheClient<NodeChannel>) -> Arc<Link> {
        let link = Link::with_gauge(true);
        let outbound = Outbound {
            link: Arc::clone(&link),
        };
        let reader = Arc::clone(&link);
        tokio::spawn(async move {
            let mut inbound = match cache.pipeline(outbound).await {
                Ok(response) => response.into_inner(),
                Err(status) if status.code() == Code::Unimplemented => {
                    return reader.close(&Closed::Unsupported);
                }
                Err(status) => return reader.close(&Closed::Status(status)),
            };
            loop {
                match inbound.message().await {
                    Ok(Some(batch)) => reader.deliver(batch),
                    Ok(None) => return reader.close(&Closed::Ended),
                    Err(status) => return reader.close(&Closed::Status(status)),
                }
            }
        });
        link
    }

    /// A link with nothing queued and no stream behind it yet.
    #[cfg(test)]
    fn new() -> Arc<Link> {
        Link::with_gauge(false)
    }

    /// A link; `counted` ones count in the open streams gauge until they close.
    fn with_gauge(counted: bool) -> Arc<Link> {
        if counted {
            observe::stream_opened(true);
        }
        Arc::new(Link {
            state: Mutex::new(LinkState::default()),
            waker: AtomicWaker::new(),
            max_batch_bytes: AtomicUsize::new(MAX_BATCH_BYTES),
            counted,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether no more requests can be sent on the stream.
    #[cfg(test)]
    fn is_closed(&self) -> bool {
        let state = self.lock();
        state.closed.is_some() || state.outbound_gone
    }

    /// Queues a request; gives it back when the stream has closed.
    // The Err is the request itself, handed back (moved, not copied) on the rare closed
    // stream so the caller can queue it on a fresh one; boxing it would allocate on every push.
    #[allow(clippy::result_large_err)]
    fn push(&self, queued: Queued) -> Result<(), Queued> {
        {
            let mut state = self.lock();
            if state.closed.is_some() || state.outbound_gone {
                return Err(queued);
            }
            state.queue.push_back(queued);
        }
        self.waker.wake();
        Ok(())
    }

    /// Hands each answer to its request.
    fn deliver(&self, batch: PipelineResponseBatch) {
        let digest = batch.topology_digest;
        let mut ready = Vec::with_capacity(batch.responses.len());
        {
            let mut state = self.lock();
            for response in batch.responses {
                let Some(answer) = response.result else {
                    continue;
                };
                if let Some(reply) = state.in_flight.remove(&response.tag) {
                    ready.push((reply, answer));
                }
            }
        }
        for (reply, answer) in ready {
            // The caller may have timed out and gone: nothing to do then.
            let _ = reply.send(Ok((answer, digest)));
        }
    }

    /// Closes the stream: queued requests learn it never left, sent ones that it broke.
    fn close(&self, why: &Closed) {
        let (queue, in_flight) = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(why.clone());
            (
                std::mem::take(&mut state.queue),
                std::mem::take(&mut state.in_flight),
            )
        };
        if self.counted {
            observe::stream_opened(false);
        }
        self.waker.wake();
        for queued in queue {
            let _ = queued.reply.send(Err((why.clone(), false)));
        }
        for (_, reply) in in_flight {
            let _ = reply.send(Err((why.clone(), true)));
        }
    }
}

/// The request side of a stream: each poll takes everything queued as one batch.
struct Outbound {
    link: Arc<Link>,
}

impl Stream for Outbound {
    type Item = PipelineRequestBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.link.waker.register(cx.waker());
        let mut state = self.link.lock();
        if state.closed.is_some() {
            return Poll::Ready(None);
        }
        if state.queue.is_empty() {
            return Poll::Pending;
        }
        let mut requests = Vec::with_capacity(state.queue.len().min(MAX_BATCH_REQUESTS));
        let max_bytes = self.link.max_batch_bytes.load(Ordering::Relaxed);
        let mut bytes = 0usize;
        while requests.len() < MAX_BATCH_REQUESTS {
            let Some(next) = state.queue.front() else {
                break;
            };
            let tag = state.next_tag;
            let size = prost::encoding::message::encoded_len(1, &PipelineRequest { tag, op: None })
                + next.op.encoded_len();
            if !requests.is_empty() && bytes.saturating_add(size) > max_bytes {
                break;
            }
            let Some(queued) = state.queue.pop_front() else {
                break;
            };
            state.next_tag = state.next_tag.wrapping_add(1);
            state.in_flight.insert(tag, queued.reply);
            bytes = bytes.saturating_add(size);
            requests.push(PipelineRequest {
                tag,
                op: Some(queued.op),
            });
        }
        Poll::Ready(Some(PipelineRequestBatch { requests }))
    }
}

impl Drop for Outbound {
    /// HTTP/2 dropped the request side (the stream failed or finished): nothing more can leave.
    /// What is queued waits for the reading task, which closes the link with the reason.
    fn drop(&mut self) {
        self.link.lock().outbound_gone = true;
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::{FutureExt, StreamExt};
    use pb::{GetRequest, GetResponse, PipelineResponse};
    use prost::Message;

    use super::*;

    fn queued(key: &'static str) -> (Queued, oneshot::Receiver<Delivery>) {
        let (reply, answer) = oneshot::channel();
        let op = GetRequest {
            key: key.into(),
            consistency: 0,
            tracking_id: 0,
        }
        .into_op();
        (Queued { op, reply }, answer)
    }

    fn outbound(link: &Arc<Link>) -> Outbound {
        Outbound {
            link: Arc::clone(link),
        }
    }

    #[test]
    fn everything_queued_leaves_as_one_batch_and_answers_find_their_request() {
        let link = Link::new();
        let mut stream = outbound(&link);
        assert!(stream.next().now_or_never().is_none(), "nothing queued yet");

        let mut answers = Vec::new();
        for key in ["a", "b", "c"] {
            let (request, answer) = queued(key);
            assert!(link.push(request).is_ok());
            answers.push(answer);
        }
        let batch = stream.next().now_or_never().flatten().expect("a batch");
        let tags: Vec<u64> = batch.requests.iter().map(|r| r.tag).collect();
        assert_eq!(tags, [0, 1, 2]);
        assert!(stream.next().now_or_never().is_none(), "the queue is empty");

        // Answers may come in any order, in any batches.
        link.deliver(PipelineResponseBatch {
            responses: vec![PipelineResponse {
                tag: 1,
                result: Some(Answer::Get(GetResponse {
                    found: true,
                    value: "B".into(),
                    version: 9,
                    ttl_ms: None,
                    hot: false,
                    tracked: false,
                })),
            }],
            topology_digest: 42,
        });
        let (answer, digest) = answers[1].try_recv().unwrap().ok().unwrap();
        assert_eq!(digest, 42);
        assert_eq!(
            pb::GetRequest::from_answer(answer).map(|r| r.value),
            Some("B".into())
        );
        assert!(answers[0].try_recv().is_err(), "tag 0 is still waiting");
    }

    #[test]
    fn a_batch_is_capped_and_the_rest_follows() {
        let link = Link::new();
        let mut stream = outbound(&link);
        let mut answers = Vec::new();
        for _ in 0..MAX_BATCH_REQUESTS + 3 {
            let (request, answer) = queued("k");
            link.push(request).ok().unwrap();
            answers.push(answer);
        }
        let first = stream.next().now_or_never().flatten().unwrap();
        let second = stream.next().now_or_never().flatten().unwrap();
        assert_eq!(first.requests.len(), MAX_BATCH_REQUESTS);
        assert_eq!(second.requests.len(), 3);
    }

    #[test]
    fn a_large_request_travels_alone_and_batches_stay_within_their_size() {
        let link = Link::new();
        let mut stream = outbound(&link);
        let big = || {
            let (reply, answer) = oneshot::channel();
            let op = pb::SetRequest {
                key: "big".into(),
                value: Bytes::from(vec![0u8; MAX_BATCH_BYTES]),
                ..Default::default()
            }
            .into_op();
            (Queued { op, reply }, answer)
        };
        let mut answers = Vec::new();
        for request in [queued("a"), big(), queued("b"), queued("c"), big()] {
            link.push(request.0).ok().unwrap();
            answers.push(request.1);
        }
        let mut sizes = Vec::new();
        while let Some(Some(batch)) = stream.next().now_or_never() {
            assert!(
                batch.requests.len() == 1 || batch.encoded_len() <= MAX_BATCH_BYTES,
                "a batch of {} requests is {} bytes",
                batch.requests.len(),
                batch.encoded_len()
            );
            sizes.push(batch.requests.len());
        }
        assert_eq!(sizes, [1, 1, 2, 1], "small, big, small + small, big");

        // A smaller cap (the nodes' message limit) splits batches sooner.
        link.max_batch_bytes.store(8, Ordering::Relaxed);
        for _ in 0..3 {
            let (request, answer) = queued("k");
            link.push(request).ok().unwrap();
            answers.push(answer);
        }
        for _ in 0..3 {
            let batch = stream.next().now_or_never().flatten().unwrap();
            assert_eq!(batch.requests.len(), 1);
        }
    }

    #[test]
    fn closing_tells_queued_requests_they_never_left_and_sent_ones_they_may_have() {
        let link = Link::new();
        let mut stream = outbound(&link);
        let (sent_request, mut sent_answer) = queued("sent");
        link.push(sent_request).ok().unwrap();
        stream.next().now_or_never().flatten().unwrap();
        let (waiting_request, mut waiting_answer) = queued("waiting");
        link.push(waiting_request).ok().unwrap();

        link.close(&Closed::Ended);
        assert!(matches!(
            sent_answer.try_recv().unwrap(),
            Err((Closed::Ended, true))
        ));
        assert!(matches!(
            waiting_answer.try_recv().unwrap(),
            Err((Closed::Ended, false))
        ));
        assert!(link.is_closed());
        let (late, _) = queued("late");
        assert!(link.push(late).is_err(), "a closed link takes nothing");
        assert!(
            matches!(stream.next().now_or_never(), Some(None)),
            "the request side ends"
        );
    }

    #[test]
    fn a_dropped_request_side_refuses_new_requests_but_keeps_queued_ones_for_the_reason() {
        let link = Link::new();
        let (request, mut answer) = queued("queued");
        link.push(request).ok().unwrap();
        drop(outbound(&link));
        assert!(link.is_closed());
        assert!(answer.try_recv().is_err(), "still waiting for the reason");
        link.close(&Closed::Unsupported);
        assert!(matches!(
            answer.try_recv().unwrap(),
            Err((Closed::Unsupported, false))
        ));
    }

    #[test]
    fn every_request_type_round_trips_through_an_op_and_its_answer() {
        assert!(matches!(pb::SetRequest::default().into_op(), Op::Set(_)));
        assert!(matches!(pb::MGetRequest::default().into_op(), Op::MGet(_)));
        assert!(
            pb::SetRequest::from_answer(Answer::Get(GetResponse::default())).is_none(),
            "an answer of another type is refused"
        );
        assert!(pb::TtlRequest::from_answer(Answer::Ttl(pb::TtlResponse::default())).is_some());
    }

    #[test]
    fn a_pipeline_error_becomes_the_unary_status() {
        let status = status_of(pb::PipelineError {
            code: Code::FailedPrecondition as i32,
            message: "version mismatch".to_owned(),
            current_version: Some(17),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(matches!(
            Error::from_status(&status),
            Error::CasConflict {
                current_version: Some(17)
            }
        ));
    }
}
