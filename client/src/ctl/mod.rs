//! `ringctl`, the admin CLI of a ringcache cluster, as a library module (feature `cli`).
//!
//! [`run`] parses the arguments and runs one command against the node named by `--cluster`
//! (env `RINGCACHE_CLUSTER`, default `127.0.0.1:7379`), writing to the streams it is given, so
//! tests can drive it in-process; the `ringctl` binary calls [`run_main`] with the process's own
//! streams.
//!
//! Exit codes: `0` success, `1` error (one line on stderr, `ringctl: <message>`, and with
//! `--output json` the document `{"error": "<message>"}` on stdout; also a `drain`
//! that ran out of time and a `forget` some member did not carry out), `2` usage error (clap's
//! message: what is missing or wrong, a suggestion for a typo, the values allowed; or a bad TLS
//! or credential flag: a `--user` without a secret, a file that cannot be read), `3` the key does
//! not exist (`get`, `ttl`: `{"found": false, ...}` with `--output json`; `get` prints nothing on
//! stdout and says so on stderr, `ttl` prints `not found`).
//!
//! TLS and credentials ([`SecurityArgs`]): `--user`, `--password-file` (or the environment
//! variable `RINGCACHE_PASSWORD`), `--tls`, `--tls-ca`, `--tls-cert`, `--tls-key`,
//! `--tls-server-name`. They apply to every connection ringctl makes, through the routing
//! client and directly to each node.
//!
//! Commands: `status`, `ring`, `locate KEY`, `get`/`set`/`del`/`ttl`/`incr`, `stats [NODE]`,
//! `drain NODE`, `forget NODE`, `rebalance status`, `hotkeys`, `watch`, `completions SHELL`. Each command
//! builds one value for its outcome (misses and partial failures included) and prints it as
//! aligned tables or lines by default (colour only on a terminal) or as one JSON document with
//! `--output json` (`watch`: one JSON document per line, per topology).

use std::{
    io::{IsTerminal, Read, Write},
    time::Duration,
};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum, error::ErrorKind};

use crate::{Client, Consistency};

mod cluster;
mod fmt;
mod hotkeys;
mod kv;
mod metrics;
mod node;
#[cfg(test)]
mod reference;
mod ring;
mod security;
mod stats;
mod view;
mod watch;
mod zones;

pub use metrics::STATS_FAMILIES;
use node::{Dial, NodeConn, one_line};
pub use security::{PASSWORD_ENV, Security, SecurityArgs, SecurityArgsError};

/// Exit code of a successful command.
pub const EXIT_OK: i32 = 0;
/// Exit code of a failed command (the reason is one line on stderr; with `--output json` the
/// outcome may also be on stdout, e.g. a `drain` that ran out of time).
pub const EXIT_ERROR: i32 = 1;
/// Exit code of a command line that does not parse.
pub const EXIT_USAGE: i32 = 2;
/// Exit code of `get` and `ttl` when the key does not exist.
pub const EXIT_MISSING: i32 = 3;
/// Exit code of `status --check` when the cluster is degraded.
pub const EXIT_DEGRADED: i32 = 1;
/// Exit code of `status --check` when the `--cluster` node cannot be reached.
pub const EXIT_UNREACHABLE: i32 = 2;

