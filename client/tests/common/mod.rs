//! What the client's test files share (each test file is its own crate; each uses part of
//! this): the one configurable fake `Cache` service ([`fake_cache`]), and a fake node with
//! injected faults (used by `production.rs` and `spans.rs`).
#![allow(dead_code)]

pub(crate) mod fake_cache;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use fake_cache::{FakeCache, Reply, cache_server};
use ringcache::{Client, ClientBuilder, Connector, Error, NodeStream, RetryPolicy};
use ringcache_proto::{
    topology::{Member, Topology},
    v1::{
        self as pb,
        cluster_server::{Cluster, ClusterServer},
    },
};
use tonic::{
    Request, Response, Status,
    transport::{Server, server::TcpIncoming},
};

/// The member's address in the topology; the connector dials the fake for it.
pub(crate) const MEMBER_ADDR: &str = "member-1:7379";

/// The fake node: calls per operation, and the faults to inject.
#[derive(Default)]
pub(crate) struct Fake {
    calls: Mutex<BTreeMap<&'static str, usize>>,
    /// The next this many `Cache` calls answer `UNAVAILABLE` (the node may have run them).
    unavailable: AtomicUsize,
}

impl Fake {
    /// Counts the call; answers `UNAVAILABLE` while faults are left.
    fn enter(&self, op: &'static str) -> Result<(), Status> {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
        let injected = self
            .unavailable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if injected {
            Err(Status::unavailable("injected: not enough replicas"))
        } else {
            Ok(())
        }
    }

