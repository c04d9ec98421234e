//! Open connections on the gRPC listener: a count, a cap (`max_connections`) and the stream
//! adapter that keeps both.
//!
//! [`limit`] wraps any incoming connection stream (what [`crate::Node::serve_with_incoming`]
//! serves): a connection accepted while fewer than the cap are open is wrapped in [`Counted`],
//! which holds its place until the connection is dropped; one accepted at the cap is closed at
//! once (dropped before any byte is read, so the peer sees the connection closed) and counted as
//! rejected. Node-to-node connections (replication, forwarding, hand-off) arrive on the same
//! listener and count too.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// The connection count and cap of one node.
#[derive(Debug)]
pub struct Connections {
    open: AtomicUsize,
    rejected: AtomicU64,
    max: usize,
}

impl Connections {
    /// No connection open yet; at most `max` at once (0 = unlimited).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            max,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once because the cap was reached, since start.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The cap (0 = unlimited).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes a place for one more connection, or counts a rejection at the cap.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (self.max == 0 || open < self.max).then_some(open + 1)
            })
            .is_ok();
        if admitted {
            Some(Slot(self.clone()))
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// One counted place; given back when dropped.
#[derive(Debug)]
struct Slot(Arc<Connections>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection that counts as open until it is dropped.
#[derive(Debug)]
pub struct Counted<IO> {
    inner: IO,
    _slot: Slot,
}

/// Admits the connections of `incoming` up to the cap of `connections`; closes and counts the
/// others. Accept errors pass through.
pub fn limit<I, IO, IE>(
    incoming: I,
    connections: Arc<Connections>,
) -> impl Stream<Item = Result<Counted<IO>, IE>> + Send + 'static
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: Send + 'static,
    IE: 'static,
{
    incoming.filter_map(move |accepted| match accepted {
        Ok(io) => match connections.admit() {
            Some(slot) => Some(Ok(Counted {
                inner: io,
                _slot: slot,
            })),
            None => {
                tracing::debug!(
                    max = connections.max(),
                    "max_connections reached: closing a new connection"
                );
                drop(io);
                None
            }
        },
        Err(error) => Some(Err(error)),
    })
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_over_the_cap_are_dropped_and_counted() {
        let connections = Connections::new(2);
        let accepted = tokio_stream::iter((0..4).map(Ok::<_, io::Error>));
        let admitted: Vec<_> = limit(accepted.map(|r| r.map(|_| tokio::io::empty())), {
            connections.clone()
        })
        .collect()
        .await;
        assert_eq!(admitted.len(), 2);
        assert_eq!((connections.open(), connections.rejected()), (2, 2));
        drop(admitted);
        assert_eq!(
            connections.open(),
            0,
            "dropping a connection frees its place"
        );
    }

    #[test]
    fn zero_means_unlimited() {
        let connections = Connections::new(0);
        let slots: Vec<_> = (0..1000).filter_map(|_| connections.admit()).collect();
        assert_eq!((slots.len(), connections.rejected()), (1000, 0));
        assert_eq!(connections.open(), 1000);
    }
}
