//! The keys the nodes answered as hot (`GetResponse.hot`), kept for a while so that ONE reads of
//! them are spread over their replicas ([`crate::router`]).
//!
//! A node marks a key hot when the key's read rate in the node's last hot-key window reached the
//! node's `--hot-key-threshold`. Once reads are spread, each replica sees only its share of
//! them, so a `hot = false` answer does not make a key cold here: a key stays hot for `ttl`
//! after the last answer that said hot (any replica's), and the primary, which still gets its
//! turn, keeps a key hot while the key's whole rate stays above the threshold.
//!
//! Bounded: at most `capacity` keys; a new hot key takes an expired key's place, else the place
//! of the key closest to expiry. Nothing is locked on the read path while no key is hot.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::Error;

/// Default [`ClientBuilder::hot_key_ttl`](crate::ClientBuilder::hot_key_ttl).
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Longest hot-key TTL.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(3600);
/// Default [`ClientBuilder::max_hot_keys`](crate::ClientBuilder::max_hot_keys).
pub(crate) const DEFAULT_CAPACITY: usize = 1024;
/// Most hot keys a client may be configured to keep.
pub(crate) const MAX_CAPACITY: usize = 1 << 20;
/// Consecutive spread reads a replica gets before the next replica's turn. Runs, rather than
/// one read each, keep what a busy client has in flight for one replica together, so its
/// pipelined stream to that replica still carries big batches (a node's cost per request grows
/// as its batches shrink); over time every replica gets the same share.
pub(crate) const SPREAD_RUN: u64 = 128;

/// Hot-key settings of a client (checked by [`check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HotSettings {
    /// Whether reads of hot keys are spread at all.
    pub(crate) enabled: bool,
    /// How long a key stays hot after the last answer that said so.
    pub(crate) ttl: Duration,
    /// Most keys kept.
    pub(crate) capacity: usize,
}

impl Default for HotSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: DEFAULT_TTL,
            capacity: DEFAULT_CAPACITY,
        }
    }
}

/// Refuses settings out of range.
pub(crate) fn check(settings: &HotSettings) -> Result<(), Error> {
    if settings.ttl.is_zero() || settings.ttl > MAX_TTL {
        return Err(Error::InvalidArgument(format!(
            "hot key ttl must be greater than zero and at most {}s",
            MAX_TTL.as_secs()
        )));
    }
    if !(1..=MAX_CAPACITY).contains(&settings.capacity) {
        return Err(Error::InvalidArgument(format!(
            "max hot keys must be between 1 and {MAX_CAPACITY}"
        )));
    }
    Ok(())
}

/// The hot keys of one client (shared by its clones).
#[derive(Debug)]
pub(crate) struct HotKeys {
    settings: HotSettings,
    /// Times are milliseconds since this instant.
    base: Instant,
    /// Key → when it stops being hot (ms since `base`); refreshed in place under the read lock.
    keys: RwLock<HashMap<Bytes, AtomicU64>>,
    /// `keys.len()`, readable without the lock.
    len: AtomicUsize,
    /// Reads sent by spreading (whichever replica got them).
    spread_reads: AtomicU64,
}

