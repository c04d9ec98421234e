//! `Cache.Update` (append, set range, add a float, read and change the TTL) and the
//! all-or-nothing `MSet` (`if_absent`, Redis MSETNX).
//!
//! Both follow `Incr`'s path: a key this node is not a replica of is forwarded one hop to its
//! primary; the serving node applies the operation to its store in one step under the key's
//! lock, which stamps the result with a fresh version, and then replicates the resulting entry
//! (not the operation) to the other replicas at the request's consistency level.

use bytes::Bytes;
use ringcache_proto::v1::{self, update_request::Op as UpdateOp};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::cache::{CacheService, check_batch, check_consistency, hit_or_miss, written};
use super::status::ApiError;
use crate::metrics::Op;
use crate::node::Node;
use crate::store::{ExpireCondition, Expiry};

/// The store's condition for a wire `ExpireCondition`.
pub(super) fn expire_condition(value: i32) -> Result<ExpireCondition, ApiError> {
    use v1::ExpireCondition as W;
    Ok(match W::try_from(value) {
        Ok(W::Always) => ExpireCondition::Always,
        Ok(W::IfNoTtl) => ExpireCondition::IfNoTtl,
        Ok(W::IfTtl) => ExpireCondition::IfTtl,
        Ok(W::IfLater) => ExpireCondition::IfLater,
        Ok(W::IfEarlier) => ExpireCondition::IfEarlier,
        Ok(W::IfTtlAndLater) => ExpireCondition::IfTtlAndLater,
        Ok(W::IfTtlAndEarlier) => ExpireCondition::IfTtlAndEarlier,
        Err(_) => {
            return Err(ApiError::Invalid(format!(
                "unknown expire condition {value}"
            )));
        }
    })
}

/// The metrics label of an update.
fn metric_op(op: &UpdateOp) -> Op {
    match op {
        UpdateOp::Append(_) => Op::Append,
        UpdateOp::SetRange(_) => Op::SetRange,
        UpdateOp::IncrByFloat(_) => Op::IncrByFloat,
        UpdateOp::GetEx(_) => Op::GetEx,
    }
}

/// The keys an update changed.
fn changed(version: Option<u64>, key: &Bytes) -> Vec<Bytes> {
    written(version.is_some(), key)
}

/// Applies one update to the local store.
fn apply(
    node: &Node,
    key: &Bytes,
    op: &UpdateOp,
    now: u64,
) -> Result<(v1::UpdateResponse, Vec<Bytes>), ApiError> {
    let store = node.store();
    Ok(match op {
        UpdateOp::Append(append) => {
            let (length, version) = store.append(key, &append.value, now)?;
            let reply = v1::UpdateResponse {
                found: true,
                value: Bytes::new(),
                length,
                version: version.unwrap_or(0),
            };
            (reply, changed(version, key))
        }
        UpdateOp::SetRange(range) => {
            let (length, version) = store.set_range(key, range.offset, &range.value, now)?;
            let reply = v1::UpdateResponse {
                found: version.is_some() || store.get(key, now)?.is_some(),
                value: Bytes::new(),
                length,
                version: version.unwrap_or(0),
            };
            (reply, changed(version, key))
        }
        UpdateOp::IncrByFloat(incr) => {
            let (value, version) = store.incr_by_float(key, incr.delta, now)?;
            let reply = v1::UpdateResponse {
                found: true,
                length: value.len() as u64,
                value,
                version,
            };
            (reply, vec![key.clone()])
        }
        UpdateOp::GetEx(get_ex) => {
            use v1::get_ex_op::Expiry as W;
            let expiry = match get_ex.expiry {
                Some(W::TtlMs(ttl_ms)) => Some(Some(Expiry::In(ttl_ms))),
                Some(W::ExpiresAtMs(at)) => Some(Some(Expiry::At(at))),
                Some(W::Persist(true)) => Some(None),
                // No expiry change: a plain read.
                Some(W::Persist(false)) | None => None,
            };
            let (value, version, deleted) = match expiry {
                Some(expiry) => {
                    let outcome = store.get_ex(key, expiry, now)?;
                    (outcome.value, outcome.version, outcome.deleted)
                }
                None => (store.get(key, now)?.map(|item| item.value), None, false),
            };
            let reply = v1::UpdateResponse {
                found: value.is_some(),
                length: value.as_ref().map_or(0, |v| v.len() as u64),
                value: value.unwrap_or_default(),
                version: version.unwrap_or(0),
            };
            // A delete is replicated even without a tombstone version, as Delete does.
            (reply, written(version.is_some() || deleted, key))
        }
    })
}

impl CacheService {
    /// `Cache.Update`.
    pub(super) async fn serve_update(
        &self,
        request: Request<v1::UpdateRequest>,
    ) -> Result<Response<v1::UpdateResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.hot(&metadata, &req.key, crate::hotkeys::Access::Write);
        let Some(op) = req.op.as_ref().map(metric_op) else {
            return Err(Status::invalid_argument("update without an operation"));
        };
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(op, primary, req, |mut peer, request| async move {
                    peer.update(request).await
                })
                .await;
        }
        self.run_write(
            op,
            req.consistency,
            |node, now| {
                let update = req.op.as_ref().expect("checked above");
                apply(node, &req.key, update, now)
            },
            |reply| hit_or_miss(reply.found),
        )
        .await
    }

    /// `Cache.MSet` with `if_absent`: served whole by one node, which checks and stores every
    /// pair under the locks of all the keys ([`crate::store::Store::mset_if_absent`]). When this
    /// node holds none of the keys and one other node holds them all, the request goes there
    /// whole; when no single node holds every key it is refused and nothing is stored (never a
    /// partial batch).
    pub(super) async fn m_set_if_absent(
        &self,
        metadata: &MetadataMap,
        req: v1::MSetRequest,
    ) -> Result<Response<v1::MSetResponse>, Status> {
        let mut split = self.split(metadata, req.entries.iter().map(|kv| &kv.key[..]));
        if split.local.is_empty() && split.remote.len() == 1 {
            let (primary, _) = split.remote.remove(0);
            return self
                .forward_one(Op::MSet, primary, req, |mut peer, request| async move {
                    peer.m_set(request).await
                })
                .await;
        }
        let spread = !split.remote.is_empty();
        self.run_write(
            Op::MSet,
            req.consistency,
            |node, now| {
                check_consistency(req.consistency)?;
                check_batch(node, req.entries.len())?;
                if spread {
                    return Err(ApiError::Invalid(
                        "the keys of an all-or-nothing MSet (if_absent) are held by different \
                         nodes; nothing was stored"
                            .to_owned(),
                    ));
                }
                let pairs: Vec<(&Bytes, &Bytes)> =
                    req.entries.iter().map(|kv| (&kv.key, &kv.value)).collect();
                Ok(
                    match node.store().mset_if_absent(&pairs, req.ttl_ms, now)? {
                        Some(versions) => (
                            v1::MSetResponse { versions },
                            req.entries.iter().map(|kv| kv.key.clone()).collect(),
                        ),
                        None => (v1::MSetResponse::default(), Vec::new()),
                    },
                )
            },
            |reply| hit_or_miss(!reply.versions.is_empty()),
        )
        .await
    }
}
