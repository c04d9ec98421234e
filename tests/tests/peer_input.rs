//! What a node does with input from a peer it should not trust blindly: versions too far ahead
//! of its clock (forged, or from a node whose clock is wrong) and sizes on the wire that would
//! make it allocate without bound. Forged calls go through the raw generated `Internal` client,
//! as a malicious or broken peer would send them.

use std::time::Duration;

use bytes::Bytes;
use ringcache_proto::topology::MAX_WEIGHT;
use ringcache_proto::v1::{self, internal_client::InternalClient};
use ringcache_server::metrics::VersionSource;
use ringcache_server::store::Hlc;
use ringcache_tests::{TestCluster, TestNode, get_request, http_get, set_request};
use tonic::Code;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(20);
const DAY_MS: u64 = 24 * 3600 * 1000;

const ONE: i32 = v1::Consistency::One as i32;
const QUORUM: i32 = v1::Consistency::Quorum as i32;
const ALL: i32 = v1::Consistency::All as i32;

async fn internal(node: &TestNode) -> InternalClient<Channel> {
    node.raw_internal().await
}

fn entry(key: &str, value: &str, version: u64) -> v1::VersionedEntry {
    v1::VersionedEntry {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        version,
        expires_at_ms: None,
    }
}

/// What `node` holds for `key`: (value, version).
fn held(node: &TestNode, key: &str) -> Option<(Option<Bytes>, u64)> {
    node.node
        .store()
        .get_versioned(key.as_bytes())
        .unwrap()
        .map(|item| (item.value, item.version))
}

/// Asserts the version a node just stamped is at its own wall clock, not pushed ahead.
fn stamped_now(node: &TestNode, version: u64) {
    let now = node.node.now_ms();
    assert!(
        Hlc::millis(version) <= now + 1,
        "{}: version {version:#x} is {} ms ahead of its clock",
        node.node.config().node_id,
        Hlc::millis(version).saturating_sub(now)
    );
}

