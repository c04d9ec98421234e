//! Per-peer batching of replica calls: what several requests send to the same node leaves
//! together in one call. One implementation serves both
//! kinds of call: `Internal.Replicate` (the entries of replicated writes and read repairs) and
//! `Internal.ReadVersions` (the keys of QUORUM and ALL reads). Each [`Transport`] says what its
//! items are (entries or keys), how to send a call and what to do with each part's answers.
//!
//! Each request hands the batcher one [`Part`] per target node: its items for that node, the
//! deadline of the wait (`replica_timeout` from when the request was submitted) and what to do
//! with the outcome. Per peer address there is a FIFO of parts and a count of calls in flight, at
//! most [`Limits::in_flight`]. A part submitted while a slot is free leaves at once in a call of
//! its own (no timer, no added latency when idle); while every slot is busy, parts wait, and the
//! next call to end takes everything waiting (up to [`Limits::max_entries`] items and about
//! [`Limits::max_bytes`] bytes, at least one part) into its next call. The sender of a call is a
//! task that keeps its slot while parts are waiting and ends when the queue is empty; the last one
//! removes the peer's state, so nothing lives on for an idle peer or one that left the topology.
//!
//! Every part gets the result of the call that carried it: its own items' answers, in order
//! (a call answers its items in order, and the answers are cut at the parts' boundaries), or the
//! same [`Failure`] an unbatched call would have had; a call that answers a different number of
//! items than it carried fails every part in it. A failed call fails only the parts it carried:
//! parts in other calls to the same peer get their own outcomes. A call is bounded by the earliest
//! deadline among its parts, and a part whose deadline passed while it waited is answered as timed
//! out without being sent. When a replica refuses a call of several parts (e.g. memory full, or an
//! answer over the message limit), each part is sent again alone, so one request's refusal is not
//! reported for the others; re-sent writes that the replica had already applied are ignored by it
//! (`Store::apply` takes only newer versions), and re-sent reads are just read again.
//!
//! Reordering is safe for the same reason: a replica applies an entry only if its version is
//! newer than what it holds (last writer wins), so entries of different writes may share a call
//! or overtake each other between calls, and the replica still ends with the newest version.
//! Reads change nothing on the replica.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use ringcache_proto::v1;
use tokio::time::Instant;

use super::Failure;

/// Most calls in flight to one peer at once (per kind of call). Two, not more: under load the
/// calls are what costs (HTTP/2 frames, a stream and a task wake-up on each side), and with fewer
/// slots more parts gather per call; measured on 3 nodes, 2 slots instead of 4 cut the cluster CPU
/// of a QUORUM read or write by about a fifth (BENCHMARKS.md). An idle peer still gets a part at
/// once.
pub(super) const MAX_IN_FLIGHT_PER_PEER: usize = 2;
/// Most items in one call (also at most the node's `max_batch_keys`).
pub(super) const MAX_BATCH_ENTRIES: usize = 1000;
/// About the most key and value bytes in one call (also at most half the message limit); a
/// single larger part goes alone.
pub(super) const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Bytes charged per item beyond its key and value.
const ITEM_OVERHEAD_BYTES: usize = 64;

/// How batches are formed and sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Most calls in flight to one peer.
    pub(super) in_flight: usize,
    /// Most items in one call (a single larger part goes alone).
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

/// What a call carries, one per key: a versioned entry (`Replicate`) or a key (`ReadVersions`).
pub(super) trait Item: Clone + Send + 'static {
    /// The bytes this item is charged against [`Limits::max_bytes`].
    fn charged_bytes(&self) -> usize;
}

impl Item for v1::VersionedEntry {
    fn charged_bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, |v| v.len()) + ITEM_OVERHEAD_BYTES
    }
}

impl Item for Bytes {
    fn charged_bytes(&self) -> usize {
        self.len() + ITEM_OVERHEAD_BYTES
    }
}

