//! `thingsbus-broker`: flags in, broker running until SIGINT or SIGTERM.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use thingsbus_broker::{Broker, Config, OpenFiles};
use tracing_subscriber::EnvFilter;

/// A thingsbus broker: keeps the live directory of things, republishes every update and
/// periodic snapshots. Compatible with thingsbus 0.2.x adaptors, boards and clients.
///
/// Every flag can also be set in the environment as THINGSBUS_<FLAG>, e.g. THINGSBUS_PORT=7954.
/// Log filtering follows RUST_LOG when it is set (e.g. RUST_LOG=thingsbus_broker=debug).
#[derive(Debug, Parser)]
#[command(name = "thingsbus-broker", version, about, long_about)]
struct Args {
    /// Address to bind every endpoint to.
    #[arg(long, env = "THINGSBUS_BIND", default_value = "0.0.0.0")]
    bind: IpAddr,

    /// Directory output port (clients connect here). ZMQ and UDP input use PORT+1.
    #[arg(long, env = "THINGSBUS_PORT", default_value_t = 7954)]
    port: u16,

    /// Input port for ZMQ and UDP, instead of PORT+1.
    #[arg(long, env = "THINGSBUS_INPUT_PORT")]
    input_port: Option<u16>,

    /// Snapshot request port (late joiners get the directory at once), instead of PORT+2.
    #[arg(long, env = "THINGSBUS_SNAPSHOT_PORT")]
    snapshot_port: Option<u16>,

    /// Seconds between updates of the broker's own thing, thingsbus.broker (its counters); 0 turns it off.
    #[arg(long, env = "THINGSBUS_STATS_INTERVAL", default_value_t = 5.0, value_parser = non_negative_secs)]
    stats_interval: f64,

    /// Seconds between periodic snapshots on the directory output.
    #[arg(long, env = "THINGSBUS_SNAPSHOT_INTERVAL", default_value_t = 15.0, value_parser = positive_secs)]
    snapshot_interval: f64,

    /// Only things whose last timestamp is at most this many seconds old appear in snapshots.
    #[arg(long, env = "THINGSBUS_LIVE_WINDOW", default_value_t = 60.0, value_parser = positive_secs)]
    live_window: f64,

    /// Forget a thing whose last timestamp is older than this many seconds.
    #[arg(long, env = "THINGSBUS_FORGET_AFTER", default_value_t = 86_400.0, value_parser = positive_secs)]
    forget_after: f64,

    /// Drop an update whose timestamp is more than this many seconds ahead of this machine's
    /// clock (counted as future_ts): its sender's clock is wrong, and such a value would win
    /// over every later one in a cluster and never expire.
    #[arg(long, env = "THINGSBUS_MAX_CLOCK_SKEW", default_value_t = 300.0, value_parser = positive_secs)]
    max_clock_skew: f64,

    /// Most things the broker holds; an update that would add one more is dropped (counted as
    /// too_many_things) while things already held keep changing.
    #[arg(long, env = "THINGSBUS_MAX_THINGS", default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_things: u64,

    /// Most bytes of values the broker holds (as sent on the wire); an update that would grow
    /// them beyond this is dropped (counted as too_many_bytes).
    #[arg(long, env = "THINGSBUS_MAX_BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1024..))]
    max_bytes: u64,

    /// Largest input message accepted, in bytes (ZMQ frames and UDP datagrams). Larger ZMQ
    /// frames make libzmq drop that sender's connection; it reconnects by itself.
    #[arg(long, env = "THINGSBUS_MAX_MESSAGE_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(64..=(1 << 30)))]
    max_message_bytes: u64,

    /// Messages queued for one slow subscriber before that subscriber alone loses messages.
    #[arg(long, env = "THINGSBUS_SUBSCRIBER_HWM", default_value_t = 10_000, value_parser = clap::value_parser!(i32).range(1..))]
    subscriber_hwm: i32,

