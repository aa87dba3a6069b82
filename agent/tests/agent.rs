//! `thingsbus-agent` as a binary against a real broker: real files, real child processes, a real
//! HTTP server on 127.0.0.1, real commands through the broker with the client library.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use thingsbus_adaptor::Adaptor;
use thingsbus_client::{Client, CommandError};
use thingsbus_tests::*;

const AGENT: &str = env!("CARGO_BIN_EXE_thingsbus-agent");
const T: Duration = Duration::from_secs(5);

fn quiet(c: &mut Config) {
    c.stats_interval = Duration::ZERO;
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "thingsbus-agent-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The `broker = {...}` line for a broker on ephemeral ports.
fn broker_line(b: &Broker) -> String {
    let e = b.endpoints();
    format!(
        "broker = {{ url = \"{}\", input_url = \"{}\", snapshot_url = \"{}\", command_url = \"{}\" }}\n",
        e.directory, e.input, e.snapshot, e.command
    )
}

/// A running agent process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(file: &Path) -> Running {
    Running(
        Command::new(AGENT)
            .arg("run")
            .arg(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("the agent starts"),
    )
}

fn client(broker: &Broker) -> Client {
    client_for(broker).connect_blocking().expect("client")
}

fn value(c: &Client, ns: &str) -> Option<Value> {
    c.get(ns).map(|t| t.value())
}

fn wait_value(c: &Client, ns: &str, want: &Value) {
    eventually(DEADLINE, &format!("{ns} = {want}"), || {
        (value(c, ns).as_ref() == Some(want)).then_some(())
    });
}

#[test]
fn check_accepts_the_issue_file_and_names_lines_of_errors() {
    let ok = Command::new(AGENT)
        .args([
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/agent.toml"),
        ])
        .output()
        .expect("runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("3 polls, 1 served, 2 rules"));

    let dir = scratch("check");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "base = \"kitchen\"\n\n[[poll]]\nns = \"fridge.temp\"\nevery = \"1 minute\"\nfile = \"/x\"\n",
    )
    .expect("write");
    let out = Command::new(AGENT)
        .arg("check")
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5: every:"), "{err}");
    assert!(err.contains("\"10m\""), "{err}");
}

#[test]
fn polls_files_and_commands_and_reports_a_failing_source() {
    let broker = spawn_broker(quiet);
    let dir = scratch("poll");
    let temp = dir.join("temperature");
    std::fs::write(&temp, "12000\n").expect("write");
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "{}base = \"kitchen\"\nhealth_every = \"200ms\"\n\n\
             [[poll]]\nns = \"fridge.temp\"\nevery = \"100ms\"\nfile = \"{}\"\nscale = 0.001\n\n\
             [[poll]]\nns = \"disk\"\nevery = \"100ms\"\ncommand = [\"sh\", \"-c\", \"echo '{{\\\"pcent\\\": 37}}'\"]\n\n\
             [[poll]]\nns = \"broken\"\nevery = \"100ms\"\ncommand = [\"sh\", \"-c\", \"echo sensor unplugged >&2; exit 3\"]\n\n\
             [[poll]]\nns = \"gone\"\nevery = \"100ms\"\nfile = \"{}\"\n",
            broker_line(&broker),
            temp.display(),
            dir.join("nothing-here").display()
        ),
    )
    .expect("write");
    let _agent = start_agent(&file);
    let c = client(&broker);
    wait_value(&c, "kitchen.fridge.temp", &json!(12));
    wait_value(&c, "kitchen.disk", &json!({"pcent": 37}));
    std::fs::write(&temp, "8500\n").expect("write");
    wait_value(&c, "kitchen.fridge.temp", &json!(8.5));

    // A failing program: its exit code and standard error are reported, on the thing's marker
    // and in the agent's health thing.
    let mark = eventually(DEADLINE, "the failing marker", || {
        value(&c, "kitchen.broken.failing")
    });
    let error = mark["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("exit code 3") && error.contains("sensor unplugged"),
        "{mark}"
    );
    let health = eventually(DEADLINE, "health with both failures", || {
        value(&c, "kitchen.agent").filter(|h| h["polls_failing"] == 2 && h["polls_ok"] == 2)
    });
    assert!(health["polls"]["gone"]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("nothing-here")));
}

