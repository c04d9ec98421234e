//! What `ringcached` logs, read as an operator reads it: real processes on 127.0.0.1 with every
//! port 0 (addresses are taken from the logs themselves), fast failure detection, JSON lines.
//!
//! A three-node cluster where one node is killed and comes back and another is drained tells
//! its story at INFO: joins, the node's own states, suspicion, death, rejoin, leave, rebalances
//! with counts. Every JSON line names its node; no line carries ANSI escapes when stderr is not a
//! terminal, or a Debug `Some(...)`. `LOGS_DUMP=1 cargo test -p ringcache-server --test logs --
//! --nocapture` prints the lines of n1 and the restarted n3, to read the story.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ringcached");
/// Longest wait for one expected line.
const DEADLINE: Duration = Duration::from_secs(20);

/// A `ringcached` process whose stderr lines are collected as they come; killed on drop.
struct Logged {
    id: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Logged {
    /// Starts node `id` with JSON logs at INFO, joining through `seed` (a gossip address).
    fn start(id: &str, seed: Option<&str>) -> Self {
        let mut command = Command::new(BIN);
        command.args([
            "--bind",
            "127.0.0.1",
            "--node-id",
            id,
            "--log-format",
            "json",
        ]);
        for port in [
            "--grpc-port",
            "--http-port",
            "--gossip-port",
            "--cluster-port",
            "--resp-port",
        ] {
            command.args([port, "0"]);
        }
        command.args([
            "--probe-interval",
            "100ms",
            "--probe-timeout",
            "50ms",
            "--suspicion-timeout",
            "600ms",
        ]);
        if let Some(seed) = seed {
            command.args(["--seeds", seed]);
        }
        // n2 has a zone (from the environment), so member lines show one.
        if id == "n2" {
            command.env("RINGCACHE_ZONE", "zone-b");
        } else {
            command.env_remove("RINGCACHE_ZONE");
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringcached");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = std::thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    lines.lock().unwrap().push(line);
                }
            }
        });
        Self {
            id: id.to_owned(),
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// The first JSON line whose message is `message` and whose fields hold every
    /// `(field, value)` of `with` (compared as text), waiting up to [`DEADLINE`].
    fn wait_for(&self, message: &str, with: &[(&str, &str)]) -> Value {
        self.wait_for_any(&[message], with)
    }

    /// [`Logged::wait_for`] with any of `messages`.
    fn wait_for_any(&self, messages: &[&str], with: &[(&str, &str)]) -> Value {
        let start = Instant::now();
        loop {
            if let Some(found) = self.find(messages, with) {
                return found;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{}: none of {messages:?} with {with:?} within {DEADLINE:?}; its log:\n{}",
                self.id,
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn find(&self, messages: &[&str], with: &[(&str, &str)]) -> Option<Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| {
                let fields = &line["fields"];
                messages.iter().any(|m| fields["message"] == *m)
                    && with
                        .iter()
                        .all(|(key, value)| text(&fields[*key]) == *value)
            })
    }

    /// A field of the first line with `message`, as text.
    fn field(&self, message: &str, field: &str) -> String {
        text(&self.wait_for(message, &[])["fields"][field])
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; returns whether it exited 0, and all its lines.
    fn finish(mut self) -> (bool, Vec<String>) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for ringcached") {
                break status;
            }
            assert!(start.elapsed() < DEADLINE, "{} did not exit", self.id);
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the log reader");
        }
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        (status.success(), lines)
    }
}

