//! The read path at QUORUM and ALL: the local copy plus `ReadVersions` from the other replicas,
//! the newest answer once enough replicas answered, and read repair once every replica answered
//! or failed (see the module docs of [`super`]).
//!
//! A read hands one part per other replica (the keys that replica is asked for) to the per-peer
//! [`batch::Batcher`] of `ReadVersions` calls and waits on a oneshot: reads to the same peer
//! share calls, like replicated writes. No task is spawned per read: the batcher's sender tasks
//! report each part's answers through [`Reader::finish`], which checks every returned version
//! against the drift bound, counts the answers, answers the read as soon as every key has its
//! level, and once the last part has ended hands the repairs to the write batcher.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use ringcache_proto::v1;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::batch::{self, Outcome, Part, Transport as _};
use super::link::Routed;
use super::wire::to_wire;
use super::write;
use super::{Consistency, Failure, ReplicationError, call_replica_until, describe_shortfall};
use crate::context::Context;
use crate::metrics::{ReplicaCall, VersionSource};
use crate::peer;
use crate::store::{ClockDrift, VersionedItem, copy_order};

/// Winners per key, in request order: the newest copy among the answers, `None` if no replica
/// that answered holds anything. The caller decides liveness (tombstones and expired entries are
/// misses).
pub type Winners = Vec<Option<VersionedItem>>;

/// Reads `keys` from their replicas at `level`: the local copy (when this node is a replica)
/// and the other replicas' answers, until each key has `level.required(R)` answers; then returns
/// the newest copy of each key. Read repair starts once every replica answered or failed.
pub async fn read(
    node: &Arc<Context>,
    keys: &[Bytes],
    level: Consistency,
) -> Result<Winners, ReplicationError> {
    let mut plan = ReadPlan::build(node, keys, level)?;
    if plan.targets.is_empty() {
        // Nobody else to ask (R = 1, or an empty ring): the local copy is the answer.
        if let Some(message) = plan.shortfall(level, &[]) {
            return Err(ReplicationError::Unavailable(message));
        }
        return Ok(plan.winners());
    }
    let targets = std::mem::take(&mut plan.targets);
    let parts = plan.parts(targets);
    let (tx, rx) = oneshot::channel();
    let call = Arc::new(ReadCall {
        level,
        state: Mutex::new(ReadState {
            plan,
            failures: Vec::new(),
            remaining: parts.len(),
            answer: Some(tx),
        }),
    });
    call.state.lock().settle(level);
    Reader(node.clone()).submit(&call, parts);
    drop(call);
    rx.await.unwrap_or_else(|_| {
        Err(ReplicationError::Unavailable(
            "the read ended without an answer".to_owned(),
        ))
    })
}

/// One key: how many answers it needs, the answers so far by node id, the replicas asked that
/// have not answered yet, and those not asked (asked in turn when an asked one fails).
#[derive(Debug)]
struct KeyRead {
    key: Bytes,
    needed: usize,
    replicas: usize,
    answers: Vec<(String, Option<VersionedItem>)>,
    pending: usize,
    spare: Vec<String>,
}

impl KeyRead {
    /// A replica not asked yet, when the answers and the asks still running cannot meet the
    /// level.
    fn next_spare(&mut self) -> Option<String> {
        if self.answers.len() + self.pending >= self.needed || self.spare.is_empty() {
            return None;
        }
        self.pending += 1;
        Some(self.spare.remove(0))
    }
}

/// Per target node id: its address and the positions of the keys it is asked for.
type Targets = BTreeMap<String, (Option<String>, Vec<usize>)>;

/// A part to send: target node id, its address, the positions of its keys, the keys.
type PlannedPart = (String, Option<String>, Vec<usize>, Vec<Bytes>);

#[derive(Debug, Default)]
struct ReadPlan {
    keys: Vec<KeyRead>,
    targets: Targets,
}

