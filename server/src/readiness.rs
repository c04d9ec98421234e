//! What `/health/ready` answers: whether the node has joined and its ring has converged.
//!
//! A node is ready when all of these hold, checked in this order (the first that fails is the
//! reason given):
//! 1. it serves (listeners bound, gossip started): else `starting`;
//! 2. it is not shutting down or Leaving: else `leaving`;
//! 3. it did not refuse to join a cluster whose placement settings differ from its own
//!    (`refused: ...`; it stays Joining until restarted with the cluster's settings);
//! 4. it is Active: a Joining node is still pulling its ranges (`joining`);
//! 5. it has joined: a node whose seeds resolved to at least one address other than its own has
//!    seen another live member (Joining, Active or Leaving) at least once since it started, else
//!    `not joined: no peer reachable`. A node with no seeds, or whose seeds resolve only to
//!    itself (the first pod of a StatefulSet lists itself and pods that do not exist yet),
//!    founds a cluster and needs no peer. A node none of whose seeds resolves stays Joining and
//!    says `joining: waiting for a seed to resolve` ([`crate::seeds`]);
//! 6. its clock agrees with the cluster's within `max_clock_drift` (else `clock skew: ...`, see
//!    [`crate::skew`]): such a node refuses writes;
//! 7. its ring has converged: when its view holds other members that are not Dead, it is Active
//!    in that view, no member is Suspect, and the view has not changed for `ready_settle`; else
//!    `ring settling`. A node alone in its view has nothing to converge with.
//!
//! "Joined" is latched: a node whose peers all died later stays joined, and is ready alone
//! rather than taking the last copy of the data out of service.

use std::time::Duration;

use ringcache_proto::topology::{Member, NodeState};
use ringcache_proto::v1;

/// What a node's seeds resolved to before it turned Active ([`crate::seeds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedState {
    /// No seeds, or seeds that resolve only to this node (the first pod of a StatefulSet lists
    /// itself and pods that do not exist yet): it founds a cluster and needs no peer.
    Founder,
    /// Seeds are configured and none resolves yet (why, per seed): the node stays Joining and
    /// resolves them again.
    Unresolved(String),
    /// A seed resolves to another node's address: the node must see another member.
    Peers,
}

/// Everything the readiness decision looks at, read once.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The listeners are bound and gossip (if any) started.
    pub serving: bool,
    /// The node is shutting down.
    pub shutting_down: bool,
    /// The node's own life-cycle state.
    pub state: v1::NodeState,
    /// What the seeds resolved to.
    pub seeds: SeedState,
    /// Another live member has been seen since start.
    pub joined: bool,
    /// The node's id.
    pub node_id: &'a str,
    /// The members of the current view.
    pub members: &'a [Member],
    /// Time since the view last changed.
    pub since_change: Duration,
    /// `ready_settle`.
    pub settle: Duration,
    /// Why the node's clock is off from the cluster's, when it is ([`crate::skew`]).
    pub clock_skew: Option<String>,
    /// Why the node refused to join, when it did: the cluster it found runs with other
    /// placement settings.
    pub join_refused: Option<String>,
}

/// `Ok` when ready, else why not (one line, starting with one of `starting`, `leaving`,
/// `joining`, `not joined`, `clock skew`, `ring settling`).
pub fn check(inputs: &Inputs<'_>) -> Result<(), String> {
    if !inputs.serving {
        return Err("starting".to_owned());
    }
    if inputs.shutting_down || inputs.state == v1::NodeState::Leaving {
        return Err("leaving: handing off its data before it stops".to_owned());
    }
    if let Some(why) = &inputs.join_refused {
        return Err(why.clone());
    }
    match inputs.state {
        v1::NodeState::Active => {}
        v1::NodeState::Joining => {
            if let SeedState::Unresolved(why) = &inputs.seeds {
                return Err(format!(
                    "joining: waiting for a seed to resolve ({why}); retrying"
                ));
            }
            return Err("joining: pulling its ranges from the cluster".to_owned());
        }
        other => {
            return Err(format!(
                "state {}",
                other
                    .as_str_name()
                    .trim_start_matches("NODE_STATE_")
                    .to_lowercase()
            ));
        }
    }
    if inputs.seeds != SeedState::Founder && !inputs.joined {
        return Err(
            "not joined: no peer reachable (no other member seen through the seeds yet)".to_owned(),
        );
    }
    if let Some(why) = &inputs.clock_skew {
        return Err(why.clone());
    }
    let others = inputs
        .members
        .iter()
        .filter(|m| m.node_id != inputs.node_id && !m.state.is_gone());
    let mut alone = true;
    for member in others {
        alone = false;
        if member.state == NodeState::Suspect {
            return Err(format!("ring settling: {} is suspect", member.node_id));
        }
    }
    if alone {
        return Ok(());
    }
    let own = inputs.members.iter().find(|m| m.node_id == inputs.node_id);
    if own.is_none_or(|m| m.state != NodeState::Active) {
        return Err("ring settling: this node is not active in its own view yet".to_owned());
    }
    if inputs.since_change < inputs.settle {
        return Err(format!(
            "ring settling: the topology changed {} ago (settle window {})",
            millis(inputs.since_change),
            millis(inputs.settle)
        ));
    }
    Ok(())
}

