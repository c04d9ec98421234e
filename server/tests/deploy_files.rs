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

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_json::Value;

/// The Prometheus alert rules.
#[path = "deploy_files/alerts.rs"]
mod alerts;
/// The Helm chart, linted and rendered by Helm's own engine.
#[path = "deploy_files/helm.rs"]
mod helm;

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
    /// TOML keys: every flag but the ones that only make sense on a command line.
    fn config_keys(&self) -> BTreeSet<String> {
        self.flags
            .iter()
            .filter(|f| !["config", "dev-cluster", "help", "version"].contains(&f.as_str()))
            .map(|f| f.replace('-', "_"))
            .collect()
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
                    flags.insert(flag.split('=').next().unwrap().to_owned());
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

// ---- the Dockerfile ------------------------------------------------------------------------------

/// Instructions as `(INSTRUCTION, rest)`, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

fn docker_stages() -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (op, rest) in dockerfile() {
        if op == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().unwrap().push((op, rest));
    }
    stages
}

/// The runtime stage: the last one.
fn docker_runtime() -> Vec<(String, String)> {
    docker_stages().pop().unwrap()
}

fn docker_exec_form(rest: &str, what: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("{what} {rest}: want exec form: {e}"))
}

/// The image's `ENV`, every variable.
fn docker_env() -> BTreeMap<String, String> {
    docker_runtime()
        .iter()
        .filter(|(op, _)| op == "ENV")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn ringcache_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .filter(|(k, _)| k.starts_with("RINGCACHE_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn docker_launch() -> Launch {
    let runtime = docker_runtime();
    let find = |name: &str| {
        runtime
            .iter()
            .rev()
            .find(|(op, _)| op == name)
            .map(|(_, rest)| docker_exec_form(rest, name))
    };
    let entrypoint = find("ENTRYPOINT").expect("an ENTRYPOINT");
    assert_eq!(entrypoint[0], "ringcached", "the entrypoint is ringcached");
    let mut args = entrypoint[1..].to_vec();
    args.extend(find("CMD").unwrap_or_default());
    Launch {
        what: "Dockerfile".into(),
        args,
        env: ringcache_env(&docker_env()),
        config: None,
        secrets: BTreeMap::new(),
    }
}

// ---- docker-compose ------------------------------------------------------------------------------

fn compose() -> Value {
    let docs = yaml_docs("docker-compose.yml");
    assert_eq!(docs.len(), 1);
    docs.into_iter().next().unwrap()
}

fn compose_services() -> Vec<(String, Value)> {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    services
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(list) => list
            .iter()
            .map(|item| {
                let (k, v) = str_of(item, "environment").split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn compose_launches() -> Vec<(Launch, Value)> {
    compose_services()
        .into_iter()
        .map(|(name, service)| {
            let args = match &service["command"] {
                Value::Array(list) => list
                    .iter()
                    .map(|a| str_of(a, "command").to_owned())
                    .collect(),
                Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
                _ => Vec::new(),
            };
            let mut env = ringcache_env(&docker_env());
            env.extend(ringcache_env(&compose_env(&service)));
            let launch = Launch {
                what: format!("docker-compose.yml {name}"),
                args,
                env,
                config: None,
                secrets: BTreeMap::new(),
            };
            (launch, service)
        })
        .collect()
}

// ---- Kubernetes ----------------------------------------------------------------------------------

/// A set of Kubernetes objects deployed together: the files of `deploy/k8s/`, or the Helm chart
/// rendered with some values; and what those values ask for.
#[derive(Debug, Clone)]
struct Manifests {
    what: String,
    docs: Vec<Value>,
    expect: Expect,
}

/// What a set of manifests was made to deploy.
#[derive(Debug, Clone)]
struct Expect {
    replicas: u64,
    /// The RESP port is served (and in the Services).
    resp: bool,
    cluster_domain: String,
    /// The memory limit is max_memory x 1.3 + 128Mi rounded up to a MiB (not set by hand).
    computed_memory: bool,
    /// Each pod has a data volume (a volumeClaimTemplate) for its snapshot.
    persistence: bool,
}

impl Manifests {
    /// The one object of `kind` named `name` (any name when `None`).
    fn one(&self, kind: &str, name: Option<&str>) -> Value {
        let found: Vec<&Value> = self
            .of_kind(kind)
            .into_iter()
            .filter(|doc| name.is_none_or(|n| doc["metadata"]["name"] == n))
            .collect();
        assert_eq!(found.len(), 1, "{}: want one {kind} {name:?}", self.what);
        found[0].clone()
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|doc| doc["kind"] == kind).collect()
    }
}

/// The files of `deploy/k8s/` (the Prometheus Operator's ServiceMonitor included).
fn static_k8s() -> Manifests {
    let docs = deploy_files()
        .iter()
        .filter(|f| f.starts_with("k8s/") && (f.ends_with(".yaml") || f.ends_with(".yml")))
        .flat_map(|f| yaml_docs(f))
        .collect();
    Manifests {
        what: "deploy/k8s".into(),
        docs,
        expect: Expect {
            replicas: 3,
            resp: true,
            cluster_domain: "cluster.local".into(),
            computed_memory: true,
            persistence: true,
        },
    }
}

/// Every set of Kubernetes manifests: `deploy/k8s/` and the chart with each values file.
fn k8s_sets() -> Vec<Manifests> {
    let mut sets = vec![static_k8s()];
    sets.extend(helm::standard_renders().iter().cloned());
    sets
}

fn statefulset(m: &Manifests) -> Value {
    m.one("StatefulSet", None)
}

fn ringcached_container(sts: &Value) -> Value {
    let containers = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == "ringcached")
        .expect("a container named ringcached")
        .clone()
}

/// The container's env: `name -> value` for plain values (a `resourceFieldRef` is resolved as
/// the kubelet does: the container's resource over the divisor, rounded up), `name -> fieldRef
/// path` for the downward API's pod fields.
fn container_env(container: &Value) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut values = BTreeMap::new();
    let mut fields = BTreeMap::new();
    for item in container["env"].as_array().into_iter().flatten() {
        let name = str_of(&item["name"], "env name").to_owned();
        if let Some(value) = item["value"].as_str() {
            values.insert(name, value.to_owned());
        } else if let Some(path) = item["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            fields.insert(name, path.to_owned());
        } else if let Some(resource) = item["valueFrom"]["resourceFieldRef"].as_object() {
            assert_eq!(
                resource["containerName"], container["name"],
                "env {name}: the container's own resources"
            );
            let path = str_of(&resource["resource"], "resource");
            let (kind, what) = path.split_once('.').expect("requests.X or limits.X");
            let quantity = &container["resources"][kind][what];
            let divisor = resource.get("divisor").map_or(1.0, cpu_cores);
            let value = (cpu_cores(quantity) / divisor).ceil();
            assert!(value >= 1.0, "env {name}: {path} {quantity}");
            values.insert(name, format!("{value}"));
        } else {
            panic!("env {name}: want a value, a fieldRef or a resourceFieldRef");
        }
    }
    (values, fields)
}

/// A CPU quantity ("1", "500m", 2) in cores.
fn cpu_cores(quantity: &Value) -> f64 {
    match quantity {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => match s.strip_suffix('m') {
            Some(milli) => milli.parse::<f64>().expect("millicores") / 1000.0,
            None => s.parse().unwrap_or_else(|_| panic!("CPU quantity {s:?}")),
        },
        other => panic!("CPU quantity {other}"),
    }
}

/// The pod's volume mounted at the directory holding `path` in `container`, and the file's
/// name inside it.
fn mount_of<'a>(sts: &'a Value, container: &Value, path: &str) -> Option<(&'a Value, String)> {
    let pod = &sts["spec"]["template"]["spec"];
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let dir = str_of(&mount["mountPath"], "mountPath").trim_end_matches('/');
        let Some(file) = path.strip_prefix(&format!("{dir}/")) else {
            continue;
        };
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        return Some((volume, file.to_owned()));
    }
    None
}

