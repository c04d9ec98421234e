//! The client's metrics (through the `metrics` facade) and tracing spans.
//!
//! **Metrics** go to whatever recorder the application installed (none: they cost a branch).
//! They are process-wide, like the facade: several clients in one process add up.
//!
//! Every metric is declared once, in [`catalog`] (public as [`crate::metrics_catalog`]): name,
//! type, unit, labels and help. The repository's `docs/METRICS.md` is generated from it.
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

use metrics::{Counter, Gauge, Histogram};
use tracing::{Span, field::Empty};

use crate::{Error, conn::FailureClass};

/// The catalog of the client's metrics.
pub mod catalog {
    pub use ringcache_proto::metric_catalog::{
        CounterKind, Def, GaugeKind, HistogramKind, Kind, LabelDef, MetricDef, Unit, Values,
        closed, open,
    };

    const OP: LabelDef = open("op", "the client method (get, set, mget, ...)");
    /// Failure classes of `ringcache_client_attempt_failures_total`.
    pub const FAILURE_CLASSES: [&str; 5] = [
        "not_sent",
        "broken",
        "node_unavailable",
        "timed_out",
        "answered",
    ];

    ringcache_proto::metric_catalog! {
        /// Every metric of the client, in declaration order.
        REQUESTS: counter "ringcache_client_requests_total", Count,
            [OP, open("outcome", "ok, or the error kind (Error::kind: invalid_argument, unavailable, timeout, ...)")],
            "Calls of the ringcache client, by operation and outcome";
        DURATION: histogram "ringcache_client_request_duration_seconds", Seconds, [OP],
            "Time of each ringcache client call, retries and failover included";
        ATTEMPT_FAILURES: counter "ringcache_client_attempt_failures_total", Count,
            [OP, closed("class", &FAILURE_CLASSES)],
            "Failed attempts of ringcache client calls on one node, by failure class";
        FAILOVERS: counter "ringcache_client_failovers_total", Count, [OP],
            "Attempts moved on to a key's next replica";
        RETRIES: counter "ringcache_client_retries_total", Count, [OP],
            "Retries of ringcache client calls after a backoff";
        RETRIES_DENIED: counter "ringcache_client_retries_denied_total", Count,
            [OP, closed("reason", &["budget", "deadline"])],
            "Retries not made: budget (the retry budget was empty) or deadline (the call's deadline would pass)";
        BATCH_PARTS: counter "ringcache_client_batch_parts_total", Count, [OP],
            "Requests that multi-key calls were split into (by node and node limits)";
        REFRESHES: counter "ringcache_client_topology_refreshes_total", Count,
            [closed("result", &["ok", "error"])],
            "Topology fetches of the ringcache client (triggered or explicit), by result";
        TOPOLOGY_CHANGES: counter "ringcache_client_topology_changes_total", Count, [],
            "New topologies the ringcache client routes by (fetched or watched)";
        WATCH_RESTARTS: counter "ringcache_client_topology_watch_restarts_total", Count, [],
            "Topology watch streams that ended and were reopened";
        NODE_POOLS: gauge "ringcache_client_node_pools", Count, [],
            "Nodes with an open connection pool";
        CONNECTIONS: gauge "ringcache_client_connections", Count, [],
            "Pooled HTTP/2 connections (channels) to nodes";
        PIPELINE_STREAMS: gauge "ringcache_client_pipeline_streams", Count, [],
            "Open pipelined request streams";
        UNREACHABLE: counter "ringcache_client_nodes_marked_unreachable_total", Count, [],
            "Times a node's circuit breaker opened: it is tried after the other replicas for a while";
        NEAR_HITS: counter "ringcache_client_near_cache_hits_total", Count, [],
            "Reads answered from the client's near cache";
        NEAR_MISSES: counter "ringcache_client_near_cache_misses_total", Count, [],
            "Near-cache reads that went to a node";
        NEAR_INVALIDATIONS: counter "ringcache_client_near_cache_invalidations_total", Count, [],
            "Near-cache keys invalidated by the nodes";
        NEAR_FLUSHES: counter "ringcache_client_near_cache_flushes_total", Count,
            [closed("reason", &["stream", "topology", "node"])],
            "Times the near cache was emptied, by reason: stream (an invalidation stream ended), topology (the topology changed), node (a node said so: flush, cluster-wide flush)";
        NEAR_ENTRIES: gauge "ringcache_client_near_cache_entries", Count, [],
            "Entries in the near cache (the last client to change it)";
        NEAR_BYTES: gauge "ringcache_client_near_cache_bytes", Bytes, [],
            "Bytes charged in the near cache, each entry at least max_bytes / max_entries (the last client to change it)";
        NEAR_STREAMS: gauge "ringcache_client_near_cache_streams", Count, [],
            "Live near-cache invalidation streams";
        SPREAD_READS: counter "ringcache_client_spread_reads_total", Count, [],
            "ONE reads of hot keys sent to the key's replicas in turn instead of its primary";
        LOCAL_READS: counter "ringcache_client_local_reads_total", Count, [],
            "ONE reads served by the process's own embedded node, without a network request";
    }

