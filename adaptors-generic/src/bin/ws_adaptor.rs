//! `thingsbus-ws-adaptor`: nodes speaking pyaiot's WebSocket node protocol become things, and
//! obey commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use thingsbus_adaptors_generic::bus::BusArgs;
use thingsbus_adaptors_generic::flags::{namespace, positive_secs};
use thingsbus_adaptors_generic::logging::{self, LogArgs};
use thingsbus_adaptors_generic::ws::{self, gateway::Config, Options};
use thingsbus_broker::http_access::{tls_acceptor_for, Tokens};
use tokio::net::TcpListener;

const EXAMPLE: &str = "\
Example: RIOT nodes written for pyaiot's WebSocket gateway, on the bus under home.ws:

  thingsbus-ws-adaptor -z example.org --ws-bind [::]:8001 --ns home.ws

A node connects to ws://HOST:8001/node (ws://HOST:8001/node?id=kitchen to name itself
'kitchen'; without an id it gets a new uid, ws-..., on every connection). It is sent
{\"request\": \"discover\"} and sends {\"type\": \"update\", \"data\": {\"led\": \"0\", \"temperature\":
\"23°C\"}}: home.ws.kitchen holds uid, address, online, last_alive and resources, and
home.ws.kitchen.temperature holds {\"value\": 23, \"unit\": \"°C\"}. Then

  thingsbus call home.ws.kitchen.led '\"1\"'

sends {\"endpoint\": \"led\", \"data\": \"1\", \"payload\": \"1\"} to the node, and its next update of
led is the reply. The node is online while connected, offline the moment it closes. A message
that is not pyaiot's JSON closes that node's connection (1003) and is counted.

With --ws-token-file (lines `TOKEN read` or `TOKEN command`, as the broker's --http-token-file;
any listed token admits a node) a node sends Authorization: Bearer TOKEN; with --ws-tls-cert and
--ws-tls-key nodes connect to wss://HOST:PORT/node.";

/// Brings WebSocket nodes (pyaiot's WebSocket node protocol: RIOT nodes, pyaiot's
/// ws_test_client.py) onto the bus as things, and turns commands to those things into messages
/// to the nodes.
#[derive(Debug, Parser)]
#[command(name = "thingsbus-ws-adaptor", version, after_long_help = EXAMPLE)]
struct Args {
    #[command(flatten)]
    bus: BusArgs,

    /// Where nodes connect (TCP); they open ws://ADDR:PORT/node.
    #[arg(long, default_value = "[::]:8001")]
    ws_bind: SocketAddr,

    /// Base namespace of the nodes.
    #[arg(long, default_value = "ws", value_parser = namespace)]
    ns: String,

    /// Nodes kept at most, and connections open at most; more wait (connections) or are
    /// refused (nodes, while all are online).
    #[arg(long, default_value_t = 1000)]
    max_nodes: usize,

    /// Resources kept per node at most.
    #[arg(long, default_value_t = 64)]
    max_resources: usize,

    /// The longest message read from a node, in bytes; a longer one closes its connection and
    /// is counted.
    #[arg(long, default_value_t = 65_536)]
    max_message: usize,

    /// Seconds between pings to each node; a node that answers none (and sends nothing) for
    /// three of them is closed and offline, so one whose network vanished does not stay online.
    #[arg(long, default_value_t = 30.0, value_parser = positive_secs)]
    ping_interval: f64,

    /// The certificate chain (PEM) for wss://; needs --ws-tls-key.
    #[arg(long, value_name = "PEM", requires = "ws_tls_key")]
    ws_tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --ws-tls-cert.
    #[arg(long, value_name = "PEM", requires = "ws_tls_cert")]
    ws_tls_key: Option<PathBuf>,

    /// Nodes must present one of the tokens of this file (Authorization: Bearer TOKEN); the
    /// broker's --http-token-file format: `TOKEN read` or `TOKEN command` lines, `#` comments.
    #[arg(long, value_name = "PATH")]
    ws_token_file: Option<PathBuf>,

    /// Documentation URL sent with every update.
    #[arg(short, long = "documentation", value_name = "URL")]
    documentation_url: Option<String>,

    /// How long to wait for DNS and the bus, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    timeout: f64,

    /// Seconds between the info lines that count what happened.
    #[arg(long, default_value_t = 60.0, value_parser = positive_secs)]
    report_interval: f64,

    #[command(flatten)]
    log: LogArgs,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let tls = match (&args.ws_tls_cert, &args.ws_tls_key) {
        (Some(cert), Some(key)) => {
            Some(tls_acceptor_for(cert, key, "--ws").map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let tokens = args
        .ws_token_file
        .as_deref()
        .map(|p| Tokens::load_for(p, "--ws-token-file"))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if tokens.is_some() && tls.is_none() && !args.ws_bind.ip().is_loopback() {
        tracing::warn!(
            "--ws-token-file without --ws-tls-cert: tokens cross the network in clear (give --ws-tls-cert and --ws-tls-key)"
        );
    }
    let listener = TcpListener::bind(args.ws_bind)
        .await
        .with_context(|| format!("cannot listen on --ws-bind {}", args.ws_bind))?;
    let bound = listener.local_addr()?;
    let mut builder = args.bus.adaptor(&args.ns, false, timeout)?;
    if let Some(d) = &args.documentation_url {
        builder = builder.documentation_url(d);
    }
    let adaptor = builder
        .connect()
        .await
        .with_context(|| format!("cannot reach the bus at {}", args.bus.describe()))?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    tracing::info!(url = %format!("{scheme}://{bound}/node"), ns = %args.ns, tokens = tokens.is_some(), "listening for WebSocket nodes");
    let options = Options {
        config: Config {
            max_nodes: args.max_nodes,
            max_resources: args.max_resources,
            max_waiting: 1024,
        },
        max_message: args.max_message,
        ping_every: Duration::from_secs_f64(args.ping_interval),
        tls,
        tokens,
        report_every: Duration::from_secs_f64(args.report_interval.max(0.1)),
    };
    ws::serve(listener, adaptor, options, logging::shutdown_signal()).await
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    logging::main_with_runtime("thingsbus-ws-adaptor", run(args))
}
