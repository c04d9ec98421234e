//! One long-lived `Internal.ReplicaStream` per peer: the batchers' `Replicate` and `ReadVersions`
//! calls travel as tagged requests on it instead of a unary gRPC call each, so a call costs one
//! message each way instead of an HTTP/2 stream, its headers and trailers, and a task on both
//! sides. The receiving side is `crate::api::replica_stream`, which runs each request through
//! the unary handler.
//!
//! A peer's [`Link`] is opened on first use and replaced after it ends. Requests wait for a slot
//! (at most `replica_stream_in_flight` per link, so the queue and the answers owed are bounded)
//! and join the link's queue; when HTTP/2 asks for the next message everything queued by then
//! leaves together (up to the receiver's limit per message and about `max_message_bytes`), so
//! writes and reads to the same peer share messages too. Each answer finds its request by tag;
//! an answer with a tag nobody waits for (a request that timed out, or a peer that reuses tags)
//! is dropped.
//!
//! When a link fails (connection broken, peer killed or shutting down, stream reset), the
//! requests already sent on it fail with the same [`Failure`] a unary call broken the same way
//! gets (so a write to an unreachable replica becomes a hint), and the requests that were still
//! queued, never sent, go back to their callers, which send them as unary calls. A request whose
//! deadline passes fails as timed out, like a unary call. A peer that does not know the stream
//! (UNIMPLEMENTED, an older node) gets unary calls, and a stream is tried again after
//! [`UNARY_RETRY_AFTER`]; a peer whose stream could not be opened gets unary calls for
//! [`REOPEN_AFTER`]. Nothing is sent on a stream until the peer has accepted it, so a refusal
//! never loses a request.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_util::Stream;
use parking_lot::Mutex;
use prost::Message as _;
use ringcache_proto::topology::Topology;
use ringcache_proto::v1::{
    ReplicaAnswers, ReplicaRequest, ReplicaRequests, replica_answer::Result as Answer,
    replica_request::Op,
};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Failure;
use crate::context::Context;
use crate::peer::{self, PeerError, PeerErrorKind};

/// How long a peer that answered UNIMPLEMENTED (it does not know the stream) gets unary calls
/// before a stream is tried again (it may have been upgraded).
pub(super) const UNARY_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long a peer whose stream could not be opened (unreachable, refused) gets unary calls
/// before a stream is tried again: a peer that is down costs no new stream per batch.
pub(super) const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// Bytes of a message's framing beside its requests.
const MESSAGE_OVERHEAD: usize = 64;

/// What became of a request handed to [`Links::call`].
#[derive(Debug)]
pub(super) enum Routed {
    /// It went on the stream: the answer, or why it failed.
    Answered(Result<Answer, Failure>),
    /// It was not sent on a stream (none to this peer, or it ended before the request left):
    /// send it as a unary call.
    Unary(Op),
}

/// The replica streams of a node, by peer cluster address.
#[derive(Debug, Default)]
pub(super) struct Links {
    peers: Mutex<HashMap<String, Peer>>,
}

#[derive(Debug)]
enum Peer {
    Stream(Arc<Link>),
    /// Unary calls until then.
    Unary(Instant),
}

