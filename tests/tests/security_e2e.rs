//! Security end to end, against real in-process nodes on loopback: credentials and roles on the
//! client port (unary, pipelined and Admin calls, and the auth failure metrics), Internal kept off
//! the client port, TLS on the client port (round trip, plaintext refused, certificate reload),
//! idle connections closed by the handshake timeout under a flood, and mutual TLS on the cluster
//! port (replication works between nodes, a client without a cluster certificate is refused).
//!
//! Certificates are made with rcgen (`ringcache_tests::certs`) and written to a scratch
//! directory under the system temp directory, removed at the end of each test.

use std::time::Duration;

use bytes::Bytes;
use ringcache::{Client, Error, TlsOptions};
use ringcache_proto::v1::{
    self, admin_client::AdminClient, cache_client::CacheClient, internal_client::InternalClient,
};
use ringcache_server::Config;
use ringcache_server::auth::{Role, UserEntry, basic_header};
use ringcache_server::config::TlsFiles;
use ringcache_server::connections::Refused;
use ringcache_tests::certs::{Ca, Scratch};
use ringcache_tests::{TestCluster, TestNode, metric_or_zero, wait_until};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Generous bound for anything that happens in the background.
const DEADLINE: Duration = Duration::from_secs(20);

const READER_SECRET: &str = "reader-secret-0123456789";
const WRITER_SECRET: &str = "writer-secret-0123456789";
const ADMIN_SECRET: &str = "admin-secret-0123456789";

// ---- users, requests and metrics ----------------------------------------------------------------

fn user(name: &str, role: Role, secret: &str) -> UserEntry {
    UserEntry::with_secret(name, role, secret.as_bytes())
}

/// reader (read), writer (write) and admin (admin).
fn three_users() -> Vec<UserEntry> {
    vec![
        user("reader", Role::Read, READER_SECRET),
        user("writer", Role::Write, WRITER_SECRET),
        user("admin", Role::Admin, ADMIN_SECRET),
    ]
}

/// `message` with `authorization: Basic …` for `user` and `secret`.
fn authed<T>(message: T, user: &str, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        basic_header(user, secret).parse().expect("an ASCII header"),
    );
    request
}

fn get_request(key: &str) -> v1::GetRequest {
    v1::GetRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        ..Default::default()
    }
}

fn set_request(key: &str, value: &str) -> v1::SetRequest {
    v1::SetRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    }
}

/// A typed client for `node` with `user`'s credentials, plaintext.
async fn client_as(node: &TestNode, user: &str, secret: &str) -> Result<Client, Error> {
    Client::builder()
        .seeds([node.grpc_target()])
        .credentials(user, secret)
        .connect()
        .await
}

fn auth_failures(reason: &str) -> String {
    format!("ringcache_auth_failures_total{{reason=\"{reason}\"}}")
}

/// Sets and reads back a key through `client`.
async fn round_trip(client: &Client, key: &str, value: &str) {
    client.set(key.to_owned(), value.to_owned()).await.unwrap();
    assert_eq!(
        client.get(key.to_owned()).await.unwrap().as_deref(),
        Some(value.as_bytes()),
        "{key} reads back"
    );
}

// ---- certificates -------------------------------------------------------------------------------

/// A CA, and a node certificate for `localhost` and `127.0.0.1` in `scratch`, as client-port TLS
/// files.
fn client_port_tls(scratch: &Scratch) -> (Ca, TlsFiles) {
    let ca = Ca::new("ringcache e2e ca");
    let (cert, key) = ca.sign(&["localhost", "127.0.0.1"]);
    let files = TlsFiles {
        cert: scratch.write("node.pem", &cert),
        key: scratch.write("node.key", &key),
        ca: None,
    };
    (ca, files)
}

