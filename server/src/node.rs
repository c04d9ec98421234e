//! A running node: the store, its metrics and state, and the servers in front of them.
//!
//! [`Node::serve`] and [`Node::serve_with_incoming`] take their listeners (or incoming connection
//! stream) and a shutdown future from the caller, so tests run nodes on port 0 and simulations can
//! plug in their own network. Shutdown is graceful: new connections stop, in-flight requests and
//! open topology streams end, background tasks stop; after `shutdown_timeout` the node stops waiting.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::RwLock;

use anyhow::Context as _;
use ringcache_proto::topology::{Member, NodeState, Topology};
use ringcache_proto::v1::{
    self, admin_server::AdminServer, cache_server::CacheServer, cluster_server::ClusterServer,
    internal_server::InternalServer,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;
use tracing::{Instrument as _, Span};

use crate::antientropy::AntiEntropyStats;
use crate::api::auth::AuthState;
use crate::api::{
    AdminService, AuthLayer, CacheService, ClusterService, DigestLayer, HealthService,
    InternalService,
};
use crate::auth::{FailureLimiter, Users};
use crate::clock::{Clock, SystemClock};
use crate::cluster::{
    ClusterSettings, Encryption, GossipSocket, GossipStatsSnapshot, Keyring, Membership,
    MembershipConfig, MembershipHandle, MetaState, NodeIdentity, NodeMeta,
};
use crate::config::{Config, ShutdownMode};
use crate::connections::{AcceptPolicy, ActivityLayer, Connections, RemoteAddr, secure_incoming};
use crate::context::Context;
use crate::http;
use crate::known::{ForgetError, KnownMembers, Quorum};
use crate::member_log::MemberLog;
use crate::metrics::Metrics;
use crate::readiness::SeedState;
use crate::rebalance::{RebalanceStats, run_rebalancer};
use crate::reload::{ReloadCause, watch_files};
use crate::replication::{Replicator, replay_hints_task};
use crate::seeds::{SeedResolver, SystemResolver};
use crate::skew::ClockCheck;
use crate::snapshot::{LoadOutcome, SnapshotError, SnapshotInfo, WriteOptions};
use crate::store::Store;
use crate::tls::{PeerTls, ReloadableTls};
use crate::view::{ClusterView, Peers};

/// Expired entries reclaimed per shard per pass of the expiry task.
const EXPIRY_BUDGET_PER_SHARD: usize = 256;
/// Passes the expiry task may run back to back before it yields to the next tick.
const EXPIRY_MAX_PASSES: usize = 16;
/// Longest wait for a TCP connection to a peer.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Probe intervals between two clock checks against the peers (10 s by default).
const CLOCK_CHECK_PROBES: u32 = 10;
/// The gRPC services of the client port, as reflection lists them.
const CLIENT_PLANE_SERVICES: [&str; 6] = [
    "ringcache.v1.Cache",
    "ringcache.v1.Cluster",
    "ringcache.v1.Admin",
    crate::api::health::HEALTH_SERVICE,
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];
/// How often recorded histogram samples are folded into buckets.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// One ringcache node.
#[derive(Debug)]
pub struct Node {
    /// What the data path needs (store, view, peers, clock, metrics, settings); the node derefs
    /// to it.
    ctx: Arc<Context>,
    started: Instant,
    incarnation: u64,
    /// The digest of `view`, read by the response layer without touching the channel.
    digest: Arc<AtomicU64>,
    /// Addresses this node advertises (known once it serves).
    advertised: RwLock<Advertised>,
    /// Set once a topology came from outside (membership, or by hand): the node stops publishing
    /// its own single-member topology.
    external_topology: AtomicBool,
    /// The running membership, once serving with a gossip socket.
    membership: OnceLock<MembershipHandle>,
    /// Seeds the gossip core's RNG when set (a simulation replays a seed); else a random seed.
    gossip_rng_seed: OnceLock<u64>,
    /// Cancelled by [`Node::crash`]: stop at once, leave nothing gracefully (tests of failures).
    crash: CancellationToken,
    /// Stops gossip: cancelled after the hand-off of a graceful shutdown, so the node stays a
    /// visible (Leaving) member while it hands off.
    gossip_stop: CancellationToken,
    /// Open connections on the gRPC listener and the `max_connections` cap.
    connections: Arc<Connections>,
    /// Client-port connections not authenticated yet, and their cap.
    unauthenticated: Arc<Connections>,
    /// Open connections on the cluster port and their cap.
    cluster_connections: Arc<Connections>,
    /// Wakes the users and TLS watcher (SIGHUP).
    reload_requested: Arc<tokio::sync::Notify>,
    /// Users and failure counts, when authentication is configured (set when serving starts).
    auth: OnceLock<Arc<AuthState>>,
    /// TLS of the client port, when configured.
    client_tls: OnceLock<Arc<ReloadableTls>>,
    /// Mutual TLS of the cluster port, when configured.
    cluster_tls: OnceLock<Arc<ReloadableTls>>,
    /// The RESP listener between [`Node::serve`] and the loading of users and TLS: it starts
    /// serving only once they are loaded.
    resp_listener: parking_lot::Mutex<Option<TcpListener>>,
    /// Set once the listeners serve and gossip has started (readiness: `starting` before).
    serving: AtomicBool,
    /// What the seeds resolved to, until the node turned Active ([`crate::seeds`]).
    seeds: watch::Sender<SeedState>,
    /// Resolves the seeds' names (the system's resolver unless set).
    seed_resolver: OnceLock<Arc<dyn SeedResolver>>,
    /// Another live member has been in the view since start (latched).
    joined: AtomicBool,
    /// Why this node refused to join the cluster it found (other placement settings).
    join_refused: parking_lot::Mutex<Option<String>>,
    /// When the view last changed (readiness waits `ready_settle` after it).
    view_changed_at: parking_lot::Mutex<Instant>,
    /// Notified by [`Node::reload_secrets`] (SIGHUP): the secrets watcher reloads at once.
    secrets_reload: Arc<Notify>,
    /// Every member that owned ranges and has not left on purpose (minority protection).
    known: parking_lot::Mutex<KnownMembers>,
    /// Logs the member state changes between consecutive views (see [`crate::member_log`]).
    member_log: parking_lot::Mutex<MemberLog>,
    /// How a requested stop ends, once one was requested ([`Node::leave`], [`Node::restart`]);
    /// a stop from a signal follows `shutdown_mode`.
    stop: parking_lot::Mutex<Option<Stop>>,
    /// The version this node's data was current at when it was loaded from a snapshot at start
    /// (a warm restart): it pulls only newer entries from its co-replicas.
    warm_since: OnceLock<u64>,
    /// Held by the blocking thread that writes a snapshot: one write at a time.
    snapshot_lock: Arc<parking_lot::Mutex<()>>,
    /// Paces periodic snapshots like data movement: at most `--snapshot-rate`, slower while
    /// requests wait for a CPU longer than `--rebalance-yield`.
    snapshot_pacer: Arc<crate::rebalance::pace::Pacer>,
    /// `node{id=...}`: everything the node runs, and so every line it logs, is inside it
    /// (see [`crate::logging`]).
    span: Span,
}

/// How a stop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Hand every key to the other nodes and leave the cluster.
    Drain,
    /// Keep the data in a snapshot and let the cluster keep this node's ranges for the restart
    /// grace.
    Restart,
}

/// Why [`Node::restart`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestartRefused {
    /// The node has no data directory to keep its data in.
    #[error(
        "this node has no data directory (--data-dir): it cannot keep its data across a restart; drain it instead"
    )]
    NoDataDir,
    /// The node is already stopping.
    #[error("the node is already stopping ({0})")]
    AlreadyStopping(&'static str),
}

