//! The per-node circuit breaker: after consecutive transport failures (the connection refused or
//! broken, or no answer in time) a node is *open* for a jittered backoff and tried only after the
//! other replicas of a key; when the backoff runs out one request probes it (*half-open*); a
//! success closes it, a failure opens it again for twice as long, up to a bound.
//!
//! The client stops sending to a node it cannot reach within a request or two, long before the
//! cluster's gossip declares the node dead and a new topology arrives.

use std::{
    hash::{BuildHasher, RandomState},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use crate::{Error, conn::FailureClass};

/// When a node's circuit breaker opens and for how long (see
/// [`ClientBuilder::circuit_breaker`](crate::ClientBuilder::circuit_breaker)).
///
/// A node opens after `failures` transport failures in a row (connection refused, reset or
/// broken, connect timeout, no answer within the request timeout; an answer of any kind, even an
/// error, is not one). While open it is tried after the key's other replicas, so reads at any
/// level and writes that have not reached a node go elsewhere at once. The first opening lasts
/// between half of `open_for` and all of it (random jitter, so clients do not probe in step);
/// each reopening without a success in between doubles that, up to `max_open_for`. Then one
/// request probes the node first again: a success closes the breaker.
///
/// ```
/// use std::time::Duration;
/// use ringcache::CircuitBreaker;
///
/// let breaker = CircuitBreaker::new()
///     .failures(3)
///     .open_for(Duration::from_millis(500), Duration::from_secs(10));
/// assert_eq!(breaker.failures_to_open(), 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitBreaker {
    failures: u32,
    open_for: Duration,
    max_open_for: Duration,
}

impl Default for CircuitBreaker {
    /// 2 failures in a row; open 1 s at first, doubling up to 30 s.
    fn default() -> Self {
        Self {
            failures: 2,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(30),
        }
    }
}

impl CircuitBreaker {
    /// The defaults: 2 failures in a row; open 1 s at first, doubling up to 30 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// A breaker that never opens: every request tries the key's replicas in order.
    pub fn disabled() -> Self {
        Self {
            failures: 0,
            ..Self::default()
        }
    }

    /// Transport failures in a row that open the breaker; 0 never opens it. Default 2.
    #[must_use]
    pub fn failures(mut self, failures: u32) -> Self {
        self.failures = failures;
        self
    }

    /// How long the first opening lasts (jittered down to half) and the most any opening lasts.
    /// Defaults 1 s and 30 s. `first` must be greater than zero and at most `most` (checked at
    /// connect).
    #[must_use]
    pub fn open_for(mut self, first: Duration, most: Duration) -> Self {
        self.open_for = first;
        self.max_open_for = most;
        self
    }

    /// Transport failures in a row that open the breaker (0: never).
    pub fn failures_to_open(&self) -> u32 {
        self.failures
    }

    /// The first opening's length, before jitter.
    pub fn first_open_for(&self) -> Duration {
        self.open_for
    }

    /// The longest opening.
    pub fn max_open_for(&self) -> Duration {
        self.max_open_for
    }

    /// The length of opening number `opening` (1 for the first), jittered.
    fn open_duration(&self, opening: u32) -> Duration {
        let doublings = opening.saturating_sub(1).min(30);
        let base = self
            .open_for
            .saturating_mul(1 << doublings)
            .min(self.max_open_for);
        let half = base / 2;
        let spread = u64::try_from((base - half).as_nanos()).unwrap_or(u64::MAX);
        // A fresh `RandomState` has fresh random keys: a cheap random number, no RNG crate.
        let random = RandomState::new().hash_one(opening);
        half + Duration::from_nanos(random % spread.saturating_add(1))
    }
}

/// Checks the settings (at connect).
pub(crate) fn check(breaker: &CircuitBreaker) -> Result<(), Error> {
    if breaker.open_for.is_zero() || breaker.open_for > breaker.max_open_for {
        return Err(Error::InvalidArgument(format!(
            "circuit breaker: the first opening ({:?}) must be greater than zero and at most the longest ({:?})",
            breaker.open_for, breaker.max_open_for
        )));
    }
    Ok(())
}

/// Whether a failure of this class counts against the node: the request did not get an answer
/// from it at all.
pub(crate) fn is_transport_failure(class: FailureClass) -> bool {
    matches!(
        class,
        FailureClass::NotSent | FailureClass::Broken | FailureClass::TimedOut
    )
}

/// One node's breaker, shared by every request (times in ms on the slot's clock; 0 = none).
#[derive(Debug, Default)]
pub(crate) struct BreakerState {
    /// Transport failures since the last success.
    failures: AtomicU32,
    /// Openings since the last success (the backoff's exponent).
    openings: AtomicU32,
    /// Until when the breaker is open; 0 when closed. Past it: half-open.
    open_until_ms: AtomicU64,
    /// When a request claimed the half-open probe; 0 when none did.
    probe_claimed_ms: AtomicU64,
}

/// The result of a failure noted on a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Noted {
    /// Still closed (or already open).
    Unchanged,
    /// The breaker opened (again) for this long.
    Opened(Duration),
}

