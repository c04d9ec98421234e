//! `stats [NODE]`: one node's counters, readiness, connections, replication, clock, known
//! members, anti-entropy, data movement, and the replication series of its `/metrics`.

use std::{collections::BTreeMap, time::Duration};

use ringcache_proto::{topology::NodeState, v1 as pb};
use serde::Serialize;

use super::{
    Ctx,
    cluster::{Rebalance, find_member},
    fmt, metrics,
    node::NodeError,
    view::{Human, View},
};

/// The last anti-entropy round of a node.
#[derive(Debug, Serialize)]
struct AntiEntropyRound {
    peer: String,
    at_ms: u64,
    buckets_differing: u64,
    keys_pulled: u64,
    keys_pushed: u64,
    error: Option<String>,
}

/// A node's anti-entropy since it started.
#[derive(Debug, Serialize)]
struct AntiEntropy {
    interval_ms: u64,
    rounds: u64,
    rounds_skipped: u64,
    buckets_differing: u64,
    keys_pulled: u64,
    keys_pushed: u64,
    last_round: Option<AntiEntropyRound>,
}

impl From<&pb::AntiEntropyStatus> for AntiEntropy {
    fn from(ae: &pb::AntiEntropyStatus) -> Self {
        AntiEntropy {
            interval_ms: ae.interval_ms,
            rounds: ae.rounds,
            rounds_skipped: ae.rounds_skipped,
            buckets_differing: ae.buckets_differing,
            keys_pulled: ae.keys_pulled,
            keys_pushed: ae.keys_pushed,
            last_round: (!ae.last_peer.is_empty()).then(|| AntiEntropyRound {
                peer: ae.last_peer.clone(),
                at_ms: ae.last_at_ms,
                buckets_differing: ae.last_differing,
                keys_pulled: ae.last_pulled,
                keys_pushed: ae.last_pushed,
                error: (!ae.last_error.is_empty()).then(|| ae.last_error.clone()),
            }),
        }
    }
}

impl AntiEntropy {
    /// The anti-entropy lines of the text.
    fn lines(&self) -> Vec<(&'static str, String)> {
        let every = if self.interval_ms == 0 {
            "off".to_owned()
        } else {
            format!(
                "every {}",
                fmt::duration(Duration::from_millis(self.interval_ms))
            )
        };
        let mut lines = vec![(
            "anti-entropy",
            format!(
                "{every}; {} rounds ({} skipped), {} buckets differed, {} keys pulled, {} pushed",
                self.rounds,
                self.rounds_skipped,
                self.buckets_differing,
                self.keys_pulled,
                self.keys_pushed
            ),
        )];
        if let Some(last) = &self.last_round {
            let outcome = match &last.error {
                None => format!(
                    "{} buckets differed, {} pulled, {} pushed",
                    last.buckets_differing, last.keys_pulled, last.keys_pushed
                ),
                Some(error) => format!("skipped: {error}"),
            };
            lines.push(("  last round", format!("with {}: {outcome}", last.peer)));
        }
        lines
    }
}

/// `stats [NODE]`: what one node reports about itself.
#[derive(Debug, Serialize)]
struct Stats {
    node_id: String,
    grpc_addr: String,
    http_addr: Option<String>,
    version: String,
    state: &'static str,
    uptime_seconds: u64,
    keys: u64,
    memory_used_bytes: u64,
    max_memory_bytes: u64,
    eviction_policy: String,
    hits: u64,
    misses: u64,
    evictions: u64,
    expirations: u64,
    ready: bool,
    not_ready_reason: Option<String>,
    connections: u64,
    connections_rejected: u64,
    max_connections: u64,
    forwarded_requests: u64,
    hints_pending: u64,
    hints_pending_bytes: u64,
    replication_lag_seconds: f64,
    clock_offset_ms: i64,
    clock_skewed: bool,
    known_members: Vec<String>,
    anti_entropy: Option<AntiEntropy>,
    rebalance: Option<Rebalance>,
    rebalance_error: Option<String>,
    /// The series of its `/metrics` that `NodeInfo` does not carry, summed over labels.
    metrics: Option<BTreeMap<String, f64>>,
    metrics_error: Option<String>,
}

impl Stats {
    /// `yes`, or `no: why`.
    fn ready_text(&self) -> String {
        match (self.ready, &self.not_ready_reason) {
            (true, _) => "yes".to_owned(),
            (false, Some(why)) if !why.is_empty() => format!("no: {why}"),
            (false, _) => "no".to_owned(),
        }
    }

    /// The offset from the cluster's clock, and whether writes are refused.
    fn clock_text(&self) -> String {
        let offset = self.clock_offset_ms;
        let direction = if offset < 0 { "ahead of" } else { "behind" };
        let text = if offset == 0 {
            "agrees with the cluster's".to_owned()
        } else {
            format!("{} ms {direction} the cluster's", offset.unsigned_abs())
        };
        if self.clock_skewed {
            format!("{text}: SKEWED, refusing writes (fix NTP)")
        } else {
            text
        }
    }
}

