//! The Redis commands a RESP connection can run, with Redis's replies and error texts.
//!
//! Key commands go through the node's `Cache` service in-process, exactly as a gRPC request
//! would: the same routing (a key this node does not hold is forwarded one hop to its primary),
//! replication, limits, metrics and errors. Writes use the node's default consistency, reads
//! ONE.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ringcache_proto::v1::{self, cache_server::Cache};
use tonic::{Code, Request, Status};

use super::keyspace;
use super::parse::Command;
use super::reply::Reply;
use crate::api::CacheService;
use crate::node::Node;

/// Connection ids, as `CLIENT ID` reports them.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What the connection does after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Send the reply, then close (QUIT).
    Close,
}

/// One RESP connection's state.
#[derive(Debug)]
pub struct Session {
    node: Arc<Node>,
    cache: CacheService,
    /// RESP3 after `HELLO 3`.
    pub resp3: bool,
    name: Option<Bytes>,
    id: u64,
}

const ONE: i32 = v1::Consistency::One as i32;
/// The node's default write level.
const DEFAULT: i32 = v1::Consistency::Unspecified as i32;

fn wrong_arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

fn not_an_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

/// Redis's reply to a failed request.
fn status_reply(status: &Status) -> Reply {
    let message = status.message();
    match status.code() {
        Code::InvalidArgument if message.contains("integer") => not_an_integer(),
        Code::OutOfRange => Reply::err("increment or decrement would overflow"),
        Code::ResourceExhausted => {
            Reply::Error("OOM command not allowed when used memory > 'maxmemory'.".to_owned())
        }
        _ => Reply::err(message),
    }
}

