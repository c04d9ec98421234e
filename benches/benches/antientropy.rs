//! Criterion benchmarks of anti-entropy on one million keys (R = 3: on 3 nodes every key is
//! shared with both peers and no ring lookup is needed; on 5 nodes each key is): the digest scan a node runs once per round at rest, and a whole
//! comparison of two replicas that differ in 1 % of their keys (digests on both sides, the
//! summaries of the differing buckets, the plan, and applying the repairs).
//! Run: `cargo bench -p ringcache-bench --bench antientropy`.

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ringcache_proto::topology::{Member, Topology};
use ringcache_server::antientropy::{BUCKETS, digests, plan, summaries};
use ringcache_server::known::Quorum;
use ringcache_server::store::{Store, StoreConfig};
use ringcache_server::view::ClusterView;

const KEYS: u64 = 1_000_000;
const NOW: u64 = 1_800_000_000_000;

fn cluster_view(nodes: usize) -> ClusterView {
    let members = (1..=nodes)
        .map(|i| Member::for_test(format!("n{i}")))
        .collect();
    let topology = Topology::new(members, 3, 256);
    ClusterView::new(
        topology,
        Quorum {
            known: nodes,
            alive: nodes,
        },
    )
}

/// A store of `KEYS` keys with 100-byte values; every `diverge_every`th key (0: none) holds a
/// newer version than its twin.
fn store(diverge_every: u64) -> Store {
    let store = Store::new(StoreConfig {
        max_memory_bytes: 4 << 30,
        ..StoreConfig::default()
    });
    let value = [7u8; 100];
    for i in 0..KEYS {
        let newer = diverge_every != 0 && i % diverge_every == 0;
        let version = (NOW << 16) + i + if newer { KEYS } else { 0 };
        store
            .apply(
                format!("key:{i}").as_bytes(),
                Some(&value),
                version,
                None,
                NOW,
            )
            .unwrap();
    }
    store
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let view = cluster_view(3);
    let five = cluster_view(5);
    let a = store(0);
    let mut group = c.benchmark_group("anti_entropy_1m_keys");
    group.sample_size(10);
    group.bench_function("digest_scan_3_nodes", |b| {
        b.iter(|| black_box(runtime.block_on(digests(&a, &view, "n1", "n2", NOW))))
    });
    group.bench_function("digest_scan_5_nodes", |b| {
        b.iter(|| black_box(runtime.block_on(digests(&a, &five, "n1", "n2", NOW))))
    });
    group.bench_function("compare_and_repair_1_percent", |bencher| {
        bencher.iter_batched(
            || store(100),
            |b| {
                runtime.block_on(async {
                    let mine = digests(&a, &view, "n1", "n2", NOW).await;
                    let theirs = digests(&b, &view, "n2", "n1", NOW).await;
                    let differing: HashSet<usize> = (0..BUCKETS)
                        .filter(|&i| mine.hashes[i] != theirs.hashes[i])
                        .collect();
                    let local = summaries(&a, &view, "n1", "n2", &differing, NOW).await;
                    let remote = summaries(&b, &view, "n2", "n1", &differing, NOW).await;
                    let plan = plan(&local, &remote);
                    assert_eq!(plan.pull.len(), (KEYS / 100) as usize);
                    // Applying on a copy of `a` would need a fresh store per iteration; apply
                    // the newer copies into `b`'s twin instead (the same work).
                    for key in &plan.pull {
                        let item = b.get_versioned(key).unwrap().unwrap();
                        a.apply(key, item.value.as_deref(), item.version - 1, None, NOW)
                            .unwrap();
                    }
                    black_box(plan.pull.len())
                })
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(anti_entropy, benches);
criterion_main!(anti_entropy);
