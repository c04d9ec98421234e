//! `watch`: the topology stream of the `--cluster` node, one topology at a time.

use anyhow::bail;
use ringcache_proto::topology::Topology;

use super::{
    Ctx, EXIT_OK,
    cluster::topology_json,
    fmt::{self, Cell, Table, state_color},
};

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
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        if ctx.json {
            // One compact document per line (NDJSON), so a consumer can act on each at once.
            let mut value = topology_json(&topology);
            if let serde_json::Value::Object(map) = &mut value {
                map.insert("received_at".to_owned(), at.to_string().into());
            }
            serde_json::to_writer(&mut *ctx.out, &value)?;
            ctx.out.write_all(b"\n")?;
        } else {
            let mut text = if seen > 1 {
                "\n".to_owned()
            } else {
                String::new()
            };
            text.push_str(&format!(
                "{at}  topology {}: {} members, R={}, {} vnodes per unit of weight\n",
                fmt::hex(topology.digest()),
                topology.members().len(),
                topology.replication_factor(),
                topology.vnodes_per_weight(),
            ));
            let mut table =
                Table::new(&["NODE", "STATE", "INC", "WEIGHT", "GRPC", "GOSSIP", "HTTP"]);
            for member in topology.members() {
                table.row(vec![
                    Cell::text(&member.node_id),
                    Cell::text(member.state.as_str()).color(state_color(member.state)),
                    Cell::num(member.incarnation),
                    Cell::num(member.weight),
                    Cell::text(&member.grpc_addr),
                    Cell::text(&member.gossip_addr),
                    Cell::text(&member.http_addr),
                ]);
            }
            text.push_str(&table.render(ctx.color()));
            ctx.print(&text)?;
        }
        ctx.out.flush()?;
    }
    Ok(EXIT_OK)
}
