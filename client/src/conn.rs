//! Connections: seed parsing, the channel factory, and the per-node connection pool through which
//! every request is sent. Which node a request goes to is the router's business, not this module's.

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper_util::rt::TokioIo;
use ringcache_proto::{
    TOPOLOGY_DIGEST_METADATA,
    v1::{NodeInfoRequest, cache_client::CacheClient, cluster_client::ClusterClient},
};
use tokio::{task::JoinSet, time::Instant};
use tonic::{
    Status,
    codegen::http::HeaderValue,
    metadata::MetadataMap,
    transport::{Channel, ClientTlsConfig, Endpoint, Uri},
};

use crate::{
    Connector, Error, RetryBudget, RetryPolicy, observe,
    pipeline::{Outcome, Pipeline, PipelineOp},
    security::NodeChannel,
};

/// Builds a (lazy) channel to a node's `host:port`: [`default_factory`] or
/// [`connector_factory`]. Crate-private, so no tonic type is in the public API; tests inside
/// the crate may make their own.
pub(crate) type ChannelFactory = Arc<dyn Fn(&str) -> Result<Channel, Error> + Send + Sync>;

/// HTTP/2 keepalive of the default channel factory: a ping every 10 s, even when idle, and the
/// connection is dropped when a ping is not acknowledged within 5 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How connections to a node are made.
#[derive(Clone)]
pub(crate) struct ConnectConfig {
    /// Bound on reaching a node: TCP connect, HTTP/2 handshake and a first round trip.
    pub(crate) connect_timeout: Duration,
    /// HTTP/2 connections per node (at least 1).
    pub(crate) pool_size: usize,
    /// Largest gRPC message sent or received.
    pub(crate) max_message_bytes: usize,
    /// The client's own bound on keys per multi-key request (`None`: the nodes' limits alone).
    pub(crate) max_batch_keys: Option<usize>,
    /// The retry policy of calls that do not choose their own.
    pub(crate) retry: RetryPolicy,
    /// The retry budget's settings (checked).
    pub(crate) retry_budget: RetryBudget,
    /// Each node's circuit breaker settings (checked).
    pub(crate) breaker: crate::CircuitBreaker,
    /// Bound on each request to a node (per attempt when a request fails over).
    pub(crate) request_timeout: Duration,
    /// Whether `Cache` requests travel on the pipelined stream ([`crate::pipeline`]) rather
    /// than as unary calls.
    pub(crate) pipelining: bool,
    pub(crate) factory: ChannelFactory,
    /// The `authorization` header put on every request, encoded once; `None` without
    /// credentials.
    pub(crate) authorization: Option<HeaderValue>,
    /// Whether the default factory dials over TLS (for advice on connection failures).
    pub(crate) tls: bool,
    /// Spreading the reads of hot keys (checked).
    pub(crate) hot: crate::hot::HotSettings,
    /// The node running in this process (embedded mode), which serves the ONE reads of keys it
    /// holds.
    pub(crate) local: Option<std::sync::Arc<dyn crate::LocalNode>>,
}

impl ConnectConfig {
    /// A channel to `addr` from the factory, wrapped so that every request on it carries the
    /// credentials. The only way channels to nodes are made.
    pub(crate) fn channel(&self, addr: &str) -> Result<NodeChannel, Error> {
        let channel = (self.factory)(addr)?;
        Ok(NodeChannel::new(channel, self.authorization.clone()))
    }
}

impl fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_size", &self.pool_size)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_batch_keys", &self.max_batch_keys)
            .field("retry", &self.retry)
            .field("retry_budget", &self.retry_budget)
            .field("request_timeout", &self.request_timeout)
            .field("pipelining", &self.pipelining)
            .field("hot", &self.hot)
            .field("local", &self.local.as_ref().map(|local| local.node_id()))
            .field("credentials", &self.authorization.is_some())
            .finish_non_exhaustive()
    }
}

