//! A tour of the client against a running node or cluster (any node serves as the seed).
//!
//! ```text
//! RINGCACHE_ADDR=127.0.0.1:7379 cargo run -p ringcache --example basic
//! ```

use std::{process::ExitCode, time::Duration};

use ringcache::{Client, Error, KeyTtl, SetOptions};

#[tokio::main]
async fn main() -> ExitCode {
    let addr = std::env::var("RINGCACHE_ADDR").unwrap_or_else(|_| "127.0.0.1:7379".to_owned());
    match run(&addr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Unavailable(why)) => {
            eprintln!("error: cannot reach a ringcache node at {addr}: {why}");
            eprintln!(
                "hint: start one with `cargo run -p ringcache-server`, or set RINGCACHE_ADDR"
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(addr: &str) -> Result<(), Error> {
    let client = Client::builder()
        .seeds([addr])
        .request_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let members = client.topology().members().len();
    println!("connected to {addr}; the cluster has {members} member(s)");

    let version = client.set("example:greeting", "hello, ringcache").await?;
    println!("set example:greeting (version {version})");

    match client.get("example:greeting").await? {
        Some(value) => println!("get example:greeting = {}", String::from_utf8_lossy(&value)),
        None => println!("get example:greeting = (missing)"),
    }
    println!(
        "get example:nothing = {:?}",
        client.get("example:nothing").await?
    );

    let visits = client.incr("example:visits", 1).await?;
    println!("incr example:visits = {visits}");
    let visits = client.decr("example:visits", 3).await?;
    println!("decr example:visits by 3 = {visits}");

    client
        .set_ex("example:session", "alice", Duration::from_secs(30))
        .await?;
    match client.ttl("example:session").await? {
        KeyTtl::ExpiresIn(left) => println!("example:session expires in {left:?}"),
        KeyTtl::Persistent => println!("example:session never expires"),
        KeyTtl::Missing => println!("example:session is gone"),
    }

    let outcome = client
        .set_with(
            "example:session",
            "bob",
            SetOptions::new().ttl(Duration::from_secs(30)).if_absent(),
        )
        .await?;
    println!("set example:session if absent: stored = {}", outcome.stored);

    // A batch of any size: split by node and to the nodes' limits, answered in order.
    let keys: Vec<String> = (0..2500).map(|i| format!("example:batch:{i}")).collect();
    client
        .mset(
            keys.iter().map(|k| (k.clone(), "x")),
            Some(Duration::from_secs(60)),
        )
        .await?;
    let found = client.mget(keys.clone()).await?.iter().flatten().count();
    println!("mset/mget of {} keys: {found} found", keys.len());

    // Per-call options: this read may take 100 ms in all, retries included.
    let quick = client.with_timeout(Duration::from_millis(100));
    match quick.get("example:greeting").await {
        Ok(value) => println!("get within 100 ms: {}", value.is_some()),
        Err(Error::Timeout { .. }) => println!("get did not finish within 100 ms"),
        Err(other) => return Err(other),
    }

    let removed = client
        .mdelete(["example:greeting", "example:visits", "example:session"])
        .await?;
    let removed = removed + client.mdelete(keys).await?;
    println!("cleaned up {removed} keys");
    Ok(())
}
