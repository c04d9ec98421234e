//! Anti-entropy: replicas converge without a read touching every key.
//!
//! Hints repair what a coordinator saw fail, and QUORUM reads repair what they read. Neither
//! covers a write whose hints expired or died with a crashed coordinator, a replica that missed
//! writes during a partition longer than the hint age, or keys nobody reads. So every
//! `anti_entropy_interval` each node compares, with its next peer in turn (round robin), digests of
//! the keys both of them replicate:
//!
//! 1. Keys are put in [`BUCKETS`] buckets by their hash; a bucket's digest is the XOR of a
//!    64-bit hash of each key's copy (key, version, value or tombstone, expiry). Expired values
//!    are left out: they may be reclaimed at different times on two nodes. When the ring has no
//!    more members than R, every key is shared and no ring lookup is needed.
//! 2. `Internal.AntiEntropy` sends the caller's digests for the pair (8 KiB, the whole cost when
//!    nothing differs) with its topology digest: both sides must place keys with the same ring,
//!    else nothing is compared this round. The callee computes its own, and answers with the
//!    indexes of the differing buckets and its summary (key, version, content hash) of every
//!    key in as many of them as `max_keys` allows, whole buckets only.
//! 3. The caller compares those summaries with its own keys in the same buckets, key by key,
//!    with [`crate::store::copy_order`]'s rule: what the peer has newer (or alone) is pulled
//!    with `ReadVersions` and applied; what this node has newer (or alone) is pushed with
//!    `Replicate`; equal versions with different content go both ways and `apply` keeps the
//!    winner on both. Then it asks for the next differing buckets, until all are done.
//!
//! Throttling: one comparison per node per round, batches of `max_batch_keys` one after the
//! other, and scans that yield to other tasks every [`SCAN_CHUNK`] entries. At rest a round costs
//! each node about two scans (the comparison it starts and, on average, one it answers) and
//! 8 KiB per comparison, whatever the cluster's size; with N nodes each pair is compared about
//! every (N-1)/2 rounds. Keys written while the two scans run may show as differing; their
//! buckets are summarised and compared key by key, and nothing moves for keys that agree. Versions beyond `max_clock_drift` are refused on both paths as
//! everywhere else. The interval must be shorter than the tombstone grace, or a replica that
//! missed a delete could get the old value back once every tombstone is gone (the same rule as
//! Cassandra's repair within `gc_grace_seconds`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use ringcache_proto::placement::key_hash;
use ringcache_proto::topology::NodeState;
use ringcache_proto::v1;

use crate::api::status::ApiError;
use crate::context::Context;
use crate::peer::{self, PeerError};
use crate::replication::wire::{apply_entry, to_wire};
use crate::store::{CopyRef, Store};
use crate::view::ClusterView;

/// Buckets per pair of nodes (a power of two).
pub const BUCKETS: usize = 1024;
/// Bits of the key hash that pick the bucket.
const BUCKET_BITS: u32 = BUCKETS.trailing_zeros();
/// Entries scanned between two yields to other tasks.
pub const SCAN_CHUNK: usize = 1024;
/// Default upper bound on the key summaries in one answer.
pub const DEFAULT_MAX_KEYS: usize = 250_000;

/// The bucket of a key.
pub fn bucket_of(key: &[u8]) -> usize {
    (key_hash(key) >> (64 - BUCKET_BITS)) as usize
}

/// A 64-bit hash of a copy's content (value or tombstone, and the value's expiry).
pub fn content_hash(copy: CopyRef<'_>) -> u64 {
    match copy.value {
        None => 0x7f4a_7c15_9e37_79b9,
        Some(value) => mix(key_hash(value) ^ mix(copy.expires_at_ms.unwrap_or(0))),
    }
}

/// A 64-bit hash of one key's copy, the unit of a bucket digest.
pub fn item_hash(key: &[u8], copy: CopyRef<'_>) -> u64 {
    bucket_and_hash(key, copy).1
}

