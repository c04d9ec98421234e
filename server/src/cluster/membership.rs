//! The membership state machine: SWIM gossip (foca) plus node metadata, turned into the member
//! list the ring is built from.
//!
//! Owns [`Membership`], its [`MembershipConfig`] and the [`Timer`]s it asks for. It is
//! deterministic: inputs are values (a received datagram, a due timer, a command) with the
//! current time passed in as a [`Duration`] since an origin the caller picks; outputs are values
//! the caller drains (datagrams to send, timers to schedule) and a member view with a generation
//! number. The RNG is seeded by the caller.
//!
//! **Invariant:** no sockets, no clock reads, no tasks, no iteration over hash maps (every
//! output is a function of the inputs and the seed).
//!
//! The view (see [`Membership::members`]) lists ourselves and every member foca knows whose
//! metadata for that exact incarnation has arrived: a member without addresses cannot be routed
//! to. Its state is the announced metadata state while foca says alive, `Suspect` while foca
//! suspects it, and `Dead` for `dead_retention` after foca declared it down. A member whose
//! last metadata said `Restarting` (a quick restart with its data kept on disk) is
//! `Restarting` for `restart_grace` after foca declared it down, keeping its ranges, and only
//! then `Dead`.
//!
//! Beyond plain foca, four small mechanisms make the view converge fast:
//! - *meta push*: when a member comes up (or comes back as a new incarnation) we send it our own
//!   metadata directly, so a late joiner learns every node's metadata within one round trip
//!   instead of waiting for broadcasts that may already have been spent;
//! - *suspicion notice*: while we suspect a member we tell it directly, once per probe period,
//!   so it can refute even if it missed every gossiped copy of the suspicion (foca only spreads
//!   the suspicion `max_transmissions` times, possibly all while it was unreachable);
//! - *meta request*: a member that is alive but whose metadata has not arrived after a probe
//!   period is asked for it directly, once per probe period, until it arrives;
//! - *reconnect*: while foca is not connected (no other member alive yet, or just after an
//!   automatic rejoin) we announce every `reconnect_period` to the seeds and to a few known
//!   members, by address. So a seed that starts later is still joined, and a node whose peers
//!   all changed identity at once (both sides of a healed partition rejoin together, and then
//!   drop each other's messages as addressed to the old identity) finds them again: foca alone
//!   stays disconnected for good in that case, since its timers stop while disconnected. While
//!   connected, we still announce to the seeds every `announce_period`: two groups that formed
//!   apart (the seed started after the others found each other, or a split outlived
//!   `remove_down_after`) are each connected and would otherwise never merge. At the same
//!   cadence every node broadcasts its metadata again, so a member that missed every copy of a
//!   change (found by the simulation: one of seven nodes kept a peer as Joining for good) gets
//!   it within an `announce_period`.
//!
//! **Lifeguard** (memberlist's failure-detector refinements; foca 2.0 has none of them, so the
//! core adds them around it):
//! - *Local health*: a score from 0 to `local_health_max` − 1 that goes up by one for each of
//!   our probes that fails and for each suspicion about ourselves we must refute, and down by
//!   one for each probe answered directly. foca's probe timers pass through our runtime
//!   (`Outbox::submit_after`), which stretches `ProbeRandomMember` (the probe period) and
//!   `SendIndirectProbe` (the probe timeout) by score + 1: a node that is starved of CPU or
//!   losing packets probes less often and waits longer before accusing anyone. (foca's
//!   `set_config` refuses to change the probe period or timeout, hence the timers.)
//! - *Suspicion that shrinks with confirmations*: foca asks for one `ChangeSuspectToDown` timer
//!   after each of our failed probes; the core holds it instead of scheduling it, and tells every
//!   other live member that it suspects the member (a `Confirm` datagram: foca's gossip does not
//!   say who suspects). Our timeout starts at `suspect_to_down_max` and shrinks with each
//!   distinct other accuser as memberlist's does (`max − (max − min)·ln(C+1)/ln(K+1)`, K =
//!   [`SUSPICION_CONFIRMATIONS`], fewer below four members), down to `suspect_to_down_after`;
//!   both scale with max(1, log10 n). When it runs out the core hands foca its timer, and foca
//!   declares the member down if it is still suspect at that incarnation. A crashed node fails
//!   everyone's probes and goes down after the short timeout; a live one that a lossy link or a
//!   slow moment made one member suspect has the long timeout to refute.
//! - *Buddy notice*: the suspicion notice above, sent at once and every probe period.
//! - Not done: nacks from indirect-probe helpers (memberlist's finer local health signal).
//!
//! **Impostor rule.** A node id belongs to one gossip address at a time. While foca holds a
//! member with that id that is not down (alive or suspect) at address A, anything claiming the
//! id from another address B is refused before foca sees it: a datagram whose sender is such a
//! claim is dropped ([`DropReason::Impostor`]), member updates about it are cut out of the
//! datagrams that carry them, and metadata records of another incarnation of that id are not
//! taken. The same holds for our own id at any address but ours. Each refused (id, address) is
//! logged once (up to [`MAX_IMPOSTORS_LOGGED`] pairs remembered). foca alone would let the two
//! processes declare each other down and rejoin in a loop (it declares any other identity with
//! our id down, and the higher incarnation wins elsewhere); with the rule the first live holder
//! of the id keeps it with a stable incarnation. Once the member at A is declared down, the id
//! may come back from another address (a pod restarted with a new IP).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use foca::{Codec, Foca, Message, Notification, OwnedNotification, PeriodicParams, Runtime, State};
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use ringcache_proto::topology::{Member, NodeState};

use super::codec::{
    self, DropReason, FRAME_HEADER_LEN, FrameKind, GossipCodec, SuspectNotice, frame, frame_header,
};
use super::crypto::SEAL_OVERHEAD;
use super::identity::{NodeId, NodeIdentity};
use super::meta::{MetaBroadcasts, MetaError, MetaRecord, MetaState, MetaTable, NodeMeta};

/// The smallest `max_packet_size` accepted: room for two of the longest identities, a message
/// and one metadata record of the largest size.
pub const MIN_PACKET_SIZE: usize = 1200;
/// The largest `max_packet_size` accepted (the largest UDP payload over IPv4).
pub const MAX_PACKET_SIZE: usize = 65_507;
/// The largest accepted `local_health_max`.
pub const MAX_LOCAL_HEALTH: u32 = 32;
/// How many independent confirmations (other accusers) bring a suspicion down to its shortest
/// timeout (memberlist's `SuspicionMult - 2` with its default multiplier); fewer in clusters
/// too small to have that many other members.
pub const SUSPICION_CONFIRMATIONS: usize = 2;
/// The most accusations by others remembered (suspect, incarnation); the oldest are forgotten
/// first.
const MAX_ACCUSATIONS: usize = 1024;
/// The most (node id, gossip address) impostor claims remembered so each is logged once; when
/// full the memory is cleared (a claim may then be logged again).
pub const MAX_IMPOSTORS_LOGGED: usize = 1024;

