//! The cluster's known size: every node that has owned ranges, whether this node can reach it
//! now or not, and the two rules built on it (minority protection).
//!
//! A node's view shrinks when failure detection removes members it cannot reach. Counting
//! QUORUM against that view would let a node cut off from the others, which sees only itself,
//! call itself a majority: an isolated node of a 3-node R=3 cluster acknowledged hundreds of
//! QUORUM writes that way. So each node remembers the members that ever owned ranges
//! (Active, Suspect or Leaving in its view), and forgets one only when it left on purpose
//! (seen Leaving, then gone) or an operator says it is gone for good (`ringctl forget`). A
//! member that died or is partitioned away stays known.
//!
//! The rules, for QUORUM and ALL (ONE stays available on any side of a partition):
//! - **Replicas counted against the known size**: a key has R' = min(R, known) replicas, and a
//!   level needs its share of R' (QUORUM R'/2+1), whatever the current ring holds. When the
//!   ring offers fewer replicas than that, the request fails as `UNAVAILABLE`.
//! - **Majority of the known cluster**: a node coordinates QUORUM and ALL requests only while
//!   it sees more than half of the known members alive (Active or Leaving). On the minority side
//!   of a 2|3 split of 5 nodes the ring still gives each key 2 replicas, enough for a QUORUM of
//!   3; this rule is what refuses it there.
//!
//! This is deterministic and free of I/O: topologies in, counts out.

use std::collections::BTreeMap;

use ringcache_proto::topology::{Member, NodeState};

/// How this node remembers one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// It owned ranges the last time the view showed it (or died while owning them).
    Owner,
    /// It was last seen leaving on purpose: it is forgotten once it is gone.
    Leaving,
}

/// The members this node knows the cluster to have.
#[derive(Debug, Default, Clone)]
pub struct KnownMembers {
    members: BTreeMap<String, Known>,
}

/// Why a member could not be forgotten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    /// The member is alive in the view: it must leave (drain) instead.
    #[error("{0} is alive in this node's view ({1}); drain it instead of forgetting it")]
    Alive(String, &'static str),
    /// The member is not known here.
    #[error("{0} is not a known member of this node")]
    Unknown(String),
}

impl KnownMembers {
    /// Nobody known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in a new member list (the whole view).
    pub fn observe(&mut self, members: &[Member]) {
        for member in members {
            match member.state {
                NodeState::Active | NodeState::Suspect | NodeState::Restarting => {
                    self.members.insert(member.node_id.clone(), Known::Owner);
                }
                NodeState::Leaving => {
                    self.members.insert(member.node_id.clone(), Known::Leaving);
                }
                NodeState::Dead => {
                    // A member that died while leaving is gone on purpose.
                    if self.members.get(&member.node_id) == Some(&Known::Leaving) {
                        self.members.remove(&member.node_id);
                    }
                }
                NodeState::Left => {
                    self.members.remove(&member.node_id);
                }
                // Not an owner yet: a joiner that dies before it turns Active never counted.
                NodeState::Joining => {}
            }
        }
        self.members
            .retain(|id, known| *known == Known::Owner || members.iter().any(|m| &m.node_id == id));
    }

    /// Forgets a member that is gone for good; refused while it is alive in `members`.
    pub fn forget(&mut self, node_id: &str, members: &[Member]) -> Result<(), ForgetError> {
        if let Some(member) = members.iter().find(|m| m.node_id == node_id)
            && matches!(
                member.state,
                NodeState::Joining | NodeState::Active | NodeState::Leaving | NodeState::Suspect
            )
        {
            return Err(ForgetError::Alive(
                node_id.to_owned(),
                member.state.as_str(),
            ));
        }
        self.members
            .remove(node_id)
            .map(|_| ())
            .ok_or_else(|| ForgetError::Unknown(node_id.to_owned()))
    }

    /// How many members are known.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether nobody is known.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The known members' ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// The known members that `members` shows alive (Active or Leaving).
    pub fn alive_in(&self, members: &[Member]) -> usize {
        members
            .iter()
            .filter(|m| matches!(m.state, NodeState::Active | NodeState::Leaving))
            .filter(|m| self.members.contains_key(&m.node_id))
            .count()
    }
}

/// What minority protection needs to know about one view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    /// Members known to the cluster (at least 1: this node).
    pub known: usize,
    /// Known members alive in the view.
    pub alive: usize,
}

impl Quorum {
    /// The counts of a view.
    pub fn of(known: &KnownMembers, members: &[Member]) -> Self {
        Self {
            known: known.len().max(1),
            alive: known.alive_in(members),
        }
    }

    /// A lone node: knows itself, sees itself.
    pub fn alone() -> Self {
        Self { known: 1, alive: 1 }
    }