/// The bucket of a key and the item hash of its copy, hashing the key once.
fn bucket_and_hash(key: &[u8], copy: CopyRef<'_>) -> (usize, u64) {
    let hash = key_hash(key);
    (
        (hash >> (64 - BUCKET_BITS)) as usize,
        mix(hash ^ mix(copy.version ^ mix(content_hash(copy)))),
    )
}

/// SplitMix64's finaliser: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Whether a copy takes part in the comparison at `now_ms`: everything but expired values.
fn compared(copy: CopyRef<'_>, now_ms: u64) -> bool {
    copy.value.is_none() || copy.expires_at_ms.is_none_or(|at| at > now_ms)
}

/// Most hash slots one `Internal.SlotDigests` call may ask for.
pub const MAX_DIGEST_SLOTS: usize = 1024;

/// The digest of each of `slots` as `store` holds it at `now_ms`: the XOR of the item hashes of
/// its copies, values already expired left out (two nodes may reclaim them at different times:
/// a difference only costs a push). Rebalancing skips pushing a slot to a member whose digest
/// equals its own. Yields to other tasks between slots.
pub async fn slot_digests(store: &Store, slots: &[u16], now_ms: u64) -> Vec<u64> {
    let mut digests = Vec::with_capacity(slots.len());
    for &slot in slots {
        let mut digest = 0;
        store.visit_slot(slot, |key, copy| {
            if compared(copy, now_ms) {
                digest ^= item_hash(key, copy);
            }
        });
        digests.push(digest);
        tokio::task::yield_now().await;
    }
    digests
}

/// Calls `visit` for every entry of `store`, yielding to other tasks between chunks.
async fn scan_store(store: &Store, mut visit: impl FnMut(&[u8], CopyRef<'_>)) {
    for shard in 0..store.shard_count() {
        let mut cursor = Some(0);
        while let Some(at) = cursor {
            cursor = store.visit(shard, at, SCAN_CHUNK, &mut visit);
            tokio::task::yield_now().await;
        }
    }
}

/// Whether `key` is replicated on both `self_id` and `peer` under `view`; `everything` skips the
/// ring lookup when both hold every key (a ring no larger than R).
fn shared(view: &ClusterView, everything: bool, self_id: &str, peer: &str, key: &[u8]) -> bool {
    if everything {
        return true;
    }
    let replicas = view.replicas(key);
    replicas.contains(self_id) && replicas.contains(peer)
}

/// What one node holds of the keys it shares with a peer, bucket by bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// Per bucket: the XOR of the keys' item hashes.
    pub hashes: Vec<u64>,
    /// Per bucket: about the bytes of its key summaries on the wire (to size answers).
    pub bytes: Vec<u64>,
}

/// Wire bytes of one key summary beyond its key (version, content hash, framing).
const SUMMARY_OVERHEAD: u64 = 24;

/// The bucket digests of the keys this node shares with `peer` under `view`.
pub async fn digests(
    store: &Store,
    view: &ClusterView,
    self_id: &str,
    peer: &str,
    now_ms: u64,
) -> Digests {
    let everything = view.ring.holds_every_key(self_id) && view.ring.holds_every_key(peer);
    let mut digests = Digests {
        hashes: vec![0u64; BUCKETS],
        bytes: vec![0u64; BUCKETS],
    };
    scan_store(store, |key, copy| {
        if compared(copy, now_ms) && shared(view, everything, self_id, peer, key) {
            let (bucket, hash) = bucket_and_hash(key, copy);
            digests.hashes[bucket] ^= hash;
            digests.bytes[bucket] += key.len() as u64 + SUMMARY_OVERHEAD;
        }
    })
    .await;
    digests
}

/// The summaries of the keys this node shares with `peer` in `buckets`, in key order.
pub async fn summaries(
    store: &Store,
    view: &ClusterView,
    self_id: &str,
    peer: &str,
    buckets: &HashSet<usize>,
    now_ms: u64,
) -> BTreeMap<Bytes, (u64, u64)> {
    let everything = view.ring.holds_every_key(self_id) && view.ring.holds_every_key(peer);
    let mut found = BTreeMap::new();
    scan_store(store, |key, copy| {
        if compared(copy, now_ms)
            && buckets.contains(&bucket_of(key))
            && shared(view, everything, self_id, peer, key)
        {
            found.insert(
                Bytes::copy_from_slice(key),
                (copy.version, content_hash(copy)),
            );
        }
    })
    .await;
    found
}

