//! Per-request options and the typed results of requests.

use std::time::Duration;

use bytes::Bytes;

/// How many replicas of a key must take part in a request before it is answered.
///
/// When no consistency is chosen (the default), the cluster's default applies: `Quorum` for
/// writes, `One` for reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the key's replicas.
    Quorum,
    /// Every replica of the key.
    All,
}

/// When a [`set_with`](crate::Client::set_with) takes effect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SetCondition {
    /// Always store (a plain set).
    #[default]
    Always,
    /// Store only when the key does not exist (Redis `NX`).
    IfAbsent,
    /// Store only when the key exists (Redis `XX`).
    IfPresent,
}

/// Options of [`Client::set_with`](crate::Client::set_with).
///
/// ```
/// use std::time::Duration;
/// use ringcache::SetOptions;
///
/// let options = SetOptions::new().ttl(Duration::from_secs(60)).if_absent();
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetOptions {
    /// Time to live; `None` means the key never expires.
    pub ttl: Option<Duration>,
    /// When the write takes effect.
    pub condition: SetCondition,
    /// Return the value the key held before the write.
    pub return_previous: bool,
    /// Write consistency; `None` uses the client's default.
    pub consistency: Option<Consistency>,
    /// The lease this write fills ([`Client::get_or_lease`](crate::Client::get_or_lease)):
    /// the write goes to the key's primary and wakes the callers waiting for the value.
    pub lease: Option<crate::LeaseToken>,
}

impl SetOptions {
    /// Fills the lease `token` granted: the waiters for the key get this value.
    #[must_use]
    pub fn lease(mut self, token: crate::LeaseToken) -> Self {
        self.lease = Some(token);
        self
    }

    /// Options of a plain set: no TTL, no condition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Expires the key after `ttl`.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the condition under which the write takes effect.
    #[must_use]
    pub fn condition(mut self, condition: SetCondition) -> Self {
        self.condition = condition;
        self
    }

    /// Stores only when the key does not exist.
    #[must_use]
    pub fn if_absent(self) -> Self {
        self.condition(SetCondition::IfAbsent)
    }

    /// Stores only when the key exists.
    #[must_use]
    pub fn if_present(self) -> Self {
        self.condition(SetCondition::IfPresent)
    }

    /// Returns the previous value in [`SetOutcome::previous`].
    #[must_use]
    pub fn return_previous(mut self) -> Self {
        self.return_previous = true;
        self
    }

    /// Overrides the client's default consistency for this write.
    #[must_use]
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = Some(consistency);
        self
    }
}

/// The result of [`Client::set_with`](crate::Client::set_with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetOutcome {
    /// Whether the value was stored; `false` only when the condition did not hold.
    pub stored: bool,
    /// The version of the stored value; `None` when nothing was stored.
    pub version: Option<u64>,
    /// The value the key held before, when [`SetOptions::return_previous`] was set and the key
    /// existed.
    pub previous: Option<Bytes>,
}

/// A stored value with its metadata, as returned by [`Client::get_entry`](crate::Client::get_entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Bytes,
    /// The value's version: greater for every later write of the key. Use it with
    /// [`Client::compare_and_set`](crate::Client::compare_and_set).
    pub version: u64,
    /// Time the key has left to live; `None` when it never expires.
    pub ttl: Option<Duration>,
}

/// A key's remaining lifetime, as returned by [`Client::ttl`](crate::Client::ttl).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyTtl {
    /// The key does not exist.
    Missing,
    /// The key exists and never expires.
    Persistent,
    /// The key expires after this long.
    ExpiresIn(Duration),
}

/// The TTL change of [`Client::get_ex`](crate::Client::get_ex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetExpiry {
    /// Expire this long from now (> 0).
    In(std::time::Duration),
    /// Expire at this time; a time already past deletes the key (its value is still returned).
    At(std::time::SystemTime),
    /// Remove the TTL (nothing changes for a key without one).
    Persist,
}

/// Options of the calls of one [`Client`](crate::Client) handle: a per-call timeout, a
/// consistency level and a retry policy, each overriding the client's default when set.
///
/// Apply them with [`Client::with_options`](crate::Client::with_options), or one at a time with
/// [`with_timeout`](crate::Client::with_timeout),
/// [`with_consistency`](crate::Client::with_consistency) and
/// [`with_retry`](crate::Client::with_retry): each returns a handle that shares the client's
/// connections (cheap to make per call), so the plain API stays as it is.
///
/// ```no_run
/// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
/// use std::time::Duration;
/// use ringcache::{CallOptions, Consistency, RetryPolicy};
///
/// // This one read may take 50 ms in all, retries and failover included.
/// let fast = client.with_timeout(Duration::from_millis(50)).get("feature-flags").await?;
///
/// let careful = CallOptions::new()
///     .timeout(Duration::from_secs(2))
///     .consistency(Consistency::All)
///     .retry(RetryPolicy::new().max_attempts(5));
/// client.with_options(careful).set("config", "v2").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct CallOptions {
    /// The deadline of each call, from its start: every attempt, failover to other replicas,
    /// retry and backoff included; an attempt gets what is left. `None`: no deadline for the
    /// call as a whole, and each attempt is bounded by the client's
    /// [`request_timeout`](crate::ClientBuilder::request_timeout).
    pub timeout: Option<Duration>,
    /// The consistency level; `None`: the client's default.
    pub consistency: Option<Consistency>,
    /// The retry policy; `None`: the client's
    /// ([`ClientBuilder::retry_policy`](crate::ClientBuilder::retry_policy)).
    pub retry: Option<RetryPolicy>,
}

