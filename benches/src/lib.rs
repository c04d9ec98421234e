//! Benchmarks and measurement probes for ringcache: the load harness `ringbench` ([`bench`](mod@bench)),
//! the criterion micro-benchmarks (`cargo bench -p ringcache-bench`), `memprobe`, which measures
//! memory per key, and `clusterprobe`, which measures the cluster layer.

pub mod bench;
pub mod resp_inputs;

use anyhow::{Context, bail};
use ringcache_server::store::{SetOptions, Store, StoreConfig};

/// The key `memprobe` and the store benchmarks use for index `i`: `key:%010d` (14 bytes).
pub fn bench_key(i: u64) -> String {
    format!("key:{i:010}")
}

/// Removes `flag` and the value after it from a probe's arguments: the value, `None` without the
/// flag, an error when the flag has no value.
pub fn take_flag(args: &mut Vec<String>, flag: &str) -> anyhow::Result<Option<String>> {
    let Some(at) = args.iter().position(|a| a == flag) else {
        return Ok(None);
    };
    if at + 1 >= args.len() {
        bail!("{flag} needs a value");
    }
    let value = args.remove(at + 1);
    args.remove(at);
    Ok(Some(value))
}

/// What [`measure_memory`] found.
#[derive(Debug, Clone, Copy)]
pub struct MemoryReport {
    /// Keys stored.
    pub keys: u64,
    /// Bytes of key + value per key.
    pub payload_per_key: usize,
    /// Resident set size before loading.
    pub rss_before: u64,
    /// Resident set size after loading.
    pub rss_after: u64,
    /// Bytes the store charged against `max_memory`.
    pub accounted_bytes: u64,
}

impl MemoryReport {
    /// Resident bytes added per key.
    pub fn rss_per_key(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.keys as f64
    }
}

/// This process's resident set size, from `/proc/self/status`.
pub fn rss_bytes() -> anyhow::Result<u64> {
    rss_from("/proc/self/status")
}

/// Another process's resident set size, from `/proc/PID/status`.
pub fn rss_of(pid: u32) -> anyhow::Result<u64> {
    rss_from(&format!("/proc/{pid}/status"))
}

fn rss_from(path: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .with_context(|| format!("no VmRSS line in {path}"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS line")?
        .parse()
        .context("malformed VmRSS value")?;
    Ok(kib * 1024)
}

/// Loads `n` keys ([`bench_key`], 14 B) with `value_len`-byte values into a fresh store and
/// measures the resident memory they add.
pub fn measure_memory(n: u64, value_len: usize) -> anyhow::Result<MemoryReport> {
    if n == 0 {
        bail!("the number of keys must be at least 1");
    }
    let store = Store::new(StoreConfig {
        max_memory_bytes: usize::MAX / 2,
        ..StoreConfig::default()
    });
    let value = vec![b'x'; value_len];
    let rss_before = rss_bytes()?;
    for i in 0..n {
        store
            .set(
                bench_key(i).as_bytes(),
                &value,
                SetOptions::default(),
                1_700_000_000_000,
            )
            .context("set failed")?;
    }
    let rss_after = rss_bytes()?;
    let stats = store.stats();
    Ok(MemoryReport {
        keys: stats.keys,
        payload_per_key: 14 + value_len,
        rss_before,
        rss_after,
        accounted_bytes: stats.used_bytes,
    })
}

/// A cheap deterministic sequence of indexes in `0..n` (an LCG), so runs are repeatable.
#[derive(Debug, Clone)]
pub struct IndexSequence {
    state: u64,
    n: u64,
}

impl IndexSequence {
    /// A sequence over `0..n` starting from `seed`.
    pub fn new(seed: u64, n: u64) -> Self {
        Self {
            state: seed,
            n: n.max(1),
        }
    }
}

impl Iterator for IndexSequence {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.state = self
            .state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        Some((self.state >> 33) % self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcache_server::store::charge;

    #[test]
    fn memory_probe_loads_every_key_and_reads_rss() {
        let report = measure_memory(10_000, 100).unwrap();
        assert_eq!(report.keys, 10_000);
        assert_eq!(report.accounted_bytes, 10_000 * charge(14, 100) as u64);
        assert!(report.rss_before > 0 && report.rss_after > 0);
        assert!(measure_memory(0, 100).is_err());
    }

    #[test]
    fn keys_are_fourteen_bytes_and_sequences_repeat() {
        assert_eq!(bench_key(42).len(), 14);
        let a: Vec<u64> = IndexSequence::new(7, 1000).take(100).collect();
        let b: Vec<u64> = IndexSequence::new(7, 1000).take(100).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&i| i < 1000));
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 80);
    }
}
