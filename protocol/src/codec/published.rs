//! What clients receive: the messages a broker publishes ([`Published`]), read with `serde_json`.
//!
//! A snapshot's entries are each judged on their own, so one bad entry costs only itself. This is
//! also the reference for snapshot chunks: `fast_snapshot.rs` reads the broker's own chunks
//! faster, and must read them exactly as [`decode_snapshot`] does.

use std::borrow::Cow;
use std::fmt;

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::json::{json_error, json_str, ns_field, present, ts_field, url_field};
use super::Rejection;
use crate::message::{NamespaceRef, Timestamp};

/// One thing's value as published by a broker: a live `thing_update` or a snapshot entry.
#[derive(Debug, Clone)]
pub struct PublishedUpdate<'a> {
    /// The thing.
    pub ns: NamespaceRef<'a>,
    /// The value as JSON text (checked to be valid JSON).
    pub data: &'a str,
    /// The update's timestamp; `None` when the broker sent none (clients use "now").
    pub ts: Option<Timestamp>,
    /// The documentation URL, if any.
    pub documentation_url: Option<Cow<'a, str>>,
    /// The broker's sequence number (absent from 0.2.x brokers).
    pub seq: Option<u64>,
}

/// One `thing_snapshot` message (a whole 0.2.x snapshot, or one chunk of ours).
#[derive(Debug, Clone)]
pub struct PublishedSnapshot<'a> {
    /// When it was taken.
    pub ts: Option<Timestamp>,
    /// The sequence number it is consistent with (absent from 0.2.x brokers).
    pub seq: Option<u64>,
    /// The snapshot's number within a broker run.
    pub id: Option<u64>,
    /// The broker run (absent from 0.2.x brokers).
    pub epoch: Option<u64>,
    /// On a reply to a snapshot request: the request's `id`, as JSON text.
    pub request: Option<&'a RawValue>,
    /// On a reply to a snapshot request: how many things the whole reply holds.
    pub total: Option<u64>,
    /// This chunk's index.
    pub chunk: Option<u64>,
    /// False on all chunks but the last; absent (0.2.x) means a complete snapshot.
    pub last: Option<bool>,
    /// On a reply to a request that asked for stale things: this chunk holds things that left
    /// the live window (the broker still remembers them).
    pub stale: bool,
    /// The valid entries; invalid ones are skipped, as 0.2.x clients do.
    pub entries: Vec<PublishedUpdate<'a>>,
    /// How many entries were skipped as invalid.
    pub skipped: usize,
}

impl PublishedSnapshot<'_> {
    /// True when this message completes a snapshot (the last chunk, or a 0.2.x snapshot).
    pub fn is_complete(&self) -> bool {
        self.last.unwrap_or(true)
    }
}

/// A message from a broker's directory output.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Published<'a> {
    /// A live update.
    Update(PublishedUpdate<'a>),
    /// A snapshot or one of its chunks.
    Snapshot(PublishedSnapshot<'a>),
    /// A thing left the live window.
    Expired {
        /// The thing.
        ns: NamespaceRef<'a>,
        /// Its last timestamp.
        ts: Option<Timestamp>,
    },
    /// A snapshot request was refused.
    SnapshotError {
        /// The request's `id`, as JSON text.
        request: Option<&'a RawValue>,
        /// `bad_request` or `busy`.
        error: String,
    },
    /// A message type this version does not know; ignore it.
    Unknown,
}

/// The keys of any published message but a snapshot (see [`decode_any`]).
#[derive(Deserialize)]
struct PublishedFields<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    ty: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    ns: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    ts: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    documentation_url: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    seq: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    request: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

fn opt_u64(raw: Option<&RawValue>) -> Option<u64> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

fn published_update<'a>(f: &PublishedFields<'a>) -> Result<PublishedUpdate<'a>, Rejection> {
    let ns = ns_field(f.ns)?;
    let data = f.data.ok_or(Rejection::MissingData)?.get();
    let ts = ts_field(f.ts)?;
    let documentation_url = url_field(f.documentation_url)?;
    Ok(PublishedUpdate {
        ns,
        data,
        ts,
        documentation_url,
        seq: opt_u64(f.seq),
    })
}

/// One field of a snapshot entry, read in a single pass whatever its JSON type: the typed
/// value when the type fits, `Wrong` otherwise (never an error, so one odd entry costs only
/// itself), `Null` for null.
enum Lenient<T> {
    Null,
    Value(T),
    Wrong,
}

struct LenientStr<'a>(Lenient<Cow<'a, str>>);
struct LenientF64(Lenient<f64>);
struct LenientU64(Lenient<u64>);

