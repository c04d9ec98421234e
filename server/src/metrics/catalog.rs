//! The catalog of a node's metrics: every `ringcache_*` family, declared once.
//!
//! Each entry of the `ringcache_proto::metric_catalog!` invocation below (the types and the
//! macro are shared with the client's catalog) gives a family's handle name, type, Prometheus
//! name, unit, labels (with their values where those are a closed set) and help text. The macro
//! makes one typed static per entry ([`Def<CounterKind>`], [`Def<GaugeKind>`] or
//! [`Def<HistogramKind>`]) and the list [`CATALOG`] of all of them. `Metrics::new` describes every
//! family by walking [`CATALOG`] and creates its handles through a `Registrar`, which takes only
//! these statics: a handle of the wrong type does not compile, and a handle of a family not in
//! [`CATALOG`] cannot be made (a `Def` is only made here, and the registrar checks it is listed).
//!
//! The same list feeds the Grafana and alert-rule checks (`server/tests/deploy_files`), the
//! `/metrics` check of a fresh node (`tests/tests/metrics_catalog.rs`) and the generated reference
//! `docs/METRICS.md`. Adding a metric: one entry here, its handle in `Metrics`, where it is
//! recorded, a panel on the dashboard, and `RINGCACHE_REGENERATE=1 cargo test -p ringcache-tests
//! --test metrics_catalog` to rewrite the reference.
//!
//! `process_*` metrics come from the process collector (`metrics-process`) and are not listed.

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::PrometheusRecorder;

pub use ringcache_proto::metric_catalog::{
    CounterKind, Def, GaugeKind, HistogramKind, Kind, LabelDef, MetricDef, Unit, Values, closed,
    open,
};

use super::{HINT_DROP_REASONS, Op, Outcome, ReplicaCall, VersionSource};

/// Ranks of `ringcache_hot_key_requests_per_second` (1 = heaviest).
pub const HOT_KEY_RANKS: [&str; crate::hotkeys::METRIC_RANKS] =
    ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
/// States of `ringcache_members`, in the order `Metrics::set_cluster` fills them.
pub const MEMBER_STATES: [&str; 4] = ["alive", "suspect", "dead", "left"];
/// `ok` then `failed`.
pub const OK_FAILED: [&str; 2] = ["ok", "failed"];
/// Results of `ringcache_anti_entropy_rounds_total`.
pub const ROUND_RESULTS: [&str; 2] = ["completed", "skipped"];
/// Directions of `ringcache_anti_entropy_keys_total`.
pub const DIRECTIONS: [&str; 2] = ["pulled", "pushed"];
/// Results of `ringcache_lease_waits_total`.
pub const LEASE_WAIT_RESULTS: [&str; 2] = ["value", "timed_out"];

