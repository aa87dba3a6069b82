//! The `thingsbus-broker` binary as users run it.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thingsbus_tests::process::{Process, Stream};
use thingsbus_tests::{ctx, eventually, DEADLINE};

const BIN: &str = env!("CARGO_BIN_EXE_thingsbus-broker");

/// The tests that load the machine (a stuck subscriber, a kill under load, an overload) take
/// turns: run side by side on 2 cores they starve one another and measure each other.
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A broker process on 127.0.0.1 with ephemeral ports, killed on drop; its JSON log lines are
/// kept (and read as they come, so that it never blocks on a full pipe).
struct Proc {
    process: Process,
    directory: String,
    input: String,
    http: Option<String>,
}

impl Proc {
    fn start(extra: &[&str]) -> Proc {
        Proc::start_env(extra, &[])
    }

    fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::launch(Command::new(BIN).envs(env.iter().copied()), extra)
    }

    /// Starts `command` (the broker binary, or a command that runs it with its arguments after
    /// the ones given here) with the test's flags and `extra`.
    fn launch(command: &mut Command, extra: &[&str]) -> Proc {
        let process = Process::build(
            command
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--input-port",
                    "0",
                    "--log-format",
                    "json",
                ])
                .args(extra)
                .env_remove("RUST_LOG"),
        )
        .name("the broker")
        .stdout(Stream::Discard)
        .start();
        let line = process.expect_stderr_line("start-up line", |l| {
            message(l).is_some_and(|m| m == "thingsbus broker running")
        });
        let started: Value = serde_json::from_str(&line).expect("json log line");
        let f = &started["fields"];
        Proc {
            directory: f["directory"].as_str().expect("directory").to_owned(),
            input: f["input"].as_str().expect("input").to_owned(),
            http: f["http"]
                .as_str()
                .filter(|h| *h != "off")
                .map(str::to_owned),
            process,
        }
    }

    fn log_lines_with(&self, message_prefix: &str) -> usize {
        self.process
            .err()
            .all()
            .iter()
            .filter(|l| message(l).is_some_and(|m| m.starts_with(message_prefix)))
            .count()
    }

    fn rss_kib(&self) -> u64 {
        self.process.rss_kib().expect("VmRSS of the broker")
    }
}

/// The message of a JSON log line.
fn message(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    v["fields"]["message"].as_str().map(str::to_owned)
}

#[test]
fn help_explains_every_flag_with_its_default() {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf-8 help");
    for (flag, default) in [
        ("--bind", Some("0.0.0.0")),
        ("--port", Some("7954")),
        ("--input-port", None),
        ("--snapshot-interval", Some("15")),
        ("--live-window", Some("60")),
        ("--forget-after", Some("86400")),
        ("--max-message-bytes", Some("1048576")),
        ("--subscriber-hwm", Some("10000")),
        ("--log-format", Some("text")),
        ("--verbose", None),
        ("--quiet", None),
    ] {
        let at = help
            .find(flag)
            .unwrap_or_else(|| panic!("{flag} missing from --help"));
        if let Some(d) = default {
            let section = &help[at..];
            let end = section[2..].find("\n  -").map_or(section.len(), |e| e + 2);
            assert!(
                section[..end].contains(&format!("[default: {d}]")),
                "{flag} should show its default {d}"
            );
        }
    }
    assert!(
        help.contains("THINGSBUS_PORT"),
        "--help names the environment variables"
    );
}

#[test]
fn bad_flag_is_a_usage_error() {
    let out = Command::new(BIN)
        .arg("--no-such-flag")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");

    let out = Command::new(BIN)
        .args(["--snapshot-interval", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("snapshot-interval"));
}

fn assert_one_line_error(out: &std::process::Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "a refused start must exit 1");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one clear line expected, got: {err}");
    assert!(lines[0].contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn busy_port_is_one_line_and_exit_code_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = Command::new(BIN)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "-q"])
        .output()
        .expect("run");
    assert_one_line_error(&out, "already in use");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&port.to_string()));

    // The UDP input port taken (TCP free): also refused clearly.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let uport = udp.local_addr().expect("addr").port();
    let out = Command::new(BIN)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--input-port",
            &uport.to_string(),
            "-q",
        ])
        .output()
        .expect("run");
    assert_one_line_error(&out, "UDP input");
}

