//! Membership scenarios: several [`Membership`] cores on an in-memory network with simulated
//! time, plus the real driver over loopback UDP.
//!
//! The simulation is deterministic: one seeded RNG picks packet latencies and seeds every core,
//! events run in (time, sequence) order, and "waiting" means running simulated time until a
//! condition holds or a deadline passes. Every assertion names its seed; rerun one with
//! `sim(seed)`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ringcache_proto::topology::{Member, NodeState};

use super::codec::{FrameKind, MAGIC, WIRE_VERSION, frame};
use super::*;

/// How many seeds each randomized scenario runs with.
const SEEDS: u64 = 16;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn node_id(index: usize) -> String {
    format!("n{index}")
}

fn default_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + index as u16))
}

fn meta_for(index: usize, state: MetaState) -> NodeMeta {
    NodeMeta {
        grpc_addr: format!("10.0.0.{index}:7379"),
        http_addr: format!("10.0.0.{index}:7381"),
        cluster_addr: format!("10.0.0.{index}:7382"),
        resp_addr: String::new(),
        weight: 1 + index as u32,
        state,
        settings: ClusterSettings::default(),
        zone: None,
    }
}

enum Event {
    Deliver {
        from: usize,
        to: SocketAddr,
        datagram: Bytes,
    },
    Timer {
        node: usize,
        epoch: u64,
        timer: Timer,
    },
}

struct SimNode {
    core: Membership,
    epoch: u64,
}

/// An in-memory network of membership cores.
struct Sim {
    seed: u64,
    rng: StdRng,
    config: MembershipConfig,
    now: Duration,
    nodes: BTreeMap<usize, SimNode>,
    addrs: BTreeMap<SocketAddr, usize>,
    queue: BTreeMap<(Duration, u64), Event>,
    next_seq: u64,
    next_epoch: u64,
    /// Directed (from, to) pairs whose datagrams are dropped.
    cut: BTreeSet<(usize, usize)>,
    /// Datagrams a core refused (none expected between healthy cores).
    refused: Vec<(usize, DropReason)>,
    /// Probability that any one datagram is lost.
    loss: f64,
    /// Placement settings of nodes that do not run with the default ones.
    settings: BTreeMap<usize, ClusterSettings>,
    /// Nodes starved of CPU: they run in short bursts between stalls (see [`Starved`]).
    starved: BTreeMap<usize, Starved>,
}

/// A node starved of CPU: it runs for `run` (random, up to the bound), then handles nothing for
/// `stall` (random, up to the bound), and so on. Whatever comes due during a stall (datagrams,
/// timers) is handled at its end, in arrival order, with the late time as `now`.
struct Starved {
    run: (Duration, Duration),
    stall: (Duration, Duration),
    /// The current or next stall.
    stall_start: Duration,
    stall_end: Duration,
}

fn sim(seed: u64) -> Sim {
    Sim {
        seed,
        rng: StdRng::seed_from_u64(seed),
        config: MembershipConfig::for_test(),
        now: Duration::ZERO,
        nodes: BTreeMap::new(),
        addrs: BTreeMap::new(),
        queue: BTreeMap::new(),
        next_seq: 0,
        next_epoch: 0,
        cut: BTreeSet::new(),
        refused: Vec::new(),
        loss: 0.0,
        settings: BTreeMap::new(),
        starved: BTreeMap::new(),
    }
}

impl Sim {
    /// Starts node `index` on its default address, incarnation 1, joining through `seeds`.
    fn start(&mut self, index: usize, seeds: &[usize]) {
        let seeds = seeds.iter().map(|s| default_addr(*s)).collect();
        self.start_with(index, default_addr(index), 1, seeds);
    }

    fn start_with(
        &mut self,
        index: usize,
        addr: SocketAddr,
        incarnation: u64,
        seeds: Vec<SocketAddr>,
    ) {
        self.start_named(index, &node_id(index), addr, incarnation, seeds);
    }

    /// Starts sim node `index` under the node id `name` (another node's id, for impostors).
    fn start_named(
        &mut self,
        index: usize,
        name: &str,
        addr: SocketAddr,
        incarnation: u64,
        seeds: Vec<SocketAddr>,
    ) {
        let identity = NodeIdentity::new(name, addr, incarnation).unwrap();
        let core_seed = self.seed ^ ((index as u64) << 32) ^ incarnation;
        let meta = NodeMeta {
            settings: self.settings.get(&index).copied().unwrap_or_default(),
            ..meta_for(index, MetaState::Active)
        };
        let mut core = Membership::new(self.config.clone(), identity, meta, core_seed).unwrap();
        core.join(self.now, seeds);
        self.next_epoch += 1;
        self.addrs.retain(|_, node| *node != index);
        self.addrs.insert(addr, index);
        self.nodes.insert(
            index,
            SimNode {
                core,
                epoch: self.next_epoch,
            },
        );
        self.collect(index);
    }

    /// Node `index` announces Restarting, leaves gossip and stops (`ringctl drain --restart`).
    fn stop_for_restart(&mut self, index: usize) {
        let now = self.now;
        self.core(index)
            .set_meta(now, meta_for(index, MetaState::Restarting))
            .unwrap();
        self.core(index).leave(now);
        self.collect(index);
        self.crash(index);
    }

    /// The process of node `index` stops: its address goes dark and its timers are void.
    fn crash(&mut self, index: usize) {
        self.nodes.remove(&index);
        self.addrs.retain(|_, node| *node != index);
    }

    fn core(&mut self, index: usize) -> &mut Membership {
        &mut self.nodes.get_mut(&index).unwrap().core
    }

    fn view(&self, index: usize) -> &[Member] {
        self.nodes[&index].core.members()
    }

    fn state(&self, viewer: usize, node: usize) -> Option<NodeState> {
        let id = node_id(node);
        self.view(viewer)
            .iter()
            .find(|m| m.node_id == id)
            .map(|m| m.state)
    }

    /// Schedules what node `index` asked for.
    fn collect(&mut self, index: usize) {
        let Some(node) = self.nodes.get_mut(&index) else {
            return;
        };
        let epoch = node.epoch;
        let packets = node.core.take_packets();
        let timers = node.core.take_timers();
        for (to, datagram) in packets {
            if self.loss > 0.0 && self.rng.random_bool(self.loss) {
                continue;
            }
            let latency = ms(1) + Duration::from_micros(self.rng.random_range(0..2_000));
            self.push(
                latency,
                Event::Deliver {
                    from: index,
                    to,
                    datagram,
                },
            );
        }
        for (delay, timer) in timers {
            self.push(
                delay,
                Event::Timer {
                    node: index,
                    epoch,
                    timer,
                },
            );
        }
    }

