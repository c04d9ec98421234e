//! The RESP listener: accepts connections under the node's shared `max_connections` cap and
//! serves each one on its own task: read what arrived, run every whole command in it in order,
//! send their replies together (pipelining), repeat.
//!
//! A connection whose unparsed input exceeds the query buffer cap (`max_message_bytes`, the same
//! bound a gRPC request has), or that sends something that cannot be framed, gets a Redis-style
//! protocol error and is closed; everyone else is unaffected.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::commands::{Flow, Session};
use super::parse::{Limits, parse};
use super::reply::Reply;
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

/// Accepts RESP connections on `listener` until the node shuts down.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let shutdown = node.shutdown_token().clone();
    let ring = super::cluster::RingWatch::spawn(&node);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "RESP accept failed");
                continue;
            }
        };
        let Some(slot) = node.admit_connection() else {
            tracing::debug!(%peer, "RESP connection refused: max_connections reached");
            let mut stream = stream;
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let ring = ring.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = connection(node, ring, stream).await {
                tracing::debug!(%peer, %error, "RESP connection ended");
            }
        });
    }
}

async fn connection(
    node: Arc<Node>,
    ring: Arc<super::cluster::RingWatch>,
    mut stream: TcpStream,
) -> std::io::Result<()> {
    let limits = limits(&node);
    let max_query = node.config().max_message_bytes.max(limits.max_arg_bytes);
    let shutdown = node.shutdown_token().clone();
    let mut session = Session::new(node, ring);
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::new();
    loop {
        input.reserve(READ_CHUNK);
        let read = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            read = stream.read_buf(&mut input) => read?,
        };
        if read == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            match parse(&mut input, &limits) {
                Ok(Some(command)) if command.is_empty() => {}
                Ok(Some(command)) => {
                    let (reply, flow) = session.execute(command).await;
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
