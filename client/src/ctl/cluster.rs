//! The cluster commands: `status`, `stats`, `rebalance status` and `drain`.

use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ringcache_proto::{
    placement::Ring,
    topology::{Member, NodeState, Topology},
    v1 as pb,
};
use serde::Serialize;
use tokio::time::Instant;

use super::{
    Ctx, EXIT_DEGRADED, EXIT_OK, EXIT_UNREACHABLE,
    fmt::{self, Cell, Color, Table, paint, state_color},
    node::{Dial, NodeConn, NodeError, join_all},
    view::{Human, View, millis},
    zones::{ZoneReport, zone_report},
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

/// A topology member as ringctl prints it.
#[derive(Debug, Serialize)]
pub(super) struct MemberView {
    pub(super) node_id: String,
    #[serde(serialize_with = "state_name")]
    pub(super) state: NodeState,
    pub(super) incarnation: u64,
    pub(super) weight: u32,
    pub(super) grpc_addr: String,
    pub(super) gossip_addr: String,
    pub(super) http_addr: String,
    /// `null` when it has none.
    pub(super) zone: Option<String>,
}

impl From<&Member> for MemberView {
    fn from(member: &Member) -> Self {
        MemberView {
            node_id: member.node_id.clone(),
            state: member.state,
            incarnation: member.incarnation,
            weight: member.weight,
            grpc_addr: member.grpc_addr.clone(),
            gossip_addr: member.gossip_addr.clone(),
            http_addr: member.http_addr.clone(),
            zone: member.zone.clone(),
        }
    }
}

/// Serializes a member state by its name (`active`, `dead`).
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
pub(super) fn state_name<S: serde::Serializer>(
    state: &NodeState,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(state.as_str())
}

fn node_state_name(state: i32) -> &'static str {
    NodeState::try_from(state).map_or("unknown", NodeState::as_str)
}

/// What a leaving member handed off to a node, as it counted it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct HandoffReceived {
    from_node_id: String,
    keys: u64,
    bytes: u64,
}

/// One node's data movement (`Admin.RebalanceStatus`).
#[derive(Debug, Clone, Serialize)]
pub(super) struct Rebalance {
    phase: String,
    passes: u64,
    keys_scanned: u64,
    keys_total: u64,
    keys_sent: u64,
    bytes_sent: u64,
    keys_received: u64,
    failures: u64,
    last_error: Option<String>,
    bytes_total: u64,
    bytes_done: u64,
    rate_bytes_per_second: f64,
    eta_seconds: Option<f64>,
    handoffs_received: Vec<HandoffReceived>,
}

impl From<&pb::RebalanceStatusResponse> for Rebalance {
    fn from(status: &pb::RebalanceStatusResponse) -> Self {
        Rebalance {
            phase: status.phase.clone(),
            passes: status.passes,
            keys_scanned: status.keys_scanned,
            keys_total: status.keys_total,
            keys_sent: status.keys_sent,
            bytes_sent: status.bytes_sent,
            keys_received: status.keys_received,
            failures: status.failures,
            last_error: (!status.last_error.is_empty()).then(|| status.last_error.clone()),
            bytes_total: status.bytes_total,
            bytes_done: status.bytes_done,
            rate_bytes_per_second: status.rate_bytes_per_second,
            eta_seconds: status.eta_seconds,
            handoffs_received: status
                .handoffs_received
                .iter()
                .map(|h| HandoffReceived {
                    from_node_id: h.from_node_id.clone(),
                    keys: h.keys,
                    bytes: h.bytes,
                })
                .collect(),
        }
    }
}

impl Rebalance {
    fn idle(&self) -> bool {
        self.phase == "idle"
    }

    /// The estimated time left: `-` when idle, `unknown` when the node cannot tell (joining: no
    /// known total; no recent progress), else whole seconds, rounded up.
    fn eta_text(&self) -> String {
        if self.idle() {
            return "-".to_owned();
        }
        match self.eta_seconds {
            Some(eta) if eta.is_finite() && eta >= 0.0 => {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked above
                let secs = eta.ceil().min(u64::MAX as f64) as u64;
                fmt::duration(Duration::from_secs(secs))
            }
            _ => "unknown".to_owned(),
        }
    }

