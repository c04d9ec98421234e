//! The write path: send what the coordinator holds for the written keys to their other
//! replicas, and answer once the consistency level is met (see the module docs of
//! [`super`]).
//!
//! A write hands one part per target node to the per-peer [`batch::Batcher`] and waits on a
//! oneshot. No task is spawned per write: the batcher's sender tasks report each part's outcome
//! back through [`Coordinator::finish`], which counts it, keeps hints for an unreachable or slow
//! replica and answers the write as soon as its level is met (or with the failure once every part
//! has ended). Parts that end after the answer are handled the same way, in the background.
//! Read repair ([`repair`]) hands its entries to the same batcher, so repairs share `Replicate`
//! calls with writes.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use ringcache_proto::v1;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::batch::{self, Outcome, Part, Transport as _};
use super::wire::to_wire;
use super::{Consistency, Failure, ReplicationError, describe_shortfall};
use crate::context::Context;
use crate::metrics::ReplicaCall;
use crate::view::ClusterView;

/// Whether a write of `key` at `level` coordinated by `self_id` needs another node: its replica
/// set holds another node (to forward to or replicate to), or the level asks for more copies
/// than this node's own (the set is this node alone but more members are known: the write must
/// fail as [`replicate`] would). When `false`, applying the write here is all of it: `replicate`
/// would send nothing and succeed.
pub fn needs_others(view: &ClusterView, self_id: &str, key: &[u8], level: Consistency) -> bool {
    let alone = || level.required(view.replicas_for_level(1)) > 1;
    // A ring of this node alone holds every key here: no need to hash the key.
    if let [only] = view.ring.nodes() {
        return **only != *self_id || alone();
    }
    let replicas = view.replicas(key);
    if replicas.iter().any(|id| id != self_id) {
        return true;
    }
    !replicas.is_empty() && alone()
}

/// Replicates the current local state of `keys` (just written by this node) to their other
/// replicas and waits until every key reached `level`. Keys this node no longer holds (evicted)
/// are skipped; duplicates count once. The calls that are still running when the level is met
/// finish in the background, and unreachable replicas get hints.
pub async fn replicate(
    node: &Arc<Context>,
    keys: Vec<Bytes>,
    level: Consistency,
) -> Result<(), ReplicationError> {
    if keys.is_empty() {
        return Ok(());
    }
    let Plan { tally, targets } = Plan::build(node, keys, level)?;
    if tally.all_met() && targets.is_empty() {
        return Ok(());
    }
    let (tx, rx) = oneshot::channel();
    let call = Arc::new(Call {
        level,
        state: Mutex::new(CallState {
            tally,
            failures: Vec::new(),
            hinted: Vec::new(),
            remaining: targets.len(),
            answer: Some(tx),
        }),
    });
    call.state.lock().settle(level);
    let coordinator = Coordinator(node.clone());
    let limits = batch::Limits::of(node.config());
    let deadline = Instant::now() + limits.timeout;
    for (id, target) in targets {
        let job = Job::Write {
            call: call.clone(),
            target: id,
            keys: target.keys,
        };
        let part = Part::new(target.entries, deadline, job);
        match target.addr {
            Some(addr) => node
                .replicator()
                .batcher
                .submit(&coordinator, limits, &addr, part),
            None => coordinator.finish(
                part,
                Err(Failure::Unreachable("not in the topology".to_owned())),
            ),
        }
    }
    drop(call);
    rx.await.unwrap_or_else(|_| {
        Err(ReplicationError::Unavailable(
            "the replication task ended without an answer".to_owned(),
        ))
    })
}

/// What to send where.
#[derive(Debug)]
struct Plan {
    tally: Tally,
    /// Per target node id: its address (if known), the entries, and the keys (tally indexes).
    targets: BTreeMap<String, Target>,
}

#[derive(Debug)]
struct Target {
    addr: Option<String>,
    entries: Vec<v1::VersionedEntry>,
    keys: Vec<usize>,
}

impl Plan {
    fn build(
        node: &Context,
        keys: Vec<Bytes>,
        level: Consistency,
    ) -> Result<Self, ReplicationError> {
        let view = node.view();
        let self_id = node.config().node_id.as_str();
        let mut seen = HashSet::new();
        let mut tally = Tally::default();
        let mut targets: BTreeMap<String, Target> = BTreeMap::new();
        for key in keys {
            if !seen.insert(key.clone()) {
                continue;
            }
            let Some(item) = node.store().get_versioned(&key)? else {
                continue;
            };
            let replicas = view.replicas(&key);
            if replicas.is_empty() {
                continue;
            }
            let own = replicas.contains(self_id);
            let counted = view.replicas_for_level(replicas.len());
            let index = tally.add(level.required(counted), counted, own);
            let entry = to_wire(key, item);
            for id in replicas.iter().filter(|id| *id != self_id) {
                let target = targets.entry(id.to_owned()).or_insert_with(|| Target {
                    addr: view.topology.member(id).map(|m| m.cluster_addr.clone()),
                    entries: Vec::new(),
                    keys: Vec::new(),
                });
                target.entries.push(entry.clone());
                target.keys.push(index);
                tally.keys[index].pending += 1;
            }
        }
        Ok(Self { tally, targets })
    }
}

