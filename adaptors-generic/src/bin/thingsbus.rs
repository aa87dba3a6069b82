//! `thingsbus`: look at and poke the bus from a shell.

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use thingsbus_adaptors_generic::bus::BusArgs;
use thingsbus_adaptors_generic::flags::positive_secs;
use thingsbus_adaptors_generic::logging::{self, LogFormat};
use thingsbus_adaptors_generic::srv::{self, NoReport};
use thingsbus_adaptors_generic::{listing, render};
use thingsbus_client::{Client, CommandError, EventKind, SubscribeOptions, Thing};
use thingsbus_protocol::{Namespace, Timestamp};

const EXAMPLES: &str = "\
Examples:
  thingsbus ls                              everything on the broker on this machine
  thingsbus -z example.org get shop.door    one thing, broker found through DNS SRV
  thingsbus watch shop --tree --json        live events below shop, one JSON object per line
  thingsbus send shop.door '{\"open\": true}'
  thingsbus srv example.org                 check the SRV record and the broker it names
  thingsbus call demo.led '{\"on\": true}'  a command to a thing; prints the thing's reply
  thingsbus keygen --secret-file broker.key a CURVE key pair: the secret in the file, public printed
  thingsbus history kitchen.fridge temp --http-url http://127.0.0.1:7980
                                            the last 24 h of a field as a sparkline (broker with
                                            --http and --history)

Exit codes: 0 done, 1 not found or not delivered (get, send, srv, history) or refused by the thing (call),
2 bad usage or the bus could not be reached, 3 no_route (nobody serves it), 4 timeout or gone,
5 refused by the broker (busy, not_allowed, bad_request).";

/// Look at and poke a thingsbus from a shell: read things, list the directory, follow live
/// events, send updates, check the DNS set-up.
///
/// The broker is found through -z/--zone (DNS SRV) or -u/--url (its directory URL; input is
/// port+1); with neither, the broker on this machine (tcp://127.0.0.1:7954).
#[derive(Debug, Parser)]
#[command(name = "thingsbus", version, after_help = EXAMPLES)]
struct Args {
    #[command(flatten)]
    bus: BusArgs,

    /// How long to wait for the broker (DNS, connection, the directory, a command's reply):
    /// seconds, or with a unit (500ms, 2s, 1m).
    #[arg(long, global = true, default_value = "5", value_parser = positive_secs)]
    timeout: f64,

