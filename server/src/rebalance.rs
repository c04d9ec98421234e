//! Rebalancing: moving data so every key is on its replicas again after the ring changes.
//!
//! Push model, run by every node on every new view (`run_rebalancer`), **by hash slot**: the
//! node keeps, per slot, the view it last finished moving that slot's data for. A new view is
//! compared with those slot by slot (16,384 replica sets, from the rings' slot tables): only
//! the slots whose replica set changed and that this node holds entries of (plus slots it holds
//! entries of without being a replica: strays) are read, through the store's per-slot chains,
//! never the whole store. For each entry of such a slot, replicas that are new for the slot get
//! it (`Internal.Replicate`, last-writer-wins, so repeats are harmless); members that were
//! replicas already hold it. When this node is no longer a replica it sends the entry to every
//! current replica and then drops it (`remove_if_version`, so a write that raced the pass is
//! kept). A slot this node keeps without new members to send to is not read. Nodes answer
//! `Internal.SlotDigests` (a digest per slot) so a pusher could skip members that hold a slot
//! already; the pass does not use it yet (it lost a write made during a join in a test). This
//! one rule covers:
//! - a join: the old holders push to the joiner the slots whose set now includes it;
//! - a death: the survivors push each slot of the dead node to its new R-th replica;
//! - a leave: the leaver pushes everything to every replica of the ring without itself
//!   ([`hand_off`]).
//!
//! A slot is settled once all its entries were sent; a pass that fails leaves the failed slots
//! for the retry, and a pass that a newer view supersedes stops after its current slot: the
//! next pass starts from each slot's own settled view, so nothing done is read again.
//!
//! A joiner also pulls before it turns Active ([`pull_ranges`]: `Internal.StreamEntries` with
//! `assume_target_in_ring`), asking each member for a share of the slots it will hold (each
//! slot from one of its current replicas), so it serves reads filled. Everything a node sends
//! (pushes and the streams it serves) is paced by its [`pace::Pacer`]: at most
//! `--rebalance-rate`, and slower while the node serves requests and its threads wait for a
//! CPU (`--rebalance-yield`), in batches of at most [`PUSH_BATCH`] entries and
//! [`PUSH_BATCH_BYTES`]. Progress is in [`RebalanceStats`]: keys scanned, and bytes done of the
//! bytes the pass is estimated to read, where an entry is done once it is scanned and, if it
//! had to move, its batch was sent. The ETA divides the bytes left by the rate of the last
//! [`RATE_WINDOW`].
//!
//! **Log lines** (INFO, `kind` = `push` for a pass after a ring change, `pull` for a joiner's
//! pull, `hand_off` for a graceful leave): `rebalance started` (with the slots to move and the
//! keys and bytes held, or the members pulled from) and `rebalance finished` (`keys_scanned`,
//! `keys_sent`, `bytes_sent`, `slots_skipped` or `keys_received`, `failures`, `took_ms`,
//! `attempts`). A pass that
//! could not send everything logs `rebalance incomplete; retrying` at WARN on its first attempt
//! and then at most once a minute ([`RETRY_WARN_INTERVAL`]); its retries log at DEBUG. Passes
//! for a view that moves no slot (a member suspected or joining) log at DEBUG.

pub mod pace;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use ringcache_proto::placement::{ReplicaSet, Ring, SLOTS};
use ringcache_proto::topology::{Member, TopologyError, check_ring_size, check_weight};
use ringcache_proto::v1;
use tokio::sync::watch;

use crate::context::Context;
use crate::metrics::VersionSource;
use crate::peer::{self, PeerError};
use crate::replication::wire::{apply_entry, to_wire};
use crate::store::{ClockDrift, SlotCursor, StoreError, VersionedItem, charge};
use crate::view::ClusterView;

/// Entries read from the store per scan step.
const SCAN_STEP: usize = 256;
/// Most entries per Replicate batch.
pub const PUSH_BATCH: usize = 256;
/// Most key and value bytes per Replicate batch (one more entry may pass it): a receiver applies
/// a batch in one go, so bounded batches keep requests from waiting behind one.
pub const PUSH_BATCH_BYTES: u64 = 128 * 1024;
/// Longest wait for one Replicate batch.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// The rate behind the ETA is measured over this much of the latest progress.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Most progress samples kept for the rate.
const MAX_SAMPLES: usize = 256;
/// A pass that keeps failing warns at most this often.
pub const RETRY_WARN_INTERVAL: Duration = Duration::from_secs(60);
/// Most senders whose hand-offs are counted ([`RebalanceStats::record_handoff`]); the least
/// recently counted is forgotten first.
pub const MAX_HANDOFF_SENDERS: usize = 16;

/// Progress counters of this node's data movement.
#[derive(Debug, Default)]
pub struct RebalanceStats {
    phase: Mutex<&'static str>,
    last_error: Mutex<String>,
    /// Passes completed.
    pub passes: AtomicU64,
    /// Entries scanned by the current pass.
    pub keys_scanned: AtomicU64,
    /// Entries scanned by every pass so far (only entries of slots that had to move are).
    pub keys_scanned_total: AtomicU64,
    /// Slots read by every pass so far.
    pub slots_scanned_total: AtomicU64,
    /// Sends of a slot to a member skipped because its slot digest matched this node's.
    pub slots_skipped_total: AtomicU64,
    /// Key and value bytes sent in `StreamEntries` answers (joiners' pulls) by this node.
    pub stream_bytes_sent: AtomicU64,
    /// Paces everything this node sends when data moves.
    pub pacer: pace::Pacer,
    /// Entries the current pass scans, estimated when it starts from the share of held slots
    /// it reads (tombstones included), raised when the scan sees more.
    pub keys_total: AtomicU64,
    /// Entries sent to other nodes.
    pub keys_sent: AtomicU64,
    /// Key and value bytes sent.
    pub bytes_sent: AtomicU64,
    /// Entries received by pulls.
    pub keys_received: AtomicU64,
    /// Failed sends (retried by the next pass).
    pub failures: AtomicU64,
    /// Charged bytes of the entries the current pass reads, estimated like `keys_total`, raised
    /// when the bytes done exceed it.
    pub bytes_total: AtomicU64,
    /// Charged bytes of the entries the current pass is done with.
    pub bytes_done: AtomicU64,
    /// `(when, bytes_done)` samples of the current pass, oldest first, for the rate.
    samples: Mutex<VecDeque<(Instant, u64)>>,
    /// Entries and bytes handed off to this node by leaving members, least recently counted
    /// first.
    handoffs: Mutex<VecDeque<v1::HandoffReceived>>,
}

