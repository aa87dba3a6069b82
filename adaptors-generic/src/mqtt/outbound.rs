//! Bus → MQTT as plain state: which retained topics each thing event writes, what Home
//! Assistant has been told, which things were last said online. Pure: `(topic, payload)` pairs
//! out; the bridge publishes them.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;
use thingsbus_client::Thing;

use super::topics::{field_payload, fields, state_payload, Topics};

/// The broker's own thing: it says which prefixes adaptors serve.
const BROKER_THING: &str = "thingsbus.broker";

/// What the bridge needs of a thing.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Its namespace.
    pub ns: &'a str,
    /// Its data, JSON text as received.
    pub data: &'a str,
    /// Its timestamp.
    pub ts: f64,
    /// True when it stopped reporting.
    pub stale: bool,
}

impl<'a> From<&'a Thing> for View<'a> {
    fn from(t: &'a Thing) -> View<'a> {
        View {
            ns: t.ns.as_str(),
            data: &t.data,
            ts: t.ts,
            stale: t.stale,
        }
    }
}

/// Retained publications to make: `(topic, payload)`.
pub type Publications = Vec<(String, String)>;

/// Bus → MQTT.
#[derive(Debug)]
pub struct Outbound {
    topics: Topics,
    flatten: bool,
    homeassistant: bool,
    online: HashMap<String, bool>,
    announced: HashMap<String, BTreeSet<String>>,
    /// Prefixes an adaptor serves (from the broker's thing): their booleans are switches.
    served: Vec<String>,
}

impl Outbound {
    /// Nothing published yet; `flatten` adds a topic per field, `homeassistant` discovery
    /// configs.
    pub fn new(topics: Topics, flatten: bool, homeassistant: bool) -> Outbound {
        Outbound {
            topics,
            flatten,
            homeassistant,
            online: HashMap::new(),
            announced: HashMap::new(),
            served: Vec::new(),
        }
    }

