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
        ringcache_tests::patient(i, config);
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
        slots: Vec::new(),
        ..Default::default()
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
    // A slot out of range is refused; asking for other slots than the key's sends nothing, and
    // for the key's slot sends it.
    let slot = u32::from(ringcache_proto::placement::key_slot(b"k"));
    let with_slots = |slots: Vec<u32>| v1::StreamEntriesRequest {
        slots,
        ..request("joiner", 1)
    };
    let status = peer
        .stream_entries(with_slots(vec![slot, 16_384]))
        .await
        .expect_err("slot 16384 accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("slots"), "{}", status.message());
    // A zone is checked like a member's.
    let status = peer
        .stream_entries(v1::StreamEntriesRequest {
            target_zone: "not a zone".to_owned(),
            ..request("joiner", 1)
        })
        .await
        .expect_err("a bad zone accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("target_zone"),
        "{}",
        status.message()
    );
    for (slots, expected) in [
        (vec![(slot + 1) % 16_384, (slot + 2) % 16_384], vec![]),
        (vec![slot, slot], vec![Bytes::from_static(b"k")]),
    ] {
        let mut stream = peer
            .stream_entries(with_slots(slots.clone()))
            .await
            .unwrap()
            .into_inner();
        let mut keys = Vec::new();
        while let Some(batch) = stream.message().await.unwrap() {
            keys.extend(batch.entries.into_iter().map(|e| e.key));
        }
        assert_eq!(keys, expected, "slots {slots:?}");
    }
    // `since_version`: only entries written after it (a node back from a restart asks for
    // what changed since its snapshot); the answer also carries the sender's flush floor.
    let version = node
        .node
        .store()
        .get(b"k", node.node.now_ms())
        .unwrap()
        .unwrap()
        .version;
    for (since, expected) in [
        (version - 1, vec![Bytes::from_static(b"k")]),
        (version, vec![]),
        (u64::MAX, vec![]),
    ] {
        let mut stream = peer
            .stream_entries(v1::StreamEntriesRequest {
                since_version: since,
                ..request("joiner", 1)
            })
            .await
            .unwrap()
            .into_inner();
        let mut keys = Vec::new();
        while let Some(batch) = stream.message().await.unwrap() {
            assert_eq!(batch.flush_floor, node.node.store().flush_floor());
            keys.extend(batch.entries.into_iter().map(|e| e.key));
        }
        assert_eq!(
            keys, expected,
            "since {since} (the key's version {version})"
        );
    }
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

/// A delete's tombstone evicted under memory pressure, well within its grace period, must not
/// let a late older copy of the key (a hint or a lagging replica's write, replayed by a peer)
/// bring it back: the evicted version stays as a floor for its group of keys.
#[tokio::test]
async fn an_evicted_tombstone_does_not_let_a_replayed_older_write_revive_the_key() {
    let cluster = TestCluster::start_converged(2, DEADLINE, |_, config| {
        ringcache_tests::patient(0, config);
        config.store.max_memory_bytes = 64 * 1024;
    })
    .await;
    let node = &cluster.nodes[0];
    let store = node.node.store();
    let mut cache = node.raw_cache().await;
    let old = cache
        .set(set_request("victim", "old", ALL))
        .await
        .unwrap()
        .into_inner()
        .version;
    cache
        .delete(v1::DeleteRequest {
            key: Bytes::from_static(b"victim"),
            consistency: ALL,
            ..Default::default()
        })
        .await
        .unwrap();
    let (value, tombstone) = held(node, "victim").expect("a peer holds copies: a tombstone");
    assert!(value.is_none() && tombstone > old);

    // Fill this node's store (directly: the other node is not involved) until the tombstone is
    // evicted.
    let mut filled = 0;
    while held(node, "victim").is_some() {
        assert!(filled < 10_000, "the tombstone was never evicted");
        let key = format!("filler{filled}");
        store
            .set(
                key.as_bytes(),
                &[7u8; 512],
                ringcache_server::store::SetOptions::default(),
                node.node.now_ms(),
            )
            .unwrap();
        filled += 1;
    }
    assert!(store.stats().tombstones_evicted >= 1);

    // The peer replays the old write (as a hint would): refused, the key stays deleted.
    let reply = internal(node)
        .await
        .replicate(v1::ReplicateRequest {
            from_node_id: cluster.nodes[1].node.config().node_id.clone(),
            entries: vec![entry("victim", "old", old)],
            hinted: true,
            handoff: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.applied, 0);
    assert_eq!(held(node, "victim"), None);
    let got = cache
        .get(get_request("victim", ONE))
        .await
        .unwrap()
        .into_inner();
    assert!(!got.found, "the deleted key came back");
    let scraped = http_get(node.http_addr, "/metrics").await.unwrap().body;
    assert!(
        scraped.contains("ringcache_tombstones_evicted_total"),
        "{scraped}"
    );
    // A newer write still lands.
    let newer = cache
        .set(set_request("victim", "new", ONE))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(newer > tombstone);
    assert_eq!(
        held(node, "victim"),
        Some((Some(Bytes::from_static(b"new")), newer))
    );
}

/// `SlotDigests` refuses more slots than one call may ask for and numbers that are not slots,
/// and its digests tell equal slots from different ones (rebalancing skips a push on equality).
#[tokio::test]
async fn slot_digests_refuse_bad_requests_and_tell_copies_apart() {
    let a = TestNode::start_default().await;
    let b = TestNode::start_default().await;
    let slot = u32::from(ringcache_proto::placement::key_slot(b"k"));
    let request = |slots: Vec<u32>| v1::SlotDigestsRequest { slots };
    let mut peer = internal(&a).await;
    for (slots, says) in [
        (vec![0; 1025], "more than 1024"),
        (vec![slot, 16_384], "16384 is not a hash slot"),
        (vec![u32::MAX], "is not a hash slot"),
    ] {
        let status = peer
            .slot_digests(request(slots))
            .await
            .expect_err("a bad request is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(says), "{}", status.message());
    }
    let digest_of = async |node: &TestNode| -> u64 {
        internal(node)
            .await
            .slot_digests(request(vec![slot]))
            .await
            .unwrap()
            .into_inner()
            .digests[0]
    };
    // Empty slots agree (0); the same copy on both agrees; a newer version on one differs.
    assert_eq!(digest_of(&a).await, 0);
    assert_eq!(digest_of(&a).await, digest_of(&b).await);
    let copy = entry("k", "v", Hlc::at_millis(a.node.now_ms() - 1_000));
    for node in [&a, &b] {
        stamped_now(node, copy.version);
        internal(node)
            .await
            .replicate(v1::ReplicateRequest {
                from_node_id: "peer".into(),
                entries: vec![copy.clone()],
                hinted: false,
                handoff: false,
            })
            .await
            .unwrap();
    }
    assert_ne!(digest_of(&a).await, 0);
    assert_eq!(digest_of(&a).await, digest_of(&b).await);
    let newer = entry("k", "v2", Hlc::at_millis(b.node.now_ms()));
    stamped_now(&b, newer.version);
    internal(&b)
        .await
        .replicate(v1::ReplicateRequest {
            from_node_id: "peer".into(),
            entries: vec![newer],
            hinted: false,
            handoff: false,
        })
        .await
        .unwrap();
    assert_ne!(digest_of(&a).await, digest_of(&b).await);
}

/// A request of a `ReplicaStream` message.
fn tagged(tag: u64, op: v1::replica_request::Op) -> v1::ReplicaRequest {
    v1::ReplicaRequest { tag, op: Some(op) }
}

fn replicate_op(entries: Vec<v1::VersionedEntry>) -> v1::replica_request::Op {
    v1::replica_request::Op::Replicate(v1::ReplicateRequest {
        from_node_id: "mallory".to_owned(),
        entries,
        hinted: false,
        handoff: false,
    })
}

fn read_op(keys: &[&str]) -> v1::replica_request::Op {
    v1::replica_request::Op::ReadVersions(v1::ReadVersionsRequest {
        keys: keys
            .iter()
            .map(|k| Bytes::copy_from_slice(k.as_bytes()))
            .collect(),
    })
}

/// Sends `messages` on one `Internal.ReplicaStream` to `node`, closes the sending side, and
/// returns every answer and the status the stream ended with (if it failed).
async fn replica_stream(
    node: &TestNode,
    messages: Vec<v1::ReplicaRequests>,
) -> (Vec<v1::ReplicaAnswer>, Option<tonic::Status>) {
    let mut peer = internal(node)
        .await
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut inbound = match peer.replica_stream(tokio_stream::iter(messages)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut answers = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, inbound.message()).await {
            Ok(Ok(Some(message))) => answers.extend(message.answers),
            Ok(Ok(None)) => return (answers, None),
            Ok(Err(status)) => return (answers, Some(status)),
            Err(_) => panic!("the replica stream neither answered nor ended"),
        }
    }
}

/// The error answering `tag`, if it failed.
fn error_of(answers: &[v1::ReplicaAnswer], tag: u64) -> Option<&v1::ReplicaError> {
    use v1::replica_answer::Result as Answer;
    let answer = answers
        .iter()
        .find(|a| a.tag == tag)
        .unwrap_or_else(|| panic!("no answer for tag {tag} in {answers:?}"));
    match &answer.result {
        Some(Answer::Error(error)) => Some(error),
        _ => None,
    }
}

/// Each request of a `ReplicaStream` goes through the checks of its unary call and fails alone
/// with that call's status; tags are only echoed (a reused tag is answered twice).
#[tokio::test]
async fn a_replica_stream_runs_each_request_through_the_unary_checks() {
    use v1::replica_answer::Result as Answer;
    let node = TestNode::start_default().await;
    let now = node.node.now_ms();
    let too_many: Vec<String> = (0..=node.node.config().max_batch_keys)
        .map(|i| format!("k{i}"))
        .collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let message = v1::ReplicaRequests {
        requests: vec![
            tagged(
                1,
                replicate_op(vec![entry("good", "v", Hlc::at_millis(now))]),
            ),
            tagged(
                2,
                replicate_op(vec![
                    entry("innocent", "v", Hlc::at_millis(now)),
                    entry("forged", "v", Hlc::at_millis(now + DAY_MS)),
                ]),
            ),
            tagged(3, read_op(&too_many)),
            tagged(4, read_op(&["good"])),
            v1::ReplicaRequest { tag: 5, op: None },
            tagged(7, read_op(&["good"])),
            tagged(7, read_op(&["missing"])),
        ],
    };
    let (answers, ended) = replica_stream(&node, vec![message]).await;
    assert!(ended.is_none(), "the stream ends cleanly: {ended:?}");
    assert_eq!(answers.len(), 7, "{answers:?}");
    assert!(error_of(&answers, 1).is_none());
    let drift = error_of(&answers, 2).expect("a forged version is refused");
    assert_eq!(drift.code, Code::FailedPrecondition as i32);
    assert!(
        drift.message.starts_with("clock drift: 1 of 2 entries"),
        "{}",
        drift.message
    );
    assert_eq!(
        held(&node, "innocent"),
        None,
        "the refused batch applied nothing"
    );
    assert_eq!(held(&node, "forged"), None);
    let keys = error_of(&answers, 3).expect("too many keys");
    assert_eq!(keys.code, Code::InvalidArgument as i32);
    assert!(keys.message.contains("max_batch_keys"), "{}", keys.message);
    match &answers.iter().find(|a| a.tag == 4).unwrap().result {
        Some(Answer::ReadVersions(read)) => assert!(read.results[0].found),
        other => panic!("tag 4: {other:?}"),
    }
    assert_eq!(
        error_of(&answers, 5).expect("no operation").code,
        Code::InvalidArgument as i32
    );
    let sevens: Vec<bool> = answers
        .iter()
        .filter(|a| a.tag == 7)
        .map(|a| match &a.result {
            Some(Answer::ReadVersions(read)) => read.results[0].found,
            other => panic!("tag 7: {other:?}"),
        })
        .collect();
    assert_eq!(sevens, [true, false], "a reused tag: each request answered");
    node.stop().await.unwrap();
}

/// A message over the node's message limit or with more requests than it takes at once ends
/// the stream with an error, applies nothing, and leaves the node serving other streams.
#[tokio::test]
async fn a_replica_stream_ends_on_oversized_messages_and_too_many_requests() {
    let node = TestNode::start_default().await;
    let now = Hlc::at_millis(node.node.now_ms());

    let crowd = v1::ReplicaRequests {
        requests: (0..257).map(|i| tagged(i, read_op(&["k"]))).collect(),
    };
    let (answers, ended) = replica_stream(&node, vec![crowd]).await;
    let status = ended.expect("257 requests in one message are refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("257 requests"),
        "{}",
        status.message()
    );
    assert!(answers.is_empty(), "none of that message ran: {answers:?}");

    let huge = "x".repeat(node.node.config().max_message_bytes + 1);
    let oversized = v1::ReplicaRequests {
        requests: vec![tagged(1, replicate_op(vec![entry("huge", &huge, now)]))],
    };
    let (answers, ended) = replica_stream(&node, vec![oversized]).await;
    let status = ended.expect("a message over max_message_bytes is refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(answers.is_empty());
    assert_eq!(held(&node, "huge"), None);

    let fine = v1::ReplicaRequests {
        requests: vec![tagged(1, replicate_op(vec![entry("after", "v", now)]))],
    };
    let (answers, ended) = replica_stream(&node, vec![fine]).await;
    assert!(
        ended.is_none() && error_of(&answers, 1).is_none(),
        "{ended:?} {answers:?}"
    );
    assert_eq!(
        held(&node, "after"),
        Some((Some(Bytes::from_static(b"v")), now))
    );
    node.stop().await.unwrap();
}

/// A peer that sends requests and never reads the answers: the node stops reading its requests
/// once the answers it owes fill the stream (HTTP/2 flow control), so what it holds for the
/// stream stays bounded, and it keeps serving everyone else.
#[tokio::test]
async fn a_replica_stream_whose_answers_are_never_read_stops_being_read() {
    const MESSAGES: usize = 10_000;
    const REQUESTS: usize = 256;
    let node = TestNode::start_default().await;
    let mut cache = node.raw_cache().await;
    let value = "v".repeat(8 * 1024);
    cache.set(set_request("big", &value, ONE)).await.unwrap();

    // Each message asks for the 8 KiB value 256 times: 2 MiB of answers per message.
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::ReplicaRequests>(1);
    let mut peer = internal(&node).await;
    let response = peer
        .replica_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("the stream opens");
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producer = tokio::spawn({
        let sent = sent.clone();
        async move {
            for i in 0..MESSAGES {
                let requests = (0..REQUESTS)
                    .map(|j| tagged((i * REQUESTS + j) as u64, read_op(&["big"])))
                    .collect();
                if tx.send(v1::ReplicaRequests { requests }).await.is_err() {
                    return;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    // Without backpressure the 20 GiB of answers would be made in seconds (and held); with it
    // the sender is stalled after a few windows' worth.
    let mut producer = producer;
    let stalled = tokio::time::timeout(Duration::from_secs(5), &mut producer).await;
    let taken = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(stalled.is_err(), "all {MESSAGES} messages were taken");
    assert!(
        taken < 2_000,
        "{taken} messages taken from a peer that reads nothing"
    );
    // Meanwhile the node serves other callers.
    let got = cache
        .get(get_request("big", ONE))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value.len(), value.len());
    // The stream holds its place until the peer disconnects (or, at a graceful stop, until
    // shutdown_timeout: HTTP/2 does not poll an answer stream the peer gives no window to).
    producer.abort();
    drop(response);
    drop(peer);
    node.crash().await.unwrap();
}
