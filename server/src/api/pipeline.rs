//! The `Cache.Pipeline` stream: many tagged requests on one HTTP/2 stream (the fast path).
//!
//! Each request runs through the very same handler as its unary call ([`CacheService`]), so
//! routing, forwarding, replication, metrics and errors are identical. The response stream does
//! the work when HTTP/2 polls it (no task or channel of its own): it reads the request batches
//! that arrived and starts every request in arrival order. Most requests (reads at ONE, local
//! writes to a lone node) finish on their first poll; their answers leave together as one
//! response batch as soon as the request batch is done. Requests that wait (replication,
//! forwarding, QUORUM reads) are polled alongside, and their answers leave in batches as they
//! finish. So nothing waits for a timer and a busy stream costs one message per batch each way.
//!
//! Limits: at most [`MAX_BATCH_REQUESTS`] requests per batch (a bigger batch is not run: the
//! answers already made are sent, then the stream ends with INVALID_ARGUMENT) and at most
//! [`MAX_PENDING`] requests waiting per stream (reading pauses until some finish:
//! backpressure). A response batch stays within `max_message_bytes`: answers that would push it
//! over wait for the next batch (and reading waits for them), and an answer over the limit on
//! its own (an `MGet` of many large values) is replaced by an OUT_OF_RANGE error for its
//! request, as its unary call would fail, so one large answer never ends the stream for the
//! others. When the node shuts down the stream stops reading, answers what it started, and
//! ends.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::stream::{FuturesUnordered, StreamExt};
use ringcache_proto::CURRENT_VERSION_METADATA;
use ringcache_proto::v1::{
    self, PipelineError, PipelineRequestBatch, PipelineResponse, PipelineResponseBatch,
    cache_server::Cache, pipeline_request::Op, pipeline_response::Result as Answer,
};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::{Request, Response, Status, Streaming};

use super::auth::check_role;
use super::cache::CacheService;
use crate::auth::{Principal, Role};

/// Requests one stream may have started and not yet answered before it stops reading.
pub(super) const MAX_PENDING: usize = 4096;

/// Most requests in one request batch; a bigger batch ends the stream with INVALID_ARGUMENT.
/// (Independent of `max_batch_keys`, which bounds the keys of one multi-key request: the client
/// sends at most 256 requests per batch whatever a node's settings.)
pub(super) const MAX_BATCH_REQUESTS: usize = MAX_PENDING;

/// The response stream of `Cache.Pipeline`.
pub(super) type PipelineStream =
    Pin<Box<dyn Stream<Item = Result<PipelineResponseBatch, Status>> + Send>>;

type Pending = Pin<Box<dyn Future<Output = PipelineResponse> + Send>>;

/// The response stream of one `Pipeline` call. There is no task of its own: HTTP/2 polls it when
/// it can send, and each poll reads the request batches that arrived, runs them, and returns
/// what is answered as one batch. So a client that stops reading answers also stops the node
/// reading its requests.
pub(super) fn serve(
    service: CacheService,
    principal: Option<Principal>,
    inbound: Streaming<PipelineRequestBatch>,
) -> Response<PipelineStream> {
    let node = service.node();
    node.metrics().pipeline_stream(1.0);
    let shutdown = Box::pin(node.shutdown_token().clone().cancelled_owned());
    // Room for the batch's own fields (the digest) beside its answers.
    let max_batch_bytes = node.config().max_message_bytes.saturating_sub(64).max(1);
    Response::new(Box::pin(Answers {
        max_batch_bytes,
        waiting: VecDeque::new(),
        service,
        principal,
        inbound,
        pending: FuturesUnordered::new(),
        shutdown,
        reading: true,
        error: None,
        failed: false,
    }))
}

struct Answers {
    /// Most bytes of answers in one response batch (the node's message limit, less room).
    max_batch_bytes: usize,
    /// Answers made but not sent: they did not fit in the last batch.
    waiting: VecDeque<PipelineResponse>,
    service: CacheService,
    /// Who opened the stream (`None` when authentication is off); each request is checked
    /// against its role.
    principal: Option<Principal>,
    inbound: Streaming<PipelineRequestBatch>,
    /// Requests started and not yet answered.
    pending: FuturesUnordered<Pending>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Whether request batches are still read: false once the client closed its side, the
    /// stream failed, the client broke a limit, or the node is shutting down.
    reading: bool,
    /// The status that ends the stream once the answers already made are sent.
    error: Option<Status>,
    /// The stream ended with an error status; nothing more is sent.
    failed: bool,
}

impl Drop for Answers {
    fn drop(&mut self) {
        self.service.node().metrics().pipeline_stream(-1.0);
    }
}

