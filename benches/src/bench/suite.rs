//! `ringbench suite`: a fixed set of workloads against ringcache and Redis in one run, the two
//! alternating, both servers started here under the same CPU pinning; and the server management
//! it needs (finding binaries, free loopback ports, readiness, pinning, cleanup).
//!
//! Fairness rules: both servers run on CPU 0 and the harness on CPU 1 (`taskset`); each
//! workload's repetitions alternate ringcache, Redis, ringcache, Redis…, so drift (thermal,
//! neighbours on the VM) hits both; the figures are medians; the open-loop runs offer both
//! systems the same rate, half the lower of their two measured peaks, so their p99s compare at
//! equal load.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use ringcache::ctl::Security;
use serde::{Deserialize, Serialize};

use crate::bench::{
    cpu::CpuTimes,
    report::{HarnessInfo, RunResult, fmt_count, fmt_ratio, fmt_us},
    runner::{RunConfig, run_secured},
    target::{TargetUrl, Transport},
    workload::{Preset, WorkloadSpec, preset},
};

/// The message when no `redis-server` can be found.
pub const REDIS_MISSING: &str = "redis-server not found: apt-get install redis-server";

/// How long a started server has to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(15);

/// Whether `path` is a file with an execute bit.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `name` in the directories of `path_var` (a `PATH` value).
pub fn find_in_path(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    let path_var = path_var?;
    std::env::split_paths(path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// The `redis-server` to start: `explicit` when given, else the first on `path_var`.
///
/// # Errors
///
/// [`REDIS_MISSING`] (with the path tried, for `explicit`).
pub fn find_redis_server(
    explicit: Option<&Path>,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, String> {
    match explicit {
        Some(path) if is_executable(path) => Ok(path.to_owned()),
        Some(path) => Err(format!(
            "{REDIS_MISSING} (no executable at {})",
            path.display()
        )),
        None => find_in_path("redis-server", path_var).ok_or_else(|| REDIS_MISSING.to_owned()),
    }
}

/// The `ringcached` to start: `explicit` when given, else the one beside `exe` (ringbench's own
/// executable; for test binaries in `target/*/deps`, the directory above too).
///
/// # Errors
///
/// A message saying where it looked and how to build it.
pub fn find_ringcached(explicit: Option<&Path>, exe: &Path) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if is_executable(path) {
            Ok(path.to_owned())
        } else {
            Err(format!("no ringcached executable at {}", path.display()))
        };
    }
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [Some(dir), dir.parent()];
    candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("ringcached"))
        .find(|c| is_executable(c))
        .ok_or_else(|| {
            format!(
                "ringcached not found next to ringbench (looked in {}): run `cargo build --release -p ringcache-server -p ringcache-bench` first, or pass --ringcached PATH",
                dir.display()
            )
        })
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read, released). A child
/// process cannot be handed a port-0 socket, so this is the usual small race; starts retry.
///
/// # Errors
///
/// When no socket can be bound.
pub fn free_tcp_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
///
/// # Errors
///
/// When no socket can be bound.
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Pins this whole process (every thread) to `cpu` with `taskset -a -p -c CPU PID`. Call it
/// before the runtime starts its threads, so they inherit the mask anyway.
///
/// # Errors
///
/// When `taskset` is missing or refuses.
pub fn pin_self(taskset: &Path, cpu: usize) -> Result<(), String> {
    let output = Command::new(taskset)
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", taskset.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset could not pin ringbench to CPU {cpu}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// How servers are started: under `taskset -c CPU`, or as they are.
#[derive(Debug, Clone, Default)]
pub struct Pinning {
    /// `taskset` and the CPU for servers; `None`: unpinned.
    pub server: Option<(PathBuf, usize)>,
}

impl Pinning {
    /// Servers unpinned.
    pub fn none() -> Self {
        Self::default()
    }

    fn command(&self, program: &Path) -> Command {
        match &self.server {
            Some((taskset, cpu)) => {
                let mut command = Command::new(taskset);
                command.arg("-c").arg(cpu.to_string()).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// For reports.
    pub fn describe(&self) -> String {
        match &self.server {
            Some((_, cpu)) => format!("CPU {cpu}"),
            None => "unpinned".to_owned(),
        }
    }
}

/// A directory that is removed when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// A new empty directory under the system's temporary directory.
    ///
    /// # Errors
    ///
    /// When it cannot be created.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("ringbench-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A server process started by the harness; killed (and reaped) when dropped, so an error or a
/// panic anywhere never leaves it running.
#[derive(Debug)]
pub struct ManagedServer {
    name: &'static str,
    child: Child,
    /// Where clients reach it.
    pub addr: SocketAddr,
    /// ringcached: where its RESP (Redis protocol) port listens.
    pub resp_addr: Option<SocketAddr>,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// The program's version line, when known.
    pub version: String,
}

impl ManagedServer {
    /// The URL of the matching [`TargetUrl`].
    pub fn url(&self) -> String {
        match self.name {
            "redis-server" => format!("redis://{}", self.addr),
            _ => format!("ringcache://{}", self.addr),
        }
    }

    /// ringcached: the `redis://` URL of its RESP port.
    pub fn resp_url(&self) -> Option<String> {
        self.resp_addr.map(|addr| format!("redis://{addr}"))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it now and waits for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ManagedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        format!("(log {} is empty)", path.display())
    } else {
        format!("last log lines: {tail}")
    }
}

/// Polls `probe` every 20 ms until it succeeds, the child exits, or `deadline` passes.
/// Spawns `command` (the server `name`, from `binary`, serving at `addr`, logging to `log`) and
/// waits until `probe` answers, at most [`READY_DEADLINE`].
fn launch(
    name: &'static str,
    mut command: Command,
    binary: &Path,
    addr: SocketAddr,
    log: PathBuf,
    probe: impl FnMut() -> bool,
) -> anyhow::Result<ManagedServer> {
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let mut server = ManagedServer {
        name,
        child,
        addr,
        resp_addr: None,
        log,
        version: version_line(binary),
    };
    wait_ready(&mut server.child, name, &server.log, READY_DEADLINE, probe)?;
    Ok(server)
}

fn wait_ready(
    child: &mut Child,
    name: &str,
    log: &Path,
    deadline: Duration,
    mut probe: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().context("cannot check the child process")? {
            bail!(
                "{name} exited ({status}) before it was ready; {}",
                log_tail(log)
            );
        }
        if probe() {
            return Ok(());
        }
        if Instant::now() >= give_up {
            bail!(
                "{name} was not ready within {deadline:?}; {}",
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `request` to `addr` and returns what came back before the peer closed or 500 ms passed.
fn exchange(addr: SocketAddr, request: &[u8], enough: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream.write_all(request).ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !enough(&answer) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    Some(answer)
}

/// Whether a Redis server answers `PING` at `addr`.
pub fn redis_ping(addr: SocketAddr) -> bool {
    exchange(addr, b"*1\r\n$4\r\nPING\r\n", |a| a.ends_with(b"\r\n"))
        .is_some_and(|answer| answer.starts_with(b"+PONG"))
}

/// Whether a ringcached HTTP endpoint at `addr` says the node is ready.
pub fn ringcached_ready(addr: SocketAddr) -> bool {
    let request =
        format!("GET /health/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes(), |a| a.len() >= 12)
        .is_some_and(|answer| answer.starts_with(b"HTTP/1.1 200"))
}

fn version_line(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Tries `start` (which picks fresh ports each time) up to three times: another process may take
/// a port between our probe and the server's bind.
fn with_port_retries(
    mut start: impl FnMut() -> anyhow::Result<ManagedServer>,
) -> anyhow::Result<ManagedServer> {
    let mut last = None;
    for _ in 0..3 {
        match start() {
            Ok(server) => return Ok(server),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("server did not start")))
}

/// Starts `redis-server` on a free loopback port without persistence, waits until it answers.
///
/// # Errors
///
/// When it cannot be started or is not ready within [`READY_DEADLINE`].
pub fn start_redis(binary: &Path, pinning: &Pinning, dir: &Path) -> anyhow::Result<ManagedServer> {
    with_port_retries(|| {
        let port = free_tcp_port().context("no free loopback port")?;
        let log = dir.join(format!("redis-{port}.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = pinning.command(binary);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .args(["--logfile", ""])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        launch("redis-server", command, binary, addr, log, || {
            redis_ping(addr)
        })
    })
}

/// Starts `ringcached` alone on free loopback ports (gRPC, HTTP, gossip, and RESP when `resp`)
/// with a fresh configuration: no config file, no `RINGCACHE_*` variables from this environment,
/// one worker thread (the server gets one CPU), 8 GiB of memory. Waits for `/health/ready` (and
/// a `PING` on the RESP port).
///
/// # Errors
///
/// When it cannot be started or is not ready within [`READY_DEADLINE`].
pub fn start_ringcached(
    binary: &Path,
    pinning: &Pinning,
    dir: &Path,
    resp: bool,
) -> anyhow::Result<ManagedServer> {
    with_port_retries(|| {
        let grpc = free_tcp_port().context("no free loopback port")?;
        let resp_port = if resp {
            free_tcp_port().context("no free loopback port")?
        } else {
            0
        };
        let http = free_tcp_port().context("no free loopback port")?;
        let gossip = free_udp_port().context("no free loopback port")?;
        let log = dir.join(format!("ringcached-{grpc}.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = pinning.command(binary);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RINGCACHE_") {
                command.env_remove(key);
            }
        }
        command
            .args(["--bind", "127.0.0.1", "--node-id", "ringbench"])
            .args(["--grpc-port", &grpc.to_string()])
            .args(["--http-port", &http.to_string()])
            .args(["--gossip-port", &gossip.to_string()])
            .args(["--cluster-port", "0", "--resp-port", &resp_port.to_string()])
            .args(["--workers", "1", "--max-memory", "8GiB"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let http_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, http));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, grpc));
        let resp_addr =
            (resp_port != 0).then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, resp_port)));
        let mut server = launch("ringcached", command, binary, addr, log, || {
            ringcached_ready(http_addr) && resp_addr.is_none_or(redis_ping)
        })?;
        server.resp_addr = resp_addr;
        Ok(server)
    })
}

/// Extra attempts of a run disturbed by other processes (`--max-other-cpus`).
const RERUNS: usize = 3;

/// One workload of the suite.
#[derive(Debug, Clone, Copy)]
pub struct SuiteWorkload {
    /// Name in tables.
    pub name: &'static str,
    /// The preset it runs.
    pub preset: &'static str,
    /// Open loop at half the peak of the closed-loop workload of this name.
    pub open_loop_of: Option<&'static str>,
}

/// The suite, in the order it runs. The closed-loop ones come first: the open-loop rates are
/// derived from them.
pub const SUITE: &[SuiteWorkload] = &[
    SuiteWorkload {
        name: "read-heavy",
        preset: "read-heavy",
        open_loop_of: None,
    },
    SuiteWorkload {
        name: "multi-key",
        preset: "multi-key",
        open_loop_of: None,
    },
    SuiteWorkload {
        name: "write-heavy",
        preset: "write-heavy",
        open_loop_of: None,
    },
    SuiteWorkload {
        name: "read-heavy @50%",
        preset: "read-heavy",
        open_loop_of: Some("read-heavy"),
    },
    SuiteWorkload {
        name: "multi-key @50%",
        preset: "multi-key",
        open_loop_of: Some("multi-key"),
    },
    SuiteWorkload {
        name: "write-heavy @50%",
        preset: "write-heavy",
        open_loop_of: Some("write-heavy"),
    },
];

/// Settings of a suite run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteSettings {
    /// Measured time per run, ms.
    pub duration_ms: u64,
    /// Warmup per run, ms.
    pub warmup_ms: u64,
    /// Runs per workload and system.
    pub repeat: usize,
    /// Bench connections per run.
    pub connections: usize,
    /// Requests in flight per connection (closed loop).
    pub concurrency: usize,
    /// Seed of every run.
    pub seed: u64,
    /// How the ringcache client carries requests.
    #[serde(default)]
    pub transport: Transport,
    /// Rerun (up to 3 times) a run during which other processes used more than this many CPUs.
    #[serde(default)]
    pub max_other_cpus: Option<f64>,
}

impl Default for SuiteSettings {
    fn default() -> Self {
        Self {
            duration_ms: 10_000,
            warmup_ms: 1_000,
            repeat: 3,
            connections: 10,
            concurrency: 5,
            seed: 1,
            transport: Transport::Pipelined,
            max_other_cpus: None,
        }
    }
}

/// Medians of one workload on one system.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Medians {
    /// Successful requests per second.
    pub throughput: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Errors over all runs.
    pub errors: u64,
    /// Runs.
    pub runs: usize,
    /// Open loop: how late the harness sent requests (p99 of the send lag), µs. A lag near the
    /// latencies means the harness, not the server, was the bottleneck.
    #[serde(default)]
    pub send_lag_p99_us: Option<f64>,
    /// µs of server CPU per request over the measured windows (`None`: the server is not a
    /// local process).
    #[serde(default)]
    pub server_us_per_request: Option<f64>,
    /// µs of server CPU per key carried (mget/mset count each key).
    #[serde(default)]
    pub server_us_per_key: Option<f64>,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

impl Medians {
    /// Medians of `runs` (each figure on its own).
    pub fn of(runs: &[&RunResult]) -> Option<Self> {
        if runs.is_empty() {
            return None;
        }
        let pick =
            |f: &dyn Fn(&RunResult) -> f64| median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        Some(Self {
            throughput: pick(&|r| r.throughput),
            p50_us: pick(&|r| r.latency.p50_us),
            p99_us: pick(&|r| r.latency.p99_us),
            p999_us: pick(&|r| r.latency.p999_us),
            errors: runs.iter().map(|r| r.errors).sum(),
            runs: runs.len(),
            send_lag_p99_us: runs
                .iter()
                .all(|r| r.send_lag.is_some())
                .then(|| pick(&|r| r.send_lag.map_or(0.0, |l| l.p99_us))),
            server_us_per_request: runs
                .iter()
                .all(|r| r.server_cpu.is_some())
                .then(|| pick(&|r| r.server_cpu.as_ref().map_or(0.0, |c| c.us_per_request))),
            server_us_per_key: runs
                .iter()
                .all(|r| r.server_cpu.is_some())
                .then(|| pick(&|r| r.server_cpu.as_ref().map_or(0.0, |c| c.us_per_key))),
        })
    }
}

/// One line of the suite's table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteRow {
    /// Workload name.
    pub workload: String,
    /// What it does.
    pub about: String,
    /// Open loop: the rate offered to both systems.
    pub rate: Option<f64>,
    /// ringcache's medians (gRPC, the `ringcache` client crate).
    pub ringcache: Option<Medians>,
    /// ringcache's medians over its RESP port (the `redis` crate; `None`: not measured).
    #[serde(default)]
    pub ringcache_resp: Option<Medians>,
    /// Redis's medians (`None`: no Redis).
    pub redis: Option<Medians>,
}

/// Everything a suite measured: the `--json` file of `ringbench suite`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteResult {
    /// `ringbench` and its version.
    pub tool: String,
    /// Wall-clock start, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Settings.
    pub settings: SuiteSettings,
    /// Where the harness ran.
    pub harness: HarnessInfo,
    /// Where the servers ran (`CPU 0`, `unpinned`).
    pub server_pinning: String,
    /// ringcached's version line.
    pub ringcache_version: String,
    /// Redis's version line, or why there was no Redis.
    pub redis_version: String,
    /// The command that ran the suite.
    pub command: String,
    /// One row per workload.
    pub rows: Vec<SuiteRow>,
    /// Every run, in the order they ran.
    pub runs: Vec<RunResult>,
}

/// The systems a suite measures.
#[derive(Debug, Clone)]
pub struct SuiteTargets {
    /// The ringcache node.
    pub ringcache: TargetUrl,
    /// The same node's RESP port (`redis://`), if it is measured too.
    pub ringcache_resp: Option<TargetUrl>,
    /// The Redis server, if there is one.
    pub redis: Option<TargetUrl>,
    /// Process ids of the servers when the suite started them all itself: then the CPU time of
    /// everything else on the machine is measured per run ([`RunResult::other_cpus`]).
    pub server_pids: Option<Vec<u32>>,
    /// The ringcache node's process, when local: its CPU time per request is reported (for the
    /// gRPC and the RESP column alike).
    pub ringcache_pid: Option<u32>,
    /// The Redis server's process, when local.
    pub redis_pid: Option<u32>,
    /// TLS settings and credentials for the ringcache node (an external one, `--ringcache`).
    pub ringcache_security: Security,
}

fn workload_of(preset: &Preset, seed: u64) -> anyhow::Result<WorkloadSpec> {
    Ok(WorkloadSpec {
        mix: preset.mix.parse().map_err(anyhow::Error::msg)?,
        keys: preset.keys,
        distribution: preset.distribution.parse().map_err(anyhow::Error::msg)?,
        value_size: preset.value_size.parse().map_err(anyhow::Error::msg)?,
        ttl_ms: None,
        batch: preset.batch,
        seed,
    })
}

/// The suite's columns: which system a run measured (a `redis://` URL may be Redis or
/// ringcache's RESP port, so the URL's kind does not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    /// ringcache through its gRPC client.
    Ringcache,
    /// ringcache's RESP port through the `redis` crate.
    RingcacheResp,
    /// Redis.
    Redis,
}

