//! Hinted handoff: writes a replica missed, kept per target node and replayed when it is back.
//!
//! [`HintQueues`] is the bounded store (no I/O, time passed in): one FIFO per target node id,
//! limited by bytes and by age; over a limit the oldest hints go first and are counted. Every hint
//! has a sequence number, so the replay task can send a prefix of a queue and remove exactly
//! that prefix once the target acknowledged it, whatever was added or dropped meanwhile.
//!
//! [`replay_hints_task`] replays: on every new view and every probe interval, for each target
//! with hints that is Active in the view, it sends batches with `Replicate { hinted: true }` until
//! the queue is empty or a batch fails (the rest waits for the next round).
//!
//! **Log lines** (INFO, field `target`): `hint replay started` (`pending` hints and their
//! `bytes`) when hints for a target start to flow after it became Active again, and `hint
//! replay finished` (`replayed`, `took_ms`, `failed_rounds`) once its queue is empty, however
//! many rounds that took. The first failed round of a replay logs `hint replay interrupted;
//! retrying` at WARN (`replayed` so far, `remaining`, `error`), later ones at DEBUG, so a target
//! that stays unreachable costs one line, not one per probe interval. A replay whose remaining
//! hints were all dropped (age or size limit) ends with `hint replay stopped`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcache_proto::topology::NodeState;
use ringcache_proto::v1;
use tokio::task::JoinSet;

use super::{Replicator, send_replicate};
use crate::context::Context;

/// Bytes charged per hint beyond its key and value (entry, version, expiry, queue slot).
pub(super) const HINT_OVERHEAD_BYTES: usize = 64;
/// Most entries in one replayed batch.
const REPLAY_BATCH_ENTRIES: usize = 256;
/// Most key and value bytes in one replayed batch (further capped by the message limit).
const REPLAY_BATCH_BYTES: usize = 1024 * 1024;
/// Most batches sent to one target in one round, so a round always ends.
const REPLAY_MAX_BATCHES_PER_ROUND: usize = 1024;

/// Hints waiting, as the gauges show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HintStats {
    /// Entries waiting, all targets together.
    pub entries: usize,
    /// Their charged bytes.
    pub bytes: usize,
}

/// Hints dropped by one operation, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Dropped {
    /// Dropped to stay under the per-target byte limit.
    pub(super) max_bytes: u64,
    /// Dropped because they were older than the age limit.
    pub(super) max_age: u64,
}

#[derive(Debug)]
struct Hint {
    seq: u64,
    queued_at_ms: u64,
    bytes: usize,
    entry: v1::VersionedEntry,
}

#[derive(Debug, Default)]
struct Queue {
    hints: VecDeque<Hint>,
    bytes: usize,
}

impl Queue {
    fn pop_front(&mut self) -> Option<Hint> {
        let hint = self.hints.pop_front()?;
        self.bytes -= hint.bytes;
        Some(hint)
    }
}

/// One bounded FIFO of hints per target node id.
#[derive(Debug)]
pub(super) struct HintQueues {
    max_bytes: usize,
    max_age_ms: u64,
    queues: BTreeMap<String, Queue>,
    next_seq: u64,
    stats: HintStats,
}

fn charge(entry: &v1::VersionedEntry) -> usize {
    entry.key.len() + entry.value.as_ref().map_or(0, |v| v.len()) + HINT_OVERHEAD_BYTES
}

impl HintQueues {
    pub(super) fn new(max_bytes: usize, max_age_ms: u64) -> Self {
        Self {
            max_bytes,
            max_age_ms,
            queues: BTreeMap::new(),
            next_seq: 0,
            stats: HintStats::default(),
        }
    }

    pub(super) fn stats(&self) -> HintStats {
        self.stats
    }

    /// When the oldest pending hint was queued (unix ms), if any hint is pending.
    pub(super) fn oldest_queued_at_ms(&self) -> Option<u64> {
        self.queues
            .values()
            .filter_map(|q| q.hints.front().map(|h| h.queued_at_ms))
            .min()
    }

    pub(super) fn pending_for(&self, target: &str) -> usize {
        self.queues.get(target).map_or(0, |q| q.hints.len())
    }

    /// The charged bytes of the hints of `target`.
    fn bytes_for(&self, target: &str) -> usize {
        self.queues.get(target).map_or(0, |q| q.bytes)
    }

    /// Targets with hints, in id order.
    pub(super) fn targets(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }

