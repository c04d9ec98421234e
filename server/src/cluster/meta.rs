//! Node metadata: the mutable facts about a member that do not belong in its identity (gRPC and
//! HTTP addresses, ring weight, life-cycle state), versioned and spread as foca custom broadcasts.
//!
//! Owns [`NodeMeta`], the table of the newest metadata known per node (`MetaTable`) and foca's
//! [`BroadcastHandler`] for it. A record is named by (node id, incarnation, meta version) and a
//! newer name invalidates an older one, so stale metadata stops spreading as soon as newer
//! metadata is seen. A node is the only authority on its own metadata: records about ourselves
//! that come back from the cluster are ignored. While a member is alive, only records of its
//! live incarnation are taken (`MetaTable::pin`): a second process claiming its node id cannot
//! replace its metadata (the impostor rule of `membership.rs`).
//!
//! Must not: decide membership (that is foca's job, `membership.rs`) or do I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use foca::{BroadcastHandler, Invalidates};
use parking_lot::Mutex;
use ringcache_proto::topology::NodeState;

use super::codec::{self, CodecError};
use super::identity::{NodeId, NodeIdentity};

/// The largest encoded metadata record, in bytes, so that it always fits in a packet beside a
/// header (see `MembershipConfig::max_packet_size`).
pub const MAX_META_BYTES: usize = 512;

/// The life-cycle states a node announces about itself. `Suspect` and `Dead` are not
/// here: they are what failure detection concludes about others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaState {
    /// In gossip, receiving its ranges, not yet serving.
    Joining,
    /// In the ring and serving.
    Active,
    /// Handing its data off; still serving until it is gone.
    Leaving,
    /// Stopping for a quick restart with its data kept on disk (members keep its ranges for
    /// the restart grace once it is down), or back from one and catching up on what it missed.
    Restarting,
}

impl From<MetaState> for NodeState {
    fn from(state: MetaState) -> Self {
        match state {
            MetaState::Joining => NodeState::Joining,
            MetaState::Active => NodeState::Active,
            MetaState::Leaving => NodeState::Leaving,
            MetaState::Restarting => NodeState::Restarting,
        }
    }
}

/// What a node tells the cluster about itself, besides its identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeMeta {
    /// Where clients and peers reach its gRPC services (`host:port`).
    pub grpc_addr: String,
    /// Where its HTTP endpoint (`/metrics`, `/health/*`) listens (`host:port`).
    pub http_addr: String,
    /// Where peers reach its cluster-plane gRPC services (`host:port`).
    pub cluster_addr: String,
    /// Where clients reach its Redis protocol port (`host:port`); empty when it has none.
    pub resp_addr: String,
    /// Its ring weight (virtual nodes scale with it); at least 1.
    pub weight: u32,
    /// Its life-cycle state.
    pub state: MetaState,
    /// The settings every member must share.
    pub settings: ClusterSettings,
    /// Its zone (failure domain), `None` for none: placement spreads each key's copies over
    /// zones. Checked with `ringcache_proto::topology::check_zone`.
    pub zone: Option<String>,
}

/// The settings that decide placement, which every member of a cluster must share: nodes that
/// differ would place keys differently. A member whose settings differ from this node's is
/// refused (`membership.rs`): never admitted to its view, so never to its ring. Placement
/// versions need not be equal, only compatible
/// (`ringcache_proto::placement::placement_versions_compatible`): a node with a zone
/// advertises 3, one without 2, and builds that know zones place both alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClusterSettings {
    /// Copies of each key (R).
    pub replication_factor: u32,
    /// Virtual nodes per unit of weight.
    pub vnodes: u32,
    /// The placement version the node advertises (`ringcache_proto::placement::placement_version`):
    /// the hash-slot scheme and the ring's placement rule of its build, 3 when it has a zone.
    pub placement_version: u32,
}

