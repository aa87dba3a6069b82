//! `thingsbus-coap-adaptor` as a binary, between a real broker and a CoAP test node that behaves
//! like pyaiot's RIOT nodes (fresh source ports, a PUT answered only after the node's own POST,
//! extra links in `/.well-known/core`, a resource that fails, one that is observed, one that
//! never answers a PUT).

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use common::{field, tool, Proc, DEADLINE};
use serde_json::{json, Value};
use thingsbus_broker::Config;
use thingsbus_client::{Client, CommandError};
use thingsbus_tests::{client_for, eventually, spawn_broker};

fn quiet(c: &mut Config) {
    c.stats_interval = Duration::ZERO;
}

/// Sends one confirmable request from a fresh socket (as RIOT nodes do) and returns the reply.
fn request(to: SocketAddr, method: RequestType, path: &str, payload: &str) -> Option<Packet> {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(method);
    p.header.message_id = rand_id();
    p.set_token(vec![7, 7]);
    for part in path.split('/') {
        p.add_option(CoapOption::UriPath, part.as_bytes().to_vec());
    }
    p.payload = payload.as_bytes().to_vec();
    let bytes = p.to_bytes().expect("encode");
    for _ in 0..6 {
        s.send_to(&bytes, to).expect("send");
        let mut buf = [0u8; 2048];
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return Packet::from_bytes(&buf[..n]).ok();
        }
    }
    None
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static N: AtomicU16 = AtomicU16::new(1000);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Who observes `pressure`: address and token.
type Observer = (SocketAddr, Vec<u8>);

/// A node: serves resources on its port, POSTs to the adaptor from fresh ports.
struct Node {
    socket: Arc<UdpSocket>,
    port: u16,
    values: Arc<Mutex<HashMap<String, String>>>,
    /// Where to notify the observer of `pressure`: (address, token).
    observer: Arc<Mutex<Option<Observer>>>,
    /// The adaptor's CoAP address, once known.
    adaptor: Arc<Mutex<Option<SocketAddr>>>,
}

const LINKS: &str = r#"</.well-known/core>;ct=40,</temperature>;rt="temp",</led>;rt="led",</pressure>;obs,</broken>,</mute>,<http://riot-os.org>;rel="impl-info",</x>;rel="impl-info""#;