const EXIT_HELP: &str = "\
Output:
  Text by default (tables, colour only on a terminal); with -o json one JSON document per
  command for every outcome, misses and failures included (watch: one line per topology;
  a failed command prints {\"error\": \"<message>\"} as well as its line on stderr).

Exit status:
  0  success
  1  error: one line on stderr, \"ringctl: <message>\" (also: drain ran out of time,
     forget was not carried out by every member)
  2  usage error: what is missing or wrong, suggestions, allowed values (also --user
     without a secret, a TLS or password file that cannot be read)
  3  the key does not exist (get, ttl); JSON {\"found\": false, ...}; get prints nothing
     on stdout and says so on stderr, ttl prints \"not found\"
status --check: 0 healthy, 1 degraded, 2 the --cluster node cannot be reached";

/// Administer and query a ringcache cluster.
#[derive(Debug, Parser)]
#[command(name = "ringctl", version, after_help = EXIT_HELP, arg_required_else_help = true)]
struct Cli {
    /// gRPC address (host:port) of any node of the cluster.
    #[arg(
        long,
        global = true,
        env = "RINGCACHE_CLUSTER",
        default_value = "127.0.0.1:7379",
        value_name = "HOST:PORT"
    )]
    cluster: String,

    /// Output format: aligned tables, or one JSON document per command.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Human)]
    output: Output,

    /// Bound on connecting to a node and on each request (humantime: 500ms, 5s, 1m).
    #[arg(long, global = true, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,

    #[command(flatten)]
    security: SecurityArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ConsistencyArg {
    One,
    Quorum,
    All,
}

impl From<ConsistencyArg> for Consistency {
    fn from(value: ConsistencyArg) -> Self {
        match value {
            ConsistencyArg::One => Consistency::One,
            ConsistencyArg::Quorum => Consistency::Quorum,
            ConsistencyArg::All => Consistency::All,
        }
    }
}

/// Options of the key-value commands.
#[derive(Debug, clap::Args)]
struct KvOptions {
    /// Consistency of the request (default: the cluster's, quorum for writes and one for reads).
    #[arg(long, value_enum)]
    consistency: Option<ConsistencyArg>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every member: state (`left` for a drained member, `dead` for a failed one), addresses,
    /// incarnation, keys, memory, hits/misses (reads/s with `--rate`), topology digest
    /// agreement, and a verdict: `healthy` or `degraded: why` — a member down or suspect, a
    /// member that owned ranges and is gone (`missing` until it returns or is `forget`-ten),
    /// fewer serving members than expected (`--expected-nodes`), hash slots with fewer than R
    /// serving replicas, members refused for other placement settings, digests that disagree.
    /// With zones: each member's zone and warnings when some members have no zone, when there
    /// are fewer zones than R, or when zones are uneven while R ≥ zones (the nodes of the
    /// smallest zone carry more: by how much); slot ranges whose copies share a zone while
    /// another zone holds none (never made by the placement rule: a bug) make it degraded.
    /// `--check` exits 0 healthy, 1 degraded, 2 unreachable.
    Status {
        /// Also measure reads per second (hits + misses) over one second on each node.
        #[arg(long)]
        rate: bool,
        /// For scripts and probes: exit 0 when healthy, 1 when degraded, 2 when the --cluster
        /// node cannot be reached.
        #[arg(long)]
        check: bool,
    },
    /// Each node's vnodes and share of keys as primary and as any replica (from sampled keys),
    /// R, and the keys each holds; with zones, each node's zone, the zones, and the warnings of
    /// `status`.
    Ring {
        /// Synthetic keys placed to estimate the shares.
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
        samples: u32,
    },
    /// The key's hash, its replica set in order (with each replica's zone when there are
    /// zones), and what each replica holds (version, expiry): stale or missing copies show.
    Locate {
        /// The key (UTF-8).
        key: String,
    },
    /// Print a key's value: the raw bytes on stdout with no newline added (binary-safe). With
    /// `--output json`: {"key", "found", "value", "encoding": "utf8"|"base64", "version",
    /// "ttl_ms"}. A missing key exits with status 3: nothing on stdout and a line on stderr, or
    /// {"found": false} with the other fields null in JSON.
    Get {
        /// The key (UTF-8).
        key: String,
        #[command(flatten)]
        options: KvOptions,
    },
    /// Store a value, given as the VALUE argument, or read from a file (--file PATH) or from
    /// stdin (--stdin) to its end (binary-safe). Exactly one of the three is required: a `set`
    /// with no value is refused rather than storing an empty one.
    #[command(
        override_usage = "ringctl set [OPTIONS] <KEY> <VALUE|--file <PATH>|--stdin>",
        group(
            clap::ArgGroup::new("source")
                .args(["value", "file", "stdin"])
                .required(true)
        )
    )]
    Set {
        /// The key (UTF-8).
        key: String,
        /// The value (UTF-8); for binary values use --file or --stdin.
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, value_name = "PATH")]
        file: Option<std::path::PathBuf>,
        /// Read the value from stdin, to its end (an empty stdin stores an empty value).
        #[arg(long)]
        stdin: bool,
        /// Expire the key after this long (humantime: 10s, 5m).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        options: KvOptions,
    },
    /// Delete a key (prints whether it existed; exits 0 either way).
    #[command(alias = "delete")]
    Del {
        /// The key (UTF-8).
        key: String,
        #[command(flatten)]
        options: KvOptions,
    },
    /// A key's remaining time to live ("persistent" when it has none). A missing key prints
    /// "not found" ({"found": false} in JSON) and exits with status 3.
    Ttl {
        /// The key (UTF-8).
        key: String,
        #[command(flatten)]
        options: KvOptions,
    },
    /// Add DELTA (default 1, may be negative) to the integer at a key and print the result.
    Incr {
        /// The key (UTF-8).
        key: String,
        /// The amount to add.
        #[arg(allow_negative_numbers = true, default_value_t = 1)]
        delta: i64,
        /// TTL given to the key when this call creates it.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        options: KvOptions,
    },
    /// A node's counters, readiness (and why not), connections (open, max, rejected), forwarded
    /// requests, hints pending, replication lag, its clock against the cluster's, the known
    /// members, anti-entropy (rounds, buckets differing, keys pulled and pushed, the last
    /// round), its data movement with an ETA, and the replica-write/read-repair/hint series of
    /// its `/metrics`.
    Stats {
        /// A node id from the topology (default: the --cluster node).
        node: Option<String>,
    },
    /// Graceful leave with progress until the node is gone from the topology
    /// (`--timeout-drain`), then what it handed off: the keys it held, the entries and bytes
    /// sent, per receiving member (the node stops serving before its hand-off, so the members
    /// that receive the entries count them; `counts_complete: false` when one did not answer)
    /// and exit 0; exit 1 if it is still leaving after `--timeout-drain` (JSON: `"drained":
    /// false`). Not on Kubernetes: the kubelet restarts the pod, which joins again; scale the
    /// StatefulSet down instead (deploy/README.md). With `--restart`: stop the node for a quick
    /// restart (upgrade, config change, host reboot) instead: it writes its data to a snapshot
    /// in its `--data-dir`, hands nothing off and stops; the other members keep its ranges
    /// (`restarting` in `status`) for their `--restart-grace` (60 s by default). Start it again
    /// with the same `--node-id` and `--data-dir` within that time and it serves its keys at
    /// once and pulls only what changed meanwhile (README, Warm restarts). Exits 0 once the
    /// node has stopped and the cluster shows it `restarting`; refused (exit 1) by a node
    /// without a data directory.
    Drain {
        /// The node id.
        node: String,
        /// Give up waiting after this long (the node keeps leaving).
        #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = parse_duration)]
        timeout_drain: Duration,
        /// Stop the node for a quick restart instead: it keeps its data in a snapshot in its
        /// data directory and hands nothing off, and the other members keep its ranges for
        /// their restart grace (60s by default). Start it again with the same node id and data
        /// directory within that time: it reloads its data and pulls only what changed. Exits 0
        /// once the node has stopped (the cluster shows it `restarting`).
        #[arg(long)]
        restart: bool,
    },
    /// For a member that died and will not come back: every member stops counting it in the
    /// cluster's known size, which QUORUM and ALL are measured against (a dead or cut-off
    /// member stays counted, so a minority never acknowledges QUORUM writes). Refused for a
    /// live member (drain it instead); exits 1 if some member did not answer (run it again once
    /// it does).
    Forget {
        /// The node id.
        node: String,
    },
    /// Every member's heaviest keys in its last complete hot-key window (`--hot-keys-window`),
    /// merged (a key several members report is summed): key (escaped for the terminal; in JSON
    /// base64 with `"encoding": "base64"` when not UTF-8), requests/s, share of all requests,
    /// error bound (the true count is at least requests − error), reads, writes, and the
    /// members that reported it. `--limit` is at most the nodes' `--hot-keys-capacity`; exits 1
    /// when a member did not answer (or has tracking off).
    Hotkeys {
        /// Most keys to show (each member returns at most this many; at most its
        /// --hot-keys-capacity).
        #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
        limit: u32,
    },
    /// Data movement after ring changes.
    Rebalance {
        #[command(subcommand)]
        command: RebalanceCommand,
    },
    /// Topology changes as they happen: the topology, then every new one, until Ctrl-C or the
    /// stream ends (JSON: one line per topology).
    Watch {
        /// Stop after this many topologies.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Print a shell completion script (e.g. `ringctl completions bash > /etc/bash_completion.d/ringctl`;
    /// JSON: {"shell", "script"}).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum RebalanceCommand {
    /// Every member's data movement: phase, keys scanned/total (the entries of the moving slots
    /// the pass reads, tombstones included; the total is estimated at the start and never less
    /// than scanned), sent, received, bytes done, recent rate, ETA (bytes left / rate of the
    /// last 10 s; `unknown` while joining or stalled), failures, and what leaving members
    /// handed off to it.
    Status,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("bad duration {text:?}: {e} (examples: 500ms, 5s, 10m)"))?;
    if duration.is_zero() {
        return Err(format!("bad duration {text:?}: must be greater than zero"));
    }
    Ok(duration)
}

