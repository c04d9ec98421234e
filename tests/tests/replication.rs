//! Replication on a 3-node cluster with R = 3 (every node is a replica of every key): writes at
//! each consistency level, quorum reads with read repair, hinted handoff to a restarted replica,
//! tombstones against late writes, concurrent writers, minority protection, and a set-style
//! checker that no acknowledged QUORUM write is lost when a replica crashes mid-way; and
//! batching: many concurrent writes reach every replica while sharing `Internal.Replicate` calls,
//! and with a replica down every write still gets its own answer, failure message and hint;
//! reads started together (one pipelined batch) share `Internal.ReadVersions` calls and each
//! gets its own key's value, and with a replica down QUORUM reads ask the next replica while ALL
//! reads fail naming it (the exact batching is unit-tested with a fake transport in
//! `server/src/replication/batch.rs`; here only what holds whatever the timing is asserted).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ringcache::{Client, Consistency, SetOptions};
use ringcache_proto::topology::NodeState;
use ringcache_proto::v1::{self, cache_client::CacheClient, internal_client::InternalClient};
use ringcache_tests::{
    TestCluster, TestNode, get_request, keep_suspects, metric, set_request, wait_until,
};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;

/// Generous bound for convergence, failure detection and background work.
const DEADLINE: Duration = Duration::from_secs(20);

const ONE: i32 = v1::Consistency::One as i32;
const QUORUM: i32 = v1::Consistency::Quorum as i32;
const ALL: i32 = v1::Consistency::All as i32;

async fn internal(node: &TestNode) -> InternalClient<Channel> {
    node.raw_internal().await
}

/// The live value `node` holds for `key`, if any.
fn value_on(node: &TestNode, key: &str) -> Option<Bytes> {
    node.node
        .store()
        .get_versioned(key.as_bytes())
        .unwrap()
        .filter(|item| item.is_live(node.node.now_ms()))
        .and_then(|item| item.value)
}

/// How many nodes of the cluster hold `value` at `key`.
fn copies(cluster: &TestCluster, key: &str, value: &str) -> usize {
    cluster
        .nodes
        .iter()
        .filter(|n| value_on(n, key).as_deref() == Some(value.as_bytes()))
        .count()
}

/// Waits until every remaining node sees `node_id` as no longer Active.
async fn wait_not_active(cluster: &TestCluster, node_id: &str) {
    wait_until(DEADLINE, || async {
        cluster.nodes.iter().all(|n| {
            n.node
                .view()
                .topology
                .member(node_id)
                .is_none_or(|m| m.state != NodeState::Active)
        })
    })
    .await
    .unwrap_or_else(|_| panic!("{node_id} still seen as active"));
}

#[tokio::test]
async fn an_acknowledged_quorum_write_is_on_a_quorum_at_once_and_on_every_replica_soon() {
    let cluster = TestCluster::start_converged(3, DEADLINE, ringcache_tests::patient).await;
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    for i in 0..50 {
        let (key, value) = (format!("key{i}"), format!("value{i}"));
        client.set(key.clone(), value.clone()).await.unwrap();
        assert!(
            copies(&cluster, &key, &value) >= 2,
            "{key}: acknowledged at QUORUM, so on 2 of 3 replicas already"
        );
    }
    wait_until(DEADLINE, || async {
        (0..50).all(|i| copies(&cluster, &format!("key{i}"), &format!("value{i}")) == 3)
    })
    .await
    .expect("the third copy arrives in the background");
    // Every kind of write is replicated: delete, incr, CAS, expire.
    client.delete("key0").await.unwrap();
    let counter = client.incr("counter", 5).await.unwrap();
    assert_eq!(counter, 5);
    let version = client.get_entry("key1").await.unwrap().unwrap().version;
    client
        .compare_and_set("key1", version, "swapped", None)
        .await
        .unwrap();
    assert!(
        client
            .expire("key2", Duration::from_secs(600))
            .await
            .unwrap()
    );
    wait_until(DEADLINE, || async {
        cluster.nodes.iter().all(|n| {
            let key2 = n.node.store().get_versioned(b"key2").unwrap().unwrap();
            value_on(n, "key0").is_none()
                && value_on(n, "counter").as_deref() == Some(&b"5"[..])
                && value_on(n, "key1").as_deref() == Some(&b"swapped"[..])
                && key2.expires_at_ms.is_some()
        })
    })
    .await
    .expect("every replica sees the delete, incr, CAS and expire");
    let sent: f64 = metric(
        &cluster.nodes[0],
        r#"ringcache_replica_writes_total{result="ok"}"#,
    )
    .await
        + metric(
            &cluster.nodes[1],
            r#"ringcache_replica_writes_total{result="ok"}"#,
        )
        .await
        + metric(
            &cluster.nodes[2],
            r#"ringcache_replica_writes_total{result="ok"}"#,
        )
        .await;
    assert!(sent >= 100.0, "replica writes counted: {sent}");
}