#[test]
fn history_without_http_is_one_line_saying_to_add_it() {
    let dir = std::env::temp_dir().join(format!("thingsbus-cli-history-{}", std::process::id()));
    let out = Command::new(BIN)
        .args(["--bind", "127.0.0.1", "--port", "0", "-q", "--history"])
        .arg(dir.join("history.db"))
        .output()
        .expect("run");
    assert_one_line_error(&out, "add --http");
    let help = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--history <PATH>",
        "--history-resolution",
        "--history-max-bytes",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(
        help.contains("1.35 GB after 90 days"),
        "--help says what a home needs"
    );
}

#[test]
fn environment_sets_flags() {
    let out = Command::new(BIN)
        .env("THINGSBUS_LIVE_WINDOW", "soon")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("soon") && err.contains("live-window"), "{err}");
}

#[test]
fn serves_then_stops_cleanly_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let mut broker = Proc::start(&[]);
        let sub = ctx().socket(zmq::SUB).expect("sub");
        sub.set_subscribe(b"").expect("subscribe");
        sub.connect(&broker.directory).expect("connect sub");
        let input = ctx().socket(zmq::PUB).expect("pub");
        input.connect(&broker.input).expect("connect pub");
        eventually(DEADLINE, "an update through the broker binary", || {
            input
                .send(json!(["cli.test", null, 1, null]).to_string().as_bytes(), 0)
                .expect("send");
            (sub.poll(zmq::POLLIN, 50).expect("poll") > 0).then_some(())
        });
        broker.process.signal(signal);
        let status = broker
            .process
            .wait(Duration::from_secs(1))
            .unwrap_or_else(|| panic!("broker still running 1 s after signal {signal}"));
        assert!(
            status.success(),
            "clean exit after signal {signal}: {status:?}"
        );
    }
}

#[test]
fn stuck_subscriber_costs_bounded_memory_and_nobody_else_loses() {
    let _turn = heavy();
    let broker = Proc::start(&["--subscriber-hwm", "2000"]);
    // A subscriber that connects and never reads, with the smallest queues it can ask for.
    let stuck = ctx().socket(zmq::SUB).expect("sub");
    stuck.set_rcvhwm(1).expect("hwm");
    stuck.set_rcvbuf(4096).expect("rcvbuf");
    stuck.set_subscribe(b"").expect("subscribe");
    stuck.connect(&broker.directory).expect("connect");
    let good = ctx().socket(zmq::SUB).expect("sub");
    good.set_subscribe(b"").expect("subscribe");
    good.set_rcvhwm(100_000).expect("hwm");
    good.connect(&broker.directory).expect("connect");
    let input = ctx().socket(zmq::PUB).expect("pub");
    input.set_sndhwm(100_000).expect("hwm");
    input.connect(&broker.input).expect("connect");
    // Until the warm-up itself comes back: the broker's own thing or its first snapshot could
    // reach the subscriber before the input connection is up, and PUB drops until it is.
    eventually(DEADLINE, "input and subscriber connected", || {
        input
            .send(json!(["warm.up", null, 0, null]).to_string().as_bytes(), 0)
            .expect("send");
        warmed_up(&good)
    });
    while good.poll(zmq::POLLIN, 0).expect("poll") > 0 {
        good.recv_bytes(0).expect("recv");
    }

    let payload = "x".repeat(1000);
    // Bursts stay below the per-subscriber high-water mark, so the good subscriber loses nothing.
    let batches = 200;
    let per_batch = 500;
    let mut received = 0u64;
    let mut rss_after_warmup = 0;
    for batch in 0..batches {
        for i in 0..per_batch {
            let msg = json!(["load.thing", null, {"batch": batch, "i": i, "pad": payload}, null]);
            input.send(msg.to_string().as_bytes(), 0).expect("send");
        }
        // Pace the sender on the good subscriber, which must get every update.
        let mut got = 0;
        while got < per_batch {
            assert!(
                good.poll(zmq::POLLIN, 10_000).expect("poll") > 0,
                "good subscriber starved in batch {batch}"
            );
            let bytes = good.recv_bytes(0).expect("recv");
            let v: Value = serde_json::from_slice(&bytes).expect("json");
            if v["type"] == "thing_update" && v["ns"] == "load.thing" {
                assert_eq!(v["data"]["batch"], batch);
                assert_eq!(v["data"]["i"], got);
                got += 1;
                received += 1;
            }
        }
        if batch == 20 {
            rss_after_warmup = broker.rss_kib();
        }
    }
    let rss_end = broker.rss_kib();
    assert_eq!(received, (batches * per_batch) as u64);
    // About 100 MB went to the stuck subscriber's connection; its queue holds at most
    // subscriber-hwm (2000) messages of about 1 KB, plus kernel buffers.
    assert!(
        rss_end < rss_after_warmup + 30 * 1024,
        "broker memory grew from {rss_after_warmup} KiB to {rss_end} KiB with a stuck subscriber"
    );
}

