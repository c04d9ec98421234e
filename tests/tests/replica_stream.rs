//! Replica traffic on `Internal.ReplicaStream`, one long-lived stream per peer: QUORUM and ALL
//! reads and writes on 3 nodes travel on it; a peer killed mid-stream fails only the requests in
//! flight to it, and the writes it missed become hints; a peer that does not know the stream
//! (it answers UNIMPLEMENTED, as an older node does) gets unary calls; and with
//! `replica_stream_in_flight = 0` every batch is a unary call. The stream's queueing, tagging and
//! failure handling are unit-tested in `server/src/replication/link.rs`; hostile input to the
//! receiving side is in `tests/peer_input.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ringcache_proto::v1::{
    self,
    cache_client::CacheClient,
    internal_client::InternalClient,
    internal_server::{Internal, InternalServer},
};
use ringcache_server::view::{PeerConnector, PeerIo};
use ringcache_tests::{
    TestCluster, TestNode, get_request, keep_suspects, metric, set_request, wait_until,
};
use tokio::task::JoinSet;
use tokio_stream::Stream;
use tonic::transport::{Channel, Uri};
use tonic::{Code, Request, Response, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(20);

const QUORUM: i32 = v1::Consistency::Quorum as i32;
const ALL: i32 = v1::Consistency::All as i32;

const STREAMS: &str = "ringcache_replica_streams";
const SERVED: &str = "ringcache_replica_streams_served";
const WRITE_BATCHES: &str = r#"ringcache_replication_batches_total{kind="replicate"}"#;
const READ_BATCHES: &str = r#"ringcache_replication_batches_total{kind="read_versions"}"#;

/// The live value `node` holds for `key`, if any.
fn value_on(node: &TestNode, key: &str) -> Option<Bytes> {
    node.node
        .store()
        .get_versioned(key.as_bytes())
        .unwrap()
        .and_then(|item| item.value)
}

/// Writes then reads `prefix0..count` through `client` at `level`, asserting each answer.
async fn write_and_read(client: &mut CacheClient<Channel>, prefix: &str, count: usize, level: i32) {
    for i in 0..count {
        let key = format!("{prefix}{i}");
        client
            .set(set_request(&key, &format!("v{i}"), level))
            .await
            .unwrap_or_else(|e| panic!("set {key}: {e:?}"));
    }
    for i in 0..count {
        let key = format!("{prefix}{i}");
        let got = client
            .get(get_request(&key, level))
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
            .into_inner();
        assert!(got.found, "{key}");
        assert_eq!(got.value.as_ref(), format!("v{i}").as_bytes(), "{key}");
    }
}

/// `count` concurrent QUORUM writes of `prefix0..count`; every answer.
async fn write_concurrently(
    client: &CacheClient<Channel>,
    prefix: &str,
    count: usize,
) -> Vec<Result<(), Status>> {
    let mut calls = JoinSet::new();
    for i in 0..count {
        let mut client = client.clone();
        let request = set_request(&format!("{prefix}{i}"), &format!("v{i}"), QUORUM);
        calls.spawn(async move { client.set(request).await.map(|_| ()) });
    }
    calls.join_all().await
}

#[tokio::test]
async fn quorum_and_all_reads_and_writes_travel_on_one_stream_per_peer() {
    let cluster = TestCluster::start_converged(3, DEADLINE, keep_suspects).await;
    let n1 = &cluster.nodes[0];
    let mut client = n1.raw_cache().await;
    let (writes_before, reads_before) = (
        metric(n1, WRITE_BATCHES).await,
        metric(n1, READ_BATCHES).await,
    );

    write_and_read(&mut client, "q", 30, QUORUM).await;
    write_and_read(&mut client, "a", 30, ALL).await;

    assert_eq!(
        n1.node.replicator().replica_streams(),
        2,
        "one stream to each other replica, kept open"
    );
    assert_eq!(metric(n1, STREAMS).await, 2.0);
    for peer in &cluster.nodes[1..] {
        assert!(
            metric(peer, SERVED).await >= 1.0,
            "{} serves n1's stream",
            peer.node.config().node_id
        );
    }
    // Batches on the stream are counted as before: at least one per write and read that asked
    // another replica (sequential requests rarely share one).
    assert!(metric(n1, WRITE_BATCHES).await - writes_before >= 60.0);
    assert!(metric(n1, READ_BATCHES).await - reads_before >= 60.0);
    // Every ALL write is on every replica.
    for i in 0..30 {
        for node in &cluster.nodes {
            assert_eq!(
                value_on(node, &format!("a{i}")).as_deref(),
                Some(format!("v{i}").as_bytes())
            );
        }
    }
}

#[tokio::test]
async fn a_peer_killed_mid_stream_fails_only_its_requests_and_the_writes_become_hints() {
    const DURING: usize = 300;
    const AFTER: usize = 50;
    let mut cluster = TestCluster::start_converged(3, DEADLINE, keep_suspects).await;
    // Out of the cluster's list (still running), to be killed below.
    let n3 = cluster.take("n3");
    let n1 = &cluster.nodes[0];
    let client = n1.raw_cache().await;
    let mut sequential = client.clone();
    write_and_read(&mut sequential, "warm", 5, QUORUM).await;
    assert_eq!(n1.node.replicator().replica_streams(), 2);

    // Writes in flight on both streams while n3 is killed: n2's stream carries on, so every
    // write meets QUORUM.
    let writes = tokio::spawn({
        let client = client.clone();
        async move { write_concurrently(&client, "during", DURING).await }
    });
    n3.crash().await.unwrap();
    for (i, answer) in writes.await.unwrap().into_iter().enumerate() {
        assert!(answer.is_ok(), "during{i}: {answer:?}");
    }

    // Every write after the kill is acknowledged by n1 and n2 and leaves a hint for n3.
    let hints_before = n1.node.replicator().hints_pending_for("n3");
    for (i, answer) in write_concurrently(&client, "after", AFTER)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(answer.is_ok(), "after{i}: {answer:?}");
    }
    assert_eq!(
        n1.node.replicator().hints_pending_for("n3") - hints_before,
        AFTER,
        "one hint per write n3 missed"
    );
    let n2 = cluster.node("n2");
    wait_until(DEADLINE, || async {
        (0..DURING).all(|i| value_on(n2, &format!("during{i}")).is_some())
            && (0..AFTER).all(|i| value_on(n2, &format!("after{i}")).is_some())
    })
    .await
    .expect("n2 got every write on its stream");
    assert_eq!(
        metric(n2, SERVED).await,
        1.0,
        "n2's stream from n1 was not disturbed"
    );
    // ALL cannot be met, and says why; QUORUM reads still work through n2.
    let error = sequential
        .set(set_request("strict", "v", ALL))
        .await
        .expect_err("ALL cannot be met with n3 down");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(
        error.message().contains("(n3: "),
        "names n3: {}",
        error.message()
    );
    let got = sequential
        .get(get_request("after7", QUORUM))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value.as_ref(), b"v7");
}

