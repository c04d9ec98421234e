//! Data movement after ring changes: a joiner is filled, keys that moved are dropped by their
//! old holders, and a graceful leave hands everything off (R = 1: one copy per key, so any key
//! not moved would be lost).

use std::num::NonZeroU32;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use ringcache::Client;
use ringcache_tests::{TestCluster, copies_match_the_ring, load_keys, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);
const KEYS: usize = 20_000;

fn one_copy(_: usize, config: &mut ringcache_server::Config) {
    // Not a failure-detection test: a loaded machine must not suspect live nodes.
    ringcache_tests::patient(0, config);
    config.replication_factor = NonZeroU32::MIN;
    config.rebalance_bytes_per_sec = 0;
}

async fn all_readable(client: &Client) {
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
        let values = client
            .mget(chunk.iter().map(|i| format!("key{i}")))
            .await
            .unwrap();
        for (i, value) in chunk.iter().zip(values) {
            assert_eq!(
                value.as_deref(),
                Some(format!("value{i}").as_bytes()),
                "key{i} lost"
            );
        }
    }
}

#[tokio::test]
async fn a_joining_node_is_filled_and_old_holders_drop_what_moved() {
    let mut cluster = TestCluster::start_with(3, one_copy).await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    load_keys(&client, KEYS).await;
    let before: u64 = cluster
        .nodes
        .iter()
        .map(|n| n.node.store().stats().keys)
        .sum();
    assert_eq!(before, KEYS as u64);

    cluster.add(4, one_copy).await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    let settled = wait_until(DEADLINE, || async { copies_match_the_ring(&cluster, KEYS) }).await;
    if settled.is_err() {
        for n in &cluster.nodes {
            eprintln!(
                "DEBUG {} keys {} status {:?} ring {:?}",
                n.node.config().node_id,
                n.node.store().stats().keys,
                n.node.rebalance().to_wire(),
                n.node.view().ring.nodes()
            );
        }
        panic!("every key ends up exactly on its replica");
    }
    let joined = cluster.node("n4").node.store().stats().keys as f64 / KEYS as f64;
    assert!(
        (0.18..=0.32).contains(&joined),
        "the new node holds {joined:.3} of the keys, expected about 1/4"
    );
    let status = cluster.node("n4").node.rebalance().to_wire();
    assert!(status.keys_received > 0, "{status:?}");
    let metrics = ringcache_tests::http_get(cluster.node("n4").http_addr, "/metrics")
        .await
        .unwrap()
        .body;
    let line = format!(
        "ringcache_rebalance_keys_received_total {}",
        status.keys_received
    );
    assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    assert!(metrics.contains("ringcache_rebalance_in_progress 0"));
    all_readable(&client).await;
}

#[tokio::test]
async fn a_graceful_leave_hands_every_key_off() {
    let mut cluster = TestCluster::start_with(4, one_copy).await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    load_keys(&client, KEYS).await;
    let leaver = cluster.take("n2");
    let held = leaver.node.store().stats().keys;
    assert!(held > 0);
    leaver.stop().await.unwrap();
    cluster.wait_converged(DEADLINE).await.unwrap();
    wait_until(DEADLINE, || async { copies_match_the_ring(&cluster, KEYS) })
        .await
        .expect("every key is on its replica among the three left");
    // With one copy per key nothing can fail over: the client must have learned the topology
    // without n2 (its watch may have been on n2 and has to reconnect elsewhere).
    let digest = cluster.nodes[0].node.view().topology.digest();
    wait_until(DEADLINE, || async { client.topology_digest() == digest })
        .await
        .expect("the client learns the topology without the leaver");
    all_readable(&client).await;
}

