//! The topology: the list of ring members that every node and client derives the ring from, and
//! its digest.
//!
//! These are the hand-written domain types; [`crate::v1::Topology`] and [`crate::v1::Member`] are
//! their wire form, converted with `From`/`TryFrom` at the edges.

use std::fmt;

use crate::v1;

/// Most members a topology may list (any state). Every node and client builds a ring from the
/// list, so it is bounded before anything is built from it.
pub const MAX_MEMBERS: usize = 1024;
/// Largest member weight: a member gets `weight × vnodes_per_weight` virtual nodes.
pub const MAX_WEIGHT: u32 = 64;
/// Largest `vnodes_per_weight`.
pub const MAX_VNODES_PER_WEIGHT: u32 = 4096;
/// Largest replication factor. Each virtual node precomputes its replica list, so the ring
/// holds up to `R` ids per virtual node.
pub const MAX_REPLICATION_FACTOR: u32 = 16;
/// Most virtual nodes in one ring: the sum of `weight × vnodes_per_weight` over the members
/// that own ranges. About 100 bytes each when built (token, owner, replica list), so a ring
/// stays within ~100 MiB however the other limits combine (1024 members × 64 × 4096 would be
/// 268 million).
pub const MAX_RING_VNODES: u64 = 1 << 20;
/// Longest node id, in bytes (it is hashed once per virtual node).
pub const MAX_NODE_ID_BYTES: usize = 256;
/// Longest `host:port` address of a member, in bytes.
pub const MAX_ADDR_BYTES: usize = 300;
/// Longest zone name, in bytes (see [`check_zone`]).
pub const MAX_ZONE_BYTES: usize = 64;

/// A member's place in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeState {
    /// In gossip, receiving its ranges, not yet serving reads; not in the ring.
    Joining,
    /// In the ring and serving.
    Active,
    /// Handing its data off; still in the ring until it is gone.
    Leaving,
    /// Failure detection suspects it; kept in the ring so a false suspicion does not move data.
    Suspect,
    /// Declared down; out of the ring.
    Dead,
    /// Left on purpose (drained: seen Leaving, then gone); out of the ring, not a failure.
    Left,
    /// Stopped for a quick restart with its data kept on disk, or back from one and catching
    /// up: kept in the ring for the restart grace so its ranges do not move (like `Suspect`);
    /// it does not serve until it is `Active` again.
    Restarting,
}

impl NodeState {
    /// Whether a member in this state owns ranges of the ring.
    pub fn in_ring(self) -> bool {
        matches!(
            self,
            Self::Active | Self::Leaving | Self::Suspect | Self::Restarting
        )
    }

    /// Whether the member is gone: declared down, or left on purpose.
    pub fn is_gone(self) -> bool {
        matches!(self, Self::Dead | Self::Left)
    }

    /// Lower-case name, as shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Active => "active",
            Self::Leaving => "leaving",
            Self::Suspect => "suspect",
            Self::Dead => "dead",
            Self::Left => "left",
            Self::Restarting => "restarting",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<NodeState> for v1::NodeState {
    fn from(state: NodeState) -> Self {
        match state {
            NodeState::Joining => v1::NodeState::Joining,
            NodeState::Active => v1::NodeState::Active,
            NodeState::Leaving => v1::NodeState::Leaving,
            NodeState::Suspect => v1::NodeState::Suspect,
            NodeState::Dead => v1::NodeState::Dead,
            NodeState::Left => v1::NodeState::Left,
            NodeState::Restarting => v1::NodeState::Restarting,
        }
    }
}

/// A wire value that does not name a known state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node state {0}")]
pub struct InvalidNodeState(pub i32);

impl TryFrom<i32> for NodeState {
    type Error = InvalidNodeState;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        match v1::NodeState::try_from(value) {
            Ok(v1::NodeState::Joining) => Ok(Self::Joining),
            Ok(v1::NodeState::Active) => Ok(Self::Active),
            Ok(v1::NodeState::Leaving) => Ok(Self::Leaving),
            Ok(v1::NodeState::Suspect) => Ok(Self::Suspect),
            Ok(v1::NodeState::Dead) => Ok(Self::Dead),
            Ok(v1::NodeState::Left) => Ok(Self::Left),
            Ok(v1::NodeState::Restarting) => Ok(Self::Restarting),
            Ok(v1::NodeState::Unspecified) | Err(_) => Err(InvalidNodeState(value)),
        }
    }
}

