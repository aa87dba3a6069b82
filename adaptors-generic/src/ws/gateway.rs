//! pyaiot's WebSocket gateway as plain state: a connection opens or closes, a message, a
//! command or the clock comes in; out come [`Action`]s — messages for a connection, closes,
//! things to publish, commands to answer. The connections' owner ([`super::serve`]) carries
//! them out.
//!
//! Rules (pyaiot's `gateway/ws` and its test client `utils/ws/ws_test_client.py`):
//! - a connection on `/node` is a node: named by itself (`/node?id=NAME`) or given a uid; it is
//!   sent `{"request": "discover"}` and its thing is `online: true` while it stays open;
//! - a message is JSON with a `type` of `new`, `update`, `out` or `reset`, as pyaiot checks
//!   it; anything else closes the connection (1003) and is counted; `update` carries `data`,
//!   an object of resource → value, each published as `<node>.<resource>`;
//! - when the connection closes the node is `online: false` at once, and commands waiting for
//!   it fail;
//! - a command to `<node>.<resource>` is sent as `{"endpoint": R, "data": D, "payload": T}`
//!   (`payload`, the data as text, is what pyaiot's own gateway sends and its nodes read); the
//!   node's next update of `R` is the reply, or `timeout` at the deadline.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pyaiot::commands::{Waiting, TIMEOUT};
use crate::pyaiot::nodes::{Alive, Nodes, Update};
use crate::pyaiot::value::{parse_value, put_payload};

crate::counters! {
    /// What the WebSocket gateway counted, logged every `--report-interval` and on exit.
    pub struct WsCounts {
        connections: "node connections accepted",
        refused: "connections refused: not /node, a bad name, a missing or wrong token, the handshake failed or took too long",
        replaced: "connections closed because a newer one took the same name",
        full: "connections refused because --max-nodes nodes are online",
        messages: "messages from nodes",
        malformed: "messages that are not pyaiot's JSON (the connection was closed), or too large",
        values: "resource values published",
        refused_resources: "values of new resources beyond --max-resources",
        too_slow: "connections closed because they did not read what was sent to them",
        silent: "connections closed because the node answered no ping for three --ping-interval",
        commands_ok: "commands the node answered with an update",
        commands_failed: "commands to unknown or closed nodes, refused, or timed out",
    }
}

/// The discover request, byte for byte as pyaiot's gateway writes it (Python's `json.dumps`,
/// with its spaces): pyaiot's nodes compare the text, not the JSON.
pub const DISCOVER: &str = r#"{"request": "discover"}"#;

/// The close code for a malformed message (RFC 6455 1003, as pyaiot).
pub const CLOSE_MALFORMED: u16 = 1003;
/// The close code for a connection another one with the same name replaced (policy, 1008).
pub const CLOSE_REPLACED: u16 = 1008;
/// The close code when no more nodes are taken (1013, try again later).
pub const CLOSE_FULL: u16 = 1013;

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Nodes kept at most (and connections open at most).
    pub max_nodes: usize,
    /// Resources kept per node at most.
    pub max_resources: usize,
    /// Commands waiting for their node at most.
    pub max_waiting: usize,
}

/// Something for the connections' owner to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a text message on a connection.
    Send {
        /// The connection.
        conn: u64,
        /// The message.
        text: String,
    },
    /// Close a connection.
    Close {
        /// The connection.
        conn: u64,
        /// The close code.
        code: u16,
        /// Why, for the node.
        reason: String,
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

/// A name a node may give itself (`/node?id=NAME`): 1 to 64 letters, digits, `-` and `_`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The node's name from a request's query string (`id=NAME`): `Ok(None)` when it gives none.
///
/// # Errors
/// A name that [`valid_name`] refuses, as the text for the node.
pub fn name_from_query(query: Option<&str>) -> Result<Option<String>, String> {
    let Some(id) = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("id="))
    else {
        return Ok(None);
    };
    if valid_name(id) {
        Ok(Some(id.to_owned()))
    } else {
        Err("a node's id is 1 to 64 letters, digits, '-' and '_'".into())
    }
}

/// The gateway's whole state; see the module docs for its rules.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    nodes: Nodes<IpAddr>,
    waiting: Waiting,
    counts: Arc<WsCounts>,
    /// Open connections → node uid, and back.
    uids: HashMap<u64, String>,
    conns: HashMap<String, u64>,
    /// For the uids of nodes that do not name themselves.
    seed: u64,
    next_uid: u64,
    out: Vec<Action>,
}

