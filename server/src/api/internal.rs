//! The `Internal` service: what nodes ask of each other (replication, versioned reads,
//! entry streams for rebalancing). Thin: it applies to or reads from the local store only; the
//! decisions (who replicates what, when) are made by the callers.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use ringcache_proto::placement::{Ring, SLOTS};
use ringcache_proto::topology::{MAX_WEIGHT, check_node_id};
use ringcache_proto::v1::{self, internal_server::Internal};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::metrics::VersionSource;
use crate::node::Node;
use crate::replication::wire::{apply_entry, to_wire};
use crate::store::{ClockDrift, SlotCursor};
use crate::view::ClusterView;

/// Default upper bound on the key and value bytes of one streamed batch.
const DEFAULT_BATCH_BYTES: usize = 128 * 1024;
/// Entries read from the store per scan step (one short read lock each).
const SCAN_STEP: usize = 256;

/// The `ringcache.v1.Internal` gRPC service.
#[derive(Debug, Clone)]
pub struct InternalService {
    node: Arc<Node>,
}

impl InternalService {
    /// A service for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// The node served.
    pub(super) fn node(&self) -> &Arc<Node> {
        &self.node
    }
}

/// Who sent a request: the node id it claims and the address it came from.
fn peer_of<T>(request: &Request<T>, claimed_id: &str) -> String {
    let addr = request
        .remote_addr()
        .map_or_else(|| "unknown address".to_owned(), |a| a.to_string());
    if claimed_id.is_empty() {
        addr
    } else {
        format!("{claimed_id} ({addr})")
    }
}

/// Checks a whole Replicate batch before any of it is applied: every key and value within the
/// limits, every version within the clock-drift bound. A refused version fails the call with
/// FAILED_PRECONDITION naming the drift (counted and logged); nothing is applied.
fn check_batch(node: &Node, request: &v1::ReplicateRequest, peer: &str) -> Result<(), Status> {
    let store = node.store();
    let now = node.now_ms();
    let mut refused = 0u64;
    let mut worst: Option<(usize, ClockDrift)> = None;
    for (index, entry) in request.entries.iter().enumerate() {
        store.check_key(&entry.key)?;
        if let Some(value) = &entry.value {
            store.check_value(value)?;
        }
        if let Err(drift) = store.check_remote_version(entry.version, now) {
            refused += 1;
            if worst.is_none_or(|(_, w)| drift.ahead_ms > w.ahead_ms) {
                worst = Some((index, drift));
            }
        }
    }
    let Some((index, drift)) = worst else {
        return Ok(());
    };
    let source = if request.hinted {
        VersionSource::Hint
    } else {
        VersionSource::Replicate
    };
    node.metrics()
        .record_versions_refused(source, peer, refused, drift);
    Err(Status::failed_precondition(format!(
        "clock drift: {refused} of {} entries have versions too far ahead of this node's clock \
         (entry {index} is {} ms ahead, max_clock_drift is {} ms); nothing was applied",
        request.entries.len(),
        drift.ahead_ms,
        drift.max_drift_ms
    )))
}

/// Checks a StreamEntries request's wire sizes before anything is built from them.
fn check_stream_request(request: &v1::StreamEntriesRequest) -> Result<(), Status> {
    check_node_id(&request.target_node_id)
        .map_err(|e| Status::invalid_argument(format!("target_node_id: {e}")))?;
    if request.target_weight > MAX_WEIGHT {
        return Err(Status::invalid_argument(format!(
            "target_weight is {}, more than the limit of {MAX_WEIGHT}",
            request.target_weight
        )));
    }
    if !request.target_zone.is_empty() {
        ringcache_proto::topology::check_zone(&request.target_zone)
            .map_err(|e| Status::invalid_argument(format!("target_zone: {e}")))?;
    }
    if let Some(slot) = request.slots.iter().find(|&&s| s >= u32::from(SLOTS)) {
        return Err(Status::invalid_argument(format!(
            "slots: {slot} is not a hash slot (0..{SLOTS})"
        )));
    }
    Ok(())
}

/// The replica sets a StreamEntries scan uses, rebuilt only when the view changes.
struct ScanRing {
    view: Arc<ClusterView>,
    /// The ring with the target assumed in it (`assume_target_in_ring`), else `None`.
    assumed: Option<Ring>,
}

