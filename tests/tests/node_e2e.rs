//! One node and the client over loopback: every Cache operation, the documented error for each
//! kind of bad input, and the node still serving afterwards.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringcache::{Client, Error, KeyTtl, SetOptions};
use ringcache_proto::v1;
use ringcache_server::Config;
use ringcache_server::clock::ManualClock;
use ringcache_server::config::{ByteSize, Settings};
use ringcache_tests::TestNode;
use tonic::Code;

const T0: u64 = 1_700_000_000_000;

async fn client(node: &TestNode) -> Client {
    Client::connect([node.grpc_target()])
        .await
        .expect("connect to the test node")
}

/// Checks the node still answers a plain set/get.
async fn still_serving(client: &Client) {
    client
        .set("canary", "alive")
        .await
        .expect("node keeps serving");
    assert_eq!(
        client.get("canary").await.unwrap().as_deref(),
        Some(&b"alive"[..])
    );
}

fn config_with(settings: Settings) -> Config {
    let mut config = Config::from_settings(Settings {
        grpc_port: Some(0),
        http_port: Some(0),
        node_id: Some("e2e".to_owned()),
        ..settings
    })
    .unwrap();
    config.store.shards = 8;
    config
}

#[tokio::test]
async fn every_operation_round_trips() {
    let node = TestNode::start_default().await;
    let c = client(&node).await;

    assert_eq!(
        c.get("missing").await.unwrap(),
        None,
        "a miss is not an error"
    );
    let v1 = c.set("k", "v1").await.unwrap();
    let entry = c.get_entry("k").await.unwrap().unwrap();
    assert_eq!(
        (entry.value, entry.version, entry.ttl),
        (Bytes::from("v1"), v1, None)
    );

    // Conditions and the previous value.
    let out = c
        .set_with("k", "v2", SetOptions::new().if_absent().return_previous())
        .await
        .unwrap();
    assert!(!out.stored);
    assert_eq!(out.previous.as_deref(), Some(&b"v1"[..]));
    let out = c
        .set_with("k", "v2", SetOptions::new().if_present().return_previous())
        .await
        .unwrap();
    assert!(out.stored && out.version.unwrap() > v1);
    assert_eq!(out.previous.as_deref(), Some(&b"v1"[..]));
    assert!(
        !c.set_with("nope", "x", SetOptions::new().if_present())
            .await
            .unwrap()
            .stored
    );

    // Delete.
    assert!(c.delete("k").await.unwrap());
    assert!(!c.delete("k").await.unwrap());

    // Multi-key, results in request order.
    let versions = c
        .mset([("a", "1"), ("b", "2"), ("c", "3")], None)
        .await
        .unwrap();
    assert_eq!(versions.len(), 3);
    let got = c.mget(["c", "zz", "a"]).await.unwrap();
    assert_eq!(
        got,
        vec![Some(Bytes::from("3")), None, Some(Bytes::from("1"))]
    );
    assert_eq!(c.mdelete(["a", "b", "zz"]).await.unwrap(), 2);

    // Counters.
    assert_eq!(c.incr("n", 10).await.unwrap(), 10);
    assert_eq!(c.decr("n", 3).await.unwrap(), 7);
    assert_eq!(c.get("n").await.unwrap().as_deref(), Some(&b"7"[..]));

    // Compare-and-set.
    let v = c.compare_and_set("cas", 0, "first", None).await.unwrap();
    match c.compare_and_set("cas", v + 1, "lost", None).await {
        Err(Error::CasConflict { current_version }) => assert_eq!(current_version, Some(v)),
        other => panic!("expected a CAS conflict, got {other:?}"),
    }
    let v2 = c.compare_and_set("cas", v, "second", None).await.unwrap();
    assert!(v2 > v);
    assert_eq!(c.get("cas").await.unwrap().as_deref(), Some(&b"second"[..]));

    // TTL: expire, ttl, persist.
    assert_eq!(c.ttl("cas").await.unwrap(), KeyTtl::Persistent);
    assert!(c.expire("cas", Duration::from_secs(100)).await.unwrap());
    match c.ttl("cas").await.unwrap() {
        KeyTtl::ExpiresIn(left) => {
            assert!(left <= Duration::from_secs(100) && left > Duration::from_secs(90))
        }
        other => panic!("expected a TTL, got {other:?}"),
    }
    assert!(c.persist("cas").await.unwrap());
    assert_eq!(c.ttl("cas").await.unwrap(), KeyTtl::Persistent);
    assert!(!c.expire("missing", Duration::from_secs(1)).await.unwrap());
    assert_eq!(c.ttl("missing").await.unwrap(), KeyTtl::Missing);

    // Binary keys and values, and an empty value.
    let key = Bytes::from_static(b"\x00\xff\x10");
    c.set(key.clone(), Bytes::from_static(b"\x00\x01\x02"))
        .await
        .unwrap();
    assert_eq!(
        c.get(key).await.unwrap().as_deref(),
        Some(&b"\x00\x01\x02"[..])
    );
    c.set("empty", "").await.unwrap();
    assert_eq!(c.get("empty").await.unwrap().as_deref(), Some(&b""[..]));
    node.stop().await.unwrap();
}