/// The key of a ConfigMap or Secret volume that is projected as `file`.
fn projected_key(source: &Value, file: &str) -> String {
    match source["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|i| i["path"] == file)
            .map(|i| str_of(&i["key"], "key").to_owned())
            .unwrap_or_else(|| panic!("{source}: projects no {file}")),
        None => file.to_owned(),
    }
}

/// The text of the file at `path` inside the container, from the ConfigMap mounted there.
fn mounted_config(m: &Manifests, sts: &Value, container: &Value, path: &str) -> String {
    let (volume, file) = mount_of(sts, container, path)
        .unwrap_or_else(|| panic!("{}: nothing is mounted at {path}", m.what));
    let map = &volume["configMap"];
    let name = str_of(&map["name"], "configMap name");
    let key = projected_key(map, &file);
    let config_map = m.one("ConfigMap", Some(name));
    str_of(&config_map["data"][&key], "ConfigMap data").to_owned()
}

fn k8s_launch(m: &Manifests) -> Launch {
    let sts = statefulset(m);
    let container = ringcached_container(&sts);
    let mut args: Vec<String> = Vec::new();
    if let Some(command) = container["command"].as_array() {
        assert!(
            str_of(&command[0], "command").ends_with("ringcached"),
            "command runs ringcached"
        );
        args.extend(command[1..].iter().map(|a| str_of(a, "command").to_owned()));
    }
    args.extend(
        container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| str_of(a, "args").to_owned()),
    );
    let (values, _) = container_env(&container);
    let mut env = ringcache_env(&docker_env());
    env.extend(ringcache_env(&values));
    let mut launch = Launch {
        what: m.what.clone(),
        args,
        env,
        config: None,
        secrets: BTreeMap::new(),
    };
    if let Some(path) = launch.setting("config") {
        launch.config = Some(mounted_config(m, &sts, &container, &path));
    }
    // Files the flags name inside mounted Secrets: which Secret and key each one is.
    for (flag, value) in launch.flags() {
        if !value.starts_with('/') || flag == "config" {
            continue;
        }
        let (volume, file) = mount_of(&sts, &container, &value)
            .unwrap_or_else(|| panic!("{}: --{flag}={value} is in no mounted volume", m.what));
        let secret = &volume["secret"];
        assert!(
            secret.is_object(),
            "{}: --{flag}={value}: a file from a Secret",
            m.what
        );
        let key = projected_key(secret, &file);
        launch.secrets.insert(
            value.clone(),
            (str_of(&secret["secretName"], "secretName").to_owned(), key),
        );
    }
    launch
}

// ---- systemd -------------------------------------------------------------------------------------

