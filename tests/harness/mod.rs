//! Shared test harness: a real broker on 127.0.0.1 with ephemeral ports, real ZMQ and UDP peers,
//! and [`eventually`] to wait on a condition with a deadline instead of sleeping.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
pub use thingsbus_broker::{Broker, Config, Stats};

/// Deadline for anything that should happen "at once" on loopback; generous for loaded CI.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Starts a broker on 127.0.0.1 with ephemeral ports, after `tweak` adjusts its config.
pub fn spawn_broker(tweak: impl FnOnce(&mut Config)) -> Broker {
    log_if_asked();
    let mut config = Config::ephemeral();
    tweak(&mut config);
    Broker::start(config).expect("broker starts on ephemeral ports")
}

/// Starts a broker on 127.0.0.1 whose input and snapshot ports are its directory port + 1 and
/// + 2, as DNS SRV discovery expects. Free ports are found by trying.
pub fn spawn_broker_on_port_pair(tweak: impl Fn(&mut Config)) -> Broker {
    for _ in 0..100 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
        let port = probe.local_addr().expect("probe addr").port();
        drop(probe);
        if port >= u16::MAX - 1 {
            continue;
        }
        match start_on(port, &tweak) {
            Ok(b) => return b,
            Err(thingsbus_broker::Error::AddressInUse { .. }) => continue,
            Err(e) => panic!("broker failed to start: {e}"),
        }
    }
    panic!("no free port pair found");
}

/// With `RUST_LOG` set, the brokers' and libraries' logs go to the test's captured output, so a
/// failing test in CI shows what the broker saw (`RUST_LOG=thingsbus_broker=debug cargo test ...`).
pub fn log_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Starts a broker on 127.0.0.1 with directory port `port`, input `port + 1` and snapshot
/// endpoint `port + 2`, as in production.
///
/// # Errors
/// When a port is taken.
pub fn start_on(port: u16, tweak: &dyn Fn(&mut Config)) -> Result<Broker, thingsbus_broker::Error> {
    log_if_asked();
    let mut config = Config::ephemeral();
    config.port = port;
    config.input_port = None;
    config.snapshot_port = None;
    config.command_port = None;
    tweak(&mut config);
    Broker::start(config)
}

/// Polls `f` until it returns `Some`, or panics naming `what` after `deadline`.
pub fn eventually<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Seconds since the epoch, now.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// One ZMQ context per test process is plenty.
pub fn ctx() -> zmq::Context {
    static CTX: std::sync::OnceLock<zmq::Context> = std::sync::OnceLock::new();
    CTX.get_or_init(zmq::Context::new).clone()
}

/// An adaptor's ZMQ PUB socket connected to the broker's input.
pub struct ZmqInput(pub zmq::Socket);

impl ZmqInput {
    /// Connects to `broker`'s ZMQ input.
    pub fn connect(broker: &Broker) -> Self {
        let s = ctx().socket(zmq::PUB).expect("PUB socket");
        s.set_linger(1000).expect("linger");
        // Tests send bursts; libzmq's default of 1,000 queued messages would drop some.
        s.set_sndhwm(1_000_000).expect("sndhwm");
        s.connect(&broker.endpoints().input)
            .expect("connect to input");
        ZmqInput(s)
    }

    /// Sends one single-frame message.
    pub fn send(&self, bytes: &[u8]) {
        self.0.send(bytes, 0).expect("send on PUB");
    }

    /// Sends a JSON value.
    pub fn send_json(&self, v: &Value) {
        self.send(v.to_string().as_bytes());
    }

    /// Sends `v` again every 50 ms until `seen` gives something, within `deadline`: what a PUB
    /// sends before its connection is up (or while a link is being mended) is lost.
    pub fn send_until<T>(
        &self,
        deadline: Duration,
        what: &str,
        v: &Value,
        mut seen: impl FnMut() -> Option<T>,
    ) -> T {
        eventually(deadline, what, || {
            self.send_json(v);
            std::thread::sleep(Duration::from_millis(50));
            seen()
        })
    }
}

/// An adaptor's UDP socket aimed at the broker's UDP input.
pub struct UdpInput {
    socket: UdpSocket,
    to: std::net::SocketAddr,
}

impl UdpInput {
    /// A socket on 127.0.0.1 aimed at `broker`.
    pub fn new(broker: &Broker) -> Self {
        UdpInput {
            socket: UdpSocket::bind("127.0.0.1:0").expect("bind UDP"),
            to: broker.endpoints().udp,
        }
    }

    /// Sends one datagram.
    pub fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.to).expect("send datagram");
    }

    /// Sends a JSON value encoded as MessagePack.
    pub fn send_msgpack(&self, v: &Value) {
        self.send(&rmp_serde::to_vec(v).expect("encode msgpack"));
    }
}

/// A client's SUB socket on the broker's directory output.
pub struct Subscriber(pub zmq::Socket);

impl Subscriber {
    /// Connects to `broker`'s directory output, subscribed to everything.
    pub fn connect(broker: &Broker) -> Self {
        let s = ctx().socket(zmq::SUB).expect("SUB socket");
        s.set_subscribe(b"").expect("subscribe");
        s.set_rcvhwm(1_000_000).expect("rcvhwm");
        s.connect(&broker.endpoints().directory)
            .expect("connect to directory");
        Subscriber(s)
    }

