//! One shard of the store: a hash index over a slab of entries, with a CLOCK hand and an expiry index.
//!
//! The index maps a key's hash to a slab slot (4 bytes per table slot); the slab holds the entry
//! pointers (8 bytes each). Keeping entries in a slab gives the CLOCK hand a stable position to
//! resume from, which a hash table's iteration order cannot give. Freed slots are reused.
//!
//! Every method here runs under the shard's lock, taken by the caller; nothing here knows about
//! memory limits or counters, which the store keeps.
//!
//! **Slot chains**: the entries of each hash slot (the cluster's placement unit, [`key_slot`])
//! are also linked in a doubly-linked list through `links` (8 bytes per slab position, parallel
//! to the slab), headed per slot in `heads`. A shard holds the keys of its own hash slots only
//! (the store picks the shard from the slot: `slot % shards`), so `heads` has one 4-byte head
//! per slot *of this shard* (`SLOTS / shards`: 256 at 64 shards, 1 KiB), allocated with the first
//! entry. A new entry goes to the head of its slot's chain; removal unlinks it in O(1). So the
//! entries of one slot are found without scanning the shard (rebalancing, `StreamEntries`,
//! `CLUSTER GETKEYSINSLOT`).
//!
//! **Free slab positions** are chained through the same `links` (`next` of a free position is
//! the next free one), so freeing a position never allocates.

use std::collections::BTreeSet;

use hashbrown::HashTable;
use ringcache_proto::placement::{SLOTS, key_slot};

use super::entry::Entry;

/// No position: the end of a chain, or an empty slot's head.
pub(crate) const NIL: u32 = u32::MAX;

/// A slab position's neighbours in its hash slot's chain.
#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
};

#[derive(Debug)]
pub(crate) struct Shard {
    /// Slot numbers, found by key hash; the key itself lives in the entry.
    table: HashTable<u32>,
    /// Entries by slot; `None` marks a free slot (chained from `free`).
    slots: Vec<Option<Entry>>,
    /// Per slab position, its neighbours in its hash slot's chain (same length as `slots`).
    links: Vec<Link>,
    /// Per hash slot of this shard (slot `s` at `s >> chain_shift`), the first slab position of
    /// its chain ([`NIL`]: none). Empty until the first insert.
    heads: Box<[u32]>,
    /// log2 of the store's shard count: slot `s` of this shard has head `s >> chain_shift`.
    chain_shift: u32,
    /// The first free slab position ([`NIL`]: none); the rest follow through `links[..].next`.
    free: u32,
    /// The CLOCK hand: the next slot eviction looks at.
    hand: usize,
    /// (expires_at_ms, slot) of every entry that has a TTL, oldest first.
    expiries: BTreeSet<(u64, u32)>,
    /// How many entries are tombstones.
    tombstones: usize,
    /// Bumped whenever entries change slots (compaction, clear): a key scan that resumes at a
    /// slot number under another generation starts the shard over (`Store::scan_keys`).
    generation: u64,
    /// The highest version of a tombstone evicted before its grace ran out, per group of keys
    /// (hash bits 32..38; empty until the first such eviction): a copy from elsewhere at or below
    /// it, of a key this shard does not hold, may be older than the forgotten delete, so it is
    /// refused rather than allowed to revive the key.
    tombstone_floors: Vec<u64>,
}

/// Key groups per shard that remember evicted tombstones' versions (64 x 64 shards = 4,096 per
/// store by default: an eviction refuses late copies of 1/4,096 of the absent keys, not all).
const FLOOR_GROUPS: usize = 64;

fn floor_group(hash: u64) -> usize {
    ((hash >> 32) as usize) & (FLOOR_GROUPS - 1)
}

impl Shard {
    /// An empty shard of a store with `2^shard_bits` shards, which holds the hash slots `s` with
    /// `s % 2^shard_bits` equal to its index.
    pub(crate) fn new(shard_bits: u32) -> Self {
        Self {
            table: HashTable::new(),
            slots: Vec::new(),
            links: Vec::new(),
            heads: Box::default(),
            chain_shift: shard_bits,
            free: NIL,
            hand: 0,
            expiries: BTreeSet::new(),
            tombstones: 0,
            generation: 0,
            tombstone_floors: Vec::new(),
        }
    }