/// `(section, key, value)` of a unit file, in order.
fn unit(rel: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in read(rel).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{rel}: not key=value: {line}"));
        out.push((
            section.clone(),
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    out
}

fn service_values(key: &str) -> Vec<String> {
    unit("systemd/ringcached.service")
        .into_iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v)
        .collect()
}

fn service_value(key: &str) -> String {
    let values = service_values(key);
    assert_eq!(values.len(), 1, "ringcached.service: want one {key}=");
    values.into_iter().next().unwrap()
}

fn systemd_launch() -> Launch {
    let exec = service_value("ExecStart");
    let mut words = exec.split_whitespace().map(str::to_owned);
    let bin = words.next().unwrap();
    assert!(bin.starts_with('/'), "ExecStart needs an absolute path");
    assert!(bin.ends_with("/ringcached"), "ExecStart runs ringcached");
    let mut env = BTreeMap::new();
    for line in service_values("Environment") {
        for pair in line.split_whitespace() {
            let (k, v) = pair.trim_matches('"').split_once('=').unwrap();
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    let mut launch = Launch {
        what: "systemd/ringcached.service".into(),
        args: words.collect(),
        env: ringcache_env(&env),
        config: None,
        secrets: BTreeMap::new(),
    };
    let path = launch.setting("config").expect("the unit passes --config");
    assert_eq!(
        path, "/etc/ringcache/ringcache.toml",
        "the unit reads the sample's documented path"
    );
    launch.config = Some(read("systemd/ringcache.toml"));
    launch
}

fn all_launches() -> Vec<Launch> {
    let mut out = vec![docker_launch(), systemd_launch()];
    out.extend(k8s_sets().iter().map(k8s_launch));
    out.extend(compose_launches().into_iter().map(|(l, _)| l));
    out
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

#[test]
fn dockerfile_builds_both_binaries_and_runs_them_unprivileged() {
    let stages = docker_stages();
    let args: BTreeMap<String, String> = stages[0]
        .iter()
        .filter(|(op, _)| op == "ARG")
        .filter_map(|(_, rest)| rest.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let image = |stage: &[(String, String)]| {
        let from = &stage[0];
        assert_eq!(from.0, "FROM");
        let mut image = from.1.split_whitespace().next().unwrap().to_owned();
        for (k, v) in &args {
            image = image.replace(&format!("${{{k}}}"), v);
        }
        image
    };
    let (builder, runtime) = (&stages[1], &stages[stages.len() - 1]);
    assert_eq!(
        stages.len(),
        3,
        "one ARG preamble, a builder and a runtime stage"
    );
    assert_eq!(image(builder), "rust:1-bookworm");
    assert_eq!(image(runtime), "debian:bookworm-slim");
    let build = builder
        .iter()
        .find(|(op, rest)| op == "RUN" && rest.contains("cargo build"))
        .expect("a cargo build step");
    for part in ["--release", "--locked", "--bin ringcached", "--bin ringctl"] {
        assert!(build.1.contains(part), "cargo build without {part}");
    }

    // COPY sources from the context exist (the context is the repository root).
    for (op, rest) in stages.iter().flatten() {
        if op != "COPY" || rest.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = rest
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for source in &words[..words.len() - 1] {
            assert!(repo().join(source).exists(), "COPY {source}: no such path");
        }
    }
    let copies: Vec<&String> = runtime
        .iter()
        .filter(|(op, _)| op == "COPY")
        .map(|(_, rest)| rest)
        .collect();
    assert!(
        copies.iter().any(|c| c.contains("--from=builder")
            && c.contains("/ringcached")
            && c.contains("/ringctl")
            && c.ends_with("/usr/local/bin/")),
        "both binaries go to /usr/local/bin"
    );
    assert!(
        copies.iter().any(|c| c
            .contains("deploy/healthcheck.sh /usr/local/bin/ringcache-healthcheck")
            && c.contains("--chmod=0755")),
        "the health check script is installed executable"
    );

    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, rest)| rest.clone())
        .expect("a USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric uid");
    assert_ne!(uid, 0, "runs as root");
    // The data dir's mount point exists, owned by that user (a new named volume copies it).
    assert!(
        runtime.iter().any(|(op, rest)| op == "RUN"
            && rest.contains(DATA_DIR)
            && rest.contains(&format!("-o {uid}"))),
        "the image makes {DATA_DIR}, owned by uid {uid}"
    );
    for m in k8s_sets() {
        let sts = statefulset(&m);
        assert_eq!(
            sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"], uid,
            "{}: the pod runs as the image's user",
            m.what
        );
    }

    let exposed: BTreeSet<String> = runtime
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let want: BTreeSet<String> = [
        format!("{GRPC_PORT}/tcp"),
        format!("{GOSSIP_PORT}/udp"),
        format!("{HTTP_PORT}/tcp"),
        "7382/tcp".to_owned(),
        format!("{RESP_PORT}/tcp"),
    ]
    .into();
    assert_eq!(exposed, want);

    let health = runtime
        .iter()
        .find(|(op, _)| op == "HEALTHCHECK")
        .map(|(_, rest)| rest.clone())
        .expect("a HEALTHCHECK");
    let (_, cmd) = health.split_once("CMD ").expect("HEALTHCHECK ... CMD");
    assert_eq!(
        docker_exec_form(cmd, "HEALTHCHECK CMD"),
        ["ringcache-healthcheck", "/health/live"]
    );
    let script = read("healthcheck.sh");
    assert!(script.contains(&format!("${{RINGCACHE_HTTP_PORT:-{HTTP_PORT}}}")));

    assert_eq!(
        docker_env().get("RINGCACHE_BIND").map(String::as_str),
        Some("0.0.0.0")
    );
    assert!(
        dockerfile()
            .iter()
            .any(|(op, rest)| op == "STOPSIGNAL" && rest == "SIGTERM")
    );
    let ignore = read("Dockerfile.dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "target/ stays out of the context"
    );

    // As documented: the image's wildcard bind without an advertise address is refused, by name.
    let out = Command::new(BIN)
        .env_clear()
        .envs(docker_env())
        .args(["--grpc-port=0", "--http-port=0", "--gossip-port=0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("advertise_addr"));
}

#[test]
fn the_health_check_script_passes_on_a_live_node_and_fails_on_a_dead_one() {
    let script = deploy().join("healthcheck.sh");
    let check = |port: u16, path: &str| {
        Command::new("bash")
            .arg(&script)
            .arg(path)
            .env("RINGCACHE_HTTP_PORT", port.to_string())
            .stderr(Stdio::null())
            .status()
            .expect("run bash")
            .success()
    };
    let (node, addr) = local_node();
    let (_, port) = host_port(&addr);
    assert!(check(port, "/health/live"));
    assert!(check(port, "/health/ready"), "a lone node is active");
    assert!(!check(port, "/no/such/path"), "only a 200 passes");
    drop(node);
    assert!(!check(port, "/health/live"), "nobody listens any more");
}

#[test]
fn compose_nodes_advertise_their_own_address_and_join_through_node_one() {
    let compose = compose();
    let networks = compose["networks"].as_object().expect("networks");
    assert_eq!(networks.len(), 1, "one user network");
    let (network, definition) = networks.iter().next().unwrap();
    let subnet = str_of(
        &definition["ipam"]["config"][0]["subnet"],
        "the network's subnet",
    );

    let launches = compose_launches();
    assert_eq!(launches.len(), 3, "three nodes");
    let mut addresses = Vec::new();
    let mut ids = BTreeSet::new();
    for (launch, service) in &launches {
        let what = &launch.what;
        let ip = ipv4(str_of(
            &service["networks"][network]["ipv4_address"],
            "ipv4_address",
        ));
        assert!(in_subnet(ip, subnet), "{what}: {ip} outside {subnet}");
        assert_eq!(launch.setting("bind").as_deref(), Some("0.0.0.0"), "{what}");
        assert_eq!(
            launch.setting("advertise_addr"),
            Some(ip.to_string()),
            "{what} advertises its own address"
        );
        let id = launch.setting("node_id").expect("a node id");
        assert!(ids.insert(id.clone()), "{what}: node id {id} used twice");
        addresses.push(ip.to_string());

        let health = serde_json::to_string(&service["healthcheck"]["test"]).unwrap();
        assert!(
            health.contains("ringcache-healthcheck") && health.contains("/health/live"),
            "{what}: healthcheck {health}"
        );
        let grace =
            humantime::parse_duration(str_of(&service["stop_grace_period"], "stop_grace_period"))
                .unwrap();
        assert!(
            grace >= launch.graceful_stop(),
            "{what}: stop_grace_period {grace:?} < graceful stop {:?}",
            launch.graceful_stop()
        );
        let limit = binary_size(str_of(&service["mem_limit"], "mem_limit"));
        let want = memory_limit_for(launch.max_memory());
        assert!(
            limit >= want && limit - want < 8 << 20,
            "{what}: mem_limit {limit} for max_memory {}: want {want} rounded up",
            launch.max_memory()
        );
        assert_ne!(
            service["restart"], "always",
            "{what}: a drained node must stay down"
        );
        assert_ne!(
            service["restart"], "unless-stopped",
            "{what}: a drained node must stay down"
        );

        // Published ports: loopback only, gRPC and HTTP over TCP.
        for port in service["ports"].as_array().into_iter().flatten() {
            let spec = str_of(port, "ports entry");
            let (spec, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
            let parts: Vec<&str> = spec.split(':').collect();
            assert_eq!(parts.len(), 3, "{what}: {spec}: want IP:HOST:CONTAINER");
            assert_eq!(
                parts[0], "127.0.0.1",
                "{what}: {spec} is published beyond loopback"
            );
            let container: u16 = parts[2].parse().unwrap();
            assert!(
                (container == GRPC_PORT || container == HTTP_PORT || container == RESP_PORT)
                    && proto == "tcp",
                "{what}: publishes {container}/{proto}"
            );
        }
    }
    let first = &addresses[0];
    assert!(
        launches[0].1["ports"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "node 1 publishes its ports"
    );
    for (launch, service) in &launches {
        let seeds = launch.seeds();
        assert!(
            seeds.contains(&format!("{first}:{GOSSIP_PORT}")),
            "{}: seeds {seeds:?} do not name node 1's gossip address",
            launch.what
        );
        for seed in &seeds {
            let (host, _) = host_port(seed);
            assert!(
                addresses.iter().any(|a| a == host),
                "{}: seed {seed} is no node",
                launch.what
            );
        }
        if launch.what != launches[0].0.what {
            let first_name = &compose_services()[0].0;
            assert_eq!(
                service["depends_on"][first_name]["condition"], "service_healthy",
                "{} starts after node 1 is healthy",
                launch.what
            );
        }
    }
}

// ---- tests: Kubernetes ---------------------------------------------------------------------------
// Each test runs over every set of manifests: deploy/k8s/ and the Helm chart rendered with its
// default values and with each values file of deploy/helm/ringcache/ci/.

/// The pods take their zone from a pod label through the downward API (deploy/k8s and the
/// chart by default: `topology.kubernetes.io/zone`) and spread evenly over zones; the chart
/// can name another label, or none.
#[test]
fn k8s_pods_take_their_zone_from_a_pod_label_and_spread_over_zones() {
    for m in k8s_sets() {
        let what = m.what.as_str();
        let sts = statefulset(&m);
        let (_, fields) = container_env(&ringcached_container(&sts));
        let zone = fields.get("RINGCACHE_ZONE").map(String::as_str);
        let pod = &sts["spec"]["template"]["spec"];
        let pod_labels = labels(&sts["spec"]["template"]["metadata"]["labels"]);
        let spreads: Vec<&Value> = pod["topologySpreadConstraints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["topologyKey"] == "topology.kubernetes.io/zone")
            .collect();
        for spread in &spreads {
            assert!(
                selects(
                    &labels(&spread["labelSelector"]["matchLabels"]),
                    &pod_labels
                ),
                "{what}: the zone spread counts the ringcache pods"
            );
        }
        let when = |c: &&Value| c["whenUnsatisfiable"].as_str().map(str::to_owned);
        let expected: (Option<&str>, Option<&str>) = match what {
            "deploy/k8s" | "helm chart, default values" => (
                Some("metadata.labels['topology.kubernetes.io/zone']"),
                Some("ScheduleAnyway"),
            ),
            "helm chart, ci/grpc-probe-values.yaml" => (None, Some("DoNotSchedule")),
            "helm chart, ci/secure-values.yaml" => (
                Some("metadata.labels['example.com/failure-domain']"),
                Some("ScheduleAnyway"),
            ),
            other => panic!("{other}: say what zone settings it renders"),
        };
        assert_eq!(zone, expected.0, "{what}: RINGCACHE_ZONE");
        assert_eq!(spreads.len(), 1, "{what}: one spread over zones");
        assert_eq!(
            spreads.first().and_then(when).as_deref(),
            expected.1,
            "{what}: the zone spread"
        );
    }
}

#[test]
fn k8s_objects_fit_together() {
    for m in k8s_sets() {
        check_objects_fit_together(&m);
    }
}

fn check_objects_fit_together(m: &Manifests) {
    let what = &m.what;
    let sts = statefulset(m);
    assert_eq!(sts["apiVersion"], "apps/v1");
    let name = str_of(&sts["metadata"]["name"], "name");
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas");
    assert_eq!(replicas, m.expect.replicas, "{what}");
    assert_eq!(
        sts["spec"]["podManagementPolicy"], "OrderedReady",
        "{what}: one pod at a time"
    );
    let pod_labels = labels(&sts["spec"]["template"]["metadata"]["labels"]);
    assert!(
        selects(
            &labels(&sts["spec"]["selector"]["matchLabels"]),
            &pod_labels
        ),
        "{what}: the StatefulSet selects its own pods"
    );

    // The headless Service named by serviceName.
    let service_name = str_of(&sts["spec"]["serviceName"], "serviceName");
    let headless = m.one("Service", Some(service_name));
    assert_eq!(headless["apiVersion"], "v1");
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "{what}: serviceName is headless"
    );
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"], true,
        "{what}: seeds must resolve before the pods are ready"
    );
    let services: Vec<&Value> = m.of_kind("Service");
    assert_eq!(services.len(), 2, "{what}: a headless and a client Service");
    for service in &services {
        assert!(
            selects(&labels(&service["spec"]["selector"]), &pod_labels),
            "{what}: Service {} selects the pods",
            service["metadata"]["name"]
        );
    }
    let client = services
        .iter()
        .find(|s| s["metadata"]["name"] != service_name)
        .unwrap();
    assert_ne!(client["spec"]["clusterIP"], "None");
    // gRPC (clients fetch the topology there) and RESP (any node serves any key).
    let client_ports: Vec<&Value> = client["spec"]["ports"].as_array().unwrap().iter().collect();
    assert_eq!(
        client_ports[0]["port"], GRPC_PORT,
        "{what}: clients start at gRPC"
    );
    if m.expect.resp {
        assert_eq!(client_ports.len(), 2, "{what}");
        assert_eq!(client_ports[1]["port"], RESP_PORT, "{what}");
    } else {
        assert_eq!(client_ports.len(), 1, "{what}: no RESP port");
    }

    // PodDisruptionBudget, when there is one (the chart can turn it off).
    for pdb in m.of_kind("PodDisruptionBudget") {
        assert_eq!(pdb["apiVersion"], "policy/v1");
        assert_eq!(
            pdb["spec"]["maxUnavailable"], 1,
            "{what}: one pod at a time"
        );
        assert!(
            selects(
                &labels(&pdb["spec"]["selector"]["matchLabels"]),
                &pod_labels
            ),
            "{what}: the PDB selects the pods"
        );
    }

    // ServiceMonitor, if shipped: selects the headless Service only, by a port it has.
    for doc in m.of_kind("ServiceMonitor") {
        assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
        let selector = labels(&doc["spec"]["selector"]["matchLabels"]);
        let selected: Vec<&&Value> = services
            .iter()
            .filter(|s| selects(&selector, &labels(&s["metadata"]["labels"])))
            .collect();
        assert_eq!(
            selected.len(),
            1,
            "{what}: the ServiceMonitor selects one Service"
        );
        assert_eq!(selected[0]["metadata"]["name"], service_name, "{what}");
        for endpoint in doc["spec"]["endpoints"].as_array().unwrap() {
            let port = &endpoint["port"];
            assert!(
                headless["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == *port && p["port"] == HTTP_PORT),
                "{what}: ServiceMonitor port {port} is not the headless Service's HTTP port"
            );
            assert_eq!(endpoint["path"], "/metrics");
        }
    }

    // NetworkPolicy, if any: selects the pods, lets the pods reach each other's gossip and
    // cluster ports, and names only ports the container has.
    for policy in m.of_kind("NetworkPolicy") {
        assert_eq!(policy["apiVersion"], "networking.k8s.io/v1");
        assert!(
            selects(
                &labels(&policy["spec"]["podSelector"]["matchLabels"]),
                &pod_labels
            ),
            "{what}: the NetworkPolicy applies to the pods"
        );
        let container = ringcached_container(&sts);
        let container_ports: Vec<(String, String)> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    str_of(&p["name"], "port name").to_owned(),
                    p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                )
            })
            .collect();
        let mut opened = BTreeSet::new();
        for rule in policy["spec"]["ingress"].as_array().expect("ingress rules") {
            let ports: Vec<String> = rule["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .map(|p| {
                    let name = str_of(&p["port"], "port").to_owned();
                    let protocol = p["protocol"].as_str().unwrap_or("TCP").to_owned();
                    assert!(
                        container_ports.contains(&(name.clone(), protocol.clone())),
                        "{what}: the NetworkPolicy opens {name}/{protocol}, which the container does not have"
                    );
                    name
                })
                .collect();
            let peers = rule["from"].as_array();
            if ports.iter().any(|p| p == "gossip" || p == "cluster") {
                let peers = peers.expect("the cluster plane is open to the pods only");
                assert_eq!(peers.len(), 1, "{what}");
                assert!(
                    selects(
                        &labels(&peers[0]["podSelector"]["matchLabels"]),
                        &pod_labels
                    ),
                    "{what}: the cluster plane is open to the ringcache pods"
                );
            }
            opened.extend(ports);
        }
        let all: BTreeSet<String> = container_ports.into_iter().map(|(n, _)| n).collect();
        assert_eq!(opened, all, "{what}: every port is reachable by someone");
    }

    // The container: identity, addresses and seeds from the downward API and the headless names.
    let container = ringcached_container(&sts);
    let (values, fields) = container_env(&container);
    assert_eq!(
        fields.get("POD_NAME").map(String::as_str),
        Some("metadata.name")
    );
    assert_eq!(
        fields.get("POD_IP").map(String::as_str),
        Some("status.podIP")
    );
    let launch = k8s_launch(m);
    assert_eq!(
        launch.flag("node-id").as_deref(),
        Some("$(POD_NAME)"),
        "{what}: node id = pod name"
    );
    assert_eq!(launch.flag("advertise-addr").as_deref(), Some("$(POD_IP)"));
    assert_eq!(launch.setting("bind").as_deref(), Some("0.0.0.0"));
    for arg in &launch.args {
        let mut rest = arg.as_str();
        while let Some(at) = rest.find("$(") {
            let end = rest[at..].find(')').expect("closing )") + at;
            let var = &rest[at + 2..end];
            assert!(
                values.contains_key(var) || fields.contains_key(var),
                "{what}: {arg}: $({var}) is not in the container's env, so Kubernetes would not expand it"
            );
            rest = &rest[end + 1..];
        }
    }
    let namespace_var = fields
        .iter()
        .find(|(_, path)| *path == "metadata.namespace")
        .map(|(name, _)| format!("$({name})"));
    let seeds = launch.seeds();
    assert!(seeds.len() >= 2, "{what}: at least two seeds: {seeds:?}");
    let domain: Vec<&str> = m.expect.cluster_domain.split('.').collect();
    for (i, seed) in seeds.iter().enumerate() {
        let (host, port) = host_port(seed);
        assert_eq!(port, GOSSIP_PORT, "{seed}");
        let labels: Vec<&str> = host.split('.').collect();
        assert_eq!(
            labels.len(),
            4 + domain.len(),
            "{seed}: want POD.SERVICE.NAMESPACE.svc.{}",
            m.expect.cluster_domain
        );
        assert_eq!(
            labels[0],
            format!("{name}-{i}"),
            "{seed}: the first pods, in order"
        );
        assert!((i as u64) < replicas);
        assert_eq!(
            labels[1], service_name,
            "{seed}: a name of the headless Service"
        );
        if let Some(var) = &namespace_var {
            assert_eq!(labels[2], var, "{seed}: the pod's own namespace");
        }
        assert_eq!(labels[3], "svc", "{seed}");
        assert_eq!(&labels[4..], domain.as_slice(), "{seed}");
    }
    assert!(
        launch.config.is_some(),
        "{what}: the ConfigMap is mounted where --config points"
    );
    // The insecure switch is explicit (the image turns it on) and only on without every
    // protection.
    if let Some(insecure) = values.get("RINGCACHE_INSECURE") {
        let protected = ["tls-cert", "users-file", "cluster-ca", "gossip-keyring"]
            .iter()
            .all(|f| launch.flag(f).is_some());
        assert!(
            insecure == "true" || protected,
            "{what}: RINGCACHE_INSECURE={insecure} without every protection would not start"
        );
    }
}

#[test]
fn k8s_ports_probes_and_scrape_annotations_name_the_right_ports() {
    for m in k8s_sets() {
        check_ports_probes_and_annotations(&m);
    }
}

fn check_ports_probes_and_annotations(m: &Manifests) {
    let what = &m.what;
    let sts = statefulset(m);
    let container = ringcached_container(&sts);
    let ports: BTreeMap<String, (u64, String)> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                str_of(&p["name"], "port name").to_owned(),
                (
                    p["containerPort"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                ),
            )
        })
        .collect();
    let mut want: BTreeMap<String, (u64, String)> = [
        ("grpc".to_owned(), (u64::from(GRPC_PORT), "TCP".to_owned())),
        (
            "gossip".to_owned(),
            (u64::from(GOSSIP_PORT), "UDP".to_owned()),
        ),
        ("http".to_owned(), (u64::from(HTTP_PORT), "TCP".to_owned())),
        ("cluster".to_owned(), (7382, "TCP".to_owned())),
    ]
    .into();
    if m.expect.resp {
        want.insert("resp".to_owned(), (u64::from(RESP_PORT), "TCP".to_owned()));
    } else {
        assert_eq!(
            k8s_launch(m).flag("resp-port").as_deref(),
            Some("0"),
            "{what}"
        );
    }
    assert_eq!(ports, want, "{what}");
    let resolve = |port: &Value| -> u64 {
        match port {
            Value::String(name) => {
                ports
                    .get(name)
                    .unwrap_or_else(|| panic!("{what}: no port {name}"))
                    .0
            }
            other => other.as_u64().expect("a port"),
        }
    };
    for (probe, path) in [
        ("readinessProbe", "/health/ready"),
        ("livenessProbe", "/health/live"),
    ] {
        let probe_spec = &container[probe];
        if let Some(grpc) = probe_spec["grpc"].as_object() {
            // The gRPC health service answers readiness on the client port.
            assert_eq!(probe, "readinessProbe", "{what}: gRPC liveness");
            assert_eq!(
                grpc["port"], GRPC_PORT,
                "{what}: {probe} on the client port"
            );
            assert!(
                grpc.get("service").is_none_or(|s| s == ""),
                "{what}: {probe} asks for the whole node"
            );
            assert!(
                k8s_launch(m).flag("tls-cert").is_none(),
                "{what}: the kubelet's gRPC probe cannot speak TLS"
            );
            continue;
        }
        let get = &probe_spec["httpGet"];
        assert_eq!(get["path"], path, "{what}: {probe}");
        assert_eq!(
            resolve(&get["port"]),
            u64::from(HTTP_PORT),
            "{what}: {probe} port"
        );
    }
    // Readiness outlasts a routine ring change (ready_settle 2s; a suspect member, up to
    // suspicion_timeout 3s): failureThreshold x periodSeconds > 3s.
    let readiness = &container["readinessProbe"];
    let patience = readiness["failureThreshold"].as_u64().unwrap_or(3)
        * readiness["periodSeconds"].as_u64().unwrap_or(10);
    assert!(patience > 3, "{what}: readiness gives up after {patience}s");

    let annotations = labels(&sts["spec"]["template"]["metadata"]["annotations"]);
    if annotations.contains_key("prometheus.io/scrape") {
        assert_eq!(
            annotations.get("prometheus.io/scrape").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            annotations.get("prometheus.io/port"),
            Some(&HTTP_PORT.to_string())
        );
        assert_eq!(
            annotations.get("prometheus.io/path").map(String::as_str),
            Some("/metrics")
        );
    } else {
        assert!(
            !m.of_kind("ServiceMonitor").is_empty(),
            "{what}: neither scrape annotations nor a ServiceMonitor"
        );
    }
    for service in m.of_kind("Service") {
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = resolve(&port["targetPort"]);
            assert_eq!(
                port["port"], target,
                "{what}: {}: port and targetPort",
                port["name"]
            );
            let (_, protocol) = ports
                .values()
                .find(|(p, _)| *p == target)
                .unwrap_or_else(|| panic!("{what}: targetPort {target} is no container port"));
            assert_eq!(
                port["protocol"].as_str().unwrap_or("TCP"),
                protocol,
                "{what}: {}: protocol",
                port["name"]
            );
        }
    }
}

