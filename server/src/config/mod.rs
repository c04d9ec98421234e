//! The node's configuration: one [`Config`], layered once at start-up as
//! flags > `RINGCACHE_*` environment > TOML file (`--config`) > defaults, then validated.
//!
//! Every setting is declared once, in [`settings`]: flag, variable, TOML key, default, bounds and
//! help text. This module turns the [`Values`] into the [`Config`] the node runs with, and checks
//! the relations between settings.
//!
//! Sizes accept human units (`512MiB`, `8KiB`, `1GB`, or a plain number of bytes) and durations
//! humantime syntax (`100ms`, `30s`, `10years`). No field can be changed while the node runs.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use ringcache_proto::topology::{MAX_NODE_ID_BYTES, MAX_ZONE_BYTES};

use crate::replication::{Consistency, ReplicationConfig};
use crate::store::{EvictionPolicy, StoreConfig};

pub mod reference;
pub mod settings;

pub use settings::{
    ByteSize, ConsistencyArg, EvictionPolicyArg, HumanDuration, List, LogFormat, Settings,
    ShutdownMode, Values,
};

/// Default gRPC port (clients and nodes).
pub const DEFAULT_GRPC_PORT: u16 = 7379;
/// Default gossip port (UDP).
pub const DEFAULT_GOSSIP_PORT: u16 = 7380;
/// Default HTTP port (`/metrics`, `/health/*`).
pub const DEFAULT_HTTP_PORT: u16 = 7381;
/// Default cluster-plane port (gRPC between nodes: `Internal` and forwarded requests).
pub const DEFAULT_CLUSTER_PORT: u16 = 7382;
/// Default RESP (Redis protocol) port: Redis's 6379 + 100, so a node and a local Redis coexist.
pub const DEFAULT_RESP_PORT: u16 = 6479;
/// Default server name every node certificate of the cluster plane carries (a DNS SAN).
pub const DEFAULT_CLUSTER_SERVER_NAME: &str = "ringcache-cluster";

/// `ringcached` command line: the commands that do something else than run a node, `--config`,
/// and every [`Settings`] flag. Each setting can also be set by the environment variable shown,
/// or by the key of the same name (with `_` for `-`) in the `--config` TOML file.
#[derive(Debug, Default, Parser)]
#[command(name = "ringcached", version, about = "A ringcache node: distributed in-memory cache", long_about = None)]
pub struct Cli {
    /// TOML file with any of the settings below as keys (`_` for `-`), and `[[users]]` entries;
    /// flags and environment variables override its values. [default: none]
    #[arg(long, env = "RINGCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Start a local cluster of N nodes instead of one node: child processes on 127.0.0.1 …
    /// 127.0.0.N with the default ports, joined through 127.0.0.1. Other flags apply to every
    /// node.
    #[arg(long, value_name = "N")]
    pub dev_cluster: Option<u8>,
    /// Print a new user's `[[users]]` entry (for the users file) and a fresh 256-bit secret,
    /// then exit; the secret is shown only once. Use with --role.
    #[arg(long, value_name = "NAME")]
    pub gen_user: Option<String>,
    /// The role of --gen-user: read, write or admin. [default: read]
    #[arg(long, value_name = "ROLE", requires = "gen_user")]
    pub role: Option<crate::auth::Role>,
    /// Print a fresh random gossip key (standard base64 of 32 random bytes, for a
    /// --gossip-keyring file) and exit.
    #[arg(long)]
    pub gen_gossip_key: bool,
    /// Every setting.
    #[command(flatten)]
    pub settings: Settings,
}

/// The `--config` TOML file: the settings' keys, and `[[users]]`. Unknown keys are errors.
#[derive(Debug, Default)]
struct FileConfig {
    settings: Settings,
    /// Users listed in the config file itself (not re-read while the node runs).
    users: Vec<crate::auth::UserEntry>,
}

impl From<ConsistencyArg> for Consistency {
    fn from(arg: ConsistencyArg) -> Self {
        match arg {
            ConsistencyArg::One => Self::One,
            ConsistencyArg::Quorum => Self::Quorum,
            ConsistencyArg::All => Self::All,
        }
    }
}

impl From<EvictionPolicyArg> for EvictionPolicy {
    fn from(arg: EvictionPolicyArg) -> Self {
        match arg {
            EvictionPolicyArg::Clock => Self::Clock,
            EvictionPolicyArg::Noeviction => Self::NoEviction,
        }
    }
}

/// Everything a node runs with, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Unique, stable node id.
    pub node_id: String,
    /// Address all ports bind to.
    pub bind: IpAddr,
    /// The IP advertised to peers and clients (`None`: the bind address).
    pub advertise_addr: Option<IpAddr>,
    /// gRPC port (0: any free port).
    pub grpc_port: u16,
    /// Gossip port.
    pub gossip_port: u16,
    /// HTTP port (0: any free port).
    pub http_port: u16,
    /// Cluster-plane port (0: any free port).
    pub cluster_port: u16,
    /// RESP port; 0: no RESP listener.
    pub resp_port: u16,
    /// Close RESP connections that sent nothing for this long (`None`: never).
    pub resp_idle_timeout: Option<Duration>,
    /// Gossip addresses to join through.
    pub seeds: Vec<String>,
    /// Copies of each key.
    pub replication_factor: NonZeroU32,
    /// The local engine's limits.
    pub store: StoreConfig,
    /// Largest gRPC message in either direction, in bytes.
    pub max_message_bytes: usize,
    /// Most keys in one multi-key request.
    pub max_batch_keys: usize,
    /// Period of the background expiry task.
    pub expiry_interval: Duration,
    /// Longest wait for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Tokio worker threads; `None` for one per CPU this process may use
    /// ([`Config::worker_threads`]).
    pub workers: Option<usize>,
    /// Log format.
    pub log_format: LogFormat,
    /// This node's weight (share of virtual nodes).
    pub weight: NonZeroU32,
    /// This node's zone (failure domain); `None` for none.
    pub zone: Option<String>,
    /// Virtual nodes per unit of weight.
    pub vnodes: NonZeroU32,
    /// Gossip probe period.
    pub probe_interval: Duration,
    /// Gossip probe round-trip timeout.
    pub probe_timeout: Duration,
    /// Time from suspicion to death once other members confirm it (the shortest).
    pub suspicion_timeout: Duration,
    /// Time from suspicion to death without confirmations (the longest).
    pub suspicion_max_timeout: Duration,
    /// The largest local health multiplier of the probe interval and timeout (1 = off).
    pub local_health_max: u32,
    /// Consistency defaults, replica timeout, hint limits, minority protection.
    pub replication: ReplicationConfig,
    /// Bytes per second a node sends when rebalancing (0 = unlimited).
    pub rebalance_bytes_per_sec: u64,
    /// Mean CPU wait above which rebalancing slows down while the node serves requests (zero:
    /// never, always `rebalance_bytes_per_sec`).
    pub rebalance_yield: Duration,
    /// Longest hand-off at a graceful leave.
    pub leave_timeout: Duration,
    /// What a signal's shutdown does: hand off and leave, or keep the data for a restart.
    pub shutdown_mode: ShutdownMode,
    /// How long peers keep the ranges of a member stopped for a restart.
    pub restart_grace: Duration,
    /// Most open connections on the gRPC listener; 0 = unlimited.
    pub max_connections: usize,
    /// How long the topology must stay unchanged before a node with peers is ready.
    pub ready_settle: Duration,
    /// How many members the cluster should have; 0: learned (the known members).
    pub expected_nodes: usize,
    /// How often anti-entropy compares this node with each peer; zero: never.
    pub anti_entropy_interval: Duration,
    /// TLS, users, the insecure gate and connection hardening.
    pub security: SecurityConfig,
    /// The gossip key ring file; `None` for plaintext gossip.
    pub gossip_keyring: Option<PathBuf>,
    /// How often secret files are checked for changes.
    pub secrets_reload_interval: Duration,
    /// Snapshots: where, how often, how fast, how old a snapshot may be loaded.
    pub snapshot: SnapshotConfig,
    /// Hot-key tracking ([`crate::hotkeys`]).
    pub hot_keys: crate::hotkeys::HotKeysConfig,
    /// GetOrLease leases and serve-stale ([`crate::lease`]).
    pub leases: crate::lease::LeaseConfig,
    /// Near-cache tracking bounds ([`crate::tracking`]).
    pub tracking: crate::tracking::TrackingConfig,
}

