//! [`Connector`]: a custom way to reach nodes, for networks the default TCP dialing cannot use
//! (a simulated network, a SOCKS proxy, a Unix socket relay, a test that injects faults).
//!
//! The connector only makes byte streams: the client keeps its own HTTP/2 and gRPC stack, its
//! timeouts, keepalives and credentials on top, and TLS too when
//! [`ClientBuilder::tls`](crate::ClientBuilder::tls) is set. So the public API names no
//! transport library's type.

use std::{fmt, future::Future, io, pin::Pin, sync::Arc};

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to a node, as a [`Connector`] makes it: anything readable and writable with
/// tokio's traits (a `tokio::net::TcpStream`, a `UnixStream`, an in-memory duplex, ...).
pub trait NodeStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> NodeStream for T {}

/// The future a [`Connector`] returns: the stream, or why the node could not be reached.
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<Box<dyn NodeStream>>> + Send>>;

/// Makes the byte stream of each connection to a node, given the node's `host:port`
/// (a seed as configured, or a member's address from the topology).
///
/// It is called each time a connection is opened: at connect for the seeds, then lazily when a
/// request first goes to a node, and again when a broken connection is re-dialed. An error counts
/// as a connection that could not be made: the request was certainly not sent, so it fails over
/// to another replica and may be retried whatever the operation.
///
/// ```no_run
/// # async fn run() -> Result<(), ringcache::Error> {
/// use ringcache::{Client, Connector, NodeStream};
///
/// let connector = Connector::new(|addr: &str| {
///     let addr = addr.to_owned();
///     Box::pin(async move {
///         let stream = tokio::net::TcpStream::connect(&addr).await?;
///         stream.set_nodelay(true)?;
///         Ok(Box::new(stream) as Box<dyn NodeStream>)
///     })
/// });
/// let client = Client::builder()
///     .seeds(["127.0.0.1:7379"])
///     .connector(connector)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connector(Arc<dyn Fn(&str) -> ConnectFuture + Send + Sync>);

impl Connector {
    /// A connector from a function of the node's `host:port`.
    pub fn new<F>(connect: F) -> Self
    where
        F: Fn(&str) -> ConnectFuture + Send + Sync + 'static,
    {
        Connector(Arc::new(connect))
    }

    /// Opens a stream to `addr`.
    pub(crate) fn connect(&self, addr: &str) -> ConnectFuture {
        (self.0)(addr)
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connector(custom)")
    }
}