impl ClusterSettings {
    /// What differs in `other` from `self`, one clause per setting ("replication_factor 2,
    /// this node's 3"); `None` when they agree. R and vnodes must be equal; placement versions
    /// compatible (2 and 3 are: see the type's docs).
    pub fn difference(&self, other: &ClusterSettings) -> Option<String> {
        let mut clauses = Vec::new();
        for (name, ours, theirs) in [
            (
                "replication_factor",
                self.replication_factor,
                other.replication_factor,
            ),
            ("vnodes", self.vnodes, other.vnodes),
        ] {
            if ours != theirs {
                clauses.push(format!("{name} {theirs}, this node's {ours}"));
            }
        }
        if !ringcache_proto::placement::placement_versions_compatible(
            self.placement_version,
            other.placement_version,
        ) {
            clauses.push(format!(
                "placement_version {}, this node's {}",
                other.placement_version, self.placement_version
            ));
        }
        (!clauses.is_empty()).then(|| clauses.join("; "))
    }
}

impl NodeMeta {
    /// Checks what the cluster cannot accept: weight 0, an invalid zone, or a record over
    /// [`MAX_META_BYTES`].
    pub fn validate(&self) -> Result<(), MetaError> {
        if self.weight == 0 {
            return Err(MetaError::ZeroWeight);
        }
        if let Some(zone) = &self.zone
            && ringcache_proto::topology::check_zone(zone).is_err()
        {
            return Err(MetaError::InvalidZone);
        }
        // The record adds the node id and two varints; bound it with the longest id.
        let len = codec::meta_record_len_bound(self);
        if len > MAX_META_BYTES {
            return Err(MetaError::TooLarge { len });
        }
        Ok(())
    }
}

/// Metadata that cannot be announced; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The weight was 0; a member needs weight ≥ 1 to own ranges.
    #[error("weight must be at least 1")]
    ZeroWeight,
    /// The zone is not 1 to 64 bytes of `[A-Za-z0-9._-]`.
    #[error("zone must be 1 to 64 bytes of letters, digits, '.', '_' and '-'")]
    InvalidZone,
    /// The encoded record would be `len` bytes, over [`MAX_META_BYTES`].
    #[error("metadata record would be {len} bytes, more than 512")]
    TooLarge {
        /// Upper bound of the encoded size.
        len: usize,
    },
}

/// One version of one node's metadata, as disseminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaRecord {
    pub(crate) node_id: NodeId,
    /// The identity incarnation the metadata belongs to.
    pub(crate) incarnation: u64,
    /// Grows with every change the node makes to its metadata within one incarnation.
    pub(crate) meta_version: u64,
    pub(crate) meta: NodeMeta,
}

impl MetaRecord {
    fn key(&self) -> MetaKey {
        MetaKey {
            node_id: self.node_id.clone(),
            incarnation: self.incarnation,
            meta_version: self.meta_version,
        }
    }

    /// Whether `self` is a later version than `other` (same node assumed).
    fn is_newer_than(&self, other: &Self) -> bool {
        (self.incarnation, self.meta_version) > (other.incarnation, other.meta_version)
    }
}

/// The name of a metadata broadcast in foca's backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaKey {
    node_id: NodeId,
    incarnation: u64,
    meta_version: u64,
}

impl Invalidates for MetaKey {
    /// Same node and not older: the backlog keeps one record per node, the newest. Equal
    /// versions invalidate too, so re-adding the same record replaces it instead of doubling it.
    fn invalidates(&self, other: &Self) -> bool {
        self.node_id == other.node_id
            && (self.incarnation, self.meta_version) >= (other.incarnation, other.meta_version)
    }
}

/// The newest metadata known for every other node.
#[derive(Debug)]
pub(crate) struct MetaTable {
    own: NodeId,
    records: BTreeMap<NodeId, MetaRecord>,
    /// The incarnation of every member that is alive or suspect: records of other
    /// incarnations of these node ids are refused.
    pinned: BTreeMap<NodeId, u64>,
}

impl MetaTable {
    pub(crate) fn new(own: NodeId) -> Self {
        Self {
            own,
            records: BTreeMap::new(),
            pinned: BTreeMap::new(),
        }
    }

    /// Replaces the live incarnations (node id → incarnation of the member that is not down).
    pub(crate) fn pin(&mut self, live: BTreeMap<NodeId, u64>) {
        self.pinned = live;
    }

