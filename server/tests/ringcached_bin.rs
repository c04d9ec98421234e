//! The `ringcached` binary as an operator runs it: flags, defaults, bad config, SIGTERM, the
//! worker threads it starts. A test on the default ports binds a loopback address picked free at
//! random (127.x.y.z outside 127.0.0.0/16), so it never meets a node running on 127.0.0.1 or
//! another test run; the others bind port 0.
//!
//! `workers_follow_a_cgroup_cpu_quota` puts the node in a cgroup with a CPU quota, which needs
//! root and a writable cgroup file system: without them it prints why and passes without
//! running, unless `RINGCACHE_REQUIRE_ROOT_TESTS=1` (set by `.ci/run`) makes that a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringcached");
const DEADLINE: Duration = Duration::from_secs(20);

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run ringcached")
}

/// Kills the child if a test fails half way, so no process outlives the test.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A loopback address whose default ports (gRPC, HTTP, cluster, RESP; gossip over UDP) are
/// free.
fn default_ports_ip() -> String {
    ringcache_test_support::free_loopback_ip(&[7379, 7381, 7382, 6479], &[7380]).to_string()
}

fn wait_for<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    ringcache_test_support::blocking_until_some(what, DEADLINE, probe).unwrap()
}

#[test]
fn help_documents_the_design_flags_and_their_environment_variables() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--node-id",
        "--bind",
        "--grpc-port",
        "--gossip-port",
        "--http-port",
        "--resp-port",
        "--seeds",
        "--replication-factor",
        "--max-memory",
        "--config",
        "--eviction-policy",
        "--max-key-bytes",
        "--max-value-bytes",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("RINGCACHE_GRPC_PORT"));
}