impl ScanRing {
    fn new(view: Arc<ClusterView>, request: &v1::StreamEntriesRequest) -> Result<Self, Status> {
        let assumed = if request.assume_target_in_ring {
            Some(
                crate::rebalance::ring_with(
                    &view,
                    &request.target_node_id,
                    request.target_weight,
                    (!request.target_zone.is_empty()).then_some(request.target_zone.as_str()),
                )
                .map_err(|e| Status::invalid_argument(format!("target_weight: {e}")))?,
            )
        } else {
            None
        };
        Ok(Self { view, assumed })
    }

    fn is_for(&self, view: &ClusterView) -> bool {
        self.view.topology.digest() == view.topology.digest()
    }

    fn holds(&self, key: &[u8], target: &str) -> bool {
        match &self.assumed {
            Some(ring) => ring.replicas(key).contains(target),
            None => self.view.replicas(key).contains(target),
        }
    }

    fn holds_slot(&self, slot: u16, target: &str) -> bool {
        match &self.assumed {
            Some(ring) => ring.slot_replicas(slot).contains(target),
            None => self.view.ring.slot_replicas(slot).contains(target),
        }
    }
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<v1::EntryBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Internal for InternalService {
    async fn replicate(
        &self,
        request: Request<v1::ReplicateRequest>,
    ) -> Result<Response<v1::ReplicateResponse>, Status> {
        let peer = peer_of(&request, &request.get_ref().from_node_id);
        let request = request.into_inner();
        // All or nothing for bad input: a batch with a refused entry applies none of it, so the
        // coordinator sees one clear failure (a failed replica acknowledgement, no hint) and its
        // batcher re-sends the batch write by write, which lets the other writes through.
        check_batch(&self.node, &request, &peer)?;
        let mut reply = v1::ReplicateResponse::default();
        for entry in &request.entries {
            if apply_entry(self.node.store(), entry, self.node.now_ms())? {
                reply.applied += 1;
            } else {
                reply.ignored += 1;
            }
        }
        // A leaving member's hand-off, counted for `ringctl drain` (which cannot ask the
        // leaver once it stops serving); only from members of this node's topology.
        if request.handoff
            && self
                .node
                .view()
                .topology
                .member(&request.from_node_id)
                .is_some()
        {
            self.node.rebalance().record_handoff(
                &request.from_node_id,
                request.entries.len() as u64,
                crate::rebalance::entry_bytes(&request.entries),
            );
        }
        Ok(Response::new(reply))
    }

    async fn read_versions(
        &self,
        request: Request<v1::ReadVersionsRequest>,
    ) -> Result<Response<v1::ReadVersionsResponse>, Status> {
        let request = request.into_inner();
        let max = self.node.config().max_batch_keys;
        if request.keys.len() > max {
            return Err(Status::invalid_argument(format!(
                "{} keys in one request, more than max_batch_keys ({max})",
                request.keys.len()
            )));
        }
        let mut results = Vec::with_capacity(request.keys.len());
        for key in request.keys {
            let held = self
                .node
                .store()
                .get_versioned(&key)
                .map_err(Status::from)?;
            results.push(match held {
                Some(item) => v1::VersionedRead {
                    found: true,
                    entry: Some(to_wire(key, item)),
                },
                None => v1::VersionedRead::default(),
            });
        }
        Ok(Response::new(v1::ReadVersionsResponse { results }))
    }

    async fn clock(
        &self,
        _: Request<v1::ClockRequest>,
    ) -> Result<Response<v1::ClockResponse>, Status> {
        Ok(Response::new(v1::ClockResponse {
            now_ms: self.node.now_ms(),
        }))
    }

    async fn anti_entropy(
        &self,
        request: Request<v1::AntiEntropyRequest>,
    ) -> Result<Response<v1::AntiEntropyResponse>, Status> {
        crate::antientropy::answer(&self.node, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn flush_through(
        &self,
        request: Request<v1::FlushThroughRequest>,
    ) -> Result<Response<v1::FlushThroughResponse>, Status> {
        let version = request.into_inner().version;
        let removed = self
            .node
            .store()
            .flush_through(version, self.node.now_ms())?;
        tracing::info!(removed, version, "flushed for a cluster-wide flush");
        Ok(Response::new(v1::FlushThroughResponse { removed }))
    }

    async fn slot_digests(
        &self,
        request: Request<v1::SlotDigestsRequest>,
    ) -> Result<Response<v1::SlotDigestsResponse>, Status> {
        use crate::antientropy::{MAX_DIGEST_SLOTS, slot_digests};
        let slots = request.into_inner().slots;
        if slots.len() > MAX_DIGEST_SLOTS {
            return Err(Status::invalid_argument(format!(
                "slots: {} in one SlotDigests request, more than {MAX_DIGEST_SLOTS}",
                slots.len()
            )));
        }
        let slots = slots
            .into_iter()
            .map(|slot| {
                u16::try_from(slot)
                    .ok()
                    .filter(|&s| s < SLOTS)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "slots: {slot} is not a hash slot (0..{SLOTS})"
                        ))
                    })
            })
            .collect::<Result<Vec<u16>, Status>>()?;
        let digests = slot_digests(self.node.store(), &slots, self.node.now_ms()).await;
        Ok(Response::new(v1::SlotDigestsResponse { digests }))
    }

    type ReplicaStreamStream = super::replica_stream::ReplicaAnswerStream;

    /// Replicate and ReadVersions requests on one stream, each run by the handlers above
    /// (`api/replica_stream.rs`).
    async fn replica_stream(
        &self,
        request: Request<tonic::Streaming<v1::ReplicaRequests>>,
    ) -> Result<Response<Self::ReplicaStreamStream>, Status> {
        Ok(super::replica_stream::serve(self.clone(), request))
    }

    type StreamEntriesStream = EntryStream;

    async fn stream_entries(
        &self,
        request: Request<v1::StreamEntriesRequest>,
    ) -> Result<Response<Self::StreamEntriesStream>, Status> {
        let request = request.into_inner();
        check_stream_request(&request)?;
        let batch_bytes = match request.max_batch_bytes {
            0 => DEFAULT_BATCH_BYTES,
            n => (n as usize).min(self.node.config().max_message_bytes / 2),
        };
        let node = self.node.clone();
        // The ring is built once per view, not per scan step; a bad request fails here, before
        // the stream starts.
        let mut ring = ScanRing::new(node.view(), &request)?;
        // A bounded channel: a slow receiver slows the scan down (backpressure).
        let (tx, rx) = mpsc::channel(2);
        // Only the slots asked for (all when none are), that the target holds and this node
        // has entries of: each is read through the store's slot chains, not by scanning.
        let mut wanted = vec![request.slots.is_empty(); usize::from(SLOTS)];
        for &slot in &request.slots {
            wanted[slot as usize] = true;
        }
        let held = node.store().held_slots();
        let slots: Vec<u16> = (0..SLOTS)
            .filter(|&s| {
                wanted[usize::from(s)]
                    && held[usize::from(s)]
                    && ring.holds_slot(s, &request.target_node_id)
            })
            .collect();
        crate::logging::spawn(async move {
            let store = node.store();
            let mut batch = v1::EntryBatch::default();
            let mut bytes = 0;
            let mut scanned = 0u64;
            for slot in slots {
                let mut cursor = Some(SlotCursor::default());
                while let Some(at) = cursor {
                    let (items, next) = store.scan_slot(slot, at, SCAN_STEP);
                    cursor = next;
                    // The ring may change during a long stream: each step uses the current view,
                    // and a new ring is built only when the view changed.
                    let view = node.view();
                    if !ring.is_for(&view) {
                        ring = match ScanRing::new(view, &request) {
                            Ok(ring) => ring,
                            Err(status) => {
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                        };
                    }
                    for (key, item) in items {
                        scanned += 1;
                        if (item.value.is_none() && !request.include_tombstones)
                            || item.version <= request.since_version
                        {
                            continue;
                        }
                        if !ring.holds(&key, &request.target_node_id) {
                            continue;
                        }
                        bytes += key.len() + item.value.as_ref().map_or(0, Bytes::len);
                        batch.entries.push(to_wire(key, item));
                        if bytes >= batch_bytes {
                            batch.scanned = scanned;
                            batch.flush_floor = store.flush_floor();
                            // Paced like the node's pushes, so serving a joiner yields to
                            // requests too.
                            crate::rebalance::pace(&node, bytes as u64).await;
                            node.rebalance()
                                .stream_bytes_sent
                                .fetch_add(bytes as u64, Ordering::Relaxed);
                            if tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                                return;
                            }
                            bytes = 0;
                        }
                    }
                    if node.shutdown_token().is_cancelled() {
                        let _ = tx
                            .send(Err(Status::unavailable("node is shutting down")))
                            .await;
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            }
            batch.scanned = scanned;
            batch.flush_floor = store.flush_floor();
            node.rebalance()
                .stream_bytes_sent
                .fetch_add(bytes as u64, Ordering::Relaxed);
            let _ = tx.send(Ok(batch)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
