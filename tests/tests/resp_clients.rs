//! Real Redis clients of other languages against the RESP port: Python's `redis` package
//! (redis-py: `redis.Redis` against one node, `redis.cluster.RedisCluster` against a 3-node
//! cluster, also while a node crashes) and `redis-cli -c` (cluster mode, follows `-MOVED`).
//!
//! The nodes run in this process; every client is a child process run with `tokio::process`
//! (a blocking `std::process` wait would stall the nodes on the test's runtime), bounded by a
//! timeout, its output printed when it fails. Python is the virtualenv `scripts/test-deps` makes
//! at `<cargo target dir>/python-clients` with the redis-py of `tests/python-requirements.txt`,
//! or `$RINGCACHE_TEST_PYTHON`; a missing interpreter or package fails the test with the command
//! that installs it (never a skip).

use std::time::Duration;

use ringcache_proto::placement::key_slot;
use ringcache_tests::resp::{
    crash_during_rounds, key_owned_by, python, resp_errors, resp_ports, run_child, wait_moved,
};
use ringcache_tests::{TestCluster, TestNode, patient};
use tokio::process::Command;

/// How long a cluster may take to converge.
const CONVERGE: Duration = Duration::from_secs(10);
/// redis-py's version must be at least this: 4.3 and older crash re-reading the cluster map
/// after a node fails (`cannot pickle '_thread.lock' object`, fixed in 4.4).
const MIN_REDIS_PY: (u32, u32) = (4, 4);
/// How to install what the tests need.
const INSTALL: &str = "run scripts/test-deps (with the same CARGO_TARGET_DIR): it makes the \
    virtualenv <target>/python-clients with tests/python-requirements.txt; or point \
    RINGCACHE_TEST_PYTHON at a Python 3 with redis>=4.4 (python3 -m pip install 'redis>=4.4')";
/// How to install `redis-cli`.
const INSTALL_CLI: &str = "run scripts/test-deps: it installs redis-server (with redis-cli)";

/// Checks that the interpreter runs and has redis-py with `RedisCluster`; panics with the
/// install command otherwise (never skips).
async fn require_redis_py() {
    let check = "import redis, redis.cluster; print(redis.__version__)";
    let output = tokio::process::Command::new(python())
        .args(["-c", check])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", python()));
    assert!(
        output.status.success(),
        "{} has no usable redis package: {}; {INSTALL}",
        python(),
        String::from_utf8_lossy(&output.stderr)
    );
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        found >= MIN_REDIS_PY,
        "{} has redis-py {version}, older than {}.{} (no RedisCluster); {INSTALL}",
        python(),
        MIN_REDIS_PY.0,
        MIN_REDIS_PY.1
    );
}

/// Runs a Python script with `args` (as `sys.argv[1:]`); panics with its output unless it
/// exits 0.
async fn python_script(script: &str, args: &[String]) -> ringcache_tests::resp::Finished {
    require_redis_py().await;
    run_child(
        Command::new(python()).arg("-c").arg(script).args(args),
        "",
        INSTALL,
    )
    .await
}

/// `redis.Redis` against one node: the basic commands, a pipeline, and 1000 keys written
/// through node 1 and read back through every node.
const STANDALONE: &str = r#"
import sys, redis
ports = [int(p) for p in sys.argv[1:]]
r = redis.Redis(host="127.0.0.1", port=ports[0], decode_responses=True, socket_timeout=10)
assert r.ping() is True
assert r.set("py:a", "1") is True
assert r.get("py:a") == "1"
assert r.set("py:a", "2", nx=True) is None
assert r.mget(["py:a", "py:missing"]) == ["1", None]
assert r.incr("py:n") == 1
assert r.incr("py:n", 41) == 42
assert r.get("py:n") == "42"
assert r.expire("py:a", 100) is True
assert 90 <= r.ttl("py:a") <= 100, r.ttl("py:a")
assert r.ttl("py:n") == -1
assert r.ttl("py:missing") == -2
assert r.expire("py:missing", 10) is False
assert r.delete("py:a", "py:n", "py:missing") == 2
assert r.get("py:a") is None
assert r.set("py:text", "abc") is True
try:
    r.incr("py:text")
    raise SystemExit("INCR of a non-integer succeeded")
