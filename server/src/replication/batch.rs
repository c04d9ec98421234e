//! Per-peer batching of replicated writes: the entries that several writes send to the same
//! node leave together in one `Internal.Replicate` call (DESIGN §6, "batch opportunistically").
//!
//! Each write hands the batcher one [`Part`] per target node: its entries for that node, the
//! deadline of the wait (`replica_timeout` from when the write was submitted) and what to do with
//! the outcome. Per peer address there is a FIFO of parts and a count of calls in flight, at most
//! [`Limits::in_flight`]. A part submitted while a slot is free leaves at once in a call of its
//! own (no timer, no added latency when idle); while every slot is busy, parts wait, and the next
//! call to end takes everything waiting (up to [`Limits::max_entries`] entries and about
//! [`Limits::max_bytes`] bytes, at least one part) into its next call. The sender of a call is a
//! task that keeps its slot while parts are waiting and ends when the queue is empty; the last one
//! removes the peer's state, so nothing lives on for an idle peer or one that left the topology.
//!
//! Every part gets the result of the call that carried it: `Ok`, or the same [`Failure`] an
//! unbatched call would have had. A call is bounded by the earliest deadline among its parts, and
//! a part whose deadline passed while it waited is answered as timed out without being sent. When
//! a replica refuses a batch of several parts (e.g. memory full), each part is sent again alone,
//! so one write's refusal is not reported for the others; the re-sent entries that the replica had
//! already applied are ignored by it (`Store::apply` takes only newer versions).
//!
//! Reordering is safe for the same reason: a replica applies an entry only if its version is
//! newer than what it holds (last writer wins), so entries of different writes may share a call
//! or overtake each other between calls, and the replica still ends with the newest version.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ringcache_proto::v1;
use tokio::time::Instant;

use super::Failure;

/// Default most calls in flight to one peer at once.
pub(super) const MAX_IN_FLIGHT_PER_PEER: usize = 4;
/// Most entries in one call (also at most the node's `max_batch_keys`).
pub(super) const MAX_BATCH_ENTRIES: usize = 1000;
/// About the most key and value bytes in one call (also at most half the message limit); a
/// single larger part goes alone.
pub(super) const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Bytes charged per entry beyond its key and value.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// How batches are formed and sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Most calls in flight to one peer.
    pub(super) in_flight: usize,
    /// Most entries in one call (a single larger part goes alone).
    pub(super) max_entries: usize,
    /// Most charged bytes in one call (a single larger part goes alone).
    pub(super) max_bytes: usize,
    /// The replica timeout, named in the failure of a part that waited past its deadline.
    pub(super) timeout: Duration,
}

impl Limits {
    /// The limits of a node with this configuration.
    pub(super) fn of(config: &crate::config::Config) -> Self {
        Self {
            in_flight: MAX_IN_FLIGHT_PER_PEER,
            max_entries: config.max_batch_keys.clamp(1, MAX_BATCH_ENTRIES),
            max_bytes: MAX_BATCH_BYTES.min(config.max_message_bytes / 2).max(1),
            timeout: config.replication.replica_timeout,
        }
    }
}

/// One write's entries for one peer, waiting to be sent.
#[derive(Debug)]
pub(super) struct Part<D> {
    /// The entries.
    pub(super) entries: Vec<v1::VersionedEntry>,
    /// Answer as timed out if not acknowledged by then.
    pub(super) deadline: Instant,
    /// What the transport needs to report the outcome.
    pub(super) done: D,
    bytes: usize,
}

impl<D> Part<D> {
    /// A part of `entries` to be acknowledged by `deadline`.
    pub(super) fn new(entries: Vec<v1::VersionedEntry>, deadline: Instant, done: D) -> Self {
        let bytes = entries
            .iter()
            .map(|e| e.key.len() + e.value.as_ref().map_or(0, |v| v.len()) + ENTRY_OVERHEAD_BYTES)
            .sum();
        Self {
            entries,
            deadline,
            done,
            bytes,
        }
    }
}

/// Sends batches and reports each part's outcome (the node's `Internal.Replicate`; a fake in
/// tests).
pub(super) trait Transport: Clone + Send + Sync + 'static {
    /// What a part carries to report its outcome.
    type Done: Send + 'static;

    /// Sends `entries` to `addr` in one call that must end by `deadline`.
    fn send(
        &self,
        addr: &str,
        entries: Vec<v1::VersionedEntry>,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Reports the outcome of `part` (called exactly once per submitted part).
    fn finish(&self, part: Part<Self::Done>, result: Result<(), Failure>);
}

/// One peer's waiting parts and calls in flight.
#[derive(Debug)]
struct PeerQueue<D> {
    parts: VecDeque<Part<D>>,
    in_flight: usize,
}

