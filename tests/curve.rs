//! CURVE against an independent implementation: pyzmq (its wheels include CURVE), from the
//! Python peers' environment. Keys written by one are read by the other, and our socket helpers
//! talk CURVE with pyzmq both ways; a wrong server key gets nothing through.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use thingsbus_protocol::keys::{KeyPair, PublicKey, SecretKey};
use thingsbus_protocol::transport::{self, ClientKeys};
use thingsbus_tests::py::python;
use thingsbus_tests::*;

/// Runs a Python snippet with `args` (sys.argv[1:]) and returns its stdout lines.
fn py(code: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn keys_written_by_pyzmq_and_by_us_agree() {
    require_peers!(peers::PYTHON_02);
    let lines = py(
        "import zmq\n\
         assert zmq.has('curve')\n\
         pub, sec = zmq.curve_keypair()\n\
         print(pub.decode()); print(sec.decode())\n\
         import sys; print(zmq.curve_public(sys.argv[1].encode()).decode())",
        &[&KeyPair::generate().expect("keys").secret.to_z85()],
    );
    // pyzmq's pair, read by us.
    let public: PublicKey = lines[0].parse().expect("pyzmq's public key");
    let secret = SecretKey::from_z85(&lines[1]).expect("pyzmq's secret key");
    assert_eq!(
        KeyPair::from_secret(secret).expect("derives").public,
        public
    );
    // Ours, read by pyzmq: run again with a known pair.
    let ours = KeyPair::generate().expect("keys");
    let lines = py(
        "import zmq, sys\nprint(zmq.curve_public(sys.argv[1].encode()).decode())",
        &[&ours.secret.to_z85()],
    );
    assert_eq!(lines[0], ours.public.to_string());
}

#[test]
fn our_curve_server_publishes_to_a_pyzmq_client() {
    require_peers!(peers::PYTHON_02);
    let server = KeyPair::generate().expect("keys");
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::PUB).expect("socket");
    publisher.set_linger(0).expect("linger");
    transport::curve_server(&publisher, &server).expect("curve server");
    publisher.bind("tcp://127.0.0.1:*").expect("bind");
    let url = publisher
        .get_last_endpoint()
        .expect("endpoint")
        .expect("utf-8");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let sender = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let _ = publisher.send("secret hello", 0);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    let lines = py(
        "import zmq, sys\n\
         s = zmq.Context().socket(zmq.SUB)\n\
         s.curve_serverkey = sys.argv[2].encode()\n\
         s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()\n\
         s.setsockopt(zmq.SUBSCRIBE, b''); s.rcvtimeo = 30000\n\
         s.connect(sys.argv[1]); print(s.recv().decode())",
        &[&url, &server.public.to_string()],
    );
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender");
    assert_eq!(lines, ["secret hello"]);
}

/// A pyzmq CURVE server (PULL) with its own keys prints its public key and port, then the first
/// message it receives, or "nothing" when none came (within 30 s with the right key, 5 s with a
/// wrong one: the right-key run is the positive control). Our PUSH client is a CURVE client
/// with pyzmq's key, or with `wrong_key` another one.
fn our_client_to_a_pyzmq_server(wrong_key: bool) -> String {
    let mut child = Command::new(python())
        .arg("-c")
        .arg(
            "import zmq, sys\n\
             pub, sec = zmq.curve_keypair()\n\
             s = zmq.Context().socket(zmq.PULL)\n\
             s.curve_server = True; s.curve_secretkey = sec\n\
             port = s.bind_to_random_port('tcp://127.0.0.1')\n\
             print(pub.decode(), port, flush=True)\n\
             s.rcvtimeo = int(sys.argv[1])\n\
             try: print(s.recv().decode(), flush=True)\n\
             except zmq.Again: print('nothing', flush=True)",
        )
        .arg(if wrong_key { "5000" } else { "30000" })
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    let (key, port) = first.split_once(' ').expect("key and port");
    let server_key: PublicKey = if wrong_key {
        KeyPair::generate().expect("keys").public
    } else {
        key.parse().expect("pyzmq's public key")
    };
    let keys = ClientKeys::new(server_key, None).expect("keys");
    let ctx = zmq::Context::new();
    let push = transport::connecting_socket(&ctx, zmq::PUSH, Some(10)).expect("socket");
    transport::curve_client(&push, &keys).expect("curve client");
    transport::connect(&push, "pyzmq server", &format!("tcp://127.0.0.1:{port}")).expect("connect");
    let _ = push.send("from rust", zmq::DONTWAIT);
    let got = lines.next().expect("a line").expect("utf-8");
    let _ = child.wait();
    got
}

