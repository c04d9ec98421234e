//! The `Cache` service: the key-value API of one node.
//!
//! A request for a key this node is a replica of is served here; any other key is forwarded one
//! hop to its primary ([`super::forward`]). A write served here is applied to the local store
//! (which decides versions and conditions) and then replicated to the key's other replicas until
//! the request's consistency level is met ([`crate::replication`]); a write that applied nothing
//! (unmet condition, missing key) replicates nothing. Reads at ONE (the default) are local; at
//! QUORUM and ALL they ask the other replicas too and return the newest copy.

use crate::auth::Principal;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringcache_proto::v1::cache_client::CacheClient;
use ringcache_proto::v1::{self, cache_server::Cache};
use tokio::task::JoinSet;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::forward::{Split, forward, was_forwarded};
use super::status::{ApiError, outcome_of};
use crate::metrics::{Op, Outcome};
use crate::node::Node;
use crate::replication::{self, Consistency, ReplicationError};
use crate::store::{ExpireOutcome, Expiry, Item, SetCondition, SetOptions, Ttl, VersionedItem};

/// When a request arrived, for its latency, and the wall-clock time it runs at (expiry,
/// versions): read once per gRPC request, and once per batch of pipelined commands read from a
/// RESP connection (a command's latency then counts from its batch's arrival, the wait behind
/// the commands before it included).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// When it arrived.
    pub start: Instant,
    /// The node's clock then, in milliseconds since the Unix epoch.
    pub now_ms: u64,
}