/// Tuning of failure detection and dissemination. Defaults suit a LAN cluster of a few to a few
/// dozen nodes; [`MembershipConfig::for_test`] is the same protocol five times faster.
///
/// Failure detection time is roughly one or two `probe_period`s (until members probe the failed
/// node and their probes fail) plus `suspect_to_down_after` once enough members confirm the
/// suspicion: about 2 s with the defaults (see the module docs, *Lifeguard*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often this node probes one random member. Default 500 ms. Must be greater than
    /// `probe_rtt` (ideally more than twice: the indirect probes need time too). Stretched by
    /// the local health multiplier (see `local_health_max`).
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe indirectly. Default
    /// 200 ms; a high percentile of the network round trip. Stretched like `probe_period`.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly (and to receive an explicit gossip).
    /// Default 3.
    pub num_indirect_probes: NonZeroUsize,
    /// How long a suspected member has to refute before it is declared down once enough other
    /// members confirm the suspicion (the shortest suspicion). Default 1 s. Multiplied by
    /// max(1, log10(members)) like memberlist's.
    pub suspect_to_down_after: Duration,
    /// How long a suspected member has to refute when no other member confirms the suspicion
    /// (the longest suspicion); each independent confirmation shortens it logarithmically down
    /// to `suspect_to_down_after`. Default 6 s. At least `suspect_to_down_after`.
    pub suspect_to_down_max: Duration,
    /// The largest local health multiplier: a node whose own probes fail, or that must refute
    /// suspicions about itself, stretches its probe period and probe timeout by up to this
    /// factor, so a starved or badly connected node slows its own accusations. Default 8;
    /// 1 turns it off. Between 1 and [`MAX_LOCAL_HEALTH`].
    pub local_health_max: u32,
    /// How many times each update and metadata broadcast is piggybacked before it is dropped
    /// from the backlog. Default 6; about 4·log10(n + 1) suffices for n nodes.
    pub max_transmissions: NonZeroU8,
    /// How often pending updates are gossiped outside the probe cycle. Default 200 ms.
    pub gossip_period: Duration,
    /// To how many random members each periodic gossip goes. Default 3.
    pub gossip_fanout: NonZeroUsize,
    /// How often one random member is asked for its member list, so large clusters discover
    /// everyone. Default 30 s.
    pub announce_period: Duration,
    /// How often we announce to members we consider down, so that a healed partition merges
    /// back (both sides then rejoin with a renewed incarnation). Default 10 s.
    pub announce_to_down_period: Duration,
    /// To how many down members each of those announces goes. Default 2.
    pub announce_to_down_fanout: NonZeroUsize,
    /// While not connected to any member, how often we announce to the seeds and to
    /// `num_indirect_probes` known members. Default 1 s.
    pub reconnect_period: Duration,
    /// How long a member declared down stays in the view as `Dead`. Default 30 s.
    pub dead_retention: Duration,
    /// How long a member that went down after announcing a restart (metadata state
    /// `Restarting`) stays in the view as `Restarting`, keeping its ranges, before it counts
    /// as `Dead`. Default 60 s.
    pub restart_grace: Duration,
    /// How long foca remembers a down member (and keeps announcing to it, see
    /// `announce_to_down_period`). Default 24 h; a partition longer than this heals through the
    /// seeds, which every node announces to every `announce_period`.
    pub remove_down_after: Duration,
    /// The largest datagram sent or accepted, frame header and encryption overhead included
    /// (foca builds packets of at most this minus the frame header and
    /// [`SEAL_OVERHEAD`](super::SEAL_OVERHEAD), whether gossip is encrypted or not). Default
    /// 1400 (fits the usual 1500-byte MTU without fragmentation). Between [`MIN_PACKET_SIZE`]
    /// and [`MAX_PACKET_SIZE`].
    pub max_packet_size: NonZeroUsize,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            num_indirect_probes: NonZeroUsize::new(3).unwrap(),
            suspect_to_down_after: Duration::from_secs(1),
            suspect_to_down_max: Duration::from_secs(6),
            local_health_max: 8,
            max_transmissions: NonZeroU8::new(6).unwrap(),
            gossip_period: Duration::from_millis(200),
            gossip_fanout: NonZeroUsize::new(3).unwrap(),
            announce_period: Duration::from_secs(30),
            announce_to_down_period: Duration::from_secs(10),
            announce_to_down_fanout: NonZeroUsize::new(2).unwrap(),
            reconnect_period: Duration::from_secs(1),
            dead_retention: Duration::from_secs(30),
            restart_grace: Duration::from_secs(60),
            remove_down_after: Duration::from_secs(24 * 60 * 60),
            max_packet_size: NonZeroUsize::new(1400).unwrap(),
        }
    }
}

impl MembershipConfig {
    /// Short timings for tests: probe every 100 ms, suspicion 300 ms (1.8 s unconfirmed), dead
    /// entries kept 1 s.
    pub fn for_test() -> Self {
        Self {
            probe_period: Duration::from_millis(100),
            probe_rtt: Duration::from_millis(40),
            suspect_to_down_after: Duration::from_millis(300),
            suspect_to_down_max: Duration::from_millis(1800),
            gossip_period: Duration::from_millis(30),
            announce_period: Duration::from_secs(1),
            announce_to_down_period: Duration::from_millis(200),
            reconnect_period: Duration::from_millis(100),
            dead_retention: Duration::from_secs(1),
            remove_down_after: Duration::from_secs(3600),
            ..Self::default()
        }
    }

    /// Checks the constraints documented on each field; names the first field that breaks one.
    pub fn validate(&self) -> Result<(), MembershipError> {
        let invalid = |field: &'static str, reason: &'static str| {
            Err(MembershipError::InvalidConfig { field, reason })
        };
        let durations = [
            ("probe_period", self.probe_period),
            ("probe_rtt", self.probe_rtt),
            ("suspect_to_down_after", self.suspect_to_down_after),
            ("suspect_to_down_max", self.suspect_to_down_max),
            ("gossip_period", self.gossip_period),
            ("announce_period", self.announce_period),
            ("announce_to_down_period", self.announce_to_down_period),
            ("reconnect_period", self.reconnect_period),
            ("remove_down_after", self.remove_down_after),
        ];
        if let Some((field, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return invalid(field, "must not be zero");
        }
        if self.probe_rtt >= self.probe_period {
            return invalid("probe_rtt", "must be less than probe_period");
        }
        if self.suspect_to_down_max < self.suspect_to_down_after {
            return invalid(
                "suspect_to_down_max",
                "must be at least suspect_to_down_after",
            );
        }
        if !(1..=MAX_LOCAL_HEALTH).contains(&self.local_health_max) {
            return invalid("local_health_max", "must be between 1 and 32");
        }
        let size = self.max_packet_size.get();
        if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE).contains(&size) {
            return invalid("max_packet_size", "must be between 1200 and 65507");
        }
        Ok(())
    }

    /// foca's configuration: `new_lan` with every knob overridden from ours, and
    /// `notify_down_members` on (a healed partition depends on it).
    fn foca_config(&self) -> foca::Config {
        let mut config = foca::Config::new_lan(NonZeroU32::MIN);
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.num_indirect_probes = self.num_indirect_probes;
        config.max_transmissions = self.max_transmissions;
        // Never used as is: the core holds every ChangeSuspectToDown timer foca asks for and
        // hands it back when the (shrinking) suspicion timeout runs out.
        config.suspect_to_down_after = self.suspect_to_down_max;
        config.remove_down_after = Some(self.remove_down_after);
        config.max_packet_size =
            NonZeroUsize::new(self.max_packet_size.get() - FRAME_HEADER_LEN - SEAL_OVERHEAD)
                .expect("validated: max_packet_size >= MIN_PACKET_SIZE");
        config.notify_down_members = true;
        config.periodic_announce = Some(PeriodicParams {
            frequency: self.announce_period,
            num_members: NonZeroUsize::MIN,
        });
        config.periodic_announce_to_down_members = Some(PeriodicParams {
            frequency: self.announce_to_down_period,
            num_members: self.announce_to_down_fanout,
        });
        config.periodic_gossip = Some(PeriodicParams {
            frequency: self.gossip_period,
            num_members: self.gossip_fanout,
        });
        config
    }
}

