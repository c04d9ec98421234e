//! Leases: cluster-wide stampede protection for `Cache.GetOrLease` (and `LEASE.GET`).
//!
//! The key's primary decides: every GetOrLease for a key is served by its primary (a request
//! reaching another node is forwarded there), which keeps one [`Leases`] table. On a miss the
//! first caller is granted a lease (a random non-zero token, valid for the lease TTL); every
//! other caller for that key waits on the lease's wake-up channel, bounded by its own wait and
//! the node's `lease_max_wait`. Any write of the key that lands in the primary's store, whatever
//! its path (the holder's Set with its token, any other client write, replication, hints, read
//! repair, anti-entropy, rebalancing), removes the lease, which wakes the waiters: they read the
//! value from the store. The store tells this table itself ([`crate::store::KeyObserver::written`],
//! through the node's fan-out in [`crate::observers`]), under the key's store shard lock, after the
//! change. When the lease expires without a write (its holder died), the first waiter to look
//! takes it over with a new token, and the others wait on the new lease: exactly one new
//! computation.
//!
//! Bounds: at most `lease_max_leases` leases (expired ones are swept at every
//! [`Leases::sweep`] and before a refusal) and `lease_max_waiters` waiters per node; beyond them
//! RESOURCE_EXHAUSTED. A lease holds at most `lease_max_ttl`, a wait at most `lease_max_wait`.
//!
//! **Lock order: store shard → lease-table shard, never the reverse.** The store's observer
//! removes a lease (a table-shard write lock) while the store holds the key's shard lock. So no
//! code here reads the store while it holds a table lock: [`Leases::acquire`] inserts the lease,
//! lets go of the table, and only then re-reads the store; a value found then releases the
//! lease it just inserted. Why nothing is missed: the insert (and the switch count it raises)
//! happens before the re-read, which takes the store shard lock; a write takes the same lock.
//! If the write's lock comes first, the re-read sees the value; if it comes second, it sees the
//! switch raised and the lease in the table, and removes it (waking every waiter). Dropping a
//! lease's `watch` sender under the store lock only wakes tasks; it runs none and takes no lock
//! but the channel's own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;
use tokio::time::Instant;

/// Default `lease_max_leases`.
pub const DEFAULT_MAX_LEASES: usize = 10_000;
/// Default `lease_max_waiters`.
pub const DEFAULT_MAX_WAITERS: usize = 10_000;
/// Default `lease_max_ttl`.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(60);
/// Default `lease_max_wait`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(3);
/// Largest `lease_max_wait`: a forwarded GetOrLease must finish within the forwarding timeout.
pub const MAX_MAX_WAIT: Duration = Duration::from_secs(30);
/// Largest `lease_max_ttl`.
pub const MAX_MAX_TTL: Duration = Duration::from_secs(3600);
/// Largest `serve_stale`.
pub const MAX_SERVE_STALE: Duration = Duration::from_secs(24 * 3600);

/// Lease settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Most leases held at once on this node.
    pub max_leases: usize,
    /// Most GetOrLease callers waiting at once on this node.
    pub max_waiters: usize,
    /// Longest lease TTL granted (a longer request is capped).
    pub max_ttl: Duration,
    /// Longest wait for another caller's lease (a longer request is capped).
    pub max_wait: Duration,
    /// How long an expired value stays readable through GetOrLease (0: off).
    pub serve_stale: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            max_leases: DEFAULT_MAX_LEASES,
            max_waiters: DEFAULT_MAX_WAITERS,
            max_ttl: DEFAULT_MAX_TTL,
            max_wait: DEFAULT_MAX_WAIT,
            serve_stale: Duration::ZERO,
        }
    }
}

/// One held lease.
#[derive(Debug)]
struct Lease {
    token: u64,
    deadline: Instant,
    /// Dropped (with the lease) to wake the waiters.
    wake: watch::Sender<()>,
}

/// Why a lease or a wait was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// `lease_max_leases` leases are held.
    #[error("{0} leases are held on this node (lease_max_leases); retry later")]
    TooManyLeases(usize),
    /// `lease_max_waiters` callers wait.
    #[error("{0} callers wait for leases on this node (lease_max_waiters); retry later")]
    TooManyWaiters(usize),
}

/// The outcome of [`Leases::acquire`].
#[derive(Debug)]
pub enum Acquire<T> {
    /// The re-check under the lease's lock found a value: no lease needed.
    Found(T),
    /// This caller holds the lease now.
    Granted {
        /// The token to Set with.
        token: u64,
        /// Whether it took over an expired lease.
        took_over: bool,
    },
    /// Another caller holds the lease until `deadline`; `wake` changes (or closes) when it is
    /// released.
    Held {
        /// Closed or changed when the lease is released.
        wake: watch::Receiver<()>,
        /// When the lease expires.
        deadline: Instant,
    },
}

