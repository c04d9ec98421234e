//! The metric catalogs against reality and their documentation.
//!
//! A fresh node (started in this process) exports exactly the families of the node's catalog
//! (`ringcache_server::metrics::CATALOG`), each with its declared type and labels, and every value
//! of a closed label set from the start. `docs/METRICS.md` is generated from the node's and the
//! client's (`ringcache::metrics_catalog::CATALOG`) catalogs; this test fails when the committed
//! file differs. After changing a catalog, rewrite it with:
//!
//! ```text
//! RINGCACHE_REGENERATE=1 cargo test -p ringcache-tests --test metrics_catalog
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ringcache::metrics_catalog as client;
use ringcache_server::Config;
use ringcache_server::metrics::CATALOG;
use ringcache_server::metrics::catalog::{Kind, Values};
use ringcache_tests::{TestNode, http_get};

/// Families of a `/metrics` text: name -> (type, label name -> values seen).
type Families = BTreeMap<String, (String, BTreeMap<String, BTreeSet<String>>)>;

fn parse(text: &str) -> Families {
    let mut families = Families::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.entry(name.to_owned()).or_default().0 = kind.to_owned();
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).expect("a sample line");
        let series = &line[..name_end];
        let family = families
            .keys()
            .find(|f| {
                series == f.as_str()
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| series.strip_suffix(s) == Some(f.as_str()))
            })
            .cloned()
            .unwrap_or_else(|| panic!("{series}: sample without a # TYPE line"));
        let labels = &mut families.get_mut(&family).unwrap().1;
        if line[name_end..].starts_with('{') {
            let end = line.find('}').expect("closing }");
            for pair in line[name_end + 1..end].split(',') {
                let (label, value) = pair.split_once('=').expect("label=value");
                if label == "le" {
                    continue;
                }
                labels
                    .entry(label.to_owned())
                    .or_default()
                    .insert(value.trim_matches('"').to_owned());
            }
        }
    }
    families
}

#[tokio::test]
async fn a_fresh_node_exports_exactly_the_catalog_with_its_types_and_labels() {
    let node = TestNode::start(Config::for_test()).await;
    let text = http_get(node.http_addr, "/metrics").await.unwrap().body;
    let families = parse(&text);

    for def in CATALOG {
        let (kind, labels) = families
            .get(def.name)
            .unwrap_or_else(|| panic!("{} is not on a fresh node's /metrics", def.name));
        assert_eq!(kind, def.kind.as_str(), "{}: # TYPE", def.name);
        let declared: BTreeSet<&str> = def.labels.iter().map(|l| l.name).collect();
        let exported: BTreeSet<&str> = labels.keys().map(String::as_str).collect();
        assert_eq!(exported, declared, "{}: label names", def.name);
        for label in def.labels {
            let seen = &labels[label.name];
            if let Values::Closed(values) = label.values {
                let values: BTreeSet<&str> = values.iter().copied().collect();
                let seen: BTreeSet<&str> = seen.iter().map(String::as_str).collect();
                assert_eq!(seen, values, "{}: values of {}", def.name, label.name);
            }
        }
    }
    // And the other way round: every ringcache_* family exported is declared.
    for name in families.keys().filter(|n| n.starts_with("ringcache_")) {
        assert!(
            CATALOG.iter().any(|d| d.name == name),
            "{name} is exported but not in the catalog (server/src/metrics/catalog.rs)"
        );
    }
    // The rest are the process collector's.
    assert!(
        families
            .keys()
            .all(|n| n.starts_with("ringcache_") || n.starts_with("process_")),
        "{:?}",
        families.keys().collect::<Vec<_>>()
    );
    assert!(families.contains_key("process_resident_memory_bytes"));
    node.stop().await.unwrap();
}

