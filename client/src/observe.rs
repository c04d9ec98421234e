//! The client's metrics (through the `metrics` facade) and tracing spans.
//!
//! **Metrics** go to whatever recorder the application installed (none: they cost a branch).
//! They are process-wide, like the facade: several clients in one process add up.
//!
//! | Metric | Kind | Labels | What |
//! |---|---|---|---|
//! | `ringcache_client_requests_total` | counter | `op`, `outcome` | calls, by operation and outcome (`ok` or the error kind, [`Error::kind`]) |
//! | `ringcache_client_request_duration_seconds` | histogram | `op` | time of each call, retries and failover included |
//! | `ringcache_client_attempt_failures_total` | counter | `op`, `class` | failed attempts on one node: `not_sent`, `broken`, `node_unavailable`, `timed_out`, `answered` |
//! | `ringcache_client_failovers_total` | counter | `op` | attempts moved on to a key's next replica |
//! | `ringcache_client_retries_total` | counter | `op` | retries made after a backoff |
//! | `ringcache_client_retries_denied_total` | counter | `op`, `reason` | retries not made: `budget` (retry budget empty), `deadline` (the call's deadline would pass) |
//! | `ringcache_client_batch_parts_total` | counter | `op` | requests batches were split into (by node and by the nodes' limits) |
//! | `ringcache_client_topology_refreshes_total` | counter | `result` | topology fetches (`ok`, `error`), triggered or explicit |
//! | `ringcache_client_topology_changes_total` | counter | | new topologies routed by (fetched or watched) |
//! | `ringcache_client_topology_watch_restarts_total` | counter | | topology watch streams that ended and were reopened |
//! | `ringcache_client_node_pools` | gauge | | nodes with an open connection pool |
//! | `ringcache_client_connections` | gauge | | pooled HTTP/2 connections (channels) |
//! | `ringcache_client_pipeline_streams` | gauge | | open pipelined streams |
//! | `ringcache_client_nodes_marked_unreachable_total` | counter | | times a node's circuit breaker opened (it is tried after the other replicas for a while) |
//! | `ringcache_client_near_cache_hits_total` | counter | | reads answered from the near cache ([`NearCacheOptions`](crate::NearCacheOptions)) |
//! | `ringcache_client_near_cache_misses_total` | counter | | near-cache reads that went to a node |
//! | `ringcache_client_near_cache_invalidations_total` | counter | | keys the nodes invalidated |
//! | `ringcache_client_near_cache_flushes_total` | counter | `reason` | times the near cache was emptied: `stream` (an invalidation stream ended), `topology` (the topology changed), `node` (a node said so: flush, cluster-wide flush) |
//! | `ringcache_client_near_cache_entries` | gauge | | entries in the near cache (the last client to change it) |
//! | `ringcache_client_near_cache_bytes` | gauge | | bytes charged in the near cache, each entry at least `max_bytes / max_entries` (the last client to change it) |
//! | `ringcache_client_near_cache_streams` | gauge | | live invalidation streams |
//! | `ringcache_client_spread_reads_total` | counter | | ONE reads of hot keys sent to the key's replicas in turn instead of its primary |
//! | `ringcache_client_local_reads_total` | counter | | ONE reads served by the process's own embedded node, without a network request |
//!
//! **Spans**: every call runs in an INFO span `ringcache.request` (target `ringcache::request`)
//! with `op`, the key's hash slot `key_slot` and 64-bit `key_hash` (single-key calls) or the
//! number of `keys` (batches), the `node` that answered, the number of `attempts`, and the
//! `outcome`. The key itself is never recorded. Each attempt on a node runs in a DEBUG span
//! `ringcache.attempt` with `node` (its id, or its address when the client has no topology),
//! `addr` and `attempt`. `key_hash` is `ringcache_proto::placement::key_hash` (SipHash-2-4 with
//! a fixed key, the nodes' anti-entropy hash): it tells keys apart in traces without showing
//! them, but a guessable key can be found by hashing guesses.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use tracing::{Span, field::Empty};

use crate::{Error, conn::FailureClass};