/// A typed client over TLS trusting `ca`, expecting the server name `name`.
async fn tls_client(node: &TestNode, ca: &Ca, name: &str) -> Result<Client, Error> {
    Client::builder()
        .seeds([node.grpc_target()])
        .tls(TlsOptions::new(ca.pem.clone()).server_name(name))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

// ---- tests --------------------------------------------------------------------------------------

#[tokio::test]
async fn requests_without_credentials_are_unauthenticated_and_wrong_roles_are_denied() {
    let mut config = Config::for_test();
    config.security.users = three_users();
    let node = TestNode::start_without_gossip(config).await;

    // No credentials at all.
    let status = node
        .raw_cache()
        .await
        .get(get_request("k"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // The writer writes and reads.
    let writer = client_as(&node, "writer", WRITER_SECRET).await.unwrap();
    round_trip(&writer, "greeting", "hello").await;

    // The reader reads, but may not write: unary or pipelined.
    let reader = client_as(&node, "reader", READER_SECRET).await.unwrap();
    assert_eq!(
        reader.get("greeting").await.unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    let unary_reader = Client::builder()
        .seeds([node.grpc_target()])
        .credentials("reader", READER_SECRET)
        .pipelining(false)
        .connect()
        .await
        .unwrap();
    let error = unary_reader.set("greeting", "unary").await.unwrap_err();
    assert!(
        matches!(error, Error::PermissionDenied { .. }),
        "unary set by the reader: {error:?}"
    );
    let error = reader.set("greeting", "pipelined").await.unwrap_err();
    assert!(
        matches!(error, Error::PermissionDenied { .. }),
        "pipelined set by the reader: {error:?}"
    );
    assert_eq!(
        writer.get("greeting").await.unwrap().as_deref(),
        Some(&b"hello"[..]),
        "refused writes changed nothing"
    );

    // A wrong secret. The client probes its first pooled connection alone before the others,
    // so a refused credential costs exactly one checked (and counted) attempt.
    let error = Client::builder()
        .seeds([node.grpc_target()])
        .credentials("writer", "not-the-secret")
        .pool_size(4)
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Unauthenticated { .. }),
        "wrong secret: {error:?}"
    );

    // Admin calls need the admin role.
    let mut admin = AdminClient::new(node.channel().await);
    let status = admin
        .leave(authed(v1::LeaveRequest::default(), "writer", WRITER_SECRET))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let flushed = admin
        .flush(authed(v1::FlushRequest {}, "admin", ADMIN_SECRET))
        .await
        .unwrap()
        .into_inner();
    assert!(flushed.removed >= 1, "{flushed:?}");
    assert_eq!(writer.get("greeting").await.unwrap(), None, "flushed");

    // Every refusal was counted, by reason.
    assert_eq!(metric_or_zero(&node, &auth_failures("missing")).await, 1.0);
    assert_eq!(metric_or_zero(&node, &auth_failures("invalid")).await, 1.0);
    assert_eq!(
        metric_or_zero(&node, &auth_failures("permission_denied")).await,
        3.0,
        "unary set, pipelined set, Admin.Leave"
    );
    assert_eq!(
        metric_or_zero(&node, &auth_failures("locked_out")).await,
        0.0
    );

    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_credential_cannot_call_internal() {
    let mut config = Config::for_test();
    config.security.users = three_users();
    let node = TestNode::start_without_gossip(config).await;

    let request = || {
        authed(
            v1::ReadVersionsRequest {
                keys: vec![Bytes::from_static(b"k")],
            },
            "admin",
            ADMIN_SECRET,
        )
    };
    let status = InternalClient::new(node.channel().await)
        .read_versions(request())
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::Unimplemented | Code::PermissionDenied),
        "Internal on the client port: {status:?}"
    );

    // Sanity: without cluster TLS the cluster port serves Internal.
    let answer = InternalClient::new(node.cluster_channel().await)
        .read_versions(request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.results.len(), 1, "{answer:?}");

    node.stop().await.unwrap();
}

#[tokio::test]
async fn tls_round_trip_and_plaintext_client_refused() {
    let scratch = Scratch::new("tls");
    let (ca, files) = client_port_tls(&scratch);
    let mut config = Config::for_test();
    config.security.tls = Some(files);
    let node = TestNode::start_without_gossip(config).await;

    let client = tls_client(&node, &ca, "localhost").await.unwrap();
    round_trip(&client, "over-tls", "secret value").await;

    let error = Client::builder()
        .seeds([node.grpc_target()])
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_err();
    assert!(
        !matches!(error, Error::InvalidArgument(_)),
        "a plaintext client is refused by the node, not by itself: {error:?}"
    );
    wait_until(DEADLINE, || async {
        node.node.connections().refused(Refused::Handshake) >= 1
    })
    .await
    .expect("the plaintext connection is counted as a failed TLS handshake");

    round_trip(&client, "over-tls", "still there").await;
    node.stop().await.unwrap();
}

#[tokio::test]
async fn certificate_reload_keeps_a_client_working() {
    let scratch = Scratch::new("reload");
    let (ca, files) = client_port_tls(&scratch);
    let mut config = Config::for_test();
    config.security.tls = Some(files.clone());
    let node = TestNode::start_without_gossip(config).await;

    let old = tls_client(&node, &ca, "localhost").await.unwrap();
    round_trip(&old, "before", "1").await;

    // A name only the new certificate carries: a client expecting it proves the new one is served.
    let (cert, key) = ca.sign(&["localhost", "127.0.0.1", "reloaded.test"]);
    scratch.write("node.key", &key);
    scratch.write("node.pem", &cert);
    node.node.reload_tls_and_users().unwrap();

    round_trip(&old, "after", "2").await;
    let new = tls_client(&node, &ca, "reloaded.test").await.unwrap();
    round_trip(&new, "new", "3").await;
    assert_eq!(new.get("before").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(old.get("new").await.unwrap().as_deref(), Some(&b"3"[..]));

    node.stop().await.unwrap();
}

#[tokio::test]
async fn idle_connections_are_closed_by_the_handshake_timeout_and_clients_keep_working() {
    const IDLE: usize = 3000;
    const MAX_UNAUTHENTICATED: usize = 200;
    let mut config = Config::for_test();
    config.security.users = three_users();
    config.security.handshake_timeout = Duration::from_millis(500);
    config.security.max_unauthenticated_connections = MAX_UNAUTHENTICATED;
    let node = TestNode::start_without_gossip(config).await;

    // A client connected (and authenticated) before the flood, on one connection.
    let client = Client::builder()
        .seeds([node.grpc_target()])
        .credentials("writer", WRITER_SECRET)
        .pool_size(1)
        .connect()
        .await
        .unwrap();
    round_trip(&client, "before", "1").await;
    let open_before = node.node.connections().open();

    let started = std::time::Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(
            tokio::net::TcpStream::connect(node.grpc_addr)
                .await
                .unwrap(),
        );
    }
    let connected_in = started.elapsed();

    let connections = node.node.connections();
    wait_until(DEADLINE, || async {
        connections.refused(Refused::TooManyUnauthenticated)
            >= (IDLE - MAX_UNAUTHENTICATED) as u64 / 2
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: refused too_many_unauthenticated = {}",
            connections.refused(Refused::TooManyUnauthenticated)
        )
    });
    // The authenticated client is not held up by strangers.
    round_trip(&client, "during", "2").await;

    wait_until(DEADLINE, || async {
        connections.refused(Refused::HandshakeTimeout) >= 1
            && connections.open() <= open_before
            && node.node.unauthenticated_connections().open() == 0
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: handshake_timeout = {}, open = {} (before the flood {open_before}), unauthenticated = {}",
            connections.refused(Refused::HandshakeTimeout),
            connections.open(),
            node.node.unauthenticated_connections().open()
        )
    });
    let refused_full = connections.refused(Refused::TooManyUnauthenticated);
    let timed_out = connections.refused(Refused::HandshakeTimeout);
    assert_eq!(
        refused_full + timed_out,
        IDLE as u64,
        "every idle connection was closed, at the cap or by the timeout (connected in {connected_in:?})"
    );

    // The old client still works, and a new one connects.
    round_trip(&client, "after", "3").await;
    let fresh = client_as(&node, "writer", WRITER_SECRET).await.unwrap();
    round_trip(&fresh, "fresh", "4").await;
    drop(idle);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn cluster_port_requires_a_cluster_certificate() {
    let scratch = Scratch::new("cluster");
    let ca = Ca::new("ringcache e2e cluster ca");
    let ca_path = scratch.write("cluster-ca.pem", &ca.pem);
    let mut node_files = Vec::new();
    for i in 1..=2 {
        let (cert, key) = ca.sign(&["ringcache-cluster"]);
        node_files.push(TlsFiles {
            cert: scratch.write(&format!("n{i}.pem"), &cert),
            key: scratch.write(&format!("n{i}.key"), &key),
            ca: Some(ca_path.clone()),
        });
    }
    let cluster = TestCluster::start_converged(2, DEADLINE, |i, config| {
        config.security.cluster_tls = Some(node_files[i - 1].clone());
    })
    .await;
    let n1 = cluster.node("n1");
    let n2 = cluster.node("n2");

    // A write at the default consistency (QUORUM: both nodes, as R = 3 > 2 nodes) through n1
    // reaches n2 over mutual TLS.
    CacheClient::new(n1.channel().await)
        .set(set_request("replicated", "over mtls"))
        .await
        .unwrap();
    let held = n2
        .node
        .store()
        .get_versioned(b"replicated")
        .unwrap()
        .and_then(|item| item.value);
    assert_eq!(
        held.as_deref(),
        Some(&b"over mtls"[..]),
        "n2 holds the write"
    );
    let read = CacheClient::new(n2.channel().await)
        .get(get_request("replicated"))
        .await
        .unwrap()
        .into_inner();
    assert!(read.found, "{read:?}");
    assert_eq!(&read.value[..], b"over mtls", "{read:?}");

    // A TLS client trusting the cluster CA but without a cluster certificate is refused.
    let endpoint = |tls: ClientTlsConfig| {
        Endpoint::from_shared(format!("https://{}", n1.cluster_addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .tls_config(tls)
            .unwrap()
    };
    let server_only = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("ringcache-cluster");
    let refused_before = n1.node.cluster_connections().refused(Refused::Handshake);
    let request = || v1::ReadVersionsRequest {
        keys: vec![Bytes::from_static(b"replicated")],
    };
    match endpoint(server_only.clone()).connect().await {
        Err(_) => {}
        Ok(channel) => {
            let outcome = InternalClient::new(channel).read_versions(request()).await;
            assert!(
                outcome.is_err(),
                "Internal answered a client without a cluster certificate: {outcome:?}"
            );
        }
    }
    wait_until(DEADLINE, || async {
        n1.node.cluster_connections().refused(Refused::Handshake) > refused_before
    })
    .await
    .expect("the cluster port counts the failed handshake");

    // Sanity: the same client with a cluster certificate gets through.
    let (cert, key) = ca.sign(&["ringcache-cluster"]);
    let channel: Channel = endpoint(server_only.identity(Identity::from_pem(cert, key)))
        .connect()
        .await
        .unwrap();
    let answer = InternalClient::new(channel)
        .read_versions(request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.results.len(), 1, "{answer:?}");

    drop(cluster);
}

#[tokio::test]
async fn idle_connections_are_closed_and_connections_with_open_streams_stay() {
    let mut config = Config::for_test();
    config.security.idle_timeout = Some(Duration::from_millis(300));
    let node = TestNode::start_without_gossip(config).await;
    // A pipelining client keeps a stream open on each pooled connection: never idle.
    let busy = Client::builder()
        .seeds([node.grpc_target()])
        .pool_size(1)
        .connect()
        .await
        .unwrap();
    round_trip(&busy, "busy", "1").await;
    // A raw channel makes one unary call and then has nothing in progress.
    let mut idle = CacheClient::new(node.channel().await);
    idle.set(set_request("idle", "1")).await.unwrap();
    wait_until(DEADLINE, || async {
        node.node.connections().refused(Refused::Idle) >= 1
    })
    .await
    .expect("the idle connection is closed");
    // The busy client's connection is older: had it been idle, it would have been closed first.
    assert_eq!(
        node.node.connections().refused(Refused::Idle),
        1,
        "only the connection without a stream is closed"
    );
    // The channel redials on its next call; the busy client was never cut off.
    wait_until(DEADLINE, || {
        let mut idle = idle.clone();
        async move { idle.get(get_request("idle")).await.is_ok() }
    })
    .await
    .expect("a closed idle connection is redialled");
    round_trip(&busy, "busy", "2").await;
    node.stop().await.unwrap();
}