/// The default channel factory: a lazily connecting HTTP/2 channel with TCP_NODELAY and
/// keepalive pings; over TLS when `tls` is given (checked beforehand by
/// [`TlsOptions::prepare`](crate::TlsOptions)), else plain text.
pub(crate) fn default_factory(
    connect_timeout: Duration,
    tls: Option<ClientTlsConfig>,
) -> ChannelFactory {
    Arc::new(move |addr: &str| Ok(endpoint(addr, connect_timeout, tls.as_ref())?.connect_lazy()))
}

/// A factory whose channels get their byte streams from `connector` (the
/// [`ClientBuilder::connector`](crate::ClientBuilder::connector) seam), with the default
/// factory's HTTP/2 settings, and TLS on top of the stream when `tls` is given.
pub(crate) fn connector_factory(
    connect_timeout: Duration,
    tls: Option<ClientTlsConfig>,
    connector: Connector,
) -> ChannelFactory {
    Arc::new(move |addr: &str| {
        let connector = connector.clone();
        let dial = tower::service_fn(move |uri: Uri| {
            let connector = connector.clone();
            async move {
                let authority = uri.authority().map(|a| a.as_str().to_owned());
                let Some(addr) = authority else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("no host:port in {uri}"),
                    ));
                };
                let stream = connector.connect(&addr).await?;
                Ok(TokioIo::new(stream))
            }
        });
        Ok(endpoint(addr, connect_timeout, tls.as_ref())?.connect_with_connector_lazy(dial))
    })
}

/// The endpoint of a node: `https://` with `tls`, else `http://`, with the default factory's
/// settings.
pub(crate) fn endpoint(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| Error::InvalidArgument(format!("bad node address {addr:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot use tls for {addr:?}: {}",
                crate::error::describe_source(&e)
            ))
        })?;
    }
    Ok(endpoint)
}

/// Parses seed addresses of a plain-text client: `host:port`, optionally prefixed by `http://`.
/// Returns the `host:port` forms, in order.
#[cfg(test)]
pub(crate) fn parse_seeds<I, S>(seeds: I) -> Result<Vec<String>, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    parse_seeds_for(seeds, false)
}

/// Parses seed addresses: `host:port`, optionally prefixed by `http://` (a plain-text client) or
/// `https://` (with `tls`). Returns the `host:port` forms, in order.
pub(crate) fn parse_seeds_for<I, S>(seeds: I, tls: bool) -> Result<Vec<String>, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let seeds = seeds
        .into_iter()
        .map(|seed| parse_seed(seed.as_ref(), tls))
        .collect::<Result<Vec<_>, _>>()?;
    if seeds.is_empty() {
        return Err(Error::InvalidArgument("no seed addresses given".to_owned()));
    }
    Ok(seeds)
}

fn parse_seed(seed: &str, tls: bool) -> Result<String, Error> {
    let invalid = |why: &str| Error::InvalidArgument(format!("seed {seed:?}: {why}"));
    let trimmed = seed.trim();
    let addr = match trimmed.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") && !tls => rest,
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") && tls => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => {
            return Err(invalid(
                "http:// but tls is configured (write host:port or https://host:port)",
            ));
        }
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(invalid(
                "https:// needs tls settings (a ca certificate; see ClientBuilder::tls)",
            ));
        }
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?} (only http:// and https:// are supported)"
            )));
        }
        None => trimmed,
    };
    let addr = addr.strip_suffix('/').unwrap_or(addr);
    if addr.is_empty() {
        return Err(invalid("empty address"));
    }
    if addr.contains(['/', '?', '#', '@']) || addr.contains(char::is_whitespace) {
        return Err(invalid("expected host:port"));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(invalid("expected host:port (the port is missing)"));
    };
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.is_empty() || (host.contains(':') && !bracketed) {
        return Err(invalid(
            "expected host:port (write IPv6 addresses as [addr]:port)",
        ));
    }
    if port.parse::<u16>().is_err() {
        return Err(invalid("the port is not a number from 0 to 65535"));
    }
    Ok(addr.to_owned())
}

