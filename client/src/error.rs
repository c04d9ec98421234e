//! The client's error type and its mapping from gRPC statuses.
//!
//! The public types here ([`Error`], [`ServerCode`]) carry no transport type: gRPC statuses are
//! mapped in this module and nowhere else leave the crate.

use std::{error::Error as StdError, fmt, fmt::Write as _, time::Duration};

use ringcache_proto::CURRENT_VERSION_METADATA;
use tonic::{Code, Status};

/// An error returned by a [`Client`](crate::Client) request.
///
/// A cache miss is never an error: reads return `Ok(None)` (or [`KeyTtl::Missing`](crate::KeyTtl))
/// instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request was rejected as malformed: an empty or too large key, a too large value, a bad
    /// TTL, too many keys in one batch, a value that is not an integer (`incr`), or an increment
    /// that would overflow. The server reports these as `INVALID_ARGUMENT` or `OUT_OF_RANGE`.
    ///
    /// Also a bad client setting, found before anything is sent: a malformed seed, a zero
    /// timeout, unusable credentials, or TLS certificates or keys that cannot be read or parsed
    /// (the message names the file).
    #[error("{}", with_kind("invalid argument", .0))]
    InvalidArgument(String),

    /// A compare-and-set found a different version than the expected one (`FAILED_PRECONDITION`).
    ///
    /// `current_version` is the version the key holds now, or `None` when the key does not exist
    /// (or the server sent no readable version).
    #[error("compare-and-set conflict: current version {}", fmt_version(*.current_version))]
    CasConflict {
        /// The key's current version; `None` when the key does not exist.
        current_version: Option<u64>,
    },

    /// The node is out of memory and does not evict (`noeviction` policy), or the item is larger
    /// than the node's whole memory budget (`RESOURCE_EXHAUSTED`).
    #[error("{}", with_kind("memory full", .0))]
    MemoryFull(String),

    /// No node could serve the request: the connection failed or broke, every seed was down, or
    /// the node answered `UNAVAILABLE` (not enough replicas, leaving, shutting down). Retrying
    /// later may succeed.
    #[error("{}", with_kind("unavailable", .0))]
    Unavailable(String),

    /// The request did not complete in time: the client's request timeout passed, or the server
    /// answered `DEADLINE_EXCEEDED`. Whether the request took effect is unknown.
    #[error("request timed out{}", fmt_after(*.after))]
    Timeout {
        /// How long the client waited, when known.
        after: Option<Duration>,
    },

    /// The server's answer did not make sense (for example, a batch answer of the wrong length).
    #[error("{}", with_kind("protocol error", .0))]
    Protocol(String),

    /// The node did not accept the client's credentials (`UNAUTHENTICATED`): none were given
    /// ([`ClientBuilder::credentials`](crate::ClientBuilder::credentials)) and the node requires
    /// them, the user or secret is wrong, or the user is locked out for a while after too many
    /// failed attempts.
    ///
    /// Never retried and never sent to another node: other nodes would refuse the same
    /// credentials, and each refusal counts as a failed attempt.
    #[error("{}", with_kind("unauthenticated", message))]
    Unauthenticated {
        /// The node's message.
        message: String,
    },

    /// The node accepted the credentials but the user's role does not allow the request
    /// (`PERMISSION_DENIED`). Roles are `read` < `write` < `admin`: reads need `read`, writes
    /// `write`, and `Admin.Leave` and `Admin.Flush` need `admin`.
    ///
    /// Never retried and never sent to another node.
    #[error("{}", with_kind("permission denied", message))]
    PermissionDenied {
        /// The node's message.
        message: String,
    },

    /// A value could not be encoded or decoded by the client: a stored value that is not valid
    /// JSON for the requested type (`get_json`, `mget_json`), or a value that cannot be
    /// serialized (`set_json`; feature `serde`). The message names the key.
    #[error("{}", with_kind("codec error", .0))]
    Codec(String),

    /// Any other status returned by the node (or made by the local HTTP/2 stack for a request
    /// it abandoned), such as [`ServerCode::Unimplemented`] from a node too old for a call, or
    /// [`ServerCode::Internal`].
    #[error("{}", with_kind(&format!("server error {code}"), message))]
    Server {
        /// The status code.
        code: ServerCode,
        /// The status message.
        message: String,
    },
}

