//! Fault tests with real `ringcached` processes on loopback addresses of their own (picked free
//! at random, so two test runs never meet), on the default ports: a node is SIGKILLed, or paused with SIGSTOP and resumed, while clients write
//! distinct keys at QUORUM. A set-style checker (Jepsen's set workload) records every
//! acknowledged write and reads all of them back at QUORUM at the end: none may be lost.
//! Eviction and TTLs are off, so a missing key can only be a lost write.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringcache::{Client, Consistency};

const BIN: &str = env!("CARGO_BIN_EXE_ringcached");
const DEADLINE: Duration = Duration::from_secs(30);

struct Proc {
    child: Child,
    pid: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.pid]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The default ports a node binds: gRPC, HTTP, cluster and RESP over TCP, gossip over UDP.
const TCP_PORTS: [u16; 4] = [7379, 7381, 7382, 6479];
const UDP_PORTS: [u16; 1] = [7380];

fn start(i: u8, ips: &[Ipv4Addr]) -> Proc {
    let bind = ips[usize::from(i) - 1].to_string();
    let mut args = vec![
        "--bind".to_owned(),
        bind,
        "--node-id".to_owned(),
        format!("p{i}"),
        "--probe-interval".to_owned(),
        "100ms".to_owned(),
        "--probe-timeout".to_owned(),
        "50ms".to_owned(),
        "--suspicion-timeout".to_owned(),
        "600ms".to_owned(),
        "--max-memory".to_owned(),
        "256MiB".to_owned(),
        "--eviction-policy".to_owned(),
        "noeviction".to_owned(),
    ];
    if i > 1 {
        args.extend(["--seeds".to_owned(), format!("{}:7380", ips[0])]);
    }
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ringcached");
    let pid = child.id().to_string();
    Proc { child, pid }
}

fn signal(proc: &Proc, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &proc.pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {}", proc.pid);
}

fn ready(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    use std::io::Write;
    if write!(
        stream,
        "GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200")
}

async fn wait_for(what: &str, condition: impl AsyncFnMut() -> bool) {
    ringcache_test_support::until(what, DEADLINE, condition)
        .await
        .unwrap();
}

/// Starts three nodes and a client that sees all of them.
async fn cluster() -> (Vec<Proc>, Client) {
    let ips: Vec<Ipv4Addr> = (0..3)
        .map(|_| ringcache_test_support::free_loopback_ip(&TCP_PORTS, &UDP_PORTS))
        .collect();
    let procs: Vec<Proc> = (1..=3).map(|i| start(i, &ips)).collect();
    for ip in &ips {
        let http = format!("{ip}:7381");
        wait_for("node ready", async || ready(&http)).await;
    }
    let seed = format!("{}:7379", ips[0]);
    let client = Client::builder()
        .seeds([seed])
        .request_timeout(Duration::from_secs(1))
        .default_consistency(Consistency::Quorum)
        .connect()
        .await
        .expect("connect");
    wait_for("3 members in the client's ring", async || {
        let _ = client.refresh_topology().await;
        client.topology().ring_members().count() == 3
    })
    .await;
    (procs, client)
}

/// Writes `count` distinct keys from 4 tasks, returns the acknowledged ones.
async fn write(client: &Client, prefix: &str, count: usize) -> BTreeSet<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4 {
        let client = client.clone();
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            let mut acked = Vec::new();
            for i in 0..count / 4 {
                let key = format!("{prefix}-{t}-{i}");
                if client.set(key.clone(), key.clone()).await.is_ok() {
                    acked.push(key);
                }
            }
            acked
        });
    }
    let mut acked = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        acked.extend(joined.expect("writer task"));
    }
    acked
}

/// Reads every acknowledged key back at QUORUM; returns the lost ones.
async fn lost(client: &Client, acked: &BTreeSet<String>) -> Vec<String> {
    let mut lost = Vec::new();
    for key in acked {
        let mut value = client.get(key.clone()).await;
        // A read racing the failure detector may hit a node being declared dead: retry a little.
        for _ in 0..20 {
            if value.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            value = client.get(key.clone()).await;
        }
        if value.ok().flatten().as_deref() != Some(key.as_bytes()) {
            lost.push(key.clone());
        }
    }
    lost
}

#[tokio::test]
async fn no_acknowledged_quorum_write_is_lost_when_a_node_is_killed() {
    let (mut procs, client) = cluster().await;
    let mut acked = write(&client, "before", 400).await;
    assert_eq!(
        acked.len(),
        400,
        "all writes succeed while every node is up"
    );
    let victim = procs.pop().unwrap();
    signal(&victim, "-KILL");
    drop(victim);
    acked.extend(write(&client, "after", 400).await);
    let quorum_reader = client.with_consistency(Consistency::Quorum);
    let lost = lost(&quorum_reader, &acked).await;
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        acked.len() > 600,
        "most writes after the kill succeed too: {}",
        acked.len()
    );
}

#[tokio::test]
async fn no_acknowledged_quorum_write_is_lost_when_a_node_is_paused_and_resumed() {
    let (procs, client) = cluster().await;
    let mut acked = write(&client, "before", 400).await;
    assert_eq!(acked.len(), 400);
    signal(&procs[2], "-STOP");
    acked.extend(write(&client, "paused", 400).await);
    signal(&procs[2], "-CONT");
    acked.extend(write(&client, "resumed", 400).await);
    let lost = lost(&client.with_consistency(Consistency::Quorum), &acked).await;
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}