impl Node {
    fn start() -> Node {
        let adaptor = Arc::new(Mutex::new(None::<SocketAddr>));
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind node"));
        let port = socket.local_addr().expect("addr").port();
        let values = Arc::new(Mutex::new(HashMap::from([
            ("temperature".to_owned(), "23°C".to_owned()),
            ("led".to_owned(), "0".to_owned()),
            ("pressure".to_owned(), "1015hPa".to_owned()),
            ("mute".to_owned(), "x".to_owned()),
        ])));
        let observer = Arc::new(Mutex::new(None));
        let (s, v, o, a) = (
            socket.clone(),
            values.clone(),
            observer.clone(),
            adaptor.clone(),
        );
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let Ok(req) = Packet::from_bytes(&buf[..n]) else {
                    continue;
                };
                let MessageClass::Request(method) = req.header.code else {
                    continue;
                };
                let path: Vec<String> = req
                    .get_option(CoapOption::UriPath)
                    .map(|l| {
                        l.iter()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let path = path.join("/");
                let mut resp = Packet::new();
                resp.header.set_type(MessageType::Acknowledgement);
                resp.header.message_id = req.header.message_id;
                resp.set_token(req.get_token().to_vec());
                match (method, path.as_str()) {
                    (RequestType::Get, ".well-known/core") => {
                        resp.header.code = MessageClass::Response(ResponseType::Content);
                        resp.payload = LINKS.as_bytes().to_vec();
                    }
                    (RequestType::Get, "broken") => {
                        resp.header.code =
                            MessageClass::Response(ResponseType::InternalServerError);
                    }
                    (RequestType::Get, "pressure")
                        if req.get_option(CoapOption::Observe).is_some() =>
                    {
                        *o.lock().expect("observer") = Some((from, req.get_token().to_vec()));
                        resp.header.code = MessageClass::Response(ResponseType::Content);
                        resp.add_option(CoapOption::Observe, vec![1]);
                        resp.payload = v.lock().expect("values")["pressure"].clone().into_bytes();
                    }
                    (RequestType::Get, r) => match v.lock().expect("values").get(r) {
                        Some(val) => {
                            resp.header.code = MessageClass::Response(ResponseType::Content);
                            resp.payload = val.clone().into_bytes();
                        }
                        None => resp.header.code = MessageClass::Response(ResponseType::NotFound),
                    },
                    (RequestType::Put, "mute") => continue, // never answers
                    (RequestType::Put, "led") => {
                        let new = String::from_utf8_lossy(&req.payload).into_owned();
                        v.lock().expect("values").insert("led".into(), new.clone());
                        // Like RIOT's pyaiot nodes: POST the new value, wait for its answer,
                        // only then answer the PUT.
                        let to = a.lock().expect("adaptor").expect("adaptor address");
                        let posted =
                            request(to, RequestType::Post, "server", &format!("led:{new}"));
                        assert!(
                            posted.is_some(),
                            "the adaptor answered the node's POST while its PUT was out"
                        );
                        resp.header.code = MessageClass::Response(ResponseType::Changed);
                    }
                    _ => resp.header.code = MessageClass::Response(ResponseType::MethodNotAllowed),
                }
                let _ = s.send_to(&resp.to_bytes().expect("encode"), from);
            }
        });
        Node {
            socket,
            port,
            values,
            observer,
            adaptor,
        }
    }

    /// An Observe notification (non-confirmable) of a new pressure value.
    fn notify(&self, value: &str) {
        self.values
            .lock()
            .expect("values")
            .insert("pressure".into(), value.into());
        let Some((to, token)) = self.observer.lock().expect("observer").clone() else {
            panic!("pressure is not observed");
        };
        let mut p = Packet::new();
        p.header.set_type(MessageType::NonConfirmable);
        p.header.code = MessageClass::Response(ResponseType::Content);
        p.header.message_id = rand_id();
        p.set_token(token);
        p.add_option(CoapOption::Observe, vec![2]);
        p.payload = value.as_bytes().to_vec();
        self.socket
            .send_to(&p.to_bytes().expect("encode"), to)
            .expect("notify");
    }
}

fn start_adaptor(
    broker: &thingsbus_broker::Broker,
    node_port: u16,
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let p = Proc::spawn(
        tool("thingsbus-coap-adaptor")
            .args(["-u", &broker.endpoints().directory])
            .args(["--input-url", &broker.endpoints().input])
            .args(["--command-url", &broker.endpoints().command])
            .args([
                "--coap-bind",
                "127.0.0.1:0",
                "--node-port",
                &node_port.to_string(),
            ])
            .args(["--ns", "home.coap", "--report-interval", "0.3"])
            .args(extra),
    );
    let log = p.wait_stderr("listening for CoAP nodes");
    let addr = log
        .split_whitespace()
        .find_map(|w| w.strip_prefix("coap="))
        .and_then(|a| a.parse().ok())
        .expect("the CoAP address in the log");
    (p, addr)
}

fn value(c: &Client, ns: &str, want: &Value) {
    eventually(DEADLINE, &format!("{ns} = {want}"), || {
        c.get(ns).filter(|t| t.value() == *want).map(|_| ())
    });
}

