//! Warm restarts: a node stopped for a restart (`ringctl drain --restart`, or a signal with
//! `shutdown_mode = restart`) keeps its data in a snapshot, the other members keep its ranges
//! while it is away (`restarting`), and it comes back serving its keys at once and pulls only
//! what changed meanwhile; a rolling restart under load keeps its hit ratio and loses no
//! acknowledged QUORUM write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use ringcache::{Client, Consistency};
use ringcache_proto::topology::NodeState;
use ringcache_proto::v1;
use ringcache_server::Config;
use ringcache_server::clock::OffsetClock;
use ringcache_server::config::ShutdownMode;
use ringcache_tests::{DataDir, TestCluster, TestNode, load_keys, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);
const KEYS: usize = 2_000;

/// Node `i` keeps its snapshot in `dirs[i - 1]`; detection patient enough for a loaded
/// machine; the restart grace long enough for a debug-build restart.
fn warm(dirs: &[DataDir]) -> impl Fn(usize, &mut Config) + '_ {
    move |i, config| {
        ringcache_tests::patient(i, config);
        config.snapshot.data_dir = Some(dirs[i - 1].path().to_path_buf());
        config.restart_grace = Duration::from_secs(60);
        config.rebalance_bytes_per_sec = 0;
    }
}

/// Key and value bytes every node sent to others so far: rebalance pushes and the streams it
/// served to pulling nodes.
fn bytes_moved(cluster: &TestCluster) -> u64 {
    cluster
        .nodes
        .iter()
        .map(|n| {
            let stats = n.node.rebalance();
            stats.bytes_sent.load(Relaxed) + stats.stream_bytes_sent.load(Relaxed)
        })
        .sum()
}

/// Whether every node in `cluster` shows `node_id` in `state` and in its ring.
fn all_see(cluster: &TestCluster, node_id: &str, state: NodeState) -> bool {
    cluster.nodes.iter().all(|n| {
        let view = n.node.view();
        view.topology
            .member(node_id)
            .is_some_and(|m| m.state == state)
            && view.ring.nodes().iter().any(|id| &**id == node_id)
    })
}

/// Stops `node` for a restart, `signal` like SIGTERM with `shutdown_mode = restart`, else like
/// `ringctl drain --restart`, and waits until it has stopped.
async fn stop_for_restart(mut node: TestNode, signal: bool) {
    if signal {
        node.stop().await.expect("the node stops");
    } else {
        node.node
            .restart()
            .expect("a node with a data dir restarts");
        node.wait_stopped().await.expect("the node stops");
    }
}

