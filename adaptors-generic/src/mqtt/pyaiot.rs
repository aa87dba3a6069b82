//! `--pyaiot-nodes BASE`: pyaiot's MQTT gateway protocol, as plain state. An MQTT message, a
//! command or the clock comes in with `now`; out come [`Action`]s — MQTT messages to publish,
//! things to publish, commands to answer. [`serve`] carries them out.
//!
//! The protocol, as pyaiot's gateway and its test node (`utils/mqtt/mqtt-test-node.py`) speak
//! it, all at QoS 1, nothing retained:
//! - a node publishes `node/check` with `{"id": "<node_id>"}` about every 30 s; for a node it
//!   has not seen, or one that was offline, the gateway publishes `gateway/<node_id>/discover`
//!   with the text `resources`;
//! - the node answers on `node/<node_id>/resources` with a JSON list of names; the gateway then
//!   publishes `gateway/<node_id>/discover` with `values`;
//! - the node publishes each `node/<node_id>/<resource>` as `{"value": ...}`, then and whenever
//!   it likes; text values go through [`parse_value`] (`"23°C"` → `{"value": 23, "unit": "°C"}`);
//! - a command to `<BASE>.<node>.<resource>` publishes its data as text on
//!   `gateway/<node_id>/<resource>/set`; the node's next report of that resource is the reply,
//!   or `timeout` at the deadline;
//! - every 30 s the gateway publishes an empty `gateway/check` (pyaiot asks its nodes to check
//!   in); a node silent past `--max-time` is `online: false` at once.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{AsyncClient, QoS};
use serde_json::Value;
use thingsbus_adaptor::Adaptor;
use tokio::sync::mpsc;

use crate::pyaiot::commands::{Command, Waiting, TIMEOUT};
use crate::pyaiot::nodes::{Alive, Nodes, Update};
use crate::pyaiot::value::{parse_value, put_payload};

crate::counters! {
    /// What `--pyaiot-nodes` counted, logged every `--report-interval` and on exit.
    pub struct PyaiotCounts {
        checks: "node/check messages from nodes",
        values: "resource values published",
        malformed: "node messages that do not parse: not JSON, no id, a node id unfit for a topic, no value, too long",
        unknown_node: "values and resource lists from nodes that did not check in (or are offline)",
        refused_nodes: "checks from new nodes beyond --pyaiot-max-nodes",
        refused_resources: "values of new resources beyond --pyaiot-max-resources",
        commands_ok: "commands the node answered with a new value",
        commands_failed: "commands to unknown or offline nodes, refused, or timed out",
        dropped: "MQTT messages to nodes dropped (the client's queue was full)",
    }
}

/// The topics the gateway subscribes to.
pub const FILTERS: [&str; 2] = ["node/check", "node/+/+"];

/// Every 30 s, as pyaiot: an empty message on this topic asks the nodes to check in.
pub const CHECK_TOPIC: &str = "gateway/check";

/// How often [`CHECK_TOPIC`] is published.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Nodes kept at most.
    pub max_nodes: usize,
    /// Resources kept per node at most.
    pub max_resources: usize,
    /// Silence after which a node is offline.
    pub max_time: Duration,
    /// The longest node message read, in bytes.
    pub max_payload: usize,
    /// Commands waiting for their node at most.
    pub max_waiting: usize,
}

/// Something for the MQTT side to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish on the MQTT broker (QoS 1, not retained).
    Mqtt {
        /// The topic.
        topic: String,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Publish a thing below the base namespace.
    Publish(Update),
    /// Answer the command [`Gateway::command`] was given with `id`.
    Reply {
        /// The command's id.
        id: u64,
        /// Its reply data, or why it failed.
        result: Result<Value, String>,
    },
}

/// A node id fit for pyaiot's topics: one topic level, no wildcards, at most 128 bytes.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.contains(['/', '+', '#', '\0'])
}

/// The gateway's whole state; see the module docs for its rules.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    nodes: Nodes<()>,
    waiting: Waiting,
    counts: PyaiotCounts,
    out: Vec<Action>,
}

