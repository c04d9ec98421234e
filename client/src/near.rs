//! The opt-in near cache ([`ClientBuilder::near_cache`](crate::ClientBuilder::near_cache)):
//! values read at ONE kept in the client's memory, kept correct by invalidations the nodes push
//! (`Cache.Invalidations`, like Redis client-side caching in its default mode).
//!
//! The client opens one invalidation stream per node it reads from; the node gives the stream a
//! tracking id, and a read sent to that node with the id makes the node remember that this
//! client read the key. The key's next change on that node sends the key on the stream once.
//!
//! Rules, each checked by a test:
//!
//! - An answer is cached only when the read went to a node whose stream was live, carrying its
//!   tracking id (a read that fails over, or finds no live stream, is served but not cached).
//! - Every read takes a *ticket* before it is sent: the generation of the key's stripe, the
//!   cache's epoch and the topology digest. An invalidation of the key (pushed by a node, or a
//!   write through this client) bumps the stripe, a flush bumps the epoch, and the answer is
//!   inserted only if none of the three moved; the check and the insert happen under the
//!   stripe's lock, which invalidations and flushes also take, so no insert slips past them.
//! - A write through this client invalidates its keys when it returns (success or not), so a
//!   later read through this client never sees an older cached value.
//! - A stream that breaks, errors or ends (node restart, queue overflow) first stops lending its
//!   id, then flushes everything; it is opened again on a later read, after a short pause.
//! - A change of the topology digest flushes everything (a node that no longer holds a key
//!   does not see its writes).
//! - An entry lives at most until the key's own expiry (counted from when the read was sent)
//!   and at most [`NearCacheOptions::ttl`].
//! - QUORUM and ALL reads bypass the near cache.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use ringcache_proto::v1::InvalidationsRequest;
use tokio::time::Instant;

use crate::Error;
use crate::conn::NodePool;
use crate::observe;

/// Default [`NearCacheOptions::max_entries`].
pub const DEFAULT_NEAR_MAX_ENTRIES: u64 = 100_000;
/// Default [`NearCacheOptions::max_bytes`]: 64 MiB.
pub const DEFAULT_NEAR_MAX_BYTES: u64 = 64 << 20;
/// Default [`NearCacheOptions::ttl`]: one minute.
pub const DEFAULT_NEAR_TTL: Duration = Duration::from_secs(60);
/// Longest [`NearCacheOptions::ttl`] accepted: one day.
pub const MAX_NEAR_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most entries accepted for [`NearCacheOptions::max_entries`].
pub const MAX_NEAR_ENTRIES: u64 = 1 << 32;
/// Bytes charged per entry beside its key and value (index, expiry, bookkeeping).
pub const NEAR_ENTRY_OVERHEAD: u64 = 64;
/// How long after an invalidation stream to a node ended (or could not be opened) the client
/// waits before opening it again; reads from that node are not cached meanwhile.
pub const NEAR_STREAM_RETRY: Duration = Duration::from_secs(1);
/// Stripes of generations (a power of two).
const STRIPES: usize = 256;

/// Bounds of the near cache ([`ClientBuilder::near_cache`](crate::ClientBuilder::near_cache)).
///
/// ```
/// use std::time::Duration;
/// use ringcache::NearCacheOptions;
///
/// let options = NearCacheOptions {
///     max_entries: 10_000,
///     ttl: Duration::from_secs(5),
///     ..NearCacheOptions::default()
/// };
/// assert_eq!(options.max_bytes, ringcache::DEFAULT_NEAR_MAX_BYTES);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearCacheOptions {
    /// Most entries kept, 1..=2^32 (default 100,000).
    pub max_entries: u64,
    /// Most bytes kept (keys, values and [`NEAR_ENTRY_OVERHEAD`] per entry), at least 1
    /// (default 64 MiB).
    pub max_bytes: u64,
    /// Longest time an entry is served, whatever the key's own TTL, 1 ms..=1 day (default 60 s):
    /// a bound on staleness should an invalidation be lost in a way the client cannot see.
    pub ttl: Duration,
}

impl Default for NearCacheOptions {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_NEAR_MAX_ENTRIES,
            max_bytes: DEFAULT_NEAR_MAX_BYTES,
            ttl: DEFAULT_NEAR_TTL,
        }
    }
}