/// The connections to one node, and the one place a request is sent to a node.
///
/// This is the per-node transport seam: the router picks a node and hands the request to
/// [`NodePool::call`], which sends it on a connection's pipelined stream (the fast
/// path: [`crate::pipeline`]) or, when pipelining is off or the node does not serve it, as a
/// unary call.
pub(crate) struct NodePool {
    addr: String,
    conns: Box<[Conn]>,
    next: AtomicUsize,
    max_message_bytes: usize,
    /// [`PIPELINE_UNKNOWN`], [`PIPELINE_YES`] or [`PIPELINE_NO`].
    pipelining: AtomicU8,
}

/// Pipelining is on, and the node has not answered on the stream yet.
const PIPELINE_UNKNOWN: u8 = 0;
/// The node answers on the stream.
const PIPELINE_YES: u8 = 1;
/// Unary calls only: pipelining is off, or the node does not serve `Pipeline`.
const PIPELINE_NO: u8 = 2;

/// One pooled HTTP/2 connection: the channel, the `Cache` client over it, and its pipeline.
struct Conn {
    channel: NodeChannel,
    cache: CacheClient<NodeChannel>,
    pipeline: Pipeline,
}

impl fmt::Debug for NodePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodePool")
            .field("addr", &self.addr)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Drop for NodePool {
    fn drop(&mut self) {
        observe::pool_opened(self.conns.len(), false);
    }
}

impl NodePool {
    /// A pool over already made channels (at least one).
    pub(crate) fn from_channels(
        addr: &str,
        channels: Vec<NodeChannel>,
        max_message_bytes: usize,
        pipelining: bool,
    ) -> Self {
        let conns: Box<[Conn]> = channels
            .into_iter()
            .map(|channel| {
                let cache = CacheClient::new(channel.clone())
                    .max_decoding_message_size(max_message_bytes)
                    .max_encoding_message_size(max_message_bytes);
                Conn {
                    pipeline: Pipeline::new(cache.clone(), addr),
                    cache,
                    channel,
                }
            })
            .collect();
        observe::pool_opened(conns.len(), true);
        NodePool {
            addr: addr.to_owned(),
            conns,
            next: AtomicUsize::new(0),
            max_message_bytes,
            pipelining: AtomicU8::new(if pipelining {
                PIPELINE_UNKNOWN
            } else {
                PIPELINE_NO
            }),
        }
    }