#[tokio::test]
async fn ttl_expiry_follows_the_node_clock() {
    let clock = Arc::new(ManualClock::new(T0));
    let node = TestNode::start_with_clock(Config::for_test(), clock.clone()).await;
    let c = client(&node).await;
    c.set_ex("session", "data", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        c.incr_with_ttl("hits", 1, Duration::from_secs(5))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        c.ttl("session").await.unwrap(),
        KeyTtl::ExpiresIn(Duration::from_secs(30))
    );

    clock.advance(Duration::from_secs(29));
    assert!(c.get("session").await.unwrap().is_some());
    assert_eq!(
        c.get("hits").await.unwrap(),
        None,
        "counter expired after 5 s"
    );
    assert_eq!(
        c.incr("hits", 1).await.unwrap(),
        1,
        "an expired counter starts again"
    );

    clock.advance(Duration::from_secs(1));
    assert_eq!(c.get("session").await.unwrap(), None, "expired at 30 s");
    assert_eq!(c.ttl("session").await.unwrap(), KeyTtl::Missing);
    // The background task reclaims it without anyone touching the key.
    let store_node = node.node.clone();
    ringcache_tests::wait_until(Duration::from_secs(5), || {
        let n = store_node.clone();
        async move { n.store().stats().expirations >= 2 }
    })
    .await
    .unwrap();
    node.stop().await.unwrap();
}

