//! TLS and credentials against fake nodes: in-process gRPC servers on 127.0.0.1 with TLS
//! certificates made here (rcgen: a CA, a node certificate for `localhost` and `127.0.0.1`, a
//! client certificate), that check the `authorization` header of every call in an interceptor
//! and serve `Cluster` (topology, node info, watch) and `Cache` (get, set, and the pipelined
//! stream). They count the calls they see, so tests can tell that a refused request went nowhere
//! else.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use base64::Engine as _;
use bytes::Bytes;
use common::fake_cache::{FakeCache, Reply, Served};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use ringcache::{Client, ClientBuilder, Connector, Error, NodeStream, TlsOptions};
use ringcache_proto::{
    TOPOLOGY_DIGEST_METADATA,
    topology::{Member, Topology},
    v1::{
        self as pb,
        cache_server::CacheServer,
        cluster_server::{Cluster, ClusterServer},
        pipeline_request::Op,
        pipeline_response::Result as Answer,
    },
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{
    Code, Request, Response, Status,
    codegen::BoxStream,
    metadata::{MetadataMap, MetadataValue},
    transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming},
};

// ---- certificates -------------------------------------------------------------------------------

/// A CA, a node certificate it signed (SANs `localhost` and `127.0.0.1`) and a client
/// certificate it signed, all PEM.
struct Pki {
    ca: String,
    node_cert: String,
    node_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ringcache test ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let node_key = KeyPair::generate().unwrap();
    let mut node_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    node_params
        .distinguished_name
        .push(DnType::CommonName, "ringcached");
    let node_cert = node_params.signed_by(&node_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "ringcache client");
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    Pki {
        ca: ca.pem(),
        node_cert: node_cert.pem(),
        node_key: node_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringcache-security-{}-{name}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn path_str(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

// ---- the fake node ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Read,
    Write,
}

/// The users every fake node knows: name, secret, role.
const USERS: &[(&str, &str, Role)] = &[
    ("app", "open sesame", Role::Write),
    ("reader", "look only", Role::Read),
];

/// One fake node's state.
#[derive(Default)]
struct Node {
    /// Calls to `Cache` (a unary call, or the opening of a pipelined stream), before the
    /// credentials are checked.
    cache_calls: AtomicUsize,
    /// Calls to `Cluster`, before the credentials are checked.
    cluster_calls: AtomicUsize,
    /// Requests answered on the pipelined stream, and as unary calls.
    pipelined: AtomicUsize,
    unary: AtomicUsize,
    /// Refuse every credential from now on (a locked-out or revoked user).
    refuse_all: AtomicBool,
    store: Mutex<HashMap<Bytes, Bytes>>,
    topology: Mutex<pb::Topology>,
}

impl Node {
    /// Checks the `authorization` header: `Basic base64(user:secret)` of a known user.
    fn authenticate(&self, metadata: &MetadataMap) -> Result<Role, Status> {
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated("credentials required"));
        };
        let refused = || Status::unauthenticated("bad credentials");
        let encoded = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Basic "))
            .ok_or_else(refused)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| refused())?;
        let decoded = String::from_utf8(decoded).map_err(|_| refused())?;
        let (user, secret) = decoded.split_once(':').ok_or_else(refused)?;
        if self.refuse_all.load(Ordering::SeqCst) {
            return Err(Status::unauthenticated("too many failed attempts"));
        }
        USERS
            .iter()
            .find(|(u, s, _)| *u == user && *s == secret)
            .map(|(_, _, role)| *role)
            .ok_or_else(refused)
    }

    fn digest(&self) -> u64 {
        self.topology.lock().unwrap().digest
    }

    fn answer<T>(&self, message: T) -> Result<Response<T>, Status> {
        let mut response = Response::new(message);
        let digest = MetadataValue::try_from(self.digest().to_string()).unwrap();
        response
            .metadata_mut()
            .insert(TOPOLOGY_DIGEST_METADATA, digest);
        Ok(response)
    }

    fn get(&self, key: &Bytes) -> pb::GetResponse {
        match self.store.lock().unwrap().get(key) {
            Some(value) => pb::GetResponse {
                found: true,
                value: value.clone(),
                version: 1,
                ttl_ms: None,
                hot: false,
                tracked: false,
            },
            None => pb::GetResponse::default(),
        }
    }

    fn set(&self, role: Role, request: pb::SetRequest) -> Result<pb::SetResponse, Status> {
        if role < Role::Write {
            return Err(Status::permission_denied("role read cannot write"));
        }
        self.store
            .lock()
            .unwrap()
            .insert(request.key, request.value);
        Ok(pb::SetResponse {
            stored: true,
            version: 2,
            previous: None,
        })
    }
}