/// Snapshot settings ([`crate::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Directory of the snapshot file; `None`: snapshots off.
    pub data_dir: Option<PathBuf>,
    /// Period of the background snapshot; `None`: only at shutdown.
    pub interval: Option<Duration>,
    /// Bytes per second of a periodic snapshot; 0: unthrottled.
    pub rate_bytes_per_sec: u64,
    /// Oldest snapshot loaded at start.
    pub max_age: Duration,
}

impl SnapshotConfig {
    /// The snapshot file, when snapshots are on.
    pub fn path(&self) -> Option<PathBuf> {
        self.data_dir
            .as_ref()
            .map(|dir| dir.join(crate::snapshot::FILE_NAME))
    }
}

/// Default `snapshot_rate`: 256 MiB per second.
pub const DEFAULT_SNAPSHOT_RATE: u64 = 256 * 1024 * 1024;
/// Shortest `snapshot_interval`.
pub const MIN_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// TLS files of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA (PEM) the other side's certificate must chain to (`None`: not asked for).
    pub ca: Option<PathBuf>,
}

/// Security settings (see SECURITY.md).
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// TLS on the client port (`None`: plaintext).
    pub tls: Option<TlsFiles>,
    /// Mutual TLS on the cluster port and for calls to peers (`None`: plaintext). `ca` is always
    /// set here.
    pub cluster_tls: Option<TlsFiles>,
    /// The DNS name on every node's cluster certificate.
    pub cluster_server_name: String,
    /// The users file, re-read when it changes.
    pub users_file: Option<PathBuf>,
    /// Users from the config file.
    pub users: Vec<crate::auth::UserEntry>,
    /// A non-loopback bind was allowed without TLS or authentication.
    pub insecure: bool,
    /// Deadline for TLS handshake, HTTP/2 preface and first authenticated request.
    pub handshake_timeout: Duration,
    /// Cap on client-port connections not yet authenticated (0 = unlimited).
    pub max_unauthenticated_connections: usize,
    /// Cap on cluster-port connections (0 = unlimited).
    pub max_cluster_connections: usize,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 header list size.
    pub max_header_list_bytes: u32,
    /// Failed authentications per address per minute (0 = no limit).
    pub max_auth_failures: u32,
    /// Close connections with no request in progress for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
}

impl SecurityConfig {
    /// Whether clients must authenticate (users come from the config or a users file).
    pub fn auth_configured(&self) -> bool {
        !self.users.is_empty() || self.users_file.is_some()
    }
}

/// Largest `max_clock_drift` accepted (one day): a larger bound would let a peer move this
/// node's clock, and so the versions of its later writes, arbitrarily far ahead.
pub const MAX_CLOCK_DRIFT_MS: u64 = 24 * 3600 * 1000;

/// Default `secrets_reload_interval`.
pub const DEFAULT_SECRETS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Default `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `anti_entropy_interval`.
pub const DEFAULT_ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(120);
/// Default `rebalance_yield`.
pub const DEFAULT_REBALANCE_YIELD: Duration = Duration::from_micros(500);
/// How long peers keep the ranges of a member stopped for a restart, unless set.
pub const DEFAULT_RESTART_GRACE: Duration = Duration::from_secs(60);
/// Shortest `restart_grace`.
pub const MIN_RESTART_GRACE: Duration = Duration::from_secs(1);
/// Longest `restart_grace`: past it the cluster runs short of copies for too long.
pub const MAX_RESTART_GRACE: Duration = Duration::from_secs(3600);
/// Largest `rebalance_yield`.
pub const MAX_REBALANCE_YIELD: Duration = Duration::from_secs(1);

/// Headroom over key + value for the rest of a gRPC message.
const MESSAGE_HEADROOM: u64 = 64 * 1024;

/// Most tokio worker threads `workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

impl Config {
    /// The tokio worker threads to run, and where the number comes from: `workers` when set,
    /// else the parallelism available to this process (`std::thread::available_parallelism`:
    /// on Linux the CPU quota of its cgroup, v1 or v2, rounded down, and its CPU affinity,
    /// whichever is lower; at least 1), capped at [`MAX_WORKERS`].
    pub fn worker_threads(&self) -> (usize, &'static str) {
        match self.workers {
            Some(workers) => (workers, "workers setting"),
            None => match std::thread::available_parallelism() {
                Ok(cpus) => (cpus.get().min(MAX_WORKERS), "CPU quota and affinity"),
                Err(_) => (1, "CPU count unknown"),
            },
        }
    }

