//! The Redis protocol port with real Redis clients: the `redis` crate (a third-party client
//! library), `redis-cli` (Redis's own tool; `scripts/test-deps` installs it with redis-server),
//! and raw bytes for pipelining and protocol errors. On one node and through every node of a
//! 3-node cluster (a key any node does not hold is forwarded to its primary). AUTH, TLS and the
//! connection commands are in `resp_auth.rs`, the string commands in `resp_strings.rs`, SCAN and
//! FLUSHALL in `resp_keyspace.rs`, the Redis Cluster protocol in `resp_cluster.rs`.

use std::time::Duration;

use ringcache_tests::resp::{connect, raw, redis_cli, run};
use ringcache_tests::{TestCluster, TestNode};

const DEADLINE: Duration = Duration::from_secs(20);

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
    // Async: the node serves on this test's runtime, which must not block on the child.
    let cli = async |args: &[&str]| redis_cli(&node, args).await;
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

/// GET and SET of a key the node answers alone take a path without the gRPC scaffolding
/// (`CacheService::read_here` / `write_here`): it must keep the API's checks (minority
/// protection refuses the write, a read still works), its limits and its metrics.
#[tokio::test]
async fn gets_and_sets_answered_at_once_keep_the_api_checks_and_metrics() {
    let mut config = ringcache_server::config::Config::for_test();
    config.replication.min_cluster_size = 2;
    config.store.max_key_bytes = 16;
    let node = TestNode::start(config).await;
    let mut con = connect(&node).await;
    let refused = ringcache_tests::resp::error(&mut con, &["SET", "k", "v"]).await;
    assert!(
        refused.contains("only 1 of min_cluster_size 2 members visible"),
        "{refused}"
    );
    assert_eq!(
        run::<Option<String>>(&mut con, &["GET", "k"])
            .await
            .unwrap(),
        None
    );
    let long_key = "k".repeat(17);
    let too_long = ringcache_tests::resp::error(&mut con, &["GET", &long_key]).await;
    assert!(too_long.contains("key"), "{too_long}");

    let metrics = ringcache_tests::http_get(node.http_addr, "/metrics")
        .await
        .unwrap()
        .body;
    for line in [
        r#"ringcache_requests_total{op="get",result="miss"} 1"#,
        r#"ringcache_resp_commands_total{command="get"} 2"#,
        r#"ringcache_resp_commands_total{command="set"} 1"#,
        r#"ringcache_resp_errors_total{command="set",error="ERR"} 1"#,
    ] {
        assert!(metrics.contains(line), "no `{line}` in\n{metrics}");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"ringcache_requests_total{op="set",result="#)),
        "the refused SET is not counted:\n{metrics}"
    );
}
