//! The thingsbus broker as a library: keeps the last value of every thing, republishes each
//! update and periodic snapshots, compatible with thingsbus 0.2.x peers.
//!
//! The binary `thingsbus-broker` only parses flags into a [`Config`] and calls [`Broker::start`].
//!
//! ```
//! use thingsbus_broker::{Broker, Config};
//! // Everything on 127.0.0.1, ports picked by the system.
//! let broker = Broker::start(Config::ephemeral())?;
//! let at = broker.endpoints().clone();
//! assert!(at.directory.starts_with("tcp://127.0.0.1:"));
//! broker.shutdown();
//! broker.join();
//! # Ok::<(), thingsbus_broker::Error>(())
//! ```
//!
//! Inside, three threads: *ingest* owns the input sockets (ZMQ SUB and UDP) and the directory,
//! *publish* sends big batches and snapshot chunks on the directory output (ZMQ PUB), and
//! *snapshots* answers snapshot requests on P + 2 (ZMQ ROUTER). Besides 0.2.x's protocol the
//! broker adds `seq`, chunked snapshots, `thing_expired` events and its own counters as the thing
//! `thingsbus.broker`. See `README.md` and `ARCHITECTURE.md` at the repository root.

mod access;
mod auth;
// The verifier of signed board datagrams; the ingest wiring follows (issue #22).
#[allow(dead_code)]
mod board_auth;
#[cfg_attr(not(feature = "cluster"), path = "cluster/off.rs")]
mod cluster;
mod commands;
mod config;
mod endpoints;
mod error;
mod health;
/// The history store behind `--history` (see its module documentation); public for tests and
/// the bench, which read and age a store with a `now` of their choosing.
#[cfg(feature = "http")]
pub mod history;
#[cfg_attr(not(feature = "http"), path = "http_off.rs")]
mod http;
mod ingest;
mod journal;
mod log_limit;
mod mailbox;
mod open_files;
mod publish;
mod reason;
mod server;
mod snapshot_server;
mod stats;
mod udp_drops;
mod udp_input;

pub use access::Cidr;
pub use auth::AuthCell;
pub use config::{
    ClusterAuth, ClusterConfig, ClusterTls, Config, HistoryConfig, HttpOptions,
    DEFAULT_HISTORY_MAX_BYTES,
};
pub use endpoints::Endpoints;
pub use error::Error;
pub use health::Health;
pub use open_files::{raise_open_file_limit, OpenFiles};
pub use reason::Reason;
pub use server::{Broker, Stopper};

/// The HTTP side's bearer tokens and TLS, for the project's other servers to use the same way
/// (`thingsbus-ws-adaptor`'s `--ws-token-file` and `--ws-tls-cert`): one implementation.
#[cfg(feature = "http")]
pub mod http_access {
    pub use crate::http::conn::tls_acceptor_for;
    pub use crate::http::guard::{presented, Role, Tokens};
}
pub use stats::{ClusterStats, CommandStats, Stats};
