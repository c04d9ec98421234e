//! Rebalancing: moving data so every key is on its replicas again after the ring changes.
//!
//! Push model, run by every node on every new view (`run_rebalancer`): one pass scans the local
//! store and, for each entry, compares the key's replica set under the view the node last
//! rebalanced for with the current one. Replicas that are new for the key get the entry
//! (`Internal.Replicate`, last-writer-wins, so repeats are harmless); when this node is no longer
//! a replica it pushes the entry to every current replica and then drops it
//! (`remove_if_version`, so a write that raced the pass is kept). This one rule covers:
//! - a join: the old holders push to the joiner the keys whose set now includes it;
//! - a death: the survivors push each key of the dead node to its new R-th replica;
//! - a leave: the leaver pushes everything to the ring without itself ([`hand_off`]).
//!
//! A joiner also pulls before it turns Active ([`pull_ranges`]: `Internal.StreamEntries` with
//! `assume_target_in_ring`), so it serves reads filled. Failed sends are counted and the pass is
//! retried later (resumable: it starts over, and already-moved keys are ignored by version).
//! Transfer is throttled to `rebalance_bytes_per_sec`. Progress is in [`RebalanceStats`]: keys
//! scanned, and bytes done of the bytes held when the pass started, where an entry is done once
//! it is scanned and, if it had to move, its batch was sent. The ETA divides the bytes left by
//! the rate of the last [`RATE_WINDOW`] (the transfer rate as the throttle and the peers allow).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use ringcache_proto::placement::Ring;
use ringcache_proto::topology::{Member, TopologyError, check_ring_size, check_weight};
use ringcache_proto::v1;
use tokio_stream::StreamExt;

use crate::context::Context;
use crate::metrics::VersionSource;
use crate::replication::wire::{apply_entry, to_wire};
use crate::store::{ClockDrift, StoreError, VersionedItem, charge};
use crate::view::ClusterView;

/// Entries read from the store per scan step.
const SCAN_STEP: usize = 512;
/// Entries per Replicate batch.
const PUSH_BATCH: usize = 256;
/// Longest wait for one Replicate batch.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// The rate behind the ETA is measured over this much of the latest progress.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Most progress samples kept for the rate.
const MAX_SAMPLES: usize = 256;
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
    /// Entries the current pass scans: those held when it started, tombstones included (the
    /// scan visits them too), raised when writes during the pass make the scan see more.
    pub keys_total: AtomicU64,
    /// Entries sent to other nodes.
    pub keys_sent: AtomicU64,
    /// Key and value bytes sent.
    pub bytes_sent: AtomicU64,
    /// Entries received by pulls.
    pub keys_received: AtomicU64,
    /// Failed sends (retried by the next pass).
    pub failures: AtomicU64,
    /// Charged bytes held when the current pass started, raised when writes during the pass
    /// make the bytes done exceed it.
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
        }
    }
}

/// Entries waiting to be sent, per target node.
#[derive(Default)]
struct Outbox {
    batches: Vec<(Member, Vec<v1::VersionedEntry>)>,
    /// Entries to drop once every send of this round succeeded.
    drops: Vec<(Bytes, u64)>,
}

impl Outbox {
    fn add(&mut self, target: &Member, entry: v1::VersionedEntry) {
        match self
            .batches
            .iter_mut()
            .find(|(m, _)| m.node_id == target.node_id)
        {
            Some((_, entries)) => entries.push(entry),
            None => self.batches.push((target.clone(), vec![entry])),
        }
    }

