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
//! With a zone instead of a URL: `Adaptor::builder("shop.shopbot").zone("example.org").connect().await?`.
//!
//! # Delivery
//! Over ZMQ, updates go through a bounded queue (default 10,000) drained by a background thread,
//! so `send` never blocks. While the broker is unreachable (not started yet, restarting) updates
//! wait in the queue; when the queue is full the **oldest** update is dropped and counted
//! ([`AdaptorStats::dropped`]): the newest values matter most. The adaptor reconnects by itself
//! after a broker restart. Over UDP each `send` is one datagram, sent at once; a datagram the
//! kernel refuses is counted as dropped.

mod adaptor;
mod error;
mod zmq_sender;

pub use adaptor::{Adaptor, AdaptorBuilder, AdaptorStats, UdpForm};
pub use error::Error;
