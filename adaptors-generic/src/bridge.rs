//! The rules of the generic ZMQ adaptor: which source messages become which thing updates.
//!
//! Pure: a message in, a [`Decision`] out. The binary owns the sockets; [`BridgeCounts`] is
//! what it counts.

use std::fmt;

use serde_json::{Map, Value};
use thingsbus_protocol::namespace;

/// What the 0.2.x `generic_zmq_adaptor` flags ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// `--nskey K`: the thing is `<base>.<msg[K]>`.
    pub nskey: Option<String>,
    /// `--tskey K`: `ts` is `msg[K]` when it is a number, else the broker stamps the arrival time.
    pub tskey: Option<String>,
    /// `--filter K:V`: only messages whose `msg[K]` is the string `V`.
    pub filter: Option<(String, String)>,
    /// `--projections a,b`: `data` is `{a: msg[a], b: msg[b]}`; `None` forwards the whole message.
    pub projections: Option<Vec<String>>,
}

/// Why a message was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// Not UTF-8 JSON.
    NotJson,
    /// JSON, but not an object.
    NotObject,
    /// `--filter` did not match (or its key was missing). Not an error: the filter's job.
    Filtered,
    /// A key named in `--projections` is missing.
    MissingProjection,
    /// The `--nskey` key is missing.
    MissingNskey,
    /// The `--nskey` value is not a string that makes a valid namespace.
    BadNskey,
}

impl Skip {
    /// Every reason, in the order reports list them.
    pub const ALL: [Skip; 6] = [
        Skip::NotJson,
        Skip::NotObject,
        Skip::Filtered,
        Skip::MissingProjection,
        Skip::MissingNskey,
        Skip::BadNskey,
    ];

    /// The label used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotJson => "not_json",
            Skip::NotObject => "not_object",
            Skip::Filtered => "filtered",
            Skip::MissingProjection => "missing_projection",
            Skip::MissingNskey => "missing_nskey",
            Skip::BadNskey => "bad_nskey",
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that passed the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// Below the base namespace (`""` for the base thing itself).
    pub sub_ns: String,
    /// Seconds since 1970, or `None` for "now".
    pub ts: Option<f64>,
    /// The thing's data.
    pub data: Value,
}

/// What to do with one message, and for a skip a detail worth a log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send it.
    Forward(Forward),
    /// Drop it, for this reason; the string says what exactly was wrong.
    Skip(Skip, String),
}

impl Rules {
    /// Parses `--filter K:V` (split at the first `:`, as 0.2.x did).
    ///
    /// # Errors
    /// A text without `:` or with an empty key.
    pub fn parse_filter(s: &str) -> Result<(String, String), String> {
        match s.split_once(':') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(format!(
                "{s:?} is not KEY:VALUE (e.g. mtype:percept_update)"
            )),
        }
    }

    /// Parses `--projections a,b` (empty items are ignored).
    ///
    /// # Errors
    /// A list with no key at all.
    pub fn parse_projections(s: &str) -> Result<Vec<String>, String> {
        let keys: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        if keys.is_empty() {
            return Err(format!("{s:?} names no key (e.g. luminance,ratio_busy)"));
        }
        Ok(keys)
    }

    /// Decides what becomes of one message body.
    pub fn decide(&self, body: &[u8]) -> Decision {
        let msg: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                return Decision::Skip(
                    Skip::NotObject,
                    format!("a JSON {}, not an object", kind(&other)),
                )
            }
            Err(e) => return Decision::Skip(Skip::NotJson, e.to_string()),
        };
        if let Some((k, v)) = &self.filter {
            match msg.get(k) {
                Some(Value::String(s)) if s == v => {}
                Some(other) => {
                    return Decision::Skip(Skip::Filtered, format!("{k} is {other}, not {v:?}"))
                }
                None => return Decision::Skip(Skip::Filtered, format!("no key {k:?}")),
            }
        }
        let sub_ns = match &self.nskey {
            None => String::new(),
            Some(k) => match msg.get(k) {
                None => return Decision::Skip(Skip::MissingNskey, format!("no key {k:?}")),
                Some(Value::String(s)) => match namespace::validate(s) {
                    Ok(()) if !s.is_empty() => s.clone(),
                    Ok(()) => {
                        return Decision::Skip(Skip::BadNskey, format!("{k} is the empty string"))
                    }
                    Err(e) => return Decision::Skip(Skip::BadNskey, format!("{k}: {e}")),
                },
                Some(other) => {
                    return Decision::Skip(
                        Skip::BadNskey,
                        format!("{k} is a JSON {}, not a string", kind(other)),
                    )
                }
            },
        };
        let ts = self
            .tskey
            .as_ref()
            .and_then(|k| msg.get(k))
            .and_then(Value::as_f64)
            .filter(|t| t.is_finite() && *t >= 0.0);
        let data = match &self.projections {
            None => Value::Object(msg),
            Some(keys) => {
                let mut msg = msg;
                let mut data = Map::with_capacity(keys.len());
                for k in keys {
                    match msg.remove(k) {
                        Some(v) => {
                            data.insert(k.clone(), v);
                        }
                        None if data.contains_key(k) => {}
                        None => {
                            return Decision::Skip(Skip::MissingProjection, format!("no key {k:?}"))
                        }
                    }
                }
                Value::Object(data)
            }
        };
        Decision::Forward(Forward { sub_ns, ts, data })
    }
}

