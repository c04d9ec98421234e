//! Replication: how a write reaches the other replicas of its key, how reads at QUORUM and ALL
//! find the newest copy, and how writes missed by an unreachable replica get to it later.
//!
//! **Who coordinates.** The node that serves a request (the key's primary normally; any replica
//! that receives it, e.g. after a client failed over; a node that is no replica only when a
//! forwarded request lands on it under a disagreeing topology) is its coordinator. Non-replicas
//! forward to the primary first ([`crate::api`]), unchanged.
//!
//! **Write path** ([`replicate`]). The coordinator runs the store operation as a lone node would:
//! the store decides the new version, and every condition (if-absent, if-present, CAS, incr,
//! expire on a missing key) is decided there. A failed operation or a condition that did not hold
//! replicates nothing. Then the coordinator reads back what it holds for each written key
//! ([`crate::store::Store::get_versioned`], tombstones included) and hands it, one part per
//! target node, to the key's other replicas (`view.replicas(key)` minus itself) through the
//! per-peer batcher (below), all targets at once. R is min(replication factor, known cluster
//! size) (see minority protection below); when the ring offers fewer replicas than a level
//! needs of R, the write fails. The coordinator counts itself when it is one of the
//! replicas; each replica that answers the batch counts once for every key in it. The request is
//! answered as soon as every key has `level.required(R)` acknowledgements (ONE = 1, QUORUM =
//! R/2+1, ALL = R); the remaining calls finish in the background. When the level cannot be met,
//! the answer waits until every call has ended (each bounded by `replica_timeout`) and is
//! `UNAVAILABLE`, naming the counts and each replica's failure. A failed level undoes nothing:
//! the write stays on the replicas that took it.
//!
//! **Batching** (`batch.rs`). Requests to the same peer share calls: writes and read repairs share
//! `Internal.Replicate` calls, QUORUM and ALL reads share `Internal.ReadVersions` calls; one
//! implementation, generic over what a call carries, serves both. Per peer gRPC address and kind
//! of call there is a FIFO of parts and at most 2 calls in flight. A part that finds a free slot
//! is sent at once (no timer: an idle cluster adds no latency); parts that arrive while every slot
//! is busy leave together in the next call to go out (up to `max_batch_keys`, at most 1000, items
//! and about 1 MiB). Each part gets the outcome of the call that carried it — for a read, its own
//! keys' answers, cut out of the call's answer — counted exactly as an unbatched call would be
//! (metrics, hints, failure messages); a failed call fails only the parts it carried, and a
//! refused call of several parts is re-sent part by part so one request's refusal is not reported
//! for another. `replica_timeout` bounds each part from when its request handed it over: a call
//! ends by the earliest deadline among its parts, and a part that waited past its deadline times
//! out unsent. No task is spawned per request: the senders report each outcome to the request,
//! which answers when its level is met and lets the rest finish in the background. Batching and
//! reordering writes are safe because replicas apply only newer versions (last writer wins).
//! Hint replays send their own calls (already in batches of up to 256 entries).
//!
//! **Replica streams** (`link.rs`). The batchers' calls do not each open an HTTP/2 stream: they
//! travel as tagged requests on one long-lived `Internal.ReplicaStream` per peer, opened on
//! first use and replaced when it ends, which the peer serves by running each request through
//! its unary handler (`crate::api`). A stream that breaks fails the requests sent on it as a
//! broken unary call would (unreachable: writes become hints) and hands the ones not sent yet
//! back to be sent as unary calls; a peer that answers UNIMPLEMENTED gets unary calls.
//!
//! **Read path** ([`read`]). ONE reads stay local. QUORUM and ALL read the local copy
//! (tombstones and expired entries included) and ask other replicas with `Internal.ReadVersions`
//! (through the read batcher), only as many as the level still needs: a QUORUM read of R = 3 on
//! a replica asks one other replica, ALL asks every one. When an asked replica fails (unreachable,
//! timed out, refused, or an answer with a version too far ahead), its keys are asked of a replica
//! not asked yet. The answer is the highest version once enough replicas answered (a tombstone or
//! an expired entry as the newest is a miss). Once every ask has ended, **read repair** sends the
//! newest copy to every replica that answered with an older copy or nothing (itself included,
//! through `Store::apply`; the others through the write batcher). A replica that was not asked is
//! not repaired by the read; hints and anti-entropy reach it. Two different copies with
//! the same version (two coordinators' clocks stamping the same millisecond) are ordered by
//! content ([`crate::store::copy_order`]), the same rule `apply` uses, so replicas agree on the
//! winner whatever order the writes arrived in.
//!
//! **Hint lifecycle** ([`replay_hints_task`]). When a replica cannot be reached or times out for a write
//! (also after the level was met), the coordinator keeps the entries it sent as *hints* for that
//! node id, bounded per target by bytes (`hint_max_bytes`) and age (`hint_max_age`); over a limit
//! the oldest hints are dropped and counted. A background task replays them with
//! `Replicate { hinted: true }` in batches whenever the view changes and every probe interval,
//! to targets that are Active in the current topology (a restarted node with the same id and a new
//! incarnation included). A batch is removed only once the target acknowledged it. Replay is
//! idempotent: `apply` is last-writer-wins by version, and the hint age is below the tombstone
//! grace period, so a replayed old write cannot revive a key deleted after it. A replica that
//! answered with an error (e.g. memory full) gets no hint.
//!
//! **Minority protection** ([`check_majority`], [`crate::known`]). A level counts the key's
//! replicas as min(R, the cluster's known size), not what the live ring holds, and a node
//! coordinates QUORUM and ALL only while it sees a majority of the known members: a node cut off
//! from the others refuses them with `UNAVAILABLE` instead of acknowledging writes the majority
//! never sees. ONE stays available everywhere. With `min_cluster_size` set, a node that sees
//! fewer Active members than that refuses every write.

