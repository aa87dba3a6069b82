//! Sends one thing update to a broker and exits once it is sent.
//!
//! ```text
//! cargo run --example send_update -- --url tcp://127.0.0.1:7955 shop.door '{"open": true}'
//! cargo run --example send_update -- --udp 127.0.0.1:7955 garden.temp 21.5
//! cargo run --example send_update -- --zone example.org shop.door '{"open": false}'
//! ```

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::Value;
use thingsbus_adaptor::Adaptor;
use thingsbus_examples::{init_logging, Find};

/// Send one thing update to a thingsbus broker (ZMQ + JSON, or UDP + MessagePack) and exit once
/// it is sent.
#[derive(Parser)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["zone", "url", "udp"])))]
struct Args {
    #[command(flatten)]
    find: Find,
    /// The broker's ZMQ input, e.g. tcp://127.0.0.1:7955 (the directory port + 1).
    #[arg(short, long)]
    url: Option<String>,
    /// Send over UDP: the broker's input address (host:port), or with --zone, the word "srv".
    #[arg(long)]
    udp: Option<String>,
    /// Documentation URL for the thing.
    #[arg(short, long)]
    documentation: Option<String>,
    /// Seconds to wait for the broker.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// The thing's namespace, e.g. shop.door.
    ns: String,
    /// The data as JSON, e.g. '{"open": true}' or 21.5.
    json: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let data: Value =
        serde_json::from_str(&args.json).with_context(|| format!("{:?} is not JSON", args.json))?;
    let mut builder = Adaptor::builder(&args.ns);
    if let Some(doc) = &args.documentation {
        builder = builder.documentation_url(doc);
    }
    if let Some(ns) = args.find.nameserver {
        builder = builder.nameserver(ns);
    }
    builder = match (&args.find.zone, &args.url, args.udp.as_deref()) {
        (Some(zone), _, udp) => builder.zone(zone).prefer_udp(udp.is_some()),
        (None, Some(url), _) => builder.url(url),
        (None, None, Some(addr)) => builder.udp(addr),
        (None, None, None) => unreachable!("clap requires one of them"),
    };
    let adaptor = builder.connect().await?;
    adaptor.send(&data)?;
    if !adaptor.close(Duration::from_secs_f64(args.timeout)) {
        bail!("not sent: no broker answered within {}s", args.timeout);
    }
    Ok(())
}
