//! The Redis Cluster protocol on the RESP port: `CLUSTER SLOTS/SHARDS/NODES` describe exactly
//! the owners the placement computes (before and after a join), cluster-aware connections get
//! `-MOVED`/`-CROSSSLOT` while plain ones are served by forwarding, and the `redis` crate's
//! cluster client (a third-party Redis Cluster client) routes every key to its owner, keeps
//! working while a node joins, and recovers when a node is killed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use redis::cluster_routing::Slot;
use redis::{AsyncCommands, Value};
use ringcache_proto::placement::{SLOTS, key_slot};
use ringcache_tests::resp::{connect, run};
use ringcache_tests::{TestCluster, TestNode, patient, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// The RESP address of every node, by node id.
fn resp_addrs(cluster: &TestCluster) -> HashMap<String, SocketAddr> {
    cluster
        .nodes
        .iter()
        .map(|n| (n.node.config().node_id.clone(), n.resp_addr))
        .collect()
}

/// Per slot, the RESP addresses of its replica set (primary first) under `node`'s ring.
fn expected_owners(node: &TestNode, addrs: &HashMap<String, SocketAddr>) -> Vec<Vec<SocketAddr>> {
    let view = node.node.view();
    (0..SLOTS)
        .map(|slot| {
            view.ring
                .slot_replicas(slot)
                .iter()
                .map(|id| addrs[id])
                .collect()
        })
        .collect()
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).unwrap(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

/// The value of `name` in a map reply (RESP2: a flat array of keys and values).
fn map_get(pairs: &[Value], name: &str) -> Value {
    pairs
        .chunks(2)
        .find(|pair| text(&pair[0]) == name)
        .map(|pair| pair[1].clone())
        .unwrap_or_else(|| panic!("no {name} in {pairs:?}"))
}

/// `[host, port, id]` as an address and id.
fn node_entry(value: &Value) -> (SocketAddr, String) {
    let Value::Array(parts) = value else {
        panic!("not a node entry: {value:?}")
    };
    let addr = format!("{}:{}", text(&parts[0]), int(&parts[1]));
    (addr.parse().unwrap(), text(&parts[2]))
}

/// `CLUSTER SLOTS` as the replica addresses of every slot.
async fn cluster_slots(con: &mut redis::aio::MultiplexedConnection) -> Vec<Vec<SocketAddr>> {
    let ranges: Vec<Value> = run(con, &["CLUSTER", "SLOTS"]).await.unwrap();
    let mut owners = vec![Vec::new(); usize::from(SLOTS)];
    let mut covered = 0;
    for range in &ranges {
        let Value::Array(parts) = range else {
            panic!("not a range: {range:?}")
        };
        let (first, last) = (int(&parts[0]), int(&parts[1]));
        let nodes: Vec<SocketAddr> = parts[2..].iter().map(|n| node_entry(n).0).collect();
        for slot in first..=last {
            assert!(owners[slot as usize].is_empty(), "slot {slot} listed twice");
            owners[slot as usize].clone_from(&nodes);
            covered += 1;
        }
    }
    assert_eq!(
        covered,
        usize::from(SLOTS),
        "CLUSTER SLOTS covers every slot"
    );
    owners
}

/// Checks CLUSTER SLOTS, SHARDS and NODES of every node against the placement.
async fn assert_described(cluster: &TestCluster) {
    let addrs = resp_addrs(cluster);
    let mut ids: HashMap<String, SocketAddr> = HashMap::new();
    for node in &cluster.nodes {
        let mut con = connect(node).await;
        let id: String = run(&mut con, &["CLUSTER", "MYID"]).await.unwrap();
        assert_eq!(id.len(), 40, "a Redis node id is 40 hex digits");
        ids.insert(id, node.resp_addr);
    }
    for node in &cluster.nodes {
        let expected = expected_owners(node, &addrs);
        let mut con = connect(node).await;
        // CLUSTER SLOTS lists each slot's primary (the replica sets are in CLUSTER SHARDS).
        let primaries: Vec<Vec<SocketAddr>> = expected.iter().map(|set| vec![set[0]]).collect();
        assert_eq!(cluster_slots(&mut con).await, primaries, "CLUSTER SLOTS");

        // SHARDS: every slot in exactly one shard, whose nodes are its replica set.
        let shards: Vec<Value> = run(&mut con, &["CLUSTER", "SHARDS"]).await.unwrap();
        let mut seen = vec![false; usize::from(SLOTS)];
        for shard in &shards {
            let Value::Array(fields) = shard else {
                panic!("not a shard: {shard:?}")
            };
            let field = |name: &str| map_get(fields, name);
            let Value::Array(slots) = field("slots") else {
                panic!("no slots")
            };
            let Value::Array(nodes) = field("nodes") else {
                panic!("no nodes")
            };
            let members: Vec<SocketAddr> = nodes
                .iter()
                .map(|n| {
                    let Value::Array(kv) = n else { panic!("{n:?}") };
                    let get = |name: &str| map_get(kv, name);
                    format!("{}:{}", text(&get("ip")), int(&get("port")))
                        .parse()
                        .unwrap()
                })
                .collect();
            for pair in slots.chunks(2) {
                for slot in int(&pair[0])..=int(&pair[1]) {
                    assert!(!seen[slot as usize], "slot {slot} in two shards");
                    seen[slot as usize] = true;
                    assert_eq!(
                        members, expected[slot as usize],
                        "CLUSTER SHARDS slot {slot}"
                    );
                }
            }
        }
        assert!(seen.iter().all(|&s| s), "CLUSTER SHARDS covers every slot");

        // NODES: one line per node; its slots are those it is the primary of.
        let nodes: String = run(&mut con, &["CLUSTER", "NODES"]).await.unwrap();
        let mut primary_of: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        let mut myself = 0;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let addr: SocketAddr = fields[1].split('@').next().unwrap().parse().unwrap();
            assert_eq!(ids[fields[0]], addr, "the id of {addr}");
            if fields[2].contains("myself") {
                myself += 1;
                assert_eq!(addr, node.resp_addr);
            }
            for range in &fields[8..] {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                let (first, last): (usize, usize) = (first.parse().unwrap(), last.parse().unwrap());
                for (slot, owners) in expected.iter().enumerate().take(last + 1).skip(first) {
                    assert_eq!(owners[0], addr, "CLUSTER NODES slot {slot}");
                }
                *primary_of.entry(addr).or_default() += last - first + 1;
            }
        }
        assert_eq!(myself, 1);
        assert_eq!(primary_of.values().sum::<usize>(), usize::from(SLOTS));
    }
}

#[tokio::test]
async fn cluster_slots_shards_and_nodes_describe_the_placement_before_and_after_a_join() {
    let mut cluster = TestCluster::start_converged(3, DEADLINE, patient).await;
    assert_described(&cluster).await;

    let mut con = connect(&cluster.nodes[0]).await;
    for key in ["somekey", "foo{hash_tag}", "{user:42}:cart", ""] {
        let slot: i64 = run(&mut con, &["CLUSTER", "KEYSLOT", key]).await.unwrap();
        assert_eq!(slot, i64::from(key_slot(key.as_bytes())));
        // The redis crate computes the same slot.
        assert_eq!(Slot::for_key(key), Slot::new(slot as u16).unwrap(), "{key}");
    }
    let info: String = run(&mut con, &["CLUSTER", "INFO"]).await.unwrap();
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    assert!(info.contains("cluster_known_nodes:3"), "{info}");

    cluster.add(4, patient).await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    assert_described(&cluster).await;
}

/// A key whose primary under `node`'s ring is `owner`'s index in the cluster.
fn key_owned_by(cluster: &TestCluster, owner: usize, tag: &str) -> String {
    let view = cluster.nodes[0].node.view();
    let owner_id = cluster.nodes[owner].node.config().node_id.clone();
    (0..)
        .map(|i| format!("{tag}:{i}"))
        .find(|key| view.ring.primary(key.as_bytes()) == Some(owner_id.as_str()))
        .unwrap()
}

#[tokio::test]
async fn cluster_clients_get_moved_and_crossslot_while_plain_clients_are_forwarded() {
    // R = 2 of 3, so each node is a replica of some keys it is not the primary of.
    let cluster = TestCluster::start_converged(3, DEADLINE, |i, config| {
        patient(i, config);
        config.replication_factor = std::num::NonZeroU32::new(2).unwrap();
    })
    .await;
    let far = key_owned_by(&cluster, 1, "far");
    let near = key_owned_by(&cluster, 0, "near");
    let far_slot = key_slot(far.as_bytes());

    // A plain connection to node 1 is served, whoever owns the key.
    let mut plain = connect(&cluster.nodes[0]).await;
    let _: () = run(&mut plain, &["SET", &far, "v"]).await.unwrap();
    assert_eq!(
        run::<String>(&mut plain, &["GET", &far]).await.unwrap(),
        "v"
    );
    let _: Vec<Option<String>> = run(&mut plain, &["MGET", &far, &near]).await.unwrap();

    // A connection that asked for the map is redirected to the owner (once the ring settled).
    let mut aware = connect(&cluster.nodes[0]).await;
    let _: Value = run(&mut aware, &["CLUSTER", "SLOTS"]).await.unwrap();
    let moved = format!("MOVED {far_slot} {}", cluster.nodes[1].resp_addr);
    wait_until(DEADLINE, || {
        let mut aware = aware.clone();
        let far = far.clone();
        let moved = moved.clone();
        async move {
            match run::<Value>(&mut aware, &["GET", &far]).await {
                Err(error) => error
                    .redirect_node()
                    .is_some_and(|(addr, slot)| format!("MOVED {slot} {addr}") == moved),
                Ok(_) => false,
            }
        }
    })
    .await
    .expect("-MOVED for a key node 1 is not the primary of");
    // Keys node 1 is the primary of are served on the same connection.
    let _: () = run(&mut aware, &["SET", &near, "n"]).await.unwrap();
    assert_eq!(
        run::<String>(&mut aware, &["GET", &near]).await.unwrap(),
        "n"
    );
    // Keys of several slots: Redis Cluster's CROSSSLOT for a cluster client...
    let error = run::<Value>(&mut aware, &["MGET", &near, &far])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("CROSSSLOT"), "{error}");
    // ... while hash-tagged keys of one slot are served in one step.
    let _: () = run(&mut aware, &["MSET", "{t}a", "1", "{t}b", "2"])
        .await
        .or_else(|error| {
            // The tag's slot may live elsewhere: then it is one MOVED for the pair.
            assert!(error.redirect_node().is_some(), "{error}");
            Ok::<(), redis::RedisError>(())
        })
        .unwrap();

    // READONLY: reads of a slot this node is a replica (not primary) of are served here;
    // writes still go to the primary.
    let view = cluster.nodes[0].node.view();
    let replica_key = (0..)
        .map(|i| format!("rep:{i}"))
        .find(|key| {
            let set = view.ring.replicas(key.as_bytes());
            set.primary() != Some("n1") && set.contains("n1")
        })
        .unwrap();
    let _: () = run(&mut plain, &["SET", &replica_key, "r"]).await.unwrap();
    let _: String = run(&mut aware, &["READONLY"]).await.unwrap();
    wait_until(DEADLINE, || {
        let mut aware = aware.clone();
        let key = replica_key.clone();
        async move {
            run::<Option<String>>(&mut aware, &["GET", &key]).await.ok() == Some(Some("r".into()))
        }
    })
    .await
    .expect("a READONLY read of a replica slot is served");
    let error = run::<Value>(&mut aware, &["SET", &replica_key, "x"])
        .await
        .unwrap_err();
    assert!(
        error.redirect_node().is_some(),
        "a write is redirected: {error}"
    );

    // RINGCACHE ROUTING FORWARD turns a connection back into a plain one.
    let _: String = run(&mut aware, &["RINGCACHE", "ROUTING", "FORWARD"])
        .await
        .unwrap();
    assert_eq!(
        run::<String>(&mut aware, &["GET", &far]).await.unwrap(),
        "v"
    );
    let routing: String = run(&mut aware, &["RINGCACHE", "ROUTING"]).await.unwrap();
    assert_eq!(routing, "FORWARD");
    // RINGCACHE CONSISTENCY sets the connection's levels.
    let _: String = run(&mut aware, &["RINGCACHE", "CONSISTENCY", "QUORUM"])
        .await
        .unwrap();
    let levels: Vec<String> = run(&mut aware, &["RINGCACHE", "CONSISTENCY"])
        .await
        .unwrap();
    assert_eq!(levels, ["reads", "QUORUM", "writes", "QUORUM"]);
    let error = run::<Value>(&mut aware, &["RINGCACHE", "CONSISTENCY", "TWO"])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("RINGCACHE HELP"), "{error}");
}

