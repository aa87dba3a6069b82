//! A build without the `cluster` feature: the names the rest of the broker uses, none of which
//! can be made, and `--cluster` refused with [`Error::FeatureMissing`]. Ingest and start-up then
//! read the same with the feature and without it.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use thingsbus_protocol::{Directory, Entry, Timestamp};

use crate::mailbox::Post;
use crate::{Config, Error, Stats};

/// Ingest's end of the cluster link: without the feature there is none.
pub(crate) enum ClusterLink {}

impl ClusterLink {
    pub(crate) fn hand_over(&self, _: &mut Directory, _: &Stats) {
        match *self {}
    }

    pub(crate) fn hand_over_due(&self, _: &Directory) -> Option<Duration> {
        match *self {}
    }

    pub(crate) fn apply_remote(
        &self,
        _: &mut Directory,
        _: &[u8],
        _: Timestamp,
        _: &Stats,
    ) -> Option<Entry> {
        match *self {}
    }
}

/// Refuses `--cluster`; otherwise hands the directory back with no link.
#[allow(clippy::too_many_arguments)]
pub(crate) fn join(
    config: &Config,
    dir: Directory,
    _: &Arc<Stats>,
    _: &Arc<AtomicBool>,
    _: Post<Vec<u8>>,
    _: Option<relay::RelayEnds>,
    _: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<(Directory, Option<ClusterLink>), Error> {
    match config.cluster {
        Some(_) => Err(Error::FeatureMissing {
            flag: "--cluster",
            feature: "cluster",
        }),
        None => Ok((dir, None)),
    }
}

/// Commands between brokers: without the feature, no relay.
pub(crate) mod relay {
    use crate::commands::RelayLink;
    use crate::{Config, Error};

    /// The relay's ends: without the feature there are none.
    pub(crate) enum RelayEnds {}

    pub(crate) fn link(
        _: &zmq::Context,
        _: &Config,
    ) -> Result<(Option<RelayLink>, Option<RelayEnds>), Error> {
        Ok((None, None))
    }
}
