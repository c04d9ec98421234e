//! Measures resident memory per key: loads N keys (`key:%010d`, 14 B) with V-byte values and reads
//! RSS from /proc before and after. Build it in release.
//!
//! - `memprobe [N=1000000] [V=100]`: into a `Store` in this process (system allocator, as
//!   `ringcached` uses).
//! - `memprobe --server HOST:PORT --pid PID [N] [V]`: into a running `ringcached` through the
//!   client (MSet batches of 500), reading the node's RSS from /proc/PID.

use anyhow::{Context, bail};
use ringcache_bench::{MemoryReport, bench_key, measure_memory, rss_of, take_flag};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let server = take_flag(&mut args, "--server")?;
    let pid = take_flag(&mut args, "--pid")?;
    let mut args = args.into_iter();
    let n: u64 = args
        .next()
        .map_or(Ok(1_000_000), |a| a.parse())
        .context("N must be a number")?;
    let value_len: usize = args
        .next()
        .map_or(Ok(100), |a| a.parse())
        .context("V must be a number")?;
    let report = match (server, pid) {
        (None, None) => measure_memory(n, value_len)?,
        (Some(server), Some(pid)) => {
            let pid: u32 = pid.parse().context("--pid must be a process id")?;
            tokio::runtime::Runtime::new()?.block_on(measure_server(&server, pid, n, value_len))?
        }
        _ => bail!("--server and --pid go together"),
    };
    let per_key = report.rss_per_key();
    println!("keys                 {}", report.keys);
    println!(
        "rss before           {:.1} MiB",
        report.rss_before as f64 / 1048576.0
    );
    println!(
        "rss after            {:.1} MiB",
        report.rss_after as f64 / 1048576.0
    );
    println!("rss per key          {per_key:.1} B");
    println!(
        "overhead per key     {:.1} B (beyond {} B of key + value)",
        per_key - report.payload_per_key as f64,
        report.payload_per_key
    );
    println!(
        "accounted per key    {:.1} B (max_memory charge)",
        report.accounted_bytes as f64 / report.keys as f64
    );
    Ok(())
}

async fn measure_server(
    server: &str,
    pid: u32,
    n: u64,
    value_len: usize,
) -> anyhow::Result<MemoryReport> {
    const BATCH: u64 = 500;
    let client = ringcache::Client::connect([server]).await?;
    let value = bytes::Bytes::from(vec![b'x'; value_len]);
    let rss_before = rss_of(pid)?;
    let mut start = 0;
    while start < n {
        let end = (start + BATCH).min(n);
        let batch: Vec<(String, bytes::Bytes)> = (start..end)
            .map(|i| (bench_key(i), value.clone()))
            .collect();
        client.mset(batch, None).await.context("mset failed")?;
        start = end;
    }
    let rss_after = rss_of(pid)?;
    Ok(MemoryReport {
        keys: n,
        payload_per_key: 14 + value_len,
        rss_before,
        rss_after,
        accounted_bytes: n * ringcache_server::store::charge(14, value_len) as u64,
    })
}
