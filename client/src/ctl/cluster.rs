//! The cluster commands: `status`, `stats`, `rebalance status` and `drain`.

use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ringcache_proto::{
    topology::{Member, NodeState, Topology},
    v1 as pb,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    Ctx, EXIT_OK,
    fmt::{self, Cell, Color, Table, paint, state_color},
    metrics,
    node::{Dial, NodeConn, NodeError, join_all},
    view::{Human, View, millis},
};

/// How often `drain` polls the topology and the node's progress.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// The member with this id, or an error naming the members there are.
pub(super) fn find_member<'t>(topology: &'t Topology, node_id: &str) -> anyhow::Result<&'t Member> {
    match topology.member(node_id) {
        Some(member) => Ok(member),
        None => {
            let ids: Vec<&str> = topology
                .members()
                .iter()
                .map(|m| m.node_id.as_str())
                .collect();
            bail!(
                "unknown node id {node_id:?} (members: {})",
                if ids.is_empty() {
                    "none".to_owned()
                } else {
                    ids.join(", ")
                }
            )
        }
    }
}

pub(super) fn member_json(member: &Member) -> Value {
    json!({
        "node_id": member.node_id,
        "state": member.state.as_str(),
        "incarnation": member.incarnation,
        "weight": member.weight,
        "grpc_addr": member.grpc_addr,
        "gossip_addr": member.gossip_addr,
        "http_addr": member.http_addr,
    })
}

pub(super) fn topology_json(topology: &Topology) -> Value {
    json!({
        "digest": fmt::hex(topology.digest()),
        "replication_factor": topology.replication_factor(),
        "vnodes_per_weight": topology.vnodes_per_weight(),
        "members": topology.members().iter().map(member_json).collect::<Vec<_>>(),
    })
}

fn node_state_name(state: i32) -> &'static str {
    NodeState::try_from(state).map_or("unknown", NodeState::as_str)
}

fn rebalance_json(status: &pb::RebalanceStatusResponse) -> Value {
    json!({
        "phase": status.phase,
        "passes": status.passes,
        "keys_scanned": status.keys_scanned,
        "keys_total": status.keys_total,
        "keys_sent": status.keys_sent,
        "bytes_sent": status.bytes_sent,
        "keys_received": status.keys_received,
        "failures": status.failures,
        "last_error": (!status.last_error.is_empty()).then_some(&status.last_error),
        "bytes_total": status.bytes_total,
        "bytes_done": status.bytes_done,
        "rate_bytes_per_second": status.rate_bytes_per_second,
        "eta_seconds": status.eta_seconds,
    })
}

/// The estimated time left of a rebalance: `-` when idle, `unknown` when the node cannot tell
/// (joining: no known total; no recent progress), else whole seconds, rounded up.
fn eta_text(status: &pb::RebalanceStatusResponse) -> String {
    if status.phase == "idle" {
        return "-".to_owned();
    }
    match status.eta_seconds {
        Some(eta) if eta.is_finite() && eta >= 0.0 => {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked above
            let secs = eta.ceil().min(u64::MAX as f64) as u64;
            fmt::duration(Duration::from_secs(secs))
        }
        _ => "unknown".to_owned(),
    }
}

