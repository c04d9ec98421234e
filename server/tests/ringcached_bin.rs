//! The `ringcached` binary as an operator runs it: flags, defaults, bad config, SIGTERM.
//! Each test binds its own 127.0.0.x so it never meets a node running on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpStream;
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

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what} not reached within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
}

#[test]
fn starts_with_defaults_serves_and_stops_cleanly_on_sigterm() {
    // Defaults everywhere but the bind address: ports 7379/7381 on an address of its own.
    let bind = "127.0.0.73";
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
    let bind = "127.0.0.74";
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