#[test]
fn k8s_grace_period_and_memory_follow_the_config() {
    for m in k8s_sets() {
        let what = &m.what;
        let sts = statefulset(&m);
        let launch = k8s_launch(&m);
        let pod = &sts["spec"]["template"]["spec"];
        let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
        assert!(
            grace >= launch.graceful_stop(),
            "{what}: terminationGracePeriodSeconds {grace:?} < graceful stop {:?}",
            launch.graceful_stop()
        );
        let container = ringcached_container(&sts);
        let resources = &container["resources"];
        let limit = binary_size(str_of(&resources["limits"]["memory"], "memory limit"));
        let request = binary_size(str_of(&resources["requests"]["memory"], "memory request"));
        let want = memory_limit_for(launch.max_memory());
        assert!(
            limit >= want && (limit - want < 8 << 20 || !m.expect.computed_memory),
            "{what}: memory limit {limit} for max_memory {}: want {want} rounded up",
            launch.max_memory()
        );
        assert_eq!(request, limit, "{what}: request = limit");
        assert!(resources["requests"]["cpu"].is_string(), "{what}");
        // Workers: set, or read from the CPU quota (a CPU limit), or the CPU request.
        let (values, _) = container_env(&container);
        if resources["limits"]["cpu"].is_null() {
            let workers = values
                .get("RINGCACHE_WORKERS")
                .unwrap_or_else(|| panic!("{what}: no CPU limit and no workers setting"));
            let workers: f64 = workers.parse().unwrap();
            assert!(
                workers >= cpu_cores(&resources["requests"]["cpu"]),
                "{what}: {workers} workers for a request of {}",
                resources["requests"]["cpu"]
            );
        }
    }
}

