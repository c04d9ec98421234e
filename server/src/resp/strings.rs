//! The string and expiry commands beyond the basics: SET with all its options, GETDEL, GETEX,
//! MSETNX, APPEND, SETRANGE, GETRANGE, STRLEN, INCRBYFLOAT, EXPIRE / PEXPIRE / EXPIREAT /
//! PEXPIREAT with NX / XX / GT / LT, EXPIRETIME / PEXPIRETIME, TYPE and TOUCH.
//!
//! Each command that changes a key from what it holds is one `Cache` call whose store operation
//! runs in one step on the key's coordinator (`Update`, `Delete` with `return_previous`,
//! `Expire` with a condition, `MSet` with `if_absent`), never a read here followed by a write:
//! the same forwarding, versions, replication and metrics as every other write. Replies and
//! error texts are Redis 7's (`src/t_string.c`, `src/expire.c`).

use bytes::Bytes;
use ringcache_proto::v1::{self, cache_server::Cache, update_request::Op as UpdateOp};
use tonic::{Request, Response};

use super::commands::{Session, integer, not_an_integer, syntax_error, wrong_arity};
use super::refusal::{Refused, status_reply};
use super::reply::Reply;

/// The commands this module answers (lower case).
const COMMANDS: &[&str] = &[
    "set",
    "getdel",
    "getex",
    "msetnx",
    "touch",
    "append",
    "strlen",
    "getrange",
    "setrange",
    "incrbyfloat",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "expiretime",
    "pexpiretime",
    "type",
];

/// Whether `name` (lower case) is one of this module's commands.
pub(super) fn handles(name: &str) -> bool {
    COMMANDS.contains(&name)
}

fn invalid_expire(command: &str) -> Reply {
    Reply::err(format!("invalid expire time in '{command}' command"))
}

/// A TTL argument in milliseconds, from `arg` in `unit` ms; `Err` with Redis's reply when it is
/// not an integer, not positive, or overflows once converted (`now_ms` added for relative ones).
fn expire_arg(
    arg: &[u8],
    unit: i64,
    relative_to: Option<u64>,
    command: &str,
) -> Result<u64, Reply> {
    let n = integer(arg).ok_or_else(not_an_integer)?;
    if n <= 0 {
        return Err(invalid_expire(command));
    }
    let ms = n.checked_mul(unit).ok_or_else(|| invalid_expire(command))?;
    if let Some(now) = relative_to {
        i64::try_from(now)
            .ok()
            .and_then(|now| now.checked_add(ms))
            .ok_or_else(|| invalid_expire(command))?;
    }
    Ok(ms as u64)
}

/// SET and GETEX's expiry options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// EX / PX: milliseconds from now.
    In(u64),
    /// EXAT / PXAT: unix milliseconds.
    At(u64),
    /// KEEPTTL (SET) or PERSIST (GETEX).
    Keep,
}

/// The expiry option of a SET or GETEX as written: its lower-case name and argument.
#[derive(Debug, Default)]
struct ExpiryOption {
    name: Vec<u8>,
    arg: Option<Bytes>,
}

impl ExpiryOption {
    /// Takes `option` (lower case) at `options[*i]` if it is an expiry option (`keep` is
    /// KEEPTTL or PERSIST), moving `*i` past its argument. `Some(false)`: a syntax error
    /// (another expiry option was given before, as Redis refuses `EX 1 PX 2`, or the argument
    /// is missing); `None`: not an expiry option.
    fn take(
        this: &mut Option<Self>,
        option: &[u8],
        keep: &[u8],
        options: &[Bytes],
        i: &mut usize,
    ) -> Option<bool> {
        let takes_arg = match option {
            b"ex" | b"px" | b"exat" | b"pxat" => true,
            _ if option == keep => false,
            _ => return None,
        };
        if this.as_ref().is_some_and(|given| given.name != option) {
            return Some(false);
        }
        let arg = if takes_arg {
            let Some(arg) = options.get(*i + 1) else {
                return Some(false);
            };
            *i += 1;
            Some(arg.clone())
        } else {
            None
        };
        *this = Some(Self {
            name: option.to_vec(),
            arg,
        });
        Some(true)
    }

