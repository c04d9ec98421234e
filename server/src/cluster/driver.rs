//! The tokio shell around [`Membership`]: one task, one `select!` over the UDP socket, the timer
//! queue, the command channel and shutdown.
//!
//! Owns the I/O: it reads the clock (a monotonic origin taken at start), sends what the core
//! asks to send, schedules what it asks to schedule, publishes the member view on a `watch`
//! channel when its generation changes, and counts traffic in [`GossipStats`]. On shutdown or
//! [`Command::Leave`] it leaves the cluster gracefully (sends the leave packets) and returns.
//!
//! With a key ring ([`Encryption`]) it seals every datagram it sends and opens every one it
//! receives (`crypto.rs`) before the core sees it: plaintext datagrams are dropped, and so are
//! sealed ones at a node without a key ring. A new key ring arrives on a `watch` channel (the
//! node's reload task fills it) and applies to the next datagram. Datagrams that fail
//! authentication are logged at most once per source address per [`AUTH_LOG_PERIOD`].
//!
//! Must not: make membership decisions (they are all in `membership.rs`), spawn further tasks,
//! or fail on what the network does (send errors, unreachable seeds, garbage datagrams are
//! logged or counted, never fatal).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringcache_proto::topology::{Member, NodeState};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::codec::{self, DropReason, MAGIC, SEALED_WIRE_VERSION};
use super::crypto::{INSTANCE_ID_LEN, Keyring, Sealer};
use super::membership::{Membership, RefusedMember, Timer};
use super::meta::{MetaError, NodeMeta};
use super::socket::GossipSocket;

/// What the rest of the node asks of the membership task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Announce new metadata for this node (e.g. `Joining` → `Active`).
    SetMeta(NodeMeta),
    /// Announce to one more gossip address (a seed or any member).
    Announce(SocketAddr),
    /// Replace the seeds (their addresses were resolved again): announce to them now, and keep
    /// announcing to these instead of the old ones.
    Seeds(Vec<SocketAddr>),
    /// Leave the cluster gracefully and stop the task.
    Leave,
}

/// Gossip traffic and membership counts of one node; the node exports them as Prometheus
/// metrics. Counters only grow; the `members_*` gauges describe the latest published view.
#[derive(Debug, Default)]
pub struct GossipStats {
    /// Datagrams sent (counter).
    pub packets_sent: AtomicU64,
    /// Datagrams received, dropped ones included (counter).
    pub packets_received: AtomicU64,
    /// Bytes of the datagrams sent (counter).
    pub bytes_sent: AtomicU64,
    /// Bytes of the datagrams received (counter).
    pub bytes_received: AtomicU64,
    /// Datagrams dropped, by reason: `dropped[i]` counts the reason
    /// [`DropReason::LABELS`]`[i]` (counter). Impostor drops count datagrams refused whole or
    /// in part (some of their member updates removed).
    pub dropped: [AtomicU64; DropReason::LABELS.len()],
    /// Keys in the gossip key ring; 0 when gossip is plaintext (gauge).
    pub keyring_keys: AtomicU64,
    /// The id of the primary key (first 4 bytes of its SHA-256, big-endian); 0 when gossip is
    /// plaintext (gauge).
    pub keyring_primary_id: AtomicU64,
    /// Members in the view that are Joining, Active or Leaving, this node included (gauge).
    pub members_alive: AtomicU64,
    /// Members in the view that are Suspect (gauge).
    pub members_suspect: AtomicU64,
    /// Members in the view that are Dead, i.e. down for less than `dead_retention` (gauge).
    pub members_dead: AtomicU64,
    /// Members in the view that Left (drained, then gone; kept for `dead_retention`) (gauge).
    pub members_left: AtomicU64,
    /// The failure detector's local health score, 0 = healthy (gauge; see
    /// [`Membership::local_health`]).
    pub local_health: AtomicU64,
    /// Live members refused for their settings, as last published ([`RefusedMember`]).
    refused: parking_lot::Mutex<Vec<RefusedMember>>,
}

