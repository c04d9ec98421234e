//! Embedded mode: a ringcache node running inside a Rust service's own process (feature
//! `embedded`).
//!
//! The node is a full member of its cluster: it gossips, takes its share of the ring, receives
//! and hands off data as members come and go, replicates writes and answers other nodes and
//! clients on its gRPC and cluster ports, exactly like a `ringcached` process. What embedding
//! adds is a [`ringcache::Client`] wired to the node: its ONE reads of keys the node holds (the
//! node is one of the key's replicas and `Active`) are answered from the node's store by a
//! function call, without a network request; every other request goes the normal way.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use ringcache_server::embedded::Embedded;
//!
//! let node = Embedded::builder()
//!     .node_id("api-7")
//!     .seeds(["10.0.0.1:7380", "10.0.0.2:7380"]) // other members' gossip addresses
//!     .grpc_addr("10.0.0.7:7379".parse()?)
//!     .cluster_addr("10.0.0.7:7382".parse()?)
//!     .gossip_addr("10.0.0.7:7380".parse()?)
//!     .max_memory(256 * 1024 * 1024)
//!     .start()
//!     .await?;
//! let client = node.client();
//! client.set("greeting", "hello").await?;
//! let value = client.get("greeting").await?; // local when this node holds the key
//! # drop(value);
//! node.shutdown().await?; // hands its keys off and leaves the cluster
//! # Ok(()) }
//! ```
//!
//! Settings not on the builder come from a full [`Config`] ([`EmbeddedBuilder::config`]); the
//! builder's own settings override it. With authentication or TLS on the node, give the client
//! its credentials and TLS options with [`EmbeddedBuilder::client_builder`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ringcache::{Client, ClientBuilder, Consistency, Entry, LocalNode, LocalRead};
use ringcache_proto::v1;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{ByteSize, Config, List, Settings};
use crate::hotkeys::Access;
use crate::node::{Listeners, Node};
use crate::replication;

/// Default [`EmbeddedBuilder::ready_timeout`].
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest [`EmbeddedBuilder::ready_timeout`].
pub const MAX_READY_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often [`EmbeddedBuilder::start`] looks whether the node is ready.
const READY_POLL: Duration = Duration::from_millis(20);

/// Entry point of embedded mode: see the [module documentation](self).
#[derive(Debug)]
pub struct Embedded;

impl Embedded {
    /// A builder with the defaults: every port on 127.0.0.1, chosen by the system (port 0), no
    /// HTTP port, no seeds (a cluster of one until others join it), the other settings
    /// `ringcached`'s defaults.
    pub fn builder() -> EmbeddedBuilder {
        EmbeddedBuilder::default()
    }
}

/// Configures and starts an embedded node ([`Embedded::builder`]).
#[derive(Debug)]
pub struct EmbeddedBuilder {
    config: Option<Config>,
    node_id: Option<String>,
    seeds: Option<Vec<String>>,
    max_memory: Option<u64>,
    replication_factor: Option<u32>,
    advertise_addr: Option<IpAddr>,
    grpc_addr: SocketAddr,
    cluster_addr: SocketAddr,
    gossip_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    ready_timeout: Duration,
    client: Option<ClientBuilder>,
}

impl Default for EmbeddedBuilder {
    fn default() -> Self {
        let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        Self {
            config: None,
            node_id: None,
            seeds: None,
            max_memory: None,
            replication_factor: None,
            advertise_addr: None,
            grpc_addr: loopback,
            cluster_addr: loopback,
            gossip_addr: loopback,
            http_addr: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            client: None,
        }
    }
}

impl EmbeddedBuilder {
    /// Every setting from `config` (as `ringcached` would run with it), before the builder's
    /// own settings, which override it. Its ports are not used: the node listens on the
    /// builder's addresses.
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// The node's unique, stable id in the cluster (required unless the config has one).
    #[must_use]
    pub fn node_id(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    /// Gossip addresses (`host:port`) of members to join through; none: the node starts a
    /// cluster of its own.
    #[must_use]
    pub fn seeds<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.seeds = Some(seeds.into_iter().map(Into::into).collect());
        self
    }

    /// Most bytes the node's store holds (at least 64 KiB; `ringcached`'s `--max-memory`).
    #[must_use]
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// Copies of each key (must match the cluster's).
    #[must_use]
    pub fn replication_factor(mut self, replicas: u32) -> Self {
        self.replication_factor = Some(replicas);
        self
    }

    /// Where the gRPC port for clients (Cache, Cluster, Admin) listens; port 0: any free port.
    /// Default 127.0.0.1:0.
    #[must_use]
    pub fn grpc_addr(mut self, addr: SocketAddr) -> Self {
        self.grpc_addr = addr;
        self
    }