impl Gateway {
    /// No nodes yet; uids given to nodes start from `seed` (different for each run, so a
    /// restarted adaptor does not give out the last one's).
    pub fn new(config: Config, counts: Arc<WsCounts>, seed: u64) -> Gateway {
        Gateway {
            nodes: Nodes::new(config.max_nodes, config.max_resources),
            waiting: Waiting::new(config.max_waiting),
            config,
            counts,
            uids: HashMap::new(),
            conns: HashMap::new(),
            seed,
            next_uid: 0,
            out: Vec::new(),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> &WsCounts {
        &self.counts
    }

    /// When [`Gateway::tick`] has a deadline to keep.
    pub fn next_wake(&self) -> Option<Instant> {
        self.waiting.next_deadline()
    }

    /// Connection `conn` from `ip` opened, the node naming itself `name` (or not), at `now`
    /// (`wall`: the same instant in seconds since 1970).
    pub fn open(
        &mut self,
        conn: u64,
        name: Option<&str>,
        ip: IpAddr,
        now: Instant,
        wall: f64,
    ) -> Vec<Action> {
        let uid = match name {
            Some(n) => n.to_owned(),
            None => {
                self.next_uid += 1;
                format!(
                    "ws-{:012x}",
                    self.seed.wrapping_add(self.next_uid) & 0xffff_ffff_ffff
                )
            }
        };
        if let Some(old) = self.conns.remove(&uid) {
            // The newer connection wins: a node that lost its network comes back before the
            // old connection is known to be dead.
            self.uids.remove(&old);
            self.counts.replaced.inc();
            self.out.push(Action::Close {
                conn: old,
                code: CLOSE_REPLACED,
                reason: "replaced by a newer connection with the same id".into(),
            });
            for id in self.waiting.node_gone(&uid) {
                self.fail(id, format!("the node {uid:?} reconnected"));
            }
        }
        // Each connection is a fresh start (pyaiot makes a new node): resources are
        // rediscovered.
        match self.nodes.alive(&uid, true, ip, now, wall) {
            Alive::Refused => {
                self.counts.full.inc();
                self.out.push(Action::Close {
                    conn,
                    code: CLOSE_FULL,
                    reason: format!(
                        "{} nodes are online: try again later",
                        self.config.max_nodes
                    ),
                });
            }
            Alive::Accepted { update, .. } => {
                self.counts.connections.inc();
                tracing::info!(%uid, %ip, conn, "WebSocket node connected");
                self.uids.insert(conn, uid.clone());
                self.conns.insert(uid, conn);
                self.out.push(Action::Publish(update));
                self.out.push(Action::Send {
                    conn,
                    text: DISCOVER.to_owned(),
                });
            }
        }
        self.take()
    }

    /// A text message on `conn`.
    pub fn message(&mut self, conn: u64, text: &str) -> Vec<Action> {
        let Some(uid) = self.uids.get(&conn).cloned() else {
            return Vec::new();
        };
        self.counts.messages.inc();
        match check_message(text) {
            Err(reason) => {
                tracing::debug!(%uid, %reason, "malformed message: closing the node's connection");
                self.counts.malformed.inc();
                self.out.push(Action::Close {
                    conn,
                    code: CLOSE_MALFORMED,
                    reason,
                });
            }
            Ok(Message::Update(data)) => {
                for (resource, value) in data {
                    self.value(&uid, &resource, value);
                }
            }
            Ok(Message::Other(kind)) => {
                tracing::debug!(%uid, %kind, "message ignored (pyaiot acts only on update)");
            }
        }
        self.take()
    }

    /// A message too large (or not text) arrived on `conn`: counted; the connection is closed
    /// by its reader.
    pub fn oversized(&mut self) {
        self.counts.malformed.inc();
    }

    /// Connection `conn` closed: its node is offline at once; commands waiting for it fail.
    pub fn closed(&mut self, conn: u64) -> Vec<Action> {
        let Some(uid) = self.uids.remove(&conn) else {
            return Vec::new();
        };
        self.conns.remove(&uid);
        tracing::info!(%uid, conn, "WebSocket node disconnected");
        if let Some(u) = self.nodes.offline(&uid) {
            self.out.push(Action::Publish(u));
        }
        for id in self.waiting.node_gone(&uid) {
            self.fail(id, format!("the node {uid:?} closed its connection"));
        }
        self.take()
    }

    /// A command to `<node>.<resource>` (relative to the base namespace), to be answered by
    /// `deadline`.
    pub fn command(&mut self, id: u64, rel: &str, data: &Value, deadline: Instant) -> Vec<Action> {
        let target = match rel.split_once('.') {
            None => Err(format!("{rel:?} is not <node>.<resource>")),
            Some((node, resource)) => match self.nodes.find(node, resource) {
                None => Err(format!("no resource {resource:?} on a node {node:?}")),
                Some((n, name)) => match self.conns.get(&n.uid) {
                    None => Err(format!("the node {:?} is not connected", n.uid)),
                    Some(conn) => Ok((*conn, n.uid.clone(), name.to_owned())),
                },
            },
        };
        let result = target.and_then(|(conn, uid, resource)| {
            self.waiting.add(id, &uid, &resource, deadline)?;
            self.out.push(Action::Send {
                conn,
                text: json!({"endpoint": resource, "data": data, "payload": put_payload(data)})
                    .to_string(),
            });
            Ok(())
        });
        if let Err(e) = result {
            self.fail(id, e);
        }
        self.take()
    }

    /// The clock: commands past their deadline time out.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        for id in self.waiting.expire(now) {
            self.fail(id, TIMEOUT.to_owned());
        }
        self.take()
    }