mod batch;
mod hints;
mod link;
mod read;
pub mod wire;
mod write;

use std::time::Duration;

use parking_lot::Mutex;
use ringcache_proto::topology::NodeState;
use ringcache_proto::v1;

use crate::context::Context;
use crate::peer::{self, PeerError, PeerErrorKind};
use crate::store::StoreError;
use crate::view::ClusterView;

pub use hints::{HintStats, replay_hints_task};
pub use read::{Winners, read};
pub use write::{needs_others, replicate};

/// Default `hint_max_bytes`: per target node.
pub const DEFAULT_HINT_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Default `hint_max_age`.
pub const DEFAULT_HINT_MAX_AGE: Duration = Duration::from_secs(5 * 60);
/// Most `replica_stream_in_flight`: also what a node starts at once of one replica stream's
/// requests, and the most requests it takes in one message.
pub const MAX_REPLICA_STREAM_IN_FLIGHT: usize = 256;
/// Default `replica_stream_in_flight`.
pub const DEFAULT_REPLICA_STREAM_IN_FLIGHT: usize = 64;
/// Default `replica_timeout`.
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_secs(2);

/// How many replicas of a key must take part in a request before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority: R/2 + 1.
    Quorum,
    /// Every replica.
    All,
}

impl Consistency {
    /// Replicas needed out of `replicas` (at least 1, at most `replicas`; 1 for an empty set).
    pub fn required(self, replicas: usize) -> usize {
        let needed = match self {
            Self::One => 1,
            Self::Quorum => replicas / 2 + 1,
            Self::All => replicas,
        };
        needed.clamp(1, replicas.max(1))
    }

    /// The name used in messages (`ONE`, `QUORUM`, `ALL`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::One => "ONE",
            Self::Quorum => "QUORUM",
            Self::All => "ALL",
        }
    }

    /// The level a request asks for: `CONSISTENCY_UNSPECIFIED` means `default`. `Err` carries an
    /// unknown wire value.
    pub fn from_wire(value: i32, default: Self) -> Result<Self, i32> {
        match v1::Consistency::try_from(value) {
            Ok(v1::Consistency::Unspecified) => Ok(default),
            Ok(v1::Consistency::One) => Ok(Self::One),
            Ok(v1::Consistency::Quorum) => Ok(Self::Quorum),
            Ok(v1::Consistency::All) => Ok(Self::All),
            Err(_) => Err(value),
        }
    }
}

/// The replication settings of a node.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Level of writes that ask for none (`CONSISTENCY_UNSPECIFIED`).
    pub write_consistency: Consistency,
    /// Level of reads that ask for none.
    pub read_consistency: Consistency,
    /// Longest wait for one replica's answer (Replicate, ReadVersions, hint replay).
    pub replica_timeout: Duration,
    /// Upper bound on the hints kept for one target node (key + value + overhead bytes); 0 keeps
    /// none (hinted handoff off).
    pub hint_max_bytes_per_node: usize,
    /// Hints older than this are dropped; must be shorter than the tombstone grace period.
    pub hint_max_age: Duration,
    /// Refuse writes while fewer Active members than this are visible; 0: off.
    pub min_cluster_size: usize,
    /// Most requests in flight on the replica stream to one peer; 0: no streams (a unary call
    /// per batch).
    pub replica_stream_in_flight: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            write_consistency: Consistency::Quorum,
            read_consistency: Consistency::One,
            replica_timeout: DEFAULT_REPLICA_TIMEOUT,
            hint_max_bytes_per_node: DEFAULT_HINT_MAX_BYTES,
            hint_max_age: DEFAULT_HINT_MAX_AGE,
            min_cluster_size: 0,
            replica_stream_in_flight: DEFAULT_REPLICA_STREAM_IN_FLIGHT,
        }
    }
}