#[test]
fn bad_flags_and_config_files_fail_with_one_clear_line() {
    let out = run(&["--max-memory", "lots"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size"));

    let out = run(&["--config", "/nonexistent/ringcache.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("ringcached: cannot read config file /nonexistent/ringcache.toml"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    let out = run(&["--max-batch-keys", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_batch_keys"));

    for (workers, says) in [
        ("0", "workers must be between 1 and 1024, got 0"),
        ("5000", "workers must be between 1 and 1024, got 5000"),
    ] {
        let out = run(&["--workers", workers]);
        assert_eq!(out.status.code(), Some(1), "--workers {workers}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn starts_with_defaults_serves_and_stops_cleanly_on_sigterm() {
    // Defaults everywhere but the bind address: ports 7379/7381 on an address of its own.
    let bind = &default_ports_ip();
    let child = Command::new(BIN)
        .args(["--bind", bind])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcached");
    let mut guard = Guard(child);
    let http = format!("{bind}:7381");
    wait_for("ready", || {
        (http_status(&http, "/health/ready") == Some(200)).then_some(())
    });
    assert!(
        TcpStream::connect(format!("{bind}:7379")).is_ok(),
        "gRPC port open"
    );
    // The Redis protocol on its default port, 6479.
    let mut resp = TcpStream::connect(format!("{bind}:6479")).expect("RESP port open");
    resp.set_read_timeout(Some(DEADLINE)).unwrap();
    resp.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    resp.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");

    let pid = guard.0.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = wait_for("exit after SIGTERM", || guard.0.try_wait().ok().flatten());
    assert!(status.success(), "exit status {status:?}");
    let mut log = String::new();
    guard
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("SIGTERM received") && log.contains("node stopped"),
        "{log}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let bind = &default_ports_ip();
    let child = Command::new(BIN)
        .args(["--bind", bind, "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcached");
    let mut guard = Guard(child);
    wait_for("ready", || {
        (http_status(&format!("{bind}:7381"), "/health/ready") == Some(200)).then_some(())
    });
    let kill = Command::new("kill")
        .args(["-INT", &guard.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_for("exit after SIGINT", || guard.0.try_wait().ok().flatten());
    assert!(status.success());
    let mut out = String::new();
    guard
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 2, "{out}");
    for line in lines {
        assert!(
            line.starts_with('{') && line.ends_with('}') && line.contains("\"level\":\"INFO\""),
            "{line}"
        );
    }
}

#[test]
fn a_non_loopback_bind_without_tls_and_users_exits_2_naming_what_is_missing() {
    // The gate runs before anything binds, so no port is taken.
    let out = run(&["--bind", "0.0.0.0", "--advertise-addr", "127.0.0.74"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for missing in [
        "TLS (--tls-cert/--tls-key)",
        "users (--users-file)",
        "cluster TLS (--cluster-ca)",
        "a gossip key (--gossip-keyring)",
        "--insecure",
    ] {
        assert!(stderr.contains(missing), "{missing} not named: {stderr}");
    }
}

#[test]
fn insecure_lets_a_non_loopback_node_start_with_a_warning() {
    let child = Command::new(BIN)
        .args([
            "--bind",
            "0.0.0.0",
            "--advertise-addr",
            "127.0.0.75",
            "--insecure",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--gossip-port",
            "0",
            "--cluster-port",
            "0",
            "--resp-port",
            "0",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start ringcached");
    let mut guard = Guard(child);
    let mut stderr = guard.0.stderr.take().unwrap();
    let text = wait_for("the insecure warning", || {
        let mut buf = [0u8; 4096];
        let mut seen = String::new();
        while !seen.contains("INSECURE") {
            let n = stderr.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Some(seen)
    });
    assert!(text.contains("without TLS"), "{text}");
}

// ---- worker threads ----------------------------------------------------------------------------

/// Set to 1 to make missing privileges a failure instead of a skip.
const REQUIRE_ROOT: &str = "RINGCACHE_REQUIRE_ROOT_TESTS";

/// `ringcached` on `bind` with free ports, JSON logs and `extra` flags, started through
/// `wrapper` (a program and its arguments before the binary; none when empty).
fn node_command(wrapper: &[&str], bind: &str, extra: &[&str]) -> Command {
    let mut args: Vec<String> = wrapper[1.min(wrapper.len())..]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    let program = if wrapper.is_empty() {
        BIN.to_owned()
    } else {
        args.push(BIN.to_owned());
        wrapper[0].to_owned()
    };
    args.extend(
        [
            "--bind",
            bind,
            "--log-format",
            "json",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--gossip-port",
            "0",
            "--cluster-port",
            "0",
            "--resp-port",
            "0",
        ]
        .map(str::to_owned),
    );
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let mut command = Command::new(program);
    command
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("RINGCACHE_WORKERS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// The fields of the `ringcached serving` log line of the node `command` starts; the node is
/// killed afterwards.
fn serving_fields(mut command: Command) -> serde_json::Value {
    let mut guard = Guard(command.spawn().expect("start ringcached"));
    let stderr = guard.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut log = Vec::new();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("ringcached serving") => {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap();
                return event["fields"].clone();
            }
            Ok(line) => log.push(line),
            Err(_) => panic!(
                "no \"ringcached serving\" line within {DEADLINE:?}:\n{}",
                log.join("\n")
            ),
        }
    }
}

/// The parallelism this test process has (the node started from it has the same).
fn cpus_here() -> u64 {
    std::thread::available_parallelism().unwrap().get() as u64
}

#[test]
fn workers_follow_the_setting_or_the_cpus_the_process_may_use() {
    let fields = serving_fields(node_command(&[], "127.0.0.76", &["--workers", "3"]));
    assert_eq!(fields["workers"], 3, "{fields}");

    // No setting: as many as this process may use, here...
    let fields = serving_fields(node_command(&[], "127.0.0.76", &[]));
    assert_eq!(fields["workers"], cpus_here(), "{fields}");

    // ... and one when pinned to one CPU (what a cpuset gives a container).
    let fields = serving_fields(node_command(&["taskset", "-c", "0"], "127.0.0.76", &[]));
    assert_eq!(fields["workers"], 1, "{fields}");

    // TOKIO_WORKER_THREADS is not read (tokio panics on a bad value when it is).
    let mut command = node_command(&[], "127.0.0.76", &["--workers", "2"]);
    command.env("TOKIO_WORKER_THREADS", "lots");
    assert_eq!(serving_fields(command)["workers"], 2);
}

/// A cgroup with a CPU quota of one CPU, removed when dropped.
struct QuotaCgroup {
    dir: PathBuf,
}

impl QuotaCgroup {
    /// Makes the cgroup (v1's cpu controller, or v2 with the cpu controller enabled), or says
    /// why it cannot.
    fn one_cpu() -> Result<Self, String> {
        let name = format!("ringcache-test-{}", std::process::id());
        let v1 = PathBuf::from("/sys/fs/cgroup/cpu");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let write = |path: PathBuf, text: &str| {
            std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
        };
        if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(&name);
            std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
            let cgroup = Self { dir };
            write(cgroup.dir.join("cpu.cfs_period_us"), "100000")?;
            write(cgroup.dir.join("cpu.cfs_quota_us"), "100000")?;
            return Ok(cgroup);
        }
        let controllers = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .map_err(|e| format!("no cgroup v1 cpu controller and no cgroup v2: {e}"))?;
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            return Err("cgroup v2 without the cpu controller".to_owned());
        }
        write(v2.join("cgroup.subtree_control"), "+cpu")?;
        let dir = v2.join(&name);
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cgroup = Self { dir };
        write(cgroup.dir.join("cpu.max"), "100000 100000")?;
        Ok(cgroup)
    }
}

impl Drop for QuotaCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn workers_follow_a_cgroup_cpu_quota() {
    let cgroup = match QuotaCgroup::one_cpu() {
        Ok(cgroup) if cpus_here() >= 2 => cgroup,
        Ok(_) => {
            return not_run("the machine has one CPU, so a one-CPU quota shows nothing");
        }
        Err(why) => return not_run(&why),
    };
    // The shell moves itself into the cgroup, then becomes ringcached.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
        cgroup.dir.display()
    );
    let fields = serving_fields(node_command(&["sh", "-c", &script], "127.0.0.77", &[]));
    assert_eq!(fields["workers"], 1, "a quota of one CPU: {fields}");
    drop(cgroup);
}

/// Reports that a test cannot run: panics under `RINGCACHE_REQUIRE_ROOT_TESTS=1`, otherwise
/// prints a loud notice to stderr (the test then passes without running).
fn not_run(why: &str) {
    let message = format!(
        "ringcached_bin::workers_follow_a_cgroup_cpu_quota NOT RUN: {why}.\n\
         It needs root and a writable cgroup file system with the cpu controller. Set \
         {REQUIRE_ROOT}=1 to make this a failure instead of a skip."
    );
    if std::env::var(REQUIRE_ROOT).is_ok_and(|v| v == "1") {
        panic!("{message}");
    }
    let bar = "!".repeat(100);
    let _ = writeln!(std::io::stderr(), "\n{bar}\n{message}\n{bar}\n");
}
