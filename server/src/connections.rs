//! Admission of gRPC connections: counts and caps, the TLS handshake, the HTTP/2 preface and the
//! authentication deadline, before tonic sees a connection.
//!
//! [`secure_incoming`] wraps any incoming connection stream (what
//! [`crate::Node::serve_with_incoming`] serves). A connection accepted while fewer than the cap
//! are open takes a counted place until it is dropped; one accepted at the cap is closed at once
//! (before any byte is read) and counted. On the client port a second cap bounds connections
//! that have not authenticated yet, so idle or slow strangers cannot use up `max_connections`.
//! The TLS handshake and the HTTP/2 preface then run on a task per connection under
//! `handshake_timeout`; a connection that is silent, too slow or speaks something else is
//! closed and counted by reason. When users are configured the connection must also make an
//! authenticated request within the same timeout. The cluster port has its own listener and
//! cap, so client connections never lock peers out.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::auth::Principal;
use crate::tls::ReloadableTls;

/// The connection count and cap of one node.
#[derive(Debug)]
pub struct Connections {
    open: AtomicUsize,
    rejected: AtomicU64,
    refused: [AtomicU64; Refused::ALL.len()],
    max: usize,
}

impl Connections {
    /// No connection open yet; at most `max` at once (0 = unlimited).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            refused: Default::default(),
            max,
        })
    }

    /// Connections closed before serving, for `reason`, since start.
    pub fn refused(&self, reason: Refused) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    fn count_refused(&self, reason: Refused) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
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
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Slot> {
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
            self.count_refused(Refused::TooMany);
            None
        }
    }
}

/// One counted place; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Connections>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The HTTP/2 connection preface every gRPC client sends first (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The peer address of a connection, when it has one (TCP); in-memory streams have none.
pub trait RemoteAddr {
    /// The other side's address.
    fn remote_addr(&self) -> Option<SocketAddr>;
}

impl RemoteAddr for TcpStream {
    fn remote_addr(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }
}

impl RemoteAddr for tokio::io::DuplexStream {
    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }
}

/// What the request handlers learn about the connection a request came on (tonic puts it in
/// every request's extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address (`None` for in-memory connections).
    pub remote: Option<SocketAddr>,
    /// Shared with the connection: its authentication.
    pub state: Arc<ConnState>,
}

/// The authentication state of one connection.
#[derive(Debug)]
pub struct ConnState {
    authenticated: AtomicBool,
    /// When the connection was admitted (the base of `idle_since_ms`).
    created: tokio::time::Instant,
    /// Requests in progress (their responses not yet fully sent).
    active: AtomicUsize,
    /// Milliseconds after `created` at which `active` last dropped to 0.
    idle_since_ms: AtomicU64,
    /// The place this connection holds among the unauthenticated ones, given back once it
    /// authenticates.
    pending: Mutex<Option<Slot>>,
    /// The last `authorization` value that authenticated here, and who it named: a request that
    /// repeats it costs one comparison instead of a hash.
    /// The users generation it was checked against (a reload of the users invalidates it).
    cached: Mutex<Option<(Bytes, Principal, u64)>>,
}

impl Default for ConnState {
    fn default() -> Self {
        Self {
            authenticated: AtomicBool::new(false),
            created: tokio::time::Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            pending: Mutex::new(None),
            cached: Mutex::new(None),
        }
    }
}

impl ConnState {
    /// Requests in progress on this connection.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// How long the connection has had no request in progress (zero while one is).
    pub fn idle_for(&self) -> Duration {
        if self.active() > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.created.elapsed().saturating_sub(since)
    }

    /// Whether a request on this connection has authenticated (or none needs to).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    /// Marks the connection authenticated: its unauthenticated slot is freed and the
    /// authentication deadline no longer applies.
    pub fn mark_authenticated(&self) {
        if !self.authenticated.swap(true, Ordering::AcqRel) {
            self.pending.lock().take();
        }
    }

