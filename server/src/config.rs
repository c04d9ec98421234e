//! The node's configuration: one [`Config`], layered once at start-up as
//! flags > `RINGCACHE_*` environment > TOML file (`--config`) > defaults, then validated.
//!
//! Sizes accept human units (`512MiB`, `8KiB`, `1GB`, or a plain number of bytes) and durations
//! humantime syntax (`100ms`, `30s`, `10years`). No field can be changed while the node runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::Deserialize;

use ringcache_proto::placement::DEFAULT_VNODES_PER_WEIGHT;
use ringcache_proto::topology::{
    MAX_NODE_ID_BYTES, MAX_REPLICATION_FACTOR, MAX_VNODES_PER_WEIGHT, MAX_WEIGHT, MAX_ZONE_BYTES,
};

use crate::replication::{Consistency, ReplicationConfig};
use crate::store::{EvictionPolicy, MAX_KEY_LEN, StoreConfig};

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

/// `ringcached` command line. Every flag can also be set by the environment variable shown, or by
/// the key of the same name (with `_` for `-`) in the `--config` TOML file.
#[derive(Debug, Default, Parser)]
#[command(name = "ringcached", version, about = "A ringcache node: distributed in-memory cache", long_about = None)]
pub struct Cli {
    /// Start a local cluster of N nodes instead of one node: child processes on 127.0.0.1 …
    /// 127.0.0.N with the default ports, joined through 127.0.0.1. Other flags apply to every node.
    #[arg(long, value_name = "N")]
    pub dev_cluster: Option<u8>,
    /// Print a new user's `[[users]]` entry (for the users file) and its secret, then exit; the
    /// secret is shown only once. Use with --role.
    #[arg(long, value_name = "NAME")]
    pub gen_user: Option<String>,
    /// The role of --gen-user: read, write or admin [default: read].
    #[arg(long, value_name = "ROLE", requires = "gen_user")]
    pub role: Option<crate::auth::Role>,
    /// Print a fresh random gossip key (standard base64 of 32 random bytes, for a
    /// --gossip-keyring file) and exit.
    #[arg(long)]
    pub gen_gossip_key: bool,
    /// TOML config file; flags and environment variables override its values.
    #[arg(long, env = "RINGCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Unique, stable id of this node [default: BIND:GOSSIP_PORT].
    #[arg(long, env = "RINGCACHE_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Address every port binds to. Use 127.0.0.2, 127.0.0.3… for local clusters on default ports
    /// [default: 127.0.0.1].
    #[arg(long, env = "RINGCACHE_BIND", value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// The IP other nodes and clients use to reach this node, advertised in the topology with the
    /// bound ports; required when binding a wildcard address (0.0.0.0 or ::), e.g. the pod IP
    /// [default: the bind address].
    #[arg(long, env = "RINGCACHE_ADVERTISE_ADDR", value_name = "IP")]
    pub advertise_addr: Option<IpAddr>,
    /// gRPC port for clients and nodes; 0 picks a free port [default: 7379].
    #[arg(long, env = "RINGCACHE_GRPC_PORT", value_name = "PORT")]
    pub grpc_port: Option<u16>,
    /// Gossip (UDP) port for membership [default: 7380].
    #[arg(long, env = "RINGCACHE_GOSSIP_PORT", value_name = "PORT")]
    pub gossip_port: Option<u16>,
    /// HTTP port for /metrics, /health/live and /health/ready; 0 picks a free port [default: 7381].
    #[arg(long, env = "RINGCACHE_HTTP_PORT", value_name = "PORT")]
    pub http_port: Option<u16>,
    /// Cluster-plane port: gRPC between nodes only (replication, rebalancing, forwarding),
    /// mutual TLS when cluster-ca is set; 0 picks a free port [default: 7382].
    #[arg(long, env = "RINGCACHE_CLUSTER_PORT", value_name = "PORT")]
    pub cluster_port: Option<u16>,
    /// Redis protocol (RESP) port on the bind address, for Redis clients and redis-cli; 0 turns
    /// it off. It has the client port's TLS (tls-cert, tls-client-ca) and users (AUTH)
    /// [default: 6479].
    #[arg(long, env = "RINGCACHE_RESP_PORT", value_name = "PORT")]
    pub resp_port: Option<u16>,
    /// Close a RESP connection that has sent nothing this long (Redis's `timeout`); 0 = never
    /// [default: 0].
    #[arg(long, env = "RINGCACHE_RESP_IDLE_TIMEOUT", value_name = "DURATION")]
    pub resp_idle_timeout: Option<HumanDuration>,
    /// Gossip addresses (host:port) of nodes to join through, comma-separated [default: none, a
    /// new cluster]. Cluster membership arrives with the gossip layer; a single node ignores it.
    #[arg(
        long,
        env = "RINGCACHE_SEEDS",
        value_name = "HOST:PORT,...",
        value_delimiter = ','
    )]
    pub seeds: Option<Vec<String>>,
    /// Copies of each key (R), capped at the number of active nodes [default: 3].
    #[arg(long, env = "RINGCACHE_REPLICATION_FACTOR", value_name = "R")]
    pub replication_factor: Option<NonZeroU32>,
    /// Memory for keys, values and their metadata, e.g. 512MiB [default: 1GiB].
    #[arg(long, env = "RINGCACHE_MAX_MEMORY", value_name = "SIZE")]
    pub max_memory: Option<ByteSize>,
    /// What a write does when max-memory is reached: `clock` evicts entries not used recently,
    /// `noeviction` fails the write with RESOURCE_EXHAUSTED [default: clock].
    #[arg(long, env = "RINGCACHE_EVICTION_POLICY", value_name = "POLICY")]
    pub eviction_policy: Option<EvictionPolicyArg>,
    /// Longest key accepted, at most 65535 bytes [default: 8KiB].
    #[arg(long, env = "RINGCACHE_MAX_KEY_BYTES", value_name = "SIZE")]
    pub max_key_bytes: Option<ByteSize>,
    /// Longest value accepted [default: 4MiB].
    #[arg(long, env = "RINGCACHE_MAX_VALUE_BYTES", value_name = "SIZE")]
    pub max_value_bytes: Option<ByteSize>,
    /// Largest gRPC message accepted or sent; must fit one key and value [default: 8MiB + 64KiB
    /// headroom, or max-value-bytes + max-key-bytes + 64KiB if larger].
    #[arg(long, env = "RINGCACHE_MAX_MESSAGE_BYTES", value_name = "SIZE")]
    pub max_message_bytes: Option<ByteSize>,
    /// Most keys in one MGet/MSet/MDelete request [default: 1000].
    #[arg(long, env = "RINGCACHE_MAX_BATCH_KEYS", value_name = "N")]
    pub max_batch_keys: Option<usize>,
    /// Longest TTL accepted [default: 10years].
    #[arg(long, env = "RINGCACHE_MAX_TTL", value_name = "DURATION")]
    pub max_ttl: Option<HumanDuration>,
    /// Store shards (lock stripes, each holding whole hash slots), rounded up to a power of two,
    /// at most 16384 [default: 64].
    #[arg(long, env = "RINGCACHE_SHARDS", value_name = "N")]
    pub shards: Option<usize>,
    /// How long a deleted key is remembered (as a tombstone) so a late or replayed replica write
    /// cannot bring it back; must outlive the hint age [default: 10m].
    #[arg(long, env = "RINGCACHE_TOMBSTONE_GRACE", value_name = "DURATION")]
    pub tombstone_grace: Option<HumanDuration>,
    /// Largest clock difference tolerated between nodes: a version from another node
    /// (replication, rebalancing, quorum reads, hints) stamped further ahead of this node's
    /// clock is refused and counted (`ringcache_versions_refused_total`), and never moves this
    /// node's clock; between 1ms and 1d [default: 60s].
    #[arg(long, env = "RINGCACHE_MAX_CLOCK_DRIFT", value_name = "DURATION")]
    pub max_clock_drift: Option<HumanDuration>,
    /// Upper bound on the key and value bytes per second one node sends when data moves after a
    /// ring change (join, death, leave); 0 = unlimited [default: 64MiB].
    #[arg(long, env = "RINGCACHE_REBALANCE_RATE", value_name = "SIZE")]
    pub rebalance_rate: Option<ByteSize>,
    /// While this node serves requests, data movement slows down (halves its rate, 10 times a
    /// second) whenever the node's threads wait longer than this on average for a CPU, and
    /// speeds up again when they do not; an idle node moves at rebalance-rate. 0 = always
    /// rebalance-rate; at most 1s [default: 500us].
    #[arg(long, env = "RINGCACHE_REBALANCE_YIELD", value_name = "DURATION")]
    pub rebalance_yield: Option<HumanDuration>,
    /// How often expired keys are reclaimed in the background [default: 100ms].
    #[arg(long, env = "RINGCACHE_EXPIRY_INTERVAL", value_name = "DURATION")]
    pub expiry_interval: Option<HumanDuration>,
    /// Longest a graceful leave (SIGTERM, Admin.Leave) spends handing its data to the other nodes
    /// [default: 5m].
    #[arg(long, env = "RINGCACHE_LEAVE_TIMEOUT", value_name = "DURATION")]
    pub leave_timeout: Option<HumanDuration>,
    /// Longest wait for in-flight requests at shutdown before the node exits anyway [default: 10s].
    #[arg(long, env = "RINGCACHE_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<HumanDuration>,
    /// What SIGTERM/SIGINT does: `handoff` hands every key to the other nodes and leaves the
    /// cluster; `restart` keeps the data in a snapshot in --data-dir and stops for a quick
    /// restart (the cluster keeps the node's ranges for the restart grace) [default: handoff].
    #[arg(long, env = "RINGCACHE_SHUTDOWN_MODE", value_name = "MODE")]
    pub shutdown_mode: Option<ShutdownMode>,
    /// How long the other nodes keep the ranges of a node stopped for a restart (`ringctl drain
    /// --restart`, or --shutdown-mode restart) before they count it as dead and copy its data
    /// elsewhere; 1s to 1h [default: 60s].
    #[arg(long, env = "RINGCACHE_RESTART_GRACE", value_name = "DURATION")]
    pub restart_grace: Option<HumanDuration>,
    /// Tokio worker threads [default: the CPUs this process may use: its CPU quota (cgroup v1 or
    /// v2, e.g. a container's CPU limit, rounded down) or its CPU affinity, whichever is lower;
    /// at least 1].
    #[arg(long, env = "RINGCACHE_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Relative capacity of this node: it gets WEIGHT × vnodes virtual nodes [default: 1].
    #[arg(long, env = "RINGCACHE_WEIGHT", value_name = "WEIGHT")]
    pub weight: Option<NonZeroU32>,
    /// This node's zone (failure domain: an availability zone, a rack): each key's copies go
    /// to as many zones as R allows. 1 to 64 bytes of letters, digits, '.', '_' and '-'; empty
    /// is none. Set it only once every node runs a build that knows zones [default: none].
    #[arg(long, env = "RINGCACHE_ZONE", value_name = "NAME")]
    pub zone: Option<String>,
    /// Virtual nodes per unit of weight; every node of a cluster must use the same value
    /// [default: 256].
    #[arg(long, env = "RINGCACHE_VNODES", value_name = "N")]
    pub vnodes: Option<NonZeroU32>,
    /// Gossip: how often each node probes a random member (stretched by the local health
    /// multiplier) [default: 500ms].
    #[arg(long, env = "RINGCACHE_PROBE_INTERVAL", value_name = "DURATION")]
    pub probe_interval: Option<HumanDuration>,
    /// Gossip: how long a probe may wait for its answer before indirect probes start (stretched
    /// by the local health multiplier) [default: 200ms].
    #[arg(long, env = "RINGCACHE_PROBE_TIMEOUT", value_name = "DURATION")]
    pub probe_timeout: Option<HumanDuration>,
    /// Gossip: how long a suspected member has to refute before it is declared dead and leaves the
    /// ring, once other members confirm the suspicion (the shortest suspicion) [default: 1s].
    #[arg(long, env = "RINGCACHE_SUSPICION_TIMEOUT", value_name = "DURATION")]
    pub suspicion_timeout: Option<HumanDuration>,
    /// Gossip: how long a suspected member has to refute when no other member confirms the
    /// suspicion; confirmations shorten it down to suspicion-timeout [default: 6 ×
    /// suspicion-timeout].
    #[arg(long, env = "RINGCACHE_SUSPICION_MAX_TIMEOUT", value_name = "DURATION")]
    pub suspicion_max_timeout: Option<HumanDuration>,
    /// Gossip: the most a node stretches its own probe interval and timeout while its probes
    /// fail or it must refute suspicions about itself (1..=32; 1 = off) [default: 8].
    #[arg(long, env = "RINGCACHE_LOCAL_HEALTH_MAX", value_name = "N")]
    pub local_health_max: Option<u32>,
    /// Log format; the level comes from RUST_LOG (e.g. `info`, `ringcache_server=debug`)
    /// [default: text].
    #[arg(long, env = "RINGCACHE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Replicas that must acknowledge a write that asks for no consistency level: `one`,
    /// `quorum` (R/2+1) or `all` [default: quorum].
    #[arg(long, env = "RINGCACHE_WRITE_CONSISTENCY", value_name = "LEVEL")]
    pub write_consistency: Option<ConsistencyArg>,
    /// Replicas that must answer a read that asks for no consistency level: `one` (local),
    /// `quorum` or `all` (newest answer wins, stale replicas are repaired) [default: one].
    #[arg(long, env = "RINGCACHE_READ_CONSISTENCY", value_name = "LEVEL")]
    pub read_consistency: Option<ConsistencyArg>,
    /// Longest wait for one replica's answer to a replicated write, a quorum read or a hint
    /// replay; a replica that does not answer in time counts as failed [default: 2s].
    #[arg(long, env = "RINGCACHE_REPLICA_TIMEOUT", value_name = "DURATION")]
    pub replica_timeout: Option<HumanDuration>,
    /// Most replica requests (Replicate and ReadVersions batches) in flight on the one stream
    /// this node keeps to each peer (Internal.ReplicaStream); more wait for a slot. 0: no
    /// streams, a unary call per batch [default: 64].
    #[arg(long, env = "RINGCACHE_REPLICA_STREAM_IN_FLIGHT", value_name = "N")]
    pub replica_stream_in_flight: Option<usize>,
    /// Hints (writes kept for a replica that could not be reached) per target node; over it the
    /// oldest are dropped; 0 keeps no hints [default: 64MiB].
    #[arg(long, env = "RINGCACHE_HINT_MAX_BYTES", value_name = "SIZE")]
    pub hint_max_bytes: Option<ByteSize>,
    /// Hints older than this are dropped; must be shorter than tombstone-grace [default: 5m].
    #[arg(long, env = "RINGCACHE_HINT_MAX_AGE", value_name = "DURATION")]
    pub hint_max_age: Option<HumanDuration>,
    /// How often each node compares digests of the keys it shares with each peer and repairs
    /// what differs (anti-entropy); 0s turns it off. Must be shorter than tombstone-grace
    /// [default: 2m].
    #[arg(long, env = "RINGCACHE_ANTI_ENTROPY_INTERVAL", value_name = "DURATION")]
    pub anti_entropy_interval: Option<HumanDuration>,
    /// Refuse writes (UNAVAILABLE) while this node sees fewer active members than this, so a
    /// partitioned minority takes no writes; 0 = off [default: 0].
    #[arg(long, env = "RINGCACHE_MIN_CLUSTER_SIZE", value_name = "N")]
    pub min_cluster_size: Option<usize>,
    /// Most open TCP connections on the gRPC port (clients and other nodes together); a
    /// connection beyond it is closed at once and counted; 0 = unlimited [default: 10000].
    #[arg(long, env = "RINGCACHE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// /health/ready: how long the topology must stay unchanged (with no member suspect) before
    /// a node that has peers reports ready again [default: 2 × probe-interval].
    #[arg(long, env = "RINGCACHE_READY_SETTLE", value_name = "DURATION")]
    pub ready_settle: Option<HumanDuration>,
    /// How many members the cluster should have: fewer live ones make it degraded (status,
    /// metrics); 0 = learned, the members that ever owned ranges, less those drained or
    /// forgotten (`ringctl forget`) [default: 0].
    #[arg(long, env = "RINGCACHE_EXPECTED_NODES", value_name = "N")]
    pub expected_nodes: Option<usize>,
    /// TLS certificate chain (PEM) this node presents on the client gRPC port; with tls-key it
    /// turns TLS on there. Re-read when the file changes [default: none, plaintext].
    #[arg(long, env = "RINGCACHE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of tls-cert.
    #[arg(long, env = "RINGCACHE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: clients without one are refused at the
    /// TLS handshake [default: none, client certificates not asked for].
    #[arg(long, env = "RINGCACHE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// The cluster CA (PEM): turns on mutual TLS on the cluster port; only nodes whose
    /// certificate chains to it can call Internal or forward [default: none, plaintext].
    #[arg(long, env = "RINGCACHE_CLUSTER_CA", value_name = "FILE")]
    pub cluster_ca: Option<PathBuf>,
    /// This node's certificate (PEM) on the cluster port, as server and as client of its peers;
    /// signed by cluster-ca with cluster-server-name as a DNS name [default: tls-cert].
    #[arg(long, env = "RINGCACHE_CLUSTER_CERT", value_name = "FILE")]
    pub cluster_cert: Option<PathBuf>,
    /// Private key (PEM) of cluster-cert [default: tls-key].
    #[arg(long, env = "RINGCACHE_CLUSTER_KEY", value_name = "FILE")]
    pub cluster_key: Option<PathBuf>,
    /// DNS name every node's cluster certificate carries; peers check it instead of an IP, so
    /// one name serves the whole cluster [default: ringcache-cluster].
    #[arg(long, env = "RINGCACHE_CLUSTER_SERVER_NAME", value_name = "NAME")]
    pub cluster_server_name: Option<String>,
    /// Users file (TOML, `[[users]]` entries with name, role and secret_sha256); with users
    /// configured every client request must authenticate. Re-read when the file changes
    /// [default: none; users may also be listed in the config file].
    #[arg(long, env = "RINGCACHE_USERS_FILE", value_name = "FILE")]
    pub users_file: Option<PathBuf>,
    /// Allow a non-loopback bind without TLS, users, cluster TLS and a gossip key (a trusted,
    /// isolated network only); printed as a warning at start and in ringctl status.
    #[arg(long, env = "RINGCACHE_INSECURE")]
    pub insecure: bool,
    /// Longest a new connection may take to finish its TLS handshake and HTTP/2 preface and,
    /// when users are configured, to send its first authenticated request (on the RESP port:
    /// its TLS handshake and, with users, its AUTH or HELLO AUTH) [default: 10s].
    #[arg(long, env = "RINGCACHE_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub handshake_timeout: Option<HumanDuration>,
    /// Most connections on the client port that have not yet authenticated (or finished their
    /// handshake); more are closed at once [default: 1000].
    #[arg(
        long,
        env = "RINGCACHE_MAX_UNAUTHENTICATED_CONNECTIONS",
        value_name = "N"
    )]
    pub max_unauthenticated_connections: Option<usize>,
    /// Most open connections on the cluster port (peers only; client connections never count
    /// against it) [default: 1024].
    #[arg(long, env = "RINGCACHE_MAX_CLUSTER_CONNECTIONS", value_name = "N")]
    pub max_cluster_connections: Option<usize>,
    /// HTTP/2: most requests open at once on one connection [default: 1024].
    #[arg(long, env = "RINGCACHE_MAX_CONCURRENT_STREAMS", value_name = "N")]
    pub max_concurrent_streams: Option<u32>,
    /// HTTP/2: largest header list (metadata) of a request [default: 16KiB].
    #[arg(long, env = "RINGCACHE_MAX_HEADER_LIST_BYTES", value_name = "SIZE")]
    pub max_header_list_bytes: Option<ByteSize>,
    /// Failed authentications one address may make per minute before it is refused without a
    /// check until the minute is over; 0 = no limit [default: 20].
    #[arg(long, env = "RINGCACHE_MAX_AUTH_FAILURES", value_name = "N")]
    pub max_auth_failures: Option<u32>,
    /// Close a connection (either port) that has had no request in progress this long; open
    /// streams (a client's pipeline or topology watch) count as in progress; 0 = never
    /// [default: 0].
    #[arg(long, env = "RINGCACHE_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<HumanDuration>,
    /// Gossip key ring: a file with one key per line (standard base64 of 32 bytes; `#` comments
    /// and blank lines allowed). The first key encrypts, every key decrypts. When set, gossip
    /// is encrypted and authenticated (AES-256-GCM) and plaintext gossip is dropped; every node
    /// of a cluster needs a common key. Re-read when it changes and on SIGHUP. Make a key with
    /// --gen-gossip-key [default: none, plaintext gossip].
    #[arg(long, env = "RINGCACHE_GOSSIP_KEYRING", value_name = "FILE")]
    pub gossip_keyring: Option<PathBuf>,
    /// How often secret files (the gossip key ring) are checked for changes; SIGHUP reloads at
    /// once [default: 10s].
    #[arg(
        long,
        env = "RINGCACHE_SECRETS_RELOAD_INTERVAL",
        value_name = "DURATION"
    )]
    pub secrets_reload_interval: Option<HumanDuration>,
    /// Directory of this node's snapshot file (`snapshot.rcs`): written on graceful shutdown
    /// and every snapshot-interval, loaded at start. Created if missing; must be writable
    /// [default: none, snapshots off].
    #[arg(long, env = "RINGCACHE_DATA_DIR", value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// Also write a snapshot this often while serving (at least 1s; needs data-dir)
    /// [default: none, only at shutdown].
    #[arg(long, env = "RINGCACHE_SNAPSHOT_INTERVAL", value_name = "DURATION")]
    pub snapshot_interval: Option<HumanDuration>,
    /// Most bytes per second a periodic snapshot writes (the one at shutdown is not throttled);
    /// 0 = unthrottled [default: 256MiB].
    #[arg(long, env = "RINGCACHE_SNAPSHOT_RATE", value_name = "SIZE")]
    pub snapshot_rate: Option<ByteSize>,
    /// Oldest snapshot loaded at start; an older one may hold keys deleted in the cluster since
    /// (their tombstones are gone) and is refused. Raise it when the whole cluster restarts
    /// [default: tombstone-grace].
    #[arg(long, env = "RINGCACHE_SNAPSHOT_MAX_AGE", value_name = "DURATION")]
    pub snapshot_max_age: Option<HumanDuration>,
    /// Track this node's heaviest keys per window (`ringctl hotkeys`, the hot-key metrics):
    /// on or off [default: on].
    #[arg(
        long,
        env = "RINGCACHE_HOT_KEYS",
        value_name = "on|off",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub hot_keys: Option<bool>,
    /// Most keys the hot-key summary counts per window, 16..=65536 [default: 256].
    #[arg(long, env = "RINGCACHE_HOT_KEYS_CAPACITY", value_name = "N")]
    pub hot_keys_capacity: Option<usize>,
    /// Length of a hot-key window; reports show the last complete one, 1s..=1h [default: 10s].
    #[arg(long, env = "RINGCACHE_HOT_KEYS_WINDOW", value_name = "DURATION")]
    pub hot_keys_window: Option<HumanDuration>,
    /// Count one request in N for hot keys (counts are scaled back), 1..=1024 [default: 8].
    #[arg(long, env = "RINGCACHE_HOT_KEYS_SAMPLE", value_name = "N")]
    pub hot_keys_sample: Option<u32>,
    /// Most GetOrLease leases held at once on this node, 1..=10000000 [default: 10000].
    #[arg(long, env = "RINGCACHE_LEASE_MAX_LEASES", value_name = "N")]
    pub lease_max_leases: Option<usize>,
    /// Most GetOrLease callers waiting at once on this node, 1..=1000000 [default: 10000].
    #[arg(long, env = "RINGCACHE_LEASE_MAX_WAITERS", value_name = "N")]
    pub lease_max_waiters: Option<usize>,
    /// Longest lease a GetOrLease grants (longer requests are capped), 1ms..=1h [default: 60s].
    #[arg(long, env = "RINGCACHE_LEASE_MAX_TTL", value_name = "DURATION")]
    pub lease_max_ttl: Option<HumanDuration>,
    /// Longest a GetOrLease waits for another caller's lease (longer requests are capped),
    /// 0..=30s [default: 3s].
    #[arg(long, env = "RINGCACHE_LEASE_MAX_WAIT", value_name = "DURATION")]
    pub lease_max_wait: Option<HumanDuration>,
    /// Keep expired values this long, readable through GetOrLease only (as stale, with one
    /// refresh lease), 0..=24h; 0 is off [default: 0].
    #[arg(long, env = "RINGCACHE_SERVE_STALE", value_name = "DURATION")]
    pub serve_stale: Option<HumanDuration>,
    /// Most keys the near-cache tracking table remembers; a key pushed out is invalidated for
    /// its readers, 1..=100000000 [default: 1000000].
    #[arg(long, env = "RINGCACHE_TRACKING_MAX_KEYS", value_name = "N")]
    pub tracking_max_keys: Option<usize>,
    /// Most near-cache invalidation streams open at once, 1..=65536 [default: 1024].
    #[arg(long, env = "RINGCACHE_TRACKING_MAX_SUBSCRIBERS", value_name = "N")]
    pub tracking_max_subscribers: Option<usize>,
    /// Most bytes of keys the near-cache tracking table remembers (each key charged 64 B
    /// more), 1MiB..=64GiB [default: 256MiB].
    #[arg(long, env = "RINGCACHE_TRACKING_MAX_BYTES", value_name = "SIZE")]
    pub tracking_max_bytes: Option<ByteSize>,
    /// Most bytes of keys queued on one invalidation stream (each key charged 32 B more); past
    /// it the stream ends with an error and the client drops its near cache, 1KiB..=1GiB
    /// [default: 1MiB].
    #[arg(long, env = "RINGCACHE_TRACKING_QUEUE_BYTES", value_name = "SIZE")]
    pub tracking_queue_bytes: Option<ByteSize>,
    /// Reads per second (in the last hot-key window) from which a key is answered as hot, so
    /// clients spread its reads over its replicas; 0 never, 0..=100000000 [default: 1000].
    #[arg(
        long,
        env = "RINGCACHE_HOT_KEY_THRESHOLD",
        value_name = "READS_PER_SEC"
    )]
    pub hot_key_threshold: Option<u64>,
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

