//! The files in `deploy/` checked against the `ringcached` they deploy: every YAML and JSON file
//! parses; every flag, `RINGCACHE_*` variable and config key they use is one the binary knows;
//! each deployment's exact settings start a real node (addresses moved to 127.0.0.1, ports to 0,
//! no seeds); ports, probes and seeds name the right port for their purpose; the Kubernetes
//! objects select each other; grace periods cover a graceful stop (the snapshot included);
//! memory limits follow `max_memory`; where the node keeps a snapshot (`data_dir`) it is on a
//! volume of its own and SIGTERM keeps the node warm (`shutdown_mode = "restart"`); the container health check passes on a live node and fails on a dead one; and
//! the Grafana dashboard queries only metrics and labels a node exports.
//!
//! Nothing here runs Docker, Kubernetes or systemd: the files are parsed and their settings are
//! tried on the binary. `systemd-analyze verify` checks the unit (`scripts/test-deps` installs systemd if missing).
//!
//! One module per target: `docker` (Dockerfile, health check, compose), `k8s` (manifests and
//! the rendered chart), `helm` (the chart through Helm itself), `systemd`, `grafana` and
//! `alerts`; this file holds what they share (files, launches, running nodes, names, ports).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringcache_server::metrics::CATALOG;
use ringcache_server::metrics::catalog::{self, Kind, MetricDef, Values};
use serde::Deserialize as _;
use serde_json::Value;

/// The Prometheus alert rules.
#[path = "deploy_files/alerts.rs"]
mod alerts;
/// The Dockerfile, its health check and docker-compose.
#[path = "deploy_files/docker.rs"]
mod docker;
/// The Grafana dashboard.
#[path = "deploy_files/grafana.rs"]
mod grafana;
/// The Helm chart, linted and rendered by Helm's own engine.
#[path = "deploy_files/helm.rs"]
mod helm;
/// The Kubernetes manifests and the rendered chart.
#[path = "deploy_files/k8s.rs"]
mod k8s;
/// The systemd unit.
#[path = "deploy_files/systemd.rs"]
mod systemd;

use docker::*;
use grafana::*;
use k8s::*;
use systemd::*;

const BIN: &str = env!("CARGO_BIN_EXE_ringcached");
const DEADLINE: Duration = Duration::from_secs(20);

/// The documented ports, each for one purpose.
const GRPC_PORT: u16 = 7379;
const GOSSIP_PORT: u16 = 7380;
const HTTP_PORT: u16 = 7381;
const RESP_PORT: u16 = 6479;

/// ringcached's defaults for the settings a graceful stop waits on, and the gossip leave after
/// the hand-off (`Node::serve` waits up to 5 s for it).
const DEFAULT_SHUTDOWN_TIMEOUT: &str = "10s";
const DEFAULT_LEAVE_TIMEOUT: &str = "5m";
const GOSSIP_LEAVE: Duration = Duration::from_secs(5);
/// The disk speed the deployments budget for the snapshot a stop writes (unthrottled): about a
/// network disk's or a slow SSD's sequential write speed, in bytes per second.
const SNAPSHOT_WRITE_BYTES_PER_SEC: u64 = 300_000_000;
/// Where every deployment keeps the node's snapshot (Kubernetes volume, systemd StateDirectory).
const DATA_DIR: &str = "/var/lib/ringcache";

/// Environment variables of other programs that deploy files may name.
const OTHER_RINGCACHE_VARS: [&str; 1] = ["RINGCACHE_CLUSTER"]; // ringctl --cluster

/// Metric families the dashboard may leave out (none today).
const NOT_ON_DASHBOARD: [&str; 0] = [];

// ---- files -------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ has a parent")
        .to_path_buf()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(rel: &str) -> String {
    let path = deploy().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every file under `deploy/`, as paths relative to it, sorted.
fn deploy_files() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                let rel = path.strip_prefix(base).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy(), &deploy(), &mut out);
    out.sort();
    out
}

/// The documents of a YAML file (merge keys applied), as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    yaml_text_docs(rel, &read(rel))
}