    fn push(&mut self, after: Duration, event: Event) {
        self.next_seq += 1;
        self.queue.insert((self.now + after, self.next_seq), event);
    }

    /// Runs events until `done` holds (checked before each event) or `deadline`; says whether
    /// `done` held.
    fn run_until(&mut self, deadline: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let next_due = self.queue.first_key_value().map(|((at, _), _)| *at);
            match next_due {
                Some(at) if at <= deadline => {
                    let (_, event) = self.queue.pop_first().unwrap();
                    self.now = at;
                    self.process(event);
                }
                _ => {
                    self.now = deadline;
                    return done(self);
                }
            }
        }
    }

    fn run_for(&mut self, duration: Duration) {
        self.run_until(self.now + duration, |_| false);
    }

    /// Starves node `index` of CPU from now on (see [`Starved`]).
    fn starve(&mut self, index: usize, run: (Duration, Duration), stall: (Duration, Duration)) {
        let start = self.now + self.rng.random_range(run.0..=run.1);
        let end = start + self.rng.random_range(stall.0..=stall.1);
        self.starved.insert(
            index,
            Starved {
                run,
                stall,
                stall_start: start,
                stall_end: end,
            },
        );
    }

    /// When a starved node `index` next gets the CPU, if it is stalled now.
    fn stalled_until(&mut self, index: usize) -> Option<Duration> {
        let now = self.now;
        let rng = &mut self.rng;
        let starved = self.starved.get_mut(&index)?;
        while now >= starved.stall_end {
            starved.stall_start =
                starved.stall_end + rng.random_range(starved.run.0..=starved.run.1);
            starved.stall_end =
                starved.stall_start + rng.random_range(starved.stall.0..=starved.stall.1);
        }
        (now >= starved.stall_start).then_some(starved.stall_end)
    }

    fn process(&mut self, event: Event) {
        let target = match &event {
            Event::Deliver { to, .. } => self.addrs.get(to).copied(),
            Event::Timer { node, .. } => Some(*node),
        };
        if let Some(index) = target
            && let Some(until) = self.stalled_until(index)
        {
            let wait = until - self.now;
            self.push(wait, event);
            return;
        }
        match event {
            Event::Deliver { from, to, datagram } => {
                let Some(&index) = self.addrs.get(&to) else {
                    return;
                };
                if self.cut.contains(&(from, index)) {
                    return;
                }
                let now = self.now;
                if let Err(reason) = self.core(index).handle_data(now, &datagram) {
                    self.refused.push((index, reason));
                }
                self.collect(index);
            }
            Event::Timer { node, epoch, timer } => {
                if self.nodes.get(&node).is_none_or(|n| n.epoch != epoch) {
                    return;
                }
                let now = self.now;
                self.core(node).handle_timer(now, timer);
                self.collect(node);
            }
        }
    }

    fn partition(&mut self, groups: &[&[usize]]) {
        for (i, a) in groups.iter().enumerate() {
            for b in &groups[i + 1..] {
                for x in *a {
                    for y in *b {
                        self.cut.insert((*x, *y));
                        self.cut.insert((*y, *x));
                    }
                }
            }
        }
    }

    fn isolate(&mut self, index: usize) {
        let others: Vec<usize> = self.nodes.keys().copied().filter(|n| *n != index).collect();
        self.partition(&[&[index], &others]);
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Every node in `nodes` lists exactly `nodes`, all Active, with each one's current
    /// identity and metadata.
    fn converged(&self, nodes: &[usize]) -> bool {
        let expected: Vec<Member> = nodes
            .iter()
            .map(|n| {
                let core = &self.nodes[n].core;
                let identity = core.identity();
                let meta = core.meta();
                Member {
                    node_id: node_id(*n),
                    incarnation: identity.incarnation(),
                    state: NodeState::Active,
                    weight: meta.weight,
                    grpc_addr: meta.grpc_addr.clone(),
                    gossip_addr: identity.gossip_addr().to_string(),
                    http_addr: meta.http_addr.clone(),
                    cluster_addr: meta.cluster_addr.clone(),
                    resp_addr: meta.resp_addr.clone(),
                    zone: meta.zone.clone(),
                }
            })
            .collect();
        nodes.iter().all(|n| self.view(*n) == expected.as_slice())
    }

    fn describe(&self) -> String {
        let mut out = format!("seed {} at {:?}:", self.seed, self.now);
        for (index, node) in &self.nodes {
            let members: Vec<String> = node
                .core
                .members()
                .iter()
                .map(|m| format!("{}#{}={}", m.node_id, m.incarnation, m.state))
                .collect();
            out.push_str(&format!("\n  n{index} sees [{}]", members.join(", ")));
        }
        out
    }

    /// Starts `count` nodes, all joining through n0, and waits until they converge.
    fn cluster(seed: u64, count: usize) -> Sim {
        Self::cluster_with(sim(seed), count)
    }

    /// [`Sim::cluster`] of a sim set up beforehand (its config, say).
    fn cluster_with(mut sim: Sim, count: usize) -> Sim {
        sim.start(0, &[]);
        for index in 1..count {
            sim.start(index, &[0]);
        }
        let all: Vec<usize> = (0..count).collect();
        let deadline = sim.now + Duration::from_secs(3);
        assert!(
            sim.run_until(deadline, |s| s.converged(&all)),
            "no convergence: {}",
            sim.describe()
        );
        sim
    }
}

#[test]
fn a_member_with_other_placement_settings_is_refused_on_both_sides() {
    for seed in 0..SEEDS {
        let mut sim = Sim::cluster(seed, 3);
        sim.settings.insert(
            3,
            ClusterSettings {
                replication_factor: 2,
                vnodes: 64,
                ..ClusterSettings::default()
            },
        );
        sim.start(3, &[0]);
        let refused_everywhere = |s: &Sim| {
            (0..3).all(|i| s.nodes[&i].core.refused().len() == 1)
                && s.nodes[&3].core.refused().len() == 3
        };
        assert!(
            sim.run_until(sim.now + ms(3000), refused_everywhere),
            "seed {seed}: {}",
            sim.describe()
        );
        // Keep gossiping: the refusal holds, and nobody admits the other side.
        sim.run_for(ms(2000));
        for i in 0..3 {
            assert_eq!(sim.state(i, 3), None, "seed {seed}: n{i} admitted n3");
            let refused = &sim.nodes[&i].core.refused()[0];
            assert_eq!(refused.node_id, node_id(3));
            assert_eq!(refused.state, NodeState::Active);
            assert_eq!(
                refused.reason,
                "replication_factor 2, this node's 0; vnodes 64, this node's 0"
            );
        }
        assert_eq!(sim.view(3).len(), 1, "seed {seed}: n3 admitted someone");
        let reasons: Vec<&str> = sim.nodes[&3]
            .core
            .refused()
            .iter()
            .map(|r| r.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            ["replication_factor 0, this node's 2; vnodes 0, this node's 64"; 3]
        );
        assert!(sim.converged(&[0, 1, 2]), "seed {seed}: {}", sim.describe());
        // Once the odd node is gone, nobody refuses anything.
        sim.crash(3);
        assert!(
            sim.run_until(sim.now + ms(10_000), |s| (0..3)
                .all(|i| s.nodes[&i].core.refused().is_empty())),
            "seed {seed}: {}",
            sim.describe()
        );
    }
}