    /// Messages queued per ZMQ input connection before that sender's messages are dropped.
    #[arg(long, env = "THINGSBUS_INPUT_HWM", default_value_t = 10_000, value_parser = clap::value_parser!(i32).range(1..))]
    input_hwm: i32,

    /// Upper bound on one snapshot message, in bytes; bigger directories go out in several.
    #[arg(long, env = "THINGSBUS_SNAPSHOT_CHUNK_BYTES", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(64 << 20)))]
    snapshot_chunk_bytes: u64,

    /// Keep the directory in this file (a journal) so it survives restarts and crashes; it is
    /// created if missing. Without it the directory lives in memory only, as in 0.2.x.
    #[arg(long, env = "THINGSBUS_STATE_FILE", value_name = "PATH")]
    state_file: Option<std::path::PathBuf>,

    /// With --state-file: longest time, in seconds, between a write and its fsync (what a machine
    /// crash can lose; a killed broker loses nothing it wrote). 0 syncs after every batch.
    #[arg(long, env = "THINGSBUS_FSYNC_INTERVAL", default_value_t = 1.0, value_parser = non_negative_secs)]
    fsync_interval: f64,

    /// Serve metrics (/metrics), health (/healthz, /readyz), the directory as JSON (/api/things),
    /// live events (/api/events, Server-Sent Events), a web page (/) and commands to things
    /// (POST /api/things/NS/command) on this address, e.g. 127.0.0.1:8080. Off unless given.
    #[arg(long, env = "THINGSBUS_HTTP", value_name = "ADDR:PORT")]
    http: Option<std::net::SocketAddr>,

    /// With --http: also one Prometheus series per thing (its last update time; many things
    /// make many series).
    #[arg(long, env = "THINGSBUS_HTTP_THING_METRICS")]
    http_thing_metrics: bool,

    /// With --http: each numeric field of each live thing as a Prometheus gauge,
    /// thingsbus_value{ns="kitchen.fridge",field="temp"} (a number thing's field is "",
    /// booleans are 0/1), so Prometheus, VictoriaMetrics or Mimir keep its history. At most
    /// --http-value-series-max series; the rest are counted in thingsbus_value_series_omitted.
    #[arg(long, env = "THINGSBUS_HTTP_VALUE_METRICS")]
    http_value_metrics: bool,