/// One node as the topology knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// Unique, stable id; also what its ring tokens are derived from.
    pub node_id: String,
    /// Grows every time the node restarts or refutes a suspicion.
    pub incarnation: u64,
    /// Its life-cycle state.
    pub state: NodeState,
    /// Relative capacity: the node gets `weight × vnodes_per_weight` virtual nodes. At least 1.
    pub weight: u32,
    /// `host:port` of its gRPC service.
    pub grpc_addr: String,
    /// `host:port` of its gossip endpoint.
    pub gossip_addr: String,
    /// `host:port` of its HTTP endpoint.
    pub http_addr: String,
    /// `host:port` of its cluster-plane gRPC endpoint (Internal and forwarded requests; node to
    /// node only). Not part of the digest: it changes only with a restart, which changes the
    /// incarnation anyway.
    pub cluster_addr: String,
    /// `host:port` of its Redis protocol (RESP) endpoint, empty when it serves none. Not part of
    /// the digest, for the same reason as `cluster_addr`.
    pub resp_addr: String,
    /// Its zone (failure domain; see [`check_zone`]), `None` when it has none. Placement
    /// spreads each key's copies over zones (see [`crate::placement`]). In the digest only
    /// when set, so the digest of a topology without zones is what it was before zones.
    pub zone: Option<String>,
}

/// Members for tests: [`Member::for_test`] and its `with_*` setters (the other fields are public;
/// struct update syntax, `Member { resp_addr, ..Member::for_test("n1") }`, sets them). Built for
/// this crate's tests and, with the `test-util` feature, for the other crates' tests.
#[cfg(any(test, feature = "test-util"))]
impl Member {
    /// Member `node_id`: incarnation 1, [`NodeState::Active`], weight 1, no addresses (all
    /// empty) and no zone.
    pub fn for_test(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            incarnation: 1,
            state: NodeState::Active,
            weight: 1,
            grpc_addr: String::new(),
            gossip_addr: String::new(),
            http_addr: String::new(),
            cluster_addr: String::new(),
            resp_addr: String::new(),
            zone: None,
        }
    }

    /// The same member in `state`.
    #[must_use]
    pub fn with_state(self, state: NodeState) -> Self {
        Self { state, ..self }
    }

    /// The same member at `incarnation`.
    #[must_use]
    pub fn with_incarnation(self, incarnation: u64) -> Self {
        Self {
            incarnation,
            ..self
        }
    }

    /// The same member with `weight`.
    #[must_use]
    pub fn with_weight(self, weight: u32) -> Self {
        Self { weight, ..self }
    }

    /// The same member with its gRPC endpoint at `addr`.
    #[must_use]
    pub fn with_grpc_addr(self, addr: impl Into<String>) -> Self {
        Self {
            grpc_addr: addr.into(),
            ..self
        }
    }

    /// The same member with its gossip endpoint at `addr`.
    #[must_use]
    pub fn with_gossip_addr(self, addr: impl Into<String>) -> Self {
        Self {
            gossip_addr: addr.into(),
            ..self
        }
    }

    /// The same member with its HTTP endpoint at `addr`.
    #[must_use]
    pub fn with_http_addr(self, addr: impl Into<String>) -> Self {
        Self {
            http_addr: addr.into(),
            ..self
        }
    }

    /// The same member in `zone` (`None`: no zone).
    #[must_use]
    pub fn with_zone(self, zone: Option<&str>) -> Self {
        Self {
            zone: zone.map(str::to_owned),
            ..self
        }
    }
}

impl From<&Member> for v1::Member {
    fn from(member: &Member) -> Self {
        v1::Member {
            node_id: member.node_id.clone(),
            incarnation: member.incarnation,
            state: v1::NodeState::from(member.state) as i32,
            weight: member.weight,
            grpc_addr: member.grpc_addr.clone(),
            gossip_addr: member.gossip_addr.clone(),
            http_addr: member.http_addr.clone(),
            cluster_addr: member.cluster_addr.clone(),
            resp_addr: member.resp_addr.clone(),
            zone: member.zone.clone().unwrap_or_default(),
        }
    }
}