    fn fail(&mut self, id: u64, error: String) {
        self.counts.commands_failed.inc();
        self.out.push(Action::Reply {
            id,
            result: Err(error),
        });
    }

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    fn value(&mut self, uid: &str, resource: &str, value: Value) {
        let data = match value {
            Value::String(s) => parse_value(&s),
            other => other,
        };
        let updates = self.nodes.value(uid, resource, data.clone());
        if updates.is_empty() {
            self.counts.refused_resources.inc();
            return;
        }
        self.counts.values.inc();
        self.out.extend(updates.into_iter().map(Action::Publish));
        for cid in self.waiting.report(uid, resource) {
            self.counts.commands_ok.inc();
            self.out.push(Action::Reply {
                id: cid,
                result: Ok(data.clone()),
            });
        }
    }
}

/// A node's message, as pyaiot's `Message.check_message` accepts it.
#[derive(Debug, PartialEq)]
enum Message {
    /// `update`: resource → value.
    Update(serde_json::Map<String, Value>),
    /// `new`, `out`, `reset`: valid, not acted on.
    Other(String),
}

fn check_message(text: &str) -> Result<Message, String> {
    let v: Value = serde_json::from_str(text)
        .map_err(|_| "Invalid message: only JSON format is supported.".to_owned())?;
    let Value::Object(mut m) = v else {
        return Err("Invalid message: a JSON object is expected.".into());
    };
    let kind = match m.get("type") {
        Some(Value::String(t)) if matches!(t.as_str(), "new" | "update" | "out" | "reset") => {
            t.clone()
        }
        Some(t) => return Err(format!("Invalid message type {t}.")),
        None => return Err("Invalid message: no type.".into()),
    };
    if kind != "update" {
        return Ok(Message::Other(kind));
    }
    match m.remove("data") {
        Some(Value::Object(data)) => Ok(Message::Update(data)),
        _ => Err("Invalid update: data is an object of resource values.".into()),
    }
}