impl From<ConsistencyArg> for Consistency {
    fn from(arg: ConsistencyArg) -> Self {
        match arg {
            ConsistencyArg::One => Self::One,
            ConsistencyArg::Quorum => Self::Quorum,
            ConsistencyArg::All => Self::All,
        }
    }
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

impl From<EvictionPolicyArg> for EvictionPolicy {
    fn from(arg: EvictionPolicyArg) -> Self {
        match arg {
            EvictionPolicyArg::Clock => Self::Clock,
            EvictionPolicyArg::Noeviction => Self::NoEviction,
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The `--config` TOML file: the same keys as the flags, with `_` for `-`. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<String>,
    bind: Option<IpAddr>,
    advertise_addr: Option<IpAddr>,
    grpc_port: Option<u16>,
    gossip_port: Option<u16>,
    http_port: Option<u16>,
    seeds: Option<Vec<String>>,
    replication_factor: Option<NonZeroU32>,
    max_memory: Option<ByteSize>,
    eviction_policy: Option<EvictionPolicyArg>,
    max_key_bytes: Option<ByteSize>,
    max_value_bytes: Option<ByteSize>,
    max_message_bytes: Option<ByteSize>,
    max_batch_keys: Option<usize>,
    max_ttl: Option<HumanDuration>,
    shards: Option<usize>,
    expiry_interval: Option<HumanDuration>,
    tombstone_grace: Option<HumanDuration>,
    max_clock_drift: Option<HumanDuration>,
    rebalance_rate: Option<ByteSize>,
    rebalance_yield: Option<HumanDuration>,
    leave_timeout: Option<HumanDuration>,
    shutdown_timeout: Option<HumanDuration>,
    shutdown_mode: Option<ShutdownMode>,
    restart_grace: Option<HumanDuration>,
    workers: Option<usize>,
    log_format: Option<LogFormat>,
    weight: Option<NonZeroU32>,
    zone: Option<String>,
    vnodes: Option<NonZeroU32>,
    probe_interval: Option<HumanDuration>,
    probe_timeout: Option<HumanDuration>,
    suspicion_timeout: Option<HumanDuration>,
    suspicion_max_timeout: Option<HumanDuration>,
    local_health_max: Option<u32>,
    write_consistency: Option<ConsistencyArg>,
    read_consistency: Option<ConsistencyArg>,
    replica_timeout: Option<HumanDuration>,
    replica_stream_in_flight: Option<usize>,
    hint_max_bytes: Option<ByteSize>,
    hint_max_age: Option<HumanDuration>,
    anti_entropy_interval: Option<HumanDuration>,
    min_cluster_size: Option<usize>,
    max_connections: Option<usize>,
    ready_settle: Option<HumanDuration>,
    expected_nodes: Option<usize>,
    cluster_port: Option<u16>,
    resp_port: Option<u16>,
    resp_idle_timeout: Option<HumanDuration>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    cluster_ca: Option<PathBuf>,
    cluster_cert: Option<PathBuf>,
    cluster_key: Option<PathBuf>,
    cluster_server_name: Option<String>,
    users_file: Option<PathBuf>,
    /// Users listed in the config file itself (not re-read while the node runs).
    #[serde(default)]
    users: Vec<crate::auth::UserEntry>,
    insecure: Option<bool>,
    handshake_timeout: Option<HumanDuration>,
    max_unauthenticated_connections: Option<usize>,
    max_cluster_connections: Option<usize>,
    max_concurrent_streams: Option<u32>,
    max_header_list_bytes: Option<ByteSize>,
    max_auth_failures: Option<u32>,
    idle_timeout: Option<HumanDuration>,
    gossip_keyring: Option<PathBuf>,
    secrets_reload_interval: Option<HumanDuration>,
    data_dir: Option<PathBuf>,
    snapshot_interval: Option<HumanDuration>,
    snapshot_rate: Option<ByteSize>,
    snapshot_max_age: Option<HumanDuration>,
    hot_keys: Option<bool>,
    hot_keys_capacity: Option<usize>,
    hot_keys_window: Option<HumanDuration>,
    hot_keys_sample: Option<u32>,
    lease_max_leases: Option<usize>,
    lease_max_waiters: Option<usize>,
    lease_max_ttl: Option<HumanDuration>,
    lease_max_wait: Option<HumanDuration>,
    serve_stale: Option<HumanDuration>,
    tracking_max_keys: Option<usize>,
    tracking_max_subscribers: Option<usize>,
    tracking_max_bytes: Option<ByteSize>,
    tracking_queue_bytes: Option<ByteSize>,
    hot_key_threshold: Option<u64>,
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

    fn layer(cli: Cli, file: FileConfig) -> anyhow::Result<Self> {
        let replication = replication_config(&cli, &file)?;
        let security = security_config(&cli, &file)?;
        let defaults = StoreConfig::default();
        let bind = cli
            .bind
            .or(file.bind)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let gossip_port = cli
            .gossip_port
            .or(file.gossip_port)
            .unwrap_or(DEFAULT_GOSSIP_PORT);
        let node_id = cli.node_id.or(file.node_id).unwrap_or_else(|| {
            let ip = cli.advertise_addr.or(file.advertise_addr).unwrap_or(bind);
            SocketAddr::new(ip, gossip_port).to_string()
        });
        let max_key_bytes = cli
            .max_key_bytes
            .or(file.max_key_bytes)
            .map_or(defaults.max_key_bytes as u64, |b| b.0);
        let max_value_bytes = cli
            .max_value_bytes
            .or(file.max_value_bytes)
            .map_or(defaults.max_value_bytes as u64, |b| b.0);
        let default_message = (8 * 1024 * 1024 + MESSAGE_HEADROOM)
            .max(max_key_bytes + max_value_bytes + MESSAGE_HEADROOM);
        let probe_interval = cli
            .probe_interval
            .or(file.probe_interval)
            .map_or(Duration::from_millis(500), |d| d.0);
        let suspicion_timeout = cli
            .suspicion_timeout
            .or(file.suspicion_timeout)
            .map_or(Duration::from_secs(1), |d| d.0);
        let tombstone_grace_ms = cli
            .tombstone_grace
            .or(file.tombstone_grace)
            .map_or(10 * 60 * 1000, |d| {
                d.0.as_millis().try_into().unwrap_or(u64::MAX)
            });
        let config = Self {
            node_id,
            bind,
            advertise_addr: cli.advertise_addr.or(file.advertise_addr),
            grpc_port: cli
                .grpc_port
                .or(file.grpc_port)
                .unwrap_or(DEFAULT_GRPC_PORT),
            gossip_port,
            http_port: cli
                .http_port
                .or(file.http_port)
                .unwrap_or(DEFAULT_HTTP_PORT),
            seeds: cli.seeds.or(file.seeds).unwrap_or_default(),
            replication_factor: cli
                .replication_factor
                .or(file.replication_factor)
                .unwrap_or(NonZeroU32::new(3).expect("3 is not zero")),
            store: StoreConfig {
                max_memory_bytes: to_usize(
                    "max_memory",
                    cli.max_memory.or(file.max_memory).map(|b| b.0),
                )?
                .unwrap_or(defaults.max_memory_bytes),
                eviction: cli
                    .eviction_policy
                    .or(file.eviction_policy)
                    .map_or(defaults.eviction, EvictionPolicy::from),
                max_key_bytes: to_usize("max_key_bytes", Some(max_key_bytes))?.unwrap_or_default(),
                max_value_bytes: to_usize("max_value_bytes", Some(max_value_bytes))?
                    .unwrap_or_default(),
                max_ttl_ms: cli
                    .max_ttl
                    .or(file.max_ttl)
                    .map_or(defaults.max_ttl_ms, |d| {
                        d.0.as_millis().try_into().unwrap_or(u64::MAX)
                    }),
                shards: cli.shards.or(file.shards).unwrap_or(defaults.shards),
                tombstone_grace_ms,
                max_clock_drift_ms: cli
                    .max_clock_drift
                    .or(file.max_clock_drift)
                    .map_or(defaults.max_clock_drift_ms, |d| {
                        d.0.as_millis().try_into().unwrap_or(u64::MAX)
                    }),
            },
            max_message_bytes: to_usize(
                "max_message_bytes",
                Some(
                    cli.max_message_bytes
                        .or(file.max_message_bytes)
                        .map_or(default_message, |b| b.0),
                ),
            )?
            .unwrap_or_default(),
            max_batch_keys: cli.max_batch_keys.or(file.max_batch_keys).unwrap_or(1000),
            expiry_interval: cli
                .expiry_interval
                .or(file.expiry_interval)
                .map_or(Duration::from_millis(100), |d| d.0),
            shutdown_timeout: cli
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .map_or(Duration::from_secs(10), |d| d.0),
            workers: cli.workers.or(file.workers),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            weight: cli.weight.or(file.weight).unwrap_or(NonZeroU32::MIN),
            // Empty is none: what the downward API gives a pod without the zone label.
            zone: cli.zone.or(file.zone).filter(|zone| !zone.is_empty()),
            vnodes: cli
                .vnodes
                .or(file.vnodes)
                .unwrap_or(NonZeroU32::new(DEFAULT_VNODES_PER_WEIGHT).expect("not zero")),
            probe_interval,
            probe_timeout: cli
                .probe_timeout
                .or(file.probe_timeout)
                .map_or(Duration::from_millis(200), |d| d.0),
            suspicion_timeout,
            suspicion_max_timeout: cli
                .suspicion_max_timeout
                .or(file.suspicion_max_timeout)
                .map_or(suspicion_timeout * 6, |d| d.0),
            local_health_max: cli.local_health_max.or(file.local_health_max).unwrap_or(8),
            replication,
            rebalance_bytes_per_sec: cli
                .rebalance_rate
                .or(file.rebalance_rate)
                .map_or(64 * 1024 * 1024, |b| b.0),
            rebalance_yield: cli
                .rebalance_yield
                .or(file.rebalance_yield)
                .map_or(DEFAULT_REBALANCE_YIELD, |d| d.0),
            leave_timeout: cli
                .leave_timeout
                .or(file.leave_timeout)
                .map_or(Duration::from_secs(300), |d| d.0),
            shutdown_mode: cli.shutdown_mode.or(file.shutdown_mode).unwrap_or_default(),
            restart_grace: cli
                .restart_grace
                .or(file.restart_grace)
                .map_or(DEFAULT_RESTART_GRACE, |d| d.0),
            max_connections: cli
                .max_connections
                .or(file.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            ready_settle: cli
                .ready_settle
                .or(file.ready_settle)
                .map_or(probe_interval * 2, |d| d.0),
            expected_nodes: cli.expected_nodes.or(file.expected_nodes).unwrap_or(0),
            anti_entropy_interval: cli
                .anti_entropy_interval
                .or(file.anti_entropy_interval)
                .map_or(DEFAULT_ANTI_ENTROPY_INTERVAL, |d| d.0),
            cluster_port: cli
                .cluster_port
                .or(file.cluster_port)
                .unwrap_or(DEFAULT_CLUSTER_PORT),
            resp_port: cli
                .resp_port
                .or(file.resp_port)
                .unwrap_or(DEFAULT_RESP_PORT),
            resp_idle_timeout: cli
                .resp_idle_timeout
                .or(file.resp_idle_timeout)
                .map(|d| d.0)
                .filter(|d| !d.is_zero()),
            security,
            gossip_keyring: cli.gossip_keyring.or(file.gossip_keyring),
            secrets_reload_interval: cli
                .secrets_reload_interval
                .or(file.secrets_reload_interval)
                .map_or(DEFAULT_SECRETS_RELOAD_INTERVAL, |d| d.0),
            snapshot: SnapshotConfig {
                data_dir: cli.data_dir.or(file.data_dir),
                interval: cli
                    .snapshot_interval
                    .or(file.snapshot_interval)
                    .map(|d| d.0),
                rate_bytes_per_sec: cli
                    .snapshot_rate
                    .or(file.snapshot_rate)
                    .map_or(DEFAULT_SNAPSHOT_RATE, |b| b.0),
                max_age: cli
                    .snapshot_max_age
                    .or(file.snapshot_max_age)
                    .map_or(Duration::from_millis(tombstone_grace_ms), |d| d.0),
            },
            hot_keys: crate::hotkeys::HotKeysConfig {
                enabled: cli.hot_keys.or(file.hot_keys).unwrap_or(true),
                capacity: cli
                    .hot_keys_capacity
                    .or(file.hot_keys_capacity)
                    .unwrap_or(crate::hotkeys::DEFAULT_CAPACITY),
                window: cli
                    .hot_keys_window
                    .or(file.hot_keys_window)
                    .map_or(crate::hotkeys::DEFAULT_WINDOW, |d| d.0),
                sample: cli
                    .hot_keys_sample
                    .or(file.hot_keys_sample)
                    .unwrap_or(crate::hotkeys::DEFAULT_SAMPLE),
                threshold: cli
                    .hot_key_threshold
                    .or(file.hot_key_threshold)
                    .unwrap_or(crate::hotkeys::DEFAULT_THRESHOLD),
            },
            leases: crate::lease::LeaseConfig {
                max_leases: cli
                    .lease_max_leases
                    .or(file.lease_max_leases)
                    .unwrap_or(crate::lease::DEFAULT_MAX_LEASES),
                max_waiters: cli
                    .lease_max_waiters
                    .or(file.lease_max_waiters)
                    .unwrap_or(crate::lease::DEFAULT_MAX_WAITERS),
                max_ttl: cli
                    .lease_max_ttl
                    .or(file.lease_max_ttl)
                    .map_or(crate::lease::DEFAULT_MAX_TTL, |d| d.0),
                max_wait: cli
                    .lease_max_wait
                    .or(file.lease_max_wait)
                    .map_or(crate::lease::DEFAULT_MAX_WAIT, |d| d.0),
                serve_stale: cli
                    .serve_stale
                    .or(file.serve_stale)
                    .map_or(Duration::ZERO, |d| d.0),
            },
            tracking: crate::tracking::TrackingConfig {
                max_keys: cli
                    .tracking_max_keys
                    .or(file.tracking_max_keys)
                    .unwrap_or(crate::tracking::DEFAULT_MAX_KEYS),
                max_bytes: cli
                    .tracking_max_bytes
                    .or(file.tracking_max_bytes)
                    .map_or(crate::tracking::DEFAULT_MAX_BYTES, |b| b.0),
                max_subscribers: cli
                    .tracking_max_subscribers
                    .or(file.tracking_max_subscribers)
                    .unwrap_or(crate::tracking::DEFAULT_MAX_SUBSCRIBERS),
                queue_bytes: cli
                    .tracking_queue_bytes
                    .or(file.tracking_queue_bytes)
                    .map_or(crate::tracking::DEFAULT_QUEUE_BYTES, |b| b.0),
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations between fields; the error names the offending key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.node_id.trim().is_empty() {
            bail!("node_id must not be empty");
        }
        if !(MIN_RESTART_GRACE..=MAX_RESTART_GRACE).contains(&self.restart_grace) {
            bail!(
                "restart_grace must be between 1s and 1h, got {}",
                humantime::format_duration(self.restart_grace)
            );
        }
        if self.store.max_key_bytes == 0 || self.store.max_key_bytes > MAX_KEY_LEN {
            bail!(
                "max_key_bytes must be between 1 and {MAX_KEY_LEN} bytes, got {}",
                self.store.max_key_bytes
            );
        }
        let min_memory = 64 * 1024;
        if self.store.max_memory_bytes < min_memory {
            bail!(
                "max_memory must be at least 64KiB, got {} bytes",
                self.store.max_memory_bytes
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
        if self.max_batch_keys == 0 {
            bail!("max_batch_keys must be at least 1");
        }
        if self.store.max_ttl_ms == 0 {
            bail!("max_ttl must be at least 1ms");
        }
        // A shard holds whole hash slots: more shards than slots would stay empty.
        if self.store.shards == 0
            || self.store.shards > usize::from(ringcache_proto::placement::SLOTS)
        {
            bail!(
                "shards must be between 1 and 16384 (one hash slot each), got {}",
                self.store.shards
            );
        }
        let drift = self.store.max_clock_drift_ms;
        if drift == 0 || drift > MAX_CLOCK_DRIFT_MS {
            bail!(
                "max_clock_drift must be between 1ms and 1d, got {}",
                humantime::format_duration(Duration::from_millis(drift))
            );
        }
        if self.expiry_interval.is_zero() {
            bail!("expiry_interval must be greater than zero");
        }
        self.validate_hot_keys()?;
        self.validate_leases()?;
        self.validate_tracking()?;
        if self.secrets_reload_interval.is_zero() {
            bail!("secrets_reload_interval must be greater than zero");
        }
        if self.probe_interval.is_zero()
            || self.probe_timeout.is_zero()
            || self.suspicion_timeout.is_zero()
        {
            bail!("probe_interval, probe_timeout and suspicion_timeout must be greater than zero");
        }
        if self.suspicion_max_timeout < self.suspicion_timeout {
            bail!(
                "suspicion_max_timeout ({:?}) must be at least suspicion_timeout ({:?})",
                self.suspicion_max_timeout,
                self.suspicion_timeout
            );
        }
        if !(1..=crate::cluster::MAX_LOCAL_HEALTH).contains(&self.local_health_max) {
            bail!(
                "local_health_max must be between 1 and {} (got {})",
                crate::cluster::MAX_LOCAL_HEALTH,
                self.local_health_max
            );
        }
        if self.probe_timeout >= self.probe_interval {
            bail!(
                "probe_timeout ({:?}) must be shorter than probe_interval ({:?})",
                self.probe_timeout,
                self.probe_interval
            );
        }
        if self.vnodes.get() > MAX_VNODES_PER_WEIGHT || self.weight.get() > MAX_WEIGHT {
            bail!("vnodes must be at most {MAX_VNODES_PER_WEIGHT} and weight at most {MAX_WEIGHT}");
        }
        if self.replication_factor.get() > MAX_REPLICATION_FACTOR {
            bail!(
                "replication_factor must be at most {MAX_REPLICATION_FACTOR}, got {}",
                self.replication_factor
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
        if self.node_id.len() > MAX_NODE_ID_BYTES {
            bail!(
                "node_id must be at most {MAX_NODE_ID_BYTES} bytes, got {}",
                self.node_id.len()
            );
        }
        if self.workers == Some(0) {
            bail!("workers must be at least 1");
        }
        if let Some(workers) = self.workers.filter(|w| *w > MAX_WORKERS) {
            bail!("workers must be at most {MAX_WORKERS}, got {workers}");
        }
        let replication = &self.replication;
        if replication.replica_timeout.is_zero() {
            bail!("replica_timeout must be greater than zero");
        }
        let most = crate::replication::MAX_REPLICA_STREAM_IN_FLIGHT;
        if replication.replica_stream_in_flight > most {
            bail!(
                "replica_stream_in_flight is {}, more than {most} (what a node reads from one \
                 stream at once)",
                replication.replica_stream_in_flight
            );
        }
        let grace = Duration::from_millis(self.store.tombstone_grace_ms);
        if self.replication_factor.get() > 1 && replication.hint_max_age >= grace {
            bail!(
                "hint_max_age ({:?}) must be shorter than tombstone_grace ({grace:?}), or a replayed \
                 hint could bring back a key deleted after it",
                replication.hint_max_age
            );
        }
        if self.rebalance_yield > MAX_REBALANCE_YIELD {
            bail!(
                "rebalance_yield must be at most {MAX_REBALANCE_YIELD:?} (0 turns yielding off), \
                 got {:?}",
                self.rebalance_yield
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

    /// Checks the lease and serve-stale settings.
    fn validate_leases(&self) -> anyhow::Result<()> {
        use crate::lease::{MAX_MAX_TTL, MAX_MAX_WAIT, MAX_SERVE_STALE};
        let leases = &self.leases;
        if !(1..=10_000_000).contains(&leases.max_leases) {
            bail!(
                "lease_max_leases must be between 1 and 10000000, got {}",
                leases.max_leases
            );
        }
        if !(1..=1_000_000).contains(&leases.max_waiters) {
            bail!(
                "lease_max_waiters must be between 1 and 1000000, got {}",
                leases.max_waiters
            );
        }
        if !(Duration::from_millis(1)..=MAX_MAX_TTL).contains(&leases.max_ttl) {
            bail!(
                "lease_max_ttl must be between 1ms and 1h, got {}",
                humantime::format_duration(leases.max_ttl)
            );
        }
        if leases.max_wait > MAX_MAX_WAIT {
            bail!(
                "lease_max_wait must be at most 30s, got {}",
                humantime::format_duration(leases.max_wait)
            );
        }
        if leases.serve_stale > MAX_SERVE_STALE {
            bail!(
                "serve_stale must be at most 24h, got {}",
                humantime::format_duration(leases.serve_stale)
            );
        }
        Ok(())
    }

    /// Checks the near-cache tracking bounds.
    fn validate_tracking(&self) -> anyhow::Result<()> {
        use crate::tracking::{
            MAX_MAX_BYTES, MAX_MAX_KEYS, MAX_MAX_SUBSCRIBERS, MAX_QUEUE_BYTES, MIN_MAX_BYTES,
            MIN_QUEUE_BYTES,
        };
        let t = &self.tracking;
        for (name, value, max) in [
            ("tracking_max_keys", t.max_keys, MAX_MAX_KEYS),
            (
                "tracking_max_subscribers",
                t.max_subscribers,
                MAX_MAX_SUBSCRIBERS,
            ),
        ] {
            if !(1..=max).contains(&value) {
                bail!("{name} must be between 1 and {max}, got {value}");
            }
        }
        for (name, value, min, max) in [
            (
                "tracking_max_bytes",
                t.max_bytes,
                MIN_MAX_BYTES,
                MAX_MAX_BYTES,
            ),
            (
                "tracking_queue_bytes",
                t.queue_bytes,
                MIN_QUEUE_BYTES,
                MAX_QUEUE_BYTES,
            ),
        ] {
            if !(min..=max).contains(&value) {
                bail!(
                    "{name} must be between {} and {}, got {}",
                    bytesize::ByteSize(min).display().iec(),
                    bytesize::ByteSize(max).display().iec(),
                    bytesize::ByteSize(value).display().iec()
                );
            }
        }
        Ok(())
    }

    /// Checks the hot-key settings.
    fn validate_hot_keys(&self) -> anyhow::Result<()> {
        use crate::hotkeys::{
            MAX_CAPACITY, MAX_SAMPLE, MAX_THRESHOLD, MAX_WINDOW, MIN_CAPACITY, MIN_WINDOW,
        };
        let hot = &self.hot_keys;
        if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&hot.capacity) {
            bail!(
                "hot_keys_capacity must be between {MIN_CAPACITY} and {MAX_CAPACITY}, got {}",
                hot.capacity
            );
        }
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&hot.window) {
            bail!(
                "hot_keys_window must be between 1s and 1h, got {}",
                humantime::format_duration(hot.window)
            );
        }
        if !(1..=MAX_SAMPLE).contains(&hot.sample) {
            bail!(
                "hot_keys_sample must be between 1 and {MAX_SAMPLE}, got {}",
                hot.sample
            );
        }
        if hot.threshold > MAX_THRESHOLD {
            bail!(
                "hot_key_threshold must be between 0 and {MAX_THRESHOLD} reads/s, got {}",
                hot.threshold
            );
        }
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
        Self::layer(
            Cli {
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
                ..Cli::default()
            },
            FileConfig::default(),
        )
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

/// The security settings: `cli` over `file` over the defaults.
fn security_config(cli: &Cli, file: &FileConfig) -> anyhow::Result<SecurityConfig> {
    let pick = |a: &Option<PathBuf>, b: &Option<PathBuf>| a.clone().or_else(|| b.clone());
    let tls_cert = pick(&cli.tls_cert, &file.tls_cert);
    let tls_key = pick(&cli.tls_key, &file.tls_key);
    let tls_client_ca = pick(&cli.tls_client_ca, &file.tls_client_ca);
    let tls = match (tls_cert.clone(), tls_key.clone()) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            ca: tls_client_ca,
        }),
        (None, None) if tls_client_ca.is_none() => None,
        (None, None) => bail!("tls_client_ca needs tls_cert and tls_key"),
        (Some(_), None) => bail!("tls_cert needs tls_key"),
        (None, Some(_)) => bail!("tls_key needs tls_cert"),
    };
    let cluster_ca = pick(&cli.cluster_ca, &file.cluster_ca);
    let cluster_cert = pick(&cli.cluster_cert, &file.cluster_cert).or(tls_cert);
    let cluster_key = pick(&cli.cluster_key, &file.cluster_key).or(tls_key);
    let cluster_tls = match (cluster_ca, cluster_cert, cluster_key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            ca: Some(ca),
        }),
        (Some(_), _, _) => {
            bail!(
                "cluster_ca needs this node's certificate: set cluster_cert and cluster_key (or tls_cert and tls_key)"
            )
        }
        (None, _, _) => None,
    };
    let cluster_server_name = cli
        .cluster_server_name
        .clone()
        .or_else(|| file.cluster_server_name.clone())
        .unwrap_or_else(|| DEFAULT_CLUSTER_SERVER_NAME.to_owned());
    if rustls_pki_types::ServerName::try_from(cluster_server_name.as_str()).is_err() {
        bail!("cluster_server_name {cluster_server_name:?} is not a valid DNS name");
    }
    let max_header_list_bytes = cli
        .max_header_list_bytes
        .or(file.max_header_list_bytes)
        .map_or(16 * 1024, |b| b.0);
    if !(1024..=1024 * 1024).contains(&max_header_list_bytes) {
        bail!("max_header_list_bytes must be between 1KiB and 1MiB, got {max_header_list_bytes}");
    }
    let security = SecurityConfig {
        tls,
        cluster_tls,
        cluster_server_name,
        users_file: pick(&cli.users_file, &file.users_file),
        users: file.users.clone(),
        insecure: cli.insecure || file.insecure.unwrap_or(false),
        handshake_timeout: cli
            .handshake_timeout
            .or(file.handshake_timeout)
            .map_or(Duration::from_secs(10), |d| d.0),
        max_unauthenticated_connections: cli
            .max_unauthenticated_connections
            .or(file.max_unauthenticated_connections)
            .unwrap_or(1000),
        max_cluster_connections: cli
            .max_cluster_connections
            .or(file.max_cluster_connections)
            .unwrap_or(1024),
        max_concurrent_streams: cli
            .max_concurrent_streams
            .or(file.max_concurrent_streams)
            .unwrap_or(1024),
        max_header_list_bytes: u32::try_from(max_header_list_bytes).unwrap_or(u32::MAX),
        max_auth_failures: cli
            .max_auth_failures
            .or(file.max_auth_failures)
            .unwrap_or(20),
        idle_timeout: cli
            .idle_timeout
            .or(file.idle_timeout)
            .map(|d| d.0)
            .filter(|d| !d.is_zero()),
    };
    if security.handshake_timeout.is_zero() {
        bail!("handshake_timeout must be greater than zero");
    }
    if security.max_concurrent_streams == 0 {
        bail!("max_concurrent_streams must be at least 1");
    }
    crate::auth::Users::from_entries(&security.users).context("users in the config file")?;
    Ok(security)
}

/// The replication settings: `cli` over `file` over the defaults.
fn replication_config(cli: &Cli, file: &FileConfig) -> anyhow::Result<ReplicationConfig> {
    let defaults = ReplicationConfig::default();
    Ok(ReplicationConfig {
        write_consistency: cli
            .write_consistency
            .or(file.write_consistency)
            .map_or(defaults.write_consistency, Consistency::from),
        read_consistency: cli
            .read_consistency
            .or(file.read_consistency)
            .map_or(defaults.read_consistency, Consistency::from),
        replica_timeout: cli
            .replica_timeout
            .or(file.replica_timeout)
            .map_or(defaults.replica_timeout, |d| d.0),
        replica_stream_in_flight: cli
            .replica_stream_in_flight
            .or(file.replica_stream_in_flight)
            .unwrap_or(defaults.replica_stream_in_flight),
        hint_max_bytes_per_node: to_usize(
            "hint_max_bytes",
            cli.hint_max_bytes.or(file.hint_max_bytes).map(|b| b.0),
        )?
        .unwrap_or(defaults.hint_max_bytes_per_node),
        hint_max_age: cli
            .hint_max_age
            .or(file.hint_max_age)
            .map_or(defaults.hint_max_age, |d| d.0),
        min_cluster_size: cli
            .min_cluster_size
            .or(file.min_cluster_size)
            .unwrap_or(defaults.min_cluster_size),
    })
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn to_usize(name: &str, value: Option<u64>) -> anyhow::Result<Option<usize>> {
    value
        .map(|v| {
            usize::try_from(v)
                .with_context(|| format!("{name} of {v} bytes is too large for this machine"))
        })
        .transpose()
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
        let file: FileConfig = toml::from_str(
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
        let file: FileConfig = toml::from_str(r#"zone = "eu-west-1a""#).unwrap();
        assert_eq!(
            Config::layer(Cli::default(), file).unwrap().zone.as_deref(),
            Some("eu-west-1a")
        );
        let file: FileConfig = toml::from_str(r#"zone = "eu-west-1a""#).unwrap();
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
            toml::from_str::<FileConfig>("max_memroy = 5").is_err(),
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

        let file: FileConfig = toml::from_str(
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
        let file: FileConfig = toml::from_str(r#"anti_entropy_interval = "30s""#).unwrap();
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
        let file: FileConfig =
            toml::from_str("resp_port = 6380\nresp_idle_timeout = \"5m\"").unwrap();
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
        let file: FileConfig = toml::from_str(
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
        let file: FileConfig = toml::from_str(r#"rebalance_yield = "2ms""#).unwrap();
        let config = Config::layer(Cli::default(), file).unwrap();
        assert_eq!(config.rebalance_yield, Duration::from_millis(2));
        let file: FileConfig = toml::from_str(r#"rebalance_yield = "2ms""#).unwrap();
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
        let file: FileConfig = toml::from_str(
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
        let file: FileConfig = toml::from_str(r#"max_clock_drift = "5s""#).unwrap();
        let config = Config::layer(Cli::default(), file).unwrap();
        assert_eq!(
            config.store.max_clock_drift_ms, 5_000,
            "file wins over default"
        );
        let file: FileConfig = toml::from_str(r#"max_clock_drift = "5s""#).unwrap();
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
        let file: FileConfig = toml::from_str(
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
        let file: FileConfig = toml::from_str(&format!(
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

        let file: FileConfig = toml::from_str(
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
        let file: FileConfig = toml::from_str(
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

        let file: FileConfig = toml::from_str(
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
