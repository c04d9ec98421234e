//! Where keys live: the consistent-hash ring (DESIGN §3), computed the same way by every node and
//! every client from the member list alone.
//!
//! The contract, pinned by golden-vector tests:
//! - **Key hash**: SipHash-2-4 with the key (0, 0) over the key's bytes, written in one piece
//!   ([`key_hash`]). This is `hashring`'s default hasher, fed explicit bytes, so it does not depend
//!   on `std::hash::Hash` details that differ between platforms.
//! - **Tokens**: a member with weight `w` has `w × vnodes_per_weight` virtual nodes; virtual node
//!   `i` of node `id` sits at token SipHash(`id` ‖ `#` ‖ `i` as 4 little-endian bytes).
//! - **Owner**: a key is hashed [`PROBES`] times — probe 0 is [`key_hash`], probe `p > 0` hashes the
//!   key's bytes followed by the byte `p`. Each probe finds the first token at or after it
//!   (clockwise, wrapping); the probe whose token is nearest wins (ties: the lower probe). Random
//!   tokens alone leave the busiest of 64 nodes with ~15–20 % more keys than the mean at 256
//!   vnodes; taking the nearest of four probes ("multi-probe consistent hashing", Appleton &
//!   O'Reilly 2015) brings it under 10 % while keys still move only to a node that joins.
//! - **Replica set**: the owner of the winning virtual node, then the next distinct nodes met
//!   walking clockwise from it, `min(R, members)` in all. The first is the key's primary, the
//!   others its neighbours. The lists are precomputed per virtual node when the ring is built, so
//!   a lookup is [`PROBES`] binary searches and no allocation.
//!
//! `hashring` (pinned to 0.3.6) is the sorted token index; its `get_with_replicas` is not used (it
//! repeats physical nodes and clones the ring on every call).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use hashring::{DefaultHashBuilder, HashRing};

use crate::topology::{MAX_VNODES_PER_WEIGHT, MAX_WEIGHT, Topology};

/// Virtual nodes per unit of weight unless the cluster says otherwise.
pub const DEFAULT_VNODES_PER_WEIGHT: u32 = 256;

/// Hashes of each key compared to pick its owner.
pub const PROBES: u8 = 4;

/// The key bytes, hashed by one `write` (probe 0) or followed by the probe number.
struct Probe<'a> {
    key: &'a [u8],
    probe: u8,
}

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.key);
        if self.probe > 0 {
            state.write(&[self.probe]);
        }
    }
}

/// The placement hash of a key: SipHash-2-4 with key (0, 0) over its bytes.
pub fn key_hash(key: &[u8]) -> u64 {
    DefaultHashBuilder.hash_one(Probe { key, probe: 0 })
}

/// One virtual node: its identity (what its token is derived from) and what the ring precomputed.
#[derive(Debug, Clone)]
struct VNode {
    node_id: Arc<str>,
    index: u32,
    token: u64,
    /// Indexes into `Ring::nodes`: the first distinct nodes from this virtual node clockwise.
    replicas: Arc<[u32]>,
}

/// The token is a function of `node_id ‖ '#' ‖ index` only (explicit bytes, never derived `Hash`).
impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.node_id.as_bytes());
        state.write(b"#");
        state.write(&self.index.to_le_bytes());
    }
}

fn token(node_id: &Arc<str>, index: u32) -> u64 {
    DefaultHashBuilder.hash_one(VNode {
        node_id: node_id.clone(),
        index,
        token: 0,
        replicas: Arc::from([]),
    })
}

/// The replica list of every key in a one-member ring: member 0.
static SOLE_MEMBER: [u32; 1] = [0];

/// The ring of one topology.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Ring members' ids, sorted.
    nodes: Vec<Arc<str>>,
    index: HashRing<VNode>,
    replication: usize,
}

impl Ring {
    /// The ring of a topology's range-owning members (see
    /// [`NodeState::in_ring`](crate::topology::NodeState::in_ring)).
    pub fn new(topology: &Topology) -> Self {
        Self::build(
            topology
                .ring_members()
                .map(|m| (m.node_id.as_str(), m.weight)),
            topology.vnodes_per_weight(),
            topology.replication_factor(),
        )
    }

