//! Clock-skew detection: a node whose wall clock is far from the cluster's stops stamping writes.
//!
//! Versions are hybrid-logical-clock stamps from the coordinator's wall clock, and replicas keep
//! the newest. A node whose clock runs an hour ahead would stamp every write it coordinates an
//! hour into the future: its copy would win last-writer-wins against every later write for an
//! hour. Replicas already refuse stamps further ahead of their own clock than
//! `max_clock_drift`, but the skewed node keeps its own copy. So every node checks its clock
//! against its peers' (`Internal.Clock`, every `clock_check_interval`): the cluster's offset is
//! the median of every live member's clock, this node's included (offset 0), so one wrong clock
//! among three is outvoted. With an even count the middle value nearer 0 is taken: two nodes
//! that disagree cannot tell whose clock is wrong, and neither is blamed. A check that cannot
//! tell (no peer answered, or the two middle clocks fall on different sides of the bound, as
//! when a skewed node of three hears from only one peer for a round) leaves the last verdict
//! standing ([`decides`]): a skewed node does not serve again because a peer was briefly
//! unreachable.
//!
//! When the offset exceeds `max_clock_drift` either way, the node is **skewed**: it refuses
//! writes and reads it would coordinate (UNAVAILABLE, saying by how much its clock is off; its
//! own copies may carry stamps from the future), reports not ready, logs and
//! exports `ringcache_clock_offset_seconds` and `ringcache_clock_skewed`, and drops every entry
//! stamped further ahead than the cluster's clock plus `max_clock_drift` (writes it coordinated
//! before the skew was noticed: no replica accepts them, and they must not shadow later writes
//! once it serves again). When the clock is back within the bound, it drops what its own clock
//! now finds too far ahead, rewinds its version clock, and serves again. A replica that refuses
//! one of its stamps for drift triggers a check at once, so the window is about one write; the
//! periodic check (every 10 probe intervals) covers a node that coordinates nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use ringcache_proto::topology::NodeState;
use ringcache_proto::v1;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::context::Context;
use crate::store::Hlc;

/// What the last clock check found.
#[derive(Debug, Default)]
pub struct ClockCheck {
    /// The cluster's clock minus this node's, in ms (negative: this node is ahead).
    offset_ms: AtomicI64,
    skewed: AtomicBool,
    /// Wakes the checker before its interval (a replica refused one of our stamps).
    soon: Notify,
}

impl ClockCheck {
    /// The cluster's clock minus this node's at the last check, in ms (negative: this node's
    /// clock is ahead). 0 before the first check or without peers.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Whether this node's clock was further from the cluster's than `max_clock_drift` at the
    /// last check.
    pub fn is_skewed(&self) -> bool {
        self.skewed.load(Ordering::Acquire)
    }

    /// Asks for a check now instead of at the next interval.
    pub fn check_soon(&self) {
        self.soon.notify_one();
    }

    /// Records a check; returns the previous skewed state.
    fn record(&self, offset_ms: i64, skewed: bool) -> bool {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
        self.skewed.swap(skewed, Ordering::AcqRel)
    }

    /// The refusal of a write while skewed, `None` when the clock is fine.
    pub fn refusal(&self, max_drift_ms: u64) -> Option<String> {
        self.refusal_of("writes", max_drift_ms)
    }

    /// The refusal of `what` (writes, reads) while skewed, `None` when the clock is fine.
    pub fn refusal_of(&self, what: &str, max_drift_ms: u64) -> Option<String> {
        if !self.is_skewed() {
            return None;
        }
        let offset = self.offset_ms();
        let direction = if offset < 0 { "ahead of" } else { "behind" };
        Some(format!(
            "clock skew: this node's clock is {} s {direction} the cluster's (median of the \
             members' clocks), more than max_clock_drift ({} s); refusing {what} until it is \
             corrected",
            (offset.unsigned_abs() + 500) / 1000,
            max_drift_ms / 1000
        ))
    }
}

/// The cluster's clock minus this node's from the peers' offsets (each peer's clock minus this
/// node's): the median with this node's own offset (0) included; with an even count, the
/// middle value nearer 0.
pub fn cluster_offset(peer_offsets: &[i64]) -> i64 {
    let mut all: Vec<i64> = peer_offsets.to_vec();
    all.push(0);
    all.sort_unstable();
    let n = all.len();
    if n % 2 == 1 {
        all[n / 2]
    } else {
        let (low, high) = (all[n / 2 - 1], all[n / 2]);
        if low.unsigned_abs() <= high.unsigned_abs() {
            low
        } else {
            high
        }
    }
}

/// Whether a check whose `asked` peers answered with `peer_offsets` can change the verdict: not
/// when peers were asked and none answered, nor when, with an even count (this node included),
/// the two middle clocks fall on different sides of `max_drift_ms` (two clocks disagree and
/// nothing tells which is wrong). The last verdict then stands: a skewed node that hears from
/// only one of two peers for a round stays skewed, and a node never blamed stays unblamed.
pub fn decides(peer_offsets: &[i64], asked: usize, max_drift_ms: u64) -> bool {
    if asked > 0 && peer_offsets.is_empty() {
        return false;
    }
    let mut all: Vec<i64> = peer_offsets.to_vec();
    all.push(0);
    all.sort_unstable();
    let n = all.len();
    n % 2 == 1
        || (all[n / 2 - 1].unsigned_abs() > max_drift_ms)
            == (all[n / 2].unsigned_abs() > max_drift_ms)
}

