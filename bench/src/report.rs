//! Results: a Markdown table for people and a JSON report for machines, and the comparison of two
//! JSON reports (`compare OLD.json NEW.json`).
//!
//! The JSON report holds one object per scenario, in the order measured:
//!
//! ```text
//! {"command": "thingsbus-bench fanout --seconds 2 --against floor",
//!  "scenarios": [{"scenario": "fanout",
//!                 "metrics": [{"metric": "ZMQ+JSON sustained, to each of 10", "unit": "msg/s",
//!                              "ours": 208800.0, "floor": 341700.0}],
//!                 "ceilings": [{"ceiling": "load generator alone ...", "unit": "msg/s",
//!                               "value": 4400000.0}]}],
//!  "notes": ["..."]}
//! ```
//!
//! A value that could not be measured (NaN) is `null`.

use clap::ValueEnum;
use serde_json::{json, Value};

use crate::servers::Kind;

/// One measured figure.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) metric: String,
    pub(crate) kind: Kind,
    pub(crate) value: f64,
    pub(crate) unit: String,
}

/// What the bench itself reaches with no broker in the way, so a reader knows whether a figure
/// is bounded by the broker or by the bench.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ceiling {
    pub(crate) scenario: String,
    pub(crate) what: String,
    pub(crate) value: f64,
    pub(crate) unit: String,
}

/// Everything measured in one run.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) ceilings: Vec<Ceiling>,
    pub(crate) notes: Vec<String>,
}

/// The systems a report can hold figures of, in the order columns show them.
const SYSTEMS: [Kind; 4] = [Kind::Ours, Kind::Floor, Kind::Python, Kind::Nats];

