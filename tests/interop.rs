//! Interoperability with the deployed Python thingsbus 0.2.1, in both directions, against the real
//! thing installed from PyPI (see `scripts/python-peers.sh`). These tests fail, loudly, when the
//! Python side cannot be installed: they never pass by skipping.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thingsbus_adaptor::{Adaptor, UdpForm};
use thingsbus_client::Client;
use thingsbus_tests::process::{Process, Stream};
use thingsbus_tests::py::{python, PyBroker, PyPeer};
use thingsbus_tests::*;

fn quiet(c: &mut Config) {
    c.stats_interval = Duration::ZERO;
}

/// A client of ours on a 0.2.x broker: no snapshot endpoint, so a short wait for it.
fn our_client_on(directory: &str) -> Client {
    Client::builder()
        .url(directory)
        .snapshot_timeout(Duration::from_millis(300))
        .connect_blocking()
        .expect("client")
}

/// Repeats `send` until `seen` holds: PUB/SUB and UDP drop what is sent before a peer is
/// connected, so the first message of a test is retried rather than waited for.
fn until(what: &str, mut send: impl FnMut(), mut seen: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        send();
        let tick = Instant::now() + Duration::from_millis(250);
        while Instant::now() < tick {
            if seen() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("never saw {what} within {DEADLINE:?}");
}

fn event_of(watch: &'static str, ns: &'static str) -> impl FnMut(&Value) -> bool {
    move |v| v["event"] == watch && v["ns"] == ns
}

#[test]
fn python_adaptor_through_our_broker_to_python_clients() {
    require_peers!(peers::PYTHON_02);
    let broker = spawn_broker_on_port_pair(|c| {
        quiet(c);
        c.snapshot_interval = Duration::from_millis(400);
        c.snapshot_chunk_bytes = 1024;
    });
    let dir = broker.endpoints().directory.clone();
    let early = PyPeer::ready(&[
        "client",
        "--url",
        &dir,
        "--watch",
        "shop:tree",
        "--watch",
        "shop.door:none",
        "--watch",
        "shop:tree,snapshot",
    ]);
    let mut adaptor = PyPeer::ready(&[
        "adaptor",
        "--url",
        &broker.endpoints().input,
        "--ns",
        "shop",
        "--doc",
        "https://wiki.example.org/Shop",
    ]);
    let mut probe = event_of("shop:tree", "shop.probe");
    until(
        "the Python adaptor's probe at the Python client",
        || adaptor.send(r#"{"ns": "probe", "data": 0}"#),
        || early.try_wait_for(Duration::ZERO, &mut probe).is_some(),
    );

    adaptor.send(r#"{"ns": "door", "data": {"open": true}, "ts": null}"#);
    let live = early.wait_for(
        "shop.door on its own watch",
        event_of("shop.door:none", "shop.door"),
    );
    assert_eq!(live["data"], json!({"open": true}));
    assert_eq!(live["snapshot"], json!(false));
    let tree = early.wait_for(
        "shop.door on the tree watch",
        event_of("shop:tree", "shop.door"),
    );
    assert_eq!(tree["snapshot"], json!(false));
    let mut early = early;
    let got = early.ask("get shop.door", "get");
    let age = got["value"][0]
        .as_f64()
        .expect("get_data() gives (age, data)");
    assert!((0.0..5.0).contains(&age), "age {age}");
    assert_eq!(got["value"][1], json!({"open": true}));
    assert_eq!(got["documentation_url"], "https://wiki.example.org/Shop");

    // F_SNAPSHOT: snapshot replays reach only the watch that asked for them.
    let replay = early.wait_for("a snapshot replay", |v| {
        v["event"] == "shop:tree,snapshot" && v["ns"] == "shop.door" && v["snapshot"] == true
    });
    assert_eq!(replay["data"], json!({"open": true}));

    // A client started later is filled by our periodic snapshot, chunked.
    for i in 0..60 {
        adaptor.send(
            &json!({"ns": format!("bulk.t{i}"), "data": {"i": i, "pad": "x".repeat(20)}})
                .to_string(),
        );
    }
    let bulk_done = || {
        eventually(DEADLINE, "the bulk to arrive", || {
            early
                .try_wait_for(Duration::ZERO, &mut event_of("shop:tree", "shop.bulk.t59"))
                .map(|_| ())
        })
    };
    bulk_done();
    let chunks_before = broker.stats().snapshot_chunks.load(Ordering::Relaxed);
    let snapshots_before = broker.stats().snapshots.load(Ordering::Relaxed);
    let mut late = PyPeer::ready(&["client", "--url", &dir]);
    let things = eventually(DEADLINE, "the late Python client to hold the bulk", || {
        let t = late.ask("things", "things");
        (t["things"].as_object().is_some_and(|m| m.len() >= 62)).then_some(t)
    });
    for i in 0..60 {
        assert_eq!(things["things"][format!("shop.bulk.t{i}")]["i"], json!(i));
    }
    assert_eq!(things["things"]["shop.door"], json!({"open": true}));
    let chunks = broker.stats().snapshot_chunks.load(Ordering::Relaxed) - chunks_before;
    let snapshots = broker.stats().snapshots.load(Ordering::Relaxed) - snapshots_before;
    assert!(
        snapshots >= 1 && chunks >= 3 * snapshots,
        "snapshots went out chunked: {chunks} chunks for {snapshots} snapshots"
    );

    // Live events never carried the snapshot flag to the watches without F_SNAPSHOT.
    for v in early.drain() {
        if v["event"] != "shop:tree,snapshot" {
            assert_eq!(v["snapshot"], json!(false), "{v}");
        }
    }
    assert!(early.ask("alive", "alive")["alive"] == true);
    assert!(!early.stderr().contains("Traceback"), "{}", early.stderr());
}

#[test]
fn our_adaptors_through_the_python_broker_to_our_client() {
    require_peers!(peers::PYTHON_02);
    let py = PyBroker::start(0.5);
    let client = our_client_on(&py.directory);
    let zmq = Adaptor::builder("lab")
        .url(&py.input)
        .documentation_url("https://doc.example.org/lab")
        .connect_blocking()
        .expect("zmq adaptor");
    let udp = Adaptor::builder("lab")
        .udp(&py.udp.to_string())
        .connect_blocking()
        .expect("udp adaptor");
    let udp_map = Adaptor::builder("lab")
        .udp(&py.udp.to_string())
        .udp_form(UdpForm::Map)
        .connect_blocking()
        .expect("udp adaptor");

    until(
        "a ZMQ update through the Python broker",
        || zmq.send_to("z", &json!({"n": 1}), None).expect("send"),
        || client.get("lab.z").is_some(),
    );
    let z = client.get("lab.z").expect("lab.z");
    assert_eq!(z.value(), json!({"n": 1}));
    assert_eq!(
        z.documentation_url.as_deref(),
        Some("https://doc.example.org/lab")
    );
    assert!(
        (now() - z.ts).abs() < 5.0,
        "ts null is stamped by the broker"
    );

    // The compact 4-list a board sends, with ts nil, and the map form with a ts.
    until(
        "a compact UDP update",
        || udp.send_to("u", &json!([1, 2]), None).expect("send"),
        || client.get("lab.u").is_some(),
    );
    let u = client.get("lab.u").expect("lab.u");
    assert_eq!(u.value(), json!([1, 2]));
    assert!((now() - u.ts).abs() < 5.0);
    let ts = (now() - 2.0).floor() + 0.5;
    until(
        "a map-form UDP update",
        || {
            udp_map
                .send_to("m", &json!("text"), Some(ts))
                .expect("send")
        },
        || client.get("lab.m").is_some(),
    );
    assert_eq!(client.get("lab.m").expect("lab.m").ts, ts);

    // A client of ours joining later falls back to the 0.2.x periodic snapshot.
    let late = our_client_on(&py.directory);
    assert!(
        late.wait_filled_blocking(DEADLINE),
        "filled by the periodic snapshot"
    );
    for ns in ["lab.z", "lab.u", "lab.m"] {
        let t = late
            .get(ns)
            .unwrap_or_else(|| panic!("{ns} in the snapshot"));
        assert!(t.from_snapshot);
        assert_eq!(t.value(), client.get(ns).expect("known").value());
    }
    assert_eq!(late.stats().bad_messages, 0);
}

#[test]
fn the_python_generic_zmq_adaptor_with_its_flags_feeds_our_broker() {
    require_peers!(peers::PYTHON_02);
    let broker = spawn_broker(quiet);
    let sub = Subscriber::connect(&broker);
    sync(&sub, &ZmqInput::connect(&broker));
    let source = ctx().socket(zmq::PUB).expect("PUB");
    source.set_linger(0).expect("linger");
    source.bind("tcp://127.0.0.1:*").expect("bind");
    let source_url = source
        .get_last_endpoint()
        .expect("endpoint")
        .expect("utf-8");
    let _adaptor = Process::build(
        Command::new(python())
            .args(["-m", "thingsbus.generic_zmq_adaptor"])
            .args(["-u", &broker.endpoints().input, "-s", &source_url])
            .args([
                "--ns",
                "shop.camera",
                "--nskey",
                "camname",
                "--tskey",
                "frame_time",
            ])
            .args([
                "--filter",
                "mtype:percept_update",
                "--projections",
                "luminance,ratio_busy",
            ])
            .args(["-d", "https://wiki.example.org/Cameras"]),
    )
    .name("generic_zmq_adaptor")
    .stdout(Stream::Discard)
    .stderr(Stream::Inherit)
    .start();
    let percept = |cam: &str, ts: Value| {
        json!({"mtype": "percept_update", "camname": cam, "frame_time": ts,
               "luminance": 31.8, "ratio_busy": 0.2, "other": 1})
        .to_string()
    };
    let probe_ts = now();
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < end, "the Python adaptor never got through");
        source
            .send(percept("probe", json!(probe_ts)).as_bytes(), 0)
            .expect("send");
        if sub
            .recv_json(Duration::from_millis(200))
            .is_some_and(|v| v["ns"] == "shop.camera.probe")
        {
            break;
        }
    }
    let ts = now() - 1.25;
    source
        .send(
            json!({"mtype": "other", "camname": "door"})
                .to_string()
                .as_bytes(),
            0,
        )
        .expect("send");
    source
        .send(percept("door", json!(ts)).as_bytes(), 0)
        .expect("send");
    let door = sub.update_for("shop.camera.door");
    assert_eq!(door["data"], json!({"luminance": 31.8, "ratio_busy": 0.2}));
    assert_eq!(door["ts"], json!(ts));
    assert_eq!(
        door["documentation_url"],
        "https://wiki.example.org/Cameras"
    );
    // An integer frame_time: 0.2.x brokers rejected it, we take it (and republish a float).
    source
        .send(percept("gate", json!(1_700_000_000)).as_bytes(), 0)
        .expect("send");
    let gate = sub.update_for("shop.camera.gate");
    assert_eq!(gate["ts"].as_f64(), Some(1_700_000_000.0));
    assert!(gate["ts"].is_f64(), "ts goes out as a float: {gate}");
}

#[test]
fn both_clients_find_our_broker_through_one_srv_record() {
    require_peers!(peers::PYTHON_02);
    let broker = spawn_broker_on_port_pair(quiet);
    let dns = dns_for(&broker);
    let port = broker.endpoints().directory_port;
    let client = Client::builder()
        .zone("example.org")
        .nameserver(dns.addr())
        .connect_blocking()
        .expect("our client through SRV");
    assert!(client.wait_filled_blocking(DEADLINE));
    assert_eq!(client.url(), format!("tcp://127.0.0.1:{port}"));

    let ns = dns.addr().to_string();
    let py = PyPeer::start(&["srv", "--zone", "example.org", "--nameserver", &ns]);
    let urls = py.wait_for("the URLs ServiceFinder computes", |v| {
        v.get("broker_url").is_some()
    });
    // 0.2.1 keeps the record's trailing dot; deployments resolve it through the system resolver.
    assert_eq!(
        urls["broker_url"],
        format!("tcp://broker.example.org.:{port}")
    );
    assert_eq!(
        urls["broker_input_url"],
        format!("tcp://broker.example.org.:{}", port + 1)
    );
    // The Python client takes the same record (its connection then needs the system resolver
    // to know broker.example.org, which a test machine's does not).
    let pyc = PyPeer::start(&["client", "--zone", "example.org", "--nameserver", &ns]);
    let ready = pyc.wait_for("the client's start", |v| v["ready"] == true);
    assert_eq!(ready["url"], format!("tcp://broker.example.org.:{port}"));
    assert!(!pyc.stderr().contains("Traceback"), "{}", pyc.stderr());
}

#[test]
fn the_esp8266_vector_gives_the_same_state_through_either_broker() {
    require_peers!(peers::PYTHON_02);
    let bytes = vector("esp8266-list-update.msgpack.hex");
    let ours = spawn_broker(|c| {
        quiet(c);
        // The Python client below learns what was sent before it came from the periodic snapshot.
        c.snapshot_interval = Duration::from_millis(500);
    });
    let py = PyBroker::start(0.5);
    let on_ours = client_for(&ours).connect_blocking().expect("client");
    let on_py = our_client_on(&py.directory);
    let board = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    for (client, to) in [(&on_ours, ours.endpoints().udp), (&on_py, py.udp)] {
        until(
            "the vector's thing",
            || {
                board.send_to(&bytes, to).expect("send");
            },
            || client.get("bottlekid.prototype").is_some(),
        );
    }
    let a = on_ours.get("bottlekid.prototype").expect("ours");
    let b = on_py.get("bottlekid.prototype").expect("python");
    assert_eq!(a.value(), b.value());
    assert_eq!(
        a.value(),
        json!({"dht22_error": "", "metadata": {"loops": 154, "msgs_sent": 153, "msgs_dropped": 1}})
    );
    assert_eq!(a.documentation_url, b.documentation_url);
    assert_eq!(
        a.documentation_url.as_deref(),
        Some("https://github.com/mistakes-consortium/esp8266.bottlekids")
    );
    assert!(
        (a.ts - b.ts).abs() < 5.0,
        "both stamped on arrival: {} {}",
        a.ts,
        b.ts
    );

    // And a Python client on our broker sees the same.
    let mut pyc = PyPeer::ready(&["client", "--url", &ours.endpoints().directory]);
    let got = eventually(DEADLINE, "the Python client to have it", || {
        let g = pyc.ask("get bottlekid.prototype", "get");
        (!g["value"].is_null()).then_some(g)
    });
    assert_eq!(got["value"][1], a.value());
    assert_eq!(
        got["documentation_url"],
        json!(a.documentation_url.as_deref())
    );
}

#[test]
fn our_extensions_do_not_upset_the_python_client() {
    require_peers!(peers::PYTHON_02);
    let broker = spawn_broker_on_port_pair(|c| {
        c.stats_interval = Duration::from_millis(200);
        c.live_window = Duration::from_secs(1);
        c.snapshot_interval = Duration::from_millis(300);
        c.snapshot_chunk_bytes = 1024;
    });
    let mut pyc = PyPeer::ready(&[
        "client",
        "--url",
        &broker.endpoints().directory,
        "--watch",
        ":tree,snapshot",
    ]);
    let adaptor = Adaptor::builder("ext")
        .url(&broker.endpoints().input)
        .connect_blocking()
        .expect("adaptor");
    let mut first = event_of(":tree,snapshot", "ext.first");
    until(
        "an update at the Python client",
        || adaptor.send_to("first", &json!(1), None).expect("send"),
        || pyc.try_wait_for(Duration::ZERO, &mut first).is_some(),
    );
    for i in 0..40 {
        adaptor
            .send_to(
                &format!("t{i}"),
                &json!({"i": i, "pad": "y".repeat(30)}),
                None,
            )
            .expect("send");
    }
    adaptor
        .send_to("old", &json!("soon stale"), Some(now() - 0.5))
        .expect("send");
    // Wait for every extension to have reached the Python client: seq on every update, chunked
    // snapshots, thing_expired, and the broker's own thing.
    eventually(
        DEADLINE,
        "an expiry, chunked snapshots and broker stats",
        || {
            let s = broker.stats();
            (s.expired.load(Ordering::Relaxed) >= 1
                && s.snapshot_chunks.load(Ordering::Relaxed) > s.snapshots.load(Ordering::Relaxed)
                && s.snapshots.load(Ordering::Relaxed) >= 3)
                .then_some(())
        },
    );
    let stats = eventually(DEADLINE, "the broker's thing at the Python client", || {
        let g = pyc.ask("get thingsbus.broker", "get");
        g["value"][1]["accepted"]
            .as_u64()
            .filter(|n| *n >= 42)
            .map(|_| g)
    });
    assert!(stats["value"][1]["things"].is_u64());
    let things = pyc.ask("things", "things");
    for i in 0..40 {
        assert_eq!(things["things"][format!("ext.t{i}")]["i"], json!(i));
    }
    assert_eq!(things["things"]["ext.old"], json!("soon stale"));
    assert_eq!(pyc.ask("alive", "alive")["alive"], json!(true));
    assert!(pyc.running());
    assert!(!pyc.stderr().contains("Traceback"), "{}", pyc.stderr());
}