fn role_of<T>(request: &Request<T>) -> Role {
    *request
        .extensions()
        .get::<Role>()
        .expect("the interceptor sets the role")
}

#[derive(Clone)]
struct Svc(Arc<Node>);

#[tonic::async_trait]
impl FakeCache for Svc {
    async fn pipeline(
        &self,
        request: Request<tonic::Streaming<pb::PipelineRequestBatch>>,
    ) -> Reply<BoxStream<pb::PipelineResponseBatch>> {
        let role = role_of(&request);
        let mut inbound = request.into_inner();
        let node = Arc::clone(&self.0);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(batch)) = inbound.next().await {
                let responses = batch
                    .requests
                    .into_iter()
                    .map(|request| {
                        node.pipelined.fetch_add(1, Ordering::SeqCst);
                        let result = match request.op {
                            Some(Op::Get(get)) => Answer::Get(node.get(&get.key)),
                            Some(Op::Set(set)) => match node.set(role, set) {
                                Ok(response) => Answer::Set(response),
                                Err(status) => Answer::Error(pb::PipelineError {
                                    code: status.code() as i32,
                                    message: status.message().to_owned(),
                                    current_version: None,
                                }),
                            },
                            _ => Answer::Error(pb::PipelineError {
                                code: Code::Unimplemented as i32,
                                message: "not on this fake node".to_owned(),
                                current_version: None,
                            }),
                        };
                        pb::PipelineResponse {
                            tag: request.tag,
                            result: Some(result),
                        }
                    })
                    .collect();
                let batch = pb::PipelineResponseBatch {
                    responses,
                    topology_digest: node.digest(),
                };
                if tx.send(Ok(batch)).await.is_err() {
                    break;
                }
            }
        });
        self.0
            .answer(Box::pin(ReceiverStream::new(rx)) as BoxStream<_>)
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        self.0.unary.fetch_add(1, Ordering::SeqCst);
        let response = self.0.get(&request.into_inner().key);
        self.0.answer(response)
    }

    async fn set(&self, request: Request<pb::SetRequest>) -> Reply<pb::SetResponse> {
        self.0.unary.fetch_add(1, Ordering::SeqCst);
        let role = role_of(&request);
        let response = self.0.set(role, request.into_inner())?;
        self.0.answer(response)
    }
}

type TopologyStream = ReceiverStream<Result<pb::Topology, Status>>;

#[tonic::async_trait]
impl Cluster for Svc {
    async fn get_topology(
        &self,
        _: Request<pb::GetTopologyRequest>,
    ) -> Result<Response<pb::Topology>, Status> {
        let topology = self.0.topology.lock().unwrap().clone();
        self.0.answer(topology)
    }

    type WatchTopologyStream = TopologyStream;

    async fn watch_topology(
        &self,
        _: Request<pb::WatchTopologyRequest>,
    ) -> Result<Response<TopologyStream>, Status> {
        // The current topology, then nothing until the client goes away.
        let (tx, rx) = mpsc::channel(1);
        let topology = self.0.topology.lock().unwrap().clone();
        tokio::spawn(async move {
            if tx.send(Ok(topology)).await.is_ok() {
                tx.closed().await;
            }
        });
        self.0.answer(ReceiverStream::new(rx))
    }

    async fn node_info(
        &self,
        _: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        self.0.answer(pb::NodeInfoResponse {
            node_id: "fake".to_owned(),
            version: "0.0.0".to_owned(),
            ready: true,
            ..Default::default()
        })
    }
}

/// How a fake node serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Plain text (no TLS).
    Plain,
    /// TLS with the node certificate.
    Tls,
    /// TLS, and a client certificate signed by the CA is required.
    MutualTls,
}