    /// More log output on stderr (-v info, -vv debug). RUST_LOG, when set, wins.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A thing's value, age and documentation URL. Exit 1 if the thing is unknown.
    Get {
        /// The thing, e.g. shop.door.
        ns: String,
        /// One JSON object: {"ns", "data", "ts", "age", "documentation_url", "stale", "seq"}.
        #[arg(long)]
        json: bool,
    },
    /// The things at and below NS (default: all), with age and a short value; stale things
    /// (the broker said they stopped reporting) are marked.
    Ls {
        /// Subtree to list; all things when omitted.
        ns: Option<String>,
        /// One JSON object mapping ns to {"data", "ts", "stale"}.
        #[arg(long)]
        json: bool,
        /// Longest value shown, in characters (human output).
        #[arg(long, default_value_t = 60)]
        width: usize,
    },
    /// Live events until Ctrl-C: updates, snapshot replays (with --snapshots) and expiries.
    Watch {
        /// The thing to follow; everything when omitted.
        ns: Option<String>,
        /// Also the things below NS.
        #[arg(long)]
        tree: bool,
        /// Also values replayed from snapshots (first the whole directory, then periodically).
        #[arg(long)]
        snapshots: bool,
        /// One JSON object per line: {"event", "ns", "data", "ts", "seq", "documentation_url"}.
        #[arg(long)]
        json: bool,
    },
    /// Publish one update. Exit 1 if it could not be handed to the broker in time.
    Send {
        /// The thing, e.g. shop.door.
        ns: String,
        /// The value as JSON: '{"open": true}', 21.5, '"text"' (quotes included).
        data: String,
        /// Send one MessagePack datagram over UDP instead of ZMQ.
        #[arg(long)]
        udp: bool,
        /// Time of the value in seconds since 1970 (default: the broker stamps it).
        #[arg(long, value_name = "SECONDS")]
        ts: Option<f64>,
        /// Documentation URL for the thing.
        #[arg(short, long = "documentation", value_name = "URL")]
        documentation_url: Option<String>,
    },
    /// Send a command to a thing and print its reply's data (JSON). The thing's adaptor must
    /// serve it; exit codes tell the outcomes apart (see below).
    Call {
        /// The thing, e.g. demo.led.
        ns: String,
        /// The command as JSON, e.g. '{"on": true}'.
        data: String,
    },
    /// A new CURVE key pair, in Z85: for a broker (--curve-secret-file) or a client
    /// (--key-file). Prints "public KEY" and "secret KEY"; with --secret-file, writes the secret
    /// key there (mode 0600, one line) and prints only the public key.
    Keygen {
        /// Write the secret key to this new file instead of printing it.
        #[arg(long, value_name = "PATH")]
        secret_file: Option<std::path::PathBuf>,
        /// Replace the --secret-file if it exists.
        #[arg(long, requires = "secret_file")]
        force: bool,
    },
    /// A thing's recorded values over time, from the broker's HTTP side (a broker started with
    /// --http and --history): a sparkline with min, max and last by default.
    History {
        /// The thing, e.g. kitchen.fridge.
        ns: String,
        /// The field of an object thing by dotted path, e.g. temp or door.open (not needed for
        /// a number thing, or a thing with one numeric field).
        field: Option<String>,
        /// From when: a span back from now (2h, 7d), epoch seconds or RFC 3339.
        #[arg(long, default_value = "24h")]
        since: String,
        /// Until when (default: now), in the same forms as --since.
        #[arg(long)]
        until: Option<String>,
        /// Time each point covers (30s, 5m, 1h); default: about 300 points over the span.
        #[arg(long)]
        step: Option<String>,
        /// The points as CSV: t,time,min,avg,max,n.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// The broker's JSON answer: {"ns", "field", "tier", "since", "until", "step", "points"}.
        #[arg(long)]
        json: bool,
        /// Columns of the sparkline.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u16).range(1..=1000))]
        width: u16,
        /// The broker's HTTP address (its --http), e.g. http://127.0.0.1:7980.
        #[arg(long, env = "THINGSBUS_HTTP_URL", value_name = "URL")]
        http_url: Option<String>,
        /// A token of the broker's --http-token-file, when it has one.
        #[arg(
            long,
            env = "THINGSBUS_HTTP_TOKEN",
            value_name = "TOKEN",
            hide_env_values = true
        )]
        http_token: Option<String>,
    },
    /// A doctor for discovery: the SRV records of ZONE in RFC 2782 order, the broker a client
    /// would pick, and whether its ports answer. Exit 1 if that broker does not answer.
    Srv {
        /// Zone to look up (default: --zone).
        zone: Option<String>,
        /// One JSON object: {"name", "nameserver", "records": [...], "chosen", "checks": {...}}.
        #[arg(long)]
        json: bool,
    },
}

