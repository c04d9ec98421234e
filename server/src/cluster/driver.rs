//! The tokio shell around [`Membership`]: one task, one `select!` over the UDP socket, the timer
//! queue, the command channel and shutdown.
//!
//! Owns the I/O: it reads the clock (a monotonic origin taken at start), sends what the core
//! asks to send, schedules what it asks to schedule, publishes the member view on a `watch`
//! channel when its generation changes, and counts traffic in [`GossipStats`]. On shutdown or
//! [`Command::Leave`] it leaves the cluster gracefully (sends the leave packets) and returns.
//!
//! Must not: make membership decisions (they are all in `membership.rs`), spawn further tasks,
//! or fail on what the network does (send errors, unreachable seeds, garbage datagrams are
//! logged or counted, never fatal).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ringcache_proto::topology::{Member, NodeState};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::codec::DropReason;
use super::membership::{Membership, Timer};
use super::meta::{MetaError, NodeMeta};

/// What the rest of the node asks of the membership task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Announce new metadata for this node (e.g. `Joining` → `Active`).
    SetMeta(NodeMeta),
    /// Announce to one more gossip address (a seed or any member).
    Announce(SocketAddr),
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
    /// Datagrams dropped as not ours, of another wire version, or undecodable (counter).
    pub packets_dropped_malformed: AtomicU64,
    /// Datagrams dropped for being larger than `max_packet_size` (counter).
    pub packets_dropped_oversized: AtomicU64,
    /// Members in the view that are Joining, Active or Leaving, this node included (gauge).
    pub members_alive: AtomicU64,
    /// Members in the view that are Suspect (gauge).
    pub members_suspect: AtomicU64,
    /// Members in the view that are Dead, i.e. down for less than `dead_retention` (gauge).
    pub members_dead: AtomicU64,
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
    /// See [`GossipStats::packets_dropped_malformed`].
    pub packets_dropped_malformed: u64,
    /// See [`GossipStats::packets_dropped_oversized`].
    pub packets_dropped_oversized: u64,
    /// See [`GossipStats::members_alive`].
    pub members_alive: u64,
    /// See [`GossipStats::members_suspect`].
    pub members_suspect: u64,
    /// See [`GossipStats::members_dead`].
    pub members_dead: u64,
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
            packets_dropped_malformed: read(&self.packets_dropped_malformed),
            packets_dropped_oversized: read(&self.packets_dropped_oversized),
            members_alive: read(&self.members_alive),
            members_suspect: read(&self.members_suspect),
            members_dead: read(&self.members_dead),
        }
    }

    fn count(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
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
    /// `127.0.0.1:0`); the task stops when `shutdown` is cancelled or on [`Command::Leave`],
    /// after leaving the cluster gracefully.
    pub fn spawn(
        membership: Membership,
        socket: UdpSocket,
        seeds: Vec<SocketAddr>,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let (members_tx, members_rx) = watch::channel(membership.members().to_vec());
        let stats = Arc::new(GossipStats::default());
        let task = tokio::spawn(run_membership(
            membership,
            socket,
            seeds,
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
/// running until `shutdown`.
pub async fn run_membership(
    mut membership: Membership,
    socket: UdpSocket,
    seeds: Vec<SocketAddr>,
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
    let mut commands_open = true;
    tracing::info!(identity = ?membership.identity(), ?seeds, "gossip starting");
    membership.join(origin.elapsed(), seeds);

    loop {
        flush(&mut membership, &socket, &mut timers, &stats).await;
        if published_generation != Some(membership.generation()) {
            published_generation = Some(membership.generation());
            let members = membership.members().to_vec();
            stats.record_view(&members);
            members_tx.send_replace(members);
        }
        if membership.has_left() {
            tracing::info!(identity = ?membership.identity(), "gossip stopped after leaving");
            return;
        }

        tokio::select! {
            () = shutdown.cancelled() => membership.leave(origin.elapsed()),
            command = commands.recv(), if commands_open => {
                let now = origin.elapsed();
                match command {
                    Some(Command::SetMeta(meta)) => {
                        if let Err(error) = membership.set_meta(now, meta) {
                            tracing::warn!(%error, "metadata refused");
                        }
                    }
                    Some(Command::Announce(addr)) => membership.announce(now, addr),
                    Some(Command::Leave) => membership.leave(now),
                    None => commands_open = false,
                }
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    GossipStats::count(&stats.packets_received, 1);
                    GossipStats::count(&stats.bytes_received, len as u64);
                    if let Err(reason) = membership.handle_data(origin.elapsed(), &buf[..len]) {
                        count_drop(&stats, reason);
                        tracing::debug!(%from, len, %reason, "gossip datagram dropped");
                    }
                }
                Err(error) => log_recv_error(&error),
            },
            Some(expired) = timers.next() => {
                membership.handle_timer(origin.elapsed(), expired.into_inner());
            }
        }
    }
}

/// Sends what the core wants sent and schedules what it wants scheduled.
async fn flush(
    membership: &mut Membership,
    socket: &UdpSocket,
    timers: &mut DelayQueue<Timer>,
    stats: &GossipStats,
) {
    for (delay, timer) in membership.take_timers() {
        timers.insert(timer, delay);
    }
    for (to, datagram) in membership.take_packets() {
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
    let counter = match reason {
        DropReason::Oversized => &stats.packets_dropped_oversized,
        DropReason::WrongMagic | DropReason::UnsupportedVersion(_) | DropReason::Malformed => {
            &stats.packets_dropped_malformed
        }
    };
    GossipStats::count(counter, 1);
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