/// A copy of [`GossipStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipStatsSnapshot {
    /// See [`GossipStats::packets_sent`].
    pub packets_sent: u64,
    /// See [`GossipStats::packets_received`].
    pub packets_received: u64,
    /// See [`GossipStats::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`GossipStats::bytes_received`].
    pub bytes_received: u64,
    /// See [`GossipStats::dropped`].
    pub dropped: [u64; DropReason::LABELS.len()],
    /// See [`GossipStats::keyring_keys`].
    pub keyring_keys: u64,
    /// See [`GossipStats::keyring_primary_id`].
    pub keyring_primary_id: u64,
    /// See [`GossipStats::members_alive`].
    pub members_alive: u64,
    /// See [`GossipStats::members_suspect`].
    pub members_suspect: u64,
    /// See [`GossipStats::members_dead`].
    pub members_dead: u64,
    /// See [`GossipStats::members_left`].
    pub members_left: u64,
    /// See [`GossipStats::local_health`].
    pub local_health: u64,
    /// Live members refused for their settings ([`GossipStats::refused`]).
    pub members_refused: u64,
}

impl GossipStats {
    /// Reads every field (each atomically, not all at once).
    pub fn snapshot(&self) -> GossipStatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GossipStatsSnapshot {
            packets_sent: read(&self.packets_sent),
            packets_received: read(&self.packets_received),
            bytes_sent: read(&self.bytes_sent),
            bytes_received: read(&self.bytes_received),
            dropped: std::array::from_fn(|i| read(&self.dropped[i])),
            keyring_keys: read(&self.keyring_keys),
            keyring_primary_id: read(&self.keyring_primary_id),
            members_alive: read(&self.members_alive),
            members_suspect: read(&self.members_suspect),
            members_dead: read(&self.members_dead),
            members_left: read(&self.members_left),
            local_health: read(&self.local_health),
            members_refused: self.refused.lock().len() as u64,
        }
    }

    /// The counter of drops for `reason`.
    pub fn dropped(&self, reason: DropReason) -> &AtomicU64 {
        &self.dropped[label_index(reason)]
    }

    fn count(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// Live members refused for their settings (see [`RefusedMember`]).
    pub fn refused(&self) -> Vec<RefusedMember> {
        self.refused.lock().clone()
    }

    fn record_view(&self, members: &[Member]) {
        let count = |wanted: &[NodeState]| {
            members.iter().filter(|m| wanted.contains(&m.state)).count() as u64
        };
        let alive = count(&[NodeState::Joining, NodeState::Active, NodeState::Leaving]);
        self.members_alive.store(alive, Ordering::Relaxed);
        self.members_suspect
            .store(count(&[NodeState::Suspect]), Ordering::Relaxed);
        self.members_dead
            .store(count(&[NodeState::Dead]), Ordering::Relaxed);
        self.members_left
            .store(count(&[NodeState::Left]), Ordering::Relaxed);
    }
}

impl GossipStatsSnapshot {
    /// Datagrams dropped for `reason` (see [`GossipStats::dropped`]).
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[label_index(reason)]
    }
}

fn label_index(reason: DropReason) -> usize {
    DropReason::LABELS
        .iter()
        .position(|label| *label == reason.label())
        .unwrap_or(0)
}

/// The most datagrams read in a row while timers are due (see the select in
/// [`run_membership`]).
const MAX_READS_BEFORE_TIMERS: u32 = 64;

/// How often, at most, datagrams from one source address that fail authentication are logged.
pub const AUTH_LOG_PERIOD: Duration = Duration::from_secs(60);
/// The most source addresses whose last authentication-failure log time is remembered; beyond
/// it, failures from new sources are counted but not logged until older entries expire.
const AUTH_LOG_SOURCES: usize = 1024;

/// Gossip encryption for one process: the key ring (replaced whenever the node reloads it) and
/// this process's sender instance id.
#[derive(Debug)]
pub struct Encryption {
    /// The current key ring; a new value applies to the next datagram.
    pub keyring: watch::Receiver<Keyring>,
    /// Fresh random bytes for every process start (see `crypto.rs`: nonces repeat otherwise).
    pub instance_id: [u8; INSTANCE_ID_LEN],
}

impl Encryption {
    /// Encryption with `keyring` and an instance id from the system's secure RNG.
    pub fn new(keyring: watch::Receiver<Keyring>) -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom as _;
        let mut instance_id = [0; INSTANCE_ID_LEN];
        ring::rand::SystemRandom::new().fill(&mut instance_id)?;
        Ok(Self {
            keyring,
            instance_id,
        })
    }
}

/// A command could not be handed to the membership task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The task has stopped (shut down or left); nothing was sent.
    #[error("membership task has stopped")]
    Stopped,
    /// The metadata is invalid; nothing was sent.
    #[error("invalid node metadata: {0}")]
    Meta(#[from] MetaError),
}

