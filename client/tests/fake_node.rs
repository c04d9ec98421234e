//! The client against a fake node: a scripted in-process gRPC `Cache` service (not ringcached),
//! to check what goes over the wire and how answers and failures come back. End-to-end tests
//! against real nodes live in the `tests` crate.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use common::fake_cache::{FakeCache, Reply, cache_server};
use ringcache::{
    Client, Connector, Consistency, Entry, Error, KeyTtl, NodeStream, SetOptions, SetOutcome,
};
use ringcache_proto::{
    CURRENT_VERSION_METADATA,
    v1::{self as pb},
};
use ringcache_test_support::closed_addr;
use tonic::{
    Request, Response, Status,
    metadata::{MetadataMap, MetadataValue},
    transport::{Server, server::TcpIncoming},
};

const BIG: usize = 4 * 1024 * 1024;

/// What the fake node saw.
#[derive(Default)]
struct Fake {
    last_set: Mutex<Option<pb::SetRequest>>,
    last_incr: Mutex<Option<pb::IncrRequest>>,
    last_get: Mutex<Option<(pb::GetRequest, bool)>>,
}

fn key_str(key: &Bytes) -> &str {
    std::str::from_utf8(key).unwrap()
}

// An older node: no pipelined stream (UNIMPLEMENTED), so the client falls back to unary calls
// (which these tests inspect: deadlines, metadata, failover).
#[tonic::async_trait]
impl FakeCache for Fake {
    async fn get(&self, request: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        let has_deadline = request.metadata().get("grpc-timeout").is_some();
        let request = request.into_inner();
        *self.last_get.lock().unwrap() = Some((request.clone(), has_deadline));
        let response = match key_str(&request.key) {
            "hang" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                pb::GetResponse::default()
            }
            "slow-replicas" => return Err(Status::deadline_exceeded("replicas did not answer")),
            "leaving" => return Err(Status::unavailable("node is leaving")),
            "missing" => pb::GetResponse::default(),
            "big" => pb::GetResponse {
                found: true,
                value: Bytes::from(vec![7u8; BIG]),
                version: 1,
                ttl_ms: None,
                hot: false,
                tracked: false,
            },
            key => pb::GetResponse {
                found: true,
                value: Bytes::from(format!("value-of-{key}")),
                version: 7,
                ttl_ms: Some(1500),
                hot: false,
                tracked: false,
            },
        };
        Ok(Response::new(response))
    }

    async fn set(&self, request: Request<pb::SetRequest>) -> Reply<pb::SetResponse> {
        let request = request.into_inner();
        *self.last_set.lock().unwrap() = Some(request.clone());
        if key_str(&request.key) == "full" {
            return Err(Status::resource_exhausted("max_memory reached"));
        }
        let previous = request.return_previous.then(|| Bytes::from("old"));
        let blocked = key_str(&request.key) == "taken"
            && request.condition == pb::SetCondition::IfAbsent as i32;
        Ok(Response::new(if blocked {
            pb::SetResponse {
                stored: false,
                version: 0,
                previous,
            }
        } else {
            pb::SetResponse {
                stored: true,
                version: 11,
                previous,
            }
        }))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        let deleted = key_str(&request.into_inner().key) == "present";
        Ok(Response::new(pb::DeleteResponse {
            deleted,
            ..Default::default()
        }))
    }

    async fn m_get(&self, request: Request<pb::MGetRequest>) -> Reply<pb::MGetResponse> {
        let keys = request.into_inner().keys;
        let mut results: Vec<_> = keys
            .iter()
            .map(|key| match key_str(key) {
                "missing" => pb::GetResponse::default(),
                other => pb::GetResponse {
                    found: true,
                    value: Bytes::from(other.to_uppercase()),
                    version: 1,
                    ttl_ms: None,
                    hot: false,
                    tracked: false,
                },
            })
            .collect();
        if keys.iter().any(|k| key_str(k) == "short") {
            results.pop();
        }
        Ok(Response::new(pb::MGetResponse { results }))
    }

    async fn m_set(&self, request: Request<pb::MSetRequest>) -> Reply<pb::MSetResponse> {
        let request = request.into_inner();
        if request.ttl_ms != Some(60_000) {
            return Err(Status::invalid_argument("expected a 60 s ttl"));
        }
        let versions = (1..=request.entries.len() as u64).collect();
        Ok(Response::new(pb::MSetResponse { versions }))
    }

    async fn m_delete(&self, request: Request<pb::MDeleteRequest>) -> Reply<pb::MDeleteResponse> {
        let deleted = request.into_inner().keys.len() as u64;
        Ok(Response::new(pb::MDeleteResponse { deleted }))
    }

    async fn incr(&self, request: Request<pb::IncrRequest>) -> Reply<pb::IncrResponse> {
        let request = request.into_inner();
        *self.last_incr.lock().unwrap() = Some(request.clone());
        match key_str(&request.key) {
            "overflow" => Err(Status::out_of_range("increment would overflow")),
            "text" => Err(Status::invalid_argument("value is not an integer")),
            _ => Ok(Response::new(pb::IncrResponse {
                value: 100 + request.delta,
                version: 3,
            })),
        }
    }

    async fn compare_and_set(
        &self,
        request: Request<pb::CompareAndSetRequest>,
    ) -> Reply<pb::CompareAndSetResponse> {
        let request = request.into_inner();
        if key_str(&request.key) == "absent" {
            return Err(Status::failed_precondition("key does not exist"));
        }
        if request.expected_version == 5 {
            return Ok(Response::new(pb::CompareAndSetResponse { version: 6 }));
        }
        let mut metadata = MetadataMap::new();
        metadata.insert(CURRENT_VERSION_METADATA, MetadataValue::from_static("5"));
        Err(Status::with_metadata(
            tonic::Code::FailedPrecondition,
            "version mismatch",
            metadata,
        ))
    }

    async fn expire(&self, request: Request<pb::ExpireRequest>) -> Reply<pb::ExpireResponse> {
        let request = request.into_inner();
        let updated = key_str(&request.key) != "missing" && request.ttl_ms == 1;
        Ok(Response::new(pb::ExpireResponse {
            updated,
            ..Default::default()
        }))
    }

    async fn persist(&self, request: Request<pb::PersistRequest>) -> Reply<pb::PersistResponse> {
        let updated = key_str(&request.into_inner().key) != "missing";
        Ok(Response::new(pb::PersistResponse { updated }))
    }

    async fn ttl(&self, request: Request<pb::TtlRequest>) -> Reply<pb::TtlResponse> {
        let response = match key_str(&request.into_inner().key) {
            "missing" => pb::TtlResponse::default(),
            "forever" => pb::TtlResponse {
                found: true,
                ttl_ms: None,
                ..Default::default()
            },
            _ => pb::TtlResponse {
                found: true,
                ttl_ms: Some(2500),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }
}

/// Serves a fake node on a loopback port; returns it and its address. The server stops with the
/// test's runtime.
async fn start() -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap().to_string();
    let service = cache_server(Arc::clone(&fake))
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    (fake, addr)
}

