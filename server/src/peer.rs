//! The gRPC transport's errors for calls this node makes to its peers: a tonic client's
//! `Status` becomes a [`PeerError`] at the call, so node logic (replication, rebalance,
//! anti-entropy, the clock check, RESP's FLUSHALL) classifies a peer's failure by its
//! [`PeerErrorKind`] and never sees a gRPC status.
//!
//! The classification is by the status's code and by the type of its error sources (a refused
//! connection is an `io::Error` of kind `ConnectionRefused` somewhere in the chain), never by its
//! text.

use std::fmt;

use tonic::{Code, Status};

/// How many error sources [`PeerError`]'s detail follows (a chain is short; this bounds it).
const MAX_SOURCES: usize = 8;

/// What kind of failure a call to a peer had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerErrorKind {
    /// The peer could not be reached: no address, connection refused, broken or reset, or the
    /// call was cancelled (`UNAVAILABLE`, `UNKNOWN`, `CANCELLED`).
    Unreachable,
    /// No answer in time (`DEADLINE_EXCEEDED`).
    TimedOut,
    /// The peer refused the request for its state (`FAILED_PRECONDITION`: e.g. a version too far
    /// ahead of its clock on `Internal.Replicate`).
    FailedPrecondition,
    /// The peer does not know the method (`UNIMPLEMENTED`: an older node).
    Unimplemented,
    /// The peer answered with any other error.
    Refused,
    /// This node could not make the call (a bad peer address, the cluster TLS settings).
    Local,
}

/// Why a call to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerError {
    /// What kind of failure it was.
    pub kind: PeerErrorKind,
    /// The message the peer (or the local transport) gave, as it gave it.
    pub message: String,
    /// `message` followed by the transport's error sources (where a transport error says what
    /// happened); just "connection refused" for a refused connection, the common case of a
    /// peer that is down. What [`Display`](fmt::Display) shows.
    pub detail: String,
}

impl PeerError {
    /// A failure with no error sources (`detail` is `message`).
    pub fn new(kind: PeerErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            kind,
            detail: message.clone(),
            message,
        }
    }

    /// The error a peer answered inside a message (a `ReplicaError` on the replica stream): its
    /// gRPC code as a number and its message.
    pub fn answered(code: i32, message: String) -> Self {
        Self::from(Status::new(Code::from_i32(code), message))
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for PeerError {}

/// The kind of `status`: by its code, except that an INTERNAL the local HTTP/2 stack made (it
/// carries the h2 error as its source; a status decoded from a peer's answer never has a
/// source) is a connection that broke (the peer's process died mid-call), not an answer.
pub(crate) fn kind_of(status: &Status) -> PeerErrorKind {
    let code = status.code();
    if code == Code::Internal && std::error::Error::source(status).is_some() {
        return PeerErrorKind::Unreachable;
    }
    match code {
        Code::Unavailable | Code::Unknown | Code::Cancelled => PeerErrorKind::Unreachable,
        Code::DeadlineExceeded => PeerErrorKind::TimedOut,
        Code::FailedPrecondition => PeerErrorKind::FailedPrecondition,
        Code::Unimplemented => PeerErrorKind::Unimplemented,
        _ => PeerErrorKind::Refused,
    }
}

impl From<Status> for PeerError {
    fn from(status: Status) -> Self {
        Self {
            kind: kind_of(&status),
            detail: describe(&status),
            message: status.message().to_owned(),
        }
    }
}

/// A status's message followed by its error sources, lower-case where the source is ours; a
/// refused connection, found by the type of its source, is said in two words.
fn describe(status: &Status) -> String {
    let mut text = status.message().to_owned();
    if text.is_empty() {
        text = format!("{:?}", status.code()).to_lowercase();
    }
    let mut source = std::error::Error::source(status);
    let mut depth = 0;
    while let Some(error) = source {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return "connection refused".to_owned();
        }
        let part = error.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = error.source();
        depth += 1;
        if depth > MAX_SOURCES {
            break;
        }
    }
    text
}

/// The reply of a unary call to a peer, or its failure as a [`PeerError`]: wrap the tonic
/// client's call in it (`peer::call(client.replicate(request)).await`).
pub async fn call<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, PeerError> {
    call.await
        .map(tonic::Response::into_inner)
        .map_err(PeerError::from)
}

/// The next message of a stream a peer sends (`None` at its end), or the stream's failure.
pub async fn next_message<T>(stream: &mut tonic::Streaming<T>) -> Result<Option<T>, PeerError> {
    stream.message().await.map_err(PeerError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_into_kinds() {
        let cases = [
            (Status::unavailable("down"), PeerErrorKind::Unreachable),
            (Status::unknown("reset"), PeerErrorKind::Unreachable),
            (Status::cancelled("reset"), PeerErrorKind::Unreachable),
            (Status::deadline_exceeded(""), PeerErrorKind::TimedOut),
            (
                Status::failed_precondition("clock drift"),
                PeerErrorKind::FailedPrecondition,
            ),
            (Status::unimplemented("old"), PeerErrorKind::Unimplemented),
            (Status::resource_exhausted("full"), PeerErrorKind::Refused),
            (Status::invalid_argument("bad"), PeerErrorKind::Refused),
            (
                Status::internal("a bug on the peer"),
                PeerErrorKind::Refused,
            ),
        ];
        for (status, kind) in cases {
            let error = PeerError::from(status.clone());
            assert_eq!(error.kind, kind, "{status:?}");
        }
        let error = PeerError::answered(Code::FailedPrecondition as i32, "clock drift".into());
        assert_eq!(error.kind, PeerErrorKind::FailedPrecondition);
        assert_eq!(error.to_string(), "clock drift");
        // An INTERNAL the local HTTP/2 stack made (the h2 error as its source: the peer died
        // mid-call) is a broken connection, not the peer's answer.
        let mut broken = Status::internal("h2 protocol error: http2 error");
        broken.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(PeerError::from(broken).kind, PeerErrorKind::Unreachable);
        // A code gRPC does not define reads as UNKNOWN, as tonic reads it off the wire.
        assert_eq!(
            PeerError::answered(9999, "x".into()).kind,
            PeerErrorKind::Unreachable
        );
    }

    #[test]
    fn an_empty_message_is_said_by_its_code_and_sources_follow_it() {
        let error = PeerError::from(Status::deadline_exceeded(""));
        assert_eq!(error.message, "");
        assert_eq!(error.to_string(), "deadlineexceeded");

        let mut broken = Status::unavailable("transport error");
        broken.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "broken pipe",
        )));
        let error = PeerError::from(broken);
        assert_eq!(error.message, "transport error");
        assert_eq!(error.to_string(), "transport error: broken pipe");
    }

    #[test]
    fn a_refused_connection_is_found_by_its_source_type_not_its_text() {
        let mut refused = Status::unavailable("tcp connect error");
        refused.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let error = PeerError::from(refused);
        assert_eq!(error.kind, PeerErrorKind::Unreachable);
        assert_eq!(error.to_string(), "connection refused");

        let worded = PeerError::from(Status::unavailable("tcp connect error: Connection refused"));
        assert_eq!(worded.to_string(), "tcp connect error: Connection refused");
    }
}
