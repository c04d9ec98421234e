//! `ringbench`'s command line: `run` (the default), `suite`, `compare`, `presets`. The binary only
//! calls [`main`]; exit codes are 0 (done), 1 (the run failed), 2 (bad usage, including a bad TLS
//! or credential flag).
//!
//! `run` and `suite` take ringctl's TLS and credential flags for ringcache targets
//! ([`SecurityArgs`]: `--user`, `--password-file`, `--tls`, `--tls-ca`, `--tls-cert`,
//! `--tls-key`, `--tls-server-name`, and their `RINGCACHE_*` environment variables).

use std::{
    ffi::OsString,
    io::IsTerminal,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ringcache::ctl::{Security, SecurityArgs};

use crate::bench::{
    cpu::ProcessCpu,
    plot,
    report::{self, HarnessInfo, RunResult},
    runner::{self, RunConfig},
    suite::{self, Pinning, ScratchDir, SuiteResult, SuiteSettings, SuiteTargets},
    target::{ClientSettings, ConsistencyLevel, TargetUrl, Transport},
    workload::{self, KeyDistribution, Mix, PRESETS, ValueSize, WorkloadSpec},
};

/// Load harness for ringcache, and for Redis to compare with.
#[derive(Debug, Parser)]
#[command(
    name = "ringbench",
    version,
    about = "Load harness for ringcache (and Redis, to compare with)",
    long_about = "Load harness for ringcache (and Redis, to compare with).\n\nWithout a subcommand, `ringbench [TARGET] [OPTIONS]` is `ringbench run`.",
    args_conflicts_with_subcommands = true,
    subcommand_precedence_over_arg = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One workload against one target (the default).
    Run(RunArgs),
    /// The standard workloads against ringcache and Redis, alternating; prints a Markdown table.
    Suite(SuiteArgs),
    /// Two result files (`run --json`) side by side, with ratios B/A.
    Compare(CompareArgs),
    /// Lists the workload presets.
    Presets,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 500ms, 10s or 2m"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches("/s");
    let (number, scale) = match t.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1e3),
        None => match t.strip_suffix('M') {
            Some(n) => (n, 1e6),
            None => (t, 1.0),
        },
    };
    let rate: f64 = number
        .parse()
        .map_err(|_| format!("invalid rate {s:?}: use requests per second, e.g. 20000 or 20k"))?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("rate must be positive, got {s:?}"));
    }
    Ok(rate * scale)
}

