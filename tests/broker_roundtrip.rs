//! Every input form goes in and comes out as a 0.2.x-compatible `thing_update`.

use serde_json::{json, Value};
use thingsbus_tests::*;

fn assert_float_ts(v: &Value) -> f64 {
    assert!(v["ts"].is_f64(), "ts must be written as a JSON float: {v}");
    v["ts"].as_f64().expect("float ts")
}

#[test]
fn zmq_dict_form() {
    let rig = Rig::new(|_| {});
    rig.zmq.send_json(&json!({
        "type": "thing_update", "ns": "shop.shopbot.spacemon",
        "data": {"busy": 12.0, "light": 31.8}, "ts": 1423351104.945,
        "documentation_url": "http://example.com/Shopbot", "unknown_extra": [1, 2]
    }));
    let v = rig.sub.update_for("shop.shopbot.spacemon");
    assert_eq!(v["data"], json!({"busy": 12.0, "light": 31.8}));
    assert_eq!(assert_float_ts(&v), 1423351104.945);
    assert_eq!(v["documentation_url"], "http://example.com/Shopbot");
    assert!(v["seq"].as_u64().is_some_and(|s| s > 0), "seq missing: {v}");
    assert!(v.get("unknown_extra").is_none());
}

#[test]
fn zmq_list_form() {
    let rig = Rig::new(|_| {});
    rig.zmq.send_json(&json!([
        "a.b",
        1700000000.5,
        [1, "two", null],
        "http://doc"
    ]));
    let v = rig.sub.update_for("a.b");
    assert_eq!(v["data"], json!([1, "two", null]));
    assert_eq!(assert_float_ts(&v), 1700000000.5);
    assert_eq!(v["documentation_url"], "http://doc");
}

#[test]
fn udp_map_form() {
    let rig = Rig::new(|_| {});
    rig.udp.send_msgpack(&json!({
        "type": "thing_update", "ns": "garden.temp", "data": {"c": 21.5}, "ts": 1700000001.25
    }));
    let v = rig.sub.update_for("garden.temp");
    assert_eq!(v["data"], json!({"c": 21.5}));
    assert_eq!(assert_float_ts(&v), 1700000001.25);
    assert_eq!(v["documentation_url"], Value::Null);
}

#[test]
fn udp_list_form() {
    let rig = Rig::new(|_| {});
    rig.udp
        .send_msgpack(&json!(["garden.rain", 1700000002.0, true, null]));
    let v = rig.sub.update_for("garden.rain");
    assert_eq!(v["data"], json!(true));
    assert_eq!(assert_float_ts(&v), 1700000002.0);
}

#[test]
fn esp8266_vector_becomes_a_thing() {
    let rig = Rig::new(|_| {});
    let before = now();
    rig.udp.send(&vector("esp8266-list-update.msgpack.hex"));
    let v = rig.sub.update_for("bottlekid.prototype");
    let after = now();
    assert_eq!(
        v["data"],
        json!({"dht22_error": "", "metadata": {"loops": 154, "msgs_sent": 153, "msgs_dropped": 1}})
    );
    assert_eq!(
        v["documentation_url"],
        "https://github.com/mistakes-consortium/esp8266.bottlekids"
    );
    let ts = assert_float_ts(&v);
    assert!(
        (before..=after).contains(&ts),
        "nil ts is stamped with the arrival time: {ts}"
    );
}

#[test]
fn ts_defaults_to_arrival_and_integers_come_out_as_floats() {
    let rig = Rig::new(|_| {});
    let before = now();
    rig.zmq
        .send_json(&json!({"type": "thing_update", "ns": "t.absent", "data": 1}));
    rig.zmq
        .send_json(&json!({"type": "thing_update", "ns": "t.null", "data": 2, "ts": null}));
    rig.zmq
        .send_json(&json!({"type": "thing_update", "ns": "t.int", "data": 3, "ts": 1700000000}));
    let absent = rig.sub.update_for("t.absent");
    let null = rig.sub.update_for("t.null");
    let int = rig.sub.update_for("t.int");
    let after = now();
    for v in [&absent, &null] {
        let ts = assert_float_ts(v);
        assert!((before..=after).contains(&ts), "arrival time expected: {v}");
    }
    assert_eq!(assert_float_ts(&int), 1700000000.0);
    let raw = int.to_string();
    assert!(raw.contains("\"ts\":1700000000.0"), "{raw}");
}