impl std::ops::Deref for Node {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

#[derive(Debug, Clone)]
struct Advertised {
    grpc_addr: String,
    http_addr: String,
    cluster_addr: String,
    resp_addr: String,
}

/// The listeners a node serves on.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC for clients (Cache, Cluster, Admin, health, reflection).
    pub grpc: TcpListener,
    /// gRPC for other nodes (Internal, forwarded Cache calls); `None` for a node that talks to
    /// no peer (a lone node).
    pub cluster: Option<TcpListener>,
    /// HTTP (`/metrics`, `/health/*`); `None` to serve no HTTP.
    pub http: Option<TcpListener>,
    /// The Redis protocol (RESP); `None` for none.
    pub resp: Option<TcpListener>,
    /// Gossip (UDP); `None` to run without membership (a lone node, or a static topology set
    /// with [`Node::set_topology`]).
    pub gossip: Option<UdpSocket>,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(config.grpc_addr())
            .await
            .with_context(|| format!("cannot bind the gRPC port {}", config.grpc_addr()))?;
        let http = TcpListener::bind(config.http_addr())
            .await
            .with_context(|| format!("cannot bind the HTTP port {}", config.http_addr()))?;
        let cluster = TcpListener::bind(config.cluster_addr())
            .await
            .with_context(|| format!("cannot bind the cluster port {}", config.cluster_addr()))?;
        let gossip_addr = SocketAddr::new(config.bind, config.gossip_port);
        let gossip = UdpSocket::bind(gossip_addr)
            .await
            .with_context(|| format!("cannot bind the gossip port {gossip_addr} (UDP)"))?;
        let resp = match config.resp_addr() {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind the RESP port {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            grpc,
            cluster: Some(cluster),
            http: Some(http),
            resp,
            gossip: Some(gossip),
        })
    }
}

impl Node {
    /// A node with the system clock.
    pub fn new(config: Config) -> Arc<Self> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A node reading time from `clock` (tests drive TTLs with a manual clock).
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Arc<Self> {
        let incarnation = clock.now_ms();
        let span = crate::logging::node_span(&config.node_id);
        let serve_stale_ms =
            u64::try_from(config.leases.serve_stale.as_millis()).unwrap_or(u64::MAX);
        let store = Store::new(config.store.clone()).with_serve_stale_ms(serve_stale_ms);
        let (state, _) = watch::channel(v1::NodeState::Active);
        let (view, _) = watch::channel(Arc::new(ClusterView::new(
            Topology::new(vec![], 1, 1),
            Quorum::alone(),
        )));
        let advertised = RwLock::new(Advertised {
            grpc_addr: config.grpc_addr().to_string(),
            http_addr: config.http_addr().to_string(),
            cluster_addr: config.cluster_addr().to_string(),
            resp_addr: String::new(),
        });
        let replicator = Replicator::new(&config.replication);
        let peers = Peers::new(config.max_message_bytes, PEER_CONNECT_TIMEOUT, config.bind);
        let connections = Connections::new(config.max_connections);
        let unauthenticated = Connections::new(config.security.max_unauthenticated_connections);
        let cluster_connections = Connections::new(config.security.max_cluster_connections);
        let config_leases = config.leases;
        let hot_keys = crate::hotkeys::HotKeys::new(config.hot_keys)
            .with_max_key_bytes(config.store.max_key_bytes)
            .with_replicas(config.replication_factor.get());
        // One switch for every observer of the store: non-zero while a tracking stream is open
        // or a lease is held (see `crate::observers`).
        let switch = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tracking = Arc::new(
            crate::tracking::Tracking::new(config.tracking).with_switch(Arc::clone(&switch)),
        );
        let leases =
            Arc::new(crate::lease::Leases::new(config_leases).with_switch(Arc::clone(&switch)));
        store.observe(
            switch,
            Arc::new(crate::observers::Observers::new(
                Arc::clone(&tracking),
                Arc::clone(&leases),
            )),
        );
        let ctx = Arc::new(Context {
            config,
            store,
            metrics: Metrics::new(),
            clock,
            state,
            view,
            peers,
            replicator,
            rebalance: RebalanceStats::default(),
            anti_entropy: AntiEntropyStats::default(),
            clock_check: ClockCheck::default(),
            shutdown: CancellationToken::new(),
            span: span.clone(),
            hot_keys,
            leases,
            tracking,
        });
        let node = Arc::new(Self {
            ctx,
            started: Instant::now(),
            incarnation,
            digest: Arc::new(AtomicU64::new(0)),
            advertised,
            external_topology: AtomicBool::new(false),
            membership: OnceLock::new(),
            gossip_rng_seed: OnceLock::new(),
            crash: CancellationToken::new(),
            gossip_stop: CancellationToken::new(),
            connections,
            unauthenticated,
            cluster_connections,
            reload_requested: Arc::new(tokio::sync::Notify::new()),
            auth: OnceLock::new(),
            client_tls: OnceLock::new(),
            cluster_tls: OnceLock::new(),
            resp_listener: parking_lot::Mutex::new(None),
            serving: AtomicBool::new(false),
            seeds: watch::Sender::new(SeedState::Founder),
            seed_resolver: OnceLock::new(),
            joined: AtomicBool::new(false),
            join_refused: parking_lot::Mutex::new(None),
            view_changed_at: parking_lot::Mutex::new(Instant::now()),
            secrets_reload: Arc::new(Notify::new()),
            known: parking_lot::Mutex::new(KnownMembers::new()),
            member_log: parking_lot::Mutex::new(MemberLog::default()),
            stop: parking_lot::Mutex::new(None),
            warm_since: OnceLock::new(),
            snapshot_lock: Arc::new(parking_lot::Mutex::new(())),
            snapshot_pacer: Arc::default(),
            span,
        });
        node.span.in_scope(|| node.publish_single_node());
        node
    }

    /// The node's root span, `node{id=<node id>}` (see [`crate::logging`]): the node runs in
    /// it; a process that runs one node can also enter it on all its threads.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The data path's handles, for replication, rebalancing, anti-entropy and clock checks.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Seeds the gossip RNG with `seed` instead of a random one (deterministic simulations).
    /// Takes effect when serving starts; only the first call counts.
    pub fn set_gossip_rng_seed(&self, seed: u64) {
        let _ = self.gossip_rng_seed.set(seed);
    }

    /// Resolves seed names with `resolver` instead of the system's resolver (tests; a
    /// simulation). Takes effect when serving starts; only the first call counts.
    pub fn set_seed_resolver(&self, resolver: Arc<dyn SeedResolver>) {
        let _ = self.seed_resolver.set(resolver);
    }

    /// The resolver of seed names.
    pub(crate) fn seed_resolver(&self) -> Arc<dyn SeedResolver> {
        self.seed_resolver
            .get()
            .cloned()
            .unwrap_or_else(|| Arc::new(SystemResolver))
    }

