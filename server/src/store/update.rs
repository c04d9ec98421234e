//! Read-modify-write operations done in one step under the key's shard lock: append, set range,
//! add a float, read and change the TTL, read and delete, conditional expiry, and the
//! all-or-nothing multi-set. Each one that changes the key writes a new entry with a fresh
//! version from the clock, exactly like [`Store::incr`], so the resulting value (not the
//! operation) is what replicates.

use bytes::Bytes;
use parking_lot::RwLockWriteGuard;

use super::entry::Entry;
use super::shard::Shard;
use super::{Place, Store, StoreError};

/// The longest number text INCRBYFLOAT reads, as Redis's `MAX_LONG_DOUBLE_CHARS`.
pub const MAX_FLOAT_TEXT_BYTES: usize = 5 * 1024;

/// A new expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// This many milliseconds from now; 1..=max_ttl.
    In(u64),
    /// At this unix time in milliseconds; at or before now means "already expired".
    At(u64),
}

/// When a new expiry takes effect (Redis EXPIRE's NX, XX, GT, LT). A key without a TTL counts
/// as living forever: GT never holds for it, LT always does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpireCondition {
    /// Always.
    #[default]
    Always,
    /// Only when the key has no TTL (NX).
    IfNoTtl,
    /// Only when the key has a TTL (XX).
    IfTtl,
    /// Only when the new expiry is later than the current one (GT).
    IfLater,
    /// Only when the new expiry is earlier than the current one (LT).
    IfEarlier,
    /// Only when the key has a TTL and the new expiry is later (XX GT).
    IfTtlAndLater,
    /// Only when the key has a TTL and the new expiry is earlier (XX LT).
    IfTtlAndEarlier,
}

impl ExpireCondition {
    /// Whether the condition holds for a key expiring at `current` (`None`: never) and a new
    /// deadline `new`.
    pub fn holds(self, current: Option<u64>, new: u64) -> bool {
        match self {
            Self::Always => true,
            Self::IfNoTtl => current.is_none(),
            Self::IfTtl => current.is_some(),
            Self::IfLater | Self::IfTtlAndLater => current.is_some_and(|at| new > at),
            Self::IfEarlier => current.is_none_or(|at| new < at),
            Self::IfTtlAndEarlier => current.is_some_and(|at| new < at),
        }
    }
}

/// What a conditional expire did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireOutcome {
    /// The key does not exist.
    Missing,
    /// The condition did not hold; nothing changed.
    Unchanged,
    /// The key got the new expiry under this version.
    Updated(u64),
    /// The new expiry was already past: the key was deleted (the delete's version, `None`
    /// without tombstones).
    Deleted(Option<u64>),
}

/// What a `get_ex` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetExOutcome {
    /// The value read (before the change), `None` when the key does not exist.
    pub value: Option<Bytes>,
    /// The version written (new expiry, or the delete), `None` when nothing changed.
    pub version: Option<u64>,
    /// Whether the key was deleted (an expiry already past).
    pub deleted: bool,
}

/// A live entry's value (copied) and expiry, or an empty value without expiry.
fn current(entry: Option<&Entry>) -> (Vec<u8>, Option<u64>) {
    entry.map_or((Vec::new(), None), |e| (e.value().to_vec(), e.expires_at()))
}

/// Parses a number as Redis's `string2ld` does: not empty, at most [`MAX_FLOAT_TEXT_BYTES`],
/// no surrounding spaces, the whole text a number, not NaN (infinities parse).
pub fn parse_float(text: &[u8]) -> Option<f64> {
    if text.is_empty() || text.len() > MAX_FLOAT_TEXT_BYTES {
        return None;
    }
    let value: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
    (!value.is_nan()).then_some(value)
}

/// Formats a float as INCRBYFLOAT stores it: plain decimal, no exponent, no trailing zeros
/// (`5200`, `10.6`), `-0` written `0`. The digits are the shortest that read back as the same
/// `f64`; Redis computes in 80-bit long double and prints 17 decimals, so the last digits of
/// some results differ (`0.1 + 0.2` is `0.30000000000000004` here, `0.3` in Redis).
pub fn format_float(value: f64) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    value.to_string()
}

