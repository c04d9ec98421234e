//! A run's figures ([`RunResult`], the `--json` file format), the final table, and `compare`.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::bench::{
    cpu::ServerCpu,
    histo::{LatencySummary, PercentilePoint},
    runner::RunConfig,
};

/// Version of the JSON layout; readers refuse files of another version.
pub const FORMAT_VERSION: u32 = 1;

fn format_version() -> u32 {
    FORMAT_VERSION
}

/// Everything one run measured, with the configuration that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Layout version ([`FORMAT_VERSION`]).
    #[serde(default = "format_version")]
    pub format: u32,
    /// `ringbench` and its version.
    pub tool: String,
    /// Name shown in tables (the target kind, or e.g. `read-heavy ringcache` in a suite).
    pub label: String,
    /// `ringcache` or `redis`.
    pub target_kind: String,
    /// The full configuration.
    pub config: RunConfig,
    /// Wall-clock start, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Where the harness ran.
    pub harness: HarnessInfo,
    /// The load phase, when there was one.
    pub load: Option<LoadResult>,
    /// Measured time: from the end of the warmup to the last measured answer, s.
    pub elapsed_s: f64,
    /// Measured requests sent (successes, errors, and requests abandoned without an answer).
    pub requests: u64,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed (`errors_by_kind` adds up to this).
    pub errors: u64,
    /// Failures by kind, with one example message each.
    pub errors_by_kind: BTreeMap<String, ErrorTally>,
    /// Successful requests per second.
    pub throughput: f64,
    /// Keys per second carried by successful requests (mget/mset count each key).
    pub keys_per_s: f64,
    /// Keys read that existed.
    pub hits: u64,
    /// Keys read that did not.
    pub misses: u64,
    /// `hits / (hits + misses)`; `None` without reads.
    pub hit_ratio: Option<f64>,
    /// Latency of successful requests (open loop: from the intended send time).
    pub latency: LatencySummary,
    /// The latency distribution, for plots.
    pub percentiles: Vec<PercentilePoint>,
    /// Per operation kind.
    pub ops: BTreeMap<String, OpStats>,
    /// Open loop: how late requests left compared with their schedule.
    pub send_lag: Option<LatencySummary>,
    /// Per second since the start (warmup included).
    pub timeline: Vec<SecondSample>,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
    /// CPUs' worth of time other processes on the machine used during the run (suite only,
    /// Linux): anything well above 0 disturbed the figures.
    #[serde(default)]
    pub other_cpus: Option<f64>,
    /// CPU time of the server processes over the measured window (`--server-pid`, or the
    /// servers a suite started), per request and per key.
    #[serde(default)]
    pub server_cpu: Option<ServerCpu>,
}

/// Failures of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorTally {
    /// How many.
    pub count: u64,
    /// The first message seen.
    pub example: String,
}

/// Figures of one operation kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OpStats {
    /// Requests sent (measured).
    pub count: u64,
    /// Of which failed.
    pub errors: u64,
    /// Latency of the successful ones.
    pub latency: LatencySummary,
}

/// The load phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    /// Keys written.
    pub keys: u64,
    /// Time taken, s.
    pub elapsed_s: f64,
    /// Keys per second.
    pub keys_per_s: f64,
    /// Batches that failed.
    pub errors: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
}

/// One second of the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SecondSample {
    /// Seconds since the start of the run (warmup included).
    pub second: u64,
    /// Part of the second the run covered (1 except for the last).
    pub span_s: f64,
    /// Answers received in it.
    pub ops: u64,
    /// Of which errors.
    pub errors: u64,
    /// `ops / span_s`.
    pub ops_per_s: f64,
    /// Median latency of its successful answers, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Whether the second was part of the warmup.
    pub warmup: bool,
}

/// Where the harness ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HarnessInfo {
    /// Tokio worker threads.
    pub threads: usize,
    /// CPUs the harness may run on (`Cpus_allowed_list`), e.g. `1` when pinned.
    pub cpus_allowed: String,
    /// CPUs of the machine.
    pub cpus: usize,
}

