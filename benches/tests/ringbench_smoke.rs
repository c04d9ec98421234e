//! Short ringbench runs, by request count, against an in-process ringcache node (over gRPC and
//! over its RESP port, alone and as a 3-node cluster through the `redis` crate's cluster client)
//! and a real `redis-server` started by the harness's own server management. They check counts,
//! never timings.

use std::{ffi::OsString, time::Duration};

use ringcache_bench::bench::{
    report::RunResult,
    runner::{RunConfig, run},
    suite::{Pinning, ScratchDir, find_redis_server, start_redis},
    target::{TargetUrl, Transport},
    workload::WorkloadSpec,
};
use ringcache_tests::{TestCluster, TestNode};

/// How long a test cluster has to converge.
const DEADLINE: Duration = Duration::from_secs(20);

fn workload(mix: &str, keys: u64) -> WorkloadSpec {
    WorkloadSpec {
        mix: mix.parse().unwrap(),
        keys,
        distribution: "zipfian:0.99".parse().unwrap(),
        value_size: "50..150".parse().unwrap(),
        ttl_ms: None,
        batch: 5,
        seed: 7,
    }
}

fn config(target: &str, mix: &str, requests: u64) -> RunConfig {
    let target: TargetUrl = target.parse().unwrap();
    let mut config = RunConfig::new(target, workload(mix, 200), Duration::from_secs(1));
    config.duration_ms = None;
    config.requests = Some(requests);
    config.warmup_ms = 0;
    config.connections = 3;
    config.concurrency = 4;
    config
}

/// The counts every clean run must satisfy.
fn check_counts(result: &RunResult, requests: u64) {
    assert_eq!(result.requests, requests, "{}", result.table());
    assert_eq!(result.errors, 0, "{}", result.table());
    assert_eq!(result.ok, requests);
    assert!(result.errors_by_kind.is_empty());
    let per_op: u64 = result.ops.values().map(|s| s.count).sum();
    assert_eq!(per_op, requests);
    assert_eq!(result.latency.count, requests);
    // Every key read is a hit or a miss: gets read one key, mgets `batch`.
    let batch = result.config.workload.batch as u64;
    let reads = result.ops.get("get").map_or(0, |s| s.count)
        + result.ops.get("mget").map_or(0, |s| s.count) * batch;
    assert_eq!(result.hits + result.misses, reads, "{}", result.table());
    assert!(result.throughput > 0.0);
    assert!(result.latency.p50_us <= result.latency.p99_us);
    assert!(result.latency.p99_us <= result.latency.max_us);
}