except redis.ResponseError as e:
    assert str(e) == "value is not an integer or out of range", str(e)

# A pipeline without MULTI/EXEC (ringcache has no transactions: see below).
p = r.pipeline(transaction=False)
p.set("py:p1", "x").set("py:p2", "y").incr("py:p3").mget("py:p1", "py:p2", "py:p3").delete("py:p1")
assert p.execute() == [True, True, 1, ["x", "y", "1"], 1]
# redis-py's default pipeline is a transaction: MULTI is refused (no transactions here), so
# is every command until EXEC, and EXEC answers EXECABORT: nothing of it ran.
try:
    r.pipeline().set("py:t", "1").execute()
    raise SystemExit("a MULTI/EXEC pipeline succeeded")
except (redis.ResponseError, redis.exceptions.ExecAbortError) as e:
    assert "EXECABORT" in str(e) or "MULTI is not supported" in str(e), str(e)
assert r.get("py:t") is None
assert r.ping()

# 1000 keys through node 1 (pipelined), read back through every node.
p = r.pipeline(transaction=False)
for i in range(1000):
    p.set(f"py:k:{i}", f"v{i}")
assert p.execute() == [True] * 1000
expected = [f"v{i}" for i in range(1000)]
for port in ports:
    other = redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=10)
    got = [other.get(f"py:k:{i}") for i in range(1000)]
    assert got == expected, (port, [i for i in range(1000) if got[i] != expected[i]][:10])
    assert other.mget([f"py:k:{i}" for i in range(1000)]) == expected, port
print("ok")
"#;

#[tokio::test]
async fn python_redis_against_one_node() {
    let cluster = TestCluster::start_converged(3, CONVERGE, patient).await;
    let out = python_script(STANDALONE, &resp_ports(&cluster)).await;
    assert_eq!(out.stdout, "ok\n", "{}", out.stderr);
}

/// `redis.cluster.RedisCluster` against the cluster: topology discovery, 1000 keys, hash-tagged
/// multi-key commands, and redis-py's slots against `CLUSTER KEYSLOT`. Prints each key's node
/// (port) as redis-py routes it, for the test to check against the ring.
const CLUSTER: &str = r#"
import sys, json, redis
from redis.cluster import RedisCluster, ClusterNode
ports = [int(p) for p in sys.argv[1:]]
rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports],
                  decode_responses=True, socket_timeout=10)
found = sorted(n.port for n in rc.get_nodes())
assert found == sorted(ports), (found, ports)

keys = [f"pyc:{i}" for i in range(1000)]
for i, k in enumerate(keys):
    assert rc.set(k, f"v{i}") is True, k
for i, k in enumerate(keys):
    assert rc.get(k) == f"v{i}", k

# Hash tags: one slot, so plain MGET/MSET work; across slots only the _nonatomic forms.
tagged = {f"{{user:7}}:{f}": f"x{f}" for f in ("name", "mail", "age")}
assert rc.mset(tagged) is True
assert rc.mget(list(tagged)) == list(tagged.values())
assert rc.delete(*tagged) == 3
try:
    rc.mget(["pyc:0", "pyc:1"])
    raise SystemExit("MGET across slots succeeded")
except redis.RedisClusterException as e:
    assert "same key slot" in str(e), str(e)
spread = {f"{{t{i}}}:k": f"s{i}" for i in range(50)}
assert rc.mset_nonatomic(spread) == [True] * len(set(rc.keyslot(k) for k in spread))
assert rc.mget_nonatomic(list(spread) + ["{t0}:missing"]) == list(spread.values()) + [None]

# redis-py's slot of a key is the server's.
samples = keys[:200] + list(tagged) + list(spread) + ["{}", "{}x", "a{}b", "{a}{b}", "x{y", "}{z}", ""]
for k in samples:
    assert rc.keyslot(k) == rc.cluster_keyslot(k), (k, rc.keyslot(k), rc.cluster_keyslot(k))