impl NearCacheOptions {
    /// The default bounds.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if !(1..=MAX_NEAR_ENTRIES).contains(&self.max_entries) {
            return Err(Error::InvalidArgument(format!(
                "near cache max_entries must be between 1 and {MAX_NEAR_ENTRIES}, got {}",
                self.max_entries
            )));
        }
        if self.max_bytes == 0 {
            return Err(Error::InvalidArgument(
                "near cache max_bytes must be at least 1".to_owned(),
            ));
        }
        if self.ttl < Duration::from_millis(1) || self.ttl > MAX_NEAR_TTL {
            return Err(Error::InvalidArgument(format!(
                "near cache ttl must be between 1ms and 24h, got {:?}",
                self.ttl
            )));
        }
        Ok(())
    }
}

/// Counters of one client's near cache ([`Client::near_cache_stats`](crate::Client::near_cache_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Reads answered from the near cache.
    pub hits: u64,
    /// Reads that went to a node.
    pub misses: u64,
    /// Keys invalidated by a node.
    pub invalidations: u64,
    /// Times everything was dropped (a stream ended, the topology changed, a node said so).
    pub flushes: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes charged now: each entry its key, value and [`NEAR_ENTRY_OVERHEAD`], and at least
    /// `max_bytes / max_entries` (which is how one weight bound keeps both bounds).
    pub charged_bytes: u64,
    /// Invalidation streams live now.
    pub streams: u64,
}

#[derive(Clone)]
struct Cached {
    value: Option<Bytes>,
    expires: Instant,
}

/// Charges an entry its bytes, and at least `max_bytes / max_entries`, so that one weight bound
/// keeps both the entry and the byte bound.
#[derive(Clone)]
struct Weigher {
    floor: u64,
}

impl quick_cache::Weighter<Bytes, Cached> for Weigher {
    fn weight(&self, key: &Bytes, cached: &Cached) -> u64 {
        let bytes = key.len() as u64
            + cached.value.as_ref().map_or(0, |v| v.len() as u64)
            + NEAR_ENTRY_OVERHEAD;
        bytes.max(self.floor)
    }
}

/// What a read noted before it was sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    stripe: usize,
    generation: u64,
    epoch: u64,
    digest: u64,
    sent: Instant,
}

enum Stream {
    Opening,
    Live(u64),
    Down(Instant),
}

/// One client's near cache, shared by its clones.
pub(crate) struct NearCache {
    options: NearCacheOptions,
    cache: quick_cache::sync::Cache<Bytes, Cached, Weigher>,
    hasher: std::collections::hash_map::RandomState,
    stripes: Box<[Mutex<u64>]>,
    epoch: AtomicU64,
    digest: AtomicU64,
    streams: Mutex<HashMap<String, Stream>>,
    /// Dropped with the cache: ends the stream tasks.
    closed: tokio::sync::watch::Sender<()>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
}