    /// Who `header` named when it last authenticated on this connection, if that was against
    /// the users of `generation` (the current one).
    pub fn cached_principal(&self, header: &[u8], generation: u64) -> Option<Principal> {
        let cached = self.cached.lock();
        match &*cached {
            Some((value, principal, checked))
                if *checked == generation && value.as_ref() == header =>
            {
                Some(principal.clone())
            }
            _ => None,
        }
    }

    /// Remembers that `header` authenticated as `principal` against the users of `generation`.
    pub fn cache(&self, header: &[u8], principal: Principal, generation: u64) {
        *self.cached.lock() = Some((Bytes::copy_from_slice(header), principal, generation));
        self.mark_authenticated();
    }
}

/// How a listener admits connections.
#[derive(Debug, Clone)]
pub struct AcceptPolicy {
    /// Open connections and their cap.
    pub open: Arc<Connections>,
    /// Connections not yet authenticated and their cap (`None`: not tracked).
    pub unauthenticated: Option<Arc<Connections>>,
    /// TLS, or plaintext when `None`.
    pub tls: Option<Arc<ReloadableTls>>,
    /// Deadline for the TLS handshake and the HTTP/2 preface, and, when `require_auth`, for the
    /// first authenticated request.
    pub handshake_timeout: Duration,
    /// Requests must authenticate (users are configured).
    pub require_auth: bool,
    /// Close a connection that has had no request in progress this long (`None`: never).
    /// Requests are counted by [`ActivityLayer`], which must then be in the router.
    pub idle_timeout: Option<Duration>,
}

/// A connection admitted by [`secure_incoming`]: TLS (or not) with the preface already checked,
/// counted until dropped.
pub struct Conn<IO> {
    inner: Rewind<MaybeTls<IO>>,
    info: ConnInfo,
    /// Closes the connection if it has not authenticated by then.
    auth_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The idle timeout and the timer of its next check.
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    _slot: Slot,
}

impl<IO> std::fmt::Debug for Conn<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("info", &self.info).finish()
    }
}

/// Why a new connection was closed before it served anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refused {
    /// Over `max_connections` (or the cluster port's cap).
    TooMany,
    /// Over the cap of connections not yet authenticated.
    TooManyUnauthenticated,
    /// TLS handshake failed.
    Handshake,
    /// Handshake or preface not done within the timeout.
    HandshakeTimeout,
    /// The first bytes were not the HTTP/2 preface.
    NotHttp2,
    /// Connected but sent no authenticated request within the timeout.
    AuthTimeout,
    /// Had no request in progress for `idle_timeout` (closed after serving).
    Idle,
}

impl Refused {
    /// Every reason, in index order.
    pub const ALL: [Refused; 7] = [
        Self::TooMany,
        Self::TooManyUnauthenticated,
        Self::Handshake,
        Self::HandshakeTimeout,
        Self::NotHttp2,
        Self::AuthTimeout,
        Self::Idle,
    ];

    /// Every metric label, in the order of [`Refused::ALL`].
    pub const LABELS: [&'static str; 7] = [
        "too_many",
        "too_many_unauthenticated",
        "tls_handshake",
        "handshake_timeout",
        "not_http2",
        "auth_timeout",
        "idle",
    ];

    /// Metric label.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::TooMany => "too_many",
            Self::TooManyUnauthenticated => "too_many_unauthenticated",
            Self::Handshake => "tls_handshake",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::NotHttp2 => "not_http2",
            Self::AuthTimeout => "auth_timeout",
            Self::Idle => "idle",
        }
    }
}