macro_rules! lenient_rest {
    () => {
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Self::Value::wrong())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Self::Value::wrong())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Self::Value::wrong())
        }
    };
}

trait Wrong {
    fn wrong() -> Self;
}

impl Default for LenientStr<'_> {
    fn default() -> Self {
        LenientStr(Lenient::Null)
    }
}
impl Wrong for LenientStr<'_> {
    fn wrong() -> Self {
        LenientStr(Lenient::Wrong)
    }
}
impl Default for LenientF64 {
    fn default() -> Self {
        LenientF64(Lenient::Null)
    }
}
impl Wrong for LenientF64 {
    fn wrong() -> Self {
        LenientF64(Lenient::Wrong)
    }
}
impl Default for LenientU64 {
    fn default() -> Self {
        LenientU64(Lenient::Null)
    }
}
impl Wrong for LenientU64 {
    fn wrong() -> Self {
        LenientU64(Lenient::Wrong)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LenientStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = LenientStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(LenientStr(Lenient::Value(Cow::Borrowed(v))))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientStr(Lenient::Value(Cow::Owned(v.to_owned()))))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientStr(Lenient::Wrong))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientStr(Lenient::Wrong))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientStr(Lenient::Wrong))
            }
            lenient_rest!();
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for LenientF64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientF64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(LenientF64(Lenient::Value(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LenientF64(Lenient::Value(v as f64)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LenientF64(Lenient::Value(v as f64)))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LenientF64(Lenient::Wrong))
            }
            lenient_rest!();
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for LenientU64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientU64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LenientU64(Lenient::Value(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientU64(Lenient::Wrong))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientU64(Lenient::Wrong))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LenientU64(Lenient::Wrong))
            }
            lenient_rest!();
        }
        d.deserialize_any(V)
    }
}

/// A snapshot entry's fields, typed, read in one pass.
#[derive(Deserialize)]
pub(super) struct EntryFields<'a> {
    #[serde(default, borrow = "'a")]
    ns: Option<LenientStr<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    ts: Option<LenientF64>,
    #[serde(default, borrow = "'a")]
    documentation_url: Option<LenientStr<'a>>,
    #[serde(default)]
    seq: Option<LenientU64>,
}

pub(super) fn entry_update(f: EntryFields<'_>) -> Result<PublishedUpdate<'_>, Rejection> {
    let ns = match f.ns.map(|l| l.0) {
        None => return Err(Rejection::MissingNs),
        Some(Lenient::Value(ns)) => ns,
        Some(_) => return Err(Rejection::BadNs),
    };
    let ns = NamespaceRef::new(ns).map_err(|_| Rejection::InvalidNs)?;
    let data = f.data.ok_or(Rejection::MissingData)?.get();
    let ts = match f.ts.map(|l| l.0) {
        None | Some(Lenient::Null) => None,
        Some(Lenient::Value(v)) => Some(Timestamp::from_secs(v).ok_or(Rejection::BadTs)?),
        Some(Lenient::Wrong) => return Err(Rejection::BadTs),
    };
    let documentation_url = match f.documentation_url.map(|l| l.0) {
        None | Some(Lenient::Null) => None,
        Some(Lenient::Value(u)) => Some(u).filter(|u| !u.is_empty()),
        Some(Lenient::Wrong) => return Err(Rejection::BadDocumentationUrl),
    };
    let seq = match f.seq.map(|l| l.0) {
        Some(Lenient::Value(s)) => Some(s),
        _ => None,
    };
    Ok(PublishedUpdate {
        ns,
        data,
        ts,
        documentation_url,
        seq,
    })
}

/// The entries of a snapshot's `data` object, each decoded in one pass and judged on its own,
/// so one bad entry costs only itself.
pub(super) struct SnapshotEntries<'a>(pub(super) Vec<Result<PublishedUpdate<'a>, Rejection>>);

impl<'de: 'a, 'a> Deserialize<'de> for SnapshotEntries<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = SnapshotEntries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of snapshot entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(_key) = map.next_key::<IgnoredAny>()? {
                    let fields: EntryFields<'de> = map.next_value()?;
                    out.push(entry_update(fields));
                }
                Ok(SnapshotEntries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The keys of a `thing_snapshot`, its `data` decoded straight into entries: what the reference
/// path reads with `serde_json` in one pass, and what the fast path fills in itself.
#[derive(Deserialize, Default)]
pub(super) struct SnapshotFields<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    pub(super) ts: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub(super) seq: Option<&'a RawValue>,
    #[serde(rename = "snapshot", default, borrow, deserialize_with = "present")]
    pub(super) id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub(super) chunk: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub(super) last: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub(super) epoch: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub(super) request: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub(super) total: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub(super) stale: Option<&'a RawValue>,
    #[serde(default, borrow = "'a")]
    pub(super) data: Option<SnapshotEntries<'a>>,
}

