//! The cluster's story in the log: one INFO line per member state change between two
//! consecutive views of this node (never whole views, nothing for a view that changed nothing).
//!
//! | Line | When (previous → new, for one member id) |
//! |---|---|
//! | `member joining` | first seen Joining |
//! | `member active` | Joining → Active, or first seen Active (it serves and owns ranges) |
//! | `member suspected` | → Suspect (failure detection suspects it; still in the ring) |
//! | `member no longer suspected` | Suspect → Joining/Active (it refuted the suspicion) |
//! | `member declared dead` | → Dead (failure detection gave up on it; out of the ring) |
//! | `member leaving` | → Leaving (a graceful leave or drain: it hands off its data) |
//! | `member left` | → Left (it left gossip after announcing Leaving: drained, not failed) |
//! | `member restarting` | → Restarting (stopped for a quick restart with its data on disk, or back from one and catching up; still in the ring) |
//! | `member rejoined` | a new incarnation of the same node id (a restart, or a rejoin after it was declared dead), also when the old one had already been removed from the view (remembered for [`REMEMBER_REMOVED`]) |
//! | `member removed` | no longer in the view (`dead_retention` after it died or left; or a new incarnation whose metadata has not arrived yet) |
//! | `member state changed` | any other change |
//!
//! Fields (all Display, no `Some(...)`): `member` (its node id), `state` (the new state; the
//! last one for `member removed`), `from` (the previous state; absent when first seen and for
//! `member removed`), `incarnation`, `addr` (its gRPC address), `zone` (when it has one) and,
//! after lines were held back, `suppressed`.
//!
//! **Flood bound.** Each member has a budget of [`BURST`] lines, refilled by one every
//! [`REFILL`]: a member that flaps (suspected, refuted, suspected...) logs its first changes,
//! then at most one line per [`REFILL`], and the next line it logs says how many were held
//! back. `member removed` is always logged (it ends the member's story and reports what was held
//! back). Budgets are kept only for members in the view.

use std::collections::BTreeMap;
use std::time::Duration;

use ringcache_proto::topology::{Member, NodeState};
use tokio::time::Instant;

/// Lines a member may log at once.
pub const BURST: u32 = 10;
/// One more line per member after this long.
pub const REFILL: Duration = Duration::from_secs(6);
/// How long the incarnation of a member removed from the view is remembered, so that its
/// return as a new incarnation reads as `member rejoined`.
pub const REMEMBER_REMOVED: Duration = Duration::from_secs(600);
/// Most removed members remembered (the oldest are forgotten first).
pub const MAX_REMEMBERED: usize = 1024;

/// The kind of one member's change between two views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// First seen Joining.
    Joining,
    /// Joining → Active, or first seen Active.
    Active,
    /// Now Suspect.
    Suspected,
    /// Suspect → Joining or Active.
    Recovered,
    /// Now Dead (declared down).
    Dead,
    /// Now Leaving.
    Leaving,
    /// Now Left (drained).
    Left,
    /// Now Restarting (a quick restart; still in the ring).
    Restarting,
    /// A new incarnation of the node id.
    Rejoined,
    /// No longer in the view.
    Removed,
    /// Any other state change.
    Other,
}

impl Change {
    /// The line's message (stable wording: operators grep for it).
    pub fn message(self) -> &'static str {
        match self {
            Self::Joining => "member joining",
            Self::Active => "member active",
            Self::Suspected => "member suspected",
            Self::Recovered => "member no longer suspected",
            Self::Dead => "member declared dead",
            Self::Leaving => "member leaving",
            Self::Left => "member left",
            Self::Restarting => "member restarting",
            Self::Rejoined => "member rejoined",
            Self::Removed => "member removed",
            Self::Other => "member state changed",
        }
    }
}

/// One member's change: the kind, the member as it is now (as it was, for `Removed`) and its
/// previous state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange<'a> {
    /// What happened.
    pub change: Change,
    /// The member in the new view (in the old one for [`Change::Removed`]).
    pub member: &'a Member,
    /// Its state in the old view; `None` when it was not in it.
    pub from: Option<NodeState>,
}

/// The changes from `old` to `new`, by member id; `own_id` (this node) is left out: the node
/// logs its own transitions itself.
pub fn diff<'a>(own_id: &str, old: &'a [Member], new: &'a [Member]) -> Vec<MemberChange<'a>> {
    diff_remembering(own_id, old, new, |_| None)
}

