//! `thingsbus-coap-adaptor`: constrained devices speaking pyaiot's CoAP node protocol become
//! things, and obey commands.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use thingsbus_adaptors_generic::bus::BusArgs;
use thingsbus_adaptors_generic::coap::{self, gateway::Config};
use thingsbus_adaptors_generic::flags::positive_secs;
use thingsbus_adaptors_generic::logging::{self, LogArgs};
use tokio::net::UdpSocket;

const EXAMPLE: &str = "\
Example: RIOT boards flashed for pyaiot's CoAP gateway, on the bus under home.coap:

  thingsbus-coap-adaptor -z example.org --ns home.coap

A board that POSTs Alive:1234 to /alive becomes home.coap.n1234 (its uid, address, online, last
alive); its resources, found through /.well-known/core, become home.coap.n1234.temperature and so
on, with values as JSON, numbers, {\"value\": 23, \"unit\": \"°C\"} or text. Then

  thingsbus call home.coap.n1234.led 1

PUTs \"1\" to the board's /led. Names become namespace parts: lower-cased, characters outside
a-z, 0-9, '_' and '-' as '-', and 'n' (nodes) or 'r' (resources) in front of one that does not
start with a letter; the original names stay in the data.";

/// Brings CoAP nodes (RIOT boards, pyaiot nodes) onto the bus as things, and turns commands to
/// those things into CoAP PUTs.
///
/// Speaks pyaiot's node protocol: POST /alive (Alive:<uid> or reset:<uid>), POST /server
/// (<resource>:<value>), discovery through /.well-known/core, PUT to act. Resources whose link
/// carries `obs` are observed (RFC 7641).
#[derive(Debug, Parser)]
#[command(name = "thingsbus-coap-adaptor", version, after_long_help = EXAMPLE)]
struct Args {
    #[command(flatten)]
    bus: BusArgs,

    /// Where nodes send to (UDP); [::] takes IPv4 and IPv6.
    #[arg(long, default_value = "[::]:5683")]
    coap_bind: SocketAddr,

    /// Base namespace of the nodes.
    #[arg(long, default_value = "coap")]
    ns: String,

    /// The port nodes serve their resources on.
    #[arg(long, default_value_t = 5683)]
    node_port: u16,

    /// Seconds without an alive before a node is offline.
    #[arg(long, default_value_t = 120.0, value_parser = positive_secs)]
    max_time: f64,

    /// Nodes kept at most; alives from more are ignored and counted.
    #[arg(long, default_value_t = 1000)]
    max_nodes: usize,

    /// Resources kept per node at most.
    #[arg(long, default_value_t = 64)]
    max_resources: usize,

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
    let socket = UdpSocket::bind(args.coap_bind)
        .await
        .with_context(|| format!("cannot bind the CoAP socket {}", args.coap_bind))?;
    let bound = socket.local_addr()?;
    let mut builder = args.bus.adaptor(&args.ns, false, timeout)?;
    if let Some(d) = &args.documentation_url {
        builder = builder.documentation_url(d);
    }
    let adaptor = builder
        .connect()
        .await
        .with_context(|| format!("cannot reach the bus at {}", args.bus.describe()))?;
    let config = Config {
        node_port: args.node_port,
        ipv6_socket: bound.is_ipv6(),
        max_nodes: args.max_nodes,
        max_resources: args.max_resources,
        max_time: Duration::from_secs_f64(args.max_time),
    };
    tracing::info!(coap = %bound, ns = %args.ns, "listening for CoAP nodes");
    let report_every = Duration::from_secs_f64(args.report_interval.max(0.1));
    coap::serve(
        socket,
        adaptor,
        config,
        report_every,
        logging::shutdown_signal(),
    )
    .await
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    logging::main_with_runtime("thingsbus-coap-adaptor", run(args))
}
