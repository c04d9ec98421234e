//! Connections: seed parsing, the channel factory, the per-node connection pool, and the router
//! that picks a connection for each request.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use ringcache_proto::v1::{
    NodeInfoRequest, cache_client::CacheClient, cluster_client::ClusterClient,
};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// Builds a (possibly lazy) channel to a node's `host:port`.
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
    pub(crate) factory: ChannelFactory,
}

impl fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_size", &self.pool_size)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish_non_exhaustive()
    }
}

/// The default channel factory: a lazily connecting plain-text HTTP/2 channel with TCP_NODELAY and
/// keepalive pings.
pub(crate) fn default_factory(connect_timeout: Duration) -> ChannelFactory {
    Arc::new(move |addr: &str| {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::InvalidArgument(format!("bad node address {addr:?}: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_lazy())
    })
}

/// Parses seed addresses: `host:port`, optionally prefixed by `http://`. Returns the `host:port`
/// forms, in order.
pub(crate) fn parse_seeds<I, S>(seeds: I) -> Result<Vec<String>, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let seeds = seeds
        .into_iter()
        .map(|seed| parse_seed(seed.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    if seeds.is_empty() {
        return Err(Error::InvalidArgument("no seed addresses given".to_owned()));
    }
    Ok(seeds)
}

fn parse_seed(seed: &str) -> Result<String, Error> {
    let invalid = |why: &str| Error::InvalidArgument(format!("seed {seed:?}: {why}"));
    let trimmed = seed.trim();
    let addr = match trimmed.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?} (only http:// is supported)"
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

/// The connections to one node; requests take them in turn.
pub(crate) struct NodePool {
    addr: String,
    conns: Box<[CacheClient<Channel>]>,
    next: AtomicUsize,
}

impl fmt::Debug for NodePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodePool")
            .field("addr", &self.addr)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl NodePool {
    /// The next connection, round-robin. Cloning the generated client is cheap (a handle).
    fn pick(&self) -> CacheClient<Channel> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[index].clone()
    }
}

/// Picks the connection each request goes out on.
///
/// Today the client talks to the single node it connected to. Topology-aware routing replaces the
/// inside of [`Router::for_key`] with a ring lookup of the key's owner.
#[derive(Debug)]
pub(crate) struct Router {
    node: NodePool,
}

impl Router {
    /// The connection for a request on `key`.
    pub(crate) fn for_key(&self, _key: &[u8]) -> CacheClient<Channel> {
        self.node.pick()
    }

    /// The connection for a batch request. `keys` must not be empty. Until batches are split by
    /// owner, the whole batch goes where its first key goes.
    pub(crate) fn for_batch(&self, keys: &[Bytes]) -> CacheClient<Channel> {
        self.for_key(keys.first().map_or(&[][..], |k| &k[..]))
    }

    /// The address of the node the client talks to.
    pub(crate) fn addr(&self) -> &str {
        &self.node.addr
    }
}

#[cfg(test)]
impl Router {
    /// A router over one lazy channel, for tests that need no node.
    pub(crate) fn single(addr: &str, channel: Channel) -> Router {
        Router {
            node: NodePool {
                addr: addr.to_owned(),
                conns: Box::new([CacheClient::new(channel)]),
                next: AtomicUsize::new(0),
            },
        }
    }
}

/// Connects to the first seed that answers.
pub(crate) async fn connect(seeds: &[String], config: &ConnectConfig) -> Result<Router, Error> {
    let mut failures = Vec::with_capacity(seeds.len());
    for seed in seeds {
        match open_node(seed, config).await {
            Ok(node) => {
                tracing::debug!(node = %seed, connections = node.conns.len(), "connected to ringcache node");
                return Ok(Router { node });
            }
            Err(reason) => {
                tracing::debug!(seed = %seed, %reason, "seed did not answer");
                failures.push(format!("{seed}: {reason}"));
            }
        }
    }
    Err(Error::Unavailable(format!(
        "no seed answered ({})",
        failures.join("; ")
    )))
}

/// Opens the pool of connections to one node and checks that each of them answers. On failure,
/// returns why.
async fn open_node(addr: &str, config: &ConnectConfig) -> Result<NodePool, String> {
    let pool_size = config.pool_size.max(1);
    let mut channels = Vec::with_capacity(pool_size);
    for _ in 0..pool_size {
        channels.push((config.factory)(addr).map_err(|e| e.to_string())?);
    }

    let mut probes = JoinSet::new();
    for channel in &channels {
        probes.spawn(probe(channel.clone(), config.connect_timeout));
    }
    let all_answered = async {
        while let Some(result) = probes.join_next().await {
            result.map_err(|e| format!("probe task failed: {e}"))??;
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(config.connect_timeout, all_answered).await {
        Ok(result) => result?,
        Err(_) => return Err(format!("no answer within {:?}", config.connect_timeout)),
    }

    let conns = channels
        .into_iter()
        .map(|channel| {
            CacheClient::new(channel)
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes)
        })
        .collect();
    Ok(NodePool {
        addr: addr.to_owned(),
        conns,
        next: AtomicUsize::new(0),
    })
}

/// Sends one `NodeInfo` round trip. Any answer from the node counts, even an error status such as
/// `UNIMPLEMENTED`; only a broken connection, a node that is unavailable, or no answer fail.
async fn probe(channel: Channel, timeout: Duration) -> Result<(), String> {
    let mut request = tonic::Request::new(NodeInfoRequest {});
    request.set_timeout(timeout);
    let started = tokio::time::Instant::now();
    match ClusterClient::new(channel).node_info(request).await {
        Ok(response) => {
            let info = response.into_inner();
            tracing::trace!(node_id = %info.node_id, version = %info.version, "node answered");
            Ok(())
        }
        Err(status) if is_not_grpc(&status) => {
            Err(format!("not a gRPC server: {}", status.message()))
        }
        Err(status) => match Error::from_status_after(status, started.elapsed(), timeout) {
            Error::Unavailable(message) => Err(message),
            Error::Timeout { .. } => Err(format!("no answer within {timeout:?}")),
            error @ Error::Server {
                code: tonic::Code::Cancelled,
                ..
            } => Err(error.to_string()),
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
