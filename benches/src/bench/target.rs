//! What the harness sends requests to: the [`Target`] and [`Connection`] traits, and the
//! targets there are today: ringcache (through the `ringcache` client crate, smart routing
//! included) and anything that speaks RESP (through the `redis` crate) — Redis, or ringcache's
//! own RESP port — either one server (`redis://`) or a cluster through the `redis` crate's
//! cluster client (`redis+cluster://`: it reads `CLUSTER SLOTS` and sends each key to its
//! slot's node).
//!
//! A new system (memcached) is one more pair of types here and one more arm in [`TargetUrl`];
//! the runner, reports and suite do not change.

use std::{fmt, future::Future, time::Duration};

use bytes::Bytes;
use ringcache::ctl::Security;
use serde::{Deserialize, Serialize};

use crate::bench::workload::Operation;

/// What one request found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keys read that existed.
    pub hits: u32,
    /// Keys read that did not.
    pub misses: u32,
}

/// Why a request (or a connection) failed: a short kind for grouping (`timeout`, `unavailable`,
/// `io`, …) and the target's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// Stable, lowercase kind used to group errors in reports.
    pub kind: &'static str,
    /// The target's own description.
    pub message: String,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for OpError {}

/// A system under test, able to open connections.
pub trait Target: Send + Sync {
    /// One bench connection: the unit that carries `--concurrency` requests in flight.
    type Conn: Connection;

    /// Short name for reports: `ringcache`, `redis`.
    fn kind(&self) -> &'static str;

    /// Opens one connection, ready to serve requests.
    fn connect(&self) -> impl Future<Output = Result<Self::Conn, OpError>> + Send;
}

/// One connection to a target. It must accept several requests in flight at once (`&self`).
pub trait Connection: Send + Sync + 'static {
    /// Runs one operation.
    fn execute(&self, op: Operation) -> impl Future<Output = Result<Outcome, OpError>> + Send + '_;
}

/// Where to send requests, parsed from a URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TargetUrl {
    /// `ringcache://host:port[,host:port…]`: seed nodes of a ringcache cluster.
    Ringcache {
        /// Seeds as `host:port`.
        seeds: Vec<String>,
    },
    /// `redis://host:port[/db]`, passed to the `redis` crate as written.
    Redis {
        /// The URL.
        url: String,
    },
    /// `redis+cluster://host:port[,host:port…]`: seed nodes of a Redis Cluster (or of a
    /// ringcache cluster's RESP ports), reached through the `redis` crate's cluster client.
    RedisCluster {
        /// Seeds as `host:port`.
        seeds: Vec<String>,
    },
}

impl TargetUrl {
    /// `ringcache`, `redis` or `redis-cluster`: the client that talks to the target (a
    /// `redis://` URL may point at ringcache's RESP port).
    pub fn kind(&self) -> &'static str {
        match self {
            TargetUrl::Ringcache { .. } => "ringcache",
            TargetUrl::Redis { .. } => "redis",
            TargetUrl::RedisCluster { .. } => "redis-cluster",
        }
    }
}

/// `host:port[,host:port…]` after a scheme: the seeds, or why they are not seeds.
fn parse_seeds(s: &str, rest: &str, scheme: &str) -> Result<Vec<String>, String> {
    let seeds: Vec<String> = rest
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .filter(|seed| !seed.is_empty())
        .map(str::to_owned)
        .collect();
    if seeds.is_empty() {
        return Err(format!(
            "{s:?} names no node: use {scheme}://host:port[,host:port]"
        ));
    }
    if let Some(bad) = seeds.iter().find(|seed| !has_port(seed)) {
        return Err(format!("seed {bad:?} in {s:?} is not host:port"));
    }
    Ok(seeds)
}

impl std::str::FromStr for TargetUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("ringcache://") {
            let seeds = parse_seeds(s, rest, "ringcache")?;
            return Ok(TargetUrl::Ringcache { seeds });
        }
        if let Some(rest) = s.strip_prefix("redis+cluster://") {
            let seeds = parse_seeds(s, rest, "redis+cluster")?;
            return Ok(TargetUrl::RedisCluster { seeds });
        }
        if s.starts_with("redis://") || s.starts_with("rediss://") || s.starts_with("redis+unix://")
        {
            redis::Client::open(s).map_err(|e| format!("bad redis URL {s:?}: {e}"))?;
            return Ok(TargetUrl::Redis { url: s.to_owned() });
        }
        Err(format!(
            "unknown target {s:?}: use ringcache://host:port[,host:port], redis://host:port or redis+cluster://host:port[,host:port]"
        ))
    }
}

