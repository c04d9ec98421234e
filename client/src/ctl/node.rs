//! Talking to one node directly: a connection, the `Cluster` and `Admin` calls ringctl makes, each
//! bounded by `--timeout`, and errors that read as one line ("cannot reach 127.0.0.1:7379:
//! connection refused").

use std::{error::Error as StdError, fmt, future::Future, time::Duration};

use bytes::Bytes;
use ringcache_proto::{
    topology::Topology,
    v1::{self as pb, admin_client::AdminClient, cluster_client::ClusterClient},
};
use tonic::{Code, Status, Streaming};

use super::security::Security;
use crate::{error::with_kind, security::NodeChannel};

/// Why a call to a node failed.
#[derive(Debug, Clone)]
pub(crate) enum NodeError {
    /// No connection could be made, or it broke.
    Unreachable { addr: String, reason: String },
    /// No answer within the timeout.
    Timeout {
        addr: String,
        call: &'static str,
        after: Duration,
    },
    /// The node refused the credentials (`UNAUTHENTICATED`) or the user's role
    /// (`PERMISSION_DENIED`).
    Denied {
        addr: String,
        call: &'static str,
        /// `false`: unauthenticated; `true`: permission denied.
        permission: bool,
        message: String,
        /// The `--user`, if any.
        user: Option<String>,
    },
    /// The node answered with an error.
    Rpc {
        addr: String,
        call: &'static str,
        reason: String,
    },
}

impl NodeError {
    /// Whether no connection could be made, or it broke.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(self, NodeError::Unreachable { .. })
    }

    /// The reason alone, for a table cell: `connection refused`, `no answer within 5s`.
    pub(crate) fn reason(&self) -> String {
        match self {
            NodeError::Unreachable { reason, .. } => format!("unreachable: {reason}"),
            NodeError::Timeout { call, after, .. } => {
                format!(
                    "no answer to {call} within {}",
                    super::fmt::duration(*after)
                )
            }
            NodeError::Denied {
                call,
                permission: false,
                message,
                ..
            } => format!("{call}: {}", with_kind("unauthenticated", message)),
            NodeError::Denied {
                call,
                permission: true,
                message,
                ..
            } => format!("{call}: {}", with_kind("permission denied", message)),
            NodeError::Rpc { call, reason, .. } => format!("{call}: {reason}"),
        }
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Unreachable { addr, reason } => write!(f, "cannot reach {addr}: {reason}"),
            NodeError::Timeout { addr, call, after } => write!(
                f,
                "{addr} did not answer {call} within {}",
                super::fmt::duration(*after)
            ),
            NodeError::Denied {
                addr,
                permission: false,
                message,
                user: None,
                ..
            } => write!(
                f,
                "{addr} requires credentials ({message}): give --user and --password-file"
            ),
            NodeError::Denied {
                addr,
                permission: false,
                message,
                user: Some(user),
                ..
            } => write!(
                f,
                "{addr} refused the credentials of user {user:?} ({message}): check --user and the password"
            ),
            NodeError::Denied {
                addr,
                call,
                permission: true,
                message,
                user,
            } => {
                let who = user
                    .as_ref()
                    .map_or_else(|| "no user".to_owned(), |u| format!("user {u:?}"));
                write!(
                    f,
                    "{addr}: {call}: permission denied ({message}): {who} lacks the role it needs"
                )
            }
            NodeError::Rpc { addr, call, reason } => write!(f, "{addr}: {call}: {reason}"),
        }
    }
}

impl StdError for NodeError {}

/// The most useful text of an error chain: an I/O error's kind in words when there is one
/// (`connection refused`), else the innermost message.
pub(crate) fn describe_chain(error: &(dyn StdError + 'static)) -> String {
    let mut innermost = error.to_string();
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(cause) = current {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return describe_io(io);
        }
        let text = cause.to_string();
        if !text.is_empty() {
            innermost = text;
        }
        current = cause.source();
    }
    one_line(&innermost)
}

fn describe_io(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let text = match error.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        ErrorKind::ConnectionReset => "connection reset".to_owned(),
        ErrorKind::ConnectionAborted => "connection aborted".to_owned(),
        ErrorKind::TimedOut => "connection timed out".to_owned(),
        ErrorKind::AddrNotAvailable => "address not available".to_owned(),
        _ => {
            let text = error.to_string();
            match text.find(" (os error") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        }
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => one_line(&(first.to_lowercase().collect::<String>() + chars.as_str())),
        None => text,
    }
}