impl ReadPlan {
    fn build(node: &Context, keys: &[Bytes], level: Consistency) -> Result<Self, ReplicationError> {
        let view = node.view();
        super::check_majority(&view, level, "reads")?;
        let self_id = node.config().node_id.as_str();
        let mut plan = Self {
            keys: Vec::with_capacity(keys.len()),
            targets: BTreeMap::new(),
        };
        for (position, key) in keys.iter().enumerate() {
            let local = node.store().get_versioned(key)?;
            let replicas = view.replicas(key);
            let counted = view.replicas_for_level(replicas.len());
            let mut read = KeyRead {
                key: key.clone(),
                needed: level.required(counted),
                replicas: counted,
                answers: Vec::with_capacity(replicas.len().max(1)),
                pending: 0,
                spare: Vec::new(),
            };
            if replicas.is_empty() || replicas.contains(self_id) {
                read.answers.push((self_id.to_owned(), local));
            }
            // Ask only as many other replicas as the level still needs (QUORUM of 3 on a
            // replica: one); the others are asked only if one of those fails.
            for id in replicas.iter().filter(|id| *id != self_id) {
                if read.answers.len() + read.pending >= read.needed {
                    read.spare.push(id.to_owned());
                    continue;
                }
                read.pending += 1;
                plan.targets
                    .entry(id.to_owned())
                    .or_insert_with(|| {
                        (
                            view.topology.member(id).map(|m| m.cluster_addr.clone()),
                            Vec::new(),
                        )
                    })
                    .1
                    .push(position);
            }
            plan.keys.push(read);
        }
        Ok(plan)
    }

    /// The parts to send for `targets`: per target node id, its address, the positions of its
    /// keys and the keys.
    fn parts(&self, targets: Targets) -> Vec<PlannedPart> {
        targets
            .into_iter()
            .map(|(id, (addr, positions))| {
                let keys = positions
                    .iter()
                    .map(|&p| self.keys[p].key.clone())
                    .collect();
                (id, addr, positions, keys)
            })
            .collect()
    }

    fn all_met(&self) -> bool {
        self.keys.iter().all(|k| k.answers.len() >= k.needed)
    }

    fn winners(&self) -> Winners {
        self.keys
            .iter()
            .map(|k| newest(k.answers.iter().filter_map(|(_, item)| item.as_ref())).cloned())
            .collect()
    }

    /// `None` when every key has its answers; else "QUORUM read needs 2 of 3 replicas, 1
    /// answered (n2: …; n3: …)" about the key furthest from its level.
    fn shortfall(&self, level: Consistency, failures: &[(String, Failure)]) -> Option<String> {
        let short: Vec<&KeyRead> = self
            .keys
            .iter()
            .filter(|k| k.answers.len() < k.needed)
            .collect();
        let worst = short.iter().max_by_key(|k| k.needed - k.answers.len())?;
        let mut message = format!(
            "{} read needs {} of {} replicas, {} answered",
            level.as_str(),
            worst.needed,
            worst.replicas,
            worst.answers.len()
        );
        describe_shortfall(&mut message, short.len(), self.keys.len(), failures);
        Some(message)
    }
}

/// One read in progress: its answers so far and the answer not sent yet.
#[derive(Debug)]
struct ReadCall {
    level: Consistency,
    state: Mutex<ReadState>,
}

#[derive(Debug)]
struct ReadState {
    plan: ReadPlan,
    failures: Vec<(String, Failure)>,
    /// Parts (one per other replica) whose outcome is not known yet.
    remaining: usize,
    answer: Option<oneshot::Sender<Result<Winners, ReplicationError>>>,
}

impl ReadState {
    /// Answers with the winners once every key has its answers, or with the shortfall once no
    /// part is left.
    fn settle(&mut self, level: Consistency) {
        if self.answer.is_none() {
            return;
        }
        let result = if self.plan.all_met() {
            Ok(self.plan.winners())
        } else if self.remaining == 0 {
            let message = self
                .plan
                .shortfall(level, &self.failures)
                .unwrap_or_else(|| format!("{} read failed", level.as_str()));
            Err(ReplicationError::Unavailable(message))
        } else {
            return;
        };
        if let Some(answer) = self.answer.take() {
            let _ = answer.send(result);
        }
    }
}