    /// A pool of `pool_size` channels from the factory, which usually connect lazily: nothing is
    /// checked until the first request.
    pub(crate) fn lazy(addr: &str, config: &ConnectConfig) -> Result<Self, Error> {
        let channels = (0..config.pool_size.max(1))
            .map(|_| config.channel(addr))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_channels(
            addr,
            channels,
            config.max_message_bytes,
            config.pipelining,
        ))
    }

    /// The next connection, round-robin.
    fn pick(&self) -> &Conn {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        &self.conns[index]
    }

    /// A `Cache` client on the next connection (for streams other than the pipeline).
    pub(crate) fn cache(&self) -> CacheClient<NodeChannel> {
        self.pick().cache.clone()
    }

    /// A `Cluster` client on the next connection.
    pub(crate) fn cluster(&self) -> ClusterClient<NodeChannel> {
        ClusterClient::new(self.pick().channel.clone())
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    /// Sends one `Cache` request under `timeout`: on the next connection's pipelined stream
    /// (in batches of at most `max_batch_bytes`), or with `rpc` as a unary call when pipelining
    /// is off or the node does not serve it. Returns the outcome with the topology digest the
    /// node reported, if any.
    pub(crate) async fn call<Req, F, Fut>(
        &self,
        message: Req,
        timeout: Duration,
        max_batch_bytes: usize,
        rpc: F,
    ) -> Reply<Req::Response>
    where
        Req: PipelineOp + Clone,
        F: FnOnce(CacheClient<NodeChannel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Req::Response>, Status>>,
    {
        let support = self.pipelining.load(Ordering::Relaxed);
        // The unary path is boxed: its future (a whole tonic call) is large, and inline it would
        // make every pipelined request's future as large.
        if support == PIPELINE_NO {
            return Box::pin(self.unary(message, timeout, rpc)).await;
        }
        // Until the node has answered on a stream, keep a copy to send as a unary call should it
        // not know `Pipeline`.
        let copy = (support == PIPELINE_UNKNOWN).then(|| message.clone());
        match self
            .pick()
            .pipeline
            .call(message, timeout, max_batch_bytes)
            .await
        {
            Outcome::Done(reply) => {
                if support == PIPELINE_UNKNOWN && reply.digest.is_some() {
                    self.pipelining.store(PIPELINE_YES, Ordering::Relaxed);
                }
                reply
            }
            Outcome::Unsupported => {
                tracing::debug!(addr = %self.addr, "the node does not serve Pipeline; using unary calls");
                self.pipelining.store(PIPELINE_NO, Ordering::Relaxed);
                match copy {
                    Some(message) => Box::pin(self.unary(message, timeout, rpc)).await,
                    None => Reply {
                        digest: None,
                        result: Err(Failure::not_sent(Error::Unavailable(format!(
                            "{} stopped serving the pipeline stream",
                            self.addr
                        )))),
                    },
                }
            }
        }
    }

    /// Runs one unary `Cache` call under `timeout`, both sent to the node (`grpc-timeout`) and
    /// enforced here. Returns the outcome with the topology digest the node reported, if any.
    pub(crate) async fn unary<Req, Resp, F, Fut>(
        &self,
        message: Req,
        timeout: Duration,
        rpc: F,
    ) -> Reply<Resp>
    where
        F: FnOnce(CacheClient<NodeChannel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        let started = Instant::now();
        match tokio::time::timeout(timeout, rpc(self.pick().cache.clone(), request)).await {
            Ok(Ok(response)) => Reply {
                digest: topology_digest(response.metadata()),
                result: Ok(response.into_inner()),
            },
            Ok(Err(status)) => Reply {
                digest: topology_digest(status.metadata()),
                result: Err(Failure::from_status(&status, started.elapsed(), timeout)),
            },
            Err(_) => Reply {
                digest: None,
                result: Err(Failure {
                    error: Error::Timeout {
                        after: Some(timeout),
                    },
                    class: FailureClass::TimedOut,
                }),
            },
        }
    }
}

/// The outcome of one call to one node.
#[derive(Debug)]
pub(crate) struct Reply<T> {
    pub(crate) result: Result<T, Failure>,
    /// The `ringcache-topology-digest` the node sent, with an answer or an error status.
    pub(crate) digest: Option<u64>,
}

/// A failed call: the error for the caller, and what it says about the node.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) class: FailureClass,
}

/// What a failed call says about the node and about the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureClass {
    /// The request never reached the node: the connection could not be made (refused,
    /// unreachable, connect timeout) or no channel could be made to the address.
    NotSent,
    /// The connection broke while the request was in flight: it may or may not have been applied.
    Broken,
    /// The node itself answered `UNAVAILABLE` (leaving, shutting down, not enough replicas).
    NodeUnavailable,
    /// No answer in time (the client's timeout, or the node's `DEADLINE_EXCEEDED`).
    TimedOut,
    /// A definite answer about the request (invalid argument, conflict, memory full, ...).
    Answered,
}

impl FailureClass {
    /// Whether the failure hints that the client's topology may be out of date.
    pub(crate) fn suggests_refresh(self) -> bool {
        matches!(self, Self::NotSent | Self::Broken | Self::NodeUnavailable)
    }
}