#[tokio::test]
async fn a_node_restarted_from_its_snapshot_serves_its_keys_at_once_and_catches_up() {
    let dirs: Vec<DataDir> = (0..3).map(|_| DataDir::new()).collect();
    // One clock for every node, moved ahead explicitly: the keys loaded first are then older
    // than the snapshot by more than the drift bound, so the restarted node must not pull
    // them again (it pulls what is newer than its snapshot less the drift bound).
    let clock = Arc::new(OffsetClock::new(0));
    let configure = |i: usize, config: &mut Config| {
        warm(&dirs)(i, config);
        config.store.max_clock_drift_ms = 1_000;
    };
    let mut cluster = TestCluster { nodes: Vec::new() };
    for i in 1..=3 {
        cluster.add_with_clock(i, clock.clone(), configure).await;
    }
    cluster.wait_converged(DEADLINE).await.unwrap();
    let client = Client::connect(cluster.grpc_targets())
        .await
        .unwrap()
        .with_consistency(Consistency::Quorum);
    load_keys(&client, KEYS).await;
    // R = 3 on 3 nodes: every node holds every key once replication is done.
    wait_until(DEADLINE, || async {
        cluster
            .nodes
            .iter()
            .all(|n| n.node.store().entry_count() >= KEYS as u64)
    })
    .await
    .expect("every node holds every key");
    let loaded = bytes_moved(&cluster);
    clock.set_offset_ms(5_000);

    let n3 = cluster.take("n3");
    let gossip_port = n3.gossip_addr.expect("gossip").port();
    stop_for_restart(n3, false).await;
    wait_until(DEADLINE, || async {
        all_see(&cluster, "n3", NodeState::Restarting)
    })
    .await
    .expect("the others keep n3 in their rings as restarting");

    // Writes it misses: overwrites, deletes and new keys, acknowledged by the other two.
    let mut expected: BTreeMap<String, Option<String>> = (0..KEYS)
        .map(|i| (format!("key{i}"), Some(format!("value{i}"))))
        .collect();
    for i in 0..100 {
        client
            .set(format!("key{i}"), format!("changed{i}"))
            .await
            .expect("a QUORUM write while n3 is away");
        expected.insert(format!("key{i}"), Some(format!("changed{i}")));
    }
    for i in 100..150 {
        client
            .delete(format!("key{i}"))
            .await
            .expect("a QUORUM delete while n3 is away");
        expected.insert(format!("key{i}"), None);
    }
    for i in 0..200 {
        client
            .set(format!("new{i}"), format!("new{i}"))
            .await
            .expect("a QUORUM write of a new key while n3 is away");
        expected.insert(format!("new{i}"), Some(format!("new{i}")));
    }

    let before_return = bytes_moved(&cluster);
    cluster
        .add_with_clock_on_gossip_port(3, clock.clone(), gossip_port, configure)
        .await;
    let n3 = cluster.node("n3");
    // It serves its keys at once: the snapshot is in the store before anything is pulled.
    wait_until(DEADLINE, || async {
        n3.node.store().entry_count() >= KEYS as u64
    })
    .await
    .expect("the snapshot is loaded");
    wait_until(DEADLINE, || async {
        n3.node.state() == v1::NodeState::Active
    })
    .await
    .expect("n3 turns active again");
    cluster.wait_converged(DEADLINE).await.unwrap();

    // It has what it missed, read from its own store.
    let n3 = cluster.node("n3");
    wait_until(DEADLINE, || async {
        let now = n3.node.now_ms();
        expected.iter().all(|(key, value)| {
            let held = n3.node.store().get(key.as_bytes(), now).unwrap();
            held.map(|item| item.value) == value.as_ref().map(|v| bytes::Bytes::from(v.clone()))
        })
    })
    .await
    .expect("n3 holds every write it missed");

    // And only what changed moved (300 keys written while it was away, 50 tombstones), not
    // the 2,000 keys of the snapshot.
    let moved = bytes_moved(&cluster) - before_return;
    let detail: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| {
            let stats = n.node.rebalance();
            format!(
                "{}: pushed {} B, streamed {} B, received {} keys",
                n.node.config().node_id,
                stats.bytes_sent.load(Relaxed),
                stats.stream_bytes_sent.load(Relaxed),
                stats.keys_received.load(Relaxed)
            )
        })
        .collect();
    let changed: u64 = expected
        .iter()
        .filter(|(key, _)| {
            key.starts_with("new") || key[3..].parse::<usize>().is_ok_and(|i| i < 150)
        })
        .map(|(key, value)| (key.len() + value.as_ref().map_or(0, String::len)) as u64)
        .sum();
    let full: u64 = (0..KEYS)
        .map(|i| (format!("key{i}").len() + format!("value{i}").len()) as u64)
        .sum();
    assert!(
        moved <= changed * 2,
        "a warm restart moved {moved} bytes for {changed} bytes of changes (the whole data set is {full}; loading moved {loaded}): {detail:?}"
    );
}

