//! The fast path for snapshot chunks reads every chunk exactly as `serde_json` does: thousands
//! of generated chunks, their entries mixing the broker's own shape with every kind of oddity a
//! broker or the network can produce, each decoded both ways and compared.

use thingsbus_protocol::codec::{decode_published, Published};
use thingsbus_protocol::discovery::{RandomSource, SeededRandom};
use thingsbus_protocol::fuzzing::fast_snapshot_agrees;

fn pick<'a>(rng: &mut SeededRandom, items: &[&'a str]) -> &'a str {
    items[rng.up_to(items.len() as u32 - 1) as usize]
}

/// Mostly one of `usual`, now and then one of `odd`.
fn mostly<'a>(rng: &mut SeededRandom, usual: &[&'a str], odd: &[&'a str]) -> &'a str {
    if rng.up_to(5) == 0 {
        pick(rng, odd)
    } else {
        pick(rng, usual)
    }
}

fn nested(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

fn entry(rng: &mut SeededRandom, i: usize) -> String {
    let deep = [
        nested(99),
        nested(100),
        nested(101),
        nested(126),
        nested(130),
    ];
    let ns = mostly(
        rng,
        &["\"a.b\"", "\"late.t0001\"", "\"x\""],
        &[
            "\"a..b\"",
            "\"\"",
            "\"A B\"",
            "\"a\\u002eb\"",
            "\"a\\\"b\"",
            "5",
            "null",
            "\"a.b\\u00\"",
        ],
    );
    let data = match rng.up_to(12) {
        0 => deep[rng.up_to(4) as usize].clone(),
        _ => mostly(
            rng,
            &[
                "1",
                "{\"n\":1,\"t\":2}",
                "[1,2]",
                "\"s\\\"x\"",
                "null",
                "{}",
            ],
            &[
                "01",
                "[1,]",
                "{}",
                " {\"a\" : [ true , false ] } ",
                "-0.5e-3",
                "\"\\ud800\"",
                "{\"a\":1",
            ],
        )
        .to_owned(),
    };
    let ts = match rng.up_to(3) {
        0 => format!("{}.{}", rng.up_to(u32::MAX), rng.up_to(999_999)),
        _ => mostly(
            rng,
            &["1764423456.123456", "null", "0.0"],
            &[
                "1",
                "-1.5",
                "1e3",
                "\"x\"",
                "0.0",
                "1.7976931348623157e308",
                "99999999999999999999999.5",
                "1764423456.1234567890123",
                "1.",
                "00.5",
                "[]",
                "9007199254740993.0",
            ],
        )
        .to_owned(),
    };
    let url = mostly(
        rng,
        &["null", "\"\"", "\"http://x\""],
        &["\"a\\nb\"", "5", "\"é\""],
    );
    let seq = mostly(
        rng,
        &["1", "0", "18446744073709551615"],
        &[
            "-1",
            "1.5",
            "18446744073709551615",
            "18446744073709551616",
            "null",
            "\"3\"",
            "007",
        ],
    );
    let key = pick(rng, &["\"k\"", "\"k\\u0041\"", "\"late.t1\""]);
    let fields = [
        format!("\"ns\":{ns}"),
        format!("\"data\":{data}"),
        format!("\"ts\":{ts}"),
        format!("\"documentation_url\":{url}"),
        format!("\"seq\":{seq}"),
    ];
    let body = match rng.up_to(29) {
        // Reordered, a field left out, an extra field, a repeated one, spaces.
        0 => format!(
            "{},{},{},{},{}",
            fields[4], fields[0], fields[1], fields[2], fields[3]
        ),
        1 => fields[..4].join(","),
        2 => format!("{},\"extra\":[{i}]", fields.join(",")),
        3 => format!("{},{}", fields.join(","), fields[0]),
        4 => fields.join(" , "),
        _ => fields.join(","),
    };
    match rng.up_to(60) {
        0 => format!("{key}:[{body}]"),
        1 => format!("{key}:null"),
        _ => format!("{key}:{{{body}}}"),
    }
}

fn chunk(rng: &mut SeededRandom) -> String {
    let n = rng.up_to(6) as usize;
    let entries: Vec<String> = (0..n).map(|i| entry(rng, i)).collect();
    let data = format!("{{{}}}", entries.join(","));
    let head = pick(
        rng,
        &[
            r#","ts":1.5,"seq":3,"epoch":9,"snapshot":1,"chunk":0"#,
            r#","ts":1.5,"seq":3,"epoch":9,"snapshot":1,"chunk":0,"request":{"id":[1,"x"]},"subtree":"a","total":7"#,
            r#","ts":"x","seq":-1,"chunk":1.5,"stale":true"#,
            r#","seq":3,"seq":4"#,
            r#","unknown":[[[]]],"last":false"#,
            "",
        ],
    );
    let tail = pick(
        rng,
        &[
            r#","last":true}"#,
            r#","last":false}"#,
            "}",
            "} x",
            r#","data":{}}"#,
            " } ",
        ],
    );
    match rng.up_to(20) {
        0 => format!(r#"{{"type":"thing_snapshot"{head}}}"#),
        1 => format!(r#"{{"type":"thing_snapshot"{head},"data":[]{tail}"#),
        _ => format!(r#"{{"type":"thing_snapshot"{head},"data":{data}{tail}"#),
    }
}

#[test]
fn generated_chunks_decode_alike_both_ways() {
    let mut rng = SeededRandom::new(0x5eed_f457);
    let mut fast = 0;
    let mut entries = 0;
    for _ in 0..40_000 {
        let text = chunk(&mut rng);
        // Panics when the two ways differ.
        if fast_snapshot_agrees(text.as_bytes()) {
            fast += 1;
            if let Ok(Published::Snapshot(s)) = decode_published(text.as_bytes()) {
                entries += s.entries.len();
            }
        }
    }
    // Many generated chunks are invalid (serde_json refuses them, and the fast path hands them
    // over); enough are valid that the fast path really was compared, on many entries.
    assert!(fast > 3_000, "only {fast} chunks took the fast path");
    assert!(
        entries > 5_000,
        "only {entries} entries came through the fast path"
    );
}

#[test]
fn broker_chunks_take_the_fast_path() {
    use thingsbus_protocol::codec::encode_update;
    use thingsbus_protocol::snapshot::{ChunkWriter, SnapshotHeader};
    use thingsbus_protocol::Timestamp;
    let header = SnapshotHeader {
        ts: Timestamp::from_secs(1_764_423_456.5).unwrap(),
        seq: 9,
        id: 2,
        epoch: 7,
    };
    let mut w = ChunkWriter::with_extra(
        header,
        1 << 20,
        r#","request":3,"subtree":"","total":3"#.into(),
    );
    for (i, (ns, data, url)) in [
        ("a.b", r#"{"busy":12.0}"#, None),
        ("a.c", r#"[1,"two",null]"#, Some("http://doc")),
        ("z", "\"esc\\\"aped\"", Some("")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut enc = Vec::new();
        let ts = Timestamp::from_secs(1_764_423_000.25 + i as f64).unwrap();
        encode_update(&mut enc, ns, data, ts, url, i as u64 + 1);
        w.push(ns.as_bytes(), &enc);
    }
    let chunk = w.finish();
    assert!(
        fast_snapshot_agrees(&chunk),
        "{}",
        String::from_utf8_lossy(&chunk)
    );
    let Ok(Published::Snapshot(s)) = decode_published(&chunk) else {
        panic!("not a snapshot");
    };
    assert_eq!(s.entries.len(), 3);
    assert_eq!(s.entries[1].data, r#"[1,"two",null]"#);
    assert_eq!(
        s.entries[1].documentation_url.as_deref(),
        Some("http://doc")
    );
    assert_eq!(s.entries[2].documentation_url, None);
    assert_eq!(s.entries[2].seq, Some(3));
    assert_eq!(s.total, Some(3));
    assert_eq!(s.last, Some(true));
}
