//! Every setting of a node, declared once.
//!
//! Each entry of the `settings!` list below is the whole of a setting: its doc comment is the
//! help text (`ringcached --help`) and the README's settings table, its `#[arg]` line names the
//! flag and the `RINGCACHE_*` variable (its TOML key is the field name), and after the type come
//! the default (an expression that may use the settings declared above it) and the bounds of
//! its value (`within LO, HI` or `at_least LO`), checked with an error that names the setting.
//! The help ends with `[default: …]`: a test checks that a default written as a value is the
//! default the code applies, and another that README.md's table is the one generated here.
//!
//! Relations between settings (`probe_timeout < probe_interval`, ports that differ, ...) are
//! checked by [`super::Config::validate`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::bail;
use clap::ValueEnum;
use serde::Deserialize;

use ringcache_proto::placement::{DEFAULT_VNODES_PER_WEIGHT, SLOTS};
use ringcache_proto::topology::{MAX_REPLICATION_FACTOR, MAX_VNODES_PER_WEIGHT, MAX_WEIGHT};

use super::{
    DEFAULT_ANTI_ENTROPY_INTERVAL, DEFAULT_CLUSTER_PORT, DEFAULT_CLUSTER_SERVER_NAME,
    DEFAULT_GOSSIP_PORT, DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REBALANCE_YIELD, DEFAULT_RESP_PORT, DEFAULT_RESTART_GRACE,
    DEFAULT_SECRETS_RELOAD_INTERVAL, DEFAULT_SNAPSHOT_RATE, MAX_REBALANCE_YIELD, MAX_RESTART_GRACE,
    MESSAGE_HEADROOM, MIN_RESTART_GRACE,
};
use crate::replication::MAX_REPLICA_STREAM_IN_FLIGHT;
use crate::store::MAX_KEY_LEN;
use crate::{cluster, hotkeys, lease, tracking};

/// How a setting's value is given (a flag, a variable, a TOML value) and what the node keeps.
pub trait Setting: Sized {
    /// The type parsed from a flag or variable and read from the TOML file.
    type Given;
    /// The value the node runs with.
    fn from_given(given: Self::Given) -> Self;
}

macro_rules! given_as_is {
    ($($ty:ty),* $(,)?) => {$(
        impl Setting for $ty {
            type Given = $ty;
            fn from_given(given: $ty) -> $ty {
                given
            }
        }
    )*};
}

given_as_is!(
    u16,
    u32,
    u64,
    usize,
    bool,
    String,
    IpAddr,
    PathBuf,
    NonZeroU32,
    ByteSize,
    ConsistencyArg,
    EvictionPolicyArg,
    ShutdownMode,
    LogFormat,
);

impl Setting for Duration {
    type Given = HumanDuration;
    fn from_given(given: HumanDuration) -> Duration {
        given.0
    }
}

impl Setting for Vec<String> {
    type Given = List;
    fn from_given(given: List) -> Vec<String> {
        given.0
    }
}

impl<T: Setting> Setting for Option<T> {
    type Given = T::Given;
    fn from_given(given: T::Given) -> Option<T> {
        Some(T::from_given(given))
    }
}

/// A value shown in an error about its bounds.
pub trait Shown {
    /// As a user would write it.
    fn shown(&self) -> String;
}