/// Progress rate in bytes per second and the estimated time left, from `(when, bytes_done)`
/// samples (oldest first), as of `now`. The rate runs from the newest sample at least
/// `window` old (or the oldest one) to `now`, so a pass that stops making progress sees its
/// rate fall. No ETA without progress in that span.
fn rate_and_eta(
    samples: &VecDeque<(Instant, u64)>,
    done: u64,
    total: u64,
    now: Instant,
    window: Duration,
) -> (f64, Option<f64>) {
    let base = samples
        .iter()
        .rev()
        .find(|(at, _)| now.saturating_duration_since(*at) >= window)
        .or_else(|| samples.front());
    let Some(&(since, done_then)) = base else {
        return (0.0, None);
    };
    let elapsed = now.saturating_duration_since(since).as_secs_f64();
    if elapsed <= 0.0 {
        return (0.0, None);
    }
    #[allow(clippy::cast_precision_loss)] // an estimate
    let rate = done.saturating_sub(done_then) as f64 / elapsed;
    let left = total.saturating_sub(done);
    let eta = if left == 0 {
        Some(0.0)
    } else if rate > 0.0 {
        #[allow(clippy::cast_precision_loss)]
        Some(left as f64 / rate)
    } else {
        None
    };
    (rate, eta)
}

impl RebalanceStats {
    fn set_phase(&self, phase: &'static str) {
        *self.phase.lock() = phase;
    }

    /// Starts the progress of a pass over `keys_total` entries of `bytes_total` charged bytes.
    fn start_pass(&self, keys_total: u64, bytes_total: u64) {
        self.keys_scanned.store(0, Ordering::Relaxed);
        self.keys_total.store(keys_total, Ordering::Relaxed);
        self.bytes_total.store(bytes_total, Ordering::Relaxed);
        self.bytes_done.store(0, Ordering::Relaxed);
        let mut samples = self.samples.lock();
        samples.clear();
        samples.push_back((Instant::now(), 0));
    }

    /// Adds `bytes` to the bytes done and takes a rate sample.
    fn advance(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let done = self.bytes_done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        // Entries written during the pass: the scan may see more than the pass started with.
        self.bytes_total.fetch_max(done, Ordering::Relaxed);
        let now = Instant::now();
        let mut samples = self.samples.lock();
        // Keep one sample older than the window (the rate's base), and a bounded number.
        while samples.len() >= MAX_SAMPLES
            || samples
                .get(1)
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= RATE_WINDOW)
        {
            samples.pop_front();
        }
        samples.push_back((now, done));
    }

    /// Counts one scanned entry; the total grows with it when writes during the pass made the
    /// scan see more entries than the pass started with.
    fn scanned_one(&self) {
        self.keys_scanned_total.fetch_add(1, Ordering::Relaxed);
        let scanned = self.keys_scanned.fetch_add(1, Ordering::Relaxed) + 1;
        self.keys_total.fetch_max(scanned, Ordering::Relaxed);
    }

    /// Counts `keys` entries of `bytes` key and value bytes that `from` handed off to this node
    /// as it left.
    pub fn record_handoff(&self, from: &str, keys: u64, bytes: u64) {
        let mut handoffs = self.handoffs.lock();
        let mut counted = match handoffs.iter().position(|h| h.from_node_id == from) {
            Some(at) => handoffs.remove(at).unwrap_or_default(),
            None => v1::HandoffReceived {
                from_node_id: from.to_owned(),
                ..Default::default()
            },
        };
        counted.keys += keys;
        counted.bytes += bytes;
        while handoffs.len() >= MAX_HANDOFF_SENDERS {
            handoffs.pop_front();
        }
        handoffs.push_back(counted);
    }

    fn fail(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = error;
    }

    /// The counters a log line reports the change of.
    fn counts(&self) -> Counts {
        Counts {
            keys_sent: self.keys_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            keys_received: self.keys_received.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            slots_skipped: self.slots_skipped_total.load(Ordering::Relaxed),
        }
    }

    /// The Admin.RebalanceStatus answer.
    pub fn to_wire(&self) -> v1::RebalanceStatusResponse {
        let phase = *self.phase.lock();
        let phase = if phase.is_empty() { "idle" } else { phase };
        // Done first, then the totals, and never more done than total: a reader between the
        // scanner's two updates sees a consistent pair.
        let keys_scanned = self.keys_scanned.load(Ordering::Relaxed);
        let keys_total = self.keys_total.load(Ordering::Relaxed).max(keys_scanned);
        let bytes_done = self.bytes_done.load(Ordering::Relaxed);
        let bytes_total = self.bytes_total.load(Ordering::Relaxed).max(bytes_done);
        // Only passes (moving, leaving) have a known total.
        let (rate, eta) = if matches!(phase, "moving" | "leaving") {
            rate_and_eta(
                &self.samples.lock(),
                bytes_done,
                bytes_total,
                Instant::now(),
                RATE_WINDOW,
            )
        } else {
            (0.0, None)
        };
        v1::RebalanceStatusResponse {
            phase: phase.to_owned(),
            passes: self.passes.load(Ordering::Relaxed),
            keys_scanned,
            keys_total,
            keys_sent: self.keys_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            keys_received: self.keys_received.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
            bytes_total,
            bytes_done,
            rate_bytes_per_second: rate,
            eta_seconds: eta,
            handoffs_received: self.handoffs.lock().iter().cloned().collect(),
            keys_scanned_total: self.keys_scanned_total.load(Ordering::Relaxed),
            slots_scanned_total: self.slots_scanned_total.load(Ordering::Relaxed),
            pace_bytes_per_second: self.pacer.rate().unwrap_or(0.0),
            slots_skipped_total: self.slots_skipped_total.load(Ordering::Relaxed),
        }
    }
}