    /// A ring of `(node_id, weight)` pairs (any order; duplicate ids count once).
    ///
    /// Sizes are not checked here: input from the wire goes through `TryFrom<&v1::Topology>`
    /// (or [`Topology::check_limits`], or [`check_ring_size`](crate::topology::check_ring_size))
    /// first, which refuse anything over the limits before a ring is built. As a last guard a
    /// weight is taken as at most [`MAX_WEIGHT`] and `vnodes_per_weight` as at most
    /// [`MAX_VNODES_PER_WEIGHT`], so one member never gets more than 64 × 4096 virtual nodes.
    pub fn build<'a>(
        members: impl IntoIterator<Item = (&'a str, u32)>,
        vnodes_per_weight: u32,
        replication_factor: u32,
    ) -> Self {
        let mut members: Vec<(&str, u32)> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup_by(|a, b| a.0 == b.0);
        let nodes: Vec<Arc<str>> = members.iter().map(|(id, _)| Arc::from(*id)).collect();
        let replication = (replication_factor.max(1) as usize).min(nodes.len());

        // Every virtual node with its token, in ring order; ties (never seen in practice) are
        // broken by node id and index so the order is still a function of the members.
        let mut vnodes: Vec<(u64, u32, u32)> = Vec::new();
        for (node_idx, (_, weight)) in members.iter().enumerate() {
            let count =
                (*weight).clamp(1, MAX_WEIGHT) * vnodes_per_weight.clamp(1, MAX_VNODES_PER_WEIGHT);
            for index in 0..count {
                vnodes.push((token(&nodes[node_idx], index), node_idx as u32, index));
            }
        }
        vnodes.sort_unstable();

        let n_vnodes = vnodes.len();
        let mut ring_order = Vec::with_capacity(n_vnodes);
        for start in 0..n_vnodes {
            let mut replicas: Vec<u32> = Vec::with_capacity(replication);
            let mut step = 0;
            while replicas.len() < replication && step < n_vnodes {
                let owner = vnodes[(start + step) % n_vnodes].1;
                if !replicas.contains(&owner) {
                    replicas.push(owner);
                }
                step += 1;
            }
            let (token, node_idx, index) = vnodes[start];
            ring_order.push(VNode {
                node_id: nodes[node_idx as usize].clone(),
                index,
                token,
                replicas: Arc::from(replicas),
            });
        }
        let mut index = HashRing::new();
        // Already sorted by token; hashring's stable sort keeps it.
        index.batch_add(ring_order);
        Self {
            nodes,
            index,
            replication,
        }
    }

    /// Ring members' ids, sorted.
    pub fn nodes(&self) -> &[Arc<str>] {
        &self.nodes
    }

    /// Whether no node owns anything.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Replicas per key: the replication factor capped at the number of ring members.
    pub fn replication(&self) -> usize {
        self.replication
    }

    /// Whether `node_id` is a replica of every key: it is in the ring and the ring has no more
    /// members than the replication factor. No key needs hashing to know that.
    pub fn holds_every_key(&self, node_id: &str) -> bool {
        self.nodes.len() <= self.replication
            && self
                .nodes
                .binary_search_by(|id| (**id).cmp(node_id))
                .is_ok()
    }

    /// The replica set of `key`, primary first. Empty when the ring is.
    pub fn replicas(&self, key: &[u8]) -> ReplicaSet<'_> {
        // A lone member holds every key: no hashing needed.
        if self.nodes.len() == 1 {
            return ReplicaSet {
                ring: self,
                nodes: &SOLE_MEMBER,
            };
        }
        let mut best: Option<(u64, &VNode)> = None;
        for probe in 0..PROBES {
            let point = Probe { key, probe };
            let Some(vnode) = self.index.get(&point) else {
                return ReplicaSet {
                    ring: self,
                    nodes: &[],
                };
            };
            let distance = vnode
                .token
                .wrapping_sub(DefaultHashBuilder.hash_one(&point));
            if best.is_none_or(|(nearest, _)| distance < nearest) {
                best = Some((distance, vnode));
            }
        }
        ReplicaSet {
            ring: self,
            nodes: best.map_or(&[][..], |(_, vnode)| &vnode.replicas[..]),
        }
    }

    /// The primary of `key`.
    pub fn primary(&self, key: &[u8]) -> Option<&str> {
        self.replicas(key).primary()
    }
}

/// The nodes that hold one key, primary first.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaSet<'a> {
    ring: &'a Ring,
    nodes: &'a [u32],
}

impl<'a> ReplicaSet<'a> {
    /// The primary's id.
    pub fn primary(&self) -> Option<&'a str> {
        self.iter().next()
    }

    /// The ids in order: primary, then neighbours.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let nodes = &self.ring.nodes;
        self.nodes.iter().map(move |&i| &*nodes[i as usize])
    }

    /// How many replicas.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none (empty ring).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `node_id` is one of the replicas.
    pub fn contains(&self, node_id: &str) -> bool {
        self.iter().any(|id| id == node_id)
    }

    /// The position of `node_id` in the set (0 = primary).
    pub fn position(&self, node_id: &str) -> Option<usize> {
        self.iter().position(|id| id == node_id)
    }
}

#[cfg(test)]
mod tests;
