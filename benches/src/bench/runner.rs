//! Drives one run: connects, optionally loads the key space, then keeps requests in flight on
//! every connection (closed loop) or sends them on a schedule (open loop), and gathers the
//! figures into a [`RunResult`].
//!
//! Each connection has one driver task that owns its operation generator, its in-flight requests
//! (a `FuturesUnordered`, no task per request) and its histograms; drivers share only the
//! per-second timeline (locked once per second each) and the stop flag. A driver generates its
//! operations in order, so the sequence of a connection is fixed by the seed even though answers
//! come back in any order.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream::FuturesUnordered};
use ringcache::ctl::Security;
use serde::{Deserialize, Serialize};

use crate::bench::{
    cpu::{ProcessCpu, ServerCpu},
    histo::{IntervalHistogram, LatencyHistogram, RequestTiming, Schedule},
    report::{ErrorTally, HarnessInfo, LoadResult, OpStats, RunResult, SecondSample},
    target::{
        ClientSettings, Connection, OpError, Outcome, RedisClusterTarget, RedisTarget,
        RingcacheTarget, Target, TargetUrl,
    },
    workload::{OpGenerator, OpKind, Operation, ValuePool, WorkloadSpec, load_batches},
};

/// Everything a run was asked to do; written whole into the JSON result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Where requests go.
    pub target: TargetUrl,
    /// The preset the workload started from, if any.
    pub preset: Option<String>,
    /// What requests are sent.
    pub workload: WorkloadSpec,
    /// Bench connections.
    pub connections: usize,
    /// Closed loop: requests in flight per connection.
    pub concurrency: usize,
    /// Open loop: requests per second in total (`None`: closed loop).
    pub rate: Option<f64>,
    /// Open loop: most requests in flight per connection; the schedule waits beyond it (and the
    /// wait counts in the latency).
    pub max_in_flight: usize,
    /// Measure for this long (ms). Exactly one of `duration_ms` and `requests` is set.
    pub duration_ms: Option<u64>,
    /// Measure this many requests.
    pub requests: Option<u64>,
    /// Run (unmeasured) for this long before measuring, ms.
    pub warmup_ms: u64,
    /// Fill the key space before the run.
    pub load: bool,
    /// Keys per mset in the load phase.
    pub load_batch: usize,
    /// Client settings.
    pub client: ClientSettings,
    /// Tokio worker threads of the harness (1: a current-thread runtime).
    pub threads: usize,
    /// Local server processes whose CPU time over the measured window is reported
    /// ([`RunResult::server_cpu`]); not part of the configuration's identity (pids differ
    /// between otherwise equal runs), so not written to JSON here.
    #[serde(skip)]
    pub server_pids: Vec<u32>,
}

impl RunConfig {
    /// A closed-loop run of `workload` against `target` for `duration`, with the defaults of the
    /// command line for everything else.
    pub fn new(target: TargetUrl, workload: WorkloadSpec, duration: Duration) -> Self {
        Self {
            target,
            preset: None,
            workload,
            connections: 10,
            concurrency: 5,
            rate: None,
            max_in_flight: 1000,
            duration_ms: Some(duration_ms(duration)),
            requests: None,
            warmup_ms: 1000,
            load: false,
            load_batch: 100,
            client: ClientSettings::default(),
            threads: 1,
            server_pids: Vec::new(),
        }
    }

    /// Checks the settings against each other.
    ///
    /// # Errors
    ///
    /// A one-line message naming the bad setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.workload.validate().map_err(anyhow::Error::msg)?;
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if self.max_in_flight == 0 {
            bail!("--max-in-flight must be at least 1");
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            bail!("--rate must be a positive number of requests per second, got {rate}");
        }
        match (self.duration_ms, self.requests) {
            (Some(0), _) => bail!("--duration must be longer than zero"),
            (_, Some(0)) => bail!("--requests must be at least 1"),
            (Some(_), Some(_)) => bail!("give --duration or --requests, not both"),
            (None, None) => bail!("give --duration or --requests"),
            _ => {}
        }
        if self.load_batch == 0 {
            bail!("--load-batch must be at least 1");
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        Ok(())
    }