    /// True when `t` is the broker's thing and says other prefixes are served than before
    /// (only with Home Assistant discovery): which things obey commands changed, so everything
    /// is to be announced again, before `t` itself.
    pub fn served_changed(&mut self, t: View<'_>) -> bool {
        if t.ns != BROKER_THING || !self.homeassistant {
            return false;
        }
        let value: Value = serde_json::from_str(t.data).unwrap_or(Value::Null);
        let served: Vec<String> = value["commands"]["served"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if served == self.served {
            return false;
        }
        self.served = served;
        true
    }

    /// A thing's update (or snapshot entry): its state, its fields with `--flatten`, discovery
    /// configs for fields Home Assistant has not been told of, and its availability when it
    /// changed.
    pub fn thing(&mut self, t: View<'_>, out: &mut Publications) {
        let ns = t.ns;
        out.push((self.topics.state(ns), state_payload(t.data, t.ts)));
        let value: Value = serde_json::from_str(t.data).unwrap_or(Value::Null);
        if self.flatten {
            if let Some(fields) = fields(&value) {
                for (k, v) in fields {
                    out.push((self.topics.field(ns, k), field_payload(v)));
                }
            }
        }
        if self.homeassistant {
            let known = self.announced.entry(ns.to_owned()).or_default();
            let names: BTreeSet<String> = match &value {
                Value::Object(m) => m.keys().cloned().collect(),
                _ => BTreeSet::from(["value".to_owned()]),
            };
            if !names.is_subset(known) {
                known.extend(names);
                let commandable = self
                    .served
                    .iter()
                    .any(|p| thingsbus_protocol::namespace::is_within_str(ns, p));
                out.extend(self.topics.discovery(ns, &value, commandable));
            }
        }
        let online = !t.stale;
        if self.online.insert(ns.to_owned(), online) != Some(online) {
            let state = if online { "online" } else { "offline" };
            out.push((self.topics.availability(ns), state.to_owned()));
        }
    }

    /// A thing left the live window: offline.
    pub fn expired(&mut self, ns: &str, out: &mut Publications) {
        self.online.insert(ns.to_owned(), false);
        out.push((self.topics.availability(ns), "offline".to_owned()));
    }

    /// Everything again (after the MQTT broker came back, it may have lost retained topics;
    /// or after falling behind the bus), except the broker's own thing.
    pub fn republish_all<'a>(
        &mut self,
        things: impl IntoIterator<Item = View<'a>>,
        out: &mut Publications,
    ) {
        self.online.clear();
        self.announced.clear();
        for t in things {
            if t.ns != BROKER_THING {
                self.thing(t, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound(flatten: bool, homeassistant: bool) -> Outbound {
        Outbound::new(
            Topics {
                prefix: "tb".into(),
                discovery_prefix: "ha".into(),
            },
            flatten,
            homeassistant,
        )
    }

    fn view<'a>(ns: &'a str, data: &'a str, stale: bool) -> View<'a> {
        View {
            ns,
            data,
            ts: 2.5,
            stale,
        }
    }

    fn topics(out: &Publications) -> Vec<&str> {
        out.iter().map(|(t, _)| t.as_str()).collect()
    }

    #[test]
    fn an_update_writes_its_state_and_availability_once() {
        let mut o = outbound(false, false);
        let mut out = Vec::new();
        o.thing(view("shop.door", r#"{"open":true}"#, false), &mut out);
        assert_eq!(
            out,
            [
                (
                    "tb/shop/door".to_owned(),
                    r#"{"data":{"open":true},"ts":2.5}"#.to_owned()
                ),
                ("tb/shop/door/availability".to_owned(), "online".to_owned()),
            ]
        );
        out.clear();
        o.thing(view("shop.door", r#"{"open":false}"#, false), &mut out);
        assert_eq!(
            topics(&out),
            ["tb/shop/door"],
            "still online: no availability"
        );
        out.clear();
        o.thing(view("shop.door", r#"{"open":false}"#, true), &mut out);
        assert_eq!(
            out[1],
            ("tb/shop/door/availability".to_owned(), "offline".to_owned())
        );
        out.clear();
        o.expired("shop.door", &mut out);
        assert_eq!(
            out,
            [("tb/shop/door/availability".to_owned(), "offline".to_owned())]
        );
    }

    #[test]
    fn flatten_adds_a_topic_per_field_of_object_data() {
        let mut o = outbound(true, false);
        let mut out = Vec::new();
        o.thing(view("a", r#"{"t":21.5,"s":"on"}"#, false), &mut out);
        assert!(out.contains(&("tb/a/t".to_owned(), "21.5".to_owned())));
        assert!(out.contains(&("tb/a/s".to_owned(), "on".to_owned())));
        out.clear();
        o.thing(view("b", "3", false), &mut out);
        assert_eq!(topics(&out), ["tb/b", "tb/b/availability"]);
    }

    #[test]
    fn home_assistant_hears_of_each_field_once_and_again_after_a_republish() {
        let mut o = outbound(false, true);
        let mut out = Vec::new();
        o.thing(view("a", r#"{"t":1}"#, false), &mut out);
        assert!(topics(&out).contains(&"ha/sensor/a/t/config"));
        out.clear();
        o.thing(view("a", r#"{"t":2}"#, false), &mut out);
        assert_eq!(topics(&out), ["tb/a"]);
        out.clear();
        o.thing(view("a", r#"{"t":2,"on":true}"#, false), &mut out);
        assert!(
            topics(&out).contains(&"ha/binary_sensor/a/on/config"),
            "a new field"
        );
        out.clear();
        let broker = view(BROKER_THING, "{}", false);
        o.republish_all([view("a", r#"{"t":3}"#, false), broker], &mut out);
        assert_eq!(
            topics(&out),
            ["tb/a", "ha/sensor/a/t/config", "tb/a/availability"],
            "everything again, but not the broker's thing"
        );
    }

    #[test]
    fn served_prefixes_make_booleans_switches() {
        let mut o = outbound(false, true);
        let served = r#"{"commands":{"served":["demo"]}}"#;
        assert!(
            !o.served_changed(view("demo.led", served, false)),
            "not the broker's thing"
        );
        assert!(o.served_changed(view(BROKER_THING, served, false)));
        assert!(
            !o.served_changed(view(BROKER_THING, served, false)),
            "no change"
        );
        let mut out = Vec::new();
        o.thing(view("demo.led", r#"{"on":true}"#, false), &mut out);
        assert!(topics(&out).contains(&"ha/switch/demo_led/on/config"));
        let mut plain = outbound(false, false);
        assert!(
            !plain.served_changed(view(BROKER_THING, served, false)),
            "without discovery"
        );
    }
}