    /// The expiry, once every option was read (Redis checks the number last).
    fn expiry(&self, now_ms: u64, command: &str) -> Result<Expiry, Reply> {
        let Some(arg) = &self.arg else {
            return Ok(Expiry::Keep);
        };
        let (unit, absolute) = match self.name.as_slice() {
            b"ex" => (1000, false),
            b"px" => (1, false),
            b"exat" => (1000, true),
            _ => (1, true),
        };
        let relative_to = (!absolute).then_some(now_ms);
        let ms = expire_arg(arg, unit, relative_to, command)?;
        Ok(if absolute {
            Expiry::At(ms)
        } else {
            Expiry::In(ms)
        })
    }
}

impl Session {
    /// Runs one of [`COMMANDS`]; `name` is lower case.
    pub(super) async fn string_command(&mut self, name: &str, rest: &[Bytes]) -> Reply {
        match (name, rest) {
            ("set", [key, value, options @ ..]) => self.set(key, value, options).await,
            ("getdel", [key]) => self.get_del(key).await,
            ("getex", [key, options @ ..]) => self.get_ex(key, options).await,
            ("msetnx", pairs) if !pairs.is_empty() && pairs.len().is_multiple_of(2) => {
                self.mset_nx(pairs).await
            }
            ("touch", keys) if !keys.is_empty() => self.exists(keys).await,
            ("append", [key, value]) => self
                .update(
                    key,
                    UpdateOp::Append(v1::AppendOp {
                        value: value.clone(),
                    }),
                )
                .await
                .map_or_else(|refused| refused.too_large(), |r| length(r.length)),
            ("strlen", [key]) => match self.read(key).await {
                Ok(value) => length(value.map_or(0, |v| v.len() as u64)),
                Err(reply) => reply,
            },
            ("getrange", [key, start, end]) => self.get_range(key, start, end).await,
            ("setrange", [key, offset, value]) => self.set_range(key, offset, value).await,
            ("incrbyfloat", [key, delta]) => self.incr_by_float(key, delta).await,
            ("expire" | "pexpire" | "expireat" | "pexpireat", [key, when, options @ ..]) => {
                self.expire(name, key, when, options).await
            }
            ("expiretime" | "pexpiretime", [key]) => {
                self.expire_time(key, name == "expiretime").await
            }
            ("type", [key]) => match self.ttl_of(key).await {
                Ok(r) if r.found => Reply::Simple("string"),
                Ok(_) => Reply::Simple("none"),
                Err(refused) => refused.reply(),
            },
            _ => wrong_arity(name),
        }
    }

