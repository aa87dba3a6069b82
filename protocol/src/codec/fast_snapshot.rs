//! The fast path for snapshot chunks as brokers write them ([`decode_snapshot`]), and the small,
//! strict JSON scanner it reads them with: the scanner finds where values end and checks them
//! against the JSON grammar, without building anything.
//!
//! It is deliberately conservative. Whatever it cannot vouch for — a value nested deeper than
//! [`MAX_DEPTH`], a string with an escape where the caller wants the text, a number not in the
//! plain form it reads itself — makes it answer `None`, and the caller decodes that part with
//! `serde_json` instead (one entry), or hands the whole message to the reference,
//! [`published::decode_snapshot`]. So the fast path never accepts what `serde_json` would
//! refuse, and never reads a value differently.
//!
//! [`published::decode_snapshot`]: super::published::decode_snapshot

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::published::{entry_update, EntryFields, SnapshotEntries, SnapshotFields};
use super::{PublishedSnapshot, PublishedUpdate, Rejection};
use crate::message::{NamespaceRef, Timestamp};

/// A `thing_snapshot` decoded as [`published::decode_snapshot`] would, several times faster,
/// for chunks as brokers write them: entries in the exact shape of [`encode_update`] are read
/// by a strict scanner (no escapes in `ns` or the URL, `ts` a plain decimal), any other entry by
/// `serde_json` alone. `None` when anything is out of the ordinary — the message then goes
/// through [`published::decode_snapshot`], which finds the error or reads it the slow way. So
/// the result is the reference's whenever this returns one (`tests/fast_snapshot.rs`, and the
/// `published` fuzz target, check that).
///
/// [`published::decode_snapshot`]: super::published::decode_snapshot
/// [`encode_update`]: super::encode_update
pub(crate) fn decode_snapshot(text: &str) -> Option<PublishedSnapshot<'_>> {
    let mut s = Scan::new(text);
    s.eat(b'{')?;
    let mut f = SnapshotFields::default();
    let mut seen = 0u16;
    if !s.eat_if(b'}') {
        loop {
            let key = s.plain_string()?;
            s.eat(b':')?;
            let (bit, slot) = match key {
                "ts" => (0, Some(&mut f.ts)),
                "seq" => (1, Some(&mut f.seq)),
                "snapshot" => (2, Some(&mut f.id)),
                "chunk" => (3, Some(&mut f.chunk)),
                "last" => (4, Some(&mut f.last)),
                "epoch" => (5, Some(&mut f.epoch)),
                "request" => (6, Some(&mut f.request)),
                "total" => (7, Some(&mut f.total)),
                "stale" => (8, Some(&mut f.stale)),
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
                f.data = Some(SnapshotEntries(fast_entries(&mut s)?));
            } else {
                let raw = s.value(MAX_DEPTH)?;
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
    f.into_snapshot().ok()
}

/// The `data` object of a snapshot chunk (see [`decode_snapshot`]).
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
                let raw = s.value(MAX_DEPTH)?;
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

/// One entry exactly as [`encode_update`](super::encode_update) writes it (after its `"type"`):
/// `{"ns":…,"data":…,"ts":…,"documentation_url":…,"seq":…}`; `None` for any other shape.
fn fast_entry<'a>(s: &mut Scan<'a>) -> Option<Result<PublishedUpdate<'a>, Rejection>> {
    s.lit(r#"{"ns":"#)?;
    let ns = s.plain_string()?;
    s.lit(r#","data":"#)?;
    let data = s.value(MAX_DEPTH)?;
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

/// Deepest nesting the scanner follows; `serde_json` refuses beyond 128 levels counted from the
/// top of the message, and a snapshot entry's value starts three levels down.
const MAX_DEPTH: usize = 100;

struct Scan<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Self {
        Scan { text, pos: 0 }
    }

    fn pos(&self) -> usize {
        self.pos
    }

    /// Goes back to `pos`, a position this scanner reported.
    fn set_pos(&mut self, pos: usize) {
        self.pos = pos;
    }

    /// Bytes not read yet.
    fn remaining(&self) -> usize {
        self.text.len() - self.pos
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Skips whitespace and reads `c`.
    fn eat(&mut self, c: u8) -> Option<()> {
        self.skip_ws();
        (self.peek()? == c).then(|| self.pos += 1)
    }

    /// Skips whitespace; true (and consumed) when the next byte is `c`.
    fn eat_if(&mut self, c: u8) -> bool {
        self.skip_ws();
        let hit = self.peek() == Some(c);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// Reads exactly `s` (no whitespace skipped).
    fn lit(&mut self, s: &str) -> Option<()> {
        let rest = self.bytes().get(self.pos..)?;
        rest.starts_with(s.as_bytes()).then(|| self.pos += s.len())
    }

    /// True when only whitespace is left.
    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos == self.text.len()
    }

    /// Skips whitespace and reads a string; returns its text between the quotes and whether it
    /// holds an escape (then the text is not the string's value).
    fn string(&mut self) -> Option<(&'a str, bool)> {
        self.eat(b'"')?;
        let start = self.pos;
        let b = self.bytes();
        let mut escaped = false;
        loop {
            match *b.get(self.pos)? {
                b'"' => {
                    let s = self.text.get(start..self.pos)?;
                    self.pos += 1;
                    return Some((s, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    match *b.get(self.pos)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                        b'u' => {
                            let hex = b.get(self.pos + 1..self.pos + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.pos += 5;
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => self.pos += 1,
            }
        }
    }

    /// Skips whitespace and reads a string with no escape: its value.
    fn plain_string(&mut self) -> Option<&'a str> {
        match self.string()? {
            (s, false) => Some(s),
            (_, true) => None,
        }
    }

    /// Skips whitespace and reads a number; returns its text.
    fn number(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let start = self.pos;
        let b = self.bytes();
        if b.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match *b.get(self.pos)? {
            b'0' => {
                self.pos += 1;
                if b.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if !b.get(self.pos).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = b.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = b.get(self.pos) {
                self.pos += 1;
            }
            if !b.get(self.pos).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            self.digits();
        }
        self.text.get(start..self.pos)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// Skips whitespace and reads one value of any kind, nested at most `max_depth` levels
    /// (at most [`MAX_DEPTH`]); returns its text.
    fn value(&mut self, max_depth: usize) -> Option<&'a str> {
        let max_depth = max_depth.min(MAX_DEPTH);
        self.skip_ws();
        let start = self.pos;
        // The open levels, innermost in bit 0: 1 for an object, 0 for an array.
        let mut kinds: u128 = 0;
        let mut depth = 0;
        loop {
            // One value.
            self.skip_ws();
            match self.peek()? {
                c @ (b'{' | b'[') => {
                    let object = c == b'{';
                    self.pos += 1;
                    if depth >= max_depth {
                        return None;
                    }
                    if !self.eat_if(if object { b'}' } else { b']' }) {
                        kinds = (kinds << 1) | u128::from(object);
                        depth += 1;
                        if object {
                            self.string()?;
                            self.eat(b':')?;
                        }
                        continue;
                    }
                    // Empty: a complete value.
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.lit("true")?,
                b'f' => self.lit("false")?,
                b'n' => self.lit("null")?,
                _ => {
                    self.number()?;
                }
            }
            // After a complete value: close levels, or go on to the next member.
            loop {
                if depth == 0 {
                    return self.text.get(start..self.pos);
                }
                let object = kinds & 1 == 1;
                if self.eat_if(b',') {
                    if object {
                        self.string()?;
                        self.eat(b':')?;
                    }
                    break;
                }
                self.eat(if object { b'}' } else { b']' })?;
                kinds >>= 1;
                depth -= 1;
            }
        }
    }

    /// Reads a plain decimal with a fraction and no sign or exponent (`1764423456.123456`, as
    /// timestamps are written), exactly as the standard library's parse would; `None` for
    /// anything else, including what JSON allows but this does not read.
    fn decimal(&mut self) -> Option<f64> {
        /// Powers of ten that an `f64` holds exactly.
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
        ];
        let start = self.pos;
        let b = self.bytes();
        let mut mantissa: u64 = 0;
        let mut digits = 0usize;
        let mut read = |pos: &mut usize| {
            let from = *pos;
            while let Some(&c) = b.get(*pos) {
                if !c.is_ascii_digit() {
                    break;
                }
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
                *pos += 1;
            }
            *pos - from
        };
        let whole = read(&mut self.pos);
        // JSON: no leading zero before another digit.
        if whole == 0 || (whole > 1 && b[start] == b'0') || b.get(self.pos) != Some(&b'.') {
            return None;
        }
        self.pos += 1;
        let frac = read(&mut self.pos);
        digits += whole + frac;
        if frac == 0 || matches!(b.get(self.pos), Some(b'e' | b'E')) {
            return None;
        }
        // Clinger's fast path: an exact mantissa divided by an exact power of ten is one
        // correctly rounded operation. Otherwise the standard library's full algorithm.
        if digits <= 19 && mantissa < (1 << 53) && frac < POW10.len() {
            #[allow(clippy::cast_precision_loss)] // below 2^53: exact
            return Some(mantissa as f64 / POW10[frac]);
        }
        self.text.get(start..self.pos)?.parse().ok()
    }

    /// Reads an unsigned integer without sign, fraction or exponent that fits a `u64`; `None`
    /// for anything else.
    fn unsigned(&mut self) -> Option<u64> {
        let start = self.pos;
        let b = self.bytes();
        let mut v: u64 = 0;
        while let Some(&c) = b.get(self.pos) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.pos += 1;
        }
        let len = self.pos - start;
        if len == 0 || (len > 1 && b[start] == b'0') {
            return None;
        }
        match b.get(self.pos) {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(text: &str) -> Option<&str> {
        let mut s = Scan::new(text);
        let v = s.value(MAX_DEPTH)?;
        s.at_end().then_some(v)
    }

    #[test]
    fn accepts_exactly_what_serde_json_accepts() {
        let cases = [
            "1",
            "-0",
            "0.5",
            "-1.5e10",
            "1E+2",
            "1e-2",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "-a",
            "true",
            "false",
            "null",
            "nul",
            "tru",
            "\"\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "\"\\u00g9\"",
            "\"\\x\"",
            "\"a\u{1}b\"",
            "\"é\"",
            "[]",
            "{}",
            "[1,2]",
            "[1,]",
            "[,1]",
            "{\"a\":1}",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "{\"a\":[{\"b\":null}]}",
            "[1 2]",
            " [ 1 , { \"x\" : [ ] } ] ",
            "[",
            "]",
            "{\"a\":1]",
            "[1}",
            "\"abc",
            "",
        ];
        for text in cases {
            let ours = whole(text).is_some();
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(ours, serde, "{text:?}");
            if let Some(v) = whole(text) {
                assert_eq!(v, text.trim(), "{text:?}");
            }
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(whole(&deep(MAX_DEPTH)).is_some());
        assert!(whole(&deep(MAX_DEPTH + 1)).is_none());
    }

    #[test]
    fn decimals_read_as_the_standard_library_reads_them() {
        let mut rng = crate::discovery::SeededRandom::new(17);
        let mut cases: Vec<String> = [
            "1764423456.123456",
            "0.5",
            "0.0",
            "9007199254740993.0",
            "9007199254740992.5",
            "1.7976931348623157",
            "123456789012345678901234567890.5",
            "0.1",
            "0.30000000000000004",
            "1764423456.1234567890123",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        for _ in 0..20_000 {
            use crate::discovery::RandomSource;
            let whole = rng.up_to(u32::MAX) >> rng.up_to(31);
            let frac = rng.up_to(u32::MAX) >> rng.up_to(31);
            let zeros = "0".repeat(rng.up_to(4) as usize);
            cases.push(format!("{whole}.{zeros}{frac}"));
        }
        for t in &cases {
            let ours = Scan::new(t).decimal();
            assert_eq!(
                ours.map(f64::to_bits),
                t.parse::<f64>().ok().map(f64::to_bits),
                "{t}"
            );
        }
        for odd in ["1", "01.5", "1.", ".5", "-1.5", "1.5e3", "1.5E3", "x"] {
            assert_eq!(Scan::new(odd).decimal(), None, "{odd}");
        }
    }

    #[test]
    fn unsigned_integers() {
        assert_eq!(Scan::new("0").unsigned(), Some(0));
        assert_eq!(Scan::new("18446744073709551615").unsigned(), Some(u64::MAX));
        for odd in ["18446744073709551616", "007", "-1", "1.5", "1e3", "x", ""] {
            assert_eq!(Scan::new(odd).unsigned(), None, "{odd}");
        }
    }

    #[test]
    fn strings_report_escapes() {
        let mut s = Scan::new(r#""plain" "es\"caped""#);
        assert_eq!(s.string(), Some(("plain", false)));
        assert_eq!(s.string(), Some((r#"es\"caped"#, true)));
        assert!(Scan::new(r#""a\"b""#).plain_string().is_none());
    }
}
