//! The `Cache.Pipeline` stream: many tagged requests on one HTTP/2 stream (DESIGN §6, "The fast
//! path").
//!
//! Each request runs through the very same handler as its unary call ([`CacheService`]), so
//! routing, forwarding, replication, metrics and errors are identical. One task per stream reads
//! request batches and starts every request in arrival order. Most requests (reads at ONE, local
//! writes to a lone node) finish on their first poll; their answers leave together as one
//! response batch as soon as the request batch is done. Requests that wait (replication,
//! forwarding, QUORUM reads) are polled alongside, and their answers leave in batches as they
//! finish. So nothing waits for a timer and a busy stream costs one message per batch each way.
//!
//! Limits: at most `max_batch_keys` requests per batch (a bigger batch ends the stream with
//! INVALID_ARGUMENT) and at most [`MAX_PENDING`] requests waiting per stream (reading pauses
//! until some finish: backpressure). When the node shuts down the stream stops reading, answers
//! what it started, and ends.

use std::future::Future;
use std::pin::Pin;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::{FutureExt, Stream};
use ringcache_proto::CURRENT_VERSION_METADATA;
use ringcache_proto::v1::{
    self, PipelineError, PipelineRequestBatch, PipelineResponse, PipelineResponseBatch,
    cache_server::Cache, pipeline_request::Op, pipeline_response::Result as Answer,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::cache::CacheService;

/// Requests one stream may have started and not yet answered before it stops reading.
pub(super) const MAX_PENDING: usize = 4096;

/// Response batches buffered towards the client before the stream task waits for it.
const OUTBOUND_BATCHES: usize = 16;

/// The response stream of `Cache.Pipeline`.
pub(super) type PipelineStream =
    Pin<Box<dyn Stream<Item = Result<PipelineResponseBatch, Status>> + Send>>;

type Pending<'a> = Pin<Box<dyn Future<Output = PipelineResponse> + Send + 'a>>;

/// Starts the stream task for one `Pipeline` call.
pub(super) fn serve(
    service: CacheService,
    inbound: Streaming<PipelineRequestBatch>,
) -> Response<PipelineStream> {
    let (tx, rx) = mpsc::channel(OUTBOUND_BATCHES);
    tokio::spawn(run(service, inbound, tx));
    Response::new(Box::pin(ReceiverStream::new(rx)))
}

async fn run(
    service: CacheService,
    mut inbound: Streaming<PipelineRequestBatch>,
    tx: mpsc::Sender<Result<PipelineResponseBatch, Status>>,
) {
    let metrics = service.node().metrics();
    metrics.pipeline_stream(1.0);
    serve_stream(&service, &mut inbound, &tx).await;
    metrics.pipeline_stream(-1.0);
}

async fn serve_stream(
    service: &CacheService,
    inbound: &mut Streaming<PipelineRequestBatch>,
    tx: &mpsc::Sender<Result<PipelineResponseBatch, Status>>,
) {
    let shutdown = service.node().shutdown_token().clone();
    let max_batch = service.node().config().max_batch_keys;
    let mut pending: FuturesUnordered<Pending<'_>> = FuturesUnordered::new();
    let mut reading = true;
    loop {
        let batch = tokio::select! {
            biased;
            Some(first) = pending.next(), if !pending.is_empty() => {
                let mut answers = vec![first];
                while let Some(Some(answer)) = pending.next().now_or_never() {
                    answers.push(answer);
                }
                if !send(service, tx, answers).await {
                    return;
                }
                continue;
            }
            () = shutdown.cancelled(), if reading => {
                reading = false;
                continue;
            }
            message = inbound.message(), if reading && pending.len() < MAX_PENDING => message,
            else => break,
        };
        let batch = match batch {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                reading = false;
                continue;
            }
            Err(status) => {
                tracing::debug!(error = %status, "pipeline request stream failed");
                reading = false;
                continue;
            }
        };
        service
            .node()
            .metrics()
            .record_pipeline_batch(batch.requests.len());
        if batch.requests.len() > max_batch {
            let status = Status::invalid_argument(format!(
                "{} requests in one pipeline batch, more than max_batch_keys ({max_batch})",
                batch.requests.len()
            ));
            // The stream ends; what is pending still finishes but is not answered.
            let _ = tx.send(Err(status)).await;
            return;
        }
        let mut answers = Vec::with_capacity(batch.requests.len());
        for request in batch.requests {
            let mut future = dispatch(service, request);
            match (&mut future).now_or_never() {
                Some(answer) => answers.push(answer),
                None => pending.push(future),
            }
        }
        if !answers.is_empty() && !send(service, tx, answers).await {
            return;
        }
    }
}

/// Sends one response batch stamped with the node's current topology digest; false when the
/// client is gone.
async fn send(
    service: &CacheService,
    tx: &mpsc::Sender<Result<PipelineResponseBatch, Status>>,
    responses: Vec<PipelineResponse>,
) -> bool {
    let topology_digest = service.node().view().topology.digest();
    tx.send(Ok(PipelineResponseBatch {
        responses,
        topology_digest,
    }))
    .await
    .is_ok()
}

/// Runs one request through its unary handler.
fn dispatch<'a>(service: &'a CacheService, request: v1::PipelineRequest) -> Pending<'a> {
    let tag = request.tag;
    let Some(op) = request.op else {
        return Box::pin(std::future::ready(PipelineResponse {
            tag,
            result: Some(Answer::Error(PipelineError {
                code: tonic::Code::InvalidArgument as i32,
                message: "pipeline request without an operation".to_owned(),
                current_version: None,
            })),
        }));
    };
    macro_rules! run {
        ($method:ident, $req:expr, $variant:ident) => {{
            let future = service.$method(Request::new($req));
            Box::pin(async move {
                let result = match future.await {
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
