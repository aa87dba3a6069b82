//! `thingsbus-ws-adaptor` as a binary, between a real broker and WebSocket nodes written here
//! with a real WebSocket client (tungstenite) that behave as pyaiot's `ws_test_client.py`: on
//! connect and on `{"request": "discover"}` they send their resources as an update; a command
//! for `led` is answered by an update of `led`.

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{field, tool, Proc, DEADLINE};
use serde_json::{json, Value};
use thingsbus_broker::Config;
use thingsbus_client::{Client, CommandError};
use thingsbus_tests::certs::Authority;
use thingsbus_tests::{client_for, eventually, spawn_broker};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

fn quiet(c: &mut Config) {
    c.stats_interval = Duration::ZERO;
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The adaptor on a free port, listening.
fn adaptor(broker: &thingsbus_broker::Broker, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let mut p = Proc::spawn(
        tool("thingsbus-ws-adaptor")
            .args(["-u", &broker.endpoints().directory])
            .args(["--input-url", &broker.endpoints().input])
            .args(["--command-url", &broker.endpoints().command])
            .args(["--ws-bind", &format!("127.0.0.1:{port}")])
            .args(["--ns", "home.ws", "--max-message", "1000"])
            .args(["--report-interval", "0.3"])
            .args(extra),
    );
    p.wait_listening(port, DEADLINE)
        .unwrap_or_else(|e| panic!("{e}"));
    (p, port)
}

/// What the test tells a node to do.
enum Do {
    Send(String),
    Close,
}

/// A node on its own thread, as pyaiot's ws_test_client.py.
struct Node {
    control: Sender<Do>,
    /// Every message from the adaptor, as JSON (a close as `{"close": code}`).
    heard: Arc<Mutex<Vec<Value>>>,
}

/// The node's resources, as pyaiot's test client sends them.
fn init(led: &str) -> String {
    json!({"type": "update", "data": {"node": "fd00:aaaa:bbbb::1", "name": "websocket", "led": led, "os": "riot", "temperature": "23°C"}}).to_string()
}

/// Opens `ws://127.0.0.1:PORT<path>` (with a bearer token if given).
fn open<S>(
    stream: S,
    port: u16,
    path: &str,
    token: Option<&str>,
    scheme: &str,
) -> Result<WebSocket<S>, String>
where
    S: std::io::Read + std::io::Write,
{
    let mut req = format!("{scheme}://127.0.0.1:{port}{path}")
        .into_client_request()
        .expect("request");
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(format!("HTTP {}", r.status().as_u16()))
        }
        Err(e) => Err(e.to_string()),
    }
}

impl Node {
    fn connect(port: u16, path: &str) -> Node {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let ws = open(stream, port, path, None, "ws").expect("handshake");
        Node::run(ws, |s: &TcpStream| {
            s.set_read_timeout(Some(Duration::from_millis(50)))
        })
    }

    fn run<S>(mut ws: WebSocket<S>, timeout: impl Fn(&S) -> std::io::Result<()>) -> Node
    where
        S: std::io::Read + std::io::Write + Send + 'static,
    {
        timeout(ws.get_ref()).expect("read timeout");
        let (control, rx): (Sender<Do>, Receiver<Do>) = mpsc::channel();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        std::thread::spawn(move || {
            let mut led = "0".to_owned();
            ws.send(Message::text(init(&led))).expect("init");
            loop {
                match rx.try_recv() {
                    Ok(Do::Send(t)) => {
                        let _ = ws.send(Message::text(t));
                    }
                    Ok(Do::Close) => {
                        let _ = ws.close(None);
                        let _ = ws.flush();
                        return;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => return,
                    Err(mpsc::TryRecvError::Empty) => {}
                }
                let m = match ws.read() {
                    Ok(m) => m,
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                    {
                        continue
                    }
                    Err(_) => return,
                };
                match m {
                    Message::Text(t) => {
                        let v: Value =
                            serde_json::from_str(t.as_str()).expect("JSON from the adaptor");
                        h.lock().expect("heard").push(v.clone());
                        // As pyaiot's client: the text itself is compared.
                        if t.as_str() == r#"{"request": "discover"}"# {
                            let _ = ws.send(Message::text(init(&led)));
                        } else if v["endpoint"] == "led" {
                            led = if v["payload"] == "1" { "1" } else { "0" }.to_owned();
                            let _ = ws.send(Message::text(
                                json!({"type": "update", "data": {"led": led}}).to_string(),
                            ));
                        }
                    }
                    Message::Close(f) => {
                        let code = f.map(|f| u16::from(f.code));
                        h.lock().expect("heard").push(json!({ "close": code }));
                    }
                    _ => {}
                }
            }
        });
        Node { control, heard }
    }

