//! `ring` (each node's share of keys, estimated by placing synthetic keys) and `locate` (a key's
//! replica set and what each replica holds).

use bytes::Bytes;
use ringcache_proto::{
    placement::{Ring, hash_tag, key_slot},
    topology::{Member, NodeState},
    v1 as pb,
};
use serde::Serialize;

use super::{
    Ctx,
    cluster::state_name,
    fmt::{self, Cell, Color, Table, state_color},
    node::{NodeError, join_all},
    view::{Human, View},
    zones::{ZoneReport, zone_report},
};

/// The synthetic key number `i` placed by `ring` (any fixed, varied keys do).
fn sample_key(i: u32) -> Vec<u8> {
    format!("ringctl-sample:{i}").into_bytes()
}

/// Per ring node (in `Ring::nodes` order): keys it is the primary of, keys it holds a replica
/// of, out of `samples`.
fn shares(ring: &Ring, samples: u32) -> Vec<(u64, u64)> {
    let nodes = ring.nodes();
    let mut counts = vec![(0u64, 0u64); nodes.len()];
    let index = |id: &str| nodes.binary_search_by(|n| (**n).cmp(id)).ok();
    for i in 0..samples {
        let key = sample_key(i);
        for (position, id) in ring.replicas(&key).iter().enumerate() {
            if let Some(at) = index(id) {
                if position == 0 {
                    counts[at].0 += 1;
                }
                counts[at].1 += 1;
            }
        }
    }
    counts
}

fn share(count: u64, samples: u32) -> f64 {
    #[allow(clippy::cast_precision_loss)] // a ratio for display
    let ratio = count as f64 / f64::from(samples);
    ratio
}

/// One ring member as `ring` shows it.
#[derive(Debug, Serialize)]
struct RingNode {
    node_id: String,
    #[serde(serialize_with = "state_name")]
    state: NodeState,
    weight: u32,
    /// `null` when it has none.
    zone: Option<String>,
    vnodes: u64,
    /// Share of the sampled keys it is the primary of.
    primary_share: f64,
    /// Share of the sampled keys it holds a copy of.
    replica_share: f64,
    /// Keys it holds now; `null` when it did not answer.
    keys: Option<u64>,
    error: Option<String>,
}

/// A member outside the ring (joining, dead).
#[derive(Debug, Serialize)]
struct OutsideRing {
    node_id: String,
    #[serde(serialize_with = "state_name")]
    state: NodeState,
}

/// `ring`: each ring member's vnodes and estimated share of keys.
#[derive(Debug, Serialize)]
struct RingReport {
    topology_digest: String,
    replication_factor: u32,
    replicas_per_key: usize,
    vnodes_per_weight: u32,
    samples: u32,
    nodes: Vec<RingNode>,
    not_in_ring: Vec<OutsideRing>,
    /// The ring's zones and what to warn about; `null` when no ring member has a zone.
    zones: Option<ZoneReport>,
}

