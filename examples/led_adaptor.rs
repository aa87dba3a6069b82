//! A thing that obeys commands: an LED with an on/off state. It serves `{"on": true|false}`
//! commands for its namespace, answers with its new state and publishes it, so `thingsbus watch`
//! sees every switch. It also reports its state every 10 s, so it stays live.
//!
//! ```text
//! cargo run --example led_adaptor -- --url tcp://127.0.0.1:7954          # directory URL
//! thingsbus call demo.led '{"on": true}'                                # in another terminal
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use thingsbus_adaptor::Adaptor;
use thingsbus_examples::{init_logging, Find};
use thingsbus_protocol::endpoint::port_plus;

/// An LED that obeys thingsbus commands: {"on": true} or {"on": false}.
#[derive(Parser)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["zone", "url"])))]
struct Args {
    #[command(flatten)]
    find: Find,
    /// The broker's directory URL, e.g. tcp://127.0.0.1:7954 (input and command ports derived).
    #[arg(short, long)]
    url: Option<String>,
    /// The LED's namespace.
    #[arg(long, default_value = "demo.led")]
    ns: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let mut builder = Adaptor::builder(&args.ns);
    if let Some(ns) = args.find.nameserver {
        builder = builder.nameserver(ns);
    }
    builder = match (&args.find.zone, &args.url) {
        (Some(zone), _) => builder.zone(zone),
        (None, Some(url)) => {
            let input = port_plus(url, 1).context("the URL needs a port: tcp://host:7954")?;
            let command = port_plus(url, 3).context("the URL needs a port")?;
            builder.url(&input).command_url(&command)
        }
        (None, None) => unreachable!("clap requires one of them"),
    };
    let adaptor = builder
        .connect()
        .await
        .context("connecting to the broker")?;
    let on = Arc::new(AtomicBool::new(false));
    adaptor.send(&json!({"on": false}))?;
    {
        let on = on.clone();
        let publisher = adaptor.clone();
        adaptor.serve("", move |_ns, data, _deadline| {
            let on = on.clone();
            let publisher = publisher.clone();
            async move {
                let want = data
                    .get("on")
                    .and_then(serde_json::Value::as_bool)
                    .ok_or_else(|| format!("expected {{\"on\": true|false}}, got {data}"))?;
                on.store(want, Ordering::Relaxed);
                let state = json!({"on": want});
                publisher.send(&state).map_err(|e| e.to_string())?;
                println!("led is now {}", if want { "on" } else { "off" });
                Ok(state)
            }
        })?;
    }
    println!("{} serving commands; Ctrl-C to stop", args.ns);
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                adaptor.send(&json!({"on": on.load(Ordering::Relaxed)}))?;
            }
        }
    }
    adaptor.close(Duration::from_secs(1));
    Ok(())
}