/// Membership cannot start; nothing was created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// A config field breaks its documented constraint.
    #[error("invalid membership config: {field} {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The initial metadata is invalid.
    #[error("invalid node metadata: {0}")]
    Meta(#[from] MetaError),
}

/// A timer the caller must hand back through [`Membership::handle_timer`] after the delay it
/// was drained with. Every timer must be delivered (late is fine, lost is not); stale ones are
/// recognised and ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// foca's own timers (probes, suspicion, periodic gossip and announces).
    Swim(foca::Timer<NodeIdentity>),
    /// Announce to the seeds and some known members if we are not connected; `token` names the
    /// `join` it belongs to.
    Reconnect {
        /// Only the timer of the latest `join` is live.
        token: u64,
    },
    /// A dead member may have outlived `dead_retention`: refresh the view.
    ExpireDead,
    /// A suspicion we hold about `node_id` may have run out (Lifeguard; ignored unless its
    /// current deadline has passed).
    SuspicionDue {
        /// The suspect.
        node_id: NodeId,
    },
}

/// foca's runtime: collects what foca asks for, framing datagrams on the way.
#[derive(Debug)]
struct Outbox {
    packets: Vec<(SocketAddr, Bytes)>,
    timers: Vec<(Duration, Timer)>,
    notifications: VecDeque<OwnedNotification<NodeIdentity>>,
    /// foca's `ChangeSuspectToDown` timers: foca asks for one after each failed probe; the
    /// core decides when to hand it back (Lifeguard's suspicion timeout).
    suspicions: Vec<foca::Timer<NodeIdentity>>,
    /// The local health multiplier: foca's probe timers are stretched by it.
    probe_scale: u32,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            packets: Vec::new(),
            timers: Vec::new(),
            notifications: VecDeque::new(),
            suspicions: Vec::new(),
            probe_scale: 1,
        }
    }
}

impl Outbox {
    fn send(&mut self, to: SocketAddr, kind: FrameKind, body: &[u8]) {
        self.packets.push((to, frame(kind, body)));
    }
}

impl Runtime<NodeIdentity> for Outbox {
    fn notify(&mut self, notification: Notification<'_, NodeIdentity>) {
        self.notifications.push_back(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeIdentity, data: &[u8]) {
        let mut datagram = BytesMut::with_capacity(FRAME_HEADER_LEN + data.len());
        datagram.put_slice(&frame_header(FrameKind::Swim));
        datagram.put_slice(data);
        self.packets.push((to.gossip_addr(), datagram.freeze()));
    }

    fn submit_after(&mut self, event: foca::Timer<NodeIdentity>, after: Duration) {
        match event {
            foca::Timer::ChangeSuspectToDown { .. } => self.suspicions.push(event),
            foca::Timer::ProbeRandomMember(_) | foca::Timer::SendIndirectProbe { .. } => {
                self.timers
                    .push((after * self.probe_scale, Timer::Swim(event)));
            }
            _ => self.timers.push((after, Timer::Swim(event))),
        }
    }
}

type Swim = Foca<NodeIdentity, GossipCodec, StdRng, MetaBroadcasts>;

/// A suspicion this node holds because its own probe failed (Lifeguard): foca's timer that
/// declares the member down, held until the timeout, which shrinks as others confirm.
#[derive(Debug, Clone)]
struct Suspicion {
    identity: NodeIdentity,
    incarnation: foca::Incarnation,
    started: Duration,
    /// Other members that suspect it too (at this incarnation).
    confirmers: BTreeSet<NodeId>,
    deadline: Duration,
    foca_timer: foca::Timer<NodeIdentity>,
}

/// Other members' accusations of one member at one incarnation.
#[derive(Debug, Clone)]
struct Accusation {
    accusers: BTreeSet<NodeId>,
    first_heard: Duration,
}

/// When a member was first seen down, for `dead_retention`.
#[derive(Debug, Clone, Copy)]
struct DownSince {
    incarnation: u64,
    since: Duration,
}

/// One node's membership: foca, our metadata, the metadata of others and the resulting view.
/// See the module docs.
#[derive(Debug)]
pub struct Membership {
    config: MembershipConfig,
    swim: Swim,
    outbox: Outbox,
    metas: Arc<Mutex<MetaTable>>,
    own_meta: NodeMeta,
    meta_version: u64,
    seeds: Vec<SocketAddr>,
    seed_token: u64,
    /// Whether foca is connected (it said `Active` last, not `Idle`, `Defunct` or `Rejoin`).
    connected: bool,
    /// Where the next reconnect announce starts in the list of known members.
    reconnect_cursor: usize,
    /// When the seeds are next announced to while connected (see `Timer::Reconnect`).
    next_seed_announce: Duration,
    down_since: BTreeMap<NodeId, DownSince>,
    /// Members that went down announcing a restart: their identity then and when they were
    /// first seen down. While within `restart_grace` they stay in the view as Restarting even
    /// when foca holds no entry for them (between dropping the old incarnation and taking in
    /// the new one), until they are back with their new metadata.
    restarting: BTreeMap<NodeId, (NodeIdentity, Duration)>,
    suspect_notices: BTreeMap<NodeId, Duration>,
    meta_requests: BTreeMap<NodeId, Duration>,
    left: bool,
    view: Vec<Member>,
    generation: u64,
    /// Other members foca holds that are not down: where each lives (the impostor rule).
    live: BTreeMap<NodeId, SocketAddr>,
    /// Datagrams refused whole or in part under the impostor rule.
    impostor_refusals: u64,
    /// Impostor claims already logged.
    impostors_logged: BTreeSet<(NodeId, SocketAddr)>,
    /// Live members left out of the view because their settings differ from ours.
    refused: Vec<RefusedMember>,
    /// Grows by one every time `refused` changes.
    refused_generation: u64,
    /// Suspicions from our own failed probes, by suspect (Lifeguard).
    suspicions: BTreeMap<NodeId, Suspicion>,
    /// Accusations heard from others, by (suspect, incarnation).
    accusations: BTreeMap<(NodeId, foca::Incarnation), Accusation>,
    /// The local health score, 0..local_health_max (the probe multiplier is this + 1).
    local_health: u32,
    /// Members that answered a direct ping since the current probe started.
    direct_acks: BTreeSet<NodeId>,
    /// The highest incarnation at which we were told we are suspect (each refute counts once
    /// against our local health).
    refuted_up_to: Option<foca::Incarnation>,
    /// Members declared down after a suspicion we held ran out (a counter for tests and stats).
    declared_down: u64,
}

/// A live member left out of this node's view because the settings that decide placement
/// (R, vnodes, the placement version) differ from this node's: it would place keys
/// differently, so it is never admitted to the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedMember {
    /// Its node id.
    pub node_id: String,
    /// Its gossip address.
    pub gossip_addr: String,
    /// The state it announces (an `Active` one means a cluster runs with other settings).
    pub state: NodeState,
    /// What differs ("replication_factor 2, this node's 3").
    pub reason: String,
}