#[test]
fn k8s_pods_keep_their_snapshot_on_a_volume_of_their_own_and_restart_warm() {
    for m in k8s_sets() {
        let what = &m.what;
        let sts = statefulset(&m);
        let launch = k8s_launch(&m);
        let container = ringcached_container(&sts);
        let pod = &sts["spec"]["template"]["spec"];
        let claims = sts["spec"]["volumeClaimTemplates"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // Rolling restarts one pod at a time: each waits for the previous one to be ready again.
        assert_eq!(
            sts["spec"]["updateStrategy"]["type"], "RollingUpdate",
            "{what}"
        );
        let unavailable = &sts["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"];
        assert!(
            unavailable.is_null() || *unavailable == 1,
            "{what}: maxUnavailable {unavailable}: one pod at a time"
        );
        let Some(dir) = launch.setting("data_dir") else {
            assert!(!m.expect.persistence, "{what}: persistence but no data_dir");
            assert!(claims.is_empty(), "{what}: a volume claim no data_dir uses");
            assert_eq!(
                launch.setting("shutdown_mode").as_deref(),
                Some("handoff"),
                "{what}: without a data dir, SIGTERM hands off (and says so)"
            );
            continue;
        };
        assert!(
            m.expect.persistence,
            "{what}: a data_dir without persistence"
        );
        assert_eq!(dir, DATA_DIR, "{what}: data_dir");
        assert_eq!(
            launch.shutdown_mode(),
            "restart",
            "{what}: with a data volume, a rolling update keeps the pods warm"
        );
        // A writable mount at exactly data_dir, from a volume claim template (a pod volume such
        // as an emptyDir goes with the pod a rolling update replaces).
        let mount = container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|mount| str_of(&mount["mountPath"], "mountPath").trim_end_matches('/') == dir)
            .unwrap_or_else(|| panic!("{what}: nothing is mounted at data_dir {dir}"));
        assert_ne!(mount["readOnly"], true, "{what}: data_dir is read-only");
        assert!(mount["subPath"].is_null(), "{what}: the whole volume");
        let name = &mount["name"];
        assert!(
            pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|volume| volume["name"] != *name),
            "{what}: data_dir is on a pod volume {name}, not a claim of the pod's own"
        );
        let claim = claims
            .iter()
            .find(|claim| claim["metadata"]["name"] == *name)
            .unwrap_or_else(|| panic!("{what}: no volumeClaimTemplate {name}"));
        assert_eq!(
            claim["spec"]["accessModes"],
            serde_json::json!(["ReadWriteOnce"]),
            "{what}"
        );
        // Room for a new snapshot beside the previous one: each up to max_memory.
        let size = binary_size(str_of(
            &claim["spec"]["resources"]["requests"]["storage"],
            "storage request",
        ));
        assert!(
            size >= 2 * launch.max_memory(),
            "{what}: a {size}-byte volume for max_memory {}",
            launch.max_memory()
        );
        // The unprivileged user can write it.
        let security = &pod["securityContext"];
        assert!(security["fsGroup"].is_u64(), "{what}: no fsGroup");
        assert_eq!(
            security["fsGroup"], security["runAsGroup"],
            "{what}: the volume's group is the node's"
        );
        // The grace period covers the snapshot too (k8s_grace_period_and_memory_follow_the_config
        // checks the sum).
        assert!(
            launch.snapshot_write() > Duration::ZERO,
            "{what}: the stop writes a snapshot"
        );
        // The others keep a restarting pod's ranges long enough for it to be rescheduled.
        assert!(
            launch.duration("restart_grace", "60s") >= Duration::from_secs(60),
            "{what}: restart_grace"
        );
    }
}

