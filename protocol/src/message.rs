//! The messages of the wire protocol, as Rust types.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;

use crate::namespace::{self, Namespace, NamespaceError};

/// Seconds since 1970-01-01 UTC, always finite. Written on the wire as a JSON float.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Timestamp(f64);

impl Timestamp {
    /// Wraps `secs`; `None` for NaN and infinities.
    pub fn from_secs(secs: f64) -> Option<Self> {
        secs.is_finite().then_some(Timestamp(secs))
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_secs_f64())
    }

    /// Seconds since the epoch.
    pub fn as_secs(self) -> f64 {
        self.0
    }
}

/// A namespace borrowed from a received message, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRef<'a>(Cow<'a, str>);

impl<'a> NamespaceRef<'a> {
    /// Validates `s`.
    ///
    /// # Errors
    /// [`NamespaceError`] naming the offending part.
    pub fn new(s: Cow<'a, str>) -> Result<Self, NamespaceError> {
        namespace::validate(&s)?;
        Ok(NamespaceRef(s))
    }

    /// The namespace text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An owned [`Namespace`] (no second validation).
    pub fn to_namespace(&self) -> Namespace {
        Namespace::from_validated(&self.0)
    }
}

/// A thing update as decoded from an input message, borrowing from the received bytes where it can.
///
/// `data` is the JSON text of the value (MessagePack input is transcoded to JSON once, at the edge).
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRef<'a> {
    /// The thing.
    pub ns: NamespaceRef<'a>,
    /// When the value was measured; `None` means "now" (the broker stamps arrival time).
    pub ts: Option<Timestamp>,
    /// The value, as JSON text.
    pub data: Cow<'a, str>,
    /// Where the thing is documented; empty strings are `None`.
    pub documentation_url: Option<Cow<'a, str>>,
}

impl UpdateRef<'_> {
    /// An owned copy.
    pub fn to_owned_update(&self) -> ThingUpdate {
        ThingUpdate {
            ns: self.ns.to_namespace(),
            ts: self.ts,
            data: RawValue::from_string(self.data.clone().into_owned())
                .expect("data is validated JSON"),
            documentation_url: self.documentation_url.as_deref().map(str::to_owned),
        }
    }
}

/// A thing update with owned parts.
#[derive(Debug, Clone)]
pub struct ThingUpdate {
    /// The thing.
    pub ns: Namespace,
    /// When the value was measured; `None` means "now".
    pub ts: Option<Timestamp>,
    /// The value, as JSON.
    pub data: Box<RawValue>,
    /// Where the thing is documented.
    pub documentation_url: Option<String>,
}
