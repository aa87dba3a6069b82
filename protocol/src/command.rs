//! Commands to things (PROTOCOL.md Part 3): the messages of the command endpoint (`P + 3`), as
//! JSON over ZMQ or MessagePack over UDP (both read through [`serde_json::Value`]).
//!
//! ```
//! use thingsbus_protocol::command::{CommandMessage, decode_json};
//! let m = decode_json(br#"{"type":"command","id":"c-17","ns":"shop.led.red","data":{"on":true},"timeout":2.0}"#).unwrap();
//! let CommandMessage::Command { ns, timeout, .. } = m else { panic!() };
//! assert_eq!((ns.as_str(), timeout), ("shop.led.red", Some(2.0)));
//! ```

use serde_json::{json, Map, Value};

use crate::namespace::Namespace;

/// Default `ttl` of a registration, seconds.
pub const DEFAULT_TTL: f64 = 30.0;
/// Default time a caller waits for a reply, seconds.
pub const DEFAULT_TIMEOUT: f64 = 5.0;
/// Longest `timeout` or `ttl` accepted, seconds.
pub const MAX_SECONDS: f64 = 3600.0;
/// Longest `id` accepted, as JSON text.
pub const MAX_ID_BYTES: usize = 256;
/// Most prefixes in one `serve`.
pub const MAX_SERVE_PREFIXES: usize = 64;

/// Every error a broker answers a command with.
pub mod errors {
    /// Nobody serves a prefix of the namespace.
    pub const NO_ROUTE: &str = "no_route";
    /// No reply by the deadline.
    pub const TIMEOUT: &str = "timeout";
    /// The serving registration lapsed while the command was out.
    pub const GONE: &str = "gone";
    /// Too many commands in flight.
    pub const BUSY: &str = "busy";
    /// The command was malformed (see `detail`).
    pub const BAD_REQUEST: &str = "bad_request";
    /// The caller's address may not send commands (`--allow-command`).
    pub const NOT_ALLOWED: &str = "not_allowed";
}

/// One message of the command endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandMessage {
    /// An adaptor serves these subtrees, renewed at least every `ttl` seconds.
    Serve {
        /// The prefixes.
        ns: Vec<Namespace>,
        /// Asked time to live, if any.
        ttl: Option<f64>,
    },
    /// The broker's answer to `serve`.
    Serving {
        /// The prefixes now served.
        ns: Vec<Namespace>,
        /// The time to live in force.
        ttl: f64,
    },
    /// A command: from a caller (with `timeout`) or from the broker to a server (with `deadline`).
    Command {
        /// The sender's id, any JSON value, echoed in the reply.
        id: Value,
        /// The thing.
        ns: Namespace,
        /// What to do.
        data: Value,
        /// Seconds the caller waits (caller → broker).
        timeout: Option<f64>,
        /// When the broker stops waiting, seconds since 1970 (broker → server).
        deadline: Option<f64>,
    },
    /// The outcome of a command.
    Reply {
        /// The id of the command answered.
        id: Value,
        /// `Ok(data)` or `Err((error, detail))`.
        result: Result<Value, (String, Option<String>)>,
    },
}

/// A message that could not be read; `id` when one could be found, for the error reply.
#[derive(Debug, Clone, PartialEq)]
pub struct BadCommand {
    /// The message's `id`, or null.
    pub id: Value,
    /// True when the message was a `command` (it then gets a `bad_request` reply).
    pub was_command: bool,
    /// What was wrong.
    pub detail: String,
}

/// Reads a JSON frame.
///
/// # Errors
/// [`BadCommand`] saying what was wrong.
pub fn decode_json(bytes: &[u8]) -> Result<CommandMessage, BadCommand> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| BadCommand {
        id: Value::Null,
        was_command: false,
        detail: format!("not JSON: {e}"),
    })?;
    from_value(v)
}

/// Reads a MessagePack datagram.
///
/// # Errors
/// [`BadCommand`] saying what was wrong.
pub fn decode_msgpack(bytes: &[u8]) -> Result<CommandMessage, BadCommand> {
    let v: Value = rmp_serde::from_slice(bytes).map_err(|e| BadCommand {
        id: Value::Null,
        was_command: false,
        detail: format!("not MessagePack: {e}"),
    })?;
    from_value(v)
}

/// True when a decoded value is a command-endpoint message (so the UDP input hands it over).
pub fn is_command_type(v: &Value) -> bool {
    matches!(
        v.get("type").and_then(Value::as_str),
        Some("serve" | "command" | "command_reply")
    )
}