/// The status code of a node's answer, as carried by [`Error::Server`]: gRPC's status codes,
/// in an enum of the client's own so that the public API does not depend on a transport
/// library.
///
/// Codes that have an [`Error`] variant of their own (`INVALID_ARGUMENT`, `UNAVAILABLE`,
/// `UNAUTHENTICATED`, ...) come as that variant, not as [`Error::Server`]; they are here so that
/// a code can always be named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerCode {
    /// The request was cancelled (usually by the client side).
    Cancelled,
    /// An error the node could not classify.
    Unknown,
    /// The request was malformed.
    InvalidArgument,
    /// The request's deadline passed before it completed.
    DeadlineExceeded,
    /// Something the request names does not exist.
    NotFound,
    /// Something the request would create exists already.
    AlreadyExists,
    /// The user's role does not allow the request.
    PermissionDenied,
    /// A limit was reached (memory, quota).
    ResourceExhausted,
    /// The state the request needs does not hold (a compare-and-set version mismatch).
    FailedPrecondition,
    /// The request was aborted (a concurrency conflict).
    Aborted,
    /// A value is out of its valid range (an overflowing increment, an oversized message).
    OutOfRange,
    /// The node does not implement the call (an older node).
    Unimplemented,
    /// An internal error of the node.
    Internal,
    /// The node cannot serve the request now.
    Unavailable,
    /// Unrecoverable data loss.
    DataLoss,
    /// The request carried no valid credentials.
    Unauthenticated,
}

impl ServerCode {
    /// The code's name in `snake_case` (`"not_found"`), as used in messages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerCode::Cancelled => "cancelled",
            ServerCode::Unknown => "unknown",
            ServerCode::InvalidArgument => "invalid_argument",
            ServerCode::DeadlineExceeded => "deadline_exceeded",
            ServerCode::NotFound => "not_found",
            ServerCode::AlreadyExists => "already_exists",
            ServerCode::PermissionDenied => "permission_denied",
            ServerCode::ResourceExhausted => "resource_exhausted",
            ServerCode::FailedPrecondition => "failed_precondition",
            ServerCode::Aborted => "aborted",
            ServerCode::OutOfRange => "out_of_range",
            ServerCode::Unimplemented => "unimplemented",
            ServerCode::Internal => "internal",
            ServerCode::Unavailable => "unavailable",
            ServerCode::DataLoss => "data_loss",
            ServerCode::Unauthenticated => "unauthenticated",
        }
    }

    /// The code of a gRPC status code; `None` for `OK`.
    pub(crate) fn from_grpc(code: Code) -> Option<Self> {
        Some(match code {
            Code::Ok => return None,
            Code::Cancelled => ServerCode::Cancelled,
            Code::Unknown => ServerCode::Unknown,
            Code::InvalidArgument => ServerCode::InvalidArgument,
            Code::DeadlineExceeded => ServerCode::DeadlineExceeded,
            Code::NotFound => ServerCode::NotFound,
            Code::AlreadyExists => ServerCode::AlreadyExists,
            Code::PermissionDenied => ServerCode::PermissionDenied,
            Code::ResourceExhausted => ServerCode::ResourceExhausted,
            Code::FailedPrecondition => ServerCode::FailedPrecondition,
            Code::Aborted => ServerCode::Aborted,
            Code::OutOfRange => ServerCode::OutOfRange,
            Code::Unimplemented => ServerCode::Unimplemented,
            Code::Internal => ServerCode::Internal,
            Code::Unavailable => ServerCode::Unavailable,
            Code::DataLoss => ServerCode::DataLoss,
            Code::Unauthenticated => ServerCode::Unauthenticated,
        })
    }
}