#[tokio::test]
async fn a_node_back_from_a_restart_drops_what_a_flush_it_missed_removed() {
    let dirs: Vec<DataDir> = (0..3).map(|_| DataDir::new()).collect();
    let mut cluster = TestCluster::start_converged(3, DEADLINE, warm(&dirs)).await;
    let client = Client::connect(cluster.grpc_targets())
        .await
        .unwrap()
        .with_consistency(Consistency::Quorum);
    load_keys(&client, KEYS).await;
    wait_until(DEADLINE, || async {
        cluster.node("n3").node.store().entry_count() >= KEYS as u64
    })
    .await
    .expect("n3 holds every key");
    let n3 = cluster.take("n3");
    let gossip_port = n3.gossip_addr.expect("gossip").port();
    stop_for_restart(n3, false).await;
    wait_until(DEADLINE, || async {
        all_see(&cluster, "n3", NodeState::Restarting)
    })
    .await
    .expect("n3 is shown restarting");
    // A cluster-wide flush while n3 is away: the others flush, n3 cannot be reached.
    let mut con = ringcache_tests::resp::connect(cluster.node("n1")).await;
    let refused = ringcache_tests::resp::error(&mut con, &["FLUSHALL"]).await;
    assert!(refused.contains("n3"), "{refused}");
    client
        .set("after", "flush")
        .await
        .expect("a write after the flush");

    cluster
        .add_on_gossip_port(3, gossip_port, warm(&dirs))
        .await;
    let n3 = cluster.node("n3");
    wait_until(DEADLINE, || async {
        n3.node.state() == v1::NodeState::Active
    })
    .await
    .expect("n3 turns active again");
    // The peers' flush floor came with its catch-up pull: its snapshot's keys are gone, the
    // write made after the flush is there.
    wait_until(DEADLINE, || async {
        let now = n3.node.now_ms();
        let store = n3.node.store();
        store.get(b"after", now).unwrap().is_some()
            && (0..KEYS).all(|i| {
                store
                    .get(format!("key{i}").as_bytes(), now)
                    .unwrap()
                    .is_none()
            })
    })
    .await
    .expect("n3 applied the flush it missed");
}

#[tokio::test]
async fn a_restart_is_refused_without_a_data_dir() {
    let cluster = TestCluster::start_converged(2, DEADLINE, ringcache_tests::patient).await;
    let refused = cluster.node("n1").node.restart();
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("no data directory")),
        "{refused:?}"
    );
    // Nothing changed: it still serves.
    assert_eq!(cluster.node("n1").node.state(), v1::NodeState::Active);
}

/// Reads and writes through one client until `stop`: ONE reads of the preloaded keys (hits and
/// misses counted) and QUORUM writes of new keys (the acknowledged ones kept).
struct Load {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    acked: std::sync::Mutex<Vec<u64>>,
    stop: AtomicBool,
}

const HOT_KEYS: u64 = 500;

async fn run_load(load: Arc<Load>, client: Client) {
    let reads = client.with_consistency(Consistency::One);
    let writes = client.with_consistency(Consistency::Quorum);
    // Bounded: at most this many rounds whatever happens (a test that hangs fails by timeout).
    for n in 0..1_000_000u64 {
        if load.stop.load(Relaxed) {
            return;
        }
        match reads.get(format!("hot{}", n * 7919 % HOT_KEYS)).await {
            Ok(Some(_)) => load.hits.fetch_add(1, Relaxed),
            Ok(None) => load.misses.fetch_add(1, Relaxed),
            Err(_) => load.errors.fetch_add(1, Relaxed),
        };
        if writes.set(format!("w{n}"), format!("{n}")).await.is_ok() {
            load.acked.lock().unwrap().push(n);
        }
    }
}

/// The hit ratio of the reads made while `during` runs.
async fn hit_ratio<F: std::future::Future<Output = ()>>(load: &Load, during: F) -> f64 {
    let (hits, misses) = (load.hits.load(Relaxed), load.misses.load(Relaxed));
    during.await;
    let hits = load.hits.load(Relaxed) - hits;
    let misses = load.misses.load(Relaxed) - misses;
    hits as f64 / (hits + misses).max(1) as f64
}

