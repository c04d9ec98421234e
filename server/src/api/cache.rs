//! The `Cache` service: the key-value API of one node.
//!
//! A node serves every key it is asked about: with one node R is capped at 1, so every consistency
//! level is met by the local write. Replication to ring neighbours comes with the cluster layer.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringcache_proto::v1::{self, cache_server::Cache};
use tonic::{Request, Response, Status};

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
        let req = request.into_inner();
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
        let req = request.into_inner();
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
        let req = request.into_inner();
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
        let req = request.into_inner();
        self.run(
            Op::MGet,
            |node, now| {
                check_consistency(req.consistency)?;
                check_batch(node, req.keys.len())?;
                let items = node.store().mget(&req.keys, now)?;
                Ok(v1::MGetResponse {
                    results: items.into_iter().map(|item| found(item, now)).collect(),
                })
            },
            |_| Outcome::Ok,
        )
    }

    async fn m_set(
        &self,
        request: Request<v1::MSetRequest>,
    ) -> Result<Response<v1::MSetResponse>, Status> {
        let req = request.into_inner();
        self.run(
            Op::MSet,
            |node, now| {
                check_consistency(req.consistency)?;
                check_batch(node, req.entries.len())?;
                let pairs: Vec<(Bytes, Bytes)> = req
                    .entries
                    .into_iter()
                    .map(|kv| (kv.key, kv.value))
                    .collect();
                Ok(v1::MSetResponse {
                    versions: node.store().mset(&pairs, req.ttl_ms, now)?,
                })
            },
            |_| Outcome::Ok,
        )
    }

    async fn m_delete(
        &self,
        request: Request<v1::MDeleteRequest>,
    ) -> Result<Response<v1::MDeleteResponse>, Status> {
        let req = request.into_inner();
        self.run(
            Op::MDelete,
            |node, now| {
                check_consistency(req.consistency)?;
                check_batch(node, req.keys.len())?;
                Ok(v1::MDeleteResponse {
                    deleted: node.store().mdelete(&req.keys, now)?,
                })
            },
            |_| Outcome::Ok,
        )
    }

    async fn incr(
        &self,
        request: Request<v1::IncrRequest>,
    ) -> Result<Response<v1::IncrResponse>, Status> {
        let req = request.into_inner();
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
        let req = request.into_inner();
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
        let req = request.into_inner();
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
        let req = request.into_inner();
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
        let req = request.into_inner();
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
