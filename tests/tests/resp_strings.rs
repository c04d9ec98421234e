//! The string and expiry commands beyond GET/SET on the RESP port, with Redis's replies and
//! errors, on one node and forwarded and replicated across a 3-node cluster.

use std::time::Duration;

use ringcache_tests::resp::{connect, error, raw, redis_cli, run};
use ringcache_tests::{TestCluster, TestNode};

const DEADLINE: Duration = Duration::from_secs(20);

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
    // Async: the node serves on this test's runtime, which must not block on the child.
    let cli = async |args: &[&str]| redis_cli(&node, args).await;
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
