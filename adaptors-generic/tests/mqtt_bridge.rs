//! `thingsbus-mqtt-bridge` between a real broker of ours and a real Mosquitto.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{field, tool, Proc, DEADLINE};
use serde_json::{json, Value};
use thingsbus_adaptor::Adaptor;
use thingsbus_broker::{Broker, Config};
use thingsbus_client::Client;
use thingsbus_tests::certs::{Authority, CertFiles};
use thingsbus_tests::process::Stream;
use thingsbus_tests::{eventually, peers, require_peers, spawn_broker_on_port_pair, start_on};

/// A Mosquitto on 127.0.0.1 (no persistence: a restart forgets retained topics), killed on drop.
struct Mosquitto {
    // Dropped first: the process is killed and reaped before its directory goes.
    process: Proc,
    port: u16,
    /// The TLS listener, if asked for.
    tls_port: Option<u16>,
    dir: std::path::PathBuf,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Mosquitto {
    fn start(port: Option<u16>) -> Mosquitto {
        Mosquitto::start_with(port, None)
    }

    /// Beside the plain listener (for the tests' own clients), a TLS listener with the server
    /// certificate `server` and `require_certificate true`: only clients whose certificate
    /// `ca_file` signed get in.
    fn start_tls(server: &CertFiles, ca_file: &std::path::Path) -> Mosquitto {
        let tls = format!(
            "listener {{port}} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\n",
            ca_file.display(),
            server.cert.display(),
            server.key.display()
        );
        Mosquitto::start_with(None, Some(tls))
    }

    fn start_with(port: Option<u16>, tls: Option<String>) -> Mosquitto {
        let port = port.unwrap_or_else(free_port);
        let dir =
            std::env::temp_dir().join(format!("thingsbus-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("mosquitto.conf");
        let mut text = format!(
            "per_listener_settings false\nallow_anonymous true\npersistence false\n\
             listener {port} 127.0.0.1\n"
        );
        let tls_port = tls.map(|listener| {
            let tls_port = free_port();
            text.push_str(&listener.replace("{port}", &tls_port.to_string()));
            tls_port
        });
        std::fs::write(&conf, text).expect("config");
        let mut process = Proc::build(Command::new("mosquitto").arg("-c").arg(&conf))
            .name("mosquitto (Debian package mosquitto; scripts/test installs it)")
            .stdout(Stream::Discard)
            .start();
        for p in std::iter::once(port).chain(tls_port) {
            process
                .wait_listening(p, DEADLINE)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        Mosquitto {
            process,
            port,
            tls_port,
            dir,
        }
    }

    fn tls_url(&self) -> String {
        format!(
            "mqtts://127.0.0.1:{}",
            self.tls_port.expect("a TLS listener")
        )
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test on a message: (payload, retained).
type Check<'a> = &'a dyn Fn(&str, bool) -> bool;

/// An MQTT client (rumqttc) subscribed to `filters`; messages arrive as (topic, payload, retain).
struct Watcher {
    client: rumqttc::Client,
    rx: Receiver<(String, String, bool)>,
    /// Everything received so far, in order.
    history: std::cell::RefCell<Vec<(String, String, bool)>>,
}

impl Watcher {
    fn connect(port: u16, id: &str, filters: &[&str]) -> Watcher {
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = rumqttc::Client::new(opts, 100);
        for f in filters {
            client
                .subscribe(*f, rumqttc::QoS::AtLeastOnce)
                .expect("subscribe");
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for n in connection.iter() {
                match n {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let payload = String::from_utf8_lossy(&p.payload).into_owned();
                        if tx.send((p.topic.clone(), payload, p.retain)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Watcher {
            client,
            rx,
            history: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// The next message within `timeout`, kept in the history too.
    fn next(&self, timeout: Duration) -> Option<(String, String, bool)> {
        let m = self.rx.recv_timeout(timeout).ok()?;
        self.history.borrow_mut().push(m.clone());
        Some(m)
    }

    /// Collects messages until every topic in `wanted` has one satisfying its check.
    fn until(&self, wanted: &[(&str, Check<'_>)]) -> HashMap<String, String> {
        let mut last: HashMap<String, String> = HashMap::new();
        let end = Instant::now() + DEADLINE;
        let mut ok = vec![false; wanted.len()];
        for (topic, payload, retain) in self.history.borrow().iter() {
            for (i, (t, check)) in wanted.iter().enumerate() {
                if topic == t && check(payload, *retain) {
                    ok[i] = true;
                }
            }
            last.insert(topic.clone(), payload.clone());
        }
        while !ok.iter().all(|o| *o) {
            let left = end.saturating_duration_since(Instant::now());
            let Some((topic, payload, retain)) = self.next(left) else {
                let missing: Vec<&str> = wanted
                    .iter()
                    .zip(&ok)
                    .filter(|(_, o)| !**o)
                    .map(|((t, _), _)| *t)
                    .collect();
                panic!("no matching message on {missing:?}; last seen: {last:#?}");
            };
            for (i, (t, check)) in wanted.iter().enumerate() {
                if topic == *t && check(&payload, retain) {
                    ok[i] = true;
                }
            }
            last.insert(topic, payload);
        }
        last
    }

    fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                payload.as_bytes().to_vec(),
            )
            .expect("publish");
    }
}

fn quiet(c: &mut Config) {
    c.stats_interval = Duration::ZERO;
}

fn bridge(broker: &Broker, mosquitto: &Mosquitto, extra: &[&str]) -> Proc {
    bridge_to(broker, &mosquitto.url(), extra)
}

fn bridge_to(broker: &Broker, mqtt_url: &str, extra: &[&str]) -> Proc {
    Proc::spawn(
        tool("thingsbus-mqtt-bridge")
            .args(["-u", &broker.endpoints().directory, "--mqtt", mqtt_url])
            .args(["--report-interval", "0.3"])
            .args(extra),
    )
}

fn adaptor(broker: &Broker) -> Adaptor {
    Adaptor::builder("shop")
        .url(&broker.endpoints().input)
        .connect_blocking()
        .expect("adaptor")
}

#[test]
fn things_become_retained_topics_with_discovery_and_availability() {
    require_peers!(peers::MOSQUITTO);
    let broker = spawn_broker_on_port_pair(|c| {
        quiet(c);
        c.live_window = Duration::from_secs(3);
    });
    let mosquitto = Mosquitto::start(None);
    let _bridge = bridge(&broker, &mosquitto, &["--flatten", "--homeassistant"]);
    let a = adaptor(&broker);
    let w = Watcher::connect(
        mosquitto.port,
        "watcher",
        &["thingsbus/#", "homeassistant/#"],
    );
    let door = json!({"open": true, "temp": 21.5, "label": "front"});
    // Until the watcher's subscription is in place, what the bridge publishes passes it by.
    eventually(DEADLINE, "the state topic", || {
        a.send_to("door", &door, None).expect("send");
        w.next(Duration::from_millis(300))
    });
    let state_ok = |p: &str, _: bool| {
        serde_json::from_str::<Value>(p).is_ok_and(|v| {
            v["data"] == json!({"open": true, "temp": 21.5, "label": "front"}) && v["ts"].is_f64()
        })
    };
    let seen = w.until(&[
        ("thingsbus/shop/door", &state_ok),
        ("thingsbus/shop/door/open", &|p, _| p == "true"),
        ("thingsbus/shop/door/temp", &|p, _| p == "21.5"),
        ("thingsbus/shop/door/label", &|p, _| p == "front"),
        ("thingsbus/shop/door/availability", &|p, _| p == "online"),
        (
            "homeassistant/binary_sensor/shop_door/open/config",
            &|_, _| true,
        ),
        ("homeassistant/sensor/shop_door/temp/config", &|_, _| true),
    ]);
    // A subscriber that comes later gets it all too: everything is retained.
    let late = Watcher::connect(mosquitto.port, "late", &["thingsbus/#", "homeassistant/#"]);
    late.until(&[
        ("thingsbus/shop/door", &|p, retain| {
            retain && state_ok(p, retain)
        }),
        ("thingsbus/shop/door/temp", &|p, retain| {
            retain && p == "21.5"
        }),
        (
            "homeassistant/sensor/shop_door/temp/config",
            &|_, retain| retain,
        ),
    ]);
    // Home Assistant's documented discovery keys.
    let sensor: Value =
        serde_json::from_str(&seen["homeassistant/sensor/shop_door/temp/config"]).expect("JSON");
    for key in [
        "name",
        "unique_id",
        "state_topic",
        "value_template",
        "availability_topic",
        "device",
    ] {
        assert!(!sensor[key].is_null(), "{key} missing: {sensor}");
    }
    assert_eq!(sensor["state_topic"], "thingsbus/shop/door");
    assert_eq!(
        sensor["availability_topic"],
        "thingsbus/shop/door/availability"
    );
    assert_eq!(sensor["payload_available"], "online");
    assert_eq!(
        sensor["device"]["identifiers"],
        json!(["thingsbus_shop_door"])
    );
    assert_eq!(sensor["value_template"], r#"{{ value_json.data["temp"] }}"#);
    let binary: Value =
        serde_json::from_str(&seen["homeassistant/binary_sensor/shop_door/open/config"])
            .expect("JSON");
    assert_eq!(binary["payload_on"], "ON");
    assert!(
        !seen.contains_key("homeassistant/sensor/shop_door/label/config"),
        "text fields are not sensors"
    );
    // Three seconds later the thing leaves the live window: offline.
    w.until(&[("thingsbus/shop/door/availability", &|p, _| p == "offline")]);
    // A new value: online again.
    a.send_to(
        "door",
        &json!({"open": false, "temp": 20.0, "label": "front"}),
        None,
    )
    .expect("send");
    w.until(&[
        ("thingsbus/shop/door/availability", &|p, _| p == "online"),
        ("thingsbus/shop/door/open", &|p, _| p == "false"),
    ]);
}

#[test]
fn mqtt_topics_become_things_sanitised_and_nothing_loops() {
    require_peers!(peers::MOSQUITTO);
    let broker = spawn_broker_on_port_pair(quiet);
    let mosquitto = Mosquitto::start(None);
    let mut b = bridge(
        &broker,
        &mosquitto,
        &["--import", "zigbee2mqtt/#=home.z2m", "--import", "#=all"],
    );
    let client = Client::builder()
        .url(&broker.endpoints().directory)
        .connect_blocking()
        .expect("client");
    let w = Watcher::connect(mosquitto.port, "publisher", &["thingsbus/#"]);
    // Retry until the bridge has subscribed (MQTT drops what nobody subscribed to).
    eventually(DEADLINE, "an imported thing", || {
        w.publish("zigbee2mqtt/Living Room/Temp", "21.5");
        std::thread::sleep(Duration::from_millis(100));
        client.get("home.z2m.living_room.temp")
    });
    assert_eq!(
        client
            .get("home.z2m.living_room.temp")
            .expect("thing")
            .value(),
        json!(21.5)
    );
    w.publish(
        "zigbee2mqtt/kitchen",
        r#"{"temperature": 20, "humidity": 50}"#,
    );
    w.publish("zigbee2mqtt/porch/label", "hello there");
    w.publish("zigbee2mqtt/1st/floor", "1");
    w.publish("zigbee2mqtt/marker", "done");
    eventually(DEADLINE, "the marker", || client.get("home.z2m.marker"));
    assert_eq!(
        client.get("home.z2m.kitchen").expect("kitchen").value(),
        json!({"temperature": 20, "humidity": 50})
    );
    assert_eq!(
        client.get("home.z2m.porch.label").expect("label").value(),
        json!("hello there")
    );
    assert!(client
        .walk("home.z2m")
        .iter()
        .all(|t| !t.ns.as_str().contains("1st")));
    // The imported things went out again under thingsbus/... and the catch-all import heard
    // them: they must not come back as things.
    w.until(&[("thingsbus/home/z2m/marker", &|p, _| p.contains("done"))]);
    w.publish("other/topic", "7");
    eventually(DEADLINE, "the catch-all import", || {
        client.get("all.other.topic")
    });
    assert!(
        client
            .walk("all")
            .iter()
            .all(|t| !t.ns.as_str().starts_with("all.thingsbus")),
        "the bridge imported its own topics: {:?}",
        client
            .walk("all")
            .iter()
            .map(|t| t.ns.to_string())
            .collect::<Vec<_>>()
    );
    b.signal("TERM");
    assert!(b.wait(DEADLINE).expect("stops").success());
    let log = b.wait_stderr("bridge stopped");
    let line = log
        .lines()
        .find(|l| l.contains("bridge stopped"))
        .expect("final counts");
    assert_eq!(field(line, "skipped_bad_level"), Some(1), "{line}");
    assert!(field(line, "skipped_own").is_some_and(|n| n > 0), "{line}");
    assert!(field(line, "imported").is_some_and(|n| n >= 5), "{line}");
}

#[test]
fn restarting_either_broker_is_survived() {
    require_peers!(peers::MOSQUITTO);
    let broker = spawn_broker_on_port_pair(quiet);
    let port = broker.endpoints().directory_port;
    let mosquitto = Mosquitto::start(None);
    let mqtt_port = mosquitto.port;
    let _bridge = bridge(&broker, &mosquitto, &[]);
    let a = adaptor(&broker);
    a.send_to("lamp", &json!(1), None).expect("send");
    let w = Watcher::connect(mqtt_port, "w1", &["thingsbus/#"]);
    w.until(&[("thingsbus/shop/lamp", &json_is_data(json!(1)))]);

    // Mosquitto restarts without persistence: retained topics are gone until the bridge
    // publishes them again.
    drop(w);
    drop(mosquitto);
    let mosquitto = Mosquitto::start(Some(mqtt_port));
    let w = Watcher::connect(mqtt_port, "w2", &["thingsbus/#"]);
    w.until(&[("thingsbus/shop/lamp", &json_is_data(json!(1)))]);
    let late = Watcher::connect(mqtt_port, "w3", &["thingsbus/#"]);
    late.until(&[("thingsbus/shop/lamp", &|p, retain| {
        retain && json_is_data(json!(1))(p, retain)
    })]);

    // Our broker restarts: the bridge's mirror reconnects and new values flow on.
    drop(a);
    drop(broker);
    let broker = eventually(DEADLINE, "the broker back on its ports", || {
        start_on(port, &quiet).ok()
    });
    let a = adaptor(&broker);
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < end, "no update after the broker restart");
        a.send_to("lamp", &json!(2), None).expect("send");
        if let Some((t, p, _)) = w.next(Duration::from_millis(300)) {
            if t == "thingsbus/shop/lamp" && json_is_data(json!(2))(&p, false) {
                break;
            }
        }
    }
    drop(mosquitto);
}

fn json_is_data(expected: Value) -> impl Fn(&str, bool) -> bool {
    move |p, _| serde_json::from_str::<Value>(p).is_ok_and(|v| v["data"] == expected)
}

#[test]
fn set_topics_become_commands_and_results_come_back() {
    require_peers!(peers::MOSQUITTO);
    // The broker's own thing lists the served prefixes: the bridge learns from it.
    let broker = spawn_broker_on_port_pair(|c| c.stats_interval = Duration::from_millis(200));
    let mosquitto = Mosquitto::start(None);
    let _bridge = bridge(&broker, &mosquitto, &["--commands", "--homeassistant"]);
    let led = Adaptor::builder("demo")
        .url(&broker.endpoints().input)
        .connect_blocking()
        .expect("adaptor");
    led.serve("led", |_, data, _| async move {
        data.get("on")
            .and_then(Value::as_bool)
            .map(|on| json!({"on": on}))
            .ok_or_else(|| "expected {\"on\": true|false}".to_owned())
    })
    .expect("serve");
    eventually(DEADLINE, "the LED to serve", || {
        led.is_serving().then_some(())
    });
    led.send_to("led", &json!({"on": false}), None)
        .expect("state");
    // Home Assistant gets a switch for the LED's boolean, since an adaptor serves it.
    let ha = Watcher::connect(mosquitto.port, "ha", &["homeassistant/#"]);
    let seen = ha.until(&[("homeassistant/switch/demo_led/on/config", &|_, _| true)]);
    let switch: Value =
        serde_json::from_str(&seen["homeassistant/switch/demo_led/on/config"]).expect("JSON");
    assert_eq!(switch["command_topic"], "thingsbus/demo/led/set");
    assert_eq!(switch["payload_on"], r#"{"on":true}"#);
    assert_eq!(switch["state_topic"], "thingsbus/demo/led");
    let w = Watcher::connect(mosquitto.port, "caller", &["thingsbus/+/+/set/result"]);
    let end = Instant::now() + DEADLINE;
    let result = loop {
        assert!(Instant::now() < end, "no command result");
        w.publish("thingsbus/demo/led/set", r#"{"on": true}"#);
        if let Some((t, p, _)) = w.next(Duration::from_millis(300)) {
            assert_eq!(t, "thingsbus/demo/led/set/result");
            break serde_json::from_str::<Value>(&p).expect("JSON result");
        }
    };
    assert_eq!(result, json!({"ok": true, "data": {"on": true}}));
    w.publish("thingsbus/demo/led/set", "dance");
    w.until(&[("thingsbus/demo/led/set/result", &|p, _| {
        serde_json::from_str::<Value>(p).is_ok_and(|v| {
            v["ok"] == false && v["error"].as_str().is_some_and(|e| e.contains("expected"))
        })
    })]);
    w.publish("thingsbus/demo/nothing/set", "1");
    let w2 = Watcher::connect(
        mosquitto.port,
        "caller2",
        &["thingsbus/demo/nothing/set/result"],
    );
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < end, "no no_route result");
        w2.publish("thingsbus/demo/nothing/set", "1");
        if let Some((_, p, _)) = w2.next(Duration::from_millis(300)) {
            assert!(p.contains("no_route"), "{p}");
            break;
        }
    }
}

/// `--mqtt-ca-file FILE --mqtt-cert FILE --mqtt-key FILE` as arguments.
fn tls_args(ca_file: &std::path::Path, client: Option<&CertFiles>) -> Vec<String> {
    let mut args = vec!["--mqtt-ca-file".to_owned(), ca_file.display().to_string()];
    if let Some(c) = client {
        args.extend([
            "--mqtt-cert".to_owned(),
            c.cert.display().to_string(),
            "--mqtt-key".to_owned(),
            c.key.display().to_string(),
        ]);
    }
    args
}

#[test]
fn mqtts_with_the_right_ca_and_client_certificate_bridges() {
    require_peers!(peers::MOSQUITTO);
    let ca = Authority::new("mqtt");
    let mosquitto = Mosquitto::start_tls(&ca.server("mosquitto"), ca.ca_file());
    let broker = spawn_broker_on_port_pair(quiet);
    let client = ca.client("bridge");
    let args = tls_args(ca.ca_file(), Some(&client));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _bridge = bridge_to(&broker, &mosquitto.tls_url(), &args);
    let a = adaptor(&broker);
    // The watcher is on the plain listener: what it sees came through the TLS one.
    let w = Watcher::connect(mosquitto.port, "watcher", &["thingsbus/#"]);
    eventually(DEADLINE, "the thing over mqtts://", || {
        a.send_to("safe", &json!({"locked": true}), None)
            .expect("send");
        w.next(Duration::from_millis(300))
    });
    w.until(&[(
        "thingsbus/shop/safe",
        &json_is_data(json!({"locked": true})),
    )]);
}

#[test]
fn mqtts_without_a_client_certificate_or_with_another_ca_fails_and_says_why() {
    require_peers!(peers::MOSQUITTO);
    let ca = Authority::new("mqtt");
    let other = Authority::new("other");
    let mosquitto = Mosquitto::start_tls(&ca.server("mosquitto"), ca.ca_file());
    let broker = spawn_broker_on_port_pair(quiet);
    let url = mosquitto.tls_url();
    let cases: [(&str, Vec<String>, &str); 3] = [
        (
            "no client certificate",
            tls_args(ca.ca_file(), None),
            "wants a client certificate: give --mqtt-cert and --mqtt-key",
        ),
        (
            "a CA that did not sign the server",
            tls_args(other.ca_file(), Some(&ca.client("bridge"))),
            "not signed by an authority this bridge trusts",
        ),
        (
            "a client certificate the server's CA did not sign",
            tls_args(ca.ca_file(), Some(&other.client("stranger"))),
            "refused this bridge's certificate",
        ),
    ];
    for (what, args, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut b = bridge_to(&broker, &url, &args);
        let line = b.expect_stderr_line(what, |l| {
            l.contains("cannot connect to the MQTT broker over TLS")
        });
        assert!(line.contains(says), "{what}: {line}");
        assert!(line.contains("ERROR"), "{what}: {line}");
        b.signal("TERM");
        assert!(b.wait(DEADLINE).expect("stops").success(), "{what}");
        let log = b.wait_stderr("bridge stopped");
        let last = log
            .lines()
            .find(|l| l.contains("bridge stopped"))
            .expect("final counts");
        assert_eq!(field(last, "mqtt_connects"), Some(0), "{what}: {last}");
    }
}

#[test]
fn tls_flags_with_a_plain_url_are_refused_at_start() {
    let ca = Authority::new("plain");
    let broker = spawn_broker_on_port_pair(quiet);
    let ca_file = ca.ca_file().display().to_string();
    let out = common::run(
        tool("thingsbus-mqtt-bridge")
            .args(["-u", &broker.endpoints().directory])
            .args(["--mqtt", "mqtt://127.0.0.1:1", "--mqtt-ca-file", &ca_file]),
    );
    assert_ne!(out.code(), 0);
    assert!(
        out.stderr.contains("write the URL as mqtts://"),
        "{}",
        out.stderr
    );
}

/// An MQTT node that behaves as pyaiot's `utils/mqtt/mqtt-test-node.py`: it subscribes to
/// `gateway/<id>/discover` and `gateway/<id>/led/set` first, then publishes `node/check` with
/// `{"id": ...}` (here every 200 ms instead of 30 s); it answers `resources` with the JSON list
/// of its resources and `values` with each `{"value": ...}`; a set of the LED publishes the
/// LED's new value. Values carry units as pyaiot's do (`23°C`, `1015hPa`).
struct TestNode {
    checking: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// What arrived on the node's topics, in order: (topic, payload).
    heard: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    client: rumqttc::Client,
}

impl TestNode {
    fn start(port: u16, id: &'static str) -> TestNode {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let mut opts = rumqttc::MqttOptions::new(format!("node-{id}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = rumqttc::Client::new(opts, 100);
        for t in [
            format!("gateway/{id}/discover"),
            format!("gateway/{id}/led/set"),
        ] {
            client
                .subscribe(t, rumqttc::QoS::AtLeastOnce)
                .expect("subscribe");
        }
        let heard = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (client.clone(), heard.clone());
        std::thread::spawn(move || {
            let mut led = "0".to_owned();
            let publish = |topic: String, payload: String| {
                let _ = c.try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload);
            };
            for n in connection.iter() {
                let p = match n {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => p,
                    Ok(_) => continue,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let data = String::from_utf8_lossy(&p.payload).into_owned();
                h.lock()
                    .expect("heard")
                    .push((p.topic.clone(), data.clone()));
                if p.topic.ends_with("/discover") && data == "resources" {
                    publish(
                        format!("node/{id}/resources"),
                        json!(["name", "os", "led", "temperature", "pressure"]).to_string(),
                    );
                } else if p.topic.ends_with("/discover") {
                    for (r, v) in [
                        ("name", "MQTT test node"),
                        ("os", "riot"),
                        ("led", led.as_str()),
                        ("temperature", "23°C"),
                        ("pressure", "1015hPa"),
                    ] {
                        publish(format!("node/{id}/{r}"), json!({ "value": v }).to_string());
                    }
                } else if p.topic.ends_with("/led/set") {
                    led = data.clone();
                    publish(
                        format!("node/{id}/led"),
                        json!({ "value": data }).to_string(),
                    );
                }
            }
        });
        let checking = Arc::new(AtomicBool::new(true));
        let (c, on) = (client.clone(), checking.clone());
        std::thread::spawn(move || loop {
            if on.load(Ordering::Relaxed)
                && c.try_publish(
                    "node/check",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    json!({ "id": id }).to_string(),
                )
                .is_err()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        });
        TestNode {
            checking,
            heard,
            client,
        }
    }

    /// Stops (or restarts) its node/check messages.
    fn checking(&self, on: bool) {
        self.checking
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The payloads that arrived on `topic`.
    fn heard(&self, topic: &str) -> Vec<String> {
        self.heard
            .lock()
            .expect("heard")
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// Waits until the thing `ns` holds `want`.
fn holds(c: &Client, ns: &str, want: &Value) {
    eventually(DEADLINE, &format!("{ns} = {want}"), || {
        c.get(ns).filter(|t| t.value() == *want)
    });
}

#[test]
fn pyaiot_mqtt_nodes_are_discovered_report_obey_and_go_offline_on_silence() {
    use thingsbus_client::CommandError;
    require_peers!(peers::MOSQUITTO);
    let broker = spawn_broker_on_port_pair(quiet);
    let mosquitto = Mosquitto::start(None);
    let mut b = bridge(
        &broker,
        &mosquitto,
        &[
            "--pyaiot-nodes",
            "home.mqtt",
            "--max-time",
            "3",
            "--max-payload",
            "1000",
        ],
    );
    let c = Client::builder()
        .url(&broker.endpoints().directory)
        .connect_blocking()
        .expect("client");
    // The bridge subscribes once connected; the node keeps checking in until it is heard.
    let node = TestNode::start(mosquitto.port, "mqtt_test_node");
    holds(
        &c,
        "home.mqtt.mqtt_test_node.temperature",
        &json!({"value": 23, "unit": "°C"}),
    );
    holds(
        &c,
        "home.mqtt.mqtt_test_node.pressure",
        &json!({"value": 1015, "unit": "hPa"}),
    );
    holds(
        &c,
        "home.mqtt.mqtt_test_node.name",
        &json!("MQTT test node"),
    );
    holds(&c, "home.mqtt.mqtt_test_node.led", &json!(0));
    let thing = c.get("home.mqtt.mqtt_test_node").expect("the node's thing");
    let t = thing.value();
    assert_eq!(t["uid"], "mqtt_test_node");
    assert_eq!(t["online"], true);
    assert!(t["last_alive"].is_f64(), "{t}");
    assert_eq!(
        t["resources"],
        json!(["led", "name", "os", "pressure", "temperature"])
    );
    assert!(
        t.get("address").is_none(),
        "MQTT nodes have no address: {t}"
    );
    assert_eq!(
        node.heard("gateway/mqtt_test_node/discover"),
        ["resources", "values"],
        "discovered once, as pyaiot does"
    );

    // A command: its data as text on gateway/<id>/led/set; the node's next report is the reply.
    let reply = eventually(DEADLINE, "the command route", || {
        match c.command_blocking(
            "home.mqtt.mqtt_test_node.led",
            &json!("1"),
            Duration::from_secs(5),
        ) {
            Err(CommandError::NoRoute(_)) => None,
            other => Some(other),
        }
    })
    .expect("the node reported its LED");
    assert_eq!(reply, json!(1));
    assert_eq!(node.heard("gateway/mqtt_test_node/led/set"), ["1"]);
    holds(&c, "home.mqtt.mqtt_test_node.led", &json!(1));

    // A resource the node does not act on: no report, `timeout` by the deadline.
    match c.command_blocking(
        "home.mqtt.mqtt_test_node.temperature",
        &json!(5),
        Duration::from_secs(2),
    ) {
        Err(CommandError::Timeout(_)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    match c.command_blocking(
        "home.mqtt.mqtt_test_node.nothing",
        &json!(1),
        Duration::from_secs(3),
    ) {
        Err(CommandError::Refused { error, .. }) => {
            assert!(error.contains("no resource"), "{error}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Malformed messages beside it: counted, and the node goes on as before.
    let bad = Watcher::connect(mosquitto.port, "bad", &[]);
    bad.publish("node/check", "not json");
    bad.publish("node/check", r#"{"id": "a/b"}"#);
    bad.publish("node/mqtt_test_node/led", r#"{"nope": 1}"#);
    bad.publish(
        "node/mqtt_test_node/led",
        &format!(r#"{{"value": "{}"}}"#, "9".repeat(2000)),
    );
    b.expect_stderr_line("the malformed messages counted", |l| {
        l.contains("pyaiot nodes report") && field(l, "malformed") == Some(4)
    });
    let reply = c
        .command_blocking(
            "home.mqtt.mqtt_test_node.led",
            &json!("0"),
            Duration::from_secs(5),
        )
        .expect("the node still obeys");
    assert_eq!(reply, json!(0));
    holds(&c, "home.mqtt.mqtt_test_node.led", &json!(0));

    // Silent past --max-time: offline at once; commands refused; a check brings it back,
    // discovered again.
    node.checking(false);
    eventually(DEADLINE, "the node offline", || {
        c.get("home.mqtt.mqtt_test_node")
            .filter(|t| t.value()["online"] == false)
    });
    match c.command_blocking(
        "home.mqtt.mqtt_test_node.led",
        &json!("1"),
        Duration::from_secs(3),
    ) {
        Err(CommandError::Refused { error, .. }) => assert!(error.contains("offline"), "{error}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    node.checking(true);
    eventually(DEADLINE, "the node back online", || {
        c.get("home.mqtt.mqtt_test_node")
            .filter(|t| t.value()["online"] == true)
    });
    eventually(DEADLINE, "a second discovery", || {
        (node.heard("gateway/mqtt_test_node/discover").len() == 4).then_some(())
    });

    b.signal("TERM");
    assert!(b.wait(DEADLINE).expect("stops").success());
    let log = b.wait_stderr("pyaiot nodes stopped");
    let line = log
        .lines()
        .find(|l| l.contains("pyaiot nodes stopped"))
        .expect("final counts");
    assert_eq!(field(line, "malformed"), Some(4), "{line}");
    assert_eq!(field(line, "commands_ok"), Some(2), "{line}");
    assert!(field(line, "values").is_some_and(|n| n >= 7), "{line}");
}
