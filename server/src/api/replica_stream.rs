//! The `Internal.ReplicaStream` stream: a peer's `Replicate` and `ReadVersions` requests as tagged
//! entries of one long-lived HTTP/2 stream (the sending side is
//! `crate::replication::link`).
//!
//! Each request runs through the very same handler as its unary call ([`InternalService`]'s
//! `replicate` and `read_versions`), with the stream's connection details (the peer's address,
//! its TLS identity) as the unary call would have them, so every check (key and value limits,
//! `max_batch_keys`, the clock-drift bound, the hand-off's membership check) and every metric is
//! identical; a failed request is answered with the status its unary call would have returned.
//! Like `Cache.Pipeline` ([`super::pipeline`]) the response stream does the work when HTTP/2
//! polls it (no task or channel of its own): it reads the request messages that arrived, starts
//! every request, and returns the answers made as one message (the engine of both streams is
//! [`super::batched`]).
//!
//! Limits, for a peer that misbehaves as much as for one that is just busy:
//! - at most [`MAX_REQUESTS_PER_MESSAGE`] requests in one message (more: the answers already made
//!   are sent, then the stream ends with INVALID_ARGUMENT); a message's size is bounded by
//!   `max_message_bytes` like any call's;
//! - at most [`MAX_PENDING`] requests started and not answered per stream; reading pauses until
//!   some finish;
//! - answers are made only when HTTP/2 asks for the next message, so a peer that stops reading
//!   answers also stops this node reading its requests (backpressure: memory per stream is bounded
//!   by the HTTP/2 windows and these limits);
//! - an answer message stays within `max_message_bytes`; an answer over it alone is replaced by
//!   OUT_OF_RANGE for its request, as its unary call would fail.
//!
//! Tags are the sender's: this node keeps nothing per tag and echoes it, so a reused tag only
//! confuses the sender. When the node shuts down the stream stops reading, answers what it
//! started, and ends.

use std::pin::Pin;

use futures_util::Stream;
use ringcache_proto::v1::{
    self, ReplicaAnswer, ReplicaAnswers, ReplicaError, ReplicaRequests, internal_server::Internal,
    replica_answer::Result as Answer, replica_request::Op,
};
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Response, Status, Streaming};

use super::batched::{self, Answers};
use super::internal::InternalService;

/// Requests one stream may have started and not yet answered before it stops reading.
pub(crate) const MAX_PENDING: usize = crate::replication::MAX_REPLICA_STREAM_IN_FLIGHT;

/// Most requests in one message; more ends the stream with INVALID_ARGUMENT.
pub(crate) const MAX_REQUESTS_PER_MESSAGE: usize = MAX_PENDING;

/// The response stream of `Internal.ReplicaStream`.
pub(super) type ReplicaAnswerStream =
    Pin<Box<dyn Stream<Item = Result<ReplicaAnswers, Status>> + Send>>;

type Pending = batched::Pending<ReplicaAnswer>;

/// The answers of one `ReplicaStream` call, made as HTTP/2 polls for them ([`batched`]).
pub(super) fn serve(
    service: InternalService,
    request: Request<Streaming<ReplicaRequests>>,
) -> Response<ReplicaAnswerStream> {
    let node = service.node().clone();
    node.metrics().replica_stream_served(1.0);
    let shutdown = node.shutdown_token().clone();
    let max_message_bytes = node.config().max_message_bytes;
    let (_, extensions, inbound) = request.into_parts();
    Response::new(Box::pin(Answers::new(
        ReplicaStream {
            service,
            extensions,
        },
        inbound,
        shutdown,
        max_message_bytes,
    )))
}

/// One `ReplicaStream` stream's side of [`batched`].
struct ReplicaStream {
    service: InternalService,
    /// The stream's connection details (peer address, TLS identity), given to each request as
    /// its unary call would have them.
    extensions: Extensions,
}

impl Drop for ReplicaStream {
    fn drop(&mut self) {
        self.service.node().metrics().replica_stream_served(-1.0);
    }
}

impl batched::Protocol for ReplicaStream {
    type Message = ReplicaRequests;
    type Request = v1::ReplicaRequest;
    type Answer = ReplicaAnswer;
    type Output = ReplicaAnswers;

    const MAX_PENDING: usize = MAX_PENDING;
    const MAX_REQUESTS_PER_MESSAGE: usize = MAX_REQUESTS_PER_MESSAGE;

    fn requests(message: ReplicaRequests) -> Vec<v1::ReplicaRequest> {
        message.requests
    }

    fn too_many(&self, requests: usize) -> Status {
        Status::invalid_argument(format!(
            "{requests} requests in one replica stream message, more than \
             {MAX_REQUESTS_PER_MESSAGE}"
        ))
    }