impl Membership {
    /// A node that knows only itself, seeded with `rng_seed` (log it: the same seed and the same
    /// inputs give the same outputs). Join a cluster with [`Membership::join`].
    pub fn new(
        config: MembershipConfig,
        identity: NodeIdentity,
        meta: NodeMeta,
        rng_seed: u64,
    ) -> Result<Self, MembershipError> {
        config.validate()?;
        meta.validate()?;
        let node_id = identity.node_id().clone();
        let metas = Arc::new(Mutex::new(MetaTable::new(node_id.clone())));
        let swim = Foca::with_custom_broadcast(
            identity,
            config.foca_config(),
            StdRng::seed_from_u64(rng_seed),
            GossipCodec::new(node_id),
            MetaBroadcasts::new(Arc::clone(&metas)),
        );
        let mut membership = Self {
            config,
            swim,
            outbox: Outbox::default(),
            metas,
            own_meta: meta,
            meta_version: 1,
            seeds: Vec::new(),
            seed_token: 0,
            connected: false,
            reconnect_cursor: 0,
            next_seed_announce: Duration::ZERO,
            down_since: BTreeMap::new(),
            restarting: BTreeMap::new(),
            suspect_notices: BTreeMap::new(),
            meta_requests: BTreeMap::new(),
            left: false,
            view: Vec::new(),
            generation: 0,
            live: BTreeMap::new(),
            impostor_refusals: 0,
            impostors_logged: BTreeSet::new(),
            refused: Vec::new(),
            refused_generation: 0,
            suspicions: BTreeMap::new(),
            accusations: BTreeMap::new(),
            local_health: 0,
            direct_acks: BTreeSet::new(),
            refuted_up_to: None,
            declared_down: 0,
        };
        membership.broadcast_own_meta();
        membership.refresh_view(Duration::ZERO);
        Ok(membership)
    }

    /// Joins through `seeds` (gossip addresses; our own is skipped): announces to each now and
    /// again every `reconnect_period` for as long as we are not connected (also later, should
    /// every other member go away). Replaces the seeds of an earlier call.
    pub fn join(&mut self, now: Duration, seeds: Vec<SocketAddr>) {
        let own_addr = self.swim.identity().gossip_addr();
        self.seeds = seeds.into_iter().filter(|seed| *seed != own_addr).collect();
        self.seed_token += 1;
        self.announce_to_seeds();
        self.outbox.timers.push((
            self.config.reconnect_period,
            Timer::Reconnect {
                token: self.seed_token,
            },
        ));
        self.settle(now);
    }

    /// Announces to one gossip address (a seed or any member): it answers with members it knows.
    pub fn announce(&mut self, now: Duration, addr: SocketAddr) {
        self.announce_to(addr);
        self.settle(now);
    }

    /// Feeds one received datagram. `Err` says why it was dropped (for the caller's counters);
    /// a foca packet may have been applied up to a malformed part.
    pub fn handle_data(&mut self, now: Duration, datagram: &[u8]) -> Result<(), DropReason> {
        let result = self.receive(now, datagram);
        self.settle(now);
        result
    }

    /// Feeds a timer that came due.
    pub fn handle_timer(&mut self, now: Duration, timer: Timer) {
        match timer {
            Timer::Swim(timer) => {
                match &timer {
                    foca::Timer::ProbeRandomMember(_) => self.direct_acks.clear(),
                    foca::Timer::SendIndirectProbe { probed_id, .. }
                        if self.direct_acks.contains(probed_id.node_id()) =>
                    {
                        // The direct probe succeeded: we are probably healthy.
                        self.adjust_local_health(-1);
                    }
                    _ => {}
                }
                if let Err(error) = self.swim.handle_timer(timer, &mut self.outbox) {
                    tracing::debug!(%error, "gossip timer");
                }
            }
            Timer::SuspicionDue { node_id } => self.suspicion_due(now, &node_id),
            Timer::Reconnect { token } => {
                if token == self.seed_token && !self.left {
                    if !self.connected {
                        self.reconnect();
                    } else if now >= self.next_seed_announce {
                        // Connected is not joined to everyone: two groups that formed apart (the
                        // seed started last, or a split outlived `remove_down_after`) each look
                        // connected and would never look for the other. The seeds hear from us
                        // every `announce_period`, which merges such groups.
                        self.announce_to_seeds();
                    }
                    if now >= self.next_seed_announce {
                        // Metadata spreads by piggybacked broadcasts, a limited number of times:
                        // a member that missed every copy of a change (Joining → Active) would
                        // keep the old one for good. Spreading ours again every
                        // `announce_period` bounds that; members that have it do not pass it on.
                        self.broadcast_own_meta();
                        self.next_seed_announce = now + self.config.announce_period;
                    }
                    self.outbox
                        .timers
                        .push((self.config.reconnect_period, timer));
                }
            }
            Timer::ExpireDead => {}
        }
        self.settle(now);
    }

    /// Announces new metadata for this node; it replaces the previous one everywhere.
    pub fn set_meta(&mut self, now: Duration, meta: NodeMeta) -> Result<(), MetaError> {
        meta.validate()?;
        self.own_meta = meta;
        self.meta_version += 1;
        self.broadcast_own_meta();
        // Send it now rather than at the next probe or gossip.
        if let Err(error) = self.swim.broadcast(&mut self.outbox) {
            tracing::debug!(%error, "metadata broadcast");
        }
        self.settle(now);
        Ok(())
    }

    /// Leaves the cluster: tells a few members we are down (they spread it) and stops taking
    /// part. Drain the packets and send them before dropping this. Cannot be undone.
    pub fn leave(&mut self, now: Duration) {
        if self.left {
            return;
        }
        self.left = true;
        // A node that announced Leaving (a drain, a graceful stop) or Restarting (a quick
        // restart) tells every live member directly, just before it goes: its broadcast may not
        // have spread yet, and a member that sees it go down without it would count it as
        // failed, not left (or not restarting).
        if matches!(
            self.own_meta.state,
            MetaState::Leaving | MetaState::Restarting
        ) {
            let live: Vec<SocketAddr> = self.live.values().copied().collect();
            for addr in live {
                self.push_own_meta(addr);
            }
        }
        if let Err(error) = self.swim.leave_cluster(&mut self.outbox) {
            tracing::warn!(%error, "leaving the cluster");
        }
        self.settle(now);
    }

    /// Datagrams to send, in order; the caller sends each and drops it on error.
    pub fn take_packets(&mut self) -> Vec<(SocketAddr, Bytes)> {
        std::mem::take(&mut self.outbox.packets)
    }

    /// Timers to schedule: hand each back to [`Membership::handle_timer`] after its delay.
    pub fn take_timers(&mut self) -> Vec<(Duration, Timer)> {
        std::mem::take(&mut self.outbox.timers)
    }

    /// The member view, sorted by node id, ourselves included (as `Dead` after
    /// [`Membership::leave`]). See the module docs for which members are in it.
    pub fn members(&self) -> &[Member] {
        &self.view
    }

    /// Grows by one every time [`Membership::members`] changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Live members refused for their settings, sorted by node id (see [`RefusedMember`]).
    pub fn refused(&self) -> &[RefusedMember] {
        &self.refused
    }

    /// Grows by one every time [`Membership::refused`] changes.
    pub fn refused_generation(&self) -> u64 {
        self.refused_generation
    }

    /// Our current identity (its incarnation grows when foca rejoins by itself).
    pub fn identity(&self) -> &NodeIdentity {
        self.swim.identity()
    }