/// Wraps `incoming`: each connection is admitted under the caps of `policy`, then its TLS
/// handshake and HTTP/2 preface run on a task of their own under the handshake timeout (a slow
/// or silent client holds up nobody), and only connections that finished both are yielded.
/// Stops when `incoming` ends or `stop` is cancelled.
pub fn secure_incoming<I, IO, IE>(
    incoming: I,
    policy: AcceptPolicy,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Conn<IO>, io::Error>> + Send + 'static
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + RemoteAddr + Unpin + Send + 'static,
    IE: std::fmt::Display + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Conn<IO>, io::Error>>(64);
    crate::logging::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = incoming.next() => accepted,
            };
            let io = match accepted {
                Some(Ok(io)) => io,
                Some(Err(error)) => {
                    tracing::warn!(%error, "accept failed");
                    // Out of file descriptors and similar: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                None => return,
            };
            let Some(slot) = policy.open.admit() else {
                tracing::debug!(
                    max = policy.open.max(),
                    "connection cap reached: closing a new connection"
                );
                continue;
            };
            let pending = match &policy.unauthenticated {
                Some(unauthenticated) => match unauthenticated.admit() {
                    Some(pending) => Some(pending),
                    None => {
                        policy.open.count_refused(Refused::TooManyUnauthenticated);
                        continue;
                    }
                },
                None => None,
            };
            let policy = policy.clone();
            let tx = tx.clone();
            crate::logging::spawn(async move {
                let remote = io.remote_addr();
                let outcome = tokio::time::timeout(
                    policy.handshake_timeout,
                    handshake(io, policy.tls.as_deref()),
                )
                .await
                .unwrap_or(Err(Refused::HandshakeTimeout));
                match outcome {
                    Ok(inner) => {
                        let state = Arc::new(ConnState::default());
                        *state.pending.lock() = pending;
                        let auth_deadline = if policy.require_auth {
                            Some(Box::pin(tokio::time::sleep(policy.handshake_timeout)))
                        } else {
                            state.mark_authenticated();
                            None
                        };
                        let idle = policy
                            .idle_timeout
                            .map(|timeout| (timeout, Box::pin(tokio::time::sleep(timeout))));
                        let conn = Conn {
                            inner,
                            info: ConnInfo { remote, state },
                            auth_deadline,
                            idle,
                            _slot: slot,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(reason) => {
                        tracing::debug!(
                            remote = remote.map(tracing::field::display),
                            reason = %reason.as_label(),
                            "closing a connection before it served"
                        );
                        policy.open.count_refused(reason);
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// TLS (when configured), then the HTTP/2 preface.
async fn handshake<IO>(io: IO, tls: Option<&ReloadableTls>) -> Result<Rewind<MaybeTls<IO>>, Refused>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = match tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let stream = acceptor.accept(io).await.map_err(|_| Refused::Handshake)?;
            MaybeTls::Tls(Box::new(stream))
        }
        None => MaybeTls::Plain(io),
    };
    let mut preface = [0u8; HTTP2_PREFACE.len()];
    stream
        .read_exact(&mut preface)
        .await
        .map_err(|_| Refused::NotHttp2)?;
    if &preface != HTTP2_PREFACE {
        return Err(Refused::NotHttp2);
    }
    Ok(Rewind {
        prefix: Bytes::copy_from_slice(&preface),
        inner: stream,
    })
}

/// Plain or TLS.
enum MaybeTls<IO> {
    Plain(IO),
    Tls(Box<tokio_rustls::server::TlsStream<IO>>),
}

/// Bytes already read, then the stream.
struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_flush(cx),
            Self::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Self::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Tls(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(io) => io.is_write_vectored(),
            Self::Tls(io) => io.is_write_vectored(),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.auth_deadline {
            if this.info.state.is_authenticated() {
                this.auth_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                this.auth_deadline = None;
                this._slot.0.count_refused(Refused::AuthTimeout);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no authenticated request within the handshake timeout",
                )));
            }
        }
        if let Some((timeout, timer)) = &mut this.idle
            && timer.as_mut().poll(cx).is_ready()
        {
            let idle_for = this.info.state.idle_for();
            if idle_for >= *timeout {
                this.idle = None;
                this._slot.0.count_refused(Refused::Idle);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request in progress within the idle timeout",
                )));
            }
            // Check again when the connection could first have been idle long enough.
            let next = tokio::time::Instant::now() + (*timeout - idle_for);
            timer.as_mut().reset(next);
            let _ = timer.as_mut().poll(cx);
        }
        let rewind = &mut this.inner;
        if !rewind.prefix.is_empty() {
            let n = rewind.prefix.len().min(buf.remaining());
            buf.put_slice(&rewind.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut rewind.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.inner.is_write_vectored()
    }
}