#[test]
fn three_nodes_join_through_a_seed_and_converge() {
    for seed in 0..SEEDS {
        let mut sim = sim(seed);
        sim.start(0, &[]);
        sim.start(1, &[0]);
        sim.start(2, &[0]);
        let converged = sim.run_until(ms(1000), |s| s.converged(&[0, 1, 2]));
        assert!(converged, "{}", sim.describe());
        // The view carries each member's metadata, not just its identity.
        let n2 = &sim.view(0)[2];
        assert_eq!(
            (n2.grpc_addr.as_str(), n2.weight),
            ("10.0.0.2:7379", 3),
            "seed {seed}"
        );
        assert!(sim.refused.is_empty(), "seed {seed}: {:?}", sim.refused);
    }
}

#[test]
fn ten_nodes_converge_on_a_lossy_network() {
    // The largest scenario: fewer seeds keep the suite fast.
    for seed in 0..SEEDS / 4 {
        let mut sim = sim(seed);
        sim.loss = 0.1;
        sim.start(0, &[]);
        for index in 1..10 {
            sim.start(index, &[0, 1]);
        }
        let all: Vec<usize> = (0..10).collect();
        let converged = sim.run_until(Duration::from_secs(3), |s| s.converged(&all));
        assert!(converged, "{}", sim.describe());
        // And it stays so: with 10% loss, indirect probes keep anyone from being declared dead.
        let mut saw_dead = false;
        sim.run_until(sim.now + Duration::from_secs(5), |s| {
            saw_dead |= all
                .iter()
                .any(|v| s.view(*v).iter().any(|m| m.state == NodeState::Dead));
            false
        });
        assert!(!saw_dead, "{}", sim.describe());
    }
}

#[test]
fn a_late_joiner_learns_every_members_metadata_quickly() {
    for seed in 0..SEEDS {
        let mut sim = Sim::cluster(seed, 3);
        // Long enough for every broadcast of the first three to be spent.
        sim.run_for(Duration::from_secs(5));
        let joined_at = sim.now;
        sim.start(3, &[0]);
        // Within a few round trips: faster than the metadata request fallback (a probe period).
        let bound = joined_at + sim.config.probe_period / 2;
        let converged = sim.run_until(bound, |s| s.converged(&[0, 1, 2, 3]));
        assert!(converged, "{}", sim.describe());
    }
}

#[test]
fn a_member_that_announces_leaving_then_leaves_is_left_not_dead() {
    for seed in 0..SEEDS {
        let mut sim = Sim::cluster(seed, 3);
        let now = sim.now;
        // Leaving and gone at once: the Leaving broadcast has had no time to spread.
        sim.core(2)
            .set_meta(now, meta_for(2, MetaState::Leaving))
            .unwrap();
        sim.core(2).leave(now);
        sim.collect(2);
        let left = sim.run_until(now + ms(2000), |s| {
            (0..2).all(|viewer| s.state(viewer, 2) == Some(NodeState::Left))
        });
        assert!(left, "seed {seed}: {}", sim.describe());
        // A crash is a death.
        sim.crash(1);
        let dead = sim.run_until(sim.now + ms(5000), |s| {
            s.state(0, 1) == Some(NodeState::Dead)
        });
        assert!(dead, "seed {seed}: {}", sim.describe());
    }
}

#[test]
fn a_member_that_stops_to_restart_keeps_its_ranges_for_the_grace_then_is_dead() {
    for seed in 0..SEEDS {
        let mut sim = sim(seed);
        sim.config.restart_grace = Duration::from_secs(3);
        let mut sim = Sim::cluster_with(sim, 3);
        let now = sim.now;
        sim.stop_for_restart(2);
        let restarting = sim.run_until(now + ms(2000), |s| {
            (0..2).all(|viewer| s.state(viewer, 2) == Some(NodeState::Restarting))
        });
        assert!(restarting, "seed {seed}: {}", sim.describe());
        let seen_at = sim.now;
        // In the ring for the whole grace: its ranges do not move.
        let stayed = !sim.run_until(now + sim.config.restart_grace - ms(100), |s| {
            (0..2).any(|viewer| s.state(viewer, 2) != Some(NodeState::Restarting))
        });
        assert!(stayed, "seed {seed}: {}", sim.describe());
        assert!(NodeState::Restarting.in_ring());
        // Then it counts as dead, and is dropped after the dead retention.
        let dead = sim.run_until(seen_at + sim.config.restart_grace + ms(500), |s| {
            (0..2).all(|viewer| s.state(viewer, 2) == Some(NodeState::Dead))
        });
        assert!(dead, "seed {seed}: {}", sim.describe());
        let dropped = sim.run_until(sim.now + sim.config.dead_retention + ms(500), |s| {
            (0..2).all(|viewer| s.state(viewer, 2).is_none())
        });
        assert!(dropped, "seed {seed}: {}", sim.describe());
    }
}

