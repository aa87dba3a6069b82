//! Prints every event on a broker's directory output, one line each:
//! `<ns> <ts> <json data>`, with ` snapshot` appended for values replayed from a snapshot.
//!
//! ```text
//! cargo run --example print_all_events -- --url tcp://127.0.0.1:7954
//! ```

use anyhow::Context;
use clap::Parser;
use serde_json::Value;
use thingsbus_protocol::endpoint::connect_url;

/// Print every thing update and snapshot entry a thingsbus broker publishes.
#[derive(Parser)]
struct Args {
    /// The broker's directory output, e.g. tcp://127.0.0.1:7954.
    #[arg(long, default_value = "tcp://127.0.0.1:7954")]
    url: String,
}

fn print(entry: &Value, snapshot: bool) {
    let ts = entry["ts"].as_f64().unwrap_or(f64::NAN);
    let suffix = if snapshot { " snapshot" } else { "" };
    println!(
        "{} {ts:.3} {}{suffix}",
        entry["ns"].as_str().unwrap_or("?"),
        entry["data"]
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (url, _) = connect_url(&args.url);
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB)?;
    sub.set_subscribe(b"")?;
    sub.connect(&url)
        .with_context(|| format!("connecting to {url}"))?;
    loop {
        let bytes = sub.recv_bytes(0)?;
        let Ok(msg) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        match msg["type"].as_str() {
            Some("thing_update") => print(&msg, false),
            Some("thing_snapshot") => {
                for entry in msg["data"].as_object().into_iter().flat_map(|m| m.values()) {
                    print(entry, true);
                }
            }
            _ => {}
        }
    }
}
