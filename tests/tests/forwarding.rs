//! The server-side safety net: nodes with a shared static topology forward requests for keys they
//! do not hold to the key's primary, exactly once.

use bytes::Bytes;
use ringcache_proto::topology::{Member, NodeState, Topology};
use ringcache_proto::v1;
use ringcache_proto::{FORWARDED_METADATA, STALE_ROUTE_METADATA, TOPOLOGY_DIGEST_METADATA};
use ringcache_server::Config;
use ringcache_tests::{TestNode, http_get};
use tonic::Code;
use tonic::metadata::MetadataValue;

/// Three nodes that all hold the same three-member topology.
async fn cluster() -> (Vec<TestNode>, Topology) {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let mut config = Config::for_test();
        config.node_id = format!("n{i}");
        nodes.push(TestNode::start_without_gossip(config).await);
    }
    let members = nodes
        .iter()
        .map(|n| Member {
            cluster_addr: n.cluster_addr.to_string(),
            ..Member::for_test(n.node.config().node_id.as_str())
                .with_grpc_addr(n.grpc_addr.to_string())
                .with_gossip_addr("127.0.0.1:1")
                .with_http_addr(n.http_addr.to_string())
        })
        .collect();
    // R = 1: every key has exactly one holder, so any other node must forward.
    let topology = Topology::new(members, 1, 64);
    for node in &nodes {
        node.node.set_topology(topology.clone());
    }
    (nodes, topology)
}

fn node_index(nodes: &[TestNode], node_id: &str) -> usize {
    nodes
        .iter()
        .position(|n| n.node.config().node_id == node_id)
        .unwrap()
}

