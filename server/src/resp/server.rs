//! The RESP listener: accepts connections under the node's shared `max_connections` cap and
//! serves each one on its own task: read what arrived, run every whole command in it in order,
//! send their replies together (pipelining), repeat.
//!
//! Admission follows the gRPC client port (`connections.rs`): when the client port has TLS the
//! RESP port does too (same certificates, client certificates required with `tls_client_ca`;
//! no ALPN), and the handshake must finish within `handshake_timeout`. With TLS or users a new
//! connection also takes a place among the unauthenticated connections
//! (`max_unauthenticated_connections`, shared with gRPC) until it has authenticated (or, with
//! TLS and no users, finished its handshake); with users it must `AUTH` (or `HELLO ... AUTH`)
//! within `handshake_timeout` of connecting (or of a `RESET`, or of losing its user to a users
//! reload), or it is closed. So a slowloris holds a slot for at most that long. With
//! `resp_idle_timeout`, a connection that sends nothing for that long is closed (Redis's
//! `timeout`). Every refusal is counted in `ringcache_connections_refused_total{plane="resp"}`.
//!
//! A connection whose unparsed input exceeds the query buffer cap (`max_message_bytes`, the same
//! bound a gRPC request has), or that sends something that cannot be framed, gets a Redis-style
//! protocol error and is closed; everyone else is unaffected.

use std::os::fd::AsRawFd as _;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::client::{Conn, Registry};
use super::commands::{Flow, Session, Step};
use super::parse::{Limits, parse};
use super::reply::Reply;
use crate::connections::{Refused, Slot};
use crate::metrics::RESP_PLANE;
use crate::node::Node;

/// Bytes read per call.
const READ_CHUNK: usize = 16 * 1024;
/// Replies buffered before they are written out mid-batch: a pipeline of GETs of large values
/// from a client that does not read must block on the socket, not grow this buffer.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// The parse limits of `node`: an MSET of `max_batch_keys` pairs, and the largest key or value.
pub fn limits(node: &Node) -> Limits {
    let config = node.config();
    Limits {
        max_args: config.max_batch_keys.saturating_mul(2).saturating_add(2),
        max_arg_bytes: config.store.max_key_bytes.max(config.store.max_value_bytes),
    }
}

fn refused(node: &Node, reason: Refused) {
    node.metrics().security.record_refused(RESP_PLANE, reason);
}

/// Accepts RESP connections on `listener` until the node shuts down.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let shutdown = node.shutdown_token().clone();
    let port = listener.local_addr().map_or(0, |addr| addr.port());
    let registry = Registry::new(port);
    let ring = super::cluster::RingWatch::spawn(&node);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "RESP accept failed");
                // Out of file descriptors and similar: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let tls = node.client_tls().is_some();
        let Some(slot) = node.admit_connection() else {
            tracing::debug!(%peer, "RESP connection refused: max_connections reached");
            refused(&node, Refused::TooMany);
            if !tls {
                crate::logging::spawn(async move {
                    let _ = stream
                        .write_all(b"-ERR max number of clients reached\r\n")
                        .await;
                });
            }
            continue;
        };
        // A connection that must prove itself (TLS handshake, AUTH) holds an unauthenticated
        // place until it has.
        let pending = if tls || node.auth().is_some() {
            match node.admit_unauthenticated() {
                Some(pending) => Some(pending),
                None => {
                    tracing::debug!(%peer, "RESP connection refused: max_unauthenticated_connections reached");
                    refused(&node, Refused::TooManyUnauthenticated);
                    if !tls {
                        crate::logging::spawn(async move {
                            let _ = stream
                                .write_all(b"-ERR max number of clients reached\r\n")
                                .await;
                        });
                    }
                    continue;
                }
            }
        } else {
            None
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let registry = registry.clone();
        let ring = ring.clone();
        crate::logging::spawn(async move {
            let _slot = slot;
            if let Err(error) = connection(node, registry, ring, stream, pending).await {
                tracing::debug!(%peer, %error, "RESP connection ended");
            }
        });
    }
}

/// Counts the connection in `ringcache_resp_connections` while it lives.
struct Open(Arc<Node>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.metrics().resp.connection(-1.0);
    }
}

/// One connection: TLS handshake if configured, then the session.
async fn connection(
    node: Arc<Node>,
    registry: Arc<Registry>,
    ring: Arc<super::cluster::RingWatch>,
    stream: TcpStream,
    pending: Option<Slot>,
) -> std::io::Result<()> {
    node.metrics().resp.connection(1.0);
    let _open = Open(node.clone());
    let registered = registry.register(
        stream.peer_addr().ok(),
        stream.local_addr().ok(),
        i64::from(stream.as_raw_fd()),
    );
    let auth_required = node.auth().is_some();
    let Some(tls) = node.client_tls().cloned() else {
        let conn = Conn::new(registered, auth_required, pending);
        return serve_stream(
            node.clone(),
            Session::new(node, conn, registry, ring),
            stream,
        )
        .await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current_resp());
    let timeout = node.config().security.handshake_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            // TLS without users: the handshake was the proof.
            let pending = if auth_required { pending } else { None };
            let conn = Conn::new(registered, auth_required, pending);
            serve_stream(
                node.clone(),
                Session::new(node, conn, registry, ring),
                stream,
            )
            .await
        }
        Ok(Err(error)) => {
            refused(&node, Refused::Handshake);
            Err(error)
        }
        Err(_) => {
            refused(&node, Refused::HandshakeTimeout);
            Ok(())
        }
    }
}

/// When the connection must be closed if nothing arrives, and why.
fn deadline(node: &Node, session: &Session) -> Option<(Instant, Refused)> {
    if let Some(since) = session.conn.unauthenticated_since {
        let timeout = node.config().security.handshake_timeout;
        return Some((since + timeout, Refused::AuthTimeout));
    }
    node.config()
        .resp_idle_timeout
        .map(|idle| (Instant::now() + idle, Refused::Idle))
}

async fn serve_stream<S>(
    node: Arc<Node>,
    mut session: Session,
    mut stream: S,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = limits(&node);
    let max_query = node.config().max_message_bytes.max(limits.max_arg_bytes);
    let shutdown = node.shutdown_token().clone();
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::new();
    loop {
        input.reserve(READ_CHUNK);
        let deadline = deadline(&node, &session);
        let expired = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            read = stream.read_buf(&mut input) => read?,
            () = expired => {
                if let Some((_, reason)) = deadline {
                    tracing::debug!(reason = %reason.as_label(), "closing a RESP connection");
                    refused(&node, reason);
                }
                let _ = stream.shutdown().await;
                return Ok(());
            }
        };
        if read == 0 {
            return Ok(());
        }
        session.arrived();
        let mut close = false;
        loop {
            match parse(&mut input, &limits) {
                Ok(Some(command)) if command.is_empty() => {}
                Ok(Some(command)) => {
                    let (reply, flow) = match session.begin(&command) {
                        Step::Done(reply, flow) => (reply, flow),
                        Step::Later(spec) => session.finish(&command, spec).await,
                    };
                    reply.encode(session.resp3, &mut output);
                    if flow == Flow::Close {
                        close = true;
                        break;
                    }
                    if output.len() >= MAX_PENDING_OUTPUT {
                        stream.write_all(&output).await?;
                        output.clear();
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    Reply::err(error).encode(session.resp3, &mut output);
                    close = true;
                    break;
                }
            }
        }
        if !close && input.len() > max_query {
            Reply::err("Protocol error: query buffer limit exceeded (max_message_bytes)")
                .encode(session.resp3, &mut output);
            close = true;
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        if close {
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
}
