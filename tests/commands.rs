//! Commands to things (PROTOCOL.md Part 3) through a real broker: routing, every outcome, UDP
//! boards, at-most-once delivery, the allow list and bad input on the command port.

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use thingsbus_adaptor::Adaptor;
use thingsbus_client::{Client, CommandError};
use thingsbus_tests::*;

fn quiet(c: &mut Config) {
    c.stats_interval = Duration::ZERO;
}

fn adaptor(broker: &Broker, ns: &str) -> Adaptor {
    Adaptor::builder(ns)
        .url(&broker.endpoints().input)
        .command_url(&broker.endpoints().command)
        .connect_blocking()
        .expect("adaptor")
}

fn client(broker: &Broker) -> Client {
    client_for(broker).connect_blocking().expect("client")
}

fn serving(a: &Adaptor) {
    eventually(DEADLINE, "the broker to confirm the registration", || {
        a.is_serving().then_some(())
    });
}

/// An adaptor whose handler answers `{"by": name, "ns": ns, "data": data}`.
fn echo(broker: &Broker, base: &str, sub: &str, name: &'static str) -> Adaptor {
    let a = adaptor(broker, base);
    a.serve(sub, move |ns, data, _| async move {
        Ok(json!({"by": name, "ns": ns.as_str(), "data": data}))
    })
    .expect("serve");
    serving(&a);
    a
}

const T: Duration = Duration::from_secs(5);

#[test]
fn a_command_reaches_its_thing_and_the_reply_comes_back() {
    let broker = spawn_broker(quiet);
    let _led = echo(&broker, "demo", "led", "led");
    let c = client(&broker);
    let reply = c
        .command_blocking("demo.led.red", &json!({"on": true}), T)
        .expect("reply");
    assert_eq!(
        reply,
        json!({"by": "led", "ns": "demo.led.red", "data": {"on": true}})
    );
    // The prefix itself is served too; many commands in flight on one client.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let replies = rt.block_on(async {
        let calls = (0..200).map(|i| {
            let c = c.clone();
            async move { c.command("demo.led", &json!(i), T).await }
        });
        let handles: Vec<_> = calls.map(|f| tokio::spawn(f)).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    });
    for (i, r) in replies.into_iter().enumerate() {
        assert_eq!(r.expect("reply")["data"], json!(i));
    }
    let s = &broker.stats().commands;
    assert_eq!(s.routed.load(Ordering::Relaxed), 201);
    assert_eq!(s.replied_ok.load(Ordering::Relaxed), 201);
}

#[test]
fn the_longest_prefix_wins_then_the_newest_registration() {
    let broker = spawn_broker(quiet);
    let _shop = echo(&broker, "shop", "", "shop");
    let _led = echo(&broker, "shop", "led", "led");
    let c = client(&broker);
    let by = |ns: &str| c.command_blocking(ns, &json!(null), T).expect("reply")["by"].clone();
    assert_eq!(by("shop.led.red"), "led");
    assert_eq!(by("shop.led"), "led");
    assert_eq!(by("shop.door"), "shop");
    assert_eq!(by("shop"), "shop");
    // A restarted (new) adaptor for the same prefix takes over at once.
    let _newer = echo(&broker, "shop", "led", "newer");
    assert_eq!(by("shop.led.red"), "newer");
    assert_eq!(by("shop.door"), "shop");
}

