//! Commands that describe the server: `COMMAND` (generated from the command table, in Redis 7's
//! reply shape), `INFO` and `TIME`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::client::{REDIS_VERSION, Registry};
use super::reply::Reply;
use super::table::{COMMANDS, Spec, lookup};
use crate::node::Node;

fn text(s: &str) -> Reply {
    Reply::bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn statuses(items: &[&'static str]) -> Reply {
    Reply::Array(items.iter().map(|s| Reply::Simple(s)).collect())
}

fn int(n: impl TryInto<i64>) -> Reply {
    Reply::Integer(n.try_into().unwrap_or(i64::MAX))
}

/// One command's key specification (Redis 7): where the first key is and how the others follow,
/// from the table's first/last/step.
fn key_specs(spec: &Spec) -> Reply {
    if spec.first_key <= 0 {
        return Reply::Array(Vec::new());
    }
    let flags: &[&'static str] = if spec.writes() {
        &["RW", "update"]
    } else {
        &["RO", "access"]
    };
    let last = if spec.last_key >= 0 {
        spec.last_key - spec.first_key
    } else {
        spec.last_key
    };
    Reply::Array(vec![Reply::Map(vec![
        (text("flags"), statuses(flags)),
        (
            text("begin_search"),
            Reply::Map(vec![
                (text("type"), text("index")),
                (
                    text("spec"),
                    Reply::Map(vec![(text("index"), int(spec.first_key))]),
                ),
            ]),
        ),
        (
            text("find_keys"),
            Reply::Map(vec![
                (text("type"), text("range")),
                (
                    text("spec"),
                    Reply::Map(vec![
                        (text("lastkey"), int(last)),
                        (text("keystep"), int(spec.step)),
                        (text("limit"), int(0)),
                    ]),
                ),
            ]),
        ),
    ])])
}

/// `COMMAND INFO`'s entry for one command: name, arity, flags, first key, last key, step, ACL
/// categories, tips, key specs, subcommands.
pub fn command_info(spec: &Spec) -> Reply {
    Reply::Array(vec![
        text(spec.name),
        int(spec.arity),
        statuses(spec.flags),
        int(spec.first_key),
        int(spec.last_key),
        int(spec.step),
        statuses(spec.categories),
        Reply::Array(Vec::new()),
        key_specs(spec),
        Reply::Array(Vec::new()),
    ])
}

/// Redis's command group of a command, from its ACL categories.
fn group(spec: &Spec) -> &'static str {
    let has = |c: &str| spec.categories.contains(&c);
    if has("@string") {
        "string"
    } else if has("@keyspace") {
        "generic"
    } else if has("@connection") {
        "connection"
    } else {
        "server"
    }
}

fn command_docs(spec: &Spec) -> Reply {
    Reply::Map(vec![
        (
            text("summary"),
            text(&format!(
                "{} (ringcache: see the README's Redis protocol section)",
                spec.name.to_ascii_uppercase()
            )),
        ),
        (text("group"), text(group(spec))),
    ])
}

fn all_specs(names: &[Bytes]) -> Vec<Option<&'static Spec>> {
    if names.is_empty() {
        COMMANDS.iter().map(Some).collect()
    } else {
        names.iter().map(|name| lookup(name)).collect()
    }
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND LIST`, `COMMAND INFO [name ...]`,
/// `COMMAND DOCS [name ...]`, `COMMAND GETKEYS command [arg ...]`.
pub fn command(rest: &[Bytes]) -> Reply {
    let Some(sub) = rest.first() else {
        return Reply::Array(COMMANDS.iter().map(command_info).collect());
    };
    let args = &rest[1..];
    match String::from_utf8_lossy(sub).to_ascii_lowercase().as_str() {
        "count" if args.is_empty() => int(COMMANDS.len()),
        "list" if args.is_empty() => Reply::Array(COMMANDS.iter().map(|s| text(s.name)).collect()),
        "info" => Reply::Array(
            all_specs(args)
                .into_iter()
                .map(|spec| spec.map_or(Reply::Nil, command_info))
                .collect(),
        ),
        "docs" => Reply::Map(
            all_specs(args)
                .into_iter()
                .flatten()
                .map(|spec| (text(spec.name), command_docs(spec)))
                .collect(),
        ),
        "getkeys" if !args.is_empty() => getkeys(args),
        sub @ ("count" | "list" | "getkeys") => Reply::err(format!(
            "wrong number of arguments for 'command|{sub}' command"
        )),
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        )),
    }
}

/// `COMMAND GETKEYS`: the keys of a command, from the table.
fn getkeys(command: &[Bytes]) -> Reply {
    let Some(spec) = lookup(&command[0]) else {
        return Reply::err("Invalid command specified");
    };
    if !spec.arity_ok(command.len()) {
        return Reply::err("Invalid number of arguments specified for command");
    }
    let keys: Vec<Reply> = spec
        .key_positions(command.len())
        .filter_map(|i| command.get(i).cloned().map(Reply::Bulk))
        .collect();
    if keys.is_empty() {
        return Reply::err("The command has no key arguments");
    }
    Reply::Array(keys)
}

/// `TIME`: seconds and microseconds of the node's wall clock.
pub fn time() -> Reply {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Reply::Array(vec![
        text(&now.as_secs().to_string()),
        text(&now.subsec_micros().to_string()),
    ])
}

/// `CONFIG GET pattern...`: the node's settings under Redis's parameter names (read-only: the
/// settings are flags, environment variables or the config file, so `CONFIG SET` is refused).
/// Tools ask for these (redis-benchmark reads `save` and `appendonly`; others `maxmemory`,
/// `timeout`, `databases`).
pub fn config(node: &Node, rest: &[Bytes]) -> Reply {
    let Some(sub) = rest.first() else {
        return Reply::err("wrong number of arguments for 'config' command");
    };
    let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
    match sub.as_str() {
        "get" if rest.len() >= 2 => {
            let config = node.config();
            let resp_port = config.resp_port.to_string();
            let params: [(&str, String); 13] = [
                ("maxmemory", config.store.max_memory_bytes.to_string()),
                (
                    "maxmemory-policy",
                    match config.store.eviction.as_str() {
                        "noeviction" => "noeviction",
                        _ => "allkeys-lru",
                    }
                    .to_owned(),
                ),
                ("maxclients", config.max_connections.to_string()),
                (
                    "timeout",
                    config
                        .resp_idle_timeout
                        .map_or(0, |idle| idle.as_secs())
                        .to_string(),
                ),
                ("databases", "1".to_owned()),
                ("port", resp_port),
                ("bind", config.bind.to_string()),
                (
                    "proto-max-bulk-len",
                    config.store.max_value_bytes.to_string(),
                ),
                ("cluster-enabled", "yes".to_owned()),
                (
                    "cluster-node-timeout",
                    config.suspicion_timeout.as_millis().to_string(),
                ),
                ("appendonly", "no".to_owned()),
                ("save", String::new()),
                ("maxmemory-samples", "5".to_owned()),
            ];
            let mut pairs = Vec::new();
            for (name, value) in &params {
                if rest[1..].iter().any(|pattern| {
                    super::glob::string_match(&pattern.to_ascii_lowercase(), name.as_bytes())
                }) {
                    pairs.push((text(name), text(value)));
                }
            }
            Reply::Map(pairs)
        }
        "set" => Reply::err(
            "CONFIG SET is not supported: ringcache's settings are command-line flags, RINGCACHE_* \
             environment variables or the config file",
        ),
        "resetstat" | "rewrite" => Reply::err(format!(
            "CONFIG {} is not supported by ringcache",
            sub.to_ascii_uppercase()
        )),
        "help" => Reply::Array(
            [
                "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET <pattern>",
                "    Return parameters matching the glob-like <pattern> and their values.",
                "HELP",
                "    Print this help.",
            ]
            .iter()
            .map(|line| text(line))
            .collect(),
        ),
        "get" => Reply::err("wrong number of arguments for 'config|get' command"),
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(&rest[0])
        )),
    }
}

/// The sections `INFO` knows, in the order it prints them.
const SECTIONS: [&str; 6] = [
    "server", "clients", "memory", "stats", "keyspace", "cluster",
];

/// Redis's `used_memory_human` form: `1.50M`.
fn human(bytes: u64) -> String {
    let units = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.2}{}", units[unit])
    }
}

/// `INFO [section ...]`: `default`, `all` and `everything` are every section; unknown sections
/// are left out (an empty reply if none is known), as in Redis.
pub fn info(node: &Node, registry: &Registry, args: &[Bytes]) -> Reply {
    let mut wanted = [false; SECTIONS.len()];
    if args.is_empty() {
        wanted = [true; SECTIONS.len()];
    }
    for arg in args {
        let arg = String::from_utf8_lossy(arg).to_ascii_lowercase();
        match arg.as_str() {
            "all" | "everything" | "default" => wanted = [true; SECTIONS.len()],
            _ => {
                if let Some(i) = SECTIONS.iter().position(|s| *s == arg) {
                    wanted[i] = true;
                }
            }
        }
    }
    let mut out = String::new();
    for (i, section) in SECTIONS.iter().enumerate() {
        if !wanted[i] {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        write_section(&mut out, section, node, registry);
    }
    Reply::bulk(out)
}

fn write_section(out: &mut String, section: &str, node: &Node, registry: &Registry) {
    let config = node.config();
    let stats = node.store().stats();
    let uptime = node.uptime().as_secs();
    let mut title = section.to_owned();
    title[..1].make_ascii_uppercase();
    let _ = write!(out, "# {title}\r\n");
    let mut field = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(out, "{name}:{value}\r\n");
    };
    match section {
        "server" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            field("redis_version", &REDIS_VERSION);
            field("ringcache_version", &env!("CARGO_PKG_VERSION"));
            field("ringcache_node_id", &config.node_id);
            field("redis_mode", &"cluster");
            field(
                "os",
                &format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            );
            field("arch_bits", &(usize::BITS));
            field("process_id", &std::process::id());
            field("tcp_port", &registry.port);
            field("server_time_usec", &now.as_micros());
            field("uptime_in_seconds", &uptime);
            field("uptime_in_days", &(uptime / 86_400));
        }
        "clients" => {
            field("connected_clients", &registry.len());
            field("maxclients", &config.max_connections);
            field("blocked_clients", &0);
        }
        "memory" => {
            let max = config.store.max_memory_bytes;
            field("used_memory", &stats.used_bytes);
            field("used_memory_human", &human(stats.used_bytes));
            field("maxmemory", &max);
            field("maxmemory_human", &human(max as u64));
            field(
                "maxmemory_policy",
                &match config.store.eviction.as_str() {
                    "noeviction" => "noeviction",
                    _ => "allkeys-lru",
                },
            );
            field("ringcache_eviction_policy", &config.store.eviction.as_str());
        }
        "stats" => {
            field(
                "total_connections_received",
                &registry.connections_received.load(Ordering::Relaxed),
            );
            field(
                "total_commands_processed",
                &registry.commands_processed.load(Ordering::Relaxed),
            );
            field("rejected_connections", &node.connections().rejected());
            field("expired_keys", &stats.expirations);
            field("evicted_keys", &stats.evictions);
            field("keyspace_hits", &stats.hits);
            field("keyspace_misses", &stats.misses);
        }
        // Redis leaves out a database without keys.
        "keyspace" if stats.keys > 0 => {
            field("db0", &format!("keys={},expires=0,avg_ttl=0", stats.keys));
        }
        "cluster" => {
            field("cluster_enabled", &1);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(reply: &Reply) -> Vec<String> {
        match reply {
            Reply::Array(items) => items
                .iter()
                .map(|item| match item {
                    Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                    Reply::Simple(s) => (*s).to_owned(),
                    other => format!("{other:?}"),
                })
                .collect(),
            other => panic!("not an array: {other:?}"),
        }
    }

    #[test]
    fn command_info_has_redis_7_shape() {
        let Reply::Array(entry) = command_info(lookup(b"mget").unwrap()) else {
            panic!("an array")
        };
        assert_eq!(entry.len(), 10);
        assert_eq!(entry[0], text("mget"));
        assert_eq!(entry[1], Reply::Integer(-2));
        assert_eq!(strings(&entry[2]), ["readonly", "fast"]);
        assert_eq!(
            (&entry[3], &entry[4], &entry[5]),
            (&Reply::Integer(1), &Reply::Integer(-1), &Reply::Integer(1))
        );
        assert_eq!(strings(&entry[6]), ["@read", "@string", "@fast"]);
        let Reply::Array(specs) = &entry[8] else {
            panic!("key specs")
        };
        assert_eq!(specs.len(), 1);
        let Reply::Array(none) = command_info(lookup(b"ping").unwrap()) else {
            panic!("an array")
        };
        assert_eq!(none[8], Reply::Array(Vec::new()), "no keys, no key specs");
    }

    #[test]
    fn command_subcommands_follow_the_table() {
        assert_eq!(
            command(&[Bytes::from_static(b"COUNT")]),
            int(COMMANDS.len())
        );
        let Reply::Array(all) = command(&[]) else {
            panic!("an array")
        };
        assert_eq!(all.len(), COMMANDS.len());
        let info = command(&[
            Bytes::from_static(b"info"),
            Bytes::from_static(b"get"),
            Bytes::from_static(b"nosuch"),
        ]);
        let Reply::Array(info) = info else {
            panic!("an array")
        };
        assert_eq!(info[1], Reply::Nil);
        let keys = command(&[
            Bytes::from_static(b"getkeys"),
            Bytes::from_static(b"MSET"),
            Bytes::from_static(b"a"),
            Bytes::from_static(b"1"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"2"),
        ]);
        assert_eq!(strings(&keys), ["a", "b"]);
        let getkeys = |args: &[&'static [u8]]| {
            let mut all = vec![Bytes::from_static(b"getkeys")];
            all.extend(args.iter().map(|a| Bytes::from_static(a)));
            command(&all)
        };
        assert_eq!(
            getkeys(&[b"nosuch", b"x"]),
            Reply::err("Invalid command specified")
        );
        assert_eq!(
            getkeys(&[b"get"]),
            Reply::err("Invalid number of arguments specified for command")
        );
        assert_eq!(
            getkeys(&[b"ping"]),
            Reply::err("The command has no key arguments")
        );
        assert_eq!(
            getkeys(&[]),
            Reply::err("wrong number of arguments for 'command|getkeys' command")
        );
        assert_eq!(
            command(&[Bytes::from_static(b"bogus")]),
            Reply::err("unknown subcommand 'bogus'. Try COMMAND HELP.")
        );
        let Reply::Map(docs) = command(&[Bytes::from_static(b"docs"), Bytes::from_static(b"get")])
        else {
            panic!("a map")
        };
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].0, text("get"));
    }

    #[test]
    fn human_sizes_read_like_redis() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(1536), "1.50K");
        assert_eq!(human(64 << 20), "64.00M");
    }
}