    /// Layers flags, environment (already merged into `cli` by clap), the TOML file and defaults,
    /// then validates.
    pub fn load(cli: Cli) -> anyhow::Result<Self> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::layer(cli, file)
    }

    /// `cli` over `file` over the defaults.
    fn layer(cli: Cli, file: FileConfig) -> anyhow::Result<Self> {
        Self::from_values(cli.settings.or(file.settings).resolve()?, file.users)
    }

    /// The config of these settings (defaults for those not given), validated.
    pub fn from_settings(settings: Settings) -> anyhow::Result<Self> {
        Self::from_values(settings.resolve()?, Vec::new())
    }

    /// Hands each value to the part of the node that uses it, then validates the relations.
    fn from_values(v: Values, users: Vec<crate::auth::UserEntry>) -> anyhow::Result<Self> {
        let bytes = |name: &str, size: ByteSize| {
            usize::try_from(size.0).with_context(|| {
                format!("{name} of {} bytes is too large for this machine", size.0)
            })
        };
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let never_if_zero = |d: Duration| (!d.is_zero()).then_some(d);
        let config = Self {
            node_id: v.node_id,
            bind: v.bind,
            advertise_addr: v.advertise_addr,
            grpc_port: v.grpc_port,
            gossip_port: v.gossip_port,
            http_port: v.http_port,
            cluster_port: v.cluster_port,
            resp_port: v.resp_port,
            resp_idle_timeout: never_if_zero(v.resp_idle_timeout),
            seeds: v.seeds,
            replication_factor: v.replication_factor,
            store: StoreConfig {
                max_memory_bytes: bytes("max_memory", v.max_memory)?,
                eviction: v.eviction_policy.into(),
                max_key_bytes: bytes("max_key_bytes", v.max_key_bytes)?,
                max_value_bytes: bytes("max_value_bytes", v.max_value_bytes)?,
                max_ttl_ms: millis(v.max_ttl),
                shards: v.shards,
                tombstone_grace_ms: millis(v.tombstone_grace),
                max_clock_drift_ms: millis(v.max_clock_drift),
            },
            max_message_bytes: bytes("max_message_bytes", v.max_message_bytes)?,
            max_batch_keys: v.max_batch_keys,
            expiry_interval: v.expiry_interval,
            shutdown_timeout: v.shutdown_timeout,
            workers: v.workers,
            log_format: v.log_format,
            weight: v.weight,
            // Empty is none: what the downward API gives a pod without the zone label.
            zone: v.zone.filter(|zone| !zone.is_empty()),
            vnodes: v.vnodes,
            probe_interval: v.probe_interval,
            probe_timeout: v.probe_timeout,
            suspicion_timeout: v.suspicion_timeout,
            suspicion_max_timeout: v.suspicion_max_timeout,
            local_health_max: v.local_health_max,
            replication: ReplicationConfig {
                write_consistency: v.write_consistency.into(),
                read_consistency: v.read_consistency.into(),
                replica_timeout: v.replica_timeout,
                replica_stream_in_flight: v.replica_stream_in_flight,
                hint_max_bytes_per_node: bytes("hint_max_bytes", v.hint_max_bytes)?,
                hint_max_age: v.hint_max_age,
                min_cluster_size: v.min_cluster_size,
            },
            rebalance_bytes_per_sec: v.rebalance_rate.0,
            rebalance_yield: v.rebalance_yield,
            leave_timeout: v.leave_timeout,
            shutdown_mode: v.shutdown_mode,
            restart_grace: v.restart_grace,
            max_connections: v.max_connections,
            ready_settle: v.ready_settle,
            expected_nodes: v.expected_nodes,
            anti_entropy_interval: v.anti_entropy_interval,
            security: SecurityConfig {
                tls: tls_files(v.tls_cert, v.tls_key, v.tls_client_ca)?,
                cluster_tls: cluster_tls_files(v.cluster_ca, v.cluster_cert, v.cluster_key)?,
                cluster_server_name: v.cluster_server_name,
                users_file: v.users_file,
                users,
                insecure: v.insecure,
                handshake_timeout: v.handshake_timeout,
                max_unauthenticated_connections: v.max_unauthenticated_connections,
                max_cluster_connections: v.max_cluster_connections,
                max_concurrent_streams: v.max_concurrent_streams,
                // Bounded to 1 MiB by its declaration.
                max_header_list_bytes: u32::try_from(v.max_header_list_bytes.0).unwrap_or(u32::MAX),
                max_auth_failures: v.max_auth_failures,
                idle_timeout: never_if_zero(v.idle_timeout),
            },
            gossip_keyring: v.gossip_keyring,
            secrets_reload_interval: v.secrets_reload_interval,
            snapshot: SnapshotConfig {
                data_dir: v.data_dir,
                interval: v.snapshot_interval,
                rate_bytes_per_sec: v.snapshot_rate.0,
                max_age: v.snapshot_max_age,
            },
            hot_keys: crate::hotkeys::HotKeysConfig {
                enabled: v.hot_keys,
                capacity: v.hot_keys_capacity,
                window: v.hot_keys_window,
                sample: v.hot_keys_sample,
                threshold: v.hot_key_threshold,
            },
            leases: crate::lease::LeaseConfig {
                max_leases: v.lease_max_leases,
                max_waiters: v.lease_max_waiters,
                max_ttl: v.lease_max_ttl,
                max_wait: v.lease_max_wait,
                serve_stale: v.serve_stale,
            },
            tracking: crate::tracking::TrackingConfig {
                max_keys: v.tracking_max_keys,
                max_bytes: v.tracking_max_bytes.0,
                max_subscribers: v.tracking_max_subscribers,
                queue_bytes: v.tracking_queue_bytes.0,
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations between settings (each setting's own bounds are checked where it is
    /// declared, in [`settings`]); the error names the offending key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.node_id.trim().is_empty() {
            bail!("node_id must not be empty");
        }
        if self.node_id.len() > MAX_NODE_ID_BYTES {
            bail!(
                "node_id must be at most {MAX_NODE_ID_BYTES} bytes, got {}",
                self.node_id.len()
            );
        }
        let item = self.store.max_key_bytes + self.store.max_value_bytes;
        if self.max_message_bytes < item + 1024 {
            bail!(
                "max_message_bytes ({}) must exceed max_key_bytes + max_value_bytes ({item}) by at least 1KiB",
                self.max_message_bytes
            );
        }
        if self.bind.is_unspecified() && self.advertise_addr.is_none_or(|ip| ip.is_unspecified()) {
            bail!(
                "bind {} listens on every interface but is no address others can reach: set advertise_addr (--advertise-addr) to this node's IP",
                self.bind
            );
        }
        if self.suspicion_max_timeout < self.suspicion_timeout {
            bail!(
                "suspicion_max_timeout ({:?}) must be at least suspicion_timeout ({:?})",
                self.suspicion_max_timeout,
                self.suspicion_timeout
            );
        }
        if self.probe_timeout >= self.probe_interval {
            bail!(
                "probe_timeout ({:?}) must be shorter than probe_interval ({:?})",
                self.probe_timeout,
                self.probe_interval
            );
        }
        if let Some(zone) = &self.zone
            && ringcache_proto::topology::check_zone(zone).is_err()
        {
            bail!(
                "zone must be 1 to {MAX_ZONE_BYTES} bytes of letters, digits, '.', '_' and '-', got {:?}",
                zone.chars().take(MAX_ZONE_BYTES + 8).collect::<String>()
            );
        }
        if let Some(workers) = self.workers
            && !(1..=MAX_WORKERS).contains(&workers)
        {
            bail!("workers must be between 1 and {MAX_WORKERS}, got {workers}");
        }
        let grace = Duration::from_millis(self.store.tombstone_grace_ms);
        if self.replication_factor.get() > 1 && self.replication.hint_max_age >= grace {
            bail!(
                "hint_max_age ({:?}) must be shorter than tombstone_grace ({grace:?}), or a replayed \
                 hint could bring back a key deleted after it",
                self.replication.hint_max_age
            );
        }
        if self.replication_factor.get() > 1 && self.anti_entropy_interval >= grace {
            bail!(
                "anti_entropy_interval ({:?}) must be shorter than tombstone_grace ({grace:?}), or \
                 a replica that missed a delete could get the old value back once the tombstones \
                 are gone",
                self.anti_entropy_interval
            );
        }
        self.validate_security()?;
        self.validate_snapshot()?;
        let ports = [
            ("grpc_port", self.grpc_port),
            ("gossip_port", self.gossip_port),
            ("http_port", self.http_port),
            ("cluster_port", self.cluster_port),
            ("resp_port", self.resp_port),
        ];
        for (i, (name_a, a)) in ports.iter().enumerate() {
            for (name_b, b) in &ports[i + 1..] {
                if *a != 0 && a == b {
                    bail!("{name_a} and {name_b} are both {a}; each port must differ");
                }
            }
        }
        Ok(())
    }

    /// Checks the cluster server name and the users of the config file.
    fn validate_security(&self) -> anyhow::Result<()> {
        let name = &self.security.cluster_server_name;
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            bail!("cluster_server_name {name:?} is not a valid DNS name");
        }
        crate::auth::Users::from_entries(&self.security.users)
            .context("users in the config file")?;
        Ok(())
    }

    /// Checks the snapshot settings; with a data directory, creates it if missing and checks
    /// that a file can be written there (the error says which and why).
    fn validate_snapshot(&self) -> anyhow::Result<()> {
        let snapshot = &self.snapshot;
        let Some(dir) = &snapshot.data_dir else {
            if snapshot.interval.is_some() {
                bail!("snapshot_interval needs data_dir (--data-dir): where to write snapshots");
            }
            return Ok(());
        };
        if let Some(interval) = snapshot.interval.filter(|i| *i < MIN_SNAPSHOT_INTERVAL) {
            bail!("snapshot_interval must be at least 1s, got {interval:?}");
        }
        if snapshot.max_age.is_zero() {
            bail!(
                "snapshot_max_age must be greater than zero (its default is tombstone_grace, \
                 which is 0 here): set --snapshot-max-age"
            );
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("data_dir {} cannot be created", dir.display()))?;
        if !dir.is_dir() {
            bail!("data_dir {} is not a directory", dir.display());
        }
        let probe = dir.join(format!(".ringcache-write-check.{}", std::process::id()));
        std::fs::write(&probe, b"ringcache")
            .and_then(|()| std::fs::remove_file(&probe))
            .with_context(|| format!("data_dir {} is not writable", dir.display()))?;
        Ok(())
    }

    /// A config for tests: loopback, free ports (0), small memory, fast failure detection
    /// (100 ms probes, 400 ms suspicion), defaults otherwise.
    pub fn for_test() -> Self {
        Self::from_settings(Settings {
            grpc_port: Some(0),
            http_port: Some(0),
            cluster_port: Some(0),
            // Off: tests bind their own RESP listener on a free port (TestNode).
            resp_port: Some(0),
            max_memory: Some(ByteSize(64 * 1024 * 1024)),
            gossip_port: Some(0),
            shards: Some(8),
            node_id: Some("test-node".to_owned()),
            probe_interval: Some(HumanDuration(Duration::from_millis(100))),
            probe_timeout: Some(HumanDuration(Duration::from_millis(50))),
            suspicion_timeout: Some(HumanDuration(Duration::from_millis(400))),
            ..Settings::default()
        })
        .expect("the test config is valid")
    }

    /// Where the gRPC listener binds.
    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.grpc_port)
    }

    /// The address peers and clients should use for a socket bound at `bound`.
    pub fn advertised(&self, bound: SocketAddr) -> SocketAddr {
        SocketAddr::new(self.advertise_addr.unwrap_or(bound.ip()), bound.port())
    }

    /// Where the HTTP listener binds.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.http_port)
    }

    /// Where the cluster-plane listener binds.
    pub fn cluster_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.cluster_port)
    }

    /// Where the RESP listener binds, when it is on.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        (self.resp_port != 0).then(|| SocketAddr::new(self.bind, self.resp_port))
    }

    /// The secure-defaults gate: a node bound to a non-loopback address needs TLS on both
    /// planes, users and a gossip key, unless `insecure` says otherwise. `Err` names what is
    /// missing, in one line.
    pub fn check_secure_bind(&self) -> Result<(), String> {
        if self.bind.is_loopback() || self.security.insecure {
            return Ok(());
        }
        let missing = self.missing_protections();
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "refusing to serve on non-loopback address {} without {}; configure them (see SECURITY.md) or pass --insecure on a trusted network",
            self.bind,
            missing.join(", ")
        ))
    }

    /// The protections a node off loopback needs and this config lacks (empty: none missing).
    pub fn missing_protections(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.security.tls.is_none() {
            missing.push("TLS (--tls-cert/--tls-key)");
        }
        if !self.security.auth_configured() {
            missing.push("users (--users-file)");
        }
        if self.security.cluster_tls.is_none() {
            missing.push("cluster TLS (--cluster-ca)");
        }
        if self.gossip_keyring.is_none() {
            missing.push("a gossip key (--gossip-keyring)");
        }
        missing
    }
}

