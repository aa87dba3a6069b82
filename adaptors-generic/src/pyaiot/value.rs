//! What every pyaiot gateway does with a node's text: a value becomes thing data
//! (`"23°C"` → `{"value": 23, "unit": "°C"}`), a node's or a resource's name becomes a namespace
//! part, and a command's data becomes the text a node is sent. Pure.

use serde_json::{json, Value};

/// A name as a namespace part, deterministically: lower-cased; characters outside
/// `[a-z0-9_-]` become `-`; `prefix` is put in front when it does not start with a letter
/// (a uid `1234` becomes `n1234` with prefix `n`); cut to 64 characters.
pub fn to_part(name: &str, prefix: char) -> String {
    let mut s: String = name
        .trim()
        .trim_matches('/')
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s.insert(0, prefix);
    }
    s.truncate(64);
    s
}

/// A node's uid as a namespace part (prefix `n`).
pub fn node_part(uid: &str) -> String {
    to_part(uid, 'n')
}

/// A resource name as a namespace part (prefix `r`).
pub fn resource_part(name: &str) -> String {
    to_part(name, 'r')
}

/// A value as a node sends it (UTF-8 text): JSON where it parses, a number, a number with a unit
/// as `{"value": 23, "unit": "°C"}`, otherwise the text.
pub fn parse_value(text: &str) -> Value {
    let t = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        return v;
    }
    // A number followed by a unit: the longest numeric prefix that parses.
    let end = t
        .char_indices()
        .take_while(|(i, c)| {
            c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '-' || *c == '+'))
        })
        .map(|(i, c)| i + c.len_utf8())
        .last();
    if let Some(end) = end {
        let (number, unit) = t.split_at(end);
        let unit = unit.trim();
        if let (Ok(n), false) = (number.parse::<f64>(), unit.is_empty()) {
            if n.is_finite() {
                let n = if n.fract() == 0.0 && n.abs() < 9.0e15 {
                    json!(n as i64)
                } else {
                    json!(n)
                };
                return json!({"value": n, "unit": unit});
            }
        }
    }
    Value::String(text.to_owned())
}

/// What to send as the text of a PUT: a JSON string as its plain text, anything else as JSON.
pub fn put_payload(data: &Value) -> String {
    match data {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_valid_parts_deterministically() {
        assert_eq!(node_part("1234"), "n1234");
        assert_eq!(node_part("Node_A"), "node_a");
        assert_eq!(node_part("ab:cd ef"), "ab-cd-ef");
        assert_eq!(resource_part("/sensors/temp"), "sensors-temp");
        assert_eq!(resource_part("2nd"), "r2nd");
        assert_eq!(node_part(&"x".repeat(100)).len(), 64);
        for p in [node_part("1234"), resource_part("Ω"), node_part("é")] {
            assert!(thingsbus_protocol::namespace::validate(&p).is_ok(), "{p}");
        }
    }

    #[test]
    fn values_are_json_numbers_units_or_text() {
        assert_eq!(parse_value("23.5"), json!(23.5));
        assert_eq!(
            parse_value(r#"[{"type":"acc","values":[1,2,3]}]"#),
            json!([{"type": "acc", "values": [1, 2, 3]}])
        );
        assert_eq!(parse_value("23°C"), json!({"value": 23, "unit": "°C"}));
        assert_eq!(
            parse_value("1015hPa"),
            json!({"value": 1015, "unit": "hPa"})
        );
        assert_eq!(
            parse_value("-3.5 m/s"),
            json!({"value": -3.5, "unit": "m/s"})
        );
        assert_eq!(parse_value("1"), json!(1));
        assert_eq!(parse_value("hello world"), json!("hello world"));
        assert_eq!(parse_value("RIOT-OS"), json!("RIOT-OS"));
        assert_eq!(put_payload(&json!("on")), "on");
        assert_eq!(put_payload(&json!(1)), "1");
        assert_eq!(put_payload(&json!({"a": 1})), r#"{"a":1}"#);
    }
}