impl Report {
    pub(crate) fn add(&mut self, scenario: &str, metric: &str, kind: Kind, value: f64, unit: &str) {
        eprintln!(
            "  {scenario} | {metric} | {}: {}",
            kind.label(),
            fmt_value(value, unit)
        );
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            kind,
            value,
            unit: unit.into(),
        });
    }

    /// Records one of the bench's own ceilings under `scenario`.
    pub(crate) fn ceiling(&mut self, scenario: &str, what: &str, value: f64, unit: &str) {
        eprintln!("  {scenario} | ceiling: {what}: {}", fmt_value(value, unit));
        self.ceilings.push(Ceiling {
            scenario: scenario.into(),
            what: what.into(),
            value,
            unit: unit.into(),
        });
    }

    pub(crate) fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("  note: {s}");
        self.notes.push(s);
    }

    fn get(&self, scenario: &str, metric: &str, kind: Kind) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.metric == metric && r.kind == kind)
            .map(|r| r.value)
    }

    /// (scenario, metric, unit) in the order first measured.
    fn keys(&self) -> Vec<(String, String, String)> {
        let mut keys: Vec<(String, String, String)> = Vec::new();
        for r in &self.rows {
            if !keys
                .iter()
                .any(|(s, m, _)| *s == r.scenario && *m == r.metric)
            {
                keys.push((r.scenario.clone(), r.metric.clone(), r.unit.clone()));
            }
        }
        keys
    }

    /// Scenario names in the order first measured (figures or ceilings).
    fn scenarios(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let names = self
            .rows
            .iter()
            .map(|r| &r.scenario)
            .chain(self.ceilings.iter().map(|c| &c.scenario));
        for s in names {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    pub(crate) fn markdown(&self) -> String {
        // The baselines that appear in this run, in a fixed order.
        let baselines: Vec<Kind> = SYSTEMS[1..]
            .iter()
            .copied()
            .filter(|k| self.rows.iter().any(|r| r.kind == *k))
            .collect();
        let mut out = String::from("| scenario | metric | ours |");
        for k in &baselines {
            out.push_str(&format!(" {} |", k.label()));
        }
        for k in &baselines {
            out.push_str(&format!(" ours / {} |", k.key()));
        }
        out.push_str("\n|---|---|---|");
        for _ in 0..2 * baselines.len() {
            out.push_str("---|");
        }
        out.push('\n');
        for (scenario, metric, unit) in self.keys() {
            let cell = |k: Kind| {
                self.get(&scenario, &metric, k)
                    .map_or("–".to_owned(), |v| fmt_value(v, &unit))
            };
            let ratio = |k: Kind| {
                fmt_ratio(
                    self.get(&scenario, &metric, Kind::Ours),
                    self.get(&scenario, &metric, k),
                )
            };
            out.push_str(&format!("| {scenario} | {metric} | {} |", cell(Kind::Ours)));
            for k in &baselines {
                out.push_str(&format!(" {} |", cell(*k)));
            }
            for k in &baselines {
                out.push_str(&format!(" {} |", ratio(*k)));
            }
            out.push('\n');
        }
        if !self.notes.is_empty() || !self.ceilings.is_empty() {
            out.push('\n');
            for c in &self.ceilings {
                out.push_str(&format!(
                    "- ceiling, {}: {}: {}\n",
                    c.scenario,
                    c.what,
                    fmt_value(c.value, &c.unit)
                ));
            }
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }

    /// The report as JSON (the shape in this module's documentation).
    pub(crate) fn to_json(&self, command: &str) -> Value {
        let scenarios: Vec<Value> = self
            .scenarios()
            .into_iter()
            .map(|scenario| {
                let metrics: Vec<Value> = self
                    .keys()
                    .into_iter()
                    .filter(|(s, _, _)| *s == scenario)
                    .map(|(_, metric, unit)| {
                        let mut m = serde_json::Map::new();
                        m.insert("metric".into(), json!(metric));
                        m.insert("unit".into(), json!(unit));
                        for k in SYSTEMS {
                            if let Some(v) = self.get(&scenario, &metric, k) {
                                m.insert(k.key().into(), json!(v));
                            }
                        }
                        Value::Object(m)
                    })
                    .collect();
                let ceilings: Vec<Value> = self
                    .ceilings
                    .iter()
                    .filter(|c| c.scenario == scenario)
                    .map(|c| json!({"ceiling": c.what, "unit": c.unit, "value": c.value}))
                    .collect();
                json!({"scenario": scenario, "metrics": metrics, "ceilings": ceilings})
            })
            .collect();
        json!({"command": command, "scenarios": scenarios, "notes": self.notes})
    }

    /// Reads back a report written by [`Report::to_json`] (or the JSON line of a run before
    /// `--json`: a flat `results` list); also returns its command.
    pub(crate) fn from_json(v: &Value) -> anyhow::Result<(Report, String)> {
        let command = text(v, "command")?;
        let mut report = Report::default();
        // The JSON line of runs before --json: one flat list of metrics, no ceilings.
        if let Value::Array(results) = &v["results"] {
            for m in results {
                metric_row(&mut report.rows, &text(m, "scenario")?, m)?;
            }
            for n in list(v, "notes")? {
                report.notes.push(n.as_str().unwrap_or_default().to_owned());
            }
            return Ok((report, command));
        }
        if !v["scenarios"].is_array() {
            anyhow::bail!(
                "not a thingsbus-bench JSON report (written by --json): no \"scenarios\" list"
            );
        }
        for s in list(v, "scenarios")? {
            let scenario = text(&s, "scenario")?;
            for m in list(&s, "metrics")? {
                metric_row(&mut report.rows, &scenario, &m)?;
            }
            for c in list(&s, "ceilings")? {
                report.ceilings.push(Ceiling {
                    scenario: scenario.clone(),
                    what: text(&c, "ceiling")?,
                    value: number(&c["value"]),
                    unit: text(&c, "unit")?,
                });
            }
        }
        for n in list(v, "notes")? {
            report.notes.push(n.as_str().unwrap_or_default().to_owned());
        }
        Ok((report, command))
    }
}

/// `v[k]` as a string, or an error naming what is missing.
fn text(v: &Value, k: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    v[k].as_str()
        .map(str::to_owned)
        .with_context(|| format!("\"{k}\" missing or not a string in {v}"))
}

/// A value of a report: `null` (not measured) is NaN.
fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// `v[k]` as a list; absent is empty.
fn list(v: &Value, k: &str) -> anyhow::Result<Vec<Value>> {
    match &v[k] {
        Value::Array(a) => Ok(a.clone()),
        Value::Null => Ok(Vec::new()),
        other => anyhow::bail!("\"{k}\" is not a list: {other}"),
    }
}

/// One metric's values per system, `{"metric", "unit", "ours": …, "floor": …}`, as rows.
fn metric_row(rows: &mut Vec<Row>, scenario: &str, m: &Value) -> anyhow::Result<()> {
    let metric = text(m, "metric")?;
    let unit = text(m, "unit")?;
    let Value::Object(fields) = m else {
        return Ok(());
    };
    if let Some(key) = fields.keys().find(|k| {
        !matches!(k.as_str(), "metric" | "unit" | "scenario") && Kind::from_str(k, false).is_err()
    }) {
        anyhow::bail!("unknown system {key:?} in {scenario} / {metric}");
    }
    for kind in SYSTEMS {
        if let Some(value) = fields.get(kind.key()) {
            rows.push(Row {
                scenario: scenario.to_owned(),
                metric: metric.clone(),
                kind,
                value: number(value),
                unit: unit.clone(),
            });
        }
    }
    Ok(())
}

/// `a / b` as `0.61×`, or `–` when either is missing, not finite, or b is 0.
fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => {
            let r = a / b;
            if r.abs() < 0.1 && r != 0.0 {
                format!("{r:.3}×")
            } else {
                format!("{r:.2}×")
            }
        }
        _ => "–".to_owned(),
    }
}

