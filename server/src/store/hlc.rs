//! Hybrid logical clock: the source of every write's version (the table at the top of `cache.proto`).
//!
//! A version is a `u64`: the upper 48 bits are unix milliseconds, the lower 16 a counter that orders
//! writes within one millisecond. The clock never goes backwards and never hands out the same value
//! twice, even when the wall clock jumps back; if more than 65 536 versions are taken in one
//! millisecond the counter carries into the millisecond bits, which only moves logical time forward.
//! The clock never reads the system time itself: callers pass `now_ms`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of a version that hold the counter.
pub const COUNTER_BITS: u32 = 16;

/// The largest unix-millisecond value a version can carry (year 10889).
pub const MAX_MILLIS: u64 = (1 << (64 - COUNTER_BITS)) - 1;

/// A hybrid logical clock shared by every writer of a node.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

/// A remote stamp was too far ahead of this node's wall clock to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "remote version is {ahead_ms} ms ahead of the local clock (at most {max_drift_ms} ms allowed)"
)]
pub struct ClockDrift {
    /// How far ahead of local time the remote stamp was.
    pub ahead_ms: u64,
    /// The allowed drift.
    pub max_drift_ms: u64,
}

impl Hlc {
    /// A clock that has handed out nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The physical part (unix ms) of a version.
    pub fn millis(version: u64) -> u64 {
        version >> COUNTER_BITS
    }

    /// The smallest version stamped at `now_ms`.
    pub fn at_millis(now_ms: u64) -> u64 {
        now_ms.min(MAX_MILLIS) << COUNTER_BITS
    }

    /// A new version: greater than every version this clock gave out or observed, and greater than
    /// `floor` (the version being replaced), and at least the wall time `now_ms`.
    pub fn next_after(&self, now_ms: u64, floor: u64) -> u64 {
        let wall = Self::at_millis(now_ms);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall
                .max(last.saturating_add(1))
                .max(floor.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(current) => last = current,
            }
        }
    }

    /// The last version this clock gave out or observed (0: none yet). Changes nothing: later
    /// versions are greater.
    pub fn current(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// A new version greater than everything seen so far.
    pub fn next(&self, now_ms: u64) -> u64 {
        self.next_after(now_ms, 0)
    }

    /// Moves the clock back to at most `limit`, after every version above it was dropped (a
    /// clock that ran ahead was corrected): later versions start from the wall clock again
    /// instead of from stamps no replica accepts.
    pub fn rewind(&self, limit: u64) {
        self.last.fetch_min(limit, Ordering::AcqRel);
    }

    /// Moves the clock past a version seen from another node, so later local versions order after it.
    /// Stamps more than `max_drift_ms` ahead of `now_ms` are refused and leave the clock unchanged.
    /// There is deliberately no unchecked variant: one forged far-future stamp taken in would
    /// make every later local version lose last-writer-wins against it.
    pub fn observe(&self, remote: u64, now_ms: u64, max_drift_ms: u64) -> Result<(), ClockDrift> {
        let remote_ms = Self::millis(remote);
        if remote_ms > now_ms.saturating_add(max_drift_ms) {
            return Err(ClockDrift {
                ahead_ms: remote_ms - now_ms,
                max_drift_ms,
            });
        }
        self.last.fetch_max(remote, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_is_the_last_version_given_out_or_observed() {
        let hlc = Hlc::new();
        assert_eq!(hlc.current(), 0);
        let a = hlc.next(10_000);
        assert_eq!(hlc.current(), a);
        hlc.observe(Hlc::at_millis(20_000), 20_000, 0).unwrap();
        assert_eq!(hlc.current(), Hlc::at_millis(20_000));
        let current = hlc.current();
        assert!(hlc.next(10_000) > current, "current changes nothing");
    }

    #[test]
    fn versions_strictly_increase_even_when_the_wall_clock_goes_back() {
        let hlc = Hlc::new();
        let a = hlc.next(10_000);
        let b = hlc.next(10_000);
        let c = hlc.next(5_000); // wall clock stepped back
        let d = hlc.next(20_000);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert_eq!(Hlc::millis(a), 10_000);
        assert_eq!(
            Hlc::millis(c),
            10_000,
            "logical time holds while the wall clock is behind"
        );
        assert_eq!(d, Hlc::at_millis(20_000));
    }

    #[test]
    fn next_after_exceeds_the_replaced_version() {
        let hlc = Hlc::new();
        let floor = Hlc::at_millis(50_000) + 7;
        let v = hlc.next_after(1_000, floor);
        assert_eq!(v, floor + 1);
        assert!(hlc.next(1_000) > v);
    }

    #[test]
    fn counter_overflow_carries_into_logical_time() {
        let hlc = Hlc::new();
        let mut prev = 0;
        for _ in 0..70_000 {
            let v = hlc.next(1);
            assert!(v > prev);
            prev = v;
        }
        assert_eq!(Hlc::millis(prev), 2);
    }

    #[test]
    fn observe_refuses_stamps_too_far_ahead() {
        let hlc = Hlc::new();
        let far = Hlc::at_millis(10_000 + 501);
        assert_eq!(
            hlc.observe(far, 10_000, 500),
            Err(ClockDrift {
                ahead_ms: 501,
                max_drift_ms: 500
            })
        );
        let near = Hlc::at_millis(10_400) + 3;
        hlc.observe(near, 10_000, 500).unwrap();
        assert!(hlc.next(10_000) > near);
    }

    #[test]
    fn concurrent_writers_never_share_a_version() {
        let hlc = std::sync::Arc::new(Hlc::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let hlc = hlc.clone();
                std::thread::spawn(move || (0..10_000).map(|_| hlc.next(42)).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