    /// With --http-value-metrics: the most series /metrics shows.
    #[arg(
        long,
        env = "THINGSBUS_HTTP_VALUE_SERIES_MAX",
        default_value_t = 10_000,
        value_name = "N"
    )]
    http_value_series_max: usize,

    /// With --http: serve HTTPS only, with the certificate chain in this PEM file (give
    /// --http-tls-key too).
    #[arg(
        long,
        env = "THINGSBUS_HTTP_TLS_CERT",
        value_name = "PATH",
        requires = "http_tls_key"
    )]
    http_tls_cert: Option<std::path::PathBuf>,

    /// With --http-tls-cert: the certificate's private key, a PEM file.
    #[arg(
        long,
        env = "THINGSBUS_HTTP_TLS_KEY",
        value_name = "PATH",
        requires = "http_tls_cert"
    )]
    http_tls_key: Option<std::path::PathBuf>,

    /// With --http: every path but /healthz and /readyz needs a token from this file, one
    /// `TOKEN read` or `TOKEN command` a line (`#` comments), sent as `Authorization: Bearer
    /// TOKEN` (the page asks for it once and keeps it in a cookie). Only `command` tokens may
    /// send commands.
    #[arg(long, env = "THINGSBUS_HTTP_TOKEN_FILE", value_name = "PATH")]
    http_token_file: Option<std::path::PathBuf>,

    /// With --http: more names that requests may carry in their Host header, comma-separated
    /// (`*.example.org` for the names below it, `*` for any). Always allowed: localhost, this
    /// machine's name, and the addresses the server listens on. Others get 421 (against DNS
    /// rebinding).
    #[arg(
        long,
        env = "THINGSBUS_HTTP_ALLOWED_HOSTS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    http_allowed_hosts: Vec<String>,

    /// With --http: a client whose writes make no progress for this many seconds (it does not
    /// read) is disconnected.
    #[arg(long, env = "THINGSBUS_HTTP_WRITE_TIMEOUT", default_value_t = 30.0, value_parser = positive_secs)]
    http_write_timeout: f64,

    /// With --http: bytes of events that may wait for one event-stream client; one further
    /// behind is dropped (its browser reconnects).
    #[arg(long, env = "THINGSBUS_HTTP_SSE_QUEUE_BYTES", default_value_t = 1 << 20)]
    http_sse_queue_bytes: u64,

    /// With --http: record every numeric value (a number thing, each number or boolean field
    /// of an object thing, by dotted path) in this SQLite file, made if missing, for
    /// /api/history/NS and `thingsbus history`. Kept: every point for 2 days, 1-minute
    /// min/avg/max for 90 days, 1-hour for 5 years. Measured: a point takes 25 bytes, a minute
    /// or hour row 48; 200 series updated every 10 s take 43 MB a day of raw points, 1.35 GB
    /// after 90 days and 1.75 GB at most (after 5 years). Off unless given.
    #[arg(long, env = "THINGSBUS_HISTORY", value_name = "PATH")]
    history: Option<std::path::PathBuf>,

    /// With --history: at most one point per series per this many seconds (the newest value
    /// of each window is kept), so a sensor at 1,000 updates/s costs one row a second.
    #[arg(long, env = "THINGSBUS_HISTORY_RESOLUTION", default_value_t = 1.0, value_parser = resolution_secs)]
    history_resolution: f64,

    /// With --history: bytes of data the file may hold; beyond them the oldest points (of
    /// every tier) are dropped first.
    #[arg(long, env = "THINGSBUS_HISTORY_MAX_BYTES", default_value_t = thingsbus_broker::DEFAULT_HISTORY_MAX_BYTES, value_parser = clap::value_parser!(u64).range((1 << 20)..))]
    history_max_bytes: u64,

    /// Share one directory with the other brokers on these NATS servers (JetStream key-value),
    /// comma-separated, e.g. nats://10.0.0.5:4222,nats://10.0.0.6:4222. Off unless given.
    #[arg(
        long,
        env = "THINGSBUS_CLUSTER",
        value_name = "URLS",
        value_delimiter = ','
    )]
    cluster: Vec<String>,

    /// With --cluster: the key-value bucket holding the directory.
    #[arg(long, env = "THINGSBUS_CLUSTER_BUCKET", default_value = "thingsbus")]
    cluster_bucket: String,

    /// With --cluster: replicas of the bucket (3 in production).
    #[arg(long, env = "THINGSBUS_CLUSTER_REPLICAS", default_value_t = 1)]
    cluster_replicas: usize,

    /// With --cluster: this broker's name (default: the host name).
    #[arg(long, env = "THINGSBUS_NODE_NAME")]
    node_name: Option<String>,

    /// With --cluster: writes to the bucket go out as soon as something is pending, then at
    /// most once per this many seconds, each with the newest value of every thing (conflation).
    #[arg(long, env = "THINGSBUS_CLUSTER_FLUSH", default_value_t = 0.05, value_parser = positive_secs)]
    cluster_flush: f64,

    /// With --cluster: the JetStream domain of the servers holding the bucket. Needed when this
    /// broker talks to a NATS leaf node (a site's own server) linked to the central cluster:
    /// give the centre's `jetstream { domain: ... }`.
    #[arg(long, env = "THINGSBUS_CLUSTER_DOMAIN", value_name = "DOMAIN")]
    cluster_domain: Option<String>,

    /// With --cluster: authenticate to NATS with this token.
    #[arg(
        long,
        env = "THINGSBUS_CLUSTER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with_all = ["cluster_user", "cluster_creds", "cluster_nkey"]
    )]
    cluster_token: Option<String>,

    /// With --cluster: authenticate to NATS as this user (with --cluster-password).
    #[arg(
        long,
        env = "THINGSBUS_CLUSTER_USER",
        value_name = "USER",
        requires = "cluster_password"
    )]
    cluster_user: Option<String>,

    /// With --cluster: the password of --cluster-user.
    #[arg(
        long,
        env = "THINGSBUS_CLUSTER_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true,
        requires = "cluster_user"
    )]
    cluster_password: Option<String>,

    /// With --cluster: authenticate with a NATS credentials file (JWT and NKey seed, as `nsc`
    /// writes it).
    #[arg(
        long,
        env = "THINGSBUS_CLUSTER_CREDS",
        value_name = "FILE",
        conflicts_with_all = ["cluster_user", "cluster_nkey"]
    )]
    cluster_creds: Option<std::path::PathBuf>,

    /// With --cluster: authenticate with the NKey seed (SU...) in this file.
    #[arg(
        long,
        env = "THINGSBUS_CLUSTER_NKEY",
        value_name = "FILE",
        conflicts_with = "cluster_user"
    )]
    cluster_nkey: Option<std::path::PathBuf>,

    /// With --cluster: the certificate authorities (PEM) that signed the NATS servers'
    /// certificates. TLS is then required.
    #[arg(long, env = "THINGSBUS_CLUSTER_CA_FILE", value_name = "PEM")]
    cluster_ca_file: Option<std::path::PathBuf>,

    /// With --cluster: this broker's certificate (PEM), for NATS servers that verify clients
    /// (`tls { verify: true }`). Needs --cluster-key.
    #[arg(
        long,
        env = "THINGSBUS_CLUSTER_CERT",
        value_name = "PEM",
        requires = "cluster_key"
    )]
    cluster_cert: Option<std::path::PathBuf>,

    /// With --cluster: the private key (PEM) of --cluster-cert.
    #[arg(
        long,
        env = "THINGSBUS_CLUSTER_KEY",
        value_name = "PEM",
        requires = "cluster_cert"
    )]
    cluster_key: Option<std::path::PathBuf>,

    /// With --cluster: believe the route announcements (who serves which prefix, for commands)
    /// of these brokers only, by --node-name, comma-separated; others' are ignored and counted.
    /// Default: every broker on the NATS servers.
    #[arg(
        long,
        env = "THINGSBUS_CLUSTER_ACCEPT_NODES",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    cluster_accept_nodes: Option<Vec<String>>,

    /// Command endpoint port (commands to things), instead of PORT+3.
    #[arg(long, env = "THINGSBUS_COMMAND_PORT")]
    command_port: Option<u16>,

    /// Source address ranges that may send commands to things, comma-separated. A command can
    /// open a door: the default is this machine only.
    #[arg(
        long,
        env = "THINGSBUS_ALLOW_COMMAND",
        value_name = "CIDR,...",
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1/128"
    )]
    allow_command: Vec<thingsbus_broker::Cidr>,

    /// Only these source addresses may publish, over UDP and ZMQ, as comma-separated ranges
    /// (e.g. 192.168.1.0/24,127.0.0.1). Without it anyone who can reach the input port can publish
    /// or overwrite any thing, as with 0.2.x.
    #[arg(
        long,
        env = "THINGSBUS_ALLOW_INPUT",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    allow_input: Vec<thingsbus_broker::Cidr>,

    /// Source address ranges that may serve prefixes (receive the commands sent to them) without
    /// a key, comma-separated. Whoever serves a prefix answers "open the door": the default is
    /// this machine only. A board on the LAN needs its range here (or, with --auth-file, a board
    /// secret or key that may serve the prefix).
    #[arg(
        long,
        env = "THINGSBUS_ALLOW_SERVE",
        value_name = "CIDR,...",
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1/128"
    )]
    allow_serve: Vec<thingsbus_broker::Cidr>,

    /// Who may do what: a TOML file giving each client key (CURVE) and board (signed
    /// datagrams) its rights to read, publish, serve and command namespaces, and what peers
    /// without either may do (its [anonymous] table; without one they may do nothing). Read
    /// again on SIGHUP; a file with a mistake keeps the rights in force and says why. See the
    /// README's "Keys and rights".
    #[arg(long, env = "THINGSBUS_AUTH_FILE", value_name = "PATH")]
    auth_file: Option<std::path::PathBuf>,

    /// Speak CURVE on every ZMQ endpoint with the secret key in this file (40 Z85 characters,
    /// as `thingsbus keygen --secret-file PATH` writes it; its public key is derived and logged
    /// at start). Every client, adaptor and CLI then needs that public key (`--server-key`), and
    /// everything on the wire is encrypted; 0.2.x peers cannot connect. Keys are checked
    /// against --auth-file when given (a key not in it has the [anonymous] rights).
    #[arg(long, env = "THINGSBUS_CURVE_SECRET_FILE", value_name = "PATH")]
    curve_secret_file: Option<std::path::PathBuf>,

    /// Updates per second one source address may publish (bursts up to as many); the excess is
    /// dropped and counted as rate_limited.
    #[arg(long, env = "THINGSBUS_RATE_LIMIT", value_name = "PER_SECOND", value_parser = positive_rate)]
    rate_limit: Option<f64>,

    /// More log output (-v debug, -vv trace). RUST_LOG, when set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count)]
    quiet: u8,

    /// Log line format.
    #[arg(long, env = "THINGSBUS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn non_negative_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..1e9).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds (0 or more)")),
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a positive number of updates per second"
        )),
    }
}