impl CallOptions {
    /// No option set: the client's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives each call a deadline of `timeout` from its start (see [`CallOptions::timeout`]).
    /// A zero timeout fails every call with [`Error::InvalidArgument`](crate::Error).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the consistency level of the calls.
    #[must_use]
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = Some(consistency);
        self
    }

    /// Sets the retry policy of the calls (for example [`RetryPolicy::none`]).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

/// When a failed call is tried again: how many attempts, and how long to back off in between.
///
/// A retry sends the whole request again, to the key's replicas in order, from the newest
/// topology (a failed attempt also triggers a topology refresh). Only what is safe is retried:
///
/// - a request that **certainly never reached a node** (the connection could not be made:
///   refused, unreachable, no route), whatever the operation;
/// - a request of an **idempotent** operation that failed in a way that says nothing of its
///   effect (the connection broke in flight, or the node answered `UNAVAILABLE`): reads (`get`,
///   `get_entry`, `mget`, `ttl`), and writes that give the same result when repeated
///   (`set`/`set_ex` and `set_with` without a condition or `return_previous`, `mset`,
///   `delete`, `mdelete`, `expire`, `persist`). A repeated `delete`, `mdelete`, `expire` or
///   `persist` whose first attempt took effect reports what the repeat found (`false`, or a
///   smaller count);
/// - never an operation whose repetition would change its outcome once it may have run:
///   `incr`, `decr`, `incr_with_ttl`, `incr_by_float`, `append`, `set_range`,
///   `compare_and_set`, `get_del`, `get_ex`, and `set_with` with a condition or
///   `return_previous`;
/// - never an answer ([`Error::InvalidArgument`](crate::Error::InvalidArgument),
///   [`Error::CasConflict`](crate::Error::CasConflict), a refusal of the credentials, ...), and
///   never a timeout: reads already move to the next replica when one is slow, and a
///   [per-call timeout](CallOptions::timeout) bounds the whole call.
///
/// Backoff before retry `n` (1, 2, ...) is `initial_backoff × 2^(n-1)`, at most
/// `max_backoff`, and with jitter a random duration between half of that and all of it, so
/// clients that failed together do not retry together. Retries also draw on the client's
/// [`RetryBudget`]. A retry that would outlast the call's deadline is not made: the call fails
/// with the last error.
///
/// Default: 3 attempts, backoff from 20 ms up to 1 s, with jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1; 1 means no retry).
    pub max_attempts: u32,
    /// The backoff before the first retry.
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// Whether backoffs are randomised (between half the computed delay and all of it).
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The default policy (see [`RetryPolicy`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// No retry: every call makes one attempt (failover to other replicas still happens within
    /// it).
    pub fn none() -> Self {
        Self::default().max_attempts(1)
    }

    /// Attempts in all, the first included; 0 counts as 1.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The backoff before the first retry, doubled for each further retry up to `max`.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Whether backoffs are randomised. Turn it off only where every client backs off alone
    /// (tests, simulations).
    #[must_use]
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The backoff before retry `retry` (1 for the first), before jitter.
    pub(crate) fn base_delay(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(32);
        self.initial_backoff
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_backoff)
    }
}

/// How many retries a client may make compared with its calls: a token bucket shared by the
/// client and its clones. Every call adds `ratio` of a token, every retry takes one whole
/// token, and the bucket holds at most `reserve` tokens (it starts full). So in a steady state at
/// most `ratio` retries are made per call, and an outage of every node costs at most `reserve`
/// extra requests at once, instead of multiplying the load on a cluster that is already
/// struggling. A retry that finds the bucket empty is not made: the call fails with its last
/// error.
///
/// Default: ratio 0.1 (one retry per ten calls), reserve 10.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryBudget {
    /// Tokens (retries) earned per call; 0 allows only the reserve, ever.
    pub ratio: f64,
    /// The most tokens the bucket holds, and holds at first.
    pub reserve: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.1,
            reserve: 10,
        }
    }
}

impl RetryBudget {
    /// A budget of `ratio` retries per call, up to `reserve` at once. `ratio` must be a finite
    /// number from 0 to 1000 ([`ClientBuilder::connect`](crate::ClientBuilder::connect)
    /// refuses others).
    pub fn new(ratio: f64, reserve: u32) -> Self {
        RetryBudget { ratio, reserve }
    }
}
