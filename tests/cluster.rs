//! `--cluster`: brokers sharing one directory through a real NATS JetStream server.

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use thingsbus_broker::{ClusterAuth, ClusterConfig, ClusterTls};
use thingsbus_tests::certs::Authority;
use thingsbus_tests::nats::{Nats, NatsCluster};
use thingsbus_tests::py::PyPeer;
use thingsbus_tests::*;

fn clustered(nats: &Nats, node: &'static str) -> impl FnOnce(&mut Config) {
    on_cluster_with(vec![nats.url()], node, 1, ClusterAuth::None)
}

fn on_cluster_with(
    urls: Vec<String>,
    node: &'static str,
    replicas: usize,
    auth: ClusterAuth,
) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.stats_interval = Duration::ZERO;
        c.cluster = Some(ClusterConfig {
            bucket: "things".into(),
            replicas,
            flush: Duration::from_millis(20),
            auth,
            ..ClusterConfig::new(urls, node)
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
    require_peers!(peers::NATS_SERVER, peers::PYTHON_02);
    let nats = Nats::start(None, None);
    let a = spawn_broker(clustered(&nats, "a"));
    let b = spawn_broker(clustered(&nats, "b"));
    let on_b = client_for(&b).connect_blocking().expect("client");
    // A deployed 0.2.1 client of B too (the Python original).
    let mut py_b = PyPeer::ready(&["client", "--url", &b.endpoints().directory]);
    let input = ZmqInput::connect(&a);
    input.send_until(
        DEADLINE,
        "an update from A at a client of B",
        &json!(["site.a.temp", null, 21.5, "https://doc"]),
        || on_b.get("site.a.temp"),
    );
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
    for (ns, want) in [("site.a.temp", json!(21.5)), ("site.a.burst", json!(999))] {
        let got = eventually(DEADLINE, &format!("{ns} at the Python client of B"), || {
            let g = py_b.ask(&format!("get {ns}"), "get");
            (g["value"][1] == want).then_some(g)
        });
        assert!(
            got["value"][0].as_f64().is_some_and(|age| age < 60.0),
            "{got}"
        );
        if ns == "site.a.temp" {
            assert_eq!(got["documentation_url"], json!("https://doc"));
        }
    }
    assert!(py_b.ask("alive", "alive")["alive"] == true);
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
    require_peers!(peers::NATS_SERVER);
    let nats = Nats::start(None, None);
    let a = spawn_broker(clustered(&nats, "a"));
    let b = spawn_broker(clustered(&nats, "b"));
    let on_a = client_for(&a).connect_blocking().expect("client");
    let on_b = client_for(&b).connect_blocking().expect("client");
    let (to_a, to_b) = (ZmqInput::connect(&a), ZmqInput::connect(&b));
    let t0 = now();
    to_b.send_until(
        DEADLINE,
        "B's newer value everywhere",
        &json!(["shared.x", t0, "new", null]),
        || on_a.get("shared.x").filter(|t| t.value() == json!("new")),
    );
    // An older value sent to A afterwards overwrites B's newer one nowhere, A included.
    to_a.send_json(&json!(["shared.x", t0 - 10.0, "old", null]));
    eventually(DEADLINE, "A to drop the older value", || {
        (a.stats().cluster.older.load(Ordering::Relaxed) >= 1).then_some(())
    });
    // Later updates of A still reach B (the order of one flush's writes is not kept, so the
    // marker goes after the drop is seen).
    to_a.send_json(&json!(["shared.marker", null, 1, null]));
    value(&on_b, "shared.marker", json!(1));
    value(&on_a, "shared.marker", json!(1));
    assert_eq!(on_b.get("shared.x").map(|t| t.value()), Some(json!("new")));
    assert_eq!(on_a.get("shared.x").map(|t| t.value()), Some(json!("new")));
    // A value that is newer than what the bucket holds wins everywhere, from either broker.
    to_a.send_json(&json!(["shared.x", t0 + 1.0, "newer", null]));
    value(&on_b, "shared.x", json!("newer"));
    value(&on_a, "shared.x", json!("newer"));
}

#[test]
fn a_value_from_the_future_written_by_another_broker_is_not_applied() {
    require_peers!(peers::NATS_SERVER);
    let nats = Nats::start(None, None);
    // A trusts any clock (a broker configured carelessly, or an older one); B keeps the default.
    let a = spawn_broker(|c| {
        clustered(&nats, "a")(c);
        c.max_clock_skew = Duration::from_secs(10 * 365 * 86_400);
    });
    let b = spawn_broker(clustered(&nats, "b"));
    let on_b = client_for(&b).connect_blocking().expect("client");
    let to_a = ZmqInput::connect(&a);
    to_a.send_until(
        DEADLINE,
        "the link up",
        &json!(["future.hello", null, 1, null]),
        || on_b.get("future.hello"),
    );
    let future_before = b.stats().rejected(thingsbus_broker::Reason::FutureTs);
    to_a.send_json(&json!([
        "future.x",
        now() + 86_400.0,
        "from tomorrow",
        null
    ]));
    eventually(DEADLINE, "B to drop the value from the future", || {
        (b.stats().rejected(thingsbus_broker::Reason::FutureTs) > future_before).then_some(())
    });
    // B's own honest value of the thing is not shadowed by it.
    let to_b = ZmqInput::connect(&b);
    to_b.send_until(
        DEADLINE,
        "B's value of the thing",
        &json!(["future.x", null, "today", null]),
        || on_b.get("future.x").filter(|t| t.value() == json!("today")),
    );
}

/// Brokers A and B on one NATS, a client of each, A's input, and the link up (an update to A
/// reached B).
struct LinkedPair {
    a: Broker,
    b: Broker,
    on_a: thingsbus_client::Client,
    on_b: thingsbus_client::Client,
    input: ZmqInput,
}

impl LinkedPair {
    fn start(nats: &Nats) -> LinkedPair {
        let a = spawn_broker(clustered(nats, "a"));
        let b = spawn_broker(clustered(nats, "b"));
        let on_a = client_for(&a).connect_blocking().expect("client");
        let on_b = client_for(&b).connect_blocking().expect("client");
        let input = ZmqInput::connect(&a);
        input.send_until(
            DEADLINE,
            "the link up",
            &json!(["up.probe", null, 1, null]),
            || on_b.get("up.probe"),
        );
        LinkedPair {
            a,
            b,
            on_a,
            on_b,
            input,
        }
    }
}

#[test]
fn nats_away_the_broker_serves_locally_then_catches_up() {
    require_peers!(peers::NATS_SERVER);
    let mut nats = Nats::start(None, None);
    let (port, dir) = (nats.port(), nats.dir().to_owned());
    let LinkedPair {
        a,
        b,
        on_a,
        on_b,
        input,
    } = LinkedPair::start(&nats);
    nats.kill();
    // Locally nothing changes.
    input.send_json(&json!(["during.outage", null, "kept", null]));
    value(&on_a, "during.outage", json!("kept"));
    eventually(DEADLINE, "A to notice", || {
        (a.stats().cluster.connected.load(Ordering::Relaxed) == 0).then_some(())
    });
    // NATS back: what waited goes out, and B gets it.
    let mut nats = Nats::start(Some(port), Some(dir.clone()));
    value(&on_b, "during.outage", json!("kept"));
    // A quiet outage (nothing written before, during or after it): the link still reports
    // itself back, though no entry comes through the watch to say so.
    nats.kill();
    // B only watches: it notices at the link's 5 s check.
    eventually(3 * DEADLINE, "B to notice", || {
        (b.stats().cluster.connected.load(Ordering::Relaxed) == 0).then_some(())
    });
    let _nats = Nats::start(Some(port), Some(dir));
    // Reconnecting, then the link's 5 s check: more than the usual deadline.
    for broker in [&a, &b] {
        eventually(3 * DEADLINE, "the link back in a quiet bucket", || {
            (broker.stats().cluster.connected.load(Ordering::Relaxed) == 1).then_some(())
        });
        // NATS kept its storage: nothing was loaded again (the check reads the bucket's state
        // fresh, not as it was when the bucket was opened).
        assert_eq!(broker.stats().cluster.reloads.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn a_nats_that_lost_its_storage_is_used_again() {
    require_peers!(peers::NATS_SERVER);
    let mut nats = Nats::start(None, None);
    let port = nats.port();
    // A is kept running (bound, not `_`, which would drop it here).
    let LinkedPair {
        a: _a,
        b,
        on_a,
        on_b,
        input,
    } = LinkedPair::start(&nats);
    things_through(&input, &on_b, "before", 20, DEADLINE);
    // NATS comes back on the same port with an empty store: the stream starts again at 1.
    nats.kill();
    let empty = std::env::temp_dir().join(format!(
        "thingsbus-nats-empty-{}-{port}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&empty);
    let _fresh = Nats::start(Some(port), Some(empty));
    // One update (A retries its write until the new stream takes it): revision 1 of the new
    // stream, which a watch resuming after revision 20 or so would never see.
    input.send_json(&json!(["after.loss", null, "new", null]));
    value(&on_a, "after.loss", json!("new"));
    eventually(
        Duration::from_secs(40),
        "the update at B through the new stream",
        || on_b.get("after.loss"),
    );
    // How B got there depends on timing, and both ways are right: its 5-second check saw the
    // bucket younger than its last revision and watched it all again (a reload), or its watch's
    // consumer, recreated on the new stream, delivered it from revision 1 (seen under load).
    eprintln!(
        "B reloaded the bucket {} time(s)",
        b.stats().cluster.reloads.load(Ordering::Relaxed)
    );
}

/// Sends `prefix.t0` … `prefix.t{n-1}` (values 0 … n-1) to `input` once, and waits until
/// `client` holds all of them.
fn things_through(
    input: &ZmqInput,
    client: &thingsbus_client::Client,
    prefix: &str,
    n: usize,
    deadline: Duration,
) {
    for i in 0..n {
        input.send_json(&json!([format!("{prefix}.t{i}"), null, i, null]));
    }
    eventually(deadline, &format!("{n} things under {prefix}"), || {
        (client.walk(prefix).len() == n).then_some(())
    });
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

fn on_cluster(urls: Vec<String>, node: &'static str) -> impl FnOnce(&mut Config) {
    on_cluster_with(urls, node, 3, ClusterAuth::None)
}

#[test]
fn three_replicas_lose_nothing_acknowledged_when_a_server_dies() {
    require_peers!(peers::NATS_SERVER);
    let mut nats = NatsCluster::start();
    // A cluster elects its JetStream leader in a few seconds; the brokers retry until then.
    // (Started side by side: each waits for the cluster's directory before it serves.)
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn_broker(on_cluster(nats.urls(), "a")));
        let b = s.spawn(|| spawn_broker(on_cluster(nats.urls(), "b")));
        (a.join().expect("broker a"), b.join().expect("broker b"))
    });
    let on_b = client_for(&b).connect_blocking().expect("client");
    let input = ZmqInput::connect(&a);
    // Generous: after a server dies, electing a new stream leader and a late broker's load from
    // the two left took over 40 s once in a full suite run on 2 busy cores (22 s alone).
    let long = Duration::from_secs(120);
    input.send_until(
        long,
        "the cluster link up with 3 replicas",
        &json!(["first.probe", null, 1, null]),
        || on_b.get("first.probe"),
    );
    things_through(&input, &on_b, "before", 50, long);
    // One server goes (perhaps the stream's leader): writes fail until a new one is elected,
    // and are retried.
    nats.kill(0);
    things_through(&input, &on_b, "after", 50, long);
    // A broker started now loads all of it from the two servers left.
    let c = spawn_broker(on_cluster(nats.urls()[1..].to_vec(), "c"));
    let on_c = client_for(&c).connect_blocking().expect("client");
    assert!(on_c.wait_filled_blocking(DEADLINE));
    eventually(long, "everything at the late broker", || {
        (on_c.walk("before").len() == 50 && on_c.walk("after").len() == 50).then_some(())
    });
    assert_eq!(on_c.get("after.t49").map(|t| t.value()), Some(json!(49)));
}

fn serving_adaptor(broker: &Broker, base: &str) -> thingsbus_adaptor::Adaptor {
    thingsbus_adaptor::Adaptor::builder(base)
        .url(&broker.endpoints().input)
        .command_url(&broker.endpoints().command)
        .connect_blocking()
        .expect("adaptor")
}

/// Serves `base.sub`, answering `{"by": name, "ns": ns}`.
fn echo(broker: &Broker, base: &str, sub: &str, name: &'static str) -> thingsbus_adaptor::Adaptor {
    let a = serving_adaptor(broker, base);
    a.serve(sub, move |ns, _, _| async move {
        Ok(json!({"by": name, "ns": ns.as_str()}))
    })
    .expect("serve");
    eventually(DEADLINE, "the registration", || {
        a.is_serving().then_some(())
    });
    a
}

#[test]
fn a_command_to_any_broker_reaches_the_adaptor_on_another() {
    require_peers!(peers::NATS_SERVER);
    use thingsbus_client::CommandError;
    let nats = Nats::start(None, None);
    let a = spawn_broker(clustered(&nats, "a"));
    let b = spawn_broker(clustered(&nats, "b"));
    let t = Duration::from_secs(5);
    // The LED's adaptor is on B; a caller on A knows only the namespace.
    let led = echo(&b, "shop", "led", "led-on-b");
    let on_a = client_for(&a).connect_blocking().expect("client");
    let reply = eventually(DEADLINE, "A to learn B's route", || {
        on_a.command_blocking("shop.led.red", &json!({"on": true}), t)
            .ok()
    });
    assert_eq!(reply, json!({"by": "led-on-b", "ns": "shop.led.red"}));
    assert!(a.stats().commands.forwarded.load(Ordering::Relaxed) >= 1);
    assert!(b.stats().commands.from_brokers.load(Ordering::Relaxed) >= 1);

    // Longest prefix across brokers: a broader prefix served on A does not take B's.
    let _shop = echo(&a, "shop", "", "shop-on-a");
    let by = |ns: &str| on_a.command_blocking(ns, &json!(null), t).expect("reply")["by"].clone();
    assert_eq!(by("shop.led.red"), json!("led-on-b"));
    assert_eq!(by("shop.door"), json!("shop-on-a"));
    // Equal prefixes: the newest registration wins, wherever it is.
    let newer = echo(&a, "shop", "led", "led-on-a");
    eventually(DEADLINE, "the newer registration on A to win", || {
        (by("shop.led.red") == json!("led-on-a")).then_some(())
    });

    // The errors pass through unchanged: a refusal and a timeout on B, seen from A.
    let lab = serving_adaptor(&b, "lab");
    lab.serve("broken", |_, _, _| async {
        Err("led is broken".to_owned())
    })
    .expect("serve");
    lab.serve("slow", |_, _, _| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(json!("too late"))
    })
    .expect("serve");
    eventually(DEADLINE, "A to learn lab.*", || {
        on_a.command_blocking("lab.broken", &json!(1), t)
            .err()
            .filter(|e| !matches!(e, CommandError::NoRoute(_)))
    });
    match on_a.command_blocking("lab.broken", &json!(1), t) {
        Err(CommandError::Refused { error, .. }) => assert_eq!(error, "led is broken"),
        other => panic!("expected the thing's refusal, got {other:?}"),
    }
    match on_a.command_blocking("lab.slow", &json!(1), Duration::from_millis(300)) {
        Err(CommandError::Timeout(_)) => {}
        other => panic!("expected timeout, got {other:?}"),
    }
    match on_a.command_blocking("nowhere.at.all", &json!(1), t) {
        Err(CommandError::NoRoute(_)) => {}
        other => panic!("expected no_route, got {other:?}"),
    }

    // B stops: its routes are withdrawn, and A answers no_route instead of waiting.
    drop(lab);
    drop(led);
    drop(b);
    eventually(DEADLINE, "B's routes to be withdrawn", || {
        matches!(
            on_a.command_blocking("lab.broken", &json!(1), t),
            Err(CommandError::NoRoute(_))
        )
        .then_some(())
    });
    assert_eq!(by("shop.led.red"), json!("led-on-a"));
    assert_eq!(by("shop.door"), json!("shop-on-a"));
    drop(newer);
}

#[test]
fn credentials_reach_nats_and_wrong_ones_leave_the_broker_serving_locally() {
    require_peers!(peers::NATS_SERVER);
    let token = Nats::start_with(None, None, &["--auth", "s3cret-token"]);
    let users = Nats::start_with(None, None, &["--user", "broker", "--pass", "s3cret-pass"]);
    let auth = |n: &Nats, node, auth| on_cluster_with(vec![n.url()], node, 1, auth);
    let a = spawn_broker(auth(&token, "a", ClusterAuth::Token("s3cret-token".into())));
    let b = spawn_broker(auth(&token, "b", ClusterAuth::Token("s3cret-token".into())));
    let c = spawn_broker(auth(
        &users,
        "c",
        ClusterAuth::UserPassword("broker".into(), "s3cret-pass".into()),
    ));
    // (It waits out its load time-out, so it starts beside the rest.)
    let wrong = {
        let tweak = auth(&token, "w", ClusterAuth::Token("wrong".into()));
        std::thread::spawn(move || spawn_broker(tweak))
    };
    for (broker, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        eventually(DEADLINE, &format!("{name} linked to NATS"), || {
            (broker.stats().cluster.connected.load(Ordering::Relaxed) == 1).then_some(())
        });
    }
    // With the token, A's update reaches B.
    let on_b = client_for(&b).connect_blocking().expect("client");
    let to_a = ZmqInput::connect(&a);
    to_a.send_until(
        DEADLINE,
        "A's update at B",
        &json!(["auth.t", null, 1, null]),
        || on_b.get("auth.t"),
    );
    let on_c = client_for(&c).connect_blocking().expect("client");
    let to_c = ZmqInput::connect(&c);
    to_c.send_until(
        DEADLINE,
        "C's update (user and password)",
        &json!(["auth.u", null, 1, null]),
        || on_c.get("auth.u"),
    );
    assert!(c.stats().cluster.writes.load(Ordering::Relaxed) >= 1);
    // A wrong token: no link, and the broker still serves its own clients.
    let wrong = wrong.join().expect("broker w");
    let on_wrong = client_for(&wrong).connect_blocking().expect("client");
    let input = ZmqInput::connect(&wrong);
    input.send_until(
        DEADLINE,
        "the unlinked broker to serve locally",
        &json!(["auth.local", null, 2, null]),
        || on_wrong.get("auth.local"),
    );
    assert_eq!(wrong.stats().cluster.connected.load(Ordering::Relaxed), 0);
    assert!(on_b.get("auth.local").is_none());
}

/// A TCP link between two ports that the test can cut and restore, like a site's uplink.
struct Uplink {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Uplink {
    fn to(target: u16) -> Uplink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (up2, open2, stop2) = (up.clone(), open.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((inside, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if !up2.load(Ordering::Relaxed) {
                    continue; // dropped: the link is down
                }
                let Ok(outside) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = inside.set_nonblocking(false);
                let mut held = open2.lock().expect("lock");
                for (from, to) in [(&inside, &outside), (&outside, &inside)] {
                    let (mut r, mut w) = (
                        from.try_clone().expect("clone"),
                        to.try_clone().expect("clone"),
                    );
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut r, &mut w);
                        let _ = w.shutdown(std::net::Shutdown::Both);
                    });
                }
                held.push(inside);
                held.push(outside);
            }
        });
        Uplink {
            port,
            up,
            open,
            stop,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::Relaxed);
        for s in self.open.lock().expect("lock").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::Relaxed);
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

#[test]
fn a_leaf_node_site_works_alone_while_cut_off_and_converges_when_back() {
    require_peers!(peers::NATS_SERVER);
    // Centre: a JetStream server with a leaf-node port (not advertised, so that the leaf node
    // cannot go around the cut). Site: a leaf node (no JetStream of its own) whose uplink runs
    // through a link the test can cut.
    let ports = free_ports(3);
    let hub = Nats::configured(
        "hub",
        ports[0],
        &format!(
            "jetstream {{ store_dir: \"STORE\", domain: \"centre\" }}\nleafnodes {{ listen: \"127.0.0.1:{}\", no_advertise: true }}\n",
            ports[1]
        ),
    );
    let uplink = Uplink::to(ports[1]);
    let leaf = Nats::configured(
        "leaf",
        ports[2],
        &format!(
            "leafnodes {{ remotes = [ {{ url: \"nats-leaf://127.0.0.1:{}\" }} ] }}\n",
            uplink.port
        ),
    );
    // Both name the centre's JetStream domain: the site reaches it through its leaf node.
    let in_domain = |url: String, node: &'static str| {
        move |c: &mut Config| {
            on_cluster_with(vec![url], node, 1, ClusterAuth::None)(c);
            if let Some(cc) = c.cluster.as_mut() {
                cc.domain = Some("centre".into());
            }
        }
    };
    let centre = spawn_broker(in_domain(hub.url(), "centre"));
    let site = spawn_broker(in_domain(leaf.url(), "site"));
    let on_centre = client_for(&centre).connect_blocking().expect("client");
    let on_site = client_for(&site).connect_blocking().expect("client");
    let (to_centre, to_site) = (ZmqInput::connect(&centre), ZmqInput::connect(&site));
    let long = Duration::from_secs(40);
    to_site.send_until(
        long,
        "the site's update at the centre",
        &json!(["site.door", null, "closed", null]),
        || on_centre.get("site.door"),
    );
    // A command from the centre reaches the site's adaptor through the leaf node.
    let door = echo(&site, "site", "door", "site-door");
    let reply = eventually(long, "the centre to learn the site's route", || {
        on_centre
            .command_blocking("site.door", &json!("open"), Duration::from_secs(5))
            .ok()
    });
    assert_eq!(reply["by"], json!("site-door"));

    // The uplink goes down: each side goes on alone.
    uplink.cut();
    to_site.send_json(&json!(["site.temp", null, 19.5, null]));
    to_centre.send_json(&json!(["centre.alarm", null, "armed", null]));
    value(&on_site, "site.temp", json!(19.5));
    value(&on_centre, "centre.alarm", json!("armed"));
    eventually(long, "the site to notice the centre is away", || {
        (site.stats().cluster.connected.load(Ordering::Relaxed) == 0).then_some(())
    });
    assert!(on_centre.get("site.temp").is_none());
    assert!(on_site.get("centre.alarm").is_none());

    // Back: both converge, no restart.
    uplink.restore();
    eventually(long, "both sides to converge", || {
        (on_centre
            .get("site.temp")
            .is_some_and(|t| t.value() == json!(19.5))
            && on_site
                .get("centre.alarm")
                .is_some_and(|t| t.value() == json!("armed")))
        .then_some(())
    });
    drop(door);
}