impl Arrival {
    /// Now, by `node`'s clock.
    pub fn now(node: &Node) -> Self {
        Self {
            start: Instant::now(),
            now_ms: node.now_ms(),
        }
    }
}

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

    /// Counts a request for the hot-key summary on the node the client sent it to (a
    /// forwarded request was counted there).
    #[inline]
    pub(super) fn hot(&self, metadata: &MetadataMap, key: &[u8], access: crate::hotkeys::Access) {
        let hot = self.node.hot_keys();
        if hot.enabled() && !was_forwarded(metadata) {
            hot.record(key, access);
        }
    }

    /// [`Self::hot`] for each key of a multi-key request.
    fn hot_all<'a>(
        &self,
        metadata: &MetadataMap,
        keys: impl IntoIterator<Item = &'a [u8]>,
        access: crate::hotkeys::Access,
    ) {
        let hot = self.node.hot_keys();
        if hot.enabled() && !was_forwarded(metadata) {
            hot.record_all(keys, access);
        }
    }

    /// Marks a Get answer `hot` when this node counts its key as hot: the client may then
    /// spread the key's reads over its replicas. An answer a peer marked stays marked.
    #[inline]
    fn mark_hot(&self, key: &[u8], reply: &mut v1::GetResponse) {
        if !reply.hot {
            reply.hot = self.node.hot_keys().is_hot(key);
        }
    }

    pub(super) fn node(&self) -> &Node {
        &self.node
    }

    pub(super) fn node_arc(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Runs one write served here: checks the level and minority protection, applies it with
    /// `handler` (which returns the reply and the keys it changed), replicates those keys, and
    /// records the outcome.
    pub(super) async fn run_write<T>(
        &self,
        op: Op,
        consistency: i32,
        handler: impl FnOnce(&Node, u64) -> Result<(T, Vec<Bytes>), ApiError>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let result = async {
            let level = write_level(&self.node, consistency)?;
            replication::check_writable(&self.node, level).map_err(status_of)?;
            let (reply, keys) = handler(&self.node, self.node.now_ms())?;
            replication::replicate(self.node.context(), keys, level)
                .await
                .map_err(status_of)?;
            Ok(reply)
        }
        .await;
        self.record(op, start, &result, outcome);
        result.map(Response::new)
    }

    /// Runs one single-key read served here: at ONE with `local`, at QUORUM or ALL from the
    /// newest copy among the replicas, turned into the reply by `newest`.
    async fn run_read<T>(
        &self,
        op: Op,
        consistency: i32,
        key: &Bytes,
        local: impl FnOnce(&Node, u64) -> Result<T, ApiError>,
        newest: impl FnOnce(Option<VersionedItem>, u64) -> T,
        outcome: impl FnOnce(&T) -> Outcome,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let result = async {
            let level = read_level(&self.node, consistency)?;
            if level == Consistency::One {
                return Ok(local(&self.node, self.node.now_ms())?);
            }
            let winners = replication::read(self.node.context(), std::slice::from_ref(key), level)
                .await
                .map_err(status_of)?;
            let winner = winners.into_iter().next().flatten();
            Ok(newest(winner, self.node.now_ms()))
        }
        .await;
        self.record(op, start, &result, outcome);
        result.map(Response::new)
    }

    /// Runs one single-key write at once, without awaiting, when it needs nothing from another
    /// node: the key's replica set holds no other node and the level is met by this node's own
    /// copy (a lone node, R = 1). `None` when it must take the general path ([`Self::run_write`]:
    /// forwarded to the primary or replicated); nothing has been applied then. The checks, the
    /// store call and the metrics are those of `run_write`.
    pub(crate) fn write_here<T>(
        &self,
        op: Op,
        consistency: i32,
        key: &[u8],
        arrival: Arrival,
        handler: impl FnOnce(&Node, u64) -> Result<T, ApiError>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) -> Option<Result<T, Status>> {
        let start = arrival.start;
        let level = match write_level(&self.node, consistency) {
            Ok(level) => level,
            Err(error) => return Some(self.recorded(op, start, Err(error.into()), outcome)),
        };
        if replication::needs_others(&self.node.view(), &self.node.config().node_id, key, level) {
            return None;
        }
        let result = replication::check_writable(&self.node, level)
            .map_err(status_of)
            .and_then(|()| Ok(handler(&self.node, arrival.now_ms)?));
        Some(self.recorded(op, start, result, outcome))
    }

    /// Whether a request for `key` is served here: this node holds it, or another node
    /// `forwarded` the request here to be served.
    fn serves(&self, key: &[u8], forwarded: bool) -> bool {
        forwarded
            || self
                .node
                .view()
                .forward_target(key, &self.node.config().node_id)
                .is_none()
    }

    /// Runs one single-key read this node [serves](Self::serves) at once, without awaiting,
    /// when the level is ONE (its own copy answers). `None` when it must take the general path
    /// ([`Self::run_read`]).
    pub(crate) fn read_here<T>(
        &self,
        op: Op,
        consistency: i32,
        arrival: Arrival,
        local: impl FnOnce(&Node, u64) -> Result<T, ApiError>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) -> Option<Result<T, Status>> {
        let start = arrival.start;
        let result = match read_level(&self.node, consistency) {
            Ok(Consistency::One) => local(&self.node, arrival.now_ms).map_err(Status::from),
            Ok(_) => return None,
            Err(error) => Err(error.into()),
        };
        Some(self.recorded(op, start, result, outcome))
    }

    fn recorded<T>(
        &self,
        op: Op,
        start: Instant,
        result: Result<T, Status>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) -> Result<T, Status> {
        self.record(op, start, &result, outcome);
        result
    }

    fn record<T>(
        &self,
        op: Op,
        start: Instant,
        result: &Result<T, Status>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) {
        let recorded = match result {
            Ok(reply) => outcome(reply),
            Err(status) => outcome_of(status),
        };
        self.node.metrics().record(op, recorded, start.elapsed());
    }
}

