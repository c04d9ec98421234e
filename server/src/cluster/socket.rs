//! The datagram socket gossip runs on: a UDP socket in production, any other datagram transport
//! (a simulated network) through the same trait.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

/// A future of a [`GossipSocket`] operation.
pub type SocketFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// What the gossip driver needs of its socket. `recv_from` must be cancel safe (the driver
/// polls it in a `select!`): a datagram is either returned or left for the next call.
pub trait GossipSocket: Send + Sync + 'static {
    /// The address the socket is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Sends one datagram to `to`; returns the bytes sent.
    fn send_to<'a>(&'a self, datagram: &'a [u8], to: SocketAddr) -> SocketFuture<'a, usize>;

    /// Receives one datagram into `buf`; returns its length and sender.
    fn recv_from<'a>(&'a self, buf: &'a mut [u8]) -> SocketFuture<'a, (usize, SocketAddr)>;
}

impl GossipSocket for tokio::net::UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }

    fn send_to<'a>(&'a self, datagram: &'a [u8], to: SocketAddr) -> SocketFuture<'a, usize> {
        Box::pin(tokio::net::UdpSocket::send_to(self, datagram, to))
    }

    fn recv_from<'a>(&'a self, buf: &'a mut [u8]) -> SocketFuture<'a, (usize, SocketAddr)> {
        Box::pin(tokio::net::UdpSocket::recv_from(self, buf))
    }
}