fn has_port(seed: &str) -> bool {
    seed.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetUrl::Ringcache { seeds } => write!(f, "ringcache://{}", seeds.join(",")),
            TargetUrl::Redis { url } => f.write_str(url),
            TargetUrl::RedisCluster { seeds } => write!(f, "redis+cluster://{}", seeds.join(",")),
        }
    }
}

impl TryFrom<String> for TargetUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<TargetUrl> for String {
    fn from(url: TargetUrl) -> String {
        url.to_string()
    }
}

/// Client settings shared by every target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSettings {
    /// How long one request may take before it fails as a timeout, ms.
    pub request_timeout_ms: u64,
    /// How long connecting may take, ms.
    pub connect_timeout_ms: u64,
    /// ringcache: HTTP/2 connections per node inside each bench connection.
    pub pool_size: usize,
    /// ringcache: consistency level of every request (`None`: the cluster's default).
    pub consistency: Option<ConsistencyLevel>,
    /// ringcache: how requests travel to a node.
    #[serde(default)]
    pub transport: Transport,
    /// ringcache: whether connections use TLS (`--tls-ca`). Credentials are never recorded.
    #[serde(default)]
    pub tls: bool,
    /// ringcache: each client's near cache, by its most entries (`None`: off).
    #[serde(default)]
    pub near_cache_entries: Option<u64>,
}

/// How the ringcache client carries requests (its builder's `pipelining` setting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The long-lived pipelined stream per connection: requests issued while others are in
    /// flight leave together in one batch (the client's default).
    #[default]
    Pipelined,
    /// One unary gRPC call per request.
    Unary,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            request_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
            pool_size: 1,
            consistency: None,
            transport: Transport::Pipelined,
            tls: false,
            near_cache_entries: None,
        }
    }
}

/// ringcache's consistency levels, as flags and JSON write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyLevel {
    /// One replica.
    One,
    /// A majority of the key's replicas.
    Quorum,
    /// Every replica.
    All,
}

/// A ringcache cluster reached through the `ringcache` client crate. Each bench connection is a
/// client of its own (topology, watch stream, `pool_size` HTTP/2 connections per node), so
/// `--connections` counts independent clients.
#[derive(Debug, Clone)]
pub struct RingcacheTarget {
    seeds: Vec<String>,
    settings: ClientSettings,
    security: Security,
    /// The clients connected, kept to sum their near-cache counters after the run.
    clients: std::sync::Arc<std::sync::Mutex<Vec<ringcache::Client>>>,
}

impl RingcacheTarget {
    /// A target reached through `seeds` (`host:port`), in plain text without credentials.
    pub fn new(seeds: Vec<String>, settings: ClientSettings) -> Self {
        Self {
            seeds,
            settings,
            security: Security::default(),
            clients: std::sync::Arc::default(),
        }
    }

    /// The near-cache counters of every client this target connected, summed (`None`: the
    /// near cache is off).
    pub fn near_cache_totals(&self) -> Option<ringcache::NearCacheStats> {
        self.settings.near_cache_entries?;
        let clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut total = ringcache::NearCacheStats::default();
        for stats in clients
            .iter()
            .filter_map(ringcache::Client::near_cache_stats)
        {
            total.hits += stats.hits;
            total.misses += stats.misses;
            total.invalidations += stats.invalidations;
            total.flushes += stats.flushes;
            total.entries += stats.entries;
            total.charged_bytes += stats.charged_bytes;
            total.streams += stats.streams;
        }
        Some(total)
    }

    /// The same target reached with these TLS settings and credentials (from
    /// [`SecurityArgs`](ringcache::ctl::SecurityArgs), the flags ringctl has too).
    #[must_use]
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }
}

impl Target for RingcacheTarget {
    type Conn = RingcacheConnection;

