//! `--allow-input` over UDP and ZMQ (through the ZAP handler), and the per-source rate limit.

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use thingsbus_broker::Cidr;
use thingsbus_broker::Reason;
use thingsbus_tests::*;

fn udp_from(src: &str) -> UdpSocket {
    UdpSocket::bind((src, 0)).expect("bind a source address on loopback")
}

fn send_udp(from: &UdpSocket, broker: &Broker, ns: &str, value: i64) {
    let bytes = rmp_serde::to_vec(&json!([ns, null, value, null])).expect("msgpack");
    from.send_to(&bytes, broker.endpoints().udp).expect("send");
}

/// A ZMQ PUB connected to the broker's input from the source address `src`.
fn zmq_from(src: &str, broker: &Broker) -> zmq::Socket {
    let s = ctx().socket(zmq::PUB).expect("pub");
    s.set_linger(0).expect("linger");
    let dst = broker
        .endpoints()
        .input
        .trim_start_matches("tcp://")
        .to_owned();
    s.connect(&format!("tcp://{src}:0;{dst}"))
        .expect("connect from a source address");
    s
}

fn rejected(broker: &Broker, reason: Reason) -> u64 {
    broker
        .stats()
        .rejected_by_reason()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, n)| n)
}

#[test]
fn only_allowed_sources_publish_over_udp_and_zmq() {
    let broker = spawn_broker(|c| {
        c.stats_interval = Duration::ZERO;
        c.allow_input = vec!["127.0.0.2/32".parse::<Cidr>().expect("cidr")];
    });
    let sub = Subscriber::connect(&broker);
    let good_udp = udp_from("127.0.0.2");
    let bad_udp = udp_from("127.0.0.1");
    let good_zmq = zmq_from("127.0.0.2", &broker);
    let bad_zmq = zmq_from("127.0.0.1", &broker);

    // The allowed ZMQ connection gets through (retry until the PUB/SUB link is up).
    eventually(DEADLINE, "the allowed ZMQ source", || {
        good_zmq
            .send(json!(["ok.zmq", null, 1, null]).to_string().as_bytes(), 0)
            .expect("send");
        sub.recv_json(Duration::from_millis(50))
            .filter(|v| v["ns"] == "ok.zmq")
    });
    // The refused one was asked about and turned away by the ZAP handler.
    eventually(DEADLINE, "the refused ZMQ connection to be counted", || {
        (rejected(&broker, Reason::NotAllowed) >= 1).then_some(())
    });
    for _ in 0..20 {
        bad_zmq
            .send(json!(["bad.zmq", null, 1, null]).to_string().as_bytes(), 0)
            .expect("send never blocks on PUB");
    }
    let before = rejected(&broker, Reason::NotAllowed);
    send_udp(&bad_udp, &broker, "bad.udp", 1);
    eventually(DEADLINE, "the refused datagram to be counted", || {
        (rejected(&broker, Reason::NotAllowed) > before).then_some(())
    });
    send_udp(&good_udp, &broker, "ok.udp", 2);
    // Nothing from 127.0.0.1 came through before the allowed datagram did.
    let v = sub.wait_for(DEADLINE, "ok.udp", |v| {
        assert!(
            !v["ns"].as_str().unwrap_or_default().starts_with("bad."),
            "a refused source got through: {v}"
        );
        v["ns"] == "ok.udp"
    });
    assert_eq!(v["data"], json!(2));
    assert!(broker.stats().accepted.load(Ordering::Relaxed) >= 2);
}

