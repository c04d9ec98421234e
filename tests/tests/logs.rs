//! Several nodes in one process (as in these tests and the simulation) each log inside their own
//! `node{id=...}` span: every line of a node's tasks, spawned ones and gRPC requests included,
//! names the node it comes from. The lines are captured as JSON by a subscriber of this test
//! binary.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ringcache_server::logging::NODE_SPAN_TARGET;
use ringcache_tests::{TestCluster, wait_until};
use serde_json::Value;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Everything the subscriber wrote, line by line.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Capture {
    /// The global capture: installed once for this test binary.
    fn install() -> &'static Capture {
        static CAPTURE: OnceLock<Capture> = OnceLock::new();
        CAPTURE.get_or_init(|| {
            let capture = Capture::default();
            let filter = EnvFilter::new(format!(
                "warn,ringcache_server=debug,{NODE_SPAN_TARGET}=error"
            ));
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(capture.clone())
                .init();
            capture
        })
    }

    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .expect("UTF-8 log lines")
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    /// Whether node `node` logged `message` about member `member`.
    fn has(&self, node: &str, message: &str, member: &str) -> bool {
        self.lines().iter().any(|line| {
            line["span"]["id"] == node
                && line["fields"]["message"] == message
                && line["fields"]["member"] == member
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_every_node_in_one_process_names_its_node() {
    let capture = Capture::install();
    let mut cluster = TestCluster::start_converged(3, Duration::from_secs(20), |_, _| {}).await;
    // Requests (and the replication and forwarding tasks they spawn) log inside the span too.
    let client = ringcache::Client::connect(cluster.grpc_targets())
        .await
        .expect("connect");
    for i in 0..50 {
        client.set(format!("key-{i}"), "v").await.expect("write");
    }

    cluster.take("n3").crash().await.expect("crash n3");
    wait_until(Duration::from_secs(20), || async {
        ["n1", "n2"]
            .iter()
            .all(|node| capture.has(node, "member declared dead", "n3"))
    })
    .await
    .expect("n1 and n2 log n3's death");

    let mut n2 = cluster.take("n2");
    n2.node.leave();
    n2.wait_stopped().await.expect("n2 drains and stops");
    wait_until(Duration::from_secs(20), || async {
        capture.has("n1", "member left", "n2")
    })
    .await
    .expect("n1 logs n2's leave");
    cluster.take("n1").stop().await.expect("stop n1");

    let lines = capture.lines();
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for line in &lines {
        let text = line.to_string();
        assert!(!text.contains("Some("), "a Debug Option: {text}");
        let target = line["target"].as_str().unwrap_or_default();
        if !(target.starts_with("ringcache_server") || target.starts_with("foca")) {
            continue;
        }
        let node = line["span"]["id"].as_str();
        assert!(
            line["span"]["name"] == "node" && matches!(node, Some("n1" | "n2" | "n3")),
            "a node's line outside its span: {text}"
        );
        *per_node.entry(node.unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "every node logged: {per_node:?}");
    // Each node's own story is in its own span.
    for (node, message) in [
        ("n2", "node leaving"),
        ("n2", "node stopped"),
        ("n1", "node stopped"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l["span"]["id"] == node && l["fields"]["message"] == message),
            "{node} did not log {message:?}"
        );
    }
}