impl Gateway {
    /// No nodes yet.
    pub fn new(config: Config) -> Gateway {
        Gateway {
            nodes: Nodes::new(config.max_nodes, config.max_resources),
            waiting: Waiting::new(config.max_waiting),
            config,
            counts: PyaiotCounts::default(),
            out: Vec::new(),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> &PyaiotCounts {
        &self.counts
    }

    /// When [`Gateway::tick`] has a deadline to keep.
    pub fn next_wake(&self) -> Option<Instant> {
        self.waiting.next_deadline()
    }

    /// A message on one of [`FILTERS`], at `now` (`wall`: the same instant in seconds since
    /// 1970).
    pub fn message(&mut self, topic: &str, payload: &[u8], now: Instant, wall: f64) -> Vec<Action> {
        let mut levels = topic.split('/');
        let (Some("node"), Some(second), third, None) =
            (levels.next(), levels.next(), levels.next(), levels.next())
        else {
            return Vec::new();
        };
        if payload.len() > self.config.max_payload {
            tracing::debug!(%topic, len = payload.len(), "node message too long");
            self.counts.malformed.inc();
            return Vec::new();
        }
        let Ok(json) = serde_json::from_slice::<Value>(payload) else {
            tracing::debug!(%topic, "node message is not JSON");
            self.counts.malformed.inc();
            return Vec::new();
        };
        match (second, third) {
            ("check", None) => self.check(&json, now, wall),
            (id, Some("resources")) => self.resources(id, &json),
            (id, Some(resource)) => self.value(id, resource, &json),
            (_, None) => {}
        }
        self.take()
    }

    /// A command to `<node>.<resource>` (relative to the base namespace), to be answered by
    /// `deadline`: its data as text on `gateway/<node_id>/<resource>/set`.
    pub fn command(&mut self, id: u64, rel: &str, data: &Value, deadline: Instant) -> Vec<Action> {
        let target = match rel.split_once('.') {
            None => Err(format!("{rel:?} is not <node>.<resource>")),
            Some((node, resource)) => match self.nodes.find(node, resource) {
                None => Err(format!("no resource {resource:?} on a node {node:?}")),
                Some((n, _)) if !n.online => Err(format!("the node {:?} is offline", n.uid)),
                Some((n, name)) => Ok((n.uid.clone(), name.to_owned())),
            },
        };
        let result = target.and_then(|(uid, resource)| {
            self.waiting.add(id, &uid, &resource, deadline)?;
            self.out.push(Action::Mqtt {
                topic: format!("gateway/{uid}/{resource}/set"),
                payload: put_payload(data).into_bytes(),
            });
            Ok(())
        });
        if let Err(e) = result {
            self.counts.commands_failed.inc();
            self.out.push(Action::Reply { id, result: Err(e) });
        }
        self.take()
    }

    /// The clock: nodes silent past `--max-time` go offline, commands past their deadline
    /// time out.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        for u in self.nodes.sweep(now, self.config.max_time) {
            self.out.push(Action::Publish(u));
        }
        for id in self.waiting.expire(now) {
            self.counts.commands_failed.inc();
            self.out.push(Action::Reply {
                id,
                result: Err(TIMEOUT.to_owned()),
            });
        }
        self.take()
    }

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    fn discover(&mut self, id: &str, what: &str) {
        self.out.push(Action::Mqtt {
            topic: format!("gateway/{id}/discover"),
            payload: what.as_bytes().to_vec(),
        });
    }

    fn check(&mut self, json: &Value, now: Instant, wall: f64) {
        let Some(id) = json
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| valid_node_id(id))
        else {
            tracing::debug!(%json, "node/check without a usable id");
            self.counts.malformed.inc();
            return;
        };
        self.counts.checks.inc();
        match self.nodes.alive(id, false, (), now, wall) {
            Alive::Refused => self.counts.refused_nodes.inc(),
            Alive::Accepted {
                update,
                discover,
                evicted,
            } => {
                if let Some(gone) = evicted {
                    tracing::info!(uid = %gone, "offline node forgotten to make room (--pyaiot-max-nodes)");
                }
                self.out.push(Action::Publish(update));
                if discover {
                    tracing::info!(uid = %id, "MQTT node checked in; discovering its resources");
                    self.discover(id, "resources");
                }
            }
        }
    }

    fn online(&self, id: &str) -> bool {
        self.nodes.get(id).is_some_and(|n| n.online)
    }

    fn resources(&mut self, id: &str, json: &Value) {
        if !json
            .as_array()
            .is_some_and(|l| l.iter().all(Value::is_string))
        {
            self.counts.malformed.inc();
            return;
        }
        if !self.online(id) {
            self.counts.unknown_node.inc();
            return;
        }
        self.discover(id, "values");
    }

    fn value(&mut self, id: &str, resource: &str, json: &Value) {
        let Some(value) = json.get("value") else {
            self.counts.malformed.inc();
            return;
        };
        if !self.online(id) {
            self.counts.unknown_node.inc();
            return;
        }
        let data = match value {
            Value::String(s) => parse_value(s),
            other => other.clone(),
        };
        let updates = self.nodes.value(id, resource, data.clone());
        if updates.is_empty() {
            self.counts.refused_resources.inc();
            return;
        }
        self.counts.values.inc();
        self.out.extend(updates.into_iter().map(Action::Publish));
        for cid in self.waiting.report(id, resource) {
            self.counts.commands_ok.inc();
            self.out.push(Action::Reply {
                id: cid,
                result: Ok(data.clone()),
            });
        }
    }
}

