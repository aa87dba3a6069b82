//! The checks behind the `cargo fuzz` targets (`fuzz/`), here so that the normal test suite
//! replays every saved fuzz input through exactly the same code on stable Rust. Each function
//! takes bytes as they come from the network and panics only when a property is broken.
//!
//! Also the two ways a snapshot chunk is read, side by side, for the checks that compare them
//! ([`fast_snapshot_agrees`]) and for timing them (`examples/decode_chunk.rs`).

use crate::codec::{
    decode_json_input, decode_msgpack_input, decode_published, encode_update, fast_snapshot,
    published, Published, COMPACT_SNAPSHOT,
};
use crate::snapshot::{ChunkWriter, SnapshotHeader, SnapshotRequest};
use crate::{Limits, Rejection, Timestamp, UpdateRef};

/// A ZMQ input frame (JSON object or 4-list): never panics, and what it accepts goes through the
/// broker's encoding and the client's decoder unchanged.
pub fn json_input(bytes: &[u8]) {
    if let Ok(u) = decode_json_input(bytes, &Limits::default()) {
        round_trip(&u);
    }
}

/// A UDP datagram (MessagePack map or 4-list): as [`json_input`].
pub fn msgpack_input(bytes: &[u8]) {
    if let Ok(u) = decode_msgpack_input(bytes, &Limits::default()) {
        round_trip(&u);
    }
}

/// A UDP datagram read as a signed one ([`crate::signed`]): never panics; what parses re-seals
/// to the same bytes (the tag aside) and the same fields; a replay window takes a datagram once.
/// Then the input as the payload of a datagram signed here: it opens to itself, and goes through
/// [`msgpack_input`] as the broker would decode it.
pub fn signed_datagram(bytes: &[u8]) {
    use crate::signed::{self, BoardSecret, Direction, Malformed, ReplayTracker};
    let secret = BoardSecret::from_bytes([0x5a; 32]);
    match signed::parse(bytes) {
        Ok(s) => {
            assert!(signed::is_signed(bytes));
            let again =
                signed::seal_to_vec(s.direction, s.name, s.boot, s.counter, s.payload, &secret)
                    .expect("what parses can be sealed");
            let body = bytes.len() - signed::TAG_LEN;
            assert_eq!(&again[..body], &bytes[..body]);
            let mut replays = ReplayTracker::new(2);
            assert!(replays.check(s.name, s.boot, s.counter).is_ok());
            assert!(replays.check(s.name, s.boot, s.counter).is_err());
        }
        Err(Malformed::NotSigned) => assert!(!signed::is_signed(bytes)),
        Err(_) => {}
    }
    let Some((head, payload)) = bytes.split_first_chunk::<8>() else {
        return;
    };
    let boot = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let counter = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if let Ok(d) = signed::seal_to_vec(
        Direction::ToBroker,
        "board",
        boot,
        counter,
        payload,
        &secret,
    ) {
        let s = signed::open(&d, Direction::ToBroker, |_| Some(secret.clone()))
            .expect("a datagram signed here opens");
        assert_eq!(
            (s.name, s.boot, s.counter, s.payload),
            ("board", boot, counter, payload)
        );
        msgpack_input(s.payload);
    }
}

/// A snapshot request frame: never panics; an accepted one has a valid subtree and an `id` that
/// is JSON text (it is pasted into replies).
pub fn snapshot_request(bytes: &[u8]) {
    match SnapshotRequest::decode(bytes) {
        Ok(r) => {
            assert!(crate::namespace::validate(&r.subtree).is_ok());
            assert!(serde_json::from_str::<serde_json::Value>(&r.id_json).is_ok());
        }
        Err(e) => {
            assert!(serde_json::from_str::<serde_json::Value>(&e.id_json).is_ok());
        }
    }
}