/// Why a wire topology was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// A member had an unknown state.
    #[error("member {node_id:?}: {source}")]
    State {
        /// The member.
        node_id: String,
        /// The bad value.
        source: InvalidNodeState,
    },
    /// A member had an empty id.
    #[error("a member has an empty node id")]
    EmptyNodeId,
    /// Two members had the same id.
    #[error("node id {0:?} appears twice")]
    DuplicateNodeId(String),
    /// A member had weight 0.
    #[error("member {0:?} has weight 0")]
    ZeroWeight(String),
    /// The replication factor or vnode count was 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A size on the wire was over its documented limit; nothing was built from it.
    #[error("{field} is {value}, more than the limit of {max}")]
    TooLarge {
        /// What was too large (`members`, `weight of member "n1"`, `vnodes_per_weight`, ...).
        field: String,
        /// The value sent.
        value: u64,
        /// The limit ([`MAX_MEMBERS`], [`MAX_WEIGHT`], ...).
        max: u64,
    },
    /// A member's zone is not 1 to [`MAX_ZONE_BYTES`] bytes of `[A-Za-z0-9._-]`.
    #[error("invalid zone {0:?}: a zone is 1 to 64 bytes of letters, digits, '.', '_' and '-'")]
    InvalidZone(String),
    /// The digest sent does not match the members sent.
    #[error("digest {sent:#x} does not match the members (computed {computed:#x})")]
    DigestMismatch {
        /// The digest on the wire.
        sent: u64,
        /// The digest of the members on the wire.
        computed: u64,
    },
}

fn too_large(
    field: impl Into<String>,
    value: impl TryInto<u64>,
    max: impl TryInto<u64>,
) -> TopologyError {
    TopologyError::TooLarge {
        field: field.into(),
        value: value.try_into().unwrap_or(u64::MAX),
        max: max.try_into().unwrap_or(u64::MAX),
    }
}

/// Checks a node id against [`MAX_NODE_ID_BYTES`] (and that it is not empty).
pub fn check_node_id(node_id: &str) -> Result<(), TopologyError> {
    if node_id.is_empty() {
        return Err(TopologyError::EmptyNodeId);
    }
    if node_id.len() > MAX_NODE_ID_BYTES {
        return Err(too_large(
            "node id length",
            node_id.len(),
            MAX_NODE_ID_BYTES,
        ));
    }
    Ok(())
}

/// Checks a zone name: 1 to [`MAX_ZONE_BYTES`] bytes of ASCII letters, digits, `.`, `_` and `-`
/// (what a Kubernetes label value allows, less the empty value).
pub fn check_zone(zone: &str) -> Result<(), TopologyError> {
    let valid = (1..=MAX_ZONE_BYTES).contains(&zone.len())
        && zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        // At most a few characters more than a valid one, so the error stays short.
        let shown: String = zone.chars().take(MAX_ZONE_BYTES + 8).collect();
        Err(TopologyError::InvalidZone(shown))
    }
}

/// Checks a member weight: 1 to [`MAX_WEIGHT`].
pub fn check_weight(node_id: &str, weight: u32) -> Result<(), TopologyError> {
    if weight == 0 {
        return Err(TopologyError::ZeroWeight(node_id.to_owned()));
    }
    if weight > MAX_WEIGHT {
        return Err(too_large(
            format!("weight of member {node_id:?}"),
            weight,
            MAX_WEIGHT,
        ));
    }
    Ok(())
}

/// Checks the ring parameters: replication factor 1 to [`MAX_REPLICATION_FACTOR`], vnodes per
/// weight 1 to [`MAX_VNODES_PER_WEIGHT`].
pub fn check_ring_params(
    replication_factor: u32,
    vnodes_per_weight: u32,
) -> Result<(), TopologyError> {
    if replication_factor == 0 {
        return Err(TopologyError::Zero("replication_factor"));
    }
    if vnodes_per_weight == 0 {
        return Err(TopologyError::Zero("vnodes_per_weight"));
    }
    if replication_factor > MAX_REPLICATION_FACTOR {
        return Err(too_large(
            "replication_factor",
            replication_factor,
            MAX_REPLICATION_FACTOR,
        ));
    }
    if vnodes_per_weight > MAX_VNODES_PER_WEIGHT {
        return Err(too_large(
            "vnodes_per_weight",
            vnodes_per_weight,
            MAX_VNODES_PER_WEIGHT,
        ));
    }
    Ok(())
}

/// The virtual nodes a ring of members with these `weights` would have, refused over
/// [`MAX_RING_VNODES`] (computed without overflow, before anything is allocated).
pub fn check_ring_size(
    weights: impl IntoIterator<Item = u32>,
    vnodes_per_weight: u32,
) -> Result<u64, TopologyError> {
    let mut total: u64 = 0;
    for weight in weights {
        total =
            total.saturating_add(u64::from(weight.max(1)) * u64::from(vnodes_per_weight.max(1)));
        if total > MAX_RING_VNODES {
            return Err(too_large("ring virtual nodes", total, MAX_RING_VNODES));
        }
    }
    Ok(total)
}

/// Checks a member's id, weight and addresses (wire or domain form) against the limits.
fn check_member(node_id: &str, weight: u32, addrs: [&String; 5]) -> Result<(), TopologyError> {
    check_node_id(node_id)?;
    check_weight(node_id, weight)?;
    check_addrs(node_id, addrs)
}

