//! The Prometheus alert rules (`deploy/prometheus/ringcache-alerts.yaml`): Prometheus' own
//! `promtool` checks them and runs their unit tests (`ringcache-alerts.test.yaml`, which feeds
//! series and expects alerts); every metric and label they read is one a real node exports;
//! and the Helm chart's PrometheusRule is the same rules for its release.
//!
//! promtool is in Debian's `prometheus` package (`scripts/test-deps` installs it); without it
//! the tests fail and say so.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::{Value, json};

use super::helm::{Render, manifests, prometheus_rule_groups, run_helm};
use super::{
    check_against_catalog, deploy, promql_grouping, promql_metrics, read, scraped_series, str_of,
    yaml_docs,
};

const RULES: &str = "prometheus/ringcache-alerts.yaml";
const RULE_TESTS: &str = "prometheus/ringcache-alerts.test.yaml";

/// Runs `promtool args` in `deploy/prometheus`; panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): it checks the alert rules; apt-get install prometheus \
                 (scripts/test-deps installs it)"
            )
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{said}");
    said
}

/// The rules of a rule file's groups: `(alert name, rule)`.
fn rules_of(groups: &Value) -> Vec<(String, Value)> {
    groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .map(|rule| (str_of(&rule["alert"], "alert").to_owned(), rule))
        .collect()
}