    fn send(&self, text: &str) {
        let _ = self.control.send(Do::Send(text.to_owned()));
    }

    fn close(&self) {
        let _ = self.control.send(Do::Close);
    }

    fn heard(&self) -> Vec<Value> {
        self.heard.lock().expect("heard").clone()
    }
}

fn holds(c: &Client, ns: &str, want: &Value) {
    eventually(DEADLINE, &format!("{ns} = {want}"), || {
        c.get(ns).filter(|t| t.value() == *want)
    });
}

fn online(c: &Client, ns: &str, want: bool) {
    eventually(DEADLINE, &format!("{ns} online = {want}"), || {
        c.get(ns).filter(|t| t.value()["online"] == want)
    });
}

/// Switches the LED `ns` on, once the broker routes commands to the adaptor. The reply is the
/// node's next update of the LED: until the node has answered the adaptor's discover request
/// (with `led: "0"`), that answer may be the one a command gets; then the command is sent again.
fn first_command(c: &Client, ns: &str) {
    eventually(DEADLINE, "the LED switched on by a command", || {
        match c.command_blocking(ns, &json!("1"), Duration::from_secs(5)) {
            Err(CommandError::NoRoute(_)) => None,
            Ok(v) if v == json!(0) => None,
            Ok(v) => {
                assert_eq!(v, json!(1));
                Some(())
            }
            Err(e) => panic!("{ns}: {e}"),
        }
    });
}