#[test]
fn a_node_becomes_things_reports_values_and_obeys_commands() {
    let broker = spawn_broker(quiet);
    // The node first: the adaptor reaches nodes at their address and the node port.
    let node = Node::start();
    let (mut adaptor, coap) = start_adaptor(&broker, node.port, &["--max-time", "2"]);
    *node.adaptor.lock().expect("adaptor") = Some(coap);
    let c = client_for(&broker).connect_blocking().expect("client");
    let alive =
        request(coap, RequestType::Post, "alive", "Alive:1234").expect("an answer to alive");
    assert_eq!(
        alive.header.code,
        MessageClass::Response(ResponseType::Changed)
    );

    eventually(DEADLINE, "the node's thing", || {
        c.get("home.coap.n1234")
            .filter(|t| t.value()["online"] == true)
    });
    let meta = c.get("home.coap.n1234").expect("node").value();
    assert_eq!(meta["uid"], "1234");
    assert_eq!(meta["address"], "127.0.0.1");
    value(
        &c,
        "home.coap.n1234.temperature",
        &json!({"value": 23, "unit": "°C"}),
    );
    value(&c, "home.coap.n1234.led", &json!(0));
    value(
        &c,
        "home.coap.n1234.pressure",
        &json!({"value": 1015, "unit": "hPa"}),
    );
    value(&c, "home.coap.n1234.mute", &json!("x"));
    assert!(
        c.get("home.coap.n1234.broken").is_none(),
        "a failing resource is skipped"
    );
    assert!(
        c.walk("home.coap")
            .iter()
            .all(|t| !t.ns.as_str().contains("riot")),
        "impl-info skipped"
    );

    // Values POSTed to /server, every kind, each from a fresh port.
    for (payload, ns, want) in [
        ("humidity:45", "humidity", json!(45)),
        (
            r#"imu:[{"type":"acc","values":[1,2,3]}]"#,
            "imu",
            json!([{"type": "acc", "values": [1, 2, 3]}]),
        ),
        ("label:hello board", "label", json!("hello board")),
        (
            "Wind Speed:3.5 m/s",
            "wind-speed",
            json!({"value": 3.5, "unit": "m/s"}),
        ),
    ] {
        let r = request(coap, RequestType::Post, "server", payload).expect("answer");
        assert_eq!(r.header.code, MessageClass::Response(ResponseType::Changed));
        value(&c, &format!("home.coap.n1234.{ns}"), &want);
    }
    // The observed resource reports by itself.
    node.notify("1016hPa");
    value(
        &c,
        "home.coap.n1234.pressure",
        &json!({"value": 1016, "unit": "hPa"}),
    );

    // A command becomes a PUT; the node POSTs its new value before it answers.
    // (The adaptor registered at start; wait for the broker's routing, then the PUT.)
    let reply = eventually(DEADLINE, "the command route", || {
        match c.command_blocking("home.coap.n1234.led", &json!(1), Duration::from_secs(5)) {
            Err(CommandError::NoRoute(_)) => None,
            other => Some(other),
        }
    })
    .expect("the PUT succeeded");
    assert_eq!(reply["code"], "2.04");
    assert_eq!(node.values.lock().expect("values")["led"], "1");
    value(&c, "home.coap.n1234.led", &json!(1));
    let on = c
        .command_blocking("home.coap.n1234.led", &json!("on"), Duration::from_secs(5))
        .expect("PUT");
    assert_eq!(on["value"], "on");
    assert_eq!(
        node.values.lock().expect("values")["led"],
        "on",
        "a JSON string goes as its text"
    );
    // A node that never answers a PUT: an error before the command's deadline.
    match c.command_blocking("home.coap.n1234.mute", &json!(1), Duration::from_secs(3)) {
        Err(CommandError::Refused { error, .. }) => assert!(error.contains("no answer"), "{error}"),
        Err(CommandError::Timeout(_)) => {}
        other => panic!("expected a failure, got {other:?}"),
    }
    match c.command_blocking("home.coap.n1234.nothing", &json!(1), Duration::from_secs(3)) {
        Err(CommandError::Refused { error, .. }) => {
            assert!(error.contains("no node resource"), "{error}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // reset: cached values forgotten, resources found again.
    let r = request(coap, RequestType::Post, "alive", "reset:1234").expect("answer");
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::Changed));
    value(
        &c,
        "home.coap.n1234.temperature",
        &json!({"value": 23, "unit": "°C"}),
    );

    // Silence past --max-time (2 s): offline, published at once.
    eventually(DEADLINE, "the node to go offline", || {
        c.get("home.coap.n1234")
            .filter(|t| t.value()["online"] == false)
    });
    adaptor.signal("TERM");
    assert!(adaptor.wait(DEADLINE).expect("stops").success());
}

#[test]
fn malformed_datagrams_are_dropped_and_counted_and_good_ones_still_work() {
    let broker = spawn_broker(quiet);
    let (mut adaptor, coap) = start_adaptor(&broker, 9, &[]);
    let c = client_for(&broker).connect_blocking().expect("client");
    let raw = UdpSocket::bind("127.0.0.1:0").expect("bind");
    raw.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let good = |i: usize| {
        let r =
            request(coap, RequestType::Post, "alive", &format!("Alive:good{i}")).expect("answer");
        assert_eq!(r.header.code, MessageClass::Response(ResponseType::Changed));
        eventually(DEADLINE, "the good node", || {
            c.get(&format!("home.coap.good{i}"))
        });
    };
    good(0);
    let cases: Vec<Vec<u8>> = vec![
        vec![0x40, 0x02],                               // truncated header
        vec![0x49, 0x02, 0x00, 0x01, 1, 2, 3],          // token length 9 (reserved)
        vec![0x80, 0x02, 0x00, 0x01],                   // version 2
        vec![0x40, 0x02, 0x00, 0x01, 0xff],             // payload marker, no payload
        vec![0x40, 0x02, 0x00, 0x01, 0xf1, 0x00],       // option delta nibble 15 (reserved)
        vec![0x40, 0x02, 0x00, 0x01, 0x1f],             // option length nibble 15 (reserved)
        vec![0x40, 0x02, 0x00, 0x01, 0xb5, b'a', b'l'], // option value cut short
        vec![],                                         // empty
    ];
    for (i, bytes) in cases.iter().enumerate() {
        raw.send_to(bytes, coap).expect("send");
        good(i + 1);
    }
    // Nothing came back for any of them.
    raw.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    assert!(
        raw.recv_from(&mut buf).is_err(),
        "a malformed datagram was answered"
    );
    raw.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    // An unknown critical option (number 9): 4.02 Bad Option.
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = 4242;
    p.add_option(CoapOption::Unknown(9), b"x".to_vec());
    p.add_option(CoapOption::UriPath, b"alive".to_vec());
    p.payload = b"Alive:evil".to_vec();
    raw.send_to(&p.to_bytes().expect("encode"), coap)
        .expect("send");
    let (n, _) = raw.recv_from(&mut buf).expect("an answer");
    let r = Packet::from_bytes(&buf[..n]).expect("CoAP");
    assert_eq!(
        r.header.code,
        MessageClass::Response(ResponseType::BadOption)
    );
    good(100);
    // The same confirmable message twice: answered twice, handled once.
    p.clear_option(CoapOption::Unknown(9));
    p.header.message_id = 4343;
    p.payload = b"Alive:dup".to_vec();
    for _ in 0..2 {
        raw.send_to(&p.to_bytes().expect("encode"), coap)
            .expect("send");
        let (n, _) = raw.recv_from(&mut buf).expect("an answer");
        assert_eq!(
            Packet::from_bytes(&buf[..n]).expect("CoAP").header.code,
            MessageClass::Response(ResponseType::Changed)
        );
    }
    assert!(c.get("home.coap.evil").is_none());
    adaptor.signal("TERM");
    assert!(adaptor.wait(DEADLINE).expect("stops").success());
    let log = adaptor.wait_stderr("coap adaptor stopped");
    let line = log
        .lines()
        .find(|l| l.contains("coap adaptor stopped"))
        .expect("final counts");
    assert!(field(line, "malformed").is_some_and(|n| n >= 4), "{line}");
    assert_eq!(field(line, "bad_option"), Some(1), "{line}");
    assert_eq!(field(line, "duplicates"), Some(1), "{line}");
}