/// Counters, copied into the metrics at each scrape.
#[derive(Debug, Default)]
pub struct LeaseStats {
    /// Leases granted (take-overs included).
    pub granted: AtomicU64,
    /// Expired leases taken over by a waiter.
    pub taken_over: AtomicU64,
    /// Expired leases swept without a take-over.
    pub expired: AtomicU64,
    /// Waits answered with a value.
    pub woken_by_value: AtomicU64,
    /// Waits that ran out of time.
    pub timed_out: AtomicU64,
    /// Stale values served.
    pub stale_served: AtomicU64,
}

/// The lease table of one node.
#[derive(Debug)]
pub struct Leases {
    config: LeaseConfig,
    table: DashMap<Bytes, Lease>,
    /// Entries in `table` (the limit; the write path's check).
    count: AtomicUsize,
    /// The store's observer switch ([`crate::store::Store::observe`]), shared with near-cache
    /// tracking: raised by 1 per lease held, so the store calls in only while a lease (or a
    /// tracking stream) exists.
    switch: Arc<AtomicUsize>,
    waiters: AtomicUsize,
    stats: LeaseStats,
}

/// Counts one waiter while it lives.
#[derive(Debug)]
pub struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Leases {
    /// An empty table.
    pub fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            table: DashMap::new(),
            count: AtomicUsize::new(0),
            switch: Arc::new(AtomicUsize::new(0)),
            waiters: AtomicUsize::new(0),
            stats: LeaseStats::default(),
        }
    }

    /// Shares the store's observer switch (call before any lease is granted).
    #[must_use]
    pub fn with_switch(mut self, switch: Arc<AtomicUsize>) -> Self {
        self.switch = switch;
        self
    }

    /// Counts one more lease, or refuses it beyond `lease_max_leases`.
    fn count_in(&self) -> Result<(), LeaseError> {
        let max = self.config.max_leases;
        if self.count.fetch_add(1, Relaxed) >= max {
            self.count.fetch_sub(1, Relaxed);
            return Err(LeaseError::TooManyLeases(max));
        }
        self.switch.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Counts `n` leases out.
    fn count_out(&self, n: usize) {
        if n > 0 {
            self.count.fetch_sub(n, Relaxed);
            self.switch.fetch_sub(n, Relaxed);
        }
    }

    /// The settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &LeaseStats {
        &self.stats
    }

    /// Leases held now (expired ones not swept yet included).
    pub fn held(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// Callers waiting now.
    pub fn waiting(&self) -> usize {
        self.waiters.load(Relaxed)
    }

    /// The TTL a request for `requested_ms` gets: capped by `lease_max_ttl`; `None` for 0.
    pub fn ttl_for(&self, requested_ms: u64) -> Option<Duration> {
        (requested_ms > 0).then(|| Duration::from_millis(requested_ms).min(self.config.max_ttl))
    }

    /// The wait a request for `requested_ms` gets: capped by `lease_max_wait`.
    pub fn wait_for(&self, requested_ms: u64) -> Duration {
        Duration::from_millis(requested_ms).min(self.config.max_wait)
    }

    /// Takes the lease of `key` for `ttl`, or tells who holds it. `recheck` reads the value
    /// once the lease is in the table (and the table's lock let go, see the module's lock
    /// order): a value written since the caller's miss is returned instead of a lease, and the
    /// lease just taken is released (so a write racing with a miss never leaves a lease behind,
    /// nor grants a second one after it).
    pub fn acquire<T>(
        &self,
        key: &Bytes,
        ttl: Duration,
        now: Instant,
        recheck: impl FnOnce() -> Option<T>,
    ) -> Result<Acquire<T>, LeaseError> {
        if self.count.load(Relaxed) >= self.config.max_leases && !self.table.contains_key(key) {
            self.sweep(now);
        }
        let token = new_token();
        let lease = || Lease {
            token,
            deadline: now + ttl,
            wake: watch::channel(()).0,
        };
        let took_over = match self.table.entry(key.clone()) {
            Entry::Occupied(mut held) => {
                let current = held.get();
                if current.deadline > now {
                    return Ok(Acquire::Held {
                        wake: current.wake.subscribe(),
                        deadline: current.deadline,
                    });
                }
                // Replacing the lease drops its sender: the other waiters wake and wait on
                // the new one.
                *held.get_mut() = lease();
                true
            }
            Entry::Vacant(vacant) => {
                self.count_in()?;
                vacant.insert(lease());
                false
            }
        };
        // The table's shard lock is let go: the store may be read now.
        if let Some(found) = recheck() {
            self.release(key, token);
            if took_over {
                self.stats.expired.fetch_add(1, Relaxed);
            }
            return Ok(Acquire::Found(found));
        }
        self.stats.granted.fetch_add(1, Relaxed);
        if took_over {
            self.stats.taken_over.fetch_add(1, Relaxed);
        }
        Ok(Acquire::Granted { token, took_over })
    }

    /// Removes the lease of `key` if `token` still holds it (waking its waiters).
    fn release(&self, key: &[u8], token: u64) {
        if self
            .table
            .remove_if(key, |_, lease| lease.token == token)
            .is_some()
        {
            self.count_out(1);
        }
    }

    /// Counts one more waiter, or refuses it beyond `lease_max_waiters`.
    pub fn wait_slot(&self) -> Result<WaiterGuard<'_>, LeaseError> {
        let max = self.config.max_waiters;
        if self.waiters.fetch_add(1, Relaxed) >= max {
            self.waiters.fetch_sub(1, Relaxed);
            return Err(LeaseError::TooManyWaiters(max));
        }
        Ok(WaiterGuard(&self.waiters))
    }

    /// A write of `key` landed on this node: its lease (if any) is released and its waiters
    /// wake. One atomic load when no lease is held. The store calls it with the key's shard
    /// lock held ([`crate::store::KeyObserver::written`]): it takes a table-shard lock and
    /// nothing else.
    #[inline]
    pub fn on_write(&self, key: &[u8]) {
        if self.count.load(Relaxed) == 0 {
            return;
        }
        if self.table.remove(key).is_some() {
            self.count_out(1);
        }
    }

    /// Whether `token` holds the lease of `key` now (unexpired).
    pub fn holds(&self, key: &[u8], token: u64, now: Instant) -> bool {
        self.table
            .get(key)
            .is_some_and(|lease| lease.token == token && lease.deadline > now)
    }

    /// Removes the expired leases (waking their waiters, who take over); returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        if self.count.load(Relaxed) == 0 {
            return 0;
        }
        let mut removed = 0;
        self.table.retain(|_, lease| {
            let keep = lease.deadline > now;
            removed += usize::from(!keep);
            keep
        });
        if removed > 0 {
            self.count_out(removed);
            self.stats.expired.fetch_add(removed as u64, Relaxed);
        }
        removed
    }

    /// Drops every lease (waking every waiter): a flush, or the node stopping.
    pub fn clear(&self) {
        let mut removed = 0;
        self.table.retain(|_, _| {
            removed += 1;
            false
        });
        self.count_out(removed);
    }
}