/// Names of the metrics (see the module documentation).
pub(crate) mod names {
    pub(crate) const REQUESTS: &str = "ringcache_client_requests_total";
    pub(crate) const DURATION: &str = "ringcache_client_request_duration_seconds";
    pub(crate) const ATTEMPT_FAILURES: &str = "ringcache_client_attempt_failures_total";
    pub(crate) const FAILOVERS: &str = "ringcache_client_failovers_total";
    pub(crate) const RETRIES: &str = "ringcache_client_retries_total";
    pub(crate) const RETRIES_DENIED: &str = "ringcache_client_retries_denied_total";
    pub(crate) const BATCH_PARTS: &str = "ringcache_client_batch_parts_total";
    pub(crate) const REFRESHES: &str = "ringcache_client_topology_refreshes_total";
    pub(crate) const TOPOLOGY_CHANGES: &str = "ringcache_client_topology_changes_total";
    pub(crate) const WATCH_RESTARTS: &str = "ringcache_client_topology_watch_restarts_total";
    pub(crate) const NODE_POOLS: &str = "ringcache_client_node_pools";
    pub(crate) const CONNECTIONS: &str = "ringcache_client_connections";
    pub(crate) const PIPELINE_STREAMS: &str = "ringcache_client_pipeline_streams";
    pub(crate) const UNREACHABLE: &str = "ringcache_client_nodes_marked_unreachable_total";
    pub(crate) const NEAR_HITS: &str = "ringcache_client_near_cache_hits_total";
    pub(crate) const NEAR_MISSES: &str = "ringcache_client_near_cache_misses_total";
    pub(crate) const NEAR_INVALIDATIONS: &str = "ringcache_client_near_cache_invalidations_total";
    pub(crate) const NEAR_FLUSHES: &str = "ringcache_client_near_cache_flushes_total";
    pub(crate) const NEAR_ENTRIES: &str = "ringcache_client_near_cache_entries";
    pub(crate) const NEAR_BYTES: &str = "ringcache_client_near_cache_bytes";
    pub(crate) const NEAR_STREAMS: &str = "ringcache_client_near_cache_streams";
    pub(crate) const SPREAD_READS: &str = "ringcache_client_spread_reads_total";
    pub(crate) const LOCAL_READS: &str = "ringcache_client_local_reads_total";
}

/// Describes every metric to the installed recorder (called at each connect; recorders take
/// repeated descriptions).
pub(crate) fn describe() {
    use names::*;
    describe_counter!(NEAR_HITS, "Reads answered from the client's near cache.");
    describe_counter!(NEAR_MISSES, "Near-cache reads that went to a node.");
    describe_counter!(
        NEAR_INVALIDATIONS,
        "Near-cache keys invalidated by the nodes."
    );
    describe_counter!(
        NEAR_FLUSHES,
        "Times the near cache was emptied, by reason (stream, topology, node)."
    );
    describe_gauge!(NEAR_ENTRIES, "Entries in the near cache.");
    describe_gauge!(
        NEAR_BYTES,
        metrics::Unit::Bytes,
        "Bytes charged in the near cache."
    );
    describe_gauge!(NEAR_STREAMS, "Live near-cache invalidation streams.");
    describe_counter!(
        REQUESTS,
        "Calls of the ringcache client, by operation and outcome."
    );
    describe_histogram!(
        DURATION,
        metrics::Unit::Seconds,
        "Time of each ringcache client call, retries and failover included."
    );
    describe_counter!(
        ATTEMPT_FAILURES,
        "Failed attempts of ringcache client calls on one node, by failure class."
    );
    describe_counter!(FAILOVERS, "Attempts moved on to a key's next replica.");
    describe_counter!(
        RETRIES,
        "Retries of ringcache client calls after a backoff."
    );
    describe_counter!(
        RETRIES_DENIED,
        "Retries not made: the retry budget was empty, or the call's deadline would pass."
    );
    describe_counter!(
        BATCH_PARTS,
        "Requests that multi-key calls were split into (by node and node limits)."
    );
    describe_counter!(
        REFRESHES,
        "Topology fetches of the ringcache client, by result."
    );
    describe_counter!(
        TOPOLOGY_CHANGES,
        "New topologies the ringcache client routes by."
    );
    describe_counter!(
        WATCH_RESTARTS,
        "Topology watch streams that ended and were reopened."
    );
    describe_gauge!(NODE_POOLS, "Nodes with an open connection pool.");
    describe_gauge!(CONNECTIONS, "Pooled HTTP/2 connections to nodes.");
    describe_gauge!(PIPELINE_STREAMS, "Open pipelined request streams.");
    describe_counter!(
        UNREACHABLE,
        "Times a node's circuit breaker opened: it is tried after the other replicas for a while."
    );
    describe_counter!(
        SPREAD_READS,
        "Reads of hot keys sent to the key's replicas in turn instead of its primary."
    );
    describe_counter!(
        LOCAL_READS,
        "Reads served by the process's own embedded node, without a network request."
    );
}

/// The label of a failure class.
pub(crate) fn class_label(class: FailureClass) -> &'static str {
    match class {
        FailureClass::NotSent => "not_sent",
        FailureClass::Broken => "broken",
        FailureClass::NodeUnavailable => "node_unavailable",
        FailureClass::TimedOut => "timed_out",
        FailureClass::Answered => "answered",
    }
}