/// A connection failure's reason, with what to do about the TLS flags when it suggests
/// something.
fn with_advice(reason: String, tls: bool) -> String {
    match crate::conn::TlsAdvice::of(&reason, tls) {
        Some(advice) => format!("{reason} ({})", advice.for_flags()),
        None => reason,
    }
}

/// A gRPC code in words, as its `Status` message would name it: `resource exhausted`,
/// `failed precondition`.
fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push(' ');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

/// Text on one line: newlines become spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How ringctl reaches nodes: the bound on connecting and on each call, and the TLS settings and
/// credentials of every connection.
#[derive(Debug, Clone)]
pub(crate) struct Dial {
    pub(crate) timeout: Duration,
    pub(crate) security: Security,
}

impl Dial {
    /// Connects to `addr` (`host:port`).
    pub(crate) async fn connect(&self, addr: &str) -> Result<NodeConn, NodeError> {
        NodeConn::connect(addr, self).await
    }
}

/// A connection to one node.
#[derive(Debug, Clone)]
pub(crate) struct NodeConn {
    addr: String,
    channel: NodeChannel,
    timeout: Duration,
    user: Option<String>,
    tls: bool,
}

impl NodeConn {
    /// Connects to `addr` (`host:port`), bounded by the dial's timeout, over TLS when it has TLS
    /// settings; every call carries its credentials.
    pub(crate) async fn connect(addr: &str, dial: &Dial) -> Result<Self, NodeError> {
        let timeout = dial.timeout;
        let unreachable = |reason: String| NodeError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let tls = dial.security.tls_config(timeout);
        let endpoint = crate::conn::endpoint(addr, timeout, tls.as_ref())
            .map_err(|e| unreachable(format!("bad address: {}", describe_chain(&e))))?;
        match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => Ok(NodeConn {
                addr: addr.to_owned(),
                channel: NodeChannel::new(channel, dial.security.authorization()),
                timeout,
                user: dial.security.user().map(str::to_owned),
                tls: tls.is_some(),
            }),
            Ok(Err(error)) => Err(unreachable(with_advice(
                describe_chain(&error),
                tls.is_some(),
            ))),
            Err(_) => Err(unreachable(format!(
                "no connection within {}",
                super::fmt::duration(timeout)
            ))),
        }
    }

    /// The node's `host:port`.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    fn cluster(&self) -> ClusterClient<NodeChannel> {
        ClusterClient::new(self.channel.clone())
    }

    fn admin(&self) -> AdminClient<NodeChannel> {
        AdminClient::new(self.channel.clone())
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Runs one call under the timeout and maps its failure.
    async fn call<T>(
        &self,
        call: &'static str,
        future: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, NodeError> {
        match tokio::time::timeout(self.timeout, future).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.status_error(call, &status)),
            Err(_) => Err(NodeError::Timeout {
                addr: self.addr.clone(),
                call,
                after: self.timeout,
            }),
        }
    }

    fn status_error(&self, call: &'static str, status: &Status) -> NodeError {
        let addr = self.addr.clone();
        let local = StdError::source(status).is_some();
        match status.code() {
            Code::DeadlineExceeded | Code::Cancelled if !local => NodeError::Timeout {
                addr,
                call,
                after: self.timeout,
            },
            Code::Unavailable | Code::Unknown | Code::Cancelled if local => {
                NodeError::Unreachable {
                    addr,
                    reason: with_advice(describe_chain(status), self.tls),
                }
            }
            code @ (Code::Unauthenticated | Code::PermissionDenied) => NodeError::Denied {
                addr,
                call,
                permission: code == Code::PermissionDenied,
                message: one_line(status.message()),
                user: self.user.clone(),
            },
            code => {
                let name = code_name(code);
                let reason = with_kind(&name, &one_line(status.message()));
                NodeError::Rpc { addr, call, reason }
            }
        }
    }

    /// `Cluster.GetTopology`, validated.
    pub(crate) async fn topology(&self) -> Result<Topology, NodeError> {
        let mut client = self.cluster();
        let wire = self
            .call(
                "GetTopology",
                client.get_topology(self.request(pb::GetTopologyRequest {})),
            )
            .await?;
        Topology::try_from(&wire).map_err(|e| NodeError::Rpc {
            addr: self.addr.clone(),
            call: "GetTopology",
            reason: format!("invalid topology: {e}"),
        })
    }

    /// `Cluster.NodeInfo`.
    pub(crate) async fn node_info(&self) -> Result<pb::NodeInfoResponse, NodeError> {
        let mut client = self.cluster();
        self.call(
            "NodeInfo",
            client.node_info(self.request(pb::NodeInfoRequest {})),
        )
        .await
    }

    /// `Cluster.WatchTopology`: the stream of topologies (no timeout on the stream itself).
    pub(crate) async fn watch(&self) -> Result<Streaming<pb::Topology>, NodeError> {
        let mut client = self.cluster();
        self.call(
            "WatchTopology",
            client.watch_topology(pb::WatchTopologyRequest {}),
        )
        .await
    }

    /// The error of a watch stream that failed.
    pub(crate) fn stream_error(&self, status: &Status) -> NodeError {
        self.status_error("WatchTopology", status)
    }

    /// `Admin.Inspect`.
    pub(crate) async fn inspect(&self, key: Bytes) -> Result<pb::InspectResponse, NodeError> {
        let mut client = self.admin();
        self.call(
            "Inspect",
            client.inspect(self.request(pb::InspectRequest { key })),
        )
        .await
    }

    /// `Admin.HotKeys`.
    pub(crate) async fn hot_keys(&self, limit: u32) -> Result<pb::HotKeysResponse, NodeError> {
        let mut client = self.admin();
        self.call(
            "HotKeys",
            client.hot_keys(self.request(pb::HotKeysRequest { limit })),
        )
        .await
    }

    /// `Admin.RebalanceStatus`.
    pub(crate) async fn rebalance_status(&self) -> Result<pb::RebalanceStatusResponse, NodeError> {
        let mut client = self.admin();
        self.call(
            "RebalanceStatus",
            client.rebalance_status(self.request(pb::RebalanceStatusRequest {})),
        )
        .await
    }

    /// `Admin.Leave`; with `restart`, a stop for a quick restart that keeps the data.
    pub(crate) async fn leave(&self, restart: bool) -> Result<pb::LeaveResponse, NodeError> {
        let mut client = self.admin();
        self.call(
            "Leave",
            client.leave(self.request(pb::LeaveRequest { restart })),
        )
        .await
    }

    /// `Admin.Forget`.
    pub(crate) async fn forget(&self, node_id: &str) -> Result<pb::ForgetResponse, NodeError> {
        let mut client = self.admin();
        let request = pb::ForgetRequest {
            node_id: node_id.to_owned(),
        };
        self.call("Forget", client.forget(self.request(request)))
            .await
    }
}