impl fmt::Display for ServerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `kind: message`, or the message alone when it already starts with the kind: a node's message
/// often names it ("memory full: 12 more bytes needed ..."), and saying it twice reads as a
/// stutter ("memory full: memory full: ..."). An empty message is the kind alone.
pub(crate) fn with_kind(kind: &str, message: &str) -> String {
    if message.is_empty() {
        return kind.to_owned();
    }
    let named = message
        .get(..kind.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(kind))
        && message[kind.len()..]
            .chars()
            .next()
            .is_none_or(|next| !next.is_alphanumeric());
    if named {
        message.to_owned()
    } else {
        format!("{kind}: {message}")
    }
}

fn fmt_version(version: Option<u64>) -> String {
    match version {
        Some(version) => version.to_string(),
        None => "none (key absent)".to_owned(),
    }
}

fn fmt_after(after: Option<Duration>) -> String {
    match after {
        Some(after) => format!(" after {after:?}"),
        None => String::new(),
    }
}

impl Error {
    /// A short, stable name of the error's kind, in `snake_case`: `invalid_argument`,
    /// `cas_conflict`, `memory_full`, `unavailable`, `timeout`, `protocol`,
    /// `unauthenticated`, `permission_denied`, `codec`, or for [`Error::Server`] the code's name
    /// ([`ServerCode::as_str`]). The client's metrics label outcomes with it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::CasConflict { .. } => "cas_conflict",
            Error::MemoryFull(_) => "memory_full",
            Error::Unavailable(_) => "unavailable",
            Error::Timeout { .. } => "timeout",
            Error::Protocol(_) => "protocol",
            Error::Unauthenticated { .. } => "unauthenticated",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::Codec(_) => "codec",
            Error::Server { code, .. } => code.as_str(),
        }
    }

    /// Whether trying the same request again later may succeed: `true` for
    /// [`Unavailable`](Error::Unavailable) and [`Timeout`](Error::Timeout).
    ///
    /// A timed-out write may have been applied; only retry writes that are safe to repeat.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout { .. })
    }

    /// Maps a status received by a request that ran for `elapsed` under a client-side
    /// `timeout`, so that every flavour of "too late" becomes [`Error::Timeout`].
    pub(crate) fn from_status_after(
        status: &Status,
        elapsed: Duration,
        timeout: Duration,
    ) -> Error {
        match status.code() {
            // tonic's channel enforces the `grpc-timeout` header locally too, and reports it as
            // CANCELLED; the server reports its own deadline as DEADLINE_EXCEEDED.
            Code::Cancelled if elapsed >= timeout || is_local_timeout(status) => Error::Timeout {
                after: Some(timeout),
            },
            Code::DeadlineExceeded => Error::Timeout {
                after: Some(round_to_millis(elapsed)),
            },
            _ => Error::from_status(status),
        }
    }
}

fn round_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

impl Error {
    /// The error a gRPC status stands for. Crate-private: the public API carries no tonic type.
    pub(crate) fn from_status(status: &Status) -> Self {
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => {
                Error::InvalidArgument(status.message().to_owned())
            }
            Code::FailedPrecondition => Error::CasConflict {
                current_version: current_version(status),
            },
            Code::ResourceExhausted => Error::MemoryFull(status.message().to_owned()),
            Code::Unavailable => Error::Unavailable(describe(status)),
            Code::DeadlineExceeded => Error::Timeout { after: None },
            Code::Unauthenticated => Error::Unauthenticated {
                message: status.message().to_owned(),
            },
            Code::PermissionDenied => Error::PermissionDenied {
                message: status.message().to_owned(),
            },
            // A status built by the local HTTP/2 stack (a broken or refused connection) carries
            // its cause as a source; one decoded from a server's answer never does.
            Code::Unknown if is_local_transport_error(status) => {
                Error::Unavailable(describe(status))
            }
            // hyper cancels a request whose connection closed under it.
            Code::Cancelled if is_local_transport_error(status) => {
                Error::Unavailable(describe(status))
            }
            // tonic turns an HTTP/2 error of the connection (the node's process died mid-stream:
            // "h2 protocol error") into INTERNAL with the h2 error as its source: the connection
            // broke, the node did not answer.
            Code::Internal if is_local_transport_error(status) => {
                Error::Unavailable(describe(status))
            }
            code => Error::Server {
                // `OK` is never an error status; should a broken peer send one, call it unknown.
                code: ServerCode::from_grpc(code).unwrap_or(ServerCode::Unknown),
                message: status.message().to_owned(),
            },
        }
    }
}

