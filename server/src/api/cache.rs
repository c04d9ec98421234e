//! The `Cache` service: the key-value API of one node.
//!
//! A request for a key this node is a replica of is served from the local store; any other key is
//! forwarded one hop to its primary ([`super::forward`]). Replication to the other replicas comes
//! with the replication layer; until then every consistency level is met by the replica that
//! serves the request.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringcache_proto::v1::cache_client::CacheClient;
use ringcache_proto::v1::{self, cache_server::Cache};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::forward::{Split, forward};
use super::status::ApiError;
use crate::metrics::{Op, Outcome};
use crate::node::Node;
use crate::store::{Item, SetCondition, SetOptions, Ttl};

/// The `ringcache.v1.Cache` gRPC service.
#[derive(Debug, Clone)]
pub struct CacheService {
    node: Arc<Node>,
}

impl CacheService {
    /// A service answering from `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    pub(super) fn node(&self) -> &Node {
        &self.node
    }

    pub(super) fn node_arc(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Runs one request: times it, records its outcome and maps its error.
    fn run<T>(
        &self,
        op: Op,
        handler: impl FnOnce(&Node, u64) -> Result<T, ApiError>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let result = handler(&self.node, self.node.now_ms());
        let recorded = match &result {
            Ok(reply) => outcome(reply),
            Err(error) => error.outcome(),
        };
        self.node.metrics().record(op, recorded, start.elapsed());
        result.map(Response::new).map_err(Status::from)
    }
}

impl CacheService {
    /// Runs a multi-key request: validates it, forwards the parts owned elsewhere in parallel,
    /// serves the local part, and reassembles the results in request order. `part` builds the
    /// sub-request for some positions, `local` serves positions here, `unpack` turns a peer's reply
    /// for `n` positions into `n` values, `pack` builds the reply from all values.
    #[allow(clippy::too_many_arguments)]
    async fn run_split<Req, Resp, T, F, Fut>(
        &self,
        op: Op,
        split: Split,
        validate: impl FnOnce(&Node) -> Result<(), ApiError>,
        part: impl Fn(&[usize]) -> Req,
        call: F,
        local: impl FnOnce(&Node, u64, &[usize]) -> Result<Vec<T>, ApiError>,
        unpack: impl Fn(Resp, usize) -> Vec<T>,
        pack: impl FnOnce(Vec<T>) -> Resp,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        T: Default + Clone,
        F: FnOnce(CacheClient<Channel>, Request<Req>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
    {
        let start = Instant::now();
        let result = async {
            validate(&self.node)?;
            let n = split.local.len() + split.remote.iter().map(|(_, p)| p.len()).sum::<usize>();
            let mut remote = JoinSet::new();
            for (primary, positions) in split.remote {
                let message = part(&positions);
                let forwarded = forward(self.node.clone(), op, primary, message, call.clone());
                remote.spawn(async move { (positions, forwarded.await) });
            }
            let mut values = vec![T::default(); n];
            if !split.local.is_empty() {
                let now = self.node.now_ms();
                let served = local(&self.node, now, &split.local)?;
                for (&position, value) in split.local.iter().zip(served) {
                    values[position] = value;
                }
            }
            while let Some(joined) = remote.join_next().await {
                let (positions, reply) = joined
                    .map_err(|e| Status::internal(format!("a forwarding task failed: {e}")))?;
                let parts = unpack(reply?.into_inner(), positions.len());
                if parts.len() != positions.len() {
                    return Err(Status::internal(format!(
                        "a peer answered {} results for {} keys",
                        parts.len(),
                        positions.len()
                    )));
                }
                for (position, value) in positions.into_iter().zip(parts) {
                    values[position] = value;
                }
            }
            Ok(pack(values))
        }
        .await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(status) => outcome_of(status),
        };
        self.node.metrics().record(op, outcome, start.elapsed());
        result.map(Response::new)
    }
}

/// The metrics outcome of a failed request.
fn outcome_of(status: &Status) -> Outcome {
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => Outcome::InvalidArgument,
        Code::FailedPrecondition => Outcome::Conflict,
        Code::ResourceExhausted => Outcome::MemoryFull,
        _ => Outcome::Error,
    }
}

fn check_consistency(value: i32) -> Result<(), ApiError> {
    v1::Consistency::try_from(value)
        .map(|_| ())
        .map_err(|_| ApiError::Invalid(format!("unknown consistency level {value}")))
}

fn check_batch(node: &Node, n_keys: usize) -> Result<(), ApiError> {
    let max = node.config().max_batch_keys;
    if n_keys > max {
        return Err(ApiError::Invalid(format!(
            "{n_keys} keys in one request, more than max_batch_keys ({max})"
        )));
    }
    Ok(())
}