/// `ringbench run`.
#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// Where to send requests: ringcache://host:port[,host:port] or redis://host:port.
    #[arg(value_name = "TARGET", default_value = "ringcache://127.0.0.1:7379")]
    target: TargetUrl,

    /// Start from a named workload (`ringbench presets` lists them); other flags override it.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Operation weights: get, set, incr, del, mget, mset [default: get=95,set=5].
    #[arg(long, value_name = "OP=W,...")]
    mix: Option<Mix>,
    /// Size of the key space [default: 100000].
    #[arg(long, value_name = "N")]
    keys: Option<u64>,
    /// uniform, zipfian[:THETA] (THETA default 0.99) or sequential [default: zipfian:0.99].
    #[arg(long, value_name = "DIST")]
    distribution: Option<KeyDistribution>,
    /// Value bytes: N, or MIN..MAX (inclusive) [default: 100].
    #[arg(long, value_name = "BYTES")]
    value_size: Option<ValueSize>,
    /// TTL of written keys (e.g. 60s); none by default.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    ttl: Option<Duration>,
    /// Keys per mget/mset [default: 10].
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Seed of every random choice: the same seed sends the same keys and operations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fill the key space before measuring (batched msets, not measured).
    #[arg(long)]
    load: bool,
    /// Keys per mset in the load phase.
    #[arg(long, default_value_t = 100, value_name = "N")]
    load_batch: usize,

    /// Bench connections (ringcache: one client each).
    #[arg(long, short = 'c', default_value_t = 10, value_name = "N")]
    connections: usize,
    /// Closed loop: requests in flight per connection.
    #[arg(long, short = 'k', default_value_t = 5, value_name = "N")]
    concurrency: usize,
    /// Open loop: requests per second in total, sent on schedule; latency is measured from the
    /// scheduled time (corrected for coordinated omission).
    #[arg(long, value_parser = parse_rate, value_name = "N/s")]
    rate: Option<f64>,
    /// Open loop: most requests in flight per connection.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    max_in_flight: usize,
    /// How long to measure.
    #[arg(long, short = 'd', value_parser = parse_duration, default_value = "10s", conflicts_with = "requests")]
    duration: Duration,
    /// Measure this many requests instead of a duration.
    #[arg(long, short = 'n', value_name = "N")]
    requests: Option<u64>,
    /// Unmeasured time before measuring [default: 1s, or 0 with --requests].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    warmup: Option<Duration>,

    /// Harness runtime threads (1: one thread, as when pinned to one CPU).
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,
    /// Pin the harness to this CPU (needs taskset).
    #[arg(long, value_name = "CPU")]
    cpu: Option<usize>,
    /// Report the CPU time this local server process spent over the measured window, per
    /// request and per key (Linux /proc; repeat or comma-separate for several processes, e.g.
    /// every node of a local cluster).
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,
    /// Connect timeout.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    connect_timeout: Duration,
    /// ringcache: HTTP/2 connections per node in each client.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pool_size: usize,
    /// ringcache: consistency level of every request [default: the cluster's].
    #[arg(long, value_enum)]
    consistency: Option<ConsistencyLevel>,
    /// ringcache: requests on each connection's pipelined stream, or one unary call each.
    #[arg(long, value_enum, default_value_t = Transport::Pipelined)]
    transport: Transport,
    /// ringcache: give each client a near cache of at most N entries (invalidated by the
    /// nodes); prints the near-cache hit rate after the run [default: off].
    #[arg(long, value_name = "N")]
    near_cache: Option<u64>,
    /// ringcache: TLS and credentials.
    #[command(flatten)]
    security: SecurityArgs,

    /// Write every figure and the configuration to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write an SVG of throughput and p50/p99 latency per second over time and the latency
    /// distribution to FILE.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    no_progress: bool,
}

/// `ringbench suite`.
#[derive(Debug, Clone, Args)]
struct SuiteArgs {
    /// Measured time per run.
    #[arg(long, short = 'd', value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Warmup per run.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Runs per workload and system (medians are reported).
    #[arg(long, default_value_t = 3, value_name = "N")]
    repeat: usize,
    /// Bench connections per run.
    #[arg(long, short = 'c', default_value_t = 10, value_name = "N")]
    connections: usize,
    /// Requests in flight per connection (closed loop).
    #[arg(long, short = 'k', default_value_t = 5, value_name = "N")]
    concurrency: usize,
    /// Seed of every run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the suite (every run, and the medians) as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the Markdown table to FILE (it is printed either way).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// The ringcached binary [default: the one beside ringbench].
    #[arg(long, value_name = "PATH")]
    ringcached: Option<PathBuf>,
    /// Use this running ringcache node instead of starting one (ringcache://host:port).
    #[arg(long, value_name = "URL")]
    ringcache: Option<TargetUrl>,
    /// Measure this RESP port of the ringcache node too (redis://host:port) [default: the
    /// started node's own RESP port; none with --ringcache].
    #[arg(long, value_name = "URL", conflicts_with = "no_resp")]
    ringcache_resp: Option<TargetUrl>,
    /// Do not measure ringcache over RESP (gRPC and Redis only, as before).
    #[arg(long)]
    no_resp: bool,
    /// Use this running Redis (redis://host:port) instead of starting redis-server.
    #[arg(long, value_name = "URL")]
    redis: Option<TargetUrl>,
    /// The redis-server binary [default: the first on PATH].
    #[arg(long, value_name = "PATH")]
    redis_server: Option<PathBuf>,
    /// Do not pin servers to CPU 0 and the harness to CPU 1.
    #[arg(long)]
    no_pin: bool,
    /// How the ringcache client carries requests.
    #[arg(long, value_enum, default_value_t = Transport::Pipelined)]
    transport: Transport,
    /// TLS and credentials for the node given by --ringcache (the suite's own node uses none).
    #[command(flatten)]
    security: SecurityArgs,
    /// Run again (up to 3 times) a run during which other processes used more than this many
    /// CPUs (e.g. 0.1); measured only when the suite started both servers.
    #[arg(long, value_name = "CPUS")]
    max_other_cpus: Option<f64>,
    /// The process of the node given by --ringcache, to report its CPU per request (the
    /// suite's own node is measured anyway).
    #[arg(long, value_name = "PID", requires = "ringcache")]
    ringcache_pid: Option<u32>,
    /// The process of the Redis given by --redis, to report its CPU per request.
    #[arg(long, value_name = "PID", requires = "redis")]
    redis_pid: Option<u32>,
    /// No live progress line.
    #[arg(long)]
    no_progress: bool,
}

