//! [`Client`]: the requests of the cache API.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use ringcache_proto::v1::cache_client::CacheClient;
use tokio::time::Instant;
use tonic::{Status, transport::Channel};

use crate::{
    ClientBuilder, Consistency, Entry, Error, KeyTtl, SetOptions, SetOutcome, conn::Router, wire,
};

/// A connection to a ringcache cluster.
///
/// Cloning is cheap: clones share the connections. Keys and values are taken as
/// `impl Into<Bytes>` (`&'static str`, `String`, `Vec<u8>`, [`Bytes`], ...), so owned buffers
/// are sent without a copy; copy borrowed data with [`Bytes::copy_from_slice`].
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
    inner: Arc<Inner>,
    /// The consistency of requests that do not choose their own; `None` is the cluster default.
    consistency: Option<Consistency>,
}

struct Inner {
    router: Router,
    request_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("node", &self.inner.router.addr())
            .field("request_timeout", &self.inner.request_timeout)
            .field("consistency", &self.consistency)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn new(
        router: Router,
        request_timeout: Duration,
        consistency: Option<Consistency>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                router,
                request_timeout,
            }),
            consistency,
        }
    }

    /// Connects with the default settings to the first of `seeds` (`host:port`, optionally with
    /// an `http://` prefix) that answers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `seeds` is empty or malformed, [`Error::Unavailable`] when
    /// no seed answers.
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
        Client {
            inner: Arc::clone(&self.inner),
            consistency: consistency.into(),
        }
    }

    /// Runs one unary call on `conn` under the request timeout, both sent to the node and enforced
    /// here.
    async fn call<Req, Resp, Fut>(
        &self,
        conn: CacheClient<Channel>,
        message: Req,
        rpc: impl FnOnce(CacheClient<Channel>, tonic::Request<Req>) -> Fut,
    ) -> Result<Resp, Error>
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let timeout = self.inner.request_timeout;
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        let started = Instant::now();
        match tokio::time::timeout(timeout, rpc(conn, request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::from_status_after(status, started.elapsed(), timeout)),
            Err(_) => Err(Error::Timeout {
                after: Some(timeout),
            }),
        }
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
        let conn = self.inner.router.for_key(&key);
        let request = wire::get_request(key, self.consistency);
        let response = self
            .call(conn, request, |mut c, r| async move { c.get(r).await })
            .await?;
        Ok(wire::value(response))
    }

    /// Returns the value stored at `key` with its version and remaining TTL, or `None` when the
    /// key does not exist.
    pub async fn get_entry(&self, key: impl Into<Bytes>) -> Result<Option<Entry>, Error> {
        let key = wire::key(key)?;
        let conn = self.inner.router.for_key(&key);
        let request = wire::get_request(key, self.consistency);
        let response = self
            .call(conn, request, |mut c, r| async move { c.get(r).await })
            .await?;
        Ok(wire::entry(response))
    }

    /// Stores `value` at `key` without expiry, replacing any previous value. Returns the new
    /// version.
    pub async fn set(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64, Error> {
        let response = self.raw_set(key, value, SetOptions::new()).await?;
        wire::set_version(&response)
    }

    /// Stores `value` at `key` for `ttl`, replacing any previous value. Returns the new version.
    pub async fn set_ex(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<u64, Error> {
        let response = self.raw_set(key, value, SetOptions::new().ttl(ttl)).await?;
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
        let response = self.raw_set(key, value, options).await?;
        Ok(wire::set_outcome(response))
    }

    async fn raw_set(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: SetOptions,
    ) -> Result<ringcache_proto::v1::SetResponse, Error> {
        let key = wire::key(key)?;
        let conn = self.inner.router.for_key(&key);
        let request = wire::set_request(key, value.into(), &options, self.consistency)?;
        self.call(conn, request, |mut c, r| async move { c.set(r).await })
            .await
    }

    /// Removes `key`. Returns whether it existed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool, Error> {
        let key = wire::key(key)?;
        let conn = self.inner.router.for_key(&key);
        let request = wire::delete_request(key, self.consistency);
        let response = self
            .call(conn, request, |mut c, r| async move { c.delete(r).await })
            .await?;
        Ok(response.deleted)
    }

    /// Returns the values of several keys, in the order of `keys` (`None` for a missing key).
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
        let requested = keys.len();
        let conn = self.inner.router.for_batch(&keys);
        let request = wire::mget_request(keys, self.consistency);
        let response = self
            .call(conn, request, |mut c, r| async move { c.m_get(r).await })
            .await?;
        wire::mget_values(response, requested)
    }

    /// Stores several key-value pairs, all with the same optional `ttl`. Each pair is applied on
    /// its own (not atomically). Returns the new versions, in the order of `entries`.
    pub async fn mset<K: Into<Bytes>, V: Into<Bytes>>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
        ttl: Option<Duration>,
    ) -> Result<Vec<u64>, Error> {
        let request = wire::mset_request(entries, ttl, self.consistency)?;
        if request.entries.is_empty() {
            return Ok(Vec::new());
        }
        let requested = request.entries.len();
        let conn = self.inner.router.for_key(&request.entries[0].key);
        let response = self
            .call(conn, request, |mut c, r| async move { c.m_set(r).await })
            .await?;
        wire::mset_versions(response, requested)
    }

    /// Removes several keys. Returns how many existed.
    pub async fn mdelete<K: Into<Bytes>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<u64, Error> {
        let keys = wire::keys(keys)?;
        if keys.is_empty() {
            return Ok(0);
        }
        let conn = self.inner.router.for_batch(&keys);
        let request = wire::mdelete_request(keys, self.consistency);
        let response = self
            .call(conn, request, |mut c, r| async move { c.m_delete(r).await })
            .await?;
        Ok(response.deleted)
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
        self.raw_incr(key, delta, None).await
    }

    /// Subtracts `delta` from the integer stored at `key`; see [`incr`](Client::incr).
    /// `i64::MIN` is rejected, as its negation does not fit.
    pub async fn decr(&self, key: impl Into<Bytes>, delta: i64) -> Result<i64, Error> {
        let delta = wire::negate_delta(delta)?;
        self.raw_incr(key, delta, None).await
    }

    /// Like [`incr`](Client::incr), and gives the key `ttl` when this call creates it; an
    /// existing key keeps its TTL.
    pub async fn incr_with_ttl(
        &self,
        key: impl Into<Bytes>,
        delta: i64,
        ttl: Duration,
    ) -> Result<i64, Error> {
        self.raw_incr(key, delta, Some(ttl)).await
    }

    async fn raw_incr(
        &self,
        key: impl Into<Bytes>,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, Error> {
        let key = wire::key(key)?;
        let conn = self.inner.router.for_key(&key);
        let request = wire::incr_request(key, delta, ttl, self.consistency)?;
        let response = self
            .call(conn, request, |mut c, r| async move { c.incr(r).await })
            .await?;
        Ok(response.value)
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
        let conn = self.inner.router.for_key(&key);
        let request =
            wire::cas_request(key, expected_version, value.into(), ttl, self.consistency)?;
        let response = self
            .call(conn, request, |mut c, r| async move {
                c.compare_and_set(r).await
            })
            .await?;
        Ok(response.version)
    }

    /// Gives an existing key a new TTL. Returns `false` when the key does not exist.
    pub async fn expire(&self, key: impl Into<Bytes>, ttl: Duration) -> Result<bool, Error> {
        let key = wire::key(key)?;
        let conn = self.inner.router.for_key(&key);
        let request = wire::expire_request(key, ttl, self.consistency)?;
        let response = self
            .call(conn, request, |mut c, r| async move { c.expire(r).await })
            .await?;
        Ok(response.updated)
    }

    /// Removes the TTL of a key. Returns `false` when the key does not exist or had no TTL.
    pub async fn persist(&self, key: impl Into<Bytes>) -> Result<bool, Error> {
        let key = wire::key(key)?;
        let conn = self.inner.router.for_key(&key);
        let request = wire::persist_request(key, self.consistency);
        let response = self
            .call(conn, request, |mut c, r| async move { c.persist(r).await })
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
        let conn = self.inner.router.for_key(&key);
        let request = wire::ttl_request(key, self.consistency);
        let response = self
            .call(conn, request, |mut c, r| async move { c.ttl(r).await })
            .await?;
        Ok(wire::key_ttl(&response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nothing listens on (bound, then released).
    fn closed_addr() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    /// A client whose requests would fail with `Unavailable` if they were sent.
    fn unconnected_client() -> Client {
        let addr = closed_addr();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        Client::new(Router::single(&addr, channel), Duration::from_secs(2), None)
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
        assert_eq!(strict.consistency, Some(Consistency::All));
        assert_eq!(strict.with_consistency(None).consistency, None);
    }
}
