//! The near cache keeps only the answers a node says it tracks (`GetResponse.tracked`): a node
//! that does not know the read's tracking id (it restarted since the client's invalidation
//! stream opened, and the client has not yet seen that stream break) serves the read untracked
//! and will never send the key's invalidation, so that answer must not be cached.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::fake_cache::{FakeCache, Reply, cache_server};
use futures_util::StreamExt;
use ringcache::{Client, NearCacheOptions};
use ringcache_proto::v1 as pb;
use ringcache_test_support::until;
use tonic::codegen::BoxStream;
use tonic::transport::{Server, server::TcpIncoming};
use tonic::{Request, Response};

const DEADLINE: Duration = Duration::from_secs(10);

/// A node whose invalidation stream has tracking id 7, and which says a read is tracked only for
/// keys starting with `tracked` (as a node that restarted would say for an id it does not know).
#[derive(Default)]
struct Node {
    gets: Mutex<HashMap<String, usize>>,
}

impl Node {
    fn gets(&self, key: &str) -> usize {
        self.gets.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

#[tonic::async_trait]
impl FakeCache for Node {
    async fn get(&self, request: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        let request = request.into_inner();
        let key = String::from_utf8(request.key.to_vec()).unwrap();
        *self.gets.lock().unwrap().entry(key.clone()).or_default() += 1;
        Ok(Response::new(pb::GetResponse {
            found: true,
            value: Bytes::from(format!("value-of-{key}")),
            version: 1,
            ttl_ms: None,
            hot: false,
            tracked: request.tracking_id == 7 && key.starts_with("tracked"),
        }))
    }

    async fn invalidations(
        &self,
        _request: Request<pb::InvalidationsRequest>,
    ) -> Reply<BoxStream<pb::InvalidationBatch>> {
        let first = pb::InvalidationBatch {
            tracking_id: 7,
            keys: Vec::new(),
            flush_all: false,
        };
        // The id at once, then the stream stays open with nothing to say.
        let stream = futures_util::stream::once(async move { Ok(first) })
            .chain(futures_util::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tokio::test]
async fn only_answers_the_node_tracks_are_cached() {
    let node = Arc::new(Node::default());
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap().to_string();
    tokio::spawn(
        Server::builder()
            .add_service(cache_server(Arc::clone(&node)))
            .serve_with_incoming(incoming),
    );
    let client = Client::builder()
        .seeds([&addr])
        .near_cache(NearCacheOptions::default())
        .connect()
        .await
        .unwrap();

    // A tracked answer is cached (once the stream has given its id): later reads stay local.
    until(
        "a tracked answer served from the near cache",
        DEADLINE,
        || {
            let client = client.clone();
            async move {
                let value = client.get("tracked-a").await.unwrap();
                assert_eq!(value, Some(Bytes::from("value-of-tracked-a")));
                client.near_cache_stats().unwrap().hits > 0
            }
        },
    )
    .await
    .unwrap();
    let before = node.gets("tracked-a");
    for _ in 0..3 {
        client.get("tracked-a").await.unwrap();
    }
    assert_eq!(node.gets("tracked-a"), before, "served from the near cache");

    // An untracked answer (the stream is live, its id sent, but the node does not track the key
    // for it) is served and never cached: every read goes to the node.
    for round in 1..=3 {
        assert_eq!(
            client.get("other").await.unwrap(),
            Some(Bytes::from("value-of-other"))
        );
        assert_eq!(node.gets("other"), round, "read {round} went to the node");
    }
}