#[tokio::test]
async fn a_forged_replicate_far_ahead_is_refused_and_later_writes_win() {
    let node = TestNode::start_default().await;
    let mut cache = node.raw_cache().await;
    let mut peer = internal(&node).await;
    let before = cache
        .set(set_request("k", "before", ONE))
        .await
        .unwrap()
        .into_inner()
        .version;

    let now = node.node.now_ms();
    let forged = [u64::MAX, Hlc::at_millis(now + DAY_MS)];
    for (i, version) in forged.into_iter().enumerate() {
        for hinted in [false, true] {
            let status = peer
                .replicate(v1::ReplicateRequest {
                    from_node_id: "mallory".to_owned(),
                    // A good entry first: the batch is refused whole, so it is not applied either.
                    entries: vec![
                        entry(&format!("innocent{i}{hinted}"), "v", Hlc::at_millis(now)),
                        entry("k", "forged", version),
                    ],
                    hinted,
                    handoff: false,
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(
                status.message().contains("clock drift")
                    && status.message().contains("max_clock_drift is 60000 ms")
                    && status.message().contains("nothing was applied"),
                "{}",
                status.message()
            );
            assert!(held(&node, &format!("innocent{i}{hinted}")).is_none());
        }
    }
    assert_eq!(
        held(&node, "k"),
        Some((Some(Bytes::from_static(b"before")), before))
    );
    let metrics = node.node.metrics();
    assert_eq!(metrics.versions_refused(VersionSource::Replicate), 2);
    assert_eq!(metrics.versions_refused(VersionSource::Hint), 2);
    let scraped = http_get(node.http_addr, "/metrics").await.unwrap().body;
    assert!(
        scraped.contains(r#"ringcache_versions_refused_total{source="replicate"} 2"#),
        "{scraped}"
    );

    // The clock did not move: the next write is stamped now and wins, and is readable.
    let after = cache
        .set(set_request("k", "after", ONE))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(after > before);
    stamped_now(&node, after);
    let got = cache.get(get_request("k", ONE)).await.unwrap().into_inner();
    assert!(got.found);
    assert_eq!(&got.value[..], b"after");

    // A version within the bound is still taken (skewed clocks keep working).
    let near = Hlc::at_millis(node.node.now_ms() + 1_000);
    let reply = peer
        .replicate(v1::ReplicateRequest {
            from_node_id: "n2".to_owned(),
            entries: vec![entry("k", "near", near)],
            hinted: false,
            handoff: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.applied, 1);
    node.stop().await.unwrap();
}

/// n2 accepts versions up to a day ahead (`--max-clock-drift 1d`), the others the default 60 s.
/// A version 23 h ahead planted on n2 moves n2's clock; n1 and n3 must not follow.
#[tokio::test]
async fn a_node_with_a_clock_far_ahead_cannot_move_the_others() {
    let cluster = TestCluster::start_converged(3, DEADLINE, |i, config| {
        if i == 2 {
            config.store.max_clock_drift_ms = DAY_MS;
        }
    })
    .await;
    let (n1, n2, n3) = (cluster.node("n1"), cluster.node("n2"), cluster.node("n3"));
    let mut via_n1 = n1.raw_cache().await;
    via_n1.set(set_request("k", "legit", ALL)).await.unwrap();
    let legit = held(n1, "k").unwrap();

    let ahead = Hlc::at_millis(n2.node.now_ms() + 23 * 3600 * 1000);
    let now = n2.node.now_ms();
    assert!(
        n2.node
            .store()
            .apply(b"k", Some(b"forged"), ahead, None, now)
            .unwrap()
    );

    // Quorum reads through n1: n2's answer is refused, so the forged copy is neither returned
    // nor repaired onto n1 and n3.
    let got = via_n1
        .get(get_request("k", QUORUM))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got.value[..], b"legit");
    let status = via_n1.get(get_request("k", ALL)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("n2: refused: clock drift"),
        "{}",
        status.message()
    );
    assert!(
        n1.node
            .metrics()
            .versions_refused(VersionSource::ReadVersions)
            >= 1
    );
    for node in [n1, n3] {
        assert_eq!(held(node, "k"), Some(legit.clone()));
    }

    // Writes n2 coordinates now carry versions 23 h ahead: n1 and n3 refuse them, and n2
    // counts them as failed acknowledgements (no hints: a refusal is not an outage).
    let mut via_n2 = n2.raw_cache().await;
    let status = via_n2
        .set(set_request("spread", "x", QUORUM))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("1 acknowledged") && status.message().contains("clock drift"),
        "{}",
        status.message()
    );
    assert_eq!(n2.node.replicator().hints_pending_for("n1"), 0);
    assert_eq!(n2.node.replicator().hints_pending_for("n3"), 0);
    for node in [n1, n3] {
        assert!(held(node, "spread").is_none());
        assert!(
            node.node
                .metrics()
                .versions_refused(VersionSource::Replicate)
                >= 1
        );
    }

    // n1 and n3 still stamp at their own clocks, and their writes win where they land.
    let mut via_n3 = n3.raw_cache().await;
    for (node, client) in [(n1, &mut via_n1), (n3, &mut via_n3)] {
        let version = client
            .set(set_request("later", "fresh", ONE))
            .await
            .unwrap()
            .into_inner()
            .version;
        stamped_now(node, version);
        let got = client
            .get(get_request("later", ONE))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&got.value[..], b"fresh");
    }
}

#[tokio::test]
async fn stream_entries_refuses_sizes_over_the_limits_before_starting() {
    let node = TestNode::start_default().await;
    let mut cache = node.raw_cache().await;
    cache.set(set_request("k", "v", ONE)).await.unwrap();
    let mut peer = internal(&node).await;
    let request = |target: &str, weight: u32| v1::StreamEntriesRequest {
        target_node_id: target.to_owned(),
        include_tombstones: true,
        max_batch_bytes: 0,
        assume_target_in_ring: true,
        target_weight: weight,
    };
    for (target, weight, field) in [
        ("joiner", u32::MAX, "target_weight"),
        ("joiner", MAX_WEIGHT + 1, "target_weight"),
        ("", 1, "target_node_id"),
        (&"j".repeat(257), 1, "target_node_id"),
    ] {
        let status = peer
            .stream_entries(request(target, weight))
            .await
            .err()
            .unwrap_or_else(|| panic!("{field} {weight} accepted"));
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{}", status.message());
    }
    // The largest weight is served, and the joiner (sole other ring member) gets the key.
    let mut stream = peer
        .stream_entries(request("joiner", MAX_WEIGHT))
        .await
        .unwrap()
        .into_inner();
    let mut keys = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        keys.extend(batch.entries.into_iter().map(|e| e.key));
    }
    assert_eq!(keys, [Bytes::from_static(b"k")]);
    node.stop().await.unwrap();
}

/// `Internal.AntiEntropy` from a caller that is not a member, with too many buckets, or under
/// another topology: refused or answered with nothing compared, never a scan of someone else's
/// keys for a stranger.
#[tokio::test]
async fn anti_entropy_refuses_strangers_oversized_requests_and_other_topologies() {
    let node = TestNode::start_default().await;
    let mut cache = node.raw_cache().await;
    cache.set(set_request("k", "v", ONE)).await.unwrap();
    let own_id = node.node.config().node_id.clone();
    let digest = node.node.view().topology.digest();
    let mut peer = internal(&node).await;
    let request = |from: &str, topology: u64, buckets: usize| v1::AntiEntropyRequest {
        from_node_id: from.to_owned(),
        topology_digest: topology,
        buckets: vec![0; buckets],
        max_keys: 0,
    };
    let other = peer
        .anti_entropy(request(&own_id, digest ^ 1, 1024))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.topology_digest, digest);
    assert!(
        other.differing.is_empty() && other.keys.is_empty(),
        "{other:?}"
    );
    let too_many = peer
        .anti_entropy(request(&own_id, digest, 1025))
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");
    let stranger = peer
        .anti_entropy(request("mallory", digest, 1024))
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::FailedPrecondition, "{stranger:?}");
    // A member's request with empty digests finds its one bucket with a key and summarises it.
    let answer = peer
        .anti_entropy(request(&own_id, digest, 1024))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.differing.len(), 1, "{answer:?}");
    assert_eq!(answer.summarized, 1);
    assert_eq!(answer.keys.len(), 1);
    assert_eq!(&answer.keys[0].key[..], b"k");
}