/// The rest of the node's side of a running membership task.
#[derive(Debug, Clone)]
pub struct MembershipHandle {
    commands: mpsc::Sender<Command>,
    members: watch::Receiver<Vec<Member>>,
    stats: Arc<GossipStats>,
}

impl MembershipHandle {
    /// Spawns [`run_membership`] on the current runtime. `socket` is already bound (tests bind
    /// `127.0.0.1:0`; a simulation passes its own [`GossipSocket`]); the task stops when `shutdown` is cancelled or on [`Command::Leave`],
    /// after leaving the cluster gracefully. With `encryption`, every datagram is sealed and
    /// only sealed ones are accepted.
    pub fn spawn(
        membership: Membership,
        socket: Box<dyn GossipSocket>,
        seeds: Vec<SocketAddr>,
        encryption: Option<Encryption>,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let (members_tx, members_rx) = watch::channel(membership.members().to_vec());
        let stats = Arc::new(GossipStats::default());
        let task = crate::logging::spawn(run_membership(
            membership,
            socket,
            seeds,
            encryption,
            commands_rx,
            members_tx,
            Arc::clone(&stats),
            shutdown,
        ));
        let handle = Self {
            commands: commands_tx,
            members: members_rx,
            stats,
        };
        (handle, task)
    }

    /// The member view, updated whenever it changes.
    pub fn members(&self) -> watch::Receiver<Vec<Member>> {
        self.members.clone()
    }

    /// The traffic counters and member gauges.
    pub fn stats(&self) -> &Arc<GossipStats> {
        &self.stats
    }

    /// Announces new metadata for this node.
    pub async fn set_meta(&self, meta: NodeMeta) -> Result<(), CommandError> {
        meta.validate()?;
        self.send(Command::SetMeta(meta)).await
    }

    /// Announces to one more gossip address.
    pub async fn announce(&self, addr: SocketAddr) -> Result<(), CommandError> {
        self.send(Command::Announce(addr)).await
    }

    /// Replaces the seeds (after they were resolved again, e.g. to a seed pod's new IP).
    pub async fn set_seeds(&self, seeds: Vec<SocketAddr>) -> Result<(), CommandError> {
        self.send(Command::Seeds(seeds)).await
    }

    /// Leaves the cluster gracefully; the task then stops.
    pub async fn leave(&self) -> Result<(), CommandError> {
        self.send(Command::Leave).await
    }

    async fn send(&self, command: Command) -> Result<(), CommandError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| CommandError::Stopped)
    }
}