    /// An empty shard like this one (same slots), of the next generation. The tombstone floors
    /// stay: forgetting them would let a late copy older than an evicted tombstone revive its key.
    fn emptied(&mut self) -> Self {
        Self {
            generation: self.generation.wrapping_add(1),
            tombstone_floors: std::mem::take(&mut self.tombstone_floors),
            ..Self::new(self.chain_shift)
        }
    }

    /// Where hash slot `slot`'s chain head is kept in `heads`.
    fn head_index(&self, slot: u16) -> usize {
        usize::from(slot) >> self.chain_shift
    }

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

    /// The version at or below which a copy of an absent key with this hash may predate an
    /// evicted tombstone (0: no tombstone of its group was evicted).
    pub(crate) fn tombstone_floor(&self, hash: u64) -> u64 {
        self.tombstone_floors
            .get(floor_group(hash))
            .copied()
            .unwrap_or(0)
    }

    /// Remembers that a tombstone of `version` for a key with this hash was evicted.
    pub(crate) fn raise_tombstone_floor(&mut self, hash: u64, version: u64) {
        if self.tombstone_floors.is_empty() {
            self.tombstone_floors = vec![0; FLOOR_GROUPS];
        }
        let floor = &mut self.tombstone_floors[floor_group(hash)];
        *floor = (*floor).max(version);
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
        let chain = self.head_index(key_slot(entry.key()));
        let slot = match self.free {
            slot if slot != NIL => {
                self.free = self.links[slot as usize].next;
                self.slots[slot as usize] = Some(entry);
                slot
            }
            _ => {
                // Below NIL: a position is never mistaken for the end of a chain.
                let slot = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&s| s < NIL)
                    .expect("fewer than 2^32 - 1 entries per shard");
                self.slots.push(Some(entry));
                self.links.push(UNLINKED);
                slot
            }
        };
        self.link(chain, slot);
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
        self.unlink(self.head_index(key_slot(entry.key())), slot);
        self.tombstones -= usize::from(entry.is_tombstone());
        if let Some(at) = entry.expires_at() {
            self.expiries.remove(&(at, slot));
        }
        self.links[slot as usize].next = self.free;
        self.free = slot;
        entry
    }

    /// Puts slab position `at` at the head of hash slot `chain`'s chain.
    fn link(&mut self, chain: usize, at: u32) {
        if self.heads.is_empty() {
            let heads = (usize::from(SLOTS) >> self.chain_shift).max(1);
            self.heads = vec![NIL; heads].into_boxed_slice();
        }
        let first = self.heads[chain];
        self.links[at as usize] = Link {
            prev: NIL,
            next: first,
        };
        if first != NIL {
            self.links[first as usize].prev = at;
        }
        self.heads[chain] = at;
    }

    /// Takes slab position `at` out of hash slot `chain`'s chain.
    fn unlink(&mut self, chain: usize, at: u32) {
        let Link { prev, next } = std::mem::replace(&mut self.links[at as usize], UNLINKED);
        if prev == NIL {
            self.heads[chain] = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
        }
    }

    /// The first slab position of hash slot `chain`'s chain ([`NIL`]: no entry of that slot).
    /// `chain` must be one of this shard's slots.
    pub(crate) fn chain_head(&self, chain: u16) -> u32 {
        self.heads
            .get(self.head_index(chain))
            .copied()
            .unwrap_or(NIL)
    }

    /// Whether this shard holds an entry of hash slot `chain`.
    pub(crate) fn holds_slot(&self, chain: u16) -> bool {
        self.chain_head(chain) != NIL
    }

    /// Up to `max` entries of a slot's chain from slab position `from` (which must be in that
    /// chain; [`Shard::chain_head`] to start), and the position to continue from ([`NIL`]: the
    /// chain is done).
    pub(crate) fn chain_from(&self, from: u32, max: usize) -> (Vec<Entry>, u32) {
        let mut out = Vec::new();
        let mut at = from;
        while at != NIL && out.len() < max {
            if let Some(entry) = &self.slots[at as usize] {
                out.push(entry.clone());
            }
            at = self.links[at as usize].next;
        }
        (out, at)
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
        *self = self.emptied();
        n
    }

    /// Gives memory back after the shard shrank a lot (e.g. after a flush or mass expiry).
    pub(crate) fn shrink_if_sparse(&mut self, hash_of: impl Fn(&[u8]) -> u64) {
        if self.slots.len() > 1024 && self.len() < self.slots.len() / 4 {
            // Slots are positions: they can only be compacted by re-inserting everything.
            let entries: Vec<Entry> = self.slots.drain(..).flatten().collect();
            *self = self.emptied();
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