async fn cluster_connection(cluster: &TestCluster) -> redis::cluster_async::ClusterConnection {
    let nodes: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("redis://{}/", n.resp_addr))
        .collect();
    redis::cluster::ClusterClient::builder(nodes)
        .retries(16)
        .build()
        .unwrap()
        .get_async_connection()
        .await
        .expect("the redis crate's cluster client connects")
}

#[tokio::test]
async fn the_redis_crate_cluster_client_writes_to_owners_and_survives_a_join_and_a_crash() {
    let mut cluster = TestCluster::start_converged(3, DEADLINE, patient).await;
    let mut con = cluster_connection(&cluster).await;
    for i in 0..1000 {
        let _: () = con.set(format!("k{i}"), i).await.unwrap();
    }
    // Every key is on its replicas (R = 3 of 3: everywhere) and reads back.
    for i in (0..1000).step_by(37) {
        let value: i64 = con.get(format!("k{i}")).await.unwrap();
        assert_eq!(value, i);
    }
    let _: () = con
        .mset(&[("{user:1}:a", "x"), ("{user:1}:b", "y")])
        .await
        .unwrap();
    let both: Vec<String> = con.mget(&["{user:1}:a", "{user:1}:b"]).await.unwrap();
    assert_eq!(both, ["x", "y"]);

    // A node joins while the client writes: no request fails, no acknowledged write is lost.
    let writer = {
        let mut con = con.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..400 {
                let key = format!("during:{i}");
                con.set::<_, _, ()>(&key, i)
                    .await
                    .unwrap_or_else(|e| panic!("write {key} failed during the join: {e}"));
                acked.push(key);
                tokio::task::yield_now().await;
            }
            acked
        })
    };
    cluster.add(4, patient).await;
    cluster.wait_converged(DEADLINE).await.unwrap();
    let acked = writer.await.unwrap();
    for (i, key) in acked.iter().enumerate() {
        let value: i64 = con.get(key).await.unwrap();
        assert_eq!(value, i as i64, "{key}");
    }
    // The client's map converges on the new owners (it follows -MOVED): a fresh cluster
    // connection reads every key too.
    let mut fresh = cluster_connection(&cluster).await;
    for i in (0..1000).step_by(53) {
        let value: i64 = fresh.get(format!("k{i}")).await.unwrap();
        assert_eq!(value, i);
    }

    // A node is killed: once the cluster noticed, requests succeed again.
    let victim = cluster.take("n2");
    victim.crash().await.unwrap();
    wait_until(DEADLINE, || {
        let mut con = con.clone();
        async move {
            let mut ok = true;
            for i in 0..50 {
                ok &= con.get::<_, i64>(format!("k{i}")).await.ok() == Some(i);
            }
            ok
        }
    })
    .await
    .expect("the cluster client recovers after a node is killed");
}

