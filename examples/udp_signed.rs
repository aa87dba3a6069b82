//! Sends one update as a signed datagram (`docs/authenticated-datagrams.md`): what a board with a
//! shared secret sends to a broker that has an auth file. The secret comes from a file or from
//! `THINGSBUS_BOARD_SECRET`, never from the command line (where `ps` would show it).
//!
//! ```text
//! cargo run --example udp_signed -- --new-secret > porch.secret
//! cargo run --example udp_signed -- --secret-file porch.secret 127.0.0.1:7955 porch porch.door '{"open": true}'
//! ```

use anyhow::Context;
use clap::Parser;
use serde_json::Value;
use thingsbus_adaptor::{Adaptor, BoardSecret};

/// Send one update as a signed UDP datagram, as the board NAME.
#[derive(Parser)]
struct Args {
    /// Print a new random secret (64 hex digits) and exit.
    #[arg(long)]
    new_secret: bool,
    /// The broker's UDP input, host:port (the directory port + 1).
    #[arg(required_unless_present = "new_secret")]
    to: Option<String>,
    /// The board's name, as in the broker's auth file (`[boards.NAME]`).
    #[arg(required_unless_present = "new_secret")]
    board: Option<String>,
    /// The thing's namespace.
    #[arg(required_unless_present = "new_secret")]
    ns: Option<String>,
    /// The data as JSON.
    #[arg(required_unless_present = "new_secret")]
    json: Option<String>,
    /// A file holding the board's secret (64 hex digits).
    #[arg(long, env = "THINGSBUS_BOARD_SECRET_FILE")]
    secret_file: Option<std::path::PathBuf>,
    /// The boot number (default: now in seconds since 1970, so every run is a new boot).
    #[arg(long)]
    boot: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.new_secret {
        println!("{}", BoardSecret::generate()?.to_hex());
        return Ok(());
    }
    let (Some(to), Some(board), Some(ns), Some(json)) = (args.to, args.board, args.ns, args.json)
    else {
        anyhow::bail!("give TO BOARD NS JSON (see --help)");
    };
    let secret = match (&args.secret_file, std::env::var("THINGSBUS_BOARD_SECRET")) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the secret from {}", path.display()))?
            .parse::<BoardSecret>()
            .with_context(|| format!("the secret in {}", path.display()))?,
        (None, Ok(hex)) => hex
            .parse::<BoardSecret>()
            .context("the secret in THINGSBUS_BOARD_SECRET")?,
        (None, Err(_)) => anyhow::bail!(
            "no secret: give --secret-file PATH or set THINGSBUS_BOARD_SECRET (64 hex digits; \
             --new-secret makes one)"
        ),
    };
    let data: Value =
        serde_json::from_str(&json).with_context(|| format!("{json:?} is not JSON"))?;
    let mut builder = Adaptor::builder(&ns).udp(&to).sign_udp(&board, secret);
    if let Some(boot) = args.boot {
        builder = builder.signing_boot(boot);
    }
    let adaptor = builder.connect_blocking()?;
    adaptor.send(&data)?;
    println!("sent {ns} as board {board}");
    Ok(())
}
