//! Near-cache tracking: which subscribed clients read which keys, so the key's next change can
//! tell them (`Cache.Invalidations`), like Redis CLIENT TRACKING in its default mode.
//!
//! A client opens an invalidation stream ([`Tracking::subscribe`]) and gets a tracking id; a
//! ONE-level read it sends with that id is remembered ([`Tracking::track`]) **before** the store
//! is read, and the store tells [`Tracking`] of every change of a key (it is the store's
//! [`KeyObserver`]) with the key's shard locked, so a read either sees the change or is told of
//! it. A key is sent once to each subscriber that read it and then forgotten (one-shot).
//!
//! Bounds: at most `max_keys` keys are remembered (a key pushed out is invalidated for its
//! readers, as Redis does), at most `max_subscribers` streams are open, and each stream has a
//! queue of at most `queue` keys: a queue that would overflow ends its stream with
//! RESOURCE_EXHAUSTED (the client then drops everything it read from this node). Nothing is ever
//! dropped silently. While nobody is subscribed the store does not call in at all.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::store::KeyObserver;

/// Default `--tracking-max-keys` (Redis's `tracking-table-max-keys`).
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// Default `--tracking-max-subscribers`.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 1024;
/// Default `--tracking-max-bytes`: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// Default `--tracking-queue-bytes`: 1 MiB.
pub const DEFAULT_QUEUE_BYTES: u64 = 1 << 20;
/// Upper bound of `--tracking-max-keys`.
pub const MAX_MAX_KEYS: usize = 100_000_000;
/// Upper bound of `--tracking-max-subscribers`.
pub const MAX_MAX_SUBSCRIBERS: usize = 65_536;
/// Bounds of `--tracking-max-bytes`: 1 MiB..=64 GiB.
pub const MIN_MAX_BYTES: u64 = 1 << 20;
/// Upper bound of `--tracking-max-bytes`.
pub const MAX_MAX_BYTES: u64 = 64 << 30;
/// Bounds of `--tracking-queue-bytes`: 1 KiB..=1 GiB.
pub const MIN_QUEUE_BYTES: u64 = 1 << 10;
/// Upper bound of `--tracking-queue-bytes`.
pub const MAX_QUEUE_BYTES: u64 = 1 << 30;
/// Bytes a remembered key is charged beside its own (map entry, reader list).
pub const TABLE_KEY_OVERHEAD: usize = 64;
/// Bytes each reader of a remembered key is charged.
pub const TABLE_READER_BYTES: usize = 8;
/// Bytes a queued key is charged beside its own.
pub const QUEUED_KEY_OVERHEAD: usize = 32;
/// Most keys one tracked read may push out of a full table.
const MAX_EVICTIONS_PER_READ: usize = 8;
/// Most key bytes in one invalidation batch (a batch holds at least one key).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A key's list of readers is pruned of closed streams once it is this long.
const PRUNE_AT: usize = 8;

/// The tracking bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackingConfig {
    /// Most keys remembered at once (all subscribers together).
    pub max_keys: usize,
    /// Most bytes of remembered keys (each charged [`TABLE_KEY_OVERHEAD`] more).
    pub max_bytes: u64,
    /// Most invalidation streams open at once.
    pub max_subscribers: usize,
    /// Most bytes of keys waiting in one stream's queue (each charged [`QUEUED_KEY_OVERHEAD`]
    /// more).
    pub queue_bytes: u64,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            max_keys: DEFAULT_MAX_KEYS,
            max_bytes: DEFAULT_MAX_BYTES,
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
            queue_bytes: DEFAULT_QUEUE_BYTES,
        }
    }
}

/// What a subscriber's stream sends next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Keys to drop, and whether to drop everything first.
    Batch {
        /// Drop everything read from this node.
        flush_all: bool,
        /// Drop these keys.
        keys: Vec<Bytes>,
    },
    /// The queue overflowed: end the stream with an error.
    Overflowed,
}

#[derive(Debug, Default)]
struct Queue {
    keys: VecDeque<Bytes>,
    bytes: usize,
    flush_all: bool,
    overflowed: bool,
}