/// `ringbench compare`.
#[derive(Debug, Clone, Args)]
struct CompareArgs {
    /// Result file A.
    a: PathBuf,
    /// Result file B.
    b: PathBuf,
    /// Also draw both in one SVG.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

/// Runs ringbench with `args` (the program name first); returns the exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let code = error.exit_code();
            let _ = error.print();
            return code;
        }
    };
    match execute(cli) {
        Ok(()) => 0,
        Err(error) if error.is::<UsageError>() => {
            eprintln!("ringbench: error: {error:#}");
            2
        }
        Err(error) => {
            eprintln!("ringbench: error: {error:#}");
            1
        }
    }
}

/// A bad flag found after parsing (a TLS or credential flag): exit code 2.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Whether any TLS or credential flag is set.
fn wants_security(args: &SecurityArgs) -> bool {
    args.user.is_some() || args.tls_ca.is_some()
}

/// Loads the TLS and credential flags: the secret and the certificate files.
fn load_security(args: &SecurityArgs) -> anyhow::Result<Security> {
    args.load()
        .map_err(|error| UsageError(error.to_string()).into())
}

fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Run(args)) => run_command(&args),
        None => run_command(&cli.run),
        Some(Command::Suite(args)) => suite_command(&args),
        Some(Command::Compare(args)) => compare_command(&args),
        Some(Command::Presets) => {
            let rows: Vec<Vec<String>> = PRESETS
                .iter()
                .map(|p| vec![p.name.to_owned(), p.about.to_owned()])
                .collect();
            print!("{}", report::aligned(&["preset", "workload"], &rows));
            Ok(())
        }
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn show_progress(disabled: bool) -> bool {
    !disabled && std::io::stderr().is_terminal()
}

fn taskset() -> Option<PathBuf> {
    suite::find_in_path("taskset", std::env::var_os("PATH").as_deref())
}

