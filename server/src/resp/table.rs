//! The command table: every command the RESP port knows, with what Redis's `COMMAND` reports for
//! it (arity, flags, key positions) and the role a user needs to run it.
//!
//! One table serves four purposes: `COMMAND` / `COMMAND INFO` / `COMMAND COUNT` replies (cluster
//! clients such as redis-py read key positions from them), the arity check before a command runs,
//! finding a command's keys (for slot routing: `-MOVED`, `-CROSSSLOT`), and the role check when
//! users are configured. Adding a command means one line here plus its handler.

use crate::auth::Role;

/// One command's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis's arity: `n` means exactly `n` arguments counting the name, `-n` at least `n`.
    pub arity: i32,
    /// Redis's command flags (`readonly`, `write`, `denyoom`, `fast`, ...).
    pub flags: &'static [&'static str],
    /// Position of the first key (0: the command has no keys).
    pub first_key: i32,
    /// Position of the last key (-1: the last argument, -2: the one before it, ...).
    pub last_key: i32,
    /// Distance between keys (2 for MSET's key/value pairs).
    pub step: i32,
    /// Redis's ACL categories, reported by `COMMAND INFO`.
    pub categories: &'static [&'static str],
    /// The role a user needs, when users are configured; `None` for the commands Redis runs
    /// before authentication (its `no_auth` flag: `AUTH`, `HELLO`, `QUIT`, `RESET`; also
    /// `READONLY`/`READWRITE` here). Everything else, `PING` included, gets `-NOAUTH` until
    /// the connection authenticates, as in Redis. `CLIENT LIST` needs `admin` (checked in its
    /// handler: Redis puts it in `@admin`).
    pub role: Option<Role>,
}

const READ: Option<Role> = Some(Role::Read);
const WRITE: Option<Role> = Some(Role::Write);
const ADMIN: Option<Role> = Some(Role::Admin);

const R_FAST: &[&str] = &["readonly", "fast"];
const R: &[&str] = &["readonly"];
const W: &[&str] = &["write"];
const W_FAST: &[&str] = &["write", "fast"];
const W_OOM: &[&str] = &["write", "denyoom"];
const W_OOM_FAST: &[&str] = &["write", "denyoom", "fast"];
const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];
const NO_AUTH: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];

const STRING_READ: &[&str] = &["@read", "@string", "@fast"];
const STRING_WRITE: &[&str] = &["@write", "@string"];
const STRING_WRITE_FAST: &[&str] = &["@write", "@string", "@fast"];
const KEY_READ: &[&str] = &["@keyspace", "@read", "@fast"];
const KEY_WRITE: &[&str] = &["@keyspace", "@write", "@fast"];
const KEY_WRITE_SLOW: &[&str] = &["@keyspace", "@write", "@slow"];
const CONNECTION: &[&str] = &["@fast", "@connection"];
const DANGEROUS_WRITE: &[&str] = &["@keyspace", "@write", "@slow", "@dangerous"];

/// A command with one key at position 1.
const fn one_key(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    categories: &'static [&'static str],
    role: Option<Role>,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: 1,
        last_key: 1,
        step: 1,
        categories,
        role,
    }
}

/// A command whose every argument after the name is a key (or key/value pairs for `step` 2).
const fn all_keys(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    step: i32,
    categories: &'static [&'static str],
    role: Option<Role>,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: 1,
        last_key: -1,
        step,
        categories,
        role,
    }
}

/// A command without keys.
const fn no_keys(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    categories: &'static [&'static str],
    role: Option<Role>,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: 0,
        last_key: 0,
        step: 0,
        categories,
        role,
    }
}

