//! Fault tests with real `ringcached` processes on a broken network: three nodes on their own
//! loopback addresses (default ports: gRPC 7379, gossip 7380, HTTP 7381, cluster 7382), R = 3,
//! eviction off, fast failure detection (probe 100 ms, probe timeout 50 ms, suspicion 600 ms).
//!
//! **Partitions** are nftables rules: each test owns a table `inet ringcache_test_<name>` with a
//! chain on the `output` hook that drops `ip saddr A ip daddr B` for each cut node pair. Nodes
//! send their gossip and cluster-port traffic from their bind address, so a rule between two
//! nodes' addresses cuts exactly that pair, while the test (a client on 127.0.0.1) still reaches
//! every node. Healing deletes the table; a drop guard deletes it too (also on panic).
//! **Clock skew** runs one node under `faketime -f +3600s` (its wall clock an hour ahead, its
//! monotonic clock untouched).
//!
//! | test | fault | asserts |
//! |---|---|---|
//! | [`isolated_node_acknowledges_no_quorum_write`] | node 3 cut from nodes 1 and 2 both ways | node 3 acknowledges none of the QUORUM writes sent to it directly; the majority keeps acknowledging through the smart client; after healing all nodes see 3 Active members with one digest and every acknowledged write reads back at QUORUM |
//! | [`one_way_partition_loses_no_acknowledged_write`] | node 1 → node 2 packets dropped for 4 s | every QUORUM write acknowledged during and after reads back at QUORUM; the nodes converge to 3 Active members with one digest |
//! | [`partition_longer_than_member_removal_heals_by_itself`] | node 3 cut off until both sides have removed each other from their views (dead retention: 30 probe periods = 3 s), then 2 s more (about 6 s) | within 30 s of healing, with no operator action, all nodes see 3 Active members with one digest; writes acknowledged by the majority during the split read back at QUORUM |
//! | [`partition_of_the_seed_node_longer_than_member_removal_heals_by_itself`] | the same with node 1 (the seed the others joined through) cut off | the same |
//! | [`node_an_hour_ahead_does_not_win_last_writer_wins`] | node 3 an hour ahead (`--max-clock-drift` is 60 s) | a key written through node 3 (ONE, then QUORUM) and then through node 1 at QUORUM reads back as node 1's value at QUORUM from every node and at ONE from every replica; a QUORUM workload through the smart client loses no acknowledged write |
//!
//! Without `nft` or CAP_NET_ADMIN (or without `faketime`) a test prints why to stderr and passes
//! without running, unless `RINGCACHE_REQUIRE_NET_FAULTS=1` (set by `.ci/run`) makes that a
//! failure. Run them as root after `scripts/test-deps`:
//! `cargo test -p ringcache-server --test net_faults`.
//!
//! Addresses: three loopback addresses per test, picked free at random (127.x.y.z outside
//! 127.0.0.0/16), so tests, test runs and a node on 127.0.0.1 never meet.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringcache::{Client, Consistency};
use ringcache_proto::v1;
use ringcache_proto::v1::cache_client::CacheClient;
use ringcache_proto::v1::cluster_client::ClusterClient;
use tonic::transport::{Channel, Endpoint};

const BIN: &str = env!("CARGO_BIN_EXE_ringcached");
/// Longest wait for any condition (start-up, convergence, a value showing up).
const DEADLINE: Duration = Duration::from_secs(30);
/// Set to 1 to make missing privileges or tools a failure instead of a skip.
const REQUIRE: &str = "RINGCACHE_REQUIRE_NET_FAULTS";
/// When set, each node's stderr (RUST_LOG=info) goes to `<dir>/<test>-<node>.log`.
const LOG_DIR: &str = "RINGCACHE_NET_FAULTS_LOG_DIR";

// ---------------------------------------------------------------------------------------------
// Missing privileges or tools

/// Reports that a test cannot run: panics under `RINGCACHE_REQUIRE_NET_FAULTS=1`, otherwise
/// prints a loud notice to stderr (the test then returns).
fn cannot_run(test: &str, what: &str) {
    let message = format!(
        "net_faults::{test} NOT RUN: {what}.\n\
         These tests need nftables and faketime (`scripts/test-deps` installs them) and root \
         (CAP_NET_ADMIN) for nft. Run them as root:\n    \
         sudo -E env \"PATH=$PATH\" cargo test -p ringcache-server --test net_faults\n\
         Set {REQUIRE}=1 to make this a failure instead of a skip."
    );
    if std::env::var(REQUIRE).is_ok_and(|v| v == "1") {
        panic!("{message}");
    }
    let bar = "!".repeat(100);
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "\n{bar}\n{message}\n{bar}\n");
}

