//! `watch`: the topology stream of the `--cluster` node, one topology at a time.

use anyhow::bail;
use ringcache_proto::topology::Topology;
use serde::Serialize;

use super::{
    Ctx, EXIT_OK,
    cluster::MemberView,
    fmt::{self, Cell, Table, state_color},
    view::{Human, View},
};

/// One topology as it arrived.
#[derive(Debug, Serialize)]
struct Watched {
    digest: String,
    replication_factor: u32,
    vnodes_per_weight: u32,
    members: Vec<MemberView>,
    /// When ringctl received it (RFC 3339, seconds).
    received_at: String,
    /// Whether it is the first one printed (the text separates the others by a blank line).
    #[serde(skip)]
    first: bool,
}

impl View for Watched {
    fn human(&self, color: bool) -> Human {
        let mut text = if self.first {
            String::new()
        } else {
            "\n".to_owned()
        };
        text.push_str(&format!(
            "{}  topology {}: {} members, R={}, {} vnodes per unit of weight\n",
            self.received_at,
            self.digest,
            self.members.len(),
            self.replication_factor,
            self.vnodes_per_weight,
        ));
        let zoned = self.members.iter().any(|m| m.zone.is_some());
        let mut headers = vec!["NODE", "STATE", "INC", "WEIGHT"];
        if zoned {
            headers.push("ZONE");
        }
        headers.extend(["GRPC", "GOSSIP", "HTTP"]);
        let mut table = Table::new(&headers);
        for member in &self.members {
            let mut row = vec![
                Cell::text(&member.node_id),
                Cell::text(member.state.as_str()).color(state_color(member.state)),
                Cell::num(member.incarnation),
                Cell::num(member.weight),
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
            table.row(row);
        }
        text.push_str(&table.render(color));
        Human::text(text)
    }
}

pub(super) async fn watch(ctx: &mut Ctx<'_>, count: Option<u64>) -> anyhow::Result<i32> {
    let home = ctx.home().await?;
    let mut stream = home.watch().await?;
    let mut seen = 0u64;
    while count.is_none_or(|count| seen < count) {
        let wire = match stream.message().await {
            Ok(Some(wire)) => wire,
            Ok(None) => bail!("the topology stream from {} ended", home.addr()),
            Err(status) => return Err(home.stream_error(&status).into()),
        };
        let topology = Topology::try_from(&wire)
            .map_err(|e| anyhow::anyhow!("{}: invalid topology: {e}", home.addr()))?;
        seen += 1;
        let watched = Watched {
            digest: fmt::hex(topology.digest()),
            replication_factor: topology.replication_factor(),
            vnodes_per_weight: topology.vnodes_per_weight(),
            members: topology.members().iter().map(MemberView::from).collect(),
            received_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            first: seen == 1,
        };
        // JSON: one compact document per line (NDJSON), so a consumer can act on each at once.
        ctx.emit_line(&watched)?;
        ctx.out.flush()?;
    }
    Ok(EXIT_OK)
}