    /// The recent transfer rate, `-` when idle.
    fn rate_text(&self) -> String {
        if self.idle() {
            return "-".to_owned();
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // display only
        let rate = self.rate_bytes_per_second.max(0.0) as u64;
        format!("{}/s", fmt::bytes(rate))
    }

    /// The rebalance lines of `stats`.
    pub(super) fn lines(&self) -> Vec<(&'static str, String)> {
        vec![
            ("rebalance", self.phase.clone()),
            ("  passes", self.passes.to_string()),
            (
                "  scanned",
                format!("{} of {} keys", self.keys_scanned, self.keys_total),
            ),
            (
                "  sent",
                format!("{} keys, {}", self.keys_sent, fmt::bytes(self.bytes_sent)),
            ),
            ("  received", format!("{} keys", self.keys_received)),
            (
                "  progress",
                if self.idle() {
                    "-".to_owned()
                } else {
                    format!(
                        "{} of {} ({}), {}, eta {}",
                        fmt::bytes(self.bytes_done),
                        fmt::bytes(self.bytes_total),
                        fmt::percent(self.bytes_done, self.bytes_total),
                        self.rate_text(),
                        self.eta_text()
                    )
                },
            ),
            ("  failures", self.failures.to_string()),
            (
                "  last error",
                self.last_error.clone().unwrap_or_else(|| "-".to_owned()),
            ),
        ]
    }

    /// Bytes done of the total, `-` when idle.
    fn done_text(&self) -> String {
        if self.idle() {
            "-".to_owned()
        } else {
            fmt::percent(self.bytes_done, self.bytes_total)
        }
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
        (NodeState::Left, _) => None,
        (state, Ok(_)) => Some(format!("{id} is {state}")),
        (NodeState::Active, Err(error)) if error.is_unreachable() => {
            Some(format!("{id} is {}", error.reason()))
        }
        (NodeState::Active, Err(error)) => Some(format!("{id}: {}", error.reason())),
        (state, Err(error)) => Some(format!("{id} is {state} ({})", error.reason())),
    }
}

/// One member as `status` shows it: its topology entry, and what it answered (every field
/// `null` when it did not).
#[derive(Debug, Serialize)]
struct MemberStatus {
    node_id: String,
    #[serde(serialize_with = "state_name")]
    state: NodeState,
    incarnation: u64,
    weight: u32,
    grpc_addr: String,
    gossip_addr: String,
    http_addr: String,
    reachable: bool,
    error: Option<String>,
    node_state: Option<&'static str>,
    version: Option<String>,
    uptime_seconds: Option<u64>,
    keys: Option<u64>,
    memory_used_bytes: Option<u64>,
    max_memory_bytes: Option<u64>,
    hits: Option<u64>,
    misses: Option<u64>,
    evictions: Option<u64>,
    expirations: Option<u64>,
    topology_digest: Option<String>,
    reads_per_second: Option<f64>,
    /// `null` when it has none.
    zone: Option<String>,
}

impl MemberStatus {
    fn new(member: &Member, probe: &Result<Probe, NodeError>) -> Self {
        let ok = probe.as_ref().ok();
        let info = ok.map(|p| &p.info);
        MemberStatus {
            node_id: member.node_id.clone(),
            state: member.state,
            incarnation: member.incarnation,
            weight: member.weight,
            grpc_addr: member.grpc_addr.clone(),
            gossip_addr: member.gossip_addr.clone(),
            http_addr: member.http_addr.clone(),
            reachable: ok.is_some(),
            error: probe.as_ref().err().map(NodeError::reason),
            node_state: info.map(|i| node_state_name(i.state)),
            version: info.map(|i| i.version.clone()),
            uptime_seconds: info.map(|i| i.uptime_seconds),
            keys: info.map(|i| i.keys),
            memory_used_bytes: info.map(|i| i.memory_used_bytes),
            max_memory_bytes: info.map(|i| i.max_memory_bytes),
            hits: info.map(|i| i.hits),
            misses: info.map(|i| i.misses),
            evictions: info.map(|i| i.evictions),
            expirations: info.map(|i| i.expirations),
            topology_digest: ok.map(|p| fmt::hex(p.digest)),
            reads_per_second: ok.and_then(|p| p.reads_per_second),
            zone: member.zone.clone(),
        }
    }
}

/// The topology `status` was given by the `--cluster` node.
#[derive(Debug, Serialize)]
struct TopologySummary {
    digest: String,
    replication_factor: u32,
    vnodes_per_weight: u32,
}

/// `status`: every member, whether they agree on the topology, and a verdict.
#[derive(Debug, Serialize)]
struct Status {
    cluster: String,
    topology: TopologySummary,
    members: Vec<MemberStatus>,
    /// Members that answered.
    reachable: usize,
    digests_agree: bool,
    /// How many different topology digests the reachable members report.
    digests: usize,
    healthy: bool,
    problems: Vec<String>,
    insecure_nodes: Vec<String>,
    /// Members kept out of every ring for other placement settings, and who refused them.
    refused_members: Vec<RefusedStatus>,
    /// Members the cluster should have, as the `--cluster` node counts them.
    expected_members: u64,
    /// Members serving (Active or Leaving).
    serving_members: Vec<String>,
    /// Members that owned ranges and are gone from the view (not forgotten, not drained).
    missing_members: Vec<String>,
    /// Hash slots with fewer than min(R, expected) serving replicas.
    under_replicated_slots: u64,
    /// The ring's zones and what to warn about; `null` when no ring member has a zone.
    zones: Option<ZoneReport>,
    verdict: String,
    /// Whether reads per second were measured (`--rate`).
    #[serde(skip)]
    rate: bool,
    /// `--check`: the exit code says healthy (0) or degraded (1).
    #[serde(skip)]
    check: bool,
}

/// A member refused for its placement settings.
#[derive(Debug, Serialize)]
struct RefusedStatus {
    node_id: String,
    reason: String,
    refused_by: Vec<String>,
}

impl View for Status {
    fn exit_code(&self) -> i32 {
        if self.check && !self.healthy {
            EXIT_DEGRADED
        } else {
            EXIT_OK
        }
    }

