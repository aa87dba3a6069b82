//! Input decoding (JSON over ZMQ, MessagePack over UDP) and output encoding.
//!
//! Decoding turns bytes from the network into an [`UpdateRef`] once, at the edge, or into a
//! [`Rejection`] that says why the message was dropped. Nothing here panics on any input.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use rmp::Marker;
use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::message::{NamespaceRef, Timestamp, UpdateRef};
use crate::scan::{self, Scan};

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

// ---------------------------------------------------------------------------------------------
// JSON input

#[derive(Deserialize)]
struct ObjectFields<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    ty: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    ns: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    ts: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    documentation_url: Option<&'a RawValue>,
}

/// Keeps `null` as a present value (serde's `Option` would turn it into "absent").
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Up to four raw items of a top-level JSON list; `len` counts all of them.
struct ListItems<'a> {
    items: [Option<&'a RawValue>; 4],
    len: usize,
}

impl<'de> Deserialize<'de> for ListItems<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ListItems<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = ListItems {
                    items: [None; 4],
                    len: 0,
                };
                while out.len < 4 {
                    match seq.next_element::<&'de RawValue>()? {
                        Some(item) => out.items[out.len] = Some(item),
                        None => return Ok(out),
                    }
                    out.len += 1;
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    out.len += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

fn json_error(e: &serde_json::Error) -> Rejection {
    if e.to_string().starts_with("recursion limit exceeded") {
        Rejection::TooDeep
    } else {
        Rejection::InvalidJson
    }
}

/// A JSON string value, borrowed when it has no escapes.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(raw.get())
            .ok()
            .map(Cow::Owned),
    }
}

/// Decodes one ZMQ input frame: a JSON object `thing_update`, or the 4-list
/// `[ns, ts, data, documentation_url]`.
///
/// # Errors
/// The [`Rejection`] that says why the message must be dropped.
pub fn decode_json_input<'a>(bytes: &'a [u8], limits: &Limits) -> Result<UpdateRef<'a>, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Rejection::InvalidUtf8)?;
    match text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .as_bytes()
        .first()
    {
        Some(b'{') => {
            let f: ObjectFields<'a> = serde_json::from_str(text).map_err(|e| json_error(&e))?;
            let ty = f.ty.ok_or(Rejection::MissingType)?;
            match json_str(ty).as_deref() {
                Some("thing_update") => {}
                Some("thing_snapshot") => return Err(Rejection::SnapshotOnInput),
                _ => return Err(Rejection::UnknownType),
            }
            interpret_json(f.ns, f.ts, f.data, f.documentation_url, limits)
        }
        Some(b'[') => {
            let list: ListItems<'a> = serde_json::from_str(text).map_err(|e| json_error(&e))?;
            if list.len != 4 {
                return Err(Rejection::BadListLength);
            }
            let [ns, ts, data, url] = list.items;
            interpret_json(ns, ts, data, url, limits)
        }
        _ => Err(match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => Rejection::NotObject,
            Err(e) => json_error(&e),
        }),
    }
}

fn interpret_json<'a>(
    ns: Option<&'a RawValue>,
    ts: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    url: Option<&'a RawValue>,
    limits: &Limits,
) -> Result<UpdateRef<'a>, Rejection> {
    let ns = json_str(ns.ok_or(Rejection::MissingNs)?).ok_or(Rejection::BadNs)?;
    let ns = NamespaceRef::new(ns).map_err(|_| Rejection::InvalidNs)?;
    let data = data.ok_or(Rejection::MissingData)?.get();
    check_json_value(data, limits.max_depth)?;
    let ts = match ts.map(RawValue::get) {
        None | Some("null") => None,
        Some(raw) => Some(
            serde_json::from_str::<f64>(raw)
                .ok()
                .and_then(Timestamp::from_secs)
                .ok_or(Rejection::BadTs)?,
        ),
    };
    let documentation_url = match url {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(json_str(raw).ok_or(Rejection::BadDocumentationUrl)?),
    }
    .filter(|u| !u.is_empty());
    Ok(UpdateRef {
        ns,
        ts,
        data: Cow::Borrowed(data),
        documentation_url,
    })
}

/// Checks already-parsed JSON text for nesting deeper than `max_depth`, for integers that do
/// not fit in 64 bits (JSON allows them; most decoders silently round them to floats), and for
/// numbers beyond the range of a double (`1e999`: JSON allows it, decoders fail or read infinity).
fn check_json_value(text: &str, max_depth: usize) -> Result<(), Rejection> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(Rejection::TooDeep);
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut integral = true;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    integral &= !matches!(b[i], b'.' | b'e' | b'E');
                    i += 1;
                }
                if integral {
                    let t = &text[start..i];
                    let fits = if t.starts_with('-') {
                        t.parse::<i64>().is_ok()
                    } else {
                        t.parse::<u64>().is_ok()
                    };
                    if !fits {
                        return Err(Rejection::BigInteger);
                    }
                } else if !text[start..i].parse::<f64>().is_ok_and(f64::is_finite) {
                    return Err(Rejection::NonFinite);
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// MessagePack input

enum Head<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Array(u32),
    Map(u32),
}