impl Links {
    /// Sends `op` to the peer at `addr` on its stream (opened if there is none) and waits for
    /// the answer until `deadline`. `Routed::Unary` hands `op` back when it was not sent: streams
    /// are off (`replica_stream_in_flight` 0), the peer does not know them, or `op` alone is
    /// over the message limit (its unary call fails as before).
    pub(super) async fn call(
        &self,
        node: &Arc<Context>,
        addr: &str,
        op: Op,
        deadline: Instant,
    ) -> Routed {
        let config = node.config();
        let in_flight = config.replication.replica_stream_in_flight;
        let timeout = config.replication.replica_timeout;
        let max_bytes = config.max_message_bytes.saturating_sub(MESSAGE_OVERHEAD);
        if in_flight == 0 {
            return Routed::Unary(op);
        }
        let mut request = ReplicaRequest {
            tag: u64::MAX,
            op: Some(op),
        };
        let size = request.encoded_len() + MESSAGE_OVERHEAD;
        if size > max_bytes {
            return Routed::Unary(request.op.take().expect("set above"));
        }
        let Some(link) = self.link(node, addr, in_flight, max_bytes) else {
            return Routed::Unary(request.op.take().expect("set above"));
        };
        let slot = match tokio::time::timeout_at(deadline, link.slots.clone().acquire_owned()).await
        {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Routed::Unary(request.op.take().expect("set above")),
            Err(_) => return Routed::Answered(Err(Failure::TimedOut(timeout))),
        };
        let (tag, answer) = match link.enqueue(request, size) {
            Ok(queued) => queued,
            Err(op) => return Routed::Unary(op),
        };
        let routed = match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(Reply::Answer(answer))) => Routed::Answered(Ok(answer)),
            Ok(Ok(Reply::Failed(failure))) => Routed::Answered(Err(failure)),
            Ok(Ok(Reply::Unsent(op))) => Routed::Unary(op),
            Ok(Err(_)) => Routed::Answered(Err(Failure::Unreachable(
                "the replica stream ended".to_owned(),
            ))),
            Err(_) => {
                link.forget(tag);
                Routed::Answered(Err(Failure::TimedOut(timeout)))
            }
        };
        drop(slot);
        routed
    }

    /// The stream to `addr`, opened now if there is none; `None`: use unary calls.
    fn link(
        &self,
        node: &Arc<Context>,
        addr: &str,
        in_flight: usize,
        max_bytes: usize,
    ) -> Option<Arc<Link>> {
        let mut peers = self.peers.lock();
        match peers.get(addr) {
            Some(Peer::Stream(link)) => return Some(link.clone()),
            Some(Peer::Unary(until)) if Instant::now() < *until => return None,
            _ => {}
        }
        // Not ended by this node's shutdown: requests still being served while it drains need
        // their replicas; the peer ends its side when it shuts down.
        let link = Arc::new(Link::new(in_flight, max_bytes, CancellationToken::new()));
        peers.insert(addr.to_owned(), Peer::Stream(link.clone()));
        drop(peers);
        // In the node's span whoever opened it: the stream outlives the request that did.
        tokio::spawn(tracing::Instrument::instrument(
            run(link.clone(), node.clone(), addr.to_owned()),
            node.span.clone(),
        ));
        Some(link)
    }

    /// Forgets `link` for `addr` (if it is still the current one) and sends unary calls there
    /// until `unary_until`, if given.
    fn ended(&self, addr: &str, link: &Arc<Link>, unary_until: Option<Instant>) {
        let mut peers = self.peers.lock();
        if let Some(Peer::Stream(current)) = peers.get(addr)
            && Arc::ptr_eq(current, link)
        {
            match unary_until {
                Some(until) => peers.insert(addr.to_owned(), Peer::Unary(until)),
                None => peers.remove(addr),
            };
        }
    }

    /// Closes the streams to addresses no member of `topology` uses any more.
    pub(super) fn retain(&self, topology: &Topology) {
        self.peers.lock().retain(|addr, peer| {
            let kept = topology.members().iter().any(|m| &m.cluster_addr == addr);
            if !kept && let Peer::Stream(link) = peer {
                link.closing.cancel();
            }
            kept
        });
    }

    /// Open streams (opening or open).
    pub(super) fn open(&self) -> usize {
        self.peers
            .lock()
            .values()
            .filter(|p| matches!(p, Peer::Stream(_)))
            .count()
    }
}

/// What a request's caller gets back.
#[derive(Debug)]
enum Reply {
    Answer(Answer),
    Failed(Failure),
    /// The request never left: send it another way.
    Unsent(Op),
}

/// One peer's stream: the requests waiting to leave and the answers owed.
#[derive(Debug)]
struct Link {
    /// Requests in flight (queued or sent, not answered).
    slots: Arc<Semaphore>,
    /// Most requests in one message.
    max_requests: usize,
    /// About the most bytes of requests in one message.
    max_bytes: usize,
    next_tag: AtomicU64,
    /// Cancelled to end the stream (the peer left the topology).
    closing: CancellationToken,
    shared: Mutex<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Nothing leaves before the peer accepted the stream.
    accepted: bool,
    /// The stream ended: nothing more is queued or sent.
    closed: bool,
    /// Requests not sent yet, with their encoded sizes.
    queue: VecDeque<(ReplicaRequest, usize)>,
    /// Who waits for which tag (queued and sent requests).
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    /// The outbound stream, waiting for requests.
    waker: Option<Waker>,
}

