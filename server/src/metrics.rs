//! Prometheus metrics of one node.
//!
//! Each node owns its own recorder (no process-global state), so several nodes in one test process
//! keep separate numbers. Request handlers record through handles registered once at start-up;
//! store gauges and counters are copied from [`crate::store::StoreStats`] when `/metrics` is scraped.
//!
//! Every family is declared once, in [`catalog`] ([`CATALOG`]): name, type, unit, labels and
//! help; handles can only be made from its entries.
//!
//! Names follow Prometheus conventions: `ringcache_` prefix, `_total` counters, `_seconds`
//! histograms, `_bytes` gauges; `op` and `result` labels on request metrics.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub mod catalog;

pub use catalog::CATALOG;
use catalog::Registrar;

use crate::cluster::{DropReason, GossipStatsSnapshot};
use crate::store::{ClockDrift, StoreStats};

/// A Cache operation, as the `op` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    Get,
    Set,
    Delete,
    MGet,
    MSet,
    MDelete,
    Incr,
    CompareAndSet,
    Expire,
    Persist,
    Ttl,
    Append,
    SetRange,
    IncrByFloat,
    GetEx,
    GetOrLease,
}

impl Op {
    const ALL: [Op; 16] = [
        Op::Get,
        Op::Set,
        Op::Delete,
        Op::MGet,
        Op::MSet,
        Op::MDelete,
        Op::Incr,
        Op::CompareAndSet,
        Op::Expire,
        Op::Persist,
        Op::Ttl,
        Op::Append,
        Op::SetRange,
        Op::IncrByFloat,
        Op::GetEx,
        Op::GetOrLease,
    ];

    /// Every `op` label value, in the order of `Op::ALL`.
    pub const LABELS: [&'static str; 16] = [
        "get",
        "set",
        "delete",
        "mget",
        "mset",
        "mdelete",
        "incr",
        "compare_and_set",
        "expire",
        "persist",
        "ttl",
        "append",
        "set_range",
        "incr_by_float",
        "get_ex",
        "get_or_lease",
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::MGet => "mget",
            Op::MSet => "mset",
            Op::MDelete => "mdelete",
            Op::Incr => "incr",
            Op::CompareAndSet => "compare_and_set",
            Op::Expire => "expire",
            Op::Persist => "persist",
            Op::Ttl => "ttl",
            Op::Append => "append",
            Op::SetRange => "set_range",
            Op::IncrByFloat => "incr_by_float",
            Op::GetEx => "get_ex",
            Op::GetOrLease => "get_or_lease",
        }
    }
}

/// How a request ended, as the `result` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded (for reads: found).
    Ok,
    /// A read that found nothing, or a conditional write that did not apply.
    Miss,
    /// Refused: bad input.
    InvalidArgument,
    /// Refused: compare-and-set mismatch.
    Conflict,
    /// Refused: memory full.
    MemoryFull,
    /// Any other error.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Miss,
        Outcome::InvalidArgument,
        Outcome::Conflict,
        Outcome::MemoryFull,
        Outcome::Error,
    ];

    /// Every `result` label value, in the order of `Outcome::ALL`.
    pub const LABELS: [&'static str; 6] = [
        "ok",
        "miss",
        "invalid_argument",
        "conflict",
        "memory_full",
        "error",
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Miss => "miss",
            Outcome::InvalidArgument => "invalid_argument",
            Outcome::Conflict => "conflict",
            Outcome::MemoryFull => "memory_full",
            Outcome::Error => "error",
        }
    }
}

/// A kind of batched call a coordinator sends to replicas, as the `kind` label of
/// `ringcache_replication_batches_total` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaCall {
    /// `Internal.Replicate`: replicated writes and read repairs.
    Replicate,
    /// `Internal.ReadVersions`: the keys of QUORUM and ALL reads.
    ReadVersions,
}

impl ReplicaCall {
    const ALL: [ReplicaCall; 2] = [ReplicaCall::Replicate, ReplicaCall::ReadVersions];

    /// Every `kind` label value, in the order of the variants.
    pub const LABELS: [&'static str; 2] = ["replicate", "read_versions"];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaCall::Replicate => "replicate",
            ReplicaCall::ReadVersions => "read_versions",
        }
    }
}

/// Where a version from another node came from, as the `source` label of
/// `ringcache_versions_refused_total` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    /// An `Internal.Replicate` call received (a coordinator's write, read repair, a rebalancing
    /// push).
    Replicate,
    /// An `Internal.Replicate` call received with `hinted` set (a hint replay).
    Hint,
    /// An entry pulled with `Internal.StreamEntries` while joining.
    StreamEntries,
    /// An `Internal.ReadVersions` answer to a QUORUM or ALL read.
    ReadVersions,
}

impl VersionSource {
    const ALL: [VersionSource; 4] = [
        VersionSource::Replicate,
        VersionSource::Hint,
        VersionSource::StreamEntries,
        VersionSource::ReadVersions,
    ];

    /// Every `source` label value, in the order of the variants.
    pub const LABELS: [&'static str; 4] = ["replicate", "hint", "stream_entries", "read_versions"];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionSource::Replicate => "replicate",
            VersionSource::Hint => "hint",
            VersionSource::StreamEntries => "stream_entries",
            VersionSource::ReadVersions => "read_versions",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|s| *s == self)
            .expect("every source is listed")
    }
}

/// At most one log line per source this often about refused versions; the others are counted.
pub const REFUSED_VERSION_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Latency buckets in seconds: 25 µs to 1 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0,
];

