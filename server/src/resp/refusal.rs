//! Redis's replies to refused commands.
//!
//! RESP is a second front door to the gRPC `Cache` service: its commands call the service's
//! handlers in-process (the same routing, forwarding, replication, limits and metrics as a gRPC
//! request), and a refused call comes back as the handler's `tonic::Status`, possibly a peer's
//! answer passed on by a forward. This module is the one place in RESP that reads such a
//! status (server/clippy.toml forbids it elsewhere): the rest of RESP passes it here unread, or
//! holds it as a [`Refused`]. Which Redis reply a refusal gets is chosen by its code and its
//! reason ([`Reason`], the `ringcache-error` metadata the api sets), never by its message's
//! words.

use tonic::{Code, Status};

use super::reply::Reply;
use crate::api::status::Reason;

/// Redis's reply to a failed request.
pub(super) fn status_reply(status: &Status) -> Reply {
    let message = status.message();
    match status.code() {
        Code::InvalidArgument if Reason::of(status) == Some(Reason::NotAnInteger) => {
            super::commands::not_an_integer()
        }
        Code::OutOfRange => Reply::err("increment or decrement would overflow"),
        Code::ResourceExhausted => {
            Reply::Error("OOM command not allowed when used memory > 'maxmemory'.".to_owned())
        }
        _ => Reply::err(message),
    }
}

/// A value that would outgrow `--max-value-bytes`: Redis's text for its 512 MB limit, with ours.
pub(super) fn too_large(status: &Status) -> Reply {
    if Reason::of(status) == Some(Reason::ValueTooLarge) {
        return Reply::err(format!(
            "string exceeds maximum allowed size ({})",
            status.message()
        ));
    }
    status_reply(status)
}

/// INCRBYFLOAT's errors.
pub(super) fn float_reply(status: &Status) -> Reply {
    match status.code() {
        Code::InvalidArgument if Reason::of(status) == Some(Reason::NotAFloat) => {
            Reply::err("value is not a valid float")
        }
        Code::OutOfRange => Reply::err("increment would produce NaN or Infinity"),
        _ => too_large(status),
    }
}

/// A lease error keeps its own message (which limit was hit), not Redis's OOM text.
pub(super) fn lease_reply(status: &Status) -> Reply {
    if Reason::of(status) == Some(Reason::LeaseLimit) {
        return Reply::err(status.message());
    }
    status_reply(status)
}

/// A refused `Cache` call, kept until the command chooses Redis's reply for it (the helpers
/// that make a call for several commands return it).
#[derive(Debug)]
pub(super) struct Refused(Status);

impl From<Status> for Refused {
    fn from(status: Status) -> Self {
        Self(status)
    }
}

impl Refused {
    /// [`status_reply`].
    pub(super) fn reply(&self) -> Reply {
        status_reply(&self.0)
    }

    /// [`too_large`].
    pub(super) fn too_large(&self) -> Reply {
        too_large(&self.0)
    }

    /// [`float_reply`].
    pub(super) fn float(&self) -> Reply {
        float_reply(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(reply: Reply) -> String {
        match reply {
            Reply::Error(text) => text,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn refusals_get_redis_replies() {
        let cases = [
            (
                status_reply(&Reason::NotAnInteger.on(Status::invalid_argument("not a number"))),
                "ERR value is not an integer or out of range",
            ),
            (
                status_reply(&Status::out_of_range("overflow")),
                "ERR increment or decrement would overflow",
            ),
            (
                status_reply(&Status::resource_exhausted("memory full")),
                "OOM command not allowed when used memory > 'maxmemory'.",
            ),
            (
                status_reply(&Status::unavailable("minority")),
                "ERR minority",
            ),
            (
                too_large(
                    &Reason::ValueTooLarge
                        .on(Status::invalid_argument("9 bytes > max_value_bytes (8)")),
                ),
                "ERR string exceeds maximum allowed size (9 bytes > max_value_bytes (8))",
            ),
            (
                float_reply(&Reason::NotAFloat.on(Status::invalid_argument("bad number"))),
                "ERR value is not a valid float",
            ),
            (
                float_reply(&Status::out_of_range("nan")),
                "ERR increment would produce NaN or Infinity",
            ),
            (
                lease_reply(&Reason::LeaseLimit.on(Status::resource_exhausted("too many leases"))),
                "ERR too many leases",
            ),
            (
                lease_reply(&Status::resource_exhausted("memory full")),
                "OOM command not allowed when used memory > 'maxmemory'.",
            ),
            // The words of a message decide nothing: without its reason, a refusal that
            // mentions an integer or a lease is passed on as it is.
            (
                status_reply(&Status::invalid_argument("count must be an integer")),
                "ERR count must be an integer",
            ),
            (
                lease_reply(&Status::resource_exhausted("lease table memory full")),
                "OOM command not allowed when used memory > 'maxmemory'.",
            ),
        ];
        for (reply, expected) in cases {
            assert_eq!(text(reply), expected);
        }
        let refused = Refused::from(Status::out_of_range("nan"));
        assert_eq!(
            text(refused.float()),
            "ERR increment would produce NaN or Infinity"
        );
        assert_eq!(
            text(refused.reply()),
            "ERR increment or decrement would overflow"
        );
        assert_eq!(
            text(refused.too_large()),
            "ERR increment or decrement would overflow"
        );
    }
}