/// Whether the output streams are a terminal: colour on stdout, progress bars on stderr.
#[derive(Debug, Clone, Copy, Default)]
struct Terminal {
    color: bool,
    progress: bool,
}

/// What every command gets: the global options and the streams.
struct Ctx<'a> {
    cluster: String,
    json: bool,
    timeout: Duration,
    /// Timeout, TLS and credentials of every connection.
    dial: Dial,
    term: Terminal,
    stdin: &'a mut dyn Read,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
}

impl Ctx<'_> {
    /// A connection to the `--cluster` node.
    async fn home(&self) -> anyhow::Result<NodeConn> {
        Ok(self.dial.connect(&self.cluster).await?)
    }

    /// A routing client through the `--cluster` node.
    async fn client(&self, options: &KvOptions) -> anyhow::Result<Client> {
        // Our own connection first: its error names the node and the reason in one line.
        self.home().await?;
        let builder = Client::builder()
            .seeds([&self.cluster])
            .connect_timeout(self.timeout)
            .request_timeout(self.timeout);
        let client = self.dial.security.apply(builder).connect().await?;
        Ok(client.with_consistency(options.consistency.map(Consistency::from)))
    }

    /// Writes human output.
    fn print(&mut self, text: &str) -> anyhow::Result<()> {
        self.out.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Prints one of a stream of results: as one compact JSON document on its own line
    /// (NDJSON), or as text.
    fn emit_line(&mut self, view: &impl view::View) -> anyhow::Result<()> {
        if self.json {
            serde_json::to_writer(&mut *self.out, view)?;
            self.out.write_all(b"\n")?;
        } else {
            self.out.write_all(&view.human(self.color()).stdout)?;
        }
        Ok(())
    }

    fn color(&self) -> bool {
        self.term.color
    }

    /// Prints a command's result with the renderer `--output` chose (one pretty JSON document,
    /// or its text) and returns the exit status of that outcome.
    fn emit(&mut self, view: &impl view::View) -> anyhow::Result<i32> {
        if self.json {
            serde_json::to_writer_pretty(&mut *self.out, view)?;
            self.out.write_all(b"\n")?;
        } else {
            let human = view.human(self.color());
            self.out.write_all(&human.stdout)?;
            if let Some(note) = human.note {
                self.out.flush()?;
                writeln!(self.err, "ringctl: {}", one_line(&note))?;
            }
        }
        if let Some(failure) = view.failure() {
            self.out.flush()?;
            writeln!(self.err, "ringctl: {}", one_line(&failure))?;
        }
        Ok(view.exit_code())
    }
}

