//! The Grafana dashboard queries only metrics and labels a node exports and the metrics catalog
//! (`ringcache_server::metrics::CATALOG`) declares, and shows every metric family: every catalog
//! entry and every `process_*` family a node exports.

use super::*;

// ---- tests: Grafana ------------------------------------------------------------------------------

/// The catalog entry of a series name (`name`, or a histogram's `name_bucket`, `_sum`,
/// `_count`), with the family's name.
pub(super) fn catalog_family(name: &str) -> Option<&'static MetricDef> {
    catalog::find(name).or_else(|| {
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            name.strip_suffix(suffix)
                .and_then(catalog::find)
                .filter(|def| def.kind == Kind::Histogram)
        })
    })
}

/// Checks a `ringcache_*` series name and its label matchers, as `what` uses them, against the
/// catalog: the family is declared, every label is one of its labels, and an `=`/`!=` value of
/// a closed label is one of its values. Returns the family's entry.
pub(super) fn check_against_catalog(
    what: &str,
    name: &str,
    matchers: &[Matcher],
    target_labels: &[&str],
) -> &'static MetricDef {
    let def = catalog_family(name).unwrap_or_else(|| {
        panic!("{what}: {name} is not in the metrics catalog (server/src/metrics/catalog.rs)")
    });
    for (label, op, value) in matchers {
        if target_labels.contains(&label.as_str()) || (label == "le" && def.kind == Kind::Histogram)
        {
            continue;
        }
        let declared = def
            .labels
            .iter()
            .find(|l| l.name == label)
            .unwrap_or_else(|| panic!("{what}: {name} has no label {label} in the catalog"));
        if let (Values::Closed(values), "=" | "!=") = (declared.values, op.as_str()) {
            assert!(
                values.contains(&value.as_str()),
                "{what}: {name}{{{label}=\"{value}\"}}: {value} is not one of the catalog's {values:?}"
            );
        }
    }
    def
}

/// A label matcher: label, operator (`=`, `!=`, `=~`, `!~`), value.
pub(super) type Matcher = (String, String, String);

/// Metric names (`ringcache_*`) in a PromQL expression, each with its label matchers.
/// Where the next metric name the node exports starts in `expr`: `ringcache_*`, or the standard
/// `process_*` set, at the start of a word.
pub(super) fn next_metric(expr: &str) -> Option<usize> {
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

pub(super) fn promql_metrics(expr: &str) -> Vec<(String, Vec<Matcher>)> {
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
pub(super) fn promql_grouping(expr: &str) -> Vec<String> {
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
pub(super) fn scraped_series() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
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
pub(super) fn grafana_dashboard_queries_metrics_and_labels_the_node_exports() {
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
                // `process_*` come from the process collector (metrics-process), not the catalog.
                if !family.starts_with("process_") {
                    check_against_catalog(title, name, matchers, &["instance", "job"]);
                }
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
    // Every catalog entry, and every family a node exports (`process_*` included).
    let missing: Vec<&str> = CATALOG
        .iter()
        .map(|def| def.name)
        .chain(families.iter().map(String::as_str))
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .filter(|f| !used.contains(*f) && !NOT_ON_DASHBOARD.contains(f))
        .collect();
    assert!(missing.is_empty(), "metrics with no panel: {missing:?}");
}