fn resolution_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.001..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a resolution in seconds (from 0.001 to 3600)"
        )),
    }
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

fn init_logging(args: &Args) {
    let level = match (args.verbose, args.quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v > 1 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn cluster_auth(args: &Args) -> thingsbus_broker::ClusterAuth {
    use thingsbus_broker::ClusterAuth;
    if let Some(p) = &args.cluster_creds {
        ClusterAuth::CredsFile(p.clone())
    } else if let Some(p) = &args.cluster_nkey {
        ClusterAuth::NkeyFile(p.clone())
    } else if let (Some(u), Some(p)) = (&args.cluster_user, &args.cluster_password) {
        ClusterAuth::UserPassword(u.clone(), p.clone())
    } else if let Some(t) = &args.cluster_token {
        ClusterAuth::Token(t.clone())
    } else {
        ClusterAuth::None
    }
}

fn config(args: &Args) -> Config {
    Config {
        bind: args.bind,
        port: args.port,
        input_port: args.input_port,
        snapshot_port: args.snapshot_port,
        stats_interval: Duration::from_secs_f64(args.stats_interval),
        snapshot_interval: Duration::from_secs_f64(args.snapshot_interval),
        live_window: Duration::from_secs_f64(args.live_window),
        forget_after: Duration::from_secs_f64(args.forget_after),
        max_clock_skew: Duration::from_secs_f64(args.max_clock_skew),
        max_things: usize::try_from(args.max_things).unwrap_or(usize::MAX),
        max_bytes: usize::try_from(args.max_bytes).unwrap_or(usize::MAX),
        max_message_bytes: usize::try_from(args.max_message_bytes).unwrap_or(usize::MAX),
        subscriber_hwm: args.subscriber_hwm,
        input_hwm: args.input_hwm,
        snapshot_chunk_bytes: usize::try_from(args.snapshot_chunk_bytes).unwrap_or(usize::MAX),
        state_file: args.state_file.clone(),
        fsync_interval: Duration::from_secs_f64(args.fsync_interval),
        allow_input: args.allow_input.clone(),
        command_port: args.command_port,
        http: args.http,
        cluster: (!args.cluster.is_empty()).then(|| thingsbus_broker::ClusterConfig {
            urls: args.cluster.clone(),
            bucket: args.cluster_bucket.clone(),
            replicas: args.cluster_replicas,
            node_name: args.node_name.clone().unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "thingsbus".to_owned())
            }),
            flush: Duration::from_secs_f64(args.cluster_flush),
            auth: cluster_auth(args),
            domain: args.cluster_domain.clone(),
            tls: thingsbus_broker::ClusterTls {
                ca_file: args.cluster_ca_file.clone(),
                cert: args.cluster_cert.clone(),
                key: args.cluster_key.clone(),
            },
            accept_nodes: args.cluster_accept_nodes.clone(),
        }),
        http_thing_metrics: args.http_thing_metrics,
        http_value_metrics: args
            .http_value_metrics
            .then_some(args.http_value_series_max),
        history: args
            .history
            .as_ref()
            .map(|path| thingsbus_broker::HistoryConfig {
                path: path.clone(),
                resolution: Duration::from_secs_f64(args.history_resolution),
                max_bytes: args.history_max_bytes,
            }),
        http_options: thingsbus_broker::HttpOptions {
            tls_cert: args.http_tls_cert.clone(),
            tls_key: args.http_tls_key.clone(),
            token_file: args.http_token_file.clone(),
            allowed_hosts: args.http_allowed_hosts.clone(),
            sse_queue_bytes: usize::try_from(args.http_sse_queue_bytes).unwrap_or(usize::MAX),
            write_timeout: Duration::from_secs_f64(args.http_write_timeout),
        },
        allow_command: args.allow_command.clone(),
        allow_serve: args.allow_serve.clone(),
        auth_file: args.auth_file.clone(),
        rate_limit: args.rate_limit,
        // Supervision tests make a debug build's thread fail (release builds ignore it).
        fault: std::env::var("THINGSBUS_FAULT").ok(),
        ..Config::default()
    }
}