#[tokio::test]
async fn a_write_that_applied_nothing_replicates_nothing() {
    let cluster = TestCluster::start_converged(3, DEADLINE, ringcache_tests::patient).await;
    let mut n1 = cluster.nodes[0].raw_cache().await;
    n1.set(set_request("taken", "first", ALL)).await.unwrap();
    let ok = r#"ringcache_replica_writes_total{result="ok"}"#;
    let before = metric(&cluster.nodes[0], ok).await;
    let mut if_absent = set_request("taken", "second", ALL);
    if_absent.condition = v1::SetCondition::IfAbsent as i32;
    assert!(!n1.set(if_absent).await.unwrap().into_inner().stored);
    let expire = v1::ExpireRequest {
        key: Bytes::from_static(b"missing"),
        ttl_ms: 1000,
        consistency: ALL,
        ..Default::default()
    };
    assert!(!n1.expire(expire).await.unwrap().into_inner().updated);
    let cas = v1::CompareAndSetRequest {
        key: Bytes::from_static(b"taken"),
        expected_version: 1,
        value: Bytes::from_static(b"third"),
        consistency: ALL,
        ..Default::default()
    };
    let conflict = n1.compare_and_set(cas).await.unwrap_err();
    assert_eq!(conflict.code(), Code::FailedPrecondition);
    assert_eq!(metric(&cluster.nodes[0], ok).await, before);
    assert_eq!(copies(&cluster, "taken", "first"), 3);
}