ringcache_proto::metric_catalog! {
    /// Every metric family of a node, in declaration order.
    // ---- requests -------------------------------------------------------------------------
    REQUESTS: counter "ringcache_requests_total", Count,
        [closed("op", &Op::LABELS), closed("result", &Outcome::LABELS)],
        "Cache requests handled, by operation and result";
    REQUEST_DURATION: histogram "ringcache_request_duration_seconds", Seconds,
        [closed("op", &Op::LABELS)],
        "Time to handle a Cache request, by operation";
    FORWARDED_REQUESTS: counter "ringcache_forwarded_requests_total", Count,
        [closed("op", &Op::LABELS)],
        "Requests for keys this node does not hold, forwarded to the key's primary; stays 0 while clients route directly";
    PIPELINE_STREAMS: gauge "ringcache_pipeline_streams", Count, [],
        "Open Cache.Pipeline streams (clients' pipelined connections)";
    PIPELINE_BATCHES: counter "ringcache_pipeline_batches_total", Count, [],
        "Request batches received on Cache.Pipeline streams";
    PIPELINE_REQUESTS: counter "ringcache_pipeline_requests_total", Count, [],
        "Requests received on Cache.Pipeline streams (divided by batches: the mean batch size)";

    // ---- store ----------------------------------------------------------------------------
    KEYS: gauge "ringcache_keys", Count, [],
        "Keys held by this node (expired keys count until reclaimed)";
    MEMORY_USED: gauge "ringcache_memory_used_bytes", Bytes, [],
        "Bytes charged to stored entries";
    MEMORY_MAX: gauge "ringcache_memory_max_bytes", Bytes, [],
        "The max_memory limit";
    HITS: counter "ringcache_hits_total", Count, [],
        "Key reads that found a live key";
    MISSES: counter "ringcache_misses_total", Count, [],
        "Key reads that found nothing";
    EVICTIONS: counter "ringcache_evictions_total", Count, [],
        "Keys evicted to stay under max_memory";
    TOMBSTONES_EVICTED: counter "ringcache_tombstones_evicted_total", Count, [],
        "Tombstones evicted under memory pressure before their grace ran out (their versions stay as a floor, so no late copy revives the key)";
    EXPIRATIONS: counter "ringcache_expirations_total", Count, [],
        "Keys removed because their TTL ran out";

    // ---- node -----------------------------------------------------------------------------
    UPTIME: gauge "ringcache_uptime_seconds", Seconds, [],
        "Seconds since the node started";
    BUILD_INFO: gauge "ringcache_build_info", none,
        [open("version", "this node's version (Cargo package version)")],
        "Always 1; the version label is this node's build";
    READY: gauge "ringcache_ready", none, [],
        "1 when /health/ready answers ready, else 0";

    // ---- gossip and membership --------------------------------------------------------------
    GOSSIP_PACKETS_SENT: counter "ringcache_gossip_packets_sent_total", Count, [],
        "Gossip datagrams sent";
    GOSSIP_PACKETS_RECEIVED: counter "ringcache_gossip_packets_received_total", Count, [],
        "Gossip datagrams received";
    GOSSIP_BYTES_SENT: counter "ringcache_gossip_bytes_sent_total", Bytes, [],
        "Gossip bytes sent";
    GOSSIP_BYTES_RECEIVED: counter "ringcache_gossip_bytes_received_total", Bytes, [],
        "Gossip bytes received";
    GOSSIP_DROPPED: counter "ringcache_gossip_dropped_packets_total", Count,
        [closed("reason", &crate::cluster::DropReason::LABELS)],
        "Gossip datagrams dropped, by reason: malformed, oversized; unknown_key (sealed under a key not in the key ring), unauthenticated (bad tag), replayed (seen before or older than the replay window), plaintext (at a node with a key ring), encrypted (at a node without one); impostor (from or about a node id alive at another gossip address)";
    GOSSIP_LOCAL_HEALTH: gauge "ringcache_gossip_local_health", none, [],
        "Local health score of the failure detector (0 = healthy): the node's probe interval and timeout are stretched by this + 1 after its own probes failed or it had to refute suspicions about itself (--local-health-max)";
    GOSSIP_KEYRING_KEYS: gauge "ringcache_gossip_keyring_keys", Count, [],
        "Keys in the gossip key ring; 0 = gossip is not encrypted";
    GOSSIP_KEYRING_PRIMARY_KEY_ID: gauge "ringcache_gossip_keyring_primary_key_id", none, [],
        "Id of the primary gossip key (first 4 bytes of its SHA-256 as a number; `ringcached` logs it as 8 hex digits); 0 = not encrypted. Every node should show the same value once a rotation is done";
    SECRETS_RELOADS: counter "ringcache_secrets_reloads_total", Count,
        [closed("result", &OK_FAILED)],
        "Reloads of secret files (gossip key ring) after a change or SIGHUP, by result (ok, failed: the old secrets stay in use)";
    MEMBERS: gauge "ringcache_members", Count, [closed("state", &MEMBER_STATES)],
        "Cluster members this node sees, by state (alive: joining, active or leaving; suspect; dead; left: drained and gone)";
    RING_MEMBERS: gauge "ringcache_ring_members", Count, [],
        "Members owning ranges of this node's ring";
    CLUSTER_EXPECTED_MEMBERS: gauge "ringcache_cluster_expected_members", Count, [],
        "Members the cluster should have: --expected-nodes, or the members that owned ranges less the drained and forgotten, whichever is larger";
    CLUSTER_UNDER_REPLICATED_SLOTS: gauge "ringcache_cluster_under_replicated_slots", Count, [],
        "Hash slots whose replica set has fewer serving members than min(R, expected members), in this node's view (0 when healthy)";
    TOPOLOGY_DIGEST: gauge "ringcache_topology_digest", none, [],
        "Low 32 bits of this node's topology digest: nodes that agree on the topology show the same value";
    CLUSTER_REFUSED_MEMBERS: gauge "ringcache_cluster_refused_members", Count, [],
        "Live members refused because their placement settings (replication factor, vnodes, placement version) differ from this node's";
    JOIN_REFUSED: gauge "ringcache_join_refused", none, [],
        "1 when this node refused to join the cluster it found (other placement settings; see /health/ready), else 0";

    // ---- replication ----------------------------------------------------------------------
    HINTS_PENDING: gauge "ringcache_hints_pending", Count, [],
        "Writes kept as hints for replicas that could not be reached, all targets together";
    HINTS_PENDING_BYTES: gauge "ringcache_hints_pending_bytes", Bytes, [],
        "Bytes charged to pending hints (key + value + overhead)";
    HINTS_DROPPED: counter "ringcache_hints_dropped_total", Count,
        [closed("reason", &HINT_DROP_REASONS)],
        "Hints dropped before delivery, by reason (max_bytes: over hint_max_bytes for the target, max_age: older than hint_max_age)";
    HINTS_REPLAYED: counter "ringcache_hints_replayed_total", Count, [],
        "Hints delivered to their target after it came back";
    REPLICA_WRITES: counter "ringcache_replica_writes_total", Count,
        [closed("result", &OK_FAILED)],
        "Entries this node sent to other replicas as a write's coordinator, by result (ok, failed)";
    REPLICATION_BATCHES: counter "ringcache_replication_batches_total", Count,
        [closed("kind", &ReplicaCall::LABELS)],
        "Batched calls this node sent to replicas as a coordinator, by kind: replicate (Internal.Replicate: replicated writes and read repairs; entries per call = replica_writes_total / this) and read_versions (Internal.ReadVersions: the keys of QUORUM and ALL reads); requests to the same replica share calls, and a batch counts once whether it travels on the replica stream or as a unary call";
    READ_REPAIRS: counter "ringcache_read_repairs_total", Count, [],
        "Stale or missing copies fixed by read repair after QUORUM and ALL reads";
    REPLICATION_LAG: gauge "ringcache_replication_lag_seconds", Seconds, [],
        "Age of the oldest pending hint: how long the most-behind replica has been missing a write this node coordinated; 0 when no hint is pending";
    REPLICA_STREAMS: gauge "ringcache_replica_streams", Count, [],
        "Open Internal.ReplicaStream streams this node opened to peers (one per peer it replicates to or reads from; 0 with --replica-stream-in-flight 0 or peers that do not know the stream)";
    REPLICA_STREAMS_SERVED: gauge "ringcache_replica_streams_served", Count, [],
        "Open Internal.ReplicaStream streams peers opened to this node";
    VERSIONS_REFUSED: counter "ringcache_versions_refused_total", Count,
        [closed("source", &VersionSource::LABELS)],
        "Versions from other nodes refused because they were further ahead of this node's clock than max_clock_drift, by source (replicate, hint, stream_entries, read_versions); nonzero means skewed clocks or a misbehaving peer";
    CLOCK_OFFSET: gauge "ringcache_clock_offset_seconds", Seconds, [],
        "The cluster's wall clock minus this node's at the last clock check (median of the live members' clocks; negative: this node is ahead)";
    CLOCK_SKEWED: gauge "ringcache_clock_skewed", none, [],
        "1 while this node's clock is further from the cluster's than max_clock_drift (it refuses writes), else 0";

    // ---- anti-entropy ---------------------------------------------------------------------
    ANTI_ENTROPY_ROUNDS: counter "ringcache_anti_entropy_rounds_total", Count,
        [closed("result", &ROUND_RESULTS)],
        "Anti-entropy comparisons with one peer: completed, or skipped (peer unreachable, topologies differ)";
    ANTI_ENTROPY_BUCKETS_DIFFERING: counter "ringcache_anti_entropy_buckets_differing_total", Count, [],
        "Buckets whose digests differed from a peer's in anti-entropy rounds this node started";
    ANTI_ENTROPY_KEYS: counter "ringcache_anti_entropy_keys_total", Count,
        [closed("direction", &DIRECTIONS)],
        "Keys repaired by anti-entropy: pulled from a peer and applied here, or pushed to a peer";

    // ---- data movement --------------------------------------------------------------------
    REBALANCE_KEYS_SENT: counter "ringcache_rebalance_keys_sent_total", Count, [],
        "Entries sent to other nodes after ring changes (joins, repairs, leaves)";
    REBALANCE_BYTES_SENT: counter "ringcache_rebalance_bytes_sent_total", Bytes, [],
        "Key and value bytes sent after ring changes";
    REBALANCE_STREAM_BYTES_SENT: counter "ringcache_rebalance_stream_bytes_sent_total", Bytes, [],
        "Key and value bytes sent in answers to other nodes' pulls (a joiner, or a node back from a restart catching up)";
    REBALANCE_KEYS_RECEIVED: counter "ringcache_rebalance_keys_received_total", Count, [],
        "Entries pulled by this node when it joined";
    REBALANCE_FAILURES: counter "ringcache_rebalance_failures_total", Count, [],
        "Failed rebalancing sends (retried by the next pass)";
    REBALANCE_PASSES: counter "ringcache_rebalance_passes_total", Count, [],
        "Rebalancing passes completed";
    REBALANCE_KEYS_SCANNED: counter "ringcache_rebalance_keys_scanned_total", Count, [],
        "Entries read by rebalancing passes (only those of hash slots whose replica set changed)";
    REBALANCE_SLOTS_SKIPPED: counter "ringcache_rebalance_slots_skipped_total", Count, [],
        "Hash slots not sent to a member because its slot digest matched this node's (it held the same copies already); 0 for now: the skip is not enabled yet";
    REBALANCE_PACE: gauge "ringcache_rebalance_pace_bytes_per_second", none, [],
        "The rate data movement is paced at now: rebalance_rate, or less while the node yields to requests";
    REBALANCE_IN_PROGRESS: gauge "ringcache_rebalance_in_progress", none, [],
        "1 while this node is moving data (joining, moving, leaving)";

    // ---- snapshots ------------------------------------------------------------------------
    SNAPSHOT_LAST_SUCCESS: gauge "ringcache_snapshot_last_success_timestamp_seconds", Seconds, [],
        "Unix time the last snapshot was written successfully (0: none since start)";
    SNAPSHOT_DURATION: gauge "ringcache_snapshot_duration_seconds", Seconds, [],
        "How long the last successful snapshot write took, throttling included";
    SNAPSHOT_BYTES: gauge "ringcache_snapshot_bytes", Bytes, [],
        "Size of the last snapshot written";
    SNAPSHOT_FAILURES: counter "ringcache_snapshot_failures_total", Count, [],
        "Snapshot writes that failed (the previous snapshot file is kept)";
    SNAPSHOT_LOADED_ENTRIES: gauge "ringcache_snapshot_loaded_entries", Count, [],
        "Entries loaded from the snapshot at start (0: none, or the load failed)";

    // ---- hot keys -------------------------------------------------------------------------
    HOT_KEY_REQUESTS_PER_SECOND: gauge "ringcache_hot_key_requests_per_second", CountPerSecond,
        [closed("rank", &HOT_KEY_RANKS)],
        "Requests per second of this node's heaviest keys in the last hot-key window, by rank (1 = heaviest; no key names: ringctl hotkeys shows them)";
    HOT_KEYS_TOP_SHARE: gauge "ringcache_hot_keys_top_share", none, [],
        "Share (0..1) of the requests of the last hot-key window that went to this node's ten heaviest keys";
    HOT_KEYS_MARKED: gauge "ringcache_hot_keys_marked", Count, [],
        "Keys this node answers as hot now (read rate in the last hot-key window at least --hot-key-threshold): clients spread their reads over the replicas";

    // ---- leases ---------------------------------------------------------------------------
    LEASES_GRANTED: counter "ringcache_leases_granted_total", Count, [],
        "GetOrLease leases granted by this node as a key's primary (take-overs included)";
    LEASES_TAKEN_OVER: counter "ringcache_leases_taken_over_total", Count, [],
        "Expired GetOrLease leases (holder gone or too slow) taken over by a waiting or later caller";
    LEASES_EXPIRED: counter "ringcache_leases_expired_total", Count, [],
        "Expired GetOrLease leases removed without a take-over";
    LEASE_WAITS: counter "ringcache_lease_waits_total", Count,
        [closed("result", &LEASE_WAIT_RESULTS)],
        "GetOrLease waits for another caller's lease, by result: value (woken with the value) or timed_out";
    LEASE_WAITERS: gauge "ringcache_lease_waiters", Count, [],
        "GetOrLease callers waiting for another caller's lease on this node now";
    LEASES_HELD: gauge "ringcache_leases_held", Count, [],
        "GetOrLease leases held on this node now (expired ones not swept yet included)";
    STALE_SERVED: counter "ringcache_stale_served_total", Count, [],
        "Expired values served by GetOrLease within the serve-stale window";

    // ---- near-cache tracking ----------------------------------------------------------------
    TRACKING_SUBSCRIBERS: gauge "ringcache_tracking_subscribers", Count, [],
        "Near-cache invalidation streams (Cache.Invalidations) open on this node";
    TRACKING_KEYS: gauge "ringcache_tracking_keys", Count, [],
        "Keys the near-cache tracking table remembers (bounded by tracking_max_keys)";
    TRACKING_INVALIDATIONS: counter "ringcache_tracking_invalidations_total", Count, [],
        "Near-cache invalidations queued to subscribers (one per subscriber and key)";
    TRACKING_EVICTIONS: counter "ringcache_tracking_evictions_total", Count, [],
        "Keys pushed out of the full tracking table (their readers were sent an invalidation)";
    TRACKING_OVERFLOWS: counter "ringcache_tracking_overflows_total", Count, [],
        "Invalidation streams ended because their queue overflowed (tracking_queue)";
    TRACKING_REFUSED: counter "ringcache_tracking_refused_total", Count, [],
        "Invalidation streams refused because tracking_max_subscribers were open";

    // ---- connections and security -----------------------------------------------------------
    CONNECTIONS: gauge "ringcache_connections", Count, [],
        "Open TCP connections on the gRPC port (clients and other nodes)";
    CONNECTIONS_MAX: gauge "ringcache_connections_max", Count, [],
        "The max_connections limit; 0 = unlimited";
    CONNECTIONS_REJECTED: counter "ringcache_connections_rejected_total", Count, [],
        "Connections closed at once because max_connections were open";
    AUTH_FAILURES: counter "ringcache_auth_failures_total", Count,
        [closed("reason", &super::AUTH_FAILURE_REASONS)],
        "Client requests refused: no, malformed or invalid credentials, an address locked out after repeated failures, or a role too low (permission_denied)";
    AUTH_SUCCESSES: counter "ringcache_auth_successes_total", Count, [],
        "Credentials checked and accepted (once per connection and credential; later requests reuse the result)";
    CONNECTIONS_REFUSED: counter "ringcache_connections_refused_total", Count,
        [closed("plane", &super::PLANES), closed("reason", &crate::connections::Refused::LABELS)],
        "Connections closed before serving, by plane and reason (too_many, too_many_unauthenticated, tls_handshake, handshake_timeout, not_http2, auth_timeout, idle)";
    CLUSTER_CONNECTIONS: gauge "ringcache_cluster_connections", Count, [],
        "Open connections on the cluster port (other nodes)";
    UNAUTHENTICATED_CONNECTIONS: gauge "ringcache_unauthenticated_connections", Count, [],
        "Client-port connections that have not authenticated yet";
    INSECURE: gauge "ringcache_insecure", none, [],
        "1 when the node serves a non-loopback address without TLS or authentication (--insecure)";

    // ---- RESP port ------------------------------------------------------------------------
    RESP_COMMANDS: counter "ringcache_resp_commands_total", Count,
        [open("command", "a command of the RESP command table (lowercase), or unknown")],
        "Commands received on the RESP port, by command (unknown commands: unknown), refused ones included";
    RESP_ERRORS: counter "ringcache_resp_errors_total", Count,
        [
            open("command", "a command of the RESP command table (lowercase), or unknown"),
            open("error", "ERR, WRONGPASS, NOAUTH, NOPERM, OOM, NOPROTO, WRONGTYPE, MOVED, ASK, CROSSSLOT, CLUSTERDOWN, TRYAGAIN or other"),
        ],
        "Error replies on the RESP port, by command and Redis error code (ERR, WRONGPASS, NOAUTH, NOPERM, OOM, ...; other); a series appears at its first error (unknown/ERR from the start)";
    RESP_CONNECTIONS: gauge "ringcache_resp_connections", Count, [],
        "Open connections on the RESP port";
}