/// A share (0..=1) as a percentage with one decimal.
fn share_text(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

impl View for RingReport {
    fn human(&self, color: bool) -> Human {
        let mut text = format!(
            "ring of {} nodes, R={} (configured {}), {} vnodes per unit of weight, topology {}\n\n",
            self.nodes.len(),
            self.replicas_per_key,
            self.replication_factor,
            self.vnodes_per_weight,
            self.topology_digest,
        );
        let zoned = self.zones.is_some();
        let mut headers = vec!["NODE", "STATE"];
        if zoned {
            headers.push("ZONE");
        }
        headers.extend(["WEIGHT", "VNODES", "PRIMARY", "REPLICA", "KEYS"]);
        let mut table = Table::new(&headers);
        for node in &self.nodes {
            let mut row = vec![
                Cell::text(&node.node_id),
                Cell::text(node.state.as_str()).color(state_color(node.state)),
            ];
            if zoned {
                row.push(Cell::text(
                    node.zone.as_deref().unwrap_or(super::zones::UNNAMED),
                ));
            }
            row.extend([
                Cell::num(node.weight),
                Cell::num(node.vnodes),
                Cell::num(share_text(node.primary_share)),
                Cell::num(share_text(node.replica_share)),
                match (node.keys, &node.error) {
                    (Some(keys), _) => Cell::num(keys),
                    (None, error) => {
                        Cell::text(error.clone().unwrap_or_default()).color(Color::Red)
                    }
                },
            ]);
            table.row(row);
        }
        text.push_str(&table.render(color));
        text.push_str(&format!(
            "\nPRIMARY/REPLICA: share of {} sampled keys a node is the primary of / holds a copy of; KEYS: keys the node holds now\n",
            self.samples
        ));
        if let Some(zones) = &self.zones {
            text.push_str(&zones.summary());
            for warning in &zones.warnings {
                text.push_str(&fmt::paint(
                    &format!("WARNING: {warning}\n"),
                    Some(Color::Yellow),
                    color,
                ));
            }
        }
        if !self.not_in_ring.is_empty() {
            let names: Vec<String> = self
                .not_in_ring
                .iter()
                .map(|m| format!("{} ({})", m.node_id, m.state))
                .collect();
            text.push_str(&format!("not in the ring: {}\n", names.join(", ")));
        }
        Human::text(text)
    }
}

pub(super) async fn ring(ctx: &mut Ctx<'_>, samples: u32) -> anyhow::Result<i32> {
    let home = ctx.home().await?;
    let topology = home.topology().await?;
    let ring = Ring::new(&topology);
    if ring.is_empty() {
        anyhow::bail!(
            "the ring of {} has no members (no member is active, leaving or suspect)",
            home.addr()
        );
    }
    let counts = shares(&ring, samples);
    let ring_members: Vec<&Member> = ring
        .nodes()
        .iter()
        .filter_map(|id| topology.member(id))
        .collect();
    let dial = &ctx.dial;
    let infos = join_all(
        ring_members
            .iter()
            .map(|m| async move {
                let conn = dial.connect(&m.grpc_addr).await?;
                conn.node_info().await
            })
            .collect(),
    )
    .await;
    let vnodes = |m: &Member| u64::from(m.weight) * u64::from(topology.vnodes_per_weight());
    let nodes = ring_members
        .iter()
        .zip(&counts)
        .zip(&infos)
        .map(|((member, (primary, replica)), info)| RingNode {
            node_id: member.node_id.clone(),
            state: member.state,
            weight: member.weight,
            zone: member.zone.clone(),
            vnodes: vnodes(member),
            primary_share: share(*primary, samples),
            replica_share: share(*replica, samples),
            keys: info.as_ref().ok().map(|i| i.keys),
            error: info.as_ref().err().map(NodeError::reason),
        })
        .collect();
    ctx.emit(&RingReport {
        topology_digest: fmt::hex(topology.digest()),
        replication_factor: topology.replication_factor(),
        replicas_per_key: ring.replication(),
        vnodes_per_weight: topology.vnodes_per_weight(),
        samples,
        zones: zone_report(&ring, &topology),
        nodes,
        not_in_ring: topology
            .members()
            .iter()
            .filter(|m| !m.state.in_ring())
            .map(|m| OutsideRing {
                node_id: m.node_id.clone(),
                state: m.state,
            })
            .collect(),
    })
}

/// What one node holds for the key, in words.
fn holds(reply: &pb::InspectResponse) -> &'static str {
    match (reply.found, reply.live) {
        (false, _) => "nothing",
        (true, true) => "value",
        (true, false) => match reply.expires_at_ms {
            Some(at) if at <= fmt::now_unix_ms() => "expired",
            _ => "tombstone",
        },
    }
}

/// One node's copy of the key, as `locate` shows it (every field of its answer `null` when it
/// did not answer).
#[derive(Debug, Serialize)]
struct LocatedNode {
    node_id: String,
    #[serde(serialize_with = "state_name")]
    state: NodeState,
    /// `null` when it has none.
    zone: Option<String>,
    /// `primary`, `replica N`, or `not a replica` (a stray copy).
    role: String,
    replica_index: Option<usize>,
    reachable: bool,
    error: Option<String>,
    found: Option<bool>,
    live: Option<bool>,
    /// `value`, `tombstone`, `expired` or `nothing`.
    holds: Option<&'static str>,
    version: Option<u64>,
    expires_at_ms: Option<u64>,
    /// Older than the newest copy.
    stale: Option<bool>,
    /// Its replica set for the key, under its own topology.
    replicas: Option<Vec<String>>,
    topology_digest: Option<String>,
    /// What is off: `stale`, `missing`, its replica set or topology when they differ.
    notes: Vec<String>,
}