/// Runs `redis-benchmark` (Redis's own load tool; `scripts/test-deps` installs it with
/// redis-server) with `args`, bounded in time; returns its output (stdout, then stderr).
async fn redis_benchmark(args: &[String]) -> String {
    let output = tokio::time::timeout(
        DEADLINE * 4,
        tokio::process::Command::new("redis-benchmark")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("redis-benchmark finishes in time")
    .expect("redis-benchmark runs (scripts/test-deps installs it)");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "redis-benchmark {args:?} failed: {out}"
    );
    out
}

#[tokio::test]
async fn redis_benchmark_runs_against_one_node_and_in_cluster_mode() {
    let node = TestNode::start_default().await;
    let args = |addr: SocketAddr, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(
            ["-t", "set,get", "-n", "1000", "-c", "4", "-q"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string()),
        );
        args
    };
    let out = redis_benchmark(&args(node.resp_addr, &["-P", "16"])).await;
    for test in ["SET: ", "GET: "] {
        assert!(
            out.contains(test) && out.contains("requests per second"),
            "{out}"
        );
    }

    // --cluster: redis-benchmark reads CLUSTER NODES and sends each key to its master.
    let cluster = TestCluster::start_converged(3, DEADLINE, |_, _| {}).await;
    let out = redis_benchmark(&args(cluster.nodes[0].resp_addr, &["--cluster"])).await;
    assert!(out.contains("Cluster has 3 master nodes"), "{out}");
    assert!(
        out.contains("GET: ") && out.contains("requests per second"),
        "{out}"
    );
}

