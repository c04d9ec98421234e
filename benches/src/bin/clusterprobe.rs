//! Measures the cluster layer with in-process nodes on loopback and the server's default
//! failure-detection settings (500 ms probes, 200 ms probe timeout, suspicion 1 s confirmed to
//! 6 s unconfirmed):
//!
//! - `clusterprobe converge N TRIALS`: time from starting N nodes (each seeded with the first)
//!   until every node's ring holds all N and they agree on the digest.
//! - `clusterprobe detect N TRIALS`: on a converged N-node cluster, time from crashing one node
//!   (no graceful leave) until every survivor's ring has dropped it.
//! - `clusterprobe kill N TRIALS`: the same with real `ringcached` processes (the release binary
//!   beside this one, default settings, on 127.0.0.201..) and SIGKILL: time from the kill until
//!   every survivor's `ringcache_ring_members` gauge says N − 1.
//! - `clusterprobe loss N SECONDS PERCENT`: N real processes with the default settings for
//!   SECONDS while nftables drops PERCENT % of the gossip datagrams they receive (at random; needs
//!   root and `nft`): how many times a member was declared dead (every live node's
//!   `ringcache_members{state="dead"}` sampled every 100 ms; each rise is one death).
//! - `clusterprobe starve N SECONDS`: the same without loss, the last node starved of CPU: it is
//!   SIGSTOPped for 50 ms to 1.2 s, then runs for 20-200 ms, and so on (the simulation's model).
//! - `clusterprobe traffic N SECONDS`: gossip bytes and packets sent per node per second in a
//!   steady N-node cluster.
//!
//! - `clusterprobe rebalance KEYS VALUE_BYTES`: 3 nodes (R = 1) loaded with KEYS values of
//!   VALUE_BYTES, then a 4th joins: time until every key sits on exactly one node again, and the
//!   MB/s and keys/s moved.
//!
//! - `clusterprobe writes REQUESTS CONCURRENCY`: a 3-node cluster (R = 3) and one client doing
//!   REQUESTS sets of 100-byte values over 100,000 keys with CONCURRENCY in flight, at ONE, QUORUM
//!   and ALL in turn: throughput and p50/p99/p99.9 latency.
//!
//! - `clusterprobe repair KEYS VALUE_BYTES`: 4 nodes (R = 2) loaded, then one crashes: time from
//!   the crash until every key has two copies again (failure detection included).
//!
//! - `clusterprobe entropy KEYS PERCENT`: 3 nodes (R = 3, anti-entropy rounds started by hand)
//!   each holding the same KEYS keys of 100 bytes, then PERCENT % of them newer on n1 only: the
//!   wall and process CPU time of one anti-entropy round n1 ↔ n2 that repairs them (summaries,
//!   ReadVersions and Replicate over loopback gRPC), and of a round with nothing to repair.
//!
//! Prints each trial and the median. Build in release:
//! `cargo run --release -p ringcache-bench --features probes --bin clusterprobe -- detect 3 10`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringcache_server::Config;
use ringcache_tests::TestCluster;

const DEADLINE: Duration = Duration::from_secs(60);

