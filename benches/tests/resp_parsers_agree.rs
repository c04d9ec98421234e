//! The two RESP decoders compared in `benches/benches/resp_parse.rs` (the node's `resp::parse`
//! and the `redis-protocol` crate) decode the benchmark inputs, and any multi-bulk commands in
//! any chunking, into the same arguments, so the benchmark compares equal work.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::types::BytesFrame;
use ringcache_bench::resp_inputs::{inline16, large_set, ours, pipeline16};
use ringcache_server::resp::parse::encode_command;

fn theirs(input: &[u8], piece: usize) -> Result<Vec<Vec<Bytes>>, String> {
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    for chunk in input.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        while let Some((frame, _, _)) = decode_bytes_mut(&mut buf).map_err(|e| e.to_string())? {
            let BytesFrame::Array(items) = frame else {
                return Err(format!("not an array: {frame:?}"));
            };
            let mut args = Vec::new();
            for item in items {
                match item {
                    BytesFrame::BulkString(bytes) => args.push(bytes),
                    other => return Err(format!("not a bulk string: {other:?}")),
                }
            }
            commands.push(args);
        }
    }
    Ok(commands)
}

#[test]
fn the_benchmark_inputs_decode_alike() {
    for (input, commands) in [(pipeline16(), 16), (large_set(), 1)] {
        for piece in [1, 7, 1460, 16 * 1024, usize::MAX] {
            let mine = ours(&input, piece);
            assert_eq!(mine.len(), commands);
            assert_eq!(mine, theirs(&input, piece).unwrap(), "piece {piece}");
        }
    }
    assert_eq!(ours(&large_set(), usize::MAX)[0][2].len(), 1024 * 1024);
    // Inline commands: only the node's parser reads them.
    assert_eq!(ours(&inline16(), usize::MAX).len(), 16);
    assert!(theirs(&inline16(), usize::MAX).is_err());
}

proptest! {
    #[test]
    fn any_commands_in_any_chunking_decode_alike(
        commands in proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
            1..6,
        ),
        piece in 1usize..64,
    ) {
        let mut input = Vec::new();
        for args in &commands {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            input.extend(encode_command(&refs));
        }
        let mine = ours(&input, piece);
        let expected: Vec<Vec<Bytes>> = commands
            .iter()
            .map(|args| args.iter().map(|a| Bytes::copy_from_slice(a)).collect())
            .collect();
        prop_assert_eq!(&mine, &expected);
        prop_assert_eq!(theirs(&input, piece).unwrap(), expected);
    }
}