/// What to do about the keys of some buckets, from both sides' summaries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Keys the peer holds newer, or alone, or tied with other content: fetch and apply here.
    pub pull: Vec<Bytes>,
    /// Keys this node holds newer, or alone, or tied with other content: send to the peer.
    pub push: Vec<Bytes>,
}

/// Compares summaries (key → (version, content hash)) of the same buckets.
pub fn plan(local: &BTreeMap<Bytes, (u64, u64)>, remote: &BTreeMap<Bytes, (u64, u64)>) -> Plan {
    let mut plan = Plan::default();
    for (key, &(version, content)) in remote {
        match local.get(key) {
            None => plan.pull.push(key.clone()),
            Some(&(mine, _)) if mine < version => plan.pull.push(key.clone()),
            Some(&(mine, own)) if mine == version && own != content => {
                plan.pull.push(key.clone());
                plan.push.push(key.clone());
            }
            Some(_) => {}
        }
    }
    for (key, &(version, _)) in local {
        match remote.get(key) {
            None => plan.push.push(key.clone()),
            Some(&(theirs, _)) if version > theirs => plan.push.push(key.clone()),
            Some(_) => {}
        }
    }
    plan
}

/// Anti-entropy counters and the last round, for `ringctl stats` and metrics.
#[derive(Debug, Default)]
pub struct AntiEntropyStats {
    /// Rounds started (one per peer compared).
    pub rounds: AtomicU64,
    /// Rounds that could not compare (peer unreachable, topologies differed).
    pub rounds_skipped: AtomicU64,
    /// Buckets found different.
    pub buckets_differing: AtomicU64,
    /// Keys fetched from peers and applied here.
    pub keys_pulled: AtomicU64,
    /// Keys sent to peers.
    pub keys_pushed: AtomicU64,
    last: Mutex<Option<LastRound>>,
    /// The digests this node last answered with: (peer, topology digest, when, digests).
    answered: Mutex<Option<(String, u64, tokio::time::Instant, Digests)>>,
}

/// How the latest round with a peer went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRound {
    /// The peer compared with.
    pub peer: String,
    /// Unix ms when the round ended.
    pub at_ms: u64,
    /// Buckets that differed.
    pub differing: u64,
    /// Keys pulled.
    pub pulled: u64,
    /// Keys pushed.
    pub pushed: u64,
    /// Why the round did not complete, if it did not.
    pub error: Option<String>,
}

/// How long answered digests serve the later pages of one comparison.
const ANSWER_CACHE: Duration = Duration::from_secs(30);

impl AntiEntropyStats {
    /// The digests last answered to `peer` under topology `digest`, if recent.
    fn cached(&self, peer: &str, digest: u64) -> Option<Digests> {
        let cached = self.answered.lock();
        let (who, topology, at, digests) = cached.as_ref()?;
        (who == peer && *topology == digest && at.elapsed() < ANSWER_CACHE).then(|| digests.clone())
    }

    fn cache(&self, peer: &str, digest: u64, digests: Digests) {
        *self.answered.lock() = Some((
            peer.to_owned(),
            digest,
            tokio::time::Instant::now(),
            digests,
        ));
    }

    /// The latest round, if any ran.
    pub fn last(&self) -> Option<LastRound> {
        self.last.lock().clone()
    }

