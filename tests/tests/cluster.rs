//! Multi-node clusters over loopback, joined by gossip: convergence, direct routing, failure
//! detection and rerouting, topology refresh, rejoin after a restart.

use std::time::Duration;

use bytes::Bytes;
use ringcache::Client;
use ringcache_proto::placement::Ring;
use ringcache_proto::topology::NodeState;
use ringcache_tests::{TestCluster, wait_until};

/// Generous bounds: failure detection here takes ~0.5 s (100 ms probes, 400 ms suspicion).
const CONVERGE: Duration = Duration::from_secs(15);

fn forwarded(cluster: &TestCluster) -> u64 {
    cluster
        .nodes
        .iter()
        .map(|n| n.node.metrics().forwarded_total())
        .sum()
}

#[tokio::test]
async fn three_nodes_converge_on_one_topology() {
    let cluster = TestCluster::start(3).await;
    let digest = cluster.wait_converged(CONVERGE).await.unwrap();
    for node in &cluster.nodes {
        let view = node.node.view();
        assert_eq!(view.topology.digest(), digest);
        assert_eq!(view.topology.members().len(), 3);
        for member in view.topology.members() {
            assert_eq!(member.state, NodeState::Active, "{member:?}");
            let peer = cluster.node(&member.node_id);
            assert_eq!(member.grpc_addr, peer.grpc_addr.to_string());
            assert_eq!(member.http_addr, peer.http_addr.to_string());
            assert_eq!(
                Some(member.gossip_addr.clone()),
                peer.gossip_addr.map(|a| a.to_string())
            );
        }
    }
}

#[tokio::test]
async fn the_client_routes_every_key_to_its_primary() {
    // R = 1, so the primary is the only node that holds a key (replication is tested in
    // replication.rs).
    // Patient failure detection: a false suspicion on a loaded machine changes the ring and
    // makes one request forwarded.
    let cluster = TestCluster::start_with(3, |i, config| {
        ringcache_tests::patient(i, config);
        config.replication_factor = std::num::NonZeroU32::MIN;
    })
    .await;
    cluster.wait_converged(CONVERGE).await.unwrap();
    let client = Client::connect([cluster.nodes[0].grpc_target()])
        .await
        .unwrap();
    let topology = client.topology();
    assert_eq!(
        topology.digest(),
        cluster.nodes[0].node.view().topology.digest()
    );
    let ring = Ring::new(&topology);
    for i in 0..300 {
        client
            .set(format!("key{i}"), format!("value{i}"))
            .await
            .unwrap();
    }
    let values = client
        .mget((0..300).map(|i| format!("key{i}")))
        .await
        .unwrap();
    assert!(
        values
            .iter()
            .enumerate()
            .all(|(i, v)| v.as_deref() == Some(format!("value{i}").as_bytes()))
    );
    assert_eq!(
        forwarded(&cluster),
        0,
        "a topology-aware client never needs forwarding"
    );
    for i in 0..300 {
        let key = format!("key{i}");
        let primary = ring.primary(key.as_bytes()).unwrap();
        for node in &cluster.nodes {
            let held = node
                .node
                .store()
                .get(key.as_bytes(), node.node.now_ms())
                .unwrap()
                .is_some();
            assert_eq!(
                held,
                node.node.config().node_id == primary,
                "{key} on {}",
                node.node.config().node_id
            );
        }
    }
    let per_node: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.node.store().stats().keys)
        .collect();
    assert!(
        per_node.iter().all(|&k| k > 50),
        "keys spread over every node: {per_node:?}"
    );
}

#[tokio::test]
async fn a_crashed_node_leaves_every_ring_and_the_client_reroutes() {
    let mut cluster = TestCluster::start(3).await;
    cluster.wait_converged(CONVERGE).await.unwrap();
    let client = Client::connect([cluster.nodes[0].grpc_target()])
        .await
        .unwrap();
    let ring = Ring::new(&client.topology());
    let victim_keys: Vec<String> = (0..)
        .map(|i| format!("key{i}"))
        .filter(|k| ring.primary(k.as_bytes()) == Some("n3"))
        .take(20)
        .collect();

    cluster.take("n3").crash().await.unwrap();
    cluster.wait_converged(CONVERGE).await.unwrap();
    // Every request for the dead node's keys succeeds: the client fails over or has refreshed.
    for key in &victim_keys {
        client.set(key.clone(), "after").await.unwrap();
        assert_eq!(
            client.get(key.clone()).await.unwrap().as_deref(),
            Some(&b"after"[..])
        );
    }
    let survivors = cluster.nodes[0].node.view().topology.digest();
    wait_until(CONVERGE, || async { client.topology_digest() == survivors })
        .await
        .expect("the client learns the new topology");
    assert!(client.topology().ring_members().all(|m| m.node_id != "n3"));
}

