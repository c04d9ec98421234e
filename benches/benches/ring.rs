//! Criterion micro-benchmarks of placement: replica-set lookup per key and ring rebuild, for 3,
//! 10 and 100 nodes at 256 vnodes. Run: `cargo bench -p ringcache-bench --bench ring`.
//!
//! `ring_lookup` draws each key from 100,000 heap strings, so it also pays the cache misses of
//! fetching the key; `replica_set` draws from 1,024 keys that stay in cache (a server has the
//! key it just decoded in cache) and walks the whole replica set, as a coordinator does;
//! `key_slot` is the CRC16 alone.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringcache_bench::{IndexSequence, bench_key};
use ringcache_proto::placement::{DEFAULT_VNODES_PER_WEIGHT, Ring, key_slot};

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
    let hot: Vec<String> = (0..1024).map(bench_key).collect();
    let mut set = c.benchmark_group("replica_set");
    for n in [3, 10, 100] {
        let ids = node_ids(n);
        let ring = Ring::build(
            ids.iter().map(|id| (id.as_str(), 1)),
            DEFAULT_VNODES_PER_WEIGHT,
            3,
        );
        let mut seq = IndexSequence::new(9, hot.len() as u64);
        set.bench_with_input(BenchmarkId::from_parameter(n), &ring, |b, ring| {
            b.iter(|| {
                let key = &hot[seq.next().unwrap() as usize];
                let mut len = 0;
                for id in ring.replicas(key.as_bytes()).iter() {
                    len += black_box(id).len();
                }
                len
            })
        });
    }
    set.finish();
    let mut seq = IndexSequence::new(9, hot.len() as u64);
    c.bench_function("key_slot", |b| {
        b.iter(|| key_slot(black_box(hot[seq.next().unwrap() as usize].as_bytes())))
    });
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