/// Two reports side by side, as a Markdown table: per scenario, metric and system the old and
/// new value and new / old, and on each `ours` row our ratio to the floor in each run; then the
/// bench's ceilings of each run, so a reader sees whether the machine itself changed.
pub(crate) fn compare(old: &Report, new: &Report) -> String {
    let mut keys = old.keys();
    for k in new.keys() {
        if !keys.iter().any(|(s, m, _)| *s == k.0 && *m == k.1) {
            keys.push(k);
        }
    }
    let mut out = String::from(
        "| scenario | metric | system | old | new | new / old | ours / floor, old | ours / floor, new |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (scenario, metric, unit) in keys {
        for kind in SYSTEMS {
            let (o, n) = (
                old.get(&scenario, &metric, kind),
                new.get(&scenario, &metric, kind),
            );
            if o.is_none() && n.is_none() {
                continue;
            }
            let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| fmt_value(v, &unit));
            let to_floor = |r: &Report| {
                if kind == Kind::Ours {
                    fmt_ratio(
                        r.get(&scenario, &metric, Kind::Ours),
                        r.get(&scenario, &metric, Kind::Floor),
                    )
                } else {
                    String::new()
                }
            };
            out.push_str(&format!(
                "| {scenario} | {metric} | {} | {} | {} | {} | {} | {} |\n",
                kind.key(),
                cell(o),
                cell(n),
                fmt_ratio(n, o),
                to_floor(old),
                to_floor(new)
            ));
        }
    }
    let mut ceilings: Vec<(String, String, String)> = Vec::new();
    for c in old.ceilings.iter().chain(&new.ceilings) {
        if !ceilings
            .iter()
            .any(|(s, w, _)| *s == c.scenario && *w == c.what)
        {
            ceilings.push((c.scenario.clone(), c.what.clone(), c.unit.clone()));
        }
    }
    for (scenario, what, unit) in ceilings {
        let find = |r: &Report| {
            r.ceilings
                .iter()
                .find(|c| c.scenario == scenario && c.what == what)
                .map(|c| c.value)
        };
        let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| fmt_value(v, &unit));
        let (o, n) = (find(old), find(new));
        out.push_str(&format!(
            "| {scenario} | ceiling: {what} | bench | {} | {} | {} | | |\n",
            cell(o),
            cell(n),
            fmt_ratio(n, o)
        ));
    }
    out
}