#[tokio::test]
async fn a_rolling_restart_under_load_keeps_the_hit_ratio_and_every_quorum_write() {
    let dirs: Vec<DataDir> = (0..3).map(|_| DataDir::new()).collect();
    let mut cluster = TestCluster::start_converged(3, DEADLINE, warm(&dirs)).await;
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    client
        .with_consistency(Consistency::All)
        .mset(
            (0..HOT_KEYS).map(|i| (format!("hot{i}"), format!("v{i}"))),
            None,
        )
        .await
        .expect("preload at ALL");
    let load = Arc::new(Load {
        hits: AtomicU64::new(0),
        misses: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        acked: Default::default(),
        stop: AtomicBool::new(false),
    });
    let worker = tokio::spawn(run_load(load.clone(), client.clone()));
    let reads_done = |load: Arc<Load>, count: u64| async move {
        let start = load.hits.load(Relaxed) + load.misses.load(Relaxed);
        wait_until(DEADLINE, || async {
            load.hits.load(Relaxed) + load.misses.load(Relaxed) >= start + count
        })
        .await
        .expect("the load makes progress");
    };
    let before = hit_ratio(&load, reads_done(load.clone(), 300)).await;
    assert!(before > 0.99, "every preloaded key is there: {before}");

    for (step, node_id) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let i = step + 1;
        let node = cluster.take(node_id);
        let gossip_port = node.gossip_addr.expect("gossip").port();
        stop_for_restart(node, false).await;
        wait_until(DEADLINE, || async {
            all_see(&cluster, node_id, NodeState::Restarting)
        })
        .await
        .unwrap_or_else(|e| panic!("step {i}: {node_id} is not shown restarting: {e}"));
        cluster
            .add_on_gossip_port(i, gossip_port, |i, config| {
                warm(&dirs)(i, config);
                // n2 comes back set to stop for a restart on a signal too (checked below).
                if i == 2 {
                    config.shutdown_mode = ShutdownMode::Restart;
                }
            })
            .await;
        wait_until(DEADLINE, || async {
            cluster.node(node_id).node.state() == v1::NodeState::Active
        })
        .await
        .unwrap_or_else(|e| panic!("step {i}: {node_id} is not active again: {e}"));
        cluster.wait_converged(DEADLINE).await.unwrap();
        let after = hit_ratio(&load, reads_done(load.clone(), 300)).await;
        assert!(
            after >= 0.9 * before,
            "step {i} ({node_id}): hit ratio {after:.3} after, {before:.3} before"
        );
    }

    // n2 stops on a signal: with shutdown_mode = restart that keeps its data too.
    let n2 = cluster.take("n2");
    assert_eq!(n2.node.config().shutdown_mode, ShutdownMode::Restart);
    let gossip_port = n2.gossip_addr.expect("gossip").port();
    stop_for_restart(n2, true).await;
    wait_until(DEADLINE, || async {
        all_see(&cluster, "n2", NodeState::Restarting)
    })
    .await
    .expect("a signal with shutdown_mode = restart stops for a restart");
    cluster
        .add_on_gossip_port(2, gossip_port, warm(&dirs))
        .await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    wait_until(DEADLINE, || async {
        cluster.node("n2").node.state() == v1::NodeState::Active
    })
    .await
    .expect("n2 is back");

    load.stop.store(true, Relaxed);
    worker.await.unwrap();
    let acked = load.acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the load wrote: {} writes", acked.len());
    let quorum = client.with_consistency(Consistency::Quorum);
    let mut lost = Vec::new();
    for n in &acked {
        match quorum.get(format!("w{n}")).await {
            Ok(Some(value)) if value == format!("{n}").as_bytes() => {}
            other => lost.push((n, format!("{other:?}"))),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged QUORUM writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    eprintln!(
        "rolling restart: {} reads ({} errors), {} acknowledged writes, hit ratio before {before:.3}",
        load.hits.load(Relaxed) + load.misses.load(Relaxed),
        load.errors.load(Relaxed),
        acked.len()
    );
}