impl Failure {
    /// Classifies a status a call received after `elapsed` under `timeout`.
    pub(crate) fn from_status(status: &Status, elapsed: Duration, timeout: Duration) -> Self {
        let not_sent = is_connect_error(status);
        let local = crate::error::is_local_transport_error(status);
        let error = Error::from_status_after(status, elapsed, timeout);
        let class = match &error {
            Error::Unavailable(_) if not_sent => FailureClass::NotSent,
            Error::Unavailable(_) if local => FailureClass::Broken,
            Error::Unavailable(_) => FailureClass::NodeUnavailable,
            Error::Timeout { .. } => FailureClass::TimedOut,
            _ => FailureClass::Answered,
        };
        Failure { error, class }
    }

    /// A channel to the node could not even be made.
    pub(crate) fn not_sent(error: Error) -> Self {
        Failure {
            error,
            class: FailureClass::NotSent,
        }
    }
}

/// Whether the status comes from failing to connect: the request was never sent.
fn is_connect_error(status: &Status) -> bool {
    let mut source = StdError::source(status);
    while let Some(cause) = source {
        if cause.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Reads the `ringcache-topology-digest` metadata of an answer.
pub(crate) fn topology_digest(metadata: &MetadataMap) -> Option<u64> {
    metadata
        .get(TOPOLOGY_DIGEST_METADATA)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Connects to the first seed that answers a probe; returns its index and its pool, or `None`
/// when none answers (`failures` then names every seed with its reason). A seed that refuses the
/// credentials or the user's role ends the search with that error: the other seeds would refuse
/// them too, and each refusal counts as a failed attempt.
pub(crate) async fn open_first_seed(
    seeds: &[String],
    config: &ConnectConfig,
    failures: &mut Vec<String>,
) -> Result<Option<(usize, NodePool)>, Error> {
    for (index, seed) in seeds.iter().enumerate() {
        match open_node(seed, config).await {
            Ok(node) => {
                tracing::debug!(node = %seed, connections = node.conns.len(), "connected to ringcache node");
                return Ok(Some((index, node)));
            }
            Err(ProbeFailure::Denied(error)) => {
                tracing::debug!(seed = %seed, %error, "seed refused the credentials");
                return Err(error);
            }
            Err(ProbeFailure::Down(reason)) => {
                tracing::debug!(seed = %seed, %reason, "seed did not answer");
                match TlsAdvice::of(&reason, config.tls) {
                    Some(advice) => {
                        failures.push(format!("{seed}: {reason} ({})", advice.for_library()));
                    }
                    None => failures.push(format!("{seed}: {reason}")),
                }
            }
        }
    }
    Ok(None)
}

/// What a connection failure suggests about TLS settings, as advice for the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsAdvice {
    /// The node asked for a client certificate and got none.
    ClientCertificateRequired,
    /// The node's certificate did not verify.
    CertificateRejected,
    /// TLS was spoken to something that answered in plain text.
    NodeMayNotSpeakTls,
    /// Plain text was spoken to something that dropped the connection, as a TLS node does.
    NodeMayRequireTls,
}

impl TlsAdvice {
    /// The advice a failure's `reason` calls for, if any, for a client dialing with or without
    /// `tls`.
    pub(crate) fn of(reason: &str, tls: bool) -> Option<Self> {
        if tls {
            if reason.contains("CertificateRequired") {
                Some(Self::ClientCertificateRequired)
            } else if reason.contains("invalid peer certificate") {
                Some(Self::CertificateRejected)
            } else if reason.contains("InvalidContentType") || reason.contains("corrupt message") {
                Some(Self::NodeMayNotSpeakTls)
            } else {
                None
            }
        } else if ["broken pipe", "connection reset", "frame with invalid size"]
            .iter()
            .any(|sign| reason.contains(sign))
        {
            Some(Self::NodeMayRequireTls)
        } else {
            None
        }
    }

    /// The advice in terms of the client's API.
    pub(crate) fn for_library(self) -> &'static str {
        match self {
            Self::ClientCertificateRequired => {
                "the node requires a client certificate: see TlsOptions::client_identity"
            }
            Self::CertificateRejected => {
                "the node's certificate is not trusted: check that the tls ca signed it and that it \
                 names the address dialed or the tls server name"
            }
            Self::NodeMayNotSpeakTls => "the node does not seem to speak tls",
            Self::NodeMayRequireTls => "the node may require tls: see ClientBuilder::tls",
        }
    }

    /// The advice in terms of ringctl's and ringbench's flags.
    #[cfg(feature = "cli")]
    pub(crate) fn for_flags(self) -> &'static str {
        match self {
            Self::ClientCertificateRequired => {
                "the node requires a client certificate: give --tls-cert and --tls-key"
            }
            Self::CertificateRejected => {
                "check that --tls-ca signed the node's certificate and that it names the address \
                 dialed or --tls-server-name"
            }
            Self::NodeMayNotSpeakTls => "the node does not seem to speak tls: drop --tls-ca",
            Self::NodeMayRequireTls => "the node may require tls: give --tls-ca",
        }
    }
}