/// Fake nodes that all serve one topology of themselves (R = their number).
struct FakeCluster {
    nodes: Vec<Arc<Node>>,
    addrs: Vec<String>,
}

async fn start(pki: &Pki, mode: Mode, n: usize) -> FakeCluster {
    let incomings: Vec<TcpIncoming> = (0..n)
        .map(|_| TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap())
        .collect();
    let addrs: Vec<String> = incomings
        .iter()
        .map(|incoming| incoming.local_addr().unwrap().to_string())
        .collect();
    let topology = Topology::new(
        addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                Member::for_test(format!("n{i}"))
                    .with_grpc_addr(addr.as_str())
                    .with_gossip_addr("127.0.0.1:1")
            })
            .collect(),
        u32::try_from(n).unwrap(),
        16,
    );
    let wire = pb::Topology::from(&topology);
    let mut nodes = Vec::new();
    for incoming in incomings {
        let node = Arc::new(Node {
            topology: Mutex::new(wire.clone()),
            ..Node::default()
        });
        let mut tls =
            ServerTlsConfig::new().identity(Identity::from_pem(&pki.node_cert, &pki.node_key));
        if mode == Mode::MutualTls {
            tls = tls.client_ca_root(Certificate::from_pem(&pki.ca));
        }
        let cache_node = Arc::clone(&node);
        let cache = CacheServer::with_interceptor(
            Served(Arc::new(Svc(Arc::clone(&node)))),
            move |mut request: Request<()>| {
                cache_node.cache_calls.fetch_add(1, Ordering::SeqCst);
                let role = cache_node.authenticate(request.metadata())?;
                request.extensions_mut().insert(role);
                Ok(request)
            },
        );
        let cluster_node = Arc::clone(&node);
        let cluster =
            ClusterServer::with_interceptor(Svc(Arc::clone(&node)), move |request: Request<()>| {
                cluster_node.cluster_calls.fetch_add(1, Ordering::SeqCst);
                cluster_node.authenticate(request.metadata())?;
                Ok(request)
            });
        let mut server = Server::builder();
        if mode != Mode::Plain {
            server = server.tls_config(tls).unwrap();
        }
        let server = server
            .add_service(cache)
            .add_service(cluster)
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        nodes.push(node);
    }
    FakeCluster { nodes, addrs }
}

impl FakeCluster {
    fn cache_calls(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.cache_calls.load(Ordering::SeqCst))
            .sum()
    }

    fn refuse_all(&self) {
        for node in &self.nodes {
            node.refuse_all.store(true, Ordering::SeqCst);
        }
    }
}

/// A builder for the nodes' seeds with the test CA, verifying the name `localhost`.
fn tls_builder(pki: &Pki, seeds: &[String]) -> ringcache::ClientBuilder {
    Client::builder()
        .seeds(seeds)
        .tls(TlsOptions::new(pki.ca.as_bytes()).server_name("localhost"))
}

