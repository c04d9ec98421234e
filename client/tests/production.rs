//! The client's production features against a fake node with injected faults: retries (only
//! what is safe), the retry budget, per-call timeouts and options, metrics (through a
//! `metrics-util` debugging recorder) and tracing spans (through a capturing subscriber layer).
//!
//! The fake serves `Cache` (unary calls only, as an older node) and `Cluster` with a one-member
//! topology whose member address is a name (`member-1:7379`) that the test's connector maps to
//! the fake's real port, so a test can make dials fail and know that a request never left.
//! Nothing waits on a fixed sleep: faults are counted, not timed.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use metrics::{SharedString, Unit};
use metrics_util::{
    CompositeKey,
    debugging::{DebugValue, DebuggingRecorder},
};
use ringcache::{
    CallOptions, Client, ClientBuilder, Connector, Error, NodeState, NodeStream, RetryBudget,
    RetryPolicy, SetOptions,
};
use ringcache_proto::{
    topology::{Member, Topology},
    v1::{
        self as pb,
        cache_server::{Cache, CacheServer},
        cluster_server::{Cluster, ClusterServer},
    },
};
use tonic::{
    Request, Response, Status,
    transport::{Server, server::TcpIncoming},
};

/// The member's address in the topology; the connector dials the fake for it.
const MEMBER_ADDR: &str = "member-1:7379";

/// The fake node: calls per operation, and the faults to inject.
#[derive(Default)]
struct Fake {
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