    /// Records what the seeds resolved to (while Joining; see [`crate::seeds`]).
    pub(crate) fn record_seed_state(&self, state: SeedState) {
        self.seeds.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    /// What the seeds resolved to ([`SeedState`]).
    pub fn seed_state(&self) -> SeedState {
        self.seeds.borrow().clone()
    }

    /// Whether another live member has been in the view since start (latched).
    pub fn has_joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    /// Time since the node was created.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ready to serve (`/health/ready`): joined and its ring converged. See [`Node::readiness`].
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// `Ok` when ready, else why not: `starting`, `leaving`, `joining`, `not joined: no peer
    /// reachable`, or `ring settling` (the rules are in [`crate::readiness`]).
    pub fn readiness(&self) -> Result<(), String> {
        let view = self.view();
        let since_change = self.view_changed_at.lock().elapsed();
        crate::readiness::check(&crate::readiness::Inputs {
            serving: self.serving.load(Ordering::Acquire),
            shutting_down: self.shutdown.is_cancelled(),
            state: self.state(),
            seeds: self.seeds.borrow().clone(),
            joined: self.joined.load(Ordering::Acquire),
            node_id: &self.config.node_id,
            members: view.topology.members(),
            since_change,
            settle: self.config.ready_settle,
            clock_skew: self
                .clock_check
                .refusal(self.config.store.max_clock_drift_ms),
            join_refused: self.join_refused.lock().clone(),
        })
    }

    /// Open connections on the gRPC listener, and how many were refused at the cap.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Takes a place among the open connections (`max_connections`, shared with gRPC), or
    /// `None` at the cap (counted as rejected).
    pub(crate) fn admit_connection(&self) -> Option<crate::connections::Slot> {
        self.connections.admit()
    }

    /// Takes a place among the connections not authenticated yet (shared by the gRPC client
    /// port and the RESP port), or `None` at the cap (counted).
    pub(crate) fn admit_unauthenticated(&self) -> Option<crate::connections::Slot> {
        self.unauthenticated.admit()
    }

    /// TLS of the client port (and the RESP port), when configured.
    pub(crate) fn client_tls(&self) -> Option<&Arc<ReloadableTls>> {
        self.client_tls.get()
    }

    /// Client-port connections that have not authenticated yet.
    pub fn unauthenticated_connections(&self) -> &Connections {
        &self.unauthenticated
    }

    /// Open connections on the cluster port.
    pub fn cluster_connections(&self) -> &Connections {
        &self.cluster_connections
    }

    /// Users and failure counts, when authentication is configured.
    pub fn auth(&self) -> Option<&Arc<AuthState>> {
        self.auth.get()
    }

    /// Whether this node serves a non-loopback address without the protections
    /// [`Config::check_secure_bind`] asks for (allowed by `--insecure`).
    pub fn is_insecure(&self) -> bool {
        // Serving implies every configured file loaded, so the config tells what is missing.
        !self.config.bind.is_loopback() && !self.config.missing_protections().is_empty()
    }

    /// Loads users and TLS files. Called once before serving; an error stops the start.
    fn load_security(&self) -> anyhow::Result<()> {
        let security = &self.config.security;
        if security.auth_configured() {
            let users = self.read_users()?;
            let _ = self.auth.set(Arc::new(AuthState::new(
                users,
                FailureLimiter::new(security.max_auth_failures),
            )));
        }
        if let Some(files) = &security.tls {
            let tls = ReloadableTls::load(files.clone()).context("client TLS")?;
            let _ = self.client_tls.set(Arc::new(tls));
        }
        if let Some(files) = &security.cluster_tls {
            let tls = ReloadableTls::load(files.clone()).context("cluster TLS")?;
            let _ = self.cluster_tls.set(Arc::new(tls));
            let peer =
                PeerTls::load(files, &security.cluster_server_name).context("cluster TLS")?;
            self.peers.set_tls(peer);
        }
        Ok(())
    }

    /// The files [`Node::reload_secrets`] reads.
    fn secret_files(&self) -> Vec<std::path::PathBuf> {
        let security = &self.config.security;
        let mut paths: Vec<std::path::PathBuf> = security.users_file.iter().cloned().collect();
        for files in security.tls.iter().chain(&security.cluster_tls) {
            paths.push(files.cert.clone());
            paths.push(files.key.clone());
            paths.extend(files.ca.clone());
        }
        paths.sort();
        paths.dedup();
        paths
    }

    /// The users of the config file and the users file.
    fn read_users(&self) -> anyhow::Result<Users> {
        let security = &self.config.security;
        let mut entries = security.users.clone();
        if let Some(path) = &security.users_file {
            entries.extend(Users::load_file(path)?);
        }
        Users::from_entries(&entries)
    }

    /// Re-reads the users file and the TLS files now (the watcher calls it when they change;
    /// [`Node::reload_secrets`] on SIGHUP). What fails to load keeps its current value; the
    /// errors are returned together.
    pub fn reload_tls_and_users(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if let Some(auth) = self.auth.get() {
            match self.read_users() {
                Ok(users) => auth.replace_users(users),
                Err(error) => errors.push(format!("users: {error:#}")),
            }
        }
        if let Some(tls) = self.client_tls.get()
            && let Err(error) = tls.reload()
        {
            errors.push(format!("client TLS: {error:#}"));
        }
        if let Some(tls) = self.cluster_tls.get() {
            if let Err(error) = tls.reload() {
                errors.push(format!("cluster TLS: {error:#}"));
            }
            match PeerTls::load(tls.files(), &self.config.security.cluster_server_name) {
                Ok(peer) => self.peers.set_tls(peer),
                Err(error) => errors.push(format!("cluster TLS (as a client): {error:#}")),
            }
        }
        self.metrics.record_secrets_reload(errors.is_empty());
        if errors.is_empty() {
            tracing::info!("users and TLS files reloaded");
            Ok(())
        } else {
            for error in &errors {
                tracing::warn!(%error, "reload failed; keeping the previous value");
            }
            Err(errors)
        }
    }

    /// The current topology, in wire form.
    pub fn topology(&self) -> v1::Topology {
        self.view.borrow().wire.clone()
    }

    /// Replaces the topology (from membership, or set by hand for static clusters and tests).
    /// Views with an unchanged digest are not republished.
    pub fn set_topology(&self, topology: Topology) {
        let _entered = self.span.enter();
        self.external_topology.store(true, Ordering::Release);
        self.replace_topology(topology);
    }

    fn replace_topology(&self, topology: Topology) {
        if topology.digest() == self.digest.load(Ordering::Acquire)
            && !self.view.borrow().topology.members().is_empty()
        {
            return;
        }
        self.peers.retain(&topology);
        self.replicator.retain_links(&topology);
        self.digest.store(topology.digest(), Ordering::Release);
        *self.view_changed_at.lock() = Instant::now();
        let peer_alive = topology.members().iter().any(|m| {
            m.node_id != self.config.node_id
                && matches!(
                    m.state,
                    NodeState::Joining | NodeState::Active | NodeState::Leaving
                )
        });
        if peer_alive {
            self.joined.store(true, Ordering::Release);
        }
        // Under the lock until the view is sent, so a concurrent `forget` cannot interleave.
        let mut known = self.known.lock();
        known.observe(topology.members());
        // Another copy of a key can exist only where another member is (or was) a replica.
        let others = topology
            .members()
            .iter()
            .any(|m| m.node_id != self.config.node_id && m.state != NodeState::Left);
        self.store()
            .set_tombstones_needed(others || known.len() > 1);
        let quorum = Quorum::of(&known, topology.members());
        tracing::debug!(
            digest = topology.digest(),
            members = topology.members().len(),
            known = quorum.known,
            alive = quorum.alive,
            "new topology"
        );
        let previous = Arc::clone(&self.view.borrow());
        self.member_log.lock().log(
            Instant::now(),
            &self.config.node_id,
            previous.topology.members(),
            topology.members(),
        );
        self.view
            .send_replace(Arc::new(ClusterView::new(topology, quorum)));
        drop(known);
    }

    /// Forgets a member that is gone for good (`ringctl forget`): it no longer counts in the
    /// known cluster size that QUORUM and ALL are measured against ([`crate::known`]). Refused
    /// while the member is alive in this node's view.
    pub fn forget(&self, node_id: &str) -> Result<(), ForgetError> {
        let mut known = self.known.lock();
        let view = self.view();
        known.forget(node_id, view.topology.members())?;
        let quorum = Quorum::of(&known, view.topology.members());
        tracing::info!(member = node_id, known = quorum.known, "member forgotten");
        self.view
            .send_replace(Arc::new(ClusterView::new(view.topology.clone(), quorum)));
        Ok(())
    }

    /// The ids of the members this node counts in the cluster's known size.
    pub fn known_members(&self) -> Vec<String> {
        self.known.lock().ids().map(str::to_owned).collect()
    }

    /// How complete the cluster is in this node's view: see [`ClusterHealth`].
    pub fn cluster_health(&self) -> ClusterHealth {
        let known = self.known.lock().len();
        ClusterHealth::of(&self.view(), known, self.config.expected_nodes)
    }

    /// This node as a topology member, with the addresses it serves on.
    pub fn self_member(&self) -> Member {
        let config = &self.config;
        let advertised = self.advertised.read().clone();
        Member {
            node_id: config.node_id.clone(),
            incarnation: self.incarnation,
            state: NodeState::try_from(self.state() as i32).unwrap_or(NodeState::Active),
            weight: config.weight.get(),
            grpc_addr: advertised.grpc_addr,
            gossip_addr: config
                .advertised(SocketAddr::new(config.bind, config.gossip_port))
                .to_string(),
            http_addr: advertised.http_addr,
            cluster_addr: advertised.cluster_addr,
            resp_addr: advertised.resp_addr,
            zone: config.zone.clone(),
        }
    }

    /// Starts a graceful leave: the node turns `Leaving` and shuts down once in-flight requests end.
    pub fn leave(&self) {
        let _entered = self.span.enter();
        {
            let mut stop = self.stop.lock();
            if stop.is_none() {
                *stop = Some(Stop::Drain);
            }
        }
        self.enter_leaving("drain");
        self.publish_single_node();
        self.shutdown.cancel();
    }

    /// Starts a stop for a quick restart (`ringctl drain --restart`): once in-flight requests
    /// end, the node turns `Restarting` (its peers keep its ranges for their restart grace),
    /// writes its data to a snapshot in its data directory, leaves gossip and stops, handing
    /// nothing off. Started again with the same node id and data directory, it loads the
    /// snapshot and pulls only what changed meanwhile. Refused without a data directory or when
    /// a stop is already under way.
    pub fn restart(&self) -> Result<(), RestartRefused> {
        let _entered = self.span.enter();
        if self.config.snapshot.data_dir.is_none() {
            return Err(RestartRefused::NoDataDir);
        }
        {
            let mut stop = self.stop.lock();
            match *stop {
                Some(Stop::Drain) => return Err(RestartRefused::AlreadyStopping("draining")),
                Some(Stop::Restart) => return Err(RestartRefused::AlreadyStopping("restarting")),
                None if self.shutdown.is_cancelled() => {
                    return Err(RestartRefused::AlreadyStopping("shutting down"));
                }
                None => *stop = Some(Stop::Restart),
            }
        }
        self.enter_restarting("drain --restart");
        self.shutdown.cancel();
        Ok(())
    }

    /// Whether the stop under way keeps the data for a restart: requested so, or a signal's
    /// stop with `shutdown_mode = restart` and a data directory.
    fn stops_for_restart(&self) -> bool {
        match *self.stop.lock() {
            Some(stop) => stop == Stop::Restart,
            None => {
                self.config.shutdown_mode == ShutdownMode::Restart
                    && self.config.snapshot.data_dir.is_some()
            }
        }
    }

    /// Turns the node `Restarting` and says so once.
    fn enter_restarting(&self, why: &'static str) {
        if self.state.send_replace(v1::NodeState::Restarting) != v1::NodeState::Restarting {
            tracing::info!(reason = %why, "node restarting");
        }
    }

    /// Turns the node `Leaving` and says so once (`why`: `drain` for a requested leave,
    /// `shutdown` for a signal or the shutdown future).
    fn enter_leaving(&self, why: &'static str) {
        if self.state.send_replace(v1::NodeState::Leaving) != v1::NodeState::Leaving {
            tracing::info!(reason = %why, "node leaving");
        }
    }

    /// Stops the node at once as if its process died: no graceful leave, no draining. For tests
    /// of failure detection and failover.
    pub fn crash(&self) {
        let _entered = self.span.enter();
        tracing::warn!("crashing on request: stopping without leaving");
        self.crash.cancel();
    }

    /// Re-reads the secret files (the gossip key ring) now instead of at the next
    /// `secrets_reload_interval` check; `ringcached` calls it on SIGHUP. Returns at once: the
    /// reload happens on the watcher task, and one that fails keeps the current secrets and
    /// logs why (`ringcache_secrets_reloads_total{result="failed"}`). Nothing happens when the
    /// node has no secret files.
    pub fn reload_secrets(&self) {
        self.secrets_reload.notify_one();
        self.reload_requested.notify_one();
    }

    /// Live members refused for their placement settings (R, vnodes, placement version): they
    /// are not in this node's view or ring.
    pub fn refused_members(&self) -> Vec<crate::cluster::RefusedMember> {
        self.membership
            .get()
            .map(|m| m.stats().refused())
            .unwrap_or_default()
    }

    /// Gossip traffic and member counts, when membership runs.
    pub fn gossip_stats(&self) -> Option<GossipStatsSnapshot> {
        self.membership.get().map(|m| m.stats().snapshot())
    }

    /// Publishes the one-member topology of a node alone.
    fn publish_single_node(&self) {
        if self.external_topology.load(Ordering::Acquire) {
            return;
        }
        let topology = Topology::new(
            vec![self.self_member()],
            self.config.replication_factor.get(),
            self.config.vnodes.get(),
        );
        self.replace_topology(topology);
    }

    /// Serves on bound TCP listeners until `shutdown` completes (or [`Node::leave`] is called).
    pub async fn serve(
        self: Arc<Self>,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let grpc_addr = listeners.grpc.local_addr()?;
        *self.resp_listener.lock() = listeners.resp;
        let incoming = TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
        let cluster = match listeners.cluster {
            Some(listener) => {
                let addr = listener.local_addr()?;
                Some((TcpIncoming::from(listener).with_nodelay(Some(true)), addr))
            }
            None => None,
        };
        self.serve_with_incoming(
            incoming,
            grpc_addr,
            cluster,
            listeners.http,
            listeners
                .gossip
                .map(|socket| Box::new(socket) as Box<dyn GossipSocket>),
            shutdown,
        )
        .await
    }

    /// Serves gRPC on any stream of connections: `incoming` is the client port (`grpc_addr`
    /// advertised for it), `cluster` the cluster port and its address; gossip on any
    /// [`GossipSocket`]. Runs in the node's span, and so do the tasks it spawns.
    pub async fn serve_with_incoming<I, IO, IE>(
        self: Arc<Self>,
        incoming: I,
        grpc_addr: SocketAddr,
        cluster: Option<(I, SocketAddr)>,
        http: Option<TcpListener>,
        gossip: Option<Box<dyn GossipSocket>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()>
    where
        I: Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + RemoteAddr + Unpin + Send + 'static,
        IE: std::fmt::Display + Send + 'static,
    {
        let span = self.span.clone();
        self.run(incoming, grpc_addr, cluster, http, gossip, shutdown)
            .instrument(span)
            .await
    }

    /// [`Node::serve_with_incoming`], inside the node's span.
    async fn run<I, IO, IE>(
        self: Arc<Self>,
        incoming: I,
        grpc_addr: SocketAddr,
        cluster: Option<(I, SocketAddr)>,
        http: Option<TcpListener>,
        gossip: Option<Box<dyn GossipSocket>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()>
    where
        I: Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + RemoteAddr + Unpin + Send + 'static,
        IE: std::fmt::Display + Send + 'static,
    {
        self.load_security()?;
        if self.config.snapshot.data_dir.is_some() {
            // Before anything serves (and before gossip: a node back with its data announces
            // itself Restarting, not Joining); a failed load leaves the store empty and is
            // logged.
            if let Ok(LoadOutcome::Loaded(info)) = self.load_snapshot().await {
                // What the node held then: every version it had seen, and (from its clock)
                // every write made anywhere before the snapshot began that reached it. The
                // drift bound is taken off where the pull asks for what is newer.
                let since = info
                    .start_version
                    .max(crate::store::Hlc::at_millis(info.created_at_ms));
                let _ = self.warm_since.set(since);
            }
        }
        let resp_listener = self.resp_listener.lock().take();
        if let Some(resp) = resp_listener {
            let addr = resp.local_addr()?;
            self.advertised.write().resp_addr = self.config.advertised(addr).to_string();
            tracing::info!(
                resp = %addr,
                tls = self.client_tls.get().is_some(),
                auth = self.auth.get().is_some(),
                "Redis protocol (RESP) serving"
            );
            crate::logging::spawn(crate::resp::serve(self.clone(), resp));
        }
        let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;
        {
            let mut advertised = self.advertised.write();
            advertised.grpc_addr = self.config.advertised(grpc_addr).to_string();
            if let Some(addr) = http_addr {
                advertised.http_addr = self.config.advertised(addr).to_string();
            }
            if let Some((_, addr)) = &cluster {
                advertised.cluster_addr = self.config.advertised(*addr).to_string();
            }
        }
        self.publish_single_node();
        let token = self.shutdown.clone();
        crate::logging::spawn({
            let token = token.clone();
            async move {
                tokio::select! {
                    () = shutdown => {
                        tracing::info!("shutdown requested");
                        token.cancel();
                    }
                    () = token.cancelled() => {}
                }
            }
        });
        let mut tasks = tokio::task::JoinSet::new();
        crate::logging::spawn_in(&mut tasks, expiry_task(self.clone()));
        crate::logging::spawn_in(&mut tasks, metrics_upkeep_task(self.clone()));
        crate::logging::spawn_in(&mut tasks, snapshot_task(self.clone()));
        crate::logging::spawn_in(&mut tasks, replay_hints_task(self.ctx.clone()));
        if let Some(listener) = http {
            crate::logging::spawn_in(&mut tasks, http::serve(self.clone(), listener));
        }
        let membership_task = match gossip {
            Some(socket) => Some(self.start_membership(socket, &mut tasks).await?),
            None => None,
        };

        // Reflection in both versions: v1, and v1alpha for clients that speak only it
        // (Python's grpcio-reflection, older grpcurl). Both list exactly the services this
        // port serves: not Internal (only the cluster port serves it), and both reflections.
        let reflection = || {
            CLIENT_PLANE_SERVICES.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .include_reflection_service(false)
                    .register_encoded_file_descriptor_set(ringcache_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(
                        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                    )
                    .register_encoded_file_descriptor_set(
                        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                    ),
                |builder, service| builder.with_service_name(*service),
            )
        };
        let reflection_v1 = reflection()
            .build_v1()
            .context("cannot build the gRPC reflection service (v1)")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("cannot build the gRPC reflection service (v1alpha)")?;
        let max_message = self.config.max_message_bytes;
        let cache = CacheServer::new(CacheService::new(self.clone()))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        // The client plane: no Internal service; every request authenticated when users are
        // configured.
        let client_router = self
            .grpc_server_builder()
            .trace_fn(self.request_span())
            .layer(DigestLayer::new(self.digest.clone()))
            .layer(self.activity_layer())
            .layer(AuthLayer::new(self.clone()))
            .add_service(cache.clone())
            .add_service(ClusterServer::new(ClusterService::new(self.clone())))
            .add_service(AdminServer::new(AdminService::new(self.clone())))
            .add_service(HealthServer::new(HealthService::new(self.clone())))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let security = &self.config.security;
        let client_policy = AcceptPolicy {
            open: self.connections.clone(),
            unauthenticated: Some(self.unauthenticated.clone()),
            tls: self.client_tls.get().cloned(),
            handshake_timeout: security.handshake_timeout,
            require_auth: self.auth.get().is_some(),
            idle_timeout: security.idle_timeout,
        };
        let client_incoming = secure_incoming(incoming, client_policy, token.clone());
        let client_server = crate::logging::spawn(
            client_router
                .serve_with_incoming_shutdown(client_incoming, token.clone().cancelled_owned()),
        );
        // The cluster plane: Internal and forwarded Cache calls, from peers only (mutual TLS
        // against the cluster CA when configured).
        let cluster_server = match cluster {
            Some((cluster_incoming, cluster_addr)) => {
                let cluster_router = self
                    .grpc_server_builder()
                    .trace_fn(self.request_span())
                    .layer(DigestLayer::new(self.digest.clone()))
                    .layer(self.activity_layer())
                    .add_service(cache)
                    .add_service(
                        InternalServer::new(InternalService::new(self.clone()))
                            .max_decoding_message_size(max_message)
                            .max_encoding_message_size(max_message),
                    );
                let cluster_policy = AcceptPolicy {
                    open: self.cluster_connections.clone(),
                    unauthenticated: None,
                    tls: self.cluster_tls.get().cloned(),
                    handshake_timeout: security.handshake_timeout,
                    require_auth: false,
                    idle_timeout: security.idle_timeout,
                };
                tracing::info!(cluster = %cluster_addr, mutual_tls = self.cluster_tls.get().is_some(), "cluster port serving");
                let incoming = secure_incoming(cluster_incoming, cluster_policy, token.clone());
                Some(crate::logging::spawn(
                    cluster_router
                        .serve_with_incoming_shutdown(incoming, token.clone().cancelled_owned()),
                ))
            }
            None => None,
        };
        let mut server = crate::logging::spawn(async move {
            let client = client_server.await;
            let cluster = match cluster_server {
                Some(task) => task.await,
                None => Ok(Ok(())),
            };
            match (client, cluster) {
                (Ok(Ok(())), Ok(Ok(()))) => Ok(()),
                (Ok(Err(error)), _) | (_, Ok(Err(error))) => Err(anyhow::Error::new(error)),
                (Err(error), _) | (_, Err(error)) => Err(anyhow::Error::new(error)),
            }
        });
        if self.is_insecure() {
            tracing::warn!(bind = %self.config.bind, "INSECURE: serving a non-loopback address without TLS, users, cluster TLS or gossip encryption (--insecure); anyone who reaches these ports can read, write and join");
        }
        watch_tls_and_users(&self);
        self.serving.store(true, Ordering::Release);
        tracing::info!(
            node_id = %self.config.node_id,
            grpc = %grpc_addr,
            http = http_addr.map(tracing::field::display),
            max_memory = self.config.store.max_memory_bytes,
            eviction = %self.config.store.eviction.as_str(),
            max_connections = self.config.max_connections,
            workers = tokio::runtime::Handle::current().metrics().num_workers(),
            "ringcached serving"
        );
        if self.state() == v1::NodeState::Active {
            // A node that joins says so once it has pulled its ranges (`join`).
            tracing::info!("node active");
        }
        // Biased: a shutdown also ends the server (it stops on `token`), and when both are
        // ready at once the shutdown must win, or the node would skip its Leaving/Restarting
        // announcement and say nothing of it.
        let result = tokio::select! {
            biased;
            () = self.crash.cancelled() => {
                server.abort();
                tasks.abort_all();
                if let Some(task) = membership_task {
                    task.abort();
                }
                token.cancel();
                return Ok(());
            }
            () = token.cancelled() => None,
            joined = &mut server => Some(joined),
        };
        let result = match result {
            Some(joined) => joined,
            None => {
                if self.stops_for_restart() {
                    self.enter_restarting("shutdown");
                } else {
                    self.enter_leaving("shutdown");
                }
                match tokio::time::timeout(self.config.shutdown_timeout, &mut server).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        tracing::warn!(
                            timeout = %humantime::format_duration(self.config.shutdown_timeout),
                            "in-flight requests did not finish in time; stopping anyway"
                        );
                        server.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        token.cancel();
        while tasks.join_next().await.is_some() {}
        let restart = self.stops_for_restart();
        if restart && membership_task.is_some() {
            self.announce(MetaState::Restarting).await;
        }
        // Requests have stopped: the snapshot holds everything this node acknowledged.
        let kept = self.write_stop_snapshot().await;
        if membership_task.is_some() && !(restart && kept) {
            if restart {
                tracing::warn!("no snapshot to restart from: handing the data off instead");
                self.enter_leaving("restart without a snapshot");
            }
            self.hand_off_before_leaving().await;
        }
        self.gossip_stop.cancel();
        if let Some(task) = membership_task {
            // The driver leaves the cluster gracefully once `gossip_stop` is cancelled.
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("gossip did not stop within 5 s");
            }
        }
        tracing::info!("node stopped");
        result
            .context("the gRPC server task failed")?
            .context("the gRPC server failed")
    }

    /// Request counting for the idle timeout, when there is one.
    fn activity_layer(&self) -> tower::util::Either<ActivityLayer, tower::layer::util::Identity> {
        match self.config.security.idle_timeout {
            Some(_) => tower::util::Either::Left(ActivityLayer),
            None => tower::util::Either::Right(tower::layer::util::Identity::new()),
        }
    }

    /// tonic's `trace_fn`: every gRPC request runs in the node's span (tonic serves each
    /// connection on a task of its own, outside any span).
    fn request_span(
        &self,
    ) -> impl Fn(&tonic::codegen::http::Request<()>) -> Span + Send + Sync + 'static {
        let span = self.span.clone();
        move |_| span.clone()
    }

    /// A tonic server with the node's HTTP/2 settings and limits.
    fn grpc_server_builder(&self) -> tonic::transport::Server {
        let security = &self.config.security;
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .max_concurrent_streams(Some(security.max_concurrent_streams))
            .http2_max_header_list_size(Some(security.max_header_list_bytes))
            .http2_max_pending_accept_reset_streams(Some(64))
    }
}

/// Re-reads the users and TLS files when they change (checked every
/// `secrets_reload_interval`; a Kubernetes Secret update swaps the files in place) and on
/// [`Node::reload_secrets`] (SIGHUP).
fn watch_tls_and_users(node: &Arc<Node>) {
    let paths = node.secret_files();
    if paths.is_empty() {
        return;
    }
    let weak = Arc::downgrade(node);
    watch_files(
        paths,
        node.config.secrets_reload_interval,
        Arc::clone(&node.reload_requested),
        node.shutdown.clone(),
        move |cause| {
            if let Some(node) = weak.upgrade() {
                tracing::info!(%cause, "reloading users and TLS files");
                let _ = node.reload_tls_and_users();
            }
        },
    );
}

impl Node {
    /// Announces `state` in this node's gossiped metadata (when it runs gossip).
    async fn announce(&self, state: MetaState) {
        if let Some(handle) = self.membership.get() {
            let advertised = self.advertised.read().clone();
            let meta = NodeMeta {
                grpc_addr: advertised.grpc_addr,
                http_addr: advertised.http_addr,
                cluster_addr: advertised.cluster_addr,
                resp_addr: advertised.resp_addr,
                weight: self.config.weight.get(),
                settings: cluster_settings(&self.config),
                state,
                zone: self.config.zone.clone(),
            };
            if let Err(error) = handle.set_meta(meta).await {
                tracing::warn!(%error, state = ?state, "could not announce the node's state");
            }
        }
    }

    /// Writes the snapshot of a graceful stop when the node has a data directory; returns
    /// whether one was written.
    async fn write_stop_snapshot(&self) -> bool {
        if self.config.snapshot.data_dir.is_none() {
            return false;
        }
        // Unthrottled: the stop waits for it. `write_snapshot` logs how it went.
        self.write_snapshot(None).await.is_ok()
    }

    /// The graceful part of a shutdown with membership: announce Leaving, then hand every entry
    /// to the replicas it has in the ring without this node (requests have stopped by now, so
    /// nothing written here can be missed). Bounded by `leave_timeout`.
    async fn hand_off_before_leaving(&self) {
        self.announce(MetaState::Leaving).await;
        let keys = self.store.stats().keys;
        if keys == 0 {
            return;
        }
        // `hand_off` logs its start and how it ended.
        let handed_off =
            tokio::time::timeout(self.config.leave_timeout, crate::rebalance::hand_off(self)).await;
        if handed_off.is_err() {
            tracing::warn!(
                kind = %"hand_off",
                timeout = %humantime::format_duration(self.config.leave_timeout),
                "rebalance did not finish within the leave timeout; leaving anyway"
            );
        }
    }

    /// Starts gossip on `socket`, joining through the configured seeds, and a task that turns
    /// every new member list into the node's topology. Returns the driver's task.
    async fn start_membership(
        self: &Arc<Self>,
        socket: Box<dyn GossipSocket>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let gossip_addr = self.config.advertised(socket.local_addr()?);
        let identity = NodeIdentity::new(&self.config.node_id, gossip_addr, self.incarnation)
            .context("invalid node id")?;
        let advertised = self.advertised.read().clone();
        // A node that joins an existing cluster is Joining until it has pulled its ranges.
        let joining = !self.config.seeds.is_empty();
        let meta = NodeMeta {
            grpc_addr: advertised.grpc_addr,
            http_addr: advertised.http_addr,
            cluster_addr: advertised.cluster_addr,
            resp_addr: advertised.resp_addr,
            weight: self.config.weight.get(),
            settings: cluster_settings(&self.config),
            // A node back from a restart with its data (a snapshot) stays in the ring while it
            // catches up: its ranges never move.
            state: match (joining, self.warm_since.get()) {
                (true, Some(_)) => MetaState::Restarting,
                (true, None) => MetaState::Joining,
                (false, _) => MetaState::Active,
            },
            zone: self.config.zone.clone(),
        };
        let config = membership_config(&self.config);
        let rng_seed = self
            .gossip_rng_seed
            .get()
            .copied()
            .unwrap_or_else(rand::random);
        let membership = Membership::new(config, identity, meta.clone(), rng_seed)
            .context("invalid membership settings")?;
        let encryption = match &self.config.gossip_keyring {
            Some(path) => Some(self.watch_keyring(path.clone())?),
            None => None,
        };
        // The seeds are resolved now and again later (crate::seeds): a name that does not
        // resolve yet is retried, never dropped.
        let first = if joining {
            let found =
                crate::seeds::resolve_all(&*self.seed_resolver(), &self.config.seeds, gossip_addr)
                    .await;
            if !found.failures.is_empty() {
                tracing::warn!(failures = %found.failures.join("; "), "cannot resolve seeds yet; retrying");
            }
            self.record_seed_state(found.state());
            found
        } else {
            crate::seeds::Resolution::default()
        };
        let resolved_seeds = first.others.len();
        self.external_topology.store(true, Ordering::Release);
        let (handle, task) = MembershipHandle::spawn(
            membership,
            socket,
            first.others.clone(),
            encryption,
            self.gossip_stop.clone(),
        );
        crate::logging::spawn_in(tasks, follow_members(self.clone(), handle.members()));
        if joining {
            crate::logging::spawn_in(
                tasks,
                crate::seeds::follow(self.clone(), handle.clone(), gossip_addr, first),
            );
        }
        crate::logging::spawn_in(
            tasks,
            run_rebalancer(self.ctx.clone(), self.config.probe_interval * 2),
        );
        crate::logging::spawn_in(
            tasks,
            crate::antientropy::run(self.ctx.clone(), self.config.anti_entropy_interval),
        );
        crate::logging::spawn_in(
            tasks,
            crate::skew::run(
                self.ctx.clone(),
                self.config.probe_interval * CLOCK_CHECK_PROBES,
            ),
        );
        tracing::info!(
            gossip = %gossip_addr,
            seeds = (!self.config.seeds.is_empty()).then(|| display(self.config.seeds.join(","))),
            "gossip started"
        );
        if joining {
            self.state.send_replace(v1::NodeState::Joining);
            tracing::info!(seeds = resolved_seeds, "node joining");
            crate::logging::spawn_in(tasks, join(self.clone(), handle.clone(), meta));
        }
        let _ = self.membership.set(handle);
        Ok(task)
    }

    /// Loads the gossip key ring from `path` and starts watching it: a changed file (checked
    /// every `secrets_reload_interval`) or [`Node::reload_secrets`] loads it again, and a
    /// valid new key ring reaches the gossip driver; an invalid one is logged and the current
    /// one stays.
    fn watch_keyring(self: &Arc<Self>, path: std::path::PathBuf) -> anyhow::Result<Encryption> {
        let keyring = Keyring::load(&path)?;
        tracing::info!(keys = %keyring, file = %path.display(), "gossip encryption on");
        let (keyring_tx, keyring_rx) = watch::channel(keyring);
        let encryption = Encryption::new(keyring_rx)
            .map_err(|_| anyhow::anyhow!("cannot draw a gossip instance id from the system RNG"))?;
        let node = Arc::clone(self);
        let reload = move |cause: ReloadCause| match Keyring::load(&path) {
            Ok(keyring) => {
                if *keyring_tx.borrow() == keyring {
                    tracing::info!(%cause, keys = %keyring, "gossip key ring reloaded, unchanged");
                } else {
                    tracing::info!(%cause, keys = %keyring, "gossip key ring reloaded");
                    keyring_tx.send_replace(keyring);
                }
                node.metrics.record_secrets_reload(true);
            }
            Err(error) => {
                tracing::error!(%cause, %error, "gossip key ring reload failed; keeping the current key ring");
                node.metrics.record_secrets_reload(false);
            }
        };
        watch_files(
            vec![self.config.gossip_keyring.clone().unwrap_or_default()],
            self.config.secrets_reload_interval,
            Arc::clone(&self.secrets_reload),
            self.shutdown.clone(),
            reload,
        );
        Ok(encryption)
    }

    /// Installs the topology of a member list from gossip.
    fn apply_members(&self, members: Vec<Member>) {
        let topology = Topology::new(
            members,
            self.config.replication_factor.get(),
            self.config.vnodes.get(),
        );
        // Gossip is bounded per datagram, not in total: a member list past the wire limits
        // (members, weights, ring size) is not installed, whoever sent it.
        if let Err(error) = topology.check_limits() {
            tracing::error!(%error, "member list over the topology limits; keeping the current view");
            return;
        }
        self.replace_topology(topology);
    }
}

/// How complete the cluster is, as one node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterHealth {
    /// Members the cluster should have: `--expected-nodes`, or the known members (every member
    /// that owned ranges, less the drained and the forgotten), whichever is larger.
    pub expected: usize,
    /// Members serving in the view (Active or Leaving).
    pub live: usize,
    /// Hash slots whose replica set has fewer live members than min(R, expected): copies the
    /// cluster should hold and does not (a dead or suspect replica, a missing member).
    pub under_replicated_slots: u64,
}

impl ClusterHealth {
    /// The health of `view`, with `known` members known and `expected_nodes` configured.
    pub fn of(view: &ClusterView, known: usize, expected_nodes: usize) -> Self {
        let serving = |state: NodeState| matches!(state, NodeState::Active | NodeState::Leaving);
        let members = view.topology.members();
        let live = members.iter().filter(|m| serving(m.state)).count();
        let expected = expected_nodes.max(known);
        let factor = usize::try_from(view.topology.replication_factor()).unwrap_or(usize::MAX);
        let wanted = factor.min(expected);
        let mut under_replicated_slots = 0u64;
        if view.ring.nodes().is_empty() {
            if wanted > 0 {
                under_replicated_slots = u64::from(ringcache_proto::placement::SLOTS);
            }
        } else {
            for (first, last, replicas) in view.ring.slot_ranges() {
                let live_replicas = replicas
                    .iter()
                    .filter(|id| view.topology.member(id).is_some_and(|m| serving(m.state)))
                    .count();
                if live_replicas < wanted {
                    under_replicated_slots += u64::from(last - first) + 1;
                }
            }
        }
        Self {
            expected,
            live,
            under_replicated_slots,
        }
    }
}

/// Why a joining node must not join, given the members it refused: some of them are serving
/// (Active or Leaving), so a cluster runs with other placement settings.
fn join_refusal(refused: &[crate::cluster::RefusedMember]) -> Option<String> {
    let serving: Vec<String> = refused
        .iter()
        .filter(|m| matches!(m.state, NodeState::Active | NodeState::Leaving))
        .map(|m| format!("{} has {}", m.node_id, m.reason))
        .collect();
    (!serving.is_empty()).then(|| {
        format!(
            "refused: this node's placement settings differ from the cluster's ({}); restart it \
             with the cluster's settings",
            serving.join("; ")
        )
    })
}

/// The settings every member must share, as this node has them (placement version 3 with a
/// zone, 2 without: see `ringcache_proto::placement::placement_versions_compatible`).
pub fn cluster_settings(config: &Config) -> ClusterSettings {
    ClusterSettings {
        replication_factor: config.replication_factor.get(),
        vnodes: config.vnodes.get(),
        placement_version: ringcache_proto::placement::placement_version(config.zone.is_some()),
    }
}

/// The gossip settings derived from the node's: the probe period, probe timeout and suspicion
/// timeout come from the config; the other periods scale with the probe period (1 s gives the
/// membership defaults).
fn membership_config(config: &Config) -> MembershipConfig {
    let period = config.probe_interval;
    MembershipConfig {
        probe_period: period,
        probe_rtt: config.probe_timeout,
        suspect_to_down_after: config.suspicion_timeout,
        suspect_to_down_max: config.suspicion_max_timeout,
        local_health_max: config.local_health_max,
        gossip_period: period / 5,
        reconnect_period: period,
        announce_period: period * 30,
        announce_to_down_period: period * 10,
        dead_retention: period * 30,
        restart_grace: config.restart_grace,
        ..MembershipConfig::default()
    }
}

/// Waits to see the cluster, pulls this node's future ranges from its members, then announces
/// the node Active so it enters the ring. While no seed resolves it waits without a bound (it
/// never founds a cluster of one on a DNS failure); once one does, or for a node whose seeds
/// are only itself, it waits at most 10 probe intervals for an active member.
async fn join(node: Arc<Node>, handle: MembershipHandle, mut meta: NodeMeta) {
    let deadline = node.config.probe_interval * 10;
    let mut members = handle.members();
    let node_id = node.config.node_id.clone();
    let sees_others = |members: &mut watch::Receiver<Vec<Member>>| {
        let node_id = node_id.clone();
        let mut members = members.clone();
        async move {
            loop {
                if members
                    .borrow_and_update()
                    .iter()
                    .any(|m| m.node_id != node_id && m.state == NodeState::Active)
                {
                    return;
                }
                if members.changed().await.is_err() {
                    return;
                }
            }
        }
    };
    let mut seeds = node.seeds.subscribe();
    if matches!(*seeds.borrow(), SeedState::Unresolved(_)) {
        tracing::warn!("no seed resolves yet: waiting to join (not founding a cluster of one)");
        let resolved = seeds.wait_for(|state| !matches!(state, SeedState::Unresolved(_)));
        tokio::select! {
            _ = resolved => {}
            () = sees_others(&mut members) => {}
            () = node.shutdown.cancelled() => return,
        }
    }
    if tokio::time::timeout(deadline, sees_others(&mut members))
        .await
        .is_err()
    {
        // A cluster whose members all run with other placement settings is not in the view:
        // joining it would start a second cluster beside it. Stay out, and say why.
        if let Some(why) = join_refusal(&handle.stats().refused()) {
            tracing::error!(reason = %why, "not joining the cluster");
            *node.join_refused.lock() = Some(why);
            node.metrics.record_join_refused();
            return;
        }
        tracing::warn!(
            waited = %humantime::format_duration(deadline),
            "no active member seen yet; joining without pulling data"
        );
    }
    // The first active member seen is usually the seed alone: let gossip bring the others
    // (until the list is quiet for half a probe interval, at most the join deadline), so the
    // pull is shared among all the members that hold data.
    let settle = node.config.probe_interval / 2;
    let _ = tokio::time::timeout(deadline, async {
        while let Ok(Ok(())) = tokio::time::timeout(settle, members.changed()).await {}
    })
    .await;
    let active: Vec<Member> = members
        .borrow()
        .iter()
        .filter(|m| m.state == NodeState::Active)
        .cloned()
        .collect();
    // Back from a restart with a snapshot: only what changed since it was taken (less the
    // clock drift bound, so a peer whose clock runs behind cannot stamp a missed write below
    // it). The rest of the range is in the snapshot.
    let since = node.warm_since.get().map(|&version| {
        version.saturating_sub(crate::store::Hlc::at_millis(
            node.config.store.max_clock_drift_ms,
        ))
    });
    let pulled = crate::rebalance::pull_ranges(&node, &active, since.unwrap_or(0)).await;
    meta.state = MetaState::Active;
    if let Err(error) = handle.set_meta(meta).await {
        tracing::warn!(%error, "could not announce the node active");
    }
    node.state.send_replace(v1::NodeState::Active);
    tracing::info!(keys_pulled = pulled, "node active");
}

/// Turns every member list into the node's topology until shutdown.
async fn follow_members(node: Arc<Node>, mut members: watch::Receiver<Vec<Member>>) {
    loop {
        let list = members.borrow_and_update().clone();
        if !list.is_empty() {
            node.apply_members(list);
        }
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            changed = members.changed() => if changed.is_err() { return },
        }
    }
}

impl Node {
    /// Writes the store to `<data_dir>/snapshot.rcs` on a blocking thread, at most `rate`
    /// bytes per second (`None` or `Some(0)`: unthrottled, as at shutdown), one write at a time
    /// (a second call waits for the first). Logs the outcome and records the metrics;
    /// [`SnapshotError::Disabled`] when no data directory is set.
    pub async fn write_snapshot(&self, rate: Option<u64>) -> Result<SnapshotInfo, SnapshotError> {
        self.write_snapshot_until(rate, None).await
    }

