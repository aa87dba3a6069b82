//! What a broker is told at start.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use thingsbus_protocol::{
    codec::DEFAULT_MAX_DEPTH, snapshot::DEFAULT_CHUNK_BYTES, DEFAULT_DIRECTORY_PORT,
};

/// How far ahead of the broker's clock a `ts` may be by default (`--max-clock-skew`).
pub(crate) const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Broker settings. [`Config::default`] gives the 0.2.x-compatible defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address every endpoint binds to.
    pub bind: IpAddr,
    /// Directory output (PUB) port; 0 picks a free one.
    pub port: u16,
    /// Input port for ZMQ and UDP; `None` means `port + 1` (or a free one when `port` is 0).
    pub input_port: Option<u16>,
    /// Snapshot request endpoint port; `None` means `port + 2` (or a free one when `port` is 0).
    pub snapshot_port: Option<u16>,
    /// How often the broker publishes its own counters as the thing `thingsbus.broker`;
    /// zero turns that off.
    pub stats_interval: Duration,
    /// Time between periodic snapshots.
    pub snapshot_interval: Duration,
    /// Only things whose last `ts` is this recent appear in snapshots.
    pub live_window: Duration,
    /// A thing whose last `ts` is older than this is removed.
    pub forget_after: Duration,
    /// How far in the future an update's `ts` may be (the sender's clock ahead of ours): one
    /// beyond it is dropped as `future_ts`, since it would win over every later value with
    /// `--cluster` and never expire.
    pub max_clock_skew: Duration,
    /// Most things held: an update that would add one more is dropped as `too_many_things`
    /// (updates to things held still pass).
    pub max_things: usize,
    /// Most bytes of values held (as encoded for the wire): an update that would grow them
    /// beyond it is dropped as `too_many_bytes`.
    pub max_bytes: usize,
    /// Largest accepted input message (ZMQ frame or UDP datagram).
    pub max_message_bytes: usize,
    /// Messages queued per directory subscriber before that subscriber alone loses messages.
    pub subscriber_hwm: i32,
    /// Messages queued per ZMQ input connection before its sender's messages are dropped.
    pub input_hwm: i32,
    /// Upper bound on one snapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Deepest nesting accepted inside a thing's data.
    pub max_depth: usize,
    /// Kernel receive buffer asked for the UDP socket.
    pub udp_recv_buffer: usize,
    /// Where the directory is kept across restarts (a journal, see `--state-file`); `None`
    /// keeps it in memory only, as 0.2.x did.
    pub state_file: Option<std::path::PathBuf>,
    /// Longest time between a journal write and its `fsync`: what a machine crash can lose.
    pub fsync_interval: Duration,
    /// Source address ranges that may publish (UDP datagrams and ZMQ connections); empty lets
    /// everyone publish, as 0.2.x did.
    pub allow_input: Vec<crate::Cidr>,
    /// Where to serve the read-only HTTP side (metrics, health, JSON, SSE, web page); `None`
    /// for none. Needs the `http` cargo feature (on by default).
    pub http: Option<std::net::SocketAddr>,
    /// With `http`: also one Prometheus series per thing (its last update time).
    pub http_thing_metrics: bool,
    /// With `http`: each numeric field of each live thing as the gauge
    /// `thingsbus_value{ns,field}` (booleans as 0/1), at most this many series; `None`: off.
    pub http_value_metrics: Option<usize>,
    /// With `http`: TLS, tokens, allowed Host names and the limits of event streams.
    pub http_options: HttpOptions,
    /// With `http`: record every numeric value the HTTP side mirrors in this SQLite file
    /// (`--history`); `None` records nothing.
    pub history: Option<HistoryConfig>,
    /// Share the directory with other brokers through NATS JetStream; `None` for a broker on
    /// its own (no NATS code runs). Needs the `cluster` cargo feature (on by default).
    pub cluster: Option<ClusterConfig>,
    /// Command endpoint port; `None` means `port + 3` (or a free one when `port` is 0).
    pub command_port: Option<u16>,
    /// Source address ranges that may send commands (default: this machine only, since a
    /// command can open a door).
    pub allow_command: Vec<crate::Cidr>,
    /// Source address ranges that may serve prefixes (receive commands) without a key
    /// (default: this machine only: whoever serves a prefix answers the commands sent to it).
    pub allow_serve: Vec<crate::Cidr>,
    /// Who may do what, by key, board and for peers without either (`--auth-file`, TOML; see
    /// the README). `None`: everyone may do everything the address lists allow, as in 0.2.x.
    pub auth_file: Option<std::path::PathBuf>,
    /// The broker's CURVE key pair (`--curve-secret-file`): with it every ZMQ endpoint speaks
    /// CURVE only, so peers need the public key and everything on the wire is encrypted; `None`
    /// for plain ZMQ as in 0.2.x. Starting fails on a libzmq without CURVE.
    pub curve: Option<thingsbus_protocol::keys::KeyPair>,
    /// Updates per second one source address may publish (bursts up to the same number);
    /// `None` for no limit.
    pub rate_limit: Option<f64>,
    /// For tests of supervision, in debug builds only: `"<thread name>=panic"` makes that
    /// thread panic as it starts, `=exit` end at once, `=wedge` hang without turning;
    /// `"thingsbus-conflate=stall:MS"` makes the cluster's conflate thread sleep MS ms on its
    /// first batch (so that ingest finds it behind). Release builds ignore it.
    #[doc(hidden)]
    pub fault: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: DEFAULT_DIRECTORY_PORT,
            input_port: None,
            snapshot_port: None,
            stats_interval: Duration::from_secs(5),
            snapshot_interval: Duration::from_secs(15),
            live_window: Duration::from_secs(60),
            forget_after: Duration::from_secs(86_400),
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            max_things: 2_000_000,
            max_bytes: 1 << 30,
            max_message_bytes: 1 << 20,
            subscriber_hwm: 10_000,
            input_hwm: 10_000,
            snapshot_chunk_bytes: DEFAULT_CHUNK_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            udp_recv_buffer: 4 << 20,
            state_file: None,
            fsync_interval: Duration::from_secs(1),
            allow_input: Vec::new(),
            rate_limit: None,
            fault: None,
            http: None,
            http_thing_metrics: false,
            http_value_metrics: None,
            http_options: HttpOptions::default(),
            history: None,
            cluster: None,
            command_port: None,
            allow_command: loopback(),
            allow_serve: loopback(),
            auth_file: None,
            curve: None,
        }
    }
}