/// One read's part for one other replica, as the batcher carries it.
#[derive(Debug)]
pub(super) struct Waiter {
    call: Arc<ReadCall>,
    target: String,
    /// The positions in the read of the keys in the part.
    positions: Vec<usize>,
}

/// The read batcher's transport on a node: `Internal.ReadVersions` to the peer, and each part's
/// answers counted towards its read.
#[derive(Debug, Clone)]
struct Reader(Arc<Context>);

impl Reader {
    /// Hands `parts` of the read `call` to the read batcher (a part for a node without an
    /// address fails at once).
    fn submit(&self, call: &Arc<ReadCall>, parts: Vec<PlannedPart>) {
        let node = &self.0;
        let limits = batch::Limits::of(node.config());
        let deadline = Instant::now() + limits.timeout;
        for (target, addr, positions, keys) in parts {
            let waiter = Waiter {
                call: call.clone(),
                target,
                positions,
            };
            let part = Part::new(keys, deadline, waiter);
            match addr {
                Some(addr) => node.replicator().reads.submit(self, limits, &addr, part),
                None => self.finish(
                    part,
                    Err(Failure::Unreachable("not in the topology".to_owned())),
                ),
            }
        }
    }
}

impl batch::Transport for Reader {
    type Item = Bytes;
    type Answer = v1::VersionedRead;
    type Done = Waiter;

    fn send(
        &self,
        addr: &str,
        keys: Vec<Bytes>,
        deadline: Instant,
    ) -> impl Future<Output = Outcome<v1::VersionedRead>> + Send {
        let node = self.0.clone();
        let addr = addr.to_owned();
        async move {
            node.metrics()
                .record_replication_batch(ReplicaCall::ReadVersions);
            read_versions(&node, &addr, keys, deadline).await
        }
    }

    fn finish(&self, part: Part<Bytes, Waiter>, result: Outcome<v1::VersionedRead>) {
        let node = &self.0;
        let waiter = part.done;
        // An answer carrying a version further ahead than max_clock_drift is not used at all:
        // it would win the read, be repaired onto every replica and move their clocks.
        let result = result.and_then(|answers| refuse_far_ahead(node, &waiter.target, answers));
        if let Err(failure) = &result {
            tracing::debug!(target = %waiter.target, keys = part.items.len(), %failure, "replica read failed");
        }
        let (done, retries) = {
            let mut state = waiter.call.state.lock();
            state.remaining -= 1;
            for &p in &waiter.positions {
                state.plan.keys[p].pending -= 1;
            }
            let mut retries = Targets::new();
            match result {
                Ok(answers) => {
                    for (&p, read) in waiter.positions.iter().zip(answers) {
                        let item = held(read);
                        state.plan.keys[p]
                            .answers
                            .push((waiter.target.clone(), item));
                    }
                }
                Err(failure) => {
                    // The keys this replica failed to answer go to a replica not asked yet,
                    // where their level still needs one.
                    let view = node.view();
                    for &p in &waiter.positions {
                        if let Some(id) = state.plan.keys[p].next_spare() {
                            retries
                                .entry(id)
                                .or_insert_with_key(|id| {
                                    let member = view.topology.member(id);
                                    (member.map(|m| m.cluster_addr.clone()), Vec::new())
                                })
                                .1
                                .push(p);
                        }
                    }
                    state.failures.push((waiter.target, failure));
                }
            }
            let retries = state.plan.parts(retries);
            state.remaining += retries.len();
            state.settle(waiter.call.level);
            let done = (state.remaining == 0).then(|| std::mem::take(&mut state.plan));
            (done, retries)
        };
        if !retries.is_empty() {
            self.submit(&waiter.call, retries);
        }
        if let Some(plan) = done {
            repair(node, plan);
        }
    }
}

