//! Stampede protection end to end: `Cache.GetOrLease` decided by the key's primary, the client's
//! `get_or_compute`, serve-stale, the limits (leases, waiters, lease TTL, wait) and the role.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ringcache::{Client, LeaseOptions, Leased};
use ringcache_proto::v1;
use ringcache_server::auth::{Role, UserEntry, basic_header};
use ringcache_server::config::Config;
use ringcache_tests::{TestCluster, TestNode, patient, wait_until};
use tokio::task::JoinSet;
use tonic::Code;

/// Generous bound for convergence and for conditions on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

fn lease_request(key: &str, lease_ttl_ms: u64, max_wait_ms: u64) -> v1::GetOrLeaseRequest {
    v1::GetOrLeaseRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        lease_ttl_ms,
        max_wait_ms,
    }
}

fn leased_set(key: &str, value: &str, token: u64) -> v1::SetRequest {
    v1::SetRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        lease_token: token,
        ..Default::default()
    }
}

/// The node of `cluster` that is `key`'s primary, and the others.
fn primary_and_others<'a>(
    cluster: &'a TestCluster,
    key: &str,
) -> (&'a TestNode, Vec<&'a TestNode>) {
    let view = cluster.nodes[0].node.view();
    let primary_id = view
        .replicas(key.as_bytes())
        .iter()
        .next()
        .expect("the key has replicas")
        .to_owned();
    let primary = cluster.node(&primary_id);
    let others = cluster
        .nodes
        .iter()
        .filter(|n| n.node.config().node_id != primary_id)
        .collect();
    (primary, others)
}

