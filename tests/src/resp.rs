//! Helpers for tests of the Redis protocol port: a `redis` crate connection, one command by its
//! words, an error reply's text, and raw bytes on a fresh socket; and for the clients of other
//! languages, run as child processes: their target directory, a bounded run, routing checks
//! (keys by owner, the settle window, `-MOVED` counts) and the node crash protocol.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use ringcache_proto::placement::key_slot;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::{TestCluster, TestNode};

/// `redis-cli` with `args` against `node`'s RESP port: its standard output, once it exited
/// successfully.
pub async fn redis_cli(node: &TestNode, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &node.resp_addr.port().to_string()])
        .args(args)
        .output()
        .await
        .expect("redis-cli runs (scripts/test-deps installs redis-server with it)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// How long one reply may take: long enough for `CLUSTER SLOTS` (about 11,000 runs at 3 nodes)
/// parsed by a debug build of the redis crate on a loaded machine.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(30);

/// A multiplexed `redis` crate connection to `node`'s RESP port.
pub async fn connect(node: &TestNode) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(REPLY_DEADLINE));
    redis::Client::open(format!("redis://{}/", node.resp_addr))
        .expect("a redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect with the redis crate")
}

/// Runs one command given as words (`["SET", "k", "v"]`).
pub async fn run<T: redis::FromRedisValue>(
    con: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(con).await
}

/// An error reply's text, as the redis crate reports it (`ERR ...` or the code and text).
pub async fn error(con: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> String {
    let err = run::<redis::Value>(con, args)
        .await
        .expect_err("an error reply");
    match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => err.to_string(),
    }
}