#[tokio::test]
async fn a_request_for_a_key_held_elsewhere_is_forwarded_to_its_primary() {
    let (nodes, topology) = cluster().await;
    let ring = ringcache_proto::placement::Ring::new(&topology);
    let mut entry = nodes[0].raw_cache().await;
    let mut forwarded_expected = 0;
    for i in 0..60 {
        let key = format!("key{i}");
        let primary = node_index(&nodes, ring.primary(key.as_bytes()).unwrap());
        let response = entry
            .set(v1::SetRequest {
                key: Bytes::from(key.clone()),
                value: Bytes::from(format!("v{i}")),
                ..Default::default()
            })
            .await
            .unwrap();
        let stale = response.metadata().contains_key(STALE_ROUTE_METADATA);
        assert_eq!(stale, primary != 0, "{key}: stale flag");
        let digest = response
            .metadata()
            .get(TOPOLOGY_DIGEST_METADATA)
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(digest, topology.digest().to_string());
        // The value lives on the primary only.
        for (n, node) in nodes.iter().enumerate() {
            let held = node
                .node
                .store()
                .get(key.as_bytes(), node.node.now_ms())
                .unwrap()
                .is_some();
            assert_eq!(held, n == primary, "{key} on node {n}");
        }
        forwarded_expected += u64::from(primary != 0);
        // Reads through the same node find it.
        let got = entry
            .get(v1::GetRequest {
                key: Bytes::from(key),
                consistency: 0,
                tracking_id: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(got.found);
        forwarded_expected += u64::from(primary != 0);
    }
    assert!(forwarded_expected > 0);
    assert_eq!(
        nodes[0].node.metrics().forwarded_total(),
        forwarded_expected
    );
    assert_eq!(
        nodes[1].node.metrics().forwarded_total(),
        0,
        "a forwarded request is not forwarded again"
    );
    assert_eq!(nodes[2].node.metrics().forwarded_total(), 0);
}

#[tokio::test]
async fn a_forwarded_request_is_served_where_it_lands() {
    let (nodes, topology) = cluster().await;
    let ring = ringcache_proto::placement::Ring::new(&topology);
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| ring.primary(k.as_bytes()) != Some("n1"))
        .unwrap();
    let mut request = tonic::Request::new(v1::SetRequest {
        key: Bytes::from(key.clone()),
        value: Bytes::from("here"),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert(FORWARDED_METADATA, MetadataValue::from_static("1"));
    nodes[0].raw_cache().await.set(request).await.unwrap();
    assert!(
        nodes[0]
            .node
            .store()
            .get(key.as_bytes(), nodes[0].node.now_ms())
            .unwrap()
            .is_some()
    );
    assert_eq!(nodes[0].node.metrics().forwarded_total(), 0);
}

#[tokio::test]
async fn multi_key_requests_are_split_by_primary_and_keep_their_order() {
    let (nodes, _) = cluster().await;
    let mut entry = nodes[1].raw_cache().await;
    let keys: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("m{i}"))).collect();
    let versions = entry
        .m_set(v1::MSetRequest {
            entries: keys
                .iter()
                .map(|k| v1::KeyValue {
                    key: k.clone(),
                    value: k.clone(),
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 50);
    assert!(versions.iter().all(|&v| v > 0));
    let held: u64 = nodes.iter().map(|n| n.node.store().stats().keys).sum();
    assert_eq!(held, 50, "each key stored once, on its primary");
    assert!(
        nodes.iter().all(|n| n.node.store().stats().keys > 0),
        "keys spread over all nodes"
    );

    let mut asked: Vec<Bytes> = keys.iter().rev().cloned().collect();
    asked.push(Bytes::from("missing"));
    let results = entry
        .m_get(v1::MGetRequest {
            keys: asked.clone(),
            consistency: 0,
            tracking_id: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 51);
    for (key, result) in asked.iter().zip(&results) {
        if key == "missing" {
            assert!(!result.found);
        } else {
            assert!(result.found, "{key:?}");
            assert_eq!(&result.value, key);
        }
    }
    let deleted = entry
        .m_delete(v1::MDeleteRequest {
            keys: asked,
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 50);
    let held: u64 = nodes.iter().map(|n| n.node.store().stats().keys).sum();
    assert_eq!(held, 0);
}

#[tokio::test]
async fn an_unreachable_primary_gives_unavailable_naming_it() {
    let (mut nodes, topology) = cluster().await;
    let ring = ringcache_proto::placement::Ring::new(&topology);
    let dead = nodes.pop().unwrap();
    let dead_id = dead.node.config().node_id.clone();
    dead.stop().await.unwrap();
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| ring.primary(k.as_bytes()) == Some(dead_id.as_str()))
        .unwrap();
    let status = nodes[0]
        .raw_cache()
        .await
        .get(v1::GetRequest {
            key: Bytes::from(key),
            consistency: 0,
            tracking_id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&dead_id), "{}", status.message());
    assert!(
        status.metadata().contains_key(TOPOLOGY_DIGEST_METADATA),
        "errors carry the digest too"
    );
}

#[tokio::test]
async fn invalid_input_is_refused_before_forwarding() {
    let (nodes, _) = cluster().await;
    let status = nodes[0]
        .raw_cache()
        .await
        .m_get(v1::MGetRequest {
            keys: vec![Bytes::from("a"), Bytes::new()],
            consistency: 0,
            tracking_id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_stale_client_is_forwarded_once_then_refreshes() {
    let (nodes, old) = cluster().await;
    let client = ringcache::Client::connect([nodes[0].grpc_target()])
        .await
        .unwrap();
    assert_eq!(client.topology_digest(), old.digest());
    // n2 stops owning ranges on n2 and n3; n1 (which the client watches) still has the old
    // topology, so the client does not hear about it.
    let members = old
        .members()
        .iter()
        .cloned()
        .map(|mut m| {
            if m.node_id == "n2" {
                m.state = NodeState::Joining;
            }
            m
        })
        .collect();
    let new = Topology::new(members, 1, 64);
    nodes[1].node.set_topology(new.clone());
    nodes[2].node.set_topology(new.clone());
    let old_ring = ringcache_proto::placement::Ring::new(&old);
    let keys: Vec<String> = (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| old_ring.primary(k.as_bytes()) == Some("n2"))
        .take(5)
        .collect();

    client.set(keys[0].clone(), "v").await.unwrap();
    assert_eq!(
        nodes[1].node.metrics().forwarded_total(),
        1,
        "n2 forwards the stale request"
    );
    ringcache_tests::wait_until(std::time::Duration::from_secs(10), || async {
        client.topology_digest() == new.digest()
    })
    .await
    .expect("the answer's digest makes the client refresh");
    // Gossip would now bring n1 up to date too.
    nodes[0].node.set_topology(new.clone());
    for key in &keys[1..] {
        client.set(key.clone(), "v").await.unwrap();
    }
    assert_eq!(
        nodes[1].node.metrics().forwarded_total(),
        1,
        "fresh routing needs no forwarding"
    );
    let total: u64 = nodes
        .iter()
        .map(|n| n.node.metrics().forwarded_total())
        .sum();
    assert_eq!(total, 1);
}

#[tokio::test]
async fn a_refusal_from_the_owner_is_recorded_as_that_refusal_where_it_was_forwarded() {
    let (nodes, topology) = cluster().await;
    let ring = ringcache_proto::placement::Ring::new(&topology);
    let key = (0..)
        .map(|i| format!("word{i}"))
        .find(|k| ring.primary(k.as_bytes()) != Some("n1"))
        .unwrap();
    let mut entry = nodes[0].raw_cache().await;
    entry
        .set(v1::SetRequest {
            key: Bytes::from(key.clone()),
            value: Bytes::from("not a number"),
            ..Default::default()
        })
        .await
        .unwrap();
    // Passes the forwarder's checks; only the owner, holding the value, can refuse it.
    let status = entry
        .incr(v1::IncrRequest {
            key: Bytes::from(key),
            delta: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(nodes[0].node.metrics().forwarded_total(), 2);
    let text = http_get(nodes[0].http_addr, "/metrics").await.unwrap().body;
    let needle = r#"ringcache_requests_total{op="incr",result="invalid_argument"} 1"#;
    assert!(text.contains(needle), "{needle} missing from\n{text}");
    let wrong = r#"ringcache_requests_total{op="incr",result="error"} 1"#;
    assert!(!text.contains(wrong), "recorded as an error:\n{text}");
}