    /// Checks `labels` against `def`'s (debug builds).
    pub(super) fn check(def: &MetricDef, labels: &[(&'static str, &'static str)]) {
        debug_assert!(
            labels.len() == def.labels.len()
                && labels.iter().zip(def.labels).all(|((name, value), label)| {
                    *name == label.name
                        && match label.values {
                            Values::Closed(values) => values.contains(value),
                            Values::Open(_) => true,
                        }
                }),
            "{}: labels {labels:?} do not match the catalog",
            def.name
        );
    }
}

use catalog::{CounterKind, Def, GaugeKind, HistogramKind, Kind};

fn counter(def: &'static Def<CounterKind>, labels: &[(&'static str, &'static str)]) -> Counter {
    catalog::check(def, labels);
    metrics::counter!(def.name, labels)
}

fn gauge(def: &'static Def<GaugeKind>) -> Gauge {
    catalog::check(def, &[]);
    metrics::gauge!(def.name)
}

fn histogram(
    def: &'static Def<HistogramKind>,
    labels: &[(&'static str, &'static str)],
) -> Histogram {
    catalog::check(def, labels);
    metrics::histogram!(def.name, labels)
}

/// Describes every metric of the catalog to the installed recorder (called at each connect;
/// recorders take repeated descriptions).
pub(crate) fn describe() {
    metrics::with_recorder(|recorder| {
        for def in catalog::CATALOG {
            let (name, help) = (def.name.into(), def.help.into());
            match def.kind {
                Kind::Counter => recorder.describe_counter(name, def.unit, help),
                Kind::Gauge => recorder.describe_gauge(name, def.unit, help),
                Kind::Histogram => recorder.describe_histogram(name, def.unit, help),
            }
        }
    });
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
    counter(&catalog::REQUESTS, &[("op", op), ("outcome", outcome)]).increment(1);
    histogram(&catalog::DURATION, &[("op", op)]).record(elapsed.as_secs_f64());
}

pub(crate) fn attempt_failed(op: &'static str, class: FailureClass) {
    counter(
        &catalog::ATTEMPT_FAILURES,
        &[("op", op), ("class", class_label(class))],
    )
    .increment(1);
}

pub(crate) fn failover(op: &'static str) {
    counter(&catalog::FAILOVERS, &[("op", op)]).increment(1);
}

pub(crate) fn retry(op: &'static str) {
    counter(&catalog::RETRIES, &[("op", op)]).increment(1);
}

pub(crate) fn retry_denied(op: &'static str, reason: &'static str) {
    counter(&catalog::RETRIES_DENIED, &[("op", op), ("reason", reason)]).increment(1);
}

pub(crate) fn batch_parts(op: &'static str, parts: usize) {
    counter(&catalog::BATCH_PARTS, &[("op", op)]).increment(parts as u64);
}

pub(crate) fn refreshed(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter(&catalog::REFRESHES, &[("result", result)]).increment(1);
}

