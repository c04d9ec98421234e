//! `Cache.GetOrLease` and the lease side of `Cache.Set` ([`crate::lease`] holds the table).
//!
//! The key's primary decides ([`crate::view::ClusterView::lease_target`]): a GetOrLease, or a
//! Set carrying a lease token, that reaches any other node is forwarded to the primary, even
//! from a replica that would serve a plain Get itself. The forward's timeout covers the wait.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringcache_proto::topology::Member;
use ringcache_proto::v1;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::cache::{CacheService, ttl_left};
use super::forward::{FORWARD_TIMEOUT, forward_with_timeout, was_forwarded};
use crate::lease::{Acquire, LeaseError};
use crate::metrics::{Op, Outcome};
use crate::store::Item;

/// Most rounds of one GetOrLease (each ends with an answer, a release, a take-over or the
/// end of the wait): a bound against a key written and deleted in a tight loop.
const MAX_ROUNDS: usize = 64;

impl From<LeaseError> for Status {
    fn from(error: LeaseError) -> Self {
        super::status::Reason::LeaseLimit.on(Status::resource_exhausted(error.to_string()))
    }
}

impl CacheService {
    /// The primary a GetOrLease or a leased Set for `key` is forwarded to; `None`: decided
    /// here (this node is the primary, or the request was forwarded here).
    pub(super) fn lease_route(&self, metadata: &MetadataMap, key: &[u8]) -> Option<Member> {
        if was_forwarded(metadata) {
            return None;
        }
        let node = self.node();
        node.view()
            .lease_target(key, &node.config().node_id)
            .cloned()
    }

    /// Serves `Cache.GetOrLease`.
    pub(super) async fn serve_get_or_lease(
        &self,
        request: Request<v1::GetOrLeaseRequest>,
    ) -> Result<Response<v1::GetOrLeaseResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.hot(&metadata, &req.key, crate::hotkeys::Access::Read);
        let node = self.node();
        let start = Instant::now();
        let checked = node
            .store()
            .check_key(&req.key)
            .map_err(Status::from)
            .and_then(|()| {
                node.leases()
                    .ttl_for(req.lease_ttl_ms)
                    .ok_or_else(|| Status::invalid_argument("lease_ttl_ms must be greater than 0"))
            });
        let ttl = match checked {
            Ok(ttl) => ttl,
            Err(status) => {
                node.metrics()
                    .record(Op::GetOrLease, Outcome::InvalidArgument, start.elapsed());
                return Err(status);
            }
        };
        let wait = node.leases().wait_for(req.max_wait_ms);
        if let Some(primary) = self.lease_route(&metadata, &req.key) {
            return self
                .forward_lease(primary, req, wait + FORWARD_TIMEOUT)
                .await;
        }
        // Like a read: a node whose clock is off from the cluster's answers from its store no
        // more (`crate::skew`).
        let refusal = node
            .clock_check()
            .refusal_of("reads", node.config().store.max_clock_drift_ms);
        let result = match refusal {
            Some(refusal) => Err(Status::unavailable(refusal)),
            None => self.decide(&req.key, ttl, wait).await,
        };
        let outcome = match &result {
            Ok(reply) if reply.found && !reply.stale => Outcome::Ok,
            Ok(_) => Outcome::Miss,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => Outcome::MemoryFull,
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                Outcome::InvalidArgument
            }
            Err(_) => Outcome::Error,
        };
        node.metrics()
            .record(Op::GetOrLease, outcome, start.elapsed());
        result.map(Response::new)
    }

    async fn forward_lease(
        &self,
        primary: Member,
        req: v1::GetOrLeaseRequest,
        timeout: Duration,
    ) -> Result<Response<v1::GetOrLeaseResponse>, Status> {
        let start = Instant::now();
        let result = forward_with_timeout(
            self.node_arc(),
            Op::GetOrLease,
            primary,
            req,
            timeout,
            |mut peer, request| async move { peer.get_or_lease(request).await },
        )
        .await;
        let outcome = if result.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        };
        self.node()
            .metrics()
            .record(Op::GetOrLease, outcome, start.elapsed());
        result
    }

    /// Decides a GetOrLease on the key's primary: a value, a lease, or (after waiting up to
    /// `wait`) neither.
    async fn decide(
        &self,
        key: &Bytes,
        ttl: Duration,
        wait: Duration,
    ) -> Result<v1::GetOrLeaseResponse, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        let node = self.node();
        let leases = node.leases();
        let stats = leases.stats();
        let wait_until = tokio::time::Instant::now() + wait;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let live = || {
            let now = node.now_ms();
            node.store()
                .get(key, now)
                .ok()
                .flatten()
                .map(|item| (item, now))
        };
        let mut waited = false;
        for _ in 0..MAX_ROUNDS {
            let now_ms = node.now_ms();
            match node.store().get_or_stale(key, now_ms)? {
                Some((item, false)) => {
                    if waited {
                        stats.woken_by_value.fetch_add(1, Relaxed);
                    }
                    return Ok(value_reply(item, false, now_ms));
                }
                Some((item, true)) => {
                    // Stale: the first caller refreshes it; nobody waits.
                    let reply = match leases.acquire(key, ttl, tokio::time::Instant::now(), live)? {
                        Acquire::Found((item, now)) => value_reply(item, false, now),
                        Acquire::Granted { token, .. } => v1::GetOrLeaseResponse {
                            lease_token: token,
                            lease_ttl_ms: ttl_ms,
                            ..value_reply(item, true, now_ms)
                        },
                        Acquire::Held { .. } => value_reply(item, true, now_ms),
                    };
                    if reply.stale {
                        stats.stale_served.fetch_add(1, Relaxed);
                    }
                    return Ok(reply);
                }
                None => {}
            }
            match leases.acquire(key, ttl, tokio::time::Instant::now(), live)? {
                Acquire::Found((item, now)) => {
                    if waited {
                        stats.woken_by_value.fetch_add(1, Relaxed);
                    }
                    return Ok(value_reply(item, false, now));
                }
                Acquire::Granted { token, .. } => {
                    return Ok(v1::GetOrLeaseResponse {
                        lease_token: token,
                        lease_ttl_ms: ttl_ms,
                        ..v1::GetOrLeaseResponse::default()
                    });
                }
                Acquire::Held { mut wake, deadline } => {
                    if tokio::time::Instant::now() >= wait_until {
                        break;
                    }
                    let _slot = leases.wait_slot()?;
                    waited = true;
                    tokio::select! {
                        () = node.shutdown_token().cancelled() => {
                            return Err(Status::unavailable(
                                "the node is shutting down; retry GetOrLease on the key's new primary",
                            ));
                        }
                        // A release (the sender dropped), a take-over, or the lease's end.
                        _ = tokio::time::timeout_at(deadline.min(wait_until), wake.changed()) => {}
                    }
                }
            }
        }
        stats.timed_out.fetch_add(1, Relaxed);
        Ok(v1::GetOrLeaseResponse::default())
    }
}

/// A GetOrLease answer carrying a value.
fn value_reply(item: Item, stale: bool, now_ms: u64) -> v1::GetOrLeaseResponse {
    v1::GetOrLeaseResponse {
        found: true,
        value: item.value,
        version: item.version,
        ttl_ms: if stale {
            None
        } else {
            ttl_left(item.expires_at_ms, now_ms)
        },
        stale,
        lease_token: 0,
        lease_ttl_ms: 0,
    }
}