/// The metrics of one node.
pub struct Metrics {
    handle: PrometheusHandle,
    /// `requests[op][outcome]`.
    requests: [[Counter; Outcome::LABELS.len()]; Op::LABELS.len()],
    latency: [Histogram; Op::LABELS.len()],
    /// `forwarded[op]`: requests this node forwarded to the key's primary.
    forwarded: [Counter; Op::LABELS.len()],
    forwarded_total: std::sync::atomic::AtomicU64,
    /// Requests handled so far, all ops together (what rebalancing yields to).
    handled_total: std::sync::atomic::AtomicU64,
    keys: Gauge,
    memory_used: Gauge,
    memory_max: Gauge,
    hits: Counter,
    misses: Counter,
    evictions: Counter,
    tombstones_evicted: Counter,
    expirations: Counter,
    uptime: Gauge,
    gossip_packets_sent: Counter,
    gossip_packets_received: Counter,
    gossip_bytes_sent: Counter,
    gossip_bytes_received: Counter,
    /// `gossip_dropped[i]`: reason [`DropReason::LABELS`]`[i]`.
    gossip_dropped: [Counter; DropReason::LABELS.len()],
    gossip_keyring_keys: Gauge,
    gossip_keyring_primary_id: Gauge,
    gossip_local_health: Gauge,
    /// `secrets_reloads[0]`: applied, `[1]`: failed (old secrets kept).
    secrets_reloads: [Counter; 2],
    members: [Gauge; 4],
    topology_members: Gauge,
    refused_members: Gauge,
    expected_members: Gauge,
    under_replicated_slots: Gauge,
    topology_digest: Gauge,
    ready: Gauge,
    /// Process metrics (`process_*`: CPU seconds, resident memory, open fds, threads), read
    /// from /proc at each scrape into `process_recorder`.
    process: metrics_process::Collector,
    process_recorder: std::sync::Arc<PrometheusRecorder>,
    join_refused: Gauge,
    rebalance_keys_sent: Counter,
    /// Anti-entropy rounds: completed, skipped.
    anti_entropy_rounds: [Counter; 2],
    anti_entropy_buckets: Counter,
    /// Anti-entropy keys: pulled, pushed.
    anti_entropy_keys: [Counter; 2],
    /// Requests per second of the top ten hot keys of the last window, by rank.
    hot_key_rates: [Gauge; crate::hotkeys::METRIC_RANKS],
    /// Share of the last window's requests that went to the top ten keys.
    hot_keys_top_share: Gauge,
    leases_granted: Counter,
    leases_taken_over: Counter,
    leases_expired: Counter,
    /// GetOrLease waits: answered with a value, timed out.
    lease_waits: [Counter; 2],
    lease_waiters: Gauge,
    leases_held: Gauge,
    stale_served: Counter,
    /// Near-cache tracking: open invalidation streams and keys remembered.
    tracking_subscribers: Gauge,
    tracking_keys: Gauge,
    /// Near-cache tracking: invalidations queued, keys pushed out of the table, streams ended
    /// by a queue overflow, streams refused.
    tracking_invalidations: Counter,
    tracking_evictions: Counter,
    tracking_overflows: Counter,
    tracking_refused: Counter,
    /// Keys answered as hot now (`--hot-key-threshold`).
    hot_keys_marked: Gauge,
    rebalance_bytes_sent: Counter,
    rebalance_stream_bytes_sent: Counter,
    rebalance_keys_received: Counter,
    rebalance_failures: Counter,
    rebalance_passes: Counter,
    rebalance_keys_scanned: Counter,
    rebalance_slots_skipped: Counter,
    rebalance_pace: Gauge,
    rebalance_moving: Gauge,
    hints_pending: Gauge,
    hints_pending_bytes: Gauge,
    /// `hints_dropped[reason]`, reasons as in [`HINT_DROP_REASONS`].
    hints_dropped: [Counter; 2],
    hints_replayed: Counter,
    /// `replica_writes[0]`: acknowledged, `[1]`: failed.
    replica_writes: [Counter; 2],
    /// By [`ReplicaCall`], in its order.
    replication_batches: [Counter; 2],
    read_repairs: Counter,
    replication_lag: Gauge,
    clock_offset: Gauge,
    clock_skewed: Gauge,
    connections: Gauge,
    connections_max: Gauge,
    connections_rejected: Counter,
    pipeline_streams: Gauge,
    replica_streams: Gauge,
    replica_streams_served: Gauge,
    pipeline_batches: Counter,
    pipeline_requests: Counter,
    snapshot_last_success: Gauge,
    snapshot_duration: Gauge,
    snapshot_bytes: Gauge,
    snapshot_failures: Counter,
    snapshot_loaded_entries: Gauge,
    /// Authentication, connection admission and the insecure flag.
    pub security: SecurityMetrics,
    /// The RESP port: commands, errors, connections.
    pub resp: RespMetrics,
    /// `versions_refused[source]`, sources as in [`VersionSource::ALL`].
    versions_refused: [Counter; 4],
    versions_refused_totals: [std::sync::atomic::AtomicU64; 4],
    /// Per source: when its last log line was written, and the refusals not logged since.
    refused_log: parking_lot::Mutex<[(Option<std::time::Instant>, u64); 4]>,
}