struct MpReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> MpReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Rejection> {
        let end = self.pos.checked_add(n).ok_or(Rejection::InvalidMsgpack)?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(Rejection::InvalidMsgpack)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Rejection> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Rejection> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, Rejection> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, Rejection> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn str(&mut self, len: usize) -> Result<Head<'a>, Rejection> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(Head::Str)
            .map_err(|_| Rejection::InvalidUtf8)
    }

    fn head(&mut self) -> Result<Head<'a>, Rejection> {
        Ok(match Marker::from_u8(self.u8()?) {
            Marker::Null => Head::Nil,
            Marker::True => Head::Bool(true),
            Marker::False => Head::Bool(false),
            Marker::FixPos(v) => Head::Uint(v.into()),
            Marker::FixNeg(v) => Head::Int(v.into()),
            Marker::U8 => Head::Uint(self.u8()?.into()),
            Marker::U16 => Head::Uint(self.u16()?.into()),
            Marker::U32 => Head::Uint(self.u32()?.into()),
            Marker::U64 => Head::Uint(u64::from_be_bytes(self.array()?)),
            Marker::I8 => Head::Int(i8::from_be_bytes(self.array()?).into()),
            Marker::I16 => Head::Int(i16::from_be_bytes(self.array()?).into()),
            Marker::I32 => Head::Int(i32::from_be_bytes(self.array()?).into()),
            Marker::I64 => Head::Int(i64::from_be_bytes(self.array()?)),
            Marker::F32 => Head::Float(f32::from_be_bytes(self.array()?).into()),
            Marker::F64 => Head::Float(f64::from_be_bytes(self.array()?)),
            Marker::FixStr(n) => self.str(n.into())?,
            Marker::Str8 => {
                let n = self.u8()?;
                self.str(n.into())?
            }
            Marker::Str16 => {
                let n = self.u16()?;
                self.str(n.into())?
            }
            Marker::Str32 => {
                let n = self.u32()?;
                self.str(n as usize)?
            }
            Marker::FixArray(n) => Head::Array(n.into()),
            Marker::Array16 => Head::Array(self.u16()?.into()),
            Marker::Array32 => Head::Array(self.u32()?),
            Marker::FixMap(n) => Head::Map(n.into()),
            Marker::Map16 => Head::Map(self.u16()?.into()),
            Marker::Map32 => Head::Map(self.u32()?),
            Marker::Bin8
            | Marker::Bin16
            | Marker::Bin32
            | Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => return Err(Rejection::BinaryValue),
            Marker::Reserved => return Err(Rejection::InvalidMsgpack),
        })
    }

    /// Reads one value and writes it to `out` as JSON. `depth` counts enclosing containers.
    fn transcode(
        &mut self,
        out: &mut Vec<u8>,
        depth: usize,
        max_depth: usize,
    ) -> Result<(), Rejection> {
        match self.head()? {
            Head::Nil => out.extend_from_slice(b"null"),
            Head::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Head::Uint(v) => write_display(out, v),
            Head::Int(v) => write_display(out, v),
            Head::Float(v) => {
                if !v.is_finite() {
                    return Err(Rejection::NonFinite);
                }
                write_f64(out, v);
            }
            Head::Str(s) => write_json_str(out, s),
            Head::Array(n) => {
                if depth >= max_depth {
                    return Err(Rejection::TooDeep);
                }
                out.push(b'[');
                for i in 0..n {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.transcode(out, depth + 1, max_depth)?;
                }
                out.push(b']');
            }
            Head::Map(n) => {
                if depth >= max_depth {
                    return Err(Rejection::TooDeep);
                }
                out.push(b'{');
                for i in 0..n {
                    if i > 0 {
                        out.push(b',');
                    }
                    match self.head()? {
                        Head::Str(k) => write_json_str(out, k),
                        // JSON keys are strings; Python's json.dumps writes integer keys as decimals.
                        Head::Uint(k) => write_quoted_display(out, k),
                        Head::Int(k) => write_quoted_display(out, k),
                        _ => return Err(Rejection::BadMapKey),
                    }
                    out.push(b':');
                    self.transcode(out, depth + 1, max_depth)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }

    fn ns(&mut self) -> Result<NamespaceRef<'a>, Rejection> {
        match self.head()? {
            Head::Str(s) => NamespaceRef::new(Cow::Borrowed(s)).map_err(|_| Rejection::InvalidNs),
            _ => Err(Rejection::BadNs),
        }
    }

    fn ts(&mut self) -> Result<Option<Timestamp>, Rejection> {
        let secs = match self.head()? {
            Head::Nil => return Ok(None),
            Head::Uint(v) => v as f64,
            Head::Int(v) => v as f64,
            Head::Float(v) => v,
            _ => return Err(Rejection::BadTs),
        };
        Timestamp::from_secs(secs).map(Some).ok_or(Rejection::BadTs)
    }

    fn url(&mut self) -> Result<Option<Cow<'a, str>>, Rejection> {
        match self.head()? {
            Head::Nil => Ok(None),
            Head::Str(s) => Ok(Some(Cow::Borrowed(s)).filter(|u| !u.is_empty())),
            _ => Err(Rejection::BadDocumentationUrl),
        }
    }

    fn data(&mut self, max_depth: usize) -> Result<Cow<'a, str>, Rejection> {
        let mut out = Vec::new();
        self.transcode(&mut out, 0, max_depth)?;
        Ok(Cow::Owned(
            String::from_utf8(out).map_err(|_| Rejection::InvalidUtf8)?,
        ))
    }
}

