//! The broker's HTTP side (`--http`), with a real HTTP client, promtool, and headless Chromium.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thingsbus_tests::*;

fn with_http(c: &mut Config) {
    c.stats_interval = Duration::ZERO;
    c.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

fn base(broker: &Broker) -> String {
    format!("http://{}", broker.endpoints().http.expect("http runs"))
}

fn get(url: &str) -> (u16, String) {
    match ureq::get(url).timeout(Duration::from_secs(10)).call() {
        Ok(r) => (r.status(), r.into_string().expect("body")),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn get_json(url: &str) -> Value {
    let (code, body) = get(url);
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Sends updates through a real ZMQ input and waits until the HTTP side's mirror has `last`.
fn publish(broker: &Broker, updates: &[Value], last: &str) {
    let input = ZmqInput::connect(broker);
    let url = format!("{}/api/things/{last}", base(broker));
    eventually(DEADLINE, "the update to reach the HTTP side", || {
        for u in updates {
            input.send_json(u);
        }
        std::thread::sleep(Duration::from_millis(50));
        (get(&url).0 == 200).then_some(())
    });
}

#[test]
fn health_things_and_metrics() {
    require_peers!(peers::PROMTOOL);
    let broker = spawn_broker(with_http);
    let b = base(&broker);
    assert_eq!(get(&format!("{b}/healthz")), (200, "ok\n".into()));
    eventually(DEADLINE, "readyz", || {
        (get(&format!("{b}/readyz")).0 == 200).then_some(())
    });
    publish(
        &broker,
        &[
            json!({"type": "thing_update", "ns": "shop.door", "data": {"open": true}, "documentation_url": "https://wiki/Door"}),
            json!(["garden.temp", null, 21.5, null]),
        ],
        "garden.temp",
    );
    let all = get_json(&format!("{b}/api/things"));
    assert_eq!(all["shop.door"]["data"], json!({"open": true}));
    assert_eq!(all["shop.door"]["documentation_url"], "https://wiki/Door");
    assert_eq!(all["garden.temp"]["stale"], json!(false));
    let shop = get_json(&format!("{b}/api/things?prefix=shop"));
    assert_eq!(shop.as_object().expect("object").len(), 1, "{shop}");
    let one = get_json(&format!("{b}/api/things/shop.door"));
    assert_eq!(
        (one["ns"].clone(), one["data"].clone()),
        (json!("shop.door"), json!({"open": true}))
    );
    assert_eq!(get(&format!("{b}/api/things/nothing.here")).0, 404);
    assert_eq!(get(&format!("{b}/api/things?prefix=Bad")).0, 400);

    let (code, text) = get(&format!("{b}/metrics"));
    assert_eq!(code, 200);
    for line in [
        "thingsbus_updates_accepted_total ",
        "thingsbus_updates_rejected_total{reason=\"invalid_json\"} 0",
        "thingsbus_things 2",
        "thingsbus_live_things 2",
        "# TYPE thingsbus_sent_bytes_total counter",
        "thingsbus_commands_total{outcome=\"no_route\"} 0",
    ] {
        assert!(text.contains(line), "metrics lack {line:?}:\n{text}");
    }
    assert!(
        !text.contains("thingsbus_thing_last_update"),
        "per-thing series only on request"
    );
    promtool_check(&text);
    // The HTTP side is read-only.
    let post = ureq::post(&format!("{b}/api/things/shop.door")).send_string("{}");
    assert!(matches!(post, Err(ureq::Error::Status(405, _))), "{post:?}");
}

#[test]
fn per_thing_series_on_request() {
    require_peers!(peers::PROMTOOL);
    let broker = spawn_broker(|c| {
        with_http(c);
        c.http_thing_metrics = true;
    });
    publish(&broker, &[json!(["a.b", 1_700_000_000.5, 1, null])], "a.b");
    let (_, text) = get(&format!("{}/metrics", base(&broker)));
    assert!(
        text.contains("thingsbus_thing_last_update_timestamp_seconds{ns=\"a.b\"} 1700000000.5"),
        "{text}"
    );
    promtool_check(&text);
}

#[test]
fn values_as_gauges_scraped_by_a_real_prometheus() {
    require_peers!(peers::PROMTOOL, peers::PROMETHEUS);
    let broker = spawn_broker(|c| {
        with_http(c);
        c.http_value_metrics = Some(100);
    });
    publish(
        &broker,
        &[
            json!(["garden.temp", null, 21.5, null]),
            json!(["kitchen.fridge", null, {"temp": 4.5, "door": {"open": true}, "model": "x"}, null]),
        ],
        "kitchen.fridge",
    );
    let b = base(&broker);
    let (_, text) = get(&format!("{b}/metrics"));
    for line in [
        "thingsbus_value{ns=\"garden.temp\",field=\"\"} 21.5",
        "thingsbus_value{ns=\"kitchen.fridge\",field=\"temp\"} 4.5",
        "thingsbus_value{ns=\"kitchen.fridge\",field=\"door.open\"} 1",
        "thingsbus_value_series_omitted 0",
    ] {
        assert!(text.contains(line), "metrics lack {line:?}:\n{text}");
    }
    assert!(!text.contains("model"), "a string is no series:\n{text}");
    promtool_check(&text);

    // A real Prometheus scrapes the broker every second and answers a PromQL query for it.
    let dir = std::env::temp_dir().join(format!("thingsbus-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let target = broker.endpoints().http.expect("http runs");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: thingsbus\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("write the config");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("addr").port()
    };
    let _prometheus = thingsbus_tests::process::Process::build(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
    )
    .name("prometheus")
    .start();
    let query = |q: &str| -> Option<Value> {
        let encoded: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let url = format!("http://127.0.0.1:{port}/api/v1/query?query={encoded}");
        let r = ureq::get(&url)
            .timeout(Duration::from_secs(5))
            .call()
            .ok()?;
        serde_json::from_str(&r.into_string().ok()?).ok()
    };
    let value = eventually(
        Duration::from_secs(60),
        "Prometheus to answer the query",
        || {
            let v = query("thingsbus_value{ns=\"kitchen.fridge\",field=\"temp\"}")?;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        },
    );
    assert_eq!(value, "4.5");
    // Every query of the Grafana dashboard in contrib/ is valid PromQL on these series, and the
    // value panels find the things under their prefix.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../contrib/grafana-thingsbus.json"),
        )
        .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 5, "{exprs:?}");
    for expr in exprs {
        let q = expr
            .replace("$prefix", "kitchen")
            .replace("$__rate_interval", "1m");
        let v = query(&q).unwrap_or_else(|| panic!("no answer to {q}"));
        assert_eq!(v["status"], "success", "{q}: {v}");
        if q.contains("thingsbus_value{") {
            let found = v["data"]["result"].to_string();
            assert!(
                found.contains("kitchen.fridge") && !found.contains("garden.temp"),
                "{q}: {v}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `promtool check metrics` on real output (the test requires [`peers::PROMTOOL`]).
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An SSE stream's `data:` lines, read on a thread.
fn sse(url: &str) -> std::sync::mpsc::Receiver<Value> {
    let reader = ureq::get(url).call().expect("SSE").into_reader();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut event = String::new();
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                let mut v: Value = serde_json::from_str(d).expect("JSON event");
                v["event"] = json!(event);
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

#[test]
fn server_sent_events_carry_updates_and_expiries() {
    let broker = spawn_broker(|c| {
        with_http(c);
        c.live_window = Duration::from_secs(1);
    });
    let b = base(&broker);
    eventually(DEADLINE, "readyz", || {
        (get(&format!("{b}/readyz")).0 == 200).then_some(())
    });
    let events = sse(&format!("{b}/api/events?prefix=sse"));
    let input = ZmqInput::connect(&broker);
    let end = Instant::now() + DEADLINE;
    let update = loop {
        assert!(
            Instant::now() < end,
            "no SSE event for an update sent over ZMQ"
        );
        input.send_json(&json!(["sse.probe", null, {"n": 1}, null]));
        input.send_json(&json!(["elsewhere.x", null, 1, null]));
        if let Ok(v) = events.recv_timeout(Duration::from_millis(200)) {
            break v;
        }
    };
    assert_eq!(update["event"], "update");
    assert_eq!(update["ns"], "sse.probe");
    assert_eq!(update["data"], json!({"n": 1}));
    // It leaves the one-second window: an expiry event.
    let expired = loop {
        let v = events.recv_timeout(DEADLINE).expect("an expiry event");
        assert_ne!(v["ns"], "elsewhere.x", "outside the prefix");
        if v["event"] == "expired" {
            break v;
        }
    };
    assert_eq!(expired["ns"], "sse.probe");
    assert_eq!(expired["stale"], json!(true));
}

#[test]
fn a_slow_event_client_holds_nobody_up() {
    let broker = spawn_broker(with_http);
    let b = base(&broker);
    eventually(DEADLINE, "readyz", || {
        (get(&format!("{b}/readyz")).0 == 200).then_some(())
    });
    // A client that opens the stream and never reads.
    let addr = broker.endpoints().http.expect("http");
    let mut stuck = std::net::TcpStream::connect(addr).expect("connect");
    stuck
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("request");
    let fast = sse(&format!("{b}/api/events?prefix=flood"));
    let input = ZmqInput::connect(&broker);
    let sub = Subscriber::connect(&broker);
    sync(&sub, &input);
    // Fewer than an event client's queue holds (4,096), so the fast one never lags; the stuck
    // one's socket fills up long before.
    let pad = "x".repeat(2000);
    for i in 0..3_000 {
        input.send_json(&json!(["flood.t", null, {"i": i, "pad": pad}, null]));
    }
    input.send_json(&json!(["flood.last", null, 1, null]));
    // The fast client keeps getting events up to the last one, and the JSON side answers.
    let end = Instant::now() + DEADLINE;
    let mut got = 0;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let v = fast
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the fast SSE client stalled after {got} events"));
        got += 1;
        if v["ns"] == "flood.last" {
            break;
        }
    }
    assert_eq!(got, 3001, "every event, in order, then the last");
    assert_eq!(get(&format!("{b}/healthz")).0, 200);
    drop(stuck);
}

fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web")
}

#[test]
fn the_web_page_shows_a_thing_appear_and_turn_stale() {
    require_peers!(peers::CHROMIUM, peers::PLAYWRIGHT);
    let broker = spawn_broker(|c| {
        with_http(c);
        c.live_window = Duration::from_secs(2);
    });
    let b = base(&broker);
    // 10,000 things already there when the page opens. They are old, so they expire (in one
    // burst) before the page opens rather than while it watches the lamp.
    let input = ZmqInput::connect(&broker);
    let sub = Subscriber::connect(&broker);
    sync(&sub, &input);
    let old = now() - 3600.0;
    for i in 0..10_000 {
        input.send_json(&json!([format!("bulk.t{i:05}"), old, i, null]));
    }
    sub.update_for("bulk.t09999");
    eventually(DEADLINE, "the bulk to expire", || {
        (broker
            .stats()
            .expired
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 10_000)
            .then_some(())
    });
    eventually(DEADLINE, "readyz and the bulk at the HTTP side", || {
        (get(&format!("{b}/readyz")).0 == 200
            && get(&format!("{b}/api/things/bulk.t09999")).0 == 200)
            .then_some(())
    });
    let mut node = Command::new("node")
        .arg(web_dir().join("e2e.mjs"))
        .arg(format!("{b}/"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut next = || {
        lines
            .next()
            .expect("a line from the browser")
            .expect("utf-8")
    };
    let ready = next();
    let rows: usize = ready
        .strip_prefix("ready ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{ready}"));
    assert!(rows >= 10_000, "the page shows {rows} rows");
    let mut stdin = node.stdin.take().expect("stdin");
    writeln!(stdin, "web.demo.lamp").expect("ns to the script");
    input.send_json(&json!(["web.demo.lamp", null, {"on": true}, "https://wiki/Lamp"]));
    let seen = next();
    assert_eq!(seen, r#"seen web.demo.lamp {"on":true}"#);
    assert_eq!(next(), "stale web.demo.lamp");
    drop(stdin);
    // Without --history the page asks for no history, though its rows are numbers.
    assert_eq!(next(), "history 0 0");
    let status = node.wait().expect("node exits");
    assert!(status.success());
}

/// A broker whose thread `fault` names fails as asked (see `Config::fault`; debug builds).
fn with_fault(fault: &str) -> impl FnOnce(&mut Config) + '_ {
    move |c| {
        with_http(c);
        c.fault = Some(fault.to_owned());
    }
}

#[test]
fn healthz_and_readyz_answer_503_naming_a_wedged_loop() {
    let broker = spawn_broker(with_fault("thingsbus-publish=wedge"));
    let b = base(&broker);
    // The other loops turn; the wedged one is named once it has been silent long enough.
    let body = eventually(
        Duration::from_secs(30),
        "/healthz to see the wedged loop",
        || {
            let (code, body) = get(&format!("{b}/healthz"));
            (code == 503).then_some(body)
        },
    );
    assert!(body.contains("thingsbus-publish has not turned"), "{body}");
    assert!(!body.contains("thingsbus-ingest"), "{body}");
    let (code, body) = get(&format!("{b}/readyz"));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("thingsbus-publish"), "{body}");
}

#[test]
fn a_healthy_broker_is_healthy_and_ready_well_past_the_heartbeat_limit() {
    // Every loop beats, the idle publish thread included: still 200 after the 5 s limit.
    let broker = spawn_broker(with_http);
    let b = base(&broker);
    eventually(DEADLINE, "/readyz", || {
        (get(&format!("{b}/readyz")).0 == 200).then_some(())
    });
    std::thread::sleep(Duration::from_secs(6));
    let (code, body) = get(&format!("{b}/healthz"));
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert_eq!(get(&format!("{b}/readyz")).0, 200);
}

#[test]
fn a_thread_that_panics_or_ends_stops_the_broker_saying_which() {
    for (fault, cause) in [
        (
            "thingsbus-snapshots=panic",
            "thingsbus-snapshots panicked: fault injected",
        ),
        ("thingsbus-ingest=exit", "thingsbus-ingest stopped"),
        ("thingsbus-commands=panic", "thingsbus-commands panicked"),
        // With --history, its recorder and writer too.
        ("thingsbus-recorder=exit", "thingsbus-recorder stopped"),
        ("thingsbus-history=panic", "thingsbus-history panicked"),
    ] {
        let dir = std::env::temp_dir().join(format!(
            "thingsbus-supervised-{}-{}",
            std::process::id(),
            fault.replace('=', "-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let history = dir.join("history.db");
        let broker = spawn_broker(move |c| {
            with_fault(fault)(c);
            c.history = Some(thingsbus_broker::HistoryConfig::new(history.clone()));
        });
        eventually(DEADLINE, "the broker to stop by itself", || {
            broker.is_stopping().then_some(())
        });
        let failure = broker.stats().health.failure().unwrap_or_default();
        assert!(failure.starts_with(cause), "{fault}: {failure}");
    }
}

#[test]
fn event_streams_are_capped_and_a_closed_one_frees_its_place() {
    let broker = spawn_broker(with_http);
    let b = base(&broker);
    let addr = broker.endpoints().http.expect("http");
    // 256 streams, each held open by a client that read the response head.
    let open: Vec<std::net::TcpStream> = (0..256)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .expect("request");
            s.set_read_timeout(Some(DEADLINE)).expect("timeout");
            let mut head = [0u8; 12];
            std::io::Read::read_exact(&mut s, &mut head).expect("response head");
            assert_eq!(&head, b"HTTP/1.1 200", "stream {i}");
            s
        })
        .collect();
    let (code, body) = get(&format!("{b}/api/events"));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("too many event streams"), "{body}");
    // The JSON side is not affected.
    assert_eq!(get(&format!("{b}/api/things")).0, 200);
    // They go away: their places are free again (once the server notices the closes).
    drop(open);
    eventually(Duration::from_secs(60), "a place for a new stream", || {
        let url = format!("{b}/api/events");
        match ureq::get(&url).timeout(Duration::from_secs(2)).call() {
            Ok(r) => (r.status() == 200).then_some(()),
            Err(_) => None,
        }
    });
}

/// Reads `s` until the server closes it (end of file or a reset); false if it is still open at
/// the deadline.
fn closed_by_server(s: &mut std::net::TcpStream, deadline: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let end = Instant::now() + deadline;
    let mut buf = vec![0u8; 1 << 16];
    while Instant::now() < end {
        match std::io::Read::read(s, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn a_client_that_never_reads_is_dropped_while_a_reader_keeps_receiving() {
    let broker = spawn_broker(|c| {
        with_http(c);
        c.http_options.write_timeout = Duration::from_secs(2);
        c.http_options.sse_queue_bytes = 256 * 1024;
    });
    let b = base(&broker);
    eventually(DEADLINE, "readyz", || {
        (get(&format!("{b}/readyz")).0 == 200).then_some(())
    });
    let addr = broker.endpoints().http.expect("http");
    let mut stuck = std::net::TcpStream::connect(addr).expect("connect");
    stuck
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("request");
    let fast = sse(&format!("{b}/api/events?prefix=flood"));
    let input = ZmqInput::connect(&broker);
    let sub = Subscriber::connect(&broker);
    sync(&sub, &input);
    // About 12 MB: far more than the kernel's buffers and the stuck stream's 256 KiB hold. Sent
    // 20 events (80 KB) at a time, each lot once the reading client has had the one before: it
    // never falls behind by more than that, however busy the machine.
    let pad = "x".repeat(4000);
    let mut got = 0;
    for lot in 0..150 {
        for k in 0..20 {
            let i = lot * 20 + k;
            input.send_json(&json!(["flood.t", null, {"i": i, "pad": pad}, null]));
        }
        let last = lot * 20 + 19;
        loop {
            let v = fast
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("the reading SSE client stalled after {got} events"));
            assert_eq!(v["data"]["i"], json!(got), "every event, in order");
            got += 1;
            if v["data"]["i"] == json!(last) {
                break;
            }
        }
    }
    assert_eq!(got, 3000);
    // The stuck one was let go: its queue was cut at its bound, and its connection closed (at
    // once, or once its writes made no progress for the write timeout).
    assert!(
        closed_by_server(&mut stuck, Duration::from_secs(30)),
        "the server still holds the connection of a client that never read"
    );
    let stats = broker.stats();
    let counted = stats
        .http_streams_dropped
        .load(std::sync::atomic::Ordering::Relaxed)
        + stats
            .http_write_timeouts
            .load(std::sync::atomic::Ordering::Relaxed);
    assert!(counted >= 1, "the drop is counted");
    assert_eq!(get(&format!("{b}/healthz")).0, 200);
}

#[test]
fn things_the_directory_forgot_leave_the_http_side_too() {
    let broker = spawn_broker(|c| {
        with_http(c);
        c.live_window = Duration::from_secs(1);
        c.forget_after = Duration::from_secs(2);
        // Things are forgotten as snapshots are taken.
        c.snapshot_interval = Duration::from_secs(1);
    });
    let b = base(&broker);
    let input = ZmqInput::connect(&broker);
    // The link up and subscribed first: a PUB drops what it sends before the broker's
    // subscription reaches it, which once lost the first 1,798 of the 3,000 below (the test then
    // waited for a forgetting of 2,000 that could not come).
    input.send_until(
        DEADLINE,
        "the link to carry an update",
        &json!(["kept.one", null, 1, null]),
        || (get(&format!("{b}/api/things/kept.one")).0 == 200).then_some(()),
    );
    // One timestamp for all: the directory forgets them in one pass, so the HTTP side's fresh
    // copy is not taken halfway (it would then keep up to its 1,000 of slack).
    // More than the 1,000 things of slack the HTTP side's copy may hold beyond the directory.
    let ts = now();
    for i in 0..3_000 {
        input.send_json(&json!([format!("gone.t{i:04}"), ts, i, null]));
    }
    let stats = broker.stats();
    eventually(
        Duration::from_secs(30),
        "the directory to forget them",
        || {
            let forgotten = stats.forgotten.load(std::sync::atomic::Ordering::Relaxed);
            let held = stats.things.load(std::sync::atomic::Ordering::Relaxed);
            (forgotten >= 3_000 && held <= 5).then_some(())
        },
    );
    let all = eventually(
        Duration::from_secs(30),
        "the HTTP side to forget them",
        || {
            input.send_json(&json!(["kept.one", null, 1, null]));
            let all = get_json(&format!("{b}/api/things"));
            // (Not "gone.t0000 is absent": it may never have arrived.)
            let held = all.as_object().map_or(usize::MAX, |m| m.len());
            (held < 10 && all.get("kept.one").is_some()).then_some(all)
        },
    );
    assert!(
        all.as_object()
            .expect("object")
            .keys()
            .all(|k| !k.starts_with("gone.")),
        "only what the directory holds: {all}"
    );
    assert!(
        stats
            .http_mirror_reloads
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

// ---- Issue #22: TLS, tokens, Host names, the page's policy, commands ----

const READ_TOKEN: &str = "read-0123456789abcdef0123456789";
const COMMAND_TOKEN: &str = "command-0123456789abcdef012345";

/// A directory of its own for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("thingsbus-http-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// A self-signed certificate for 127.0.0.1 and localhost, made now: its PEM files in `dir`, and
/// its DER for the clients to trust.
fn certificate(dir: &std::path::Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("write cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
    (cert, key, made.cert.der().to_vec())
}

fn token_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!("# who may look, who may switch\n{READ_TOKEN} read\n{COMMAND_TOKEN} command\n"),
    )
    .expect("write tokens");
    path
}

/// An HTTP client that trusts `der` and does not follow redirects.
fn https_agent(der: &[u8]) -> ureq::Agent {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
        .expect("a root");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    ureq::AgentBuilder::new()
        .tls_config(std::sync::Arc::new(config))
        .redirects(0)
        .timeout(Duration::from_secs(10))
        .build()
}

/// Status, body and the `WWW-Authenticate` and `Set-Cookie` headers of a request.
struct Answer {
    code: u16,
    body: String,
    challenge: Option<String>,
    cookie: Option<String>,
    csp: Option<String>,
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    Answer {
        code: r.status(),
        challenge: r.header("www-authenticate").map(str::to_owned),
        cookie: r.header("set-cookie").map(str::to_owned),
        csp: r.header("content-security-policy").map(str::to_owned),
        body: r.into_string().unwrap_or_default(),
    }
}

fn secure_broker(name: &str) -> (Broker, Vec<u8>) {
    let dir = scratch(name);
    let (cert, key, der) = certificate(&dir);
    let tokens = token_file(&dir);
    let broker = spawn_broker(move |c| {
        with_http(c);
        c.http_options.tls_cert = Some(cert);
        c.http_options.tls_key = Some(key);
        c.http_options.token_file = Some(tokens);
    });
    (broker, der)
}

#[test]
fn https_with_a_token_works_and_without_one_is_refused() {
    let (broker, der) = secure_broker("tokens");
    let b = format!("https://{}", broker.endpoints().http.expect("http"));
    let agent = https_agent(&der);
    // Health needs no token.
    let a = answer(agent.get(&format!("{b}/healthz")).call());
    assert_eq!((a.code, a.body.as_str()), (200, "ok\n"));
    eventually(DEADLINE, "readyz", || {
        (answer(agent.get(&format!("{b}/readyz")).call()).code == 200).then_some(())
    });
    publish_over(&broker, &agent, &b);
    // Everything else does.
    for path in [
        "/",
        "/api/things",
        "/api/events",
        "/metrics",
        "/app.js",
        "/api/session",
    ] {
        let a = answer(agent.get(&format!("{b}{path}")).call());
        assert_eq!(a.code, 401, "{path}: {}", a.body);
        assert_eq!(
            a.challenge.as_deref(),
            Some("Bearer realm=\"thingsbus\""),
            "{path}"
        );
    }
    let a = answer(
        agent
            .get(&format!("{b}/api/things"))
            .set("Authorization", "Bearer not-a-token-of-this-broker")
            .call(),
    );
    assert_eq!(a.code, 401);
    assert!(a.challenge.unwrap_or_default().contains("invalid_token"));
    for token in [READ_TOKEN, COMMAND_TOKEN] {
        let a = answer(
            agent
                .get(&format!("{b}/api/things/secure.door"))
                .set("Authorization", &format!("Bearer {token}"))
                .call(),
        );
        assert_eq!(a.code, 200, "{}", a.body);
        let v: Value = serde_json::from_str(&a.body).expect("JSON");
        assert_eq!(v["data"], json!({"open": true}));
    }
    // The page's way in: a form posts the token, which comes back as a cookie.
    let login = answer(
        agent
            .post(&format!("{b}/login"))
            .send_form(&[("token", READ_TOKEN)]),
    );
    assert_eq!(login.code, 303, "{}", login.body);
    let cookie = login.cookie.expect("a cookie");
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Secure"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    let a = answer(agent.get(&format!("{b}/")).set("Cookie", &pair).call());
    assert_eq!(a.code, 200);
    assert!(a.csp.unwrap_or_default().contains("script-src 'self'"));
    let wrong = answer(
        agent
            .post(&format!("{b}/login"))
            .send_form(&[("token", "wrong-0123456789abcdef")]),
    );
    assert_eq!(wrong.code, 401);
    assert!(wrong.cookie.is_none());
    // Plain HTTP on the HTTPS port gets nothing.
    let plain = ureq::get(&format!(
        "http://{}/healthz",
        broker.endpoints().http.expect("http")
    ))
    .timeout(Duration::from_secs(10))
    .call();
    assert!(plain.is_err(), "{plain:?}");
}

/// Publishes `secure.door` and waits until the HTTPS side shows it.
fn publish_over(broker: &Broker, agent: &ureq::Agent, b: &str) {
    let input = ZmqInput::connect(broker);
    eventually(DEADLINE, "the update to reach the HTTPS side", || {
        input.send_json(&json!(["secure.door", null, {"open": true}, null]));
        std::thread::sleep(Duration::from_millis(50));
        let a = answer(
            agent
                .get(&format!("{b}/api/things/secure.door"))
                .set("Authorization", &format!("Bearer {READ_TOKEN}"))
                .call(),
        );
        (a.code == 200).then_some(())
    });
}

/// A raw request with this `Host`: the status code.
fn status_with_host(addr: SocketAddr, path: &str, host: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut s, &mut head).expect("response head");
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .expect("a status code")
}

#[test]
fn requests_for_unknown_host_names_are_refused() {
    let broker = spawn_broker(|c| {
        with_http(c);
        c.http_options.allowed_hosts = vec!["broker.home".into(), "*.example.org".into()];
    });
    let addr = broker.endpoints().http.expect("http");
    let port = addr.port();
    // A rebound name: the browser believes it talks to evil.example.
    assert_eq!(status_with_host(addr, "/api/things", "evil.example"), 421);
    assert_eq!(
        status_with_host(addr, "/", &format!("evil.example:{port}")),
        421
    );
    assert_eq!(
        status_with_host(addr, "/", "10.9.9.9"),
        421,
        "not an address it listens on"
    );
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "broker.home".into(),
        "lab.example.org:8080".into(),
    ] {
        assert_eq!(status_with_host(addr, "/api/things", &host), 200, "{host}");
    }
    // Probes reach health by any name.
    assert_eq!(status_with_host(addr, "/healthz", "evil.example"), 200);
}

/// A lamp served with the adaptor library: `{"on": bool}` switches it, and it publishes its
/// new state.
fn lamp(broker: &Broker) -> thingsbus_adaptor::Adaptor {
    let a = thingsbus_adaptor::Adaptor::builder("web.lamp")
        .url(&broker.endpoints().input)
        .command_url(&broker.endpoints().command)
        .connect_blocking()
        .expect("adaptor");
    let me = a.clone();
    a.serve("", move |_, data, _| {
        let me = me.clone();
        async move {
            let on = data
                .get("on")
                .and_then(Value::as_bool)
                .ok_or_else(|| "say {\"on\": true} or false".to_owned())?;
            let state = json!({"on": on, "level": 3});
            me.send(&state).map_err(|e| e.to_string())?;
            Ok(state)
        }
    })
    .expect("serve");
    eventually(DEADLINE, "the lamp to be served", || {
        a.is_serving().then_some(())
    });
    a
}

/// Posts a command; status and JSON answer.
fn post_command(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let mut req = agent.post(url).set("Content-Type", content_type);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let a = answer(req.send_string(body));
    (
        a.code,
        serde_json::from_str(&a.body).unwrap_or(Value::String(a.body)),
    )
}

#[test]
fn the_command_endpoint_switches_a_served_thing_from_this_machine() {
    let broker = spawn_broker(with_http);
    let b = base(&broker);
    let lamp = lamp(&broker);
    eventually(DEADLINE, "the lamp's first state", || {
        lamp.send(&json!({"on": true, "level": 3})).expect("send");
        std::thread::sleep(Duration::from_millis(50));
        (get(&format!("{b}/api/things/web.lamp")).0 == 200).then_some(())
    });
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build();
    let url = format!("{b}/api/things/web.lamp/command");
    let (code, reply) = post_command(&agent, &url, None, "application/json", r#"{"on": false}"#);
    assert_eq!(code, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"ok": true, "data": {"on": false, "level": 3}})
    );
    eventually(DEADLINE, "the lamp's new state", || {
        (get_json(&format!("{b}/api/things/web.lamp"))["data"]["on"] == json!(false)).then_some(())
    });
    // The thing's own refusal, nobody serving, and what the endpoint itself refuses.
    let (code, reply) = post_command(&agent, &url, None, "application/json", r#"{"off": 1}"#);
    assert_eq!(
        (code, reply["error"].clone()),
        (422, json!("say {\"on\": true} or false"))
    );
    let (code, reply) = post_command(
        &agent,
        &format!("{b}/api/things/nobody.home/command"),
        None,
        "application/json",
        "{}",
    );
    assert_eq!((code, reply["error"].clone()), (404, json!("no_route")));
    let (code, _) = post_command(&agent, &url, None, "text/plain", r#"{"on": true}"#);
    assert_eq!(
        code, 415,
        "a form or text/plain post (cross-site without asking) is refused"
    );
    let (code, _) = post_command(&agent, &url, None, "application/json", "{on");
    assert_eq!(code, 400);
    let session = get_json(&format!("{b}/api/session"));
    assert_eq!(session["command"], json!(true), "{session}");
}

#[test]
fn the_command_endpoint_needs_a_command_token_or_an_allowed_address() {
    // No token file, and this machine is not among --allow-command.
    let broker = spawn_broker(|c| {
        with_http(c);
        c.allow_command = vec!["10.0.0.0/8".parse().expect("range")];
    });
    let b = base(&broker);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build();
    let (code, reply) = post_command(
        &agent,
        &format!("{b}/api/things/web.lamp/command"),
        None,
        "application/json",
        r#"{"on": false}"#,
    );
    assert_eq!((code, reply["error"].clone()), (403, json!("not_allowed")));
    assert_eq!(
        get_json(&format!("{b}/api/session"))["command"],
        json!(false)
    );

    // Tokens: only a command token switches.
    let (broker, der) = secure_broker("command");
    let b = format!("https://{}", broker.endpoints().http.expect("http"));
    let agent = https_agent(&der);
    let lamp = lamp(&broker);
    let url = format!("{b}/api/things/web.lamp/command");
    let body = r#"{"on": false}"#;
    let (code, _) = post_command(&agent, &url, None, "application/json", body);
    assert_eq!(code, 401);
    let (code, reply) = post_command(&agent, &url, Some(READ_TOKEN), "application/json", body);
    assert_eq!(
        (code, reply["error"].clone()),
        (403, json!("not_allowed")),
        "{reply}"
    );
    let (code, reply) = post_command(&agent, &url, Some(COMMAND_TOKEN), "application/json", body);
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["data"]["on"], json!(false));
    drop(lamp);
}

#[test]
fn the_page_over_https_with_a_token_switches_a_lamp_and_shows_no_script_links() {
    require_peers!(peers::CHROMIUM, peers::PLAYWRIGHT);
    let (broker, der) = secure_broker("page");
    let addr = broker.endpoints().http.expect("http");
    let b = format!("https://{addr}");
    let agent = https_agent(&der);
    let lamp = lamp(&broker);
    let input = ZmqInput::connect(&broker);
    let things = |ns: &str| {
        answer(
            agent
                .get(&format!("{b}/api/things/{ns}"))
                .set("Authorization", &format!("Bearer {READ_TOKEN}"))
                .call(),
        )
        .code
            == 200
    };
    eventually(DEADLINE, "the things at the HTTPS side", || {
        lamp.send(&json!({"on": true, "level": 3})).expect("send");
        input.send_json(&json!([
            "web.evil",
            null,
            1,
            "javascript:alert(document.domain)"
        ]));
        input.send_json(&json!(["web.good", null, 2, "https://wiki/Good"]));
        std::thread::sleep(Duration::from_millis(50));
        (things("web.lamp") && things("web.evil") && things("web.good")).then_some(())
    });
    eventually(DEADLINE, "the lamp among the served prefixes", || {
        let a = answer(
            agent
                .get(&format!("{b}/api/session"))
                .set("Authorization", &format!("Bearer {COMMAND_TOKEN}"))
                .call(),
        );
        a.body.contains("web.lamp").then_some(())
    });
    let mut node = Command::new("node")
        .arg(web_dir().join("secure.mjs"))
        .arg(format!("{b}/"))
        .arg(COMMAND_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let out = BufReader::new(node.stdout.take().expect("stdout"));
    let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
    let status = node.wait().expect("node exits");
    let text = lines.join("\n");
    assert!(status.success(), "{text}");
    for want in [
        "first 401",
        "ready",
        "docs web.evil links=0 javascript:alert(document.domain)",
        "docs web.good links=1 https://wiki/Good",
        "button on: on",
        "switched on: off",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "the browser did not say {want:?}:\n{text}"
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("csp ") || l.starts_with("pageerror ")),
        "{text}"
    );
    eventually(DEADLINE, "the lamp off", || {
        let a = answer(
            agent
                .get(&format!("{b}/api/things/web.lamp"))
                .set("Authorization", &format!("Bearer {READ_TOKEN}"))
                .call(),
        );
        a.body.contains("\"on\":false").then_some(())
    });
}