/// Builds the run's configuration from flags over the preset over the defaults.
fn run_config(args: &RunArgs) -> anyhow::Result<RunConfig> {
    let base = match &args.preset {
        Some(name) => workload::preset(name).map_err(anyhow::Error::msg)?,
        None => workload::preset("read-heavy").map_err(anyhow::Error::msg)?,
    };
    let workload = WorkloadSpec {
        mix: match &args.mix {
            Some(mix) => mix.clone(),
            None => base.mix.parse().map_err(anyhow::Error::msg)?,
        },
        keys: args.keys.unwrap_or(base.keys),
        distribution: match args.distribution {
            Some(d) => d,
            None => base.distribution.parse().map_err(anyhow::Error::msg)?,
        },
        value_size: match args.value_size {
            Some(v) => v,
            None => base.value_size.parse().map_err(anyhow::Error::msg)?,
        },
        ttl_ms: args
            .ttl
            .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        batch: args.batch.unwrap_or(base.batch),
        seed: args.seed,
    };
    let mut config = RunConfig::new(args.target.clone(), workload, args.duration);
    config.preset = args.preset.clone();
    config.connections = args.connections;
    config.concurrency = args.concurrency;
    config.rate = args.rate;
    config.max_in_flight = args.max_in_flight;
    if let Some(n) = args.requests {
        config.requests = Some(n);
        config.duration_ms = None;
    }
    let default_warmup = if args.requests.is_some() {
        Duration::ZERO
    } else {
        Duration::from_secs(1)
    };
    config.warmup_ms =
        u64::try_from(args.warmup.unwrap_or(default_warmup).as_millis()).unwrap_or(u64::MAX);
    config.load = args.load;
    config.load_batch = args.load_batch;
    config.threads = args.threads;
    config.server_pids = args.server_pid.clone();
    config.client = ClientSettings {
        request_timeout_ms: u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX),
        connect_timeout_ms: u64::try_from(args.connect_timeout.as_millis()).unwrap_or(u64::MAX),
        pool_size: args.pool_size.max(1),
        consistency: args.consistency,
        transport: args.transport,
        tls: false,
        near_cache_entries: args.near_cache,
    };
    config.validate()?;
    Ok(config)
}