    fn kind(&self) -> &'static str {
        "ringcache"
    }

    async fn connect(&self) -> Result<RingcacheConnection, OpError> {
        let mut builder = ringcache::Client::builder()
            .seeds(&self.seeds)
            .pool_size(self.settings.pool_size)
            .pipelining(self.settings.transport == Transport::Pipelined)
            .request_timeout(Duration::from_millis(
                self.settings.request_timeout_ms.max(1),
            ))
            .connect_timeout(Duration::from_millis(
                self.settings.connect_timeout_ms.max(1),
            ));
        if let Some(level) = self.settings.consistency {
            builder = builder.default_consistency(match level {
                ConsistencyLevel::One => ringcache::Consistency::One,
                ConsistencyLevel::Quorum => ringcache::Consistency::Quorum,
                ConsistencyLevel::All => ringcache::Consistency::All,
            });
        }
        if let Some(max_entries) = self.settings.near_cache_entries {
            builder = builder.near_cache(ringcache::NearCacheOptions {
                max_entries,
                ..ringcache::NearCacheOptions::default()
            });
        }
        let client = self
            .security
            .apply(builder)
            .connect()
            .await
            .map_err(|e| ringcache_error(&e))?;
        if self.settings.near_cache_entries.is_some() {
            self.clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(client.clone());
        }
        Ok(RingcacheConnection { client })
    }
}

/// One ringcache client.
#[derive(Debug, Clone)]
pub struct RingcacheConnection {
    client: ringcache::Client,
}

fn ringcache_error(error: &ringcache::Error) -> OpError {
    let kind = match error {
        ringcache::Error::InvalidArgument(_) => "invalid_argument",
        ringcache::Error::CasConflict { .. } => "cas_conflict",
        ringcache::Error::MemoryFull(_) => "memory_full",
        ringcache::Error::Unavailable(_) => "unavailable",
        ringcache::Error::Timeout { .. } => "timeout",
        ringcache::Error::Protocol(_) => "protocol",
        ringcache::Error::Server { .. } => "server",
        ringcache::Error::Unauthenticated { .. } => "unauthenticated",
        ringcache::Error::PermissionDenied { .. } => "permission_denied",
        _ => "other",
    };
    OpError {
        kind,
        message: error.to_string(),
    }
}

fn count_hits<T>(values: &[Option<T>]) -> Outcome {
    let hits = values.iter().filter(|v| v.is_some()).count() as u32;
    Outcome {
        hits,
        misses: values.len() as u32 - hits,
    }
}

impl Connection for RingcacheConnection {
    async fn execute(&self, op: Operation) -> Result<Outcome, OpError> {
        let client = &self.client;
        let result = match op {
            Operation::Get(key) => client.get(key).await.map(|v| count_hits(&[v])),
            Operation::Set { key, value, ttl } => match ttl {
                Some(ttl) => client.set_ex(key, value, ttl).await,
                None => client.set(key, value).await,
            }
            .map(|_| Outcome::default()),
            Operation::Incr(key) => client.incr(key, 1).await.map(|_| Outcome::default()),
            Operation::Del(key) => client.delete(key).await.map(|_| Outcome::default()),
            Operation::Mget(keys) => client.mget(keys).await.map(|v| count_hits(&v)),
            Operation::Mset { entries, ttl } => {
                client.mset(entries, ttl).await.map(|_| Outcome::default())
            }
        };
        result.map_err(|e| ringcache_error(&e))
    }
}

/// A Redis server reached through the `redis` crate. Each bench connection is one multiplexed
/// connection: requests in flight on it are pipelined on one TCP connection.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    client: redis::Client,
    settings: ClientSettings,
}

impl RedisTarget {
    /// A target at `url` (`redis://host:port`).
    ///
    /// # Errors
    ///
    /// When the URL is not one the `redis` crate accepts.
    pub fn new(url: &str, settings: ClientSettings) -> Result<Self, OpError> {
        let client = redis::Client::open(url).map_err(|e| redis_error(&e))?;
        Ok(Self { client, settings })
    }
}

impl Target for RedisTarget {
    type Conn = RedisConnection;

    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn connect(&self) -> Result<RedisConnection, OpError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(
                self.settings.connect_timeout_ms.max(1),
            )))
            .set_response_timeout(Some(Duration::from_millis(
                self.settings.request_timeout_ms.max(1),
            )));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(RedisConnection { conn })
    }
}

/// A Redis Cluster (or ringcache's RESP ports) reached through the `redis` crate's cluster
/// client: it reads the slot map (`CLUSTER SLOTS`) from a seed, keeps one multiplexed connection
/// per node, sends each command to its key's slot owner, splits `MGET`/`MSET` by slot and
/// follows `-MOVED`. Each bench connection is one cluster client of its own.
#[derive(Debug, Clone)]
pub struct RedisClusterTarget {
    client: redis::cluster::ClusterClient,
}

