//! The systems under test, each in its own process: our broker and the floor are this same
//! binary started in a hidden server mode; the Python broker is the original 0.2.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use thingsbus_protocol::transport::ClientKeys;
use thingsbus_tests::process::{on_cpus, Process, Stream};

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// This project's broker.
    Ours,
    /// libzmq forwarding with no parsing: what any broker must be slower than.
    Floor,
    /// The original Python thingsbus 0.2.1 broker.
    Python,
    /// NATS JetStream key-value alone (put → watch), under the cluster scenario.
    Nats,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Ours => "thingsbus (ours)",
            Kind::Floor => "floor (libzmq forwarder)",
            Kind::Python => "python 0.2.1",
            Kind::Nats => "NATS alone",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Floor => "floor",
            Kind::Python => "python",
            Kind::Nats => "nats",
        }
    }
}

/// Settings for a server start.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) subscriber_hwm: i32,
    pub(crate) snapshot_interval_s: f64,
    /// Ours only: `--cluster` on these NATS servers.
    pub(crate) cluster: Option<ClusterOptions>,
    /// Ours and the floor: run on these CPUs only (`taskset -c`).
    pub(crate) cpus: Option<&'static str>,
    /// Ours only: `--max-things`.
    pub(crate) max_things: Option<u64>,
    /// Ours only: `--state-file`.
    pub(crate) state_file: Option<PathBuf>,
    /// Ours and the floor: CURVE on every endpoint with this key pair (ours:
    /// `--curve-secret-file`).
    pub(crate) curve: Option<thingsbus_protocol::keys::KeyPair>,
    /// Ours only: the HTTP side on 127.0.0.1 (`--http`).
    pub(crate) http: bool,
    /// Ours only, with `http`: `--history` in this file.
    pub(crate) history: Option<PathBuf>,
}

/// `--cluster` settings of a bench broker.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub(crate) struct ClusterOptions {
    /// Run with `--cluster` on these NATS servers (comma-separated); none: no cluster.
    #[arg(long = "nats", value_delimiter = ',')]
    pub(crate) urls: Vec<String>,
    /// The broker's node name in the cluster.
    #[arg(long, default_value = "bench")]
    pub(crate) node: String,
    /// Milliseconds between the broker's writes to NATS.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) flush_ms: f64,
    /// Copies of the bucket NATS keeps.
    #[arg(long, default_value_t = 1)]
    pub(crate) replicas: usize,
}

/// What a server process of this binary is started with (`serve-broker`, `serve-floor`).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub(crate) struct Serve {
    /// The subscribers' high-water mark, in messages.
    #[arg(long)]
    pub(crate) hwm: i32,
    /// Seconds between periodic snapshots (our broker only).
    #[arg(long, default_value_t = 3600.0)]
    pub(crate) snapshot_interval: f64,
    #[command(flatten)]
    pub(crate) cluster: ClusterOptions,
    /// Most things held (our broker only).
    #[arg(long)]
    pub(crate) max_things: Option<u64>,
    /// Keep the directory in this journal (our broker only).
    #[arg(long)]
    pub(crate) state_file: Option<PathBuf>,
    /// Speak CURVE with this secret key, in Z85 (our broker only; a bench's throwaway key).
    #[arg(long)]
    pub(crate) curve_secret: Option<String>,
    /// Serve the HTTP side on 127.0.0.1 (our broker only).
    #[arg(long)]
    pub(crate) http: bool,
    /// With --http: record history in this file (our broker only).
    #[arg(long)]
    pub(crate) history: Option<PathBuf>,
}