/// Decodes one UDP datagram: a MessagePack map shaped like the JSON `thing_update`, or the compact
/// 4-list `[ns, ts, data, documentation_url]` that small boards send. `data` is transcoded to JSON.
/// Bytes after the first value are ignored, as 0.2.x did.
///
/// # Errors
/// The [`Rejection`] that says why the datagram must be dropped.
pub fn decode_msgpack_input<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<UpdateRef<'a>, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::Empty);
    }
    let mut r = MpReader { buf: bytes, pos: 0 };
    match r.head()? {
        Head::Array(4) => {
            let ns = r.ns()?;
            let ts = r.ts()?;
            let data = r.data(limits.max_depth)?;
            let documentation_url = r.url()?;
            Ok(UpdateRef {
                ns,
                ts,
                data,
                documentation_url,
            })
        }
        Head::Array(_) => Err(Rejection::BadListLength),
        Head::Map(n) => {
            let mut ty = None;
            let mut ns = None;
            let mut ts = None;
            let mut data = None;
            let mut documentation_url = None;
            let mut skipped = Vec::new();
            for _ in 0..n {
                let key = match r.head()? {
                    Head::Str(k) => k,
                    Head::Uint(_) | Head::Int(_) => "",
                    _ => return Err(Rejection::BadMapKey),
                };
                match key {
                    "type" => {
                        ty = Some(match r.head()? {
                            Head::Str(s) => s,
                            _ => "",
                        })
                    }
                    "ns" => ns = Some(r.ns()?),
                    "ts" => ts = r.ts()?,
                    "data" => data = Some(r.data(limits.max_depth)?),
                    "documentation_url" => documentation_url = r.url()?,
                    _ => {
                        skipped.clear();
                        r.transcode(&mut skipped, 0, limits.max_depth)?;
                    }
                }
            }
            match ty {
                None => return Err(Rejection::MissingType),
                Some("thing_update") => {}
                Some("thing_snapshot") => return Err(Rejection::SnapshotOnInput),
                Some(_) => return Err(Rejection::UnknownType),
            }
            Ok(UpdateRef {
                ns: ns.ok_or(Rejection::MissingNs)?,
                ts,
                data: data.ok_or(Rejection::MissingData)?,
                documentation_url,
            })
        }
        _ => Err(Rejection::NotObject),
    }
}

// ---------------------------------------------------------------------------------------------
// What clients receive

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
    snapshot: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    chunk: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    last: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    epoch: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    request: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    total: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    stale: Option<&'a RawValue>,
}

fn opt_u64(raw: Option<&RawValue>) -> Option<u64> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

fn opt_ts(raw: Option<&RawValue>) -> Result<Option<Timestamp>, Rejection> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(r) => serde_json::from_str::<f64>(r)
            .ok()
            .and_then(Timestamp::from_secs)
            .map(Some)
            .ok_or(Rejection::BadTs),
    }
}

fn published_update<'a>(f: &PublishedFields<'a>) -> Result<PublishedUpdate<'a>, Rejection> {
    let ns = json_str(f.ns.ok_or(Rejection::MissingNs)?).ok_or(Rejection::BadNs)?;
    let ns = NamespaceRef::new(ns).map_err(|_| Rejection::InvalidNs)?;
    let data = f.data.ok_or(Rejection::MissingData)?.get();
    let ts = opt_ts(f.ts)?;
    let documentation_url = match f.documentation_url {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(json_str(raw).ok_or(Rejection::BadDocumentationUrl)?),
    }
    .filter(|u| !u.is_empty());
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
struct EntryFields<'a> {
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