/// Checks a member's gRPC, gossip, HTTP, cluster and RESP addresses against [`MAX_ADDR_BYTES`].
fn check_addrs(node_id: &str, addrs: [&String; 5]) -> Result<(), TopologyError> {
    for (name, addr) in [
        "grpc_addr",
        "gossip_addr",
        "http_addr",
        "cluster_addr",
        "resp_addr",
    ]
    .iter()
    .zip(addrs)
    {
        if addr.len() > MAX_ADDR_BYTES {
            return Err(too_large(
                format!("{name} length of member {node_id:?}"),
                addr.len(),
                MAX_ADDR_BYTES,
            ));
        }
    }
    Ok(())
}

impl TryFrom<&v1::Member> for Member {
    type Error = TopologyError;

    fn try_from(member: &v1::Member) -> Result<Self, Self::Error> {
        check_member(
            &member.node_id,
            member.weight,
            [
                &member.grpc_addr,
                &member.gossip_addr,
                &member.http_addr,
                &member.cluster_addr,
                &member.resp_addr,
            ],
        )?;
        let state = NodeState::try_from(member.state).map_err(|source| TopologyError::State {
            node_id: member.node_id.clone(),
            source,
        })?;
        // An empty zone on the wire is no zone (what senders that predate zones send).
        let zone = (!member.zone.is_empty()).then(|| member.zone.clone());
        if let Some(zone) = &zone {
            check_zone(zone)?;
        }
        Ok(Member {
            node_id: member.node_id.clone(),
            incarnation: member.incarnation,
            state,
            weight: member.weight,
            grpc_addr: member.grpc_addr.clone(),
            gossip_addr: member.gossip_addr.clone(),
            http_addr: member.http_addr.clone(),
            cluster_addr: member.cluster_addr.clone(),
            resp_addr: member.resp_addr.clone(),
            zone,
        })
    }
}

/// The member list with the ring parameters, sorted by node id, and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    members: Vec<Member>,
    replication_factor: u32,
    vnodes_per_weight: u32,
    digest: u64,
}

impl Topology {
    /// A topology of `members` (any order; sorted here). Duplicate ids keep the highest
    /// incarnation. `replication_factor` and `vnodes_per_weight` are raised to at least 1.
    pub fn new(mut members: Vec<Member>, replication_factor: u32, vnodes_per_weight: u32) -> Self {
        members.sort_by(|a, b| {
            a.node_id
                .cmp(&b.node_id)
                .then(b.incarnation.cmp(&a.incarnation))
        });
        members.dedup_by(|later, first| later.node_id == first.node_id);
        let replication_factor = replication_factor.max(1);
        let vnodes_per_weight = vnodes_per_weight.max(1);
        let digest = digest(&members, replication_factor, vnodes_per_weight);
        Self {
            members,
            replication_factor,
            vnodes_per_weight,
            digest,
        }
    }

    /// Members sorted by node id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member with this id.
    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.node_id.as_str().cmp(node_id))
            .ok()
            .map(|i| &self.members[i])
    }

    /// Members that own ranges of the ring (see [`NodeState::in_ring`]).
    pub fn ring_members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.state.in_ring())
    }

    /// Replicas per key before capping at the number of ring members.
    pub fn replication_factor(&self) -> u32 {
        self.replication_factor
    }

    /// Virtual nodes per unit of weight.
    pub fn vnodes_per_weight(&self) -> u32 {
        self.vnodes_per_weight
    }

    /// The stable digest naming this topology.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Checks the limits a wire topology is held to (see `TryFrom<&v1::Topology>`), for
    /// topologies built with [`Topology::new`] from other input (gossip).
    pub fn check_limits(&self) -> Result<(), TopologyError> {
        check_ring_params(self.replication_factor, self.vnodes_per_weight)?;
        if self.members.len() > MAX_MEMBERS {
            return Err(too_large("members", self.members.len(), MAX_MEMBERS));
        }
        for member in &self.members {
            check_member(
                &member.node_id,
                member.weight,
                [
                    &member.grpc_addr,
                    &member.gossip_addr,
                    &member.http_addr,
                    &member.cluster_addr,
                    &member.resp_addr,
                ],
            )?;
            if let Some(zone) = &member.zone {
                check_zone(zone)?;
            }
        }
        check_ring_size(
            self.ring_members().map(|m| m.weight),
            self.vnodes_per_weight,
        )?;
        Ok(())
    }
}