/// A JSON value as text: strings without quotes, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every line of node `id`: one JSON object in the node's span, no ANSI escape, no `Some(`.
fn check_every_line(id: &str, lines: &[String]) {
    assert!(!lines.is_empty(), "{id} logged nothing");
    for line in lines {
        assert!(!line.contains('\u{1b}'), "{id}: an ANSI escape in {line}");
        assert!(!line.contains("Some("), "{id}: a Debug Option in {line}");
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{id}: not JSON ({e}): {line}"));
        assert_eq!(
            (value["span"]["name"].as_str(), value["span"]["id"].as_str()),
            (Some("node"), Some(id)),
            "{id}: a line without the node span: {line}"
        );
        assert_eq!(value["spans"][0]["id"].as_str(), Some(id), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_tells_its_story_at_info_with_the_node_id_on_every_json_line() {
    let n1 = Logged::start("n1", None);
    let seed = n1.field("gossip started", "gossip");
    n1.wait_for("node active", &[]);
    let n2 = Logged::start("n2", Some(&seed));
    let n3 = Logged::start("n3", Some(&seed));
    for joiner in [&n2, &n3] {
        joiner.wait_for("node joining", &[]);
        joiner.wait_for("rebalance started", &[("kind", "pull")]);
        joiner.wait_for("node active", &[]);
        n1.wait_for("member active", &[("member", &joiner.id)]);
    }
    // A member's zone is on its lines when it has one, and absent otherwise.
    let zoned = n1.wait_for("member active", &[("member", "n2")]);
    assert_eq!(text(&zoned["fields"]["zone"]), "zone-b", "{zoned}");
    let plain = n1.wait_for("member active", &[("member", "n3")]);
    assert!(plain["fields"].get("zone").is_none(), "{plain}");
    // Data, so rebalances have something to move.
    let grpc = n1.field("ringcached serving", "grpc");
    let client = ringcache::Client::connect([grpc.as_str()])
        .await
        .expect("connect to n1");
    for i in 0..100 {
        client
            .set(format!("key-{i}"), "value")
            .await
            .expect("write");
    }

    // n3 dies: the survivors suspect it, then declare it dead (a node that reads two views at
    // once may see it dead without the suspicion between).
    let incarnation =
        text(&n1.wait_for("member active", &[("member", "n3")])["fields"]["incarnation"]);
    let mut n3 = n3;
    n3.child.kill().expect("SIGKILL n3");
    let (_, n3_lines) = n3.finish();
    for survivor in [&n1, &n2] {
        survivor.wait_for("member declared dead", &[("member", "n3")]);
    }
    assert!(
        [&n1, &n2].iter().any(|survivor| survivor
            .find(&["member suspected"], &[("member", "n3")])
            .is_some()),
        "nobody logged the suspicion of n3"
    );
    // ...and comes back as a new incarnation.
    let n3 = Logged::start("n3", Some(&seed));
    n3.wait_for("node active", &[]);
    let rejoined = n1.wait_for("member rejoined", &[("member", "n3")]);
    assert_ne!(text(&rejoined["fields"]["incarnation"]), incarnation);

    // n2 is drained: it says it leaves and hands its data off; the others see it leave.
    n2.signal("-TERM");
    n2.wait_for("node leaving", &[("reason", "shutdown")]);
    // Its data goes to the others; the line counts what was sent.
    let handed = n2.wait_for_any(
        &[
            "rebalance finished",
            "rebalance incomplete; some keys were not acknowledged",
        ],
        &[("kind", "hand_off")],
    );
    assert!(
        handed["fields"]["keys_sent"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{handed}"
    );
    n2.wait_for("node stopped", &[]);
    for survivor in [&n1, &n3] {
        survivor.wait_for("member left", &[("member", "n2")]);
    }
    let (clean, n2_lines) = n2.finish();
    assert!(clean, "n2 exits 0 after a drain");

    n1.signal("-TERM");
    n3.signal("-TERM");
    let (_, n1_lines) = n1.finish();
    let (_, n3b_lines) = n3.finish();
    if std::env::var_os("LOGS_DUMP").is_some() {
        for line in n1_lines.iter().chain(&n3b_lines) {
            eprintln!("{line}");
        }
    }

    for (id, lines) in [
        ("n1", &n1_lines),
        ("n2", &n2_lines),
        ("n3", &n3_lines),
        ("n3", &n3b_lines),
    ] {
        check_every_line(id, lines);
    }
    // The story, at INFO, on n1: at least these lines, each once per change.
    let messages: Vec<String> = n1_lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            assert_ne!(value["level"], "ERROR", "{line}");
            text(&value["fields"]["message"])
        })
        .collect();
    for expected in [
        "node active",
        "member active",
        "member declared dead",
        "member rejoined",
        "member left",
        "rebalance started",
        "rebalance finished",
        "node leaving",
        "node stopped",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "n1 never logged {expected:?}: {messages:#?}"
        );
    }
}

#[test]
fn text_lines_are_coloured_only_on_a_terminal_without_no_color() {
    // The node logs (DEBUG: the topology it starts with) and exits at once: its gRPC port is
    // taken.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().unwrap().port().to_string();
    let args = [
        "--bind",
        "127.0.0.1",
        "--grpc-port",
        &port,
        "--http-port",
        "0",
        "--gossip-port",
        "0",
        "--cluster-port",
        "0",
        "--resp-port",
        "0",
    ];
    // A pipe: plain text.
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .expect("run ringcached");
    let piped = String::from_utf8_lossy(&out.stderr);
    assert!(piped.contains("new topology"), "{piped}");
    assert!(piped.contains("node{id=127.0.0.1:0}"), "{piped}");
    assert!(
        !piped.contains('\u{1b}'),
        "ANSI escapes into a pipe: {piped:?}"
    );

    // A terminal (util-linux `script` gives the node a pseudo-terminal): colours, unless
    // NO_COLOR is set.
    let command_line = std::iter::once(BIN)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ");
    let on_terminal = |no_color: Option<&str>| {
        let mut script = Command::new("script");
        script
            .args(["-qec", &command_line, "/dev/null"])
            .env("RUST_LOG", "debug")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if let Some(value) = no_color {
            script.env("NO_COLOR", value);
        }
        let out = script.output().unwrap_or_else(|error| {
            panic!("cannot run `script` ({error}): install util-linux's bsdutils (apt-get install bsdutils)")
        });
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("new topology"), "{text}");
        text
    };
    assert!(
        on_terminal(None).contains("\u{1b}["),
        "no colours on a terminal"
    );
    assert!(
        !on_terminal(Some("1")).contains('\u{1b}'),
        "NO_COLOR=1 still coloured"
    );
    drop(taken);
}
