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
//! ends. The reading, backpressure and byte budget are [`super::batched`]'s, shared with
//! `Internal.ReplicaStream`.

use std::pin::Pin;

use futures_util::Stream;
use ringcache_proto::CURRENT_VERSION_METADATA;
use ringcache_proto::v1::{
    self, PipelineError, PipelineRequestBatch, PipelineResponse, PipelineResponseBatch,
    cache_server::Cache, pipeline_request::Op, pipeline_response::Result as Answer,
};
use tonic::{Request, Response, Status, Streaming};

use super::auth::check_role;
use super::batched::{self, Answers};
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

type Pending = batched::Pending<PipelineResponse>;

/// The response stream of one `Pipeline` call. There is no task of its own: HTTP/2 polls it when
/// it can send, and each poll reads the request batches that arrived, runs them, and returns
/// what is answered as one batch ([`batched`]). So a client that stops reading answers also
/// stops the node reading its requests.
pub(super) fn serve(
    service: CacheService,
    principal: Option<Principal>,
    inbound: Streaming<PipelineRequestBatch>,
) -> Response<PipelineStream> {
    let node = service.node();
    node.metrics().pipeline_stream(1.0);
    let shutdown = node.shutdown_token().clone();
    let max_message_bytes = node.config().max_message_bytes;
    Response::new(Box::pin(Answers::new(
        Pipeline { service, principal },
        inbound,
        shutdown,
        max_message_bytes,
    )))
}

/// One `Pipeline` stream's side of [`batched`].
struct Pipeline {
    service: CacheService,
    /// Who opened the stream (`None` when authentication is off); each request is checked
    /// against its role.
    principal: Option<Principal>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.service.node().metrics().pipeline_stream(-1.0);
    }
}

impl batched::Protocol for Pipeline {
    type Message = PipelineRequestBatch;
    type Request = v1::PipelineRequest;
    type Answer = PipelineResponse;
    type Output = PipelineResponseBatch;

    const MAX_PENDING: usize = MAX_PENDING;
    const MAX_REQUESTS_PER_MESSAGE: usize = MAX_BATCH_REQUESTS;

    fn requests(batch: PipelineRequestBatch) -> Vec<v1::PipelineRequest> {
        batch.requests
    }

    fn read(&self, requests: usize) {
        self.service
            .node()
            .metrics()
            .record_pipeline_batch(requests);
    }

    fn too_many(&self, requests: usize) -> Status {
        Status::invalid_argument(format!(
            "{requests} requests in one pipeline batch, more than {MAX_BATCH_REQUESTS}"
        ))
    }

    fn read_failed(&self, status: Status) -> Option<Status> {
        tracing::debug!(error = %status, "pipeline request stream failed");
        None
    }

    fn dispatch(&self, request: v1::PipelineRequest) -> Pending {
        dispatch(self.service.clone(), self.principal.as_ref(), request)
    }

    fn oversized(answer: &PipelineResponse, size: usize, max_bytes: usize) -> PipelineResponse {
        let status = Status::out_of_range(format!(
            "Error, encoded message length too large: the answer is {size} bytes, the \
             limit is {max_bytes} bytes (max_message_bytes); ask for fewer keys"
        ));
        PipelineResponse {
            tag: answer.tag,
            result: Some(Answer::Error(error_of(&status))),
        }
    }

    fn output(&self, responses: Vec<PipelineResponse>) -> PipelineResponseBatch {
        PipelineResponseBatch {
            responses,
            topology_digest: self.service.node().view().topology.digest(),
        }
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
