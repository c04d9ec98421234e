//! The node's view of the cluster: the current topology, the ring derived from it, and pooled
//! connections to peers for forwarding.
//!
//! A view is immutable; a new topology replaces the whole view atomically (a `watch` channel of
//! `Arc<ClusterView>`), so a request sees one consistent topology and ring from start to end.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ringcache_proto::placement::{ReplicaSet, Ring};
use ringcache_proto::topology::{Member, NodeState, Topology};
use ringcache_proto::v1::{self, cache_client::CacheClient, internal_client::InternalClient};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::known::Quorum;
use crate::peer::{PeerError, PeerErrorKind};
use crate::tls::PeerTls;

/// How often an idle peer connection is pinged, and how long a ping may go unanswered before
/// the connection is dropped and redialled. A connection a partition black-holed (no RST, no
/// FIN) otherwise swallows every call to that peer until it times out; at 2 s + 2 s calls fail
/// over to a fresh connection within about 4 s instead of 15 s (found by the simulation).
const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// One topology with its ring and wire form.
#[derive(Debug)]
pub struct ClusterView {
    /// The members.
    pub topology: Topology,
    /// The ring of the range-owning members.
    pub ring: Ring,
    /// The topology as sent to clients.
    pub wire: v1::Topology,
    /// The known cluster size and how much of it this view holds (minority protection).
    pub quorum: Quorum,
}

impl ClusterView {
    /// The view of `topology`, with the known members' counts.
    pub fn new(topology: Topology, quorum: Quorum) -> Self {
        let ring = Ring::new(&topology);
        let wire = v1::Topology::from(&topology);
        Self {
            topology,
            ring,
            wire,
            quorum,
        }
    }

    /// The replicas a key with `in_ring` replicas in this ring counts for its consistency level:
    /// the replication factor capped by the known cluster size, never by the live ring
    /// ([`Quorum::replicas`]).
    pub fn replicas_for_level(&self, in_ring: usize) -> usize {
        let factor = usize::try_from(self.topology.replication_factor()).unwrap_or(usize::MAX);
        self.quorum.replicas(factor, in_ring)
    }

    /// The replicas of `key`.
    pub fn replicas(&self, key: &[u8]) -> ReplicaSet<'_> {
        self.ring.replicas(key)
    }

    /// Where a request for `key` should be served when it reaches `self_id`: `None` to serve it
    /// here (this node is a replica, or the ring is empty), else the replica to forward it to:
    /// the primary, or while the primary is restarting (away, or catching up) the first replica
    /// that is not.
    pub fn forward_target(&self, key: &[u8], self_id: &str) -> Option<&Member> {
        if self.ring.holds_every_key(self_id) {
            return None;
        }
        let replicas = self.ring.replicas(key);
        if replicas.is_empty() || replicas.contains(self_id) {
            return None;
        }
        let mut members = replicas.iter().filter_map(|id| self.topology.member(id));
        let primary = members.next();
        primary
            .filter(|m| m.state != NodeState::Restarting)
            .or_else(|| members.find(|m| m.state != NodeState::Restarting))
            .or(primary)
    }
}

impl ClusterView {
    /// Where a GetOrLease for `key` is decided when it reaches `self_id`: `None` when this node
    /// is the key's primary (the first of its replicas that is not Restarting; the ring is
    /// empty), else that primary. Unlike [`Self::forward_target`] a replica other than the
    /// primary forwards too: the primary alone keeps the key's lease.
    pub fn lease_target(&self, key: &[u8], self_id: &str) -> Option<&Member> {
        let replicas = self.ring.replicas(key);
        let mut members = replicas.iter().filter_map(|id| self.topology.member(id));
        let first = members.next();
        let primary = first
            .filter(|m| m.state != NodeState::Restarting)
            .or_else(|| members.find(|m| m.state != NodeState::Restarting))
            .or(first)?;
        (primary.node_id != self_id).then_some(primary)
    }
}

/// A byte stream to a peer's cluster port, as a [`PeerConnector`] opens it.
pub trait PeerIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PeerIo for T {}

/// What a [`PeerConnector`] returns: the opened stream.
pub type PeerConnectFuture = Pin<Box<dyn Future<Output = io::Result<Box<dyn PeerIo>>> + Send>>;

/// Opens connections to peers' cluster ports in place of TCP (a simulated network; tests). It
/// gets the peer's URI (`http://host:port`); TLS, when configured, still runs on top.
#[derive(Clone)]
pub struct PeerConnector(Arc<dyn Fn(Uri) -> PeerConnectFuture + Send + Sync>);

impl PeerConnector {
    /// A connector calling `connect` for every new connection.
    pub fn new<F>(connect: F) -> Self
    where
        F: Fn(Uri) -> PeerConnectFuture + Send + Sync + 'static,
    {
        Self(Arc::new(connect))
    }
}

impl fmt::Debug for PeerConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerConnector")
    }
}

/// Lazily connected gRPC channels to peers, keyed by address; one HTTP/2 connection per peer
/// shared by every service.
#[derive(Debug)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    /// Mutual TLS to peers' cluster ports (`None`: plaintext).
    tls: Mutex<Option<PeerTls>>,
    /// Opens connections instead of TCP (`None`: TCP).
    connector: Mutex<Option<PeerConnector>>,
    max_message_bytes: usize,
    connect_timeout: Duration,
    /// The address outgoing connections come from (the node's bind address, so firewalls and
    /// fault tests can tell nodes apart); `None` lets the system choose.
    local_ip: Option<IpAddr>,
}