impl<D> PeerQueue<D> {
    /// Takes the next batch from the front (at least one part unless the queue is empty) and
    /// the parts whose deadline has passed.
    fn take(&mut self, limits: &Limits, now: Instant) -> (Vec<Part<D>>, Vec<Part<D>>) {
        let mut batch = Vec::new();
        let mut expired = Vec::new();
        let (mut entries, mut bytes) = (0, 0);
        while let Some(front) = self.parts.front() {
            if front.deadline <= now {
                expired.extend(self.parts.pop_front());
                continue;
            }
            if !batch.is_empty()
                && (entries + front.entries.len() > limits.max_entries
                    || bytes + front.bytes > limits.max_bytes)
            {
                break;
            }
            entries += front.entries.len();
            bytes += front.bytes;
            batch.extend(self.parts.pop_front());
        }
        (batch, expired)
    }
}

type Queues<D> = Arc<Mutex<HashMap<String, PeerQueue<D>>>>;

/// The per-peer queues of a node, keyed by the peer's gRPC address.
pub(super) struct Batcher<D> {
    queues: Queues<D>,
}

impl<D> std::fmt::Debug for Batcher<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("peers", &self.queues.lock().len())
            .finish()
    }
}

impl<D> Default for Batcher<D> {
    fn default() -> Self {
        Self {
            queues: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<D: Send + 'static> Batcher<D> {
    /// Queues `part` for `addr`; sends it at once when fewer than `limits.in_flight` calls to
    /// `addr` are in flight, else with the next call that ends. Must run inside a tokio runtime.
    pub(super) fn submit<T: Transport<Done = D>>(
        &self,
        transport: &T,
        limits: Limits,
        addr: &str,
        part: Part<D>,
    ) {
        let (batch, expired) = {
            let mut queues = self.queues.lock();
            let queue = queues.entry(addr.to_owned()).or_insert_with(|| PeerQueue {
                parts: VecDeque::new(),
                in_flight: 0,
            });
            queue.parts.push_back(part);
            if queue.in_flight < limits.in_flight.max(1) {
                let (batch, expired) = queue.take(&limits, Instant::now());
                if !batch.is_empty() {
                    queue.in_flight += 1;
                } else if queue.in_flight == 0 {
                    queues.remove(addr);
                }
                (batch, expired)
            } else {
                (Vec::new(), Vec::new())
            }
        };
        finish_expired(transport, &limits, expired);
        if !batch.is_empty() {
            let slot = Slot {
                queues: self.queues.clone(),
                addr: addr.to_owned(),
            };
            crate::logging::spawn(send_until_empty(transport.clone(), limits, slot, batch));
        }
    }

    /// Peers with parts waiting or calls in flight.
    #[cfg(test)]
    fn active_peers(&self) -> usize {
        self.queues.lock().len()
    }
}

/// A call slot of one peer, held by its sender task; given back when dropped (also if the task is
/// cancelled or panics, so the peer is never left with a slot nobody uses).
struct Slot<D> {
    queues: Queues<D>,
    addr: String,
}

impl<D> Slot<D> {
    /// The next batch for this slot, or `None` (the slot is given back) when nothing waits.
    fn next(&self, limits: &Limits) -> (Option<Vec<Part<D>>>, Vec<Part<D>>) {
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(&self.addr) else {
            return (None, Vec::new());
        };
        let (batch, expired) = queue.take(limits, Instant::now());
        ((!batch.is_empty()).then_some(batch), expired)
    }
}

impl<D> Drop for Slot<D> {
    fn drop(&mut self) {
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get_mut(&self.addr) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
            if queue.in_flight == 0 && queue.parts.is_empty() {
                queues.remove(&self.addr);
            }
        }
    }
}

/// Sends `batch`, then whatever waits for the same peer, until nothing does.
async fn send_until_empty<T: Transport>(
    transport: T,
    limits: Limits,
    slot: Slot<T::Done>,
    mut batch: Vec<Part<T::Done>>,
) {
    loop {
        send_batch(&transport, &slot.addr, batch).await;
        let (next, expired) = slot.next(&limits);
        finish_expired(&transport, &limits, expired);
        match next {
            Some(next) => batch = next,
            None => return,
        }
    }
}

/// Sends the parts of `batch` in one call and reports its result to each; a refused batch of
/// several parts is sent again part by part.
async fn send_batch<T: Transport>(transport: &T, addr: &str, batch: Vec<Part<T::Done>>) {
    let deadline = batch
        .iter()
        .map(|p| p.deadline)
        .min()
        .expect("a batch is never empty");
    let entries = if let [only] = batch.as_slice() {
        only.entries.clone()
    } else {
        batch
            .iter()
            .flat_map(|p| p.entries.iter().cloned())
            .collect()
    };
    let result = transport.send(addr, entries, deadline).await;
    if matches!(result, Err(Failure::Refused(_) | Failure::ClockDrift(_))) && batch.len() > 1 {
        let alone = batch
            .iter()
            .map(|p| transport.send(addr, p.entries.clone(), p.deadline));
        let results = futures_util::future::join_all(alone).await;
        for (part, result) in batch.into_iter().zip(results) {
            transport.finish(part, result);
        }
        return;
    }
    for part in batch {
        transport.finish(part, result.clone());
    }
}

fn finish_expired<T: Transport>(transport: &T, limits: &Limits, expired: Vec<Part<T::Done>>) {
    for part in expired {
        transport.finish(part, Err(Failure::TimedOut(limits.timeout)));
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::sync::{Semaphore, mpsc};

    use super::*;

    /// Records each call's keys, holds it until the test adds a permit, refuses every call that
    /// carries key `bad`, and reports each part's key list and outcome.
    #[derive(Clone)]
    struct Fake {
        started: mpsc::UnboundedSender<Vec<String>>,
        gate: Arc<Semaphore>,
        finished: mpsc::UnboundedSender<(String, Result<(), String>)>,
        unreachable: bool,
    }

    struct Harness {
        fake: Fake,
        started: mpsc::UnboundedReceiver<Vec<String>>,
        finished: mpsc::UnboundedReceiver<(String, Result<(), String>)>,
        batcher: Batcher<String>,
    }

    impl Harness {
        fn new(unreachable: bool) -> Self {
            let (started_tx, started) = mpsc::unbounded_channel();
            let (finished_tx, finished) = mpsc::unbounded_channel();
            Self {
                fake: Fake {
                    started: started_tx,
                    gate: Arc::new(Semaphore::new(0)),
                    finished: finished_tx,
                    unreachable,
                },
                started,
                finished,
                batcher: Batcher::default(),
            }
        }

        /// Submits a part named `name` of one entry per key.
        fn submit(&self, limits: Limits, name: &str, keys: &[&str], deadline: Instant) {
            let entries = keys.iter().map(|k| entry(k)).collect();
            self.batcher.submit(
                &self.fake,
                limits,
                "peer:1",
                Part::new(entries, deadline, name.to_owned()),
            );
        }

        /// Lets `n` held calls finish.
        fn release(&self, n: usize) {
            self.fake.gate.add_permits(n);
        }

        async fn next_call(&mut self) -> Vec<String> {
            self.started.recv().await.expect("a call")
        }

        /// The next `n` outcomes, sorted by part name.
        async fn outcomes(&mut self, n: usize) -> Vec<(String, Result<(), String>)> {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(self.finished.recv().await.expect("an outcome"));
            }
            out.sort();
            out
        }
    }

    impl Transport for Fake {
        type Done = String;

        fn send(
            &self,
            _addr: &str,
            entries: Vec<v1::VersionedEntry>,
            _deadline: Instant,
        ) -> impl Future<Output = Result<(), Failure>> + Send {
            let keys: Vec<String> = entries
                .iter()
                .map(|e| String::from_utf8(e.key.to_vec()).unwrap())
                .collect();
            let this = self.clone();
            async move {
                let refuse = keys.iter().any(|k| k == "bad");
                this.started.send(keys).unwrap();
                this.gate.acquire().await.unwrap().forget();
                if this.unreachable {
                    Err(Failure::Unreachable("connection refused".to_owned()))
                } else if refuse {
                    Err(Failure::Refused("memory full".to_owned()))
                } else {
                    Ok(())
                }
            }
        }

        fn finish(&self, part: Part<String>, result: Result<(), Failure>) {
            let _ = self
                .finished
                .send((part.done, result.map_err(|f| f.to_string())));
        }
    }

    fn entry(key: &str) -> v1::VersionedEntry {
        v1::VersionedEntry {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Some(Bytes::from_static(b"v")),
            version: 1,
            expires_at_ms: None,
        }
    }

    fn limits(in_flight: usize, max_entries: usize) -> Limits {
        Limits {
            in_flight,
            max_entries,
            max_bytes: usize::MAX,
            timeout: Duration::from_secs(2),
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn ok(name: &str) -> (String, Result<(), String>) {
        (name.to_owned(), Ok(()))
    }

    #[tokio::test]
    async fn parts_queued_behind_a_call_in_flight_leave_together_in_the_next_call() {
        let mut h = Harness::new(false);
        let limits = limits(1, 1000);
        h.submit(limits, "first", &["a"], later());
        assert_eq!(
            h.next_call().await,
            ["a"],
            "an idle peer gets a write at once"
        );
        for i in 0..10 {
            h.submit(limits, &format!("w{i}"), &[&format!("k{i}")], later());
        }
        assert!(h.started.try_recv().is_err(), "the slot is busy");
        h.release(1);
        let second = h.next_call().await;
        let expected: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        assert_eq!(
            second, expected,
            "every waiting write in one call, in order"
        );
        h.release(1);
        let outcomes = h.outcomes(11).await;
        assert!(outcomes.iter().all(|(_, r)| r.is_ok()), "{outcomes:?}");
        assert!(h.started.try_recv().is_err(), "two calls in all");
        assert_eq!(h.batcher.active_peers(), 0, "an idle peer keeps no state");
    }

    #[tokio::test]
    async fn a_free_slot_sends_at_once_and_busy_slots_gather_the_rest() {
        let mut h = Harness::new(false);
        let limits = limits(2, 1000);
        h.submit(limits, "a", &["a"], later());
        h.submit(limits, "b", &["b"], later());
        assert_eq!(h.next_call().await, ["a"]);
        assert_eq!(h.next_call().await, ["b"], "two calls in flight at once");
        h.submit(limits, "c", &["c"], later());
        h.submit(limits, "d", &["d1", "d2"], later());
        h.release(1);
        assert_eq!(h.next_call().await, ["c", "d1", "d2"]);
        h.release(2);
        assert_eq!(
            h.outcomes(4).await,
            [ok("a"), ok("b"), ok("c"), ok("d")],
            "each write answered once"
        );
    }

    #[tokio::test]
    async fn a_batch_stops_at_the_entry_cap_but_never_splits_a_write() {
        let mut h = Harness::new(false);
        let limits = limits(1, 3);
        h.submit(limits, "first", &["a"], later());
        assert_eq!(h.next_call().await, ["a"]);
        h.submit(limits, "w1", &["b", "c"], later());
        h.submit(limits, "w2", &["d", "e"], later());
        h.submit(limits, "big", &["f", "g", "h", "i"], later());
        h.release(4);
        assert_eq!(h.next_call().await, ["b", "c"], "b, c + d, e is over 3");
        assert_eq!(h.next_call().await, ["d", "e"]);
        assert_eq!(
            h.next_call().await,
            ["f", "g", "h", "i"],
            "a larger write alone"
        );
        assert_eq!(h.outcomes(4).await.len(), 4);
    }

    #[tokio::test]
    async fn every_write_in_a_failed_call_gets_its_failure() {
        let mut h = Harness::new(true);
        let limits = limits(1, 1000);
        h.submit(limits, "first", &["a"], later());
        h.next_call().await;
        for name in ["w1", "w2", "w3"] {
            h.submit(limits, name, &[name], later());
        }
        h.release(2);
        assert_eq!(h.next_call().await, ["w1", "w2", "w3"]);
        let outcomes = h.outcomes(4).await;
        let down = Err("connection refused".to_owned());
        assert_eq!(
            outcomes,
            [
                ("first".to_owned(), down.clone()),
                ("w1".to_owned(), down.clone()),
                ("w2".to_owned(), down.clone()),
                ("w3".to_owned(), down)
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_batch_is_sent_again_write_by_write() {
        let mut h = Harness::new(false);
        let limits = limits(1, 1000);
        h.submit(limits, "first", &["a"], later());
        h.next_call().await;
        h.submit(limits, "good", &["g"], later());
        h.submit(limits, "bad", &["bad"], later());
        h.release(1);
        assert_eq!(h.next_call().await, ["g", "bad"]);
        h.release(1);
        let mut alone = vec![h.next_call().await, h.next_call().await];
        alone.sort();
        assert_eq!(alone, [vec!["bad".to_owned()], vec!["g".to_owned()]]);
        h.release(2);
        assert_eq!(
            h.outcomes(3).await,
            [
                ("bad".to_owned(), Err("refused: memory full".to_owned())),
                ok("first"),
                ok("good"),
            ]
        );
    }

    #[tokio::test]
    async fn a_write_that_waited_past_its_deadline_times_out_unsent() {
        let mut h = Harness::new(false);
        let limits = limits(1, 1000);
        h.submit(limits, "first", &["a"], later());
        h.next_call().await;
        h.submit(limits, "late", &["l"], Instant::now());
        h.submit(limits, "fine", &["f"], later());
        h.release(2);
        assert_eq!(h.next_call().await, ["f"]);
        assert_eq!(
            h.outcomes(3).await,
            [
                ok("fine"),
                ok("first"),
                ("late".to_owned(), Err("timed out after 2s".to_owned())),
            ]
        );
        // Already past its deadline with a free slot: answered at once, nothing sent.
        h.submit(limits, "dead", &["x"], Instant::now());
        assert_eq!(
            h.outcomes(1).await,
            [("dead".to_owned(), Err("timed out after 2s".to_owned()))]
        );
        assert!(h.started.try_recv().is_err());
    }
}