/// A random non-zero token below 2^63 (a RESP integer reply carries it).
fn new_token() -> u64 {
    (rand::random::<u64>() >> 1) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_leases: usize, max_waiters: usize) -> Leases {
        Leases::new(LeaseConfig {
            max_leases,
            max_waiters,
            ..LeaseConfig::default()
        })
    }

    const TTL: Duration = Duration::from_millis(100);

    fn grant(leases: &Leases, key: &'static str, now: Instant) -> u64 {
        match leases.acquire(&Bytes::from(key), TTL, now, || None::<()>) {
            Ok(Acquire::Granted { token, .. }) => token,
            other => panic!("expected a grant for {key}, got {other:?}"),
        }
    }

    #[test]
    fn the_first_miss_gets_the_lease_and_the_others_wait() {
        let leases = table(10, 10);
        let now = Instant::now();
        let token = grant(&leases, "k", now);
        assert_ne!(token, 0);
        assert!(leases.holds(b"k", token, now));
        for _ in 0..3 {
            match leases.acquire(&Bytes::from("k"), TTL, now, || None::<()>) {
                Ok(Acquire::Held { deadline, .. }) => assert_eq!(deadline, now + TTL),
                other => panic!("expected held, got {other:?}"),
            }
        }
        assert_eq!(leases.held(), 1);
        assert_eq!(leases.stats().granted.load(Relaxed), 1);
    }

    #[test]
    fn a_value_found_by_the_recheck_grants_nothing() {
        let leases = table(10, 10);
        let now = Instant::now();
        match leases.acquire(&Bytes::from("k"), TTL, now, || Some(7)) {
            Ok(Acquire::Found(7)) => {}
            other => panic!("expected found, got {other:?}"),
        }
        assert_eq!(leases.held(), 0);
    }

    #[tokio::test]
    async fn a_write_releases_the_lease_and_wakes_the_waiters() {
        let leases = table(10, 10);
        let now = Instant::now();
        grant(&leases, "k", now);
        let Ok(Acquire::Held { mut wake, .. }) =
            leases.acquire(&Bytes::from("k"), TTL, now, || None::<()>)
        else {
            panic!("expected held");
        };
        leases.on_write(b"other");
        assert_eq!(leases.held(), 1);
        leases.on_write(b"k");
        assert_eq!(leases.held(), 0);
        assert!(wake.changed().await.is_err(), "the sender is gone: woken");
        grant(&leases, "k", now);
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_by_exactly_one_caller() {
        let leases = table(10, 10);
        let now = Instant::now();
        let first = grant(&leases, "k", now);
        let Ok(Acquire::Held { mut wake, .. }) =
            leases.acquire(&Bytes::from("k"), TTL, now, || None::<()>)
        else {
            panic!("expected held");
        };
        let later = now + TTL;
        let second = match leases.acquire(&Bytes::from("k"), TTL, later, || None::<()>) {
            Ok(Acquire::Granted {
                token,
                took_over: true,
            }) => token,
            other => panic!("expected a take-over, got {other:?}"),
        };
        assert_ne!(first, second);
        assert!(!leases.holds(b"k", first, later));
        assert!(leases.holds(b"k", second, later));
        assert!(
            wake.changed().await.is_err(),
            "the old lease's waiters wake"
        );
        assert!(matches!(
            leases.acquire(&Bytes::from("k"), TTL, later, || None::<()>),
            Ok(Acquire::Held { .. })
        ));
        assert_eq!(leases.stats().taken_over.load(Relaxed), 1);
        assert_eq!(leases.held(), 1);
    }

    #[test]
    fn the_lease_count_is_bounded_and_expired_leases_make_room() {
        let leases = table(2, 10);
        let now = Instant::now();
        grant(&leases, "a", now);
        grant(&leases, "b", now);
        let refused = leases.acquire(&Bytes::from("c"), TTL, now, || None::<()>);
        assert_eq!(refused.unwrap_err(), LeaseError::TooManyLeases(2));
        assert!(
            LeaseError::TooManyLeases(2)
                .to_string()
                .contains("lease_max_leases")
        );
        // The held key is still answered (held), not refused.
        assert!(matches!(
            leases.acquire(&Bytes::from("a"), TTL, now, || None::<()>),
            Ok(Acquire::Held { .. })
        ));
        // Once they expire, a new grant sweeps them.
        grant(&leases, "c", now + TTL);
        assert_eq!(leases.held(), 1);
        assert_eq!(leases.stats().expired.load(Relaxed), 2);
    }

    #[test]
    fn sweep_removes_only_expired_leases() {
        let leases = table(10, 10);
        let now = Instant::now();
        grant(&leases, "a", now);
        grant(&leases, "b", now + Duration::from_millis(50));
        assert_eq!(leases.sweep(now + TTL), 1);
        assert_eq!(leases.held(), 1);
        assert_eq!(leases.sweep(now + TTL * 2), 1);
        assert_eq!(leases.held(), 0);
        assert_eq!(leases.sweep(now + TTL * 3), 0);
    }

    #[test]
    fn waiters_are_bounded_and_counted_while_they_wait() {
        let leases = table(10, 2);
        let a = leases.wait_slot().unwrap();
        let b = leases.wait_slot().unwrap();
        assert_eq!(leases.waiting(), 2);
        assert_eq!(
            leases.wait_slot().unwrap_err(),
            LeaseError::TooManyWaiters(2)
        );
        drop(a);
        let c = leases.wait_slot().unwrap();
        drop((b, c));
        assert_eq!(leases.waiting(), 0);
    }

    #[test]
    fn ttl_and_wait_are_capped_by_the_settings() {
        let leases = Leases::new(LeaseConfig {
            max_ttl: Duration::from_secs(2),
            max_wait: Duration::from_secs(1),
            ..LeaseConfig::default()
        });
        assert_eq!(leases.ttl_for(0), None);
        assert_eq!(leases.ttl_for(500), Some(Duration::from_millis(500)));
        assert_eq!(leases.ttl_for(u64::MAX), Some(Duration::from_secs(2)));
        assert_eq!(leases.wait_for(10), Duration::from_millis(10));
        assert_eq!(leases.wait_for(u64::MAX), Duration::from_secs(1));
    }
}