    /// Our current metadata.
    pub fn meta(&self) -> &NodeMeta {
        &self.own_meta
    }

    /// How many other members foca considers alive or suspect (with or without metadata).
    pub fn num_other_members(&self) -> usize {
        self.swim.num_members()
    }

    /// Whether [`Membership::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// The configuration in use.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Datagrams refused, whole or in part, under the impostor rule (see the module docs).
    pub fn impostor_refusals(&self) -> u64 {
        self.impostor_refusals
    }

    /// The local health score (0 = healthy): probes are stretched by this + 1 (see
    /// [`MembershipConfig::local_health_max`]).
    pub fn local_health(&self) -> u32 {
        self.local_health
    }

    /// Members this node declared down when a suspicion it held ran out (counter).
    pub fn declared_down(&self) -> u64 {
        self.declared_down
    }

    /// The suspicion timeout for a suspicion with `confirmations` independent confirmations
    /// while foca holds `members` members (ourselves included): memberlist's formula, from
    /// `suspect_to_down_max` with none down to `suspect_to_down_after` with
    /// [`SUSPICION_CONFIRMATIONS`] (fewer in clusters of fewer than four), both scaled by
    /// max(1, log10(members)).
    pub fn suspicion_timeout(&self, members: usize, confirmations: usize) -> Duration {
        let scale = (members.max(1) as f64).log10().max(1.0);
        let min = self.config.suspect_to_down_after.as_secs_f64() * scale;
        let max = self.config.suspect_to_down_max.as_secs_f64() * scale;
        let expected = SUSPICION_CONFIRMATIONS.min(members.saturating_sub(2));
        if expected == 0 {
            return Duration::from_secs_f64(min);
        }
        let confirmations = confirmations.min(expected) as f64;
        let fraction = (confirmations + 1.0).ln() / (expected as f64 + 1.0).ln();
        Duration::from_secs_f64((max - (max - min) * fraction).max(min))
    }

    /// foca's incarnation (its refutation counter) of the member `node_id`, as we hold it.
    #[cfg(test)]
    pub(crate) fn foca_incarnation_of(&self, node_id: &str) -> Option<foca::Incarnation> {
        self.swim
            .iter_membership_state()
            .find(|m| m.id().node_id().as_str() == node_id)
            .map(|member| member.incarnation())
    }

    /// How many members we heard accuse `node_id` of being down at foca incarnation
    /// `suspected_at`.
    #[cfg(test)]
    pub(crate) fn accusers_of(&self, node_id: &str, suspected_at: foca::Incarnation) -> usize {
        let key = (NodeId::new(node_id).unwrap(), suspected_at);
        self.accusations
            .get(&key)
            .map_or(0, |heard| heard.accusers.len())
    }

    /// Forgets the metadata we hold for `node_id`, as if it had never arrived.
    #[cfg(test)]
    pub(crate) fn forget_meta_for_test(&mut self, node_id: &str, now: Duration) {
        let node_id = NodeId::new(node_id).unwrap();
        self.metas.lock().forget(&node_id, u64::MAX);
        self.settle(now);
    }

    fn receive(&mut self, now: Duration, datagram: &[u8]) -> Result<(), DropReason> {
        let (kind, body) = codec::split_frame(datagram, self.config.max_packet_size.get())?;
        match kind {
            FrameKind::Swim => {
                let screened = self.screen_swim(body)?;
                self.handle_swim(screened.as_deref().unwrap_or(body))
            }
            FrameKind::MetaPush => {
                let record = codec::decode_meta_record(body).map_err(|error| {
                    tracing::debug!(%error, "metadata push");
                    DropReason::Malformed
                })?;
                self.metas.lock().offer(record);
                Ok(())
            }
            FrameKind::MetaRequest => {
                let reply_to = codec::decode_meta_request(body).map_err(|error| {
                    tracing::debug!(%error, "metadata request");
                    DropReason::Malformed
                })?;
                if !self.left {
                    self.push_own_meta(reply_to);
                }
                Ok(())
            }
            FrameKind::SuspectNotice => {
                let notice = codec::decode_suspect_notice(body).map_err(|error| {
                    tracing::debug!(%error, "suspicion notice");
                    DropReason::Malformed
                })?;
                self.refute(&notice);
                Ok(())
            }
            FrameKind::Confirm => {
                let confirm = codec::decode_confirm(body).map_err(|error| {
                    tracing::debug!(%error, "suspicion confirmation");
                    DropReason::Malformed
                })?;
                self.on_confirm(now, confirm);
                Ok(())
            }
        }
    }

    /// Whether `claim` is a node id claimed from a second gossip address (the impostor rule).
    fn is_impostor(&self, claim: &NodeIdentity) -> bool {
        let own = self.swim.identity();
        if claim.node_id() == own.node_id() {
            return claim.gossip_addr() != own.gossip_addr();
        }
        self.live
            .get(claim.node_id())
            .is_some_and(|addr| *addr != claim.gossip_addr())
    }

    fn log_impostor(&mut self, claim: &NodeIdentity) {
        let key = (claim.node_id().clone(), claim.gossip_addr());
        if self.impostors_logged.contains(&key) {
            return;
        }
        if self.impostors_logged.len() >= MAX_IMPOSTORS_LOGGED {
            self.impostors_logged.clear();
        }
        self.impostors_logged.insert(key);
        if claim.node_id() == self.swim.identity().node_id() {
            tracing::warn!(
                claimed_from = %claim.gossip_addr(),
                "another process claims this node's id from another gossip address; ignoring it (two nodes configured with the same node id?)"
            );
        } else {
            tracing::warn!(
                member = %claim.node_id(),
                claimed_from = %claim.gossip_addr(),
                live_at = self.live.get(claim.node_id()).map(tracing::field::display),
                "a second gossip address claims the node id of a live member; ignoring it until that member is down"
            );
        }
    }

