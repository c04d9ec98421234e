//! The RESP port's security and connection commands: AUTH and roles against the node's users,
//! TLS (the redis crate's rustls and `redis-cli --tls`), the authentication and idle timeouts,
//! CLIENT, COMMAND, INFO, TIME, RESET and the RESP metrics.

use std::time::Duration;

use ringcache_server::Config;
use ringcache_server::auth::{Role, UserEntry, sha256, to_hex};
use ringcache_server::config::TlsFiles;
use ringcache_tests::certs::{Ca, Scratch};
use ringcache_tests::resp::{connect, raw, run};
use ringcache_tests::{TestNode, metric_or_zero, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);

const READER_SECRET: &str = "reader-secret-0123456789";
const WRITER_SECRET: &str = "writer-secret-0123456789";
const ADMIN_SECRET: &str = "admin-secret-0123456789";
const DEFAULT_SECRET: &str = "default-secret-0123456789";

fn user(name: &str, role: Role, secret: &str) -> UserEntry {
    UserEntry::with_secret(name, role, secret.as_bytes())
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
    assert!(
        metric_or_zero(&node, "ringcache_auth_failures_total{reason=\"invalid\"}").await >= 3.0
    );
    assert!(
        metric_or_zero(&node, "ringcache_auth_failures_total{reason=\"missing\"}").await >= 4.0
    );
    assert!(
        metric_or_zero(
            &node,
            "ringcache_auth_failures_total{reason=\"permission_denied\"}"
        )
        .await
            >= 3.0
    );
    assert!(
        metric_or_zero(
            &node,
            "ringcache_resp_errors_total{command=\"set\",error=\"NOPERM\"}"
        )
        .await
            >= 2.0
    );
    assert!(
        metric_or_zero(
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
        metric_or_zero(
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
        metric_or_zero(
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
        metric_or_zero(
            &node,
            "ringcache_connections_refused_total{plane=\"resp\",reason=\"idle\"}"
        )
        .await
            >= 1.0
    );
}

// ---- TLS ------------------------------------------------------------------------------------------

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
        metric_or_zero(
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
        metric_or_zero(
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
    assert!(metric_or_zero(&node, "ringcache_resp_commands_total{command=\"info\"}").await >= 3.0);
    assert!(
        metric_or_zero(
            &node,
            "ringcache_resp_errors_total{command=\"ping\",error=\"ERR\"}"
        )
        .await
            >= 1.0
    );
    assert!(metric_or_zero(&node, "ringcache_resp_connections").await >= 1.0);
}
