//! Topology-aware routing against a cluster of fake nodes: three in-process gRPC servers on
//! 127.0.0.1 that serve `Cache` and `Cluster` with a scripted topology, tag every answer with that
//! topology's digest, and record which keys reach them. Nothing here waits on a fixed sleep: every
//! background effect is awaited by a bounded polling loop under `tokio::time::timeout`.

mod common;

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use common::fake_cache::{FakeCache, Reply, cache_server};
use ringcache::{Client, Connector, Error, NodeState, NodeStream};
use ringcache_proto::{
    TOPOLOGY_DIGEST_METADATA,
    placement::Ring,
    topology::{Member, Topology},
    v1::{
        self as pb,
        cluster_server::{Cluster, ClusterServer},
    },
};
use ringcache_test_support::closed_addr;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Response, Status,
    metadata::MetadataValue,
    transport::{Server, server::TcpIncoming},
};

/// Bound on every wait for a background effect (a refresh, the watch reconnecting).
const PATIENCE: Duration = Duration::from_secs(10);

/// One fake node.
struct FakeNode {
    id: String,
    addr: String,
    /// Every key a `Cache` request carried, with the RPC's name.
    received: Mutex<Vec<(&'static str, String)>>,
    /// `MGet`, `MSet` and `MDelete` requests.
    batches: AtomicUsize,
    /// The number of keys of each of those requests.
    batch_sizes: Mutex<Vec<usize>>,
    get_topology_calls: AtomicUsize,
    /// Open `WatchTopology` streams.
    watchers: Arc<AtomicUsize>,
    /// What `GetTopology` answers; its digest tags every answer.
    served: Mutex<pb::Topology>,
    /// What `WatchTopology` streams.
    pushed: watch::Sender<pb::Topology>,
    /// Requests for the key `hang` never get an answer.
    hang: AtomicBool,
    stop: watch::Sender<bool>,
    server: Mutex<Option<JoinHandle<()>>>,
}

fn key_str(key: &Bytes) -> String {
    String::from_utf8(key.to_vec()).unwrap()
}

/// The number at the end of a key (`key-17` → 17): the version the fake gives it.
fn key_number(key: &str) -> u64 {
    let digits: String = key.chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(1)
}

impl FakeNode {
    fn digest(&self) -> u64 {
        self.served.lock().unwrap().digest
    }

    fn tag(&self, metadata: &mut tonic::metadata::MetadataMap) {
        let digest = MetadataValue::try_from(self.digest().to_string()).unwrap();
        metadata.insert(TOPOLOGY_DIGEST_METADATA, digest);
    }

    fn answer<T>(&self, message: T) -> Result<Response<T>, Status> {
        let mut response = Response::new(message);
        self.tag(response.metadata_mut());
        Ok(response)
    }

    fn refuse<T>(&self, mut status: Status) -> Result<Response<T>, Status> {
        self.tag(status.metadata_mut());
        Err(status)
    }

    fn record(&self, rpc: &'static str, key: &Bytes) {
        self.received.lock().unwrap().push((rpc, key_str(key)));
    }

    /// The keys received by `rpc`.
    fn keys(&self, rpc: &str) -> BTreeSet<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| *r == rpc)
            .map(|(_, k)| k.clone())
            .collect()
    }

    fn value(&self, key: &str) -> Bytes {
        Bytes::from(format!("{key}@{}", self.id))
    }

    async fn maybe_hang(&self, key: &Bytes) {
        if key_str(key) == "hang" && self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    /// Serves both a new `GetTopology` answer and a new watch message.
    fn publish(&self, topology: &Topology) {
        let wire = pb::Topology::from(topology);
        *self.served.lock().unwrap() = wire.clone();
        self.pushed.send_replace(wire);
    }

    /// Stops serving: the listener closes and open connections are told to go away.
    async fn kill(&self) {
        self.stop.send_replace(true);
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            tokio::time::timeout(PATIENCE, server)
                .await
                .expect("the fake node stops")
                .unwrap();
        }
    }
}

#[derive(Clone)]
struct Svc(Arc<FakeNode>);

