//! `ringcached`, one node of a ringcache cluster, as a library: the binary and the tests start
//! nodes through [`node::Node`].
//!
//! Map: [`store`] is the local engine (no I/O); [`api`] adapts it to gRPC; [`node`] wires the
//! store, [`metrics`], the HTTP endpoint and the gRPC services together; [`config`] is parsed once.

pub mod antientropy;
// The gRPC services: the one place that builds and reads `tonic::Status` for requests this node
// serves (the lint is in server/clippy.toml; ARCHITECTURE.md, "Invariants").
#[allow(clippy::disallowed_types)]
pub mod api;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod context;
pub mod dev_cluster;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod hotkeys;
mod http;
pub mod known;
pub mod lease;
pub mod logging;
pub mod member_log;
pub mod metrics;
pub mod node;
pub mod observers;
// The peer transport: turns a tonic client's `Status` into a `PeerError` at the call.
#[allow(clippy::disallowed_types)]
pub mod peer;
pub mod readiness;
pub mod rebalance;
pub mod reload;
pub mod replication;
pub mod resp;
pub mod seeds;
pub mod skew;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod tracking;
pub mod view;

pub use config::Config;
pub use node::{Listeners, Node};