impl Serve {
    /// The flags that give these settings, for the server's command line.
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--hwm".to_owned(),
            self.hwm.to_string(),
            "--snapshot-interval".to_owned(),
            self.snapshot_interval.to_string(),
        ];
        if let Some(n) = self.max_things {
            args.extend(["--max-things".to_owned(), n.to_string()]);
        }
        if let Some(p) = &self.state_file {
            args.extend(["--state-file".to_owned(), p.display().to_string()]);
        }
        if let Some(k) = &self.curve_secret {
            args.extend(["--curve-secret".to_owned(), k.clone()]);
        }
        if self.http {
            args.push("--http".to_owned());
        }
        if let Some(p) = &self.history {
            args.extend(["--history".to_owned(), p.display().to_string()]);
        }
        let c = &self.cluster;
        if !c.urls.is_empty() {
            args.extend([
                "--nats".to_owned(),
                c.urls.join(","),
                "--node".to_owned(),
                c.node.clone(),
                "--flush-ms".to_owned(),
                c.flush_ms.to_string(),
                "--replicas".to_owned(),
                c.replicas.to_string(),
            ]);
        }
        args
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            subscriber_hwm: 100_000,
            snapshot_interval_s: 3600.0,
            cluster: None,
            cpus: None,
            max_things: None,
            state_file: None,
            curve: None,
            http: false,
            history: None,
        }
    }
}

/// A running server process, killed on drop.
pub(crate) struct Server {
    pub(crate) kind: Kind,
    process: Process,
    pub(crate) directory: String,
    pub(crate) input: String,
    pub(crate) udp: SocketAddr,
    /// The snapshot request endpoint (ours only).
    pub(crate) snapshot: Option<String>,
    /// The command endpoint (ours only).
    pub(crate) command: Option<String>,
    /// What clients need when the server speaks CURVE.
    pub(crate) keys: Option<ClientKeys>,
    /// The HTTP side's address, `http://127.0.0.1:PORT` (ours with `http` only).
    pub(crate) http: Option<String>,
}

/// How long a server of ours may take to say where it serves: with a cluster, it loads the whole
/// bucket first (100,000 things in the cluster scenario).
const SERVER_START: Duration = Duration::from_secs(300);

impl Server {
    pub(crate) fn start(kind: Kind, opts: Options) -> anyhow::Result<Server> {
        match kind {
            Kind::Ours | Kind::Floor => {
                let exe = std::env::current_exe().context("locating the bench binary")?;
                let serve = Serve {
                    hwm: opts.subscriber_hwm,
                    snapshot_interval: opts.snapshot_interval_s,
                    cluster: opts.cluster.clone().unwrap_or_default(),
                    max_things: opts.max_things,
                    state_file: opts.state_file.clone(),
                    curve_secret: opts.curve.as_ref().map(|k| k.secret.to_z85()),
                    http: opts.http,
                    history: opts.history.clone(),
                };
                let mode = if kind == Kind::Ours {
                    "serve-broker"
                } else {
                    "serve-floor"
                };
                // The server runs until its stdin closes: the pipe stays open as long as this
                // handle lives.
                let process = Process::build(on_cpus(exe, opts.cpus).arg(mode).args(serve.args()))
                    .name(mode)
                    .stdin_piped()
                    .stderr(Stream::Inherit)
                    .try_start()?;
                let line = process
                    .line(SERVER_START)
                    .with_context(|| format!("{mode} never said where it serves"))?;
                let v: Value =
                    serde_json::from_str(&line).with_context(|| format!("server said {line:?}"))?;
                let s = |k: &str| v[k].as_str().map(str::to_owned).context("endpoint missing");
                Ok(Server {
                    kind,
                    directory: s("directory")?,
                    input: s("input")?,
                    udp: s("udp")?.parse()?,
                    snapshot: v["snapshot"].as_str().map(str::to_owned),
                    command: v["command"].as_str().map(str::to_owned),
                    http: v["http"].as_str().map(str::to_owned),
                    process,
                    keys: match &opts.curve {
                        Some(k) => Some(ClientKeys::new(k.public, None)?),
                        None => None,
                    },
                })
            }
            Kind::Nats => bail!("NATS is started by the cluster scenario itself"),
            Kind::Python => {
                let python = python().context(
                    "the Python 0.2.1 broker is not installed (scripts/python-peers.sh)",
                )?;
                let (dport, iport) = free_port_pair()?;
                let script = format!(
                    "import thingsbus.broker as b\nb.INPUT_PORT = {iport}\nb.DIRECTORY_INTERVAL = {}\n\
                     br = b.Broker(adaptor_url='tcp://127.0.0.1:{iport}', directory_url='tcp://127.0.0.1:{dport}')\n\
                     try:\n    br.run()\nexcept KeyboardInterrupt:\n    pass\n",
                    opts.snapshot_interval_s
                );
                let process = Process::build(Command::new(python).args(["-c", &script]))
                    .name("the Python broker")
                    .stdout(Stream::Discard)
                    .stderr(Stream::Inherit)
                    .try_start()?;
                Ok(Server {
                    kind,
                    process,
                    directory: format!("tcp://127.0.0.1:{dport}"),
                    input: format!("tcp://127.0.0.1:{iport}"),
                    udp: format!("127.0.0.1:{iport}").parse()?,
                    snapshot: None,
                    command: None,
                    keys: None,
                    http: None,
                })
            }
        }
    }

