//! Hot-key tracking end to end: a 3-node loopback cluster under a skewed load through the
//! client, then `ringctl -o json hotkeys` (every member asked, answers merged) lists the heavy
//! keys; the limit is checked against the nodes' capacity; the metrics show the top ranks.

use std::time::Duration;

use ringcache::Client;
use ringcache_test_support::zipf::Zipfian;
use ringcache_tests::ctl::ctl;
use ringcache_tests::{TestCluster, patient};
use serde_json::Value;

/// Generous bound for convergence and for a window to close with the load in it.
const DEADLINE: Duration = Duration::from_secs(30);
/// The heavy keys.
const HOT: [&str; 5] = ["hot-0", "hot-1", "hot-2", "hot-3", "hot-4"];

/// One burst of skewed load: each heavy key is read and written far more often than the rest.
async fn load(client: &Client) {
    for key in HOT {
        client.set(key, "v").await.unwrap();
        for _ in 0..30 {
            client.get(key).await.unwrap();
        }
    }
    for i in 0..60 {
        client.get(format!("cold-{i}")).await.unwrap();
    }
}

/// The top five keys of a `hotkeys` JSON document, heaviest first.
fn top_five(report: &Value) -> Vec<String> {
    report["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .take(5)
                .filter_map(|key| key["key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringctl_hotkeys_lists_the_heaviest_keys_of_a_three_node_cluster() {
    let cluster = TestCluster::start_converged(3, DEADLINE, |i, config| {
        patient(i, config);
        config.hot_keys.window = Duration::from_secs(1);
        // Every request counted: the test checks which keys come first, not the sampling.
        config.hot_keys.sample = 1;
        // No key answered hot: the client keeps sending each key to its primary (spreading
        // would count a key on every replica; tests/hot_spread.rs covers that).
        config.hot_keys.threshold = 0;
    })
    .await;
    let addr = cluster.nodes[0].grpc_target();
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();

    // Load until a window that closed with the load in it shows the heavy keys on top (the
    // first window may have closed before the load began, or cut it in two).
    let give_up = tokio::time::Instant::now() + DEADLINE;
    let report = loop {
        load(&client).await;
        let outcome = ctl(&addr, &["-o", "json", "hotkeys", "--limit", "20"]).await;
        assert_eq!(outcome.code, 0, "stderr: {}", outcome.stderr);
        let report: Value = serde_json::from_slice(&outcome.stdout).unwrap();
        let mut top = top_five(&report);
        top.sort();
        if top == HOT {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the heavy keys never came first: {report:#}"
        );
    };

    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "every member asked: {report:#}");
    for node in nodes {
        assert_eq!(node["reachable"], true, "{report:#}");
        assert_eq!(node["window_ms"], 1000);
    }
    let keys = report["keys"].as_array().unwrap();
    assert!(keys.len() <= 20);
    let total = report["total_requests"].as_u64().unwrap();
    assert!(total > 0);
    for key in keys.iter().take(5) {
        assert_eq!(key["encoding"], "utf8");
        assert!(key["requests_per_second"].as_f64().unwrap() > 0.0);
        assert!(key["share"].as_f64().unwrap() > 0.0);
        assert!(key["reads"].as_u64().unwrap() > 0, "{key}");
        // Counted once, where the client sent it (the key's primary), not again when forwarded.
        assert_eq!(key["nodes"].as_array().unwrap().len(), 1, "{key}");
    }
    // A heavy key beats every cold one.
    let weakest_hot = keys[4]["requests"].as_u64().unwrap();
    for key in keys.iter().skip(5) {
        assert!(
            key["requests"].as_u64().unwrap() < weakest_hot,
            "{report:#}"
        );
    }

    // The text rendering shows the same keys.
    let text = ctl(&addr, &["hotkeys"]).await;
    assert_eq!(text.code, 0, "stderr: {}", text.stderr);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.starts_with("KEY"), "{text}");

    // The limit is bounded by the nodes' capacity (256 by default): a clear error, exit 1.
    let over = ctl(&addr, &["-o", "json", "hotkeys", "--limit", "257"]).await;
    assert_eq!(over.code, 1);
    assert!(over.stderr.contains("hot_keys_capacity"), "{}", over.stderr);
    // 0 is refused by ringctl itself (usage).
    let zero = ctl(&addr, &["hotkeys", "--limit", "0"]).await;
    assert_eq!(zero.code, 2, "{}", zero.stderr);
}

/// `Admin.HotKeys` itself: the limit is 1..=capacity (here 16), a clear INVALID_ARGUMENT
/// otherwise; the window and sampling rate are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_keys_rpc_bounds_its_limit_by_the_capacity() {
    use ringcache_proto::v1::{self, admin_client::AdminClient};
    let mut config = ringcache_server::Config::for_test();
    config.hot_keys.capacity = 16;
    let node = ringcache_tests::TestNode::start(config).await;
    let mut admin = AdminClient::new(node.channel().await);
    for limit in [0, 17, u32::MAX] {
        let status = admin
            .hot_keys(v1::HotKeysRequest { limit })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{limit}");
        assert!(
            status
                .message()
                .contains("between 1 and hot_keys_capacity (16)"),
            "{status:?}"
        );
    }
    let answer = admin
        .hot_keys(v1::HotKeysRequest { limit: 16 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.window_ms, 10_000);
    assert_eq!(answer.sample, 8);
    assert!(answer.entries.len() <= 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hotkeys_off_is_refused_with_a_clear_error() {
    let cluster = TestCluster::start_converged(1, DEADLINE, |i, config| {
        patient(i, config);
        config.hot_keys.enabled = false;
    })
    .await;
    let addr = cluster.nodes[0].grpc_target();
    let outcome = ctl(&addr, &["hotkeys"]).await;
    assert_eq!(outcome.code, 1);
    assert!(outcome.stderr.contains("off"), "{}", outcome.stderr);
}

/// The RESP port's keyed commands feed the summary: reads and writes, each key of a multi-key
/// command; `/metrics` shows the top ranks without key names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_commands_feed_the_hot_keys_and_the_metrics() {
    let mut config = ringcache_server::Config::for_test();
    config.hot_keys.window = Duration::from_secs(1);
    config.hot_keys.sample = 1;
    let node = ringcache_tests::TestNode::start(config).await;
    let mut con = ringcache_tests::resp::connect(&node).await;
    let run = ringcache_tests::resp::run::<redis::Value>;

    let give_up = tokio::time::Instant::now() + DEADLINE;
    let report = loop {
        run(&mut con, &["SET", "resp-hot", "v"]).await.unwrap();
        for _ in 0..20 {
            run(&mut con, &["GET", "resp-hot"]).await.unwrap();
            run(&mut con, &["INCR", "resp-counter"]).await.unwrap();
        }
        for _ in 0..10 {
            run(&mut con, &["MSET", "resp-a", "1", "resp-b", "2"])
                .await
                .unwrap();
        }
        run(&mut con, &["DEL", "resp-cold"]).await.unwrap();
        let report = node.node.hot_keys().report(10);
        let wanted: [&[u8]; 4] = [b"resp-hot", b"resp-counter", b"resp-a", b"resp-b"];
        if wanted
            .iter()
            .all(|name| report.keys.iter().any(|k| k.key == *name))
        {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "RESP commands never showed: {report:?}"
        );
    };
    let find = |name: &[u8]| report.keys.iter().find(|k| k.key == name).unwrap();
    let hot = find(b"resp-hot");
    assert!(hot.reads > hot.writes, "GET reads, SET writes: {hot:?}");
    let counter = find(b"resp-counter");
    assert_eq!(counter.reads, 0, "INCR writes: {counter:?}");
    assert!(counter.writes > 0);
    let (a, b) = (find(b"resp-a"), find(b"resp-b"));
    assert!(a.writes > 0 && b.writes > 0, "each key of MSET counts");

    let metrics = ringcache_tests::http_get(node.http_addr, "/metrics")
        .await
        .expect("/metrics")
        .body;
    assert!(
        metrics.contains(r#"ringcache_hot_key_requests_per_second{rank="1"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("ringcache_hot_keys_top_share"));
    assert!(!metrics.contains("resp-hot"), "no key names in the metrics");
}

/// `n` keys drawn from `distinct` keys with a zipfian distribution (key `i` has weight
/// `1 / (i + 1)^0.99`, as ringbench's `zipfian:0.99`), from a fixed seed.
fn zipf_keys(n: usize, distinct: usize, seed: u64) -> Vec<String> {
    use rand::{RngExt, SeedableRng};
    let zipf = Zipfian::new(distinct as u64, 0.99).expect("a valid distribution");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| format!("zipf-{}", zipf.sample(|| rng.random())))
        .collect()
}

/// A zipfian read workload over 1000 keys through the client: the three heaviest keys of the
/// distribution are among the top five `ringctl hotkeys` reports (merged over the members).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zipfian_workloads_top_keys_lead_ringctl_hotkeys() {
    let cluster = TestCluster::start_converged(3, DEADLINE, |i, config| {
        patient(i, config);
        config.hot_keys.window = Duration::from_secs(1);
        config.hot_keys.sample = 1;
    })
    .await;
    let addr = cluster.nodes[0].grpc_target();
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    let stream = zipf_keys(3000, 1000, 16);
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        for batch in stream.chunks(100) {
            client.mget(batch.iter().cloned()).await.unwrap();
        }
        let outcome = ctl(&addr, &["-o", "json", "hotkeys", "--limit", "20"]).await;
        assert_eq!(outcome.code, 0, "stderr: {}", outcome.stderr);
        let report: Value = serde_json::from_slice(&outcome.stdout).unwrap();
        let top = top_five(&report);
        if ["zipf-0", "zipf-1", "zipf-2"]
            .iter()
            .all(|key| top.iter().any(|reported| reported == key))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the zipfian top keys never led: {report:#}"
        );
    }
}