fn rule_file() -> Value {
    let docs = yaml_docs(RULES);
    assert_eq!(docs.len(), 1);
    docs.into_iter().next().unwrap()
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "ringcache-alerts.yaml"]);
    let count = rules_of(&rule_file()).len();
    assert!(
        checked.contains(&format!("SUCCESS: {count} rules found")),
        "{checked}"
    );
    let tested = promtool(&["test", "rules", "ringcache-alerts.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert has a unit test in which it fires, and one in which it stays quiet.
    let tests = yaml_docs(RULE_TESTS).remove(0);
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_array().unwrap() {
        for check in case["alert_rule_test"].as_array().unwrap() {
            let name = str_of(&check["alertname"], "alertname").to_owned();
            if check["exp_alerts"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for (name, _) in rules_of(&rule_file()) {
        assert!(fires.contains(&name), "{name}: no unit test where it fires");
        assert!(
            quiet.contains(&name),
            "{name}: no unit test where it stays quiet"
        );
    }
}

#[test]
fn alert_rules_and_their_tests_read_only_metrics_and_labels_a_node_exports() {
    let series = scraped_series();
    // Labels Prometheus adds to every scraped series, and the ones its own `up` has.
    let target_labels = ["job", "instance", "namespace"];
    let check_metric = |what: &str, name: &str, matchers: &[(String, String, String)]| {
        if !name.starts_with("process_") {
            // Declared in the metrics catalog, with these labels and values.
            check_against_catalog(what, name, matchers, &target_labels);
        }
        let exported = series
            .get(name)
            .unwrap_or_else(|| panic!("{what}: {name} is not in a node's /metrics"));
        for (label, op, value) in matchers {
            if target_labels.contains(&label.as_str()) {
                continue;
            }
            let values = exported
                .get(label)
                .unwrap_or_else(|| panic!("{what}: {name} has no label {label}"));
            if op == "=" || op == "!=" {
                assert!(
                    values.contains(value),
                    "{what}: {name}{{{label}=\"{value}\"}} never exists"
                );
            }
        }
        exported.keys().cloned().collect::<BTreeSet<String>>()
    };

    let mut used = BTreeSet::new();
    for (name, rule) in rules_of(&rule_file()) {
        let expr = str_of(&rule["expr"], "expr");
        let metrics = promql_metrics(expr);
        assert!(
            !metrics.is_empty() || expr.starts_with("up{"),
            "{name}: {expr} reads no ringcache metric"
        );
        let mut labels: BTreeSet<String> = target_labels.map(str::to_owned).into();
        for (metric, matchers) in &metrics {
            labels.extend(check_metric(&name, metric, matchers));
            used.insert(metric.clone());
        }
        for label in promql_grouping(expr) {
            assert!(
                labels.contains(&label),
                "{name}: groups by {label}, which {expr} lacks"
            );
        }
        assert!(
            ["critical", "warning"].contains(&str_of(&rule["labels"]["severity"], "severity")),
            "{name}: severity"
        );
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation]
                    .as_str()
                    .is_some_and(|a| !a.is_empty()),
                "{name}: no {annotation}"
            );
        }
    }
    // The alerts the issue asks for, by what they watch.
    for metric in [
        "ringcache_members",
        "ringcache_cluster_expected_members",
        "ringcache_cluster_under_replicated_slots",
        "ringcache_topology_digest",
        "ringcache_cluster_refused_members",
        "ringcache_ready",
        "ringcache_memory_used_bytes",
        "ringcache_memory_max_bytes",
        "ringcache_replication_lag_seconds",
        "ringcache_hints_dropped_total",
    ] {
        assert!(used.contains(metric), "no alert reads {metric}");
    }

    // The unit tests' input series are series a node (or Prometheus, `up`) has.
    let tests = yaml_docs(RULE_TESTS).remove(0);
    for case in tests["tests"].as_array().unwrap() {
        for input in case["input_series"].as_array().unwrap() {
            let text = str_of(&input["series"], "series");
            if text.starts_with("up{") {
                continue;
            }
            let metrics = promql_metrics(text);
            assert_eq!(metrics.len(), 1, "{text}");
            let (metric, matchers) = &metrics[0];
            check_metric("ringcache-alerts.test.yaml", metric, matchers);
        }
    }
}

#[test]
fn the_charts_prometheus_rule_is_the_rule_file_for_its_release() {
    let renders = [
        // The release whose job is the rule file's: `ringcache`.
        Render::new(
            json!({"metrics": {"prometheusRule": {"enabled": true}}}),
            "ringcache",
            "monitoring",
        ),
        Render::new(
            json!({
                "metrics": {"prometheusRule": {
                    "enabled": true,
                    "memoryNearMaxRatio": 0.8,
                    "hintBacklogSeconds": 120,
                    "labels": {"release": "prometheus"},
                }},
            }),
            "edge",
            "caches",
        ),
    ];
    let output = run_helm(&[], &renders);
    let rendered: Vec<_> = renders
        .iter()
        .zip(output.renders)
        .map(|(render, files)| {
            let files = files.unwrap_or_else(|e| panic!("{:?}: {e}", render.values));
            manifests(&render.name, render, &files)
        })
        .collect();

    // For release `ringcache`, less the namespace matcher, the rules are the rule file's.
    let mut chart = prometheus_rule_groups(&rendered[0]);
    let text = serde_json::to_string(&chart)
        .unwrap()
        .replace(r#",namespace=\"monitoring\""#, "");
    chart = serde_json::from_str(&text).unwrap();
    assert_eq!(chart, rule_file(), "the chart's rules drifted from {RULES}");

    // Another release: its job and namespace and thresholds, and promtool accepts them.
    let groups = prometheus_rule_groups(&rendered[1]);
    let rule = rendered[1].one("PrometheusRule", None);
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let rules = rules_of(&groups);
    assert_eq!(rules.len(), rules_of(&rule_file()).len());
    for (name, rule) in &rules {
        let expr = str_of(&rule["expr"], "expr");
        for (metric, matchers) in promql_metrics(expr) {
            assert!(
                matchers.contains(&("job".into(), "=".into(), "edge-ringcache".into()))
                    && matchers.contains(&("namespace".into(), "=".into(), "caches".into())),
                "{name}: {metric} in {expr} is not this release's"
            );
        }
    }
    let expr_of = |alert: &str| {
        rules
            .iter()
            .find(|(n, _)| n == alert)
            .map(|(_, r)| str_of(&r["expr"], "expr").to_owned())
            .unwrap()
    };
    assert!(expr_of("RingcacheMemoryNearMax").ends_with(" > 0.8"));
    assert!(expr_of("RingcacheHintBacklog").ends_with(" > 120"));
    assert!(
        expr_of("RingcacheNodeDown").starts_with(r#"up{job="edge-ringcache",namespace="caches"}"#)
    );
    let dir = std::env::temp_dir().join(format!("ringcache-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, serde_json::to_string_pretty(&groups).unwrap()).unwrap();
    let checked = promtool(&["check", "rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    // The rule file's header says what to change; keep it saying so.
    assert!(read(RULES).contains(r#"job="ringcache""#));
}
