//! Hot keys spread over their replicas, end to end: a 3-node loopback cluster (R = 3) with a low
//! `--hot-key-threshold`; the client reads one key often, the nodes answer it as hot
//! (`GetResponse.hot`, also on MGet results and unary calls), and the client's reads of it then
//! reach every replica (each node's own hot-key table counts reads of it, which a node only
//! counts for requests clients sent to it). A cold key still goes to its primary only; with a
//! replica crashed the hot key's reads keep succeeding on the others.

use std::time::Duration;

use ringcache::Client;
use ringcache_proto::v1::{self, cache_client::CacheClient};
use ringcache_tests::{TestCluster, TestNode, patient};

/// Generous bound for convergence and for windows to close with the load in them.
const DEADLINE: Duration = Duration::from_secs(30);
const HOT: &str = "spread-me";
const COLD: &str = "stay-home";

fn configure(i: usize, config: &mut ringcache_server::Config) {
    patient(i, config);
    config.hot_keys.window = Duration::from_secs(1);
    config.hot_keys.sample = 1;
    // Reads/s in a 1 s window: the hot key's loop is far above, the cold key's far below.
    config.hot_keys.threshold = 20;
}

/// Reads of `key` in `node`'s last complete hot-key window (0: not in its table).
fn reads_of(node: &TestNode, key: &str) -> u64 {
    node.node
        .hot_keys()
        .report(usize::MAX)
        .keys
        .iter()
        .find(|entry| entry.key == key.as_bytes())
        .map_or(0, |entry| entry.reads)
}

/// The id of `key`'s primary in `node`'s view.
fn primary_of(node: &TestNode, key: &str) -> String {
    node.node
        .view()
        .ring
        .primary(key.as_bytes())
        .expect("the ring has members")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_a_hot_key_reach_every_replica_and_cold_keys_stay_on_the_primary() {
    let mut cluster = TestCluster::start_converged(3, DEADLINE, configure).await;
    assert_eq!(cluster.nodes[0].node.view().ring.replication(), 3);
    let client = Client::builder()
        .seeds(cluster.grpc_targets())
        .hot_key_ttl(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    client.set(HOT, "v").await.unwrap();
    client.set(COLD, "c").await.unwrap();
    let primary = primary_of(&cluster.nodes[0], HOT);

    // Load until the key is hot at the client and every node's last window counted reads of it.
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        for _ in 0..100 {
            assert_eq!(client.get(HOT).await.unwrap().as_deref(), Some(&b"v"[..]));
        }
        let counts: Vec<u64> = cluster.nodes.iter().map(|n| reads_of(n, HOT)).collect();
        if client.stats().spread_reads > 0 && counts.iter().all(|&c| c > 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "spread reads never reached every replica: {counts:?}, {:?}",
            client.stats()
        );
    }
    assert_eq!(client.stats().hot_keys, 1, "only the hot key is hot");

    // A cold key's reads are not spread: they all go to its primary.
    let spread_before = client.stats().spread_reads;
    for _ in 0..10 {
        client.get(COLD).await.unwrap();
    }
    assert_eq!(
        client.stats().spread_reads,
        spread_before,
        "cold reads are not spread"
    );
    assert_eq!(client.stats().hot_keys, 1);
    // Once a window with those reads closed on the cold key's primary, it counted them, and no
    // other node counted any.
    let cold_primary = primary_of(&cluster.nodes[0], COLD);
    ringcache_tests::wait_until(DEADLINE, || {
        let seen = reads_of(cluster.node(&cold_primary), COLD) > 0;
        async move { seen }
    })
    .await
    .expect("the cold key's primary counts its reads");
    for node in &cluster.nodes {
        if node.node.config().node_id != cold_primary {
            assert_eq!(reads_of(node, COLD), 0, "{}", node.node.config().node_id);
        }
    }
    // QUORUM reads of the hot key are not spread either.
    let quorum = client.with_consistency(ringcache::Consistency::Quorum);
    for _ in 0..10 {
        quorum.get(HOT).await.unwrap();
    }
    assert_eq!(client.stats().spread_reads, spread_before);

    // The nodes' answers carry the mark: unary Get and MGet on the primary (the key stays hot
    // there while the whole load stays above the threshold), and never for the cold key.
    let mut raw = CacheClient::new(cluster.node(&primary).channel().await);
    let give_up = tokio::time::Instant::now() + DEADLINE;
    for round in 0.. {
        for _ in 0..100 {
            client.get(HOT).await.unwrap();
        }
        // A key read once in this loop: one read a round over many rounds would itself become
        // hot (the threshold is low here) when the machine is slow and the loop runs long.
        let cold = format!("{COLD}-{round}");
        let get = raw
            .get(ringcache_tests::get_request(HOT, 0))
            .await
            .unwrap()
            .into_inner();
        let mget = raw
            .m_get(v1::MGetRequest {
                keys: vec![HOT.into(), cold.into()],
                consistency: 0,
                tracking_id: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!mget.results[1].hot, "the cold key is never hot");
        if get.hot && mget.results[0].hot {
            assert!(get.found && mget.results[0].found);
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the primary never answered the key as hot"
        );
    }

    // A replica (not the primary) crashes: reads keep succeeding, spread over the two others.
    let victim = cluster
        .nodes
        .iter()
        .map(|n| n.node.config().node_id.clone())
        .find(|id| *id != primary)
        .unwrap();
    cluster.take(&victim).crash().await.unwrap();
    let spread_before = client.stats().spread_reads;
    for _ in 0..200 {
        assert_eq!(client.get(HOT).await.unwrap().as_deref(), Some(&b"v"[..]));
    }
    assert!(client.stats().spread_reads > spread_before);
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        for _ in 0..100 {
            assert_eq!(client.get(HOT).await.unwrap().as_deref(), Some(&b"v"[..]));
        }
        if cluster.nodes.iter().all(|n| reads_of(n, HOT) > 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the surviving replicas did not share the reads"
        );
    }
}

/// A key read often through MGet is answered hot in the MGet results too, and the client then
/// spreads its MGet parts of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_reads_of_a_hot_key_are_spread_too() {
    let cluster = TestCluster::start_converged(3, DEADLINE, configure).await;
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    client.set(HOT, "v").await.unwrap();
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        for _ in 0..100 {
            let values = client.mget([HOT]).await.unwrap();
            assert_eq!(values[0].as_deref(), Some(&b"v"[..]));
        }
        let counts: Vec<u64> = cluster.nodes.iter().map(|n| reads_of(n, HOT)).collect();
        if client.stats().spread_reads > 0 && counts.iter().all(|&c| c > 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "mget reads never spread: {counts:?}"
        );
    }
}
