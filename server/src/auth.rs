//! Users, roles and the checks on credentials; no I/O beyond reading the users file, no tonic.
//!
//! A user is a name, a [`Role`] and the SHA-256 of a secret. Secrets are long random tokens made
//! by `ringcached --gen-user` (32 random bytes, 64 hex characters), never passwords people pick:
//! with 256 bits of entropy a fast hash is as safe as a slow one, and it keeps a failed attempt
//! as cheap for the node as a good one (a slow hash would hand attackers a CPU lever). The
//! comparison is constant-time, and an unknown user costs the same work as a wrong secret.
//!
//! Roles are ordered: `read` < `write` < `admin`; a role allows everything the lower ones do.
//! [`required_role`] maps each gRPC method of the client plane to the role it needs.
//!
//! [`FailureLimiter`] slows down guessing: an address that fails more than `max_failures`
//! times in a minute is refused without a check until that minute is over.
//!
//! Must not: know about gRPC statuses or connections (the adapter is `api/auth.rs`).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dashmap::DashMap;
use serde::Deserialize;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads (Get, MGet, Ttl), the topology and node information.
    Read,
    /// Reads and writes.
    Write,
    /// Everything, including Admin.Leave (drain) and Admin.Flush.
    Admin,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown role {other:?} (expected read, write or admin)"
            )),
        }
    }
}

/// One `[[users]]` entry as written in a config or users file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The user name (1–64 bytes of letters, digits, `_`, `-`, `.`, `@`).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// SHA-256 of the secret, 64 hex characters.
    pub secret_sha256: String,
}

impl UserEntry {
    /// The entry of user `name` with `role` whose secret is `secret` (stored as its SHA-256).
    /// Not checked: [`Users::from_entries`] checks names and digests.
    pub fn with_secret(name: &str, role: Role, secret: &[u8]) -> Self {
        Self {
            name: name.to_owned(),
            role,
            secret_sha256: to_hex(&sha256(secret)),
        }
    }
}

/// The longest user name.
pub const MAX_USER_NAME: usize = 64;
/// The longest secret checked (longer ones are refused before hashing).
pub const MAX_SECRET_BYTES: usize = 512;

/// Who made a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name.
    pub user: Arc<str>,
    /// Its role.
    pub role: Role,
}

/// Why credentials were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials were given.
    #[error("authentication required")]
    Missing,
    /// The credentials are not in a form we read.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// Unknown user or wrong secret (deliberately not told apart).
    #[error("invalid username-password pair or user is disabled")]
    Invalid,
    /// The address failed too often in the last minute.
    #[error("too many failed authentications from this address; retry in {retry_in_secs}s")]
    LockedOut {
        /// Seconds until attempts are checked again.
        retry_in_secs: u64,
    },
}

impl AuthError {
    /// Metric label.
    pub fn as_label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Invalid => "invalid",
            Self::LockedOut { .. } => "locked_out",
        }
    }
}

/// The users a node accepts.
#[derive(Clone, Default)]
pub struct Users {
    by_name: HashMap<String, (Role, [u8; 32])>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

/// The file form: `[[users]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserEntry>,
}

impl Users {
    /// Checks and indexes `entries`; the error names the bad entry (never a secret).
    pub fn from_entries(entries: &[UserEntry]) -> anyhow::Result<Self> {
        let mut by_name = HashMap::with_capacity(entries.len());
        for entry in entries {
            let name = &entry.name;
            if name.is_empty()
                || name.len() > MAX_USER_NAME
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
            {
                bail!(
                    "user name {name:?} must be 1-{MAX_USER_NAME} letters, digits or _-.@ characters"
                );
            }
            let hash = parse_hex32(&entry.secret_sha256).with_context(|| {
                format!("user {name:?}: secret_sha256 must be 64 hex characters (ringcached --gen-user makes one)")
            })?;
            if by_name.insert(name.clone(), (entry.role, hash)).is_some() {
                bail!("user {name:?} is listed twice");
            }
        }
        Ok(Self { by_name })
    }

