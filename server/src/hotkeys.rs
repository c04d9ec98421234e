//! Per-node hot-key tracking: a Space-Saving top-k summary (Metwally, Agrawal, El Abbadi 2005)
//! per time window.
//!
//! The summary holds at most `capacity` counters, split over a few stripes by key hash so that
//! concurrent requests rarely wait on one lock. Each stripe is an independent Space-Saving
//! summary of the keys that hash to it: a key already counted is incremented; a new key takes a
//! free counter, or replaces the counter with the smallest count and inherits that count as its
//! error bound. So a counter never underestimates (`count - error <= true <= count`), and in a
//! stripe that saw `n` requests with `k` counters every key seen more than `n / k` times holds a
//! counter.
//!
//! Only one request in `sample` is counted (a per-thread counter decides, no shared atomic);
//! reported counts are scaled back by `sample`. The hot path allocates only when a key enters a
//! stripe and its buffer is too small for the key (the bytes are copied then). Windows: the
//! current one is being filled; on rotation (every `window`, checked when a request is counted
//! and when a report is asked for) it becomes the last complete window, which reports show.
//! When tracking is off, [`HotKeys::record`] is a branch on a bool.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Default `hot_keys_capacity`.
pub const DEFAULT_CAPACITY: usize = 256;
/// Smallest `hot_keys_capacity`.
pub const MIN_CAPACITY: usize = 16;
/// Largest `hot_keys_capacity`.
pub const MAX_CAPACITY: usize = 65_536;
/// Default `hot_keys_window`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Shortest `hot_keys_window`.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest `hot_keys_window`.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// Default `hot_keys_sample` (count one request in this many).
pub const DEFAULT_SAMPLE: u32 = 8;
/// Largest `hot_keys_sample`.
pub const MAX_SAMPLE: u32 = 1024;
/// Most stripes (locks) of a summary.
const MAX_STRIPES: usize = 16;
/// How many of the top keys the metrics show.
pub const METRIC_RANKS: usize = 10;
/// Default `hot_key_threshold` (reads per second).
pub const DEFAULT_THRESHOLD: u64 = 1_000;
/// Largest `hot_key_threshold`.
pub const MAX_THRESHOLD: u64 = 100_000_000;

/// Hot-key tracking settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotKeysConfig {
    /// Tracking on or off.
    pub enabled: bool,
    /// Most counters (keys) per window.
    pub capacity: usize,
    /// Length of a window.
    pub window: Duration,
    /// Count one request in this many.
    pub sample: u32,
    /// Reads per second (in the last window) from which a key is answered as hot; 0: never.
    pub threshold: u64,
}

impl Default for HotKeysConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            capacity: DEFAULT_CAPACITY,
            window: DEFAULT_WINDOW,
            sample: DEFAULT_SAMPLE,
            threshold: DEFAULT_THRESHOLD,
        }
    }
}

/// What a request did to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A read (get, exists, ttl…).
    Read,
    /// A write (set, delete, increment…).
    Write,
}

/// One key of a report, counts scaled back by the sampling rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKey {
    /// The key's bytes.
    pub key: Vec<u8>,
    /// Estimated requests in the window; never below the true count (sampling aside).
    pub count: u64,
    /// Upper bound of the overestimate: the true count is at least `count - error`.
    pub error: u64,
    /// Of `count`, reads.
    pub reads: u64,
    /// Of `count`, writes.
    pub writes: u64,
}

/// A whole window's summary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HotKeysReport {
    /// Length of the window.
    pub window: Duration,
    /// Requests seen in the window (all keys, scaled back by the sampling rate).
    pub total: u64,
    /// The heaviest keys, heaviest first.
    pub keys: Vec<HotKey>,
}

impl HotKeysReport {
    /// Requests per second of a count over this window.
    pub fn per_second(&self, count: u64) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 { count as f64 / secs } else { 0.0 }
    }

    /// The share (0..=1) of all requests of the window that went to the first `n` keys.
    pub fn top_share(&self, n: usize) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let top: u64 = self.keys.iter().take(n).map(|key| key.count).sum();
        (top as f64 / self.total as f64).min(1.0)
    }
}

#[derive(Debug)]
struct Counter {
    hash: u64,
    key: Vec<u8>,
    count: u64,
    error: u64,
    reads: u64,
    writes: u64,
}

#[derive(Debug)]
struct Stripe {
    counters: Vec<Counter>,
    capacity: usize,
    total: u64,
}