impl fmt::Debug for NearCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearCache")
            .field("options", &self.options)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NearCache {
    /// An empty near cache for a client whose topology digest is `digest`.
    pub(crate) fn new(options: NearCacheOptions, digest: u64) -> Arc<Self> {
        let floor = options.max_bytes / options.max_entries;
        let estimated = usize::try_from(options.max_entries.min(1 << 20)).unwrap_or(1 << 20);
        let (closed, _) = tokio::sync::watch::channel(());
        Arc::new(Self {
            options,
            cache: quick_cache::sync::Cache::with_weighter(
                estimated,
                options.max_bytes,
                Weigher { floor },
            ),
            hasher: std::collections::hash_map::RandomState::new(),
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            epoch: AtomicU64::new(0),
            digest: AtomicU64::new(digest),
            streams: Mutex::new(HashMap::new()),
            closed,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        })
    }

    fn stripe(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) as usize) & (STRIPES - 1)
    }

    /// Flushes when the client's topology digest moved since the entries were read.
    fn follow_digest(&self, digest: u64) {
        if self.digest.load(Ordering::Acquire) != digest {
            self.flush("topology");
            self.digest.store(digest, Ordering::Release);
        }
    }

    /// The cached answer for `key` (`Some(None)`: known missing), if there is a fresh one.
    pub(crate) fn lookup(&self, key: &[u8], digest: u64) -> Option<Option<Bytes>> {
        self.follow_digest(digest);
        let found = self.cache.get(key).filter(|cached| {
            if cached.expires > Instant::now() {
                return true;
            }
            self.cache.remove(key);
            false
        });
        match found {
            Some(cached) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                observe::near_hit();
                Some(cached.value)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                observe::near_miss();
                None
            }
        }
    }

    /// Notes where things stand before a read of `key` is sent. Take it **before** asking for
    /// the node's tracking id.
    pub(crate) fn begin(&self, key: &[u8], digest: u64) -> Ticket {
        let stripe = self.stripe(key);
        let generation = *lock(&self.stripes[stripe]);
        Ticket {
            stripe,
            generation,
            epoch: self.epoch.load(Ordering::Acquire),
            digest,
            sent: Instant::now(),
        }
    }

    /// Caches the answer of a tracked read unless the key was invalidated, the cache flushed or
    /// the topology changed since `ticket`. `ttl_ms`: the key's TTL as the node answered.
    pub(crate) fn finish(
        &self,
        ticket: Ticket,
        key: Bytes,
        value: Option<Bytes>,
        ttl_ms: Option<u64>,
        digest: u64,
    ) -> bool {
        let mut expires = Instant::now() + self.options.ttl;
        if let Some(ttl_ms) = ttl_ms {
            // The node read the key after the request was sent: its expiry is no earlier.
            expires = expires.min(ticket.sent + Duration::from_millis(ttl_ms));
        }
        if expires <= Instant::now() {
            return false;
        }
        let generation = lock(&self.stripes[ticket.stripe]);
        if *generation != ticket.generation
            || self.epoch.load(Ordering::Acquire) != ticket.epoch
            || digest != ticket.digest
            || self.digest.load(Ordering::Acquire) != digest
        {
            return false;
        }
        self.cache.insert(key, Cached { value, expires });
        drop(generation);
        observe::near_size(self.cache.len(), self.cache.weight());
        true
    }

    /// Drops `key` and stops reads in flight from caching it.
    pub(crate) fn invalidate(&self, key: &[u8]) {
        let mut generation = lock(&self.stripes[self.stripe(key)]);
        *generation += 1;
        self.cache.remove(key);
    }

    /// Drops everything and stops every read in flight from caching.
    pub(crate) fn flush(&self, reason: &'static str) {
        let guards: Vec<MutexGuard<'_, u64>> = self.stripes.iter().map(|s| lock(s)).collect();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
        drop(guards);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        observe::near_flush(reason);
        observe::near_size(0, 0);
    }

    /// The tracking id of the live invalidation stream to the node at `addr`, or 0 (its read
    /// must not be cached) while there is none; opens one if none is open or opening (and the
    /// last one did not end less than [`NEAR_STREAM_RETRY`] ago).
    pub(crate) fn tracking_id(
        self: &Arc<Self>,
        addr: &str,
        pool: impl FnOnce() -> Option<Arc<NodePool>>,
        open_timeout: Duration,
    ) -> u64 {
        let mut streams = lock(&self.streams);
        match streams.get(addr) {
            Some(Stream::Live(id)) => return *id,
            Some(Stream::Opening) => return 0,
            Some(Stream::Down(until)) if Instant::now() < *until => return 0,
            _ => {}
        }
        let Some(pool) = pool() else {
            streams.insert(
                addr.to_owned(),
                Stream::Down(Instant::now() + NEAR_STREAM_RETRY),
            );
            return 0;
        };
        streams.insert(addr.to_owned(), Stream::Opening);
        drop(streams);
        let near = Arc::downgrade(self);
        let closed = self.closed.subscribe();
        let addr = addr.to_owned();
        tokio::spawn(async move {
            let ended = tokio::select! {
                reason = run_stream(&near, &addr, pool, open_timeout) => reason,
                _ = wait_closed(closed) => return,
            };
            if let Some(near) = near.upgrade() {
                near.stream_ended(&addr, &ended);
            }
        });
        0
    }

    /// The stream to `addr` ended: stop lending its id, then drop everything.
    fn stream_ended(&self, addr: &str, reason: &str) {
        let was_live = matches!(
            lock(&self.streams).insert(
                addr.to_owned(),
                Stream::Down(Instant::now() + NEAR_STREAM_RETRY)
            ),
            Some(Stream::Live(_))
        );
        tracing::debug!(node = %addr, %reason, "near cache: invalidation stream ended");
        if was_live {
            observe::near_stream(false);
            // Nothing was lent from a stream that never came up.
            self.flush("stream");
        }
    }

    fn stream_live(&self, addr: &str, id: u64) {
        lock(&self.streams).insert(addr.to_owned(), Stream::Live(id));
        observe::near_stream(true);
    }

    /// Counters.
    pub(crate) fn stats(&self) -> NearCacheStats {
        let streams = lock(&self.streams)
            .values()
            .filter(|s| matches!(s, Stream::Live(_)))
            .count() as u64;
        NearCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            entries: self.cache.len() as u64,
            charged_bytes: self.cache.weight(),
            streams,
        }
    }
}