/// Copies of `key` across the cluster, counted with Admin.Inspect on every node.
async fn copies_via_inspect(cluster: &TestCluster, key: &str) -> usize {
    let mut copies = 0;
    for node in &cluster.nodes {
        let channel = tonic::transport::Endpoint::from_shared(node.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut admin = ringcache_proto::v1::admin_client::AdminClient::new(channel);
        let answer = admin
            .inspect(ringcache_proto::v1::InspectRequest {
                key: bytes::Bytes::from(key.to_owned()),
            })
            .await
            .unwrap()
            .into_inner();
        copies += usize::from(answer.live);
    }
    copies
}

fn three_copies(_: usize, config: &mut ringcache_server::Config) {
    // Not a failure-detection test: a loaded machine must not suspect live nodes.
    ringcache_tests::patient(0, config);
    config.replication_factor = NonZeroU32::new(3).unwrap();
    config.rebalance_bytes_per_sec = 0;
}

#[tokio::test]
async fn with_three_copies_a_joiner_gets_its_share_and_every_key_stays_on_exactly_three_nodes() {
    let mut cluster = TestCluster::start_with(3, three_copies).await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    load_keys(&client, KEYS).await;
    cluster.add(4, three_copies).await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    wait_until(DEADLINE, || async { copies_match_the_ring(&cluster, KEYS) })
        .await
        .expect("every key ends up exactly on its three replicas");
    for i in (0..KEYS).step_by(97) {
        assert_eq!(
            copies_via_inspect(&cluster, &format!("key{i}")).await,
            3,
            "key{i}"
        );
    }
    // With R = 3 of 4 nodes each node holds about three quarters of the keys.
    let share = cluster.node("n4").node.store().stats().keys as f64 / KEYS as f64;
    assert!(
        (0.65..=0.85).contains(&share),
        "the new node holds {share:.3} of the keys"
    );
    all_readable(&client).await;
}

#[tokio::test]
async fn after_a_node_dies_every_key_gets_its_second_copy_back() {
    let two_copies = |_: usize, config: &mut ringcache_server::Config| {
        ringcache_tests::patient(0, config);
        config.replication_factor = NonZeroU32::new(2).unwrap();
        config.rebalance_bytes_per_sec = 0;
    };
    let mut cluster = TestCluster::start_with(4, two_copies).await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    load_keys(&client, KEYS).await;
    wait_until(DEADLINE, || async { copies_match_the_ring(&cluster, KEYS) })
        .await
        .expect("two copies of every key before the failure");
    cluster.take("n3").crash().await.unwrap();
    cluster.wait_converged(DEADLINE).await.unwrap();
    wait_until(DEADLINE, || async { copies_match_the_ring(&cluster, KEYS) })
        .await
        .expect("the survivors restore two copies of every key");
    for i in (0..KEYS).step_by(97) {
        assert_eq!(
            copies_via_inspect(&cluster, &format!("key{i}")).await,
            2,
            "key{i}"
        );
    }
    all_readable(&client).await;
}

/// A ring change reads only the entries of the slots it moves: the old holders find them
/// through the store's per-slot chains instead of scanning everything they hold.
#[tokio::test]
async fn a_join_reads_only_the_entries_of_the_slots_that_move() {
    let mut cluster = TestCluster::start_with(3, one_copy).await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    load_keys(&client, KEYS).await;
    let old_ring = cluster.nodes[0].node.view().ring.clone();
    let scanned_before: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.node.rebalance().keys_scanned_total.load(Relaxed))
        .collect();
    cluster.add(4, one_copy).await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    wait_until(DEADLINE, || async { copies_match_the_ring(&cluster, KEYS) })
        .await
        .expect("every key ends up exactly on its replica");
    let new_ring = cluster.nodes[0].node.view().ring.clone();
    for (node, before) in cluster.nodes.iter().take(3).zip(scanned_before) {
        let id = node.node.config().node_id.clone();
        // With one copy a key moves when its primary changes; this node held the keys whose old
        // primary it was.
        let held = (0..KEYS)
            .filter(|i| old_ring.primary(format!("key{i}").as_bytes()) == Some(id.as_str()))
            .count() as u64;
        let moved = (0..KEYS)
            .filter(|i| {
                let key = format!("key{i}");
                old_ring.primary(key.as_bytes()) == Some(id.as_str())
                    && new_ring.primary(key.as_bytes()) != Some(id.as_str())
            })
            .count() as u64;
        let scanned = node.node.rebalance().keys_scanned_total.load(Relaxed) - before;
        assert!(
            moved > 0 && moved < held / 2,
            "{id}: {moved} of {held} moved"
        );
        assert_eq!(
            scanned, moved,
            "{id} read exactly the entries of the slots that moved, not the {held} it held"
        );
    }
    all_readable(&client).await;
}
