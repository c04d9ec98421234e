//! The RESP request parser, measured to choose it (issue 12): the node's hand-written
//! `resp::parse` against the `redis-protocol` crate (6.x, `bytes` feature: zero-copy
//! `decode_bytes_mut`), on the same inputs, each decoded into the command's arguments:
//!
//! - `pipeline16`: 16 pipelined multi-bulk `GET` / `SET` (100-byte value) commands in one read;
//! - `set_1mib`: one `SET` of a 1 MiB value in one read, and arriving in 1,460-byte pieces (one
//!   TCP segment each) and 16 KiB pieces (the node's read size);
//! - `pipeline16_bytewise`: the 16 commands arriving one byte at a time, each byte followed by
//!   a parse attempt (the resume cost: a parser that re-reads an incomplete command from its
//!   start pays for it on every piece);
//! - `inline16`: 16 inline commands (the node's parser only: redis-protocol has no inline
//!   commands).
//!
//! Run: `cargo bench -p ringcache-bench --bench resp_parse`. Results: BENCHMARKS.md.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::types::BytesFrame;
use ringcache_bench::resp_inputs::{inline16, large_set, ours, pipeline16};

/// redis-protocol over `input` in pieces of `piece` bytes, each frame turned into arguments.
fn theirs(input: &[u8], piece: usize) -> Vec<Vec<Bytes>> {
    let mut buf = BytesMut::with_capacity(input.len().min(64 * 1024));
    let mut commands = Vec::new();
    for chunk in input.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        while let Some((frame, _, _)) = decode_bytes_mut(&mut buf).expect("valid input") {
            let BytesFrame::Array(items) = frame else {
                panic!("a command is an array");
            };
            commands.push(
                items
                    .into_iter()
                    .map(|item| match item {
                        BytesFrame::BulkString(bytes) => bytes,
                        other => panic!("an argument is a bulk string: {other:?}"),
                    })
                    .collect(),
            );
        }
    }
    commands
}

fn parse_benches(c: &mut Criterion) {
    let cases: [(&str, Vec<u8>, usize); 5] = [
        ("pipeline16", pipeline16(), usize::MAX),
        ("set_1mib", large_set(), usize::MAX),
        ("set_1mib_in_1460b_pieces", large_set(), 1460),
        ("set_1mib_in_16kib_pieces", large_set(), 16 * 1024),
        ("pipeline16_bytewise", pipeline16(), 1),
    ];
    for (name, input, piece) in &cases {
        let mut group = c.benchmark_group(format!("resp_parse/{name}"));
        group.throughput(Throughput::Bytes(input.len() as u64));
        if input.len() > 64 * 1024 {
            group.sample_size(20);
        }
        group.bench_with_input(BenchmarkId::from_parameter("ours"), input, |b, input| {
            b.iter(|| black_box(ours(black_box(input), *piece)))
        });
        group.bench_with_input(
            BenchmarkId::from_parameter("redis-protocol"),
            input,
            |b, input| b.iter(|| black_box(theirs(black_box(input), *piece))),
        );
        group.finish();
    }
    let inline = inline16();
    let mut group = c.benchmark_group("resp_parse/inline16");
    group.throughput(Throughput::Bytes(inline.len() as u64));
    group.bench_function("ours", |b| {
        b.iter(|| black_box(ours(black_box(&inline), usize::MAX)))
    });
    group.finish();
}

criterion_group!(benches, parse_benches);
criterion_main!(benches);
