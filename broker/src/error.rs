//! Why a broker could not start.

use std::io;

/// Why a broker could not start: each variant names the endpoint or file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An endpoint's address is taken.
    #[error(
        "{what} {endpoint} is already in use (is another broker running?); choose another port"
    )]
    AddressInUse {
        /// Which endpoint.
        what: &'static str,
        /// The address that was asked for.
        endpoint: String,
    },
    /// An endpoint could not be bound for another reason.
    #[error("cannot bind {what} {endpoint}: {reason}")]
    Bind {
        /// Which endpoint.
        what: &'static str,
        /// The address that was asked for.
        endpoint: String,
        /// What the system said.
        reason: String,
    },
    /// The configuration asks for something this build left out.
    #[error(
        "{flag} needs the `{feature}` feature, which this broker was built without; build it \
         with `cargo build --release -p thingsbus-broker --features {feature}`"
    )]
    FeatureMissing {
        /// The flag (or configuration field) that asked for it.
        flag: &'static str,
        /// The Cargo feature.
        feature: &'static str,
    },
    /// Setting up a ZeroMQ socket failed.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    /// Setting up a ZeroMQ socket failed, at the step named.
    #[error("zeromq, at {0}")]
    ZmqAt(#[from] thingsbus_protocol::transport::ZmqFailure),
    /// The state file could not be read or written.
    #[error("state file {path}: {reason}")]
    State {
        /// The file.
        path: String,
        /// What the system said.
        reason: String,
    },
    /// The auth file could not be read or is wrong.
    #[error("auth file {path}: {reason}")]
    AuthFile {
        /// The file.
        path: String,
        /// What is wrong, naming the table and field.
        reason: String,
    },
    /// `curve` is set but this build's libzmq has no CURVE.
    #[error("{0}")]
    Curve(#[from] thingsbus_protocol::transport::CurveUnavailable),
    /// The HTTP side's TLS or token files could not be used.
    #[error("HTTP endpoint: {0}")]
    Http(String),
    /// `--history` cannot be used as given (its file, or its flags).
    #[error("history: {0}")]
    History(String),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[from] io::Error),
}