impl Store {
    /// The absolute deadline of `expiry` at `now_ms`. A relative TTL is checked as for `set`;
    /// an absolute time in the past is returned as is (the caller deletes), one in the future
    /// must be at most `max_ttl` away.
    pub(super) fn deadline(&self, expiry: Expiry, now_ms: u64) -> Result<Option<u64>, StoreError> {
        match expiry {
            Expiry::In(ttl_ms) => self.expiry_for(Some(ttl_ms), now_ms),
            Expiry::At(at) if at <= now_ms => Ok(Some(at)),
            Expiry::At(at) if at - now_ms > self.config.max_ttl_ms => Err(StoreError::InvalidTtl {
                ttl_ms: at - now_ms,
                max_ttl_ms: self.config.max_ttl_ms,
            }),
            Expiry::At(at) => Ok(Some(at)),
        }
    }

    /// Appends `suffix` to the value at `key` (a missing key starts empty and gets no TTL; an
    /// existing key keeps its TTL). Returns the new length and the version written (`None`
    /// when an empty suffix changed nothing).
    pub fn append(
        &self,
        key: &[u8],
        suffix: &[u8],
        now_ms: u64,
    ) -> Result<(u64, Option<u64>), StoreError> {
        self.check_key(key)?;
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let slot = shard.find(place.hash, key);
        let live = slot.map(|s| shard.entry(s)).filter(|e| e.is_live(now_ms));
        let old_len = live.map_or(0, |e| e.value().len());
        let len = old_len.saturating_add(suffix.len());
        if len > self.config.max_value_bytes {
            return Err(StoreError::ValueTooLarge {
                len,
                max: self.config.max_value_bytes,
            });
        }
        if suffix.is_empty() && live.is_some() {
            return Ok((len as u64, None));
        }
        let (mut value, expires_at) = current(live);
        value.extend_from_slice(suffix);
        let version = self.write(&mut shard, place, slot, key, &value, expires_at, now_ms)?;
        Ok((len as u64, Some(version)))
    }

