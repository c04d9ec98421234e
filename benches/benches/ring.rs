//! Criterion micro-benchmarks of placement: replica-set lookup per key and ring rebuild, for 3,
//! 10 and 100 nodes at 256 vnodes. Run: `cargo bench -p ringcache-bench --bench ring`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringcache_bench::{IndexSequence, bench_key};
use ringcache_proto::placement::{DEFAULT_VNODES_PER_WEIGHT, Ring};

fn node_ids(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("10.0.{}.{}:7380", i / 250, i % 250))
        .collect()
}

fn ring_benches(c: &mut Criterion) {
    let keys: Vec<String> = (0..100_000).map(bench_key).collect();
    let mut lookup = c.benchmark_group("ring_lookup");
    for n in [3, 10, 100] {
        let ids = node_ids(n);
        let ring = Ring::build(
            ids.iter().map(|id| (id.as_str(), 1)),
            DEFAULT_VNODES_PER_WEIGHT,
            3,
        );
        let mut seq = IndexSequence::new(9, keys.len() as u64);
        lookup.bench_with_input(BenchmarkId::from_parameter(n), &ring, |b, ring| {
            b.iter(|| {
                let key = &keys[seq.next().unwrap() as usize];
                black_box(ring.replicas(key.as_bytes()).primary())
            })
        });
    }
    lookup.finish();
    let mut rebuild = c.benchmark_group("ring_rebuild");
    rebuild.sample_size(10);
    for n in [3, 10, 100] {
        let ids = node_ids(n);
        rebuild.bench_with_input(BenchmarkId::from_parameter(n), &ids, |b, ids| {
            b.iter(|| {
                black_box(Ring::build(
                    ids.iter().map(|id| (id.as_str(), 1)),
                    DEFAULT_VNODES_PER_WEIGHT,
                    3,
                ))
            })
        });
    }
    rebuild.finish();
}

criterion_group!(benches, ring_benches);
criterion_main!(benches);