/// [`diff`], where `removed(id)` gives the incarnation of a member removed from an earlier view:
/// one that comes back as another incarnation has rejoined.
fn diff_remembering<'a>(
    own_id: &str,
    old: &'a [Member],
    new: &'a [Member],
    removed: impl Fn(&str) -> Option<u64>,
) -> Vec<MemberChange<'a>> {
    let mut before: BTreeMap<&str, &Member> = BTreeMap::new();
    for member in old.iter().filter(|m| m.node_id != own_id) {
        before.insert(&member.node_id, member);
    }
    let mut changes = Vec::new();
    for member in new.iter().filter(|m| m.node_id != own_id) {
        let previous = before.remove(member.node_id.as_str());
        let change = match previous {
            None if removed(&member.node_id).is_some_and(|inc| inc != member.incarnation) => {
                Some(Change::Rejoined)
            }
            _ => classify(previous, member),
        };
        if let Some(change) = change {
            changes.push(MemberChange {
                change,
                member,
                from: previous.map(|p| p.state),
            });
        }
    }
    for member in before.into_values() {
        changes.push(MemberChange {
            change: Change::Removed,
            member,
            from: None,
        });
    }
    changes
}

/// What changed for a member now in the view; `None` when nothing did.
fn classify(previous: Option<&Member>, now: &Member) -> Option<Change> {
    use NodeState::{Active, Dead, Joining, Leaving, Left, Restarting, Suspect};
    let Some(previous) = previous else {
        return Some(match now.state {
            Joining => Change::Joining,
            Active => Change::Active,
            Suspect => Change::Suspected,
            Leaving => Change::Leaving,
            Dead => Change::Dead,
            Left => Change::Left,
            Restarting => Change::Restarting,
        });
    };
    if previous.incarnation != now.incarnation {
        return Some(Change::Rejoined);
    }
    Some(match (previous.state, now.state) {
        (from, to) if from == to => return None,
        (_, Suspect) => Change::Suspected,
        (_, Restarting) => Change::Restarting,
        (Restarting, Active) => Change::Active,
        (_, Leaving) => Change::Leaving,
        (_, Left) => Change::Left,
        (_, Dead) => Change::Dead,
        (Joining, Active) => Change::Active,
        (Suspect, Joining | Active) => Change::Recovered,
        _ => Change::Other,
    })
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    tokens: u32,
    refilled_at: Instant,
    suppressed: u64,
}

/// Logs member changes under the per-member budget (see the module docs).
#[derive(Debug, Default)]
pub struct MemberLog {
    budgets: BTreeMap<String, Budget>,
    /// Members removed from the view: their last incarnation and when they were removed.
    removed: BTreeMap<String, (u64, Instant)>,
}

impl MemberLog {
    /// Logs the changes from `old` to `new` at `now`.
    pub fn log(&mut self, now: Instant, own_id: &str, old: &[Member], new: &[Member]) {
        for (change, suppressed) in self.changes(now, own_id, old, new) {
            emit(&change, suppressed);
        }
    }

