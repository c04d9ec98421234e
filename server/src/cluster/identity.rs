//! The gossip identity of a node: who sent a packet and who it is for.
//!
//! Owns [`NodeIdentity`] (node id, gossip address, incarnation) and its foca [`Identity`] rules:
//! the node id is the member's address in foca's sense, so two identities with the same node id
//! are the same node, and the higher incarnation replaces the lower one. It travels in every
//! packet header (twice) and in every membership update, so it must stay small and must not grow
//! mutable metadata: addresses, weight and state travel as broadcasts (`meta.rs`).

use std::cmp::Ordering;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use foca::Identity;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest node id, in bytes.
pub const MAX_NODE_ID_BYTES: usize = 128;

/// A node id: 1 to [`MAX_NODE_ID_BYTES`] bytes of UTF-8, cheap to clone (foca clones identities
/// for every message it builds).
///
/// On the wire an empty id is the *seed placeholder*: the destination of an announce sent to a
/// seed whose id is not known yet (see `codec.rs`). No member ever has an empty id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// A validated node id.
    pub fn new(node_id: &str) -> Result<Self, IdentityError> {
        if node_id.is_empty() {
            return Err(IdentityError::EmptyNodeId);
        }
        if node_id.len() > MAX_NODE_ID_BYTES {
            return Err(IdentityError::NodeIdTooLong(node_id.len()));
        }
        Ok(Self(Arc::from(node_id)))
    }

    /// The seed placeholder (empty id); only ever a packet destination.
    pub(crate) fn placeholder() -> Self {
        Self(Arc::from(""))
    }

    /// Whether this is the seed placeholder.
    pub(crate) fn is_placeholder(&self) -> bool {
        self.0.is_empty()
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    /// Accepts 0..=[`MAX_NODE_ID_BYTES`] bytes: the codec decides where the empty placeholder is
    /// allowed.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(NodeIdVisitor)
    }
}

struct NodeIdVisitor;

impl serde::de::Visitor<'_> for NodeIdVisitor {
    type Value = NodeId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a node id of at most 128 bytes")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<NodeId, E> {
        if text.len() > MAX_NODE_ID_BYTES {
            return Err(E::invalid_length(text.len(), &self));
        }
        Ok(NodeId(Arc::from(text)))
    }
}

/// A node id that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The node id was empty.
    #[error("node id is empty")]
    EmptyNodeId,
    /// The node id was longer than [`MAX_NODE_ID_BYTES`] (its length is given).
    #[error("node id is {0} bytes, more than 128")]
    NodeIdTooLong(usize),
}

/// Who a node is in gossip: its id, where it listens for gossip, and which run of it this is.
///
/// `incarnation` must grow across restarts of the same node id (the unix time in milliseconds
/// at start is a good choice): a restarted node comes back with a higher incarnation and
/// replaces its previous run everywhere. foca also renews it (+1) by itself when the cluster
/// declared this node down and it is still running (auto-rejoin).
///
/// This is a wire type: its serde form is part of the gossip format (`codec.rs`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    node_id: NodeId,
    gossip_addr: SocketAddr,
    incarnation: u64,
}

impl NodeIdentity {
    /// An identity for `node_id` (1..=128 bytes) listening for gossip on `gossip_addr`.
    pub fn new(
        node_id: &str,
        gossip_addr: SocketAddr,
        incarnation: u64,
    ) -> Result<Self, IdentityError> {
        Ok(Self {
            node_id: NodeId::new(node_id)?,
            gossip_addr,
            incarnation,
        })
    }

    /// The destination of an announce to a seed whose node id we do not know.
    pub(crate) fn seed_placeholder(gossip_addr: SocketAddr) -> Self {
        Self {
            node_id: NodeId::placeholder(),
            gossip_addr,
            incarnation: 0,
        }
    }

    /// The same identity with another node id (the codec resolves the seed placeholder).
    pub(crate) fn with_node_id(self, node_id: NodeId) -> Self {
        Self { node_id, ..self }
    }

    /// The node id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Where the node receives gossip.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Which run of the node this is; higher replaces lower.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Orders two runs of the same node: higher incarnation first, then the gossip address so
    /// that every node breaks a tie the same way.
    fn precedence(&self, other: &Self) -> Ordering {
        self.incarnation
            .cmp(&other.incarnation)
            .then_with(|| self.gossip_addr.cmp(&other.gossip_addr))
    }
}

impl fmt::Debug for NodeIdentity {
    /// `id#incarnation@addr`: short, because foca logs identities a lot.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for NodeIdentity {
    /// `id#incarnation@addr`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#{}@{}",
            self.node_id, self.incarnation, self.gossip_addr
        )
    }
}

impl Identity for NodeIdentity {
    /// The node id: identities that share it are runs of the same node.
    type Addr = NodeId;

    /// The next incarnation, same id and address; `None` once the counter is exhausted.
    fn renew(&self) -> Option<Self> {
        Some(Self {
            node_id: self.node_id.clone(),
            gossip_addr: self.gossip_addr,
            incarnation: self.incarnation.checked_add(1)?,
        })
    }

    fn addr(&self) -> NodeId {
        self.node_id.clone()
    }

    /// The higher incarnation wins; on a tie (two processes started with the same id and
    /// incarnation, a misconfiguration) the higher gossip address wins, so every node agrees.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.precedence(adversary) == Ordering::Greater
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(node_id: &str, port: u16, incarnation: u64) -> NodeIdentity {
        NodeIdentity::new(
            node_id,
            SocketAddr::from(([127, 0, 0, 1], port)),
            incarnation,
        )
        .unwrap()
    }

    #[test]
    fn node_ids_are_one_to_128_bytes() {
        assert_eq!(NodeId::new(""), Err(IdentityError::EmptyNodeId));
        assert_eq!(
            NodeId::new(&"x".repeat(129)),
            Err(IdentityError::NodeIdTooLong(129))
        );
        assert_eq!(NodeId::new(&"x".repeat(128)).unwrap().as_str().len(), 128);
    }

    #[test]
    fn renew_keeps_id_and_address_and_wins_the_conflict() {
        let first = id("n1", 7380, 41);
        let renewed = first.renew().unwrap();
        assert_eq!(renewed.node_id(), first.node_id());
        assert_eq!(renewed.gossip_addr(), first.gossip_addr());
        assert_eq!(renewed.incarnation(), 42);
        assert!(renewed.win_addr_conflict(&first));
        assert!(!first.win_addr_conflict(&renewed));
        assert_eq!(id("n1", 7380, u64::MAX).renew(), None);
    }

    #[test]
    fn same_node_id_is_the_same_member_and_the_higher_incarnation_wins() {
        let old = id("n1", 7380, 5);
        let restarted = id("n1", 9999, 6);
        assert_eq!(old.addr(), restarted.addr());
        assert!(restarted.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&restarted));
        // A tie is broken by address, in the same direction on every node.
        let a = id("n1", 1, 5);
        let b = id("n1", 2, 5);
        assert!(b.win_addr_conflict(&a) && !a.win_addr_conflict(&b));
        assert_ne!(id("n1", 1, 5).addr(), id("n2", 1, 5).addr());
    }

    #[test]
    fn identity_is_small_on_the_wire() {
        let bytes = postcard::to_allocvec(&id("node-1", 7380, 1_760_000_000_000)).unwrap();
        // 1 + 6 id bytes, 1 + 4 + 2 address bytes (variant, IPv4, varint port), 6 varint bytes.
        assert!(bytes.len() <= 24, "{} bytes", bytes.len());
        let back: NodeIdentity = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, id("node-1", 7380, 1_760_000_000_000));
    }
}
