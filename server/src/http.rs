//! The HTTP endpoint: Prometheus `/metrics`, `/health/live` and `/health/ready`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::node::Node;

/// Serves until the node shuts down.
pub(crate) async fn serve(node: Arc<Node>, listener: TcpListener) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(node.clone());
    let shutdown = node.shutdown_token().clone().cancelled_owned();
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(%error, "the HTTP server failed");
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let stats = node.store().stats();
    let gossip = node.gossip_stats();
    let view = node.view();
    node.metrics()
        .set_cluster(gossip.as_ref(), view.ring.nodes().len());
    node.metrics().set_health(
        &node.cluster_health(),
        view.topology.digest(),
        node.readiness().is_ok(),
    );
    node.metrics().collect_process();
    node.metrics().set_rebalance(
        &node.rebalance().to_wire(),
        node.rebalance()
            .stream_bytes_sent
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    node.metrics().set_anti_entropy(node.anti_entropy());
    node.metrics().set_hot_keys(node.hot_keys());
    node.metrics().set_leases(node.leases());
    node.metrics().set_tracking(node.tracking().stats());
    let connections = node.connections();
    node.metrics().set_connections(
        connections.open(),
        connections.max(),
        connections.rejected(),
    );
    let security = &node.metrics().security;
    security.set_plane(0, node.connections());
    security.set_plane(1, node.cluster_connections());
    security.set_gauges(
        node.cluster_connections().open(),
        node.unauthenticated_connections().open(),
        node.is_insecure(),
    );
    node.metrics()
        .set_replication_lag(node.replicator().replication_lag(node.now_ms()));
    let body = node
        .metrics()
        .render(&stats, node.config().store.max_memory_bytes, node.uptime());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn live() -> impl IntoResponse {
    (StatusCode::OK, "live\n")
}

/// 200 `ready` once the node has joined and its ring has converged; else 503 `not ready:
/// <reason>` (see [`crate::readiness`]).
async fn ready(State(node): State<Arc<Node>>) -> impl IntoResponse {
    match node.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}
