//! `GET /api/history/NS[?field=a.b&since=...&until=...&step=...&format=csv]`: the recorded
//! points of one series (see `crate::history`), min/avg/max per step, as JSON or CSV.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::App;
use crate::history::{self, span, store, Row};

#[derive(serde::Deserialize)]
pub(super) struct HistoryQuery {
    field: Option<String>,
    since: Option<String>,
    until: Option<String>,
    step: Option<String>,
    format: Option<String>,
}

fn text(status: StatusCode, body: String) -> Response {
    (status, body + "\n").into_response()
}

/// Seconds since 1970 of milliseconds, as JSON and CSV show times.
fn secs(ms: i64) -> f64 {
    ms as f64 / 1e3
}

pub(super) async fn history(
    State(app): State<App>,
    Path(ns): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let Some(reader) = app.history.clone() else {
        return text(
            StatusCode::NOT_FOUND,
            "history is off: start the broker with --history PATH (and --http)".into(),
        );
    };
    if let Err(e) = thingsbus_protocol::namespace::validate(&ns) {
        return text(StatusCode::BAD_REQUEST, e.to_string());
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("format: {other:?} is not json or csv"),
            )
        }
    };
    let plan = match span::plan(
        q.since.as_deref(),
        q.until.as_deref(),
        q.step.as_deref(),
        history::now_ms(),
        reader.resolution_ms,
    ) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.0),
    };
    let field = q.field;
    let resolution_ms = reader.resolution_ms;
    let asked_ns = ns.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let ns = asked_ns;
        reader.with(|conn| -> Result<(String, Vec<Row>), Refusal> {
            let failed = |e: rusqlite::Error| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading the history file failed: {e}"),
                )
            };
            let known = store::fields(conn, &ns).map_err(failed)?;
            let field = pick_field(&ns, field, &known)?;
            let rows = store::query(conn, &ns, &field, &plan).map_err(failed)?;
            Ok((field, rows))
        })
    })
    .await;
    let (field, rows) = match answer {
        Ok(Ok(a)) => a,
        Ok(Err((status, why))) => return text(status, why),
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading history failed: {e}"),
            )
        }
    };
    let tier = span::tiers(resolution_ms)[plan.tier].name;
    if csv {
        let mut out = String::from("t,time,min,avg,max,n\n");
        for r in &rows {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{}",
                secs(r.t_ms),
                span::format_rfc3339(r.t_ms),
                r.min,
                r.avg,
                r.max,
                r.n
            );
        }
        return ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response();
    }
    let points: Vec<_> = rows
        .iter()
        .map(|r| json!({"t": secs(r.t_ms), "min": r.min, "avg": r.avg, "max": r.max, "n": r.n}))
        .collect();
    axum::Json(json!({
        "ns": ns,
        "field": field,
        "tier": tier,
        "since": secs(plan.since_ms),
        "until": secs(plan.until_ms),
        "step": secs(plan.step_ms),
        "points": points,
    }))
    .into_response()
}

/// The field asked for, or the only one (the thing's own number first) when none is.
/// An answer other than the points: its status and why.
type Refusal = (StatusCode, String);

fn pick_field(ns: &str, asked: Option<String>, known: &[String]) -> Result<String, Refusal> {
    let listed = || {
        known
            .iter()
            .map(|f| {
                if f.is_empty() {
                    "(the value itself)"
                } else {
                    f
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if known.is_empty() {
        return Err((
            StatusCode::NOT_FOUND,
            format!("nothing recorded for {ns:?} (only numbers and booleans are)"),
        ));
    }
    match asked {
        Some(f) if known.contains(&f) => Ok(f),
        Some(f) => Err((
            StatusCode::NOT_FOUND,
            format!("no field {f:?} recorded for {ns:?}; recorded: {}", listed()),
        )),
        None if known.len() == 1 => Ok(known[0].clone()),
        None if known[0].is_empty() => Ok(String::new()),
        None => Err((
            StatusCode::BAD_REQUEST,
            format!(
                "{ns:?} has several fields ({}): choose one with ?field=",
                listed()
            ),
        )),
    }
}