/// What a replica's answer says it holds for the key.
fn held(read: v1::VersionedRead) -> Option<VersionedItem> {
    let entry = read.found.then_some(read.entry).flatten()?;
    Some(VersionedItem {
        value: entry.value,
        version: entry.version,
        expires_at_ms: entry.expires_at_ms,
    })
}

/// Fails a replica's ReadVersions answer that holds any version further ahead of this node's
/// clock than `max_clock_drift` (counted and logged), so the read and its repair never use it:
/// the replica counts as not having answered for the keys of this answer.
fn refuse_far_ahead(
    node: &Context,
    replica: &str,
    results: Vec<v1::VersionedRead>,
) -> Result<Vec<v1::VersionedRead>, Failure> {
    let now = node.now_ms();
    let mut refused = 0u64;
    let mut worst: Option<ClockDrift> = None;
    for entry in results.iter().filter_map(|read| read.entry.as_ref()) {
        if let Err(drift) = node.store().check_remote_version(entry.version, now) {
            refused += 1;
            if worst.is_none_or(|w| drift.ahead_ms > w.ahead_ms) {
                worst = Some(drift);
            }
        }
    }
    let Some(drift) = worst else {
        return Ok(results);
    };
    node.metrics()
        .record_versions_refused(VersionSource::ReadVersions, replica, refused, drift);
    Err(Failure::Refused(format!(
        "clock drift: answered {refused} versions too far ahead of this node's clock ({} ms \
         ahead, max_clock_drift is {} ms)",
        drift.ahead_ms, drift.max_drift_ms
    )))
}

/// One `ReadVersions` of `keys` from the replica at `addr`, ending by `deadline`: on the peer's
/// replica stream, or as a unary `Internal.ReadVersions` call when there is none.
async fn read_versions(
    node: &Arc<Context>,
    addr: &str,
    keys: Vec<Bytes>,
    deadline: Instant,
) -> Outcome<v1::VersionedRead> {
    use ringcache_proto::v1::{replica_answer::Result as Answer, replica_request::Op};
    let op = Op::ReadVersions(v1::ReadVersionsRequest { keys });
    let request = match node.replicator().links.call(node, addr, op, deadline).await {
        Routed::Answered(Ok(Answer::ReadVersions(response))) => return Ok(response.results),
        Routed::Answered(Ok(_)) => {
            return Err(Failure::Refused(
                "the replica answered a ReadVersions with another kind of answer".to_owned(),
            ));
        }
        Routed::Answered(Err(failure)) => return Err(failure),
        Routed::Unary(Op::ReadVersions(request)) => request,
        Routed::Unary(_) => {
            return Err(Failure::Refused(
                "a ReadVersions came back from the replica stream as another request".to_owned(),
            ));
        }
    };
    let timeout = node.config().replication.replica_timeout;
    let mut client = node
        .peers()
        .internal_client(addr)
        .map_err(|error| Failure::Unreachable(error.to_string()))?;
    let mut request = tonic::Request::new(request);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    call_replica_until(deadline, timeout, peer::call(client.read_versions(request)))
        .await
        .map(|response| response.results)
}

/// The newest of `items` by [`copy_order`]: the highest version, and at an equal version the
/// winning content, so every node picks the same copy.
fn newest<'a>(items: impl Iterator<Item = &'a VersionedItem>) -> Option<&'a VersionedItem> {
    items.max_by(|a, b| copy_order(a.as_copy(), b.as_copy()))
}