/// Why a replicated request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// The local store refused the key (invalid input).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The consistency level could not be met, or writes are refused (minority protection); the
    /// message says how many replicas answered and why the others did not.
    #[error("{0}")]
    Unavailable(String),
}

/// The node's replication state: the hints waiting for unreachable replicas.
#[derive(Debug)]
pub struct Replicator {
    hints: Mutex<hints::HintQueues>,
    /// Per-peer queues of replicated writes and read repairs waiting to be sent together.
    batcher: batch::Batcher<v1::VersionedEntry, write::Job>,
    /// Per-peer queues of QUORUM and ALL reads' keys waiting to be asked together.
    reads: batch::Batcher<bytes::Bytes, read::Waiter>,
    /// The replica stream to each peer, which carries both batchers' calls.
    links: link::Links,
}

impl Replicator {
    /// A replicator with no hints.
    pub fn new(config: &ReplicationConfig) -> Self {
        Self {
            hints: Mutex::new(hints::HintQueues::new(
                config.hint_max_bytes_per_node,
                duration_ms(config.hint_max_age),
            )),
            batcher: batch::Batcher::default(),
            reads: batch::Batcher::default(),
            links: link::Links::default(),
        }
    }

    /// Replica streams to peers opened or opening (`Internal.ReplicaStream`).
    pub fn replica_streams(&self) -> usize {
        self.links.open()
    }

    /// Closes the replica streams to addresses no member of `topology` uses any more.
    pub(crate) fn retain_links(&self, topology: &ringcache_proto::topology::Topology) {
        self.links.retain(topology);
    }

    /// Hints waiting, all targets together.
    pub fn hints_pending(&self) -> HintStats {
        self.hints.lock().stats()
    }

    /// Replication lag as this node sees it: the age of its oldest pending hint (a write that
    /// some replica has not received yet), zero when no hint is pending. Hints dropped by the
    /// age or byte limits no longer count (`ringcache_hints_dropped_total` counts them).
    pub fn replication_lag(&self, now_ms: u64) -> Duration {
        self.hints
            .lock()
            .oldest_queued_at_ms()
            .map_or(Duration::ZERO, |at| {
                Duration::from_millis(now_ms.saturating_sub(at))
            })
    }

    /// Hints waiting for `node_id`.
    pub fn hints_pending_for(&self, node_id: &str) -> usize {
        self.hints.lock().pending_for(node_id)
    }
}

/// Refuses a write before it is applied anywhere when the node must not coordinate it: at any
/// level while its clock is off from the cluster's ([`crate::skew`]), at QUORUM and ALL while it
/// sees no majority of the known cluster ([`check_majority`]), and at any level while it sees
/// fewer Active members than `min_cluster_size`.
pub fn check_writable(node: &Context, level: Consistency) -> Result<(), ReplicationError> {
    if let Some(refusal) = node
        .clock_check()
        .refusal(node.config().store.max_clock_drift_ms)
    {
        return Err(ReplicationError::Unavailable(refusal));
    }
    let view = node.view();
    check_majority(&view, level, "writes")?;
    let min = node.config().replication.min_cluster_size;
    if min == 0 {
        return Ok(());
    }
    let visible = view
        .topology
        .members()
        .iter()
        .filter(|m| m.state == NodeState::Active)
        .count();
    if visible < min {
        return Err(ReplicationError::Unavailable(format!(
            "only {visible} of min_cluster_size {min} members visible; refusing writes"
        )));
    }
    Ok(())
}