impl RedisClusterTarget {
    /// A target reached through `seeds` (`host:port`).
    ///
    /// # Errors
    ///
    /// When the `redis` crate refuses the seeds.
    pub fn new(seeds: &[String], settings: ClientSettings) -> Result<Self, OpError> {
        let urls: Vec<String> = seeds.iter().map(|seed| format!("redis://{seed}")).collect();
        let client = redis::cluster::ClusterClientBuilder::new(urls)
            .connection_timeout(Duration::from_millis(settings.connect_timeout_ms.max(1)))
            .response_timeout(Duration::from_millis(settings.request_timeout_ms.max(1)))
            .build()
            .map_err(|e| redis_error(&e))?;
        Ok(Self { client })
    }
}

impl Target for RedisClusterTarget {
    type Conn = RedisConnection<redis::cluster_async::ClusterConnection>;

    fn kind(&self) -> &'static str {
        "redis-cluster"
    }

    async fn connect(&self) -> Result<Self::Conn, OpError> {
        let conn = self
            .client
            .get_async_connection()
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(RedisConnection { conn })
    }
}

/// One multiplexed Redis connection, or one cluster client (a multiplexed connection per node).
#[derive(Clone)]
pub struct RedisConnection<C = redis::aio::MultiplexedConnection> {
    conn: C,
}

impl<C> fmt::Debug for RedisConnection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection").finish_non_exhaustive()
    }
}

fn redis_error(error: &redis::RedisError) -> OpError {
    let kind = if error.is_timeout() {
        "timeout"
    } else {
        match error.kind() {
            redis::ErrorKind::Io => "io",
            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension => "server",
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => "protocol",
            redis::ErrorKind::AuthenticationFailed => "auth",
            _ => "client",
        }
    };
    OpError {
        kind,
        message: error.to_string(),
    }
}

fn redis_command(name: &str, args: usize, bytes: usize) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(args + 1, bytes + name.len());
    cmd.arg(name);
    cmd
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn set_command(key: &Bytes, value: &Bytes, ttl: Option<Duration>) -> redis::Cmd {
    let mut cmd = redis_command("SET", 4, key.len() + value.len() + 24);
    cmd.arg(&key[..]).arg(&value[..]);
    if let Some(ttl) = ttl {
        cmd.arg("PX").arg(ttl_ms(ttl));
    }
    cmd
}

/// How a connection sends several `SET PX` at once (`MSET` takes no TTL).
pub trait SetMany: redis::aio::ConnectionLike + Clone + Send + Sync + 'static {
    /// Runs the `SET`s, all in flight together.
    fn set_many(
        &mut self,
        sets: Vec<redis::Cmd>,
    ) -> impl Future<Output = redis::RedisResult<()>> + Send;
}

impl SetMany for redis::aio::MultiplexedConnection {
    /// One pipeline: one write, one round trip.
    async fn set_many(&mut self, sets: Vec<redis::Cmd>) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for cmd in sets {
            pipe.add_command(cmd);
        }
        pipe.query_async::<()>(self).await
    }
}

impl SetMany for redis::cluster_async::ClusterConnection {
    /// The cluster client refuses a pipeline across slots: each `SET` on its own, concurrently
    /// (the client pipelines those bound for one node on its connection).
    async fn set_many(&mut self, sets: Vec<redis::Cmd>) -> redis::RedisResult<()> {
        let conn = self.clone();
        let sends = sets.into_iter().map(|cmd| {
            let mut conn = conn.clone();
            async move { cmd.query_async::<()>(&mut conn).await }
        });
        futures_util::future::try_join_all(sends).await.map(drop)
    }
}