    /// Reads a users file (TOML with `[[users]]` entries).
    pub fn load_file(path: &Path) -> anyhow::Result<Vec<UserEntry>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the users file {}", path.display()))?;
        let file: UsersFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        Ok(file.users)
    }

    /// Whether no user is configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// How many users.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Checks `secret` for `user` in constant time (an unknown user costs a full check too).
    pub fn verify(&self, user: &str, secret: &[u8]) -> Result<Principal, AuthError> {
        if secret.len() > MAX_SECRET_BYTES {
            return Err(AuthError::Malformed("secret too long"));
        }
        let presented = sha256(secret);
        let (role, expected, known) = match self.by_name.get(user) {
            Some((role, hash)) => (*role, *hash, true),
            None => (Role::Read, [0xA5; 32], false),
        };
        let equal: bool = subtle::ConstantTimeEq::ct_eq(&presented[..], &expected[..]).into();
        if equal && known {
            Ok(Principal {
                user: Arc::from(user),
                role,
            })
        } else {
            Err(AuthError::Invalid)
        }
    }
}

/// Parses an HTTP `authorization` value of the form `Basic base64(user:secret)`.
pub fn parse_basic(value: &[u8]) -> Result<(String, Vec<u8>), AuthError> {
    use base64::Engine as _;
    const PREFIX: &[u8] = b"Basic ";
    if value.len() < PREFIX.len() || !value[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return Err(AuthError::Malformed("expected `Basic base64(user:secret)`"));
    }
    if value.len() > 4 * (MAX_USER_NAME + MAX_SECRET_BYTES) {
        return Err(AuthError::Malformed("credentials too long"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value[PREFIX.len()..].trim_ascii())
        .map_err(|_| AuthError::Malformed("credentials are not valid base64"))?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(AuthError::Malformed("expected user:secret"))?;
    let user = std::str::from_utf8(&decoded[..colon])
        .map_err(|_| AuthError::Malformed("user name is not UTF-8"))?
        .to_owned();
    Ok((user, decoded[colon + 1..].to_vec()))
}

/// The `authorization` value for `user` and `secret` (what clients send).
pub fn basic_header(user: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(text: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        bail!("not 64 hex characters");
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).context("not hex")?;
    }
    Ok(out)
}

/// A fresh secret: 32 bytes from the system's secure RNG, as 64 hex characters.
pub fn generate_secret() -> anyhow::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system's random number generator failed"))?;
    Ok(to_hex(&bytes))
}

/// The `[[users]]` entry and the secret for a new user, as `ringcached --gen-user` prints them.
pub fn new_user_stanza(name: &str, role: Role) -> anyhow::Result<(String, String)> {
    let secret = generate_secret()?;
    let entry = UserEntry::with_secret(name, role, secret.as_bytes());
    Users::from_entries(std::slice::from_ref(&entry))?;
    let stanza = format!(
        "[[users]]\nname = \"{}\"\nrole = \"{}\"\nsecret_sha256 = \"{}\"\n",
        entry.name, entry.role, entry.secret_sha256
    );
    Ok((stanza, secret))
}

/// The role a client-plane gRPC method needs (`path` = `/package.Service/Method`). `None` for
/// methods the client plane never serves (`Internal`).
pub fn required_role(path: &str) -> Option<Role> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    match service {
        "ringcache.v1.Cache" => Some(match method {
            "Get" | "MGet" | "Ttl" | "Pipeline" | "Invalidations" => Role::Read,
            _ => Role::Write,
        }),
        "ringcache.v1.Admin" => Some(match method {
            "Inspect" | "RebalanceStatus" => Role::Read,
            _ => Role::Admin,
        }),
        "ringcache.v1.Internal" => None,
        // Cluster (topology, node info), reflection and anything unknown (answered
        // UNIMPLEMENTED once authenticated). The health service is let through before any
        // role is asked for (`api::auth`).
        _ => Some(Role::Read),
    }
}

/// Per-address failure counts over a fixed one-minute window.
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    by_addr: DashMap<IpAddr, (Instant, u32)>,
}

/// Addresses remembered at most; past it, windows that ended are forgotten first.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

impl FailureLimiter {
    /// At most `max_failures` failures per address per minute (0 = no limit).
    pub fn new(max_failures: u32) -> Self {
        Self::with_window(max_failures, Duration::from_secs(60))
    }