// An older node: no pipelined stream (UNIMPLEMENTED), so the client falls back to unary calls
// (which these tests inspect: deadlines, metadata, failover).
#[tonic::async_trait]
impl FakeCache for FakeNode {
    async fn get(&self, request: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        let node = self;
        let key = request.into_inner().key;
        node.record("get", &key);
        node.maybe_hang(&key).await;
        if key_str(&key) == "bad" {
            return node.refuse(Status::invalid_argument("bad key"));
        }
        node.answer(pb::GetResponse {
            found: true,
            value: node.value(&key_str(&key)),
            version: 1,
            ttl_ms: None,
            hot: false,
            tracked: false,
        })
    }

    async fn set(&self, request: Request<pb::SetRequest>) -> Reply<pb::SetResponse> {
        let node = self;
        let key = request.into_inner().key;
        node.record("set", &key);
        node.maybe_hang(&key).await;
        node.answer(pb::SetResponse {
            stored: true,
            version: key_number(&key_str(&key)),
            previous: None,
        })
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        self.record("delete", &request.into_inner().key);
        self.answer(pb::DeleteResponse {
            deleted: true,
            ..Default::default()
        })
    }

    async fn m_get(&self, request: Request<pb::MGetRequest>) -> Reply<pb::MGetResponse> {
        let node = self;
        node.batches.fetch_add(1, Ordering::SeqCst);
        let keys = request.into_inner().keys;
        node.batch_sizes.lock().unwrap().push(keys.len());
        let results = keys
            .iter()
            .map(|key| {
                node.record("mget", key);
                pb::GetResponse {
                    found: true,
                    value: node.value(&key_str(key)),
                    version: 1,
                    ttl_ms: None,
                    hot: false,
                    tracked: false,
                }
            })
            .collect();
        node.answer(pb::MGetResponse { results })
    }

    async fn m_set(&self, request: Request<pb::MSetRequest>) -> Reply<pb::MSetResponse> {
        let node = self;
        node.batches.fetch_add(1, Ordering::SeqCst);
        let entries = request.into_inner().entries;
        node.batch_sizes.lock().unwrap().push(entries.len());
        let versions = entries
            .iter()
            .map(|entry| {
                node.record("mset", &entry.key);
                key_number(&key_str(&entry.key))
            })
            .collect();
        node.answer(pb::MSetResponse { versions })
    }

    async fn m_delete(&self, request: Request<pb::MDeleteRequest>) -> Reply<pb::MDeleteResponse> {
        let node = self;
        node.batches.fetch_add(1, Ordering::SeqCst);
        let keys = request.into_inner().keys;
        node.batch_sizes.lock().unwrap().push(keys.len());
        for key in &keys {
            node.record("mdelete", key);
        }
        node.answer(pb::MDeleteResponse {
            deleted: keys.len() as u64,
        })
    }

    async fn incr(&self, request: Request<pb::IncrRequest>) -> Reply<pb::IncrResponse> {
        let request = request.into_inner();
        self.record("incr", &request.key);
        self.answer(pb::IncrResponse {
            value: request.delta,
            version: 1,
        })
    }

    async fn compare_and_set(
        &self,
        request: Request<pb::CompareAndSetRequest>,
    ) -> Reply<pb::CompareAndSetResponse> {
        self.record("cas", &request.into_inner().key);
        self.answer(pb::CompareAndSetResponse { version: 2 })
    }

    async fn expire(&self, request: Request<pb::ExpireRequest>) -> Reply<pb::ExpireResponse> {
        self.record("expire", &request.into_inner().key);
        self.answer(pb::ExpireResponse {
            updated: true,
            ..Default::default()
        })
    }

    async fn persist(&self, request: Request<pb::PersistRequest>) -> Reply<pb::PersistResponse> {
        self.record("persist", &request.into_inner().key);
        self.answer(pb::PersistResponse { updated: true })
    }

    async fn ttl(&self, request: Request<pb::TtlRequest>) -> Reply<pb::TtlResponse> {
        self.record("ttl", &request.into_inner().key);
        self.answer(pb::TtlResponse {
            found: true,
            ttl_ms: None,
            ..Default::default()
        })
    }
}