    /// The changes to log from `old` to `new` at `now`, each with the number of lines of its
    /// member held back before it; keeps the budgets and the removed members up to date.
    fn changes<'a>(
        &mut self,
        now: Instant,
        own_id: &str,
        old: &'a [Member],
        new: &'a [Member],
    ) -> Vec<(MemberChange<'a>, u64)> {
        self.removed
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < REMEMBER_REMOVED);
        let removed = &self.removed;
        let changes = diff_remembering(own_id, old, new, |id| removed.get(id).map(|(inc, _)| *inc));
        let admitted = self.admit(now, changes);
        for (change, _) in &admitted {
            if change.change == Change::Removed {
                let member = change.member;
                self.removed
                    .insert(member.node_id.clone(), (member.incarnation, now));
            }
        }
        for member in new {
            self.removed.remove(&member.node_id);
        }
        while self.removed.len() > MAX_REMEMBERED {
            let oldest = self
                .removed
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.removed.remove(&id),
                None => break,
            };
        }
        self.budgets
            .retain(|id, _| new.iter().any(|m| &m.node_id == id));
        admitted
    }

    /// The changes to log now, each with the number of lines of its member held back before
    /// it; charges the budgets.
    fn admit<'a>(
        &mut self,
        now: Instant,
        changes: Vec<MemberChange<'a>>,
    ) -> Vec<(MemberChange<'a>, u64)> {
        let mut admitted = Vec::new();
        for change in changes {
            let budget = self
                .budgets
                .entry(change.member.node_id.clone())
                .or_insert(Budget {
                    tokens: BURST,
                    refilled_at: now,
                    suppressed: 0,
                });
            let refills =
                now.saturating_duration_since(budget.refilled_at).as_nanos() / REFILL.as_nanos();
            if refills > 0 {
                let refills = u32::try_from(refills).unwrap_or(u32::MAX);
                budget.tokens = budget.tokens.saturating_add(refills).min(BURST);
                budget.refilled_at = if budget.tokens == BURST {
                    now
                } else {
                    budget.refilled_at + REFILL * refills
                };
            }
            if budget.tokens > 0 || change.change == Change::Removed {
                budget.tokens = budget.tokens.saturating_sub(1);
                admitted.push((change, std::mem::take(&mut budget.suppressed)));
            } else {
                budget.suppressed += 1;
            }
        }
        admitted
    }
}