fn entry_update(f: EntryFields<'_>) -> Result<PublishedUpdate<'_>, Rejection> {
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
struct SnapshotEntries<'a>(Vec<Result<PublishedUpdate<'a>, Rejection>>);

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

/// A `thing_snapshot` whose `data` is decoded straight into entries.
#[derive(Deserialize)]
struct SnapshotFields<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    ts: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    seq: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    snapshot: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    chunk: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    last: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    epoch: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    request: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    total: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    stale: Option<&'a RawValue>,
    #[serde(default, borrow = "'a")]
    data: Option<SnapshotEntries<'a>>,
}

/// The [`SnapshotHead`] of either decoding path's fields (`SnapshotFields` or
/// `PublishedFields`, which name the header keys alike).
macro_rules! snapshot_head {
    ($f:expr) => {
        SnapshotHead {
            ts: $f.ts,
            seq: $f.seq,
            id: $f.snapshot,
            epoch: $f.epoch,
            request: $f.request,
            chunk: $f.chunk,
            last: $f.last,
            total: $f.total,
            stale: $f.stale,
        }
    };
}

/// The header keys of a `thing_snapshot`, as found by either decoding path.
#[derive(Default)]
struct SnapshotHead<'a> {
    ts: Option<&'a RawValue>,
    seq: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    epoch: Option<&'a RawValue>,
    request: Option<&'a RawValue>,
    chunk: Option<&'a RawValue>,
    last: Option<&'a RawValue>,
    total: Option<&'a RawValue>,
    stale: Option<&'a RawValue>,
}

fn opt_bool(raw: Option<&RawValue>) -> Option<bool> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

fn snapshot_from<'a>(
    all: Vec<Result<PublishedUpdate<'a>, Rejection>>,
    h: SnapshotHead<'a>,
) -> PublishedSnapshot<'a> {
    let total = all.len();
    let entries: Vec<_> = all.into_iter().filter_map(Result::ok).collect();
    PublishedSnapshot {
        ts: opt_ts(h.ts).unwrap_or(None),
        seq: opt_u64(h.seq),
        id: opt_u64(h.id),
        epoch: opt_u64(h.epoch),
        request: h.request,
        total: opt_u64(h.total),
        chunk: opt_u64(h.chunk),
        last: opt_bool(h.last),
        stale: opt_bool(h.stale).unwrap_or(false),
        skipped: total - entries.len(),
        entries,
    }
}

/// A `thing_snapshot`, decoded by `serde_json` alone: the reference for the fast path (for
/// tests and the `decode_chunk` example; clients use [`decode_published`]).
///
/// # Errors
/// As [`decode_published`].
#[doc(hidden)]
pub fn decode_snapshot_serde(text: &str) -> Result<Published<'_>, Rejection> {
    let f: SnapshotFields<'_> = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    let SnapshotEntries(all) = f.data.ok_or(Rejection::MissingData)?;
    Ok(Published::Snapshot(snapshot_from(all, snapshot_head!(f))))
}

/// A `thing_snapshot` decoded as [`decode_snapshot_serde`] would, several times faster, for
/// chunks as brokers write them: entries in the exact shape of [`encode_update`] are read by a
/// strict scanner (no escapes in `ns` or the URL, `ts` a plain decimal), any other entry by
/// `serde_json` alone. `None` when anything is out of the ordinary — the message then goes
/// through [`decode_snapshot_serde`], which finds the error or reads it the slow way. So the
/// result is the reference's whenever this returns one (`tests`, and the `published` fuzz
/// target, check that).
fn decode_snapshot_fast(text: &str) -> Option<PublishedSnapshot<'_>> {
    let mut s = Scan::new(text);
    s.eat(b'{')?;
    let mut head = SnapshotHead::default();
    let mut all = None;
    let mut seen = 0u16;
    if !s.eat_if(b'}') {
        loop {
            let key = s.plain_string()?;
            s.eat(b':')?;
            let (bit, slot) = match key {
                "ts" => (0, Some(&mut head.ts)),
                "seq" => (1, Some(&mut head.seq)),
                "snapshot" => (2, Some(&mut head.id)),
                "chunk" => (3, Some(&mut head.chunk)),
                "last" => (4, Some(&mut head.last)),
                "epoch" => (5, Some(&mut head.epoch)),
                "request" => (6, Some(&mut head.request)),
                "total" => (7, Some(&mut head.total)),
                "stale" => (8, Some(&mut head.stale)),
                "data" => (9, None),
                _ => (15, None),
            };
            if bit < 15 {
                // serde refuses a repeated field.
                if seen & (1 << bit) != 0 {
                    return None;
                }
                seen |= 1 << bit;
            }
            if bit == 9 {
                all = Some(fast_entries(&mut s)?);
            } else {
                let raw = s.value(scan::MAX_DEPTH)?;
                if let Some(slot) = slot {
                    *slot = Some(serde_json::from_str::<&RawValue>(raw).ok()?);
                }
            }
            if s.eat_if(b',') {
                continue;
            }
            s.eat(b'}')?;
            break;
        }
    }
    if !s.at_end() {
        return None;
    }
    Some(snapshot_from(all?, head))
}

