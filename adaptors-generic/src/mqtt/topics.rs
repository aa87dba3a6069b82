//! The rules of the MQTT bridge: topics for things, payloads, Home Assistant discovery, and how
//! MQTT topics become namespaces. Pure.

use serde_json::{json, Map, Value};
use thingsbus_protocol::Namespace;

/// Where the bridge publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Things go under `<prefix>/...` (default `thingsbus`).
    pub prefix: String,
    /// Home Assistant discovery prefix (default `homeassistant`).
    pub discovery_prefix: String,
}

/// MQTT forbids the wildcards in topic names; a JSON field name may hold anything.
fn topic_level(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// A string safe as a Home Assistant id: `[a-zA-Z0-9_-]`.
fn ha_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Topics {
    /// `<prefix>/shop/door` for `shop.door`.
    pub fn state(&self, ns: &str) -> String {
        format!("{}/{}", self.prefix, ns.replace('.', "/"))
    }

    /// `<prefix>/shop/door/availability`: `online` or `offline`.
    pub fn availability(&self, ns: &str) -> String {
        format!("{}/availability", self.state(ns))
    }

    /// `<prefix>/shop/door/<field>` with `--flatten`.
    pub fn field(&self, ns: &str, field: &str) -> String {
        format!("{}/{}", self.state(ns), topic_level(field))
    }

    /// The thing a `<prefix>/<ns as slashes>/set` topic commands, if it is one.
    pub fn set_target(&self, topic: &str) -> Option<Namespace> {
        let path = topic
            .strip_prefix(&self.prefix)?
            .strip_prefix('/')?
            .strip_suffix("/set")?;
        Namespace::new(&path.replace('/', ".")).ok()
    }

    /// True for a topic the bridge itself publishes on: never imported back.
    pub fn is_own(&self, topic: &str) -> bool {
        let under = |p: &str| topic == p || topic.starts_with(&format!("{p}/"));
        under(&self.prefix) || under(&self.discovery_prefix)
    }

    /// Home Assistant discovery configs for a thing: one `sensor` per numeric field and one
    /// `binary_sensor` per boolean field of object data (or of the scalar data itself, named
    /// `value`), grouped in one device per thing. When the thing obeys commands
    /// (`commandable`: an adaptor serves it), a boolean field is a `switch` instead, whose
    /// `command_topic` is `<topic>/set` with `{"<field>": true|false}` (or `true|false` for
    /// scalar data). `(topic, payload)` pairs, to publish retained.
    pub fn discovery(&self, ns: &str, data: &Value, commandable: bool) -> Vec<(String, String)> {
        let fields: Vec<(String, &Value, String)> = match data {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    let template = format!("value_json.data[{}]", json!(k));
                    (k.clone(), v, template)
                })
                .collect(),
            v => vec![("value".to_owned(), v, "value_json.data".to_owned())],
        };
        let node = ha_id(ns);
        let device = json!({
            "identifiers": [format!("thingsbus_{node}")],
            "name": ns,
            "manufacturer": "thingsbus",
            "model": "thing",
        });
        let scalar = !data.is_object();
        fields
            .into_iter()
            .filter_map(|(field, value, path)| {
                let (component, value_template, extra) = match value {
                    Value::Bool(_) if commandable => {
                        let (on, off) = if scalar {
                            ("true".to_owned(), "false".to_owned())
                        } else {
                            (
                                json!({ &field: true }).to_string(),
                                json!({ &field: false }).to_string(),
                            )
                        };
                        (
                            "switch",
                            format!("{{{{ 'ON' if {path} else 'OFF' }}}}"),
                            json!({"command_topic": format!("{}/set", self.state(ns)),
                                   "payload_on": on, "payload_off": off,
                                   "state_on": "ON", "state_off": "OFF"}),
                        )
                    }
                    Value::Bool(_) => (
                        "binary_sensor",
                        format!("{{{{ 'ON' if {path} else 'OFF' }}}}"),
                        json!({"payload_on": "ON", "payload_off": "OFF"}),
                    ),
                    Value::Number(_) => ("sensor", format!("{{{{ {path} }}}}"), json!({})),
                    _ => return None,
                };
                let object = ha_id(&field);
                let mut config = json!({
                    "name": field,
                    "unique_id": format!("thingsbus_{node}_{object}"),
                    "object_id": format!("{node}_{object}"),
                    "state_topic": self.state(ns),
                    "value_template": value_template,
                    "availability_topic": self.availability(ns),
                    "payload_available": "online",
                    "payload_not_available": "offline",
                    "device": device,
                });
                if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
                    c.extend(e.clone());
                }
                Some((
                    format!(
                        "{}/{component}/{node}/{object}/config",
                        self.discovery_prefix
                    ),
                    config.to_string(),
                ))
            })
            .collect()
    }
}