/// The signals the broker handles, caught from before it starts: a SIGTERM right after the
/// broker says it runs stops it cleanly instead of killing it mid-way.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime `signals` are then awaited on).
    fn install(runtime: &tokio::runtime::Runtime) -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let _in = runtime.enter();
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

/// Waits for SIGTERM or SIGINT; on SIGHUP meanwhile, reads the auth file again.
async fn shutdown_signal(broker: &Broker, signals: Signals) -> anyhow::Result<&'static str> {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
            _ = hup.recv() => match broker.reload_auth() {
                Ok(()) => tracing::info!("SIGHUP: auth file read again"),
                Err(e) => tracing::error!("SIGHUP: {e}; the rights in force stay"),
            },
        }
    }
}

/// The broker's key pair from `--curve-secret-file`, checked before anything is bound.
fn curve_keys(args: &Args) -> anyhow::Result<Option<thingsbus_protocol::keys::KeyPair>> {
    let Some(path) = &args.curve_secret_file else {
        return Ok(None);
    };
    thingsbus_protocol::transport::require_curve()
        .context("--curve-secret-file cannot be honoured")?;
    let keys = thingsbus_protocol::keys::KeyPair::read_file(path).with_context(|| {
        format!(
            "--curve-secret-file {}: make one with `thingsbus keygen --secret-file {}`",
            path.display(),
            path.display()
        )
    })?;
    Ok(Some(keys))
}