    /// Queues `entries` for `target`, dropping the oldest hints over the byte limit.
    pub(super) fn push(
        &mut self,
        target: &str,
        entries: Vec<v1::VersionedEntry>,
        now_ms: u64,
    ) -> Dropped {
        let mut dropped = self.expire(now_ms);
        if !self.queues.contains_key(target) {
            self.queues.insert(target.to_owned(), Queue::default());
        }
        let queue = self.queues.get_mut(target).expect("just inserted");
        for entry in entries {
            let bytes = charge(&entry);
            if bytes > self.max_bytes {
                dropped.max_bytes += 1;
                continue;
            }
            while queue.bytes + bytes > self.max_bytes {
                let Some(old) = queue.pop_front() else { break };
                self.stats.entries -= 1;
                self.stats.bytes -= old.bytes;
                dropped.max_bytes += 1;
            }
            self.next_seq += 1;
            queue.bytes += bytes;
            queue.hints.push_back(Hint {
                seq: self.next_seq,
                queued_at_ms: now_ms,
                bytes,
                entry,
            });
            self.stats.entries += 1;
            self.stats.bytes += bytes;
        }
        self.remove_empty();
        dropped
    }

    /// Drops hints older than the age limit.
    pub(super) fn expire(&mut self, now_ms: u64) -> Dropped {
        let mut dropped = Dropped::default();
        for queue in self.queues.values_mut() {
            while queue
                .hints
                .front()
                .is_some_and(|h| now_ms.saturating_sub(h.queued_at_ms) > self.max_age_ms)
            {
                let old = queue.pop_front().expect("front exists");
                self.stats.entries -= 1;
                self.stats.bytes -= old.bytes;
                dropped.max_age += 1;
            }
        }
        self.remove_empty();
        dropped
    }

    /// The oldest hints of `target`, at most `max_entries` and about `max_bytes` (at least one),
    /// and the sequence number to acknowledge them with. They stay queued until [`Self::ack`].
    pub(super) fn peek(
        &self,
        target: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> (Vec<v1::VersionedEntry>, u64) {
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut last = 0;
        if let Some(queue) = self.queues.get(target) {
            for hint in &queue.hints {
                if batch.len() >= max_entries
                    || (!batch.is_empty() && bytes + hint.bytes > max_bytes)
                {
                    break;
                }
                bytes += hint.bytes;
                last = hint.seq;
                batch.push(hint.entry.clone());
            }
        }
        (batch, last)
    }

    /// Removes the hints of `target` up to sequence number `up_to` (delivered); returns how many.
    pub(super) fn ack(&mut self, target: &str, up_to: u64) -> usize {
        let mut removed = 0;
        if let Some(queue) = self.queues.get_mut(target) {
            while queue.hints.front().is_some_and(|h| h.seq <= up_to) {
                let hint = queue.pop_front().expect("front exists");
                self.stats.entries -= 1;
                self.stats.bytes -= hint.bytes;
                removed += 1;
            }
        }
        self.remove_empty();
        removed
    }

    fn remove_empty(&mut self) {
        self.queues.retain(|_, q| !q.hints.is_empty());
    }
}

impl Replicator {
    /// Keeps `entries` as hints for `target`, updating the metrics.
    pub(super) fn queue_hints(
        &self,
        node: &Context,
        target: &str,
        entries: Vec<v1::VersionedEntry>,
    ) {
        let mut hints = self.hints.lock();
        let dropped = hints.push(target, entries, node.now_ms());
        record(node, &hints, dropped);
    }