#[tokio::test]
async fn batches_are_split_to_the_nodes_limits() {
    // A node that takes 4 keys per request and 64 KiB messages; it states both with its
    // topology, and the client splits every batch to fit.
    let node = TestNode::start(config_with(Settings {
        max_batch_keys: Some(4),
        max_key_bytes: Some(ByteSize(1024)),
        max_value_bytes: Some(ByteSize(16 * 1024)),
        max_message_bytes: Some(ByteSize(64 * 1024)),
        ..Settings::default()
    }))
    .await;
    let c = client(&node).await;

    let keys: Vec<String> = (0..50).map(|i| format!("key-{i}")).collect();
    let versions = c
        .mset(
            keys.iter().map(|k| (k.clone(), format!("value-of-{k}"))),
            None,
        )
        .await
        .expect("50 pairs in parts of 4");
    assert_eq!(versions.len(), 50);
    assert!(versions.iter().all(|&v| v > 0));

    // In order, misses included, across parts.
    let mut asked: Vec<String> = keys.iter().rev().cloned().collect();
    asked.insert(7, "missing-1".to_owned());
    asked.push("missing-2".to_owned());
    let values = c.mget(asked.clone()).await.expect("52 keys in parts of 4");
    for (key, value) in asked.iter().zip(&values) {
        let expected = (!key.starts_with("missing")).then(|| format!("value-of-{key}"));
        assert_eq!(
            value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            expected,
            "{key}"
        );
    }

    // 40 values of 10 KiB: 400 KiB in requests of at most 64 KiB.
    let big: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("big-{i}"), vec![b'a' + (i % 26) as u8; 10 * 1024]))
        .collect();
    c.mset(big.clone(), None)
        .await
        .expect("400 KiB of pairs within the 64 KiB message limit");
    for (key, value) in &big {
        assert_eq!(
            c.get(key.clone()).await.unwrap().as_deref(),
            Some(&value[..])
        );
    }

    let deleted = c
        .mdelete(keys.iter().cloned().chain(["missing-3".to_owned()]))
        .await
        .unwrap();
    assert_eq!(deleted, 50);
    assert!(
        c.mget(keys.clone())
            .await
            .unwrap()
            .iter()
            .all(Option::is_none)
    );

    // The client's own bound applies under the node's.
    let strict = Client::builder()
        .seeds([node.grpc_target()])
        .max_batch_keys(2)
        .connect()
        .await
        .unwrap();
    assert_eq!(strict.mget(keys.clone()).await.unwrap().len(), 50);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn an_mget_whose_answer_is_over_the_message_limit_is_halved_until_it_fits() {
    // 1000 keys per request, but answers of at most 64 KiB: 40 values of 10 KiB do not fit in
    // one answer (the node refuses to encode it), so the client halves the part until they do.
    let node = TestNode::start(config_with(Settings {
        max_key_bytes: Some(ByteSize(1024)),
        max_value_bytes: Some(ByteSize(16 * 1024)),
        max_message_bytes: Some(ByteSize(64 * 1024)),
        ..Settings::default()
    }))
    .await;
    let c = client(&node).await;
    let big: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("big-{i}"), vec![b'a' + (i % 26) as u8; 10 * 1024]))
        .collect();
    c.mset(big.clone(), None).await.unwrap();
    let mut keys: Vec<String> = big.iter().map(|(k, _)| k.clone()).collect();
    keys.push("missing".to_owned());
    let values = c
        .mget(keys.clone())
        .await
        .expect("halved until each answer fits");
    assert_eq!(values.len(), 41);
    for ((_, value), got) in big.iter().zip(&values) {
        assert_eq!(got.as_deref(), Some(&value[..]));
    }
    assert_eq!(values[40], None);

    // The client's own, smaller, message limit: its decoder refuses the answer; halved too.
    // (Unary calls: on the pipelined stream the node batches answers up to its own limit, so a
    // client's limit must not be below the nodes'; see ClientBuilder::max_message_bytes.)
    let small = Client::builder()
        .seeds([node.grpc_target()])
        .max_message_bytes(32 * 1024)
        .pipelining(false)
        .connect()
        .await
        .unwrap();
    let values = small.mget(keys).await.unwrap();
    assert_eq!(values.iter().flatten().count(), 40);

    // A single value over the client's limit is still an error, and says so.
    let error = Client::builder()
        .seeds([node.grpc_target()])
        .max_message_bytes(8 * 1024)
        .pipelining(false)
        .connect()
        .await
        .unwrap()
        .mget(["big-0", "big-1"])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidArgument(m) if m.contains("message length too large")),
        "{error:?}"
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn limits_give_invalid_argument_and_the_node_keeps_serving() {
    let node = TestNode::start(config_with(Settings {
        max_key_bytes: Some(ByteSize(16)),
        max_value_bytes: Some(ByteSize(1024)),
        max_batch_keys: Some(4),
        ..Settings::default()
    }))
    .await;
    let c = client(&node).await;
    let mut r = node.raw_cache().await;

    // Server-side checks, via the raw client so nothing is refused locally.
    let status = r
        .get(v1::GetRequest {
            key: Bytes::new(),
            consistency: 0,
            tracking_id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "key must not be empty");

    let cases: Vec<(&str, Result<(), Error>)> = vec![
        ("key too large", c.set(vec![b'k'; 17], "v").await.map(drop)),
        (
            "value too large",
            c.set("k", vec![0u8; 1025]).await.map(drop),
        ),
        (
            "not an integer",
            async {
                c.set("text", "abc").await?;
                c.incr("text", 1).await.map(drop)
            }
            .await,
        ),
        (
            "overflow",
            async {
                c.set("big", i64::MAX.to_string()).await?;
                c.incr("big", 1).await.map(drop)
            }
            .await,
        ),
        ("empty key", c.get("").await.map(drop)),
        (
            "zero ttl",
            c.set_ex("k", "v", Duration::ZERO).await.map(drop),
        ),
    ];
    for (what, result) in cases {
        match result {
            Err(Error::InvalidArgument(message)) => assert!(!message.is_empty(), "{what}"),
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }
    // The limits are inclusive.
    c.set(vec![b'k'; 16], vec![0u8; 1024]).await.unwrap();
    assert_eq!(c.mget(["a", "b", "c", "d"]).await.unwrap().len(), 4);
    // The node refuses a request over max_batch_keys (the typed client splits its batches
    // instead: batches_are_split_to_the_nodes_limits).
    let status = r
        .m_get(v1::MGetRequest {
            keys: ["a", "b", "c", "d", "e"].map(Bytes::from).to_vec(),
            consistency: 0,
            tracking_id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("max_batch_keys"),
        "{}",
        status.message()
    );

    // Codes of the raw statuses, as documented in cache.proto.
    let code = |r: Result<tonic::Response<v1::IncrResponse>, tonic::Status>| r.unwrap_err().code();
    let incr = |key: &'static str| v1::IncrRequest {
        key: Bytes::from(key),
        delta: 1,
        ..Default::default()
    };
    assert_eq!(code(r.incr(incr("big")).await), Code::OutOfRange);
    assert_eq!(code(r.incr(incr("text")).await), Code::InvalidArgument);
    let status = r
        .set(v1::SetRequest {
            key: Bytes::from("k"),
            ttl_ms: Some(0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("ttl"), "{}", status.message());
    let status = r
        .get(v1::GetRequest {
            key: Bytes::from("k"),
            consistency: 42,
            tracking_id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "unknown consistency level 42")
    );
    let status = r
        .set(v1::SetRequest {
            key: Bytes::from("k"),
            condition: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    still_serving(&c).await;
    node.stop().await.unwrap();
}

#[tokio::test]
async fn default_limits_accept_a_four_mib_value_and_refuse_more() {
    let node = TestNode::start_default().await;
    let c = client(&node).await;
    let max = 4 * 1024 * 1024;
    let big = Bytes::from(vec![0xabu8; max]);
    c.set("big", big.clone()).await.unwrap();
    assert_eq!(c.get("big").await.unwrap(), Some(big));
    match c.set("bigger", vec![0u8; max + 1]).await {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("max_value_bytes"), "{message}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match c.set(vec![b'k'; 8 * 1024 + 1], "v").await {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("max_key_bytes"), "{message}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    still_serving(&c).await;
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_over_the_grpc_limit_is_refused_before_it_is_decoded() {
    let node = TestNode::start(config_with(Settings {
        max_value_bytes: Some(ByteSize(1024)),
        max_message_bytes: Some(ByteSize(64 * 1024)),
        ..Settings::default()
    }))
    .await;
    let mut r = node.raw_cache().await;
    let status = r
        .set(v1::SetRequest {
            key: Bytes::from("k"),
            value: Bytes::from(vec![0u8; 128 * 1024]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    still_serving(&client(&node).await).await;
    node.stop().await.unwrap();
}

#[tokio::test]
async fn noeviction_reports_memory_full_and_reads_keep_working() {
    let node = TestNode::start(config_with(Settings {
        max_memory: Some(ByteSize(64 * 1024)),
        eviction_policy: Some(ringcache_server::config::EvictionPolicyArg::Noeviction),
        ..Settings::default()
    }))
    .await;
    let c = client(&node).await;
    let value = vec![1u8; 1000];
    let mut stored = 0;
    let error = loop {
        match c.set(format!("key{stored}"), value.clone()).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1000, "memory never filled");
    };
    match error {
        Error::MemoryFull(message) => assert!(message.contains("noeviction"), "{message}"),
        other => panic!("expected MemoryFull, got {other:?}"),
    }
    assert!(stored > 10);
    assert_eq!(
        c.get("key0").await.unwrap().as_deref(),
        Some(&value[..]),
        "reads still work"
    );
    assert!(c.delete("key0").await.unwrap(), "deletes still work");
    c.set("after-delete", "fits").await.unwrap();
    node.stop().await.unwrap();
}

#[tokio::test]
async fn eviction_keeps_the_node_under_max_memory() {
    let max = 256 * 1024;
    let node = TestNode::start(config_with(Settings {
        max_memory: Some(ByteSize(max)),
        ..Settings::default()
    }))
    .await;
    let c = client(&node).await;
    let value = vec![7u8; 1000];
    for i in 0..800 {
        c.set(format!("key{i}"), value.clone()).await.unwrap();
    }
    let stats = node.node.store().stats();
    assert!(stats.used_bytes <= max, "{} > {max}", stats.used_bytes);
    assert!(stats.evictions > 0);
    assert!(
        c.get("key799").await.unwrap().is_some(),
        "the newest key survives"
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn many_concurrent_clients_see_their_own_writes() {
    let node = TestNode::start_default().await;
    let c = client(&node).await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let c = c.clone();
        tasks.spawn(async move {
            for i in 0..50 {
                let key = format!("t{t}:k{i}");
                c.set(key.clone(), format!("{t}-{i}")).await.unwrap();
                assert_eq!(
                    c.get(key).await.unwrap().unwrap(),
                    Bytes::from(format!("{t}-{i}"))
                );
                c.incr("shared", 1).await.unwrap();
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    assert_eq!(
        c.get("shared").await.unwrap().as_deref(),
        Some(&b"800"[..]),
        "no increment lost"
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_node_restarted_with_its_data_dir_serves_what_it_held() {
    let dir = std::env::temp_dir().join(format!("ringcache-e2e-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config::for_test();
    config.snapshot.data_dir = Some(dir.clone());
    config
        .validate()
        .expect("the data dir is created and writable");
    let node = TestNode::start_without_gossip(config.clone()).await;
    let c = client(&node).await;
    c.set("kept", "across the restart").await.unwrap();
    let info = node.node.write_snapshot(None).await.unwrap();
    assert_eq!(info.entries, 1);
    node.stop().await.unwrap();

    // The restarted node loads the snapshot before it serves: the first read finds the key.
    let node = TestNode::start_without_gossip(config).await;
    let c = client(&node).await;
    assert_eq!(
        c.get("kept").await.unwrap().as_deref(),
        Some(&b"across the restart"[..])
    );
    node.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
