//! Encoding what the broker publishes: `thing_update` and `thing_expired` messages, written
//! straight into a byte buffer in one fixed shape (the shape the fast snapshot path reads).

use std::fmt;
use std::io::Write;

use crate::message::Timestamp;

/// How every published `thing_update` starts; a snapshot entry is `{` followed by the rest.
pub const UPDATE_PREFIX: &[u8] = b"{\"type\":\"thing_update\",";

/// Writes `v` as its `Display` text.
pub(super) fn write_display(out: &mut Vec<u8>, v: impl fmt::Display) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{v}");
}

/// Writes `v`'s `Display` text as a JSON string (it must need no escaping).
pub(super) fn write_quoted_display(out: &mut Vec<u8>, v: impl fmt::Display) {
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