// ---- tests: systemd ------------------------------------------------------------------------------

#[test]
fn systemd_unit_is_hardened_and_waits_for_the_leave() {
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(service_value(key), value, "{key}");
    }
    let launch = systemd_launch();
    let stop = service_value("TimeoutStopSec");
    let stop = match stop.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(&stop).unwrap(),
    };
    assert!(
        stop >= launch.graceful_stop(),
        "TimeoutStopSec {stop:?} < graceful stop {:?}",
        launch.graceful_stop()
    );
    let limit = binary_size(&service_value("MemoryMax"));
    let want = memory_limit_for(launch.max_memory());
    assert!(
        limit >= want && limit - want < 8 << 20,
        "MemoryMax {limit} for max_memory {}: want {want} rounded up",
        launch.max_memory()
    );
    let files: u64 = service_value("LimitNOFILE").parse().unwrap();
    assert!(files >= 4096);

    // Warm restarts: the snapshot goes to the unit's state directory, the one place it may
    // write (DynamicUser implies ProtectSystem=strict; StateDirectory is writable under it).
    let state = service_value("StateDirectory");
    assert_eq!(
        launch.setting("data_dir").as_deref(),
        Some(format!("/var/lib/{state}").as_str()),
        "data_dir is the unit's StateDirectory"
    );
    assert_eq!(launch.setting("data_dir").as_deref(), Some(DATA_DIR));
    assert_eq!(
        launch.shutdown_mode(),
        "restart",
        "`systemctl restart` is a warm restart"
    );
    assert!(launch.snapshot_write() > Duration::ZERO);
    for (key, value) in service_values("ReadWritePaths")
        .iter()
        .map(|v| ("ReadWritePaths", v))
        .chain(
            service_values("ReadOnlyPaths")
                .iter()
                .map(|v| ("ReadOnlyPaths", v)),
        )
    {
        assert!(
            !value.contains(DATA_DIR),
            "{key}={value}: the state directory is writable as it is"
        );
    }

    // The sample config names a reachable address (not a wildcard without advertise_addr).
    let bind: std::net::IpAddr = launch.setting("bind").unwrap().parse().unwrap();
    assert!(
        !bind.is_loopback(),
        "a cluster node binds an address others reach"
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect(
            "systemd-analyze is needed to check the unit: apt-get install systemd (scripts/test-deps does)",
        );
    assert!(out.status.success());
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("ringcache-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = read("systemd/ringcached.service").replace("/usr/local/bin/ringcached", BIN);
    let path = dir.join("ringcached.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 even for unknown keys or bad values; it says so on stderr.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

// ---- tests: Grafana ------------------------------------------------------------------------------

/// A label matcher: label, operator (`=`, `!=`, `=~`, `!~`), value.
type Matcher = (String, String, String);

/// Metric names (`ringcache_*`) in a PromQL expression, each with its label matchers.
/// Where the next metric name the node exports starts in `expr`: `ringcache_*`, or the standard
/// `process_*` set, at the start of a word.
fn next_metric(expr: &str) -> Option<usize> {
    ["ringcache_", "process_"]
        .iter()
        .filter_map(|prefix| {
            expr.match_indices(prefix).map(|(at, _)| at).find(|&at| {
                expr[..at]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
            })
        })
        .min()
}

fn promql_metrics(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = next_metric(rest) {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let mut matchers = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').expect("closing }");
            for matcher in inner[..end]
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
            {
                let op_at = matcher.find(['=', '!']).expect("a matcher operator");
                let label = matcher[..op_at].trim().to_owned();
                let op: String = matcher[op_at..]
                    .chars()
                    .take_while(|c| "=!~".contains(*c))
                    .collect();
                let value = matcher[op_at + op.len()..]
                    .trim()
                    .trim_matches('"')
                    .to_owned();
                matchers.push((label, op, value));
            }
            rest = &inner[end + 1..];
        }
        out.push((name, matchers));
    }
    out
}

/// Label names in `by (...)` and `without (...)` clauses.
fn promql_grouping(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for keyword in ["by (", "without ("] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let inner = &rest[at + keyword.len()..];
            let end = inner.find(')').unwrap();
            out.extend(inner[..end].split(',').map(|l| l.trim().to_owned()));
            rest = &inner[end..];
        }
    }
    out
}

