//! Where keys live: the consistent-hash ring, computed the same way by every node and
//! every client from the member list alone.
//!
//! The contract, pinned by golden-vector tests:
//! - **Key slot**: a key belongs to one of the [`SLOTS`] (16,384) Redis Cluster hash slots:
//!   CRC16/XMODEM of the key modulo 16,384, or of its hash tag when it has one (the bytes between
//!   the first `{` and the first `}` after it, when that is not empty), exactly as Redis Cluster
//!   computes it ([`key_slot`]). Keys of one slot always share one replica set, so
//!   `{user:42}:cart` and `{user:42}:profile` live together and a multi-key command on them
//!   needs one node.
//! - **Tokens**: a member with weight `w` has `w × vnodes_per_weight` virtual nodes; virtual node
//!   `i` of node `id` sits at token SipHash-2-4(k = 0) of `id` ‖ `#` ‖ `i` as 4 little-endian bytes.
//! - **Slot owner**: slot `s` is hashed [`SLOT_PROBES`] times: probe `p` is SipHash-2-4(k = 0) of
//!   `s` as 2 little-endian bytes, followed by the byte `p` when `p > 0`. Each probe finds the
//!   first token at or after it (clockwise, wrapping); the probe whose token is nearest wins
//!   (ties: the lower probe). This is multi-probe consistent hashing (Appleton & O'Reilly 2015)
//!   applied to slots: more probes even out the nodes' shares of the ring, and adding a node
//!   still moves slots only onto the new node.
//! - **Replica set**: `min(R, members)` distinct nodes, the first the slot's primary, the others
//!   its neighbours. Members may name a **zone** (a failure domain); members without one share
//!   one unnamed zone. Walking clockwise from the winning virtual node, a first pass takes each
//!   node met that is not yet taken and whose zone is not yet used, until R are taken or every
//!   zone of the ring is used; if fewer than R are taken, a second pass from the same virtual
//!   node takes the next nodes not yet taken (the order of Cassandra's
//!   NetworkTopologyStrategy). So each slot's copies span `min(R, zones)` zones. Without zones
//!   (one unnamed zone) this is the owner of the winning virtual node, then the next distinct
//!   nodes clockwise, exactly as before zones existed (placement version 2).
//!
//! Everything is computed once per ring: a table of 16,384 entries, each naming one of the
//! ring's distinct replica lists, so a lookup is a CRC16 and an index, with no allocation.
//!
//! Balance: with slots placed at random, a node's share of the 16,384 slots varies by about
//! `sqrt(16384 / N)` slots around the mean (the same for any random placement, rendezvous
//! hashing included), so the busiest of 64 nodes holds about 15 % more than the mean, and of 16
//! about 6 %; the placement tests pin these bounds. An exactly balanced assignment cannot also
//! be a function of the member list alone that moves slots only onto a joining node.
//!
//! `hashring` (pinned to 0.3.6) is the sorted token index used while building the table.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use hashring::{DefaultHashBuilder, HashRing};

use crate::topology::{MAX_VNODES_PER_WEIGHT, MAX_WEIGHT, Topology};

/// Virtual nodes per unit of weight unless the cluster says otherwise.
pub const DEFAULT_VNODES_PER_WEIGHT: u32 = 256;

/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16_384;

/// Hashes of each slot compared to pick its owner.
pub const SLOT_PROBES: u8 = 16;

/// The version of the placement contract: how keys map to slots (CRC16 of the key or its hash
/// tag, [`SLOTS`] slots), slots to the ring ([`SLOT_PROBES`] probes per slot) and the ring to
/// replica sets. Nodes gossip it and admit only members of a compatible version
/// ([`placement_versions_compatible`]), so nodes that would place keys differently never share
/// a ring. Bump it with every change to the mapping
/// (and regenerate the golden vectors).
///
/// This is what a node without a zone advertises: zones left the placement of zone-less rings
/// unchanged, so such a node places keys exactly as nodes of version 2 that predate zones. A
/// node with a zone advertises [`PLACEMENT_VERSION_ZONED`]; see
/// [`placement_versions_compatible`].
pub const PLACEMENT_VERSION: u32 = 2;

/// The placement version a node with a zone advertises: version 2 plus the zone rule of the
/// replica walk. Builds that predate zones cannot decode a zoned member's metadata, so they
/// never admit one; upgrade every node before setting zones.
pub const PLACEMENT_VERSION_ZONED: u32 = 3;