/// Reads the `ringcache-current-version` metadata of a compare-and-set conflict.
fn current_version(status: &Status) -> Option<u64> {
    let value = status.metadata().get(CURRENT_VERSION_METADATA)?;
    let parsed = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if parsed.is_none() {
        tracing::warn!(
            value = ?value,
            "ignoring unreadable {CURRENT_VERSION_METADATA} metadata in a compare-and-set conflict"
        );
    }
    parsed
}

/// Whether the status was made by the local HTTP/2 stack (a broken, refused or closed
/// connection) rather than decoded from a node's answer.
pub(crate) fn is_local_transport_error(status: &Status) -> bool {
    StdError::source(status).is_some() || status.message().starts_with("Service was not ready")
}

/// Whether tonic's own enforcement of the `grpc-timeout` deadline made the status.
fn is_local_timeout(status: &Status) -> bool {
    let mut source = StdError::source(status);
    while let Some(cause) = source {
        if cause.downcast_ref::<tonic::TimeoutExpired>().is_some() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// An error followed by its chain of causes, each once.
pub(crate) fn describe_source(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            let _ = write!(text, ": {cause_text}");
        }
        source = cause.source();
    }
    text
}

impl Error {
    /// Whether a message was over a gRPC message limit (the node's when it encoded its answer,
    /// or the client's when it decoded it): tonic's `OUT_OF_RANGE` statuses say "encoded
    /// message length too large" and "decoded message length too large".
    pub(crate) fn is_message_too_large(&self) -> bool {
        matches!(self, Error::InvalidArgument(message) if message.contains("message length too large"))
    }

    /// Whether the node refused the credentials or the user's role: such an answer is final for
    /// every node, so it is never retried elsewhere.
    pub(crate) fn is_denial(&self) -> bool {
        matches!(
            self,
            Error::Unauthenticated { .. } | Error::PermissionDenied { .. }
        )
    }
}