    /// Where the cluster port (other nodes: replication, data movement, forwarded calls)
    /// listens; port 0: any free port. Default 127.0.0.1:0.
    #[must_use]
    pub fn cluster_addr(mut self, addr: SocketAddr) -> Self {
        self.cluster_addr = addr;
        self
    }

    /// Where gossip (UDP) listens; other members use it as a seed. Default 127.0.0.1:0.
    #[must_use]
    pub fn gossip_addr(mut self, addr: SocketAddr) -> Self {
        self.gossip_addr = addr;
        self
    }

    /// Serve `/metrics` and `/health/*` over HTTP there; default: no HTTP port.
    #[must_use]
    pub fn http_addr(mut self, addr: SocketAddr) -> Self {
        self.http_addr = Some(addr);
        self
    }

    /// The IP the node advertises to peers and clients, when it is not the one it binds
    /// (e.g. it binds 0.0.0.0).
    #[must_use]
    pub fn advertise_addr(mut self, ip: IpAddr) -> Self {
        self.advertise_addr = Some(ip);
        self
    }

    /// How long [`start`](Self::start) waits for the node to be ready (joined and serving:
    /// `/health/ready`); greater than zero, at most 1 h. Default 60 s.
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The settings of the node's [`Client`] (timeouts, credentials, TLS, hot keys...). Its
    /// seeds are replaced by the node itself, and its local node is set.
    #[must_use]
    pub fn client_builder(mut self, client: ClientBuilder) -> Self {
        self.client = Some(client);
        self
    }