impl Peers {
    /// An empty pool whose connections come from `local_ip` (unless it is unspecified).
    pub fn new(max_message_bytes: usize, connect_timeout: Duration, local_ip: IpAddr) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            tls: Mutex::new(None),
            connector: Mutex::new(None),
            max_message_bytes,
            connect_timeout,
            local_ip: (!local_ip.is_unspecified()).then_some(local_ip),
        }
    }

    /// Uses `tls` for connections made from now on (open ones are dropped from the pool and
    /// finish their calls).
    pub fn set_tls(&self, tls: PeerTls) {
        *self.tls.lock() = Some(tls);
        self.channels.lock().clear();
    }

    /// Opens connections made from now on with `connector` instead of TCP (open ones are dropped
    /// from the pool and finish their calls).
    pub fn set_connector(&self, connector: PeerConnector) {
        *self.connector.lock() = Some(connector);
        self.channels.lock().clear();
    }

    /// The channel to a peer's cluster port `cluster_addr` (`host:port`), created on first use.
    /// Connections are made lazily and re-established by tonic after failures; HTTP/2 keepalive
    /// notices dead ones.
    pub fn channel(&self, cluster_addr: &str) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(cluster_addr) {
            return Ok(channel.clone());
        }
        if cluster_addr.is_empty() {
            return Err(PeerError::new(
                PeerErrorKind::Unreachable,
                "the peer has no cluster address (it serves no cluster port)",
            ));
        }
        let tls = self.tls.lock().clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            Endpoint::from_shared(format!("{scheme}://{cluster_addr}")).map_err(|e| {
                PeerError::new(
                    PeerErrorKind::Local,
                    format!("bad peer address {cluster_addr:?}: {e}"),
                )
            })?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls.client_config()).map_err(|e| {
                PeerError::new(
                    PeerErrorKind::Local,
                    format!("cluster TLS for {cluster_addr:?}: {e}"),
                )
            })?;
        }
        let endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .local_address(self.local_ip)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = match self.connector.lock().clone() {
            Some(PeerConnector(connect)) => {
                endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
                    let connecting = connect(uri);
                    async move { connecting.await.map(hyper_util::rt::TokioIo::new) }
                }))
            }
            None => endpoint.connect_lazy(),
        };
        channels.insert(cluster_addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The Cache client for a peer's `cluster_addr`.
    pub fn cache_client(&self, cluster_addr: &str) -> Result<CacheClient<Channel>, PeerError> {
        Ok(CacheClient::new(self.channel(cluster_addr)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    /// The Internal client for a peer's `cluster_addr`.
    pub fn internal_client(
        &self,
        cluster_addr: &str,
    ) -> Result<InternalClient<Channel>, PeerError> {
        Ok(InternalClient::new(self.channel(cluster_addr)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    /// Drops clients of addresses no member uses any more.
    pub fn retain(&self, topology: &Topology) {
        let mut channels = self.channels.lock();
        channels.retain(|addr, _| topology.members().iter().any(|m| &m.cluster_addr == addr));
    }
}

/// A view of members with the given ids and states (weight 1, no addresses), R = `replication`,
/// for tests.
#[cfg(test)]
pub(crate) fn test_view(states: &[(&str, NodeState)], replication: u32) -> ClusterView {
    let members = states
        .iter()
        .map(|(id, state)| Member::for_test(*id).with_state(*state))
        .collect();
    ClusterView::new(
        Topology::new(members, replication, 64),
        crate::known::Quorum::alone(),
    )
}

#[cfg(test)]
mod lease_target_tests {
    use super::*;

    fn view(states: &[(&str, NodeState)]) -> ClusterView {
        test_view(states, 3)
    }

    #[test]
    fn only_the_primary_decides_leases_even_where_every_node_is_a_replica() {
        use NodeState::{Active, Restarting};
        let all = view(&[("a", Active), ("b", Active), ("c", Active)]);
        let replicas: Vec<String> = all.replicas(b"k").iter().map(str::to_owned).collect();
        let primary = &replicas[0];
        assert_eq!(all.lease_target(b"k", primary), None);
        for other in &replicas[1..] {
            // A replica serves a plain Get itself, but forwards a GetOrLease.
            assert!(all.forward_target(b"k", other).is_none());
            assert_eq!(
                all.lease_target(b"k", other).map(|m| m.node_id.as_str()),
                Some(primary.as_str())
            );
        }
        // A restarting primary hands the decision to the next replica.
        let states: Vec<(&str, NodeState)> = replicas
            .iter()
            .map(|id| {
                let state = if id == primary { Restarting } else { Active };
                (id.as_str(), state)
            })
            .collect();
        let restarting = view(&states);
        assert_eq!(restarting.lease_target(b"k", &replicas[1]), None);
        assert_eq!(
            restarting
                .lease_target(b"k", primary)
                .map(|m| m.node_id.as_str()),
            Some(replicas[1].as_str())
        );
        // An empty ring: decided where it arrives.
        assert_eq!(view(&[]).lease_target(b"k", "a"), None);
    }
}
