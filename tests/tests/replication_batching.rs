//! Replication batching on a 3-node cluster with R = 3: many concurrent writes coordinated by one
//! node reach every replica while sharing `Internal.Replicate` calls, and with a replica down
//! every write still gets its own answer, failure message and hint. (The batcher's exact batching
//! is unit-tested with a fake transport in `server/src/replication/batch.rs`; here only what
//! holds whatever the timing is asserted.)

use std::time::Duration;

use bytes::Bytes;
use ringcache::{Client, Consistency};
use ringcache_proto::topology::NodeState;
use ringcache_proto::v1::{self, cache_client::CacheClient};
use ringcache_tests::{TestCluster, TestNode, http_get, keep_suspects, wait_until};
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;

/// Generous bound for convergence, failure detection and background work.
const DEADLINE: Duration = Duration::from_secs(20);
/// Writes sent at once.
const CONCURRENT: usize = 64;

const QUORUM: i32 = v1::Consistency::Quorum as i32;
const ALL: i32 = v1::Consistency::All as i32;

fn set_request(key: &str, value: &str, consistency: i32) -> v1::SetRequest {
    v1::SetRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        consistency,
        ..Default::default()
    }
}

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

/// The live value `node` holds for `key`, if any.
fn value_on(node: &TestNode, key: &str) -> Option<Bytes> {
    node.node
        .store()
        .get_versioned(key.as_bytes())
        .unwrap()
        .filter(|item| item.is_live(node.node.now_ms()))
        .and_then(|item| item.value)
}

/// The value of an unlabelled metric, or of the labelled series `name{labels}`.
async fn metric(node: &TestNode, series: &str) -> f64 {
    let body = http_get(node.http_addr, "/metrics").await.unwrap().body;
    body.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{series} missing from\n{body}"))
}

const REPLICA_OK: &str = r#"ringcache_replica_writes_total{result="ok"}"#;
const REPLICA_FAILED: &str = r#"ringcache_replica_writes_total{result="failed"}"#;
const BATCHES: &str = "ringcache_replication_batches_total";

#[tokio::test]
async fn concurrent_quorum_writes_reach_every_replica_in_shared_calls() {
    const WRITES: usize = 500;
    let cluster = TestCluster::start_converged(3, DEADLINE, |_, _| {}).await;
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