impl Stripe {
    fn new(capacity: usize) -> Self {
        Self {
            counters: Vec::with_capacity(capacity),
            capacity,
            total: 0,
        }
    }

    fn add(&mut self, hash: u64, key: &[u8], access: Access) {
        self.total += 1;
        let counter = if let Some(found) = self
            .counters
            .iter_mut()
            .position(|counter| counter.hash == hash && counter.key == key)
        {
            &mut self.counters[found]
        } else if self.counters.len() < self.capacity {
            self.counters.push(Counter {
                hash,
                key: key.to_vec(),
                count: 0,
                error: 0,
                reads: 0,
                writes: 0,
            });
            let last = self.counters.len() - 1;
            &mut self.counters[last]
        } else {
            // Replace the smallest counter; the newcomer may have been counted up to its count.
            let Some(smallest) = self
                .counters
                .iter()
                .enumerate()
                .min_by_key(|(_, counter)| counter.count)
                .map(|(index, _)| index)
            else {
                return;
            };
            let counter = &mut self.counters[smallest];
            counter.hash = hash;
            counter.key.clear();
            counter.key.extend_from_slice(key);
            counter.error = counter.count;
            counter.reads = 0;
            counter.writes = 0;
            counter
        };
        counter.count += 1;
        match access {
            Access::Read => counter.reads += 1,
            Access::Write => counter.writes += 1,
        }
    }

    /// Empties the stripe, moving its counters into `into` (scaled by `scale`); keeps the
    /// allocations of the counter array.
    fn drain_into(&mut self, into: &mut HotKeysReport, scale: u64) {
        into.total += self.total.saturating_mul(scale);
        self.total = 0;
        into.keys
            .extend(self.counters.drain(..).map(|counter| HotKey {
                key: counter.key,
                count: counter.count.saturating_mul(scale),
                error: counter.error.saturating_mul(scale),
                reads: counter.reads.saturating_mul(scale),
                writes: counter.writes.saturating_mul(scale),
            }));
    }
}

#[derive(Debug)]
struct Windows {
    /// When the current window began.
    started: Instant,
    /// The last complete window.
    last: HotKeysReport,
}

/// A node's hot-key summary: see the module documentation.
#[derive(Debug)]
pub struct HotKeys {
    config: HotKeysConfig,
    hasher: std::hash::RandomState,
    stripes: Box<[Mutex<Stripe>]>,
    windows: Mutex<Windows>,
    /// When the summary was made: `window_end_ns` counts from it.
    epoch: Instant,
    /// When the current window ends, in nanoseconds since `epoch`: the hot path reads it without
    /// a lock and takes the windows lock only to rotate.
    window_end_ns: AtomicU64,
    /// Longer keys are not counted: the store refuses them, and the summary's memory stays
    /// bounded by capacity × this.
    max_key_bytes: usize,
    /// The keys answered as hot: rebuilt at each rotation from the closed window, read-only in
    /// between (at most `capacity` keys).
    hot: parking_lot::RwLock<HotSet>,
    /// Whether `hot` holds any key: a get of a node with no hot key reads only this.
    any_hot: AtomicBool,
    /// A key hot in the last window stays hot while its rate is at least
    /// `threshold / keep_divisor` (the replication factor: its reads are spread over the
    /// replicas, each sees its share).
    keep_divisor: u64,
}

/// The set of hot keys published at a rotation.
type HotSet = hashbrown::HashSet<Box<[u8]>>;

/// A duration in nanoseconds, saturating.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

thread_local! {
    /// Requests this thread has offered to any summary, for sampling.
    static OFFERED: Cell<u32> = const { Cell::new(0) };
}

impl HotKeys {
    /// A summary with `config`; the first window starts now.
    pub fn new(config: HotKeysConfig) -> Self {
        let stripes = (config.capacity / MIN_CAPACITY).clamp(1, MAX_STRIPES);
        Self::with_stripes(config, stripes, Instant::now())
    }