type TopologyStream = ReceiverStream<Result<pb::Topology, Status>>;

#[tonic::async_trait]
impl Cluster for Svc {
    async fn get_topology(
        &self,
        _: Request<pb::GetTopologyRequest>,
    ) -> Result<Response<pb::Topology>, Status> {
        let node = &self.0;
        node.get_topology_calls.fetch_add(1, Ordering::SeqCst);
        let topology = node.served.lock().unwrap().clone();
        node.answer(topology)
    }

    type WatchTopologyStream = TopologyStream;

    async fn watch_topology(
        &self,
        _: Request<pb::WatchTopologyRequest>,
    ) -> Result<Response<TopologyStream>, Status> {
        let node = &self.0;
        let (tx, rx) = mpsc::channel(4);
        let mut pushed = node.pushed.subscribe();
        let mut stop = node.stop.subscribe();
        let watchers = Arc::clone(&node.watchers);
        watchers.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            loop {
                let current = pushed.borrow_and_update().clone();
                if tx.send(Ok(current)).await.is_err() {
                    break;
                }
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => break,
                    () = tx.closed() => break,
                    changed = pushed.changed() => if changed.is_err() { break },
                }
            }
            watchers.fetch_sub(1, Ordering::SeqCst);
        });
        node.answer(ReceiverStream::new(rx))
    }

    async fn node_info(
        &self,
        _: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        self.0.answer(pb::NodeInfoResponse {
            node_id: self.0.id.clone(),
            ..Default::default()
        })
    }
}

/// Three fake nodes `n1`, `n2`, `n3`, all serving `topology`.
struct FakeCluster {
    nodes: Vec<Arc<FakeNode>>,
    topology: Topology,
}

fn member(id: &str, addr: &str, incarnation: u64, state: NodeState) -> Member {
    Member::for_test(id)
        .with_incarnation(incarnation)
        .with_state(state)
        .with_grpc_addr(addr)
        .with_gossip_addr("127.0.0.1:1")
        .with_http_addr("127.0.0.1:2")
}

impl FakeCluster {
    async fn start() -> Self {
        Self::start_zoned([None; 3], 3).await
    }

    /// Three fake nodes whose members have these zones, at replication factor `replication`.
    async fn start_zoned(zones: [Option<&str>; 3], replication: u32) -> Self {
        let incomings: Vec<TcpIncoming> = (0..3)
            .map(|_| TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap())
            .collect();
        let addrs: Vec<String> = incomings
            .iter()
            .map(|incoming| incoming.local_addr().unwrap().to_string())
            .collect();
        let ids = ["n1", "n2", "n3"];
        let topology = Topology::new(
            ids.iter()
                .zip(&addrs)
                .zip(zones)
                .map(|((id, addr), zone)| member(id, addr, 1, NodeState::Active).with_zone(zone))
                .collect(),
            replication,
            64,
        );
        let wire = pb::Topology::from(&topology);
        let mut nodes = Vec::new();
        for ((id, addr), incoming) in ids.iter().zip(addrs).zip(incomings) {
            let node = Arc::new(FakeNode {
                id: (*id).to_owned(),
                addr,
                received: Mutex::default(),
                batches: AtomicUsize::new(0),
                batch_sizes: Mutex::default(),
                get_topology_calls: AtomicUsize::new(0),
                watchers: Arc::default(),
                served: Mutex::new(wire.clone()),
                pushed: watch::Sender::new(wire.clone()),
                hang: AtomicBool::new(false),
                stop: watch::Sender::new(false),
                server: Mutex::new(None),
            });
            let svc = Svc(Arc::clone(&node));
            let cache = cache_server(Arc::clone(&node));
            let mut stop = node.stop.subscribe();
            let server = tokio::spawn(async move {
                Server::builder()
                    .add_service(cache)
                    .add_service(ClusterServer::new(svc))
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.wait_for(|stopped| *stopped).await;
                    })
                    .await
                    .unwrap();
            });
            *node.server.lock().unwrap() = Some(server);
            nodes.push(node);
        }
        FakeCluster { nodes, topology }
    }

    fn node(&self, id: &str) -> &Arc<FakeNode> {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    async fn connect(&self) -> Client {
        Client::builder()
            .seeds([&self.nodes[0].addr])
            .connect()
            .await
            .unwrap()
    }

    fn get_topology_calls(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.get_topology_calls.load(Ordering::SeqCst))
            .sum()
    }

    /// The same members with incarnation 2: a different digest, the same ring.
    fn bumped(&self) -> Topology {
        Topology::new(
            self.topology
                .members()
                .iter()
                .map(|m| member(&m.node_id, &m.grpc_addr, 2, m.state))
                .collect(),
            self.topology.replication_factor(),
            self.topology.vnodes_per_weight(),
        )
    }

    /// The members with `id` marked dead (out of the ring).
    fn without(&self, id: &str) -> Topology {
        Topology::new(
            self.topology
                .members()
                .iter()
                .map(|m| {
                    let state = if m.node_id == id {
                        NodeState::Dead
                    } else {
                        m.state
                    };
                    member(&m.node_id, &m.grpc_addr, 1, state)
                })
                .collect(),
            self.topology.replication_factor(),
            self.topology.vnodes_per_weight(),
        )
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key-{i}")).collect()
}

