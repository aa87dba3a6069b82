//! `thingsbus-zmq-adaptor` as a binary, between a real ZMQ source and a real broker.

mod common;

use std::time::{Duration, Instant};

use common::{field, run, tool, Proc, DEADLINE};
use serde_json::{json, Value};
use thingsbus_broker::Config;
use thingsbus_tests::{
    ctx, dns_for, eventually, now, spawn_broker, spawn_broker_on_port_pair, start_on, sync,
    Subscriber, ZmqInput,
};

fn quiet(c: &mut Config) {
    c.stats_interval = Duration::ZERO;
}

/// A ZMQ publisher bound on 127.0.0.1, like a camera daemon.
struct Source {
    socket: zmq::Socket,
    url: String,
}

impl Source {
    fn bind(url: &str) -> Source {
        let socket = ctx().socket(zmq::PUB).expect("PUB");
        socket.set_linger(0).expect("linger");
        socket.set_sndhwm(100_000).expect("sndhwm");
        socket.bind(url).expect("bind source");
        let url = socket
            .get_last_endpoint()
            .expect("endpoint")
            .expect("utf-8 endpoint");
        Source { socket, url }
    }

    fn send(&self, body: &str) {
        self.socket.send(body, 0).expect("send");
    }

    /// Sends `body` again and again until the update it makes shows up at `sub` as `ns`: the
    /// source → adaptor → broker → subscriber path is then connected end to end.
    fn until_through(&self, body: &Value, sub: &Subscriber, ns: &str) -> usize {
        let end = Instant::now() + DEADLINE;
        let mut sent = 0;
        while Instant::now() < end {
            self.send(&body.to_string());
            sent += 1;
            if let Some(v) = sub.recv_json(Duration::from_millis(50)) {
                if v["type"] == "thing_update" && v["ns"] == ns {
                    // Drain the echoes of the other tries.
                    while sub.recv_json(Duration::from_millis(200)).is_some() {}
                    return sent;
                }
            }
        }
        panic!("nothing sent by the source reached the broker as {ns}");
    }
}

/// Updates for things under `prefix` that reach `sub` before the update for `marker`.
fn updates_until(sub: &Subscriber, prefix: &str, marker: &str) -> Vec<Value> {
    let mut got = Vec::new();
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < end,
            "no {marker} within {DEADLINE:?}; got {got:?}"
        );
        let Some(v) = sub.recv_json(Duration::from_millis(100)) else {
            continue;
        };
        if v["type"] != "thing_update" {
            continue;
        }
        if v["ns"] == marker {
            return got;
        }
        if v["ns"].as_str().is_some_and(|ns| ns.starts_with(prefix)) {
            got.push(v);
        }
    }
}

fn stop(mut adaptor: Proc) -> String {
    adaptor.signal("TERM");
    let status = adaptor
        .wait(DEADLINE)
        .expect("the adaptor stops on SIGTERM");
    assert!(status.success(), "exit {status:?}: {}", adaptor.stderr());
    adaptor.wait_stderr("bridge stopped")
}

