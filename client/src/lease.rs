//! Stampede protection: [`Client::get_or_lease`], [`Client::set_with_lease`] and
//! [`Client::get_or_compute`].
//!
//! The key's primary decides: the first caller that misses a key anywhere in the cluster gets
//! a lease (a [`LeaseToken`]) and computes the value; every other caller waits on the primary
//! and gets the value as soon as it is stored. See the README ("Stampede protection").

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use ringcache_proto::v1 as pb;

use crate::client::Client;
use crate::{Error, SetOptions};

/// The lease on a key: the right (and the duty) to compute its value and store it with
/// [`Client::set_with_lease`]. Non-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseToken(u64);

impl LeaseToken {
    /// A token as the server sent it (e.g. from `LEASE.GET`); `None` for 0.
    pub fn new(token: u64) -> Option<Self> {
        (token != 0).then_some(Self(token))
    }

    /// The token's wire value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// What [`Client::get_or_lease`] got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leased {
    /// The value (live), at once or after waiting for another caller's computation.
    Hit(Bytes),
    /// An expired value the server still serves (its `--serve-stale` window); `lease` is set for
    /// the one caller that should refresh it.
    Stale {
        /// The expired value.
        value: Bytes,
        /// The refresh lease, for one caller only.
        lease: Option<LeaseToken>,
    },
    /// No value: this caller holds the lease; compute the value and store it with
    /// [`Client::set_with_lease`] before the lease expires.
    Lease(LeaseToken),
    /// Another caller holds the lease and did not store a value within the wait.
    TimedOut,
}

/// Settings of [`Client::get_or_lease_with`] and [`Client::get_or_compute_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseOptions {
    /// How long a granted lease holds before another caller may take it over (capped by the
    /// server's `--lease-max-ttl`).
    pub lease_ttl: Duration,
    /// Longest wait for another caller's lease (capped by the server's `--lease-max-wait`).
    pub max_wait: Duration,
    /// [`Client::get_or_compute`]: how many times a timed-out wait or a failed request is
    /// retried before computing without caching.
    pub attempts: u32,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(10),
            max_wait: Duration::from_secs(3),
            attempts: 3,
        }
    }
}

impl LeaseOptions {
    /// The defaults: 10 s leases, 3 s waits, 3 attempts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the lease TTL.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets the longest wait.
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Sets the attempts of [`Client::get_or_compute`] (at least 1).
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }
}

/// A failure of [`Client::get_or_compute`]: the cache's, or the computation's own.
#[derive(Debug)]
pub enum ComputeError<E> {
    /// The cache refused the request (e.g. invalid key, permission denied).
    Cache(Error),
    /// The computation failed; its lease (if any) was left to expire.
    Compute(E),
}