/// How a command ended, beyond success.
enum Failure {
    /// A command's outcome other than a reply: its own exit code and message.
    Command(u8, String),
    /// Not found / not delivered / not answering: exit 1, message already printed or given here.
    NotFound(String),
    /// The bus could not be used at all: exit 2.
    Unreachable(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Unreachable(e)
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init("warn", args.verbose, 0, LogFormat::Text);
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .map_err(Failure::Unreachable)
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Command(code, msg)) => {
            eprintln!("thingsbus: {msg}");
            ExitCode::from(code)
        }
        Err(Failure::NotFound(msg)) => {
            if !msg.is_empty() {
                eprintln!("thingsbus: {msg}");
            }
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(e)) => {
            eprintln!("thingsbus: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Outcome {
    let timeout = Duration::from_secs_f64(args.timeout);
    match args.command {
        Command::Get { ref ns, json } => get(&args.bus, timeout, ns, json).await,
        Command::Ls {
            ref ns,
            json,
            width,
        } => ls(&args.bus, timeout, ns.as_deref().unwrap_or(""), json, width).await,
        Command::Watch {
            ref ns,
            tree,
            snapshots,
            json,
        } => watch(&args.bus, timeout, ns.as_deref(), tree, snapshots, json).await,
        Command::Send {
            ref ns,
            ref data,
            udp,
            ts,
            ref documentation_url,
        } => {
            send(
                &args.bus,
                timeout,
                ns,
                data,
                udp,
                ts,
                documentation_url.as_deref(),
            )
            .await
        }
        Command::Call { ref ns, ref data } => call(&args.bus, timeout, ns, data).await,
        Command::Keygen {
            ref secret_file,
            force,
        } => keygen(secret_file.as_deref(), force),
        Command::History {
            ref ns,
            ref field,
            ref since,
            ref until,
            ref step,
            csv,
            json,
            width,
            ref http_url,
            ref http_token,
        } => {
            let query = HistoryQuery {
                ns,
                field: field.as_deref(),
                since,
                until: until.as_deref(),
                step: step.as_deref(),
            };
            let form = match (csv, json) {
                (true, _) => HistoryForm::Csv,
                (_, true) => HistoryForm::Json,
                _ => HistoryForm::Sparkline(usize::from(width)),
            };
            history(
                http_url.as_deref(),
                http_token.as_deref(),
                timeout,
                &query,
                form,
            )
        }
        Command::Srv { ref zone, json } => {
            let zone = zone
                .clone()
                .or_else(|| args.bus.zone.clone())
                .ok_or_else(|| {
                    Failure::Unreachable(anyhow::anyhow!(
                        "which zone? give it as `thingsbus srv example.org`"
                    ))
                })?;
            srv(&args.bus, timeout, &zone, json).await
        }
    }
}

/// What `thingsbus history` asks the broker for.
struct HistoryQuery<'a> {
    ns: &'a str,
    field: Option<&'a str>,
    since: &'a str,
    until: Option<&'a str>,
    step: Option<&'a str>,
}

enum HistoryForm {
    Sparkline(usize),
    Csv,
    Json,
}

/// `GET URL/api/history/NS?...`, printed as asked. 404 (nothing recorded) exits 1; a refused
/// parameter or an unreachable broker exits 2.
fn history(
    url: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
    q: &HistoryQuery<'_>,
    form: HistoryForm,
) -> Outcome {
    let Some(url) = url else {
        return Err(Failure::Unreachable(anyhow::anyhow!(
            "history comes from the broker's HTTP side: give its address with --http-url (or \
             THINGSBUS_HTTP_URL), e.g. --http-url http://127.0.0.1:7980 for a broker started \
             with --http 127.0.0.1:7980 --history FILE"
        )));
    };
    valid_ns(q.ns)?;
    let endpoint = format!("{}/api/history/{}", url.trim_end_matches('/'), q.ns);
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    let mut req = agent.get(&endpoint).query("since", q.since);
    for (key, value) in [("field", q.field), ("until", q.until), ("step", q.step)] {
        if let Some(v) = value {
            req = req.query(key, v);
        }
    }
    if matches!(form, HistoryForm::Csv) {
        req = req.query("format", "csv");
    }
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let body = match req.call() {
        Ok(r) => r
            .into_string()
            .with_context(|| format!("reading the answer of {endpoint}"))?,
        Err(ureq::Error::Status(code, r)) => {
            let why = r.into_string().unwrap_or_default();
            let why = why.trim();
            return Err(match code {
                404 => Failure::NotFound(why.to_owned()),
                401 => Failure::Unreachable(anyhow::anyhow!(
                    "{why} (give a token with --http-token or THINGSBUS_HTTP_TOKEN)"
                )),
                _ => Failure::Unreachable(anyhow::anyhow!("{endpoint}: {code}: {why}")),
            });
        }
        Err(e) => {
            return Err(Failure::Unreachable(anyhow::anyhow!(
                "{endpoint}: {e} (is the broker's --http at {url}?)"
            )))
        }
    };
    let mut out = io::stdout().lock();
    let width = match form {
        HistoryForm::Csv | HistoryForm::Json => {
            let _ = writeln!(out, "{}", body.trim_end());
            return Ok(());
        }
        HistoryForm::Sparkline(width) => width,
    };
    let v: Value =
        serde_json::from_str(&body).with_context(|| format!("{endpoint} did not answer JSON"))?;
    let _ = writeln!(out, "{}", sparkline_text(&v, width));
    Ok(())
}

/// The human form of a history answer: the thing and field, the sparkline, min, max and last,
/// then the span, the step and the tier read.
fn sparkline_text(v: &Value, width: usize) -> String {
    let num = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    let points: Vec<(f64, f64, f64, f64)> = v["points"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| (num(&p["t"]), num(&p["min"]), num(&p["avg"]), num(&p["max"])))
                .collect()
        })
        .unwrap_or_default();
    let (since, until, step) = (num(&v["since"]), num(&v["until"]), num(&v["step"]));
    let field = v["field"].as_str().unwrap_or("");
    let name = if field.is_empty() {
        v["ns"].as_str().unwrap_or("").to_owned()
    } else {
        format!("{} {field}", v["ns"].as_str().unwrap_or(""))
    };
    let steps = ((until - since) / step).ceil().max(1.0) as usize;
    let cols = thingsbus_adaptors_generic::sparkline::columns(
        &points.iter().map(|p| (p.0, p.2)).collect::<Vec<_>>(),
        since,
        until,
        width.min(steps),
    );
    let line = thingsbus_adaptors_generic::sparkline::draw(&cols);
    let stats = match points.last() {
        None => "nothing recorded in this span".to_owned(),
        Some(last) => {
            let min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let max = points.iter().map(|p| p.3).fold(f64::NEG_INFINITY, f64::max);
            format!("min {min}  max {max}  last {}", last.2)
        }
    };
    format!(
        "{name}  {line}  {stats}\n{} → {}, step {}, {} tier, {} points",
        render::utc(since),
        render::utc(until),
        step_text(step),
        v["tier"].as_str().unwrap_or("?"),
        points.len()
    )
}