/// Sends raw bytes on a fresh connection and reads until the answer ends with `until` (or, for
/// `""`, until the node closes the connection); returns the answer and whether it closed.
pub async fn raw(node: &TestNode, input: &[u8], until: &str) -> (String, bool) {
    let mut stream = TcpStream::connect(node.resp_addr).await.expect("connect");
    stream.write_all(input).await.expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        let read = tokio::time::timeout(REPLY_DEADLINE, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        if read == 0 {
            break true;
        }
        out.extend_from_slice(&buf[..read]);
        if !until.is_empty() && out.ends_with(until.as_bytes()) {
            break false;
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

// Clients of other languages (tests/resp_clients.rs, tests/resp_node.rs): child processes run
// with `tokio::process` (a blocking `std::process` wait would stall the nodes on the test's
// runtime), each bounded by a timeout and its output printed when it fails.

/// Longest one client script may run.
pub const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);

pub use ringcache_test_support::{python, target_dir};

/// What a finished child process printed.
#[derive(Debug)]
pub struct Finished {
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `command` with `stdin` as its input, bounded by [`SCRIPT_DEADLINE`]; panics with its
/// output unless it exits 0, and with `install` (how to install what is missing) when it cannot
/// start.
pub async fn run_child(command: &mut Command, stdin: &str, install: &str) -> Finished {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}; {install}"));
    let mut input = child.stdin.take().expect("piped stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write the child's input");
    drop(input);
    let output = tokio::time::timeout(SCRIPT_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{shown} did not finish within {SCRIPT_DEADLINE:?}"))
        .expect("wait for the child");
    let finished = Finished {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        output.status.success(),
        "{shown} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        finished.stdout,
        finished.stderr
    );
    finished
}

/// The RESP ports of the cluster's nodes, as arguments.
pub fn resp_ports(cluster: &TestCluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|n| n.resp_addr.port().to_string())
        .collect()
}

/// The first key `{prefix}{i}` (i = 0, 1, ...) whose primary is `node_id`.
pub fn key_owned_by(cluster: &TestCluster, node_id: &str, prefix: &str) -> String {
    let view = cluster.nodes[0].node.view();
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| view.ring.slot_replicas(key_slot(k.as_bytes())).primary() == Some(node_id))
        .expect("some key is owned by every node")
}

/// Waits (up to `deadline` per node) until every node answers a cluster-aware connection's GET
/// of a key it does not own with `-MOVED`: a node forwards instead while its ring changed within
/// the last few probe intervals (the settle window), as it has just after the cluster formed.
pub async fn wait_moved(cluster: &TestCluster, deadline: Duration) {
    for node in &cluster.nodes {
        let id = node.node.config().node_id.clone();
        let other = cluster
            .nodes
            .iter()
            .find(|n| n.node.config().node_id != id)
            .expect("another node");
        let key = key_owned_by(cluster, &other.node.config().node_id, "settled:");
        let mut conn = connect(node).await;
        let routing: String = run(&mut conn, &["RINGCACHE", "ROUTING", "MOVED"])
            .await
            .expect("RINGCACHE ROUTING MOVED");
        assert_eq!(routing, "OK");
        crate::wait_until(deadline, || {
            let mut conn = conn.clone();
            let key = key.clone();
            async move {
                let got = run::<Option<String>>(&mut conn, &["GET", &key]).await;
                matches!(got, Err(e) if e.code() == Some("MOVED"))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{id} never answered -MOVED: {e}"));
    }
}

/// The node's error replies of kind `error` (`MOVED`, `ERR`, ...) by command, from its
/// `ringcache_resp_errors_total` series on `/metrics`.
pub async fn resp_errors(node: &TestNode, error: &str) -> BTreeMap<String, f64> {
    let response = crate::http_get(node.http_addr, "/metrics")
        .await
        .expect("/metrics");
    let mut errors = BTreeMap::new();
    for line in response.body.lines() {
        let Some(rest) = line.strip_prefix("ringcache_resp_errors_total{command=\"") else {
            continue;
        };
        let Some((command, rest)) = rest.split_once("\",error=\"") else {
            continue;
        };
        let Some(value) = rest
            .strip_prefix(error)
            .and_then(|r| r.strip_prefix("\"} "))
        else {
            continue;
        };
        let value: f64 = value.trim().parse().expect("a number");
        *errors.entry(command.to_owned()).or_default() += value;
    }
    errors
}

/// The commands the node received on its RESP port, by command, from its
/// `ringcache_resp_commands_total` series on `/metrics`.
pub async fn resp_commands(node: &TestNode) -> BTreeMap<String, f64> {
    let response = crate::http_get(node.http_addr, "/metrics")
        .await
        .expect("/metrics");
    let mut commands = BTreeMap::new();
    for line in response.body.lines() {
        let Some(rest) = line.strip_prefix("ringcache_resp_commands_total{command=\"") else {
            continue;
        };
        let Some((command, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let value: f64 = value.trim().parse().expect("a number");
        *commands.entry(command.to_owned()).or_default() += value;
    }
    commands
}

/// Runs a client script that writes and reads keys in rounds while node `victim` crashes, and
/// checks what it printed: `READY` before the first round, `ROUND n` after each clean round
/// (every key written and read back); after `ROUND 2` the test crashes the node and writes the
/// line `crashed` to the script's stdin. The script must then print `RECOVERED <what>` after a
/// clean round that began after the crash (or fail by itself past its deadline), and last
/// `values v1,v2,...`: every key's value read through the survivors, which must be the last
/// clean round's `r<n>`. Returns every line it printed.
pub async fn crash_during_rounds(
    cluster: &mut TestCluster,
    victim: &str,
    command: &mut Command,
    install: &str,
) -> Vec<String> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}; {install}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut stderr = child.stderr.take().expect("piped stderr");
    let mut seen = Vec::new();
    let drive = async {
        // Two clean rounds, then crash the victim while the third is under way.
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            seen.push(line.clone());
            if line == "ROUND 2" {
                cluster.take(victim).crash().await.expect("the node stops");
                stdin
                    .write_all(b"crashed\n")
                    .await
                    .expect("tell the script");
                stdin.flush().await.expect("tell the script");
                break;
            }
        }
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            seen.push(line);
        }
        child.wait().await.expect("wait for the script")
    };
    let status = tokio::time::timeout(SCRIPT_DEADLINE, drive).await;
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err).await;
    let status = status.unwrap_or_else(|_| panic!("the script did not finish: {seen:?}\n{err}"));
    assert!(status.success(), "{status}: {seen:#?}\n--- stderr\n{err}");
    assert!(
        seen.iter().any(|l| l.starts_with("RECOVERED ")),
        "no recovery: {seen:#?}\n{err}"
    );
    let last_round = seen
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("ROUND "))
        .expect("a clean round");
    // Every key holds what the last clean round wrote, read through the survivors.
    assert_eq!(
        seen.last().map(String::as_str),
        Some(format!("values r{last_round}").as_str()),
        "{seen:#?}\n--- stderr\n{err}"
    );
    seen
}