/// The `data` object of a snapshot chunk (see [`decode_snapshot_fast`]).
fn fast_entries<'a>(s: &mut Scan<'a>) -> Option<Vec<Result<PublishedUpdate<'a>, Rejection>>> {
    s.eat(b'{')?;
    // Entries are rarely shorter than this: one allocation for the whole chunk.
    let mut out = Vec::with_capacity(s.remaining() / 96);
    if s.eat_if(b'}') {
        return Some(out);
    }
    loop {
        s.string()?;
        s.eat(b':')?;
        s.skip_ws();
        let start = s.pos();
        match fast_entry(s) {
            Some(entry) => out.push(entry),
            None => {
                s.set_pos(start);
                let raw = s.value(scan::MAX_DEPTH)?;
                let fields: EntryFields<'a> = serde_json::from_str(raw).ok()?;
                out.push(entry_update(fields));
            }
        }
        if s.eat_if(b',') {
            continue;
        }
        s.eat(b'}')?;
        return Some(out);
    }
}

/// One entry exactly as [`encode_update`] writes it (after its `"type"`):
/// `{"ns":…,"data":…,"ts":…,"documentation_url":…,"seq":…}`; `None` for any other shape.
fn fast_entry<'a>(s: &mut Scan<'a>) -> Option<Result<PublishedUpdate<'a>, Rejection>> {
    s.lit(r#"{"ns":"#)?;
    let ns = s.plain_string()?;
    s.lit(r#","data":"#)?;
    let data = s.value(scan::MAX_DEPTH)?;
    s.lit(r#","ts":"#)?;
    let ts = if s.lit("null").is_some() {
        None
    } else {
        // The plain decimal that `write_f64` writes for any ordinary timestamp, read exactly as
        // serde_json's `float_roundtrip` reads it (both round correctly).
        Some(s.decimal()?)
    };
    s.lit(r#","documentation_url":"#)?;
    let documentation_url = if s.lit("null").is_some() {
        None
    } else {
        Some(s.plain_string()?)
    };
    s.lit(r#","seq":"#)?;
    let seq = s.unsigned()?;
    s.lit("}")?;
    Some(fast_entry_update(ns, data, ts, documentation_url, seq))
}

/// [`entry_update`]'s judgement of the fields [`fast_entry`] read.
fn fast_entry_update<'a>(
    ns: &'a str,
    data: &'a str,
    ts: Option<f64>,
    documentation_url: Option<&'a str>,
    seq: u64,
) -> Result<PublishedUpdate<'a>, Rejection> {
    let ns = NamespaceRef::new(Cow::Borrowed(ns)).map_err(|_| Rejection::InvalidNs)?;
    let ts = match ts {
        None => None,
        Some(v) => Some(Timestamp::from_secs(v).ok_or(Rejection::BadTs)?),
    };
    Ok(PublishedUpdate {
        ns,
        data,
        ts,
        documentation_url: documentation_url
            .filter(|u| !u.is_empty())
            .map(Cow::Borrowed),
        seq: Some(seq),
    })
}

/// How every snapshot a broker writes starts (0.2.x Python brokers put a space after the colon).
const COMPACT_SNAPSHOT: &str = r#"{"type":"thing_snapshot""#;

/// For the fuzz targets and tests: when `bytes` is a compact snapshot that the fast path reads,
/// its result must be the `serde_json` reference's. Returns whether the fast path read it.
#[doc(hidden)]
pub fn fast_snapshot_agrees(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    if !text.starts_with(COMPACT_SNAPSHOT) {
        return false;
    }
    let Some(fast) = decode_snapshot_fast(text) else {
        return false;
    };
    let fast = format!("{:?}", Ok::<_, Rejection>(Published::Snapshot(fast)));
    let reference = format!("{:?}", decode_snapshot_serde(text));
    assert_eq!(fast, reference, "the fast path differs on {text}");
    true
}

/// Decodes one message from a broker's directory output.
///
/// # Errors
/// A [`Rejection`] when the message is not a valid update or snapshot; unknown types are
/// [`Published::Unknown`], not errors.
pub fn decode_published(bytes: &[u8]) -> Result<Published<'_>, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Rejection::InvalidUtf8)?;
    // Brokers write "type" first: a snapshot then decodes in one pass over its entries.
    let compact = text.starts_with(COMPACT_SNAPSHOT);
    if compact {
        if let Some(s) = decode_snapshot_fast(text) {
            return Ok(Published::Snapshot(s));
        }
    }
    if compact || text.starts_with(r#"{"type": "thing_snapshot""#) {
        return decode_snapshot_serde(text);
    }
    let f: PublishedFields<'_> = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    let ty = json_str(f.ty.ok_or(Rejection::MissingType)?).ok_or(Rejection::UnknownType)?;
    match ty.as_ref() {
        "thing_update" => published_update(&f).map(Published::Update),
        "thing_snapshot" => {
            let data = f.data.ok_or(Rejection::MissingData)?;
            let SnapshotEntries(all) =
                serde_json::from_str(data.get()).map_err(|e| json_error(&e))?;
            Ok(Published::Snapshot(snapshot_from(all, snapshot_head!(f))))
        }
        "snapshot_error" => Ok(Published::SnapshotError {
            request: f.request,
            error: f
                .error
                .and_then(json_str)
                .map_or_else(String::new, Cow::into_owned),
        }),
        "thing_expired" => {
            let ns = json_str(f.ns.ok_or(Rejection::MissingNs)?).ok_or(Rejection::BadNs)?;
            Ok(Published::Expired {
                ns: NamespaceRef::new(ns).map_err(|_| Rejection::InvalidNs)?,
                ts: opt_ts(f.ts)?,
            })
        }
        _ => Ok(Published::Unknown),
    }
}

// ---------------------------------------------------------------------------------------------
// Output

/// How every published `thing_update` starts; a snapshot entry is `{` followed by the rest.
pub const UPDATE_PREFIX: &[u8] = b"{\"type\":\"thing_update\",";

fn write_display(out: &mut Vec<u8>, v: impl fmt::Display) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{v}");
}