impl CacheService {
    /// Runs a multi-key request: validates it, forwards the parts owned elsewhere in parallel,
    /// serves the local part, and reassembles the results in request order. `part` builds the
    /// sub-request for some positions, `local` serves positions here (replicating or reading
    /// from the replicas as the level asks), `unpack` turns a peer's reply for `n` positions into
    /// `n` values, `pack` builds the reply from all values.
    #[allow(clippy::too_many_arguments)]
    async fn run_split<Req, Resp, T, F, Fut, L, LFut>(
        &self,
        op: Op,
        split: Split,
        validate: impl FnOnce(&Node) -> Result<(), ApiError>,
        part: impl Fn(&[usize]) -> Req,
        call: F,
        local: L,
        unpack: impl Fn(Resp, usize) -> Vec<T>,
        pack: impl FnOnce(Vec<T>) -> Resp,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        T: Default + Clone,
        F: FnOnce(CacheClient<Channel>, Request<Req>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
        L: FnOnce(Arc<Node>, Vec<usize>) -> LFut,
        LFut: Future<Output = Result<Vec<T>, Status>>,
    {
        let start = Instant::now();
        let result = async {
            validate(&self.node)?;
            if split.remote.is_empty() {
                // Every key is served here (the common case with a smart client): the local
                // results are already in request order.
                return Ok(pack(local(self.node.clone(), split.local).await?));
            }
            let n = split.local.len() + split.remote.iter().map(|(_, p)| p.len()).sum::<usize>();
            let mut remote = JoinSet::new();
            for (primary, positions) in split.remote {
                let message = part(&positions);
                let forwarded = forward(self.node.clone(), op, primary, message, call.clone());
                crate::logging::spawn_in(&mut remote, async move { (positions, forwarded.await) });
            }
            let mut values = vec![T::default(); n];
            if !split.local.is_empty() {
                let served = local(self.node.clone(), split.local.clone()).await?;
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

pub(super) fn check_consistency(value: i32) -> Result<(), ApiError> {
    v1::Consistency::try_from(value)
        .map(|_| ())
        .map_err(|_| ApiError::Invalid(format!("unknown consistency level {value}")))
}

/// The level of a write: the request's, or the cluster default for writes.
pub(super) fn write_level(node: &Node, value: i32) -> Result<Consistency, ApiError> {
    Consistency::from_wire(value, node.config().replication.write_consistency)
        .map_err(|value| ApiError::Invalid(format!("unknown consistency level {value}")))
}

/// The level of a read: the request's, or the cluster default for reads. A node whose clock is
/// off from the cluster's serves no read: its own copies may carry versions stamped too far
/// ahead, which would win against every later write ([`crate::skew`]).
fn read_level(node: &Node, value: i32) -> Result<Consistency, ApiError> {
    let level = Consistency::from_wire(value, node.config().replication.read_consistency)
        .map_err(|value| ApiError::Invalid(format!("unknown consistency level {value}")))?;
    if let Some(refusal) = node
        .clock_check()
        .refusal_of("reads", node.config().store.max_clock_drift_ms)
    {
        return Err(ApiError::Unavailable(refusal));
    }
    Ok(level)
}

/// The status of a replication failure: the store's code for a refused key, else UNAVAILABLE.
pub(super) fn status_of(error: ReplicationError) -> Status {
    match error {
        ReplicationError::Store(error) => Status::from(error),
        ReplicationError::Unavailable(message) => Status::unavailable(message),
    }
}

/// A Get answer from the newest copy among the replicas (tombstones and expired copies: miss).
fn found_versioned(item: Option<VersionedItem>, now_ms: u64) -> v1::GetResponse {
    match item {
        Some(item) if item.is_live(now_ms) => v1::GetResponse {
            found: true,
            value: item.value.unwrap_or_default(),
            version: item.version,
            ttl_ms: ttl_left(item.expires_at_ms, now_ms),
            hot: false,
            tracked: false,
        },
        _ => v1::GetResponse::default(),
    }
}

fn ttl_reply(ttl: Ttl, now_ms: u64) -> v1::TtlResponse {
    match ttl {
        Ttl::Missing => v1::TtlResponse::default(),
        Ttl::Persistent => v1::TtlResponse {
            found: true,
            ..v1::TtlResponse::default()
        },
        Ttl::ExpiresIn(ms) => v1::TtlResponse {
            found: true,
            ttl_ms: Some(ms),
            expires_at_ms: Some(now_ms.saturating_add(ms)),
        },
    }
}

/// The remaining lifetime of the newest copy among the replicas.
fn ttl_of(item: Option<VersionedItem>, now_ms: u64) -> Ttl {
    match item {
        Some(item) if item.is_live(now_ms) => match item.expires_at_ms {
            None => Ttl::Persistent,
            Some(at) => Ttl::ExpiresIn(at - now_ms),
        },
        _ => Ttl::Missing,
    }
}

pub(super) fn check_batch(node: &Node, n_keys: usize) -> Result<(), ApiError> {
    let max = node.config().max_batch_keys;
    if n_keys > max {
        return Err(ApiError::Invalid(format!(
            "{n_keys} keys in one request, more than max_batch_keys ({max})"
        )));
    }
    Ok(())
}

pub(super) fn ttl_left(expires_at_ms: Option<u64>, now_ms: u64) -> Option<u64> {
    expires_at_ms.map(|at| at.saturating_sub(now_ms).max(1))
}

fn found(item: Option<Item>, now_ms: u64) -> v1::GetResponse {
    match item {
        Some(item) => v1::GetResponse {
            found: true,
            value: item.value,
            version: item.version,
            ttl_ms: ttl_left(item.expires_at_ms, now_ms),
            hot: false,
            tracked: false,
        },
        None => v1::GetResponse::default(),
    }
}

pub(super) fn hit_or_miss(hit: bool) -> Outcome {
    if hit { Outcome::Ok } else { Outcome::Miss }
}

#[tonic::async_trait]
impl Cache for CacheService {
    type PipelineStream = super::pipeline::PipelineStream;

    async fn pipeline(
        &self,
        request: Request<Streaming<v1::PipelineRequestBatch>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        let principal = request.extensions().get::<Principal>().cloned();
        Ok(super::pipeline::serve(
            self.clone(),
            principal,
            request.into_inner(),
        ))
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        let (metadata, _, mut req) = request.into_parts();
        self.hot(&metadata, &req.key, crate::hotkeys::Access::Read);
        let tracking_id = std::mem::take(&mut req.tracking_id);
        let key = req.key.clone();
        let mut response = if let Some(reply) = self.get_here(
            &req.key,
            req.consistency,
            was_forwarded(&metadata),
            Arrival::now(&self.node),
            tracking_id,
        ) {
            Response::new(reply?)
        } else {
            // Not served here at ONE: whatever the caller caches for the key is dropped, as this
            // node will not see the key's changes.
            self.node.tracking().untracked(tracking_id, &req.key);
            if let Some(primary) = self.route(&metadata, &req.key) {
                self.forward_one(Op::Get, primary, req, |mut peer, request| async move {
                    peer.get(request).await
                })
                .await?
            } else {
                self.run_read(
                    Op::Get,
                    req.consistency,
                    &req.key,
                    |node, now| get_local(node, &req.key, now),
                    found_versioned,
                    |reply| hit_or_miss(reply.found),
                )
                .await?
            }
        };
        self.mark_hot(&key, response.get_mut());
        Ok(response)
    }

    type InvalidationsStream = super::invalidations::InvalidationsStream;

    async fn invalidations(
        &self,
        _request: Request<v1::InvalidationsRequest>,
    ) -> Result<Response<Self::InvalidationsStream>, Status> {
        super::invalidations::serve(&self.node).map(Response::new)
    }

    async fn set(
        &self,
        request: Request<v1::SetRequest>,
    ) -> Result<Response<v1::SetResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.hot(&metadata, &req.key, crate::hotkeys::Access::Write);
        if req.lease_token != 0 {
            // A leased Set goes to the key's primary, which holds the lease and its waiters.
            if let Some(primary) = self.lease_route(&metadata, &req.key) {
                return self
                    .forward_one(Op::Set, primary, req, |mut peer, request| async move {
                        peer.set(request).await
                    })
                    .await;
            }
        }
        if let Some(reply) = self.set_here(&req, Arrival::now(&self.node)) {
            return reply.map(Response::new);
        }
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Set, primary, req, |mut peer, request| async move {
                    peer.set(request).await
                })
                .await;
        }
        self.run_write(
            Op::Set,
            req.consistency,
            |node, now| {
                let reply = apply_set(node, &req, now)?;
                let changed = written(reply.stored, &req.key);
                Ok((reply, changed))
            },
            |reply| hit_or_miss(reply.stored),
        )
        .await
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.hot(&metadata, &req.key, crate::hotkeys::Access::Write);
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Delete, primary, req, |mut peer, request| async move {
                    peer.delete(request).await
                })
                .await;
        }
        self.run_write(
            Op::Delete,
            req.consistency,
            |node, now| {
                // The tombstone is replicated even when nothing live was here: another replica
                // may hold the key.
                let (deleted, previous) = if req.return_previous {
                    let (previous, _) = node.store().take(&req.key, now)?;
                    (previous.is_some(), previous)
                } else {
                    (node.store().delete(&req.key, now)?, None)
                };
                let reply = v1::DeleteResponse { deleted, previous };
                Ok((reply, vec![req.key.clone()]))
            },
            |reply| hit_or_miss(reply.deleted),
        )
        .await
    }

    async fn m_get(
        &self,
        request: Request<v1::MGetRequest>,
    ) -> Result<Response<v1::MGetResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.hot_all(
            &metadata,
            req.keys.iter().map(|k| &k[..]),
            crate::hotkeys::Access::Read,
        );
        let split = self.split(&metadata, req.keys.iter().map(|k| &k[..]));
        let tracking_id = req.tracking_id;
        if tracking_id != 0 {
            // Keys another node answers: this one will not see their changes.
            for (_, positions) in &split.remote {
                for &p in positions {
                    self.node.tracking().untracked(tracking_id, &req.keys[p]);
                }
            }
        }
        let req = &req;
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
                tracking_id: 0,
            },
            |mut peer, request| async move { peer.m_get(request).await },
            |node, local| async move {
                let level = read_level(&node, req.consistency)?;
                let keys: Vec<Bytes> = local.iter().map(|&p| req.keys[p].clone()).collect();
                if level == Consistency::One {
                    // Tracked before the store is read: a change after this is told.
                    let tracked: Vec<bool> = keys
                        .iter()
                        .map(|key| track(&node, tracking_id, key))
                        .collect();
                    let now = node.now_ms();
                    let items = node.store().mget(&keys, now).map_err(Status::from)?;
                    return Ok(items
                        .into_iter()
                        .zip(tracked)
                        .map(|(item, tracked)| v1::GetResponse {
                            tracked,
                            ..found(item, now)
                        })
                        .collect());
                }
                for key in &keys {
                    node.tracking().untracked(tracking_id, key);
                }
                let winners = replication::read(node.context(), &keys, level)
                    .await
                    .map_err(status_of)?;
                let now = node.now_ms();
                Ok(winners
                    .into_iter()
                    .map(|item| found_versioned(item, now))
                    .collect())
            },
            |response: v1::MGetResponse, _| response.results,
            |results| v1::MGetResponse { results },
        )
        .await
        .map(|mut response| {
            for (key, result) in req.keys.iter().zip(&mut response.get_mut().results) {
                self.mark_hot(key, result);
            }
            response
        })
    }

    async fn m_set(
        &self,
        request: Request<v1::MSetRequest>,
    ) -> Result<Response<v1::MSetResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.hot_all(
            &metadata,
            req.entries.iter().map(|kv| &kv.key[..]),
            crate::hotkeys::Access::Write,
        );
        if req.if_absent {
            return self.m_set_if_absent(&metadata, req).await;
        }
        let split = self.split(&metadata, req.entries.iter().map(|kv| &kv.key[..]));
        let req = &req;
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
                if_absent: false,
            },
            |mut peer, request| async move { peer.m_set(request).await },
            |node, local| async move {
                let level = write_level(&node, req.consistency)?;
                replication::check_writable(&node, level).map_err(status_of)?;
                let pairs: Vec<(&Bytes, &Bytes)> = local
                    .iter()
                    .map(|&p| (&req.entries[p].key, &req.entries[p].value))
                    .collect();
                let versions = node
                    .store()
                    .mset(&pairs, req.ttl_ms, node.now_ms())
                    .map_err(Status::from)?;
                let keys: Vec<Bytes> = local.iter().map(|&p| req.entries[p].key.clone()).collect();
                replication::replicate(node.context(), keys, level)
                    .await
                    .map_err(status_of)?;
                Ok(versions)
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
        self.hot_all(
            &metadata,
            req.keys.iter().map(|k| &k[..]),
            crate::hotkeys::Access::Write,
        );
        let split = self.split(&metadata, req.keys.iter().map(|k| &k[..]));
        let req = &req;
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
            |node, local| async move {
                let level = write_level(&node, req.consistency)?;
                replication::check_writable(&node, level).map_err(status_of)?;
                let keys: Vec<Bytes> = local.iter().map(|&p| req.keys[p].clone()).collect();
                // One count per part, at its first position; the reply is the sum.
                let deleted = node
                    .store()
                    .mdelete(&keys, node.now_ms())
                    .map_err(Status::from)?;
                replication::replicate(node.context(), keys, level)
                    .await
                    .map_err(status_of)?;
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
        self.hot(&metadata, &req.key, crate::hotkeys::Access::Write);
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Incr, primary, req, |mut peer, request| async move {
                    peer.incr(request).await
                })
                .await;
        }
        self.run_write(
            Op::Incr,
            req.consistency,
            |node, now| {
                let (value, version) = node.store().incr(&req.key, req.delta, req.ttl_ms, now)?;
                Ok((v1::IncrResponse { value, version }, vec![req.key.clone()]))
            },
            |_| Outcome::Ok,
        )
        .await
    }

    async fn compare_and_set(
        &self,
        request: Request<v1::CompareAndSetRequest>,
    ) -> Result<Response<v1::CompareAndSetResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.hot(&metadata, &req.key, crate::hotkeys::Access::Write);
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
        self.run_write(
            Op::CompareAndSet,
            req.consistency,
            |node, now| {
                let version = node.store().compare_and_set(
                    &req.key,
                    req.expected_version,
                    &req.value,
                    req.ttl_ms,
                    now,
                )?;
                Ok((v1::CompareAndSetResponse { version }, vec![req.key.clone()]))
            },
            |_| Outcome::Ok,
        )
        .await
    }

    async fn expire(
        &self,
        request: Request<v1::ExpireRequest>,
    ) -> Result<Response<v1::ExpireResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.hot(&metadata, &req.key, crate::hotkeys::Access::Write);
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Expire, primary, req, |mut peer, request| async move {
                    peer.expire(request).await
                })
                .await;
        }
        self.run_write(
            Op::Expire,
            req.consistency,
            |node, now| {
                let condition = super::update::expire_condition(req.condition)?;
                let expiry = match req.expires_at_ms {
                    Some(at) => Expiry::At(at),
                    None => Expiry::In(req.ttl_ms),
                };
                let (updated, deleted) =
                    match node.store().expire(&req.key, expiry, condition, now)? {
                        ExpireOutcome::Missing | ExpireOutcome::Unchanged => (false, false),
                        ExpireOutcome::Updated(_) => (true, false),
                        ExpireOutcome::Deleted(_) => (true, true),
                    };
                let reply = v1::ExpireResponse { updated, deleted };
                Ok((reply, written(updated, &req.key)))
            },
            |reply| hit_or_miss(reply.updated),
        )
        .await
    }

    async fn persist(
        &self,
        request: Request<v1::PersistRequest>,
    ) -> Result<Response<v1::PersistResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.hot(&metadata, &req.key, crate::hotkeys::Access::Write);
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Persist, primary, req, |mut peer, request| async move {
                    peer.persist(request).await
                })
                .await;
        }
        self.run_write(
            Op::Persist,
            req.consistency,
            |node, now| {
                let updated = node.store().set_ttl(&req.key, None, now)?.is_some();
                Ok((v1::PersistResponse { updated }, written(updated, &req.key)))
            },
            |reply| hit_or_miss(reply.updated),
        )
        .await
    }

    async fn get_or_lease(
        &self,
        request: Request<v1::GetOrLeaseRequest>,
    ) -> Result<Response<v1::GetOrLeaseResponse>, Status> {
        self.serve_get_or_lease(request).await
    }

    async fn update(
        &self,
        request: Request<v1::UpdateRequest>,
    ) -> Result<Response<v1::UpdateResponse>, Status> {
        self.serve_update(request).await
    }

    async fn ttl(
        &self,
        request: Request<v1::TtlRequest>,
    ) -> Result<Response<v1::TtlResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.hot(&metadata, &req.key, crate::hotkeys::Access::Read);
        if let Some(primary) = self.route(&metadata, &req.key) {
            return self
                .forward_one(Op::Ttl, primary, req, |mut peer, request| async move {
                    peer.ttl(request).await
                })
                .await;
        }
        self.run_read(
            Op::Ttl,
            req.consistency,
            &req.key,
            |node, now| Ok(ttl_reply(node.store().ttl(&req.key, now)?, now)),
            |item, now| ttl_reply(ttl_of(item, now), now),
            |reply| hit_or_miss(reply.found),
        )
        .await
    }
}

