//! Helpers for integration tests: nodes started in-process on loopback with free ports, and a
//! minimal HTTP/1.1 GET for the metrics and health endpoints.
//!
//! Every server binds 127.0.0.1 port 0, so tests run in parallel and beside a running node.

pub mod certs;
pub mod ctl;
pub mod resp;
pub mod sim;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use ringcache_server::clock::{Clock, SystemClock};
use ringcache_server::cluster::Keyring;
use ringcache_server::{Config, Listeners, Node};
/// Waiting for conditions and free loopback addresses, shared by every test crate.
pub use ringcache_test_support as support;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest a test waits for a node to stop after it was told to.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// A node running in this process.
#[derive(Debug)]
pub struct TestNode {
    /// The node itself (its store, config and metrics).
    pub node: Arc<Node>,
    /// Where its gRPC service listens.
    pub grpc_addr: SocketAddr,
    /// Where its HTTP endpoint listens.
    pub http_addr: SocketAddr,
    /// Where its cluster-plane gRPC service (Internal, forwarded calls) listens.
    pub cluster_addr: SocketAddr,
    /// Where its Redis protocol (RESP) listener listens.
    pub resp_addr: SocketAddr,
    /// Where its gossip endpoint listens (`None`: started without membership).
    pub gossip_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestNode {
    /// Starts a node with `config` (its addresses are replaced by 127.0.0.1:0, gossip included)
    /// and the system clock. It joins through `config.seeds`.
    pub async fn start(config: Config) -> Self {
        Self::start_with(config, Arc::new(SystemClock), Some(0)).await
    }

    /// Starts a node like [`TestNode::start`] but with gossip on 127.0.0.1:`gossip_port`: a
    /// process restarted in place, on the gossip address it had.
    pub async fn start_on_gossip_port(config: Config, gossip_port: u16) -> Self {
        Self::start_with(config, Arc::new(SystemClock), Some(gossip_port)).await
    }

    /// Starts a node without gossip: a lone node, or one whose topology a test sets by hand.
    pub async fn start_without_gossip(config: Config) -> Self {
        Self::start_with(config, Arc::new(SystemClock), None).await
    }

    /// Starts a node reading time from `clock`.
    pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Self {
        Self::start_with(config, clock, Some(0)).await
    }

    /// Starts a node like [`TestNode::start`], letting `prepare` set it up before it serves
    /// (e.g. [`Node::set_seed_resolver`]).
    pub async fn start_prepared(config: Config, prepare: impl FnOnce(&Arc<Node>)) -> Self {
        Self::start_full(config, Arc::new(SystemClock), Some(0), prepare).await
    }

    /// `gossip`: the UDP port to bind on 127.0.0.1 (0: any), or `None` for no gossip.
    async fn start_with(config: Config, clock: Arc<dyn Clock>, gossip: Option<u16>) -> Self {
        Self::start_full(config, clock, gossip, |_| {}).await
    }

    async fn start_full(
        config: Config,
        clock: Arc<dyn Clock>,
        gossip: Option<u16>,
        prepare: impl FnOnce(&Arc<Node>),
    ) -> Self {
        // The relations `ringcached` checks hold for every test node too (tests set fields of a
        // `Config` directly, past the settings' own bounds).
        if let Err(error) = config.validate() {
            panic!("a test node's config is invalid: {error:#}");
        }
        let grpc = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free gRPC port");
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free HTTP port");
        let cluster = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free cluster port");
        let cluster_addr = cluster.local_addr().expect("bound address");
        let resp = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free RESP port");
        let resp_addr = resp.local_addr().expect("bound address");
        let gossip = if let Some(port) = gossip {
            Some(
                UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], port)))
                    .await
                    .expect("bind the gossip port"),
            )
        } else {
            None
        };
        let grpc_addr = grpc.local_addr().expect("bound address");
        let http_addr = http.local_addr().expect("bound address");
        let gossip_addr = gossip
            .as_ref()
            .map(|s| s.local_addr().expect("bound address"));
        let node = Node::with_clock(config, clock);
        prepare(&node);
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let listeners = Listeners {
            grpc,
            cluster: Some(cluster),
            http: Some(http),
            resp: Some(resp),
            gossip,
        };
        let task = tokio::spawn(node.clone().serve(listeners, shutdown));
        Self {
            node,
            grpc_addr,
            http_addr,
            cluster_addr,
            resp_addr,
            gossip_addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Starts a node with [`Config::for_test`].
    pub async fn start_default() -> Self {
        Self::start(Config::for_test()).await
    }

    /// `host:port` of the gRPC service, as clients take it.
    pub fn grpc_target(&self) -> String {
        self.grpc_addr.to_string()
    }

    /// `http://host:port` of the gRPC service, for tonic endpoints.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// A fresh channel to the gRPC service (connected now).
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.grpc_url())
            .expect("a valid URL")
            .connect()
            .await
            .expect("the test node accepts connections")
    }

    /// A fresh channel to the cluster port (plaintext: for nodes started without cluster TLS).
    pub async fn cluster_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.cluster_addr))
            .expect("a valid URL")
            .connect()
            .await
            .expect("the test node accepts connections on its cluster port")
    }

    /// The raw generated `Internal` client on a fresh plaintext channel to the cluster port.
    pub async fn raw_internal(
        &self,
    ) -> ringcache_proto::v1::internal_client::InternalClient<tonic::transport::Channel> {
        ringcache_proto::v1::internal_client::InternalClient::new(self.cluster_channel().await)
    }

    /// The raw generated `Cache` client on a fresh channel, with 64 MiB message limits: to send
    /// what the typed client refuses to build, and to see the wire answers.
    pub async fn raw_cache(
        &self,
    ) -> ringcache_proto::v1::cache_client::CacheClient<tonic::transport::Channel> {
        ringcache_proto::v1::cache_client::CacheClient::new(self.channel().await)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// Asks the node to shut down and waits (bounded) until it has.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait_stopped().await
    }

    /// Stops the node at once, as if its process were killed: no graceful leave.
    pub async fn crash(mut self) -> anyhow::Result<()> {
        self.node.crash();
        self.wait_stopped().await
    }

    /// Waits (bounded) for the node to stop on its own, e.g. after an Admin Leave.
    pub async fn wait_stopped(&mut self) -> anyhow::Result<()> {
        let task = self.task.take().context("node already stopped")?;
        match tokio::time::timeout(STOP_DEADLINE, task).await {
            Ok(joined) => joined.context("node task panicked")?,
            Err(_) => bail!("node did not stop within {STOP_DEADLINE:?}"),
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Several nodes on loopback joined by gossip: node 1 first, the others seeded with its gossip
/// address. Node ids are `n1`, `n2`, ….
#[derive(Debug)]
pub struct TestCluster {
    /// The nodes, in start order.
    pub nodes: Vec<TestNode>,
}

impl TestCluster {
    /// Starts `n` nodes with [`Config::for_test`] (fast failure detection).
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, |_, _| {}).await
    }

    /// Starts `n` nodes, letting `configure(i, config)` adjust node `i` (1-based) first.
    pub async fn start_with(n: usize, configure: impl Fn(usize, &mut Config)) -> Self {
        let mut cluster = Self { nodes: Vec::new() };
        for i in 1..=n {
            cluster.add(i, &configure).await;
        }
        cluster
    }

    /// Starts one more node with id `n{i}` that joins through node 1 (or the first node left).
    pub async fn add(&mut self, i: usize, configure: impl Fn(usize, &mut Config)) -> &TestNode {
        self.add_on_gossip_port(i, 0, configure).await
    }

    /// Like [`TestCluster::add`], with the node reading time from `clock` (a skewed clock).
    pub async fn add_with_clock(
        &mut self,
        i: usize,
        clock: Arc<dyn Clock>,
        configure: impl Fn(usize, &mut Config),
    ) -> &TestNode {
        let config = self.next_config(i, configure);
        self.nodes
            .push(TestNode::start_with(config, clock, Some(0)).await);
        self.nodes.last().expect("just pushed")
    }

    /// Like [`TestCluster::add_with_clock`], with gossip on 127.0.0.1:`gossip_port` (0: any
    /// free port), to restart a node in place with the clock the others share.
    pub async fn add_with_clock_on_gossip_port(
        &mut self,
        i: usize,
        clock: Arc<dyn Clock>,
        gossip_port: u16,
        configure: impl Fn(usize, &mut Config),
    ) -> &TestNode {
        let config = self.next_config(i, configure);
        self.nodes
            .push(TestNode::start_with(config, clock, Some(gossip_port)).await);
        self.nodes.last().expect("just pushed")
    }

    /// The config of node `n{i}`, joining through the first node.
    fn next_config(&self, i: usize, configure: impl Fn(usize, &mut Config)) -> Config {
        let mut config = Config::for_test();
        config.node_id = format!("n{i}");
        config.seeds = self
            .nodes
            .first()
            .and_then(|seed| seed.gossip_addr)
            .map(|addr| vec![addr.to_string()])
            .unwrap_or_default();
        configure(i, &mut config);
        config
    }

    /// Like [`TestCluster::add`], with gossip on 127.0.0.1:`gossip_port` (0: any free port), to
    /// restart a node in place.
    pub async fn add_on_gossip_port(
        &mut self,
        i: usize,
        gossip_port: u16,
        configure: impl Fn(usize, &mut Config),
    ) -> &TestNode {
        let config = self.next_config(i, configure);
        self.nodes
            .push(TestNode::start_on_gossip_port(config, gossip_port).await);
        self.nodes.last().expect("just pushed")
    }

    /// The node with this id.
    pub fn node(&self, node_id: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.node.config().node_id == node_id)
            .unwrap_or_else(|| panic!("no node {node_id}"))
    }

    /// Removes the node with this id from the list (to crash or stop it).
    pub fn take(&mut self, node_id: &str) -> TestNode {
        let at = self
            .nodes
            .iter()
            .position(|n| n.node.config().node_id == node_id)
            .unwrap_or_else(|| panic!("no node {node_id}"));
        self.nodes.remove(at)
    }

    /// gRPC targets of every node, for clients.
    pub fn grpc_targets(&self) -> Vec<String> {
        self.nodes.iter().map(TestNode::grpc_target).collect()
    }

    /// Starts `n` nodes configured by `configure` and waits (up to `deadline`) until their rings
    /// have converged.
    pub async fn start_converged(
        n: usize,
        deadline: Duration,
        configure: impl Fn(usize, &mut Config),
    ) -> Self {
        let cluster = Self::start_with(n, configure).await;
        cluster
            .wait_converged(deadline)
            .await
            .expect("the cluster converges");
        cluster
    }

    /// Waits until every node's ring holds exactly the nodes of this cluster (by id) and all
    /// report the same topology digest; returns the digest.
    pub async fn wait_converged(&self, deadline: Duration) -> anyhow::Result<u64> {
        let mut expected: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.node.config().node_id.clone())
            .collect();
        expected.sort();
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            let views: Vec<_> = self.nodes.iter().map(|n| n.node.view()).collect();
            let digest = views[0].topology.digest();
            let agreed = views.iter().all(|view| {
                let ring: Vec<&str> = view.ring.nodes().iter().map(|id| &**id).collect();
                view.topology.digest() == digest && ring == expected
            });
            if agreed {
                return Ok(digest);
            }
            if tokio::time::Instant::now() >= give_up {
                let seen: Vec<String> = views
                    .iter()
                    .map(|v| format!("{:?}", v.ring.nodes()))
                    .collect();
                bail!("not converged on {expected:?} within {deadline:?}; rings: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl TestCluster {
    /// Starts `n` nodes whose gossip is encrypted, node `i` (1-based) with the key ring file
    /// `keyrings[i - 1]`, and waits until they converge.
    pub async fn start_encrypted(keyrings: &[KeyringFile], deadline: Duration) -> Self {
        Self::start_converged(keyrings.len(), deadline, |i, config| {
            config.gossip_keyring = Some(keyrings[i - 1].path().to_path_buf());
        })
        .await
    }
}

/// A `configure` for [`TestCluster::start_converged`]: failure detection patient enough that a
/// loaded machine (debug builds, tests in parallel) does not suspect live nodes, for tests that
/// check something else than the detector (routing, clients).
pub fn patient(_: usize, config: &mut Config) {
    config.probe_interval = Duration::from_millis(400);
    config.probe_timeout = Duration::from_millis(300);
    config.suspicion_timeout = Duration::from_secs(2);
    // The longest suspicion (no confirmations) keeps its default ratio to the shortest.
    config.suspicion_max_timeout = Duration::from_secs(12);
}

/// A fresh random gossip key, as a key ring line.
pub fn gossip_key() -> String {
    Keyring::generate_key().expect("the system RNG works")
}

/// The id of a key ring line, as `ringcache_gossip_keyring_primary_key_id` shows it.
pub fn gossip_key_id(key: &str) -> u64 {
    u64::from(
        Keyring::parse(key, "test key")
            .expect("a valid key")
            .primary_id()
            .as_u32(),
    )
}

/// A gossip key ring file in the temp directory, removed on drop.
#[derive(Debug)]
pub struct KeyringFile {
    path: PathBuf,
}

impl KeyringFile {
    /// A file holding `keys` (primary first).
    pub fn new(keys: &[&str]) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ringcache-keyring-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = Self { path };
        file.rewrite(keys);
        file
    }

    /// Replaces the keys at once (written aside, then renamed over the file).
    pub fn rewrite(&self, keys: &[&str]) {
        let tmp = self.path.with_extension("tmp");
        let mut text = String::from("# test key ring, primary first\n");
        for key in keys {
            text.push_str(key);
            text.push('\n');
        }
        std::fs::write(&tmp, text).expect("write the key ring");
        std::fs::rename(&tmp, &self.path).expect("replace the key ring");
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyringFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A node's data directory in the temp directory, removed (with what is in it) on drop.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// A new, empty directory.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ringcache-data-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a data directory");
        Self { path }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An HTTP response: status code and body.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

/// `GET path` over HTTP/1.1 with `Connection: close`, bounded in time.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("HTTP request timed out")??;
    let text = String::from_utf8(raw).context("response is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status code")?
        .parse()
        .context("bad status code")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("bad chunk header")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("missing chunk end")?;
    }
}