fn ttl_left(expires_at_ms: Option<u64>, now_ms: u64) -> Option<u64> {
    expires_at_ms.map(|at| at.saturating_sub(now_ms).max(1))
}

fn found(item: Option<Item>, now_ms: u64) -> v1::GetResponse {
    match item {
        Some(item) => v1::GetResponse {
            found: true,
            value: item.value,
            version: item.version,
            ttl_ms: ttl_left(item.expires_at_ms, now_ms),
        },
        None => v1::GetResponse::default(),
    }
}

fn hit_or_miss(hit: bool) -> Outcome {
    if hit { Outcome::Ok } else { Outcome::Miss }
}

#[tonic::async_trait]
impl Cache for CacheService {
    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Get, primary, req, |mut peer, request| async move {
                    peer.get(request).await
                })
                .await;
        }
        self.run(
            Op::Get,
            |node, now| {
                check_consistency(req.consistency)?;
                Ok(found(node.store().get(&req.key, now)?, now))
            },
            |reply| hit_or_miss(reply.found),
        )
    }

    async fn set(
        &self,
        request: Request<v1::SetRequest>,
    ) -> Result<Response<v1::SetResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Set, primary, req, |mut peer, request| async move {
                    peer.set(request).await
                })
                .await;
        }
        self.run(
            Op::Set,
            |node, now| {
                check_consistency(req.consistency)?;
                let condition = match v1::SetCondition::try_from(req.condition) {
                    Ok(v1::SetCondition::Always) => SetCondition::Always,
                    Ok(v1::SetCondition::IfAbsent) => SetCondition::IfAbsent,
                    Ok(v1::SetCondition::IfPresent) => SetCondition::IfPresent,
                    Err(_) => {
                        return Err(ApiError::Invalid(format!(
                            "unknown set condition {}",
                            req.condition
                        )));
                    }
                };
                let options = SetOptions {
                    ttl_ms: req.ttl_ms,
                    condition,
                    return_previous: req.return_previous,
                };
                let outcome = node.store().set(&req.key, &req.value, options, now)?;
                Ok(v1::SetResponse {
                    stored: outcome.version.is_some(),
                    version: outcome.version.unwrap_or(0),
                    previous: outcome.previous,
                })
            },
            |reply| hit_or_miss(reply.stored),
        )
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Delete, primary, req, |mut peer, request| async move {
                    peer.delete(request).await
                })
                .await;
        }
        self.run(
            Op::Delete,
            |node, now| {
                check_consistency(req.consistency)?;
                Ok(v1::DeleteResponse {
                    deleted: node.store().delete(&req.key, now)?,
                })
            },
            |reply| hit_or_miss(reply.deleted),
        )
    }

    async fn m_get(
        &self,
        request: Request<v1::MGetRequest>,
    ) -> Result<Response<v1::MGetResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let split = self.split(&metadata, req.keys.iter().map(|k| &k[..]));
        self.run_split(
            Op::MGet,
            split,
            |node| {
                check_consistency(req.consistency)?;
                check_batch(node, req.keys.len())
            },
            |positions| v1::MGetRequest {
                keys: positions.iter().map(|&p| req.keys[p].clone()).collect(),
                consistency: req.consistency,
            },
            |mut peer, request| async move { peer.m_get(request).await },
            |node, now, local| {
                let keys: Vec<&Bytes> = local.iter().map(|&p| &req.keys[p]).collect();
                let items = node.store().mget(&keys, now)?;
                Ok(items.into_iter().map(|item| found(item, now)).collect())
            },
            |response: v1::MGetResponse, _| response.results,
            |results| v1::MGetResponse { results },
        )
        .await
    }

    async fn m_set(
        &self,
        request: Request<v1::MSetRequest>,
    ) -> Result<Response<v1::MSetResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let split = self.split(&metadata, req.entries.iter().map(|kv| &kv.key[..]));
        self.run_split(
            Op::MSet,
            split,
            |node| {
                check_consistency(req.consistency)?;
                check_batch(node, req.entries.len())
            },
            |positions| v1::MSetRequest {
                entries: positions.iter().map(|&p| req.entries[p].clone()).collect(),
                ttl_ms: req.ttl_ms,
                consistency: req.consistency,
            },
            |mut peer, request| async move { peer.m_set(request).await },
            |node, now, local| {
                let pairs: Vec<(&Bytes, &Bytes)> = local
                    .iter()
                    .map(|&p| (&req.entries[p].key, &req.entries[p].value))
                    .collect();
                Ok(node.store().mset(&pairs, req.ttl_ms, now)?)
            },
            |response: v1::MSetResponse, _| response.versions,
            |versions| v1::MSetResponse { versions },
        )
        .await
    }

    async fn m_delete(
        &self,
        request: Request<v1::MDeleteRequest>,
    ) -> Result<Response<v1::MDeleteResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let split = self.split(&metadata, req.keys.iter().map(|k| &k[..]));
        self.run_split(
            Op::MDelete,
            split,
            |node| {
                check_consistency(req.consistency)?;
                check_batch(node, req.keys.len())
            },
            |positions| v1::MDeleteRequest {
                keys: positions.iter().map(|&p| req.keys[p].clone()).collect(),
                consistency: req.consistency,
            },
            |mut peer, request| async move { peer.m_delete(request).await },
            |node, now, local| {
                let keys: Vec<&Bytes> = local.iter().map(|&p| &req.keys[p]).collect();
                // One count per part, at its first position; the reply is the sum.
                let deleted = node.store().mdelete(&keys, now)?;
                Ok((0..local.len())
                    .map(|i| if i == 0 { deleted } else { 0 })
                    .collect())
            },
            |response: v1::MDeleteResponse, n| {
                let mut counts = vec![0; n];
                if let Some(first) = counts.first_mut() {
                    *first = response.deleted;
                }
                counts
            },
            |counts: Vec<u64>| v1::MDeleteResponse {
                deleted: counts.iter().sum(),
            },
        )
        .await
    }

    async fn incr(
        &self,
        request: Request<v1::IncrRequest>,
    ) -> Result<Response<v1::IncrResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Incr, primary, req, |mut peer, request| async move {
                    peer.incr(request).await
                })
                .await;
        }
        self.run(
            Op::Incr,
            |node, now| {
                check_consistency(req.consistency)?;
                let (value, version) = node.store().incr(&req.key, req.delta, req.ttl_ms, now)?;
                Ok(v1::IncrResponse { value, version })
            },
            |_| Outcome::Ok,
        )
    }

    async fn compare_and_set(
        &self,
        request: Request<v1::CompareAndSetRequest>,
    ) -> Result<Response<v1::CompareAndSetResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(
                    Op::CompareAndSet,
                    primary,
                    req,
                    |mut peer, request| async move { peer.compare_and_set(request).await },
                )
                .await;
        }
        self.run(
            Op::CompareAndSet,
            |node, now| {
                check_consistency(req.consistency)?;
                let version = node.store().compare_and_set(
                    &req.key,
                    req.expected_version,
                    &req.value,
                    req.ttl_ms,
                    now,
                )?;
                Ok(v1::CompareAndSetResponse { version })
            },
            |_| Outcome::Ok,
        )
    }

    async fn expire(
        &self,
        request: Request<v1::ExpireRequest>,
    ) -> Result<Response<v1::ExpireResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Expire, primary, req, |mut peer, request| async move {
                    peer.expire(request).await
                })
                .await;
        }
        self.run(
            Op::Expire,
            |node, now| {
                check_consistency(req.consistency)?;
                let updated = node
                    .store()
                    .set_ttl(&req.key, Some(req.ttl_ms), now)?
                    .is_some();
                Ok(v1::ExpireResponse { updated })
            },
            |reply| hit_or_miss(reply.updated),
        )
    }

    async fn persist(
        &self,
        request: Request<v1::PersistRequest>,
    ) -> Result<Response<v1::PersistResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Persist, primary, req, |mut peer, request| async move {
                    peer.persist(request).await
                })
                .await;
        }
        self.run(
            Op::Persist,
            |node, now| {
                check_consistency(req.consistency)?;
                let updated = node.store().set_ttl(&req.key, None, now)?.is_some();
                Ok(v1::PersistResponse { updated })
            },
            |reply| hit_or_miss(reply.updated),
        )
    }

    async fn ttl(
        &self,
        request: Request<v1::TtlRequest>,
    ) -> Result<Response<v1::TtlResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Ttl, primary, req, |mut peer, request| async move {
                    peer.ttl(request).await
                })
                .await;
        }
        self.run(
            Op::Ttl,
            |node, now| {
                check_consistency(req.consistency)?;
                Ok(match node.store().ttl(&req.key, now)? {
                    Ttl::Missing => v1::TtlResponse {
                        found: false,
                        ttl_ms: None,
                    },
                    Ttl::Persistent => v1::TtlResponse {
                        found: true,
                        ttl_ms: None,
                    },
                    Ttl::ExpiresIn(ms) => v1::TtlResponse {
                        found: true,
                        ttl_ms: Some(ms),
                    },
                })
            },
            |reply| hit_or_miss(reply.found),
        )
    }
}
