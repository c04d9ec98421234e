//! The one mapping from ringcache errors to gRPC status codes (the table at the top of `cache.proto`).

use ringcache_proto::{CURRENT_VERSION_METADATA, ERROR_REASON_METADATA};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::metrics::Outcome;
use crate::peer::{PeerError, PeerErrorKind};
use crate::store::StoreError;

/// Why a request failed before or inside the store.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request itself is malformed (unknown enum value, too many keys, ...).
    #[error("{0}")]
    Invalid(String),
    /// This node must not serve it now (its clock is off from the cluster's).
    #[error("{0}")]
    Unavailable(String),
    /// The request is well formed but the node's state does not allow it (a peer's request
    /// from a node that is not in this node's topology).
    #[error("{0}")]
    FailedPrecondition(String),
}

/// Why a request was refused, for programs: the `ringcache-error` metadata of its status
/// ([`ERROR_REASON_METADATA`]), kept when a forward passes a peer's status on. RESP chooses
/// Redis's reply by it, never by the message's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// INCR on a value that is not an integer.
    NotAnInteger,
    /// INCRBYFLOAT on a value (or with an increment) that is not a number.
    NotAFloat,
    /// A value over `max_value_bytes`.
    ValueTooLarge,
    /// A lease limit (`lease_max_leases`, `lease_max_waiters`), not memory.
    LeaseLimit,
}

impl Reason {
    const ALL: [Reason; 4] = [
        Reason::NotAnInteger,
        Reason::NotAFloat,
        Reason::ValueTooLarge,
        Reason::LeaseLimit,
    ];

    /// The metadata value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::NotAnInteger => "not_an_integer",
            Reason::NotAFloat => "not_a_float",
            Reason::ValueTooLarge => "value_too_large",
            Reason::LeaseLimit => "lease_limit",
        }
    }

    /// `status` with this reason attached.
    pub(crate) fn on(self, mut status: Status) -> Status {
        status.metadata_mut().insert(
            ERROR_REASON_METADATA,
            MetadataValue::from_static(self.as_str()),
        );
        status
    }

    /// The reason `status` carries, if any.
    pub(crate) fn of(status: &Status) -> Option<Reason> {
        let value = status
            .metadata()
            .get(ERROR_REASON_METADATA)?
            .to_str()
            .ok()?;
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == value)
    }
}

/// The `result` label of the request metric for a failed request: the one mapping from errors
/// to metric outcomes. Every failure is a status by the time it is recorded (a store error, a
/// refusal, or a forwarded request's answer from its owner), so the mapping reads the code that
/// [`From<ApiError> for Status`](Status) chose: the same code the caller sees.
pub(crate) fn outcome_of(status: &Status) -> Outcome {
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => Outcome::InvalidArgument,
        Code::FailedPrecondition => Outcome::Conflict,
        Code::ResourceExhausted => Outcome::MemoryFull,
        _ => Outcome::Error,
    }
}