/// The client port's TLS files: a certificate and its key, and optionally a client CA.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> anyhow::Result<Option<TlsFiles>> {
    Ok(match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            ca: client_ca,
        }),
        (None, None) if client_ca.is_none() => None,
        (None, None) => bail!("tls_client_ca needs tls_cert and tls_key"),
        (Some(_), None) => bail!("tls_cert needs tls_key"),
        (None, Some(_)) => bail!("tls_key needs tls_cert"),
    })
}

/// The cluster port's mutual TLS files: on when the cluster CA is set, which then needs this
/// node's certificate and key (by default the client port's).
fn cluster_tls_files(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<TlsFiles>> {
    Ok(match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            ca: Some(ca),
        }),
        (Some(_), _, _) => bail!(
            "cluster_ca needs this node's certificate: set cluster_cert and cluster_key (or tls_cert and tls_key)"
        ),
        (None, _, _) => None,
    })
}

/// Reads the `--config` file: `[[users]]`, and every other key a setting (unknown keys are
/// errors that name the key).
fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_file(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn parse_file(text: &str) -> anyhow::Result<FileConfig> {
    let mut table: toml::Table = toml::from_str(text)?;
    let users = match table.remove("users") {
        Some(users) => users.try_into().context("[[users]]")?,
        None => Vec::new(),
    };
    Ok(FileConfig {
        settings: table.try_into()?,
        users,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("ringcached").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_start_a_loopback_node_on_the_standard_ports() {
        let config = Config::layer(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(config.grpc_addr().to_string(), "127.0.0.1:7379");
        assert_eq!(config.http_addr().to_string(), "127.0.0.1:7381");
        assert_eq!(config.gossip_port, 7380);
        assert_eq!(config.node_id, "127.0.0.1:7380");
        assert_eq!(config.store.max_key_bytes, 8 * 1024);
        assert_eq!(config.store.max_value_bytes, 4 * 1024 * 1024);
        assert_eq!(config.store.max_memory_bytes, 1 << 30);
        assert_eq!(config.replication_factor.get(), 3);
        assert!(
            config.max_message_bytes > config.store.max_value_bytes + config.store.max_key_bytes
        );
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file: FileConfig = parse_file(
            r#"
            bind = "127.0.0.2"
            grpc_port = 9000
            http_port = 9001
            max_memory = "256MiB"
            max_value_bytes = 1024
            eviction_policy = "noeviction"
            expiry_interval = "250ms"
            seeds = ["127.0.0.3:7380"]
            "#,
        )
        .unwrap();
        let cli = parse(&[
            "--grpc-port",
            "9100",
            "--max-memory",
            "2GiB",
            "--seeds",
            "a:1,b:2",
        ]);
        let config = Config::layer(cli, file).unwrap();
        assert_eq!(config.grpc_port, 9100, "flag wins");
        assert_eq!(config.http_port, 9001, "file wins over default");
        assert_eq!(config.bind.to_string(), "127.0.0.2");
        assert_eq!(config.node_id, "127.0.0.2:7380");
        assert_eq!(config.store.max_memory_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(config.store.max_value_bytes, 1024);
        assert_eq!(config.store.eviction, EvictionPolicy::NoEviction);
        assert_eq!(config.expiry_interval, Duration::from_millis(250));
        assert_eq!(config.seeds, ["a:1", "b:2"]);
    }

    #[test]
    fn the_zone_is_a_flag_an_env_var_or_a_file_key_and_is_checked() {
        use clap::CommandFactory;
        let none = Config::layer(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(none.zone, None, "no zone by default");
        let file: FileConfig = parse_file(r#"zone = "eu-west-1a""#).unwrap();
        assert_eq!(
            Config::layer(Cli::default(), file).unwrap().zone.as_deref(),
            Some("eu-west-1a")
        );
        let file: FileConfig = parse_file(r#"zone = "eu-west-1a""#).unwrap();
        let flag = Config::layer(parse(&["--zone", "rack_2.b"]), file).unwrap();
        assert_eq!(flag.zone.as_deref(), Some("rack_2.b"), "the flag wins");
        let env = Cli::command()
            .get_arguments()
            .find(|arg| arg.get_id() == "zone")
            .and_then(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned());
        assert_eq!(env.as_deref(), Some("RINGCACHE_ZONE"));
        let longest = "z".repeat(MAX_ZONE_BYTES);
        assert!(Config::layer(parse(&["--zone", &longest]), FileConfig::default()).is_ok());
        // Empty is none (a pod without the zone label gets an empty RINGCACHE_ZONE).
        let empty = Config::layer(parse(&["--zone", ""]), FileConfig::default()).unwrap();
        assert_eq!(empty.zone, None);
        for bad in [
            "eu west",
            "a/b",
            "zoné",
            " ",
            &"z".repeat(MAX_ZONE_BYTES + 1),
        ] {
            let error = Config::layer(parse(&["--zone", bad]), FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("zone must be 1 to 64 bytes of letters, digits"),
                "{bad:?}: {error}"
            );
        }
        // The placement version it advertises.
        assert_eq!(crate::node::cluster_settings(&none).placement_version, 2);
        assert_eq!(crate::node::cluster_settings(&flag).placement_version, 3);
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        let err = |cli: Cli| {
            Config::layer(cli, FileConfig::default())
                .unwrap_err()
                .to_string()
        };
        assert!(err(parse(&["--max-memory", "1KiB"])).contains("max_memory"));
        assert!(err(parse(&["--max-batch-keys", "0"])).contains("max_batch_keys"));
        assert!(err(parse(&["--max-key-bytes", "0"])).contains("max_key_bytes"));
        assert!(err(parse(&["--max-key-bytes", "64KiB"])).contains("max_key_bytes"));
        assert!(err(parse(&["--grpc-port", "7381"])).contains("grpc_port and http_port"));
        assert!(err(parse(&["--replication-factor", "17"])).contains("replication_factor"));
        assert!(err(parse(&["--weight", "65"])).contains("weight"));
        assert!(err(parse(&["--vnodes", "4097"])).contains("vnodes"));
        assert!(err(parse(&["--node-id", &"n".repeat(257)])).contains("node_id"));
        assert!(
            err(parse(&[
                "--max-value-bytes",
                "16MiB",
                "--max-message-bytes",
                "16MiB"
            ]))
            .contains("max_message_bytes")
        );
        assert!(Cli::try_parse_from(["ringcached", "--max-memory", "lots"]).is_err());
        assert!(Cli::try_parse_from(["ringcached", "--eviction-policy", "lru"]).is_err());
        assert!(
            parse_file("max_memroy = 5").is_err(),
            "typos in files are errors"
        );
    }

    #[test]
    fn replication_settings_layer_and_validate() {
        let defaults = Config::layer(Cli::default(), FileConfig::default()).unwrap();
        let replication = &defaults.replication;
        assert_eq!(replication.write_consistency, Consistency::Quorum);
        assert_eq!(replication.read_consistency, Consistency::One);
        assert_eq!(replication.replica_timeout, Duration::from_secs(2));
        assert_eq!(replication.hint_max_bytes_per_node, 64 * 1024 * 1024);
        assert_eq!(replication.hint_max_age, Duration::from_secs(300));
        assert_eq!(replication.min_cluster_size, 0);
        assert_eq!(replication.replica_stream_in_flight, 64);

        let file: FileConfig = parse_file(
            r#"
            write_consistency = "all"
            read_consistency = "quorum"
            hint_max_bytes = "1MiB"
            min_cluster_size = 2
            replica_stream_in_flight = 8
            "#,
        )
        .unwrap();
        let cli = parse(&[
            "--write-consistency",
            "one",
            "--replica-timeout",
            "250ms",
            "--hint-max-age",
            "1m",
        ]);
        let config = Config::layer(cli, file).unwrap();
        let replication = &config.replication;
        assert_eq!(replication.write_consistency, Consistency::One, "flag wins");
        assert_eq!(replication.read_consistency, Consistency::Quorum);
        assert_eq!(replication.replica_timeout, Duration::from_millis(250));
        assert_eq!(replication.hint_max_bytes_per_node, 1024 * 1024);
        assert_eq!(replication.hint_max_age, Duration::from_secs(60));
        assert_eq!(replication.min_cluster_size, 2);
        assert_eq!(replication.replica_stream_in_flight, 8);
        let off = Config::layer(
            parse(&["--replica-stream-in-flight", "0"]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(
            off.replication.replica_stream_in_flight, 0,
            "0: unary calls"
        );

        let err = |cli: Cli| {
            Config::layer(cli, FileConfig::default())
                .unwrap_err()
                .to_string()
        };
        assert!(err(parse(&["--hint-max-age", "10m"])).contains("hint_max_age"));
        assert!(
            err(parse(&["--tombstone-grace", "1m", "--hint-max-age", "2m"]))
                .contains("tombstone_grace")
        );
        assert!(err(parse(&["--replica-timeout", "0s"])).contains("replica_timeout"));
        assert!(
            err(parse(&["--replica-stream-in-flight", "257"])).contains("replica_stream_in_flight")
        );
        assert!(Cli::try_parse_from(["ringcached", "--write-consistency", "two"]).is_err());
        assert_eq!(
            Config::layer(Cli::default(), FileConfig::default())
                .unwrap()
                .anti_entropy_interval,
            DEFAULT_ANTI_ENTROPY_INTERVAL
        );
        let file: FileConfig = parse_file(r#"anti_entropy_interval = "30s""#).unwrap();
        assert_eq!(
            Config::layer(Cli::default(), file)
                .unwrap()
                .anti_entropy_interval,
            Duration::from_secs(30)
        );
        let off = Config::layer(
            parse(&["--anti-entropy-interval", "0s"]),
            FileConfig::default(),
        );
        assert_eq!(off.unwrap().anti_entropy_interval, Duration::ZERO);
        assert!(
            err(parse(&["--anti-entropy-interval", "10m"])).contains("anti_entropy_interval"),
            "not shorter than the default tombstone grace (10m)"
        );
        // A lone copy has no hints to replay, so any grace goes.
        Config::layer(
            parse(&["--replication-factor", "1", "--tombstone-grace", "0s"]),
            FileConfig::default(),
        )
        .unwrap();
    }

    #[test]
    fn the_resp_port_defaults_to_6479_and_goes_with_users_and_tls() {
        let defaults = Config::layer(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(
            defaults.resp_addr(),
            Some("127.0.0.1:6479".parse().unwrap())
        );
        assert_eq!(defaults.resp_idle_timeout, None, "Redis's timeout 0: never");
        let off = Config::layer(parse(&["--resp-port", "0"]), FileConfig::default()).unwrap();
        assert_eq!((off.resp_port, off.resp_addr()), (0, None));
        let file: FileConfig = parse_file("resp_port = 6380\nresp_idle_timeout = \"5m\"").unwrap();
        let from_file = Config::layer(Cli::default(), file).unwrap();
        assert_eq!(from_file.resp_port, 6380);
        assert_eq!(from_file.resp_idle_timeout, Some(Duration::from_secs(300)));
        let zero =
            Config::layer(parse(&["--resp-idle-timeout", "0s"]), FileConfig::default()).unwrap();
        assert_eq!(zero.resp_idle_timeout, None);
        // Users and TLS now cover the RESP port (AUTH, TLS): no longer refused together.
        let with_users = Config::layer(
            parse(&[
                "--resp-port",
                "6479",
                "--users-file",
                "/nonexistent/users.toml",
            ]),
            FileConfig::default(),
        )
        .unwrap();
        assert!(with_users.security.auth_configured());
        let clash = Config::layer(parse(&["--resp-port", "7379"]), FileConfig::default());
        assert!(clash.unwrap_err().to_string().contains("resp_port"));
        assert_eq!(Config::for_test().resp_port, 0, "tests bind their own");
    }

    #[test]
    fn failure_detection_settings_layer_with_their_defaults_and_are_checked() {
        let defaults = Config::layer(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(defaults.probe_interval, Duration::from_millis(500));
        assert_eq!(defaults.probe_timeout, Duration::from_millis(200));
        assert_eq!(defaults.suspicion_timeout, Duration::from_secs(1));
        assert_eq!(defaults.suspicion_max_timeout, Duration::from_secs(6));
        assert_eq!(defaults.local_health_max, 8);
        // The longest suspicion follows the shortest, wherever that comes from.
        let file: FileConfig = parse_file(
            r#"
            suspicion_timeout = "2s"
            local_health_max = 4
            "#,
        )
        .unwrap();
        let config = Config::layer(Cli::default(), file).unwrap();
        assert_eq!(config.suspicion_max_timeout, Duration::from_secs(12));
        assert_eq!(config.local_health_max, 4);
        let config = Config::layer(
            parse(&["--suspicion-max-timeout", "3s", "--local-health-max", "1"]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(config.suspicion_max_timeout, Duration::from_secs(3));
        assert_eq!(config.local_health_max, 1);
        let shorter = Config::layer(
            parse(&["--suspicion-timeout", "2s", "--suspicion-max-timeout", "1s"]),
            FileConfig::default(),
        );
        assert!(
            shorter
                .unwrap_err()
                .to_string()
                .contains("suspicion_max_timeout")
        );
        for bad in ["0", "33"] {
            let refused = Config::layer(parse(&["--local-health-max", bad]), FileConfig::default());
            assert!(
                refused
                    .unwrap_err()
                    .to_string()
                    .contains("local_health_max")
            );
        }
    }

    #[test]
    fn rebalance_yield_layers_with_its_default_and_is_bounded() {
        let defaults = Config::layer(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(defaults.rebalance_yield, DEFAULT_REBALANCE_YIELD);
        let file: FileConfig = parse_file(r#"rebalance_yield = "2ms""#).unwrap();
        let config = Config::layer(Cli::default(), file).unwrap();
        assert_eq!(config.rebalance_yield, Duration::from_millis(2));
        let file: FileConfig = parse_file(r#"rebalance_yield = "2ms""#).unwrap();
        let config = Config::layer(parse(&["--rebalance-yield", "0s"]), file).unwrap();
        assert_eq!(
            config.rebalance_yield,
            Duration::ZERO,
            "the flag wins; 0 = off"
        );
        let too_long = Config::layer(parse(&["--rebalance-yield", "2s"]), FileConfig::default());
        assert!(
            too_long
                .unwrap_err()
                .to_string()
                .contains("rebalance_yield")
        );
    }

    #[test]
    fn connection_cap_and_ready_settle_layer_with_their_defaults() {
        let defaults = Config::layer(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(defaults.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            defaults.ready_settle,
            Duration::from_secs(1),
            "2 × probe_interval"
        );
        // The settle default follows the probe interval, wherever that comes from.
        let file: FileConfig = parse_file(
            r#"
            probe_interval = "3s"
            max_connections = 0
            "#,
        )
        .unwrap();
        let config = Config::layer(Cli::default(), file).unwrap();
        assert_eq!(config.ready_settle, Duration::from_secs(6));
        assert_eq!(config.max_connections, 0, "0 = unlimited");
        let config = Config::layer(
            parse(&["--ready-settle", "5s", "--max-connections", "64"]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(config.ready_settle, Duration::from_secs(5));
        assert_eq!(config.max_connections, 64);
    }

    #[test]
    fn max_clock_drift_layers_and_is_bounded() {
        let defaults = Config::layer(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(defaults.store.max_clock_drift_ms, 60_000);
        let file: FileConfig = parse_file(r#"max_clock_drift = "5s""#).unwrap();
        let config = Config::layer(Cli::default(), file).unwrap();
        assert_eq!(
            config.store.max_clock_drift_ms, 5_000,
            "file wins over default"
        );
        let file: FileConfig = parse_file(r#"max_clock_drift = "5s""#).unwrap();
        let config = Config::layer(parse(&["--max-clock-drift", "250ms"]), file).unwrap();
        assert_eq!(config.store.max_clock_drift_ms, 250, "flag wins over file");
        let config = Config::layer(parse(&["--max-clock-drift", "1d"]), FileConfig::default());
        assert_eq!(config.unwrap().store.max_clock_drift_ms, MAX_CLOCK_DRIFT_MS);
        for bad in ["0s", "25h", "10years"] {
            let error = Config::layer(parse(&["--max-clock-drift", bad]), FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains("max_clock_drift"), "{bad}: {error}");
        }
        assert!(Cli::try_parse_from(["ringcached", "--max-clock-drift", "soon"]).is_err());
    }

    #[test]
    fn gossip_keyring_and_reload_interval_layer_with_their_defaults() {
        let defaults = Config::layer(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(defaults.gossip_keyring, None, "plaintext gossip by default");
        assert_eq!(defaults.secrets_reload_interval, Duration::from_secs(10));
        let file: FileConfig = parse_file(
            r#"
            gossip_keyring = "/etc/ringcache/gossip.keys"
            secrets_reload_interval = "30s"
            "#,
        )
        .unwrap();
        let config = Config::layer(parse(&["--secrets-reload-interval", "2s"]), file).unwrap();
        assert_eq!(
            config.gossip_keyring.as_deref(),
            Some(Path::new("/etc/ringcache/gossip.keys"))
        );
        assert_eq!(
            config.secrets_reload_interval,
            Duration::from_secs(2),
            "flag wins"
        );
        let err = Config::layer(
            parse(&["--secrets-reload-interval", "0s"]),
            FileConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("secrets_reload_interval"), "{err}");
        assert!(parse(&["--gen-gossip-key"]).gen_gossip_key);
    }

    #[test]
    fn snapshot_settings_layer_with_their_defaults() {
        let defaults = Config::layer(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(defaults.snapshot.data_dir, None, "snapshots off by default");
        assert_eq!(defaults.snapshot.path(), None);
        assert_eq!(
            defaults.snapshot.interval, None,
            "only at shutdown by default"
        );
        assert_eq!(defaults.snapshot.rate_bytes_per_sec, 256 * 1024 * 1024);
        assert_eq!(
            defaults.snapshot.max_age,
            Duration::from_secs(600),
            "the tombstone grace"
        );
        let grace = Config::layer(parse(&["--tombstone-grace", "20m"]), FileConfig::default());
        assert_eq!(grace.unwrap().snapshot.max_age, Duration::from_secs(1200));

        let dir =
            std::env::temp_dir().join(format!("ringcache-config-data-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file: FileConfig = parse_file(&format!(
            r#"
            data_dir = "{}"
            snapshot_interval = "5m"
            snapshot_rate = "64MiB"
            snapshot_max_age = "1h"
            "#,
            dir.join("nested").display()
        ))
        .unwrap();
        let config = Config::layer(parse(&["--snapshot-rate", "0"]), file).unwrap();
        assert!(dir.join("nested").is_dir(), "the data dir is created");
        assert_eq!(
            config.snapshot.path(),
            Some(dir.join("nested").join("snapshot.rcs"))
        );
        assert_eq!(config.snapshot.interval, Some(Duration::from_secs(300)));
        assert_eq!(
            config.snapshot.rate_bytes_per_sec, 0,
            "the flag wins; 0 = unthrottled"
        );
        assert_eq!(config.snapshot.max_age, Duration::from_secs(3600));
        let dir_flag = dir.to_str().unwrap();
        let config = Config::layer(
            parse(&["--data-dir", dir_flag, "--snapshot-interval", "1s"]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(config.snapshot.interval, Some(Duration::from_secs(1)));
        assert!(
            std::fs::read_dir(&dir).unwrap().count() == 1,
            "the write check leaves nothing behind"
        );

        let error = |args: &[&str]| {
            Config::layer(parse(args), FileConfig::default())
                .unwrap_err()
                .to_string()
        };
        let e = error(&["--data-dir", dir_flag, "--snapshot-interval", "500ms"]);
        assert!(e.contains("snapshot_interval must be at least 1s"), "{e}");
        let e = error(&["--snapshot-interval", "1m"]);
        assert!(e.contains("snapshot_interval needs data_dir"), "{e}");
        let e = error(&[
            "--data-dir",
            dir_flag,
            "--tombstone-grace",
            "0s",
            "--replication-factor",
            "1",
        ]);
        assert!(e.contains("snapshot_max_age"), "{e}");
        let a_file = dir.join("a-file");
        std::fs::write(&a_file, b"x").unwrap();
        let e = error(&["--data-dir", a_file.join("below").to_str().unwrap()]);
        assert!(
            e.contains("data_dir") && e.contains("cannot be created"),
            "{e}"
        );
        let e = error(&["--data-dir", a_file.to_str().unwrap()]);
        assert!(e.contains("data_dir"), "{e}");
        assert!(Cli::try_parse_from(["ringcached", "--snapshot-rate", "fast"]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lease_settings_layer_with_their_defaults_and_bounds() {
        use crate::lease::LeaseConfig;
        let defaults = Config::layer(parse(&[]), FileConfig::default()).unwrap();
        assert_eq!(defaults.leases, LeaseConfig::default());
        assert_eq!(defaults.leases.max_leases, 10_000);
        assert_eq!(defaults.leases.max_waiters, 10_000);
        assert_eq!(defaults.leases.max_ttl, Duration::from_secs(60));
        assert_eq!(defaults.leases.max_wait, Duration::from_secs(3));
        assert_eq!(defaults.leases.serve_stale, Duration::ZERO);

        let file: FileConfig = parse_file(
            r#"
            lease_max_leases = 10
            lease_max_waiters = 20
            lease_max_ttl = "5s"
            lease_max_wait = "1s"
            serve_stale = "30s"
            "#,
        )
        .unwrap();
        let config = Config::layer(parse(&["--lease-max-waiters", "30"]), file).unwrap();
        assert_eq!(
            config.leases,
            LeaseConfig {
                max_leases: 10,
                max_waiters: 30,
                max_ttl: Duration::from_secs(5),
                max_wait: Duration::from_secs(1),
                serve_stale: Duration::from_secs(30),
            },
            "the file over the defaults, the flag over the file"
        );
        for (args, named) in [
            (["--lease-max-leases", "0"], "lease_max_leases"),
            (["--lease-max-leases", "10000001"], "lease_max_leases"),
            (["--lease-max-waiters", "0"], "lease_max_waiters"),
            (["--lease-max-waiters", "1000001"], "lease_max_waiters"),
            (["--lease-max-ttl", "0s"], "lease_max_ttl"),
            (["--lease-max-ttl", "61m"], "lease_max_ttl"),
            (["--lease-max-wait", "31s"], "lease_max_wait"),
            (["--serve-stale", "25h"], "serve_stale"),
        ] {
            let err = Config::layer(parse(&args), FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{args:?}: {err}");
        }
        for args in [
            ["--lease-max-leases", "1"],
            ["--lease-max-waiters", "1000000"],
            ["--lease-max-ttl", "1h"],
            ["--lease-max-wait", "0s"],
            ["--serve-stale", "24h"],
        ] {
            Config::layer(parse(&args), FileConfig::default()).unwrap();
        }
        assert!(Cli::try_parse_from(["ringcached", "--lease-max-leases", "-1"]).is_err());
    }

    #[test]
    fn tracking_settings_layer_with_their_defaults_and_bounds() {
        use crate::tracking::TrackingConfig;
        let defaults = Config::layer(parse(&[]), FileConfig::default()).unwrap();
        assert_eq!(defaults.tracking, TrackingConfig::default());
        assert_eq!(defaults.tracking.max_keys, 1_000_000);
        assert_eq!(defaults.tracking.max_subscribers, 1024);
        assert_eq!(defaults.tracking.max_bytes, 256 << 20);
        assert_eq!(defaults.tracking.queue_bytes, 1 << 20);
        let file: FileConfig = parse_file(
            r#"
            tracking_max_keys = 10
            tracking_max_bytes = "2MiB"
            tracking_max_subscribers = 3
            tracking_queue_bytes = "4KiB"
            "#,
        )
        .unwrap();
        let config = Config::layer(parse(&["--tracking-queue-bytes", "8KiB"]), file).unwrap();
        assert_eq!(
            config.tracking,
            TrackingConfig {
                max_keys: 10,
                max_bytes: 2 << 20,
                max_subscribers: 3,
                queue_bytes: 8 << 10,
            },
            "the file over the defaults, the flag over the file"
        );
        for (args, named) in [
            (["--tracking-max-keys", "0"], "tracking_max_keys"),
            (["--tracking-max-keys", "100000001"], "tracking_max_keys"),
            (
                ["--tracking-max-subscribers", "0"],
                "tracking_max_subscribers",
            ),
            (
                ["--tracking-max-subscribers", "65537"],
                "tracking_max_subscribers",
            ),
            (["--tracking-max-bytes", "1023KiB"], "tracking_max_bytes"),
            (["--tracking-max-bytes", "65GiB"], "tracking_max_bytes"),
            (["--tracking-queue-bytes", "1023"], "tracking_queue_bytes"),
            (["--tracking-queue-bytes", "2GiB"], "tracking_queue_bytes"),
        ] {
            let err = Config::layer(parse(&args), FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{args:?}: {err}");
        }
        assert!(Cli::try_parse_from(["ringcached", "--tracking-max-keys", "-1"]).is_err());
        assert!(Cli::try_parse_from(["ringcached", "--tracking-queue-bytes", "lots"]).is_err());
    }

    #[test]
    fn hot_keys_settings_layer_with_their_defaults_and_bounds() {
        use crate::hotkeys::HotKeysConfig;
        let defaults = Config::layer(parse(&[]), FileConfig::default()).unwrap();
        assert_eq!(defaults.hot_keys, HotKeysConfig::default());
        assert!(defaults.hot_keys.enabled);
        assert_eq!(defaults.hot_keys.capacity, 256);
        assert_eq!(defaults.hot_keys.window, Duration::from_secs(10));
        assert_eq!(defaults.hot_keys.sample, 8);
        assert_eq!(defaults.hot_keys.threshold, 1000);

        let file: FileConfig = parse_file(
            r#"
            hot_keys = false
            hot_keys_capacity = 1024
            hot_keys_window = "1m"
            hot_keys_sample = 1
            hot_key_threshold = 0
            "#,
        )
        .unwrap();
        let config = Config::layer(parse(&["--hot-keys-sample", "16"]), file).unwrap();
        assert_eq!(
            config.hot_keys,
            HotKeysConfig {
                enabled: false,
                capacity: 1024,
                window: Duration::from_secs(60),
                sample: 16,
                threshold: 0,
            },
            "the file over the defaults, the flag over the file"
        );
        for (flag, on) in [("on", true), ("off", false), ("true", true), ("no", false)] {
            let config =
                Config::layer(parse(&["--hot-keys", flag]), FileConfig::default()).unwrap();
            assert_eq!(config.hot_keys.enabled, on, "--hot-keys {flag}");
        }
        assert!(Cli::try_parse_from(["ringcached", "--hot-keys", "maybe"]).is_err());
        assert!(Cli::try_parse_from(["ringcached", "--hot-keys-capacity", "-1"]).is_err());

        for (args, named) in [
            (["--hot-keys-capacity", "15"], "hot_keys_capacity"),
            (["--hot-keys-capacity", "65537"], "hot_keys_capacity"),
            (["--hot-keys-window", "999ms"], "hot_keys_window"),
            (["--hot-keys-window", "61m"], "hot_keys_window"),
            (["--hot-keys-sample", "0"], "hot_keys_sample"),
            (["--hot-keys-sample", "1025"], "hot_keys_sample"),
            (["--hot-key-threshold", "100000001"], "hot_key_threshold"),
        ] {
            let err = Config::layer(parse(&args), FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{args:?}: {err}");
        }
        for args in [
            ["--hot-keys-capacity", "16"],
            ["--hot-keys-capacity", "65536"],
            ["--hot-keys-window", "1s"],
            ["--hot-keys-window", "1h"],
            ["--hot-keys-sample", "1"],
            ["--hot-keys-sample", "1024"],
            ["--hot-key-threshold", "0"],
            ["--hot-key-threshold", "100000000"],
        ] {
            assert!(
                Config::layer(parse(&args), FileConfig::default()).is_ok(),
                "{args:?}"
            );
        }
    }

    #[test]
    fn a_wildcard_bind_advertises_the_given_address() {
        let config = Config::layer(
            parse(&["--bind", "0.0.0.0", "--advertise-addr", "10.1.2.3"]),
            FileConfig::default(),
        )
        .unwrap();
        let bound: SocketAddr = "0.0.0.0:7379".parse().unwrap();
        assert_eq!(config.advertised(bound).to_string(), "10.1.2.3:7379");
        let local = Config::layer(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(
            local.advertised("127.0.0.1:9".parse().unwrap()).to_string(),
            "127.0.0.1:9"
        );
    }

    #[test]
    fn a_larger_value_limit_raises_the_message_limit() {
        let config = Config::layer(
            parse(&["--max-value-bytes", "32MiB"]),
            FileConfig::default(),
        )
        .unwrap();
        assert!(config.max_message_bytes >= 32 * 1024 * 1024 + 8 * 1024 + 1024);
    }

    #[test]
    fn insecure_is_a_bare_flag_an_explicit_value_or_a_file_key() {
        let layered = |args: &[&str], file: &str| {
            Config::layer(parse(args), parse_file(file).unwrap())
                .unwrap()
                .security
                .insecure
        };
        assert!(!layered(&[], ""));
        assert!(layered(&["--insecure"], ""));
        assert!(layered(&["--insecure=on"], ""));
        assert!(layered(&[], "insecure = true"));
        // A flag given false wins over the file, as every other flag does.
        assert!(!layered(&["--insecure=false"], "insecure = true"));
        assert!(Cli::try_parse_from(["ringcached", "--insecure=maybe"]).is_err());
    }

    #[test]
    fn the_file_holds_settings_and_users_and_nothing_else() {
        // Users are read from the file, and checked with the rest of the config.
        let file = parse_file(
            "seeds = [\"a:1\"]\n[[users]]\nname = \"app\"\nrole = \"write\"\nsecret_sha256 = \"00\"\n",
        )
        .unwrap();
        assert_eq!(file.users.len(), 1);
        let error = format!("{:#}", Config::layer(Cli::default(), file).unwrap_err());
        assert!(error.contains("users in the config file"), "{error}");
        let file = parse_file("seeds = [\"a:1\", \"b:2\"]").unwrap();
        let config = Config::layer(Cli::default(), file).unwrap();
        assert_eq!(config.seeds, ["a:1", "b:2"]);
        let flags = Config::layer(parse(&["--seeds", "c:3, d:4"]), FileConfig::default()).unwrap();
        assert_eq!(flags.seeds, ["c:3", "d:4"]);
        let error = format!("{:#}", parse_file("max_memry = \"1GiB\"").unwrap_err());
        assert!(
            error.contains("max_memry"),
            "an unknown key is named: {error}"
        );
    }

    #[test]
    fn help_documents_every_design_flag() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--node-id",
            "--bind",
            "--grpc-port",
            "--gossip-port",
            "--http-port",
            "--seeds",
            "--replication-factor",
            "--max-memory",
            "--config",
            "--write-consistency",
            "--read-consistency",
            "--replica-timeout",
            "--hint-max-bytes",
            "--hint-max-age",
            "--min-cluster-size",
            "--max-connections",
            "--ready-settle",
            "--max-clock-drift",
            "--gossip-keyring",
            "--secrets-reload-interval",
            "--gen-gossip-key",
            "--data-dir",
            "--snapshot-interval",
            "--snapshot-rate",
            "--snapshot-max-age",
            "--hot-keys",
            "--hot-keys-capacity",
            "--hot-keys-window",
            "--hot-keys-sample",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
        assert!(help.contains("RINGCACHE_MAX_MEMORY"));
        assert!(help.contains("RINGCACHE_MAX_CLOCK_DRIFT"));
    }
}
