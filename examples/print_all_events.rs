//! Prints every event on a broker's directory, one line each: `<ns> <ts> <json data>`, with
//! ` snapshot` at the end for values replayed from a snapshot.
//!
//! ```text
//! cargo run --example print_all_events -- --url tcp://127.0.0.1:7954
//! cargo run --example print_all_events -- --zone example.org
//! ```

use clap::Parser;
use thingsbus_client::{Client, SubscribeOptions};
use thingsbus_examples::{init_logging, Find};

/// Print every thing update (and snapshot-replayed value) a thingsbus broker publishes.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    find: Find,
    /// The broker's directory output, e.g. tcp://127.0.0.1:7954 (default without --zone).
    #[arg(short, long)]
    url: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let mut builder = Client::builder();
    if let Some(ns) = args.find.nameserver {
        builder = builder.nameserver(ns);
    }
    builder = match (&args.find.zone, &args.url) {
        (Some(zone), _) => builder.zone(zone),
        (None, Some(url)) => builder.url(url),
        (None, None) => builder.url("tcp://127.0.0.1:7954"),
    };
    let client = builder.connect().await?;
    let mut events = client.subscribe(
        "",
        SubscribeOptions::new()
            .tree(true)
            .snapshots(true)
            .capacity(100_000),
    )?;
    while let Some(item) = events.next().await {
        match item {
            Ok(e) => {
                let suffix = if e.from_snapshot() { " snapshot" } else { "" };
                println!("{} {:.3} {}{suffix}", e.ns(), e.thing.ts, e.thing.data);
            }
            Err(lag) => eprintln!("(too slow: {} events skipped)", lag.missed),
        }
    }
    Ok(())
}
