//! The standard gRPC health service (`grpc.health.v1.Health`) on the client port, for
//! Kubernetes gRPC probes, `grpc_health_probe`, load balancers and service meshes.
//!
//! It answers exactly what `/health/ready` answers ([`Node::readiness`], rules in
//! [`crate::readiness`]): `SERVING` when the node is ready, `NOT_SERVING` otherwise, computed at
//! the moment of each `Check`. The overall status (service `""`) and each client-plane service
//! (`ringcache.v1.Cache`, `ringcache.v1.Cluster`, `ringcache.v1.Admin`) share it; any other
//! name is `NOT_FOUND` (`Check`) or `SERVICE_UNKNOWN` (`Watch`), as the protocol says.
//!
//! `Watch` sends the current status at once and then each change: readiness is re-evaluated
//! whenever the node's view changes and every [`WATCH_RECHECK`] (the settle window ends with
//! time alone). When the node shuts down the stream sends `NOT_SERVING` and ends, so a graceful
//! shutdown never waits on a watcher.
//!
//! The auth layer lets health calls through without credentials (as `/health/ready` on the HTTP
//! port): probes carry none, and the answer is one status. TLS still applies, and a connection
//! that sends only health calls is still closed at the handshake timeout when users are
//! configured ([`crate::connections`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::node::Node;

/// The gRPC service name of the health service; the auth layer lets its methods through.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// The service names the health service knows: `""` (the server as a whole) and the
/// client-plane services. All share the node's readiness.
pub const HEALTH_SERVICES: [&str; 4] = [
    "",
    "ringcache.v1.Cache",
    "ringcache.v1.Cluster",
    "ringcache.v1.Admin",
];

/// How often a `Watch` re-evaluates readiness when nothing else woke it.
pub const WATCH_RECHECK: Duration = Duration::from_millis(500);

/// The `grpc.health.v1.Health` gRPC service.
#[derive(Debug, Clone)]
pub struct HealthService {
    node: Arc<Node>,
}

impl HealthService {
    /// A service answering for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

/// The status of `service` on `node` now; `None` for a service name it does not know.
fn status_of(node: &Node, service: &str) -> Option<ServingStatus> {
    if !HEALTH_SERVICES.contains(&service) {
        return None;
    }
    Some(if node.is_ready() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    })
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match status_of(&self.node, &service) {
            Some(status) => Ok(Response::new(response(status))),
            None => Err(Status::not_found(format!(
                "unknown service {service:?}; this node reports \"\" (the whole node) and {}",
                HEALTH_SERVICES[1..].join(", ")
            ))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let (tx, rx) = mpsc::channel(4);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut views = node.watch_view();
            let shutdown = node.shutdown_token().clone();
            let mut tick = tokio::time::interval(WATCH_RECHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = None;
            loop {
                let status = status_of(&node, &service).unwrap_or(ServingStatus::ServiceUnknown);
                if last != Some(status) {
                    last = Some(status);
                    if tx.send(Ok(response(status))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tx.closed() => return,
                    changed = views.changed() => if changed.is_err() { break },
                    _ = tick.tick() => {}
                }
            }
            if last != Some(ServingStatus::NotServing)
                && last != Some(ServingStatus::ServiceUnknown)
            {
                let _ = tx.send(Ok(response(ServingStatus::NotServing))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
