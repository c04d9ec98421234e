//! Keyspace commands: `SCAN`, `RANDOMKEY`, `DBSIZE`, `FLUSHALL` and `FLUSHDB`.
//!
//! Each node answers for itself, as a Redis Cluster node does:
//!
//! - `SCAN` returns the keys whose **primary** is this node (Redis Cluster nodes return their
//!   own slots' keys). A cluster client that scans every primary (redis-py's
//!   `RedisCluster.scan_iter`, go-redis `ForEachMaster`) then sees each key once, not once per
//!   replica; on a single node, or with R = number of nodes and one node, that is every key. The
//!   cursor is the store's slab position ([`Store::scan_keys`]): it survives hash table growth,
//!   writes, deletes and shard compaction, so every key present for the whole scan is returned
//!   at least once; it is only meaningful on the node that made it.
//! - `RANDOMKEY` returns any live key this node holds (as primary or replica), nil when it
//!   finds none within a bounded number of slots.
//! - `DBSIZE` counts the keys this node holds, as primary or replica (O(1); expired keys not
//!   yet reclaimed included, as in Redis). Summed over every node it counts each key R times.
//! - `FLUSHALL` / `FLUSHDB` flush the **whole cluster**: the node stamps a version, flushes
//!   itself, and asks every other member to drop what was written at or before that version
//!   (`Internal.FlushThrough`); each node then refuses writes at or before it from replication,
//!   hints, anti-entropy and hand-offs, so flushed keys do not come back. `ASYNC` and `SYNC` are
//!   accepted; the reply always comes after every node answered.
//!
//! [`Store::scan_keys`]: crate::store::Store::scan_keys

use std::sync::Arc;

use bytes::Bytes;
use ringcache_proto::v1;
use tokio::task::JoinSet;

use super::glob::Pattern;
use super::reply::Reply;
use crate::node::Node;

/// Redis's default `COUNT`.
const DEFAULT_COUNT: usize = 10;
/// Slab positions a call may look at per entry it may examine (Redis: 10 buckets per COUNT).
const SLOTS_PER_ENTRY: usize = 10;

fn wrong_arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

/// The most entries one `SCAN` call examines (a bigger `COUNT` is clamped: COUNT is a hint in
/// Redis too), and so the most keys one reply carries: `--max-batch-keys`.
fn max_count(node: &Node) -> usize {
    node.config().max_batch_keys.max(1)
}

/// Parses a cursor as Redis does (`strtoul` base 10: an optional sign, digits, a `-` wrapping
/// around; the empty string is 0; no leading space, nothing after the digits, no overflow).
fn parse_cursor(arg: &[u8]) -> Option<u64> {
    let (negative, digits) = match arg.first() {
        Some(b'-') => (true, &arg[1..]),
        Some(b'+') => (false, &arg[1..]),
        _ => (false, arg),
    };
    if arg.is_empty() {
        return Some(0);
    }
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
pub fn scan(node: &Arc<Node>, rest: &[Bytes]) -> Reply {
    let Some(cursor) = rest.first() else {
        return wrong_arity("scan");
    };
    let Some(cursor) = parse_cursor(cursor) else {
        return Reply::err("invalid cursor");
    };
    let mut count = DEFAULT_COUNT;
    let mut pattern = None;
    let mut type_ok = true;
    let mut options = &rest[1..];
    while let [option, value, more @ ..] = options {
        match option.to_ascii_lowercase().as_slice() {
            b"count" => {
                let Some(n) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
                else {
                    return Reply::err("value is not an integer or out of range");
                };
                if n < 1 {
                    return syntax_error();
                }
                count = usize::try_from(n).unwrap_or(usize::MAX);
            }
            b"match" => pattern = Some(Pattern::new(value)),
            // Every key is a string: `TYPE string` filters nothing, any other type everything
            // (Redis 7.0 accepts unknown type names the same way).
            b"type" => type_ok = value.eq_ignore_ascii_case(b"string"),
            _ => return syntax_error(),
        }
        options = more;
    }
    if !options.is_empty() {
        return syntax_error();
    }
    let count = count.min(max_count(node));
    let (keys, next) =
        node.store()
            .scan_keys(cursor, count, count * SLOTS_PER_ENTRY, node.now_ms());
    let view = node.view();
    let self_id = node.config().node_id.as_str();
    let keys = keys
        .into_iter()
        .filter(|key| {
            type_ok
                && pattern.as_ref().is_none_or(|p| p.matches(key))
                && view
                    .replicas(key)
                    .primary()
                    .is_none_or(|primary| primary == self_id)
        })
        .map(Reply::Bulk)
        .collect();
    Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(keys)])
}

