//! Sends one thing update to a broker, over ZMQ (JSON) or UDP (MessagePack), then exits.
//!
//! ```text
//! cargo run --example send_update -- --url tcp://127.0.0.1:7955 shop.door '{"open": true}'
//! cargo run --example send_update -- --udp 127.0.0.1:7955 garden.temp 21.5
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use thingsbus_protocol::{endpoint::connect_url, Namespace};

/// Send one thing update to a thingsbus broker and exit once it is sent.
#[derive(Parser)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["url", "udp"])))]
struct Args {
    /// The broker's ZMQ input, e.g. tcp://127.0.0.1:7955 (the directory port + 1).
    #[arg(long)]
    url: Option<String>,
    /// The broker's UDP input, e.g. 127.0.0.1:7955; sends the compact MessagePack 4-list.
    #[arg(long)]
    udp: Option<String>,
    /// Documentation URL for the thing.
    #[arg(long)]
    doc_url: Option<String>,
    /// Seconds to wait for the broker's ZMQ input to answer.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// The thing's namespace, e.g. shop.door.
    ns: String,
    /// The data as JSON, e.g. '{"open": true}' or 21.5.
    json: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ns = Namespace::new(&args.ns)?;
    let data: Value =
        serde_json::from_str(&args.json).with_context(|| format!("{:?} is not JSON", args.json))?;
    if let Some(addr) = &args.udp {
        let bytes = rmp_serde::to_vec(&json!([ns.as_str(), null, data, args.doc_url]))?;
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        socket
            .send_to(&bytes, addr)
            .with_context(|| format!("sending to {addr}"))?;
        return Ok(());
    }
    let url = args.url.as_deref().expect("clap requires --url or --udp");
    let (url, rewritten) = connect_url(url);
    if rewritten {
        eprintln!("note: connecting to {url} (a '*' host means this machine)");
    }
    // An XPUB socket hears the broker's subscription, so we know our message will be delivered.
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::XPUB)?;
    socket.set_linger(2000)?;
    socket
        .connect(&url)
        .with_context(|| format!("connecting to {url}"))?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no broker answered at {url} within {}s", args.timeout);
        }
        if socket.poll(
            zmq::POLLIN,
            i64::try_from(left.as_millis()).unwrap_or(i64::MAX),
        )? > 0
            && socket.recv_bytes(0)?.first() == Some(&1)
        {
            break;
        }
    }
    let msg = json!({"type": "thing_update", "ns": ns.as_str(), "data": data, "ts": null, "documentation_url": args.doc_url});
    socket.send(msg.to_string().as_bytes(), 0)?;
    Ok(())
}
