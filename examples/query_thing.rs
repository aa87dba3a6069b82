//! Prints one thing's age and value: `<age_seconds> <json data>`; exit 1 if it is unknown.
//!
//! ```text
//! cargo run --example query_thing -- --url tcp://127.0.0.1:7954 shop.door
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use thingsbus_client::Client;
use thingsbus_examples::{init_logging, Find};

/// Print the age (seconds) and value of one thing, once the local mirror is filled.
#[derive(Parser)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["zone", "url"])))]
struct Args {
    #[command(flatten)]
    find: Find,
    /// The broker's directory output, e.g. tcp://127.0.0.1:7954.
    #[arg(short, long)]
    url: Option<String>,
    /// Seconds to wait for the directory (a 0.2.x-style broker sends it every 15 s).
    #[arg(long, default_value_t = 20.0)]
    timeout: f64,
    /// The thing's namespace.
    ns: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    init_logging();
    let args = Args::parse();
    let mut builder = Client::builder();
    if let Some(ns) = args.find.nameserver {
        builder = builder.nameserver(ns);
    }
    builder = match (&args.find.zone, &args.url) {
        (Some(zone), _) => builder.zone(zone),
        (None, Some(url)) => builder.url(url),
        (None, None) => unreachable!("clap requires one of them"),
    };
    let client = builder.connect().await?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let filled = client.wait_filled(timeout).await;
    match client.get(&args.ns) {
        Some(thing) => {
            println!("{:.3} {}", thing.age(), thing.data);
            Ok(ExitCode::SUCCESS)
        }
        None if !filled => {
            eprintln!(
                "no directory from {} within {}s",
                client.url(),
                args.timeout
            );
            Ok(ExitCode::FAILURE)
        }
        None => {
            eprintln!("unknown thing {:?}", args.ns);
            Ok(ExitCode::FAILURE)
        }
    }
}