    fn with_stripes(config: HotKeysConfig, stripes: usize, now: Instant) -> Self {
        let stripes = stripes.clamp(1, config.capacity.max(1));
        let per_stripe = (config.capacity / stripes).max(1);
        Self {
            config,
            hasher: std::hash::RandomState::new(),
            stripes: (0..stripes)
                .map(|_| Mutex::new(Stripe::new(per_stripe)))
                .collect(),
            epoch: now,
            max_key_bytes: usize::MAX,
            hot: parking_lot::RwLock::new(HotSet::new()),
            any_hot: AtomicBool::new(false),
            keep_divisor: 1,
            window_end_ns: AtomicU64::new(nanos(config.window)),
            windows: Mutex::new(Windows {
                started: now,
                last: HotKeysReport {
                    window: config.window,
                    ..HotKeysReport::default()
                },
            }),
        }
    }

    /// Keys longer than `max_key_bytes` (the store's `max_key_bytes`: it refuses them) are
    /// not counted, so the summary holds at most capacity × `max_key_bytes` of key bytes.
    pub fn with_max_key_bytes(mut self, max_key_bytes: usize) -> Self {
        self.max_key_bytes = max_key_bytes;
        self
    }

    /// A key that was hot stays hot while its rate is at least `threshold / replicas` (its
    /// reads spread over `replicas` nodes, this node sees its share of them).
    pub fn with_replicas(mut self, replicas: u32) -> Self {
        self.keep_divisor = u64::from(replicas.max(1));
        self
    }

    /// Whether `key` is currently hot here: in the last complete window its rate reached
    /// `threshold` requests/s (or, for a key already hot, `threshold / replicas`). One bool
    /// when tracking is off or nothing is hot; else one hash lookup under a read lock.
    #[inline]
    pub fn is_hot(&self, key: &[u8]) -> bool {
        if !self.config.enabled || !self.any_hot.load(Ordering::Relaxed) {
            return false;
        }
        // A node whose traffic stopped must not keep answering from an old window.
        self.rotate_at(Instant::now());
        self.hot.read().contains(key)
    }

    /// How many keys are answered as hot now.
    pub fn hot_count(&self) -> usize {
        if !self.config.enabled {
            return 0;
        }
        self.rotate_at(Instant::now());
        self.hot.read().len()
    }

    /// The settings.
    pub fn config(&self) -> &HotKeysConfig {
        &self.config
    }

    /// Whether tracking is on.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Counts a request for `key` (one in `sample` is kept). Does nothing when tracking is off.
    #[inline]
    pub fn record(&self, key: &[u8], access: Access) {
        if !self.config.enabled {
            return;
        }
        self.record_sampled(key, access);
    }