impl From<&Topology> for v1::Topology {
    fn from(topology: &Topology) -> Self {
        v1::Topology {
            members: topology.members.iter().map(v1::Member::from).collect(),
            digest: topology.digest,
            replication_factor: topology.replication_factor,
            vnodes_per_weight: topology.vnodes_per_weight,
            // The member list alone; a node adds its own limits when it serves it.
            sender_limits: None,
        }
    }
}

impl TryFrom<&v1::Topology> for Topology {
    type Error = TopologyError;

    /// Checks every size before building anything: at most [`MAX_MEMBERS`] members, each
    /// within [`MAX_WEIGHT`], [`MAX_NODE_ID_BYTES`] and [`MAX_ADDR_BYTES`], the ring parameters
    /// within [`MAX_REPLICATION_FACTOR`] and [`MAX_VNODES_PER_WEIGHT`], and the ring the
    /// range-owning members make within [`MAX_RING_VNODES`]; then the digest.
    fn try_from(wire: &v1::Topology) -> Result<Self, Self::Error> {
        check_ring_params(wire.replication_factor, wire.vnodes_per_weight)?;
        if wire.members.len() > MAX_MEMBERS {
            return Err(too_large("members", wire.members.len(), MAX_MEMBERS));
        }
        let members = wire
            .members
            .iter()
            .map(Member::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids: Vec<&str> = members.iter().map(|m| m.node_id.as_str()).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(TopologyError::DuplicateNodeId(pair[0].to_owned()));
        }
        check_ring_size(
            members
                .iter()
                .filter(|m| m.state.in_ring())
                .map(|m| m.weight),
            wire.vnodes_per_weight,
        )?;
        let topology = Topology::new(members, wire.replication_factor, wire.vnodes_per_weight);
        if topology.digest != wire.digest {
            return Err(TopologyError::DigestMismatch {
                sent: wire.digest,
                computed: topology.digest,
            });
        }
        Ok(topology)
    }
}

/// FNV-1a, 64-bit: specified, stable across machines and Rust versions.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
}