/// Why a node did not pass the connect probe.
enum ProbeFailure {
    /// It is down, unreachable, silent, or not a gRPC server: why.
    Down(String),
    /// It refused the credentials or the user's role.
    Denied(Error),
}

/// Opens the pool of connections to one node and checks that each of them answers. On failure,
/// returns why.
async fn open_node(addr: &str, config: &ConnectConfig) -> Result<NodePool, ProbeFailure> {
    let pool_size = config.pool_size.max(1);
    let mut channels = Vec::with_capacity(pool_size);
    for _ in 0..pool_size {
        channels.push(
            config
                .channel(addr)
                .map_err(|e| ProbeFailure::Down(e.to_string()))?,
        );
    }

    let all_answered = async {
        // The first connection alone, then the others together: credentials a node refuses
        // cost one failed attempt (which counts against the node's per-address limit), not
        // one per pooled connection.
        probe(channels[0].clone(), config.connect_timeout).await?;
        let mut probes = JoinSet::new();
        for channel in &channels[1..] {
            probes.spawn(probe(channel.clone(), config.connect_timeout));
        }
        while let Some(result) = probes.join_next().await {
            result.map_err(|e| ProbeFailure::Down(format!("probe task failed: {e}")))??;
        }
        Ok::<(), ProbeFailure>(())
    };
    match tokio::time::timeout(config.connect_timeout, all_answered).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ProbeFailure::Down(format!(
                "no answer within {:?}",
                config.connect_timeout
            )));
        }
    }
    Ok(NodePool::from_channels(
        addr,
        channels,
        config.max_message_bytes,
        config.pipelining,
    ))
}

/// Sends one `NodeInfo` round trip. Any answer from the node counts, even an error status such as
/// `UNIMPLEMENTED`; only a broken connection, a node that is unavailable, no answer, or a refusal
/// of the credentials fail.
async fn probe(channel: NodeChannel, timeout: Duration) -> Result<(), ProbeFailure> {
    let mut request = tonic::Request::new(NodeInfoRequest {});
    request.set_timeout(timeout);
    let started = tokio::time::Instant::now();
    match ClusterClient::new(channel).node_info(request).await {
        Ok(response) => {
            let info = response.into_inner();
            tracing::trace!(node_id = %info.node_id, version = %info.version, "node answered");
            Ok(())
        }
        Err(status) if is_not_grpc(&status) => Err(ProbeFailure::Down(format!(
            "not a gRPC server: {}",
            status.message()
        ))),
        Err(status) => match Error::from_status_after(&status, started.elapsed(), timeout) {
            Error::Unavailable(message) => Err(ProbeFailure::Down(message)),
            Error::Timeout { .. } => {
                Err(ProbeFailure::Down(format!("no answer within {timeout:?}")))
            }
            error @ Error::Server {
                code: crate::ServerCode::Cancelled,
                ..
            } => Err(ProbeFailure::Down(error.to_string())),
            error if error.is_denial() => Err(ProbeFailure::Denied(error)),
            // Any other answer comes from a live gRPC server, e.g. UNIMPLEMENTED from a node
            // without the Cluster service.
            _ => Ok(()),
        },
    }
}

