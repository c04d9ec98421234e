//! `ringcached --dev-cluster N`: a local cluster for trying things out. Starts N child
//! `ringcached` processes on 127.0.0.1 … 127.0.0.N with the default ports, node ids `dev-1` …
//! `dev-N`, all joining through 127.0.0.1's gossip port. Other flags are passed on to every child.
//! SIGINT/SIGTERM stop the children gracefully; a child that dies is reported and the others keep
//! running, so killing one (`kill PID`) shows failover.

use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::config::{DEFAULT_GOSSIP_PORT, DEFAULT_RESP_PORT};

/// Most nodes a dev cluster may have.
pub const MAX_DEV_NODES: u8 = 32;

/// Removes `--dev-cluster N` / `--dev-cluster=N` and the flags each child sets itself.
fn passthrough(args: &[String]) -> Vec<String> {
    let own = [
        "--dev-cluster",
        "--bind",
        "--node-id",
        "--seeds",
        "--data-dir",
    ];
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if own.contains(&arg.as_str()) {
            skip_value = true;
            continue;
        }
        if own.iter().any(|flag| arg.starts_with(&format!("{flag}="))) {
            continue;
        }
        out.push(arg.clone());
    }
    out
}

/// The value of the port flag `flag` (`--flag P` / `--flag=P`) in `args`, else the environment
/// variable `env`, else `default`.
fn port_flag(args: &[String], flag: &str, env: &str, default: u16) -> u16 {
    let mut iter = args.iter();
    let prefix = format!("{flag}=");
    while let Some(arg) = iter.next() {
        if arg == flag {
            if let Some(port) = iter.next().and_then(|p| p.parse().ok()) {
                return port;
            }
        } else if let Some(port) = arg.strip_prefix(&prefix).and_then(|p| p.parse().ok()) {
            return port;
        }
    }
    std::env::var(env)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(default)
}

/// The gossip port every child uses: `--gossip-port P` / `--gossip-port=P` if given.
fn gossip_port(args: &[String]) -> u16 {
    port_flag(
        args,
        "--gossip-port",
        "RINGCACHE_GOSSIP_PORT",
        DEFAULT_GOSSIP_PORT,
    )
}

/// The RESP port every child uses (each on its own address); 0: off.
fn resp_port(args: &[String]) -> u16 {
    port_flag(
        args,
        "--resp-port",
        "RINGCACHE_RESP_PORT",
        DEFAULT_RESP_PORT,
    )
}

/// The data directory given to the dev cluster (`--data-dir D` / `--data-dir=D`, else
/// `RINGCACHE_DATA_DIR`), if any: each child keeps its snapshot in its own subdirectory.
fn data_dir(args: &[String]) -> Option<String> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--data-dir" {
            return iter.next().cloned();
        }
        if let Some(dir) = arg.strip_prefix("--data-dir=") {
            return Some(dir.to_owned());
        }
    }
    std::env::var("RINGCACHE_DATA_DIR")
        .ok()
        .filter(|dir| !dir.is_empty())
}

/// The arguments of child `i` (1-based); `data_dir` is the dev cluster's data directory.
fn child_args(i: u8, passthrough: &[String], data_dir: Option<&str>) -> Vec<String> {
    let mut args = passthrough.to_vec();
    args.extend([
        "--bind".to_owned(),
        format!("127.0.0.{i}"),
        "--node-id".to_owned(),
        format!("dev-{i}"),
    ]);
    if let Some(dir) = data_dir {
        let own = std::path::Path::new(dir).join(format!("dev-{i}"));
        args.extend(["--data-dir".to_owned(), own.display().to_string()]);
    }
    if i > 1 {
        let port = gossip_port(passthrough);
        args.extend(["--seeds".to_owned(), format!("127.0.0.1:{port}")]);
    }
    args
}

