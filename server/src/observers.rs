//! The store's one observer ([`crate::store::Store::observe`]): a fan-out to near-cache
//! tracking ([`crate::tracking`]) and the lease table ([`crate::lease`]).
//!
//! Both share one switch, a counter the store reads (relaxed) before calling in: tracking adds
//! 1 while a stream is open, the lease table 1 per lease held. With no stream and no lease, a
//! write costs loading it (twice: before and after the change). Tracking hears of every change ([`KeyObserver::changed`], before
//! it, and flushes); the lease table hears only of writes that landed
//! ([`KeyObserver::written`], after them): a value or a delete stored by any path (client
//! writes, replication, hints, read repair, anti-entropy, rebalancing, snapshot load), never an
//! eviction, an expiry reclaim, a hand-off drop or a write refused (older copy, failed
//! condition), which would only wake the waiters to a miss and grant a second lease.
//!
//! Locks: the store calls in with the key's shard lock held (for MSETNX, several shards'
//! locks). Tracking takes its own table's locks, the lease table its own; neither is ever held
//! while a store lock is taken (see [`crate::lease`] for the lease side), so the order is
//! always store shard → observer locks.

use std::sync::Arc;

use crate::lease::Leases;
use crate::store::KeyObserver;
use crate::tracking::Tracking;

/// Tells tracking and the lease table of the store's changes.
#[derive(Debug)]
pub struct Observers {
    tracking: Arc<Tracking>,
    leases: Arc<Leases>,
}

impl Observers {
    /// A fan-out to `tracking` and `leases` (which must share the switch the store is given).
    pub fn new(tracking: Arc<Tracking>, leases: Arc<Leases>) -> Self {
        Self { tracking, leases }
    }
}

impl KeyObserver for Observers {
    #[inline]
    fn changed(&self, key: &[u8]) {
        if self.tracking.is_on() {
            self.tracking.changed(key);
        }
    }

    #[inline]
    fn written(&self, key: &[u8]) {
        self.leases.on_write(key);
    }