#[test]
fn with_srv_a_client_whose_broker_dies_moves_to_the_next_with_the_whole_directory() {
    require_peers!(peers::NATS_SERVER);
    use thingsbus_tests::dns::{DnsServer, SrvRecord};
    let nats = Nats::start(None, None);
    let listed = |node: &'static str| {
        let url = nats.url();
        move |c: &mut Config| {
            on_cluster_with(vec![url.clone()], node, 1, ClusterAuth::None)(c);
            c.snapshot_interval = Duration::from_millis(300);
        }
    };
    let first = spawn_broker_on_port_pair(listed("first"));
    let second = spawn_broker_on_port_pair(listed("second"));
    // A broker elsewhere (another site), not in this zone's SRV records.
    let elsewhere = spawn_broker(clustered(&nats, "elsewhere"));
    let srv = |port: u16, priority: u16| SrvRecord {
        name: "_thingsbus._tcp.example.org".into(),
        priority,
        weight: 0,
        port,
        target: "broker.example.org.".into(),
    };
    let dns = DnsServer::start(
        "example.org",
        &[
            srv(first.endpoints().directory_port, 10),
            srv(second.endpoints().directory_port, 20),
        ],
        &[("broker.example.org", std::net::Ipv4Addr::LOCALHOST)],
    );
    let client = thingsbus_client::Client::builder()
        .zone("example.org")
        .nameserver(dns.addr())
        .failover_timeout(Duration::from_millis(500))
        .connect_blocking()
        .expect("client");
    let (to_first, to_elsewhere) = (ZmqInput::connect(&first), ZmqInput::connect(&elsewhere));
    let all_of = |client: &thingsbus_client::Client, n: usize| {
        client.walk("here").len() == n && client.walk("there").len() == n
    };
    eventually(
        DEADLINE,
        "the whole directory through the first broker",
        || {
            for i in 0..20 {
                to_first.send_json(&json!([format!("here.t{i}"), null, i, null]));
                to_elsewhere.send_json(&json!([format!("there.t{i}"), null, i, null]));
            }
            std::thread::sleep(Duration::from_millis(100));
            all_of(&client, 20).then_some(())
        },
    );
    assert_eq!(client.stats().failovers, 0);

    // The first broker dies; what was written to it lives on in the bucket. Things written
    // elsewhere while the client is between brokers reach it only through the second broker's
    // directory.
    let replies_before = client.stats().snapshot_replies;
    drop(to_first);
    drop(first);
    for i in 0..20 {
        to_elsewhere.send_json(&json!([format!("gap.t{i}"), null, i, null]));
    }
    eventually(DEADLINE, "the client to move to the second broker", || {
        (client.stats().failovers >= 1).then_some(())
    });
    assert!(client
        .url()
        .ends_with(&format!(":{}", second.endpoints().directory_port)));
    eventually(DEADLINE, "the whole directory at the second", || {
        (all_of(&client, 20) && client.walk("gap").len() == 20).then_some(())
    });
    assert!(client.stats().snapshot_replies > replies_before);
    for i in 0..20 {
        for prefix in ["here", "there", "gap"] {
            let t = client.get(&format!("{prefix}.t{i}")).expect("thing");
            assert_eq!(t.value(), json!(i));
            assert!(!t.stale);
        }
    }
    // And it goes on live.
    to_elsewhere.send_until(
        DEADLINE,
        "a new update after the move",
        &json!(["there.after", null, 1, null]),
        || client.get("there.after"),
    );
}