/// `locate KEY`: the key's slot, replica set, and what each node holds for it.
#[derive(Debug, Serialize)]
struct Located {
    key: String,
    slot: u16,
    hash_tag: Option<String>,
    replicas: Vec<String>,
    /// The replicas' zones, in replica order (`null`: none); empty when no ring member has a
    /// zone.
    replica_zones: Vec<Option<String>>,
    replication_factor: u32,
    topology_digest: String,
    newest_version: Option<u64>,
    /// Replicas that hold a live value.
    holders: usize,
    nodes: Vec<LocatedNode>,
}

impl View for Located {
    fn human(&self, color: bool) -> Human {
        let mut text = fmt::pairs(&[
            ("key", self.key.clone()),
            (
                "slot",
                match &self.hash_tag {
                    Some(tag) => format!("{} (hash tag {tag:?})", self.slot),
                    None => self.slot.to_string(),
                },
            ),
            (
                "replicas",
                if self.replicas.is_empty() {
                    "none (empty ring)".to_owned()
                } else if self.replica_zones.is_empty() {
                    format!("{} (R={})", self.replicas.join(", "), self.replicas.len())
                } else {
                    let mut zones: Vec<&str> = self
                        .replica_zones
                        .iter()
                        .map(|z| z.as_deref().unwrap_or(super::zones::UNNAMED))
                        .collect();
                    let named: Vec<String> = self
                        .replicas
                        .iter()
                        .zip(&zones)
                        .map(|(id, zone)| format!("{id} [{zone}]"))
                        .collect();
                    zones.sort_unstable();
                    zones.dedup();
                    format!(
                        "{} (R={}, {} zones)",
                        named.join(", "),
                        self.replicas.len(),
                        zones.len()
                    )
                },
            ),
        ]);
        text.push('\n');
        let zoned = !self.replica_zones.is_empty();
        let mut headers = vec!["NODE"];
        if zoned {
            headers.push("ZONE");
        }
        headers.extend(["ROLE", "HOLDS", "VERSION", "EXPIRES", "NOTE"]);
        let mut table = Table::new(&headers);
        for node in &self.nodes {
            let mut cells = vec![Cell::text(&node.node_id)];
            if zoned {
                cells.push(Cell::text(
                    node.zone.as_deref().unwrap_or(super::zones::UNNAMED),
                ));
            }
            cells.push(Cell::text(&node.role));
            match node.holds {
                Some(holds) => {
                    let held = Cell::text(holds);
                    cells.extend([
                        match holds {
                            "value" => held.color(Color::Green),
                            "nothing" if self.newest_version.is_none() => held,
                            _ => held.color(Color::Yellow),
                        },
                        Cell::num(
                            node.version
                                .map_or_else(|| "-".to_owned(), |v| v.to_string()),
                        ),
                        Cell::text(match (node.found, node.expires_at_ms) {
                            (Some(true), None) => "never".to_owned(),
                            (Some(true), Some(at)) => fmt::expires(at),
                            _ => "-".to_owned(),
                        }),
                    ]);
                    let note = Cell::text(node.notes.join("; "));
                    cells.push(if node.notes.is_empty() {
                        note
                    } else {
                        note.color(Color::Yellow)
                    });
                }
                None => {
                    cells.extend(["-", "-", "-"].map(Cell::text));
                    cells.push(Cell::text(node.notes.join("; ")).color(Color::Red));
                }
            }
            table.row(cells);
        }
        text.push_str(&table.render(color));
        text.push_str(&match self.newest_version {
            Some(newest) => format!(
                "\n{} of {} replicas hold a live value; newest version {newest}\n",
                self.holders,
                self.replicas.len()
            ),
            None => "\nno node holds the key\n".to_owned(),
        });
        Human::text(text)
    }
}