/// The catalog entry named `name`.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    CATALOG.iter().copied().find(|def| def.name == name)
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Describes every family of [`CATALOG`] to `recorder` (the `# HELP` lines).
pub(crate) fn describe_all(recorder: &PrometheusRecorder) {
    for def in CATALOG {
        let (name, help) = (def.name.into(), def.help.into());
        match def.kind {
            Kind::Counter => recorder.describe_counter(name, def.unit, help),
            Kind::Gauge => recorder.describe_gauge(name, def.unit, help),
            Kind::Histogram => recorder.describe_histogram(name, def.unit, help),
        }
    }
}

/// Makes handles of catalog entries, and only of those.
#[derive(Clone, Copy)]
pub(crate) struct Registrar<'a> {
    pub(crate) recorder: &'a PrometheusRecorder,
}

impl Registrar<'_> {
    /// The key of `def` with `values` for its labels, in order. Panics (at start-up, so in every
    /// test) when `def` is not in the catalog, the values do not match its labels in number, or
    /// a value is outside a closed set.
    fn key(def: &'static MetricDef, values: &[&'static str]) -> Key {
        assert!(
            CATALOG.iter().any(|d| std::ptr::eq(*d, def)),
            "{} is not in metrics::catalog::CATALOG",
            def.name
        );
        assert_eq!(
            values.len(),
            def.labels.len(),
            "{}: label values {values:?} for labels {:?}",
            def.name,
            def.labels.iter().map(|l| l.name).collect::<Vec<_>>()
        );
        let labels = def
            .labels
            .iter()
            .zip(values)
            .map(|(label, value)| {
                if let Values::Closed(allowed) = label.values {
                    assert!(
                        allowed.contains(value),
                        "{}: {}={value:?} is not one of {allowed:?}",
                        def.name,
                        label.name
                    );
                }
                Label::new(label.name, *value)
            })
            .collect::<Vec<_>>();
        Key::from_parts(def.name, labels)
    }

    /// The counter of `def` with these label values.
    pub(crate) fn counter(
        self,
        def: &'static Def<CounterKind>,
        values: &[&'static str],
    ) -> Counter {
        self.recorder
            .register_counter(&Self::key(def, values), &METADATA)
    }

    /// The gauge of `def` with these label values.
    pub(crate) fn gauge(self, def: &'static Def<GaugeKind>, values: &[&'static str]) -> Gauge {
        self.recorder
            .register_gauge(&Self::key(def, values), &METADATA)
    }

    /// The histogram of `def` with these label values.
    pub(crate) fn histogram(
        self,
        def: &'static Def<HistogramKind>,
        values: &[&'static str],
    ) -> Histogram {
        self.recorder
            .register_histogram(&Self::key(def, values), &METADATA)
    }

    /// One counter per value of `def`'s single closed label, in the catalog's order.
    pub(crate) fn counters<const N: usize>(
        self,
        def: &'static Def<CounterKind>,
        values: &[&'static str; N],
    ) -> [Counter; N] {
        values.map(|value| self.counter(def, &[value]))
    }

    /// One gauge per value, in order.
    pub(crate) fn gauges<const N: usize>(
        self,
        def: &'static Def<GaugeKind>,
        values: &[&'static str; N],
    ) -> [Gauge; N] {
        values.map(|value| self.gauge(def, &[value]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_follow_the_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for def in CATALOG {
            assert!(seen.insert(def.name), "{} declared twice", def.name);
            assert!(def.name.starts_with("ringcache_"), "{}", def.name);
            assert!(
                def.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                def.name
            );
            assert_eq!(
                def.name.ends_with("_total"),
                def.kind == Kind::Counter,
                "{}: counters and only counters end in _total",
                def.name
            );
            assert!(!def.help.is_empty(), "{}: no help", def.name);
            for label in def.labels {
                assert!(
                    !["instance", "job", "le"].contains(&label.name),
                    "{}: label {} is reserved",
                    def.name,
                    label.name
                );
                if let Values::Closed(values) = label.values {
                    assert!(
                        !values.is_empty(),
                        "{}: {} has no values",
                        def.name,
                        label.name
                    );
                }
            }
        }
        assert_eq!(find("ringcache_keys").map(|d| d.kind), Some(Kind::Gauge));
        assert!(find("ringcache_nope").is_none());
    }

    #[test]
    fn closed_label_sets_match_the_enums_that_record_them() {
        assert_eq!(Op::ALL.map(Op::as_str), Op::LABELS);
        assert_eq!(Outcome::ALL.map(Outcome::as_str), Outcome::LABELS);
        assert_eq!(
            ReplicaCall::ALL.map(ReplicaCall::as_str),
            ReplicaCall::LABELS
        );
        assert_eq!(
            VersionSource::ALL.map(VersionSource::as_str),
            VersionSource::LABELS
        );
        assert_eq!(
            crate::connections::Refused::ALL.map(crate::connections::Refused::as_label),
            crate::connections::Refused::LABELS
        );
        for (i, rank) in HOT_KEY_RANKS.iter().enumerate() {
            assert_eq!(*rank, (i + 1).to_string());
        }
    }

    #[test]
    #[should_panic(expected = "is not one of")]
    fn a_value_outside_a_closed_set_is_refused() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let _ = Registrar {
            recorder: &recorder,
        }
        .counter(&HINTS_DROPPED, &["max_speed"]);
    }

    #[test]
    #[should_panic(expected = "label values")]
    fn missing_label_values_are_refused() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let _ = Registrar {
            recorder: &recorder,
        }
        .counter(&REQUESTS, &["get"]);
    }
}