    /// [`Node::write_snapshot`] that stops, keeping the previous snapshot, when `cancel` is
    /// cancelled.
    async fn write_snapshot_until(
        &self,
        rate: Option<u64>,
        cancel: Option<CancellationToken>,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let Some(path) = self.config.snapshot.path() else {
            return Err(SnapshotError::Disabled);
        };
        let ctx = self.ctx.clone();
        let lock = self.snapshot_lock.clone();
        // A throttled (periodic) write also yields to requests, as data movement does; the one
        // at shutdown runs flat out.
        let yield_to = rate.filter(|&r| r > 0).map(|rate| {
            let pacer = self.snapshot_pacer.clone();
            let ctx = self.ctx.clone();
            crate::snapshot::YieldTo(Arc::new(move |bytes| {
                pacer.delay(
                    bytes,
                    ctx.metrics.handled_total(),
                    rate,
                    ctx.config.rebalance_yield,
                )
            }))
        });
        let background = yield_to.is_some();
        let write = move || {
            let _one_at_a_time = lock.lock();
            let options = WriteOptions {
                rate_bytes_per_sec: rate.unwrap_or(0),
                cancel,
                yield_to,
                ..WriteOptions::at(ctx.now_ms())
            };
            crate::snapshot::write(&ctx.store, &path, &ctx.config.node_id, &options)
        };
        let written = tokio::task::spawn_blocking(move || {
            if !background {
                return write();
            }
            // A periodic write runs on a thread of its own at the lowest CPU priority, so the
            // threads serving requests preempt it (the blocking pool's threads are shared and
            // could not get their priority back); the pool's thread waits for it, which also
            // tells tokio a blocking task is under way.
            std::thread::Builder::new()
                .name("snapshot".to_owned())
                .spawn(move || {
                    lower_thread_priority();
                    write()
                })
                .map_err(|error| SnapshotError::Task(error.to_string()))?
                .join()
                .unwrap_or_else(|_| {
                    Err(SnapshotError::Task(
                        "the snapshot thread panicked".to_owned(),
                    ))
                })
        })
        .await
        .unwrap_or_else(|e| Err(SnapshotError::Task(e.to_string())));
        match &written {
            Ok(info) => {
                self.metrics.record_snapshot_written(info, self.now_ms());
                let secs = info.duration.as_secs_f64();
                tracing::info!(
                    entries = info.entries,
                    bytes = info.bytes,
                    took_ms = info.duration.as_millis() as u64,
                    mb_per_s = %format!("{:.1}", info.bytes as f64 / 1e6 / secs.max(1e-6)),
                    path = %info.path.display(),
                    "snapshot written"
                );
            }
            Err(SnapshotError::Cancelled { .. }) => {
                tracing::info!("snapshot cancelled by shutdown; the previous one is kept");
            }
            Err(error) => {
                self.metrics.record_snapshot_failure();
                tracing::warn!(%error, "snapshot failed; the previous one is kept");
            }
        }
        written
    }