/// One write in progress: its tally and the answer not sent yet.
#[derive(Debug)]
pub(super) struct Call {
    level: Consistency,
    state: Mutex<CallState>,
}

#[derive(Debug)]
struct CallState {
    tally: Tally,
    failures: Vec<(String, Failure)>,
    hinted: Vec<String>,
    /// Parts (one per target node) whose outcome is not known yet.
    remaining: usize,
    answer: Option<oneshot::Sender<Result<(), ReplicationError>>>,
}

impl CallState {
    /// Answers `Ok` once every key met its level, or the failure once no part is left.
    fn settle(&mut self, level: Consistency) {
        if self.answer.is_none() {
            return;
        }
        let result = if self.tally.all_met() {
            Ok(())
        } else if self.remaining == 0 {
            let message = self
                .tally
                .failure_message(level, &self.failures, &self.hinted);
            Err(ReplicationError::Unavailable(message))
        } else {
            return;
        };
        if let Some(answer) = self.answer.take() {
            let _ = answer.send(result);
        }
    }
}

/// Hands read repair's `entries` for the replica `target` (at `addr`) to the write batcher; each
/// entry the replica acknowledges counts as a read repair. A failed repair keeps no hint: the
/// next read or anti-entropy finds the copy stale again.
pub(super) fn repair(
    node: &Arc<Context>,
    target: String,
    addr: Option<&str>,
    entries: Vec<v1::VersionedEntry>,
) {
    let coordinator = Coordinator(node.clone());
    let limits = batch::Limits::of(node.config());
    let part = Part::new(
        entries,
        Instant::now() + limits.timeout,
        Job::Repair { target },
    );
    match addr {
        Some(addr) => node
            .replicator()
            .batcher
            .submit(&coordinator, limits, addr, part),
        None => coordinator.finish(
            part,
            Err(Failure::Unreachable("not in the topology".to_owned())),
        ),
    }
}

/// What the write batcher carries a part for.
#[derive(Debug)]
pub(super) enum Job {
    /// One write's part for one target node.
    Write {
        call: Arc<Call>,
        target: String,
        /// The tally indexes of the keys in the part.
        keys: Vec<usize>,
    },
    /// Read repair's entries for one target node.
    Repair { target: String },
}

/// The batcher's transport on a node: `Internal.Replicate` to the peer, and the outcome of each
/// part counted towards its write, with metrics and hints.
#[derive(Debug, Clone)]
struct Coordinator(Arc<Context>);

impl batch::Transport for Coordinator {
    type Item = v1::VersionedEntry;
    type Answer = ();
    type Done = Job;

    fn send(
        &self,
        addr: &str,
        entries: Vec<v1::VersionedEntry>,
        deadline: Instant,
    ) -> impl Future<Output = Outcome<()>> + Send {
        let node = self.0.clone();
        let addr = addr.to_owned();
        async move {
            node.metrics()
                .record_replication_batch(ReplicaCall::Replicate);
            let n = entries.len();
            super::replicate_batch(&node, &addr, entries, deadline)
                .await
                .map(|()| vec![(); n])
        }
    }

    fn finish(&self, part: Part<v1::VersionedEntry, Job>, result: Outcome<()>) {
        let node = &self.0;
        let Part {
            items: entries,
            done: job,
            ..
        } = part;
        let n = entries.len() as u64;
        let (call, target, keys) = match job {
            Job::Write { call, target, keys } => (call, target, keys),
            Job::Repair { target } => {
                match result {
                    Ok(_) => node.metrics().record_read_repairs(n),
                    Err(failure) => {
                        tracing::debug!(%target, entries = n, %failure, "read repair failed");
                    }
                }
                return;
            }
        };
        let mut hinted = false;
        if let Err(failure) = &result {
            node.metrics().record_replica_writes(false, n);
            tracing::debug!(%target, entries = n, %failure, "replica write failed");
            if matches!(failure, Failure::ClockDrift(_)) {
                // A replica finds our stamps too far ahead: check our clock now rather than at
                // the next interval, so a skewed node stops writing after one refusal.
                node.clock_check().check_soon();
            }
            if failure.hint() && node.config().replication.hint_max_bytes_per_node > 0 {
                node.replicator().queue_hints(node, &target, entries);
                hinted = true;
            }
        } else {
            node.metrics().record_replica_writes(true, n);
        }
        let mut state = call.state.lock();
        state.remaining -= 1;
        match result {
            Ok(_) => state.tally.ack(&keys),
            Err(failure) => {
                state.tally.fail(&keys);
                if hinted {
                    state.hinted.push(target.clone());
                }
                state.failures.push((target, failure));
            }
        }
        state.settle(call.level);
    }
}