#[test]
fn bad_input_flood_is_logged_at_a_bounded_rate() {
    let broker = Proc::start(&[]);
    let sub = ctx().socket(zmq::SUB).expect("sub");
    sub.set_subscribe(b"").expect("subscribe");
    sub.connect(&broker.directory).expect("connect sub");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let to = broker.input.trim_start_matches("tcp://").to_owned();
    eventually(DEADLINE, "the subscriber to be connected", || {
        udp.send_to(&[0x94, 0xa1, b'w', 0xc0, 0x01, 0xc0], &to)
            .expect("send");
        (sub.poll(zmq::POLLIN, 50).expect("poll") > 0).then_some(())
    });
    for _ in 0..2000 {
        udp.send_to(b"not msgpack at all", &to).expect("send");
    }
    // A valid update after the flood still comes through...
    udp.send_to(&[0x94, 0xa1, b'z', 0xc0, 0x01, 0xc0], &to)
        .expect("send");
    eventually(DEADLINE, "the update after the flood", || {
        let bytes = sub.recv_bytes(0).expect("recv");
        let v: Value = serde_json::from_slice(&bytes).expect("json");
        (v["ns"] == "z").then_some(())
    });
    // ...and the 2000 bad datagrams (some may be lost in the kernel) made at most 20 log lines.
    let warned = broker.log_lines_with("dropped bad input");
    assert!(
        (1..=20).contains(&warned),
        "{warned} bad-input log lines for a flood"
    );
}

#[test]
fn raises_its_open_file_limit_and_serves_more_subscribers_than_the_soft_limit_it_was_given() {
    // A soft limit of 64 open files (the hard limit as it is): a broker that kept it could not
    // accept the 100 subscribers below, and they would wait without a word.
    let broker = Proc::launch(
        Command::new("prlimit")
            .arg("--nofile=64:")
            .arg("--")
            .arg(BIN),
        &[],
    );
    assert_eq!(broker.log_lines_with("open-file limit raised"), 1);
    let subs: Vec<zmq::Socket> = (0..100).map(|_| subscriber(&broker.directory)).collect();
    let input = ctx().socket(zmq::PUB).expect("pub");
    input.connect(&broker.input).expect("connect pub");
    let mut served = vec![false; subs.len()];
    eventually(DEADLINE, "every subscriber to receive an update", || {
        input
            .send(
                json!(["open.files", null, 1, null]).to_string().as_bytes(),
                0,
            )
            .expect("send");
        std::thread::sleep(Duration::from_millis(50));
        for (sub, served) in subs.iter().zip(served.iter_mut()) {
            while let Ok(bytes) = sub.recv_bytes(zmq::DONTWAIT) {
                let v: Value = serde_json::from_slice(&bytes).expect("json");
                *served |= v["type"] == "thing_update" && v["ns"] == "open.files";
            }
        }
        served.iter().all(|s| *s).then_some(())
    });
}