fn integer(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

impl Session {
    /// A new connection's session.
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            cache: CacheService::new(node.clone()),
            node,
            resp3: false,
            name: None,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Runs one command.
    pub async fn execute(&mut self, args: Command) -> (Reply, Flow) {
        let Some(name) = args.first() else {
            // An empty line or `*0`: Redis sends nothing back; nor do we (the caller skips it).
            return (Reply::Nil, Flow::Continue);
        };
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        let rest = &args[1..];
        let reply = match lower.as_str() {
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
            "auth" => Reply::err(
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            ),
            "client" => self.client(rest),
            "command" => match rest.first().map(|a| a.to_ascii_lowercase()) {
                None => Reply::Array(Vec::new()),
                Some(sub) if sub == b"count" => Reply::Integer(0),
                Some(sub) if sub == b"docs" || sub == b"info" => Reply::Array(Vec::new()),
                Some(_) => syntax_error(),
            },
            "dbsize" => keyspace::dbsize(&self.node, rest),
            "scan" => keyspace::scan(&self.node, rest),
            "randomkey" => keyspace::randomkey(&self.node, rest),
            "flushall" | "flushdb" => keyspace::flush(&self.node, &lower, rest).await,
            "get" => match rest {
                [key] => self.get(key.clone()).await,
                _ => wrong_arity("get"),
            },
            "set" => match rest {
                [key, value, options @ ..] => self.set(key, value, options).await,
                _ => wrong_arity("set"),
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
                _ => wrong_arity(&lower),
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
                _ => wrong_arity(&lower),
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
                _ => wrong_arity(&lower),
            },
            "ttl" | "pttl" => match rest {
                [key] => self.ttl(key, lower == "ttl").await,
                _ => wrong_arity(&lower),
            },
            "expire" | "pexpire" => match rest {
                [key, ttl] => match integer(ttl) {
                    Some(n) => {
                        let unit = if lower == "expire" { 1000 } else { 1 };
                        self.expire(key, n.saturating_mul(unit)).await
                    }
                    None => not_an_integer(),
                },
                [_, _, _, ..] => syntax_error(),
                _ => wrong_arity(&lower),
            },
            "persist" => match rest {
                [key] => {
                    let request = v1::PersistRequest {
                        key: key.clone(),
                        consistency: DEFAULT,
                    };
                    match self.cache.persist(Request::new(request)).await {
                        Ok(r) => Reply::Integer(i64::from(r.into_inner().updated)),
                        Err(status) => status_reply(&status),
                    }
                }
                _ => wrong_arity("persist"),
            },
            "del" | "unlink" | "exists" | "mget" | "mset" => wrong_arity(&lower),
            _ => unknown_command(name, rest),
        };
        (reply, Flow::Continue)
    }

    fn hello(&mut self, rest: &[Bytes]) -> Reply {
        if let Some(version) = rest.first() {
            match integer(version) {
                Some(2) => self.resp3 = false,
                Some(3) => self.resp3 = true,
                Some(_) => {
                    return Reply::Error("NOPROTO unsupported protocol version".to_owned());
                }
                None => return Reply::err("Protocol version is not an integer or out of range"),
            }
            let mut options = rest[1..].iter();
            while let Some(option) = options.next() {
                match option.to_ascii_lowercase().as_slice() {
                    b"setname" => match options.next() {
                        Some(name) => self.name = Some(name.clone()),
                        None => return syntax_error(),
                    },
                    b"auth" => {
                        return Reply::err(
                            "AUTH <password> called without any password configured for the \
                             default user. Are you sure your configuration is correct?",
                        );
                    }
                    _ => return syntax_error(),
                }
            }
        }
        let text = |s: &str| Reply::bulk(Bytes::copy_from_slice(s.as_bytes()));
        Reply::Map(vec![
            (text("server"), text("ringcache")),
            (text("version"), text(env!("CARGO_PKG_VERSION"))),
            (
                text("proto"),
                Reply::Integer(if self.resp3 { 3 } else { 2 }),
            ),
            (
                text("id"),
                Reply::Integer(i64::try_from(self.id).unwrap_or(i64::MAX)),
            ),
            (text("mode"), text("standalone")),
            (text("role"), text("master")),
            (text("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn client(&mut self, rest: &[Bytes]) -> Reply {
        let Some(sub) = rest.first() else {
            return wrong_arity("client");
        };
        match (sub.to_ascii_lowercase().as_slice(), &rest[1..]) {
            (b"setname", [name]) => {
                if name.iter().any(|b| *b <= b' ' || *b > b'~') {
                    return Reply::err(
                        "Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = (!name.is_empty()).then(|| name.clone());
                Reply::OK
            }
            (b"getname", []) => self.name.clone().map_or(Reply::Nil, Reply::Bulk),
            (b"id", []) => Reply::Integer(i64::try_from(self.id).unwrap_or(i64::MAX)),
            (b"setinfo", [_, _]) => Reply::OK,
            (b"setname" | b"getname" | b"id" | b"setinfo", _) => wrong_arity(&format!(
                "client|{}",
                String::from_utf8_lossy(sub).to_lowercase()
            )),
            _ => Reply::err(format!(
                "unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(sub)
            )),
        }
    }

    async fn get(&self, key: Bytes) -> Reply {
        let request = v1::GetRequest {
            key,
            consistency: ONE,
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
            consistency: DEFAULT,
        };
        match self.cache.set(Request::new(request)).await {
            Ok(r) => Ok(r.into_inner().stored),
            Err(status) => Err(status_reply(&status)),
        }
    }

    /// `SET key value [NX | XX] [GET] [EX seconds | PX milliseconds]`.
    async fn set(&self, key: &Bytes, value: &Bytes, options: &[Bytes]) -> Reply {
        let mut condition = v1::SetCondition::Always;
        let mut get = false;
        let mut ttl_ms = None;
        let mut i = 0;
        while i < options.len() {
            let option = options[i].to_ascii_lowercase();
            match option.as_slice() {
                b"nx" if condition == v1::SetCondition::Always => {
                    condition = v1::SetCondition::IfAbsent;
                }
                b"xx" if condition == v1::SetCondition::Always => {
                    condition = v1::SetCondition::IfPresent;
                }
                b"get" => get = true,
                b"ex" | b"px" if ttl_ms.is_none() => {
                    let Some(amount) = options.get(i + 1) else {
                        return syntax_error();
                    };
                    let Some(n) = integer(amount) else {
                        return not_an_integer();
                    };
                    if n <= 0 {
                        return Reply::err("invalid expire time in 'set' command");
                    }
                    let unit = if option == b"ex" { 1000 } else { 1 };
                    ttl_ms = Some((n as u64).saturating_mul(unit));
                    i += 1;
                }
                _ => return syntax_error(),
            }
            i += 1;
        }
        let request = v1::SetRequest {
            key: key.clone(),
            value: value.clone(),
            ttl_ms,
            condition: condition as i32,
            return_previous: get,
            consistency: DEFAULT,
        };
        match self.cache.set(Request::new(request)).await {
            Ok(r) => {
                let r = r.into_inner();
                match (get, r.stored) {
                    (true, _) => r.previous.map_or(Reply::Nil, Reply::Bulk),
                    (false, true) => Reply::OK,
                    (false, false) => Reply::Nil,
                }
            }
            Err(status) => status_reply(&status),
        }
    }

    async fn delete(&self, keys: &[Bytes]) -> Reply {
        let request = v1::MDeleteRequest {
            keys: keys.to_vec(),
            consistency: DEFAULT,
        };
        match self.cache.m_delete(Request::new(request)).await {
            Ok(r) => Reply::Integer(i64::try_from(r.into_inner().deleted).unwrap_or(i64::MAX)),
            Err(status) => status_reply(&status),
        }
    }

    async fn read_many(&self, keys: &[Bytes]) -> Result<Vec<v1::GetResponse>, Reply> {
        let request = v1::MGetRequest {
            keys: keys.to_vec(),
            consistency: ONE,
        };
        match self.cache.m_get(Request::new(request)).await {
            Ok(r) => Ok(r.into_inner().results),
            Err(status) => Err(status_reply(&status)),
        }
    }

    async fn exists(&self, keys: &[Bytes]) -> Reply {
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

    async fn mset(&self, pairs: &[Bytes]) -> Reply {
        let request = v1::MSetRequest {
            entries: pairs
                .chunks_exact(2)
                .map(|pair| v1::KeyValue {
                    key: pair[0].clone(),
                    value: pair[1].clone(),
                })
                .collect(),
            ttl_ms: None,
            consistency: DEFAULT,
        };
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
            consistency: DEFAULT,
        };
        match self.cache.incr(Request::new(request)).await {
            Ok(r) => Reply::Integer(r.into_inner().value),
            Err(status) => status_reply(&status),
        }
    }

    async fn ttl(&self, key: &Bytes, seconds: bool) -> Reply {
        let request = v1::TtlRequest {
            key: key.clone(),
            consistency: ONE,
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

    /// `EXPIRE`/`PEXPIRE`: a TTL of 0 or less deletes the key, as Redis does.
    async fn expire(&self, key: &Bytes, ttl_ms: i64) -> Reply {
        if ttl_ms <= 0 {
            return self.delete(std::slice::from_ref(key)).await;
        }
        let request = v1::ExpireRequest {
            key: key.clone(),
            ttl_ms: ttl_ms as u64,
            consistency: DEFAULT,
        };
        match self.cache.expire(Request::new(request)).await {
            Ok(r) => Reply::Integer(i64::from(r.into_inner().updated)),
            Err(status) => status_reply(&status),
        }
    }
}

/// Redis's unknown-command error: `ERR unknown command 'x', with args beginning with: 'a' `.
fn unknown_command(name: &Bytes, rest: &[Bytes]) -> Reply {
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