#[test]
fn polls_http_with_a_jq_pick() {
    let broker = spawn_broker(quiet);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move {
        let app = axum::Router::new().route(
            "/now.json",
            axum::routing::get(|| async {
                axum::Json(json!({"current": {"temp": 4.5, "sky": "grey"}, "daily": [1, 2]}))
            }),
        );
        let _ = axum::serve(listener, app).await;
    });
    let dir = scratch("http");
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "{}base = \"kitchen\"\n\n\
             [[poll]]\nns = \"weather\"\nevery = \"100ms\"\nhttp = \"http://{addr}/now.json\"\npick = \".current\"\n\n\
             [[poll]]\nns = \"missing\"\nevery = \"100ms\"\nhttp = \"http://{addr}/nope\"\n",
            broker_line(&broker)
        ),
    )
    .expect("write");
    let _agent = start_agent(&file);
    let c = client(&broker);
    wait_value(&c, "kitchen.weather", &json!({"temp": 4.5, "sky": "grey"}));
    let mark = eventually(DEADLINE, "the 404 marker", || {
        value(&c, "kitchen.missing.failing")
    });
    assert!(
        mark["error"].as_str().is_some_and(|e| e.contains("404")),
        "{mark}"
    );
}

#[test]
fn serves_commands_with_templates_and_refuses_injection() {
    let broker = spawn_broker(quiet);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move {
        let app = axum::Router::new().route(
            "/act",
            axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
                axum::Json(json!({"did": body}))
            }),
        );
        let _ = axum::serve(listener, app).await;
    });
    let dir = scratch("serve");
    let gpio = dir.join("gpio17-value");
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "{}base = \"kitchen\"\n\n\
             [[serve]]\nns = \"echo\"\ncommand = [\"printf\", \"%s\", \"{{text}}\"]\ntimeout = \"5s\"\n\n\
             [[serve]]\nns = \"slow\"\ncommand = [\"sleep\", \"{{secs}}\"]\ntimeout = \"300ms\"\n\n\
             [[serve]]\nns = \"fail\"\ncommand = [\"sh\", \"-c\", \"echo no such device >&2; exit 4\"]\n\n\
             [[serve]]\nns = \"led\"\nfile = \"{}\"\nwrite = \"{{on}}\"\n\n\
             [[serve]]\nns = \"web\"\nhttp = \"http://{addr}/act\"\n",
            broker_line(&broker),
            gpio.display()
        ),
    )
    .expect("write");
    let _agent = start_agent(&file);
    let c = client(&broker);
    let reply = eventually(DEADLINE, "the agent serving kitchen.echo", || {
        c.command_blocking("kitchen.echo", &json!({"text": "hello"}), T)
            .ok()
    });
    assert_eq!(reply, json!({"exit": 0, "stdout": "hello"}));
    // Shell syntax reaches the program as one literal argument: no shell ever runs.
    let reply = c
        .command_blocking(
            "kitchen.echo",
            &json!({"text": "; rm -rf / $(reboot) `id`"}),
            T,
        )
        .expect("reply");
    assert_eq!(reply["stdout"], "; rm -rf / $(reboot) `id`");
    // Options, lists, unknown fields and missing fields are refused before anything runs.
    for bad in [
        json!({"text": "--version"}),
        json!({"text": ["a", "b"]}),
        json!({"text": "a", "more": "b"}),
        json!({}),
        json!("text"),
    ] {
        match c.command_blocking("kitchen.echo", &bad, T) {
            Err(CommandError::Refused { .. }) => {}
            other => panic!("{bad} gave {other:?}"),
        }
    }
    match c.command_blocking("kitchen.slow", &json!({"secs": 30}), T) {
        Err(CommandError::Refused { error, .. }) => assert!(error.contains("killed"), "{error}"),
        other => panic!("{other:?}"),
    }
    match c.command_blocking("kitchen.fail", &Value::Null, T) {
        Err(CommandError::Refused { error, .. }) => {
            assert!(
                error.contains("exit code 4") && error.contains("no such device"),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.command_blocking("kitchen.led", &json!({"on": true}), T)
            .expect("reply"),
        json!({"written": "1"})
    );
    assert_eq!(std::fs::read_to_string(&gpio).expect("read"), "1");
    assert_eq!(
        c.command_blocking("kitchen.web", &json!({"level": 3}), T)
            .expect("reply"),
        json!({"did": {"level": 3}})
    );
    let health = eventually(DEADLINE, "serve counts in health", || {
        value(&c, "kitchen.agent").filter(|h| h["serves"]["echo"]["failed"] == 5)
    });
    assert_eq!(health["serves"]["echo"]["ok"], 2);
}

#[test]
fn rules_fire_on_edges_after_their_duration_derive_values_and_report_errors() {
    let broker = spawn_broker(quiet);
    let dir = scratch("rules");
    let alarm = dir.join("alarm");
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "{}base = \"kitchen\"\nhealth_every = \"200ms\"\n\n\
             [[serve]]\nns = \"alarm\"\nfile = \"{}\"\nwrite = \"{{on}}\"\n\n\
             [[rule]]\nname = \"hot\"\nwhen = \"kitchen.fridge.temp > 8\"\nfor = \"300ms\"\nmin_interval = \"10ms\"\n\
             then = {{ command = \"kitchen.alarm\", data = {{ on = true }} }}\n\
             else = {{ command = \"kitchen.alarm\", data = {{ on = false }} }}\n\n\
             [[rule]]\nname = \"double\"\npublish = \"house.fridge_double\"\nvalue = \"kitchen.fridge.temp * 2\"\nmin_interval = \"10ms\"\n\n\
             [[rule]]\nname = \"oven\"\nwhen = \"kitchen.oven.temp > 200\"\nthen = {{ publish = \"kitchen.hot\", value = \"true\" }}\n\n\
             [[rule]]\nname = \"ping\"\npublish = \"loop.a\"\nvalue = \"loop.b + 1\"\n\n\
             [[rule]]\nname = \"pong\"\npublish = \"loop.b\"\nvalue = \"loop.a + 1\"\n",
            broker_line(&broker),
            alarm.display()
        ),
    )
    .expect("write");
    let _agent = start_agent(&file);
    let c = client(&broker);
    let sensor = Adaptor::builder("kitchen.fridge")
        .url(&broker.endpoints().input)
        .connect_blocking()
        .expect("adaptor");
    eventually(DEADLINE, "the agent's health thing", || {
        value(&c, "kitchen.agent")
    });

    eventually(DEADLINE, "the first reading through", || {
        sensor.send_to("temp", &json!(5), None).expect("send");
        std::thread::sleep(Duration::from_millis(50));
        (value(&c, "house.fridge_double") == Some(json!(10))).then_some(())
    });
    sensor.send_to("temp", &json!(12.5), None).expect("send");
    wait_value(&c, "house.fridge_double", &json!(25));
    eventually(DEADLINE, "the alarm switched on", || {
        (std::fs::read_to_string(&alarm).ok().as_deref() == Some("1")).then_some(())
    });
    sensor.send_to("temp", &json!(6), None).expect("send");
    eventually(DEADLINE, "the alarm switched off", || {
        (std::fs::read_to_string(&alarm).ok().as_deref() == Some("0")).then_some(())
    });
    let h = eventually(DEADLINE, "the rule fired twice", || {
        value(&c, "kitchen.agent").filter(|h| {
            h["rules"]["hot"]["fired"] == 2
                && h["rules"]["hot"]["last_outcome"] == json!({"written": "0"})
        })
    });
    assert_eq!(h["rules"]["hot"]["active"], false);

    // A rule over a thing that is not on the bus is reported, and the agent goes on.
    let h = eventually(DEADLINE, "the missing thing reported", || {
        value(&c, "kitchen.agent").filter(|h| h["rules"]["oven"]["errors"].as_u64() > Some(0))
    });
    assert!(h["rules"]["oven"]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("kitchen.oven.temp is not on the bus")));

    // Two rules feeding each other: each fires at most once per min_interval (1 s by default).
    sensor.send_to("", &json!(null), None).expect("send");
    let looper = Adaptor::builder("loop")
        .url(&broker.endpoints().input)
        .connect_blocking()
        .expect("adaptor");
    // (A PUB socket's first messages may go before it is connected: send until seen.)
    eventually(DEADLINE, "the loop started", || {
        if value(&c, "loop.b").is_none() {
            looper.send_to("a", &json!(0), None).expect("send");
            std::thread::sleep(Duration::from_millis(50));
        }
        value(&c, "loop.b")
    });
    let end = std::time::Instant::now() + DEADLINE;
    let held_back = |h: &Value| {
        ["ping", "pong"]
            .iter()
            .any(|r| h["rules"][r]["rate_limited"].as_u64() > Some(0))
    };
    while !value(&c, "kitchen.agent").is_some_and(|h| held_back(&h)) {
        assert!(
            std::time::Instant::now() < end,
            "the loop was never held back by its rate limit: {:?} a={:?} b={:?}",
            value(&c, "kitchen.agent").map(|h| h["rules"].clone()),
            value(&c, "loop.a"),
            value(&c, "loop.b")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let h = value(&c, "kitchen.agent").expect("health");
    let fired = h["rules"]["ping"]["fired"].as_u64().unwrap_or(0)
        + h["rules"]["pong"]["fired"].as_u64().unwrap_or(0);
    let b = value(&c, "loop.b").and_then(|v| v.as_f64()).unwrap_or(0.0);
    // The loop advances one step per second at most, not thousands.
    assert!(fired < 60 && b < 60.0, "fired {fired}, loop.b {b}");
}

#[test]
fn sighup_reloads_and_a_bad_file_keeps_the_running_one() {
    let broker = spawn_broker(quiet);
    let dir = scratch("reload");
    let file = dir.join("agent.toml");
    let poll = |ns: &str, out: &str| {
        format!(
            "{}base = \"kitchen\"\n\n[[poll]]\nns = \"{ns}\"\nevery = \"100ms\"\ncommand = [\"echo\", \"{out}\"]\n",
            broker_line(&broker)
        )
    };
    std::fs::write(&file, poll("first", "1")).expect("write");
    let agent = start_agent(&file);
    let c = client(&broker);
    wait_value(&c, "kitchen.first", &json!(1));
    let hup = || {
        let s = Command::new("kill")
            .args(["-HUP", &agent.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(s.success());
    };
    std::fs::write(
        &file,
        "base = \"kitchen\"\n[[poll]]\nns = \"first\"\nevery = \"soon\"\n",
    )
    .expect("write");
    hup();
    let h = eventually(DEADLINE, "the bad file refused", || {
        value(&c, "kitchen.agent").filter(|h| h["reload_failures"] == 1)
    });
    assert!(
        h["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("line 4: every:")),
        "{h}"
    );
    // The running configuration goes on.
    let ts = c.get("kitchen.first").map_or(0.0, |t| t.ts);
    eventually(DEADLINE, "kitchen.first still polled", || {
        c.get("kitchen.first").filter(|t| t.ts > ts).map(|_| ())
    });
    std::fs::write(&file, poll("second", "2")).expect("write");
    hup();
    wait_value(&c, "kitchen.second", &json!(2));
    let h = eventually(DEADLINE, "one reload counted", || {
        value(&c, "kitchen.agent").filter(|h| h["reloads"] == 1)
    });
    assert!(h["polls"].get("first").is_none(), "{h}");
}

#[test]
fn a_rule_calls_a_webhook() {
    let broker = spawn_broker(quiet);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen = got.clone();
    rt.spawn(async move {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("lock").push(body);
                    "ok"
                }
            }),
        );
        let _ = axum::serve(listener, app).await;
    });
    let dir = scratch("webhook");
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "{}base = \"kitchen\"\n\n[[rule]]\nname = \"door\"\nwhen = \"kitchen.door\"\n\
             then = {{ webhook = \"http://{addr}/hook\", data = {{ door = \"open\" }} }}\n",
            broker_line(&broker)
        ),
    )
    .expect("write");
    let _agent = start_agent(&file);
    let c = client(&broker);
    eventually(DEADLINE, "the agent's health thing", || {
        value(&c, "kitchen.agent")
    });
    let door = Adaptor::builder("kitchen.door")
        .url(&broker.endpoints().input)
        .connect_blocking()
        .expect("adaptor");
    eventually(DEADLINE, "the webhook called", || {
        if value(&c, "kitchen.door").is_none() {
            door.send(&json!(true)).expect("send");
            std::thread::sleep(Duration::from_millis(50));
        }
        got.lock().expect("lock").first().cloned()
    });
    assert_eq!(
        got.lock().expect("lock").clone(),
        vec![json!({"door": "open"})]
    );
    let h = eventually(DEADLINE, "the webhook's status in health", || {
        value(&c, "kitchen.agent").filter(|h| h["rules"]["door"]["last_outcome"] == 200)
    });
    assert_eq!(h["rules"]["door"]["fired"], 1);
}