// ---- the client ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_tls_client_with_credentials_round_trips_on_the_pipelined_stream() {
    let pki = pki();
    let cluster = start(&pki, Mode::Tls, 1).await;
    let client = tls_builder(&pki, &cluster.addrs)
        .credentials("app", "open sesame")
        .connect()
        .await
        .unwrap();
    client.set("greeting", "hello").await.unwrap();
    assert_eq!(
        client.get("greeting").await.unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(client.get("absent").await.unwrap(), None);
    let node = &cluster.nodes[0];
    assert_eq!(node.pipelined.load(Ordering::SeqCst), 3);
    assert_eq!(node.unary.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_tls_client_with_credentials_round_trips_with_unary_calls() {
    let pki = pki();
    let cluster = start(&pki, Mode::Tls, 1).await;
    // No server name: the node certificate's IP address SAN matches the address dialed.
    let client = Client::builder()
        .seeds(&cluster.addrs)
        .tls(TlsOptions::new(pki.ca.as_bytes()))
        .credentials("app", "open sesame")
        .pipelining(false)
        .connect()
        .await
        .unwrap();
    client.set("greeting", "hello").await.unwrap();
    assert_eq!(
        client.get("greeting").await.unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    let node = &cluster.nodes[0];
    assert_eq!(node.unary.load(Ordering::SeqCst), 2);
    assert_eq!(node.pipelined.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn tls_and_credentials_run_over_the_streams_of_a_custom_connector() {
    let pki = pki();
    let cluster = start(&pki, Mode::Tls, 1).await;
    let dialed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&dialed);
    let connector = Connector::new(move |addr: &str| {
        counter.fetch_add(1, Ordering::SeqCst);
        let addr = addr.to_owned();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as Box<dyn NodeStream>)
        })
    });
    let client = tls_builder(&pki, &cluster.addrs)
        .credentials("app", "open sesame")
        .connector(connector)
        .connect()
        .await
        .unwrap();
    client.set("greeting", "hello").await.unwrap();
    assert_eq!(
        client.get("greeting").await.unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    assert!(dialed.load(Ordering::SeqCst) >= 1, "the connector dialed");
    assert_eq!(cluster.nodes[0].pipelined.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_the_node_requires_one() {
    let pki = pki();
    let cluster = start(&pki, Mode::MutualTls, 1).await;
    let tls = TlsOptions::new(pki.ca.as_bytes())
        .server_name("localhost")
        .client_identity(pki.client_cert.as_bytes(), pki.client_key.as_bytes());
    let client = Client::builder()
        .seeds(&cluster.addrs)
        .tls(tls)
        .credentials("app", "open sesame")
        .connect()
        .await
        .unwrap();
    client.set("k", "v").await.unwrap();
    assert_eq!(client.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));

    let message =
        unavailable(tls_builder(&pki, &cluster.addrs).credentials("app", "open sesame")).await;
    assert!(
        message.contains(&cluster.addrs[0])
            && message.contains("the node requires a client certificate"),
        "{message}"
    );
}

/// The message of the `Unavailable` error `builder` fails to connect with.
async fn unavailable(builder: ClientBuilder) -> String {
    let error = builder.connect().await.unwrap_err();
    let Error::Unavailable(message) = error else {
        panic!("expected unavailable, got {error:?}");
    };
    message
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_nodes_ca_fails_to_connect_clearly() {
    let pki = pki();
    let other = self::pki();
    let cluster = start(&pki, Mode::Tls, 1).await;
    let message =
        unavailable(tls_builder(&other, &cluster.addrs).credentials("app", "open sesame")).await;
    assert!(
        message.contains(&cluster.addrs[0])
            && message.contains("invalid peer certificate")
            && message.contains("the node's certificate is not trusted"),
        "{message}"
    );
    assert_eq!(cluster.cache_calls(), 0);
    assert_eq!(cluster.nodes[0].cluster_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_whose_server_name_is_not_in_the_certificate_fails_to_connect_clearly() {
    let pki = pki();
    let cluster = start(&pki, Mode::Tls, 1).await;
    let message = unavailable(
        Client::builder()
            .seeds(&cluster.addrs)
            .tls(TlsOptions::new(pki.ca.as_bytes()).server_name("cache.example")),
    )
    .await;
    assert!(message.contains("invalid peer certificate"), "{message}");
}

#[tokio::test]
async fn a_plain_text_client_against_a_tls_node_fails_clearly() {
    let pki = pki();
    let cluster = start(&pki, Mode::Tls, 1).await;
    let message = unavailable(
        Client::builder()
            .seeds(&cluster.addrs)
            .credentials("app", "open sesame"),
    )
    .await;
    assert!(
        message.contains(&cluster.addrs[0]) && message.contains("the node may require tls"),
        "{message}"
    );
    assert_eq!(cluster.nodes[0].cluster_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_tls_client_against_a_plain_text_node_fails_clearly() {
    let pki = pki();
    let cluster = start(&pki, Mode::Plain, 1).await;
    let message =
        unavailable(tls_builder(&pki, &cluster.addrs).credentials("app", "open sesame")).await;
    assert!(
        message.contains(&cluster.addrs[0])
            && message.contains("the node does not seem to speak tls"),
        "{message}"
    );
    assert_eq!(cluster.nodes[0].cluster_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_unauthenticated_and_no_other_seed_is_tried() {
    let pki = pki();
    let cluster = start(&pki, Mode::Tls, 2).await;
    for builder in [
        tls_builder(&pki, &cluster.addrs).credentials("app", "wrong"),
        tls_builder(&pki, &cluster.addrs).credentials("nobody", "open sesame"),
        tls_builder(&pki, &cluster.addrs),
    ] {
        let error = builder.pool_size(1).connect().await.unwrap_err();
        assert!(matches!(&error, Error::Unauthenticated { .. }), "{error:?}");
        assert!(!error.is_retryable());
    }
    // The first seed saw one probe per attempt; the second seed was never asked.
    assert_eq!(cluster.nodes[0].cluster_calls.load(Ordering::SeqCst), 3);
    assert_eq!(cluster.nodes[1].cluster_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_refused_request_is_not_sent_to_another_replica() {
    for pipelining in [true, false] {
        let pki = pki();
        // Two nodes, R = 2: every key has a second replica to fail over to.
        let cluster = start(&pki, Mode::Tls, 2).await;
        let client = tls_builder(&pki, &cluster.addrs)
            .credentials("app", "open sesame")
            .pipelining(pipelining)
            .connect()
            .await
            .unwrap();
        assert_eq!(client.topology().members().len(), 2);
        cluster.refuse_all();
        for read in [true, false] {
            let before = cluster.cache_calls();
            let error = if read {
                client.get("k").await.unwrap_err()
            } else {
                client.set("k", "v").await.unwrap_err()
            };
            assert!(
                matches!(&error, Error::Unauthenticated { message } if message == "too many failed attempts"),
                "pipelining {pipelining}, read {read}: {error:?}"
            );
            assert_eq!(
                cluster.cache_calls() - before,
                1,
                "pipelining {pipelining}, read {read}: one call, to one node"
            );
        }
    }
}

#[tokio::test]
async fn a_role_too_low_is_permission_denied_on_both_paths() {
    let pki = pki();
    let cluster = start(&pki, Mode::Tls, 1).await;
    for pipelining in [true, false] {
        let client = tls_builder(&pki, &cluster.addrs)
            .credentials("reader", "look only")
            .pipelining(pipelining)
            .connect()
            .await
            .unwrap();
        assert_eq!(client.get("k").await.unwrap(), None);
        let error = client.set("k", "v").await.unwrap_err();
        assert!(
            matches!(&error, Error::PermissionDenied { message } if message == "role read cannot write"),
            "pipelining {pipelining}: {error:?}"
        );
        assert_eq!(
            error.to_string(),
            "permission denied: role read cannot write"
        );
    }
}

#[tokio::test]
async fn bad_tls_files_or_names_fail_before_dialing_and_are_named() {
    let scratch = Scratch::new("bad-ca");
    let path = scratch.file("ca.pem", "this is not a certificate\n");
    let error = TlsOptions::from_ca_file(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "invalid argument: tls ca file {:?}: no certificate in it (expected a pem \"BEGIN CERTIFICATE\" section)",
            path_str(&path)
        )
    );
    let key = scratch.file("client.key", "no key here\n");
    let cert = scratch.file("client.pem", &pki().client_cert);
    let error = TlsOptions::new("ca")
        .client_identity_files(&cert, &key)
        .unwrap_err();
    assert!(
        error.to_string().contains(&format!(
            "tls client key file {:?}: no private key",
            path_str(&key)
        )),
        "{error}"
    );
    // A key of another certificate, and a server name that is not a name: at connect, before
    // any node is dialed.
    let pki = pki();
    let cluster = start(&pki, Mode::MutualTls, 1).await;
    let stranger = scratch.file("stranger.key", &self::pki().client_key);
    let tls = TlsOptions::new(pki.ca.as_bytes())
        .client_identity_files(&cert, &stranger)
        .unwrap();
    let error = Client::builder()
        .seeds(&cluster.addrs)
        .tls(tls)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "invalid argument: tls client certificate file {:?} and tls client key file {:?} do not match (the key is not the certificate's)",
            path_str(&cert),
            path_str(&stranger)
        )
    );
    let tls = TlsOptions::new(pki.ca.as_bytes()).server_name("not a name!");
    let error = Client::builder()
        .seeds(&cluster.addrs)
        .tls(tls)
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidArgument(m) if m.contains("server name \"not a name!\"")),
        "{error:?}"
    );
    assert_eq!(cluster.nodes[0].cluster_calls.load(Ordering::SeqCst), 0);
}

// ---- ringctl ------------------------------------------------------------------------------------

async fn ringctl(args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = ringcache::ctl::run(
        args.iter().map(|s| (*s).to_owned()).collect(),
        &mut std::io::empty(),
        &mut out,
        &mut err,
    )
    .await;
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[tokio::test]
async fn ringctl_talks_tls_with_credentials_to_every_node() {
    let pki = pki();
    let cluster = start(&pki, Mode::Tls, 2).await;
    let scratch = Scratch::new("ringctl");
    let ca = path_str(&scratch.file("ca.pem", &pki.ca));
    let secret = path_str(&scratch.file("secret", "open sesame\n"));
    let common = [
        "--cluster",
        cluster.addrs[0].as_str(),
        "--user",
        "app",
        "--password-file",
        secret.as_str(),
        "--tls-ca",
        ca.as_str(),
        "--tls-server-name",
        "localhost",
    ];
    let with = |more: &[&'static str]| -> Vec<&str> {
        common.iter().copied().chain(more.iter().copied()).collect()
    };

    let (code, _, err) = ringctl(&with(&["set", "greeting", "hello"])).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ringctl(&with(&["get", "greeting"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello");

    // `status` asks every member directly, over TLS with the credentials.
    let (code, out, err) = ringctl(&with(&["status"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("all 2 reachable members"), "{out}");
    for node in &cluster.nodes {
        assert!(node.cluster_calls.load(Ordering::SeqCst) >= 2);
    }
}

#[tokio::test]
async fn ringctl_without_a_secret_or_with_a_wrong_one_fails_in_one_line() {
    let pki = pki();
    let cluster = start(&pki, Mode::Tls, 1).await;
    let scratch = Scratch::new("ringctl-fail");
    let ca = path_str(&scratch.file("ca.pem", &pki.ca));
    let addr = cluster.addrs[0].as_str();
    let tls = ["--tls-ca", ca.as_str(), "--tls-server-name", "localhost"];

    // No password file: a usage error before anything is dialed.
    let args: Vec<&str> = ["--cluster", addr, "--user", "app"]
        .into_iter()
        .chain(tls)
        .chain(["get", "k"])
        .collect();
    let (code, out, err) = ringctl(&args).await;
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ringctl: --user \"app\" needs a secret"),
        "{err}"
    );

    // A password file that is not there.
    let args: Vec<&str> = [
        "--cluster",
        addr,
        "--user",
        "app",
        "--password-file",
        "/nonexistent/secret",
    ]
    .into_iter()
    .chain(tls)
    .chain(["get", "k"])
    .collect();
    let (code, _, err) = ringctl(&args).await;
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err,
        "ringctl: cannot read --password-file \"/nonexistent/secret\": no such file or directory\n"
    );
    assert_eq!(cluster.nodes[0].cluster_calls.load(Ordering::SeqCst), 0);

    // A wrong secret: the node's refusal, and what to check, in one line.
    let wrong = path_str(&scratch.file("wrong", "guess\n"));
    for command in [&["get", "k"][..], &["status"]] {
        let args: Vec<&str> = [
            "--cluster",
            addr,
            "--user",
            "app",
            "--password-file",
            wrong.as_str(),
        ]
        .into_iter()
        .chain(tls)
        .chain(command.iter().copied())
        .collect();
        let (code, _, err) = ringctl(&args).await;
        assert_eq!(code, 1, "{command:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{command:?}: {err}");
        assert!(
            err.contains("refused the credentials of user \"app\" (bad credentials)"),
            "{command:?}: {err}"
        );
    }

    // No --tls-ca against a TLS node: the advice names the flag.
    let (code, _, err) = ringctl(&["--cluster", addr, "status"]).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("the node may require tls: give --tls-ca"),
        "{err}"
    );

    // A reader may read but not write.
    let reader = path_str(&scratch.file("reader", "look only"));
    let args: Vec<&str> = [
        "--cluster",
        addr,
        "--user",
        "reader",
        "--password-file",
        reader.as_str(),
    ]
    .into_iter()
    .chain(tls)
    .chain(["set", "k", "v"])
    .collect();
    let (code, _, err) = ringctl(&args).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        "ringctl: permission denied (role read cannot write): user \"reader\" lacks the role this command needs\n"
    );
}