/// `{"data": ..., "ts": ...}`, the retained payload of a thing's topic (`data` as received).
pub fn state_payload(data: &str, ts: f64) -> String {
    let ts = serde_json::Number::from_f64(ts).map_or_else(|| "null".to_owned(), |n| n.to_string());
    format!(r#"{{"data":{data},"ts":{ts}}}"#)
}

/// A field's payload with `--flatten`: numbers, booleans and strings as plain text (what MQTT
/// tools expect), objects and lists as JSON.
pub fn field_payload(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The object fields to flatten (none for scalar data).
pub fn fields(data: &Value) -> Option<&Map<String, Value>> {
    data.as_object()
}

/// `--import 'topic/filter/#=ns.prefix'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// The MQTT topic filter, wildcards allowed.
    pub filter: String,
    /// Where the matching topics go on the bus.
    pub ns: Namespace,
}

/// Why an MQTT message was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportSkip {
    /// A topic level that cannot be made a namespace part (e.g. it starts with a digit).
    BadLevel(String),
    /// The payload is not UTF-8.
    NotText,
    /// The resulting namespace is too long or otherwise invalid.
    BadNamespace(String),
}

impl Import {
    /// Parses `FILTER=NS`.
    ///
    /// # Errors
    /// A text without `=`, an empty filter, or an invalid namespace.
    pub fn parse(s: &str) -> Result<Import, String> {
        let (filter, ns) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?} is not FILTER=NS (e.g. 'zigbee2mqtt/#=home.zigbee')"))?;
        if filter.is_empty() {
            return Err(format!("{s:?}: the topic filter is empty"));
        }
        let ns = Namespace::new(ns).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Import {
            filter: filter.to_owned(),
            ns,
        })
    }

    /// The topic levels a message on `topic` adds below [`Import::ns`], or `None` when the filter
    /// does not match. Levels matched by `+` and `#` count; fixed levels of the filter do not.
    pub fn levels<'t>(&self, topic: &'t str) -> Option<Vec<&'t str>> {
        let mut out = Vec::new();
        let mut t = topic.split('/');
        for f in self.filter.split('/') {
            match f {
                "#" => {
                    out.extend(t.by_ref());
                    return Some(out);
                }
                "+" => out.push(t.next()?),
                fixed => {
                    if t.next()? != fixed {
                        return None;
                    }
                }
            }
        }
        t.next().is_none().then_some(out)
    }

    /// The namespace and data for a message, or why it is skipped.
    ///
    /// # Errors
    /// [`ImportSkip`] saying why.
    pub fn convert(
        &self,
        levels: &[&str],
        payload: &[u8],
    ) -> Result<(Namespace, Value), ImportSkip> {
        let mut ns = self.ns.clone();
        for level in levels.iter().filter(|l| !l.is_empty()) {
            let part =
                sanitize_level(level).ok_or_else(|| ImportSkip::BadLevel((*level).to_owned()))?;
            ns = ns
                .join(&part)
                .map_err(|e| ImportSkip::BadNamespace(e.to_string()))?;
        }
        let text = std::str::from_utf8(payload).map_err(|_| ImportSkip::NotText)?;
        Ok((ns, payload_value(text)))
    }
}

/// A topic level as a namespace part: lower-cased, characters outside `[a-z0-9_-]` made `_`,
/// cut to 64; `None` when it does not start with a letter.
pub fn sanitize_level(level: &str) -> Option<String> {
    let s: String = level
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    s.starts_with(|c: char| c.is_ascii_lowercase()).then_some(s)
}