#[test]
fn the_0_2_x_camera_flags_filter_project_key_and_count_every_skip() {
    let broker = spawn_broker(quiet);
    let sub = Subscriber::connect(&broker);
    sync(&sub, &ZmqInput::connect(&broker));
    let source = Source::bind("tcp://127.0.0.1:*");
    // The input URL as a 0.2.x service file wrote it: `*` for this machine.
    let input = broker.endpoints().input.replace("127.0.0.1", "*");
    let adaptor = Proc::spawn(tool("thingsbus-zmq-adaptor").args([
        "-u",
        &input,
        "-s",
        &source.url,
        "--ns",
        "shop.camera",
        "--nskey",
        "camname",
        "--tskey",
        "frame_time",
        "--filter",
        "mtype:percept_update",
        "--projections",
        "luminance,ratio_busy",
        "-d",
        "https://wiki.example.org/Cameras",
    ]));
    let percept = |cam: &str, extra: Value| {
        let mut m = json!({"mtype": "percept_update", "camname": cam, "frame_time": 1_700_000_000.25,
                           "luminance": 31.8, "ratio_busy": 0.2, "other": "dropped by projections"});
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    m.remove(k);
                } else {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        m
    };
    let probes = source.until_through(&percept("probe", json!({})), &sub, "shop.camera.probe");

    let sent_at = now();
    source.send(&percept("door", json!({})).to_string());
    source.send("this is not json");
    source.send("[1, 2, 3]");
    source.send(&percept("door", json!({"mtype": "keyframe"})).to_string());
    source.send(&percept("door", json!({"mtype": null})).to_string());
    source.send(&percept("door", json!({"mtype": 7})).to_string());
    source.send(&percept("door", json!({"camname": null})).to_string());
    source.send(&percept("Front Door", json!({})).to_string());
    source.send(&percept("door", json!({"camname": 12})).to_string());
    source.send(&percept("door", json!({"ratio_busy": null})).to_string());
    // No frame_time: the broker stamps the arrival time.
    source.send(&percept("window", json!({"frame_time": null})).to_string());
    // A topic frame before the JSON: the last frame is the message.
    source
        .socket
        .send_multipart(
            [
                "camera-topic".as_bytes(),
                percept("yard", json!({})).to_string().as_bytes(),
            ],
            0,
        )
        .expect("send multipart");
    source.send(&percept("marker", json!({})).to_string());

    let got = updates_until(&sub, "shop.camera.", "shop.camera.marker");
    let names: Vec<&str> = got.iter().filter_map(|v| v["ns"].as_str()).collect();
    assert_eq!(
        names,
        ["shop.camera.door", "shop.camera.window", "shop.camera.yard"]
    );
    let door = &got[0];
    assert_eq!(door["data"], json!({"luminance": 31.8, "ratio_busy": 0.2}));
    assert_eq!(door["ts"], json!(1_700_000_000.25));
    assert_eq!(
        door["documentation_url"],
        "https://wiki.example.org/Cameras"
    );
    let window_ts = got[1]["ts"].as_f64().expect("ts stamped");
    assert!(
        (sent_at - 1.0..now() + 1.0).contains(&window_ts),
        "window stamped {window_ts}, sent at {sent_at}"
    );

    let report = stop(adaptor);
    let line = report
        .lines()
        .find(|l| l.contains("bridge stopped"))
        .expect("final report line");
    for (reason, n) in [
        ("not_json", 1),
        ("not_object", 1),
        ("filtered", 3),
        ("missing_nskey", 1),
        ("bad_nskey", 2),
        ("missing_projection", 1),
    ] {
        assert_eq!(field(line, reason), Some(n), "{reason} in {line}");
    }
    assert_eq!(field(line, "skipped"), Some(9), "{line}");
    let forwarded = field(line, "forwarded").expect("forwarded count");
    // Every probe that reached the adaptor, plus door, window, yard and the marker.
    assert!(
        (4 + 1..=4 + probes as u64).contains(&forwarded),
        "forwarded {forwarded}, probes sent {probes}: {line}"
    );
    // One warning per reason and interval, not one per message.
    assert_eq!(report.matches("message skipped").count(), 5, "{report}");
}

#[test]
fn whole_messages_over_udp_to_a_broker_found_through_srv() {
    let broker = spawn_broker_on_port_pair(quiet);
    let dns = dns_for(&broker);
    let sub = Subscriber::connect(&broker);
    sync(&sub, &ZmqInput::connect(&broker));
    let source = Source::bind("tcp://127.0.0.1:*");
    let adaptor = Proc::spawn(tool("thingsbus-zmq-adaptor").args([
        "--zone",
        "example.org",
        "--nameserver",
        &dns.addr().to_string(),
        "--udp",
        "--sources",
        &format!("tcp://127.0.0.1:1,{}", source.url),
        "--ns",
        "lab.meter",
        "--report-interval",
        "0.3",
    ]));
    let body = json!({"watts": 412.5, "phases": [1, 2, 3], "label": "käse"});
    source.until_through(&body, &sub, "lab.meter");
    source.send(&body.to_string());
    let v = sub.update_for("lab.meter");
    assert_eq!(
        v["data"], body,
        "without --projections the whole message is the data"
    );
    // The periodic report: counts for the interval and in total.
    eventually(DEADLINE, "a report counting the forwarded message", || {
        adaptor
            .stderr()
            .lines()
            .find(|l| {
                l.contains("bridge report") && field(l, "total_forwarded").is_some_and(|n| n >= 1)
            })
            .map(|_| ())
    });
    let report = stop(adaptor);
    assert!(report.contains("found brokers through SRV"), "{report}");
    assert!(report.contains("transport=\"udp\""), "{report}");
}