    fn flushed(&self) {
        if self.tracking.is_on() {
            self.tracking.flushed();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::time::Instant;

    use super::*;
    use crate::lease::{Acquire, LeaseConfig};
    use crate::store::{EvictionPolicy, SetOptions, Store, StoreConfig};
    use crate::tracking::TrackingConfig;

    const T0: u64 = 1_700_000_000_000;
    const TTL: Duration = Duration::from_secs(30);

    /// A store observed as a node observes it, with its lease table.
    fn observed(config: StoreConfig) -> (Arc<Store>, Arc<Leases>, Arc<AtomicUsize>) {
        let store = Arc::new(Store::new(config));
        let switch = Arc::new(AtomicUsize::new(0));
        let tracking =
            Arc::new(Tracking::new(TrackingConfig::default()).with_switch(Arc::clone(&switch)));
        let leases = Arc::new(Leases::new(LeaseConfig::default()).with_switch(Arc::clone(&switch)));
        assert!(store.observe(
            Arc::clone(&switch),
            Arc::new(Observers::new(tracking, Arc::clone(&leases)))
        ));
        (store, leases, switch)
    }

    fn acquire(store: &Store, leases: &Leases, key: &str) -> Acquire<Bytes> {
        leases
            .acquire(
                &Bytes::copy_from_slice(key.as_bytes()),
                TTL,
                Instant::now(),
                || {
                    store
                        .get(key.as_bytes(), T0)
                        .ok()
                        .flatten()
                        .map(|item| item.value)
                },
            )
            .expect("within the bounds")
    }

    #[tokio::test]
    async fn a_write_landing_by_any_path_releases_the_lease_and_wakes_its_waiters() {
        let (store, leases, switch) = observed(StoreConfig::default());
        assert_eq!(
            switch.load(Relaxed),
            0,
            "nothing held: the store does not call in"
        );
        type Write<'a> = &'a dyn Fn(&str);
        let paths: [(&str, Write<'_>); 4] = [
            (
                "apply (replication, anti-entropy, rebalancing, hints)",
                &|key| {
                    assert!(
                        store
                            .apply(
                                key.as_bytes(),
                                Some(b"v"),
                                crate::store::Hlc::at_millis(T0),
                                None,
                                T0
                            )
                            .unwrap()
                    );
                },
            ),
            ("set", &|key| {
                store
                    .set(key.as_bytes(), b"v", SetOptions::default(), T0)
                    .unwrap();
            }),
            ("incr", &|key| {
                store.incr(key.as_bytes(), 1, None, T0).unwrap();
            }),
            ("mset", &|key| {
                store.mset(&[(key.as_bytes(), b"v")], None, T0).unwrap();
            }),
        ];
        for (i, (path, write)) in paths.iter().enumerate() {
            let key = &format!("k{i}");
            assert!(matches!(
                acquire(&store, &leases, key),
                Acquire::Granted { .. }
            ));
            assert_eq!(switch.load(Relaxed), 1);
            let Acquire::Held { mut wake, .. } = acquire(&store, &leases, key) else {
                panic!("{path}: a second caller waits");
            };
            write(key);
            assert_eq!(leases.held(), 0, "{path} released the lease");
            assert_eq!(switch.load(Relaxed), 0, "{path}");
            assert!(wake.changed().await.is_err(), "{path} woke the waiter");
            assert!(
                matches!(acquire(&store, &leases, key), Acquire::Found(_)),
                "{path}"
            );
        }
    }

    #[test]
    fn a_refused_copy_an_eviction_or_a_reclaim_keeps_the_lease() {
        let (store, leases, _) = observed(StoreConfig {
            max_memory_bytes: 64 * 1024,
            eviction: EvictionPolicy::Clock,
            ..StoreConfig::default()
        });
        let newer = crate::store::Hlc::at_millis(T0) + 10;
        // A tombstone newer than the copy that arrives later.
        store.apply(b"k", None, newer, None, T0).unwrap();
        let Acquire::Granted { token, .. } = acquire(&store, &leases, "k") else {
            panic!("a miss gets the lease");
        };
        assert!(
            !store
                .apply(b"k", Some(b"old"), newer - 5, None, T0)
                .unwrap()
        );
        assert!(
            leases.holds(b"k", token, Instant::now()),
            "an older copy changes nothing"
        );
        // Fill the store: evictions and reclaims of other keys leave the lease alone.
        for i in 0..2_000u32 {
            let _ = store.set(
                format!("fill{i}").as_bytes(),
                &[0; 100],
                SetOptions {
                    ttl_ms: Some(1),
                    ..SetOptions::default()
                },
                T0,
            );
        }
        store.reclaim_expired(T0 + 10_000, 10_000);
        assert!(leases.holds(b"k", token, Instant::now()));
    }

    /// Store writes (which release leases under the store's shard locks) racing with acquires
    /// (which read the store): no deadlock, and no lease is left behind on a key that holds a
    /// value. Bounded: each thread runs a fixed number of rounds; the test fails rather than
    /// hangs if they do not finish.
    #[test]
    fn writes_racing_with_acquires_neither_deadlock_nor_leave_a_lease_on_a_value() {
        let (store, leases, switch) = observed(StoreConfig {
            shards: 2,
            ..StoreConfig::default()
        });
        let keys: Vec<Bytes> = (0..16).map(|i| Bytes::from(format!("key{i}"))).collect();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for t in 0..4 {
            let (store, leases, keys, done) = (
                Arc::clone(&store),
                Arc::clone(&leases),
                keys.clone(),
                done_tx.clone(),
            );
            std::thread::spawn(move || {
                for round in 0..5_000usize {
                    let key = &keys[(round * 7 + t) % keys.len()];
                    if (round + t) % 3 == 0 {
                        store.set(key, b"v", SetOptions::default(), T0).unwrap();
                    } else if (round + t) % 3 == 1 {
                        store.delete(key, T0).unwrap();
                    } else {
                        let _ = leases.acquire(key, TTL, Instant::now(), || {
                            store.get(key, T0).ok().flatten()
                        });
                    }
                }
                let _ = done.send(());
            });
        }
        for _ in 0..4 {
            done_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a thread finished: no deadlock");
        }
        for key in &keys {
            if store.get(key, T0).unwrap().is_some() {
                assert!(
                    matches!(
                        leases.acquire(key, TTL, Instant::now(), || Some(())),
                        Ok(Acquire::Found(()))
                    ),
                    "a lease is left on {key:?}, which holds a value"
                );
            }
        }
        // Every write of a key releases it: after writing them all, nothing is held.
        for key in &keys {
            store.set(key, b"v", SetOptions::default(), T0).unwrap();
        }
        assert_eq!(leases.held(), 0);
        assert_eq!(switch.load(Relaxed), 0);
    }
}