pub(super) async fn locate(ctx: &mut Ctx<'_>, key: String) -> anyhow::Result<i32> {
    let key_bytes = Bytes::from(key.clone().into_bytes());
    if key_bytes.is_empty() {
        anyhow::bail!("key must not be empty");
    }
    let home = ctx.home().await?;
    let topology = home.topology().await?;
    let ring = Ring::new(&topology);
    let replicas: Vec<String> = ring
        .replicas(&key_bytes)
        .iter()
        .map(str::to_owned)
        .collect();
    let replica_zones: Vec<Option<String>> = if ring.is_zoned() {
        ring.replicas(&key_bytes)
            .zones()
            .map(|z| z.map(str::to_owned))
            .collect()
    } else {
        Vec::new()
    };
    let slot = key_slot(&key_bytes);
    let tagged = hash_tag(&key_bytes).len() != key_bytes.len();

    // Ask every member that may answer: the replicas, and the others to find stray copies.
    let members: Vec<&Member> = replicas
        .iter()
        .filter_map(|id| topology.member(id))
        .chain(
            topology
                .members()
                .iter()
                .filter(|m| !replicas.contains(&m.node_id) && !m.state.is_gone()),
        )
        .collect();
    let dial = &ctx.dial;
    let replies = join_all(
        members
            .iter()
            .map(|m| {
                let key = key_bytes.clone();
                async move {
                    let conn = dial.connect(&m.grpc_addr).await?;
                    conn.inspect(key).await
                }
            })
            .collect(),
    )
    .await;
    let newest = replies
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|r| r.found)
        .map(|r| r.version)
        .max();

    let mut nodes = Vec::new();
    for (member, reply) in members.iter().zip(&replies) {
        let position = replicas.iter().position(|id| *id == member.node_id);
        // Members outside the replica set show only when they hold something.
        if position.is_none() && !reply.as_ref().is_ok_and(|r| r.found) {
            continue;
        }
        let role = match position {
            Some(0) => "primary".to_owned(),
            Some(i) => format!("replica {}", i + 1),
            None => "not a replica".to_owned(),
        };
        let mut notes = Vec::new();
        let mut stale = false;
        match reply {
            Ok(r) => {
                if r.found && newest.is_some_and(|n| r.version < n) {
                    stale = true;
                    notes.push("stale".to_owned());
                } else if !r.found && newest.is_some() && position.is_some() {
                    notes.push("missing".to_owned());
                }
                if r.replicas != replicas {
                    notes.push(format!("its replica set: {}", r.replicas.join(", ")));
                }
                if r.topology_digest != topology.digest() {
                    notes.push(format!("its topology: {}", fmt::hex(r.topology_digest)));
                }
            }
            Err(error) => notes.push(error.reason()),
        }
        let ok = reply.as_ref().ok();
        nodes.push(LocatedNode {
            node_id: member.node_id.clone(),
            state: member.state,
            zone: member.zone.clone(),
            role,
            replica_index: position,
            reachable: ok.is_some(),
            error: reply.as_ref().err().map(NodeError::reason),
            found: ok.map(|r| r.found),
            live: ok.map(|r| r.live),
            holds: ok.map(holds),
            version: ok.filter(|r| r.found).map(|r| r.version),
            expires_at_ms: ok.and_then(|r| r.expires_at_ms),
            stale: ok.map(|_| stale),
            replicas: ok.map(|r| r.replicas.clone()),
            topology_digest: ok.map(|r| fmt::hex(r.topology_digest)),
            notes,
        });
    }
    let holders = nodes
        .iter()
        .filter(|n| n.replica_index.is_some())
        .filter(|n| n.found == Some(true) && n.live == Some(true))
        .count();
    ctx.emit(&Located {
        key,
        slot,
        hash_tag: tagged.then(|| String::from_utf8_lossy(hash_tag(&key_bytes)).into_owned()),
        replicas,
        replica_zones,
        replication_factor: topology.replication_factor(),
        topology_digest: fmt::hex(topology.digest()),
        newest_version: newest,
        holders,
        nodes,
    })
}