fn primary(topology: &Topology, key: &str) -> String {
    Ring::new(topology)
        .primary(key.as_bytes())
        .unwrap()
        .to_owned()
}

/// Polls `condition` every few milliseconds until it holds; fails the test after [`PATIENCE`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    ringcache_test_support::until(what, PATIENCE, async || condition())
        .await
        .unwrap();
}

#[tokio::test]
async fn each_key_goes_to_its_primary() {
    let cluster = FakeCluster::start().await;
    let client = cluster.connect().await;
    assert_eq!(client.topology(), cluster.topology);
    assert_eq!(client.topology_digest(), cluster.topology.digest());

    let keys = keys(60);
    for key in &keys {
        client.set(key.clone(), "v").await.unwrap();
        let value = client.get(key.clone()).await.unwrap().unwrap();
        assert_eq!(
            value,
            Bytes::from(format!("{key}@{}", primary(&cluster.topology, key)))
        );
    }
    for node in &cluster.nodes {
        let owned: BTreeSet<String> = keys
            .iter()
            .filter(|k| primary(&cluster.topology, k) == node.id)
            .cloned()
            .collect();
        assert!(!owned.is_empty(), "60 keys spread over every node");
        assert_eq!(node.keys("set"), owned, "sets received by {}", node.id);
        assert_eq!(node.keys("get"), owned, "gets received by {}", node.id);
    }
}

#[tokio::test]
async fn batches_are_split_by_primary_and_answered_in_request_order() {
    let cluster = FakeCluster::start().await;
    let client = cluster.connect().await;
    // Reversed, so that request order is not the order of any one part.
    let mut keys = keys(100);
    keys.reverse();

    let values = client.mget(keys.clone()).await.unwrap();
    let expected: Vec<Option<Bytes>> = keys
        .iter()
        .map(|k| {
            Some(Bytes::from(format!(
                "{k}@{}",
                primary(&cluster.topology, k)
            )))
        })
        .collect();
    assert_eq!(values, expected);
    for node in &cluster.nodes {
        assert_eq!(
            node.batches.load(Ordering::SeqCst),
            1,
            "one mget to {}",
            node.id
        );
        let owned: BTreeSet<String> = keys
            .iter()
            .filter(|k| primary(&cluster.topology, k) == node.id)
            .cloned()
            .collect();
        assert_eq!(node.keys("mget"), owned, "keys of the mget to {}", node.id);
    }

    let versions = client
        .mset(keys.iter().map(|k| (k.clone(), "v")), None)
        .await
        .unwrap();
    let expected: Vec<u64> = keys.iter().map(|k| key_number(k)).collect();
    assert_eq!(versions, expected);
    assert_eq!(client.mdelete(keys.clone()).await.unwrap(), 100);
    for node in &cluster.nodes {
        assert_eq!(
            node.batches.load(Ordering::SeqCst),
            3,
            "one request per batch to {}",
            node.id
        );
        assert_eq!(node.keys("mset"), node.keys("mget"));
        assert_eq!(node.keys("mdelete"), node.keys("mget"));
    }
}

