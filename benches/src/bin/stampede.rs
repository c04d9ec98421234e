//! Computations per expiring hot key: a 3-node in-process cluster (loopback, R = 3), one hot
//! key expired ROUNDS times (deleted: every copy gone, as at its expiry), and in each round
//! CALLERS concurrent callers spread over 10 clients asking for it:
//!
//! - `plain`: get → on a miss compute (COMPUTE_MS) → set with a TTL, what a cache-aside client
//!   does today;
//! - `leases`: `Client::get_or_compute` (GetOrLease on the key's primary).
//!
//! Prints the computations of each round and their mean per mode. Build in release:
//! `cargo run --release -p ringcache-bench --features probes --bin stampede -- 10 1000 50`
//! (ROUNDS CALLERS COMPUTE_MS; defaults 10 1000 50).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ringcache::{Client, LeaseOptions};
use ringcache_tests::{TestCluster, patient};
use tokio::task::JoinSet;

const KEY: &str = "hot:report";
const TTL: Duration = Duration::from_secs(300);
const CLIENTS: usize = 10;

async fn compute(counter: Arc<AtomicUsize>, compute_ms: u64) -> Result<&'static str, String> {
    counter.fetch_add(1, Ordering::SeqCst);
    // The simulated cost of the computation (the benchmark's workload, not synchronisation).
    tokio::time::sleep(Duration::from_millis(compute_ms)).await;
    Ok("computed value")
}

async fn round(
    clients: &[Client],
    callers: usize,
    compute_ms: u64,
    leases: bool,
) -> anyhow::Result<usize> {
    clients[0].delete(KEY).await.context("expire the key")?;
    let counter = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for i in 0..callers {
        let client = clients[i % clients.len()].clone();
        let counter = counter.clone();
        tasks.spawn(async move {
            if leases {
                client
                    .get_or_compute_with(
                        KEY,
                        TTL,
                        LeaseOptions::new().lease_ttl(Duration::from_secs(10)),
                        move || compute(counter, compute_ms),
                    )
                    .await
                    .map(drop)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            } else {
                if client.get(KEY).await?.is_none() {
                    let value = compute(counter, compute_ms)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    client.set_ex(KEY, value, TTL).await?;
                }
                Ok(())
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(counter.load(Ordering::SeqCst))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> anyhow::Result<u64> {
        args.get(i).map_or(Ok(default), |a| {
            a.parse().with_context(|| format!("bad number {a}"))
        })
    };
    let rounds = arg(0, 10)?.max(1);
    let callers = usize::try_from(arg(1, 1000)?)?.max(1);
    let compute_ms = arg(2, 50)?;

    let cluster = TestCluster::start_converged(3, Duration::from_secs(60), |i, config| {
        patient(i, config);
        config.leases.max_waiters = callers.max(10_000);
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Client::connect(cluster.grpc_targets()).await?);
    }
    println!(
        "3 nodes, {CLIENTS} clients, {callers} callers per expiry, {compute_ms} ms per computation"
    );
    for (mode, leases) in [("plain get-miss-set", false), ("get_or_compute", true)] {
        let mut total = 0;
        let started = Instant::now();
        for r in 1..=rounds {
            let n = round(&clients, callers, compute_ms, leases).await?;
            println!("{mode}: round {r}: {n} computations");
            total += n;
        }
        println!(
            "{mode}: {:.1} computations per expiry (mean of {rounds}), {:.2} s",
            total as f64 / rounds as f64,
            started.elapsed().as_secs_f64()
        );
    }
    for node in cluster.nodes {
        node.stop().await?;
    }
    Ok(())
}
