//! Node.js's ioredis against the RESP port: `Redis` against one node, and `Cluster` against a
//! 3-node cluster given one seed node, also while a node crashes.
//!
//! The nodes run in this process; each client is a `node` child process (the script passed with
//! `-e`), bounded by a timeout, its output printed when it fails
//! ([`ringcache_tests::resp::run_child`]). ioredis is the one `scripts/test-deps` installs with
//! `npm ci` from `tests/node/package-lock.json` into `<cargo target dir>/node-clients`, found
//! through `NODE_PATH`; `node` is `$RINGCACHE_TEST_NODE` or the one on `PATH`. A missing `node`
//! or ioredis fails the test with the command that installs it (never a skip).

use std::collections::BTreeMap;
use std::time::Duration;

use ringcache_proto::placement::key_slot;
use ringcache_tests::resp::{
    Finished, SCRIPT_DEADLINE, crash_during_rounds, resp_commands, resp_errors, resp_ports,
    run_child, target_dir, wait_moved,
};
use ringcache_tests::{TestCluster, patient};
use tokio::process::Command;

/// How long a cluster may take to converge (or settle). The clusters detect failures slowly
/// ([`patient`]), so a loaded machine does not make a node refuse writes for want of a majority
/// mid-test: these tests check the client, not the detector.
const CONVERGE: Duration = Duration::from_secs(30);
/// How to install what the tests need.
const INSTALL: &str = "run scripts/test-deps (with the same CARGO_TARGET_DIR): it installs \
    nodejs and npm with apt-get when missing, and ioredis from tests/node/package-lock.json with \
    `npm ci` into <target>/node-clients; or point RINGCACHE_TEST_NODE at another node binary";

/// A `node` command that finds the ioredis of `<target>/node-clients` (before any `NODE_PATH`
/// of the environment).
fn node() -> Command {
    let program = std::env::var("RINGCACHE_TEST_NODE").unwrap_or_else(|_| "node".to_owned());
    let mut paths = vec![target_dir().join("node-clients/node_modules")];
    if let Some(inherited) = std::env::var_os("NODE_PATH") {
        paths.extend(std::env::split_paths(&inherited));
    }
    let mut command = Command::new(program);
    command.env(
        "NODE_PATH",
        std::env::join_paths(paths).expect("NODE_PATH entries without separators"),
    );
    command
}