    /// Our broker's counters now: `accepted`, `too_many_things`, `journal_synced_seq`,
    /// `things` (asked on the server's stdin).
    pub(crate) fn stats(&mut self) -> anyhow::Result<Value> {
        if self.kind != Kind::Ours {
            bail!("only our broker answers stats");
        }
        self.process.write_line("stats")?;
        let line = self
            .process
            .line(Duration::from_secs(10))
            .context("serve-broker did not answer stats")?;
        serde_json::from_str(&line).with_context(|| format!("serve-broker said {line:?}"))
    }

    /// CPU seconds the server process has used so far (user + system).
    pub(crate) fn cpu_seconds(&self) -> f64 {
        self.process.cpu_seconds().unwrap_or(0.0)
    }

    /// Resident memory of the server process, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        self.process.rss_kib().unwrap_or(0)
    }
}

/// The Python 0.2.1 interpreter, if installed by scripts/python-peers.sh (or THINGSBUS_PY02).
pub(crate) fn python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv =
        std::env::var_os("THINGSBUS_PY02").map_or_else(|| root.join("target/py02"), PathBuf::from);
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import thingsbus.broker, thingsbus_msgpack_compat"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

fn free_port_pair() -> anyhow::Result<(u16, u16)> {
    for _ in 0..100 {
        let a = std::net::TcpListener::bind("127.0.0.1:0")?;
        let p = a.local_addr()?.port();
        if p == u16::MAX {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
            && UdpSocket::bind(("0.0.0.0", p + 1)).is_ok()
        {
            return Ok((p, p + 1));
        }
    }
    bail!("no free port pair")
}

/// `serve-broker`: our broker, endpoints on stdout (once it serves: with a cluster, after loading
/// the bucket), until stdin closes.
pub(crate) fn serve_broker(args: &Serve) -> anyhow::Result<()> {
    let c = &args.cluster;
    let cluster = (!c.urls.is_empty()).then(|| thingsbus_broker::ClusterConfig {
        flush: Duration::from_secs_f64(c.flush_ms / 1e3),
        replicas: c.replicas,
        ..thingsbus_broker::ClusterConfig::new(c.urls.clone(), c.node.clone())
    });
    let config = thingsbus_broker::Config {
        cluster,
        max_things: args
            .max_things
            .map_or(thingsbus_broker::Config::default().max_things, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
        state_file: args.state_file.clone(),
        subscriber_hwm: args.hwm,
        input_hwm: 100_000,
        snapshot_interval: Duration::from_secs_f64(args.snapshot_interval),
        live_window: Duration::from_secs(3600),
        curve: args
            .curve_secret
            .as_deref()
            .map(|k| {
                thingsbus_protocol::keys::SecretKey::from_z85(k)
                    .and_then(thingsbus_protocol::keys::KeyPair::from_secret)
            })
            .transpose()?,
        http: args
            .http
            .then(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        history: args
            .history
            .as_ref()
            .map(thingsbus_broker::HistoryConfig::new),
        ..thingsbus_broker::Config::ephemeral()
    };
    let broker = thingsbus_broker::Broker::start(config)?;
    let e = broker.endpoints();
    println!(
        "{}",
        json!({"directory": e.directory, "input": e.input, "udp": e.udp.to_string(), "snapshot": e.snapshot, "command": e.command, "http": e.http.map(|a| format!("http://{a}"))})
    );
    std::io::stdout().flush()?;
    // Serves until stdin closes; a `stats` line asks for the counters the bench reads.
    for line in std::io::stdin().lines() {
        if line?.trim() == "stats" {
            let s = broker.stats();
            let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            println!(
                "{}",
                json!({
                    "accepted": n(&s.accepted),
                    "too_many_things": s.rejected(thingsbus_broker::Reason::TooManyThings),
                    "journal_synced_seq": n(&s.journal_synced_seq),
                    "things": n(&s.things),
                    "history_points": n(&s.history_points),
                    "history_conflated": n(&s.history_conflated),
                })
            );
            std::io::stdout().flush()?;
        }
    }
    Ok(())
}

/// `serve-floor`: the least any broker must do. One thread polls the ZMQ SUB
/// and the UDP socket, drains both without blocking and forwards every frame and datagram to the
/// PUB as it is: no parsing, no state, no copies beyond libzmq's own.
pub(crate) fn serve_floor(args: &Serve) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let hwm = args.hwm;
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB)?;
    sub.set_subscribe(b"")?;
    sub.set_rcvhwm(100_000)?;
    let publisher = ctx.socket(zmq::PUB)?;
    publisher.set_sndhwm(hwm)?;
    // With a key pair, CURVE on both sockets (no ZAP handler: any client key is let in), so the
    // curve scenario can show what libzmq's own encryption costs with nothing else in the way.
    if let Some(secret) = args.curve_secret.as_deref() {
        let keys = thingsbus_protocol::keys::SecretKey::from_z85(secret)
            .and_then(thingsbus_protocol::keys::KeyPair::from_secret)?;
        thingsbus_protocol::transport::curve_server(&sub, &keys)?;
        thingsbus_protocol::transport::curve_server(&publisher, &keys)?;
    }
    sub.bind("tcp://127.0.0.1:*")?;
    publisher.bind("tcp://127.0.0.1:*")?;
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    udp.set_nonblocking(true)?;
    let endpoint = |s: &zmq::Socket| -> anyhow::Result<String> {
        s.get_last_endpoint()?
            .map_err(|_| anyhow::anyhow!("endpoint"))
    };
    println!(
        "{}",
        json!({"directory": endpoint(&publisher)?, "input": endpoint(&sub)?, "udp": udp.local_addr()?.to_string()})
    );
    std::io::stdout().flush()?;
    std::thread::spawn(move || {
        let mut msg = zmq::Message::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let mut items = [
                sub.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(udp.as_raw_fd(), zmq::POLLIN),
            ];
            if zmq::poll(&mut items, 100).is_err() {
                continue;
            }
            while sub.recv(&mut msg, zmq::DONTWAIT).is_ok() {
                let _ = publisher.send(&*msg, zmq::DONTWAIT);
            }
            while let Ok(n) = udp.recv(&mut buf) {
                let _ = publisher.send(&buf[..n], zmq::DONTWAIT);
            }
        }
    });
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        serve: Serve,
    }

    fn round_trip(serve: &Serve) -> Serve {
        let argv = std::iter::once("serve".to_owned()).chain(serve.args());
        Line::try_parse_from(argv)
            .expect("its own flags parse")
            .serve
    }

    #[test]
    fn a_server_reads_back_the_settings_it_is_started_with() {
        let alone = Serve {
            hwm: 2000,
            snapshot_interval: 0.5,
            cluster: ClusterOptions::default(),
            max_things: Some(7),
            state_file: Some(PathBuf::from("/tmp/x.journal")),
            curve_secret: Some("JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6".into()),
            http: true,
            history: Some(PathBuf::from("/tmp/x.db")),
        };
        assert!(round_trip(&alone).http);
        assert_eq!(round_trip(&alone).history, alone.history);
        assert_eq!(round_trip(&alone).max_things, Some(7));
        assert_eq!(round_trip(&alone).curve_secret, alone.curve_secret);
        assert_eq!(round_trip(&alone).state_file, alone.state_file);
        assert_eq!(round_trip(&alone).cluster.urls, Vec::<String>::new());
        assert_eq!(round_trip(&alone).hwm, 2000);
        assert_eq!(round_trip(&alone).snapshot_interval, 0.5);
        let clustered = Serve {
            cluster: ClusterOptions {
                urls: vec!["nats://127.0.0.1:1".into(), "nats://127.0.0.1:2".into()],
                node: "a".into(),
                flush_ms: 1.5,
                replicas: 3,
            },
            ..alone
        };
        assert_eq!(round_trip(&clustered), clustered);
    }
}