/// The digest of a sorted member list and the ring parameters: FNV-1a over a length-prefixed,
/// little-endian encoding of every field (the zone only when a member has one, after the
/// marker `u64::MAX`). Part of the wire contract (pinned by a test).
fn digest(members: &[Member], replication_factor: u32, vnodes_per_weight: u32) -> u64 {
    let mut hash = Fnv::new();
    hash.u64(members.len() as u64);
    for member in members {
        hash.str(&member.node_id);
        hash.u64(member.incarnation);
        hash.u64(v1::NodeState::from(member.state) as u64);
        hash.u64(u64::from(member.weight));
        hash.str(&member.grpc_addr);
        hash.str(&member.gossip_addr);
        hash.str(&member.http_addr);
        // Only when set, behind a marker no string length can equal, so a topology without
        // zones keeps the digest it had before zones and no other layout hashes alike.
        if let Some(zone) = &member.zone {
            hash.u64(u64::MAX);
            hash.str(zone);
        }
    }
    hash.u64(u64::from(replication_factor));
    hash.u64(u64::from(vnodes_per_weight));
    hash.0
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn member(id: &str, state: NodeState) -> Member {
        Member {
            cluster_addr: format!("{id}:7382"),
            ..Member::for_test(id)
                .with_state(state)
                .with_grpc_addr(format!("{id}:7379"))
                .with_gossip_addr(format!("{id}:7380"))
                .with_http_addr(format!("{id}:7381"))
        }
    }

    #[test]
    fn member_order_does_not_change_the_topology_or_its_digest() {
        let a = Topology::new(
            vec![
                member("n1", NodeState::Active),
                member("n2", NodeState::Active),
            ],
            3,
            256,
        );
        let b = Topology::new(
            vec![
                member("n2", NodeState::Active),
                member("n1", NodeState::Active),
            ],
            3,
            256,
        );
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
        // Pinned: a change here is a wire-contract change.
        assert_eq!(
            Topology::new(vec![], 3, 256).digest(),
            0x9622_d129_6525_0e21
        );
    }

    #[test]
    fn every_field_changes_the_digest() {
        let base = Topology::new(vec![member("n1", NodeState::Active)], 3, 256);
        let mut changes: Vec<Topology> = Vec::new();
        let with = |f: &dyn Fn(&mut Member)| {
            let mut m = member("n1", NodeState::Active);
            f(&mut m);
            Topology::new(vec![m], 3, 256)
        };
        changes.push(with(&|m| m.incarnation = 2));
        changes.push(with(&|m| m.state = NodeState::Suspect));
        changes.push(with(&|m| m.weight = 2));
        changes.push(with(&|m| m.grpc_addr = "x:1".into()));
        changes.push(with(&|m| m.gossip_addr = "x:1".into()));
        changes.push(with(&|m| m.http_addr = "x:1".into()));
        changes.push(with(&|m| m.zone = Some("a".into())));
        changes.push(Topology::new(vec![member("n1", NodeState::Active)], 2, 256));
        // The cluster-plane address is not part of the digest (older clients ignore it).
        assert_eq!(
            with(&|m| m.cluster_addr = "x:1".into()).digest(),
            base.digest()
        );
        changes.push(Topology::new(vec![member("n1", NodeState::Active)], 3, 128));
        for changed in changes {
            assert_ne!(changed.digest(), base.digest(), "{changed:?}");
        }
    }

    #[test]
    fn zones_enter_the_digest_only_when_set() {
        let two = |zone: Option<&str>| {
            let mut n1 = member("n1", NodeState::Active);
            n1.zone = zone.map(str::to_owned);
            Topology::new(vec![n1, member("n2", NodeState::Active)], 3, 256)
        };
        // Pinned from the documented encoding (computed apart from this code): the digest of a
        // topology without zones is the one it had before zones existed.
        assert_eq!(two(None).digest(), 0x4f04_7c58_060c_a19d);
        assert_eq!(two(Some("zone-a")).digest(), 0x3c2a_eee6_af9d_4f53);
        assert_ne!(two(Some("zone-b")).digest(), two(Some("zone-a")).digest());
    }

    #[test]
    fn zones_cross_the_wire_and_bad_ones_are_refused() {
        let mut zoned = member("n1", NodeState::Active);
        zoned.zone = Some("eu-west-1a".into());
        let t = Topology::new(vec![zoned, member("n2", NodeState::Active)], 2, 64);
        let wire = v1::Topology::from(&t);
        assert_eq!(wire.members[0].zone, "eu-west-1a");
        assert_eq!(wire.members[1].zone, "", "no zone is the empty string");
        let back = Topology::try_from(&wire).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.member("n2").unwrap().zone, None);
        for bad in ["a b", "zone/1", "é", &"z".repeat(MAX_ZONE_BYTES + 1)] {
            let mut member = member("n1", NodeState::Active);
            member.zone = Some(bad.to_owned());
            assert!(
                matches!(
                    Topology::try_from(&wire_of(vec![member.clone()], 3, 256)),
                    Err(TopologyError::InvalidZone(_))
                ),
                "{bad:?}"
            );
            assert!(Topology::new(vec![member], 3, 256).check_limits().is_err());
        }
        for good in [
            "a",
            "us-east-1b",
            "Zone_1.rack-2",
            &"z".repeat(MAX_ZONE_BYTES),
        ] {
            assert_eq!(check_zone(good), Ok(()), "{good:?}");
        }
        assert!(check_zone("").is_err());
        let long = "x".repeat(10_000);
        let message = check_zone(&long).unwrap_err().to_string();
        assert!(message.len() < 200, "the error stays short: {message}");
    }

    #[test]
    fn duplicates_keep_the_newest_incarnation() {
        let mut newer = member("n1", NodeState::Active);
        newer.incarnation = 9;
        let t = Topology::new(vec![member("n1", NodeState::Dead), newer.clone()], 3, 256);
        assert_eq!(t.members(), &[newer]);
    }

    #[test]
    fn wire_round_trip_and_validation() {
        let t = Topology::new(
            vec![
                member("n1", NodeState::Active),
                member("n2", NodeState::Joining),
            ],
            2,
            64,
        );
        let wire = v1::Topology::from(&t);
        assert_eq!(Topology::try_from(&wire).unwrap(), t);
        let mut bad = wire.clone();
        bad.digest ^= 1;
        assert!(matches!(
            Topology::try_from(&bad),
            Err(TopologyError::DigestMismatch { .. })
        ));
        let mut bad = wire.clone();
        bad.members[0].state = 99;
        assert!(matches!(
            Topology::try_from(&bad),
            Err(TopologyError::State { .. })
        ));
        let mut bad = wire.clone();
        bad.members[1].node_id = "n1".into();
        assert_eq!(
            Topology::try_from(&bad),
            Err(TopologyError::DuplicateNodeId("n1".into()))
        );
        let mut bad = wire;
        bad.replication_factor = 0;
        assert_eq!(
            Topology::try_from(&bad),
            Err(TopologyError::Zero("replication_factor"))
        );
    }

    #[test]
    fn only_active_leaving_and_suspect_members_own_ranges() {
        let t = Topology::new(
            [
                NodeState::Joining,
                NodeState::Active,
                NodeState::Leaving,
                NodeState::Suspect,
                NodeState::Dead,
            ]
            .iter()
            .enumerate()
            .map(|(i, s)| member(&format!("n{i}"), *s))
            .collect(),
            3,
            16,
        );
        let ids: Vec<&str> = t.ring_members().map(|m| m.node_id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2", "n3"]);
        assert_eq!(t.member("n4").unwrap().state, NodeState::Dead);
        assert!(t.member("zz").is_none());
    }

    fn wire_of(members: Vec<Member>, replication_factor: u32, vnodes: u32) -> v1::Topology {
        // Digest as a sender would compute it, so only the limits can refuse it.
        let mut wire = v1::Topology {
            members: members.iter().map(v1::Member::from).collect(),
            digest: 0,
            replication_factor,
            vnodes_per_weight: vnodes,
            sender_limits: None,
        };
        let mut sorted = members;
        sorted.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        wire.digest = digest(&sorted, replication_factor, vnodes);
        wire
    }

    fn too_large_field(result: Result<Topology, TopologyError>) -> String {
        match result {
            Err(TopologyError::TooLarge { field, value, max }) => {
                assert!(value > max, "{field}: {value} <= {max}");
                field
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn over_limit_topologies_are_refused_naming_the_field() {
        let ok = wire_of(vec![member("n1", NodeState::Active)], 3, 256);
        assert!(Topology::try_from(&ok).is_ok());

        let mut heavy = member("n1", NodeState::Active);
        heavy.weight = u32::MAX;
        let field = too_large_field(Topology::try_from(&wire_of(vec![heavy], 3, 256)));
        assert_eq!(field, r#"weight of member "n1""#);

        let field = too_large_field(Topology::try_from(&wire_of(
            vec![member("n1", NodeState::Active)],
            3,
            MAX_VNODES_PER_WEIGHT + 1,
        )));
        assert_eq!(field, "vnodes_per_weight");

        let field = too_large_field(Topology::try_from(&wire_of(
            vec![member("n1", NodeState::Active)],
            u32::MAX,
            256,
        )));
        assert_eq!(field, "replication_factor");

        let crowd: Vec<Member> = (0..=MAX_MEMBERS)
            .map(|i| member(&format!("n{i}"), NodeState::Dead))
            .collect();
        assert_eq!(
            too_large_field(Topology::try_from(&wire_of(crowd, 3, 1))),
            "members"
        );

        let long_id = "x".repeat(MAX_NODE_ID_BYTES + 1);
        let field = too_large_field(Topology::try_from(&wire_of(
            vec![member(&long_id, NodeState::Active)],
            3,
            256,
        )));
        assert_eq!(field, "node id length");

        let mut far = member("n1", NodeState::Active);
        far.http_addr = "h".repeat(MAX_ADDR_BYTES + 1);
        let field = too_large_field(Topology::try_from(&wire_of(vec![far], 3, 256)));
        assert!(field.starts_with("http_addr length"), "{field}");

        // The gossiped RESP address is bounded like the others.
        let mut far = member("n1", NodeState::Active);
        far.resp_addr = "r".repeat(MAX_ADDR_BYTES + 1);
        let field = too_large_field(Topology::try_from(&wire_of(vec![far], 3, 256)));
        assert!(field.starts_with("resp_addr length"), "{field}");
    }

    #[test]
    fn members_within_their_limits_can_still_make_a_ring_too_large() {
        // 64 members of the largest weight at the largest vnode count: each alone is fine,
        // together 64 × 64 × 4096 = 16.7 million virtual nodes.
        let members: Vec<Member> = (0..64)
            .map(|i| {
                let mut m = member(&format!("n{i:02}"), NodeState::Active);
                m.weight = MAX_WEIGHT;
                m
            })
            .collect();
        let wire = wire_of(members.clone(), 3, MAX_VNODES_PER_WEIGHT);
        assert_eq!(
            too_large_field(Topology::try_from(&wire)),
            "ring virtual nodes"
        );
        let built = Topology::new(members, 3, MAX_VNODES_PER_WEIGHT);
        assert!(matches!(
            built.check_limits(),
            Err(TopologyError::TooLarge { .. })
        ));
        // Members out of the ring do not count towards its size.
        let dead: Vec<Member> = (0..64)
            .map(|i| {
                let mut m = member(&format!("n{i:02}"), NodeState::Dead);
                m.weight = MAX_WEIGHT;
                m
            })
            .collect();
        let topology = Topology::try_from(&wire_of(dead, 3, MAX_VNODES_PER_WEIGHT)).unwrap();
        topology.check_limits().unwrap();
        // The exact bound is accepted.
        assert_eq!(
            check_ring_size([MAX_WEIGHT; 4], MAX_VNODES_PER_WEIGHT),
            Ok(MAX_RING_VNODES)
        );
        assert!(check_ring_size([MAX_WEIGHT; 5], MAX_VNODES_PER_WEIGHT).is_err());
        assert!(check_ring_size(std::iter::repeat_n(u32::MAX, 10), u32::MAX).is_err());
    }

    mod prop {
        use proptest::prelude::*;

        use super::super::*;

        fn wire_member() -> impl Strategy<Value = v1::Member> {
            (
                prop_oneof![Just(String::new()), "[a-c]{1,3}", "[a-z]{250,260}",],
                any::<u64>(),
                -1i32..7,
                prop_oneof![Just(0u32), 1u32..=80, Just(u32::MAX), any::<u32>()],
                prop_oneof!["[a-z:0-9]{0,12}", "[a-z]{295,305}"],
                prop_oneof![
                    Just(String::new()),
                    "[a-c]{1,3}",
                    "[a-z]{60,70}",
                    "[ -~]{1,4}"
                ],
            )
                .prop_map(|(node_id, incarnation, state, weight, addr, zone)| {
                    v1::Member {
                        node_id,
                        incarnation,
                        state,
                        weight,
                        grpc_addr: addr.clone(),
                        gossip_addr: addr.clone(),
                        http_addr: addr.clone(),
                        cluster_addr: addr,
                        resp_addr: String::new(),
                        zone,
                    }
                })
        }

        fn wire_topology() -> impl Strategy<Value = (v1::Topology, bool)> {
            (
                prop::collection::vec(wire_member(), 0..12),
                prop_oneof![Just(0u32), 1u32..=20, Just(u32::MAX)],
                prop_oneof![Just(0u32), 1u32..=5000, Just(u32::MAX)],
                any::<u64>(),
                any::<bool>(),
            )
                .prop_map(
                    |(members, replication_factor, vnodes_per_weight, digest, honest)| {
                        let mut wire = v1::Topology {
                            members,
                            digest,
                            replication_factor,
                            vnodes_per_weight,
                            sender_limits: None,
                        };
                        if honest {
                            // Often a correct digest, so the limits are what decides.
                            let mut sorted: Vec<Member> = wire
                                .members
                                .iter()
                                .filter_map(|m| Member::try_from(m).ok())
                                .collect();
                            sorted.sort_by(|a, b| a.node_id.cmp(&b.node_id));
                            wire.digest = digest_of(&sorted, replication_factor, vnodes_per_weight);
                        }
                        (wire, honest)
                    },
                )
        }

        fn digest_of(members: &[Member], r: u32, v: u32) -> u64 {
            super::super::digest(members, r, v)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn try_from_never_panics_and_what_it_accepts_is_within_limits((wire, _) in wire_topology()) {
                let Ok(topology) = Topology::try_from(&wire) else {
                    return Ok(());
                };
                prop_assert!(topology.check_limits().is_ok());
                prop_assert!(topology.members().len() <= MAX_MEMBERS);
                prop_assert!((1..=MAX_REPLICATION_FACTOR).contains(&topology.replication_factor()));
                prop_assert!((1..=MAX_VNODES_PER_WEIGHT).contains(&topology.vnodes_per_weight()));
                for member in topology.members() {
                    prop_assert!((1..=MAX_WEIGHT).contains(&member.weight));
                    prop_assert!(!member.node_id.is_empty() && member.node_id.len() <= MAX_NODE_ID_BYTES);
                    prop_assert!(member.grpc_addr.len() <= MAX_ADDR_BYTES);
                    if let Some(zone) = &member.zone {
                        prop_assert!(check_zone(zone).is_ok());
                    }
                }
                let vnodes: u64 = topology
                    .ring_members()
                    .map(|m| u64::from(m.weight) * u64::from(topology.vnodes_per_weight()))
                    .sum();
                prop_assert!(vnodes <= MAX_RING_VNODES);
                // What is accepted round-trips.
                prop_assert_eq!(Topology::try_from(&v1::Topology::from(&topology)).unwrap(), topology);
            }

            #[test]
            fn member_try_from_never_panics(member in wire_member()) {
                if let Ok(converted) = Member::try_from(&member) {
                    prop_assert!((1..=MAX_WEIGHT).contains(&converted.weight));
                    prop_assert!(converted.node_id.len() <= MAX_NODE_ID_BYTES);
                }
            }
        }
    }
}
