//! Latency recording: HdrHistograms with fixed bounds, the summaries reported from them, and
//! the timing rule that corrects for coordinated omission.
//!
//! Bounds are fixed (1 ns ..= 60 s at 3 significant digits for totals; 1 µs ..= 60 s at 2 digits
//! for the per-second samples) and every value is clamped into them before it is recorded, with
//! a count of the values that were clamped. Auto-resizing histograms with `saturating_record`
//! would instead silently record out-of-range values as the histogram's current maximum.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Smallest latency recorded, in nanoseconds.
pub const LOWEST_NS: u64 = 1;
/// Largest latency recorded, in nanoseconds (60 s); longer ones are clamped to it and counted.
pub const HIGHEST_NS: u64 = 60_000_000_000;

/// The percentiles of the latency distribution plot and of [`RunResult::percentiles`](crate::bench::report::RunResult).
pub const CURVE_PERCENTILES: &[f64] = &[
    0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 85.0, 90.0, 92.5, 95.0, 96.0, 97.0,
    98.0, 99.0, 99.5, 99.7, 99.9, 99.95, 99.97, 99.99, 99.995, 99.999, 100.0,
];

/// A latency histogram in nanoseconds with clamped recording.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
    clamped: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram (1 ns ..= 60 s, 3 significant digits).
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, 3)
                .expect("constant bounds are valid"),
            clamped: 0,
        }
    }

    /// Records one latency in nanoseconds, clamped into the bounds.
    pub fn record_ns(&mut self, ns: u64) {
        let value = ns.clamp(LOWEST_NS, HIGHEST_NS);
        if value != ns {
            self.clamped += 1;
        }
        // Cannot fail: the value is within the histogram's bounds.
        let _ = self.hist.record(value);
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        self.record_ns(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Cannot fail: both histograms have the same bounds.
        let _ = self.hist.add(&other.hist);
        self.clamped += other.clamped;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Values that were out of bounds and clamped.
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// The value at `percentile` (0..=100), in nanoseconds (0 when empty).
    pub fn percentile_ns(&self, percentile: f64) -> u64 {
        if self.hist.is_empty() {
            return 0;
        }
        self.hist.value_at_quantile(percentile / 100.0)
    }

    /// The summary reported for this histogram.
    pub fn summary(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            min_us: us(self.hist.min()),
            mean_us: self.hist.mean() / 1000.0,
            p50_us: us(self.percentile_ns(50.0)),
            p90_us: us(self.percentile_ns(90.0)),
            p99_us: us(self.percentile_ns(99.0)),
            p999_us: us(self.percentile_ns(99.9)),
            max_us: us(self.hist.max()),
            clamped: self.clamped,
        }
    }

    /// The latency at each of [`CURVE_PERCENTILES`].
    pub fn curve(&self) -> Vec<PercentilePoint> {
        CURVE_PERCENTILES
            .iter()
            .map(|&percentile| PercentilePoint {
                percentile,
                latency_us: self.percentile_ns(percentile) as f64 / 1000.0,
            })
            .collect()
    }
}

/// A smaller histogram for one second of a run (1 µs ..= 60 s, 2 significant digits).
#[derive(Debug, Clone)]
pub struct IntervalHistogram {
    hist: Histogram<u64>,
}

impl Default for IntervalHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl IntervalHistogram {
    /// An empty interval histogram.
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, HIGHEST_NS / 1000, 2)
                .expect("constant bounds are valid"),
        }
    }

    /// Records a latency, clamped to 1 µs ..= 60 s.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let _ = self.hist.record(us.clamp(1, HIGHEST_NS / 1000));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &IntervalHistogram) {
        let _ = self.hist.add(&other.hist);
    }

    /// Forgets every value.
    pub fn reset(&mut self) {
        self.hist.reset();
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at `percentile`, in µs (0 when empty).
    pub fn percentile_us(&self, percentile: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(percentile / 100.0) as f64
    }
}

/// Latency figures of a set of requests, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Requests measured.
    pub count: u64,
    /// Fastest.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
    /// Latencies beyond the histogram's bounds, recorded as the bound.
    pub clamped: u64,
}