/// Checks that `node` runs and finds ioredis; panics with the install command otherwise (never
/// skips).
async fn require_ioredis() {
    let check = "require('ioredis')";
    let mut command = node();
    command.args(["-e", check]).kill_on_drop(true);
    let output = tokio::time::timeout(SCRIPT_DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not finish within {SCRIPT_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}; {INSTALL}"));
    assert!(
        output.status.success(),
        "{command:?} finds no ioredis: {}; {INSTALL}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a Node.js script with `args` (as `process.argv.slice(1)`); panics with its output
/// unless it exits 0.
async fn node_script(script: &str, args: &[String]) -> Finished {
    require_ioredis().await;
    run_child(node().arg("-e").arg(script).args(args), "", INSTALL).await
}

/// What every script starts with: ioredis, asserts, and `main` run with failures printed and
/// the exit code 1.
const PRELUDE: &str = r#"
"use strict";
const Redis = require("ioredis");
const assert = require("node:assert/strict");
const args = process.argv.slice(1);
// For Cluster: fetching and reading CLUSTER SLOTS (about 11,000 runs at 3 nodes) took ioredis
// 25-120 ms from an idle debug build, within its default 1 s slotsRefreshTimeout, which a
// loaded machine may exceed.
const slotsRefreshTimeout = 10000;
function main(body) {
  body().then(
    () => process.exit(0),
    (e) => { console.error(e); process.exit(1); },
  );
}
"#;

/// `Redis` against one node: the basic commands, an error reply, a binary-safe key and value,
/// pipelines, a transaction (refused), and 1000 keys written through node 1 and read back
/// through every node.
const STANDALONE: &str = r#"
main(async () => {
  const ports = args.map(Number);
  const opts = { host: "127.0.0.1", commandTimeout: 10000, maxRetriesPerRequest: 1 };
  const r = new Redis({ ...opts, port: ports[0] });
  assert.equal(await r.ping(), "PONG");
  assert.equal(await r.set("js:a", "1"), "OK");
  assert.equal(await r.get("js:a"), "1");
  assert.equal(await r.set("js:a", "2", "NX"), null);
  assert.deepEqual(await r.mget("js:a", "js:missing"), ["1", null]);
  assert.equal(await r.incr("js:n"), 1);
  assert.equal(await r.incrby("js:n", 41), 42);
  assert.equal(await r.get("js:n"), "42");
  assert.equal(await r.expire("js:a", 100), 1);
  const ttl = await r.ttl("js:a");
  assert.ok(90 <= ttl && ttl <= 100, `ttl ${ttl}`);
  assert.equal(await r.ttl("js:n"), -1);
  assert.equal(await r.ttl("js:missing"), -2);
  assert.equal(await r.del("js:a", "js:n", "js:missing"), 2);
  assert.equal(await r.get("js:a"), null);

  // An error reply rejects with ReplyError and Redis's text; the connection stays usable.
  assert.equal(await r.set("js:text", "abc"), "OK");
  await assert.rejects(r.incr("js:text"), (e) => {
    assert.equal(e.name, "ReplyError");
    assert.equal(e.message, "ERR value is not an integer or out of range");
    return true;
  });
  assert.equal(await r.get("js:text"), "abc");

  // Binary-safe: every byte value in a key and in a value, and a 1 MiB value.
  const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const key = Buffer.concat([Buffer.from("js:bin:"), bytes]);
  assert.equal(await r.set(key, Buffer.concat([bytes, bytes])), "OK");
  assert.ok((await r.getBuffer(key)).equals(Buffer.concat([bytes, bytes])));
  assert.equal(await r.strlen(key), 512);
  const big = Buffer.alloc(1 << 20, "\r\n$*");
  assert.equal(await r.set("js:big", big), "OK");
  assert.ok((await r.getBuffer("js:big")).equals(big));
  assert.equal(await r.del(key, "js:big"), 2);

  // A pipeline (no MULTI): replies in order, an error reply in its place.
  const results = await r.pipeline()
    .set("js:p1", "x").set("js:p2", "y").incr("js:p3")
    .mget("js:p1", "js:p2", "js:p3").incr("js:p1").del("js:p1")
    .exec();
  assert.deepEqual(results.map(([e, v]) => (e ? e.message : v)), [
    "OK", "OK", 1, ["x", "y", "1"], "ERR value is not an integer or out of range", 1,
  ]);
  // ringcache has no transactions: MULTI is refused, so is every command until EXEC, and
  // EXEC answers EXECABORT: none of them ran.
  await assert.rejects(r.multi().set("js:t", "1").exec(), (e) => {
    assert.match(e.message, /EXECABORT/);
    return true;
  });
  assert.equal(await r.get("js:t"), null);
  assert.equal(await r.ping(), "PONG");

  // 1000 keys through node 1 (one pipeline), read back through every node.
  const keys = Array.from({ length: 1000 }, (_, i) => `js:k:${i}`);
  const pipe = r.pipeline();
  keys.forEach((k, i) => pipe.set(k, `v${i}`));
  assert.ok((await pipe.exec()).every(([e, v]) => !e && v === "OK"));
  const expected = keys.map((_, i) => `v${i}`);
  for (const port of ports) {
    const other = new Redis({ ...opts, port });
    assert.deepEqual(await Promise.all(keys.map((k) => other.get(k))), expected, `port ${port}`);
    assert.deepEqual(await other.mget(keys), expected, `port ${port}`);
    other.disconnect();
  }
  await r.quit();
  console.log("ok");
});
"#;

#[tokio::test]
async fn ioredis_against_one_node() {
    let cluster = TestCluster::start_converged(3, CONVERGE, patient).await;
    let script = format!("{PRELUDE}{STANDALONE}");
    let out = node_script(&script, &resp_ports(&cluster)).await;
    assert_eq!(out.stdout, "ok\n", "{}", out.stderr);
}

/// The README's ioredis example, run against a cluster (its port 6479 replaced).
#[tokio::test]
async fn the_readme_ioredis_example_runs() {
    let readme = include_str!("../../README.md");
    let example = readme
        .split("**Cluster clients of other languages.**")
        .nth(1)
        .and_then(|rest| rest.split("```js\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("README has the ioredis example");
    let cluster = TestCluster::start_converged(3, CONVERGE, patient).await;
    let port = cluster.nodes[1].resp_addr.port().to_string();
    let script = format!(
        "{PRELUDE}main(async () => {{\n{}\nassert.equal(await cluster.get('user:42'), 'Ada');\n\
         assert.deepEqual([name, mail], ['Ada', 'ada@example.org']);\n\
         await cluster.quit();\nconsole.log('ok');\n}});\n",
        example.replace("6479", &port)
    );
    let out = node_script(&script, &[]).await;
    assert_eq!(out.stdout, "ok\n", "{}", out.stderr);
}

/// `Cluster` given one seed node (argv: the seed's port, then every node's): discovery, 200
/// keys, hash-tagged MSET/MGET and a one-slot pipeline, ioredis's slots against `CLUSTER
/// KEYSLOT`, an MGET across slots (served: ioredis reads `CLUSTER SLOTS` on a separate
/// short-lived connection, so its data connections are plain ones, served by forwarding). Then,
/// on connections told `RINGCACHE ROUTING MOVED`: `-CROSSSLOT` across slots, and a `-MOVED`
/// ioredis follows after the test spoiled its map of one slot. Prints each key's node (port)
/// and slot as ioredis routes them, and the redirection, for the test to check against the
/// ring and the nodes' counters.
const CLUSTER: &str = r#"
// The slot function ioredis routes by (its dependency).
const slotOf = require("cluster-key-slot");
main(async () => {
  const [seed, ...ports] = args.map(Number);
  const cluster = new Redis.Cluster([{ host: "127.0.0.1", port: seed }], {
    slotsRefreshTimeout,
    redisOptions: { commandTimeout: 10000 },
  });
  await new Promise((resolve, reject) => {
    cluster.once("ready", resolve);
    cluster.once("error", reject);
  });
  const found = cluster.nodes("master").map((n) => n.options.port).sort((a, b) => a - b);
  assert.deepEqual(found, [...ports].sort((a, b) => a - b));
  assert.equal(cluster.nodes("slave").length, 0);
  const portOf = (slot) => Number(cluster.slots[slot][0].split(":").pop());

  const keys = Array.from({ length: 200 }, (_, i) => `jsc:${i}`);
  for (const [i, k] of keys.entries()) assert.equal(await cluster.set(k, `v${i}`), "OK", k);
  for (const [i, k] of keys.entries()) assert.equal(await cluster.get(k), `v${i}`, k);
  assert.deepEqual(
    await Promise.all(keys.map((k) => cluster.get(k))),
    keys.map((_, i) => `v${i}`),
  );

  // Hash tags: one slot, so plain MSET/MGET and a pipeline work.
  const tagged = {
    "{user:7}:name": "Ada", "{user:7}:mail": "ada@example.org", "{user:7}:age": "36",
  };
  assert.equal(await cluster.mset(tagged), "OK");
  assert.deepEqual(await cluster.mget(Object.keys(tagged)), Object.values(tagged));
  const piped = await cluster.pipeline()
    .incr("{user:7}:visits").incr("{user:7}:visits").get("{user:7}:name").exec();
  assert.deepEqual(piped, [[null, 1], [null, 2], [null, "Ada"]]);
  assert.equal(await cluster.del(...Object.keys(tagged), "{user:7}:visits"), 4);

  // ioredis's slot of a key is the server's.
  const samples = keys.slice(0, 50).concat(
    Object.keys(tagged), ["{}", "{}x", "a{}b", "{a}{b}", "x{y", "}{z}", ""],
  );
  for (const k of samples) assert.equal(slotOf(k), await cluster.cluster("KEYSLOT", k), k);
  const routes = {}, slots = {};
  for (const k of keys) {
    slots[k] = slotOf(k);
    routes[k] = portOf(slots[k]);
  }

  // Keys of two nodes in one MGET: ioredis sends it to the first key's node, which serves it
  // (a plain connection); Redis Cluster, and a connection that asked for the map, refuse it.
  const [a, b] = [keys[0], keys.find((k) => routes[k] !== routes[keys[0]])];
  assert.deepEqual(await cluster.mget(a, b), ["v0", `v${keys.indexOf(b)}`]);

  // From here on every node answers a key it is not the primary of with -MOVED, and keys of
  // several slots with -CROSSSLOT, as it does a connection that asked for the map.
  for (const node of cluster.nodes("master")) {
    assert.equal(await node.call("RINGCACHE", "ROUTING", "MOVED"), "OK");
  }
  assert.equal(await cluster.get(a), "v0");
  await assert.rejects(cluster.mget(a, b), (e) => {
    assert.equal(e.message, "CROSSSLOT Keys in request don't hash to the same slot");
    return true;
  });
  // Spoil ioredis's map of a's slot: the wrong node's -MOVED sends it to the owner, and its
  // map is right again, also after the refresh the redirection started.
  const slot = slots[a], owner = cluster.slots[slot][0];
  const wrong = cluster.nodes("master").map((n) => `${n.options.host}:${n.options.port}`)
    .find((k) => k !== owner);
  cluster.slots[slot] = [wrong];
  assert.equal(await cluster.get(a), "v0");
  assert.equal(cluster.slots[slot][0], owner);
  await new Promise((resolve, reject) => {
    cluster.refreshSlotsCache((e) => (e ? reject(e) : resolve()));
  });
  assert.equal(cluster.slots[slot][0], owner);
  const moved = { key: a, from: Number(wrong.split(":").pop()), to: portOf(slot) };
  await cluster.quit();
  console.log(JSON.stringify({ routes, slots, moved }));
});
"#;

#[tokio::test]
async fn ioredis_cluster_discovers_and_routes_directly() {
    let cluster = TestCluster::start_converged(3, CONVERGE, patient).await;
    // Past the settle window, so a node told RINGCACHE ROUTING MOVED answers -MOVED.
    wait_moved(&cluster, CONVERGE).await;
    let before = Counters::of(&cluster).await;
    let seed = cluster.nodes[1].resp_addr.port().to_string();
    let mut args = vec![seed];
    args.extend(resp_ports(&cluster));
    let out = node_script(&format!("{PRELUDE}{CLUSTER}"), &args).await;
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    let port_of = |id: &str| u64::from(cluster.node(id).resp_addr.port());

    // ioredis sends every key to its slot's primary...
    let view = cluster.nodes[0].node.view();
    let mut owned = BTreeMap::<u64, f64>::new();
    for (key, port) in report["routes"].as_object().expect("routes") {
        let slot = key_slot(key.as_bytes());
        assert_eq!(
            report["slots"][key].as_u64(),
            Some(u64::from(slot)),
            "{key}"
        );
        let primary = view.ring.slot_replicas(slot).primary().expect("a primary");
        assert_eq!(
            port.as_u64(),
            Some(port_of(primary)),
            "ioredis sends {key} (slot {slot}) elsewhere than its primary {primary}"
        );
        *owned.entry(port_of(primary)).or_default() += 1.0;
    }
    assert_eq!(owned.len(), 3, "every node owns some keys: {owned:?}");
    // ...and each node received exactly the SETs of the keys it owns: none went elsewhere.
    let after = Counters::of(&cluster).await;
    for (port, keys) in &owned {
        let sets = after[port].commands_since(&before[port], "set");
        assert_eq!(sets, *keys, "SETs received by the node on port {port}");
    }
    // The one -MOVED is the one the test provoked, from the node ioredis was wrongly sent to,
    // and it led to the slot's primary.
    let moved = &report["moved"];
    let key = moved["key"].as_str().expect("the redirected key");
    let primary = view
        .ring
        .slot_replicas(key_slot(key.as_bytes()))
        .primary()
        .expect("a primary");
    assert_eq!(moved["to"].as_u64(), Some(port_of(primary)), "{moved}");
    for (port, counters) in &after {
        let expected = if moved["from"].as_u64() == Some(*port) {
            1.0
        } else {
            0.0
        };
        assert_eq!(
            counters.moved_since(&before[port]),
            expected,
            "-MOVED sent by the node on port {port}: {:?}",
            counters.moved
        );
    }
}

/// What a node counted on its RESP port, by command.
struct Counters {
    /// Commands received.
    commands: BTreeMap<String, f64>,
    /// `-MOVED` replies sent.
    moved: BTreeMap<String, f64>,
}

impl Counters {
    /// Every node's, by its RESP port.
    async fn of(cluster: &TestCluster) -> BTreeMap<u64, Self> {
        let mut all = BTreeMap::new();
        for node in &cluster.nodes {
            let counters = Self {
                commands: resp_commands(node).await,
                moved: resp_errors(node, "MOVED").await,
            };
            all.insert(u64::from(node.resp_addr.port()), counters);
        }
        all
    }

    /// The `command`s received since `before`.
    fn commands_since(&self, before: &Self, command: &str) -> f64 {
        let count = |c: &Self| c.commands.get(command).copied().unwrap_or(0.0);
        count(self) - count(before)
    }

    /// The `-MOVED` replies (to any command) sent since `before`.
    fn moved_since(&self, before: &Self) -> f64 {
        self.moved.values().sum::<f64>() - before.moved.values().sum::<f64>()
    }
}

/// `Cluster` writing and reading keys in rounds while the test crashes a node (argv: the three
/// ports, the recovery deadline in seconds, the crashed node's port), by the protocol of
/// [`crash_during_rounds`]: `READY`, `ROUND n`, `crashed` on stdin, `RECOVERED <seconds>`,
/// `values ...`; before the values, `MAP <seconds>` once ioredis's map no longer names the
/// crashed node.
const CRASH: &str = r#"
const { once } = require("node:events");
main(async () => {
  const ports = args.slice(0, 3).map(Number);
  const deadline = Number(args[3]) * 1000;
  const gone = `127.0.0.1:${args[4]}`;
  const cluster = new Redis.Cluster(ports.map((port) => ({ host: "127.0.0.1", port })), {
    slotsRefreshTimeout,
    // ioredis's data connections never ask for the map, so the nodes serve them by forwarding
    // and never answer -MOVED: without a periodic refresh nothing tells ioredis that the map
    // changed once its connection to the crashed node is gone (README: cluster clients).
    slotsRefreshInterval: 1000,
    redisOptions: { commandTimeout: 2000, connectTimeout: 2000, maxRetriesPerRequest: 1 },
  });
  await new Promise((resolve, reject) => {
    cluster.once("ready", resolve);
    cluster.once("error", reject);
  });
  // Reconnections and refreshes that fail while the node is down: counted by the rounds.
  cluster.on("error", () => {});
  const keys = Array.from({ length: 300 }, (_, i) => `crash:${i}`);
  let crashedAt = null, input = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    input += chunk;
    if (crashedAt === null && input.split("\n").includes("crashed")) crashedAt = performance.now();
  });
  console.log("READY");
  let errors = 0, lastError = null;
  for (let n = 1; ; n++) {
    const startedAfterCrash = crashedAt !== null;
    let clean = true;
    for (const k of keys) {
      try {
        await cluster.set(k, `r${n}`);
        const got = await cluster.get(k);
        if (got !== `r${n}`) throw new Error(`${k}: read ${got} after writing r${n}`);
      } catch (e) {
        clean = false;
        errors += 1;
        lastError = String(e);
      }
    }
    if (clean) console.log(`ROUND ${n}`);
    if (crashedAt !== null && clean && startedAfterCrash) {
      const seconds = ((performance.now() - crashedAt) / 1000).toFixed(2);
      console.log(`RECOVERED ${seconds} errors=${errors}`);
      break;
    }
    if (crashedAt === null && !clean) throw new Error(`errors before the crash: ${lastError}`);
    if (crashedAt !== null && performance.now() - crashedAt > deadline) {
      throw new Error(
        `no clean round within ${deadline} ms of the crash: ${errors} errors, last ${lastError}`,
      );
    }
  }
  // The map ioredis re-reads no longer names the crashed node once the ring has dropped it.
  while (cluster.slots.some((owners) => !owners || owners[0] === gone)) {
    const left = deadline - (performance.now() - crashedAt);
    const signal = AbortSignal.timeout(Math.max(Math.ceil(left), 0));
    await once(cluster, "refresh", { signal }).catch(() => {
      throw new Error(`the map still names ${gone} ${deadline} ms after the crash`);
    });
  }
  console.log(`MAP ${((performance.now() - crashedAt) / 1000).toFixed(2)}`);
  const values = await Promise.all(keys.map((k) => cluster.get(k)));
  console.log("values " + [...new Set(values)].sort().join(","));
  cluster.disconnect();
});
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ioredis_cluster_survives_a_node_crash() {
    const RECOVERY: f64 = 20.0;
    require_ioredis().await;
    let mut cluster = TestCluster::start_converged(3, CONVERGE, patient).await;
    let mut args = resp_ports(&cluster);
    args.push(RECOVERY.to_string());
    args.push(cluster.node("n3").resp_addr.port().to_string());
    let mut node = node();
    node.arg("-e").arg(format!("{PRELUDE}{CRASH}")).args(&args);
    let lines = crash_during_rounds(&mut cluster, "n3", &mut node, INSTALL).await;
    let recovered = lines.iter().find_map(|l| l.strip_prefix("RECOVERED "));
    let map = lines.iter().find_map(|l| l.strip_prefix("MAP "));
    assert!(map.is_some(), "{lines:#?}");
    eprintln!("recovered after the crash: {recovered:?}; map without the node after {map:?} s");
}