/// Leases held and callers waiting, summed over the cluster.
fn waiting(cluster: &TestCluster) -> usize {
    cluster
        .nodes
        .iter()
        .map(|n| n.node.leases().waiting())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_callers_on_a_cold_key_compute_it_once() {
    let cluster = Arc::new(TestCluster::start_converged(3, DEADLINE, patient).await);
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(Client::connect(cluster.grpc_targets()).await.unwrap());
    }
    let computations = Arc::new(AtomicUsize::new(0));
    let mut callers = JoinSet::new();
    for i in 0..1000 {
        let client = clients[i % clients.len()].clone();
        let computations = computations.clone();
        let cluster = cluster.clone();
        callers.spawn(async move {
            client
                .get_or_compute_with(
                    "cold",
                    Duration::from_secs(60),
                    LeaseOptions::new().max_wait(Duration::from_secs(3)),
                    move || async move {
                        computations.fetch_add(1, Ordering::SeqCst);
                        // Hold the lease until others wait on it (bounded), so the test sees
                        // waiters woken by the value, not only late hits.
                        let _ = wait_until(Duration::from_secs(5), || {
                            let n = waiting(&cluster);
                            async move { n >= 10 }
                        })
                        .await;
                        Ok::<_, std::convert::Infallible>("computed")
                    },
                )
                .await
        });
    }
    let mut answered = 0;
    while let Some(joined) = callers.join_next().await {
        let value = joined.unwrap().unwrap();
        assert_eq!(value, Bytes::from("computed"));
        answered += 1;
    }
    assert_eq!(answered, 1000);
    assert_eq!(
        computations.load(Ordering::SeqCst),
        1,
        "exactly one computation"
    );
    let granted: u64 = cluster
        .nodes
        .iter()
        .map(|n| n.node.leases().stats().granted.load(Ordering::Relaxed))
        .sum();
    assert_eq!(granted, 1, "one lease in the whole cluster");
    let woken: u64 = cluster
        .nodes
        .iter()
        .map(|n| {
            n.node
                .leases()
                .stats()
                .woken_by_value
                .load(Ordering::Relaxed)
        })
        .sum();
    assert!(woken >= 10, "waiters were woken with the value: {woken}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_that_dies_is_replaced_after_its_lease_ttl() {
    let cluster = Arc::new(TestCluster::start_converged(3, DEADLINE, patient).await);
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    let ttl = Duration::from_millis(500);

    // The "crashed" holder: takes the lease and never sets.
    let taken = tokio::time::Instant::now();
    let Leased::Lease(_dropped) = client.get_or_lease("orphan", ttl).await.unwrap() else {
        panic!("the first caller gets the lease");
    };

    let computations = Arc::new(AtomicUsize::new(0));
    let computed_after = Arc::new(std::sync::Mutex::new(None));
    let mut callers = JoinSet::new();
    for _ in 0..50 {
        let client = client.clone();
        let computations = computations.clone();
        let computed_after = computed_after.clone();
        callers.spawn(async move {
            client
                .get_or_compute_with(
                    "orphan",
                    Duration::from_secs(60),
                    LeaseOptions::new().lease_ttl(ttl),
                    move || async move {
                        computations.fetch_add(1, Ordering::SeqCst);
                        *computed_after.lock().unwrap() = Some(taken.elapsed());
                        Ok::<_, std::convert::Infallible>("recomputed")
                    },
                )
                .await
        });
    }
    while let Some(joined) = callers.join_next().await {
        assert_eq!(joined.unwrap().unwrap(), Bytes::from("recomputed"));
    }
    assert_eq!(
        computations.load(Ordering::SeqCst),
        1,
        "exactly one more computation"
    );
    let after = computed_after.lock().unwrap().expect("computed");
    assert!(
        after >= ttl,
        "computed only once the lease expired: after {after:?}"
    );
    let taken_over: u64 = cluster
        .nodes
        .iter()
        .map(|n| n.node.leases().stats().taken_over.load(Ordering::Relaxed))
        .sum();
    assert_eq!(taken_over, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_stale_answers_the_old_value_while_one_refresh_runs() {
    let cluster = TestCluster::start_converged(3, DEADLINE, |i, config| {
        patient(i, config);
        config.leases.serve_stale = Duration::from_secs(30);
    })
    .await;
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    client
        .set_ex("page", "old", Duration::from_millis(200))
        .await
        .unwrap();
    wait_until(DEADLINE, || {
        let client = client.clone();
        async move { client.get("page").await.unwrap().is_none() }
    })
    .await
    .expect("the value expires (a plain GET misses)");

    let computations = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let refresh = |computations: Arc<AtomicUsize>, gate: Arc<tokio::sync::Semaphore>| {
        move || async move {
            computations.fetch_add(1, Ordering::SeqCst);
            let _permit = gate.acquire().await.map_err(|_| "gate closed")?;
            Ok::<_, &'static str>("new")
        }
    };
    let mut callers = JoinSet::new();
    for _ in 0..100 {
        let client = client.clone();
        let compute = refresh(computations.clone(), gate.clone());
        callers.spawn(async move {
            client
                .get_or_compute("page", Duration::from_secs(60), compute)
                .await
        });
    }
    while let Some(joined) = callers.join_next().await {
        assert_eq!(
            joined.unwrap().unwrap(),
            Bytes::from("old"),
            "stale callers get the old value at once"
        );
    }
    wait_until(DEADLINE, || {
        let n = computations.load(Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await
    .unwrap();
    assert_eq!(computations.load(Ordering::SeqCst), 1, "one refresh");
    let stale: u64 = cluster
        .nodes
        .iter()
        .map(|n| n.node.leases().stats().stale_served.load(Ordering::Relaxed))
        .sum();
    assert_eq!(stale, 100);

    gate.add_permits(1);
    wait_until(DEADLINE, || {
        let client = client.clone();
        async move { client.get("page").await.unwrap().as_deref() == Some(&b"new"[..]) }
    })
    .await
    .expect("the refresh lands");
    let value = client
        .get_or_compute(
            "page",
            Duration::from_secs(60),
            refresh(computations.clone(), gate.clone()),
        )
        .await
        .unwrap();
    assert_eq!(value, Bytes::from("new"));
    assert_eq!(computations.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reaching_another_node_is_decided_by_the_primary() {
    let cluster = TestCluster::start_converged(3, DEADLINE, patient).await;
    let (primary, others) = primary_and_others(&cluster, "routed");
    assert_eq!(others.len(), 2);

    // A replica that is not the primary forwards: the lease is held on the primary.
    let mut via_replica = others[0].raw_cache().await;
    let granted = via_replica
        .get_or_lease(lease_request("routed", 10_000, 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(granted.lease_token, 0);
    assert_eq!(primary.node.leases().held(), 1);
    assert_eq!(
        others[0].node.leases().held() + others[1].node.leases().held(),
        0
    );

    // Asked anywhere else (the primary itself included), it is held: no second lease.
    for node in [primary, others[1]] {
        let reply = node
            .raw_cache()
            .await
            .get_or_lease(lease_request("routed", 10_000, 0))
            .await
            .unwrap()
            .into_inner();
        assert!(!reply.found && reply.lease_token == 0, "{reply:?}");
    }

    // A waiter on the other node gets the value once the holder sets it, through yet another
    // node.
    let mut waiter_client = others[1].raw_cache().await;
    let waiter = tokio::spawn(async move {
        waiter_client
            .get_or_lease(lease_request("routed", 10_000, 10_000))
            .await
    });
    wait_until(DEADLINE, || {
        let n = primary.node.leases().waiting();
        async move { n == 1 }
    })
    .await
    .expect("the waiter waits on the primary");
    via_replica
        .set(leased_set("routed", "value", granted.lease_token))
        .await
        .unwrap();
    let reply = waiter.await.unwrap().unwrap().into_inner();
    assert!(reply.found, "{reply:?}");
    assert_eq!(reply.value, Bytes::from("value"));
    assert_eq!(
        primary.node.leases().held(),
        0,
        "the set released the lease"
    );
}

fn limited(configure: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::for_test();
    configure(&mut config);
    config
}

#[tokio::test]
async fn leases_are_bounded_in_number_and_freed_by_their_ttl() {
    let node = TestNode::start_without_gossip(limited(|c| c.leases.max_leases = 2)).await;
    let mut raw = node.raw_cache().await;
    // A hostile caller grabs leases on many keys and never sets.
    for key in ["a", "b"] {
        let reply = raw
            .get_or_lease(lease_request(key, 200, 0))
            .await
            .unwrap()
            .into_inner();
        assert_ne!(reply.lease_token, 0);
    }
    let status = raw
        .get_or_lease(lease_request("c", 200, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("lease_max_leases"), "{status:?}");
    // Their TTL frees the room.
    wait_until(DEADLINE, || {
        let mut raw = raw.clone();
        async move {
            raw.get_or_lease(lease_request("c", 200, 0))
                .await
                .is_ok_and(|r| r.into_inner().lease_token != 0)
        }
    })
    .await
    .expect("expired leases make room");
    assert!(node.node.leases().held() <= 2);
}

#[tokio::test]
async fn waiters_are_bounded() {
    let node = TestNode::start_without_gossip(limited(|c| c.leases.max_waiters = 1)).await;
    let mut raw = node.raw_cache().await;
    let token = raw
        .get_or_lease(lease_request("k", 10_000, 0))
        .await
        .unwrap()
        .into_inner()
        .lease_token;
    let mut first = raw.clone();
    let waiter =
        tokio::spawn(async move { first.get_or_lease(lease_request("k", 10_000, 10_000)).await });
    wait_until(DEADLINE, || {
        let n = node.node.leases().waiting();
        async move { n == 1 }
    })
    .await
    .unwrap();
    let status = raw
        .get_or_lease(lease_request("k", 10_000, 10_000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("lease_max_waiters"), "{status:?}");
    raw.set(leased_set("k", "v", token)).await.unwrap();
    let reply = waiter.await.unwrap().unwrap().into_inner();
    assert_eq!(reply.value, Bytes::from("v"));
    assert_eq!(node.node.leases().waiting(), 0);
}

#[tokio::test]
async fn the_lease_ttl_and_the_wait_are_capped_and_a_zero_ttl_is_refused() {
    let node = TestNode::start_without_gossip(limited(|c| {
        c.leases.max_ttl = Duration::from_millis(300);
        c.leases.max_wait = Duration::from_millis(100);
    }))
    .await;
    let mut raw = node.raw_cache().await;
    let status = raw
        .get_or_lease(lease_request("k", 0, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = raw
        .get_or_lease(lease_request("", 100, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let first = raw
        .get_or_lease(lease_request("k", 3_600_000, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.lease_ttl_ms, 300, "a one-hour lease is capped");
    // A one-minute wait is capped at 100 ms: it times out well before the lease's end.
    let started = tokio::time::Instant::now();
    let reply = raw
        .get_or_lease(lease_request("k", 1000, 60_000))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !reply.found && reply.lease_token == 0,
        "timed out: {reply:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        node.node.leases().stats().timed_out.load(Ordering::Relaxed),
        1
    );
    // The capped lease ends after 300 ms and the next caller takes it over.
    wait_until(DEADLINE, || {
        let mut raw = raw.clone();
        async move {
            raw.get_or_lease(lease_request("k", 1000, 0))
                .await
                .is_ok_and(|r| {
                    let r = r.into_inner();
                    r.lease_token != 0 && r.lease_token != first.lease_token
                })
        }
    })
    .await
    .expect("the capped lease is taken over");
}

#[tokio::test]
async fn get_or_lease_needs_the_write_role() {
    let secret = "writer-secret-0123456789";
    let reader_secret = "reader-secret-0123456789";
    let user =
        |name: &str, role, secret: &str| UserEntry::with_secret(name, role, secret.as_bytes());
    let config = limited(|c| {
        c.security.users = vec![
            user("reader", Role::Read, reader_secret),
            user("writer", Role::Write, secret),
        ];
    });
    let node = TestNode::start_without_gossip(config).await;
    let authed = |name: &str, secret: &str| {
        let mut request = tonic::Request::new(lease_request("k", 1000, 0));
        request.metadata_mut().insert(
            "authorization",
            basic_header(name, secret).parse().expect("ASCII"),
        );
        request
    };
    let mut raw = node.raw_cache().await;
    let status = raw
        .get_or_lease(lease_request("k", 1000, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = raw
        .get_or_lease(authed("reader", reader_secret))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(node.node.leases().held(), 0);
    let reply = raw
        .get_or_lease(authed("writer", secret))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(reply.lease_token, 0);
}

#[tokio::test]
async fn lease_get_and_lease_set_round_trip_over_resp() {
    use redis::Value;
    use ringcache_tests::resp::{connect, error, run};
    let node = TestNode::start_default().await;
    let mut con = connect(&node).await;

    let (kind, value, token): (String, Option<String>, i64) =
        run(&mut con, &["LEASE.GET", "rk", "10000"]).await.unwrap();
    assert_eq!((kind.as_str(), value), ("lease", None));
    assert!(token > 0);
    let (kind, _, other): (String, Option<String>, i64) =
        run(&mut con, &["LEASE.GET", "rk", "10000", "WAIT", "0"])
            .await
            .unwrap();
    assert_eq!((kind.as_str(), other), ("timeout", 0), "the lease is held");

    let ok: String = run(
        &mut con,
        &[
            "LEASE.SET",
            "rk",
            &token.to_string(),
            "fresh",
            "PX",
            "60000",
        ],
    )
    .await
    .unwrap();
    assert_eq!(ok, "OK");
    let (kind, value, token): (String, Option<String>, i64) =
        run(&mut con, &["lease.get", "rk", "10000"]).await.unwrap();
    assert_eq!(
        (kind.as_str(), value.as_deref(), token),
        ("hit", Some("fresh"), 0)
    );
    let ttl: i64 = run(&mut con, &["PTTL", "rk"]).await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");

    // Bad input gets a clear error.
    assert!(
        error(&mut con, &["LEASE.GET", "rk", "0"])
            .await
            .contains("lease_ms")
    );
    assert!(
        error(&mut con, &["LEASE.GET", "rk", "x"])
            .await
            .contains("integer")
    );
    assert!(
        error(&mut con, &["LEASE.GET", "rk", "10", "NOWAIT", "1"])
            .await
            .contains("syntax")
    );
    assert!(
        error(&mut con, &["LEASE.GET", "rk"])
            .await
            .contains("wrong number")
    );
    assert!(
        error(&mut con, &["LEASE.SET", "rk", "0", "v"])
            .await
            .contains("token")
    );
    assert!(
        error(&mut con, &["LEASE.SET", "rk", "1", "v", "KX", "1"])
            .await
            .contains("syntax")
    );
    assert!(
        error(&mut con, &["LEASE.SET", "rk", "1", "v", "EX", "0"])
            .await
            .contains("expire")
    );

    // COMMAND INFO describes them (key at position 1, write).
    let info: Value = run(&mut con, &["COMMAND", "INFO", "lease.get", "lease.set"])
        .await
        .unwrap();
    let Value::Array(entries) = info else {
        panic!("an array: {info:?}")
    };
    assert_eq!(entries.len(), 2);
    assert!(
        entries.iter().all(|e| !matches!(e, Value::Nil)),
        "{entries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_commands_route_by_slot_in_cluster_mode() {
    use ringcache_tests::resp::{connect, key_owned_by, run, wait_moved};
    let cluster = TestCluster::start_converged(3, DEADLINE, patient).await;
    wait_moved(&cluster, DEADLINE).await;
    let far = key_owned_by(&cluster, "n2", "lease:");
    let mut aware = connect(&cluster.nodes[0]).await;
    let _: String = run(&mut aware, &["RINGCACHE", "ROUTING", "MOVED"])
        .await
        .unwrap();
    let error = run::<redis::Value>(&mut aware, &["LEASE.GET", &far, "1000"])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("MOVED"), "{error:?}");
    let (addr, _) = error.redirect_node().expect("a redirect");
    assert_eq!(addr, cluster.node("n2").resp_addr.to_string());
    // The owner serves it.
    let mut owner = connect(cluster.node("n2")).await;
    let (kind, _, _): (String, Option<String>, i64) =
        run(&mut owner, &["LEASE.GET", &far, "1000"]).await.unwrap();
    assert_eq!(kind, "lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_of_a_crashed_primary_retry_on_the_new_one_and_compute_once() {
    let mut cluster = TestCluster::start_converged(3, DEADLINE, patient).await;
    let (primary, _) = primary_and_others(&cluster, "failover");
    let primary_id = primary.node.config().node_id.clone();
    let survivors: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.node.config().node_id.clone())
        .filter(|id| *id != primary_id)
        .collect();
    let client = Client::connect(cluster.grpc_targets()).await.unwrap();
    // A holder that never sets (its lease lives long: only the failover ends it).
    let Leased::Lease(_held) = client
        .get_or_lease("failover", Duration::from_secs(60))
        .await
        .unwrap()
    else {
        panic!("the first caller gets the lease");
    };

    let computations = Arc::new(AtomicUsize::new(0));
    let mut callers = JoinSet::new();
    for _ in 0..20 {
        let client = client.clone();
        let computations = computations.clone();
        callers.spawn(async move {
            client
                .get_or_compute_with(
                    "failover",
                    Duration::from_secs(60),
                    LeaseOptions::new()
                        .max_wait(Duration::from_secs(1))
                        .attempts(40),
                    move || async move {
                        computations.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>("after failover")
                    },
                )
                .await
        });
    }
    let waiting_on_primary = cluster.node(&primary_id).node.clone();
    wait_until(DEADLINE, || {
        let n = waiting_on_primary.leases().waiting();
        async move { n >= 5 }
    })
    .await
    .expect("callers wait on the primary");
    drop(waiting_on_primary);
    cluster.take(&primary_id).crash().await.unwrap();

    while let Some(joined) = callers.join_next().await {
        assert_eq!(joined.unwrap().unwrap(), Bytes::from("after failover"));
    }
    assert_eq!(
        computations.load(Ordering::SeqCst),
        1,
        "one new lease on the new primary, one computation"
    );
    let granted: u64 = survivors
        .iter()
        .map(|id| {
            cluster
                .node(id)
                .node
                .leases()
                .stats()
                .granted
                .load(Ordering::Relaxed)
        })
        .sum();
    assert_eq!(granted, 1);
}

/// The node id of `key`'s primary, as node 1 sees the ring.
fn primary_of(cluster: &TestCluster, key: &str) -> String {
    primary_and_others(cluster, key)
        .0
        .node
        .config()
        .node_id
        .clone()
}

/// A value that reaches the primary without any client write there (anti-entropy brings it
/// from another replica) releases the lease and wakes the waiters at once, not when the
/// lease's 30 s run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_arriving_by_anti_entropy_wakes_the_waiters_long_before_the_lease_ends() {
    let cluster = TestCluster::start_converged(3, DEADLINE, |i, config| {
        patient(i, config);
        config.replication_factor = std::num::NonZeroU32::new(3).expect("non-zero");
        config.anti_entropy_interval = Duration::from_millis(300);
        config.leases.max_wait = Duration::from_secs(25);
    })
    .await;
    wait_until(DEADLINE, || async {
        cluster.nodes.iter().all(|n| n.node.is_ready())
    })
    .await
    .expect("every node ready");
    let key = "by-anti-entropy";
    let (primary, others) = primary_and_others(&cluster, key);
    let replica = others[0];

    let mut holder = primary.raw_cache().await;
    let lease = holder
        .get_or_lease(lease_request(key, 30_000, 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(lease.lease_token, 0, "{lease:?}");
    let mut waiter_client = others[1].raw_cache().await;
    let waiter = tokio::spawn(async move {
        waiter_client
            .get_or_lease(lease_request(key, 30_000, 25_000))
            .await
    });
    wait_until(DEADLINE, || {
        let n = primary.node.leases().waiting();
        async move { n == 1 }
    })
    .await
    .expect("the waiter waits on the primary");

    // The value lands on another replica only, straight into its store: as if the holder's
    // write had reached that replica and not the primary. Only anti-entropy can bring it over.
    let started = std::time::Instant::now();
    let now = replica.node.now_ms();
    replica
        .node
        .store()
        .apply(
            key.as_bytes(),
            Some(b"repaired"),
            ringcache_server::store::Hlc::at_millis(now),
            None,
            now,
        )
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is answered within 10 s, not at the end of the 30 s lease")
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(reply.found, "{reply:?}");
    assert_eq!(reply.value, Bytes::from("repaired"));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        primary.node.leases().held(),
        0,
        "the value released the lease"
    );
    let repaired: u64 = [primary, replica]
        .iter()
        .map(|n| {
            let ae = n.node.anti_entropy();
            ae.keys_pulled.load(Ordering::Relaxed) + ae.keys_pushed.load(Ordering::Relaxed)
        })
        .sum();
    assert!(repaired >= 1, "anti-entropy moved the value");
    let stats = primary.node.leases().stats();
    assert_eq!(stats.woken_by_value.load(Ordering::Relaxed), 1);
    assert_eq!(stats.granted.load(Ordering::Relaxed), 1, "no second lease");
}

/// A primary whose clock is off from the cluster's refuses GetOrLease as it refuses reads
/// (`skew.rs`): asked directly or through another node (forwarded), it answers UNAVAILABLE and
/// grants nothing; keys of sane primaries are still served through it; once its clock is fixed
/// it grants leases again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_lease_on_a_primary_whose_clock_is_skewed_is_refused() {
    use ringcache_server::clock::{Clock, OffsetClock};
    const HOUR_MS: i64 = 3_600_000;
    let mut cluster = TestCluster::start_converged(2, DEADLINE, patient).await;
    let clock = Arc::new(OffsetClock::new(HOUR_MS));
    cluster
        .add_with_clock(3, clock.clone() as Arc<dyn Clock>, patient)
        .await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    let (n1, n3) = (cluster.node("n1"), cluster.node("n3"));
    wait_until(DEADLINE, || async { n3.node.clock_check().is_skewed() })
        .await
        .expect("n3 finds its clock an hour off the cluster's");
    let on_n3 = (0..1000)
        .map(|i| format!("skewed:{i}"))
        .find(|k| primary_of(&cluster, k) == "n3")
        .expect("some key has n3 as its primary");
    let on_n1 = (0..1000)
        .map(|i| format!("sane:{i}"))
        .find(|k| primary_of(&cluster, k) == "n1")
        .expect("some key has n1 as its primary");

    for via in [n3, n1] {
        let refused = via
            .raw_cache()
            .await
            .get_or_lease(lease_request(&on_n3, 10_000, 1_000))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("clock skew"),
            "via {}: {refused:?}",
            via.node.config().node_id
        );
    }
    assert_eq!(n3.node.leases().held(), 0);
    assert_eq!(n3.node.leases().stats().granted.load(Ordering::Relaxed), 0);

    // A sane primary's key, asked through the skewed node: forwarded and granted there.
    let granted = n3
        .raw_cache()
        .await
        .get_or_lease(lease_request(&on_n1, 10_000, 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(granted.lease_token, 0, "{granted:?}");
    assert_eq!(n1.node.leases().held(), 1);

    // NTP fixes the clock: n3 decides again.
    clock.set_offset_ms(0);
    wait_until(DEADLINE, || async { !n3.node.clock_check().is_skewed() })
        .await
        .expect("n3 trusts its clock again");
    let granted = n3
        .raw_cache()
        .await
        .get_or_lease(lease_request(&on_n3, 10_000, 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(granted.lease_token, 0, "{granted:?}");
    assert_eq!(n3.node.leases().held(), 1);
}
