//! [`ClientBuilder`]: the client's settings and its connection step.

use std::{fmt, time::Duration};

use crate::NearCacheOptions;

use crate::{
    CircuitBreaker, Client, Connector, Consistency, Error, RetryBudget, RetryPolicy, TlsOptions,
    conn::{self, ConnectConfig},
    router,
    security::Credentials,
};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_POOL_SIZE: usize = 2;
/// tonic's own 4 MiB limit would refuse a 4 MiB value once its key and framing are added; this
/// leaves room for values of several MiB.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024 + 64 * 1024;
/// The smallest message limit accepted: below it, the framing of a single request would not
/// fit.
const MIN_MESSAGE_BYTES: usize = 1024;

/// Configures and connects a [`Client`].
///
/// ```no_run
/// # async fn run() -> Result<(), ringcache::Error> {
/// use std::time::Duration;
/// use ringcache::{Client, Consistency};
///
/// let client = Client::builder()
///     .seeds(["10.0.0.1:7379", "10.0.0.2:7379"])
///     .request_timeout(Duration::from_secs(1))
///     .default_consistency(Consistency::Quorum)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    seeds: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    pool_size: usize,
    pipelining: bool,
    default_consistency: Option<Consistency>,
    max_message_bytes: usize,
    max_batch_keys: Option<usize>,
    retry: RetryPolicy,
    retry_budget: RetryBudget,
    breaker: CircuitBreaker,
    connector: Option<Connector>,
    credentials: Option<Credentials>,
    tls: Option<TlsOptions>,
    near_cache: Option<NearCacheOptions>,
    hot: crate::hot::HotSettings,
    local: Option<std::sync::Arc<dyn crate::LocalNode>>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("seeds", &self.seeds)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("pool_size", &self.pool_size)
            .field("pipelining", &self.pipelining)
            .field("default_consistency", &self.default_consistency)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_batch_keys", &self.max_batch_keys)
            .field("retry", &self.retry)
            .field("retry_budget", &self.retry_budget)
            .field("circuit_breaker", &self.breaker)
            .field(
                "connector",
                &if self.connector.is_some() {
                    "custom"
                } else {
                    "default"
                },
            )
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .field("near_cache", &self.near_cache)
            .field("hot_keys", &self.hot)
            .field(
                "local_node",
                &self.local.as_ref().map(|local| local.node_id()),
            )
            .finish()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            seeds: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            pipelining: true,
            default_consistency: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_batch_keys: None,
            retry: RetryPolicy::default(),
            retry_budget: RetryBudget::default(),
            breaker: CircuitBreaker::default(),
            connector: None,
            credentials: None,
            tls: None,
            near_cache: None,
            hot: crate::hot::HotSettings::default(),
            local: None,
        }
    }
}

impl ClientBuilder {
    /// A builder with the default settings and no seeds.
    pub fn new() -> Self {
        Self::default()
    }