/// The counters of [`RebalanceStats`] a log line reports, taken before and after a pass.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    keys_sent: u64,
    bytes_sent: u64,
    keys_received: u64,
    failures: u64,
    /// Slot sends skipped because the target's slot digest matched.
    slots_skipped: u64,
}

impl Counts {
    fn since(self, before: Counts) -> Counts {
        Counts {
            keys_sent: self.keys_sent.saturating_sub(before.keys_sent),
            bytes_sent: self.bytes_sent.saturating_sub(before.bytes_sent),
            keys_received: self.keys_received.saturating_sub(before.keys_received),
            failures: self.failures.saturating_sub(before.failures),
            slots_skipped: self.slots_skipped.saturating_sub(before.slots_skipped),
        }
    }
}

fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// Whether two replica sets hold the same members (in any order: a new primary among the same
/// members moves nothing).
fn same_members(a: ReplicaSet<'_>, b: ReplicaSet<'_>) -> bool {
    a.len() == b.len() && a.iter().all(|id| b.contains(id))
}

/// The slots a pass towards `new` has to read, given the view each slot was last settled for
/// and which slots the store holds entries of: of those it holds entries of, the ones this node
/// is not a replica of any more (its copies go, strays included), and the ones whose replica
/// set changed where this node has members to send to ([`send_targets`]). A slot this node
/// keeps and sends nothing of (a joiner's own slots) is not read at all.
fn slots_to_move(
    self_id: &str,
    settled: &[Arc<ClusterView>],
    new: &ClusterView,
    held: &[bool],
) -> Vec<u16> {
    (0..SLOTS)
        .filter(|&slot| {
            let i = usize::from(slot);
            if !held[i] || new.ring.is_empty() {
                return false;
            }
            let now = new.ring.slot_replicas(slot);
            let was = settled[i].ring.slot_replicas(slot);
            !now.contains(self_id)
                || (!same_members(was, now) && !send_targets(self_id, was, now, false).is_empty())
        })
        .collect()
}

/// Entries waiting to be sent, per target node.
#[derive(Default)]
struct Outbox {
    batches: Vec<(Member, Vec<v1::VersionedEntry>)>,
    /// Key and value bytes waiting.
    bytes: u64,
    /// Entries to drop once every send of this round succeeded.
    drops: Vec<(Bytes, u64)>,
}

impl Outbox {
    fn add(&mut self, target: &Member, entry: v1::VersionedEntry) {
        self.bytes += (entry.key.len() + entry.value.as_ref().map_or(0, Bytes::len)) as u64;
        match self
            .batches
            .iter_mut()
            .find(|(m, _)| m.node_id == target.node_id)
        {
            Some((_, entries)) => entries.push(entry),
            None => self.batches.push((target.clone(), vec![entry])),
        }
    }

    /// Whether a batch is full: [`PUSH_BATCH`] entries or [`PUSH_BATCH_BYTES`] for one target.
    fn is_full(&self) -> bool {
        self.bytes >= PUSH_BATCH_BYTES || self.batches.iter().any(|(_, e)| e.len() >= PUSH_BATCH)
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.drops.is_empty()
    }
}

/// Key and value bytes of `entries`, as rebalancing counts them.
pub fn entry_bytes(entries: &[v1::VersionedEntry]) -> u64 {
    entries
        .iter()
        .map(|e| (e.key.len() + e.value.as_ref().map_or(0, Bytes::len)) as u64)
        .sum()
}

