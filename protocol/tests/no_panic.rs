//! Every decoder that takes bytes from the network returns, never panics, on mutated valid
//! messages and random bytes. (Coverage-guided fuzzing comes with the hardening issue; this is
//! the cheap, always-on part.)

use thingsbus_protocol::codec::{
    decode_json_input, decode_msgpack_input, decode_published, encode_update,
};
use thingsbus_protocol::discovery::{RandomSource, SeededRandom};
use thingsbus_protocol::fuzzing::fast_snapshot_agrees;
use thingsbus_protocol::snapshot::{ChunkWriter, SnapshotHeader};
use thingsbus_protocol::{Limits, Timestamp};

fn vector() -> Vec<u8> {
    let hex = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/esp8266-list-update.msgpack.hex"
    ))
    .expect("vector file");
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn seeds() -> Vec<Vec<u8>> {
    let mut update = Vec::new();
    encode_update(
        &mut update,
        "a.b",
        r#"{"x":[1,2.5,"s",null,true]}"#,
        Timestamp::from_secs(1.5).expect("ts"),
        Some("u"),
        3,
    );
    let header = SnapshotHeader {
        ts: Timestamp::from_secs(2.0).expect("ts"),
        seq: 3,
        id: 1,
        epoch: 9,
    };
    let mut w = ChunkWriter::new(header, 4096);
    w.push(b"a.b", &update);
    vec![
        br#"{"type":"thing_update","ns":"shop.shopbot.spacemon","data":{"busy":12.0},"ts":1423351104.945,"documentation_url":"http://x"}"#.to_vec(),
        br#"["a.b", null, [1, {"k": "v"}], null]"#.to_vec(),
        br#"{"type":"thing_expired","ns":"a","ts":1.0,"seq":2}"#.to_vec(),
        br#"{"type":"snapshot_error","request":1,"error":"busy"}"#.to_vec(),
        update,
        w.finish(),
        vector(),
    ]
}

fn mutate(rng: &mut SeededRandom, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.up_to(4) {
        if out.is_empty() {
            out.push(rng.up_to(255) as u8);
            continue;
        }
        let at = rng.up_to(out.len() as u32 - 1) as usize;
        match rng.up_to(4) {
            0 => out[at] = rng.up_to(255) as u8,
            1 => {
                out.remove(at);
            }
            2 => out.insert(at, rng.up_to(255) as u8),
            3 => out.truncate(at),
            _ => {
                let b = out[at];
                out.insert(at, b);
            }
        }
    }
    out
}

#[test]
fn decoders_survive_mutations_and_noise() {
    let limits = Limits::default();
    let mut rng = SeededRandom::new(0x0741_5b05);
    let seeds = seeds();
    let mut accepted = 0;
    let mut fast = 0;
    for i in 0..60_000 {
        let input = if i % 10 == 0 {
            (0..rng.up_to(64)).map(|_| rng.up_to(255) as u8).collect()
        } else {
            mutate(&mut rng, &seeds[i % seeds.len()])
        };
        accepted += usize::from(decode_json_input(&input, &limits).is_ok());
        accepted += usize::from(decode_msgpack_input(&input, &limits).is_ok());
        accepted += usize::from(decode_published(&input).is_ok());
        fast += usize::from(fast_snapshot_agrees(&input));
    }
    assert!(
        fast > 200,
        "only {fast} mutated snapshots took the fast path"
    );
    // Some mutations stay valid (a changed digit, say): the decoders were really exercised.
    assert!(accepted > 1000, "only {accepted} mutated inputs decoded");
}

#[test]
fn signed_datagrams_survive_mutations_and_noise() {
    let hex = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/signed-esp8266-list-update.hex"
    ))
    .expect("vector file");
    let hex = hex.trim();
    let seed: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let mut rng = SeededRandom::new(0x5166_ed00);
    let mut parsed = 0;
    for i in 0..20_000 {
        let input = if i % 10 == 0 {
            (0..rng.up_to(64)).map(|_| rng.up_to(255) as u8).collect()
        } else {
            mutate(&mut rng, &seed)
        };
        // The fuzz target's checks: no panic, and the properties it asserts.
        thingsbus_protocol::fuzzing::signed_datagram(&input);
        parsed += usize::from(thingsbus_protocol::signed::parse(&input).is_ok());
    }
    assert!(parsed > 1000, "only {parsed} mutated datagrams parsed");
}