impl Link {
    fn new(in_flight: usize, max_bytes: usize, closing: CancellationToken) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(in_flight.max(1))),
            max_requests: in_flight.max(1),
            max_bytes,
            next_tag: AtomicU64::new(1),
            closing,
            shared: Mutex::new(Shared::default()),
        }
    }

    /// Queues `request` (of encoded `size`) under a new tag; `Err` hands its op back when the
    /// link has ended.
    fn enqueue(
        &self,
        mut request: ReplicaRequest,
        size: usize,
    ) -> Result<(u64, oneshot::Receiver<Reply>), Op> {
        let (tx, rx) = oneshot::channel();
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let waker = {
            let mut shared = self.shared.lock();
            if shared.closed {
                return Err(request.op.take().expect("a queued request has an op"));
            }
            request.tag = tag;
            shared.waiting.insert(tag, tx);
            shared.queue.push_back((request, size));
            shared.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok((tag, rx))
    }

    /// Stops waiting for `tag` (its deadline passed); if it was not sent yet it never will be.
    fn forget(&self, tag: u64) {
        let mut shared = self.shared.lock();
        if shared.waiting.remove(&tag).is_some() {
            shared.queue.retain(|(r, _)| r.tag != tag);
        }
    }

    /// The peer accepted the stream: queued requests may leave.
    fn accept(&self) {
        let waker = {
            let mut shared = self.shared.lock();
            shared.accepted = true;
            shared.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Hands each answer to the request with its tag; answers nobody waits for are dropped.
    fn answer(&self, answers: ReplicaAnswers, timeout: Duration) {
        let mut shared = self.shared.lock();
        for answer in answers.answers {
            let Some(tx) = shared.waiting.remove(&answer.tag) else {
                continue;
            };
            let reply = match answer.result {
                Some(Answer::Error(error)) => Reply::Failed(Failure::of_peer_within(
                    PeerError::answered(error.code, error.message),
                    timeout,
                )),
                Some(result) => Reply::Answer(result),
                None => Reply::Failed(Failure::Refused("an answer without a result".to_owned())),
            };
            let _ = tx.send(reply);
        }
    }

    /// Ends the link: requests still queued go back unsent; the ones sent fail with `failure`
    /// (`None`: the stream never carried any, and they go back unsent too).
    fn close(&self, failure: Option<Failure>) {
        let (queue, waiting, waker) = {
            let mut shared = self.shared.lock();
            shared.closed = true;
            (
                std::mem::take(&mut shared.queue),
                std::mem::take(&mut shared.waiting),
                shared.waker.take(),
            )
        };
        let mut waiting = waiting;
        for (request, _) in queue {
            if let (Some(tx), Some(op)) = (waiting.remove(&request.tag), request.op) {
                let _ = tx.send(Reply::Unsent(op));
            }
        }
        let failure = failure.unwrap_or_else(|| {
            Failure::Unreachable("the replica stream ended before it was accepted".to_owned())
        });
        for (_, tx) in waiting {
            let _ = tx.send(Reply::Failed(failure.clone()));
        }
        self.slots.close();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The next message: everything queued, up to the request and byte bounds (at least one
    /// request); `None` while nothing may leave.
    fn next_message(&self, shared: &mut Shared) -> Option<ReplicaRequests> {
        if !shared.accepted || shared.queue.is_empty() {
            return None;
        }
        let mut requests = Vec::with_capacity(shared.queue.len().min(self.max_requests));
        let mut bytes = 0usize;
        while let Some((_, size)) = shared.queue.front() {
            if !requests.is_empty()
                && (requests.len() >= self.max_requests || bytes + size > self.max_bytes)
            {
                break;
            }
            bytes += size;
            let (request, _) = shared.queue.pop_front().expect("front exists");
            requests.push(request);
        }
        Some(ReplicaRequests { requests })
    }
}

/// The request side of a link's stream: a message whenever requests are queued.
struct Outbound(Arc<Link>);

impl Stream for Outbound {
    type Item = ReplicaRequests;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<ReplicaRequests>> {
        let link = &self.0;
        let mut shared = link.shared.lock();
        if shared.closed {
            return Poll::Ready(None);
        }
        match link.next_message(&mut shared) {
            Some(message) => Poll::Ready(Some(message)),
            None => {
                if !shared
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    shared.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// Opens `link`'s stream to `addr`, hands answers to their requests until it ends, and then
/// ends the link.
async fn run(link: Arc<Link>, node: Arc<Context>, addr: String) {
    let timeout = node.config().replication.replica_timeout;
    let links = &node.replicator().links;
    let mut client = match node.peers().internal_client(&addr) {
        Ok(client) => client,
        Err(error) => {
            links.ended(&addr, &link, Some(Instant::now() + REOPEN_AFTER));
            link.close(Some(Failure::Unreachable(error.to_string())));
            return;
        }
    };
    let opening = tokio::time::timeout(
        timeout,
        peer::call(client.replica_stream(Outbound(link.clone()))),
    );
    let opened = tokio::select! {
        opened = opening => opened,
        () = link.closing.cancelled() => {
            links.ended(&addr, &link, None);
            link.close(None);
            return;
        }
    };
    let inbound = match opened {
        Ok(Ok(inbound)) => inbound,
        Ok(Err(error)) => {
            let after = if error.kind == PeerErrorKind::Unimplemented {
                tracing::info!(peer = %addr, "the peer does not know Internal.ReplicaStream; replica calls to it are unary");
                UNARY_RETRY_AFTER
            } else {
                tracing::debug!(peer = %addr, %error, "cannot open a replica stream");
                REOPEN_AFTER
            };
            links.ended(&addr, &link, Some(Instant::now() + after));
            // Nothing was sent: every request goes back to be sent as a unary call.
            link.close(None);
            return;
        }
        Err(_) => {
            links.ended(&addr, &link, Some(Instant::now() + REOPEN_AFTER));
            link.close(None);
            return;
        }
    };
    node.metrics().replica_stream(1.0);
    link.accept();
    let failure = read_answers(&link, inbound, timeout).await;
    node.metrics().replica_stream(-1.0);
    tracing::debug!(peer = %addr, %failure, "replica stream ended");
    links.ended(&addr, &link, None);
    link.close(Some(failure));
}

/// Hands each answer on `inbound` to its request until the stream ends; returns why it ended.
async fn read_answers(
    link: &Link,
    mut inbound: tonic::Streaming<ReplicaAnswers>,
    timeout: Duration,
) -> Failure {
    loop {
        let message = tokio::select! {
            message = peer::next_message(&mut inbound) => message,
            () = link.closing.cancelled() => {
                return Failure::Unreachable(
                    "the replica stream was closed: the peer left the topology".to_owned(),
                );
            }
        };
        match message {
            Ok(Some(answers)) => link.answer(answers, timeout),
            Ok(None) => {
                return Failure::Unreachable("the peer closed the replica stream".to_owned());
            }
            Err(error) => return Failure::of_peer_within(error, timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use ringcache_proto::v1;

    use super::*;

    fn read(key: &str) -> Op {
        Op::ReadVersions(v1::ReadVersionsRequest {
            keys: vec![bytes::Bytes::copy_from_slice(key.as_bytes())],
        })
    }

    fn link(in_flight: usize, max_bytes: usize) -> Arc<Link> {
        Arc::new(Link::new(in_flight, max_bytes, CancellationToken::new()))
    }

    fn queue(link: &Link, key: &str) -> (u64, oneshot::Receiver<Reply>) {
        let request = ReplicaRequest {
            tag: 0,
            op: Some(read(key)),
        };
        let size = request.encoded_len();
        link.enqueue(request, size).expect("open")
    }

    /// The keys of a message's requests.
    fn keys(message: &ReplicaRequests) -> Vec<String> {
        message
            .requests
            .iter()
            .map(|r| match &r.op {
                Some(Op::ReadVersions(read)) => String::from_utf8(read.keys[0].to_vec()).unwrap(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn poll_once(outbound: &mut Outbound) -> Poll<Option<ReplicaRequests>> {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        outbound.poll_next_unpin(&mut cx)
    }

    fn answered(tag: u64) -> v1::ReplicaAnswer {
        v1::ReplicaAnswer {
            tag,
            result: Some(Answer::ReadVersions(v1::ReadVersionsResponse::default())),
        }
    }

    #[test]
    fn nothing_leaves_before_the_peer_accepts_then_queued_requests_leave_together() {
        let link = link(8, 1 << 20);
        let mut outbound = Outbound(link.clone());
        let _a = queue(&link, "a");
        let _b = queue(&link, "b");
        assert!(poll_once(&mut outbound).is_pending(), "not accepted yet");
        link.accept();
        match poll_once(&mut outbound) {
            Poll::Ready(Some(message)) => assert_eq!(keys(&message), ["a", "b"]),
            other => panic!("expected a message, got {other:?}"),
        }
        assert!(poll_once(&mut outbound).is_pending(), "the queue is empty");
    }

    #[test]
    fn a_message_stops_at_the_request_and_byte_bounds_but_carries_at_least_one() {
        let link = link(2, 1 << 20);
        link.accept();
        let mut outbound = Outbound(link.clone());
        let _q: Vec<_> = ["a", "b", "c"].iter().map(|k| queue(&link, k)).collect();
        let Poll::Ready(Some(first)) = poll_once(&mut outbound) else {
            panic!("a message")
        };
        assert_eq!(keys(&first), ["a", "b"], "two requests per message");
        let Poll::Ready(Some(second)) = poll_once(&mut outbound) else {
            panic!("a message")
        };
        assert_eq!(keys(&second), ["c"]);

        let small = self::link(100, 1);
        small.accept();
        let mut outbound = Outbound(small.clone());
        let _q: Vec<_> = ["x", "y"].iter().map(|k| queue(&small, k)).collect();
        let Poll::Ready(Some(first)) = poll_once(&mut outbound) else {
            panic!("a message")
        };
        assert_eq!(
            keys(&first),
            ["x"],
            "over the byte bound: one request alone"
        );
    }

    #[tokio::test]
    async fn answers_find_their_requests_by_tag_and_unknown_tags_are_dropped() {
        let link = link(8, 1 << 20);
        link.accept();
        let (ta, a) = queue(&link, "a");
        let (tb, b) = queue(&link, "b");
        let error = v1::ReplicaAnswer {
            tag: tb,
            result: Some(Answer::Error(v1::ReplicaError {
                // The wire form of a peer's error carries its gRPC code, as the replica's handler
                // answers a version it refuses.
                #[allow(clippy::disallowed_types)]
                code: tonic::Code::FailedPrecondition as i32,
                message: "clock drift".to_owned(),
            })),
        };
        // Out of order, with a tag nobody waits for and a tag answered twice.
        link.answer(
            ReplicaAnswers {
                answers: vec![error, answered(999), answered(ta), answered(ta)],
            },
            Duration::from_secs(2),
        );
        assert!(matches!(
            a.await.unwrap(),
            Reply::Answer(Answer::ReadVersions(_))
        ));
        match b.await.unwrap() {
            Reply::Failed(failure @ Failure::ClockDrift(_)) => {
                assert_eq!(failure.to_string(), "refused: clock drift");
            }
            other => panic!("expected the unary call's classification, got {other:?}"),
        }
        assert!(link.shared.lock().waiting.is_empty());
    }

    #[tokio::test]
    async fn a_closed_link_fails_requests_sent_and_hands_back_requests_not_sent() {
        let link = link(8, 1 << 20);
        link.accept();
        let mut outbound = Outbound(link.clone());
        let (_, sent) = queue(&link, "sent");
        assert!(matches!(poll_once(&mut outbound), Poll::Ready(Some(_))));
        let (_, unsent) = queue(&link, "unsent");
        link.close(Some(Failure::Unreachable("connection reset".to_owned())));
        match sent.await.unwrap() {
            Reply::Failed(failure) => {
                assert!(failure.hint(), "an unreachable replica gets hints");
                assert_eq!(failure.to_string(), "connection reset");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        match unsent.await.unwrap() {
            Reply::Unsent(op) => assert_eq!(op, read("unsent")),
            other => panic!("expected the request back, got {other:?}"),
        }
        assert!(matches!(poll_once(&mut outbound), Poll::Ready(None)));
        let late = ReplicaRequest {
            tag: 0,
            op: Some(read("late")),
        };
        assert_eq!(link.enqueue(late, 10).unwrap_err(), read("late"));
    }

    #[tokio::test]
    async fn a_forgotten_request_is_not_sent_and_its_late_answer_is_dropped() {
        let link = link(8, 1 << 20);
        let mut outbound = Outbound(link.clone());
        let (gone, _rx) = queue(&link, "gone");
        let (_, kept) = queue(&link, "kept");
        link.forget(gone);
        link.accept();
        let Poll::Ready(Some(message)) = poll_once(&mut outbound) else {
            panic!("a message")
        };
        assert_eq!(keys(&message), ["kept"]);
        link.answer(
            ReplicaAnswers {
                answers: vec![answered(gone)],
            },
            Duration::from_secs(2),
        );
        drop(kept);
        assert!(link.shared.lock().waiting.len() == 1, "only `kept` waits");
    }

    #[test]
    fn stream_failures_are_classified_like_unary_calls() {
        let timeout = Duration::from_secs(2);
        let failure = |kind| Failure::of_peer_within(PeerError::new(kind, "x"), timeout);
        assert!(failure(PeerErrorKind::Unreachable).hint());
        assert_eq!(
            failure(PeerErrorKind::TimedOut).to_string(),
            "timed out after 2s"
        );
        assert!(!failure(PeerErrorKind::Refused).hint());
    }
}
