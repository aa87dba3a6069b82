//! The `thingsbus` command as a binary, against a real broker and a real DNS server.

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{run, tool, Output, Proc, DEADLINE};
use serde_json::{json, Value};
use thingsbus_broker::{Broker, Config};
use thingsbus_tests::dns::{DnsServer, SrvRecord};
use thingsbus_tests::{dns_for, dns_with_txt, eventually, now, spawn_broker_on_port_pair};

fn quiet(c: &mut Config) {
    c.stats_interval = Duration::ZERO;
}

/// `thingsbus -u <broker's directory URL> ARGS...`, run to completion.
fn tb(broker: &Broker, args: &[&str]) -> Output {
    run(tool("thingsbus")
        .args(["-u", &broker.endpoints().directory])
        .args(args))
}

fn ok(out: &Output) -> &str {
    assert_eq!(
        out.code(),
        0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    &out.stdout
}

/// A tcp:// URL where nothing listens (a port just freed).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("tcp://127.0.0.1:{}", l.local_addr().expect("addr").port())
}

fn wait_accepted(broker: &Broker, n: u64) {
    eventually(DEADLINE, &format!("{n} updates accepted"), || {
        (broker.stats().accepted.load(Ordering::Relaxed) >= n).then_some(())
    });
}

#[test]
fn send_then_get_and_ls_in_human_and_json_form() {
    let broker = spawn_broker_on_port_pair(quiet);
    let ts = (now() - 5.0).floor() + 0.25;
    ok(&tb(
        &broker,
        &[
            "send",
            "shop.door",
            r#"{"open": true}"#,
            "-d",
            "https://wiki/Door",
        ],
    ));
    ok(&tb(
        &broker,
        &[
            "send",
            "shop.temp",
            "21.5",
            "--udp",
            "--ts",
            &ts.to_string(),
        ],
    ));
    ok(&tb(
        &broker,
        &[
            "send",
            "shop.shopbot.spacemon",
            r#"{"busy": 12.0, "light": 31.8}"#,
        ],
    ));
    wait_accepted(&broker, 3);

    let get = tb(&broker, &["get", "shop.door"]);
    let text = ok(&get);
    for needle in [
        "ns     shop.door",
        "\"open\": true",
        "docs   https://wiki/Door",
        "age    ",
    ] {
        assert!(text.contains(needle), "get lacks {needle:?}:\n{text}");
    }
    assert!(!text.contains("stale"), "{text}");

    let v: Value = serde_json::from_str(ok(&tb(&broker, &["get", "shop.temp", "--json"])))
        .expect("get --json prints JSON");
    assert_eq!(v["ns"], "shop.temp");
    assert_eq!(v["data"], json!(21.5));
    assert_eq!(v["ts"], json!(ts));
    assert_eq!(v["stale"], json!(false));
    assert!(v["seq"].is_u64(), "{v}");
    let age = v["age"].as_f64().expect("age");
    assert!((4.0..60.0).contains(&age), "age {age}");
    let door: Value =
        serde_json::from_str(ok(&tb(&broker, &["get", "shop.door", "--json"]))).expect("JSON");
    assert_eq!(door["documentation_url"], "https://wiki/Door");

    let prefix = tb(&broker, &["get", "shop"]);
    assert_eq!(prefix.code(), 1);
    assert!(
        prefix.stderr.contains("no value of its own"),
        "{}",
        prefix.stderr
    );
    let unknown = tb(&broker, &["get", "shop.window"]);
    assert_eq!(unknown.code(), 1);
    assert!(
        unknown.stderr.contains("no such thing"),
        "{}",
        unknown.stderr
    );
    assert!(unknown.stdout.is_empty());
    let invalid = tb(&broker, &["get", "Shop"]);
    assert_eq!(invalid.code(), 2);
    assert!(
        invalid.stderr.contains("invalid namespace"),
        "{}",
        invalid.stderr
    );

    let all: Value = serde_json::from_str(ok(&tb(&broker, &["ls", "--json"]))).expect("ls --json");
    let all = all.as_object().expect("an object");
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        ["shop.door", "shop.shopbot.spacemon", "shop.temp"]
    );
    assert_eq!(all["shop.door"]["data"], json!({"open": true}));
    assert_eq!(
        all["shop.shopbot.spacemon"]["data"],
        json!({"busy": 12.0, "light": 31.8})
    );
    assert_eq!(all["shop.temp"]["ts"], json!(ts));
    assert_eq!(all["shop.temp"]["stale"], json!(false));

    let table = tb(&broker, &["ls"]);
    let lines: Vec<&str> = ok(&table).lines().collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].starts_with("NAMESPACE"), "{lines:?}");
    assert!(lines[1].starts_with("shop.door ") && lines[1].ends_with(r#"{"open":true}"#));
    assert!(
        lines[2].starts_with("shop.shopbot.spacemon ")
            && lines[2].ends_with(r#"{"busy":12.0,"light":31.8}"#)
    );
    assert!(lines[3].starts_with("shop.temp ") && lines[3].ends_with("21.5"));
    // Aligned: every value starts in the VALUE column.
    let col = lines[0].find("VALUE").expect("VALUE header");
    assert_eq!(lines[1].find('{'), Some(col), "{lines:?}");
    assert_eq!(lines[3].find("21.5"), Some(col), "{lines:?}");

    let sub = ok(&tb(&broker, &["ls", "shop.shopbot"])).to_owned();
    assert_eq!(sub.lines().count(), 2, "{sub}");
    assert!(sub.contains("shop.shopbot.spacemon"));
    assert_eq!(ok(&tb(&broker, &["ls", "garden"])).trim(), "(no things)");
    assert_eq!(ok(&tb(&broker, &["ls", "garden", "--json"])).trim(), "{}");
}

#[test]
fn ls_and_get_show_things_that_stopped_reporting_as_stale() {
    let broker = spawn_broker_on_port_pair(|c| {
        quiet(c);
        c.live_window = Duration::from_secs(1);
    });
    ok(&tb(
        &broker,
        &[
            "send",
            "old.sensor",
            "1",
            "--ts",
            &(now() - 30.0).to_string(),
        ],
    ));
    ok(&tb(&broker, &["send", "new.sensor", "2"]));
    wait_accepted(&broker, 2);
    let v: Value = serde_json::from_str(ok(&tb(&broker, &["ls", "--json"]))).expect("JSON");
    assert_eq!(v["old.sensor"]["stale"], json!(true), "{v}");
    assert_eq!(v["old.sensor"]["data"], json!(1));
    // A fresh one may be in the window still, or just out of it on a slow machine; it is there.
    assert_eq!(v["new.sensor"]["data"], json!(2));
    let table = ok(&tb(&broker, &["ls", "old"])).to_owned();
    assert!(table.contains("[stale] 1"), "{table}");
    let get = ok(&tb(&broker, &["get", "old.sensor"])).to_owned();
    assert!(get.contains("stale  yes"), "{get}");
}

/// Sends `shop.ping` until `watch` prints a line for it: the watcher is then connected.
fn until_watching(broker: &Broker, watch: &Proc) {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        ok(&tb(broker, &["send", "shop.ping", "0"]));
        while let Some(l) = watch.line(Duration::from_millis(300)) {
            if l.contains("shop.ping") {
                return;
            }
        }
    }
    panic!(
        "watch printed nothing for shop.ping; stderr: {}",
        watch.stderr()
    );
}

fn next_line_with(watch: &Proc, needle: &str) -> String {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if let Some(l) = watch.line(Duration::from_millis(100)) {
            if l.contains(needle) {
                return l;
            }
        }
    }
    panic!("no line with {needle:?}; stderr: {}", watch.stderr());
}