/// Runs ringctl with `args` (the arguments after the program name) on the given streams, and
/// returns the exit code. Output is never treated as a terminal: no colour, no progress bars.
///
/// ```no_run
/// # async fn demo() {
/// let mut out = Vec::new();
/// let mut err = Vec::new();
/// let code = ringcache::ctl::run(
///     vec!["--cluster".into(), "127.0.0.1:7379".into(), "status".into()],
///     &mut std::io::empty(),
///     &mut out,
///     &mut err,
/// )
/// .await;
/// assert_eq!(code, 0);
/// # }
/// ```
pub async fn run(
    args: Vec<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    run_with(args, stdin, stdout, stderr, Terminal::default()).await
}

/// Runs ringctl on the process's arguments and standard streams (what the `ringctl` binary
/// does); colour when stdout is a terminal and `NO_COLOR` is unset, progress bars when stderr is
/// a terminal. Returns the exit code.
pub async fn run_main() -> i32 {
    let mut stderr = std::io::stderr();
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => {
                let _ = writeln!(stderr, "ringctl: argument {arg:?} is not valid UTF-8");
                return EXIT_USAGE;
            }
        }
    }
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let term = Terminal {
        color: std::io::stdout().is_terminal() && !no_color,
        progress: std::io::stderr().is_terminal(),
    };
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    let mut stdout = std::io::stdout().lock();
    let code = run_with(args, &mut stdin, &mut stdout, &mut stderr, term).await;
    match stdout.flush() {
        Ok(()) => code,
        Err(error) if code == EXIT_OK => {
            let _ = writeln!(stderr, "ringctl: cannot write output: {error}");
            EXIT_ERROR
        }
        Err(_) => code,
    }
}

