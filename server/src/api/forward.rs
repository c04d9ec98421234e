//! The server-side safety net: a request for a key this node is
//! not a replica of — from a stale or topology-unaware client — is forwarded one hop to the key's
//! primary. The forwarded request carries [`FORWARDED_METADATA`] and is served wherever it lands,
//! so nothing is forwarded twice, even while two nodes disagree about the topology. The response
//! goes back with [`STALE_ROUTE_METADATA`] set; its digest header (added by the digest layer)
//! tells a smart client which topology to fetch.
//!
//! Multi-key requests are split by primary: the local part is served here, the other parts are
//! forwarded in parallel, and results are put back in request order.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcache_proto::topology::Member;
use ringcache_proto::v1::cache_client::CacheClient;
use ringcache_proto::{FORWARDED_METADATA, STALE_ROUTE_METADATA};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::cache::CacheService;
use crate::metrics::{Op, Outcome};
use crate::node::Node;
use crate::peer::PeerErrorKind;

/// Longest a forwarded request may take.
pub(super) const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a request was forwarded to us by another node.
pub(super) fn was_forwarded(metadata: &MetadataMap) -> bool {
    metadata.contains_key(FORWARDED_METADATA)
}

/// Keys of a multi-key request grouped by where they are served: `local` holds positions served
/// here, `remote` the positions per primary.
#[derive(Debug, Default)]
pub(super) struct Split {
    pub(super) local: Vec<usize>,
    pub(super) remote: Vec<(Member, Vec<usize>)>,
}

impl CacheService {
    /// The primary to forward a single-key request to, or `None` to serve it here.
    pub(super) fn route(&self, metadata: &MetadataMap, key: &[u8]) -> Option<Member> {
        if was_forwarded(metadata) {
            return None;
        }
        let node = self.node();
        node.view()
            .forward_target(key, &node.config().node_id)
            .cloned()
    }

    /// Groups the keys of a multi-key request by where each is served.
    pub(super) fn split<'a>(
        &self,
        metadata: &MetadataMap,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Split {
        let mut split = Split::default();
        if was_forwarded(metadata) {
            split.local = keys.enumerate().map(|(i, _)| i).collect();
            return split;
        }
        let node = self.node();
        let view = node.view();
        for (position, key) in keys.enumerate() {
            match view.forward_target(key, &node.config().node_id) {
                None => split.local.push(position),
                Some(primary) => {
                    match split
                        .remote
                        .iter_mut()
                        .find(|(m, _)| m.node_id == primary.node_id)
                    {
                        Some((_, positions)) => positions.push(position),
                        None => split.remote.push((primary.clone(), vec![position])),
                    }
                }
            }
        }
        split
    }

    /// Forwards a single-key request and records it like a local one.
    pub(super) async fn forward_one<Req, Resp, F, Fut>(
        &self,
        op: Op,
        primary: Member,
        message: Req,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(CacheClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let start = Instant::now();
        let result = forward(self.node_arc(), op, primary, message, call).await;
        // The owner's answer decides, as for a request served here: a refusal it sends back
        // (bad input, a conflict, memory full) is recorded as that refusal, not as an error.
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(status) => super::status::outcome_of(status),
        };
        self.node().metrics().record(op, outcome, start.elapsed());
        result
    }
}

/// Sends `message` to `primary` with `call`, marked as forwarded, and counts the forward.
pub(super) async fn forward<Req, Resp, F, Fut>(
    node: Arc<Node>,
    op: Op,
    primary: Member,
    message: Req,
    call: F,
) -> Result<Response<Resp>, Status>
where
    F: FnOnce(CacheClient<Channel>, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    forward_with_timeout(node, op, primary, message, FORWARD_TIMEOUT, call).await
}

/// [`forward`] with its own timeout (a GetOrLease may wait on the primary).
pub(super) async fn forward_with_timeout<Req, Resp, F, Fut>(
    node: Arc<Node>,
    op: Op,
    primary: Member,
    message: Req,
    timeout: Duration,
    call: F,
) -> Result<Response<Resp>, Status>
where
    F: FnOnce(CacheClient<Channel>, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    node.metrics().record_forward(op);
    let client = node.peers().cache_client(&primary.cluster_addr)?;
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED_METADATA, MetadataValue::from_static("1"));
    request.set_timeout(timeout);
    match call(client, request).await {
        Ok(mut response) => {
            response
                .metadata_mut()
                .insert(STALE_ROUTE_METADATA, MetadataValue::from_static("1"));
            Ok(response)
        }
        Err(status) => Err(forward_failure(status, &primary)),
    }
}

/// A forward that did not reach the primary becomes UNAVAILABLE (or DEADLINE_EXCEEDED) naming
/// it; an answer from the primary (e.g. INVALID_ARGUMENT) is passed on as it is. Which is which
/// is the peer transport's classification ([`crate::peer::kind_of`]), so a connection that broke under
/// the call (the primary died mid-request: an INTERNAL the local HTTP/2 stack made) is
/// UNAVAILABLE too, which clients retry, and not an INTERNAL answer they would not.
fn forward_failure(status: Status, primary: &Member) -> Status {
    let code = match crate::peer::kind_of(&status) {
        PeerErrorKind::Unreachable => Code::Unavailable,
        PeerErrorKind::TimedOut => Code::DeadlineExceeded,
        _ => return status,
    };
    Status::new(
        code,
        format!(
            "forwarding to primary {} at {} failed: {}",
            primary.node_id,
            primary.cluster_addr,
            status.message()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_forward_is_unavailable_and_an_answer_is_passed_on() {
        let primary = Member::for_test("n2");
        // The primary died mid-call: tonic made an INTERNAL with the h2 error as its source.
        let mut broken = Status::internal("h2 protocol error: http2 error");
        broken.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        let status = forward_failure(broken, &primary);
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("forwarding to primary n2"),
            "{status:?}"
        );
        assert_eq!(
            forward_failure(Status::unknown("reset"), &primary).code(),
            Code::Unavailable
        );
        assert_eq!(
            forward_failure(Status::deadline_exceeded("slow"), &primary).code(),
            Code::DeadlineExceeded
        );
        // The primary's own answers, INTERNAL included, are passed on unchanged.
        for answer in [
            Status::invalid_argument("bad key"),
            Status::internal("a bug on the primary"),
        ] {
            let passed = forward_failure(answer.clone(), &primary);
            assert_eq!(
                (passed.code(), passed.message()),
                (answer.code(), answer.message())
            );
        }
    }
}