impl Stream for Answers {
    type Item = Result<PipelineResponseBatch, Status>;

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
        // Answers left over from the last batch go first, and no request is read until they
        // are out (backpressure).
        let carried = !this.waiting.is_empty();
        let mut answers: Vec<PipelineResponse> = this.waiting.drain(..).collect();
        while let Poll::Ready(Some(answer)) = this.pending.poll_next_unpin(cx) {
            answers.push(answer);
        }
        if this.reading && this.shutdown.as_mut().poll(cx).is_ready() {
            this.reading = false;
        }
        while this.reading && !carried && this.pending.len() < MAX_PENDING {
            let batch = match this.inbound.poll_next_unpin(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(batch))) => batch,
                Poll::Ready(None) => {
                    this.reading = false;
                    break;
                }
                Poll::Ready(Some(Err(status))) => {
                    tracing::debug!(error = %status, "pipeline request stream failed");
                    this.reading = false;
                    break;
                }
            };
            let node = this.service.node();
            node.metrics().record_pipeline_batch(batch.requests.len());
            if batch.requests.len() > MAX_BATCH_REQUESTS {
                // None of this batch runs; the answers already made go out, then the error.
                this.error = Some(Status::invalid_argument(format!(
                    "{} requests in one pipeline batch, more than {MAX_BATCH_REQUESTS}",
                    batch.requests.len()
                )));
                this.reading = false;
                break;
            }
            answers.reserve(batch.requests.len());
            for request in batch.requests {
                let mut future = dispatch(this.service.clone(), this.principal.as_ref(), request);
                match future.as_mut().poll(cx) {
                    Poll::Ready(answer) => answers.push(answer),
                    Poll::Pending => this.pending.push(future),
                }
            }
            // Answer this batch before reading the next, so answers never wait for later input.
            if !answers.is_empty() {
                break;
            }
        }
        if !answers.is_empty() {
            let topology_digest = this.service.node().view().topology.digest();
            let responses = this.fit(answers);
            return Poll::Ready(Some(Ok(PipelineResponseBatch {
                responses,
                topology_digest,
            })));
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

impl Answers {
    /// The answers that fit in one response batch, in order; the rest wait in `waiting`. An
    /// answer too large on its own becomes an OUT_OF_RANGE error for its request.
    fn fit(&mut self, answers: Vec<PipelineResponse>) -> Vec<PipelineResponse> {
        let mut batch = Vec::with_capacity(answers.len());
        let mut bytes = 0usize;
        let mut answers = answers.into_iter();
        for mut answer in answers.by_ref() {
            let mut size = prost::encoding::message::encoded_len(1, &answer);
            if size > self.max_batch_bytes {
                let status = Status::out_of_range(format!(
                    "Error, encoded message length too large: the answer is {size} bytes, the \
                     limit is {} bytes (max_message_bytes); ask for fewer keys",
                    self.max_batch_bytes
                ));
                answer = PipelineResponse {
                    tag: answer.tag,
                    result: Some(Answer::Error(error_of(&status))),
                };
                size = prost::encoding::message::encoded_len(1, &answer);
            }
            if !batch.is_empty() && bytes.saturating_add(size) > self.max_batch_bytes {
                self.waiting.push_back(answer);
                break;
            }
            bytes = bytes.saturating_add(size);
            batch.push(answer);
        }
        self.waiting.extend(answers);
        batch
    }
}

/// Runs one request through its unary handler, once `principal`'s role allows it.
fn dispatch(
    service: CacheService,
    principal: Option<&Principal>,
    request: v1::PipelineRequest,
) -> Pending {
    let tag = request.tag;
    let failed = |status: Status| -> Pending {
        Box::pin(std::future::ready(PipelineResponse {
            tag,
            result: Some(Answer::Error(error_of(&status))),
        }))
    };
    let Some(op) = request.op else {
        return failed(Status::invalid_argument(
            "pipeline request without an operation",
        ));
    };
    let (required, name) = match &op {
        Op::Get(_) => (Role::Read, "Get"),
        Op::MGet(_) => (Role::Read, "MGet"),
        Op::Ttl(_) => (Role::Read, "Ttl"),
        Op::Set(_) => (Role::Write, "Set"),
        Op::Delete(_) => (Role::Write, "Delete"),
        Op::MSet(_) => (Role::Write, "MSet"),
        Op::MDelete(_) => (Role::Write, "MDelete"),
        Op::Incr(_) => (Role::Write, "Incr"),
        Op::CompareAndSet(_) => (Role::Write, "CompareAndSet"),
        Op::Expire(_) => (Role::Write, "Expire"),
        Op::Persist(_) => (Role::Write, "Persist"),
        Op::Update(_) => (Role::Write, "Update"),
    };
    if let Err(status) = check_role(principal, required, name) {
        service
            .node()
            .metrics()
            .security
            .record_auth_failure("permission_denied");
        return failed(status);
    }
    macro_rules! run {
        ($method:ident, $req:expr, $variant:ident) => {{
            let request = Request::new($req);
            Box::pin(async move {
                let result = match service.$method(request).await {
                    Ok(response) => Answer::$variant(response.into_inner()),
                    Err(status) => Answer::Error(error_of(&status)),
                };
                PipelineResponse {
                    tag,
                    result: Some(result),
                }
            })
        }};
    }
    match op {
        Op::Get(req) => run!(get, req, Get),
        Op::Set(req) => run!(set, req, Set),
        Op::Delete(req) => run!(delete, req, Delete),
        Op::MGet(req) => run!(m_get, req, MGet),
        Op::MSet(req) => run!(m_set, req, MSet),
        Op::MDelete(req) => run!(m_delete, req, MDelete),
        Op::Incr(req) => run!(incr, req, Incr),
        Op::CompareAndSet(req) => run!(compare_and_set, req, CompareAndSet),
        Op::Expire(req) => run!(expire, req, Expire),
        Op::Persist(req) => run!(persist, req, Persist),
        Op::Ttl(req) => run!(ttl, req, Ttl),
        Op::Update(req) => run!(update, req, Update),
    }
}

/// A failed request's status as a pipeline answer.
fn error_of(status: &Status) -> PipelineError {
    let current_version = status
        .metadata()
        .get(CURRENT_VERSION_METADATA)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    PipelineError {
        code: status.code() as i32,
        message: status.message().to_owned(),
        current_version,
    }
}