    /// Applies the impostor rule to a foca packet before foca sees it: `Err` if its sender is an
    /// impostor; `Ok(Some(packet))` with the impostor updates cut out; `Ok(None)` to hand the
    /// packet over unchanged (nothing to cut, or undecodable: foca reports it).
    fn screen_swim(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, DropReason> {
        let mut codec = GossipCodec::new(self.swim.identity().node_id().clone());
        let mut cursor = body;
        let Ok(header) = codec.decode_header(&mut cursor) else {
            return Ok(None);
        };
        if self.is_impostor(&header.src) {
            self.impostor_refusals += 1;
            self.log_impostor(&header.src);
            return Err(DropReason::Impostor);
        }
        if matches!(header.message, Message::Ack(_)) {
            self.direct_acks.insert(header.src.node_id().clone());
        }
        let header_len = body.len() - cursor.len();
        // foca's layout after the header: a u16 count of member updates, the updates, then
        // custom broadcasts (none of that for a Broadcast message).
        let [high, low, rest @ ..] = cursor else {
            return Ok(None);
        };
        if header.message == Message::Broadcast {
            return Ok(None);
        }
        let count = u16::from_be_bytes([*high, *low]);
        cursor = rest;
        let mut kept: Vec<&[u8]> = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..count {
            let before = cursor;
            let Ok(member) = codec.decode_member(&mut cursor) else {
                return Ok(None);
            };
            if member.state() == State::Suspect && member.id() == self.swim.identity() {
                self.note_refute(member.incarnation());
            }
            if self.is_impostor(member.id()) {
                refused.push(member.id().clone());
            } else {
                kept.push(&before[..before.len() - cursor.len()]);
            }
        }
        if refused.is_empty() {
            return Ok(None);
        }
        self.impostor_refusals += 1;
        for claim in &refused {
            self.log_impostor(claim);
        }
        let mut packet = Vec::with_capacity(body.len());
        packet.extend_from_slice(&body[..header_len]);
        // Fewer than `count`, so it fits.
        packet.extend_from_slice(&(kept.len() as u16).to_be_bytes());
        for update in kept {
            packet.extend_from_slice(update);
        }
        packet.extend_from_slice(cursor);
        Ok(Some(packet))
    }

    fn handle_swim(&mut self, body: &[u8]) -> Result<(), DropReason> {
        match self.swim.handle_data(body, &mut self.outbox) {
            Ok(()) => Ok(()),
            Err(
                foca::Error::Decode(_)
                | foca::Error::MalformedPacket
                | foca::Error::CustomBroadcast(_)
                | foca::Error::DataTooBig,
            ) => Err(DropReason::Malformed),
            Err(error) => {
                // Not the sender's fault: our own packet looped back, a probe race...
                tracing::trace!(%error, "gossip packet");
                Ok(())
            }
        }
    }

    /// Feeds foca the suspicion about ourselves: it raises its incarnation and gossips, which
    /// refutes it. Notices about another run of this node id are ignored.
    fn refute(&mut self, notice: &SuspectNotice) {
        let identity = self.swim.identity().clone();
        if self.left
            || notice.node_id != *identity.node_id()
            || notice.incarnation != identity.incarnation()
        {
            return;
        }
        self.note_refute(notice.suspected_at);
        let suspicion = foca::Member::new(identity, notice.suspected_at, State::Suspect);
        if let Err(error) = self
            .swim
            .apply_many(std::iter::once(suspicion), true, &mut self.outbox)
        {
            tracing::debug!(%error, "refuting a suspicion");
        }
    }

    fn announce_to(&mut self, addr: SocketAddr) {
        if let Err(error) = self
            .swim
            .announce(NodeIdentity::seed_placeholder(addr), &mut self.outbox)
        {
            tracing::debug!(%error, %addr, "announce");
        }
    }

    fn announce_to_seeds(&mut self) {
        for seed in self.seeds.clone() {
            self.announce_to(seed);
        }
    }

    /// Announces to the seeds and to the next `num_indirect_probes` known members, by address
    /// (whatever identity now answers there).
    fn reconnect(&mut self) {
        self.announce_to_seeds();
        let own = self.swim.identity().node_id().clone();
        let known: Vec<SocketAddr> = self
            .swim
            .iter_membership_state()
            .filter(|member| member.id().node_id() != &own)
            .map(|member| member.id().gossip_addr())
            .filter(|addr| !self.seeds.contains(addr))
            .collect();
        if known.is_empty() {
            return;
        }
        let count = self.config.num_indirect_probes.get().min(known.len());
        for offset in 0..count {
            self.announce_to(known[(self.reconnect_cursor + offset) % known.len()]);
        }
        self.reconnect_cursor = (self.reconnect_cursor + count) % known.len();
    }

    fn own_record(&self) -> MetaRecord {
        let identity = self.swim.identity();
        MetaRecord {
            node_id: identity.node_id().clone(),
            incarnation: identity.incarnation(),
            meta_version: self.meta_version,
            meta: self.own_meta.clone(),
        }
    }

    /// Puts our current metadata in foca's broadcast backlog (replacing older versions).
    fn broadcast_own_meta(&mut self) {
        let result = codec::encode_meta_record(&self.own_record())
            .map_err(|error| error.to_string())
            .and_then(|bytes| {
                self.swim
                    .add_broadcast(&bytes)
                    .map_err(|error| error.to_string())
            });
        if let Err(error) = result {
            tracing::warn!(%error, "cannot broadcast our metadata");
        }
    }

    fn push_own_meta(&mut self, to: SocketAddr) {
        match codec::encode_meta_record(&self.own_record()) {
            Ok(body) => self.outbox.send(to, FrameKind::MetaPush, &body),
            Err(error) => tracing::warn!(%error, "cannot push our metadata"),
        }
    }

    /// After every input: react to foca's notifications, send due suspicion notices, refresh
    /// the view.
    fn settle(&mut self, now: Duration) {
        while let Some(notification) = self.outbox.notifications.pop_front() {
            self.on_notification(notification);
        }
        self.take_suspicions(now);
        self.send_suspect_notices(now);
        let without_meta = self.refresh_view(now);
        self.request_missing_meta(now, without_meta);
    }

    fn on_notification(&mut self, notification: OwnedNotification<NodeIdentity>) {
        match notification {
            OwnedNotification::MemberUp(member) => {
                tracing::debug!(%member, "member up");
                if !self.left {
                    self.push_own_meta(member.gossip_addr());
                }
            }
            OwnedNotification::Rename(before, after) => {
                tracing::debug!(%before, %after, "member renamed");
                let alive = self.swim.iter_members().any(|m| m.id() == &after);
                if alive && !self.left {
                    self.push_own_meta(after.gossip_addr());
                }
            }
            OwnedNotification::MemberDown(member) => tracing::debug!(%member, "member down"),
            OwnedNotification::Rejoin(identity) => {
                // Our metadata belongs to an incarnation: announce it under the new one.
                tracing::info!(
                    incarnation = identity.incarnation(),
                    "node rejoined after the cluster declared it down"
                );
                self.connected = false;
                self.broadcast_own_meta();
            }
            OwnedNotification::Defunct => {
                self.connected = false;
                if !self.left {
                    tracing::warn!("declared down by the cluster and cannot rejoin");
                }
            }
            OwnedNotification::Active => {
                tracing::debug!("connected to the cluster");
                self.connected = true;
            }
            OwnedNotification::Idle => {
                tracing::debug!("no other member is alive");
                self.connected = false;
            }
        }
    }

    fn send_suspect_notices(&mut self, now: Duration) {
        let mut suspects = Vec::new();
        for member in self.swim.iter_membership_state() {
            if member.state() == State::Suspect {
                suspects.push((member.id().clone(), member.incarnation()));
            }
        }
        self.suspect_notices
            .retain(|node_id, _| suspects.iter().any(|(id, _)| id.node_id() == node_id));
        if self.left {
            return;
        }
        for (suspect, suspected_at) in suspects {
            let due = self
                .suspect_notices
                .get(suspect.node_id())
                .is_none_or(|sent| now.saturating_sub(*sent) >= self.config.probe_period);
            if !due {
                continue;
            }
            self.suspect_notices.insert(suspect.node_id().clone(), now);
            let notice = SuspectNotice {
                node_id: suspect.node_id().clone(),
                incarnation: suspect.incarnation(),
                suspected_at,
            };
            match codec::encode_suspect_notice(&notice) {
                Ok(body) => {
                    self.outbox
                        .send(suspect.gossip_addr(), FrameKind::SuspectNotice, &body);
                }
                Err(error) => tracing::warn!(%error, "cannot encode a suspicion notice"),
            }
        }
    }

    /// Asks members that have been alive without metadata for a probe period for it, then
    /// again every probe period.
    fn request_missing_meta(&mut self, now: Duration, without_meta: Vec<NodeIdentity>) {
        self.meta_requests
            .retain(|node_id, _| without_meta.iter().any(|id| id.node_id() == node_id));
        if self.left {
            return;
        }
        let period = self.config.probe_period;
        for member in without_meta {
            let due = *self
                .meta_requests
                .entry(member.node_id().clone())
                .or_insert(now + period);
            if now < due {
                continue;
            }
            self.meta_requests
                .insert(member.node_id().clone(), now + period);
            match codec::encode_meta_request(self.swim.identity().gossip_addr()) {
                Ok(body) => {
                    self.outbox
                        .send(member.gossip_addr(), FrameKind::MetaRequest, &body);
                }
                Err(error) => tracing::warn!(%error, "cannot encode a metadata request"),
            }
        }
    }

    /// Rebuilds the view; returns the live members whose metadata is missing.
    fn refresh_view(&mut self, now: Duration) -> Vec<NodeIdentity> {
        let identity = self.swim.identity().clone();
        let mut view = vec![member_of(
            &identity,
            &self.own_meta,
            if self.left {
                NodeState::Left
            } else {
                self.own_meta.state.into()
            },
        )];

        let mut expired = Vec::new();
        let mut without_meta = Vec::new();
        let mut refused = Vec::new();
        let mut live = BTreeMap::new();
        let mut pinned = BTreeMap::new();
        {
            let mut metas = self.metas.lock();
            let mut still_down = BTreeMap::new();
            let mut seen = BTreeSet::new();
            for member in self.swim.iter_membership_state() {
                let id = member.id();
                // foca may hold an earlier run of ourselves, as down.
                if id.node_id() == identity.node_id() {
                    continue;
                }
                seen.insert(id.node_id().clone());
                if member.state() != State::Down {
                    live.insert(id.node_id().clone(), id.gossip_addr());
                    pinned.insert(id.node_id().clone(), id.incarnation());
                }
                let state = match member.state() {
                    State::Alive => None,
                    State::Suspect => Some(NodeState::Suspect),
                    State::Down => {
                        // A member that went down announcing a restart keeps its ranges for
                        // the restart grace, then counts as dead like any other.
                        // (Its record may already be the next incarnation's, which can arrive
                        // before foca hears of that incarnation: what it announced when it went
                        // down is remembered in `restarting`.)
                        let restarting = metas
                            .get(id)
                            .is_some_and(|meta| meta.state == MetaState::Restarting)
                            || self
                                .restarting
                                .get(id.node_id())
                                .is_some_and(|(known, _)| known.incarnation() == id.incarnation());
                        let grace = if restarting {
                            self.config.restart_grace
                        } else {
                            Duration::ZERO
                        };
                        let down = match self.down_since.get(id.node_id()) {
                            Some(down) if down.incarnation == id.incarnation() => *down,
                            _ => {
                                if restarting {
                                    self.outbox.timers.push((grace, Timer::ExpireDead));
                                }
                                self.outbox
                                    .timers
                                    .push((grace + self.config.dead_retention, Timer::ExpireDead));
                                DownSince {
                                    incarnation: id.incarnation(),
                                    since: now,
                                }
                            }
                        };
                        still_down.insert(id.node_id().clone(), down);
                        if restarting {
                            self.restarting
                                .entry(id.node_id().clone())
                                .or_insert_with(|| (id.clone(), down.since));
                        }
                        let down_for = now.saturating_sub(down.since);
                        if down_for >= grace + self.config.dead_retention {
                            expired.push(id.clone());
                            continue;
                        }
                        if down_for < grace {
                            Some(NodeState::Restarting)
                        } else {
                            Some(NodeState::Dead)
                        }
                    }
                };
                if state.is_none() && metas.get(id).is_some() {
                    // Alive with the metadata of its incarnation: back (or never gone).
                    self.restarting.remove(id.node_id());
                }
                if state == Some(NodeState::Dead) {
                    self.restarting.remove(id.node_id());
                }
                match metas.get(id) {
                    Some(meta) => {
                        let state = match state {
                            // Down after announcing it was leaving: drained, gone on purpose.
                            Some(NodeState::Dead) if meta.state == MetaState::Leaving => {
                                NodeState::Left
                            }
                            state => state.unwrap_or(meta.state.into()),
                        };
                        match self.own_meta.settings.difference(&meta.settings) {
                            None => view.push(member_of(id, meta, state)),
                            Some(reason) if !state.is_gone() => {
                                refused.push(RefusedMember {
                                    node_id: id.node_id().as_str().to_owned(),
                                    gossip_addr: id.gossip_addr().to_string(),
                                    state,
                                    reason,
                                });
                            }
                            Some(_) => {}
                        }
                    }
                    None if state != Some(NodeState::Dead) => {
                        // Back from a restart, its new metadata not here yet: it stays in the
                        // ring as Restarting (with the addresses it had) until the metadata
                        // arrives, so its ranges do not move for that round trip.
                        if let Some(meta) = metas
                            .latest(id.node_id())
                            .filter(|meta| meta.state == MetaState::Restarting)
                            && self.own_meta.settings.difference(&meta.settings).is_none()
                        {
                            view.push(member_of(id, meta, NodeState::Restarting));
                        }
                        without_meta.push(id.clone());
                    }
                    None => {}
                }
            }
            self.down_since = still_down;
            // Restarting members foca holds no entry for right now (it dropped the old
            // incarnation and has not taken in the new one yet) keep their place until the
            // grace ends.
            let grace = self.config.restart_grace;
            self.restarting.retain(|node_id, (id, since)| {
                if seen.contains(node_id) {
                    return true;
                }
                let Some(meta) = metas
                    .latest(node_id)
                    .filter(|meta| meta.state == MetaState::Restarting)
                else {
                    return false;
                };
                if now.saturating_sub(*since) >= grace {
                    return false;
                }
                if self.own_meta.settings.difference(&meta.settings).is_none() {
                    view.push(member_of(id, meta, NodeState::Restarting));
                }
                true
            });
            for id in &expired {
                metas.forget(id.node_id(), id.incarnation());
            }
            metas.pin(pinned);
        }
        self.live = live;
        self.note_refused(refused);

        view.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        if view != self.view {
            self.view = view;
            self.generation += 1;
        }
        without_meta
    }
}

impl Membership {
    /// Takes in the members refused by the latest view: logs each newly refused one (once per
    /// node id and reason) and each one no longer refused.
    fn note_refused(&mut self, mut refused: Vec<RefusedMember>) {
        refused.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let same =
            |a: &RefusedMember, b: &RefusedMember| a.node_id == b.node_id && a.reason == b.reason;
        for member in &refused {
            if !self.refused.iter().any(|old| same(old, member)) {
                tracing::warn!(
                    member = %member.node_id,
                    gossip_addr = %member.gossip_addr,
                    state = %member.state.as_str(),
                    reason = %member.reason,
                    "refusing a member whose placement settings differ from this node's; it is not admitted to the ring"
                );
            }
        }
        for old in &self.refused {
            if !refused.iter().any(|member| member.node_id == old.node_id) {
                tracing::info!(member = %old.node_id, "a member refused for its settings is gone");
            }
        }
        if refused != self.refused {
            self.refused = refused;
            self.refused_generation += 1;
        }
    }
}

/// Lifeguard around foca: local health and suspicions that shrink with confirmations (see the
/// module docs).
impl Membership {
    /// Moves the local health score by `delta` within 0..local_health_max and stretches foca's
    /// probe timers accordingly (from the next one on).
    fn adjust_local_health(&mut self, delta: i32) {
        let max = self.config.local_health_max.saturating_sub(1);
        let score = self.local_health.saturating_add_signed(delta).min(max);
        if score != self.local_health {
            tracing::debug!(
                from = self.local_health,
                to = score,
                "local health score changed"
            );
            self.local_health = score;
            self.outbox.probe_scale = score + 1;
        }
    }