/// Decides the repair of one key from every answer: the nodes to send the newest copy to
/// (those that answered with a copy ordering before it, or with nothing).
fn plan_repair(answers: &[(String, Option<VersionedItem>)], now_ms: u64) -> Vec<String> {
    let Some(winner) = newest(answers.iter().filter_map(|(_, item)| item.as_ref())) else {
        return Vec::new();
    };
    // An expired value is worth sending only where it replaces an older copy.
    let dead_value = winner.value.is_some() && !winner.is_live(now_ms);
    answers
        .iter()
        .filter(|(_, item)| match item {
            Some(item) => copy_order(item.as_copy(), winner.as_copy()).is_lt(),
            None => !dead_value,
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// Sends each key's newest copy to the replicas that answered with an older one or nothing:
/// this node's own copy at once, the others' through the write batcher (one part per replica,
/// sharing `Replicate` calls with writes and other repairs).
fn repair(node: &Arc<Context>, plan: ReadPlan) {
    let now = node.now_ms();
    let self_id = node.config().node_id.as_str();
    let mut batches: BTreeMap<String, Vec<v1::VersionedEntry>> = BTreeMap::new();
    let mut repaired = 0u64;
    for read in plan.keys {
        let stale = plan_repair(&read.answers, now);
        if stale.is_empty() {
            continue;
        }
        let Some(winner) = newest(read.answers.iter().filter_map(|(_, item)| item.as_ref())) else {
            continue;
        };
        for id in stale {
            if id == self_id {
                let applied = node.store().apply(
                    &read.key,
                    winner.value.as_deref(),
                    winner.version,
                    winner.expires_at_ms,
                    now,
                );
                repaired += u64::from(matches!(applied, Ok(true)));
            } else {
                batches
                    .entry(id)
                    .or_default()
                    .push(to_wire(read.key.clone(), winner.clone()));
            }
        }
    }
    node.metrics().record_read_repairs(repaired);
    if batches.is_empty() {
        return;
    }
    let view = node.view();
    for (id, entries) in batches {
        let addr = view.topology.member(&id).map(|m| m.cluster_addr.clone());
        write::repair(node, id, addr.as_deref(), entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(value: Option<&str>, version: u64, expires: Option<u64>) -> Option<VersionedItem> {
        Some(VersionedItem {
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            version,
            expires_at_ms: expires,
        })
    }

    fn answers(list: Vec<(&str, Option<VersionedItem>)>) -> Vec<(String, Option<VersionedItem>)> {
        list.into_iter().map(|(id, i)| (id.to_owned(), i)).collect()
    }

    #[test]
    fn the_highest_version_wins_tombstones_included() {
        let list = answers(vec![
            ("n1", item(Some("old"), 5, None)),
            ("n2", item(None, 7, Some(1_000))),
            ("n3", None),
        ]);
        let winner = newest(list.iter().filter_map(|(_, i)| i.as_ref())).unwrap();
        assert_eq!(winner.version, 7);
        assert!(
            winner.value.is_none(),
            "a tombstone as the newest is a miss"
        );
        assert_eq!(plan_repair(&list, 0), ["n1", "n3"]);
    }

    #[test]
    fn fresh_replicas_need_no_repair() {
        let list = answers(vec![
            ("n1", item(Some("v"), 5, None)),
            ("n2", item(Some("v"), 5, None)),
        ]);
        assert!(plan_repair(&list, 0).is_empty());
        assert!(plan_repair(&answers(vec![("n1", None), ("n2", None)]), 0).is_empty());
    }

    #[test]
    fn an_expired_winner_replaces_older_copies_but_is_not_copied_to_empty_replicas() {
        let list = answers(vec![
            ("n1", item(Some("new"), 9, Some(100))),
            ("n2", item(Some("old"), 5, None)),
            ("n3", None),
        ]);
        assert_eq!(plan_repair(&list, 200), ["n2"]);
        assert_eq!(plan_repair(&list, 50), ["n2", "n3"]);
    }

    #[test]
    fn a_version_tie_with_different_values_sends_the_same_winner_everywhere() {
        let list = answers(vec![
            ("n1", item(Some("a"), 5, None)),
            ("n2", item(Some("b"), 5, None)),
        ]);
        assert_eq!(
            plan_repair(&list, 0),
            ["n1"],
            "n1's losing copy is replaced"
        );
        let mut reversed = list.clone();
        reversed.reverse();
        let pick = |l: &[(String, Option<VersionedItem>)]| {
            newest(l.iter().filter_map(|(_, i)| i.as_ref()))
                .unwrap()
                .value
                .clone()
        };
        assert_eq!(pick(&list), pick(&reversed));
    }
}