impl<'a> SnapshotFields<'a> {
    /// The snapshot these keys make: header values of the wrong type read as absent, and
    /// invalid entries are counted and left out.
    ///
    /// # Errors
    /// [`Rejection::MissingData`] without `data`.
    pub(super) fn into_snapshot(self) -> Result<PublishedSnapshot<'a>, Rejection> {
        let SnapshotEntries(all) = self.data.ok_or(Rejection::MissingData)?;
        let total = all.len();
        let entries: Vec<_> = all.into_iter().filter_map(Result::ok).collect();
        Ok(PublishedSnapshot {
            ts: ts_field(self.ts).unwrap_or(None),
            seq: opt_u64(self.seq),
            id: opt_u64(self.id),
            epoch: opt_u64(self.epoch),
            request: self.request,
            total: opt_u64(self.total),
            chunk: opt_u64(self.chunk),
            last: opt_bool(self.last),
            stale: opt_bool(self.stale).unwrap_or(false),
            skipped: total - entries.len(),
            entries,
        })
    }
}

fn opt_bool(raw: Option<&RawValue>) -> Option<bool> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

/// A `thing_snapshot`, decoded by `serde_json` alone: the reference that the fast path
/// (`fast_snapshot.rs`) must agree with, and the way for any snapshot not in the broker's
/// own shape.
///
/// # Errors
/// As [`decode_published`](super::decode_published).
pub(crate) fn decode_snapshot(text: &str) -> Result<Published<'_>, Rejection> {
    let f: SnapshotFields<'_> = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    f.into_snapshot().map(Published::Snapshot)
}

/// Any published message, whatever its type and wherever its `"type"` key stands.
///
/// # Errors
/// As [`decode_published`](super::decode_published).
pub(super) fn decode_any(text: &str) -> Result<Published<'_>, Rejection> {
    let f: PublishedFields<'_> = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    let ty = json_str(f.ty.ok_or(Rejection::MissingType)?).ok_or(Rejection::UnknownType)?;
    match ty.as_ref() {
        "thing_update" => published_update(&f).map(Published::Update),
        // "type" was not the first key, which no broker writes: read it again as a snapshot.
        "thing_snapshot" => decode_snapshot(text),
        "snapshot_error" => Ok(Published::SnapshotError {
            request: f.request,
            error: f
                .error
                .and_then(json_str)
                .map_or_else(String::new, Cow::into_owned),
        }),
        "thing_expired" => Ok(Published::Expired {
            ns: ns_field(f.ns)?,
            ts: ts_field(f.ts)?,
        }),
        _ => Ok(Published::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_published, encode_update};

    #[test]
    fn published_messages_decode() {
        let mut out = Vec::new();
        encode_update(
            &mut out,
            "a.b",
            "[1]",
            Timestamp::from_secs(5.5).unwrap(),
            Some("u"),
            7,
        );
        match decode_published(&out).unwrap() {
            Published::Update(u) => {
                assert_eq!(u.ns.as_str(), "a.b");
                assert_eq!(u.data, "[1]");
                assert_eq!(u.seq, Some(7));
                assert_eq!(u.documentation_url.as_deref(), Some("u"));
            }
            other => panic!("{other:?}"),
        }
        // A 0.2.x snapshot: no seq, no chunking, one bad entry among good ones.
        let snap = br#"{"type":"thing_snapshot","ts":9.0,"data":{
            "a":{"ns":"a","data":1,"ts":8.0,"documentation_url":null},
            "B":{"ns":"B","data":2,"ts":8.0},
            "c":{"ns":"c","data":{"x":[1,2]},"ts":null}}}"#;
        match decode_published(snap).unwrap() {
            Published::Snapshot(s) => {
                assert!(s.is_complete());
                assert_eq!(s.seq, None);
                assert_eq!(s.entries.len(), 2);
                assert_eq!(s.skipped, 1);
                assert_eq!(s.entries[1].data, r#"{"x":[1,2]}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_published(br#"{"type":"hello","x":1}"#).unwrap(),
            Published::Unknown
        ));
        assert!(matches!(
            decode_published(br#"{"type":"thing_expired","ns":"a.b","ts":3.0}"#).unwrap(),
            Published::Expired { .. }
        ));
        assert!(decode_published(b"{").is_err());
        assert!(decode_published(br#"{"type":"thing_update","ns":"a"}"#).is_err());
    }
}
