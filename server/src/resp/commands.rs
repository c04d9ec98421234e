//! The Redis commands a RESP connection can run, with Redis's replies and error texts.
//!
//! Key commands go through the node's `Cache` service in-process, exactly as a gRPC request
//! would: the same routing (a key this node does not hold is forwarded one hop to its primary),
//! replication, limits, metrics and errors. Writes use the node's default consistency, reads
//! ONE.

use std::sync::Arc;

use bytes::Bytes;
use ringcache_proto::v1::{self, cache_server::Cache};
use tonic::Request;

use super::client::{Conn, Registry};
use super::cluster;
use super::introspect;
use super::keyspace;
use super::parse::Command;
use super::refusal::status_reply;
use super::reply::Reply;
use super::table;
use crate::api::{Arrival, CacheService};
use crate::node::Node;

/// What the connection does after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Send the reply, then close (QUIT).
    Close,
}

/// What [`Session::begin`] did with a command.
#[derive(Debug)]
pub enum Step {
    /// Answered: send this reply.
    Done(Reply, Flow),
    /// Admitted: [`Session::finish`] runs it.
    Later(&'static table::Spec),
}

/// One RESP connection's state.
#[derive(Debug)]
pub struct Session {
    pub(super) node: Arc<Node>,
    pub(super) cache: CacheService,
    /// RESP3 after `HELLO 3`.
    pub resp3: bool,
    /// `-MOVED` or forwarding, `READONLY` ([`cluster::Routing`]).
    routing: cluster::Routing,
    ring: Arc<cluster::RingWatch>,
    /// The consistency of reads and of writes (`RINGCACHE CONSISTENCY`).
    pub(super) read_level: i32,
    pub(super) write_level: i32,
    /// Inside a `MULTI` (refused: ringcache has no transactions) until `EXEC` or `DISCARD`:
    /// every command in between is refused, so none of a transaction runs.
    in_multi: bool,
    /// The connection: identity, name, its line in `CLIENT LIST`.
    pub(super) conn: Conn,
    /// When the batch of commands being run arrived ([`Self::arrived`]).
    pub(super) arrival: Arrival,
    /// The listener's connections and counters.
    pub(super) registry: Arc<Registry>,
}

pub(super) const ONE: i32 = v1::Consistency::One as i32;
/// The node's default write level.
pub(super) const DEFAULT: i32 = v1::Consistency::Unspecified as i32;

pub(super) fn wrong_arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

pub(super) fn not_an_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

pub(super) fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

pub(crate) fn integer(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

impl Session {
    /// A new connection's session.
    pub fn new(
        node: Arc<Node>,
        conn: Conn,
        registry: Arc<Registry>,
        ring: Arc<cluster::RingWatch>,
    ) -> Self {
        Self {
            cache: CacheService::new(node.clone()),
            arrival: Arrival::now(&node),
            node,
            resp3: false,
            conn,
            registry,
            routing: cluster::Routing::default(),
            ring,
            read_level: ONE,
            write_level: DEFAULT,
            in_multi: false,
        }
    }

    /// Notes that a batch of commands arrived (read once for all of them: the time commands
    /// answered at once count their latency from and run at, the connection's idle time).
    pub fn arrived(&mut self) {
        self.arrival = Arrival::now(&self.node);
        self.conn
            .info()
            .active(tokio::time::Instant::from_std(self.arrival.start));
    }

    /// Runs one command: checked against the table (known, arity, authentication, role;
    /// `gate.rs`), run, counted.
    pub async fn execute(&mut self, args: Command) -> (Reply, Flow) {
        match self.begin(&args) {
            Step::Done(reply, flow) => (reply, flow),
            Step::Later(spec) => self.finish(&args, spec).await,
        }
    }

    /// The part of [`Self::execute`] that needs no waiting: the gate, and the commands this
    /// node answers at once (a refusal; GET or SET of a key it holds that needs no other node).
    /// The connection loop calls it first and awaits [`Self::finish`] only for the rest: no
    /// future is built for most commands.
    pub fn begin(&mut self, args: &Command) -> Step {
        match self.admit(args) {
            Ok(spec) => {
                self.record_hot(args, spec);
                match self.run_now(args, spec) {
                    Some(reply) => {
                        self.count(Some(spec), &reply);
                        Step::Done(reply, Flow::Continue)
                    }
                    None => Step::Later(spec),
                }
            }
            Err((spec, reply)) => {
                self.count(spec, &reply);
                Step::Done(reply, Flow::Continue)
            }
        }
    }

    /// Counts an admitted command's keys for the hot-key summary (each key of a multi-key
    /// command; a write when the command writes). Commands queued in a transaction are not
    /// counted.
    #[inline]
    fn record_hot(&self, args: &Command, spec: &'static table::Spec) {
        let hot = self.node.hot_keys();
        if !hot.enabled() || spec.first_key <= 0 || self.in_multi {
            return;
        }
        let access = if spec.flags.contains(&"write") {
            crate::hotkeys::Access::Write
        } else {
            crate::hotkeys::Access::Read
        };
        hot.record_all(
            spec.key_positions(args.len())
                .filter_map(|position| args.get(position))
                .map(|key| &key[..]),
            access,
        );
    }

    /// Runs and counts a command [`Self::begin`] admitted but did not answer.
    pub async fn finish(&mut self, args: &Command, spec: &'static table::Spec) -> (Reply, Flow) {
        let (reply, flow) = self.dispatch(args, spec).await;
        self.count(Some(spec), &reply);
        (reply, flow)
    }

    /// GET and SET answered without awaiting when this node holds the key at the connection's
    /// level and needs no other node (see `CacheService::read_here` and `write_here`: the same
    /// checks, store calls and metrics as the general path); cluster routing refusals. `None`:
    /// run [`Self::dispatch`].
    fn run_now(&mut self, args: &Command, spec: &'static table::Spec) -> Option<Reply> {
        if self.in_multi {
            return None;
        }
        let get = match spec.name.as_bytes() {
            b"get" => true,
            b"set" => false,
            _ => return None,
        };
        if let cluster::Route::Refuse(reply) =
            self.routing.route(&self.node, &self.ring, spec, args)
        {
            return Some(reply);
        }
        match (get, &args[1..]) {
            (true, [key]) => {
                match self
                    .cache
                    .get_here(key, self.read_level, false, self.arrival, 0)?
                {
                    Ok(r) if r.found => Some(Reply::Bulk(r.value)),
                    Ok(_) => Some(Reply::Nil),
                    Err(status) => Some(status_reply(&status)),
                }
            }
            (false, [key, value, options @ ..]) => self.set_now(key, value, options),
            _ => None,
        }
    }

    async fn dispatch(&mut self, args: &Command, spec: &'static table::Spec) -> (Reply, Flow) {
        let Some(name) = args.first() else {
            // An empty line or `*0`: Redis sends nothing back; nor do we (the caller skips it).
            return (Reply::Nil, Flow::Continue);
        };
        // The table's lower-case name: no allocation per command (the gate refused unknown ones).
        let lower: &'static str = spec.name;
        let rest = &args[1..];
        if let Some(reply) = self.transaction(lower) {
            return (reply, Flow::Continue);
        }
        if let cluster::Route::Refuse(reply) =
            self.routing.route(&self.node, &self.ring, spec, args)
        {
            return (reply, Flow::Continue);
        }
        let reply = match lower {
            "quit" => return (Reply::OK, Flow::Close),
            "ping" => match rest {
                [] => Reply::Simple("PONG"),
                [message] => Reply::Bulk(message.clone()),
                _ => wrong_arity("ping"),
            },
            "echo" => match rest {
                [message] => Reply::Bulk(message.clone()),
                _ => wrong_arity("echo"),
            },
            "select" => match rest {
                [db] if integer(db) == Some(0) => Reply::OK,
                [db] if integer(db).is_some() => Reply::err("DB index is out of range"),
                [_] => not_an_integer(),
                _ => wrong_arity("select"),
            },
            "hello" => self.hello(rest),
            "cluster" => {
                if rest.first().is_some_and(|sub| {
                    [&b"slots"[..], b"shards", b"nodes"]
                        .iter()
                        .any(|map| sub.eq_ignore_ascii_case(map))
                }) {
                    // It asked for the map: a cluster client, which follows -MOVED.
                    self.routing.cluster_aware = true;
                }
                cluster::cluster(&self.node, &self.ring, rest)
            }
            "readonly" | "readwrite" | "asking" if rest.is_empty() => {
                self.routing.cluster_aware = true;
                match lower {
                    "readonly" => self.routing.readonly = true,
                    "readwrite" => self.routing.readonly = false,
                    _ => {}
                }
                Reply::OK
            }
            "ringcache" => self.ringcache(rest),
            "auth" => self.auth(rest),
            "reset" => self.reset(),
            "client" => self.client(rest, &self.registry.clone()),
            "command" => introspect::command(rest),
            "info" => introspect::info(&self.node, &self.registry, rest),
            "time" => introspect::time(),
            "config" => introspect::config(&self.node, rest),
            "dbsize" => keyspace::dbsize(&self.node, rest),
            "scan" => keyspace::scan(&self.node, rest),
            "randomkey" => keyspace::randomkey(&self.node, rest),
            "flushall" | "flushdb" => keyspace::flush(&self.node, lower, rest).await,
            "get" => match rest {
                [key] => self.get(key.clone()).await,
                _ => wrong_arity("get"),
            },
            "setnx" => match rest {
                [key, value] => {
                    match self
                        .store(key, value, None, v1::SetCondition::IfAbsent)
                        .await
                    {
                        Ok(stored) => Reply::Integer(i64::from(stored)),
                        Err(reply) => reply,
                    }
                }
                _ => wrong_arity("setnx"),
            },
            "setex" | "psetex" => match rest {
                [key, ttl, value] => {
                    let unit = if lower == "setex" { 1000 } else { 1 };
                    match integer(ttl) {
                        Some(n) if n > 0 => match self
                            .store(key, value, Some(n as u64 * unit), v1::SetCondition::Always)
                            .await
                        {
                            Ok(_) => Reply::OK,
                            Err(reply) => reply,
                        },
                        Some(_) => Reply::err(format!("invalid expire time in '{lower}' command")),
                        None => not_an_integer(),
                    }
                }
                _ => wrong_arity(lower),
            },
            "getset" => match rest {
                [key, value] => self.set(key, value, &[Bytes::from_static(b"GET")]).await,
                _ => wrong_arity("getset"),
            },
            "del" | "unlink" if !rest.is_empty() => self.delete(rest).await,
            "exists" if !rest.is_empty() => self.exists(rest).await,
            "mget" if !rest.is_empty() => self.mget(rest).await,
            "mset" if !rest.is_empty() && rest.len().is_multiple_of(2) => self.mset(rest).await,
            "incr" | "decr" => match rest {
                [key] => self.incr(key, if lower == "incr" { 1 } else { -1 }).await,
                _ => wrong_arity(lower),
            },
            "incrby" | "decrby" => match rest {
                [key, delta] => match integer(delta) {
                    Some(delta) if lower == "incrby" => self.incr(key, delta).await,
                    Some(delta) => match delta.checked_neg() {
                        Some(delta) => self.incr(key, delta).await,
                        None => Reply::err("decrement would overflow"),
                    },
                    None => not_an_integer(),
                },
                _ => wrong_arity(lower),
            },
            "ttl" | "pttl" => match rest {
                [key] => self.ttl(key, lower == "ttl").await,
                _ => wrong_arity(lower),
            },
            "persist" => match rest {
                [key] => {
                    let request = v1::PersistRequest {
                        key: key.clone(),
                        consistency: self.write_level,
                    };
                    match self.cache.persist(Request::new(request)).await {
                        Ok(r) => Reply::Integer(i64::from(r.into_inner().updated)),
                        Err(status) => status_reply(&status),
                    }
                }
                _ => wrong_arity("persist"),
            },
            "lease.get" => self.lease_get(rest).await,
            "lease.set" => self.lease_set(rest).await,
            "del" | "unlink" | "exists" | "mget" | "mset" => wrong_arity(lower),
            name if super::strings::handles(name) => self.string_command(name, rest).await,
            _ => unknown_command(name, rest),
        };
        (reply, Flow::Continue)
    }

    /// `MULTI`/`EXEC`/`DISCARD`: there are no transactions, and a client that sends `MULTI`,
    /// commands, `EXEC` in one go must not see half of them applied. So `MULTI` is refused and
    /// every command until `EXEC` (`-EXECABORT`) or `DISCARD` is refused too; `None` lets a
    /// command run.
    fn transaction(&mut self, lower: &str) -> Option<Reply> {
        match (lower, self.in_multi) {
            ("multi", false) => {
                self.in_multi = true;
                Some(Reply::err(
                    "MULTI is not supported: ringcache has no transactions; commands until EXEC \
                     or DISCARD are refused",
                ))
            }
            ("multi", true) => Some(Reply::err("MULTI calls can not be nested")),
            ("exec", true) => {
                self.in_multi = false;
                Some(Reply::Error(
                    "EXECABORT Transaction discarded because of previous errors.".to_owned(),
                ))
            }
            ("discard", true) => {
                self.in_multi = false;
                Some(Reply::OK)
            }
            ("exec", false) => Some(Reply::err("EXEC without MULTI")),
            ("discard", false) => Some(Reply::err("DISCARD without MULTI")),
            ("quit" | "reset", _) => {
                self.in_multi = false;
                None
            }
            (_, true) => Some(Reply::err(
                "command refused inside MULTI: ringcache has no transactions (send DISCARD)",
            )),
            _ => None,
        }
    }

    /// Forgets `READONLY`, the routing mode and the consistency levels (`RESET`).
    pub(super) fn reset_cluster_state(&mut self) {
        self.in_multi = false;
        self.routing = cluster::Routing::default();
        self.read_level = ONE;
        self.write_level = DEFAULT;
    }

    /// `RINGCACHE ROUTING MOVED|FORWARD`, `RINGCACHE CONSISTENCY [READS|WRITES] level`: the
    /// ringcache-specific settings of this connection.
    fn ringcache(&mut self, rest: &[Bytes]) -> Reply {
        let upper: Vec<String> = rest
            .iter()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .collect();
        let words: Vec<&str> = upper.iter().map(String::as_str).collect();
        let level = |word: &str| match word {
            "ONE" => Some(v1::Consistency::One as i32),
            "QUORUM" => Some(v1::Consistency::Quorum as i32),
            "ALL" => Some(v1::Consistency::All as i32),
            "DEFAULT" => Some(DEFAULT),
            _ => None,
        };
        let level_name = |level: i32| match v1::Consistency::try_from(level) {
            Ok(v1::Consistency::One) => "ONE",
            Ok(v1::Consistency::Quorum) => "QUORUM",
            Ok(v1::Consistency::All) => "ALL",
            _ => "DEFAULT",
        };
        match words.as_slice() {
            ["ROUTING"] => Reply::Simple(if self.routing.cluster_aware { "MOVED" } else { "FORWARD" }),
            ["ROUTING", "MOVED"] => {
                self.routing.cluster_aware = true;
                Reply::OK
            }
            ["ROUTING", "FORWARD"] => {
                self.routing = cluster::Routing::default();
                Reply::OK
            }
            ["CONSISTENCY"] => Reply::Array(vec![
                Reply::Bulk(Bytes::from_static(b"reads")),
                Reply::Bulk(Bytes::from_static(level_name(self.read_level).as_bytes())),
                Reply::Bulk(Bytes::from_static(b"writes")),
                Reply::Bulk(Bytes::from_static(level_name(self.write_level).as_bytes())),
            ]),
            ["CONSISTENCY", which @ ("READS" | "WRITES"), word] | ["CONSISTENCY", word @ which]
                if level(word).is_some() =>
            {
                let level = level(word).unwrap_or(DEFAULT);
                // Reads at DEFAULT are ONE, as for every RESP read.
                let read = if level == DEFAULT { ONE } else { level };
                match *which {
                    "READS" => self.read_level = read,
                    "WRITES" => self.write_level = level,
                    _ => {
                        self.read_level = read;
                        self.write_level = level;
                    }
                }
                Reply::OK
            }
            ["HELP"] => Reply::Array(
                [
                    "RINGCACHE <subcommand> [<arg> ...]. Subcommands are:",
                    "ROUTING [MOVED|FORWARD]",
                    "    How this connection's requests for keys another node owns are served:",
                    "    MOVED answers -MOVED (cluster clients), FORWARD serves them through this node.",
                    "CONSISTENCY [READS|WRITES] [ONE|QUORUM|ALL|DEFAULT]",
                    "    The consistency level of this connection's reads and writes",
                    "    (default: reads ONE, writes the node's default level).",
                ]
                .iter()
                .map(|line| Reply::Simple(line))
                .collect(),
            ),
            [] => wrong_arity("ringcache"),
            _ => Reply::err(format!(
                "unknown subcommand or wrong arguments '{}'. Try RINGCACHE HELP.",
                upper.join(" ")
            )),
        }
    }

    async fn get(&self, key: Bytes) -> Reply {
        let request = v1::GetRequest {
            key,
            consistency: self.read_level,
            tracking_id: 0,
        };
        match self.cache.get(Request::new(request)).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.found {
                    Reply::Bulk(r.value)
                } else {
                    Reply::Nil
                }
            }
            Err(status) => status_reply(&status),
        }
    }

