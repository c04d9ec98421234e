//! `ring` (each node's share of keys, estimated by placing synthetic keys) and `locate` (a key's
//! replica set and what each replica holds).

use bytes::Bytes;
use ringcache_proto::{
    placement::{Ring, hash_tag, key_slot},
    topology::Member,
    v1 as pb,
};
use serde_json::{Value, json};

use super::{
    Ctx, EXIT_OK,
    fmt::{self, Cell, Color, Table, state_color},
    node::{NodeError, join_all},
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
    let outside: Vec<&Member> = topology
        .members()
        .iter()
        .filter(|m| !m.state.in_ring())
        .collect();
    let vnodes = |m: &Member| u64::from(m.weight) * u64::from(topology.vnodes_per_weight());

    if ctx.json {
        let nodes: Vec<Value> = ring_members
            .iter()
            .zip(&counts)
            .zip(&infos)
            .map(|((member, (primary, replica)), info)| {
                json!({
                    "node_id": member.node_id,
                    "state": member.state.as_str(),
                    "weight": member.weight,
                    "vnodes": vnodes(member),
                    "primary_share": share(*primary, samples),
                    "replica_share": share(*replica, samples),
                    "keys": info.as_ref().ok().map(|i| i.keys),
                    "error": info.as_ref().err().map(NodeError::reason),
                })
            })
            .collect();
        ctx.print_json(&json!({
            "topology_digest": fmt::hex(topology.digest()),
            "replication_factor": topology.replication_factor(),
            "replicas_per_key": ring.replication(),
            "vnodes_per_weight": topology.vnodes_per_weight(),
            "samples": samples,
            "nodes": nodes,
            "not_in_ring": outside.iter().map(|m| json!({
                "node_id": m.node_id,
                "state": m.state.as_str(),
            })).collect::<Vec<_>>(),
        }))?;
        return Ok(EXIT_OK);
    }

    let mut text = format!(
        "ring of {} nodes, R={} (configured {}), {} vnodes per unit of weight, topology {}\n\n",
        ring.nodes().len(),
        ring.replication(),
        topology.replication_factor(),
        topology.vnodes_per_weight(),
        fmt::hex(topology.digest()),
    );
    let mut table = Table::new(&[
        "NODE", "STATE", "WEIGHT", "VNODES", "PRIMARY", "REPLICA", "KEYS",
    ]);
    for ((member, (primary, replica)), info) in ring_members.iter().zip(&counts).zip(&infos) {
        table.row(vec![
            Cell::text(&member.node_id),
            Cell::text(member.state.as_str()).color(state_color(member.state)),
            Cell::num(member.weight),
            Cell::num(vnodes(member)),
            Cell::num(fmt::percent(*primary, u64::from(samples))),
            Cell::num(fmt::percent(*replica, u64::from(samples))),
            match info {
                Ok(info) => Cell::num(info.keys),
                Err(error) => Cell::text(error.reason()).color(Color::Red),
            },
        ]);
    }
    text.push_str(&table.render(ctx.color()));
    text.push_str(&format!(
        "\nPRIMARY/REPLICA: share of {samples} sampled keys a node is the primary of / holds a copy of; KEYS: keys the node holds now\n"
    ));
    if !outside.is_empty() {
        let names: Vec<String> = outside
            .iter()
            .map(|m| format!("{} ({})", m.node_id, m.state))
            .collect();
        text.push_str(&format!("not in the ring: {}\n", names.join(", ")));
    }
    ctx.print(&text)?;
    Ok(EXIT_OK)
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

    struct Row<'a> {
        member: &'a Member,
        role: String,
        reply: &'a Result<pb::InspectResponse, NodeError>,
        notes: Vec<String>,
        stale: bool,
    }
    let mut rows = Vec::new();
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
        rows.push(Row {
            member,
            role,
            reply,
            notes,
            stale,
        });
    }

    if ctx.json {
        let nodes: Vec<Value> = rows
            .iter()
            .map(|row| {
                let base = json!({
                    "node_id": row.member.node_id,
                    "state": row.member.state.as_str(),
                    "role": row.role,
                    "replica_index": replicas.iter().position(|id| *id == row.member.node_id),
                });
                let fields = match row.reply {
                    Ok(r) => json!({
                        "reachable": true,
                        "error": null,
                        "found": r.found,
                        "live": r.live,
                        "holds": holds(r),
                        "version": r.found.then_some(r.version),
                        "expires_at_ms": r.expires_at_ms,
                        "stale": row.stale,
                        "replicas": r.replicas,
                        "topology_digest": fmt::hex(r.topology_digest),
                    }),
                    Err(error) => json!({
                        "reachable": false,
                        "error": error.reason(),
                    }),
                };
                let mut value = base;
                if let (Value::Object(target), Value::Object(extra)) = (&mut value, fields) {
                    target.extend(extra);
                }
                value
            })
            .collect();
        ctx.print_json(&json!({
            "key": key,
            "slot": slot,
            "hash_tag": tagged.then(|| String::from_utf8_lossy(hash_tag(&key_bytes)).into_owned()),
            "replicas": replicas,
            "replication_factor": topology.replication_factor(),
            "topology_digest": fmt::hex(topology.digest()),
            "newest_version": newest,
            "nodes": nodes,
        }))?;
        return Ok(EXIT_OK);
    }

    let mut text = fmt::pairs(&[
        ("key", key.clone()),
        (
            "slot",
            if tagged {
                format!(
                    "{slot} (hash tag {:?})",
                    String::from_utf8_lossy(hash_tag(&key_bytes))
                )
            } else {
                slot.to_string()
            },
        ),
        (
            "replicas",
            if replicas.is_empty() {
                "none (empty ring)".to_owned()
            } else {
                format!("{} (R={})", replicas.join(", "), ring.replication())
            },
        ),
    ]);
    text.push('\n');
    let mut table = Table::new(&["NODE", "ROLE", "HOLDS", "VERSION", "EXPIRES", "NOTE"]);
    for row in &rows {
        let mut cells = vec![Cell::text(&row.member.node_id), Cell::text(&row.role)];
        match row.reply {
            Ok(r) => {
                let held = Cell::text(holds(r));
                cells.extend([
                    match holds(r) {
                        "value" => held.color(Color::Green),
                        "nothing" if newest.is_none() => held,
                        _ => held.color(Color::Yellow),
                    },
                    Cell::num(if r.found {
                        r.version.to_string()
                    } else {
                        "-".to_owned()
                    }),
                    Cell::text(match (r.found, r.expires_at_ms) {
                        (false, _) => "-".to_owned(),
                        (true, None) => "never".to_owned(),
                        (true, Some(at)) => fmt::expires(at),
                    }),
                ]);
                let note = Cell::text(row.notes.join("; "));
                cells.push(if row.notes.is_empty() {
                    note
                } else {
                    note.color(Color::Yellow)
                });
            }
            Err(_) => {
                cells.extend(["-", "-", "-"].map(Cell::text));
                cells.push(Cell::text(row.notes.join("; ")).color(Color::Red));
            }
        }
        table.row(cells);
    }
    text.push_str(&table.render(ctx.color()));
    let holders = rows
        .iter()
        .filter(|r| replicas.contains(&r.member.node_id))
        .filter(|r| r.reply.as_ref().is_ok_and(|r| r.found && r.live))
        .count();
    text.push_str(&match newest {
        Some(newest) => format!(
            "\n{holders} of {} replicas hold a live value; newest version {newest}\n",
            replicas.len()
        ),
        None => "\nno node holds the key\n".to_owned(),
    });
    ctx.print(&text)?;
    Ok(EXIT_OK)
}
