//! The client against a hand-driven publisher: a real ZMQ PUB socket in the test plays a broker,
//! so sequence gaps, restarts and 0.2.x-shaped messages can be produced exactly.

use std::time::Duration;

use serde_json::json;
use thingsbus_client::{Client, EventKind, SubscribeOptions};
use thingsbus_tests::{ctx, eventually, DEADLINE};

struct FakeBroker {
    socket: zmq::Socket,
    url: String,
}

impl FakeBroker {
    fn bind() -> Self {
        let socket = ctx().socket(zmq::PUB).expect("pub");
        socket.bind("tcp://127.0.0.1:*").expect("bind");
        let url = socket
            .get_last_endpoint()
            .expect("endpoint")
            .expect("utf-8");
        FakeBroker { socket, url }
    }

    fn send(&self, v: &serde_json::Value) {
        self.socket.send(v.to_string().as_bytes(), 0).expect("send");
    }

    fn send_raw(&self, bytes: &[u8]) {
        self.socket.send(bytes, 0).expect("send");
    }

    /// Publishes 0.2.x-style snapshots until the client has one: its subscription is then live.
    fn sync(&self, client: &Client) {
        eventually(DEADLINE, "the client to receive a snapshot", || {
            self.send(&json!({"type": "thing_snapshot", "ts": 1.0, "data": {}}));
            client
                .wait_filled_blocking(Duration::from_millis(20))
                .then_some(())
        });
    }
}

/// A client of `broker`, its subscription live (synced with an update, not a snapshot, so it is
/// not filled yet).
fn connected_unfilled(broker: &FakeBroker) -> Client {
    let client = Client::builder()
        .url(&broker.url)
        .connect_blocking()
        .expect("client");
    eventually(DEADLINE, "the client to be connected", || {
        broker.send(&update("sync", json!(0), 1));
        std::thread::sleep(Duration::from_millis(10));
        client.get("sync").map(|_| ())
    });
    client
}

fn update(ns: &str, data: serde_json::Value, seq: u64) -> serde_json::Value {
    json!({"type": "thing_update", "ns": ns, "data": data, "ts": 1_700_000_000.0, "documentation_url": null, "seq": seq})
}

#[test]
fn seq_gaps_and_resets_are_counted() {
    let broker = FakeBroker::bind();
    let client = Client::builder()
        .url(&broker.url)
        .connect_blocking()
        .expect("client");
    broker.sync(&client);
    for seq in [1, 2, 5, 6, 10, 3] {
        broker.send(&update("g", json!(seq), seq));
    }
    eventually(DEADLINE, "six updates", || {
        (client.stats().updates == 6).then_some(())
    });
    let stats = client.stats();
    assert_eq!(stats.seq_gaps, 2, "2→5 and 6→10");
    assert_eq!(stats.missed_updates, 2 + 3);
    assert_eq!(stats.seq_resets, 1, "10→3: the broker started over");
    assert_eq!(stats.last_seq, 3);
}

#[test]
fn a_0_2_broker_is_understood() {
    // No seq anywhere, ts as floats, one snapshot holding everything without chunk keys.
    let broker = FakeBroker::bind();
    let client = Client::builder()
        .url(&broker.url)
        .connect_blocking()
        .expect("client");
    broker.sync(&client);
    let mut sub = client
        .subscribe("shop", SubscribeOptions::new().tree(true).snapshots(true))
        .expect("sub");
    broker.send(&json!({"type": "thing_snapshot", "ts": 1423351110.0, "data": {
        "shop.a": {"ns": "shop.a", "data": {"v": 1}, "ts": 1423351104.945, "documentation_url": "http://a"},
        "shop.b": {"ns": "shop.b", "data": [1], "ts": 1423351105.0, "documentation_url": null},
        "Bad": {"ns": "Bad", "data": 1, "ts": 1.0}
    }}));
    broker.send(&json!({"type": "thing_update", "ns": "shop.a", "data": {"v": 2}, "ts": 1423351106.0, "documentation_url": null}));
    broker.send(&json!({"type": "some_future_type", "x": 1}));
    broker.send_raw(b"not json");
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let e = sub.blocking_next().expect("alive").expect("no lag");
        kinds.push((e.ns().to_string(), e.kind));
    }
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        kinds,
        [
            ("shop.a".to_string(), EventKind::Snapshot),
            ("shop.a".to_string(), EventKind::Update),
            ("shop.b".to_string(), EventKind::Snapshot)
        ]
    );
    let a = client.get("shop.a").expect("a");
    assert_eq!(a.value(), json!({"v": 2}));
    assert_eq!(
        a.documentation_url.as_deref(),
        Some("http://a"),
        "sticky across updates"
    );
    assert_eq!(a.seq, None);
    assert!(client.get("Bad").is_none());
    eventually(DEADLINE, "the bad message to be counted", || {
        (client.stats().bad_messages == 1).then_some(())
    });
}

#[test]
fn chunked_snapshot_fills_only_when_complete() {
    let broker = FakeBroker::bind();
    let client = connected_unfilled(&broker);
    assert!(!client.is_filled());
    let chunk = |i: u64, last: bool, ns: &str| {
        json!({"type": "thing_snapshot", "ts": 2.0, "seq": 1, "snapshot": 1, "chunk": i, "last": last,
               "data": {ns: {"ns": ns, "data": i, "ts": 2.0, "documentation_url": null, "seq": 1}}})
    };
    broker.send(&chunk(0, false, "c.zero"));
    eventually(DEADLINE, "the first chunk", || {
        client.get("c.zero").map(|_| ())
    });
    assert!(
        !client.is_filled(),
        "one chunk of several does not fill the mirror"
    );
    broker.send(&chunk(1, true, "c.one"));
    assert!(client.wait_filled_blocking(DEADLINE));
    assert_eq!(client.get("c.one").expect("c.one").value(), json!(1));
}

#[test]
fn a_periodic_snapshot_joined_midway_does_not_fill() {
    let broker = FakeBroker::bind();
    let client = connected_unfilled(&broker);
    let chunk = |id: u64, i: u64, last: bool, ns: &str| {
        json!({"type": "thing_snapshot", "ts": 2.0, "seq": 1, "epoch": 7, "snapshot": id, "chunk": i,
               "last": last,
               "data": {ns: {"ns": ns, "data": i, "ts": 2.0, "documentation_url": null, "seq": 1}}})
    };
    // The client came in after chunk 0 of snapshot 4: the rest of it is not the whole directory.
    broker.send(&chunk(4, 1, false, "p.one"));
    broker.send(&chunk(4, 2, true, "p.two"));
    eventually(DEADLINE, "the chunks seen", || {
        client.get("p.two").map(|_| ())
    });
    assert!(
        !client.is_filled(),
        "the tail of a snapshot does not fill the mirror"
    );
    // A chunk missing in the middle of the next one: not whole either.
    broker.send(&chunk(5, 0, false, "q.zero"));
    broker.send(&chunk(5, 2, true, "q.two"));
    eventually(DEADLINE, "the chunks seen", || {
        client.get("q.two").map(|_| ())
    });
    assert!(
        !client.is_filled(),
        "a snapshot with a chunk missing does not fill the mirror"
    );
    // The next snapshot, whole.
    broker.send(&chunk(6, 0, false, "r.zero"));
    broker.send(&chunk(6, 1, true, "r.one"));
    assert!(client.wait_filled_blocking(DEADLINE));
    assert_eq!(client.stats().snapshots, 1);
}