    /// Counts one request per key of a multi-key request.
    pub fn record_all<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>, access: Access) {
        if !self.config.enabled {
            return;
        }
        for key in keys {
            self.record_sampled(key, access);
        }
    }

    fn record_sampled(&self, key: &[u8], access: Access) {
        if key.len() > self.max_key_bytes {
            return;
        }
        let sample = self.config.sample.max(1);
        let keep = OFFERED.with(|offered| {
            let next = offered.get().wrapping_add(1) % sample;
            offered.set(next);
            next == 0
        });
        if !keep {
            return;
        }
        self.rotate_at(Instant::now());
        let hash = self.hasher.hash_one(key);
        // The high bits pick the stripe; the stripe compares the whole hash first.
        let stripe = ((hash >> 32) as usize) % self.stripes.len();
        self.stripes[stripe].lock().add(hash, key, access);
    }

    /// Closes the current window if it is over at `now`: it becomes the last complete window
    /// (or, when a whole window passed with nothing counted, the last window is empty).
    fn rotate_at(&self, now: Instant) {
        let window = self.config.window;
        if nanos(now.saturating_duration_since(self.epoch))
            < self.window_end_ns.load(Ordering::Relaxed)
        {
            return;
        }
        let mut windows = self.windows.lock();
        let elapsed = now.saturating_duration_since(windows.started);
        if elapsed < window {
            return;
        }
        let mut closed = HotKeysReport {
            window,
            ..HotKeysReport::default()
        };
        let scale = u64::from(self.config.sample.max(1));
        for stripe in &*self.stripes {
            stripe.lock().drain_into(&mut closed, scale);
        }
        if elapsed >= window.saturating_mul(2) {
            // The counts belong to a window older than the last one, which saw nothing.
            closed.total = 0;
            closed.keys.clear();
        }
        closed
            .keys
            .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        self.publish_hot(&closed);
        windows.last = closed;
        // Whole windows since the start, so the windows stay aligned.
        let passed = elapsed.as_nanos() / window.as_nanos().max(1);
        let passed = u32::try_from(passed).unwrap_or(u32::MAX);
        windows.started += window.saturating_mul(passed);
        if now.saturating_duration_since(windows.started) >= window {
            windows.started = now;
        }
        let end = windows.started + window;
        self.window_end_ns.store(
            nanos(end.saturating_duration_since(self.epoch)),
            Ordering::Relaxed,
        );
    }

    /// Rebuilds the hot set from a closed window (under the windows lock).
    fn publish_hot(&self, closed: &HotKeysReport) {
        let threshold = self.config.threshold;
        if threshold == 0 {
            return;
        }
        let window_ms = u128::from(nanos(closed.window) / 1_000_000).max(1);
        // rate >= limit  <=>  count * 1000 >= limit * window_ms (no floating point).
        let reaches =
            |count: u64, limit: u64| u128::from(count) * 1000 >= u128::from(limit) * window_ms;
        let keep = threshold.div_ceil(self.keep_divisor).max(1);
        let mut hot = self.hot.write();
        let next: HotSet = closed
            .keys
            .iter()
            .filter(|key| {
                // Reads only: a key written heavily gains nothing from spreading its reads.
                reaches(key.reads, threshold)
                    || (reaches(key.reads, keep) && hot.contains(&key.key[..]))
            })
            .map(|key| key.key.clone().into_boxed_slice())
            .collect();
        self.any_hot.store(!next.is_empty(), Ordering::Relaxed);
        *hot = next;
    }

    /// Closes the current window now, whatever its age (tests and shutdown).
    pub fn rotate(&self) {
        let started = self.windows.lock().started;
        self.rotate_at(started + self.config.window);
    }

    /// The last complete window's heaviest `limit` keys (after closing the current window if
    /// it is over).
    pub fn report(&self, limit: usize) -> HotKeysReport {
        self.rotate_at(Instant::now());
        let windows = self.windows.lock();
        HotKeysReport {
            window: windows.last.window,
            total: windows.last.total,
            keys: windows.last.keys.iter().take(limit).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::{RngExt, SeedableRng};
    use ringcache_test_support::zipf::Zipfian;

    use super::*;

    fn config(capacity: usize, sample: u32) -> HotKeysConfig {
        HotKeysConfig {
            enabled: true,
            capacity,
            window: Duration::from_secs(10),
            sample,
            threshold: DEFAULT_THRESHOLD,
        }
    }

    /// The last window's report after feeding `stream` to a fresh summary.
    fn summarise(hot: &HotKeys, stream: &[Vec<u8>]) -> HotKeysReport {
        for key in stream {
            hot.record(key, Access::Read);
        }
        hot.rotate();
        hot.report(usize::MAX)
    }

    fn exact(stream: &[Vec<u8>]) -> HashMap<Vec<u8>, u64> {
        let mut counts = HashMap::new();
        for key in stream {
            *counts.entry(key.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// A stream of `n` keys drawn from `distinct` keys with a zipfian distribution of exponent 1
    /// (key `i` has weight 1 / (i + 1)), from a fixed seed.
    fn zipf_stream(n: usize, distinct: usize, seed: u64) -> Vec<Vec<u8>> {
        let zipf = Zipfian::new(distinct as u64, 1.0).expect("a valid distribution");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| format!("key-{}", zipf.sample(|| rng.random())).into_bytes())
            .collect()
    }

    #[test]
    fn hotkeys_frequent_keys_are_always_reported_and_never_underestimated() {
        // One stripe: exactly the Space-Saving guarantee over the whole stream.
        let capacity = 16;
        let hot = HotKeys::with_stripes(config(capacity, 1), 1, Instant::now());
        let stream = zipf_stream(20_000, 2_000, 7);
        let counts = exact(&stream);
        let report = summarise(&hot, &stream);
        assert_eq!(report.total, stream.len() as u64);
        assert!(report.keys.len() <= capacity);
        let threshold = stream.len() as u64 / capacity as u64;
        for (key, &true_count) in &counts {
            if true_count > threshold {
                assert!(
                    report.keys.iter().any(|hot| &hot.key == key),
                    "{key:?} seen {true_count} times (> n/K = {threshold}) is not reported"
                );
            }
        }
        for entry in &report.keys {
            let true_count = counts[&entry.key];
            assert!(
                entry.count >= true_count,
                "underestimate of {:?}",
                entry.key
            );
            assert!(
                entry.count - entry.error <= true_count,
                "error bound of {:?} does not hold",
                entry.key
            );
            assert!(entry.error <= threshold);
        }
    }

    #[test]
    fn hotkeys_striped_summary_keeps_its_bounds_and_finds_zipf_top_keys() {
        let capacity = 256;
        let hot = HotKeys::new(config(capacity, 1));
        let stream = zipf_stream(100_000, 50_000, 11);
        let counts = exact(&stream);
        let report = summarise(&hot, &stream);
        assert!(report.keys.len() <= capacity);
        for entry in &report.keys {
            let true_count = counts[&entry.key];
            assert!(entry.count >= true_count);
            assert!(entry.count - entry.error <= true_count);
        }
        let mut truth: Vec<_> = counts.into_iter().collect();
        truth.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let reported_top: Vec<&Vec<u8>> = report.keys.iter().take(10).map(|k| &k.key).collect();
        for (key, _) in truth.iter().take(5) {
            assert!(
                reported_top.contains(&key),
                "{key:?} missing from the top ten"
            );
        }
        assert_eq!(report.keys[0].key, truth[0].0);
    }

    #[test]
    fn hotkeys_capacity_is_bounded_under_many_distinct_keys() {
        for capacity in [MIN_CAPACITY, 100, DEFAULT_CAPACITY] {
            let hot = HotKeys::new(config(capacity, 1));
            for i in 0..50_000u32 {
                hot.record(&i.to_be_bytes(), Access::Write);
            }
            let stored: usize = hot.stripes.iter().map(|s| s.lock().counters.len()).sum();
            assert!(
                stored <= capacity,
                "{stored} counters for capacity {capacity}"
            );
            hot.rotate();
            let report = hot.report(usize::MAX);
            assert!(report.keys.len() <= capacity);
            assert_eq!(report.total, 50_000);
        }
    }

    #[test]
    fn hotkeys_rotation_moves_the_current_window_to_the_last() {
        let start = Instant::now();
        let window = Duration::from_secs(10);
        let hot = HotKeys::with_stripes(config(16, 1), 1, start);
        hot.record(b"a", Access::Read);
        hot.record(b"a", Access::Write);
        hot.record(b"b", Access::Read);
        // Not over yet: the last window is still empty.
        hot.rotate_at(start + window / 2);
        let before = hot.windows.lock().last.clone();
        assert_eq!(before.total, 0);
        assert!(before.keys.is_empty());
        hot.rotate_at(start + window);
        let last = hot.windows.lock().last.clone();
        assert_eq!(last.total, 3);
        assert_eq!(last.window, window);
        assert_eq!(last.keys[0].key, b"a");
        assert_eq!(
            (last.keys[0].count, last.keys[0].reads, last.keys[0].writes),
            (2, 1, 1)
        );
        assert_eq!(last.keys[1].key, b"b");
        assert!((last.per_second(last.keys[0].count) - 0.2).abs() < 1e-9);
        assert!((last.top_share(1) - 2.0 / 3.0).abs() < 1e-9);
        // The next window starts empty; a window with nothing counted reports nothing.
        hot.rotate_at(start + window * 2);
        assert_eq!(hot.windows.lock().last.total, 0);
        // Counts from long ago are not shown as the last window's.
        hot.record_sampled(b"c", Access::Read);
        hot.rotate_at(start + window * 5);
        assert_eq!(hot.windows.lock().last.total, 0);
        assert!(hot.windows.lock().last.keys.is_empty());
    }

    #[test]
    fn hotkeys_sampling_scales_counts_back() {
        let sample = 8;
        let hot = HotKeys::with_stripes(config(16, sample), 1, Instant::now());
        // Offered consecutively on one thread: exactly one in `sample` is kept.
        for _ in 0..800 {
            hot.record(b"hot", Access::Read);
        }
        hot.rotate();
        let report = hot.report(10);
        assert_eq!(report.total, 800);
        assert_eq!(report.keys.len(), 1);
        assert_eq!(report.keys[0].count, 800);
        assert_eq!(report.keys[0].reads, 800);
        assert_eq!(report.keys[0].error, 0);
    }

    #[test]
    fn hotkeys_disabled_counts_nothing() {
        let hot = HotKeys::new(HotKeysConfig {
            enabled: false,
            ..config(16, 1)
        });
        hot.record(b"a", Access::Read);
        hot.record_all([&b"a"[..], &b"b"[..]], Access::Write);
        hot.rotate();
        let report = hot.report(10);
        assert_eq!(report.total, 0);
        assert!(report.keys.is_empty());
    }

    #[test]
    fn hotkeys_keys_over_the_key_limit_are_not_counted() {
        let hot = HotKeys::with_stripes(config(16, 1), 1, Instant::now()).with_max_key_bytes(4);
        hot.record(b"four", Access::Read);
        hot.record(b"fives", Access::Read);
        hot.record(&[b'x'; 1 << 20], Access::Write);
        hot.rotate();
        let report = hot.report(10);
        assert_eq!(report.total, 1);
        assert_eq!(report.keys.len(), 1);
        assert_eq!(report.keys[0].key, b"four");
    }

    #[test]
    fn hotkeys_hot_set_follows_the_threshold_with_a_lower_bar_to_stay() {
        let start = Instant::now();
        let window = Duration::from_secs(10);
        // 10 reads/s over a 10 s window: 100 reads; a key already hot stays from 10 / 3 → 4/s.
        let hot = HotKeys::with_stripes(
            HotKeysConfig {
                threshold: 10,
                ..config(16, 1)
            },
            1,
            start,
        )
        .with_replicas(3);
        assert!(!hot.is_hot(b"a"), "nothing is hot before a window closed");
        for _ in 0..100 {
            hot.record(b"a", Access::Read);
        }
        for _ in 0..99 {
            hot.record(b"b", Access::Read);
        }
        for _ in 0..500 {
            hot.record(b"w", Access::Write);
        }
        hot.rotate_at(start + window);
        assert!(hot.any_hot.load(Ordering::Relaxed));
        assert!(hot.hot.read().contains(&b"a"[..]));
        assert!(
            !hot.hot.read().contains(&b"b"[..]),
            "just under the threshold"
        );
        assert!(
            !hot.hot.read().contains(&b"w"[..]),
            "writes do not make a key hot"
        );
        // Next window: `a` at a third of the rate stays hot; `b` at the same rate is not.
        for _ in 0..40 {
            hot.record(b"a", Access::Read);
            hot.record(b"b", Access::Read);
        }
        hot.rotate_at(start + window * 2);
        assert!(hot.hot.read().contains(&b"a"[..]));
        assert!(!hot.hot.read().contains(&b"b"[..]));
        // Below the bar to stay: no longer hot.
        for _ in 0..39 {
            hot.record(b"a", Access::Read);
        }
        hot.rotate_at(start + window * 3);
        assert!(hot.hot.read().is_empty());
        assert!(!hot.any_hot.load(Ordering::Relaxed));
    }

    #[test]
    fn hotkeys_nothing_is_hot_when_off_or_with_a_zero_threshold() {
        for config in [
            HotKeysConfig {
                threshold: 0,
                ..config(16, 1)
            },
            HotKeysConfig {
                enabled: false,
                threshold: 1,
                ..config(16, 1)
            },
        ] {
            let hot = HotKeys::with_stripes(config, 1, Instant::now());
            for _ in 0..1000 {
                hot.record(b"a", Access::Read);
            }
            hot.rotate();
            assert!(!hot.is_hot(b"a"), "{config:?}");
            assert_eq!(hot.hot_count(), 0);
        }
    }

    #[test]
    fn hotkeys_an_old_hot_set_is_dropped_when_a_window_passes_unseen() {
        let start = Instant::now();
        let hot = HotKeys::with_stripes(
            HotKeysConfig {
                threshold: 1,
                ..config(16, 1)
            },
            1,
            start,
        );
        for _ in 0..100 {
            hot.record(b"a", Access::Read);
        }
        hot.rotate_at(start + Duration::from_secs(10));
        assert!(hot.hot.read().contains(&b"a"[..]));
        hot.rotate_at(start + Duration::from_secs(20));
        assert!(hot.hot.read().is_empty());
    }

    #[test]
    fn hotkeys_report_limit_and_multi_key_requests() {
        let hot = HotKeys::with_stripes(config(16, 1), 1, Instant::now());
        for _ in 0..3 {
            hot.record_all([&b"x"[..], &b"y"[..]], Access::Write);
        }
        hot.record(b"y", Access::Read);
        hot.rotate();
        let report = hot.report(1);
        assert_eq!(report.total, 7);
        assert_eq!(report.keys.len(), 1);
        assert_eq!(report.keys[0].key, b"y");
        assert_eq!((report.keys[0].reads, report.keys[0].writes), (1, 3));
    }
}
