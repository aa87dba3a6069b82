//! `thingsbus srv`, a doctor for discovery: the SRV records of a zone in the order a client
//! tries them, the broker it would pick, and whether that broker's ports answer — looked up by
//! [`diagnose`], shown by [`Report::json`] and [`Report::text`].

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use thingsbus_protocol::discovery::{BrokerAddr, Discovery, SRV_PREFIX};

/// One endpoint of the chosen broker, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `directory`, `input` or `snapshot`.
    pub what: &'static str,
    /// Its URL.
    pub url: String,
    /// Whether a ZeroMQ peer answered there, or what went wrong.
    pub result: Result<(), String>,
}

/// What the lookup and the checks found; `brokers` is never empty.
#[derive(Debug, Clone)]
pub struct Report {
    /// `_thingsbus._tcp.<zone>`.
    pub name: String,
    /// The nameserver asked, or `the system resolver`.
    pub asked: String,
    /// The records, in the order a client tries them (RFC 2782).
    pub brokers: Vec<BrokerAddr>,
    /// The first broker's endpoints.
    pub checks: Vec<Check>,
}

/// Why there is no [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoReport {
    /// The lookup failed: the record name, the nameserver asked, the error.
    Lookup {
        /// `_thingsbus._tcp.<zone>`.
        name: String,
        /// The nameserver asked.
        asked: String,
        /// What failed.
        error: String,
    },
    /// The record lists no broker: its name.
    Empty(String),
}

impl NoReport {
    /// The lookup failure as `thingsbus srv --json` prints it.
    pub fn json(&self) -> Value {
        match self {
            NoReport::Lookup { name, asked, error } => {
                json!({"name": name, "nameserver": asked, "error": error, "records": []})
            }
            NoReport::Empty(name) => json!({"name": name, "records": []}),
        }
    }

    /// The lookup failure as `thingsbus srv` prints it.
    pub fn text(&self) -> String {
        match self {
            NoReport::Lookup { name, asked, error } => format!("{name} (asked {asked})\n  {error}"),
            NoReport::Empty(name) => format!("{name} lists no broker"),
        }
    }
}

/// Looks up the SRV records of `zone` (at `nameserver`, or the system's) and checks the
/// directory, input and snapshot ports of the broker a client would choose, each within
/// `timeout`.
///
/// # Errors
/// [`NoReport`] when the lookup fails or finds no broker.
pub async fn diagnose(
    zone: &str,
    nameserver: Option<SocketAddr>,
    timeout: Duration,
) -> Result<Report, NoReport> {
    let mut discovery = Discovery::new().timeout(timeout);
    if let Some(n) = nameserver {
        discovery = discovery.nameserver(n);
    }
    let name = format!("{SRV_PREFIX}.{zone}");
    let asked = nameserver.map_or_else(|| "the system resolver".to_owned(), |a| a.to_string());
    let brokers = discovery
        .brokers(zone)
        .await
        .map_err(|e| NoReport::Lookup {
            name: name.clone(),
            asked: asked.clone(),
            error: e.to_string(),
        })?;
    let Some(chosen) = brokers.first() else {
        return Err(NoReport::Empty(name));
    };
    let mut checks = Vec::new();
    for (what, url) in [
        ("directory", chosen.directory_url()),
        ("input", chosen.input_url()),
        ("snapshot", chosen.snapshot_url()),
    ] {
        let u = url.clone();
        let result = tokio::task::spawn_blocking(move || crate::probe::zmtp(&u, timeout))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        checks.push(Check { what, url, result });
    }
    Ok(Report {
        name,
        asked,
        brokers,
        checks,
    })
}

impl Report {
    /// The broker a client would pick: the first record.
    pub fn chosen(&self) -> Option<&BrokerAddr> {
        self.brokers.first()
    }

    /// True when the directory and input ports answer. The snapshot endpoint is an extension:
    /// a 0.2.x broker has none, and that is fine.
    pub fn healthy(&self) -> bool {
        self.checks
            .iter()
            .filter(|c| c.what != "snapshot")
            .all(|c| c.result.is_ok())
    }

    /// One JSON object: `{"name", "nameserver", "records", "chosen", "checks", "ok"}`.
    pub fn json(&self) -> Value {
        let records: Vec<Value> = self
            .brokers
            .iter()
            .map(|b| {
                json!({"priority": b.priority, "weight": b.weight, "target": b.host,
                       "port": b.port, "address": b.ip.map(|ip| ip.to_string())})
            })
            .collect();
        let checks: serde_json::Map<String, Value> = self
            .checks
            .iter()
            .map(|c| {
                (
                    c.what.to_owned(),
                    json!({"url": c.url, "ok": c.result.is_ok(), "error": c.result.as_ref().err()}),
                )
            })
            .collect();
        let chosen = self.chosen().map(|c| {
            json!({"target": c.host, "port": c.port,
                   "address": c.ip.map(|ip| ip.to_string()),
                   "directory_url": c.directory_url(),
                   "input_url": c.input_url(), "udp": c.udp_addr(),
                   "server_key": c.server_key})
        });
        json!({
            "name": self.name,
            "nameserver": self.asked,
            "records": records,
            "chosen": chosen,
            "checks": checks,
            "ok": self.healthy(),
        })
    }