    fn calls(&self, op: &str) -> usize {
        self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    fn fail_next(&self, n: usize) {
        self.unavailable.store(n, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Svc(Arc<Fake>);

fn topology() -> Topology {
    Topology::new(
        vec![Member {
            node_id: "n1".to_owned(),
            incarnation: 1,
            state: NodeState::Active,
            weight: 1,
            grpc_addr: MEMBER_ADDR.to_owned(),
            gossip_addr: "member-1:7380".to_owned(),
            http_addr: "member-1:7381".to_owned(),
            cluster_addr: String::new(),
            resp_addr: String::new(),
        }],
        1,
        16,
    )
}

#[tonic::async_trait]
impl Cache for Svc {
    type PipelineStream = tonic::codegen::BoxStream<pb::PipelineResponseBatch>;

    async fn pipeline(
        &self,
        _: Request<tonic::Streaming<pb::PipelineRequestBatch>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        Err(Status::unimplemented("unary calls only"))
    }

    async fn get(&self, r: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        self.0.enter("get")?;
        if r.into_inner().key == "hang" {
            std::future::pending::<()>().await;
        }
        Ok(Response::new(pb::GetResponse {
            found: true,
            value: Bytes::from("v"),
            version: 1,
            ttl_ms: None,
        }))
    }

    async fn set(&self, _: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        self.0.enter("set")?;
        Ok(Response::new(pb::SetResponse {
            stored: true,
            version: 2,
            previous: None,
        }))
    }

    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.0.enter("delete")?;
        Ok(Response::new(pb::DeleteResponse::default()))
    }

    async fn m_get(
        &self,
        r: Request<pb::MGetRequest>,
    ) -> Result<Response<pb::MGetResponse>, Status> {
        self.0.enter("mget")?;
        let results = r
            .into_inner()
            .keys
            .iter()
            .map(|_| pb::GetResponse::default())
            .collect();
        Ok(Response::new(pb::MGetResponse { results }))
    }

    async fn m_set(
        &self,
        r: Request<pb::MSetRequest>,
    ) -> Result<Response<pb::MSetResponse>, Status> {
        self.0.enter("mset")?;
        let versions = r.into_inner().entries.iter().map(|_| 1).collect();
        Ok(Response::new(pb::MSetResponse { versions }))
    }

    async fn m_delete(
        &self,
        r: Request<pb::MDeleteRequest>,
    ) -> Result<Response<pb::MDeleteResponse>, Status> {
        self.0.enter("mdelete")?;
        let deleted = r.into_inner().keys.len() as u64;
        Ok(Response::new(pb::MDeleteResponse { deleted }))
    }

    async fn incr(
        &self,
        r: Request<pb::IncrRequest>,
    ) -> Result<Response<pb::IncrResponse>, Status> {
        self.0.enter("incr")?;
        Ok(Response::new(pb::IncrResponse {
            value: r.into_inner().delta,
            version: 3,
        }))
    }

    async fn compare_and_set(
        &self,
        _: Request<pb::CompareAndSetRequest>,
    ) -> Result<Response<pb::CompareAndSetResponse>, Status> {
        self.0.enter("cas")?;
        Ok(Response::new(pb::CompareAndSetResponse { version: 4 }))
    }

    async fn expire(
        &self,
        _: Request<pb::ExpireRequest>,
    ) -> Result<Response<pb::ExpireResponse>, Status> {
        self.0.enter("expire")?;
        Ok(Response::new(pb::ExpireResponse::default()))
    }

    async fn persist(
        &self,
        _: Request<pb::PersistRequest>,
    ) -> Result<Response<pb::PersistResponse>, Status> {
        self.0.enter("persist")?;
        Ok(Response::new(pb::PersistResponse::default()))
    }

    async fn update(
        &self,
        _: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        self.0.enter("update")?;
        Ok(Response::new(pb::UpdateResponse::default()))
    }

    async fn ttl(&self, _: Request<pb::TtlRequest>) -> Result<Response<pb::TtlResponse>, Status> {
        self.0.enter("ttl")?;
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
struct Harness {
    fake: Arc<Fake>,
    addr: String,
    refuse_member: Arc<AtomicUsize>,
    dials: Arc<AtomicUsize>,
}

impl Harness {
    async fn start() -> Self {
        let fake = Arc::new(Fake::default());
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap().to_string();
        let svc = Svc(Arc::clone(&fake));
        tokio::spawn(
            Server::builder()
                .add_service(CacheServer::new(svc.clone()))
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

    fn connector(&self) -> Connector {
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
    fn builder(&self) -> ClientBuilder {
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

    async fn client(&self) -> Client {
        self.builder().connect().await.unwrap()
    }
}

fn is_unavailable<T: std::fmt::Debug>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::Unavailable(_)))
}

// ---- retries --------------------------------------------------------------------------------

#[tokio::test]
async fn idempotent_calls_are_retried_after_an_unavailable_answer() {
    let harness = Harness::start().await;
    let client = harness.client().await;
    let fake = &harness.fake;

    fake.fail_next(2);
    assert_eq!(client.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(fake.calls("get"), 3, "two failures, then the answer");

    fake.fail_next(2);
    assert_eq!(
        client.set("k", "v").await.unwrap(),
        2,
        "a plain set repeats safely"
    );
    assert_eq!(fake.calls("set"), 3);

    fake.fail_next(1);
    assert_eq!(client.mget(["a", "b"]).await.unwrap().len(), 2);
    fake.fail_next(1);
    assert_eq!(
        client.mset([("a", "1"), ("b", "2")], None).await.unwrap(),
        [1, 1]
    );
    fake.fail_next(1);
    assert_eq!(client.mdelete(["a", "b"]).await.unwrap(), 2);
    fake.fail_next(1);
    client.delete("a").await.unwrap();
    assert_eq!(
        (
            fake.calls("mget"),
            fake.calls("mset"),
            fake.calls("mdelete"),
            fake.calls("delete")
        ),
        (2, 2, 2, 2)
    );

    // Three attempts by default: a third failure is the caller's.
    fake.fail_next(3);
    assert!(is_unavailable(&client.get("k").await));
    assert_eq!(fake.calls("get"), 6);
    // Turned off for one call, or for the client.
    fake.fail_next(1);
    assert!(is_unavailable(
        &client.with_retry(RetryPolicy::none()).get("k").await
    ));
    assert_eq!(fake.calls("get"), 7);
    fake.fail_next(0);
}

#[tokio::test]
async fn operations_that_may_have_run_are_never_retried() {
    let harness = Harness::start().await;
    let client = harness.client().await;
    let fake = &harness.fake;

    fake.fail_next(1);
    assert!(is_unavailable(&client.incr("n", 1).await));
    assert_eq!(fake.calls("incr"), 1, "incr ran at most once");
    fake.fail_next(1);
    assert!(is_unavailable(&client.decr("n", 1).await));
    assert_eq!(fake.calls("incr"), 2);

    fake.fail_next(1);
    assert!(is_unavailable(&client.append("log", "x").await));
    fake.fail_next(1);
    assert!(is_unavailable(&client.incr_by_float("f", 0.5).await));
    assert_eq!(
        fake.calls("update"),
        2,
        "append and incr_by_float ran at most once"
    );

    fake.fail_next(1);
    assert!(is_unavailable(
        &client.compare_and_set("k", 1, "v", None).await
    ));
    assert_eq!(fake.calls("cas"), 1);

    fake.fail_next(1);
    let lock = SetOptions::new().if_absent();
    assert!(is_unavailable(&client.set_with("lock", "me", lock).await));
    fake.fail_next(1);
    let swap = SetOptions::new().return_previous();
    assert!(is_unavailable(&client.set_with("k", "v", swap).await));
    assert_eq!(fake.calls("set"), 2, "conditional sets ran at most once");

    fake.fail_next(1);
    assert!(is_unavailable(&client.get_del("k").await));
    assert_eq!(fake.calls("delete"), 1);

    // The same calls with no fault go through once each.
    assert_eq!(client.incr("n", 5).await.unwrap(), 5);
    assert_eq!(fake.calls("incr"), 3);
}

#[tokio::test]
async fn a_request_that_never_left_is_retried_whatever_the_operation() {
    let harness = Harness::start().await;
    let client = harness.client().await;
    assert_eq!(client.topology().members().len(), 1);
    // The member's first two dials are refused: nothing reaches the node, so even incr and
    // compare-and-set are retried, and run exactly once.
    harness.refuse_member.store(2, Ordering::SeqCst);
    assert_eq!(client.incr("n", 7).await.unwrap(), 7);
    assert_eq!(harness.fake.calls("incr"), 1);
    assert_eq!(
        harness.refuse_member.load(Ordering::SeqCst),
        0,
        "both refusals used"
    );

    // With retries off, the refusal is the caller's error, and nothing ran.
    harness.refuse_member.store(1, Ordering::SeqCst);
    let fresh = harness
        .builder()
        .retry_policy(RetryPolicy::none())
        .connect()
        .await
        .unwrap();
    let error = fresh.compare_and_set("k", 1, "v", None).await.unwrap_err();
    assert!(
        matches!(&error, Error::Unavailable(m) if m.contains("connection refused")),
        "{error:?}"
    );
    assert_eq!(harness.fake.calls("cas"), 0);
}

#[tokio::test]
async fn the_retry_budget_caps_retries() {
    let harness = Harness::start().await;
    let client = harness
        .builder()
        .retry_budget(RetryBudget::new(0.5, 1))
        .connect()
        .await
        .unwrap();
    let fake = &harness.fake;

    // The reserve: one retry.
    fake.fail_next(1);
    client.get("k").await.unwrap();
    assert_eq!(fake.calls("get"), 2);
    // Empty now (the call above earned half a token): no retry.
    fake.fail_next(1);
    assert!(is_unavailable(&client.get("k").await));
    assert_eq!(fake.calls("get"), 3);
    // Two more calls earn the next token (capped at the reserve of one).
    client.get("k").await.unwrap();
    client.get("k").await.unwrap();
    fake.fail_next(1);
    client.get("k").await.unwrap();
    assert_eq!(fake.calls("get"), 7);

    let error = harness
        .builder()
        .retry_budget(RetryBudget::new(f64::NAN, 1))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidArgument(m) if m.contains("retry budget")),
        "{error:?}"
    );
}

// ---- per-call options -----------------------------------------------------------------------

#[tokio::test]
async fn a_per_call_timeout_bounds_the_whole_call() {
    let harness = Harness::start().await;
    let client = harness
        .builder()
        .request_timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();

    let started = Instant::now();
    let error = client
        .with_timeout(Duration::from_millis(150))
        .get("hang")
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, Error::Timeout { after: Some(t) } if t == Duration::from_millis(150)),
        "{error:?}"
    );
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // Retries stop when their backoff would pass the deadline: the last error, in time.
    harness.fake.fail_next(1000);
    let slow_retries = RetryPolicy::new()
        .max_attempts(100)
        .backoff(Duration::from_millis(40), Duration::from_millis(40))
        .jitter(false);
    let started = Instant::now();
    let options = CallOptions::new()
        .timeout(Duration::from_millis(200))
        .retry(slow_retries);
    let result = client.with_options(options).get("k").await;
    let took = started.elapsed();
    assert!(is_unavailable(&result), "the last error is the node's");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let attempts = harness.fake.calls("get") - 1;
    assert!((2..=6).contains(&attempts), "{attempts} attempts in 200 ms");
    harness.fake.fail_next(0);

    // The options apply to this handle only; the client is unchanged.
    assert_eq!(client.options(), CallOptions::new());
    assert!(client.get("k").await.is_ok());

    let error = client
        .with_timeout(Duration::ZERO)
        .get("k")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidArgument(m) if m.contains("timeout")),
        "{error:?}"
    );
}

// ---- metrics --------------------------------------------------------------------------------

/// What the recorder holds. Taken once per check: a snapshot drains the counters.
type Metrics = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// The counter `name` with exactly these labels (0 when never recorded).
fn counter(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut total = 0;
    for (key, _, _, value) in metrics {
        let key = key.key();
        let mut own: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        own.sort();
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        if key.name() == name
            && own == wanted
            && let DebugValue::Counter(n) = value
        {
            total += *n;
        }
    }
    total
}

fn gauge(metrics: &Metrics, name: &str) -> f64 {
    metrics
        .iter()
        .find_map(|(key, _, _, value)| match value {
            DebugValue::Gauge(g) if key.key().name() == name => Some(g.into_inner()),
            _ => None,
        })
        .unwrap_or(0.0)
}

fn histogram_count(metrics: &Metrics, name: &str, op: &str) -> usize {
    metrics
        .iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Histogram(values)
                if key.key().name() == name
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "op" && l.value() == op) =>
            {
                Some(values.len())
            }
            _ => None,
        })
        .sum()
}