/// Why hints are dropped, as the `reason` label of `ringcache_hints_dropped_total` names it.
pub const HINT_DROP_REASONS: [&str; 2] = ["max_bytes", "max_age"];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh set of metrics with its own registry: every family of [`CATALOG`] described, and
    /// the handles made from its entries.
    pub fn new() -> Self {
        use catalog as c;
        let recorder = std::sync::Arc::new(
            PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder(),
        );
        let handle = recorder.handle();
        metrics::with_local_recorder(&*recorder, || {
            metrics_process::Collector::default().describe()
        });
        catalog::describe_all(&recorder);
        let reg = Registrar {
            recorder: &recorder,
        };
        reg.gauge(&c::BUILD_INFO, &[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        let counter = |def| reg.counter(def, &[]);
        let gauge = |def| reg.gauge(def, &[]);
        Self {
            requests: Op::LABELS
                .map(|op| Outcome::LABELS.map(|result| reg.counter(&c::REQUESTS, &[op, result]))),
            latency: Op::LABELS.map(|op| reg.histogram(&c::REQUEST_DURATION, &[op])),
            forwarded: reg.counters(&c::FORWARDED_REQUESTS, &Op::LABELS),
            forwarded_total: std::sync::atomic::AtomicU64::new(0),
            handled_total: std::sync::atomic::AtomicU64::new(0),
            keys: gauge(&c::KEYS),
            memory_used: gauge(&c::MEMORY_USED),
            memory_max: gauge(&c::MEMORY_MAX),
            hits: counter(&c::HITS),
            misses: counter(&c::MISSES),
            evictions: counter(&c::EVICTIONS),
            tombstones_evicted: counter(&c::TOMBSTONES_EVICTED),
            expirations: counter(&c::EXPIRATIONS),
            uptime: gauge(&c::UPTIME),
            gossip_packets_sent: counter(&c::GOSSIP_PACKETS_SENT),
            gossip_packets_received: counter(&c::GOSSIP_PACKETS_RECEIVED),
            gossip_bytes_sent: counter(&c::GOSSIP_BYTES_SENT),
            gossip_bytes_received: counter(&c::GOSSIP_BYTES_RECEIVED),
            gossip_dropped: reg.counters(&c::GOSSIP_DROPPED, &DropReason::LABELS),
            gossip_keyring_keys: gauge(&c::GOSSIP_KEYRING_KEYS),
            gossip_keyring_primary_id: gauge(&c::GOSSIP_KEYRING_PRIMARY_KEY_ID),
            gossip_local_health: gauge(&c::GOSSIP_LOCAL_HEALTH),
            secrets_reloads: reg.counters(&c::SECRETS_RELOADS, &c::OK_FAILED),
            members: reg.gauges(&c::MEMBERS, &c::MEMBER_STATES),
            topology_members: gauge(&c::RING_MEMBERS),
            refused_members: gauge(&c::CLUSTER_REFUSED_MEMBERS),
            expected_members: gauge(&c::CLUSTER_EXPECTED_MEMBERS),
            under_replicated_slots: gauge(&c::CLUSTER_UNDER_REPLICATED_SLOTS),
            topology_digest: gauge(&c::TOPOLOGY_DIGEST),
            ready: gauge(&c::READY),
            process: metrics_process::Collector::default(),
            process_recorder: recorder.clone(),
            join_refused: gauge(&c::JOIN_REFUSED),
            rebalance_keys_sent: counter(&c::REBALANCE_KEYS_SENT),
            anti_entropy_rounds: reg.counters(&c::ANTI_ENTROPY_ROUNDS, &c::ROUND_RESULTS),
            anti_entropy_buckets: counter(&c::ANTI_ENTROPY_BUCKETS_DIFFERING),
            anti_entropy_keys: reg.counters(&c::ANTI_ENTROPY_KEYS, &c::DIRECTIONS),
            hot_key_rates: reg.gauges(&c::HOT_KEY_REQUESTS_PER_SECOND, &c::HOT_KEY_RANKS),
            hot_keys_top_share: gauge(&c::HOT_KEYS_TOP_SHARE),
            leases_granted: counter(&c::LEASES_GRANTED),
            leases_taken_over: counter(&c::LEASES_TAKEN_OVER),
            leases_expired: counter(&c::LEASES_EXPIRED),
            lease_waits: reg.counters(&c::LEASE_WAITS, &c::LEASE_WAIT_RESULTS),
            lease_waiters: gauge(&c::LEASE_WAITERS),
            leases_held: gauge(&c::LEASES_HELD),
            stale_served: counter(&c::STALE_SERVED),
            tracking_subscribers: gauge(&c::TRACKING_SUBSCRIBERS),
            tracking_keys: gauge(&c::TRACKING_KEYS),
            tracking_invalidations: counter(&c::TRACKING_INVALIDATIONS),
            tracking_evictions: counter(&c::TRACKING_EVICTIONS),
            tracking_overflows: counter(&c::TRACKING_OVERFLOWS),
            tracking_refused: counter(&c::TRACKING_REFUSED),
            hot_keys_marked: gauge(&c::HOT_KEYS_MARKED),
            rebalance_bytes_sent: counter(&c::REBALANCE_BYTES_SENT),
            rebalance_stream_bytes_sent: counter(&c::REBALANCE_STREAM_BYTES_SENT),
            rebalance_keys_received: counter(&c::REBALANCE_KEYS_RECEIVED),
            rebalance_failures: counter(&c::REBALANCE_FAILURES),
            rebalance_passes: counter(&c::REBALANCE_PASSES),
            rebalance_keys_scanned: counter(&c::REBALANCE_KEYS_SCANNED),
            rebalance_slots_skipped: counter(&c::REBALANCE_SLOTS_SKIPPED),
            rebalance_pace: gauge(&c::REBALANCE_PACE),
            rebalance_moving: gauge(&c::REBALANCE_IN_PROGRESS),
            hints_pending: gauge(&c::HINTS_PENDING),
            hints_pending_bytes: gauge(&c::HINTS_PENDING_BYTES),
            hints_dropped: reg.counters(&c::HINTS_DROPPED, &HINT_DROP_REASONS),
            hints_replayed: counter(&c::HINTS_REPLAYED),
            replica_writes: reg.counters(&c::REPLICA_WRITES, &c::OK_FAILED),
            replication_batches: ReplicaCall::ALL
                .map(|kind| reg.counter(&c::REPLICATION_BATCHES, &[kind.as_str()])),
            read_repairs: counter(&c::READ_REPAIRS),
            replication_lag: gauge(&c::REPLICATION_LAG),
            clock_offset: gauge(&c::CLOCK_OFFSET),
            clock_skewed: gauge(&c::CLOCK_SKEWED),
            connections: gauge(&c::CONNECTIONS),
            connections_max: gauge(&c::CONNECTIONS_MAX),
            connections_rejected: counter(&c::CONNECTIONS_REJECTED),
            pipeline_streams: gauge(&c::PIPELINE_STREAMS),
            replica_streams: gauge(&c::REPLICA_STREAMS),
            replica_streams_served: gauge(&c::REPLICA_STREAMS_SERVED),
            pipeline_batches: counter(&c::PIPELINE_BATCHES),
            pipeline_requests: counter(&c::PIPELINE_REQUESTS),
            snapshot_last_success: gauge(&c::SNAPSHOT_LAST_SUCCESS),
            snapshot_duration: gauge(&c::SNAPSHOT_DURATION),
            snapshot_bytes: gauge(&c::SNAPSHOT_BYTES),
            snapshot_failures: counter(&c::SNAPSHOT_FAILURES),
            snapshot_loaded_entries: gauge(&c::SNAPSHOT_LOADED_ENTRIES),
            security: SecurityMetrics::register(reg),
            resp: RespMetrics::register(recorder.clone()),
            versions_refused: reg.counters(&c::VERSIONS_REFUSED, &VersionSource::LABELS),
            versions_refused_totals: Default::default(),
            refused_log: parking_lot::Mutex::new([(None, 0); 4]),
            handle,
        }
    }
    /// Records one handled request.
    pub fn record(&self, op: Op, outcome: Outcome, elapsed: Duration) {
        let op_idx = Op::ALL
            .iter()
            .position(|o| *o == op)
            .expect("every op is listed");
        let outcome_idx = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .expect("every outcome is listed");
        self.requests[op_idx][outcome_idx].increment(1);
        self.latency[op_idx].record(elapsed.as_secs_f64());
        self.handled_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests handled so far, all ops and outcomes together.
    pub fn handled_total(&self) -> u64 {
        self.handled_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a request forwarded to another node.
    pub fn record_forward(&self, op: Op) {
        let op_idx = Op::ALL
            .iter()
            .position(|o| *o == op)
            .expect("every op is listed");
        self.forwarded[op_idx].increment(1);
        self.forwarded_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests forwarded so far, all ops together.
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Copies in the data-movement counters (and the bytes served to other nodes' pulls).
    pub fn set_rebalance(
        &self,
        status: &ringcache_proto::v1::RebalanceStatusResponse,
        stream_bytes_sent: u64,
    ) {
        self.rebalance_keys_sent.absolute(status.keys_sent);
        self.rebalance_bytes_sent.absolute(status.bytes_sent);
        self.rebalance_stream_bytes_sent.absolute(stream_bytes_sent);
        self.rebalance_keys_received.absolute(status.keys_received);
        self.rebalance_failures.absolute(status.failures);
        self.rebalance_passes.absolute(status.passes);
        self.rebalance_keys_scanned
            .absolute(status.keys_scanned_total);
        self.rebalance_slots_skipped
            .absolute(status.slots_skipped_total);
        self.rebalance_pace.set(status.pace_bytes_per_second);
        self.rebalance_moving
            .set(if status.phase == "idle" { 0.0 } else { 1.0 });
    }

    /// Copies in the anti-entropy counters.
    pub fn set_anti_entropy(&self, stats: &crate::antientropy::AntiEntropyStats) {
        use std::sync::atomic::Ordering::Relaxed;
        let rounds = stats.rounds.load(Relaxed);
        let skipped = stats.rounds_skipped.load(Relaxed);
        self.anti_entropy_rounds[0].absolute(rounds.saturating_sub(skipped));
        self.anti_entropy_rounds[1].absolute(skipped);
        self.anti_entropy_buckets
            .absolute(stats.buckets_differing.load(Relaxed));
        self.anti_entropy_keys[0].absolute(stats.keys_pulled.load(Relaxed));
        self.anti_entropy_keys[1].absolute(stats.keys_pushed.load(Relaxed));
    }

    /// Copies in the lease counters and gauges.
    pub fn set_leases(&self, leases: &crate::lease::Leases) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = leases.stats();
        self.leases_granted.absolute(stats.granted.load(Relaxed));
        self.leases_taken_over
            .absolute(stats.taken_over.load(Relaxed));
        self.leases_expired.absolute(stats.expired.load(Relaxed));
        self.lease_waits[0].absolute(stats.woken_by_value.load(Relaxed));
        self.lease_waits[1].absolute(stats.timed_out.load(Relaxed));
        self.stale_served.absolute(stats.stale_served.load(Relaxed));
        self.lease_waiters.set(leases.waiting() as f64);
        self.leases_held.set(leases.held() as f64);
    }

    /// Copies in the last hot-key window: the top ten's rates (0 for ranks with no key) and
    /// their share of all requests.
    pub fn set_hot_keys(&self, hot: &crate::hotkeys::HotKeys) {
        if !hot.enabled() {
            return;
        }
        let report = hot.report(crate::hotkeys::METRIC_RANKS);
        for (rank, gauge) in self.hot_key_rates.iter().enumerate() {
            let rate = report
                .keys
                .get(rank)
                .map_or(0.0, |key| report.per_second(key.count));
            gauge.set(rate);
        }
        self.hot_keys_top_share
            .set(report.top_share(crate::hotkeys::METRIC_RANKS));
        self.hot_keys_marked.set(hot.hot_count() as f64);
    }

    /// Copies in the near-cache tracking counters.
    pub fn set_tracking(&self, stats: crate::tracking::TrackingStats) {
        self.tracking_subscribers.set(stats.subscribers as f64);
        self.tracking_keys.set(stats.keys as f64);
        self.tracking_invalidations.absolute(stats.invalidations);
        self.tracking_evictions.absolute(stats.evictions);
        self.tracking_overflows.absolute(stats.overflows);
        self.tracking_refused.absolute(stats.refused);
    }

    /// Copies in the gossip counters and member gauges.
    pub fn set_cluster(&self, gossip: Option<&GossipStatsSnapshot>, ring_members: usize) {
        self.topology_members.set(ring_members as f64);
        let Some(gossip) = gossip else { return };
        self.gossip_packets_sent.absolute(gossip.packets_sent);
        self.gossip_packets_received
            .absolute(gossip.packets_received);
        self.gossip_bytes_sent.absolute(gossip.bytes_sent);
        self.gossip_bytes_received.absolute(gossip.bytes_received);
        for (counter, dropped) in self.gossip_dropped.iter().zip(gossip.dropped) {
            counter.absolute(dropped);
        }
        self.gossip_keyring_keys.set(gossip.keyring_keys as f64);
        self.gossip_local_health.set(gossip.local_health as f64);
        self.gossip_keyring_primary_id
            .set(gossip.keyring_primary_id as f64);
        self.members[0].set(gossip.members_alive as f64);
        self.members[1].set(gossip.members_suspect as f64);
        self.members[2].set(gossip.members_dead as f64);
        self.members[3].set(gossip.members_left as f64);
        self.refused_members.set(gossip.members_refused as f64);
    }

    /// Sets the cluster-health gauges, the topology digest and readiness.
    pub fn set_health(&self, health: &crate::node::ClusterHealth, digest: u64, ready: bool) {
        self.expected_members.set(health.expected as f64);
        self.under_replicated_slots
            .set(health.under_replicated_slots as f64);
        self.topology_digest.set(f64::from(digest as u32));
        self.ready.set(if ready { 1.0 } else { 0.0 });
    }

    /// Reads the process metrics (`process_*`) from the operating system.
    pub fn collect_process(&self) {
        metrics::with_local_recorder(&*self.process_recorder, || self.process.collect());
    }

    /// Notes that this node refused to join the cluster it found.
    pub fn record_join_refused(&self) {
        self.join_refused.set(1.0);
    }

    /// Counts one reload of secret files, applied (`ok`) or failed.
    pub fn record_secrets_reload(&self, ok: bool) {
        self.secrets_reloads[usize::from(!ok)].increment(1);
    }

    /// Sets the pending-hint gauges.
    pub fn set_hints_pending(&self, entries: usize, bytes: usize) {
        self.hints_pending.set(entries as f64);
        self.hints_pending_bytes.set(bytes as f64);
    }

    /// Sets the clock-check gauges ([`crate::skew`]).
    pub fn set_clock_offset(&self, offset_ms: i64, skewed: bool) {
        self.clock_offset.set(offset_ms as f64 / 1000.0);
        self.clock_skewed.set(f64::from(u8::from(skewed)));
    }

    /// Sets the replication lag (age of the oldest pending hint).
    pub fn set_replication_lag(&self, lag: Duration) {
        self.replication_lag.set(lag.as_secs_f64());
    }

    /// Records a snapshot written at `now_ms` (unix ms).
    pub fn record_snapshot_written(&self, info: &crate::snapshot::SnapshotInfo, now_ms: u64) {
        self.snapshot_last_success.set(now_ms as f64 / 1000.0);
        self.snapshot_duration.set(info.duration.as_secs_f64());
        self.snapshot_bytes.set(info.bytes as f64);
    }

    /// Counts a failed snapshot write.
    pub fn record_snapshot_failure(&self) {
        self.snapshot_failures.increment(1);
    }

    /// Sets the entries loaded from the snapshot at start.
    pub fn set_snapshot_loaded(&self, entries: u64) {
        self.snapshot_loaded_entries.set(entries as f64);
    }

    /// Copies in the connection count, the cap (0 = unlimited) and the rejections so far.
    pub fn set_connections(&self, open: usize, max: usize, rejected: u64) {
        self.connections.set(open as f64);
        self.connections_max.set(max as f64);
        self.connections_rejected.absolute(rejected);
    }

    /// A `Cache.Pipeline` stream opened (`+1`) or ended (`-1`).
    pub fn pipeline_stream(&self, delta: f64) {
        self.pipeline_streams.increment(delta);
    }

    /// An `Internal.ReplicaStream` to a peer opened (`+1`) or ended (`-1`).
    pub fn replica_stream(&self, delta: f64) {
        self.replica_streams.increment(delta);
    }

    /// An `Internal.ReplicaStream` from a peer opened (`+1`) or ended (`-1`).
    pub fn replica_stream_served(&self, delta: f64) {
        self.replica_streams_served.increment(delta);
    }

    /// Counts one request batch of `requests` received on a pipeline stream.
    pub fn record_pipeline_batch(&self, requests: usize) {
        self.pipeline_batches.increment(1);
        self.pipeline_requests.increment(requests as u64);
    }

    /// Counts `n` hints dropped for `reason` (`max_bytes` or `max_age`).
    pub fn record_hints_dropped(&self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(i) = HINT_DROP_REASONS.iter().position(|r| *r == reason) {
            self.hints_dropped[i].increment(n);
        }
    }

    /// Counts `n` hints delivered.
    pub fn record_hints_replayed(&self, n: u64) {
        self.hints_replayed.increment(n);
    }

    /// Counts `n` entries sent to a replica, acknowledged (`ok`) or not.
    pub fn record_replica_writes(&self, ok: bool, n: u64) {
        self.replica_writes[usize::from(!ok)].increment(n);
    }

    /// Counts one batched call sent to a replica.
    pub fn record_replication_batch(&self, kind: ReplicaCall) {
        self.replication_batches[kind as usize].increment(1);
    }

    /// Counts `n` versions from `peer` refused by the drift check (`drift` describes the one
    /// furthest ahead) and logs it, at most once per [`REFUSED_VERSION_LOG_INTERVAL`] per source
    /// (the line says how many refusals went unlogged before it).
    pub fn record_versions_refused(
        &self,
        source: VersionSource,
        peer: &str,
        n: u64,
        drift: ClockDrift,
    ) {
        if n == 0 {
            return;
        }
        self.versions_refused[source.index()].increment(n);
        self.versions_refused_totals[source.index()]
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::Instant::now();
        let unlogged = {
            let mut log = self.refused_log.lock();
            let (last, unlogged) = &mut log[source.index()];
            if last.is_some_and(|at| now.duration_since(at) < REFUSED_VERSION_LOG_INTERVAL) {
                *unlogged += n;
                return;
            }
            *last = Some(now);
            std::mem::take(unlogged)
        };
        tracing::warn!(
            source = source.as_str(),
            %peer,
            refused = n,
            ahead_ms = drift.ahead_ms,
            max_clock_drift_ms = drift.max_drift_ms,
            unlogged_since_last_line = unlogged,
            "refused versions too far ahead of this node's clock (skewed clocks or a misbehaving peer)"
        );
    }

    /// Versions refused so far from `source`.
    pub fn versions_refused(&self, source: VersionSource) -> u64 {
        self.versions_refused_totals[source.index()].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts `n` copies fixed by read repair.
    pub fn record_read_repairs(&self, n: u64) {
        self.read_repairs.increment(n);
    }

    /// Renders the Prometheus text exposition, after copying in the store's current numbers.
    pub fn render(&self, stats: &StoreStats, max_memory_bytes: usize, uptime: Duration) -> String {
        self.keys.set(stats.keys as f64);
        self.memory_used.set(stats.used_bytes as f64);
        self.memory_max.set(max_memory_bytes as f64);
        self.hits.absolute(stats.hits);
        self.misses.absolute(stats.misses);
        self.evictions.absolute(stats.evictions);
        self.tombstones_evicted.absolute(stats.tombstones_evicted);
        self.expirations.absolute(stats.expirations);
        self.uptime.set(uptime.as_secs_f64());
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets; call periodically so memory stays
    /// bounded between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a request was not authenticated or authorized (the `reason` label of
/// `ringcache_auth_failures_total`).
pub const AUTH_FAILURE_REASONS: [&str; 5] = [
    "missing",
    "malformed",
    "invalid",
    "locked_out",
    "permission_denied",
];

/// The planes whose connections are counted (`plane` label): the gRPC client port, the cluster
/// port and the RESP port.
pub const PLANES: [&str; 3] = ["client", "cluster", "resp"];

/// The `plane` index of the RESP port in [`PLANES`].
pub const RESP_PLANE: usize = 2;

/// Metrics of authentication and connection admission.
pub struct SecurityMetrics {
    auth_failures: [Counter; AUTH_FAILURE_REASONS.len()],
    auth_successes: Counter,
    /// `refused[plane][reason]`.
    refused: [[Counter; crate::connections::Refused::LABELS.len()]; PLANES.len()],
    cluster_connections: Gauge,
    unauthenticated_connections: Gauge,
    insecure: Gauge,
}

impl std::fmt::Debug for SecurityMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityMetrics").finish_non_exhaustive()
    }
}

impl SecurityMetrics {
    fn register(reg: Registrar<'_>) -> Self {
        use catalog as c;
        Self {
            auth_failures: reg.counters(&c::AUTH_FAILURES, &AUTH_FAILURE_REASONS),
            auth_successes: reg.counter(&c::AUTH_SUCCESSES, &[]),
            refused: PLANES.map(|plane| {
                crate::connections::Refused::LABELS
                    .map(|reason| reg.counter(&c::CONNECTIONS_REFUSED, &[plane, reason]))
            }),
            cluster_connections: reg.gauge(&c::CLUSTER_CONNECTIONS, &[]),
            unauthenticated_connections: reg.gauge(&c::UNAUTHENTICATED_CONNECTIONS, &[]),
            insecure: reg.gauge(&c::INSECURE, &[]),
        }
    }

    /// Counts a refused request; `reason` is one of [`AUTH_FAILURE_REASONS`].
    pub fn record_auth_failure(&self, reason: &str) {
        if let Some(i) = AUTH_FAILURE_REASONS.iter().position(|r| *r == reason) {
            self.auth_failures[i].increment(1);
        }
    }

    /// Counts accepted credentials.
    pub fn record_auth_success(&self) {
        self.auth_successes.increment(1);
    }

    /// Copies in the admission counts of one plane (index into [`PLANES`]).
    pub fn set_plane(&self, plane: usize, connections: &crate::connections::Connections) {
        for (i, reason) in crate::connections::Refused::ALL.iter().enumerate() {
            self.refused[plane][i].absolute(connections.refused(*reason));
        }
    }

    /// Counts one connection of `plane` (index into [`PLANES`]) closed for `reason`, for planes
    /// that count as they go rather than through [`SecurityMetrics::set_plane`] (RESP).
    pub fn record_refused(&self, plane: usize, reason: crate::connections::Refused) {
        if let Some(i) = crate::connections::Refused::ALL
            .iter()
            .position(|r| *r == reason)
        {
            self.refused[plane][i].increment(1);
        }
    }

    /// Copies in the cluster-port and unauthenticated connection counts and the insecure flag.
    pub fn set_gauges(&self, cluster_open: usize, unauthenticated_open: usize, insecure: bool) {
        self.cluster_connections.set(cluster_open as f64);
        self.unauthenticated_connections
            .set(unauthenticated_open as f64);
        self.insecure.set(if insecure { 1.0 } else { 0.0 });
    }
}

/// The error codes `ringcache_resp_errors_total` tells apart (the first word of a Redis error
/// reply); any other is `other`.
pub const RESP_ERROR_KINDS: [&str; 12] = [
    "ERR",
    "WRONGPASS",
    "NOAUTH",
    "NOPERM",
    "OOM",
    "NOPROTO",
    "WRONGTYPE",
    "MOVED",
    "ASK",
    "CROSSSLOT",
    "CLUSTERDOWN",
    "TRYAGAIN",
];

/// Metrics of the RESP port. Command labels are the command table's names (an unknown command
/// is `unknown`), error labels one of [`RESP_ERROR_KINDS`] or `other`: both sets are bounded.
/// Command series exist from the start; error series appear at their first use.
pub struct RespMetrics {
    recorder: std::sync::Arc<PrometheusRecorder>,
    connections: Gauge,
    /// One counter per command of the table, in table order, then one for unknown commands.
    commands: Box<[Counter]>,
    errors: dashmap::DashMap<(&'static str, &'static str), Counter>,
}

impl std::fmt::Debug for RespMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespMetrics").finish_non_exhaustive()
    }
}

impl RespMetrics {
    fn register(recorder: std::sync::Arc<PrometheusRecorder>) -> Self {
        let reg = Registrar {
            recorder: &recorder,
        };
        let connections = reg.gauge(&catalog::RESP_CONNECTIONS, &[]);
        // Exported from the start: every command of the table (a bounded set) and the error of
        // an unknown command, so dashboards and alerts find the families on a fresh node.
        let commands = crate::resp::table::COMMANDS
            .iter()
            .map(|spec| spec.name)
            .chain(["unknown"])
            .map(|command| reg.counter(&catalog::RESP_COMMANDS, &[command]))
            .collect();
        let metrics = Self {
            recorder,
            connections,
            commands,
            errors: dashmap::DashMap::new(),
        };
        metrics.error_counter_of("unknown", "ERR");
        metrics
    }

    fn error_counter_of(
        &self,
        command: &'static str,
        kind: &'static str,
    ) -> dashmap::mapref::one::RefMut<'_, (&'static str, &'static str), Counter> {
        self.errors.entry((command, kind)).or_insert_with(|| {
            Registrar {
                recorder: &self.recorder,
            }
            .counter(&catalog::RESP_ERRORS, &[command, kind])
        })
    }

    /// Counts one command (`spec`: its table entry, `None` for an unknown command) and, when
    /// its reply was an error, the error's code (the first word of the error text).
    pub fn record_command(
        &self,
        spec: Option<&'static crate::resp::table::Spec>,
        error: Option<&str>,
    ) {
        let unknown = self.commands.len() - 1;
        self.commands[spec.map_or(unknown, |spec| spec.index())].increment(1);
        if let Some(text) = error {
            let command = spec.map_or("unknown", |spec| spec.name);
            let code = text.split(' ').next().unwrap_or_default();
            let kind = RESP_ERROR_KINDS
                .iter()
                .find(|k| **k == code)
                .copied()
                .unwrap_or("other");
            self.error_counter_of(command, kind).increment(1);
        }
    }

    /// One RESP connection more (`1.0`) or less (`-1.0`).
    pub fn connection(&self, delta: f64) {
        self.connections.increment(delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_family_is_rendered_with_its_type_from_the_start() {
        let metrics = Metrics::new();
        let text = metrics.render(&StoreStats::default(), 1024, Duration::ZERO);
        for def in CATALOG {
            let line = format!("# TYPE {} {}\n", def.name, def.kind.as_str());
            assert!(text.contains(&line), "{line:?} missing from:\n{text}");
            assert!(
                text.contains(&format!("# HELP {} {}", def.name, def.help)),
                "{}: help",
                def.name
            );
        }
    }

    #[test]
    fn hot_key_metrics_show_the_last_window_by_rank() {
        use crate::hotkeys::{Access, HotKeys, HotKeysConfig};
        let metrics = Metrics::new();
        let hot = HotKeys::new(HotKeysConfig {
            enabled: true,
            capacity: 16,
            window: Duration::from_secs(10),
            sample: 1,
            threshold: 2,
        });
        for _ in 0..30 {
            hot.record(b"heavy", Access::Read);
        }
        for _ in 0..10 {
            hot.record(b"light", Access::Write);
        }
        hot.rotate();
        metrics.set_hot_keys(&hot);
        let text = metrics.render(&StoreStats::default(), 1024, Duration::from_secs(1));
        for needle in [
            r#"ringcache_hot_key_requests_per_second{rank="1"} 3"#,
            r#"ringcache_hot_key_requests_per_second{rank="2"} 1"#,
            r#"ringcache_hot_key_requests_per_second{rank="10"} 0"#,
            "ringcache_hot_keys_top_share 1",
            "ringcache_hot_keys_marked 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("heavy"), "no key names in metrics");
    }

    #[test]
    fn render_names_every_metric_with_labels() {
        let metrics = Metrics::new();
        metrics.record(Op::Get, Outcome::Miss, Duration::from_micros(30));
        metrics.record(Op::Set, Outcome::Ok, Duration::from_micros(80));
        let stats = StoreStats {
            keys: 3,
            used_bytes: 300,
            hits: 5,
            misses: 1,
            evictions: 2,
            expirations: 4,
            tombstones_evicted: 6,
        };
        let text = metrics.render(&stats, 1024, Duration::from_secs(7));
        for needle in [
            r#"ringcache_requests_total{op="get",result="miss"} 1"#,
            r#"ringcache_requests_total{op="set",result="ok"} 1"#,
            r#"ringcache_request_duration_seconds_bucket{op="get",le="0.00005"} 1"#,
            "ringcache_keys 3",
            "ringcache_memory_used_bytes 300",
            "ringcache_memory_max_bytes 1024",
            "ringcache_evictions_total 2",
            "ringcache_expirations_total 4",
            "ringcache_tombstones_evicted_total 6",
            "ringcache_hits_total 5",
            "# HELP ringcache_requests_total",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn connection_metrics_are_exported() {
        let metrics = Metrics::new();
        let text = metrics.render(&StoreStats::default(), 1024, Duration::ZERO);
        for needle in [
            "ringcache_connections 0",
            "ringcache_connections_rejected_total 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        metrics.set_connections(3, 10, 2);
        let text = metrics.render(&StoreStats::default(), 1024, Duration::ZERO);
        for needle in [
            "ringcache_connections 3",
            "ringcache_connections_max 10",
            "ringcache_connections_rejected_total 2",
            "# HELP ringcache_connections_rejected_total",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn gossip_security_metrics_are_exported_from_the_start() {
        let metrics = Metrics::new();
        let text = metrics.render(&StoreStats::default(), 1024, Duration::ZERO);
        for reason in DropReason::LABELS {
            let needle =
                format!(r#"ringcache_gossip_dropped_packets_total{{reason="{reason}"}} 0"#);
            assert!(text.contains(&needle), "{needle} missing from:\n{text}");
        }
        let mut gossip = GossipStatsSnapshot {
            keyring_keys: 2,
            keyring_primary_id: 0xdead_beef,
            ..GossipStatsSnapshot::default()
        };
        gossip.dropped[DropReason::LABELS
            .iter()
            .position(|r| *r == "unknown_key")
            .unwrap()] = 3;
        metrics.set_cluster(Some(&gossip), 1);
        metrics.record_secrets_reload(false);
        let text = metrics.render(&StoreStats::default(), 1024, Duration::ZERO);
        for needle in [
            r#"ringcache_gossip_dropped_packets_total{reason="unknown_key"} 3"#,
            "ringcache_gossip_keyring_keys 2",
            "ringcache_gossip_keyring_primary_key_id 3735928559",
            r#"ringcache_secrets_reloads_total{result="ok"} 0"#,
            r#"ringcache_secrets_reloads_total{result="failed"} 1"#,
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn replication_metrics_are_exported_from_the_start() {
        let metrics = Metrics::new();
        metrics.set_hints_pending(3, 300);
        metrics.record_hints_dropped("max_age", 2);
        metrics.record_hints_replayed(4);
        metrics.record_replica_writes(false, 5);
        metrics.record_replication_batch(ReplicaCall::Replicate);
        metrics.record_replication_batch(ReplicaCall::ReadVersions);
        metrics.record_read_repairs(1);
        metrics.set_replication_lag(Duration::from_millis(2500));
        let text = metrics.render(&StoreStats::default(), 1024, Duration::ZERO);
        for needle in [
            "ringcache_hints_pending 3",
            "ringcache_hints_pending_bytes 300",
            r#"ringcache_hints_dropped_total{reason="max_age"} 2"#,
            r#"ringcache_hints_dropped_total{reason="max_bytes"} 0"#,
            "ringcache_hints_replayed_total 4",
            r#"ringcache_replica_writes_total{result="ok"} 0"#,
            r#"ringcache_replica_writes_total{result="failed"} 5"#,
            r#"ringcache_replication_batches_total{kind="replicate"} 1"#,
            r#"ringcache_replication_batches_total{kind="read_versions"} 1"#,
            "ringcache_read_repairs_total 1",
            "ringcache_replication_lag_seconds 2.5",
            r#"ringcache_versions_refused_total{source="replicate"} 0"#,
            r#"ringcache_versions_refused_total{source="read_versions"} 0"#,
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn refused_versions_are_counted_by_source_and_logged_at_a_bounded_rate() {
        let metrics = Metrics::new();
        let drift = ClockDrift {
            ahead_ms: 86_400_000,
            max_drift_ms: 60_000,
        };
        for _ in 0..3 {
            metrics.record_versions_refused(VersionSource::Replicate, "n2", 2, drift);
        }
        metrics.record_versions_refused(VersionSource::ReadVersions, "n3", 1, drift);
        metrics.record_versions_refused(VersionSource::Hint, "n3", 0, drift);
        assert_eq!(metrics.versions_refused(VersionSource::Replicate), 6);
        assert_eq!(metrics.versions_refused(VersionSource::ReadVersions), 1);
        assert_eq!(metrics.versions_refused(VersionSource::Hint), 0);
        // The first refusal of each source was logged; the two later ones wait in the count.
        let log = metrics.refused_log.lock();
        assert_eq!(log[VersionSource::Replicate.index()].1, 4);
        assert!(log[VersionSource::Replicate.index()].0.is_some());
        assert_eq!(log[VersionSource::ReadVersions.index()].1, 0);
        assert!(log[VersionSource::Hint.index()].0.is_none());
    }
}
