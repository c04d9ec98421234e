//! The client's production features against a fake node with injected faults: retries (only
//! what is safe), the retry budget, per-call timeouts and options, and metrics (through a
//! `metrics-util` debugging recorder). Spans are in `spans.rs`.
//!
//! The fake serves `Cache` (unary calls only, as an older node) and `Cluster` with a one-member
//! topology whose member address is a name (`member-1:7379`) that the test's connector maps to
//! the fake's real port, so a test can make dials fail and know that a request never left.
//! Nothing waits on a fixed sleep: faults are counted, not timed.

mod common;

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use common::{Harness, is_unavailable};
use metrics::{SharedString, Unit};
use metrics_util::{
    CompositeKey,
    debugging::{DebugValue, DebuggingRecorder},
};
use ringcache::{CallOptions, Error, RetryBudget, RetryPolicy, SetOptions};

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