#[tokio::test]
async fn reads_at_one_see_no_errors_while_a_replica_is_killed() {
    // R = 2 of 3 nodes, and gossip slow to declare the victim dead (patient timings): the
    // client's circuit breaker and failover carry the reads until the topology changes.
    let mut cluster = TestCluster::start_converged(3, CONVERGE, |i, config| {
        ringcache_tests::patient(i, config);
        config.replication_factor = std::num::NonZeroU32::new(2).unwrap();
    })
    .await;
    let client = std::sync::Arc::new(
        Client::builder()
            .seeds([cluster.nodes[0].grpc_target()])
            .default_consistency(ringcache::Consistency::One)
            .connect()
            .await
            .unwrap(),
    );
    let keys: Vec<String> = (0..200).map(|i| format!("breaker{i}")).collect();
    for key in &keys {
        client
            .set_with(
                key.clone(),
                "v",
                ringcache::SetOptions::new().consistency(ringcache::Consistency::All),
            )
            .await
            .unwrap();
    }
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (client, keys, reads) = (client.clone(), keys.clone(), reads.clone());
        tokio::spawn(async move {
            let mut errors = Vec::new();
            // Bounded: 10 passes over the keys.
            for key in keys.iter().cycle().take(keys.len() * 10) {
                match client.get(key.clone()).await {
                    Ok(Some(value)) if value.as_ref() == b"v" => {}
                    other => errors.push(format!("{key}: {other:?}")),
                }
                reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            errors
        })
    };
    wait_until(CONVERGE, || async {
        reads.load(std::sync::atomic::Ordering::Relaxed) >= keys.len()
    })
    .await
    .expect("the reader runs");
    cluster.take("n3").crash().await.unwrap();
    let errors = reader.await.unwrap();
    assert!(
        errors.is_empty(),
        "{} reads failed while n3 was killed, first: {:?}",
        errors.len(),
        errors.first()
    );
}

#[tokio::test]
async fn the_client_follows_a_joining_node_without_forwarding() {
    let mut cluster = TestCluster::start(2).await;
    cluster.wait_converged(CONVERGE).await.unwrap();
    let client = Client::connect([cluster.nodes[0].grpc_target()])
        .await
        .unwrap();
    cluster.add(3, |_, _| {}).await;
    let digest = cluster.wait_converged(CONVERGE).await.unwrap();
    wait_until(CONVERGE, || async { client.topology_digest() == digest })
        .await
        .expect("the watch stream delivers the new topology");
    for i in 0..100 {
        client.set(format!("k{i}"), Bytes::from("v")).await.unwrap();
    }
    assert_eq!(forwarded(&cluster), 0);
    assert!(
        cluster.node("n3").node.store().stats().keys > 0,
        "the new node owns keys"
    );
}

