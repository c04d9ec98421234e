//! Retries: which failures a call may retry ([`Retry::may_retry`]), the backoff between
//! attempts, and the retry budget's token bucket. The policy types are public in `options.rs`;
//! the loop that applies them is the router's.

use std::{
    hash::{BuildHasher, RandomState},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use crate::{RetryBudget, RetryPolicy, conn::FailureClass};

/// Whether repeating an operation after it may have run can change its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads, and writes whose repetition leaves the same state: retried after any failure
    /// that says nothing of their effect.
    Idempotent,
    /// Everything else: retried only when the request certainly never reached a node.
    OnlyUnsent,
}

impl Retry {
    /// Whether a call that failed with `class` may be tried again.
    pub(crate) fn may_retry(self, class: FailureClass) -> bool {
        match class {
            FailureClass::NotSent => true,
            FailureClass::Broken | FailureClass::NodeUnavailable => self == Retry::Idempotent,
            // Reads already fail over after a timeout; a per-call deadline bounds the rest.
            FailureClass::TimedOut | FailureClass::Answered => false,
        }
    }
}

/// The delay before retry `retry` (1 for the first) under `policy`, jittered when the policy
/// says so: uniformly between half the base delay and all of it.
pub(crate) fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let base = policy.base_delay(retry);
    if !policy.jitter || base.is_zero() {
        return base;
    }
    let half = base / 2;
    let spread = u64::try_from((base - half).as_nanos()).unwrap_or(u64::MAX);
    // A fresh `RandomState` has fresh random keys: a cheap random number, no RNG crate.
    let random = RandomState::new().hash_one(retry);
    half + Duration::from_nanos(random % spread.saturating_add(1))
}

/// Milli-tokens per token: the bucket counts in thousandths so that fractional ratios add up
/// exactly with atomics.
const MILLI: u64 = 1000;

/// The retry budget's token bucket (see [`RetryBudget`]), shared by a client and its clones.
#[derive(Debug)]
pub(crate) struct Budget {
    milli_tokens: AtomicU64,
    per_call: u64,
    capacity: u64,
}

impl Budget {
    /// A full bucket. `budget` must have been checked ([`check`]).
    pub(crate) fn new(budget: &RetryBudget) -> Self {
        let capacity = u64::from(budget.reserve) * MILLI;
        // Checked: finite, 0..=1000.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let per_call = (budget.ratio * MILLI as f64).round() as u64;
        Budget {
            milli_tokens: AtomicU64::new(capacity),
            per_call,
            capacity,
        }
    }

    /// A call started: it earns its share of a retry.
    pub(crate) fn deposit(&self) {
        if self.per_call == 0 {
            return;
        }
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tokens| {
                (tokens < self.capacity)
                    .then(|| tokens.saturating_add(self.per_call).min(self.capacity))
            });
    }

    /// Takes one retry's token; `false` when the bucket holds less than one.
    pub(crate) fn withdraw(&self) -> bool {
        self.milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tokens| {
                tokens.checked_sub(MILLI)
            })
            .is_ok()
    }
}

/// Checks a budget's settings.
pub(crate) fn check(budget: &RetryBudget) -> Result<(), crate::Error> {
    if budget.ratio.is_finite() && (0.0..=1000.0).contains(&budget.ratio) {
        Ok(())
    } else {
        Err(crate::Error::InvalidArgument(format!(
            "retry budget ratio must be a number from 0 to 1000, not {}",
            budget.ratio
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unsent_requests_of_non_idempotent_operations_are_retried() {
        use FailureClass::*;
        for class in [NotSent, Broken, NodeUnavailable, TimedOut, Answered] {
            assert_eq!(
                Retry::OnlyUnsent.may_retry(class),
                class == NotSent,
                "{class:?}"
            );
            assert_eq!(
                Retry::Idempotent.may_retry(class),
                matches!(class, NotSent | Broken | NodeUnavailable),
                "{class:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_most_and_jitter_stays_within_half() {
        let policy = RetryPolicy::new()
            .backoff(Duration::from_millis(10), Duration::from_millis(70))
            .jitter(false);
        let delays: Vec<u64> = (1..=6)
            .map(|n| backoff(&policy, n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [10, 20, 40, 70, 70, 70]);
        assert_eq!(
            policy.base_delay(u32::MAX),
            Duration::from_millis(70),
            "no overflow"
        );
        let jittered = policy.jitter(true);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let delay = backoff(&jittered, 3);
            assert!(
                delay >= Duration::from_millis(20) && delay <= Duration::from_millis(40),
                "{delay:?}"
            );
            seen.insert(delay);
        }
        assert!(
            seen.len() > 100,
            "jitter spreads the delays: {}",
            seen.len()
        );
        assert_eq!(
            backoff(
                &RetryPolicy::new().backoff(Duration::ZERO, Duration::ZERO),
                1
            ),
            Duration::ZERO
        );
    }

    #[test]
    fn the_budget_allows_its_reserve_then_its_ratio() {
        let budget = Budget::new(&RetryBudget::new(0.25, 2));
        assert!(budget.withdraw() && budget.withdraw(), "a full reserve");
        assert!(!budget.withdraw(), "then empty");
        for _ in 0..3 {
            budget.deposit();
        }
        assert!(!budget.withdraw(), "0.75 of a token is not a retry");
        budget.deposit();
        assert!(budget.withdraw(), "four calls earn one retry");
        assert!(!budget.withdraw());
        for _ in 0..100 {
            budget.deposit();
        }
        assert!(
            budget.withdraw() && budget.withdraw() && !budget.withdraw(),
            "capped"
        );

        let none = Budget::new(&RetryBudget::new(0.0, 0));
        none.deposit();
        assert!(!none.withdraw());
    }

    #[test]
    fn bad_budget_ratios_are_refused() {
        for ratio in [f64::NAN, f64::INFINITY, -0.5, 1001.0] {
            assert!(check(&RetryBudget::new(ratio, 1)).is_err(), "{ratio}");
        }
        for ratio in [0.0, 0.1, 1.0, 1000.0] {
            assert!(check(&RetryBudget::new(ratio, 1)).is_ok(), "{ratio}");
        }
    }
}