#[tokio::test]
async fn reads_and_writes_convert_both_ways() {
    let (fake, addr) = start().await;
    let client = Client::connect([&addr]).await.unwrap();

    assert_eq!(
        client.get("a").await.unwrap(),
        Some(Bytes::from("value-of-a"))
    );
    assert_eq!(client.get("missing").await.unwrap(), None);
    let (sent, has_deadline) = fake.last_get.lock().unwrap().clone().unwrap();
    assert_eq!(sent.consistency, pb::Consistency::Unspecified as i32);
    assert!(has_deadline, "the request timeout is sent as grpc-timeout");
    assert_eq!(
        client.get_entry("a").await.unwrap(),
        Some(Entry {
            value: Bytes::from("value-of-a"),
            version: 7,
            ttl: Some(Duration::from_millis(1500)),
        })
    );
    assert_eq!(client.get_entry("missing").await.unwrap(), None);

    assert_eq!(client.set("k", "v").await.unwrap(), 11);
    assert_eq!(
        client
            .set_ex("k", "v", Duration::from_micros(10))
            .await
            .unwrap(),
        11
    );
    assert_eq!(
        fake.last_set.lock().unwrap().as_ref().unwrap().ttl_ms,
        Some(1)
    );

    let outcome = client
        .set_with(
            "taken",
            "v",
            SetOptions::new()
                .if_absent()
                .return_previous()
                .consistency(Consistency::All),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        SetOutcome {
            stored: false,
            version: None,
            previous: Some(Bytes::from("old")),
        }
    );
    let sent = fake.last_set.lock().unwrap().clone().unwrap();
    assert_eq!(sent.condition, pb::SetCondition::IfAbsent as i32);
    assert_eq!(sent.consistency, pb::Consistency::All as i32);
    assert_eq!(sent.ttl_ms, None);

    assert!(client.delete("present").await.unwrap());
    assert!(!client.delete("absent").await.unwrap());

    assert_eq!(
        client.mget(["x", "missing", "y"]).await.unwrap(),
        vec![Some(Bytes::from("X")), None, Some(Bytes::from("Y"))]
    );
    assert_eq!(
        client
            .mset([("a", "1"), ("b", "2")], Some(Duration::from_secs(60)))
            .await
            .unwrap(),
        vec![1, 2]
    );
    assert_eq!(client.mdelete(["a", "b", "c"]).await.unwrap(), 3);

    assert!(client.expire("k", Duration::from_nanos(5)).await.unwrap());
    assert!(
        !client
            .expire("missing", Duration::from_millis(1))
            .await
            .unwrap()
    );
    assert!(client.persist("k").await.unwrap());
    assert_eq!(client.ttl("missing").await.unwrap(), KeyTtl::Missing);
    assert_eq!(client.ttl("forever").await.unwrap(), KeyTtl::Persistent);
    assert_eq!(
        client.ttl("k").await.unwrap(),
        KeyTtl::ExpiresIn(Duration::from_millis(2500))
    );
}

