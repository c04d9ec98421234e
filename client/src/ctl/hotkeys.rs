//! `hotkeys [--limit N]`: every member's heaviest keys in its last complete hot-key window
//! (`Admin.HotKeys`), merged: a key reported by several members shows once with its counts
//! summed and the members that reported it.

use std::collections::HashMap;

use ringcache_proto::v1 as pb;
use serde::Serialize;

use super::{
    Ctx,
    fmt::{Cell, Color, Table},
    kv::Encoding,
    node::{NodeError, join_all},
    view::{Human, View},
};

/// One key of the merged report.
#[derive(Debug, Serialize, PartialEq)]
struct HotKeyRow {
    /// The key as text (see `encoding`).
    key: String,
    encoding: Encoding,
    /// Summed over the members that reported it.
    requests_per_second: f64,
    requests: u64,
    /// Of all requests the answering members saw in their windows (0..=1).
    share: f64,
    /// The summed error bounds: the true count is at least `requests - error`.
    error: u64,
    reads: u64,
    writes: u64,
    /// The members that reported it.
    nodes: Vec<String>,
    #[serde(skip)]
    raw: Vec<u8>,
}

/// One member's answer.
#[derive(Debug, Serialize)]
struct NodeHotKeys {
    node_id: String,
    reachable: bool,
    error: Option<String>,
    window_ms: Option<u64>,
    total_requests: Option<u64>,
}

/// `hotkeys`: the merged heaviest keys.
#[derive(Debug, Serialize)]
struct HotKeysReport {
    limit: u32,
    /// Requests all answering members saw in their last windows.
    total_requests: u64,
    keys: Vec<HotKeyRow>,
    nodes: Vec<NodeHotKeys>,
}

/// Merges the members' answers: the same key from several members is summed; the heaviest
/// (requests per second) first, at most `limit`.
fn merge(
    answers: &[(String, Result<pb::HotKeysResponse, NodeError>)],
    limit: u32,
) -> HotKeysReport {
    let mut rows: HashMap<Vec<u8>, HotKeyRow> = HashMap::new();
    let mut total = 0u64;
    let mut nodes = Vec::with_capacity(answers.len());
    for (node_id, answer) in answers {
        match answer {
            Ok(response) => {
                total = total.saturating_add(response.total_requests);
                nodes.push(NodeHotKeys {
                    node_id: node_id.clone(),
                    reachable: true,
                    error: None,
                    window_ms: Some(response.window_ms),
                    total_requests: Some(response.total_requests),
                });
                for entry in &response.entries {
                    let row = rows.entry(entry.key.to_vec()).or_insert_with(|| {
                        let (key, encoding) = match std::str::from_utf8(&entry.key) {
                            Ok(text) => (text.to_owned(), Encoding::Utf8),
                            Err(_) => (super::fmt::base64(&entry.key), Encoding::Base64),
                        };
                        HotKeyRow {
                            key,
                            encoding,
                            requests_per_second: 0.0,
                            requests: 0,
                            share: 0.0,
                            error: 0,
                            reads: 0,
                            writes: 0,
                            nodes: Vec::new(),
                            raw: entry.key.to_vec(),
                        }
                    });
                    row.requests_per_second += entry.requests_per_second;
                    row.requests = row.requests.saturating_add(entry.requests);
                    row.error = row.error.saturating_add(entry.error);
                    row.reads = row.reads.saturating_add(entry.reads);
                    row.writes = row.writes.saturating_add(entry.writes);
                    row.nodes.push(node_id.clone());
                }
            }
            Err(error) => nodes.push(NodeHotKeys {
                node_id: node_id.clone(),
                reachable: false,
                error: Some(error.reason()),
                window_ms: None,
                total_requests: None,
            }),
        }
    }
    let mut keys: Vec<HotKeyRow> = rows.into_values().collect();
    for row in &mut keys {
        row.share = if total == 0 {
            0.0
        } else {
            (row.requests as f64 / total as f64).min(1.0)
        };
    }
    keys.sort_by(|a, b| {
        b.requests_per_second
            .total_cmp(&a.requests_per_second)
            .then_with(|| a.raw.cmp(&b.raw))
    });
    keys.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    HotKeysReport {
        limit,
        total_requests: total,
        keys,
        nodes,
    }
}

