//! Results: a Markdown table for people and one JSON line for machines.

use std::collections::BTreeMap;

use serde_json::json;

use crate::servers::Kind;

/// One measured figure.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) metric: String,
    pub(crate) kind: Kind,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
}

/// Everything measured in one run.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn add(
        &mut self,
        scenario: &str,
        metric: &str,
        kind: Kind,
        value: f64,
        unit: &'static str,
    ) {
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
            unit,
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

    pub(crate) fn markdown(&self) -> String {
        let mut keys: Vec<(String, String, &'static str)> = Vec::new();
        for r in &self.rows {
            let k = (r.scenario.clone(), r.metric.clone(), r.unit);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        // The baselines that appear in this run, in a fixed order.
        let baselines: Vec<Kind> = [Kind::Floor, Kind::Python, Kind::Nats]
            .into_iter()
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
        for (scenario, metric, unit) in keys {
            let cell = |k: Kind| {
                self.get(&scenario, &metric, k)
                    .map_or("–".to_owned(), |v| fmt_value(v, unit))
            };
            let ratio = |k: Kind| match (
                self.get(&scenario, &metric, Kind::Ours),
                self.get(&scenario, &metric, k),
            ) {
                (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => {
                    format!("{:.2}×", a / b)
                }
                _ => "–".to_owned(),
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
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }

    pub(crate) fn json_line(&self, command: &str) -> String {
        let mut results: Vec<serde_json::Value> = Vec::new();
        let mut by_key: BTreeMap<(String, String), serde_json::Map<String, serde_json::Value>> =
            BTreeMap::new();
        for r in &self.rows {
            let e = by_key
                .entry((r.scenario.clone(), r.metric.clone()))
                .or_default();
            e.insert("unit".into(), json!(r.unit));
            e.insert(r.kind.key().into(), json!(r.value));
        }
        for ((scenario, metric), mut m) in by_key {
            m.insert("scenario".into(), json!(scenario));
            m.insert("metric".into(), json!(metric));
            results.push(serde_json::Value::Object(m));
        }
        json!({"command": command, "results": results, "notes": self.notes}).to_string()
    }
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
        "updates" => format!("{v:.0} updates"),
        "%" => format!("{v:.3} %"),
        _ => format!("{v:.3} {unit}"),
    }
}