#[test]
fn a_member_back_from_a_restart_within_the_grace_never_leaves_the_ring() {
    for seed in 0..SEEDS {
        let mut sim = sim(seed);
        sim.config.restart_grace = Duration::from_secs(5);
        let mut sim = Sim::cluster_with(sim, 3);
        sim.stop_for_restart(2);
        sim.run_for(ms(1500));
        // Back as a new incarnation, still Restarting while it catches up, then Active.
        sim.start_with(2, default_addr(2), 2, vec![default_addr(0)]);
        let now = sim.now;
        sim.core(2)
            .set_meta(now, meta_for(2, MetaState::Restarting))
            .unwrap();
        sim.collect(2);
        let mut left_ring = None;
        let back = sim.run_until(now + ms(2000), |s| {
            if left_ring.is_none()
                && (0..2).any(|viewer| !s.state(viewer, 2).is_some_and(NodeState::in_ring))
            {
                left_ring = Some(s.describe());
            }
            (0..2).all(|viewer| {
                s.view(viewer)
                    .iter()
                    .any(|m| m.node_id == "n2" && m.incarnation == 2)
            })
        });
        assert!(
            back && left_ring.is_none(),
            "seed {seed}: left the ring: {left_ring:?}; {}",
            sim.describe()
        );
        let now = sim.now;
        sim.core(2)
            .set_meta(now, meta_for(2, MetaState::Active))
            .unwrap();
        sim.collect(2);
        let active = sim.run_until(now + ms(2000), |s| {
            if left_ring.is_none()
                && (0..2).any(|viewer| !s.state(viewer, 2).is_some_and(NodeState::in_ring))
            {
                left_ring = Some(s.describe());
            }
            s.converged(&[0, 1, 2])
        });
        assert!(
            active && left_ring.is_none(),
            "seed {seed}: left the ring: {left_ring:?}; {}",
            sim.describe()
        );
    }
}

#[test]
fn metadata_changes_reach_every_member() {
    for seed in 0..SEEDS {
        let mut sim = Sim::cluster(seed, 3);
        let mut leaving = meta_for(1, MetaState::Leaving);
        leaving.http_addr = "10.9.9.9:80".to_owned();
        let now = sim.now;
        sim.core(1).set_meta(now, leaving).unwrap();
        sim.collect(1);
        let spread = sim.run_until(now + ms(300), |s| {
            (0..3).all(|viewer| {
                s.view(viewer).iter().any(|m| {
                    m.node_id == "n1"
                        && m.state == NodeState::Leaving
                        && m.http_addr == "10.9.9.9:80"
                })
            })
        });
        assert!(spread, "{}", sim.describe());
        let mut weightless = meta_for(1, MetaState::Active);
        weightless.weight = 0;
        assert_eq!(
            sim.core(1).set_meta(now, weightless),
            Err(MetaError::ZeroWeight),
            "seed {seed}"
        );
    }
}

#[test]
fn a_seed_that_starts_later_is_still_joined() {
    for seed in 0..SEEDS {
        let mut sim = sim(seed);
        sim.start(1, &[0]);
        sim.run_for(Duration::from_secs(1));
        assert_eq!(sim.view(1).len(), 1, "{}", sim.describe());
        sim.start(0, &[]);
        let started = sim.now;
        let joined = sim.run_until(started + ms(500), |s| s.converged(&[0, 1]));
        assert!(joined, "{}", sim.describe());
    }
}

#[test]
fn an_unreachable_member_becomes_suspect() {
    for seed in 0..SEEDS {
        let mut sim = Sim::cluster(seed, 3);
        sim.isolate(2);
        let cut_at = sim.now;
        let suspected = sim.run_until(cut_at + ms(500), |s| {
            s.state(0, 2) == Some(NodeState::Suspect) && s.state(1, 2) == Some(NodeState::Suspect)
        });
        assert!(suspected, "{}", sim.describe());
    }
}

#[test]
fn a_suspect_that_answers_in_time_refutes_and_stays() {
    for seed in 0..SEEDS {
        let mut sim = Sim::cluster(seed, 3);
        let incarnation = sim.core(2).identity().incarnation();
        sim.isolate(2);
        let suspected = sim.run_until(sim.now + ms(500), |s| {
            s.state(0, 2) == Some(NodeState::Suspect) && s.state(1, 2) == Some(NodeState::Suspect)
        });
        assert!(suspected, "{}", sim.describe());
        // Stay cut off for half the suspicion timeout: long enough for the gossiped copies of
        // the suspicion to be spent, short enough to refute.
        sim.run_for(sim.config.suspect_to_down_after / 2);
        sim.heal();
        // n0 and n1 take n2 back before the suspicion runs out. (n2, cut off too, may have
        // declared one of them down meanwhile; that one then rejoins, which is not the point.)
        let mut saw_dead = false;
        let deadline = sim.now + sim.config.suspect_to_down_after;
        let refuted = sim.run_until(deadline, |s| {
            saw_dead |= [0, 1]
                .iter()
                .any(|v| s.state(*v, 2) == Some(NodeState::Dead));
            [0, 1]
                .iter()
                .all(|v| s.state(*v, 2) == Some(NodeState::Active))
        });
        assert!(refuted && !saw_dead, "{}", sim.describe());
        let converged = sim.run_until(sim.now + Duration::from_secs(2), |s| {
            s.converged(&[0, 1, 2])
        });
        assert!(converged, "{}", sim.describe());
        assert_eq!(
            sim.core(2).identity().incarnation(),
            incarnation,
            "seed {seed}: refuting must not need a new incarnation"
        );
    }
}

#[test]
fn an_unreachable_member_is_declared_dead_then_dropped() {
    for seed in 0..SEEDS {
        let mut sim = Sim::cluster(seed, 3);
        sim.isolate(2);
        let cut_at = sim.now;
        // Detection: up to a probe period until probed, then the suspicion timeout.
        let bound = cut_at + sim.config.probe_period * 3 + sim.config.suspect_to_down_after;
        let dead = sim.run_until(bound, |s| {
            s.state(0, 2) == Some(NodeState::Dead) && s.state(1, 2) == Some(NodeState::Dead)
        });
        assert!(dead, "{}", sim.describe());
        let dead_at = sim.now;
        let retention = sim.config.dead_retention;
        sim.run_for(retention / 2);
        assert!(
            sim.state(0, 2) == Some(NodeState::Dead) && sim.state(1, 2) == Some(NodeState::Dead),
            "dead members stay listed for dead_retention: {}",
            sim.describe()
        );
        let dropped = sim.run_until(dead_at + retention + ms(500), |s| {
            s.state(0, 2).is_none() && s.state(1, 2).is_none()
        });
        assert!(dropped, "{}", sim.describe());
        assert_eq!(sim.view(0).len(), 2, "{}", sim.describe());
    }
}

