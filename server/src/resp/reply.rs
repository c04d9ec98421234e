//! RESP replies, encoded for RESP2 or RESP3 (`HELLO 3`).

use bytes::{BufMut, Bytes, BytesMut};

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(&'static str),
    /// `-ERR ...` (the text includes its prefix: `ERR`, `WRONGTYPE`, `OOM`, ...).
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n` bytes.
    Bulk(Bytes),
    /// A missing value: `$-1` (RESP2) or `_` (RESP3).
    Nil,
    /// `*n` elements.
    Array(Vec<Reply>),
    /// A map: `%n` in RESP3, a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// A reply encoded already, the same in RESP2 and RESP3 (no maps, no nil inside).
    Encoded(Bytes),
}

impl Reply {
    /// `+OK`.
    pub const OK: Reply = Reply::Simple("OK");

    /// `-ERR <text>`.
    pub fn err(text: impl std::fmt::Display) -> Self {
        Reply::Error(format!("ERR {text}"))
    }

    /// A bulk string from anything byte-like.
    pub fn bulk(bytes: impl Into<Bytes>) -> Self {
        Reply::Bulk(bytes.into())
    }

    /// Appends the encoding of this reply to `out`.
    pub fn encode(&self, resp3: bool, out: &mut BytesMut) {
        match self {
            Reply::Simple(text) => {
                out.put_u8(b'+');
                out.put_slice(text.as_bytes());
                out.put_slice(b"\r\n");
            }
            Reply::Error(text) => {
                out.put_u8(b'-');
                // An error is one line: a CR or LF inside would desync the client.
                for b in text.bytes() {
                    out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
                }
                out.put_slice(b"\r\n");
            }
            Reply::Integer(n) => {
                out.put_u8(b':');
                if *n < 0 {
                    out.put_u8(b'-');
                }
                put_decimal(out, n.unsigned_abs());
                out.put_slice(b"\r\n");
            }
            Reply::Bulk(bytes) => {
                out.put_u8(b'$');
                put_decimal(out, bytes.len() as u64);
                out.put_slice(b"\r\n");
                out.put_slice(bytes);
                out.put_slice(b"\r\n");
            }
            Reply::Nil if resp3 => out.put_slice(b"_\r\n"),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                out.put_u8(b'*');
                put_decimal(out, items.len() as u64);
                out.put_slice(b"\r\n");
                for item in items {
                    item.encode(resp3, out);
                }
            }
            Reply::Map(pairs) => {
                out.put_u8(if resp3 { b'%' } else { b'*' });
                let n = if resp3 { pairs.len() } else { pairs.len() * 2 };
                put_decimal(out, n as u64);
                out.put_slice(b"\r\n");
                for (key, value) in pairs {
                    key.encode(resp3, out);
                    value.encode(resp3, out);
                }
            }
            Reply::Encoded(bytes) => out.put_slice(bytes),
        }
    }
}

/// Appends `n` in decimal (no allocation: every length and integer reply has one).
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: &Reply, resp3: bool) -> String {
        let mut out = BytesMut::new();
        reply.encode(resp3, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn replies_encode_as_redis_sends_them() {
        assert_eq!(encoded(&Reply::OK, false), "+OK\r\n");
        assert_eq!(
            encoded(&Reply::err("unknown command 'x'"), false),
            "-ERR unknown command 'x'\r\n"
        );
        assert_eq!(encoded(&Reply::Integer(-3), false), ":-3\r\n");
        assert_eq!(encoded(&Reply::Integer(0), false), ":0\r\n");
        assert_eq!(
            encoded(&Reply::Integer(i64::MIN), false),
            format!(":{}\r\n", i64::MIN)
        );
        assert_eq!(
            encoded(&Reply::Integer(i64::MAX), false),
            format!(":{}\r\n", i64::MAX)
        );
        assert_eq!(
            encoded(&Reply::Encoded(Bytes::from_static(b"*0\r\n")), true),
            "*0\r\n"
        );
        assert_eq!(encoded(&Reply::bulk("a\r\nb"), false), "$4\r\na\r\nb\r\n");
        assert_eq!(encoded(&Reply::Nil, false), "$-1\r\n");
        assert_eq!(encoded(&Reply::Nil, true), "_\r\n");
        let array = Reply::Array(vec![Reply::bulk("x"), Reply::Nil]);
        assert_eq!(encoded(&array, false), "*2\r\n$1\r\nx\r\n$-1\r\n");
        let map = Reply::Map(vec![(Reply::bulk("proto"), Reply::Integer(3))]);
        assert_eq!(encoded(&map, true), "%1\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(encoded(&map, false), "*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(encoded(&Reply::err("a\r\nb"), false), "-ERR a  b\r\n");
    }
}
