//! What the mirror knows about one thing.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use thingsbus_protocol::Namespace;

/// A thing's last known value, as handed out by [`crate::Client::get`]: an owned snapshot, not a
/// live view.
#[derive(Debug, Clone)]
pub struct Thing {
    /// The thing.
    pub ns: Namespace,
    /// The value as JSON text (shared, never copied); see [`Thing::value`] and [`Thing::parse`].
    pub data: Arc<str>,
    /// The value's timestamp, seconds since 1970.
    pub ts: f64,
    /// The last documentation URL the thing was given.
    pub documentation_url: Option<Arc<str>>,
    /// The broker's sequence number for this value (absent from 0.2.x brokers).
    pub seq: Option<u64>,
    /// True when the value came from a snapshot rather than a live update.
    pub from_snapshot: bool,
    /// True when the broker said the thing left its live window (`thing_expired`) and no new
    /// value has come since.
    pub stale: bool,
}

pub(crate) fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Thing {
    /// Seconds since the value's timestamp (0.2.x `get_data()`'s first item).
    pub fn age(&self) -> f64 {
        now_secs() - self.ts
    }

    /// The value as a `serde_json::Value`.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }

    /// The value decoded into `T`.
    ///
    /// # Errors
    /// When the value does not fit `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.data)
    }
}
