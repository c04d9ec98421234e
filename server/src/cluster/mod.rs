//! Cluster membership: who is in the cluster, how to reach each member, and in which state it
//! is, learned by SWIM gossip over UDP (the `foca` crate) with node metadata as broadcasts.
//!
//! Owns the gossip wire format, the membership state machine and its tokio driver. Its output
//! is a list of [`ringcache_proto::topology::Member`]s, published on a `watch` channel, that the
//! node turns into a `Topology` and a ring. It must not build the ring or move data: those
//! react to the member list, they are not part of it.
//!
//! Map:
//! - `identity.rs`: [`NodeIdentity`], what identifies a node in every packet (id, gossip
//!   address, incarnation) and foca's rules for it (same id = same node, higher incarnation
//!   wins).
//! - `meta.rs`: [`NodeMeta`], the mutable facts (addresses, weight, Joining/Active/Leaving),
//!   versioned and spread as foca custom broadcasts.
//! - `codec.rs`: the datagram frame (magic, version, kind), foca's postcard codec with our node
//!   id rules, and the encodings of our own small messages.
//! - `crypto.rs`: [`Keyring`] and the sealing of datagrams (AES-256-GCM under per-sender HKDF
//!   subkeys, counter nonces, replay windows); used by the driver only.
//! - `membership.rs`: [`Membership`], the deterministic core (time and RNG seed are inputs,
//!   outputs are drained), and [`MembershipConfig`].
//! - `driver.rs`: [`run_membership`] / [`MembershipHandle`], the thin async shell: socket,
//!   timers, commands, shutdown, [`GossipStats`].
//! - `socket.rs`: [`GossipSocket`], the datagram socket the driver runs on (UDP, or a
//!   simulated network).
//!
//! **Invariant:** only `driver.rs` does I/O or reads the clock.

mod codec;
mod crypto;
mod driver;
mod identity;
mod membership;
mod meta;
mod socket;
#[cfg(test)]
mod tests;

pub use codec::{DropReason, MAGIC, SEALED_WIRE_VERSION, WIRE_VERSION};
pub use crypto::{
    INSTANCE_ID_LEN, KEY_LEN, KeyId, Keyring, KeyringError, MAX_KEYS, MAX_SENDERS, REPLAY_WINDOW,
    SEAL_OVERHEAD, Sealer,
};
pub use driver::{
    AUTH_LOG_PERIOD, Command, CommandError, Encryption, GossipStats, GossipStatsSnapshot,
    MembershipHandle, run_membership,
};
pub use identity::{IdentityError, MAX_NODE_ID_BYTES, NodeId, NodeIdentity};
pub use membership::{
    MAX_IMPOSTORS_LOGGED, MAX_LOCAL_HEALTH, MAX_PACKET_SIZE, MIN_PACKET_SIZE, Membership,
    MembershipConfig, MembershipError, RefusedMember, SUSPICION_CONFIRMATIONS, Timer,
};
pub use meta::{ClusterSettings, MAX_META_BYTES, MetaError, MetaState, NodeMeta};
pub use socket::{GossipSocket, SocketFuture};
