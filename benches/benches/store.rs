//! Criterion micro-benchmarks of the store (get, set, expire, incr on 1M keys of 14 B with 100 B
//! values; writes that evict) and of the hybrid logical clock.
//! Run: `cargo bench -p ringcache-bench --bench store`. Results go to BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringcache_bench::{IndexSequence, bench_key};
use ringcache_server::store::{Hlc, SetOptions, Store, StoreConfig};

const KEYS: u64 = 1_000_000;
const NOW: u64 = 1_700_000_000_000;

fn loaded_store() -> (Store, Vec<String>) {
    let store = Store::new(StoreConfig::default());
    let keys: Vec<String> = (0..KEYS).map(bench_key).collect();
    let value = [b'x'; 100];
    for key in &keys {
        store
            .set(key.as_bytes(), &value, SetOptions::default(), NOW)
            .unwrap();
    }
    (store, keys)
}

fn store_benches(c: &mut Criterion) {
    let (store, keys) = loaded_store();
    let value = [b'y'; 100];
    let mut group = c.benchmark_group("store_1m_keys");
    group.throughput(Throughput::Elements(1));

    let mut seq = IndexSequence::new(1, KEYS);
    group.bench_function("get_hit", |b| {
        b.iter(|| {
            let key = &keys[seq.next().unwrap() as usize];
            black_box(store.get(key.as_bytes(), NOW).unwrap())
        })
    });
    // The same lookups over the first 1,000 keys only: the data stays in cache, so the gap to
    // `get_hit` is the cost of memory latency on a 1M-key table.
    let mut seq = IndexSequence::new(6, 1_000);
    group.bench_function("get_hit_hot_1k", |b| {
        b.iter(|| {
            let key = &keys[seq.next().unwrap() as usize];
            black_box(store.get(key.as_bytes(), NOW).unwrap())
        })
    });
    let mut seq = IndexSequence::new(2, KEYS);
    group.bench_function("get_miss", |b| {
        b.iter(|| {
            let key = format!("nokey:{:09}", seq.next().unwrap());
            black_box(store.get(key.as_bytes(), NOW).unwrap())
        })
    });
    let mut seq = IndexSequence::new(3, KEYS);
    group.bench_function("set_overwrite", |b| {
        b.iter(|| {
            let key = &keys[seq.next().unwrap() as usize];
            black_box(
                store
                    .set(key.as_bytes(), &value, SetOptions::default(), NOW)
                    .unwrap(),
            )
        })
    });
    let mut seq = IndexSequence::new(4, KEYS);
    group.bench_function("set_with_ttl", |b| {
        let options = SetOptions {
            ttl_ms: Some(3_600_000),
            ..SetOptions::default()
        };
        b.iter(|| {
            let key = &keys[seq.next().unwrap() as usize];
            black_box(store.set(key.as_bytes(), &value, options, NOW).unwrap())
        })
    });
    // Expire: a new TTL on an existing key (moves it in the shard's expiry index), then persist
    // on alternate calls so the index does not grow without bound.
    let mut seq = IndexSequence::new(7, KEYS);
    let mut flip = false;
    group.bench_function("expire_persist", |b| {
        b.iter(|| {
            let key = &keys[seq.next().unwrap() as usize];
            flip = !flip;
            let ttl = flip.then_some(3_600_000);
            black_box(store.set_ttl(key.as_bytes(), ttl, NOW).unwrap())
        })
    });
    let mut seq = IndexSequence::new(5, KEYS);
    group.bench_function("incr", |b| {
        b.iter(|| {
            let key = format!("ctr:{}", seq.next().unwrap() % 1000);
            black_box(store.incr(key.as_bytes(), 1, None, NOW).unwrap())
        })
    });
    group.finish();

    // Eviction on every write: a store full to its limit.
    let full = Store::new(StoreConfig {
        max_memory_bytes: 64 * 1024 * 1024,
        ..StoreConfig::default()
    });
    let mut i = 0u64;
    let mut group = c.benchmark_group("store_full");
    group.throughput(Throughput::Elements(1));
    group.bench_function("set_evicting", |b| {
        b.iter(|| {
            i += 1;
            black_box(
                full.set(bench_key(i).as_bytes(), &value, SetOptions::default(), NOW)
                    .unwrap(),
            )
        })
    });
    group.finish();
}

/// The hybrid logical clock: a version for a local write (CAS on one atomic), and taking in a
/// remote version (what replication does for every entry it applies).
fn hlc_benches(c: &mut Criterion) {
    let hlc = Hlc::new();
    let mut group = c.benchmark_group("hlc");
    group.throughput(Throughput::Elements(1));
    let mut now = NOW;
    group.bench_function("next", |b| {
        b.iter(|| {
            now += 1;
            black_box(hlc.next(black_box(now / 16)))
        })
    });
    let mut remote = Hlc::at_millis(NOW);
    group.bench_function("observe", |b| {
        b.iter(|| {
            remote += 3;
            black_box(hlc.observe(black_box(remote), NOW, 500).ok())
        })
    });
    group.finish();
}

criterion_group!(benches, store_benches, hlc_benches);
criterion_main!(benches);
