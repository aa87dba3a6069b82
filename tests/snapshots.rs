//! Periodic snapshots: content, live window, chunking and the seq they carry.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};
use thingsbus_tests::*;

/// Collects the chunks of the next complete snapshot (from chunk 0 to the one marked last).
fn next_full_snapshot(sub: &Subscriber) -> Vec<Value> {
    let first = sub.wait_for(DEADLINE, "the first chunk of a snapshot", |v| {
        v["type"] == "thing_snapshot" && v["chunk"] == 0
    });
    let id = first["snapshot"].clone();
    let mut chunks = vec![first];
    while chunks.last().is_some_and(|c| c["last"] != true) {
        let c = sub.wait_for(DEADLINE, "the next chunk", |v| {
            v["type"] == "thing_snapshot"
        });
        assert_eq!(c["snapshot"], id, "chunks of two snapshots interleaved");
        assert_eq!(c["chunk"], chunks.len() as u64, "chunks out of order");
        chunks.push(c);
    }
    chunks
}

#[test]
fn snapshot_at_start_even_when_empty() {
    let broker = spawn_broker(|c| {
        c.snapshot_interval = Duration::from_secs(3600);
        // Not even the broker's own thing: the directory must be empty.
        c.stats_interval = Duration::ZERO;
    });
    let sub = Subscriber::connect(&broker);
    // The first snapshot goes out at start-up, usually before this subscriber is connected, so

    // its counter proves it; the next would come an hour later.
    eventually(DEADLINE, "the start-up snapshot", || {
        (broker
            .stats()
            .snapshots
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
            .then_some(())
    });
    // If the subscriber was quick enough to see it, it is snapshot 1 and empty.
    while let Some(v) = sub.recv_json(Duration::from_millis(100)) {
        assert_eq!(v["type"], "thing_snapshot");
        assert_eq!(v["snapshot"], 1);
        assert_eq!(v["data"], json!({}));
        assert_eq!(v["last"], true);
    }
    assert_eq!(
        broker
            .stats()
            .snapshots
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn snapshot_holds_live_things_with_their_last_update() {
    let rig = Rig::new(|c| {
        c.snapshot_interval = Duration::from_millis(300);
        c.live_window = Duration::from_secs(30);
    });
    let t = now();
    // UDP and ZMQ inputs are not ordered with each other: wait for the UDP one first.
    rig.udp.send_msgpack(&json!(["live.b", null, [1, 2], null]));
    rig.sub.update_for("live.b");
    rig.zmq
        .send_json(&json!(["live.a", t - 1.0, {"v": 1}, "http://a"]));
    rig.zmq.send_json(&json!(["live.a", t, {"v": 2}, null]));
    rig.zmq.send_json(&json!(["stale.c", t - 31.0, 1, null]));
    assert_eq!(rig.sub.update_for("live.a")["data"]["v"], 1);
    let last_a = rig.sub.update_for("live.a");
    rig.sub.update_for("stale.c");
    let chunks = next_full_snapshot(&rig.sub);
    let snap = &chunks[0];
    assert!(snap["ts"].is_f64());
    assert!(
        snap["seq"].as_u64() >= last_a["seq"].as_u64(),
        "snapshot older than an update before it"
    );
    let data = &snap["data"];
    assert_eq!(data["live.a"]["data"], json!({"v": 2}));
    assert_eq!(data["live.a"]["ns"], "live.a");
    assert_eq!(data["live.a"]["ts"].as_f64(), Some(t));
    assert!(data["live.a"]["ts"].is_f64());
    assert_eq!(data["live.a"]["documentation_url"], "http://a");
    assert_eq!(data["live.a"]["seq"], last_a["seq"]);
    assert_eq!(data["live.b"]["data"], json!([1, 2]));
    assert!(
        data.get("stale.c").is_none(),
        "things outside the live window stay out: {data}"
    );
}

#[test]
fn snapshot_seq_matches_the_updates_before_it() {
    let rig = Rig::new(|c| c.snapshot_interval = Duration::from_millis(200));
    // Every update published before a snapshot has seq <= the snapshot's; every one after has more.
    for i in 0..50 {
        rig.zmq.send_json(&json!(["seq.x", null, i, null]));
    }
    let mut last_update_seq = 0;
    let mut checked = 0;
    while checked < 2 {
        let v = rig.sub.recv_json(DEADLINE).expect("traffic");
        match v["type"].as_str() {
            Some("thing_update") => {
                let s = v["seq"].as_u64().expect("seq");
                assert!(s > last_update_seq);
                last_update_seq = s;
            }
            // Not before the first of them: a snapshot taken between `Rig::new`'s sync and the
            // first update carries the seq of sync messages this loop never saw (failed so once).
            Some("thing_snapshot") if v["chunk"] == 0 && last_update_seq > 0 => {
                assert_eq!(v["seq"].as_u64(), Some(last_update_seq), "snapshot seq");
                checked += 1;
            }
            _ => {}
        }
    }
}

#[test]
fn big_directory_goes_out_in_bounded_chunks() {
    let chunk_bytes = 4096;
    let rig = Rig::new(|c| {
        c.snapshot_interval = Duration::from_millis(500);
        c.snapshot_chunk_bytes = chunk_bytes;
    });
    let names: Vec<String> = (0..400).map(|i| format!("many.t{i}")).collect();
    for (i, ns) in names.iter().enumerate() {
        rig.zmq
            .send_json(&json!([ns, null, {"i": i, "pad": "0123456789"}, null]));
    }
    rig.sub.update_for("many.t399");
    // The snapshot after the last update holds them all.
    let chunks = loop {
        let chunks = next_full_snapshot(&rig.sub);
        if chunks.iter().any(|c| c["data"].get("many.t399").is_some()) {
            break chunks;
        }
    };
    assert!(
        chunks.len() > 5,
        "expected several chunks, got {}",
        chunks.len()
    );
    let seq = &chunks[0]["seq"];
    let mut seen = HashSet::new();
    let mut values = HashMap::new();
    for c in &chunks {
        let size = c.to_string().len();
        assert!(
            size <= chunk_bytes,
            "chunk of {size} bytes over the {chunk_bytes} bound"
        );
        assert_eq!(&c["seq"], seq);
        for (ns, entry) in c["data"].as_object().expect("data object") {
            assert!(seen.insert(ns.clone()), "{ns} twice in one snapshot");
            values.insert(ns.clone(), entry["data"]["i"].clone());
        }
    }
    for (i, ns) in names.iter().enumerate() {
        assert_eq!(values.get(ns), Some(&json!(i)), "{ns} missing or wrong");
    }
    assert!(
        rig.stats()
            .snapshot_chunks
            .load(std::sync::atomic::Ordering::Relaxed)
            >= chunks.len() as u64
    );
}

/// A directory bigger than one slice of a periodic snapshot (the broker copies 16,384 things a
/// turn), with live updates to some things while snapshots go out: every full snapshot holds
/// each quiet thing exactly once, and no snapshot entry is older than a live update of the same
/// thing that came before it on the stream.
#[test]
fn a_snapshot_taken_in_slices_holds_everything_and_never_goes_back() {
    let rig = Rig::new(|c| c.snapshot_interval = Duration::from_millis(300));
    let n = 40_000;
    for i in 0..n {
        rig.zmq
            .send_json(&json!([format!("big.t{i:05}"), null, {"v": 0}, null]));
    }
    rig.sub.update_for(&format!("big.t{:05}", n - 1));
    let hot: Vec<String> = (0..n).step_by(97).map(|i| format!("big.t{i:05}")).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let input = ZmqInput::connect(&rig.broker);
        let (hot, stop) = (hot.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut v = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                v += 1;
                for ns in &hot {
                    input.send_json(&json!([ns, null, {"v": v}, null]));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut live: HashMap<String, u64> = HashMap::new();
    let mut full = 0;
    let mut current: Option<(Value, HashSet<String>, u64)> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while full < 3 {
        assert!(std::time::Instant::now() < deadline, "three full snapshots");
        let v = rig.sub.recv_json(DEADLINE).expect("traffic");
        match v["type"].as_str() {
            Some("thing_update") => {
                if let (Some(ns), Some(got)) = (v["ns"].as_str(), v["data"]["v"].as_u64()) {
                    live.insert(ns.to_owned(), got);
                }
            }
            Some("thing_snapshot") => {
                if v["chunk"] == 0 {
                    current = Some((v["snapshot"].clone(), HashSet::new(), 0));
                }
                let Some((id, seen, next)) = current.as_mut() else {
                    continue; // joined in the middle of one
                };
                assert_eq!(&v["snapshot"], id, "chunks of two snapshots interleaved");
                assert_eq!(v["chunk"], *next, "chunks out of order");
                *next += 1;
                for (ns, entry) in v["data"].as_object().expect("data object") {
                    assert!(seen.insert(ns.clone()), "{ns} twice in one snapshot");
                    let Some(got) = entry["data"]["v"].as_u64() else {
                        continue; // the broker's own thing
                    };
                    let before = live.get(ns).copied().unwrap_or(0);
                    assert!(
                        got >= before,
                        "{ns}: the snapshot sent v={got} after a live v={before}"
                    );
                }
                if v["last"] == true {
                    let (_, seen, _) = current.take().expect("open");
                    let quiet_missing = (0..n)
                        .map(|i| format!("big.t{i:05}"))
                        .filter(|ns| !hot.contains(ns) && !seen.contains(ns))
                        .count();
                    assert_eq!(quiet_missing, 0, "quiet things missing from a snapshot");
                    full += 1;
                }
            }
            _ => {}
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("writer");
}
