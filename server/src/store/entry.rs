//! One stored item: key, value and metadata in a single reference-counted allocation.
//!
//! The table slot that points at an entry is one thin pointer (8 bytes); the allocation holds the
//! reference count, a small header and the key bytes followed by the value bytes. Readers clone the
//! pointer under the shard's read lock and then serve the value from it without copying
//! ([`Entry::value_bytes`]), so a large value never holds a lock while it is encoded or sent.
//!
//! Mutable metadata (`version`, `expires_at_ms`, `visited`) is atomic: `visited` is set by readers
//! under the read lock, the others are changed only under the shard's write lock.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use triomphe::ThinArc;

/// Fixed metadata stored in front of the key and value bytes: 16 bytes, so that with the
/// allocation's reference count and length a 14-byte key and 100-byte value fit in 152 bytes.
#[derive(Debug)]
pub(crate) struct Header {
    version: AtomicU64,
    /// Packed: key length (bits 48..64), CLOCK reference bit (bit 47), tombstone bit (bit 46),
    /// expiry in unix ms (bits 0..46, 0 = never; 2^46 ms reaches the year 4199).
    meta: AtomicU64,
}

const KEY_LEN_SHIFT: u32 = 48;
const VISITED: u64 = 1 << 47;
/// Set on a deletion marker: the key is absent, the entry only remembers the delete's version.
const TOMBSTONE: u64 = 1 << 46;
const EXPIRY_MASK: u64 = TOMBSTONE - 1;

/// The longest key an entry can hold.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

/// The latest expiry an entry can hold (unix ms); later deadlines are clamped to it.
pub const MAX_EXPIRY_MS: u64 = EXPIRY_MASK;

/// A shared handle to one stored item.
#[derive(Debug, Clone)]
pub(crate) struct Entry(ThinArc<Header, u8>);

/// Bytes of the allocation in front of the key and value: the reference count (8), the
/// [`Header`] (16) and the slice length (8), as `triomphe` lays out a `ThinArc`.
const ALLOC_PREFIX_BYTES: usize = 32;

/// What an entry costs in the shard's structures besides its allocation: its slab pointer (8 B)
/// and chain link (8 B), its index bucket (4 B + 1 control byte at hashbrown's load factor of
/// 7/16 to 7/8) and the headroom the slab vectors and the index keep when they double. Measured
/// with `memprobe` and under churn (BENCHMARKS.md); used for `max_memory` accounting.
pub const INDEX_BYTES_PER_ENTRY: usize = 32;

/// The bytes the allocator really takes for an entry of `key_len + value_len` bytes: the
/// allocation's size (prefix, key and value, padded to 8) as glibc's malloc serves it, with its
/// 8-byte chunk header, rounded up to 16 and at least 32 bytes.
pub fn allocation_bytes(key_len: usize, value_len: usize) -> usize {
    let size = (ALLOC_PREFIX_BYTES + key_len + value_len).next_multiple_of(8);
    (size + 8).next_multiple_of(16).max(32)
}

/// Bytes charged against `max_memory` for an item of this size: its allocation as the
/// allocator serves it ([`allocation_bytes`]) and its share of the shard's index and slab
/// ([`INDEX_BYTES_PER_ENTRY`]).
pub fn charge(key_len: usize, value_len: usize) -> usize {
    allocation_bytes(key_len, value_len) + INDEX_BYTES_PER_ENTRY
}

/// Copies two slices one after the other, with an exact length, into the entry's allocation.
struct Concat<'a> {
    first: std::slice::Iter<'a, u8>,
    second: std::slice::Iter<'a, u8>,
}