macro_rules! shown_by_display {
    ($($ty:ty),*) => {$(
        impl Shown for $ty {
            fn shown(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

shown_by_display!(u32, u64, usize, NonZeroU32);

impl Shown for Duration {
    fn shown(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

impl Shown for ByteSize {
    fn shown(&self) -> String {
        if self.0 == usize::MAX as u64 {
            return "what this machine can address".to_owned();
        }
        bytesize::ByteSize(self.0).display().iec().to_string()
    }
}

fn check_within<T: PartialOrd + Shown>(
    name: &str,
    value: &T,
    low: &T,
    high: &T,
) -> anyhow::Result<()> {
    if value < low || value > high {
        bail!(
            "{name} must be between {} and {}, got {}",
            low.shown(),
            high.shown(),
            value.shown()
        );
    }
    Ok(())
}

fn check_at_least<T: PartialOrd + Shown>(name: &str, value: &T, low: &T) -> anyhow::Result<()> {
    if value < low {
        bail!(
            "{name} must be at least {}, got {}",
            low.shown(),
            value.shown()
        );
    }
    Ok(())
}

/// `n` as a `NonZeroU32`, for constants (a zero fails the build).
const fn nz(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("zero"),
    }
}

/// Declares the settings: see the module documentation.
macro_rules! settings {
    ($(
        $(#[$meta:meta])*
        $name:ident: $ty:ty = $default:expr
            $(, within $low:expr, $high:expr)?
            $(, at_least $least:expr)?;
    )*) => {
        /// Every setting as given by one source (flags and `RINGCACHE_*` variables, or the TOML
        /// file); `None`: not given there.
        #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $(
                $(#[$meta])*
                pub $name: Option<<$ty as Setting>::Given>,
            )*
        }

        /// Every setting's value: given, or its default; each within its bounds.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Values {
            $(
                #[doc = concat!("`", stringify!($name), "`: see `--help`.")]
                pub $name: $ty,
            )*
        }

        impl Settings {
            /// These settings over `lower`'s: each one given here wins.
            pub fn or(self, lower: Settings) -> Settings {
                Settings { $($name: self.$name.or(lower.$name),)* }
            }

            /// The values, with the default for each setting not given; the error names the
            /// first setting out of its bounds.
            pub fn resolve(self) -> anyhow::Result<Values> {
                $(
                    let $name: $ty = match self.$name {
                        Some(given) => <$ty as Setting>::from_given(given),
                        None => $default,
                    };
                    $(check_within(stringify!($name), &$name, &$low, &$high)?;)?
                    $(check_at_least(stringify!($name), &$name, &$least)?;)?
                )*
                Ok(Values { $($name,)* })
            }
        }

        /// The names of every setting (TOML keys), in declaration order.
        pub const NAMES: &[&str] = &[$(stringify!($name),)*];
    };
}

settings! {
    /// Address every port binds to. [default: 127.0.0.1]
    #[arg(long, env = "RINGCACHE_BIND", value_name = "IP")]
    bind: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// IP peers and clients use to reach this node; required with a wildcard bind (`0.0.0.0`), e.g.
    /// the pod IP. [default: the bind address]
    #[arg(long, env = "RINGCACHE_ADVERTISE_ADDR", value_name = "IP")]
    advertise_addr: Option<IpAddr> = None;

    /// Client gRPC port (Cache, Cluster, Admin, the gRPC health service, reflection v1 and v1alpha;
    /// never node-to-node); 0 = any free port. [default: 7379]
    #[arg(long, env = "RINGCACHE_GRPC_PORT", value_name = "PORT")]
    grpc_port: u16 = DEFAULT_GRPC_PORT;

    /// Gossip port (UDP): membership and failure detection between nodes. [default: 7380]
    #[arg(long, env = "RINGCACHE_GOSSIP_PORT", value_name = "PORT")]
    gossip_port: u16 = DEFAULT_GOSSIP_PORT;

    /// HTTP port of `/metrics`, `/health/live` and `/health/ready`; 0 = any free port. [default:
    /// 7381]
    #[arg(long, env = "RINGCACHE_HTTP_PORT", value_name = "PORT")]
    http_port: u16 = DEFAULT_HTTP_PORT;

    /// Cluster-plane gRPC, node to node only (replication, rebalancing, forwarding); mutual TLS
    /// with `--cluster-ca`; 0 = any free port. [default: 7382]
    #[arg(long, env = "RINGCACHE_CLUSTER_PORT", value_name = "PORT")]
    cluster_port: u16 = DEFAULT_CLUSTER_PORT;

    /// The Redis protocol on the bind address, with the client port's TLS and users (README, "From
    /// any language"); `0` turns it off. [default: 6479]
    #[arg(long, env = "RINGCACHE_RESP_PORT", value_name = "PORT")]
    resp_port: u16 = DEFAULT_RESP_PORT;

    /// Close a RESP connection that has sent nothing this long (Redis's `timeout`). [default: 0
    /// (never)]
    #[arg(long, env = "RINGCACHE_RESP_IDLE_TIMEOUT", value_name = "DURATION")]
    resp_idle_timeout: Duration = Duration::ZERO;

    /// Unique, stable id of the node (at most 256 bytes). [default: 127.0.0.1:7380 (the advertised
    /// address, or the bind address, and the gossip port)]
    #[arg(long, env = "RINGCACHE_NODE_ID", value_name = "ID")]
    node_id: String = SocketAddr::new(advertise_addr.unwrap_or(bind), gossip_port).to_string();

    /// Gossip addresses of nodes to join through; names are resolved again until they resolve and
    /// the node has joined (backoff from one probe interval up to 30), then every 30 probe
    /// intervals, so a seed that moves to a new IP is found there. [default: none]
    #[arg(long, env = "RINGCACHE_SEEDS", value_name = "HOST:PORT,...")]
    seeds: Vec<String> = Vec::new();

    /// Replicas per key in the ring (R, 1..=16). [default: 3]
    #[arg(long, env = "RINGCACHE_REPLICATION_FACTOR", value_name = "R")]
    replication_factor: NonZeroU32 = nz(3), within nz(1), nz(MAX_REPLICATION_FACTOR);

    /// Memory for keys, values and per-entry metadata (min 64KiB). [default: 1GiB]
    #[arg(long, env = "RINGCACHE_MAX_MEMORY", value_name = "SIZE")]
    max_memory: ByteSize = ByteSize(1 << 30),
        within ByteSize(64 << 10), ByteSize(usize::MAX as u64);

    /// `clock` evicts not-recently-used keys; `noeviction` fails writes with `RESOURCE_EXHAUSTED`.
    /// [default: clock]
    #[arg(long, env = "RINGCACHE_EVICTION_POLICY", value_name = "POLICY")]
    eviction_policy: EvictionPolicyArg = EvictionPolicyArg::Clock;

    /// Longest key (1..=65535 bytes). [default: 8KiB]
    #[arg(long, env = "RINGCACHE_MAX_KEY_BYTES", value_name = "SIZE")]
    max_key_bytes: ByteSize = ByteSize(8 << 10), within ByteSize(1), ByteSize(MAX_KEY_LEN as u64);

    /// Longest value. [default: 4MiB]
    #[arg(long, env = "RINGCACHE_MAX_VALUE_BYTES", value_name = "SIZE")]
    max_value_bytes: ByteSize = ByteSize(4 << 20), within ByteSize(0), ByteSize(usize::MAX as u64);

    /// Largest gRPC message accepted or sent; must exceed key + value limits by 1KiB. [default:
    /// 8MiB + 64KiB, or max-key-bytes + max-value-bytes + 64KiB if larger]
    #[arg(long, env = "RINGCACHE_MAX_MESSAGE_BYTES", value_name = "SIZE")]
    max_message_bytes: ByteSize = ByteSize(
        ((8 << 20) + MESSAGE_HEADROOM).max(max_key_bytes.0 + max_value_bytes.0 + MESSAGE_HEADROOM)
    ), within ByteSize(0), ByteSize(usize::MAX as u64);

    /// Most keys in one MGet/MSet/MDelete; on the RESP port also the largest `SCAN` COUNT.
    /// [default: 1000]
    #[arg(long, env = "RINGCACHE_MAX_BATCH_KEYS", value_name = "N")]
    max_batch_keys: usize = 1000, at_least 1;

    /// Longest TTL accepted. [default: 3650d]
    #[arg(long, env = "RINGCACHE_MAX_TTL", value_name = "DURATION")]
    max_ttl: Duration = Duration::from_secs(3650 * 24 * 3600), at_least Duration::from_millis(1);

    /// Store lock stripes (power of two, 1–16384; a shard holds whole hash slots, `slot % shards`).
    /// [default: 64]
    #[arg(long, env = "RINGCACHE_SHARDS", value_name = "N")]
    shards: usize = 64, within 1, usize::from(SLOTS);

    /// Period of background expiry. [default: 100ms]
    #[arg(long, env = "RINGCACHE_EXPIRY_INTERVAL", value_name = "DURATION")]
    expiry_interval: Duration = Duration::from_millis(100), at_least Duration::from_millis(1);

    /// Level for writes that ask for none: `one`, `quorum` (R/2+1), `all`. [default: quorum]
    #[arg(long, env = "RINGCACHE_WRITE_CONSISTENCY", value_name = "LEVEL")]
    write_consistency: ConsistencyArg = ConsistencyArg::Quorum;

    /// Level for reads that ask for none; `quorum`/`all` return the newest copy among the replicas
    /// asked (a majority, or all) and repair the stale ones among them. [default: one]
    #[arg(long, env = "RINGCACHE_READ_CONSISTENCY", value_name = "LEVEL")]
    read_consistency: ConsistencyArg = ConsistencyArg::One;

    /// Longest wait for one replica (replicated write, quorum read, hint replay). [default: 2s]
    #[arg(long, env = "RINGCACHE_REPLICA_TIMEOUT", value_name = "DURATION")]
    replica_timeout: Duration = Duration::from_secs(2), at_least Duration::from_millis(1);

    /// Most replica requests (batches of replicated writes, read repairs and QUORUM/ALL reads)
    /// queued or in flight on the one `Internal.ReplicaStream` a node keeps to each peer; more wait
    /// for a slot (bounded by `--replica-timeout`); at most 256; `0`: no streams, a unary call per
    /// batch. [default: 64]
    #[arg(long, env = "RINGCACHE_REPLICA_STREAM_IN_FLIGHT", value_name = "N")]
    replica_stream_in_flight: usize = 64, within 0, MAX_REPLICA_STREAM_IN_FLIGHT;

    /// Hints kept per unreachable node; the oldest are dropped above it; `0` = no hints. [default:
    /// 64MiB]
    #[arg(long, env = "RINGCACHE_HINT_MAX_BYTES", value_name = "SIZE")]
    hint_max_bytes: ByteSize = ByteSize(64 << 20), within ByteSize(0), ByteSize(usize::MAX as u64);

    /// Hints older than this are dropped; must be shorter than `--tombstone-grace` (when R > 1).
    /// [default: 5m]
    #[arg(long, env = "RINGCACHE_HINT_MAX_AGE", value_name = "DURATION")]
    hint_max_age: Duration = Duration::from_secs(300);

    /// How often each node compares digests of the keys it shares with its next peer in turn (1,024
    /// buckets, 8 KiB when nothing differs) and pulls or pushes what differs, so replicas converge
    /// after lost hints or long partitions without any read; `0s` turns it off; must be shorter
    /// than `--tombstone-grace` (when R > 1). At rest it costs each node about two store scans per
    /// interval (0.26 s per million keys on 3 nodes, BENCHMARKS.md). [default: 2m]
    #[arg(long, env = "RINGCACHE_ANTI_ENTROPY_INTERVAL", value_name = "DURATION")]
    anti_entropy_interval: Duration = DEFAULT_ANTI_ENTROPY_INTERVAL;

    /// Refuse writes (UNAVAILABLE) while fewer active members are visible, so a partitioned
    /// minority accepts none. [default: 0 (off)]
    #[arg(long, env = "RINGCACHE_MIN_CLUSTER_SIZE", value_name = "N")]
    min_cluster_size: usize = 0;

    /// Most open TCP connections on the gRPC port, clients and other nodes together; one more is
    /// closed at once and counted (`ringcache_connections_rejected_total`); `0` = unlimited. Keep
    /// it above clients × pool size + nodes, and below the file-descriptor limit. [default: 10000]
    #[arg(long, env = "RINGCACHE_MAX_CONNECTIONS", value_name = "N")]
    max_connections: usize = DEFAULT_MAX_CONNECTIONS;

    /// Members the cluster should have: fewer live ones make it degraded (`ringctl status`,
    /// `ringcache_cluster_expected_members`, under-replicated slots); 0 learns it: every member
    /// that owned ranges, until it is drained or `ringctl forget`-ten. [default: 0 (learned)]
    #[arg(long, env = "RINGCACHE_EXPECTED_NODES", value_name = "N")]
    expected_nodes: usize = 0;

    /// Largest clock difference tolerated between nodes (1ms..=1d): a version from another node
    /// (replication, rebalancing, quorum reads, hints) stamped further ahead of this node's clock
    /// is refused, never moves its clock, and is counted in
    /// `ringcache_versions_refused_total{source}`. Each node also compares its clock with its
    /// peers' every 10 probe intervals: one further than this from the cluster's (the median of the
    /// members' clocks) refuses writes and reports not ready until its clock is corrected, then
    /// drops what it stamped too far ahead. Keep node clocks synchronised (NTP) well within it.
    /// [default: 60s]
    #[arg(long, env = "RINGCACHE_MAX_CLOCK_DRIFT", value_name = "DURATION")]
    max_clock_drift: Duration = Duration::from_secs(60),
        within Duration::from_millis(1), Duration::from_secs(86400);

    /// How long a delete is remembered so a late replica write cannot revive the key. Only while
    /// another copy can exist: a node alone in a cluster of one (no other member in its view, none
    /// known to have held data) deletes without tombstones. Under memory pressure tombstones are
    /// evicted like values, and the newest evicted version is kept per group of keys (4,096 groups)
    /// so a late older copy of an absent key in that group is refused instead of reviving a deleted
    /// one. [default: 10m]
    #[arg(long, env = "RINGCACHE_TOMBSTONE_GRACE", value_name = "DURATION")]
    tombstone_grace: Duration = Duration::from_secs(600);

    /// Most bytes/s one node sends when data moves after a ring change, its pushes and the joiners'
    /// pulls it serves together (0 = unlimited); an idle node moves at this rate. [default: 64MiB]
    #[arg(long, env = "RINGCACHE_REBALANCE_RATE", value_name = "SIZE")]
    rebalance_rate: ByteSize = ByteSize(64 << 20);

    /// While the node serves requests, data movement halves its rate (10 times a second, down to 1
    /// MiB/s) whenever the node's threads wait longer than this for a CPU (90th percentile of a
    /// probe's 1 ms sleeps) and climbs back by 1/32 of `--rebalance-rate` when they do not, so
    /// requests keep their latency during a join or repair; `0s` = always `--rebalance-rate`; at
    /// most `1s`. [default: 500us]
    #[arg(long, env = "RINGCACHE_REBALANCE_YIELD", value_name = "DURATION")]
    rebalance_yield: Duration = DEFAULT_REBALANCE_YIELD, within Duration::ZERO, MAX_REBALANCE_YIELD;

    /// Longest hand-off at a graceful leave. [default: 5m]
    #[arg(long, env = "RINGCACHE_LEAVE_TIMEOUT", value_name = "DURATION")]
    leave_timeout: Duration = Duration::from_secs(300);

    /// Longest wait for in-flight requests at shutdown. [default: 10s]
    #[arg(long, env = "RINGCACHE_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    shutdown_timeout: Duration = Duration::from_secs(10);

    /// What SIGTERM/SIGINT does: `handoff` hands every key to the other nodes and leaves; `restart`
    /// writes a snapshot to `--data-dir` and stops for a quick restart, keeping the node's ranges
    /// in the cluster for `--restart-grace` (needs `--data-dir`; without one the node hands off).
    /// [default: handoff]
    #[arg(long, env = "RINGCACHE_SHUTDOWN_MODE", value_name = "MODE")]
    shutdown_mode: ShutdownMode = ShutdownMode::Handoff;

    /// How long the other nodes keep the ranges of a node stopped for a restart before they count
    /// it dead and copy its data elsewhere (1s–1h). [default: 60s]
    #[arg(long, env = "RINGCACHE_RESTART_GRACE", value_name = "DURATION")]
    restart_grace: Duration = DEFAULT_RESTART_GRACE, within MIN_RESTART_GRACE, MAX_RESTART_GRACE;

    /// Directory of the node's snapshot file `snapshot.rcs`: the store is written there at a
    /// graceful shutdown and every `--snapshot-interval`, and loaded back at start before the node
    /// serves, so a restarted node comes back warm. Created if missing; a directory that cannot be
    /// created or written stops the start with an error. A snapshot that cannot be loaded (damaged,
    /// another node's, too old) is logged and the node starts empty. See ARCHITECTURE.md,
    /// Snapshots. [default: none (snapshots off)]
    #[arg(long, env = "RINGCACHE_DATA_DIR", value_name = "PATH")]
    data_dir: Option<PathBuf> = None;

    /// Also write a snapshot this often while serving (at least `1s`; needs `--data-dir`); one
    /// write at a time, in the background. [default: none (only at shutdown)]
    #[arg(long, env = "RINGCACHE_SNAPSHOT_INTERVAL", value_name = "DURATION")]
    snapshot_interval: Option<Duration> = None;

    /// Most bytes per second a periodic snapshot writes, so it does not take the disk from the rest
    /// of the host; the snapshot at shutdown is not throttled; `0` = unthrottled. [default: 256MiB]
    #[arg(long, env = "RINGCACHE_SNAPSHOT_RATE", value_name = "SIZE")]
    snapshot_rate: ByteSize = ByteSize(DEFAULT_SNAPSHOT_RATE);

    /// Oldest snapshot loaded at start. An older one may hold keys deleted in the cluster since the
    /// snapshot, whose tombstones the other nodes have dropped by now: loading it would bring them
    /// back, so it is refused and the node starts empty (its replicas refill it). When the whole
    /// cluster restarts (no node holds newer data), raise it for that start. [default:
    /// --tombstone-grace (`10m`)]
    #[arg(long, env = "RINGCACHE_SNAPSHOT_MAX_AGE", value_name = "DURATION")]
    snapshot_max_age: Duration = tombstone_grace;

    /// Track this node's heaviest keys per window (Space-Saving top-k, bounded memory): `ringctl
    /// hotkeys`, `ringcache_hot_key_requests_per_second{rank}`, `ringcache_hot_keys_top_share`; off
    /// costs one branch per request. [default: on]
    #[arg(
        long,
        env = "RINGCACHE_HOT_KEYS",
        value_name = "on|off",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    hot_keys: bool = true;

    /// Most keys counted per window (16..=65536); a key seen more than requests/N times in its
    /// share of the summary is always reported. [default: 256]
    #[arg(long, env = "RINGCACHE_HOT_KEYS_CAPACITY", value_name = "N")]
    hot_keys_capacity: usize = hotkeys::DEFAULT_CAPACITY,
        within hotkeys::MIN_CAPACITY, hotkeys::MAX_CAPACITY;

    /// Length of a hot-key window (1s..=1h); reports show the last complete one. [default: 10s]
    #[arg(long, env = "RINGCACHE_HOT_KEYS_WINDOW", value_name = "DURATION")]
    hot_keys_window: Duration = hotkeys::DEFAULT_WINDOW,
        within hotkeys::MIN_WINDOW, hotkeys::MAX_WINDOW;

    /// Count one request in N (1..=1024), counts scaled back by N. [default: 8]
    #[arg(long, env = "RINGCACHE_HOT_KEYS_SAMPLE", value_name = "N")]
    hot_keys_sample: u32 = hotkeys::DEFAULT_SAMPLE, within 1, hotkeys::MAX_SAMPLE;

    /// A key read at least this often (reads/s in the last hot-key window; a key already hot stays
    /// hot from threshold ÷ replication factor) is answered as hot (`GetResponse.hot`), and clients
    /// spread its ONE reads over its replicas (0..=100000000; 0: never). [default: 1000]
    #[arg(long, env = "RINGCACHE_HOT_KEY_THRESHOLD", value_name = "READS_PER_SEC")]
    hot_key_threshold: u64 = hotkeys::DEFAULT_THRESHOLD, within 0, hotkeys::MAX_THRESHOLD;

    /// Most GetOrLease leases held at once on this node (1..=10000000); one more is refused with
    /// RESOURCE_EXHAUSTED (`lease_max_leases`) after expired leases are swept. The table is not
    /// charged against `--max-memory`: it holds at most N × (`--max-key-bytes` + about 150 bytes),
    /// 80 MiB at the defaults with 8 KiB keys. See README, Stampede protection. [default: 10000]
    #[arg(long, env = "RINGCACHE_LEASE_MAX_LEASES", value_name = "N")]
    lease_max_leases: usize = lease::DEFAULT_MAX_LEASES, within 1, 10_000_000;

    /// Most GetOrLease callers waiting for another caller's lease on this node (1..=1000000); one
    /// more is refused with RESOURCE_EXHAUSTED (`lease_max_waiters`). [default: 10000]
    #[arg(long, env = "RINGCACHE_LEASE_MAX_WAITERS", value_name = "N")]
    lease_max_waiters: usize = lease::DEFAULT_MAX_WAITERS, within 1, 1_000_000;

    /// Longest lease granted (1ms..=1h); a longer request is capped (the reply says the TTL
    /// granted). [default: 60s]
    #[arg(long, env = "RINGCACHE_LEASE_MAX_TTL", value_name = "DURATION")]
    lease_max_ttl: Duration = lease::DEFAULT_MAX_TTL,
        within Duration::from_millis(1), lease::MAX_MAX_TTL;

    /// Longest a GetOrLease waits for another caller's lease (0..=30s; 0: never wait); a longer
    /// request is capped. [default: 3s]
    #[arg(long, env = "RINGCACHE_LEASE_MAX_WAIT", value_name = "DURATION")]
    lease_max_wait: Duration = lease::DEFAULT_MAX_WAIT, within Duration::ZERO, lease::MAX_MAX_WAIT;

    /// Keep expired values this long (0..=24h), readable through GetOrLease / `LEASE.GET` only, as
    /// stale, while one caller refreshes them; plain reads still miss. Expired values stay charged
    /// against `--max-memory` (eviction takes them first). [default: 0 (off)]
    #[arg(long, env = "RINGCACHE_SERVE_STALE", value_name = "DURATION")]
    serve_stale: Duration = Duration::ZERO, within Duration::ZERO, lease::MAX_SERVE_STALE;

    /// Most keys the near-cache tracking table remembers (1..=100000000); when full, some key is
    /// forgotten and its readers are sent its invalidation (as Redis's `tracking-table-max-keys`).
    /// [default: 1000000]
    #[arg(long, env = "RINGCACHE_TRACKING_MAX_KEYS", value_name = "N")]
    tracking_max_keys: usize = tracking::DEFAULT_MAX_KEYS, within 1, tracking::MAX_MAX_KEYS;

    /// Most near-cache invalidation streams (`Cache.Invalidations`) open at once (1..=65536); more
    /// are refused with RESOURCE_EXHAUSTED. [default: 1024]
    #[arg(long, env = "RINGCACHE_TRACKING_MAX_SUBSCRIBERS", value_name = "N")]
    tracking_max_subscribers: usize = tracking::DEFAULT_MAX_SUBSCRIBERS,
        within 1, tracking::MAX_MAX_SUBSCRIBERS;

    /// Most bytes of keys the tracking table remembers, each key charged 64 B more and 8 B per
    /// stream that read it (1MiB..=64GiB); when over, keys are forgotten and their readers told, as
    /// for `--tracking-max-keys`. [default: 256MiB]
    #[arg(long, env = "RINGCACHE_TRACKING_MAX_BYTES", value_name = "SIZE")]
    tracking_max_bytes: ByteSize = ByteSize(tracking::DEFAULT_MAX_BYTES),
        within ByteSize(tracking::MIN_MAX_BYTES), ByteSize(tracking::MAX_MAX_BYTES);

    /// Most bytes of keys queued on one invalidation stream, each key charged 32 B more
    /// (1KiB..=1GiB); past it the node ends the stream with RESOURCE_EXHAUSTED and the client drops
    /// its near cache. [default: 1MiB]
    #[arg(long, env = "RINGCACHE_TRACKING_QUEUE_BYTES", value_name = "SIZE")]
    tracking_queue_bytes: ByteSize = ByteSize(tracking::DEFAULT_QUEUE_BYTES),
        within ByteSize(tracking::MIN_QUEUE_BYTES), ByteSize(tracking::MAX_QUEUE_BYTES);

    /// Share of the ring: the node gets WEIGHT × vnodes virtual nodes (1..=64). [default: 1]
    #[arg(long, env = "RINGCACHE_WEIGHT", value_name = "WEIGHT")]
    weight: NonZeroU32 = NonZeroU32::MIN, within NonZeroU32::MIN, nz(MAX_WEIGHT);

    /// Virtual nodes per unit of weight; same on every node. [default: 256]
    #[arg(long, env = "RINGCACHE_VNODES", value_name = "N")]
    vnodes: NonZeroU32 = nz(DEFAULT_VNODES_PER_WEIGHT),
        within NonZeroU32::MIN, nz(MAX_VNODES_PER_WEIGHT);

    /// The node's zone (failure domain: availability zone, rack): each key's copies go to min(R,
    /// zones) zones (README, Zones). 1–64 bytes of `A-Z a-z 0-9 . _ -`; empty is none. Upgrade
    /// every node before setting zones. [default: none]
    #[arg(long, env = "RINGCACHE_ZONE", value_name = "NAME")]
    zone: Option<String> = None;

    /// Gossip: how often a node probes a random member; stretched by the node's local health
    /// multiplier (see `--local-health-max`). [default: 500ms]
    #[arg(long, env = "RINGCACHE_PROBE_INTERVAL", value_name = "DURATION")]
    probe_interval: Duration = Duration::from_millis(500), at_least Duration::from_millis(1);

    /// Gossip: wait for a direct probe answer before indirect probes; stretched like
    /// `--probe-interval`. [default: 200ms]
    #[arg(long, env = "RINGCACHE_PROBE_TIMEOUT", value_name = "DURATION")]
    probe_timeout: Duration = Duration::from_millis(200), at_least Duration::from_millis(1);

    /// Gossip: time a suspected member has to refute before it is declared dead and leaves the
    /// ring, once two other members (one in a 3-node cluster) confirm the suspicion with probes of
    /// their own; × max(1, log10 members). [default: 1s]
    #[arg(long, env = "RINGCACHE_SUSPICION_TIMEOUT", value_name = "DURATION")]
    suspicion_timeout: Duration = Duration::from_secs(1), at_least Duration::from_millis(1);

    /// Gossip: the same when no other member confirms the suspicion (a lossy link or a slow moment
    /// between two nodes); each confirmation shortens it logarithmically down to
    /// `--suspicion-timeout` (Lifeguard, as memberlist). At least `--suspicion-timeout`. [default:
    /// 6 × `--suspicion-timeout`]
    #[arg(long, env = "RINGCACHE_SUSPICION_MAX_TIMEOUT", value_name = "DURATION")]
    suspicion_max_timeout: Duration = suspicion_timeout * 6;

    /// Gossip: the most a node stretches its own probe interval and timeout (× 1..=N) while its
    /// probes fail or it must refute suspicions about itself, so a starved or badly connected node
    /// slows its own accusations; each probe answered brings it back one step. 1..=32; 1 = off.
    /// [default: 8]
    #[arg(long, env = "RINGCACHE_LOCAL_HEALTH_MAX", value_name = "N")]
    local_health_max: u32 = 8, within 1, cluster::MAX_LOCAL_HEALTH;

    /// `/health/ready`: how long the topology must stay unchanged, with no member suspect, before a
    /// node with peers is ready. [default: 2 × `--probe-interval`]
    #[arg(long, env = "RINGCACHE_READY_SETTLE", value_name = "DURATION")]
    ready_settle: Duration = probe_interval * 2;

    /// Tokio worker threads (1..=1024). Unset: its CPU quota (cgroup v1 or v2, e.g. a container's
    /// CPU limit; rounded down) or its CPU affinity (a cpuset), whichever is lower, at least 1;
    /// `TOKIO_WORKER_THREADS` is ignored. The count is logged at start (`workers` on the
    /// `ringcached serving` line). A pod without a CPU limit has no quota: set it from the CPU
    /// request (the Helm chart does). [default: the CPUs the process may use]
    #[arg(long, env = "RINGCACHE_WORKERS", value_name = "N")]
    workers: Option<usize> = None;

    /// Log lines on stderr (README, Logs); level from `RUST_LOG` (default `info`); text is coloured
    /// only on a terminal and never with `NO_COLOR` set. [default: text]
    #[arg(long, env = "RINGCACHE_LOG_FORMAT", value_name = "FORMAT")]
    log_format: LogFormat = LogFormat::Text;

    /// Gossip key ring: one base64 32-byte key per line, first = primary (encrypts), all decrypt;
    /// gossip is then encrypted and authenticated (AES-256-GCM) and plaintext gossip is dropped.
    /// Re-read on change and on SIGHUP. See SECURITY.md. [default: none (plaintext gossip)]
    #[arg(long, env = "RINGCACHE_GOSSIP_KEYRING", value_name = "FILE")]
    gossip_keyring: Option<PathBuf> = None;

    /// How often secret files (gossip key ring, users file, TLS certificates and keys) are checked
    /// for changes. [default: 10s]
    #[arg(long, env = "RINGCACHE_SECRETS_RELOAD_INTERVAL", value_name = "DURATION")]
    secrets_reload_interval: Duration = DEFAULT_SECRETS_RELOAD_INTERVAL,
        at_least Duration::from_millis(1);

    /// Certificate chain (PEM) of the client port; with `--tls-key` it turns TLS on there (rustls;
    /// reloaded on change and SIGHUP). [default: none (plaintext)]
    #[arg(long, env = "RINGCACHE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf> = None;

    /// Private key (PEM) of `--tls-cert`. [default: none (plaintext)]
    #[arg(long, env = "RINGCACHE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf> = None;

    /// Require client certificates on the client port, signed by this CA. [default: none]
    #[arg(long, env = "RINGCACHE_TLS_CLIENT_CA", value_name = "FILE")]
    tls_client_ca: Option<PathBuf> = None;

    /// The cluster CA: mutual TLS on the cluster port and for calls to peers; only certificates it
    /// signed are members. [default: none (plaintext)]
    #[arg(long, env = "RINGCACHE_CLUSTER_CA", value_name = "FILE")]
    cluster_ca: Option<PathBuf> = None;

    /// This node's certificate (PEM) on the cluster port, as server and as client of its peers;
    /// signed by `--cluster-ca`, with `--cluster-server-name` as a DNS name. [default:
    /// `--tls-cert`]
    #[arg(long, env = "RINGCACHE_CLUSTER_CERT", value_name = "FILE")]
    cluster_cert: Option<PathBuf> = tls_cert.clone();

    /// Private key (PEM) of `--cluster-cert`. [default: `--tls-key`]
    #[arg(long, env = "RINGCACHE_CLUSTER_KEY", value_name = "FILE")]
    cluster_key: Option<PathBuf> = tls_key.clone();

    /// DNS name every cluster certificate carries; peers verify it instead of an IP. [default:
    /// ringcache-cluster]
    #[arg(long, env = "RINGCACHE_CLUSTER_SERVER_NAME", value_name = "NAME")]
    cluster_server_name: String = DEFAULT_CLUSTER_SERVER_NAME.to_owned();

    /// `[[users]]` entries (name, role read/write/admin, secret_sha256); with users (here or as
    /// `[[users]]` in `--config`) every client request must authenticate. Re-read on change and
    /// SIGHUP. [default: none]
    #[arg(long, env = "RINGCACHE_USERS_FILE", value_name = "FILE")]
    users_file: Option<PathBuf> = None;

    /// Allow a non-loopback bind without TLS, users, cluster TLS and a gossip key (otherwise the
    /// node exits 2 naming what is missing); logged as a warning and exported as
    /// `ringcache_insecure`. [default: off]
    #[arg(
        long,
        env = "RINGCACHE_INSECURE",
        value_name = "on|off",
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    insecure: bool = false;

    /// A new connection must finish TLS and the HTTP/2 preface, and with users send an
    /// authenticated request, within this; on the RESP port: TLS and, with users, `AUTH`. [default:
    /// 10s]
    #[arg(long, env = "RINGCACHE_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    handshake_timeout: Duration = Duration::from_secs(10), at_least Duration::from_millis(1);

    /// Client-port and RESP connections not yet authenticated (or, with TLS, not through their
    /// handshake); more are closed at once. [default: 1000]
    #[arg(long, env = "RINGCACHE_MAX_UNAUTHENTICATED_CONNECTIONS", value_name = "N")]
    max_unauthenticated_connections: usize = 1000;

    /// Connections on the cluster port (peers only; clients never count against it). [default:
    /// 1024]
    #[arg(long, env = "RINGCACHE_MAX_CLUSTER_CONNECTIONS", value_name = "N")]
    max_cluster_connections: usize = 1024;

    /// HTTP/2 requests open at once per connection. [default: 1024]
    #[arg(long, env = "RINGCACHE_MAX_CONCURRENT_STREAMS", value_name = "N")]
    max_concurrent_streams: u32 = 1024, at_least 1;

    /// HTTP/2 header list (metadata) per request (1KiB..=1MiB). [default: 16KiB]
    #[arg(long, env = "RINGCACHE_MAX_HEADER_LIST_BYTES", value_name = "SIZE")]
    max_header_list_bytes: ByteSize = ByteSize(16 << 10),
        within ByteSize(1 << 10), ByteSize(1 << 20);

    /// Close a connection (either port) with no request in progress this long; open streams (a
    /// client's pipeline, topology watch) count as in progress, so the client crate's pooled
    /// connections stay; clients redial transparently. [default: 0 (never)]
    #[arg(long, env = "RINGCACHE_IDLE_TIMEOUT", value_name = "DURATION")]
    idle_timeout: Duration = Duration::ZERO;

    /// Failed authentications per address per minute before it is refused unchecked for the rest of
    /// the minute; 0 = no limit. [default: 20]
    #[arg(long, env = "RINGCACHE_MAX_AUTH_FAILURES", value_name = "N")]
    max_auth_failures: u32 = 20;
}

/// Consistency level as written in flags and files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyArg {
    /// One replica.
    One,
    /// A majority of the key's replicas.
    Quorum,
    /// Every replica of the key.
    All,
}

/// What a node does when it is told to stop (a signal, or the shutdown future).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownMode {
    /// Hand every key to the other nodes, then leave the cluster (a drain).
    #[default]
    Handoff,
    /// Write a snapshot to the data directory and stop for a quick restart: the other nodes
    /// keep this node's ranges for the restart grace, and the node reloads its data when it
    /// starts again.
    Restart,
}

/// Eviction policy as written in flags and files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvictionPolicyArg {
    /// Evict entries not used recently.
    Clock,
    /// Refuse writes when memory is full.
    Noeviction,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A byte count written with optional units (`512MiB`, `4 KiB`, `1GB`, `1024`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parsed: bytesize::ByteSize = s.trim().parse().map_err(|e| {
            format!("invalid size {s:?} ({e}); use e.g. 512MiB, 8KiB or a number of bytes")
        })?;
        Ok(Self(parsed.as_u64()))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(Self(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration in humantime syntax (`100ms`, `30s`, `5m`, `10years`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Self)
            .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 100ms, 30s or 5m"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A comma-separated list on the command line (`a:1,b:2`), an array in the TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct List(pub Vec<String>);

impl FromStr for List {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Self(
            s.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(deserializer).map(Self)
    }
}
