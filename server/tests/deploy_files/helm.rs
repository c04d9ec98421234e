//! The Helm chart (`deploy/helm/ringcache`), linted and rendered by Helm's own engine.
//!
//! No `helm` binary can be installed here (it is in none of the package registries this
//! project's machines reach), so the tests use `helm-python-sdk` from PyPI: Helm v4's Go SDK
//! built into a shared library inside the wheel (no download at install or run time), driven
//! from Python. `lint` is `helm lint --strict`; `render` is `helm template` (the chart's values
//! merged over its defaults and checked against `values.schema.json`, then every template
//! executed). Python is the virtualenv `scripts/test-deps` makes (`<target>/python-clients`,
//! from `tests/python-requirements.txt`) or `$RINGCACHE_TEST_PYTHON`; without it the tests fail
//! and say what to run.
//!
//! The rendered manifests then go through every check `deploy/k8s/` goes through
//! ([`super::k8s_sets`]): objects select each other, ports, probes, seeds, grace period,
//! memory, and a real node started with each rendering's exact settings (the Secrets it mounts
//! made up: certificates, users, a key ring).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Expect, Manifests, deploy, read, str_of, yaml_docs, yaml_text_docs};

/// The chart, relative to `deploy/`.
const CHART: &str = "helm/ringcache";
/// Longest one Helm run may take.
const HELM_DEADLINE: Duration = Duration::from_secs(120);
const INSTALL: &str = "run scripts/test-deps (with the same CARGO_TARGET_DIR): it makes the \
    virtualenv <target>/python-clients with tests/python-requirements.txt (helm-python-sdk); or \
    point RINGCACHE_TEST_PYTHON at a Python 3 with `pip install helm-python-sdk==0.2.2`";

/// Lints and renders as the request says; prints one JSON object (see [`run_helm`]).
const HELM_SCRIPT: &str = r#"
import json, sys
import helm_python as helm

request = json.load(sys.stdin)
out = {"versions": [helm.helm_c_version(), helm.helm_sdk_version()], "lint": [], "renders": []}
for values in request["lint"]:
    out["lint"].append(helm.lint(request["chart"], values, strict=True, namespace="default"))
with helm.Chart.load(request["chart"]) as chart:
    for r in request["renders"]:
        try:
            manifests = chart.render(r["values"], name=r["name"], namespace=r["namespace"], is_install=True)
            out["renders"].append({"manifests": manifests})
        except helm.HelmError as error:
            out["renders"].append({"error": str(error)})
json.dump(out, sys.stdout)
"#;

use ringcache_test_support::python;

/// One rendering to ask for: values (over the chart's defaults), release name, namespace.
#[derive(Debug, Clone)]
pub(super) struct Render {
    pub(super) values: Value,
    pub(super) name: String,
    pub(super) namespace: String,
}

impl Render {
    pub(super) fn new(values: Value, name: &str, namespace: &str) -> Self {
        Self {
            values,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }
}

/// What Helm said: a lint report per values set linted, and per rendering either the
/// manifests (template path -> text) or Helm's error.
#[derive(Debug)]
pub(super) struct HelmOutput {
    pub(super) lint: Vec<Value>,
    pub(super) renders: Vec<Result<BTreeMap<String, String>, String>>,
}

/// Runs Helm once: lints the chart with each of `lint` (values) and renders each of `renders`.
pub(super) fn run_helm(lint: &[Value], renders: &[Render]) -> HelmOutput {
    let request = json!({
        "chart": deploy().join(CHART),
        "lint": lint,
        "renders": renders
            .iter()
            .map(|r| json!({"values": r.values, "name": r.name, "namespace": r.namespace}))
            .collect::<Vec<_>>(),
    });
    let mut child = Command::new(python())
        .args(["-c", HELM_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", python()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx
        .recv_timeout(HELM_DEADLINE)
        .unwrap_or_else(|_| {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("Helm did not finish within {HELM_DEADLINE:?}")
        })
        .expect("wait for Python");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Helm (through {}) failed: {stderr}\n{INSTALL}",
        python()
    );
    let out: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("Helm's answer is not JSON: {e}: {stderr}"));
    let renders = out["renders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match r["manifests"].as_object() {
            Some(files) => Ok(files
                .iter()
                .map(|(k, v)| (k.clone(), str_of(v, k).to_owned()))
                .collect()),
            None => Err(str_of(&r["error"], "error").to_owned()),
        })
        .collect();
    HelmOutput {
        lint: out["lint"].as_array().unwrap().clone(),
        renders,
    }
}

