//! Replicas that diverged converge by themselves, and a node whose clock is off cannot win
//! last-writer-wins: anti-entropy (digests compared per bucket, differing keys pulled and
//! pushed) on 3-node loopback clusters, and clock-skew detection with a node whose clock runs
//! an hour ahead.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringcache_proto::v1;
use ringcache_server::clock::{Clock, OffsetClock};
use ringcache_server::store::Hlc;
use ringcache_tests::{TestCluster, TestNode, get_request, set_request, wait_until};
use tonic::Code;

/// Generous bound for convergence, failure detection and background work.
const DEADLINE: Duration = Duration::from_secs(20);
const ONE: i32 = v1::Consistency::One as i32;
const QUORUM: i32 = v1::Consistency::Quorum as i32;
const HOUR_MS: i64 = 3_600_000;

/// What `node` holds for `key`: (version, value; `None` for a tombstone).
fn held(node: &TestNode, key: &str) -> Option<(u64, Option<Bytes>)> {
    node.node
        .store()
        .get_versioned(key.as_bytes())
        .unwrap()
        .map(|item| (item.version, item.value))
}

fn fast_anti_entropy(i: usize, config: &mut ringcache_server::Config) {
    // Patient failure detection: a false suspicion on a loaded machine changes the view, and the
    // rebalancer then moves the keys these tests leave to anti-entropy.
    ringcache_tests::patient(i, config);
    config.anti_entropy_interval = Duration::from_millis(300);
}

