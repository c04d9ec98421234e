//! Versioned entries as they travel between nodes: the wire form of what a store holds for a key,
//! and applying one that arrived (replication, hints, read repair, rebalancing, anti-entropy).

use bytes::Bytes;
use ringcache_proto::v1;

use crate::store::{Store, StoreError, VersionedItem};

/// The wire form of what a store holds for `key`.
pub fn to_wire(key: Bytes, item: VersionedItem) -> v1::VersionedEntry {
    v1::VersionedEntry {
        key,
        value: item.value,
        version: item.version,
        expires_at_ms: item.expires_at_ms,
    }
}

/// Applies one entry from another node to `store` at `now_ms`; returns whether it took effect.
/// A version further ahead of `now_ms` than `max_clock_drift` is refused
/// ([`StoreError::ClockDrift`]) and changes nothing.
pub fn apply_entry(
    store: &Store,
    entry: &v1::VersionedEntry,
    now_ms: u64,
) -> Result<bool, StoreError> {
    store.apply(
        &entry.key,
        entry.value.as_deref(),
        entry.version,
        entry.expires_at_ms,
        now_ms,
    )
}