/// The series a fresh node exports: metric name -> label name -> values seen.
fn scraped_series() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let (node, addr) = local_node();
    let (status, body) = http_get(&addr, "/metrics").expect("GET /metrics");
    drop(node);
    assert_eq!(status, 200);
    let mut series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap();
        let entry = series.entry(line[..name_end].to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let end = line.find('}').unwrap();
            for pair in line[name_end + 1..end].split(',') {
                let (label, value) = pair.split_once('=').unwrap();
                entry
                    .entry(label.to_owned())
                    .or_default()
                    .insert(value.trim_matches('"').to_owned());
            }
        }
    }
    series
}

#[test]
fn grafana_dashboard_queries_metrics_and_labels_the_node_exports() {
    let dashboard: Value = serde_json::from_str(&read("grafana/ringcache-dashboard.json")).unwrap();
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );

    let source = std::fs::read_to_string(repo().join("server/src/metrics.rs")).unwrap();
    let series = scraped_series();
    let histograms: BTreeSet<String> = series
        .keys()
        .filter_map(|n| n.strip_suffix("_bucket").map(str::to_owned))
        .collect();

    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    let nested: Vec<&Value> = panels
        .iter()
        .flat_map(|p| p["panels"].as_array().into_iter().flatten())
        .collect();
    panels.extend(nested);
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut queries = 0;
    for panel in &panels {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let title = str_of(&panel["title"], "title");
        assert!(!title.is_empty());
        assert!(
            panel["gridPos"]["w"].is_u64() && panel["gridPos"]["h"].is_u64(),
            "{title}: gridPos"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            ["timeseries", "stat", "gauge", "bargauge", "table"]
                .contains(&str_of(&panel["type"], "type")),
            "{title}: panel type"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = str_of(&target["expr"], "expr");
            queries += 1;
            let metrics = promql_metrics(expr);
            assert!(
                !metrics.is_empty(),
                "{title}: {expr} uses no ringcache metric"
            );
            let mut labels_here: BTreeSet<String> = ["instance", "job"].map(str::to_owned).into();
            for (name, matchers) in &metrics {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix)
                            .filter(|base| histograms.contains(*base))
                    })
                    .unwrap_or(name);
                // `process_*` come from the process collector (metrics-process), not our source.
                assert!(
                    family.starts_with("process_") || source.contains(&format!("\"{family}\"")),
                    "{title}: {name} is not defined in server/src/metrics.rs"
                );
                let exported = series
                    .get(name)
                    .unwrap_or_else(|| panic!("{title}: {name} is not in a node's /metrics"));
                used.insert(family.to_owned());
                labels_here.extend(exported.keys().cloned());
                for (label, op, value) in matchers {
                    if label == "instance" || label == "job" {
                        continue;
                    }
                    let values = exported
                        .get(label)
                        .unwrap_or_else(|| panic!("{title}: {name} has no label {label}"));
                    if op == "=" || op == "!=" {
                        assert!(
                            values.contains(value),
                            "{title}: {name}{{{label}=\"{value}\"}} never exists"
                        );
                    }
                }
            }
            for label in promql_grouping(expr) {
                assert!(
                    labels_here.contains(&label),
                    "{title}: groups by {label}, which {expr} does not have"
                );
            }
            if expr.contains("histogram_quantile") {
                assert!(
                    expr.contains("_bucket") && promql_grouping(expr).contains(&"le".to_owned()),
                    "{title}: {expr}"
                );
            }
        }
    }
    assert!(queries >= 20, "{queries} queries");

    let families: BTreeSet<String> = series
        .keys()
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|b| histograms.contains(*b)))
                .unwrap_or(n)
                .to_owned()
        })
        .collect();
    let missing: Vec<&String> = families
        .iter()
        .filter(|f| !used.contains(*f) && !NOT_ON_DASHBOARD.contains(&f.as_str()))
        .collect();
    assert!(missing.is_empty(), "metrics with no panel: {missing:?}");
}
