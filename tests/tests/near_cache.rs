//! The client near cache end to end: loopback nodes, clients with `near_cache` on, and raw
//! `Cache.Invalidations` streams for the node-side bounds.
//!
//! Every wait is for a condition with a deadline.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use ringcache::{Client, Consistency, NearCacheOptions};
use ringcache_proto::v1::{self, InvalidationBatch};
use ringcache_tests::{TestCluster, patient};
use tonic::Code;

/// Generous bound for convergence and for an invalidation to arrive.
const DEADLINE: Duration = Duration::from_secs(30);

async fn near_client(targets: Vec<String>) -> Client {
    Client::builder()
        .seeds(targets)
        .near_cache(NearCacheOptions::default())
        .connect()
        .await
        .unwrap()
}

/// Polls `check` until it returns `Some`, or panics after [`DEADLINE`] naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads `key` until the near cache serves it (the node's invalidation stream is live and the
/// read was tracked).
async fn cached(client: &Client, key: &str) -> Option<Bytes> {
    let key = Bytes::copy_from_slice(key.as_bytes());
    eventually("a read served from the near cache", || {
        let key = key.clone();
        async move {
            let before = client.near_cache_stats().unwrap().hits;
            let value = client.get(key).await.unwrap();
            let hit = client.near_cache_stats().unwrap().hits > before;
            hit.then_some(value)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_never_reads_stale_and_a_caching_reader_sees_each_write() {
    let cluster = TestCluster::start_converged(3, DEADLINE, patient).await;
    let a = near_client(cluster.grpc_targets()).await;
    let b = near_client(cluster.grpc_targets()).await;
    a.set("k", "0").await.unwrap();
    assert_eq!(cached(&b, "k").await.as_deref(), Some(&b"0"[..]));
    cached(&a, "k").await;

    for i in 1..=40 {
        let value = i.to_string();
        a.set("k", value.clone()).await.unwrap();
        // A's own read after its write: never the older value, cached or not.
        assert_eq!(a.get("k").await.unwrap().as_deref(), Some(value.as_bytes()));
        // B cached the key: it sees the new value once the node's invalidation arrives.
        eventually("B sees the new value", || async {
            (b.get("k").await.unwrap().as_deref() == Some(value.as_bytes())).then_some(())
        })
        .await;
    }
    a.delete("k").await.unwrap();
    assert_eq!(a.get("k").await.unwrap(), None);

    let stats = b.near_cache_stats().unwrap();
    assert!(stats.hits > 0 && stats.misses > 0, "{stats:?}");
    assert!(stats.invalidations >= 40, "{stats:?}");
    assert!(stats.streams >= 1, "{stats:?}");
    let tracking: u64 = cluster
        .nodes
        .iter()
        .map(|n| n.node.tracking().stats().subscribers)
        .sum();
    assert!(
        tracking >= 2,
        "both clients subscribed somewhere: {tracking}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_bypass_the_near_cache() {
    let cluster = TestCluster::start_converged(1, DEADLINE, patient).await;
    let client = near_client(cluster.grpc_targets()).await;
    client.set("k", "v").await.unwrap();
    cached(&client, "k").await;
    let before = client.near_cache_stats().unwrap();
    let quorum = client.with_consistency(Consistency::Quorum);
    assert_eq!(quorum.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    let after = client.near_cache_stats().unwrap();
    assert_eq!((before.hits, before.misses), (after.hits, after.misses));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_invalidation_stream_empties_the_near_cache() {
    let mut cluster = TestCluster::start_converged(1, DEADLINE, patient).await;
    let client = near_client(cluster.grpc_targets()).await;
    for i in 0..5 {
        client.set(format!("k{i}"), "v").await.unwrap();
    }
    for i in 0..5 {
        cached(&client, &format!("k{i}")).await;
    }
    assert_eq!(client.near_cache_stats().unwrap().entries, 5);
    let flushes = client.near_cache_stats().unwrap().flushes;
    let node = cluster.take("n1");
    node.stop().await.unwrap();
    eventually("the near cache is emptied", || async {
        let stats = client.near_cache_stats().unwrap();
        (stats.entries == 0 && stats.flushes > flushes && stats.streams == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_memory_pressure_invalidates() {
    let cluster = TestCluster::start_converged(1, DEADLINE, |i, config| {
        patient(i, config);
        config.store.max_memory_bytes = 256 * 1024;
    })
    .await;
    let reader = near_client(cluster.grpc_targets()).await;
    let writer = Client::connect(cluster.grpc_targets()).await.unwrap();
    writer.set("victim", "v").await.unwrap();
    cached(&reader, "victim").await;
    let filler = Bytes::from(vec![b'x'; 4096]);
    let mut i = 0u32;
    eventually(
        "the evicted key is gone from the reader's near cache",
        || {
            let (reader, writer, filler) = (&reader, &writer, filler.clone());
            i += 1;
            let batch = i;
            async move {
                for j in 0..64 {
                    writer
                        .set(format!("fill-{batch}-{j}"), filler.clone())
                        .await
                        .unwrap();
                }
                reader.get("victim").await.unwrap().is_none().then_some(())
            }
        },
    )
    .await;
    assert!(cluster.nodes[0].node.store().stats().evictions > 0);
    assert!(reader.near_cache_stats().unwrap().invalidations > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_not_served_from_the_near_cache() {
    let cluster = TestCluster::start_converged(1, DEADLINE, patient).await;
    let client = near_client(cluster.grpc_targets()).await;
    let writer = Client::connect(cluster.grpc_targets()).await.unwrap();
    writer
        .set_ex("short", "v", Duration::from_millis(400))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    cached(&client, "short").await;
    eventually("the key expires", || async {
        client.get("short").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(started.elapsed() < DEADLINE);
}

/// Opens a raw invalidation stream and returns it with its tracking id.
async fn subscribe(
    cache: &mut v1::cache_client::CacheClient<tonic::transport::Channel>,
) -> (tonic::Streaming<InvalidationBatch>, u64) {
    let mut stream = cache
        .invalidations(v1::InvalidationsRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first batch");
    assert_ne!(first.tracking_id, 0);
    (stream, first.tracking_id)
}

/// A Get with `tracking_id`; whether the node says it tracked the key.
async fn tracked_get(
    cache: &mut v1::cache_client::CacheClient<tonic::transport::Channel>,
    key: &str,
    tracking_id: u64,
) -> bool {
    cache
        .get(v1::GetRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            consistency: 0,
            tracking_id,
        })
        .await
        .unwrap()
        .into_inner()
        .tracked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_subscriber_is_bounded_in_streams_and_tracked_keys() {
    let cluster = TestCluster::start_converged(1, DEADLINE, |i, config| {
        patient(i, config);
        config.tracking.max_subscribers = 2;
        config.tracking.max_keys = 4;
    })
    .await;
    let node = &cluster.nodes[0];
    let mut cache = node.raw_cache().await;

    // Subscriber bound.
    let (mut stream, id) = subscribe(&mut cache).await;
    let (_other, _) = subscribe(&mut cache).await;
    let refused = cache
        .invalidations(v1::InvalidationsRequest {})
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(node.node.tracking().stats().refused, 1);

    // A made-up tracking id (or one from before a restart) is served, tracks nothing, and the
    // answer says so: a client must not cache it.
    assert!(!tracked_get(&mut cache, "k0", 42).await);
    assert_eq!(node.node.tracking().stats().keys, 0);

    // Key bound: reading more keys than the table holds pushes keys out, and their
    // invalidations are sent.
    for i in 0..6 {
        assert!(tracked_get(&mut cache, &format!("k{i}"), id).await);
    }
    let stats = node.node.tracking().stats();
    assert_eq!(stats.keys, 4, "{stats:?}");
    assert_eq!(stats.evictions, 2, "{stats:?}");
    let mut told = Vec::new();
    while told.len() < 2 {
        let batch = stream.message().await.unwrap().expect("a batch");
        told.extend(batch.keys);
    }
    assert_eq!(told.len(), 2, "{told:?}");
}

// Current-thread runtime: the node's stream cannot drain its queue while one request's
// handler runs, so the overflow below is deterministic.
#[tokio::test]
async fn an_overflowing_invalidation_queue_ends_the_stream_with_an_error() {
    let cluster = TestCluster::start_converged(1, DEADLINE, |i, config| {
        patient(i, config);
        // Two keys of 2 bytes (each charged 32 bytes more).
        config.tracking.queue_bytes = 2 * (2 + 32);
    })
    .await;
    let node = &cluster.nodes[0];
    let mut cache = node.raw_cache().await;
    let (mut stream, id) = subscribe(&mut cache).await;
    let keys: Vec<Bytes> = (0..6).map(|i| Bytes::from(format!("k{i}"))).collect();
    for i in 0..6 {
        assert!(tracked_get(&mut cache, &format!("k{i}"), id).await);
    }
    // Six changes in one request against a queue of two keys: the stream ends with an error (never
    // a silent drop).
    cache
        .m_delete(v1::MDeleteRequest {
            keys,
            consistency: 0,
        })
        .await
        .unwrap();
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert_eq!(node.node.tracking().stats().overflows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_tells_every_subscriber_to_drop_everything() {
    let cluster = TestCluster::start_converged(1, DEADLINE, patient).await;
    let node = &cluster.nodes[0];
    let mut cache = node.raw_cache().await;
    let (mut stream, id) = subscribe(&mut cache).await;
    assert!(tracked_get(&mut cache, "k", id).await);
    node.node.store().flush();
    let batch = stream.message().await.unwrap().expect("a batch");
    assert!(batch.flush_all, "{batch:?}");
    assert_eq!(node.node.tracking().stats().keys, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_serves_and_fills_the_near_cache_and_sees_other_writers() {
    let cluster = TestCluster::start_converged(3, DEADLINE, patient).await;
    let reader = near_client(cluster.grpc_targets()).await;
    let writer = Client::connect(cluster.grpc_targets()).await.unwrap();
    let keys = ["a", "b", "c", "missing"];
    for key in &keys[..3] {
        writer.set(*key, "1").await.unwrap();
    }
    let one = Some(Bytes::from_static(b"1"));
    eventually("an MGet answered wholly from the near cache", || async {
        let before = reader.near_cache_stats().unwrap();
        let values = reader.mget(keys).await.unwrap();
        assert_eq!(values, vec![one.clone(), one.clone(), one.clone(), None]);
        let after = reader.near_cache_stats().unwrap();
        (after.hits - before.hits == 4).then_some(())
    })
    .await;
    writer.set("b", "2").await.unwrap();
    eventually("the MGet sees the other client's write", || async {
        let values = reader.mget(keys).await.unwrap();
        (values[1].as_deref() == Some(&b"2"[..])).then_some(())
    })
    .await;
    // The reader's own write is never followed by its older value.
    reader.mset([("c", "3")], None).await.unwrap();
    assert_eq!(
        reader.mget(["c"]).await.unwrap(),
        vec![Some(Bytes::from_static(b"3"))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_read_the_node_forwards_is_followed_by_an_invalidation() {
    // R = 1: every key has one holder, so the other nodes forward its reads.
    let cluster = TestCluster::start_converged(3, DEADLINE, |i, config| {
        patient(i, config);
        config.replication_factor = std::num::NonZeroU32::MIN;
    })
    .await;
    let node = &cluster.nodes[0];
    let id_of_node = node.node.config().node_id.clone();
    // A key another node is the primary of: this node forwards its reads.
    let key = (0..1000)
        .map(|i| format!("elsewhere-{i}"))
        .find(|key| {
            node.node
                .view()
                .forward_target(key.as_bytes(), &id_of_node)
                .is_some()
        })
        .expect("some key is held elsewhere");
    let mut cache = node.raw_cache().await;
    let (mut stream, id) = subscribe(&mut cache).await;
    assert!(
        !tracked_get(&mut cache, &key, id).await,
        "a forwarded read is answered untracked"
    );
    let batch = stream.message().await.unwrap().expect("a batch");
    assert_eq!(batch.keys, vec![Bytes::from(key)]);
    assert_eq!(node.node.tracking().stats().keys, 0, "nothing tracked here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_store_refuses_is_never_tracked() {
    let cluster = TestCluster::start_converged(1, DEADLINE, |i, config| {
        patient(i, config);
        config.store.max_key_bytes = 16;
    })
    .await;
    let node = &cluster.nodes[0];
    let mut cache = node.raw_cache().await;
    let (_stream, id) = subscribe(&mut cache).await;
    let refused = cache
        .get(v1::GetRequest {
            key: Bytes::from(vec![b'x'; 17]),
            consistency: 0,
            tracking_id: id,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(node.node.tracking().stats().keys, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_change_empties_the_near_cache() {
    let mut cluster = TestCluster::start_converged(1, DEADLINE, patient).await;
    let client = near_client(cluster.grpc_targets()).await;
    client.set("k", "v").await.unwrap();
    cached(&client, "k").await;
    let before = client.near_cache_stats().unwrap();
    assert_eq!(before.entries, 1);
    cluster.add(2, patient).await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    // The next near-cache read after the client takes in the new topology drops everything.
    eventually("the near cache is flushed for the new topology", || async {
        client.get("k").await.unwrap();
        let stats = client.near_cache_stats().unwrap();
        (stats.flushes > before.flushes).then_some(())
    })
    .await;
}