// The recorder is this thread's (`set_default_local_recorder`): the test runtime is
// single-threaded, so the client's tasks and the fake node record into it, and tests running
// in parallel on other threads do not.
#[tokio::test(flavor = "current_thread")]
async fn calls_retries_failures_refreshes_and_pools_are_measured() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let harness = Harness::start().await;
    let client = harness.client().await;
    let fake = &harness.fake;
    client.get("k").await.unwrap();
    client.get("k").await.unwrap();
    fake.fail_next(1);
    client.get("k").await.unwrap();
    fake.fail_next(1);
    assert!(client.incr("n", 1).await.is_err());
    client.mget((0..10).map(|i| format!("k{i}"))).await.unwrap();
    client.refresh_topology().await.unwrap();

    let metrics = snapshotter.snapshot().into_vec();
    let requests = "ringcache_client_requests_total";
    assert_eq!(
        counter(&metrics, requests, &[("op", "get"), ("outcome", "ok")]),
        3
    );
    assert_eq!(
        counter(
            &metrics,
            requests,
            &[("op", "incr"), ("outcome", "unavailable")]
        ),
        1
    );
    assert_eq!(
        counter(&metrics, requests, &[("op", "mget"), ("outcome", "ok")]),
        1
    );
    assert_eq!(
        counter(
            &metrics,
            "ringcache_client_attempt_failures_total",
            &[("op", "get"), ("class", "node_unavailable")]
        ),
        1
    );
    assert_eq!(
        counter(&metrics, "ringcache_client_retries_total", &[("op", "get")]),
        1
    );
    assert_eq!(
        counter(
            &metrics,
            "ringcache_client_failovers_total",
            &[("op", "get")]
        ),
        0,
        "one replica: nothing to fail over to"
    );
    assert_eq!(
        counter(
            &metrics,
            "ringcache_client_retries_total",
            &[("op", "incr")]
        ),
        0,
        "incr is never retried once sent"
    );
    assert_eq!(
        counter(
            &metrics,
            "ringcache_client_batch_parts_total",
            &[("op", "mget")]
        ),
        1
    );
    assert_eq!(
        histogram_count(&metrics, "ringcache_client_request_duration_seconds", "get"),
        3
    );
    assert!(
        counter(
            &metrics,
            "ringcache_client_topology_refreshes_total",
            &[("result", "ok")]
        ) >= 1
    );
    // The seed's pool and the member's (the same node under its topology address).
    assert_eq!(gauge(&metrics, "ringcache_client_node_pools"), 2.0);
    assert_eq!(gauge(&metrics, "ringcache_client_connections"), 2.0);

    // A budget that says no is counted.
    let stingy = harness
        .builder()
        .retry_budget(RetryBudget::new(0.0, 0))
        .connect()
        .await
        .unwrap();
    fake.fail_next(1);
    assert!(stingy.get("k").await.is_err());
    let metrics = snapshotter.snapshot().into_vec();
    assert_eq!(
        counter(
            &metrics,
            "ringcache_client_retries_denied_total",
            &[("op", "get"), ("reason", "budget")]
        ),
        1
    );
    drop((client, stingy));
}

