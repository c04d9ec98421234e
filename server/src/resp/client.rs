//! The state of RESP connections and the commands about it: the listener's registry of open
//! connections (`CLIENT LIST`), and `AUTH`, `HELLO`, `RESET` and `CLIENT`.
//!
//! Authentication uses the node's users and failure limiter ([`crate::api::auth::AuthState`],
//! the same as the gRPC client port): `AUTH user secret`, `AUTH secret` (user `default`, as in
//! Redis) and `HELLO 3 AUTH user secret`. The connection remembers who it is and the secret, tagged
//! with the users' generation; after a users reload the next command checks the secret again
//! (`Session::recheck`), so a removed user or a changed secret stops working on open
//! connections too, while a reload that changed nothing else costs one hash per connection.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::commands::Session;
use super::reply::Reply;
use super::table::{COMMANDS, Spec};
use crate::auth::{AuthError, Principal, Role};
use crate::connections::Slot;

/// The Redis version the RESP port reports (`HELLO`, `INFO`): the Redis release whose replies
/// and error texts it follows, so clients that check versions enable what it serves.
pub const REDIS_VERSION: &str = "7.2.0";

/// Redis's reply to a command that needs authentication on a connection that has none.
pub const NOAUTH: &str = "NOAUTH Authentication required.";
/// Redis's reply to wrong credentials.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// Today's (and Redis's) answer to AUTH when no user is configured.
const NO_USERS: &str = "ERR AUTH <password> called without any password configured for the \
                        default user. Are you sure your configuration is correct?";

/// The open connections of one RESP listener and its counters (`CLIENT LIST`, `INFO`).
#[derive(Debug)]
pub struct Registry {
    clients: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
    next_id: AtomicU64,
    /// Commands run since start (`INFO stats total_commands_processed`).
    pub commands_processed: AtomicU64,
    /// Connections accepted since start (`total_connections_received`).
    pub connections_received: AtomicU64,
    /// The port it listens on (`INFO server tcp_port`).
    pub port: u16,
}

impl Registry {
    /// An empty registry for a listener on `port`.
    pub fn new(port: u16) -> Arc<Self> {
        Arc::new(Self {
            clients: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            commands_processed: AtomicU64::new(0),
            connections_received: AtomicU64::new(0),
            port,
        })
    }

    /// Registers a new connection; it stays listed until the returned guard is dropped.
    pub fn register(
        self: &Arc<Self>,
        addr: Option<SocketAddr>,
        laddr: Option<SocketAddr>,
        fd: i64,
    ) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let info = Arc::new(ClientInfo {
            id,
            addr,
            laddr,
            fd,
            created: now,
            active_ms: AtomicU64::new(0),
            last_command: AtomicUsize::new(0),
            state: Mutex::new(ClientState::default()),
        });
        self.clients.lock().insert(id, info.clone());
        self.connections_received.fetch_add(1, Ordering::Relaxed);
        Registered {
            registry: self.clone(),
            info,
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Vec<Arc<ClientInfo>> {
        self.clients.lock().values().cloned().collect()
    }
}

/// A connection's place in the [`Registry`]; removes it when dropped.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    /// What `CLIENT LIST` shows of the connection.
    pub info: Arc<ClientInfo>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.info.id);
    }
}

/// What other connections can see of one connection.
#[derive(Debug)]
pub struct ClientInfo {
    /// `CLIENT ID`.
    pub id: u64,
    addr: Option<SocketAddr>,
    laddr: Option<SocketAddr>,
    fd: i64,
    created: Instant,
    /// Milliseconds from `created` to the last batch of commands read.
    active_ms: AtomicU64,
    /// The last command run: 1 + its index in the table; 0 before the first.
    last_command: AtomicUsize,
    state: Mutex<ClientState>,
}

#[derive(Debug, Default)]
struct ClientState {
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    resp3: bool,
    user: Option<Arc<str>>,
    no_evict: bool,
    no_touch: bool,
}