/// The server's default failure detection (the tests' base config is ten times faster).
fn production_timings(_: usize, config: &mut Config) {
    let defaults = Config::load(ringcache_server::config::Cli::default())
        .expect("the default config is valid");
    config.probe_interval = defaults.probe_interval;
    config.probe_timeout = defaults.probe_timeout;
    config.suspicion_timeout = defaults.suspicion_timeout;
    config.suspicion_max_timeout = defaults.suspicion_max_timeout;
    config.local_health_max = defaults.local_health_max;
    config.ready_settle = defaults.ready_settle;
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

async fn converge(nodes: usize, trials: usize) -> anyhow::Result<()> {
    let mut times = Vec::new();
    for trial in 1..=trials {
        let start = Instant::now();
        let cluster = TestCluster::start_with(nodes, production_timings).await;
        cluster.wait_converged(DEADLINE).await?;
        let took = start.elapsed().as_secs_f64();
        println!("trial {trial}: {nodes} nodes converged in {took:.3} s");
        times.push(took);
        for node in cluster.nodes {
            node.stop().await?;
        }
    }
    println!(
        "median convergence, {nodes} nodes, {trials} trials: {:.3} s",
        median(times)
    );
    Ok(())
}

async fn detect(nodes: usize, trials: usize) -> anyhow::Result<()> {
    if nodes < 2 {
        bail!("detect needs at least 2 nodes");
    }
    let mut times = Vec::new();
    for trial in 1..=trials {
        let mut cluster = TestCluster::start_with(nodes, production_timings).await;
        cluster.wait_converged(DEADLINE).await?;
        let victim = format!("n{nodes}");
        let start = Instant::now();
        cluster.take(&victim).crash().await?;
        cluster.wait_converged(DEADLINE).await?;
        let took = start.elapsed().as_secs_f64();
        println!("trial {trial}: {victim} dropped from every ring in {took:.3} s");
        times.push(took);
        for node in cluster.nodes {
            node.stop().await?;
        }
    }
    println!(
        "median detection, {nodes} nodes, {trials} trials: {:.3} s",
        median(times)
    );
    Ok(())
}

async fn traffic(nodes: usize, seconds: u64) -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(nodes, production_timings).await;
    cluster.wait_converged(DEADLINE).await?;
    // Let join traffic settle before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let snapshot = |c: &TestCluster| -> anyhow::Result<Vec<(u64, u64)>> {
        c.nodes
            .iter()
            .map(|n| {
                let s = n.node.gossip_stats().context("gossip not running")?;
                Ok((s.bytes_sent, s.packets_sent))
            })
            .collect()
    };
    let before = snapshot(&cluster)?;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = snapshot(&cluster)?;
    let elapsed = start.elapsed().as_secs_f64();
    let mut bytes = Vec::new();
    let mut packets = Vec::new();
    for ((b0, p0), (b1, p1)) in before.iter().zip(&after) {
        bytes.push((b1 - b0) as f64 / elapsed);
        packets.push((p1 - p0) as f64 / elapsed);
    }
    println!(
        "{nodes} nodes over {elapsed:.1} s: gossip sent per node per second: median {:.0} B ({:.1} packets), max {:.0} B",
        median(bytes.clone()),
        median(packets),
        bytes.iter().copied().fold(0.0, f64::max)
    );
    for node in cluster.nodes {
        node.stop().await?;
    }
    Ok(())
}