    async fn read(&self, key: &Bytes) -> Result<Option<Bytes>, Reply> {
        let request = v1::GetRequest {
            key: key.clone(),
            consistency: self.read_level,
            tracking_id: 0,
        };
        match self.cache.get(Request::new(request)).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok(r.found.then_some(r.value))
            }
            Err(status) => Err(status_reply(&status)),
        }
    }

    async fn ttl_of(&self, key: &Bytes) -> Result<v1::TtlResponse, Refused> {
        let request = v1::TtlRequest {
            key: key.clone(),
            consistency: self.read_level,
        };
        Ok(self.cache.ttl(Request::new(request)).await?.into_inner())
    }

    async fn update(&self, key: &Bytes, op: UpdateOp) -> Result<v1::UpdateResponse, Refused> {
        let request = v1::UpdateRequest {
            key: key.clone(),
            consistency: self.write_level,
            op: Some(op),
        };
        Ok(self.cache.update(Request::new(request)).await?.into_inner())
    }

    /// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT t | PXAT t | KEEPTTL]`, with Redis's
    /// rules: NX and XX exclude each other, as do the expiry options (a repeated option is
    /// allowed, the last wins); anything else is a syntax error. An EXAT/PXAT in the past stores
    /// nothing and deletes the key (the value would be expired at once) and answers OK.
    pub(super) async fn set(&self, key: &Bytes, value: &Bytes, options: &[Bytes]) -> Reply {
        let (request, get) = match self.set_request(key, value, options) {
            Ok(parsed) => parsed,
            Err(reply) => return reply,
        };
        set_reply(
            get,
            self.cache
                .set(Request::new(request))
                .await
                .map(Response::into_inner)
                .map_err(Refused::from),
        )
    }

    /// SET at once when this node holds the key and needs no other node (the fast path of
    /// `serve_stream`); `None`: take the general path.
    pub(super) fn set_now(&self, key: &Bytes, value: &Bytes, options: &[Bytes]) -> Option<Reply> {
        let (request, get) = match self.set_request(key, value, options) {
            Ok(parsed) => parsed,
            Err(reply) => return Some(reply),
        };
        let result = self.cache.set_here(&request, self.arrival)?;
        Some(set_reply(get, result.map_err(Refused::from)))
    }

    /// The Set request of `SET key value [options]`, and whether it asked for the old value
    /// (`GET`); else the syntax or range error.
    fn set_request(
        &self,
        key: &Bytes,
        value: &Bytes,
        options: &[Bytes],
    ) -> Result<(v1::SetRequest, bool), Reply> {
        let mut condition = v1::SetCondition::Always;
        let mut get = false;
        let mut given = None;
        let mut i = 0;
        while i < options.len() {
            let option = options[i].to_ascii_lowercase();
            match option.as_slice() {
                b"nx" if condition != v1::SetCondition::IfPresent => {
                    condition = v1::SetCondition::IfAbsent;
                }
                b"xx" if condition != v1::SetCondition::IfAbsent => {
                    condition = v1::SetCondition::IfPresent;
                }
                b"get" => get = true,
                other => {
                    if ExpiryOption::take(&mut given, other, b"keepttl", options, &mut i)
                        != Some(true)
                    {
                        return Err(syntax_error());
                    }
                }
            }
            i += 1;
        }
        let expiry = match given.map(|g| g.expiry(self.node.now_ms(), "set")) {
            None => None,
            Some(Ok(expiry)) => Some(expiry),
            Some(Err(reply)) => return Err(reply),
        };
        let (ttl_ms, expires_at_ms, keep_ttl) = match expiry {
            None => (None, None, false),
            Some(Expiry::In(ms)) => (Some(ms), None, false),
            Some(Expiry::At(at)) => (None, Some(at), false),
            Some(Expiry::Keep) => (None, None, true),
        };
        let request = v1::SetRequest {
            key: key.clone(),
            value: value.clone(),
            ttl_ms,
            condition: condition as i32,
            return_previous: get,
            consistency: self.write_level,
            keep_ttl,
            expires_at_ms,
            lease_token: 0,
        };
        Ok((request, get))
    }

    async fn get_del(&self, key: &Bytes) -> Reply {
        let request = v1::DeleteRequest {
            key: key.clone(),
            consistency: self.write_level,
            return_previous: true,
        };
        match self.cache.delete(Request::new(request)).await {
            Ok(r) => r.into_inner().previous.map_or(Reply::Nil, Reply::Bulk),
            Err(status) => status_reply(&status),
        }
    }

    /// `GETEX key [EX s | PX ms | EXAT t | PXAT t | PERSIST]`. Without an option it is a GET.
    async fn get_ex(&self, key: &Bytes, options: &[Bytes]) -> Reply {
        let mut given = None;
        let mut i = 0;
        while i < options.len() {
            let option = options[i].to_ascii_lowercase();
            if ExpiryOption::take(&mut given, &option, b"persist", options, &mut i) != Some(true) {
                return syntax_error();
            }
            i += 1;
        }
        let expiry = match given.map(|g| g.expiry(self.node.now_ms(), "getex")) {
            None => None,
            Some(Ok(expiry)) => Some(expiry),
            Some(Err(reply)) => return reply,
        };
        let Some(expiry) = expiry else {
            return match self.read(key).await {
                Ok(value) => value.map_or(Reply::Nil, Reply::Bulk),
                Err(reply) => reply,
            };
        };
        use v1::get_ex_op::Expiry as W;
        let expiry = match expiry {
            Expiry::In(ms) => W::TtlMs(ms),
            Expiry::At(at) => W::ExpiresAtMs(at),
            Expiry::Keep => W::Persist(true),
        };
        let op = UpdateOp::GetEx(v1::GetExOp {
            expiry: Some(expiry),
        });
        match self.update(key, op).await {
            Ok(r) if r.found => Reply::Bulk(r.value),
            Ok(_) => Reply::Nil,
            Err(refused) => refused.reply(),
        }
    }

    async fn mset_nx(&self, pairs: &[Bytes]) -> Reply {
        let request = self.mset_request(pairs, true);
        match self.cache.m_set(Request::new(request)).await {
            Ok(r) => Reply::Integer(i64::from(!r.into_inner().versions.is_empty())),
            Err(status) => status_reply(&status),
        }
    }

    /// `GETRANGE key start end`, with Redis's index rules (negative from the end, clamped).
    async fn get_range(&self, key: &Bytes, start: &[u8], end: &[u8]) -> Reply {
        let (Some(start), Some(end)) = (integer(start), integer(end)) else {
            return not_an_integer();
        };
        match self.read(key).await {
            Ok(value) => {
                let value = value.unwrap_or_default();
                Reply::Bulk(match range(value.len(), start, end) {
                    Some((from, to)) => value.slice(from..=to),
                    None => Bytes::new(),
                })
            }
            Err(reply) => reply,
        }
    }

    async fn set_range(&self, key: &Bytes, offset: &[u8], value: &Bytes) -> Reply {
        let Some(offset) = integer(offset) else {
            return not_an_integer();
        };
        if offset < 0 {
            return Reply::err("offset is out of range");
        }
        let op = UpdateOp::SetRange(v1::SetRangeOp {
            offset: offset as u64,
            value: value.clone(),
        });
        self.update(key, op)
            .await
            .map_or_else(|refused| refused.too_large(), |r| length(r.length))
    }

    async fn incr_by_float(&self, key: &Bytes, delta: &[u8]) -> Reply {
        let Some(delta) = crate::store::parse_float(delta) else {
            return Reply::err("value is not a valid float");
        };
        let op = UpdateOp::IncrByFloat(v1::IncrByFloatOp { delta });
        match self.update(key, op).await {
            Ok(r) => Reply::Bulk(r.value),
            Err(refused) => refused.float(),
        }
    }

    /// `EXPIRE key seconds [NX | XX | GT | LT]` and its PEXPIRE / EXPIREAT / PEXPIREAT
    /// siblings. Redis's order: the options are checked first, then the time; a time at or
    /// before now deletes the key (when the condition holds) and answers 1.
    async fn expire(&self, name: &str, key: &Bytes, when: &[u8], options: &[Bytes]) -> Reply {
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for option in options {
            match option.to_ascii_lowercase().as_slice() {
                b"nx" => nx = true,
                b"xx" => xx = true,
                b"gt" => gt = true,
                b"lt" => lt = true,
                _ => {
                    return Reply::err(format!(
                        "Unsupported option {}",
                        String::from_utf8_lossy(option)
                    ));
                }
            }
        }
        if nx && (xx || gt || lt) {
            return Reply::err("NX and XX, GT or LT options at the same time are not compatible");
        }
        if gt && lt {
            return Reply::err("GT and LT options at the same time are not compatible");
        }
        use v1::ExpireCondition as C;
        let condition = match (nx, xx, gt, lt) {
            (true, ..) => C::IfNoTtl,
            (_, true, true, _) => C::IfTtlAndLater,
            (_, true, _, true) => C::IfTtlAndEarlier,
            (_, true, ..) => C::IfTtl,
            (_, _, true, _) => C::IfLater,
            (_, _, _, true) => C::IfEarlier,
            _ => C::Always,
        };
        let Some(n) = integer(when) else {
            return not_an_integer();
        };
        let seconds = matches!(name, "expire" | "expireat");
        let absolute = name.ends_with("at");
        let Some(ms) = n.checked_mul(if seconds { 1000 } else { 1 }) else {
            return invalid_expire(name);
        };
        let now = self.node.now_ms();
        let (ttl_ms, expires_at_ms) = if absolute {
            (0, Some(u64::try_from(ms).unwrap_or(0)))
        } else if ms <= 0 {
            // Already past: the key is deleted if the condition holds.
            (0, Some(0))
        } else {
            if i64::try_from(now)
                .ok()
                .and_then(|now| now.checked_add(ms))
                .is_none()
            {
                return invalid_expire(name);
            }
            (ms as u64, None)
        };
        let request = v1::ExpireRequest {
            key: key.clone(),
            ttl_ms,
            consistency: self.write_level,
            condition: condition as i32,
            expires_at_ms,
        };
        match self.cache.expire(Request::new(request)).await {
            Ok(r) => Reply::Integer(i64::from(r.into_inner().updated)),
            Err(status) => status_reply(&status),
        }
    }

    /// `EXPIRETIME` / `PEXPIRETIME`: the absolute expiry, -1 without one, -2 for a missing key.
    async fn expire_time(&self, key: &Bytes, seconds: bool) -> Reply {
        match self.ttl_of(key).await {
            Ok(r) => match (r.found, r.expires_at_ms) {
                (false, _) => Reply::Integer(-2),
                (true, None) => Reply::Integer(-1),
                (true, Some(at)) => {
                    let at = if seconds { at / 1000 } else { at };
                    Reply::Integer(i64::try_from(at).unwrap_or(i64::MAX))
                }
            },
            Err(refused) => refused.reply(),
        }
    }
}

