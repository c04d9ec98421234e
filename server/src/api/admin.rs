//! The `Admin` service: operator actions on one node.

use std::sync::Arc;

use ringcache_proto::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use crate::known::ForgetError;
use crate::node::Node;

/// The `ringcache.v1.Admin` gRPC service.
#[derive(Debug, Clone)]
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    /// A service acting on `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    /// A node alone has no one to hand its data to: leaving means a graceful shutdown (in-flight
    /// requests finish, then the process exits). Hand-off to ring neighbours comes with replication.
    async fn leave(
        &self,
        request: Request<v1::LeaveRequest>,
    ) -> Result<Response<v1::LeaveResponse>, Status> {
        if request.into_inner().restart {
            tracing::info!("stop for a restart requested over the admin API");
            self.node
                .restart()
                .map_err(|refused| Status::failed_precondition(refused.to_string()))?;
            return Ok(Response::new(v1::LeaveResponse {
                state: v1::NodeState::Restarting.as_str_name().to_owned(),
            }));
        }
        tracing::info!("leave requested over the admin API");
        self.node.leave();
        Ok(Response::new(v1::LeaveResponse {
            state: v1::NodeState::Leaving.as_str_name().to_owned(),
        }))
    }

    async fn inspect(
        &self,
        request: Request<v1::InspectRequest>,
    ) -> Result<Response<v1::InspectResponse>, Status> {
        let key = request.into_inner().key;
        let view = self.node.view();
        let held = self
            .node
            .store()
            .get_versioned(&key)
            .map_err(Status::from)?;
        let now = self.node.now_ms();
        Ok(Response::new(v1::InspectResponse {
            slot: u32::from(ringcache_proto::placement::key_slot(&key)),
            replicas: view.replicas(&key).iter().map(str::to_owned).collect(),
            found: held.is_some(),
            live: held.as_ref().is_some_and(|item| item.is_live(now)),
            version: held.as_ref().map_or(0, |item| item.version),
            expires_at_ms: held.and_then(|item| item.expires_at_ms),
            topology_digest: view.topology.digest(),
        }))
    }

    async fn rebalance_status(
        &self,
        _: Request<v1::RebalanceStatusRequest>,
    ) -> Result<Response<v1::RebalanceStatusResponse>, Status> {
        Ok(Response::new(self.node.rebalance().to_wire()))
    }

    async fn forget(
        &self,
        request: Request<v1::ForgetRequest>,
    ) -> Result<Response<v1::ForgetResponse>, Status> {
        let node_id = request.into_inner().node_id;
        self.node.forget(&node_id).map_err(|error| match error {
            ForgetError::Alive(..) => Status::failed_precondition(error.to_string()),
            ForgetError::Unknown(_) => Status::not_found(error.to_string()),
        })?;
        let known = self.node.known_members().len();
        Ok(Response::new(v1::ForgetResponse {
            known_members: u32::try_from(known).unwrap_or(u32::MAX),
        }))
    }

    async fn hot_keys(
        &self,
        request: Request<v1::HotKeysRequest>,
    ) -> Result<Response<v1::HotKeysResponse>, Status> {
        let limit = request.into_inner().limit;
        let hot = self.node.hot_keys();
        let config = hot.config();
        if !config.enabled {
            return Err(Status::failed_precondition(
                "hot-key tracking is off on this node (--hot-keys off)",
            ));
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if limit == 0 || limit > config.capacity {
            return Err(Status::invalid_argument(format!(
                "limit must be between 1 and hot_keys_capacity ({}), got {limit}",
                config.capacity
            )));
        }
        let report = hot.report(limit);
        Ok(Response::new(v1::HotKeysResponse {
            window_ms: u64::try_from(report.window.as_millis()).unwrap_or(u64::MAX),
            total_requests: report.total,
            sample: config.sample,
            entries: report
                .keys
                .iter()
                .map(|entry| v1::HotKeyEntry {
                    key: entry.key.clone().into(),
                    requests: entry.count,
                    error: entry.error,
                    requests_per_second: report.per_second(entry.count),
                    reads: entry.reads,
                    writes: entry.writes,
                })
                .collect(),
        }))
    }

    async fn flush(
        &self,
        _: Request<v1::FlushRequest>,
    ) -> Result<Response<v1::FlushResponse>, Status> {
        let removed = self.node.store().flush();
        tracing::info!(removed, "flushed over the admin API");
        Ok(Response::new(v1::FlushResponse { removed }))
    }
}