impl ClientInfo {
    /// The peer's address.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Notes that `command` ran (no clock read: [`Self::active`] notes the time per batch).
    pub fn touch(&self, command: &'static Spec) {
        self.last_command
            .store(command.index() + 1, Ordering::Relaxed);
    }

    /// Notes that commands arrived now.
    pub fn active(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.created).as_millis();
        self.active_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Redis's `CLIENT INFO` / `CLIENT LIST` line, newline included.
    pub fn line(&self) -> String {
        let state = self.state.lock();
        let now = Instant::now();
        let show = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let mut flags = String::new();
        if state.no_evict {
            flags.push('e');
        }
        if state.no_touch {
            flags.push('T');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        let age = now.saturating_duration_since(self.created);
        let active = Duration::from_millis(self.active_ms.load(Ordering::Relaxed));
        let idle = age.saturating_sub(active).as_secs();
        let last_command = match self.last_command.load(Ordering::Relaxed) {
            0 => "NULL",
            i => COMMANDS.get(i - 1).map_or("NULL", |spec| spec.name),
        };
        let mut line = String::with_capacity(320);
        let _ = writeln!(
            line,
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={flags} db=0 sub=0 psub=0 \
             ssub=0 multi=-1 watch=0 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 \
             oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir=-1 resp={} lib-name={} \
             lib-ver={}",
            self.id,
            addr(self.addr),
            addr(self.laddr),
            self.fd,
            show(&state.name),
            age.as_secs(),
            idle,
            last_command,
            state.user.as_deref().unwrap_or("default"),
            if state.resp3 { 3 } else { 2 },
            show(&state.lib_name),
            show(&state.lib_ver),
        );
        line
    }
}

/// Who a connection authenticated as, and the secret to check again after a users reload.
pub struct Identity {
    principal: Principal,
    secret: Box<[u8]>,
    generation: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("principal", &self.principal)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// One connection's own state.
#[derive(Debug)]
pub struct Conn {
    /// Its place in the registry.
    pub registered: Registered,
    /// Who it authenticated as (`None`: nobody yet, or users are not configured).
    pub identity: Option<Identity>,
    /// Since when it has been waiting to authenticate (`None`: authenticated, or no users):
    /// it is closed if it has not by then + the handshake timeout.
    pub unauthenticated_since: Option<Instant>,
    /// Its place among the connections not authenticated yet, given back once it does.
    pub(crate) pending: Option<Slot>,
}

impl Conn {
    /// The state of a new connection; `auth_required` when users are configured.
    pub(crate) fn new(registered: Registered, auth_required: bool, pending: Option<Slot>) -> Self {
        Self {
            registered,
            identity: None,
            unauthenticated_since: auth_required.then(Instant::now),
            pending,
        }
    }

    /// The shared part (`CLIENT LIST`).
    pub fn info(&self) -> &Arc<ClientInfo> {
        &self.registered.info
    }

    /// The authenticated user.
    pub fn principal(&self) -> Option<&Principal> {
        self.identity.as_ref().map(|i| &i.principal)
    }