/// The documents of YAML `text` (from `rel`, for messages), as JSON values.
fn yaml_text_docs(rel: &str, text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| {
            let mut value = serde_yaml_ng::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{rel}: invalid YAML: {e}"));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{rel}: bad merge key: {e}"));
            serde_json::to_value(value)
                .unwrap_or_else(|e| panic!("{rel}: not representable as JSON: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: want a string, got {value}"))
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), str_of(v, k).to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every label of `selector` is on `target` with the same value (and there is one).
fn selects(selector: &BTreeMap<String, String>, target: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| target.get(k) == Some(v))
}

// ---- what the binary knows -----------------------------------------------------------------------

struct Help {
    /// Long flags without the dashes, e.g. `max-memory`.
    flags: BTreeSet<String>,
    /// `RINGCACHE_*` variables.
    env: BTreeSet<String>,
}

impl Help {
    /// TOML keys: the settings' names, each of which `--help` must list as a flag.
    fn config_keys(&self) -> BTreeSet<String> {
        let keys: BTreeSet<String> = ringcache_server::config::settings::NAMES
            .iter()
            .map(|name| (*name).to_owned())
            .collect();
        for key in &keys {
            assert!(
                self.flags.contains(&key.replace('_', "-")),
                "setting {key} is not in ringcached --help"
            );
        }
        keys
    }
}

fn help() -> &'static Help {
    static HELP: OnceLock<Help> = OnceLock::new();
    HELP.get_or_init(|| {
        let out = Command::new(BIN).arg("--help").output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut flags = BTreeSet::new();
        let mut env = BTreeSet::new();
        for line in text.lines() {
            for token in line.split_whitespace() {
                let token = token.trim_end_matches(',');
                if let Some(flag) = token.strip_prefix("--")
                    && line.trim_start().starts_with('-')
                    && !flag.is_empty()
                {
                    flags.insert(flag.split(['=', '[']).next().unwrap().to_owned());
                }
            }
            if let Some(at) = line.find("[env: ") {
                let name = line[at + 6..].split('=').next().unwrap();
                env.insert(name.to_owned());
            }
        }
        assert!(flags.contains("advertise-addr") && flags.contains("max-memory"));
        assert!(env.contains("RINGCACHE_MAX_MEMORY"));
        Help { flags, env }
    })
}

// ---- launches: how each deployment starts ringcached ------------------------------------------

/// How one deployment starts `ringcached`: its arguments, its `RINGCACHE_*` environment and the
/// config file `--config` points at (as deployed).
#[derive(Debug, Clone)]
struct Launch {
    what: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    config: Option<String>,
    /// Files the flags name that come from Kubernetes Secrets: path -> (Secret, key).
    secrets: BTreeMap<String, (String, String)>,
}

