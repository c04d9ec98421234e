//! The client near cache (`ClientBuilder::near_cache`) against one in-process node on loopback:
//!
//! - `near_cache/hit`: the latency of a `Client::get` answered from the near cache (target:
//!   under 1 µs), beside `near_cache/node_round_trip`, the same read without a near cache (a
//!   loopback gRPC round trip).
//! - A zipfian (theta 0.99) read-heavy workload (95 % reads through the caching client, 5 %
//!   writes through another client, so the reads see invalidations) over 100,000 keys of 100 B
//!   with a near cache of 10,000 entries; prints the near-cache hit rate and the invalidations.
//!
//! Run: `cargo bench -p ringcache-bench --bench near_cache`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use ringcache::{Client, NearCacheOptions};
use ringcache_bench::bench::{rng::Rng, zipf::Zipfian};
use ringcache_bench::bench_key;
use ringcache_server::config::Config;
use ringcache_tests::TestNode;

const KEYS: u64 = 100_000;
const NEAR_ENTRIES: u64 = 10_000;
const ZIPF_OPS: u64 = 200_000;
const WRITE_PERCENT: u64 = 5;

fn near_cache_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node = rt.block_on(TestNode::start_without_gossip(Config::for_test()));
    let seeds = vec![node.grpc_target()];
    let near = rt.block_on(async {
        Client::builder()
            .seeds(seeds.clone())
            .near_cache(NearCacheOptions {
                max_entries: NEAR_ENTRIES,
                ..NearCacheOptions::default()
            })
            .connect()
            .await
            .unwrap()
    });
    let plain = rt.block_on(Client::connect(seeds.clone())).unwrap();

    // The hit path.
    let key = Bytes::from_static(b"hot-key");
    rt.block_on(async {
        plain.set(key.clone(), vec![b'v'; 100]).await.unwrap();
        // The first reads open the stream; wait (bounded) until one is answered from memory.
        for _ in 0..10_000 {
            near.get(key.clone()).await.unwrap();
            if near.near_cache_stats().unwrap().hits > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            near.near_cache_stats().unwrap().hits > 0,
            "the near cache serves the key"
        );
    });
    let mut group = c.benchmark_group("near_cache");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(near.get(key.clone()).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("node_round_trip", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(plain.get(key.clone()).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    // The zipfian workload's hit rate.
    rt.block_on(async {
        let value = Bytes::from(vec![b'v'; 100]);
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
            plain
                .mset(chunk.iter().map(|&i| (bench_key(i), value.clone())), None)
                .await
                .unwrap();
        }
        let zipf = Zipfian::new(KEYS, 0.99).unwrap();
        let mut rng = Rng::new(42);
        let before = near.near_cache_stats().unwrap();
        let start = Instant::now();
        for _ in 0..ZIPF_OPS {
            let key = bench_key(zipf.sample(|| rng.next_f64()));
            if rng.below(100) < WRITE_PERCENT {
                plain.set(key, value.clone()).await.unwrap();
            } else {
                black_box(near.get(key).await.unwrap());
            }
        }
        let elapsed = start.elapsed();
        let after = near.near_cache_stats().unwrap();
        let hits = after.hits - before.hits;
        let misses = after.misses - before.misses;
        println!(
            "near_cache zipfian(0.99) {KEYS} keys, {WRITE_PERCENT}% writes, {NEAR_ENTRIES} entries: \
             hit rate {:.1}% ({hits} hits, {misses} misses), {} invalidations, {} flushes, \
             {:.0} ops/s in one task",
            100.0 * hits as f64 / (hits + misses).max(1) as f64,
            after.invalidations - before.invalidations,
            after.flushes - before.flushes,
            ZIPF_OPS as f64 / elapsed.as_secs_f64()
        );
    });
}

criterion_group!(benches, near_cache_benches);
criterion_main!(benches);