fn millis(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(
        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, state: NodeState) -> Member {
        Member::for_test(id).with_state(state)
    }

    fn ready_inputs(members: &[Member]) -> Inputs<'_> {
        Inputs {
            serving: true,
            shutting_down: false,
            state: v1::NodeState::Active,
            seeds: SeedState::Peers,
            joined: true,
            node_id: "n1",
            members,
            since_change: Duration::from_secs(10),
            settle: Duration::from_secs(2),
            clock_skew: None,
            join_refused: None,
        }
    }

    fn reason(inputs: &Inputs<'_>) -> String {
        check(inputs).expect_err("not ready")
    }

    #[test]
    fn a_joined_node_in_a_settled_ring_is_ready() {
        let members = [
            member("n1", NodeState::Active),
            member("n2", NodeState::Active),
        ];
        assert_eq!(check(&ready_inputs(&members)), Ok(()));
    }

    #[test]
    fn each_gap_names_itself() {
        let members = [
            member("n1", NodeState::Active),
            member("n2", NodeState::Active),
        ];
        let base = ready_inputs(&members);
        let with = |f: &dyn Fn(&mut Inputs<'_>)| {
            let mut inputs = base.clone();
            f(&mut inputs);
            reason(&inputs)
        };
        assert_eq!(with(&|i| i.serving = false), "starting");
        assert!(with(&|i| i.shutting_down = true).starts_with("leaving"));
        assert!(with(&|i| i.state = v1::NodeState::Leaving).starts_with("leaving"));
        assert!(with(&|i| i.state = v1::NodeState::Joining).starts_with("joining: pulling"));
        assert_eq!(
            with(&|i| {
                i.state = v1::NodeState::Joining;
                i.seeds = SeedState::Unresolved("cache-0.cache:7380: no such host".to_owned());
            }),
            "joining: waiting for a seed to resolve (cache-0.cache:7380: no such host); retrying"
        );
        assert!(with(&|i| i.joined = false).starts_with("not joined: no peer reachable"));
        let settling = with(&|i| i.since_change = Duration::from_millis(500));
        assert_eq!(
            settling,
            "ring settling: the topology changed 500ms ago (settle window 2s)"
        );
        let suspect = [
            member("n1", NodeState::Active),
            member("n2", NodeState::Suspect),
        ];
        assert_eq!(
            reason(&ready_inputs(&suspect)),
            "ring settling: n2 is suspect"
        );
        let not_in_view = [
            member("n1", NodeState::Joining),
            member("n2", NodeState::Active),
        ];
        assert!(reason(&ready_inputs(&not_in_view)).starts_with("ring settling: this node"));
    }

    #[test]
    fn a_node_without_reachable_seeds_is_ready_alone_at_once() {
        // No seeds, or seeds that are only itself: nobody to join, nothing to settle.
        let alone = [member("n1", NodeState::Active)];
        let inputs = Inputs {
            seeds: SeedState::Founder,
            joined: false,
            since_change: Duration::ZERO,
            ..ready_inputs(&alone)
        };
        assert_eq!(check(&inputs), Ok(()));
        // Dead members do not count as peers to converge with.
        let survivors = [
            member("n1", NodeState::Active),
            member("n2", NodeState::Dead),
        ];
        let inputs = Inputs {
            since_change: Duration::ZERO,
            ..ready_inputs(&survivors)
        };
        assert_eq!(check(&inputs), Ok(()));
        // A seeded node that has seen nobody is not ready, even alone in its view.
        let inputs = Inputs {
            joined: false,
            ..ready_inputs(&alone)
        };
        assert!(reason(&inputs).starts_with("not joined"));
    }

    #[test]
    fn a_node_whose_clock_is_off_is_not_ready() {
        let alone = [member("n1", NodeState::Active)];
        let inputs = Inputs {
            clock_skew: Some("clock skew: 3600 s ahead".to_owned()),
            ..ready_inputs(&alone)
        };
        assert_eq!(reason(&inputs), "clock skew: 3600 s ahead");
    }

    #[test]
    fn a_node_that_refused_to_join_says_why() {
        let alone = [member("n1", NodeState::Joining)];
        let inputs = Inputs {
            state: v1::NodeState::Joining,
            join_refused: Some("refused: the cluster's settings differ".to_owned()),
            ..ready_inputs(&alone)
        };
        assert_eq!(reason(&inputs), "refused: the cluster's settings differ");
    }
}