// ---- tracing --------------------------------------------------------------------------------

mod spans {
    use std::{
        collections::BTreeMap,
        sync::{Arc, Mutex},
    };

    use tracing::{
        Subscriber,
        field::{Field, Visit},
        span::{Attributes, Id, Record},
    };
    use tracing_subscriber::{Layer, layer::Context, registry::LookupSpan};

    /// A span's name and fields (values as text).
    pub(super) type SpanFields = (String, BTreeMap<String, String>);

    /// Every span, in creation order.
    #[derive(Clone, Default)]
    pub(super) struct Captured(pub(super) Arc<Mutex<Vec<SpanFields>>>);

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    /// Where a span's fields are, in [`Captured`].
    struct Index(usize);

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut fields = BTreeMap::new();
            attrs.record(&mut Fields(&mut fields));
            let mut spans = self.0.lock().unwrap();
            spans.push((attrs.metadata().name().to_owned(), fields));
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(Index(spans.len() - 1));
            }
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
            let Some(span) = ctx.span(id) else {
                return;
            };
            let Some(Index(index)) = span.extensions().get::<Index>().map(|i| Index(i.0)) else {
                return;
            };
            values.record(&mut Fields(&mut self.0.lock().unwrap()[index].1));
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn each_call_has_a_span_with_the_node_and_the_key_hash_never_the_key() {
    use tracing_subscriber::layer::SubscriberExt;

    let captured = spans::Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let harness = Harness::start().await;
    let client = harness.client().await;
    let key = "user:secret-42";
    client.get(key).await.unwrap();
    harness.fake.fail_next(1);
    client.set(key, "v").await.unwrap();
    client.mget(["a", "b", "c"]).await.unwrap();

    let spans = captured.0.lock().unwrap().clone();
    let requests: Vec<&BTreeMap<String, String>> = spans
        .iter()
        .filter(|(name, _)| name == "ringcache.request")
        .map(|(_, fields)| fields)
        .collect();
    assert_eq!(requests.len(), 3, "{spans:?}");
    let slot = ringcache_proto::placement::key_slot(key.as_bytes()).to_string();
    let hash = format!(
        "{:016x}",
        ringcache_proto::placement::key_hash(key.as_bytes())
    );

    let get = requests[0];
    assert_eq!(get["op"], "get");
    assert_eq!(get["key_slot"], slot);
    assert_eq!(get["key_hash"], hash);
    assert_eq!(get["node"], "n1", "the member that answered");
    assert_eq!(get["attempts"], "1");
    assert_eq!(get["outcome"], "ok");

    let set = requests[1];
    assert_eq!((set["op"].as_str(), set["attempts"].as_str()), ("set", "2"));
    assert_eq!(set["key_hash"], hash);

    let mget = requests[2];
    assert_eq!((mget["op"].as_str(), mget["keys"].as_str()), ("mget", "3"));
    assert!(!mget.contains_key("key_hash"));

    let attempts: Vec<&BTreeMap<String, String>> = spans
        .iter()
        .filter(|(name, _)| name == "ringcache.attempt")
        .map(|(_, fields)| fields)
        .collect();
    assert_eq!(attempts.len(), 4, "get, set twice, mget");
    for attempt in &attempts {
        assert_eq!(attempt["node"], "n1");
        assert_eq!(attempt["addr"], MEMBER_ADDR);
    }
    assert_eq!(attempts[2]["attempt"], "2", "the retry of the set");

    for (name, fields) in &spans {
        for value in fields.values() {
            assert!(
                !value.contains("secret"),
                "the key leaked into {name}: {fields:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_builder_refuses_bad_limits() {
    let harness = Harness::start().await;
    for (builder, why) in [
        (harness.builder().max_batch_keys(0), "max batch keys"),
        (harness.builder().max_message_bytes(10), "max message bytes"),
    ] {
        let error = builder.connect().await.unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(m) if m.contains(why)),
            "{error:?}"
        );
    }
    // And a retry policy of zero attempts counts as one.
    assert_eq!(RetryPolicy::new().max_attempts(0).max_attempts, 1);
}