    /// The records as a table, the chosen broker and a line per check.
    pub fn text(&self) -> String {
        let brokers = &self.brokers;
        let mut text = format!(
            "{} (asked {}): {} record{}, in the order a client tries them (RFC 2782)\n",
            self.name,
            self.asked,
            brokers.len(),
            if brokers.len() == 1 { "" } else { "s" }
        );
        let target_w = brokers
            .iter()
            .map(|b| b.host.len())
            .max()
            .unwrap_or(0)
            .max(6);
        text.push_str(&format!(
            "  #  PRIORITY  WEIGHT  {:target_w$}  PORT   ADDRESS\n",
            "TARGET"
        ));
        for (i, b) in brokers.iter().enumerate() {
            text.push_str(&format!(
                "  {:<2} {:>8}  {:>6}  {:target_w$}  {:<5}  {}\n",
                i + 1,
                b.priority,
                b.weight,
                b.host,
                b.port,
                b.ip.map_or_else(|| "(system resolver)".to_owned(), |ip| ip.to_string())
            ));
        }
        let Some(chosen) = self.chosen() else {
            return text;
        };
        text.push_str(&format!("would use {chosen}\n"));
        text.push_str(&match &chosen.server_key {
            Some(key) => format!("  CURVE key (TXT curve=): {key}; clients need no --server-key\n"),
            None => "  no CURVE key published (TXT curve=): plain ZMQ, or --server-key by hand\n"
                .to_owned(),
        });
        for c in &self.checks {
            let verdict = match &c.result {
                Ok(()) => "answers".to_owned(),
                Err(e) if c.what == "snapshot" => {
                    format!("no answer ({e}); fine for a 0.2.x broker: clients wait for the periodic snapshot")
                }
                Err(e) => format!("NO ANSWER: {e}"),
            };
            text.push_str(&format!("  {:<9}  {:<28}  {verdict}\n", c.what, c.url));
        }
        text.push_str(&format!(
            "  {:<9}  {:<28}  (UDP cannot be checked from here)\n",
            "udp",
            chosen.udp_addr()
        ));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(snapshot: Result<(), String>, input: Result<(), String>) -> Report {
        let mut b = BrokerAddr::new("broker.example.org", 7954);
        b.priority = 10;
        b.weight = 5;
        b.ip = Some("192.0.2.1".parse().unwrap());
        Report {
            name: "_thingsbus._tcp.example.org".into(),
            asked: "the system resolver".into(),
            brokers: vec![b],
            checks: vec![
                Check {
                    what: "directory",
                    url: "tcp://192.0.2.1:7954".into(),
                    result: Ok(()),
                },
                Check {
                    what: "input",
                    url: "tcp://192.0.2.1:7955".into(),
                    result: input,
                },
                Check {
                    what: "snapshot",
                    url: "tcp://192.0.2.1:7956".into(),
                    result: snapshot,
                },
            ],
        }
    }

    #[test]
    fn a_missing_snapshot_endpoint_is_healthy_a_missing_input_is_not() {
        let r = report(Err("refused".into()), Ok(()));
        assert!(r.healthy());
        let text = r.text();
        assert!(text.starts_with(
            "_thingsbus._tcp.example.org (asked the system resolver): 1 record, in the order"
        ));
        assert!(text.contains("  1        10       5  broker.example.org  7954   192.0.2.1\n"));
        assert!(text.contains("would use broker.example.org:7954 (192.0.2.1)\n"));
        assert!(text.contains("no answer (refused); fine for a 0.2.x broker"));
        assert!(text.ends_with(
            "  udp        192.0.2.1:7955                (UDP cannot be checked from here)\n"
        ));
        let bad = report(Ok(()), Err("refused".into()));
        assert!(!bad.healthy());
        assert!(bad.text().contains("NO ANSWER: refused"));
        let v = bad.json();
        assert_eq!(v["ok"], false);
        assert_eq!(v["checks"]["input"]["error"], "refused");
        assert_eq!(v["checks"]["directory"]["error"], Value::Null);
        assert_eq!(v["records"][0]["target"], "broker.example.org");
        assert_eq!(v["chosen"]["udp"], "192.0.2.1:7955");
    }

    #[test]
    fn a_failed_lookup_names_the_record_and_the_nameserver() {
        let e = NoReport::Lookup {
            name: "_thingsbus._tcp.x".into(),
            asked: "127.0.0.1:53".into(),
            error: "no such name".into(),
        };
        assert_eq!(
            e.text(),
            "_thingsbus._tcp.x (asked 127.0.0.1:53)\n  no such name"
        );
        assert_eq!(e.json()["records"], json!([]));
        assert_eq!(NoReport::Empty("n".into()).text(), "n lists no broker");
    }
}
