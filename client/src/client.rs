//! [`Client`]: the requests of the cache API.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use ringcache_proto::{topology::Topology, v1 as pb};
use tokio::time::Instant;
use tracing::Instrument;

use crate::{
    CallOptions, ClientBuilder, Consistency, Entry, Error, KeyTtl, NearCacheOptions,
    NearCacheStats, RetryPolicy, SetCondition, SetOptions, SetOutcome,
    near::NearCache,
    observe,
    retry::Retry,
    router::{Access, Call, Router},
    wire,
};

/// A connection to a ringcache cluster.
///
/// Cloning is cheap: clones share the connections and the topology. Keys and values are taken as
/// `impl Into<Bytes>` (`&'static str`, `String`, `Vec<u8>`, [`Bytes`], ...), so owned buffers
/// are sent without a copy; copy borrowed data with [`Bytes::copy_from_slice`].
///
/// # Routing
///
/// The client keeps the cluster's [`Topology`] and computes the ring from it, as the nodes do.
/// Each request goes straight to its key's primary over that node's own pool of HTTP/2
/// connections, opened on first use. Batches (`mget`, `mset`, `mdelete`) are split by primary and
/// the parts sent concurrently. Until the ring has members (or when the node connected to has no
/// `Cluster` service), every request goes to the node the client connected through, which
/// forwards what it does not own.
///
/// # Refresh
///
/// A background task (spawned on the Tokio runtime of [`connect`](Client::connect), ended when
/// the last clone is dropped) watches the topology on one node and moves to another member or
/// seed when that node goes away. Every answer also carries the answering node's topology
/// digest; when it differs from [`topology_digest`](Client::topology_digest), the client
/// fetches the topology from that node. Refreshes are coalesced: a burst of such answers causes
/// one fetch, and fetches start at least 250 ms apart.
///
/// # Failover
///
/// When the chosen node cannot be reached, the request is sent to the key's next replica, each
/// replica at most once, and the topology is refreshed; a node that failed to connect is tried
/// after the other replicas for the next 2 s. Reads also move on after a timeout, a broken
/// connection or an `UNAVAILABLE` answer. Writes move on only when the request certainly never
/// reached the node (the connection could not be made): a write that timed out or whose
/// connection broke in flight may have been applied, so it fails with [`Error::Timeout`] or
/// [`Error::Unavailable`] instead of running twice. Other errors ([`Error::InvalidArgument`],
/// [`Error::CasConflict`], [`Error::MemoryFull`], ...) are answers and are never retried. When
/// every replica fails, the error is [`Error::Unavailable`] naming each node with its reason.
/// The request timeout applies to each attempt.
///
/// ```no_run
/// # async fn run() -> Result<(), ringcache::Error> {
/// use std::time::Duration;
/// use ringcache::Client;
///
/// let client = Client::connect(["127.0.0.1:7379"]).await?;
/// client.set("user:1", "alice").await?;
/// assert_eq!(client.get("user:1").await?.as_deref(), Some(&b"alice"[..]));
/// client.set_ex("session:9", "token", Duration::from_secs(30)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    /// Shared by every clone; the background topology watch ends when the last one is dropped.
    inner: Arc<Router>,
    /// The near cache, when the builder turned it on; shared by every clone.
    near: Option<Arc<NearCache>>,
    /// This handle's options: timeout, consistency (`None`: the cluster default) and retry
    /// policy (`None`: the builder's).
    options: CallOptions,
}

