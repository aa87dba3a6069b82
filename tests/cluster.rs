//! `--cluster`: brokers sharing one directory through a real NATS JetStream server.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use thingsbus_broker::ClusterConfig;
use thingsbus_tests::*;

/// A `nats-server -js` on 127.0.0.1 (Debian's 2.9 or newer), killed on drop.
struct Nats {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Nats {
    fn start(port: Option<u16>, dir: Option<std::path::PathBuf>) -> Nats {
        let port = port.unwrap_or_else(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        });
        let dir = dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("thingsbus-nats-{}-{port}", std::process::id()))
        });
        std::fs::create_dir_all(&dir).expect("store dir");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-sd")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (Debian package nats-server; .ci/run installs it)");
        eventually(DEADLINE, "nats-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
        Nats { child, port, dir }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn clustered(nats: &Nats, node: &'static str) -> impl FnOnce(&mut Config) {
    let url = nats.url();
    move |c: &mut Config| {
        c.stats_interval = Duration::ZERO;
        c.cluster = Some(ClusterConfig {
            urls: vec![url],
            bucket: "things".into(),
            replicas: 1,
            node_name: node.into(),
            flush: Duration::from_millis(20),
        });
    }
}

fn value(client: &thingsbus_client::Client, ns: &str, want: serde_json::Value) {
    eventually(DEADLINE, &format!("{ns} = {want}"), || {
        client.get(ns).filter(|t| t.value() == want).map(|_| ())
    });
}

#[test]
fn an_update_to_one_broker_reaches_clients_of_another_and_late_brokers_load_it_all() {
    let nats = Nats::start(None, None);
    let a = spawn_broker(clustered(&nats, "a"));
    let b = spawn_broker(clustered(&nats, "b"));
    let on_b = client_for(&b).connect_blocking().expect("client");
    let input = ZmqInput::connect(&a);
    eventually(DEADLINE, "an update from A at a client of B", || {
        input.send_json(&json!(["site.a.temp", null, 21.5, "https://doc"]));
        std::thread::sleep(Duration::from_millis(50));
        on_b.get("site.a.temp")
    });
    let t = on_b.get("site.a.temp").expect("thing");
    assert_eq!(t.value(), json!(21.5));
    assert_eq!(t.documentation_url.as_deref(), Some("https://doc"));
    assert!(b.stats().cluster.applied.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        a.stats().cluster.applied.load(Ordering::Relaxed),
        0,
        "no echo of A's own writes"
    );

    // Conflation: a burst of one thing costs few writes; the last value wins everywhere.
    let writes_before = a.stats().cluster.writes.load(Ordering::Relaxed);
    for i in 0..1000 {
        input.send_json(&json!(["site.a.burst", null, i, null]));
    }
    value(&on_b, "site.a.burst", json!(999));
    let writes = a.stats().cluster.writes.load(Ordering::Relaxed) - writes_before;
    assert!(
        writes < 200,
        "{writes} writes for 1,000 updates of one thing"
    );
    assert!(a.stats().cluster.conflated.load(Ordering::Relaxed) > 0);

    // A broker started now has everything before it serves: its first answer holds it.
    let c = spawn_broker(clustered(&nats, "c"));
    let on_c = client_for(&c).connect_blocking().expect("client");
    assert!(on_c.wait_filled_blocking(DEADLINE));
    assert_eq!(
        on_c.get("site.a.temp").map(|t| t.value()),
        Some(json!(21.5))
    );
    assert_eq!(
        on_c.get("site.a.burst").map(|t| t.value()),
        Some(json!(999))
    );
}

#[test]
fn the_newest_ts_wins_whichever_broker_wrote_last() {
    let nats = Nats::start(None, None);
    let a = spawn_broker(clustered(&nats, "a"));
    let b = spawn_broker(clustered(&nats, "b"));
    let on_a = client_for(&a).connect_blocking().expect("client");
    let on_b = client_for(&b).connect_blocking().expect("client");
    let (to_a, to_b) = (ZmqInput::connect(&a), ZmqInput::connect(&b));
    let t0 = now();
    eventually(DEADLINE, "B's newer value everywhere", || {
        to_b.send_json(&json!(["shared.x", t0, "new", null]));
        std::thread::sleep(Duration::from_millis(50));
        on_a.get("shared.x").filter(|t| t.value() == json!("new"))
    });
    // An older value written on A afterwards does not overwrite B's newer one.
    to_a.send_json(&json!(["shared.x", t0 - 10.0, "old", null]));
    to_a.send_json(&json!(["shared.marker", null, 1, null]));
    value(&on_b, "shared.marker", json!(1));
    assert_eq!(on_b.get("shared.x").map(|t| t.value()), Some(json!("new")));
    assert!(b.stats().cluster.older.load(Ordering::Relaxed) >= 1);
}

#[test]
fn nats_away_the_broker_serves_locally_then_catches_up() {
    let mut nats = Nats::start(None, None);
    let (port, dir) = (nats.port, nats.dir.clone());
    let a = spawn_broker(clustered(&nats, "a"));
    let b = spawn_broker(clustered(&nats, "b"));
    let on_a = client_for(&a).connect_blocking().expect("client");
    let on_b = client_for(&b).connect_blocking().expect("client");
    let input = ZmqInput::connect(&a);
    eventually(DEADLINE, "the link up", || {
        input.send_json(&json!(["up.probe", null, 1, null]));
        std::thread::sleep(Duration::from_millis(50));
        on_b.get("up.probe")
    });
    nats.kill();
    // Locally nothing changes.
    input.send_json(&json!(["during.outage", null, "kept", null]));
    value(&on_a, "during.outage", json!("kept"));
    eventually(DEADLINE, "A to notice", || {
        (a.stats().cluster.connected.load(Ordering::Relaxed) == 0).then_some(())
    });
    // NATS back: what waited goes out, and B gets it.
    let _nats = Nats::start(Some(port), Some(dir));
    value(&on_b, "during.outage", json!("kept"));
}