/// The placement version a node advertises: [`PLACEMENT_VERSION_ZONED`] when it has a zone,
/// else [`PLACEMENT_VERSION`].
pub fn placement_version(zoned: bool) -> u32 {
    if zoned {
        PLACEMENT_VERSION_ZONED
    } else {
        PLACEMENT_VERSION
    }
}

/// Whether nodes advertising placement versions `a` and `b` place keys the same way and so may
/// share a ring: equal versions, or 2 and 3 (a build with zones places zone-less members as
/// version 2 did, and admits both).
pub fn placement_versions_compatible(a: u32, b: u32) -> bool {
    let zones = PLACEMENT_VERSION..=PLACEMENT_VERSION_ZONED;
    a == b || (zones.contains(&a) && zones.contains(&b))
}

/// Bytes hashed, by one `write` (probe 0) or followed by the probe number.
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

/// A key's hash: SipHash-2-4 with key (0, 0) over its bytes. Not used for placement (that is
/// [`key_slot`]); anti-entropy buckets keys by it.
pub fn key_hash(key: &[u8]) -> u64 {
    DefaultHashBuilder.hash_one(Probe { key, probe: 0 })
}

/// The part of a key its slot is computed from: the bytes between the first `{` and the first
/// `}` after it when there are any, else the whole key (Redis Cluster's hash tag rule).
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// A key's Redis Cluster hash slot: CRC16/XMODEM of its [`hash_tag`] modulo [`SLOTS`].
pub fn key_slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(key)) % SLOTS
}

/// One virtual node: its identity (what its token is derived from) and what the ring precomputed.
#[derive(Debug, Clone)]
struct VNode {
    node_id: Arc<str>,
    index: u32,
    token: u64,
    /// Its place in ring order.
    position: u32,
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
        position: 0,
    })
}

/// The ring of one topology.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Ring members' ids, sorted.
    nodes: Vec<Arc<str>>,
    /// Each member's zone (aligned with `nodes`); `None` for the unnamed zone.
    zones: Vec<Option<Arc<str>>>,
    /// Distinct zones among the members, the unnamed one included when some member has none.
    zone_count: usize,
    /// The distinct replica lists (indexes into `nodes`, primary first).
    lists: Vec<Box<[u32]>>,
    /// Per slot, its index into `lists`. Empty when the ring is.
    slots: Box<[u32]>,
    replication: usize,
}

impl Ring {
    /// The ring of a topology's range-owning members (see
    /// [`NodeState::in_ring`](crate::topology::NodeState::in_ring)).
    pub fn new(topology: &Topology) -> Self {
        Self::build_zoned(
            topology
                .ring_members()
                .map(|m| (m.node_id.as_str(), m.weight, m.zone.as_deref())),
            topology.vnodes_per_weight(),
            topology.replication_factor(),
        )
    }