#[tokio::test]
async fn batches_are_split_to_the_limits_the_nodes_state() {
    let cluster = FakeCluster::start().await;
    let limits = pb::NodeLimits {
        max_batch_keys: 7,
        max_message_bytes: 1 << 20,
    };
    for node in &cluster.nodes {
        node.served.lock().unwrap().sender_limits = Some(limits);
    }
    let client = cluster.connect().await;
    let mut keys = keys(300);
    keys.reverse();
    let ring = Ring::new(&cluster.topology);
    let primary = |key: &str| ring.primary(key.as_bytes()).unwrap().to_owned();

    let values = client.mget(keys.clone()).await.unwrap();
    for (key, value) in keys.iter().zip(&values) {
        let expected = format!("{key}@{}", primary(key));
        assert_eq!(value.as_deref(), Some(expected.as_bytes()), "{key}");
    }
    let versions = client
        .mset(keys.iter().map(|k| (k.clone(), "v")), None)
        .await
        .unwrap();
    assert_eq!(
        versions,
        keys.iter().map(|k| key_number(k)).collect::<Vec<_>>()
    );
    assert_eq!(client.mdelete(keys.clone()).await.unwrap(), 300);

    let mut requests = 0;
    for node in &cluster.nodes {
        let sizes = node.batch_sizes.lock().unwrap().clone();
        assert!(
            sizes.iter().all(|&n| (1..=7).contains(&n)),
            "{}: request sizes {sizes:?}",
            node.id
        );
        let owned = keys.iter().filter(|k| primary(k) == node.id).count();
        assert_eq!(sizes.iter().sum::<usize>(), 3 * owned, "{}", node.id);
        assert_eq!(node.keys("mget").len(), owned);
        requests += sizes.len();
    }
    assert!(requests >= 3 * 300 / 7, "{requests} requests");

    // A node stating nothing (older) is assumed to take 1000 keys.
    let cluster = FakeCluster::start().await;
    let client = cluster.connect().await;
    let keys: Vec<String> = (0..4000).map(|i| format!("many-{i}")).collect();
    assert_eq!(client.mget(keys).await.unwrap().len(), 4000);
    for node in &cluster.nodes {
        let sizes = node.batch_sizes.lock().unwrap().clone();
        assert!(sizes.iter().all(|&n| n <= 1000), "{}: {sizes:?}", node.id);
        assert!(sizes.len() >= 2, "{}: {sizes:?}", node.id);
    }
}

#[tokio::test]
async fn a_down_node_fails_over_to_the_next_replica_and_refreshes() {
    let cluster = FakeCluster::start().await;
    let client = cluster.connect().await;
    let ring = Ring::new(&cluster.topology);
    let keys = keys(60);
    // Open a pool to every node before one goes away.
    client.mget(keys.clone()).await.unwrap();

    let victim = cluster.node("n2");
    victim.kill().await;
    let calls_before = cluster.get_topology_calls();

    let orphans: Vec<&String> = keys
        .iter()
        .filter(|k| ring.primary(k.as_bytes()) == Some("n2"))
        .collect();
    assert!(!orphans.is_empty());
    for key in &orphans {
        let next = ring.replicas(key.as_bytes()).iter().nth(1).unwrap();
        assert_eq!(
            client.get((*key).clone()).await.unwrap(),
            Some(Bytes::from(format!("{key}@{next}"))),
            "a read of {key} is answered by its next replica"
        );
        // The node refuses connections, so a write is certainly not applied there: it fails over.
        client.set((*key).clone(), "v").await.unwrap();
        assert!(cluster.node(next).keys("set").contains(*key));
    }
    let values = client.mget(keys.clone()).await.unwrap();
    assert!(values.iter().all(Option::is_some));
    assert!(
        values.iter().flatten().all(|v| !v.ends_with(b"@n2")),
        "nothing is answered by the dead node"
    );

    eventually("a topology refresh follows the failure", || {
        cluster.get_topology_calls() > calls_before
    })
    .await;
    let refreshes = cluster.get_topology_calls() - calls_before;
    assert!(
        refreshes <= 4,
        "failures trigger coalesced refreshes, not one each: {refreshes}"
    );

    // A client that has not yet seen the node fail: the node's part of a batch fails over key by
    // key to the keys' next replicas.
    let fresh = cluster.connect().await;
    let values = fresh.mget(keys.clone()).await.unwrap();
    for (key, value) in keys.iter().zip(&values) {
        let answered_by = ring
            .replicas(key.as_bytes())
            .iter()
            .find(|id| *id != "n2")
            .unwrap();
        assert_eq!(value, &Some(Bytes::from(format!("{key}@{answered_by}"))));
    }
}