fn seconds(m: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Some(s.min(MAX_SECONDS)))
            .ok_or_else(|| format!("{key} must be a positive number of seconds")),
    }
}

fn namespaces(v: Option<&Value>) -> Result<Vec<Namespace>, String> {
    let items: Vec<&Value> = match v {
        Some(Value::String(_)) => vec![v.expect("matched Some")],
        Some(Value::Array(a)) => a.iter().collect(),
        _ => return Err("ns must be a namespace or a list of them".into()),
    };
    if items.len() > MAX_SERVE_PREFIXES {
        return Err(format!("at most {MAX_SERVE_PREFIXES} prefixes per serve"));
    }
    items
        .into_iter()
        .map(|i| {
            let s = i.as_str().ok_or("ns entries must be strings")?;
            Namespace::new(s).map_err(|e| e.to_string())
        })
        .collect()
}

/// Reads an already-decoded value.
///
/// # Errors
/// [`BadCommand`] saying what was wrong.
pub fn from_value(v: Value) -> Result<CommandMessage, BadCommand> {
    let Value::Object(mut m) = v else {
        return Err(BadCommand {
            id: Value::Null,
            was_command: false,
            detail: "not an object".into(),
        });
    };
    let id = m.remove("id").unwrap_or(Value::Null);
    let ty = m
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let bad = |id: Value, detail: String| BadCommand {
        id,
        was_command: ty == "command",
        detail,
    };
    if !id.is_null() && id.to_string().len() > MAX_ID_BYTES {
        return Err(bad(
            Value::Null,
            format!("id longer than {MAX_ID_BYTES} bytes"),
        ));
    }
    match ty.as_str() {
        "serve" => Ok(CommandMessage::Serve {
            ns: namespaces(m.get("ns")).map_err(|d| bad(id.clone(), d))?,
            ttl: seconds(&m, "ttl").map_err(|d| bad(id.clone(), d))?,
        }),
        "serving" => Ok(CommandMessage::Serving {
            ns: namespaces(m.get("ns")).map_err(|d| bad(id.clone(), d))?,
            ttl: seconds(&m, "ttl")
                .map_err(|d| bad(id.clone(), d))?
                .unwrap_or(DEFAULT_TTL),
        }),
        "command" => {
            if id.is_null() {
                return Err(bad(id, "a command needs an id".into()));
            }
            let ns = match m.get("ns").and_then(Value::as_str) {
                Some(s) => Namespace::new(s).map_err(|e| bad(id.clone(), e.to_string()))?,
                None => return Err(bad(id, "ns must be a namespace".into())),
            };
            let timeout = seconds(&m, "timeout").map_err(|d| bad(id.clone(), d))?;
            let deadline = match m.get("deadline") {
                None | Some(Value::Null) => None,
                Some(d) => Some(
                    d.as_f64()
                        .filter(|d| d.is_finite())
                        .ok_or_else(|| bad(id.clone(), "deadline must be a number".into()))?,
                ),
            };
            Ok(CommandMessage::Command {
                data: m.remove("data").unwrap_or(Value::Null),
                id,
                ns,
                timeout,
                deadline,
            })
        }
        "command_reply" => {
            let ok = m
                .get("ok")
                .and_then(Value::as_bool)
                .ok_or_else(|| bad(id.clone(), "ok must be true or false".into()))?;
            let result = if ok {
                Ok(m.remove("data").unwrap_or(Value::Null))
            } else {
                let error = match m.remove("error") {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => "error".to_owned(),
                };
                let detail = m.remove("detail").and_then(|d| match d {
                    Value::String(s) => Some(s),
                    Value::Null => None,
                    other => Some(other.to_string()),
                });
                Err((error, detail))
            };
            Ok(CommandMessage::Reply { id, result })
        }
        "" => Err(bad(id, "no type".into())),
        other => Err(bad(id, format!("unknown type {other:?}"))),
    }
}