fn emit(change: &MemberChange<'_>, suppressed: u64) {
    let member = change.member;
    tracing::info!(
        member = %member.node_id,
        state = %member.state.as_str(),
        from = change.from.map(|from| display(from.as_str())),
        incarnation = member.incarnation,
        addr = (!member.grpc_addr.is_empty()).then(|| display(&member.grpc_addr)),
        zone = member.zone.as_deref().map(display),
        suppressed = (suppressed > 0).then_some(suppressed),
        "{}",
        change.change.message()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, state: NodeState, incarnation: u64) -> Member {
        Member::for_test(id)
            .with_state(state)
            .with_incarnation(incarnation)
            .with_grpc_addr(format!("127.0.0.1:{}", 7000 + incarnation))
    }

    fn kinds(own: &str, old: &[Member], new: &[Member]) -> Vec<(String, Change)> {
        diff(own, old, new)
            .into_iter()
            .map(|c| (c.member.node_id.clone(), c.change))
            .collect()
    }

    fn one(old: Option<(NodeState, u64)>, new: (NodeState, u64)) -> Change {
        let old: Vec<Member> = old.into_iter().map(|(s, i)| member("b", s, i)).collect();
        let new = [member("b", new.0, new.1)];
        let changes = kinds("a", &old, &new);
        assert_eq!(changes.len(), 1, "{changes:?}");
        changes[0].1
    }

    #[test]
    fn each_state_change_has_its_line() {
        use NodeState::*;
        assert_eq!(one(None, (Joining, 1)), Change::Joining);
        assert_eq!(one(None, (Active, 1)), Change::Active);
        assert_eq!(one(Some((Joining, 1)), (Active, 1)), Change::Active);
        assert_eq!(one(Some((Active, 1)), (Suspect, 1)), Change::Suspected);
        assert_eq!(one(Some((Suspect, 1)), (Active, 1)), Change::Recovered);
        assert_eq!(one(Some((Suspect, 1)), (Dead, 1)), Change::Dead);
        assert_eq!(one(Some((Active, 1)), (Dead, 1)), Change::Dead);
        assert_eq!(one(Some((Active, 1)), (Leaving, 1)), Change::Leaving);
        assert_eq!(one(Some((Leaving, 1)), (Left, 1)), Change::Left);
        assert_eq!(one(None, (Left, 1)), Change::Left);
        // Gone without its Leaving announcement: a failure as far as this node can tell.
        assert_eq!(one(Some((Leaving, 1)), (Dead, 1)), Change::Dead);
        assert_eq!(one(Some((Dead, 1)), (Joining, 2)), Change::Rejoined);
        assert_eq!(one(Some((Active, 1)), (Active, 2)), Change::Rejoined);
        assert_eq!(one(Some((Active, 1)), (Joining, 1)), Change::Other);
    }

    #[test]
    fn unchanged_members_and_this_node_log_nothing() {
        use NodeState::*;
        let view = [member("a", Active, 1), member("b", Active, 1)];
        assert!(diff("a", &view, &view).is_empty());
        // This node's own changes are the node's to log.
        let later = [member("a", Leaving, 1), member("b", Active, 1)];
        assert!(diff("a", &view, &later).is_empty());
        let gone = [member("a", Active, 1)];
        assert_eq!(
            kinds("a", &view, &gone),
            [("b".to_owned(), Change::Removed)]
        );
        let changes = diff("a", &view, &gone);
        assert_eq!((changes[0].member.state, changes[0].from), (Active, None));
    }

    #[test]
    fn a_member_back_as_another_incarnation_after_its_removal_has_rejoined() {
        use NodeState::*;
        let start = Instant::now();
        let mut log = MemberLog::default();
        let kinds = |admitted: Vec<(MemberChange<'_>, u64)>| -> Vec<Change> {
            admitted.into_iter().map(|(c, _)| c.change).collect()
        };
        let first = [member("b", Active, 1)];
        let restarted = [member("b", Joining, 2)];
        assert_eq!(
            kinds(log.changes(start, "a", &[], &first)),
            [Change::Active]
        );
        assert_eq!(
            kinds(log.changes(start, "a", &first, &[])),
            [Change::Removed]
        );
        assert_eq!(
            kinds(log.changes(start, "a", &[], &restarted)),
            [Change::Rejoined]
        );
        // The same incarnation back (its metadata was late) is no rejoin.
        assert_eq!(
            kinds(log.changes(start, "a", &restarted, &[])),
            [Change::Removed]
        );
        assert_eq!(
            kinds(log.changes(start, "a", &[], &restarted)),
            [Change::Joining]
        );
        // Long after its removal a member is new again.
        log.changes(start, "a", &restarted, &[]);
        let later = start + REMEMBER_REMOVED;
        assert_eq!(
            kinds(log.changes(later, "a", &[], &first)),
            [Change::Active]
        );
    }

    #[test]
    fn a_flapping_member_is_held_to_its_budget_and_the_next_line_counts_what_was_held() {
        use NodeState::*;
        let start = Instant::now();
        let mut log = MemberLog::default();
        let alive = [member("b", Active, 1)];
        let suspect = [member("b", Suspect, 1)];
        let mut logged = 0;
        let mut held_reported = 0;
        // 100 flaps within one second.
        for i in 0..100u32 {
            let now = start + Duration::from_millis(u64::from(i) * 10);
            let (old, new) = if i % 2 == 0 {
                (&alive, &suspect)
            } else {
                (&suspect, &alive)
            };
            for (_, suppressed) in log.admit(now, diff("a", old, new)) {
                logged += 1;
                held_reported += suppressed;
            }
        }
        assert_eq!(logged, BURST as usize, "the burst, then nothing");
        assert_eq!(held_reported, 0);
        // One refill later, one line, saying how many were held back.
        let later = start + Duration::from_secs(1) + REFILL;
        let admitted = log.admit(later, diff("a", &alive, &suspect));
        assert_eq!(admitted.len(), 1);
        assert_eq!(admitted[0].1, 100 - u64::from(BURST));
        // Removal is always logged, even with the budget spent.
        let admitted = log.admit(later, diff("a", &suspect, &[]));
        assert_eq!(admitted.len(), 1);
        assert_eq!(admitted[0].0.change, Change::Removed);
    }

    #[test]
    fn the_budget_refills_one_line_per_period_up_to_the_burst() {
        use NodeState::*;
        let start = Instant::now();
        let mut log = MemberLog::default();
        let alive = [member("b", Active, 1)];
        let suspect = [member("b", Suspect, 1)];
        for _ in 0..BURST {
            assert_eq!(log.admit(start, diff("a", &alive, &suspect)).len(), 1);
        }
        assert!(log.admit(start, diff("a", &alive, &suspect)).is_empty());
        // Three periods: three lines.
        let later = start + REFILL * 3;
        let admitted: usize = (0..5)
            .map(|_| log.admit(later, diff("a", &alive, &suspect)).len())
            .sum();
        assert_eq!(admitted, 3);
        // A long quiet spell refills no more than the burst.
        let much_later = later + REFILL * 1000;
        let admitted: usize = (0..(2 * BURST))
            .map(|_| log.admit(much_later, diff("a", &alive, &suspect)).len())
            .sum();
        assert_eq!(admitted, BURST as usize);
    }
}