    fn len(&self) -> usize {
        self.batches.iter().map(|(_, e)| e.len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// Key and value bytes of `entries`, as rebalancing counts them.
pub fn entry_bytes(entries: &[v1::VersionedEntry]) -> u64 {
    entries
        .iter()
        .map(|e| (e.key.len() + e.value.as_ref().map_or(0, Bytes::len)) as u64)
        .sum()
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
    throttle(node, bytes).await;
    let result = async {
        let mut client = node.peers().internal_client(&target.cluster_addr)?;
        let mut request = tonic::Request::new(v1::ReplicateRequest {
            from_node_id: node.config().node_id.clone(),
            entries,
            hinted: false,
            handoff,
        });
        request.set_timeout(PUSH_TIMEOUT);
        client.replicate(request).await
    }
    .await;
    match result {
        Ok(_) => {
            stats.keys_sent.fetch_add(n, Ordering::Relaxed);
            stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
            true
        }
        Err(status) => {
            stats.fail(format!(
                "sending {n} entries to {}: {}",
                target.node_id,
                status.message()
            ));
            false
        }
    }
}

/// Sleeps long enough that `bytes` more stay under the configured rate.
async fn throttle(node: &Context, bytes: u64) {
    let rate = node.config().rebalance_bytes_per_sec;
    if rate == 0 || bytes == 0 {
        return;
    }
    tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / rate as f64)).await;
}

/// Flushes the outbox: sends every batch, then drops the entries this node no longer owns if all
/// sends succeeded. Returns whether everything was sent.
async fn flush(node: &Context, outbox: &mut Outbox, handoff: bool) -> bool {
    let mut ok = true;
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

/// One pass: moves every entry whose replica set differs between `old` and `new`. Returns
/// whether every send succeeded.
async fn pass(node: &Context, old: &ClusterView, new: &ClusterView, leaving: bool) -> bool {
    let stats = node.rebalance();
    let self_id = node.config().node_id.clone();
    // The scan visits tombstones too, so they count in its total.
    stats.start_pass(node.store().entry_count(), node.store().stats().used_bytes);
    let mut outbox = Outbox::default();
    let mut ok = true;
    let store = node.store();
    // Bytes scanned whose entries still wait in the outbox: done once it is flushed.
    let mut scanned_bytes = 0u64;
    for shard in 0..store.shard_count() {
        let mut cursor = Some(0);
        while let Some(at) = cursor {
            let (items, next) = store.scan(shard, at, SCAN_STEP);
            cursor = next;
            for (key, item) in items {
                stats.scanned_one();
                scanned_bytes +=
                    charge(key.len(), item.value.as_ref().map_or(0, Bytes::len)) as u64;
                plan(&self_id, old, new, leaving, key, item, &mut outbox);
            }
            if outbox.len() >= PUSH_BATCH {
                ok &= flush(node, &mut outbox, leaving).await;
            }
            if outbox.is_empty() {
                stats.advance(std::mem::take(&mut scanned_bytes));
            }
            if node.shutdown_token().is_cancelled() && !leaving {
                return false;
            }
            tokio::task::yield_now().await;
        }
    }
    ok &= flush(node, &mut outbox, leaving).await;
    stats.advance(scanned_bytes);
    ok
}

/// Decides what to do with one entry.
#[allow(clippy::too_many_arguments)]
fn plan(
    self_id: &str,
    old: &ClusterView,
    new: &ClusterView,
    leaving: bool,
    key: Bytes,
    item: VersionedItem,
    outbox: &mut Outbox,
) {
    let now_set = new.replicas(&key);
    let was_set = old.replicas(&key);
    let stays = !leaving && now_set.contains(self_id);
    let version = item.version;
    let entry = to_wire(key.clone(), item);
    for replica in now_set.iter() {
        if replica == self_id {
            continue;
        }
        // Still a replica: send only to the members that are new for this key. Not a replica
        // any more: send to every replica, then drop.
        if stays && was_set.contains(replica) {
            continue;
        }
        if let Some(member) = new.topology.member(replica) {
            outbox.add(member, entry.clone());
        }
    }
    if !stays && !now_set.is_empty() {
        outbox.drops.push((key, version));
    }
}

/// Follows the node's views and runs a pass for every ring change, until shutdown. Failed passes
/// are retried after `retry` with the same starting view.
pub async fn run_rebalancer(node: Arc<Context>, retry: Duration) {
    let mut views = node.watch_view();
    let mut settled = views.borrow_and_update().clone();
    loop {
        tokio::select! {
            () = node.shutdown_token().cancelled() => return,
            changed = views.changed() => if changed.is_err() { return },
        }
        loop {
            let current = views.borrow_and_update().clone();
            if current.topology.digest() == settled.topology.digest() {
                break;
            }
            let self_id = &node.config().node_id;
            if node.state() == v1::NodeState::Joining
                || !current.ring.nodes().iter().any(|id| **id == **self_id)
            {
                // Not in the ring (yet): what it holds was pulled for the ring it is about to
                // join, so nothing moves until it is in. (The state alone is not enough: a view
                // can arrive just before the state turns Active.)
                settled = current;
                continue;
            }
            node.rebalance().set_phase("moving");
            let ok = pass(&node, &settled, &current, false).await;
            node.rebalance().passes.fetch_add(1, Ordering::Relaxed);
            node.rebalance().set_phase("idle");
            if ok {
                settled = current;
            } else {
                tokio::select! {
                    () = node.shutdown_token().cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
            }
        }
    }
}

/// Pulls from `members` (the active members gossip shows) the entries this node will hold once
/// it is in the ring (a joiner, before it turns Active). Returns the number of entries applied.
pub async fn pull_ranges(node: &Context, members: &[Member]) -> u64 {
    let stats = node.rebalance();
    stats.set_phase("joining");
    let self_id = node.config().node_id.clone();
    let mut received = 0;
    for member in members.iter().filter(|m| m.node_id != self_id) {
        let result = async {
            let mut client = node.peers().internal_client(&member.cluster_addr)?;
            let mut stream = client
                .stream_entries(v1::StreamEntriesRequest {
                    target_node_id: self_id.clone(),
                    include_tombstones: true,
                    max_batch_bytes: 0,
                    assume_target_in_ring: true,
                    target_weight: node.config().weight.get(),
                })
                .await?
                .into_inner();
            let mut count = 0u64;
            let peer = format!("{} ({})", member.node_id, member.grpc_addr);
            while let Some(batch) = stream.next().await {
                let mut refused = 0;
                let mut worst: Option<ClockDrift> = None;
                for entry in batch?.entries {
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
                        Err(error) => return Err(tonic::Status::from(error)),
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
            Ok::<u64, tonic::Status>(count)
        }
        .await;
        match result {
            Ok(count) => received += count,
            Err(status) => stats.fail(format!(
                "pulling from {}: {}",
                member.node_id,
                status.message()
            )),
        }
    }
    stats.keys_received.fetch_add(received, Ordering::Relaxed);
    stats.set_phase("idle");
    received
}

/// Hands every entry to the replicas it has in the ring without this node (a graceful leave).
/// Returns whether everything was acknowledged.
pub async fn hand_off(node: &Context) -> bool {
    node.rebalance().set_phase("leaving");
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
    let ok = if target.ring.is_empty() {
        true
    } else {
        pass(node, &current, &target, true).await
    };
    node.rebalance().set_phase("idle");
    ok
}

/// The ring `view` would have with `target_id` (weight `weight`, 0 counting as 1) as a member:
/// what a joiner's StreamEntries asks about. The weight and the size of the resulting ring are
/// checked against the placement limits before anything is allocated.
pub fn ring_with(view: &ClusterView, target_id: &str, weight: u32) -> Result<Ring, TopologyError> {
    let topology = &view.topology;
    let weight = weight.max(1);
    check_weight(target_id, weight)?;
    let mut members: Vec<(&str, u32)> = topology
        .ring_members()
        .map(|m| (m.node_id.as_str(), m.weight))
        .collect();
    if !members.iter().any(|(id, _)| *id == target_id) {
        members.push((target_id, weight));
    }
    check_ring_size(
        members.iter().map(|(_, w)| *w),
        topology.vnodes_per_weight(),
    )?;
    Ok(Ring::build(
        members,
        topology.vnodes_per_weight(),
        topology.replication_factor(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
