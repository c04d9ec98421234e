//! The key-value commands: `get`, `set`, `del`, `ttl`, `incr`, through the routing client.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use serde_json::json;

use super::{Ctx, EXIT_MISSING, EXIT_OK, KvOptions, fmt};
use crate::{KeyTtl, SetOptions};

/// `get KEY`: the raw value on stdout (no newline added), or in JSON `value` as a UTF-8 string
/// (`encoding: "utf8"`) when it is valid UTF-8 and as base64 (`encoding: "base64"`) otherwise.
pub(super) async fn get(
    ctx: &mut Ctx<'_>,
    key: String,
    options: &KvOptions,
) -> anyhow::Result<i32> {
    let client = ctx.client(options).await?;
    let Some(entry) = client.get_entry(key.clone()).await? else {
        return Ok(EXIT_MISSING);
    };
    if ctx.json {
        let (value, encoding) = match std::str::from_utf8(&entry.value) {
            Ok(text) => (text.to_owned(), "utf8"),
            Err(_) => (fmt::base64(&entry.value), "base64"),
        };
        ctx.print_json(&json!({
            "key": key,
            "found": true,
            "value": value,
            "encoding": encoding,
            "version": entry.version,
            "ttl_ms": entry.ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        }))?;
    } else {
        ctx.out.write_all(&entry.value)?;
    }
    Ok(EXIT_OK)
}

/// `set KEY (VALUE | --file PATH | --stdin) [--ttl D]`: the value from the argument, the file, or
/// stdin.
pub(super) async fn set(
    ctx: &mut Ctx<'_>,
    key: String,
    value: Option<String>,
    file: Option<PathBuf>,
    ttl: Option<Duration>,
    options: &KvOptions,
) -> anyhow::Result<i32> {
    // Read the value before connecting, so a bad file fails fast.
    let value: Bytes = match (value, file) {
        (Some(value), _) => value.into(),
        (None, Some(path)) => std::fs::read(&path)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read {}: {}",
                    path.display(),
                    super::node::describe_chain(&e)
                )
            })?
            .into(),
        // `--stdin` (the command line requires one of the three sources).
        (None, None) => {
            let mut buffer = Vec::new();
            ctx.stdin
                .read_to_end(&mut buffer)
                .context("cannot read the value from stdin")?;
            buffer.into()
        }
    };
    let client = ctx.client(options).await?;
    let mut set_options = SetOptions::new();
    if let Some(ttl) = ttl {
        set_options = set_options.ttl(ttl);
    }
    let outcome = client
        .set_with(key.clone(), value.clone(), set_options)
        .await?;
    let version = outcome.version.unwrap_or(0);
    if ctx.json {
        ctx.print_json(&json!({
            "key": key,
            "stored": outcome.stored,
            "version": version,
            "bytes": value.len(),
            "ttl_ms": ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        }))?;
    } else {
        ctx.print(&format!(
            "stored {} (version {version})\n",
            fmt::bytes(value.len() as u64)
        ))?;
    }
    Ok(EXIT_OK)
}

/// `del KEY`: whether it existed; status 0 either way.
pub(super) async fn del(
    ctx: &mut Ctx<'_>,
    key: String,
    options: &KvOptions,
) -> anyhow::Result<i32> {
    let client = ctx.client(options).await?;
    let deleted = client.delete(key.clone()).await?;
    if ctx.json {
        ctx.print_json(&json!({ "key": key, "deleted": deleted }))?;
    } else {
        ctx.print(if deleted { "deleted\n" } else { "not found\n" })?;
    }
    Ok(EXIT_OK)
}

/// `ttl KEY`: `persistent` or the time left; a missing key is status 3.
pub(super) async fn ttl(
    ctx: &mut Ctx<'_>,
    key: String,
    options: &KvOptions,
) -> anyhow::Result<i32> {
    let client = ctx.client(options).await?;
    let left = match client.ttl(key.clone()).await? {
        KeyTtl::Missing => return Ok(EXIT_MISSING),
        KeyTtl::Persistent => None,
        KeyTtl::ExpiresIn(left) => Some(left),
    };
    if ctx.json {
        ctx.print_json(&json!({
            "key": key,
            "found": true,
            "ttl_ms": left.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        }))?;
    } else {
        let text = left.map_or_else(|| "persistent".to_owned(), fmt::duration);
        ctx.print(&format!("{text}\n"))?;
    }
    Ok(EXIT_OK)
}

/// `incr KEY [DELTA] [--ttl D]`: the new value.
pub(super) async fn incr(
    ctx: &mut Ctx<'_>,
    key: String,
    delta: i64,
    ttl: Option<Duration>,
    options: &KvOptions,
) -> anyhow::Result<i32> {
    let client = ctx.client(options).await?;
    let value = match ttl {
        Some(ttl) => client.incr_with_ttl(key.clone(), delta, ttl).await?,
        None => client.incr(key.clone(), delta).await?,
    };
    if ctx.json {
        ctx.print_json(&json!({ "key": key, "value": value }))?;
    } else {
        ctx.print(&format!("{value}\n"))?;
    }
    Ok(EXIT_OK)
}