/// One point of the latency distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PercentilePoint {
    /// Percentile, 0..=100.
    pub percentile: f64,
    /// Latency at that percentile, µs.
    pub latency_us: f64,
}

/// When one request was meant to leave, when it left and when its answer came.
///
/// Closed loop: a request is meant to leave when it is sent, so latency is service time. Open
/// loop: requests have an intended send time from the schedule. When the harness falls behind (a
/// slow answer held up a connection's queue, or the harness itself stalled), the request leaves
/// late; measuring from the actual send time would hide exactly the stall the schedule exposes
/// (coordinated omission, Gil Tene). Latency is therefore measured from the intended time.
#[derive(Debug, Clone, Copy)]
pub struct RequestTiming {
    /// Scheduled send time (open loop), `None` in a closed loop.
    pub intended: Option<Instant>,
    /// When the request was handed to the target.
    pub sent: Instant,
    /// When the answer came.
    pub done: Instant,
}

impl RequestTiming {
    /// The latency to record: from the intended send time when there is one (and it was not
    /// after the actual send), else from the send.
    pub fn latency(&self) -> Duration {
        let start = match self.intended {
            Some(intended) if intended < self.sent => intended,
            _ => self.sent,
        };
        self.done.saturating_duration_since(start)
    }

    /// How late the request left compared with its schedule (zero in a closed loop).
    pub fn send_lag(&self) -> Duration {
        match self.intended {
            Some(intended) => self.sent.saturating_duration_since(intended),
            None => Duration::ZERO,
        }
    }
}

/// The open-loop schedule: request `i` of connection `c` (of `C`) is due at
/// `start + (i·C + c) / rate`, so the connections' requests interleave evenly and together make
/// `rate` requests per second.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    period_ns: f64,
    connection: u64,
    connections: u64,
}

impl Schedule {
    /// The schedule of `connection` of `connections` at `rate` requests/s in total.
    pub fn new(start: Instant, rate: f64, connection: u64, connections: u64) -> Self {
        Self {
            start,
            period_ns: 1e9 / rate.max(1e-9),
            connection,
            connections: connections.max(1),
        }
    }

