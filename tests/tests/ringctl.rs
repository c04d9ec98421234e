//! `ringctl` against live 3-node loopback clusters, run in-process through `ringcache::ctl::run`
//! with captured streams: status, ring, locate, the key-value commands, stats, rebalance status,
//! watch, drain, completions, and its exit codes and one-line errors.

use std::time::Duration;

use ringcache::Client;
use ringcache_proto::placement::Ring;
use ringcache_proto::topology::{Member, NodeState, Topology};
use ringcache_proto::v1::{self, cache_client::CacheClient};
use ringcache_server::Config;
use ringcache_test_support::closed_addr;
use ringcache_tests::ctl::{Outcome, ctl, ctl_stdin};
use ringcache_tests::{DataDir, TestCluster, TestNode, patient, wait_until};
use serde_json::Value;

/// Generous bound: failure detection here takes ~0.5 s (100 ms probes, 400 ms suspicion).
const CONVERGE: Duration = Duration::from_secs(15);

/// Three converged nodes with patient failure detection: a loaded machine must not make a
/// live node suspect (a ring of two would answer `locate` with two replicas).
async fn converged_cluster() -> (TestCluster, String) {
    let cluster = TestCluster::start_converged(3, CONVERGE, patient).await;
    let addr = cluster.nodes[0].grpc_target();
    (cluster, addr)
}