/// Minority protection: QUORUM and ALL need this node to see more than half of the cluster's
/// known members alive ([`crate::known`]); ONE does not. `what` names the refused requests.
pub fn check_majority(
    view: &ClusterView,
    level: Consistency,
    what: &str,
) -> Result<(), ReplicationError> {
    let quorum = view.quorum;
    if level == Consistency::One || quorum.is_majority() {
        return Ok(());
    }
    Err(ReplicationError::Unavailable(format!(
        "minority protection: this node sees {} of the cluster's {} known members, not a majority; \
         refusing {} {what} (ONE still works; `ringctl forget` members that are gone for good)",
        quorum.alive,
        quorum.known,
        level.as_str(),
    )))
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Why a call to one replica failed.
#[derive(Debug, Clone)]
enum Failure {
    /// No answer within `replica_timeout`.
    TimedOut(Duration),
    /// The replica could not be reached (connection refused or broken, no address known).
    Unreachable(String),
    /// The replica answered with an error.
    Refused(String),
    /// The replica refused the version as too far ahead of its clock (`FAILED_PRECONDITION` on
    /// `Internal.Replicate`): this node's clock may be off.
    ClockDrift(String),
}

impl Failure {
    /// Whether the write should be kept as a hint for the replica.
    fn hint(&self) -> bool {
        matches!(self, Self::TimedOut(_) | Self::Unreachable(_))
    }

    /// The failure of a call whose peer answered or broke with `error`.
    fn of_peer(error: PeerError) -> Self {
        let text = error.detail;
        match error.kind {
            PeerErrorKind::Unreachable => Self::Unreachable(text),
            PeerErrorKind::TimedOut => Self::TimedOut(Duration::ZERO),
            PeerErrorKind::FailedPrecondition => Self::ClockDrift(text),
            PeerErrorKind::Unimplemented | PeerErrorKind::Refused | PeerErrorKind::Local => {
                Self::Refused(text)
            }
        }
    }

    /// The failure of a call whose peer answered or broke with `error`, a timeout being
    /// reported as `timeout` (the replica timeout the call's deadline came from).
    fn of_peer_within(error: PeerError, timeout: Duration) -> Self {
        match Self::of_peer(error) {
            Self::TimedOut(_) => Self::TimedOut(timeout),
            other => other,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TimedOut(after) if after.is_zero() => f.write_str("timed out"),
            Self::TimedOut(after) => write!(f, "timed out after {after:?}"),
            Self::Unreachable(text) => f.write_str(text),
            Self::Refused(text) | Self::ClockDrift(text) => write!(f, "refused: {text}"),
        }
    }
}

/// Runs `call` against one replica until `deadline`; a timeout is reported as `timeout` (the
/// replica timeout the deadline came from).
async fn call_replica_until<T>(
    deadline: tokio::time::Instant,
    timeout: Duration,
    call: impl Future<Output = Result<T, PeerError>>,
) -> Result<T, Failure> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(Failure::of_peer_within(error, timeout)),
        Err(_) => Err(Failure::TimedOut(timeout)),
    }
}

/// Sends `entries` to the node at `addr` with `Internal.Replicate` (not as hints), within the
/// replica timeout: for repairs outside the write path (anti-entropy).
pub(crate) async fn send_entries(
    node: &Context,
    addr: &str,
    entries: Vec<v1::VersionedEntry>,
) -> Result<(), String> {
    send_replicate(node, Some(addr), entries, false)
        .await
        .map_err(|failure| failure.to_string())
}

/// Sends `entries` to the node at `addr` with `Internal.Replicate`, within the replica timeout.
async fn send_replicate(
    node: &Context,
    addr: Option<&str>,
    entries: Vec<v1::VersionedEntry>,
    hinted: bool,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + node.config().replication.replica_timeout;
    send_replicate_until(node, addr, entries, hinted, deadline).await
}

/// Sends `entries` to the node at `addr` with `Internal.Replicate`, ending by `deadline`.
async fn send_replicate_until(
    node: &Context,
    addr: Option<&str>,
    entries: Vec<v1::VersionedEntry>,
    hinted: bool,
    deadline: tokio::time::Instant,
) -> Result<(), Failure> {
    let addr = addr.ok_or_else(|| Failure::Unreachable("not in the topology".to_owned()))?;
    let request = v1::ReplicateRequest {
        from_node_id: node.config().node_id.clone(),
        entries,
        hinted,
        handoff: false,
    };
    unary_replicate(node, addr, request, deadline).await
}

/// One unary `Internal.Replicate` call to `addr`, ending by `deadline`.
async fn unary_replicate(
    node: &Context,
    addr: &str,
    request: v1::ReplicateRequest,
    deadline: tokio::time::Instant,
) -> Result<(), Failure> {
    let timeout = node.config().replication.replica_timeout;
    let mut client = node
        .peers()
        .internal_client(addr)
        .map_err(|error| Failure::Unreachable(error.to_string()))?;
    let mut request = tonic::Request::new(request);
    request.set_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
    call_replica_until(deadline, timeout, peer::call(client.replicate(request)))
        .await
        .map(|_| ())
}

