//! The examples, run as users run them, against a real broker found through a real DNS server.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use thingsbus_broker::Config;
use thingsbus_tests::{dns_for, eventually, spawn_broker_on_port_pair, DEADLINE};

/// `cargo test` builds the examples next to the test binaries' folder.
fn example(name: &str) -> Command {
    let mut dir: PathBuf = std::env::current_exe().expect("test exe path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built (cargo test builds examples)",
        path.display()
    );
    let mut c = Command::new(path);
    c.env_remove("RUST_LOG");
    c
}

fn quick(c: &mut Config) {
    c.snapshot_interval = Duration::from_millis(200);
}

#[test]
fn send_then_query_then_watch_through_srv() {
    let broker = spawn_broker_on_port_pair(quick);
    let dns = dns_for(&broker);
    let ns_arg = dns.addr().to_string();
    let find = ["--zone", "example.org", "--nameserver", ns_arg.as_str()];

    let mut watch = example("print_all_events")
        .args(find)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start print_all_events");
    let lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });

    let out = example("send_update")
        .args(find)
        .args(["shop.door", r#"{"open": true}"#])
        .output()
        .expect("run send_update");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = example("udp_msgpack")
        .args([
            &broker.endpoints().udp.to_string(),
            "bottlekid.prototype",
            r#"{"loops": 154}"#,
        ])
        .output()
        .expect("run udp_msgpack");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = example("query_thing")
        .args(find)
        .args(["shop.door", "--timeout", "10"])
        .output()
        .expect("run query_thing");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let (age, data) = text.trim().split_once(' ').expect("<age> <data>");
    let age: f64 = age.parse().expect("age is a number");
    assert!((0.0..30.0).contains(&age), "{text}");
    assert_eq!(data, r#"{"open":true}"#);

    let out = example("query_thing")
        .args([
            "--url",
            &broker.endpoints().directory,
            "no.such.thing",
            "--timeout",
            "5",
        ])
        .output()
        .expect("run query_thing");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown thing"));

    // The watcher prints the door (as a snapshot at least) and the board's datagram.
    let mut seen_door = false;
    let mut seen_board = false;
    eventually(DEADLINE, "print_all_events to show both things", || {
        while let Ok(line) = rx.try_recv() {
            let parts: Vec<&str> = line.splitn(3, ' ').collect();
            assert_eq!(parts.len(), 3, "{line}");
            assert!(parts[1].parse::<f64>().is_ok(), "{line}");
            seen_door |= parts[0] == "shop.door" && parts[2].starts_with(r#"{"open":true}"#);
            seen_board |= parts[0] == "bottlekid.prototype";
        }
        (seen_door && seen_board).then_some(())
    });
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn the_led_obeys_commands_and_publishes_its_state() {
    let broker = spawn_broker_on_port_pair(quick);
    let mut led = example("led_adaptor")
        .args(["--url", &broker.endpoints().directory, "--ns", "demo.led"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start led_adaptor");
    let lines = BufReader::new(led.stdout.take().expect("stdout")).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let client = thingsbus_client::Client::builder()
        .url(&broker.endpoints().directory)
        .connect_blocking()
        .expect("client");
    let mut sub = client
        .subscribe("demo.led", thingsbus_client::SubscribeOptions::new())
        .expect("subscribe");
    // Until the LED has registered, commands find no route.
    let reply = eventually(DEADLINE, "the LED to answer", || {
        client
            .command_blocking(
                "demo.led",
                &serde_json::json!({"on": true}),
                Duration::from_secs(2),
            )
            .ok()
    });
    assert_eq!(reply, serde_json::json!({"on": true}));
    // Its new state is published as an ordinary update.
    eventually(DEADLINE, "the published state", || {
        std::iter::from_fn(|| sub.try_next())
            .filter_map(Result::ok)
            .find(|e| e.thing.value() == serde_json::json!({"on": true}))
    });
    eventually(DEADLINE, "the LED's own line", || {
        rx.try_iter().find(|l| l.contains("led is now on"))
    });
    match client.command_blocking(
        "demo.led",
        &serde_json::json!("dance"),
        Duration::from_secs(2),
    ) {
        Err(thingsbus_client::CommandError::Refused { error, .. }) => {
            assert!(error.contains("expected"), "{error}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let _ = led.kill();
    let _ = led.wait();
}

#[test]
fn udp_signed_makes_a_secret_and_signs_with_it() {
    use thingsbus_protocol::signed::{self, BoardSecret, Direction};
    let run = |args: &[&str]| {
        example("udp_signed")
            .env_remove("THINGSBUS_BOARD_SECRET")
            .env_remove("THINGSBUS_BOARD_SECRET_FILE")
            .args(args)
            .output()
            .expect("run udp_signed")
    };
    let out = run(&["--new-secret"]);
    assert!(out.status.success());
    let hex = String::from_utf8(out.stdout).expect("utf-8");
    let secret = BoardSecret::from_hex(&hex).expect("64 hex digits");
    let file = std::env::temp_dir().join(format!("udp_signed-{}.secret", std::process::id()));
    std::fs::write(&file, &hex).expect("write the secret");

    let input = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    input.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let to = input.local_addr().expect("addr").to_string();
    let path = file.to_string_lossy().into_owned();
    let args = [
        "--secret-file",
        &path,
        "--boot",
        "5",
        &to,
        "porch",
        "porch.door",
        r#"{"open":true}"#,
    ];
    let out = run(&args);
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0; 2048];
    let (n, _) = input.recv_from(&mut buf).expect("a datagram");
    let s = signed::open(&buf[..n], Direction::ToBroker, |name| {
        (name == "porch").then(|| secret.clone())
    })
    .expect("signed with the secret it made");
    assert_eq!((s.boot, s.counter), (5, 0));
    let u = thingsbus_protocol::codec::decode_msgpack_input(s.payload, &Default::default())
        .expect("an update inside");
    assert_eq!(
        (u.ns.as_str(), u.data.as_ref()),
        ("porch.door", r#"{"open":true}"#)
    );

    // No secret: one line saying where to put it.
    let out = run(&[&to, "porch", "porch.door", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("THINGSBUS_BOARD_SECRET"), "{err}");
}

#[test]
fn every_example_has_help() {
    for name in [
        "send_update",
        "print_all_events",
        "query_thing",
        "udp_msgpack",
        "udp_signed",
        "led_adaptor",
    ] {
        let out = example(name).arg("--help").output().expect("run --help");
        assert!(out.status.success(), "{name} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{name}"
        );
    }
    let out = example("send_update")
        .arg("a.b")
        .arg("1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "a target is required");
}