impl Launch {
    /// `(flag, value)` pairs; every ringcached flag takes a value (`--flag value` or
    /// `--flag=value`).
    fn flags(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut args = self.args.iter();
        while let Some(arg) = args.next() {
            let flag = arg
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("{}: stray argument {arg:?}", self.what));
            match flag.split_once('=') {
                Some((name, value)) => out.push((name.to_owned(), value.to_owned())),
                None => {
                    let value = args
                        .next()
                        .unwrap_or_else(|| panic!("{}: --{flag} has no value", self.what));
                    out.push((flag.to_owned(), value.clone()));
                }
            }
        }
        out
    }

    fn flag(&self, name: &str) -> Option<String> {
        self.flags()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    fn toml(&self) -> Option<toml::Table> {
        self.config.as_ref().map(|text| {
            text.parse()
                .unwrap_or_else(|e| panic!("{}: config is not TOML: {e}", self.what))
        })
    }

    /// A setting as the node resolves it: flag, then environment, then config file.
    fn setting(&self, key: &str) -> Option<String> {
        let flag = key.replace('_', "-");
        if let Some(value) = self.flag(&flag) {
            return Some(value);
        }
        let var = format!("RINGCACHE_{}", key.to_uppercase());
        if let Some(value) = self.env.get(&var) {
            return Some(value.clone());
        }
        self.toml()
            .and_then(|t| t.get(key).cloned())
            .map(|v| match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            })
    }

    fn port(&self, key: &str, default: u16) -> u16 {
        self.setting(key).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{}: {key} {v:?}", self.what))
        })
    }

    fn duration(&self, key: &str, default: &str) -> Duration {
        let text = self.setting(key).unwrap_or_else(|| default.to_owned());
        humantime::parse_duration(&text).unwrap_or_else(|e| panic!("{}: {key}: {e}", self.what))
    }

    fn max_memory(&self) -> u64 {
        let text = self
            .setting("max_memory")
            .unwrap_or_else(|| "1GiB".to_owned());
        text.parse::<bytesize::ByteSize>()
            .unwrap_or_else(|e| panic!("{}: max_memory: {e}", self.what))
            .as_u64()
    }

    /// The time a graceful stop may take: in-flight requests, the snapshot (with a data dir;
    /// written in either shutdown mode), the hand-off (with `handoff`, or when the snapshot
    /// failed), the gossip leave.
    fn graceful_stop(&self) -> Duration {
        self.duration("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT)
            + self.snapshot_write()
            + self.duration("leave_timeout", DEFAULT_LEAVE_TIMEOUT)
            + GOSSIP_LEAVE
    }

    /// The time the stop's snapshot may take: `max_memory` at [`SNAPSHOT_WRITE_BYTES_PER_SEC`],
    /// rounded up to a second; nothing without a data dir.
    fn snapshot_write(&self) -> Duration {
        if self.setting("data_dir").is_none() {
            return Duration::ZERO;
        }
        Duration::from_secs(self.max_memory().div_ceil(SNAPSHOT_WRITE_BYTES_PER_SEC))
    }

    /// `shutdown_mode` as the node resolves it (`handoff` by default).
    fn shutdown_mode(&self) -> String {
        self.setting("shutdown_mode")
            .unwrap_or_else(|| "handoff".to_owned())
    }

    /// `seeds` as `host:port` strings.
    fn seeds(&self) -> Vec<String> {
        if let Some(value) = self
            .flag("seeds")
            .or_else(|| self.env.get("RINGCACHE_SEEDS").cloned())
        {
            return value.split(',').map(str::to_owned).collect();
        }
        self.toml()
            .and_then(|t| t.get("seeds").cloned())
            .map(|v| {
                v.as_array()
                    .expect("seeds is a list")
                    .iter()
                    .map(|s| s.as_str().expect("seeds are strings").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Memory a node may use: `max_memory` × 1.3 + 128 MiB.
fn memory_limit_for(max_memory: u64) -> u64 {
    max_memory * 13 / 10 + (128 << 20)
}

// ---- running nodes -------------------------------------------------------------------------------

/// A ringcached child, killed when dropped.
struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts ringcached with `args` and only `env` (plus logging variables) in its environment;
/// returns it once it logs "ringcached serving" (with that line), or its log when it exits or
/// does not get there in time.
fn start(args: &[String], env: &BTreeMap<String, String>) -> Result<(Running, String), String> {
    let mut child = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcached");
    let stderr = child.stderr.take().unwrap();
    let running = Running { child };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut log = Vec::new();
    loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("ringcached serving") => return Ok((running, line)),
            Ok(line) => log.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let mut running = running;
                let status = running.child.wait().unwrap();
                return Err(format!("exited with {status}:\n{}", log.join("\n")));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "not serving within {DEADLINE:?}:\n{}",
                    log.join("\n")
                ));
            }
        }
    }
}

/// Sample values for the variables Kubernetes substitutes in args.
fn expand_k8s_vars(text: &str) -> String {
    text.replace("$(POD_NAME)", "ringcache-0")
        .replace("$(POD_IP)", "10.0.0.10")
        .replace("$(POD_NAMESPACE)", "default")
}