/// `RANDOMKEY`.
pub fn randomkey(node: &Arc<Node>, rest: &[Bytes]) -> Reply {
    if !rest.is_empty() {
        return wrong_arity("randomkey");
    }
    let budget = max_count(node).saturating_mul(SLOTS_PER_ENTRY);
    node.store()
        .random_key(node.now_ms(), rand::random(), budget)
        .map_or(Reply::Nil, Reply::Bulk)
}

/// `DBSIZE`.
pub fn dbsize(node: &Arc<Node>, rest: &[Bytes]) -> Reply {
    if !rest.is_empty() {
        return wrong_arity("dbsize");
    }
    Reply::Integer(i64::try_from(node.store().stats().keys).unwrap_or(i64::MAX))
}

/// `FLUSHALL [ASYNC | SYNC]` and `FLUSHDB [ASYNC | SYNC]` (`name` is the lower-case command).
pub async fn flush(node: &Arc<Node>, name: &str, rest: &[Bytes]) -> Reply {
    match rest {
        [] => {}
        [mode] if mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync") => {}
        _ => return syntax_error(),
    }
    let now = node.now_ms();
    let version = node.store().hlc().next(now);
    let mut failed = Vec::new();
    match node.store().flush_through(version, now) {
        Ok(removed) => tracing::info!(removed, version, "FLUSHALL: flushed this node"),
        Err(error) => failed.push(format!("{} ({error})", node.config().node_id)),
    }
    let view = node.view();
    let self_id = node.config().node_id.clone();
    let timeout = node.config().replication.replica_timeout;
    let mut calls = JoinSet::new();
    let mut reached = 1;
    for member in view
        .topology
        .members()
        .iter()
        .filter(|m| m.node_id != self_id && !m.state.is_gone())
    {
        reached += 1;
        let id = member.node_id.clone();
        let client = node.peers().internal_client(&member.cluster_addr);
        crate::logging::spawn_in(&mut calls, async move {
            let mut client = client.map_err(|error| (id.clone(), error.message))?;
            let mut request = tonic::Request::new(v1::FlushThroughRequest { version });
            request.set_timeout(timeout);
            let call = crate::peer::call(client.flush_through(request));
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err((id, error.message)),
                Err(_) => Err((id, format!("no answer within {timeout:?}"))),
            }
        });
    }
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err((id, why))) => failed.push(format!("{id} ({why})")),
            Err(error) => failed.push(format!("a flush call failed ({error})")),
        }
    }
    if failed.is_empty() {
        return Reply::OK;
    }
    failed.sort();
    Reply::err(format!(
        "{} did not reach every node: {} of {reached} not flushed: {}",
        name.to_ascii_uppercase(),
        failed.len(),
        failed.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_as_redis_strtoul_does() {
        assert_eq!(parse_cursor(b"0"), Some(0));
        assert_eq!(parse_cursor(b""), Some(0));
        assert_eq!(parse_cursor(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_cursor(b"-1"), Some(u64::MAX));
        assert_eq!(parse_cursor(b"+7"), Some(7));
        assert_eq!(parse_cursor(b"18446744073709551616"), None, "overflow");
        for bad in [&b"abc"[..], b" 1", b"1 ", b"0x10", b"-", b"1.5"] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }
}