/// With zones the replica after the primary is the next node of another zone: n1 and n2 share
/// zone `a`, so a key of n1 fails over to n3 (zone `b`) where a ring without zones would often
/// pick n2. The client computes that from the topology, as the nodes do.
#[tokio::test]
async fn a_zoned_topology_fails_over_to_the_next_replica_in_another_zone() {
    let cluster = FakeCluster::start_zoned([Some("a"), Some("a"), Some("b")], 2).await;
    let client = cluster.connect().await;
    assert_eq!(
        client.topology(),
        cluster.topology,
        "the zones arrive, digest and all"
    );
    let ring = Ring::new(&cluster.topology);
    let zoneless = Ring::build(
        cluster
            .topology
            .members()
            .iter()
            .map(|m| (m.node_id.as_str(), m.weight)),
        cluster.topology.vnodes_per_weight(),
        2,
    );
    let keys = keys(200);
    client.mget(keys.clone()).await.unwrap();
    cluster.node("n1").kill().await;
    let orphans: Vec<&String> = keys
        .iter()
        .filter(|k| ring.primary(k.as_bytes()) == Some("n1"))
        .collect();
    assert!(!orphans.is_empty());
    let mut differs = 0;
    for key in &orphans {
        let next: Vec<&str> = ring.replicas(key.as_bytes()).iter().collect();
        assert_eq!(next, ["n1", "n3"], "{key}: the other zone's node is next");
        if zoneless.replicas(key.as_bytes()).iter().nth(1) == Some("n2") {
            differs += 1;
        }
        assert_eq!(
            client.get((*key).clone()).await.unwrap(),
            Some(Bytes::from(format!("{key}@n3"))),
            "a read of {key} is answered by its replica in the other zone"
        );
    }
    assert!(
        differs > 0,
        "some keys would fail over elsewhere without zones"
    );
}