pub(crate) use crate::router::join_all;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_unreachable_in_one_line() {
        let addr = ringcache_test_support::closed_addr();
        let dial = Dial {
            timeout: Duration::from_secs(2),
            security: Security::default(),
        };
        let error = dial.connect(&addr).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("cannot reach {addr}: connection refused")
        );
        assert_eq!(error.reason(), "unreachable: connection refused");
    }

    #[tokio::test]
    async fn a_node_s_message_that_names_its_code_is_not_prefixed_again() {
        let conn = NodeConn {
            addr: "n1:7379".into(),
            channel: NodeChannel::new(
                tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
                None,
            ),
            timeout: Duration::from_secs(1),
            user: None,
            tls: false,
        };
        let cases = [
            (
                Status::unavailable("unavailable: node is leaving"),
                "RebalanceStatus: unavailable: node is leaving",
            ),
            (
                Status::unavailable("node is leaving"),
                "RebalanceStatus: unavailable: node is leaving",
            ),
            (
                Status::resource_exhausted("memory full: 5 more bytes needed"),
                "RebalanceStatus: resource exhausted: memory full: 5 more bytes needed",
            ),
            (
                Status::failed_precondition("x"),
                "RebalanceStatus: failed precondition: x",
            ),
            (Status::internal(""), "RebalanceStatus: internal"),
            (
                Status::permission_denied("permission denied: needs admin"),
                "RebalanceStatus: permission denied: needs admin",
            ),
            (
                Status::unauthenticated("bad credentials"),
                "RebalanceStatus: unauthenticated: bad credentials",
            ),
        ];
        for (status, reason) in cases {
            let error = conn.status_error("RebalanceStatus", &status);
            assert_eq!(error.reason(), reason, "{status:?}");
        }
    }

    #[test]
    fn io_errors_read_as_words() {
        let io = std::io::Error::other("Something\nbroke (os error 5)");
        assert_eq!(describe_chain(&io), "something broke");
    }
}
