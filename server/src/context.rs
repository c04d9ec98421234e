//! What the data path needs of a node, and nothing else: the store, the current view and its
//! changes, connections to peers, the clock, metrics, the settings, the replication and data
//! movement state, and the shutdown signal.
//!
//! Replication, rebalancing, anti-entropy and clock checks take a [`Context`] rather than the
//! whole [`crate::node::Node`], so the data flows one way: the gRPC services (`api/`) call
//! `replication`, `rebalance`, `antientropy` and `skew`, which use the store, the view and the
//! peers; the node builds the context, wires the services and runs the tasks. A node derefs to
//! its context, so `node.store()` and the like read the same.

use std::sync::Arc;

use ringcache_proto::v1;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::antientropy::AntiEntropyStats;
use crate::clock::Clock;
use crate::config::Config;
use crate::hotkeys::HotKeys;
use crate::metrics::Metrics;
use crate::rebalance::RebalanceStats;
use crate::replication::Replicator;
use crate::skew::ClockCheck;
use crate::store::Store;
use crate::view::{ClusterView, Peers};

/// The handles the data path works with.
#[derive(Debug)]
pub struct Context {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
    pub(crate) clock: Arc<dyn Clock>,
    /// The node's life-cycle state.
    pub(crate) state: watch::Sender<v1::NodeState>,
    /// The current view; replaced whole on every topology change.
    pub(crate) view: watch::Sender<Arc<ClusterView>>,
    pub(crate) peers: Peers,
    /// Replication state (hints for unreachable replicas, per-peer batches).
    pub(crate) replicator: Replicator,
    /// Data movement progress.
    pub(crate) rebalance: RebalanceStats,
    /// Anti-entropy rounds and what they repaired.
    pub(crate) anti_entropy: AntiEntropyStats,
    /// This node's clock against the cluster's.
    pub(crate) clock_check: ClockCheck,
    /// Cancelled when the node begins shutting down.
    pub(crate) shutdown: CancellationToken,
    /// The node's root span: tasks started outside a request (per-peer replica streams) run
    /// in it, so their log lines name the node.
    pub(crate) span: tracing::Span,
    /// This node's heaviest keys per window ([`crate::hotkeys`]).
    pub(crate) hot_keys: HotKeys,
    /// GetOrLease leases of the keys this node is the primary of ([`crate::lease`]).
    pub(crate) leases: std::sync::Arc<crate::lease::Leases>,
    /// Near-cache tracking: who read which key ([`crate::tracking`]).
    pub(crate) tracking: std::sync::Arc<crate::tracking::Tracking>,
}

impl Context {
    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The local engine.
    pub fn store(&self) -> &Store {
        &self.store
    }
    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    /// Unix time in ms from the node's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
    /// The node's life-cycle state.
    pub fn state(&self) -> v1::NodeState {
        *self.state.borrow()
    }
    /// The current view: topology and ring.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }
    /// A receiver that sees every new view.
    pub fn watch_view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }
    /// Connections to peers, for forwarding.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }
    /// This node's clock against the cluster's ([`crate::skew`]).
    pub fn clock_check(&self) -> &ClockCheck {
        &self.clock_check
    }
    /// Anti-entropy rounds and what they repaired ([`crate::antientropy`]).
    pub fn anti_entropy(&self) -> &AntiEntropyStats {
        &self.anti_entropy
    }
    /// Cancelled when the node begins shutting down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }
    /// Replication state: hints waiting for unreachable replicas.
    pub fn replicator(&self) -> &Replicator {
        &self.replicator
    }
    /// This node's heaviest keys per window ([`crate::hotkeys`]).
    pub fn hot_keys(&self) -> &HotKeys {
        &self.hot_keys
    }
    /// GetOrLease leases ([`crate::lease`]).
    pub fn leases(&self) -> &crate::lease::Leases {
        &self.leases
    }
    /// Near-cache tracking: who read which key ([`crate::tracking`]).
    pub fn tracking(&self) -> &crate::tracking::Tracking {
        &self.tracking
    }
    /// Data movement progress (joins, repairs, leaves).
    pub fn rebalance(&self) -> &RebalanceStats {
        &self.rebalance
    }
}