/// Every command, sorted by name (a test checks it, lookups binary-search it).
pub static COMMANDS: &[Spec] = &[
    one_key("append", 3, W_OOM, STRING_WRITE_FAST, WRITE),
    no_keys("asking", 1, &["fast"], CONNECTION, READ),
    no_keys("auth", -2, NO_AUTH, CONNECTION, None),
    no_keys("client", -2, &["loading", "stale"], &["@slow"], READ),
    no_keys("cluster", -2, &["loading", "stale"], &["@slow"], READ),
    no_keys(
        "command",
        -1,
        &["loading", "stale"],
        &["@slow", "@connection"],
        READ,
    ),
    no_keys(
        "config",
        -2,
        &["admin", "noscript", "loading", "stale"],
        &["@admin", "@slow", "@dangerous"],
        ADMIN,
    ),
    no_keys("dbsize", 1, R_FAST, KEY_READ, READ),
    one_key("decr", 2, W_OOM_FAST, STRING_WRITE_FAST, WRITE),
    one_key("decrby", 3, W_OOM_FAST, STRING_WRITE_FAST, WRITE),
    all_keys("del", -2, W, 1, KEY_WRITE_SLOW, WRITE),
    no_keys(
        "discard",
        1,
        &["noscript", "loading", "stale", "fast"],
        &["@fast", "@transaction"],
        READ,
    ),
    no_keys("echo", 2, &["fast"], CONNECTION, READ),
    no_keys(
        "exec",
        1,
        &["noscript", "loading", "stale"],
        &["@slow", "@transaction"],
        READ,
    ),
    all_keys("exists", -2, R_FAST, 1, KEY_READ, READ),
    one_key("expire", -3, W_FAST, KEY_WRITE, WRITE),
    one_key("expireat", -3, W_FAST, KEY_WRITE, WRITE),
    one_key("expiretime", 2, R_FAST, KEY_READ, READ),
    no_keys("flushall", -1, W, DANGEROUS_WRITE, ADMIN),
    no_keys("flushdb", -1, W, DANGEROUS_WRITE, ADMIN),
    one_key("get", 2, R_FAST, STRING_READ, READ),
    one_key("getdel", 2, W_FAST, STRING_WRITE_FAST, WRITE),
    one_key("getex", -2, W_FAST, STRING_WRITE_FAST, WRITE),
    one_key("getrange", 4, R, &["@read", "@string", "@slow"], READ),
    one_key("getset", 3, W_OOM_FAST, STRING_WRITE_FAST, WRITE),
    no_keys("hello", -1, NO_AUTH, CONNECTION, None),
    one_key("incr", 2, W_OOM_FAST, STRING_WRITE_FAST, WRITE),
    one_key("incrby", 3, W_OOM_FAST, STRING_WRITE_FAST, WRITE),
    one_key("incrbyfloat", 3, W_OOM_FAST, STRING_WRITE_FAST, WRITE),
    no_keys(
        "info",
        -1,
        &["loading", "stale"],
        &["@slow", "@dangerous"],
        READ,
    ),
    // Stampede protection (`crate::resp::lease`): a lease grants the right to write, and a
    // LEASE.GET may wait.
    one_key("lease.get", -3, W, STRING_WRITE, WRITE),
    one_key("lease.set", -4, W_OOM, STRING_WRITE, WRITE),
    all_keys("mget", -2, R_FAST, 1, STRING_READ, READ),
    all_keys("mset", -3, W_OOM, 2, STRING_WRITE, WRITE),
    all_keys("msetnx", -3, W_OOM, 2, STRING_WRITE, WRITE),
    no_keys(
        "multi",
        1,
        &["noscript", "loading", "stale", "fast"],
        &["@fast", "@transaction"],
        READ,
    ),
    one_key("persist", 2, W_FAST, KEY_WRITE, WRITE),
    one_key("pexpire", -3, W_FAST, KEY_WRITE, WRITE),
    one_key("pexpireat", -3, W_FAST, KEY_WRITE, WRITE),
    one_key("pexpiretime", 2, R_FAST, KEY_READ, READ),
    no_keys("ping", -1, &["fast"], CONNECTION, READ),
    one_key("psetex", 4, W_OOM, STRING_WRITE, WRITE),
    one_key("pttl", 2, R_FAST, KEY_READ, READ),
    no_keys("quit", -1, NO_AUTH, CONNECTION, None),
    no_keys("randomkey", 1, R, &["@keyspace", "@read", "@slow"], READ),
    no_keys("readonly", 1, CONN, CONNECTION, None),
    no_keys("readwrite", 1, CONN, CONNECTION, None),
    no_keys("reset", 1, NO_AUTH, CONNECTION, None),
    no_keys("ringcache", -2, &["fast"], CONNECTION, READ),
    no_keys("scan", -2, R, &["@keyspace", "@read", "@slow"], READ),
    no_keys("select", 2, &["loading", "stale", "fast"], CONNECTION, READ),
    one_key("set", -3, W_OOM, STRING_WRITE, WRITE),
    one_key("setex", 4, W_OOM, STRING_WRITE, WRITE),
    one_key("setnx", 3, W_OOM_FAST, STRING_WRITE_FAST, WRITE),
    one_key("setrange", 4, W_OOM, STRING_WRITE, WRITE),
    one_key("strlen", 2, R_FAST, STRING_READ, READ),
    no_keys("time", 1, &["loading", "stale", "fast"], &["@fast"], READ),
    all_keys("touch", -2, R_FAST, 1, KEY_READ, READ),
    one_key("ttl", 2, R_FAST, KEY_READ, READ),
    one_key("type", 2, R_FAST, KEY_READ, READ),
    all_keys("unlink", -2, W_FAST, 1, KEY_WRITE, WRITE),
];

/// The longest command name in the table, in bytes.
const MAX_NAME: usize = 16;