/// One request's items for one peer, waiting to be sent.
#[derive(Debug)]
pub(super) struct Part<I, D> {
    /// The items.
    pub(super) items: Vec<I>,
    /// Answer as timed out if not answered by then.
    pub(super) deadline: Instant,
    /// What the transport needs to report the outcome.
    pub(super) done: D,
    bytes: usize,
}

impl<I: Item, D> Part<I, D> {
    /// A part of `items` to be answered by `deadline`.
    pub(super) fn new(items: Vec<I>, deadline: Instant, done: D) -> Self {
        let bytes = items.iter().map(Item::charged_bytes).sum();
        Self {
            items,
            deadline,
            done,
            bytes,
        }
    }
}

/// A part's outcome: its items' answers in order, or why the call failed.
pub(super) type Outcome<A> = Result<Vec<A>, Failure>;

/// Sends batches and reports each part's outcome (the node's `Internal.Replicate` or
/// `Internal.ReadVersions`; a fake in tests).
pub(super) trait Transport: Clone + Send + Sync + 'static {
    /// What a call carries per key.
    type Item: Item;
    /// A call's answer per item (`()` for a write: the call's success is the answer).
    type Answer: Send + 'static;
    /// What a part carries to report its outcome.
    type Done: Send + 'static;

    /// Sends `items` to `addr` in one call that must end by `deadline`; answers each item, in
    /// order.
    fn send(
        &self,
        addr: &str,
        items: Vec<Self::Item>,
        deadline: Instant,
    ) -> impl Future<Output = Outcome<Self::Answer>> + Send;

    /// Reports the outcome of `part`: as many answers as it has items, in order, or the
    /// failure (called exactly once per submitted part).
    fn finish(&self, part: Part<Self::Item, Self::Done>, result: Outcome<Self::Answer>);
}

/// A batch to send and the parts that waited past their deadline.
type Batch<I, D> = (Vec<Part<I, D>>, Vec<Part<I, D>>);

/// One peer's waiting parts and calls in flight.
#[derive(Debug)]
struct PeerQueue<I, D> {
    parts: VecDeque<Part<I, D>>,
    in_flight: usize,
}

impl<I, D> PeerQueue<I, D> {
    /// Takes the next batch from the front (at least one part unless the queue is empty) and
    /// the parts whose deadline has passed.
    fn take(&mut self, limits: &Limits, now: Instant) -> Batch<I, D> {
        let mut batch = Vec::new();
        let mut expired = Vec::new();
        let (mut items, mut bytes) = (0, 0);
        while let Some(front) = self.parts.front() {
            if front.deadline <= now {
                expired.extend(self.parts.pop_front());
                continue;
            }
            if !batch.is_empty()
                && (items + front.items.len() > limits.max_entries
                    || bytes + front.bytes > limits.max_bytes)
            {
                break;
            }
            items += front.items.len();
            bytes += front.bytes;
            batch.extend(self.parts.pop_front());
        }
        (batch, expired)
    }
}

type Queues<I, D> = Arc<Mutex<HashMap<String, PeerQueue<I, D>>>>;

/// The per-peer queues of one kind of call, keyed by the peer's gRPC address.
pub(super) struct Batcher<I, D> {
    queues: Queues<I, D>,
}

impl<I, D> std::fmt::Debug for Batcher<I, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("peers", &self.queues.lock().len())
            .finish()
    }
}