impl System {
    /// In run labels and progress lines.
    fn name(self) -> &'static str {
        match self {
            System::Ringcache => "ringcache",
            System::RingcacheResp => "ringcache-resp",
            System::Redis => "redis",
        }
    }
}

/// Runs the suite against `targets`, printing a line per run on stderr.
///
/// # Errors
///
/// When a run cannot be made (a target unreachable); request errors are counted, not fatal.
pub async fn run_suite(
    targets: &SuiteTargets,
    settings: &SuiteSettings,
    progress: bool,
    mut header: SuiteResult,
) -> anyhow::Result<SuiteResult> {
    let mut systems = vec![(System::Ringcache, targets.ringcache.clone())];
    systems.extend(
        targets
            .ringcache_resp
            .clone()
            .map(|url| (System::RingcacheResp, url)),
    );
    systems.extend(targets.redis.clone().map(|url| (System::Redis, url)));
    let total_runs = SUITE.len() * settings.repeat * systems.len();
    let mut runs: Vec<(usize, System, RunResult)> = Vec::new();
    let mut loaded = vec![false; systems.len()];
    let mut rows = Vec::new();

    for (w, workload) in SUITE.iter().enumerate() {
        let preset = preset(workload.preset).map_err(anyhow::Error::msg)?;
        let spec = workload_of(preset, settings.seed)?;
        let rate = match workload.open_loop_of {
            None => None,
            Some(base) => {
                let peaks: Vec<f64> = rows
                    .iter()
                    .filter(|r: &&SuiteRow| r.workload == base)
                    .flat_map(|r| [r.ringcache, r.ringcache_resp, r.redis])
                    .flatten()
                    .map(|m| m.throughput)
                    .collect();
                let lowest = peaks.iter().copied().fold(f64::INFINITY, f64::min);
                if !lowest.is_finite() || lowest <= 0.0 {
                    bail!(
                        "no peak throughput measured for {base}, so {} has no rate",
                        workload.name
                    );
                }
                Some((lowest / 2.0).max(1.0))
            }
        };
        for rep in 0..settings.repeat {
            for (s, (column, system)) in systems.iter().enumerate() {
                let mut config = RunConfig::new(
                    system.clone(),
                    spec.clone(),
                    Duration::from_millis(settings.duration_ms),
                );
                config.preset = Some(preset.name.to_owned());
                config.warmup_ms = settings.warmup_ms;
                config.connections = settings.connections;
                config.concurrency = settings.concurrency;
                config.rate = rate;
                config.max_in_flight = 10_000;
                config.client.transport = settings.transport;
                config.client.tls = targets.ringcache_security.is_tls()
                    && matches!(system, TargetUrl::Ringcache { .. });
                config.server_pids = match column {
                    System::Ringcache | System::RingcacheResp => targets.ringcache_pid,
                    System::Redis => targets.redis_pid,
                }
                .into_iter()
                .collect();
                config.load = !loaded[s];
                loaded[s] = true;
                let mut attempt = 0;
                let mut result = loop {
                    attempt += 1;
                    let before = targets.server_pids.as_deref().and_then(CpuTimes::sample);
                    let mut result =
                        run_secured(&config, &targets.ringcache_security, progress).await?;
                    if result.interrupted {
                        bail!("interrupted");
                    }
                    let after = targets.server_pids.as_deref().and_then(CpuTimes::sample);
                    result.other_cpus = before.zip(after).map(|(b, a)| a.other_cpus_since(&b));
                    match (result.other_cpus, settings.max_other_cpus) {
                        (Some(other), Some(max)) if other > max && attempt <= RERUNS => {
                            eprintln!(
                                "other processes used {other:.2} CPUs during {} {} run {}: running it again",
                                workload.name,
                                column.name(),
                                rep + 1
                            );
                        }
                        _ => break result,
                    }
                };
                result.label = format!("{} {}", workload.name, column.name());
                eprintln!(
                    "[{}/{total_runs}] {:<16} {:<14} run {}: {:>9} ok/s  p50 {:>9}  p99 {:>9}  errors {}{}{}{}",
                    runs.len() + 1,
                    workload.name,
                    column.name(),
                    rep + 1,
                    fmt_count(result.throughput),
                    fmt_us(result.latency.p50_us),
                    fmt_us(result.latency.p99_us),
                    result.errors,
                    result.send_lag.map_or(String::new(), |lag| format!(
                        "  send lag p99 {}",
                        fmt_us(lag.p99_us)
                    )),
                    result
                        .other_cpus
                        .map_or(String::new(), |o| format!("  other CPUs {o:.2}")),
                    result
                        .server_cpu
                        .as_ref()
                        .map_or(String::new(), |c| format!(
                            "  server CPU {}/req",
                            fmt_us(c.us_per_request)
                        ))
                );
                runs.push((w, *column, result));
            }
        }
        let of_system = |system: System| -> Option<Medians> {
            let mine: Vec<&RunResult> = runs
                .iter()
                .filter(|(i, c, _)| *i == w && *c == system)
                .map(|(_, _, r)| r)
                .collect();
            Medians::of(&mine)
        };
        rows.push(SuiteRow {
            workload: workload.name.to_owned(),
            about: format!(
                "{}{}",
                preset.about,
                match rate {
                    Some(rate) => format!(", open loop at {} req/s", fmt_count(rate)),
                    None => String::new(),
                }
            ),
            rate,
            ringcache: of_system(System::Ringcache),
            ringcache_resp: of_system(System::RingcacheResp),
            redis: of_system(System::Redis),
        });
    }
    header.rows = rows;
    header.runs = runs.into_iter().map(|(_, _, r)| r).collect();
    Ok(header)
}