async fn run_with(
    args: Vec<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    term: Terminal,
) -> i32 {
    let cli = match cli_command()
        .try_get_matches_from(std::iter::once("ringctl".to_owned()).chain(args))
        .and_then(|mut matches| Cli::from_arg_matches_mut(&mut matches))
    {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error, stdout, stderr, term),
    };
    // Completions need no node, so no secret either.
    let security = if matches!(cli.command, Command::Completions { .. }) {
        Security::default()
    } else {
        match cli.security.load() {
            Ok(security) => security,
            Err(error) => {
                let _ = writeln!(stderr, "ringctl: {}", one_line(&error.to_string()));
                return EXIT_USAGE;
            }
        }
    };
    let tls = security.is_tls();
    let mut ctx = Ctx {
        cluster: String::new(),
        json: cli.output == Output::Json,
        timeout: cli.timeout,
        dial: Dial {
            timeout: cli.timeout,
            security,
        },
        term,
        stdin,
        out: stdout,
        err: stderr,
    };
    let result = match crate::conn::parse_seeds_for([&cli.cluster], tls) {
        Ok(mut seeds) => {
            ctx.cluster = seeds.remove(0);
            dispatch(&mut ctx, cli.command).await
        }
        Err(error) => {
            let message = error.to_string();
            let message = message
                .strip_prefix("invalid argument: seed ")
                .unwrap_or(&message);
            Err(anyhow::anyhow!("bad --cluster address {message}"))
        }
    };
    let flushed = ctx.out.flush();
    let flushed_ok = flushed.is_ok();
    match result.and_then(|code| {
        flushed?;
        Ok(code)
    }) {
        Ok(code) => code,
        Err(error) => {
            let message = match error.downcast_ref::<crate::Error>() {
                Some(error) => client_error(error, &ctx.cluster, ctx.dial.security.user()),
                None => format!("{error:#}"),
            };
            let message = one_line(&message);
            // A failure is an outcome too: scripts reading JSON get a document saying it.
            if ctx.json && flushed_ok {
                let failed = serde_json::json!({ "error": message });
                let _ = writeln!(ctx.out, "{failed}").and_then(|()| ctx.out.flush());
            }
            let _ = writeln!(ctx.err, "ringctl: {message}");
            EXIT_ERROR
        }
    }
}