crate::counters! {
    /// What the bridge counted: once for the whole run, once per `--report-interval`.
    pub struct BridgeCounts {
        forwarded: "messages sent to the bus",
        send_errors: "messages the adaptor refused",
        not_json: "skipped: not UTF-8 JSON",
        not_object: "skipped: JSON, but not an object",
        filtered: "skipped: --filter did not match",
        missing_projection: "skipped: a key named in --projections is missing",
        missing_nskey: "skipped: the --nskey key is missing",
        bad_nskey: "skipped: the --nskey value makes no valid namespace",
    }
}

impl BridgeCounts {
    /// The counter of one skip reason.
    pub fn skipped(&self, reason: Skip) -> &crate::counters::Counter {
        match reason {
            Skip::NotJson => &self.not_json,
            Skip::NotObject => &self.not_object,
            Skip::Filtered => &self.filtered,
            Skip::MissingProjection => &self.missing_projection,
            Skip::MissingNskey => &self.missing_nskey,
            Skip::BadNskey => &self.bad_nskey,
        }
    }

    /// Messages skipped for any reason.
    pub fn skipped_total(&self) -> u64 {
        Skip::ALL.iter().map(|r| self.skipped(*r).get()).sum()
    }

    /// `not_json=1,not_object=0,...`: the skips by reason, in the order of [`Skip::ALL`].
    pub fn reasons(&self) -> String {
        let values: Vec<u64> = Skip::ALL.iter().map(|r| self.skipped(*r).get()).collect();
        let table: Vec<crate::counters::Info> = Skip::ALL
            .iter()
            .filter_map(|r| Self::TABLE.iter().find(|i| i.name == r.as_str()).copied())
            .collect();
        crate::counters::render(&table, &values, ",")
    }

