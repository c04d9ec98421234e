//! The read-modify-write string operations (`Cache.Update`, GETDEL, conditional EXPIRE, the
//! all-or-nothing MSet) through the client crate and the raw gRPC service, with the node's manual
//! clock for TTLs: metrics, limits and errors as for the other writes.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ringcache::{Client, Error, GetExpiry, KeyTtl};
use ringcache_proto::v1;
use ringcache_server::clock::ManualClock;
use ringcache_server::config::Config;
use ringcache_tests::{TestNode, http_get};

const T0: u64 = 1_700_000_000_000;

#[tokio::test]
async fn the_client_appends_sets_ranges_adds_floats_and_changes_ttls() {
    let clock = Arc::new(ManualClock::new(T0));
    let mut config = Config::for_test();
    config.store.max_value_bytes = 64;
    let node = TestNode::start_with_clock(config, clock.clone()).await;
    let c = Client::connect([node.grpc_target()]).await.unwrap();

    assert_eq!(c.append("log", "ab").await.unwrap(), 2);
    c.expire("log", Duration::from_secs(10)).await.unwrap();
    assert_eq!(c.append("log", "cd").await.unwrap(), 4);
    assert_eq!(c.set_range("log", 6, "ef").await.unwrap(), 8);
    assert_eq!(
        c.get("log").await.unwrap().as_deref(),
        Some(&b"abcd\0\0ef"[..])
    );
    assert_eq!(
        c.ttl("log").await.unwrap(),
        KeyTtl::ExpiresIn(Duration::from_secs(10)),
        "APPEND and SETRANGE keep the TTL"
    );
    assert!(matches!(
        c.append("log", vec![b'x'; 60]).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        c.set_range("log", u64::MAX, "x").await,
        Err(Error::InvalidArgument(_))
    ));

    assert_eq!(&c.incr_by_float("price", 10.5).await.unwrap()[..], b"10.5");
    assert_eq!(&c.incr_by_float("price", 0.1).await.unwrap()[..], b"10.6");
    assert!(matches!(
        c.incr_by_float("log", 1.0).await,
        Err(Error::InvalidArgument(m)) if m.contains("not a valid float")
    ));
    assert!(matches!(
        c.incr_by_float("price", f64::INFINITY).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        c.incr_by_float("price", f64::NAN).await,
        Err(Error::InvalidArgument(_))
    ));

    assert_eq!(
        c.get_ex("price", GetExpiry::In(Duration::from_secs(5)))
            .await
            .unwrap()
            .as_deref(),
        Some(&b"10.6"[..])
    );
    assert_eq!(
        c.ttl("price").await.unwrap(),
        KeyTtl::ExpiresIn(Duration::from_secs(5))
    );
    assert!(
        c.get_ex("price", GetExpiry::Persist)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(c.ttl("price").await.unwrap(), KeyTtl::Persistent);
    let at = UNIX_EPOCH + Duration::from_millis(T0 + 2_000);
    assert!(
        c.get_ex("price", GetExpiry::At(at))
            .await
            .unwrap()
            .is_some()
    );
    clock.advance(Duration::from_millis(1_999));
    assert!(c.get("price").await.unwrap().is_some());
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        c.get("price").await.unwrap(),
        None,
        "expired at the absolute time"
    );
    assert_eq!(c.get_ex("price", GetExpiry::Persist).await.unwrap(), None);

    c.set("gone", "v").await.unwrap();
    assert_eq!(c.get_del("gone").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(c.get_del("gone").await.unwrap(), None);

    // Every op is counted under its own label.
    let text = http_get(node.http_addr, "/metrics").await.unwrap().body;
    for needle in [
        r#"ringcache_requests_total{op="append",result="ok"} 2"#,
        r#"ringcache_requests_total{op="append",result="invalid_argument"} 1"#,
        r#"ringcache_requests_total{op="set_range",result="ok"} 1"#,
        r#"ringcache_requests_total{op="incr_by_float",result="ok"} 2"#,
        r#"ringcache_requests_total{op="incr_by_float",result="invalid_argument"} 2"#,
        r#"ringcache_requests_total{op="get_ex",result="ok"} 3"#,
        r#"ringcache_requests_total{op="get_ex",result="miss"} 1"#,
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    node.stop().await.unwrap();
}

#[tokio::test]
async fn raw_update_expire_and_mset_requests() {
    let clock = Arc::new(ManualClock::new(T0));
    let node = TestNode::start_with_clock(Config::for_test(), clock.clone()).await;
    let mut raw = node.raw_cache().await;
    let update = |op| v1::UpdateRequest {
        key: "k".into(),
        consistency: 0,
        op,
    };
    let refused = raw.update(update(None)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let op = v1::update_request::Op::Append(v1::AppendOp {
        value: "abc".into(),
    });
    let reply = raw.update(update(Some(op))).await.unwrap().into_inner();
    assert_eq!((reply.found, reply.length), (true, 3));
    assert!(reply.version > 0);

    // Conditional and absolute expiry; an unknown condition is refused.
    let expire = |condition: v1::ExpireCondition, at: Option<u64>| v1::ExpireRequest {
        key: "k".into(),
        ttl_ms: 10_000,
        consistency: 0,
        condition: condition as i32,
        expires_at_ms: at,
    };
    let r = raw
        .expire(expire(v1::ExpireCondition::IfTtl, None))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.updated);
    let r = raw
        .expire(expire(v1::ExpireCondition::IfNoTtl, None))
        .await
        .unwrap()
        .into_inner();
    assert!(r.updated && !r.deleted);
    let ttl = raw
        .ttl(v1::TtlRequest {
            key: "k".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ttl.ttl_ms, ttl.expires_at_ms),
        (Some(10_000), Some(T0 + 10_000))
    );
    let r = raw
        .expire(expire(v1::ExpireCondition::IfEarlier, Some(T0 - 1)))
        .await
        .unwrap()
        .into_inner();
    assert!(r.updated && r.deleted);
    let mut bad = expire(v1::ExpireCondition::Always, None);
    bad.condition = 99;
    assert_eq!(
        raw.expire(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // SET with more than one expiry form is refused.
    let set = v1::SetRequest {
        key: "s".into(),
        value: "v".into(),
        ttl_ms: Some(5),
        keep_ttl: true,
        ..v1::SetRequest::default()
    };
    assert_eq!(
        raw.set(set).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // MSet if_absent: all or nothing, and max_batch_keys still holds.
    let pairs = |keys: &[&str]| {
        keys.iter()
            .map(|k| v1::KeyValue {
                key: k.to_string().into(),
                value: "v".into(),
            })
            .collect::<Vec<_>>()
    };
    let mset = |entries| v1::MSetRequest {
        entries,
        ttl_ms: None,
        consistency: 0,
        if_absent: true,
    };
    let r = raw
        .m_set(mset(pairs(&["a", "b"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.versions.len(), 2);
    let r = raw
        .m_set(mset(pairs(&["c", "a"])))
        .await
        .unwrap()
        .into_inner();
    assert!(r.versions.is_empty());
    let many: Vec<String> = (0..=node.node.config().max_batch_keys)
        .map(|i| format!("x{i}"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let refused = raw.m_set(mset(pairs(&many))).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("max_batch_keys"),
        "{}",
        refused.message()
    );

    // Through the pipelined stream too.
    let c = Client::connect([node.grpc_target()]).await.unwrap();
    assert_eq!(c.append("p", "x").await.unwrap(), 1);
    assert_eq!(c.append("p", "y").await.unwrap(), 2);
    node.stop().await.unwrap();
}