/// The values of a YAML file under the chart, as JSON.
fn values_file(rel: &str) -> Value {
    let docs = yaml_docs(&format!("{CHART}/{rel}"));
    assert_eq!(docs.len(), 1, "{rel}: one document");
    docs.into_iter().next().unwrap()
}

/// The chart's values files for tests (`ci/*.yaml`, as chart-testing reads them).
fn ci_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(deploy().join(CHART).join("ci"))
        .expect("deploy/helm/ringcache/ci")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

/// The renderings every Kubernetes check runs over: the chart's defaults (release
/// `ringcache` in `cache`) and each `ci/` values file (release `ci-N` in `ns-N`).
fn standard() -> Vec<(String, Render)> {
    let mut out = vec![(
        "helm chart, default values".to_owned(),
        Render::new(json!({}), "ringcache", "cache"),
    )];
    for (i, file) in ci_files().into_iter().enumerate() {
        let values = values_file(&format!("ci/{file}"));
        out.push((
            format!("helm chart, ci/{file}"),
            Render::new(values, &format!("ci-{i}"), &format!("ns-{i}")),
        ));
    }
    out
}

/// A rendering's manifests as documents (NOTES.txt left out), with what its values ask for.
pub(super) fn manifests(
    what: &str,
    render: &Render,
    files: &BTreeMap<String, String>,
) -> Manifests {
    let merged = merged_values(&render.values);
    let docs = files
        .iter()
        .filter(|(path, _)| path.ends_with(".yaml"))
        .flat_map(|(path, text)| yaml_text_docs(path, text))
        .collect();
    Manifests {
        what: what.to_owned(),
        docs,
        expect: Expect {
            replicas: merged["replicas"].as_u64().unwrap(),
            resp: merged["resp"]["enabled"].as_bool().unwrap(),
            cluster_domain: str_of(&merged["clusterDomain"], "clusterDomain").to_owned(),
            computed_memory: merged["resources"]["memory"] == "",
            persistence: merged["persistence"]["enabled"].as_bool().unwrap(),
        },
    }
}