/// Waits until `bytes` more may be sent: the node's [`pace::Pacer`] at `--rebalance-rate`,
/// slower while the node serves requests and waits for CPUs (`--rebalance-yield`).
pub async fn pace(node: &Context, bytes: u64) {
    let config = node.config();
    let delay = node.rebalance().pacer.delay(
        bytes,
        node.metrics().handled_total(),
        config.rebalance_bytes_per_sec,
        config.rebalance_yield,
    );
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Sends one batch to `target` (`handoff`: this node is leaving and hands them off); returns
/// whether it was acknowledged.
async fn send(
    node: &Context,
    target: &Member,
    entries: Vec<v1::VersionedEntry>,
    handoff: bool,
) -> bool {
    let stats = node.rebalance();
    let n = entries.len() as u64;
    let bytes = entry_bytes(&entries);
    pace(node, bytes).await;
    let result = async {
        let mut client = node.peers().internal_client(&target.cluster_addr)?;
        let mut request = tonic::Request::new(v1::ReplicateRequest {
            from_node_id: node.config().node_id.clone(),
            entries,
            hinted: false,
            handoff,
        });
        request.set_timeout(PUSH_TIMEOUT);
        peer::call(client.replicate(request)).await
    }
    .await;
    match result {
        Ok(_) => {
            stats.keys_sent.fetch_add(n, Ordering::Relaxed);
            stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
            true
        }
        Err(error) => {
            stats.fail(format!(
                "sending {n} entries to {}: {}",
                target.node_id, error.message
            ));
            false
        }
    }
}

/// Flushes the outbox: sends every batch, then drops the entries this node no longer owns if all
/// sends succeeded. Returns whether everything was sent.
async fn flush(node: &Context, outbox: &mut Outbox, handoff: bool) -> bool {
    let mut ok = true;
    outbox.bytes = 0;
    for (target, entries) in std::mem::take(&mut outbox.batches) {
        ok &= send(node, &target, entries, handoff).await;
    }
    let drops = std::mem::take(&mut outbox.drops);
    if ok {
        for (key, version) in drops {
            let _ = node.store().remove_if_version(&key, version);
        }
    }
    ok
}

/// What one pass does: read `slots` (each with the view its data was last settled for) and
/// move their entries to where `new` places them.
struct PassPlan {
    slots: Vec<(u16, Arc<ClusterView>)>,
    new: Arc<ClusterView>,
    /// This node is leaving: everything goes to every replica of `new`, and is dropped.
    leaving: bool,
}

/// How a pass ended.
#[derive(Debug, Default)]
struct PassOutcome {
    /// The slots whose entries were all sent (settled at the pass's view).
    done: Vec<u16>,
    /// Some send failed: the slots it carried are not done.
    failed: bool,
    /// A newer view arrived: the pass stopped after a slot (the rest is for the next pass).
    superseded: bool,
    /// The node is shutting down.
    stopped: bool,
}

/// One pass over the slots of `plan`, in bounded batches. With `views`, a newer view ends it
/// early (after the current slot, once what was read is sent).
async fn pass(
    node: &Context,
    plan: &PassPlan,
    views: Option<&watch::Receiver<Arc<ClusterView>>>,
) -> PassOutcome {
    let stats = node.rebalance();
    let self_id = node.config().node_id.clone();
    let store = node.store();
    let mut outbox = Outbox::default();
    let mut outcome = PassOutcome::default();
    // Slots read whole whose entries may still wait in the outbox: done once it is sent.
    let mut pending: Vec<u16> = Vec::new();
    // Bytes scanned whose entries still wait in the outbox: done once it is flushed.
    let mut scanned_bytes = 0u64;
    for (slot, old) in &plan.slots {
        // Pushes skip nothing yet: skipping the members whose slot digest matches
        // (`Internal.SlotDigests`) lost a write made during a join in the RESP cluster test,
        // and is off until that is understood.
        let skip: &[String] = &[];
        stats.slots_scanned_total.fetch_add(1, Ordering::Relaxed);
        let mut slot_ok = true;
        let mut cursor = Some(SlotCursor::default());
        while let Some(at) = cursor {
            let (items, next) = store.scan_slot(*slot, at, SCAN_STEP);
            cursor = next;
            for (key, item) in items {
                stats.scanned_one();
                scanned_bytes +=
                    charge(key.len(), item.value.as_ref().map_or(0, Bytes::len)) as u64;
                plan_entry(
                    &self_id,
                    old,
                    &plan.new,
                    plan.leaving,
                    skip,
                    key,
                    item,
                    &mut outbox,
                );
                if outbox.is_full() {
                    let ok = flush(node, &mut outbox, plan.leaving).await;
                    settle(&mut pending, ok, &mut outcome);
                    slot_ok &= ok;
                    stats.advance(std::mem::take(&mut scanned_bytes));
                }
            }
            if outbox.is_empty() {
                stats.advance(std::mem::take(&mut scanned_bytes));
            }
            if node.shutdown_token().is_cancelled() && !plan.leaving {
                outcome.stopped = true;
                return outcome;
            }
            tokio::task::yield_now().await;
        }
        if slot_ok {
            pending.push(*slot);
        } else {
            outcome.failed = true;
        }
        if views.is_some_and(|v| v.has_changed().unwrap_or(false)) {
            outcome.superseded = true;
            break;
        }
    }
    let ok = flush(node, &mut outbox, plan.leaving).await;
    settle(&mut pending, ok, &mut outcome);
    stats.advance(scanned_bytes);
    outcome
}

/// After a flush: the slots read whole before it are done if it succeeded.
fn settle(pending: &mut Vec<u16>, ok: bool, outcome: &mut PassOutcome) {
    if ok {
        outcome.done.append(pending);
    } else {
        pending.clear();
        outcome.failed = true;
    }
}

/// The members this node sends a slot's entries to when its replica set goes from `was` to
/// `now` (`leaving`: this node hands everything off): when it stays a replica, the members new
/// to the set (those that were replicas hold the entries already: replication wrote them
/// there); when it leaves or is no longer a replica, every replica, since it is about to drop
/// its copy. Every old replica that stays sends, not just one: with views that differ for a
/// moment between nodes (a member suspected and back), one designated sender left new
/// replicas empty until its own view caught up (seen in the R = 3 join test under load).
fn send_targets<'a>(
    self_id: &str,
    was: ReplicaSet<'a>,
    now: ReplicaSet<'a>,
    leaving: bool,
) -> Vec<&'a str> {
    let others = now.iter().filter(|id| *id != self_id);
    if leaving || !now.contains(self_id) {
        return others.collect();
    }
    others.filter(|id| !was.contains(id)).collect()
}

/// Decides what to do with one entry, whose slot was settled for `old` and now goes where `new`
/// places it: send it ([`send_targets`], but not to the members in `skip`, which hold the
/// slot as this node does), and drop it when this node no longer holds the slot.
#[allow(clippy::too_many_arguments)]
fn plan_entry(
    self_id: &str,
    old: &ClusterView,
    new: &ClusterView,
    leaving: bool,
    skip: &[String],
    key: Bytes,
    item: VersionedItem,
    outbox: &mut Outbox,
) {
    let now_set = new.replicas(&key);
    let was_set = old.replicas(&key);
    let stays = !leaving && now_set.contains(self_id);
    let version = item.version;
    let mut targets = send_targets(self_id, was_set, now_set, leaving);
    targets.retain(|target| !skip.iter().any(|s| s == target));
    if !targets.is_empty() {
        let entry = to_wire(key.clone(), item);
        for replica in targets {
            if let Some(member) = new.topology.member(replica) {
                outbox.add(member, entry.clone());
            }
        }
    }
    if !stays && !now_set.is_empty() {
        outbox.drops.push((key, version));
    }
}

/// The keys and charged bytes a pass over `slots` of the `held` slots is expected to read: the
/// store's totals in proportion (a progress estimate, raised as the scan goes).
fn pass_estimate(node: &Context, slots: usize, held: &[bool]) -> (u64, u64) {
    let held = held.iter().filter(|&&h| h).count().max(1) as u64;
    let share = |total: u64| total.saturating_mul(slots as u64) / held;
    (
        share(node.store().entry_count()),
        share(node.store().stats().used_bytes),
    )
}