/// Counters of a client and its clones, from [`Client::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClientStats {
    /// ONE reads of hot keys sent to the key's replicas in turn instead of its primary.
    pub spread_reads: u64,
    /// ONE reads served by the process's own embedded node
    /// ([`ClientBuilder::local_node`]), without a network request.
    pub local_reads: u64,
    /// Keys hot now (a node answered them as hot within the hot-key TTL).
    pub hot_keys: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.snapshot();
        f.debug_struct("Client")
            .field("node", &self.inner.home_addr())
            .field("topology_digest", &state.topology().digest())
            .field("members", &state.topology().members().len())
            .field("request_timeout", &self.inner.config.request_timeout)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn new(router: Arc<Router>, consistency: Option<Consistency>) -> Self {
        Self {
            inner: router,
            near: None,
            options: CallOptions {
                consistency,
                ..CallOptions::default()
            },
        }
    }

    /// Turns the near cache on (the builder's [`near_cache`](ClientBuilder::near_cache)).
    pub(crate) fn with_near_cache(mut self, options: NearCacheOptions) -> Self {
        self.near = Some(NearCache::new(options, self.inner.digest()));
        self
    }

    /// The near cache's counters; `None` when it is off ([`ClientBuilder::near_cache`]).
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.near.as_ref().map(|near| near.stats())
    }

    /// The near cache, for a read at this handle's consistency: only ONE (or the default) reads
    /// use it; QUORUM and ALL bypass it.
    fn near_for_reads(&self) -> Option<&Arc<NearCache>> {
        self.near
            .as_ref()
            .filter(|_| matches!(self.options.consistency, None | Some(Consistency::One)))
    }

    /// A write of `keys` through this client returned (or failed): drop their entries, and stop
    /// reads in flight from caching older values.
    fn wrote(&self, keys: &[Bytes]) {
        if let Some(near) = &self.near {
            for key in keys {
                near.invalidate(key);
            }
        }
    }

    /// [`Client::get`] through the near cache.
    async fn get_near(&self, near: &Arc<NearCache>, key: Bytes) -> Result<Option<Bytes>, Error> {
        let digest = self.inner.digest();
        if let Some(value) = near.lookup(&key, digest) {
            return Ok(value);
        }
        self.get_near_miss(near, key, digest).await
    }

    /// A near-cache miss: a tracked read whose answer is cached if nothing moved meanwhile.
    async fn get_near_miss(
        &self,
        near: &Arc<NearCache>,
        key: Bytes,
        digest: u64,
    ) -> Result<Option<Bytes>, Error> {
        // Before the tracking id is taken (in `get_tracked`): a stream that breaks after that
        // flushes past this ticket.
        let ticket = near.begin(&key, digest);
        let request = wire::get_request(key.clone(), self.options.consistency);
        let spread = self.spreads();
        let (response, tracked) = self
            .run("get", Retry::Idempotent, Some(&key), 1, |mut call| {
                call.spread = spread;
                self.inner.get_tracked(call, &key, request, near)
            })
            .await?;
        self.inner.hot.note(&key, response.hot);
        if tracked {
            let value = response.found.then(|| response.value.clone());
            near.finish(ticket, key, value, response.ttl_ms, self.inner.digest());
        }
        Ok(wire::value(response))
    }

    /// Connects with the default settings to the first of `seeds` (`host:port`, optionally with
    /// an `http://` prefix) that answers, and fetches the cluster's topology from it.
    ///
    /// Must be called within a Tokio runtime: the topology watch is spawned on it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `seeds` is empty or malformed, [`Error::Unavailable`] when
    /// no seed answers, [`Error::Protocol`] when the seed sends an invalid topology.
    pub async fn connect<I, S>(seeds: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::builder().seeds(seeds).connect().await
    }

    /// A builder to configure timeouts, pooling, consistency and the channel factory.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// Counters of this client and its clones: reads spread over hot keys' replicas, reads
    /// served by the local node, keys hot now.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            spread_reads: self.inner.hot.spread_reads(),
            local_reads: self
                .inner
                .local_reads
                .load(std::sync::atomic::Ordering::Relaxed),
            hot_keys: self.inner.hot.hot_now(),
        }
    }

    /// A client sharing this one's connections whose requests use `consistency` by default
    /// (`None`: the cluster's default).
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// use ringcache::Consistency;
    ///
    /// let strict = client.with_consistency(Consistency::All);
    /// let value = strict.get("config").await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_consistency(&self, consistency: impl Into<Option<Consistency>>) -> Client {
        let consistency = consistency.into();
        Client {
            inner: Arc::clone(&self.inner),
            near: self.near.clone(),
            options: CallOptions {
                consistency,
                ..self.options
            },
        }
    }

    /// A client sharing this one's connections whose calls use `options` (see
    /// [`CallOptions`]); the options left unset take the client's defaults (the builder's),
    /// not this handle's.
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// use std::time::Duration;
    /// use ringcache::{CallOptions, Consistency};
    ///
    /// let options = CallOptions::new()
    ///     .timeout(Duration::from_millis(200))
    ///     .consistency(Consistency::One);
    /// let value = client.with_options(options).get("session:9").await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_options(&self, options: CallOptions) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
            near: self.near.clone(),
            options,
        }
    }

    /// A client sharing this one's connections whose every call must finish within `timeout`
    /// from its start, retries, failover and backoff included ([`CallOptions::timeout`]);
    /// a late call fails with [`Error::Timeout`]. Without it, each attempt is bounded by the
    /// builder's [`request_timeout`](ClientBuilder::request_timeout).
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// use std::time::Duration;
    ///
    /// let flags = client.with_timeout(Duration::from_millis(20)).get("flags").await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        self.with_options(CallOptions {
            timeout: Some(timeout),
            ..self.options
        })
    }

    /// A client sharing this one's connections whose calls retry under `policy` instead of
    /// the builder's ([`RetryPolicy::none`] turns retries off).
    #[must_use]
    pub fn with_retry(&self, policy: RetryPolicy) -> Client {
        self.with_options(CallOptions {
            retry: Some(policy),
            ..self.options
        })
    }

    /// The options of this handle's calls.
    pub fn options(&self) -> CallOptions {
        self.options
    }

    /// Runs one call: its span and metrics, its deadline, and its [`Call`] for the router.
    /// `key` is the key of a single-key call (for the span), `keys` the size of a batch.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        retry: Retry,
        key: Option<&[u8]>,
        keys: usize,
        body: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(Call) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let span = observe::request_span(op, key, keys);
        let started = Instant::now();
        let timeout = self.options.timeout;
        let result = async {
            if timeout.is_some_and(|t| t.is_zero()) {
                return Err(Error::InvalidArgument(
                    "call timeout must be greater than zero".to_owned(),
                ));
            }
            let deadline = timeout.map(|t| started + t);
            let call = Call {
                op,
                retry,
                policy: self.options.retry.unwrap_or(self.inner.config.retry),
                timeout,
                deadline,
                spread: false,
            };
            let Some(deadline) = deadline else {
                return body(call).await;
            };
            let late = || Error::Timeout { after: timeout };
            match tokio::time::timeout_at(deadline, body(call)).await {
                Err(_) => Err(late()),
                Ok(Err(Error::Timeout { .. })) if Instant::now() >= deadline => Err(late()),
                Ok(result) => result,
            }
        }
        .instrument(span.clone())
        .await;
        span.record(
            "outcome",
            match &result {
                Ok(_) => "ok",
                Err(error) => error.kind(),
            },
        );
        observe::call_finished(op, result.as_ref().map(drop), started.elapsed());
        if let (Some(near), Some(key)) = (&self.near, key)
            && !matches!(op, "get" | "get_entry" | "ttl")
        {
            // Any single-key call but a read may have changed the key.
            near.invalidate(key);
        }
        result
    }

    /// Runs a single-key call the pipeline stream does not carry as unary calls (see
    /// [`Router::execute_unary`]); `extra` is how long the node may hold it.
    pub(crate) async fn run_unary<Req, Resp, F, Fut>(
        &self,
        op: &'static str,
        key: &Bytes,
        extra: Duration,
        request: Req,
        rpc: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(
            ringcache_proto::v1::cache_client::CacheClient<crate::security::NodeChannel>,
            tonic::Request<Req>,
        ) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.run(op, Retry::OnlyUnsent, Some(key), 1, |call| {
            self.inner.execute_unary(call, key, extra, request, rpc)
        })
        .await
    }

    /// The digest of the topology the client routes by: equal digests mean equal member lists
    /// and therefore equal rings. It changes whenever the client takes in a new topology.
    ///
    /// When the node the client connected to does not serve the `Cluster` service, this is the
    /// digest of the empty topology.
    pub fn topology_digest(&self) -> u64 {
        self.inner.digest()
    }

    /// A copy of the topology the client routes by: the members with their states and addresses,
    /// and the ring parameters. Keys go to the primary the ring of this topology gives them
    /// (see [`Ring`](ringcache_proto::placement::Ring)).
    ///
    /// Empty when the node the client connected to does not serve the `Cluster` service; every
    /// request then goes to that node.
    pub fn topology(&self) -> Topology {
        self.inner.snapshot().topology().clone()
    }

    /// Fetches the topology now, from the first of a few members and seeds that answers, and
    /// routes by it from then on. The client also does this by itself (see [`Client`]); this is
    /// for tools and tests that want it at a known moment.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when no node answered, naming each node asked;
    /// [`Error::Protocol`] when the nodes that answered sent invalid topologies.
    pub async fn refresh_topology(&self) -> Result<(), Error> {
        self.inner.fetch_and_apply(None, None).await
    }

    /// Returns the value stored at `key`, or `None` when the key does not exist.
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// match client.get("user:1").await? {
    ///     Some(value) => println!("hit: {value:?}"),
    ///     None => println!("miss"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, Error> {
        let key = wire::key(key)?;
        if let Some(near) = self.near_for_reads() {
            return self.get_near(near, key).await;
        }
        Ok(wire::value(self.raw_get("get", key).await?))
    }

    /// Whether this handle's reads may be spread over a hot key's replicas: reads at ONE, or
    /// at the cluster's default level.
    fn spreads(&self) -> bool {
        matches!(self.options.consistency, None | Some(Consistency::One))
    }

    /// A Get of `key`: served by the local node when it holds the key (embedded mode),
    /// otherwise spread over its replicas when the key is hot, and its `hot` mark noted.
    async fn raw_get(&self, op: &'static str, key: Bytes) -> Result<pb::GetResponse, Error> {
        let request = wire::get_request(key.clone(), self.options.consistency);
        let spread = self.spreads();
        let consistency = self.options.consistency;
        let key_ref = &key;
        let response = self
            .run(
                op,
                Retry::Idempotent,
                Some(&key),
                1,
                |mut call| async move {
                    if let Some(local) = self.inner.local_read(key_ref, consistency) {
                        return Ok(local);
                    }
                    call.spread = spread;
                    self.inner
                        .execute(
                            call,
                            key_ref,
                            Access::Read,
                            request,
                            |mut c, r| async move { c.get(r).await },
                        )
                        .await
                },
            )
            .await?;
        self.inner.hot.note(&key, response.hot);
        Ok(response)
    }

    /// Returns the value stored at `key` with its version and remaining TTL, or `None` when the
    /// key does not exist.
    pub async fn get_entry(&self, key: impl Into<Bytes>) -> Result<Option<Entry>, Error> {
        let key = wire::key(key)?;
        Ok(wire::entry(self.raw_get("get_entry", key).await?))
    }

    /// Stores `value` at `key` without expiry, replacing any previous value. Returns the new
    /// version.
    pub async fn set(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64, Error> {
        let response = self.raw_set("set", key, value, SetOptions::new()).await?;
        wire::set_version(&response)
    }

    /// Stores `value` at `key` for `ttl`, replacing any previous value. Returns the new version.
    pub async fn set_ex(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<u64, Error> {
        let response = self
            .raw_set("set_ex", key, value, SetOptions::new().ttl(ttl))
            .await?;
        wire::set_version(&response)
    }

    /// Stores `value` at `key` with a TTL, a condition, or a consistency of its own.
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// use std::time::Duration;
    /// use ringcache::SetOptions;
    ///
    /// let lock = SetOptions::new().ttl(Duration::from_secs(10)).if_absent();
    /// if client.set_with("lock:report", "worker-1", lock).await?.stored {
    ///     // we hold the lock
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn set_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: SetOptions,
    ) -> Result<SetOutcome, Error> {
        let response = self.raw_set("set_with", key, value, options).await?;
        Ok(wire::set_outcome(response))
    }

    async fn raw_set(
        &self,
        op: &'static str,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: SetOptions,
    ) -> Result<ringcache_proto::v1::SetResponse, Error> {
        let key = wire::key(key)?;
        let request = wire::set_request(
            key.clone(),
            value.into(),
            &options,
            self.options.consistency,
        )?;
        // A plain set stores the same value however often it runs; a conditional one, or one
        // returning the previous value, would answer differently the second time.
        let retry = if options.condition == SetCondition::Always && !options.return_previous {
            Retry::Idempotent
        } else {
            Retry::OnlyUnsent
        };
        self.run(op, retry, Some(&key), 1, |call| {
            self.inner
                .execute(call, &key, Access::Write, request, |mut c, r| async move {
                    c.set(r).await
                })
        })
        .await
    }

    /// Removes `key`. Returns whether it existed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool, Error> {
        let key = wire::key(key)?;
        let request = wire::delete_request(key.clone(), self.options.consistency);
        let response = self
            .run("delete", Retry::Idempotent, Some(&key), 1, |call| {
                self.inner
                    .execute(call, &key, Access::Write, request, |mut c, r| async move {
                        c.delete(r).await
                    })
            })
            .await?;
        Ok(response.deleted)
    }

    /// Returns the values of several keys, in the order of `keys` (`None` for a missing key).
    ///
    /// The keys are split by primary node and the parts are sent concurrently, one request per
    /// node; each part fails over like [`get`](Client::get).
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// let values = client.mget(["a", "b", "c"]).await?;
    /// assert_eq!(values.len(), 3);
    /// # Ok(()) }
    /// ```
    pub async fn mget<K: Into<Bytes>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<Bytes>>, Error> {
        let keys = wire::keys(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let Some(near) = self.near_for_reads() else {
            return self.mget_from_nodes(&keys).await;
        };
        // Keys the near cache holds are answered from it; a few missing ones are read (and
        // cached) as tracked gets, sent concurrently (the pipelined transport batches them);
        // many are one untracked MGet, not cached.
        let digest = self.inner.digest();
        let mut values = vec![None; keys.len()];
        let mut missing = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            match near.lookup(key, digest) {
                Some(value) => values[index] = value,
                None => missing.push(index),
            }
        }
        if !missing.is_empty() && missing.len() <= NEAR_MGET_TRACKED_KEYS {
            let reads = missing
                .iter()
                .map(|&index| self.get_near_miss(near, keys[index].clone(), digest))
                .collect();
            for (index, value) in missing
                .into_iter()
                .zip(crate::router::join_all(reads).await)
            {
                values[index] = value?;
            }
        } else if !missing.is_empty() {
            let fetched = self.mget_from_nodes(&pick(&keys, &missing)).await?;
            for (index, value) in missing.into_iter().zip(fetched) {
                values[index] = value;
            }
        }
        Ok(values)
    }

    /// [`Client::mget`] from the nodes.
    async fn mget_from_nodes(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, Error> {
        let spread = self.spreads();
        let consistency = self.options.consistency;
        let keys_ref = keys;
        let (local, parts) = self
            .run(
                "mget",
                Retry::Idempotent,
                None,
                keys.len(),
                |mut call| async move {
                    // Keys the local node answers (embedded mode); the others go over the network.
                    let mut local = Vec::new();
                    let mut remote = Vec::new();
                    for (index, key) in keys_ref.iter().enumerate() {
                        match self.inner.local_read(key, consistency) {
                            Some(response) => local.push((index, response)),
                            None => remote.push(index),
                        }
                    }
                    call.spread = spread;
                    if local.is_empty() {
                        return Ok((local, self.mget_parts(call, keys_ref).await?));
                    }
                    if remote.is_empty() {
                        return Ok((local, Vec::new()));
                    }
                    let remote_keys: Vec<Bytes> =
                        remote.iter().map(|&i| keys_ref[i].clone()).collect();
                    let parts = self
                        .mget_parts(call, &remote_keys)
                        .await?
                        .into_iter()
                        .map(|(indexes, response)| {
                            (indexes.into_iter().map(|i| remote[i]).collect(), response)
                        })
                        .collect();
                    Ok((local, parts))
                },
            )
            .await?;
        let mut values = vec![None; keys.len()];
        for (index, response) in local {
            values[index] = wire::value(response);
        }
        for (indexes, response) in parts {
            for (&index, result) in indexes.iter().zip(&response.results) {
                self.inner.hot.note(&keys[index], result.hot);
            }
            let part = wire::mget_values(response, indexes.len())?;
            for (index, value) in indexes.into_iter().zip(part) {
                values[index] = value;
            }
        }
        Ok(values)
    }

    /// The network part of an `mget` over `keys`: each part's indexes (into `keys`) with its
    /// answer.
    async fn mget_parts(
        &self,
        call: Call,
        keys: &[Bytes],
    ) -> Result<Vec<(Vec<usize>, pb::MGetResponse)>, Error> {
        self.inner
            .execute_batch(
                call,
                keys,
                Access::Read,
                |index| wire::key_size(&keys[index]),
                |indexes| wire::mget_request(pick(keys, indexes), self.options.consistency),
                |mut c, r| async move { c.m_get(r).await },
            )
            .await
    }

    /// Stores several key-value pairs, all with the same optional `ttl`. Each pair is applied on
    /// its own (not atomically). Returns the new versions, in the order of `entries`.
    ///
    /// The pairs are split by primary node and the parts are sent concurrently, one request per
    /// node. When a part fails the call fails, and the other parts may have been stored.
    pub async fn mset<K: Into<Bytes>, V: Into<Bytes>>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
        ttl: Option<Duration>,
    ) -> Result<Vec<u64>, Error> {
        let request = wire::mset_request(entries, ttl, self.options.consistency)?;
        if request.entries.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Bytes> = request.entries.iter().map(|e| e.key.clone()).collect();
        let result = self
            .run("mset", Retry::Idempotent, None, keys.len(), |call| {
                self.inner.execute_batch(
                    call,
                    &keys,
                    Access::Write,
                    |index| wire::entry_size(&request.entries[index]),
                    |indexes| pb::MSetRequest {
                        entries: pick(&request.entries, indexes),
                        ttl_ms: request.ttl_ms,
                        consistency: request.consistency,
                        if_absent: false,
                    },
                    |mut c, r| async move { c.m_set(r).await },
                )
            })
            .await;
        self.wrote(&keys);
        let parts = result?;
        let mut versions = vec![0; keys.len()];
        for (indexes, response) in parts {
            let part = wire::mset_versions(response, indexes.len())?;
            for (index, version) in indexes.into_iter().zip(part) {
                versions[index] = version;
            }
        }
        Ok(versions)
    }

    /// Removes several keys. Returns how many existed.
    ///
    /// The keys are split by primary node and the parts are sent concurrently, one request per
    /// node. When a part fails the call fails, and the other parts may have been removed.
    pub async fn mdelete<K: Into<Bytes>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<u64, Error> {
        let keys = wire::keys(keys)?;
        if keys.is_empty() {
            return Ok(0);
        }
        let result = self
            .run("mdelete", Retry::Idempotent, None, keys.len(), |call| {
                self.inner.execute_batch(
                    call,
                    &keys,
                    Access::Write,
                    |index| wire::key_size(&keys[index]),
                    |indexes| wire::mdelete_request(pick(&keys, indexes), self.options.consistency),
                    |mut c, r| async move { c.m_delete(r).await },
                )
            })
            .await;
        self.wrote(&keys);
        let parts = result?;
        Ok(parts.iter().map(|(_, response)| response.deleted).sum())
    }

    /// Adds `delta` to the decimal integer stored at `key` (a missing key counts as 0) and returns
    /// the new value.
    ///
    /// Fails with [`Error::InvalidArgument`] when the value is not a 64-bit integer or the result
    /// would overflow.
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// let views = client.incr("page:views", 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn incr(&self, key: impl Into<Bytes>, delta: i64) -> Result<i64, Error> {
        self.raw_incr("incr", key, delta, None).await
    }

    /// Subtracts `delta` from the integer stored at `key`; see [`incr`](Client::incr).
    /// `i64::MIN` is rejected, as its negation does not fit.
    pub async fn decr(&self, key: impl Into<Bytes>, delta: i64) -> Result<i64, Error> {
        let delta = wire::negate_delta(delta)?;
        self.raw_incr("decr", key, delta, None).await
    }

    /// Like [`incr`](Client::incr), and gives the key `ttl` when this call creates it; an
    /// existing key keeps its TTL.
    pub async fn incr_with_ttl(
        &self,
        key: impl Into<Bytes>,
        delta: i64,
        ttl: Duration,
    ) -> Result<i64, Error> {
        self.raw_incr("incr_with_ttl", key, delta, Some(ttl)).await
    }

    async fn raw_incr(
        &self,
        op: &'static str,
        key: impl Into<Bytes>,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, Error> {
        let key = wire::key(key)?;
        let request = wire::incr_request(key.clone(), delta, ttl, self.options.consistency)?;
        let response = self
            .run(op, Retry::OnlyUnsent, Some(&key), 1, |call| {
                self.inner
                    .execute(call, &key, Access::Write, request, |mut c, r| async move {
                        c.incr(r).await
                    })
            })
            .await?;
        Ok(response.value)
    }

    /// Sends one `Cache.Update` for `key` to its primary (a write: no failover once sent, and
    /// no retry: none of the updates may run twice).
    async fn update(
        &self,
        name: &'static str,
        key: Bytes,
        op: pb::update_request::Op,
    ) -> Result<pb::UpdateResponse, Error> {
        let request = pb::UpdateRequest {
            key: key.clone(),
            consistency: wire::consistency(self.options.consistency),
            op: Some(op),
        };
        self.run(name, Retry::OnlyUnsent, Some(&key), 1, |call| {
            self.inner
                .execute(call, &key, Access::Write, request, |mut c, r| async move {
                    c.update(r).await
                })
        })
        .await
    }

    /// Appends `suffix` to the value at `key` (a missing key starts empty) in one step on the
    /// key's primary and returns the new length. The key keeps its TTL.
    ///
    /// Fails with [`Error::InvalidArgument`] when the result would exceed the nodes'
    /// `max_value_bytes`.
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// let len = client.append("log", "line\n").await?;
    /// # Ok(()) }
    /// ```
    pub async fn append(
        &self,
        key: impl Into<Bytes>,
        suffix: impl Into<Bytes>,
    ) -> Result<u64, Error> {
        let key = wire::key(key)?;
        let op = pb::update_request::Op::Append(pb::AppendOp {
            value: suffix.into(),
        });
        Ok(self.update("append", key, op).await?.length)
    }

    /// Overwrites the value at `key` from byte `offset` with `bytes`, padding with zero bytes,
    /// in one step on the key's primary (Redis SETRANGE); returns the new length. Empty
    /// `bytes` change nothing (and create nothing). The key keeps its TTL.
    ///
    /// Fails with [`Error::InvalidArgument`] when `offset + bytes.len()` exceeds the nodes'
    /// `max_value_bytes`.
    pub async fn set_range(
        &self,
        key: impl Into<Bytes>,
        offset: u64,
        bytes: impl Into<Bytes>,
    ) -> Result<u64, Error> {
        let key = wire::key(key)?;
        let op = pb::update_request::Op::SetRange(pb::SetRangeOp {
            offset,
            value: bytes.into(),
        });
        Ok(self.update("set_range", key, op).await?.length)
    }

    /// Adds `delta` to the number stored as decimal text at `key` (a missing key counts as 0)
    /// in one step on the key's primary, and returns the new value as stored (Redis
    /// INCRBYFLOAT: `"10.6"`, `"5200"`). The key keeps its TTL.
    ///
    /// Fails with [`Error::InvalidArgument`] when the value is not a number, `delta` is NaN, or
    /// the result would be NaN or infinite.
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// let total = client.incr_by_float("price", 0.25).await?;
    /// # Ok(()) }
    /// ```
    pub async fn incr_by_float(&self, key: impl Into<Bytes>, delta: f64) -> Result<Bytes, Error> {
        let key = wire::key(key)?;
        if delta.is_nan() {
            return Err(Error::InvalidArgument("delta is NaN".to_owned()));
        }
        let op = pb::update_request::Op::IncrByFloat(pb::IncrByFloatOp { delta });
        Ok(self.update("incr_by_float", key, op).await?.value)
    }

    /// Removes `key` and returns the value it held (`None` for a missing key), read and deleted
    /// in one step on the key's primary (Redis GETDEL).
    pub async fn get_del(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, Error> {
        let key = wire::key(key)?;
        let mut request = wire::delete_request(key.clone(), self.options.consistency);
        request.return_previous = true;
        // A second run would find the key gone and return nothing.
        let response = self
            .run("get_del", Retry::OnlyUnsent, Some(&key), 1, |call| {
                self.inner
                    .execute(call, &key, Access::Write, request, |mut c, r| async move {
                        c.delete(r).await
                    })
            })
            .await?;
        Ok(response.previous)
    }

    /// Returns the value at `key` (`None` for a missing key) and changes its TTL in the same
    /// step on the key's primary (Redis GETEX).
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// use std::time::Duration;
    /// use ringcache::GetExpiry;
    /// let session = client.get_ex("session:9", GetExpiry::In(Duration::from_secs(60))).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_ex(
        &self,
        key: impl Into<Bytes>,
        expiry: crate::GetExpiry,
    ) -> Result<Option<Bytes>, Error> {
        use pb::get_ex_op::Expiry as W;
        let key = wire::key(key)?;
        let expiry = match expiry {
            crate::GetExpiry::In(ttl) => W::TtlMs(wire::ttl_ms(ttl)?),
            crate::GetExpiry::At(at) => W::ExpiresAtMs(
                at.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ),
            crate::GetExpiry::Persist => W::Persist(true),
        };
        let op = pb::update_request::Op::GetEx(pb::GetExOp {
            expiry: Some(expiry),
        });
        let response = self.update("get_ex", key, op).await?;
        Ok(response.found.then_some(response.value))
    }

    /// Stores `value` at `key` only if the key's current version is `expected_version` (0: only
    /// if the key does not exist). Returns the new version.
    ///
    /// A mismatch fails with [`Error::CasConflict`], which carries the current version.
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// use ringcache::Error;
    ///
    /// let entry = client.get_entry("counter").await?;
    /// let expected = entry.as_ref().map_or(0, |e| e.version);
    /// match client.compare_and_set("counter", expected, "new", None).await {
    ///     Ok(version) => println!("stored as version {version}"),
    ///     Err(Error::CasConflict { current_version }) => println!("lost the race: {current_version:?}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn compare_and_set(
        &self,
        key: impl Into<Bytes>,
        expected_version: u64,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<u64, Error> {
        let key = wire::key(key)?;
        let request = wire::cas_request(
            key.clone(),
            expected_version,
            value.into(),
            ttl,
            self.options.consistency,
        )?;
        let response = self
            .run(
                "compare_and_set",
                Retry::OnlyUnsent,
                Some(&key),
                1,
                |call| {
                    self.inner
                        .execute(call, &key, Access::Write, request, |mut c, r| async move {
                            c.compare_and_set(r).await
                        })
                },
            )
            .await?;
        Ok(response.version)
    }

    /// Gives an existing key a new TTL. Returns `false` when the key does not exist.
    pub async fn expire(&self, key: impl Into<Bytes>, ttl: Duration) -> Result<bool, Error> {
        let key = wire::key(key)?;
        let request = wire::expire_request(key.clone(), ttl, self.options.consistency)?;
        let response = self
            .run("expire", Retry::Idempotent, Some(&key), 1, |call| {
                self.inner
                    .execute(call, &key, Access::Write, request, |mut c, r| async move {
                        c.expire(r).await
                    })
            })
            .await?;
        Ok(response.updated)
    }

    /// Removes the TTL of a key. Returns `false` when the key does not exist or had no TTL.
    pub async fn persist(&self, key: impl Into<Bytes>) -> Result<bool, Error> {
        let key = wire::key(key)?;
        let request = wire::persist_request(key.clone(), self.options.consistency);
        let response = self
            .run("persist", Retry::Idempotent, Some(&key), 1, |call| {
                self.inner
                    .execute(call, &key, Access::Write, request, |mut c, r| async move {
                        c.persist(r).await
                    })
            })
            .await?;
        Ok(response.updated)
    }

    /// Tells whether `key` exists and how long it has left to live.
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// use ringcache::KeyTtl;
    ///
    /// if let KeyTtl::ExpiresIn(left) = client.ttl("session:9").await? {
    ///     println!("expires in {left:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn ttl(&self, key: impl Into<Bytes>) -> Result<KeyTtl, Error> {
        let key = wire::key(key)?;
        let request = wire::ttl_request(key.clone(), self.options.consistency);
        let response = self
            .run("ttl", Retry::Idempotent, Some(&key), 1, |call| {
                self.inner
                    .execute(call, &key, Access::Read, request, |mut c, r| async move {
                        c.ttl(r).await
                    })
            })
            .await?;
        Ok(wire::key_ttl(&response))
    }
}

