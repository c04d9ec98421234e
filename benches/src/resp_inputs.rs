//! Inputs of the RESP parser comparison (`benches/benches/resp_parse.rs`, and the test that
//! the two decoders agree, `benches/tests/resp_parsers_agree.rs`), and the way the node's own
//! parser is driven, as its connection loop drives it.

use bytes::{Bytes, BytesMut};
use ringcache_server::resp::parse::{Limits, encode_command, parse};

/// The node's default parse limits (`--max-batch-keys` 1000, `--max-value-bytes` 4 MiB).
pub const LIMITS: Limits = Limits {
    max_args: 2002,
    max_arg_bytes: 4 * 1024 * 1024,
};

/// 16 multi-bulk commands, alternating `GET key:N` and `SET key:N <100 bytes>`: a pipelined
/// client's typical batch.
pub fn pipeline16() -> Vec<u8> {
    let value = [b'v'; 100];
    let mut out = Vec::new();
    for i in 0..16 {
        let key = format!("key:{i:010}");
        if i % 2 == 0 {
            out.extend(encode_command(&[b"GET", key.as_bytes()]));
        } else {
            out.extend(encode_command(&[b"SET", key.as_bytes(), &value]));
        }
    }
    out
}

/// One `SET` of a 1 MiB value.
pub fn large_set() -> Vec<u8> {
    encode_command(&[b"SET", b"big", &vec![b'x'; 1024 * 1024]])
}

/// 16 inline commands (`redis-cli` in a pipe, telnet), alternating `GET` and `SET` of a short
/// value, one with quotes.
pub fn inline16() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..16 {
        let line = match i % 3 {
            0 => format!("GET key:{i:010}\r\n"),
            1 => format!("SET key:{i:010} value-{i}\r\n"),
            _ => format!("SET \"key {i}\" \"a b\\x41\"\r\n"),
        };
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// The node's parser over `input` arriving in pieces of `piece` bytes (the whole input when
/// `piece` >= its length): after each piece, every whole command is taken off the buffer, as
/// the connection loop does. Returns the commands.
pub fn ours(input: &[u8], piece: usize) -> Vec<Vec<Bytes>> {
    let mut buf = BytesMut::with_capacity(input.len().min(64 * 1024));
    let mut commands = Vec::new();
    for chunk in input.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        while let Some(command) = parse(&mut buf, &LIMITS).expect("valid input") {
            commands.push(command);
        }
    }
    commands
}