    /// When this connection's `i`-th request is due.
    pub fn intended(&self, i: u64) -> Instant {
        let slot = i * self.connections + self.connection;
        self.start + Duration::from_nanos((slot as f64 * self.period_ns).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut hist = LatencyHistogram::new();
        // 1..=1000 µs, one each.
        for us in 1..=1000u64 {
            hist.record(Duration::from_micros(us));
        }
        let summary = hist.summary();
        assert_eq!(summary.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() / want < 0.002;
        assert!(close(summary.p50_us, 500.0), "{summary:?}");
        assert!(close(summary.p90_us, 900.0), "{summary:?}");
        assert!(close(summary.p99_us, 990.0), "{summary:?}");
        assert!(close(summary.p999_us, 999.0), "{summary:?}");
        assert!(close(summary.max_us, 1000.0), "{summary:?}");
        assert!(close(summary.min_us, 1.0), "{summary:?}");
        assert!(close(summary.mean_us, 500.5), "{summary:?}");
        assert_eq!(summary.clamped, 0);
    }

    #[test]
    fn a_skewed_distribution_has_its_tail_where_expected() {
        // 990 fast requests (100 µs) and 10 slow ones (50 ms): p99 is fast, p99.9 is slow.
        let mut hist = LatencyHistogram::new();
        for _ in 0..990 {
            hist.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            hist.record(Duration::from_millis(50));
        }
        let summary = hist.summary();
        assert!((summary.p99_us - 100.0).abs() < 0.1, "{summary:?}");
        assert!((summary.p999_us - 50_000.0).abs() < 50.0, "{summary:?}");
        let curve = hist.curve();
        assert_eq!(curve.len(), CURVE_PERCENTILES.len());
        assert!(curve.windows(2).all(|w| w[0].latency_us <= w[1].latency_us));
    }

    #[test]
    fn out_of_range_values_are_clamped_and_counted() {
        let mut hist = LatencyHistogram::new();
        hist.record_ns(0);
        hist.record(Duration::from_secs(3600));
        hist.record(Duration::from_millis(1));
        assert_eq!(hist.count(), 3);
        assert_eq!(hist.clamped(), 2);
        let summary = hist.summary();
        assert!(
            (summary.max_us - 60_000_000.0).abs() / 60_000_000.0 < 0.001,
            "{summary:?}"
        );
        assert_eq!(summary.clamped, 2);
        let mut other = LatencyHistogram::new();
        other.merge(&hist);
        assert_eq!((other.count(), other.clamped()), (3, 2));
        assert_eq!(LatencyHistogram::new().summary(), LatencySummary::default());
    }

    #[test]
    fn interval_histograms_clamp_and_merge() {
        let mut a = IntervalHistogram::new();
        a.record(Duration::from_nanos(10));
        a.record(Duration::from_micros(500));
        let mut b = IntervalHistogram::new();
        b.record(Duration::from_secs(3600));
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert!(a.percentile_us(100.0) >= 59_000_000.0);
        a.reset();
        assert_eq!(a.percentile_us(50.0), 0.0);
    }

    #[test]
    fn late_senders_are_charged_from_the_intended_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Open loop, the sender was 5 ms late, the service took 1 ms: 6 ms is recorded.
        let late = RequestTiming {
            intended: Some(t0),
            sent: t0 + ms(5),
            done: t0 + ms(6),
        };
        assert_eq!(late.latency(), ms(6));
        assert_eq!(late.send_lag(), ms(5));
        // Open loop, on time: service time only.
        let on_time = RequestTiming {
            intended: Some(t0 + ms(5)),
            sent: t0 + ms(5),
            done: t0 + ms(6),
        };
        assert_eq!(on_time.latency(), ms(1));
        assert_eq!(on_time.send_lag(), Duration::ZERO);
        // Closed loop: no schedule, service time.
        let closed = RequestTiming {
            intended: None,
            sent: t0 + ms(5),
            done: t0 + ms(6),
        };
        assert_eq!(closed.latency(), ms(1));
        assert_eq!(closed.send_lag(), Duration::ZERO);
    }

    #[test]
    fn a_stalled_open_loop_records_the_whole_stall() {
        // 1000 requests/s on one connection; the target stalls for 100 ms on request 0, so
        // requests 1..=100 leave late, each as soon as the previous answer is back (1 ms each
        // after the stall). Corrected, the latencies reach the stall; uncorrected they would
        // all look like 1 ms.
        let t0 = Instant::now();
        let schedule = Schedule::new(t0, 1000.0, 0, 1);
        let mut corrected = LatencyHistogram::new();
        let mut uncorrected = LatencyHistogram::new();
        let mut free_at = t0;
        for i in 0..=100u64 {
            let intended = schedule.intended(i);
            let sent = intended.max(free_at);
            let service = if i == 0 {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(1)
            };
            let done = sent + service;
            free_at = done;
            let timing = RequestTiming {
                intended: Some(intended),
                sent,
                done,
            };
            corrected.record(timing.latency());
            uncorrected.record(done - sent);
        }
        assert!(
            corrected.summary().p50_us > 50_000.0,
            "{:?}",
            corrected.summary()
        );
        assert!(uncorrected.summary().p50_us < 1_100.0);
    }

    #[test]
    fn schedules_interleave_connections() {
        let t0 = Instant::now();
        let a = Schedule::new(t0, 1000.0, 0, 2);
        let b = Schedule::new(t0, 1000.0, 1, 2);
        assert_eq!(a.intended(0), t0);
        assert_eq!(b.intended(0), t0 + Duration::from_millis(1));
        assert_eq!(a.intended(1), t0 + Duration::from_millis(2));
        assert_eq!(b.intended(10), t0 + Duration::from_millis(21));
        let fractional = Schedule::new(t0, 3.0, 0, 1);
        assert_eq!(fractional.intended(3), t0 + Duration::from_secs(1));
    }
}