/// Checks the clock every `interval` (and when the view changes) until shutdown.
pub async fn run(node: Arc<Context>, interval: Duration) {
    let mut views = node.watch_view();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = node.shutdown_token().cancelled() => return,
            _ = tick.tick() => {}
            () = node.clock_check().soon.notified() => {}
            changed = views.changed() => if changed.is_err() { return },
        }
        check_once(&node).await;
    }
}

/// Asks every live peer for its clock and records the cluster's offset.
pub async fn check_once(node: &Arc<Context>) {
    let view = node.view();
    let self_id = node.config().node_id.clone();
    let timeout = node.config().replication.replica_timeout;
    let mut calls = JoinSet::new();
    let mut asked = 0;
    for member in view.topology.members().iter().filter(|m| {
        m.node_id != self_id
            && matches!(
                m.state,
                NodeState::Joining | NodeState::Active | NodeState::Leaving
            )
    }) {
        let Ok(mut client) = node.peers().internal_client(&member.cluster_addr) else {
            continue;
        };
        let node = node.clone();
        asked += 1;
        crate::logging::spawn_in(&mut calls, async move {
            let before = node.now_ms();
            let mut request = tonic::Request::new(v1::ClockRequest {});
            request.set_timeout(timeout);
            let answer =
                tokio::time::timeout(timeout, crate::peer::call(client.clock(request))).await;
            let after = node.now_ms();
            let peer_now = answer.ok()?.ok()?.now_ms;
            let local = before / 2 + after / 2;
            Some(i64::try_from(peer_now).ok()? - i64::try_from(local).ok()?)
        });
    }
    let mut offsets = Vec::new();
    while let Some(joined) = calls.join_next().await {
        if let Ok(Some(offset)) = joined {
            offsets.push(offset);
        }
    }
    let offset = cluster_offset(&offsets);
    let max_drift = node.config().store.max_clock_drift_ms;
    if !decides(&offsets, asked, max_drift) {
        tracing::debug!(
            asked,
            answered = offsets.len(),
            offset_ms = offset,
            "clock check undecided (too few peers answered to tell whose clock is wrong); the last verdict stands"
        );
        return;
    }
    let skewed = offset.unsigned_abs() > max_drift;
    let check = node.clock_check();
    let was = check.record(offset, skewed);
    node.metrics().set_clock_offset(offset, skewed);
    match (was, skewed) {
        (false, true) => {
            // What this node stamped beyond the cluster's clock plus the drift bound (writes it
            // coordinated before the skew was noticed): no replica takes them, so they go. Once
            // here, it stamps nothing more until the clock is corrected: one scan is enough.
            let cluster_now = node.now_ms().saturating_add_signed(offset);
            let limit = Hlc::at_millis(cluster_now.saturating_add(max_drift));
            let dropped = node.store().drop_entries_after(limit);
            tracing::error!(
                offset_ms = offset,
                peers = offsets.len(),
                max_drift_ms = max_drift,
                dropped,
                "this node's clock is off from the cluster's by more than max_clock_drift; refusing writes and reads until it is corrected (check NTP)"
            );
        }
        (true, false) => {
            let limit = Hlc::at_millis(node.now_ms().saturating_add(max_drift));
            let dropped = node.store().drop_versions_after(limit);
            tracing::warn!(
                offset_ms = offset,
                dropped,
                "clock back within max_clock_drift of the cluster's; writes accepted again, entries stamped too far ahead dropped"
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wrong_clock_among_three_is_outvoted() {
        // A good node sees one peer agree and one an hour ahead.
        assert_eq!(cluster_offset(&[5, 3_600_000]), 5);
        // The node an hour ahead sees both peers an hour behind it.
        assert_eq!(cluster_offset(&[-3_600_000, -3_600_010]), -3_600_000);
        // Five nodes, two of them off in different directions.
        assert_eq!(cluster_offset(&[-3_600_000, 40, 3_600_000, -20]), 0);
    }

    #[test]
    fn two_nodes_that_disagree_blame_neither() {
        assert_eq!(cluster_offset(&[3_600_000]), 0);
        assert_eq!(cluster_offset(&[-3_600_000]), 0);
        assert_eq!(cluster_offset(&[]), 0, "alone: nothing to compare");
    }

    #[test]
    fn a_check_that_cannot_tell_leaves_the_verdict_standing() {
        let max = 60_000;
        // n3 of three, an hour ahead: both peers answering decide; one alone does not.
        assert!(decides(&[-3_600_000, -3_600_010], 2, max));
        assert!(!decides(&[-3_600_000], 2, max));
        // Nobody answered: nothing to go on. Nobody to ask: alone, never skewed.
        assert!(!decides(&[], 2, max));
        assert!(decides(&[], 0, max));
        // Two middle clocks on the same side of the bound decide either way.
        assert!(decides(&[5], 1, max));
        assert!(decides(&[-3_600_000, 40, 3_600_000, -20], 4, max));
    }

    #[test]
    fn the_refusal_says_which_way_and_how_far() {
        let check = ClockCheck::default();
        assert_eq!(check.refusal(60_000), None);
        check.record(-3_600_000, true);
        assert_eq!(
            check.refusal(60_000).unwrap(),
            "clock skew: this node's clock is 3600 s ahead of the cluster's (median of the \
             members' clocks), more than max_clock_drift (60 s); refusing writes until it is \
             corrected"
        );
    }
}