/// Acknowledgement counts per key.
#[derive(Debug, Default)]
pub(super) struct Tally {
    keys: Vec<KeyTally>,
}

#[derive(Debug, Clone, Copy)]
struct KeyTally {
    needed: usize,
    replicas: usize,
    acks: usize,
    pending: usize,
}

impl Tally {
    /// Adds a key needing `needed` of `replicas` acknowledgements, one already there if `own`.
    fn add(&mut self, needed: usize, replicas: usize, own: bool) -> usize {
        self.keys.push(KeyTally {
            needed,
            replicas,
            acks: usize::from(own),
            pending: 0,
        });
        self.keys.len() - 1
    }

    fn ack(&mut self, keys: &[usize]) {
        for &k in keys {
            self.keys[k].acks += 1;
            self.keys[k].pending -= 1;
        }
    }

    fn fail(&mut self, keys: &[usize]) {
        for &k in keys {
            self.keys[k].pending -= 1;
        }
    }

    fn all_met(&self) -> bool {
        self.keys.iter().all(|k| k.acks >= k.needed)
    }

    /// "QUORUM write needs 2 of 3 replicas, 1 acknowledged (n2: connection refused; n3: timed
    /// out after 2s); the write remains on the replicas that took it and is queued as hints for
    /// n2, n3" — about the key furthest from its level, with how many keys fell short.
    fn failure_message(
        &self,
        level: Consistency,
        failures: &[(String, Failure)],
        hinted: &[String],
    ) -> String {
        let short: Vec<&KeyTally> = self.keys.iter().filter(|k| k.acks < k.needed).collect();
        let Some(worst) = short.iter().max_by_key(|k| k.needed - k.acks) else {
            return format!("{} write met its level", level.as_str());
        };
        let mut message = format!(
            "{} write needs {} of {} replicas, {} acknowledged",
            level.as_str(),
            worst.needed,
            worst.replicas,
            worst.acks
        );
        describe_shortfall(&mut message, short.len(), self.keys.len(), failures);
        message.push_str("; the write remains on the replicas that took it");
        if !hinted.is_empty() {
            let _ = write!(message, " and is queued as hints for {}", hinted.join(", "));
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_key_is_met_once_enough_replicas_acknowledge() {
        let mut tally = Tally::default();
        let a = tally.add(2, 3, true);
        let b = tally.add(2, 3, false);
        for k in [a, b] {
            tally.keys[k].pending = 2;
        }
        assert!(!tally.all_met());
        tally.ack(&[a, b]);
        assert!(!tally.all_met(), "b has one acknowledgement");
        tally.fail(&[a, b]);
        assert!(!tally.all_met());
        let message = tally.failure_message(
            Consistency::Quorum,
            &[("n3".to_owned(), Failure::TimedOut(Duration::from_secs(2)))],
            &["n3".to_owned()],
        );
        assert_eq!(
            message,
            "QUORUM write needs 2 of 3 replicas, 1 acknowledged (for 1 of 2 keys) \
             (n3: timed out after 2s); the write remains on the replicas that took it and is \
             queued as hints for n3"
        );
    }

    #[test]
    fn a_single_key_message_names_every_failure() {
        let mut tally = Tally::default();
        let k = tally.add(3, 3, true);
        tally.keys[k].pending = 2;
        tally.fail(&[k]);
        tally.fail(&[k]);
        let message = tally.failure_message(
            Consistency::All,
            &[
                (
                    "n2".to_owned(),
                    Failure::Unreachable("connection refused".to_owned()),
                ),
                ("n3".to_owned(), Failure::Refused("memory full".to_owned())),
            ],
            &["n2".to_owned()],
        );
        assert_eq!(
            message,
            "ALL write needs 3 of 3 replicas, 1 acknowledged (n2: connection refused; n3: \
             refused: memory full); the write remains on the replicas that took it and is queued \
             as hints for n2"
        );
    }

    #[test]
    fn the_coordinator_alone_meets_one() {
        let mut tally = Tally::default();
        tally.add(Consistency::One.required(3), 3, true);
        assert!(tally.all_met());
        let mut not_a_replica = Tally::default();
        not_a_replica.add(Consistency::One.required(3), 3, false);
        assert!(!not_a_replica.all_met());
    }
}