/// `5m`, `1h`, `30s`, `1.5s`: a step in its largest whole unit.
fn step_text(secs: f64) -> String {
    for (unit, size) in [("d", 86_400.0), ("h", 3_600.0), ("m", 60.0), ("s", 1.0)] {
        if secs >= size && (secs / size).fract() == 0.0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

fn keygen(secret_file: Option<&std::path::Path>, force: bool) -> Outcome {
    thingsbus_protocol::transport::require_curve().map_err(anyhow::Error::from)?;
    let pair = thingsbus_protocol::keys::KeyPair::generate().map_err(anyhow::Error::from)?;
    match secret_file {
        Some(path) => {
            pair.secret
                .write_file(path, force)
                .map_err(anyhow::Error::from)?;
            println!("public {}", pair.public);
            eprintln!(
                "(clients of a zone find the key without --server-key when it publishes \
                 {})",
                thingsbus_protocol::discovery::txt_record("ZONE", &pair.public.to_string())
            );
        }
        None => {
            println!("public {}", pair.public);
            println!("secret {}", pair.secret.to_z85());
        }
    }
    Ok(())
}

fn valid_ns(ns: &str) -> Result<Namespace, Failure> {
    Namespace::new(ns).map_err(|e| Failure::Unreachable(anyhow::anyhow!("{e}")))
}

/// A client that also learns the things that stopped reporting, so they can be shown as stale.
async fn connect(bus: &BusArgs, timeout: Duration) -> Result<Client, Failure> {
    bus.client(timeout)
        .include_stale(true)
        .connect()
        .await
        .with_context(|| format!("cannot reach the bus at {}", bus.describe()))
        .map_err(Failure::Unreachable)
}

/// Waits until the mirror holds the whole directory; `Unreachable` on time-out.
async fn filled(client: &Client, timeout: Duration) -> Result<(), Failure> {
    if client.wait_filled(timeout).await {
        return Ok(());
    }
    Err(not_filled(client, timeout))
}

fn not_filled(client: &Client, timeout: Duration) -> Failure {
    Failure::Unreachable(anyhow::anyhow!(
        "no directory from {} within {:.1}s: is the broker running? (a 0.2.x broker sends its \
         directory every 15 s: try --timeout 20; a broker with --curve-secret-file needs its \
         public key in --server-key, and with --auth-file a key it lets read; \
         `thingsbus srv ZONE` checks a zone)",
        client.url(),
        timeout.as_secs_f64()
    ))
}

fn thing_json(t: &Thing) -> Value {
    json!({
        "ns": t.ns.as_str(),
        "data": t.value(),
        "ts": t.ts,
        "age": t.age(),
        "documentation_url": t.documentation_url.as_deref(),
        "stale": t.stale,
        "seq": t.seq,
    })
}

async fn get(bus: &BusArgs, timeout: Duration, ns: &str, as_json: bool) -> Outcome {
    let ns = valid_ns(ns)?;
    let client = connect(bus, timeout).await?;
    // A live update may answer before the directory is complete.
    let deadline = Instant::now() + timeout;
    let thing = loop {
        if let Some(t) = client.get(ns.as_str()) {
            break Some(t);
        }
        if client.is_filled() {
            break client.get(ns.as_str());
        }
        if Instant::now() >= deadline {
            return Err(not_filled(&client, timeout));
        }
        client.wait_filled(Duration::from_millis(20)).await;
    };
    let Some(t) = thing else {
        let below = client.walk(ns.as_str());
        let msg = if below.is_empty() {
            format!(
                "{ns}: no such thing on {} ({} things there; `thingsbus ls` lists them)",
                client.url(),
                client.len()
            )
        } else {
            format!(
                "{ns}: has no value of its own, only {} things below it (`thingsbus ls {ns}`)",
                below.len()
            )
        };
        return Err(Failure::NotFound(msg));
    };
    let mut out = io::stdout().lock();
    let written = if as_json {
        writeln!(out, "{}", thing_json(&t))
    } else {
        let pretty =
            serde_json::to_string_pretty(&t.value()).unwrap_or_else(|_| t.data.to_string());
        let mut text = format!(
            "ns     {}\nvalue  {}\n",
            t.ns,
            pretty.replace('\n', "\n       ")
        );
        text.push_str(&format!(
            "age    {} (ts {}, {})\n",
            render::age(t.age()),
            t.ts,
            render::utc(t.ts)
        ));
        if let Some(d) = &t.documentation_url {
            text.push_str(&format!("docs   {d}\n"));
        }
        if t.stale {
            text.push_str("stale  yes: the broker says it stopped reporting\n");
        }
        out.write_all(text.as_bytes())
    };
    quiet_pipe(written)
}

/// A closed stdout (`| head`) ends the command quietly.
fn quiet_pipe(r: io::Result<()>) -> Outcome {
    match r {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Failure::Unreachable(
            anyhow::Error::new(e).context("writing to stdout"),
        )),
        _ => Ok(()),
    }
}

async fn ls(bus: &BusArgs, timeout: Duration, ns: &str, as_json: bool, width: usize) -> Outcome {
    let ns = valid_ns(ns)?;
    let client = connect(bus, timeout).await?;
    filled(&client, timeout).await?;
    let things = client.walk(ns.as_str());
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let written = if as_json {
        listing::write_json(&mut out, &things)
    } else {
        listing::write_table(&mut out, &things, width, Timestamp::now().as_secs())
    };
    quiet_pipe(written.and_then(|()| out.flush()))
}

async fn watch(
    bus: &BusArgs,
    timeout: Duration,
    ns: Option<&str>,
    tree: bool,
    snapshots: bool,
    as_json: bool,
) -> Outcome {
    // No NS: the whole bus, which only makes sense as a tree.
    let (ns, tree) = match ns {
        Some(ns) => (valid_ns(ns)?, tree),
        None => (Namespace::root(), true),
    };
    // Subscribed before the client starts, so even the first snapshot is seen.
    let mut builder = bus.client(timeout);
    let mut sub = builder
        .subscribe(
            ns.as_str(),
            SubscribeOptions::new()
                .tree(tree)
                .snapshots(snapshots)
                .capacity(65_536),
        )
        .map_err(|e| Failure::Unreachable(e.into()))?;
    let client = builder
        .connect()
        .await
        .with_context(|| format!("cannot reach the bus at {}", bus.describe()))?;
    tracing::info!(url = %client.url(), %ns, tree, snapshots, "watching");
    let signal = logging::shutdown_signal();
    tokio::pin!(signal);
    let mut out = io::stdout().lock();
    loop {
        let event = tokio::select! {
            _ = &mut signal => return Ok(()),
            e = sub.next() => e,
        };
        let line = match event {
            None => return Ok(()),
            Some(Err(lagged)) => {
                eprintln!("thingsbus: {lagged} (the terminal or pipe is slower than the bus)");
                continue;
            }
            Some(Ok(e)) => {
                let kind = match e.kind {
                    EventKind::Update => "update",
                    EventKind::Snapshot => "snapshot",
                    EventKind::Expired => "expired",
                    _ => "other",
                };
                let t = &e.thing;
                if as_json {
                    json!({
                        "event": kind,
                        "ns": t.ns.as_str(),
                        "data": t.value(),
                        "ts": t.ts,
                        "seq": t.seq,
                        "documentation_url": t.documentation_url.as_deref(),
                    })
                    .to_string()
                } else {
                    format!(
                        "{}  {kind:<8}  {}  {}",
                        render::utc_time_of_day(t.ts),
                        t.ns,
                        render::short_value(&t.data, 200)
                    )
                }
            }
        };
        // stdout is line-buffered: each event is out as soon as it is written.
        if let Err(e) = writeln!(out, "{line}") {
            return quiet_pipe(Err(e));
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn send(
    bus: &BusArgs,
    timeout: Duration,
    ns: &str,
    data: &str,
    udp: bool,
    ts: Option<f64>,
    documentation_url: Option<&str>,
) -> Outcome {
    valid_ns(ns)?;
    let value: Value = serde_json::from_str(data).map_err(|e| {
        Failure::Unreachable(anyhow::anyhow!(
            "the value {data:?} is not JSON ({e}); a text needs its quotes: '\"{data}\"'"
        ))
    })?;
    if let Some(t) = ts {
        if !(t.is_finite() && t >= 0.0) {
            return Err(Failure::Unreachable(anyhow::anyhow!(
                "--ts {t} is not a time in seconds since 1970"
            )));
        }
    }
    let mut builder = bus.adaptor(ns, udp, timeout)?;
    if let Some(d) = documentation_url {
        builder = builder.documentation_url(d);
    }
    let adaptor = builder
        .connect()
        .await
        .with_context(|| format!("cannot reach the bus at {}", bus.describe()))?;
    adaptor
        .send_to("", &value, ts)
        .map_err(|e| Failure::Unreachable(e.into()))?;
    let closed = tokio::task::spawn_blocking(move || adaptor.close(timeout))
        .await
        .unwrap_or(false);
    if closed {
        Ok(())
    } else {
        Err(Failure::NotFound(format!(
            "{ns} not delivered: no broker took the connection at {} within {:.1}s",
            bus.describe(),
            timeout.as_secs_f64()
        )))
    }
}

async fn call(bus: &BusArgs, timeout: Duration, ns: &str, data: &str) -> Outcome {
    valid_ns(ns)?;
    let value: Value = serde_json::from_str(data).map_err(|e| {
        Failure::Unreachable(anyhow::anyhow!(
            "the command {data:?} is not JSON ({e}); a text needs its quotes: '\"{data}\"'"
        ))
    })?;
    // No need for the directory: only the command endpoint is used.
    let client = bus
        .client(timeout)
        .instant_snapshot(false)
        .connect()
        .await
        .with_context(|| format!("cannot reach the bus at {}", bus.describe()))?;
    match client.command(ns, &value, timeout).await {
        Ok(reply) => {
            let mut out = io::stdout().lock();
            quiet_pipe(writeln!(out, "{reply}"))
        }
        Err(e) => {
            let code = match &e {
                CommandError::Refused { .. } => 1,
                CommandError::Transport(_) => 2,
                CommandError::NoRoute(_) => 3,
                CommandError::Timeout(_) | CommandError::Gone(_) => 4,
                _ => 5,
            };
            Err(Failure::Command(code, format!("{ns}: {e}")))
        }
    }
}

async fn srv(bus: &BusArgs, timeout: Duration, zone: &str, as_json: bool) -> Outcome {
    let report = match srv::diagnose(zone, bus.nameserver, timeout).await {
        Ok(r) => r,
        Err(e @ NoReport::Empty(_)) => return Err(Failure::NotFound(e.text())),
        Err(e) => {
            println!(
                "{}",
                if as_json {
                    e.json().to_string()
                } else {
                    e.text()
                }
            );
            return Err(Failure::NotFound(String::new()));
        }
    };
    let mut out = io::stdout().lock();
    quiet_pipe(if as_json {
        writeln!(out, "{}", report.json())
    } else {
        out.write_all(report.text().as_bytes())
    })?;
    match report.chosen() {
        Some(chosen) if !report.healthy() => Err(Failure::NotFound(format!(
            "the broker {chosen} does not answer"
        ))),
        _ => Ok(()),
    }
}