#[tokio::test]
async fn multi_is_refused_and_nothing_until_exec_runs() {
    let node = TestNode::start_default().await;
    let mut con = connect(&node).await;
    let error = run::<Value>(&mut con, &["MULTI"]).await.unwrap_err();
    assert!(
        error.to_string().contains("MULTI is not supported"),
        "{error}"
    );
    let error = run::<Value>(&mut con, &["SET", "t", "1"])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("inside MULTI"), "{error}");
    let error = run::<Value>(&mut con, &["EXEC"]).await.unwrap_err();
    assert_eq!(error.code(), Some("EXECABORT"), "{error}");
    assert_eq!(
        run::<Option<String>>(&mut con, &["GET", "t"])
            .await
            .unwrap(),
        None
    );
    // DISCARD ends it too; outside MULTI, EXEC and DISCARD are errors.
    let _ = run::<Value>(&mut con, &["MULTI"]).await.unwrap_err();
    let _: String = run(&mut con, &["DISCARD"]).await.unwrap();
    let _: () = run(&mut con, &["SET", "t", "2"]).await.unwrap();
    let error = run::<Value>(&mut con, &["EXEC"]).await.unwrap_err();
    assert!(error.to_string().contains("EXEC without MULTI"), "{error}");
}

#[tokio::test]
async fn config_get_reports_the_settings_and_config_set_is_refused() {
    let node = TestNode::start_default().await;
    let mut con = connect(&node).await;
    let values: HashMap<String, String> = run(&mut con, &["CONFIG", "GET", "maxmemory*"])
        .await
        .unwrap();
    assert_eq!(
        values["maxmemory"],
        node.node.config().store.max_memory_bytes.to_string()
    );
    assert!(values.contains_key("maxmemory-policy"), "{values:?}");
    let values: HashMap<String, String> = run(&mut con, &["CONFIG", "GET", "save", "appendonly"])
        .await
        .unwrap();
    assert_eq!(values["save"], "");
    assert_eq!(values["appendonly"], "no");
    let none: HashMap<String, String> = run(&mut con, &["CONFIG", "GET", "no-such-*"])
        .await
        .unwrap();
    assert!(none.is_empty());
    let error = run::<Value>(&mut con, &["CONFIG", "SET", "maxmemory", "1"])
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("CONFIG SET is not supported"),
        "{error}"
    );
    // redis-benchmark reads CONFIG at start and no longer warns.
    let out = redis_benchmark(&[
        "-h".into(),
        node.resp_addr.ip().to_string(),
        "-p".into(),
        node.resp_addr.port().to_string(),
        "-t".into(),
        "ping".into(),
        "-n".into(),
        "100".into(),
    ])
    .await;
    assert!(!out.contains("Could not fetch server CONFIG"), "{out}");
}