/// This machine's addresses, IPv4 and IPv6.
fn loopback() -> Vec<crate::Cidr> {
    vec![
        "127.0.0.0/8".parse().expect("a valid range"),
        "::1/128".parse().expect("a valid range"),
    ]
}

impl Config {
    /// A config for tests and embedding: everything on 127.0.0.1 with ports picked by the OS.
    pub fn ephemeral() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            input_port: Some(0),
            snapshot_port: Some(0),
            command_port: Some(0),

            ..Config::default()
        }
    }
}

/// The HTTP side's protections and limits (`--http-tls-cert` and friends). The default serves
/// plain HTTP without tokens, as before.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// A PEM file with the server's certificate chain: with `tls_key`, the HTTP side speaks
    /// HTTPS only.
    pub tls_cert: Option<std::path::PathBuf>,
    /// A PEM file with the certificate's private key.
    pub tls_key: Option<std::path::PathBuf>,
    /// A file of bearer tokens, one `TOKEN read` or `TOKEN command` a line: with it, every path
    /// but `/healthz` and `/readyz` needs a token.
    pub token_file: Option<std::path::PathBuf>,
    /// Host names (or `*` for any) a request's `Host` may name besides `localhost` and the
    /// addresses the server listens on; others are refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Bytes of events that may wait for one event-stream client before it is dropped.
    pub sse_queue_bytes: usize,
    /// A connection whose writes make no progress for this long is closed (a client that
    /// does not read).
    pub write_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            tls_cert: None,
            tls_key: None,
            token_file: None,
            allowed_hosts: Vec::new(),
            sse_queue_bytes: 1 << 20,
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// The history store (`--history` and friends).
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// The SQLite file; made if missing.
    pub path: std::path::PathBuf,
    /// At most one point per series per this long (`--history-resolution`).
    pub resolution: Duration,
    /// Bytes of data the file may hold; beyond them the oldest points go first.
    pub max_bytes: u64,
}