fn write_quoted_display(out: &mut Vec<u8>, v: impl fmt::Display) {
    let _ = write!(out, "\"{v}\"");
}

/// Writes a finite float so that it always reads back as a float (`1700000000.0`, `1e20`):
/// 0.2.x Python clients drop an update whose `ts` is a JSON integer.
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    // `{:?}` is the shortest round-trip form and always has a `.` or an exponent.
    let _ = write!(out, "{v:?}");
}

/// Writes `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes a complete `thing_update` as the broker publishes it:
/// `{"type":"thing_update","ns":…,"data":…,"ts":…,"documentation_url":…,"seq":…}`.
///
/// `data` must be valid JSON text and `ns` a validated namespace (it needs no escaping).
pub fn encode_update(
    out: &mut Vec<u8>,
    ns: &str,
    data: &str,
    ts: Timestamp,
    documentation_url: Option<&str>,
    seq: u64,
) {
    out.extend_from_slice(UPDATE_PREFIX);
    out.extend_from_slice(b"\"ns\":\"");
    out.extend_from_slice(ns.as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b",\"ts\":");
    write_f64(out, ts.as_secs());
    out.extend_from_slice(b",\"documentation_url\":");
    match documentation_url {
        Some(u) => write_json_str(out, u),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"seq\":");
    write_display(out, seq);
    out.push(b'}');
}

/// Writes a `thing_expired` event: `{"type":"thing_expired","ns":…,"ts":<last ts>,"seq":<last seq>}`.
pub fn encode_expired(out: &mut Vec<u8>, ns: &str, ts: Timestamp, seq: u64) {
    out.extend_from_slice(b"{\"type\":\"thing_expired\",\"ns\":\"");
    out.extend_from_slice(ns.as_bytes());
    out.extend_from_slice(b"\",\"ts\":");
    write_f64(out, ts.as_secs());
    out.extend_from_slice(b",\"seq\":");
    write_display(out, seq);
    out.push(b'}');
}