/// The keys a single-key write changed: the key if it took effect, none otherwise.
impl CacheService {
    /// A Get this node answers at once (see [`Self::read_here`]); `None`: the general path.
    /// `forwarded`: another node sent it here to be served. A non-zero `tracking_id` (a
    /// near-cache invalidation stream) tracks the key for that stream before the store is read,
    /// when the read is served here.
    pub(crate) fn get_here(
        &self,
        key: &[u8],
        consistency: i32,
        forwarded: bool,
        arrival: Arrival,
        tracking_id: u64,
    ) -> Option<Result<v1::GetResponse, Status>> {
        if !self.serves(key, forwarded) {
            return None;
        }
        self.read_here(
            Op::Get,
            consistency,
            arrival,
            |node, now| {
                let tracked = track(node, tracking_id, key);
                let mut reply = get_local(node, key, now)?;
                reply.tracked = tracked;
                Ok(reply)
            },
            |reply| hit_or_miss(reply.found),
        )
    }

    /// A Set this node completes at once (see [`Self::write_here`]); `None`: the general path.
    pub(crate) fn set_here(
        &self,
        req: &v1::SetRequest,
        arrival: Arrival,
    ) -> Option<Result<v1::SetResponse, Status>> {
        self.write_here(
            Op::Set,
            req.consistency,
            &req.key,
            arrival,
            |node, now| apply_set(node, req, now),
            |reply| hit_or_miss(reply.stored),
        )
    }
}

