//! Helpers for tests of the Redis protocol port: a `redis` crate connection, one command by its
//! words, an error reply's text, and raw bytes on a fresh socket.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TestNode;

/// How long one reply may take: long enough for `CLUSTER SLOTS` (about 11,000 runs at 3 nodes)
/// parsed by a debug build of the redis crate on a loaded machine.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(30);

/// A multiplexed `redis` crate connection to `node`'s RESP port.
pub async fn connect(node: &TestNode) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(REPLY_DEADLINE));
    redis::Client::open(format!("redis://{}/", node.resp_addr))
        .expect("a redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect with the redis crate")
}

/// Runs one command given as words (`["SET", "k", "v"]`).
pub async fn run<T: redis::FromRedisValue>(
    con: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(con).await
}

/// An error reply's text, as the redis crate reports it (`ERR ...` or the code and text).
pub async fn error(con: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> String {
    let err = run::<redis::Value>(con, args)
        .await
        .expect_err("an error reply");
    match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => err.to_string(),
    }
}

/// Sends raw bytes on a fresh connection and reads until the answer ends with `until` (or, for
/// `""`, until the node closes the connection); returns the answer and whether it closed.
pub async fn raw(node: &TestNode, input: &[u8], until: &str) -> (String, bool) {
    let mut stream = TcpStream::connect(node.resp_addr).await.expect("connect");
    stream.write_all(input).await.expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        let read = tokio::time::timeout(REPLY_DEADLINE, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        if read == 0 {
            break true;
        }
        out.extend_from_slice(&buf[..read]);
        if !until.is_empty() && out.ends_with(until.as_bytes()) {
            break false;
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}