impl HarnessInfo {
    /// This process's.
    pub fn current(threads: usize) -> Self {
        let cpus_allowed = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            threads,
            cpus_allowed,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl RunResult {
    /// Writes the result as pretty JSON.
    ///
    /// # Errors
    ///
    /// When the file cannot be written.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads a result written by [`RunResult::write_json`].
    ///
    /// # Errors
    ///
    /// When the file cannot be read, is not a ringbench result, or is of another layout version.
    pub fn read_json(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let result: RunResult = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a ringbench result file", path.display()))?;
        if result.format != FORMAT_VERSION {
            anyhow::bail!(
                "{} has result format {}, this ringbench reads {FORMAT_VERSION}",
                path.display(),
                result.format
            );
        }
        Ok(result)
    }

    /// This result with the servers' CPU time of its measured window.
    #[must_use]
    pub fn with_server_cpu(mut self, server_cpu: Option<ServerCpu>) -> Self {
        self.server_cpu = server_cpu;
        self
    }

    /// A one-line description of the workload and load model.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let w = &c.workload;
        let model = match c.rate {
            Some(rate) => format!(
                "open loop at {} req/s, {} connections",
                fmt_count(rate),
                c.connections
            ),
            None => format!(
                "closed loop, {} connections x {} in flight",
                c.connections, c.concurrency
            ),
        };
        let ttl = w
            .ttl_ms
            .map_or(String::new(), |ms| format!(", ttl {ms} ms"));
        let batch = if w.mix.uses_batches() {
            format!(", batch {}", w.batch)
        } else {
            String::new()
        };
        let transport = match (&c.target, c.client.transport) {
            (
                crate::bench::target::TargetUrl::Ringcache { .. },
                crate::bench::target::Transport::Unary,
            ) => " (unary)",
            _ => "",
        };
        format!(
            "{}{transport} | {} | {} keys {} | values {} B{ttl}{batch} | {model}",
            c.target,
            w.mix,
            fmt_count(w.keys as f64),
            w.distribution,
            w.value_size
        )
    }

    /// The final report: configuration, totals and an aligned latency table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.describe());
        if let Some(load) = &self.load {
            let _ = writeln!(
                out,
                "load: {} keys in {:.2} s ({} keys/s){}",
                fmt_count(load.keys as f64),
                load.elapsed_s,
                fmt_count(load.keys_per_s),
                if load.errors > 0 {
                    format!(
                        ", {} failed batches: {}",
                        load.errors,
                        load.first_error.as_deref().unwrap_or("")
                    )
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(
            out,
            "{} requests in {:.2} s: {} ok/s ({} keys/s), {} errors{}{}",
            self.requests,
            self.elapsed_s,
            fmt_count(self.throughput),
            fmt_count(self.keys_per_s),
            self.errors,
            self.hit_ratio
                .map_or(String::new(), |r| format!(", hit ratio {:.1}%", r * 100.0)),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        if let Some(cpu) = &self.server_cpu {
            let _ = writeln!(
                out,
                "server CPU: {:.2} CPU-s in {:.2} s ({:.2} CPUs, pids {:?}): {} per request, {} per key",
                cpu.cpu_s,
                cpu.window_s,
                cpu.cpus(),
                cpu.pids,
                fmt_us(cpu.us_per_request),
                fmt_us(cpu.us_per_key)
            );
        }
        let mut rows: Vec<(String, u64, u64, LatencySummary)> =
            vec![("all".to_owned(), self.requests, self.errors, self.latency)];
        if self.ops.len() > 1 {
            for (name, stats) in &self.ops {
                rows.push((name.clone(), stats.count, stats.errors, stats.latency));
            }
        }
        if let Some(lag) = self.send_lag {
            rows.push(("send lag".to_owned(), lag.count, 0, lag));
        }
        let header = [
            "op", "requests", "errors", "p50", "p90", "p99", "p99.9", "max", "mean",
        ];
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|(name, count, errors, l)| {
                vec![
                    name.clone(),
                    count.to_string(),
                    errors.to_string(),
                    fmt_us(l.p50_us),
                    fmt_us(l.p90_us),
                    fmt_us(l.p99_us),
                    fmt_us(l.p999_us),
                    fmt_us(l.max_us),
                    fmt_us(l.mean_us),
                ]
            })
            .collect();
        out.push_str(&aligned(&header, &body));
        for (kind, tally) in &self.errors_by_kind {
            let _ = writeln!(
                out,
                "error {kind}: {} (e.g. {})",
                tally.count, tally.example
            );
        }
        if self.latency.clamped > 0 {
            let _ = writeln!(
                out,
                "note: {} latencies were beyond 60 s and recorded as 60 s",
                self.latency.clamped
            );
        }
        out
    }
}

/// A table with left-aligned first column and right-aligned others.
pub fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i == 0 {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str("  ");
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// A latency in µs, with a unit that keeps 3–4 significant digits: `87.3 µs`, `1.24 ms`, `2.10 s`.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// A count or rate with thousands separators, rounded: `152,340`.
pub fn fmt_count(value: f64) -> String {
    let rounded = value.round().max(0.0) as u64;
    let digits = rounded.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `b / a`, formatted as `1.23x`, or `n/a`.
pub fn fmt_ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b.is_finite() {
        format!("{:.2}x", b / a)
    } else {
        "n/a".to_owned()
    }
}

/// `ringbench compare A B`: the two results side by side, with the ratio B/A of each figure,
/// and the configuration settings in which they differ.
pub fn compare(a: &RunResult, b: &RunResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "A: {}", a.describe());
    let _ = writeln!(out, "B: {}", b.describe());
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |name: &str, x: f64, y: f64, fmt: &dyn Fn(f64) -> String| {
        rows.push(vec![name.to_owned(), fmt(x), fmt(y), fmt_ratio(x, y)]);
    };
    let count = |v: f64| fmt_count(v);
    row("throughput (ok/s)", a.throughput, b.throughput, &count);
    row("keys/s", a.keys_per_s, b.keys_per_s, &count);
    row("requests", a.requests as f64, b.requests as f64, &count);
    row("errors", a.errors as f64, b.errors as f64, &count);
    let latency = |v: f64| fmt_us(v);
    row("p50", a.latency.p50_us, b.latency.p50_us, &latency);
    row("p90", a.latency.p90_us, b.latency.p90_us, &latency);
    row("p99", a.latency.p99_us, b.latency.p99_us, &latency);
    row("p99.9", a.latency.p999_us, b.latency.p999_us, &latency);
    row("max", a.latency.max_us, b.latency.max_us, &latency);
    row("mean", a.latency.mean_us, b.latency.mean_us, &latency);
    if let (Some(x), Some(y)) = (&a.server_cpu, &b.server_cpu) {
        row(
            "server CPU / request",
            x.us_per_request,
            y.us_per_request,
            &latency,
        );
        row("server CPU / key", x.us_per_key, y.us_per_key, &latency);
    }
    if let (Some(x), Some(y)) = (a.hit_ratio, b.hit_ratio) {
        row("hit ratio (%)", x * 100.0, y * 100.0, &|v| {
            format!("{v:.1}")
        });
    }
    let header = [
        "",
        &format!("A ({})", a.label),
        &format!("B ({})", b.label),
        "B/A",
    ];
    out.push_str(&aligned(&header, &rows));
    let differences = config_differences(a, b);
    if differences.is_empty() {
        out.push_str("configurations: identical apart from the target\n");
    } else {
        out.push_str("configurations differ:\n");
        for (key, x, y) in differences {
            let _ = writeln!(out, "  {key}: A {x}, B {y}");
        }
    }
    out
}

/// Settings (flattened JSON paths) whose values differ between the two configurations, the
/// target aside.
pub fn config_differences(a: &RunResult, b: &RunResult) -> Vec<(String, String, String)> {
    let mut left = BTreeMap::new();
    let mut right = BTreeMap::new();
    flatten(
        "",
        &serde_json::to_value(&a.config).unwrap_or_default(),
        &mut left,
    );
    flatten(
        "",
        &serde_json::to_value(&b.config).unwrap_or_default(),
        &mut right,
    );
    let keys: std::collections::BTreeSet<&String> = left.keys().chain(right.keys()).collect();
    keys.into_iter()
        .filter(|k| k.as_str() != "target")
        .filter_map(|k| {
            let x = left.get(k).cloned().unwrap_or_else(|| "-".to_owned());
            let y = right.get(k).cloned().unwrap_or_else(|| "-".to_owned());
            (x != y).then(|| (k.clone(), x, y))
        })
        .collect()
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::{histo::LatencyHistogram, workload::WorkloadSpec};
    use std::time::Duration;

    /// A plausible result with latencies `base_us`..`10 * base_us` and `throughput`.
    pub(crate) fn sample(label: &str, url: &str, throughput: f64, base_us: u64) -> RunResult {
        let mut hist = LatencyHistogram::new();
        for i in 0..1000 {
            hist.record(Duration::from_micros(base_us + i * base_us / 100));
        }
        let workload = WorkloadSpec {
            mix: "get=95,set=5".parse().unwrap(),
            keys: 100_000,
            distribution: "zipfian:0.99".parse().unwrap(),
            value_size: "100".parse().unwrap(),
            ttl_ms: None,
            batch: 10,
            seed: 1,
        };
        let config = RunConfig::new(url.parse().unwrap(), workload, Duration::from_secs(10));
        RunResult {
            format: FORMAT_VERSION,
            tool: "ringbench test".into(),
            label: label.into(),
            target_kind: label.into(),
            config,
            started_unix_ms: 1,
            harness: HarnessInfo {
                threads: 1,
                cpus_allowed: "1".into(),
                cpus: 2,
            },
            load: Some(LoadResult {
                keys: 100_000,
                elapsed_s: 1.0,
                keys_per_s: 100_000.0,
                errors: 0,
                first_error: None,
            }),
            elapsed_s: 10.0,
            requests: (throughput * 10.0) as u64,
            ok: (throughput * 10.0) as u64,
            errors: 0,
            errors_by_kind: BTreeMap::new(),
            throughput,
            keys_per_s: throughput,
            hits: 900,
            misses: 100,
            hit_ratio: Some(0.9),
            latency: hist.summary(),
            percentiles: hist.curve(),
            ops: BTreeMap::new(),
            send_lag: None,
            timeline: (0..11)
                .map(|second| SecondSample {
                    second,
                    span_s: 1.0,
                    ops: throughput as u64,
                    errors: 0,
                    ops_per_s: throughput * (1.0 + 0.01 * second as f64),
                    p50_us: base_us as f64 * 5.0,
                    p99_us: base_us as f64 * 9.9,
                    warmup: second == 0,
                })
                .collect(),
            interrupted: false,
            other_cpus: None,
            server_cpu: None,
        }
    }

    #[test]
    fn json_round_trip_keeps_every_figure() {
        let dir = std::env::temp_dir().join(format!("ringbench-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.json");
        let mut result = sample("ringcache", "ringcache://127.0.0.1:7379", 50_000.0, 100);
        result.errors_by_kind.insert(
            "timeout".into(),
            ErrorTally {
                count: 2,
                example: "request timed out".into(),
            },
        );
        result.config.rate = Some(12_345.5);
        result.config.workload.ttl_ms = Some(60_000);
        result.write_json(&path).unwrap();
        let back = RunResult::read_json(&path).unwrap();
        assert_eq!(back, result);
        // The file carries the configuration in readable form.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"mix\": \"get=95,set=5\""), "{text}");
        assert!(
            text.contains("\"distribution\": \"zipfian:0.99\""),
            "{text}"
        );
        std::fs::write(&path, "{\"hello\": 1}").unwrap();
        let error = RunResult::read_json(&path).unwrap_err();
        assert!(
            format!("{error:#}").contains("not a ringbench result"),
            "{error:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compare_prints_both_sides_and_ratios() {
        let a = sample("ringcache", "ringcache://127.0.0.1:7379", 40_000.0, 200);
        let mut b = sample("redis", "redis://127.0.0.1:6379", 80_000.0, 100);
        b.config.connections = 20;
        let text = compare(&a, &b);
        assert!(
            text.contains("A (ringcache)") && text.contains("B (redis)"),
            "{text}"
        );
        let throughput = text.lines().find(|l| l.starts_with("throughput")).unwrap();
        assert!(
            throughput.contains("40,000") && throughput.contains("80,000"),
            "{throughput}"
        );
        assert!(throughput.trim_end().ends_with("2.00x"), "{throughput}");
        let p50 = text.lines().find(|l| l.starts_with("p50")).unwrap();
        assert!(p50.trim_end().ends_with("0.50x"), "{p50}");
        assert!(text.contains("connections: A 10, B 20"), "{text}");
        assert!(!text.contains("  target:"), "{text}");
    }

    #[test]
    fn the_table_names_every_figure() {
        let mut result = sample("ringcache", "ringcache://127.0.0.1:7379", 50_000.0, 100);
        result.errors = 3;
        result.errors_by_kind.insert(
            "unavailable".into(),
            ErrorTally {
                count: 3,
                example: "unavailable: node down".into(),
            },
        );
        let table = result.table();
        for needle in [
            "p50",
            "p99.9",
            "max",
            "hit ratio 90.0%",
            "error unavailable: 3",
            "50,000 ok/s",
        ] {
            assert!(table.contains(needle), "{needle} missing from\n{table}");
        }
        // Columns line up: every row of the latency table has the same width.
        let widths: Vec<usize> = table
            .lines()
            .filter(|l| l.starts_with("op ") || l.starts_with("all "))
            .map(|l| l.chars().count())
            .collect();
        assert_eq!(widths.len(), 2);
        assert_eq!(widths[0], widths[1], "{table}");
    }

    #[test]
    fn number_formats() {
        assert_eq!(fmt_count(152_340.4), "152,340");
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_count(1000.0), "1,000");
        assert_eq!(fmt_us(87.34), "87.3 µs");
        assert_eq!(fmt_us(1240.0), "1.24 ms");
        assert_eq!(fmt_us(2_100_000.0), "2.10 s");
        assert_eq!(fmt_ratio(2.0, 1.0), "0.50x");
        assert_eq!(fmt_ratio(0.0, 1.0), "n/a");
    }
}