    /// Stores `value`; `Ok(stored)`.
    async fn store(
        &self,
        key: &Bytes,
        value: &Bytes,
        ttl_ms: Option<u64>,
        condition: v1::SetCondition,
    ) -> Result<bool, Reply> {
        let request = v1::SetRequest {
            key: key.clone(),
            value: value.clone(),
            ttl_ms,
            condition: condition as i32,
            return_previous: false,
            consistency: self.write_level,
            ..v1::SetRequest::default()
        };
        match self.cache.set(Request::new(request)).await {
            Ok(r) => Ok(r.into_inner().stored),
            Err(status) => Err(status_reply(&status)),
        }
    }

    pub(super) async fn delete(&self, keys: &[Bytes]) -> Reply {
        let request = v1::MDeleteRequest {
            keys: keys.to_vec(),
            consistency: self.write_level,
        };
        match self.cache.m_delete(Request::new(request)).await {
            Ok(r) => Reply::Integer(i64::try_from(r.into_inner().deleted).unwrap_or(i64::MAX)),
            Err(status) => status_reply(&status),
        }
    }

    pub(super) async fn read_many(&self, keys: &[Bytes]) -> Result<Vec<v1::GetResponse>, Reply> {
        let request = v1::MGetRequest {
            keys: keys.to_vec(),
            consistency: self.read_level,
            tracking_id: 0,
        };
        match self.cache.m_get(Request::new(request)).await {
            Ok(r) => Ok(r.into_inner().results),
            Err(status) => Err(status_reply(&status)),
        }
    }

