//! The authentication and authorization layer of the client port: a tower layer in front of
//! every service (Cache, Cluster, Admin, reflection) but the gRPC health service, which answers
//! without credentials (as `/health/ready` does on the HTTP port).
//!
//! Each request must carry `authorization: Basic base64(user:secret)`. The first request of a
//! connection with a given value is checked against the users ([`crate::auth::Users::verify`]:
//! one SHA-256 and a constant-time comparison); the connection remembers the value and who it
//! named, so later requests with the same value cost one byte comparison. The role the method
//! needs ([`crate::auth::required_role`]) is then checked, and the principal is put in the
//! request's extensions for handlers that authorize per operation (`Cache.Pipeline`).
//!
//! Refusals are gRPC answers (UNAUTHENTICATED or PERMISSION_DENIED) made here, without calling
//! the service, and counted in `ringcache_auth_failures_total`. An address that fails too often
//! is refused without a check for the rest of the minute.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::{Either, Ready, ready};
use parking_lot::RwLock;
use tonic::codegen::http::{Request, Response};
use tower::{Layer, Service};

use crate::Node;
use crate::auth::{AuthError, FailureLimiter, Principal, Role, Users, parse_basic, required_role};
use crate::connections::ConnInfo;

/// What the layer checks against; the node keeps it so a users-file reload takes effect at once.
#[derive(Debug)]
pub struct AuthState {
    /// The current users.
    pub users: RwLock<Arc<Users>>,
    /// Bumped on every change of `users`: identities cached on connections before it are
    /// checked again, so a removed user or a changed secret takes effect on open connections.
    pub generation: std::sync::atomic::AtomicU64,
    /// Failures per address.
    pub limiter: FailureLimiter,
}

impl AuthState {
    /// State checking against `users`, with `limiter` for failures.
    pub fn new(users: Users, limiter: FailureLimiter) -> Self {
        Self {
            users: RwLock::new(Arc::new(users)),
            generation: std::sync::atomic::AtomicU64::new(0),
            limiter,
        }
    }

    /// Replaces the users; identities cached on open connections are checked again.
    pub fn replace_users(&self, users: Users) {
        *self.users.write() = Arc::new(users);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Checks a request's `authorization` value (`None`: absent) for a method needing
    /// `required`; `conn` caches the outcome per connection. `Ok` says who, and whether the
    /// credentials were checked now (not taken from the connection's cache).
    pub fn authorize(
        &self,
        header: Option<&[u8]>,
        conn: Option<&ConnInfo>,
        required: Role,
        now: Instant,
    ) -> Result<(Principal, bool), Refusal> {
        let header = header.ok_or(Refusal::Unauthenticated(AuthError::Missing))?;
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        let cached = conn.and_then(|c| c.state.cached_principal(header, generation));
        let checked_now = cached.is_none();
        let principal = match cached {
            Some(principal) => principal,
            None => {
                let ip = conn.and_then(|c| c.remote).map(|addr| addr.ip());
                if let Some(ip) = ip {
                    self.limiter
                        .check(ip, now)
                        .map_err(Refusal::Unauthenticated)?;
                }
                let verified = parse_basic(header).and_then(|(user, secret)| {
                    let users = self.users.read().clone();
                    users.verify(&user, &secret)
                });
                match verified {
                    Ok(principal) => {
                        if let Some(conn) = conn {
                            conn.state.cache(header, principal.clone(), generation);
                        }
                        principal
                    }
                    Err(error) => {
                        if let Some(ip) = ip {
                            self.limiter.record_failure(ip, now);
                        }
                        return Err(Refusal::Unauthenticated(error));
                    }
                }
            }
        };
        if principal.role < required {
            return Err(Refusal::PermissionDenied {
                principal,
                required,
            });
        }
        Ok((principal, checked_now))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Credentials missing, malformed or wrong, or the address is locked out.
    Unauthenticated(AuthError),
    /// Authenticated, but the role is too low.
    PermissionDenied {
        /// Who asked.
        principal: Principal,
        /// The role the method needs.
        required: Role,
    },
}

impl Refusal {
    /// The metric label.
    pub fn as_label(&self) -> &'static str {
        match self {
            Self::Unauthenticated(error) => error.as_label(),
            Self::PermissionDenied { .. } => "permission_denied",
        }
    }

    /// The gRPC answer; `what` names the method or operation.
    pub fn to_status(&self, what: &str) -> tonic::Status {
        match self {
            Self::Unauthenticated(error) => tonic::Status::unauthenticated(error.to_string()),
            Self::PermissionDenied {
                principal,
                required,
            } => tonic::Status::permission_denied(format!(
                "user {:?} has role {} and may not call {what} (needs {required})",
                principal.user, principal.role
            )),
        }
    }
}

/// Checks that `principal` (from the request's extensions; `None` when authentication is off)
/// may run an operation needing `required`. For handlers that carry several operations in one
/// request (`Cache.Pipeline`).
pub fn check_role(
    principal: Option<&Principal>,
    required: Role,
    what: &str,
) -> Result<(), tonic::Status> {
    match principal {
        Some(principal) if principal.role < required => Err(Refusal::PermissionDenied {
            principal: principal.clone(),
            required,
        }
        .to_status(what)),
        _ => Ok(()),
    }
}

/// The layer; see the module docs.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    node: Arc<Node>,
}