/// Runs `membership` over `socket` until `shutdown` is cancelled or [`Command::Leave`] arrives,
/// then leaves the cluster gracefully and returns. Joins through `seeds` first (unreachable or
/// not yet started seeds are retried while we are not connected). Publishes the view on `members_tx`
/// each time it changes and counts traffic in `stats`. If `commands` closes, the task keeps
/// running until `shutdown`. With `encryption`, datagrams are sealed and opened with its key
/// ring (see the module docs).
#[allow(clippy::too_many_arguments)]
pub async fn run_membership(
    mut membership: Membership,
    socket: Box<dyn GossipSocket>,
    seeds: Vec<SocketAddr>,
    encryption: Option<Encryption>,
    mut commands: mpsc::Receiver<Command>,
    members_tx: watch::Sender<Vec<Member>>,
    stats: Arc<GossipStats>,
    shutdown: CancellationToken,
) {
    let origin = Instant::now();
    let mut timers: DelayQueue<Timer> = DelayQueue::new();
    // One byte more than the limit, so that an oversized datagram shows as such instead of
    // being silently truncated to a valid-looking size.
    let mut buf = vec![0_u8; membership.config().max_packet_size.get() + 1];
    let mut published_generation = None;
    let mut published_refused = 0;
    let mut commands_open = true;
    let max_packet_size = membership.config().max_packet_size.get();
    let (mut keyring_rx, mut sealer) = match encryption {
        Some(encryption) => {
            let mut rx = encryption.keyring;
            let keyring = rx.borrow_and_update().clone();
            (Some(rx), Some(Sealer::new(keyring, encryption.instance_id)))
        }
        None => (None, None),
    };
    record_keyring(&stats, sealer.as_ref().map(Sealer::keyring));
    let mut plain = Vec::with_capacity(buf.len());
    // Datagrams read since a timer last ran (see the `biased` select below).
    let mut reads_in_a_row = 0_u32;
    let mut auth_log = AuthFailureLog::default();
    tracing::info!(
        identity = %membership.identity(),
        seeds = (!seeds.is_empty()).then(|| display(
            seeds
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )),
        encrypted = sealer.is_some(),
        keys = sealer
            .as_ref()
            .map(|sealer| tracing::field::display(sealer.keyring())),
        "gossip starting"
    );
    membership.join(origin.elapsed(), seeds);

    loop {
        flush(
            &mut membership,
            &*socket,
            &mut timers,
            &stats,
            sealer.as_mut(),
        )
        .await;
        if published_refused != membership.refused_generation() {
            // Before the view: a reader that sees the new view sees these refusals too.
            published_refused = membership.refused_generation();
            *stats.refused.lock() = membership.refused().to_vec();
        }
        if published_generation != Some(membership.generation()) {
            published_generation = Some(membership.generation());
            let members = membership.members().to_vec();
            stats.record_view(&members);
            members_tx.send_replace(members);
        }
        stats
            .local_health
            .store(u64::from(membership.local_health()), Ordering::Relaxed);
        if membership.has_left() {
            tracing::info!(identity = %membership.identity(), "gossip stopped after leaving");
            return;
        }

        // Biased: what has arrived is read before due timers run, so a node that was starved of
        // CPU sees the acks that came in meanwhile before it decides its probes failed (an
        // unbiased select picks at random). At most `MAX_READS_BEFORE_TIMERS` datagrams in a
        // row, so a flood cannot stop the timers.
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                // Metadata sent before the shutdown (the Leaving announcement of a drain) goes
                // out with the leave, whichever branch `select!` picked first.
                while let Ok(command) = commands.try_recv() {
                    if let Command::SetMeta(meta) = command
                        && let Err(error) = membership.set_meta(origin.elapsed(), meta)
                    {
                        tracing::warn!(%error, "metadata refused");
                    }
                }
                membership.leave(origin.elapsed());
            }
            command = commands.recv(), if commands_open => {
                let now = origin.elapsed();
                match command {
                    Some(Command::SetMeta(meta)) => {
                        if let Err(error) = membership.set_meta(now, meta) {
                            tracing::warn!(%error, "metadata refused");
                        }
                    }
                    Some(Command::Announce(addr)) => membership.announce(now, addr),
                    Some(Command::Seeds(seeds)) => membership.join(now, seeds),
                    Some(Command::Leave) => membership.leave(now),
                    None => commands_open = false,
                }
            }
            changed = async { keyring_rx.as_mut()?.changed().await.ok() }, if keyring_rx.is_some() => {
                match (changed, keyring_rx.as_mut(), sealer.as_mut()) {
                    (Some(()), Some(rx), Some(sealer)) => {
                        let keyring = rx.borrow_and_update().clone();
                        tracing::info!(keys = %keyring, "gossip key ring replaced");
                        sealer.set_keyring(keyring);
                        record_keyring(&stats, Some(sealer.keyring()));
                    }
                    // The sender is gone: keep the current key ring for good.
                    _ => keyring_rx = None,
                }
            }
            received = socket.recv_from(&mut buf), if reads_in_a_row < MAX_READS_BEFORE_TIMERS => match received {
                Ok((len, from)) => {
                    reads_in_a_row += 1;
                    GossipStats::count(&stats.packets_received, 1);
                    GossipStats::count(&stats.bytes_received, len as u64);
                    let datagram = &buf[..len];
                    let result = match unseal(sealer.as_mut(), datagram, &mut plain, max_packet_size) {
                        Ok(frame) => membership.handle_data(origin.elapsed(), frame),
                        Err(reason) => Err(reason),
                    };
                    stats
                        .dropped(DropReason::Impostor)
                        .store(membership.impostor_refusals(), Ordering::Relaxed);
                    if let Err(reason) = result {
                        count_drop(&stats, reason);
                        auth_log.dropped(from, len, reason);
                    }
                }
                Err(error) => log_recv_error(&error),
            },
            Some(expired) = timers.next() => {
                reads_in_a_row = 0;
                membership.handle_timer(origin.elapsed(), expired.into_inner());
            }
            // No timer is pending at all (not connected yet, for instance): read again.
            () = std::future::ready(()), if reads_in_a_row >= MAX_READS_BEFORE_TIMERS && timers.is_empty() => {
                reads_in_a_row = 0;
            }
        }
    }
}

