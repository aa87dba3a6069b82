//! The wire codecs: what the broker reads, what it publishes, and how clients read that.
//!
//! Decoding turns bytes from the network into an [`UpdateRef`](crate::UpdateRef) once, at the
//! edge, or into a [`Rejection`] that says why the message was dropped. Nothing here panics on
//! any input. One file per way in or out:
//!
//! - `json.rs`: a ZMQ input frame (JSON) → [`decode_json_input`];
//! - `msgpack.rs`: a UDP datagram (MessagePack) → [`decode_msgpack_input`];
//! - `encode.rs`: what the broker publishes → [`encode_update`], [`encode_expired`];
//! - `published.rs`: what clients read back → [`Published`], through `serde_json`;
//! - `fast_snapshot.rs`: snapshot chunks in the broker's own shape, read by a strict scanner
//!   several times faster, with the same result as `published.rs` (the fuzz targets check that).
//!
//! This file holds the [`Limits`], the [`Rejection`]s and [`decode_published`], which picks the
//! way a published message is read.

use std::fmt;

mod encode;
pub(crate) mod fast_snapshot;
mod json;
mod msgpack;
pub(crate) mod published;

pub use encode::{
    encode_expired, encode_update, encoded_update_ns, write_f64, write_json_str, UPDATE_PREFIX,
};
pub use json::decode_json_input;
pub use msgpack::decode_msgpack_input;
pub use published::{Published, PublishedSnapshot, PublishedUpdate};

/// Default bound on the nesting depth of a thing's `data` (arrays and objects).
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Bounds applied while decoding input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest nesting of arrays/objects accepted inside `data`.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

macro_rules! rejections {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why an input message was dropped. [`Rejection::as_str`] is the counter label.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Rejection {
            $(#[doc = $doc] $variant,)*
        }

        impl Rejection {
            /// Every reason, in a fixed order (index with `reason as usize`).
            pub const ALL: &'static [Rejection] = &[$(Rejection::$variant,)*];

            /// A short `snake_case` label, used for counters and logs.
            pub fn as_str(self) -> &'static str {
                match self { $(Rejection::$variant => $name,)* }
            }

            /// A sentence for humans.
            pub fn describe(self) -> &'static str {
                match self { $(Rejection::$variant => $doc,)* }
            }
        }
    };
}

rejections! {
    Empty => "empty", "empty message";
    Multipart => "multipart", "multipart ZMQ message (one frame expected)";
    TooLarge => "too_large", "message larger than the configured maximum";
    InvalidUtf8 => "invalid_utf8", "text is not valid UTF-8";
    InvalidJson => "invalid_json", "not valid JSON";
    InvalidMsgpack => "invalid_msgpack", "not valid MessagePack (truncated or reserved marker)";
    NotObject => "not_object", "top level is neither an object/map nor a 4-item list";
    BadListLength => "bad_list_length", "list form must have exactly 4 items [ns, ts, data, documentation_url]";
    MissingType => "missing_type", "no \"type\" key";
    UnknownType => "unknown_type", "\"type\" is not thing_update";
    SnapshotOnInput => "snapshot_on_input", "thing_snapshot sent to the broker's input";
    MissingNs => "missing_ns", "no \"ns\" key";
    BadNs => "bad_ns", "\"ns\" is not a string";
    InvalidNs => "invalid_ns", "\"ns\" breaks the namespace rules";
    MissingData => "missing_data", "no \"data\" key";
    BadTs => "bad_ts", "\"ts\" is neither a finite number nor null";
    BadDocumentationUrl => "bad_documentation_url", "\"documentation_url\" is neither a string nor null";
    TooDeep => "too_deep", "data nested deeper than the limit";
    BigInteger => "big_integer", "integer beyond 64 bits";
    NonFinite => "non_finite", "NaN or infinite float";
    BinaryValue => "binary_value", "MessagePack bin or ext value (JSON cannot carry it)";
    BadMapKey => "bad_map_key", "MessagePack map key that is neither a string nor an integer";
    ReservedNs => "reserved_ns", "namespace under thingsbus.broker, which only the broker publishes";
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl std::error::Error for Rejection {}

/// How every snapshot a broker writes starts (0.2.x Python brokers put a space after the colon).
pub(crate) const COMPACT_SNAPSHOT: &str = r#"{"type":"thing_snapshot""#;

/// How a 0.2.x Python broker's snapshot starts.
const SPACED_SNAPSHOT: &str = r#"{"type": "thing_snapshot""#;

/// Decodes one message from a broker's directory output.
///
/// # Errors
/// A [`Rejection`] when the message is not a valid update or snapshot; unknown types are
/// [`Published::Unknown`], not errors.
pub fn decode_published(bytes: &[u8]) -> Result<Published<'_>, Rejection> {
    let text = std::str::from_utf8(bytes).map_err(|_| Rejection::InvalidUtf8)?;
    decode_published_text(text)
}