#[test]
fn a_restarted_node_replaces_its_old_incarnation() {
    for seed in 0..SEEDS {
        for wait_for_death in [false, true] {
            let mut sim = Sim::cluster(seed, 3);
            sim.crash(2);
            if wait_for_death {
                let dead = sim.run_until(sim.now + Duration::from_secs(2), |s| {
                    s.state(0, 2) == Some(NodeState::Dead) && s.state(1, 2) == Some(NodeState::Dead)
                });
                assert!(dead, "{}", sim.describe());
            }
            // Same node id, higher incarnation, and another port (it moved).
            let new_addr = SocketAddr::from(([127, 0, 0, 1], 7102));
            sim.start_with(2, new_addr, 2, vec![default_addr(0)]);
            let mut duplicates = false;
            let rejoined = sim.run_until(sim.now + Duration::from_secs(2), |s| {
                duplicates |= (0..3)
                    .any(|viewer| s.view(viewer).iter().filter(|m| m.node_id == "n2").count() > 1);
                s.converged(&[0, 1, 2])
            });
            assert!(
                rejoined && !duplicates,
                "wait_for_death={wait_for_death}: {}",
                sim.describe()
            );
            let n2 = sim.view(0).iter().find(|m| m.node_id == "n2").unwrap();
            assert_eq!(
                (n2.incarnation, n2.gossip_addr.as_str()),
                (2, "127.0.0.1:7102"),
                "seed {seed}"
            );
        }
    }
}

/// Where `viewer` sees node id `id` and in which state, if at all.
fn seen_as(sim: &Sim, viewer: usize, id: &str) -> Option<(String, NodeState, u64)> {
    sim.view(viewer)
        .iter()
        .find(|m| m.node_id == id)
        .map(|m| (m.gossip_addr.clone(), m.state, m.incarnation))
}

#[test]
fn an_impostor_of_a_live_node_id_is_refused_until_the_real_node_is_dead() {
    for seed in 0..SEEDS {
        let mut sim = Sim::cluster(seed, 3);
        let real = sim.core(1).identity().clone();
        let refutations: Vec<_> = [0, 2]
            .iter()
            .map(|v| sim.nodes[v].core.foca_incarnation_of("n1"))
            .collect();
        // A second process claims n1 from another port, with a higher incarnation (it started
        // later), through a seed and straight at the real n1.
        let impostor_addr = SocketAddr::from(([127, 0, 0, 1], 7109));
        sim.start_named(
            9,
            "n1",
            impostor_addr,
            1_000,
            vec![default_addr(0), default_addr(1)],
        );
        let mut broken = None;
        sim.run_until(sim.now + Duration::from_secs(3), |s| {
            if broken.is_none() && !s.converged(&[0, 1, 2]) {
                broken = Some(s.describe());
            }
            false
        });
        assert_eq!(
            broken, None,
            "the cluster changed while refusing the impostor"
        );
        assert_eq!(
            sim.core(1).identity(),
            &real,
            "seed {seed}: n1 renewed its identity"
        );
        let after: Vec<_> = [0, 2]
            .iter()
            .map(|v| sim.nodes[v].core.foca_incarnation_of("n1"))
            .collect();
        assert_eq!(after, refutations, "seed {seed}: n1 had to refute");
        assert!(
            sim.core(0).impostor_refusals() > 0,
            "seed {seed}: not counted at the seed"
        );
        assert!(
            sim.core(1).impostor_refusals() > 0,
            "seed {seed}: not counted at n1"
        );
        assert_eq!(sim.view(9).len(), 1, "seed {seed}: the impostor joined");

        // Once the real n1 is dead, the id may come back from the new address.
        sim.crash(1);
        let moved = sim.run_until(sim.now + Duration::from_secs(3), |s| {
            [0, 2].iter().all(|v| {
                seen_as(s, *v, "n1") == Some((impostor_addr.to_string(), NodeState::Active, 1_000))
            })
        });
        assert!(moved, "{}", sim.describe());
    }
}

#[test]
fn a_healed_partition_merges_back() {
    let splits: [(usize, &[usize], &[usize]); 2] = [(4, &[0, 1], &[2, 3]), (3, &[2], &[0, 1])];
    for seed in 0..SEEDS {
        for (count, left, right) in splits {
            let mut sim = Sim::cluster(seed, count);
            sim.partition(&[left, right]);
            // A side of one has nobody to confirm its suspicions and its failing probes raise
            // its local health score (slower probes): it takes the longest suspicion timeout.
            let split = sim.run_until(sim.now + Duration::from_secs(10), |s| {
                // Dead, or already dropped after `dead_retention` (the quicker side's view).
                let gone = |viewer: usize, node: usize| {
                    matches!(s.state(viewer, node), Some(NodeState::Dead) | None)
                };
                left.iter()
                    .all(|l| right.iter().all(|r| gone(*l, *r) && gone(*r, *l)))
            });
            assert!(split, "{left:?}|{right:?}: {}", sim.describe());
            sim.heal();
            let all: Vec<usize> = (0..count).collect();
            let merged = sim.run_until(sim.now + Duration::from_secs(5), |s| s.converged(&all));
            assert!(merged, "{left:?}|{right:?}: {}", sim.describe());
        }
    }
}

#[test]
fn missing_metadata_is_requested_again() {
    for seed in 0..SEEDS {
        let mut sim = Sim::cluster(seed, 3);
        let now = sim.now;
        sim.core(0).forget_meta_for_test("n2", now);
        assert_eq!(
            sim.state(0, 2),
            None,
            "no metadata, not routable: seed {seed}"
        );
        let recovered = sim.run_until(now + sim.config.probe_period * 3, |s| {
            s.converged(&[0, 1, 2])
        });
        assert!(recovered, "{}", sim.describe());
    }
}

#[test]
fn garbage_datagrams_are_dropped_and_change_nothing() {
    let mut sim = Sim::cluster(7, 2);
    let before = sim.view(0).to_vec();
    let generation = sim.core(0).generation();
    let max = sim.config.max_packet_size.get();
    let mut oversized = frame(FrameKind::Swim, &[0; 8]).to_vec();
    oversized.resize(max + 1, 0);
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![], DropReason::Malformed),
        (b"GET / HTTP/1.1\r\n".to_vec(), DropReason::WrongMagic),
        (
            vec![MAGIC, WIRE_VERSION + 1, 0, 1, 2],
            DropReason::UnsupportedVersion(2),
        ),
        (vec![MAGIC, WIRE_VERSION], DropReason::Malformed),
        (vec![MAGIC, WIRE_VERSION, 99], DropReason::Malformed),
        (oversized, DropReason::Oversized),
        (
            frame(FrameKind::Swim, &[0xff; 40]).to_vec(),
            DropReason::Malformed,
        ),
        (
            frame(FrameKind::MetaPush, &[1, 2, 3]).to_vec(),
            DropReason::Malformed,
        ),
        (
            frame(FrameKind::SuspectNotice, &[]).to_vec(),
            DropReason::Malformed,
        ),
        (
            frame(FrameKind::MetaRequest, &[7]).to_vec(),
            DropReason::Malformed,
        ),
    ];
    let now = sim.now;
    for (datagram, reason) in cases {
        assert_eq!(
            sim.core(0).handle_data(now, &datagram),
            Err(reason),
            "{datagram:?}"
        );
    }
    assert!(sim.core(0).take_packets().is_empty());
    assert_eq!(sim.view(0), before.as_slice());
    assert_eq!(sim.core(0).generation(), generation);
    sim.run_for(Duration::from_secs(1));
    assert!(sim.converged(&[0, 1]), "{}", sim.describe());
}