/// `values` over the chart's defaults (maps merged, everything else replaced), as Helm does.
fn merged_values(values: &Value) -> Value {
    fn merge(base: &mut Value, over: &Value) {
        match (base, over) {
            (Value::Object(base), Value::Object(over)) => {
                for (k, v) in over {
                    merge(base.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (base, over) => *base = over.clone(),
        }
    }
    let mut defaults = values_file("values.yaml");
    merge(&mut defaults, values);
    defaults
}

/// The chart's standard renderings (rendered once per test binary).
pub(super) fn standard_renders() -> &'static [Manifests] {
    static RENDERS: OnceLock<Vec<Manifests>> = OnceLock::new();
    RENDERS.get_or_init(|| {
        let standard = standard();
        let renders: Vec<Render> = standard.iter().map(|(_, r)| r.clone()).collect();
        let output = run_helm(&[], &renders);
        standard
            .iter()
            .zip(output.renders)
            .map(|((what, render), files)| {
                let files = files.unwrap_or_else(|e| panic!("{what} does not render: {e}"));
                manifests(what, render, &files)
            })
            .collect()
    })
}

/// The kinds each rendering makes, by template.
fn kinds(m: &Manifests) -> Vec<String> {
    let mut kinds: Vec<String> = m
        .docs
        .iter()
        .map(|d| str_of(&d["kind"], "kind").to_owned())
        .collect();
    kinds.sort();
    kinds
}

#[test]
fn helm_lint_passes_strict_with_every_values_file() {
    let mut lint = vec![json!({})];
    lint.extend(ci_files().iter().map(|f| values_file(&format!("ci/{f}"))));
    let output = run_helm(&lint, &[]);
    assert_eq!(output.lint.len(), lint.len());
    for (report, values) in output.lint.iter().zip(&lint) {
        assert_eq!(report["total_charts_linted"], 1, "{report}");
        assert_eq!(report["errors"], json!([]), "{values}: {report}");
        // Severity 1 is info ("icon is recommended"); warnings and errors fail.
        for message in report["messages"].as_array().unwrap() {
            assert!(
                message["severity"].as_u64().unwrap() <= 1,
                "{values}: {message}"
            );
        }
    }
}

#[test]
fn the_chart_renders_what_deploy_k8s_deploys_by_default_and_every_value_when_set() {
    let renders = standard_renders();
    assert!(
        renders.len() >= 3,
        "defaults and at least two ci/ values files"
    );
    // By default: the objects of deploy/k8s/ (the ServiceMonitor and NetworkPolicy are opt-in).
    assert_eq!(
        kinds(&renders[0]),
        [
            "ConfigMap",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "StatefulSet"
        ]
    );
    // The same cluster-wide settings as deploy/k8s/configmap.yaml.
    let ours = super::k8s_launch(&renders[0]).toml().unwrap();
    let theirs = super::k8s_launch(&super::static_k8s()).toml().unwrap();
    assert_eq!(ours, theirs, "the default ringcache.toml is deploy/k8s's");

    // Every key of values.yaml is set to something else by some ci/ file, so each branch of
    // the templates renders.
    let defaults = values_file("values.yaml");
    let ci: Vec<Value> = ci_files()
        .iter()
        .map(|f| values_file(&format!("ci/{f}")))
        .collect();
    let mut unset = Vec::new();
    fn leaves(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
        match value.as_object() {
            Some(map) if !map.is_empty() => {
                for (k, v) in map {
                    leaves(&format!("{prefix}{k}."), v, out);
                }
            }
            _ => out.push((prefix.trim_end_matches('.').to_owned(), value.clone())),
        }
    }
    let mut default_leaves = Vec::new();
    leaves("", &defaults, &mut default_leaves);
    for (path, default) in default_leaves {
        let changed = ci.iter().any(|values| {
            let mut at = values;
            for part in path.split('.') {
                at = &at[part];
            }
            !at.is_null() && *at != default
        });
        if !changed {
            unset.push(path);
        }
    }
    assert!(unset.is_empty(), "values no ci/ file sets: {unset:?}");
    // Everything the chart can make is made by some rendering.
    let all: std::collections::BTreeSet<String> = renders.iter().flat_map(kinds).collect();
    for kind in [
        "ConfigMap",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "ServiceMonitor",
        "StatefulSet",
    ] {
        assert!(all.contains(kind), "no rendering makes a {kind}");
    }
}

#[test]
fn bad_values_are_refused_naming_what_to_change() {
    let cases: Vec<(Value, &str)> = vec![
        // values.schema.json
        (
            json!({"replicas": "three"}),
            "at '/replicas': got string, want integer",
        ),
        (json!({"replicas": 1}), "at '/replicas'"),
        (
            json!({"replcas": 3}),
            "additional properties 'replcas' not allowed",
        ),
        (json!({"maxMemory": "lots"}), "at '/maxMemory'"),
        (json!({"leaveTimeout": "5 minutes"}), "at '/leaveTimeout'"),
        (
            json!({"probes": {"readiness": {"type": "tcp"}}}),
            "at '/probes/readiness/type'",
        ),
        (
            json!({"security": {"tls": {"secret": "x"}}}),
            "additional properties 'secret' not allowed",
        ),
        (json!({"workers": 0}), "at '/workers'"),
        // checks across values (_helpers.tpl)
        (
            json!({"security": {"insecure": false, "usersSecret": "u"}}),
            "security.insecure is false, so the nodes need every protection, and these are missing: security.tls.secretName (TLS on the client port), security.clusterTls.secretName (cluster TLS), security.gossipKeyringSecret (a gossip key ring)",
        ),
        (
            json!({"probes": {"readiness": {"type": "grpc"}}, "security": {"tls": {"secretName": "t"}}}),
            "the kubelet's gRPC probe does not speak TLS",
        ),
        (
            json!({"security": {"tls": {"requireClientCerts": true}}}),
            "security.tls.requireClientCerts needs security.tls.secretName",
        ),
        (
            json!({"minClusterSize": 4}),
            "minClusterSize 4 is more than replicas 3",
        ),
        (
            json!({"replicationFactor": 5}),
            "replicationFactor 5 is more than replicas 3",
        ),
        (
            json!({"resources": {"memory": "1Gi"}}),
            "resources.memory 1Gi is below max_memory x 1.3 + 128Mi = 1460Mi for maxMemory 1GiB",
        ),
        (
            json!({"terminationGracePeriodSeconds": 60}),
            "terminationGracePeriodSeconds 60 is shorter than a graceful stop (shutdownTimeout + the snapshot, maxMemory at 300MB/s (4s) + leaveTimeout + 5s = 319s)",
        ),
        (
            json!({"terminationGracePeriodSeconds": 60, "persistence": {"enabled": false}}),
            "terminationGracePeriodSeconds 60 is shorter than a graceful stop (shutdownTimeout + leaveTimeout + 5s = 315s)",
        ),
        // persistence
        (
            json!({"persistence": {"enabled": false}, "shutdownMode": "restart"}),
            "shutdownMode restart needs persistence.enabled",
        ),
        (
            json!({"persistence": {"enabled": false}, "snapshotInterval": "5m"}),
            "snapshotInterval needs persistence.enabled",
        ),
        (
            json!({"persistence": {"size": "1Gi"}}),
            "persistence.size 1Gi is below 2 x maxMemory (1GiB)",
        ),
        (
            json!({"persistence": {"size": "3GB"}}),
            "at '/persistence/size'",
        ),
        (json!({"shutdownMode": "drain"}), "at '/shutdownMode'"),
        (json!({"restartGrace": ""}), "at '/restartGrace'"),
        (
            json!({"config": {"data_dir": "/tmp"}}),
            "config.data_dir is set by the chart itself",
        ),
        (
            json!({"config": {"shutdown_mode": "restart"}}),
            "config.shutdown_mode is set by the chart itself",
        ),
        (
            json!({"config": {"seeds": ["x:7380"]}}),
            "config.seeds is set by the chart itself",
        ),
        (
            json!({"config": {"hints": {"max": 1}}}),
            "config.hints: a setting is a string, number, boolean or list, not a map",
        ),
    ];
    let renders: Vec<Render> = cases
        .iter()
        .map(|(values, _)| Render::new(values.clone(), "ringcache", "default"))
        .collect();
    let output = run_helm(&[], &renders);
    for ((values, says), result) in cases.iter().zip(output.renders) {
        match result {
            Ok(_) => panic!("{values} renders; want an error saying {says:?}"),
            Err(error) => assert!(error.contains(says), "{values}: {error}\nwant: {says}"),
        }
    }
}

#[test]
fn the_memory_and_grace_period_follow_their_settings() {
    // Grace: shutdownTimeout + the snapshot (maxMemory at 300MB/s, with persistence) +
    // leaveTimeout + 5s + 15s.
    let cases = [
        (json!({"maxMemory": "256MiB"}), "461Mi", 331),
        (
            json!({"maxMemory": "4GiB", "leaveTimeout": "1m"}),
            "5453Mi",
            105,
        ),
        (
            json!({"maxMemory": "2GB", "shutdownTimeout": "1500ms"}),
            "2608Mi",
            329,
        ),
        (json!({"resources": {"memory": "2Gi"}}), "2Gi", 334),
        (
            json!({"maxMemory": "4GiB", "persistence": {"enabled": false}}),
            "5453Mi",
            330,
        ),
    ];
    let renders: Vec<Render> = cases
        .iter()
        .map(|(values, _, _)| Render::new(values.clone(), "ringcache", "default"))
        .collect();
    let output = run_helm(&[], &renders);
    for (((values, memory, grace), render), files) in cases.iter().zip(&renders).zip(output.renders)
    {
        let files = files.unwrap_or_else(|e| panic!("{values}: {e}"));
        let m = manifests(&values.to_string(), render, &files);
        let sts = super::statefulset(&m);
        let container = super::ringcached_container(&sts);
        assert_eq!(
            container["resources"]["limits"]["memory"], *memory,
            "{values}"
        );
        assert_eq!(
            container["resources"]["requests"]["memory"], *memory,
            "{values}"
        );
        assert_eq!(
            sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], *grace,
            "{values}"
        );
    }
}

#[test]
fn persistence_makes_a_data_volume_per_pod_and_sigterm_a_warm_restart() {
    // (values, the volume's size, the storage class, shutdown_mode)
    let cases = [
        (json!({}), Some("3Gi"), None, "restart"),
        (json!({"maxMemory": "256MiB"}), Some("1Gi"), None, "restart"),
        (json!({"maxMemory": "4GiB"}), Some("9Gi"), None, "restart"),
        (
            json!({"persistence": {"size": "50Gi", "storageClass": "local-ssd"}}),
            Some("50Gi"),
            Some("local-ssd"),
            "restart",
        ),
        (
            json!({"persistence": {"storageClass": "-"}}),
            Some("3Gi"),
            Some(""),
            "restart",
        ),
        (
            json!({"shutdownMode": "handoff"}),
            Some("3Gi"),
            None,
            "handoff",
        ),
        (
            json!({"persistence": {"enabled": false}}),
            None,
            None,
            "handoff",
        ),
        (
            json!({"persistence": {"enabled": false}, "shutdownMode": "handoff"}),
            None,
            None,
            "handoff",
        ),
    ];
    let renders: Vec<Render> = cases
        .iter()
        .map(|(values, ..)| Render::new(values.clone(), "ringcache", "default"))
        .collect();
    let output = run_helm(&[], &renders);
    for (((values, size, class, mode), render), files) in
        cases.iter().zip(&renders).zip(output.renders)
    {
        let files = files.unwrap_or_else(|e| panic!("{values}: {e}"));
        let m = manifests(&values.to_string(), render, &files);
        let sts = super::statefulset(&m);
        let launch = super::k8s_launch(&m);
        assert_eq!(
            launch.setting("shutdown_mode").as_deref(),
            Some(*mode),
            "{values}"
        );
        let claims = &sts["spec"]["volumeClaimTemplates"];
        let security = &sts["spec"]["template"]["spec"]["securityContext"];
        match size {
            Some(size) => {
                assert_eq!(
                    launch.setting("data_dir").as_deref(),
                    Some(super::DATA_DIR),
                    "{values}"
                );
                assert_eq!(claims.as_array().map(Vec::len), Some(1), "{values}");
                let claim = &claims[0]["spec"];
                assert_eq!(claim["resources"]["requests"]["storage"], *size, "{values}");
                match class {
                    Some(class) => assert_eq!(claim["storageClassName"], *class, "{values}"),
                    None => assert!(claim["storageClassName"].is_null(), "{values}"),
                }
                assert_eq!(security["fsGroup"], 10001, "{values}");
                assert_eq!(
                    sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"], "Delete",
                    "{values}"
                );
            }
            None => {
                // No volume, no data dir, nothing that would need one.
                assert!(claims.is_null(), "{values}: {claims}");
                assert!(security["fsGroup"].is_null(), "{values}");
                assert!(
                    sts["spec"]["persistentVolumeClaimRetentionPolicy"].is_null(),
                    "{values}"
                );
                let toml = launch.toml().unwrap();
                for key in [
                    "data_dir",
                    "snapshot_interval",
                    "snapshot_rate",
                    "snapshot_max_age",
                ] {
                    assert!(!toml.contains_key(key), "{values}: {key}");
                }
                let container = super::ringcached_container(&sts);
                assert!(
                    super::mount_of(&sts, &container, "/var/lib/ringcache/snapshot.rcs").is_none(),
                    "{values}"
                );
                assert!(
                    container["volumeMounts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|mount| mount["mountPath"] != super::DATA_DIR),
                    "{values}"
                );
            }
        }
    }
}

#[test]
fn a_changed_config_rolls_the_pods_and_the_chart_files_are_the_packaged_ones() {
    let renders = [
        Render::new(json!({}), "ringcache", "default"),
        Render::new(
            json!({"config": {"hint_max_age": "2m"}}),
            "ringcache",
            "default",
        ),
        Render::new(json!({"replicas": 4}), "ringcache", "default"),
    ];
    let output = run_helm(&[], &renders);
    let checksum = |i: usize| {
        let files = output.renders[i].as_ref().unwrap();
        let m = manifests("", &renders[i], files);
        super::statefulset(&m)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .clone()
    };
    assert_ne!(
        checksum(0),
        checksum(1),
        "a config change changes the pod template"
    );
    assert_eq!(checksum(0), checksum(2), "a scale is no config change");
    // ci/ is for tests only: .helmignore keeps it out of the package.
    let ignore = read(&format!("{CHART}/.helmignore"));
    assert!(ignore.lines().any(|l| l.trim() == "ci/"), "{ignore}");
}

/// The PrometheusRule of a rendering, as a Prometheus rule file (`groups:`).
pub(super) fn prometheus_rule_groups(m: &Manifests) -> Value {
    let rule = m.one("PrometheusRule", None);
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    json!({"groups": rule["spec"]["groups"]})
}
