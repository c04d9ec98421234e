//! Embedded mode end to end: a node started in the test process through
//! `ringcache_server::embedded::Embedded::builder()` (as `server/examples/embedded.rs` does)
//! joins two ordinary nodes; the ring has three members; data written through another node is
//! readable through the embedded node's client; reads of keys the embedded node holds are
//! served by it without a network request (its gRPC get counter does not move, the client's
//! local-read counter does), reads of the others go over the network; writes through it reach
//! the cluster.

use std::time::Duration;

use ringcache::Client;
use ringcache_server::embedded::{Embedded, EmbeddedNode};
use ringcache_tests::{TestCluster, patient, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);
const KEYS: usize = 60;

fn configure(i: usize, config: &mut ringcache_server::Config) {
    patient(i, config);
    // R = 2 of 3 members: the embedded node holds some keys and not others.
    config.replication_factor = std::num::NonZeroU32::new(2).unwrap();
}

/// The gRPC requests of operation `op` `node` counted, whatever their result.
fn grpc_count(node: &ringcache_server::Node, op: &str) -> u64 {
    let text = node.metrics().render(
        &node.store().stats(),
        node.config().store.max_memory_bytes,
        node.uptime(),
    );
    let prefix = format!(r#"ringcache_requests_total{{op="{op}","#);
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The gRPC Get requests `node` counted.
fn grpc_gets(node: &ringcache_server::Node) -> u64 {
    grpc_count(node, "get")
}

async fn start_embedded(cluster: &TestCluster) -> EmbeddedNode {
    let mut config = ringcache_server::Config::for_test();
    configure(3, &mut config);
    let seed = cluster.nodes[0].gossip_addr.unwrap().to_string();
    Embedded::builder()
        .config(config)
        .node_id("emb")
        .seeds([seed])
        .max_memory(64 * 1024 * 1024)
        .ready_timeout(DEADLINE)
        .start()
        .await
        .expect("the embedded node starts and joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_node_joins_and_serves_its_own_keys_without_a_network_hop() {
    let cluster = TestCluster::start_converged(2, DEADLINE, configure).await;
    let embedded = start_embedded(&cluster).await;
    assert_eq!(embedded.node_id(), "emb");

    // Three members everywhere, one topology.
    let nodes = [
        &cluster.nodes[0].node,
        &cluster.nodes[1].node,
        embedded.node(),
    ];
    wait_until(DEADLINE, || {
        let converged = nodes.iter().all(|n| n.view().ring.nodes().len() == 3)
            && nodes
                .iter()
                .all(|n| n.view().topology.digest() == nodes[0].view().topology.digest());
        async move { converged }
    })
    .await
    .expect("the ring has the three members");
    let client = embedded.client();
    wait_until(DEADLINE, || {
        let client = client.clone();
        async move {
            client.refresh_topology().await.is_ok()
                && client.topology().members().len() == 3
                && client
                    .topology()
                    .members()
                    .iter()
                    .all(|m| m.state == ringcache::NodeState::Active)
        }
    })
    .await
    .expect("the embedded client sees the three members active");

    // Written through an ordinary node, read through the embedded node's client.
    let other = Client::connect([cluster.nodes[0].grpc_target()])
        .await
        .unwrap();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("emb-key-{i}")).collect();
    for key in &keys {
        other
            .set(key.clone(), format!("value of {key}"))
            .await
            .unwrap();
    }
    let view = embedded.node().view();
    let held = keys
        .iter()
        .filter(|key| view.ring.replicas(key.as_bytes()).contains("emb"))
        .count();
    assert!(
        0 < held && held < KEYS,
        "{held} of {KEYS} held by the embedded node"
    );

    let gets_before = grpc_gets(embedded.node());
    let local_before = client.stats().local_reads;
    for key in &keys {
        let value = client.get(key.clone()).await.unwrap();
        assert_eq!(value.as_deref(), Some(format!("value of {key}").as_bytes()));
    }
    let missing = client.get("emb-never-written").await.unwrap();
    assert_eq!(missing, None);
    let local = client.stats().local_reads - local_before;
    let held_missing = usize::from(view.ring.replicas(b"emb-never-written").contains("emb"));
    assert_eq!(
        local,
        (held + held_missing) as u64,
        "every read of a key the node holds is local, no other"
    );
    // Those reads never reached the embedded node's gRPC service (the others went to their
    // primaries, other nodes).
    assert_eq!(grpc_gets(embedded.node()), gets_before);

    // An mget reads the held keys locally and sends only the others (to their primaries).
    let mgets_before = grpc_count(embedded.node(), "mget");
    let local_before = client.stats().local_reads;
    let values = client.mget(keys.iter().cloned()).await.unwrap();
    for (key, value) in keys.iter().zip(&values) {
        assert_eq!(value.as_deref(), Some(format!("value of {key}").as_bytes()));
    }
    assert_eq!(client.stats().local_reads - local_before, held as u64);
    assert_eq!(grpc_count(embedded.node(), "mget"), mgets_before);
    assert_eq!(grpc_gets(embedded.node()), gets_before);

    // get_entry is local too, with the version the other node returns.
    let local_key = keys
        .iter()
        .find(|key| view.ring.replicas(key.as_bytes()).contains("emb"))
        .unwrap();
    let before = client.stats().local_reads;
    let entry = client.get_entry(local_key.clone()).await.unwrap().unwrap();
    assert_eq!(client.stats().local_reads, before + 1);
    let remote = other.get_entry(local_key.clone()).await.unwrap().unwrap();
    assert_eq!(entry.version, remote.version);

    // QUORUM reads are not served locally.
    let quorum = client.with_consistency(ringcache::Consistency::Quorum);
    let before = client.stats().local_reads;
    assert!(quorum.get(local_key.clone()).await.unwrap().is_some());
    assert_eq!(client.stats().local_reads, before);

    // Writes through the embedded client reach the cluster.
    client.set("from-embedded", "hello").await.unwrap();
    assert_eq!(
        other.get("from-embedded").await.unwrap().as_deref(),
        Some(&b"hello"[..])
    );

    embedded.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_embedded_settings_are_clear_errors() {
    for (builder, named) in [
        (
            Embedded::builder()
                .config(ringcache_server::Config::for_test())
                .max_memory(1024),
            "max_memory",
        ),
        (
            Embedded::builder()
                .config(ringcache_server::Config::for_test())
                .replication_factor(0),
            "replication_factor",
        ),
        (
            Embedded::builder()
                .config(ringcache_server::Config::for_test())
                .ready_timeout(Duration::ZERO),
            "ready_timeout",
        ),
    ] {
        let error = builder.start().await.unwrap_err();
        assert!(format!("{error:#}").contains(named), "{named}: {error:#}");
    }
}