    fn read_failed(&self, status: Status) -> Option<Status> {
        tracing::debug!(error = %status, "replica request stream failed");
        // A message over the size limit, or a broken stream: the peer is told why (if it still
        // listens) once the answers already made are out.
        Some(status)
    }

    fn dispatch(&self, request: v1::ReplicaRequest) -> Pending {
        dispatch(&self.service, &self.extensions, request)
    }

    fn oversized(answer: &ReplicaAnswer, size: usize, max_bytes: usize) -> ReplicaAnswer {
        oversized(answer, size, max_bytes)
    }

    fn output(&self, answers: Vec<ReplicaAnswer>) -> ReplicaAnswers {
        ReplicaAnswers { answers }
    }
}

/// The OUT_OF_RANGE answer that replaces `answer`, `size` bytes encoded, over `max_bytes`.
fn oversized(answer: &ReplicaAnswer, size: usize, max_bytes: usize) -> ReplicaAnswer {
    let status = Status::out_of_range(format!(
        "Error, encoded message length too large: the answer is {size} bytes, the limit \
         is {max_bytes} bytes (max_message_bytes)"
    ));
    ReplicaAnswer {
        tag: answer.tag,
        result: Some(Answer::Error(error_of(&status))),
    }
}

/// Runs one request through its unary handler.
fn dispatch(
    service: &InternalService,
    extensions: &Extensions,
    request: v1::ReplicaRequest,
) -> Pending {
    let tag = request.tag;
    let Some(op) = request.op else {
        let status = Status::invalid_argument("replica stream request without an operation");
        return Box::pin(std::future::ready(ReplicaAnswer {
            tag,
            result: Some(Answer::Error(error_of(&status))),
        }));
    };
    let service = service.clone();
    let extensions = extensions.clone();
    match op {
        Op::Replicate(req) => Box::pin(async move {
            let request = Request::from_parts(MetadataMap::new(), extensions, req);
            let result = match service.replicate(request).await {
                Ok(response) => Answer::Replicate(response.into_inner()),
                Err(status) => Answer::Error(error_of(&status)),
            };
            ReplicaAnswer {
                tag,
                result: Some(result),
            }
        }),
        Op::ReadVersions(req) => Box::pin(async move {
            let request = Request::from_parts(MetadataMap::new(), extensions, req);
            let result = match service.read_versions(request).await {
                Ok(response) => Answer::ReadVersions(response.into_inner()),
                Err(status) => Answer::Error(error_of(&status)),
            };
            ReplicaAnswer {
                tag,
                result: Some(result),
            }
        }),
    }
}

/// A failed request's status as an answer.
fn error_of(status: &Status) -> ReplicaError {
    ReplicaError {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    fn fit(
        max_bytes: usize,
        answers: Vec<ReplicaAnswer>,
        waiting: &mut VecDeque<ReplicaAnswer>,
    ) -> Vec<ReplicaAnswer> {
        batched::fit(max_bytes, answers, waiting, oversized)
    }

    fn read_answer(tag: u64, value_bytes: usize) -> ReplicaAnswer {
        ReplicaAnswer {
            tag,
            result: Some(Answer::ReadVersions(v1::ReadVersionsResponse {
                results: vec![v1::VersionedRead {
                    found: true,
                    entry: Some(v1::VersionedEntry {
                        key: "k".into(),
                        value: Some(vec![b'v'; value_bytes].into()),
                        version: 1,
                        expires_at_ms: None,
                    }),
                }],
            })),
        }
    }

    #[test]
    fn answers_fill_a_message_up_to_the_limit_and_the_rest_wait() {
        let mut waiting = VecDeque::new();
        let answers = (0..4).map(|tag| read_answer(tag, 400)).collect();
        let sent = fit(1000, answers, &mut waiting);
        assert_eq!(sent.iter().map(|a| a.tag).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(waiting.iter().map(|a| a.tag).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn an_answer_over_the_limit_alone_becomes_out_of_range_for_its_request_only() {
        let mut waiting = VecDeque::new();
        let answers = vec![read_answer(7, 5000), read_answer(8, 10)];
        let sent = fit(1000, answers, &mut waiting);
        assert_eq!(sent.len(), 2, "the error is small and the next answer fits");
        match &sent[0].result {
            Some(Answer::Error(error)) => {
                assert_eq!(error.code, tonic::Code::OutOfRange as i32);
                assert!(
                    error.message.contains("max_message_bytes"),
                    "{}",
                    error.message
                );
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(sent[0].tag, 7);
        assert!(matches!(sent[1].result, Some(Answer::ReadVersions(_))));
        assert!(waiting.is_empty());
    }
}
