//! Late joiners, resynchronisation, liveness and fail-over (the late-joiner issue).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thingsbus_adaptor::Adaptor;
use thingsbus_client::{Client, EventKind, SubscribeOptions};
use thingsbus_tests::dns::{DnsServer, SrvRecord};
use thingsbus_tests::*;

fn no_periodic(c: &mut Config) {
    c.snapshot_interval = Duration::from_secs(3600);
}

/// Sends `n` things `prefix.t<i>` with value i and waits until a subscriber has them all.
fn fill(rig: &Rig, prefix: &str, n: u64) {
    for i in 0..n {
        rig.zmq
            .send_json(&json!([format!("{prefix}.t{i}"), null, i, null]));
    }
    rig.sub.update_for(&format!("{prefix}.t{}", n - 1));
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn late_client_gets_the_whole_directory_at_once() {
    let rig = Rig::new(no_periodic);
    fill(&rig, "big", 20_000);
    let started = Instant::now();
    let client = client_for(&rig.broker).connect_blocking().expect("client");
    // The periodic snapshot is an hour away: only the snapshot endpoint can fill it.
    assert!(client.wait_filled_blocking(DEADLINE), "not filled");
    let took = started.elapsed();
    assert_eq!(client.walk("big").len(), 20_000);
    assert_eq!(
        client.get("big.t19999").expect("thing").value(),
        json!(19_999)
    );
    assert_eq!(client.stats().snapshot_replies, 1);
    assert!(took < DEADLINE, "{took:?}");
}

fn dealer(broker: &Broker) -> zmq::Socket {
    let d = ctx().socket(zmq::DEALER).expect("dealer");
    d.set_rcvtimeo(10_000).expect("timeout");
    d.connect(&broker.endpoints().snapshot).expect("connect");
    d
}

/// Sends `request` and collects reply messages until one is `last` or an error.
fn ask(d: &zmq::Socket, request: &[u8]) -> Vec<Value> {
    d.send(request, 0).expect("send");
    let mut out = Vec::new();
    loop {
        let bytes = d.recv_bytes(0).expect("a reply within 10 s");
        let v: Value = serde_json::from_slice(&bytes).expect("json reply");
        let done = v["type"] != "thing_snapshot" || v["last"] == true;
        out.push(v);
        if done {
            return out;
        }
    }
}

#[test]
fn subtree_request_gets_only_the_subtree() {
    let rig = Rig::new(|c| {
        no_periodic(c);
        c.snapshot_chunk_bytes = 4096;
    });
    fill(&rig, "a.b", 300);
    fill(&rig, "a.c", 50);
    fill(&rig, "ab", 10);
    let d = dealer(&rig.broker);
    let chunks = ask(&d, br#"{"type":"snapshot_request","ns":"a.b","id":"x-1"}"#);
    assert!(chunks.len() > 1, "chunked: {}", chunks.len());
    assert_eq!(
        chunks[0]["total"], 300,
        "a reply says how many things it holds"
    );

    let mut names = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["type"], "thing_snapshot");
        assert_eq!(c["request"], "x-1");
        assert_eq!(c["subtree"], "a.b");
        assert_eq!(c["chunk"], i as u64);
        assert!(c.to_string().len() <= 4096);
        names.extend(c["data"].as_object().expect("data").keys().cloned());
    }
    assert_eq!(names.len(), 300);
    assert!(names.iter().all(|n| n.starts_with("a.b.")), "{names:?}");
    // The whole directory, from a REQ-style client (empty delimiter frame) too.
    let req = ctx().socket(zmq::REQ).expect("req");
    req.set_rcvtimeo(10_000).expect("timeout");
    req.connect(&rig.broker.endpoints().snapshot)
        .expect("connect");
    req.send(&br#"{"type":"snapshot_request"}"#[..], 0)
        .expect("send");
    let first: Value = serde_json::from_slice(&req.recv_bytes(0).expect("reply")).expect("json");
    assert_eq!(first["type"], "thing_snapshot");
    assert_eq!(first["subtree"], "");
}

#[test]
fn malformed_requests_are_refused_and_counted() {
    let rig = Rig::new(no_periodic);
    fill(&rig, "m", 5);
    let d = dealer(&rig.broker);
    for bad in [
        &b"not json"[..],
        br#"{"type":"snapshot_please"}"#,
        br#"{"type":"snapshot_request","ns":"Bad..ns","id":7}"#,
        br#"[1,2,3]"#,
        b"",
    ] {
        let reply = ask(&d, bad);
        assert_eq!(reply.len(), 1);
        assert_eq!(
            reply[0]["type"],
            "snapshot_error",
            "{}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(reply[0]["error"], "bad_request");
    }
    // Two frames in one message.
    d.send(&b"{}"[..], zmq::SNDMORE).expect("send");
    d.send(&b"{}"[..], 0).expect("send");
    let v: Value = serde_json::from_slice(&d.recv_bytes(0).expect("reply")).expect("json");
    assert_eq!(v["error"], "bad_request");
    assert_eq!(
        rig.stats().snapshot_request_errors.load(Ordering::Relaxed),
        6
    );
    // The id is echoed when it could be read.
    let reply = ask(&d, br#"{"type":"snapshot_request","ns":"Bad","id":7}"#);
    assert_eq!(reply[0]["request"], 7);
    // And a good request is still served.
    let reply = ask(&d, br#"{"type":"snapshot_request","ns":"m"}"#);
    assert_eq!(reply.last().expect("chunks")["last"], true);
    assert_eq!(reply[0]["data"].as_object().expect("data").len(), 5);
}

#[test]
fn many_clients_join_while_updates_flow() {
    let rig = Rig::new(no_periodic);
    fill(&rig, "flow", 50);
    let rt = rt();
    let done = std::sync::atomic::AtomicBool::new(false);
    let input = ZmqInput::connect(&rig.broker);
    sync(&rig.sub, &input);
    let last_round = std::thread::scope(|s| {
        let done = &done;
        let sender = s.spawn(move || {
            let mut round = 0u64;
            while !done.load(Ordering::Relaxed) && round < 2000 {
                round += 1;
                for i in 0..50 {
                    input.send_json(&json!([format!("flow.t{i}"), null, 1000 + round, null]));
                }

                std::thread::sleep(Duration::from_millis(1));
            }
            round
        });
        let clients: Vec<_> = (0..8)
            .map(|_| {
                rt.block_on(async {
                    let c = client_for(&rig.broker).connect().await.expect("client");
                    let sub = c
                        .subscribe(
                            "flow",
                            SubscribeOptions::new()
                                .tree(true)
                                .snapshots(true)
                                .capacity(1 << 20),
                        )
                        .expect("sub");
                    (c, sub)
                })
            })
            .collect();
        for (c, _) in &clients {
            assert!(c.wait_filled_blocking(DEADLINE));
        }
        std::thread::sleep(Duration::from_millis(200));
        done.store(true, Ordering::Relaxed);
        let last_round = sender.join().expect("sender");
        (last_round, clients)
    });
    let (last_round, clients) = last_round;
    let final_value = json!(1000 + last_round);
    for (c, mut sub) in clients {
        eventually(DEADLINE, "every client to converge", || {
            (0..50)
                .all(|i| {
                    c.get(&format!("flow.t{i}"))
                        .is_some_and(|t| t.value() == final_value)
                })
                .then_some(())
        });
        // Per thing, values only go up: nothing older applied after newer, nothing twice.
        let mut last: HashMap<String, u64> = HashMap::new();
        while let Some(e) = sub.try_next() {
            let e = e.expect("no lag");
            let v = e.thing.value().as_u64().expect("number");
            if let Some(prev) = last.insert(e.ns().to_string(), v) {
                assert!(v > prev, "{}: {prev} then {v} ({:?})", e.ns(), e.kind);
            }
        }
        assert_eq!(c.stats().snapshot_replies, 1);
    }
    assert!(rig.stats().snapshot_requests.load(Ordering::Relaxed) >= 8);
}

/// A hand-driven broker: a PUB for updates and a ROUTER answering snapshot requests.
struct Fake {
    publisher: zmq::Socket,
    router: zmq::Socket,
    directory: String,
    snapshot: String,
}

impl Fake {
    fn new() -> Fake {
        let publisher = ctx().socket(zmq::PUB).expect("pub");
        publisher.bind("tcp://127.0.0.1:*").expect("bind");
        let router = ctx().socket(zmq::ROUTER).expect("router");
        router.set_rcvtimeo(10_000).expect("timeout");
        router.bind("tcp://127.0.0.1:*").expect("bind");
        let ep = |s: &zmq::Socket| s.get_last_endpoint().expect("ep").expect("utf-8");
        Fake {
            directory: ep(&publisher),
            snapshot: ep(&router),
            publisher,
            router,
        }
    }

    fn publish(&self, ns: &str, v: u64, seq: u64) {
        let m = json!({"type": "thing_update", "ns": ns, "data": v, "ts": 1000.0 + seq as f64, "documentation_url": null, "seq": seq});
        self.publisher
            .send(m.to_string().as_bytes(), 0)
            .expect("send");
    }

    /// Waits for a snapshot request and answers it with `things` (ns, value, seq) at `seq`.
    fn answer(&self, things: &[(&str, u64, u64)], seq: u64) {
        let frames = self.router.recv_multipart(0).expect("a snapshot request");
        let req: Value = serde_json::from_slice(frames.last().expect("payload")).expect("json");
        assert_eq!(req["type"], "snapshot_request");
        let data: serde_json::Map<String, Value> = things
            .iter()
            .map(|(ns, v, s)| {
                (ns.to_string(), json!({"ns": ns, "data": v, "ts": 1000.0 + *s as f64, "documentation_url": null, "seq": s}))
            })
            .collect();
        let reply = json!({"type": "thing_snapshot", "ts": 2000.0, "seq": seq, "epoch": 1, "snapshot": 0,
                           "chunk": 0, "request": req["id"], "subtree": "", "data": data, "last": true});
        self.router
            .send(&frames[0], zmq::SNDMORE)
            .expect("identity");
        self.router
            .send(reply.to_string().as_bytes(), 0)
            .expect("reply");
    }
}

#[test]
fn a_seq_gap_triggers_a_resync_that_loses_nothing_and_repeats_nothing() {
    let fake = Fake::new();
    let client = Client::builder()
        .url(&fake.directory)
        .snapshot_url(&fake.snapshot)
        .connect_blocking()
        .expect("client");
    let mut sub = client
        .subscribe("", SubscribeOptions::new().tree(true).snapshots(true))
        .expect("sub");
    fake.answer(&[("g.a", 1, 1), ("g.b", 2, 2)], 2);
    assert!(client.wait_filled_blocking(DEADLINE));
    // Make sure the SUB is live before relying on live updates: publish until one arrives.
    eventually(DEADLINE, "a live update", || {
        fake.publish("g.c", 3, 3);
        std::thread::sleep(Duration::from_millis(10));
        client.get("g.c").map(|_| ())
    });
    // seq 4 and 5 are lost on the way; 6 arrives: the client must ask again.
    fake.publish("g.f", 6, 6);
    fake.answer(
        &[
            ("g.a", 1, 1),
            ("g.b", 2, 2),
            ("g.c", 3, 3),
            ("g.d", 4, 4),
            ("g.e", 5, 5),
            ("g.f", 6, 6),
        ],
        6,
    );
    eventually(DEADLINE, "the resync", || {
        (client.stats().snapshot_replies == 2).then_some(())
    });
    for (ns, v) in [("g.d", 4), ("g.e", 5), ("g.f", 6)] {
        assert_eq!(client.get(ns).map(|t| t.value()), Some(json!(v)), "{ns}");
    }
    let mut seen: Vec<(String, EventKind)> = Vec::new();
    while let Some(e) = sub.try_next() {
        let e = e.expect("no lag");
        seen.push((e.ns().to_string(), e.kind));
    }
    let count = |ns: &str| seen.iter().filter(|(n, _)| n == ns).count();
    assert_eq!(count("g.a"), 1, "{seen:?}");
    assert_eq!(count("g.d"), 1, "{seen:?}");
    assert_eq!(count("g.e"), 1, "{seen:?}");
    assert_eq!(
        count("g.f"),
        1,
        "g.f came live and is not repeated by the reply: {seen:?}"
    );
    assert!(client.stats().seq_gaps >= 1);
}

#[test]
fn a_0_2_broker_without_snapshot_endpoint_falls_back_to_periodic() {
    let publisher = ctx().socket(zmq::PUB).expect("pub");
    publisher.bind("tcp://127.0.0.1:*").expect("bind");
    let url = publisher.get_last_endpoint().expect("ep").expect("utf-8");
    let client = Client::builder()
        .url(&url)
        .snapshot_timeout(Duration::from_millis(300))
        .connect_blocking()
        .expect("client");
    // Nothing listens on P+2; the broker is reachable, so after the time-out the client waits for
    // the periodic snapshot, which 0.2.x sends.
    eventually(DEADLINE, "a periodic snapshot to fill the client", || {
        let snap = json!({"type": "thing_snapshot", "ts": 1.0, "data": {"old.thing": {"ns": "old.thing", "data": 1, "ts": 1.0}}});
        publisher
            .send(snap.to_string().as_bytes(), 0)
            .expect("send");
        client
            .wait_filled_blocking(Duration::from_millis(50))
            .then_some(())
    });
    assert_eq!(client.get("old.thing").map(|t| t.value()), Some(json!(1)));
    assert_eq!(client.stats().snapshot_replies, 0);
}

#[test]
fn a_request_for_stale_things_gets_them_after_the_live_ones_marked_stale() {
    let rig = Rig::new(|c| {
        no_periodic(c);
        c.stats_interval = Duration::ZERO;
        c.snapshot_chunk_bytes = 2048;
    });
    let old = now() - 3600.0;
    for i in 0..40 {
        rig.zmq
            .send_json(&json!([format!("old.t{i}"), old, i, "https://doc"]));
    }
    fill(&rig, "fresh", 40);
    let d = dealer(&rig.broker);

    let plain = ask(&d, br#"{"type":"snapshot_request","id":1}"#);
    let names = |chunks: &[Value], stale: bool| -> Vec<String> {
        chunks
            .iter()
            .filter(|c| (c["stale"] == true) == stale)
            .flat_map(|c| c["data"].as_object().expect("data").keys().cloned())
            .collect()
    };
    assert!(
        names(&plain, true).is_empty(),
        "stale things only on request"
    );
    assert_eq!(
        names(&plain, false).len(),
        40 + 2,
        "fresh things and the two probes of Rig::new"
    );

    let with = ask(&d, br#"{"type":"snapshot_request","id":2,"stale":true}"#);
    assert_eq!(with[0]["total"], 40 + 2 + 40);
    let stale = names(&with, true);
    assert_eq!(stale.len(), 40);
    assert!(stale.iter().all(|n| n.starts_with("old.")), "{stale:?}");
    assert!(names(&with, false).iter().all(|n| !n.starts_with("old.")));
    // Live chunks first, then stale ones; numbered on, the last one last.
    let first_stale = with
        .iter()
        .position(|c| c["stale"] == true)
        .expect("stale chunk");
    assert!(with[first_stale..].iter().all(|c| c["stale"] == true));
    for (i, c) in with.iter().enumerate() {
        assert_eq!(c["chunk"], i as u64);
        assert_eq!(c["last"], i + 1 == with.len());
        assert_eq!(c["request"], 2);
    }
    let subtree = ask(
        &d,
        br#"{"type":"snapshot_request","ns":"old","stale":true}"#,
    );
    assert_eq!(names(&subtree, true).len(), 40);
    assert_eq!(names(&subtree, false).len(), 0);

    // The client library: stale things are known, and flagged, only with include_stale.
    let client = client_for(&rig.broker)
        .include_stale(true)
        .connect_blocking()
        .expect("client");
    assert!(client.wait_filled_blocking(DEADLINE));
    let t = client.get("old.t7").expect("a stale thing is known");
    assert!(t.stale && t.from_snapshot);
    assert_eq!(t.value(), json!(7));
    assert_eq!(t.documentation_url.as_deref(), Some("https://doc"));
    assert!(!client.get("fresh.t7").expect("fresh").stale);
    let plain_client = client_for(&rig.broker).connect_blocking().expect("client");
    assert!(plain_client.wait_filled_blocking(DEADLINE));
    assert!(plain_client.get("old.t7").is_none(), "as in 0.2.x");
    assert!(plain_client.get("fresh.t7").is_some());
}

#[test]
fn things_expire_out_of_the_live_window() {
    let rig = Rig::new(|c| {
        no_periodic(c);
        c.live_window = Duration::from_millis(1500);
    });
    let client = client_for(&rig.broker).connect_blocking().expect("client");
    assert!(client.wait_filled_blocking(DEADLINE));
    let mut sub = client
        .subscribe("live", SubscribeOptions::new().tree(true))
        .expect("sub");
    let sent_at = now();
    rig.zmq.send_json(&json!(["live.short", sent_at, 1, null]));
    let raw = rig.sub.wait_for(DEADLINE, "thing_expired", |v| {
        v["type"] == "thing_expired" && v["ns"] == "live.short"
    });

    let expired_after = now() - sent_at;
    assert_eq!(raw["ns"], "live.short");
    assert_eq!(raw["ts"].as_f64(), Some(sent_at));
    assert!(
        (1.4..5.0).contains(&expired_after),
        "expired after {expired_after:.2} s"
    );
    eventually(DEADLINE, "the client to mark it stale", || {
        client.get("live.short").filter(|t| t.stale).map(|_| ())
    });
    let kinds: Vec<EventKind> = std::iter::from_fn(|| sub.try_next())
        .map(|e| e.expect("no lag").kind)
        .collect();
    assert_eq!(kinds, [EventKind::Update, EventKind::Expired]);
    // A new value makes it live again.
    rig.zmq.send_json(&json!(["live.short", null, 2, null]));
    eventually(DEADLINE, "fresh again", || {
        client
            .get("live.short")
            .filter(|t| !t.stale && t.value() == json!(2))
            .map(|_| ())
    });
}

#[test]
fn the_broker_is_a_thing() {
    let rig = Rig::new(|c| c.stats_interval = Duration::from_millis(100));
    fill(&rig, "counted", 10);
    let client = client_for(&rig.broker).connect_blocking().expect("client");
    eventually(
        DEADLINE,
        "the broker's counters to show the 10 updates",
        || {
            client.get("thingsbus.broker").filter(|t| {
                t.value()["accepted"].as_u64() >= Some(10)
                    && t.value()["things"].as_u64() >= Some(10)
            })
        },
    );
    let t = client.get("thingsbus.broker").expect("broker thing");
    for key in [
        "uptime_s",
        "rejected",
        "bytes_in",
        "bytes_out",
        "subscribers",
        "snapshot_requests",
        "snapshot_replies",
    ] {
        assert!(
            t.value().get(key).is_some(),
            "{key} missing from {}",
            t.value()
        );
    }
    // Nobody else may publish there.
    rig.zmq
        .send_json(&json!(["thingsbus.broker", null, {"accepted": -1}, null]));
    rig.sub
        .assert_no_update_before_probe("thingsbus.broker.fake", &rig.zmq);
    eventually(DEADLINE, "the reserved-namespace rejection", || {
        (rig.stats()
            .rejected(thingsbus_protocol::Rejection::ReservedNs)
            == 1)
            .then_some(())
    });
}

fn srv(port: u16, priority: u16) -> SrvRecord {
    SrvRecord {
        name: "_thingsbus._tcp.example.org".into(),
        priority,
        weight: 0,
        port,
        target: "broker.example.org.".into(),
    }
}

/// A client and an adaptor (base namespace `ns`) that find brokers through `dns` and give one up
/// after half a second unreachable.
fn client_and_adaptor(dns: &DnsServer, ns: &str) -> (Client, Adaptor) {
    rt().block_on(async {
        let client = Client::builder()
            .zone("example.org")
            .nameserver(dns.addr())
            .failover_timeout(Duration::from_millis(500))
            .connect()
            .await
            .expect("client");
        let adaptor = Adaptor::builder(ns)
            .zone("example.org")
            .nameserver(dns.addr())
            .failover_timeout(Duration::from_millis(500))
            .connect()
            .await
            .expect("adaptor");
        (client, adaptor)
    })
}

#[test]
fn client_and_adaptor_fail_over_to_the_next_srv_record() {
    // The first record points at ports where nothing listens; the second at a live broker.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let live = spawn_broker_on_port_pair(|c| c.snapshot_interval = Duration::from_millis(300));
    let dns = DnsServer::start(
        "example.org",
        &[srv(dead_port, 10), srv(live.endpoints().directory_port, 20)],
        &[("broker.example.org", Ipv4Addr::LOCALHOST)],
    );
    let (client, adaptor) = client_and_adaptor(&dns, "moved");
    adaptor.send(&json!("here")).expect("send");
    eventually(DEADLINE, "the update through the second broker", || {
        client
            .get("moved")
            .filter(|t| t.value() == json!("here"))
            .map(|_| ())
    });
    assert!(client.stats().failovers >= 1);
    assert!(client
        .url()
        .ends_with(&format!(":{}", live.endpoints().directory_port)));
}

#[test]
fn losing_the_broker_moves_everyone_to_the_next() {
    let first = spawn_broker_on_port_pair(|c| c.snapshot_interval = Duration::from_millis(300));
    let second = spawn_broker_on_port_pair(|c| c.snapshot_interval = Duration::from_millis(300));
    let dns = DnsServer::start(
        "example.org",
        &[
            srv(first.endpoints().directory_port, 10),
            srv(second.endpoints().directory_port, 20),
        ],
        &[("broker.example.org", Ipv4Addr::LOCALHOST)],
    );
    let (client, adaptor) = client_and_adaptor(&dns, "ha");
    adaptor.send(&json!(1)).expect("send");
    eventually(DEADLINE, "the first broker to carry it", || {
        client
            .get("ha")
            .filter(|t| t.value() == json!(1))
            .map(|_| ())
    });
    assert_eq!(client.stats().failovers, 0);
    drop(first);
    eventually(DEADLINE, "both to move and carry a new value", || {
        let _ = adaptor.send(&json!(2));
        std::thread::sleep(Duration::from_millis(50));
        client
            .get("ha")
            .filter(|t| t.value() == json!(2))
            .map(|_| ())
    });
    assert!(client.stats().failovers >= 1);
    assert!(client
        .url()
        .ends_with(&format!(":{}", second.endpoints().directory_port)));
}