fn run_command(args: &RunArgs) -> anyhow::Result<()> {
    let mut config = run_config(args)?;
    if wants_security(&args.security) && !matches!(config.target, TargetUrl::Ringcache { .. }) {
        return Err(UsageError(format!(
            "the tls and credential flags are for ringcache:// targets, not {}",
            config.target
        ))
        .into());
    }
    let security = load_security(&args.security)?;
    config.client.tls = security.is_tls();
    if !config.server_pids.is_empty() && ProcessCpu::sample(&config.server_pids).is_none() {
        return Err(UsageError(format!(
            "--server-pid: cannot read the CPU time of {:?} from /proc/PID/stat (no such process, or not Linux)",
            config.server_pids
        ))
        .into());
    }
    if let Some(cpu) = args.cpu {
        let taskset = taskset().context("--cpu needs taskset (apt-get install util-linux)")?;
        suite::pin_self(&taskset, cpu).map_err(anyhow::Error::msg)?;
    }
    let progress = show_progress(args.no_progress);
    let result =
        runtime(config.threads)?.block_on(runner::run_secured(&config, &security, progress))?;
    print!("{}", result.table());
    if let Some(path) = &args.json {
        result.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        write_file(path, &plot::svg(&[&result]))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn compare_command(args: &CompareArgs) -> anyhow::Result<()> {
    let a = RunResult::read_json(&args.a)?;
    let b = RunResult::read_json(&args.b)?;
    print!("{}", report::compare(&a, &b));
    if let Some(path) = &args.plot {
        write_file(path, &plot::svg(&[&a, &b]))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// CPU of the servers and of the harness in a pinned suite.
const SERVER_CPU: usize = 0;
const HARNESS_CPU: usize = 1;

fn suite_command(args: &SuiteArgs) -> anyhow::Result<()> {
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if args.duration.is_zero() {
        bail!("--duration must be longer than zero");
    }
    if let Some(url) = &args.ringcache_resp
        && !matches!(url, TargetUrl::Redis { .. })
    {
        bail!("--ringcache-resp wants a redis:// URL (the node's RESP port), got {url}");
    }
    if wants_security(&args.security) && args.ringcache.is_none() {
        return Err(UsageError(
            "the tls and credential flags are for an external node: give --ringcache ringcache://host:port"
                .to_owned(),
        )
        .into());
    }
    let ringcache_security = load_security(&args.security)?;
    // Pin first, before any thread exists.
    let pinning = if args.no_pin {
        Pinning::none()
    } else {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        match taskset() {
            None => {
                eprintln!(
                    "ringbench: warning: taskset not found (apt-get install util-linux): servers and harness run unpinned"
                );
                Pinning::none()
            }
            Some(_) if cpus < 2 => {
                eprintln!(
                    "ringbench: warning: {cpus} CPU available: servers and harness run unpinned"
                );
                Pinning::none()
            }
            Some(taskset) => match suite::pin_self(&taskset, HARNESS_CPU) {
                Ok(()) => Pinning {
                    server: Some((taskset, SERVER_CPU)),
                },
                Err(error) => {
                    eprintln!("ringbench: warning: {error}: servers and harness run unpinned");
                    Pinning::none()
                }
            },
        }
    };
    let scratch = ScratchDir::new("suite").context("cannot create a scratch directory")?;

    // ringcache: a node of our own unless one is given.
    let (ringcache_url, ringcache_version, ringcached_guard) = match &args.ringcache {
        Some(url @ TargetUrl::Ringcache { .. }) => (url.clone(), format!("external {url}"), None),
        Some(other) => bail!("--ringcache wants a ringcache:// URL, got {other}"),
        None => {
            let exe = std::env::current_exe().context("cannot find ringbench's own executable")?;
            let binary = suite::find_ringcached(args.ringcached.as_deref(), &exe)
                .map_err(anyhow::Error::msg)?;
            let resp = !args.no_resp && args.ringcache_resp.is_none();
            let server = suite::start_ringcached(&binary, &pinning, scratch.path(), resp)
                .context("cannot start ringcached")?;
            eprintln!(
                "started {} (pid {}) at {}{} on {}",
                binary.display(),
                server.pid(),
                server.addr,
                server
                    .resp_addr
                    .map_or(String::new(), |addr| format!(" (RESP {addr})")),
                pinning.describe()
            );
            let url: TargetUrl = server.url().parse().map_err(anyhow::Error::msg)?;
            let version = server.version.clone();
            (url, version, Some(server))
        }
    };

    // Redis: given, started, or absent (then the ringcache half still runs).
    let (redis_url, redis_version, redis_guard) = match &args.redis {
        Some(url @ TargetUrl::Redis { .. }) => (Some(url.clone()), format!("external {url}"), None),
        Some(other) => bail!("--redis wants a redis:// URL, got {other}"),
        None => match suite::find_redis_server(
            args.redis_server.as_deref(),
            std::env::var_os("PATH").as_deref(),
        ) {
            Ok(binary) => {
                let server = suite::start_redis(&binary, &pinning, scratch.path())
                    .context("cannot start redis-server")?;
                eprintln!(
                    "started {} (pid {}) at {} on {}",
                    binary.display(),
                    server.pid(),
                    server.addr,
                    pinning.describe()
                );
                let url: TargetUrl = server.url().parse().map_err(anyhow::Error::msg)?;
                let version = server.version.clone();
                (Some(url), version, Some(server))
            }
            Err(message) => {
                eprintln!(
                    "ringbench: warning: no Redis available ({message}, or pass --redis redis://host:port): running the ringcache half only"
                );
                (None, format!("none ({message})"), None)
            }
        },
    };

    let settings = SuiteSettings {
        duration_ms: u64::try_from(args.duration.as_millis()).unwrap_or(u64::MAX),
        warmup_ms: u64::try_from(args.warmup.as_millis()).unwrap_or(u64::MAX),
        repeat: args.repeat,
        connections: args.connections,
        concurrency: args.concurrency,
        seed: args.seed,
        transport: args.transport,
        max_other_cpus: args.max_other_cpus,
    };
    let command = std::iter::once("ringbench".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let header = SuiteResult {
        tool: format!("ringbench {}", env!("CARGO_PKG_VERSION")),
        started_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
        settings: settings.clone(),
        harness: HarnessInfo::current(1),
        server_pinning: pinning.describe(),
        ringcache_version,
        redis_version,
        command,
        rows: Vec::new(),
        runs: Vec::new(),
    };
    // Other processes' CPU time is known only when every server is ours.
    let server_pids = match (&ringcached_guard, &redis_guard, &redis_url) {
        _ if args.ringcache_resp.is_some() => None,
        (Some(rc), Some(rd), _) => Some(vec![rc.pid(), rd.pid()]),
        (Some(rc), None, None) => Some(vec![rc.pid()]),
        _ => None,
    };
    let ringcache_resp = match (&args.ringcache_resp, &ringcached_guard) {
        _ if args.no_resp => None,
        (Some(url), _) => Some(url.clone()),
        (None, Some(server)) => server
            .resp_url()
            .map(|url| url.parse().map_err(anyhow::Error::msg))
            .transpose()?,
        (None, None) => {
            eprintln!(
                "ringbench: note: no RESP column for an external node unless --ringcache-resp redis://host:port names its RESP port"
            );
            None
        }
    };
    let ringcache_pid = ringcached_guard
        .as_ref()
        .map(|server| server.pid())
        .or(args.ringcache_pid);
    let redis_pid = redis_guard
        .as_ref()
        .map(|server| server.pid())
        .or(args.redis_pid);
    for pid in [ringcache_pid, redis_pid].into_iter().flatten() {
        if ProcessCpu::sample(&[pid]).is_none() {
            return Err(UsageError(format!(
                "cannot read the CPU time of process {pid} from /proc/{pid}/stat (no such process, or not Linux)"
            ))
            .into());
        }
    }
    let targets = SuiteTargets {
        ringcache: ringcache_url,
        ringcache_resp,
        redis: redis_url,
        server_pids,
        ringcache_pid,
        redis_pid,
        ringcache_security,
    };
    let progress = show_progress(args.no_progress);
    let result = runtime(1)?.block_on(suite::run_suite(&targets, &settings, progress, header))?;
    let table = suite::markdown(&result);
    println!("\n{table}");
    if let Some(path) = &args.markdown {
        write_file(path, &table)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result)?;
        write_file(path, &(text + "\n"))?;
        eprintln!("wrote {}", path.display());
    }
    // The servers (and the scratch directory) go when their guards drop here.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ringbench").chain(args.iter().copied()))
    }

    #[test]
    fn run_is_the_default_and_flags_override_the_preset() {
        let cli = parse(&[
            "redis://127.0.0.1:6379",
            "--preset",
            "multi-key",
            "--batch",
            "20",
            "-n",
            "500",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let config = run_config(&cli.run).unwrap();
        assert_eq!(config.target.kind(), "redis");
        assert_eq!(config.workload.mix.to_string(), "mget=90,mset=10");
        assert_eq!(config.workload.batch, 20);
        assert_eq!(config.requests, Some(500));
        assert_eq!(config.duration_ms, None);
        assert_eq!(config.warmup_ms, 0);
        assert_eq!(config.preset.as_deref(), Some("multi-key"));

        let cli = parse(&[
            "run",
            "--mix",
            "get=1,incr=1",
            "--rate",
            "20k",
            "--ttl",
            "30s",
        ])
        .unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("expected run")
        };
        let config = run_config(&args).unwrap();
        assert_eq!(config.target.to_string(), "ringcache://127.0.0.1:7379");
        assert_eq!(config.rate, Some(20_000.0));
        assert_eq!(config.workload.ttl_ms, Some(30_000));
        assert_eq!(config.workload.keys, 100_000);
        assert_eq!(config.duration_ms, Some(10_000));
        assert_eq!(config.warmup_ms, 1_000);
    }

    #[test]
    fn subcommands_parse() {
        assert!(matches!(
            parse(&["suite", "--duration", "5s"]).unwrap().command,
            Some(Command::Suite(_))
        ));
        assert!(matches!(
            parse(&["compare", "a.json", "b.json"]).unwrap().command,
            Some(Command::Compare(_))
        ));
        assert!(matches!(
            parse(&["presets"]).unwrap().command,
            Some(Command::Presets)
        ));
        let Some(Command::Suite(suite)) =
            parse(&["suite", "--ringcache-resp", "redis://127.0.0.1:6479"])
                .unwrap()
                .command
        else {
            panic!("suite");
        };
        assert_eq!(
            suite.ringcache_resp.unwrap().to_string(),
            "redis://127.0.0.1:6479"
        );
        assert!(!suite.no_resp);
        assert!(
            parse(&[
                "suite",
                "--no-resp",
                "--ringcache-resp",
                "redis://127.0.0.1:6479"
            ])
            .is_err(),
            "--no-resp and --ringcache-resp conflict"
        );
        // A redis+cluster:// URL is not one node's RESP port.
        let Some(Command::Suite(suite)) = parse(&[
            "suite",
            "--ringcache-resp",
            "redis+cluster://127.0.0.1:6479",
        ])
        .unwrap()
        .command
        else {
            panic!("suite");
        };
        let error = suite_command(&suite).unwrap_err().to_string();
        assert!(
            error.contains("--ringcache-resp wants a redis:// URL"),
            "{error}"
        );
    }

    #[test]
    fn bad_usage_exits_with_2_and_one_line() {
        for args in [
            &["--mix", "fetch=1"][..],
            &["--distribution", "pareto"],
            &["memcached://x:1"],
            &["--duration", "5s", "--requests", "3"],
            &["--rate", "fast"],
        ] {
            let error = parse(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
        assert!(
            run_config(&parse(&["--preset", "nope"]).unwrap().run)
                .unwrap_err()
                .to_string()
                .contains("unknown preset")
        );
        assert!(run_config(&parse(&["--connections", "0"]).unwrap().run).is_err());
    }

    #[test]
    fn rates_accept_suffixes() {
        assert_eq!(parse_rate("1500").unwrap(), 1500.0);
        assert_eq!(parse_rate("20k").unwrap(), 20_000.0);
        assert_eq!(parse_rate("1.5M/s").unwrap(), 1_500_000.0);
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn compare_and_presets_run_from_the_command_line() {
        assert_eq!(main(["ringbench", "presets"].map(OsString::from)), 0);
        assert_eq!(
            main(
                [
                    "ringbench",
                    "compare",
                    "/nonexistent/a.json",
                    "/nonexistent/b.json"
                ]
                .map(OsString::from)
            ),
            1
        );
        assert_eq!(main(["ringbench", "--bogus"].map(OsString::from)), 2);
    }

    #[test]
    fn tls_and_credential_flags_are_ringctls() {
        let cli = parse(&[
            "ringcache://127.0.0.1:7379",
            "--user",
            "bench",
            "--password-file",
            "/run/secret",
            "--tls-ca",
            "ca.pem",
            "--tls-server-name",
            "cache.internal",
        ])
        .unwrap();
        assert_eq!(cli.run.security.user.as_deref(), Some("bench"));
        assert_eq!(
            cli.run.security.tls_server_name.as_deref(),
            Some("cache.internal")
        );
        let Some(Command::Suite(args)) = parse(&[
            "suite",
            "--ringcache",
            "ringcache://127.0.0.1:7379",
            "--tls-ca",
            "ca.pem",
        ])
        .unwrap()
        .command
        else {
            panic!("expected suite")
        };
        assert!(args.security.tls_ca.is_some());
        // A key without its certificate, or a server name without a CA, is bad usage.
        assert_eq!(parse(&["--tls-key", "k.pem"]).unwrap_err().exit_code(), 2);
        assert_eq!(
            parse(&["--tls-server-name", "n"]).unwrap_err().exit_code(),
            2
        );
    }

    #[test]
    fn bad_tls_and_credential_flags_exit_with_2() {
        // A user without a secret; files that are not there; flags for a Redis target; flags
        // for the suite's own node. All before anything is dialed or started.
        for args in [
            &["ringbench", "ringcache://127.0.0.1:1", "--user", "bench"][..],
            &[
                "ringbench",
                "ringcache://127.0.0.1:1",
                "--tls-ca",
                "/nonexistent/ca.pem",
            ],
            &[
                "ringbench",
                "redis://127.0.0.1:1",
                "--tls-ca",
                "/nonexistent/ca.pem",
            ],
            &["ringbench", "suite", "--tls-ca", "/nonexistent/ca.pem"],
        ] {
            assert_eq!(main(args.iter().map(OsString::from)), 2, "{args:?}");
        }
    }
}
