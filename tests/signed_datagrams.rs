//! Signed datagrams (`docs/authenticated-datagrams.md`): the test vectors against our encoder and
//! against an implementation in Python's standard library, the documented Python board sender and
//! the adaptor's signing sender checked by the broker-side verifier over real UDP sockets, and
//! brokers that do not know the form (ours without an auth file, the Python 0.2.1 broker)
//! dropping it harmlessly.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thingsbus_adaptor::{Adaptor, BoardSecret, Error};
use thingsbus_client::Client;
use thingsbus_protocol::codec::decode_msgpack_input;
use thingsbus_protocol::signed::{self, Direction, Fresh, Refusal, Replay, ReplayTracker};
use thingsbus_protocol::Limits;
use thingsbus_tests::py::PyBroker;
use thingsbus_tests::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Case {
    what: String,
    secret: BoardSecret,
    name: String,
    direction: Direction,
    boot: u32,
    counter: u32,
    payload: Vec<u8>,
    datagram_file: String,
    datagram: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let path = root().join("tests/data/signed-datagrams.json");
    let text = std::fs::read_to_string(&path).expect("read the vectors");
    let v: Value = serde_json::from_str(&text).expect("vectors are JSON");
    let cases = v["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    cases
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_else(|| panic!("{k}")).to_owned();
            let n = |k: &str| {
                u32::try_from(c[k].as_u64().unwrap_or_else(|| panic!("{k}"))).expect("u32")
            };
            Case {
                what: s("what"),
                secret: BoardSecret::from_hex(&s("secret")).expect("secret"),
                name: s("name"),
                direction: match n("kind") {
                    1 => Direction::ToBroker,
                    2 => Direction::ToBoard,
                    k => panic!("kind {k}"),
                },
                boot: n("boot"),
                counter: n("counter"),
                payload: vector(&s("payload")),
                datagram_file: s("datagram"),
                datagram: vector(&s("datagram")),
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A UDP socket on 127.0.0.1 standing in for a broker's input, read with a deadline.
struct Receiver(UdpSocket);

impl Receiver {
    fn new() -> Self {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        Receiver(s)
    }

    fn addr(&self) -> String {
        self.0.local_addr().expect("addr").to_string()
    }

    fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0; 65_536];
        let (n, _) = self
            .0
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no datagram within {DEADLINE:?}: {e}"));
        buf.truncate(n);
        buf
    }
}

#[test]
fn the_vectors_are_what_our_encoder_writes_and_they_open() {
    for c in cases() {
        let sealed = signed::seal_to_vec(
            c.direction,
            &c.name,
            c.boot,
            c.counter,
            &c.payload,
            &c.secret,
        )
        .expect("seal");
        assert_eq!(hex(&sealed), hex(&c.datagram), "{}", c.what);
        let opened = signed::open(&c.datagram, c.direction, |n| {
            (n == c.name).then(|| c.secret.clone())
        })
        .expect("opens");
        assert_eq!(opened.payload, c.payload.as_slice());
        assert_eq!((opened.boot, opened.counter), (c.boot, c.counter));
        // The payload is MessagePack as before; a board's update decodes as unsigned ones do.
        rmp_serde::from_slice::<Value>(&c.payload).expect("payload is MessagePack");
        if c.direction == Direction::ToBroker {
            let u = decode_msgpack_input(opened.payload, &Limits::default()).expect("update");
            assert_eq!(u.ns.as_str(), "bottlekid.prototype");
        }
        // Well under a board's MTU.
        assert!(c.datagram.len() < 1_400, "{} bytes", c.datagram.len());
    }
}

#[test]
fn python_standard_library_computes_the_same_bytes() {
    require_peers!(peers::PYTHON3);
    let out = Command::new("python3")
        .arg(root().join("tests/py/signed_vectors.py"))
        .arg(root().join("tests/data/signed-datagrams.json"))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "signed_vectors.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let cases = cases();
    assert_eq!(lines.len(), cases.len());
    for (line, c) in lines.iter().zip(&cases) {
        assert_eq!(line["datagram"], c.datagram_file.as_str());
        assert_eq!(line["hex"], hex(&c.datagram).as_str(), "{}", c.what);
    }
}

#[test]
fn the_documented_python_board_sender_is_verified() {
    require_peers!(peers::PYTHON3);
    let c = cases()
        .into_iter()
        .find(|c| c.direction == Direction::ToBroker)
        .expect("a board case");
    let input = Receiver::new();
    let send = |boot: u32, counter: u32| {
        let status = Command::new("python3")
            .arg(root().join("examples/udp_signed.py"))
            .args([
                input.addr(),
                c.name.clone(),
                boot.to_string(),
                counter.to_string(),
                hex(&c.payload),
            ])
            .env("THINGSBUS_BOARD_SECRET", c.secret.to_hex())
            .status()
            .expect("run python3");
        assert!(status.success());
        input.recv()
    };
    let lookup = |n: &str| (n == c.name).then(|| c.secret.clone());
    let mut replays = ReplayTracker::new(16);
    let mut check = |d: &[u8]| {
        let s = signed::open(d, Direction::ToBroker, lookup)?;
        replays
            .check(s.name, s.boot, s.counter)
            .map_err(Refusal::from)
    };

    let first = send(c.boot, c.counter);
    assert_eq!(first, c.datagram, "the sketch writes the vector's bytes");
    assert_eq!(check(&first), Ok(Fresh::First));
    assert_eq!(check(&first), Err(Refusal::Replayed(Replay::Repeated)));
    assert_eq!(check(&send(c.boot, c.counter + 1)), Ok(Fresh::Next));
    assert_eq!(check(&send(c.boot + 1, 0)), Ok(Fresh::NewBoot));
}

#[test]
fn the_adaptor_signs_every_datagram_with_a_rising_counter() {
    let secret = BoardSecret::generate().expect("random");
    let input = Receiver::new();
    let adaptor = Adaptor::builder("porch")
        .udp(&input.addr())
        .sign_udp("porch-board", secret.clone())
        .signing_boot(9)
        .connect_blocking()
        .expect("adaptor");
    let lookup = |n: &str| (n == "porch-board").then(|| secret.clone());
    let mut replays = ReplayTracker::new(16);
    for i in 0..3u32 {
        adaptor
            .send_to("door", &json!({"open": i}), None)
            .expect("send");
        let d = input.recv();
        let s = signed::open(&d, Direction::ToBroker, lookup).expect("opens");
        assert_eq!((s.name, s.boot, s.counter), ("porch-board", 9, i));
        assert!(replays.check(s.name, s.boot, s.counter).is_ok());
        let u = decode_msgpack_input(s.payload, &Limits::default()).expect("an update");
        assert_eq!(u.ns.as_str(), "porch.door");
        assert_eq!(u.data.as_ref(), format!(r#"{{"open":{i}}}"#));
    }
    assert_eq!(adaptor.stats().sent, 3);

    // Without a boot given, every start is a new boot (the time), above the one before.
    let later = Adaptor::builder("porch")
        .udp(&input.addr())
        .sign_udp("porch-board", secret.clone())
        .connect_blocking()
        .expect("adaptor");
    later.send(&json!(1)).expect("send");
    let s = signed::parse(&input.recv()).map(|s| (s.boot, s.counter));
    assert!(matches!(s, Ok((boot, 0)) if boot > 1_700_000_000), "{s:?}");
}

#[test]
fn the_adaptor_refuses_signing_it_cannot_do() {
    let secret = BoardSecret::from_bytes([1; 32]);
    let over_zmq = Adaptor::builder("porch")
        .url("tcp://127.0.0.1:9")
        .sign_udp("porch", secret.clone())
        .connect_blocking();
    assert!(
        matches!(over_zmq, Err(Error::SigningNeedsUdp)),
        "{over_zmq:?}"
    );
    let bad_name = Adaptor::builder("porch")
        .udp("127.0.0.1:9")
        .sign_udp("Porch Board", secret)
        .connect_blocking();
    match bad_name {
        Err(e @ Error::Signing(_)) => assert!(e.to_string().contains("Porch Board"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn our_broker_without_an_auth_file_drops_signed_datagrams_and_keeps_serving() {
    let rig = Rig::new(|c| c.stats_interval = Duration::ZERO);
    let before = rig.stats().rejected_total();
    for c in cases() {
        rig.udp.send(&c.datagram);
    }
    rig.sub
        .assert_no_update_before_probe("bottlekid.prototype", &rig.udp);
    eventually(DEADLINE, "both counted as rejected", || {
        (rig.stats().rejected_total() >= before + 2).then_some(())
    });
}

#[test]
fn the_python_0_2_1_broker_drops_signed_datagrams_harmlessly() {
    require_peers!(peers::PYTHON_02);
    let py = PyBroker::start(0.5);
    let client = Client::builder()
        .url(&py.directory)
        .snapshot_timeout(Duration::from_millis(300))
        .connect_blocking()
        .expect("client");
    let plain = Adaptor::builder("lab")
        .udp(&py.udp.to_string())
        .connect_blocking()
        .expect("adaptor");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // Signed datagrams first, then plain updates until one arrives: the old broker's UDP loop
    // survived them, and never took them for updates.
    let end = Instant::now() + DEADLINE;
    let mut i = 0;
    while client.get("lab.after").is_none() {
        assert!(Instant::now() < end, "the plain update never arrived");
        for c in cases() {
            sock.send_to(&c.datagram, py.udp).expect("send");
        }
        plain.send_to("after", &json!(i), None).expect("send");
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(client.get("bottlekid.prototype").is_none());
    assert!(client.get("bottlekid").is_none());
}