    /// The wire form (`NodeInfo.anti_entropy`).
    pub fn to_wire(&self, interval: Duration) -> v1::AntiEntropyStatus {
        let last = self.last();
        v1::AntiEntropyStatus {
            rounds: self.rounds.load(Ordering::Relaxed),
            rounds_skipped: self.rounds_skipped.load(Ordering::Relaxed),
            buckets_differing: self.buckets_differing.load(Ordering::Relaxed),
            keys_pulled: self.keys_pulled.load(Ordering::Relaxed),
            keys_pushed: self.keys_pushed.load(Ordering::Relaxed),
            last_peer: last.as_ref().map(|l| l.peer.clone()).unwrap_or_default(),
            last_at_ms: last.as_ref().map_or(0, |l| l.at_ms),
            last_differing: last.as_ref().map_or(0, |l| l.differing),
            last_pulled: last.as_ref().map_or(0, |l| l.pulled),
            last_pushed: last.as_ref().map_or(0, |l| l.pushed),
            last_error: last.and_then(|l| l.error).unwrap_or_default(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Runs a round with every peer every `interval` until shutdown; `interval` zero: never.
pub async fn run(node: Arc<Context>, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = node.shutdown_token().cancelled() => return,
            _ = tick.tick() => {}
        }
        round(&node).await;
    }
}

/// Compares this node with the next Active peer (round robin over the peers by id): each node
/// starts one comparison per round, so a node scans its store about twice per round (its own
/// comparison and one it is asked for) whatever the cluster's size.
pub async fn round(node: &Arc<Context>) {
    let view = node.view();
    let self_id = node.config().node_id.clone();
    if view
        .topology
        .member(&self_id)
        .is_none_or(|m| m.state != NodeState::Active)
    {
        return;
    }
    let peers: Vec<String> = view
        .topology
        .members()
        .iter()
        .filter(|m| m.node_id != self_id && m.state == NodeState::Active)
        .map(|m| m.node_id.clone())
        .collect();
    if peers.is_empty() {
        return;
    }
    let stats = node.anti_entropy();
    let turn = stats.rounds.fetch_add(1, Ordering::Relaxed);
    let peer = peers[usize::try_from(turn).unwrap_or(0) % peers.len()].clone();
    let table = digests(node.store(), &view, &self_id, &peer, node.now_ms()).await;
    let outcome = with_peer(node, &view, &peer, &table.hashes).await;
    let last = match outcome {
        Ok((differing, pulled, pushed)) => LastRound {
            peer: peer.clone(),
            at_ms: node.now_ms(),
            differing,
            pulled,
            pushed,
            error: None,
        },
        Err(error) => {
            stats.rounds_skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, %error, "anti-entropy round skipped");
            LastRound {
                peer: peer.clone(),
                at_ms: node.now_ms(),
                differing: 0,
                pulled: 0,
                pushed: 0,
                error: Some(error),
            }
        }
    };
    if last.pulled + last.pushed > 0 {
        tracing::info!(
            peer = %last.peer,
            differing_buckets = last.differing,
            pulled = last.pulled,
            pushed = last.pushed,
            "anti-entropy repaired diverged replicas"
        );
    }
    *stats.last.lock() = Some(last);
}

/// One round with `peer`: (buckets differing, keys pulled, keys pushed).
async fn with_peer(
    node: &Arc<Context>,
    view: &ClusterView,
    peer: &str,
    table: &[u64],
) -> Result<(u64, u64, u64), String> {
    let addr = view
        .topology
        .member(peer)
        .map(|m| m.cluster_addr.clone())
        .ok_or("not in the topology")?;
    let self_id = node.config().node_id.clone();
    let timeout = node.config().replication.replica_timeout;
    let stats = node.anti_entropy();
    let (mut differing_total, mut pulled, mut pushed) = (0u64, 0u64, 0u64);
    let mut first = 0usize;
    let mut pages = 0;
    loop {
        pages += 1;
        let mut client = node
            .peers()
            .internal_client(&addr)
            .map_err(|error| error.message)?;
        let mut request = tonic::Request::new(v1::AntiEntropyRequest {
            from_node_id: self_id.clone(),
            topology_digest: view.topology.digest(),
            buckets: table[first..].to_vec(),
            max_keys: 0,
        });
        // The callee scans its store: give it more than one replica timeout.
        request.set_timeout(timeout * 5);
        let answer = tokio::time::timeout(timeout * 5, peer::call(client.anti_entropy(request)))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|error: PeerError| error.message)?;
        if answer.topology_digest != view.topology.digest() {
            return Err("the peer's topology differs; next round".to_owned());
        }
        let differing: Vec<usize> = answer
            .differing
            .iter()
            .map(|&b| first + b as usize)
            .filter(|&b| b < BUCKETS)
            .collect();
        if pages == 1 {
            differing_total = differing.len() as u64;
            stats
                .buckets_differing
                .fetch_add(differing_total, Ordering::Relaxed);
        }
        let summarized = (answer.summarized as usize).min(differing.len());
        if summarized == 0 {
            if differing.is_empty() {
                break;
            }
            return Err("the peer summarised no bucket".to_owned());
        }
        let buckets: HashSet<usize> = differing[..summarized].iter().copied().collect();
        let remote: BTreeMap<Bytes, (u64, u64)> = answer
            .keys
            .into_iter()
            .map(|k| (k.key, (k.version, k.content)))
            .collect();
        let local = summaries(node.store(), view, &self_id, peer, &buckets, node.now_ms()).await;
        let plan = plan(&local, &remote);
        let n = pull(node, &addr, &plan.pull).await?;
        stats.keys_pulled.fetch_add(n, Ordering::Relaxed);
        pulled += n;
        let n = push(node, &addr, &plan.push).await?;
        stats.keys_pushed.fetch_add(n, Ordering::Relaxed);
        pushed += n;
        if summarized == differing.len() {
            break;
        }
        first = differing[summarized];
    }
    Ok((differing_total, pulled, pushed))
}