impl HistoryConfig {
    /// The defaults of the command line for this file: 1 s resolution, 2 GiB.
    #[must_use]
    pub fn new(path: impl Into<std::path::PathBuf>) -> HistoryConfig {
        HistoryConfig {
            path: path.into(),
            resolution: Duration::from_secs(1),
            max_bytes: DEFAULT_HISTORY_MAX_BYTES,
        }
    }
}

/// `--history-max-bytes` unless given: 2 GiB, what 200 series updated every 10 s need at most
/// (measured: 1.35 GB after 90 days, 1.75 GB after 5 years).
pub const DEFAULT_HISTORY_MAX_BYTES: u64 = 2 << 30;

/// Cluster settings (see `--cluster` and friends).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS servers, e.g. `nats://127.0.0.1:4222`.
    pub urls: Vec<String>,
    /// The key-value bucket.
    pub bucket: String,
    /// Replicas of the bucket's stream (3 in production).
    pub replicas: usize,
    /// This broker's name in the bucket's values (its own writes are not applied back).
    pub node_name: String,
    /// Writes go out as soon as something is pending, then at most once per this interval, with
    /// the newest value of each thing (conflation).
    pub flush: Duration,
    /// How the broker proves itself to NATS.
    pub auth: ClusterAuth,
    /// The JetStream domain of the servers holding the bucket, when the broker reaches them
    /// through a leaf node (a site's own NATS server linked to the centre).
    pub domain: Option<String>,
    /// TLS to the NATS servers (`--cluster-ca-file`, `--cluster-cert`, `--cluster-key`).
    pub tls: ClusterTls,
    /// The other brokers whose route announcements are believed (`--cluster-accept-nodes`);
    /// `None`: every broker on the NATS servers.
    pub accept_nodes: Option<Vec<String>>,
}

/// TLS to the NATS servers: PEM files. With none of them, TLS is used only when a server asks
/// for it (or the URL says `tls://`), checked against the system's authorities.
#[derive(Debug, Clone, Default)]
pub struct ClusterTls {
    /// The certificate authorities that signed the NATS servers' certificates; TLS is then
    /// required.
    pub ca_file: Option<std::path::PathBuf>,
    /// This broker's certificate, for servers that verify clients (`verify: true`).
    pub cert: Option<std::path::PathBuf>,
    /// The private key of `cert`.
    pub key: Option<std::path::PathBuf>,
}

impl ClusterConfig {
    /// The defaults of the command line for these servers and this node: bucket `thingsbus`,
    /// one replica, 50 ms flush, no credentials.
    #[must_use]
    pub fn new(urls: Vec<String>, node_name: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            urls,
            bucket: "thingsbus".into(),
            replicas: 1,
            node_name: node_name.into(),
            flush: Duration::from_millis(50),
            auth: ClusterAuth::None,
            domain: None,
            tls: ClusterTls::default(),
            accept_nodes: None,
        }
    }
}

/// Credentials for NATS, as `async-nats` takes them. (User and password may also be given in
/// the URL: `nats://user:pass@host:4222`.)
#[derive(Clone, Default)]
pub enum ClusterAuth {
    /// Anonymous, or whatever the URLs carry.
    #[default]
    None,
    /// `--cluster-token`.
    Token(String),
    /// `--cluster-user` and `--cluster-password`.
    UserPassword(String, String),
    /// `--cluster-creds`: a `.creds` file (JWT and NKey seed) as `nsc` writes it.
    CredsFile(std::path::PathBuf),
    /// `--cluster-nkey`: a file holding an NKey seed (`SU...`).
    NkeyFile(std::path::PathBuf),
}

impl std::fmt::Debug for ClusterAuth {
    // Never print a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterAuth::None => f.write_str("None"),
            ClusterAuth::Token(_) => f.write_str("Token(..)"),
            ClusterAuth::UserPassword(user, _) => write!(f, "UserPassword({user:?}, ..)"),
            ClusterAuth::CredsFile(p) => write!(f, "CredsFile({p:?})"),
            ClusterAuth::NkeyFile(p) => write!(f, "NkeyFile({p:?})"),
        }
    }
}