/// One warning at start when the broker listens beyond this machine and lets anyone in.
fn warn_if_open(args: &Args) {
    let beyond_loopback = !args.bind.to_canonical().is_loopback();
    if !beyond_loopback || args.auth_file.is_some() {
        return;
    }
    let input = if args.allow_input.is_empty() {
        "anyone who reaches the input port can publish or overwrite any thing"
    } else {
        "the addresses in --allow-input can publish or overwrite any thing"
    };
    tracing::warn!(
        bind = %args.bind,
        "no --auth-file: {input}, and anyone can read the directory, as with 0.2.x \
         (see the README's \"Keys and rights\")"
    );
}

/// Returns once the broker is stopping.
async fn stopped(broker: &Broker) {
    while !broker.is_stopping() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Raises the open-file limit to the hard limit before anything is opened, and says so; warns
/// when the limit leaves room for few peers (each subscriber, adaptor or HTTP client is one).
fn open_files() {
    const FEW: u64 = 4096;
    let how = "raise the hard limit: `ulimit -Hn` in the shell that starts it, or LimitNOFILE= in its systemd unit";
    match thingsbus_broker::raise_open_file_limit() {
        OpenFiles::Raised { from, to } => {
            let to = to.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
            tracing::info!(from, to = %to, "open-file limit raised to the hard limit");
        }
        OpenFiles::Kept(Some(limit)) if limit < FEW => {
            tracing::warn!(
                limit,
                "the open-file limit leaves room for fewer than {limit} peers; {how}"
            );
        }
        OpenFiles::Kept(_) => {}
        OpenFiles::Refused { from, error } => {
            tracing::warn!(limit = from, error = %error, "could not raise the open-file limit, which leaves room for fewer than {from} peers; {how}");
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    let signals = Signals::install(&runtime)?;
    let mut config = config(&args);
    config.curve = curve_keys(&args)?;
    open_files();
    let broker = Broker::start(config.clone())?;
    let at = broker.endpoints();
    let host = match config.bind {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    tracing::info!(
        directory = %format!("tcp://{host}:{}", at.directory_port),
        input = %format!("tcp://{host}:{}", at.input_port),
        udp = %format!("{host}:{}", at.input_port),
        snapshot = %format!("tcp://{host}:{}", at.snapshot_port),
        command = %format!("tcp://{host}:{}", at.command_port),
        http = %at.http.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/")),
        curve = %at.server_key.as_ref().map_or_else(|| "off".to_owned(), |k| format!("on, server key {}", k)),
        snapshot_interval_s = args.snapshot_interval,
        live_window_s = args.live_window,
        "thingsbus broker running"
    );
    if let Some(key) = &at.server_key {
        tracing::info!(
            txt = %thingsbus_protocol::discovery::txt_record("ZONE", &key.to_string()),
            "clients that find this broker through a zone need no --server-key when the zone publishes this TXT record beside the SRV record"
        );
    }
    warn_if_open(&args);
    if args.allow_input.is_empty() {
        tracing::info!(
            "input open to every address that reaches it, as in 0.2.x (--allow-input restricts it)"
        );
    } else {
        let ranges: Vec<String> = args.allow_input.iter().map(ToString::to_string).collect();
        tracing::info!(allow_input = %ranges.join(","), "input restricted");
    }
    notify_ready();
    // Until a signal, or until the broker stops by itself (a thread of it ended).
    let signal = runtime.block_on(async {
        tokio::select! {
            signal = shutdown_signal(&broker, signals) => signal.map(Some),
            () = stopped(&broker) => Ok(None),
        }
    })?;
    if let Some(signal) = signal {
        tracing::info!(signal, "stopping");
    }
    let stats = broker.stats().clone();
    broker.shutdown();
    broker.join();
    if let Some(failure) = stats.health.failure() {
        anyhow::bail!("the broker stopped because {failure}");
    }
    tracing::info!(
        accepted = stats.accepted.load(std::sync::atomic::Ordering::Relaxed),
        rejected = stats.rejected_total(),
        "stopped"
    );
    Ok(())
}

/// Tells systemd (Type=notify) that every endpoint is bound and the state restored: one
/// `READY=1` datagram to `$NOTIFY_SOCKET`, when it is set.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(b"READY=1", &addr)?;
            }
            None => {
                socket.send_to(b"READY=1", &path)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not notify systemd of readiness");
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thingsbus-broker: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