/// A command name of at most [`MAX_NAME`] bytes, lower-cased and zero-padded into one
/// big-endian integer: integers compare as the names do (names hold no NUL byte), so a lookup
/// is a binary search over integers, not over strings.
const fn pack(name: &[u8]) -> u128 {
    let mut packed = 0u128;
    let mut i = 0;
    while i < MAX_NAME {
        packed <<= 8;
        if i < name.len() {
            packed |= name[i].to_ascii_lowercase() as u128;
        }
        i += 1;
    }
    packed
}

/// [`COMMANDS`]' names, packed ([`pack`]), in the same (sorted) order.
static PACKED: std::sync::LazyLock<Box<[u128]>> = std::sync::LazyLock::new(|| {
    COMMANDS
        .iter()
        .map(|spec| pack(spec.name.as_bytes()))
        .collect()
});

/// The command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    if name.len() > MAX_NAME {
        return None;
    }
    PACKED.binary_search(&pack(name)).ok().map(|i| &COMMANDS[i])
}

impl Spec {
    /// Its position in [`COMMANDS`] (table entries only: every `Spec` the server uses is one).
    pub fn index(&'static self) -> usize {
        let offset = std::ptr::from_ref(self).addr() - COMMANDS.as_ptr().addr();
        let index = offset / std::mem::size_of::<Spec>();
        debug_assert!(
            std::ptr::eq(&COMMANDS[index], self),
            "a Spec outside COMMANDS"
        );
        index
    }

    /// Whether `argc` arguments (counting the name) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = i64::try_from(argc).unwrap_or(i64::MAX);
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }

    /// Positions of the keys in a command of `argc` arguments (counting the name), as Redis
    /// computes them from first/last/step. Empty for commands without keys.
    pub fn key_positions(&self, argc: usize) -> impl Iterator<Item = usize> {
        let (first, step) = (self.first_key.max(0) as usize, self.step.max(1) as usize);
        let last = if self.first_key <= 0 {
            0
        } else if self.last_key < 0 {
            // -1 is the last argument.
            argc.saturating_sub(self.last_key.unsigned_abs() as usize)
        } else {
            (self.last_key as usize).min(argc.saturating_sub(1))
        };
        let range = if self.first_key <= 0 || first > last {
            0..0
        } else {
            first..last + 1
        };
        range.step_by(step)
    }

    /// Whether the command writes.
    pub fn writes(&self) -> bool {
        self.flags.contains(&"write")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_lower_case_and_names_fit() {
        for pair in COMMANDS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} before {}",
                pair[0].name,
                pair[1].name
            );
        }
        for spec in COMMANDS {
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
            assert!(spec.name.len() <= MAX_NAME, "{}", spec.name);
            assert!(spec.arity != 0, "{}", spec.name);
        }
    }

    #[test]
    fn lookup_ignores_case_and_refuses_strangers() {
        assert_eq!(lookup(b"GET").unwrap().name, "get");
        assert_eq!(lookup(b"IncrByFloat").unwrap().name, "incrbyfloat");
        assert!(lookup(b"hset").is_none());
        assert!(lookup(b"").is_none());
        assert!(lookup(&[b'a'; 100]).is_none());
        assert!(lookup(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn only_redis_no_auth_commands_run_before_authentication() {
        let open: Vec<&str> = COMMANDS
            .iter()
            .filter(|spec| spec.role.is_none())
            .map(|spec| spec.name)
            .collect();
        assert_eq!(
            open,
            ["auth", "hello", "quit", "readonly", "readwrite", "reset"]
        );
        for name in ["auth", "hello", "quit", "reset"] {
            assert!(lookup(name.as_bytes()).unwrap().flags.contains(&"no_auth"));
        }
    }

    #[test]
    fn arity_follows_redis_rules() {
        let get = lookup(b"get").unwrap();
        assert!(get.arity_ok(2) && !get.arity_ok(1) && !get.arity_ok(3));
        let set = lookup(b"set").unwrap();
        assert!(set.arity_ok(3) && set.arity_ok(7) && !set.arity_ok(2));
    }

    #[test]
    fn key_positions_match_redis() {
        let keys = |name: &[u8], argc| {
            lookup(name)
                .unwrap()
                .key_positions(argc)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(b"get", 2), [1]);
        assert_eq!(keys(b"set", 5), [1]);
        assert_eq!(keys(b"mget", 4), [1, 2, 3]);
        assert_eq!(keys(b"mset", 5), [1, 3]);
        assert_eq!(keys(b"del", 2), [1]);
        assert!(keys(b"ping", 2).is_empty());
        assert!(keys(b"scan", 4).is_empty());
        // Redis's MSET: first 1, last -1, step 2 (a malformed MSET is refused by its handler).
        assert_eq!(keys(b"mset", 4), [1, 3]);
    }
}
