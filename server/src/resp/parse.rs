//! Reading Redis commands off a connection's buffer: RESP multi-bulk requests (what every client
//! library sends) and inline commands (what `redis-cli` in a pipe and `telnet` send), pipelined
//! and split across reads in any way.
//!
//! [`parse`] takes the bytes received so far and returns one whole command, `None` when more
//! bytes are needed, or a protocol error after which the connection must be closed (the stream
//! can no longer be framed). Arguments are slices of the buffer (no copy). Every declared length
//! is checked against [`Limits`] before anything is allocated or waited for, so a client cannot
//! make the node reserve memory it never sends (Redis CVE-2021-32675). Error texts are Redis's,
//! so clients and Redis's own protocol tests see what they expect.

use bytes::{Buf, Bytes, BytesMut};

/// Longest inline command and longest `*N` / `$N` header line (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE_BYTES: usize = 64 * 1024;

/// What a command may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments in one command (command name included).
    pub max_args: usize,
    /// Longest single argument (a key or a value), in bytes.
    pub max_arg_bytes: usize,
}

/// Why a buffer cannot be read as commands; the connection is answered with
/// `-ERR Protocol error: ...` and closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A `*N` count that is not a number or beyond the argument limit.
    #[error("Protocol error: invalid multibulk length")]
    MultibulkLength,
    /// A `$N` length that is not a number, negative, or beyond the argument size limit.
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    /// A multi-bulk element that does not start with `$`.
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// An inline command (or a header line) longer than [`MAX_INLINE_BYTES`] without a newline.
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    /// A `*N` header line longer than [`MAX_INLINE_BYTES`].
    #[error("Protocol error: too big mbulk count string")]
    MultibulkHeaderTooBig,
    /// A `$N` header line longer than [`MAX_INLINE_BYTES`].
    #[error("Protocol error: too big bulk count string")]
    BulkHeaderTooBig,
    /// An inline command with an unclosed quote.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A bulk string not followed by CRLF.
    #[error("Protocol error: expected CRLF after bulk string")]
    MissingCrlf,
}

/// One parsed command: its arguments, the command name first. Empty for an empty line or a
/// `*0` / `*-1` request, which Redis ignores.
pub type Command = Vec<Bytes>;

/// Takes one command off the front of `buf`: `Ok(Some(args))` and the bytes consumed,
/// `Ok(None)` when `buf` holds only part of a command (nothing consumed), or an error.
pub fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Command>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf, limits),
        Some(_) => parse_inline(buf, limits),
    }
}

/// The position of the first `\n` in `buf[from..]`, relative to `buf`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|at| from + at)
}

/// Reads a decimal integer as Redis does (`string2ll`): an optional `-`, digits, no spaces.
/// A decimal integer as Redis reads lengths and counts: an optional `-`, then digits only (no
/// `+`, no spaces), at most 20 bytes, within `i64`.
fn number(digits: &[u8]) -> Option<i64> {
    let (negative, body) = match digits {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, digits),
    };
    if body.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut value: i64 = 0;
    for &digit in body {
        if !digit.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(digit - b'0');
        value = value.checked_mul(10)?;
        // Negative numbers accumulate downwards so that i64::MIN parses.
        value = if negative {
            value.checked_sub(digit)?
        } else {
            value.checked_add(digit)?
        };
    }
    Some(value)
}

fn parse_multibulk(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Command>, ProtocolError> {
    let Some(end) = line_end(buf, 0) else {
        if buf.len() > MAX_INLINE_BYTES {
            return Err(ProtocolError::MultibulkHeaderTooBig);
        }
        return Ok(None);
    };
    let header = trim_cr(&buf[1..end]);
    let count = number(header).ok_or(ProtocolError::MultibulkLength)?;
    if count > i64::try_from(limits.max_args).unwrap_or(i64::MAX) {
        return Err(ProtocolError::MultibulkLength);
    }
    if count <= 0 {
        buf.advance(end + 1);
        return Ok(Some(Vec::new()));
    }
    let count = count as usize;
    // Walk the elements without consuming, so an incomplete command leaves `buf` untouched.
    let mut at = end + 1;
    let mut spans = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let Some(&first) = buf.get(at) else {
            return Ok(None);
        };
        if first != b'$' {
            return Err(ProtocolError::ExpectedBulk(char::from(first)));
        }
        let Some(line) = line_end(buf, at) else {
            if buf.len() - at > MAX_INLINE_BYTES {
                return Err(ProtocolError::BulkHeaderTooBig);
            }
            return Ok(None);
        };
        let len = number(trim_cr(&buf[at + 1..line])).ok_or(ProtocolError::BulkLength)?;
        let len = usize::try_from(len).map_err(|_| ProtocolError::BulkLength)?;
        if len > limits.max_arg_bytes {
            return Err(ProtocolError::BulkLength);
        }
        let start = line + 1;
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        spans.push((start, len));
        at = start + len + 2;
    }
    let frame = buf.split_to(at).freeze();
    Ok(Some(
        spans
            .into_iter()
            .map(|(start, len)| frame.slice(start..start + len))
            .collect(),
    ))
}

fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Command>, ProtocolError> {
    let Some(end) = line_end(buf, 0) else {
        if buf.len() > MAX_INLINE_BYTES {
            return Err(ProtocolError::InlineTooBig);
        }
        return Ok(None);
    };
    let line = buf.split_to(end + 1).freeze();
    let args = split_args(trim_cr(&line[..end]))?;
    if args.len() > limits.max_args {
        return Err(ProtocolError::MultibulkLength);
    }
    if args.iter().any(|a| a.len() > limits.max_arg_bytes) {
        return Err(ProtocolError::BulkLength);
    }
    Ok(Some(args))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits an inline command line into arguments the way Redis's `sdssplitargs` does: spaces
/// separate, `"..."` takes `\n \r \t \b \a \\ \"` and `\xHH` escapes, `'...'` takes `\'`, and a
/// closing quote must be followed by a space or the end.
fn split_args(line: &[u8]) -> Result<Command, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(&b) = line.get(i) else {
                        return Err(ProtocolError::UnbalancedQuotes);
                    };
                    match b {
                        b'\\'
                            if i + 3 < line.len()
                                && line[i + 1] == b'x'
                                && line[i + 2].is_ascii_hexdigit()
                                && line[i + 3].is_ascii_hexdigit() =>
                        {
                            let hex = |c: u8| char::from(c).to_digit(16).unwrap_or(0) as u8;
                            arg.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                            i += 4;
                        }
                        b'\\' if i + 1 < line.len() => {
                            arg.push(match line[i + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                                return Err(ProtocolError::UnbalancedQuotes);
                            }
                            break;
                        }
                        other => {
                            arg.push(other);
                            i += 1;
                        }
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let Some(&b) = line.get(i) else {
                        return Err(ProtocolError::UnbalancedQuotes);
                    };
                    match b {
                        b'\\' if line.get(i + 1) == Some(&b'\'') => {
                            arg.push(b'\'');
                            i += 2;
                        }
                        b'\'' => {
                            i += 1;
                            if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                                return Err(ProtocolError::UnbalancedQuotes);
                            }
                            break;
                        }
                        other => {
                            arg.push(other);
                            i += 1;
                        }
                    }
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(arg));
    }
}