impl<E: fmt::Display> fmt::Display for ComputeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputeError::Cache(error) => write!(f, "cache: {error}"),
            ComputeError::Compute(error) => write!(f, "compute: {error}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for ComputeError<E> {}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether `get_or_compute` tries again after `error`: the primary was lost or slow.
fn retryable(error: &Error) -> bool {
    matches!(
        error,
        Error::Unavailable(_) | Error::Timeout { .. } | Error::MemoryFull(_)
    )
}

impl Client {
    /// Returns the value of `key`, or the lease to compute it (see [`Leased`]), with the
    /// default wait ([`LeaseOptions`]). Needs the write role.
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// use std::time::Duration;
    /// use ringcache::Leased;
    ///
    /// match client.get_or_lease("report", Duration::from_secs(5)).await? {
    ///     Leased::Hit(value) | Leased::Stale { value, .. } => println!("{value:?}"),
    ///     Leased::Lease(token) => {
    ///         let value = "computed";
    ///         client.set_with_lease("report", value, Some(Duration::from_secs(60)), token).await?;
    ///     }
    ///     Leased::TimedOut => println!("still being computed elsewhere"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_or_lease(
        &self,
        key: impl Into<Bytes>,
        lease_ttl: Duration,
    ) -> Result<Leased, Error> {
        self.get_or_lease_with(key, LeaseOptions::new().lease_ttl(lease_ttl))
            .await
    }

    /// [`Self::get_or_lease`] with every setting.
    pub async fn get_or_lease_with(
        &self,
        key: impl Into<Bytes>,
        options: LeaseOptions,
    ) -> Result<Leased, Error> {
        let key = crate::wire::key(key)?;
        let lease_ttl_ms = crate::wire::ttl_ms(options.lease_ttl)
            .map_err(|_| Error::InvalidArgument("lease ttl must be greater than zero".into()))?;
        let request = pb::GetOrLeaseRequest {
            key: key.clone(),
            lease_ttl_ms,
            max_wait_ms: millis(options.max_wait),
        };
        let response = self
            .run_unary(
                "get_or_lease",
                &key,
                options.max_wait,
                request,
                |mut c, r| async move { c.get_or_lease(r).await },
            )
            .await?;
        Ok(leased(response))
    }

    /// Stores `value` at `key` (expiring after `ttl`, if given) with the lease `token` from
    /// [`Self::get_or_lease`]: the write goes to the key's primary, releases the lease and
    /// wakes the waiting callers. A lease that expired meanwhile is not an error (the value is
    /// stored all the same). Returns the new version.
    pub async fn set_with_lease(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
        token: LeaseToken,
    ) -> Result<u64, Error> {
        let mut options = SetOptions::new().lease(token);
        options.ttl = ttl;
        let outcome = self.set_with(key, value, options).await?;
        Ok(outcome.version.unwrap_or(0))
    }

    /// Returns the value of `key`, computing it with `compute` (and storing it for `ttl`) when
    /// it is missing, with at most one computation in the whole cluster at a time: see
    /// [`Self::get_or_compute_with`].
    pub async fn get_or_compute<F, Fut, V, E>(
        &self,
        key: impl Into<Bytes>,
        ttl: Duration,
        compute: F,
    ) -> Result<Bytes, ComputeError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Into<Bytes> + Send + 'static,
        E: Send + 'static,
    {
        self.get_or_compute_with(key, ttl, LeaseOptions::new(), compute)
            .await
    }

    /// Returns the value of `key`; when it is missing, the one caller granted the lease runs
    /// `compute`, stores the result for `ttl` with its token and returns it, while every other
    /// caller waits for that value. A stale value (server `--serve-stale`) is returned at once;
    /// the caller granted the refresh lease runs `compute` in a background task
    /// (`tokio::spawn`) and stores its result.
    ///
    /// A wait that timed out, or a request that failed because the primary was lost, slow or
    /// full, is retried up to `options.attempts` times in all (after a failure with a backoff
    /// of 50 ms doubling up to `options.max_wait`); after that `compute` runs without caching
    /// (its value is returned, not stored). `compute` runs at most once per call.
    /// An error of `compute` is returned as [`ComputeError::Compute`] and its lease is left to
    /// expire (after `options.lease_ttl` the next waiter takes it over); a failed store of a
    /// computed value is logged and the value still returned.
    pub async fn get_or_compute_with<F, Fut, V, E>(
        &self,
        key: impl Into<Bytes>,
        ttl: Duration,
        options: LeaseOptions,
        compute: F,
    ) -> Result<Bytes, ComputeError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        V: Into<Bytes> + Send + 'static,
        E: Send + 'static,
    {
        let key: Bytes = key.into();
        crate::wire::ttl_ms(ttl).map_err(ComputeError::Cache)?;
        for attempt in 0..options.attempts.max(1) {
            match self.get_or_lease_with(key.clone(), options).await {
                Ok(Leased::Hit(value) | Leased::Stale { value, lease: None }) => {
                    return Ok(value);
                }
                Ok(Leased::Lease(token)) => {
                    let value: Bytes = compute().await.map_err(ComputeError::Compute)?.into();
                    if let Err(error) = self
                        .set_with_lease(key.clone(), value.clone(), Some(ttl), token)
                        .await
                    {
                        tracing::warn!(%error, "get_or_compute: storing the computed value failed");
                    }
                    return Ok(value);
                }
                Ok(Leased::Stale {
                    value,
                    lease: Some(token),
                }) => {
                    let client = self.clone();
                    tokio::spawn(async move {
                        match compute().await {
                            Ok(fresh) => {
                                if let Err(error) =
                                    client.set_with_lease(key, fresh, Some(ttl), token).await
                                {
                                    tracing::warn!(%error, "get_or_compute: storing the refreshed value failed");
                                }
                            }
                            Err(_) => {
                                tracing::warn!(
                                    "get_or_compute: the background refresh failed; its lease expires"
                                );
                            }
                        }
                    });
                    return Ok(value);
                }
                Ok(Leased::TimedOut) => {}
                Err(error) if retryable(&error) => {
                    // The primary may be gone until the failure detector replaces it: back off
                    // (50 ms, doubling, at most the wait) before asking again.
                    let backoff =
                        Duration::from_millis(50u64 << attempt.min(10)).min(options.max_wait);
                    tracing::debug!(%error, ?backoff, "get_or_compute: retrying");
                    tokio::time::sleep(backoff).await;
                }
                Err(error) => return Err(ComputeError::Cache(error)),
            }
        }
        // The lease holder is too slow or the primary keeps failing: compute without caching.
        compute()
            .await
            .map(Into::into)
            .map_err(ComputeError::Compute)
    }
}

fn leased(response: pb::GetOrLeaseResponse) -> Leased {
    let token = LeaseToken::new(response.lease_token);
    match (response.found, response.stale, token) {
        (true, true, lease) => Leased::Stale {
            value: response.value,
            lease,
        },
        (true, false, _) => Leased::Hit(response.value),
        (false, _, Some(token)) => Leased::Lease(token),
        (false, _, None) => Leased::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_map_to_the_outcomes() {
        let hit = pb::GetOrLeaseResponse {
            found: true,
            value: Bytes::from("v"),
            ..Default::default()
        };
        assert_eq!(leased(hit), Leased::Hit(Bytes::from("v")));
        let lease = pb::GetOrLeaseResponse {
            lease_token: 7,
            ..Default::default()
        };
        assert_eq!(leased(lease), Leased::Lease(LeaseToken(7)));
        assert_eq!(leased(pb::GetOrLeaseResponse::default()), Leased::TimedOut);
        let stale = pb::GetOrLeaseResponse {
            found: true,
            stale: true,
            value: Bytes::from("old"),
            lease_token: 9,
            ..Default::default()
        };
        assert_eq!(
            leased(stale),
            Leased::Stale {
                value: Bytes::from("old"),
                lease: Some(LeaseToken(9))
            }
        );
        assert_eq!(LeaseToken::new(0), None);
        assert_eq!(LeaseToken::new(5).map(LeaseToken::get), Some(5));
    }

    #[test]
    fn attempts_are_at_least_one() {
        assert_eq!(LeaseOptions::new().attempts(0).attempts, 1);
    }
}