/// Fetches `keys` from the peer and applies what it holds; returns how many took effect.
async fn pull(node: &Arc<Context>, addr: &str, keys: &[Bytes]) -> Result<u64, String> {
    let timeout = node.config().replication.replica_timeout;
    let mut applied = 0;
    for chunk in keys.chunks(node.config().max_batch_keys.max(1)) {
        let mut client = node
            .peers()
            .internal_client(addr)
            .map_err(|error| error.message)?;
        let mut request = tonic::Request::new(v1::ReadVersionsRequest {
            keys: chunk.to_vec(),
        });
        request.set_timeout(timeout);
        let answer = tokio::time::timeout(timeout, peer::call(client.read_versions(request)))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|error: PeerError| error.message)?;
        for entry in answer.results.iter().filter_map(|r| r.entry.as_ref()) {
            // A version beyond the drift bound is refused here as everywhere (and counted by
            // the store's caller paths); the rest applies by copy order.
            if matches!(apply_entry(node.store(), entry, node.now_ms()), Ok(true)) {
                applied += 1;
            }
        }
    }
    Ok(applied)
}

/// Sends this node's copies of `keys` to the peer; returns how many were sent.
async fn push(node: &Arc<Context>, addr: &str, keys: &[Bytes]) -> Result<u64, String> {
    let mut sent = 0;
    for chunk in keys.chunks(node.config().max_batch_keys.max(1)) {
        let entries: Vec<v1::VersionedEntry> = chunk
            .iter()
            .filter_map(|key| {
                let item = node.store().get_versioned(key).ok()??;
                Some(to_wire(key.clone(), item))
            })
            .collect();
        if entries.is_empty() {
            continue;
        }
        let n = entries.len() as u64;
        crate::replication::send_entries(node, addr, entries).await?;
        sent += n;
    }
    Ok(sent)
}