#[tokio::test]
async fn with_a_replica_down_quorum_succeeds_and_all_fails_naming_the_counts() {
    let mut cluster = TestCluster::start_converged(3, DEADLINE, keep_suspects).await;
    cluster.take("n3").crash().await.unwrap();
    wait_not_active(&cluster, "n3").await;
    let mut n1 = cluster.nodes[0].raw_cache().await;

    n1.set(set_request("q", "v", QUORUM)).await.unwrap();
    assert_eq!(copies(&cluster, "q", "v"), 2);

    let error = n1.set(set_request("a", "v", ALL)).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    let message = error.message();
    // e.g. "ALL write needs 3 of 3 replicas, 2 acknowledged (n3: connection refused); the write
    // remains on the replicas that took it and is queued as hints for n3"
    assert!(
        message.starts_with("ALL write needs 3 of 3 replicas, 2 acknowledged (n3: "),
        "{message}"
    );
    assert!(
        message.ends_with(
            "; the write remains on the replicas that took it and is queued as hints for n3"
        ),
        "{message}"
    );
    // Not undone: the two live replicas took it.
    assert_eq!(copies(&cluster, "a", "v"), 2);
    assert_eq!(
        cluster.nodes[0].node.replicator().hints_pending_for("n3"),
        2,
        "both writes wait for n3"
    );
    assert_eq!(
        metric(&cluster.nodes[0], "ringcache_hints_pending").await,
        2.0
    );

    // Multi-key writes count per key.
    let error = n1
        .m_set(v1::MSetRequest {
            entries: (0..3)
                .map(|i| v1::KeyValue {
                    key: Bytes::from(format!("m{i}")),
                    value: Bytes::from_static(b"v"),
                })
                .collect(),
            ttl_ms: None,
            consistency: ALL,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert!(
        error
            .message()
            .starts_with("ALL write needs 3 of 3 replicas, 2 acknowledged (for 3 of 3 keys)"),
        "{}",
        error.message()
    );

    // Reads: QUORUM is met by the two live replicas, ALL is not.
    let got = n1.get(get_request("q", QUORUM)).await.unwrap().into_inner();
    assert!(got.found);
    let error = n1.get(get_request("q", ALL)).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert!(
        error
            .message()
            .starts_with("ALL read needs 3 of 3 replicas, 2 answered (n3: "),
        "{}",
        error.message()
    );
    // ONE writes are answered by the coordinator alone.
    n1.set(set_request("one", "v", ONE)).await.unwrap();
}

#[tokio::test]
async fn a_restarted_replica_gets_the_writes_it_missed_as_hints() {
    let mut cluster = TestCluster::start_converged(3, DEADLINE, keep_suspects).await;
    let n3_gossip = cluster.node("n3").gossip_addr.unwrap();
    cluster.take("n3").crash().await.unwrap();
    wait_not_active(&cluster, "n3").await;
    let mut n1 = cluster.nodes[0].raw_cache().await;
    for i in 0..20 {
        n1.set(set_request(&format!("missed{i}"), &format!("v{i}"), QUORUM))
            .await
            .unwrap();
    }
    // A delete while n3 is down travels as a hint too.
    n1.delete(v1::DeleteRequest {
        key: Bytes::from_static(b"missed0"),
        consistency: QUORUM,
        ..Default::default()
    })
    .await
    .unwrap();
    let coordinator = &cluster.nodes[0].node;
    assert_eq!(coordinator.replicator().hints_pending_for("n3"), 21);

    // Same id and gossip address (a process restarted in place: a restart at another address
    // would wait until the old one is declared dead), new incarnation, empty memory.
    cluster
        .add_on_gossip_port(3, n3_gossip.port(), keep_suspects)
        .await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    wait_until(DEADLINE, || async {
        cluster.nodes[0].node.replicator().hints_pending_for("n3") == 0
    })
    .await
    .expect("the hints are delivered once n3 is active again");
    assert!(metric(&cluster.nodes[0], "ringcache_hints_replayed_total").await >= 21.0);
    assert_eq!(
        metric(&cluster.nodes[0], "ringcache_hints_pending").await,
        0.0
    );
    let n3 = cluster.node("n3");
    wait_until(DEADLINE, || async {
        (1..20).all(|i| value_on(n3, &format!("missed{i}")) == Some(Bytes::from(format!("v{i}"))))
    })
    .await
    .unwrap_or_else(|_| {
        let held = (1..20)
            .filter(|i| value_on(n3, &format!("missed{i}")).is_some())
            .count();
        panic!(
            "n3 holds {held} of 19 keys after the hints were delivered; n3's rebalancing: {:?}",
            n3.node.rebalance().to_wire()
        )
    });
    let tombstone = n3.node.store().get_versioned(b"missed0").unwrap();
    assert!(
        tombstone.as_ref().is_none_or(|t| t.value.is_none()),
        "the delete reached n3 too: {tombstone:?}"
    );
}

#[tokio::test]
async fn a_quorum_read_returns_the_newest_copy_and_repairs_the_stale_replica() {
    let cluster = TestCluster::start_converged(3, DEADLINE, ringcache_tests::patient).await;
    let mut n1 = cluster.nodes[0].raw_cache().await;
    for key in ["stale", "m1", "m2"] {
        n1.set(set_request(key, "old", ALL)).await.unwrap();
    }
    // n1 and n2 get a newer version directly; n3 keeps the old one.
    let n3 = cluster.node("n3");
    let mut newer = Vec::new();
    for key in ["stale", "m1", "m2"] {
        let old = n3
            .node
            .store()
            .get_versioned(key.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(old.value.as_deref(), Some(&b"old"[..]));
        for id in ["n1", "n2"] {
            let node = &cluster.node(id).node;
            let applied = node
                .store()
                .apply(
                    key.as_bytes(),
                    Some(b"new"),
                    old.version + 1,
                    None,
                    node.now_ms(),
                )
                .unwrap();
            assert!(applied);
        }
        newer.push(old.version + 1);
    }
    let mut via_n3 = n3.raw_cache().await;
    // ONE reads are local: n3 still answers the old value.
    let local = via_n3
        .get(get_request("stale", ONE))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&local.value[..], b"old");
    // Any two of three replicas include a newer copy.
    let got = via_n3
        .get(get_request("stale", QUORUM))
        .await
        .unwrap()
        .into_inner();
    assert!(got.found);
    assert_eq!(&got.value[..], b"new");
    assert_eq!(got.version, newer[0]);
    let ttl = via_n3
        .ttl(v1::TtlRequest {
            key: Bytes::from_static(b"stale"),
            consistency: QUORUM,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ttl.found && ttl.ttl_ms.is_none());
    let many = via_n3
        .m_get(v1::MGetRequest {
            keys: vec![Bytes::from_static(b"m1"), Bytes::from_static(b"m2")],
            consistency: ALL,
            tracking_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        many.results
            .iter()
            .all(|r| r.found && &r.value[..] == b"new")
    );
    wait_until(DEADLINE, || async {
        ["stale", "m1", "m2"]
            .iter()
            .all(|key| value_on(n3, key).as_deref() == Some(&b"new"[..]))
    })
    .await
    .expect("read repair brings n3 up to date");
    assert!(metric(n3, "ringcache_read_repairs_total").await >= 3.0);
}

#[tokio::test]
async fn a_delete_leaves_tombstones_that_a_replayed_older_write_cannot_revive() {
    let cluster = TestCluster::start_converged(3, DEADLINE, ringcache_tests::patient).await;
    let mut n1 = cluster.nodes[0].raw_cache().await;
    let written = n1
        .set(set_request("gone", "alive", ALL))
        .await
        .unwrap()
        .into_inner()
        .version;
    let deleted = n1
        .delete(v1::DeleteRequest {
            key: Bytes::from_static(b"gone"),
            consistency: ALL,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    for node in &cluster.nodes {
        let held = node.node.store().get_versioned(b"gone").unwrap().unwrap();
        assert!(
            held.value.is_none(),
            "a tombstone on {}",
            node.node.config().node_id
        );
        assert!(held.version > written);
    }
    // The old write arrives late, as a replayed hint, at every replica.
    for node in &cluster.nodes {
        let reply = internal(node)
            .await
            .replicate(v1::ReplicateRequest {
                from_node_id: "n9".to_owned(),
                entries: vec![v1::VersionedEntry {
                    key: Bytes::from_static(b"gone"),
                    value: Some(Bytes::from_static(b"alive")),
                    version: written,
                    expires_at_ms: None,
                }],
                hinted: true,
                handoff: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((reply.applied, reply.ignored), (0, 1));
    }
    let got = n1.get(get_request("gone", ALL)).await.unwrap().into_inner();
    assert!(!got.found, "still deleted: {got:?}");
    assert_eq!(copies(&cluster, "gone", "alive"), 0);
}

/// Whether every node holds the same version and value of `key`; returns it.
fn agreed(cluster: &TestCluster, key: &str) -> Option<(u64, Option<Bytes>)> {
    let held: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| {
            n.node
                .store()
                .get_versioned(key.as_bytes())
                .unwrap()
                .map(|i| (i.version, i.value))
        })
        .collect();
    let first = held[0].clone()?;
    held.iter()
        .all(|h| h.as_ref() == Some(&first))
        .then_some(first)
}

#[tokio::test]
async fn concurrent_writers_converge_on_one_value_on_every_replica() {
    let cluster = TestCluster::start_converged(3, DEADLINE, ringcache_tests::patient).await;
    // Two clients routing to the primary.
    let a = Client::connect(cluster.grpc_targets()).await.unwrap();
    let b = Client::connect(cluster.grpc_targets()).await.unwrap();
    let write = |client: Client, tag: &'static str| async move {
        for i in 0..100 {
            client.set("contended", format!("{tag}{i}")).await.unwrap();
        }
    };
    tokio::join!(write(a.clone(), "a"), write(b.clone(), "b"));
    wait_until(DEADLINE, || async {
        agreed(&cluster, "contended").is_some()
    })
    .await
    .expect("all replicas end with the same version and value");
    let (version, value) = agreed(&cluster, "contended").unwrap();
    let value = value.unwrap();
    assert!(&value[..] == b"a99" || &value[..] == b"b99", "{value:?}");
    let read = a
        .with_consistency(Consistency::All)
        .get_entry("contended")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((read.version, read.value), (version, value));

    // Two coordinators at once (as after client failover): n1 and n2 both stamp versions, which
    // may tie; an ALL read settles whatever is left.
    let mut via_n1 = cluster.nodes[0].raw_cache().await;
    let mut via_n2 = cluster.nodes[1].raw_cache().await;
    let one = async {
        for i in 0..100 {
            via_n1
                .set(set_request("shared", &format!("x{i}"), QUORUM))
                .await
                .unwrap();
        }
    };
    let two = async {
        for i in 0..100 {
            via_n2
                .set(set_request("shared", &format!("y{i}"), QUORUM))
                .await
                .unwrap();
        }
    };
    tokio::join!(one, two);
    let mut reader = cluster.nodes[2].raw_cache().await;
    let settled = reader
        .get(get_request("shared", ALL))
        .await
        .unwrap()
        .into_inner();
    assert!(settled.found);
    wait_until(DEADLINE, || async { agreed(&cluster, "shared").is_some() })
        .await
        .expect("replicas of a key written through two coordinators converge");
}

#[tokio::test]
async fn a_version_tie_between_two_coordinators_is_settled_by_a_quorum_read() {
    let cluster = TestCluster::start_converged(3, DEADLINE, ringcache_tests::patient).await;
    // Two coordinators stamped the same version in the same millisecond, and each replica got
    // only one of the two writes so far.
    let version = cluster.nodes[0]
        .node
        .store()
        .hlc()
        .next(cluster.nodes[0].node.now_ms())
        + 1000;
    for (id, value) in [("n1", "a"), ("n2", "b"), ("n3", "a")] {
        let node = &cluster.node(id).node;
        let applied = node
            .store()
            .apply(
                b"tied",
                Some(value.as_bytes()),
                version,
                None,
                node.now_ms(),
            )
            .unwrap();
        assert!(applied);
    }
    assert!(agreed(&cluster, "tied").is_none());
    let mut via_n1 = cluster.nodes[0].raw_cache().await;
    let got = via_n1
        .get(get_request("tied", ALL))
        .await
        .unwrap()
        .into_inner();
    // Equal versions are ordered by content, so every node picks the same winner.
    assert_eq!((&got.value[..], got.version), (&b"b"[..], version));
    wait_until(DEADLINE, || async { agreed(&cluster, "tied").is_some() })
        .await
        .expect("read repair sends the winner and every replica takes it");
    let (settled, value) = agreed(&cluster, "tied").unwrap();
    assert_eq!(settled, version, "the winner keeps its version");
    assert_eq!(value.as_deref(), Some(&b"b"[..]));
}

/// Minority protection. A node whose peers all died (or are cut off) sees only itself once
/// failure detection removed them; it must not count itself a QUORUM of a 3-node cluster.
/// Before the known cluster size, it capped R at its own shrunken ring (R = 1) and acknowledged
/// every QUORUM and ALL write.
#[tokio::test]
async fn a_node_left_alone_refuses_quorum_and_all_until_the_dead_are_forgotten() {
    let mut cluster = TestCluster::start_converged(3, DEADLINE, ringcache_tests::patient).await;
    let n3 = cluster.take("n3");
    cluster.take("n1").crash().await.unwrap();
    cluster.take("n2").crash().await.unwrap();
    wait_until(DEADLINE, || async {
        let view = n3.node.view();
        view.ring.nodes().len() == 1
    })
    .await
    .expect("n3 declares the others dead and takes the whole ring");
    assert_eq!(n3.node.known_members(), ["n1", "n2", "n3"]);
    let mut cache = n3.raw_cache().await;
    for level in [QUORUM, ALL] {
        let error = cache
            .set(set_request("alone", "v", level))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");
        assert!(
            error.message().starts_with(
                "minority protection: this node sees 1 of the cluster's 3 known members"
            ),
            "{}",
            error.message()
        );
        let read = cache.get(get_request("alone", level)).await.unwrap_err();
        assert_eq!(read.code(), Code::Unavailable, "{read:?}");
    }
    assert!(
        n3.node.store().get_versioned(b"alone").unwrap().is_none(),
        "a refused write is applied nowhere, not even here"
    );
    // ONE stays available on any side.
    cache.set(set_request("alone", "one", ONE)).await.unwrap();
    assert!(
        cache
            .get(get_request("alone", ONE))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    // An operator who knows n1 and n2 are gone for good forgets them.
    let mut admin = v1::admin_client::AdminClient::new(n3.channel().await);
    let forget = |id: &str| v1::ForgetRequest {
        node_id: id.to_owned(),
    };
    let left = admin.forget(forget("n1")).await.unwrap().into_inner();
    assert_eq!(left.known_members, 2);
    let still = cache
        .set(set_request("alone", "v", QUORUM))
        .await
        .unwrap_err();
    assert!(
        still.message().contains("sees 1 of the cluster's 2"),
        "{still:?}"
    );
    admin.forget(forget("n2")).await.unwrap();
    let unknown = admin.forget(forget("n2")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let alive = admin.forget(forget("n3")).await.unwrap_err();
    assert_eq!(alive.code(), Code::FailedPrecondition, "{alive:?}");
    cache.set(set_request("alone", "v", QUORUM)).await.unwrap();
    cache.set(set_request("alone", "w", ALL)).await.unwrap();
}

#[tokio::test]
async fn a_node_that_sees_too_few_members_refuses_writes() {
    let mut cluster = TestCluster::start_converged(3, DEADLINE, |_, config| {
        config.replication.min_cluster_size = 3;
    })
    .await;
    let mut n1 = cluster.nodes[0].raw_cache().await;
    n1.set(set_request("before", "v", QUORUM)).await.unwrap();
    cluster.take("n3").crash().await.unwrap();
    wait_not_active(&cluster, "n3").await;
    let error = n1.set(set_request("after", "v", ONE)).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert_eq!(
        error.message(),
        "only 2 of min_cluster_size 3 members visible; refusing writes"
    );
    assert_eq!(copies(&cluster, "after", "v"), 0, "nothing was applied");
    let incr = n1
        .incr(v1::IncrRequest {
            key: Bytes::from_static(b"n"),
            delta: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(incr.code(), Code::Unavailable);
    // Reads still work.
    let got = n1
        .get(get_request("before", ONE))
        .await
        .unwrap()
        .into_inner();
    assert!(got.found);
}

#[tokio::test]
async fn no_acknowledged_quorum_write_is_lost_when_a_replica_crashes_mid_way() {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 250;
    let mut cluster = TestCluster::start_converged(3, DEADLINE, ringcache_tests::patient).await;
    let client = Client::builder()
        .seeds(cluster.grpc_targets())
        .default_consistency(Consistency::Quorum)
        .connect()
        .await
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, done, acknowledged) = (client.clone(), done.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            let mut failed = 0;
            for i in 0..PER_WRITER {
                let key = format!("set-{w}-{i}");
                match client.set(key.clone(), format!("value-{w}-{i}")).await {
                    Ok(_) => acknowledged.lock().await.push((w, i)),
                    Err(_) => failed += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failed
        }));
    }
    // Crash n3 once a third of the writes are done.
    wait_until(DEADLINE, || async {
        done.load(Ordering::Relaxed) >= WRITERS * PER_WRITER / 3
    })
    .await
    .unwrap();
    cluster.take("n3").crash().await.unwrap();
    let mut failed = 0;
    for writer in writers {
        failed += writer.await.unwrap();
    }
    cluster.wait_converged(DEADLINE).await.unwrap();

    let acknowledged = acknowledged.lock().await.clone();
    assert_eq!(acknowledged.len() + failed, WRITERS * PER_WRITER);
    assert!(
        acknowledged.len() > WRITERS * PER_WRITER / 2,
        "most writes succeed: {} of {}",
        acknowledged.len(),
        WRITERS * PER_WRITER
    );
    let reader = Client::builder()
        .seeds(cluster.grpc_targets())
        .default_consistency(Consistency::Quorum)
        .connect()
        .await
        .unwrap();
    let mut lost = Vec::new();
    for chunk in acknowledged.chunks(200) {
        let values = reader
            .mget(chunk.iter().map(|(w, i)| format!("set-{w}-{i}")))
            .await
            .unwrap();
        for ((w, i), value) in chunk.iter().zip(values) {
            if value.as_deref() != Some(format!("value-{w}-{i}").as_bytes()) {
                lost.push(format!("set-{w}-{i}"));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
}

#[tokio::test]
async fn set_options_carry_the_consistency_level() {
    let mut cluster = TestCluster::start_converged(3, DEADLINE, keep_suspects).await;
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    cluster.take("n3").crash().await.unwrap();
    wait_not_active(&cluster, "n3").await;
    let strict = SetOptions::new().consistency(Consistency::All);
    let error = client.set_with("strict", "v", strict).await.unwrap_err();
    assert!(
        matches!(&error, ringcache::Error::Unavailable(m) if m.contains("needs 3 of 3 replicas")),
        "{error}"
    );
    let relaxed = SetOptions::new().consistency(Consistency::Quorum);
    assert!(
        client
            .set_with("relaxed", "v", relaxed)
            .await
            .unwrap()
            .stored
    );
}

// Per-peer batching of replica writes (server/src/replication/batch.rs).

/// Writes sent at once.
const CONCURRENT: usize = 64;

/// Sends `count` sets of `{prefix}{i}` = `v{i}` at `consistency` through `client`, `CONCURRENT`
/// at a time; returns every answer, in key order.
async fn write_concurrently(
    client: &CacheClient<Channel>,
    prefix: &str,
    count: usize,
    consistency: i32,
) -> Vec<Result<(), tonic::Status>> {
    let mut answers: Vec<Option<Result<(), tonic::Status>>> = (0..count).map(|_| None).collect();
    let mut calls = JoinSet::new();
    for i in 0..count {
        if calls.len() >= CONCURRENT
            && let Some(joined) = calls.join_next().await
        {
            let (at, answer) = joined.unwrap();
            answers[at] = Some(answer);
        }
        let mut client = client.clone();
        let request = set_request(&format!("{prefix}{i}"), &format!("v{i}"), consistency);
        calls.spawn(async move { (i, client.set(request).await.map(|_| ())) });
    }
    while let Some(joined) = calls.join_next().await {
        let (at, answer) = joined.unwrap();
        answers[at] = Some(answer);
    }
    answers.into_iter().map(Option::unwrap).collect()
}

const REPLICA_OK: &str = r#"ringcache_replica_writes_total{result="ok"}"#;
const REPLICA_FAILED: &str = r#"ringcache_replica_writes_total{result="failed"}"#;
const BATCHES: &str = r#"ringcache_replication_batches_total{kind="replicate"}"#;

#[tokio::test]
async fn concurrent_quorum_writes_reach_every_replica_in_shared_calls() {
    const WRITES: usize = 500;
    let cluster = TestCluster::start_converged(3, DEADLINE, ringcache_tests::patient).await;
    let n1 = &cluster.nodes[0];
    let answers = write_concurrently(&n1.raw_cache().await, "k", WRITES, QUORUM).await;
    for (i, answer) in answers.iter().enumerate() {
        assert!(answer.is_ok(), "k{i}: {answer:?}");
    }
    wait_until(DEADLINE, || async {
        (0..WRITES).all(|i| {
            let value = format!("v{i}");
            cluster
                .nodes
                .iter()
                .all(|n| value_on(n, &format!("k{i}")).as_deref() == Some(value.as_bytes()))
        })
    })
    .await
    .expect("every write reaches all three replicas");
    let strict = Client::builder()
        .seeds(cluster.grpc_targets())
        .default_consistency(Consistency::All)
        .connect()
        .await
        .unwrap();
    let read = strict
        .mget((0..WRITES).step_by(7).map(|i| format!("k{i}")))
        .await
        .unwrap();
    for (i, value) in (0..WRITES).step_by(7).zip(read) {
        assert_eq!(value.as_deref(), Some(format!("v{i}").as_bytes()), "k{i}");
    }

    // n1 coordinated every write: two entries each (one per other replica), all acknowledged
    // once the background calls ended. Calls carry one or more entries each.
    let entries = 2 * WRITES;
    wait_until(DEADLINE, || async {
        metric(n1, REPLICA_OK).await >= entries as f64
    })
    .await
    .expect("every replica write is counted");
    assert_eq!(metric(n1, REPLICA_FAILED).await, 0.0);
    let batches = metric(n1, BATCHES).await;
    assert!(
        batches >= 2.0 && batches <= entries as f64,
        "{batches} calls for {entries} entries"
    );
}

#[tokio::test]
async fn with_a_replica_down_every_batched_write_fails_there_and_leaves_a_hint() {
    const WRITES: usize = 200;
    const STRICT: usize = 40;
    let mut cluster = TestCluster::start_converged(3, DEADLINE, keep_suspects).await;
    cluster.take("n3").crash().await.unwrap();
    wait_not_active(&cluster, "n3").await;
    let n1 = &cluster.nodes[0];
    let client = n1.raw_cache().await;

    // QUORUM is met by n1 and n2; every write's entry for n3 fails and becomes a hint.
    let answers = write_concurrently(&client, "q", WRITES, QUORUM).await;
    for (i, answer) in answers.iter().enumerate() {
        assert!(answer.is_ok(), "q{i}: {answer:?}");
    }
    wait_until(DEADLINE, || async {
        n1.node.replicator().hints_pending_for("n3") == WRITES
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} hints for n3, expected one per write ({WRITES})",
            n1.node.replicator().hints_pending_for("n3")
        )
    });

    // ALL cannot be met: each write is answered with its own counts and n3's failure.
    let answers = write_concurrently(&client, "a", STRICT, ALL).await;
    for (i, answer) in answers.into_iter().enumerate() {
        let error = answer.expect_err("ALL cannot be met with n3 down");
        assert_eq!(error.code(), Code::Unavailable, "a{i}: {error:?}");
        let message = error.message();
        assert!(
            message.starts_with("ALL write needs 3 of 3 replicas, 2 acknowledged (n3: "),
            "a{i}: {message}"
        );
        assert!(
            message.ends_with(
                "; the write remains on the replicas that took it and is queued as hints for n3"
            ),
            "a{i}: {message}"
        );
    }
    assert_eq!(
        n1.node.replicator().hints_pending_for("n3"),
        WRITES + STRICT,
        "an ALL write is answered after its hint was queued"
    );
    assert_eq!(metric(n1, REPLICA_FAILED).await, (WRITES + STRICT) as f64);
    for i in (0..WRITES).step_by(11) {
        let key = format!("q{i}");
        for id in ["n1", "n2"] {
            assert_eq!(
                value_on(cluster.node(id), &key).as_deref(),
                Some(format!("v{i}").as_bytes()),
                "{key} on {id}"
            );
        }
    }
}

const READ_CALLS: &str = r#"ringcache_replication_batches_total{kind="read_versions"}"#;

/// Sends `keys` as Gets at `consistency` in one batch on a pipelined stream to `node` (so the
/// node starts every read before any of them is answered) and returns each key's answer.
async fn pipelined_gets(
    node: &TestNode,
    keys: &[String],
    consistency: i32,
) -> Vec<v1::pipeline_response::Result> {
    use tokio_stream::wrappers::ReceiverStream;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut inbound = node
        .raw_cache()
        .await
        .pipeline(ReceiverStream::new(rx))
        .await
        .expect("the node serves Pipeline")
        .into_inner();
    let requests = keys
        .iter()
        .enumerate()
        .map(|(tag, key)| v1::PipelineRequest {
            tag: tag as u64,
            op: Some(v1::pipeline_request::Op::Get(get_request(key, consistency))),
        })
        .collect();
    tx.send(v1::PipelineRequestBatch { requests })
        .await
        .expect("the stream takes the batch");
    let mut answers: Vec<Option<v1::pipeline_response::Result>> = vec![None; keys.len()];
    let mut missing = keys.len();
    while missing > 0 {
        let batch = tokio::time::timeout(DEADLINE, inbound.message())
            .await
            .expect("answers within the deadline")
            .expect("the stream stays up")
            .expect("the stream does not end");
        for response in batch.responses {
            let slot = &mut answers[response.tag as usize];
            assert!(slot.is_none(), "tag {} answered twice", response.tag);
            *slot = Some(response.result.expect("every answer has a result"));
            missing -= 1;
        }
    }
    drop(tx);
    answers.into_iter().map(Option::unwrap).collect()
}

/// The value a pipelined Get answered, or the error's message.
fn got(answer: &v1::pipeline_response::Result) -> Result<Option<Bytes>, String> {
    match answer {
        v1::pipeline_response::Result::Get(reply) => Ok(reply.found.then(|| reply.value.clone())),
        v1::pipeline_response::Result::Error(error) => Err(error.message.clone()),
        other => panic!("not a Get answer: {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_quorum_reads_share_read_versions_calls() {
    const READS: usize = 200;
    let cluster = TestCluster::start_converged(3, DEADLINE, ringcache_tests::patient).await;
    let n1 = &cluster.nodes[0];
    let answers = write_concurrently(&n1.raw_cache().await, "r", READS, ALL).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let before = metric(n1, READ_CALLS).await;

    // Every read starts before any is answered: n1 asks the other replicas for all of them in a
    // handful of shared calls, and each read still gets its own key's value.
    let keys: Vec<String> = (0..READS).map(|i| format!("r{i}")).collect();
    for (level, name) in [(QUORUM, "QUORUM"), (ALL, "ALL")] {
        let at = metric(n1, READ_CALLS).await;
        let answers = pipelined_gets(n1, &keys, level).await;
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(
                got(answer),
                Ok(Some(Bytes::from(format!("v{i}")))),
                "{name} read of r{i}"
            );
        }
        let calls = metric(n1, READ_CALLS).await - at;
        assert!(
            calls >= 1.0 && calls < (READS / 2) as f64,
            "{name}: {calls} ReadVersions calls for {READS} reads"
        );
    }
    assert!(metric(n1, READ_CALLS).await > before);
}

#[tokio::test]
async fn with_a_replica_down_quorum_reads_ask_the_next_replica_and_all_reads_fail_naming_it() {
    const READS: usize = 60;
    let mut cluster = TestCluster::start_converged(3, DEADLINE, keep_suspects).await;
    let n1 = &cluster.nodes[0];
    let answers = write_concurrently(&n1.raw_cache().await, "d", READS, ALL).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    cluster.take("n3").crash().await.unwrap();
    wait_not_active(&cluster, "n3").await;
    let n1 = &cluster.nodes[0];

    // n3 still owns its ranges (suspect), so some reads ask it first: its calls fail, which
    // fails only the reads they carried, and those ask n2 instead. Every read succeeds.
    let keys: Vec<String> = (0..READS).map(|i| format!("d{i}")).collect();
    let answers = pipelined_gets(n1, &keys, QUORUM).await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(
            got(answer),
            Ok(Some(Bytes::from(format!("v{i}")))),
            "QUORUM read of d{i}"
        );
    }
    // ALL needs n3: every read fails with its own counts and n3's failure.
    let answers = pipelined_gets(n1, &keys, ALL).await;
    for (i, answer) in answers.iter().enumerate() {
        let message = got(answer).expect_err("ALL cannot be met with n3 down");
        assert!(
            message.starts_with("ALL read needs 3 of 3 replicas, 2 answered (n3: "),
            "d{i}: {message}"
        );
    }
}