fn length(len: u64) -> Reply {
    Reply::Integer(i64::try_from(len).unwrap_or(i64::MAX))
}

/// GETRANGE's byte range `from..=to` of a value of `len` bytes, `None` for an empty answer
/// (Redis's `getrangeCommand`).
fn range(len: usize, start: i64, end: i64) -> Option<(usize, usize)> {
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return None;
    }
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    let start = if start < 0 {
        len.saturating_add(start)
    } else {
        start
    }
    .max(0);
    let end = if end < 0 {
        len.saturating_add(end)
    } else {
        end
    }
    .max(0)
    .min(len - 1);
    (start <= end).then_some((start as usize, end as usize))
}

/// SET's reply: the old value with `GET`, else OK when stored and nil when a condition
/// (`NX`/`XX`) was not met.
fn set_reply(get: bool, result: Result<v1::SetResponse, Refused>) -> Reply {
    match result {
        Ok(r) => match (get, r.stored) {
            (true, _) => r.previous.map_or(Reply::Nil, Reply::Bulk),
            (false, true) => Reply::OK,
            (false, false) => Reply::Nil,
        },
        Err(refused) => refused.reply(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrange_follows_redis_index_rules() {
        // "Hello World" in Redis's documentation.
        let s = 11;
        assert_eq!(range(s, 0, 3), Some((0, 3)));
        assert_eq!(range(s, -3, -1), Some((8, 10)));
        assert_eq!(range(s, 0, -1), Some((0, 10)));
        assert_eq!(range(s, 10, 100), Some((10, 10)));
        assert_eq!(range(s, 5, 3), None);
        assert_eq!(range(s, -1, -5), None);
        assert_eq!(range(s, -100, 2), Some((0, 2)));
        assert_eq!(range(s, i64::MIN, i64::MAX), Some((0, 10)));
        assert_eq!(range(0, 0, -1), None);
        assert_eq!(range(s, 20, 30), None);
    }

    #[test]
    fn expire_arguments_are_checked_as_redis_does() {
        assert_eq!(expire_arg(b"10", 1000, Some(0), "set"), Ok(10_000));
        assert_eq!(expire_arg(b"abc", 1, None, "set"), Err(not_an_integer()));
        assert_eq!(expire_arg(b"0", 1, None, "set"), Err(invalid_expire("set")));
        assert_eq!(
            expire_arg(b"-5", 1, None, "set"),
            Err(invalid_expire("set"))
        );
        let huge = i64::MAX.to_string();
        assert_eq!(
            expire_arg(huge.as_bytes(), 1000, None, "getex"),
            Err(invalid_expire("getex"))
        );
        assert_eq!(
            expire_arg(huge.as_bytes(), 1, Some(1), "set"),
            Err(invalid_expire("set"))
        );
    }
}