/// A node of an older version in front of a real one: it answers `ReplicaStream` with
/// UNIMPLEMENTED (as a node that does not know the call does), as it does `SlotDigests`, and
/// passes the unary calls on.
#[derive(Clone)]
struct OlderPeer {
    real: InternalClient<Channel>,
    stream_attempts: Arc<AtomicUsize>,
    unary_calls: Arc<AtomicUsize>,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Internal for OlderPeer {
    async fn replicate(
        &self,
        request: Request<v1::ReplicateRequest>,
    ) -> Result<Response<v1::ReplicateResponse>, Status> {
        self.unary_calls.fetch_add(1, Ordering::Relaxed);
        self.real.clone().replicate(request.into_inner()).await
    }

    async fn read_versions(
        &self,
        request: Request<v1::ReadVersionsRequest>,
    ) -> Result<Response<v1::ReadVersionsResponse>, Status> {
        self.unary_calls.fetch_add(1, Ordering::Relaxed);
        self.real.clone().read_versions(request.into_inner()).await
    }

    type StreamEntriesStream = Boxed<v1::EntryBatch>;

    async fn stream_entries(
        &self,
        _: Request<v1::StreamEntriesRequest>,
    ) -> Result<Response<Self::StreamEntriesStream>, Status> {
        Err(Status::unimplemented("not passed on"))
    }

    async fn clock(
        &self,
        request: Request<v1::ClockRequest>,
    ) -> Result<Response<v1::ClockResponse>, Status> {
        self.real.clone().clock(request.into_inner()).await
    }

    async fn anti_entropy(
        &self,
        request: Request<v1::AntiEntropyRequest>,
    ) -> Result<Response<v1::AntiEntropyResponse>, Status> {
        self.real.clone().anti_entropy(request.into_inner()).await
    }

    async fn flush_through(
        &self,
        request: Request<v1::FlushThroughRequest>,
    ) -> Result<Response<v1::FlushThroughResponse>, Status> {
        self.real.clone().flush_through(request.into_inner()).await
    }

    async fn slot_digests(
        &self,
        _: Request<v1::SlotDigestsRequest>,
    ) -> Result<Response<v1::SlotDigestsResponse>, Status> {
        Err(Status::unimplemented(
            "Operation is not implemented or not supported",
        ))
    }

    type ReplicaStreamStream = Boxed<v1::ReplicaAnswers>;

    async fn replica_stream(
        &self,
        _: Request<Streaming<v1::ReplicaRequests>>,
    ) -> Result<Response<Self::ReplicaStreamStream>, Status> {
        self.stream_attempts.fetch_add(1, Ordering::Relaxed);
        Err(Status::unimplemented(
            "Operation is not implemented or not supported",
        ))
    }
}

/// Serves an [`OlderPeer`] in front of `real` on a free loopback port.
async fn older_peer(real: &TestNode) -> (SocketAddr, OlderPeer) {
    let peer = OlderPeer {
        real: real.raw_internal().await,
        stream_attempts: Arc::default(),
        unary_calls: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tonic::transport::Server::builder()
        .add_service(InternalServer::new(peer.clone()))
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    (addr, peer)
}

#[tokio::test]
async fn a_peer_that_answers_unimplemented_gets_unary_calls() {
    let cluster = TestCluster::start_converged(3, DEADLINE, keep_suspects).await;
    let n1 = &cluster.nodes[0];
    // n1 reaches n2 and n3 only through older peers in front of them.
    let mut route: HashMap<String, SocketAddr> = HashMap::new();
    let mut olders = Vec::new();
    for real in &cluster.nodes[1..] {
        let (addr, older) = older_peer(real).await;
        route.insert(
            real.node
                .view()
                .topology
                .member(&real.node.config().node_id)
                .unwrap()
                .cluster_addr
                .clone(),
            addr,
        );
        olders.push(older);
    }
    n1.node
        .peers()
        .set_connector(PeerConnector::new(move |uri: Uri| {
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let target = route.get(&authority).copied();
            Box::pin(async move {
                let target = target.ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no route to {authority}"),
                    )
                })?;
                let stream = tokio::net::TcpStream::connect(target).await?;
                stream.set_nodelay(true)?;
                Ok(Box::new(stream) as Box<dyn PeerIo>)
            })
        }));

    let mut client = n1.raw_cache().await;
    write_and_read(&mut client, "q", 20, QUORUM).await;
    write_and_read(&mut client, "a", 20, ALL).await;

    assert_eq!(
        n1.node.replicator().replica_streams(),
        0,
        "no stream is kept"
    );
    for (older, real) in olders.iter().zip(&cluster.nodes[1..]) {
        let id = &real.node.config().node_id;
        assert_eq!(
            older.stream_attempts.load(Ordering::Relaxed),
            1,
            "{id}: one attempt, then unary calls for a while"
        );
        assert!(
            older.unary_calls.load(Ordering::Relaxed) >= 20,
            "{id}: the writes and reads went as unary calls"
        );
        for i in 0..20 {
            assert_eq!(
                value_on(real, &format!("a{i}")).as_deref(),
                Some(format!("v{i}").as_bytes()),
                "{id} got every ALL write"
            );
        }
    }
}

#[tokio::test]
async fn with_replica_streams_off_every_batch_is_a_unary_call() {
    let cluster = TestCluster::start_converged(3, DEADLINE, |_, config| {
        keep_suspects(0, config);
        config.replication.replica_stream_in_flight = 0;
    })
    .await;
    let n1 = &cluster.nodes[0];
    let mut client = n1.raw_cache().await;
    write_and_read(&mut client, "q", 20, QUORUM).await;
    write_and_read(&mut client, "a", 20, ALL).await;
    assert_eq!(n1.node.replicator().replica_streams(), 0);
    for node in &cluster.nodes {
        assert_eq!(metric(node, SERVED).await, 0.0);
        assert_eq!(metric(node, STREAMS).await, 0.0);
    }
}