    /// `closed` or `open`.
    pub fn load_model(&self) -> &'static str {
        if self.rate.is_some() {
            "open"
        } else {
            "closed"
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Runs `config` against its target. `progress`: draw a live line on stderr.
///
/// # Errors
///
/// An invalid configuration, a target that cannot be reached, or a load phase that failed.
/// Errors of single requests are counted in the result, not returned.
pub async fn run(config: &RunConfig, progress: bool) -> anyhow::Result<RunResult> {
    run_secured(config, &Security::default(), progress).await
}

/// [`run`], reaching a ringcache target with `security` (TLS and credentials; not part of the
/// configuration, so never written to result files).
///
/// # Errors
///
/// As [`run`].
pub async fn run_secured(
    config: &RunConfig,
    security: &Security,
    progress: bool,
) -> anyhow::Result<RunResult> {
    config.validate()?;
    match &config.target {
        TargetUrl::Ringcache { seeds } => {
            let target =
                RingcacheTarget::new(seeds.clone(), config.client).with_security(security.clone());
            let result = run_with(&target, config, progress).await;
            if let Some(near) = target.near_cache_totals() {
                eprintln!(
                    "near cache (whole run, all clients): hit rate {:.1}% ({} hits, {} misses), {} invalidations, {} flushes, {} entries, {} bytes charged",
                    100.0 * near.hits as f64 / (near.hits + near.misses).max(1) as f64,
                    near.hits,
                    near.misses,
                    near.invalidations,
                    near.flushes,
                    near.entries,
                    near.charged_bytes
                );
            }
            result
        }
        TargetUrl::Redis { url } => {
            let target = RedisTarget::new(url, config.client)
                .map_err(|e| anyhow::anyhow!("bad redis target {url}: {e}"))?;
            run_with(&target, config, progress).await
        }
        TargetUrl::RedisCluster { seeds } => {
            let target = RedisClusterTarget::new(seeds, config.client)
                .map_err(|e| anyhow::anyhow!("bad redis cluster target {}: {e}", config.target))?;
            run_with(&target, config, progress).await
        }
    }
}

/// Runs `config` against `target` (whatever `config.target` says).
///
/// # Errors
///
/// As [`run`].
pub async fn run_with<T: Target>(
    target: &T,
    config: &RunConfig,
    progress: bool,
) -> anyhow::Result<RunResult> {
    config.validate()?;
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms);
    let shared = Arc::new(Shared {
        timeline: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
    });
    // Ctrl-C from here on stops the run (the load phase too) and reports what was measured.
    let interrupt = {
        let shared = shared.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shared.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let result = measure(target, config, progress, &shared, started_unix_ms).await;
    interrupt.abort();
    result
}

async fn measure<T: Target>(
    target: &T,
    config: &RunConfig,
    progress: bool,
    shared: &Arc<Shared>,
    started_unix_ms: u64,
) -> anyhow::Result<RunResult> {
    let conns = connect_all(target, config).await?;
    let values = ValuePool::new(
        config.workload.seed,
        config.workload.value_size.max().max(1),
    );

    let load = if config.load {
        Some(load_key_space(&conns, config, &values, &shared.stop).await?)
    } else {
        None
    };

    let run_start = Instant::now();
    let measure_start = run_start + Duration::from_millis(config.warmup_ms);
    let end = config
        .duration_ms
        .map(|ms| measure_start + Duration::from_millis(ms));
    let drain_timeout =
        Duration::from_millis(config.client.request_timeout_ms) + Duration::from_secs(1);
    let connections = conns.len() as u64;
    let per_connection_budget = |i: u64| {
        config
            .requests
            .map(|n| n / connections + u64::from(i < n % connections))
    };

    // The servers' CPU time is sampled when measuring starts and once every answer is in.
    let cpu_before = (!config.server_pids.is_empty()).then(|| {
        let pids = config.server_pids.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_start.into()).await;
            ProcessCpu::sample(&pids)
        })
    });

    let mut drivers = Vec::with_capacity(conns.len());
    for (i, conn) in conns.into_iter().enumerate() {
        let i = i as u64;
        let plan = DriverPlan {
            run_start,
            measure_start,
            end,
            budget: per_connection_budget(i),
            concurrency: config.concurrency,
            schedule: config
                .rate
                .map(|rate| Schedule::new(run_start, rate, i, connections)),
            max_in_flight: config.max_in_flight,
            drain_timeout,
            kinds: config
                .workload
                .mix
                .weights()
                .iter()
                .map(|&(k, _)| k)
                .collect(),
            shared: shared.clone(),
        };
        let generator = OpGenerator::new(&config.workload, values.clone(), i, connections);
        drivers.push(tokio::spawn(drive(conn, generator, plan)));
    }

    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!(
            "{} {}: connecting",
            config.target.kind(),
            config.load_model()
        ));
        bar
    });
    let reporter = bar.clone().map(|bar| {
        let shared = shared.clone();
        let warmup = config.warmup_ms / 1000;
        tokio::spawn(report_progress(
            bar,
            shared,
            run_start,
            warmup,
            config.duration_ms,
        ))
    });
    let mut totals = DriverResult::new(
        &config
            .workload
            .mix
            .weights()
            .iter()
            .map(|&(k, _)| k)
            .collect::<Vec<_>>(),
    );
    for driver in drivers {
        let result = driver.await.context("a connection driver panicked")?;
        totals.merge(result);
    }
    let server_cpu = match cpu_before {
        Some(before) => {
            let before = before.await.context("the CPU sampler panicked")?;
            let after = ProcessCpu::sample(&config.server_pids);
            let answered = totals.ok + totals.errors.values().map(|t| t.count).sum::<u64>();
            match before.zip(after) {
                Some((before, after)) => {
                    ServerCpu::between(&config.server_pids, before, after, answered, totals.keys_ok)
                }
                None => bail!(
                    "cannot read the CPU time of server process(es) {:?} from /proc (gone?)",
                    config.server_pids
                ),
            }
        }
        None => None,
    };
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let interrupted = shared.stop.load(Ordering::Relaxed);
    let timeline = finish_timeline(shared, config.warmup_ms, run_start, totals.last_done_any);

    Ok(build_result(
        config,
        target.kind(),
        started_unix_ms,
        load,
        &totals,
        measure_start,
        timeline,
        interrupted,
    )
    .with_server_cpu(server_cpu))
}