#[test]
fn a_current_nats_release_works_as_well_as_debians() {
    require_peers!(peers::NATS_SERVER, peers::NATS_CURRENT);
    let binary = peers::nats_current().expect("required above");
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .expect("version");
    assert!(String::from_utf8_lossy(&version.stdout).contains("v2.15"));
    let nats = Nats::start_binary(&binary, None, None, &[]);
    let a = spawn_broker(clustered(&nats, "a"));
    let b = spawn_broker(clustered(&nats, "b"));
    let on_b = client_for(&b).connect_blocking().expect("client");
    let to_a = ZmqInput::connect(&a);
    to_a.send_until(
        DEADLINE,
        "A's update at B",
        &json!(["current.x", null, 1, null]),
        || on_b.get("current.x"),
    );
    // A late broker loads it; a command crosses.
    let c = spawn_broker(clustered(&nats, "c"));
    let on_c = client_for(&c).connect_blocking().expect("client");
    assert!(on_c.wait_filled_blocking(DEADLINE));
    assert_eq!(on_c.get("current.x").map(|t| t.value()), Some(json!(1)));
    let _led = echo(&b, "current", "led", "led-on-b");
    let reply = eventually(DEADLINE, "C to learn B's route", || {
        on_c.command_blocking("current.led", &json!(1), Duration::from_secs(5))
            .ok()
    });
    assert_eq!(reply["by"], json!("led-on-b"));
}

