//! `LEASE.GET` and `LEASE.SET`: stampede protection from any Redis client (`Cache.GetOrLease`
//! and a Set with a lease token, [`crate::lease`]).
//!
//! - `LEASE.GET key lease_ms [WAIT ms]`: a three-element array `[kind, value, token]`:
//!   `hit` with the value and 0; `stale` with the expired value and the refresh token (0 for
//!   every caller but one); `lease` with nil and the token (compute, then `LEASE.SET`);
//!   `timeout` with nil and 0 (another caller's lease did not produce a value within the wait).
//! - `LEASE.SET key token value [EX s | PX ms]`: stores the value, releases the lease and wakes
//!   the waiters; `+OK`.
//!
//! Both are routed by the key's slot like GET and SET in cluster mode (`-MOVED`) and need the
//! write role.

use bytes::Bytes;
use ringcache_proto::v1::{self, cache_server::Cache};
use tonic::Request;

use super::commands::{Session, integer, not_an_integer, syntax_error, wrong_arity};
use super::refusal::{lease_reply, status_reply};
use super::reply::Reply;

/// A positive integer argument in milliseconds, or the reply refusing it.
fn positive(arg: &[u8], what: &str) -> Result<u64, Reply> {
    match integer(arg) {
        Some(n) if n > 0 => Ok(n as u64),
        Some(_) => Err(Reply::err(format!("{what} must be greater than 0"))),
        None => Err(not_an_integer()),
    }
}

impl Session {
    /// `LEASE.GET key lease_ms [WAIT ms]`.
    pub(super) async fn lease_get(&self, rest: &[Bytes]) -> Reply {
        let (key, lease, wait) = match rest {
            [key, lease] => (key, lease, None),
            [key, lease, option, wait] if option.eq_ignore_ascii_case(b"WAIT") => {
                (key, lease, Some(wait))
            }
            [_, _, _, _] => return syntax_error(),
            _ => return wrong_arity("lease.get"),
        };
        let lease_ttl_ms = match positive(lease, "lease_ms") {
            Ok(ms) => ms,
            Err(reply) => return reply,
        };
        let max_wait_ms = match wait.map(|w| integer(w)) {
            None => 0,
            Some(Some(ms)) if ms >= 0 => ms as u64,
            Some(Some(_)) => return Reply::err("WAIT must not be negative"),
            Some(None) => return not_an_integer(),
        };
        let request = v1::GetOrLeaseRequest {
            key: key.clone(),
            lease_ttl_ms,
            max_wait_ms,
        };
        match self.cache.get_or_lease(Request::new(request)).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                let token = Reply::Integer(i64::try_from(reply.lease_token).unwrap_or(0));
                let (kind, value) = match (reply.found, reply.stale, reply.lease_token) {
                    (true, false, _) => ("hit", Reply::Bulk(reply.value)),
                    (true, true, _) => ("stale", Reply::Bulk(reply.value)),
                    (false, _, 0) => ("timeout", Reply::Nil),
                    (false, _, _) => ("lease", Reply::Nil),
                };
                Reply::Array(vec![Reply::bulk(kind), value, token])
            }
            Err(status) => lease_reply(&status),
        }
    }

    /// `LEASE.SET key token value [EX s | PX ms]`.
    pub(super) async fn lease_set(&self, rest: &[Bytes]) -> Reply {
        let (key, token, value, expiry) = match rest {
            [key, token, value] => (key, token, value, None),
            [key, token, value, unit, amount] => (key, token, value, Some((unit, amount))),
            [_, _, _, _] => return syntax_error(),
            _ => return wrong_arity("lease.set"),
        };
        let lease_token = match integer(token) {
            Some(t) if t > 0 => t as u64,
            Some(_) => return Reply::err("the lease token must be greater than 0"),
            None => return not_an_integer(),
        };
        let ttl_ms = match expiry {
            None => None,
            Some((unit, amount)) => {
                let scale = if unit.eq_ignore_ascii_case(b"EX") {
                    1000
                } else if unit.eq_ignore_ascii_case(b"PX") {
                    1
                } else {
                    return syntax_error();
                };
                match positive(amount, "the expire time") {
                    Ok(n) => Some(n.saturating_mul(scale)),
                    Err(reply) => return reply,
                }
            }
        };
        let request = v1::SetRequest {
            key: key.clone(),
            value: value.clone(),
            ttl_ms,
            consistency: self.write_level,
            lease_token,
            ..v1::SetRequest::default()
        };
        match self.cache.set(Request::new(request)).await {
            Ok(_) => Reply::OK,
            Err(status) => status_reply(&status),
        }
    }
}
