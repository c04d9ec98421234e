//! The local storage engine of one node: a sharded in-memory map of byte-string keys to values, with
//! versions, TTLs, memory accounting and eviction.
//!
//! **Invariant:** the store does no I/O and never reads the clock. Every operation takes `now_ms`
//! (unix milliseconds) from its caller, which is what lets tests drive TTLs and versions by hand.
//!
//! Layout: `shards` (a power of two) each behind its own `RwLock`. A key's hash slot picks its shard
//! (`slot % shards`) and its hash picks its place in that shard's index (`shard.rs`). Each item is
//! one allocation (`entry.rs`). Reads take the read lock, set the entry's CLOCK bit atomically and
//! clone the entry pointer; writes take the write lock of one shard at a time and never hold two
//! shard locks at once (eviction in other shards uses `try_write`), so there is no lock order to
//! get wrong.
//!
//! Memory: every entry is charged its allocation as the allocator serves it plus its share of the
//! shard index and slab ([`charge`]) against one global `max_memory` budget. Under
//! [`EvictionPolicy::Clock`] a write that would exceed it first drops expired entries, then CLOCK
//! victims of its own shard, then of the others, before it is stored, so the accounted total never
//! exceeds the limit; under [`EvictionPolicy::NoEviction`] it fails with
//! [`StoreError::MemoryFull`] and nothing changes.
//!
//! TTL: an expired entry is invisible at once (checked on every access) and reclaimed later by
//! [`Store::reclaim_expired`], which the node calls from a background task; it pops entries from a
//! per-shard expiry index in deadline order and never scans the map.

mod entry;
pub mod hlc;
mod shard;
mod update;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::RwLock;
use ringcache_proto::placement::{SLOTS, key_slot};

pub use entry::{INDEX_BYTES_PER_ENTRY, MAX_EXPIRY_MS, MAX_KEY_LEN, allocation_bytes, charge};
pub use hlc::{ClockDrift, Hlc};
pub use update::{
    ExpireCondition, ExpireOutcome, Expiry, GetExOutcome, MAX_FLOAT_TEXT_BYTES, format_float,
    parse_float,
};

use entry::Entry;
use shard::Shard;

/// What the store does when a write would exceed `max_memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvictionPolicy {
    /// Evict entries not used recently (CLOCK, one shard at a time) until the write fits.
    #[default]
    Clock,
    /// Refuse the write with [`StoreError::MemoryFull`].
    NoEviction,
}

impl EvictionPolicy {
    /// The name used in config files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clock => "clock",
            Self::NoEviction => "noeviction",
        }
    }
}

/// Told of every change of a key in the store, whatever its path (client writes, replication,
/// repair, rebalancing, eviction, expiry reclaim, flushes): the near-cache tracking table
/// ([`crate::tracking`]) and the lease table ([`crate::lease`]), through one fan-out
/// (`crate::observers`). Called with the key's shard locked, so it must not touch the store (it
/// may take locks of its own that are never held while a store lock is taken).
pub trait KeyObserver: Send + Sync + std::fmt::Debug {
    /// `key` may change: called at the start of every mutation of `key`, before the store
    /// decides anything. It may be told of a key that did not change (a write whose condition
    /// failed, a copy refused as older), never left untold of one that did.
    fn changed(&self, key: &[u8]);
    /// A write of `key` landed: a value or a delete (tombstone or removal) is in the store now,
    /// whatever the path (a client write, replication, hints, read repair, anti-entropy,
    /// rebalancing, snapshot load). Called under the shard lock after the change, only when
    /// something was stored or removed; never for eviction, expiry reclaim, hand-off drops or
    /// flushes. The default does nothing.
    fn written(&self, key: &[u8]) {
        let _ = key;
    }
    /// Many keys may have changed (a flush).
    fn flushed(&self);
}

/// The observer of a store and the switch that says whether it wants to hear anything: while
/// zero (nobody subscribed to invalidations, no lease held), a write costs two relaxed loads of
/// it (before and after the change) more than without an observer. Each party interested adds
/// to it while it is (tracking: 1 while a stream is open; leases: 1 per lease held).
#[derive(Debug)]
struct Observer {
    on: Arc<AtomicUsize>,
    sink: Arc<dyn KeyObserver>,
}

/// Limits and sizing of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Upper bound on the bytes charged for all entries.
    pub max_memory_bytes: usize,
    /// What to do when a write would exceed `max_memory_bytes`.
    pub eviction: EvictionPolicy,
    /// Longest key accepted, in bytes; at most [`MAX_KEY_LEN`] (larger values are lowered to it).
    pub max_key_bytes: usize,
    /// Longest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Longest TTL accepted, in milliseconds.
    pub max_ttl_ms: u64,
    /// Number of shards; rounded up to a power of two, at least 1 and at most [`SLOTS`] (a shard
    /// holds whole hash slots: slot `s` lives in shard `s % shards`).
    pub shards: usize,
    /// How long a delete is remembered as a tombstone (ms), so a late replica write older than
    /// the delete cannot bring the key back; 0 removes deleted keys at once (a lone node).
    pub tombstone_grace_ms: u64,
    /// How far ahead of this node's wall clock a version decided elsewhere ([`Store::apply`])
    /// may be (ms). A version further ahead is refused with [`StoreError::ClockDrift`]: taken
    /// in, it would move this node's clock forward and make every later local write lose
    /// last-writer-wins against it.
    pub max_clock_drift_ms: u64,
}

/// Default [`StoreConfig::max_clock_drift_ms`]: one minute.
pub const DEFAULT_MAX_CLOCK_DRIFT_MS: u64 = 60_000;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_memory_bytes: 1 << 30,
            eviction: EvictionPolicy::Clock,
            max_key_bytes: 8 * 1024,
            max_value_bytes: 4 * 1024 * 1024,
            max_ttl_ms: 10 * 365 * 24 * 3600 * 1000,
            shards: 64,
            tombstone_grace_ms: 0,
            max_clock_drift_ms: DEFAULT_MAX_CLOCK_DRIFT_MS,
        }
    }
}

