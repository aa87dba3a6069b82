//! A live local mirror of a thingsbus directory: query things, subscribe to their events.
//!
//! Three lines: connect (through the zone's DNS SRV record, or an explicit URL), wait until the
//! mirror is filled, read.
//!
//! ```
//! # use thingsbus_broker::{Broker, Config};
//! # let broker = Broker::start(Config { snapshot_interval: std::time::Duration::from_millis(100), ..Config::ephemeral() }).unwrap();
//! # let directory_url = broker.endpoints().directory.clone();
//! use std::time::Duration;
//! use thingsbus_client::Client;
//!
//! let client = Client::builder().url(&directory_url).connect_blocking()?;
//! client.wait_filled_blocking(Duration::from_secs(20));
//! if let Some(thing) = client.get("shop.shopbot.spacemon") {
//!     println!("{:.1}s old: {}", thing.age(), thing.value());
//! }
//! # Ok::<(), thingsbus_client::Error>(())
//! ```
//!
//! With a zone: `Client::builder().zone("example.org").connect().await?`.
//!
//! # The model (as in 0.2.x)
//! - Things form a tree: every prefix of a thing's namespace exists ([`Client::children`],
//!   [`Client::walk`]).
//! - A snapshot entry never replaces a newer value.
//! - [`Client::subscribe`] gives a stream of [`Event`]s for one namespace; with
//!   [`SubscribeOptions::tree`] also its descendants', with [`SubscribeOptions::snapshots`] also
//!   snapshot-replayed values. Each subscriber has its own bounded queue: a slow one gets
//!   `Err(Lagged)` and never stalls the client or other subscribers.
//! - On connect the client asks the broker's snapshot endpoint (P + 2) for the whole directory, so
//!   [`Client::wait_filled`] returns in milliseconds instead of waiting for the periodic snapshot;
//!   against a 0.2.x broker it falls back to the periodic one after
//!   [`ClientBuilder::snapshot_timeout`]. A gap in the broker's sequence numbers, or a broker
//!   restart, makes it ask again; both are counted in [`ClientStats`].
//! - `thing_expired` from the broker marks a thing [`Thing::stale`] and sends
//!   [`EventKind::Expired`] to subscribers.
//! - With a zone, every SRV record is kept: a broker unreachable for
//!   [`ClientBuilder::failover_timeout`] is left for the next one.

mod client;
mod command;
mod driver;
mod error;
mod mirror;
mod shared;
mod subscription;
mod thing;

pub use client::{Client, ClientBuilder, ClientStats};
pub use command::CommandError;
pub use error::Error;
pub use subscription::{Event, EventKind, Lagged, SubscribeOptions, Subscription};
pub use thing::Thing;
