//! The adaptor's errors.

use thingsbus_protocol::{discovery::DiscoveryError, NamespaceError};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A namespace (base or sub-namespace) breaks the rules.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// No broker was found through DNS.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// The builder was given no way to find the broker.
    #[error("no broker given: call .zone(\"example.org\"), .url(\"tcp://host:7955\") or .udp(\"host:7955\")")]
    NoTarget,
    /// A UDP address could not be resolved or used.
    #[error("UDP target {addr:?}: {reason}")]
    Udp {
        /// The address as given.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// ZeroMQ refused something (a malformed URL, for example).
    #[error("zeromq, at {what}: {source}")]
    Zmq {
        /// What we were doing.
        what: String,
        /// What libzmq said.
        source: zmq::Error,
    },
    /// The data could not be turned into JSON.
    #[error("data cannot be encoded: {0}")]
    Encode(String),
    /// The data is too big for one UDP datagram.
    #[error("update is {size} bytes; a UDP datagram holds at most 65,507: send it over ZMQ")]
    TooBigForUdp {
        /// The encoded size.
        size: usize,
    },
    /// [`AdaptorBuilder::sign_udp`](crate::AdaptorBuilder::sign_udp) with a ZMQ target.
    #[error("signed datagrams are for UDP: give .udp(\"host:7955\") (or .prefer_udp(true) with a zone); over ZMQ use CURVE keys")]
    SigningNeedsUdp,
    /// A datagram cannot be signed (an invalid board name, for example).
    #[error("cannot sign the datagram: {0}")]
    Signing(String),
    /// `serve` needs the broker's command endpoint, and none is known.
    #[error("no command endpoint known: give .command_url(\"tcp://host:7957\") to the builder")]
    NoCommandEndpoint,
    /// CURVE keys that cannot be used (the zone's published key is not a key, a key pair
    /// without the broker's key, no CURVE in this build).
    #[error("CURVE keys: {0}")]
    Keys(String),
    /// The adaptor was closed.
    #[error("the adaptor is closed")]
    Closed,
    /// A background thread could not be started.
    #[error("cannot start the adaptor thread: {0}")]
    Thread(std::io::Error),
}

impl From<thingsbus_protocol::transport::ZmqFailure> for Error {
    fn from(f: thingsbus_protocol::transport::ZmqFailure) -> Error {
        Error::Zmq {
            what: f.what,
            source: f.source,
        }
    }
}
