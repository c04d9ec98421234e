//! Pacing data movement so the foreground does not feel it.
//!
//! One [`Pacer`] per node paces everything the node sends when data moves: its push passes and
//! the `StreamEntries` answers it serves to joiners. Before each batch the sender waits until
//! the batch fits the current rate (a token bucket without burst). Ten times a second
//! ([`CONTROL_INTERVAL`]) the rate is set again (AIMD, as TCP does with its window):
//! - the node handled no request in the interval (idle): the configured maximum
//!   (`--rebalance-rate`), so an idle cluster moves data as fast as allowed;
//! - it handled requests and its threads waited for a CPU longer than `--rebalance-yield` (the
//!   90th percentile of the interval's samples): the rate halves (down to [`MIN_RATE`], so the
//!   movement always ends);
//! - it handled requests without that wait: the rate grows by 1/32 of the maximum.
//!
//! The CPU wait is measured by a probe thread ([`CpuWaitProbe`]) that sleeps 1 ms at a time and
//! records how late it wakes: the run-queue delay every thread of the node (and the requests
//! they serve) sees. It is what grows when data movement takes the CPUs from requests, whatever
//! the workload, and it needs no knowledge of request latencies. The probe runs only while data
//! moves: it stops 2 s after the last batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often the rate is set again.
pub const CONTROL_INTERVAL: Duration = Duration::from_millis(100);
/// The lowest rate, bytes per second: movement slows down but never stops.
pub const MIN_RATE: f64 = 1024.0 * 1024.0;
/// The ceiling the rate climbs towards when `--rebalance-rate` is 0 (unlimited), bytes per
/// second; an idle node with an unlimited rate does not wait at all.
pub const UNLIMITED_CEILING: f64 = 1024.0 * 1024.0 * 1024.0;
/// The rate a pace starts at when the node is busy, as a fraction of the maximum.
const START_FRACTION: f64 = 1.0 / 8.0;
/// How long the probe thread sleeps per sample.
const PROBE_SLEEP: Duration = Duration::from_millis(1);
/// The probe thread stops after this long without a reading.
const PROBE_IDLE: Duration = Duration::from_secs(2);

/// What the rate is set from, once per [`CONTROL_INTERVAL`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signal {
    /// Whether the node handled requests in the interval.
    pub busy: bool,
    /// The 90th percentile of the CPU wait the probe saw in the interval (`None`: no sample).
    pub cpu_wait: Option<Duration>,
}

/// The next rate (bytes per second) after `rate`, given `signal`, a maximum (`max_rate`, 0 =
/// unlimited) and the CPU wait to yield at (`yield_at`, zero = never yield).
pub fn next_rate(rate: f64, signal: Signal, max_rate: u64, yield_at: Duration) -> f64 {
    let ceiling = ceiling(max_rate);
    let floor = MIN_RATE.min(ceiling);
    if yield_at.is_zero() || !signal.busy {
        return ceiling;
    }
    if signal.cpu_wait.is_some_and(|wait| wait > yield_at) {
        return (rate / 2.0).max(floor);
    }
    (rate + ceiling / 32.0).clamp(floor, ceiling)
}

#[allow(clippy::cast_precision_loss)] // rates are estimates
fn ceiling(max_rate: u64) -> f64 {
    if max_rate == 0 {
        UNLIMITED_CEILING
    } else {
        max_rate as f64
    }
}

#[derive(Debug)]
struct State {
    rate: f64,
    /// When the next batch may leave.
    next_at: Instant,
    /// Start of the current control interval and the requests handled by then.
    interval_start: Instant,
    handled_then: u64,
}

/// The node's pacer of data movement (see the module docs).
#[derive(Debug, Default)]
pub struct Pacer {
    state: Mutex<Option<State>>,
    probe: Arc<CpuWaitProbe>,
}