#[test]
fn watch_prints_snapshots_updates_and_expiries_until_a_signal() {
    let broker = spawn_broker_on_port_pair(|c| {
        quiet(c);
        c.live_window = Duration::from_secs(3);
    });
    ok(&tb(
        &broker,
        &[
            "send",
            "shop.old",
            r#"{"v": 1}"#,
            "--ts",
            &(now() - 1.0).to_string(),
        ],
    ));
    ok(&tb(&broker, &["send", "garden.rain", "0.4"]));
    wait_accepted(&broker, 2);

    let mut watch = Proc::spawn(
        tool("thingsbus")
            .args(["-u", &broker.endpoints().directory])
            .args(["watch", "shop", "--tree", "--snapshots", "--json"]),
    );
    // The directory as it was, first: shop.old replayed from the snapshot (garden is elsewhere).
    let first: Value =
        serde_json::from_str(&next_line_with(&watch, "shop.old")).expect("JSON line");
    assert_eq!(first["event"], "snapshot");
    assert_eq!(first["data"], json!({"v": 1}));
    until_watching(&broker, &watch);

    ok(&tb(
        &broker,
        &[
            "send",
            "shop.door",
            r#"{"open": true}"#,
            "-d",
            "https://wiki/Door",
        ],
    ));
    let update: Value = serde_json::from_str(&next_line_with(&watch, "shop.door")).expect("JSON");
    assert_eq!(update["event"], "update");
    assert_eq!(update["data"], json!({"open": true}));
    assert_eq!(update["documentation_url"], "https://wiki/Door");
    assert!(update["seq"].is_u64());
    ok(&tb(&broker, &["send", "garden.rain", "0.5"]));

    // shop.old leaves the 3 s window about 2 s from its send.
    let expired: Value =
        serde_json::from_str(&next_line_with(&watch, r#""event":"expired""#)).expect("JSON");
    assert_eq!(expired["ns"], "shop.old");
    watch.signal("INT");
    let status = watch.wait(DEADLINE).expect("watch stops on SIGINT");
    assert!(status.success(), "{status:?}: {}", watch.stderr());
    let rest = watch.all_stdout();
    assert!(
        !rest.contains("garden"),
        "a thing outside the subtree was printed: {rest}"
    );
}

#[test]
fn watch_in_human_form_follows_one_thing() {
    let broker = spawn_broker_on_port_pair(quiet);
    let mut watch = Proc::spawn(
        tool("thingsbus")
            .args(["-u", &broker.endpoints().directory])
            .args(["watch", "shop.ping"]),
    );
    until_watching(&broker, &watch);
    ok(&tb(&broker, &["send", "shop.ping.child", "1"]));
    ok(&tb(&broker, &["send", "shop.ping", r#"{"n": 42}"#]));
    let line = next_line_with(&watch, "42");
    // `HH:MM:SS.mmm  update    shop.ping  {"n":42}`
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.len(), 4, "{line}");
    assert_eq!(parts[0].len(), "09:12:03.123".len(), "{line}");
    assert_eq!(&parts[1..], ["update", "shop.ping", r#"{"n":42}"#]);
    watch.signal("TERM");
    let status = watch.wait(DEADLINE).expect("watch stops on SIGTERM");
    assert!(status.success());
    assert!(
        !watch.all_stdout().contains("child"),
        "without --tree no child events"
    );
}

#[test]
fn send_through_srv_over_zmq_and_udp() {
    let broker = spawn_broker_on_port_pair(quiet);
    let dns = dns_for(&broker);
    let ns = dns.addr().to_string();
    let find = ["--zone", "example.org", "--nameserver", ns.as_str()];
    ok(&run(tool("thingsbus")
        .args(find)
        .args(["send", "lab.a", "1"])));
    ok(&run(tool("thingsbus")
        .args(find)
        .args(["send", "lab.b", "2", "--udp"])));
    wait_accepted(&broker, 2);
    let v: Value = serde_json::from_str(ok(&run(tool("thingsbus")
        .args(find)
        .args(["ls", "lab", "--json"]))))
    .expect("JSON");
    assert_eq!(v, json!({"lab.a": v["lab.a"], "lab.b": v["lab.b"]}));
    assert_eq!(v["lab.a"]["data"], json!(1));
    assert_eq!(v["lab.b"]["data"], json!(2));
}

#[test]
fn srv_reports_records_in_rfc_2782_order_and_checks_the_broker() {
    let broker = spawn_broker_on_port_pair(quiet);
    let port = broker.endpoints().directory_port;
    // A dead backup at priority 10 and the live broker at priority 0: the live one comes first.
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dns = DnsServer::start(
        "example.org",
        &[
            SrvRecord {
                name: "_thingsbus._tcp.example.org".into(),
                priority: 10,
                weight: 5,
                port: dead_port,
                target: "backup.example.org.".into(),
            },
            SrvRecord {
                name: "_thingsbus._tcp.example.org".into(),
                priority: 0,
                weight: 0,
                port,
                target: "broker.example.org.".into(),
            },
            SrvRecord {
                name: "_thingsbus._tcp.dead.example.org".into(),
                priority: 0,
                weight: 0,
                port: dead_port,
                target: "backup.example.org.".into(),
            },
        ],
        &[
            ("broker.example.org", Ipv4Addr::LOCALHOST),
            ("backup.example.org", Ipv4Addr::LOCALHOST),
        ],
    );
    let ns = dns.addr().to_string();
    let srv = |zone: &str, json: bool| {
        let mut c = tool("thingsbus");
        c.args(["--nameserver", &ns, "--timeout", "2", "srv", zone]);
        if json {
            c.arg("--json");
        }
        run(&mut c)
    };

    let out = srv("example.org", false);
    let text = ok(&out);
    let broker_line = text.find("broker.example.org").expect("live broker listed");
    let backup_line = text.find("backup.example.org").expect("backup listed");
    assert!(broker_line < backup_line, "priority 0 first:\n{text}");
    assert!(
        text.contains(&format!("would use broker.example.org:{port}")),
        "{text}"
    );
    for what in ["directory", "input", "snapshot"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("no {what} line:\n{text}"));
        assert!(line.ends_with("answers"), "{line}");
    }

    let v: Value = serde_json::from_str(ok(&srv("example.org", true))).expect("JSON");
    assert_eq!(v["name"], "_thingsbus._tcp.example.org");
    assert_eq!(v["records"][0]["target"], "broker.example.org");
    assert_eq!(v["records"][0]["port"], json!(port));
    assert_eq!(v["records"][0]["address"], "127.0.0.1");
    assert_eq!(v["records"][1]["priority"], json!(10));
    assert_eq!(
        v["chosen"]["input_url"],
        format!("tcp://127.0.0.1:{}", port + 1)
    );
    assert_eq!(v["checks"]["directory"]["ok"], json!(true));
    assert_eq!(v["checks"]["input"]["ok"], json!(true));
    assert_eq!(v["ok"], json!(true));

    let dead = srv("dead.example.org", false);
    assert_eq!(dead.code(), 1, "{dead:?}");
    assert!(dead.stdout.contains("NO ANSWER"), "{}", dead.stdout);
    assert!(
        dead.stdout.contains("connection refused"),
        "{}",
        dead.stdout
    );
    let dead: Value = serde_json::from_str(&srv("dead.example.org", true).stdout).expect("JSON");
    assert_eq!(dead["ok"], json!(false));
    assert_eq!(dead["checks"]["directory"]["ok"], json!(false));

    let missing = srv("nowhere.example.org", false);
    assert_eq!(missing.code(), 1);
    assert!(
        missing.stdout.contains("does not exist"),
        "{}",
        missing.stdout
    );
}

#[test]
fn mistakes_get_one_clear_line_and_a_distinct_exit_code() {
    let dead = dead_url();
    let cases: &[(&[&str], i32, &str)] = &[
        (&[], 2, "Usage"),
        (&["send", "a.b", "not json"], 2, "a text needs its quotes"),
        (
            &["send", "a.b", "1", "--ts", "nan"],
            2,
            "seconds since 1970",
        ),
        (
            &["-u", &dead, "--timeout", "0.5", "ls"],
            2,
            "is the broker running",
        ),
        (
            &["-u", &dead, "--timeout", "0.5", "get", "a"],
            2,
            "is the broker running",
        ),
        (
            &["-u", &dead, "--timeout", "0.5", "send", "a.b", "1"],
            1,
            "not delivered",
        ),
        (
            &["-u", "tcp://nohost", "send", "a.b", "1"],
            2,
            "--input-url",
        ),
        (&["srv"], 2, "which zone"),
        (
            &["-z", "example.org", "-u", &dead, "ls"],
            2,
            "cannot be used with",
        ),
    ];
    for (args, code, needle) in cases {
        let out = run(tool("thingsbus").args(*args));
        assert_eq!(out.code(), *code, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(needle) || (args.is_empty() && out.stdout.contains(needle)),
            "{args:?}: stderr lacks {needle:?}:\n{}",
            out.stderr
        );
    }
    let help = run(tool("thingsbus").arg("--help"));
    for needle in [
        "get",
        "ls",
        "watch",
        "send",
        "srv",
        "--zone",
        "--url",
        "--nameserver",
        "Exit codes",
    ] {
        assert!(help.stdout.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn call_prints_the_reply_and_exit_codes_tell_outcomes_apart() {
    let broker = spawn_broker_on_port_pair(quiet);
    let adaptor = thingsbus_adaptor::Adaptor::builder("demo")
        .url(&broker.endpoints().input)
        .connect_blocking()
        .expect("adaptor");
    adaptor
        .serve(
            "led",
            |_, data, _| async move { Ok(json!({"on": data["on"]})) },
        )
        .expect("serve");
    adaptor
        .serve("broken", |_, _, _| async {
            Err("led is broken".to_owned())
        })
        .expect("serve");
    adaptor
        .serve("slow", |_, _, _| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(json!(null))
        })
        .expect("serve");
    eventually(DEADLINE, "the registrations", || {
        adaptor.is_serving().then_some(())
    });
    // The three prefixes go in one serve, but is_serving may have seen an earlier answer.
    eventually(DEADLINE, "all three served", || {
        (broker
            .stats()
            .commands
            .registrations
            .load(Ordering::Relaxed)
            >= 3)
            .then_some(())
    });

    let out = tb(&broker, &["call", "demo.led", r#"{"on": true}"#]);
    assert_eq!(ok(&out).trim(), r#"{"on":true}"#);
    let cases: &[(&[&str], i32, &str)] = &[
        (&["call", "nowhere", "1"], 3, "no_route"),
        (
            &["call", "demo.slow", "1", "--timeout", "300ms"],
            4,
            "timeout",
        ),
        (&["call", "demo.broken", "1"], 1, "led is broken"),
        (&["call", "demo.led", "not json"], 2, "not JSON"),
        (&["call", "Demo", "1"], 2, "invalid namespace"),
    ];
    for (args, code, needle) in cases {
        let out = tb(&broker, args);
        assert_eq!(out.code(), *code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    // No broker at all: a transport failure.
    let dead = dead_url();
    let out =
        run(tool("thingsbus").args(["-u", &dead, "--timeout", "0.3", "call", "demo.led", "1"]));
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("no answer"), "{}", out.stderr);

    // A broker that takes commands only from elsewhere: refused by the broker.
    let strict = spawn_broker_on_port_pair(|c| {
        quiet(c);
        c.allow_command = vec!["10.0.0.0/8".parse().expect("cidr")];
    });
    let out = tb(&strict, &["call", "demo.led", "1"]);
    assert_eq!(out.code(), 5, "{out:?}");
    assert!(out.stderr.contains("not allowed"), "{}", out.stderr);
}

/// The key after `label ` on its line of `out`.
fn key_line<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(label)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {label} line in {out:?}"))
}

#[test]
fn keygen_prints_a_pair_whose_public_key_is_the_secrets() {
    use thingsbus_protocol::keys::{KeyPair, PublicKey, SecretKey};
    let out = run(tool("thingsbus").arg("keygen"));
    let text = ok(&out);
    let public: PublicKey = key_line(text, "public").parse().expect("a Z85 public key");
    let secret = SecretKey::from_z85(key_line(text, "secret")).expect("a Z85 secret key");
    assert_eq!(
        KeyPair::from_secret(secret).expect("derives").public,
        public
    );
    // A second run makes another pair.
    let again = run(tool("thingsbus").arg("keygen"));
    assert_ne!(key_line(ok(&again), "public"), public.to_string());
}

#[test]
fn keygen_writes_the_secret_for_the_owner_only_and_replaces_it_only_with_force() {
    use std::os::unix::fs::PermissionsExt;
    use thingsbus_protocol::keys::KeyPair;
    let dir = std::env::temp_dir().join(format!("thingsbus-keygen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("client.key");
    let _ = std::fs::remove_file(&path);
    let path_s = path.to_str().expect("utf-8");
    let out = run(tool("thingsbus").args(["keygen", "--secret-file", path_s]));
    let text = ok(&out);
    assert!(!text.contains("secret"), "{text}");
    let public = key_line(text, "public").to_owned();
    let mode = std::fs::metadata(&path)
        .expect("written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let pair = KeyPair::read_file(&path).expect("a key file");
    assert_eq!(pair.public.to_string(), public);

    let refused = run(tool("thingsbus").args(["keygen", "--secret-file", path_s]));
    assert_eq!(refused.code(), 2, "{refused:?}");
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(KeyPair::read_file(&path).expect("kept"), pair);

    let forced = run(tool("thingsbus").args(["keygen", "--force", "--secret-file", path_s]));
    let new_public = key_line(ok(&forced), "public").to_owned();
    assert_ne!(new_public, public);
    assert_eq!(
        KeyPair::read_file(&path)
            .expect("replaced")
            .public
            .to_string(),
        new_public
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn key_flags_are_checked_before_anything_is_sent() {
    let sent = |args: &[&str]| {
        run(tool("thingsbus")
            .args(["-u", &dead_url()])
            .args(args)
            .args(["send", "curve.bad", "true"]))
    };
    let out = sent(&["--server-key", "tooshort"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("40 characters"), "{}", out.stderr);
    let file = std::env::temp_dir().join(format!("thingsbus-keyflag-{}", std::process::id()));
    thingsbus_protocol::keys::SecretKey::from_bytes([7; 32])
        .write_file(&file, true)
        .expect("key file");
    // A key file with a URL and no broker key: refused before anything is sent (a zone could
    // publish the key; a URL cannot).
    let out = sent(&["--key-file", file.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&file);
    assert_ne!(out.code(), 0, "{out:?}");
    assert!(out.stderr.contains("--server-key"), "{}", out.stderr);
    let key = "%nSc0".repeat(8);
    let out = sent(&["--server-key", &key, "--key-file", "/nonexistent/k"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr.contains("reading the key file /nonexistent/k"),
        "{}",
        out.stderr
    );
}

#[test]
fn against_a_curve_broker_the_key_gets_in_and_without_it_the_error_says_what_to_give() {
    let keys = thingsbus_protocol::keys::KeyPair::generate().expect("keys");
    let server = keys.public.to_string();
    let broker = spawn_broker_on_port_pair(move |c| {
        quiet(c);
        c.curve = Some(keys.clone());
    });
    ok(&tb(
        &broker,
        &["--server-key", &server, "send", "shop.door", "1"],
    ));
    wait_accepted(&broker, 1);
    let out = tb(
        &broker,
        &["--server-key", &server, "get", "shop.door", "--json"],
    );
    let got: Value = serde_json::from_str(ok(&out)).expect("JSON");
    assert_eq!(got["data"], json!(1));
    // Without the key: no answer, and the error names the flag.
    let out = tb(&broker, &["--timeout", "1", "get", "shop.door"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("--server-key"), "{}", out.stderr);
}

#[test]
fn a_zone_that_publishes_the_broker_key_needs_no_server_key() {
    let keys = thingsbus_protocol::keys::KeyPair::generate().expect("keys");
    let public = keys.public.to_string();
    let broker = spawn_broker_on_port_pair(move |c| {
        quiet(c);
        c.curve = Some(keys.clone());
    });
    let txt = format!("curve={public}");
    let dns = dns_with_txt(&broker, &[txt.as_str()]);
    let ns = dns.addr().to_string();
    let find = ["--zone", "example.org", "--nameserver", ns.as_str()];
    ok(&run(tool("thingsbus").args(find).args([
        "send",
        "shop.door",
        "1",
    ])));
    wait_accepted(&broker, 1);
    let got: Value = serde_json::from_str(ok(&run(tool("thingsbus").args(find).args([
        "get",
        "shop.door",
        "--json",
    ]))))
    .expect("JSON");
    assert_eq!(got["data"], json!(1));
    // `srv` shows the key it found.
    let report: Value = serde_json::from_str(ok(&run(tool("thingsbus").args([
        "--nameserver",
        ns.as_str(),
        "srv",
        "example.org",
        "--json",
    ]))))
    .expect("JSON");
    assert_eq!(report["chosen"]["server_key"], json!(public));
    // A key given by hand wins over DNS: a wrong one reads nothing.
    let wrong = thingsbus_protocol::keys::KeyPair::generate()
        .expect("keys")
        .public
        .to_string();
    let out = run(tool("thingsbus").args(find).args([
        "--server-key",
        &wrong,
        "--timeout",
        "1",
        "get",
        "shop.door",
    ]));
    assert_eq!(out.code(), 2, "{}", out.stderr);
}

// ---- `thingsbus history`: a broker with --http and --history ----

/// A broker recording history in a temp file, and `kitchen.fridge`'s temperatures published
/// at `t0 + i` through an adaptor, each once the broker's HTTP side has recorded the one before.
fn history_broker(name: &str, temps: &[f64]) -> (Broker, String, f64) {
    let dir = std::env::temp_dir().join(format!("thingsbus-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("history.db");
    let broker = spawn_broker_on_port_pair(|c: &mut Config| {
        quiet(c);
        c.http = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        c.history = Some(thingsbus_broker::HistoryConfig::new(&file));
    });
    let http = format!("http://{}", broker.endpoints().http.expect("http"));
    let kitchen = thingsbus_adaptor::Adaptor::builder("kitchen")
        .url(&broker.endpoints().input)
        .connect_blocking()
        .expect("adaptor");
    let t0 = ((now() - 90.0) / 60.0).floor() * 60.0;
    for (i, temp) in temps.iter().enumerate() {
        let url = format!("{http}/api/history/kitchen.fridge?field=temp&since={t0}&step=1s");
        eventually(DEADLINE, &format!("point {i} recorded"), || {
            kitchen
                .send_to(
                    "fridge",
                    &json!({"temp": temp, "door": {"open": true}}),
                    Some(t0 + i as f64),
                )
                .expect("send");
            std::thread::sleep(Duration::from_millis(100));
            let body = ureq::get(&url).call().ok()?.into_string().ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["points"].as_array()?.len() > i).then_some(())
        });
    }
    (broker, http, t0)
}

fn history_cmd(http: &str, args: &[&str]) -> Output {
    run(tool("thingsbus")
        .arg("history")
        .args(args)
        .env("THINGSBUS_HTTP_URL", http))
}

#[test]
fn history_as_json_csv_and_a_sparkline() {
    let temps = [4.0, 5.0, 3.0, 6.0, 2.0, 7.0, 1.0, 8.0];
    let (_broker, http, t0) = history_broker("history", &temps);

    let out = history_cmd(
        &http,
        &[
            "kitchen.fridge",
            "temp",
            "--since",
            "10m",
            "--step",
            "1s",
            "--json",
        ],
    );
    let v: Value = serde_json::from_str(ok(&out)).expect("JSON");
    let got: Vec<(f64, f64)> = v["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| (p["t"].as_f64().expect("t"), p["avg"].as_f64().expect("avg")))
        .collect();
    let want: Vec<(f64, f64)> = temps
        .iter()
        .enumerate()
        .map(|(i, &x)| (t0 + i as f64, x))
        .collect();
    assert_eq!(got, want);

    let since = t0.to_string();
    let out = history_cmd(
        &http,
        &[
            "kitchen.fridge",
            "temp",
            "--since",
            &since,
            "--step",
            "2s",
            "--csv",
        ],
    );
    let csv = ok(&out);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "t,time,min,avg,max,n");
    assert!(
        lines[1].starts_with(&format!("{t0},")) && lines[1].ends_with(",4,4.5,5,2"),
        "{csv}"
    );
    assert_eq!(lines.len(), 5, "{csv}");

    // Eight seconds in eight columns: each value its own block, lowest 1, highest 8.
    let until = (t0 + 8.0).to_string();
    let out = history_cmd(
        &http,
        &[
            "kitchen.fridge",
            "temp",
            "--since",
            &since,
            "--until",
            &until,
            "--step",
            "1s",
        ],
    );
    let text = ok(&out);
    assert!(
        text.contains("kitchen.fridge temp  ▄▅▃▆▂▇▁█  min 1  max 8  last 8"),
        "{text}"
    );
    assert!(text.contains("step 1s, raw tier, 8 points"), "{text}");
}

#[test]
fn history_says_what_is_missing() {
    let (_broker, http, _) = history_broker("history-missing", &[4.0]);
    // Nothing recorded: exit 1 with the broker's reason.
    let out = history_cmd(&http, &["nothing.here"]);
    assert_eq!(out.code(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("nothing recorded"), "{}", out.stderr);
    // Several fields and none chosen, or a bad span: exit 2 naming it.
    let out = history_cmd(&http, &["kitchen.fridge"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("several fields"), "{}", out.stderr);
    let out = history_cmd(&http, &["kitchen.fridge", "temp", "--since", "soon"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("since:"), "{}", out.stderr);
    // No HTTP address: exit 2 saying how to give one.
    let out = run(tool("thingsbus")
        .args(["history", "kitchen.fridge", "temp"])
        .env_remove("THINGSBUS_HTTP_URL"));
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("--http-url"), "{}", out.stderr);
}