pub(crate) fn fmt_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    match unit {
        "msg/s" if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        "msg/s" if v >= 1e3 => format!("{:.1} k/s", v / 1e3),
        "msg/s" => format!("{v:.0} /s"),
        "ms" => format!("{v:.2} ms"),
        "MiB" => format!("{v:.1} MiB"),
        "B" => format!("{v:.0} B"),
        "µs" => format!("{v:.2} µs"),
        "ns" => format!("{v:.0} ns"),
        "updates" => format!("{v:.0} updates"),
        "%" => format!("{v:.3} %"),
        "fraction" => format!("{v:.4}"),
        _ => format!("{v:.3} {unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::default();
        r.add(
            "fanout",
            "ZMQ+JSON sustained, to each of 10",
            Kind::Ours,
            200_000.0,
            "msg/s",
        );
        r.add(
            "fanout",
            "ZMQ+JSON sustained, to each of 10",
            Kind::Floor,
            250_000.0,
            "msg/s",
        );
        r.ceiling(
            "fanout",
            "10 subscribers from a bare PUB",
            900_000.0,
            "msg/s",
        );
        r.add("latency @ 1,000/s", "p99", Kind::Ours, 0.2, "ms");
        r.add("latency @ 1,000/s", "p99", Kind::Python, f64::NAN, "ms");
        r.add("cluster", "put → watch", Kind::Nats, 3.0, "ms");
        r.note("2 cores");
        r
    }

    #[test]
    fn the_json_report_reads_back_as_written() {
        let r = sample();
        let text = r.to_json("thingsbus-bench fanout").to_string();
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        let (back, command) = Report::from_json(&v).expect("reads back");
        assert_eq!(command, "thingsbus-bench fanout");
        assert_eq!(back.ceilings, r.ceilings);
        assert_eq!(back.notes, r.notes);
        assert_eq!(back.rows.len(), r.rows.len());
        assert_eq!(back.to_json("thingsbus-bench fanout"), v);
        assert_eq!(back.markdown(), r.markdown());
    }

    #[test]
    fn the_json_report_has_one_object_per_scenario_with_values_per_system() {
        let v = sample().to_json("c");
        let scenarios = v["scenarios"].as_array().expect("a list");
        let names: Vec<_> = scenarios.iter().map(|s| s["scenario"].clone()).collect();
        assert_eq!(
            names,
            [
                json!("fanout"),
                json!("latency @ 1,000/s"),
                json!("cluster")
            ]
        );
        let fanout = &scenarios[0];
        assert_eq!(
            fanout["metrics"][0],
            json!({"metric": "ZMQ+JSON sustained, to each of 10", "unit": "msg/s",
                   "ours": 200_000.0, "floor": 250_000.0})
        );
        assert_eq!(fanout["ceilings"][0]["value"], json!(900_000.0));
        // Not measured is null, not a string or a missing key.
        assert_eq!(scenarios[1]["metrics"][0]["python"], Value::Null);
        assert_eq!(v["notes"], json!(["2 cores"]));
    }

    #[test]
    fn the_json_line_of_earlier_runs_reads_too() {
        let v = json!({"command": "thingsbus-bench fanout", "notes": ["n"], "results": [
            {"scenario": "fanout", "metric": "ZMQ+JSON sustained, to each of 10", "unit": "msg/s",
             "ours": 1.0, "floor": 2.0}]});
        let (r, command) = Report::from_json(&v).expect("reads");
        assert_eq!(command, "thingsbus-bench fanout");
        assert_eq!(r.rows.len(), 2);
        assert_eq!(
            r.get("fanout", "ZMQ+JSON sustained, to each of 10", Kind::Floor),
            Some(2.0)
        );
        assert_eq!(r.notes, ["n"]);
    }

    #[test]
    fn a_file_that_is_not_a_report_is_refused_saying_so() {
        let e = Report::from_json(&json!({"command": "x", "figures": []})).expect_err("refused");
        assert!(
            format!("{e:#}").contains("not a thingsbus-bench JSON report"),
            "{e:#}"
        );
        let e = Report::from_json(&json!({"command": "x", "scenarios": [
            {"scenario": "s", "metrics": [{"metric": "m", "unit": "ms", "redis": 1.0}]}]}))
        .expect_err("refused");
        assert!(
            format!("{e:#}").contains("unknown system \"redis\""),
            "{e:#}"
        );
    }

    #[test]
    fn compare_prints_old_new_their_ratio_and_ours_to_the_floor_in_each() {
        let old = sample();
        let mut new = Report::default();
        new.add(
            "fanout",
            "ZMQ+JSON sustained, to each of 10",
            Kind::Ours,
            300_000.0,
            "msg/s",
        );
        new.add(
            "fanout",
            "ZMQ+JSON sustained, to each of 10",
            Kind::Floor,
            250_000.0,
            "msg/s",
        );
        new.add(
            "fanout-many",
            "min received fraction",
            Kind::Ours,
            1.0,
            "fraction",
        );
        new.ceiling(
            "fanout",
            "10 subscribers from a bare PUB",
            450_000.0,
            "msg/s",
        );
        let table = compare(&old, &new);
        let line = |needle: &str| {
            table
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle:?} in\n{table}"))
                .to_owned()
        };
        assert_eq!(
            line("| fanout | ZMQ+JSON sustained, to each of 10 | ours |"),
            "| fanout | ZMQ+JSON sustained, to each of 10 | ours | 200.0 k/s | 300.0 k/s | 1.50× | 0.80× | 1.20× |"
        );
        assert_eq!(
            line("| fanout | ZMQ+JSON sustained, to each of 10 | floor |"),
            "| fanout | ZMQ+JSON sustained, to each of 10 | floor | 250.0 k/s | 250.0 k/s | 1.00× |  |  |"
        );
        // Only in one run: shown, with – for the other.
        assert!(line("min received fraction").contains("| – | 1.0000 | – |"));
        assert!(line("| nats |").contains("| 3.00 ms | – | – |"), "{table}");
        assert!(line("ceiling: 10 subscribers").contains("| 0.50× |"));
        assert!(table.starts_with("| scenario | metric | system | old | new | new / old |"));
    }
}