    /// The same with another window (tests).
    pub fn with_window(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            by_addr: DashMap::new(),
        }
    }

    /// `Err` while `addr` is locked out.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), AuthError> {
        if self.max_failures == 0 {
            return Ok(());
        }
        match self.by_addr.get(&addr) {
            Some(entry) => {
                let (started, failures) = *entry;
                let elapsed = now.saturating_duration_since(started);
                if failures >= self.max_failures && elapsed < self.window {
                    let left = self.window - elapsed;
                    Err(AuthError::LockedOut {
                        retry_in_secs: left.as_secs().max(1),
                    })
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Counts one failure of `addr`.
    pub fn record_failure(&self, addr: IpAddr, now: Instant) {
        if self.max_failures == 0 {
            return;
        }
        if self.by_addr.len() >= MAX_TRACKED_ADDRESSES {
            let window = self.window;
            self.by_addr
                .retain(|_, (started, _)| now.saturating_duration_since(*started) < window);
        }
        let mut entry = self.by_addr.entry(addr).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> (Users, String) {
        let (stanza, secret) = new_user_stanza("app", Role::Write).unwrap();
        let file: UsersFile = toml::from_str(&stanza).unwrap();
        (Users::from_entries(&file.users).unwrap(), secret)
    }

    #[test]
    fn a_generated_user_verifies_with_its_secret_only() {
        let (users, secret) = users();
        assert_eq!(secret.len(), 64);
        let principal = users.verify("app", secret.as_bytes()).unwrap();
        assert_eq!((&*principal.user, principal.role), ("app", Role::Write));
        assert_eq!(users.verify("app", b"wrong"), Err(AuthError::Invalid));
        assert_eq!(
            users.verify("nobody", secret.as_bytes()),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            users.verify("app", &[b'x'; MAX_SECRET_BYTES + 1]),
            Err(AuthError::Malformed("secret too long"))
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_user_named() {
        let entry = |name: &str, hash: &str| UserEntry {
            name: name.into(),
            role: Role::Read,
            secret_sha256: hash.into(),
        };
        let good = "ab".repeat(32);
        for (entries, needle) in [
            (vec![entry("", &good)], "user name"),
            (vec![entry("a b", &good)], "user name"),
            (vec![entry("app", "abc")], "\"app\""),
            (vec![entry("app", &"zz".repeat(32))], "\"app\""),
            (vec![entry("app", &good), entry("app", &good)], "twice"),
        ] {
            let error = format!("{:#}", Users::from_entries(&entries).unwrap_err());
            assert!(error.contains(needle), "{error}");
        }
    }

    #[test]
    fn basic_credentials_parse_and_reject_garbage() {
        let header = basic_header("app", "s3:cret");
        assert_eq!(
            parse_basic(header.as_bytes()).unwrap(),
            ("app".to_owned(), b"s3:cret".to_vec())
        );
        for bad in [
            &b""[..],
            b"Bearer x",
            b"Basic !!!",
            b"Basic YWJj", /* "abc": no colon */
        ] {
            assert!(parse_basic(bad).is_err(), "{bad:?}");
        }
        let huge = vec![b'A'; 10_000];
        assert!(parse_basic(&[b"Basic ".as_slice(), &huge].concat()).is_err());
    }

    #[test]
    fn roles_are_ordered_and_methods_need_the_right_one() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
        for (path, role) in [
            ("/ringcache.v1.Cache/Get", Some(Role::Read)),
            ("/ringcache.v1.Cache/Pipeline", Some(Role::Read)),
            ("/ringcache.v1.Cache/Invalidations", Some(Role::Read)),
            ("/ringcache.v1.Cache/Set", Some(Role::Write)),
            ("/ringcache.v1.Cache/Incr", Some(Role::Write)),
            ("/ringcache.v1.Cache/GetOrLease", Some(Role::Write)),
            ("/ringcache.v1.Cluster/WatchTopology", Some(Role::Read)),
            ("/ringcache.v1.Admin/Leave", Some(Role::Admin)),
            ("/ringcache.v1.Admin/Flush", Some(Role::Admin)),
            ("/ringcache.v1.Admin/Forget", Some(Role::Admin)),
            ("/ringcache.v1.Admin/RebalanceStatus", Some(Role::Read)),
            ("/ringcache.v1.Internal/Replicate", None),
            ("nonsense", None),
        ] {
            assert_eq!(required_role(path), role, "{path}");
        }
    }

    #[test]
    fn an_address_is_locked_out_after_too_many_failures_for_the_window() {
        let limiter = FailureLimiter::with_window(3, Duration::from_secs(60));
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(addr, t0).is_ok());
            limiter.record_failure(addr, t0);
        }
        assert_eq!(
            limiter.check(addr, t0 + Duration::from_secs(20)),
            Err(AuthError::LockedOut { retry_in_secs: 40 })
        );
        assert!(
            limiter.check(other, t0).is_ok(),
            "other addresses unaffected"
        );
        assert!(limiter.check(addr, t0 + Duration::from_secs(61)).is_ok());
        assert!(FailureLimiter::new(0).check(addr, t0).is_ok());
    }
}
