//! Criterion micro-benchmarks of hot-key tracking (`ringcache_server::hotkeys`): the cost a
//! request pays with tracking off (a branch on a bool), on with the default sampling (1 in 8),
//! and on counting every request, over 100,000 keys of 14 B with a zipfian skew
//! (θ = 1).
//! Run: `cargo bench -p ringcache-bench --bench hotkeys`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringcache_bench::bench::{rng::Rng, zipf::Zipfian};
use ringcache_bench::bench_key;
use ringcache_server::hotkeys::{Access, HotKeys, HotKeysConfig};

const KEYS: usize = 100_000;

fn hotkeys_benches(c: &mut Criterion) {
    // A skewed stream: key i drawn about 1/(i+1) as often (zipfian, θ = 1; a fixed seed).
    let keys: Vec<String> = (0..KEYS as u64).map(bench_key).collect();
    let zipf = Zipfian::new(KEYS as u64, 1.0).expect("a valid distribution");
    let mut rng = Rng::new(1);
    let stream: Vec<usize> = (0..KEYS)
        .map(|_| usize::try_from(zipf.sample(|| rng.next_f64())).expect("a rank below KEYS"))
        .collect();
    let mut group = c.benchmark_group("hotkeys_record");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    for (name, enabled, sample) in [
        ("off", false, 8),
        ("sample_8", true, 8),
        ("sample_1", true, 1),
    ] {
        let hot = HotKeys::new(HotKeysConfig {
            enabled,
            sample,
            ..HotKeysConfig::default()
        });
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                let key = &keys[stream[next]];
                next = (next + 1) % stream.len();
                hot.record(black_box(key.as_bytes()), Access::Read);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hotkeys_benches);
criterion_main!(benches);