impl HotKeys {
    pub(crate) fn new(settings: HotSettings) -> Self {
        Self {
            settings,
            base: Instant::now(),
            keys: RwLock::new(HashMap::new()),
            len: AtomicUsize::new(0),
            spread_reads: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether reads of `key` are spread now: spreading is on and a node said the key is hot
    /// less than the TTL ago.
    pub(crate) fn is_hot(&self, key: &[u8]) -> bool {
        if !self.settings.enabled || self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.is_hot_at(key, self.now_ms())
    }

    fn is_hot_at(&self, key: &[u8], now: u64) -> bool {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.get(key)
            .is_some_and(|until| until.load(Ordering::Relaxed) > now)
    }

    /// Notes an answer for `key`: `hot` (re)starts the key's TTL; a cold answer changes nothing
    /// (a replica sees only its share of a spread key's reads).
    pub(crate) fn note(&self, key: &Bytes, hot: bool) {
        if !hot || !self.settings.enabled {
            return;
        }
        self.note_at(key, self.now_ms());
    }

    fn note_at(&self, key: &Bytes, now: u64) {
        let until =
            now.saturating_add(u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX));
        {
            let keys = self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(entry) = keys.get(key) {
                entry.store(until, Ordering::Relaxed);
                return;
            }
        }
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !keys.contains_key(key) && keys.len() >= self.settings.capacity {
            keys.retain(|_, until| until.load(Ordering::Relaxed) > now);
            if keys.len() >= self.settings.capacity {
                let soonest = keys
                    .iter()
                    .min_by_key(|(_, until)| until.load(Ordering::Relaxed))
                    .map(|(key, _)| key.clone());
                if let Some(soonest) = soonest {
                    keys.remove(&soonest);
                }
            }
        }
        keys.insert(key.clone(), AtomicU64::new(until));
        self.len.store(keys.len(), Ordering::Relaxed);
    }

    /// The next turn of the round-robin (counts a spread read).
    pub(crate) fn next_turn(&self) -> usize {
        crate::observe::spread_read();
        let read = self.spread_reads.fetch_add(1, Ordering::Relaxed);
        usize::try_from(read / SPREAD_RUN).unwrap_or(usize::MAX)
    }

    /// Reads sent by spreading so far.
    pub(crate) fn spread_reads(&self) -> u64 {
        self.spread_reads.load(Ordering::Relaxed)
    }

    /// Keys hot now.
    pub(crate) fn hot_now(&self) -> usize {
        if self.len.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.hot_at(self.now_ms())
    }

    fn hot_at(&self, now: u64) -> usize {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|until| until.load(Ordering::Relaxed) > now)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot(capacity: usize, ttl: Duration) -> HotKeys {
        HotKeys::new(HotSettings {
            enabled: true,
            ttl,
            capacity,
        })
    }

    #[test]
    fn a_key_stays_hot_for_the_ttl_after_the_last_hot_answer() {
        let keys = hot(8, Duration::from_secs(10));
        let key = Bytes::from_static(b"k");
        assert!(!keys.is_hot(&key));
        keys.note(&key, false);
        assert!(!keys.is_hot(&key), "a cold answer does not make a key hot");
        keys.note_at(&key, 1_000);
        assert!(keys.is_hot_at(&key, 1_000));
        // At 7 s a cold answer does not end it; a hot one restarts the TTL.
        keys.note(&key, false);
        assert!(keys.is_hot_at(&key, 7_000), "a cold answer does not end it");
        keys.note_at(&key, 7_000);
        assert!(
            keys.is_hot_at(&key, 13_000),
            "refreshed by the second hot answer"
        );
        assert_eq!(keys.hot_at(13_000), 1);
        assert!(!keys.is_hot_at(&key, 17_000));
        assert_eq!(keys.hot_at(17_000), 0);
    }

    #[test]
    fn the_set_is_bounded_and_evicts_the_soonest_to_expire() {
        let keys = hot(2, Duration::from_secs(10));
        let (a, b, c) = (
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"c"),
        );
        keys.note_at(&a, 0);
        keys.note_at(&b, 1_000);
        keys.note_at(&c, 1_000);
        assert!(!keys.is_hot_at(&a, 1_000), "the oldest made room");
        assert!(keys.is_hot_at(&b, 1_000) && keys.is_hot_at(&c, 1_000));
        assert_eq!(keys.hot_at(1_000), 2);
        for i in 0..1000u32 {
            keys.note(&Bytes::from(i.to_be_bytes().to_vec()), true);
        }
        assert!(keys.keys.read().unwrap().len() <= 2);
    }

    #[test]
    fn turns_advance_by_runs_of_spread_reads() {
        let keys = hot(8, Duration::from_secs(10));
        let turns: Vec<usize> = (0..3 * SPREAD_RUN).map(|_| keys.next_turn()).collect();
        let run = usize::try_from(SPREAD_RUN).unwrap();
        assert!(turns[..run].iter().all(|&t| t == 0));
        assert!(turns[run..2 * run].iter().all(|&t| t == 1));
        assert!(turns[2 * run..].iter().all(|&t| t == 2));
        assert_eq!(keys.spread_reads(), 3 * SPREAD_RUN);
    }

    #[test]
    fn off_means_never_hot_and_bad_settings_are_refused() {
        let keys = HotKeys::new(HotSettings {
            enabled: false,
            ..HotSettings::default()
        });
        let key = Bytes::from_static(b"k");
        keys.note(&key, true);
        assert!(!keys.is_hot(&key));
        assert!(check(&HotSettings::default()).is_ok());
        for bad in [
            HotSettings {
                ttl: Duration::ZERO,
                ..HotSettings::default()
            },
            HotSettings {
                ttl: MAX_TTL + Duration::from_secs(1),
                ..HotSettings::default()
            },
            HotSettings {
                capacity: 0,
                ..HotSettings::default()
            },
            HotSettings {
                capacity: MAX_CAPACITY + 1,
                ..HotSettings::default()
            },
        ] {
            assert!(
                matches!(check(&bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