impl Pacer {
    /// How long to wait before sending a batch of `bytes`, given the requests the node has
    /// handled so far (`handled`), the maximum rate (0 = unlimited) and the CPU wait to yield
    /// at (zero: never). Call it right before each batch and sleep that long.
    pub fn delay(&self, bytes: u64, handled: u64, max_rate: u64, yield_at: Duration) -> Duration {
        let now = Instant::now();
        if !yield_at.is_zero() {
            self.probe.ensure_running();
        }
        let mut state = self.state.lock();
        let state = state.get_or_insert_with(|| State {
            rate: ceiling(max_rate) * START_FRACTION,
            next_at: now,
            interval_start: now,
            handled_then: handled,
        });
        if now.saturating_duration_since(state.interval_start) >= CONTROL_INTERVAL {
            let signal = Signal {
                busy: handled > state.handled_then,
                cpu_wait: self.probe.take(),
            };
            state.rate = next_rate(state.rate, signal, max_rate, yield_at);
            state.interval_start = now;
            state.handled_then = handled;
            tracing::trace!(rate = state.rate, ?signal, "rebalance pace");
        }
        if max_rate == 0 && state.rate >= UNLIMITED_CEILING {
            return Duration::ZERO;
        }
        // A pause of more than an interval starts a new bucket rather than a burst.
        let at = state.next_at.max(now);
        #[allow(clippy::cast_precision_loss)]
        let cost = Duration::from_secs_f64(bytes as f64 / state.rate.max(1.0));
        state.next_at = at + cost;
        at - now
    }

    /// The current rate in bytes per second (`None` before the first batch).
    pub fn rate(&self) -> Option<f64> {
        self.state.lock().as_ref().map(|s| s.rate)
    }
}

/// A thread that measures how late a 1 ms sleep wakes up: the time the node's threads wait
/// for a CPU. Runs while readings are taken; stops 2 s after the last.
#[derive(Debug, Default)]
pub struct CpuWaitProbe {
    running: AtomicBool,
    /// The lateness (µs) of each sample since the last reading, at most [`MAX_SAMPLES`].
    late_us: Mutex<Vec<u32>>,
    /// Samples taken since the last reading (also those past [`MAX_SAMPLES`]).
    samples: AtomicU64,
}

/// Most samples kept between two readings (a reading comes every [`CONTROL_INTERVAL`] while
/// data moves: about 100 samples).
const MAX_SAMPLES: usize = 4096;
/// The percentile of the samples a reading reports: most requests need a wakeup or two, so the
/// tail of the CPU wait is what their p99 feels.
const WAIT_PERCENTILE: f64 = 0.9;

impl CpuWaitProbe {
    /// Starts the probe thread unless it runs.
    pub fn ensure_running(self: &Arc<Self>) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let probe = self.clone();
        let spawned = std::thread::Builder::new()
            .name("rebalance-probe".into())
            .spawn(move || probe.run());
        if spawned.is_err() {
            // No probe: no samples, so the pacer sees no CPU wait. Try again next time.
            self.running.store(false, Ordering::Release);
        }
    }

    fn run(&self) {
        // A reading resets the sample count: this many samples unread means nobody reads.
        let idle_samples = (PROBE_IDLE.as_micros() / PROBE_SLEEP.as_micros()) as u64;
        self.samples.store(0, Ordering::Relaxed);
        self.late_us.lock().clear();
        loop {
            let before = Instant::now();
            std::thread::sleep(PROBE_SLEEP);
            let late = before.elapsed().saturating_sub(PROBE_SLEEP);
            {
                let mut late_us = self.late_us.lock();
                if late_us.len() < MAX_SAMPLES {
                    late_us.push(u32::try_from(late.as_micros()).unwrap_or(u32::MAX));
                }
            }
            let unread = self.samples.fetch_add(1, Ordering::Relaxed) + 1;
            if unread >= idle_samples {
                self.running.store(false, Ordering::Release);
                return;
            }
        }
    }

    /// The 90th percentile of the lateness since the last reading (`None`: no sample), and
    /// starts a new reading.
    pub fn take(&self) -> Option<Duration> {
        self.samples.store(0, Ordering::Relaxed);
        let mut late_us = std::mem::take(&mut *self.late_us.lock());
        percentile(&mut late_us, WAIT_PERCENTILE).map(|us| Duration::from_micros(u64::from(us)))
    }
}

