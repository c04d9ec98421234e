//! A tiny service with a ringcache node embedded in its process: it joins the cluster of the
//! seeds given on the command line, then, once a second, writes a few keys and reads them back
//! through the node's client, printing how many reads its own node answered without a network
//! request. It leaves the cluster (handing its keys off) after `--rounds` rounds or at Ctrl-C.
//!
//! ```sh
//! # a cluster to join (two ringcached on 127.0.0.1, gossip on 7380 and 7390):
//! ringcached --node-id n1 --bind 127.0.0.1 &
//! ringcached --node-id n2 --bind 127.0.0.2 --seeds 127.0.0.1:7380 &
//! cargo run -p ringcache-server --features embedded --example embedded -- \
//!     --node-id app-1 --seed 127.0.0.1:7380 --grpc 127.0.0.3:7379 --cluster 127.0.0.3:7382 \
//!     --gossip 127.0.0.3:7380
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ringcache_server::embedded::{Embedded, EmbeddedNode};

/// A service embedding a ringcache node.
#[derive(Debug, Parser)]
struct Args {
    /// This node's id in the cluster.
    #[arg(long, default_value = "embedded-1")]
    node_id: String,
    /// Gossip address of a member to join through (repeat for several); none: a cluster of one.
    #[arg(long = "seed", value_name = "HOST:PORT")]
    seeds: Vec<String>,
    /// Where the node's gRPC port listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    grpc: SocketAddr,
    /// Where the node's cluster port listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    cluster: SocketAddr,
    /// Where the node's gossip port listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    gossip: SocketAddr,
    /// Most bytes the node's store holds.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_memory: u64,
    /// Rounds of writes and reads (one a second) before leaving, 1..=86400.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    rounds: u32,
}

/// Starts the node the way `args` say.
async fn start(args: &Args) -> anyhow::Result<EmbeddedNode> {
    Embedded::builder()
        .node_id(args.node_id.clone())
        .seeds(args.seeds.clone())
        .grpc_addr(args.grpc)
        .cluster_addr(args.cluster)
        .gossip_addr(args.gossip)
        .max_memory(args.max_memory)
        .start()
        .await
}

/// One round of the service's work: writes `keys` keys, reads each back; returns how many
/// reads the embedded node answered itself.
async fn round(node: &EmbeddedNode, round: u32, keys: u32) -> anyhow::Result<u64> {
    let client = node.client();
    let before = client.stats().local_reads;
    for i in 0..keys {
        let key = format!("demo:{i}");
        client.set(key.clone(), format!("round {round}")).await?;
        let value = client.get(key.clone()).await?;
        anyhow::ensure!(value.is_some(), "{key} written and not read back");
    }
    Ok(client.stats().local_reads - before)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let node = start(&args).await?;
    let members = node.node().view().ring.nodes().len();
    println!(
        "node {} serving on {} (gossip {}), {members} ring members",
        node.node_id(),
        node.grpc_addr(),
        node.gossip_addr()
    );
    const KEYS: u32 = 20;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    for i in 1..=args.rounds {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let local = round(&node, i, KEYS).await?;
        println!("round {i}: {local} of {KEYS} reads served by this process's node");
    }
    println!("leaving the cluster");
    node.shutdown().await
}
