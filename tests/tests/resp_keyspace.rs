//! SCAN, RANDOMKEY, DBSIZE and FLUSHALL on the RESP port, on one node and across a cluster.

use std::time::Duration;

use ringcache_server::Config;
use ringcache_tests::resp::{connect, redis_cli, run};
use ringcache_tests::{TestCluster, TestNode};

const DEADLINE: Duration = Duration::from_secs(20);

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
    let mut keys: Vec<String> = redis_cli(&node, &["--scan", "--pattern", "cli:*"])
        .await
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
            handoff: false,
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