/// A call to a peer this node could not make or that failed, answered to the caller whose
/// request needed it (e.g. a forward whose channel cannot be opened).
impl From<PeerError> for Status {
    fn from(error: PeerError) -> Self {
        let code = match error.kind {
            PeerErrorKind::Unreachable => Code::Unavailable,
            PeerErrorKind::TimedOut => Code::DeadlineExceeded,
            PeerErrorKind::FailedPrecondition => Code::FailedPrecondition,
            PeerErrorKind::Unimplemented => Code::Unimplemented,
            PeerErrorKind::Refused => Code::Unknown,
            PeerErrorKind::Local => Code::Internal,
        };
        Status::new(code, error.message)
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        Status::from(ApiError::Store(error))
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::Invalid(_) => Status::invalid_argument(message),
            ApiError::Unavailable(_) => Status::unavailable(message),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(message),
            ApiError::Store(e) => match e {
                StoreError::ValueTooLarge { .. } => {
                    Reason::ValueTooLarge.on(Status::invalid_argument(message))
                }
                StoreError::NotAnInteger => {
                    Reason::NotAnInteger.on(Status::invalid_argument(message))
                }
                StoreError::NotAFloat => Reason::NotAFloat.on(Status::invalid_argument(message)),
                StoreError::EmptyKey
                | StoreError::KeyTooLarge { .. }
                | StoreError::InvalidTtl { .. } => Status::invalid_argument(message),
                StoreError::Overflow { .. } | StoreError::NotFinite => {
                    Status::out_of_range(message)
                }
                // The entry is well formed; the two nodes' clocks are too far apart for it.
                StoreError::ClockDrift(_) => Status::failed_precondition(message),
                StoreError::MemoryFull { .. } => Status::resource_exhausted(message),
                StoreError::CasConflict { current, .. } => {
                    let mut status = Status::new(Code::FailedPrecondition, message);
                    if let Some(version) = current {
                        status
                            .metadata_mut()
                            .insert(CURRENT_VERSION_METADATA, MetadataValue::from(version));
                    }
                    status
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EvictionPolicy;

    #[test]
    fn refusals_programs_tell_apart_carry_their_reason() {
        let reason = |error: StoreError| Reason::of(&Status::from(error));
        assert_eq!(reason(StoreError::NotAnInteger), Some(Reason::NotAnInteger));
        assert_eq!(reason(StoreError::NotAFloat), Some(Reason::NotAFloat));
        assert_eq!(
            reason(StoreError::ValueTooLarge { len: 9, max: 8 }),
            Some(Reason::ValueTooLarge)
        );
        assert_eq!(reason(StoreError::EmptyKey), None);
        let lease = Status::from(crate::lease::LeaseError::TooManyLeases(2));
        assert_eq!(Reason::of(&lease), Some(Reason::LeaseLimit));
        assert_eq!(
            lease.metadata().get(ERROR_REASON_METADATA).unwrap(),
            "lease_limit"
        );
        // An unknown value is no reason.
        let mut odd = Status::invalid_argument("x");
        odd.metadata_mut().insert(
            ERROR_REASON_METADATA,
            MetadataValue::from_static("later_reason"),
        );
        assert_eq!(Reason::of(&odd), None);
    }

    #[test]
    fn every_store_error_gets_its_documented_code() {
        let cases = [
            (StoreError::EmptyKey, Code::InvalidArgument),
            (
                StoreError::KeyTooLarge { len: 9, max: 8 },
                Code::InvalidArgument,
            ),
            (
                StoreError::ValueTooLarge { len: 9, max: 8 },
                Code::InvalidArgument,
            ),
            (
                StoreError::InvalidTtl {
                    ttl_ms: 0,
                    max_ttl_ms: 5,
                },
                Code::InvalidArgument,
            ),
            (StoreError::NotAnInteger, Code::InvalidArgument),
            (
                StoreError::Overflow {
                    current: 1,
                    delta: 2,
                },
                Code::OutOfRange,
            ),
            (
                StoreError::CasConflict {
                    expected: 1,
                    current: None,
                },
                Code::FailedPrecondition,
            ),
            (
                StoreError::MemoryFull {
                    needed: 1,
                    used: 2,
                    max: 2,
                    policy: EvictionPolicy::NoEviction,
                },
                Code::ResourceExhausted,
            ),
            (
                StoreError::ClockDrift(crate::store::ClockDrift {
                    ahead_ms: 86_400_000,
                    max_drift_ms: 60_000,
                }),
                Code::FailedPrecondition,
            ),
        ];
        for (error, code) in cases {
            let status = Status::from(ApiError::from(error.clone()));
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(status.message(), error.to_string());
        }
        assert_eq!(
            Status::from(ApiError::Invalid("x".into())).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            Status::from(ApiError::FailedPrecondition("x".into())).code(),
            Code::FailedPrecondition
        );
    }

    #[test]
    fn a_peer_channel_error_keeps_its_code() {
        let unreachable = Status::from(PeerError::new(PeerErrorKind::Unreachable, "no address"));
        assert_eq!(unreachable.code(), Code::Unavailable);
        assert_eq!(unreachable.message(), "no address");
        let local = Status::from(PeerError::new(PeerErrorKind::Local, "bad peer address"));
        assert_eq!(local.code(), Code::Internal);
    }

    #[test]
    fn cas_conflict_carries_the_current_version() {
        let status = Status::from(ApiError::from(StoreError::CasConflict {
            expected: 1,
            current: Some(42),
        }));
        assert_eq!(
            status
                .metadata()
                .get(CURRENT_VERSION_METADATA)
                .unwrap()
                .to_str()
                .unwrap(),
            "42"
        );
        let absent = Status::from(ApiError::from(StoreError::CasConflict {
            expected: 1,
            current: None,
        }));
        assert!(absent.metadata().get(CURRENT_VERSION_METADATA).is_none());
    }
}
