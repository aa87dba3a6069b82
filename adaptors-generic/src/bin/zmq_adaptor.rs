//! `thingsbus-zmq-adaptor`: bridge any ZMQ publisher of JSON objects into the bus, with the
//! flags of the 0.2.x `generic_zmq_adaptor`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use thingsbus_adaptor::Adaptor;
use thingsbus_adaptors_generic::bridge::{BridgeCounts, Decision, Rules, Skip};
use thingsbus_adaptors_generic::bus::udp_addr;
use thingsbus_adaptors_generic::flags::positive_secs;
use thingsbus_adaptors_generic::logging::{self, LogArgs};
use thingsbus_protocol::endpoint::connect_url;

const EXAMPLE: &str = "\
Example: a camera daemon publishes on tcp://camhost:5556 messages like
  {\"mtype\": \"percept_update\", \"camname\": \"door\", \"frame_time\": 1423351104.9,
   \"luminance\": 31.8, \"ratio_busy\": 0.2}
Bridge its percept updates into the things shop.camera.<camname>, timestamped by the camera:

  thingsbus-zmq-adaptor --zone example.org -s tcp://camhost:5556 --ns shop.camera \\
      --nskey camname --tskey frame_time --filter mtype:percept_update \\
      --projections luminance,ratio_busy -d https://wiki.example.org/Cameras

and shop.camera.door becomes {\"luminance\": 31.8, \"ratio_busy\": 0.2}.

Messages that are not JSON objects, lack a projected key or the --nskey key, or whose --nskey
value is not a valid namespace are skipped and counted (never a crash); the counts are logged
every --report-interval at info level, and on exit.";

/// Bridges ZMQ publishers of JSON objects into thingsbus: each message becomes a thing update.
///
/// Takes the flags of the 0.2.x generic_zmq_adaptor, so existing service files keep working.
/// Sources and broker are reconnected by themselves when they restart.
#[derive(Debug, Parser)]
#[command(name = "thingsbus-zmq-adaptor", version, after_long_help = EXAMPLE)]
struct Args {
    /// Broker input URL, e.g. tcp://broker:7955 (`tcp://*:7955` means this machine).
    #[arg(
        short,
        long,
        env = "THINGSBUS_INPUT_URL",
        required_unless_present = "zone",
        conflicts_with = "zone"
    )]
    url: Option<String>,

    /// Zone whose `_thingsbus._tcp` SRV record names the broker, e.g. example.org.
    #[arg(short, long, env = "THINGSBUS_ZONE")]
    zone: Option<String>,

    /// ZMQ URLs to connect a SUB socket to (the bind end of someone's PUB), comma-separated.
    #[arg(short, long, required = true, value_delimiter = ',')]
    sources: Vec<String>,

    /// Base namespace of the things, e.g. shop.camera.
    #[arg(long)]
    ns: String,

    /// Key whose value (a string) names the thing below --ns: the thing is NS.<msg[KEY]>.
    #[arg(long, value_name = "KEY")]
    nskey: Option<String>,

    /// Key whose value is the update's time in seconds since 1970; without it, or when the value
    /// is not a number, the broker stamps the arrival time.
    #[arg(long, value_name = "KEY")]
    tskey: Option<String>,

    /// Forward only messages whose msg[KEY] is the string VALUE (messages without KEY are skipped).
    #[arg(long, value_name = "KEY:VALUE", value_parser = parse_filter)]
    filter: Option<Filter>,

    /// Comma-separated keys: the data is {key: msg[key], ...}. Without it, the whole message.
    #[arg(long, value_name = "KEYS", value_parser = parse_projections)]
    projections: Option<Projections>,

    /// Documentation URL sent with every update.
    #[arg(short, long = "documentation", value_name = "URL")]
    documentation_url: Option<String>,

    /// Send MessagePack datagrams over UDP (to the input port) instead of ZMQ.
    #[arg(long)]
    udp: bool,

    /// DNS server to ask for the SRV record instead of the system's, as IP:PORT.
    #[arg(long, env = "THINGSBUS_NAMESERVER")]
    nameserver: Option<SocketAddr>,

    /// The broker's CURVE public key (40 Z85 characters), for a broker started with
    /// --curve-secret-file: the updates then go encrypted. Not with --udp.
    #[arg(long, env = "THINGSBUS_SERVER_KEY", value_name = "Z85", value_parser = thingsbus_adaptors_generic::bus::server_key, conflicts_with = "udp")]
    server_key: Option<thingsbus_protocol::keys::PublicKey>,

    /// File with this adaptor's CURVE secret key (`thingsbus keygen --secret-file`); needs
    /// --server-key. Without it, a new key pair for the run.
    #[arg(long, env = "THINGSBUS_KEY_FILE", value_name = "PATH", requires = "server_key", value_parser = thingsbus_adaptors_generic::bus::key_file)]
    key_file: Option<thingsbus_protocol::keys::KeyPair>,

    /// Seconds between the info lines that count forwarded and skipped messages.
    #[arg(long, default_value_t = 60.0, value_parser = positive_secs)]
    report_interval: f64,

    /// Largest source message accepted, in bytes; larger ones make libzmq drop that connection.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(i64).range(64..=(1 << 30)))]
    max_message_bytes: i64,

    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Clone)]
struct Filter(String, String);

#[derive(Debug, Clone)]
struct Projections(Vec<String>);

fn parse_filter(s: &str) -> Result<Filter, String> {
    Rules::parse_filter(s).map(|(k, v)| Filter(k, v))
}

fn parse_projections(s: &str) -> Result<Projections, String> {
    Rules::parse_projections(s).map(Projections)
}