impl AuthLayer {
    /// A layer checking requests against `node`'s users.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            node: self.node.clone(),
        }
    }
}

/// Whether `path` (`/package.Service/Method`) is a call of the gRPC health service, which
/// needs no credentials.
fn is_health_call(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, _)| service == super::health::HEALTH_SERVICE)
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S, B, RB> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Default,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<RB>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(auth) = self.node.auth() else {
            return Either::Left(self.inner.call(request));
        };
        let path = request.uri().path();
        // Health answers one status, like `/health/ready` on the HTTP port: probes carry no
        // credentials. The connection still counts as unauthenticated (closed at the handshake
        // timeout unless it authenticates).
        if is_health_call(path) {
            return Either::Left(self.inner.call(request));
        }
        let security = &self.node.metrics().security;
        let Some(required) = required_role(path) else {
            security.record_auth_failure("permission_denied");
            let status = tonic::Status::permission_denied(format!(
                "{path} is served only on the cluster port"
            ));
            return Either::Right(ready(Ok(status.into_http())));
        };
        let outcome = auth.authorize(
            request
                .headers()
                .get("authorization")
                .map(|value| value.as_bytes()),
            request.extensions().get::<ConnInfo>(),
            required,
            Instant::now(),
        );
        match outcome {
            Ok((principal, checked_now)) => {
                if checked_now {
                    security.record_auth_success();
                }
                request.extensions_mut().insert(principal);
                Either::Left(self.inner.call(request))
            }
            Err(refusal) => {
                security.record_auth_failure(refusal.as_label());
                let method = path.rsplit('/').next().unwrap_or(path);
                Either::Right(ready(Ok(refusal.to_status(method).into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::auth::{UserEntry, basic_header};
    use crate::connections::ConnState;

    fn users(secret: &str) -> Users {
        Users::from_entries(&[UserEntry::with_secret(
            "app",
            Role::Write,
            secret.as_bytes(),
        )])
        .unwrap()
    }

    #[test]
    fn a_connection_checks_once_and_a_users_reload_makes_it_check_again() {
        let state = AuthState::new(users("old"), FailureLimiter::new(0));
        let conn = ConnInfo {
            remote: Some("10.0.0.1:5000".parse().unwrap()),
            state: Arc::new(ConnState::default()),
        };
        let header = basic_header("app", "old");
        let now = Instant::now();
        let first = state.authorize(Some(header.as_bytes()), Some(&conn), Role::Read, now);
        assert!(matches!(first, Ok((_, true))), "checked now: {first:?}");
        let again = state.authorize(Some(header.as_bytes()), Some(&conn), Role::Read, now);
        assert!(matches!(again, Ok((_, false))), "from the cache: {again:?}");
        // The secret changes: the cached identity no longer counts.
        state.replace_users(users("new"));
        let after = state.authorize(Some(header.as_bytes()), Some(&conn), Role::Read, now);
        assert_eq!(after, Err(Refusal::Unauthenticated(AuthError::Invalid)));
        let denied = state.authorize(
            Some(basic_header("app", "new").as_bytes()),
            Some(&conn),
            Role::Admin,
            now,
        );
        assert!(matches!(
            denied,
            Err(Refusal::PermissionDenied {
                required: Role::Admin,
                ..
            })
        ));
    }
}