/// Runs `gateway` until `inbox` closes: MQTT messages on [`FILTERS`] arrive on `inbox`,
/// commands on `commands` (from [`crate::pyaiot::commands::accept`] on `adaptor`, whose
/// namespace is the nodes' base); MQTT messages go out through `mqtt`. Logs the counts every
/// `report_every` and on the way out, then closes the adaptor.
pub async fn serve(
    mut gateway: Gateway,
    adaptor: Adaptor,
    mqtt: AsyncClient,
    mut inbox: mpsc::Receiver<(String, Vec<u8>)>,
    mut commands: mpsc::Receiver<Command>,
    report_every: Duration,
) {
    let mut replies = HashMap::new();
    let mut next_id = 0u64;
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.tick().await;
    let mut report = tokio::time::interval(report_every);
    report.tick().await;
    loop {
        let wake = gateway.next_wake();
        let actions = tokio::select! {
            m = inbox.recv() => match m {
                Some((topic, payload)) => gateway.message(
                    &topic,
                    &payload,
                    Instant::now(),
                    crate::pyaiot::epoch(SystemTime::now()),
                ),
                None => break,
            },
            Some(c) = commands.recv() => {
                next_id += 1;
                let deadline = c.deadline_at(Instant::now());
                replies.insert(next_id, c.reply);
                gateway.command(next_id, &c.rel, &c.data, deadline)
            }
            () = sleep_until(wake) => gateway.tick(Instant::now()),
            _ = sweep.tick() => gateway.tick(Instant::now()),
            _ = check.tick() => vec![Action::Mqtt { topic: CHECK_TOPIC.to_owned(), payload: Vec::new() }],
            _ = report.tick() => {
                gateway.counts().log("pyaiot nodes report");
                continue;
            }
        };
        for action in actions {
            match action {
                Action::Mqtt { topic, payload } => {
                    if mqtt
                        .try_publish(topic, QoS::AtLeastOnce, false, payload)
                        .is_err()
                    {
                        gateway.counts().dropped.inc();
                    }
                }
                Action::Publish(u) => {
                    if let Err(e) = adaptor.send_to(&u.sub, &u.data, None) {
                        tracing::warn!(thing = %u.sub, error = %e, "update not sent");
                    }
                }
                Action::Reply { id, result } => {
                    if let Some(reply) = replies.remove(&id) {
                        let _ = reply.send(result);
                    }
                }
            }
        }
    }
    gateway.counts().log("pyaiot nodes stopped");
    adaptor.close(Duration::from_secs(1));
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gateway() -> Gateway {
        Gateway::new(Config {
            max_nodes: 2,
            max_resources: 3,
            max_time: Duration::from_secs(120),
            max_payload: 100,
            max_waiting: 2,
        })
    }

    fn mqtt(actions: &[Action]) -> Vec<(String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Mqtt { topic, payload } => {
                    Some((topic.clone(), String::from_utf8_lossy(payload).into_owned()))
                }
                _ => None,
            })
            .collect()
    }

    fn published(actions: &[Action]) -> Vec<&Update> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish(u) => Some(u),
                _ => None,
            })
            .collect()
    }

    fn replies(actions: &[Action]) -> Vec<(u64, Result<Value, String>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reply { id, result } => Some((*id, result.clone())),
                _ => None,
            })
            .collect()
    }

    fn pair(t: &str, p: &str) -> (String, String) {
        (t.to_owned(), p.to_owned())
    }

    /// A node that checked in and reported its led.
    fn with_node(g: &mut Gateway, t0: Instant) {
        g.message("node/check", br#"{"id": "n1"}"#, t0, 10.0);
        g.message("node/n1/led", br#"{"value": "0"}"#, t0, 10.0);
    }

    #[test]
    fn a_new_node_is_published_and_asked_for_its_resources_then_its_values() {
        let t0 = Instant::now();
        let mut g = gateway();
        let a = g.message("node/check", br#"{"id": "mqtt_test_node"}"#, t0, 10.0);
        assert_eq!(
            published(&a)[0].data,
            json!({"uid": "mqtt_test_node", "online": true, "last_alive": 10.0, "resources": []})
        );
        assert_eq!(
            mqtt(&a),
            [pair("gateway/mqtt_test_node/discover", "resources")]
        );
        let a = g.message(
            "node/mqtt_test_node/resources",
            br#"["name", "led", "temperature"]"#,
            t0,
            10.0,
        );
        assert_eq!(
            mqtt(&a),
            [pair("gateway/mqtt_test_node/discover", "values")]
        );
        // A check from a known, online node: its thing again, no discovery.
        let a = g.message("node/check", br#"{"id": "mqtt_test_node"}"#, t0, 40.0);
        assert!(mqtt(&a).is_empty());
        assert_eq!(published(&a)[0].data["last_alive"], 40.0);
        assert_eq!(g.counts().checks.get(), 2);
    }

    #[test]
    fn values_become_things_with_units_and_the_node_lists_its_resources() {
        let t0 = Instant::now();
        let mut g = gateway();
        g.message("node/check", br#"{"id": "n1"}"#, t0, 10.0);
        let a = g.message(
            "node/n1/temperature",
            r#"{"value": "23°C"}"#.as_bytes(),
            t0,
            10.0,
        );
        let p = published(&a);
        assert_eq!(p[0].sub, "n1");
        assert_eq!(p[0].data["resources"], json!(["temperature"]));
        assert_eq!(p[1].sub, "n1.temperature");
        assert_eq!(p[1].data, json!({"value": 23, "unit": "°C"}));
        let a = g.message("node/n1/count", br#"{"value": 7}"#, t0, 10.0);
        assert_eq!(
            published(&a)[1].data,
            json!(7),
            "JSON values stay as they are"
        );
        let a = g.message("node/n1/name", br#"{"value": "MQTT test node"}"#, t0, 10.0);
        assert_eq!(published(&a)[1].data, json!("MQTT test node"));
        assert_eq!(g.counts().values.get(), 3);
        let a = g.message("node/n1/pressure", br#"{"value": "1000hPa"}"#, t0, 10.0);
        assert!(a.is_empty(), "beyond --pyaiot-max-resources");
        assert_eq!(g.counts().refused_resources.get(), 1);
    }

    #[test]
    fn malformed_messages_are_counted_and_change_nothing() {
        let t0 = Instant::now();
        let mut g = gateway();
        with_node(&mut g, t0);
        let long = format!(r#"{{"value": "{}"}}"#, "x".repeat(200));
        for (topic, payload) in [
            ("node/check", "not json"),
            ("node/check", r#"{"uid": "n1"}"#),
            ("node/check", r#"{"id": 5}"#),
            ("node/check", r#"{"id": "a/b"}"#),
            ("node/check", r##"{"id": "#"}"##),
            ("node/check", r#"{"id": ""}"#),
            ("node/n1/resources", r#"{"led": 1}"#),
            ("node/n1/resources", r#"["led", 2]"#),
            ("node/n1/led", r#"{"val": 1}"#),
            ("node/n1/led", long.as_str()),
            ("node/n1/led", "\u{0}\u{ff}"),
        ] {
            let a = g.message(topic, payload.as_bytes(), t0, 11.0);
            assert!(a.is_empty(), "{topic} {payload}: {a:?}");
        }
        assert_eq!(g.counts().malformed.get(), 11);
        // Topics outside the protocol are not its business.
        assert!(g.message("node/a/b/c", b"{}", t0, 1.0).is_empty());
        assert!(g.message("other/x", b"{}", t0, 1.0).is_empty());
        assert_eq!(g.counts().malformed.get(), 11);
        // The node is untouched.
        let a = g.message("node/n1/led", br#"{"value": "1"}"#, t0, 12.0);
        assert_eq!(published(&a)[0].data, json!(1));
    }

    #[test]
    fn nodes_that_did_not_check_in_are_not_heard_and_new_nodes_beyond_the_limit_refused() {
        let t0 = Instant::now();
        let mut g = gateway();
        assert!(g
            .message("node/x/led", br#"{"value": 1}"#, t0, 1.0)
            .is_empty());
        assert!(g
            .message("node/x/resources", br#"["led"]"#, t0, 1.0)
            .is_empty());
        assert_eq!(g.counts().unknown_node.get(), 2);
        g.message("node/check", br#"{"id": "a"}"#, t0, 1.0);
        g.message("node/check", br#"{"id": "b"}"#, t0, 1.0);
        assert!(g
            .message("node/check", br#"{"id": "c"}"#, t0, 1.0)
            .is_empty());
        assert_eq!(g.counts().refused_nodes.get(), 1);
    }

    #[test]
    fn silent_nodes_go_offline_are_not_heard_then_and_a_check_discovers_them_again() {
        let t0 = Instant::now();
        let mut g = gateway();
        with_node(&mut g, t0);
        assert!(g.tick(t0 + Duration::from_secs(120)).is_empty());
        let a = g.tick(t0 + Duration::from_secs(121));
        assert_eq!(published(&a)[0].data["online"], false);
        assert!(g.tick(t0 + Duration::from_secs(200)).is_empty(), "once");
        assert!(g
            .message("node/n1/led", br#"{"value": "1"}"#, t0, 1.0)
            .is_empty());
        assert_eq!(g.counts().unknown_node.get(), 1);
        let back = t0 + Duration::from_secs(201);
        let a = g.message("node/check", br#"{"id": "n1"}"#, back, 300.0);
        assert_eq!(published(&a)[0].data["online"], true);
        assert_eq!(mqtt(&a), [pair("gateway/n1/discover", "resources")]);
    }

    #[test]
    fn a_command_is_published_as_text_and_answered_by_the_next_report() {
        let t0 = Instant::now();
        let mut g = gateway();
        with_node(&mut g, t0);
        let deadline = t0 + Duration::from_secs(5);
        let a = g.command(1, "n1.led", &json!("1"), deadline);
        assert_eq!(mqtt(&a), [pair("gateway/n1/led/set", "1")]);
        let a = g.command(2, "n1.led", &json!({"on": true}), deadline);
        assert_eq!(mqtt(&a), [pair("gateway/n1/led/set", r#"{"on":true}"#)]);
        // Another resource's report answers nothing.
        g.message("node/n1/temperature", br#"{"value": "20C"}"#, t0, 1.0);
        let a = g.message("node/n1/led", br#"{"value": "1"}"#, t0, 1.0);
        assert_eq!(replies(&a), [(1, Ok(json!(1))), (2, Ok(json!(1)))]);
        assert_eq!(g.counts().commands_ok.get(), 2);
    }

    #[test]
    fn commands_fail_for_unknown_things_offline_nodes_a_full_table_and_time_out() {
        let t0 = Instant::now();
        let mut g = gateway();
        with_node(&mut g, t0);
        let deadline = t0 + Duration::from_secs(5);
        let err = |a: Vec<Action>| match replies(&a).as_slice() {
            [(_, Err(e))] => e.clone(),
            other => panic!("{other:?}"),
        };
        assert!(err(g.command(1, "n1", &json!(1), deadline)).contains("is not <node>.<resource>"));
        assert!(err(g.command(2, "n1.nothing", &json!(1), deadline)).contains("no resource"));
        assert!(err(g.command(3, "n9.led", &json!(1), deadline)).contains("no resource"));
        assert!(mqtt(&g.command(4, "n1.led", &json!(1), deadline)).len() == 1);
        assert!(mqtt(&g.command(5, "n1.led", &json!(1), deadline)).len() == 1);
        assert!(err(g.command(6, "n1.led", &json!(1), deadline)).contains("already wait"));
        assert!(g.tick(t0 + Duration::from_secs(4)).is_empty());
        let a = g.tick(deadline);
        assert_eq!(
            replies(&a),
            [(4, Err("timeout".into())), (5, Err("timeout".into()))]
        );
        assert_eq!(g.next_wake(), None);
        g.tick(t0 + Duration::from_secs(121));
        assert!(err(g.command(7, "n1.led", &json!(1), deadline)).contains("offline"));
        assert_eq!(g.counts().commands_failed.get(), 7);
    }

    #[test]
    fn node_ids_fit_for_topics() {
        assert!(valid_node_id("mqtt_test_node"));
        assert!(valid_node_id("pycom-1234"));
        for bad in ["", "a/b", "a+", "#", "a\0b"] {
            assert!(!valid_node_id(bad), "{bad:?}");
        }
        assert!(!valid_node_id(&"x".repeat(129)));
    }
}