/// One open invalidation stream.
#[derive(Debug)]
pub struct Subscriber {
    id: u64,
    capacity: usize,
    queue: Mutex<Queue>,
    notify: Notify,
}

impl Subscriber {
    /// The stream's tracking id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues `key`; false when the queue overflowed (now or before).
    fn push(&self, key: &[u8]) -> bool {
        let mut queue = self.queue.lock();
        if queue.overflowed {
            return false;
        }
        if queue.flush_all {
            // Everything goes anyway.
            return true;
        }
        let charge = key.len() + QUEUED_KEY_OVERHEAD;
        if queue.bytes + charge > self.capacity {
            queue.overflowed = true;
            queue.keys = VecDeque::new();
            queue.bytes = 0;
            drop(queue);
            self.notify.notify_one();
            return false;
        }
        queue.keys.push_back(Bytes::copy_from_slice(key));
        queue.bytes += charge;
        drop(queue);
        self.notify.notify_one();
        true
    }

    /// Queues "drop everything", which makes the queued keys moot.
    fn push_flush(&self) {
        let mut queue = self.queue.lock();
        queue.flush_all = true;
        queue.keys = VecDeque::new();
        queue.bytes = 0;
        drop(queue);
        self.notify.notify_one();
    }

    /// Waits for the next batch (at most [`MAX_BATCH_BYTES`] of keys, at least one key).
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut queue = self.queue.lock();
                if queue.overflowed {
                    return Next::Overflowed;
                }
                if queue.flush_all || !queue.keys.is_empty() {
                    let flush_all = std::mem::take(&mut queue.flush_all);
                    let mut keys = Vec::new();
                    let mut bytes = 0;
                    while let Some(key) = queue.keys.front() {
                        if !keys.is_empty() && bytes + key.len() > MAX_BATCH_BYTES {
                            break;
                        }
                        bytes += key.len();
                        keys.extend(queue.keys.pop_front());
                    }
                    queue.bytes = queue
                        .keys
                        .iter()
                        .map(|k| k.len() + QUEUED_KEY_OVERHEAD)
                        .sum();
                    return Next::Batch { flush_all, keys };
                }
            }
            self.notify.notified().await;
        }
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many invalidation streams open on this node (tracking_max_subscribers = {max})")]
pub struct TooManySubscribers {
    /// The limit.
    pub max: usize,
}

/// Counters of the tracking table, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackingStats {
    /// Open invalidation streams.
    pub subscribers: u64,
    /// Keys remembered.
    pub keys: u64,
    /// Bytes charged for the keys remembered.
    pub bytes: u64,
    /// Keys queued to subscribers (one per subscriber and key).
    pub invalidations: u64,
    /// Keys forgotten to stay within `max_keys` (their readers were told).
    pub evictions: u64,
    /// Streams ended because their queue overflowed.
    pub overflows: u64,
    /// Streams refused because `max_subscribers` were open.
    pub refused: u64,
}

/// The tracking table of one node.
#[derive(Debug)]
pub struct Tracking {
    config: TrackingConfig,
    /// On while anyone is subscribed.
    on: AtomicBool,
    /// The store's switch ([`crate::store::Store::observe`], shared with the lease table):
    /// tracking adds 1 to it while `on`.
    switch: Arc<AtomicUsize>,
    table: DashMap<Bytes, Vec<u64>>,
    keys: AtomicUsize,
    bytes: AtomicUsize,
    subscribers: DashMap<u64, Arc<Subscriber>>,
    /// Serialises subscribing and unsubscribing, so `on` follows the subscriber count.
    membership: Mutex<()>,
    invalidations: AtomicU64,
    evictions: AtomicU64,
    overflows: AtomicU64,
    refused: AtomicU64,
}