#[tokio::test]
async fn every_replica_down_is_unavailable_naming_the_nodes() {
    let cluster = FakeCluster::start().await;
    let client = cluster.connect().await;
    client.mget(keys(30)).await.unwrap();
    for node in &cluster.nodes {
        node.kill().await;
    }
    let error = client.get("key-1").await.unwrap_err();
    let Error::Unavailable(message) = &error else {
        panic!("expected unavailable, got {error:?}");
    };
    for node in &cluster.nodes {
        assert!(
            message.contains(&format!("{} at {}", node.id, node.addr)),
            "{message}"
        );
    }
    assert!(matches!(
        client.mget(keys(30)).await,
        Err(Error::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_slow_primary_fails_reads_over_but_not_writes() {
    let cluster = FakeCluster::start().await;
    let client = Client::builder()
        .seeds([&cluster.nodes[0].addr])
        .request_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let ring = Ring::new(&cluster.topology);
    let replicas: Vec<&str> = ring.replicas(b"hang").iter().collect();
    cluster.node(replicas[0]).hang.store(true, Ordering::SeqCst);

    let value = client.get("hang").await.unwrap();
    assert_eq!(value, Some(Bytes::from(format!("hang@{}", replicas[1]))));

    // A write that timed out may have been applied: it is not sent anywhere else.
    let error = client.set("hang", "v").await.unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    for node in &cluster.nodes {
        let expected = usize::from(node.id == replicas[0]);
        assert_eq!(node.keys("set").len(), expected, "sets on {}", node.id);
    }
}

#[tokio::test]
async fn a_different_digest_in_answers_triggers_one_coalesced_refresh() {
    let cluster = FakeCluster::start().await;
    let client = cluster.connect().await;
    let newer = cluster.bumped();
    let calls_before = cluster.get_topology_calls();
    // The nodes now hold `newer` but do not push it: only the answers' digests tell.
    for node in &cluster.nodes {
        *node.served.lock().unwrap() = pb::Topology::from(&newer);
    }

    let burst = |client: Client| async move {
        let mut requests = tokio::task::JoinSet::new();
        for key in keys(20) {
            let client = client.clone();
            requests.spawn(async move { client.get(key).await });
        }
        while let Some(result) = requests.join_next().await {
            assert!(result.unwrap().unwrap().is_some());
        }
    };
    burst(client.clone()).await;
    eventually("the client takes in the newer topology", || {
        client.topology_digest() == newer.digest()
    })
    .await;
    assert_eq!(client.topology(), newer);
    // Once in agreement, answers trigger nothing more.
    burst(client.clone()).await;
    let refreshes = cluster.get_topology_calls() - calls_before;
    assert!(
        (1..=3).contains(&refreshes),
        "a burst of 20 answers caused {refreshes} refreshes"
    );
}

#[tokio::test]
async fn an_error_answer_carries_the_digest_too() {
    let cluster = FakeCluster::start().await;
    let client = cluster.connect().await;
    let newer = cluster.bumped();
    for node in &cluster.nodes {
        *node.served.lock().unwrap() = pb::Topology::from(&newer);
    }
    let error = client.get("bad").await.unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    let tried: usize = cluster.nodes.iter().map(|n| n.keys("get").len()).sum();
    assert_eq!(tried, 1, "an invalid argument is not retried elsewhere");
    eventually("the error's digest triggers a refresh", || {
        client.topology_digest() == newer.digest()
    })
    .await;
}

#[tokio::test]
async fn a_topology_pushed_on_the_watch_is_picked_up() {
    let cluster = FakeCluster::start().await;
    let client = cluster.connect().await;
    let calls_before = cluster.get_topology_calls();
    let shrunk = cluster.without("n3");
    for node in &cluster.nodes {
        node.publish(&shrunk);
    }
    eventually("the pushed topology arrives", || {
        client.topology_digest() == shrunk.digest()
    })
    .await;
    assert_eq!(
        cluster.get_topology_calls(),
        calls_before,
        "it came over the watch, not from a fetch"
    );

    let keys = keys(60);
    for key in &keys {
        client.get(key.clone()).await.unwrap();
    }
    assert!(
        cluster.node("n3").keys("get").is_empty(),
        "n3 left the ring"
    );
    for id in ["n1", "n2"] {
        let owned: BTreeSet<String> = keys
            .iter()
            .filter(|k| primary(&shrunk, k) == id)
            .cloned()
            .collect();
        assert_eq!(cluster.node(id).keys("get"), owned);
    }
}

#[tokio::test]
async fn the_watch_moves_to_another_node_when_its_node_goes_down() {
    let cluster = FakeCluster::start().await;
    let client = cluster.connect().await;
    let seed = cluster.node("n1");
    eventually("the client watches its seed", || {
        seed.watchers.load(Ordering::SeqCst) == 1
    })
    .await;
    seed.kill().await;

    let newer = cluster.bumped();
    for id in ["n2", "n3"] {
        cluster.node(id).publish(&newer);
    }
    eventually(
        "the watch reconnects elsewhere and gets the new topology",
        || client.topology_digest() == newer.digest(),
    )
    .await;
}

#[tokio::test]
async fn dropping_the_last_client_ends_the_watch() {
    let cluster = FakeCluster::start().await;
    let client = cluster.connect().await;
    let strict = client.with_consistency(ringcache::Consistency::All);
    let copy = client.clone();
    let seed = cluster.node("n1");
    eventually("the client watches its seed", || {
        seed.watchers.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(client);
    drop(copy);
    assert_eq!(strict.topology_digest(), cluster.topology.digest());
    drop(strict);
    eventually("the watch stream is closed", || {
        seed.watchers.load(Ordering::SeqCst) == 0
    })
    .await;
}

/// A connector over real TCP that logs the address of every connection it dials.
fn logging_connector(log: Arc<Mutex<Vec<String>>>) -> Connector {
    Connector::new(move |addr: &str| {
        log.lock().unwrap().push(addr.to_owned());
        let addr = addr.to_owned();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as Box<dyn NodeStream>)
        })
    })
}

#[tokio::test]
async fn pools_are_opened_lazily_and_kept_across_refreshes() {
    let cluster = FakeCluster::start().await;
    let dialed = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = Client::builder()
        .seeds([&cluster.nodes[0].addr])
        .pool_size(2)
        .connector(logging_connector(Arc::clone(&dialed)))
        .connect()
        .await
        .unwrap();
    let count = |addr: &str| dialed.lock().unwrap().iter().filter(|a| *a == addr).count();
    assert_eq!(
        dialed.lock().unwrap().len(),
        2,
        "only the seed's pool at first (both connections probed)"
    );

    client.mget(keys(60)).await.unwrap();
    for node in &cluster.nodes {
        let dials = count(&node.addr);
        assert!(
            (1..=2).contains(&dials),
            "{} dialed {dials} times: one pool, opened on first use",
            node.id
        );
    }

    let newer = cluster.bumped();
    for node in &cluster.nodes {
        node.publish(&newer);
    }
    eventually("the new topology arrives", || {
        client.topology_digest() == newer.digest()
    })
    .await;
    // Round-robin over each pool: a pool made anew by the refresh would dial again.
    for _ in 0..4 {
        client.mget(keys(60)).await.unwrap();
    }
    for node in &cluster.nodes {
        assert_eq!(
            count(&node.addr),
            2,
            "{}: unchanged addresses keep their pools (two connections each)",
            node.id
        );
    }
}

#[tokio::test]
async fn a_ring_without_members_sends_everything_to_the_seed() {
    let cluster = FakeCluster::start().await;
    let joining = Topology::new(
        cluster
            .topology
            .members()
            .iter()
            .map(|m| member(&m.node_id, &m.grpc_addr, 1, NodeState::Joining))
            .collect(),
        3,
        64,
    );
    for node in &cluster.nodes {
        node.publish(&joining);
    }
    let client = cluster.connect().await;
    assert_eq!(client.topology_digest(), joining.digest());
    let keys = keys(20);
    for key in &keys {
        client.get(key.clone()).await.unwrap();
    }
    client.mget(keys.clone()).await.unwrap();
    let seed = cluster.node("n1");
    assert_eq!(seed.keys("get").len(), keys.len());
    assert_eq!(seed.batches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_invalid_topology_is_a_protocol_error() {
    let cluster = FakeCluster::start().await;
    let seed = cluster.node("n1");
    seed.served.lock().unwrap().digest ^= 1;
    let error = Client::connect([&seed.addr]).await.unwrap_err();
    assert!(
        matches!(&error, Error::Protocol(m) if m.contains(&seed.addr) && m.contains("digest")),
        "{error:?}"
    );
}

#[tokio::test]
async fn all_seeds_down_is_unavailable_naming_every_seed() {
    let closed: Vec<String> = (0..3).map(|_| closed_addr()).collect();
    let error = Client::connect(&closed).await.unwrap_err();
    let Error::Unavailable(message) = &error else {
        panic!("expected unavailable, got {error:?}");
    };
    for addr in &closed {
        assert!(message.contains(addr.as_str()), "{message}");
    }
}

#[tokio::test]
async fn refresh_topology_fetches_at_once() {
    let cluster = FakeCluster::start().await;
    let client = cluster.connect().await;
    let newer = cluster.bumped();
    for node in &cluster.nodes {
        *node.served.lock().unwrap() = pb::Topology::from(&newer);
    }
    client.refresh_topology().await.unwrap();
    assert_eq!(client.topology_digest(), newer.digest());
    assert_eq!(client.topology(), newer);
}
