//! The client's errors.

use thingsbus_protocol::discovery::DiscoveryError;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No broker was found through DNS.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// The builder was given no way to find the broker.
    #[error("no broker given: call .zone(\"example.org\") or .url(\"tcp://host:7954\")")]
    NoTarget,
    /// A namespace given to a query breaks the rules.
    #[error(transparent)]
    Namespace(#[from] thingsbus_protocol::NamespaceError),
    /// ZeroMQ refused something (a malformed URL, for example).
    #[error("zeromq, at {what}: {source}")]
    Zmq {
        /// What we were doing.
        what: String,
        /// What libzmq said.
        source: zmq::Error,
    },
    /// CURVE keys that cannot be used (the zone's published key is not a key, a key pair
    /// without the broker's key, no CURVE in this build).
    #[error("CURVE keys: {0}")]
    Keys(String),
    /// A background thread or runtime could not be started.
    #[error("cannot start the client: {0}")]
    Start(std::io::Error),
}

impl From<thingsbus_protocol::transport::ZmqFailure> for Error {
    fn from(f: thingsbus_protocol::transport::ZmqFailure) -> Error {
        Error::Zmq {
            what: f.what,
            source: f.source,
        }
    }
}
