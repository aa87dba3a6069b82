//! How fast a client decodes one snapshot chunk, on the fast path and through `serde_json`
//! alone: `cargo run --release -p thingsbus-protocol --example decode_chunk`. The chunk is a
//! 256 KiB chunk of small updates like the bench's `latejoin` directory.
use std::time::Instant;

use thingsbus_protocol::codec::{decode_published, encode_update, Published};
use thingsbus_protocol::fuzzing::decode_snapshot_serde;
use thingsbus_protocol::snapshot::{ChunkWriter, SnapshotHeader, DEFAULT_CHUNK_BYTES};
use thingsbus_protocol::Timestamp;

fn ts(secs: f64) -> Timestamp {
    Timestamp::from_secs(secs).expect("a valid timestamp")
}

fn time(what: &str, chunk: &[u8], decode: impl Fn(&[u8]) -> usize) {
    let rounds = 500;
    let started = Instant::now();
    let entries: usize = (0..rounds)
        .map(|_| decode(std::hint::black_box(chunk)))
        .sum();
    let took = started.elapsed();
    println!(
        "{what}: {:.0} ns per entry, {:.1} µs per chunk",
        took.as_nanos() as f64 / entries as f64,
        took.as_secs_f64() * 1e6 / f64::from(rounds)
    );
}

fn entries(p: Result<Published<'_>, thingsbus_protocol::Rejection>) -> usize {
    match p {
        Ok(Published::Snapshot(s)) => s.entries.len(),
        other => panic!("not a snapshot: {other:?}"),
    }
}

fn main() {
    let header = SnapshotHeader {
        ts: ts(1_764_423_456.123_456),
        seq: 100_000,
        id: 0,
        epoch: 1_764_400_000_000_000,
    };
    let extra = r#","request":17,"subtree":"","total":100000"#.to_owned();
    let mut w = ChunkWriter::with_extra(header, DEFAULT_CHUNK_BYTES, extra);
    let mut chunk = None;
    for i in 0..100_000u32 {
        let ns = format!("late.t{i:07}");
        let data = format!(
            r#"{{"n":{i},"t":{}}}"#,
            1_764_423_000_000u64 + u64::from(i) * 7
        );
        let mut enc = Vec::new();
        let t = ts(1_764_423_456.0 + f64::from(i) * 0.000_123);
        encode_update(&mut enc, &ns, &data, t, None, u64::from(i) + 1);
        if let Some(c) = w.push_or_take(ns.as_bytes(), &enc) {
            chunk = Some(c);
            break;
        }
    }
    let chunk = chunk.expect("100,000 things fill a chunk");
    let text = std::str::from_utf8(&chunk).expect("UTF-8");
    println!(
        "{} bytes, {} entries",
        chunk.len(),
        entries(decode_published(&chunk))
    );
    time("decode_published (fast path)", &chunk, |c| {
        entries(decode_published(c))
    });
    time("serde_json alone", &chunk, |_| {
        entries(decode_snapshot_serde(text))
    });
}