/// Why a store operation was refused. Unless a variant says otherwise, nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The key was empty.
    #[error("key must not be empty")]
    EmptyKey,
    /// The key was longer than `max_key_bytes`.
    #[error("key is {len} bytes, more than max_key_bytes ({max})")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value was longer than `max_value_bytes`.
    #[error("value is {len} bytes, more than max_value_bytes ({max})")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The TTL was zero or longer than `max_ttl`.
    #[error("ttl of {ttl_ms} ms is out of range (1..={max_ttl_ms} ms)")]
    InvalidTtl {
        /// The TTL asked for.
        ttl_ms: u64,
        /// The limit.
        max_ttl_ms: u64,
    },
    /// Incr on a value that is not a decimal signed 64-bit integer.
    #[error("value is not a 64-bit signed decimal integer")]
    NotAnInteger,
    /// IncrByFloat on a value (or with an increment) that is not a decimal number.
    #[error("value is not a valid float")]
    NotAFloat,
    /// IncrByFloat would store NaN or an infinity.
    #[error("increment would produce NaN or Infinity")]
    NotFinite,
    /// Incr would overflow a signed 64-bit integer.
    #[error("increment of {current} by {delta} overflows a 64-bit signed integer")]
    Overflow {
        /// The stored value.
        current: i64,
        /// The delta asked for.
        delta: i64,
    },
    /// Compare-and-set found another version than expected.
    #[error("version mismatch: expected {expected}, current {}", fmt_version(*.current))]
    CasConflict {
        /// The version the request expected (0: key absent).
        expected: u64,
        /// The key's current version, `None` when it does not exist.
        current: Option<u64>,
    },
    /// The write needs more memory than `max_memory` allows and nothing can be evicted for it.
    #[error("memory full: {needed} more bytes needed, {used} of max_memory {max} in use{}",
        if *.policy == EvictionPolicy::NoEviction { " (eviction policy is noeviction)" } else { "" })]
    MemoryFull {
        /// Bytes the write needed.
        needed: usize,
        /// Bytes charged when it was refused.
        used: usize,
        /// The limit.
        max: usize,
        /// The eviction policy in force.
        policy: EvictionPolicy,
    },
    /// A version decided elsewhere was further ahead of this node's clock than
    /// `max_clock_drift` allows; nothing was stored and the clock did not move.
    #[error(transparent)]
    ClockDrift(#[from] ClockDrift),
}

fn fmt_version(version: Option<u64>) -> String {
    version.map_or_else(|| "none (key absent)".to_owned(), |v| v.to_string())
}

/// A value read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The value (shares the entry's memory; no copy).
    pub value: Bytes,
    /// Its version.
    pub version: u64,
    /// When it expires (unix ms), `None` if never.
    pub expires_at_ms: Option<u64>,
}

/// What a node holds for a key, tombstones included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedItem {
    /// The value; `None` for a tombstone (the key was deleted at `version`).
    pub value: Option<Bytes>,
    /// The version of the write or delete.
    pub version: u64,
    /// When the value expires or the tombstone is dropped (unix ms); `None` if never.
    pub expires_at_ms: Option<u64>,
}

/// One copy of a key as [`copy_order`] compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyRef<'a> {
    /// The version of the write or delete.
    pub version: u64,
    /// The value; `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    /// When the value expires (unix ms), `None` if never; ignored for tombstones.
    pub expires_at_ms: Option<u64>,
}

/// The order of two copies of one key: the rule every replica applies, so that replicas that
/// saw the same writes in any order keep the same copy (last writer wins).
///
/// The higher version wins. Two different copies with the same version (two coordinators
/// stamping the same instant) are ordered by content, as Cassandra breaks timestamp ties: a
/// value beats a tombstone, then the greater value bytes win, then the later expiry (a value
/// that never expires is latest). Two tombstones of one version are equal whatever their
/// clean-up time. Only copies equal in every part compare `Equal`, so no two different writes
/// tie.
pub fn copy_order(a: CopyRef<'_>, b: CopyRef<'_>) -> std::cmp::Ordering {
    let expiry = |c: &CopyRef<'_>| match c.value {
        Some(_) => c.expires_at_ms.map_or(u64::MAX, |at| at.min(MAX_EXPIRY_MS)),
        None => 0,
    };
    a.version
        .cmp(&b.version)
        .then_with(|| a.value.cmp(&b.value))
        .then_with(|| expiry(&a).cmp(&expiry(&b)))
}

impl VersionedItem {
    /// This item as [`copy_order`] compares it.
    pub fn as_copy(&self) -> CopyRef<'_> {
        CopyRef {
            version: self.version,
            value: self.value.as_deref(),
            expires_at_ms: self.expires_at_ms,
        }
    }

    fn of(entry: &Entry) -> Self {
        Self {
            value: (!entry.is_tombstone()).then(|| entry.value_bytes()),
            version: entry.version(),
            expires_at_ms: entry.expires_at(),
        }
    }

    /// Whether this is a readable value at `now_ms` (not a tombstone, not expired).
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.expires_at_ms.is_none_or(|at| at > now_ms)
    }
}

/// When a `set` takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetCondition {
    /// Always.
    #[default]
    Always,
    /// Only when the key does not exist.
    IfAbsent,
    /// Only when the key exists.
    IfPresent,
}

/// Options of a `set`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetOptions {
    /// Time to live in ms; `None` means never expire (unless `keep_ttl` or `expires_at_ms`).
    pub ttl_ms: Option<u64>,
    /// Absolute expiry (unix ms), used instead of `ttl_ms`. A time at or before `now_ms`
    /// deletes the key instead of storing the value (it would be expired at once); the
    /// outcome still says stored.
    pub expires_at_ms: Option<u64>,
    /// Keep the key's current expiry (Redis KEEPTTL); wins over `ttl_ms` and `expires_at_ms`.
    pub keep_ttl: bool,
    /// When the write takes effect.
    pub condition: SetCondition,
    /// Return the value the key held before.
    pub return_previous: bool,
}

/// What a `set` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetOutcome {
    /// The new version, `None` when the condition did not hold and nothing was stored.
    pub version: Option<u64>,
    /// The previous value, when asked for and the key existed.
    pub previous: Option<Bytes>,
}

/// A key's remaining lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The key does not exist.
    Missing,
    /// The key exists and never expires.
    Persistent,
    /// The key expires in this many ms.
    ExpiresIn(u64),
}

/// Counters and gauges of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries held (including expired ones not yet reclaimed).
    pub keys: u64,
    /// Bytes charged against `max_memory`.
    pub used_bytes: u64,
    /// Reads that found a live key.
    pub hits: u64,
    /// Reads that did not.
    pub misses: u64,
    /// Entries evicted to stay under `max_memory`.
    pub evictions: u64,
    /// Entries removed because they expired.
    pub expirations: u64,
    /// Tombstones evicted before their grace ran out (their versions stay as a floor for late
    /// copies of the keys, so none can revive one).
    pub tombstones_evicted: u64,
}

/// One shard with its lock and the counters updated under a read lock, padded to its own cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct ShardSlot {
    lock: RwLock<Shard>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
    tombstones_evicted: AtomicU64,
}

/// The local key-value engine. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct Store {
    /// Shard `i` holds the keys of the hash slots `s` with `s % shards.len() == i`.
    shards: Box<[ShardSlot]>,
    hasher: hashbrown::DefaultHashBuilder,
    config: StoreConfig,
    hlc: Hlc,
    used_bytes: AtomicUsize,
    /// The version of the last cluster-wide flush ([`Store::flush_through`]): a write decided
    /// elsewhere at or below it is refused by [`Store::apply`], so nothing flushed comes back
    /// through replication, hints, anti-entropy or rebalancing.
    flush_floor: AtomicU64,
    /// Whether deletes must leave tombstones: true unless the node is known to be the only
    /// member that ever held data (see [`Store::set_tombstones_needed`]).
    tombstones_needed: AtomicBool,
    /// How long (ms) an expired value is kept for [`Store::get_or_stale`] (serve-stale); 0: off,
    /// expired entries are reclaimed as soon as the expiry task sees them.
    serve_stale_ms: u64,
    /// Told of every change while its switch is on ([`Store::observe`]).
    observer: OnceLock<Observer>,
}