    pub(crate) fn calls(&self, op: &str) -> usize {
        self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    pub(crate) fn fail_next(&self, n: usize) {
        self.unavailable.store(n, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Svc(Arc<Fake>);

fn topology() -> Topology {
    Topology::new(
        vec![
            Member::for_test("n1")
                .with_grpc_addr(MEMBER_ADDR)
                .with_gossip_addr("member-1:7380")
                .with_http_addr("member-1:7381"),
        ],
        1,
        16,
    )
}

#[tonic::async_trait]
impl FakeCache for Fake {
    async fn get(&self, r: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        self.enter("get")?;
        if r.into_inner().key == "hang" {
            std::future::pending::<()>().await;
        }
        Ok(Response::new(pb::GetResponse {
            found: true,
            value: Bytes::from("v"),
            version: 1,
            ttl_ms: None,
            hot: false,
            tracked: false,
        }))
    }

    async fn set(&self, _: Request<pb::SetRequest>) -> Reply<pb::SetResponse> {
        self.enter("set")?;
        Ok(Response::new(pb::SetResponse {
            stored: true,
            version: 2,
            previous: None,
        }))
    }

    async fn delete(&self, _: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        self.enter("delete")?;
        Ok(Response::new(pb::DeleteResponse::default()))
    }

    async fn m_get(&self, r: Request<pb::MGetRequest>) -> Reply<pb::MGetResponse> {
        self.enter("mget")?;
        let results = r
            .into_inner()
            .keys
            .iter()
            .map(|_| pb::GetResponse::default())
            .collect();
        Ok(Response::new(pb::MGetResponse { results }))
    }

    async fn m_set(&self, r: Request<pb::MSetRequest>) -> Reply<pb::MSetResponse> {
        self.enter("mset")?;
        let versions = r.into_inner().entries.iter().map(|_| 1).collect();
        Ok(Response::new(pb::MSetResponse { versions }))
    }

    async fn m_delete(&self, r: Request<pb::MDeleteRequest>) -> Reply<pb::MDeleteResponse> {
        self.enter("mdelete")?;
        let deleted = r.into_inner().keys.len() as u64;
        Ok(Response::new(pb::MDeleteResponse { deleted }))
    }

    async fn incr(&self, r: Request<pb::IncrRequest>) -> Reply<pb::IncrResponse> {
        self.enter("incr")?;
        Ok(Response::new(pb::IncrResponse {
            value: r.into_inner().delta,
            version: 3,
        }))
    }

    async fn compare_and_set(
        &self,
        _: Request<pb::CompareAndSetRequest>,
    ) -> Reply<pb::CompareAndSetResponse> {
        self.enter("cas")?;
        Ok(Response::new(pb::CompareAndSetResponse { version: 4 }))
    }

    async fn expire(&self, _: Request<pb::ExpireRequest>) -> Reply<pb::ExpireResponse> {
        self.enter("expire")?;
        Ok(Response::new(pb::ExpireResponse::default()))
    }

    async fn persist(&self, _: Request<pb::PersistRequest>) -> Reply<pb::PersistResponse> {
        self.enter("persist")?;
        Ok(Response::new(pb::PersistResponse::default()))
    }

    async fn update(&self, _: Request<pb::UpdateRequest>) -> Reply<pb::UpdateResponse> {
        self.enter("update")?;
        Ok(Response::new(pb::UpdateResponse::default()))
    }

    async fn ttl(&self, _: Request<pb::TtlRequest>) -> Reply<pb::TtlResponse> {
        self.enter("ttl")?;
        Ok(Response::new(pb::TtlResponse::default()))
    }
}

#[tonic::async_trait]
impl Cluster for Svc {
    async fn get_topology(
        &self,
        _: Request<pb::GetTopologyRequest>,
    ) -> Result<Response<pb::Topology>, Status> {
        Ok(Response::new(pb::Topology::from(&topology())))
    }

    type WatchTopologyStream = tonic::codegen::BoxStream<pb::Topology>;

    async fn watch_topology(
        &self,
        _: Request<pb::WatchTopologyRequest>,
    ) -> Result<Response<Self::WatchTopologyStream>, Status> {
        // The current topology, then nothing: the stream stays open.
        let once = futures_util::stream::once(async { Ok(pb::Topology::from(&topology())) });
        let stream = futures_util::StreamExt::chain(once, futures_util::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn node_info(
        &self,
        _: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        Ok(Response::new(pb::NodeInfoResponse::default()))
    }
}

/// A fake node on a loopback port, and a connector that reaches it for the seed address and
/// for [`MEMBER_ADDR`], refusing dials to the member while `refuse_member` is above zero.
pub(crate) struct Harness {
    pub(crate) fake: Arc<Fake>,
    pub(crate) addr: String,
    pub(crate) refuse_member: Arc<AtomicUsize>,
    pub(crate) dials: Arc<AtomicUsize>,
}

impl Harness {
    pub(crate) async fn start() -> Self {
        let fake = Arc::new(Fake::default());
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap().to_string();
        let svc = Svc(Arc::clone(&fake));
        tokio::spawn(
            Server::builder()
                .add_service(cache_server(Arc::clone(&fake)))
                .add_service(ClusterServer::new(svc))
                .serve_with_incoming(incoming),
        );
        Harness {
            fake,
            addr,
            refuse_member: Arc::default(),
            dials: Arc::default(),
        }
    }

    pub(crate) fn connector(&self) -> Connector {
        let real = self.addr.clone();
        let refuse = Arc::clone(&self.refuse_member);
        let dials = Arc::clone(&self.dials);
        Connector::new(move |addr: &str| {
            let refused = addr == MEMBER_ADDR
                && refuse
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            dials.fetch_add(1, Ordering::SeqCst);
            let real = real.clone();
            Box::pin(async move {
                if refused {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "injected: connection refused",
                    ));
                }
                let stream = tokio::net::TcpStream::connect(real).await?;
                stream.set_nodelay(true)?;
                Ok(Box::new(stream) as Box<dyn NodeStream>)
            })
        })
    }

    /// A builder for this node, with fast retries (no jitter: the tests count attempts).
    pub(crate) fn builder(&self) -> ClientBuilder {
        Client::builder()
            .seeds([&self.addr])
            .pool_size(1)
            .connector(self.connector())
            .retry_policy(
                RetryPolicy::new()
                    .backoff(Duration::from_millis(5), Duration::from_millis(20))
                    .jitter(false),
            )
    }

    pub(crate) async fn client(&self) -> Client {
        self.builder().connect().await.unwrap()
    }
}

pub(crate) fn is_unavailable<T: std::fmt::Debug>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::Unavailable(_)))
}