#[test]
fn websocket_nodes_report_obey_are_offline_when_closed_and_malformed_input_closes_only_them() {
    let broker = spawn_broker(quiet);
    let (mut p, port) = adaptor(&broker, &[]);
    let c = client_for(&broker).connect_blocking().expect("client");

    // A node naming itself, and one that does not.
    let riot = Node::connect(port, "/node?id=riot");
    holds(
        &c,
        "home.ws.riot.temperature",
        &json!({"value": 23, "unit": "°C"}),
    );
    holds(&c, "home.ws.riot.led", &json!(0));
    holds(&c, "home.ws.riot.os", &json!("riot"));
    holds(&c, "home.ws.riot.node", &json!("fd00:aaaa:bbbb::1"));
    let t = c.get("home.ws.riot").expect("the node's thing").value();
    assert_eq!(t["uid"], "riot");
    assert_eq!(t["online"], true);
    assert_eq!(t["address"], "127.0.0.1");
    assert_eq!(
        t["resources"],
        json!(["led", "name", "node", "os", "temperature"])
    );
    assert_eq!(riot.heard()[0], json!({"request": "discover"}));
    let anon = Node::connect(port, "/node");
    let anon_ns = eventually(DEADLINE, "the unnamed node", || {
        c.walk("home.ws")
            .iter()
            .find(|t| t.ns.as_str().starts_with("home.ws.ws-") && t.ns.as_str().ends_with(".os"))
            .map(|t| t.ns.as_str().trim_end_matches(".os").to_owned())
    });
    online(&c, &anon_ns, true);

    // A command: {"endpoint", "data", "payload"}; the node's next update is the reply.
    first_command(&c, "home.ws.riot.led");
    assert!(
        riot.heard()
            .contains(&json!({"endpoint": "led", "data": "1", "payload": "1"})),
        "{:?}",
        riot.heard()
    );
    holds(&c, "home.ws.riot.led", &json!(1));
    // A resource the node does not act on: the protocol's timeout.
    match c.command_blocking("home.ws.riot.os", &json!("x"), Duration::from_secs(2)) {
        Err(CommandError::Timeout(_)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }

    // A malformed message closes that node's connection (1003) and is counted; the other
    // node goes on.
    anon.send("not json");
    eventually(DEADLINE, "the close frame", || {
        anon.heard().contains(&json!({"close": 1003})).then_some(())
    });
    online(&c, &anon_ns, false);
    p.expect_stderr_line("the malformed message counted", |l| {
        l.contains("ws report") && field(l, "malformed") == Some(1)
    });
    // Too large (--max-message 1000): closed too.
    let big = Node::connect(port, "/node?id=big");
    online(&c, "home.ws.big", true);
    big.send(&json!({"type": "update", "data": {"x": "9".repeat(2000)}}).to_string());
    online(&c, "home.ws.big", false);
    let reply = c
        .command_blocking("home.ws.riot.led", &json!("0"), Duration::from_secs(5))
        .expect("the node still obeys");
    assert_eq!(reply, json!(0));

    // Closing: offline at once, commands refused.
    riot.close();
    online(&c, "home.ws.riot", false);
    match c.command_blocking("home.ws.riot.led", &json!("1"), Duration::from_secs(3)) {
        Err(CommandError::Refused { error, .. }) => {
            assert!(error.contains("not connected"), "{error}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Back under its name: online again.
    let _riot = Node::connect(port, "/node?id=riot");
    online(&c, "home.ws.riot", true);

    // Not /node, or a bad name: refused at the handshake.
    for (path, status) in [("/other", "HTTP 404"), ("/node?id=a%2Fb", "HTTP 400")] {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        assert_eq!(
            open(s, port, path, None, "ws").err().as_deref(),
            Some(status)
        );
    }

    p.signal("TERM");
    assert!(p.wait(DEADLINE).expect("stops").success());
    let log = p.wait_stderr("ws adaptor stopped");
    let line = log
        .lines()
        .find(|l| l.contains("ws adaptor stopped"))
        .expect("final counts");
    assert_eq!(field(line, "malformed"), Some(2), "{line}");
    // The two above, and the harness's probe of the port (a TCP connection and no handshake).
    assert_eq!(field(line, "refused"), Some(3), "{line}");
    assert!(field(line, "commands_ok").is_some_and(|n| n >= 2), "{line}");
    assert_eq!(field(line, "connections"), Some(4), "{line}");
}

#[test]
fn tokens_and_tls_as_on_the_brokers_http_side() {
    use tokio_rustls::rustls;
    let broker = spawn_broker(quiet);
    let ca = Authority::new("ws");
    let server = ca.server("ws");
    let dir = std::env::temp_dir().join(format!("thingsbus-ws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let tokens = dir.join("tokens");
    let token = "node-token-0123456789abcdef";
    std::fs::write(&tokens, format!("{token} read\n")).expect("tokens");
    let (mut p, port) = adaptor(
        &broker,
        &[
            "--ws-tls-cert",
            &server.cert.display().to_string(),
            "--ws-tls-key",
            &server.key.display().to_string(),
            "--ws-token-file",
            &tokens.display().to_string(),
        ],
    );
    let c = client_for(&broker).connect_blocking().expect("client");
    let tls = |port: u16| {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_file(ca.ca_file()).expect("CA"))
            .expect("a root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name"),
        )
        .expect("TLS client");
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        rustls::StreamOwned::new(conn, tcp)
    };
    // No token, a wrong one: 401. Plain WebSocket on the TLS port: no handshake.
    assert_eq!(
        open(tls(port), port, "/node?id=t", None, "wss")
            .err()
            .as_deref(),
        Some("HTTP 401")
    );
    assert_eq!(
        open(
            tls(port),
            port,
            "/node?id=t",
            Some("wrong-token-0123456789"),
            "wss"
        )
        .err()
        .as_deref(),
        Some("HTTP 401")
    );
    let plain = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(open(plain, port, "/node?id=t", Some(token), "ws").is_err());
    // The token over TLS: a node.
    let ws = open(tls(port), port, "/node?id=secure", Some(token), "wss").expect("handshake");
    let node = Node::run(
        ws,
        |s: &rustls::StreamOwned<rustls::ClientConnection, TcpStream>| {
            s.sock.set_read_timeout(Some(Duration::from_millis(50)))
        },
    );
    holds(&c, "home.ws.secure.led", &json!(0));
    first_command(&c, "home.ws.secure.led");
    drop(node);
    p.signal("TERM");
    assert!(p.wait(DEADLINE).expect("stops").success());
    let log = p.wait_stderr("ws adaptor stopped");
    let line = log
        .lines()
        .find(|l| l.contains("ws adaptor stopped"))
        .expect("final counts");
    // Two without the right token, one without TLS, and the harness's probe of the port.
    assert_eq!(field(line, "refused"), Some(4), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_node_that_answers_no_ping_is_closed_and_offline_one_that_does_stays() {
    let broker = spawn_broker(quiet);
    let (p, port) = adaptor(&broker, &["--ping-interval", "0.5"]);
    let c = client_for(&broker).connect_blocking().expect("client");
    // Reads (and so answers pings, as any WebSocket library does) but sends nothing after its
    // first update.
    let _alive = Node::connect(port, "/node?id=alive");
    online(&c, "home.ws.alive", true);
    // Connects, then neither reads nor writes: as a node whose network vanished.
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut mute = open(s, port, "/node?id=mute", None, "ws").expect("handshake");
    mute.send(Message::text(init("0"))).expect("init");
    online(&c, "home.ws.mute", true);
    online(&c, "home.ws.mute", false);
    assert_eq!(
        c.get("home.ws.alive").map(|t| t.value()["online"].clone()),
        Some(json!(true)),
        "the node that answers pings stays"
    );
    p.expect_stderr_line("the silent node counted", |l| {
        l.contains("ws report") && field(l, "silent") == Some(1)
    });
    drop(mute);
}