async fn connect_all<T: Target>(target: &T, config: &RunConfig) -> anyhow::Result<Vec<T::Conn>> {
    let attempts = (0..config.connections).map(|_| target.connect());
    futures_util::future::try_join_all(attempts)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", config.target))
}

/// Fills keys `0..keys` with msets of `load_batch` keys, `concurrency` requests in flight per
/// connection. Not measured beyond its rate.
async fn load_key_space<C: Connection>(
    conns: &[C],
    config: &RunConfig,
    values: &ValuePool,
    stop: &AtomicBool,
) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let connections = conns.len() as u64;
    let per_connection = conns.iter().enumerate().map(|(i, conn)| {
        let batches = load_batches(
            &config.workload,
            values,
            config.load_batch,
            i as u64,
            connections,
        );
        load_one(conn, batches, config.concurrency.max(4), stop)
    });
    let parts = futures_util::future::join_all(per_connection).await;
    let mut result = LoadResult {
        keys: 0,
        elapsed_s: 0.0,
        keys_per_s: 0.0,
        errors: 0,
        first_error: None,
    };
    for (keys, errors, first_error) in parts {
        result.keys += keys;
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    result.keys_per_s = result.keys as f64 / result.elapsed_s.max(1e-9);
    if result.keys == 0 && result.errors > 0 {
        bail!(
            "loading the key space failed: {}",
            result.first_error.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(result)
}

async fn load_one<C: Connection>(
    conn: &C,
    mut batches: impl Iterator<Item = Operation>,
    in_flight: usize,
    stop: &AtomicBool,
) -> (u64, u64, Option<String>) {
    let mut pending = FuturesUnordered::new();
    let (mut keys, mut errors, mut first_error) = (0u64, 0u64, None);
    loop {
        while pending.len() < in_flight && !stop.load(Ordering::Relaxed) {
            let Some(op) = batches.next() else { break };
            let count = op.key_count() as u64;
            pending.push(async move { (count, conn.execute(op).await) });
        }
        let Some((count, result)) = pending.next().await else {
            break;
        };
        match result {
            Ok(_) => keys += count,
            Err(error) => {
                errors += 1;
                first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    (keys, errors, first_error)
}

/// State shared by the drivers of one run.
#[derive(Debug)]
struct Shared {
    /// Per second since the run's start (warmup included): completions, errors, latencies.
    timeline: Mutex<BTreeMap<u64, SecondAcc>>,
    /// Set on Ctrl-C: stop sending, drain, report.
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct SecondAcc {
    ops: u64,
    errors: u64,
    hist: IntervalHistogram,
}

/// What one driver must do.
#[derive(Debug)]
struct DriverPlan {
    run_start: Instant,
    measure_start: Instant,
    /// Duration mode: requests starting at or after this are not sent.
    end: Option<Instant>,
    /// Request mode: measured requests this connection sends.
    budget: Option<u64>,
    concurrency: usize,
    schedule: Option<Schedule>,
    max_in_flight: usize,
    drain_timeout: Duration,
    kinds: Vec<OpKind>,
    shared: Arc<Shared>,
}

impl DriverPlan {
    /// Whether a request starting at `start` (sent, or intended in an open loop) may go, given
    /// how many measured requests went already. Warmup requests never count against the budget.
    fn may_start(&self, start: Instant, measured_sent: u64) -> bool {
        if self.shared.stop.load(Ordering::Relaxed) {
            return false;
        }
        if self.end.is_some_and(|end| start >= end) {
            return false;
        }
        match self.budget {
            Some(budget) if start >= self.measure_start => measured_sent < budget,
            _ => true,
        }
    }
}

/// One request's answer and its timing.
struct Completion {
    kind: OpKind,
    keys: u32,
    measured: bool,
    timing: RequestTiming,
    result: Result<Outcome, OpError>,
}

fn timed<C: Connection>(
    conn: &C,
    op: Operation,
    intended: Option<Instant>,
    sent: Instant,
    measured: bool,
) -> impl Future<Output = Completion> + Send + '_ {
    let kind = op.kind();
    let keys = op.key_count() as u32;
    async move {
        let result = conn.execute(op).await;
        Completion {
            kind,
            keys,
            measured,
            timing: RequestTiming {
                intended,
                sent,
                done: Instant::now(),
            },
            result,
        }
    }
}

/// A driver's figures.
#[derive(Debug)]
struct DriverResult {
    sent: u64,
    ok: u64,
    latency: LatencyHistogram,
    by_kind: Vec<Option<(u64, u64, LatencyHistogram)>>,
    errors: BTreeMap<&'static str, ErrorTally>,
    hits: u64,
    misses: u64,
    keys_ok: u64,
    send_lag: LatencyHistogram,
    abandoned: u64,
    last_done: Option<Instant>,
    last_done_any: Option<Instant>,
}

impl DriverResult {
    fn new(kinds: &[OpKind]) -> Self {
        let mut by_kind: Vec<Option<(u64, u64, LatencyHistogram)>> =
            OpKind::ALL.iter().map(|_| None).collect();
        for kind in kinds {
            by_kind[kind.index()] = Some((0, 0, LatencyHistogram::new()));
        }
        Self {
            sent: 0,
            ok: 0,
            latency: LatencyHistogram::new(),
            by_kind,
            errors: BTreeMap::new(),
            hits: 0,
            misses: 0,
            keys_ok: 0,
            send_lag: LatencyHistogram::new(),
            abandoned: 0,
            last_done: None,
            last_done_any: None,
        }
    }

    fn error(&mut self, kind: &'static str, message: impl FnOnce() -> String, count: u64) {
        let tally = self.errors.entry(kind).or_insert_with(|| ErrorTally {
            count: 0,
            example: message(),
        });
        tally.count += count;
    }

    fn merge(&mut self, other: DriverResult) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.latency.merge(&other.latency);
        for (mine, theirs) in self.by_kind.iter_mut().zip(other.by_kind) {
            if let Some((count, errors, hist)) = theirs {
                let slot = mine.get_or_insert_with(|| (0, 0, LatencyHistogram::new()));
                slot.0 += count;
                slot.1 += errors;
                slot.2.merge(&hist);
            }
        }
        for (kind, tally) in other.errors {
            let mine = self.errors.entry(kind).or_insert_with(|| ErrorTally {
                count: 0,
                example: tally.example.clone(),
            });
            mine.count += tally.count;
        }
        self.hits += other.hits;
        self.misses += other.misses;
        self.keys_ok += other.keys_ok;
        self.send_lag.merge(&other.send_lag);
        self.abandoned += other.abandoned;
        self.last_done = self.last_done.max(other.last_done);
        self.last_done_any = self.last_done_any.max(other.last_done_any);
    }
}

/// The current second's figures of one driver, handed to the shared timeline when the second
/// is over.
struct IntervalAcc {
    second: u64,
    ops: u64,
    errors: u64,
    hist: IntervalHistogram,
}

impl IntervalAcc {
    fn flush(&mut self, shared: &Shared) {
        if self.ops > 0 {
            let mut timeline = shared.timeline.lock().unwrap_or_else(|p| p.into_inner());
            let slot = timeline.entry(self.second).or_default();
            slot.ops += self.ops;
            slot.errors += self.errors;
            slot.hist.merge(&self.hist);
        }
        self.ops = 0;
        self.errors = 0;
        self.hist.reset();
    }

    fn add(&mut self, second: u64, latency: Duration, error: bool, shared: &Shared) {
        if second != self.second {
            self.flush(shared);
            self.second = second;
        }
        self.ops += 1;
        if error {
            self.errors += 1;
        } else {
            self.hist.record(latency);
        }
    }
}

/// How often a driver hands a finished second to the timeline when no answer arrives.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// An open-loop driver sleeps (tokio's timer has 1 ms granularity) until this close to the next
/// send time, then yields in a loop, so requests leave within microseconds of their schedule.
const SPIN_WINDOW: Duration = Duration::from_micros(1500);

async fn wait_until(when: Instant) {
    let now = Instant::now();
    if when > now + SPIN_WINDOW {
        tokio::time::sleep_until((when - Duration::from_millis(1)).into()).await;
    }
    while Instant::now() < when {
        tokio::task::yield_now().await;
    }
}

async fn drive<C: Connection>(
    conn: C,
    mut generator: OpGenerator,
    plan: DriverPlan,
) -> DriverResult {
    let mut result = DriverResult::new(&plan.kinds);
    let mut interval = IntervalAcc {
        second: 0,
        ops: 0,
        errors: 0,
        hist: IntervalHistogram::new(),
    };
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut in_flight = FuturesUnordered::new();
    let mut measured_sent = 0u64;
    let mut slot = 0u64;
    let mut issuing = true;
    let mut drain_deadline: Option<Instant> = None;

    loop {
        // Send what may be sent now.
        if issuing {
            match plan.schedule {
                None => {
                    while in_flight.len() < plan.concurrency {
                        let now = Instant::now();
                        if !plan.may_start(now, measured_sent) {
                            issuing = false;
                            break;
                        }
                        let measured = now >= plan.measure_start;
                        measured_sent += u64::from(measured);
                        in_flight.push(timed(&conn, generator.next_op(), None, now, measured));
                    }
                }
                Some(schedule) => {
                    while in_flight.len() < plan.max_in_flight {
                        let intended = schedule.intended(slot);
                        if !plan.may_start(intended, measured_sent) {
                            issuing = false;
                            break;
                        }
                        let now = Instant::now();
                        if intended > now {
                            break;
                        }
                        let measured = intended >= plan.measure_start;
                        measured_sent += u64::from(measured);
                        slot += 1;
                        in_flight.push(timed(
                            &conn,
                            generator.next_op(),
                            Some(intended),
                            now,
                            measured,
                        ));
                    }
                }
            }
        }
        if !issuing {
            if in_flight.is_empty() {
                break;
            }
            let deadline =
                *drain_deadline.get_or_insert_with(|| Instant::now() + plan.drain_timeout);
            if Instant::now() >= deadline {
                result.abandoned += in_flight.len() as u64;
                let count = in_flight.len() as u64;
                result.error(
                    "abandoned",
                    || {
                        format!(
                            "no answer within {:?} after the run ended",
                            plan.drain_timeout
                        )
                    },
                    count,
                );
                break;
            }
        }
        let next_send = match plan.schedule {
            Some(schedule) if issuing && in_flight.len() < plan.max_in_flight => {
                Some(schedule.intended(slot))
            }
            _ => None,
        };
        let deadline = drain_deadline;
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                record(&mut result, &mut interval, &plan, done);
            }
            () = wait_until(next_send.unwrap_or_else(Instant::now)), if next_send.is_some() => {}
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {}
            _ = flush.tick() => {
                let second = plan.run_start.elapsed().as_secs();
                if second > interval.second {
                    interval.flush(&plan.shared);
                    interval.second = second;
                }
            }
        }
    }
    interval.flush(&plan.shared);
    result
}

fn record(
    result: &mut DriverResult,
    interval: &mut IntervalAcc,
    plan: &DriverPlan,
    done: Completion,
) {
    let latency = done.timing.latency();
    let second = done
        .timing
        .done
        .saturating_duration_since(plan.run_start)
        .as_secs();
    interval.add(second, latency, done.result.is_err(), &plan.shared);
    result.last_done_any = result.last_done_any.max(Some(done.timing.done));
    if !done.measured {
        return;
    }
    result.sent += 1;
    result.last_done = result.last_done.max(Some(done.timing.done));
    if plan.schedule.is_some() {
        result.send_lag.record(done.timing.send_lag());
    }
    let slot =
        result.by_kind[done.kind.index()].get_or_insert_with(|| (0, 0, LatencyHistogram::new()));
    slot.0 += 1;
    match done.result {
        Ok(outcome) => {
            slot.2.record(latency);
            result.latency.record(latency);
            result.ok += 1;
            result.hits += u64::from(outcome.hits);
            result.misses += u64::from(outcome.misses);
            result.keys_ok += u64::from(done.keys);
        }
        Err(error) => {
            slot.1 += 1;
            result.error(error.kind, || error.message.clone(), 1);
        }
    }
}

async fn report_progress(
    bar: indicatif::ProgressBar,
    shared: Arc<Shared>,
    run_start: Instant,
    warmup_s: u64,
    duration_ms: Option<u64>,
) {
    let total = duration_ms.map(|ms| warmup_s + ms.div_ceil(1000));
    let mut second = 1u64;
    loop {
        // Read second N-1 a little after second N starts, once every driver has flushed it.
        tokio::time::sleep_until(
            (run_start + Duration::from_secs(second) + FLUSH_EVERY * 2).into(),
        )
        .await;
        let (ops, errors, p99) = {
            let timeline = shared.timeline.lock().unwrap_or_else(|p| p.into_inner());
            timeline.get(&(second - 1)).map_or((0, 0, 0.0), |s| {
                (s.ops, s.errors, s.hist.percentile_us(99.0))
            })
        };
        let phase = if second <= warmup_s {
            "warmup"
        } else {
            "measuring"
        };
        let clock = match total {
            Some(total) => format!("{second}/{total}s"),
            None => format!("{second}s"),
        };
        bar.set_message(format!(
            "{phase} {clock}  {} ops/s  p99 {}  errors {errors}",
            crate::bench::report::fmt_count(ops as f64),
            crate::bench::report::fmt_us(p99)
        ));
        bar.tick();
        second += 1;
    }
}

fn finish_timeline(
    shared: &Shared,
    warmup_ms: u64,
    run_start: Instant,
    last_done: Option<Instant>,
) -> Vec<SecondSample> {
    let timeline = shared.timeline.lock().unwrap_or_else(|p| p.into_inner());
    let end_s = last_done.map_or(0.0, |t| {
        t.saturating_duration_since(run_start).as_secs_f64()
    });
    timeline
        .iter()
        .map(|(&second, acc)| {
            let span_s = (end_s - second as f64).clamp(1e-3, 1.0);
            SecondSample {
                second,
                span_s,
                ops: acc.ops,
                errors: acc.errors,
                ops_per_s: acc.ops as f64 / span_s,
                p50_us: acc.hist.percentile_us(50.0),
                p99_us: acc.hist.percentile_us(99.0),
                warmup: (second + 1) * 1000 <= warmup_ms,
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn build_result(
    config: &RunConfig,
    kind: &str,
    started_unix_ms: u64,
    load: Option<LoadResult>,
    totals: &DriverResult,
    measure_start: Instant,
    timeline: Vec<SecondSample>,
    interrupted: bool,
) -> RunResult {
    let elapsed_s = totals.last_done.map_or(0.0, |t| {
        t.saturating_duration_since(measure_start).as_secs_f64()
    });
    let per_s = |n: u64| {
        if elapsed_s > 0.0 {
            n as f64 / elapsed_s
        } else {
            0.0
        }
    };
    let reads = totals.hits + totals.misses;
    let ops = OpKind::ALL
        .iter()
        .zip(&totals.by_kind)
        .filter_map(|(kind, slot)| {
            slot.as_ref().map(|(count, errors, hist)| {
                (
                    kind.name().to_owned(),
                    OpStats {
                        count: *count,
                        errors: *errors,
                        latency: hist.summary(),
                    },
                )
            })
        })
        .collect();
    let errors = totals.errors.values().map(|t| t.count).sum();
    RunResult {
        format: crate::bench::report::FORMAT_VERSION,
        tool: format!("ringbench {}", env!("CARGO_PKG_VERSION")),
        label: kind.to_owned(),
        target_kind: kind.to_owned(),
        config: config.clone(),
        started_unix_ms,
        harness: HarnessInfo::current(config.threads),
        load,
        elapsed_s,
        requests: totals.sent + totals.abandoned,
        ok: totals.ok,
        errors,
        errors_by_kind: totals
            .errors
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        throughput: per_s(totals.ok),
        keys_per_s: per_s(totals.keys_ok),
        hits: totals.hits,
        misses: totals.misses,
        hit_ratio: (reads > 0).then(|| totals.hits as f64 / reads as f64),
        latency: totals.latency.summary(),
        percentiles: totals.latency.curve(),
        ops,
        send_lag: config.rate.map(|_| totals.send_lag.summary()),
        timeline,
        interrupted,
        other_cpus: None,
        server_cpu: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RunConfig {
        RunConfig::new(
            "ringcache://127.0.0.1:1".parse().unwrap(),
            WorkloadSpec {
                mix: "get=1".parse().unwrap(),
                keys: 10,
                distribution: crate::bench::workload::KeyDistribution::Uniform,
                value_size: crate::bench::workload::ValueSize::Fixed(10),
                ttl_ms: None,
                batch: 1,
                seed: 1,
            },
            Duration::from_secs(1),
        )
    }

    #[test]
    fn configs_are_checked() {
        assert!(config().validate().is_ok());
        let mut both = config();
        both.requests = Some(5);
        assert!(
            both.validate()
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
        let mut rate = config();
        rate.rate = Some(-1.0);
        assert!(rate.validate().is_err());
        let mut none = config();
        none.connections = 0;
        assert!(
            none.validate()
                .unwrap_err()
                .to_string()
                .contains("--connections")
        );
        assert_eq!(config().load_model(), "closed");
    }

    #[test]
    fn budgets_ignore_warmup_and_stop_at_the_end() {
        let start = Instant::now();
        let plan = DriverPlan {
            run_start: start,
            measure_start: start + Duration::from_secs(1),
            end: None,
            budget: Some(2),
            concurrency: 1,
            schedule: None,
            max_in_flight: 1,
            drain_timeout: Duration::from_secs(1),
            kinds: vec![OpKind::Get],
            shared: Arc::new(Shared {
                timeline: Mutex::new(BTreeMap::new()),
                stop: AtomicBool::new(false),
            }),
        };
        // During warmup the budget does not apply.
        assert!(plan.may_start(start, 5));
        assert!(plan.may_start(start + Duration::from_secs(2), 1));
        assert!(!plan.may_start(start + Duration::from_secs(2), 2));
        plan.shared.stop.store(true, Ordering::Relaxed);
        assert!(!plan.may_start(start, 0));
        let timed = DriverPlan {
            end: Some(start + Duration::from_secs(3)),
            budget: None,
            shared: Arc::new(Shared {
                timeline: Mutex::new(BTreeMap::new()),
                stop: AtomicBool::new(false),
            }),
            ..plan
        };
        assert!(timed.may_start(start + Duration::from_secs(2), 1_000_000));
        assert!(!timed.may_start(start + Duration::from_secs(3), 0));
    }
}