/// What a Secret's key holds, made up for a test: the CA's certificate, a users file, a gossip
/// key ring (certificates and their keys are made in pairs by [`start_launch`]).
fn secret_fixture(
    ca: &(rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>),
    key: &str,
) -> String {
    match key {
        "ca.crt" => ca.0.pem(),
        "users.toml" => {
            ringcache_server::auth::new_user_stanza("app", ringcache_server::auth::Role::Admin)
                .unwrap()
                .0
        }
        "keyring" => ringcache_server::cluster::Keyring::generate_key().unwrap() + "\n",
        other => panic!("no fixture for a Secret key {other}"),
    }
}

/// A throwaway CA for [`secret_fixture`].
fn fixture_ca() -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

/// Starts `launch` as it would run, but on this machine: addresses 127.0.0.1, free ports, no
/// seeds (nothing may leave the machine), its config file copied with `seeds` taken out, and the
/// files it reads from Secrets made up (valid certificates, users, a key ring) in a scratch
/// directory.
fn start_launch(launch: &Launch, tag: &str) -> Result<(Running, String), String> {
    let local = ["bind", "advertise-addr"];
    let ports = ["grpc-port", "gossip-port", "http-port", "cluster-port"];
    let mut args = Vec::new();
    let mut config_file = None;
    let scratch = std::env::temp_dir().join(format!(
        "ringcache-deploy-test-{}-{tag}",
        std::process::id()
    ));
    let ca = fixture_ca();
    let mut fixtures: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (path, (secret, key)) in &launch.secrets {
        let file = scratch.join(format!("{secret}-{key}"));
        if !file.exists() {
            std::fs::create_dir_all(&scratch).unwrap();
            // A certificate and its key come from the same Secret: sign them together.
            if key == "tls.crt" || key == "tls.key" {
                let leaf_key = rcgen::KeyPair::generate().unwrap();
                let params =
                    rcgen::CertificateParams::new(vec!["ringcache-cluster".to_owned()]).unwrap();
                let cert = params.signed_by(&leaf_key, &ca.1).unwrap();
                std::fs::write(scratch.join(format!("{secret}-tls.crt")), cert.pem()).unwrap();
                std::fs::write(
                    scratch.join(format!("{secret}-tls.key")),
                    leaf_key.serialize_pem(),
                )
                .unwrap();
            } else {
                std::fs::write(&file, secret_fixture(&ca, key)).unwrap();
            }
        }
        fixtures.insert(path.clone(), file);
    }
    for (flag, value) in launch.flags() {
        let value = expand_k8s_vars(&value);
        if flag == "seeds"
            || flag == "data-dir"
            || local.contains(&flag.as_str())
            || ports.contains(&flag.as_str())
        {
            continue;
        }
        if let Some(file) = fixtures.get(&value) {
            args.push(format!("--{flag}={}", file.display()));
            continue;
        }
        if flag == "config" {
            let mut table = launch.toml().expect("--config has a file");
            table.remove("seeds");
            let path = std::env::temp_dir().join(format!(
                "ringcache-deploy-test-{}-{tag}.toml",
                std::process::id()
            ));
            std::fs::write(&path, table.to_string()).unwrap();
            args.push(format!("--config={}", path.display()));
            config_file = Some(path);
            continue;
        }
        args.push(format!("--{flag}={value}"));
    }
    for flag in local {
        args.push(format!("--{flag}=127.0.0.1"));
    }
    for flag in ports {
        args.push(format!("--{flag}=0"));
    }
    // The data dir, in the scratch directory (the flag wins over the config file's).
    if launch.setting("data_dir").is_some() {
        args.push(format!("--data-dir={}", scratch.join("data").display()));
    }
    let mut env = launch.env.clone();
    env.remove("RINGCACHE_SEEDS");
    env.remove("RINGCACHE_CONFIG");
    let result = start(&args, &env);
    if let Some(path) = config_file {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// A node on 127.0.0.1 with free ports: the process and its HTTP address.
fn local_node() -> (Running, String) {
    let args: Vec<String> = [
        "--bind=127.0.0.1",
        "--grpc-port=0",
        "--gossip-port=0",
        "--http-port=0",
        "--cluster-port=0",
        "--resp-port=0",
        "--log-format=json",
    ]
    .map(str::to_owned)
    .to_vec();
    let (running, line) = start(&args, &BTreeMap::new()).unwrap_or_else(|log| panic!("{log}"));
    let event: Value = serde_json::from_str(&line).unwrap();
    let addr = str_of(&event["fields"]["http"], "http field").to_owned();
    (running, addr)
}

// ---- parsing helpers -----------------------------------------------------------------------------

/// A size with binary suffixes (`Ki`/`Mi`/`Gi` for Kubernetes, `k`/`m`/`g` for Docker, `K`/`M`/`G`
/// for systemd: all powers of 1024).
fn binary_size(text: &str) -> u64 {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    let number: u64 = digits.parse().unwrap_or_else(|_| panic!("size {text:?}"));
    let shift = match text[digits.len()..]
        .trim_end_matches('i')
        .to_lowercase()
        .as_str()
    {
        "" | "b" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        other => panic!("unit {other:?} in {text:?}"),
    };
    number << shift
}

/// A `host:port` with a numeric port.
fn host_port(text: &str) -> (&str, u16) {
    let (host, port) = text
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{text:?}: want host:port"));
    (
        host,
        port.parse()
            .unwrap_or_else(|_| panic!("{text:?}: bad port")),
    )
}

fn ipv4(text: &str) -> std::net::Ipv4Addr {
    text.parse()
        .unwrap_or_else(|_| panic!("{text:?}: want an IPv4 address"))
}

fn in_subnet(ip: std::net::Ipv4Addr, subnet: &str) -> bool {
    let (net, len) = subnet.split_once('/').expect("CIDR");
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(ipv4(net)) & mask
}

// ---- tests: parsing and names --------------------------------------------------------------------

#[test]
fn every_yaml_and_json_file_parses() {
    let files = deploy_files();
    for expected in [
        "Dockerfile",
        "docker-compose.yml",
        "k8s/statefulset.yaml",
        "k8s/service.yaml",
        "k8s/pdb.yaml",
        "k8s/configmap.yaml",
        "systemd/ringcached.service",
        "systemd/ringcache.toml",
        "grafana/ringcache-dashboard.json",
        "README.md",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "deploy/{expected} missing"
        );
    }
    let mut parsed = 0;
    for file in &files {
        if file.starts_with("helm/") && file.contains("/templates/") {
            continue; // Go templates: checked rendered (helm.rs)
        }
        if file.ends_with(".yaml") || file.ends_with(".yml") {
            let docs = yaml_docs(file);
            assert!(!docs.is_empty(), "{file}: no document");
            for doc in &docs {
                assert!(doc.is_object(), "{file}: a document is not a mapping");
                if file.starts_with("k8s/") {
                    assert!(
                        doc["apiVersion"].is_string() && doc["kind"].is_string(),
                        "{file}: apiVersion and kind"
                    );
                    assert!(doc["metadata"]["name"].is_string(), "{file}: metadata.name");
                }
            }
            parsed += 1;
        } else if file.ends_with(".json") {
            let _: Value = serde_json::from_str(&read(file))
                .unwrap_or_else(|e| panic!("{file}: invalid JSON: {e}"));
            parsed += 1;
        } else if file.ends_with(".toml") {
            let _: toml::Table = read(file)
                .parse()
                .unwrap_or_else(|e| panic!("{file}: invalid TOML: {e}"));
            parsed += 1;
        }
    }
    assert!(parsed >= 8, "parsed {parsed} files");
}

#[test]
fn every_flag_variable_and_config_key_is_one_ringcached_knows() {
    let help = help();
    let keys = help.config_keys();
    let launches = all_launches();
    assert_eq!(
        launches.len(),
        2 + k8s_sets().len() + 3,
        "Dockerfile, systemd, each set of Kubernetes manifests, 3 compose nodes"
    );
    for launch in &launches {
        for (flag, _) in launch.flags() {
            assert!(
                help.flags.contains(&flag),
                "{}: --{flag} is not in ringcached --help",
                launch.what
            );
        }
        for var in launch.env.keys() {
            assert!(
                help.env.contains(var),
                "{}: {var} is not in ringcached --help",
                launch.what
            );
        }
        if let Some(table) = launch.toml() {
            for key in table.keys() {
                assert!(
                    keys.contains(key),
                    "{}: config key {key} is no ringcached setting",
                    launch.what
                );
            }
        }
    }

    // Any RINGCACHE_* named anywhere in deploy/ (comments and README included).
    for file in deploy_files() {
        let text = read(&file);
        let mut rest = text.as_str();
        while let Some(at) = rest.find("RINGCACHE_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            if name.ends_with('_') {
                continue; // `RINGCACHE_*`: the family, not a variable
            }
            assert!(
                help.env.contains(&name) || OTHER_RINGCACHE_VARS.contains(&name.as_str()),
                "deploy/{file}: {name} is not a ringcached variable"
            );
        }
    }

    // Flags on `ringcached` command lines in deploy/README.md.
    let readme = read("README.md");
    let mut checked = 0;
    for line in readme.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            if !word.ends_with("ringcached") {
                continue;
            }
            let mut rest = &words[i + 1..];
            if i > 0 && words[i - 1].starts_with('-') {
                // `--bin ringcached`: the node's own flags follow a `--`, if any.
                match rest.iter().position(|w| *w == "--") {
                    Some(at) => rest = &rest[at + 1..],
                    None => continue,
                }
            }
            for word in rest {
                if word.starts_with('#') || ["|", "&&", ";", "&", "\\"].contains(word) {
                    break;
                }
                if let Some(flag) = word.strip_prefix("--") {
                    let flag: String = flag
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                        .collect();
                    if !flag.is_empty() {
                        assert!(
                            help.flags.contains(&flag),
                            "deploy/README.md: --{flag} is not in ringcached --help: {line}"
                        );
                        checked += 1;
                    }
                }
                if word.contains('`') {
                    break; // the end of an inline command
                }
            }
        }
    }
    assert!(
        checked >= 5,
        "only {checked} ringcached flags found in deploy/README.md"
    );
}