/// A NATS server whose only listener is TLS with `verify: true`: clients need a certificate
/// signed by `ca`.
fn nats_tls(ca: &Authority) -> Nats {
    let server = ca.server("nats");
    let conf = format!(
        "jetstream {{ store_dir: \"STORE\" }}\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        server.cert.display(),
        server.key.display(),
        ca.ca_file().display()
    );
    Nats::configured("tls", free_ports(1)[0], &conf)
}

fn over_tls(nats: &Nats, node: &'static str, tls: ClusterTls) -> impl FnOnce(&mut Config) {
    let url = nats.url();
    move |c: &mut Config| {
        on_cluster_with(vec![url], node, 1, ClusterAuth::None)(c);
        if let Some(cluster) = &mut c.cluster {
            cluster.tls = tls;
        }
    }
}

#[test]
fn nats_over_tls_with_a_client_certificate_links_and_a_wrong_ca_does_not() {
    require_peers!(peers::NATS_SERVER);
    let ca = Authority::new("nats");
    let other = Authority::new("other");
    let nats = nats_tls(&ca);
    let good = |name: &str| {
        let client = ca.client(name);
        ClusterTls {
            ca_file: Some(ca.ca_file().to_owned()),
            cert: Some(client.cert),
            key: Some(client.key),
        }
    };
    // Brokers that fail to link wait out their load time-out: started beside the rest.
    let refused = [
        (
            "a CA that did not sign the server",
            ClusterTls {
                ca_file: Some(other.ca_file().to_owned()),
                ..good("w1")
            },
        ),
        (
            "no client certificate",
            ClusterTls {
                ca_file: Some(ca.ca_file().to_owned()),
                ..ClusterTls::default()
            },
        ),
        ("a client certificate from another CA", {
            let stranger = other.client("w3");
            ClusterTls {
                cert: Some(stranger.cert),
                key: Some(stranger.key),
                ..good("w3")
            }
        }),
    ]
    .map(|(what, tls)| {
        let tweak = over_tls(&nats, "w", tls);
        (what, std::thread::spawn(move || spawn_broker(tweak)))
    });
    let a = spawn_broker(over_tls(&nats, "a", good("a")));
    let b = spawn_broker(over_tls(&nats, "b", good("b")));
    let on_b = client_for(&b).connect_blocking().expect("client");
    ZmqInput::connect(&a).send_until(
        DEADLINE,
        "A's update at B, over TLS",
        &json!(["tls.t", null, 1, null]),
        || on_b.get("tls.t"),
    );
    for (what, broker) in refused {
        let broker = broker.join().expect(what);
        // Not linked, and still serving its own clients.
        let on = client_for(&broker).connect_blocking().expect("client");
        ZmqInput::connect(&broker).send_until(
            DEADLINE,
            &format!("{what}: the unlinked broker serves locally"),
            &json!(["tls.local", null, 2, null]),
            || on.get("tls.local"),
        );
        assert_eq!(
            broker.stats().cluster.connected.load(Ordering::Relaxed),
            0,
            "{what}"
        );
        assert_eq!(
            broker.stats().cluster.writes.load(Ordering::Relaxed),
            0,
            "{what}"
        );
    }
    assert!(on_b.get("tls.local").is_none());
}