/// The `q` quantile (0..=1) of `samples` (reordered), `None` when there are none.
fn percentile(samples: &mut [u32], q: f64) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((samples.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    let (_, value, _) = samples.select_nth_unstable(rank);
    Some(*value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 64 * 1024 * 1024;
    const YIELD: Duration = Duration::from_micros(500);

    fn busy(wait_us: u64) -> Signal {
        Signal {
            busy: true,
            cpu_wait: Some(Duration::from_micros(wait_us)),
        }
    }

    #[test]
    fn an_idle_node_moves_at_the_maximum_and_a_busy_one_yields_to_cpu_wait() {
        let max = MAX as f64;
        let idle = Signal {
            busy: false,
            cpu_wait: Some(Duration::from_millis(50)),
        };
        assert_eq!(
            next_rate(MIN_RATE, idle, MAX, YIELD),
            max,
            "idle: full speed"
        );

        // Busy and waiting: halve, down to the floor and no further.
        let mut rate = max;
        rate = next_rate(rate, busy(2000), MAX, YIELD);
        assert_eq!(rate, max / 2.0);
        for _ in 0..20 {
            rate = next_rate(rate, busy(2000), MAX, YIELD);
        }
        assert_eq!(rate, MIN_RATE);
        // Busy without waiting: back up by 1/32 of the maximum per interval, capped.
        rate = next_rate(rate, busy(100), MAX, YIELD);
        assert_eq!(rate, MIN_RATE + max / 32.0);
        for _ in 0..40 {
            rate = next_rate(rate, busy(100), MAX, YIELD);
        }
        assert_eq!(rate, max);
        // No sample is no sign of waiting.
        let unknown = Signal {
            busy: true,
            cpu_wait: None,
        };
        assert_eq!(next_rate(max, unknown, MAX, YIELD), max);
    }

    #[test]
    fn yielding_off_or_unlimited_rates_behave() {
        // Yield 0: always the maximum.
        assert_eq!(
            next_rate(MIN_RATE, busy(50_000), MAX, Duration::ZERO),
            MAX as f64
        );
        // Unlimited: the ceiling stands in for the maximum.
        assert_eq!(
            next_rate(MIN_RATE, busy(10), 0, YIELD),
            MIN_RATE + UNLIMITED_CEILING / 32.0
        );
        // A maximum below the floor is the floor.
        assert_eq!(next_rate(1000.0, busy(50_000), 1000, YIELD), 1000.0);
    }

    #[test]
    fn the_reading_is_the_ninetieth_percentile() {
        let mut samples: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut samples, 0.9), Some(90));
        assert_eq!(percentile(&mut [7], 0.9), Some(7));
        assert_eq!(percentile(&mut [], 0.9), None);
        let probe = CpuWaitProbe::default();
        probe
            .late_us
            .lock()
            .extend([100, 5000, 120, 90, 110, 100, 95, 105, 98, 4000]);
        assert_eq!(probe.take(), Some(Duration::from_micros(4000)));
        assert_eq!(probe.take(), None, "a reading starts a new window");
    }

    #[test]
    fn batches_are_spaced_by_their_size_over_the_rate() {
        let pacer = Pacer::default();
        // 1 MiB/s maximum, never yielding: the first batch goes at once, the next waits for the
        // bytes of the first at the starting rate (an eighth of the maximum).
        let max = 1024 * 1024;
        assert_eq!(pacer.delay(1024, 0, max, Duration::ZERO), Duration::ZERO);
        let wait = pacer.delay(1024, 0, max, Duration::ZERO);
        let expected = 1024.0 / (max as f64 / 8.0);
        assert!(
            (wait.as_secs_f64() - expected).abs() < 0.002,
            "{wait:?} vs {expected}"
        );
        // Unlimited and idle: no wait once the rate is at the ceiling.
        let pacer = Pacer::default();
        pacer.delay(1 << 20, 0, 0, Duration::ZERO);
        pacer.state.lock().as_mut().unwrap().interval_start -= CONTROL_INTERVAL;
        pacer.delay(1 << 20, 0, 0, Duration::ZERO);
        assert_eq!(pacer.rate(), Some(UNLIMITED_CEILING));
        assert_eq!(pacer.delay(1 << 20, 0, 0, Duration::ZERO), Duration::ZERO);
    }
}
