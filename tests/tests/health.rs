//! Operators' side of a node: what `/health/ready` says while a node joins, waits for peers and
//! settles, and the connection cap with its metrics.

use std::time::Duration;

use ringcache_proto::v1::{self, cluster_client::ClusterClient};
use ringcache_server::Config;
use ringcache_tests::{TestCluster, TestNode, http_get, wait_until};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};

/// Generous bound for gossip on a loaded machine (100 ms probes, 400 ms suspicion).
const DEADLINE: Duration = Duration::from_secs(20);

/// The status and body of `/health/ready`.
async fn ready(node: &TestNode) -> (u16, String) {
    let response = http_get(node.http_addr, "/health/ready").await.unwrap();
    (response.status, response.body)
}

/// Waits until `/health/ready` of `node` satisfies `done`; returns the last answer either way.
async fn ready_until(node: &TestNode, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let last = std::sync::Mutex::new((0, String::new()));
    let _ = wait_until(DEADLINE, || async {
        let (status, body) = ready(node).await;
        let met = done(status, &body);
        *last.lock().unwrap() = (status, body);
        met
    })
    .await;
    last.into_inner().unwrap()
}

#[tokio::test]
async fn a_lone_node_without_seeds_is_ready() {
    let node = TestNode::start_default().await;
    assert_eq!(ready(&node).await, (200, "ready\n".to_owned()));
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_node_whose_seed_is_unreachable_is_not_ready_until_a_peer_joins() {
    // A seed that exists but never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut config = Config::for_test();
    config.node_id = "a".to_owned();
    config.seeds = vec![silent.local_addr().unwrap().to_string()];
    let a = TestNode::start(config).await;

    // Joining first (it waits for the cluster), then Active but alone: not joined.
    let (status, body) = ready_until(&a, |_, body| body.contains("not joined")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "not ready: not joined: no peer reachable (no other member seen through the seeds yet)\n"
        )
    );
    assert_eq!(a.node.state(), v1::NodeState::Active);
    // Still so on a later look: nothing changed, so nothing can make it ready.
    assert_eq!(ready(&a).await.0, 503);

    // A peer joins through it: both become ready once the ring has settled.
    let mut config = Config::for_test();
    config.node_id = "b".to_owned();
    config.seeds = vec![a.gossip_addr.unwrap().to_string()];
    let b = TestNode::start(config).await;
    let (status, body) = ready_until(&a, |status, _| status == 200).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, body) = ready_until(&b, |status, _| status == 200).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    drop(silent);
}