/// How long a WebSocket handshake (and TLS before it) may take.
pub const HANDSHAKE_FOR: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn gateway(max_nodes: usize) -> Gateway {
        Gateway::new(
            Config {
                max_nodes,
                max_resources: 3,
                max_waiting: 2,
            },
            Arc::default(),
            0x10,
        )
    }

    fn sent(actions: &[Action]) -> Vec<(u64, Value)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { conn, text } => {
                    Some((*conn, serde_json::from_str(text).expect("JSON")))
                }
                _ => None,
            })
            .collect()
    }

    fn closes(actions: &[Action]) -> Vec<(u64, u16)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Close { conn, code, .. } => Some((*conn, *code)),
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

    /// Node `riot` on connection 1, with its led reported.
    fn with_node(g: &mut Gateway) {
        g.open(1, Some("riot"), IP, Instant::now(), 5.0);
        g.message(1, r#"{"type": "update", "data": {"led": "0"}}"#);
    }

    #[test]
    fn a_connection_is_a_node_online_and_asked_to_discover() {
        let mut g = gateway(10);
        let a = g.open(7, None, IP, Instant::now(), 5.0);
        let p = published(&a);
        assert_eq!(p[0].sub, "ws-000000000011");
        assert_eq!(
            p[0].data,
            json!({"uid": "ws-000000000011", "address": "127.0.0.1", "online": true, "last_alive": 5.0, "resources": []})
        );
        assert_eq!(sent(&a), [(7, json!({"request": "discover"}))]);
        assert!(
            a.contains(&Action::Send {
                conn: 7,
                text: r#"{"request": "discover"}"#.into()
            }),
            "the text pyaiot's nodes compare with"
        );
        let a = g.open(8, Some("Board_1"), IP, Instant::now(), 5.0);
        assert_eq!(published(&a)[0].sub, "board_1");
        assert_eq!(published(&a)[0].data["uid"], "Board_1");
        assert_eq!(g.counts().connections.get(), 2);
    }

    #[test]
    fn updates_become_values_with_units_and_other_types_are_ignored() {
        let mut g = gateway(10);
        g.open(1, Some("riot"), IP, Instant::now(), 5.0);
        let a = g.message(
            1,
            r#"{"type": "update", "data": {"node": "fd00:aaaa:bbbb::1", "temperature": "23°C", "count": 3}}"#,
        );
        let subs: Vec<(&str, &Value)> = published(&a)
            .iter()
            .map(|u| (u.sub.as_str(), &u.data))
            .filter(|(s, _)| s.contains('.'))
            .collect();
        assert_eq!(
            subs,
            [
                ("riot.count", &json!(3)),
                ("riot.node", &json!("fd00:aaaa:bbbb::1")),
                ("riot.temperature", &json!({"value": 23, "unit": "°C"})),
            ]
        );
        assert_eq!(g.counts().values.get(), 3);
        let a = g.message(1, r#"{"type": "update", "data": {"led": "0"}}"#);
        assert!(a.is_empty(), "beyond --max-resources: {a:?}");
        assert_eq!(g.counts().refused_resources.get(), 1);
        for kind in ["new", "out", "reset"] {
            assert!(g.message(1, &json!({"type": kind}).to_string()).is_empty());
        }
        assert_eq!(g.counts().malformed.get(), 0);
    }

    #[test]
    fn a_malformed_message_closes_that_connection_only() {
        for bad in [
            "not json",
            "[1, 2]",
            r#"{"data": {"led": 1}}"#,
            r#"{"type": "hello"}"#,
            r#"{"type": 5}"#,
            r#"{"type": "update", "data": [1]}"#,
            r#"{"type": "update"}"#,
        ] {
            let mut g = gateway(10);
            with_node(&mut g);
            g.open(2, Some("other"), IP, Instant::now(), 5.0);
            let a = g.message(1, bad);
            assert_eq!(closes(&a), [(1, CLOSE_MALFORMED)], "{bad}");
            assert_eq!(g.counts().malformed.get(), 1);
            let a = g.message(2, r#"{"type": "update", "data": {"led": "1"}}"#);
            assert_eq!(published(&a).last().expect("value").data, json!(1));
        }
        let mut g = gateway(10);
        g.oversized();
        assert_eq!(g.counts().malformed.get(), 1);
        assert!(g.message(99, "{}").is_empty(), "no such connection");
    }

    #[test]
    fn a_closed_connection_is_offline_at_once_and_its_commands_fail() {
        let mut g = gateway(10);
        with_node(&mut g);
        let t0 = Instant::now();
        g.command(1, "riot.led", &json!("1"), t0 + Duration::from_secs(5));
        let a = g.closed(1);
        assert_eq!(published(&a)[0].data["online"], false);
        let r = replies(&a);
        assert!(
            matches!(&r[..], [(1, Err(e))] if e.contains("closed its connection")),
            "{r:?}"
        );
        assert!(g.closed(1).is_empty(), "once");
        let a = g.command(2, "riot.led", &json!("1"), t0);
        assert!(
            matches!(&replies(&a)[..], [(2, Err(e))] if e.contains("not connected")),
            "{a:?}"
        );
        // Back under the same name: online, resources rediscovered.
        let a = g.open(3, Some("riot"), IP, t0, 9.0);
        assert_eq!(published(&a)[0].data["online"], true);
        assert_eq!(published(&a)[0].data["resources"], json!([]));
    }

    #[test]
    fn a_newer_connection_with_the_same_name_replaces_the_older() {
        let mut g = gateway(10);
        with_node(&mut g);
        let a = g.open(2, Some("riot"), IP, Instant::now(), 6.0);
        assert_eq!(closes(&a), [(1, CLOSE_REPLACED)]);
        assert_eq!(g.counts().replaced.get(), 1);
        // The old connection's close, when it comes, changes nothing.
        assert!(g.closed(1).is_empty());
        assert!(g.message(1, "junk").is_empty());
        g.message(2, r#"{"type": "update", "data": {"led": "1"}}"#);
        let a = g.command(
            1,
            "riot.led",
            &json!(0),
            Instant::now() + Duration::from_secs(1),
        );
        assert_eq!(sent(&a)[0].0, 2);
    }

    #[test]
    fn nodes_beyond_the_limit_are_refused_while_all_are_online() {
        let mut g = gateway(1);
        with_node(&mut g);
        let a = g.open(2, Some("b"), IP, Instant::now(), 5.0);
        assert_eq!(closes(&a), [(2, CLOSE_FULL)]);
        assert_eq!(g.counts().full.get(), 1);
        assert!(g
            .message(2, r#"{"type": "update", "data": {"x": 1}}"#)
            .is_empty());
        g.closed(1);
        let a = g.open(3, Some("b"), IP, Instant::now(), 5.0);
        assert!(closes(&a).is_empty(), "the offline node made room");
    }

    #[test]
    fn a_command_is_sent_as_endpoint_and_data_and_answered_by_the_next_update() {
        let mut g = gateway(10);
        with_node(&mut g);
        let t0 = Instant::now();
        let a = g.command(1, "riot.led", &json!("1"), t0 + Duration::from_secs(5));
        assert_eq!(
            sent(&a),
            [(1, json!({"endpoint": "led", "data": "1", "payload": "1"}))]
        );
        let a = g.command(
            2,
            "riot.led",
            &json!({"on": true}),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(
            sent(&a)[0].1,
            json!({"endpoint": "led", "data": {"on": true}, "payload": r#"{"on":true}"#})
        );
        let a = g.message(1, r#"{"type": "update", "data": {"led": "1"}}"#);
        assert_eq!(replies(&a), [(1, Ok(json!(1))), (2, Ok(json!(1)))]);
        assert_eq!(g.counts().commands_ok.get(), 2);
    }

    #[test]
    fn commands_fail_for_unknown_things_a_full_table_and_time_out() {
        let mut g = gateway(10);
        with_node(&mut g);
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(5);
        let err = |a: Vec<Action>| match replies(&a).as_slice() {
            [(_, Err(e))] => e.clone(),
            other => panic!("{other:?}"),
        };
        assert!(err(g.command(1, "riot", &json!(1), deadline)).contains("<node>.<resource>"));
        assert!(err(g.command(2, "riot.x", &json!(1), deadline)).contains("no resource"));
        assert_eq!(
            sent(&g.command(3, "riot.led", &json!(1), deadline)).len(),
            1
        );
        assert_eq!(
            sent(&g.command(4, "riot.led", &json!(1), deadline)).len(),
            1
        );
        assert!(err(g.command(5, "riot.led", &json!(1), deadline)).contains("already wait"));
        assert_eq!(g.next_wake(), Some(deadline));
        assert!(g.tick(t0).is_empty());
        assert_eq!(
            replies(&g.tick(deadline)),
            [(3, Err("timeout".into())), (4, Err("timeout".into()))]
        );
        assert_eq!(g.counts().commands_failed.get(), 5);
    }

    #[test]
    fn names_from_the_query() {
        assert_eq!(name_from_query(None), Ok(None));
        assert_eq!(name_from_query(Some("x=1")), Ok(None));
        assert_eq!(
            name_from_query(Some("x=1&id=kitchen-1")),
            Ok(Some("kitchen-1".into()))
        );
        for bad in [
            "id=",
            "id=a/b",
            "id=a%20b",
            &format!("id={}", "x".repeat(65)),
        ] {
            assert!(name_from_query(Some(bad)).is_err(), "{bad}");
        }
        assert!(valid_name("Board_1") && !valid_name("é"));
    }
}