/// Whether `faketime` can run a program; reports it (see [`cannot_run`]) when not.
fn faketime_available(test: &str) -> bool {
    let status = Command::new("faketime")
        .args(["-f", "+0s", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => true,
        Ok(status) => {
            cannot_run(test, &format!("`faketime -f +0s true` failed ({status})"));
            false
        }
        Err(error) => {
            cannot_run(
                test,
                &format!("cannot run `faketime` ({error}): install the faketime package"),
            );
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// nftables

/// Why `nft -f -` failed.
#[derive(Debug)]
enum NftError {
    /// No `nft`, or not allowed to change the ruleset: the test cannot run here.
    Unavailable(String),
    /// Anything else (a ruleset bug).
    Failed(String),
}

/// Runs `nft -f -` with `script` on stdin (`nft` from the PATH, else /usr/sbin/nft: a
/// non-root PATH often lacks /usr/sbin).
fn nft(script: &str) -> Result<(), NftError> {
    let spawn = |program: &str| {
        Command::new(program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let mut child = match spawn("nft").or_else(|_| spawn("/usr/sbin/nft")) {
        Ok(child) => child,
        Err(error) => {
            return Err(NftError::Unavailable(format!(
                "cannot run `nft` ({error}): install the nftables package"
            )));
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NftError::Failed(format!("writing to nft's stdin: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| NftError::Failed(format!("waiting for nft: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        return Err(NftError::Unavailable(format!(
            "`nft` is not allowed to change the ruleset (no CAP_NET_ADMIN; not root?): {}",
            stderr.trim()
        )));
    }
    Err(NftError::Failed(format!(
        "nft -f - failed ({}): {}\nscript:\n{script}",
        output.status,
        stderr.trim()
    )))
}

/// One test's nftables table: drops packets between the node address pairs it was told to cut.
/// Dropping it deletes the table.
#[derive(Debug)]
struct Firewall {
    table: String,
    /// (saddr, daddr) pairs whose packets are dropped.
    cuts: BTreeSet<(String, String)>,
    /// Whether the table was created (and must be deleted on drop).
    created: bool,
}

impl Firewall {
    /// Creates the (empty) table `ringcache_test_<test>`, replacing any left over by an
    /// earlier run; `None` (reported, see [`cannot_run`]) without `nft` or the privilege.
    fn new(test: &str) -> Option<Self> {
        let mut firewall = Self {
            table: format!("ringcache_test_{test}"),
            cuts: BTreeSet::new(),
            created: false,
        };
        match nft(&firewall.script()) {
            Ok(()) => {
                firewall.created = true;
                Some(firewall)
            }
            Err(NftError::Unavailable(why)) => {
                cannot_run(test, &why);
                None
            }
            Err(NftError::Failed(why)) => panic!("{why}"),
        }
    }

    /// Cuts `node` from each of `others`, both directions.
    fn isolate(&mut self, node: &str, others: &[&str]) {
        for other in others {
            self.cuts.insert((node.to_owned(), (*other).to_owned()));
            self.cuts.insert(((*other).to_owned(), node.to_owned()));
        }
        self.apply();
    }

    /// Drops packets from `from` to `to` only.
    fn one_way(&mut self, from: &str, to: &str) {
        self.cuts.insert((from.to_owned(), to.to_owned()));
        self.apply();
    }

    /// Removes every cut (deletes the table).
    fn heal(&mut self) {
        self.cuts.clear();
        if let Err(error) = nft(&self.delete_script()) {
            panic!("healing the network: {error:?}");
        }
    }

    fn apply(&self) {
        if let Err(error) = nft(&self.script()) {
            panic!("applying the cuts {:?}: {error:?}", self.cuts);
        }
    }

    /// Replaces the table with one holding the current cuts (one atomic nft transaction).
    fn script(&self) -> String {
        let table = &self.table;
        let mut script = self.delete_script();
        script.push_str(&format!(
            "table inet {table} {{\n  chain output {{\n    \
             type filter hook output priority filter; policy accept;\n"
        ));
        for (from, to) in &self.cuts {
            script.push_str(&format!("    ip saddr {from} ip daddr {to} drop\n"));
        }
        script.push_str("  }\n}\n");
        script
    }

    /// Deletes the table whether or not it exists (adding an existing table is a no-op).
    fn delete_script(&self) -> String {
        let table = &self.table;
        format!("add table inet {table}\ndelete table inet {table}\n")
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        if let Err(error) = nft(&self.delete_script()) {
            eprintln!(
                "net_faults: could not delete nft table {}: {error:?}",
                self.table
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// A `ringcached` process (in its own process group, with `faketime` when skewed); killed with
/// its group on drop.
#[derive(Debug)]
struct Node {
    child: Child,
    ip: String,
    id: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        // The group: `faketime` forks the node rather than exec'ing it.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn grpc(&self) -> String {
        format!("{}:7379", self.ip)
    }
}

/// Three loopback addresses whose default ports are free, one per node of a test.
fn block() -> Vec<String> {
    (0..3)
        .map(|_| {
            ringcache_test_support::free_loopback_ip(&[7379, 7381, 7382, 6479], &[7380]).to_string()
        })
        .collect()
}

/// The address of node `i` (1-based) of `block`.
fn addr(block: &[String], i: u8) -> String {
    block[usize::from(i) - 1].clone()
}

/// Starts node `i` of `block` (id `n<i>`; nodes 2 and 3 join through node 1), under
/// `faketime -f <skew>` when given.
fn start(test: &str, block: &[String], i: u8, skew: Option<&str>) -> Node {
    let ip = addr(block, i);
    let id = format!("n{i}");
    let mut args = vec![
        "--bind".to_owned(),
        ip.clone(),
        "--node-id".to_owned(),
        id.clone(),
        "--probe-interval".to_owned(),
        "100ms".to_owned(),
        "--probe-timeout".to_owned(),
        "50ms".to_owned(),
        "--suspicion-timeout".to_owned(),
        "600ms".to_owned(),
        "--replication-factor".to_owned(),
        "3".to_owned(),
        "--max-memory".to_owned(),
        "256MiB".to_owned(),
        "--eviction-policy".to_owned(),
        "noeviction".to_owned(),
    ];
    if i > 1 {
        args.extend(["--seeds".to_owned(), format!("{}:7380", addr(block, 1))]);
    }
    let mut command = match skew {
        Some(skew) => {
            let mut command = Command::new("faketime");
            command.args(["-f", skew, BIN]);
            command
        }
        None => Command::new(BIN),
    };
    command.args(args).process_group(0).stdout(Stdio::null());
    match std::env::var_os(LOG_DIR) {
        Some(dir) => {
            let path = std::path::Path::new(&dir).join(format!("{test}-{id}.log"));
            let log = std::fs::File::create(&path).expect("create the node log");
            command.env("RUST_LOG", "info").stderr(log);
        }
        None => {
            command.env("RUST_LOG", "warn").stderr(Stdio::null());
        }
    }
    let child = command.spawn().expect("spawn ringcached");
    Node { child, ip, id }
}

/// Polls `condition` until it holds; panics naming `what` after `deadline`.
async fn wait_for(what: &str, deadline: Duration, condition: impl AsyncFnMut() -> bool) {
    ringcache_test_support::until(what, deadline, condition)
        .await
        .unwrap();
}

async fn channel(target: &str) -> Option<Channel> {
    Endpoint::from_shared(format!("http://{target}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()
}

/// A raw `Cache` client to one node (the smart client would route around it).
async fn raw_cache(node: &Node) -> CacheClient<Channel> {
    let target = node.grpc();
    let mut channel_ = None;
    wait_for(&format!("a connection to {target}"), DEADLINE, async || {
        channel_ = channel(&target).await;
        channel_.is_some()
    })
    .await;
    CacheClient::new(channel_.expect("connected"))
}

/// The node's own topology (`Cluster.GetTopology` on its client port), `None` if it does not
/// answer within 2 s.
async fn topology(node: &Node) -> Option<v1::Topology> {
    let mut client = ClusterClient::new(channel(&node.grpc()).await?);
    let request = client.get_topology(v1::GetTopologyRequest {});
    let response = tokio::time::timeout(Duration::from_secs(2), request)
        .await
        .ok()?;
    response.ok().map(tonic::Response::into_inner)
}

/// `id:STATE` of every member, for messages.
fn describe(topology: Option<&v1::Topology>) -> String {
    let Some(topology) = topology else {
        return "no answer".to_owned();
    };
    let members: Vec<String> = topology
        .members
        .iter()
        .map(|m| {
            let state = v1::NodeState::try_from(m.state)
                .map_or_else(|_| m.state.to_string(), |s| s.as_str_name().to_owned());
            format!(
                "{}@{}:{}",
                m.node_id,
                m.incarnation,
                state.trim_start_matches("NODE_STATE_")
            )
        })
        .collect();
    format!("{members:?} digest {:016x}", topology.digest)
}

fn active_ids(topology: &v1::Topology) -> BTreeSet<String> {
    topology
        .members
        .iter()
        .filter(|m| m.state == v1::NodeState::Active as i32)
        .map(|m| m.node_id.clone())
        .collect()
}

/// Whether every node answers with the same digest and exactly `n1..n<len>` as members, all
/// Active; `Err` describes every node's view.
async fn converged(nodes: &[Node]) -> Result<u64, String> {
    let mut views = Vec::new();
    for node in nodes {
        views.push(topology(node).await);
    }
    let expected: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let digest = views[0].as_ref().map(|t| t.digest);
    let agreed = views.iter().all(|view| {
        view.as_ref().is_some_and(|t| {
            Some(t.digest) == digest
                && t.members.len() == expected.len()
                && active_ids(t) == expected
        })
    });
    if agreed && let Some(digest) = digest {
        return Ok(digest);
    }
    Err(nodes
        .iter()
        .zip(&views)
        .map(|(node, view)| format!("{}: {}", node.id, describe(view.as_ref())))
        .collect::<Vec<_>>()
        .join("; "))
}

/// Waits (up to `deadline`) until [`converged`]; panics with every node's last view.
async fn wait_converged(what: &str, nodes: &[Node], deadline: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match converged(nodes).await {
            Ok(_) => return start.elapsed(),
            Err(views) => assert!(
                start.elapsed() < deadline,
                "{what}: the nodes did not converge to 3 Active members with one digest within \
                 {deadline:?}; views: {views}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A smart client (QUORUM by default, 1 s request timeout) through `seeds`.
async fn smart_client(seeds: &[&Node]) -> Client {
    let seeds: Vec<String> = seeds.iter().map(|n| n.grpc()).collect();
    Client::builder()
        .seeds(seeds)
        .request_timeout(Duration::from_secs(1))
        .default_consistency(Consistency::Quorum)
        .connect()
        .await
        .expect("connect the smart client")
}

/// Starts three nodes (node 3 under `faketime -f <skew3>` when given), waits until they are
/// converged, and returns them with a smart client that sees all three.
async fn cluster(test: &str, skew3: Option<&str>) -> (Vec<Node>, Client) {
    let block = block();
    let nodes: Vec<Node> = (1..=3)
        .map(|i| start(test, &block, i, if i == 3 { skew3 } else { None }))
        .collect();
    wait_converged("start-up", &nodes, DEADLINE).await;
    let client = smart_client(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    wait_for("3 members in the client's ring", DEADLINE, async || {
        let _ = client.refresh_topology().await;
        client.topology().ring_members().count() == 3
    })
    .await;
    (nodes, client)
}

// ---------------------------------------------------------------------------------------------
// Workloads and the checker

/// What a set of writers saw: acknowledged keys (value = key), attempts, and errors by text.
#[derive(Debug, Default)]
struct Outcome {
    acked: BTreeSet<String>,
    attempted: usize,
    errors: BTreeMap<String, usize>,
}

impl Outcome {
    fn merge(&mut self, other: Self) {
        self.acked.extend(other.acked);
        self.attempted += other.attempted;
        for (error, count) in other.errors {
            *self.errors.entry(error).or_default() += count;
        }
    }

    fn error(&mut self, error: impl std::fmt::Display) {
        let mut text = error.to_string();
        text.truncate(160);
        *self.errors.entry(text).or_default() += 1;
    }
}

/// Writers of distinct keys through the smart client, running until [`Writers::stop`] or until
/// each has written its share ([`Writers::finish`]).
#[derive(Debug)]
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<Outcome>,
}

/// Most writes per writer task while a fault lasts (keeps the read-back short).
const MAX_WRITES_PER_TASK: usize = 600;

impl Writers {
    /// 4 tasks writing up to `per_task` keys `<prefix>-<task>-<n>` = itself each, paced at one
    /// write per 5 ms.
    fn start(client: &Client, prefix: &str, per_task: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..4 {
            let client = client.clone();
            let prefix = prefix.to_owned();
            let stop = Arc::clone(&stop);
            tasks.spawn(async move {
                let mut outcome = Outcome::default();
                for i in 0..per_task {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("{prefix}-{t}-{i}");
                    outcome.attempted += 1;
                    match client.set(key.clone(), key.clone()).await {
                        Ok(_) => {
                            outcome.acked.insert(key);
                        }
                        Err(error) => outcome.error(error),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                outcome
            });
        }
        Self { stop, tasks }
    }

    /// Stops the writers and returns what they saw.
    async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.finish().await
    }

    /// Waits until every writer has written its share.
    async fn finish(mut self) -> Outcome {
        let mut outcome = Outcome::default();
        while let Some(joined) = self.tasks.join_next().await {
            outcome.merge(joined.expect("writer task"));
        }
        outcome
    }
}

/// Reads every key of `acked` back at QUORUM (value must equal the key), retrying each for up
/// to 2 s; returns `(key, what was read)` for every key that is not there.
async fn lost(client: &Client, acked: &BTreeSet<String>) -> Vec<(String, String)> {
    let reader = client.with_consistency(Consistency::Quorum);
    let keys: Vec<String> = acked.iter().cloned().collect();
    let mut tasks = tokio::task::JoinSet::new();
    for part in keys.chunks(keys.len().div_ceil(4).max(1)) {
        let part = part.to_vec();
        let reader = reader.clone();
        tasks.spawn(async move {
            let mut lost = Vec::new();
            for key in part {
                let mut value = reader.get(key.clone()).await;
                for _ in 0..20 {
                    if value.as_ref().is_ok_and(Option::is_some) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    value = reader.get(key.clone()).await;
                }
                let got = match &value {
                    Ok(Some(v)) if v.as_ref() == key.as_bytes() => continue,
                    Ok(Some(v)) => format!("{:?}", String::from_utf8_lossy(v)),
                    Ok(None) => "not found".to_owned(),
                    Err(error) => format!("error: {error}"),
                };
                lost.push((key, got));
            }
            lost
        });
    }
    let mut lost = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        lost.extend(joined.expect("reader task"));
    }
    lost.sort();
    lost
}

/// Panics if any acknowledged write is not readable at QUORUM.
async fn assert_none_lost(what: &str, client: &Client, acked: &BTreeSet<String>) {
    let lost = lost(client, acked).await;
    assert!(
        lost.is_empty(),
        "{what}: {} of {} acknowledged QUORUM writes not readable at QUORUM (key, read): {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

/// A `Set` of `key` = `value` at `consistency`, bounded to 3 s.
async fn raw_set(
    client: &mut CacheClient<Channel>,
    key: &str,
    value: &str,
    consistency: v1::Consistency,
) -> Result<u64, String> {
    let request = v1::SetRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        consistency: consistency as i32,
        ..Default::default()
    };
    match tokio::time::timeout(Duration::from_secs(3), client.set(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner().version),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err("no answer within 3 s".to_owned()),
    }
}

/// A `Get` of `key` at `consistency`, bounded to 3 s: `Ok(Some((value, version)))`.
async fn raw_get(
    client: &mut CacheClient<Channel>,
    key: &str,
    consistency: v1::Consistency,
) -> Result<Option<(String, u64)>, String> {
    let request = v1::GetRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        consistency: consistency as i32,
        tracking_id: 0,
    };
    match tokio::time::timeout(Duration::from_secs(3), client.get(request)).await {
        Ok(Ok(response)) => {
            let response = response.into_inner();
            Ok(response.found.then(|| {
                (
                    String::from_utf8_lossy(&response.value).into_owned(),
                    response.version,
                )
            }))
        }
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err("no answer within 3 s".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Node 3 cut off both ways: it must refuse every QUORUM write (it cannot reach a majority of
/// any key's R = 3 replicas), while nodes 1 and 2 keep acknowledging them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_node_acknowledges_no_quorum_write() {
    const TEST: &str = "isolated";
    let Some(mut firewall) = Firewall::new(TEST) else {
        return;
    };
    let started = Instant::now();
    let (nodes, client) = cluster(TEST, None).await;
    let mut acked = Writers::start(&client, "before", 50).finish().await.acked;

    firewall.isolate(&nodes[2].ip, &[&nodes[0].ip, &nodes[1].ip]);
    let cut_at = Instant::now();
    // Node 3's own view: the others suspect or gone.
    wait_for(
        "node 3 sees nodes 1 and 2 as not Active",
        DEADLINE,
        async || {
            topology(&nodes[2])
                .await
                .is_some_and(|t| active_ids(&t) == BTreeSet::from(["n3".to_owned()]))
        },
    )
    .await;
    let detected = cut_at.elapsed();

    // For 3.5 s (about 6 suspicion timeouts: node 3 sees the others suspect, then dead, then
    // drops them), QUORUM writes straight to node 3.
    let window_end = Instant::now() + Duration::from_secs_f32(3.5);
    let mut node3 = raw_cache(&nodes[2]).await;
    let to_node3 = tokio::spawn(async move {
        let mut outcome = Outcome::default();
        let mut n = 0;
        while Instant::now() < window_end {
            let key = format!("isolated-{n}");
            n += 1;
            outcome.attempted += 1;
            match raw_set(&mut node3, &key, &key, v1::Consistency::Quorum).await {
                Ok(_) => {
                    outcome.acked.insert(key);
                }
                Err(error) => outcome.error(error),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        outcome
    });
    // Meanwhile the majority, once its smart client no longer routes to node 3.
    let majority = smart_client(&[&nodes[0], &nodes[1]]).await;
    wait_for(
        "the majority's client drops node 3 from its ring",
        DEADLINE,
        async || {
            let _ = majority.refresh_topology().await;
            majority.topology().ring_members().count() == 2
        },
    )
    .await;
    let majority_after = cut_at.elapsed();
    let writers = Writers::start(&majority, "majority", MAX_WRITES_PER_TASK);
    tokio::time::sleep_until(window_end.into()).await;
    let majority_outcome = writers.stop().await;
    let isolated = to_node3.await.expect("the writer to node 3");
    let view3 = describe(topology(&nodes[2]).await.as_ref());

    firewall.heal();
    let converge = wait_converged("after healing", &nodes, DEADLINE).await;
    acked.extend(isolated.acked.iter().cloned());
    acked.extend(majority_outcome.acked.iter().cloned());
    let lost = lost(&client, &acked).await;
    eprintln!(
        "isolated: node 3 saw the cut after {detected:?}, the majority's client after \
         {majority_after:?}; node 3 acked {}/{} ({:?}); majority \
         acked {}/{} ({:?}); converged {converge:?} after healing; read back {} keys, {} lost; \
         total {:?}",
        isolated.acked.len(),
        isolated.attempted,
        isolated.errors,
        majority_outcome.acked.len(),
        majority_outcome.attempted,
        majority_outcome.errors,
        acked.len(),
        lost.len(),
        started.elapsed()
    );

    assert!(
        isolated.acked.is_empty(),
        "the isolated node 3 acknowledged {} of {} QUORUM writes sent to it (it cannot reach a \
         majority of any key's replicas), e.g. {:?}; errors for the others: {:?}; its view at the \
         end of the window: {view3}",
        isolated.acked.len(),
        isolated.attempted,
        isolated.acked.iter().take(5).collect::<Vec<_>>(),
        isolated.errors
    );
    assert!(
        majority_outcome.acked.len() * 10 >= majority_outcome.attempted * 9
            && !majority_outcome.acked.is_empty(),
        "the majority (nodes 1, 2) acknowledged only {} of {} QUORUM writes while node 3 was cut \
         off; errors: {:?}",
        majority_outcome.acked.len(),
        majority_outcome.attempted,
        majority_outcome.errors
    );
    assert!(
        lost.is_empty(),
        "after healing, {} of {} acknowledged QUORUM writes are not readable at QUORUM (key, \
         read): {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Only node 1 → node 2 packets dropped (UDP gossip one way; TCP between them stalls both ways)
/// for 4 s while the smart client writes: no acknowledged write may be lost, and the cluster
/// converges again after healing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_way_partition_loses_no_acknowledged_write() {
    const TEST: &str = "oneway";
    let Some(mut firewall) = Firewall::new(TEST) else {
        return;
    };
    let started = Instant::now();
    let (nodes, client) = cluster(TEST, None).await;
    let mut outcome = Writers::start(&client, "before", 50).finish().await;

    let writers = Writers::start(&client, "oneway", MAX_WRITES_PER_TASK);
    firewall.one_way(&nodes[0].ip, &nodes[1].ip);
    let cut_at = Instant::now();
    // Some of the writes must land during the cut: wait for it to last 4 s with a clock, the
    // only thing to wait for is time passing.
    tokio::time::sleep_until((cut_at + Duration::from_secs(4)).into()).await;
    let views_during = converged(&nodes).await.err();
    firewall.heal();
    outcome.merge(writers.stop().await);
    let converge = wait_converged("after healing the one-way cut", &nodes, DEADLINE).await;
    outcome.merge(Writers::start(&client, "after", 50).finish().await);
    eprintln!(
        "oneway: acked {}/{} ({:?}); views during the cut: {views_during:?}; converged \
         {converge:?} after healing; total {:?}",
        outcome.acked.len(),
        outcome.attempted,
        outcome.errors,
        started.elapsed()
    );
    assert_none_lost("one-way partition", &client, &outcome.acked).await;
}

/// Node 3 cut off until both sides have dropped each other from their views for good (dead
/// members leave the view after 30 probe periods, 3 s), then healed: the cluster must merge
/// again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_longer_than_member_removal_heals_by_itself() {
    long_split("longsplit", 3).await;
}

/// The same with node 1 cut off: the node the others joined through, which has no seeds of
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_of_the_seed_node_longer_than_member_removal_heals_by_itself() {
    long_split("longsplit_seed", 1).await;
}

/// Cuts node `victim` (1-based) off from the other two until both sides have removed each
/// other from their views, and 2 s more; heals; asserts the cluster merges by itself and loses
/// no write the majority acknowledged.
async fn long_split(test: &str, victim: usize) {
    let Some(mut firewall) = Firewall::new(test) else {
        return;
    };
    let started = Instant::now();
    let (nodes, client) = cluster(test, None).await;
    let mut acked = Writers::start(&client, "before", 50).finish().await.acked;

    let lone = &nodes[victim - 1];
    let others: Vec<&Node> = nodes.iter().filter(|n| n.id != lone.id).collect();
    let majority = smart_client(&others).await;
    let other_ips: Vec<&str> = others.iter().map(|n| n.ip.as_str()).collect();
    firewall.isolate(&lone.ip, &other_ips);
    let cut_at = Instant::now();
    let writers = Writers::start(&majority, "split", MAX_WRITES_PER_TASK);
    let ids = |t: &v1::Topology| -> BTreeSet<String> {
        t.members.iter().map(|m| m.node_id.clone()).collect()
    };
    wait_for(
        &format!(
            "both sides removed each other from their views ({} sees only itself, the others \
             do not list it)",
            lone.id
        ),
        DEADLINE,
        async || {
            let alone = topology(lone)
                .await
                .is_some_and(|t| ids(&t) == BTreeSet::from([lone.id.clone()]));
            let mut majority_ok = true;
            for node in &others {
                majority_ok &= topology(node)
                    .await
                    .is_some_and(|t| !ids(&t).contains(&lone.id));
            }
            alone && majority_ok
        },
    )
    .await;
    let removed = cut_at.elapsed();
    // Stay split 2 s longer (about 6 s in all): the partition clearly outlives the removal.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let split_outcome = writers.stop().await;
    firewall.heal();
    let split_for = cut_at.elapsed();

    let healed = Instant::now();
    let mut last = String::new();
    let mut merged = None;
    while healed.elapsed() < DEADLINE {
        match converged(&nodes).await {
            Ok(_) => {
                merged = Some(healed.elapsed());
                break;
            }
            Err(views) => last = views,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{test}: {} cut off; removal seen after {removed:?}, split for {split_for:?}; majority \
         acked {}/{} ({:?}); merged after healing: {merged:?}; total {:?}",
        lone.id,
        split_outcome.acked.len(),
        split_outcome.attempted,
        split_outcome.errors,
        started.elapsed()
    );
    assert!(
        merged.is_some(),
        "a partition of {split_for:?} cutting off {} (both sides had removed each other after \
         {removed:?}) did not heal by itself within {DEADLINE:?} of the network healing: the \
         nodes do not all see 3 Active members with one digest; last views: {last}",
        lone.id
    );
    assert!(
        !split_outcome.acked.is_empty(),
        "the majority acknowledged no write during the split: {:?}",
        split_outcome.errors
    );
    acked.extend(split_outcome.acked);
    assert_none_lost("after a long partition", &client, &acked).await;
}

/// Node 3's wall clock runs an hour ahead (more than `--max-clock-drift`, 60 s): its writes
/// must not win last-writer-wins over a later write through node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_an_hour_ahead_does_not_win_last_writer_wins() {
    const TEST: &str = "skew";
    if !faketime_available(TEST) {
        return;
    }
    let started = Instant::now();
    let (nodes, client) = cluster(TEST, Some("+3600s")).await;
    let mut node1 = raw_cache(&nodes[0]).await;
    let mut node3 = raw_cache(&nodes[2]).await;
    let key = "skewed-key";
    // "later", or node 3 refusing because of its clock.
    type Read<V, E> = Result<Option<(V, u64)>, E>;
    fn acceptable<V: PartialEq<str>, E: std::fmt::Debug>(
        (node, _, read): &(String, &str, Read<V, E>),
    ) -> bool {
        match read {
            Ok(Some((value, _))) => value == "later",
            Err(error) => node == "n3" && format!("{error:?}").contains("clock skew"),
            Ok(None) => false,
        }
    }
    let through3_one = raw_set(&mut node3, key, "node3-one", v1::Consistency::One).await;
    let through3_quorum = raw_set(&mut node3, key, "node3-quorum", v1::Consistency::Quorum).await;
    let later = raw_set(&mut node1, key, "later", v1::Consistency::Quorum).await;
    assert!(
        later.is_ok(),
        "the QUORUM write through node 1 (with its correct clock) was refused: {later:?}; \
         before it, through node 3 (an hour ahead): ONE {through3_one:?}, QUORUM \
         {through3_quorum:?}"
    );

    // Every QUORUM read (from each node) and every ONE read (each node is a replica) must
    // return "later" within 10 s, except that node 3 may refuse to serve ("clock skew": once it
    // notices its clock is off it serves nothing until NTP fixes it). Node 3's own values never
    // come back.
    let mut raws = Vec::new();
    for node in &nodes {
        raws.push(raw_cache(node).await);
    }
    let start = Instant::now();
    let mut reads;
    loop {
        reads = Vec::new();
        for (node, raw) in nodes.iter().zip(raws.iter_mut()) {
            for consistency in [v1::Consistency::Quorum, v1::Consistency::One] {
                let read = raw_get(raw, key, consistency).await;
                reads.push((node.id.clone(), consistency.as_str_name(), read));
            }
        }
        let all_later = reads.iter().all(acceptable);
        if all_later || start.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wrong: Vec<_> = reads.iter().filter(|read| !acceptable(read)).collect();

    let outcome = Writers::start(&client, "skew", 50).finish().await;
    let lost = lost(&client, &outcome.acked).await;
    eprintln!(
        "skew: through node 3 ONE {through3_one:?}, QUORUM {through3_quorum:?}; through node 1 \
         QUORUM {later:?}; reads (node, consistency, (value, version)): {reads:?}; workload \
         acked {}/{} ({:?}), {} lost; total {:?}",
        outcome.acked.len(),
        outcome.attempted,
        outcome.errors,
        lost.len(),
        started.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "a node an hour ahead won last-writer-wins: after writes through node 3 (ONE: \
         {through3_one:?}, QUORUM: {through3_quorum:?}) and then \"later\" through node 1 at \
         QUORUM ({later:?}), these reads did not return \"later\" within 10 s (node, consistency, \
         (value, version) or error): {wrong:?}"
    );
    assert!(
        lost.is_empty(),
        "with node 3 an hour ahead, {} of {} acknowledged QUORUM writes are not readable at \
         QUORUM (key, read): {:?}; write errors: {:?}",
        lost.len(),
        outcome.acked.len(),
        &lost[..lost.len().min(10)],
        outcome.errors
    );
}
