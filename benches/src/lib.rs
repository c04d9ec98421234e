//! Benchmarks and measurement probes for ringcache. The load harness (`ringbench`) comes later;
//! today this crate holds the criterion micro-benchmarks (`cargo bench -p ringcache-bench`) and
//! `memprobe`, which measures memory per key.

/// The key `memprobe` and the store benchmarks use for index `i`: `key:%010d` (14 bytes).
pub fn bench_key(i: u64) -> String {
    format!("key:{i:010}")
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