impl Tracking {
    /// An empty table with these bounds.
    pub fn new(config: TrackingConfig) -> Self {
        Self {
            config,
            on: AtomicBool::new(false),
            switch: Arc::new(AtomicUsize::new(0)),
            table: DashMap::new(),
            keys: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            subscribers: DashMap::new(),
            membership: Mutex::new(()),
            invalidations: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Shares the store's switch `switch` (non-zero while anyone wants to hear of changes)
    /// with the other observers; call before anyone subscribes.
    #[must_use]
    pub fn with_switch(mut self, switch: Arc<AtomicUsize>) -> Self {
        self.switch = switch;
        self
    }

    /// The switch the store checks before calling in (non-zero while anyone listens).
    pub fn switch(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.switch)
    }

    /// Whether anyone is subscribed.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The bounds.
    pub fn config(&self) -> TrackingConfig {
        self.config
    }

    /// Opens a stream: a new subscriber with a fresh non-zero id.
    pub fn subscribe(&self) -> Result<Arc<Subscriber>, TooManySubscribers> {
        let _membership = self.membership.lock();
        if self.subscribers.len() >= self.config.max_subscribers {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(TooManySubscribers {
                max: self.config.max_subscribers,
            });
        }
        // Random ids: a caller cannot guess another stream's id to spend its queue.
        let mut id = 0;
        for _ in 0..16 {
            id = rand::random::<u64>();
            if id != 0 && !self.subscribers.contains_key(&id) {
                break;
            }
        }
        let subscriber = Arc::new(Subscriber {
            id,
            capacity: usize::try_from(self.config.queue_bytes).unwrap_or(usize::MAX),
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
        });
        self.subscribers.insert(id, Arc::clone(&subscriber));
        if !self.on.swap(true, Ordering::SeqCst) {
            self.switch.fetch_add(1, Ordering::SeqCst);
        }
        Ok(subscriber)
    }

    /// Closes a stream. Keys it read are forgotten lazily (when they change or are pushed out).
    pub fn unsubscribe(&self, id: u64) {
        let _membership = self.membership.lock();
        self.subscribers.remove(&id);
        if self.subscribers.is_empty() {
            if self.on.swap(false, Ordering::SeqCst) {
                self.switch.fetch_sub(1, Ordering::SeqCst);
            }
            // Nobody listens: nothing remembered can matter any more.
            self.table.clear();
            self.keys.store(0, Ordering::Relaxed);
            self.bytes.store(0, Ordering::Relaxed);
        }
    }

    /// Remembers that stream `id` reads `key`; call before reading the store. False when `id`
    /// is not an open stream of this node (0 included): the read is served but not tracked.
    pub fn track(&self, id: u64, key: &[u8]) -> bool {
        if id == 0 || !self.on.load(Ordering::Relaxed) || !self.subscribers.contains_key(&id) {
            return false;
        }
        let added = match self.table.entry(Bytes::copy_from_slice(key)) {
            Entry::Occupied(mut readers) => {
                let readers = readers.get_mut();
                if !readers.contains(&id) {
                    if readers.len() >= PRUNE_AT {
                        let before = readers.len();
                        readers.retain(|r| self.subscribers.contains_key(r));
                        saturating_sub(&self.bytes, (before - readers.len()) * TABLE_READER_BYTES);
                    }
                    readers.push(id);
                    self.bytes.fetch_add(TABLE_READER_BYTES, Ordering::Relaxed);
                }
                false
            }
            Entry::Vacant(vacant) => {
                vacant.insert(vec![id]);
                true
            }
        };
        if added {
            self.keys.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(
                key.len() + TABLE_KEY_OVERHEAD + TABLE_READER_BYTES,
                Ordering::Relaxed,
            );
            let max_bytes = usize::try_from(self.config.max_bytes).unwrap_or(usize::MAX);
            for _ in 0..MAX_EVICTIONS_PER_READ {
                if self.keys.load(Ordering::Relaxed) <= self.config.max_keys
                    && self.bytes.load(Ordering::Relaxed) <= max_bytes
                {
                    break;
                }
                self.evict_one(key);
            }
        }
        true
    }

    /// A read with tracking id `id` that this node did not track (forwarded, or not at ONE):
    /// tells the stream to drop whatever it caches for `key`.
    pub fn untracked(&self, id: u64, key: &[u8]) {
        if id == 0 {
            return;
        }
        if let Some(subscriber) = self.subscribers.get(&id).map(|s| Arc::clone(&s)) {
            self.send(&subscriber, key);
        }
    }

    /// Forgets one key other than `keep` (or `keep` if it is the only one) and tells its readers.
    fn evict_one(&self, keep: &[u8]) {
        let victim = self
            .table
            .iter()
            .map(|entry| entry.key().clone())
            .find(|key| key.as_ref() != keep)
            .unwrap_or_else(|| Bytes::copy_from_slice(keep));
        if self.forget(&victim) {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets `key` and tells its readers; false when it was not remembered.
    fn forget(&self, key: &[u8]) -> bool {
        let Some((key, readers)) = self.table.remove(key) else {
            return false;
        };
        saturating_sub(&self.keys, 1);
        saturating_sub(
            &self.bytes,
            key.len() + TABLE_KEY_OVERHEAD + readers.len() * TABLE_READER_BYTES,
        );
        for id in readers {
            if let Some(subscriber) = self.subscribers.get(&id).map(|s| Arc::clone(&s)) {
                self.send(&subscriber, &key);
            }
        }
        true
    }

    fn send(&self, subscriber: &Subscriber, key: &[u8]) {
        if subscriber.push(key) {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        } else {
            self.overflowed(subscriber);
        }
    }

    /// Ends an overflowed stream's subscription at once (its stream ends with an error).
    fn overflowed(&self, subscriber: &Subscriber) {
        if self.subscribers.remove(&subscriber.id).is_some() {
            self.overflows.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Current counters.
    pub fn stats(&self) -> TrackingStats {
        TrackingStats {
            subscribers: self.subscribers.len() as u64,
            keys: self.keys.load(Ordering::Relaxed) as u64,
            bytes: self.bytes.load(Ordering::Relaxed) as u64,
            invalidations: self.invalidations.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            overflows: self.overflows.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Lowers a counter, never below 0 (a flush may have zeroed it while an entry was on its way
/// out).
fn saturating_sub(counter: &AtomicUsize, n: usize) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

impl KeyObserver for Tracking {
    fn changed(&self, key: &[u8]) {
        self.forget(key);
    }

    fn flushed(&self) {
        self.table.clear();
        self.keys.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        let subscribers: Vec<Arc<Subscriber>> =
            self.subscribers.iter().map(|s| Arc::clone(&s)).collect();
        for subscriber in subscribers {
            subscriber.push_flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `queue`: keys of up to 8 bytes the queue holds.
    fn tracking(max_keys: usize, max_subscribers: usize, queue: usize) -> Tracking {
        Tracking::new(TrackingConfig {
            max_keys,
            max_bytes: DEFAULT_MAX_BYTES,
            max_subscribers,
            queue_bytes: (queue * (8 + QUEUED_KEY_OVERHEAD)) as u64,
        })
    }

    async fn batch(subscriber: &Subscriber) -> Next {
        tokio::time::timeout(std::time::Duration::from_secs(5), subscriber.next())
            .await
            .expect("a batch is queued")
    }

    fn keys(list: &[&str]) -> Vec<Bytes> {
        list.iter()
            .map(|k| Bytes::copy_from_slice(k.as_bytes()))
            .collect()
    }

    #[tokio::test]
    async fn a_change_tells_each_reader_once_then_forgets_it() {
        let t = tracking(100, 4, 100);
        let a = t.subscribe().unwrap();
        let b = t.subscribe().unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(t.switch().load(Ordering::Relaxed), 1);
        assert!(t.track(a.id(), b"k"));
        assert!(t.track(b.id(), b"k"));
        assert!(t.track(a.id(), b"k"), "a second read is one entry");
        assert!(!t.track(0, b"k"), "0 is untracked");
        assert!(!t.track(12345, b"k"), "an unknown id is untracked");
        t.changed(b"k");
        t.changed(b"k");
        t.changed(b"other");
        let one = Next::Batch {
            flush_all: false,
            keys: keys(&["k"]),
        };
        assert_eq!(batch(&a).await, one);
        assert_eq!(batch(&b).await, one);
        assert_eq!(t.stats().invalidations, 2);
        assert_eq!(t.stats().keys, 0);
        t.unsubscribe(a.id());
        t.unsubscribe(b.id());
        assert_eq!(t.switch().load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn the_table_bound_pushes_out_a_key_and_tells_its_readers() {
        let t = tracking(2, 4, 100);
        let a = t.subscribe().unwrap();
        for key in ["a", "b", "c"] {
            assert!(t.track(a.id(), key.as_bytes()));
        }
        assert_eq!(t.stats().keys, 2);
        assert_eq!(t.stats().evictions, 1);
        let Next::Batch { flush_all, keys } = batch(&a).await else {
            panic!("a batch")
        };
        assert!(!flush_all);
        assert_eq!(keys.len(), 1);
        assert_ne!(keys[0], Bytes::from_static(b"c"), "the new key stays");
    }

    #[tokio::test]
    async fn the_byte_bound_pushes_out_keys_too() {
        let t = Tracking::new(TrackingConfig {
            max_bytes: (3 * (100 + TABLE_KEY_OVERHEAD + TABLE_READER_BYTES)) as u64,
            ..TrackingConfig::default()
        });
        let a = t.subscribe().unwrap();
        for i in 0..10u8 {
            assert!(t.track(a.id(), &[i; 100]));
        }
        let stats = t.stats();
        assert_eq!(stats.keys, 3, "{stats:?}");
        assert_eq!(
            stats.bytes,
            (3 * (100 + TABLE_KEY_OVERHEAD + TABLE_READER_BYTES)) as u64
        );
        assert_eq!(stats.evictions, 7);
    }

    #[tokio::test]
    async fn the_subscriber_bound_refuses_more_streams() {
        let t = tracking(10, 2, 10);
        let a = t.subscribe().unwrap();
        let _b = t.subscribe().unwrap();
        assert_eq!(t.subscribe().unwrap_err(), TooManySubscribers { max: 2 });
        assert_eq!(t.stats().refused, 1);
        t.unsubscribe(a.id());
        assert!(t.subscribe().is_ok());
    }

    #[tokio::test]
    async fn an_overflowing_queue_ends_the_stream_never_drops_silently() {
        let t = tracking(100, 4, 2);
        let a = t.subscribe().unwrap();
        for key in ["a", "b", "c"] {
            assert!(t.track(a.id(), key.as_bytes()));
        }
        for key in ["a", "b", "c"] {
            t.changed(key.as_bytes());
        }
        assert_eq!(batch(&a).await, Next::Overflowed);
        assert_eq!(t.stats().overflows, 1);
        assert!(
            !t.track(a.id(), b"a"),
            "an overflowed stream tracks nothing more"
        );
    }

    #[tokio::test]
    async fn a_flush_replaces_queued_keys_and_forgets_everything() {
        let t = tracking(100, 4, 100);
        let a = t.subscribe().unwrap();
        assert!(t.track(a.id(), b"a"));
        t.changed(b"a");
        assert!(t.track(a.id(), b"b"));
        t.flushed();
        assert_eq!(
            batch(&a).await,
            Next::Batch {
                flush_all: true,
                keys: vec![]
            }
        );
        assert_eq!(t.stats().keys, 0);
    }

    #[tokio::test]
    async fn closed_streams_are_pruned_from_a_key_readers() {
        let t = tracking(100, 4, 100);
        let live = t.subscribe().unwrap();
        assert!(t.track(live.id(), b"k"));
        for _ in 0..100 {
            let s = t.subscribe().unwrap();
            assert!(t.track(s.id(), b"k"));
            t.unsubscribe(s.id());
        }
        let readers = t.table.get(&b"k"[..]).map(|r| r.len()).unwrap();
        assert!(readers <= PRUNE_AT + 1, "{readers} readers");
    }

    #[tokio::test]
    async fn a_batch_holds_a_bounded_number_of_key_bytes() {
        let t = tracking(100_000, 4, 100_000);
        let a = t.subscribe().unwrap();
        let key = vec![b'x'; 1024];
        for i in 0..300u32 {
            let mut k = key.clone();
            k.extend_from_slice(&i.to_be_bytes());
            t.untracked(a.id(), &k);
        }
        let Next::Batch { keys, .. } = batch(&a).await else {
            panic!("a batch")
        };
        let bytes: usize = keys.iter().map(Bytes::len).sum();
        assert!(bytes <= MAX_BATCH_BYTES && keys.len() < 300, "{bytes}");
    }
}