#[tokio::test]
async fn counters() {
    let (fake, addr) = start().await;
    let client = Client::connect([&addr]).await.unwrap();
    assert_eq!(client.incr("n", 5).await.unwrap(), 105);
    assert_eq!(client.decr("n", 5).await.unwrap(), 95);
    assert_eq!(
        fake.last_incr.lock().unwrap().as_ref().unwrap().ttl_ms,
        None
    );
    assert_eq!(
        client
            .incr_with_ttl("n", 1, Duration::from_secs(2))
            .await
            .unwrap(),
        101
    );
    assert_eq!(
        fake.last_incr.lock().unwrap().as_ref().unwrap().ttl_ms,
        Some(2000)
    );
    assert!(matches!(
        client.incr("overflow", i64::MAX).await,
        Err(Error::InvalidArgument(m)) if m == "increment would overflow"
    ));
    assert!(matches!(
        client.incr("text", 1).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn compare_and_set_conflicts_carry_the_current_version() {
    let (_fake, addr) = start().await;
    let client = Client::connect([&addr]).await.unwrap();
    assert_eq!(client.compare_and_set("k", 5, "v", None).await.unwrap(), 6);
    assert!(matches!(
        client.compare_and_set("k", 4, "v", None).await,
        Err(Error::CasConflict {
            current_version: Some(5)
        })
    ));
    assert!(matches!(
        client.compare_and_set("absent", 1, "v", None).await,
        Err(Error::CasConflict {
            current_version: None
        })
    ));
}

#[tokio::test]
async fn server_errors_map_to_variants() {
    let (_fake, addr) = start().await;
    let client = Client::connect([&addr]).await.unwrap();
    assert!(matches!(
        client.set("full", "v").await,
        Err(Error::MemoryFull(m)) if m == "max_memory reached"
    ));
    let error = client.get("leaving").await.unwrap_err();
    assert!(matches!(&error, Error::Unavailable(m) if m == "node is leaving"));
    assert!(error.is_retryable());
    assert!(matches!(
        client.get("slow-replicas").await,
        Err(Error::Timeout { after: Some(_) })
    ));
    assert!(matches!(
        client.mget(["a", "short"]).await,
        Err(Error::Protocol(_))
    ));
}

#[tokio::test]
async fn a_hung_request_times_out() {
    let (_fake, addr) = start().await;
    let client = Client::builder()
        .seeds([&addr])
        .request_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let error = client.get("hang").await.unwrap_err();
    assert!(
        matches!(error, Error::Timeout { after: Some(after) } if after == Duration::from_millis(200)),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "request timed out after 200ms");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The connection is still usable afterwards.
    assert!(client.get("a").await.unwrap().is_some());
}

#[tokio::test]
async fn large_values_fit_by_default() {
    let (fake, addr) = start().await;
    let client = Client::connect([&addr]).await.unwrap();
    assert_eq!(client.get("big").await.unwrap().unwrap().len(), BIG);
    client.set("k", vec![1u8; BIG]).await.unwrap();
    assert_eq!(
        fake.last_set.lock().unwrap().as_ref().unwrap().value.len(),
        BIG
    );

    let small = Client::builder()
        .seeds([&addr])
        .max_message_bytes(1024)
        .connect()
        .await
        .unwrap();
    assert!(matches!(
        small.get("big").await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn the_first_seed_that_answers_is_used() {
    let (_fake, addr) = start().await;
    let down = closed_addr();
    let client = Client::connect([down.as_str(), &format!("http://{addr}")])
        .await
        .unwrap();
    assert!(client.get("a").await.unwrap().is_some());
    assert!(format!("{client:?}").contains(&addr));
}

#[tokio::test]
async fn the_pool_opens_one_channel_per_connection_and_uses_them_all() {
    let (_fake, addr) = start().await;
    let dialed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&dialed);
    let client = Client::builder()
        .seeds([&addr])
        .pool_size(3)
        .default_consistency(Consistency::One)
        .connector(Connector::new(move |addr: &str| {
            counter.fetch_add(1, Ordering::SeqCst);
            let addr = addr.to_owned();
            Box::pin(async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                Ok(Box::new(stream) as Box<dyn NodeStream>)
            })
        }))
        .connect()
        .await
        .unwrap();
    // The connect probe checks every connection of the seed's pool.
    assert_eq!(dialed.load(Ordering::SeqCst), 3);
    for _ in 0..6 {
        assert!(client.get("a").await.unwrap().is_some());
    }
    let clone = client.clone();
    assert!(clone.get("a").await.unwrap().is_some());
    assert_eq!(dialed.load(Ordering::SeqCst), 3, "the connections are kept");
}

#[tokio::test]
async fn default_consistency_is_sent() {
    let (fake, addr) = start().await;
    let client = Client::builder()
        .seeds([&addr])
        .default_consistency(Consistency::Quorum)
        .connect()
        .await
        .unwrap();
    client.get("a").await.unwrap();
    let consistency = |fake: &Fake| {
        fake.last_get
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .0
            .consistency
    };
    assert_eq!(consistency(&fake), pb::Consistency::Quorum as i32);
    client
        .with_consistency(Consistency::One)
        .get("a")
        .await
        .unwrap();
    assert_eq!(consistency(&fake), pb::Consistency::One as i32);
    client.with_consistency(None).get("a").await.unwrap();
    assert_eq!(consistency(&fake), pb::Consistency::Unspecified as i32);
}

#[tokio::test]
async fn a_node_without_the_cluster_service_serves_every_key() {
    // This fake serves only `Cache`: the client has no topology and sends everything to it.
    let (_fake, addr) = start().await;
    let client = Client::connect([&addr]).await.unwrap();
    assert!(client.topology().members().is_empty());
    assert_eq!(client.topology_digest(), client.topology().digest());
    client.refresh_topology().await.unwrap();
    assert_eq!(
        client.mget(["x", "y", "z"]).await.unwrap(),
        vec![
            Some(Bytes::from("X")),
            Some(Bytes::from("Y")),
            Some(Bytes::from("Z"))
        ]
    );
}