/// The items at `indexes` (cheap: keys and values are reference-counted).
/// Most keys of an [`Client::mget`] missing from the near cache that are read as tracked gets
/// (and cached); more are one untracked MGet.
const NEAR_MGET_TRACKED_KEYS: usize = 64;

fn pick<T: Clone>(items: &[T], indexes: &[usize]) -> Vec<T> {
    indexes.iter().map(|&index| items[index].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::ConnectConfig;

    use ringcache_test_support::closed_addr;

    /// A client whose requests would fail with `Unavailable` if they were sent.
    fn unconnected_client() -> Client {
        let addr = closed_addr();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let config = ConnectConfig {
            connect_timeout: Duration::from_secs(2),
            pool_size: 1,
            max_message_bytes: 1 << 20,
            max_batch_keys: None,
            retry: RetryPolicy::new(),
            retry_budget: crate::RetryBudget::default(),
            breaker: crate::CircuitBreaker::default(),
            request_timeout: Duration::from_secs(2),
            pipelining: true,
            factory: crate::conn::default_factory(Duration::from_secs(2), None),
            authorization: None,
            tls: false,
            hot: crate::hot::HotSettings::default(),
            local: None,
        };
        Client::new(Router::single(&addr, channel, config), None)
    }

    fn is_invalid(result: Result<impl fmt::Debug, Error>, message: &str) -> bool {
        match result {
            Err(Error::InvalidArgument(m)) => m.contains(message),
            _ => false,
        }
    }

    #[tokio::test]
    async fn decr_by_i64_min_is_rejected_without_a_request() {
        let client = unconnected_client();
        let result = client.decr("counter", i64::MIN).await;
        assert!(is_invalid(result, "decrement"));
    }

    #[tokio::test]
    async fn empty_keys_are_rejected_without_a_request() {
        let client = unconnected_client();
        let empty = "key must not be empty";
        assert!(is_invalid(client.get("").await, empty));
        assert!(is_invalid(client.get_entry(Bytes::new()).await, empty));
        assert!(is_invalid(client.set("", "v").await, empty));
        assert!(is_invalid(
            client.set_with("", "v", SetOptions::new()).await,
            empty
        ));
        assert!(is_invalid(client.delete(String::new()).await, empty));
        assert!(is_invalid(client.mget(["a", ""]).await, empty));
        assert!(is_invalid(client.mset([("", "v")], None).await, empty));
        assert!(is_invalid(client.mdelete([Vec::new()]).await, empty));
        assert!(is_invalid(client.incr("", 1).await, empty));
        assert!(is_invalid(
            client.compare_and_set("", 0, "v", None).await,
            empty
        ));
        assert!(is_invalid(client.persist("").await, empty));
        assert!(is_invalid(client.ttl("").await, empty));
    }

    #[tokio::test]
    async fn zero_ttls_are_rejected_without_a_request() {
        let client = unconnected_client();
        let zero = "ttl must be greater than zero";
        assert!(is_invalid(
            client.set_ex("k", "v", Duration::ZERO).await,
            zero
        ));
        assert!(is_invalid(
            client
                .set_with("k", "v", SetOptions::new().ttl(Duration::ZERO))
                .await,
            zero
        ));
        assert!(is_invalid(client.expire("k", Duration::ZERO).await, zero));
        assert!(is_invalid(
            client.incr_with_ttl("k", 1, Duration::ZERO).await,
            zero
        ));
        assert!(is_invalid(
            client
                .compare_and_set("k", 0, "v", Some(Duration::ZERO))
                .await,
            zero
        ));
        assert!(is_invalid(
            client.mset([("k", "v")], Some(Duration::ZERO)).await,
            zero
        ));
    }

    #[tokio::test]
    async fn empty_batches_need_no_request() {
        let client = unconnected_client();
        assert_eq!(client.mget(Vec::<Bytes>::new()).await.unwrap(), vec![]);
        assert_eq!(
            client
                .mset(Vec::<(Bytes, Bytes)>::new(), None)
                .await
                .unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(client.mdelete(Vec::<String>::new()).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_request_to_a_closed_port_is_unavailable() {
        let client = unconnected_client();
        let error = client.get("k").await.unwrap_err();
        assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
        assert!(error.is_retryable());
    }

    #[tokio::test]
    async fn with_consistency_shares_the_connections() {
        let client = unconnected_client();
        let strict = client.with_consistency(Consistency::All);
        assert!(Arc::ptr_eq(&client.inner, &strict.inner));
        assert_eq!(strict.options.consistency, Some(Consistency::All));
        assert_eq!(strict.with_consistency(None).options.consistency, None);
    }
}
