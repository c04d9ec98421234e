//! Gossip security over loopback: nodes without the cluster key (or without any key) never
//! join an encrypted cluster, a key rotation through `reload_secrets` loses no member, and a
//! second process claiming a live node id is refused until the real node is dead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ringcache_proto::topology::NodeState;
use ringcache_server::Config;
use ringcache_server::cluster::{DropReason, GossipStatsSnapshot};
use ringcache_tests::{KeyringFile, TestCluster, TestNode, gossip_key, gossip_key_id, wait_until};

const DEADLINE: Duration = Duration::from_secs(15);

fn stats(node: &TestNode) -> GossipStatsSnapshot {
    node.node.gossip_stats().expect("gossip runs")
}

fn ring(node: &TestNode) -> Vec<String> {
    node.node
        .view()
        .ring
        .nodes()
        .iter()
        .map(|id| id.to_string())
        .collect()
}

/// The ids of every member `node` sees, itself included (a Joining node has no ring yet).
fn members(node: &TestNode) -> Vec<String> {
    node.node
        .view()
        .topology
        .members()
        .iter()
        .map(|m| m.node_id.clone())
        .collect()
}

/// A node that joins through `seed` with `keyring` (`None`: plaintext).
async fn intruder(id: &str, seed: &TestNode, keyring: Option<&KeyringFile>) -> TestNode {
    let mut config = Config::for_test();
    config.node_id = id.to_owned();
    config.seeds = vec![seed.gossip_addr.unwrap().to_string()];
    config.gossip_keyring = keyring.map(|k| k.path().to_path_buf());
    TestNode::start(config).await
}

