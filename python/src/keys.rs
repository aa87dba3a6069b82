//! `server_key=` and `key_file=`: CURVE keys for the client's and the adaptor's sockets.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use thingsbus_protocol::transport::ClientKeys;

/// The keys a constructor was given: none (plain ZMQ, as 0.2.x), or the broker's public key and,
/// if any, the file with this side's secret key (without one, a new key pair for this run).
pub(crate) fn from_args(
    server_key: Option<&str>,
    key_file: Option<PathBuf>,
) -> PyResult<Option<ClientKeys>> {
    match (server_key, key_file) {
        (None, None) => Ok(None),
        (None, Some(path)) => Err(PyValueError::new_err(format!(
            "key_file={} needs server_key= too: the broker's public key (40 Z85 characters, \
             printed by `thingsbus keygen --secret-file broker.key`)",
            path.display()
        ))),
        (Some(server), path) => ClientKeys::from_user(server, path.as_deref())
            .map(Some)
            .map_err(PyValueError::new_err),
    }
}