/// Decodes one message from a broker's directory output that is already known to be UTF-8, as
/// [`decode_published`] does. What it yields borrows from `text` wherever the JSON needs no
/// unescaping (always, for the broker's own messages), so a client that keeps `text` can keep
/// each value as a range of it instead of a copy.
///
/// # Errors
/// A [`Rejection`] when the message is not a valid update or snapshot; unknown types are
/// [`Published::Unknown`], not errors.
pub fn decode_published_text(text: &str) -> Result<Published<'_>, Rejection> {
    if text.is_empty() {
        return Err(Rejection::Empty);
    }
    // Brokers write "type" first: a snapshot then decodes in one pass over its entries, on the
    // fast path when it is in the broker's own shape.
    let compact = text.starts_with(COMPACT_SNAPSHOT);
    if compact {
        if let Some(s) = fast_snapshot::decode_snapshot(text) {
            return Ok(Published::Snapshot(s));
        }
    }
    if compact || text.starts_with(SPACED_SNAPSHOT) {
        return published::decode_snapshot(text);
    }
    published::decode_any(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debug(bytes: &[u8]) -> String {
        format!("{:?}", decode_published(bytes))
    }

    #[test]
    fn empty_and_non_utf8_messages_are_refused() {
        assert_eq!(decode_published(b"").unwrap_err(), Rejection::Empty);
        assert_eq!(
            decode_published(b"{\"type\":\"thing_update\",\"ns\":\"\xff\"}").unwrap_err(),
            Rejection::InvalidUtf8
        );
    }

    #[test]
    fn values_borrow_from_the_text() {
        fn within(text: &str, part: &str) -> bool {
            let (t, p) = (text.as_ptr() as usize, part.as_ptr() as usize);
            p >= t && p + part.len() <= t + text.len()
        }
        let text = r#"{"type":"thing_update","ns":"a.b","data":{"x":[1,2]},"ts":1.5,"documentation_url":"u"}"#;
        match decode_published_text(text) {
            Ok(Published::Update(u)) => {
                assert_eq!(u.data, r#"{"x":[1,2]}"#);
                assert!(within(text, u.data) && within(text, u.ns.as_str()));
                assert!(within(
                    text,
                    u.documentation_url.as_deref().unwrap_or_default()
                ));
            }
            other => panic!("{other:?}"),
        }
        let text = r#"{"type":"thing_snapshot","seq":3,"data":{"a":{"ns":"a","data":"v","ts":8.5,"documentation_url":null,"seq":3}},"last":true}"#;
        match decode_published_text(text) {
            Ok(Published::Snapshot(s)) => {
                let e = &s.entries[0];
                assert_eq!((e.ns.as_str(), e.data), ("a", "\"v\""));
                assert!(within(text, e.data) && within(text, e.ns.as_str()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decode_published_text("").unwrap_err(), Rejection::Empty);
    }

    #[test]
    fn a_snapshot_reads_alike_wherever_its_type_stands() {
        let entries = r#"{"a":{"ns":"a","data":1,"ts":8.5,"documentation_url":null,"seq":3}}"#;
        let first = format!(r#"{{"type":"thing_snapshot","seq":3,"data":{entries},"last":true}}"#);
        let spaced =
            format!(r#"{{"type": "thing_snapshot","seq":3,"data":{entries},"last":true}}"#);
        let last = format!(r#"{{"seq":3,"data":{entries},"last":true,"type":"thing_snapshot"}}"#);
        assert!(fast_snapshot::decode_snapshot(&first).is_some());
        let want = debug(first.as_bytes());
        assert!(want.contains("Snapshot"), "{want}");
        assert_eq!(debug(spaced.as_bytes()), want);
        assert_eq!(debug(last.as_bytes()), want);
    }

    #[test]
    fn an_odd_compact_snapshot_goes_to_the_reference() {
        // An escape in a header key: the fast path declines, serde_json reads it.
        let text = r#"{"type":"thing_snapshot","s\u0065q":4,"data":{}}"#;
        assert!(fast_snapshot::decode_snapshot(text).is_none());
        match decode_published(text.as_bytes()) {
            Ok(Published::Snapshot(s)) => assert_eq!(s.seq, Some(4)),
            other => panic!("{other:?}"),
        }
        // A repeated header key: serde_json refuses it, so the fast path declines too.
        let text = r#"{"type":"thing_snapshot","seq":4,"seq":5,"data":{}}"#;
        assert!(fast_snapshot::decode_snapshot(text).is_none());
        assert_eq!(
            decode_published(text.as_bytes()).unwrap_err(),
            Rejection::InvalidJson
        );
        // No `data` at all: refused, whichever path looked at it.
        let text = br#"{"type":"thing_snapshot","seq":1}"#;
        assert_eq!(decode_published(text).unwrap_err(), Rejection::MissingData);
        let text = br#"{"seq":1,"type":"thing_snapshot"}"#;
        assert_eq!(decode_published(text).unwrap_err(), Rejection::MissingData);
    }
}
