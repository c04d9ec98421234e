//! CPU time from `/proc` (Linux): what other processes took from a run (the suite's
//! disturbance check) and what the server processes spent per request in the measured window
//! (the figure that decides between two systems when the harness shares the machine).

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on every Linux platform).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time used by the whole machine and by our own processes (the harness and the servers),
/// from `/proc`: their difference over a run is what other processes took from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTimes {
    /// Busy ticks of all CPUs (user, nice, system, irq, softirq, steal).
    pub machine: u64,
    /// Ticks of the harness and the servers (user + system).
    pub ours: u64,
    /// When sampled.
    pub at: Instant,
}

/// Busy ticks of all CPUs from the text of `/proc/stat`.
pub fn machine_busy_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(get(0) + get(1) + get(2) + get(5) + get(6) + get(7))
}

/// User + system ticks of one process from the text of `/proc/PID/stat`.
pub fn process_ticks(proc_pid_stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &proc_pid_stat[proc_pid_stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) are 11 and 12 after the command.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// User + system ticks of the process `pid` (a number, or `self`); `None` when it cannot be read.
fn ticks_of(pid: impl std::fmt::Display) -> Option<u64> {
    process_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

impl CpuTimes {
    /// Samples the machine and this process plus `pids` (one that is gone counts nothing);
    /// `None` where `/proc` is missing.
    pub fn sample(pids: &[u32]) -> Option<Self> {
        let machine = machine_busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let ours = ticks_of("self")?
            + pids
                .iter()
                .map(|&pid| ticks_of(pid).unwrap_or(0))
                .sum::<u64>();
        Some(Self {
            machine,
            ours,
            at: Instant::now(),
        })
    }

    /// CPUs' worth of time (1.0 = one CPU all the time) that other processes used since
    /// `earlier`.
    pub fn other_cpus_since(&self, earlier: &CpuTimes) -> f64 {
        let seconds = self.at.saturating_duration_since(earlier.at).as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        let machine = self.machine.saturating_sub(earlier.machine);
        let ours = self.ours.saturating_sub(earlier.ours);
        machine.saturating_sub(ours) as f64 / TICKS_PER_SECOND / seconds
    }
}

/// CPU ticks (user + system) of a set of processes, with the time of the sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessCpu {
    /// Ticks of all the processes together.
    pub ticks: u64,
    /// When sampled.
    pub at: Instant,
}

impl ProcessCpu {
    /// Samples `pids`; `None` when any of them cannot be read (gone, or no `/proc`): a figure
    /// that silently left a process out would be wrong.
    pub fn sample(pids: &[u32]) -> Option<Self> {
        Some(Self {
            ticks: pids.iter().map(|&pid| ticks_of(pid)).sum::<Option<u64>>()?,
            at: Instant::now(),
        })
    }
}

/// What the server processes spent over a run's measured window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerCpu {
    /// The processes measured.
    pub pids: Vec<u32>,
    /// CPU-seconds (user + system) they used in the window.
    pub cpu_s: f64,
    /// Wall-clock length of the window, s.
    pub window_s: f64,
    /// µs of server CPU per request answered (successes and errors).
    pub us_per_request: f64,
    /// µs of server CPU per key carried by successful requests (an mget of 10 keys counts 10).
    pub us_per_key: f64,
}

impl ServerCpu {
    /// The cost between two samples of `pids`, spread over `requests` answered and `keys`
    /// carried; `None` for an empty window or no requests.
    pub fn between(
        pids: &[u32],
        before: ProcessCpu,
        after: ProcessCpu,
        requests: u64,
        keys: u64,
    ) -> Option<Self> {
        let window_s = after.at.saturating_duration_since(before.at).as_secs_f64();
        if window_s <= 0.0 || requests == 0 {
            return None;
        }
        let cpu_s = after.ticks.saturating_sub(before.ticks) as f64 / TICKS_PER_SECOND;
        Some(Self {
            pids: pids.to_vec(),
            cpu_s,
            window_s,
            us_per_request: cpu_s * 1e6 / requests as f64,
            us_per_key: cpu_s * 1e6 / keys.max(1) as f64,
        })
    }

    /// CPUs' worth of time the servers used (1.0 = one CPU busy all the window).
    pub fn cpus(&self) -> f64 {
        self.cpu_s / self.window_s
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;

    #[test]
    fn cpu_times_parse_from_proc_text() {
        let stat = "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 50 2 25 500 10 1 1 3 0 0\n";
        assert_eq!(machine_busy_ticks(stat), Some(100 + 5 + 50 + 3 + 2 + 7));
        let pid_stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 40 0 0 20 0 3 0";
        assert_eq!(process_ticks(pid_stat), Some(290));
        assert_eq!(process_ticks("garbage"), None);
        let now = Instant::now();
        let earlier = CpuTimes {
            machine: 1000,
            ours: 400,
            at: now,
        };
        let later = CpuTimes {
            machine: 1300,
            ours: 550,
            at: now + Duration::from_secs(2),
        };
        // 300 busy ticks, 150 ours: 150 ticks = 1.5 CPU-seconds over 2 s.
        assert!((later.other_cpus_since(&earlier) - 0.75).abs() < 1e-9);
        // On Linux the live sample works.
        if Path::new("/proc/stat").exists() {
            let sample = CpuTimes::sample(&[std::process::id()]).unwrap();
            assert!(sample.machine >= sample.ours / 2);
        }
    }

    #[test]
    fn server_cpu_is_spread_over_requests_and_keys() {
        let now = Instant::now();
        let before = ProcessCpu {
            ticks: 1_000,
            at: now,
        };
        let after = ProcessCpu {
            ticks: 1_250,
            at: now + Duration::from_secs(5),
        };
        // 250 ticks = 2.5 CPU-seconds over 5 s; 100k requests of 10 keys each.
        let cpu = ServerCpu::between(&[7], before, after, 100_000, 1_000_000).unwrap();
        assert!((cpu.cpu_s - 2.5).abs() < 1e-9);
        assert!((cpu.cpus() - 0.5).abs() < 1e-9);
        assert!((cpu.us_per_request - 25.0).abs() < 1e-9);
        assert!((cpu.us_per_key - 2.5).abs() < 1e-9);
        assert_eq!(cpu.pids, vec![7]);
        assert_eq!(ServerCpu::between(&[7], before, after, 0, 0), None);
        assert_eq!(ServerCpu::between(&[7], after, before, 10, 10), None);
    }

    #[test]
    fn a_process_that_cannot_be_read_gives_no_sample() {
        assert!(ProcessCpu::sample(&[u32::MAX]).is_none());
        if Path::new("/proc/self/stat").exists() {
            assert!(ProcessCpu::sample(&[std::process::id()]).is_some());
        }
    }
}