/// One row of the reference.
struct Row {
    name: &'static str,
    kind: &'static str,
    unit: &'static str,
    labels: String,
    help: &'static str,
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn table(out: &mut String, rows: &[Row]) {
    out.push_str("| Name | Type | Unit | Labels | Help |\n|---|---|---|---|---|\n");
    for row in rows {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            row.name,
            row.kind,
            row.unit,
            cell(&row.labels),
            cell(row.help)
        ));
    }
}

fn labels_text<'a>(
    labels: impl Iterator<Item = (&'a str, Result<&'a [&'a str], &'a str>)>,
) -> String {
    labels
        .map(|(name, values)| match values {
            Ok(values) => format!(
                "`{name}`: {}",
                values
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(what) => format!("`{name}`: {what}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The reference, as generated from the catalogs.
fn reference() -> String {
    let node: Vec<Row> = CATALOG
        .iter()
        .map(|def| Row {
            name: def.name,
            kind: def.kind.as_str(),
            unit: def.unit.map_or("", |u| u.as_str()),
            labels: labels_text(def.labels.iter().map(|l| {
                (
                    l.name,
                    match l.values {
                        Values::Closed(v) => Ok(v),
                        Values::Open(what) => Err(what),
                    },
                )
            })),
            help: def.help,
        })
        .collect();
    let client: Vec<Row> = client::CATALOG
        .iter()
        .map(|def| Row {
            name: def.name,
            kind: def.kind.as_str(),
            unit: def.unit.map_or("", |u| u.as_str()),
            labels: labels_text(def.labels.iter().map(|l| {
                (
                    l.name,
                    match l.values {
                        client::Values::Closed(v) => Ok(v),
                        client::Values::Open(what) => Err(what),
                    },
                )
            })),
            help: def.help,
        })
        .collect();
    let histograms = CATALOG.iter().filter(|d| d.kind == Kind::Histogram).count();
    let mut out = String::from(
        "# Metrics reference\n\n\
         <!-- Generated from the metric catalogs (server/src/metrics/catalog.rs, client/src/observe.rs) by\n\
         tests/tests/metrics_catalog.rs; do not edit. After changing a catalog run\n\
         RINGCACHE_REGENERATE=1 cargo test -p ringcache-tests --test metrics_catalog -->\n\n",
    );
    out.push_str(&format!(
        "## Node metrics\n\n\
         A node serves these on `GET /metrics` (Prometheus text), {} families ({histograms} \
         histogram{}: `_bucket`, `_sum`, `_count` series), every one from the start; \
         where a label's values are listed, every value has a series from the start. \
         Besides them a node exports the standard `process_*` set (CPU seconds, resident memory, \
         open file descriptors, threads, ...). README.md (Observability) explains how to read \
         them; the Grafana dashboard and the alert rules in `deploy/` use only these.\n\n",
        node.len(),
        if histograms == 1 { "" } else { "s" },
    ));
    table(&mut out, &node);
    out.push_str(&format!(
        "\n## Client metrics\n\n\
         The `ringcache` client crate records these {} metrics through the `metrics` facade, to \
         whatever recorder the application installed (none: they cost a branch). They are \
         process-wide: several clients in one process add up.\n\n",
        client.len()
    ));
    table(&mut out, &client);
    out
}

#[test]
fn docs_metrics_md_is_generated_from_the_catalogs() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("docs/METRICS.md");
    ringcache_test_support::check_generated(
        &path,
        &reference(),
        "docs/METRICS.md differs from what the metric catalogs generate: run \
         `RINGCACHE_REGENERATE=1 cargo test -p ringcache-tests --test metrics_catalog` and \
         commit the result",
    );
}

#[test]
fn the_families_ringctl_stats_reads_are_declared_counters() {
    for family in ringcache::ctl::STATS_FAMILIES {
        let def = CATALOG
            .iter()
            .find(|def| def.name == *family)
            .unwrap_or_else(|| panic!("ringctl stats reads {family}, which no node declares"));
        assert_eq!(def.kind, Kind::Counter, "{family}");
    }
}