/// Whether tonic made the status up from a plain HTTP answer without `grpc-status` (a web server
/// or proxy answering 404, say) rather than receiving it from a gRPC server.
fn is_not_grpc(status: &tonic::Status) -> bool {
    let message = status.message();
    message.starts_with("grpc-status header missing")
        || message.starts_with("protocol error: missing grpc-status")
}

#[cfg(test)]
mod tests {
    use super::*;

    use ringcache_test_support::closed_addr;

    #[tokio::test]
    async fn a_refused_connection_is_classified_as_not_sent() {
        let addr = closed_addr();
        let channel = default_factory(Duration::from_secs(1), None)(&addr).unwrap();
        let pool =
            NodePool::from_channels(&addr, vec![NodeChannel::new(channel, None)], 1 << 20, false);
        let request = ringcache_proto::v1::GetRequest::default();
        for _ in 0..2 {
            let reply = pool
                .unary(
                    request.clone(),
                    Duration::from_secs(1),
                    |mut c, r| async move { c.get(r).await },
                )
                .await;
            let failure = reply.result.unwrap_err();
            assert_eq!(failure.class, FailureClass::NotSent, "{failure:?}");
            assert!(
                matches!(failure.error, Error::Unavailable(_)),
                "{failure:?}"
            );
            assert_eq!(reply.digest, None);
        }
    }

    #[test]
    fn digest_metadata_is_read_as_decimal() {
        let mut metadata = MetadataMap::new();
        assert_eq!(topology_digest(&metadata), None);
        metadata.insert(
            TOPOLOGY_DIGEST_METADATA,
            tonic::metadata::MetadataValue::from_static("18446744073709551615"),
        );
        assert_eq!(topology_digest(&metadata), Some(u64::MAX));
        metadata.insert(
            TOPOLOGY_DIGEST_METADATA,
            tonic::metadata::MetadataValue::from_static("0x12"),
        );
        assert_eq!(topology_digest(&metadata), None);
    }

    #[test]
    fn seeds_accept_an_http_prefix() {
        assert_eq!(
            parse_seeds(["127.0.0.1:7379", "http://node-2:7379", " HTTP://node-3:1/ "]).unwrap(),
            ["127.0.0.1:7379", "node-2:7379", "node-3:1"]
        );
        assert_eq!(parse_seeds(["[::1]:7379"]).unwrap(), ["[::1]:7379"]);
        assert_eq!(
            parse_seeds(vec![String::from("localhost:80")]).unwrap(),
            ["localhost:80"]
        );
    }

    #[test]
    fn the_seed_scheme_must_match_the_tls_setting() {
        assert_eq!(
            parse_seeds_for(["https://node-1:7379", "node-2:7379"], true).unwrap(),
            ["node-1:7379", "node-2:7379"]
        );
        let error = parse_seeds_for(["http://node-1:7379"], true).unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(m) if m.contains("tls is configured")),
            "{error:?}"
        );
        let error = parse_seeds(["https://node-1:7379"]).unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(m) if m.contains("https:// needs tls")),
            "{error:?}"
        );
    }

    #[test]
    fn empty_seed_list_is_invalid() {
        let error = parse_seeds(Vec::<String>::new()).unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(m) if m == "no seed addresses given"),
            "{error:?}"
        );
    }

    #[test]
    fn malformed_seeds_are_invalid() {
        for seed in [
            "",
            "   ",
            "http://",
            "localhost",
            "localhost:",
            "localhost:port",
            "localhost:70000",
            ":7379",
            "::1:7379",
            "https://node:7379",
            "grpc://node:7379",
            "file:///x",
            "node:7379/path",
            "user@node:7379",
            "no de:7379",
        ] {
            let error = parse_seeds([seed]).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidArgument(m) if m.starts_with("seed ")),
                "{seed:?} gave {error:?}"
            );
        }
    }
}