/// Counts the requests in progress on each connection (from the request until its response
/// body has been sent or dropped), for the idle timeout. Only in routers with an idle timeout:
/// it boxes each response body.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = Activity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Activity { inner }
    }
}

/// The service of [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct Activity<S> {
    inner: S,
}

type Response = tonic::codegen::http::Response<tonic::body::Body>;

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for Activity<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<ConnInfo>()
            .map(|conn| ActiveGuard::new(conn.state.clone()));
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    tonic::body::Body::new(Tracked {
                        inner: body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// One request in progress on a connection.
#[derive(Debug)]
struct ActiveGuard(Arc<ConnState>);

impl ActiveGuard {
    fn new(state: Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Ordering::AcqRel);
        Self(state)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let state = &self.0;
        if state.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = u64::try_from(state.created.elapsed().as_millis()).unwrap_or(u64::MAX);
            state.idle_since_ms.store(now, Ordering::Release);
        }
    }
}

/// A response body that keeps its request counted as in progress until it is done.
struct Tracked {
    inner: tonic::body::Body,
    _guard: ActiveGuard,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    // Whatever the gRPC transport's body fails with (the node logic never builds it).
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, DuplexStream};

    use super::*;

    fn policy(max: usize, max_unauthenticated: Option<usize>, require_auth: bool) -> AcceptPolicy {
        AcceptPolicy {
            open: Connections::new(max),
            unauthenticated: max_unauthenticated.map(Connections::new),
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            require_auth,
            idle_timeout: None,
        }
    }

    /// `n` in-memory connections through `secure_incoming`; returns the client ends and the
    /// admitted server ends' stream.
    fn connect(
        n: usize,
        policy: &AcceptPolicy,
    ) -> (
        Vec<DuplexStream>,
        impl Stream<Item = Result<Conn<DuplexStream>, io::Error>> + use<>,
    ) {
        let (clients, servers): (Vec<_>, Vec<_>) = (0..n).map(|_| tokio::io::duplex(4096)).unzip();
        let incoming = tokio_stream::iter(servers.into_iter().map(Ok::<_, io::Error>));
        (
            clients,
            secure_incoming(incoming, policy.clone(), CancellationToken::new()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn connections_over_the_cap_are_closed_and_counted() {
        let policy = policy(2, None, false);
        let (mut clients, admitted) = connect(4, &policy);
        for client in &mut clients {
            let _ = client.write_all(HTTP2_PREFACE).await;
        }
        let admitted: Vec<_> = admitted.take(2).collect().await;
        assert_eq!(admitted.len(), 2);
        assert_eq!((policy.open.open(), policy.open.rejected()), (2, 2));
        assert_eq!(policy.open.refused(Refused::TooMany), 2);
        drop(admitted);
        assert_eq!(
            policy.open.open(),
            0,
            "dropping a connection frees its place"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_the_handshake_timeout() {
        let policy = policy(0, Some(10), false);
        let (clients, admitted) = connect(1, &policy);
        let mut admitted = std::pin::pin!(admitted);
        // Nothing is sent: the stream yields nothing and the connection is closed.
        let next = tokio::time::timeout(Duration::from_secs(11), admitted.next()).await;
        assert!(
            next.is_err() || matches!(next, Ok(None)),
            "nothing admitted"
        );
        assert_eq!(policy.open.refused(Refused::HandshakeTimeout), 1);
        assert_eq!(policy.open.open(), 0);
        let unauthenticated = policy.unauthenticated.as_ref().unwrap();
        assert_eq!(
            unauthenticated.open(),
            0,
            "its unauthenticated place is free"
        );
        drop(clients);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_that_are_not_http2_are_refused() {
        let policy = policy(0, None, false);
        let (mut clients, admitted) = connect(1, &policy);
        clients[0]
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let admitted: Vec<_> = admitted.collect().await;
        assert!(admitted.is_empty());
        assert_eq!(policy.open.refused(Refused::NotHttp2), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_preface_is_replayed_to_the_server() {
        let policy = policy(0, None, false);
        let (mut clients, admitted) = connect(1, &policy);
        clients[0].write_all(HTTP2_PREFACE).await.unwrap();
        clients[0].write_all(b"after").await.unwrap();
        let mut conn = std::pin::pin!(admitted).next().await.unwrap().unwrap();
        let mut read = vec![0; HTTP2_PREFACE.len() + 5];
        conn.read_exact(&mut read).await.unwrap();
        assert_eq!(&read[..HTTP2_PREFACE.len()], HTTP2_PREFACE);
        assert_eq!(&read[HTTP2_PREFACE.len()..], b"after");
        assert!(
            conn.info.state.is_authenticated(),
            "no users: nothing to wait for"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unauthenticated_connection_is_closed_at_the_deadline_and_an_authenticated_one_stays()
     {
        let policy = policy(0, Some(10), true);
        let (mut clients, admitted) = connect(2, &policy);
        for client in &mut clients {
            client.write_all(HTTP2_PREFACE).await.unwrap();
        }
        let mut admitted: Vec<_> = admitted.take(2).collect().await;
        let mut second = admitted.pop().unwrap().unwrap();
        let mut first = admitted.pop().unwrap().unwrap();
        let unauthenticated = policy.unauthenticated.clone().unwrap();
        assert_eq!(unauthenticated.open(), 2);
        second.info.state.mark_authenticated();
        assert_eq!(unauthenticated.open(), 1, "authenticating frees the place");
        let mut buf = [0u8; 64];
        let n = first.read(&mut buf).await.unwrap();
        assert_eq!(n, HTTP2_PREFACE.len());
        let error = first.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(policy.open.refused(Refused::AuthTimeout), 1);
        second.read_exact(&mut buf[..24]).await.unwrap();
        clients[1].write_all(b"x").await.unwrap();
        assert_eq!(second.read(&mut buf).await.unwrap(), 1, "still served");
    }

    #[tokio::test(start_paused = true)]
    async fn the_unauthenticated_cap_closes_the_excess() {
        let policy = policy(0, Some(1), true);
        let (mut clients, admitted) = connect(3, &policy);
        for client in &mut clients {
            let _ = client.write_all(HTTP2_PREFACE).await;
        }
        let admitted: Vec<_> = admitted.take(1).collect().await;
        assert_eq!(admitted.len(), 1);
        assert_eq!(policy.open.refused(Refused::TooManyUnauthenticated), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_nothing_in_progress_is_closed_at_the_idle_timeout() {
        let mut policy = policy(0, None, false);
        policy.idle_timeout = Some(Duration::from_secs(5));
        let (mut clients, admitted) = connect(2, &policy);
        for client in &mut clients {
            client.write_all(HTTP2_PREFACE).await.unwrap();
        }
        let mut admitted: Vec<_> = admitted.take(2).collect().await;
        let mut busy = admitted.pop().unwrap().unwrap();
        let mut idle = admitted.pop().unwrap().unwrap();
        let request = ActiveGuard::new(busy.info.state.clone());
        let mut buf = [0u8; 64];
        idle.read_exact(&mut buf[..24]).await.unwrap();
        busy.read_exact(&mut buf[..24]).await.unwrap();
        let error = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(policy.open.refused(Refused::Idle), 1);
        // The busy one outlives several timeouts while its request is in progress, then goes
        // idle and is closed one timeout later.
        tokio::time::sleep(Duration::from_secs(12)).await;
        clients[1].write_all(b"x").await.unwrap();
        assert_eq!(busy.read(&mut buf).await.unwrap(), 1, "still served");
        drop(request);
        assert_eq!(busy.info.state.active(), 0);
        let error = busy.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(policy.open.refused(Refused::Idle), 2);
    }

    #[test]
    fn zero_means_unlimited() {
        let connections = Connections::new(0);
        let slots: Vec<_> = (0..1000).filter_map(|_| connections.admit()).collect();
        assert_eq!((slots.len(), connections.rejected()), (1000, 0));
        assert_eq!(connections.open(), 1000);
    }
}