#[test]
fn no_route_timeout_and_a_refusal_are_told_apart() {
    let broker = spawn_broker(quiet);
    let a = adaptor(&broker, "lab");
    a.serve("slow", |_, _, _| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(json!("too late"))
    })
    .expect("serve");
    a.serve("broken", |_, _, _| async {
        Err("led is broken".to_owned())
    })
    .expect("serve");
    serving(&a);
    let c = client(&broker);
    match c.command_blocking("nowhere.at.all", &json!(1), T) {
        Err(CommandError::NoRoute(_)) => {}
        other => panic!("expected no_route, got {other:?}"),
    }
    // The broker answers `timeout` at the deadline (a client-side time-out would be Transport).
    match c.command_blocking("lab.slow", &json!(1), Duration::from_millis(300)) {
        Err(CommandError::Timeout(_)) => {}
        other => panic!("expected timeout, got {other:?}"),
    }
    match c.command_blocking("lab.broken", &json!(1), T) {
        Err(CommandError::Refused { error, .. }) => assert_eq!(error, "led is broken"),
        other => panic!("expected the thing's refusal, got {other:?}"),
    }
    // The slow handler was abandoned at its deadline.
    eventually(DEADLINE, "the slow handler to be abandoned", || {
        (a.stats().commands_abandoned == 1).then_some(())
    });
    let s = &broker.stats().commands;
    assert_eq!(s.no_route.load(Ordering::Relaxed), 1);
    assert_eq!(s.timeout.load(Ordering::Relaxed), 1);
    assert_eq!(s.replied_error.load(Ordering::Relaxed), 1);
}

/// A raw DEALER on the command port.
fn dealer(broker: &Broker) -> zmq::Socket {
    let d = ctx().socket(zmq::DEALER).expect("dealer");
    d.set_linger(0).expect("linger");
    d.set_rcvtimeo(10_000).expect("timeout");
    d.connect(&broker.endpoints().command).expect("connect");
    d
}

fn send(d: &zmq::Socket, v: &Value) {
    d.send(v.to_string().as_bytes(), 0).expect("send");
}

fn recv(d: &zmq::Socket) -> Value {
    serde_json::from_slice(&d.recv_bytes(0).expect("a message within 10 s")).expect("json")
}

#[test]
fn a_lapsed_registration_answers_gone_and_a_full_table_busy() {
    let broker = spawn_broker(quiet);
    // A server that registers for one second, takes commands and never answers.
    let mute = dealer(&broker);
    send(&mute, &json!({"type": "serve", "ns": ["mute"], "ttl": 1.0}));
    assert_eq!(recv(&mute)["type"], "serving");
    let caller = dealer(&broker);
    send(
        &caller,
        &json!({"type": "command", "id": "g1", "ns": "mute.x", "data": 1, "timeout": 10.0}),
    );
    let delivered = recv(&mute);
    assert_eq!(delivered["type"], "command");
    assert!(delivered["deadline"].as_f64().is_some_and(|d| d > now()));
    let reply = recv(&caller);
    assert_eq!(reply["id"], "g1");
    assert_eq!(reply["error"], "gone", "{reply}");

    // Per caller at most 1,000 in flight: the next one is busy at once.
    send(
        &mute,
        &json!({"type": "serve", "ns": ["mute"], "ttl": 60.0}),
    );
    assert_eq!(recv(&mute)["type"], "serving");
    for i in 0..1000 {
        send(
            &caller,
            &json!({"type": "command", "id": i, "ns": "mute.x", "timeout": 60.0}),
        );
    }
    send(
        &caller,
        &json!({"type": "command", "id": "one-too-many", "ns": "mute.x", "timeout": 60.0}),
    );
    let reply = recv(&caller);
    assert_eq!(
        (reply["id"].clone(), reply["error"].clone()),
        (json!("one-too-many"), json!("busy"))
    );
    assert_eq!(broker.stats().commands.busy.load(Ordering::Relaxed), 1);
    // Another caller is not affected.
    let other = dealer(&broker);
    send(
        &other,
        &json!({"type": "command", "id": "x", "ns": "nowhere", "timeout": 1.0}),
    );
    assert_eq!(recv(&other)["error"], "no_route");
}

