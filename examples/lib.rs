//! Runnable examples, and the broker-finding flags they share. Run one with
//! `cargo run --example send_update -- --help`.

use std::net::SocketAddr;

/// How to find the broker: a zone (DNS SRV) or an explicit URL.
#[derive(Debug, Clone, clap::Args)]
pub struct Find {
    /// Zone whose `_thingsbus._tcp` SRV record names the broker, e.g. example.org.
    #[arg(short, long, conflicts_with = "url")]
    pub zone: Option<String>,
    /// DNS server to ask instead of the system's, as IP:PORT.
    #[arg(long, requires = "zone")]
    pub nameserver: Option<SocketAddr>,
}

/// Log to stderr, honouring RUST_LOG (default: warnings).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
