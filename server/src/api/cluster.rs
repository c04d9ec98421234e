//! The `Cluster` service: topology and node information.

use std::pin::Pin;
use std::sync::Arc;

use ringcache_proto::v1::{self, cluster_server::Cluster};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::node::Node;

/// The `ringcache.v1.Cluster` gRPC service.
#[derive(Debug, Clone)]
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// A service answering for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

type TopologyStream = Pin<Box<dyn Stream<Item = Result<v1::Topology, Status>> + Send>>;

/// This node's request limits, as clients learn them with the topology (they split batches to
/// fit).
fn limits(node: &Node) -> v1::NodeLimits {
    let config = node.config();
    v1::NodeLimits {
        max_batch_keys: u32::try_from(config.max_batch_keys).unwrap_or(u32::MAX),
        max_message_bytes: u64::try_from(config.max_message_bytes).unwrap_or(u64::MAX),
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn get_topology(
        &self,
        _: Request<v1::GetTopologyRequest>,
    ) -> Result<Response<v1::Topology>, Status> {
        let mut topology = self.node.topology();
        topology.sender_limits = Some(limits(&self.node));
        Ok(Response::new(topology))
    }

    type WatchTopologyStream = TopologyStream;

    async fn watch_topology(
        &self,
        _: Request<v1::WatchTopologyRequest>,
    ) -> Result<Response<Self::WatchTopologyStream>, Status> {
        // Ends when the node shuts down (so a graceful shutdown never waits on a watcher) or when
        // the client goes away (the send fails).
        let (tx, rx) = mpsc::channel(4);
        let mut views = self.node.watch_view();
        let shutdown = self.node.shutdown_token().clone();
        let limits = limits(&self.node);
        crate::logging::spawn(async move {
            loop {
                let mut current = views.borrow_and_update().wire.clone();
                current.sender_limits = Some(limits);
                if tx.send(Ok(current)).await.is_err() {
                    return;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    changed = views.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn node_info(
        &self,
        _: Request<v1::NodeInfoRequest>,
    ) -> Result<Response<v1::NodeInfoResponse>, Status> {
        let node = &self.node;
        let stats = node.store().stats();
        let hints = node.replicator().hints_pending();
        let readiness = node.readiness();
        let connections = node.connections();
        let health = node.cluster_health();
        Ok(Response::new(v1::NodeInfoResponse {
            node_id: node.config().node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: node.uptime().as_secs(),
            keys: stats.keys,
            memory_used_bytes: stats.used_bytes,
            max_memory_bytes: node.config().store.max_memory_bytes as u64,
            hits: stats.hits,
            misses: stats.misses,
            evictions: stats.evictions,
            expirations: stats.expirations,
            eviction_policy: node.config().store.eviction.as_str().to_owned(),
            state: node.state() as i32,
            connections: connections.open() as u64,
            connections_rejected: connections.rejected(),
            max_connections: connections.max() as u64,
            forwarded_requests: node.metrics().forwarded_total(),
            hints_pending: hints.entries as u64,
            hints_pending_bytes: hints.bytes as u64,
            replication_lag_seconds: node
                .replicator()
                .replication_lag(node.now_ms())
                .as_secs_f64(),
            ready: readiness.is_ok(),
            not_ready_reason: readiness.err().unwrap_or_default(),
            insecure: node.is_insecure(),
            clock_offset_ms: node.clock_check().offset_ms(),
            clock_skewed: node.clock_check().is_skewed(),
            known_members: node.known_members(),
            anti_entropy: Some(
                node.anti_entropy()
                    .to_wire(node.config().anti_entropy_interval),
            ),
            refused_members: node
                .refused_members()
                .into_iter()
                .map(|m| v1::RefusedMember {
                    node_id: m.node_id,
                    gossip_addr: m.gossip_addr,
                    state: v1::NodeState::from(m.state) as i32,
                    reason: m.reason,
                })
                .collect(),
            expected_members: health.expected as u64,
            under_replicated_slots: health.under_replicated_slots,
        }))
    }
}
