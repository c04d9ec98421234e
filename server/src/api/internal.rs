//! The `Internal` service: what nodes ask of each other (replication, versioned reads,
//! entry streams for rebalancing). Thin: it applies to or reads from the local store only; the
//! decisions (who replicates what, when) are made by the callers.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use ringcache_proto::v1::{self, internal_server::Internal};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::store::VersionedItem;

/// Default upper bound on the key and value bytes of one streamed batch.
const DEFAULT_BATCH_BYTES: usize = 256 * 1024;
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
}

/// The wire form of what a store holds for `key`.
pub fn to_wire(key: Bytes, item: VersionedItem) -> v1::VersionedEntry {
    v1::VersionedEntry {
        key,
        value: item.value,
        version: item.version,
        expires_at_ms: item.expires_at_ms,
    }
}

/// Applies one replicated entry to the local store; returns whether it took effect.
pub fn apply_entry(node: &Node, entry: &v1::VersionedEntry) -> Result<bool, Status> {
    node.store()
        .apply(
            &entry.key,
            entry.value.as_deref(),
            entry.version,
            entry.expires_at_ms,
            node.now_ms(),
        )
        .map_err(Status::from)
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<v1::EntryBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Internal for InternalService {
    async fn replicate(
        &self,
        request: Request<v1::ReplicateRequest>,
    ) -> Result<Response<v1::ReplicateResponse>, Status> {
        let request = request.into_inner();
        let mut reply = v1::ReplicateResponse::default();
        for entry in &request.entries {
            if apply_entry(&self.node, entry)? {
                reply.applied += 1;
            } else {
                reply.ignored += 1;
            }
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

    type StreamEntriesStream = EntryStream;

    async fn stream_entries(
        &self,
        request: Request<v1::StreamEntriesRequest>,
    ) -> Result<Response<Self::StreamEntriesStream>, Status> {
        let request = request.into_inner();
        let batch_bytes = match request.max_batch_bytes {
            0 => DEFAULT_BATCH_BYTES,
            n => (n as usize).min(self.node.config().max_message_bytes / 2),
        };
        let node = self.node.clone();
        // A bounded channel: a slow receiver slows the scan down (backpressure).
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let store = node.store();
            let mut batch = v1::EntryBatch::default();
            let mut bytes = 0;
            let mut scanned = 0u64;
            for shard in 0..store.shard_count() {
                let mut cursor = Some(0);
                while let Some(at) = cursor {
                    let (items, next) = store.scan(shard, at, SCAN_STEP);
                    cursor = next;
                    // The ring may change during a long stream; each step uses the current one.
                    let view = node.view();
                    let assumed = request.assume_target_in_ring.then(|| {
                        crate::rebalance::ring_with(
                            &view,
                            &request.target_node_id,
                            request.target_weight,
                        )
                    });
                    for (key, item) in items {
                        scanned += 1;
                        if item.value.is_none() && !request.include_tombstones {
                            continue;
                        }
                        let replicas = match &assumed {
                            Some(ring) => ring.replicas(&key),
                            None => view.replicas(&key),
                        };
                        if !replicas.contains(&request.target_node_id) {
                            continue;
                        }
                        bytes += key.len() + item.value.as_ref().map_or(0, Bytes::len);
                        batch.entries.push(to_wire(key, item));
                        if bytes >= batch_bytes {
                            batch.scanned = scanned;
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
            let _ = tx.send(Ok(batch)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