impl<C: SetMany> Connection for RedisConnection<C> {
    async fn execute(&self, op: Operation) -> Result<Outcome, OpError> {
        use redis::Value;
        // A clone is a handle to the same multiplexed pipeline (reference counts only).
        let mut conn = self.conn.clone();
        let result = match op {
            Operation::Get(key) => {
                let mut cmd = redis_command("GET", 1, key.len());
                cmd.arg(&key[..]);
                cmd.query_async::<Value>(&mut conn).await.map(|v| Outcome {
                    hits: u32::from(v != Value::Nil),
                    misses: u32::from(v == Value::Nil),
                })
            }
            Operation::Set { key, value, ttl } => set_command(&key, &value, ttl)
                .query_async::<Value>(&mut conn)
                .await
                .map(|_| Outcome::default()),
            Operation::Incr(key) => {
                let mut cmd = redis_command("INCR", 1, key.len());
                cmd.arg(&key[..]);
                cmd.query_async::<i64>(&mut conn)
                    .await
                    .map(|_| Outcome::default())
            }
            Operation::Del(key) => {
                let mut cmd = redis_command("DEL", 1, key.len());
                cmd.arg(&key[..]);
                cmd.query_async::<i64>(&mut conn)
                    .await
                    .map(|_| Outcome::default())
            }
            Operation::Mget(keys) => {
                let bytes = keys.iter().map(Bytes::len).sum();
                let mut cmd = redis_command("MGET", keys.len(), bytes);
                for key in &keys {
                    cmd.arg(&key[..]);
                }
                cmd.query_async::<Vec<Value>>(&mut conn)
                    .await
                    .map(|values| {
                        let hits = values.iter().filter(|v| **v != Value::Nil).count() as u32;
                        Outcome {
                            hits,
                            misses: values.len() as u32 - hits,
                        }
                    })
            }
            Operation::Mset { entries, ttl: None } => {
                let bytes = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
                let mut cmd = redis_command("MSET", entries.len() * 2, bytes);
                for (key, value) in &entries {
                    cmd.arg(&key[..]).arg(&value[..]);
                }
                cmd.query_async::<Value>(&mut conn)
                    .await
                    .map(|_| Outcome::default())
            }
            Operation::Mset {
                entries,
                ttl: Some(ttl),
            } => {
                // MSET takes no TTL: one SET PX per key, all in flight at once.
                let sets = entries
                    .iter()
                    .map(|(key, value)| set_command(key, value, Some(ttl)))
                    .collect();
                conn.set_many(sets).await.map(|()| Outcome::default())
            }
        };
        result.map_err(|e| redis_error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls_parse_and_print() {
        let url: TargetUrl = "ringcache://127.0.0.1:7379, 127.0.0.2:7379/"
            .parse()
            .unwrap();
        assert_eq!(
            url,
            TargetUrl::Ringcache {
                seeds: vec!["127.0.0.1:7379".into(), "127.0.0.2:7379".into()]
            }
        );
        assert_eq!(url.to_string(), "ringcache://127.0.0.1:7379,127.0.0.2:7379");
        assert_eq!(url.kind(), "ringcache");
        let redis: TargetUrl = "redis://127.0.0.1:6379".parse().unwrap();
        assert_eq!(redis.kind(), "redis");
        assert_eq!(redis.to_string(), "redis://127.0.0.1:6379");
        assert!("ringcache://".parse::<TargetUrl>().is_err());
        assert!(
            "ringcache://localhost"
                .parse::<TargetUrl>()
                .unwrap_err()
                .contains("host:port")
        );
        let cluster: TargetUrl = "redis+cluster://127.0.0.1:6479,127.0.0.2:6479"
            .parse()
            .unwrap();
        assert_eq!(
            cluster,
            TargetUrl::RedisCluster {
                seeds: vec!["127.0.0.1:6479".into(), "127.0.0.2:6479".into()]
            }
        );
        assert_eq!(cluster.kind(), "redis-cluster");
        assert_eq!(
            cluster.to_string(),
            "redis+cluster://127.0.0.1:6479,127.0.0.2:6479"
        );
        assert!(
            "redis+cluster://127.0.0.1"
                .parse::<TargetUrl>()
                .unwrap_err()
                .contains("host:port")
        );
        assert!(
            "redis+cluster://"
                .parse::<TargetUrl>()
                .unwrap_err()
                .contains("names no node")
        );
        assert!(
            "memcached://x:1"
                .parse::<TargetUrl>()
                .unwrap_err()
                .contains("unknown target")
        );
    }

    #[test]
    fn ringcache_errors_get_stable_kinds() {
        let error = ringcache_error(&ringcache::Error::Timeout { after: None });
        assert_eq!(error.kind, "timeout");
        let error = ringcache_error(&ringcache::Error::Unavailable("down".into()));
        assert_eq!(error.kind, "unavailable");
        assert!(error.to_string().contains("down"));
        let error = ringcache_error(&ringcache::Error::Unauthenticated {
            message: "bad credentials".into(),
        });
        assert_eq!(error.kind, "unauthenticated");
        let error = ringcache_error(&ringcache::Error::PermissionDenied {
            message: "role read cannot write".into(),
        });
        assert_eq!(error.kind, "permission_denied");
    }
}