    fn set_identity(&mut self, identity: Option<Identity>) {
        self.info().state.lock().user = identity.as_ref().map(|i| i.principal.user.clone());
        match identity {
            Some(_) => {
                self.unauthenticated_since = None;
                self.pending = None;
            }
            None => self.unauthenticated_since = Some(Instant::now()),
        }
        self.identity = identity;
    }
}

fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

fn integer(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn lower(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

/// Redis's rule for client names and library names: printable ASCII without spaces.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|b| *b > b' ' && *b <= b'~')
}

fn arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

/// Redis's refusal of a command the user's role does not allow.
pub fn no_permission(principal: &Principal, command: &str) -> Reply {
    Reply::Error(format!(
        "NOPERM User {} has no permissions to run the '{command}' command",
        principal.user
    ))
}

impl Session {
    /// Checks the connection's identity again if the users changed since it authenticated: a
    /// removed user or a changed secret leaves the connection unauthenticated.
    pub(super) fn recheck(&mut self) {
        let Some(auth) = self.node.auth().cloned() else {
            return;
        };
        let generation = auth.generation.load(Ordering::Acquire);
        let Some(identity) = &self.conn.identity else {
            return;
        };
        if identity.generation == generation {
            return;
        }
        let users = auth.users.read().clone();
        match users.verify(&identity.principal.user, &identity.secret) {
            Ok(principal) => {
                let identity = self.conn.identity.as_mut().expect("checked above");
                identity.principal = principal;
                identity.generation = generation;
            }
            Err(_) => {
                tracing::debug!(user = %identity.principal.user, "RESP connection's user no longer valid after a users reload");
                self.conn.set_identity(None);
            }
        }
    }

    /// Whether `required` is allowed: no users configured, or an authenticated user with that
    /// role. `Err` is Redis's refusal (`NOAUTH` or `NOPERM`), counted.
    pub(super) fn check_role(&self, required: Role, command: &str) -> Result<(), Reply> {
        if self.node.auth().is_none() {
            return Ok(());
        }
        let security = &self.node.metrics().security;
        match self.conn.principal() {
            None => {
                security.record_auth_failure("missing");
                Err(Reply::Error(NOAUTH.to_owned()))
            }
            Some(principal) if principal.role < required => {
                security.record_auth_failure("permission_denied");
                Err(no_permission(principal, command))
            }
            Some(_) => Ok(()),
        }
    }

    /// Checks `user` and `secret` against the node's users under the failure limiter.
    fn authenticate(&mut self, user: &[u8], secret: &[u8]) -> Result<(), Reply> {
        let Some(auth) = self.node.auth().cloned() else {
            return Err(Reply::Error(NO_USERS.to_owned()));
        };
        let security = &self.node.metrics().security;
        let now = std::time::Instant::now();
        let ip = self.conn.info().addr().map(|a| a.ip());
        if let Some(ip) = ip
            && let Err(error) = auth.limiter.check(ip, now)
        {
            security.record_auth_failure(error.as_label());
            return Err(Reply::Error(format!("WRONGPASS {error}")));
        }
        let generation = auth.generation.load(Ordering::Acquire);
        let verified = match std::str::from_utf8(user) {
            Ok(user) => {
                let users = auth.users.read().clone();
                users.verify(user, secret)
            }
            Err(_) => Err(AuthError::Invalid),
        };
        match verified {
            Ok(principal) => {
                security.record_auth_success();
                self.conn.set_identity(Some(Identity {
                    principal,
                    secret: secret.into(),
                    generation,
                }));
                Ok(())
            }
            Err(error) => {
                if let Some(ip) = ip {
                    auth.limiter.record_failure(ip, now);
                }
                security.record_auth_failure(error.as_label());
                Err(Reply::Error(WRONGPASS.to_owned()))
            }
        }
    }

    /// `AUTH [user] secret`.
    pub(super) fn auth(&mut self, rest: &[Bytes]) -> Reply {
        let (user, secret): (&[u8], &[u8]) = match rest {
            [secret] => (b"default", secret),
            [user, secret] => (user, secret),
            _ => return syntax_error(),
        };
        match self.authenticate(user, secret) {
            Ok(()) => Reply::OK,
            Err(reply) => reply,
        }
    }

    /// `HELLO [protover [AUTH user secret] [SETNAME name]]`.
    pub(super) fn hello(&mut self, rest: &[Bytes]) -> Reply {
        let mut resp3 = self.resp3;
        let mut credentials = None;
        let mut name = None;
        if let Some(version) = rest.first() {
            match integer(version) {
                Some(2) => resp3 = false,
                Some(3) => resp3 = true,
                Some(_) => return Reply::Error("NOPROTO unsupported protocol version".to_owned()),
                None => return Reply::err("Protocol version is not an integer or out of range"),
            }
            let mut options = rest[1..].iter();
            while let Some(option) = options.next() {
                match lower(option).as_str() {
                    "auth" => match (options.next(), options.next()) {
                        (Some(user), Some(secret)) => credentials = Some((user, secret)),
                        _ => {
                            return Reply::err(format!(
                                "Syntax error in HELLO option '{}'",
                                String::from_utf8_lossy(option)
                            ));
                        }
                    },
                    "setname" => match options.next() {
                        Some(value) => name = Some(value.clone()),
                        None => {
                            return Reply::err(format!(
                                "Syntax error in HELLO option '{}'",
                                String::from_utf8_lossy(option)
                            ));
                        }
                    },
                    _ => {
                        return Reply::err(format!(
                            "Syntax error in HELLO option '{}'",
                            String::from_utf8_lossy(option)
                        ));
                    }
                }
            }
        }
        if let Some((user, secret)) = credentials
            && let Err(reply) = self.authenticate(user, secret)
        {
            return reply;
        }
        if self.node.auth().is_some() && self.conn.identity.is_none() {
            self.node.metrics().security.record_auth_failure("missing");
            return Reply::Error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
                 HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client \
                 and select the RESP protocol version at the same time"
                    .to_owned(),
            );
        }
        if let Some(name) = name {
            if !valid_name(&name) {
                return Reply::err(
                    "Client names cannot contain spaces, newlines or special characters.",
                );
            }
            self.conn.info().state.lock().name = (!name.is_empty()).then_some(name);
        }
        self.resp3 = resp3;
        self.conn.info().state.lock().resp3 = resp3;
        let text = |s: &str| Reply::bulk(Bytes::copy_from_slice(s.as_bytes()));
        Reply::Map(vec![
            (text("server"), text("redis")),
            (text("version"), text(REDIS_VERSION)),
            (text("proto"), Reply::Integer(if resp3 { 3 } else { 2 })),
            (
                text("id"),
                Reply::Integer(i64::try_from(self.conn.info().id).unwrap_or(i64::MAX)),
            ),
            (text("mode"), text("cluster")),
            (text("role"), text("master")),
            (text("modules"), Reply::Array(Vec::new())),
        ])
    }

    /// `RESET`: RESP2, no name, no-evict and no-touch off, and unauthenticated when users are
    /// configured (the authentication deadline starts again).
    pub(super) fn reset(&mut self) -> Reply {
        self.resp3 = false;
        // Back to READWRITE and the default routing and consistency, as a new connection.
        self.reset_cluster_state();
        {
            let mut state = self.conn.info().state.lock();
            state.resp3 = false;
            state.name = None;
            state.no_evict = false;
            state.no_touch = false;
        }
        if self.node.auth().is_some() {
            self.conn.set_identity(None);
        }
        Reply::Simple("RESET")
    }

    /// `CLIENT <subcommand> ...`.
    pub(super) fn client(&mut self, rest: &[Bytes], registry: &Registry) -> Reply {
        let Some(sub) = rest.first() else {
            return arity("client");
        };
        let sub = lower(sub);
        let args = &rest[1..];
        let info = self.conn.info().clone();
        match (sub.as_str(), args) {
            ("setname", [name]) => {
                if !valid_name(name) {
                    return Reply::err(
                        "Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                info.state.lock().name = (!name.is_empty()).then(|| name.clone());
                Reply::OK
            }
            ("getname", []) => info
                .state
                .lock()
                .name
                .clone()
                .map_or(Reply::Nil, Reply::Bulk),
            ("id", []) => Reply::Integer(i64::try_from(info.id).unwrap_or(i64::MAX)),
            ("info", []) => Reply::bulk(info.line()),
            ("setinfo", [attribute, value]) => {
                let attribute = lower(attribute);
                if attribute != "lib-name" && attribute != "lib-ver" {
                    return Reply::err(format!("Unrecognized option '{attribute}'"));
                }
                if !valid_name(value) {
                    return Reply::err(format!(
                        "{attribute} cannot contain spaces, newlines or special characters."
                    ));
                }
                let value = (!value.is_empty()).then(|| value.clone());
                let mut state = info.state.lock();
                if attribute == "lib-name" {
                    state.lib_name = value;
                } else {
                    state.lib_ver = value;
                }
                Reply::OK
            }
            ("no-evict" | "no-touch", [switch]) => {
                let on = match lower(switch).as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return syntax_error(),
                };
                let mut state = info.state.lock();
                if sub == "no-evict" {
                    state.no_evict = on;
                } else {
                    state.no_touch = on;
                }
                Reply::OK
            }
            ("list", filter) => {
                if let Err(reply) = self.check_role(Role::Admin, "client|list") {
                    return reply;
                }
                client_list(registry, filter)
            }
            ("setname" | "getname" | "id" | "info" | "setinfo" | "no-evict" | "no-touch", _) => {
                arity(&format!("client|{sub}"))
            }
            _ => Reply::err(format!(
                "unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&rest[0])
            )),
        }
    }
}

/// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id ...]`.
fn client_list(registry: &Registry, filter: &[Bytes]) -> Reply {
    let mut clients = registry.snapshot();
    match filter {
        [] => {}
        [option, kind] if lower(option) == "type" => match lower(kind).as_str() {
            "normal" => {}
            "master" | "replica" | "slave" | "pubsub" => clients.clear(),
            _ => {
                return Reply::err(format!(
                    "Unknown client type '{}'",
                    String::from_utf8_lossy(kind)
                ));
            }
        },
        [option, ids @ ..] if lower(option) == "id" && !ids.is_empty() => {
            let mut wanted = Vec::with_capacity(ids.len());
            for id in ids {
                match integer(id).and_then(|id| u64::try_from(id).ok()) {
                    Some(id) if id > 0 => wanted.push(id),
                    _ => return Reply::err("Invalid client ID"),
                }
            }
            clients.retain(|c| wanted.contains(&c.id));
        }
        _ => return syntax_error(),
    }
    let mut text = String::new();
    for client in clients {
        text.push_str(&client.line());
    }
    Reply::bulk(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_lines_have_redis_fields_in_order() {
        let registry = Registry::new(6479);
        let a = registry.register(
            Some("127.0.0.1:5000".parse().unwrap()),
            Some("127.0.0.1:6479".parse().unwrap()),
            9,
        );
        a.info
            .touch(super::super::table::lookup(b"get").expect("get"));
        a.info.state.lock().name = Some(Bytes::from_static(b"worker"));
        let line = a.info.line();
        assert!(line.ends_with('\n'), "{line}");
        let fields: Vec<(&str, &str)> = line
            .trim_end()
            .split(' ')
            .map(|f| f.split_once('=').expect("key=value"))
            .collect();
        let names: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            &names[..9],
            [
                "id", "addr", "laddr", "fd", "name", "age", "idle", "flags", "db"
            ]
        );
        assert_eq!(&names[names.len() - 3..], ["resp", "lib-name", "lib-ver"]);
        let get = |k: &str| fields.iter().find(|(n, _)| *n == k).unwrap().1;
        assert_eq!(get("addr"), "127.0.0.1:5000");
        assert_eq!(get("name"), "worker");
        assert_eq!(get("cmd"), "get");
        assert_eq!(get("flags"), "N");
        assert_eq!(get("user"), "default");
        let b = registry.register(None, None, -1);
        assert_eq!(registry.len(), 2);
        let Reply::Bulk(list) = client_list(&registry, &[]) else {
            panic!("a bulk string")
        };
        assert_eq!(list.iter().filter(|b| **b == b'\n').count(), 2);
        let only_b = [
            Bytes::from_static(b"ID"),
            Bytes::from(b.info.id.to_string()),
        ];
        let Reply::Bulk(list) = client_list(&registry, &only_b) else {
            panic!("a bulk string")
        };
        assert!(list.starts_with(format!("id={} ", b.info.id).as_bytes()));
        assert_eq!(
            client_list(
                &registry,
                &[Bytes::from_static(b"TYPE"), Bytes::from_static(b"x")]
            ),
            Reply::err("Unknown client type 'x'")
        );
        drop(a);
        assert_eq!(registry.len(), 1, "a closed connection leaves the list");
        assert_eq!(registry.connections_received.load(Ordering::Relaxed), 2);
    }
}
