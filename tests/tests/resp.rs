//! The Redis protocol port with real Redis clients: the `redis` crate (a third-party client
//! library, with its rustls TLS), `redis-cli` (Redis's own tool; `scripts/test-deps` installs it
//! with redis-server), and raw bytes for pipelining and protocol errors. On one node and through
//! every node of a 3-node cluster (a key any node does not hold is forwarded to its primary).
//! Then AUTH and roles against the node's users, TLS, the authentication and idle timeouts, the
//! connection and server commands (CLIENT, COMMAND, INFO, TIME, RESET) and the RESP metrics.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use ringcache_server::Config;
use ringcache_server::auth::{Role, UserEntry, sha256, to_hex};
use ringcache_server::config::TlsFiles;
use ringcache_tests::{TestCluster, TestNode, http_get, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);

async fn connect(node: &TestNode) -> redis::aio::MultiplexedConnection {
    let url = format!("redis://{}/", node.resp_addr);
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect with the redis crate")
}

async fn run<T: redis::FromRedisValue>(
    con: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(con).await
}

/// Sends raw bytes on a fresh connection and reads until the answer ends with `until` (or, for
/// `""`, until the node closes the connection).
async fn raw(node: &TestNode, input: &[u8], until: &str) -> (String, bool) {
    let mut stream = TcpStream::connect(node.resp_addr).await.unwrap();
    stream.write_all(input).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
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

#[tokio::test]
async fn string_commands_answer_as_redis_does() {
    let node = TestNode::start_default().await;
    let mut con = connect(&node).await;
    assert_eq!(run::<String>(&mut con, &["PING"]).await.unwrap(), "PONG");
    assert_eq!(
        run::<String>(&mut con, &["ECHO", "hi"]).await.unwrap(),
        "hi"
    );
    assert_eq!(
        run::<String>(&mut con, &["SET", "k", "v"]).await.unwrap(),
        "OK"
    );
    assert_eq!(run::<String>(&mut con, &["GET", "k"]).await.unwrap(), "v");
    assert_eq!(
        run::<Option<String>>(&mut con, &["GET", "missing"])
            .await
            .unwrap(),
        None
    );
    // NX / XX / GET.
    assert_eq!(
        run::<Option<String>>(&mut con, &["SET", "k", "w", "NX"])
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        run::<Option<String>>(&mut con, &["SET", "k", "w", "XX", "GET"])
            .await
            .unwrap(),
        Some("v".to_owned())
    );
    assert_eq!(run::<i64>(&mut con, &["SETNX", "k", "x"]).await.unwrap(), 0);
    assert_eq!(
        run::<String>(&mut con, &["GETSET", "k", "y"])
            .await
            .unwrap(),
        "w"
    );
    // TTLs.
    assert_eq!(run::<i64>(&mut con, &["TTL", "k"]).await.unwrap(), -1);
    assert_eq!(run::<i64>(&mut con, &["TTL", "missing"]).await.unwrap(), -2);
    assert_eq!(
        run::<i64>(&mut con, &["EXPIRE", "k", "100"]).await.unwrap(),
        1
    );
    let ttl = run::<i64>(&mut con, &["TTL", "k"]).await.unwrap();
    assert!((99..=100).contains(&ttl), "{ttl}");
    let pttl = run::<i64>(&mut con, &["PTTL", "k"]).await.unwrap();
    assert!((98_000..=100_000).contains(&pttl), "{pttl}");
    assert_eq!(run::<i64>(&mut con, &["PERSIST", "k"]).await.unwrap(), 1);
    assert_eq!(
        run::<String>(&mut con, &["SET", "t", "v", "EX", "50"])
            .await
            .unwrap(),
        "OK"
    );
    assert!(run::<i64>(&mut con, &["TTL", "t"]).await.unwrap() > 0);
    assert_eq!(
        run::<String>(&mut con, &["SETEX", "s", "10", "v"])
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(
        run::<i64>(&mut con, &["EXPIRE", "s", "0"]).await.unwrap(),
        1
    );
    assert_eq!(run::<i64>(&mut con, &["EXISTS", "s"]).await.unwrap(), 0);
    // Counters.
    assert_eq!(run::<i64>(&mut con, &["INCR", "n"]).await.unwrap(), 1);
    assert_eq!(
        run::<i64>(&mut con, &["INCRBY", "n", "41"]).await.unwrap(),
        42
    );
    assert_eq!(
        run::<i64>(&mut con, &["DECRBY", "n", "2"]).await.unwrap(),
        40
    );
    assert_eq!(run::<i64>(&mut con, &["DECR", "n"]).await.unwrap(), 39);
    // Several keys.
    assert_eq!(
        run::<String>(&mut con, &["MSET", "a", "1", "b", "2"])
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(
        run::<Vec<Option<String>>>(&mut con, &["MGET", "a", "nope", "b"])
            .await
            .unwrap(),
        [Some("1".to_owned()), None, Some("2".to_owned())]
    );
    assert_eq!(
        run::<i64>(&mut con, &["EXISTS", "a", "b", "a", "nope"])
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        run::<i64>(&mut con, &["DEL", "a", "b", "nope"])
            .await
            .unwrap(),
        2
    );
    assert_eq!(run::<i64>(&mut con, &["UNLINK", "a"]).await.unwrap(), 0);
    assert!(run::<i64>(&mut con, &["DBSIZE"]).await.unwrap() >= 3);
    // Errors, with Redis's texts; the connection keeps working.
    let err = |e: redis::RedisError| e.to_string();
    assert!(
        err(run::<String>(&mut con, &["GET"]).await.unwrap_err())
            .contains("wrong number of arguments for 'get' command")
    );
    assert!(
        err(run::<i64>(&mut con, &["INCR", "k"]).await.unwrap_err())
            .contains("value is not an integer or out of range")
    );
    assert!(
        err(run::<String>(&mut con, &["FOO", "bar"]).await.unwrap_err())
            .contains("unknown command 'FOO', with args beginning with: 'bar'")
    );
    assert!(
        err(run::<String>(&mut con, &["SET", "k", "v", "EX", "0"])
            .await
            .unwrap_err())
        .contains("invalid expire time in 'set' command")
    );
    assert!(
        err(run::<String>(&mut con, &["SET", "k", "v", "BOGUS"])
            .await
            .unwrap_err())
        .contains("syntax error")
    );
    assert!(
        err(run::<String>(&mut con, &["SELECT", "1"]).await.unwrap_err())
            .contains("DB index is out of range")
    );
    assert_eq!(
        run::<String>(&mut con, &["SELECT", "0"]).await.unwrap(),
        "OK"
    );
    assert_eq!(run::<String>(&mut con, &["GET", "k"]).await.unwrap(), "y");
}

#[tokio::test]
async fn pipelined_inline_and_broken_input_on_raw_connections() {
    let node = TestNode::start_default().await;
    // Three commands in one write, one of them inline (what telnet sends).
    let (out, _) = raw(
        &node,
        b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2\r\n42\r\nGET x\r\n*2\r\n$4\r\nINCR\r\n$1\r\nx\r\n",
        ":43\r\n",
    )
    .await;
    assert_eq!(out, "+OK\r\n$2\r\n42\r\n:43\r\n");
    // A request that cannot be framed: Redis's error, then the connection closes.
    let (out, closed) = raw(&node, b"*1\r\nfoo\r\n", "").await;
    assert_eq!(out, "-ERR Protocol error: expected '$', got 'f'\r\n");
    assert!(closed);
    let (out, closed) = raw(&node, b"*1\r\n$2000000000\r\n", "").await;
    assert_eq!(out, "-ERR Protocol error: invalid bulk length\r\n");
    assert!(closed);
    // QUIT answers, then closes; the node keeps serving new connections.
    let (out, closed) = raw(&node, b"QUIT\r\n", "").await;
    assert_eq!((out.as_str(), closed), ("+OK\r\n", true));
    let (out, _) = raw(&node, b"PING\r\n", "+PONG\r\n").await;
    assert_eq!(out, "+PONG\r\n");
    // RESP3 after HELLO 3: a missing value is `_`.
    let (out, _) = raw(&node, b"HELLO 3\r\nGET nothing\r\n", "_\r\n").await;
    assert!(out.starts_with('%'), "{out}");
    assert!(out.ends_with("_\r\n"), "{out}");
}

#[tokio::test]
async fn redis_cli_talks_to_the_resp_port() {
    let node = TestNode::start_default().await;
    let port = node.resp_addr.port().to_string();
    // Async: the node serves on this test's runtime, which must not block on the child.
    let cli = async |args: &[&str]| {
        let output = tokio::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .await
            .expect("redis-cli runs (scripts/test-deps installs redis-server with it)");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(cli(&["set", "foo", "bar"]).await, "OK\n");
    assert_eq!(cli(&["get", "foo"]).await, "bar\n");
    assert_eq!(cli(&["incrby", "visits", "5"]).await, "5\n");
    assert_eq!(cli(&["ping"]).await, "PONG\n");
    let unknown = cli(&["nosuchcommand"]).await;
    assert!(
        unknown.starts_with("ERR unknown command 'nosuchcommand'"),
        "{unknown}"
    );
}

#[tokio::test]
async fn every_node_serves_every_key() {
    let cluster = TestCluster::start_converged(3, DEADLINE, |_, _| {}).await;
    let mut first = connect(&cluster.nodes[0]).await;
    for i in 0..100 {
        let key = format!("key:{i}");
        let value = format!("value:{i}");
        assert_eq!(
            run::<String>(&mut first, &["SET", &key, &value])
                .await
                .unwrap(),
            "OK"
        );
    }
    for node in &cluster.nodes {
        let mut con = connect(node).await;
        for i in 0..100 {
            let key = format!("key:{i}");
            assert_eq!(
                run::<String>(&mut con, &["GET", &key]).await.unwrap(),
                format!("value:{i}"),
                "{key} through {}",
                node.node.config().node_id
            );
        }
        let keys: Vec<String> = (0..10).map(|i| format!("key:{i}")).collect();
        let mut args = vec!["MGET"];
        args.extend(keys.iter().map(String::as_str));
        let values = run::<Vec<String>>(&mut con, &args).await.unwrap();
        assert_eq!(values.len(), 10);
    }
}

// ---- AUTH, roles, TLS and timeouts ----------------------------------------------------------------

const READER_SECRET: &str = "reader-secret-0123456789";
const WRITER_SECRET: &str = "writer-secret-0123456789";
const ADMIN_SECRET: &str = "admin-secret-0123456789";
const DEFAULT_SECRET: &str = "default-secret-0123456789";

fn user(name: &str, role: Role, secret: &str) -> UserEntry {
    UserEntry {
        name: name.to_owned(),
        role,
        secret_sha256: to_hex(&sha256(secret.as_bytes())),
    }
}

/// reader (read), writer (write), admin (admin) and default (write: `AUTH secret`).
fn users() -> Vec<UserEntry> {
    vec![
        user("reader", Role::Read, READER_SECRET),
        user("writer", Role::Write, WRITER_SECRET),
        user("admin", Role::Admin, ADMIN_SECRET),
        user("default", Role::Write, DEFAULT_SECRET),
    ]
}

fn with_users() -> Config {
    let mut config = Config::for_test();
    config.security.users = users();
    config
}

/// The value of the sample `series` (name and labels, exactly as exported) in `/metrics`, or 0.
async fn metric(node: &TestNode, series: &str) -> f64 {
    let response = http_get(node.http_addr, "/metrics").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    response
        .body
        .lines()
        .filter_map(|line| line.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .map(|value| value.trim().parse::<f64>().expect("a number"))
        .sum()
}

/// A raw connection: send a command line, read one reply line (simple, error or integer).
struct Raw(TcpStream);

impl Raw {
    async fn open(node: &TestNode) -> Self {
        Self(TcpStream::connect(node.resp_addr).await.unwrap())
    }

    async fn line(&mut self, command: &str) -> String {
        self.0
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\r\n") {
            let n = tokio::time::timeout(DEADLINE, self.0.read(&mut byte))
                .await
                .expect("a reply in time")
                .unwrap();
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&out));
            out.push(byte[0]);
        }
        out.truncate(out.len() - 2);
        String::from_utf8(out).unwrap()
    }

    /// Waits for the node to close the connection (reads until end of file).
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(DEADLINE, self.0.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

async fn connect_url(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

async fn redis_cli(args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new("redis-cli")
        .args(args)
        .output()
        .await
        .expect("redis-cli runs (scripts/test-deps installs redis-server with it)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn auth_gates_every_command_and_roles_come_from_the_table() {
    let node = TestNode::start(with_users()).await;
    let mut raw = Raw::open(&node).await;
    // Unauthenticated: every command but AUTH/HELLO/QUIT/RESET is refused; unknown commands and
    // arity errors come first, as in Redis.
    assert_eq!(raw.line("PING").await, "-NOAUTH Authentication required.");
    assert_eq!(raw.line("GET k").await, "-NOAUTH Authentication required.");
    assert!(
        raw.line("NOSUCH x")
            .await
            .starts_with("-ERR unknown command 'NOSUCH'")
    );
    assert_eq!(
        raw.line("GET").await,
        "-ERR wrong number of arguments for 'get' command"
    );
    assert!(
        raw.line("HELLO 3")
            .await
            .starts_with("-NOAUTH HELLO must be called")
    );
    assert_eq!(
        raw.line("AUTH reader wrong").await,
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        raw.line("AUTH nobody whatever").await,
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        raw.line(&format!("AUTH reader {READER_SECRET}")).await,
        "+OK"
    );
    assert_eq!(raw.line("PING").await, "+PONG");
    assert_eq!(raw.line("GET k").await, "$-1");
    assert_eq!(
        raw.line("SET k v").await,
        "-NOPERM User reader has no permissions to run the 'set' command"
    );
    assert_eq!(
        raw.line("CLIENT LIST").await,
        "-NOPERM User reader has no permissions to run the 'client|list' command"
    );
    // A failed AUTH keeps the identity it had; RESET drops it.
    assert!(
        raw.line("AUTH reader wrong")
            .await
            .starts_with("-WRONGPASS")
    );
    assert_eq!(raw.line("GET k").await, "$-1");
    assert_eq!(raw.line("RESET").await, "+RESET");
    assert_eq!(raw.line("GET k").await, "-NOAUTH Authentication required.");
    // One-argument AUTH is user "default".
    assert_eq!(raw.line(&format!("AUTH {DEFAULT_SECRET}")).await, "+OK");
    assert_eq!(raw.line("SET k v").await, "+OK");
    assert!(raw.line("CLIENT INFO").await.starts_with('$'));

    // The redis crate authenticates from the URL (user:password, or :password for default).
    let port = node.resp_addr.port();
    let mut writer = connect_url(&format!("redis://writer:{WRITER_SECRET}@127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(
        run::<String>(&mut writer, &["SET", "a", "1"])
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(
        run::<String>(&mut writer, &["GET", "a"]).await.unwrap(),
        "1"
    );
    let denied = run::<String>(&mut writer, &["CLIENT", "LIST"])
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Some("NOPERM"), "{denied}");
    let mut default = connect_url(&format!("redis://:{DEFAULT_SECRET}@127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(
        run::<String>(&mut default, &["GET", "a"]).await.unwrap(),
        "1"
    );
    let Err(wrong) = connect_url(&format!("redis://writer:nope@127.0.0.1:{port}/")).await else {
        panic!("wrong credentials fail the connection")
    };
    assert_eq!(
        wrong.kind(),
        redis::ErrorKind::AuthenticationFailed,
        "{wrong}"
    );
    // HELLO 3 AUTH authenticates and switches protocol in one command (RESP3: a map).
    let mut hello = Raw::open(&node).await;
    assert!(
        hello
            .line(&format!("HELLO 3 AUTH admin {ADMIN_SECRET} SETNAME ops"))
            .await
            .starts_with('%')
    );

    // redis-cli: --user/--pass, a read-only user writing gets Redis's NOPERM text.
    let port = port.to_string();
    let base = ["-h", "127.0.0.1", "-p", &port, "--no-auth-warning"];
    let as_reader = [&base[..], &["--user", "reader", "--pass", READER_SECRET]].concat();
    let (ok, out, _) = redis_cli(&[&as_reader[..], &["get", "a"]].concat()).await;
    assert!(ok);
    assert_eq!(out, "1\n");
    let (_, out, _) = redis_cli(&[&as_reader[..], &["set", "a", "2"]].concat()).await;
    assert_eq!(
        out.trim(),
        "NOPERM User reader has no permissions to run the 'set' command"
    );
    let (_, out, _) = redis_cli(&[&base[..], &["get", "a"]].concat()).await;
    assert_eq!(out.trim(), "NOAUTH Authentication required.");

    // Counted: the gRPC layer's reasons, and RESP errors by command and code.
    assert!(metric(&node, "ringcache_auth_failures_total{reason=\"invalid\"}").await >= 3.0);
    assert!(metric(&node, "ringcache_auth_failures_total{reason=\"missing\"}").await >= 4.0);
    assert!(
        metric(
            &node,
            "ringcache_auth_failures_total{reason=\"permission_denied\"}"
        )
        .await
            >= 3.0
    );
    assert!(
        metric(
            &node,
            "ringcache_resp_errors_total{command=\"set\",error=\"NOPERM\"}"
        )
        .await
            >= 2.0
    );
    assert!(
        metric(
            &node,
            "ringcache_resp_errors_total{command=\"auth\",error=\"WRONGPASS\"}"
        )
        .await
            >= 3.0
    );
}

#[tokio::test]
async fn no_users_keeps_auth_refused_with_redis_text() {
    let node = TestNode::start_default().await;
    let mut raw = Raw::open(&node).await;
    let refusal = "-ERR AUTH <password> called without any password configured for the default \
                   user. Are you sure your configuration is correct?";
    assert_eq!(raw.line("AUTH secret").await, refusal);
    assert_eq!(raw.line("AUTH user secret").await, refusal);
    assert_eq!(
        raw.line("PING").await,
        "+PONG",
        "no users: nothing to authenticate"
    );
}

#[tokio::test]
async fn the_failure_limiter_locks_an_address_out() {
    let mut config = with_users();
    config.security.max_auth_failures = 3;
    let node = TestNode::start(config).await;
    let mut raw = Raw::open(&node).await;
    for _ in 0..3 {
        assert!(
            raw.line("AUTH writer wrong")
                .await
                .starts_with("-WRONGPASS invalid")
        );
    }
    // Locked out: even the right secret is refused without a check, on any connection.
    let locked = raw.line(&format!("AUTH writer {WRITER_SECRET}")).await;
    assert!(
        locked.starts_with("-WRONGPASS too many failed authentications"),
        "{locked}"
    );
    let mut other = Raw::open(&node).await;
    assert!(
        other
            .line(&format!("HELLO 3 AUTH writer {WRITER_SECRET}"))
            .await
            .starts_with("-WRONGPASS too many")
    );
    assert!(
        metric(
            &node,
            "ringcache_auth_failures_total{reason=\"locked_out\"}"
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_users_reload_rechecks_open_connections() {
    let scratch = Scratch::new("reload");
    let stanza = |secret: &str| {
        format!(
            "[[users]]\nname = \"app\"\nrole = \"write\"\nsecret_sha256 = \"{}\"\n",
            to_hex(&sha256(secret.as_bytes()))
        )
    };
    let mut config = Config::for_test();
    config.security.users_file = Some(scratch.write("users.toml", &stanza("old-secret")));
    let node = TestNode::start(config).await;
    let mut raw = Raw::open(&node).await;
    assert_eq!(raw.line("AUTH app old-secret").await, "+OK");
    assert_eq!(raw.line("SET k v").await, "+OK");
    // A reload that changes nothing keeps the connection working.
    node.node.reload_tls_and_users().unwrap();
    assert_eq!(raw.line("EXISTS k").await, ":1");
    // The secret changes: the connection's identity no longer holds.
    scratch.write("users.toml", &stanza("new-secret"));
    node.node.reload_tls_and_users().unwrap();
    assert_eq!(raw.line("GET k").await, "-NOAUTH Authentication required.");
    assert!(
        raw.line("AUTH app old-secret")
            .await
            .starts_with("-WRONGPASS")
    );
    assert_eq!(raw.line("AUTH app new-secret").await, "+OK");
}

#[tokio::test]
async fn unauthenticated_and_idle_connections_are_closed_at_their_deadlines() {
    let mut config = with_users();
    config.security.handshake_timeout = Duration::from_millis(300);
    config.resp_idle_timeout = Some(Duration::from_millis(600));
    let node = TestNode::start(config).await;
    let mut authed = Raw::open(&node).await;
    assert_eq!(
        authed.line(&format!("AUTH writer {WRITER_SECRET}")).await,
        "+OK"
    );
    // Silent, and a slowloris that never finishes its command: both closed at the deadline,
    // and their unauthenticated places are given back.
    let mut silent = Raw::open(&node).await;
    let mut slow = Raw::open(&node).await;
    slow.0.write_all(b"*2\r\n$4\r\nAUTH\r\n").await.unwrap();
    assert!(silent.closed().await, "a silent connection is closed");
    assert!(slow.closed().await, "a slow one too");
    assert!(
        metric(
            &node,
            "ringcache_connections_refused_total{plane=\"resp\",reason=\"auth_timeout\"}"
        )
        .await
            >= 2.0
    );
    wait_until(DEADLINE, || async {
        node.node.unauthenticated_connections().open() == 0
    })
    .await
    .unwrap();
    // The authenticated one outlived the authentication deadline; with nothing sent it is closed
    // at the idle timeout.
    assert_eq!(authed.line("PING").await, "+PONG");
    assert!(authed.closed().await, "closed once idle");
    assert!(
        metric(
            &node,
            "ringcache_connections_refused_total{plane=\"resp\",reason=\"idle\"}"
        )
        .await
            >= 1.0
    );
}

// ---- TLS ------------------------------------------------------------------------------------------

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` and its key, PEM.
    fn sign(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringcache-resp-{}-{name}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!("{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn tls_connect(
    node: &TestNode,
    ca: &Ca,
    identity: Option<(String, String)>,
    credentials: &str,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let url = format!("rediss://{credentials}127.0.0.1:{}/", node.resp_addr.port());
    let certificates = redis::TlsCertificates {
        client_tls: identity.map(|(cert, key)| redis::ClientTlsConfig {
            client_cert: cert.into_bytes(),
            client_key: key.into_bytes(),
        }),
        root_cert: Some(ca.pem.clone().into_bytes()),
    };
    redis::Client::build_with_tls(url, certificates)?
        .get_multiplexed_async_connection()
        .await
}

#[tokio::test]
async fn tls_with_users_through_the_redis_crate_and_redis_cli() {
    let scratch = Scratch::new("tls");
    let ca = Ca::new("resp test ca");
    let (cert, key) = ca.sign(&["localhost", "127.0.0.1"]);
    let mut config = with_users();
    config.security.tls = Some(TlsFiles {
        cert: scratch.write("node.pem", &cert),
        key: scratch.write("node.key", &key),
        ca: None,
    });
    config.security.handshake_timeout = Duration::from_millis(500);
    let node = TestNode::start(config).await;
    let mut con = tls_connect(&node, &ca, None, &format!("writer:{WRITER_SECRET}@"))
        .await
        .expect("TLS and AUTH with the redis crate");
    assert_eq!(
        run::<String>(&mut con, &["SET", "t", "1"]).await.unwrap(),
        "OK"
    );
    assert_eq!(run::<String>(&mut con, &["GET", "t"]).await.unwrap(), "1");
    // Over TLS without credentials: NOAUTH; wrong ones: WRONGPASS.
    let mut anonymous = tls_connect(&node, &ca, None, "").await.unwrap();
    let refused = run::<String>(&mut anonymous, &["GET", "t"])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("NOAUTH"), "{refused}");
    let Err(wrong) = tls_connect(&node, &ca, None, "writer:nope@").await else {
        panic!("wrong credentials fail the connection")
    };
    assert_eq!(
        wrong.kind(),
        redis::ErrorKind::AuthenticationFailed,
        "{wrong}"
    );
    // A plaintext client gets no answer (the bytes are not a TLS hello) and is closed.
    let mut plain = Raw::open(&node).await;
    plain.0.write_all(b"PING\r\n").await.unwrap();
    assert!(plain.closed().await);
    // A connection that never starts its handshake is closed at the handshake timeout.
    let mut silent = Raw::open(&node).await;
    assert!(silent.closed().await);
    assert!(
        metric(
            &node,
            "ringcache_connections_refused_total{plane=\"resp\",reason=\"handshake_timeout\"}"
        )
        .await
            >= 1.0
    );
    // redis-cli --tls.
    let ca_path = scratch.write("ca.pem", &ca.pem);
    let port = node.resp_addr.port().to_string();
    let (ok, out, err) = redis_cli(&[
        "--tls",
        "--cacert",
        ca_path.to_str().unwrap(),
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "--user",
        "reader",
        "--pass",
        READER_SECRET,
        "--no-auth-warning",
        "get",
        "t",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "1\n");
}

#[tokio::test]
async fn client_certificates_are_required_with_a_client_ca() {
    let scratch = Scratch::new("mtls");
    let ca = Ca::new("resp test ca");
    let (cert, key) = ca.sign(&["localhost", "127.0.0.1"]);
    let clients = Ca::new("resp client ca");
    let mut config = Config::for_test();
    config.security.tls = Some(TlsFiles {
        cert: scratch.write("node.pem", &cert),
        key: scratch.write("node.key", &key),
        ca: Some(scratch.write("clients.pem", &clients.pem)),
    });
    let node = TestNode::start(config).await;
    let refused = tls_connect(&node, &ca, None, "").await;
    let refused = match refused {
        Err(error) => error.to_string(),
        // TLS 1.3: the refusal may arrive with the first reply instead.
        Ok(mut con) => run::<String>(&mut con, &["PING"])
            .await
            .unwrap_err()
            .to_string(),
    };
    assert!(!refused.is_empty());
    let mut con = tls_connect(&node, &ca, Some(clients.sign(&["app"])), "")
        .await
        .expect("a client certificate signed by the client CA");
    assert_eq!(run::<String>(&mut con, &["PING"]).await.unwrap(), "PONG");
    assert!(
        metric(
            &node,
            "ringcache_connections_refused_total{plane=\"resp\",reason=\"tls_handshake\"}"
        )
        .await
            >= 1.0
    );
}

// ---- connection and server commands ---------------------------------------------------------------

#[tokio::test]
async fn connection_and_server_commands_answer_as_redis_does() {
    let node = TestNode::start_default().await;
    let mut con = connect(&node).await;
    // CLIENT: the line has Redis's fields; clients' connect-time commands are accepted.
    assert_eq!(
        run::<String>(&mut con, &["CLIENT", "SETNAME", "worker-1"])
            .await
            .unwrap(),
        "OK"
    );
    for args in [
        ["CLIENT", "SETINFO", "LIB-NAME", "redis-py"],
        ["CLIENT", "SETINFO", "LIB-VER", "5.0.1"],
    ] {
        assert_eq!(run::<String>(&mut con, &args).await.unwrap(), "OK");
    }
    assert_eq!(
        run::<String>(&mut con, &["CLIENT", "NO-EVICT", "on"])
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(
        run::<String>(&mut con, &["CLIENT", "NO-TOUCH", "off"])
            .await
            .unwrap(),
        "OK"
    );
    let info = run::<String>(&mut con, &["CLIENT", "INFO"]).await.unwrap();
    let id = run::<i64>(&mut con, &["CLIENT", "ID"]).await.unwrap();
    let field = |line: &str, name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")).map(str::to_owned))
            .unwrap_or_else(|| panic!("{name} in {line}"))
    };
    assert_eq!(field(&info, "id"), id.to_string());
    assert_eq!(field(&info, "name"), "worker-1");
    assert_eq!(field(&info, "lib-name"), "redis-py");
    assert_eq!(field(&info, "lib-ver"), "5.0.1");
    assert_eq!(field(&info, "laddr"), node.resp_addr.to_string());
    assert_eq!(field(&info, "flags"), "e");
    assert_eq!(field(&info, "db"), "0");
    assert_eq!(field(&info, "resp"), "2");
    let other = connect(&node).await;
    let list = run::<String>(&mut con, &["CLIENT", "LIST"]).await.unwrap();
    assert!(list.lines().count() >= 2, "{list}");
    assert!(list.lines().any(|l| field(l, "name") == "worker-1"));
    drop(other);
    assert_eq!(
        run::<String>(&mut con, &["CLIENT", "GETNAME"])
            .await
            .unwrap(),
        "worker-1"
    );
    let bad = run::<String>(&mut con, &["CLIENT", "NOSUCH"])
        .await
        .unwrap_err();
    assert!(
        bad.to_string()
            .contains("unknown subcommand 'NOSUCH'. Try CLIENT HELP.")
    );

    // COMMAND from the table.
    let count = run::<i64>(&mut con, &["COMMAND", "COUNT"]).await.unwrap();
    let all = run::<Vec<redis::Value>>(&mut con, &["COMMAND"])
        .await
        .unwrap();
    assert_eq!(all.len() as i64, count);
    let info = run::<Vec<redis::Value>>(&mut con, &["COMMAND", "INFO", "set", "nosuch"])
        .await
        .unwrap();
    let redis::Value::Array(set) = &info[0] else {
        panic!("{info:?}")
    };
    assert_eq!(set.len(), 10);
    assert_eq!(set[1], redis::Value::Int(-3));
    assert_eq!(
        (&set[3], &set[4], &set[5]),
        (
            &redis::Value::Int(1),
            &redis::Value::Int(1),
            &redis::Value::Int(1)
        )
    );
    assert_eq!(info[1], redis::Value::Nil);
    assert_eq!(
        run::<Vec<String>>(
            &mut con,
            &["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"]
        )
        .await
        .unwrap(),
        ["a", "b"]
    );
    // TIME: seconds and microseconds.
    let time = run::<Vec<String>>(&mut con, &["TIME"]).await.unwrap();
    let seconds: u64 = time[0].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(seconds.abs_diff(now) <= 5);
    assert!(time[1].parse::<u32>().unwrap() < 1_000_000);
    // INFO: Redis's field names, by section.
    assert_eq!(
        run::<String>(&mut con, &["SET", "k", "v"]).await.unwrap(),
        "OK"
    );
    let info = run::<String>(&mut con, &["INFO"]).await.unwrap();
    for needle in [
        "# Server\r\n",
        "redis_version:7.2.0\r\n",
        "redis_mode:cluster\r\n",
        &format!("tcp_port:{}\r\n", node.resp_addr.port()),
        "# Clients\r\n",
        "# Memory\r\n",
        "# Stats\r\n",
        "# Keyspace\r\n",
        "db0:keys=1,expires=0,avg_ttl=0\r\n",
        "cluster_enabled:1\r\n",
    ] {
        assert!(info.contains(needle), "{needle} in {info}");
    }
    for name in [
        "ringcache_version",
        "uptime_in_seconds",
        "connected_clients",
        "used_memory",
        "maxmemory",
        "total_commands_processed",
        "keyspace_hits",
        "keyspace_misses",
    ] {
        assert!(info.contains(&format!("\r\n{name}:")), "{name} in {info}");
    }
    let keyspace = run::<String>(&mut con, &["INFO", "keyspace"])
        .await
        .unwrap();
    assert_eq!(keyspace, "# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n");
    assert_eq!(
        run::<String>(&mut con, &["INFO", "nosuch"]).await.unwrap(),
        ""
    );
    // The arity check comes from the table for every command.
    let arity = run::<String>(&mut con, &["PING", "a", "b"])
        .await
        .unwrap_err();
    assert!(
        arity
            .to_string()
            .contains("wrong number of arguments for 'ping' command")
    );

    // RESET: back to RESP2, name cleared.
    let (out, _) = raw(
        &node,
        b"HELLO 3\r\nCLIENT SETNAME x\r\nRESET\r\nCLIENT GETNAME\r\n",
        "$-1\r\n",
    )
    .await;
    assert!(out.ends_with("+RESET\r\n$-1\r\n"), "{out}");

    // redis-cli parses INFO and CLIENT LIST.
    let port = node.resp_addr.port().to_string();
    let (ok, out, _) = redis_cli(&["-h", "127.0.0.1", "-p", &port, "info", "server"]).await;
    assert!(ok && out.contains("redis_version:7.2.0"), "{out}");
    let (ok, out, _) = redis_cli(&["-h", "127.0.0.1", "-p", &port, "client", "list"]).await;
    assert!(ok && out.contains("cmd=client"), "{out}");

    // Metrics: commands and errors by command, connections.
    assert!(metric(&node, "ringcache_resp_commands_total{command=\"info\"}").await >= 3.0);
    assert!(
        metric(
            &node,
            "ringcache_resp_errors_total{command=\"ping\",error=\"ERR\"}"
        )
        .await
            >= 1.0
    );
    assert!(metric(&node, "ringcache_resp_connections").await >= 1.0);
}

/// An error reply's text, as the redis crate reports it (`ERR ...` or the code and text).
async fn error(con: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> String {
    let err = run::<redis::Value>(con, args)
        .await
        .expect_err("an error reply");
    match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => err.to_string(),
    }
}

#[tokio::test]
async fn string_commands_beyond_get_and_set() {
    let node = TestNode::start_default().await;
    let mut con = connect(&node).await;
    let int = async |con: &mut _, args: &[&str]| run::<i64>(con, args).await.unwrap();
    let text = async |con: &mut _, args: &[&str]| run::<Option<String>>(con, args).await.unwrap();

    // APPEND / STRLEN / GETRANGE / SETRANGE (the examples of Redis's documentation).
    assert_eq!(int(&mut con, &["APPEND", "greeting", "Hello"]).await, 5);
    assert_eq!(int(&mut con, &["APPEND", "greeting", " World"]).await, 11);
    assert_eq!(int(&mut con, &["STRLEN", "greeting"]).await, 11);
    assert_eq!(int(&mut con, &["STRLEN", "nothing"]).await, 0);
    assert_eq!(
        text(&mut con, &["GETRANGE", "greeting", "0", "3"])
            .await
            .unwrap(),
        "Hell"
    );
    assert_eq!(
        text(&mut con, &["GETRANGE", "greeting", "-3", "-1"])
            .await
            .unwrap(),
        "rld"
    );
    assert_eq!(
        text(&mut con, &["GETRANGE", "greeting", "10", "100"])
            .await
            .unwrap(),
        "d"
    );
    assert_eq!(
        text(&mut con, &["GETRANGE", "nothing", "0", "-1"])
            .await
            .unwrap(),
        ""
    );
    assert_eq!(
        int(&mut con, &["SETRANGE", "greeting", "6", "Redis"]).await,
        11
    );
    assert_eq!(
        text(&mut con, &["GET", "greeting"]).await.unwrap(),
        "Hello Redis"
    );
    assert_eq!(int(&mut con, &["SETRANGE", "padded", "3", "x"]).await, 4);
    assert_eq!(
        run::<Vec<u8>>(&mut con, &["GET", "padded"]).await.unwrap(),
        b"\0\0\0x"
    );
    assert_eq!(int(&mut con, &["SETRANGE", "empty", "5", ""]).await, 0);
    assert_eq!(
        int(&mut con, &["EXISTS", "empty"]).await,
        0,
        "nothing created"
    );
    assert_eq!(
        error(&mut con, &["SETRANGE", "k", "-1", "x"]).await,
        "ERR offset is out of range"
    );
    assert_eq!(
        error(&mut con, &["GETRANGE", "greeting", "a", "1"]).await,
        "ERR value is not an integer or out of range"
    );

    // INCRBYFLOAT.
    run::<String>(&mut con, &["SET", "f", "10.50"])
        .await
        .unwrap();
    assert_eq!(
        text(&mut con, &["INCRBYFLOAT", "f", "0.1"]).await.unwrap(),
        "10.6"
    );
    assert_eq!(
        text(&mut con, &["INCRBYFLOAT", "f", "-5"]).await.unwrap(),
        "5.6"
    );
    run::<String>(&mut con, &["SET", "f", "5.0e3"])
        .await
        .unwrap();
    assert_eq!(
        text(&mut con, &["INCRBYFLOAT", "f", "2.0e2"])
            .await
            .unwrap(),
        "5200"
    );
    assert_eq!(
        text(&mut con, &["INCRBYFLOAT", "newf", "1.5"])
            .await
            .unwrap(),
        "1.5"
    );
    assert_eq!(
        error(&mut con, &["INCRBYFLOAT", "greeting", "1"]).await,
        "ERR value is not a valid float"
    );
    assert_eq!(
        error(&mut con, &["INCRBYFLOAT", "f", "abc"]).await,
        "ERR value is not a valid float"
    );
    assert_eq!(
        error(&mut con, &["INCRBYFLOAT", "f", "nan"]).await,
        "ERR value is not a valid float"
    );
    assert_eq!(
        error(&mut con, &["INCRBYFLOAT", "f", "inf"]).await,
        "ERR increment would produce NaN or Infinity"
    );
    assert_eq!(
        text(&mut con, &["GET", "f"]).await.unwrap(),
        "5200",
        "unchanged"
    );

    // GETDEL.
    assert_eq!(text(&mut con, &["GETDEL", "f"]).await.unwrap(), "5200");
    assert_eq!(text(&mut con, &["GETDEL", "f"]).await, None);
    assert_eq!(int(&mut con, &["EXISTS", "f"]).await, 0);

    // SET's options.
    assert_eq!(
        text(&mut con, &["SET", "s", "a", "EX", "100"])
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(
        text(&mut con, &["SET", "s", "b", "KEEPTTL"]).await.unwrap(),
        "OK"
    );
    let ttl = int(&mut con, &["TTL", "s"]).await;
    assert!((99..=100).contains(&ttl), "KEEPTTL kept {ttl}");
    let later = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1000)
        .to_string();
    assert_eq!(
        text(&mut con, &["SET", "s", "c", "EXAT", &later])
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(int(&mut con, &["EXPIRETIME", "s"]).await.to_string(), later);
    let later_ms = format!("{later}000");
    assert_eq!(
        int(&mut con, &["PEXPIRETIME", "s"]).await.to_string(),
        later_ms
    );
    assert_eq!(
        text(&mut con, &["SET", "s", "d", "PXAT", &later_ms, "GET"])
            .await
            .unwrap(),
        "c"
    );
    assert_eq!(
        text(&mut con, &["SET", "s", "e", "PXAT", "1"])
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(
        text(&mut con, &["GET", "s"]).await,
        None,
        "a past PXAT expires at once"
    );
    assert_eq!(
        text(&mut con, &["SET", "s", "v", "EX", "5", "EX", "10"])
            .await
            .unwrap(),
        "OK"
    );
    for conflict in [
        &["SET", "s", "v", "NX", "XX"][..],
        &["SET", "s", "v", "EX", "10", "PX", "100"],
        &["SET", "s", "v", "EX", "10", "KEEPTTL"],
        &["SET", "s", "v", "KEEPTTL", "EXAT", "10"],
        &["SET", "s", "v", "PXAT"],
        &["SET", "s", "v", "PERSIST"],
        &["SET", "s", "v", "EX", "abc", "NX", "XX"],
    ] {
        assert_eq!(
            error(&mut con, conflict).await,
            "ERR syntax error",
            "{conflict:?}"
        );
    }
    assert_eq!(
        error(&mut con, &["SET", "s", "v", "EXAT", "0"]).await,
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        error(&mut con, &["SET", "s", "v", "EX", "9223372036854775807"]).await,
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        error(&mut con, &["SET", "s", "v", "PX", "x"]).await,
        "ERR value is not an integer or out of range"
    );

    // GETEX.
    run::<String>(&mut con, &["SET", "g", "v"]).await.unwrap();
    assert_eq!(text(&mut con, &["GETEX", "g"]).await.unwrap(), "v");
    assert_eq!(int(&mut con, &["TTL", "g"]).await, -1);
    assert_eq!(
        text(&mut con, &["GETEX", "g", "EX", "50"]).await.unwrap(),
        "v"
    );
    assert_eq!(int(&mut con, &["TTL", "g"]).await, 50);
    assert_eq!(
        text(&mut con, &["GETEX", "g", "PERSIST"]).await.unwrap(),
        "v"
    );
    assert_eq!(int(&mut con, &["TTL", "g"]).await, -1);
    assert_eq!(
        text(&mut con, &["GETEX", "g", "PXAT", &later_ms])
            .await
            .unwrap(),
        "v"
    );
    assert_eq!(
        int(&mut con, &["PEXPIRETIME", "g"]).await.to_string(),
        later_ms
    );
    assert_eq!(
        text(&mut con, &["GETEX", "g", "EXAT", "1"]).await.unwrap(),
        "v"
    );
    assert_eq!(
        text(&mut con, &["GET", "g"]).await,
        None,
        "a past EXAT deletes"
    );
    assert_eq!(text(&mut con, &["GETEX", "g", "EX", "10"]).await, None);
    assert_eq!(
        error(&mut con, &["GETEX", "g", "EX", "10", "PERSIST"]).await,
        "ERR syntax error"
    );
    assert_eq!(
        error(&mut con, &["GETEX", "g", "PX", "0"]).await,
        "ERR invalid expire time in 'getex' command"
    );

    // The EXPIRE family with NX / XX / GT / LT.
    run::<String>(&mut con, &["SET", "e", "v"]).await.unwrap();
    assert_eq!(int(&mut con, &["EXPIRE", "e", "100", "XX"]).await, 0);
    assert_eq!(
        int(&mut con, &["EXPIRE", "e", "100", "GT"]).await,
        0,
        "no TTL is forever"
    );
    assert_eq!(int(&mut con, &["EXPIRE", "e", "100", "NX"]).await, 1);
    assert_eq!(int(&mut con, &["EXPIRE", "e", "200", "NX"]).await, 0);
    assert_eq!(int(&mut con, &["EXPIRE", "e", "50", "GT"]).await, 0);
    assert_eq!(
        int(&mut con, &["PEXPIRE", "e", "200000", "XX", "GT"]).await,
        1
    );
    assert_eq!(int(&mut con, &["TTL", "e"]).await, 200);
    assert_eq!(int(&mut con, &["EXPIRE", "e", "300", "LT"]).await, 0);
    assert_eq!(int(&mut con, &["EXPIREAT", "e", &later, "LT"]).await, 0);
    assert_eq!(int(&mut con, &["PEXPIREAT", "e", &later_ms]).await, 1);
    assert_eq!(int(&mut con, &["EXPIRETIME", "e"]).await.to_string(), later);
    assert_eq!(
        int(&mut con, &["EXPIRE", "e", "-1", "NX"]).await,
        0,
        "condition first"
    );
    assert_eq!(
        int(&mut con, &["EXPIRE", "e", "0", "LT"]).await,
        1,
        "past: deleted"
    );
    assert_eq!(int(&mut con, &["EXISTS", "e"]).await, 0);
    assert_eq!(
        int(&mut con, &["EXPIRE", "e", "10"]).await,
        0,
        "missing key"
    );
    run::<String>(&mut con, &["SET", "e", "v"]).await.unwrap();
    assert_eq!(int(&mut con, &["EXPIREAT", "e", "1"]).await, 1);
    assert_eq!(int(&mut con, &["EXISTS", "e"]).await, 0);
    assert_eq!(int(&mut con, &["EXPIRETIME", "e"]).await, -2);
    run::<String>(&mut con, &["SET", "e", "v"]).await.unwrap();
    assert_eq!(int(&mut con, &["EXPIRETIME", "e"]).await, -1);
    assert_eq!(
        error(&mut con, &["EXPIRE", "e", "10", "NX", "XX"]).await,
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    );
    assert_eq!(
        error(&mut con, &["EXPIRE", "e", "10", "GT", "LT"]).await,
        "ERR GT and LT options at the same time are not compatible"
    );
    assert_eq!(
        error(&mut con, &["EXPIRE", "e", "10", "YY"]).await,
        "ERR Unsupported option YY"
    );
    assert_eq!(
        error(&mut con, &["EXPIRE", "e", "9223372036854775807"]).await,
        "ERR invalid expire time in 'expire' command"
    );

    // MSETNX, TOUCH, TYPE.
    assert_eq!(int(&mut con, &["MSETNX", "m1", "a", "m2", "b"]).await, 1);
    assert_eq!(int(&mut con, &["MSETNX", "m3", "c", "m2", "x"]).await, 0);
    assert_eq!(int(&mut con, &["EXISTS", "m3"]).await, 0, "nothing set");
    assert_eq!(text(&mut con, &["GET", "m2"]).await.unwrap(), "b");
    assert_eq!(int(&mut con, &["TOUCH", "m1", "m2", "m3"]).await, 2);
    assert_eq!(text(&mut con, &["TYPE", "m1"]).await.unwrap(), "string");
    assert_eq!(text(&mut con, &["TYPE", "m3"]).await.unwrap(), "none");
    assert_eq!(
        error(&mut con, &["MSETNX", "a", "1", "b"]).await,
        "ERR wrong number of arguments for 'msetnx' command"
    );
    assert_eq!(
        error(&mut con, &["GETDEL"]).await,
        "ERR wrong number of arguments for 'getdel' command"
    );
}

#[tokio::test]
async fn growing_a_value_past_max_value_bytes_is_refused() {
    let mut config = ringcache_server::config::Config::for_test();
    config.store.max_value_bytes = 8;
    let node = TestNode::start(config).await;
    let mut con = connect(&node).await;
    assert_eq!(
        run::<i64>(&mut con, &["APPEND", "k", "12345678"])
            .await
            .unwrap(),
        8
    );
    let refused = error(&mut con, &["APPEND", "k", "9"]).await;
    assert!(
        refused.starts_with("ERR string exceeds maximum allowed size ("),
        "{refused}"
    );
    assert!(refused.contains("max_value_bytes (8)"), "{refused}");
    let refused = error(&mut con, &["SETRANGE", "k", "536870912", "x"]).await;
    assert!(
        refused.starts_with("ERR string exceeds maximum allowed size ("),
        "{refused}"
    );
    let refused = error(&mut con, &["SETRANGE", "k", "9223372036854775807", "x"]).await;
    assert!(
        refused.starts_with("ERR string exceeds maximum allowed size ("),
        "{refused}"
    );
    assert_eq!(
        run::<String>(&mut con, &["GET", "k"]).await.unwrap(),
        "12345678"
    );
    // Raw bytes: the same errors on the wire, and the connection stays usable.
    let (out, closed) = raw(
        &node,
        b"*4\r\n$8\r\nSETRANGE\r\n$1\r\nk\r\n$2\r\n-1\r\n$1\r\nx\r\nINCRBYFLOAT k abc\r\nPING\r\n",
        "+PONG\r\n",
    )
    .await;
    assert!(!closed);
    assert_eq!(
        out,
        "-ERR offset is out of range\r\n-ERR value is not a valid float\r\n+PONG\r\n"
    );
}

#[tokio::test]
async fn redis_cli_runs_the_string_commands() {
    let node = TestNode::start_default().await;
    let port = node.resp_addr.port().to_string();
    let cli = async |args: &[&str]| {
        let output = tokio::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .await
            .expect("redis-cli runs (scripts/test-deps installs redis-server with it)");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(cli(&["append", "k", "abc"]).await, "3\n");
    assert_eq!(cli(&["incrbyfloat", "n", "2.5"]).await, "2.5\n");
    assert_eq!(cli(&["getex", "k", "ex", "30"]).await, "abc\n");
    assert_eq!(cli(&["ttl", "k"]).await, "30\n");
    assert_eq!(cli(&["type", "k"]).await, "string\n");
    assert_eq!(cli(&["getdel", "k"]).await, "abc\n");
    assert_eq!(cli(&["type", "k"]).await, "none\n");
    assert_eq!(
        cli(&["expire", "n", "10", "nx", "xx"]).await.trim_end(),
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    );
}

/// A 3-node cluster with R = 2: every command is sent to a node that is not a replica of its
/// key (so it is forwarded to the primary), and the result is then read from both replicas'
/// stores (it was replicated: writes are QUORUM, 2 of 2, by default).
#[tokio::test]
async fn string_updates_are_forwarded_and_replicated() {
    let cluster = TestCluster::start_converged(3, DEADLINE, |_, config| {
        config.replication_factor = std::num::NonZeroU32::new(2).unwrap();
    })
    .await;
    let entry = &cluster.nodes[0];
    let entry_id = entry.node.config().node_id.clone();
    let view = entry.node.view();
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("key:{i}"))
        .filter(|k| !view.replicas(k.as_bytes()).contains(&entry_id))
        .take(8)
        .collect();
    assert_eq!(keys.len(), 8, "keys that node 0 does not hold");
    let replicas = |key: &str| -> Vec<&TestNode> {
        cluster
            .nodes
            .iter()
            .filter(|n| {
                view.replicas(key.as_bytes())
                    .contains(&n.node.config().node_id)
            })
            .collect()
    };
    let now = || entry.node.now_ms();
    let stored = |node: &TestNode, key: &str| {
        node.node
            .store()
            .get(key.as_bytes(), node.node.now_ms())
            .unwrap()
    };
    let forwarded_before = entry.node.metrics().forwarded_total();
    let mut con = connect(entry).await;
    let [append, range, float, getex, getdel, expire, msetnx, set] = &keys[..] else {
        unreachable!()
    };
    run::<i64>(&mut con, &["APPEND", append, "ab"])
        .await
        .unwrap();
    assert_eq!(
        run::<i64>(&mut con, &["APPEND", append, "cd"])
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        run::<i64>(&mut con, &["SETRANGE", range, "2", "xy"])
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        run::<String>(&mut con, &["INCRBYFLOAT", float, "1.25"])
            .await
            .unwrap(),
        "1.25"
    );
    run::<String>(&mut con, &["SET", getex, "v"]).await.unwrap();
    assert_eq!(
        run::<String>(&mut con, &["GETEX", getex, "EX", "100"])
            .await
            .unwrap(),
        "v"
    );
    run::<String>(&mut con, &["SET", getdel, "v"])
        .await
        .unwrap();
    assert_eq!(
        run::<String>(&mut con, &["GETDEL", getdel]).await.unwrap(),
        "v"
    );
    run::<String>(&mut con, &["SET", expire, "v", "EX", "100"])
        .await
        .unwrap();
    assert_eq!(
        run::<i64>(&mut con, &["EXPIRE", expire, "500", "GT"])
            .await
            .unwrap(),
        1
    );
    // One key: its primary takes the whole MSETNX.
    assert_eq!(
        run::<i64>(&mut con, &["MSETNX", msetnx, "m"])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        run::<i64>(&mut con, &["MSETNX", msetnx, "n"])
            .await
            .unwrap(),
        0
    );
    run::<String>(&mut con, &["SET", set, "a", "EX", "100"])
        .await
        .unwrap();
    run::<String>(&mut con, &["SET", set, "b", "KEEPTTL"])
        .await
        .unwrap();
    assert!(entry.node.metrics().forwarded_total() >= forwarded_before + 14);

    for key in &keys {
        let holders = replicas(key);
        assert_eq!(holders.len(), 2, "{key}");
        assert!(
            stored(entry, key).is_none(),
            "node 0 holds nothing of {key}"
        );
        let copies: Vec<_> = holders.iter().map(|n| stored(n, key)).collect();
        assert_eq!(
            copies[0], copies[1],
            "both replicas hold the same copy of {key}"
        );
    }
    let value = |key: &String| stored(replicas(key)[0], key).map(|item| item.value);
    assert_eq!(value(append).as_deref(), Some(&b"abcd"[..]));
    assert_eq!(value(range).as_deref(), Some(&b"\0\0xy"[..]));
    assert_eq!(value(float).as_deref(), Some(&b"1.25"[..]));
    assert_eq!(value(getdel), None);
    assert_eq!(value(msetnx).as_deref(), Some(&b"m"[..]));
    assert_eq!(value(set).as_deref(), Some(&b"b"[..]));
    let expiry = |key: &String| {
        stored(replicas(key)[0], key)
            .unwrap()
            .expires_at_ms
            .unwrap()
    };
    assert!(expiry(getex) > now() + 90_000, "GETEX's TTL replicated");
    assert!(
        expiry(expire) > now() + 400_000,
        "EXPIRE GT's TTL replicated"
    );
    assert!(expiry(set) > now() + 90_000, "KEEPTTL kept the TTL on both");

    // MSETNX over keys no single node holds is refused whole.
    let mut spread = vec!["MSETNX"];
    let fresh: Vec<String> = (0..40).map(|i| format!("spread:{i}")).collect();
    for key in &fresh {
        spread.extend([key.as_str(), "x"]);
    }
    let refused = error(&mut con, &spread).await;
    assert!(refused.contains("held by different nodes"), "{refused}");
    for node in &cluster.nodes {
        for key in &fresh {
            assert!(
                stored(node, key).is_none(),
                "{key} on {}",
                node.node.config().node_id
            );
        }
    }
}

/// Every key `SCAN ... MATCH pattern` returns on `node`, through the redis crate's iterator.
async fn scan_keys(node: &TestNode, pattern: &str) -> Vec<String> {
    use redis::AsyncCommands as _;
    let mut con = connect(node).await;
    let mut iter = con.scan_match::<_, String>(pattern).await.unwrap();
    let mut keys = Vec::new();
    while let Some(key) = iter.next_item().await {
        keys.push(key.unwrap());
    }
    keys
}

#[tokio::test]
async fn scan_randomkey_dbsize_and_flush_on_one_node() {
    let mut config = Config::for_test();
    config.max_batch_keys = 50;
    let node = TestNode::start(config).await;
    let mut con = connect(&node).await;
    assert_eq!(
        run::<Option<String>>(&mut con, &["RANDOMKEY"])
            .await
            .unwrap(),
        None
    );
    assert_eq!(run::<i64>(&mut con, &["DBSIZE"]).await.unwrap(), 0);
    for i in 0..300 {
        let _: () = run(&mut con, &["SET", &format!("user:{i}"), "v"])
            .await
            .unwrap();
        let _: () = run(&mut con, &["SET", &format!("other:{i}"), "v"])
            .await
            .unwrap();
    }
    let _: () = run(&mut con, &["SET", "a*b", "v"]).await.unwrap();
    assert_eq!(run::<i64>(&mut con, &["DBSIZE"]).await.unwrap(), 601);

    let mut users = scan_keys(&node, "user:*").await;
    users.sort();
    let mut expected: Vec<String> = (0..300).map(|i| format!("user:{i}")).collect();
    expected.sort();
    assert_eq!(users, expected, "every user key exactly once");
    assert_eq!(scan_keys(&node, "*").await.len(), 601);
    assert_eq!(scan_keys(&node, "user:1[0-2]").await.len(), 3);
    assert_eq!(scan_keys(&node, "a\\*b").await, ["a*b"]);

    // COUNT bounds a reply; above --max-batch-keys (50 here) it is clamped.
    let (cursor, keys): (String, Vec<String>) =
        run(&mut con, &["SCAN", "0", "COUNT", "5"]).await.unwrap();
    assert!(keys.len() <= 5 && cursor != "0", "{cursor} {keys:?}");
    let (_, keys): (String, Vec<String>) = run(&mut con, &["SCAN", "0", "COUNT", "100000"])
        .await
        .unwrap();
    assert!(!keys.is_empty() && keys.len() <= 50, "{}", keys.len());
    // TYPE: every key is a string.
    let (_, keys): (String, Vec<String>) =
        run(&mut con, &["SCAN", "0", "TYPE", "STRING", "COUNT", "40"])
            .await
            .unwrap();
    assert!(!keys.is_empty());
    let mut cursor = "0".to_owned();
    loop {
        let (next, keys): (String, Vec<String>) =
            run(&mut con, &["SCAN", &cursor, "TYPE", "hash", "COUNT", "50"])
                .await
                .unwrap();
        assert!(keys.is_empty());
        if next == "0" {
            break;
        }
        cursor = next;
    }

    // Errors, as Redis words them.
    let error = |args: &'static [&'static str]| {
        let mut con = con.clone();
        async move {
            run::<redis::Value>(&mut con, args)
                .await
                .unwrap_err()
                .to_string()
        }
    };
    assert!(error(&["SCAN", "abc"]).await.contains("invalid cursor"));
    assert!(
        error(&["SCAN", "18446744073709551616"])
            .await
            .contains("invalid cursor")
    );
    assert!(
        error(&["SCAN", "0", "COUNT", "0"])
            .await
            .contains("syntax error")
    );
    assert!(
        error(&["SCAN", "0", "COUNT", "x"])
            .await
            .contains("not an integer")
    );
    assert!(
        error(&["SCAN", "0", "MATCH"])
            .await
            .contains("syntax error")
    );
    assert!(
        error(&["SCAN", "0", "NOVALUES", "1"])
            .await
            .contains("syntax error")
    );
    assert!(
        error(&["SCAN"])
            .await
            .contains("wrong number of arguments for 'scan'")
    );
    assert!(error(&["RANDOMKEY", "x"]).await.contains("wrong number"));
    assert!(error(&["DBSIZE", "x"]).await.contains("wrong number"));
    assert!(error(&["FLUSHALL", "LATER"]).await.contains("syntax error"));
    assert!(
        error(&["FLUSHDB", "ASYNC", "SYNC"])
            .await
            .contains("syntax error")
    );
    // A stray cursor is still a cursor (as in Redis): it answers, and ends.
    let (_, _): (String, Vec<String>) = run(&mut con, &["SCAN", "-1"]).await.unwrap();

    let key: String = run(&mut con, &["RANDOMKEY"]).await.unwrap();
    assert!(key.starts_with("user:") || key.starts_with("other:") || key == "a*b");

    assert_eq!(
        run::<String>(&mut con, &["FLUSHALL", "ASYNC"])
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(run::<i64>(&mut con, &["DBSIZE"]).await.unwrap(), 0);
    assert_eq!(
        run::<Option<String>>(&mut con, &["RANDOMKEY"])
            .await
            .unwrap(),
        None
    );
    assert!(scan_keys(&node, "*").await.is_empty());
    // Writes after a flush are kept.
    let _: () = run(&mut con, &["SET", "after", "v"]).await.unwrap();
    assert_eq!(
        run::<String>(&mut con, &["GET", "after"]).await.unwrap(),
        "v"
    );
    assert_eq!(
        run::<String>(&mut con, &["FLUSHDB", "SYNC"]).await.unwrap(),
        "OK"
    );
    assert_eq!(run::<i64>(&mut con, &["DBSIZE"]).await.unwrap(), 0);
}

#[tokio::test]
async fn a_scan_returns_every_key_that_stays_while_others_come_and_go() {
    let node = TestNode::start_default().await;
    let mut con = connect(&node).await;
    for i in 0..500 {
        let _: () = run(&mut con, &["SET", &format!("stay:{i}"), "v"])
            .await
            .unwrap();
        let _: () = run(&mut con, &["SET", &format!("churn:{i}"), "v"])
            .await
            .unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let (mut cursor, mut round) = ("0".to_owned(), 0);
    loop {
        let (next, keys): (String, Vec<String>) = run(&mut con, &["SCAN", &cursor, "COUNT", "20"])
            .await
            .unwrap();
        seen.extend(keys);
        if next == "0" {
            break;
        }
        cursor = next;
        // Between calls: delete some churn keys, add new ones, overwrite staying ones.
        for j in 0..10 {
            let n = round * 10 + j;
            let _: i64 = run(&mut con, &["DEL", &format!("churn:{n}")])
                .await
                .unwrap();
            let _: () = run(&mut con, &["SET", &format!("new:{n}"), "v"])
                .await
                .unwrap();
            let _: () = run(&mut con, &["SET", &format!("stay:{n}"), "w"])
                .await
                .unwrap();
        }
        round += 1;
        assert!(round < 10_000, "the scan ends");
    }
    for i in 0..500 {
        assert!(seen.contains(&format!("stay:{i}")), "stay:{i} missed");
    }
}

#[tokio::test]
async fn redis_cli_scans_with_a_pattern() {
    let node = TestNode::start_default().await;
    let mut con = connect(&node).await;
    for i in 0..120 {
        let _: () = run(&mut con, &["SET", &format!("cli:{i}"), "v"])
            .await
            .unwrap();
    }
    let _: () = run(&mut con, &["SET", "skip", "v"]).await.unwrap();
    let output = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &node.resp_addr.port().to_string()])
        .args(["--scan", "--pattern", "cli:*"])
        .output()
        .await
        .expect("redis-cli runs (scripts/test-deps installs it)");
    assert!(output.status.success(), "{output:?}");
    let mut keys: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 120, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("cli:")));
}

#[tokio::test]
async fn scan_on_every_node_covers_the_cluster_once_and_flushall_empties_it_for_good() {
    let cluster = TestCluster::start_converged(3, DEADLINE, |_, _| {}).await;
    let mut first = connect(&cluster.nodes[0]).await;
    let expected: std::collections::BTreeSet<String> =
        (0..200).map(|i| format!("key:{i}")).collect();
    for key in &expected {
        let _: () = run(&mut first, &["SET", key, "v"]).await.unwrap();
    }
    // Each node returns the keys it is primary for: together every key, none twice (once
    // replication has reached every primary; writes are acknowledged at QUORUM).
    ringcache_tests::wait_until(DEADLINE, || async {
        let mut all = Vec::new();
        for node in &cluster.nodes {
            all.extend(scan_keys(node, "key:*").await);
        }
        let distinct: std::collections::BTreeSet<String> = all.iter().cloned().collect();
        all.len() == expected.len() && distinct == expected
    })
    .await
    .expect("the nodes' scans partition the keys");
    for node in &cluster.nodes {
        let mut con = connect(node).await;
        assert_eq!(
            run::<i64>(&mut con, &["DBSIZE"]).await.unwrap(),
            200,
            "R = 3: all"
        );
    }

    // A late copy of a write made before the flush, as a hint or a lagging replica would
    // send it.
    let store = cluster.nodes[2].node.store();
    let old = store.get_versioned(b"key:7").unwrap().unwrap();
    let late = ringcache_proto::v1::VersionedEntry {
        key: bytes::Bytes::from_static(b"key:7"),
        value: old.value.clone(),
        version: old.version,
        expires_at_ms: None,
    };

    let mut second = connect(&cluster.nodes[1]).await;
    assert_eq!(
        run::<String>(&mut second, &["FLUSHALL"]).await.unwrap(),
        "OK"
    );
    for node in &cluster.nodes {
        let mut con = connect(node).await;
        assert_eq!(run::<i64>(&mut con, &["DBSIZE"]).await.unwrap(), 0);
    }

    // Nothing brings the keys back: the late copy is refused, anti-entropy finds nothing.
    let mut internal = cluster.nodes[2].raw_internal().await;
    let answer = internal
        .replicate(ringcache_proto::v1::ReplicateRequest {
            from_node_id: cluster.nodes[0].node.config().node_id.clone(),
            entries: vec![late],
            hinted: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.applied, answer.ignored), (0, 1));
    for node in &cluster.nodes {
        ringcache_server::antientropy::round(node.node.context()).await;
    }
    for node in &cluster.nodes {
        let mut con = connect(node).await;
        assert_eq!(run::<i64>(&mut con, &["DBSIZE"]).await.unwrap(), 0);
        assert_eq!(
            run::<Option<String>>(&mut con, &["GET", "key:7"])
                .await
                .unwrap(),
            None
        );
        assert!(scan_keys(node, "*").await.is_empty());
    }

    // New writes replicate as usual.
    let _: () = run(&mut second, &["SET", "fresh", "v"]).await.unwrap();
    ringcache_tests::wait_until(DEADLINE, || async {
        let mut held = 0;
        for node in &cluster.nodes {
            held += node.node.store().stats().keys;
        }
        held == 3
    })
    .await
    .expect("the new key reaches every replica");
}

#[tokio::test]
async fn flushall_says_which_nodes_it_did_not_reach() {
    let mut cluster =
        TestCluster::start_converged(3, DEADLINE, ringcache_tests::keep_suspects).await;
    let mut con = connect(&cluster.nodes[0]).await;
    let _: () = run(&mut con, &["SET", "k", "v"]).await.unwrap();
    let gone = cluster.nodes[2].node.config().node_id.clone();
    let down = cluster.take(&gone);
    down.crash().await.unwrap();
    let error = run::<String>(&mut con, &["FLUSHALL"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("FLUSHALL did not reach every node: 1 of 3 not flushed")
            && error.contains(&gone),
        "{error}"
    );
    // The nodes that answered did flush.
    for node in &cluster.nodes {
        assert_eq!(node.node.store().stats().keys, 0);
    }
}