/// Remembers that stream `tracking_id` reads `key` (before the store is read), unless the key
/// is one the store refuses (empty or too long: the read fails anyway, and the table never holds
/// a key longer than `max_key_bytes`). Whether it is tracked: the answer's `tracked`, without
/// which a client must not cache it (an id this node does not know, e.g. one from before a
/// restart, is served untracked).
fn track(node: &Node, tracking_id: u64, key: &[u8]) -> bool {
    tracking_id != 0
        && node.store().check_key(key).is_ok()
        && node.tracking().track(tracking_id, key)
}

/// A Get from this node's store.
fn get_local(node: &Node, key: &[u8], now: u64) -> Result<v1::GetResponse, ApiError> {
    Ok(found(node.store().get(key, now)?, now))
}

/// Applies a Set to this node's store.
fn apply_set(node: &Node, req: &v1::SetRequest, now: u64) -> Result<v1::SetResponse, ApiError> {
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
    let expiries = usize::from(req.ttl_ms.is_some())
        + usize::from(req.expires_at_ms.is_some())
        + usize::from(req.keep_ttl);
    if expiries > 1 {
        return Err(ApiError::Invalid(
            "ttl_ms, expires_at_ms and keep_ttl exclude each other".to_owned(),
        ));
    }
    let options = SetOptions {
        ttl_ms: req.ttl_ms,
        expires_at_ms: req.expires_at_ms,
        keep_ttl: req.keep_ttl,
        condition,
        return_previous: req.return_previous,
    };
    let outcome = node.store().set(&req.key, &req.value, options, now)?;
    Ok(v1::SetResponse {
        stored: outcome.version.is_some(),
        version: outcome.version.unwrap_or(0),
        previous: outcome.previous,
    })
}

pub(super) fn written(applied: bool, key: &Bytes) -> Vec<Bytes> {
    if applied { vec![key.clone()] } else { vec![] }
}
