//! Every kind of bad input is dropped and counted by reason, and the broker keeps serving: each
//! case is followed by a valid update that must come through.

use std::time::Duration;

use serde_json::json;
use thingsbus_protocol::Rejection;
use thingsbus_tests::*;

const UPDATE_DATA: &str = r#"{"type":"thing_update","ns":"ok.after","data":"#;

fn follow_up_arrives(rig: &Rig, via_udp: bool, n: usize) {
    let ns = format!("ok.after.n{n}");
    if via_udp {
        rig.udp.send_msgpack(&json!([ns, null, n, null]));
    } else {
        rig.zmq.send_json(&json!([ns, null, n, null]));
    }
    let v = rig.sub.update_for(&ns);
    assert_eq!(v["data"], n);
}

#[test]
fn bad_zmq_frames_are_dropped_and_counted() {
    let rig = Rig::new(|c| c.max_depth = 16);
    let deep = format!("{UPDATE_DATA}{}1{}}}", "[".repeat(17), "]".repeat(17));
    let cases: Vec<(Vec<u8>, Rejection)> = vec![
        (b"".to_vec(), Rejection::Empty),
        (b"\xff\xfe{}".to_vec(), Rejection::InvalidUtf8),
        (
            b"{\"type\":\"thing_update\",\"ns\":\"a\",\"data\":\"\xc3\x28\"}".to_vec(),
            Rejection::InvalidUtf8,
        ),
        (b"{not json".to_vec(), Rejection::InvalidJson),
        (b"[1, 2".to_vec(), Rejection::InvalidJson),
        (b"42".to_vec(), Rejection::NotObject),
        (b"\"thing_update\"".to_vec(), Rejection::NotObject),
        (b"null".to_vec(), Rejection::NotObject),
        (br#"["a", null, 1]"#.to_vec(), Rejection::BadListLength),
        (
            br#"["a", null, 1, null, 5]"#.to_vec(),
            Rejection::BadListLength,
        ),
        (br#"{"ns":"a","data":1}"#.to_vec(), Rejection::MissingType),
        (
            br#"{"type":"thing_delete","ns":"a","data":1}"#.to_vec(),
            Rejection::UnknownType,
        ),
        (
            br#"{"type":"thing_snapshot","ts":1.0,"data":{"a":{"ns":"a","data":1,"ts":1.0}}}"#
                .to_vec(),
            Rejection::SnapshotOnInput,
        ),
        (
            br#"{"type":"thing_update","data":1}"#.to_vec(),
            Rejection::MissingNs,
        ),
        (
            br#"{"type":"thing_update","ns":["a"],"data":1}"#.to_vec(),
            Rejection::BadNs,
        ),
        (
            br#"{"type":"thing_update","ns":"a..b","data":1}"#.to_vec(),
            Rejection::InvalidNs,
        ),
        (
            br#"{"type":"thing_update","ns":"a"}"#.to_vec(),
            Rejection::MissingData,
        ),
        (
            br#"{"type":"thing_update","ns":"a","data":1,"ts":"yesterday"}"#.to_vec(),
            Rejection::BadTs,
        ),
        (
            br#"{"type":"thing_update","ns":"a","data":1,"ts":1e999}"#.to_vec(),
            Rejection::BadTs,
        ),
        (
            br#"{"type":"thing_update","ns":"a","data":1,"documentation_url":{}}"#.to_vec(),
            Rejection::BadDocumentationUrl,
        ),
        (
            br#"{"type":"thing_update","ns":"a","data":99999999999999999999999}"#.to_vec(),
            Rejection::BigInteger,
        ),
        (
            br#"{"type":"thing_update","ns":"a","data":NaN}"#.to_vec(),
            Rejection::InvalidJson,
        ),
        // Fuzzing taught: numbers beyond a double, which JSON's grammar allows.
        (
            br#"{"type":"thing_update","ns":"a","data":{"v":[1e999]}}"#.to_vec(),
            Rejection::NonFinite,
        ),
        (
            br#"{"type":"thing_update","ns":"a","data":1,"ts":1e400}"#.to_vec(),
            Rejection::BadTs,
        ),
        (deep.into_bytes(), Rejection::TooDeep),
        (
            format!("{UPDATE_DATA}{}1{}}}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            Rejection::TooDeep,
        ),
    ];
    for (n, (bytes, reason)) in cases.into_iter().enumerate() {
        let before = rig.stats().rejected(reason);
        rig.zmq.send(&bytes);
        follow_up_arrives(&rig, false, n);
        assert_eq!(
            rig.stats().rejected(reason),
            before + 1,
            "case {n} ({}) not counted as {}",
            String::from_utf8_lossy(&bytes),
            reason.as_str()
        );
    }
}

#[test]
fn multipart_message_is_dropped_whole() {
    let rig = Rig::new(|_| {});
    let part = json!({"type": "thing_update", "ns": "multi.part", "data": 1}).to_string();
    rig.zmq
        .0
        .send(part.as_bytes(), zmq::SNDMORE)
        .expect("send first frame");
    rig.zmq
        .0
        .send(part.as_bytes(), 0)
        .expect("send second frame");
    rig.sub
        .assert_no_update_before_probe("multi.part", &rig.zmq);
    assert_eq!(rig.stats().rejected(Rejection::Multipart), 1);
    follow_up_arrives(&rig, false, 0);
}

#[test]
fn bad_udp_datagrams_are_dropped_and_counted() {
    let rig = Rig::new(|c| {
        c.max_depth = 16;
        c.max_message_bytes = 8192;
    });
    let mut nan = vec![0x94, 0xa1, b'a', 0xc0, 0xcb];
    nan.extend_from_slice(&f64::NAN.to_be_bytes());
    nan.push(0xc0);
    let mut inf = vec![0x94, 0xa1, b'a', 0xc0, 0xca];
    inf.extend_from_slice(&f32::NEG_INFINITY.to_be_bytes());
    inf.push(0xc0);
    let mut nan_ts = vec![0x94, 0xa1, b'a', 0xcb];
    nan_ts.extend_from_slice(&f64::NAN.to_be_bytes());
    nan_ts.extend_from_slice(&[0x01, 0xc0]);
    let mut deep = vec![0x94, 0xa1, b'a', 0xc0];
    deep.extend(std::iter::repeat_n(0x91, 17));
    deep.extend_from_slice(&[0x01, 0xc0]);
    let vector = vector("esp8266-list-update.msgpack.hex");
    let mut too_big = vec![0x94, 0xa1, b'a', 0xc0, 0xda, 0x27, 0x10];
    too_big.extend(std::iter::repeat_n(b'x', 10_000));
    too_big.push(0xc0);
    let cases: Vec<(Vec<u8>, Rejection)> = vec![
        (vec![], Rejection::Empty),
        (nan, Rejection::NonFinite),
        (inf, Rejection::NonFinite),
        (nan_ts, Rejection::BadTs),
        (
            vec![0x94, 0xa1, b'a', 0xc0, 0xc4, 0x02, 1, 2, 0xc0],
            Rejection::BinaryValue,
        ),
        (
            vec![0x94, 0xa1, b'a', 0xc0, 0xd5, 0x01, 1, 2, 0xc0],
            Rejection::BinaryValue,
        ),
        (
            vector[..vector.len() - 10].to_vec(),
            Rejection::InvalidMsgpack,
        ),
        (vec![0xc1], Rejection::InvalidMsgpack),
        (vec![0x93, 0xa1, b'a', 0xc0, 0x01], Rejection::BadListLength),
        (
            vec![0x95, 0xa1, b'a', 0xc0, 0x01, 0xc0, 0xc0],
            Rejection::BadListLength,
        ),
        (vec![0x2a], Rejection::NotObject),
        (
            vec![0x94, 0xa2, 0xc3, 0x28, 0xc0, 0x01, 0xc0],
            Rejection::InvalidUtf8,
        ),
        (vec![0x94, 0x05, 0xc0, 0x01, 0xc0], Rejection::BadNs),
        (
            vec![0x94, 0xa1, b'A', 0xc0, 0x01, 0xc0],
            Rejection::InvalidNs,
        ),
        (
            vec![0x94, 0xa1, b'a', 0xc0, 0x81, 0xc3, 0x01, 0xc0],
            Rejection::BadMapKey,
        ),
        (
            rmp_serde::to_vec(&json!({"ns": "a", "data": 1})).expect("msgpack"),
            Rejection::MissingType,
        ),
        (
            rmp_serde::to_vec(&json!({"type": "thing_snapshot", "data": {}})).expect("msgpack"),
            Rejection::SnapshotOnInput,
        ),
        (
            rmp_serde::to_vec(&json!({"type": "x", "ns": "a", "data": 1})).expect("msgpack"),
            Rejection::UnknownType,
        ),
        (deep, Rejection::TooDeep),
        (too_big, Rejection::TooLarge),
    ];
    for (n, (bytes, reason)) in cases.into_iter().enumerate() {
        let before = rig.stats().rejected(reason);
        rig.udp.send(&bytes);
        follow_up_arrives(&rig, true, n);
        assert_eq!(
            rig.stats().rejected(reason),
            before + 1,
            "case {n} ({bytes:02x?}) not counted as {}",
            reason.as_str()
        );
    }
}

#[test]
fn biggest_udp_datagram_is_accepted() {
    let rig = Rig::new(|_| {});
    // 65,507 bytes: the largest UDP payload over IPv4. 0.2.x read only 4,096 bytes of it.
    let overhead = rmp_serde::to_vec(&json!(["big.one", null, "", null]))
        .expect("msgpack")
        .len()
        + 2; // str16 header instead of fixstr
    let text = "x".repeat(65_507 - overhead);
    let bytes = rmp_serde::to_vec(&json!(["big.one", null, text, null])).expect("msgpack");
    assert_eq!(bytes.len(), 65_507);
    rig.udp.send(&bytes);
    let v = rig.sub.update_for("big.one");
    assert_eq!(v["data"].as_str().map(str::len), Some(text.len()));
}

#[test]
fn oversized_zmq_frame_costs_only_that_connection() {
    let rig = Rig::new(|c| c.max_message_bytes = 4096);
    let other = ZmqInput::connect(&rig.broker);
    sync(&rig.sub, &other);
    let disconnects = rig
        .stats()
        .input_disconnects
        .load(std::sync::atomic::Ordering::Relaxed);
    let big = json!({"type": "thing_update", "ns": "too.big", "data": "x".repeat(10_000)});
    rig.zmq.send_json(&big);
    eventually(DEADLINE, "libzmq to drop the oversized sender", || {
        (rig.stats()
            .input_disconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            > disconnects)
            .then_some(())
    });
    // The other adaptor was never affected.
    other.send_json(&json!(["other.adaptor", null, 1, null]));
    rig.sub.update_for("other.adaptor");
    // The offender's PUB socket reconnects by itself and its next updates come through.
    let sub = &rig.sub;
    eventually(DEADLINE, "the oversized sender to reconnect", || {
        rig.zmq.send_json(&json!(["back.again", null, 1, null]));
        sub.recv_json(Duration::from_millis(50))
            .filter(|v| v["ns"] == "back.again")
    });
    assert!(
        !std::iter::from_fn(|| sub.recv_json(Duration::from_millis(100)))
            .any(|v| v["ns"] == "too.big"),
        "an oversized frame must never be published"
    );
}

#[test]
fn a_ts_beyond_the_clock_skew_is_dropped_as_future_ts_on_both_inputs() {
    let rig = Rig::new(|c| c.max_clock_skew = Duration::from_secs(60));
    let future = |id: &str| {
        let before = rig.stats().rejected(thingsbus_broker::Reason::FutureTs);
        if id == "udp" {
            rig.udp
                .send_msgpack(&json!(["skew.udp", now() + 3600.0, 1, null]));
        } else {
            rig.zmq
                .send_json(&json!(["skew.zmq", now() + 3600.0, 1, null]));
        }
        eventually(Duration::from_secs(10), "the future update counted", || {
            (rig.stats().rejected(thingsbus_broker::Reason::FutureTs) > before).then_some(())
        });
    };
    future("udp");
    future("zmq");
    // Within the skew (a sender's clock a little ahead): taken with its own ts.
    let ahead = now() + 30.0;
    rig.zmq.send_json(&json!(["skew.zmq", ahead, 2, null]));
    let v = rig.sub.update_for("skew.zmq");
    assert_eq!(v["data"], 2);
    assert!(
        (v["ts"].as_f64().unwrap_or(0.0) - ahead).abs() < 1e-3,
        "{v}"
    );
    // The thing from the future never got in, so the later, honest value was not shadowed.
    rig.udp.send_msgpack(&json!(["skew.udp", null, 3, null]));
    assert_eq!(rig.sub.update_for("skew.udp")["data"], 3);
    let status = rig.broker.stats().rejected_by_reason();
    let counted: Vec<_> = status.filter(|(r, _)| r.as_str() == "future_ts").collect();
    assert_eq!(counted.len(), 1);
    assert_eq!(counted[0].1, 2, "one per input");
}

#[test]
fn new_things_beyond_max_things_are_dropped_while_held_things_still_change() {
    use std::sync::atomic::Ordering;
    use thingsbus_broker::Reason;
    let rig = Rig::new(|c| {
        c.max_things = 20;
        c.stats_interval = Duration::ZERO;
    });
    let held = rig.stats().things.load(Ordering::Relaxed) as usize;
    assert!(held < 20, "the rig's own probes take {held} things");
    let room = 20 - held;
    for i in 0..room + 5 {
        rig.zmq
            .send_json(&json!([format!("cap.t{i}"), null, i, null]));
    }
    eventually(Duration::from_secs(10), "5 things refused", || {
        (rig.stats().rejected(Reason::TooManyThings) == 5).then_some(())
    });
    // The first `room` got in, the last 5 did not.
    rig.udp
        .send_msgpack(&json!(["cap.t0", null, "changed", null]));
    rig.sub
        .wait_for(Duration::from_secs(10), "a held thing's change", |v| {
            v["ns"] == "cap.t0" && v["data"] == "changed"
        });
    assert_eq!(rig.stats().things.load(Ordering::Relaxed), 20);
    let last_in = format!("cap.t{}", room - 1);
    rig.zmq.send_json(&json!([last_in, null, "again", null]));
    rig.sub.wait_for(
        Duration::from_secs(10),
        "the last thing let in, changed",
        |v| v["ns"] == last_in.as_str() && v["data"] == "again",
    );
    assert_eq!(rig.stats().max_things.load(Ordering::Relaxed), 20);
    assert_eq!(
        by_label(&rig, "too_many_things"),
        5,
        "counted under its own name"
    );
    assert_eq!(by_label(&rig, "not_allowed"), 0, "and under no other");
}

/// A reason's count as the broker's thing and `/metrics` show it: by its label.
fn by_label(rig: &Rig, label: &str) -> u64 {
    rig.stats()
        .rejected_by_reason()
        .filter(|(r, _)| r.as_str() == label)
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn values_beyond_max_bytes_are_dropped_and_shrinking_ones_pass() {
    use std::sync::atomic::Ordering;
    use thingsbus_broker::Reason;
    let rig = Rig::new(|c| {
        c.max_bytes = 8192;
        c.stats_interval = Duration::ZERO;
    });
    let big = "x".repeat(3000);
    rig.zmq.send_json(&json!(["bytes.a", null, big, null]));
    assert_eq!(rig.sub.update_for("bytes.a")["data"], big.as_str());
    rig.zmq.send_json(&json!(["bytes.b", null, big, null]));
    assert_eq!(rig.sub.update_for("bytes.b")["data"], big.as_str());
    rig.zmq.send_json(&json!(["bytes.c", null, big, null]));
    eventually(
        Duration::from_secs(10),
        "the third big value refused",
        || (rig.stats().rejected(Reason::TooManyBytes) == 1).then_some(()),
    );
    // Growing a held thing beyond the cap is refused too; shrinking it is not.
    rig.zmq
        .send_json(&json!(["bytes.a", null, "y".repeat(6000), null]));
    eventually(Duration::from_secs(10), "the growth refused", || {
        (rig.stats().rejected(Reason::TooManyBytes) == 2).then_some(())
    });
    rig.zmq.send_json(&json!(["bytes.a", null, "small", null]));
    rig.sub
        .wait_for(Duration::from_secs(10), "the shrunk value", |v| {
            v["ns"] == "bytes.a" && v["data"] == "small"
        });
    // With room again, a new thing fits.
    rig.zmq.send_json(&json!(["bytes.c", null, big, null]));
    assert_eq!(rig.sub.update_for("bytes.c")["data"], big.as_str());
    let held = rig.stats().bytes_held.load(Ordering::Relaxed);
    assert!(held > 6000 && held <= 8192, "bytes held {held}");
    assert_eq!(
        by_label(&rig, "too_many_bytes"),
        2,
        "counted under its own name"
    );
}

/// A burst of datagrams waiting together on the socket is taken a batch at a time (`recvmmsg`):
/// every one of them must still be checked on its own, with its own sender and length. Good
/// updates, refused senders, oversized (truncated) and malformed datagrams alternate in one
/// burst, sent faster than the broker wakes up; the good ones must all come out, in order, and
/// every bad one be counted once under its own reason.
#[test]
fn a_burst_of_mixed_datagrams_is_taken_in_batches_and_accounted_for_exactly() {
    use std::sync::atomic::Ordering;
    use thingsbus_broker::{Cidr, Reason};

    let rig = Rig::new(|c| {
        c.max_message_bytes = 8192;
        c.stats_interval = Duration::ZERO;
        c.allow_input = vec!["127.0.0.1/32".parse::<Cidr>().expect("cidr")];
    });
    let to = rig.broker.endpoints().udp;
    let ours = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind on loopback");
    let stranger = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2 on loopback");
    let update = |n: u64| rmp_serde::to_vec(&json!(["burst.a", null, n, null])).expect("msgpack");
    let mut oversized = vec![0x94, 0xa7];
    oversized.extend_from_slice(b"burst.a");
    oversized.extend_from_slice(&[0xc0, 0xda, 0x23, 0x28]);
    oversized.extend(std::iter::repeat_n(b'x', 9000));
    oversized.push(0xc0);
    let malformed: [(&[u8], Reason); 4] = [
        (&[0xc1], Rejection::InvalidMsgpack.into()),
        (&[0x2a], Rejection::NotObject.into()),
        (
            &[0x93, 0xa1, b'a', 0xc0, 0x01],
            Rejection::BadListLength.into(),
        ),
        (&[], Rejection::Empty.into()),
    ];
    let reasons = [
        Reason::NotAllowed,
        Rejection::TooLarge.into(),
        Rejection::InvalidMsgpack.into(),
        Rejection::NotObject.into(),
        Rejection::BadListLength.into(),
        Rejection::Empty.into(),
    ];
    let before: Vec<u64> = reasons.iter().map(|r| rig.stats().rejected(*r)).collect();
    let bytes_before = rig.stats().bytes_in.load(Ordering::Relaxed);
    let accepted_before = rig.stats().accepted.load(Ordering::Relaxed);

    // Built first, so that sending is one tight loop.
    let mut burst: Vec<(&std::net::UdpSocket, Vec<u8>)> = Vec::new();
    let mut good = Vec::new();
    let mut expected = vec![0u64; reasons.len()];
    for i in 0..240u64 {
        match i % 8 {
            3 if i % 24 == 3 => {
                burst.push((&ours, oversized.clone()));
                expected[1] += 1;
            }
            5 => {
                burst.push((&stranger, update(1_000_000 + i)));
                expected[0] += 1;
            }
            7 => {
                let (bytes, reason) = malformed[(i / 8) as usize % malformed.len()];
                burst.push((&ours, bytes.to_vec()));
                let at = reasons.iter().position(|r| *r == reason).expect("listed");
                expected[at] += 1;
            }
            _ => {
                burst.push((&ours, update(i)));
                good.push(i);
            }
        }
    }
    let total_bytes: usize = burst.iter().map(|(_, d)| d.len()).sum();
    for (from, datagram) in &burst {
        from.send_to(datagram, to).expect("send on loopback");
    }

    let mut seen = Vec::new();
    while seen.len() < good.len() {
        let v = rig.sub.recv_json(DEADLINE).unwrap_or_else(|| {
            panic!(
                "only {} of {} good updates came: {seen:?}",
                seen.len(),
                good.len()
            )
        });
        if v["type"] == "thing_update" && v["ns"] == "burst.a" {
            seen.push(v["data"].as_u64().expect("a number"));
        }
    }
    assert_eq!(seen, good, "the good updates, in the order sent");
    // The last good datagram was last but one: let the broker finish the burst.
    eventually(
        DEADLINE,
        "every datagram of the burst to be counted",
        || {
            (rig.stats().bytes_in.load(Ordering::Relaxed) - bytes_before >= total_bytes as u64)
                .then_some(())
        },
    );
    let counted: Vec<u64> = reasons
        .iter()
        .zip(&before)
        .map(|(r, b)| rig.stats().rejected(*r) - b)
        .collect();
    assert_eq!(counted, expected, "refusals by reason ({reasons:?})");
    assert_eq!(
        rig.stats().accepted.load(Ordering::Relaxed) - accepted_before,
        good.len() as u64
    );
    assert_eq!(
        rig.stats().bytes_in.load(Ordering::Relaxed) - bytes_before,
        total_bytes as u64,
        "every datagram's whole length, the oversized ones' included"
    );
}