#[test]
fn seq_increases_by_one_per_accepted_update() {
    // The broker's own thing takes sequence numbers too: keep it quiet here.
    let rig = Rig::new(|c| c.stats_interval = std::time::Duration::ZERO);
    for i in 0..5 {
        rig.zmq.send_json(&json!(["s.x", null, i, null]));
        rig.zmq.send_json(&json!(["BAD", null, i, null]));
    }
    let seqs: Vec<u64> = (0..5)
        .map(|_| rig.sub.update_for("s.x")["seq"].as_u64().expect("seq"))
        .collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "rejected messages take no seq: {seqs:?}");
    }
}

#[test]
fn documentation_url_is_sticky() {
    let rig = Rig::new(|c| c.snapshot_interval = std::time::Duration::from_millis(200));
    rig.zmq
        .send_json(&json!(["doc.thing", null, 1, "http://doc/1"]));
    assert_eq!(
        rig.sub.update_for("doc.thing")["documentation_url"],
        "http://doc/1"
    );
    rig.zmq.send_json(&json!(["doc.thing", null, 2, null]));
    assert_eq!(
        rig.sub.update_for("doc.thing")["documentation_url"],
        "http://doc/1"
    );
    rig.zmq.send_json(&json!(["doc.thing", null, 3, ""]));
    assert_eq!(
        rig.sub.update_for("doc.thing")["documentation_url"],
        "http://doc/1"
    );
    let snap = rig
        .sub
        .wait_for(DEADLINE, "a snapshot holding doc.thing", |v| {
            v["type"] == "thing_snapshot" && v["data"].get("doc.thing").is_some()
        });
    assert_eq!(
        snap["data"]["doc.thing"]["documentation_url"],
        "http://doc/1"
    );
    assert_eq!(snap["data"]["doc.thing"]["data"], 3);
    rig.zmq
        .send_json(&json!(["doc.thing", null, 4, "http://doc/2"]));
    assert_eq!(
        rig.sub.update_for("doc.thing")["documentation_url"],
        "http://doc/2"
    );
}

#[test]
fn namespace_table() {
    let rig = Rig::new(|_| {});
    let long_ok = format!("a{}", "b".repeat(63));
    let too_long = format!("a{}", "b".repeat(64));
    let valid = ["a", "shop.shopbot.spacemon", "x0.y_z.w-v", long_ok.as_str()];
    let invalid = [
        "A",
        "a.B",
        "a.",
        ".a",
        "a..b",
        "0a",
        "_a",
        "a b",
        "é",
        too_long.as_str(),
    ];
    for ns in valid {
        rig.zmq
            .send_json(&json!({"type": "thing_update", "ns": ns, "data": 1}));
        rig.sub.update_for(ns);
    }
    for ns in invalid {
        rig.zmq
            .send_json(&json!({"type": "thing_update", "ns": ns, "data": 1}));
        rig.sub.assert_no_update_before_probe(ns, &rig.zmq);
    }
    assert_eq!(
        rig.stats()
            .rejected(thingsbus_protocol::Rejection::InvalidNs),
        invalid.len() as u64
    );
}

#[test]
fn order_is_kept_at_every_load() {
    // Bursts and trickles alternate, with snapshots going out meanwhile, so that the direct path
    // (ingest sends a small batch itself), the queued path (the publish thread sends a big one)
    // and snapshot interleaving are all taken. Every update must arrive, in seq order.
    let rig = Rig::new(|c| c.snapshot_interval = std::time::Duration::from_millis(50));
    let mut expected = 0u64;
    let mut last_seq = 0u64;
    for round in 0..40 {
        let burst = if round % 2 == 0 { 2000 } else { 3 };
        for _ in 0..burst {
            rig.zmq.send_json(&json!(["order.x", null, expected, null]));
            expected += 1;
        }
        let mut next = expected - burst;
        while next < expected {
            let v = rig.sub.update_for("order.x");
            let seq = v["seq"].as_u64().expect("seq");
            assert_eq!(
                v["data"].as_u64(),
                Some(next),
                "round {round}: lost or reordered"
            );
            assert!(seq > last_seq, "seq went from {last_seq} to {seq}");
            last_seq = seq;
            next += 1;
        }
    }
    assert_eq!(rig.stats().rejected_total(), 0);
}