#[test]
fn unreadable_tls_files_stop_the_start_with_the_flag_named() {
    let missing = std::env::temp_dir().join("thingsbus-no-such-ca.pem");
    let mut config = Config::ephemeral();
    on_cluster_with(vec!["nats://127.0.0.1:1".into()], "x", 1, ClusterAuth::None)(&mut config);
    if let Some(c) = &mut config.cluster {
        c.tls.ca_file = Some(missing);
    }
    let e = Broker::start(config).map(|_| ()).expect_err("refused");
    assert!(e.to_string().contains("--cluster-ca-file"), "{e}");
}

#[test]
fn a_broker_with_an_accept_list_believes_only_those_brokers_routes() {
    require_peers!(peers::NATS_SERVER);
    use thingsbus_client::CommandError;
    let nats = Nats::start(None, None);
    let a = spawn_broker(clustered(&nats, "a"));
    let c = spawn_broker(clustered(&nats, "c"));
    let on_nats = clustered(&nats, "b");
    let b = spawn_broker(move |cfg: &mut Config| {
        on_nats(cfg);
        if let Some(cluster) = &mut cfg.cluster {
            cluster.accept_nodes = Some(vec!["a".into()]);
        }
    });
    let t = Duration::from_secs(5);
    let _led = echo(&a, "shop", "led", "led-on-a");
    let _lab = echo(&c, "lab", "x", "lab-on-c");
    // A believes everyone: C's route is real.
    let on_a = client_for(&a).connect_blocking().expect("client");
    eventually(DEADLINE, "A to learn C's route", || {
        on_a.command_blocking("lab.x", &json!(1), t).ok()
    });
    // B believes A...
    let on_b = client_for(&b).connect_blocking().expect("client");
    let reply = eventually(DEADLINE, "B to learn A's route", || {
        on_b.command_blocking("shop.led", &json!(1), t).ok()
    });
    assert_eq!(reply["by"], json!("led-on-a"));
    // ...and ignores C's announcements, counting them.
    eventually(DEADLINE, "B to ignore an announcement of C", || {
        (b.stats()
            .cluster
            .announcements_ignored
            .load(Ordering::Relaxed)
            >= 1)
            .then_some(())
    });
    match on_b.command_blocking("lab.x", &json!(1), t) {
        Err(CommandError::NoRoute(_)) => {}
        other => panic!("B used a route of C, which it does not accept: {other:?}"),
    }
    assert_eq!(
        a.stats()
            .cluster
            .announcements_ignored
            .load(Ordering::Relaxed),
        0
    );
}