#[test]
fn only_live_members_confirm_suspicions() {
    let mut sim = Sim::cluster(11, 3);
    let now = sim.now;
    let confirm = |suspect: &NodeIdentity, accuser: &str| {
        let body = codec::encode_confirm(&codec::SuspicionConfirm {
            suspect: codec::SuspectNotice {
                node_id: suspect.node_id().clone(),
                incarnation: suspect.incarnation(),
                suspected_at: 4,
            },
            accuser: NodeId::new(accuser).unwrap(),
        })
        .unwrap();
        frame(FrameKind::Confirm, &body).to_vec()
    };
    let n0 = sim.core(0).identity().clone();
    let n2 = sim.core(2).identity().clone();
    // Strangers (never members) and the suspect itself count for nothing, however many.
    for i in 0..2_000 {
        let stranger = format!("stranger-{i}");
        assert_eq!(
            sim.core(0).handle_data(now, &confirm(&n2, &stranger)),
            Ok(())
        );
    }
    assert_eq!(sim.core(0).handle_data(now, &confirm(&n2, "n2")), Ok(()));
    assert_eq!(sim.core(0).accusers_of("n2", 4), 0);
    // A stranger's word about n0 itself does not make it refute (which costs local health).
    assert_eq!(
        sim.core(0).handle_data(now, &confirm(&n0, "stranger")),
        Ok(())
    );
    assert_eq!(sim.core(0).local_health(), 0);
    // A live member's confirmation counts, once however often it repeats.
    for _ in 0..3 {
        assert_eq!(sim.core(0).handle_data(now, &confirm(&n2, "n1")), Ok(()));
    }
    assert_eq!(sim.core(0).accusers_of("n2", 4), 1);
}

proptest::proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(
        kind in 0_u8..4,
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
    ) {
        let identity = NodeIdentity::new("n0", default_addr(0), 1).unwrap();
        let mut core = Membership::new(
            MembershipConfig::for_test(),
            identity,
            meta_for(0, MetaState::Active),
            0,
        )
        .unwrap();
        let mut datagram = vec![MAGIC, WIRE_VERSION, kind];
        datagram.extend_from_slice(&body);
        let _ = core.handle_data(ms(1), &datagram);
        proptest::prop_assert_eq!(&core.members()[0].node_id, "n0");
    }
}

/// A member seen `Dead` by anyone, or any suspicion run out, while `run` lasts: a false
/// death when nobody crashed.
struct DeathWatch {
    deaths: u64,
    seen_dead: BTreeSet<String>,
}

impl Sim {
    /// A cluster of `count` nodes with the default (production) timings, converged.
    fn production(seed: u64, count: usize) -> Sim {
        let mut sim = sim(seed);
        sim.config = MembershipConfig::default();
        sim.start(0, &[]);
        for index in 1..count {
            sim.start(index, &[0]);
        }
        let all: Vec<usize> = (0..count).collect();
        let deadline = sim.now + Duration::from_secs(10);
        assert!(
            sim.run_until(deadline, |s| s.converged(&all)),
            "no convergence: {}",
            sim.describe()
        );
        sim
    }

    /// Runs for `duration`, counting members declared down and who was ever seen dead.
    fn watch_deaths(&mut self, duration: Duration) -> DeathWatch {
        let before: u64 = self.nodes.values().map(|n| n.core.declared_down()).sum();
        let mut seen_dead = BTreeSet::new();
        self.run_until(self.now + duration, |s| {
            for node in s.nodes.values() {
                for member in node.core.members() {
                    if member.state == NodeState::Dead {
                        seen_dead.insert(member.node_id.clone());
                    }
                }
            }
            false
        });
        let after: u64 = self.nodes.values().map(|n| n.core.declared_down()).sum();
        DeathWatch {
            deaths: after - before,
            seen_dead,
        }
    }
}