/// A message from a broker's directory output or snapshot endpoint, as a client reads it:
/// never panics, a snapshot decodes alike on the fast path and through `serde_json`, and every
/// update or snapshot entry it yields encodes and decodes to itself.
pub fn published(bytes: &[u8]) {
    // A snapshot read by the fast path reads as serde_json reads it.
    fast_snapshot_agrees(bytes);
    let entries = match decode_published(bytes) {
        Ok(Published::Update(u)) => vec![u],
        Ok(Published::Snapshot(s)) => s.entries,
        _ => return,
    };
    for e in entries {
        let ts =
            e.ts.unwrap_or_else(|| Timestamp::from_secs(1.5).expect("finite"));
        let url = e.documentation_url.as_deref();
        let mut encoded = Vec::new();
        encode_update(
            &mut encoded,
            e.ns.as_str(),
            e.data,
            ts,
            url,
            e.seq.unwrap_or(0),
        );
        match decode_published(&encoded) {
            Ok(Published::Update(p)) => {
                assert_eq!(p.ns.as_str(), e.ns.as_str());
                assert_eq!(p.data, e.data);
                assert_eq!(p.ts, Some(ts));
                assert_eq!(p.documentation_url.as_deref(), url);
            }
            other => panic!(
                "a decoded entry does not survive re-encoding: {other:?}\n{}",
                String::from_utf8_lossy(&encoded)
            ),
        }
    }
}

/// When `bytes` is a compact snapshot that the fast path reads, its result must be the
/// `serde_json` reference's ([`decode_snapshot_serde`]); panics when it is not. Returns whether
/// the fast path read it.
pub fn fast_snapshot_agrees(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    if !text.starts_with(COMPACT_SNAPSHOT) {
        return false;
    }
    let Some(fast) = fast_snapshot::decode_snapshot(text) else {
        return false;
    };
    let fast = format!("{:?}", Ok::<_, Rejection>(Published::Snapshot(fast)));
    let reference = format!("{:?}", decode_snapshot_serde(text));
    assert_eq!(fast, reference, "the fast path differs on {text}");
    true
}

/// A `thing_snapshot`, decoded by `serde_json` alone: the reference for the fast path, which
/// [`decode_published`] takes for the broker's own chunks.
///
/// # Errors
/// As [`decode_published`].
pub fn decode_snapshot_serde(text: &str) -> Result<Published<'_>, Rejection> {
    published::decode_snapshot(text)
}

fn round_trip(u: &UpdateRef<'_>) {
    assert!(
        serde_json::from_str::<&serde_json::value::RawValue>(&u.data).is_ok(),
        "accepted data is JSON text: {:?}",
        u.data
    );
    let ts =
        u.ts.unwrap_or_else(|| Timestamp::from_secs(1.5).expect("finite"));
    let url = u.documentation_url.as_deref();
    let mut encoded = Vec::new();
    encode_update(&mut encoded, u.ns.as_str(), &u.data, ts, url, 7);
    match decode_published(&encoded) {
        Ok(Published::Update(p)) => {
            assert_eq!(p.ns.as_str(), u.ns.as_str());
            assert_eq!(p.data, u.data.as_ref());
            assert_eq!(p.ts, Some(ts));
            assert_eq!(p.documentation_url.as_deref(), url);
            assert_eq!(p.seq, Some(7));
        }
        other => panic!(
            "the broker's own encoding of an accepted update does not decode: {other:?}\n{}",
            String::from_utf8_lossy(&encoded)
        ),
    }
    // And inside a snapshot chunk.
    let header = SnapshotHeader {
        ts,
        seq: 7,
        id: 1,
        epoch: 1,
    };
    let mut w = ChunkWriter::new(header, 1 << 20);
    w.push(u.ns.as_str().as_bytes(), &encoded);
    let chunk = w.finish();
    match decode_published(&chunk) {
        Ok(Published::Snapshot(s)) => {
            assert_eq!(s.entries.len(), 1, "{}", String::from_utf8_lossy(&chunk));
            assert_eq!(s.entries[0].data, u.data.as_ref());
            assert_eq!(s.entries[0].ts, Some(ts));
        }
        other => panic!(
            "a snapshot chunk of an accepted update does not decode: {other:?}\n{}",
            String::from_utf8_lossy(&chunk)
        ),
    }
}