pub(crate) fn topology_changed() {
    counter(&catalog::TOPOLOGY_CHANGES, &[]).increment(1);
}

pub(crate) fn watch_restarted() {
    counter(&catalog::WATCH_RESTARTS, &[]).increment(1);
}

pub(crate) fn spread_read() {
    counter(&catalog::SPREAD_READS, &[]).increment(1);
}

pub(crate) fn local_read() {
    counter(&catalog::LOCAL_READS, &[]).increment(1);
}

pub(crate) fn marked_unreachable() {
    counter(&catalog::UNREACHABLE, &[]).increment(1);
}

/// A pool of `connections` opened (`+`) or dropped (`-`).
pub(crate) fn pool_opened(connections: usize, open: bool) {
    let sign = if open { 1.0 } else { -1.0 };
    gauge(&catalog::NODE_POOLS).increment(sign);
    #[allow(clippy::cast_precision_loss)]
    gauge(&catalog::CONNECTIONS).increment(sign * connections as f64);
}

/// A pipelined stream opened (`true`) or closed.
pub(crate) fn stream_opened(open: bool) {
    gauge(&catalog::PIPELINE_STREAMS).increment(if open { 1.0 } else { -1.0 });
}

/// The span of one call: `op`, and the key's slot and hash (or the number of keys); the node,
/// attempts and outcome are recorded as the call goes.
pub(crate) fn near_hit() {
    counter(&catalog::NEAR_HITS, &[]).increment(1);
}

pub(crate) fn near_miss() {
    counter(&catalog::NEAR_MISSES, &[]).increment(1);
}

pub(crate) fn near_invalidations(keys: usize) {
    counter(&catalog::NEAR_INVALIDATIONS, &[]).increment(keys as u64);
}

pub(crate) fn near_flush(reason: &'static str) {
    counter(&catalog::NEAR_FLUSHES, &[("reason", reason)]).increment(1);
}

pub(crate) fn near_size(entries: usize, bytes: u64) {
    gauge(&catalog::NEAR_ENTRIES).set(entries as f64);
    gauge(&catalog::NEAR_BYTES).set(bytes as f64);
}

pub(crate) fn near_stream(open: bool) {
    let gauge = gauge(&catalog::NEAR_STREAMS);
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

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::MetricKind;
    use metrics_util::debugging::DebuggingRecorder;

    /// Every recording function writes a metric of the catalog, of its declared type and with
    /// its declared labels; and every catalog entry has a recording function.
    #[test]
    fn every_metric_recorded_is_the_catalogs() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);
        call_finished("get", Ok(()), Duration::from_millis(1));
        attempt_failed("get", FailureClass::TimedOut);
        failover("get");
        retry("get");
        retry_denied("get", "budget");
        batch_parts("mget", 2);
        refreshed(false);
        topology_changed();
        watch_restarted();
        spread_read();
        local_read();
        marked_unreachable();
        pool_opened(2, true);
        stream_opened(true);
        near_hit();
        near_miss();
        near_invalidations(3);
        near_flush("topology");
        near_size(1, 10);
        near_stream(true);
        let recorded = snapshotter.snapshot().into_vec();
        let mut seen = std::collections::BTreeSet::new();
        for (key, ..) in &recorded {
            let name = key.key().name();
            let def = catalog::CATALOG
                .iter()
                .find(|d| d.name == name)
                .unwrap_or_else(|| panic!("{name} is not in the catalog"));
            let kind = match key.kind() {
                MetricKind::Counter => Kind::Counter,
                MetricKind::Gauge => Kind::Gauge,
                MetricKind::Histogram => Kind::Histogram,
            };
            assert_eq!(kind, def.kind, "{name}");
            let labels: Vec<&str> = key.key().labels().map(|l| l.key()).collect();
            let declared: Vec<&str> = def.labels.iter().map(|l| l.name).collect();
            assert_eq!(labels, declared, "{name}");
            seen.insert(name.to_owned());
        }
        for def in catalog::CATALOG {
            assert!(seen.contains(def.name), "{} is never recorded", def.name);
        }
    }
}
