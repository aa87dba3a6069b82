//! The systems under test, each in its own process: our broker and the floor are this same
//! binary started in a hidden server mode; the Python broker is the original 0.2.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

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
}

/// `--cluster` settings of a bench broker.
#[derive(Debug, Clone)]
pub(crate) struct ClusterOptions {
    pub(crate) urls: Vec<String>,
    pub(crate) node: String,
    pub(crate) flush_ms: f64,
    pub(crate) replicas: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            subscriber_hwm: 100_000,
            snapshot_interval_s: 3600.0,
            cluster: None,
            cpus: None,
        }
    }
}

/// A running server process, killed on drop.
pub(crate) struct Server {
    pub(crate) kind: Kind,
    child: Child,
    pub(crate) directory: String,
    pub(crate) input: String,
    pub(crate) udp: SocketAddr,
    /// The snapshot request endpoint (ours only).
    pub(crate) snapshot: Option<String>,
    /// The command endpoint (ours only).
    pub(crate) command: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub(crate) fn start(kind: Kind, opts: Options) -> anyhow::Result<Server> {
        match kind {
            Kind::Ours | Kind::Floor => {
                let exe = std::env::current_exe().context("locating the bench binary")?;
                let mode = if kind == Kind::Ours {
                    "serve-broker"
                } else {
                    "serve-floor"
                };
                let mut args = vec![
                    mode.to_owned(),
                    opts.subscriber_hwm.to_string(),
                    opts.snapshot_interval_s.to_string(),
                ];
                if let Some(c) = &opts.cluster {
                    args.extend([
                        c.urls.join(","),
                        c.node.clone(),
                        c.flush_ms.to_string(),
                        c.replicas.to_string(),
                    ]);
                }
                let mut command = match opts.cpus {
                    Some(cpus) => {
                        let mut c = Command::new("taskset");
                        c.args(["-c", cpus]).arg(exe);
                        c
                    }
                    None => Command::new(exe),
                };
                let mut child = command
                    .args(&args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .with_context(|| format!("starting {mode}"))?;
                let stdout = child.stdout.take().context("server stdout")?;
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line)?;
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
                    child,
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
                let child = Command::new(python)
                    .args(["-c", &script])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("starting the Python broker")?;
                Ok(Server {
                    kind,
                    child,
                    directory: format!("tcp://127.0.0.1:{dport}"),
                    input: format!("tcp://127.0.0.1:{iport}"),
                    udp: format!("127.0.0.1:{iport}").parse()?,
                    snapshot: None,
                    command: None,
                })
            }
        }
    }

    /// CPU seconds the server process has used so far (user + system).
    pub(crate) fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id()).unwrap_or(0.0)
    }

    /// Resident memory of the server process, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
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

/// Hidden mode `serve-broker HWM SNAPSHOT_S [NATS_URLS NODE FLUSH_MS REPLICAS]`: our broker,
/// endpoints on stdout (once it serves: with a cluster, after loading the bucket), until stdin
/// closes.
pub(crate) fn serve_broker(args: &[String]) -> anyhow::Result<()> {
    let hwm: i32 = args.first().context("hwm")?.parse()?;
    let interval: f64 = args.get(1).context("interval")?.parse()?;
    let cluster = match args.get(2) {
        None => None,
        Some(urls) => Some(thingsbus_broker::ClusterConfig {
            flush: Duration::from_secs_f64(args.get(4).context("flush")?.parse::<f64>()? / 1e3),
            replicas: args.get(5).context("replicas")?.parse()?,
            ..thingsbus_broker::ClusterConfig::new(
                urls.split(',').map(str::to_owned).collect(),
                args.get(3).context("node")?.clone(),
            )
        }),
    };
    let config = thingsbus_broker::Config {
        cluster,
        subscriber_hwm: hwm,
        input_hwm: 100_000,
        snapshot_interval: Duration::from_secs_f64(interval),
        live_window: Duration::from_secs(3600),
        ..thingsbus_broker::Config::ephemeral()
    };
    let broker = thingsbus_broker::Broker::start(config)?;
    let e = broker.endpoints();
    println!(
        "{}",
        json!({"directory": e.directory, "input": e.input, "udp": e.udp.to_string(), "snapshot": e.snapshot, "command": e.command})
    );
    std::io::stdout().flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

/// Hidden mode `serve-floor HWM _`: the least any broker must do. One thread polls the ZMQ SUB
/// and the UDP socket, drains both without blocking and forwards every frame and datagram to the
/// PUB as it is: no parsing, no state, no copies beyond libzmq's own.
pub(crate) fn serve_floor(args: &[String]) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let hwm: i32 = args.first().context("hwm")?.parse()?;
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB)?;
    sub.set_subscribe(b"")?;
    sub.set_rcvhwm(100_000)?;
    sub.bind("tcp://127.0.0.1:*")?;
    let publisher = ctx.socket(zmq::PUB)?;
    publisher.set_sndhwm(hwm)?;
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

/// CPU seconds process `pid` has used so far (user + system), from `/proc/<pid>/stat`.
pub(crate) fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let tick = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name in parentheses: utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
}
