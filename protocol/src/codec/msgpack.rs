//! MessagePack input: one UDP datagram, a map shaped like the JSON `thing_update` or the compact
//! 4-list that small boards send, read into an [`UpdateRef`] whose `data` is transcoded to JSON,
//! or a [`Rejection`].

use std::borrow::Cow;

use rmp::Marker;

use super::encode::{write_display, write_f64, write_json_str, write_quoted_display};
use super::{Limits, Rejection};
use crate::message::{NamespaceRef, Timestamp, UpdateRef};

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

    /// Skips one value (transcoding it into `scratch`, which is then dropped).
    fn skip(&mut self, scratch: &mut Vec<u8>, limits: &Limits) -> Result<(), Rejection> {
        scratch.clear();
        self.transcode(scratch, 0, limits.max_depth)
    }

    /// Reads one field with `read`; when its value is wrong but well-formed MessagePack, the
    /// value is skipped and the rejection comes back inside: the outer error is for a datagram
    /// that cannot be read on.
    fn field<T>(
        &mut self,
        scratch: &mut Vec<u8>,
        limits: &Limits,
        read: impl FnOnce(&mut Self) -> Result<T, Rejection>,
    ) -> Result<Result<T, Rejection>, Rejection> {
        let start = self.pos;
        match read(self) {
            Ok(v) => Ok(Ok(v)),
            Err(e) => {
                self.pos = start;
                self.skip(scratch, limits)?;
                Ok(Err(e))
            }
        }
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
/// Bytes after the first value are ignored, as 0.2.x did. A well-formed map of any other type
/// (a `serve`, `command` or `command_reply` for the broker's command endpoint) is always
/// [`Rejection::UnknownType`], whatever its other fields hold.
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
                    // Kept as results: a message of another type (a command for the broker's
                    // command endpoint) is told apart by its type first, whatever its fields.
                    "ns" => ns = Some(r.field(&mut skipped, limits, MpReader::ns)?),
                    "ts" => ts = Some(r.field(&mut skipped, limits, MpReader::ts)?),
                    "data" => {
                        data = Some(r.field(&mut skipped, limits, |r| r.data(limits.max_depth))?)
                    }
                    "documentation_url" => {
                        documentation_url = Some(r.field(&mut skipped, limits, MpReader::url)?)
                    }
                    _ => r.skip(&mut skipped, limits)?,
                }
            }
            match ty {
                None => return Err(Rejection::MissingType),
                Some("thing_update") => {}
                Some("thing_snapshot") => return Err(Rejection::SnapshotOnInput),
                Some(_) => return Err(Rejection::UnknownType),
            }
            Ok(UpdateRef {
                ns: ns.ok_or(Rejection::MissingNs)??,
                ts: ts.transpose()?.flatten(),
                data: data.ok_or(Rejection::MissingData)??,
                documentation_url: documentation_url.transpose()?.flatten(),
            })
        }
        _ => Err(Rejection::NotObject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_map_of_another_type_is_unknown_type_whatever_its_fields() {
        let limits = Limits::default();
        let map = |pairs: &[(&str, &[u8])]| {
            let mut m = vec![0x80 | pairs.len() as u8];
            for (k, v) in pairs {
                m.push(0xa0 | k.len() as u8);
                m.extend_from_slice(k.as_bytes());
                m.extend_from_slice(v);
            }
            m
        };
        // {"type": "serve", "ns": ["board.led"]}: ns is no namespace, yet the type decides.
        let serve = map(&[("type", b"\xa5serve"), ("ns", b"\x91\xa9board.led")]);
        assert_eq!(
            decode_msgpack_input(&serve, &limits),
            Err(Rejection::UnknownType)
        );
        // The type last, after a bad ns and an odd ts.
        let reply = map(&[
            ("ns", b"\xa3B.x"),
            ("ts", b"\xa1x"),
            ("type", b"\xadcommand_reply"),
        ]);
        assert_eq!(
            decode_msgpack_input(&reply, &limits),
            Err(Rejection::UnknownType)
        );
        // An update keeps its own reasons, and the fields after a bad one are still read.
        let update = map(&[
            ("ns", b"\xa3B.x"),
            ("type", b"\xacthing_update"),
            ("data", b"\x01"),
        ]);
        assert_eq!(
            decode_msgpack_input(&update, &limits),
            Err(Rejection::InvalidNs)
        );
        let untyped = map(&[("ns", b"\xa3B.x"), ("data", b"\x01")]);
        assert_eq!(
            decode_msgpack_input(&untyped, &limits),
            Err(Rejection::MissingType)
        );
        // A value that cannot be read past still ends the datagram.
        let broken = map(&[("ns", b"\xc1"), ("type", b"\xa5serve")]);
        assert_eq!(
            decode_msgpack_input(&broken, &limits),
            Err(Rejection::InvalidMsgpack)
        );
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
}