    pub(super) async fn exists(&self, keys: &[Bytes]) -> Reply {
        match self.read_many(keys).await {
            Ok(results) => Reply::Integer(results.iter().filter(|r| r.found).count() as i64),
            Err(reply) => reply,
        }
    }

    async fn mget(&self, keys: &[Bytes]) -> Reply {
        match self.read_many(keys).await {
            Ok(results) => Reply::Array(
                results
                    .into_iter()
                    .map(|r| {
                        if r.found {
                            Reply::Bulk(r.value)
                        } else {
                            Reply::Nil
                        }
                    })
                    .collect(),
            ),
            Err(reply) => reply,
        }
    }

    /// The `MSet` request of MSET / MSETNX key-value `pairs`.
    pub(super) fn mset_request(&self, pairs: &[Bytes], if_absent: bool) -> v1::MSetRequest {
        v1::MSetRequest {
            entries: pairs
                .chunks_exact(2)
                .map(|pair| v1::KeyValue {
                    key: pair[0].clone(),
                    value: pair[1].clone(),
                })
                .collect(),
            ttl_ms: None,
            consistency: self.write_level,
            if_absent,
        }
    }

    async fn mset(&self, pairs: &[Bytes]) -> Reply {
        let request = self.mset_request(pairs, false);
        match self.cache.m_set(Request::new(request)).await {
            Ok(_) => Reply::OK,
            Err(status) => status_reply(&status),
        }
    }