/// A coordinator's batch of `entries` for the replica at `addr`, ending by `deadline`: on the
/// peer's replica stream ([`link`]), or as a unary `Internal.Replicate` call when there is none.
async fn replicate_batch(
    node: &std::sync::Arc<Context>,
    addr: &str,
    entries: Vec<v1::VersionedEntry>,
    deadline: tokio::time::Instant,
) -> Result<(), Failure> {
    use ringcache_proto::v1::{replica_answer::Result as Answer, replica_request::Op};
    let request = v1::ReplicateRequest {
        from_node_id: node.config().node_id.clone(),
        entries,
        hinted: false,
        handoff: false,
    };
    let op = Op::Replicate(request);
    match node.replicator().links.call(node, addr, op, deadline).await {
        link::Routed::Answered(Ok(Answer::Replicate(_))) => Ok(()),
        link::Routed::Answered(Ok(_)) => Err(Failure::Refused(
            "the replica answered a Replicate with another kind of answer".to_owned(),
        )),
        link::Routed::Answered(Err(failure)) => Err(failure),
        link::Routed::Unary(Op::Replicate(request)) => {
            unary_replicate(node, addr, request, deadline).await
        }
        link::Routed::Unary(_) => Err(Failure::Refused(
            "a Replicate came back from the replica stream as another request".to_owned(),
        )),
    }
}

/// Appends how many keys fell short (when a request had several) and each replica's failure to a
/// level-not-met message.
fn describe_shortfall(
    message: &mut String,
    short: usize,
    keys: usize,
    failures: &[(String, Failure)],
) {
    use std::fmt::Write as _;
    if keys > 1 {
        let _ = write!(message, " (for {short} of {keys} keys)");
    }
    if !failures.is_empty() {
        let reasons: Vec<String> = failures
            .iter()
            .map(|(id, f)| format!("{id}: {f}"))
            .collect();
        let _ = write!(message, " ({})", reasons.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_need_one_a_majority_or_all() {
        use Consistency::*;
        assert_eq!([1, 2, 3, 4, 5].map(|r| One.required(r)), [1, 1, 1, 1, 1]);
        assert_eq!([1, 2, 3, 4, 5].map(|r| Quorum.required(r)), [1, 2, 2, 3, 3]);
        assert_eq!([1, 2, 3, 4, 5].map(|r| All.required(r)), [1, 2, 3, 4, 5]);
        assert_eq!(All.required(0), 1, "an empty ring: the coordinator alone");
    }

    #[test]
    fn unspecified_takes_the_default_and_unknown_values_are_refused() {
        assert_eq!(
            Consistency::from_wire(0, Consistency::Quorum),
            Ok(Consistency::Quorum)
        );
        assert_eq!(
            Consistency::from_wire(0, Consistency::One),
            Ok(Consistency::One)
        );
        assert_eq!(
            Consistency::from_wire(3, Consistency::One),
            Ok(Consistency::All)
        );
        assert_eq!(Consistency::from_wire(9, Consistency::One), Err(9));
    }

    /// A real call to a closed port: its status carries the refused connection in its source
    /// chain, which is what `PeerError` reads (not the wording of any message).
    #[tokio::test]
    async fn a_real_refused_connection_is_recognised_by_type() {
        // Bind, learn the port, close it: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let mut client = ringcache_proto::v1::internal_client::InternalClient::new(channel);
        let error = peer::call(client.clock(v1::ClockRequest::default()))
            .await
            .unwrap_err();
        let failure = Failure::of_peer(error);
        assert!(failure.hint(), "{failure:?}");
        assert_eq!(failure.to_string(), "connection refused");
    }

    #[test]
    fn only_unreachable_and_slow_replicas_get_hints() {
        assert!(Failure::TimedOut(Duration::from_secs(2)).hint());
        let peer = |kind, text: &str| Failure::of_peer(PeerError::new(kind, text));
        assert!(peer(PeerErrorKind::Unreachable, "down").hint());
        assert!(peer(PeerErrorKind::TimedOut, "").hint());
        assert!(!peer(PeerErrorKind::Refused, "full").hint());
        assert!(!peer(PeerErrorKind::FailedPrecondition, "clock drift").hint());
        assert!(!peer(PeerErrorKind::Unimplemented, "old").hint());
        assert_eq!(
            Failure::of_peer_within(
                PeerError::new(PeerErrorKind::TimedOut, ""),
                Duration::from_secs(2)
            )
            .to_string(),
            "timed out after 2s"
        );
    }
}