/// Other processes using more than this many CPUs during a run disturb it visibly.
const DISTURBED_CPUS: f64 = 0.1;

/// ringcache (gRPC) against Redis: the table without a RESP column.
fn two_system_table(suite: &SuiteResult) -> String {
    let mut out = String::new();
    out.push_str("| Workload | ringcache req/s | Redis req/s | ratio | ringcache p50 | Redis p50 | ratio | ringcache p99 | Redis p99 | ratio |\n");
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    let na = || "n/a".to_owned();
    for row in &suite.rows {
        let rc = row.ringcache;
        let rd = row.redis;
        let cell = |m: Option<Medians>, f: &dyn Fn(Medians) -> String| m.map_or_else(na, f);
        let ratio = |f: &dyn Fn(Medians) -> f64| match (rc, rd) {
            // ringcache / Redis.
            (Some(a), Some(b)) => fmt_ratio(f(b), f(a)),
            _ => na(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.workload,
            cell(rc, &|m| fmt_count(m.throughput)),
            cell(rd, &|m| fmt_count(m.throughput)),
            ratio(&|m| m.throughput),
            cell(rc, &|m| fmt_us(m.p50_us)),
            cell(rd, &|m| fmt_us(m.p50_us)),
            ratio(&|m| m.p50_us),
            cell(rc, &|m| fmt_us(m.p99_us)),
            cell(rd, &|m| fmt_us(m.p99_us)),
            ratio(&|m| m.p99_us),
        );
    }
    out
}

/// A figure of the medians and how to print it.
type Figure = (fn(Medians) -> f64, fn(f64) -> String);

/// ringcache over gRPC and over RESP against Redis; ratios are each over Redis.
fn three_system_table(suite: &SuiteResult) -> String {
    let mut out = String::new();
    out.push_str("| Workload | gRPC req/s | RESP req/s | Redis req/s | gRPC/Redis | RESP/Redis | gRPC p50 | RESP p50 | Redis p50 | gRPC/Redis | RESP/Redis | gRPC p99 | RESP p99 | Redis p99 | gRPC/Redis | RESP/Redis |\n");
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    let na = || "n/a".to_owned();
    for row in &suite.rows {
        let _ = write!(out, "| {} ", row.workload);
        let figures: [Figure; 3] = [
            (|m| m.throughput, fmt_count),
            (|m| m.p50_us, fmt_us),
            (|m| m.p99_us, fmt_us),
        ];
        for (figure, format) in figures {
            for m in [row.ringcache, row.ringcache_resp, row.redis] {
                let _ = write!(out, "| {} ", m.map_or_else(na, |m| format(figure(m))));
            }
            for m in [row.ringcache, row.ringcache_resp] {
                let ratio = match (m, row.redis) {
                    // ringcache / Redis.
                    (Some(a), Some(b)) => fmt_ratio(figure(b), figure(a)),
                    _ => na(),
                };
                let _ = write!(out, "| {ratio} ");
            }
        }
        out.push_str("|\n");
    }
    out
}

/// A system's name and its medians in a row.
type Column = (&'static str, fn(&SuiteRow) -> Option<Medians>);

/// Server CPU per request and per key of each system, with ringcache / Redis ratios; `None`
/// when no system's server was a local process.
fn cpu_table(suite: &SuiteResult) -> Option<String> {
    let columns: Vec<Column> = [
        (
            "ringcache",
            (|r: &SuiteRow| r.ringcache) as fn(&SuiteRow) -> Option<Medians>,
        ),
        ("RESP", |r: &SuiteRow| r.ringcache_resp),
        ("Redis", |r: &SuiteRow| r.redis),
    ]
    .into_iter()
    .filter(|(_, get)| suite.rows.iter().any(|r| get(r).is_some()))
    .collect();
    let measured = |m: Option<Medians>| m.and_then(|m| m.server_us_per_request);
    if !suite
        .rows
        .iter()
        .any(|r| columns.iter().any(|(_, get)| measured(get(r)).is_some()))
    {
        return None;
    }
    let ours: Vec<&Column> = columns
        .iter()
        .filter(|(name, _)| *name != "Redis")
        .collect();
    let with_redis = columns.iter().any(|(name, _)| *name == "Redis");
    let mut out = String::new();
    out.push_str("| Workload |");
    for (name, _) in &columns {
        let _ = write!(out, " {name} CPU/req |");
    }
    if with_redis {
        for (name, _) in &ours {
            let _ = write!(out, " {name}/Redis |");
        }
    }
    for (name, _) in &columns {
        let _ = write!(out, " {name} CPU/key |");
    }
    out.push('\n');
    let cells = columns.len() * 2 + if with_redis { ours.len() } else { 0 };
    out.push_str("|---|");
    out.push_str(&"--:|".repeat(cells));
    out.push('\n');
    let na = || "n/a".to_owned();
    for row in &suite.rows {
        let _ = write!(out, "| {} |", row.workload);
        for (_, get) in &columns {
            let _ = write!(out, " {} |", measured(get(row)).map_or_else(na, fmt_us));
        }
        if with_redis {
            for (_, get) in &ours {
                let ratio = match (measured(get(row)), measured(row.redis)) {
                    (Some(a), Some(b)) => fmt_ratio(b, a),
                    _ => na(),
                };
                let _ = write!(out, " {ratio} |");
            }
        }
        for (_, get) in &columns {
            let per_key = get(row).and_then(|m| m.server_us_per_key);
            let _ = write!(out, " {} |", per_key.map_or_else(na, fmt_us));
        }
        out.push('\n');
    }
    Some(out)
}

/// The suite's table in Markdown, ready for BENCHMARKS.md: ratios are ringcache / Redis.
pub fn markdown(suite: &SuiteResult) -> String {
    let s = &suite.settings;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Servers on {}, ringbench on CPU {}; {} runs of {} s (after {} s warmup) per workload and system, the systems alternating; medians. {} connections x {} requests in flight (closed loop); open-loop runs offer every system half the lowest of their peaks. ringcached: `{}` ({} client transport); Redis: `{}`.",
        suite.server_pinning,
        suite.harness.cpus_allowed,
        s.repeat,
        s.duration_ms as f64 / 1000.0,
        s.warmup_ms as f64 / 1000.0,
        s.connections,
        s.concurrency,
        suite.ringcache_version,
        match s.transport {
            Transport::Pipelined => "pipelined",
            Transport::Unary => "unary",
        },
        suite.redis_version,
    );
    let with_resp = suite.rows.iter().any(|row| row.ringcache_resp.is_some());
    if with_resp {
        let _ = writeln!(
            out,
            "\nringcache is measured twice, on the same node: over gRPC (the `ringcache` client crate) and over its RESP port (the `redis` crate, the client the Redis runs use); the three alternate within each repetition, and open-loop runs offer all three half the lowest of their peaks."
        );
    }
    out.push('\n');
    if with_resp {
        out.push_str(&three_system_table(suite));
    } else {
        out.push_str(&two_system_table(suite));
    }
    if let Some(cpu) = cpu_table(suite) {
        out.push_str(
            "\nServer CPU time over the measured windows (user + system, from /proc), per request and per key carried; medians. This is the figure to compare: the harness shares the machine, so throughput and latency are partly the harness's.\n\n",
        );
        out.push_str(&cpu);
    }
    out.push('\n');
    for row in &suite.rows {
        let lags: Vec<String> = [row.ringcache, row.ringcache_resp, row.redis]
            .into_iter()
            .filter_map(|m| m.and_then(|m| m.send_lag_p99_us))
            .map(fmt_us)
            .collect();
        let lag = if lags.is_empty() {
            String::new()
        } else {
            format!(" (harness send lag p99: {})", lags.join(" / "))
        };
        let _ = writeln!(out, "- {}: {}{lag}", row.workload, row.about);
    }
    let errors: Vec<String> = suite
        .rows
        .iter()
        .flat_map(|row| {
            [
                ("ringcache", row.ringcache),
                ("ringcache RESP", row.ringcache_resp),
                ("Redis", row.redis),
            ]
            .into_iter()
            .filter_map(move |(name, m)| {
                m.filter(|m| m.errors > 0)
                    .map(|m| format!("{} {name}: {} errors", row.workload, m.errors))
            })
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "- errors: {}", errors.join("; "));
    }
    let _ = writeln!(
        out,
        "- ratio = ringcache / Redis: above 1 means more throughput, or higher (worse) latency, for ringcache."
    );
    let others: Vec<f64> = suite.runs.iter().filter_map(|r| r.other_cpus).collect();
    if !others.is_empty() {
        let worst = others.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "- other processes on the machine used {:.2} CPUs during the median run, {worst:.2} at most{}",
            median(&others),
            if worst > DISTURBED_CPUS {
                ": figures disturbed, rerun on a quiet machine"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(out, "\n```sh\n{}\n```", suite.command);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::sample;

    #[test]
    fn a_missing_redis_server_says_how_to_get_one() {
        let empty = std::env::temp_dir();
        assert_eq!(
            find_redis_server(None, Some(OsStr::new(""))).unwrap_err(),
            REDIS_MISSING
        );
        assert_eq!(find_redis_server(None, None).unwrap_err(), REDIS_MISSING);
        let error = find_redis_server(Some(&empty.join("no-such-redis")), None).unwrap_err();
        assert!(
            error.starts_with("redis-server not found: apt-get install redis-server"),
            "{error}"
        );
    }

    #[test]
    fn binaries_are_found_on_the_path_and_beside_the_harness() {
        let dir = ScratchDir::new("find").unwrap();
        let fake = dir.path().join("redis-server");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        // Not executable yet: not found.
        assert!(find_redis_server(None, Some(dir.path().as_os_str())).is_err());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        assert_eq!(find_redis_server(None, Some(&path)).unwrap(), fake);

        let ringcached = dir.path().join("ringcached");
        std::fs::write(&ringcached, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&ringcached, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.path().join("ringbench");
        assert_eq!(find_ringcached(None, &exe).unwrap(), ringcached);
        let deps_exe = dir.path().join("deps").join("ringbench-123");
        assert_eq!(find_ringcached(None, &deps_exe).unwrap(), ringcached);
        let error = find_ringcached(None, Path::new("/nonexistent/ringbench")).unwrap_err();
        assert!(
            error.contains("cargo build --release") && error.contains("--ringcached"),
            "{error}"
        );
    }

    #[test]
    fn free_ports_are_loopback_and_nonzero() {
        assert_ne!(free_tcp_port().unwrap(), 0);
        assert_ne!(free_udp_port().unwrap(), 0);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let a = sample("ringcache", "ringcache://127.0.0.1:1", 10.0, 100);
        let b = sample("ringcache", "ringcache://127.0.0.1:1", 30.0, 300);
        let c = sample("ringcache", "ringcache://127.0.0.1:1", 20.0, 200);
        let m = Medians::of(&[&a, &b, &c]).unwrap();
        assert_eq!(m.throughput, 20.0);
        assert_eq!(m.p50_us, c.latency.p50_us);
        assert_eq!(m.runs, 3);
        assert!(Medians::of(&[]).is_none());
    }

    fn suite_of(rows: Vec<SuiteRow>) -> SuiteResult {
        SuiteResult {
            tool: "ringbench test".into(),
            started_unix_ms: 0,
            settings: SuiteSettings::default(),
            harness: HarnessInfo {
                threads: 1,
                cpus_allowed: "1".into(),
                cpus: 2,
            },
            server_pinning: "CPU 0".into(),
            ringcache_version: "ringcached 0.1.0".into(),
            redis_version: "Redis server v=7.0.15".into(),
            command: "ringbench suite --duration 5s".into(),
            rows,
            runs: Vec::new(),
        }
    }

    #[test]
    fn the_markdown_table_has_ratios_ringcache_over_redis() {
        let m = |throughput, p50_us, p99_us| Medians {
            throughput,
            p50_us,
            p99_us,
            p999_us: p99_us * 2.0,
            errors: 0,
            runs: 3,
            send_lag_p99_us: None,
            server_us_per_request: None,
            server_us_per_key: None,
        };
        let text = markdown(&suite_of(vec![
            SuiteRow {
                workload: "read-heavy".into(),
                about: "95% get".into(),
                rate: None,
                ringcache: Some(m(50_000.0, 400.0, 1200.0)),
                ringcache_resp: None,
                redis: Some(m(100_000.0, 200.0, 400.0)),
            },
            SuiteRow {
                workload: "write-heavy".into(),
                about: "90% set".into(),
                rate: None,
                ringcache: Some(m(40_000.0, 500.0, 1500.0)),
                ringcache_resp: None,
                redis: None,
            },
        ]));
        let row = text
            .lines()
            .find(|l| l.starts_with("| read-heavy"))
            .unwrap();
        assert_eq!(
            row,
            "| read-heavy | 50,000 | 100,000 | 0.50x | 400.0 µs | 200.0 µs | 2.00x | 1.20 ms | 400.0 µs | 3.00x |"
        );
        let row = text
            .lines()
            .find(|l| l.starts_with("| write-heavy"))
            .unwrap();
        assert!(row.contains("| 40,000 | n/a | n/a |"), "{row}");
        assert!(text.contains("|---|--:|"));
        assert!(text.contains("ringbench suite --duration 5s"));
        assert!(!text.contains("RESP"), "no RESP column without RESP runs");
    }

    #[test]
    fn the_resp_column_sits_beside_grpc_and_redis() {
        let m = |throughput, p50_us, p99_us, errors| Medians {
            throughput,
            p50_us,
            p99_us,
            p999_us: p99_us * 2.0,
            errors,
            runs: 3,
            send_lag_p99_us: None,
            server_us_per_request: None,
            server_us_per_key: None,
        };
        let text = markdown(&suite_of(vec![
            SuiteRow {
                workload: "read-heavy".into(),
                about: "95% get".into(),
                rate: None,
                ringcache: Some(m(50_000.0, 400.0, 1200.0, 0)),
                ringcache_resp: Some(m(80_000.0, 300.0, 600.0, 2)),
                redis: Some(m(100_000.0, 200.0, 400.0, 0)),
            },
            SuiteRow {
                workload: "write-heavy".into(),
                about: "90% set".into(),
                rate: None,
                ringcache: Some(m(40_000.0, 500.0, 1500.0, 0)),
                ringcache_resp: None,
                redis: Some(m(100_000.0, 200.0, 400.0, 0)),
            },
        ]));
        assert!(
            text.contains(
                "| Workload | gRPC req/s | RESP req/s | Redis req/s | gRPC/Redis | RESP/Redis |"
            ),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.starts_with("| read-heavy"))
            .unwrap();
        assert_eq!(
            row,
            "| read-heavy | 50,000 | 80,000 | 100,000 | 0.50x | 0.80x | 400.0 µs | 300.0 µs | 200.0 µs | 2.00x | 1.50x | 1.20 ms | 600.0 µs | 400.0 µs | 3.00x | 1.50x |"
        );
        let row = text
            .lines()
            .find(|l| l.starts_with("| write-heavy"))
            .unwrap();
        assert!(
            row.contains("| 40,000 | n/a | 100,000 | 0.40x | n/a |"),
            "{row}"
        );
        assert!(
            text.contains("read-heavy ringcache RESP: 2 errors"),
            "{text}"
        );
        // Old JSON (no RESP field) still reads.
        let json = r#"{"workload":"w","about":"a","rate":null,"ringcache":null,"redis":null}"#;
        let row: SuiteRow = serde_json::from_str(json).unwrap();
        assert_eq!(row.ringcache_resp, None);
    }

    #[test]
    fn server_cpu_gets_its_own_table_with_ratios_over_redis() {
        let m = |cpu: Option<(f64, f64)>| Medians {
            throughput: 50_000.0,
            p50_us: 400.0,
            p99_us: 1200.0,
            p999_us: 2400.0,
            errors: 0,
            runs: 3,
            send_lag_p99_us: None,
            server_us_per_request: cpu.map(|c| c.0),
            server_us_per_key: cpu.map(|c| c.1),
        };
        let rows = vec![
            SuiteRow {
                workload: "read-heavy".into(),
                about: "95% get".into(),
                rate: None,
                ringcache: Some(m(Some((12.0, 12.0)))),
                ringcache_resp: Some(m(Some((9.0, 9.0)))),
                redis: Some(m(Some((10.0, 10.0)))),
            },
            SuiteRow {
                workload: "multi-key".into(),
                about: "mget/mset of 10".into(),
                rate: None,
                ringcache: Some(m(Some((40.0, 4.0)))),
                ringcache_resp: Some(m(None)),
                redis: Some(m(Some((50.0, 5.0)))),
            },
        ];
        let text = markdown(&suite_of(rows.clone()));
        let cpu = &text[text.find("Server CPU time").expect("a CPU section")..];
        assert!(
            cpu.contains("| Workload | ringcache CPU/req | RESP CPU/req | Redis CPU/req | ringcache/Redis | RESP/Redis | ringcache CPU/key | RESP CPU/key | Redis CPU/key |"),
            "{cpu}"
        );
        let line = |name: &str| cpu.lines().find(|l| l.starts_with(name)).unwrap();
        assert_eq!(
            line("| read-heavy"),
            "| read-heavy | 12.0 µs | 9.0 µs | 10.0 µs | 1.20x | 0.90x | 12.0 µs | 9.0 µs | 10.0 µs |"
        );
        assert_eq!(
            line("| multi-key"),
            "| multi-key | 40.0 µs | n/a | 50.0 µs | 0.80x | n/a | 4.0 µs | n/a | 5.0 µs |"
        );
        // Without any local server there is no CPU section.
        let none: Vec<SuiteRow> = rows
            .into_iter()
            .map(|mut r| {
                r.ringcache = Some(m(None));
                r.ringcache_resp = None;
                r.redis = Some(m(None));
                r
            })
            .collect();
        assert!(!markdown(&suite_of(none)).contains("Server CPU time"));
    }
}