    /// The nodes to connect through, as `host:port` (an `http://` prefix is accepted, or
    /// `https://` with [`tls`](ClientBuilder::tls)). They are
    /// tried in order; the first that answers gives the cluster's topology, and the seeds are
    /// tried again when the topology cannot be had from its members. Replaces any seeds set
    /// before.
    #[must_use]
    pub fn seeds<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.seeds = seeds.into_iter().map(|s| s.as_ref().to_owned()).collect();
        self
    }

    /// How long to wait for a seed to answer (TCP connect, HTTP/2 handshake and a first round
    /// trip) before trying the next one. Default: 2 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long each attempt of a request may take before it fails with [`Error::Timeout`]. The
    /// deadline is also sent to the node. A read that fails over to another replica, or a
    /// retried request, gets this long again for each attempt. A per-call timeout
    /// ([`Client::with_timeout`]) bounds a whole call instead. Default: 5 s.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Number of HTTP/2 connections to each node; requests to a node are spread over them in
    /// turn. Default: 2; values below 1 count as 1.
    #[must_use]
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// Whether requests travel on each connection's long-lived pipelined stream (the default),
    /// or as one unary gRPC call each.
    ///
    /// On the stream, requests issued while earlier ones are in flight leave together as one
    /// batch, so a busy client costs the node far less per request; an idle client sends each
    /// request at once, without waiting for a batch to fill. Nodes that do not serve the stream
    /// are sent unary calls either way. Turn it off to compare, or when an intermediary does not
    /// pass long-lived HTTP/2 streams.
    #[must_use]
    pub fn pipelining(mut self, enabled: bool) -> Self {
        self.pipelining = enabled;
        self
    }

    /// The consistency of every request that does not choose its own. Without it, the cluster's
    /// default applies (`Quorum` for writes, `One` for reads).
    #[must_use]
    pub fn default_consistency(mut self, consistency: Consistency) -> Self {
        self.default_consistency = Some(consistency);
        self
    }

    /// Largest gRPC message sent or received, in bytes. Default: 8 MiB + 64 KiB, room for a
    /// value of several MiB. Batches are split into requests that fit both this and the nodes'
    /// own `max_message_bytes` (see [`max_batch_keys`](ClientBuilder::max_batch_keys)); an
    /// `mget` whose answer is over either limit is split in halves until each answer fits, and
    /// only a single value over the limit fails, with [`Error::InvalidArgument`].
    ///
    /// Keep it at least the nodes' `max_message_bytes` (their default is this default): on the
    /// pipelined stream a node batches several answers into one message up to its own limit,
    /// and a message over this limit fails the requests waiting on that connection.
    #[must_use]
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The most keys (or key-value pairs) one multi-key request (`mget`, `mset`, `mdelete`)
    /// carries. Larger batches are split transparently into several requests, sent
    /// concurrently, and their answers put back in order.
    ///
    /// The nodes state their own `max_batch_keys` and `max_message_bytes` with their topology;
    /// requests are kept within the smallest limits any node stated, and within this and
    /// [`max_message_bytes`](ClientBuilder::max_message_bytes). While no node has stated its
    /// limits (nodes older than the statement), 1000 keys per request (the nodes' default) is
    /// assumed. Default: no bound of the client's own. Must be at least 1.
    #[must_use]
    pub fn max_batch_keys(mut self, keys: usize) -> Self {
        self.max_batch_keys = Some(keys);
        self
    }

    /// The retry policy of calls that do not choose their own (see [`RetryPolicy`]: what is
    /// retried, and how). Default: [`RetryPolicy::new`], 3 attempts with jittered backoff from
    /// 20 ms to 1 s; [`RetryPolicy::none`] turns retries off.
    #[must_use]
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How many retries the client may make compared with its calls (see [`RetryBudget`]).
    /// Default: 0.1 retries per call, 10 at once.
    #[must_use]
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.retry_budget = budget;
        self
    }

    /// Each node's circuit breaker: after consecutive transport failures (refused, broken or
    /// timed-out connections and requests) a node is tried after the key's other replicas for a
    /// jittered, growing while, then probed again; see [`CircuitBreaker`]. So reads keep
    /// succeeding on the other replicas while a killed node is still in the cluster's topology.
    /// Default [`CircuitBreaker::default`]: 2 failures, open 1 s doubling up to 30 s;
    /// [`CircuitBreaker::disabled`] turns it off.
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// Whether ONE reads (`get`, `get_entry`, `mget` at [`Consistency::One`] or the default
    /// level) of keys a node answered as hot are spread over the key's `Active` replicas in
    /// turn instead of all going to its primary. A node answers a key as hot when the key's
    /// read rate reached the node's `--hot-key-threshold`; the key then stays hot here for
    /// [`hot_key_ttl`](ClientBuilder::hot_key_ttl) after the last such answer. Replicas whose
    /// circuit breaker is open, or that are restarting, joining or leaving, get no spread
    /// reads. Default: on.
    #[must_use]
    pub fn hot_key_spreading(mut self, enabled: bool) -> Self {
        self.hot.enabled = enabled;
        self
    }

    /// How long a key stays hot after the last answer that said so (greater than zero, at most
    /// 1 h). Default: 30 s.
    #[must_use]
    pub fn hot_key_ttl(mut self, ttl: Duration) -> Self {
        self.hot.ttl = ttl;
        self
    }

    /// Most hot keys remembered (1..=1048576); a new one replaces the one closest to expiry.
    /// Default: 1024.
    #[must_use]
    pub fn max_hot_keys(mut self, keys: usize) -> Self {
        self.hot.capacity = keys;
        self
    }

    /// The node running in this process (embedded mode: `ringcache_server::embedded` with the
    /// server's `embedded` feature builds a client with it). ONE reads (`get`, `get_entry`,
    /// each key of an `mget`) of keys whose replica set contains this node, while the topology shows it `Active`, are
    /// served by [`LocalNode::read_one`](crate::LocalNode::read_one) without a network
    /// request, unless the node declines; everything else goes the normal way.
    /// [`Client::stats`](crate::Client::stats) counts local reads.
    #[must_use]
    pub fn local_node(mut self, node: std::sync::Arc<dyn crate::LocalNode>) -> Self {
        self.local = Some(node);
        self
    }

    /// Sends `user` and `secret` with every request, as the gRPC metadata
    /// `authorization: Basic base64(user ":" secret)`: requests, the pipelined streams, topology
    /// fetches and watches, and the connect probes, whether the connections are dialed by the
    /// client or by a [`connector`](ClientBuilder::connector). The header is encoded once, at
    /// [`connect`](ClientBuilder::connect).
    ///
    /// The secret never shows in `Debug` output. Without [`tls`](ClientBuilder::tls) it travels
    /// in clear text (base64 is not encryption): use TLS on any network that is not trusted.
    ///
    /// A node that refuses the credentials answers [`Error::Unauthenticated`]; one that accepts
    /// them but finds the user's role too low for a request answers
    /// [`Error::PermissionDenied`]. Neither is retried or sent to another node.
    ///
    /// `user` must be non-empty and without `:` or control characters, and `secret` non-empty;
    /// else `connect` fails with [`Error::InvalidArgument`].
    #[must_use]
    pub fn credentials(mut self, user: impl Into<String>, secret: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::new(user.into(), secret.into()));
        self
    }

    /// Connects to the nodes over TLS (`https://`), verifying their certificates against the CA
    /// of `tls`, and presenting its client certificate, if any.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use ringcache::{Client, TlsOptions};
    ///
    /// let secret = std::fs::read_to_string("/etc/ringcache/app.secret")?;
    /// let client = Client::builder()
    ///     .seeds(["10.0.0.1:7379"])
    ///     .tls(TlsOptions::from_ca_file("/etc/ringcache/ca.pem")?.server_name("cache.internal"))
    ///     .credentials("app", secret.trim_end())
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// TLS also applies over the streams of a [`connector`](ClientBuilder::connector).
    #[must_use]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Replaces how connections to nodes are dialed: `connector` makes the byte stream of each
    /// connection (see [`Connector`]); the client runs HTTP/2, gRPC, its timeouts and keepalives,
    /// the [`credentials`](ClientBuilder::credentials), and the [`tls`](ClientBuilder::tls)
    /// handshake when set, on top of it. The connect timeout bounds each dial.
    ///
    /// The default dials TCP with `TCP_NODELAY`, with HTTP/2 keepalive pings every 10 s (5 s
    /// timeout, also while idle).
    #[must_use]
    pub fn connector(mut self, connector: Connector) -> Self {
        self.connector = Some(connector);
        self
    }

    /// Turns on the near cache (off by default): values read at ONE are kept in this client's
    /// memory, within `options`' bounds, and served from there until a node invalidates them.
    /// The client opens one invalidation stream (`Cache.Invalidations`, role read) per node it
    /// reads from; a read is cached only when that node's stream is live, and everything is
    /// dropped when a stream ends or the topology changes. Writes through this client drop their
    /// keys' entries, so this client never reads its own overwritten values. QUORUM and ALL
    /// reads bypass it. Counters: [`Client::near_cache_stats`] and the
    /// `ringcache_client_near_cache_*` metrics.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), ringcache::Error> {
    /// use std::time::Duration;
    /// use ringcache::{Client, NearCacheOptions};
    ///
    /// let client = Client::builder()
    ///     .seeds(["127.0.0.1:7379"])
    ///     .near_cache(NearCacheOptions {
    ///         max_entries: 50_000,
    ///         max_bytes: 32 << 20,
    ///         ttl: Duration::from_secs(30),
    ///     })
    ///     .connect()
    ///     .await?;
    /// client.get("config:flags").await?; // from the node, then cached
    /// client.get("config:flags").await?; // from memory until the key changes
    /// # Ok(()) }
    /// ```
    pub fn near_cache(mut self, options: NearCacheOptions) -> Self {
        self.near_cache = Some(options);
        self
    }

    /// Connects to the first seed that answers and fetches the cluster's topology from it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when no seed is given, a seed is not a `host:port`, a timeout
    /// is zero, the credentials are unusable, or the TLS certificates or key are bad;
    /// [`Error::Unavailable`] when no seed answers (or completes
    /// a TLS handshake), with each seed's reason; [`Error::Unauthenticated`] or
    /// [`Error::PermissionDenied`] when a seed refuses the credentials (the other seeds are not
    /// tried); [`Error::Protocol`] when the seed sends a topology that does not validate.
    pub async fn connect(self) -> Result<Client, Error> {
        let seeds = conn::parse_seeds_for(&self.seeds, self.tls.is_some())?;
        if self.connect_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "connect timeout must be greater than zero".to_owned(),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "request timeout must be greater than zero".to_owned(),
            ));
        }
        crate::retry::check(&self.retry_budget)?;
        if let Some(near) = &self.near_cache {
            near.check()?;
        }
        crate::breaker::check(&self.breaker)?;
        crate::hot::check(&self.hot)?;
        if self.max_batch_keys == Some(0) {
            return Err(Error::InvalidArgument(
                "max batch keys must be at least 1".to_owned(),
            ));
        }
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "max message bytes must be at least {MIN_MESSAGE_BYTES}"
            )));
        }
        let authorization = self
            .credentials
            .as_ref()
            .map(Credentials::header)
            .transpose()?;
        let tls = self
            .tls
            .as_ref()
            .map(|tls| tls.prepare(self.connect_timeout))
            .transpose()?;
        let factory = match self.connector {
            Some(connector) => conn::connector_factory(self.connect_timeout, tls, connector),
            None => conn::default_factory(self.connect_timeout, tls),
        };
        if let Some(credentials) = &self.credentials
            && self.tls.is_none()
        {
            tracing::warn!(
                user = %credentials.user,
                "credentials without tls: the secret travels in clear text"
            );
        }
        let config = ConnectConfig {
            connect_timeout: self.connect_timeout,
            pool_size: self.pool_size.max(1),
            max_message_bytes: self.max_message_bytes,
            max_batch_keys: self.max_batch_keys,
            retry: RetryPolicy {
                max_attempts: self.retry.max_attempts.max(1),
                ..self.retry
            },
            retry_budget: self.retry_budget,
            breaker: self.breaker,
            request_timeout: self.request_timeout,
            pipelining: self.pipelining,
            factory,
            authorization,
            tls: self.tls.is_some(),
            hot: self.hot,
            local: self.local,
        };
        crate::observe::describe();
        let router = router::connect(&seeds, config).await?;
        let client = Client::new(router, self.default_consistency);
        Ok(match self.near_cache {
            Some(options) => client.with_near_cache(options),
            None => client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ringcache_test_support::closed_addr;

    #[tokio::test]
    async fn empty_or_bad_seeds_are_invalid() {
        let error = Client::connect(Vec::<&str>::new()).await.unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
        let error = Client::builder().connect().await.unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
        let error = Client::connect(["no-port"]).await.unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    }

    #[tokio::test]
    async fn zero_timeouts_are_invalid() {
        for builder in [
            Client::builder().connect_timeout(Duration::ZERO),
            Client::builder().request_timeout(Duration::ZERO),
        ] {
            let error = builder.seeds(["127.0.0.1:1"]).connect().await.unwrap_err();
            assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
        }
    }

    #[tokio::test]
    async fn all_seeds_down_names_every_seed() {
        let (a, b) = (closed_addr(), closed_addr());
        let error = Client::connect([a.as_str(), &format!("http://{b}")])
            .await
            .unwrap_err();
        let Error::Unavailable(message) = &error else {
            panic!("expected unavailable, got {error:?}");
        };
        assert!(message.contains(&a) && message.contains(&b), "{message}");
        assert!(error.is_retryable());
    }

    #[tokio::test]
    async fn a_silent_seed_times_out() {
        // Accepts TCP connections and never speaks HTTP/2.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let error = Client::builder()
            .seeds([&addr])
            .connect_timeout(Duration::from_millis(200))
            .connect()
            .await
            .unwrap_err();
        let Error::Unavailable(message) = &error else {
            panic!("expected unavailable, got {error:?}");
        };
        assert!(message.contains(&addr), "{message}");
        assert!(message.contains("no answer within 200ms"), "{message}");
        accept.abort();
    }

    fn refusing_connector() -> Connector {
        Connector::new(|addr: &str| {
            let why = format!("refusing {addr}");
            Box::pin(async move { Err(std::io::Error::other(why)) })
        })
    }

    #[tokio::test]
    async fn connector_errors_are_reported_per_seed() {
        let error = Client::builder()
            .seeds(["node-a:1", "node-b:2"])
            .connector(refusing_connector())
            .connect()
            .await
            .unwrap_err();
        let Error::Unavailable(message) = &error else {
            panic!("expected unavailable, got {error:?}");
        };
        assert!(
            message.contains("refusing node-a:1") && message.contains("refusing node-b:2"),
            "{message}"
        );
    }

    #[test]
    fn defaults_and_debug() {
        let builder = ClientBuilder::new().pool_size(0);
        assert_eq!(builder.pool_size, 1);
        assert_eq!(builder.connect_timeout, Duration::from_secs(2));
        assert_eq!(builder.request_timeout, Duration::from_secs(5));
        assert_eq!(builder.max_message_bytes, 8 * 1024 * 1024 + 64 * 1024);
        assert!(format!("{builder:?}").contains("connector: \"default\""));
        let debug = format!("{:?}", builder.connector(refusing_connector()));
        assert!(debug.contains("connector: \"custom\""), "{debug}");
    }

    #[test]
    fn debug_output_redacts_the_secret() {
        let builder = ClientBuilder::new().credentials("alice", "hunter2");
        let debug = format!("{builder:?}");
        assert!(debug.contains("alice"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[tokio::test]
    async fn tls_settings_are_checked_with_a_connector_too() {
        let error = Client::builder()
            .seeds(["127.0.0.1:1"])
            .tls(TlsOptions::new("x"))
            .connector(refusing_connector())
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(m) if m.starts_with("tls ca certificate")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn bad_credentials_or_tls_settings_fail_before_dialing() {
        let error = Client::builder()
            .seeds(["127.0.0.1:1"])
            .credentials("a:b", "secret")
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(m) if m.contains("must not contain ':'")),
            "{error:?}"
        );
        let error = Client::builder()
            .seeds(["127.0.0.1:1"])
            .tls(TlsOptions::new("not pem"))
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(m) if m.starts_with("tls ca certificate")),
            "{error:?}"
        );
    }
}