routes = {k: rc.get_node_from_key(k).port for k in keys}
# Each node's SCAN returns the keys it is the primary of, and CLUSTER SLOTS lists primaries
# only, so every node is a primary to redis-py and its default SCAN (all primaries) sees each
# key once.
assert len(rc.get_primaries()) == len(ports), rc.get_primaries()
scanned = list(rc.scan_iter(match="pyc:*", count=500))
assert sorted(scanned) == sorted(keys), len(scanned)
roles = {
    "primaries": sorted(n.port for n in rc.get_primaries()),
    "replicas": sorted(n.port for n in rc.get_replicas()),
    "scan_primaries": len(set(rc.scan_iter(match="pyc:*", count=500))),
}
print(json.dumps({"routes": routes, "slots": {k: rc.keyslot(k) for k in keys}, "roles": roles}))
"#;

#[tokio::test]
async fn python_redis_cluster_client() {
    let cluster = TestCluster::start_converged(3, CONVERGE, patient).await;
    let out = python_script(CLUSTER, &resp_ports(&cluster)).await;
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    // Shown, not asserted: how redis-py sees the nodes' roles (README: cluster clients).
    eprintln!(
        "redis-py's roles: {} (ports {:?})",
        report["roles"],
        resp_ports(&cluster)
    );
    let view = cluster.nodes[0].node.view();
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for (key, port) in report["routes"].as_object().expect("routes") {
        let slot = report["slots"][key].as_u64().expect("a slot");
        assert_eq!(slot, u64::from(key_slot(key.as_bytes())), "{key}");
        let primary = view
            .ring
            .slot_replicas(key_slot(key.as_bytes()))
            .primary()
            .expect("a primary")
            .to_owned();
        let node = cluster.node(&primary);
        assert_eq!(
            port.as_u64(),
            Some(u64::from(node.resp_addr.port())),
            "redis-py sends {key} (slot {slot}) elsewhere than its primary {primary}"
        );
        *per_node.entry(primary).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "every node owns some keys: {per_node:?}");
}

/// The README's `RedisCluster` example, run against a cluster (its port 6479 replaced).
#[tokio::test]
async fn the_readme_python_example_runs() {
    let readme = include_str!("../../README.md");
    let example = readme
        .split("**Cluster clients of other languages.**")
        .nth(1)
        .and_then(|rest| rest.split("```python\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("README has the RedisCluster example");
    let cluster = TestCluster::start_converged(3, CONVERGE, patient).await;
    let port = cluster.nodes[1].resp_addr.port().to_string();
    let script = format!(
        "{}\nassert rc.get('user:42') == 'Ada'\nassert rc.get('a') == '1'\n\
         assert keys == ['user:42'], keys\nprint('ok')\n",
        example.replace("6479", &port)
    );
    let out = python_script(&script, &[]).await;
    assert_eq!(out.stdout, "ok\n", "{}", out.stderr);
}

/// `RedisCluster` writing and reading keys in rounds while the test crashes a node: prints
/// `ROUND n` after each clean round and `READY` before the first; the line `crashed` on stdin
/// marks the crash. It then needs a clean round (every key written and read back) within the
/// recovery deadline (argv[4], seconds) and prints `RECOVERED <seconds>`.
const CRASH: &str = r#"
import sys, time, threading, redis
from redis.cluster import RedisCluster, ClusterNode
ports = [int(p) for p in sys.argv[1:4]]
deadline = float(sys.argv[4])
rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports],
                  decode_responses=True, socket_timeout=2, socket_connect_timeout=2)
keys = [f"crash:{i}" for i in range(300)]
crashed_at = []
def watch():
    if sys.stdin.readline().strip() == "crashed":
        crashed_at.append(time.monotonic())