#[test]
fn a_source_over_its_rate_is_cut_and_others_are_not() {
    let broker = spawn_broker(|c| {
        c.stats_interval = Duration::ZERO;
        c.rate_limit = Some(50.0);
    });
    let sub = Subscriber::connect(&broker);
    let noisy = udp_from("127.0.0.1");
    let quiet = udp_from("127.0.0.3");
    // Let the subscriber connect: one update from the quiet source (retried until seen).
    eventually(DEADLINE, "the subscriber", || {
        send_udp(&quiet, &broker, "quiet.hello", 0);
        sub.recv_json(Duration::from_millis(50))
            .filter(|v| v["ns"] == "quiet.hello")
    });
    // Hellos sent before the one seen may still be on their way: one more datagram, seen after
    // them (one socket, one queue), so that the counts below start after all of them.
    send_udp(&quiet, &broker, "quiet.sync", 0);
    sub.wait_for(DEADLINE, "the quiet source's last hello", |v| {
        v["ns"] == "quiet.sync"
    });
    let accepted_before = broker.stats().accepted.load(Ordering::Relaxed);
    let limited_before = rejected(&broker, Reason::RateLimited);
    // 250 small datagrams fit the smallest default socket buffer: none is lost by the kernel.
    for i in 0..250 {
        send_udp(&noisy, &broker, "noisy.t", i);
    }
    send_udp(&quiet, &broker, "quiet.after", 1);
    sub.wait_for(DEADLINE, "the quiet source despite the noisy one", |v| {
        v["ns"] == "quiet.after"
    });
    let limited = rejected(&broker, Reason::RateLimited) - limited_before;
    let accepted = broker.stats().accepted.load(Ordering::Relaxed) - accepted_before - 1;
    // A burst of 50, plus what trickles back while they are read (well under a second).
    assert!((50..150).contains(&accepted), "accepted {accepted} of 250");
    assert_eq!(
        limited + accepted,
        250,
        "every datagram is accepted or counted"
    );

    // Over ZMQ too: the limit follows the peer address.
    let zmq = ZmqInput::connect(&broker);
    eventually(DEADLINE, "the ZMQ source after its bucket refills", || {
        zmq.send_json(&json!(["noisy.zmq", null, 1, null]));
        sub.recv_json(Duration::from_millis(100))
            .filter(|v| v["ns"] == "noisy.zmq")
    });
    let before = rejected(&broker, Reason::RateLimited);
    for i in 0..500 {
        zmq.send_json(&json!(["noisy.zmq", null, i, null]));
    }
    eventually(DEADLINE, "ZMQ updates over the rate to be counted", || {
        (rejected(&broker, Reason::RateLimited) > before + 100).then_some(())
    });
}

#[test]
fn a_sender_rotating_through_many_addresses_does_not_reset_a_limited_one() {
    // 70,000 sources, more than the 65,536 buckets kept: a limiter that forgot everyone once
    // full gave the limited source a fresh burst; one that forgets the least recently used
    // source keeps limiting it.
    let broker = spawn_broker(|c| c.rate_limit = Some(0.001));
    let sub = Subscriber::connect(&broker);
    let limited = udp_from("127.0.0.2");
    // Each hello from a source of its own: one datagram each is all the limit lets through.
    let mut hello = 0u8;
    eventually(DEADLINE, "the subscriber", || {
        hello = hello.wrapping_add(1);
        send_udp(
            &udp_from(&format!("127.0.9.{hello}")),
            &broker,
            "rotate.hello",
            0,
        );
        sub.recv_json(Duration::from_millis(50))
            .filter(|v| v["ns"] == "rotate.hello")
    });
    send_udp(&limited, &broker, "rotate.limited", 0);
    sub.wait_for(DEADLINE, "the limited source's one token", |v| {
        v["ns"] == "rotate.limited"
    });
    let handled =
        || broker.stats().accepted.load(Ordering::Relaxed) + broker.stats().rejected_total();
    let mut sent = handled();
    let mut limited_sends = 0;
    for i in 0..70_000u32 {
        let [_, _, b, c] = (0x7f01_0000 + i).to_be_bytes();
        let hi = 1 + (i >> 16) as u8;
        let from = udp_from(&format!("127.{hi}.{b}.{c}"));
        send_udp(&from, &broker, "rotate.flood", i64::from(i));
        sent += 1;
        if i % 500 == 0 {
            send_udp(&limited, &broker, "rotate.limited", i64::from(i) + 1);
            sent += 1;
            limited_sends += 1;
        }
        if i % 1000 == 999 {
            // Paced, so that the kernel drops nothing while the broker catches up.
            eventually(DEADLINE, "the broker to take what was sent", || {
                (handled() >= sent).then_some(())
            });
        }
    }
    eventually(DEADLINE, "the broker to take what was sent", || {
        (handled() >= sent).then_some(())
    });
    assert_eq!(
        rejected(&broker, Reason::RateLimited),
        limited_sends,
        "every later datagram of the limited source is limited, none of the rotating ones"
    );
    let passed: Vec<Value> = std::iter::from_fn(|| sub.recv_json(Duration::from_millis(20)))
        .filter(|v| v["ns"] == "rotate.limited")
        .collect();
    assert!(
        passed.is_empty(),
        "the limited source got through: {passed:?}"
    );
}