/// Where a walk of one hash slot's entries resumes ([`Store::scan_slot`]); the default starts
/// at the beginning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCursor {
    /// The shard whose chain of the slot is being walked (the slot's owner; past the last
    /// shard: done; before the owner: not started).
    shard: usize,
    /// The next slab position in it and the shard's generation then; `None`: its first.
    at: Option<(u32, u64)>,
    /// How many times this shard's walk restarted because its next entry went away.
    restarts: u8,
}

/// Restarts of one shard's walk in [`Store::scan_slot`] before the rest of it is taken in one
/// step.
pub const MAX_SLOT_RESTARTS: u8 = 3;

/// Where a key lives.
#[derive(Clone, Copy)]
struct Place {
    hash: u64,
    shard: usize,
}

impl Store {
    /// An empty store.
    pub fn new(mut config: StoreConfig) -> Self {
        config.shards = config
            .shards
            .clamp(1, usize::from(SLOTS))
            .next_power_of_two();
        config.max_key_bytes = config.max_key_bytes.min(MAX_KEY_LEN);
        let shard_bits = config.shards.trailing_zeros();
        let shard = || ShardSlot {
            lock: RwLock::new(Shard::new(shard_bits)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
            tombstones_evicted: AtomicU64::new(0),
        };
        Self {
            shards: (0..config.shards).map(|_| shard()).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            config,
            hlc: Hlc::new(),
            used_bytes: AtomicUsize::new(0),
            flush_floor: AtomicU64::new(0),
            tombstones_needed: AtomicBool::new(true),
            serve_stale_ms: 0,
            observer: OnceLock::new(),
        }
    }

    /// Installs the observer told of every change while `on` is non-zero (once; a second call
    /// is ignored and returns false).
    pub fn observe(&self, on: Arc<AtomicUsize>, sink: Arc<dyn KeyObserver>) -> bool {
        self.observer.set(Observer { on, sink }).is_ok()
    }

    /// Tells the observer `key` may have changed (the caller holds the key's shard lock).
    #[inline]
    fn changed(&self, key: &[u8]) {
        if let Some(observer) = self.observer.get()
            && observer.on.load(Ordering::Relaxed) != 0
        {
            observer.sink.changed(key);
        }
    }

    /// Tells the observer a write of `key` landed (the caller holds the key's shard lock, and
    /// the change is made).
    #[inline]
    fn written(&self, key: &[u8]) {
        if let Some(observer) = self.observer.get()
            && observer.on.load(Ordering::Relaxed) != 0
        {
            observer.sink.written(key);
        }
    }

    /// Tells the observer many keys may have changed.
    fn flushed(&self) {
        if let Some(observer) = self.observer.get()
            && observer.on.load(Ordering::Relaxed) != 0
        {
            observer.sink.flushed();
        }
    }

    /// Keeps expired values readable through [`Store::get_or_stale`] for `ms` after they
    /// expire (serve-stale): [`Store::reclaim_expired`] leaves them until then. They stay
    /// charged against `max_memory` and are eviction's first victims like any expired entry.
    #[must_use]
    pub fn with_serve_stale_ms(mut self, ms: u64) -> Self {
        self.serve_stale_ms = ms;
        self
    }

    /// The serve-stale window in milliseconds (0: off).
    pub fn serve_stale_ms(&self) -> u64 {
        self.serve_stale_ms
    }

    /// The limits this store enforces.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The node's hybrid logical clock.
    pub fn hlc(&self) -> &Hlc {
        &self.hlc
    }

    fn hash_key(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn place(&self, key: &[u8]) -> Place {
        let hash = self.hash_key(key);
        let shard = self.shard_of_slot(key_slot(key));
        Place { hash, shard }
    }

    /// The shard that holds the keys of hash slot `slot`.
    fn shard_of_slot(&self, slot: u16) -> usize {
        usize::from(slot) & (self.shards.len() - 1)
    }

    /// Checks a key against the limits.
    pub fn check_key(&self, key: &[u8]) -> Result<(), StoreError> {
        if key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        if key.len() > self.config.max_key_bytes {
            return Err(StoreError::KeyTooLarge {
                len: key.len(),
                max: self.config.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Checks a value against the limits.
    pub fn check_value(&self, value: &[u8]) -> Result<(), StoreError> {
        if value.len() > self.config.max_value_bytes {
            return Err(StoreError::ValueTooLarge {
                len: value.len(),
                max: self.config.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Checks a TTL and turns it into an absolute deadline.
    pub fn expiry_for(&self, ttl_ms: Option<u64>, now_ms: u64) -> Result<Option<u64>, StoreError> {
        match ttl_ms {
            None => Ok(None),
            Some(ttl_ms) if ttl_ms == 0 || ttl_ms > self.config.max_ttl_ms => {
                Err(StoreError::InvalidTtl {
                    ttl_ms,
                    max_ttl_ms: self.config.max_ttl_ms,
                })
            }
            Some(ttl_ms) => Ok(Some(now_ms.saturating_add(ttl_ms))),
        }
    }

    /// Reads a key. Expired keys are misses.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Result<Option<Item>, StoreError> {
        self.check_key(key)?;
        let place = self.place(key);
        let slot = &self.shards[place.shard];
        let found = {
            let shard = slot.lock.read();
            shard.find(place.hash, key).and_then(|s| {
                let entry = shard.entry(s);
                if !entry.is_live(now_ms) {
                    None
                } else {
                    entry.touch();
                    Some(entry.clone())
                }
            })
        };
        match found {
            Some(entry) => {
                slot.hits.fetch_add(1, Ordering::Relaxed);
                Ok(Some(Item {
                    value: entry.value_bytes(),
                    version: entry.version(),
                    expires_at_ms: entry.expires_at(),
                }))
            }
            None => {
                slot.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Reads a key for GetOrLease: a live value as `(item, false)`; with serve-stale on, a value
    /// that expired less than `serve_stale_ms` ago as `(item, true)`; else `None`. Counts a hit
    /// or a miss like [`Store::get`] (a stale value is a miss).
    pub fn get_or_stale(
        &self,
        key: &[u8],
        now_ms: u64,
    ) -> Result<Option<(Item, bool)>, StoreError> {
        if self.serve_stale_ms == 0 {
            return Ok(self.get(key, now_ms)?.map(|item| (item, false)));
        }
        self.check_key(key)?;
        let place = self.place(key);
        let slot = &self.shards[place.shard];
        let found = {
            let shard = slot.lock.read();
            shard.find(place.hash, key).and_then(|s| {
                let entry = shard.entry(s);
                if entry.is_tombstone() {
                    return None;
                }
                let live = entry.is_live(now_ms);
                let fresh_enough = live
                    || entry
                        .expires_at()
                        .is_some_and(|at| at.saturating_add(self.serve_stale_ms) > now_ms);
                fresh_enough.then(|| {
                    entry.touch();
                    (entry.clone(), !live)
                })
            })
        };
        let counter = match &found {
            Some((_, false)) => &slot.hits,
            _ => &slot.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(found.map(|(entry, stale)| {
            (
                Item {
                    value: entry.value_bytes(),
                    version: entry.version(),
                    expires_at_ms: entry.expires_at(),
                },
                stale,
            )
        }))
    }

    /// Reads several keys; `result[i]` answers `keys[i]`. All keys are checked before any is read.
    pub fn mget<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        now_ms: u64,
    ) -> Result<Vec<Option<Item>>, StoreError> {
        for key in keys {
            self.check_key(key.as_ref())?;
        }
        keys.iter()
            .map(|key| self.get(key.as_ref(), now_ms))
            .collect()
    }

    /// Stores a value.
    pub fn set(
        &self,
        key: &[u8],
        value: &[u8],
        options: SetOptions,
        now_ms: u64,
    ) -> Result<SetOutcome, StoreError> {
        self.check_key(key)?;
        self.check_value(value)?;
        let expiry = match options.expires_at_ms {
            Some(at) => self.deadline(Expiry::At(at), now_ms)?,
            None => self.expiry_for(options.ttl_ms, now_ms)?,
        };
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let slot = shard.find(place.hash, key);
        let live = slot.map(|s| shard.entry(s)).filter(|e| e.is_live(now_ms));
        let previous = if options.return_previous {
            live.map(Entry::value_bytes)
        } else {
            None
        };
        let allowed = match options.condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => live.is_none(),
            SetCondition::IfPresent => live.is_some(),
        };
        if !allowed {
            return Ok(SetOutcome {
                version: None,
                previous,
            });
        }
        let expires_at = if options.keep_ttl {
            live.and_then(Entry::expires_at)
        } else {
            expiry
        };
        if expires_at.is_some_and(|at| at <= now_ms) {
            // Stored and expired at once: what is left is the key's deletion.
            let (_, version) = self.remove_locked(&mut shard, place, slot, key, now_ms)?;
            let version = version.unwrap_or_else(|| self.hlc.next_after(now_ms, 0));
            return Ok(SetOutcome {
                version: Some(version),
                previous,
            });
        }
        let version = self.write(&mut shard, place, slot, key, value, expires_at, now_ms)?;
        Ok(SetOutcome {
            version: Some(version),
            previous,
        })
    }

    /// Stores several pairs with the same TTL; returns their versions in order. All inputs are
    /// checked before anything is stored; a memory error part way leaves the earlier pairs stored.
    pub fn mset<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        entries: &[(K, V)],
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        for (key, value) in entries {
            self.check_key(key.as_ref())?;
            self.check_value(value.as_ref())?;
        }
        self.expiry_for(ttl_ms, now_ms)?;
        let options = SetOptions {
            ttl_ms,
            ..SetOptions::default()
        };
        entries
            .iter()
            .map(|(key, value)| {
                let outcome = self.set(key.as_ref(), value.as_ref(), options, now_ms)?;
                Ok(outcome.version.expect("an unconditional set always stores"))
            })
            .collect()
    }

    /// Removes a key; says whether a live key was removed. With a tombstone grace period the key
    /// is replaced by a tombstone carrying a new version (see [`Store::delete_versioned`]).
    pub fn delete(&self, key: &[u8], now_ms: u64) -> Result<bool, StoreError> {
        Ok(self.delete_versioned(key, now_ms)?.0)
    }

    /// Removes a key and returns whether a live key was removed and the version of the delete
    /// (`None` when nothing was recorded: no tombstones, or nothing to delete).
    pub fn delete_versioned(
        &self,
        key: &[u8],
        now_ms: u64,
    ) -> Result<(bool, Option<u64>), StoreError> {
        self.check_key(key)?;
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let found = shard.find(place.hash, key);
        let (removed, version) = self.remove_locked(&mut shard, place, found, key, now_ms)?;
        Ok((removed.is_some(), version))
    }

    /// Removes `key` (found at `found` in the locked `shard`): drops it, or with a tombstone
    /// grace period, while another copy can exist ([`Store::set_tombstones_needed`]), replaces it
    /// by a tombstone with a new version. Returns the live value that
    /// was removed, if any, and the version of the delete (`None` when nothing was recorded).
    fn remove_locked(
        &self,
        shard: &mut Shard,
        place: Place,
        found: Option<u32>,
        key: &[u8],
        now_ms: u64,
    ) -> Result<(Option<Bytes>, Option<u64>), StoreError> {
        let slot = &self.shards[place.shard];
        let live = found
            .map(|s| shard.entry(s))
            .filter(|e| e.is_live(now_ms))
            .map(Entry::value_bytes);
        if let Some(s) = found {
            let entry = shard.entry(s);
            if !entry.is_tombstone() && entry.is_expired(now_ms) {
                slot.expirations.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.config.tombstone_grace_ms == 0 || !self.tombstones_needed.load(Ordering::Relaxed) {
            if let Some(s) = found {
                let entry = shard.remove(place.hash, s);
                self.used_bytes.fetch_sub(entry.charge(), Ordering::Relaxed);
                self.written(key);
            }
            return Ok((live, None));
        }
        if let Some(s) = found.filter(|&s| shard.entry(s).is_tombstone()) {
            // Already deleted: keep the existing tombstone and its version.
            return Ok((None, Some(shard.entry(s).version())));
        }
        let floor = found.map_or(0, |s| shard.entry(s).version());
        let version = self.hlc.next_after(now_ms, floor);
        let tombstone = Entry::tombstone(
            key,
            version,
            now_ms.saturating_add(self.config.tombstone_grace_ms),
        );
        self.put(shard, place, found, tombstone, now_ms)?;
        self.written(key);
        Ok((live, Some(version)))
    }

    /// Removes several keys; returns how many live keys were removed.
    pub fn mdelete<K: AsRef<[u8]>>(&self, keys: &[K], now_ms: u64) -> Result<u64, StoreError> {
        for key in keys {
            self.check_key(key.as_ref())?;
        }
        let mut deleted = 0;
        for key in keys {
            deleted += u64::from(self.delete(key.as_ref(), now_ms)?);
        }
        Ok(deleted)
    }

    /// Adds `delta` to the decimal integer stored at `key` (a missing key counts as 0) and returns
    /// the new value and its version. A key created here gets `ttl_ms`; an existing key keeps its TTL.
    pub fn incr(
        &self,
        key: &[u8],
        delta: i64,
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(i64, u64), StoreError> {
        self.check_key(key)?;
        let new_expiry = self.expiry_for(ttl_ms, now_ms)?;
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let slot = shard.find(place.hash, key);
        let live = slot.map(|s| shard.entry(s)).filter(|e| e.is_live(now_ms));
        let (current, expires_at) = match live {
            Some(entry) => (
                parse_i64(entry.value()).ok_or(StoreError::NotAnInteger)?,
                entry.expires_at(),
            ),
            None => (0, new_expiry),
        };
        let value = current
            .checked_add(delta)
            .ok_or(StoreError::Overflow { current, delta })?;
        let text = value.to_string();
        self.check_value(text.as_bytes())?;
        let version = self.write(
            &mut shard,
            place,
            slot,
            key,
            text.as_bytes(),
            expires_at,
            now_ms,
        )?;
        Ok((value, version))
    }

    /// Stores `value` only if the key's version is `expected_version` (0: the key must be absent).
    pub fn compare_and_set(
        &self,
        key: &[u8],
        expected_version: u64,
        value: &[u8],
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.check_key(key)?;
        self.check_value(value)?;
        let expires_at = self.expiry_for(ttl_ms, now_ms)?;
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let slot = shard.find(place.hash, key);
        let current = slot
            .map(|s| shard.entry(s))
            .filter(|e| e.is_live(now_ms))
            .map(Entry::version);
        let matches = match current {
            None => expected_version == 0,
            Some(version) => version == expected_version,
        };
        if !matches {
            return Err(StoreError::CasConflict {
                expected: expected_version,
                current,
            });
        }
        let version = self.write(&mut shard, place, slot, key, value, expires_at, now_ms)?;
        Ok(version)
    }

    /// Sets (`Some`) or removes (`None`) the TTL of a live key, giving it a new version. Returns
    /// `None` when the key does not exist, or when removing the TTL of a key that has none.
    pub fn set_ttl(
        &self,
        key: &[u8],
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.check_key(key)?;
        let expires_at = self.expiry_for(ttl_ms, now_ms)?;
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let Some(slot) = shard.find(place.hash, key) else {
            return Ok(None);
        };
        let entry = shard.entry(slot);
        if !entry.is_live(now_ms) || (expires_at.is_none() && entry.expires_at().is_none()) {
            return Ok(None);
        }
        let version = self.hlc.next_after(now_ms, entry.version());
        entry.set_version(version);
        shard.set_expiry(slot, expires_at);
        Ok(Some(version))
    }

    /// A key's remaining lifetime.
    pub fn ttl(&self, key: &[u8], now_ms: u64) -> Result<Ttl, StoreError> {
        self.check_key(key)?;
        let place = self.place(key);
        let shard = self.shards[place.shard].lock.read();
        let Some(slot) = shard.find(place.hash, key) else {
            return Ok(Ttl::Missing);
        };
        let entry = shard.entry(slot);
        if entry.is_tombstone() {
            return Ok(Ttl::Missing);
        }
        Ok(match entry.expires_at() {
            None => Ttl::Persistent,
            Some(at) if at <= now_ms => Ttl::Missing,
            Some(at) => Ttl::ExpiresIn(at - now_ms),
        })
    }

    /// Removes every entry; returns how many there were.
    pub fn flush(&self) -> u64 {
        let mut removed = 0;
        for slot in &self.shards {
            let mut shard = slot.lock.write();
            let freed = shard.charged_bytes();
            removed += shard.clear() as u64;
            self.used_bytes.fetch_sub(freed, Ordering::Relaxed);
        }
        self.flushed();
        removed
    }

    /// Removes expired entries, at most `budget_per_shard` from each shard, oldest deadline first.
    /// Returns how many were removed; a caller that gets `budget_per_shard * shards` back may call
    /// again at once, as more may be waiting.
    /// With serve-stale on, an entry is reclaimed only once it has been expired for the whole
    /// serve-stale window.
    pub fn reclaim_expired(&self, now_ms: u64, budget_per_shard: usize) -> usize {
        let now_ms = now_ms.saturating_sub(self.serve_stale_ms);
        let mut total = 0;
        for slot in &self.shards {
            let mut shard = slot.lock.write();
            let mut removed = 0;
            let mut tombstones = 0;
            while removed < budget_per_shard {
                let Some(s) = shard.first_expired(now_ms) else {
                    break;
                };
                self.changed(shard.entry(s).key());
                let hash = self.hash_key(shard.entry(s).key());
                let entry = shard.remove(hash, s);
                self.used_bytes.fetch_sub(entry.charge(), Ordering::Relaxed);
                removed += 1;
                tombstones += usize::from(entry.is_tombstone());
            }
            if removed > 0 {
                slot.expirations
                    .fetch_add((removed - tombstones) as u64, Ordering::Relaxed);
                shard.shrink_if_sparse(|key| self.hash_key(key));
            }
            total += removed;
        }
        total
    }

    /// What this node holds for `key`, tombstones and expired entries included: the input of
    /// quorum reads, read repair and rebalancing.
    pub fn get_versioned(&self, key: &[u8]) -> Result<Option<VersionedItem>, StoreError> {
        self.check_key(key)?;
        let place = self.place(key);
        let shard = self.shards[place.shard].lock.read();
        Ok(shard
            .find(place.hash, key)
            .map(|s| VersionedItem::of(shard.entry(s))))
    }

    /// Checks a version decided elsewhere against the clock-drift bound: `Err` when it is more
    /// than `max_clock_drift_ms` ahead of `now_ms`. Changes nothing.
    pub fn check_remote_version(&self, version: u64, now_ms: u64) -> Result<(), ClockDrift> {
        let max_drift_ms = self.config.max_clock_drift_ms;
        let remote_ms = Hlc::millis(version);
        if remote_ms > now_ms.saturating_add(max_drift_ms) {
            return Err(ClockDrift {
                ahead_ms: remote_ms - now_ms,
                max_drift_ms,
            });
        }
        Ok(())
    }

    /// Applies a write decided elsewhere (replication, hints, read repair, rebalancing): it takes
    /// effect only if it orders after what this node holds for the key, tombstones included
    /// ([`copy_order`]: the newer version, or at an equal version the winning content).
    /// `value` `None` is a delete. Returns whether it was applied; an older copy, or the same
    /// one again, changes nothing.
    ///
    /// **Invariant:** a version from elsewhere never moves the clock more than
    /// `max_clock_drift_ms` ahead of `now_ms`: one further ahead is refused
    /// ([`StoreError::ClockDrift`]) before anything changes, the clock included.
    pub fn apply(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        version: u64,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.check_key(key)?;
        if let Some(value) = value {
            self.check_value(value)?;
        }
        self.check_remote_version(version, now_ms)?;
        if version <= self.flush_floor.load(Ordering::Acquire) {
            // Written before a cluster-wide flush: flushed here already.
            return Ok(false);
        }
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let slot = shard.find(place.hash, key);
        if slot.is_none() && version <= shard.tombstone_floor(place.hash) {
            // A tombstone of this key's group was evicted at a newer version: this copy may
            // predate a delete this node no longer remembers.
            return Ok(false);
        }
        let incoming = CopyRef {
            version,
            value,
            expires_at_ms: expires_at_ms.filter(|&at| at != 0),
        };
        if slot.is_some_and(|s| copy_order(incoming, shard.entry(s).as_copy()).is_le()) {
            return Ok(false);
        }
        // Later local writes must order after this one; checked above, so the clock moves at
        // most `max_clock_drift_ms` ahead of the wall clock.
        self.hlc
            .observe(version, now_ms, self.config.max_clock_drift_ms)?;
        let entry = match value {
            Some(value) => Entry::new(key, value, version, expires_at_ms.unwrap_or(0)),
            None => {
                let keep_until = expires_at_ms
                    .unwrap_or(now_ms.saturating_add(self.config.tombstone_grace_ms.max(1)));
                Entry::tombstone(key, version, keep_until)
            }
        };
        self.put(&mut shard, place, slot, entry, now_ms)?;
        self.written(key);
        Ok(true)
    }

    /// Drops `key` if it still holds exactly `version` (after its data was handed to its new
    /// owners); returns whether it did.
    pub fn remove_if_version(&self, key: &[u8], version: u64) -> Result<bool, StoreError> {
        self.check_key(key)?;
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let Some(s) = shard
            .find(place.hash, key)
            .filter(|&s| shard.entry(s).version() == version)
        else {
            return Ok(false);
        };
        let entry = shard.remove(place.hash, s);
        self.used_bytes.fetch_sub(entry.charge(), Ordering::Relaxed);
        Ok(true)
    }

    /// The number of shards, for [`Store::scan`].
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Entries held, tombstones and expired entries not yet reclaimed included: what a full
    /// [`Store::scan`] visits (when nothing is written meanwhile). [`StoreStats::keys`] counts
    /// values only.
    pub fn entry_count(&self) -> u64 {
        self.shards
            .iter()
            .map(|slot| slot.lock.read().len() as u64)
            .sum()
    }

    /// Up to `max` entries of shard `shard` from `cursor` on (start at 0), tombstones included,
    /// and the cursor to continue from (`None` when the shard is done). Holds the shard's read
    /// lock only while copying pointers; entries written during a scan may be missed or repeated,
    /// so scanners apply by version.
    pub fn scan(
        &self,
        shard: usize,
        cursor: usize,
        max: usize,
    ) -> (Vec<(Bytes, VersionedItem)>, Option<usize>) {
        let (entries, next) = self.shards[shard].lock.read().entries_from(cursor, max);
        let items = entries
            .iter()
            .map(|entry| {
                (
                    Bytes::copy_from_slice(entry.key()),
                    VersionedItem::of(entry),
                )
            })
            .collect();
        (items, next)
    }

    /// Up to `max` entries of hash slot `slot` (taken modulo [`SLOTS`]) from `cursor` on
    /// ([`SlotCursor::default`] to start), tombstones and expired entries included, and the
    /// cursor to continue from (`None` when the slot is done). Only that slot's entries are
    /// visited: one shard holds the slot and keeps a chain of its entries (see `shard.rs`).
    /// Like [`Store::scan`], entries written during the walk may be missed or repeated, so
    /// walkers apply by version. A cursor whose next entry was removed meanwhile restarts the
    /// chain (repeating what it already returned); after [`MAX_SLOT_RESTARTS`] restarts the
    /// rest of the chain comes in one step, so a walk always ends.
    pub fn scan_slot(
        &self,
        slot: u16,
        cursor: SlotCursor,
        max: usize,
    ) -> (Vec<(Bytes, VersionedItem)>, Option<SlotCursor>) {
        let slot = slot % SLOTS;
        let max = max.max(1);
        let owner = self.shard_of_slot(slot);
        let mut cursor = cursor;
        if cursor.shard < owner {
            // Only the owner holds entries of this slot.
            cursor = SlotCursor {
                shard: owner,
                ..SlotCursor::default()
            };
        }
        let mut out = Vec::new();
        while cursor.shard == owner && out.len() < max {
            let guard = self.shards[cursor.shard].lock.read();
            let start = match cursor.at {
                None => guard.chain_head(slot),
                Some((at, generation)) => {
                    let valid = generation == guard.generation()
                        && guard
                            .at(at as usize)
                            .is_some_and(|e| key_slot(e.key()) == slot);
                    if valid {
                        at
                    } else {
                        cursor.restarts = cursor.restarts.saturating_add(1);
                        guard.chain_head(slot)
                    }
                }
            };
            let budget = if cursor.restarts > MAX_SLOT_RESTARTS {
                usize::MAX
            } else {
                max - out.len()
            };
            let (entries, next) = guard.chain_from(start, budget);
            let generation = guard.generation();
            drop(guard);
            out.extend(entries.iter().map(|entry| {
                (
                    Bytes::copy_from_slice(entry.key()),
                    VersionedItem::of(entry),
                )
            }));
            cursor = if next == shard::NIL {
                // The slot's chain is done: no other shard holds the slot.
                SlotCursor {
                    shard: self.shards.len(),
                    ..SlotCursor::default()
                }
            } else {
                SlotCursor {
                    at: Some((next, generation)),
                    ..cursor
                }
            };
        }
        (out, (cursor.shard == owner).then_some(cursor))
    }

    /// Calls `visit` for every entry of hash slot `slot` (tombstones and expired entries
    /// included), as they were under one read lock of the slot's shard.
    pub fn visit_slot(&self, slot: u16, mut visit: impl FnMut(&[u8], CopyRef<'_>)) {
        let slot = slot % SLOTS;
        // Only the slot's own shard holds entries of it.
        let (entries, _) = {
            let guard = self.shards[self.shard_of_slot(slot)].lock.read();
            guard.chain_from(guard.chain_head(slot), usize::MAX)
        };
        for entry in &entries {
            visit(entry.key(), entry.as_copy());
        }
    }

    /// Which hash slots this store holds entries of (tombstones included): `held[s]` for slot
    /// `s`. One read lock per shard; entries written meanwhile may or may not be seen.
    pub fn held_slots(&self) -> Vec<bool> {
        let mut held = vec![false; usize::from(SLOTS)];
        for (i, slot) in self.shards.iter().enumerate() {
            let shard = slot.lock.read();
            let n = self.shards.len();
            for s in (i..usize::from(SLOTS)).step_by(n) {
                held[s] = shard.holds_slot(s as u16);
            }
        }
        held
    }

    /// Calls `visit` with the key and copy of up to `max` entries of shard `shard` from `cursor`
    /// on (tombstones and expired entries included), without copying keys or values or holding
    /// the shard's lock while `visit` runs; returns the cursor to continue from (`None` when the
    /// shard is done). Like [`Store::scan`], entries written meanwhile may be missed or repeated.
    pub fn visit(
        &self,
        shard: usize,
        cursor: usize,
        max: usize,
        mut visit: impl FnMut(&[u8], CopyRef<'_>),
    ) -> Option<usize> {
        let (entries, next) = self.shards[shard].lock.read().entries_from(cursor, max);
        for entry in &entries {
            visit(entry.key(), entry.as_copy());
        }
        next
    }

    /// A key scan (`SCAN`): the live keys (no tombstones, no expired entries) of up to
    /// `max_entries` entries, looking at no more than `max_slots` slab positions, from `cursor`
    /// (0 to start), and the cursor to continue from (0 when the scan is done).
    ///
    /// The cursor is a slab position: slot (low 32 bits), shard (the next log2(shards) bits) and
    /// the shard's generation (the rest, truncated). An entry stays in its slot for as long as
    /// its key exists (overwrites, TTL changes and deletes into tombstones keep the slot; hash
    /// table growth moves only the index, not the slab), and the only operations that move
    /// entries (compaction of a sparse shard, clear) bump the shard's generation; a cursor of
    /// another generation starts its shard over. So every key present for the whole scan is
    /// returned at least once, whatever is written, deleted, expired or resized meanwhile;
    /// keys may be returned more than once (after a compaction), as Redis allows. Every `u64`
    /// is a valid cursor (stray bits are masked off), as in Redis.
    pub fn scan_keys(
        &self,
        cursor: u64,
        max_entries: usize,
        max_slots: usize,
        now_ms: u64,
    ) -> (Vec<Bytes>, u64) {
        let n_shards = self.shards.len();
        let shard_bits = n_shards.trailing_zeros();
        let generation_bits = 64 - 32 - shard_bits;
        let generation_mask = (1u64 << generation_bits) - 1;
        let encode = |shard: usize, slot: usize, generation: u64| -> u64 {
            ((generation & generation_mask) << (32 + shard_bits))
                | ((shard as u64) << 32)
                | slot as u64
        };
        let mut shard = ((cursor >> 32) as usize) & (n_shards - 1);
        let mut slot = (cursor & 0xffff_ffff) as usize;
        let mut generation = Some(cursor >> (32 + shard_bits));
        let (max_entries, max_slots) = (max_entries.max(1), max_slots.max(1));
        let (mut entries, mut slots) = (0, 0);
        let mut keys = Vec::new();
        while shard < n_shards {
            let guard = self.shards[shard].lock.read();
            if generation
                .take()
                .is_some_and(|g| g != guard.generation() & generation_mask)
            {
                // Entries moved since the cursor was made: this shard starts over.
                slot = 0;
            }
            let end = guard.slot_count();
            while slot < end && entries < max_entries && slots < max_slots {
                if let Some(entry) = guard.at(slot) {
                    entries += 1;
                    if entry.is_live(now_ms) {
                        keys.push(Bytes::copy_from_slice(entry.key()));
                    }
                }
                slot += 1;
                slots += 1;
            }
            if slot < end {
                return (keys, encode(shard, slot, guard.generation()));
            }
            drop(guard);
            shard += 1;
            slot = 0;
            slots += 1; // an empty shard costs a step too, so a call's work stays bounded
            if shard < n_shards && (entries >= max_entries || slots >= max_slots) {
                // Slot 0 of a later shard: nonzero, and any generation starts it from 0.
                return (keys, encode(shard, 0, 0));
            }
        }
        (keys, 0)
    }

    /// A random live key, or `None` when none was found: a random shard and slot, then onwards
    /// from there, looking at no more than `max_slots` slab positions in all (a store of
    /// only expired or deleted entries costs that much and answers `None`, never more). `seed`
    /// is the caller's randomness (the store has none). Not uniform: a key after a run of free
    /// slots is likelier, as with Redis's bucket sampling.
    pub fn random_key(&self, now_ms: u64, seed: u64, max_slots: usize) -> Option<Bytes> {
        let n_shards = self.shards.len();
        let start = (seed as usize) & (n_shards - 1);
        let mut budget = max_slots.max(1);
        for i in 0..n_shards {
            if budget == 0 {
                return None;
            }
            budget -= 1;
            let shard = self.shards[(start + i) & (n_shards - 1)].lock.read();
            let n_slots = shard.slot_count();
            if shard.value_len() == 0 || n_slots == 0 {
                continue;
            }
            let first = ((seed >> 16) % n_slots as u64) as usize;
            for step in 0..n_slots.min(budget) {
                budget -= 1;
                if let Some(entry) = shard.at((first + step) % n_slots)
                    && entry.is_live(now_ms)
                {
                    return Some(Bytes::copy_from_slice(entry.key()));
                }
            }
        }
        None
    }

    /// A cluster-wide flush at `version` (a version stamped by the node that runs it): drops
    /// every entry written at or before `version`, tombstones included, and from now on refuses
    /// ([`Store::apply`] answers "not applied") every write decided elsewhere at or before it,
    /// so a replica, hint, anti-entropy round or hand-off that still carries a flushed write
    /// cannot bring it back. The clock moves past `version` (checked against the drift bound
    /// like any remote version), so later local writes survive the floor. Returns how many
    /// live-or-not entries were dropped.
    pub fn flush_through(&self, version: u64, now_ms: u64) -> Result<u64, StoreError> {
        self.check_remote_version(version, now_ms)?;
        self.hlc
            .observe(version, now_ms, self.config.max_clock_drift_ms)?;
        let floor = self
            .flush_floor
            .fetch_max(version, Ordering::AcqRel)
            .max(version);
        let mut removed = 0;
        for slot in &self.shards {
            let mut shard = slot.lock.write();
            let old: Vec<(u64, u32)> = (0..shard.slot_count())
                .filter_map(|at| {
                    let entry = shard.at(at)?;
                    (entry.version() <= floor).then(|| (self.hash_key(entry.key()), at as u32))
                })
                .collect();
            if old.len() == shard.len() {
                let freed = shard.charged_bytes();
                removed += shard.clear() as u64;
                self.used_bytes.fetch_sub(freed, Ordering::Relaxed);
                continue;
            }
            for (hash, at) in old {
                let entry = shard.remove(hash, at);
                self.used_bytes.fetch_sub(entry.charge(), Ordering::Relaxed);
                removed += 1;
            }
            shard.shrink_if_sparse(|key| self.hash_key(key));
        }
        self.flushed();
        Ok(removed)
    }

    /// The version of the last cluster-wide flush this store took part in (0: none).
    pub fn flush_floor(&self) -> u64 {
        self.flush_floor.load(Ordering::Acquire)
    }

    /// Drops every entry whose version is above `limit` (stamped by a clock that ran ahead:
    /// no replica accepts such a copy, so it must not shadow later writes here) and rewinds the
    /// version clock to `limit`; returns how many entries were dropped.
    pub fn drop_versions_after(&self, limit: u64) -> usize {
        self.hlc.rewind(limit);
        self.drop_entries_after(limit)
    }

    /// Drops every entry whose version is above `limit`, leaving the version clock alone;
    /// returns how many were dropped.
    pub fn drop_entries_after(&self, limit: u64) -> usize {
        let mut dropped = 0;
        for shard in 0..self.shards.len() {
            let mut cursor = Some(0);
            while let Some(at) = cursor {
                let mut ahead = Vec::new();
                cursor = self.visit(shard, at, 1024, |key, copy| {
                    if copy.version > limit {
                        ahead.push((key.to_vec(), copy.version));
                    }
                });
                for (key, version) in ahead {
                    dropped += usize::from(self.remove_if_version(&key, version).unwrap_or(false));
                }
            }
        }
        dropped
    }

    /// Says whether another copy of any key can exist elsewhere (a peer in the view, or a member
    /// that once owned ranges): only then does a delete need a tombstone, which exists to stop
    /// an older copy arriving later from reviving the key. A node alone in a cluster of one
    /// deletes as Redis does, so a delete-heavy load costs it no capacity. True until told.
    pub fn set_tombstones_needed(&self, needed: bool) {
        self.tombstones_needed.store(needed, Ordering::Relaxed);
    }

    /// Current counters.
    pub fn stats(&self) -> StoreStats {
        let mut stats = StoreStats {
            used_bytes: self.used_bytes.load(Ordering::Relaxed) as u64,
            ..StoreStats::default()
        };
        for slot in &self.shards {
            stats.keys += slot.lock.read().value_len() as u64;
            stats.hits += slot.hits.load(Ordering::Relaxed);
            stats.misses += slot.misses.load(Ordering::Relaxed);
            stats.evictions += slot.evictions.load(Ordering::Relaxed);
            stats.expirations += slot.expirations.load(Ordering::Relaxed);
            stats.tombstones_evicted += slot.tombstones_evicted.load(Ordering::Relaxed);
        }
        stats
    }

    /// Writes `key = value` under a new version greater than the one it replaces, in `slot`
    /// (replacing) or a new slot; returns the version.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        shard: &mut Shard,
        place: Place,
        slot: Option<u32>,
        key: &[u8],
        value: &[u8],
        expires_at: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let floor = slot.map_or(0, |s| shard.entry(s).version());
        let version = self.hlc.next_after(now_ms, floor);
        let entry = Entry::new(key, value, version, expires_at.unwrap_or(0));
        self.put(shard, place, slot, entry, now_ms)?;
        self.written(key);
        Ok(version)
    }

    /// Stores `entry` in `slot` (replacing) or in a new slot, after making room for it.
    fn put(
        &self,
        shard: &mut Shard,
        place: Place,
        slot: Option<u32>,
        entry: Entry,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let new_charge = entry.charge();
        let old_charge = slot.map_or(0, |s| shard.entry(s).charge());
        if new_charge > old_charge {
            self.reserve(shard, place.shard, new_charge - old_charge, slot, now_ms)?;
        } else {
            self.used_bytes
                .fetch_sub(old_charge - new_charge, Ordering::Relaxed);
        }
        match slot {
            Some(s) => {
                let old = shard.replace(s, entry);
                if !old.is_tombstone() && old.is_expired(now_ms) {
                    self.shards[place.shard]
                        .expirations
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                shard.insert(place.hash, entry, |key| self.hash_key(key));
            }
        }
        Ok(())
    }

    /// Charges `needed` more bytes, evicting first if the policy allows and it is necessary.
    /// `own` is the caller's locked shard (index `own_idx`); `keep` is a slot in it that must not be
    /// evicted (the entry being replaced).
    fn reserve(
        &self,
        own: &mut Shard,
        own_idx: usize,
        needed: usize,
        keep: Option<u32>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let max = self.config.max_memory_bytes;
        let policy = self.config.eviction;
        let full = |used| StoreError::MemoryFull {
            needed,
            used,
            max,
            policy,
        };
        if needed > max {
            return Err(full(self.used_bytes.load(Ordering::Relaxed)));
        }
        if self.try_charge(needed) {
            return Ok(());
        }
        if policy == EvictionPolicy::NoEviction {
            return Err(full(self.used_bytes.load(Ordering::Relaxed)));
        }
        // Our own shard first: we hold its lock already.
        while self.evict_one(own, own_idx, keep, now_ms) {
            if self.try_charge(needed) {
                return Ok(());
            }
        }
        // Then the others, one at a time and only if free: never wait on a second lock.
        let n_shards = self.shards.len();
        for _round in 0..2 {
            for step in 1..n_shards {
                let idx = (own_idx + step) % n_shards;
                let Some(mut other) = self.shards[idx].lock.try_write() else {
                    continue;
                };
                while self.evict_one(&mut other, idx, None, now_ms) {
                    if self.try_charge(needed) {
                        return Ok(());
                    }
                }
            }
        }
        Err(full(self.used_bytes.load(Ordering::Relaxed)))
    }

    /// Adds `needed` to the charged bytes if that stays within `max_memory`.
    fn try_charge(&self, needed: usize) -> bool {
        let max = self.config.max_memory_bytes;
        self.used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(needed).filter(|&total| total <= max)
            })
            .is_ok()
    }

    /// Evicts one entry of `shard`: an expired one if there is any, else the CLOCK victim.
    fn evict_one(
        &self,
        shard: &mut Shard,
        shard_idx: usize,
        keep: Option<u32>,
        now_ms: u64,
    ) -> bool {
        let counters = &self.shards[shard_idx];
        let (victim, expired) = match shard.first_expired(now_ms).filter(|&s| Some(s) != keep) {
            Some(s) => (s, true),
            None => match shard.clock_victim(keep) {
                Some(s) => (s, false),
                None => return false,
            },
        };
        self.changed(shard.entry(victim).key());
        let hash = self.hash_key(shard.entry(victim).key());
        let entry = shard.remove(hash, victim);
        self.used_bytes.fetch_sub(entry.charge(), Ordering::Relaxed);
        if entry.is_tombstone() {
            if !expired {
                // Forgotten before its grace ran out: an older copy of the key arriving later
                // (a hint, a lagging replica, anti-entropy) must not bring the key back.
                shard.raise_tombstone_floor(hash, entry.version());
                counters.tombstones_evicted.fetch_add(1, Ordering::Relaxed);
            }
            return true;
        }
        let counter = if expired {
            &counters.expirations
        } else {
            &counters.evictions
        };
        counter.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Parses a value as Redis does for INCR: optional sign, decimal digits, no spaces.
fn parse_i64(value: &[u8]) -> Option<i64> {
    if value.is_empty() || value.len() > 20 || value[0] == b'+' {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