    /// A ring of `(node_id, weight)` pairs (any order; duplicate ids count once), none of them
    /// in a zone.
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
        Self::build_zoned(
            members.into_iter().map(|(id, weight)| (id, weight, None)),
            vnodes_per_weight,
            replication_factor,
        )
    }

    /// A ring of `(node_id, weight, zone)` members (any order; duplicate ids count once, the
    /// lowest weight, then no zone, kept), as [`Ring::build`] but with zones: see the module docs
    /// for the replica walk. A ring where no member has a zone is [`Ring::build`]'s.
    pub fn build_zoned<'a>(
        members: impl IntoIterator<Item = (&'a str, u32, Option<&'a str>)>,
        vnodes_per_weight: u32,
        replication_factor: u32,
    ) -> Self {
        let mut members: Vec<(&str, u32, Option<&str>)> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup_by(|a, b| a.0 == b.0);
        let nodes: Vec<Arc<str>> = members.iter().map(|(id, _, _)| Arc::from(*id)).collect();
        // Zone names, sorted, and each node's index into them.
        let mut zone_names: Vec<Option<&str>> = members.iter().map(|m| m.2).collect();
        zone_names.sort_unstable();
        zone_names.dedup();
        let zone_count = zone_names.len();
        let zone_of: Vec<usize> = members
            .iter()
            .map(|m| zone_names.binary_search(&m.2).unwrap_or(0))
            .collect();
        let zones: Vec<Option<Arc<str>>> = members.iter().map(|m| m.2.map(Arc::from)).collect();
        let replication = (replication_factor.max(1) as usize).min(nodes.len());
        match nodes.len() {
            0 => {
                return Self {
                    nodes,
                    zones,
                    zone_count,
                    lists: Vec::new(),
                    slots: Box::new([]),
                    replication,
                };
            }
            // A lone member holds every slot: no hashing needed.
            1 => {
                return Self {
                    nodes,
                    zones,
                    zone_count,
                    lists: vec![Box::new([0])],
                    slots: vec![0; usize::from(SLOTS)].into_boxed_slice(),
                    replication,
                };
            }
            _ => {}
        }

        // Every virtual node with its token, in ring order; ties (never seen in practice) are
        // broken by node id and index so the order is still a function of the members.
        let mut vnodes: Vec<(u64, u32, u32)> = Vec::new();
        for (node_idx, (_, weight, _)) in members.iter().enumerate() {
            let count =
                (*weight).clamp(1, MAX_WEIGHT) * vnodes_per_weight.clamp(1, MAX_VNODES_PER_WEIGHT);
            for index in 0..count {
                vnodes.push((token(&nodes[node_idx], index), node_idx as u32, index));
            }
        }
        vnodes.sort_unstable();

        let n_vnodes = vnodes.len();
        let mut ring_order = Vec::with_capacity(n_vnodes);
        // Per zone, the ring positions of its virtual nodes, in ring order.
        let mut zone_positions: Vec<Vec<u32>> = vec![Vec::new(); zone_count];
        for (position, &(token, node_idx, index)) in vnodes.iter().enumerate() {
            ring_order.push(VNode {
                node_id: nodes[node_idx as usize].clone(),
                index,
                token,
                position: position as u32,
            });
            zone_positions[zone_of[node_idx as usize]].push(position as u32);
        }
        let mut index = HashRing::new();
        // Already sorted by token; hashring's stable sort keeps it.
        index.batch_add(ring_order);

        // The replica list of a virtual node (see the module docs). The first pass takes, of
        // every zone, the first of its virtual nodes met clockwise (its node cannot be taken
        // yet: taken nodes are of used zones), nearest first, `min(R, zones)` of them; found
        // by a binary search per zone instead of a walk, so a small zone costs no long walk.
        // With one zone that is the start's own node. The second pass is the plain walk.
        let replicas_from = |start: usize| -> Box<[u32]> {
            let mut replicas: Vec<u32> = Vec::with_capacity(replication);
            let mut firsts: Vec<(usize, u32)> = zone_positions
                .iter()
                .filter(|positions| !positions.is_empty())
                .map(|positions| {
                    let at = positions.partition_point(|&p| (p as usize) < start);
                    let position = positions.get(at).copied().unwrap_or(positions[0]) as usize;
                    let distance = (position + n_vnodes - start) % n_vnodes;
                    (distance, vnodes[position].1)
                })
                .collect();
            firsts.sort_unstable();
            replicas.extend(firsts.iter().take(replication).map(|&(_, node)| node));
            let mut step = 0;
            while replicas.len() < replication && step < n_vnodes {
                let owner = vnodes[(start + step) % n_vnodes].1;
                if !replicas.contains(&owner) {
                    replicas.push(owner);
                }
                step += 1;
            }
            replicas.into_boxed_slice()
        };

        let mut lists: Vec<Box<[u32]>> = Vec::new();
        let mut list_of_vnode: HashMap<u32, u32> = HashMap::new();
        let mut list_ids: HashMap<Box<[u32]>, u32> = HashMap::new();
        let mut slots = Vec::with_capacity(usize::from(SLOTS));
        for slot in 0..SLOTS {
            let bytes = slot.to_le_bytes();
            let mut best: Option<(u64, u32)> = None;
            for probe in 0..SLOT_PROBES {
                let point = Probe { key: &bytes, probe };
                let Some(vnode) = index.get(&point) else {
                    continue;
                };
                let distance = vnode
                    .token
                    .wrapping_sub(DefaultHashBuilder.hash_one(&point));
                if best.is_none_or(|(nearest, _)| distance < nearest) {
                    best = Some((distance, vnode.position));
                }
            }
            let position = best.map_or(0, |(_, position)| position);
            let list = *list_of_vnode.entry(position).or_insert_with(|| {
                let replicas = replicas_from(position as usize);
                *list_ids.entry(replicas.clone()).or_insert_with(|| {
                    lists.push(replicas);
                    (lists.len() - 1) as u32
                })
            });
            slots.push(list);
        }
        Self {
            nodes,
            zones,
            zone_count,
            lists,
            slots: slots.into_boxed_slice(),
            replication,
        }
    }

    /// Ring members' ids, sorted.
    pub fn nodes(&self) -> &[Arc<str>] {
        &self.nodes
    }

    /// The zone of ring member `node_id`: `None` when it has none (or is not in the ring).
    pub fn zone(&self, node_id: &str) -> Option<&str> {
        self.nodes
            .binary_search_by(|id| (**id).cmp(node_id))
            .ok()
            .and_then(|i| self.zones[i].as_deref())
    }

    /// Whether some ring member has a zone.
    pub fn is_zoned(&self) -> bool {
        self.zones.iter().any(Option::is_some)
    }

    /// Distinct zones among the ring members, the unnamed zone (members without one) counting
    /// as one: 1 for a ring without zones, 0 for an empty ring.
    pub fn zone_count(&self) -> usize {
        self.zone_count
    }

    /// The slot ranges (as [`Ring::slot_ranges`] makes them) whose copies share a zone while a
    /// zone of the ring holds none of them: copies span fewer than `min(copies, zones)` zones.
    /// The placement rule never makes one, so anything but 0 is a bug.
    pub fn crowded_ranges(&self) -> usize {
        self.slot_ranges()
            .filter(|(_, _, set)| set.zone_span() < set.len().min(self.zone_count))
            .count()
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
        self.slot_replicas(key_slot(key))
    }

    /// The replica set of hash slot `slot` (taken modulo [`SLOTS`]), primary first. Empty when
    /// the ring is.
    pub fn slot_replicas(&self, slot: u16) -> ReplicaSet<'_> {
        let nodes = self
            .slots
            .get(usize::from(slot % SLOTS))
            .map_or(&[][..], |&list| &self.lists[list as usize][..]);
        ReplicaSet { ring: self, nodes }
    }

    /// The primary of `key`.
    pub fn primary(&self, key: &[u8]) -> Option<&str> {
        self.replicas(key).primary()
    }

    /// The slots as maximal runs of consecutive slots with one replica set: `(first, last,
    /// replicas)`, in slot order, covering 0..=16383 (nothing when the ring is empty). This is
    /// what `CLUSTER SLOTS` describes.
    pub fn slot_ranges(&self) -> impl Iterator<Item = (u16, u16, ReplicaSet<'_>)> + '_ {
        let mut start = 0usize;
        std::iter::from_fn(move || {
            let first = *self.slots.get(start)?;
            let len = self.slots[start..]
                .iter()
                .take_while(|&&list| list == first)
                .count();
            let range = (
                start as u16,
                (start + len - 1) as u16,
                ReplicaSet {
                    ring: self,
                    nodes: &self.lists[first as usize],
                },
            );
            start += len;
            Some(range)
        })
    }

    /// The distinct replica sets with the slots of each as runs `(first, last)`: what
    /// `CLUSTER SHARDS` describes. Sets appear in order of their first slot.
    pub fn shards(&self) -> Vec<(ReplicaSet<'_>, Vec<(u16, u16)>)> {
        let mut order: Vec<u32> = Vec::new();
        let mut runs: HashMap<u32, Vec<(u16, u16)>> = HashMap::new();
        let mut start = 0usize;
        while let Some(&list) = self.slots.get(start) {
            let len = self.slots[start..]
                .iter()
                .take_while(|&&other| other == list)
                .count();
            runs.entry(list)
                .or_insert_with(|| {
                    order.push(list);
                    Vec::new()
                })
                .push((start as u16, (start + len - 1) as u16));
            start += len;
        }
        order
            .into_iter()
            .map(|list| {
                (
                    ReplicaSet {
                        ring: self,
                        nodes: &self.lists[list as usize],
                    },
                    runs.remove(&list).unwrap_or_default(),
                )
            })
            .collect()
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

    /// The replicas' zones, in replica order (`None`: the unnamed zone).
    pub fn zones(&self) -> impl Iterator<Item = Option<&'a str>> + 'a {
        let zones = &self.ring.zones;
        self.nodes
            .iter()
            .map(move |&i| zones[i as usize].as_deref())
    }

    /// How many distinct zones the replicas are in (the unnamed zone counting as one).
    pub fn zone_span(&self) -> usize {
        let mut zones: Vec<Option<&str>> = self.zones().collect();
        zones.sort_unstable();
        zones.dedup();
        zones.len()
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