/// A client error with what to do about a refusal of the credentials or the role.
fn client_error(error: &crate::Error, cluster: &str, user: Option<&str>) -> String {
    match (error, user) {
        (crate::Error::Unauthenticated { message }, None) => {
            format!("{cluster} requires credentials ({message}): give --user and --password-file")
        }
        (crate::Error::Unauthenticated { message }, Some(user)) => format!(
            "{cluster} refused the credentials of user {user:?} ({message}): check --user and the password"
        ),
        (crate::Error::PermissionDenied { message }, user) => {
            let who = user.map_or_else(|| "no user".to_owned(), |u| format!("user {u:?}"));
            format!("permission denied ({message}): {who} lacks the role this command needs")
        }
        (error, _) => error.to_string(),
    }
}

/// The command line: [`Cli`] with the TLS and credential flags made global like the others, so
/// they may follow the subcommand.
fn cli_command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        if security::ARG_IDS.contains(&arg.get_id().as_str()) {
            arg.global(true)
        } else {
            arg
        }
    })
}

/// Help and version go to stdout with status 0; other parse errors go to stderr with status 2,
/// as clap renders them: what is wrong (the missing argument named, a suggestion for a typo, the
/// values an enum allows) and the usage line (a missing subcommand prints the help there
/// instead).
fn usage_error(
    error: &clap::Error,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    term: Terminal,
) -> i32 {
    let rendered = error.render();
    let text = if term.color {
        rendered.ansi().to_string()
    } else {
        rendered.to_string()
    };
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = stdout.write_all(text.as_bytes());
            EXIT_OK
        }
        _ => {
            let _ = stderr.write_all(text.as_bytes());
            EXIT_USAGE
        }
    }
}

/// `completions SHELL`: the script (JSON: `{"shell", "script"}`).
#[derive(Debug, serde::Serialize)]
struct Completions {
    shell: String,
    script: String,
}

impl view::View for Completions {
    fn human(&self, _color: bool) -> view::Human {
        view::Human::text(self.script.clone())
    }
}

