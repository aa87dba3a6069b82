//! End to end: adaptor (ZMQ and UDP) → broker → client, found through DNS SRV.

use std::time::Duration;

use serde_json::json;
use thingsbus_adaptor::{Adaptor, UdpForm};
use thingsbus_client::{Client, Event, EventKind, SubscribeOptions, Subscription};
use thingsbus_tests::*;

async fn next_event(sub: &mut Subscription) -> Event {
    tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("an event within the deadline")
        .expect("client alive")
        .expect("not lagged")
}

/// Snapshots this often in these tests, so that a client knows when its subscription is live.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(200);

fn quick_snapshots(c: &mut Config) {
    c.snapshot_interval = SNAPSHOT_EVERY;
}

/// A client whose subscription is live: it has received a complete snapshot. (ZMQ drops what a
/// broker publishes before the subscriber is connected.)
async fn live_client(url: &str) -> Client {
    let client = Client::builder().url(url).connect().await.expect("client");
    assert!(
        client.wait_filled(DEADLINE).await,
        "no snapshot reached the client"
    );
    client
}

async fn wait_for_value(client: &Client, ns: &str, value: serde_json::Value) {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        if client.get(ns).is_some_and(|t| t.value() == value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{ns} never became {value}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zmq_and_udp_adaptors_to_client_through_srv() {
    let broker = spawn_broker_on_port_pair(quick_snapshots);
    let dns = dns_for(&broker);
    let client = Client::builder()
        .zone("example.org")
        .nameserver(dns.addr())
        .connect()
        .await
        .expect("client via SRV");
    // The SRV target is resolved through the same name server.
    assert_eq!(
        client.url(),
        format!("tcp://127.0.0.1:{}", broker.endpoints().directory_port)
    );
    assert!(client.wait_filled(DEADLINE).await);
    let zmq = Adaptor::builder("shop.shopbot")
        .zone("example.org")
        .nameserver(dns.addr())
        .documentation_url("http://example.com/Shopbot")
        .connect()
        .await
        .expect("ZMQ adaptor via SRV");
    let udp = Adaptor::builder("garden")
        .zone("example.org")
        .nameserver(dns.addr())
        .prefer_udp(true)
        .connect()
        .await
        .expect("UDP adaptor via SRV");
    let udp_map = Adaptor::builder("garden.map")
        .udp(&broker.endpoints().udp.to_string())
        .udp_form(UdpForm::Map)
        .connect()
        .await
        .expect("UDP adaptor by address");
    let mut all = client
        .subscribe("", SubscribeOptions::new().tree(true))
        .expect("subscribe");

    zmq.send(&json!({"busy": 12.0})).expect("send");
    zmq.send_to("spacemon", &json!({"light": 31.8}), Some(1_700_000_000.5))
        .expect("send_to");
    wait_for_value(&client, "shop.shopbot", json!({"busy": 12.0})).await;
    wait_for_value(&client, "shop.shopbot.spacemon", json!({"light": 31.8})).await;
    let t = client.get("shop.shopbot.spacemon").expect("thing");
    assert_eq!(t.ts, 1_700_000_000.5);
    assert_eq!(
        t.documentation_url.as_deref(),
        Some("http://example.com/Shopbot")
    );
    assert!(t.seq.is_some());
    let base = client.get("shop.shopbot").expect("thing");
    assert!(
        base.age() >= 0.0 && base.age() < 10.0,
        "null ts stamped by the broker: {}",
        base.age()
    );

    // UDP needs the subscriber connected at the broker: retry until seen (datagrams are not queued).
    let sent = udp.send_to("temp", &json!(21.5), None);
    sent.expect("udp send");
    for n in 0.. {
        if client.get("garden.temp").is_some() {
            break;
        }
        assert!(n < 1000, "UDP update never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    udp_map.send(&json!([1, 2])).expect("map form");
    wait_for_value(&client, "garden.map", json!([1, 2])).await;

    // The tree: every prefix exists.
    let kids: Vec<String> = client
        .children("")
        .iter()
        .map(ToString::to_string)
        .collect();
    // The broker's own thing, thingsbus.broker, is there too.
    assert_eq!(kids, ["garden", "shop", "thingsbus"]);

    assert_eq!(client.children("shop")[0].as_str(), "shop.shopbot");
    assert!(
        client.get("shop").is_none(),
        "a prefix has no value of its own"
    );
    let walked: Vec<String> = client
        .walk("shop")
        .iter()
        .map(|t| t.ns.to_string())
        .collect();
    assert_eq!(walked, ["shop.shopbot", "shop.shopbot.spacemon"]);

    // The root subscription with tree saw live events.
    let e = next_event(&mut all).await;
    assert_eq!(e.kind, EventKind::Update);
    assert!(zmq.stats().sent >= 2);
    assert!(udp.stats().sent >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_namespace_is_an_error_at_the_call() {
    let broker = spawn_broker(|_| {});
    let adaptor = Adaptor::builder("base")
        .url(&broker.endpoints().input)
        .connect()
        .await
        .expect("adaptor");
    let err = adaptor.send_to("Bad.Name", &1, None).expect_err("invalid");
    assert!(err.to_string().contains("\"Bad\""), "{err}");
    assert!(
        adaptor.send_to("ok", &1, Some(f64::NAN)).is_err(),
        "NaN ts refused"
    );
    let err = Adaptor::builder("A")
        .url(&broker.endpoints().input)
        .connect()
        .await
        .expect_err("bad base");
    assert!(err.to_string().contains("invalid namespace part"), "{err}");
    let err = Adaptor::builder("a")
        .connect()
        .await
        .expect_err("no target");
    assert!(err.to_string().contains(".zone("), "{err}");
    let client = Client::builder()
        .url(&broker.endpoints().directory)
        .connect()
        .await
        .expect("client");
    assert!(client.subscribe("x..y", SubscribeOptions::new()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_client_is_filled_by_the_snapshot() {
    let broker = spawn_broker(quick_snapshots);
    let adaptor = Adaptor::builder("late")
        .url(&broker.endpoints().input)
        .connect()
        .await
        .expect("adaptor");
    let early = live_client(&broker.endpoints().directory).await;
    for i in 0..20 {
        adaptor
            .send_to(&format!("t{i}"), &json!(i), None)
            .expect("send");
    }
    wait_for_value(&early, "late.t19", json!(19)).await;
    let late = Client::builder()
        .url(&broker.endpoints().directory)
        .connect()
        .await
        .expect("client");
    assert!(late.get("late.t0").is_none());
    assert!(
        late.wait_filled(DEADLINE).await,
        "a snapshot fills a late joiner"
    );
    for i in 0..20 {
        let t = late.get(&format!("late.t{i}")).expect("filled");
        assert_eq!(t.value(), json!(i));
        assert!(t.from_snapshot);
    }
    assert_eq!(late.walk("late").len(), 20);
}

/// Collects what each of the four flag combinations receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_flags_match_0_2_semantics() {
    let broker = spawn_broker(quick_snapshots);
    let client = live_client(&broker.endpoints().directory).await;
    let adaptor = Adaptor::builder("a")
        .url(&broker.endpoints().input)
        .connect()
        .await
        .expect("adaptor");
    let opts = |tree, snapshots| {
        SubscribeOptions::new()
            .tree(tree)
            .snapshots(snapshots)
            .capacity(100_000)
    };
    let mut plain = client.subscribe("a", opts(false, false)).expect("sub");
    let mut tree = client.subscribe("a", opts(true, false)).expect("sub");
    let mut snaps = client.subscribe("a", opts(false, true)).expect("sub");
    let mut both = client.subscribe("a", opts(true, true)).expect("sub");
    let mut other = client.subscribe("z", opts(true, true)).expect("sub");

    // Wait until the adaptor is connected, then one live update for a and one for a.b.
    adaptor.send(&json!("first")).expect("send");
    wait_for_value(&client, "a", json!("first")).await;
    adaptor.send_to("b", &json!("child"), None).expect("send");
    wait_for_value(&client, "a.b", json!("child")).await;
    // Two more complete snapshots carry both values again.
    let snapshots = client.stats().snapshots;
    while client.stats().snapshots < snapshots + 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = |s: &mut Subscription| {
        let mut seen = std::collections::BTreeSet::new();
        while let Some(e) = s.try_next() {
            let e = e.expect("no lag");
            seen.insert((e.ns().to_string(), e.kind == EventKind::Snapshot));
        }
        seen
    };
    let set = |items: &[(&str, bool)]| -> std::collections::BTreeSet<(String, bool)> {
        items.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    };
    assert_eq!(drain(&mut plain), set(&[("a", false)]));
    assert_eq!(drain(&mut tree), set(&[("a", false), ("a.b", false)]));
    assert_eq!(drain(&mut snaps), set(&[("a", false), ("a", true)]));
    assert_eq!(
        drain(&mut both),
        set(&[("a", false), ("a.b", false), ("a", true), ("a.b", true)])
    );
    assert!(drain(&mut other).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_subscriber_learns_it_and_stalls_nobody() {
    let broker = spawn_broker(quick_snapshots);
    let client = live_client(&broker.endpoints().directory).await;
    let adaptor = Adaptor::builder("lag")
        .url(&broker.endpoints().input)
        .connect()
        .await
        .expect("adaptor");
    let mut slow = client
        .subscribe("lag", SubscribeOptions::new().capacity(4))
        .expect("sub");
    let mut fast = client
        .subscribe("lag", SubscribeOptions::new().capacity(1000))
        .expect("sub");
    adaptor.send(&json!(-1)).expect("send");
    assert_eq!(next_event(&mut fast).await.thing.value(), json!(-1));
    for i in 0..50 {
        adaptor.send(&json!(i)).expect("send");
    }
    for i in 0..50 {
        assert_eq!(
            next_event(&mut fast).await.thing.value(),
            json!(i),
            "the fast subscriber gets all"
        );
    }
    assert_eq!(client.get("lag").expect("thing").value(), json!(49));
    let mut values = Vec::new();
    let mut missed = 0;
    while let Some(item) = slow.try_next() {
        match item {
            Ok(e) => values.push(e.thing.value()),
            Err(lag) => missed += lag.missed,
        }
    }
    assert!(missed > 0, "the slow subscriber must be told it lagged");
    assert_eq!(
        values.len() as u64 + missed,
        51,
        "every event either delivered or counted"
    );
    assert_eq!(
        values[0],
        json!(-1),
        "what it got first is the oldest it had room for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptor_and_client_survive_a_broker_restart() {
    let broker = spawn_broker_on_port_pair(quick_snapshots);
    let port = broker.endpoints().directory_port;
    let client = live_client(&broker.endpoints().directory).await;
    let adaptor = Adaptor::builder("restart")
        .url(&broker.endpoints().input)
        .connect()
        .await
        .expect("adaptor");
    adaptor.send(&json!("before")).expect("send");
    wait_for_value(&client, "restart", json!("before")).await;

    drop(broker);
    // While the broker is down the adaptor learns it and queues.
    let end = std::time::Instant::now() + DEADLINE;
    while adaptor.stats().connected {
        assert!(
            std::time::Instant::now() < end,
            "adaptor never noticed the broker left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    adaptor.send(&json!("while down")).expect("send");
    let broker = start_on(port, &quick_snapshots).expect("restart on the same ports");
    // Nothing to do for the caller: the queued update and new ones arrive (live, or at the
    // latest with the next snapshot if the client reconnects after the adaptor).
    wait_for_value(&client, "restart", json!("while down")).await;
    adaptor.send(&json!("after")).expect("send");
    wait_for_value(&client, "restart", json!("after")).await;
    assert_eq!(adaptor.stats().dropped, 0);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_the_oldest() {
    // Nothing listens yet: updates wait in the queue, the oldest give way.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let url = format!("tcp://127.0.0.1:{port}");
    let adaptor = Adaptor::builder("q")
        .url(&url)
        .queue_capacity(5)
        .connect()
        .await
        .expect("adaptor");
    for i in 0..20 {
        adaptor.send(&json!(i)).expect("send never blocks");
    }
    let stats = adaptor.stats();
    assert_eq!((stats.queued, stats.dropped, stats.sent), (5, 15, 0));
    assert!(
        !adaptor.flush(Duration::from_millis(50)),
        "nothing can be delivered yet"
    );
    let broker = start_on(port - 1, &|c| {
        c.input_port = Some(port);
        c.snapshot_port = Some(0);
        c.snapshot_interval = Duration::from_millis(100);
        // No updates of the broker's own thing: they would take sequence numbers too.
        c.stats_interval = Duration::ZERO;
    })
    .expect("broker on the adaptor's port");
    // Exactly five arrive once the broker subscribes...
    eventually(DEADLINE, "the queued updates to arrive", || {
        (broker
            .stats()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
            == 5)
            .then_some(())
    });
    // ...and they were the newest: the last one, 19, is the thing's value, with seq 5.
    let sub = Subscriber::connect(&broker);
    let snap = sub.wait_for(DEADLINE, "a snapshot holding q", |v| {
        v["type"] == "thing_snapshot" && v["data"].get("q").is_some()
    });
    assert_eq!(snap["data"]["q"]["data"], 19);
    assert_eq!(snap["data"]["q"]["seq"], 5);
    assert!(adaptor.close(Duration::from_secs(1)));
    assert!(adaptor.send(&1).is_err(), "closed");
}
