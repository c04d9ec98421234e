//! Criterion micro-benchmarks of the store (get, set, expire, incr on 1M keys of 14 B with 100 B
//! values; writes that evict), of the store's observer on the write path (near-cache tracking
//! and GetOrLease leases) and of the hybrid logical clock.
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

/// The store's observer on the write path: overwrites of 1,000 cache-resident keys on a bare
/// store, on a store observed as a node observes it (tracking and leases) with nothing
/// listening (the switch, one relaxed atomic), and with one lease held on another key (every write
/// then asks the lease table).
fn observer_benches(c: &mut Criterion) {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use ringcache_server::lease::{LeaseConfig, Leases};
    use ringcache_server::observers::Observers;
    use ringcache_server::tracking::{Tracking, TrackingConfig};

    let keys: Vec<String> = (0..1_000).map(bench_key).collect();
    let value = [b'y'; 100];
    let observed = || {
        let store = Store::new(StoreConfig::default());
        let switch = Arc::new(AtomicUsize::new(0));
        let tracking =
            Arc::new(Tracking::new(TrackingConfig::default()).with_switch(Arc::clone(&switch)));
        let leases = Arc::new(Leases::new(LeaseConfig::default()).with_switch(Arc::clone(&switch)));
        store.observe(
            switch,
            Arc::new(Observers::new(tracking, Arc::clone(&leases))),
        );
        (store, leases)
    };
    let bare = Store::new(StoreConfig::default());
    let (idle, _idle_leases) = observed();
    let (leased, leases) = observed();
    leases
        .acquire(
            &bytes::Bytes::from_static(b"another key"),
            Duration::from_secs(3600),
            tokio::time::Instant::now(),
            || None::<()>,
        )
        .unwrap();
    let mut group = c.benchmark_group("observed_writes_1k_keys");
    group.throughput(Throughput::Elements(1));
    for (name, store) in [
        ("bare", &bare),
        ("observed_idle", &idle),
        ("observed_one_lease_held", &leased),
    ] {
        let mut seq = IndexSequence::new(7, 1_000);
        group.bench_function(name, |b| {
            b.iter(|| {
                let key = &keys[seq.next().unwrap() as usize];
                black_box(
                    store
                        .set(key.as_bytes(), &value, SetOptions::default(), NOW)
                        .unwrap(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, store_benches, observer_benches, hlc_benches);
criterion_main!(benches);
