//! One shard of the store: a hash index over a slab of entries, with a CLOCK hand and an expiry index.
//!
//! The index maps a key's hash to a slab slot (4 bytes per table slot); the slab holds the entry
//! pointers (8 bytes each). Keeping entries in a slab gives the CLOCK hand a stable position to
//! resume from, which a hash table's iteration order cannot give. Freed slots are reused.
//!
//! Every method here runs under the shard's lock, taken by the caller; nothing here knows about
//! memory limits or counters, which the store keeps.

use std::collections::BTreeSet;

use hashbrown::HashTable;

use super::entry::Entry;

#[derive(Debug, Default)]
pub(crate) struct Shard {
    /// Slot numbers, found by key hash; the key itself lives in the entry.
    table: HashTable<u32>,
    /// Entries by slot; `None` marks a free slot (listed in `free`).
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// The CLOCK hand: the next slot eviction looks at.
    hand: usize,
    /// (expires_at_ms, slot) of every entry that has a TTL, oldest first.
    expiries: BTreeSet<(u64, u32)>,
    /// How many entries are tombstones.
    tombstones: usize,
    /// Bumped whenever entries change slots (compaction, clear): a key scan that resumes at a
    /// slot number under another generation starts the shard over (`Store::scan_keys`).
    generation: u64,
}

impl Shard {
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Entries that are not tombstones (expired ones included until reclaimed).
    pub(crate) fn value_len(&self) -> usize {
        self.table.len() - self.tombstones
    }

    /// Up to `max` entries from slot `cursor` on, and the cursor to continue from (`None` at the
    /// end). Entries inserted or moved while a scan runs may be missed or seen twice.
    pub(crate) fn entries_from(&self, cursor: usize, max: usize) -> (Vec<Entry>, Option<usize>) {
        let mut out = Vec::new();
        let mut at = cursor;
        while at < self.slots.len() && out.len() < max {
            if let Some(entry) = &self.slots[at] {
                out.push(entry.clone());
            }
            at += 1;
        }
        (out, (at < self.slots.len()).then_some(at))
    }

    /// The number of slab slots (occupied or free): positions `0..slot_count()`.
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The entry at slab position `at`, if the slot is occupied.
    pub(crate) fn at(&self, at: usize) -> Option<&Entry> {
        self.slots.get(at).and_then(Option::as_ref)
    }

    /// How many times entries changed slots (see the field).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(hash, |&slot| slot_entry(slots, slot).key() == key)
            .copied()
    }

    pub(crate) fn entry(&self, slot: u32) -> &Entry {
        slot_entry(&self.slots, slot)
    }

    /// Adds an entry whose key is not present. `hash_of` recomputes a stored key's hash when the
    /// table grows.
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        entry: Entry,
        hash_of: impl Fn(&[u8]) -> u64,
    ) -> u32 {
        let expires_at = entry.expires_at();
        self.tombstones += usize::from(entry.is_tombstone());
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                let slot =
                    u32::try_from(self.slots.len()).expect("fewer than 2^32 entries per shard");
                self.slots.push(Some(entry));
                slot
            }
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, slot, |&s| hash_of(slot_entry(slots, s).key()));
        if let Some(at) = expires_at {
            self.expiries.insert((at, slot));
        }
        slot
    }

    /// Puts a new entry for the same key in `slot` and returns the old one.
    pub(crate) fn replace(&mut self, slot: u32, entry: Entry) -> Entry {
        let new_expiry = entry.expires_at();
        self.tombstones += usize::from(entry.is_tombstone());
        let old = self.slots[slot as usize]
            .replace(entry)
            .expect("replace targets an occupied slot");
        self.tombstones -= usize::from(old.is_tombstone());
        if let Some(at) = old.expires_at() {
            self.expiries.remove(&(at, slot));
        }
        if let Some(at) = new_expiry {
            self.expiries.insert((at, slot));
        }
        old
    }

    /// Changes the expiry of the entry in `slot`, keeping the expiry index in step.
    pub(crate) fn set_expiry(&mut self, slot: u32, expires_at: Option<u64>) {
        let entry = slot_entry(&self.slots, slot);
        if let Some(at) = entry.expires_at() {
            self.expiries.remove(&(at, slot));
        }
        entry.set_expires_at(expires_at);
        if let Some(at) = expires_at {
            self.expiries.insert((at, slot));
        }
    }

    /// Removes the entry in `slot`, whose key hashes to `hash`.
    pub(crate) fn remove(&mut self, hash: u64, slot: u32) -> Entry {
        match self.table.find_entry(hash, |&s| s == slot) {
            Ok(found) => {
                found.remove();
            }
            Err(_) => unreachable!("every occupied slot is indexed under its key's hash"),
        }
        let entry = self.slots[slot as usize]
            .take()
            .expect("remove targets an occupied slot");
        self.tombstones -= usize::from(entry.is_tombstone());
        if let Some(at) = entry.expires_at() {
            self.expiries.remove(&(at, slot));
        }
        self.free.push(slot);
        entry
    }

    /// The slot of the entry that expires first, if it has expired by `now_ms`.
    pub(crate) fn first_expired(&self, now_ms: u64) -> Option<u32> {
        self.expiries
            .first()
            .filter(|(at, _)| *at <= now_ms)
            .map(|&(_, slot)| slot)
    }

    /// Picks the next eviction victim with CLOCK: entries whose reference bit is set get it cleared
    /// and are skipped once. Never picks `exclude`. At most two sweeps, so it always terminates.
    pub(crate) fn clock_victim(&mut self, exclude: Option<u32>) -> Option<u32> {
        let n_slots = self.slots.len();
        if n_slots == 0 {
            return None;
        }
        for _ in 0..2 * n_slots + 1 {
            if self.hand >= n_slots {
                self.hand = 0;
            }
            let slot = self.hand;
            self.hand += 1;
            let Some(entry) = &self.slots[slot] else {
                continue;
            };
            let slot = slot as u32;
            if Some(slot) == exclude {
                continue;
            }
            if entry.take_visited() {
                continue;
            }
            return Some(slot);
        }
        None
    }

    /// Bytes charged for all entries of this shard.
    pub(crate) fn charged_bytes(&self) -> usize {
        self.slots.iter().flatten().map(Entry::charge).sum()
    }

    /// Drops every entry and returns how many there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.len();
        let generation = self.generation.wrapping_add(1);
        *self = Self::default();
        self.generation = generation;
        n
    }

    /// Gives memory back after the shard shrank a lot (e.g. after a flush or mass expiry).
    pub(crate) fn shrink_if_sparse(&mut self, hash_of: impl Fn(&[u8]) -> u64) {
        if self.slots.len() > 1024 && self.len() < self.slots.len() / 4 {
            // Slots are positions: they can only be compacted by re-inserting everything.
            let entries: Vec<Entry> = self.slots.drain(..).flatten().collect();
            let generation = self.generation.wrapping_add(1);
            *self = Self::default();
            self.generation = generation;
            for entry in entries {
                let hash = hash_of(entry.key());
                self.insert(hash, entry, &hash_of);
            }
        }
    }
}

fn slot_entry(slots: &[Option<Entry>], slot: u32) -> &Entry {
    slots[slot as usize]
        .as_ref()
        .expect("the index only holds occupied slots")
}
