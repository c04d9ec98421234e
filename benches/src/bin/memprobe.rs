//! Measures the resident memory per key of the store: loads N keys (`key:%010d`, 14 B) with V-byte
//! values into a `Store` with the system allocator (as `ringcached` uses) and reads RSS from /proc
//! before and after. Usage: `memprobe [N=1000000] [V=100]`; build it in release:
//! `cargo run --release -p ringcache-bench --bin memprobe`.

use anyhow::Context;
use ringcache_bench::measure_memory;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map_or(Ok(1_000_000), |a| a.parse())
        .context("N must be a number")?;
    let value_len: usize = args
        .next()
        .map_or(Ok(100), |a| a.parse())
        .context("V must be a number")?;
    let report = measure_memory(n, value_len)?;
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