struct Bridge {
    rules: Rules,
    adaptor: Adaptor,
    source: zmq::Socket,
    report_every: Duration,
    total: BridgeCounts,
    interval: BridgeCounts,
}

impl Bridge {
    fn handle(&mut self, body: &[u8]) {
        match self.rules.decide(body) {
            Decision::Forward(f) => match self.adaptor.send_to(&f.sub_ns, &f.data, f.ts) {
                Ok(()) => {
                    self.total.forwarded.inc();
                    self.interval.forwarded.inc();
                }
                Err(e) => {
                    if self.interval.send_errors.get() == 0 {
                        tracing::warn!(error = %e, "update not sent (further ones this interval at debug level)");
                    } else {
                        tracing::debug!(error = %e, "update not sent");
                    }
                    self.total.send_errors.inc();
                    self.interval.send_errors.inc();
                }
            },
            Decision::Skip(reason, detail) => {
                let seen = self.interval.skipped(reason);
                // One line per reason and interval at most; the counts say the rest.
                if seen.get() == 0 && reason != Skip::Filtered {
                    tracing::warn!(%reason, %detail, "message skipped (further ones this interval at debug level)");
                } else {
                    tracing::debug!(%reason, %detail, "message skipped");
                }
                seen.inc();
                self.total.skipped(reason).inc();
            }
        }
    }

    fn run(mut self, stop: &AtomicBool) -> Adaptor {
        let mut next_report = Instant::now() + self.report_every;
        while !stop.load(Ordering::Relaxed) {
            match self.source.poll(zmq::POLLIN, 200) {
                Ok(n) if n > 0 => {
                    // Drain what is there; a multi-frame message (topic + payload) counts by its
                    // last frame.
                    while let Ok(frames) = self.source.recv_multipart(zmq::DONTWAIT) {
                        if let Some(body) = frames.last() {
                            self.handle(body);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "polling the sources failed");
                    break;
                }
            }
            if Instant::now() >= next_report {
                self.total.report("bridge report", Some(&self.interval));
                self.interval = BridgeCounts::default();
                next_report = Instant::now() + self.report_every;
            }
        }
        self.total.report("bridge stopped", None);
        self.adaptor
    }
}

fn source_socket(ctx: &zmq::Context, args: &Args) -> anyhow::Result<zmq::Socket> {
    let sub = ctx
        .socket(zmq::SUB)
        .context("creating the source SUB socket")?;
    sub.set_maxmsgsize(args.max_message_bytes)
        .context("setting ZMQ_MAXMSGSIZE")?;
    sub.set_rcvhwm(10_000).context("setting ZMQ_RCVHWM")?;
    sub.set_linger(0).context("setting ZMQ_LINGER")?;
    sub.set_subscribe(b"")
        .context("subscribing to everything")?;
    for url in &args.sources {
        let (url, rewritten) = connect_url(url.trim());
        if rewritten {
            tracing::info!(%url, "a '*' host in a connect URL means this machine");
        }
        sub.connect(&url).with_context(|| {
            format!("cannot connect to source {url:?}: expected a ZMQ URL such as tcp://host:5556")
        })?;
        tracing::info!(source = %url, "subscribed to source");
    }
    Ok(sub)
}

fn run(args: Args) -> anyhow::Result<()> {
    let rules = Rules {
        nskey: args.nskey.clone(),
        tskey: args.tskey.clone(),
        filter: args.filter.clone().map(|Filter(k, v)| (k, v)),
        projections: args.projections.clone().map(|p| p.0),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut builder = Adaptor::builder(&args.ns);
    if let Some(d) = &args.documentation_url {
        builder = builder.documentation_url(d);
    }
    if let Some(n) = args.nameserver {
        builder = builder.nameserver(n);
    }
    if let Some(server) = args.server_key {
        builder = builder.curve(
            thingsbus_protocol::transport::ClientKeys::new(server, args.key_file.clone())
                .context("making a CURVE key pair")?,
        );
    }
    builder = match (&args.zone, &args.url) {
        (Some(z), _) => builder.zone(z).prefer_udp(args.udp),
        (None, Some(u)) if args.udp => builder.udp(&udp_addr(u)?),
        (None, Some(u)) => builder.url(u),
        (None, None) => anyhow::bail!("give the broker as --url or --zone"),
    };
    let adaptor = runtime
        .block_on(builder.connect())
        .with_context(|| format!("cannot start publishing as {:?}", args.ns))?;
    let ctx = zmq::Context::new();
    let source = source_socket(&ctx, &args)?;
    tracing::info!(
        ns = %args.ns,
        sources = args.sources.len(),
        transport = if args.udp { "udp" } else { "zmq" },
        "bridging"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let bridge = Bridge {
        rules,
        adaptor,
        source,
        report_every: Duration::from_secs_f64(args.report_interval),
        total: BridgeCounts::default(),
        interval: BridgeCounts::default(),
    };
    let worker = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("bridge".into())
            .spawn(move || bridge.run(&stop))
            .context("starting the bridge thread")?
    };
    let signal = runtime.block_on(async {
        tokio::select! {
            s = logging::shutdown_signal() => s.map(Some),
            // The worker ends early only on a socket error; stop waiting for a signal then.
            () = async { while !worker.is_finished() { tokio::time::sleep(Duration::from_millis(200)).await } } => Ok(None),
        }
    });
    stop.store(true, Ordering::Relaxed);
    let adaptor = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the bridge thread panicked"))?;
    match signal.context("installing signal handlers")? {
        Some(s) => tracing::info!(signal = s, "stopping"),
        None => anyhow::bail!("the source socket failed (see the log above)"),
    }
    if !adaptor.close(Duration::from_secs(2)) {
        tracing::warn!("some updates were still queued for an unreachable broker and are lost");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thingsbus-zmq-adaptor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