#[tokio::test]
async fn a_node_with_peers_waits_for_the_ring_to_settle_and_is_ready_alone_once_they_die() {
    // n1 settles for an hour: once n2 is in its view, it cannot be ready.
    let mut cluster = TestCluster::start_with(2, |i, config| {
        if i == 1 {
            config.ready_settle = Duration::from_secs(3600);
        }
    })
    .await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    let n1 = cluster.node("n1");
    let (status, body) = ready_until(n1, |_, body| body.contains("settle window 1h")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: ring settling: "), "{body}");
    let (status, body) = ready_until(cluster.node("n2"), |status, _| status == 200).await;
    assert_eq!(status, 200, "n2 settles on its default window: {body}");

    // The reason is in NodeInfo too, for ringctl.
    let mut client = ClusterClient::new(n1.channel().await);
    let info = client
        .node_info(v1::NodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!info.ready);
    assert!(
        info.not_ready_reason.starts_with("ring settling"),
        "{info:?}"
    );

    // Its only peer dies: n1 has joined once and has nothing left to converge with.
    cluster.take("n2").crash().await.unwrap();
    let (status, body) = ready_until(cluster.node("n1"), |status, _| status == 200).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_and_counted() {
    let mut config = Config::for_test();
    config.max_connections = 2;
    let node = TestNode::start_without_gossip(config).await;
    let connections = || node.node.connections();

    let first = TcpStream::connect(node.grpc_addr).await.unwrap();
    let second = TcpStream::connect(node.grpc_addr).await.unwrap();
    wait_until(DEADLINE, || async { connections().open() == 2 })
        .await
        .unwrap();

    // At the cap: the third is closed at once, before anything is read or written.
    let mut third = TcpStream::connect(node.grpc_addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, third.read(&mut buf))
        .await
        .expect("the third connection is closed, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!((connections().open(), connections().rejected()), (2, 1));

    let metrics = http_get(node.http_addr, "/metrics").await.unwrap().body;
    for needle in [
        "ringcache_connections 2",
        "ringcache_connections_max 2",
        "ringcache_connections_rejected_total 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }

    // A closed connection frees its place; a gRPC client then gets in and sees the numbers.
    drop(first);
    wait_until(DEADLINE, || async { connections().open() == 1 })
        .await
        .unwrap();
    let mut client = ClusterClient::new(node.channel().await);
    let info = client
        .node_info(v1::NodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            info.connections,
            info.max_connections,
            info.connections_rejected
        ),
        (2, 2, 1)
    );
    drop(second);
    drop(client);
    wait_until(DEADLINE, || async { connections().open() == 0 })
        .await
        .unwrap();
    node.stop().await.unwrap();
}

// ---- the gRPC health service (grpc.health.v1.Health) --------------------------------------------

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// `Health.Check` of `service` on `node`'s client port, without credentials.
async fn grpc_check(node: &TestNode, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(node.channel().await);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(response.status).expect("a known status"))
}

/// Waits until `Health.Check("")` of `node` answers `want`; returns the last answer.
async fn grpc_check_until(node: &TestNode, want: ServingStatus) -> ServingStatus {
    let last = std::sync::Mutex::new(ServingStatus::Unknown);
    let _ = wait_until(DEADLINE, || async {
        let status = grpc_check(node, "").await.expect("Check answers");
        *last.lock().unwrap() = status;
        status == want
    })
    .await;
    last.into_inner().unwrap()
}

#[tokio::test]
async fn grpc_health_follows_readiness_for_check_and_watch() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut config = Config::for_test();
    config.node_id = "a".to_owned();
    config.seeds = vec![silent.local_addr().unwrap().to_string()];
    let a = TestNode::start(config).await;

    // Not joined: /health/ready says 503, and so does every name the health service knows.
    let (status, body) = ready_until(&a, |_, body| body.contains("not joined")).await;
    assert_eq!(status, 503, "{body}");
    for service in [
        "",
        "ringcache.v1.Cache",
        "ringcache.v1.Cluster",
        "ringcache.v1.Admin",
    ] {
        assert_eq!(
            grpc_check(&a, service).await.unwrap(),
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    let unknown = grpc_check(&a, "no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // A watch starts with the current status, and an unknown name is SERVICE_UNKNOWN (the
    // stream stays open).
    let mut client = HealthClient::new(a.channel().await);
    let mut watch = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("a first status");
    assert_eq!(first.status, ServingStatus::NotServing as i32);
    let mut unknown_watch = client
        .watch(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = unknown_watch.message().await.unwrap().expect("a status");
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);

    // A peer joins: the watch sees SERVING, and Check agrees with /health/ready.
    let mut config = Config::for_test();
    config.node_id = "b".to_owned();
    config.seeds = vec![a.gossip_addr.unwrap().to_string()];
    let b = TestNode::start(config).await;
    let next = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("the watch reports the change")
        .unwrap()
        .expect("a status");
    assert_eq!(next.status, ServingStatus::Serving as i32);
    assert_eq!(
        grpc_check_until(&a, ServingStatus::Serving).await,
        ServingStatus::Serving
    );
    assert_eq!(ready_until(&a, |status, _| status == 200).await.0, 200);
    assert_eq!(
        grpc_check_until(&b, ServingStatus::Serving).await,
        ServingStatus::Serving
    );

    // A graceful stop: the watch says NOT_SERVING and ends, and does not hold the shutdown.
    a.stop().await.unwrap();
    let mut seen = Vec::new();
    while let Some(message) = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("the watch ends with the node")
        .unwrap_or(None)
    {
        seen.push(message.status);
    }
    assert_eq!(
        seen.last(),
        Some(&(ServingStatus::NotServing as i32)),
        "{seen:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn grpc_health_needs_no_credentials_where_every_other_call_does() {
    use ringcache_server::auth::{Role, UserEntry};
    let mut config = Config::for_test();
    config.security.users = vec![UserEntry::with_secret(
        "app",
        Role::Admin,
        b"app-secret-0123456789",
    )];
    config.security.handshake_timeout = Duration::from_millis(500);
    let node = TestNode::start_without_gossip(config).await;
    let mut probe = HealthClient::new(node.channel().await);
    let answer = probe
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("a probe carries no credentials")
        .into_inner();
    assert_eq!(answer.status, ServingStatus::Serving as i32);
    // The probe's connection is still unauthenticated, and closed at the handshake timeout.
    let unauthenticated = node.node.unauthenticated_connections();
    assert_eq!(unauthenticated.open(), 1);
    wait_until(DEADLINE, || async { unauthenticated.open() == 0 })
        .await
        .expect("a connection that only probes is closed at the handshake timeout");
    drop(probe);
    let refused = ClusterClient::new(node.channel().await)
        .node_info(v1::NodeInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // Reflection is not let through with health.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let refused = ServerReflectionClient::new(node.channel().await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    node.stop().await.unwrap();
}

// ---- seeds resolved again until they answer -----------------------------------------------------

/// A resolver for one seed name whose answer a test sets (none at first: "no such host"),
/// counting lookups.
#[derive(Debug)]
struct TestDns {
    name: String,
    answer: std::sync::Mutex<Option<std::net::SocketAddr>>,
    lookups: std::sync::atomic::AtomicUsize,
}

impl TestDns {
    fn new(name: &str) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            name: name.to_owned(),
            answer: std::sync::Mutex::new(None),
            lookups: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn answer(&self, addr: std::net::SocketAddr) {
        *self.answer.lock().unwrap() = Some(addr);
    }

    fn lookups(&self) -> usize {
        self.lookups.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl ringcache_server::seeds::SeedResolver for TestDns {
    fn resolve(&self, seed: &str) -> ringcache_server::seeds::LookupFuture {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let answer = match *self.answer.lock().unwrap() {
            Some(addr) if seed == self.name => Ok(vec![addr]),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such host",
            )),
        };
        Box::pin(async move { answer })
    }
}

/// The ids of the members in `node`'s view.
fn view_ids(node: &TestNode) -> Vec<String> {
    let view = node.node.view();
    view.topology
        .members()
        .iter()
        .map(|m| m.node_id.clone())
        .collect()
}

#[tokio::test]
async fn a_node_whose_seed_does_not_resolve_yet_keeps_trying_and_joins_once_it_does() {
    const SEED: &str = "ringcache-0.ringcache.test.svc:7380";
    let mut config = Config::for_test();
    config.node_id = "a".to_owned();
    let a = TestNode::start(config).await;

    // b starts before its seed's name exists (a StatefulSet pod whose seed pod is not created
    // yet, or a resolver that cached the miss).
    let dns = TestDns::new(SEED);
    let mut config = Config::for_test();
    config.node_id = "b".to_owned();
    config.seeds = vec![SEED.to_owned()];
    let probe = config.probe_interval;
    let b = TestNode::start_prepared(config, |node| node.set_seed_resolver(dns.clone())).await;

    // It keeps resolving, with a growing delay: 5 lookups take 1 + 2 + 4 + 8 = 15 probe
    // intervals, longer than the 10 a node with a resolving seed waits before it goes Active
    // alone. This one must not found a cluster of one.
    wait_until(DEADLINE, || async { dns.lookups() >= 5 })
        .await
        .expect("the seed is resolved again and again");
    assert!(b.node.uptime() >= probe * 15, "{:?}", b.node.uptime());
    assert_eq!(b.node.state(), v1::NodeState::Joining);
    assert_eq!(
        ready(&b).await,
        (
            503,
            format!(
                "not ready: joining: waiting for a seed to resolve ({SEED}: no such host); retrying\n"
            )
        )
    );
    assert_eq!(view_ids(&b), ["b"]);
    assert_eq!(view_ids(&a), ["a"]);

    // The name appears: b joins a, pulls its ranges, turns Active, and both become ready.
    dns.answer(a.gossip_addr.unwrap());
    let (status, body) = ready_until(&b, |status, _| status == 200).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(b.node.state(), v1::NodeState::Active);
    let (status, body) = ready_until(&a, |status, _| status == 200).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(view_ids(&a), ["a", "b"]);
    assert_eq!(view_ids(&b), ["a", "b"]);
}

#[tokio::test]
async fn a_seed_that_moves_to_another_address_is_found_there() {
    const SEED: &str = "ringcache-0.ringcache.test.svc:7380";
    let mut config = Config::for_test();
    config.node_id = "a".to_owned();
    let a = TestNode::start(config).await;

    // The name first gives the address the seed pod had before it was rescheduled: nobody
    // answers there.
    let old_address = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns = TestDns::new(SEED);
    dns.answer(old_address.local_addr().unwrap());
    let mut config = Config::for_test();
    config.node_id = "b".to_owned();
    config.seeds = vec![SEED.to_owned()];
    let b = TestNode::start_prepared(config, |node| node.set_seed_resolver(dns.clone())).await;
    let (status, body) = ready_until(&b, |_, body| body.contains("not joined")).await;
    assert_eq!(status, 503, "{body}");

    // The name now gives the seed's new address: b announces there and joins.
    dns.answer(a.gossip_addr.unwrap());
    let (status, body) = ready_until(&b, |status, _| status == 200).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(view_ids(&a), ["a", "b"]);
    drop(old_address);
}

#[tokio::test]
async fn with_the_system_resolver_a_name_that_does_not_resolve_is_named_and_retried() {
    // `.invalid` never resolves (RFC 2606).
    const SEED: &str = "ringcache-0.ringcache.nosuch.invalid:7380";
    let mut config = Config::for_test();
    config.seeds = vec![SEED.to_owned()];
    let node = TestNode::start(config).await;
    let (status, body) = ready_until(&node, |_, body| body.contains("waiting for a seed")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with(&format!(
            "not ready: joining: waiting for a seed to resolve ({SEED}: "
        )),
        "{body}"
    );
    assert_eq!(node.node.state(), v1::NodeState::Joining);
    node.stop().await.unwrap();
}