    /// The validated configuration the node will run with (ports still the builder's: 0 until
    /// bound).
    fn build_config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(config) => config.clone(),
            None => Config::from_settings(Settings::default())?,
        };
        // The builder's settings are checked against their declared bounds (resolving them
        // beside defaults, which are valid), then override the config's.
        let replication_factor = self
            .replication_factor
            .map(|replicas| {
                NonZeroU32::new(replicas).context("replication_factor must be at least 1, got 0")
            })
            .transpose()?;
        let given = Settings {
            node_id: self.node_id.clone(),
            seeds: self.seeds.clone().map(List),
            max_memory: self.max_memory.map(ByteSize),
            replication_factor,
            advertise_addr: self.advertise_addr,
            ..Settings::default()
        };
        let checked = given.clone().resolve()?;
        if given.node_id.is_some() {
            config.node_id = checked.node_id;
        }
        if given.seeds.is_some() {
            config.seeds = checked.seeds;
        }
        if given.max_memory.is_some() {
            config.store.max_memory_bytes =
                usize::try_from(checked.max_memory.0).with_context(|| {
                    format!(
                        "max_memory {} does not fit this machine",
                        checked.max_memory.0
                    )
                })?;
        }
        if given.replication_factor.is_some() {
            config.replication_factor = checked.replication_factor;
        }
        if given.advertise_addr.is_some() {
            config.advertise_addr = checked.advertise_addr;
        }
        if self.ready_timeout.is_zero() || self.ready_timeout > MAX_READY_TIMEOUT {
            bail!(
                "ready_timeout must be greater than zero and at most 1h, got {}",
                humantime::format_duration(self.ready_timeout)
            );
        }
        config.bind = self.grpc_addr.ip();
        config.grpc_port = self.grpc_addr.port();
        config.cluster_port = self.cluster_addr.port();
        config.gossip_port = self.gossip_addr.port();
        config.http_port = self.http_addr.map_or(0, |addr| addr.port());
        // No RESP listener: an embedding service talks to its node through the client.
        config.resp_port = 0;
        config.validate()?;
        Ok(config)
    }

    /// Binds the node's ports, starts it, waits until it is ready (it joined its seeds' cluster
    /// and serves), and connects its client.
    ///
    /// # Errors
    ///
    /// A setting out of range (named in the message), a port that cannot be bound, a node that
    /// stops or is not ready within the ready timeout, or a client that cannot connect.
    pub async fn start(self) -> anyhow::Result<EmbeddedNode> {
        let config = self.build_config()?;
        let grpc = TcpListener::bind(self.grpc_addr)
            .await
            .with_context(|| format!("cannot bind the gRPC port {}", self.grpc_addr))?;
        let cluster = TcpListener::bind(self.cluster_addr)
            .await
            .with_context(|| format!("cannot bind the cluster port {}", self.cluster_addr))?;
        let gossip = UdpSocket::bind(self.gossip_addr)
            .await
            .with_context(|| format!("cannot bind the gossip port {} (UDP)", self.gossip_addr))?;
        let http = match self.http_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind the HTTP port {addr}"))?,
            ),
            None => None,
        };
        let grpc_addr = config.advertised(grpc.local_addr()?);
        let cluster_addr = cluster.local_addr()?;
        let gossip_addr = gossip.local_addr()?;
        let node = Node::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners {
            grpc,
            cluster: Some(cluster),
            http,
            resp: None,
            gossip: Some(gossip),
        };
        let mut task = tokio::spawn(node.clone().serve(listeners, async move {
            // A dropped handle stops the node too.
            let _ = stopped.await;
        }));

        let give_up = tokio::time::Instant::now() + self.ready_timeout;
        while !node.is_ready() {
            if task.is_finished() {
                return Err(match (&mut task).await {
                    Ok(Ok(())) => anyhow::anyhow!("the node stopped before it was ready"),
                    Ok(Err(error)) => error.context("the node stopped before it was ready"),
                    Err(error) => anyhow::anyhow!("the node's task failed: {error}"),
                });
            }
            if tokio::time::Instant::now() >= give_up {
                let why = node.readiness().err().unwrap_or_default();
                let _ = stop.send(());
                bail!(
                    "the node was not ready within {} ({why})",
                    humantime::format_duration(self.ready_timeout)
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }

        let local = Arc::new(LocalHandle { node: node.clone() });
        let client = self
            .client
            .unwrap_or_default()
            .seeds([grpc_addr.to_string()])
            .local_node(local)
            .connect()
            .await
            .context("the embedded node's client cannot connect to it")?;
        Ok(EmbeddedNode {
            node,
            client,
            grpc_addr,
            cluster_addr,
            gossip_addr,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// A running embedded node and its client. Dropping it stops the node gracefully in the
/// background; [`shutdown`](Self::shutdown) waits for the stop.
#[derive(Debug)]
pub struct EmbeddedNode {
    node: Arc<Node>,
    client: Client,
    grpc_addr: SocketAddr,
    cluster_addr: SocketAddr,
    gossip_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl EmbeddedNode {
    /// A client of the cluster through this node whose ONE reads of keys the node holds are
    /// served locally (clones share connections and counters: [`Client::stats`]).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The node itself (its store, metrics, view and hot keys).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The node's id.
    pub fn node_id(&self) -> &str {
        &self.node.config().node_id
    }

    /// Where clients reach the node (gRPC), as advertised.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where other nodes reach the node's cluster port.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.cluster_addr
    }

    /// The node's gossip address: a seed for other members.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Stops the node gracefully (as SIGTERM stops `ringcached`: by default it hands its keys
    /// to the other members and leaves the cluster) and waits until it has stopped.
    ///
    /// # Errors
    ///
    /// What the node's serving ended with.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.context("the node's task failed")?,
            None => Ok(()),
        }
    }
}

impl Drop for EmbeddedNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The client's hook into the node: ONE reads from the node's own store.
#[derive(Debug)]
struct LocalHandle {
    node: Arc<Node>,
}

impl LocalNode for LocalHandle {
    fn node_id(&self) -> &str {
        &self.node.config().node_id
    }

    fn read_one(&self, key: &[u8], consistency: Option<Consistency>) -> LocalRead {
        let node = &self.node;
        let level = match consistency {
            Some(Consistency::One) => replication::Consistency::One,
            None => node.config().replication.read_consistency,
            Some(_) => return LocalRead::NotHere,
        };
        if level != replication::Consistency::One || node.state() != v1::NodeState::Active {
            return LocalRead::NotHere;
        }
        // Served here only when this node's own view makes it a replica of the key; a node
        // whose clock the cluster refuses answers on the network path (with its error).
        if node
            .view()
            .forward_target(key, &node.config().node_id)
            .is_some()
            || node
                .clock_check()
                .refusal_of("reads", node.config().store.max_clock_drift_ms)
                .is_some()
        {
            return LocalRead::NotHere;
        }
        let now = node.now_ms();
        match node.store().get(key, now) {
            Ok(Some(item)) => {
                node.hot_keys().record(key, Access::Read);
                LocalRead::Found(Entry {
                    value: item.value,
                    version: item.version,
                    ttl: item
                        .expires_at_ms
                        .map(|at| Duration::from_millis(at.saturating_sub(now).max(1))),
                })
            }
            Ok(None) => {
                node.hot_keys().record(key, Access::Read);
                LocalRead::Missing
            }
            // A key the store refuses: the network path returns the error.
            Err(_) => LocalRead::NotHere,
        }
    }
}