impl CommandMessage {
    /// The message as a JSON value (for ZMQ as text, for UDP as MessagePack).
    pub fn to_value(&self) -> Value {
        fn names(ns: &[Namespace]) -> Vec<&str> {
            ns.iter().map(Namespace::as_str).collect()
        }
        match self {
            CommandMessage::Serve { ns, ttl } => {
                let mut v = json!({"type": "serve", "ns": names(ns)});
                if let Some(t) = ttl {
                    v["ttl"] = json!(t);
                }
                v
            }
            CommandMessage::Serving { ns, ttl } => {
                json!({"type": "serving", "ns": names(ns), "ttl": ttl})
            }
            CommandMessage::Command {
                id,
                ns,
                data,
                timeout,
                deadline,
            } => {
                let mut v = json!({"type": "command", "id": id, "ns": ns.as_str(), "data": data});
                if let Some(t) = timeout {
                    v["timeout"] = json!(t);
                }
                if let Some(d) = deadline {
                    v["deadline"] = json!(d);
                }
                v
            }
            CommandMessage::Reply { id, result } => match result {
                Ok(data) => json!({"type": "command_reply", "id": id, "ok": true, "data": data}),
                Err((error, detail)) => {
                    let mut v =
                        json!({"type": "command_reply", "id": id, "ok": false, "error": error});
                    if let Some(d) = detail {
                        v["detail"] = json!(d);
                    }
                    v
                }
            },
        }
    }

    /// JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_value()).unwrap_or_default()
    }

    /// A MessagePack map (what a UDP board gets).
    pub fn to_msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(&self.to_value()).unwrap_or_default()
    }
}

/// A broker's error reply to the command `id`.
pub fn error_reply(id: Value, error: &str, detail: Option<String>) -> CommandMessage {
    CommandMessage::Reply {
        id,
        result: Err((error.to_owned(), detail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_through_json_and_msgpack() {
        let ns = |s: &str| Namespace::new(s).unwrap();
        let messages = [
            CommandMessage::Serve {
                ns: vec![ns("shop.led"), ns("shop.robot")],
                ttl: Some(10.0),
            },
            CommandMessage::Serving {
                ns: vec![ns("shop.led")],
                ttl: 30.0,
            },
            CommandMessage::Command {
                id: json!("c-17"),
                ns: ns("shop.led.red"),
                data: json!({"on": true}),
                timeout: Some(2.0),
                deadline: None,
            },
            CommandMessage::Command {
                id: json!(42),
                ns: ns("shop.led.red"),
                data: json!(null),
                timeout: None,
                deadline: Some(1_700_000_000.5),
            },
            CommandMessage::Reply {
                id: json!(42),
                result: Ok(json!({"on": true})),
            },
            error_reply(
                json!("c-17"),
                errors::NO_ROUTE,
                Some("nobody serves shop".into()),
            ),
        ];
        for m in messages {
            assert_eq!(decode_json(&m.to_json()).unwrap(), m);
            assert_eq!(decode_msgpack(&m.to_msgpack()).unwrap(), m);
        }
    }

    #[test]
    fn bad_messages_say_why_and_keep_the_id_of_a_command() {
        let e = decode_json(br#"{"type":"command","id":7,"ns":"Bad"}"#).unwrap_err();
        assert!(e.was_command && e.id == json!(7), "{e:?}");
        let e = decode_json(br#"{"type":"command","ns":"a"}"#).unwrap_err();
        assert!(e.was_command && e.id.is_null());
        let e = decode_json(br#"{"type":"command","id":1,"ns":"a","timeout":-1}"#).unwrap_err();
        assert!(e.detail.contains("timeout"));
        let e = decode_json(br#"{"type":"command_reply","id":1}"#).unwrap_err();
        assert!(e.detail.contains("ok"));
        let long = format!(
            r#"{{"type":"command","id":"{}","ns":"a"}}"#,
            "x".repeat(300)
        );
        assert!(decode_json(long.as_bytes()).unwrap_err().id.is_null());
        let many: Vec<String> = (0..65).map(|i| format!("a{i}")).collect();
        let serve = json!({"type": "serve", "ns": many}).to_string();
        assert!(decode_json(serve.as_bytes()).is_err());
        for bad in [&b"not json"[..], b"[1]", b"{}", br#"{"type":"dance"}"#] {
            assert!(!decode_json(bad).unwrap_err().was_command);
        }
        assert!(decode_msgpack(&[0xc1]).is_err());
        // A single prefix as a string is fine too; timeouts are capped.
        let m = decode_json(br#"{"type":"serve","ns":"shop"}"#).unwrap();
        assert!(matches!(m, CommandMessage::Serve { ref ns, ttl: None } if ns.len() == 1));
        let m = decode_json(br#"{"type":"command","id":1,"ns":"a","timeout":1e9}"#).unwrap();
        assert!(matches!(m, CommandMessage::Command { timeout: Some(t), .. } if t == MAX_SECONDS));
    }
}