#[tokio::test]
async fn ringcache_closed_loop_by_request_count() {
    let node = TestNode::start_default().await;
    let target = format!("ringcache://{}", node.grpc_target());

    // A fresh node: every read misses.
    let result = run(&config(&target, "get=1", 300), false).await.unwrap();
    check_counts(&result, 300);
    assert_eq!((result.hits, result.misses), (0, 300));

    // Loaded first: every read of the key space hits.
    let mut loaded = config(&target, "get=70,set=10,mget=10,mset=5,incr=5", 400);
    loaded.load = true;
    loaded.load_batch = 32;
    let result = run(&loaded, false).await.unwrap();
    check_counts(&result, 400);
    let load = result.load.as_ref().unwrap();
    assert_eq!((load.keys, load.errors), (200, 0));
    assert_eq!(result.misses, 0, "{}", result.table());
    assert!(result.hits > 0);
    assert_eq!(result.hit_ratio, Some(1.0));
    assert_eq!(result.target_kind, "ringcache");

    // The same through unary calls instead of the pipelined stream.
    let mut unary = config(&target, "get=80,mget=20", 200);
    unary.client.transport = Transport::Unary;
    let result = run(&unary, false).await.unwrap();
    check_counts(&result, 200);
    assert_eq!(result.misses, 0);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn ringcache_open_loop_by_request_count() {
    let node = TestNode::start_default().await;
    let target = format!("ringcache://{}", node.grpc_target());
    let mut open = config(&target, "get=90,set=10", 200);
    open.rate = Some(2000.0);
    let result = run(&open, false).await.unwrap();
    check_counts(&result, 200);
    let lag = result.send_lag.expect("open loop reports its send lag");
    assert_eq!(lag.count, 200);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_target_is_one_clear_error() {
    let port = ringcache_bench::bench::suite::free_tcp_port().unwrap();
    let mut unreachable = config(&format!("ringcache://127.0.0.1:{port}"), "get=1", 10);
    unreachable.client.connect_timeout_ms = 500;
    let error = run(&unreachable, false).await.unwrap_err().to_string();
    assert!(
        error.starts_with("cannot connect to ringcache://127.0.0.1:"),
        "{error}"
    );
}

#[tokio::test]
async fn redis_server_started_by_the_harness() {
    let binary = find_redis_server(None, std::env::var_os("PATH").as_deref())
        .unwrap_or_else(|message| panic!("{message}"));
    let scratch = ScratchDir::new("test").unwrap();
    let server = start_redis(&binary, &Pinning::none(), scratch.path()).unwrap();
    let target = server.url();

    let result = run(&config(&target, "get=1", 300), false).await.unwrap();
    check_counts(&result, 300);
    assert_eq!((result.hits, result.misses), (0, 300));

    let mut loaded = config(&target, "get=70,set=10,mget=10,mset=5,incr=5", 400);
    loaded.load = true;
    loaded.load_batch = 32;
    loaded.workload.ttl_ms = Some(600_000);
    let result = run(&loaded, false).await.unwrap();
    check_counts(&result, 400);
    assert_eq!(result.load.as_ref().unwrap().keys, 200);
    assert_eq!(result.misses, 0, "{}", result.table());
    assert_eq!(result.target_kind, "redis");

    let mut open = config(&target, "get=1", 200);
    open.rate = Some(2000.0);
    check_counts(&run(&open, false).await.unwrap(), 200);
    server.stop();
}

/// The `redis://` target (the `redis` crate) aimed at a ringcache node's RESP port.
#[tokio::test]
async fn ringcache_resp_port_as_a_redis_target() {
    let node = TestNode::start_default().await;
    let target = format!("redis://{}", node.resp_addr);

    let result = run(&config(&target, "get=1", 300), false).await.unwrap();
    check_counts(&result, 300);
    assert_eq!((result.hits, result.misses), (0, 300));

    // Every operation the harness has, TTLs included (MSET with a TTL is pipelined SET PX).
    let mut loaded = config(&target, "get=60,set=10,mget=10,mset=10,incr=5,del=5", 400);
    loaded.load = true;
    loaded.load_batch = 32;
    loaded.workload.ttl_ms = Some(600_000);
    let result = run(&loaded, false).await.unwrap();
    check_counts(&result, 400);
    assert_eq!(result.load.as_ref().unwrap().keys, 200);
    assert_eq!(result.target_kind, "redis");
    // Deletes during the run make later reads of their keys miss; the rest hit.
    assert!(result.hits > 0, "{}", result.table());
    assert!(node.node.store().stats().keys > 0);

    let mut open = config(&target, "get=90,set=10", 200);
    open.rate = Some(2000.0);
    check_counts(&run(&open, false).await.unwrap(), 200);
    node.stop().await.unwrap();
}

/// `redis+cluster://` (the `redis` crate's cluster client: CLUSTER SLOTS, a connection per node,
/// MGET/MSET split by slot) against a 3-node ringcache cluster's RESP ports; and a plain
/// `redis://` connection to one node of it, which the node forwards.
#[tokio::test]
async fn ringcache_cluster_through_the_redis_cluster_client() {
    let cluster = TestCluster::start_converged(3, DEADLINE, |_, _| {}).await;
    let seeds: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.resp_addr.to_string())
        .collect();
    let target = format!("redis+cluster://{}", seeds[..2].join(","));

    let mut loaded = config(&target, "get=60,set=10,mget=15,mset=10,incr=5", 400);
    loaded.load = true;
    loaded.load_batch = 32;
    let result = run(&loaded, false).await.unwrap();
    check_counts(&result, 400);
    assert_eq!(result.target_kind, "redis-cluster");
    assert_eq!(result.load.as_ref().unwrap().keys, 200);
    assert_eq!(result.misses, 0, "{}", result.table());

    // MSET with a TTL: SET PX per key, across slots and nodes.
    let mut ttl = config(&target, "mset=50,mget=50", 200);
    ttl.workload.ttl_ms = Some(600_000);
    check_counts(&run(&ttl, false).await.unwrap(), 200);

    // A plain connection to the third node (never a seed above): it forwards what it is not
    // primary for, and every key the cluster client loaded is there.
    let mut standalone = config(&format!("redis://{}", seeds[2]), "get=80,mget=20", 300);
    standalone.connections = 2;
    let result = run(&standalone, false).await.unwrap();
    check_counts(&result, 300);
    assert_eq!(result.misses, 0, "{}", result.table());
}

/// The binary's code path end to end: run with --json and --plot, then compare the file with
/// itself. `cli::main` builds its own runtime, so the node runs on another one.
#[test]
fn command_line_run_json_plot_and_compare() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node = runtime.block_on(TestNode::start_default());
    let scratch = ScratchDir::new("cli").unwrap();
    let json = scratch.path().join("a.json");
    let svg = scratch.path().join("a.svg");
    let args = [
        "ringbench".to_owned(),
        format!("ringcache://{}", node.grpc_target()),
        "--preset".into(),
        "multi-key".into(),
        "--keys".into(),
        "500".into(),
        "--load".into(),
        "-n".into(),
        "150".into(),
        "-c".into(),
        "2".into(),
        "--no-progress".into(),
        "--json".into(),
        json.display().to_string(),
        "--plot".into(),
        svg.display().to_string(),
        // The node runs in this process: its CPU time is this process's.
        "--server-pid".into(),
        std::process::id().to_string(),
    ];
    assert_eq!(
        ringcache_bench::bench::cli::main(args.map(OsString::from)),
        0
    );
    let result = RunResult::read_json(&json).unwrap();
    check_counts(&result, 150);
    assert_eq!(result.config.workload.mix.to_string(), "mget=90,mset=10");
    assert_eq!(result.misses, 0);
    let cpu = result
        .server_cpu
        .as_ref()
        .expect("--server-pid reports the server's CPU time");
    assert_eq!(cpu.pids, vec![std::process::id()]);
    assert!(cpu.window_s > 0.0 && cpu.cpu_s >= 0.0, "{cpu:?}");
    // mget/mset carry several keys per request.
    assert!(cpu.us_per_key <= cpu.us_per_request, "{cpu:?}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("<polyline"));
    let compare = [
        "ringbench".to_owned(),
        "compare".into(),
        json.display().to_string(),
        json.display().to_string(),
    ];
    assert_eq!(
        ringcache_bench::bench::cli::main(compare.map(OsString::from)),
        0
    );
    // A process that cannot be measured is a usage error before anything runs.
    let gone = [
        "ringbench".to_owned(),
        format!("ringcache://{}", node.grpc_target()),
        "-n".into(),
        "10".into(),
        "--no-progress".into(),
        "--server-pid".into(),
        u32::MAX.to_string(),
    ];
    assert_eq!(
        ringcache_bench::bench::cli::main(gone.map(OsString::from)),
        2
    );
    runtime.block_on(node.stop()).unwrap();
}