impl View for Stats {
    fn human(&self, _color: bool) -> Human {
        let mut lines: Vec<(&str, String)> = vec![
            ("node", format!("{} at {}", self.node_id, self.grpc_addr)),
            ("version", self.version.clone()),
            ("state", self.state.to_owned()),
            (
                "uptime",
                fmt::duration(Duration::from_secs(self.uptime_seconds)),
            ),
            ("keys", self.keys.to_string()),
            (
                "memory",
                format!(
                    "{} of {} ({})",
                    fmt::bytes(self.memory_used_bytes),
                    fmt::bytes(self.max_memory_bytes),
                    fmt::percent(self.memory_used_bytes, self.max_memory_bytes)
                ),
            ),
            ("eviction policy", self.eviction_policy.clone()),
            ("hits", self.hits.to_string()),
            ("misses", self.misses.to_string()),
            (
                "hit ratio",
                fmt::percent(self.hits, self.hits + self.misses),
            ),
            ("evictions", self.evictions.to_string()),
            ("expirations", self.expirations.to_string()),
            ("ready", self.ready_text()),
            (
                "connections",
                format!(
                    "{} open (max {}), {} rejected",
                    self.connections,
                    if self.max_connections == 0 {
                        "unlimited".to_owned()
                    } else {
                        self.max_connections.to_string()
                    },
                    self.connections_rejected
                ),
            ),
            ("forwarded requests", self.forwarded_requests.to_string()),
            (
                "hints pending",
                format!(
                    "{} ({})",
                    self.hints_pending,
                    fmt::bytes(self.hints_pending_bytes)
                ),
            ),
            (
                "replication lag",
                if self.replication_lag_seconds.is_finite() && self.replication_lag_seconds > 0.0 {
                    fmt::duration(Duration::from_secs_f64(self.replication_lag_seconds))
                } else {
                    "0s".to_owned()
                },
            ),
            ("clock", self.clock_text()),
            (
                "known members",
                format!(
                    "{} ({})",
                    self.known_members.len(),
                    self.known_members.join(", ")
                ),
            ),
        ];
        if let Some(ae) = &self.anti_entropy {
            lines.extend(ae.lines());
        }
        match (&self.rebalance, &self.rebalance_error) {
            (Some(r), _) => lines.extend(r.lines()),
            (None, error) => lines.push(("rebalance", error.clone().unwrap_or_default())),
        }
        let mut metric_lines = Vec::new();
        match (&self.metrics, &self.metrics_error) {
            (Some(values), _) => {
                lines.push((
                    "metrics",
                    format!(
                        "from http://{}/metrics",
                        self.http_addr.as_deref().unwrap_or_default()
                    ),
                ));
                for (name, value) in values {
                    let label = name.strip_prefix("ringcache_").unwrap_or(name).to_owned();
                    metric_lines.push((format!("  {label}"), format_number(*value)));
                }
            }
            (None, Some(error)) => lines.push(("metrics", error.clone())),
            (None, None) => {}
        }
        lines.extend(metric_lines.iter().map(|(k, v)| (k.as_str(), v.clone())));
        Human::text(fmt::pairs(&lines))
    }
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

fn node_state_name(state: i32) -> &'static str {
    NodeState::try_from(state).map_or("unknown", NodeState::as_str)
}

pub(super) async fn stats(ctx: &mut Ctx<'_>, node: Option<String>) -> anyhow::Result<i32> {
    let home = ctx.home().await?;
    let (conn, member) = match node {
        Some(node_id) => {
            let topology = home.topology().await?;
            let member = find_member(&topology, &node_id)?.clone();
            (ctx.dial.connect(&member.grpc_addr).await?, Some(member))
        }
        None => (home, None),
    };
    let info = conn.node_info().await?;
    let member = match member {
        Some(member) => Some(member),
        None => conn
            .topology()
            .await
            .ok()
            .and_then(|t| t.member(&info.node_id).cloned()),
    };
    let rebalance = conn.rebalance_status().await;
    let http_addr = member
        .as_ref()
        .map(|m| m.http_addr.clone())
        .filter(|a| !a.is_empty());
    let scraped = match &http_addr {
        Some(addr) => Some(metrics::scrape(addr, ctx.timeout).await),
        None => None,
    };
    let (metrics, metrics_error) = match scraped {
        Some(Ok(values)) => (Some(values), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    ctx.emit(&Stats {
        grpc_addr: conn.addr().to_owned(),
        http_addr,
        state: node_state_name(info.state),
        not_ready_reason: (!info.ready).then(|| info.not_ready_reason.clone()),
        anti_entropy: info.anti_entropy.as_ref().map(AntiEntropy::from),
        rebalance: rebalance.as_ref().ok().map(Rebalance::from),
        rebalance_error: rebalance.as_ref().err().map(NodeError::reason),
        metrics,
        metrics_error,
        node_id: info.node_id,
        version: info.version,
        uptime_seconds: info.uptime_seconds,
        keys: info.keys,
        memory_used_bytes: info.memory_used_bytes,
        max_memory_bytes: info.max_memory_bytes,
        eviction_policy: info.eviction_policy,
        hits: info.hits,
        misses: info.misses,
        evictions: info.evictions,
        expirations: info.expirations,
        ready: info.ready,
        connections: info.connections,
        connections_rejected: info.connections_rejected,
        max_connections: info.max_connections,
        forwarded_requests: info.forwarded_requests,
        hints_pending: info.hints_pending,
        hints_pending_bytes: info.hints_pending_bytes,
        replication_lag_seconds: info.replication_lag_seconds,
        clock_offset_ms: info.clock_offset_ms,
        clock_skewed: info.clock_skewed,
        known_members: info.known_members,
    })
}