    /// We are suspected at `incarnation`: a refute is due, which counts once per incarnation
    /// against our local health.
    fn note_refute(&mut self, incarnation: foca::Incarnation) {
        if self.left || self.refuted_up_to.is_some_and(|done| done >= incarnation) {
            return;
        }
        self.refuted_up_to = Some(incarnation);
        self.adjust_local_health(1);
    }

    /// Takes the suspicions foca started after our failed probes: holds each one's timer,
    /// counts the failure against our local health, and tells every other live member so their
    /// suspicions shrink.
    fn take_suspicions(&mut self, now: Duration) {
        for timer in std::mem::take(&mut self.outbox.suspicions) {
            let foca::Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } = &timer
            else {
                continue;
            };
            let (member_id, incarnation) = (member_id.clone(), *incarnation);
            self.adjust_local_health(1);
            if self.left {
                continue;
            }
            let node_id = member_id.node_id().clone();
            let same = self
                .suspicions
                .get(&node_id)
                .is_some_and(|held| held.identity == member_id && held.incarnation == incarnation);
            if same {
                // Another failed probe of the same suspect: keep when it started.
                if let Some(held) = self.suspicions.get_mut(&node_id) {
                    held.foca_timer = timer;
                }
            } else {
                let confirmers = self
                    .accusations
                    .get(&(node_id.clone(), incarnation))
                    .map(|heard| heard.accusers.clone())
                    .unwrap_or_default();
                tracing::debug!(
                    member = %member_id,
                    confirmations = confirmers.len(),
                    "our probe failed; suspecting the member"
                );
                self.suspicions.insert(
                    node_id.clone(),
                    Suspicion {
                        identity: member_id.clone(),
                        incarnation,
                        started: now,
                        confirmers,
                        deadline: Duration::MAX,
                        foca_timer: timer,
                    },
                );
                self.reschedule_suspicion(now, &node_id);
            }
            self.send_confirmations(&member_id, incarnation);
        }
    }