async fn dispatch(ctx: &mut Ctx<'_>, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Status { rate, check } => cluster::status(ctx, rate, check).await,
        Command::Ring { samples } => ring::ring(ctx, samples).await,
        Command::Locate { key } => ring::locate(ctx, key).await,
        Command::Get { key, options } => kv::get(ctx, key, &options).await,
        Command::Set {
            key,
            value,
            file,
            stdin: _,
            ttl,
            options,
        } => kv::set(ctx, key, value, file, ttl, &options).await,
        Command::Del { key, options } => kv::del(ctx, key, &options).await,
        Command::Ttl { key, options } => kv::ttl(ctx, key, &options).await,
        Command::Incr {
            key,
            delta,
            ttl,
            options,
        } => kv::incr(ctx, key, delta, ttl, &options).await,
        Command::Stats { node } => stats::stats(ctx, node).await,
        Command::Drain {
            node,
            timeout_drain,
            restart: false,
        } => cluster::drain(ctx, &node, timeout_drain).await,
        Command::Drain {
            node,
            timeout_drain,
            restart: true,
        } => cluster::drain_for_restart(ctx, &node, timeout_drain).await,
        Command::Forget { node } => cluster::forget(ctx, &node).await,
        Command::Hotkeys { limit } => hotkeys::hotkeys(ctx, limit).await,
        Command::Rebalance {
            command: RebalanceCommand::Status,
        } => cluster::rebalance_status(ctx).await,
        Command::Watch { count } => watch::watch(ctx, count).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli_command(), "ringctl", &mut script);
            ctx.emit(&Completions {
                shell: shell.to_string(),
                script: String::from_utf8(script)?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run_args(args: &[&str]) -> (i32, String, String) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = run(
            args.iter().map(|s| (*s).to_owned()).collect(),
            &mut std::io::empty(),
            &mut out,
            &mut err,
        )
        .await;
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn the_cli_is_well_formed() {
        cli_command().debug_assert();
    }

    #[tokio::test]
    async fn security_flags_are_global_and_checked_before_connecting() {
        // After the subcommand, like --cluster; the user has no secret: usage error, one line.
        let (code, out, err) =
            run_args(&["--cluster", "127.0.0.1:1", "status", "--user", "alice"]).await;
        assert_eq!(code, EXIT_USAGE, "{err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("ringctl: --user \"alice\" needs a secret"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn tls_flags_need_a_ca() {
        // Each names the flag it lacks.
        for (args, missing) in [
            (&["--tls", "status"][..], "--tls-ca <FILE>"),
            (&["--tls-server-name", "node", "status"], "--tls-ca <FILE>"),
            (
                &["--tls-cert", "c.pem", "--tls-key", "k.pem", "status"],
                "--tls-ca <FILE>",
            ),
            (
                &["--tls-ca", "ca.pem", "--tls-cert", "c.pem", "status"],
                "--tls-key <FILE>",
            ),
        ] {
            let (code, _, err) = run_args(args).await;
            assert_eq!(code, EXIT_USAGE, "{args:?}: {err}");
            assert!(
                err.starts_with("error: the following required arguments were not provided:")
                    && err.contains(missing),
                "{args:?}: {err}"
            );
        }
        let (code, _, err) = run_args(&["--tls-ca", "/nonexistent/ca.pem", "status"]).await;
        assert_eq!(code, EXIT_USAGE, "{err}");
        assert_eq!(
            err,
            "ringctl: cannot read tls ca file \"/nonexistent/ca.pem\": no such file or directory\n"
        );
    }

    #[test]
    fn refusals_read_as_what_to_do() {
        let denied = crate::Error::Unauthenticated {
            message: "bad credentials".into(),
        };
        assert_eq!(
            client_error(&denied, "n1:7379", None),
            "n1:7379 requires credentials (bad credentials): give --user and --password-file"
        );
        assert_eq!(
            client_error(&denied, "n1:7379", Some("bob")),
            "n1:7379 refused the credentials of user \"bob\" (bad credentials): check --user and the password"
        );
        let denied = crate::Error::PermissionDenied {
            message: "needs admin".into(),
        };
        assert_eq!(
            client_error(&denied, "n1:7379", Some("bob")),
            "permission denied (needs admin): user \"bob\" lacks the role this command needs"
        );
    }

    #[tokio::test]
    async fn help_and_version_exit_zero() {
        let (code, out, err) = run_args(&["--help"]).await;
        assert_eq!(code, EXIT_OK, "{err}");
        assert!(
            out.contains("Exit status:") && out.contains("status"),
            "{out}"
        );
        let (code, out, _) = run_args(&["get", "--help"]).await;
        assert_eq!(code, EXIT_OK);
        assert!(out.contains("status 3"), "{out}");
        let (code, out, _) = run_args(&["--version"]).await;
        assert_eq!(code, EXIT_OK);
        assert!(out.starts_with("ringctl "), "{out}");
    }

    #[tokio::test]
    async fn usage_errors_exit_two_with_the_usage_line() {
        for args in [
            &["--timeout", "soon", "status"][..],
            &["--timeout", "0s", "status"],
            &["frobnicate"],
            &["set", "k", "v", "--file", "x"],
            &["--output", "yaml", "status"],
        ] {
            let (code, out, err) = run_args(args).await;
            assert_eq!(code, EXIT_USAGE, "{args:?}: {err}");
            assert!(out.is_empty());
            assert!(err.starts_with("error: "), "{args:?}: {err}");
            assert!(
                err.ends_with("For more information, try '--help'.\n"),
                "{args:?}: {err}"
            );
        }
        let (code, _, err) = run_args(&["--timeout", "soon", "status"]).await;
        assert_eq!(code, EXIT_USAGE);
        assert!(err.contains("bad duration \"soon\""), "{err}");
        let (code, _, err) = run_args(&[]).await;
        assert_eq!(code, EXIT_USAGE);
        assert!(err.contains("Usage:"), "{err}");
    }

    #[tokio::test]
    async fn usage_errors_show_clap_s_whole_message() {
        // The missing argument is named, with the usage line.
        let (code, out, err) = run_args(&["get"]).await;
        assert_eq!(code, EXIT_USAGE, "{err}");
        assert!(out.is_empty());
        assert!(
            err.contains("the following required arguments were not provided")
                && err.contains("<KEY>")
                && err.contains("Usage: ringctl get"),
            "{err}"
        );
        // A typo of a subcommand or a flag gets a suggestion.
        let (code, _, err) = run_args(&["stauts"]).await;
        assert_eq!(code, EXIT_USAGE, "{err}");
        assert!(
            err.contains("'stauts'") && err.contains("'status'"),
            "{err}"
        );
        let (code, _, err) = run_args(&["status", "--rat"]).await;
        assert_eq!(code, EXIT_USAGE, "{err}");
        assert!(err.contains("'--rate'"), "{err}");
        // A bad enum value lists the values there are.
        let (code, _, err) = run_args(&["--output", "yaml", "status"]).await;
        assert_eq!(code, EXIT_USAGE, "{err}");
        assert!(err.contains("[possible values: human, json]"), "{err}");
        let (code, _, err) = run_args(&["get", "k", "--consistency", "two"]).await;
        assert_eq!(code, EXIT_USAGE, "{err}");
        assert!(err.contains("one, quorum, all"), "{err}");
        let (code, _, err) = run_args(&["completions", "tcsh"]).await;
        assert_eq!(code, EXIT_USAGE, "{err}");
        assert!(err.contains("bash") && err.contains("zsh"), "{err}");
    }

    #[tokio::test]
    async fn set_without_a_value_says_where_it_may_come_from() {
        // Nothing is read or sent: the source of the value is a usage error, before connecting.
        let (code, out, err) = run_args(&["--cluster", "127.0.0.1:1", "set", "k"]).await;
        assert_eq!(code, EXIT_USAGE, "{err}");
        assert!(out.is_empty());
        assert!(
            err.contains("<VALUE|--file <PATH>|--stdin>") && err.contains("Usage: ringctl set"),
            "{err}"
        );
        for args in [
            &["set", "k", "v", "--stdin"][..],
            &["set", "k", "--file", "x", "--stdin"],
            &["set", "k", "v", "--file", "x"],
        ] {
            let (code, _, err) = run_args(args).await;
            assert_eq!(code, EXIT_USAGE, "{args:?}: {err}");
            assert!(err.contains("cannot be used with"), "{args:?}: {err}");
        }
    }

    #[tokio::test]
    async fn a_bad_cluster_address_is_one_line() {
        let (code, out, err) = run_args(&["--cluster", "nowhere", "status"]).await;
        assert_eq!(code, EXIT_ERROR);
        assert!(out.is_empty());
        assert_eq!(
            err,
            "ringctl: bad --cluster address \"nowhere\": expected host:port (the port is missing)\n"
        );
    }

    #[tokio::test]
    async fn completions_need_no_cluster() {
        for shell in ["bash", "zsh", "fish"] {
            let (code, out, err) =
                run_args(&["--cluster", "127.0.0.1:1", "completions", shell]).await;
            assert_eq!(code, EXIT_OK, "{err}");
            assert!(out.contains("ringctl") && out.contains("locate"), "{shell}");
        }
    }
}