/// True when a `warm.up` update arrives at `sub` within 50 ms (other messages are skipped).
fn warmed_up(sub: &zmq::Socket) -> Option<()> {
    let end = Instant::now() + Duration::from_millis(50);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if sub
            .poll(zmq::POLLIN, left.as_millis() as i64)
            .expect("poll")
            == 0
        {
            return None;
        }
        let v: Value = serde_json::from_slice(&sub.recv_bytes(0).expect("recv")).expect("json");
        if v["type"] == "thing_update" && v["ns"] == "warm.up" {
            return Some(());
        }
    }
    None
}

/// A SUB socket on `directory` with room for a burst.
fn subscriber(directory: &str) -> zmq::Socket {
    let s = ctx().socket(zmq::SUB).expect("sub");
    s.set_subscribe(b"").expect("subscribe");
    s.set_rcvhwm(1_000_000).expect("hwm");
    s.connect(directory).expect("connect");
    s
}

#[test]
fn kill_9_under_load_loses_nothing_the_journal_had_synced() {
    let _turn = heavy();
    let dir = std::env::temp_dir().join(format!("thingsbus-kill9-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let state = dir.join("state.journal");
    let state_arg = state.to_str().expect("utf-8 path");
    let flags = [
        "--state-file",
        state_arg,
        "--fsync-interval",
        "0.1",
        "--stats-interval",
        "0.1",
    ];
    let mut broker = Proc::start(&flags);
    let sub = subscriber(&broker.directory);
    let input = ctx().socket(zmq::PUB).expect("pub");
    input.set_sndhwm(1_000_000).expect("hwm");
    input.connect(&broker.input).expect("connect");
    eventually(DEADLINE, "input and subscriber connected", || {
        input
            .send(json!(["warm.up", null, 0, null]).to_string().as_bytes(), 0)
            .expect("send");
        warmed_up(&sub)
    });

    // Load: 2,000 things updated over and over, while we watch what the broker published and
    // how far its journal is synced.
    let mut seen: Vec<(String, u64, u64)> = Vec::new();
    let mut synced = 0u64;
    let mut sent = 0u64;
    let started = Instant::now();
    while synced < 20_000 || started.elapsed() < Duration::from_millis(500) {
        assert!(
            started.elapsed() < DEADLINE,
            "journal never synced 20,000 updates"
        );
        for _ in 0..500 {
            let msg = json!([format!("load.t{}", sent % 2000), null, sent, null]);
            input.send(msg.to_string().as_bytes(), 0).expect("send");
            sent += 1;
        }
        while sub.poll(zmq::POLLIN, 0).expect("poll") > 0 {
            let v: Value = serde_json::from_slice(&sub.recv_bytes(0).expect("recv")).expect("json");
            if v["type"] != "thing_update" {
                continue;
            }
            let ns = v["ns"].as_str().unwrap_or_default().to_owned();
            if ns == "thingsbus.broker" {
                synced = synced.max(v["data"]["journal"]["synced_seq"].as_u64().unwrap_or(0));
            } else if ns.starts_with("load.") {
                let seq = v["seq"].as_u64().expect("seq");
                seen.push((ns, seq, v["data"].as_u64().expect("value")));
            }
        }
    }
    // Mid-load, no warning: SIGKILL.
    broker.process.kill();
    drop(broker);

    let restarted = Proc::start(&[&flags[..], &["--snapshot-interval", "0.3"]].concat());
    let sub = subscriber(&restarted.directory);
    // A whole periodic snapshot: from a chunk 0 to its last chunk.
    let mut restored: std::collections::HashMap<String, (u64, u64)> = Default::default();
    let mut started_snapshot = false;
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < end,
            "no complete snapshot after the restart"
        );
        if sub.poll(zmq::POLLIN, 100).expect("poll") == 0 {
            continue;
        }
        let v: Value = serde_json::from_slice(&sub.recv_bytes(0).expect("recv")).expect("json");
        if v["type"] != "thing_snapshot" {
            continue;
        }
        started_snapshot |= v["chunk"] == 0;
        if !started_snapshot {
            continue;
        }
        for (ns, e) in v["data"].as_object().expect("data") {
            restored.insert(
                ns.clone(),
                (
                    e["seq"].as_u64().unwrap_or(0),
                    e["data"].as_u64().unwrap_or(0),
                ),
            );
        }
        if v["last"] == true {
            break;
        }
    }
    // Per thing, the last value published at or before the last synced seq we saw: the
    // journal had it on disk when the broker died, so it (or something newer) must be back.
    let mut latest: std::collections::HashMap<String, (u64, u64)> = Default::default();
    for (ns, seq, value) in seen.into_iter().filter(|(_, seq, _)| *seq <= synced) {
        latest.insert(ns, (seq, value));
    }
    let mut checked = 0;
    for (ns, (seq, value)) in &latest {
        let (rseq, rvalue) = restored
            .get(ns)
            .unwrap_or_else(|| panic!("{ns} (seq {seq} <= synced {synced}) lost"));
        assert!(
            *rseq >= *seq,
            "{ns}: restored seq {rseq} older than synced {seq}"
        );
        if rseq == seq {
            assert_eq!(rvalue, value, "{ns}");
        }
        checked += 1;
    }
    assert!(checked > 1000, "checked only {checked} things");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn overload_keeps_it_serving_with_bounded_memory_and_every_drop_counted() {
    let _turn = heavy();
    let broker = Proc::start(&["--stats-interval", "0.2"]);
    // Only the markers and the broker's own thing, filtered at the broker's side.
    let sub = ctx().socket(zmq::SUB).expect("sub");
    sub.set_subscribe(br#"{"type":"thing_update","ns":"marker."#)
        .expect("subscribe");
    sub.set_subscribe(br#"{"type":"thing_update","ns":"thingsbus.broker""#)
        .expect("subscribe");
    sub.connect(&broker.directory).expect("connect");
    let input = ctx().socket(zmq::PUB).expect("pub");
    input.connect(&broker.input).expect("connect");
    let recv = |timeout_ms: i64| -> Option<Value> {
        (sub.poll(zmq::POLLIN, timeout_ms).expect("poll") > 0)
            .then(|| serde_json::from_slice(&sub.recv_bytes(0).expect("recv")).expect("json"))
    };
    eventually(DEADLINE, "the subscriber to be connected", || {
        input
            .send(
                json!(["marker.warmup", null, 0, null])
                    .to_string()
                    .as_bytes(),
                0,
            )
            .expect("send");
        recv(50).filter(|v| v["ns"] == "marker.warmup")
    });
    // Counts before the flood: the first broker thing after the warm-up's echo covers it all.
    let count = |v: &Value| {
        (
            v["data"]["accepted"].as_u64().unwrap_or(0),
            v["data"]["udp_drops"].as_u64().unwrap_or(0),
        )
    };
    let base = eventually(DEADLINE, "the broker's counters", || {
        recv(300)
            .filter(|v| v["ns"] == "thingsbus.broker")
            .map(|v| count(&v))
    });
    let mut markers_sent = 0u64;
    let rss_start = broker.rss_kib();
    let udp_to: std::net::SocketAddr = broker
        .input
        .trim_start_matches("tcp://")
        .parse()
        .expect("input address");

    // Datagrams that cost the broker far more to take in (500 floats to turn into JSON) than the
    // flooders to send: the socket buffer overflows and the kernel drops.
    let payload: Vec<f64> = (0..500).map(|i| f64::from(i) * 1.000_001).collect();
    let datagram = rmp_serde::to_vec(&json!(["flood.t", null, payload, null])).expect("msgpack");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let datagram = datagram.clone();
            std::thread::spawn(move || {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 2_000_000 {
                    if s.send_to(&datagram, udp_to).is_ok() {
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    let mut markers_seen = 0;
    let flood_started = Instant::now();
    while flood_started.elapsed() < Duration::from_secs(2) {
        input
            .send(
                json!([format!("marker.m{markers_sent}"), null, 1, null])
                    .to_string()
                    .as_bytes(),
                0,
            )
            .expect("send");
        markers_sent += 1;
        let end = Instant::now() + Duration::from_millis(50);
        while let Some(v) = recv(end.saturating_duration_since(Instant::now()).as_millis() as i64) {
            if v["ns"].as_str().is_some_and(|n| n.starts_with("marker.m")) {
                markers_seen += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let udp_sent: u64 = flooders
        .into_iter()
        .map(|t| t.join().expect("flooder"))
        .sum();
    let rss_end = broker.rss_kib();
    assert!(
        markers_seen * 2 >= markers_sent,
        "subscribers kept being served: {markers_seen} of {markers_sent} markers seen during the flood"
    );
    assert!(
        rss_end < rss_start + 64 * 1024,
        "memory grew from {rss_start} KiB to {rss_end} KiB under overload"
    );
    // Every datagram is either taken in or counted as dropped by the kernel.
    let mut last = (0, 0);
    let end = Instant::now() + DEADLINE;
    let (accepted, drops) = loop {
        assert!(
            Instant::now() < end,
            "counts never added up: {udp_sent} datagrams + {markers_sent} markers sent; \
             last seen accepted {} + kernel drops {}",
            last.0,
            last.1
        );
        let Some(v) = recv(300) else { continue };
        if v["ns"] != "thingsbus.broker" {
            continue;
        }
        let (accepted, drops) = count(&v);
        last = (accepted - base.0, drops - base.1);
        let (accepted, drops) = last;
        if accepted + drops == udp_sent + markers_sent {
            break last;
        }
    };
    assert!(
        drops > 0,
        "the broker was not overloaded: {accepted} accepted, no drops"
    );
    eprintln!("overload: {udp_sent} datagrams sent, {drops} dropped by the kernel, {accepted} accepted, RSS {rss_start} -> {rss_end} KiB");
}

#[test]
fn tells_systemd_when_ready_and_serves_http_from_flags() {
    let dir = std::env::temp_dir().join(format!("thingsbus-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let notify = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let broker = Proc::start_env(
        &["--http", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", path.to_str().expect("utf-8"))],
    );
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY from the broker");
    assert_eq!(&buf[..n], b"READY=1");
    // The start-up line names the HTTP address; /healthz answers there.
    let http = broker
        .http
        .clone()
        .expect("http address in the start-up line");
    let addr = http
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    use std::io::{Read, Write};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok\n"), "{response}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_broker_thread_that_dies_ends_the_process_with_exit_code_1_and_one_line() {
    // Debug builds only (the tests' build): THINGSBUS_FAULT makes the named thread panic.
    let mut broker = Proc::start_env(&[], &[("THINGSBUS_FAULT", "thingsbus-snapshots=panic")]);
    let status = broker
        .process
        .wait(DEADLINE)
        .expect("the broker stops by itself");
    assert_eq!(status.code(), Some(1), "{}", broker.process.stderr());
    let stderr = broker.process.stderr();
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "thingsbus-broker: error: the broker stopped because thingsbus-snapshots panicked: fault injected",
        "{stderr}"
    );
    assert_eq!(
        broker.log_lines_with("a broker thread ended"),
        1,
        "{stderr}"
    );
}

/// Sends `ns` through `input`, then a probe, and says whether `ns` reached `sub` before the
/// probe did (one connection's messages are handled in order).
fn passes(input: &zmq::Socket, sub: &zmq::Socket, ns: &str, probe: &str) -> bool {
    passes_within(input, sub, (ns, probe), DEADLINE)
        .unwrap_or_else(|| panic!("the probe {probe} never came back"))
}

fn passes_within(
    input: &zmq::Socket,
    sub: &zmq::Socket,
    (ns, probe): (&str, &str),
    wait: Duration,
) -> Option<bool> {
    input
        .send(json!([ns, null, 1, null]).to_string().as_bytes(), 0)
        .expect("send");
    input
        .send(json!([probe, null, 1, null]).to_string().as_bytes(), 0)
        .expect("send");
    let end = Instant::now() + wait;
    while Instant::now() < end {
        if sub.poll(zmq::POLLIN, 20).expect("poll") == 0 {
            continue;
        }
        let v: Value = serde_json::from_slice(&sub.recv_bytes(0).expect("recv")).expect("json");
        if v["ns"] == ns {
            return Some(true);
        }
        if v["ns"] == probe {
            return Some(false);
        }
    }
    None
}

#[test]
fn sighup_reads_the_auth_file_again_and_one_with_a_mistake_keeps_the_rights() {
    let dir = std::env::temp_dir().join(format!("thingsbus-cli-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("auth.toml");
    let rights = |publish: &str| {
        let text = format!("[anonymous]\nread = true\npublish = [\"{publish}\", \"probe\"]\n");
        std::fs::write(&path, text).expect("write the auth file");
    };
    rights("a");
    let broker = Proc::start(&["--auth-file", path.to_str().expect("utf-8 path")]);
    let sub = subscriber(&broker.directory);
    let input = ctx().socket(zmq::PUB).expect("pub");
    input.connect(&broker.input).expect("connect");
    eventually(DEADLINE, "the input and the subscriber connected", || {
        passes_within(
            &input,
            &sub,
            ("a.warmup", "probe.p0"),
            Duration::from_millis(100),
        )
    });
    // Late copies of the warm-up are harmless: each check below waits for its own probe.
    assert!(!passes(&input, &sub, "b.x", "probe.p1"), "b is not given");

    std::fs::write(&path, "[anonymous\n").expect("write");
    broker.process.signal("HUP");
    let line = broker.process.wait_stderr("the rights in force stay");
    assert!(
        line.contains("auth.toml"),
        "the error names the file: {line}"
    );
    assert!(
        passes(&input, &sub, "a.y", "probe.p2"),
        "the old rights stay"
    );

    rights("b");
    broker.process.signal("HUP");
    broker.process.wait_stderr("auth file read again");
    assert!(passes(&input, &sub, "b.x", "probe.p3"), "b is given now");
    assert!(
        !passes(&input, &sub, "a.z", "probe.p4"),
        "a is not any more"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn listening_beyond_loopback_without_an_auth_file_says_so_once() {
    let warning = "no --auth-file";
    for (bind, warned) in [("0.0.0.0", true), ("127.0.0.1", false)] {
        let mut process = Process::build(
            Command::new(BIN)
                .args(["--bind", bind, "--port", "0", "--input-port", "0"])
                .env_remove("RUST_LOG"),
        )
        .name("the broker")
        .stdout(Stream::Discard)
        .start();
        process.wait_stderr("thingsbus broker running");
        process.signal("TERM");
        process.wait(DEADLINE).expect("the broker stops on SIGTERM");
        let said = process.stderr().matches(warning).count();
        assert_eq!(
            said,
            usize::from(warned),
            "--bind {bind}: {}",
            process.stderr()
        );
    }
}

#[test]
fn curve_secret_file_gives_the_server_key_at_start_and_a_missing_one_says_how_to_make_it() {
    let dir = std::env::temp_dir().join(format!("thingsbus-cli-curve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let missing = dir.join("missing.key");
    let out = Command::new(BIN)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "-q",
            "--curve-secret-file",
        ])
        .arg(&missing)
        .output()
        .expect("run");
    assert_one_line_error(&out, "thingsbus keygen --secret-file");

    let keys = thingsbus_protocol::keys::KeyPair::generate().expect("keys");
    let path = dir.join("broker.key");
    std::fs::write(&path, format!("{}\n", keys.secret.to_z85())).expect("write");
    let mut process = Process::build(
        Command::new(BIN)
            .args(["--bind", "127.0.0.1", "--port", "0", "--input-port", "0"])
            .arg("--curve-secret-file")
            .arg(&path)
            .env_remove("RUST_LOG"),
    )
    .name("the broker")
    .stdout(Stream::Discard)
    .start();
    process.wait_stderr("thingsbus broker running");
    assert!(
        process
            .stderr()
            .contains(&format!("curve=on, server key {}", keys.public)),
        "{}",
        process.stderr()
    );
    process.signal("TERM");
    process.wait(DEADLINE).expect("the broker stops on SIGTERM");
    std::fs::remove_dir_all(&dir).ok();
}