impl Drop for NearCache {
    fn drop(&mut self) {
        let live = lock(&self.streams)
            .values()
            .filter(|s| matches!(s, Stream::Live(_)))
            .count();
        for _ in 0..live {
            observe::near_stream(false);
        }
    }
}

async fn wait_closed(mut closed: tokio::sync::watch::Receiver<()>) {
    // Err: the sender (the cache) is gone.
    while closed.changed().await.is_ok() {}
}

/// Runs one invalidation stream until it ends; returns why.
async fn run_stream(
    near: &Weak<NearCache>,
    addr: &str,
    pool: Arc<NodePool>,
    open_timeout: Duration,
) -> String {
    let opened = tokio::time::timeout(
        open_timeout,
        pool.cache().invalidations(InvalidationsRequest {}),
    )
    .await;
    let mut stream = match opened {
        Err(_) => return format!("no answer within {open_timeout:?}"),
        Ok(Err(status)) => return Error::from_status(&status).to_string(),
        Ok(Ok(response)) => response.into_inner(),
    };
    let mut live = false;
    loop {
        let next = if live {
            stream.message().await
        } else {
            // The first batch (the tracking id) comes at once; a node that sends nothing is
            // given up on, so the stream is tried again later.
            match tokio::time::timeout(open_timeout, stream.message()).await {
                Ok(next) => next,
                Err(_) => return format!("no tracking id within {open_timeout:?}"),
            }
        };
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => return "the node ended the stream".to_owned(),
            Err(status) => return Error::from_status(&status).to_string(),
        };
        let Some(near) = near.upgrade() else {
            return "the client is gone".to_owned();
        };
        if !live {
            if batch.tracking_id == 0 {
                return "the node sent no tracking id".to_owned();
            }
            live = true;
            near.stream_live(addr, batch.tracking_id);
        }
        if batch.flush_all {
            near.flush("node");
        }
        for key in &batch.keys {
            near.invalidate(key);
        }
        if !batch.keys.is_empty() {
            near.invalidations
                .fetch_add(batch.keys.len() as u64, Ordering::Relaxed);
            observe::near_invalidations(batch.keys.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(max_entries: u64, max_bytes: u64, ttl: Duration) -> Arc<NearCache> {
        NearCache::new(
            NearCacheOptions {
                max_entries,
                max_bytes,
                ttl,
            },
            7,
        )
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn a_read_caches_unless_invalidated_or_flushed_while_in_flight() {
        let n = near(100, 1 << 20, Duration::from_secs(60));
        assert_eq!(n.lookup(b"k", 7), None);
        let t = n.begin(b"k", 7);
        assert!(n.finish(t, b("k"), Some(b("v1")), None, 7));
        assert_eq!(n.lookup(b"k", 7), Some(Some(b("v1"))));

        // An invalidation while a read is in flight: its (older) answer is not cached.
        let t = n.begin(b"k", 7);
        n.invalidate(b"k");
        assert_eq!(n.lookup(b"k", 7), None);
        assert!(!n.finish(t, b("k"), Some(b("v1")), None, 7));
        assert_eq!(n.lookup(b"k", 7), None);

        // A flush while a read is in flight.
        let t = n.begin(b"k", 7);
        n.flush("stream");
        assert!(!n.finish(t, b("k"), Some(b("v1")), None, 7));

        // Another key's invalidation in another stripe does not matter; a miss is cached too.
        let t = n.begin(b"gone", 7);
        assert!(n.finish(t, b("gone"), None, None, 7));
        assert_eq!(n.lookup(b"gone", 7), Some(None));
        let s = n.stats();
        assert_eq!((s.hits, s.entries, s.flushes), (2, 1, 1));
    }

    #[tokio::test]
    async fn a_topology_change_flushes_and_stops_reads_in_flight() {
        let n = near(100, 1 << 20, Duration::from_secs(60));
        let t = n.begin(b"k", 7);
        assert!(n.finish(t, b("k"), Some(b("v")), None, 7));
        let t = n.begin(b"k2", 7);
        assert_eq!(n.lookup(b"k", 8), None, "a new digest flushes");
        assert!(!n.finish(t, b("k2"), Some(b("v")), None, 8));
        assert_eq!(n.stats().flushes, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_live_no_longer_than_the_key_ttl_or_the_max_ttl() {
        let n = near(100, 1 << 20, Duration::from_secs(10));
        let t = n.begin(b"short", 7);
        tokio::time::advance(Duration::from_millis(40)).await;
        assert!(n.finish(t, b("short"), Some(b("v")), Some(100), 7));
        let t = n.begin(b"long", 7);
        assert!(n.finish(t, b("long"), Some(b("v")), None, 7));
        tokio::time::advance(Duration::from_millis(59)).await;
        assert!(n.lookup(b"short", 7).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            n.lookup(b"short", 7),
            None,
            "expired 100 ms after the read was sent"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(n.lookup(b"long", 7), None, "the max ttl");
        let t = n.begin(b"dead", 7);
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(!n.finish(t, b("dead"), Some(b("v")), Some(5), 7));
    }

    #[tokio::test]
    async fn entries_and_bytes_stay_bounded() {
        let n = near(10, 1 << 20, Duration::from_secs(60));
        for i in 0..1000 {
            let key = format!("k{i}");
            let t = n.begin(key.as_bytes(), 7);
            n.finish(t, b(&key), Some(b("v")), None, 7);
        }
        assert!(n.stats().entries <= 10, "{:?}", n.stats());
        let n = near(1000, 4096, Duration::from_secs(60));
        for i in 0..1000 {
            let key = format!("k{i}");
            let t = n.begin(key.as_bytes(), 7);
            n.finish(t, b(&key), Some(Bytes::from(vec![0u8; 500])), None, 7);
        }
        assert!(n.stats().charged_bytes <= 4096, "{:?}", n.stats());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn hits_misses_flushes_and_size_are_metrics() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let n = near(100, 1 << 20, Duration::from_secs(60));
        assert_eq!(n.lookup(b"k", 7), None);
        let t = n.begin(b"k", 7);
        assert!(n.finish(t, b("k"), Some(b("v")), None, 7));
        assert!(n.lookup(b"k", 7).is_some());
        assert!(n.lookup(b"k", 7).is_some());
        n.flush("stream");
        let metrics = snapshotter.snapshot().into_vec();
        let value = |name: &str| {
            metrics
                .iter()
                .find(|(key, ..)| key.key().name() == name)
                .map(|(.., value)| value)
        };
        assert_eq!(
            value(observe::catalog::NEAR_HITS.name),
            Some(&DebugValue::Counter(2))
        );
        assert_eq!(
            value(observe::catalog::NEAR_MISSES.name),
            Some(&DebugValue::Counter(1))
        );
        assert_eq!(
            value(observe::catalog::NEAR_FLUSHES.name),
            Some(&DebugValue::Counter(1))
        );
        assert!(value(observe::catalog::NEAR_ENTRIES.name).is_some());
        assert!(value(observe::catalog::NEAR_BYTES.name).is_some());
    }

    #[test]
    fn options_are_checked() {
        assert!(NearCacheOptions::default().check().is_ok());
        for bad in [
            NearCacheOptions {
                max_entries: 0,
                ..NearCacheOptions::default()
            },
            NearCacheOptions {
                max_entries: MAX_NEAR_ENTRIES + 1,
                ..NearCacheOptions::default()
            },
            NearCacheOptions {
                max_bytes: 0,
                ..NearCacheOptions::default()
            },
            NearCacheOptions {
                ttl: Duration::ZERO,
                ..NearCacheOptions::default()
            },
            NearCacheOptions {
                ttl: MAX_NEAR_TTL + Duration::from_secs(1),
                ..NearCacheOptions::default()
            },
        ] {
            assert!(
                matches!(bad.check(), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
