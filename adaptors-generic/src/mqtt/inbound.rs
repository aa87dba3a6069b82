//! MQTT → bus as plain decisions: what a message on a subscribed topic becomes — a command to
//! a thing (`<prefix>/<ns>/set` with `--commands`), an imported update (`--import`), or nothing.

use serde_json::Value;
use thingsbus_protocol::Namespace;

use super::topics::{payload_value, Import, ImportSkip, Topics};

/// What an MQTT message becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A command to the thing `ns`; its outcome goes to `result_topic`.
    Command {
        /// The thing.
        ns: Namespace,
        /// The payload as JSON (or text; `null` when not UTF-8).
        data: Value,
        /// `<topic>/result`.
        result_topic: String,
    },
    /// An update to send to the bus.
    Import(Namespace, Value),
    /// An import that cannot be made.
    Skip(ImportSkip),
    /// A topic the bridge itself publishes on: never imported back.
    Own,
    /// Nothing to do.
    Ignore,
}

/// The MQTT side of the bridge: its topics, imports and whether `set` topics are commands.
#[derive(Debug, Clone)]
pub struct Routes {
    /// The bridge's own topics.
    pub topics: Topics,
    /// `--import` rules, first match wins.
    pub imports: Vec<Import>,
    /// `--commands`.
    pub commands: bool,
}

impl Routes {
    /// The topic filters to subscribe to on every connection.
    pub fn filters(&self) -> Vec<String> {
        let mut filters: Vec<String> = self.imports.iter().map(|i| i.filter.clone()).collect();
        if self.commands {
            filters.push(format!("{}/#", self.topics.prefix));
        }
        filters
    }

    /// What a message becomes; `is_thing(ns)` says whether the bus has that thing.
    pub fn route(&self, topic: &str, payload: &[u8], is_thing: impl Fn(&str) -> bool) -> Inbound {
        // A bus thing that itself ends in `.set` shows up on the same topic: that is the
        // bridge's own publication, not a command.
        let target = self
            .topics
            .set_target(topic)
            .filter(|ns| self.commands && !is_thing(&format!("{ns}.set")));
        if let Some(ns) = target {
            let data = std::str::from_utf8(payload).map_or(Value::Null, payload_value);
            return Inbound::Command {
                ns,
                data,
                result_topic: format!("{topic}/result"),
            };
        }
        if self.imports.is_empty() {
            return Inbound::Ignore;
        }
        if self.topics.is_own(topic) {
            return Inbound::Own;
        }
        for i in &self.imports {
            if let Some(levels) = i.levels(topic) {
                return match i.convert(&levels, payload) {
                    Ok((ns, data)) => Inbound::Import(ns, data),
                    Err(skip) => Inbound::Skip(skip),
                };
            }
        }
        Inbound::Ignore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routes(imports: &[&str], commands: bool) -> Routes {
        Routes {
            topics: Topics {
                prefix: "tb".into(),
                discovery_prefix: "ha".into(),
            },
            imports: imports.iter().map(|i| Import::parse(i).unwrap()).collect(),
            commands,
        }
    }

    fn ns(s: &str) -> Namespace {
        Namespace::new(s).unwrap()
    }

    #[test]
    fn subscriptions_are_the_imports_and_the_set_topics() {
        assert_eq!(routes(&["z/#=h.z"], true).filters(), ["z/#", "tb/#"]);
        assert!(routes(&[], false).filters().is_empty());
    }

    #[test]
    fn set_topics_are_commands_unless_a_thing_of_that_name_exists() {
        let r = routes(&[], true);
        assert_eq!(
            r.route("tb/demo/led/set", br#"{"on":true}"#, |_| false),
            Inbound::Command {
                ns: ns("demo.led"),
                data: json!({"on": true}),
                result_topic: "tb/demo/led/set/result".into()
            }
        );
        assert_eq!(
            r.route("tb/demo/led/set", b"on", |_| false),
            Inbound::Command {
                ns: ns("demo.led"),
                data: json!("on"),
                result_topic: "tb/demo/led/set/result".into()
            }
        );
        assert_eq!(
            r.route("tb/demo/led/set", b"1", |n| n == "demo.led.set"),
            Inbound::Ignore
        );
        assert_eq!(
            routes(&[], false).route("tb/demo/led/set", b"1", |_| false),
            Inbound::Ignore
        );
    }

    #[test]
    fn imports_skip_own_topics_and_unconvertible_ones() {
        let r = routes(&["z2m/#=home.z2m"], false);
        assert_eq!(
            r.route("z2m/Lamp", b"{\"on\":true}", |_| false),
            Inbound::Import(ns("home.z2m.lamp"), json!({"on": true}))
        );
        assert_eq!(r.route("tb/x", b"1", |_| false), Inbound::Own);
        assert_eq!(r.route("ha/sensor/x/config", b"1", |_| false), Inbound::Own);
        assert_eq!(
            r.route("z2m/1st", b"1", |_| false),
            Inbound::Skip(ImportSkip::BadLevel("1st".into()))
        );
        assert_eq!(r.route("other/x", b"1", |_| false), Inbound::Ignore);
        assert_eq!(
            routes(&[], false).route("tb/x", b"1", |_| false),
            Inbound::Ignore,
            "no imports: own topics are not even counted"
        );
    }
}
