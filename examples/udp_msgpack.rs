//! Sends the compact datagram a small board (ESP8266) sends: a MessagePack 4-list
//! `[ns, ts, data, documentation_url]` with `ts` nil, so the broker stamps the arrival time.
//! No library beyond a MessagePack encoder: this is the whole wire format.
//!
//! ```text
//! cargo run --example udp_msgpack -- 127.0.0.1:7955 bottlekid.prototype '{"dht22_error": ""}'
//! ```

use anyhow::Context;
use clap::Parser;
use serde_json::Value;

/// Send one update as the compact MessagePack datagram small boards use.
#[derive(Parser)]
struct Args {
    /// The broker's UDP input, host:port (the directory port + 1).
    to: String,
    /// The thing's namespace.
    ns: String,
    /// The data as JSON.
    json: String,
    /// Documentation URL.
    #[arg(short, long)]
    documentation: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    thingsbus_protocol::Namespace::new(&args.ns)?;
    let data: Value =
        serde_json::from_str(&args.json).with_context(|| format!("{:?} is not JSON", args.json))?;
    let datagram = rmp_serde::to_vec(&(
        args.ns.as_str(),
        None::<f64>,
        &data,
        args.documentation.as_deref(),
    ))?;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket
        .send_to(&datagram, &args.to)
        .with_context(|| format!("sending to {}", args.to))?;
    println!("sent {} bytes", datagram.len());
    Ok(())
}