    /// Keeps `record` if it is about another node, of its live incarnation when it has one,
    /// and newer than what we have; says whether it was kept.
    pub(crate) fn offer(&mut self, record: MetaRecord) -> bool {
        if record.node_id == self.own {
            return false;
        }
        if self
            .pinned
            .get(&record.node_id)
            .is_some_and(|live| *live != record.incarnation)
        {
            return false;
        }
        match self.records.get(&record.node_id) {
            Some(known) if !record.is_newer_than(known) => false,
            _ => {
                self.records.insert(record.node_id.clone(), record);
                true
            }
        }
    }

    /// The metadata of exactly this run of the node: metadata of an earlier run does not
    /// describe a restarted process (it starts empty, maybe with other addresses).
    pub(crate) fn get(&self, identity: &NodeIdentity) -> Option<&NodeMeta> {
        self.records
            .get(identity.node_id())
            .filter(|record| record.incarnation == identity.incarnation())
            .map(|record| &record.meta)
    }

    /// The newest metadata known of `node_id`, whichever incarnation it belongs to.
    pub(crate) fn latest(&self, node_id: &NodeId) -> Option<&NodeMeta> {
        self.records.get(node_id).map(|record| &record.meta)
    }

    /// Drops the record of `node_id` if it belongs to `incarnation` or an earlier one.
    pub(crate) fn forget(&mut self, node_id: &NodeId, incarnation: u64) {
        if self
            .records
            .get(node_id)
            .is_some_and(|record| record.incarnation <= incarnation)
        {
            self.records.remove(node_id);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

/// foca's handler for metadata broadcasts. foca owns it and gives no access back, so the table
/// is shared with the membership core behind an uncontended mutex (both live on one task).
#[derive(Debug)]
pub(crate) struct MetaBroadcasts {
    table: Arc<Mutex<MetaTable>>,
}

impl MetaBroadcasts {
    pub(crate) fn new(table: Arc<Mutex<MetaTable>>) -> Self {
        Self { table }
    }
}

impl BroadcastHandler<NodeIdentity> for MetaBroadcasts {
    type Key = MetaKey;
    type Error = CodecError;

    /// A record added locally (`sender == None`, our own metadata) is always disseminated; a
    /// received one only if it taught us something, which is what stops the epidemic.
    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeIdentity>,
    ) -> Result<Option<MetaKey>, CodecError> {
        let record = codec::decode_meta_record(data)?;
        let key = record.key();
        if sender.is_none() {
            return Ok(Some(key));
        }
        Ok(self.table.lock().offer(record).then_some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(port: u16, state: MetaState) -> NodeMeta {
        NodeMeta {
            grpc_addr: format!("127.0.0.1:{port}"),
            http_addr: format!("127.0.0.1:{}", port + 1),
            cluster_addr: format!("127.0.0.1:{}", port + 2),
            resp_addr: String::new(),
            weight: 1,
            state,
            settings: ClusterSettings::default(),
            zone: None,
        }
    }

    fn record(node: &str, incarnation: u64, meta_version: u64) -> MetaRecord {
        MetaRecord {
            node_id: NodeId::new(node).unwrap(),
            incarnation,
            meta_version,
            meta: meta(7379, MetaState::Active),
        }
    }

    #[test]
    fn newer_metadata_replaces_older_and_never_the_reverse() {
        let mut table = MetaTable::new(NodeId::new("self").unwrap());
        assert!(table.offer(record("n1", 1, 1)));
        assert!(table.offer(record("n1", 1, 2)));
        assert!(!table.offer(record("n1", 1, 2)), "same version is not news");
        assert!(!table.offer(record("n1", 1, 1)), "older version is stale");
        // A restart resets the version but raises the incarnation.
        assert!(table.offer(record("n1", 2, 1)));
        assert!(!table.offer(record("n1", 1, 9)));
        assert!(!table.offer(record("self", 9, 9)), "we own our metadata");
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_live_member_keeps_its_metadata_against_other_incarnations() {
        let mut table = MetaTable::new(NodeId::new("self").unwrap());
        assert!(table.offer(record("n1", 5, 1)));
        table.pin(BTreeMap::from([(NodeId::new("n1").unwrap(), 5)]));
        assert!(
            !table.offer(record("n1", 9, 1)),
            "another run while n1#5 lives"
        );
        assert!(
            table.offer(record("n1", 5, 2)),
            "its own updates still apply"
        );
        table.pin(BTreeMap::new());
        assert!(
            table.offer(record("n1", 9, 1)),
            "once it is down, a new run may take over"
        );
    }

    #[test]
    fn metadata_belongs_to_one_incarnation() {
        let mut table = MetaTable::new(NodeId::new("self").unwrap());
        table.offer(record("n1", 1, 3));
        let addr = "127.0.0.1:1".parse().unwrap();
        assert!(
            table
                .get(&NodeIdentity::new("n1", addr, 1).unwrap())
                .is_some()
        );
        assert!(
            table
                .get(&NodeIdentity::new("n1", addr, 2).unwrap())
                .is_none()
        );
        table.forget(&NodeId::new("n1").unwrap(), 0);
        assert_eq!(
            table.len(),
            1,
            "a newer record survives forgetting an older run"
        );
        table.forget(&NodeId::new("n1").unwrap(), 1);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn keys_invalidate_older_or_equal_versions_of_the_same_node() {
        let k = |node: &str, inc, ver| record(node, inc, ver).key();
        assert!(k("n1", 1, 2).invalidates(&k("n1", 1, 1)));
        assert!(k("n1", 1, 2).invalidates(&k("n1", 1, 2)));
        assert!(k("n1", 2, 0).invalidates(&k("n1", 1, 9)));
        assert!(!k("n1", 1, 1).invalidates(&k("n1", 1, 2)));
        assert!(!k("n2", 9, 9).invalidates(&k("n1", 1, 1)));
    }

    #[test]
    fn validation_rejects_zero_weight_and_oversized_records() {
        assert_eq!(meta(1, MetaState::Active).validate(), Ok(()));
        let mut m = meta(1, MetaState::Active);
        m.weight = 0;
        assert_eq!(m.validate(), Err(MetaError::ZeroWeight));
        let mut m = meta(1, MetaState::Active);
        m.grpc_addr = "x".repeat(400);
        assert!(matches!(m.validate(), Err(MetaError::TooLarge { .. })));
        let mut m = meta(1, MetaState::Active);
        m.zone = Some("eu-west-1a".into());
        assert_eq!(m.validate(), Ok(()));
        m.zone = Some("no spaces".into());
        assert_eq!(m.validate(), Err(MetaError::InvalidZone));
        m.zone = Some(String::new());
        assert_eq!(m.validate(), Err(MetaError::InvalidZone));
    }

    #[test]
    fn placement_versions_2_and_3_agree_and_r_and_vnodes_must_be_equal() {
        let settings = |r, vnodes, version| ClusterSettings {
            replication_factor: r,
            vnodes,
            placement_version: version,
        };
        let plain = settings(3, 256, 2);
        let zoned = settings(3, 256, 3);
        assert_eq!(plain.difference(&zoned), None, "a zoned node is admitted");
        assert_eq!(zoned.difference(&plain), None, "and admits zone-less ones");
        assert_eq!(zoned.difference(&zoned), None);
        assert_eq!(
            plain.difference(&settings(3, 256, 1)).as_deref(),
            Some("placement_version 1, this node's 2")
        );
        assert_eq!(
            zoned.difference(&settings(3, 256, 4)).as_deref(),
            Some("placement_version 4, this node's 3")
        );
        assert_eq!(
            zoned.difference(&settings(2, 256, 2)).as_deref(),
            Some("replication_factor 2, this node's 3")
        );
        assert_eq!(
            plain.difference(&settings(3, 128, 1)).as_deref(),
            Some("vnodes 128, this node's 256; placement_version 1, this node's 2")
        );
        // What a build of this version advertises.
        assert_eq!(ringcache_proto::placement::placement_version(false), 2);
        assert_eq!(ringcache_proto::placement::placement_version(true), 3);
    }
}
