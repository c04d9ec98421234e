//! Embedded mode's hook: a node running in the client's own process serves the ONE reads of
//! keys it holds, without a network request ([`LocalNode`], [`ClientBuilder::local_node`]).
//!
//! The client asks the hook only when the key's replica set (in the client's topology)
//! contains the local node and the topology shows it `Active`; the node answers from its own
//! store, or declines ([`LocalRead::NotHere`]) and the read goes the normal way. Everything
//! else (writes, QUORUM/ALL reads, keys the node does not hold) is unchanged.
//!
//! [`ClientBuilder::local_node`]: crate::ClientBuilder::local_node

use std::fmt;

use crate::{Consistency, Entry};

/// What a [`LocalNode`] answered for a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalRead {
    /// The key exists: its value, version and remaining TTL.
    Found(Entry),
    /// The key does not exist (or has expired) on the local node.
    Missing,
    /// The local node does not serve this read here and now (it does not hold the key by its
    /// own view, it is not serving, the level is not ONE, its clock is refused...): the client
    /// sends it the normal way.
    NotHere,
}

/// A ringcache node running in this process (embedded mode), as the client sees it.
///
/// The server crate implements it behind its `embedded` feature
/// (`ringcache_server::embedded`); any implementation must answer from data the node holds
/// as a replica of the key, synchronously and quickly (it runs on the caller's task).
pub trait LocalNode: Send + Sync + fmt::Debug + 'static {
    /// The node's id, as in the cluster's topology.
    fn node_id(&self) -> &str;

    /// Reads `key` at ONE from the node's own store. `consistency` is the level the call asked
    /// for (`None`: the cluster's default, which the node knows); a node answers only reads
    /// whose level is ONE, and [`LocalRead::NotHere`] otherwise.
    fn read_one(&self, key: &[u8], consistency: Option<Consistency>) -> LocalRead;
}