    /// Drops hints past their age, updating the metrics.
    fn expire_hints(&self, node: &Context) {
        let mut hints = self.hints.lock();
        let dropped = hints.expire(node.now_ms());
        record(node, &hints, dropped);
    }
}

fn record(node: &Context, hints: &HintQueues, dropped: Dropped) {
    let metrics = node.metrics();
    metrics.record_hints_dropped("max_bytes", dropped.max_bytes);
    metrics.record_hints_dropped("max_age", dropped.max_age);
    let stats = hints.stats();
    metrics.set_hints_pending(stats.entries, stats.bytes);
}

/// Replays hints to their targets on every new view and every probe interval, until shutdown.
pub async fn replay_hints_task(node: Arc<Context>) {
    let mut views = node.watch_view();
    let mut tick = tokio::time::interval(node.config().probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut log = ReplayLog::default();
    loop {
        tokio::select! {
            () = node.shutdown_token().cancelled() => return,
            changed = views.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        replay_round(&node, &mut log).await;
    }
}

/// One round: every target with hints that is Active in the current view, in parallel.
async fn replay_round(node: &Arc<Context>, log: &mut ReplayLog) {
    let replicator = node.replicator();
    replicator.expire_hints(node);
    let targets = replicator.hints.lock().targets();
    for (target, replayed) in log.end_absent(&targets) {
        tracing::info!(
            %target,
            replayed,
            "hint replay stopped: the remaining hints were dropped (age or size limit)"
        );
    }
    if targets.is_empty() {
        return;
    }
    let view = node.view();
    let mut rounds = JoinSet::new();
    for target in targets {
        let Some(member) = view.topology.member(&target) else {
            continue;
        };
        if member.state != NodeState::Active || target == node.config().node_id {
            continue;
        }
        if log.begin(&target, Instant::now()) {
            let hints = replicator.hints.lock();
            tracing::info!(
                %target,
                pending = hints.pending_for(&target),
                bytes = hints.bytes_for(&target),
                "hint replay started"
            );
        }
        let addr = member.cluster_addr.clone();
        let node = node.clone();
        crate::logging::spawn_in(&mut rounds, async move {
            let outcome = replay_to(&node, &target, &addr).await;
            (target, outcome)
        });
    }
    while let Some(joined) = rounds.join_next().await {
        let Ok((target, outcome)) = joined else {
            continue;
        };
        match log.end_round(&target, outcome, Instant::now()) {
            Some(ReplayEvent::Finished {
                replayed,
                took,
                failed_rounds,
            }) => tracing::info!(
                %target,
                replayed,
                took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                failed_rounds,
                "hint replay finished"
            ),
            Some(ReplayEvent::Interrupted {
                replayed,
                remaining,
                error,
                first,
            }) => {
                if first {
                    tracing::warn!(%target, replayed, remaining, %error, "hint replay interrupted; retrying");
                } else {
                    tracing::debug!(%target, replayed, remaining, %error, "hint replay interrupted; retrying");
                }
            }
            None => {}
        }
    }
}

/// How one round of replay to a target went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RoundOutcome {
    /// Hints acknowledged in this round.
    replayed: u64,
    /// Hints still queued for the target after it.
    remaining: usize,
    /// Why it stopped early, if a batch failed.
    failure: Option<String>,
}

/// One target's replay: from the round that first sent it hints until its queue is empty.
#[derive(Debug, Clone, Copy)]
struct Episode {
    started: Instant,
    replayed: u64,
    failed_rounds: u32,
}

/// What a round's end says about a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReplayEvent {
    /// The queue is empty.
    Finished {
        replayed: u64,
        took: Duration,
        failed_rounds: u32,
    },
    /// A batch failed; `first` for the first failed round of the replay.
    Interrupted {
        replayed: u64,
        remaining: usize,
        error: String,
        first: bool,
    },
}

/// The replays in progress, per target, so a replay logs one start and one end however many
/// rounds it takes (see the module docs).
#[derive(Debug, Default)]
struct ReplayLog {
    episodes: BTreeMap<String, Episode>,
}

impl ReplayLog {
    /// A round is about to send hints to `target`: whether that starts a replay.
    fn begin(&mut self, target: &str, now: Instant) -> bool {
        if self.episodes.contains_key(target) {
            return false;
        }
        self.episodes.insert(
            target.to_owned(),
            Episode {
                started: now,
                replayed: 0,
                failed_rounds: 0,
            },
        );
        true
    }

    /// Takes in how a round to `target` went.
    fn end_round(
        &mut self,
        target: &str,
        outcome: RoundOutcome,
        now: Instant,
    ) -> Option<ReplayEvent> {
        let episode = self.episodes.get_mut(target)?;
        episode.replayed += outcome.replayed;
        if let Some(error) = outcome.failure {
            episode.failed_rounds += 1;
            return Some(ReplayEvent::Interrupted {
                replayed: episode.replayed,
                remaining: outcome.remaining,
                error,
                first: episode.failed_rounds == 1,
            });
        }
        if outcome.remaining > 0 {
            return None;
        }
        let episode = self.episodes.remove(target)?;
        Some(ReplayEvent::Finished {
            replayed: episode.replayed,
            took: now.saturating_duration_since(episode.started),
            failed_rounds: episode.failed_rounds,
        })
    }

    /// Ends the replays of targets that have no hints any more (dropped, not replayed):
    /// returns each with what it had replayed.
    fn end_absent(&mut self, targets: &[String]) -> Vec<(String, u64)> {
        let gone: Vec<String> = self
            .episodes
            .keys()
            .filter(|target| !targets.contains(target))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|target| {
                let episode = self.episodes.remove(&target)?;
                Some((target, episode.replayed))
            })
            .collect()
    }
}

