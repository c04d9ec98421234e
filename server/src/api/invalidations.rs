//! `Cache.Invalidations`: the stream that carries near-cache invalidations to one client
//! ([`crate::tracking`]). The first batch carries the stream's tracking id; later batches carry
//! keys (or "flush all"); a queue overflow ends the stream with RESOURCE_EXHAUSTED and the node
//! shutting down with UNAVAILABLE. The subscription ends when the stream is dropped (the client
//! went away or cancelled).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use ringcache_proto::v1::InvalidationBatch;
use tonic::Status;

use crate::node::Node;
use crate::tracking::{Next, Subscriber, Tracking};

/// The response stream of `Cache.Invalidations`.
pub(super) type InvalidationsStream =
    Pin<Box<dyn Stream<Item = Result<InvalidationBatch, Status>> + Send>>;

/// Ends the subscription when the stream is dropped.
struct Subscription {
    node: Arc<Node>,
    subscriber: Arc<Subscriber>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.node.tracking().unsubscribe(self.subscriber.id());
    }
}

enum Step {
    First(Subscription),
    Next(Subscription),
    Done,
}

/// Opens a subscription on `node`; RESOURCE_EXHAUSTED when too many are open.
pub(super) fn serve(node: &Arc<Node>) -> Result<InvalidationsStream, Status> {
    let tracking: &Tracking = node.tracking();
    let subscriber = tracking
        .subscribe()
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    let subscription = Subscription {
        node: Arc::clone(node),
        subscriber,
    };
    let stream = futures_util::stream::unfold(Step::First(subscription), |step| async move {
        match step {
            Step::Done => None,
            Step::First(sub) => {
                let first = InvalidationBatch {
                    tracking_id: sub.subscriber.id(),
                    ..InvalidationBatch::default()
                };
                Some((Ok(first), Step::Next(sub)))
            }
            Step::Next(sub) => {
                let shutdown = sub.node.shutdown_token().clone();
                tokio::select! {
                    next = sub.subscriber.next() => match next {
                        Next::Batch { flush_all, keys } => Some((
                            Ok(InvalidationBatch { tracking_id: 0, keys: keys.into_iter().collect(), flush_all }),
                            Step::Next(sub),
                        )),
                        Next::Overflowed => Some((
                            Err(Status::resource_exhausted(format!(
                                "invalidation queue overflowed (tracking_queue_bytes = {}): drop everything read from this node",
                                sub.node.tracking().config().queue_bytes
                            ))),
                            Step::Done,
                        )),
                    },
                    () = shutdown.cancelled() => Some((
                        Err(Status::unavailable("node shutting down")),
                        Step::Done,
                    )),
                }
            }
        }
    });
    Ok(Box::pin(stream))
}