/// The callee's side of `Internal.AntiEntropy`.
pub async fn answer(
    node: &Context,
    request: v1::AntiEntropyRequest,
) -> Result<v1::AntiEntropyResponse, ApiError> {
    let view = node.view();
    let digest = view.topology.digest();
    let mut response = v1::AntiEntropyResponse {
        topology_digest: digest,
        ..Default::default()
    };
    if request.topology_digest != digest {
        return Ok(response);
    }
    if request.buckets.len() > BUCKETS {
        return Err(ApiError::Invalid(format!(
            "{} buckets, more than {BUCKETS}",
            request.buckets.len()
        )));
    }
    let peer = request.from_node_id;
    if view.topology.member(&peer).is_none() {
        return Err(ApiError::FailedPrecondition(format!(
            "{peer:?} is not a member of this node's topology"
        )));
    }
    let self_id = node.config().node_id.clone();
    let first = BUCKETS - request.buckets.len();
    let now = node.now_ms();
    // The first page is compared with fresh digests; later pages of the same comparison reuse
    // them (they differ only by what changed meanwhile, and every page is compared key by key).
    let own = {
        let cached = (first > 0)
            .then(|| node.anti_entropy().cached(&peer, digest))
            .flatten();
        match cached {
            Some(own) => own,
            None => {
                let own = digests(node.store(), &view, &self_id, &peer, now).await;
                node.anti_entropy().cache(&peer, digest, own.clone());
                own
            }
        }
    };
    let differing: Vec<usize> = request
        .buckets
        .iter()
        .enumerate()
        .filter(|&(i, theirs)| own.hashes[first + i] != *theirs)
        .map(|(i, _)| i)
        .collect();
    response.differing = differing.iter().map(|&i| i as u32).collect();
    if differing.is_empty() {
        return Ok(response);
    }
    let max_keys = match request.max_keys {
        0 => DEFAULT_MAX_KEYS,
        n => (n as usize).min(DEFAULT_MAX_KEYS),
    };
    // Whole buckets in order while the answer stays within max_keys and half the message
    // limit (at least one bucket), then one scan for just those.
    let budget = (node.config().max_message_bytes / 2) as u64;
    let (mut keys, mut bytes) = (0u64, 0u64);
    let mut chosen = HashSet::new();
    for &i in &differing {
        let bucket = first + i;
        let more = own.bytes[bucket];
        let count = more / SUMMARY_OVERHEAD.max(1);
        if !chosen.is_empty() && (bytes + more > budget || keys + count > max_keys as u64) {
            break;
        }
        chosen.insert(bucket);
        (keys, bytes) = (keys + count, bytes + more);
    }
    response.summarized = u32::try_from(chosen.len()).unwrap_or(u32::MAX);
    response.keys = summaries(node.store(), &view, &self_id, &peer, &chosen, now)
        .await
        .into_iter()
        .map(|(key, (version, content))| v1::KeySummary {
            key,
            version,
            content,
        })
        .collect();
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreConfig, VersionedItem};

    /// The summary of a copy.
    fn summary_of(item: &VersionedItem) -> (u64, u64) {
        (item.version, content_hash(item.as_copy()))
    }

    const NOW: u64 = 1_700_000_000_000;

    fn store() -> Store {
        Store::new(StoreConfig {
            max_memory_bytes: 1 << 30,
            ..StoreConfig::default()
        })
    }

    /// Digests and summaries of every key (a pair that shares everything).
    async fn table(store: &Store) -> Vec<u64> {
        let mut table = vec![0u64; BUCKETS];
        scan_store(store, |key, copy| {
            if compared(copy, NOW) {
                table[bucket_of(key)] ^= item_hash(key, copy);
            }
        })
        .await;
        table
    }

    async fn summaries_in(store: &Store, buckets: &HashSet<usize>) -> BTreeMap<Bytes, (u64, u64)> {
        let mut found = BTreeMap::new();
        scan_store(store, |key, copy| {
            if compared(copy, NOW) && buckets.contains(&bucket_of(key)) {
                found.insert(
                    Bytes::copy_from_slice(key),
                    (copy.version, content_hash(copy)),
                );
            }
        })
        .await;
        found
    }

    /// The whole comparison between two stores: differing buckets, then the plan.
    async fn compare(a: &Store, b: &Store) -> (usize, Plan) {
        let (ta, tb) = (table(a).await, table(b).await);
        let differing: HashSet<usize> = (0..BUCKETS).filter(|&i| ta[i] != tb[i]).collect();
        let plan = plan(
            &summaries_in(a, &differing).await,
            &summaries_in(b, &differing).await,
        );
        (differing.len(), plan)
    }

    /// Applies a plan between two stores as the network would.
    fn repair(a: &Store, b: &Store, plan: &Plan) {
        for (from, to, keys) in [(b, a, &plan.pull), (a, b, &plan.push)] {
            for key in keys {
                let item = from.get_versioned(key).unwrap().unwrap();
                to.apply(
                    key,
                    item.value.as_deref(),
                    item.version,
                    item.expires_at_ms,
                    NOW,
                )
                .unwrap();
            }
        }
    }

    #[tokio::test]
    async fn one_differing_key_in_a_million_is_found_and_repaired() {
        let (a, b) = (store(), store());
        for i in 0..1_000_000u64 {
            let key = format!("key:{i}");
            for s in [&a, &b] {
                s.apply(key.as_bytes(), Some(b"v"), 1_000 + i, None, NOW)
                    .unwrap();
            }
        }
        assert_eq!(compare(&a, &b).await.0, 0, "identical stores agree");
        // b missed one write.
        a.apply(b"key:123456", Some(b"new"), 5_000_000, None, NOW)
            .unwrap();
        let (differing, plan) = compare(&a, &b).await;
        assert_eq!(differing, 1);
        assert_eq!(plan.push, [Bytes::from_static(b"key:123456")]);
        assert!(plan.pull.is_empty());
        repair(&a, &b, &plan);
        assert_eq!(compare(&a, &b).await, (0, Plan::default()));
        assert_eq!(
            b.get_versioned(b"key:123456")
                .unwrap()
                .unwrap()
                .value
                .as_deref(),
            Some(&b"new"[..])
        );
    }

    #[tokio::test]
    async fn missing_keys_deletes_and_version_ties_go_the_right_way() {
        let (a, b) = (store(), store());
        a.apply(b"only-a", Some(b"x"), 10, None, NOW).unwrap();
        b.apply(b"only-b", Some(b"y"), 10, None, NOW).unwrap();
        a.apply(b"deleted", Some(b"old"), 10, None, NOW).unwrap();
        b.apply(b"deleted", None, 20, None, NOW).unwrap();
        a.apply(b"tie", Some(b"apple"), 30, None, NOW).unwrap();
        b.apply(b"tie", Some(b"pear"), 30, None, NOW).unwrap();
        a.apply(b"same", Some(b"s"), 40, None, NOW).unwrap();
        b.apply(b"same", Some(b"s"), 40, None, NOW).unwrap();
        // An expired value is left out: nodes reclaim it at different times.
        a.apply(b"expired", Some(b"e"), 50, Some(NOW - 1), NOW)
            .unwrap();
        let (_, plan) = compare(&a, &b).await;
        let keys = |v: &[Bytes]| {
            let mut keys: Vec<Vec<u8>> = v.iter().map(|k| k.to_vec()).collect();
            keys.sort();
            keys
        };
        assert_eq!(
            keys(&plan.pull),
            [b"deleted".to_vec(), b"only-b".to_vec(), b"tie".to_vec()]
        );
        assert_eq!(keys(&plan.push), [b"only-a".to_vec(), b"tie".to_vec()]);
        repair(&a, &b, &plan);
        assert_eq!(compare(&a, &b).await, (0, Plan::default()));
        let tie = a.get_versioned(b"tie").unwrap().unwrap();
        assert_eq!(
            tie.value.as_deref(),
            Some(&b"pear"[..]),
            "copy order's winner"
        );
        assert_eq!(
            summary_of(&tie),
            summary_of(&b.get_versioned(b"tie").unwrap().unwrap())
        );
        assert!(
            a.get_versioned(b"deleted")
                .unwrap()
                .unwrap()
                .value
                .is_none()
        );
    }

    #[test]
    fn item_hashes_tell_versions_values_deletes_and_expiries_apart() {
        let copy = |version, value: Option<&'static [u8]>, expires_at_ms| CopyRef {
            version,
            value,
            expires_at_ms,
        };
        let base = item_hash(b"k", copy(1, Some(b"v"), None));
        for other in [
            item_hash(b"k", copy(2, Some(b"v"), None)),
            item_hash(b"k", copy(1, Some(b"w"), None)),
            item_hash(b"k", copy(1, None, None)),
            item_hash(b"k", copy(1, Some(b"v"), Some(5))),
            item_hash(b"j", copy(1, Some(b"v"), None)),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base, item_hash(b"k", copy(1, Some(b"v"), None)));
    }
}