    /// Loads `<data_dir>/snapshot.rcs` into the store, which must still be empty (call it
    /// before the node serves). Logs the outcome (a failure: WARN, starting empty) and sets
    /// `ringcache_snapshot_loaded_entries`.
    pub async fn load_snapshot(&self) -> Result<LoadOutcome, SnapshotError> {
        let Some(path) = self.config.snapshot.path() else {
            return Err(SnapshotError::Disabled);
        };
        let ctx = self.ctx.clone();
        let (stale, loaded) = tokio::task::spawn_blocking(move || {
            let stale = crate::snapshot::remove_stale_temp_files(&path);
            let config = &ctx.config;
            let loaded = crate::snapshot::load(
                &ctx.store,
                &path,
                &config.node_id,
                ctx.now_ms(),
                config.snapshot.max_age,
            );
            (stale, loaded)
        })
        .await
        .unwrap_or_else(|e| (0, Err(SnapshotError::Task(e.to_string()))));
        if stale > 0 {
            tracing::info!(
                removed = stale,
                "temporary files of unfinished snapshots removed"
            );
        }
        match &loaded {
            Ok(LoadOutcome::Loaded(info)) => {
                self.metrics.set_snapshot_loaded(info.entries);
                tracing::info!(
                    entries = info.entries,
                    tombstones = info.tombstones,
                    skipped = info.skipped_expired + info.skipped_other,
                    age = %humantime::format_duration(Duration::from_secs(info.age.as_secs())),
                    took_ms = info.duration.as_millis() as u64,
                    "snapshot loaded"
                );
            }
            Ok(LoadOutcome::NoSnapshot) => {
                tracing::info!("no snapshot to load; starting empty");
            }
            Err(error) => {
                tracing::warn!(%error, "snapshot not loaded; starting empty");
            }
        }
        loaded
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19; on Linux a thread's own). Elsewhere,
/// where the priority is the whole process's, it does nothing.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::debug!(%error, "cannot lower the snapshot thread's priority");
    }
}

/// Writes a snapshot every `snapshot_interval`, throttled to `snapshot_rate`, until shutdown;
/// a write in progress at shutdown is cancelled (the shutdown snapshot follows it).
async fn snapshot_task(node: Arc<Node>) {
    let snapshot = &node.config.snapshot;
    let (Some(_), Some(interval)) = (&snapshot.data_dir, snapshot.interval) else {
        return;
    };
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let cancel = node.shutdown.child_token();
        let rate = Some(node.config.snapshot.rate_bytes_per_sec);
        let _ = node.write_snapshot_until(rate, Some(cancel)).await;
    }
}