#[test]
fn udp_boards_serve_and_answer_or_time_out() {
    let broker = spawn_broker(quiet);
    let board = UdpSocket::bind("127.0.0.1:0").expect("udp");
    board
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mute = UdpSocket::bind("127.0.0.1:0").expect("udp");
    mute.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let to = broker.endpoints().udp;
    let recv_mp = |s: &UdpSocket| -> Value {
        let mut buf = [0u8; 65_536];
        let (n, _) = s.recv_from(&mut buf).expect("a datagram");
        rmp_serde::from_slice(&buf[..n]).expect("msgpack")
    };
    let serve = |s: &UdpSocket, ns: &str| {
        let m = rmp_serde::to_vec_named(&json!({"type": "serve", "ns": [ns]})).expect("msgpack");
        s.send_to(&m, to).expect("send");
    };
    serve(&board, "board.led");
    let serving = recv_mp(&board);
    assert_eq!(serving["type"], "serving");
    assert_eq!(serving["ns"], json!(["board.led"]));
    serve(&mute, "board.mute");
    assert_eq!(recv_mp(&mute)["type"], "serving");

    let c = client(&broker);
    let answer = std::thread::spawn(move || {
        let cmd = recv_mp(&board);
        assert_eq!(cmd["type"], "command");
        assert_eq!(cmd["ns"], "board.led");
        let reply = json!({"type": "command_reply", "id": cmd["id"], "ok": true, "data": {"led": cmd["data"]["on"]}});
        board
            .send_to(&rmp_serde::to_vec_named(&reply).expect("msgpack"), to)
            .expect("send");
    });
    let reply = c
        .command_blocking("board.led", &json!({"on": true}), T)
        .expect("reply");
    assert_eq!(reply, json!({"led": true}));
    answer.join().expect("board thread");
    match c.command_blocking("board.mute", &json!(1), Duration::from_millis(300)) {
        Err(CommandError::Timeout(_)) => {}
        other => panic!("expected timeout, got {other:?}"),
    }
    // The mute board did get the command, once.
    assert_eq!(recv_mp(&mute)["type"], "command");
}

#[test]
fn a_command_is_never_delivered_twice() {
    let broker = spawn_broker(quiet);
    let first = dealer(&broker);
    send(
        &first,
        &json!({"type": "serve", "ns": ["door"], "ttl": 1.0}),
    );
    assert_eq!(recv(&first)["type"], "serving");
    let caller = dealer(&broker);
    send(
        &caller,
        &json!({"type": "command", "id": "open", "ns": "door", "data": "open", "timeout": 5.0}),
    );
    assert_eq!(recv(&first)["data"], "open");
    // The serving adaptor dies mid-command.
    drop(first);
    // A new one takes over the prefix.
    let second = dealer(&broker);
    second.set_rcvtimeo(1500).expect("timeout");
    send(
        &second,
        &json!({"type": "serve", "ns": ["door"], "ttl": 30.0}),
    );
    assert_eq!(recv(&second)["type"], "serving");
    let reply = recv(&caller);
    assert_eq!(reply["id"], "open");
    assert!(
        reply["error"] == "gone" || reply["error"] == "timeout",
        "the caller learns it failed: {reply}"
    );
    // The new adaptor never sees the old command.
    assert!(
        second.recv_bytes(0).is_err(),
        "the command was delivered twice"
    );
    // ... and exactly one reply reached the caller.
    caller.set_rcvtimeo(500).expect("timeout");
    assert!(caller.recv_bytes(0).is_err(), "a second reply");
}

#[test]
fn callers_outside_allow_command_are_refused_with_a_reason() {
    let broker = spawn_broker(|c| {
        quiet(c);
        c.allow_command = vec!["10.0.0.0/8".parse().expect("cidr")];
    });
    let _led = echo(&broker, "demo", "led", "led");
    let c = client(&broker);
    match c.command_blocking("demo.led", &json!(1), T) {
        Err(CommandError::NotAllowed(d)) => assert!(d.contains("--allow-command"), "{d}"),
        other => panic!("expected not_allowed, got {other:?}"),
    }
    assert_eq!(
        broker.stats().commands.not_allowed.load(Ordering::Relaxed),
        1
    );
    assert_eq!(broker.stats().commands.routed.load(Ordering::Relaxed), 0);
}