impl View for HotKeysReport {
    fn human(&self, color: bool) -> Human {
        let mut table = Table::new(&["KEY", "REQ/S", "SHARE", "ERROR", "READS", "WRITES", "NODES"]);
        for row in &self.keys {
            table.row(vec![
                // Bytes a terminal would act on (escapes, control characters) are escaped.
                Cell::text(row.raw.escape_ascii().to_string()),
                Cell::num(format!("{:.1}", row.requests_per_second)),
                Cell::num(format!("{:.1}%", row.share * 100.0)),
                Cell::num(format!("±{}", row.error)),
                Cell::num(row.reads),
                Cell::num(row.writes),
                Cell::text(row.nodes.join(",")),
            ]);
        }
        let mut text = if self.keys.is_empty() {
            "no hot keys in the last window\n".to_owned()
        } else {
            table.render(color)
        };
        for node in self.nodes.iter().filter(|node| !node.reachable) {
            let line = format!(
                "{}: {}\n",
                node.node_id,
                node.error.as_deref().unwrap_or("no answer")
            );
            text.push_str(&super::fmt::paint(&line, Some(Color::Red), color));
        }
        Human::text(text)
    }

    fn exit_code(&self) -> i32 {
        if self.failure().is_some() {
            super::EXIT_ERROR
        } else {
            super::EXIT_OK
        }
    }

    fn failure(&self) -> Option<String> {
        let failed: Vec<String> = self
            .nodes
            .iter()
            .filter(|node| !node.reachable)
            .map(|node| {
                format!(
                    "{} ({})",
                    node.node_id,
                    node.error.as_deref().unwrap_or("no answer")
                )
            })
            .collect();
        (!failed.is_empty()).then(|| format!("hot keys missing from {}", failed.join(", ")))
    }
}

/// `hotkeys`: asks every member of the topology, merges the answers.
pub(super) async fn hotkeys(ctx: &mut Ctx<'_>, limit: u32) -> anyhow::Result<i32> {
    let home = ctx.home().await?;
    let topology = home.topology().await?;
    let dial = &ctx.dial;
    let answers = join_all(
        topology
            .members()
            .iter()
            .map(|m| async move {
                let conn = dial.connect(&m.grpc_addr).await?;
                conn.hot_keys(limit).await
            })
            .collect(),
    )
    .await;
    let answers: Vec<(String, Result<pb::HotKeysResponse, NodeError>)> = topology
        .members()
        .iter()
        .map(|member| member.node_id.clone())
        .zip(answers)
        .collect();
    ctx.emit(&merge(&answers, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &[u8], requests: u64, error: u64) -> pb::HotKeyEntry {
        pb::HotKeyEntry {
            key: key.to_vec().into(),
            requests,
            error,
            requests_per_second: requests as f64 / 10.0,
            reads: requests,
            writes: 0,
        }
    }

    #[test]
    fn hotkeys_merge_sums_a_key_across_nodes_and_keeps_the_limit() {
        let answers = vec![
            (
                "a".to_owned(),
                Ok(pb::HotKeysResponse {
                    window_ms: 10_000,
                    total_requests: 1000,
                    entries: vec![entry(b"x", 300, 8), entry(b"y", 200, 0)],
                    sample: 8,
                }),
            ),
            (
                "b".to_owned(),
                Ok(pb::HotKeysResponse {
                    window_ms: 10_000,
                    total_requests: 1000,
                    entries: vec![entry(b"y", 250, 0), entry(&[0xff, 0x1b], 100, 0)],
                    sample: 8,
                }),
            ),
        ];
        let report = merge(&answers, 2);
        assert_eq!(report.total_requests, 2000);
        assert_eq!(report.keys.len(), 2);
        assert_eq!(report.keys[0].key, "y");
        assert_eq!(report.keys[0].requests, 450);
        assert_eq!(report.keys[0].nodes, ["a", "b"]);
        assert!((report.keys[0].share - 0.225).abs() < 1e-9);
        assert!((report.keys[0].requests_per_second - 45.0).abs() < 1e-9);
        assert_eq!(report.keys[1].key, "x");
        assert_eq!(report.keys[1].error, 8);

        let all = merge(&answers, 10);
        let binary = all.keys.iter().find(|k| k.raw == [0xff, 0x1b]).unwrap();
        assert_eq!(binary.encoding, Encoding::Base64);
        assert_eq!(binary.key, "/xs=");
        let text = String::from_utf8(all.human(false).stdout).unwrap();
        assert!(
            text.contains("\\xff\\x1b"),
            "escaped for the terminal: {text}"
        );
        assert!(!text.contains('\u{1b}'));
        assert_eq!(all.exit_code(), super::super::EXIT_OK);
    }
}