    /// The next message as JSON, if one arrives within `timeout`.
    pub fn recv_json(&self, timeout: Duration) -> Option<Value> {
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        if self.0.poll(zmq::POLLIN, ms).expect("poll") == 0 {
            return None;
        }
        let bytes = self.0.recv_bytes(0).expect("recv");
        Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "broker sent invalid JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        }))
    }

    /// The first message matching `pred` within `deadline`; others are skipped.
    pub fn wait_for(
        &self,
        deadline: Duration,
        what: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {deadline:?} waiting for {what}"
            );
            if let Some(v) = self.recv_json(left) {
                if pred(&v) {
                    return v;
                }
            }
        }
    }

    /// The next `thing_update` for `ns`.
    pub fn update_for(&self, ns: &str) -> Value {
        self.wait_for(DEADLINE, &format!("an update for {ns}"), |v| {
            v["type"] == "thing_update" && v["ns"] == ns
        })
    }

    /// Asserts that no `thing_update` for `ns` arrives before the next probe goes round trip
    /// through `input`: the broker handles messages from one connection in order, so if the probe
    /// came through first, the update was dropped.
    pub fn assert_no_update_before_probe(&self, ns: &str, input: &dyn Probe) {
        let probe = input.probe();
        let v = self.wait_for(DEADLINE, "the probe", |v| {
            v["type"] == "thing_update" && (v["ns"] == ns || v["ns"] == probe.as_str())
        });
        assert_eq!(
            v["ns"],
            probe.as_str(),
            "update for {ns} was published, expected it dropped"
        );
    }
}

/// Something that can send a probe update: a fresh thing under `test.probe`.
pub trait Probe {
    /// Sends a probe and returns its namespace.
    fn probe(&self) -> String;
}

fn probe_ns() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("test.probe.p{}", N.fetch_add(1, Ordering::Relaxed))
}

impl Probe for ZmqInput {
    fn probe(&self) -> String {
        let ns = probe_ns();
        self.send_json(&json!({"type": "thing_update", "ns": ns, "data": "probe"}));
        ns
    }
}

impl Probe for UdpInput {
    fn probe(&self) -> String {
        let ns = probe_ns();
        self.send_msgpack(&json!([ns, null, "probe", null]));
        ns
    }
}

/// Waits until an update sent through `input` reaches `sub`: both connections are then up
/// (ZMQ drops messages sent before a PUB/SUB connection is complete).
pub fn sync(sub: &Subscriber, input: &dyn Probe) {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        let ns = input.probe();
        let got = (0..20).any(|_| {
            sub.recv_json(Duration::from_millis(10))
                .is_some_and(|v| v["type"] == "thing_update" && v["ns"] == ns.as_str())
        });
        if got {
            return;
        }
    }
    panic!("input and subscriber never connected within {DEADLINE:?}");
}

/// A broker with a subscriber and both inputs, all connected.
pub struct Rig {
    /// The broker.
    pub broker: Broker,
    /// A subscriber on its directory output.
    pub sub: Subscriber,
    /// A ZMQ adaptor connection.
    pub zmq: ZmqInput,
    /// A UDP adaptor socket.
    pub udp: UdpInput,
}

impl Rig {
    /// Starts a broker (after `tweak`) and connects everything.
    pub fn new(tweak: impl FnOnce(&mut Config)) -> Self {
        let broker = spawn_broker(tweak);
        let sub = Subscriber::connect(&broker);
        let zmq = ZmqInput::connect(&broker);
        let udp = UdpInput::new(&broker);
        sync(&sub, &zmq);
        sync(&sub, &udp);
        Rig {
            broker,
            sub,
            zmq,
            udp,
        }
    }

    /// The broker's counters.
    pub fn stats(&self) -> &Stats {
        self.broker.stats()
    }
}

/// Reads a hex test vector from `tests/data/`.
pub fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let hex = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}
pub mod certs;
pub mod dns;
pub mod nats;
pub mod peers;
pub mod process;
pub mod py;

/// Runs `bash scripts/NAME` from the repository and returns what it printed, or why it failed.
fn run_script(name: &str) -> Result<String, String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A client builder aimed at `broker`'s directory and snapshot endpoints (ephemeral ports do not
/// follow the P, P+2 rule that `url()` alone assumes).
pub fn client_for(broker: &Broker) -> thingsbus_client::ClientBuilder {
    thingsbus_client::Client::builder()
        .url(&broker.endpoints().directory)
        .snapshot_url(&broker.endpoints().snapshot)
        .command_url(&broker.endpoints().command)
}

/// A DNS server for the zone `example.org` whose SRV record `_thingsbus._tcp.example.org` points
/// at `broker` (host `broker.example.org`, A record 127.0.0.1).
pub fn dns_for(broker: &Broker) -> dns::DnsServer {
    dns_with_txt(broker, &[])
}

/// [`dns_for`] with these TXT strings on the SRV name too (none: no TXT record), e.g. the
/// broker's key, `curve=<Z85>`.
pub fn dns_with_txt(broker: &Broker, txt: &[&str]) -> dns::DnsServer {
    let name = "_thingsbus._tcp.example.org";
    let records: &[(&str, &[&str])] = if txt.is_empty() { &[] } else { &[(name, txt)] };
    dns::DnsServer::start_with_txt(
        "example.org",
        &[dns::SrvRecord {
            name: name.into(),
            priority: 0,
            weight: 0,
            port: broker.endpoints().directory_port,
            target: "broker.example.org.".into(),
        }],
        &[("broker.example.org", std::net::Ipv4Addr::LOCALHOST)],
        records,
    )
}
