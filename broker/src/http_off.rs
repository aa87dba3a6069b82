//! A build without the `http` feature: `--http` is refused with [`Error::FeatureMissing`], so
//! start-up reads the same with the feature and without it.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
use crate::endpoints::Endpoints;
use crate::error::Error;
use crate::stats::Stats;

/// Refuses to serve HTTP: this build has no HTTP side.
pub(crate) fn start(
    _: SocketAddr,
    _: &Endpoints,
    _: Arc<Stats>,
    _: Arc<AtomicBool>,
    _: &Config,
    _: Option<thingsbus_protocol::transport::ClientKeys>,
) -> Result<(JoinHandle<()>, SocketAddr), Error> {
    Err(Error::FeatureMissing {
        flag: "--http",
        feature: "http",
    })
}