    /// Overwrites the value at `key` from `offset` with `bytes`, padding with zero bytes
    /// (Redis SETRANGE). A missing key starts empty and gets no TTL; an existing key keeps its
    /// TTL. Empty `bytes` change and create nothing. Returns the length after the write and the
    /// version written (`None` when nothing changed). `offset + bytes.len()` is checked against
    /// `max_value_bytes` before anything is allocated.
    pub fn set_range(
        &self,
        key: &[u8],
        offset: u64,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<(u64, Option<u64>), StoreError> {
        self.check_key(key)?;
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let slot = shard.find(place.hash, key);
        let live = slot.map(|s| shard.entry(s)).filter(|e| e.is_live(now_ms));
        if bytes.is_empty() {
            return Ok((live.map_or(0, |e| e.value().len() as u64), None));
        }
        let end = usize::try_from(offset)
            .ok()
            .and_then(|offset| offset.checked_add(bytes.len()))
            .filter(|&end| end <= self.config.max_value_bytes)
            .ok_or(StoreError::ValueTooLarge {
                len: usize::try_from(offset.saturating_add(bytes.len() as u64))
                    .unwrap_or(usize::MAX),
                max: self.config.max_value_bytes,
            })?;
        let (mut value, expires_at) = current(live);
        if value.len() < end {
            value.resize(end, 0);
        }
        let start = end - bytes.len();
        value[start..end].copy_from_slice(bytes);
        let version = self.write(&mut shard, place, slot, key, &value, expires_at, now_ms)?;
        Ok((value.len() as u64, Some(version)))
    }

    /// Adds `delta` to the number stored as text at `key` (a missing key counts as 0 and gets no
    /// TTL; an existing key keeps its TTL) and stores the sum as [`format_float`] writes it.
    /// Returns that text and the version. [`StoreError::NotAFloat`] when the value or `delta`
    /// is not a number, [`StoreError::NotFinite`] when the sum is not finite.
    pub fn incr_by_float(
        &self,
        key: &[u8],
        delta: f64,
        now_ms: u64,
    ) -> Result<(Bytes, u64), StoreError> {
        self.check_key(key)?;
        if delta.is_nan() {
            return Err(StoreError::NotAFloat);
        }
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let slot = shard.find(place.hash, key);
        let live = slot.map(|s| shard.entry(s)).filter(|e| e.is_live(now_ms));
        let (current, expires_at) = match live {
            Some(entry) => (
                parse_float(entry.value()).ok_or(StoreError::NotAFloat)?,
                entry.expires_at(),
            ),
            None => (0.0, None),
        };
        let sum = current + delta;
        if !sum.is_finite() {
            return Err(StoreError::NotFinite);
        }
        let text = Bytes::from(format_float(sum));
        self.check_value(&text)?;
        let version = self.write(&mut shard, place, slot, key, &text, expires_at, now_ms)?;
        Ok((text, version))
    }

    /// Removes `key` and returns its value (Redis GETDEL) with the version of the delete, in
    /// one step: `(None, _)` when there was no live value.
    pub fn take(
        &self,
        key: &[u8],
        now_ms: u64,
    ) -> Result<(Option<Bytes>, Option<u64>), StoreError> {
        self.check_key(key)?;
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let found = shard.find(place.hash, key);
        self.remove_locked(&mut shard, place, found, key, now_ms)
    }

    /// Reads `key` and, if it exists, gives it a new expiry (`Some`) or removes its TTL
    /// (`None`, a no-op without one) in the same step (Redis GETEX). An expiry already past
    /// deletes the key; its value is still returned.
    pub fn get_ex(
        &self,
        key: &[u8],
        expiry: Option<Expiry>,
        now_ms: u64,
    ) -> Result<GetExOutcome, StoreError> {
        self.check_key(key)?;
        let deadline = match expiry {
            Some(expiry) => self.deadline(expiry, now_ms)?,
            None => None,
        };
        let place = self.place(key);
        let counters = &self.shards[place.shard];
        let mut shard = counters.lock.write();
        self.changed(key);
        let found = shard.find(place.hash, key);
        let Some(slot) = found.filter(|&s| shard.entry(s).is_live(now_ms)) else {
            counters
                .misses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(GetExOutcome {
                value: None,
                version: None,
                deleted: false,
            });
        };
        counters
            .hits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = shard.entry(slot);
        entry.touch();
        let value = entry.value_bytes();
        if deadline.is_some_and(|at| at <= now_ms) {
            let (_, version) = self.remove_locked(&mut shard, place, found, key, now_ms)?;
            return Ok(GetExOutcome {
                value: Some(value),
                version,
                deleted: true,
            });
        }
        if deadline.is_none() && entry.expires_at().is_none() {
            return Ok(GetExOutcome {
                value: Some(value),
                version: None,
                deleted: false,
            });
        }
        let version = self.hlc.next_after(now_ms, entry.version());
        entry.set_version(version);
        shard.set_expiry(slot, deadline);
        Ok(GetExOutcome {
            value: Some(value),
            version: Some(version),
            deleted: false,
        })
    }

    /// Gives `key` a new expiry if `condition` holds against its current one (Redis EXPIRE
    /// with NX/XX/GT/LT); a deadline already past deletes the key instead.
    pub fn expire(
        &self,
        key: &[u8],
        expiry: Expiry,
        condition: ExpireCondition,
        now_ms: u64,
    ) -> Result<ExpireOutcome, StoreError> {
        self.check_key(key)?;
        let Some(deadline) = self.deadline(expiry, now_ms)? else {
            unreachable!("an expiry always has a deadline");
        };
        let place = self.place(key);
        let mut shard = self.shards[place.shard].lock.write();
        self.changed(key);
        let found = shard.find(place.hash, key);
        let Some(slot) = found.filter(|&s| shard.entry(s).is_live(now_ms)) else {
            return Ok(ExpireOutcome::Missing);
        };
        let entry = shard.entry(slot);
        if !condition.holds(entry.expires_at(), deadline) {
            return Ok(ExpireOutcome::Unchanged);
        }
        if deadline <= now_ms {
            let (_, version) = self.remove_locked(&mut shard, place, found, key, now_ms)?;
            return Ok(ExpireOutcome::Deleted(version));
        }
        let version = self.hlc.next_after(now_ms, entry.version());
        entry.set_version(version);
        shard.set_expiry(slot, Some(deadline));
        Ok(ExpireOutcome::Updated(version))
    }

    /// Stores every pair only if none of the keys exists (Redis MSETNX), all or nothing, with
    /// the same TTL; returns the versions in order, or `None` when some key exists (nothing
    /// stored). Every input is checked first. The shards of all the keys are write-locked
    /// together, in ascending index order, for the check and the writes: the one place the
    /// store holds more than one shard lock (every other path holds one, and eviction only
    /// `try_write`s other shards, so the fixed order cannot deadlock). If memory runs out part
    /// way, the pairs already written are taken back (tombstones they replaced are restored)
    /// before the error is returned.
    pub fn mset_if_absent<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        entries: &[(K, V)],
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        for (key, value) in entries {
            self.check_key(key.as_ref())?;
            self.check_value(value.as_ref())?;
        }
        let expires_at = self.expiry_for(ttl_ms, now_ms)?;
        let places: Vec<Place> = entries
            .iter()
            .map(|(k, _)| self.place(k.as_ref()))
            .collect();
        let mut indexes: Vec<usize> = places.iter().map(|p| p.shard).collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut guards: Vec<(usize, RwLockWriteGuard<'_, Shard>)> = indexes
            .iter()
            .map(|&i| (i, self.shards[i].lock.write()))
            .collect();
        let guard_of = |shard: usize| {
            indexes
                .binary_search(&shard)
                .expect("every key's shard is locked")
        };
        for ((key, _), place) in entries.iter().zip(&places) {
            let shard = &guards[guard_of(place.shard)].1;
            let live = shard
                .find(place.hash, key.as_ref())
                .is_some_and(|s| shard.entry(s).is_live(now_ms));
            if live {
                return Ok(None);
            }
        }
        // (key index, version written, the tombstone it replaced)
        let mut written: Vec<(usize, u64, Option<Entry>)> = Vec::with_capacity(entries.len());
        for (key, _) in entries {
            self.changed(key.as_ref());
        }
        for (i, ((key, value), place)) in entries.iter().zip(&places).enumerate() {
            let at = guard_of(place.shard);
            let shard = &mut *guards[at].1;
            let slot = shard.find(place.hash, key.as_ref());
            let tombstone = slot
                .map(|s| shard.entry(s))
                .filter(|e| e.is_tombstone())
                .cloned();
            match self.write(
                shard,
                *place,
                slot,
                key.as_ref(),
                value.as_ref(),
                expires_at,
                now_ms,
            ) {
                Ok(version) => written.push((i, version, tombstone)),
                Err(error) => {
                    for (i, version, tombstone) in written.into_iter().rev() {
                        let place = places[i];
                        let at = guard_of(place.shard);
                        self.take_back(
                            &mut guards[at].1,
                            place,
                            entries[i].0.as_ref(),
                            version,
                            tombstone,
                        );
                    }
                    return Err(error);
                }
            }
        }
        Ok(Some(written.into_iter().map(|(_, v, _)| v).collect()))
    }

    /// Undoes a write of `key` at `version` in a locked shard: puts back the tombstone it
    /// replaced (never bigger than the value, so it needs no memory) or removes it.
    fn take_back(
        &self,
        shard: &mut Shard,
        place: Place,
        key: &[u8],
        version: u64,
        tombstone: Option<Entry>,
    ) {
        use std::sync::atomic::Ordering;
        let Some(slot) = shard
            .find(place.hash, key)
            .filter(|&s| shard.entry(s).version() == version)
        else {
            return; // evicted meanwhile
        };
        match tombstone {
            Some(tombstone) => {
                let freed = shard.entry(slot).charge() - tombstone.charge();
                shard.replace(slot, tombstone);
                self.used_bytes.fetch_sub(freed, Ordering::Relaxed);
            }
            None => {
                let entry = shard.remove(place.hash, slot);
                self.used_bytes.fetch_sub(entry.charge(), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SetOptions, StoreConfig, Ttl};

    const T0: u64 = 1_700_000_000_000;

    fn store(max_value_bytes: usize, tombstone_grace_ms: u64) -> Store {
        Store::new(StoreConfig {
            max_value_bytes,
            tombstone_grace_ms,
            shards: 4,
            ..StoreConfig::default()
        })
    }

    fn set(s: &Store, key: &[u8], value: &[u8], ttl_ms: Option<u64>) -> u64 {
        let options = SetOptions {
            ttl_ms,
            ..SetOptions::default()
        };
        s.set(key, value, options, T0).unwrap().version.unwrap()
    }

    fn value(s: &Store, key: &[u8], now: u64) -> Option<Bytes> {
        s.get(key, now).unwrap().map(|item| item.value)
    }

    #[test]
    fn append_creates_grows_keeps_the_ttl_and_refuses_past_the_limit() {
        let s = store(10, 0);
        let (len, v1) = s.append(b"k", b"Hello", T0).unwrap();
        assert_eq!(len, 5);
        assert_eq!(
            s.ttl(b"k", T0).unwrap(),
            Ttl::Persistent,
            "created without a TTL"
        );
        s.set_ttl(b"k", Some(1_000), T0).unwrap();
        let (len, v2) = s.append(b"k", b" You", T0 + 1).unwrap();
        assert_eq!(
            (len, value(&s, b"k", T0 + 1).as_deref()),
            (9, Some(&b"Hello You"[..]))
        );
        assert!(v2.unwrap() > v1.unwrap(), "a fresh version");
        assert_eq!(
            s.ttl(b"k", T0 + 1).unwrap(),
            Ttl::ExpiresIn(999),
            "TTL kept"
        );
        assert_eq!(
            s.append(b"k", b"", T0 + 1).unwrap(),
            (9, None),
            "nothing to do"
        );
        assert_eq!(
            s.append(b"k", b"!!", T0 + 1).unwrap_err(),
            StoreError::ValueTooLarge { len: 11, max: 10 }
        );
        assert_eq!(value(&s, b"k", T0 + 1).as_deref(), Some(&b"Hello You"[..]));
        // Once expired, the key starts again from empty, without a TTL.
        assert_eq!(s.append(b"k", b"new", T0 + 1_000).unwrap().0, 3);
        assert_eq!(s.ttl(b"k", T0 + 1_000).unwrap(), Ttl::Persistent);
    }

    #[test]
    fn set_range_pads_overwrites_and_checks_the_limit_before_allocating() {
        let s = store(16, 0);
        assert_eq!(
            s.set_range(b"k", 3, b"", T0).unwrap(),
            (0, None),
            "nothing created"
        );
        assert_eq!(s.get(b"k", T0).unwrap(), None);
        assert_eq!(s.set_range(b"k", 2, b"ab", T0).unwrap().0, 4);
        assert_eq!(value(&s, b"k", T0).as_deref(), Some(&b"\0\0ab"[..]));
        set(&s, b"h", b"Hello World", Some(5_000));
        assert_eq!(s.set_range(b"h", 6, b"Redis", T0 + 1).unwrap().0, 11);
        assert_eq!(
            value(&s, b"h", T0 + 1).as_deref(),
            Some(&b"Hello Redis"[..])
        );
        assert_eq!(s.ttl(b"h", T0 + 1).unwrap(), Ttl::ExpiresIn(4_999));
        assert_eq!(s.set_range(b"h", 0, b"", T0 + 1).unwrap(), (11, None));
        assert_eq!(
            s.set_range(b"h", 15, b"xy", T0).unwrap_err(),
            StoreError::ValueTooLarge { len: 17, max: 16 }
        );
        // An offset far past any memory is refused, not allocated.
        assert!(matches!(
            s.set_range(b"h", u64::MAX, b"x", T0).unwrap_err(),
            StoreError::ValueTooLarge { .. }
        ));
    }

    #[test]
    fn incr_by_float_formats_like_redis_and_refuses_non_numbers() {
        let s = store(1024, 0);
        set(&s, b"f", b"10.50", Some(2_000));
        assert_eq!(&s.incr_by_float(b"f", 0.1, T0).unwrap().0[..], b"10.6");
        assert_eq!(&s.incr_by_float(b"f", -5.0, T0).unwrap().0[..], b"5.6");
        assert_eq!(s.ttl(b"f", T0).unwrap(), Ttl::ExpiresIn(2_000), "TTL kept");
        set(&s, b"e", b"5.0e3", None);
        assert_eq!(&s.incr_by_float(b"e", 200.0, T0).unwrap().0[..], b"5200");
        assert_eq!(&s.incr_by_float(b"new", 3.0, T0).unwrap().0[..], b"3");
        assert_eq!(&s.incr_by_float(b"new", -3.0, T0).unwrap().0[..], b"0");
        set(&s, b"text", b"abc", None);
        assert_eq!(
            s.incr_by_float(b"text", 1.0, T0).unwrap_err(),
            StoreError::NotAFloat
        );
        set(&s, b"space", b" 1", None);
        assert_eq!(
            s.incr_by_float(b"space", 1.0, T0).unwrap_err(),
            StoreError::NotAFloat
        );
        assert_eq!(
            s.incr_by_float(b"f", f64::NAN, T0).unwrap_err(),
            StoreError::NotAFloat
        );
        set(&s, b"big", b"1.7e308", None);
        assert_eq!(
            s.incr_by_float(b"big", 1.7e308, T0).unwrap_err(),
            StoreError::NotFinite
        );
        assert_eq!(
            value(&s, b"big", T0).as_deref(),
            Some(&b"1.7e308"[..]),
            "unchanged"
        );
        assert_eq!(parse_float(b"nan"), None);
        assert_eq!(parse_float(b""), None);
        assert_eq!(parse_float(&[b'1'; MAX_FLOAT_TEXT_BYTES + 1]), None);
        assert_eq!(format_float(-0.0), "0");
        assert_eq!(format_float(1e20), "100000000000000000000");
    }

    #[test]
    fn take_returns_the_value_and_leaves_a_tombstone() {
        let s = store(1024, 60_000);
        let v1 = set(&s, b"k", b"v", None);
        let (value, version) = s.take(b"k", T0).unwrap();
        assert_eq!(value.as_deref(), Some(&b"v"[..]));
        assert!(version.unwrap() > v1);
        assert_eq!(s.get(b"k", T0).unwrap(), None);
        assert_eq!(
            s.get_versioned(b"k").unwrap().unwrap().value,
            None,
            "tombstone"
        );
        assert_eq!(s.take(b"k", T0).unwrap().0, None);
    }

    #[test]
    fn get_ex_sets_removes_or_ends_the_ttl_in_one_step() {
        let s = store(1024, 0);
        let v1 = set(&s, b"k", b"v", None);
        let out = s.get_ex(b"k", Some(Expiry::In(1_000)), T0).unwrap();
        assert_eq!(out.value.as_deref(), Some(&b"v"[..]));
        assert!(out.version.unwrap() > v1);
        assert_eq!(s.ttl(b"k", T0).unwrap(), Ttl::ExpiresIn(1_000));
        let out = s.get_ex(b"k", Some(Expiry::At(T0 + 5_000)), T0).unwrap();
        assert!(out.version.is_some());
        assert_eq!(s.ttl(b"k", T0).unwrap(), Ttl::ExpiresIn(5_000));
        assert!(
            s.get_ex(b"k", None, T0).unwrap().version.is_some(),
            "persist"
        );
        assert_eq!(s.ttl(b"k", T0).unwrap(), Ttl::Persistent);
        assert_eq!(
            s.get_ex(b"k", None, T0).unwrap().version,
            None,
            "nothing to persist"
        );
        let out = s.get_ex(b"k", Some(Expiry::At(T0 - 1)), T0).unwrap();
        assert!(
            out.deleted && out.value.is_some(),
            "past: value returned, key deleted"
        );
        assert_eq!(s.get(b"k", T0).unwrap(), None);
        assert_eq!(s.get_ex(b"k", Some(Expiry::In(5)), T0).unwrap().value, None);
        assert!(matches!(
            s.get_ex(b"k", Some(Expiry::In(0)), T0).unwrap_err(),
            StoreError::InvalidTtl { .. }
        ));
    }

    #[test]
    fn conditional_expire_follows_redis_nx_xx_gt_lt() {
        use ExpireCondition as C;
        let s = store(1024, 0);
        let at = |ms| Expiry::At(T0 + ms);
        assert_eq!(
            s.expire(b"k", at(10), C::Always, T0).unwrap(),
            ExpireOutcome::Missing
        );
        set(&s, b"k", b"v", None);
        // No TTL: XX and GT fail, LT and NX hold.
        assert_eq!(
            s.expire(b"k", at(10), C::IfTtl, T0).unwrap(),
            ExpireOutcome::Unchanged
        );
        assert_eq!(
            s.expire(b"k", at(10), C::IfLater, T0).unwrap(),
            ExpireOutcome::Unchanged
        );
        assert!(matches!(
            s.expire(b"k", at(100), C::IfEarlier, T0).unwrap(),
            ExpireOutcome::Updated(_)
        ));
        assert_eq!(
            s.expire(b"k", at(10), C::IfNoTtl, T0).unwrap(),
            ExpireOutcome::Unchanged
        );
        // TTL 100: GT needs later, LT earlier.
        assert_eq!(
            s.expire(b"k", at(50), C::IfLater, T0).unwrap(),
            ExpireOutcome::Unchanged
        );
        assert!(matches!(
            s.expire(b"k", at(200), C::IfTtlAndLater, T0).unwrap(),
            ExpireOutcome::Updated(_)
        ));
        assert_eq!(
            s.expire(b"k", at(300), C::IfEarlier, T0).unwrap(),
            ExpireOutcome::Unchanged
        );
        assert!(matches!(
            s.expire(b"k", Expiry::In(20), C::IfTtlAndEarlier, T0)
                .unwrap(),
            ExpireOutcome::Updated(_)
        ));
        assert_eq!(s.ttl(b"k", T0).unwrap(), Ttl::ExpiresIn(20));
        // A past deadline deletes, when the condition holds.
        assert_eq!(
            s.expire(b"k", Expiry::At(0), C::IfNoTtl, T0).unwrap(),
            ExpireOutcome::Unchanged
        );
        assert_eq!(
            s.expire(b"k", Expiry::At(0), C::IfEarlier, T0).unwrap(),
            ExpireOutcome::Deleted(None)
        );
        assert_eq!(s.get(b"k", T0).unwrap(), None);
        // Too far ahead is the TTL limit's error.
        set(&s, b"k", b"v", None);
        assert!(matches!(
            s.expire(b"k", Expiry::At(u64::MAX), C::Always, T0)
                .unwrap_err(),
            StoreError::InvalidTtl { .. }
        ));
    }

    #[test]
    fn set_keeps_the_ttl_or_takes_an_absolute_one() {
        let s = store(1024, 0);
        set(&s, b"k", b"a", Some(1_000));
        let keep = SetOptions {
            keep_ttl: true,
            ..SetOptions::default()
        };
        s.set(b"k", b"b", keep, T0 + 10).unwrap();
        assert_eq!(s.ttl(b"k", T0 + 10).unwrap(), Ttl::ExpiresIn(990));
        let at = SetOptions {
            expires_at_ms: Some(T0 + 500),
            ..SetOptions::default()
        };
        s.set(b"k", b"c", at, T0).unwrap();
        assert_eq!(s.ttl(b"k", T0).unwrap(), Ttl::ExpiresIn(500));
        let past = SetOptions {
            expires_at_ms: Some(T0 - 1),
            return_previous: true,
            ..SetOptions::default()
        };
        let out = s.set(b"k", b"d", past, T0).unwrap();
        assert!(out.version.is_some(), "counts as stored");
        assert_eq!(out.previous.as_deref(), Some(&b"c"[..]));
        assert_eq!(s.get(b"k", T0).unwrap(), None, "and expired at once");
    }

    #[test]
    fn mset_if_absent_is_all_or_nothing() {
        let s = store(1024, 60_000);
        let pairs: Vec<(Vec<u8>, &[u8])> = (0..20)
            .map(|i| (format!("k{i}").into_bytes(), &b"v"[..]))
            .collect();
        let versions = s.mset_if_absent(&pairs, Some(1_000), T0).unwrap().unwrap();
        assert_eq!(versions.len(), 20);
        assert_eq!(s.ttl(b"k7", T0).unwrap(), Ttl::ExpiresIn(1_000));
        // One existing key: nothing stored.
        let more = [(&b"new1"[..], &b"x"[..]), (b"k3", b"x"), (b"new2", b"x")];
        assert_eq!(s.mset_if_absent(&more, None, T0).unwrap(), None);
        assert_eq!(s.get(b"new1", T0).unwrap(), None);
        assert_eq!(value(&s, b"k3", T0).as_deref(), Some(&b"v"[..]));
        // Deleted (tombstone) and expired keys count as absent; a repeated key takes the last value.
        s.delete(b"k3", T0).unwrap();
        let again = [(&b"k3"[..], &b"1"[..]), (b"k4", b"2"), (b"k3", b"3")];
        assert!(
            s.mset_if_absent(&again, None, T0 + 1_000)
                .unwrap()
                .is_some()
        );
        assert_eq!(value(&s, b"k3", T0 + 1_000).as_deref(), Some(&b"3"[..]));
        // Bad input anywhere: nothing stored.
        let bad = [(&b"ok"[..], &b"x"[..]), (b"", b"x")];
        assert_eq!(
            s.mset_if_absent(&bad, None, T0).unwrap_err(),
            StoreError::EmptyKey
        );
        assert_eq!(s.get(b"ok", T0).unwrap(), None);
    }

    #[test]
    fn mset_if_absent_takes_everything_back_when_memory_runs_out() {
        let s = Store::new(StoreConfig {
            max_memory_bytes: 600,
            eviction: crate::store::EvictionPolicy::NoEviction,
            tombstone_grace_ms: 60_000,
            shards: 4,
            ..StoreConfig::default()
        });
        set(&s, b"gone", b"x", None);
        s.delete(b"gone", T0).unwrap();
        let used = s.stats().used_bytes;
        let big = [0u8; 100];
        let pairs: Vec<(Vec<u8>, &[u8])> = [&b"gone"[..], b"a", b"b", b"c", b"d", b"e"]
            .iter()
            .map(|k| (k.to_vec(), &big[..]))
            .collect();
        assert!(matches!(
            s.mset_if_absent(&pairs, None, T0).unwrap_err(),
            StoreError::MemoryFull { .. }
        ));
        for (key, _) in &pairs {
            assert_eq!(s.get(key, T0).unwrap(), None, "{key:?}");
        }
        assert_eq!(s.stats().used_bytes, used, "every charge given back");
        assert_eq!(
            s.get_versioned(b"gone").unwrap().unwrap().value,
            None,
            "tombstone restored"
        );
    }
}