#[test]
fn every_deployment_starts_a_node_with_its_settings() {
    for (i, launch) in all_launches().iter().enumerate() {
        if let Err(log) = start_launch(launch, &i.to_string()) {
            panic!("{} does not start ringcached: {log}", launch.what);
        }
    }
}

#[test]
fn bind_and_advertise_addresses_are_ip_addresses() {
    for launch in all_launches() {
        let what = &launch.what;
        let bind = launch
            .setting("bind")
            .unwrap_or_else(|| panic!("{what}: sets no bind address"));
        let bind: std::net::IpAddr = bind.parse().unwrap();
        let advertise = launch.setting("advertise_addr");
        if bind.is_unspecified() && !launch.what.starts_with("Dockerfile") {
            let advertise =
                advertise.unwrap_or_else(|| panic!("{what}: binds {bind} but advertises nothing"));
            let advertise = expand_k8s_vars(&advertise);
            let ip: std::net::IpAddr = advertise.parse().unwrap();
            assert!(!ip.is_unspecified(), "{what}: advertises {ip}");
        }
    }
}

// ---- tests: ports --------------------------------------------------------------------------------

#[test]
fn every_deployment_uses_the_standard_ports() {
    for launch in all_launches() {
        assert_eq!(
            launch.port("grpc_port", GRPC_PORT),
            GRPC_PORT,
            "{}",
            launch.what
        );
        assert_eq!(
            launch.port("gossip_port", GOSSIP_PORT),
            GOSSIP_PORT,
            "{}",
            launch.what
        );
        assert_eq!(
            launch.port("http_port", HTTP_PORT),
            HTTP_PORT,
            "{}",
            launch.what
        );
        let resp = launch.port("resp_port", RESP_PORT);
        assert!(
            resp == RESP_PORT || resp == 0,
            "{}: RESP on {resp} (0 = off)",
            launch.what
        );
        for seed in launch.seeds() {
            let (host, port) = host_port(&seed);
            assert!(!host.is_empty(), "{}: seed {seed:?}", launch.what);
            assert_eq!(
                port, GOSSIP_PORT,
                "{}: seed {seed} is not a gossip address",
                launch.what
            );
        }
    }
}