/// The status message followed by its chain of causes, which is where transport errors keep the
/// useful part ("connection refused").
pub(crate) fn describe(status: &Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = StdError::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            if text.is_empty() {
                text = cause_text;
            } else {
                let _ = write!(text, ": {cause_text}");
            }
        }
        source = cause.source();
    }
    if text.is_empty() {
        text = format!("{:?}", status.code());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::{MetadataMap, MetadataValue};

    fn conflict_with(value: Option<&'static str>) -> Status {
        let mut metadata = MetadataMap::new();
        if let Some(value) = value {
            metadata.insert(CURRENT_VERSION_METADATA, MetadataValue::from_static(value));
        }
        Status::with_metadata(Code::FailedPrecondition, "version mismatch", metadata)
    }

    #[test]
    fn every_code_maps_to_a_variant() {
        type Check = fn(&Error) -> bool;
        let cases: &[(Code, Check)] = &[
            (
                Code::InvalidArgument,
                |e| matches!(e, Error::InvalidArgument(m) if m == "boom"),
            ),
            (
                Code::OutOfRange,
                |e| matches!(e, Error::InvalidArgument(m) if m == "boom"),
            ),
            (Code::FailedPrecondition, |e| {
                matches!(
                    e,
                    Error::CasConflict {
                        current_version: None
                    }
                )
            }),
            (
                Code::ResourceExhausted,
                |e| matches!(e, Error::MemoryFull(m) if m == "boom"),
            ),
            (
                Code::Unavailable,
                |e| matches!(e, Error::Unavailable(m) if m == "boom"),
            ),
            (Code::DeadlineExceeded, |e| {
                matches!(e, Error::Timeout { after: None })
            }),
            (
                Code::Unauthenticated,
                |e| matches!(e, Error::Unauthenticated { message } if message == "boom"),
            ),
            (
                Code::PermissionDenied,
                |e| matches!(e, Error::PermissionDenied { message } if message == "boom"),
            ),
        ];
        for (code, check) in cases {
            let error = Error::from_status(&Status::new(*code, "boom"));
            assert!(check(&error), "{code:?} mapped to {error:?}");
        }
        for (code, expected) in [
            (Code::Ok, ServerCode::Unknown),
            (Code::Cancelled, ServerCode::Cancelled),
            (Code::Unknown, ServerCode::Unknown),
            (Code::NotFound, ServerCode::NotFound),
            (Code::AlreadyExists, ServerCode::AlreadyExists),
            (Code::Aborted, ServerCode::Aborted),
            (Code::Unimplemented, ServerCode::Unimplemented),
            (Code::Internal, ServerCode::Internal),
            (Code::DataLoss, ServerCode::DataLoss),
        ] {
            let error = Error::from_status(&Status::new(code, "boom"));
            assert!(
                matches!(&error, Error::Server { code: c, message } if *c == expected && message == "boom"),
                "{code:?} mapped to {error:?}"
            );
        }
    }

    #[test]
    fn every_grpc_code_has_a_server_code_with_a_distinct_name() {
        let mut names = std::collections::BTreeSet::new();
        for value in 1..=16 {
            let code = ServerCode::from_grpc(Code::from_i32(value)).unwrap();
            assert!(names.insert(code.as_str()), "{code:?} named twice");
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(ServerCode::from_grpc(Code::Ok), None);
        assert_eq!(names.len(), 16);
    }

    #[test]
    fn cas_conflict_reads_the_current_version() {
        let error = Error::from_status(&conflict_with(Some("42")));
        assert!(matches!(
            error,
            Error::CasConflict {
                current_version: Some(42)
            }
        ));
        assert_eq!(
            error.to_string(),
            "compare-and-set conflict: current version 42"
        );
    }

    #[test]
    fn cas_conflict_without_or_with_garbled_metadata_has_no_version() {
        for value in [None, Some("not-a-number"), Some("-1"), Some("")] {
            let error = Error::from_status(&conflict_with(value));
            assert!(
                matches!(
                    error,
                    Error::CasConflict {
                        current_version: None
                    }
                ),
                "{value:?} gave {error:?}"
            );
        }
        assert_eq!(
            Error::from_status(&conflict_with(None)).to_string(),
            "compare-and-set conflict: current version none (key absent)"
        );
    }

    #[test]
    fn local_transport_errors_are_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        let status = Status::from_error(Box::new(io));
        assert_eq!(status.code(), Code::Unknown);
        let error = Error::from_status(&status);
        assert!(
            matches!(&error, Error::Unavailable(m) if m.contains("connection reset")),
            "{error:?}"
        );
        assert!(error.is_retryable());

        let not_ready = Status::unknown("Service was not ready: transport error");
        assert!(matches!(
            Error::from_status(&not_ready),
            Error::Unavailable(_)
        ));

        // An HTTP/2 error of the connection itself (the node died mid-stream): INTERNAL with a
        // source, made here; an INTERNAL a node sends has none and stays a server error.
        let mut broken = Status::internal("h2 protocol error: http2 error");
        broken.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        let error = Error::from_status(&broken);
        assert!(matches!(&error, Error::Unavailable(_)), "{error:?}");
        assert!(error.is_retryable());
        assert!(matches!(
            Error::from_status(&Status::internal("a bug on the node")),
            Error::Server {
                code: ServerCode::Internal,
                ..
            }
        ));
    }

    #[test]
    fn late_statuses_become_timeouts() {
        let timeout = Duration::from_secs(1);
        let cancelled = Status::cancelled("Timeout expired");
        assert!(matches!(
            Error::from_status_after(&cancelled, Duration::from_millis(1001), timeout),
            Error::Timeout {
                after: Some(t)
            } if t == timeout
        ));
        let early_cancel = Status::cancelled("connection closed");
        assert!(matches!(
            Error::from_status_after(&early_cancel, Duration::from_millis(10), timeout),
            Error::Server {
                code: ServerCode::Cancelled,
                ..
            }
        ));
        let deadline = Status::deadline_exceeded("replicas too slow");
        let error = Error::from_status_after(&deadline, Duration::from_micros(300_700), timeout);
        assert!(matches!(
            error,
            Error::Timeout {
                after: Some(t)
            } if t == Duration::from_millis(300)
        ));
        assert_eq!(error.to_string(), "request timed out after 300ms");
        let other = Status::invalid_argument("key too large");
        assert!(matches!(
            Error::from_status_after(&other, Duration::from_secs(5), timeout),
            Error::InvalidArgument(_)
        ));
    }

    #[test]
    fn a_message_that_names_its_kind_does_not_get_it_twice() {
        // What nodes send: the store's messages start with their kind.
        let full = Error::from_status(&Status::resource_exhausted(
            "memory full: 1500068 more bytes needed, 1500068 of max_memory 2097152 in use",
        ));
        assert_eq!(
            full.to_string(),
            "memory full: 1500068 more bytes needed, 1500068 of max_memory 2097152 in use"
        );
        let cases = [
            Error::InvalidArgument("invalid argument: key is empty".into()),
            Error::MemoryFull("Memory full: 5 more bytes needed".into()),
            Error::Unavailable("unavailable: ALL write needs 3 of 3 replicas".into()),
            Error::Protocol("protocol error: batch of 2 answers for 3 keys".into()),
            Error::Unauthenticated {
                message: "unauthenticated: bad credentials".into(),
            },
            Error::PermissionDenied {
                message: "permission denied: role read cannot write".into(),
            },
            Error::Server {
                code: ServerCode::Internal,
                message: "server error internal: oops".into(),
            },
            Error::Codec("codec error: not json".into()),
        ];
        for error in cases {
            let text = error.to_string();
            let lower = text.to_lowercase();
            let kind = lower.split(':').next().unwrap();
            assert_eq!(
                lower.matches(kind).count(),
                1,
                "{error:?} displays as {text:?}"
            );
        }
        // Messages that only begin with the same letters keep the kind.
        assert_eq!(
            Error::Unavailable("unavailableness".into()).to_string(),
            "unavailable: unavailableness"
        );
        assert_eq!(Error::Unavailable(String::new()).to_string(), "unavailable");
    }

    #[test]
    fn retryable_and_messages() {
        assert!(Error::Unavailable("down".into()).is_retryable());
        assert!(Error::Timeout { after: None }.is_retryable());
        assert!(!Error::InvalidArgument("bad".into()).is_retryable());
        assert!(
            !Error::CasConflict {
                current_version: Some(1)
            }
            .is_retryable()
        );
        assert!(!Error::MemoryFull("full".into()).is_retryable());
        let denied = Error::Unauthenticated {
            message: "bad credentials".into(),
        };
        assert!(!denied.is_retryable());
        assert_eq!(denied.to_string(), "unauthenticated: bad credentials");
        let denied = Error::PermissionDenied {
            message: "role read cannot write".into(),
        };
        assert!(!denied.is_retryable());
        assert_eq!(
            denied.to_string(),
            "permission denied: role read cannot write"
        );
        assert_eq!(
            Error::Timeout {
                after: Some(Duration::from_secs(5))
            }
            .to_string(),
            "request timed out after 5s"
        );
        assert_eq!(
            Error::Timeout { after: None }.to_string(),
            "request timed out"
        );
        assert_eq!(
            Error::Server {
                code: ServerCode::Internal,
                message: "oops".into()
            }
            .to_string(),
            "server error internal: oops"
        );
    }
}