threading.Thread(target=watch, daemon=True).start()
print("READY", flush=True)
errors, last_error, n = 0, None, 0
while True:
    n += 1
    started_after_crash = bool(crashed_at)
    clean = True
    for k in keys:
        try:
            rc.set(k, f"r{n}")
            got = rc.get(k)
            if got != f"r{n}":
                raise AssertionError(f"{k}: read {got!r} after writing r{n}")
        except Exception as e:  # redis.RedisError, RedisClusterException, AssertionError
            clean, errors, last_error = False, errors + 1, repr(e)
    if clean:
        print(f"ROUND {n}", flush=True)
    if crashed_at and clean and started_after_crash:
        print(f"RECOVERED {time.monotonic() - crashed_at[0]:.2f} errors={errors}", flush=True)
        break
    if not crashed_at and not clean:
        raise SystemExit(f"errors before the crash: {last_error}")
    if crashed_at and time.monotonic() - crashed_at[0] > deadline:
        raise SystemExit(f"no clean round within {deadline}s of the crash: {errors} errors, last {last_error}")
print("values " + ",".join(sorted(set(rc.mget_nonatomic(keys)))), flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_redis_cluster_survives_a_node_crash() {
    const RECOVERY: f64 = 20.0;
    require_redis_py().await;
    let mut cluster = TestCluster::start_converged(3, CONVERGE, patient).await;
    let mut args = resp_ports(&cluster);
    args.push(RECOVERY.to_string());
    let mut python = Command::new(python());
    python.arg("-c").arg(CRASH).args(&args);
    let lines = crash_during_rounds(&mut cluster, "n3", &mut python, INSTALL).await;
    let recovered = lines.iter().find_map(|l| l.strip_prefix("RECOVERED "));
    eprintln!("recovered after the crash: {recovered:?}");
}

/// `redis-cli` with `args`, its output.
async fn redis_cli(args: &[String], stdin: &str) -> String {
    run_child(Command::new("redis-cli").args(args), stdin, INSTALL_CLI)
        .await
        .stdout
}

#[tokio::test]
async fn redis_cli_cluster_mode_and_forwarding() {
    let cluster = TestCluster::start_converged(3, CONVERGE, patient).await;
    let port = |n: &TestNode| n.resp_addr.port().to_string();
    let cli = |node: &TestNode, cluster_mode: bool, rest: &[&str]| {
        let mut args: Vec<String> = Vec::new();
        if cluster_mode {
            args.push("-c".to_owned());
        }
        args.extend([
            "-h".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port(node),
        ]);
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        args
    };
    wait_moved(&cluster, CONVERGE).await;
    let first = &cluster.nodes[0];
    for (i, owner) in cluster.nodes.iter().enumerate() {
        let id = owner.node.config().node_id.clone();
        let key = key_owned_by(&cluster, &id, "cli:");
        let other = &cluster.nodes[(i + 1) % 3];
        // redis-cli -c through node 1, then read through another node.
        let value = format!("via-n1-{id}");
        assert_eq!(
            redis_cli(&cli(first, true, &["set", &key, &value]), "").await,
            "OK\n"
        );
        assert_eq!(
            redis_cli(&cli(other, true, &["get", &key]), "").await,
            format!("{value}\n")
        );
        // Plain redis-cli against a node that does not own the key: served by forwarding.
        let non_owner = cluster
            .nodes
            .iter()
            .find(|n| n.node.config().node_id != id)
            .expect("another node");
        let value = format!("forwarded-{id}");
        assert_eq!(
            redis_cli(&cli(non_owner, false, &["set", &key, &value]), "").await,
            "OK\n"
        );
        assert_eq!(
            redis_cli(&cli(non_owner, false, &["get", &key]), "").await,
            format!("{value}\n")
        );
        // A cluster-aware connection (as after CLUSTER SLOTS) gets -MOVED from a non-owner,
        // which redis-cli -c follows to the owner.
        let moved = redis_cli(
            &cli(non_owner, true, &[]),
            &format!("RINGCACHE ROUTING MOVED\nSET {key} moved-{id}\nGET {key}\n"),
        )
        .await;
        assert_eq!(
            moved,
            format!(
                "OK\n-> Redirected to slot [{}] located at {}\nOK\nmoved-{id}\n",
                key_slot(key.as_bytes()),
                owner.resp_addr
            ),
            "{key} owned by {id}"
        );
        assert!(
            resp_errors(non_owner, "MOVED").await.get("set") >= Some(&1.0),
            "{} answered no -MOVED for {key}",
            non_owner.node.config().node_id
        );
    }
}
