//! JSON input: one ZMQ frame, a `thing_update` object or the 4-list
//! `[ns, ts, data, documentation_url]`, read into an [`UpdateRef`] or a [`Rejection`]. Also the
//! readers of single JSON values that the decoding of published messages shares.

use std::borrow::Cow;
use std::fmt;

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Limits, Rejection};
use crate::message::{NamespaceRef, Timestamp, UpdateRef};

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
pub(super) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<&'de RawValue>, D::Error> {
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

/// The [`Rejection`] for JSON text that `serde_json` refused.
pub(super) fn json_error(e: &serde_json::Error) -> Rejection {
    if e.to_string().starts_with("recursion limit exceeded") {
        Rejection::TooDeep
    } else {
        Rejection::InvalidJson
    }
}

/// A JSON string value, borrowed when it has no escapes.
pub(super) fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
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
    let ns = ns_field(ns)?;
    let data = data.ok_or(Rejection::MissingData)?.get();
    check_json_value(data, limits.max_depth)?;
    let ts = ts_field(ts)?;
    let documentation_url = url_field(url)?;
    Ok(UpdateRef {
        ns,
        ts,
        data: Cow::Borrowed(data),
        documentation_url,
    })
}

/// The `ns` key's value (absent: `None`): a string that is a valid namespace.
pub(super) fn ns_field(raw: Option<&RawValue>) -> Result<NamespaceRef<'_>, Rejection> {
    let ns = json_str(raw.ok_or(Rejection::MissingNs)?).ok_or(Rejection::BadNs)?;
    NamespaceRef::new(ns).map_err(|_| Rejection::InvalidNs)
}

/// The `ts` key's value: a finite number of seconds, or absent or null for none.
pub(super) fn ts_field(raw: Option<&RawValue>) -> Result<Option<Timestamp>, Rejection> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(raw) => serde_json::from_str::<f64>(raw)
            .ok()
            .and_then(Timestamp::from_secs)
            .map(Some)
            .ok_or(Rejection::BadTs),
    }
}

/// The `documentation_url` key's value: a string, or absent, null or empty for none.
pub(super) fn url_field(raw: Option<&RawValue>) -> Result<Option<Cow<'_, str>>, Rejection> {
    Ok(match raw {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(json_str(raw).ok_or(Rejection::BadDocumentationUrl)?),
    }
    .filter(|u| !u.is_empty()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_update;

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

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn field_readers() {
        assert_eq!(ns_field(Some(raw(r#""a.b""#))).unwrap().as_str(), "a.b");
        assert_eq!(
            ns_field(Some(raw(r#""a\u002eb""#))).unwrap().as_str(),
            "a.b"
        );
        assert_eq!(ns_field(None).unwrap_err(), Rejection::MissingNs);
        assert_eq!(ns_field(Some(raw("5"))).unwrap_err(), Rejection::BadNs);
        assert_eq!(ns_field(Some(raw("null"))).unwrap_err(), Rejection::BadNs);
        assert_eq!(
            ns_field(Some(raw(r#""A""#))).unwrap_err(),
            Rejection::InvalidNs
        );

        assert_eq!(ts_field(None), Ok(None));
        assert_eq!(ts_field(Some(raw("null"))), Ok(None));
        assert_eq!(ts_field(Some(raw("2"))), Ok(Timestamp::from_secs(2.0)));
        assert_eq!(ts_field(Some(raw("1.5"))), Ok(Timestamp::from_secs(1.5)));
        assert_eq!(ts_field(Some(raw(r#""1""#))), Err(Rejection::BadTs));
        assert_eq!(ts_field(Some(raw("1e999"))), Err(Rejection::BadTs));

        assert_eq!(url_field(None), Ok(None));
        assert_eq!(url_field(Some(raw("null"))), Ok(None));
        assert_eq!(url_field(Some(raw(r#""""#))), Ok(None));
        assert_eq!(
            url_field(Some(raw(r#""u\"rl""#))).unwrap().as_deref(),
            Some("u\"rl")
        );
        assert_eq!(
            url_field(Some(raw("5"))),
            Err(Rejection::BadDocumentationUrl)
        );
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
}