/// Waits until `node` has dropped at least `n` datagrams for `reason`.
async fn wait_for_drops(node: &TestNode, reason: DropReason, n: u64) {
    wait_until(DEADLINE, || async { stats(node).dropped(reason) >= n })
        .await
        .unwrap_or_else(|_| panic!("{reason:?} drops: {:?}", stats(node)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_cluster_key_never_joins() {
    let key = gossip_key();
    let files = [KeyringFile::new(&[&key]), KeyringFile::new(&[&key])];
    let cluster = TestCluster::start_encrypted(&files, DEADLINE).await;
    let wrong = KeyringFile::new(&[&gossip_key()]);
    let n3 = intruder("n3", &cluster.nodes[0], Some(&wrong)).await;
    // It announces every probe interval; five refusals is half a second of trying.
    wait_for_drops(&cluster.nodes[0], DropReason::UnknownKey, 5).await;
    for node in &cluster.nodes {
        assert_eq!(ring(node), ["n1", "n2"]);
        assert_eq!(stats(node).dropped(DropReason::Unauthenticated), 0);
    }
    assert_eq!(members(&n3), ["n3"], "the intruder learned nothing");
    assert_eq!(stats(&n3).packets_received, 0, "nobody answered it");
    assert_eq!(
        stats(&cluster.nodes[0]).keyring_primary_id,
        gossip_key_id(&key)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_encrypted_nodes_never_join_each_other() {
    let key = gossip_key();
    let files = [KeyringFile::new(&[&key]), KeyringFile::new(&[&key])];
    let cluster = TestCluster::start_encrypted(&files, DEADLINE).await;
    let plain = intruder("plain", &cluster.nodes[0], None).await;
    wait_for_drops(&cluster.nodes[0], DropReason::Plaintext, 5).await;
    assert_eq!(ring(&cluster.nodes[0]), ["n1", "n2"]);
    assert_eq!(members(&plain), ["plain"]);
    assert_eq!(stats(&plain).keyring_keys, 0);

    // The other way round: an encrypted node pointed at a plaintext one.
    let sealed = intruder("sealed", &plain, Some(&files[0])).await;
    wait_for_drops(&plain, DropReason::Encrypted, 5).await;
    assert_eq!(members(&plain), ["plain"]);
    assert_eq!(members(&sealed), ["sealed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_loses_no_member() {
    let (old, new) = (gossip_key(), gossip_key());
    let files = [
        KeyringFile::new(&[&old]),
        KeyringFile::new(&[&old]),
        KeyringFile::new(&[&old]),
    ];
    let cluster = Arc::new(TestCluster::start_encrypted(&files, DEADLINE).await);

    // Watch every ring all along the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (cluster, stop) = (cluster.clone(), stop.clone());
        async move {
            let mut samples = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                for node in &cluster.nodes {
                    let ring = ring(node);
                    if ring != ["n1", "n2", "n3"] {
                        return Err(format!(
                            "{} saw the ring {ring:?}",
                            node.node.config().node_id
                        ));
                    }
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(samples)
        }
    });

    // Each step on one node after the other, as an operator would; the cluster must stay whole
    // between any two of them.
    let steps: [(&[&str], u64, u64); 3] = [
        (&[&old, &new], 2, gossip_key_id(&old)), // install
        (&[&new, &old], 2, gossip_key_id(&new)), // use
        (&[&new], 1, gossip_key_id(&new)),       // remove
    ];
    for (keys, len, primary) in steps {
        for (file, node) in files.iter().zip(&cluster.nodes) {
            file.rewrite(keys);
            node.node.reload_secrets();
            wait_until(DEADLINE, || async {
                let s = stats(node);
                s.keyring_keys == len && s.keyring_primary_id == primary
            })
            .await
            .unwrap();
        }
    }
    // Gossip goes on under the new key alone: every node hears more from the others.
    let heard: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| stats(n).packets_received)
        .collect();
    for (node, before) in cluster.nodes.iter().zip(heard) {
        wait_until(DEADLINE, || async {
            stats(node).packets_received > before + 20
        })
        .await
        .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let samples = watcher
        .await
        .unwrap()
        .unwrap_or_else(|broken| panic!("{broken}"));
    assert!(samples > 0);
    for node in &cluster.nodes {
        let s = stats(node);
        for reason in [
            DropReason::UnknownKey,
            DropReason::Unauthenticated,
            DropReason::Replayed,
            DropReason::Plaintext,
        ] {
            assert_eq!(
                s.dropped(reason),
                0,
                "{reason:?} at {}: {s:?}",
                node.node.config().node_id
            );
        }
        for member in node.node.view().topology.members() {
            assert_eq!(member.state, NodeState::Active, "{member:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_live_node_id_is_refused_until_the_real_one_is_dead() {
    let mut cluster = TestCluster::start_converged(2, DEADLINE, |_, _| {}).await;
    let real = cluster
        .node("n1")
        .node
        .view()
        .topology
        .members()
        .iter()
        .find(|m| m.node_id == "n2")
        .cloned()
        .unwrap();
    // An impostor claims n2 through the seed n1 and straight at the real n2.
    let mut config = Config::for_test();
    config.node_id = "n2".to_owned();
    config.seeds = cluster
        .nodes
        .iter()
        .map(|n| n.gossip_addr.unwrap().to_string())
        .collect();
    let impostor = TestNode::start(config).await;
    let impostor_gossip = impostor.gossip_addr.unwrap().to_string();
    wait_for_drops(cluster.node("n1"), DropReason::Impostor, 3).await;
    wait_for_drops(cluster.node("n2"), DropReason::Impostor, 3).await;
    for node in &cluster.nodes {
        let members = node.node.view().topology.members().to_vec();
        let n2 = members.iter().find(|m| m.node_id == "n2").unwrap();
        assert_eq!(n2, &real, "n2 as {} sees it", node.node.config().node_id);
        assert_eq!(ring(node), ["n1", "n2"]);
    }
    assert_eq!(members(&impostor), ["n2"], "the impostor learned nothing");

    // Once the real n2 is dead, n2 may come back from the impostor's address.
    cluster.take("n2").crash().await.unwrap();
    let n1 = cluster.node("n1");
    wait_until(DEADLINE, || async {
        n1.node.view().topology.members().iter().any(|m| {
            m.node_id == "n2" && m.gossip_addr == impostor_gossip && m.state == NodeState::Active
        })
    })
    .await
    .unwrap_or_else(|_| panic!("n1 sees {:?}", n1.node.view().topology.members()));
}