#[test]
fn our_curve_client_talks_to_a_pyzmq_server_and_a_wrong_key_gets_nothing_through() {
    require_peers!(peers::PYTHON_02);
    // The positive control: the right key delivers.
    assert_eq!(our_client_to_a_pyzmq_server(false), "from rust");
    assert_eq!(our_client_to_a_pyzmq_server(true), "nothing");
}

#[test]
fn a_client_mirrors_a_curve_broker_and_with_a_wrong_server_key_gets_nothing() {
    use serde_json::json;
    use thingsbus_client::Client;
    // A CURVE PUB plays the broker's directory output.
    let server = KeyPair::generate().expect("keys");
    let publisher = ctx().socket(zmq::PUB).expect("socket");
    transport::curve_server(&publisher, &server).expect("curve server");
    publisher.bind("tcp://127.0.0.1:*").expect("bind");
    let url = publisher
        .get_last_endpoint()
        .expect("endpoint")
        .expect("utf-8");
    let client = |key: PublicKey| {
        Client::builder()
            .url(&url)
            .instant_snapshot(false)
            .curve(ClientKeys::new(key, None).expect("keys"))
            .connect_blocking()
            .expect("client")
    };
    let wrong = client(KeyPair::generate().expect("keys").public);
    let right = client(server.public);
    let update = json!({"type": "thing_update", "ns": "shop.door", "data": {"open": true},
                        "ts": 1_700_000_000.0, "documentation_url": null, "seq": 1});
    // The positive control: the client with the right key gets it while both listen.
    eventually(DEADLINE, "the CURVE client to mirror shop.door", || {
        publisher
            .send(update.to_string().as_bytes(), 0)
            .expect("send");
        std::thread::sleep(std::time::Duration::from_millis(20));
        right.get("shop.door").map(|_| ())
    });
    for _ in 0..50 {
        publisher
            .send(update.to_string().as_bytes(), 0)
            .expect("send");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(wrong.get("shop.door").is_none());
    let thing = right.get("shop.door").expect("kept");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&thing.data).expect("json"),
        json!({"open": true})
    );
}