impl BreakerState {
    /// Whether the breaker is open at `now_ms` (the node is tried after the other replicas).
    /// Half-open counts as open except for the one request that claims the probe, which this
    /// call does.
    pub(crate) fn holds_back(&self, now_ms: u64, settings: &CircuitBreaker) -> bool {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now_ms < until {
            return true;
        }
        // Half-open: one probe at a time; a claim that never reported back expires after the
        // first opening's length.
        let claimed = self.probe_claimed_ms.load(Ordering::Relaxed);
        let expiry = u64::try_from(settings.open_for.as_millis()).unwrap_or(u64::MAX);
        if claimed != 0 && now_ms < claimed.saturating_add(expiry) {
            return true;
        }
        self.probe_claimed_ms
            .compare_exchange(claimed, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    }

    /// Whether the breaker is open at `now_ms`, without claiming anything.
    pub(crate) fn is_open(&self, now_ms: u64) -> bool {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms < until
    }

    /// The node answered: close the breaker.
    pub(crate) fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0
            || self.open_until_ms.load(Ordering::Relaxed) != 0
        {
            self.failures.store(0, Ordering::Relaxed);
            self.openings.store(0, Ordering::Relaxed);
            self.open_until_ms.store(0, Ordering::Relaxed);
            self.probe_claimed_ms.store(0, Ordering::Relaxed);
        }
    }

    /// A transport failure at `now_ms`: opens the breaker after `failures` in a row, or at
    /// once when it was half-open (the probe failed).
    pub(crate) fn failed(&self, now_ms: u64, settings: &CircuitBreaker) -> Noted {
        if settings.failures == 0 {
            return Noted::Unchanged;
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until != 0 && now_ms < until {
            // Already open: a request sent before it opened.
            return Noted::Unchanged;
        }
        let half_open = until != 0;
        if !half_open && failures < settings.failures {
            return Noted::Unchanged;
        }
        let opening = self
            .openings
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let open_for = settings.open_duration(opening);
        let open_ms = u64::try_from(open_for.as_millis()).unwrap_or(u64::MAX);
        self.open_until_ms
            .store(now_ms.saturating_add(open_ms).max(1), Ordering::Relaxed);
        self.probe_claimed_ms.store(0, Ordering::Relaxed);
        Noted::Opened(open_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CircuitBreaker {
        CircuitBreaker::new()
            .failures(2)
            .open_for(Duration::from_millis(1000), Duration::from_millis(4000))
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_closes_it() {
        let s = settings();
        let b = BreakerState::default();
        assert_eq!(b.failed(10, &s), Noted::Unchanged);
        assert!(!b.holds_back(11, &s));
        // A success in between starts the count again.
        b.succeeded();
        assert_eq!(b.failed(12, &s), Noted::Unchanged);
        let Noted::Opened(open_for) = b.failed(13, &s) else {
            panic!("the second failure in a row opens it");
        };
        assert!(
            (Duration::from_millis(500)..=Duration::from_millis(1000)).contains(&open_for),
            "{open_for:?}"
        );
        assert!(b.is_open(14) && b.holds_back(14, &s));
        b.succeeded();
        assert!(!b.is_open(14) && !b.holds_back(14, &s));
    }

    #[test]
    fn half_open_lets_one_probe_through_and_a_failed_probe_reopens_for_longer() {
        let s = settings();
        let b = BreakerState::default();
        b.failed(0, &s);
        let Noted::Opened(first) = b.failed(0, &s) else {
            panic!("opens");
        };
        let after = u64::try_from(first.as_millis()).unwrap() + 1;
        // Half-open: the first caller claims the probe, the others still hold back.
        assert!(!b.holds_back(after, &s));
        assert!(b.holds_back(after, &s));
        // The probe fails: open again at once, for 1-2 s this time.
        let Noted::Opened(second) = b.failed(after, &s) else {
            panic!("a failed probe reopens");
        };
        assert!(
            (Duration::from_millis(1000)..=Duration::from_millis(2000)).contains(&second),
            "{second:?}"
        );
        // Capped at the longest.
        let mut now = after;
        for _ in 0..10 {
            now += 10_000;
            assert!(!b.holds_back(now, &s));
            let Noted::Opened(open_for) = b.failed(now, &s) else {
                panic!("reopens");
            };
            assert!(open_for <= Duration::from_millis(4000), "{open_for:?}");
        }
        // A claim that never reports back expires.
        now += 10_000;
        assert!(!b.holds_back(now, &s));
        assert!(b.holds_back(now + 999, &s));
        assert!(!b.holds_back(now + 1000, &s));
    }

    #[test]
    fn a_disabled_breaker_never_opens_and_bad_settings_are_refused() {
        let s = CircuitBreaker::disabled();
        let b = BreakerState::default();
        for now in 0..100 {
            assert_eq!(b.failed(now, &s), Noted::Unchanged);
        }
        assert!(!b.holds_back(100, &s));
        assert!(check(&CircuitBreaker::default()).is_ok());
        let zero = CircuitBreaker::new().open_for(Duration::ZERO, Duration::from_secs(1));
        assert!(matches!(check(&zero), Err(Error::InvalidArgument(_))));
        let inverted =
            CircuitBreaker::new().open_for(Duration::from_secs(2), Duration::from_secs(1));
        assert!(matches!(check(&inverted), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn only_failures_without_an_answer_count() {
        assert!(is_transport_failure(FailureClass::NotSent));
        assert!(is_transport_failure(FailureClass::Broken));
        assert!(is_transport_failure(FailureClass::TimedOut));
        assert!(!is_transport_failure(FailureClass::NodeUnavailable));
        assert!(!is_transport_failure(FailureClass::Answered));
    }
}