/// The plaintext frame of a received datagram: opened with `sealer` when there is one (and
/// then only sealed datagrams are accepted), the datagram itself otherwise (and then sealed
/// ones are refused).
fn unseal<'a>(
    sealer: Option<&mut Sealer>,
    datagram: &'a [u8],
    plain: &'a mut Vec<u8>,
    max_packet_size: usize,
) -> Result<&'a [u8], DropReason> {
    if datagram.len() > max_packet_size {
        return Err(DropReason::Oversized);
    }
    let sealed = matches!(datagram, [MAGIC, SEALED_WIRE_VERSION, ..]);
    match (sealer, sealed) {
        (Some(sealer), true) => {
            sealer.open(datagram, plain)?;
            Ok(plain)
        }
        (Some(_), false) => Err(codec::split_frame(datagram, max_packet_size)
            .err()
            .unwrap_or(DropReason::Plaintext)),
        (None, true) => Err(DropReason::Encrypted),
        (None, false) => Ok(datagram),
    }
}

/// Logs dropped datagrams: failed authentication (unknown key, bad tag, plaintext/encrypted
/// mismatch) at warn, at most once per source per [`AUTH_LOG_PERIOD`]; others at debug.
#[derive(Debug, Default)]
struct AuthFailureLog {
    last_logged: HashMap<SocketAddr, Instant>,
}

impl AuthFailureLog {
    fn dropped(&mut self, from: SocketAddr, len: usize, reason: DropReason) {
        let auth = matches!(
            reason,
            DropReason::UnknownKey
                | DropReason::Unauthenticated
                | DropReason::Plaintext
                | DropReason::Encrypted
        );
        if !auth {
            tracing::debug!(%from, len, %reason, "gossip datagram dropped");
            return;
        }
        let now = Instant::now();
        if self
            .last_logged
            .get(&from)
            .is_some_and(|at| now.duration_since(*at) < AUTH_LOG_PERIOD)
        {
            return;
        }
        if self.last_logged.len() >= AUTH_LOG_SOURCES {
            self.last_logged
                .retain(|_, at| now.duration_since(*at) < AUTH_LOG_PERIOD);
            if self.last_logged.len() >= AUTH_LOG_SOURCES {
                return;
            }
        }
        self.last_logged.insert(from, now);
        tracing::warn!(
            %from,
            %reason,
            "gossip datagrams from this address fail authentication and are dropped (wrong or missing gossip key?); logged once a minute per address"
        );
    }
}

fn record_keyring(stats: &GossipStats, keyring: Option<&Keyring>) {
    let (keys, primary) = keyring.map_or((0, 0), |k| {
        (k.len() as u64, u64::from(k.primary_id().as_u32()))
    });
    stats.keyring_keys.store(keys, Ordering::Relaxed);
    stats.keyring_primary_id.store(primary, Ordering::Relaxed);
}

/// Sends what the core wants sent (sealed, with a key ring) and schedules what it wants
/// scheduled.
async fn flush(
    membership: &mut Membership,
    socket: &dyn GossipSocket,
    timers: &mut DelayQueue<Timer>,
    stats: &GossipStats,
    mut sealer: Option<&mut Sealer>,
) {
    for (delay, timer) in membership.take_timers() {
        timers.insert(timer, delay);
    }
    for (to, datagram) in membership.take_packets() {
        let datagram = match sealer.as_deref_mut() {
            Some(sealer) => match sealer.seal(&datagram) {
                Ok(sealed) => sealed,
                Err(error) => {
                    tracing::warn!(%to, %error, "cannot seal a gossip datagram; not sent");
                    continue;
                }
            },
            None => datagram,
        };
        match socket.send_to(&datagram, to).await {
            Ok(sent) => {
                GossipStats::count(&stats.packets_sent, 1);
                GossipStats::count(&stats.bytes_sent, sent as u64);
            }
            // UDP gives no delivery promise anyway; foca treats this as a lost packet.
            Err(error) => tracing::debug!(%to, %error, "gossip send failed"),
        }
    }
}

fn count_drop(stats: &GossipStats, reason: DropReason) {
    // Impostor refusals are counted by the core (partly filtered datagrams included).
    if reason != DropReason::Impostor {
        GossipStats::count(stats.dropped(reason), 1);
    }
}

fn log_recv_error(error: &io::Error) {
    match error.kind() {
        // ICMP errors about earlier sends (a seed that is not up yet) surface here on some
        // platforms; they say nothing about this socket.
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
            tracing::debug!(%error, "gossip receive");
        }
        _ => tracing::warn!(%error, "gossip receive failed"),
    }
}