#[tokio::test]
async fn a_request_through_a_node_that_does_not_hold_the_key_is_forwarded() {
    // R = 1, so each key has a single holder (with R = 3 of 3 nodes, every node holds every key).
    let cluster = TestCluster::start_with(3, |_, config| {
        config.replication_factor = std::num::NonZeroU32::MIN;
    })
    .await;
    cluster.wait_converged(CONVERGE).await.unwrap();
    // A topology-unaware caller: the raw stub, always talking to node 1.
    let channel = tonic::transport::Endpoint::from_shared(cluster.nodes[0].grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = ringcache_proto::v1::cache_client::CacheClient::new(channel);
    for i in 0..30 {
        raw.set(ringcache_proto::v1::SetRequest {
            key: Bytes::from(format!("raw{i}")),
            value: Bytes::from("v"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let through_node1 = cluster.nodes[0].node.metrics().forwarded_total();
    assert!(
        through_node1 > 0 && through_node1 < 30,
        "forwarded {through_node1} of 30"
    );
    assert_eq!(
        forwarded(&cluster),
        through_node1,
        "no request forwarded twice"
    );
    // A smart client reads them all directly.
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    let got = client
        .mget((0..30).map(|i| format!("raw{i}")))
        .await
        .unwrap();
    assert!(got.iter().all(Option::is_some));
    assert_eq!(forwarded(&cluster), through_node1);
}

#[tokio::test]
async fn a_restarted_node_rejoins_with_a_higher_incarnation() {
    let mut cluster = TestCluster::start(3).await;
    cluster.wait_converged(CONVERGE).await.unwrap();
    let old = cluster
        .node("n2")
        .node
        .view()
        .topology
        .member("n2")
        .unwrap()
        .incarnation;
    cluster.take("n2").crash().await.unwrap();
    cluster.wait_converged(CONVERGE).await.unwrap();
    cluster.add(2, |_, _| {}).await;
    cluster.wait_converged(CONVERGE).await.unwrap();
    for node in &cluster.nodes {
        let member = node.node.view().topology.member("n2").cloned().unwrap();
        assert!(member.incarnation > old, "{member:?}");
        assert_eq!(member.state, NodeState::Active);
    }
}

#[tokio::test]
async fn a_gracefully_stopped_node_leaves_quickly() {
    let mut cluster = TestCluster::start(3).await;
    cluster.wait_converged(CONVERGE).await.unwrap();
    cluster.take("n3").stop().await.unwrap();
    cluster.wait_converged(CONVERGE).await.unwrap();
    let stats = cluster.nodes[0].node.gossip_stats().expect("gossip runs");
    assert!(stats.packets_received > 0 && stats.packets_sent > 0);
    let metrics = ringcache_tests::http_get(cluster.nodes[0].http_addr, "/metrics")
        .await
        .unwrap()
        .body;
    for needle in [
        "ringcache_ring_members 2",
        "ringcache_gossip_packets_sent_total ",
        "ringcache_gossip_bytes_received_total ",
        r#"ringcache_gossip_dropped_packets_total{reason="malformed"} 0"#,
        r#"ringcache_members{state="alive"} 2"#,
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
}

/// A node whose placement settings differ from the cluster's (here R and vnodes) would place
/// keys differently: the cluster refuses it and it refuses to join, each saying why (log,
/// metric, `NodeInfo` for `ringctl status`, readiness), and it never enters a ring.
#[tokio::test]
async fn a_node_with_other_placement_settings_is_refused_at_join() {
    let mut cluster = TestCluster::start(2).await;
    cluster.wait_converged(CONVERGE).await.unwrap();
    cluster
        .add(3, |_, config| {
            config.replication_factor = std::num::NonZeroU32::new(2).unwrap();
            config.vnodes = std::num::NonZeroU32::new(64).unwrap();
        })
        .await;
    let odd = &cluster.nodes[2].node;
    let expected = "replication_factor 2, this node's 3; vnodes 64, this node's 256";
    wait_until(CONVERGE, || async {
        cluster.nodes[..2].iter().all(|n| {
            n.node
                .refused_members()
                .iter()
                .any(|m| m.node_id == "n3" && m.reason == expected)
        })
    })
    .await
    .expect("both members refuse n3");
    wait_until(CONVERGE, || async {
        odd.readiness().is_err_and(|why| {
            why.starts_with("refused: ") && why.contains("n1 has replication_factor 3")
        })
    })
    .await
    .unwrap_or_else(|_| panic!("n3 does not refuse to join: {:?}", odd.readiness()));
    assert_eq!(odd.state(), ringcache_proto::v1::NodeState::Joining);
    for node in &cluster.nodes[..2] {
        let view = node.node.view();
        assert!(view.topology.member("n3").is_none());
        assert_eq!(view.ring.nodes().len(), 2);
    }
    assert_eq!(
        odd.view().ring.nodes().len(),
        0,
        "n3 built a ring of its own"
    );

    let metrics = |i: usize| {
        let addr = cluster.nodes[i].http_addr;
        async move {
            ringcache_tests::http_get(addr, "/metrics")
                .await
                .unwrap()
                .body
        }
    };
    assert!(
        metrics(0)
            .await
            .contains("ringcache_cluster_refused_members 1\n")
    );
    assert!(metrics(2).await.contains("ringcache_join_refused 1\n"));
    let ready = ringcache_tests::http_get(cluster.nodes[2].http_addr, "/health/ready")
        .await
        .unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("refused"), "{}", ready.body);
}