/// Sends the hints of `target` in batches until none is left, one fails, or the round's batch
/// limit is reached.
async fn replay_to(node: &Context, target: &str, addr: &str) -> RoundOutcome {
    let max_bytes = REPLAY_BATCH_BYTES.min(node.config().max_message_bytes / 2);
    let mut outcome = RoundOutcome::default();
    for _ in 0..REPLAY_MAX_BATCHES_PER_ROUND {
        let (batch, up_to) =
            node.replicator()
                .hints
                .lock()
                .peek(target, REPLAY_BATCH_ENTRIES, max_bytes);
        if batch.is_empty() {
            break;
        }
        match send_replicate(node, Some(addr), batch, true).await {
            Ok(()) => {
                let mut hints = node.replicator().hints.lock();
                let removed = hints.ack(target, up_to);
                node.metrics().record_hints_replayed(removed as u64);
                record(node, &hints, Dropped::default());
                outcome.replayed += removed as u64;
            }
            Err(failure) => {
                outcome.failure = Some(failure.to_string());
                break;
            }
        }
    }
    outcome.remaining = node.replicator().hints.lock().pending_for(target);
    outcome
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(key: &str, value: &str, version: u64) -> v1::VersionedEntry {
        v1::VersionedEntry {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            version,
            expires_at_ms: None,
        }
    }

    fn keys(batch: &[v1::VersionedEntry]) -> Vec<&[u8]> {
        batch.iter().map(|e| &e.key[..]).collect()
    }

    #[test]
    fn a_replay_logs_one_start_one_interruption_and_one_end_however_many_rounds_it_takes() {
        let mut log = ReplayLog::default();
        let start = Instant::now();
        assert!(log.begin("n2", start));
        assert!(
            !log.begin("n2", start),
            "the next round continues the replay"
        );
        let failed = RoundOutcome {
            replayed: 10,
            remaining: 5,
            failure: Some("unreachable".to_owned()),
        };
        assert_eq!(
            log.end_round("n2", failed.clone(), start),
            Some(ReplayEvent::Interrupted {
                replayed: 10,
                remaining: 5,
                error: "unreachable".to_owned(),
                first: true
            })
        );
        let again = RoundOutcome {
            replayed: 0,
            ..failed
        };
        assert!(matches!(
            log.end_round("n2", again, start),
            Some(ReplayEvent::Interrupted { first: false, .. })
        ));
        // The round's batch limit, hints left, no failure: nothing to say.
        let partial = RoundOutcome {
            replayed: 3,
            remaining: 2,
            failure: None,
        };
        assert_eq!(log.end_round("n2", partial, start), None);
        let later = start + Duration::from_secs(3);
        let last = RoundOutcome {
            replayed: 2,
            remaining: 0,
            failure: None,
        };
        assert_eq!(
            log.end_round("n2", last, later),
            Some(ReplayEvent::Finished {
                replayed: 15,
                took: Duration::from_secs(3),
                failed_rounds: 2
            })
        );
        assert!(log.begin("n2", later), "the next hints start a new replay");
    }

    #[test]
    fn a_replay_whose_hints_were_all_dropped_ends() {
        let mut log = ReplayLog::default();
        let now = Instant::now();
        log.begin("n2", now);
        log.begin("n3", now);
        let outcome = RoundOutcome {
            replayed: 4,
            remaining: 1,
            failure: None,
        };
        assert_eq!(log.end_round("n2", outcome, now), None);
        assert_eq!(log.end_absent(&["n3".to_owned()]), [("n2".to_owned(), 4)]);
        assert!(log.end_absent(&["n3".to_owned()]).is_empty());
        assert!(log.begin("n2", now));
    }

    #[test]
    fn hints_queue_per_target_in_order_and_leave_only_when_acknowledged() {
        let mut hints = HintQueues::new(1 << 20, 60_000);
        hints.push("n2", vec![entry("a", "1", 1), entry("b", "2", 2)], 0);
        hints.push("n3", vec![entry("c", "3", 3)], 0);
        hints.push("n2", vec![entry("d", "4", 4)], 0);
        assert_eq!(hints.targets(), ["n2", "n3"]);
        assert_eq!(hints.pending_for("n2"), 3);
        assert_eq!(hints.stats().entries, 4);

        let (batch, up_to) = hints.peek("n2", 2, usize::MAX);
        assert_eq!(keys(&batch), [b"a", b"b"]);
        assert_eq!(hints.pending_for("n2"), 3, "peek removes nothing");
        // A hint queued while the batch is in flight stays.
        hints.push("n2", vec![entry("e", "5", 5)], 0);
        assert_eq!(hints.ack("n2", up_to), 2);
        let (rest, _) = hints.peek("n2", 10, usize::MAX);
        assert_eq!(keys(&rest), [b"d", b"e"]);
        assert_eq!(hints.stats().entries, 3);
    }

    #[test]
    fn the_oldest_pending_hint_of_any_target_gives_the_lag() {
        let mut hints = HintQueues::new(1 << 20, 60_000);
        assert_eq!(hints.oldest_queued_at_ms(), None);
        hints.push("n3", vec![entry("c", "3", 3)], 2_000);
        hints.push("n2", vec![entry("a", "1", 1)], 1_000);
        hints.push("n2", vec![entry("b", "2", 2)], 5_000);
        assert_eq!(hints.oldest_queued_at_ms(), Some(1_000));
        let (_, up_to) = hints.peek("n2", 1, usize::MAX);
        hints.ack("n2", up_to);
        assert_eq!(
            hints.oldest_queued_at_ms(),
            Some(2_000),
            "n3's hint is now the oldest"
        );
        let (_, up_to) = hints.peek("n3", 10, usize::MAX);
        hints.ack("n3", up_to);
        assert_eq!(hints.oldest_queued_at_ms(), Some(5_000));
    }

    #[test]
    fn the_byte_limit_drops_the_oldest_hints_of_that_target() {
        let size = charge(&entry("k0", "v", 0));
        let mut hints = HintQueues::new(3 * size, 60_000);
        let dropped = hints.push(
            "n2",
            (0..5).map(|i| entry(&format!("k{i}"), "v", i)).collect(),
            0,
        );
        assert_eq!(dropped.max_bytes, 2);
        let (batch, _) = hints.peek("n2", 10, usize::MAX);
        assert_eq!(keys(&batch), [b"k2", b"k3", b"k4"]);
        assert_eq!(hints.stats().bytes, 3 * size);
        // Other targets have their own budget.
        assert_eq!(hints.push("n3", vec![entry("k9", "v", 9)], 0).max_bytes, 0);
        // An entry larger than the whole budget is dropped at once.
        let big = entry("big", &"x".repeat(4 * size), 10);
        assert_eq!(hints.push("n3", vec![big], 0).max_bytes, 1);
        assert_eq!(hints.pending_for("n3"), 1);
    }

    #[test]
    fn hints_older_than_the_age_limit_are_dropped() {
        let mut hints = HintQueues::new(1 << 20, 1_000);
        hints.push("n2", vec![entry("old", "v", 1)], 0);
        hints.push("n2", vec![entry("new", "v", 2)], 900);
        assert_eq!(hints.expire(1_000), Dropped::default());
        assert_eq!(
            hints.expire(1_001),
            Dropped {
                max_bytes: 0,
                max_age: 1
            }
        );
        assert_eq!(hints.pending_for("n2"), 1);
        assert_eq!(hints.expire(5_000).max_age, 1);
        assert!(hints.targets().is_empty());
        assert_eq!(hints.stats(), HintStats::default());
    }

    #[test]
    fn an_acknowledged_batch_is_removed_even_if_part_of_it_was_dropped_meanwhile() {
        let size = charge(&entry("k0", "v", 0));
        let mut hints = HintQueues::new(2 * size, 60_000);
        hints.push("n2", vec![entry("k0", "v", 0), entry("k1", "v", 1)], 0);
        let (_, up_to) = hints.peek("n2", 10, usize::MAX);
        // Over the limit while in flight: k0 is dropped, k2 is new.
        hints.push("n2", vec![entry("k2", "v", 2)], 0);
        assert_eq!(hints.ack("n2", up_to), 1, "only k1 was still queued");
        let (rest, _) = hints.peek("n2", 10, usize::MAX);
        assert_eq!(keys(&rest), [b"k2"]);
    }

    #[test]
    fn a_batch_holds_at_least_one_hint_and_respects_the_byte_bound() {
        let mut hints = HintQueues::new(1 << 20, 60_000);
        hints.push(
            "n2",
            (0..4).map(|i| entry(&format!("k{i}"), "v", i)).collect(),
            0,
        );
        let size = charge(&entry("k0", "v", 0));
        assert_eq!(hints.peek("n2", 10, 2 * size).0.len(), 2);
        assert_eq!(hints.peek("n2", 10, 1).0.len(), 1);
        assert!(hints.peek("n9", 10, 1).0.is_empty());
    }
}