/// Polls `condition` every [`support::POLL`] until it holds or `deadline` passes.
pub async fn wait_until<F, Fut>(deadline: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    // A loop of its own rather than `support::until`: an async closure around `condition` would
    // make the future not `Send` for callers that spawn it.
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if condition().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= give_up {
            bail!("condition not met within {deadline:?}");
        }
        tokio::time::sleep(support::POLL).await;
    }
}

/// Compiles the README's code examples, so they cannot drift from the API.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// A configuration hook for [`TestCluster::start_with`]: a crashed node stays in the ring
/// (Suspect) for two minutes, so it stays a replica of every key and writes miss it, as while a
/// real node is down but not yet declared dead (however many members confirm the suspicion).
pub fn keep_suspects(_: usize, config: &mut Config) {
    config.suspicion_timeout = Duration::from_secs(120);
    config.suspicion_max_timeout = Duration::from_secs(120);
}

/// `node`'s `/metrics` page (Prometheus text), once it answered 200.
pub async fn metrics_text(node: &TestNode) -> String {
    let response = http_get(node.http_addr, "/metrics")
        .await
        .expect("the metrics endpoint answers");
    assert_eq!(response.status, 200, "{}", response.body);
    response.body
}

/// The value of the sample `series` (name and labels, exactly as exported) in the Prometheus
/// text `body`, `None` when it is not there.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.trim().parse().expect("a number"))
    })
}