#[test]
fn a_conflate_thread_that_falls_behind_loses_no_thing_s_newest_value() {
    require_peers!(peers::NATS_SERVER);
    let nats = Nats::start(None, None);
    // A's conflate thread sleeps 5 s on its first batch (debug builds' fault hook): meanwhile
    // ingest fills its hand-over queue (16 batches) and then keeps the changed things marked in
    // the directory, the newest values included.
    let on_nats = clustered(&nats, "a");
    let a = spawn_broker(move |c: &mut Config| {
        on_nats(c);
        c.fault = Some("thingsbus-conflate=stall:5000".into());
    });
    let b = spawn_broker(clustered(&nats, "b"));
    let on_b = client_for(&b).connect_blocking().expect("client");
    let input = ZmqInput::connect(&a);
    // Wait until A's input is connected (a probe reaches A's own directory).
    let on_a = client_for(&a).connect_blocking().expect("client");
    input.send_until(
        DEADLINE,
        "A's input",
        &json!(["behind.start", null, 0, null]),
        || on_a.get("behind.start"),
    );
    // Rounds of 50 things, a round every few milliseconds, each round a new value for every
    // thing: more hand-overs than the queue holds while the conflate thread sleeps.
    let (things, rounds) = (50, 30);
    for round in 0..rounds {
        for t in 0..things {
            input.send_json(&json!([format!("behind.t{t}"), null, round, null]));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let last = rounds - 1;
    value(&on_a, &format!("behind.t{}", things - 1), json!(last));
    // It is behind with the newest values in A's directory: ingest still finds it so.
    let behind = || a.stats().cluster.behind.load(Ordering::Relaxed);
    let seen = behind();
    eventually(
        DEADLINE,
        "A's conflate thread behind after the last round",
        || (behind() > seen).then_some(()),
    );
    // ...and every thing's newest value reached B.
    for t in 0..things {
        value(&on_b, &format!("behind.t{t}"), json!(last));
    }
}

/// The `authorization` block of docs/nats-permissions.md, as the document has it.
fn documented_permissions() -> String {
    let doc = include_str!("../docs/nats-permissions.md");
    let from = doc
        .find("<!-- nats-permissions-example")
        .expect("the example's marker in docs/nats-permissions.md");
    let block = &doc[from..];
    let start = block.find("```text\n").expect("the example's block") + "```text\n".len();
    let end = block[start..].find("```").expect("the end of the block");
    block[start..start + end].to_owned()
}

#[test]
fn the_documented_nats_permissions_are_enough_for_updates_and_commands() {
    require_peers!(peers::NATS_SERVER);
    let conf = format!(
        "jetstream {{ store_dir: \"STORE\" }}\n{}",
        documented_permissions()
    );
    let nats = Nats::configured("perms", free_ports(1)[0], &conf);
    let as_user = |node: &'static str, password: &str| {
        let tweak = on_cluster_with(
            vec![nats.url()],
            node,
            1,
            ClusterAuth::UserPassword(node.into(), password.into()),
        );
        move |c: &mut Config| {
            tweak(c);
            if let Some(cluster) = &mut c.cluster {
                // The document is written for the default bucket.
                cluster.bucket = "thingsbus".into();
            }
        }
    };
    let a = spawn_broker(as_user("broker-a", "CHANGE-ME-a"));
    let b = spawn_broker(as_user("broker-b", "CHANGE-ME-b"));
    for (broker, name) in [(&a, "a"), (&b, "b")] {
        let end = std::time::Instant::now() + DEADLINE;
        while broker.stats().cluster.connected.load(Ordering::Relaxed) != 1 {
            assert!(
                std::time::Instant::now() < end,
                "{name} not linked to NATS; the server logged:\n{}",
                nats.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Updates both ways.
    let (on_a, on_b) = (
        client_for(&a).connect_blocking().expect("client"),
        client_for(&b).connect_blocking().expect("client"),
    );
    ZmqInput::connect(&a).send_until(
        DEADLINE,
        "A's update at B",
        &json!(["perm.a", null, 1, null]),
        || on_b.get("perm.a"),
    );
    ZmqInput::connect(&b).send_until(
        DEADLINE,
        "B's update at A",
        &json!(["perm.b", null, 2, null]),
        || on_a.get("perm.b"),
    );
    // Commands both ways.
    let t = Duration::from_secs(5);
    let _on_b = echo(&b, "lamp", "b", "served-on-b");
    let _on_a = echo(&a, "lamp", "a", "served-on-a");
    let reply = eventually(DEADLINE, "a command from A to B's adaptor", || {
        on_a.command_blocking("lamp.b", &json!(1), t).ok()
    });
    assert_eq!(reply["by"], json!("served-on-b"));
    let reply = eventually(DEADLINE, "a command from B to A's adaptor", || {
        on_b.command_blocking("lamp.a", &json!(1), t).ok()
    });
    assert_eq!(reply["by"], json!("served-on-a"));
    let log = nats.log();
    assert!(
        !log.contains("Violation"),
        "nats-server refused something the brokers do:\n{log}"
    );
}