#[test]
fn with_the_broker_key_it_polls_into_a_curve_broker_and_a_bad_key_is_a_config_error() {
    let keys = thingsbus_protocol::keys::KeyPair::generate().expect("keys");
    let server = keys.public;
    let broker = spawn_broker(move |c| {
        quiet(c);
        c.curve = Some(keys.clone());
    });
    let dir = scratch("curve");
    let own = dir.join("agent.key");
    let pair = thingsbus_protocol::keys::KeyPair::generate().expect("keys");
    std::fs::write(&own, format!("{}\n", pair.secret.to_z85())).expect("write");
    let line = broker_line(&broker).replace(
        " }\n",
        &format!(
            ", server_key = \"{server}\", key_file = \"{}\" }}\n",
            own.display()
        ),
    );
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "{line}base = \"shed\"\n\n[[poll]]\nns = \"light\"\nevery = \"100ms\"\n\
             command = [\"echo\", \"3\"]\n"
        ),
    )
    .expect("write");
    let _agent = start_agent(&file);
    let c = client_for(&broker)
        .curve(thingsbus_protocol::transport::ClientKeys::new(server, None).expect("keys"))
        .connect_blocking()
        .expect("client");
    wait_value(&c, "shed.light", &json!(3));

    // A key that is no key: `check` says so.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "{}base = \"shed\"\n",
            broker_line(&broker).replace(" }\n", ", server_key = \"not a key\" }\n")
        ),
    )
    .expect("write");
    let out = Command::new(AGENT)
        .arg("check")
        .arg(&bad)
        .output()
        .expect("check runs");
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("broker.server_key"), "{said}");
}