/// Reclaims expired entries every `expiry_interval`, in bounded passes, until shutdown.
async fn expiry_task(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.config.expiry_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let full_pass = EXPIRY_BUDGET_PER_SHARD * node.config.store.shards.next_power_of_two();
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        node.leases.sweep(tokio::time::Instant::now());
        for _ in 0..EXPIRY_MAX_PASSES {
            let reclaimed = node
                .store
                .reclaim_expired(node.now_ms(), EXPIRY_BUDGET_PER_SHARD);
            if reclaimed < full_pass {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

async fn metrics_upkeep_task(node: Arc<Node>) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            _ = tick.tick() => node.metrics.run_upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node whose snapshots go to a fresh directory (removed by the caller).
    fn snapshot_node(name: &str, interval: Option<Duration>) -> (Arc<Node>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "ringcache-node-snapshot-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = Config::for_test();
        config.snapshot.data_dir = Some(dir.clone());
        config.snapshot.interval = interval;
        let clock = Arc::new(crate::clock::ManualClock::new(1_700_000_000_000));
        (Node::with_clock(config, clock), dir)
    }

    /// A node alone publishes itself with its configured weight and virtual nodes, as the
    /// members' gossiped records later do (so the ring does not change when peers arrive).
    #[tokio::test]
    async fn a_node_alone_is_in_its_topology_with_its_weight_and_vnodes() {
        let mut config = Config::for_test();
        config.weight = std::num::NonZeroU32::new(3).unwrap();
        config.vnodes = std::num::NonZeroU32::new(32).unwrap();
        let node = Node::with_clock(config, Arc::new(crate::clock::SystemClock));
        let topology = node.topology();
        assert_eq!(topology.members.len(), 1);
        assert_eq!(topology.members[0].weight, 3);
        assert_eq!(topology.vnodes_per_weight, 32);
    }

    #[tokio::test(start_paused = true)]
    async fn the_snapshot_task_writes_every_interval_until_shutdown() {
        let (node, dir) = snapshot_node("task", Some(Duration::from_secs(60)));
        node.store()
            .set(b"k", b"v", Default::default(), node.now_ms())
            .unwrap();
        let task = tokio::spawn(snapshot_task(node.clone()));
        let file = dir.join(crate::snapshot::FILE_NAME);
        // Virtual time: the interval passes at once; a blocking write holds the clock still.
        for _ in 0..100 {
            if file.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        assert!(file.exists(), "written after one interval");
        node.shutdown.cancel();
        task.await.unwrap();
        let text = node
            .metrics
            .render(&node.store().stats(), 1, Duration::ZERO);
        assert!(
            !text.contains("ringcache_snapshot_last_success_timestamp_seconds 0\n"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_failed_snapshot_write_is_counted_and_without_an_interval_no_task_runs() {
        let (node, dir) = snapshot_node("failure", None);
        // The task returns at once: no interval, snapshots only at shutdown.
        snapshot_task(node.clone()).await;
        std::fs::remove_dir_all(&dir).unwrap();
        let error = node.write_snapshot(None).await.unwrap_err();
        assert!(matches!(error, SnapshotError::Io { .. }), "{error}");
        let text = node
            .metrics
            .render(&node.store().stats(), 1, Duration::ZERO);
        assert!(
            text.contains("ringcache_snapshot_failures_total 1"),
            "{text}"
        );
        // A missing snapshot at start is no error: the node starts empty.
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(node.load_snapshot().await.unwrap(), LoadOutcome::NoSnapshot);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn view(states: &[(&str, NodeState)], replication: u32) -> ClusterView {
        crate::view::test_view(states, replication)
    }

    #[test]
    fn every_slot_with_fewer_serving_replicas_than_r_is_under_replicated() {
        use NodeState::{Active, Dead, Left, Suspect};
        let all = u64::from(ringcache_proto::placement::SLOTS);
        let health = |states: &[(&str, NodeState)], known, expected| {
            ClusterHealth::of(&view(states, 3), known, expected)
        };
        let three = [("a", Active), ("b", Active), ("c", Active)];
        assert_eq!(
            health(&three, 3, 0),
            ClusterHealth {
                expected: 3,
                live: 3,
                under_replicated_slots: 0
            }
        );
        // A suspect replica is in the ring but serves nothing: every slot is short of a copy.
        let suspect = [("a", Active), ("b", Active), ("c", Suspect)];
        assert_eq!(health(&suspect, 3, 0).under_replicated_slots, all);
        // Dead and gone from the ring, still known: the same.
        let dead = [("a", Active), ("b", Active), ("c", Dead)];
        assert_eq!(health(&dead, 3, 0).under_replicated_slots, all);
        assert_eq!(health(&dead, 3, 0).live, 2);
        // Forgotten (or drained: left), nobody expects it: two copies are all there can be.
        let left = [("a", Active), ("b", Active), ("c", Left)];
        assert_eq!(health(&left, 2, 0).under_replicated_slots, 0);
        // ...unless the operator said the cluster has three.
        assert_eq!(health(&left, 2, 3).expected, 3);
        assert_eq!(health(&left, 2, 3).under_replicated_slots, all);
        // Four members, R = 3, one dead: three serving copies of every slot remain.
        let four = [("a", Active), ("b", Active), ("c", Active), ("d", Dead)];
        assert_eq!(health(&four, 4, 0).under_replicated_slots, 0);
        assert_eq!(health(&four, 4, 0).expected, 4);
        // Some slots have the suspect among their replicas, some do not.
        let five = [
            ("a", Active),
            ("b", Active),
            ("c", Active),
            ("d", Active),
            ("e", Suspect),
        ];
        let some = health(&five, 5, 0).under_replicated_slots;
        assert!(some > 0 && some < all, "{some}");
    }
}