/// Runs `args` until `done` holds for the outcome (bounded by [`CONVERGE`]) and returns it: a
/// loaded machine may briefly suspect a healthy node, which the verdict would report.
async fn ctl_until(cluster: &str, args: &[&str], done: impl Fn(&Outcome) -> bool) -> Outcome {
    let give_up = tokio::time::Instant::now() + CONVERGE;
    loop {
        let outcome = ctl(cluster, args).await;
        if done(&outcome) || tokio::time::Instant::now() >= give_up {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn status_shows_three_healthy_members() {
    let (cluster, addr) = converged_cluster().await;

    let healthy = |o: &Outcome| o.text().lines().last() == Some("healthy");
    let text = ctl_until(&addr, &["status"], healthy).await.ok();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("NODE") && lines[0].contains("DIGEST"),
        "{text}"
    );
    for id in ["n1", "n2", "n3"] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for {id}: {text}"));
        assert!(row.contains("active"), "{row}");
        assert!(
            row.contains(&cluster.node(id).grpc_addr.to_string()),
            "{row}"
        );
    }
    assert!(text.contains("all 3 reachable members report the same topology digest"));
    assert_eq!(lines.last(), Some(&"healthy"), "{text}");

    let healthy_json = |o: &Outcome| o.text().contains("\"verdict\": \"healthy\"");
    let status = ctl_until(&addr, &["--output", "json", "status"], healthy_json)
        .await
        .json();
    assert_eq!(status["verdict"], "healthy");
    assert_eq!(status["healthy"], true);
    assert_eq!(status["digests_agree"], true);
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for member in members {
        assert_eq!(member["state"], "active", "{member}");
        assert_eq!(member["reachable"], true, "{member}");
        assert_eq!(member["topology_digest"], status["topology"]["digest"]);
        assert!(member["keys"].is_u64() && member["max_memory_bytes"].as_u64() > Some(0));
    }
}

#[tokio::test]
async fn json_output_parses_for_ring_locate_stats_and_rebalance() {
    let (cluster, addr) = converged_cluster().await;
    ctl(&addr, &["set", "k1", "v1"]).await.ok();

    // A loaded machine may briefly suspect a member, which takes it out of the ring.
    let whole = |o: &Outcome| o.text().contains("\"replicas_per_key\": 3");
    let ring = ctl_until(&addr, &["-o", "json", "ring", "--samples", "20000"], whole)
        .await
        .json();
    assert_eq!(ring["samples"], 20000);
    assert_eq!(ring["replicas_per_key"], 3);
    let nodes = ring["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let primary: f64 = nodes
        .iter()
        .map(|n| n["primary_share"].as_f64().unwrap())
        .sum();
    assert!((primary - 1.0).abs() < 1e-9, "{ring}");
    for node in nodes {
        // R = 3 of 3 nodes: every node holds a copy of every key.
        assert_eq!(node["replica_share"].as_f64(), Some(1.0), "{node}");
        assert_eq!(node["vnodes"], 256, "{node}");
        assert!(node["keys"].is_u64(), "{node}");
    }
    let text = ctl_until(&addr, &["ring"], |o| {
        o.text().contains("ring of 3 nodes, R=3")
    })
    .await
    .ok();
    assert!(text.contains("ring of 3 nodes, R=3"), "{text}");

    let located = ctl(&addr, &["-o", "json", "locate", "k1"]).await.json();
    assert_eq!(located["key"], "k1");
    assert_eq!(located["replicas"].as_array().unwrap().len(), 3);

    let stats = ctl(&addr, &["-o", "json", "stats"]).await.json();
    assert_eq!(stats["node_id"], "n1");
    assert!(stats["keys"].is_u64() && stats["hits"].is_u64());
    assert!(stats["rebalance"]["phase"].is_string(), "{stats}");
    // ringctl's own connection is open while it asks.
    assert!(stats["connections"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["max_connections"], 10_000, "{stats}");
    assert_eq!(stats["connections_rejected"], 0, "{stats}");
    assert!(stats["forwarded_requests"].is_u64(), "{stats}");
    assert_eq!(stats["hints_pending"], 0, "{stats}");
    assert_eq!(stats["hints_pending_bytes"], 0, "{stats}");
    assert_eq!(
        stats["replication_lag_seconds"].as_f64(),
        Some(0.0),
        "{stats}"
    );
    assert!(stats["ready"].is_boolean(), "{stats}");
    assert!(stats["rebalance"]["bytes_done"].is_u64(), "{stats}");
    let stats = ctl(&addr, &["-o", "json", "stats", "n2"]).await.json();
    assert_eq!(stats["node_id"], "n2");
    assert_eq!(stats["grpc_addr"], cluster.node("n2").grpc_target());
    let text = ctl(&addr, &["stats", "n3"]).await.ok();
    assert!(text.starts_with("node "), "{text}");
    assert!(
        text.contains("n3 at ") && text.contains("hit ratio"),
        "{text}"
    );
    for label in [
        "ready ",
        "connections ",
        "forwarded requests ",
        "hints pending ",
        "replication lag ",
        "  progress ",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(label)),
            "{label:?} missing: {text}"
        );
    }
    assert!(text.contains("open (max 10000), 0 rejected"), "{text}");

    let rebalance = ctl(&addr, &["-o", "json", "rebalance", "status"])
        .await
        .json();
    let nodes = rebalance["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["rebalance"]["phase"].is_string()));
    assert!(
        nodes.iter().all(|n| n["rebalance"]
            .as_object()
            .unwrap()
            .contains_key("eta_seconds")),
        "{rebalance}"
    );
    let text = ctl(&addr, &["rebalance", "status"]).await.ok();
    assert!(text.starts_with("NODE") && text.contains("PHASE"), "{text}");
    assert!(text.lines().next().unwrap().contains(" ETA "), "{text}");

    let unknown = ctl(&addr, &["stats", "n9"]).await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stdout.is_empty());
    assert_eq!(
        unknown.stderr,
        "ringctl: unknown node id \"n9\" (members: n1, n2, n3)\n"
    );
}

#[tokio::test]
async fn stats_shows_forwarded_requests_hints_and_replication_lag() {
    // n1 alone, with a static topology naming two more nodes that cannot be reached: writes it
    // coordinates leave hints for them, and requests for their keys are forwarded (and fail).
    let mut config = Config::for_test();
    config.node_id = "n1".to_owned();
    config.replication.write_consistency = ringcache_server::replication::Consistency::One;
    let n1 = TestNode::start_without_gossip(config).await;
    let member = |id: &str, grpc: String, http: String| {
        Member::for_test(id)
            .with_grpc_addr(grpc)
            .with_gossip_addr("127.0.0.1:1")
            .with_http_addr(http)
    };
    let topology = Topology::new(
        vec![
            member("n1", n1.grpc_target(), n1.http_addr.to_string()),
            member("n2", closed_addr(), closed_addr()),
            member("n3", closed_addr(), closed_addr()),
        ],
        2,
        64,
    );
    n1.node.set_topology(topology.clone());
    let ring = Ring::new(&topology);
    let channel = tonic::transport::Endpoint::from_shared(n1.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut cache = CacheClient::new(channel);
    let (mut hinted, mut forwarded) = (0, 0);
    for i in 0..30 {
        let key = format!("key{i}");
        let holds = ring.replicas(key.as_bytes()).iter().any(|id| id == "n1");
        let result = cache
            .set(v1::SetRequest {
                key: key.clone().into(),
                value: "v".into(),
                ..Default::default()
            })
            .await;
        if holds {
            result.unwrap();
            hinted += 1;
        } else {
            assert!(result.is_err(), "{key}: its primary is unreachable");
            forwarded += 1;
        }
    }
    assert!(
        hinted > 0 && forwarded > 0,
        "{hinted} hinted, {forwarded} forwarded"
    );

    let addr = n1.grpc_target();
    let last = std::sync::Mutex::new(Value::Null);
    let lagging = wait_until(CONVERGE, || {
        let addr = addr.clone();
        let last = &last;
        async move {
            let stats = ctl(&addr, &["-o", "json", "stats"]).await.json();
            // Hints are queued as each background replica write fails.
            let lagging = stats["replication_lag_seconds"].as_f64() > Some(0.0)
                && stats["hints_pending"] == hinted;
            *last.lock().unwrap() = stats;
            lagging
        }
    })
    .await;
    let last = last.into_inner().unwrap();
    assert!(lagging.is_ok(), "no replication lag: {last}");
    assert_eq!(last["forwarded_requests"], forwarded, "{last}");
    assert_eq!(last["hints_pending"], hinted, "{last}");
    assert!(last["hints_pending_bytes"].as_u64() > Some(0), "{last}");

    let text = ctl(&addr, &["stats"]).await.ok();
    let line = |label: &str| {
        text.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line: {text}"))
            .to_owned()
    };
    assert!(
        line("forwarded requests ").ends_with(&format!(" {forwarded}")),
        "{text}"
    );
    assert!(
        line("hints pending ").contains(&format!(" {hinted} (")),
        "{text}"
    );
    assert!(!line("replication lag ").ends_with(" 0s"), "{text}");
}

#[tokio::test]
async fn locate_names_the_replicas_the_client_routes_to() {
    let (cluster, addr) = converged_cluster().await;
    let client = Client::connect([cluster.nodes[1].grpc_target()])
        .await
        .unwrap();
    let ring = Ring::new(&client.topology());
    for i in 0..5 {
        let key = format!("user:{i}");
        let version = client.set(key.clone(), "x").await.unwrap();
        let expected: Vec<String> = ring
            .replicas(key.as_bytes())
            .iter()
            .map(str::to_owned)
            .collect();

        // A loaded machine may briefly suspect a member, which changes the replica set.
        let routed = |o: &Outcome| {
            serde_json::from_slice::<Value>(&o.stdout).is_ok_and(|v| {
                v["replicas"] == serde_json::json!(expected) && v["nodes"][0]["found"] == true
            })
        };
        let located = ctl_until(&addr, &["-o", "json", "locate", &key], routed)
            .await
            .json();
        let replicas: Vec<String> = located["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(replicas, expected, "{key}");
        assert_eq!(
            located["slot"].as_u64(),
            Some(u64::from(ringcache_proto::placement::key_slot(
                key.as_bytes()
            )))
        );
        let primary = &located["nodes"][0];
        assert_eq!(primary["node_id"], expected[0].as_str());
        assert_eq!(primary["role"], "primary");
        assert_eq!(primary["found"], true, "{located}");
        assert_eq!(primary["live"], true, "{located}");
        assert_eq!(primary["version"].as_u64(), Some(version), "{located}");

        let line = format!("replicas  {} (R=3)", expected.join(", "));
        let text = ctl_until(&addr, &["locate", &key], |o| o.text().contains(&line))
            .await
            .ok();
        assert!(text.contains(&line), "{text}");
    }
}

#[tokio::test]
async fn set_get_del_round_trip_including_binary_values_from_stdin() {
    let (_cluster, addr) = converged_cluster().await;

    let text = ctl(&addr, &["set", "greeting", "hello"]).await.ok();
    assert!(text.starts_with("stored 5 B (version "), "{text}");
    let got = ctl(&addr, &["get", "greeting"]).await;
    assert_eq!(got.ok(), "hello", "raw output, no newline added");

    let binary: Vec<u8> = (0..=255u8).collect();
    ctl_stdin(&addr, &["set", "blob", "--stdin"], &binary)
        .await
        .ok();
    let got = ctl(&addr, &["get", "blob"]).await;
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(got.stdout, binary);
    let got = ctl(&addr, &["-o", "json", "get", "blob"]).await.json();
    assert_eq!(got["encoding"], "base64");
    assert_eq!(got["value"].as_str().unwrap().len(), 344);
    let got = ctl(&addr, &["-o", "json", "get", "greeting"]).await.json();
    assert_eq!(got["encoding"], "utf8");
    assert_eq!(got["value"], "hello");
    assert_eq!(got["ttl_ms"], Value::Null);

    let set = ctl(&addr, &["-o", "json", "set", "session", "s", "--ttl", "1h"])
        .await
        .json();
    assert_eq!(set["stored"], true);
    let ttl = ctl(&addr, &["-o", "json", "ttl", "session"]).await.json();
    let left = ttl["ttl_ms"].as_u64().unwrap();
    assert!(left > 3_500_000 && left <= 3_600_000, "{ttl}");
    assert_eq!(ctl(&addr, &["ttl", "greeting"]).await.ok(), "persistent\n");

    assert_eq!(ctl(&addr, &["incr", "hits"]).await.ok(), "1\n");
    assert_eq!(ctl(&addr, &["incr", "hits", "41"]).await.ok(), "42\n");
    assert_eq!(ctl(&addr, &["incr", "hits", "-2"]).await.ok(), "40\n");
    let not_a_number = ctl(&addr, &["incr", "greeting"]).await;
    assert_eq!(not_a_number.code, 1);
    assert_eq!(
        not_a_number.stderr.lines().count(),
        1,
        "{}",
        not_a_number.stderr
    );

    assert_eq!(ctl(&addr, &["del", "greeting"]).await.ok(), "deleted\n");
    assert_eq!(ctl(&addr, &["del", "greeting"]).await.ok(), "not found\n");
    assert_eq!(
        ctl(&addr, &["-o", "json", "del", "greeting"]).await.json(),
        serde_json::json!({"key": "greeting", "deleted": false})
    );

    // A miss exits 3 and says so: on stderr for `get` (stdout holds values only), in JSON with
    // the shape of a hit.
    let missing = ctl(&addr, &["get", "greeting"]).await;
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    assert!(missing.stdout.is_empty());
    assert_eq!(missing.stderr, "ringctl: key \"greeting\" not found\n");
    let missing = ctl(&addr, &["-o", "json", "get", "greeting"]).await;
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    assert!(missing.stderr.is_empty(), "{}", missing.stderr);
    let json: Value = serde_json::from_slice(&missing.stdout).expect("one JSON document");
    assert_eq!(
        json,
        serde_json::json!({"key": "greeting", "found": false, "value": null,
            "encoding": null, "version": null, "ttl_ms": null})
    );
    let missing = ctl(&addr, &["ttl", "greeting"]).await;
    assert_eq!(
        (missing.code, missing.text()),
        (3, "not found\n".to_owned())
    );
    let missing = ctl(&addr, &["-o", "json", "ttl", "greeting"]).await;
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    let json: Value = serde_json::from_slice(&missing.stdout).expect("one JSON document");
    assert_eq!(
        json,
        serde_json::json!({"key": "greeting", "found": false, "persistent": false, "ttl_ms": null})
    );
}

#[tokio::test]
async fn set_without_a_value_stores_nothing() {
    let (_cluster, addr) = converged_cluster().await;
    let refused = ctl_stdin(&addr, &["set", "k"], b"").await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("<VALUE|--file <PATH>|--stdin>"),
        "{}",
        refused.stderr
    );
    assert_eq!(ctl(&addr, &["get", "k"]).await.code, 3, "nothing stored");
    // Said explicitly, an empty stdin is an empty value.
    let stored = ctl_stdin(&addr, &["-o", "json", "set", "k", "--stdin"], b"")
        .await
        .json();
    assert_eq!(stored["bytes"], 0);
    assert_eq!(ctl(&addr, &["get", "k"]).await.ok(), "");
}

#[tokio::test]
async fn a_full_node_s_refusal_names_memory_full_once() {
    let mut config = Config::for_test();
    config.store.max_memory_bytes = 64 * 1024;
    config.store.eviction = ringcache_server::store::EvictionPolicy::NoEviction;
    let node = TestNode::start(config).await;
    let addr = node.grpc_target();
    let refused = ctl_stdin(&addr, &["set", "big", "--stdin"], &[b'x'; 100 * 1024]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stdout.is_empty());
    assert!(
        refused.stderr.starts_with("ringctl: memory full: "),
        "{}",
        refused.stderr
    );
    assert_eq!(
        refused.stderr.matches("memory full").count(),
        1,
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn a_crashed_node_shows_in_status_with_a_degraded_verdict() {
    let (mut cluster, addr) = converged_cluster().await;
    cluster.take("n3").crash().await.unwrap();

    let last = std::sync::Mutex::new(Value::Null);
    let seen = wait_until(CONVERGE, || {
        let addr = addr.clone();
        let last = &last;
        async move {
            let status = ctl(&addr, &["-o", "json", "status"]).await.json();
            let n3 = status["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["node_id"] == "n3")
                .cloned();
            *last.lock().unwrap() = status.clone();
            let verdict = status["verdict"].as_str().unwrap_or_default().to_owned();
            n3.is_some_and(|n3| {
                (n3["state"] == "suspect" || n3["state"] == "dead") && n3["reachable"] == false
            }) && verdict.starts_with("degraded: ")
                && verdict.contains("n3")
        }
    })
    .await;
    assert!(seen.is_ok(), "last status: {}", last.lock().unwrap());

    let text = ctl(&addr, &["status"]).await.ok();
    let verdict = text.lines().last().unwrap();
    assert!(
        verdict.starts_with("degraded: ") && verdict.contains("n3"),
        "{text}"
    );
    let row = text.lines().find(|l| l.starts_with("n3 ")).unwrap();
    assert!(
        row.contains("unreachable") && (row.contains("suspect") || row.contains("dead")),
        "{row}"
    );
}

#[tokio::test]
async fn forget_takes_a_dead_member_out_of_every_known_cluster_size() {
    let (mut cluster, addr) = converged_cluster().await;
    let alive = ctl(&addr, &["forget", "n2"]).await;
    assert_eq!(alive.code, 1);
    assert!(
        alive.stderr.contains("n2 is active in the topology"),
        "{}",
        alive.stderr
    );
    cluster.take("n3").crash().await.unwrap();
    // n3 dead, and n1 (the --cluster node) sees n2 alive: a loaded machine may briefly
    // suspect it too.
    wait_until(CONVERGE, || async {
        cluster.nodes.iter().all(|n| {
            n.node
                .view()
                .topology
                .member("n3")
                .is_none_or(|m| m.state == NodeState::Dead)
        }) && cluster.nodes[0]
            .node
            .view()
            .topology
            .member("n2")
            .is_some_and(|m| m.state == NodeState::Active)
    })
    .await
    .expect("n3 is declared dead");
    for n in &cluster.nodes {
        assert_eq!(
            n.node.known_members(),
            ["n1", "n2", "n3"],
            "dead stays known"
        );
    }
    let out = ctl(&addr, &["-o", "json", "forget", "n3"]).await.json();
    assert_eq!(out["forget"], "n3");
    let nodes = out["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{out}");
    for node in nodes {
        assert_eq!(node["forgotten"], true, "{out}");
        assert_eq!(node["known_members"], 2, "{out}");
    }
    for n in &cluster.nodes {
        assert_eq!(n.node.known_members(), ["n1", "n2"]);
    }
    let again = ctl(&addr, &["forget", "n3"]).await.ok();
    assert!(again.contains("not known"), "{again}");
}

#[tokio::test]
async fn errors_exit_one_with_one_line() {
    for args in [
        &["status"][..],
        &["get", "k"],
        &["ring"],
        &["locate", "k"],
        &["watch"],
    ] {
        let outcome = ctl("127.0.0.1:1", args).await;
        assert_eq!(outcome.code, 1, "{args:?}");
        assert!(outcome.stdout.is_empty(), "{args:?}");
        assert_eq!(
            outcome.stderr, "ringctl: cannot reach 127.0.0.1:1: connection refused\n",
            "{args:?}"
        );
        // With JSON, the failure is a document on stdout as well.
        let mut json_args = vec!["-o", "json"];
        json_args.extend_from_slice(args);
        let outcome = ctl("127.0.0.1:1", &json_args).await;
        assert_eq!(outcome.code, 1, "{args:?}");
        assert_eq!(
            outcome.stderr, "ringctl: cannot reach 127.0.0.1:1: connection refused\n",
            "{args:?}"
        );
        let json: Value = serde_json::from_slice(&outcome.stdout).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": "cannot reach 127.0.0.1:1: connection refused"}),
            "{args:?}"
        );
    }
    let bad_duration = ctl("127.0.0.1:1", &["--timeout", "soon", "status"]).await;
    assert_eq!(bad_duration.code, 2);
    assert!(
        bad_duration
            .stderr
            .starts_with("error: invalid value 'soon' for '--timeout <DURATION>': bad duration"),
        "{}",
        bad_duration.stderr
    );
}

#[tokio::test]
async fn watch_prints_the_topology() {
    let (cluster, addr) = converged_cluster().await;
    // The node's topology now; a loaded machine may briefly suspect a member, which changes it.
    let digest = || format!("{:#018x}", cluster.nodes[0].node.view().topology.digest());
    let current = |o: &Outcome| {
        o.text()
            .contains(&format!("topology {}: 3 members", digest()))
    };
    let text = ctl_until(&addr, &["watch", "--count", "1"], current)
        .await
        .ok();
    assert!(
        text.contains(&format!("topology {}: 3 members", digest())),
        "{text}"
    );
    for id in ["n1", "n2", "n3"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{id} "))),
            "{text}"
        );
    }
    let current = |o: &Outcome| {
        serde_json::from_slice::<Value>(&o.stdout).is_ok_and(|line| {
            line["digest"] == digest().as_str()
                && line["members"].as_array().map(Vec::len) == Some(3)
        })
    };
    let json = ctl_until(&addr, &["-o", "json", "watch", "--count", "1"], current).await;
    let line: Value = serde_json::from_str(json.ok().trim_end()).unwrap();
    assert_eq!(line["digest"], digest().as_str());
    assert_eq!(line["members"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn drain_hands_off_and_the_node_leaves() {
    let (mut cluster, addr) = converged_cluster().await;
    for i in 0..20 {
        ctl(&addr, &["set", &format!("key{i}"), "v"]).await.ok();
    }
    // n3 stops answering before it hands off: the counts come from the members that received
    // its entries. R = 3 of 3: n3 held all 20 keys and sends each to both n1 and n2 (to one of
    // them only if a loaded machine made n3 suspect the other as it left).
    let drained = ctl(
        &addr,
        &["-o", "json", "drain", "n3", "--timeout-drain", "60s"],
    )
    .await
    .json();
    assert_eq!(drained["drained"], true, "{drained}");
    assert_eq!(drained["keys_held"], 20, "{drained}");
    assert_eq!(drained["counts_complete"], true, "{drained}");
    let receivers = drained["receivers"].as_array().unwrap();
    assert_eq!(receivers.len(), 2, "{drained}");
    let (mut keys, mut bytes) = (0, 0);
    for receiver in receivers {
        assert!(
            [Some(0), Some(20)].contains(&receiver["keys"].as_u64()),
            "every key or none: {drained}"
        );
        assert_eq!(receiver["error"], Value::Null, "{drained}");
        keys += receiver["keys"].as_u64().unwrap();
        bytes += receiver["bytes"].as_u64().unwrap();
    }
    assert!(keys == 20 || keys == 40, "{drained}");
    assert_eq!(drained["keys_sent"], keys, "{drained}");
    assert_eq!(drained["bytes_sent"], bytes, "{drained}");
    assert!(bytes > 0, "{drained}");
    cluster.take("n3").wait_stopped().await.unwrap();
    let ring = ctl(&addr, &["-o", "json", "ring", "--samples", "1000"])
        .await
        .json();
    assert_eq!(ring["nodes"].as_array().unwrap().len(), 2, "{ring}");
    assert_eq!(ctl(&addr, &["get", "key7"]).await.ok(), "v");
}

#[tokio::test]
async fn drain_restart_stops_the_node_and_the_cluster_keeps_its_ranges() {
    let dirs: Vec<DataDir> = (0..3).map(|_| DataDir::new()).collect();
    let mut cluster = TestCluster::start_converged(3, CONVERGE, |i, config| {
        patient(i, config);
        // n2 has none: it refuses to stop for a restart.
        if i != 2 {
            config.snapshot.data_dir = Some(dirs[i - 1].path().to_path_buf());
        }
    })
    .await;
    let addr = cluster.nodes[0].grpc_target();
    for i in 0..20 {
        ctl(&addr, &["set", &format!("key{i}"), "v"]).await.ok();
    }
    let stopped = ctl(
        &addr,
        &[
            "-o",
            "json",
            "drain",
            "--restart",
            "n3",
            "--timeout-drain",
            "60s",
        ],
    )
    .await
    .json();
    assert_eq!(stopped["stopped"], true, "{stopped}");
    assert_eq!(stopped["keys_held"], 20, "{stopped}");
    cluster.take("n3").wait_stopped().await.unwrap();
    assert!(
        dirs[2].path().join("snapshot.rcs").exists(),
        "the node wrote its snapshot"
    );
    // Still in the ring, shown restarting.
    let ring = ctl(&addr, &["-o", "json", "ring", "--samples", "1000"])
        .await
        .json();
    assert_eq!(ring["nodes"].as_array().unwrap().len(), 3, "{ring}");
    let status = ctl(&addr, &["status"]).await.text();
    assert!(status.contains("restarting"), "{status}");
    assert_eq!(ctl(&addr, &["get", "key7"]).await.ok(), "v");
    // A node without a data directory refuses, and says why.
    let refused = ctl(&addr, &["drain", "--restart", "n2"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("no data directory"),
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn completions_print_a_script() {
    let bash = ctl("127.0.0.1:1", &["completions", "bash"]).await.ok();
    assert!(
        bash.contains("_ringctl()") && bash.contains("complete "),
        "{bash}"
    );
    assert!(bash.contains("locate") && bash.contains("--cluster"));
}

#[tokio::test]
async fn rebalance_status_shows_an_eta_while_data_moves() {
    // Three nodes at R = 2 send slowly (64 KiB/s). When n3 crashes, the survivors push the slots
    // it replicated to their new second replica (a push pass with a known total: an ETA), batch by
    // batch, for several seconds. (A joiner's pull has no known total, hence no ETA.)
    let mut cluster = TestCluster::start_converged(3, CONVERGE, |i, config| {
        patient(i, config);
        config.replication_factor = std::num::NonZeroU32::new(2).unwrap();
        config.rebalance_bytes_per_sec = 64 * 1024;
    })
    .await;
    let addr = cluster.nodes[0].grpc_target();
    let client = Client::connect([addr.clone()]).await.unwrap();
    let value = "x".repeat(200);
    for batch in 0..4 {
        let pairs: Vec<(String, String)> = (0..500)
            .map(|i| (format!("key{batch}-{i}"), value.clone()))
            .collect();
        client.mset(pairs, None).await.unwrap();
    }
    cluster.take("n3").crash().await.unwrap();

    let last = std::sync::Mutex::new(Value::Null);
    let moving = wait_until(CONVERGE, || {
        let addr = addr.clone();
        let last = &last;
        async move {
            let status = ctl(&addr, &["-o", "json", "rebalance", "status"])
                .await
                .json();
            let n1 = status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["node_id"] == "n1")
                .cloned()
                .unwrap_or(Value::Null);
            let seen =
                // Past the first throttled batch of the pass that pushes to n2.
                n1["rebalance"]["phase"] == "moving"
                    && n1["rebalance"]["keys_sent"].as_u64() > Some(0)
                    && n1["rebalance"]["eta_seconds"].is_f64();
            *last.lock().unwrap() = n1;
            seen
        }
    })
    .await;
    let n1 = last.into_inner().unwrap();
    assert!(moving.is_ok(), "never saw n1 moving with an ETA: {n1}");
    let rebalance = &n1["rebalance"];
    assert!(rebalance["bytes_total"].as_u64() > Some(0), "{n1}");
    assert!(
        rebalance["bytes_done"].as_u64() <= rebalance["bytes_total"].as_u64(),
        "{n1}"
    );
    assert!(
        rebalance["rate_bytes_per_second"].as_f64() > Some(0.0),
        "{n1}"
    );
    assert!(rebalance["eta_seconds"].as_f64() >= Some(0.0), "{n1}");

    let text = ctl(&addr, &["rebalance", "status"]).await.ok();
    let header = text.lines().next().unwrap();
    assert!(
        header.contains(" DONE ") && header.contains(" RATE ") && header.contains(" ETA "),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("n1 ")), "{text}");
}

/// `status` after a kill -9: the cluster stays degraded (the dead member is missing, every slot
/// has fewer than R serving copies) until the member returns or is forgotten, however long it
/// has been gone; a drained member shows as `left`, which is healthy; `--check` says it all in
/// its exit code (0 healthy, 1 degraded, 2 unreachable).
#[tokio::test]
async fn status_stays_degraded_until_a_killed_node_is_forgotten_and_shows_drained_ones_as_left() {
    let cluster = TestCluster::start(4).await;
    cluster.wait_converged(CONVERGE).await.unwrap();
    let mut cluster = cluster;
    let addr = cluster.nodes[0].grpc_target();
    let healthy = ctl_until(&addr, &["status", "--check"], |o| o.code == 0).await;
    assert_eq!(healthy.code, 0, "{}", healthy.text());

    cluster.take("n4").crash().await.unwrap();
    // Well past dead_retention (30 probes, 3 s here): n4 is gone from every view, and still
    // the cluster knows it is missing.
    let gone = ctl_until(&addr, &["-o", "json", "status"], |o| {
        let status: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        status["members"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| m["node_id"] != "n4"))
    })
    .await;
    let status = gone.json();
    assert_eq!(
        status["missing_members"],
        serde_json::json!(["n4"]),
        "{status}"
    );
    assert_eq!(status["expected_members"], 4, "{status}");
    // Three serving members still give every slot R = 3 replicas: capacity is missing, copies
    // are not (a 3-node cluster would count every slot; see the unit tests of ClusterHealth).
    assert_eq!(status["under_replicated_slots"], 0, "{status}");
    assert_eq!(status["healthy"], false, "{status}");
    let verdict = status["verdict"].as_str().unwrap();
    assert!(
        verdict.contains("n4 is missing") && verdict.contains("3 of 4 expected members serving"),
        "{verdict}"
    );
    let check = ctl(&addr, &["status", "--check"]).await;
    assert_eq!(check.code, 1, "{}", check.text());
    let metrics = ringcache_tests::http_get(cluster.nodes[0].http_addr, "/metrics")
        .await
        .unwrap()
        .body;
    for line in [
        "ringcache_cluster_expected_members 4\n",
        "ringcache_cluster_under_replicated_slots 0\n",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    // Readiness flips to 0 for the settle window after each ring change: present, either value.
    assert!(metrics.contains("\nringcache_ready "), "{metrics}");
    assert!(
        metrics.contains("ringcache_build_info{version="),
        "{metrics}"
    );
    assert!(
        metrics.contains("process_resident_memory_bytes "),
        "{metrics}"
    );

    ctl(&addr, &["forget", "n4"]).await.ok();
    let forgotten = ctl_until(&addr, &["status", "--check"], |o| o.code == 0).await;
    assert_eq!(forgotten.code, 0, "{}", forgotten.text());
    let status = ctl(&addr, &["-o", "json", "status"]).await.json();
    assert_eq!(status["expected_members"], 3, "{status}");
    assert_eq!(status["under_replicated_slots"], 0, "{status}");

    // A drained member is `left`, not `dead`, and leaves the cluster healthy.
    ctl(&addr, &["drain", "n3", "--timeout-drain", "60s"])
        .await
        .ok();
    cluster.take("n3").wait_stopped().await.unwrap();
    let left = ctl_until(&addr, &["-o", "json", "status"], |o| {
        let status: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        status["members"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["node_id"] == "n3" && m["state"] == "left")
        }) && status["healthy"] == true
    })
    .await;
    let status = left.json();
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(status["expected_members"], 2, "{status}");
    let text = ctl(&addr, &["status"]).await.ok();
    let row = text.lines().find(|l| l.starts_with("n3 ")).unwrap();
    assert!(row.contains("left"), "{text}");

    // Nobody answers: unreachable.
    let unreachable = ctl("127.0.0.1:1", &["--timeout", "2s", "status", "--check"]).await;
    assert_eq!(unreachable.code, 2, "{}", unreachable.text());
    assert!(
        unreachable.text().starts_with("unreachable: "),
        "{}",
        unreachable.text()
    );
}

#[tokio::test]
async fn rebalance_counters_never_show_more_done_than_total() {
    // n1 holds values and tombstones (deleted keys, kept for the tombstone grace while n2 holds
    // copies too; a node alone would keep none); when n3 joins, n1's pass scans both. The total
    // must count what the scan visits.
    let mut cluster = TestCluster::start_with(2, patient).await;
    cluster.wait_converged(CONVERGE).await.unwrap();
    let addr = cluster.nodes[0].grpc_target();
    let client = Client::connect([addr.clone()]).await.unwrap();
    let pairs: Vec<(String, String)> = (0..300).map(|i| (format!("key{i}"), "v".into())).collect();
    client.mset(pairs, None).await.unwrap();
    for i in 0..100 {
        assert!(client.delete(format!("key{i}")).await.unwrap());
    }
    let store = cluster.nodes[0].node.store();
    let held = store.entry_count();
    assert!(
        held > store.stats().keys,
        "n1 keeps tombstones beside its {} keys",
        store.stats().keys
    );
    let passes_before = cluster.nodes[0].node.rebalance().to_wire().passes;
    cluster.add(3, patient).await;
    cluster.wait_converged(CONVERGE).await.unwrap();
    wait_until(CONVERGE, || async {
        let status = cluster.nodes[0].node.rebalance().to_wire();
        status.passes > passes_before && status.phase == "idle"
    })
    .await
    .expect("n1 ran a pass for n2's join");

    let status = ctl(&addr, &["-o", "json", "rebalance", "status"])
        .await
        .json();
    let n1 = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "n1")
        .cloned()
        .unwrap();
    let rebalance = &n1["rebalance"];
    let scanned = rebalance["keys_scanned"].as_u64().unwrap();
    let total = rebalance["keys_total"].as_u64().unwrap();
    assert_eq!(
        (scanned, total),
        (held, held),
        "every entry, tombstones included, scanned of the entries held: {n1}"
    );
    assert!(
        rebalance["bytes_done"].as_u64() <= rebalance["bytes_total"].as_u64(),
        "{n1}"
    );
    let text = ctl(&addr, &["rebalance", "status"]).await.ok();
    let row = text.lines().find(|l| l.starts_with("n1 ")).unwrap();
    assert!(row.contains(&format!(" {held}/{held} ")), "{text}");
}

#[tokio::test]
async fn every_command_prints_json_for_every_outcome() {
    let (_cluster, addr) = converged_cluster().await;
    ctl(&addr, &["set", "here", "v"]).await.ok();
    // (arguments, exit status): misses and "nothing to do" outcomes included.
    let cases: &[(&[&str], i32)] = &[
        (&["status"], 0),
        (&["ring", "--samples", "1000"], 0),
        (&["locate", "here"], 0),
        (&["locate", "nowhere"], 0),
        (&["get", "here"], 0),
        (&["get", "nowhere"], 3),
        (&["set", "k", "v"], 0),
        (&["ttl", "k"], 0),
        (&["ttl", "nowhere"], 3),
        (&["del", "k"], 0),
        (&["del", "k"], 0),
        (&["incr", "n", "5"], 0),
        (&["stats"], 0),
        (&["stats", "n2"], 0),
        (&["rebalance", "status"], 0),
        (&["hotkeys"], 0),
        (&["hotkeys", "--limit", "1000"], 1),
        (&["forget", "n9"], 0),
        (&["completions", "bash"], 0),
    ];
    for (args, code) in cases {
        let mut argv = vec!["-o", "json"];
        argv.extend_from_slice(args);
        let outcome = ctl(&addr, &argv).await;
        assert_eq!(outcome.code, *code, "{args:?}: {}", outcome.stderr);
        let json: Value = serde_json::from_slice(&outcome.stdout).unwrap_or_else(|e| {
            panic!("{args:?}: not one JSON document ({e}): {}", outcome.text())
        });
        assert!(json.is_object(), "{args:?}: {json}");
        for (_, value) in json.as_object().unwrap() {
            assert!(
                !value.as_str().is_some_and(|s| s.contains("\u{1b}[")),
                "{args:?}: no colour codes in JSON: {json}"
            );
        }
    }
    let missing = ctl(&addr, &["-o", "json", "locate", "nowhere"])
        .await
        .json();
    assert_eq!(missing["newest_version"], Value::Null, "{missing}");
    assert_eq!(missing["holders"], 0, "{missing}");
    let forgot = ctl(&addr, &["-o", "json", "forget", "n9"]).await.json();
    for node in forgot["nodes"].as_array().unwrap() {
        assert_eq!(node["outcome"], "not known", "{forgot}");
    }
}