/// Writes that reached some replicas only (hints lost with a crashed coordinator, a partition
/// longer than the hint age) are repaired by anti-entropy alone: nobody reads these keys.
#[tokio::test]
async fn anti_entropy_repairs_replicas_that_missed_writes_and_deletes() {
    let cluster = TestCluster::start_converged(3, DEADLINE, fast_anti_entropy).await;
    // Settled: no view change left that would make the rebalancer move these keys instead.
    wait_until(DEADLINE, || async {
        cluster.nodes.iter().all(|n| n.node.is_ready())
    })
    .await
    .expect("every node ready");
    let (n1, n2, n3) = (cluster.node("n1"), cluster.node("n2"), cluster.node("n3"));
    let now = n1.node.now_ms();
    let stamp = |i: u64| Hlc::at_millis(now) + i;
    // Straight into the stores, as if replication had reached only some replicas.
    for i in 0..200u64 {
        let key = format!("missed:{i}");
        n1.node
            .store()
            .apply(key.as_bytes(), Some(b"v1"), stamp(i), None, now)
            .unwrap();
    }
    for node in [n1, n2, n3] {
        node.node
            .store()
            .apply(b"deleted", Some(b"old"), stamp(1), None, now)
            .unwrap();
    }
    n2.node
        .store()
        .apply(b"deleted", None, stamp(500), None, now)
        .unwrap();
    n3.node
        .store()
        .apply(b"newer-on-n3", Some(b"n3"), stamp(900), None, now)
        .unwrap();
    n1.node
        .store()
        .apply(b"newer-on-n3", Some(b"n1"), stamp(800), None, now)
        .unwrap();

    wait_until(DEADLINE, || async {
        cluster.nodes.iter().all(|n| {
            (0..200).all(|i| held(n, &format!("missed:{i}")).is_some())
                && held(n, "deleted").is_some_and(|(_, v)| v.is_none())
                && held(n, "newer-on-n3").is_some_and(|(_, v)| v.as_deref() == Some(&b"n3"[..]))
        })
    })
    .await
    .expect("anti-entropy brings every replica to the newest copy of every key");
    // Once converged, rounds find nothing to do.
    let rounds = n1
        .node
        .anti_entropy()
        .rounds
        .load(std::sync::atomic::Ordering::Relaxed);
    wait_until(DEADLINE, || async {
        n1.node
            .anti_entropy()
            .rounds
            .load(std::sync::atomic::Ordering::Relaxed)
            >= rounds + 2
    })
    .await
    .unwrap();
    let pulled: u64 = cluster
        .nodes
        .iter()
        .map(|n| {
            n.node
                .anti_entropy()
                .keys_pulled
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let pushed: u64 = cluster
        .nodes
        .iter()
        .map(|n| {
            n.node
                .anti_entropy()
                .keys_pushed
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let per_node: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("{:?}", n.node.anti_entropy()))
        .collect();
    // n1 → n2 and (n1 or n2) → n3 for the 200 keys.
    assert!(
        pulled + pushed >= 400,
        "pulled {pulled}, pushed {pushed}: {per_node:?}"
    );
    let last = n1.node.anti_entropy().last().expect("a round ran");
    assert_eq!(
        (last.differing, last.pulled, last.pushed, last.error.clone()),
        (0, 0, 0, None),
        "{last:?}"
    );
    // ringctl shows it.
    let stats = ringcache_tests::ctl::ctl(&n1.grpc_target(), &["-o", "json", "stats"])
        .await
        .json();
    let ae = &stats["anti_entropy"];
    assert_eq!(ae["interval_ms"], 300);
    // What n1 itself repaired (the others may have repaired n3 from n2 first).
    let n1_pushed = n1
        .node
        .anti_entropy()
        .keys_pushed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(n1_pushed >= 1, "{stats}");
    assert_eq!(ae["keys_pushed"].as_u64(), Some(n1_pushed), "{stats}");
    assert_eq!(ae["last_round"]["buckets_differing"], 0, "{stats}");
    assert_eq!(
        stats["known_members"],
        serde_json::json!(["n1", "n2", "n3"])
    );
    assert_eq!(stats["clock_skewed"], false);
}

/// A node whose wall clock runs an hour ahead would stamp its writes an hour into the future
/// and win last-writer-wins against every later write for that hour. Its peers outvote its
/// clock: it refuses writes and reports not ready until the clock is corrected, and then drops
/// what it stamped too far ahead. Before clock checks, it acknowledged the ONE write below and
/// kept serving it after a later QUORUM write through another node.
#[tokio::test]
async fn a_node_whose_clock_runs_an_hour_ahead_refuses_writes_and_cannot_win() {
    let mut cluster = TestCluster::start_converged(2, DEADLINE, |_, _| {}).await;
    let clock = Arc::new(OffsetClock::new(HOUR_MS));
    cluster
        .add_with_clock(3, clock.clone() as Arc<dyn Clock>, |_, _| {})
        .await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    let n3 = cluster.node("n3");
    wait_until(DEADLINE, || async { n3.node.clock_check().is_skewed() })
        .await
        .expect("n3 finds its clock an hour off the cluster's");
    assert!(!cluster.node("n1").node.clock_check().is_skewed());
    assert!(n3.node.clock_check().offset_ms() <= -HOUR_MS + 60_000);
    let why = n3.node.readiness().unwrap_err();
    assert!(
        why.starts_with("clock skew: this node's clock is 360") && why.contains(" s ahead of"),
        "{why}"
    );

    let mut via_n3 = n3.raw_cache().await;
    let refused = via_n3
        .set(set_request("k", "from-n3", ONE))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().starts_with("clock skew:"), "{refused:?}");
    let mut via_n1 = cluster.node("n1").raw_cache().await;
    via_n1.set(set_request("k", "later", QUORUM)).await.unwrap();
    for node in &cluster.nodes {
        let mut cache = node.raw_cache().await;
        let read = cache.get(get_request("k", QUORUM)).await;
        if node.node.config().node_id == "n3" {
            // Its own copies may carry stamps from the future: it serves no read either.
            let refused = read.unwrap_err();
            assert!(
                refused.message().starts_with("clock skew:")
                    && refused.message().contains("refusing reads"),
                "{refused:?}"
            );
        } else {
            assert_eq!(&read.unwrap().into_inner().value[..], b"later");
        }
    }
    wait_until(DEADLINE, || async {
        held(n3, "k").is_some_and(|(_, v)| v.as_deref() == Some(&b"later"[..]))
    })
    .await
    .expect("n3 holds the later write");

    // A copy n3 stamped an hour ahead before the skew was noticed: no replica takes it.
    let ahead = Hlc::at_millis(n3.node.now_ms());
    n3.node
        .store()
        .apply(
            b"stamped-ahead",
            Some(b"ghost"),
            ahead,
            None,
            n3.node.now_ms(),
        )
        .unwrap();
    // NTP fixes the clock: n3 writes again and drops what it stamped too far ahead.
    clock.set_offset_ms(0);
    wait_until(DEADLINE, || async {
        !n3.node.clock_check().is_skewed() && held(n3, "stamped-ahead").is_none()
    })
    .await
    .expect("n3 trusts its clock again and drops the copy stamped an hour ahead");
    via_n3.set(set_request("k", "fixed", QUORUM)).await.unwrap();
    let got = via_n1
        .get(get_request("k", QUORUM))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got.value[..], b"fixed");
}