    async fn incr(&self, key: &Bytes, delta: i64) -> Reply {
        let request = v1::IncrRequest {
            key: key.clone(),
            delta,
            ttl_ms: None,
            consistency: self.write_level,
        };
        match self.cache.incr(Request::new(request)).await {
            Ok(r) => Reply::Integer(r.into_inner().value),
            Err(status) => status_reply(&status),
        }
    }

    async fn ttl(&self, key: &Bytes, seconds: bool) -> Reply {
        let request = v1::TtlRequest {
            key: key.clone(),
            consistency: self.read_level,
        };
        match self.cache.ttl(Request::new(request)).await {
            Ok(r) => {
                let r = r.into_inner();
                match (r.found, r.ttl_ms) {
                    (false, _) => Reply::Integer(-2),
                    (true, None) => Reply::Integer(-1),
                    (true, Some(ms)) if seconds => Reply::Integer(((ms + 500) / 1000) as i64),
                    (true, Some(ms)) => Reply::Integer(ms as i64),
                }
            }
            Err(status) => status_reply(&status),
        }
    }
}

/// Redis's unknown-command error: `ERR unknown command 'x', with args beginning with: 'a' `.
pub(super) fn unknown_command(name: &Bytes, rest: &[Bytes]) -> Reply {
    let mut text = format!(
        "unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&name[..name.len().min(128)])
    );
    for arg in rest.iter().take(8) {
        text.push_str(&format!(
            "'{}' ",
            String::from_utf8_lossy(&arg[..arg.len().min(128)])
        ));
    }
    Reply::err(text)
}