/// Follows the node's views and runs a pass for every ring change, until shutdown. Each slot
/// remembers the view it was settled for; a pass reads only the slots the newest view moves
/// (see the module docs). Failed passes are retried after `retry`; a pass superseded by a newer
/// view is followed at once by one towards it.
pub async fn run_rebalancer(node: Arc<Context>, retry: Duration) {
    let mut views = node.watch_view();
    let first = views.borrow_and_update().clone();
    let mut settled: Vec<Arc<ClusterView>> = vec![first.clone(); usize::from(SLOTS)];
    // The digest every slot is settled at, when they all are at one view.
    let mut all_at = Some(first.topology.digest());
    // The view the passes aim at, how many passes aimed at it, and when one last warned.
    let mut target: Option<u64> = None;
    let mut attempts = 0u32;
    let mut warned_at: Option<Instant> = None;
    loop {
        tokio::select! {
            () = node.shutdown_token().cancelled() => return,
            changed = views.changed() => if changed.is_err() { return },
        }
        loop {
            let current = views.borrow_and_update().clone();
            let digest = current.topology.digest();
            if all_at == Some(digest) {
                break;
            }
            let self_id = &node.config().node_id;
            if node.state() == v1::NodeState::Joining
                || !current.ring.nodes().iter().any(|id| **id == **self_id)
            {
                // Not in the ring (yet): what it holds was pulled for the ring it is about to
                // join, so nothing moves until it is in. (The state alone is not enough: a view
                // can arrive just before the state turns Active.)
                settled.fill(current.clone());
                all_at = Some(digest);
                continue;
            }
            if target != Some(digest) {
                target = Some(digest);
                attempts = 0;
                warned_at = None;
            }
            attempts += 1;
            let held = node.store().held_slots();
            let slots = slots_to_move(self_id, &settled, &current, &held);
            // Every slot not read is settled at this view as it is.
            let mut read = vec![false; usize::from(SLOTS)];
            for &slot in &slots {
                read[usize::from(slot)] = true;
            }
            for (slot, view) in settled.iter_mut().enumerate() {
                if !read[slot] {
                    *view = current.clone();
                }
            }
            if slots.is_empty() {
                tracing::debug!(kind = %"push", attempts, "rebalance: no slot moves");
                all_at = Some(digest);
                continue;
            }
            let stats = node.rebalance();
            let before = stats.counts();
            let started = Instant::now();
            let (keys, bytes) = pass_estimate(&node, slots.len(), &held);
            if attempts == 1 {
                tracing::info!(
                    kind = %"push",
                    ring_members = current.ring.nodes().len(),
                    slots = slots.len(),
                    keys,
                    bytes,
                    "rebalance started"
                );
            }
            stats.start_pass(keys, bytes);
            stats.set_phase("moving");
            let plan = PassPlan {
                slots: slots
                    .iter()
                    .map(|&slot| (slot, settled[usize::from(slot)].clone()))
                    .collect(),
                new: current.clone(),
                leaving: false,
            };
            let outcome = pass(&node, &plan, Some(&views)).await;
            stats.passes.fetch_add(1, Ordering::Relaxed);
            stats.set_phase("idle");
            for &slot in &outcome.done {
                settled[usize::from(slot)] = current.clone();
            }
            let done = stats.counts().since(before);
            if outcome.stopped {
                // Stopped for the shutdown: the hand-off (a graceful leave) moves the rest.
                tracing::info!(
                    kind = %"push",
                    keys_sent = done.keys_sent,
                    took_ms = millis(started.elapsed()),
                    "rebalance stopped: the node is shutting down"
                );
                return;
            }
            if !outcome.failed && !outcome.superseded {
                tracing::info!(
                    kind = %"push",
                    slots = slots.len(),
                    keys_scanned = stats.keys_scanned.load(Ordering::Relaxed),
                    keys_sent = done.keys_sent,
                    bytes_sent = done.bytes_sent,
                    slots_skipped = done.slots_skipped,
                    took_ms = millis(started.elapsed()),
                    attempts,
                    "rebalance finished"
                );
                all_at = Some(digest);
                continue;
            }
            all_at = None;
            if !outcome.failed {
                // Superseded: the next pass starts from each slot's own settled view.
                tracing::debug!(
                    kind = %"push",
                    slots_done = outcome.done.len(),
                    slots = slots.len(),
                    "rebalance superseded by a newer view"
                );
                continue;
            }
            if warned_at.is_none_or(|at| at.elapsed() >= RETRY_WARN_INTERVAL) {
                warned_at = Some(Instant::now());
                tracing::warn!(
                    kind = %"push",
                    keys_sent = done.keys_sent,
                    failures = done.failures,
                    error = %stats.last_error.lock(),
                    attempts,
                    retry_in_ms = millis(retry),
                    "rebalance incomplete; retrying"
                );
            } else {
                tracing::debug!(
                    kind = %"push",
                    keys_sent = done.keys_sent,
                    failures = done.failures,
                    attempts,
                    "rebalance incomplete; retrying"
                );
            }
            tokio::select! {
                () = node.shutdown_token().cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
        }
    }
}

/// Why a pull from one member stopped.
#[derive(Debug, thiserror::Error)]
enum PullError {
    /// The call or its stream failed (the message the peer or the transport gave).
    #[error("{}", .0.message)]
    Peer(#[from] PeerError),
    /// This node's store refused an entry for another reason than clock drift.
    #[error(transparent)]
    Store(StoreError),
}

/// Pulls from `members` (the active members gossip shows) the entries this node will hold once
/// it is in the ring (a joiner, before it turns Active), only those above version `since`
/// (0: all; a node back from a restart asks for what changed after its snapshot). Returns the
/// number of entries applied.
pub async fn pull_ranges(node: &Context, members: &[Member], since: u64) -> u64 {
    let stats = node.rebalance();
    stats.set_phase("joining");
    let self_id = node.config().node_id.clone();
    let config = node.config();
    let shares = pull_shares(
        &self_id,
        config.weight.get(),
        config.zone.as_deref(),
        members,
        config.vnodes.get(),
        config.replication_factor.get(),
    );
    let sources = shares.len();
    let before = stats.counts();
    let started = Instant::now();
    tracing::info!(kind = %"pull", sources, since, "rebalance started");
    // From every member at once: each sends its share, paced on its side.
    let self_id = &self_id;
    let pulls = shares.iter().map(|(member, slots)| async move {
        let result = async {
            let mut client = node.peers().internal_client(&member.cluster_addr)?;
            let mut stream = peer::call(client.stream_entries(v1::StreamEntriesRequest {
                target_node_id: self_id.clone(),
                include_tombstones: true,
                max_batch_bytes: 0,
                assume_target_in_ring: true,
                target_weight: node.config().weight.get(),
                slots: slots.clone(),
                target_zone: node.config().zone.clone().unwrap_or_default(),
                since_version: since,
            }))
            .await?;
            let mut count = 0u64;
            let peer = format!("{} ({})", member.node_id, member.grpc_addr);
            while let Some(batch) = peer::next_message(&mut stream).await? {
                let mut refused = 0;
                let mut worst: Option<ClockDrift> = None;
                if batch.flush_floor > node.store().flush_floor() {
                    // A cluster-wide flush this node missed (it was down): what it holds from
                    // before it goes, as it went everywhere else.
                    match node.store().flush_through(batch.flush_floor, node.now_ms()) {
                        Ok(dropped) => tracing::info!(
                            flush_version = batch.flush_floor,
                            dropped,
                            "applied a cluster-wide flush missed while down"
                        ),
                        Err(error) => tracing::warn!(%error, "cannot apply a peer's flush floor"),
                    }
                }
                for entry in batch.entries {
                    match apply_entry(node.store(), &entry, node.now_ms()) {
                        Ok(applied) => count += u64::from(applied),
                        // Skipped, not fatal: the rest of the pull is good data this node should
                        // hold, and the holder keeps its copy (it pushes it again later).
                        Err(StoreError::ClockDrift(drift)) => {
                            refused += 1;
                            if worst.is_none_or(|w| drift.ahead_ms > w.ahead_ms) {
                                worst = Some(drift);
                            }
                        }
                        Err(error) => return Err(PullError::Store(error)),
                    }
                }
                if let Some(drift) = worst {
                    node.metrics().record_versions_refused(
                        VersionSource::StreamEntries,
                        &peer,
                        refused,
                        drift,
                    );
                }
            }
            Ok::<u64, PullError>(count)
        }
        .await;
        match result {
            Ok(count) => count,
            Err(error) => {
                stats.fail(format!("pulling from {}: {error}", member.node_id));
                0
            }
        }
    });
    let received: u64 = futures_util::future::join_all(pulls)
        .await
        .into_iter()
        .sum();
    stats.keys_received.fetch_add(received, Ordering::Relaxed);
    stats.set_phase("idle");
    let done = stats.counts().since(before);
    if done.failures == 0 {
        tracing::info!(
            kind = %"pull",
            sources,
            keys_received = received,
            took_ms = millis(started.elapsed()),
            "rebalance finished"
        );
    } else {
        // Not retried: the members push what the joiner misses once it is in the ring.
        tracing::warn!(
            kind = %"pull",
            sources,
            keys_received = received,
            failures = done.failures,
            error = %stats.last_error.lock(),
            took_ms = millis(started.elapsed()),
            "rebalance incomplete; the members push the rest once this node is active"
        );
    }
    received
}

/// What a joiner asks each member for: every slot it will hold (in the ring of `members` and
/// itself at `weight` in `zone`), each from one of the slot's current replicas among `members` (the
/// first that stays a replica, else the first), so each slot is pulled once. The rings are
/// built from `members` (the active members gossip shows, with the placement settings every
/// member shares: `vnodes` per weight, `replication` copies), not from the view, which may not
/// have caught up with gossip yet. Slots no member holds are asked of every member, and when the
/// ring is over the placement limits every member is asked for everything (an empty list).
/// Members with nothing to send are left out.
fn pull_shares(
    self_id: &str,
    weight: u32,
    zone: Option<&str>,
    members: &[Member],
    vnodes: u32,
    replication: u32,
) -> Vec<(Member, Vec<u32>)> {
    let others: Vec<&Member> = members.iter().filter(|m| m.node_id != self_id).collect();
    let current: Vec<(&str, u32, Option<&str>)> = others
        .iter()
        .map(|m| (m.node_id.as_str(), m.weight, m.zone.as_deref()))
        .collect();
    let weight = weight.max(1);
    let with_self = current.iter().copied().chain([(self_id, weight, zone)]);
    if check_weight(self_id, weight).is_err()
        || check_ring_size(with_self.clone().map(|(_, w, _)| w), vnodes).is_err()
    {
        return others
            .into_iter()
            .map(|m| (m.clone(), Vec::new()))
            .collect();
    }
    let future = Ring::build_zoned(with_self, vnodes, replication);
    let now = Ring::build_zoned(current, vnodes, replication);
    let mut shares: Vec<Vec<u32>> = vec![Vec::new(); others.len()];
    let mut unassigned: Vec<u32> = Vec::new();
    for slot in 0..SLOTS {
        let after = future.slot_replicas(slot);
        if !after.contains(self_id) {
            continue;
        }
        let holder = |stays: bool| {
            now.slot_replicas(slot)
                .iter()
                .filter(|id| !stays || after.contains(id))
                .find_map(|id| others.iter().position(|m| m.node_id == id))
        };
        match holder(true).or_else(|| holder(false)) {
            Some(at) => shares[at].push(u32::from(slot)),
            None => unassigned.push(u32::from(slot)),
        }
    }
    others
        .into_iter()
        .zip(shares)
        .filter_map(|(member, mut slots)| {
            slots.extend_from_slice(&unassigned);
            (!slots.is_empty()).then(|| (member.clone(), slots))
        })
        .collect()
}

/// Hands every entry to the replicas it has in the ring without this node (a graceful leave).
/// Returns whether everything was acknowledged.
pub async fn hand_off(node: &Context) -> bool {
    let stats = node.rebalance();
    let before = stats.counts();
    let started = Instant::now();
    let held = node.store().stats();
    let current = node.view();
    let self_id = node.config().node_id.clone();
    let others: Vec<Member> = current
        .topology
        .members()
        .iter()
        .filter(|m| m.node_id != self_id)
        .cloned()
        .collect();
    let without = ringcache_proto::topology::Topology::new(
        others,
        current.topology.replication_factor(),
        current.topology.vnodes_per_weight(),
    );
    let target = ClusterView::new(without, current.quorum);
    if target.ring.is_empty() {
        tracing::info!(
            kind = %"hand_off",
            keys = held.keys,
            "rebalance skipped: no other member to hand the data to"
        );
        return true;
    }
    tracing::info!(
        kind = %"hand_off",
        ring_members = target.ring.nodes().len(),
        keys = held.keys,
        bytes = held.used_bytes,
        "rebalance started"
    );
    // Every slot this node holds entries of, from the view it serves.
    let held_slots = node.store().held_slots();
    let plan = PassPlan {
        slots: (0..SLOTS)
            .filter(|&s| held_slots[usize::from(s)])
            .map(|s| (s, current.clone()))
            .collect(),
        new: Arc::new(target),
        leaving: true,
    };
    stats.start_pass(node.store().entry_count(), held.used_bytes);
    stats.set_phase("leaving");
    let outcome = pass(node, &plan, None).await;
    let ok = !outcome.failed;
    stats.set_phase("idle");
    let done = stats.counts().since(before);
    if ok {
        tracing::info!(
            kind = %"hand_off",
            keys_scanned = stats.keys_scanned.load(Ordering::Relaxed),
            keys_sent = done.keys_sent,
            bytes_sent = done.bytes_sent,
            slots_skipped = done.slots_skipped,
            took_ms = millis(started.elapsed()),
            "rebalance finished"
        );
    } else {
        tracing::warn!(
            kind = %"hand_off",
            keys_sent = done.keys_sent,
            failures = done.failures,
            error = %stats.last_error.lock(),
            took_ms = millis(started.elapsed()),
            "rebalance incomplete; some keys were not acknowledged"
        );
    }
    ok
}

/// The ring `view` would have with `target_id` (weight `weight`, 0 counting as 1, in `zone`) as
/// a member: what a joiner's StreamEntries asks about. The weight and the size of the resulting
/// ring are checked against the placement limits before anything is allocated.
pub fn ring_with(
    view: &ClusterView,
    target_id: &str,
    weight: u32,
    zone: Option<&str>,
) -> Result<Ring, TopologyError> {
    let topology = &view.topology;
    let weight = weight.max(1);
    check_weight(target_id, weight)?;
    let mut members: Vec<(&str, u32, Option<&str>)> = topology
        .ring_members()
        .map(|m| (m.node_id.as_str(), m.weight, m.zone.as_deref()))
        .collect();
    if !members.iter().any(|(id, _, _)| *id == target_id) {
        members.push((target_id, weight, zone));
    }
    check_ring_size(
        members.iter().map(|(_, w, _)| *w),
        topology.vnodes_per_weight(),
    )?;
    Ok(Ring::build_zoned(
        members,
        topology.vnodes_per_weight(),
        topology.replication_factor(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joiner_pulls_each_of_its_slots_once_from_a_replica_that_stays() {
        let member = |id: &str| Member::for_test(id);
        let members = [member("a"), member("b"), member("c"), member("j")];
        let shares = pull_shares("j", 1, None, &members, 64, 3);
        assert_eq!(shares.len(), 3, "every old member sends a share");
        let old = Ring::build([("a", 1), ("b", 1), ("c", 1)], 64, 3);
        let new = Ring::build([("a", 1), ("b", 1), ("c", 1), ("j", 1)], 64, 3);
        let mut asked = vec![0u32; usize::from(SLOTS)];
        for (source, slots) in &shares {
            for &slot in slots {
                asked[slot as usize] += 1;
                let slot = slot as u16;
                // From a current replica that stays one.
                assert!(old.slot_replicas(slot).contains(&source.node_id));
                assert!(new.slot_replicas(slot).contains(&source.node_id));
            }
        }
        for slot in 0..SLOTS {
            let holds = new.slot_replicas(slot).contains("j");
            assert_eq!(asked[usize::from(slot)], u32::from(holds), "slot {slot}");
        }
        // A lone joiner asks nobody; one over the weight limit asks everyone for everything.
        assert!(pull_shares("j", 1, None, &[member("j")], 64, 3).is_empty());
        let everything = pull_shares("j", u32::MAX, None, &members, 64, 3);
        assert!(everything.len() == 3 && everything.iter().all(|(_, s)| s.is_empty()));
    }

    /// With zones the joiner pulls the slots it will hold in its zone, and the ring a member
    /// computes for a joiner's StreamEntries is the ring the joiner will be in.
    #[test]
    fn a_zoned_joiner_pulls_and_is_sent_the_slots_of_its_zone() {
        let member = |id: &str, zone: &str| Member::for_test(id).with_zone(Some(zone));
        let old = [
            member("a1", "a"),
            member("a2", "a"),
            member("b1", "b"),
            member("b2", "b"),
        ];
        let mut all = old.to_vec();
        all.push(member("j", "b"));
        let future = Ring::new(&ringcache_proto::topology::Topology::new(
            all.clone(),
            2,
            64,
        ));
        let zoneless = Ring::build(all.iter().map(|m| (m.node_id.as_str(), 1)), 64, 2);
        let differs = (0..SLOTS)
            .filter(|&s| {
                future.slot_replicas(s).contains("j") != zoneless.slot_replicas(s).contains("j")
            })
            .count();
        assert!(differs > 0, "zones change which slots the joiner holds");

        let shares = pull_shares("j", 1, Some("b"), &all, 64, 2);
        let mut asked = vec![0u32; usize::from(SLOTS)];
        for (_, slots) in &shares {
            for &slot in slots {
                asked[slot as usize] += 1;
            }
        }
        for slot in 0..SLOTS {
            let holds = future.slot_replicas(slot).contains("j");
            assert_eq!(asked[usize::from(slot)], u32::from(holds), "slot {slot}");
        }

        let view = ClusterView::new(
            ringcache_proto::topology::Topology::new(old.to_vec(), 2, 64),
            crate::known::Quorum::alone(),
        );
        let assumed = ring_with(&view, "j", 1, Some("b")).unwrap();
        for slot in 0..SLOTS {
            assert_eq!(
                assumed.slot_replicas(slot).iter().collect::<Vec<_>>(),
                future.slot_replicas(slot).iter().collect::<Vec<_>>(),
                "slot {slot}"
            );
        }
    }

    #[test]
    fn old_replicas_send_a_moved_slot_to_the_new_members_and_leavers_to_all() {
        let old = Ring::build([("a", 1), ("b", 1), ("c", 1)], 64, 3);
        let new = Ring::build([("a", 1), ("b", 1), ("c", 1), ("j", 1)], 64, 3);
        let moved = (0..SLOTS)
            .find(|&s| new.slot_replicas(s).contains("j"))
            .expect("the joiner holds slots");
        let (was, now) = (old.slot_replicas(moved), new.slot_replicas(moved));
        for id in ["a", "b", "c"] {
            let targets = send_targets(id, was, now, false);
            if now.contains(id) {
                assert_eq!(targets, ["j"], "{id} stays and sends to the new member");
            } else {
                assert_eq!(targets.len(), 3, "{id} drops its copy: every replica");
            }
        }
        assert!(
            send_targets("j", was, now, false).is_empty(),
            "the joiner's own first pass sends nothing to the old replicas"
        );
        // Leaving: every replica of the new ring.
        let others = now.iter().filter(|id| *id != "a").count();
        assert_eq!(send_targets("a", was, now, true).len(), others);
        // A stray copy (neither before nor now a replica) goes to every replica.
        assert_eq!(send_targets("x", was, now, false).len(), 3);
        // A slot whose set did not change sends nothing.
        let same = (0..SLOTS)
            .find(|&s| !new.slot_replicas(s).contains("j"))
            .unwrap();
        for id in ["a", "b", "c"] {
            assert!(
                send_targets(id, old.slot_replicas(same), new.slot_replicas(same), false)
                    .is_empty()
            );
        }
    }

    fn samples(now: Instant, points: &[(u64, u64)]) -> VecDeque<(Instant, u64)> {
        // (seconds before now, bytes done then)
        points
            .iter()
            .map(|&(ago, done)| (now - Duration::from_secs(ago), done))
            .collect()
    }

    #[test]
    fn the_eta_is_the_bytes_left_over_the_recent_rate() {
        let now = Instant::now();
        let window = Duration::from_secs(10);
        // 30 s ago: 0; 10 s ago: 1000; now: 3000 of 7000. The rate counts the last 10 s only.
        let points = samples(now, &[(30, 0), (10, 1000), (2, 2500)]);
        let (rate, eta) = rate_and_eta(&points, 3000, 7000, now, window);
        assert!((rate - 200.0).abs() < 1e-9, "{rate}");
        assert_eq!(eta, Some(20.0));
        // Younger than the window: the oldest sample is the base.
        let points = samples(now, &[(4, 0)]);
        let (rate, eta) = rate_and_eta(&points, 400, 1000, now, window);
        assert!((rate - 100.0).abs() < 1e-9, "{rate}");
        assert_eq!(eta, Some(6.0));
    }

    #[test]
    fn no_progress_means_no_eta_and_nothing_left_means_zero() {
        let now = Instant::now();
        let window = Duration::from_secs(10);
        let stalled = samples(now, &[(20, 0), (15, 500)]);
        assert_eq!(
            rate_and_eta(&stalled, 500, 1000, now, window),
            (0.0, None),
            "nothing done in the last 10 s"
        );
        assert_eq!(
            rate_and_eta(&VecDeque::new(), 0, 1000, now, window),
            (0.0, None)
        );
        let finished = samples(now, &[(5, 0)]);
        assert_eq!(rate_and_eta(&finished, 1000, 900, now, window).1, Some(0.0));
    }

    #[test]
    fn done_never_exceeds_total_when_the_scan_sees_more_than_the_pass_started_with() {
        let stats = RebalanceStats::default();
        stats.start_pass(2, 100);
        for _ in 0..3 {
            stats.scanned_one();
        }
        stats.advance(150);
        let wire = stats.to_wire();
        assert_eq!((wire.keys_scanned, wire.keys_total), (3, 3));
        assert_eq!((wire.bytes_done, wire.bytes_total), (150, 150));
        // A new pass starts over.
        stats.start_pass(5, 500);
        let wire = stats.to_wire();
        assert_eq!((wire.keys_scanned, wire.keys_total), (0, 5));
        assert_eq!((wire.bytes_done, wire.bytes_total), (0, 500));
    }

    #[test]
    fn handoffs_are_counted_per_sender_for_the_most_recent_senders() {
        let stats = RebalanceStats::default();
        stats.record_handoff("n3", 10, 100);
        stats.record_handoff("n4", 1, 5);
        stats.record_handoff("n3", 2, 20);
        let wire = stats.to_wire();
        let counted = |id: &str| {
            wire.handoffs_received
                .iter()
                .find(|h| h.from_node_id == id)
                .map(|h| (h.keys, h.bytes))
        };
        assert_eq!(counted("n3"), Some((12, 120)));
        assert_eq!(counted("n4"), Some((1, 5)));
        for i in 0..MAX_HANDOFF_SENDERS {
            stats.record_handoff(&format!("x{i}"), 1, 1);
        }
        let wire = stats.to_wire();
        assert_eq!(wire.handoffs_received.len(), MAX_HANDOFF_SENDERS);
        assert!(
            !wire
                .handoffs_received
                .iter()
                .any(|h| h.from_node_id == "n3"),
            "the least recent sender is forgotten first"
        );
    }

    #[test]
    fn progress_samples_stay_bounded_and_keep_a_base_older_than_the_window() {
        let stats = RebalanceStats::default();
        stats.start_pass(10, 10_000);
        for _ in 0..(MAX_SAMPLES * 2) {
            stats.advance(1);
        }
        assert!(stats.samples.lock().len() <= MAX_SAMPLES);
        assert_eq!(
            stats.bytes_done.load(Ordering::Relaxed),
            2 * MAX_SAMPLES as u64
        );
        // Idle: no rate and no ETA, whatever the samples say.
        let wire = stats.to_wire();
        assert_eq!((wire.phase.as_str(), wire.eta_seconds), ("idle", None));
        stats.set_phase("moving");
        let wire = stats.to_wire();
        assert_eq!(wire.bytes_total, 10_000);
        assert!(
            wire.rate_bytes_per_second > 0.0 && wire.eta_seconds.is_some(),
            "{wire:?}"
        );
    }
}