    fn human(&self, color: bool) -> Human {
        let zoned = self.members.iter().any(|m| m.zone.is_some());
        let mut headers = vec!["NODE", "STATE", "INC"];
        if zoned {
            headers.push("ZONE");
        }
        headers.extend(["GRPC", "GOSSIP", "HTTP", "KEYS", "MEMORY", "HITS", "MISSES"]);
        if self.rate {
            headers.push("READS/S");
        }
        headers.push("DIGEST");
        let mut table = Table::new(&headers);
        for member in &self.members {
            let mut row = vec![
                Cell::text(&member.node_id),
                Cell::text(member.state.as_str()).color(state_color(member.state)),
                Cell::num(member.incarnation),
            ];
            if zoned {
                row.push(Cell::text(
                    member.zone.as_deref().unwrap_or(super::zones::UNNAMED),
                ));
            }
            row.extend([
                Cell::text(&member.grpc_addr),
                Cell::text(&member.gossip_addr),
                Cell::text(&member.http_addr),
            ]);
            let dash = || "-".to_owned();
            let num = |v: Option<u64>| Cell::num(v.map_or_else(dash, |v| v.to_string()));
            row.extend([
                num(member.keys),
                Cell::num(match (member.memory_used_bytes, member.max_memory_bytes) {
                    (Some(used), Some(max)) => {
                        format!("{} / {}", fmt::bytes(used), fmt::bytes(max))
                    }
                    _ => dash(),
                }),
                num(member.hits),
                num(member.misses),
            ]);
            if self.rate {
                row.push(Cell::num(
                    member
                        .reads_per_second
                        .map_or_else(dash, |rps| format!("{rps:.1}")),
                ));
            }
            row.push(match (&member.topology_digest, &member.error) {
                (Some(digest), _) if *digest == self.topology.digest => Cell::text(digest),
                (Some(digest), _) => Cell::text(digest).color(Color::Yellow),
                (None, error) => Cell::text(error.clone().unwrap_or_else(dash)).color(Color::Red),
            });
            table.row(row);
        }
        let mut text = table.render(color);
        text.push_str(&format!(
            "\ntopology {} from {}: {} members ({} serving, {} expected), R={}, {} vnodes per unit of weight\n",
            self.topology.digest,
            self.cluster,
            self.members.len(),
            self.serving_members.len(),
            self.expected_members,
            self.topology.replication_factor,
            self.topology.vnodes_per_weight,
        ));
        text.push_str(&if self.digests_agree {
            match self.reachable {
                0 => "no member answered\n".to_owned(),
                1 => "the one reachable member reports the topology digest\n".to_owned(),
                n => format!("all {n} reachable members report the same topology digest\n"),
            }
        } else {
            paint(
                &format!(
                    "reachable members report {} different topology digests\n",
                    self.digests
                ),
                Some(Color::Yellow),
                color,
            )
        });
        let verdict_color = if self.healthy {
            Color::Green
        } else {
            Color::Yellow
        };
        if let Some(zones) = &self.zones {
            text.push_str(&zones.summary());
            for warning in &zones.warnings {
                text.push_str(&paint(
                    &format!("WARNING: {warning}\n"),
                    Some(Color::Yellow),
                    color,
                ));
            }
        }
        text.push_str(&paint(&self.verdict, Some(verdict_color), color));
        text.push('\n');
        if !self.insecure_nodes.is_empty() {
            text.push_str(&paint(
                &format!(
                    "WARNING: insecure (--insecure: no TLS, users, cluster TLS or gossip key on a non-loopback address): {}\n",
                    self.insecure_nodes.join(", ")
                ),
                Some(Color::Red),
                color,
            ));
        }
        Human::text(text)
    }
}

pub(super) async fn status(ctx: &mut Ctx<'_>, rate: bool, check: bool) -> anyhow::Result<i32> {
    let reached = async {
        let home = ctx.home().await?;
        let topology = home.topology().await?;
        let info = home.node_info().await?;
        anyhow::Ok((topology, info))
    }
    .await;
    let (topology, home_info) = match reached {
        Ok(reached) => reached,
        Err(error) if check => {
            ctx.print(&format!(
                "unreachable: {}\n",
                super::one_line(&error.to_string())
            ))?;
            return Ok(EXIT_UNREACHABLE);
        }
        Err(error) => return Err(error),
    };
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
    // What the --cluster node counts on: the members the cluster should have, and the slots
    // with fewer serving copies than R.
    let serving: Vec<&str> = members
        .iter()
        .filter(|m| matches!(m.state, NodeState::Active | NodeState::Leaving))
        .map(|m| m.node_id.as_str())
        .collect();
    let missing: Vec<&str> = home_info
        .known_members
        .iter()
        .map(String::as_str)
        .filter(|id| !members.iter().any(|m| m.node_id == *id))
        .collect();
    for id in &missing {
        problems.push(format!(
            "{id} is missing (it owned ranges and is gone from the view; `ringctl forget {id}` if it is gone for good)"
        ));
    }
    if (serving.len() as u64) < home_info.expected_members {
        problems.push(format!(
            "{} of {} expected members serving",
            serving.len(),
            home_info.expected_members
        ));
    }
    if home_info.under_replicated_slots > 0 {
        problems.push(format!(
            "{} of {} hash slots under-replicated (fewer than {} serving replicas)",
            home_info.under_replicated_slots,
            ringcache_proto::placement::SLOTS,
            u64::from(topology.replication_factor()).min(home_info.expected_members)
        ));
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
    // Members refused for their placement settings are in no topology: the members that
    // refused them say so.
    let mut refused: std::collections::BTreeMap<(&str, &str), Vec<String>> = Default::default();
    for (member, probe) in members.iter().zip(&probes) {
        for r in probe.iter().flat_map(|p| &p.info.refused_members) {
            refused
                .entry((r.node_id.as_str(), r.reason.as_str()))
                .or_default()
                .push(member.node_id.clone());
        }
    }
    for ((id, reason), by) in &refused {
        problems.push(format!(
            "{id} refused by {} (placement settings differ: {reason})",
            by.join(", ")
        ));
    }
    let zones = zone_report(&Ring::new(&topology), &topology);
    if let Some(zones) = zones.as_ref().filter(|z| z.crowded_ranges > 0) {
        problems.push(format!(
            "{} slot ranges keep two copies in one zone while another zone holds none (a \
             placement bug)",
            zones.crowded_ranges
        ));
    }
    let insecure_nodes: Vec<String> = members
        .iter()
        .zip(&probes)
        .filter(|(_, p)| p.as_ref().is_ok_and(|p| p.info.insecure))
        .map(|(m, _)| m.node_id.clone())
        .collect();
    let verdict = if problems.is_empty() {
        "healthy".to_owned()
    } else {
        format!("degraded: {}", problems.join("; "))
    };
    ctx.emit(&Status {
        cluster: ctx.cluster.clone(),
        topology: TopologySummary {
            digest: fmt::hex(topology.digest()),
            replication_factor: topology.replication_factor(),
            vnodes_per_weight: topology.vnodes_per_weight(),
        },
        members: members
            .iter()
            .zip(&probes)
            .map(|(m, p)| MemberStatus::new(m, p))
            .collect(),
        reachable: probes.iter().filter(|p| p.is_ok()).count(),
        digests_agree,
        digests: digests.len(),
        healthy: problems.is_empty(),
        problems,
        insecure_nodes,
        refused_members: refused
            .into_iter()
            .map(|((id, reason), by)| RefusedStatus {
                node_id: id.to_owned(),
                reason: reason.to_owned(),
                refused_by: by,
            })
            .collect(),
        expected_members: home_info.expected_members,
        serving_members: serving.iter().map(|id| (*id).to_owned()).collect(),
        missing_members: missing.iter().map(|id| (*id).to_owned()).collect(),
        under_replicated_slots: home_info.under_replicated_slots,
        zones,
        verdict,
        rate,
        check,
    })
}

// ---- rebalance status ---------------------------------------------------------------------------

/// One member's answer to `rebalance status`.
#[derive(Debug, Serialize)]
struct NodeRebalance {
    node_id: String,
    #[serde(serialize_with = "state_name")]
    state: NodeState,
    reachable: bool,
    error: Option<String>,
    rebalance: Option<Rebalance>,
}

/// `rebalance status`: every member's data movement.
#[derive(Debug, Serialize)]
struct RebalanceReport {
    topology_digest: String,
    nodes: Vec<NodeRebalance>,
}

impl View for RebalanceReport {
    fn human(&self, color: bool) -> Human {
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
        for node in &self.nodes {
            let mut row = vec![
                Cell::text(&node.node_id),
                Cell::text(node.state.as_str()).color(state_color(node.state)),
            ];
            match (&node.rebalance, &node.error) {
                (Some(s), _) => {
                    let phase = Cell::text(&s.phase);
                    row.extend([
                        if s.idle() {
                            phase
                        } else {
                            phase.color(Color::Yellow)
                        },
                        Cell::num(s.passes),
                        Cell::num(format!("{}/{}", s.keys_scanned, s.keys_total)),
                        Cell::num(s.keys_sent),
                        Cell::num(fmt::bytes(s.bytes_sent)),
                        Cell::num(s.keys_received),
                        Cell::num(s.done_text()),
                        Cell::num(s.rate_text()),
                        Cell::num(s.eta_text()),
                        if s.failures > 0 {
                            Cell::num(s.failures).color(Color::Red)
                        } else {
                            Cell::num(s.failures)
                        },
                        Cell::text(s.last_error.as_deref().unwrap_or("-")),
                    ]);
                }
                (None, error) => {
                    row.push(Cell::text(error.as_deref().unwrap_or("-")).color(Color::Red));
                }
            }
            table.row(row);
        }
        Human::text(table.render(color))
    }
}

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
    let nodes = topology
        .members()
        .iter()
        .zip(&statuses)
        .map(|(member, status)| NodeRebalance {
            node_id: member.node_id.clone(),
            state: member.state,
            reachable: status.is_ok(),
            error: status.as_ref().err().map(NodeError::reason),
            rebalance: status.as_ref().ok().map(Rebalance::from),
        })
        .collect();
    ctx.emit(&RebalanceReport {
        topology_digest: fmt::hex(topology.digest()),
        nodes,
    })
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

/// A connection to the first active member other than `node_id` that answers, if any: it
/// follows the topology while `node_id` stops.
async fn another_member(dial: &Dial, topology: &Topology, node_id: &str) -> Option<NodeConn> {
    for other in topology
        .members()
        .iter()
        .filter(|m| m.node_id != node_id && m.state == NodeState::Active)
    {
        if let Ok(conn) = dial.connect(&other.grpc_addr).await {
            return Some(conn);
        }
    }
    None
}

/// `drain --restart NODE`: how the stop for a restart went.
#[derive(Debug, Serialize)]
struct StoppedForRestart {
    node_id: String,
    /// Whether the node stopped, and the cluster shows it `restarting`, in time.
    stopped: bool,
    elapsed_ms: u64,
    /// Keys the node held when it was asked to stop (they stay in its snapshot).
    keys_held: u64,
    /// Why it is not done (`stopped: false`).
    error: Option<String>,
}

impl View for StoppedForRestart {
    fn human(&self, _color: bool) -> Human {
        if self.error.is_some() {
            return Human::default();
        }
        Human::text(format!(
            "{} stopped for a restart after {}, keeping its {} keys on disk; the cluster keeps its ranges (restarting) for the restart grace: start it again with the same node id and data directory\n",
            self.node_id,
            fmt::duration(Duration::from_millis(self.elapsed_ms)),
            self.keys_held,
        ))
    }

    fn exit_code(&self) -> i32 {
        if self.stopped {
            EXIT_OK
        } else {
            super::EXIT_ERROR
        }
    }

    fn failure(&self) -> Option<String> {
        self.error.clone()
    }
}

/// `drain --restart NODE`: asks the node to stop for a quick restart and waits until it has
/// stopped (it stops answering) and another member shows it `restarting`.
pub(super) async fn drain_for_restart(
    ctx: &mut Ctx<'_>,
    node_id: &str,
    limit: Duration,
) -> anyhow::Result<i32> {
    let home = ctx.home().await?;
    let topology = home.topology().await?;
    let member = find_member(&topology, node_id)?.clone();
    if member.state.is_gone() {
        bail!("{node_id} is {}: there is nothing to restart", member.state);
    }
    // Another member tells when the cluster shows it restarting.
    let observer = another_member(&ctx.dial, &topology, node_id).await;
    let target = ctx.dial.connect(&member.grpc_addr).await?;
    let keys_held = target.node_info().await?.keys;
    target.leave(true).await?;
    let started = Instant::now();
    let mut progress = DrainProgress::new(ctx);
    let mut error = None;
    loop {
        let stopped = target.node_info().await.is_err();
        let shown = match &observer {
            Some(observer) => observer.topology().await.ok().is_some_and(|topology| {
                topology
                    .member(node_id)
                    .is_some_and(|m| m.state == NodeState::Restarting)
            }),
            // No other member to ask (a cluster of one): stopping is all there is to see.
            None => true,
        };
        if stopped && shown {
            break;
        }
        progress.update(
            ctx,
            format!("{node_id}: writing its snapshot and stopping"),
            None,
        )?;
        if started.elapsed() >= limit {
            error = Some(format!(
                "{node_id} has not stopped for its restart after {} (stopped: {stopped}, shown restarting: {shown})",
                fmt::duration(limit)
            ));
            break;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    progress.finish();
    ctx.emit(&StoppedForRestart {
        node_id: node_id.to_owned(),
        stopped: error.is_none(),
        elapsed_ms: millis(started.elapsed()),
        keys_held,
        error,
    })
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
    if member.state.is_gone() {
        bail!("{node_id} is dead: it cannot hand off its data");
    }
    // Follow the topology from another member: the leaving node stops answering at the end.
    let home_id = home.node_info().await?.node_id;
    let observer = if home_id != node_id {
        Some(home)
    } else {
        another_member(&ctx.dial, &topology, node_id).await
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
    target.leave(false).await?;
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
                    topology.member(node_id).is_none_or(|m| m.state.is_gone())
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

/// One member's answer to `forget`.
#[derive(Debug, Serialize)]
struct ForgetAnswer {
    node_id: String,
    forgotten: bool,
    /// `forgotten`, `not known` (it had nothing to forget) or `failed`.
    outcome: &'static str,
    known_members: Option<u32>,
    error: Option<String>,
}

/// `forget NODE`: what every other member did.
#[derive(Debug, Serialize)]
struct Forgot {
    forget: String,
    nodes: Vec<ForgetAnswer>,
    /// Members that neither forgot it nor did not know it.
    failed: usize,
}

impl View for Forgot {
    fn human(&self, color: bool) -> Human {
        let mut table = Table::new(&["NODE", "RESULT", "KNOWN MEMBERS"]);
        for answer in &self.nodes {
            let outcome = match (&answer.error, answer.outcome) {
                (Some(error), "failed") => Cell::text(error.clone()).color(Color::Red),
                (_, outcome) => Cell::text(outcome),
            };
            table.row(vec![
                Cell::text(answer.node_id.clone()),
                outcome,
                Cell::num(
                    answer
                        .known_members
                        .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                ),
            ]);
        }
        Human::text(table.render(color))
    }

    fn exit_code(&self) -> i32 {
        if self.failed == 0 {
            EXIT_OK
        } else {
            super::EXIT_ERROR
        }
    }

    fn failure(&self) -> Option<String> {
        (self.failed > 0).then(|| {
            format!(
                "{} member(s) did not forget {}; run it again once they answer",
                self.failed, self.forget
            )
        })
    }
}

/// `ringctl forget NODE`: every reachable member stops counting `node_id` in its known cluster
/// size (the size QUORUM and ALL are measured against). For a member that is dead and will not
/// come back; a live one must be drained. Exits 1 when some member refused or could not be
/// reached (run it again once they are back).
pub(super) async fn forget(ctx: &mut Ctx<'_>, node_id: &str) -> anyhow::Result<i32> {
    let home = ctx.home().await?;
    let topology = home.topology().await?;
    if let Some(member) = topology.member(node_id)
        && !member.state.is_gone()
    {
        bail!(
            "{node_id} is {} in the topology: only a dead member can be forgotten (drain a live one)",
            member.state.as_str()
        );
    }
    let others: Vec<&Member> = topology
        .members()
        .iter()
        .filter(|m| m.node_id != node_id && !m.state.is_gone())
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
    let nodes: Vec<ForgetAnswer> = others
        .iter()
        .zip(&results)
        .map(|(member, result)| {
            let (outcome, error) = match result {
                Ok(_) => ("forgotten", None),
                Err(error) if not_known(error) => ("not known", Some(error.reason())),
                Err(error) => ("failed", Some(error.reason())),
            };
            ForgetAnswer {
                node_id: member.node_id.clone(),
                forgotten: result.is_ok(),
                outcome,
                known_members: result.as_ref().ok().map(|r| r.known_members),
                error,
            }
        })
        .collect();
    let failed = nodes.iter().filter(|n| n.outcome == "failed").count();
    ctx.emit(&Forgot {
        forget: node_id.to_owned(),
        nodes,
        failed,
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
    fn status_problems_name_the_member_once_and_read_as_sentences() {
        let member = |state| {
            Member::for_test("n3")
                .with_state(state)
                .with_grpc_addr("127.0.0.3:7379")
        };
        let unreachable = Err(NodeError::Unreachable {
            addr: "127.0.0.3:7379".into(),
            reason: "connection refused".into(),
        });
        let refused = Err(NodeError::Rpc {
            addr: "127.0.0.3:7379".into(),
            call: "NodeInfo",
            reason: "unavailable: shutting down".into(),
        });
        let answered = Ok(Probe {
            info: pb::NodeInfoResponse::default(),
            digest: 1,
            reads_per_second: None,
        });
        let cases = [
            (NodeState::Active, &answered, None),
            (
                NodeState::Active,
                &unreachable,
                Some("n3 is unreachable: connection refused"),
            ),
            (
                NodeState::Active,
                &refused,
                Some("n3: NodeInfo: unavailable: shutting down"),
            ),
            (NodeState::Dead, &unreachable, Some("n3 is dead")),
            (NodeState::Suspect, &answered, Some("n3 is suspect")),
            (
                NodeState::Leaving,
                &unreachable,
                Some("n3 is leaving (unreachable: connection refused)"),
            ),
        ];
        for (state, probe, expected) in cases {
            assert_eq!(
                member_problem(&member(state), probe).as_deref(),
                expected,
                "{state:?}"
            );
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
        assert_eq!(json["receivers"][1]["keys"], serde_json::Value::Null);

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
