//! The JSON of `/api/things` and of events, written straight from the mirror's text of each
//! value: the value was checked to be JSON when it arrived, so it is copied, never parsed again.

use thingsbus_client::Thing;
use thingsbus_protocol::codec::write_json_str;

/// Writes one thing: `{"data":…,"documentation_url":…,"ns":…,"seq":…,"stale":…,"ts":…}`, `ns`
/// only `with_ns` (the keys in the order `serde_json` gave them before: sorted).
pub(super) fn write_thing(out: &mut Vec<u8>, t: &Thing, with_ns: bool) {
    write_fields(
        out,
        Fields {
            ns: with_ns.then(|| t.ns.as_str()),
            data: &t.data,
            documentation_url: t.documentation_url.as_deref(),
            seq: t.seq,
            stale: t.stale,
            ts: t.ts,
        },
    );
}

/// Writes `{"ns":{…},…}` for every thing of `things`, in their order.
pub(super) fn write_things(out: &mut Vec<u8>, things: &[Thing]) {
    out.push(b'{');
    for (i, t) in things.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, t.ns.as_str());
        out.push(b':');
        write_thing(out, t, false);
    }
    out.push(b'}');
}

/// What [`write_thing`] writes, apart from the client's type (so tests can make one).
struct Fields<'a> {
    ns: Option<&'a str>,
    data: &'a str,
    documentation_url: Option<&'a str>,
    seq: Option<u64>,
    stale: bool,
    ts: f64,
}

fn write_fields(out: &mut Vec<u8>, f: Fields<'_>) {
    out.extend_from_slice(b"{\"data\":");
    out.extend_from_slice(f.data.as_bytes());
    out.extend_from_slice(b",\"documentation_url\":");
    match f.documentation_url {
        Some(u) => write_json_str(out, u),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(ns) = f.ns {
        out.extend_from_slice(b",\"ns\":");
        write_json_str(out, ns);
    }
    out.extend_from_slice(b",\"seq\":");
    // Numbers as serde_json writes them (a non-finite ts as null), as before.
    let _ = serde_json::to_writer(&mut *out, &f.seq);
    out.extend_from_slice(b",\"stale\":");
    out.extend_from_slice(if f.stale { b"true" } else { b"false" });
    out.extend_from_slice(b",\"ts\":");
    let _ = serde_json::to_writer(&mut *out, &f.ts);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the HTTP side wrote before: a `serde_json::Value` built from the parsed value.
    fn before(f: &Fields<'_>) -> String {
        let data: serde_json::Value = serde_json::from_str(f.data).unwrap();
        let mut v = json!({
            "data": data,
            "ts": f.ts,
            "stale": f.stale,
            "seq": f.seq,
            "documentation_url": f.documentation_url,
        });
        if let Some(ns) = f.ns {
            v["ns"] = json!(ns);
        }
        v.to_string()
    }

    #[test]
    fn the_bytes_are_those_of_the_parsed_value_for_compact_values() {
        for f in [
            Fields {
                ns: Some("shop.door"),
                data: r#"{"open":true,"why":"a \"quote\" é"}"#,
                documentation_url: Some("https://wiki/Door?a=\"b\""),
                seq: Some(7),
                stale: false,
                ts: 1_700_000_000.5,
            },
            Fields {
                ns: None,
                data: "[1,2.5,null,-3]",
                documentation_url: None,
                seq: None,
                stale: true,
                ts: 1_700_000_000.0,
            },
            Fields {
                ns: Some("a"),
                data: "21.5",
                documentation_url: None,
                seq: Some(u64::MAX),
                stale: false,
                ts: 1e-7,
            },
        ] {
            let mut out = Vec::new();
            let want = before(&f);
            write_fields(&mut out, f);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