/// An MQTT payload as thing data: JSON when it parses, otherwise the text itself.
pub fn payload_value(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|_| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics {
            prefix: "thingsbus".into(),
            discovery_prefix: "homeassistant".into(),
        }
    }

    #[test]
    fn things_map_to_topics_and_payloads() {
        let t = topics();
        assert_eq!(t.state("shop.door"), "thingsbus/shop/door");
        assert_eq!(
            t.availability("shop.door"),
            "thingsbus/shop/door/availability"
        );
        assert_eq!(t.field("shop.door", "a/b+c#"), "thingsbus/shop/door/a_b_c_");
        assert_eq!(
            state_payload(r#"{"open":true}"#, 1.5),
            r#"{"data":{"open":true},"ts":1.5}"#
        );
        assert_eq!(field_payload(&json!(21.5)), "21.5");
        assert_eq!(field_payload(&json!("on")), "on");
        assert_eq!(field_payload(&json!([1])), "[1]");
        assert!(t.is_own("thingsbus/shop/door") && t.is_own("homeassistant/sensor/x/config"));
        assert_eq!(
            t.set_target("thingsbus/demo/led/set")
                .map(|n| n.to_string()),
            Some("demo.led".into())
        );
        assert_eq!(t.set_target("thingsbus/demo/led"), None);
        assert_eq!(t.set_target("thingsbus/Demo/set"), None);
        assert_eq!(t.set_target("other/demo/set"), None);
        assert!(!t.is_own("thingsbusx/y") && !t.is_own("zigbee2mqtt/x"));
    }

    #[test]
    fn discovery_announces_numbers_and_booleans_only() {
        let configs = topics().discovery(
            "shop.door",
            &json!({"open": true, "temp": 21.5, "label": "x"}),
            false,
        );
        assert_eq!(configs.len(), 2);
        let (topic, payload) = &configs[0];
        assert_eq!(topic, "homeassistant/binary_sensor/shop_door/open/config");
        let c: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(c["state_topic"], "thingsbus/shop/door");
        assert_eq!(c["availability_topic"], "thingsbus/shop/door/availability");
        assert_eq!(c["unique_id"], "thingsbus_shop_door_open");
        assert_eq!(
            c["value_template"],
            r#"{{ 'ON' if value_json.data["open"] else 'OFF' }}"#
        );
        assert_eq!(c["device"]["identifiers"][0], "thingsbus_shop_door");
        assert_eq!(configs[1].0, "homeassistant/sensor/shop_door/temp/config");
        let scalar = topics().discovery("garden.temp", &json!(3), false);
        // A thing that obeys commands: its booleans are switches.
        let led = topics().discovery("demo.led", &json!({"on": true}), true);
        assert_eq!(led[0].0, "homeassistant/switch/demo_led/on/config");
        let c: Value = serde_json::from_str(&led[0].1).unwrap();
        assert_eq!(c["command_topic"], "thingsbus/demo/led/set");
        assert_eq!(c["payload_on"], r#"{"on":true}"#);
        assert_eq!(c["state_on"], "ON");
        assert_eq!(scalar[0].0, "homeassistant/sensor/garden_temp/value/config");
    }

    #[test]
    fn imports_match_filters_and_sanitise_levels() {
        let i = Import::parse("zigbee2mqtt/#=home.z2m").unwrap();
        assert_eq!(
            i.levels("zigbee2mqtt/Living Room/Temp"),
            Some(vec!["Living Room", "Temp"])
        );
        assert_eq!(i.levels("other/x"), None);
        let (ns, v) = i.convert(&["Living Room", "Temp"], b"21.5").unwrap();
        assert_eq!((ns.as_str(), v), ("home.z2m.living_room.temp", json!(21.5)));
        assert_eq!(i.convert(&["x"], br#"{"a":1}"#).unwrap().1, json!({"a": 1}));
        assert_eq!(i.convert(&["x"], b"hello").unwrap().1, json!("hello"));
        assert_eq!(
            i.convert(&["1st"], b"1"),
            Err(ImportSkip::BadLevel("1st".into()))
        );
        assert_eq!(i.convert(&["x"], &[0xff]), Err(ImportSkip::NotText));
        let plus = Import::parse("sensors/+/temp=s").unwrap();
        assert_eq!(plus.levels("sensors/kitchen/temp"), Some(vec!["kitchen"]));
        assert_eq!(plus.levels("sensors/kitchen/humidity"), None);
        assert_eq!(plus.levels("sensors/kitchen/temp/x"), None);
        assert!(Import::parse("nofilter").is_err());
        assert!(Import::parse("a/#=Bad").is_err());
        assert_eq!(sanitize_level("Room 1"), Some("room_1".into()));
        assert_eq!(
            sanitize_level("ÉTAGE"),
            None,
            "a namespace part starts with a-z"
        );
        assert_eq!(sanitize_level(&"a".repeat(100)).map(|s| s.len()), Some(64));
    }
}
