//! Publish things to a thingsbus broker.
//!
//! Three lines: build an adaptor for a base namespace, connect (through the zone's DNS SRV
//! record, or an explicit URL), send.
//!
//! ```
//! # use thingsbus_broker::{Broker, Config};
//! # let broker = Broker::start(Config::ephemeral()).unwrap();
//! # let input_url = broker.endpoints().input.clone();
//! use serde_json::json;
//! use thingsbus_adaptor::Adaptor;
//!
//! let adaptor = Adaptor::builder("shop.shopbot").url(&input_url).connect_blocking()?;
//! adaptor.send(&json!({"busy": 12.0}))?;                       // the thing shop.shopbot
//! adaptor.send_to("spacemon", &json!({"light": 31.8}), None)?; // shop.shopbot.spacemon
//! adaptor.close(std::time::Duration::from_secs(2));           // deliver what is queued
//! # Ok::<(), thingsbus_adaptor::Error>(())
//! ```
//!
//! # Commands
//! An adaptor can also act on its things: [`Adaptor::serve`] registers a handler for a subtree
//! with the broker's command endpoint (P + 3), and every command a caller sends to a thing in it
//! runs the handler, whose `Ok(data)` or `Err(text)` goes back to the caller.
//!
//! ```no_run
//! # async fn f(adaptor: thingsbus_adaptor::Adaptor) -> Result<(), thingsbus_adaptor::Error> {
//! use serde_json::json;
//! adaptor.serve("led", |ns, data, _deadline| async move {
//!     let on = data["on"].as_bool().ok_or("expected {\"on\": true|false}")?;
//!     Ok(json!({"on": on}))
//! })?;
//! # Ok(()) }
//! ```
//!
//! With a zone instead of a URL: `Adaptor::builder("shop.shopbot").zone("example.org").connect().await?`.
//!
//! # Delivery
//! Over ZMQ, updates go through a bounded queue (default 10,000) drained by a background thread,
//! so `send` never blocks. While the broker is unreachable (not started yet, restarting) updates
//! wait in the queue; when the queue is full the **oldest** update is dropped and counted
//! ([`AdaptorStats::dropped`]): the newest values matter most. The adaptor reconnects by itself
//! after a broker restart. Over UDP each `send` is one datagram, sent at once; a datagram the
//! kernel refuses is counted as dropped.
//!
//! # Signed datagrams
//! For a broker with an auth file, [`AdaptorBuilder::sign_udp`] signs every UDP datagram as a
//! board, with the board's shared secret (HMAC-SHA256 and a replay counter, see
//! `docs/authenticated-datagrams.md`):
//!
//! ```no_run
//! use thingsbus_adaptor::{Adaptor, BoardSecret};
//! let secret: BoardSecret = std::env::var("THINGSBUS_BOARD_SECRET").unwrap_or_default().parse()?;
//! let adaptor = Adaptor::builder("porch").udp("broker:7955").sign_udp("porch", secret).connect_blocking()?;
//! adaptor.send(&serde_json::json!({"door": "open"}))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod adaptor;
mod error;
mod serve;
mod zmq_sender;

pub use adaptor::{Adaptor, AdaptorBuilder, AdaptorStats, UdpForm};
pub use error::Error;
pub use serve::HandlerResult;
pub use thingsbus_protocol::signed::BoardSecret;