#[test]
fn an_adaptor_publishes_to_a_curve_input_and_with_a_wrong_server_key_gets_nothing_through() {
    use serde_json::json;
    use thingsbus_adaptor::Adaptor;
    // A CURVE SUB plays the broker's input.
    let server = KeyPair::generate().expect("keys");
    let input = ctx().socket(zmq::SUB).expect("socket");
    transport::curve_server(&input, &server).expect("curve server");
    input.set_subscribe(b"").expect("subscribe");
    input.bind("tcp://127.0.0.1:*").expect("bind");
    let url = input.get_last_endpoint().expect("endpoint").expect("utf-8");
    let adaptor = |ns: &str, key: PublicKey| {
        Adaptor::builder(ns)
            .url(&url)
            .curve(ClientKeys::new(key, None).expect("keys"))
            .connect_blocking()
            .expect("adaptor")
    };
    let wrong = adaptor("wrong", KeyPair::generate().expect("keys").public);
    let right = adaptor("right", server.public);
    // The positive control: the right key's update arrives while the wrong one's never does.
    let mut seen = Vec::new();
    eventually(DEADLINE, "the CURVE adaptor's update to arrive", || {
        wrong.send(&json!(1)).expect("send");
        right.send(&json!(2)).expect("send");
        while let Ok(frames) = input.recv_multipart(zmq::DONTWAIT) {
            seen.push(String::from_utf8_lossy(&frames.concat()).into_owned());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        seen.iter().any(|m| m.contains("right")).then_some(())
    });
    for _ in 0..50 {
        wrong.send(&json!(1)).expect("send");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    while let Ok(frames) = input.recv_multipart(zmq::DONTWAIT) {
        seen.push(String::from_utf8_lossy(&frames.concat()).into_owned());
    }
    assert!(!seen.iter().any(|m| m.contains("wrong")), "{seen:?}");
    // UDP cannot carry CURVE: refused, not sent in the clear.
    let Err(e) = Adaptor::builder("x")
        .udp("127.0.0.1:9")
        .curve(ClientKeys::new(server.public, None).expect("keys"))
        .connect_blocking()
    else {
        panic!("an adaptor with keys over UDP was made");
    };
    assert!(e.to_string().contains("UDP cannot carry CURVE"), "{e}");
}

// ---- A broker with --curve-secret-file, against pyzmq and our own peers ----

/// A directory of its own for this test's files, removed first.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("thingsbus-curve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A broker speaking CURVE as `keys`, with the auth file `auth` (TOML) and, if asked, HTTP.
fn curve_broker(keys: &KeyPair, dir: &std::path::Path, auth: &str, http: bool) -> Broker {
    let path = dir.join("auth.toml");
    std::fs::write(&path, auth).expect("write the auth file");
    let keys = keys.clone();
    spawn_broker(move |c| {
        c.stats_interval = std::time::Duration::ZERO;
        c.curve = Some(keys);
        c.auth_file = Some(path);
        if http {
            c.http = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        }
    })
}

/// pyzmq publishers into `input` until stdin closes (or 30 s): `right` (the kitchen key and the
/// broker's key) publishes kitchen.temp and garage.door; `wrong` (the kitchen key, another
/// server key) kitchen.wrong; `stranger` (a key of its own, the broker's key) kitchen.stranger.
const PY_PUBLISHERS: &str = r#"
import json, sys, threading, time, zmq
url, server, wrong_server, pub, sec = sys.argv[1:6]
ctx = zmq.Context()
def publisher(server_key, public, secret):
    s = ctx.socket(zmq.PUB)
    s.curve_serverkey = server_key.encode()
    s.curve_publickey = public.encode()
    s.curve_secretkey = secret.encode()
    s.connect(url)
    return s
right = publisher(server, pub, sec)
wrong = publisher(wrong_server, pub, sec)
spub, ssec = zmq.curve_keypair()
stranger = publisher(server, spub.decode(), ssec.decode())
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("ready", flush=True)
i = 0
end = time.time() + 30
while not done.is_set() and time.time() < end:
    i += 1
    right.send_string(json.dumps(["kitchen.temp", None, i, None]))
    right.send_string(json.dumps(["garage.door", None, i, None]))
    wrong.send_string(json.dumps(["kitchen.wrong", None, i, None]))
    stranger.send_string(json.dumps(["kitchen.stranger", None, i, None]))
    time.sleep(0.02)
"#;

/// A pyzmq subscriber to `url` with the server key and a key of its own: prints the first
/// directory message naming `ns` (or "nothing" after 20 s).
const PY_SUBSCRIBER: &str = r#"
import sys, zmq
url, server, ns = sys.argv[1:4]
s = zmq.Context().socket(zmq.SUB)
pub, sec = zmq.curve_keypair()
s.curve_serverkey = server.encode()
s.curve_publickey = pub
s.curve_secretkey = sec
s.setsockopt(zmq.SUBSCRIBE, b"")
s.connect(url)
poller = zmq.Poller(); poller.register(s, zmq.POLLIN)
import time
end = time.time() + 20
while time.time() < end:
    if poller.poll(200):
        m = s.recv()
        if ns.encode() in m:
            print(m.decode()); sys.exit(0)
print("nothing")
"#;

#[test]
fn a_curve_broker_lets_pyzmq_keys_do_what_the_auth_file_says_and_counts_the_rest() {
    require_peers!(peers::PYTHON_02);
    let dir = scratch("pyzmq");
    let server = KeyPair::generate().expect("keys");
    let kitchen = KeyPair::generate().expect("keys");
    let broker = curve_broker(
        &server,
        &dir,
        &format!(
            "[anonymous]\nread = true\n\
             [keys.kitchen]\npublic = \"{}\"\npublish = [\"kitchen\"]\n",
            kitchen.public
        ),
        false,
    );
    let at = broker.endpoints().clone();
    assert_eq!(at.server_key, Some(server.public));
    let mut publishers = Command::new(python())
        .arg("-c")
        .arg(PY_PUBLISHERS)
        .args([
            at.input.as_str(),
            &server.public.to_string(),
            &KeyPair::generate().expect("keys").public.to_string(),
            &kitchen.public.to_string(),
            &kitchen.secret.to_z85(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    // Our client reads with a key the file does not know: the anonymous rights (read).
    let client = thingsbus_client::Client::builder()
        .url(&at.directory)
        .snapshot_url(&at.snapshot)
        .curve(ClientKeys::new(server.public, None).expect("keys"))
        .connect_blocking()
        .expect("client");
    let stats = broker.stats().clone();
    let temp = |c: &thingsbus_client::Client| {
        c.get("kitchen.temp")
            .and_then(|t| t.data.parse::<u64>().ok())
            .unwrap_or(0)
    };
    eventually(
        std::time::Duration::from_secs(30),
        "kitchen.temp from the kitchen key, garage.door refused, the stranger refused",
        || {
            (temp(&client) > 0
                && stats.refused_by("kitchen", "not_permitted") >= 1
                && stats.refused_by("(unknown key)", "connect_refused") >= 1)
                .then_some(())
        },
    );
    // The positive control keeps arriving while the others never do.
    let seen = temp(&client);
    eventually(DEADLINE, "50 more kitchen.temp updates", || {
        (temp(&client) >= seen + 50).then_some(())
    });
    for refused in ["garage.door", "kitchen.wrong", "kitchen.stranger"] {
        assert!(client.get(refused).is_none(), "{refused} got through");
    }
    assert!(stats.refused_by("kitchen", "not_permitted") >= 50);
    // pyzmq reads the directory as well, with a key of its own.
    let lines = py(
        PY_SUBSCRIBER,
        &[&at.directory, &server.public.to_string(), "kitchen.temp"],
    );
    assert!(lines[0].contains("kitchen.temp"), "{lines:?}");
    drop(publishers.stdin.take());
    publishers.wait().expect("python ends");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn without_anonymous_rights_a_curve_broker_admits_only_its_keys_and_the_http_side_still_reads() {
    use serde_json::json;
    let dir = scratch("http");
    let server = KeyPair::generate().expect("keys");
    let kitchen = KeyPair::generate().expect("keys");
    let broker = curve_broker(
        &server,
        &dir,
        &format!(
            "[keys.kitchen]\npublic = \"{}\"\nread = true\npublish = [\"kitchen\"]\n",
            kitchen.public
        ),
        true,
    );
    let at = broker.endpoints().clone();
    let adaptor = thingsbus_adaptor::Adaptor::builder("kitchen.temp")
        .url(&at.input)
        .curve(ClientKeys::new(server.public, Some(kitchen.clone())).expect("keys"))
        .connect_blocking()
        .expect("adaptor");
    let stranger = thingsbus_client::Client::builder()
        .url(&at.directory)
        .snapshot_url(&at.snapshot)
        .curve(ClientKeys::new(server.public, None).expect("keys"))
        .connect_blocking()
        .expect("client");
    let url = format!(
        "http://{}/api/things/kitchen.temp",
        at.http.expect("http runs")
    );
    // The page's side reads everything although the file gives peers without a key nothing.
    let body = eventually(DEADLINE, "kitchen.temp on the HTTP side", || {
        adaptor.send(&json!(21.5)).expect("send");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let r = ureq::get(&url).call().ok()?;
        r.into_string().ok()
    });
    let thing: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(thing["data"], json!(21.5), "{body}");
    // A key the file does not know is refused at connect, and counted.
    let stats = broker.stats().clone();
    eventually(DEADLINE, "the stranger refused", || {
        (stats.refused_by("(unknown key)", "connect_refused") >= 1).then_some(())
    });
    assert!(stranger.get("kitchen.temp").is_none());
    // The kitchen key itself reads.
    let own = thingsbus_client::Client::builder()
        .url(&at.directory)
        .snapshot_url(&at.snapshot)
        .curve(ClientKeys::new(server.public, Some(kitchen)).expect("keys"))
        .connect_blocking()
        .expect("client");
    eventually(DEADLINE, "the kitchen key to read kitchen.temp", || {
        own.get("kitchen.temp").map(|_| ())
    });
    std::fs::remove_dir_all(&dir).ok();
}

// ---- The broker's key from DNS: a TXT record `curve=<key>` beside the SRV record ----

#[test]
fn a_zone_that_publishes_the_broker_key_is_all_a_client_and_an_adaptor_need() {
    use serde_json::json;
    use thingsbus_adaptor::Adaptor;
    use thingsbus_client::Client;
    let server = KeyPair::generate().expect("keys");
    let keys = server.clone();
    let broker = spawn_broker_on_port_pair(move |c| {
        c.stats_interval = std::time::Duration::ZERO;
        c.snapshot_interval = std::time::Duration::from_millis(200);
        c.curve = Some(keys.clone());
    });
    let txt = format!("curve={}", server.public);
    let dns = dns_with_txt(&broker, &["v=spf1 -all", &txt]);
    let adaptor = Adaptor::builder("kitchen")
        .zone("example.org")
        .nameserver(dns.addr())
        .connect_blocking()
        .expect("adaptor through the zone");
    let client = Client::builder()
        .zone("example.org")
        .nameserver(dns.addr())
        .connect_blocking()
        .expect("client through the zone");
    eventually(
        DEADLINE,
        "kitchen through a CURVE broker found by zone",
        || {
            adaptor.send(&json!({"t": 21})).expect("send");
            std::thread::sleep(std::time::Duration::from_millis(20));
            client
                .get("kitchen")
                .filter(|t| t.value() == json!({"t": 21}))
                .map(|_| ())
        },
    );
    // The controls: the same zone without the TXT record reaches nothing (the broker speaks
    // only CURVE), and a key given by hand wins over DNS, so a wrong one reads nothing either.
    let plain_dns = dns_for(&broker);
    let plain = Client::builder()
        .zone("example.org")
        .nameserver(plain_dns.addr())
        .connect_blocking()
        .expect("client");
    let wrong = Client::builder()
        .zone("example.org")
        .nameserver(dns.addr())
        .curve(ClientKeys::new(KeyPair::generate().expect("keys").public, None).expect("keys"))
        .connect_blocking()
        .expect("client");
    let short = std::time::Duration::from_secs(2);
    assert!(
        !plain.wait_filled_blocking(short),
        "a plain client read a CURVE broker"
    );
    assert!(
        !wrong.wait_filled_blocking(short),
        "a wrong key read the broker"
    );
    // A TXT record that holds no key is an error naming it, not a silent plain connection.
    let bad_dns = dns_with_txt(&broker, &["curve=not-a-key"]);
    let Err(e) = Client::builder()
        .zone("example.org")
        .nameserver(bad_dns.addr())
        .connect_blocking()
    else {
        panic!("a client took a zone whose key is not a key");
    };
    assert!(e.to_string().contains("40 Z85 characters"), "{e}");
    let Err(e) = Adaptor::builder("x")
        .zone("example.org")
        .nameserver(bad_dns.addr())
        .connect_blocking()
    else {
        panic!("an adaptor took a zone whose key is not a key");
    };
    assert!(e.to_string().contains("curve=not-a-key"), "{e}");
}