/// Simulated minutes of the long detector runs: `FAILOVER_SIM_MINUTES` (default 10).
fn sim_minutes() -> u64 {
    std::env::var("FAILOVER_SIM_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// Seeds of the long detector runs: `FAILOVER_SIM_SEEDS` (default 2), from
/// `FAILOVER_SIM_FIRST_SEED` (default 0).
fn failover_seeds() -> std::ops::Range<u64> {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let first = var("FAILOVER_SIM_FIRST_SEED", 0);
    first..first + var("FAILOVER_SIM_SEEDS", 2)
}

fn replay_hint(seed: u64) -> String {
    format!(
        "replay: FAILOVER_SIM_FIRST_SEED={seed} FAILOVER_SIM_SEEDS=1 cargo test -p ringcache-server --lib cluster::tests::"
    )
}

#[test]
fn no_member_is_declared_dead_over_ten_minutes_of_ten_percent_loss() {
    for seed in failover_seeds() {
        let mut sim = Sim::production(seed, 5);
        sim.loss = 0.1;
        let watch = sim.watch_deaths(Duration::from_secs(60 * sim_minutes()));
        println!(
            "seed {seed}: 10% loss, {} min, 5 nodes: {} false deaths, seen dead {:?}",
            sim_minutes(),
            watch.deaths,
            watch.seen_dead
        );
        assert!(
            watch.deaths == 0 && watch.seen_dead.is_empty(),
            "seed {seed}: {} members declared dead ({:?}) with 10% loss: {}\n{}",
            watch.deaths,
            watch.seen_dead,
            sim.describe(),
            replay_hint(seed)
        );
    }
}

#[test]
fn thirty_percent_loss_declares_few_members_dead_and_the_cluster_heals() {
    for seed in failover_seeds() {
        let mut sim = Sim::production(seed, 5);
        sim.loss = 0.3;
        let minutes = sim_minutes();
        let watch = sim.watch_deaths(Duration::from_secs(60 * minutes));
        println!(
            "seed {seed}: 30% loss, {minutes} min, 5 nodes: {} false deaths, seen dead {:?}",
            watch.deaths, watch.seen_dead
        );
        // Before Lifeguard: 30 false deaths in 90 s on real processes. Now at most a few in
        // ten minutes (a rate, so a shorter run allows proportionally fewer).
        let allowed = minutes.div_ceil(5);
        assert!(
            watch.deaths <= allowed,
            "seed {seed}: {} members declared dead with 30% loss (allowed {allowed}): {}\n{}",
            watch.deaths,
            sim.describe(),
            replay_hint(seed)
        );
        sim.loss = 0.0;
        let all: Vec<usize> = (0..5).collect();
        let healed = sim.run_until(sim.now + Duration::from_secs(60), |s| s.converged(&all));
        assert!(healed, "{}\n{}", sim.describe(), replay_hint(seed));
    }
}

#[test]
fn a_node_starved_of_cpu_gets_nobody_declared_dead() {
    for seed in failover_seeds() {
        let mut sim = Sim::production(seed, 5);
        // n4 runs 20-200 ms at a time between stalls of 50 ms to 1.2 s: most of the time it
        // handles nothing, and its timers and answers come late. (A node that stops answering
        // for more than about two seconds cannot be told from a dead one with a 3 s failover:
        // with stalls up to 2.5 s it is declared dead, and rejoins.)
        sim.starve(4, (ms(20), ms(200)), (ms(50), ms(1200)));
        let minutes = sim_minutes();
        let watch = sim.watch_deaths(Duration::from_secs(60 * minutes));
        println!(
            "seed {seed}: one node starved, {minutes} min, 5 nodes: {} false deaths, seen dead {:?}, n4's local health {}",
            watch.deaths,
            watch.seen_dead,
            sim.core(4).local_health()
        );
        assert!(
            watch.deaths == 0 && watch.seen_dead.is_empty(),
            "seed {seed}: {} members declared dead with n4 starved: {}\n{}",
            watch.deaths,
            sim.describe(),
            replay_hint(seed)
        );
    }
}

#[test]
fn a_killed_node_leaves_every_view_within_three_seconds() {
    let mut times = Vec::new();
    for seed in 0..SEEDS {
        let mut sim = Sim::production(seed, 5);
        // Let the probe cycles spread out as they would in a running cluster.
        sim.run_for(Duration::from_millis(1000 + 97 * seed));
        sim.crash(4);
        let killed_at = sim.now;
        let gone = sim.run_until(killed_at + Duration::from_secs(3), |s| {
            (0..4).all(|v| s.state(v, 4) != Some(NodeState::Active))
                && (0..4).all(|v| s.state(v, 4) != Some(NodeState::Suspect))
        });
        assert!(
            gone,
            "seed {seed}: n4 still in a view 3 s after it was killed: {}",
            sim.describe()
        );
        times.push(sim.now - killed_at);
    }
    times.sort();
    println!(
        "killed node out of every view (simulated): median {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[test]
fn suspicion_shrinks_with_confirmations_like_memberlists() {
    let config = MembershipConfig::default();
    let core = Membership::new(
        config.clone(),
        NodeIdentity::new("n0", default_addr(0), 1).unwrap(),
        meta_for(0, MetaState::Active),
        0,
    )
    .unwrap();
    let min = config.suspect_to_down_after;
    let max = config.suspect_to_down_max;
    // Five members: two confirmations expected.
    assert_eq!(core.suspicion_timeout(5, 0), max);
    let one = core.suspicion_timeout(5, 1);
    assert!(min < one && one < max, "{one:?}");
    // memberlist: max - (max - min) * ln 2 / ln 3.
    let expected = max.as_secs_f64() - (max - min).as_secs_f64() * 2f64.ln() / 3f64.ln();
    assert!((one.as_secs_f64() - expected).abs() < 1e-6);
    assert_eq!(core.suspicion_timeout(5, 2), min);
    assert_eq!(core.suspicion_timeout(5, 7), min);
    // Three members: one other can confirm; two members: nobody, so the shortest at once.
    assert_eq!(core.suspicion_timeout(3, 0), max);
    assert_eq!(core.suspicion_timeout(3, 1), min);
    assert_eq!(core.suspicion_timeout(2, 0), min);
    // 100 members: both scaled by log10(100) = 2.
    assert_eq!(core.suspicion_timeout(100, 2), min * 2);
    assert_eq!(core.suspicion_timeout(100, 0), max * 2);
}

#[test]
fn local_health_stretches_probes_of_a_node_that_cannot_reach_anyone() {
    for seed in 0..SEEDS / 4 {
        let mut sim = Sim::production(seed, 3);
        assert_eq!(sim.core(0).local_health(), 0);
        // n0 loses every datagram it sends: its probes fail, and the others suspect it, so it
        // must refute (which cannot reach them either).
        sim.cut.insert((0, 1));
        sim.cut.insert((0, 2));
        let raised = sim.run_until(sim.now + Duration::from_secs(5), |s| {
            s.nodes[&0].core.local_health() >= 2
        });
        assert!(raised, "seed {seed}: {}", sim.describe());
        sim.heal();
        // Healthy again: direct acks bring it back to 0.
        let healed = sim.run_until(sim.now + Duration::from_secs(60), |s| {
            s.nodes[&0].core.local_health() == 0
        });
        assert!(healed, "seed {seed}: {}", sim.describe());
    }
}

#[test]
fn the_same_seed_gives_the_same_history() {
    let run = |seed| {
        let mut sim = Sim::cluster(seed, 4);
        sim.partition(&[&[0, 1], &[2, 3]]);
        sim.run_for(Duration::from_secs(2));
        sim.heal();
        sim.run_for(Duration::from_secs(2));
        let views: Vec<Vec<Member>> = (0..4).map(|n| sim.view(n).to_vec()).collect();
        let generations: Vec<u64> = (0..4).map(|n| sim.core(n).generation()).collect();
        (views, generations, sim.next_seq)
    };
    assert_eq!(run(3), run(3));
}

#[test]
fn config_defaults_are_documented_values_and_validated() {
    let config = MembershipConfig::default();
    assert_eq!(config.probe_period, Duration::from_millis(500));
    assert_eq!(config.probe_rtt, Duration::from_millis(200));
    assert_eq!(config.suspect_to_down_after, Duration::from_secs(1));
    assert_eq!(config.suspect_to_down_max, Duration::from_secs(6));
    assert_eq!(config.local_health_max, 8);
    assert_eq!(config.max_packet_size.get(), 1400);
    assert_eq!(config.dead_retention, Duration::from_secs(30));
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(MembershipConfig::for_test().validate(), Ok(()));
    let bad = MembershipConfig {
        probe_rtt: config.probe_period,
        ..config.clone()
    };
    assert!(matches!(
        bad.validate(),
        Err(MembershipError::InvalidConfig {
            field: "probe_rtt",
            ..
        })
    ));
    let bad = MembershipConfig {
        suspect_to_down_max: config.suspect_to_down_after / 2,
        ..config.clone()
    };
    assert!(matches!(
        bad.validate(),
        Err(MembershipError::InvalidConfig {
            field: "suspect_to_down_max",
            ..
        })
    ));
    for local_health_max in [0, MAX_LOCAL_HEALTH + 1] {
        let bad = MembershipConfig {
            local_health_max,
            ..config.clone()
        };
        assert!(matches!(
            bad.validate(),
            Err(MembershipError::InvalidConfig {
                field: "local_health_max",
                ..
            })
        ));
    }
    let bad = MembershipConfig {
        max_packet_size: std::num::NonZeroUsize::new(512).unwrap(),
        ..config
    };
    assert!(bad.validate().is_err());
}

mod driver {
    //! The real driver over loopback UDP.

    use std::sync::atomic::Ordering;

    use tokio::net::UdpSocket;
    use tokio::sync::watch;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;
    use tokio_util::sync::CancellationToken;

    use super::*;

    const WAIT: Duration = Duration::from_secs(15);

    struct Running {
        handle: MembershipHandle,
        task: JoinHandle<()>,
        shutdown: CancellationToken,
        addr: SocketAddr,
    }

    async fn spawn(index: usize, seeds: Vec<SocketAddr>) -> Running {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let identity = NodeIdentity::new(&node_id(index), addr, 1).unwrap();
        let rng_seed = index as u64;
        let core = Membership::new(
            MembershipConfig::for_test(),
            identity,
            meta_for(index, MetaState::Active),
            rng_seed,
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        let (handle, task) =
            MembershipHandle::spawn(core, Box::new(socket), seeds, None, shutdown.clone());
        Running {
            handle,
            task,
            shutdown,
            addr,
        }
    }

    async fn wait_for_view(
        members: &mut watch::Receiver<Vec<Member>>,
        what: &str,
        condition: impl FnMut(&Vec<Member>) -> bool,
    ) {
        let waited = timeout(WAIT, members.wait_for(condition))
            .await
            .is_ok_and(|changed| changed.is_ok());
        assert!(
            waited,
            "timed out waiting for {what}; last view {:?}",
            *members.borrow()
        );
    }

    /// Polls `condition` until it holds; fails after [`WAIT`].
    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        ringcache_test_support::until(what, WAIT, async || condition())
            .await
            .unwrap();
    }

    fn all_active(members: &[Member], ids: &[&str]) -> bool {
        members.len() == ids.len()
            && ids.iter().all(|id| {
                members
                    .iter()
                    .any(|m| m.node_id == *id && m.state == NodeState::Active)
            })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_over_udp_converge_and_see_a_graceful_leave() {
        let seed_node = spawn(0, vec![]).await;
        // A seed list may name the node itself, and a seed that never answers.
        let dead_seed = SocketAddr::from(([127, 0, 0, 1], 9));
        let n1 = spawn(1, vec![seed_node.addr, dead_seed]).await;
        let n2 = spawn(2, vec![seed_node.addr, n1.addr]).await;
        let nodes = [&seed_node, &n1, &n2];
        for node in nodes {
            let mut members = node.handle.members();
            wait_for_view(&mut members, "3 active members", |m| {
                all_active(m, &["n0", "n1", "n2"])
            })
            .await;
        }
        // Each view carries the others' metadata.
        let view = seed_node.handle.members().borrow().clone();
        let n2_member = view.iter().find(|m| m.node_id == "n2").unwrap();
        assert_eq!(n2_member.grpc_addr, "10.0.0.2:7379");
        assert_eq!(n2_member.gossip_addr, n2.addr.to_string());
        let stats = seed_node.handle.stats().snapshot();
        assert!(
            stats.packets_sent > 0 && stats.packets_received > 0,
            "{stats:?}"
        );
        assert_eq!(stats.members_alive, 3, "{stats:?}");

        n2.shutdown.cancel();
        timeout(WAIT, n2.task).await.unwrap().unwrap();
        for node in [&seed_node, &n1] {
            let mut members = node.handle.members();
            // A graceful leave spreads as "down" at once (failed probes would take longer):
            // Dead, or already gone if this machine is slow enough to pass dead_retention.
            wait_for_view(&mut members, "n2 dead", |m| {
                m.iter()
                    .all(|member| member.node_id != "n2" || member.state == NodeState::Dead)
            })
            .await;
        }

        // set_meta through the handle reaches the other node.
        let mut leaving = meta_for(1, MetaState::Leaving);
        leaving.weight = 7;
        n1.handle.set_meta(leaving).await.unwrap();
        let mut members = seed_node.handle.members();
        wait_for_view(&mut members, "n1 leaving", |m| {
            m.iter()
                .any(|member| member.node_id == "n1" && member.state == NodeState::Leaving)
        })
        .await;

        n1.handle.leave().await.unwrap();
        timeout(WAIT, n1.task).await.unwrap().unwrap();
        assert_eq!(
            n1.handle.announce(seed_node.addr).await,
            Err(CommandError::Stopped)
        );
        seed_node.shutdown.cancel();
        timeout(WAIT, seed_node.task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn garbage_over_udp_is_counted_and_dropped() {
        let node = spawn(0, vec![]).await;
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let max = MembershipConfig::for_test().max_packet_size.get();
        sender.send_to(b"not gossip", node.addr).await.unwrap();
        sender
            .send_to(&[MAGIC, WIRE_VERSION, 0, 0xff, 0xff], node.addr)
            .await
            .unwrap();
        sender
            .send_to(&vec![MAGIC; max + 1], node.addr)
            .await
            .unwrap();
        sender
            .send_to(&vec![MAGIC; 4 * max], node.addr)
            .await
            .unwrap();
        let stats = std::sync::Arc::clone(node.handle.stats());
        wait_until("drops counted", || {
            stats.dropped(DropReason::Malformed).load(Ordering::Relaxed) == 2
                && stats.dropped(DropReason::Oversized).load(Ordering::Relaxed) == 2
        })
        .await;
        assert_eq!(stats.snapshot().packets_received, 4);
        let members = node.handle.members().borrow().clone();
        assert_eq!(members.len(), 1);
        node.shutdown.cancel();
        timeout(WAIT, node.task).await.unwrap().unwrap();
    }
}