/// The value of the sample `series` on `node`'s `/metrics`; panics when it is not exported.
pub async fn metric(node: &TestNode, series: &str) -> f64 {
    let body = metrics_text(node).await;
    sample(&body, series).unwrap_or_else(|| panic!("{series} missing from\n{body}"))
}

/// The value of the sample `series` on `node`'s `/metrics`, 0 when it is not exported (a
/// labelled series appears once it is first counted).
pub async fn metric_or_zero(node: &TestNode, series: &str) -> f64 {
    sample(&metrics_text(node).await, series).unwrap_or(0.0)
}

/// Whether each of the keys `key{i}` below `keys` is held (live) by exactly its replicas in the
/// first node's ring, on every node of `cluster`.
pub fn copies_match_the_ring(cluster: &TestCluster, keys: usize) -> bool {
    let view = cluster.nodes[0].node.view();
    (0..keys).all(|i| {
        let key = format!("key{i}");
        let owners = view.ring.replicas(key.as_bytes());
        cluster.nodes.iter().all(|n| {
            let held = n
                .node
                .store()
                .get_versioned(key.as_bytes())
                .unwrap()
                .is_some_and(|v| v.value.is_some());
            held == owners.contains(&n.node.config().node_id)
        })
    })
}

/// Writes `key{i}` = `value{i}` for every `i` below `keys`, in `MSet` batches of 500.
pub async fn load_keys(client: &ringcache::Client, keys: usize) {
    for chunk in (0..keys).collect::<Vec<_>>().chunks(500) {
        client
            .mset(
                chunk
                    .iter()
                    .map(|i| (format!("key{i}"), format!("value{i}"))),
                None,
            )
            .await
            .expect("a batch write");
    }
}

/// A `Set` request for `key` at a consistency level (`v1::Consistency as i32`).
pub fn set_request(key: &str, value: &str, consistency: i32) -> ringcache_proto::v1::SetRequest {
    ringcache_proto::v1::SetRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        consistency,
        ..Default::default()
    }
}

/// A `Get` request for `key` at a consistency level (`v1::Consistency as i32`).
pub fn get_request(key: &str, consistency: i32) -> ringcache_proto::v1::GetRequest {
    ringcache_proto::v1::GetRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        consistency,
        tracking_id: 0,
    }
}
