//! The pieces that put nodes and clients on turmoil's simulated network and clock: a wall clock
//! reading simulated time (with a per-node offset for skews and jumps), the gossip socket, the
//! peer connector and the incoming connections of a node, and the client's connector.
//!
//! Every type here is only usable inside a turmoil host (they talk to the simulated world of
//! the current thread). The simulation itself is `tests/tests/simulation.rs`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use ringcache_server::clock::Clock;
use ringcache_server::cluster::{GossipSocket, SocketFuture};
use ringcache_server::connections::RemoteAddr;
use ringcache_server::view::{PeerConnector, PeerIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where simulated wall-clock time starts: 2026-01-01T00:00:00Z, in unix ms.
pub const EPOCH_UNIX_MS: u64 = 1_767_225_600_000;

/// [`EPOCH_UNIX_MS`] as a `SystemTime`, for `turmoil::Builder::epoch`.
pub fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(EPOCH_UNIX_MS)
}

/// A node's wall clock: the simulation's time since [`EPOCH_UNIX_MS`] plus an offset the
/// simulation may change at any moment (skew, jumps; negative offsets run behind).
#[derive(Debug)]
pub struct SimClock {
    offset_ms: Arc<AtomicI64>,
    /// The last reading, returned when read outside the simulation (never moves backwards on
    /// its own account).
    last_ms: AtomicU64,
}

impl SimClock {
    /// A clock whose offset is `offset_ms` (shared: the simulation keeps the other handle).
    pub fn new(offset_ms: Arc<AtomicI64>) -> Self {
        Self {
            offset_ms,
            last_ms: AtomicU64::new(EPOCH_UNIX_MS),
        }
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let Some(since_epoch) = turmoil::since_epoch() else {
            return self.last_ms.load(Ordering::Relaxed);
        };
        let base = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
        let now =
            u64::try_from(base.saturating_add(self.offset_ms.load(Ordering::Relaxed))).unwrap_or(0);
        self.last_ms.store(now, Ordering::Relaxed);
        now
    }
}

/// Gossip on a turmoil UDP socket.
pub struct SimUdp(pub turmoil::net::UdpSocket);

impl fmt::Debug for SimUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimUdp")
            .field(&self.0.local_addr().ok())
            .finish()
    }
}

impl GossipSocket for SimUdp {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn send_to<'a>(&'a self, datagram: &'a [u8], to: SocketAddr) -> SocketFuture<'a, usize> {
        Box::pin(self.0.send_to(datagram, to))
    }

    fn recv_from<'a>(&'a self, buf: &'a mut [u8]) -> SocketFuture<'a, (usize, SocketAddr)> {
        Box::pin(self.0.recv_from(buf))
    }
}

/// A turmoil TCP connection, as the node's servers take it (with the peer's address).
pub struct SimTcp(pub turmoil::net::TcpStream);

impl fmt::Debug for SimTcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimTcp")
            .field(&self.0.peer_addr().ok())
            .finish()
    }
}

impl RemoteAddr for SimTcp {
    fn remote_addr(&self) -> Option<SocketAddr> {
        self.0.peer_addr().ok()
    }
}

impl AsyncRead for SimTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The connections accepted on a turmoil listener, as `Node::serve_with_incoming` takes them.
pub fn incoming(
    listener: turmoil::net::TcpListener,
) -> impl Stream<Item = io::Result<SimTcp>> + Send + 'static {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| SimTcp(stream));
        Some((accepted, listener))
    })
}

/// `host:port` of a URI (`http://host:port`).
fn authority(uri: &Uri) -> io::Result<String> {
    uri.authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))
}

/// Peer connections of a node over turmoil TCP.
pub fn peer_connector() -> PeerConnector {
    PeerConnector::new(|uri: Uri| {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(authority(&uri)?).await?;
            Ok(Box::new(stream) as Box<dyn PeerIo>)
        })
    })
}

/// Connections to nodes over turmoil TCP: the client's connector in the simulation (the client
/// runs its own HTTP/2 and gRPC stack over these streams, as over real TCP).
pub fn client_connector() -> ringcache::Connector {
    ringcache::Connector::new(|addr: &str| {
        let addr = addr.to_owned();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as Box<dyn ringcache::NodeStream>)
        })
    })
}

/// A lazily connecting raw gRPC channel to `addr` (`host:port`) over turmoil TCP, for tests that
/// call a node's services directly rather than through the client.
pub fn client_channel(addr: &str, connect_timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr:?}: {e}"))?
        .connect_timeout(connect_timeout);
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(|uri: Uri| async move {
            let stream = turmoil::net::TcpStream::connect(authority(&uri)?).await?;
            io::Result::Ok(hyper_util::rt::TokioIo::new(stream))
        })),
    )
}