/// Runs the dev cluster until `shutdown` completes.
pub async fn run(
    nodes: u8,
    args: &[String],
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if nodes == 0 || nodes > MAX_DEV_NODES {
        bail!("--dev-cluster takes 1 to {MAX_DEV_NODES} nodes, got {nodes}");
    }
    let exe = std::env::current_exe().context("cannot find the ringcached executable")?;
    let passthrough = passthrough(args);
    let data_dir = data_dir(args);
    let mut children: Vec<(u8, Child)> = Vec::new();
    for i in 1..=nodes {
        let child = Command::new(&exe)
            .args(child_args(i, &passthrough, data_dir.as_deref()))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start node dev-{i}"))?;
        let pid = child.id().unwrap_or_default();
        match resp_port(&passthrough) {
            0 => eprintln!("dev-{i}: pid {pid} on 127.0.0.{i}"),
            resp => {
                eprintln!("dev-{i}: pid {pid} on 127.0.0.{i}, Redis protocol on 127.0.0.{i}:{resp}")
            }
        }
        children.push((i, child));
    }
    match resp_port(&passthrough) {
        0 => eprintln!(
            "dev cluster of {nodes} started; clients connect to 127.0.0.1:7379; Ctrl-C stops it"
        ),
        resp => eprintln!(
            "dev cluster of {nodes} started; clients connect to 127.0.0.1:7379 (gRPC) or \
             127.0.0.1:{resp} (redis-cli -p {resp}); Ctrl-C stops it"
        ),
    }
    tokio::pin!(shutdown);
    loop {
        if children.is_empty() {
            bail!("every node of the dev cluster exited");
        }
        let exited = async {
            loop {
                for (index, (i, child)) in children.iter_mut().enumerate() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return (index, *i, status);
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            (index, i, status) = exited => {
                eprintln!("dev-{i} exited ({status}); the other nodes keep running");
                children.remove(index);
            }
        }
    }
    for (i, child) in &children {
        if let Some(pid) = child.id() {
            let sent = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if !matches!(sent, Ok(status) if status.success()) {
                eprintln!("could not send SIGTERM to dev-{i} (pid {pid})");
            }
        }
    }
    for (i, mut child) in children {
        match tokio::time::timeout(std::time::Duration::from_secs(15), child.wait()).await {
            Ok(Ok(status)) => eprintln!("dev-{i} stopped ({status})"),
            _ => {
                eprintln!("dev-{i} did not stop in 15 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_get_their_own_address_id_and_seed_and_keep_other_flags() {
        let args: Vec<String> = [
            "--dev-cluster",
            "3",
            "--max-memory",
            "64MiB",
            "--bind=0.0.0.0",
            "--seeds",
            "x:1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let rest = passthrough(&args);
        assert_eq!(rest, ["--max-memory", "64MiB"]);
        assert_eq!(
            child_args(1, &rest, None),
            [
                "--max-memory",
                "64MiB",
                "--bind",
                "127.0.0.1",
                "--node-id",
                "dev-1"
            ]
        );
        assert_eq!(
            child_args(2, &rest, None)[6..],
            ["--seeds".to_owned(), "127.0.0.1:7380".to_owned()]
        );
        let custom: Vec<String> = ["--gossip-port", "9999"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(
            child_args(3, &custom, None)
                .ends_with(&["--seeds".to_owned(), "127.0.0.1:9999".to_owned()])
        );
    }

    #[test]
    fn every_child_keeps_its_snapshot_in_its_own_directory() {
        let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let args = strings(&[
            "--dev-cluster",
            "3",
            "--data-dir",
            "/tmp/rc",
            "--workers",
            "1",
        ]);
        let rest = passthrough(&args);
        assert_eq!(rest, ["--workers", "1"]);
        let dir = data_dir(&args);
        assert_eq!(dir.as_deref(), Some("/tmp/rc"));
        let child = child_args(2, &rest, dir.as_deref());
        assert!(
            child
                .windows(2)
                .any(|w| w == strings(&["--data-dir", "/tmp/rc/dev-2"]).as_slice()),
            "{child:?}"
        );
        assert_eq!(
            data_dir(&strings(&["--data-dir=/var/x"])).as_deref(),
            Some("/var/x")
        );
        assert!(!child_args(1, &rest, None).contains(&"--data-dir".to_owned()));
    }

    #[test]
    fn every_child_serves_resp_on_its_own_address_at_the_given_port() {
        let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            resp_port(&strings(&["--max-memory", "64MiB"])),
            DEFAULT_RESP_PORT
        );
        assert_eq!(resp_port(&strings(&["--resp-port", "7000"])), 7000);
        assert_eq!(resp_port(&strings(&["--resp-port=0"])), 0);
        // The flag is passed on: each child binds it on its own 127.0.0.i.
        let rest = passthrough(&strings(&["--dev-cluster", "2", "--resp-port=7000"]));
        assert_eq!(child_args(2, &rest, None)[0], "--resp-port=7000");
    }
}