async fn rebalance(keys: u64, value_bytes: usize) -> anyhow::Result<()> {
    let one_copy = |i: usize, config: &mut Config| {
        production_timings(i, config);
        config.replication_factor = std::num::NonZeroU32::MIN;
        config.rebalance_bytes_per_sec = 0;
        config.store.max_memory_bytes = 8 << 30;
    };
    let mut cluster = TestCluster::start_with(3, one_copy).await;
    cluster.wait_converged(DEADLINE).await?;
    let client = ringcache::Client::connect(cluster.grpc_targets()).await?;
    let value = bytes::Bytes::from(vec![b'x'; value_bytes]);
    let load_start = Instant::now();
    let mut next = 0;
    while next < keys {
        let end = (next + 500).min(keys);
        client
            .mset(
                (next..end).map(|i| (ringcache_bench::bench_key(i), value.clone())),
                None,
            )
            .await?;
        next = end;
    }
    println!(
        "loaded {keys} keys of {value_bytes} B in {:.1} s",
        load_start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    cluster.add(4, one_copy).await;
    cluster.wait_converged(Duration::from_secs(600)).await?;
    let give_up = Instant::now() + Duration::from_secs(600);
    loop {
        let total: u64 = cluster
            .nodes
            .iter()
            .map(|n| n.node.store().stats().keys)
            .sum();
        let idle = cluster
            .nodes
            .iter()
            .all(|n| n.node.rebalance().to_wire().phase == "idle");
        if total == keys && idle {
            break;
        }
        if Instant::now() > give_up {
            bail!("rebalancing did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed().as_secs_f64();
    let moved = cluster.node("n4").node.store().stats().keys;
    let moved_bytes = moved as f64 * (14 + value_bytes) as f64;
    println!(
        "4th node joined and got {moved} keys ({:.1} MB) in {took:.2} s: {:.1} MB/s, {:.0} keys/s",
        moved_bytes / 1e6,
        moved_bytes / 1e6 / took,
        moved as f64 / took
    );
    for node in cluster.nodes {
        node.stop().await?;
    }
    Ok(())
}

async fn writes(requests: u64, concurrency: u64) -> anyhow::Result<()> {
    use ringcache::Consistency;
    let cluster = TestCluster::start_with(3, production_timings).await;
    cluster.wait_converged(DEADLINE).await?;
    let client = ringcache::Client::connect(cluster.grpc_targets()).await?;
    let value = bytes::Bytes::from(vec![b'v'; 100]);
    for (name, level) in [
        ("ONE", Consistency::One),
        ("QUORUM", Consistency::Quorum),
        ("ALL", Consistency::All),
    ] {
        let writer = client.with_consistency(level);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..concurrency {
            let writer = writer.clone();
            let value = value.clone();
            let per_task = requests / concurrency;
            tasks.spawn(async move {
                // 1 µs .. 60 s, 3 significant digits.
                let mut histogram =
                    hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                        .expect("valid bounds");
                let mut keys = ringcache_bench::IndexSequence::new(t + 1, 100_000);
                let mut errors = 0u64;
                for _ in 0..per_task {
                    let key = ringcache_bench::bench_key(keys.next().unwrap_or_default());
                    let sent = Instant::now();
                    match writer.set(key, value.clone()).await {
                        Ok(_) => {
                            histogram.saturating_record((sent.elapsed().as_micros() as u64).max(1))
                        }
                        Err(_) => errors += 1,
                    }
                }
                (histogram, errors)
            });
        }
        let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut errors = 0;
        while let Some(joined) = tasks.join_next().await {
            let (histogram, failed) = joined?;
            all.add(histogram)?;
            errors += failed;
        }
        let elapsed = start.elapsed().as_secs_f64();
        println!(
            "{name:>6}: {:.0} writes/s, mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, errors {errors}",
            all.len() as f64 / elapsed,
            all.mean() / 1000.0,
            all.value_at_quantile(0.50) as f64 / 1000.0,
            all.value_at_quantile(0.99) as f64 / 1000.0,
            all.value_at_quantile(0.999) as f64 / 1000.0,
        );
    }
    for node in cluster.nodes {
        node.stop().await?;
    }
    Ok(())
}

async fn repair(keys: u64, value_bytes: usize) -> anyhow::Result<()> {
    let two_copies = |i: usize, config: &mut Config| {
        production_timings(i, config);
        config.replication_factor = std::num::NonZeroU32::new(2).expect("not zero");
        config.rebalance_bytes_per_sec = 0;
        config.store.max_memory_bytes = 8 << 30;
    };
    let mut cluster = TestCluster::start_with(4, two_copies).await;
    cluster.wait_converged(DEADLINE).await?;
    let client = ringcache::Client::connect(cluster.grpc_targets()).await?;
    let value = bytes::Bytes::from(vec![b'x'; value_bytes]);
    let mut next = 0;
    while next < keys {
        let end = (next + 500).min(keys);
        client
            .mset(
                (next..end).map(|i| (ringcache_bench::bench_key(i), value.clone())),
                None,
            )
            .await?;
        next = end;
    }
    let copies =
        |c: &TestCluster| -> u64 { c.nodes.iter().map(|n| n.node.store().stats().keys).sum() };
    let give_up = Instant::now() + Duration::from_secs(600);
    while copies(&cluster) != 2 * keys {
        if Instant::now() > give_up {
            bail!("the load never reached two copies per key");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost = cluster.node("n4").node.store().stats().keys;
    let start = Instant::now();
    cluster.take("n4").crash().await?;
    cluster.wait_converged(Duration::from_secs(600)).await?;
    let detected = start.elapsed().as_secs_f64();
    while copies(&cluster) != 2 * keys
        || !cluster
            .nodes
            .iter()
            .all(|n| n.node.rebalance().to_wire().phase == "idle")
    {
        if Instant::now() > give_up {
            bail!("copies were not restored in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "crash of a node holding {lost} copies: detected in {detected:.2} s, two copies of all {keys} keys again after {took:.2} s (copying took {:.2} s)",
        took - detected
    );
    for node in cluster.nodes {
        node.stop().await?;
    }
    Ok(())
}

/// CPU time (user + system) of this process so far.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of /proc/[pid]/stat (11 and 12 after the name);
    // the kernel's USER_HZ is 100 on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

async fn entropy(keys: u64, percent: u64) -> anyhow::Result<()> {
    let by_hand = |i: usize, config: &mut Config| {
        production_timings(i, config);
        config.anti_entropy_interval = Duration::ZERO;
        config.store.max_memory_bytes = 8 << 30;
    };
    let cluster = TestCluster::start_with(3, by_hand).await;
    cluster.wait_converged(DEADLINE).await?;
    let now = cluster.nodes[0].node.now_ms();
    let base = ringcache_server::store::Hlc::at_millis(now - 60_000);
    let value = [b'x'; 100];
    for node in &cluster.nodes {
        for i in 0..keys {
            node.node.store().apply(
                ringcache_bench::bench_key(i).as_bytes(),
                Some(&value),
                base + i,
                None,
                now,
            )?;
        }
    }
    let every = (100 / percent.clamp(1, 100)).max(1);
    let diverged = (0..keys).step_by(every as usize).count();
    let n1 = &cluster.node("n1").node;
    for i in (0..keys).step_by(every as usize) {
        n1.store().apply(
            ringcache_bench::bench_key(i).as_bytes(),
            Some(b"newer"),
            base + keys + i,
            None,
            now,
        )?;
    }
    for (label, expect) in [("repair", diverged as u64), ("at rest", 0)] {
        let (cpu, wall) = (process_cpu(), Instant::now());
        // Round robin: n1's first round is with n2.
        ringcache_server::antientropy::round(n1.context()).await;
        let (wall, cpu) = (wall.elapsed(), process_cpu() - cpu);
        let last = n1.anti_entropy().last().context("a round ran")?;
        println!(
            "{label}: {keys} keys, {} buckets differed, {} pulled, {} pushed in {:.2} s wall, {:.2} s CPU (both nodes, this process)",
            last.differing,
            last.pulled,
            last.pushed,
            wall.as_secs_f64(),
            cpu.as_secs_f64()
        );
        if let Some(error) = last.error {
            bail!("the round failed: {error}");
        }
        if last.pushed != expect {
            bail!("expected {expect} keys pushed, got {}", last.pushed);
        }
        // The next round of n1 is with n3; go back to n2 for the at-rest round.
        ringcache_server::antientropy::round(n1.context()).await;
    }
    Ok(())
}

/// The `ringcache_ring_members` gauge of the node whose HTTP port is at `ip`:7381.
async fn ring_members(ip: &str) -> Option<u64> {
    let addr = format!("{ip}:7381").parse().ok()?;
    let response = ringcache_tests::http_get(addr, "/metrics").await.ok()?;
    response
        .body
        .lines()
        .find_map(|line| line.strip_prefix("ringcache_ring_members "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

/// The `ringcache_members{state="dead"}` gauge of the node at `ip`, if it answers within 300 ms.
async fn dead_members(ip: &str) -> Option<u64> {
    let addr = format!("{ip}:7381").parse().ok()?;
    let response = tokio::time::timeout(
        Duration::from_millis(300),
        ringcache_tests::http_get(addr, "/metrics"),
    )
    .await
    .ok()?
    .ok()?;
    response
        .body
        .lines()
        .find_map(|line| line.strip_prefix("ringcache_members{state=\"dead\"} "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

/// Runs `nft -f -` with `script`.
fn nft(script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("run nft (install nftables; needs root)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("nft failed ({status}) on:\n{script}");
    }
    Ok(())
}

/// The nftables table of `loss`, deleted when dropped.
struct LossTable;

impl Drop for LossTable {
    fn drop(&mut self) {
        if let Err(error) = nft("delete table inet ringcache_probe_loss\n") {
            eprintln!("could not delete the nft table ringcache_probe_loss: {error}");
        }
    }
}

/// Real processes under gossip loss (`percent` > 0, needs root) or with the last one starved of
/// CPU: counts members declared dead over `seconds`.
async fn chaos(nodes: usize, seconds: u64, percent: u64, starve: bool) -> anyhow::Result<()> {
    if !(2..=50).contains(&nodes) || percent > 100 {
        bail!("2 to 50 nodes, loss 0 to 100 %");
    }
    let cluster = Processes::start(nodes)?;
    cluster.wait_rings(nodes as u64, 1..=nodes).await?;
    let _table = if percent > 0 {
        // `numgen random mod 100 < 100` is refused: all of them is a plain drop.
        let sample = if percent == 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {percent} ")
        };
        nft(&format!(
            "table inet ringcache_probe_loss {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    ip daddr {}-{} udp dport 7380 {sample}counter drop\n  }}\n}}\n",
            Processes::ip(1),
            Processes::ip(nodes)
        ))?;
        Some(LossTable)
    } else {
        None
    };
    let watched = if starve { nodes - 1 } else { nodes };
    let victim = cluster.children.last().map(std::process::Child::id);
    let start = Instant::now();
    let mut last = vec![0_u64; watched];
    let mut deaths = 0;
    let mut stalled_until: Option<Instant> = None;
    let mut running_until = Instant::now();
    let mut seed = u64::from(std::process::id());
    let mut random = |low: u64, high: u64| {
        // xorshift: a benchmark's jitter, not security.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        low + seed % (high - low + 1)
    };
    while start.elapsed() < Duration::from_secs(seconds) {
        if let (true, Some(pid)) = (starve, victim) {
            let now = Instant::now();
            match stalled_until {
                Some(until) if now >= until => {
                    signal(pid, "-CONT")?;
                    stalled_until = None;
                    running_until = now + Duration::from_millis(random(20, 200));
                }
                None if now >= running_until => {
                    signal(pid, "-STOP")?;
                    stalled_until = Some(now + Duration::from_millis(random(50, 1200)));
                }
                _ => {}
            }
        }
        for (i, seen) in last.iter_mut().enumerate() {
            if let Some(dead) = dead_members(&Processes::ip(i + 1)).await {
                if dead > *seen {
                    deaths += dead - *seen;
                    println!(
                        "{:.1} s: p{} sees {dead} dead member(s)",
                        start.elapsed().as_secs_f64(),
                        i + 1
                    );
                }
                *seen = dead;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let (true, Some(pid)) = (starve, victim) {
        signal(pid, "-CONT")?;
    }
    println!(
        "{nodes} processes, {seconds} s, {percent} % gossip loss{}: {deaths} members declared dead",
        if starve { ", last node starved" } else { "" }
    );
    Ok(())
}

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill {signal} {pid} failed");
    }
    Ok(())
}

/// `ringcached` processes with the default settings on 127.0.0.201.., p2.. seeded with p1;
/// killed when dropped.
struct Processes {
    children: Vec<std::process::Child>,
}

impl Processes {
    fn ip(i: usize) -> String {
        format!("127.0.0.{}", 200 + i)
    }

    fn start(nodes: usize) -> anyhow::Result<Self> {
        use std::process::{Command, Stdio};
        let bin = std::env::current_exe()?.with_file_name("ringcached");
        if !bin.exists() {
            bail!(
                "{} not found: cargo build --release -p ringcache-server --bin ringcached",
                bin.display()
            );
        }
        let mut processes = Self {
            children: Vec::new(),
        };
        for i in 1..=nodes {
            let mut command = Command::new(&bin);
            command
                .args(["--bind", &Self::ip(i), "--node-id", &format!("p{i}")])
                .args(["--max-memory", "64MiB"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if i > 1 {
                command.args(["--seeds", &format!("{}:7380", Self::ip(1))]);
            }
            processes
                .children
                .push(command.spawn().context("spawn ringcached")?);
        }
        Ok(processes)
    }

    /// Waits until the rings of nodes `which` all hold `expected` members; how long it took.
    async fn wait_rings(
        &self,
        expected: u64,
        which: std::ops::RangeInclusive<usize>,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let mut all = true;
            for i in which.clone() {
                all &= ring_members(&Self::ip(i)).await == Some(expected);
            }
            if all {
                return Ok(start.elapsed());
            }
            if start.elapsed() > DEADLINE {
                bail!("rings did not reach {expected} members within {DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = signal(child.id(), "-CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Real processes: start `nodes` `ringcached`s with the default settings, SIGKILL the last one,
/// time until every survivor's ring has dropped it.
async fn kill(nodes: usize, trials: usize) -> anyhow::Result<()> {
    if !(2..=50).contains(&nodes) {
        bail!("kill needs 2 to 50 nodes");
    }
    let mut times = Vec::new();
    for trial in 1..=trials {
        let mut cluster = Processes::start(nodes)?;
        cluster.wait_rings(nodes as u64, 1..=nodes).await?;
        // Let the probe cycles run a while, as in a cluster that has been up.
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster
            .children
            .last_mut()
            .expect("at least 2 nodes")
            .kill()
            .context("SIGKILL")?;
        let took = cluster
            .wait_rings(nodes as u64 - 1, 1..=nodes - 1)
            .await?
            .as_secs_f64();
        println!("trial {trial}: p{nodes} (SIGKILL) dropped from every ring in {took:.3} s");
        times.push(took);
    }
    println!(
        "median failover, {nodes} processes, {trials} trials: {:.3} s (min {:.3}, max {:.3})",
        median(times.clone()),
        times.iter().copied().fold(f64::INFINITY, f64::min),
        times.iter().copied().fold(0.0, f64::max)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| -> anyhow::Result<u64> {
        args.get(i).map_or(Ok(default), |a| {
            a.parse().with_context(|| format!("{a:?} is not a number"))
        })
    };
    if number(2, 1)? == 0 {
        bail!("the number of trials (or seconds) must be at least 1");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("converge") => {
            runtime.block_on(converge(number(1, 3)? as usize, number(2, 5)? as usize))
        }
        Some("detect") => runtime.block_on(detect(number(1, 3)? as usize, number(2, 10)? as usize)),
        Some("kill") => runtime.block_on(kill(number(1, 5)? as usize, number(2, 7)? as usize)),
        Some("loss") => runtime.block_on(chaos(
            number(1, 5)? as usize,
            number(2, 600)?,
            number(3, 10)?,
            false,
        )),
        Some("starve") => runtime.block_on(chaos(number(1, 5)? as usize, number(2, 600)?, 0, true)),
        Some("traffic") => runtime.block_on(traffic(number(1, 10)? as usize, number(2, 30)?)),
        Some("writes") => runtime.block_on(writes(number(1, 100_000)?, number(2, 50)?.max(1))),
        Some("repair") => runtime.block_on(repair(number(1, 100_000)?, number(2, 1000)? as usize)),
        Some("entropy") => runtime.block_on(entropy(number(1, 1_000_000)?, number(2, 1)?)),
        Some("rebalance") => {
            runtime.block_on(rebalance(number(1, 100_000)?, number(2, 1000)? as usize))
        }
        _ => bail!(
            "usage: clusterprobe converge|detect|kill|traffic [NODES] [TRIALS|SECONDS] | loss [NODES] [SECONDS] [PERCENT] | starve [NODES] [SECONDS] | rebalance [KEYS] [VALUE_BYTES] | writes [REQUESTS] [CONCURRENCY] | repair [KEYS] [VALUE_BYTES] | entropy [KEYS] [PERCENT]"
        ),
    }
}