#[test]
fn it_reconnects_to_a_restarted_source_and_a_restarted_broker() {
    let broker = spawn_broker_on_port_pair(quiet);
    let port = broker.endpoints().directory_port;
    let mut sub = Subscriber::connect(&broker);
    sync(&sub, &ZmqInput::connect(&broker));
    let source = Source::bind("tcp://127.0.0.1:*");
    let source_url = source.url.clone();
    let adaptor = Proc::spawn(tool("thingsbus-zmq-adaptor").args([
        "-u",
        &broker.endpoints().input,
        "-s",
        &source_url,
        "--ns",
        "re",
        "--nskey",
        "n",
    ]));
    source.until_through(&json!({"n": "one"}), &sub, "re.one");

    drop(source);
    let source = eventually(DEADLINE, "the source port free again", || {
        let s = ctx().socket(zmq::PUB).expect("PUB");
        s.set_linger(0).expect("linger");
        s.bind(&source_url).ok().map(|()| Source {
            socket: s,
            url: source_url.clone(),
        })
    });
    source.until_through(&json!({"n": "two"}), &sub, "re.two");

    drop(sub);
    broker.shutdown();
    broker.join();
    let broker = eventually(DEADLINE, "the broker restarted on its ports", || {
        start_on(port, &quiet).ok()
    });
    sub = Subscriber::connect(&broker);
    sync(&sub, &ZmqInput::connect(&broker));
    source.until_through(&json!({"n": "three"}), &sub, "re.three");
    stop(adaptor);
}

#[test]
fn bad_flags_get_one_clear_line_and_help_has_the_camera_example() {
    let help = run(tool("thingsbus-zmq-adaptor").arg("--help"));
    assert_eq!(help.code(), 0);
    for needle in [
        "--nskey",
        "--projections",
        "--filter <KEY:VALUE>",
        "camname",
        "luminance",
        "--udp",
    ] {
        assert!(
            help.stdout.contains(needle),
            "--help lacks {needle}:\n{}",
            help.stdout
        );
    }

    let cases: &[(&[&str], &str)] = &[
        (&["-s", "tcp://127.0.0.1:1", "--ns", "a"], "--url"),
        (&["-u", "tcp://127.0.0.1:1", "--ns", "a"], "--sources"),
        (
            &["-u", "tcp://127.0.0.1:1", "-s", "tcp://127.0.0.1:1"],
            "--ns",
        ),
        (
            &[
                "-u",
                "tcp://127.0.0.1:1",
                "-s",
                "tcp://127.0.0.1:1",
                "--ns",
                "a",
                "--filter",
                "nocolon",
            ],
            "KEY:VALUE",
        ),
        (
            &[
                "-u",
                "tcp://127.0.0.1:1",
                "-s",
                "tcp://127.0.0.1:1",
                "--ns",
                "Bad.NS",
            ],
            "invalid namespace",
        ),
        (
            &["-u", "tcp://127.0.0.1:1", "-s", "nonsense", "--ns", "a"],
            "cannot connect to source",
        ),
        (
            &[
                "-u",
                "tcp://127.0.0.1",
                "-s",
                "tcp://127.0.0.1:1",
                "--ns",
                "a",
                "--udp",
            ],
            "tcp://HOST:PORT",
        ),
    ];
    for (args, needle) in cases {
        let out = run(tool("thingsbus-zmq-adaptor").args(*args));
        assert_ne!(out.code(), 0, "{args:?} was accepted");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: stderr lacks {needle:?}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn with_the_broker_key_it_publishes_to_a_curve_broker() {
    let keys = thingsbus_protocol::keys::KeyPair::generate().expect("keys");
    let server = keys.public;
    let broker = spawn_broker(move |c| {
        quiet(c);
        c.curve = Some(keys.clone());
    });
    let source = Source::bind("tcp://127.0.0.1:*");
    let adaptor = Proc::spawn(tool("thingsbus-zmq-adaptor").args([
        "-u",
        &broker.endpoints().input,
        "-s",
        &source.url,
        "--ns",
        "shop.camera",
        "--server-key",
        &server.to_string(),
    ]));
    let client = thingsbus_client::Client::builder()
        .url(&broker.endpoints().directory)
        .snapshot_url(&broker.endpoints().snapshot)
        .curve(thingsbus_protocol::transport::ClientKeys::new(server, None).expect("keys"))
        .connect_blocking()
        .expect("client");
    let thing = eventually(DEADLINE, "the source's message through CURVE", || {
        source.send(r#"{"luminance": 31.8}"#);
        std::thread::sleep(Duration::from_millis(20));
        client.get("shop.camera")
    });
    assert_eq!(
        serde_json::from_str::<Value>(&thing.data).expect("JSON"),
        json!({"luminance": 31.8})
    );
    stop(adaptor);
}