    /// Recomputes the deadline of our suspicion of `node_id` and asks for a timer at it when it
    /// moved.
    fn reschedule_suspicion(&mut self, now: Duration, node_id: &NodeId) {
        let members = self.swim.num_members() + 1;
        let Some(confirmations) = self.suspicions.get(node_id).map(|s| s.confirmers.len()) else {
            return;
        };
        let timeout = self.suspicion_timeout(members, confirmations);
        let Some(held) = self.suspicions.get_mut(node_id) else {
            return;
        };
        let deadline = held.started + timeout;
        if deadline != held.deadline {
            held.deadline = deadline;
            self.outbox.timers.push((
                deadline.saturating_sub(now),
                Timer::SuspicionDue {
                    node_id: node_id.clone(),
                },
            ));
        }
    }

    /// Tells every other live member (not the suspect) that we suspect `suspect`.
    fn send_confirmations(&mut self, suspect: &NodeIdentity, incarnation: foca::Incarnation) {
        let confirm = codec::SuspicionConfirm {
            suspect: SuspectNotice {
                node_id: suspect.node_id().clone(),
                incarnation: suspect.incarnation(),
                suspected_at: incarnation,
            },
            accuser: self.swim.identity().node_id().clone(),
        };
        let body = match codec::encode_confirm(&confirm) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(%error, "cannot encode a suspicion confirmation");
                return;
            }
        };
        let targets: Vec<SocketAddr> = self
            .live
            .iter()
            .filter(|(node_id, _)| *node_id != suspect.node_id())
            .map(|(_, addr)| *addr)
            .collect();
        for addr in targets {
            self.outbox.send(addr, FrameKind::Confirm, &body);
        }
    }

    /// Another member suspects `confirm.suspect`: remember it, and shrink our own suspicion of
    /// the same member and incarnation. A confirmation about ourselves is a suspicion notice.
    fn on_confirm(&mut self, now: Duration, confirm: codec::SuspicionConfirm) {
        // Only a member we hold as live can accuse, and never of itself: a confirmation from
        // anyone else (a stale or forged datagram) would otherwise grow the accuser sets without
        // bound, shorten a suspicion on its own, or make us refute for nothing.
        if confirm.accuser == confirm.suspect.node_id || !self.live.contains_key(&confirm.accuser) {
            return;
        }
        let own = self.swim.identity().node_id().clone();
        if confirm.suspect.node_id == own {
            self.refute(&confirm.suspect);
            return;
        }
        if confirm.accuser == own {
            return;
        }
        // Forget accusations older than any suspicion can last.
        let longest = self.suspicion_timeout(self.swim.num_members() + 1, 0);
        self.accusations
            .retain(|_, heard| now.saturating_sub(heard.first_heard) <= longest);
        let key = (
            confirm.suspect.node_id.clone(),
            confirm.suspect.suspected_at,
        );
        if !self.accusations.contains_key(&key) && self.accusations.len() >= MAX_ACCUSATIONS {
            let oldest = self
                .accusations
                .iter()
                .min_by_key(|(_, heard)| heard.first_heard)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.accusations.remove(&oldest);
            }
        }
        self.accusations
            .entry(key)
            .or_insert_with(|| Accusation {
                accusers: BTreeSet::new(),
                first_heard: now,
            })
            .accusers
            .insert(confirm.accuser.clone());
        let node_id = confirm.suspect.node_id;
        let confirmed = self.suspicions.get_mut(&node_id).is_some_and(|held| {
            held.identity.incarnation() == confirm.suspect.incarnation
                && held.incarnation == confirm.suspect.suspected_at
                && held.confirmers.insert(confirm.accuser)
        });
        if confirmed {
            self.reschedule_suspicion(now, &node_id);
        }
    }

    /// A suspicion timer came due: if the suspicion's current deadline has passed, hand foca
    /// its timer (foca declares the member down if it is still suspect at that incarnation).
    fn suspicion_due(&mut self, now: Duration, node_id: &NodeId) {
        let due = self
            .suspicions
            .get(node_id)
            .is_some_and(|held| held.deadline <= now);
        if !due {
            return;
        }
        let Some(held) = self.suspicions.remove(node_id) else {
            return;
        };
        let still_suspect = self.swim.iter_membership_state().any(|member| {
            member.id() == &held.identity
                && member.incarnation() == held.incarnation
                && member.state() == State::Suspect
        });
        if still_suspect {
            tracing::debug!(
                member = %held.identity,
                confirmations = held.confirmers.len(),
                after = ?now.saturating_sub(held.started),
                "suspicion ran out; declaring the member down"
            );
            self.declared_down += 1;
        }
        if let Err(error) = self.swim.handle_timer(held.foca_timer, &mut self.outbox) {
            tracing::debug!(%error, "suspicion timer");
        }
    }
}

fn member_of(identity: &NodeIdentity, meta: &NodeMeta, state: NodeState) -> Member {
    Member {
        node_id: identity.node_id().as_str().to_owned(),
        incarnation: identity.incarnation(),
        state,
        weight: meta.weight,
        grpc_addr: meta.grpc_addr.clone(),
        gossip_addr: identity.gossip_addr().to_string(),
        http_addr: meta.http_addr.clone(),
        cluster_addr: meta.cluster_addr.clone(),
        resp_addr: meta.resp_addr.clone(),
        zone: meta.zone.clone(),
    }
}