    /// Whether the view holds a majority of the known members.
    pub fn is_majority(self) -> bool {
        self.alive * 2 > self.known
    }

    /// The replicas a key has for the consistency rules: the replication factor capped by the
    /// known size (never by the live ring), and at least what the ring gave.
    pub fn replicas(self, replication_factor: usize, in_ring: usize) -> usize {
        replication_factor.min(self.known).max(in_ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, state: NodeState) -> Member {
        Member::for_test(id).with_state(state)
    }

    fn view(list: &[(&str, NodeState)]) -> Vec<Member> {
        list.iter().map(|(id, s)| member(id, *s)).collect()
    }

    use NodeState::*;

    #[test]
    fn a_member_cut_off_stays_known_after_it_leaves_the_view() {
        let mut known = KnownMembers::new();
        known.observe(&view(&[("a", Active), ("b", Active), ("c", Active)]));
        assert_eq!(known.len(), 3);
        // c's view after the others were declared dead, then removed after the retention.
        let isolated = view(&[("a", Dead), ("b", Dead), ("c", Active)]);
        known.observe(&isolated);
        known.observe(&view(&[("c", Active)]));
        assert_eq!(known.len(), 3, "failures never shrink the known size");
        let q = Quorum::of(&known, &view(&[("c", Active)]));
        assert_eq!(q, Quorum { known: 3, alive: 1 });
        assert!(!q.is_majority());
        assert_eq!(q.replicas(3, 1), 3, "QUORUM still needs 2 of 3");
    }

    #[test]
    fn a_minority_of_a_larger_cluster_is_refused_even_with_enough_ring_replicas() {
        let mut known = KnownMembers::new();
        let all = ["a", "b", "c", "d", "e"].map(|id| (id, Active));
        known.observe(&view(&all));
        let minority = view(&[("a", Active), ("b", Active)]);
        known.observe(&minority);
        let q = Quorum::of(&known, &minority);
        assert!(!q.is_majority(), "2 of 5");
        let majority = view(&[("c", Active), ("d", Active), ("e", Active), ("a", Dead)]);
        assert!(Quorum::of(&known, &majority).is_majority(), "3 of 5");
    }

    #[test]
    fn members_that_leave_on_purpose_are_forgotten() {
        let mut known = KnownMembers::new();
        known.observe(&view(&[("a", Active), ("b", Active), ("c", Active)]));
        known.observe(&view(&[("a", Active), ("b", Active), ("c", Leaving)]));
        assert_eq!(known.len(), 3, "still owning ranges while it hands off");
        known.observe(&view(&[("a", Active), ("b", Active)]));
        assert_eq!(known.ids().collect::<Vec<_>>(), ["a", "b"]);
        // Leaving, then reported dead (its gossip stopped): gone on purpose too.
        known.observe(&view(&[("a", Active), ("b", Leaving)]));
        known.observe(&view(&[("a", Active), ("b", Dead)]));
        assert_eq!(known.ids().collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            Quorum::of(&known, &view(&[("a", Active)])).replicas(3, 1),
            1
        );
    }

    #[test]
    fn joiners_count_once_they_own_ranges() {
        let mut known = KnownMembers::new();
        known.observe(&view(&[("a", Active), ("b", Joining)]));
        assert_eq!(known.len(), 1);
        known.observe(&view(&[("a", Active), ("b", Dead)]));
        assert_eq!(known.len(), 1, "a joiner that died never counted");
        known.observe(&view(&[("a", Active), ("b", Active)]));
        assert_eq!(known.len(), 2);
    }

    #[test]
    fn forget_takes_a_dead_member_out_and_refuses_a_live_one() {
        let mut known = KnownMembers::new();
        known.observe(&view(&[("a", Active), ("b", Active), ("c", Active)]));
        let now = view(&[("a", Active), ("b", Suspect), ("c", Dead)]);
        known.observe(&now);
        assert_eq!(
            known.forget("b", &now),
            Err(ForgetError::Alive("b".to_owned(), "suspect"))
        );
        assert_eq!(known.forget("c", &now), Ok(()));
        assert_eq!(
            known.forget("c", &now),
            Err(ForgetError::Unknown("c".to_owned()))
        );
        assert_eq!(known.len(), 2);
    }

    #[test]
    fn a_lone_node_is_its_own_majority() {
        let mut known = KnownMembers::new();
        let alone = view(&[("a", Active)]);
        known.observe(&alone);
        let q = Quorum::of(&known, &alone);
        assert!(q.is_majority());
        assert_eq!(q.replicas(3, 1), 1);
        assert_eq!(Quorum::alone(), q);
    }
}