#[test]
fn bad_input_on_the_command_port_is_answered_or_dropped_and_good_commands_still_work() {
    let broker = spawn_broker(quiet);
    let _led = echo(&broker, "demo", "led", "led");
    let d = dealer(&broker);
    let good = |i: usize| {
        send(
            &d,
            &json!({"type": "command", "id": format!("good-{i}"), "ns": "demo.led", "data": i}),
        );
        loop {
            let v = recv(&d);
            if v["id"] == format!("good-{i}") {
                assert_eq!(v["ok"], true, "{v}");
                assert_eq!(v["data"]["data"], i);
                return;
            }
        }
    };
    good(0);
    // (bytes, reply expected: the error, or None when nothing can be answered)
    let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
        (b"not json".to_vec(), None),
        (b"".to_vec(), None),
        (b"[1,2,3]".to_vec(), None),
        (br#"{"id":1}"#.to_vec(), None),
        (br#"{"type":"dance","id":1}"#.to_vec(), None),
        (
            br#"{"type":"command","ns":"demo.led"}"#.to_vec(),
            Some("bad_request"),
        ),
        (
            br#"{"type":"command","id":2,"ns":"Demo"}"#.to_vec(),
            Some("bad_request"),
        ),
        (
            br#"{"type":"command","id":3,"ns":5}"#.to_vec(),
            Some("bad_request"),
        ),
        (
            br#"{"type":"command","id":4,"ns":"demo.led","timeout":-1}"#.to_vec(),
            Some("bad_request"),
        ),
        (
            br#"{"type":"command","id":5,"ns":"demo.led","timeout":"soon"}"#.to_vec(),
            Some("bad_request"),
        ),
        (
            format!(
                r#"{{"type":"command","id":"{}","ns":"demo.led"}}"#,
                "x".repeat(300)
            )
            .into_bytes(),
            None,
        ),
        (
            br#"{"type":"command_reply","id":999,"ok":true}"#.to_vec(),
            None,
        ),
        (
            br#"{"type":"command_reply","id":"x","ok":true}"#.to_vec(),
            None,
        ),
        (br#"{"type":"serve","ns":["Bad"]}"#.to_vec(), None),
        (br#"{"type":"serve","ns":5}"#.to_vec(), None),
        (br#"{"type":"serving","ns":[]}"#.to_vec(), None),
        (b"\xff\xfe".to_vec(), None),
    ];
    for (i, (bytes, expected)) in cases.iter().enumerate() {
        d.send(&bytes[..], 0).expect("send");
        if let Some(error) = expected {
            let v = recv(&d);
            assert_eq!(v["ok"], false, "case {i}: {v}");
            assert_eq!(v["error"], *error, "case {i}: {v}");
        }
        good(i + 1);
    }
    // A multi-frame message: dropped, and the next good one works.
    d.send_multipart([&b"a"[..], b"b"], 0).expect("send");
    good(100);
    assert!(broker.stats().commands.bad_request.load(Ordering::Relaxed) >= 10);
}

#[test]
fn an_adaptor_keeps_serving_across_a_broker_restart() {
    let broker = spawn_broker_on_port_pair(quiet);
    let port = broker.endpoints().directory_port;
    let a = Adaptor::builder("demo")
        .url(&broker.endpoints().input)
        .connect_blocking()
        .expect("adaptor");
    a.serve("led", |_, data, _| async move { Ok(data) })
        .expect("serve");
    serving(&a);
    let c = Client::builder()
        .url(&broker.endpoints().directory)
        .connect_blocking()
        .expect("client");
    assert_eq!(c.command_blocking("demo.led", &json!(1), T), Ok(json!(1)));
    drop(broker);
    let _broker = eventually(DEADLINE, "the broker back on its ports", || {
        start_on(port, &quiet).ok()
    });
    eventually(DEADLINE, "commands to work again", || {
        c.command_blocking("demo.led", &json!(2), Duration::from_millis(500))
            .ok()
            .filter(|v| *v == json!(2))
    });
}
