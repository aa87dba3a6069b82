//! The thingsbus wire protocol, shared by the broker, adaptors and clients.
//!
//! - [`Namespace`]: validated dot-separated thing names.
//! - [`codec`]: decoding input (JSON over ZMQ, MessagePack over UDP) into [`UpdateRef`], or a
//!   [`Rejection`] saying why it was dropped; encoding what the broker publishes.
//! - [`Directory`]: the pure model of the broker's directory.
//! - [`snapshot`]: snapshots in chunks of bounded size.
//! - [`signed`]: signed UDP datagrams for boards that cannot do CURVE (HMAC-SHA256, replay
//!   window).
//! - `transport` (feature `zmq`): the ZMQ socket set-up every role shares.
//!
//! ```
//! use thingsbus_protocol::{codec, Limits};
//! let update = codec::decode_json_input(
//!     br#"{"type": "thing_update", "ns": "shop.shopbot.spacemon", "data": {"busy": 12.0}}"#,
//!     &Limits::default(),
//! )?;
//! assert_eq!(update.ns.as_str(), "shop.shopbot.spacemon");
//! assert_eq!(update.ts, None); // the broker stamps the arrival time
//! # Ok::<(), thingsbus_protocol::Rejection>(())
//! ```

pub mod codec;
pub mod command;
pub mod directory;
pub mod discovery;
pub mod endpoint;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "zmq")]
pub mod keys;
pub mod message;
pub mod namespace;
pub mod signed;
pub mod snapshot;
#[cfg(feature = "zmq")]
pub mod transport;

pub use codec::{Limits, Rejection};
pub use directory::{Caps, Directory, Entry, Refused, Swept};
pub use message::{NamespaceRef, ThingUpdate, Timestamp, UpdateRef};
pub use namespace::{Namespace, NamespaceError};

/// Default directory output port; the input (ZMQ and UDP) is this plus one.
pub const DEFAULT_DIRECTORY_PORT: u16 = 7954;