impl Iterator for Concat<'_> {
    type Item = u8;

    #[inline]
    fn next(&mut self) -> Option<u8> {
        self.first.next().or_else(|| self.second.next()).copied()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.first.len() + self.second.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for Concat<'_> {}

/// The value part of an entry, so `Bytes` can borrow it without a copy.
struct ValueOwner(Entry);

impl AsRef<[u8]> for ValueOwner {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

impl Entry {
    /// A new entry. `key` must be at most [`MAX_KEY_LEN`] bytes (the store's key limit ensures it);
    /// `expires_at_ms` 0 means never.
    pub(crate) fn new(key: &[u8], value: &[u8], version: u64, expires_at_ms: u64) -> Self {
        assert!(
            key.len() <= MAX_KEY_LEN,
            "key length is bounded by max_key_bytes"
        );
        let header = Header {
            version: AtomicU64::new(version),
            meta: AtomicU64::new(
                ((key.len() as u64) << KEY_LEN_SHIFT) | expires_at_ms.min(MAX_EXPIRY_MS),
            ),
        };
        let bytes = Concat {
            first: key.iter(),
            second: value.iter(),
        };
        Self(ThinArc::from_header_and_iter(header, bytes))
    }

    /// A deletion marker for `key` at `version`, kept until `expires_at_ms`.
    pub(crate) fn tombstone(key: &[u8], version: u64, expires_at_ms: u64) -> Self {
        let entry = Self::new(key, b"", version, expires_at_ms);
        entry.header().meta.fetch_or(TOMBSTONE, Ordering::Relaxed);
        entry
    }

    /// Whether this entry marks a deleted key.
    pub(crate) fn is_tombstone(&self) -> bool {
        self.header().meta.load(Ordering::Relaxed) & TOMBSTONE != 0
    }

    /// A readable value: not a tombstone and not expired.
    pub(crate) fn is_live(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && !self.is_expired(now_ms)
    }

    fn header(&self) -> &Header {
        &self.0.header.header
    }

    fn key_len(&self) -> usize {
        (self.header().meta.load(Ordering::Relaxed) >> KEY_LEN_SHIFT) as usize
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.0.slice[..self.key_len()]
    }

    pub(crate) fn value(&self) -> &[u8] {
        &self.0.slice[self.key_len()..]
    }

    /// The value as `Bytes` that keep this entry alive: no copy.
    pub(crate) fn value_bytes(&self) -> Bytes {
        Bytes::from_owner(ValueOwner(self.clone()))
    }

    pub(crate) fn version(&self) -> u64 {
        self.header().version.load(Ordering::Acquire)
    }

    pub(crate) fn set_version(&self, version: u64) {
        self.header().version.store(version, Ordering::Release);
    }

    /// Expiry in unix ms, `None` when the entry never expires.
    /// This entry as [`super::copy_order`] compares it.
    pub(crate) fn as_copy(&self) -> super::CopyRef<'_> {
        super::CopyRef {
            version: self.version(),
            value: (!self.is_tombstone()).then(|| self.value()),
            expires_at_ms: self.expires_at(),
        }
    }

    pub(crate) fn expires_at(&self) -> Option<u64> {
        match self.header().meta.load(Ordering::Acquire) & EXPIRY_MASK {
            0 => None,
            at => Some(at),
        }
    }

    /// Changes the expiry; keeps the key length and a concurrent reader's reference bit.
    pub(crate) fn set_expires_at(&self, expires_at: Option<u64>) {
        let expiry = expires_at.unwrap_or(0).min(MAX_EXPIRY_MS);
        let _ = self
            .header()
            .meta
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |meta| {
                Some((meta & !EXPIRY_MASK) | expiry)
            });
    }

    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at().is_some_and(|at| at <= now_ms)
    }

    /// Marks the entry as recently used. Writes the flag only when it is clear, so hot keys do not
    /// bounce a cache line between cores on every read.
    pub(crate) fn touch(&self) {
        let meta = &self.header().meta;
        if meta.load(Ordering::Relaxed) & VISITED == 0 {
            meta.fetch_or(VISITED, Ordering::Relaxed);
        }
    }

    /// Clears the reference bit and says whether it was set (CLOCK's second chance).
    pub(crate) fn take_visited(&self) -> bool {
        self.header().meta.fetch_and(!VISITED, Ordering::Relaxed) & VISITED != 0
    }

    /// Bytes charged against `max_memory`.
    pub(crate) fn charge(&self) -> usize {
        charge(self.key_len(), self.value().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_value_round_trip_and_value_bytes_share_the_allocation() {
        let e = Entry::new(b"user:1", b"hello world", 7, 0);
        assert_eq!(e.key(), b"user:1");
        assert_eq!(e.value(), b"hello world");
        assert_eq!(e.version(), 7);
        assert_eq!(e.expires_at(), None);
        let v = e.value_bytes();
        assert_eq!(&v[..], b"hello world");
        assert_eq!(v.as_ptr(), e.value().as_ptr(), "no copy");
        drop(e);
        assert_eq!(&v[..], b"hello world", "bytes keep the entry alive");
    }

    #[test]
    fn empty_value_and_metadata_updates() {
        let e = Entry::new(b"k", b"", 1, 500);
        assert_eq!(e.value(), b"");
        assert!(!e.is_expired(499));
        assert!(e.is_expired(500));
        e.set_expires_at(None);
        assert!(!e.is_expired(u64::MAX));
        e.set_version(9);
        assert_eq!(e.version(), 9);
        assert!(!e.take_visited());
        e.touch();
        assert!(e.take_visited());
        assert!(!e.take_visited());
        assert_eq!(e.charge(), charge(1, 0));
    }

    #[test]
    fn packed_metadata_fields_do_not_disturb_each_other() {
        let key = vec![b'k'; MAX_KEY_LEN];
        let e = Entry::new(&key, b"v", 1, MAX_EXPIRY_MS + 10);
        assert_eq!(e.expires_at(), Some(MAX_EXPIRY_MS), "clamped");
        e.touch();
        e.set_expires_at(Some(12_345));
        assert_eq!(e.key(), &key[..]);
        assert_eq!(e.value(), b"v");
        assert_eq!(e.expires_at(), Some(12_345));
        assert!(e.take_visited(), "reference bit survives an expiry change");
        e.set_expires_at(None);
        assert_eq!(e.expires_at(), None);
        assert_eq!(e.key().len(), MAX_KEY_LEN);
    }

    #[test]
    fn tombstones_are_never_live_and_keep_their_version() {
        let t = Entry::tombstone(b"k", 42, 1_000);
        assert!(t.is_tombstone() && !t.is_live(0));
        assert_eq!(
            (t.version(), t.value(), t.expires_at()),
            (42, &b""[..], Some(1_000))
        );
        t.touch();
        assert!(
            t.is_tombstone(),
            "the reference bit leaves the tombstone bit alone"
        );
        let e = Entry::new(b"k", b"v", 1, 0);
        assert!(!e.is_tombstone() && e.is_live(u64::MAX));
    }

    #[test]
    fn the_allocation_size_is_what_glibc_serves() {
        // A 14-byte key and 100-byte value: 32 + 114 = 146 bytes, padded to 152, served from a
        // 160-byte chunk (8-byte chunk header, 16-byte steps; BENCHMARKS.md "Memory per key").
        assert_eq!(allocation_bytes(14, 100), 160);
        // 14 + 200: 246, padded to 248, chunk 256.
        assert_eq!(allocation_bytes(14, 200), 256);
        // The smallest chunk glibc hands out is 32 bytes; an empty item takes 48.
        assert_eq!(allocation_bytes(0, 0), 48);
        // Sizes within one 16-byte step cost the same; one byte past it costs 16 more.
        assert_eq!(allocation_bytes(5, 100), allocation_bytes(5, 101));
        assert_eq!(allocation_bytes(5, 115), allocation_bytes(5, 116) - 16);
        for n in 0..4_096 {
            let bytes = allocation_bytes(n, 0);
            assert!(
                bytes.is_multiple_of(16) && bytes >= 32 + n + 8,
                "{n}: {bytes}"
            );
            assert!(bytes <= 32 + n + 23, "{n}: {bytes}");
            assert_eq!(charge(n, 0), bytes + INDEX_BYTES_PER_ENTRY);
        }
    }

    #[test]
    fn the_header_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Header>(), 16);
    }

    #[test]
    fn an_entry_pointer_is_thin() {
        assert_eq!(std::mem::size_of::<Entry>(), 8);
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 8);
    }
}