/// Encodes `args` as a RESP multi-bulk request (what clients send); for tests and tools.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_args: 1024,
        max_arg_bytes: 1024 * 1024,
    };

    fn parse_all(input: &[u8]) -> Result<Vec<Command>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(command) = parse(&mut buf, &LIMITS)? {
            out.push(command);
        }
        Ok(out)
    }

    fn strings(command: &Command) -> Vec<&str> {
        command
            .iter()
            .map(|a| std::str::from_utf8(a).unwrap())
            .collect()
    }

    /// What `number` accepted before it was written by hand: `str::parse` without `+`.
    fn number_by_std(digits: &[u8]) -> Option<i64> {
        let text = std::str::from_utf8(digits).ok()?;
        if text.is_empty() || text.starts_with('+') || text.len() > 20 {
            return None;
        }
        text.parse().ok()
    }

    #[test]
    fn numbers_parse_as_std_does() {
        for case in [
            "0",
            "-0",
            "7",
            "-7",
            "0012",
            "-",
            "",
            "+5",
            " 5",
            "5 ",
            "1a",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "00000000000000000001",
            "000000000000000000001",
            "--1",
            "\u{e9}",
        ] {
            assert_eq!(
                number(case.as_bytes()),
                number_by_std(case.as_bytes()),
                "{case:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_as_std_does(bytes in proptest::collection::vec(
            proptest::sample::select(b"-+0123456789 a".to_vec()), 0..24)) {
            proptest::prop_assert_eq!(number(&bytes), number_by_std(&bytes));
        }
    }

    #[test]
    fn multibulk_and_inline_commands_pipelined() {
        let mut input = encode_command(&[b"SET", b"k", b"v\r\nwith crlf"]);
        input.extend_from_slice(b"GET k\r\nPING\n");
        input.extend(encode_command(&[b"DEL", b"k"]));
        let commands = parse_all(&input).unwrap();
        assert_eq!(commands.len(), 4);
        assert_eq!(strings(&commands[0]), ["SET", "k", "v\r\nwith crlf"]);
        assert_eq!(strings(&commands[1]), ["GET", "k"]);
        assert_eq!(strings(&commands[2]), ["PING"]);
        assert_eq!(strings(&commands[3]), ["DEL", "k"]);
    }

    #[test]
    fn a_command_split_anywhere_waits_for_the_rest() {
        let input = encode_command(&[b"SET", b"key", b"value"]);
        for cut in 0..input.len() {
            let mut buf = BytesMut::from(&input[..cut]);
            assert_eq!(parse(&mut buf, &LIMITS), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
            buf.extend_from_slice(&input[cut..]);
            let command = parse(&mut buf, &LIMITS).unwrap().unwrap();
            assert_eq!(strings(&command), ["SET", "key", "value"]);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn redis_protocol_test_cases() {
        // From Redis's tests/unit/protocol.tcl.
        let err = |input: &[u8]| parse_all(input).unwrap_err().to_string();
        assert_eq!(parse_all(b"\r\n").unwrap(), [Vec::<Bytes>::new()]);
        assert_eq!(parse_all(b"*-10\r\n").unwrap(), [Vec::<Bytes>::new()]);
        assert_eq!(
            err(b"*20000000\r\n"),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            err(b"*1\r\n$2000000000\r\n"),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"*1\r\n$-10\r\n"),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"*1\r\n$blabla\r\n"),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"*1\r\nfoo\r\n"),
            "Protocol error: expected '$', got 'f'"
        );
        assert_eq!(
            err(b"*blabla\r\n"),
            "Protocol error: invalid multibulk length"
        );
        let desync = |prefix: &[u8]| {
            let mut input = prefix.to_vec();
            input.extend(std::iter::repeat_n(b'A', MAX_INLINE_BYTES + 1));
            err(&input)
        };
        assert_eq!(desync(b"\x00"), "Protocol error: too big inline request");
        assert_eq!(
            desync(b"*\x00"),
            "Protocol error: too big mbulk count string"
        );
        assert_eq!(
            desync(b"*1\r\n$\x00"),
            "Protocol error: too big bulk count string"
        );
    }

    #[test]
    fn limits_are_checked_before_the_bytes_arrive() {
        let limits = Limits {
            max_args: 3,
            max_arg_bytes: 8,
        };
        let mut too_many = BytesMut::from(&b"*4\r\n"[..]);
        assert_eq!(
            parse(&mut too_many, &limits),
            Err(ProtocolError::MultibulkLength)
        );
        let mut too_long = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$9\r\n"[..]);
        assert_eq!(
            parse(&mut too_long, &limits),
            Err(ProtocolError::BulkLength)
        );
        let mut inline = BytesMut::from(&b"SET k 123456789\r\n"[..]);
        assert_eq!(parse(&mut inline, &limits), Err(ProtocolError::BulkLength));
        let mut missing_crlf = BytesMut::from(&b"*1\r\n$3\r\nSETxx"[..]);
        assert_eq!(
            parse(&mut missing_crlf, &limits),
            Err(ProtocolError::MissingCrlf)
        );
    }

    #[test]
    fn inline_quotes_and_escapes_as_redis_splits_them() {
        let commands = parse_all(b"SET \"a b\" 'c d' \"\\x41\\n\" 'it\\'s'\r\n").unwrap();
        assert_eq!(
            commands[0],
            ["SET", "a b", "c d", "A\n", "it's"].map(|s| Bytes::copy_from_slice(s.as_bytes()))
        );
        assert_eq!(
            parse_all(b"SET \"unclosed\r\n").unwrap_err(),
            ProtocolError::UnbalancedQuotes
        );
        assert_eq!(
            parse_all(b"SET \"a\"b\r\n").unwrap_err(),
            ProtocolError::UnbalancedQuotes
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_all(&input);
        }

        #[test]
        fn encoded_commands_round_trip_in_any_chunking(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            cut in 0usize..1024,
        ) {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let input = encode_command(&refs);
            let cut = cut % (input.len() + 1);
            let mut buf = BytesMut::from(&input[..cut]);
            let first = parse(&mut buf, &LIMITS).unwrap();
            let command = match first {
                Some(command) => command,
                None => {
                    buf.extend_from_slice(&input[cut..]);
                    parse(&mut buf, &LIMITS).unwrap().unwrap()
                }
            };
            let got: Vec<Vec<u8>> = command.iter().map(|a| a.to_vec()).collect();
            prop_assert_eq!(got, args);
        }
    }
}