    /// The info line: with `interval`, that interval's counts and the totals so far; without,
    /// the totals.
    pub fn report(&self, what: &str, interval: Option<&BridgeCounts>) {
        match interval {
            Some(i) => tracing::info!(
                forwarded = i.forwarded.get(),
                skipped = i.skipped_total(),
                send_errors = i.send_errors.get(),
                reasons = %i.reasons(),
                total_forwarded = self.forwarded.get(),
                total_skipped = self.skipped_total(),
                "{what}"
            ),
            None => tracing::info!(
                forwarded = self.forwarded.get(),
                skipped = self.skipped_total(),
                send_errors = self.send_errors.get(),
                reasons = %self.reasons(),
                "{what}"
            ),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn camera_rules() -> Rules {
        Rules {
            nskey: Some("camname".into()),
            tskey: Some("frame_time".into()),
            filter: Some(("mtype".into(), "percept_update".into())),
            projections: Some(vec!["luminance".into(), "ratio_busy".into()]),
        }
    }

    fn skip_of(rules: &Rules, body: &str) -> Skip {
        match rules.decide(body.as_bytes()) {
            Decision::Skip(s, _) => s,
            Decision::Forward(f) => panic!("{body} forwarded as {f:?}"),
        }
    }

    #[test]
    fn the_0_2_x_camera_example_maps_as_documented() {
        let body = json!({"mtype": "percept_update", "camname": "door", "frame_time": 1423351104.5,
                          "luminance": 31.8, "ratio_busy": 0.2, "extra": 1});
        let d = camera_rules().decide(body.to_string().as_bytes());
        assert_eq!(
            d,
            Decision::Forward(Forward {
                sub_ns: "door".into(),
                ts: Some(1423351104.5),
                data: json!({"luminance": 31.8, "ratio_busy": 0.2}),
            })
        );
    }

    #[test]
    fn without_rules_the_whole_object_goes_to_the_base_thing_at_arrival_time() {
        let d = Rules::default().decide(br#"{"a": [1, 2], "b": null}"#);
        assert_eq!(
            d,
            Decision::Forward(Forward {
                sub_ns: String::new(),
                ts: None,
                data: json!({"a": [1, 2], "b": null}),
            })
        );
    }

    #[test]
    fn each_skip_reason() {
        let r = camera_rules();
        let ok = r#""mtype": "percept_update", "frame_time": 1.0, "luminance": 1, "ratio_busy": 2"#;
        assert_eq!(skip_of(&r, "not json"), Skip::NotJson);
        assert_eq!(skip_of(&r, "\u{0}\u{ff}"), Skip::NotJson);
        assert_eq!(skip_of(&r, "[1, 2]"), Skip::NotObject);
        assert_eq!(skip_of(&r, r#"{"camname": "door"}"#), Skip::Filtered);
        assert_eq!(
            skip_of(&r, r#"{"mtype": "other", "camname": "door"}"#),
            Skip::Filtered
        );
        assert_eq!(
            skip_of(&r, r#"{"mtype": 5, "camname": "door"}"#),
            Skip::Filtered
        );
        assert_eq!(skip_of(&r, &format!("{{{ok}}}")), Skip::MissingNskey);
        assert_eq!(
            skip_of(&r, &format!(r#"{{{ok}, "camname": "Door"}}"#)),
            Skip::BadNskey
        );
        assert_eq!(
            skip_of(&r, &format!(r#"{{{ok}, "camname": ""}}"#)),
            Skip::BadNskey
        );
        assert_eq!(
            skip_of(&r, &format!(r#"{{{ok}, "camname": 7}}"#)),
            Skip::BadNskey
        );
        assert_eq!(
            skip_of(
                &r,
                r#"{"mtype": "percept_update", "camname": "door", "luminance": 1}"#
            ),
            Skip::MissingProjection
        );
    }

    #[test]
    fn a_dotted_nskey_value_goes_deeper_as_in_0_2_x() {
        let r = Rules {
            nskey: Some("n".into()),
            ..Rules::default()
        };
        match r.decide(br#"{"n": "front.door"}"#) {
            Decision::Forward(f) => assert_eq!(f.sub_ns, "front.door"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_ts_that_is_not_a_number_means_now() {
        let r = Rules {
            tskey: Some("t".into()),
            ..Rules::default()
        };
        for body in [
            r#"{"t": "soon"}"#,
            r#"{"x": 1}"#,
            r#"{"t": -3}"#,
            r#"{"t": null}"#,
        ] {
            match r.decide(body.as_bytes()) {
                Decision::Forward(f) => assert_eq!(f.ts, None, "{body}"),
                d => panic!("{body}: {d:?}"),
            }
        }
        match r.decide(br#"{"t": 1700000000}"#) {
            Decision::Forward(f) => assert_eq!(f.ts, Some(1_700_000_000.0)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn flag_parsers_explain_bad_values() {
        assert_eq!(
            Rules::parse_filter("mtype:a:b"),
            Ok(("mtype".into(), "a:b".into()))
        );
        assert!(Rules::parse_filter("nocolon").is_err());
        assert!(Rules::parse_filter(":v").is_err());
        assert_eq!(
            Rules::parse_projections("a, b,,c"),
            Ok(vec!["a".into(), "b".into(), "c".into()])
        );
        assert!(Rules::parse_projections(" , ").is_err());
    }

    #[test]
    fn a_repeated_projection_is_not_a_missing_key() {
        let r = Rules {
            projections: Some(vec!["a".into(), "a".into()]),
            ..Rules::default()
        };
        assert!(matches!(r.decide(br#"{"a": 1}"#), Decision::Forward(_)));
    }

    #[test]
    fn every_skip_reason_has_its_counter_and_the_report_lists_them_in_order() {
        let c = BridgeCounts::default();
        for (n, r) in Skip::ALL.iter().enumerate() {
            c.skipped(*r).add(n as u64 + 1);
        }
        assert_eq!(c.skipped_total(), 21);
        assert_eq!(
            c.reasons(),
            "not_json=1,not_object=2,filtered=3,missing_projection=4,missing_nskey=5,bad_nskey=6"
        );
        c.report("bridge report", Some(&BridgeCounts::default()));
    }
}