/// An HTTPS server on 127.0.0.1 with a certificate signed by `ca` (a real TLS handshake through
/// tokio-rustls) answering every request with `body` as JSON. Runs on `rt`; returns its port.
fn https_json(
    rt: &tokio::runtime::Runtime,
    ca: &thingsbus_tests::certs::Authority,
    body: Value,
) -> u16 {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let files = ca.server("agent-https");
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(Iterator::collect)
        .expect("the server certificate");
    let key = PrivateKeyDer::from_pem_file(&files.key).expect("the server key");
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let body = body.to_string();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                // A failed handshake (a client that does not trust us) just ends this one.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[test]
fn polls_https_trusting_the_files_ca_and_refuses_a_server_it_does_not_trust() {
    let broker = spawn_broker(quiet);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ca = thingsbus_tests::certs::Authority::new("agent");
    let port = https_json(&rt, &ca, json!({"current": {"temp": 7.5}}));
    let dir = scratch("https");
    let poll = |base: &str, ca_line: &str| {
        format!(
            "{}base = \"{base}\"\n{ca_line}\n\
             [[poll]]\nns = \"weather\"\nevery = \"100ms\"\nhttp = \"https://127.0.0.1:{port}/now.json\"\npick = \".current.temp\"\n",
            broker_line(&broker)
        )
    };
    let trusting = dir.join("trusting.toml");
    let ca_line = format!("ca_file = {:?}", ca.ca_file().display().to_string());
    std::fs::write(&trusting, poll("kitchen", &ca_line)).expect("write");
    let doubting = dir.join("doubting.toml");
    std::fs::write(&doubting, poll("garage", "")).expect("write");
    let _a = start_agent(&trusting);
    let _b = start_agent(&doubting);
    let c = client(&broker);
    wait_value(&c, "kitchen.weather", &json!(7.5));
    // Without the file's CA the certificate is not trusted: the poll fails and says why.
    let mark = eventually(DEADLINE, "the untrusted poll's marker", || {
        value(&c, "garage.weather.failing")
    });
    assert!(
        mark["error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate") || e.contains("UnknownIssuer")),
        "{mark}"
    );
    assert!(value(&c, "garage.weather").is_none());
}
