//! `server_key=` and `key_file=`: CURVE keys for the client's and the adaptor's sockets.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use thingsbus_protocol::keys::KeyPair;
use thingsbus_protocol::transport::{require_curve, ClientKeys};

/// The keys a constructor was given.
pub(crate) enum Keys {
    /// None: plain ZMQ, as 0.2.x (or CURVE with a new key pair when a zone publishes the key).
    None,
    /// The broker's public key and this side's pair (the key file's, or a new one for the run).
    Given(ClientKeys),
    /// Only this side's pair (`key_file=` without `server_key=`): for a zone that publishes the
    /// broker's key.
    Own(KeyPair),
}

/// The keys from `server_key=` and `key_file=`.
pub(crate) fn from_args(server_key: Option<&str>, key_file: Option<PathBuf>) -> PyResult<Keys> {
    match (server_key, key_file) {
        (None, None) => Ok(Keys::None),
        (None, Some(path)) => {
            require_curve().map_err(|e| PyValueError::new_err(e.to_string()))?;
            KeyPair::read_file(&path)
                .map(Keys::Own)
                .map_err(|e| PyValueError::new_err(e.to_string()))
        }
        (Some(server), path) => ClientKeys::from_user(server, path.as_deref())
            .map(Keys::Given)
            .map_err(PyValueError::new_err),
    }
}