/// The recent transfer rate, `-` when idle.
fn rate_text(status: &pb::RebalanceStatusResponse) -> String {
    if status.phase == "idle" {
        return "-".to_owned();
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // display only
    let rate = status.rate_bytes_per_second.max(0.0) as u64;
    format!("{}/s", fmt::bytes(rate))
}

/// `yes`, or `no: why`.
fn ready_text(info: &pb::NodeInfoResponse) -> String {
    if info.ready {
        "yes".to_owned()
    } else if info.not_ready_reason.is_empty() {
        "no".to_owned()
    } else {
        format!("no: {}", info.not_ready_reason)
    }
}

// ---- status -------------------------------------------------------------------------------------

/// What one member answered.
struct Probe {
    info: pb::NodeInfoResponse,
    digest: u64,
    reads_per_second: Option<f64>,
}

async fn probe(member: &Member, dial: &Dial, rate: bool) -> Result<Probe, NodeError> {
    let conn = dial.connect(&member.grpc_addr).await?;
    let info = conn.node_info().await?;
    let first = Instant::now();
    let digest = conn.topology().await?.digest();
    let reads_per_second = if rate {
        // The measurement window, not a synchronisation.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later = conn.node_info().await?;
        let reads = (later.hits + later.misses).saturating_sub(info.hits + info.misses);
        #[allow(clippy::cast_precision_loss)] // display only
        let rate = reads as f64 / first.elapsed().as_secs_f64();
        Some(rate)
    } else {
        None
    };
    Ok(Probe {
        info,
        digest,
        reads_per_second,
    })
}

/// What is wrong with one member, if anything.
fn member_problem(member: &Member, probe: &Result<Probe, NodeError>) -> Option<String> {
    let id = &member.node_id;
    match (member.state, probe) {
        (NodeState::Active, Ok(_)) => None,
        (NodeState::Dead, _) => Some(format!("{id} is dead")),
        (state, Ok(_)) => Some(format!("{id} is {state}")),
        (NodeState::Active, Err(error)) => Some(format!("{id} is {}", error.reason())),
        (state, Err(error)) => Some(format!("{id} is {state} ({})", error.reason())),
    }
}

pub(super) async fn status(ctx: &mut Ctx<'_>, rate: bool) -> anyhow::Result<i32> {
    let home = ctx.home().await?;
    let topology = home.topology().await?;
    let members = topology.members();
    let probes = join_all(members.iter().map(|m| probe(m, &ctx.dial, rate)).collect()).await;

    let mut problems: Vec<String> = members
        .iter()
        .zip(&probes)
        .filter_map(|(m, p)| member_problem(m, p))
        .collect();
    if members.is_empty() {
        problems.push("the topology has no members".to_owned());
    }
    let mut digests: std::collections::BTreeMap<u64, Vec<&str>> = Default::default();
    for (member, probe) in members.iter().zip(&probes) {
        if let Ok(probe) = probe {
            digests
                .entry(probe.digest)
                .or_default()
                .push(&member.node_id);
        }
    }
    let digests_agree = digests.len() <= 1;
    if !digests_agree {
        let groups: Vec<String> = digests
            .iter()
            .map(|(digest, ids)| format!("{}: {}", fmt::hex(*digest), ids.join(", ")))
            .collect();
        problems.push(format!("topology digests disagree ({})", groups.join("; ")));
    }
    let reachable = probes.iter().filter(|p| p.is_ok()).count();
    let insecure: Vec<&str> = members
        .iter()
        .zip(&probes)
        .filter(|(_, p)| p.as_ref().is_ok_and(|p| p.info.insecure))
        .map(|(m, _)| m.node_id.as_str())
        .collect();
    let verdict = if problems.is_empty() {
        "healthy".to_owned()
    } else {
        format!("degraded: {}", problems.join("; "))
    };

    if ctx.json {
        let members_json: Vec<Value> = members
            .iter()
            .zip(&probes)
            .map(|(member, probe)| {
                let mut value = member_json(member);
                let fields = match probe {
                    Ok(p) => json!({
                        "reachable": true,
                        "error": null,
                        "node_state": node_state_name(p.info.state),
                        "version": p.info.version,
                        "uptime_seconds": p.info.uptime_seconds,
                        "keys": p.info.keys,
                        "memory_used_bytes": p.info.memory_used_bytes,
                        "max_memory_bytes": p.info.max_memory_bytes,
                        "hits": p.info.hits,
                        "misses": p.info.misses,
                        "evictions": p.info.evictions,
                        "expirations": p.info.expirations,
                        "topology_digest": fmt::hex(p.digest),
                        "reads_per_second": p.reads_per_second,
                    }),
                    Err(error) => json!({
                        "reachable": false,
                        "error": error.reason(),
                    }),
                };
                if let (Value::Object(target), Value::Object(extra)) = (&mut value, fields) {
                    target.extend(extra);
                }
                value
            })
            .collect();
        ctx.print_json(&json!({
            "cluster": ctx.cluster,
            "topology": {
                "digest": fmt::hex(topology.digest()),
                "replication_factor": topology.replication_factor(),
                "vnodes_per_weight": topology.vnodes_per_weight(),
            },
            "members": members_json,
            "reachable": reachable,
            "digests_agree": digests_agree,
            "healthy": problems.is_empty(),
            "problems": problems,
            "insecure_nodes": insecure,
            "verdict": verdict,
        }))?;
        return Ok(EXIT_OK);
    }

    let mut headers = vec![
        "NODE", "STATE", "INC", "GRPC", "GOSSIP", "HTTP", "KEYS", "MEMORY", "HITS", "MISSES",
    ];
    if rate {
        headers.push("READS/S");
    }
    headers.push("DIGEST");
    let mut table = Table::new(&headers);
    for (member, probe) in members.iter().zip(&probes) {
        let mut row = vec![
            Cell::text(&member.node_id),
            Cell::text(member.state.as_str()).color(state_color(member.state)),
            Cell::num(member.incarnation),
            Cell::text(&member.grpc_addr),
            Cell::text(&member.gossip_addr),
            Cell::text(&member.http_addr),
        ];
        match probe {
            Ok(p) => {
                row.extend([
                    Cell::num(p.info.keys),
                    Cell::num(format!(
                        "{} / {}",
                        fmt::bytes(p.info.memory_used_bytes),
                        fmt::bytes(p.info.max_memory_bytes)
                    )),
                    Cell::num(p.info.hits),
                    Cell::num(p.info.misses),
                ]);
                if let Some(rps) = p.reads_per_second {
                    row.push(Cell::num(format!("{rps:.1}")));
                }
                let digest = Cell::text(fmt::hex(p.digest));
                row.push(if p.digest == topology.digest() {
                    digest
                } else {
                    digest.color(Color::Yellow)
                });
            }
            Err(error) => {
                row.extend(["-", "-", "-", "-"].map(Cell::num));
                if rate {
                    row.push(Cell::num("-"));
                }
                row.push(Cell::text(error.reason()).color(Color::Red));
            }
        }
        table.row(row);
    }
    let mut text = table.render(ctx.color());
    text.push_str(&format!(
        "\ntopology {} from {}: {} members, R={}, {} vnodes per unit of weight\n",
        fmt::hex(topology.digest()),
        ctx.cluster,
        members.len(),
        topology.replication_factor(),
        topology.vnodes_per_weight(),
    ));
    text.push_str(&if digests_agree {
        format!("all {reachable} reachable members report the same topology digest\n")
    } else {
        paint(
            &format!(
                "reachable members report {} different topology digests\n",
                digests.len()
            ),
            Some(Color::Yellow),
            ctx.color(),
        )
    });
    let verdict_color = if problems.is_empty() {
        Color::Green
    } else {
        Color::Yellow
    };
    text.push_str(&paint(&verdict, Some(verdict_color), ctx.color()));
    text.push('\n');
    if !insecure.is_empty() {
        text.push_str(&paint(
            &format!(
                "WARNING: insecure (--insecure: no TLS, users, cluster TLS or gossip key on a non-loopback address): {}\n",
                insecure.join(", ")
            ),
            Some(Color::Red),
            ctx.color(),
        ));
    }
    ctx.print(&text)?;
    Ok(EXIT_OK)
}

// ---- stats --------------------------------------------------------------------------------------

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

    if ctx.json {
        ctx.print_json(&json!({
            "node_id": info.node_id,
            "grpc_addr": conn.addr(),
            "http_addr": http_addr,
            "version": info.version,
            "state": node_state_name(info.state),
            "uptime_seconds": info.uptime_seconds,
            "keys": info.keys,
            "memory_used_bytes": info.memory_used_bytes,
            "max_memory_bytes": info.max_memory_bytes,
            "eviction_policy": info.eviction_policy,
            "hits": info.hits,
            "misses": info.misses,
            "evictions": info.evictions,
            "expirations": info.expirations,
            "ready": info.ready,
            "not_ready_reason": (!info.ready).then_some(&info.not_ready_reason),
            "connections": info.connections,
            "connections_rejected": info.connections_rejected,
            "max_connections": info.max_connections,
            "forwarded_requests": info.forwarded_requests,
            "hints_pending": info.hints_pending,
            "hints_pending_bytes": info.hints_pending_bytes,
            "replication_lag_seconds": info.replication_lag_seconds,
            "clock_offset_ms": info.clock_offset_ms,
            "clock_skewed": info.clock_skewed,
            "known_members": info.known_members,
            "anti_entropy": info.anti_entropy.as_ref().map(anti_entropy_json),
            "rebalance": rebalance.as_ref().ok().map(rebalance_json),
            "rebalance_error": rebalance.as_ref().err().map(NodeError::reason),
            "metrics": scraped.as_ref().and_then(|s| s.as_ref().ok()),
            "metrics_error": scraped.as_ref().and_then(|s| s.as_ref().err()),
        }))?;
        return Ok(EXIT_OK);
    }

    let mut lines: Vec<(&str, String)> = vec![
        ("node", format!("{} at {}", info.node_id, conn.addr())),
        ("version", info.version.clone()),
        ("state", node_state_name(info.state).to_owned()),
        (
            "uptime",
            fmt::duration(Duration::from_secs(info.uptime_seconds)),
        ),
        ("keys", info.keys.to_string()),
        (
            "memory",
            format!(
                "{} of {} ({})",
                fmt::bytes(info.memory_used_bytes),
                fmt::bytes(info.max_memory_bytes),
                fmt::percent(info.memory_used_bytes, info.max_memory_bytes)
            ),
        ),
        ("eviction policy", info.eviction_policy.clone()),
        ("hits", info.hits.to_string()),
        ("misses", info.misses.to_string()),
        (
            "hit ratio",
            fmt::percent(info.hits, info.hits + info.misses),
        ),
        ("evictions", info.evictions.to_string()),
        ("expirations", info.expirations.to_string()),
        ("ready", ready_text(&info)),
        (
            "connections",
            format!(
                "{} open (max {}), {} rejected",
                info.connections,
                if info.max_connections == 0 {
                    "unlimited".to_owned()
                } else {
                    info.max_connections.to_string()
                },
                info.connections_rejected
            ),
        ),
        ("forwarded requests", info.forwarded_requests.to_string()),
        (
            "hints pending",
            format!(
                "{} ({})",
                info.hints_pending,
                fmt::bytes(info.hints_pending_bytes)
            ),
        ),
        (
            "replication lag",
            if info.replication_lag_seconds.is_finite() && info.replication_lag_seconds > 0.0 {
                fmt::duration(Duration::from_secs_f64(info.replication_lag_seconds))
            } else {
                "0s".to_owned()
            },
        ),
        ("clock", clock_text(&info)),
        (
            "known members",
            format!(
                "{} ({})",
                info.known_members.len(),
                info.known_members.join(", ")
            ),
        ),
    ];
    if let Some(ae) = &info.anti_entropy {
        lines.extend(anti_entropy_lines(ae));
    }
    match &rebalance {
        Ok(r) => lines.extend([
            ("rebalance", r.phase.clone()),
            ("  passes", r.passes.to_string()),
            (
                "  scanned",
                format!("{} of {} keys", r.keys_scanned, r.keys_total),
            ),
            (
                "  sent",
                format!("{} keys, {}", r.keys_sent, fmt::bytes(r.bytes_sent)),
            ),
            ("  received", format!("{} keys", r.keys_received)),
            (
                "  progress",
                if r.phase == "idle" {
                    "-".to_owned()
                } else {
                    format!(
                        "{} of {} ({}), {}, eta {}",
                        fmt::bytes(r.bytes_done),
                        fmt::bytes(r.bytes_total),
                        fmt::percent(r.bytes_done, r.bytes_total),
                        rate_text(r),
                        eta_text(r)
                    )
                },
            ),
            ("  failures", r.failures.to_string()),
            (
                "  last error",
                if r.last_error.is_empty() {
                    "-".to_owned()
                } else {
                    r.last_error.clone()
                },
            ),
        ]),
        Err(error) => lines.push(("rebalance", error.reason())),
    }
    let mut metric_lines = Vec::new();
    match &scraped {
        Some(Ok(values)) => {
            lines.push((
                "metrics",
                format!("from http://{}/metrics", http_addr.unwrap_or_default()),
            ));
            for (name, value) in values {
                let label = name.strip_prefix("ringcache_").unwrap_or(name).to_owned();
                metric_lines.push((format!("  {label}"), format_number(*value)));
            }
        }
        Some(Err(error)) => lines.push(("metrics", error.clone())),
        None => {}
    }
    let mut all: Vec<(&str, String)> = lines;
    all.extend(metric_lines.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let text = fmt::pairs(&all);
    ctx.print(&text)?;
    Ok(EXIT_OK)
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

// ---- rebalance status ---------------------------------------------------------------------------

pub(super) async fn rebalance_status(ctx: &mut Ctx<'_>) -> anyhow::Result<i32> {
    let home = ctx.home().await?;
    let topology = home.topology().await?;
    let dial = &ctx.dial;
    let statuses = join_all(
        topology
            .members()
            .iter()
            .map(|m| async move {
                let conn = dial.connect(&m.grpc_addr).await?;
                conn.rebalance_status().await
            })
            .collect(),
    )
    .await;

    if ctx.json {
        let nodes: Vec<Value> = topology
            .members()
            .iter()
            .zip(&statuses)
            .map(|(member, status)| match status {
                Ok(s) => json!({
                    "node_id": member.node_id,
                    "state": member.state.as_str(),
                    "reachable": true,
                    "error": null,
                    "rebalance": rebalance_json(s),
                }),
                Err(error) => json!({
                    "node_id": member.node_id,
                    "state": member.state.as_str(),
                    "reachable": false,
                    "error": error.reason(),
                    "rebalance": null,
                }),
            })
            .collect();
        ctx.print_json(&json!({
            "topology_digest": fmt::hex(topology.digest()),
            "nodes": nodes,
        }))?;
        return Ok(EXIT_OK);
    }

    let mut table = Table::new(&[
        "NODE",
        "STATE",
        "PHASE",
        "PASSES",
        "SCANNED",
        "SENT",
        "BYTES SENT",
        "RECEIVED",
        "DONE",
        "RATE",
        "ETA",
        "FAILURES",
        "LAST ERROR",
    ]);
    for (member, status) in topology.members().iter().zip(&statuses) {
        let mut row = vec![
            Cell::text(&member.node_id),
            Cell::text(member.state.as_str()).color(state_color(member.state)),
        ];
        match status {
            Ok(s) => {
                let phase = Cell::text(&s.phase);
                row.extend([
                    if s.phase == "idle" {
                        phase
                    } else {
                        phase.color(Color::Yellow)
                    },
                    Cell::num(s.passes),
                    Cell::num(format!("{}/{}", s.keys_scanned, s.keys_total)),
                    Cell::num(s.keys_sent),
                    Cell::num(fmt::bytes(s.bytes_sent)),
                    Cell::num(s.keys_received),
                    Cell::num(if s.phase == "idle" {
                        "-".to_owned()
                    } else {
                        fmt::percent(s.bytes_done, s.bytes_total)
                    }),
                    Cell::num(rate_text(s)),
                    Cell::num(eta_text(s)),
                    if s.failures > 0 {
                        Cell::num(s.failures).color(Color::Red)
                    } else {
                        Cell::num(s.failures)
                    },
                    Cell::text(if s.last_error.is_empty() {
                        "-"
                    } else {
                        &s.last_error
                    }),
                ]);
            }
            Err(error) => {
                row.push(Cell::text(error.reason()).color(Color::Red));
            }
        }
        table.row(row);
    }
    let text = table.render(ctx.color());
    ctx.print(&text)?;
    Ok(EXIT_OK)
}

// ---- drain --------------------------------------------------------------------------------------

/// Shows drain progress: a bar on a terminal, else a plain line whenever it changes (human
/// output only).
struct DrainProgress {
    bar: Option<ProgressBar>,
    plain: bool,
    last: String,
}

impl DrainProgress {
    fn new(ctx: &Ctx<'_>) -> Self {
        let bar = ctx.term.progress.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} keys ({elapsed})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        DrainProgress {
            plain: bar.is_none() && !ctx.json,
            bar,
            last: String::new(),
        }
    }

    fn update(
        &mut self,
        ctx: &mut Ctx<'_>,
        line: String,
        progress: Option<(u64, u64)>,
    ) -> anyhow::Result<()> {
        if let Some(bar) = &self.bar {
            if let Some((done, total)) = progress {
                bar.set_length(total);
                bar.set_position(done.min(total));
            }
            bar.set_message(line);
        } else if self.plain && line != self.last {
            ctx.print(&format!("{line}\n"))?;
            self.last = line;
        }
        Ok(())
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What one other member received from the drained node's hand-off.
#[derive(Debug, Serialize)]
struct HandoffReceiver {
    node_id: String,
    /// Entries received from the drained node during the drain; `null` when it did not answer
    /// before or after.
    keys: Option<u64>,
    bytes: Option<u64>,
    error: Option<String>,
}

/// `drain NODE`: whether it left, how long it took, and what it handed off.
#[derive(Debug, Serialize)]
struct Drained {
    node_id: String,
    /// `false`: it was still in the topology when `--timeout-drain` ran out (it keeps leaving).
    drained: bool,
    elapsed_ms: u64,
    /// Keys (values) the node held when it was asked to leave.
    keys_held: u64,
    /// Entries handed off, each copy counted once per receiving member: what the receivers
    /// counted, or what the node itself reported, whichever is more.
    keys_sent: u64,
    /// Key and value bytes of those entries.
    bytes_sent: u64,
    /// Whether every other member answered before and after, so the counts are exact (else
    /// they are a lower bound).
    counts_complete: bool,
    receivers: Vec<HandoffReceiver>,
    /// Why the drain is not finished (`drained: false`).
    error: Option<String>,
}

impl View for Drained {
    fn human(&self, _color: bool) -> Human {
        if self.error.is_some() {
            // Said by `failure`.
            return Human::default();
        }
        let at_least = if self.counts_complete {
            ""
        } else {
            "at least "
        };
        let receivers = self.receivers.iter().filter(|r| r.keys.is_some()).count();
        let mut text = format!(
            "{} left the cluster after {}: handed off {at_least}{} entries ({}) to {receivers} member(s); it held {} keys\n",
            self.node_id,
            fmt::duration(Duration::from_millis(self.elapsed_ms)),
            self.keys_sent,
            fmt::bytes(self.bytes_sent),
            self.keys_held,
        );
        for receiver in self.receivers.iter().filter(|r| r.error.is_some()) {
            text.push_str(&format!(
                "  {} did not say what it received: {}\n",
                receiver.node_id,
                receiver.error.as_deref().unwrap_or_default()
            ));
        }
        Human::text(text)
    }

    fn exit_code(&self) -> i32 {
        if self.drained {
            EXIT_OK
        } else {
            super::EXIT_ERROR
        }
    }

    fn failure(&self) -> Option<String> {
        self.error.clone()
    }
}

/// The entries and bytes `from` handed off to the node behind `conn`, as it counts them.
async fn handoff_received(conn: &NodeConn, from: &str) -> Result<(u64, u64), NodeError> {
    let status = conn.rebalance_status().await?;
    Ok(status
        .handoffs_received
        .iter()
        .find(|h| h.from_node_id == from)
        .map_or((0, 0), |h| (h.keys, h.bytes)))
}

/// Asks each of `members` for what `from` handed off to it.
async fn handoffs_received(
    dial: &Dial,
    members: &[Member],
    from: &str,
) -> Vec<Result<(u64, u64), NodeError>> {
    join_all(
        members
            .iter()
            .map(|m| async move {
                let conn = dial.connect(&m.grpc_addr).await?;
                handoff_received(&conn, from).await
            })
            .collect(),
    )
    .await
}

pub(super) async fn drain(
    ctx: &mut Ctx<'_>,
    node_id: &str,
    limit: Duration,
) -> anyhow::Result<i32> {
    let home = ctx.home().await?;
    let topology = home.topology().await?;
    let member = find_member(&topology, node_id)?.clone();
    if member.state == NodeState::Dead {
        bail!("{node_id} is dead: it cannot hand off its data");
    }
    // Follow the topology from another member: the leaving node stops answering at the end.
    let home_id = home.node_info().await?.node_id;
    let observer = if home_id != node_id {
        Some(home)
    } else {
        let mut found = None;
        for other in topology
            .members()
            .iter()
            .filter(|m| m.node_id != node_id && m.state == NodeState::Active)
        {
            if let Ok(conn) = ctx.dial.connect(&other.grpc_addr).await {
                found = Some(conn);
                break;
            }
        }
        found
    };
    // The leaving node stops serving before it hands off, so what it sent is counted by the
    // members that receive it: each is asked before and after.
    let receivers: Vec<Member> = topology
        .members()
        .iter()
        .filter(|m| m.node_id != node_id && m.state != NodeState::Dead)
        .cloned()
        .collect();
    let received_before = handoffs_received(&ctx.dial, &receivers, node_id).await;
    let target = ctx.dial.connect(&member.grpc_addr).await?;
    let keys_held = target.node_info().await?.keys;
    let before = target.rebalance_status().await.ok();
    target.leave().await?;
    let started = Instant::now();
    let sent_before = before.as_ref().map_or(0, |s| s.keys_sent);
    let bytes_before = before.as_ref().map_or(0, |s| s.bytes_sent);

    let mut progress = DrainProgress::new(ctx);
    let mut target = Some(target);
    // Keys and bytes handed off since the leave, as last read from the node (it stops
    // answering once its hand-off starts).
    let mut sent: (u64, u64) = (0, 0);
    let mut observer_error: Option<NodeError> = None;
    let mut timed_out = None;
    loop {
        let status = match &target {
            Some(conn) => conn.rebalance_status().await.ok(),
            None => None,
        };
        if status.is_none() {
            target = None;
        }
        if let Some(s) = &status {
            sent = (
                s.keys_sent.saturating_sub(sent_before),
                s.bytes_sent.saturating_sub(bytes_before),
            );
        }
        let gone = match &observer {
            Some(observer) => match observer.topology().await {
                Ok(topology) => {
                    observer_error = None;
                    topology
                        .member(node_id)
                        .is_none_or(|m| m.state == NodeState::Dead)
                }
                Err(error) => {
                    observer_error = Some(error);
                    false
                }
            },
            None => target.is_none(),
        };
        if gone {
            break;
        }
        let (line, bar) = match &status {
            Some(s) => (
                format!(
                    "{node_id}: {}, scanned {}/{} keys, handed off {} keys",
                    s.phase, s.keys_scanned, s.keys_total, sent.0
                ),
                Some((s.keys_scanned, s.keys_total)),
            ),
            None => (
                format!("{node_id}: handing off; waiting for the cluster to drop it"),
                None,
            ),
        };
        progress.update(ctx, line, bar)?;
        if started.elapsed() >= limit {
            let why = observer_error
                .as_ref()
                .map_or_else(String::new, |e| format!(" (last error: {e})"));
            timed_out = Some(format!(
                "{node_id} is still in the topology after {}{why}; it keeps leaving, see ringctl rebalance status",
                fmt::duration(limit)
            ));
            break;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    progress.finish();
    let elapsed = started.elapsed();
    let received_after = handoffs_received(&ctx.dial, &receivers, node_id).await;
    let mut counts_complete = true;
    let mut received = (0u64, 0u64);
    let receivers: Vec<HandoffReceiver> = receivers
        .iter()
        .zip(received_before.iter().zip(&received_after))
        .map(|(member, pair)| match pair {
            (Ok(before), Ok(after)) => {
                let keys = after.0.saturating_sub(before.0);
                let bytes = after.1.saturating_sub(before.1);
                received = (received.0 + keys, received.1 + bytes);
                HandoffReceiver {
                    node_id: member.node_id.clone(),
                    keys: Some(keys),
                    bytes: Some(bytes),
                    error: None,
                }
            }
            (Err(error), _) | (_, Err(error)) => {
                counts_complete = false;
                HandoffReceiver {
                    node_id: member.node_id.clone(),
                    keys: None,
                    bytes: None,
                    error: Some(error.reason()),
                }
            }
        })
        .collect();
    ctx.emit(&Drained {
        node_id: node_id.to_owned(),
        drained: timed_out.is_none(),
        elapsed_ms: millis(elapsed),
        keys_held,
        keys_sent: received.0.max(sent.0),
        bytes_sent: received.1.max(sent.1),
        counts_complete,
        receivers,
        error: timed_out,
    })
}

/// `ringctl forget NODE`: every reachable member stops counting `node_id` in its known cluster
/// size (the size QUORUM and ALL are measured against). For a member that is dead and will not
/// come back; a live one must be drained. Exits 1 when some member refused or could not be
/// reached (run it again once they are back).
pub(super) async fn forget(ctx: &mut Ctx<'_>, node_id: &str) -> anyhow::Result<i32> {
    let home = ctx.home().await?;
    let topology = home.topology().await?;
    if let Some(member) = topology.member(node_id)
        && member.state != NodeState::Dead
    {
        bail!(
            "{node_id} is {} in the topology: only a dead member can be forgotten (drain a live one)",
            member.state.as_str()
        );
    }
    let others: Vec<&Member> = topology
        .members()
        .iter()
        .filter(|m| m.node_id != node_id && m.state != NodeState::Dead)
        .collect();
    let dial = &ctx.dial;
    let results = join_all(
        others
            .iter()
            .map(|m| async move {
                let conn = dial.connect(&m.grpc_addr).await?;
                conn.forget(node_id).await
            })
            .collect(),
    )
    .await;
    // A member that did not know it has nothing to forget.
    let not_known = |error: &NodeError| error.reason().contains("not a known member");
    let failed = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| !not_known(e)))
        .count();
    if ctx.json {
        let nodes: Vec<Value> = others
            .iter()
            .zip(&results)
            .map(|(member, result)| match result {
                Ok(r) => json!({
                    "node_id": member.node_id,
                    "forgotten": true,
                    "known_members": r.known_members,
                    "error": null,
                }),
                Err(error) => json!({
                    "node_id": member.node_id,
                    "forgotten": false,
                    "known_members": null,
                    "error": error.reason(),
                }),
            })
            .collect();
        ctx.print_json(&json!({ "forget": node_id, "nodes": nodes }))?;
    } else {
        let mut table = Table::new(&["NODE", "RESULT", "KNOWN MEMBERS"]);
        for (member, result) in others.iter().zip(&results) {
            let (outcome, known) = match result {
                Ok(r) => ("forgotten".to_owned(), r.known_members.to_string()),
                Err(error) if not_known(error) => ("not known".to_owned(), "-".to_owned()),
                Err(error) => (error.reason(), "-".to_owned()),
            };
            table.row(vec![
                Cell::text(member.node_id.clone()),
                Cell::text(outcome),
                Cell::num(known),
            ]);
        }
        let color = ctx.color();
        ctx.print(&table.render(color))?;
    }
    if failed > 0 {
        bail!("{failed} member(s) did not forget {node_id}; run it again once they answer");
    }
    Ok(EXIT_OK)
}

/// The clock line of `stats`: the offset from the cluster's clock, and whether writes are refused.
fn clock_text(info: &pb::NodeInfoResponse) -> String {
    let offset = info.clock_offset_ms;
    let direction = if offset < 0 { "ahead of" } else { "behind" };
    let text = if offset == 0 {
        "agrees with the cluster's".to_owned()
    } else {
        format!("{} ms {direction} the cluster's", offset.unsigned_abs())
    };
    if info.clock_skewed {
        format!("{text}: SKEWED, refusing writes (fix NTP)")
    } else {
        text
    }
}

/// The anti-entropy lines of `stats`.
fn anti_entropy_lines(ae: &pb::AntiEntropyStatus) -> Vec<(&'static str, String)> {
    let every = if ae.interval_ms == 0 {
        "off".to_owned()
    } else {
        format!(
            "every {}",
            fmt::duration(Duration::from_millis(ae.interval_ms))
        )
    };
    let mut lines = vec![(
        "anti-entropy",
        format!(
            "{every}; {} rounds ({} skipped), {} buckets differed, {} keys pulled, {} pushed",
            ae.rounds, ae.rounds_skipped, ae.buckets_differing, ae.keys_pulled, ae.keys_pushed
        ),
    )];
    if !ae.last_peer.is_empty() {
        let outcome = if ae.last_error.is_empty() {
            format!(
                "{} buckets differed, {} pulled, {} pushed",
                ae.last_differing, ae.last_pulled, ae.last_pushed
            )
        } else {
            format!("skipped: {}", ae.last_error)
        };
        lines.push(("  last round", format!("with {}: {outcome}", ae.last_peer)));
    }
    lines
}

fn anti_entropy_json(ae: &pb::AntiEntropyStatus) -> Value {
    json!({
        "interval_ms": ae.interval_ms,
        "rounds": ae.rounds,
        "rounds_skipped": ae.rounds_skipped,
        "buckets_differing": ae.buckets_differing,
        "keys_pulled": ae.keys_pulled,
        "keys_pushed": ae.keys_pushed,
        "last_round": (!ae.last_peer.is_empty()).then(|| json!({
            "peer": ae.last_peer,
            "at_ms": ae.last_at_ms,
            "buckets_differing": ae.last_differing,
            "keys_pulled": ae.last_pulled,
            "keys_pushed": ae.last_pushed,
            "error": (!ae.last_error.is_empty()).then_some(&ae.last_error),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(complete: bool, error: Option<&str>) -> Drained {
        Drained {
            node_id: "n3".into(),
            drained: error.is_none(),
            elapsed_ms: 1500,
            keys_held: 20,
            keys_sent: 40,
            bytes_sent: 2048,
            counts_complete: complete,
            receivers: vec![
                HandoffReceiver {
                    node_id: "n1".into(),
                    keys: Some(20),
                    bytes: Some(1024),
                    error: None,
                },
                HandoffReceiver {
                    node_id: "n2".into(),
                    keys: complete.then_some(20),
                    bytes: complete.then_some(1024),
                    error: (!complete).then(|| "unreachable: connection refused".into()),
                },
            ],
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn a_drain_says_what_was_handed_off_and_how_sure_it_is() {
        let done = drained(true, None);
        assert_eq!(done.exit_code(), EXIT_OK);
        assert_eq!(done.failure(), None);
        assert_eq!(
            String::from_utf8(done.human(false).stdout).unwrap(),
            "n3 left the cluster after 1s 500ms: handed off 40 entries (2.0 KiB) to 2 member(s); it held 20 keys\n"
        );
        let partial = drained(false, None);
        let text = String::from_utf8(partial.human(false).stdout).unwrap();
        assert!(
            text.contains("handed off at least 40 entries (2.0 KiB) to 1 member(s)"),
            "{text}"
        );
        assert!(
            text.contains("n2 did not say what it received: unreachable: connection refused"),
            "{text}"
        );
        let json = serde_json::to_value(&partial).unwrap();
        assert_eq!(json["counts_complete"], false);
        assert_eq!(json["receivers"][1]["keys"], Value::Null);

        let late = drained(true, Some("n3 is still in the topology after 10s"));
        assert_eq!(late.exit_code(), crate::ctl::EXIT_ERROR);
        assert!(late.human(false).stdout.is_empty());
        assert_eq!(
            late.failure().as_deref(),
            Some("n3 is still in the topology after 10s")
        );
        assert_eq!(serde_json::to_value(&late).unwrap()["drained"], false);
    }
}