/// Counts the end of a call.
pub(crate) fn call_finished(op: &'static str, outcome: Result<(), &Error>, elapsed: Duration) {
    let outcome = match outcome {
        Ok(()) => "ok",
        Err(error) => error.kind(),
    };
    counter!(names::REQUESTS, "op" => op, "outcome" => outcome).increment(1);
    histogram!(names::DURATION, "op" => op).record(elapsed.as_secs_f64());
}

pub(crate) fn attempt_failed(op: &'static str, class: FailureClass) {
    counter!(names::ATTEMPT_FAILURES, "op" => op, "class" => class_label(class)).increment(1);
}

pub(crate) fn failover(op: &'static str) {
    counter!(names::FAILOVERS, "op" => op).increment(1);
}

pub(crate) fn retry(op: &'static str) {
    counter!(names::RETRIES, "op" => op).increment(1);
}

pub(crate) fn retry_denied(op: &'static str, reason: &'static str) {
    counter!(names::RETRIES_DENIED, "op" => op, "reason" => reason).increment(1);
}

pub(crate) fn batch_parts(op: &'static str, parts: usize) {
    counter!(names::BATCH_PARTS, "op" => op).increment(parts as u64);
}

pub(crate) fn refreshed(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter!(names::REFRESHES, "result" => result).increment(1);
}

pub(crate) fn topology_changed() {
    counter!(names::TOPOLOGY_CHANGES).increment(1);
}

pub(crate) fn watch_restarted() {
    counter!(names::WATCH_RESTARTS).increment(1);
}

pub(crate) fn spread_read() {
    counter!(names::SPREAD_READS).increment(1);
}

pub(crate) fn local_read() {
    counter!(names::LOCAL_READS).increment(1);
}

pub(crate) fn marked_unreachable() {
    counter!(names::UNREACHABLE).increment(1);
}

/// A pool of `connections` opened (`+`) or dropped (`-`).
pub(crate) fn pool_opened(connections: usize, open: bool) {
    let sign = if open { 1.0 } else { -1.0 };
    gauge!(names::NODE_POOLS).increment(sign);
    #[allow(clippy::cast_precision_loss)]
    gauge!(names::CONNECTIONS).increment(sign * connections as f64);
}

/// A pipelined stream opened (`true`) or closed.
pub(crate) fn stream_opened(open: bool) {
    gauge!(names::PIPELINE_STREAMS).increment(if open { 1.0 } else { -1.0 });
}

/// The span of one call: `op`, and the key's slot and hash (or the number of keys); the node,
/// attempts and outcome are recorded as the call goes.
pub(crate) fn near_hit() {
    counter!(names::NEAR_HITS).increment(1);
}

pub(crate) fn near_miss() {
    counter!(names::NEAR_MISSES).increment(1);
}

pub(crate) fn near_invalidations(keys: usize) {
    counter!(names::NEAR_INVALIDATIONS).increment(keys as u64);
}

pub(crate) fn near_flush(reason: &'static str) {
    counter!(names::NEAR_FLUSHES, "reason" => reason).increment(1);
}

pub(crate) fn near_size(entries: usize, bytes: u64) {
    gauge!(names::NEAR_ENTRIES).set(entries as f64);
    gauge!(names::NEAR_BYTES).set(bytes as f64);
}

pub(crate) fn near_stream(open: bool) {
    let gauge = gauge!(names::NEAR_STREAMS);
    if open {
        gauge.increment(1.0);
    } else {
        gauge.decrement(1.0);
    }
}

pub(crate) fn request_span(op: &'static str, key: Option<&[u8]>, keys: usize) -> Span {
    let span = tracing::info_span!(
        target: "ringcache::request",
        "ringcache.request",
        op,
        key_slot = Empty,
        key_hash = Empty,
        keys = Empty,
        node = Empty,
        attempts = Empty,
        outcome = Empty,
    );
    if !span.is_disabled() {
        match key {
            Some(key) => {
                span.record("key_slot", ringcache_proto::placement::key_slot(key));
                span.record(
                    "key_hash",
                    tracing::field::display(format_args!(
                        "{:016x}",
                        ringcache_proto::placement::key_hash(key)
                    )),
                );
            }
            None => {
                span.record("keys", keys);
            }
        }
    }
    span
}

/// The span of one attempt on one node.
pub(crate) fn attempt_span(node: &str, addr: &str, attempt: u32) -> Span {
    tracing::debug_span!(
        target: "ringcache::request",
        "ringcache.attempt",
        node,
        addr,
        attempt
    )
}
