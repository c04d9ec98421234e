//! The node's operational surface: metrics, health, topology, reflection, admin, shutdown.

use std::time::Duration;

use bytes::Bytes;
use ringcache::Client;
use ringcache_proto::v1::{self, admin_client::AdminClient, cluster_client::ClusterClient};
use ringcache_tests::{TestNode, http_get};
use tokio_stream::StreamExt;

#[tokio::test]
async fn metrics_count_requests_by_op_and_result() {
    let node = TestNode::start_default().await;
    let c = Client::connect([node.grpc_target()]).await.unwrap();
    c.set("k", "v").await.unwrap();
    c.get("k").await.unwrap();
    c.get("nope").await.unwrap();
    let _ = c.set("", "v").await;
    let _ = c.set(vec![b'x'; 9000], "v").await;

    let response = http_get(node.http_addr, "/metrics").await.unwrap();
    assert_eq!(response.status, 200);
    let text = response.body;
    for needle in [
        r#"ringcache_requests_total{op="set",result="ok"} 1"#,
        r#"ringcache_requests_total{op="get",result="ok"} 1"#,
        r#"ringcache_requests_total{op="get",result="miss"} 1"#,
        r#"ringcache_requests_total{op="set",result="invalid_argument"} 1"#,
        r#"ringcache_request_duration_seconds_count{op="set"} 2"#,
        "ringcache_keys 1",
        "ringcache_hits_total 1",
        "ringcache_misses_total 1",
        "ringcache_evictions_total 0",
        "ringcache_expirations_total 0",
        "ringcache_memory_max_bytes 67108864",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert!(text.contains("ringcache_memory_used_bytes "), "{text}");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn health_endpoints_report_live_and_ready() {
    let node = TestNode::start_default().await;
    let live = http_get(node.http_addr, "/health/live").await.unwrap();
    let ready = http_get(node.http_addr, "/health/ready").await.unwrap();
    assert_eq!((live.status, ready.status), (200, 200));
    assert_eq!(http_get(node.http_addr, "/nope").await.unwrap().status, 404);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn topology_node_info_and_watch_describe_the_node() {
    let node = TestNode::start_default().await;
    let mut cluster = ClusterClient::new(node.channel().await);
    let topology = cluster
        .get_topology(v1::GetTopologyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topology.members.len(), 1);
    let me = &topology.members[0];
    assert_eq!(me.node_id, "test-node");
    assert_eq!(me.grpc_addr, node.grpc_addr.to_string());
    assert_eq!(me.http_addr, node.http_addr.to_string());
    assert_eq!(me.state, v1::NodeState::Active as i32);
    let checked =
        ringcache_proto::topology::Topology::try_from(&topology).expect("a valid topology");
    assert_eq!(checked.digest(), topology.digest);
    // The node states its request limits, for clients to split batches to.
    let config = node.node.config();
    assert_eq!(
        topology.sender_limits,
        Some(v1::NodeLimits {
            max_batch_keys: config.max_batch_keys as u32,
            max_message_bytes: config.max_message_bytes as u64,
        })
    );

    let mut watch = cluster
        .watch_topology(v1::WatchTopologyRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first, topology,
        "the watch starts with the current topology, limits included"
    );

    let c = Client::connect([node.grpc_target()]).await.unwrap();
    c.set("a", "1").await.unwrap();
    c.get("a").await.unwrap();
    let info = cluster
        .node_info(v1::NodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.node_id.as_str(), info.keys, info.hits),
        ("test-node", 1, 1)
    );
    assert_eq!(info.eviction_policy, "clock");
    assert_eq!(info.max_memory_bytes, 64 * 1024 * 1024);
    assert!(info.memory_used_bytes > 0);

    // Shutting down ends the open watch instead of waiting on it.
    node.stop().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(item) = watch.next().await {
            if item.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "watch stream did not end at shutdown");
}

#[tokio::test]
async fn flush_empties_the_node_and_leave_shuts_it_down() {
    let mut node = TestNode::start_default().await;
    let c = Client::connect([node.grpc_target()]).await.unwrap();
    c.mset((0..10).map(|i| (format!("k{i}"), "v")), None)
        .await
        .unwrap();
    let mut admin = AdminClient::new(node.channel().await);
    let removed = admin
        .flush(v1::FlushRequest {})
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert_eq!(removed, 10);
    assert_eq!(c.get("k1").await.unwrap(), None);

    let state = admin
        .leave(v1::LeaveRequest::default())
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, "NODE_STATE_LEAVING");
    node.wait_stopped().await.unwrap();
    assert!(
        c.set("after", Bytes::from("leave")).await.is_err(),
        "a node that left serves nothing"
    );
}

#[tokio::test]
async fn reflection_lists_the_ringcache_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let node = TestNode::start_default().await;
    let mut reflection = ServerReflectionClient::new(node.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "ringcache.v1.Cache",
        "ringcache.v1.Cluster",
        "ringcache.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n == "ringcache.v1.Internal"),
        "the client port does not serve Internal: {names:?}"
    );
    node.stop().await.unwrap();
}

/// Reflection v1alpha, the version older tools and Python's grpcio-reflection speak, answers as
/// v1 does: the service list and the file that defines a symbol.
#[tokio::test]
async fn reflection_v1alpha_answers_like_v1() {
    use prost::Message as _;
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let node = TestNode::start_default().await;
    let mut reflection = ServerReflectionClient::new(node.channel().await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("ringcache.v1.Cache".to_owned()),
    ]
    .map(|message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("v1alpha is served")
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "ringcache.v1.Cache",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let cache_file = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .find(|file| file.service.iter().any(|s| s.name() == "Cache"))
        .expect("the file defining ringcache.v1.Cache");
    assert_eq!(cache_file.package(), "ringcache.v1");
    assert!(
        cache_file.service[0]
            .method
            .iter()
            .any(|m| m.name() == "Get"),
        "{cache_file:?}"
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn the_topology_advertises_the_advertise_address() {
    let mut config = ringcache_server::Config::for_test();
    config.advertise_addr = Some("127.0.0.5".parse().unwrap());
    let node = TestNode::start(config).await;
    let mut cluster = ClusterClient::new(node.channel().await);
    let topology = cluster
        .get_topology(v1::GetTopologyRequest {})
        .await
        .unwrap()
        .into_inner();
    let me = &topology.members[0];
    assert_eq!(me.grpc_addr, format!("127.0.0.5:{}", node.grpc_addr.port()));
    assert_eq!(me.http_addr, format!("127.0.0.5:{}", node.http_addr.port()));
    assert_eq!(
        me.gossip_addr,
        format!("127.0.0.5:{}", node.gossip_addr.unwrap().port())
    );
    node.stop().await.unwrap();
}