/// The namespace of an update written by [`encode_update`].
pub fn encoded_update_ns(encoded: &[u8]) -> &[u8] {
    const NS_START: usize = UPDATE_PREFIX.len() + "\"ns\":\"".len();
    let rest = encoded.get(NS_START..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
    &rest[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Result<UpdateRef<'_>, Rejection> {
        decode_json_input(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn json_object_and_list() {
        let u = json(r#"{"type":"thing_update","ns":"a.b","data":{"x":1},"ts":1.5,"documentation_url":"http://d","extra":[1]}"#).unwrap();
        assert_eq!(u.ns.as_str(), "a.b");
        assert_eq!(u.data, r#"{"x":1}"#);
        assert_eq!(u.ts, Timestamp::from_secs(1.5));
        assert_eq!(u.documentation_url.as_deref(), Some("http://d"));

        let u = json(r#"["a", null, [1,2], ""]"#).unwrap();
        assert_eq!(u.ts, None);
        assert_eq!(u.documentation_url, None);
        assert_eq!(u.data, "[1,2]");

        let u = json(r#"{"type":"thing_update","ns":"a","data":null,"ts":1700000000}"#).unwrap();
        assert_eq!(u.data, "null");
        assert_eq!(u.ts, Timestamp::from_secs(1.7e9));
    }

    #[test]
    fn ts_survives_the_round_trip_exactly() {
        for ts in [1795934895.6141953, 1423351104.945, 0.1, 1e-7, 1.7e9] {
            let input = format!(r#"["a", {}, 1, null]"#, serde_json::to_string(&ts).unwrap());
            let u = json(&input).unwrap();
            let mut out = Vec::new();
            encode_update(&mut out, "a", "1", u.ts.unwrap(), None, 1);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                v["ts"].as_f64(),
                Some(ts),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn json_rejections() {
        let cases = [
            ("", Rejection::Empty),
            ("{", Rejection::InvalidJson),
            ("42", Rejection::NotObject),
            ("\"x\"", Rejection::NotObject),
            ("[1,2,3]", Rejection::BadListLength),
            (r#"["a",null,1,null,5]"#, Rejection::BadListLength),
            (r#"{"ns":"a","data":1}"#, Rejection::MissingType),
            (
                r#"{"type":"hello","ns":"a","data":1}"#,
                Rejection::UnknownType,
            ),
            (
                r#"{"type":"thing_snapshot","data":{}}"#,
                Rejection::SnapshotOnInput,
            ),
            (r#"{"type":"thing_update","data":1}"#, Rejection::MissingNs),
            (
                r#"{"type":"thing_update","ns":5,"data":1}"#,
                Rejection::BadNs,
            ),
            (
                r#"{"type":"thing_update","ns":"A","data":1}"#,
                Rejection::InvalidNs,
            ),
            (
                r#"{"type":"thing_update","ns":"a"}"#,
                Rejection::MissingData,
            ),
            (
                r#"{"type":"thing_update","ns":"a","data":1,"ts":"now"}"#,
                Rejection::BadTs,
            ),
            (
                r#"{"type":"thing_update","ns":"a","data":1,"ts":true}"#,
                Rejection::BadTs,
            ),
            (
                r#"{"type":"thing_update","ns":"a","data":1,"documentation_url":5}"#,
                Rejection::BadDocumentationUrl,
            ),
            (
                r#"{"type":"thing_update","ns":"a","data":123456789012345678901}"#,
                Rejection::BigInteger,
            ),
            (
                r#"{"type":"thing_update","ns":"a","data":{"x":[1e999]}}"#,
                Rejection::NonFinite,
            ),
            (
                r#"{"type":"thing_update","ns":"a","data":-1.5e309}"#,
                Rejection::NonFinite,
            ),
            (
                r#"{"type":"thing_update","ns":"a","data":[-9223372036854775809]}"#,
                Rejection::BigInteger,
            ),
            (
                r#"{"type":"thing_update","ns":"a","data":NaN}"#,
                Rejection::InvalidJson,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(json(input).unwrap_err(), want, "{input}");
        }
        assert_eq!(
            decode_json_input(
                b"{\"type\":\"thing_update\",\"ns\":\"a\",\"data\":\"\xff\"}",
                &Limits::default()
            )
            .unwrap_err(),
            Rejection::InvalidUtf8
        );
        let deep = format!(
            r#"{{"type":"thing_update","ns":"a","data":{}1{}}}"#,
            "[".repeat(65),
            "]".repeat(65)
        );
        assert_eq!(json(&deep).unwrap_err(), Rejection::TooDeep);
        let very_deep = format!(
            r#"{{"type":"thing_update","ns":"a","data":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(json(&very_deep).unwrap_err(), Rejection::TooDeep);
        let ok_depth = format!(
            r#"{{"type":"thing_update","ns":"a","data":{}1{}}}"#,
            "[".repeat(64),
            "]".repeat(64)
        );
        assert!(json(&ok_depth).is_ok());
        // Big numbers inside strings are just text.
        assert!(
            json(r#"{"type":"thing_update","ns":"a","data":"123456789012345678901234"}"#).is_ok()
        );
        assert!(json(r#"{"type":"thing_update","ns":"a","data":1.5e300}"#).is_ok());
    }

    fn vector(name: &str) -> Vec<u8> {
        let path = format!("{}/../tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let hex = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let hex = hex.trim();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn esp8266_vector() {
        let bytes = vector("esp8266-list-update.msgpack.hex");
        let u = decode_msgpack_input(&bytes, &Limits::default()).unwrap();
        assert_eq!(u.ns.as_str(), "bottlekid.prototype");
        assert_eq!(u.ts, None);
        let data: serde_json::Value = serde_json::from_str(&u.data).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"dht22_error": "", "metadata": {"loops": 154, "msgs_sent": 153, "msgs_dropped": 1}})
        );
        assert_eq!(
            u.documentation_url.as_deref(),
            Some("https://github.com/mistakes-consortium/esp8266.bottlekids")
        );
        // Every truncation of it is rejected, never a panic.
        for n in 0..bytes.len() {
            assert!(
                decode_msgpack_input(&bytes[..n], &Limits::default()).is_err(),
                "prefix {n}"
            );
        }
    }

    #[test]
    fn msgpack_rejections() {
        let l = Limits::default();
        // [ "a", nil, NaN(f64), nil ]
        let mut nan = vec![0x94, 0xa1, b'a', 0xc0, 0xcb];
        nan.extend_from_slice(&f64::NAN.to_be_bytes());
        nan.push(0xc0);
        assert_eq!(
            decode_msgpack_input(&nan, &l).unwrap_err(),
            Rejection::NonFinite
        );
        // bin in data
        assert_eq!(
            decode_msgpack_input(&[0x94, 0xa1, b'a', 0xc0, 0xc4, 1, 0, 0xc0], &l).unwrap_err(),
            Rejection::BinaryValue
        );
        // ext in data
        assert_eq!(
            decode_msgpack_input(&[0x94, 0xa1, b'a', 0xc0, 0xd4, 1, 0, 0xc0], &l).unwrap_err(),
            Rejection::BinaryValue
        );
        assert_eq!(
            decode_msgpack_input(&[0x93, 0xa1, b'a', 0xc0, 1], &l).unwrap_err(),
            Rejection::BadListLength
        );
        assert_eq!(
            decode_msgpack_input(&[0x95, 0xa1, b'a', 0xc0, 1, 0xc0, 0xc0], &l).unwrap_err(),
            Rejection::BadListLength
        );
        assert_eq!(
            decode_msgpack_input(&[0x2a], &l).unwrap_err(),
            Rejection::NotObject
        );
        assert_eq!(
            decode_msgpack_input(&[0xc1], &l).unwrap_err(),
            Rejection::InvalidMsgpack
        );
        assert_eq!(
            decode_msgpack_input(&[0x94, 0xa1, b'A', 0xc0, 1, 0xc0], &l).unwrap_err(),
            Rejection::InvalidNs
        );
        assert_eq!(
            decode_msgpack_input(&[0x94, 0xa1, 0xff, 0xc0, 1, 0xc0], &l).unwrap_err(),
            Rejection::InvalidUtf8
        );
        // Deeply nested arrays: no stack overflow, a clean rejection.
        let mut deep = vec![0x94, 0xa1, b'a', 0xc0];
        deep.extend(std::iter::repeat_n(0x91, 100_000));
        deep.push(1);
        deep.push(0xc0);
        assert_eq!(
            decode_msgpack_input(&deep, &l).unwrap_err(),
            Rejection::TooDeep
        );
        // Array32 announcing 4 billion items in a tiny datagram.
        assert_eq!(
            decode_msgpack_input(&[0x94, 0xa1, b'a', 0xc0, 0xdd, 0xff, 0xff, 0xff, 0xff], &l)
                .unwrap_err(),
            Rejection::InvalidMsgpack
        );
    }

    #[test]
    fn msgpack_map_form() {
        // {"type": "thing_update", "ns": "a.b", "data": {1: -2.5}, "ts": 7, "x": [1]}
        let mut m = vec![0x85];
        m.extend_from_slice(b"\xa4type\xacthing_update\xa2ns\xa3a.b\xa4data\x81\x01\xcb");
        m.extend_from_slice(&(-2.5f64).to_be_bytes());
        m.extend_from_slice(b"\xa2ts\x07\xa1x\x91\x01");
        let u = decode_msgpack_input(&m, &Limits::default()).unwrap();
        assert_eq!(u.ns.as_str(), "a.b");
        assert_eq!(u.data, r#"{"1":-2.5}"#);
        assert_eq!(u.ts, Timestamp::from_secs(7.0));
    }

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

    #[test]
    fn encode_writes_float_ts_and_sticky_fields() {
        let mut out = Vec::new();
        encode_update(
            &mut out,
            "a.b",
            "{\"x\":1}",
            Timestamp::from_secs(1.7e9).unwrap(),
            Some("u\"rl"),
            9,
        );
        let s = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            s,
            r#"{"type":"thing_update","ns":"a.b","data":{"x":1},"ts":1700000000.0,"documentation_url":"u\"rl","seq":9}"#
        );
        assert_eq!(encoded_update_ns(&out), b"a.b");
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        assert!(v["ts"].is_f64());
    }
}