impl<I, D> Default for Batcher<I, D> {
    fn default() -> Self {
        Self {
            queues: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<I: Item, D: Send + 'static> Batcher<I, D> {
    /// Queues `part` for `addr`; sends it at once when fewer than `limits.in_flight` calls to
    /// `addr` are in flight, else with the next call that ends. Must run inside a tokio runtime.
    pub(super) fn submit<T: Transport<Item = I, Done = D>>(
        &self,
        transport: &T,
        limits: Limits,
        addr: &str,
        part: Part<I, D>,
    ) {
        let (batch, expired) = {
            let mut queues = self.queues.lock();
            // Looked up before inserting, so a busy peer costs no key allocation per part.
            let queue = match queues.get_mut(addr) {
                Some(queue) => queue,
                None => queues.entry(addr.to_owned()).or_insert_with(|| PeerQueue {
                    parts: VecDeque::new(),
                    in_flight: 0,
                }),
            };
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
struct Slot<I, D> {
    queues: Queues<I, D>,
    addr: String,
}

/// A batch taken for a slot (`None`: nothing waits, the slot is given back) and the parts that
/// waited past their deadline.
type Taken<I, D> = (Option<Vec<Part<I, D>>>, Vec<Part<I, D>>);

impl<I, D> Slot<I, D> {
    /// The next batch for this slot, or `None` (the slot is given back) when nothing waits.
    fn next(&self, limits: &Limits) -> Taken<I, D> {
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(&self.addr) else {
            return (None, Vec::new());
        };
        let (batch, expired) = queue.take(limits, Instant::now());
        ((!batch.is_empty()).then_some(batch), expired)
    }
}

impl<I, D> Drop for Slot<I, D> {
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

type TransportPart<T> = Part<<T as Transport>::Item, <T as Transport>::Done>;

/// Sends `batch`, then whatever waits for the same peer, until nothing does.
async fn send_until_empty<T: Transport>(
    transport: T,
    limits: Limits,
    slot: Slot<T::Item, T::Done>,
    mut batch: Vec<TransportPart<T>>,
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

/// Sends the parts of `batch` in one call and reports to each its own answers (or the call's
/// failure); a refused batch of several parts is sent again part by part.
async fn send_batch<T: Transport>(transport: &T, addr: &str, batch: Vec<TransportPart<T>>) {
    let deadline = batch
        .iter()
        .map(|p| p.deadline)
        .min()
        .expect("a batch is never empty");
    let total: usize = batch.iter().map(|p| p.items.len()).sum();
    let items = if let [only] = batch.as_slice() {
        only.items.clone()
    } else {
        batch.iter().flat_map(|p| p.items.iter().cloned()).collect()
    };
    let result = counted(transport.send(addr, items, deadline).await, total);
    if matches!(result, Err(Failure::Refused(_) | Failure::ClockDrift(_))) && batch.len() > 1 {
        let alone = batch.iter().map(|p| {
            let (items, n) = (p.items.clone(), p.items.len());
            let sent = transport.send(addr, items, p.deadline);
            async move { counted(sent.await, n) }
        });
        let results = futures_util::future::join_all(alone).await;
        for (part, result) in batch.into_iter().zip(results) {
            transport.finish(part, result);
        }
        return;
    }
    match result {
        Ok(mut answers) => {
            // Cut from the back, so each part's answers move out without shifting the rest;
            // what remains is the first part's.
            let mut cuts = Vec::with_capacity(batch.len());
            for part in batch[1..].iter().rev() {
                cuts.push(answers.split_off(answers.len() - part.items.len()));
            }
            cuts.push(answers);
            for (part, mine) in batch.into_iter().zip(cuts.into_iter().rev()) {
                transport.finish(part, Ok(mine));
            }
        }
        Err(failure) => {
            for part in batch {
                transport.finish(part, Err(failure.clone()));
            }
        }
    }
}

/// `result`, failed when it does not answer exactly `items` items.
fn counted<A>(result: Outcome<A>, items: usize) -> Outcome<A> {
    match result {
        Ok(answers) if answers.len() != items => Err(Failure::Refused(format!(
            "{} results for {items} keys",
            answers.len()
        ))),
        other => other,
    }
}

fn finish_expired<T: Transport>(transport: &T, limits: &Limits, expired: Vec<TransportPart<T>>) {
    for part in expired {
        transport.finish(part, Err(Failure::TimedOut(limits.timeout)));
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::{Semaphore, mpsc};

    use super::*;

    /// A part's reported outcome: its answers (each key echoed as `key=answer`) or the failure.
    type Reported = (String, Result<Vec<String>, String>);

    /// Records each call's keys, holds it until the test adds a permit, refuses every call that
    /// carries key `bad`, fails every call that carries key `down` as unreachable (and every
    /// call when `unreachable`), and answers each key with `key=ok`; reports each part's
    /// answers or failure.
    #[derive(Clone)]
    struct Fake {
        started: mpsc::UnboundedSender<Vec<String>>,
        gate: Arc<Semaphore>,
        finished: mpsc::UnboundedSender<Reported>,
        unreachable: bool,
    }

    struct Harness {
        fake: Fake,
        started: mpsc::UnboundedReceiver<Vec<String>>,
        finished: mpsc::UnboundedReceiver<Reported>,
        batcher: Batcher<Bytes, String>,
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

        /// Submits a part named `name` of `keys`.
        fn submit(&self, limits: Limits, name: &str, keys: &[&str], deadline: Instant) {
            let items = keys
                .iter()
                .map(|k| Bytes::copy_from_slice(k.as_bytes()))
                .collect();
            self.batcher.submit(
                &self.fake,
                limits,
                "peer:1",
                Part::new(items, deadline, name.to_owned()),
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
        async fn outcomes(&mut self, n: usize) -> Vec<Reported> {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(self.finished.recv().await.expect("an outcome"));
            }
            out.sort();
            out
        }
    }

    impl Transport for Fake {
        type Item = Bytes;
        type Answer = String;
        type Done = String;

        fn send(
            &self,
            _addr: &str,
            items: Vec<Bytes>,
            _deadline: Instant,
        ) -> impl Future<Output = Outcome<String>> + Send {
            let keys: Vec<String> = items
                .iter()
                .map(|k| String::from_utf8(k.to_vec()).unwrap())
                .collect();
            let this = self.clone();
            async move {
                let refuse = keys.iter().any(|k| k == "bad");
                let down = this.unreachable || keys.iter().any(|k| k == "down");
                this.started.send(keys.clone()).unwrap();
                this.gate.acquire().await.unwrap().forget();
                if down {
                    Err(Failure::Unreachable("connection refused".to_owned()))
                } else if refuse {
                    Err(Failure::Refused("memory full".to_owned()))
                } else {
                    Ok(keys.into_iter().map(|k| format!("{k}=ok")).collect())
                }
            }
        }

        fn finish(&self, part: Part<Bytes, String>, result: Outcome<String>) {
            let _ = self
                .finished
                .send((part.done, result.map_err(|f| f.to_string())));
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

    /// Part `name` answered for `keys`.
    fn ok(name: &str, keys: &[&str]) -> Reported {
        (
            name.to_owned(),
            Ok(keys.iter().map(|k| format!("{k}=ok")).collect()),
        )
    }

    fn failed(name: &str, message: &str) -> Reported {
        (name.to_owned(), Err(message.to_owned()))
    }

    #[tokio::test]
    async fn parts_queued_behind_a_call_in_flight_leave_together_in_the_next_call() {
        let mut h = Harness::new(false);
        let limits = limits(1, 1000);
        h.submit(limits, "first", &["a"], later());
        assert_eq!(
            h.next_call().await,
            ["a"],
            "an idle peer gets a part at once"
        );
        for i in 0..10 {
            h.submit(limits, &format!("w{i}"), &[&format!("k{i}")], later());
        }
        assert!(h.started.try_recv().is_err(), "the slot is busy");
        h.release(1);
        let second = h.next_call().await;
        let expected: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        assert_eq!(second, expected, "every waiting part in one call, in order");
        h.release(1);
        let outcomes = h.outcomes(11).await;
        assert_eq!(outcomes[0], ok("first", &["a"]));
        for (i, outcome) in outcomes[1..].iter().enumerate() {
            assert_eq!(*outcome, ok(&format!("w{i}"), &[&format!("k{i}")]));
        }
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
        h.submit(limits, "e", &["e"], later());
        h.release(1);
        assert_eq!(h.next_call().await, ["c", "d1", "d2", "e"]);
        h.release(2);
        assert_eq!(
            h.outcomes(5).await,
            [
                ok("a", &["a"]),
                ok("b", &["b"]),
                ok("c", &["c"]),
                ok("d", &["d1", "d2"]),
                ok("e", &["e"]),
            ],
            "each part answered once, with its own keys' answers"
        );
    }

    #[tokio::test]
    async fn a_batch_stops_at_the_entry_cap_but_never_splits_a_part() {
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
            "a larger part alone"
        );
        assert_eq!(
            h.outcomes(4).await,
            [
                ok("big", &["f", "g", "h", "i"]),
                ok("first", &["a"]),
                ok("w1", &["b", "c"]),
                ok("w2", &["d", "e"]),
            ]
        );
    }

    #[tokio::test]
    async fn every_part_in_a_failed_call_gets_its_failure() {
        let mut h = Harness::new(true);
        let limits = limits(1, 1000);
        h.submit(limits, "first", &["a"], later());
        h.next_call().await;
        for name in ["w1", "w2", "w3"] {
            h.submit(limits, name, &[name], later());
        }
        h.release(2);
        assert_eq!(h.next_call().await, ["w1", "w2", "w3"]);
        let down = "connection refused";
        assert_eq!(
            h.outcomes(4).await,
            [
                failed("first", down),
                failed("w1", down),
                failed("w2", down),
                failed("w3", down),
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_call_fails_only_the_parts_it_carried() {
        let mut h = Harness::new(false);
        let limits = limits(1, 1000);
        h.submit(limits, "first", &["a"], later());
        h.next_call().await;
        // Behind the first call: a batch that breaks mid-way (it carries `down`)...
        h.submit(limits, "w1", &["b"], later());
        h.submit(limits, "w2", &["down", "c"], later());
        h.release(1);
        assert_eq!(h.next_call().await, ["b", "down", "c"]);
        // ...while the next parts wait for the call after it.
        h.submit(limits, "w3", &["d"], later());
        h.submit(limits, "w4", &["e", "f"], later());
        h.release(1);
        assert_eq!(h.next_call().await, ["d", "e", "f"]);
        h.release(1);
        let down = "connection refused";
        assert_eq!(
            h.outcomes(5).await,
            [
                ok("first", &["a"]),
                failed("w1", down),
                failed("w2", down),
                ok("w3", &["d"]),
                ok("w4", &["e", "f"]),
            ],
            "an unreachable failure is not retried part by part, and later calls are unaffected"
        );
    }

    #[tokio::test]
    async fn a_refused_batch_is_sent_again_part_by_part() {
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
                failed("bad", "refused: memory full"),
                ok("first", &["a"]),
                ok("good", &["g"]),
            ]
        );
    }

    #[tokio::test]
    async fn a_part_that_waited_past_its_deadline_times_out_unsent() {
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
                ok("fine", &["f"]),
                ok("first", &["a"]),
                failed("late", "timed out after 2s"),
            ]
        );
        // Already past its deadline with a free slot: answered at once, nothing sent.
        h.submit(limits, "dead", &["x"], Instant::now());
        assert_eq!(h.outcomes(1).await, [failed("dead", "timed out after 2s")]);
        assert!(h.started.try_recv().is_err());
    }

    #[test]
    fn a_call_answering_the_wrong_number_of_items_fails() {
        assert!(counted(Ok(vec![(), ()]), 2).is_ok());
        let short = counted(Ok(vec![()]), 2).unwrap_err();
        assert_eq!(short.to_string(), "refused: 1 results for 2 keys");
    }
}
