//! The read path at QUORUM and ALL: the local copy plus `ReadVersions` from the other replicas,
//! the newest answer once enough replicas answered, and read repair in the background (see the
//! module docs of [`super`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ringcache_proto::v1;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::wire::to_wire;
use super::{
    Consistency, Failure, ReplicationError, call_replica, describe_shortfall, describe_status,
    send_replicate,
};
use crate::context::Context;
use crate::metrics::VersionSource;
use crate::store::{ClockDrift, VersionedItem, copy_order};

/// Winners per key, in request order: the newest copy among the answers, `None` if no replica
/// that answered holds anything. The caller decides liveness (tombstones and expired entries are
/// misses).
pub type Winners = Vec<Option<VersionedItem>>;

/// Reads `keys` from their replicas at `level`: the local copy (when this node is a replica)
/// and the other replicas' answers, until each key has `level.required(R)` answers; then returns
/// the newest copy of each key. Read repair runs in the background once every call ended.
pub async fn read(
    node: &Arc<Context>,
    keys: &[Bytes],
    level: Consistency,
) -> Result<Winners, ReplicationError> {
    let plan = ReadPlan::build(node, keys, level)?;
    if plan.targets.is_empty() {
        // Nobody else to ask (R = 1, or an empty ring): the local copy is the answer.
        if let Some(message) = plan.shortfall(level, &[]) {
            return Err(ReplicationError::Unavailable(message));
        }
        return Ok(plan.winners());
    }
    let (tx, rx) = oneshot::channel();
    crate::logging::spawn(gather(node.clone(), plan, level, tx));
    rx.await.unwrap_or_else(|_| {
        Err(ReplicationError::Unavailable(
            "the read task ended without an answer".to_owned(),
        ))
    })
}

/// One key: how many answers it needs and the answers so far, by node id.
#[derive(Debug)]
struct KeyRead {
    key: Bytes,
    needed: usize,
    replicas: usize,
    answers: Vec<(String, Option<VersionedItem>)>,
}

#[derive(Debug)]
struct ReadPlan {
    keys: Vec<KeyRead>,
    /// Per target node id: its address and the positions of the keys it is asked for.
    targets: BTreeMap<String, (Option<String>, Vec<usize>)>,
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
                answers: Vec::new(),
            };
            if replicas.is_empty() || replicas.contains(self_id) {
                read.answers.push((self_id.to_owned(), local));
            }
            for id in replicas.iter().filter(|id| *id != self_id) {
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

/// Asks every target in parallel, answers on `tx` once every key has enough answers (or with
/// the shortfall once every call ended), then repairs what the answers showed stale.
async fn gather(
    node: Arc<Context>,
    mut plan: ReadPlan,
    level: Consistency,
    tx: oneshot::Sender<Result<Winners, ReplicationError>>,
) {
    let timeout = node.config().replication.replica_timeout;
    let mut tx = Some(tx);
    let mut calls = JoinSet::new();
    for (id, (addr, positions)) in std::mem::take(&mut plan.targets) {
        let keys: Vec<Bytes> = positions
            .iter()
            .map(|&p| plan.keys[p].key.clone())
            .collect();
        let node = node.clone();
        crate::logging::spawn_in(&mut calls, async move {
            let result = read_versions(&node, addr.as_deref(), keys, timeout).await;
            (id, positions, result)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let Ok((id, positions, result)) = joined else {
            continue;
        };
        // An answer carrying a version further ahead than max_clock_drift is not used at all:
        // it would win the read, be repaired onto every replica and move their clocks.
        let result = result.and_then(|results| refuse_far_ahead(&node, &id, results));
        match result {
            Ok(results) if results.len() == positions.len() => {
                for (&p, read) in positions.iter().zip(results) {
                    let item = read
                        .found
                        .then_some(read.entry)
                        .flatten()
                        .map(|e| VersionedItem {
                            value: e.value,
                            version: e.version,
                            expires_at_ms: e.expires_at_ms,
                        });
                    plan.keys[p].answers.push((id.clone(), item));
                }
            }
            Ok(results) => failures.push((
                id,
                Failure::Refused(format!(
                    "{} results for {} keys",
                    results.len(),
                    positions.len()
                )),
            )),
            Err(failure) => failures.push((id, failure)),
        }
        if plan.all_met()
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(Ok(plan.winners()));
        }
    }
    if let Some(tx) = tx.take() {
        let message = plan
            .shortfall(level, &failures)
            .unwrap_or_else(|| format!("{} read failed", level.as_str()));
        let _ = tx.send(Err(ReplicationError::Unavailable(message)));
    }
    repair(&node, plan).await;
}

/// Fails a replica's ReadVersions answer that holds any version further ahead of this node's
/// clock than `max_clock_drift` (counted and logged), so the read and its repair never use it:
/// the replica counts as not having answered.
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

async fn read_versions(
    node: &Context,
    addr: Option<&str>,
    keys: Vec<Bytes>,
    timeout: std::time::Duration,
) -> Result<Vec<v1::VersionedRead>, Failure> {
    let addr = addr.ok_or_else(|| Failure::Unreachable("not in the topology".to_owned()))?;
    let mut client = node
        .peers()
        .internal_client(addr)
        .map_err(|status| Failure::Unreachable(describe_status(&status)))?;
    let mut request = tonic::Request::new(v1::ReadVersionsRequest { keys });
    request.set_timeout(timeout);
    call_replica(timeout, client.read_versions(request))
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

/// Sends each key's newest copy to the replicas that answered with an older one or nothing.
async fn repair(node: &Arc<Context>, plan: ReadPlan) {
    let now = node.now_ms();
    let self_id = node.config().node_id.clone();
    let mut batches: BTreeMap<String, Vec<v1::VersionedEntry>> = BTreeMap::new();
    let mut repaired = 0u64;
    for read in plan.keys {
        let stale = plan_repair(&read.answers, now);
        let winner = newest(read.answers.iter().filter_map(|(_, item)| item.as_ref())).cloned();
        let Some(winner) = winner else {
            continue;
        };
        for id in &stale {
            if *id == self_id {
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
                    .entry(id.clone())
                    .or_default()
                    .push(to_wire(read.key.clone(), winner.clone()));
            }
        }
    }
    let view = node.view();
    let mut calls = JoinSet::new();
    for (id, entries) in batches {
        let addr = view.topology.member(&id).map(|m| m.cluster_addr.clone());
        let node = node.clone();
        crate::logging::spawn_in(&mut calls, async move {
            let n = entries.len() as u64;
            send_replicate(&node, addr.as_deref(), entries, false)
                .await
                .map(|()| n)
        });
    }
    while let Some(joined) = calls.join_next().await {
        if let Ok(Ok(n)) = joined {
            repaired += n;
        }
    }
    node.metrics().record_read_repairs(repaired);
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
