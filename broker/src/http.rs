//! The read-only HTTP side (`--http ADDR:PORT`): Prometheus metrics, health, the directory as
//! JSON, Server-Sent Events, and a live web page.
//!
//! It is a client of the broker itself: a `thingsbus-client` mirror on the broker's own
//! directory output (asking for stale things too), so it costs the ingest path nothing and shows
//! exactly what every other client sees. It runs on its own thread and tokio runtime.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use thingsbus_client::{Client, EventKind, SubscribeOptions, Thing};

use crate::endpoints::Endpoints;
use crate::error::Error;
use crate::stats::{self, Stats};

const PAGE: &str = include_str!("web/index.html");
/// Events that may wait for one SSE client before it is dropped.
const SSE_QUEUE: usize = 4_096;
/// Event streams open at once at most; more are refused with 503.
const SSE_CLIENTS: usize = 256;

#[derive(Clone)]
struct App {
    client: Client,
    stats: Arc<Stats>,
    thing_metrics: bool,
    /// Event streams open now.
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// One open event stream, counted while it lives.
struct StreamSlot(Arc<std::sync::atomic::AtomicUsize>);

impl StreamSlot {
    /// A slot, unless [`SSE_CLIENTS`] are taken.
    fn take(open: &Arc<std::sync::atomic::AtomicUsize>) -> Option<StreamSlot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < SSE_CLIENTS).then_some(n + 1)
        })
        .ok()
        .map(|_| StreamSlot(open.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Binds `addr` now (so a taken port fails the start) and serves on a thread until `stop`.
pub(crate) fn start(
    addr: SocketAddr,
    endpoints: &Endpoints,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thing_metrics: bool,
) -> Result<(JoinHandle<()>, SocketAddr), Error> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => Error::AddressInUse {
            what: "HTTP endpoint",
            endpoint: addr.to_string(),
        },
        _ => Error::Bind {
            what: "HTTP endpoint",
            endpoint: addr.to_string(),
            reason: e.to_string(),
        },
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("thingsbus-http")
        .enable_all()
        .build()?;
    let client = runtime
        .block_on(
            Client::builder()
                .url(&endpoints.directory)
                .snapshot_url(&endpoints.snapshot)
                .command_url(&endpoints.command)
                .include_stale(true)
                .connect(),
        )
        .map_err(|e| Error::Bind {
            what: "HTTP endpoint's mirror",
            endpoint: endpoints.directory.clone(),
            reason: e.to_string(),
        })?;
    let app = App {
        client,
        stats,
        thing_metrics,
        streams: Arc::default(),
    };
    let thread = std::thread::Builder::new()
        .name("thingsbus-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "HTTP endpoint failed");
                        return;
                    }
                };
                let stopped = |stop: Arc<AtomicBool>| async move {
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                let server = axum::serve(listener, router(app))
                    .with_graceful_shutdown(stopped(stop.clone()));
                // Event streams never end by themselves: after a short grace, stop anyway.
                let grace = async {
                    stopped(stop).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                };
                tokio::select! {
                    r = server => {
                        if let Err(e) = r {
                            tracing::error!(error = %e, "HTTP endpoint failed");
                        }
                    }
                    () = grace => {}
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(200));
        })?;
    Ok((thread, bound))
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/api/things", get(things))
        .route("/api/things/{ns}", get(thing))
        .route("/api/events", get(events))
        .with_state(app)
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// 200 while every loop of the broker turns and every part can do its work; 503 with a line
/// for each problem otherwise (systemd, Docker and Kubernetes restart on it).
async fn health(State(app): State<App>) -> Response {
    let problems = app.stats.health.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n").into_response()
    }
}

/// 200 when the broker is healthy now and the HTTP side's mirror of the directory is filled;
/// 503 saying which is not.
async fn ready(State(app): State<App>) -> Response {
    let problems = app.stats.health.problems();
    if !problems.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n").into_response()
    } else if !app.client.is_filled() {
        // Sockets are bound and the state file read before this endpoint exists; what is
        // left is the mirror that the HTTP side serves from.
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

#[derive(serde::Deserialize)]
struct Prefix {
    prefix: Option<String>,
}

fn thing_json(t: &Thing) -> Value {
    json!({
        "data": t.value(),
        "ts": t.ts,
        "stale": t.stale,
        "seq": t.seq,
        "documentation_url": t.documentation_url.as_deref(),
    })
}

fn bad_prefix(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
}

async fn things(State(app): State<App>, Query(q): Query<Prefix>) -> Response {
    let prefix = q.prefix.unwrap_or_default();
    if let Err(e) = thingsbus_protocol::namespace::validate(&prefix) {
        return bad_prefix(e);
    }
    let map: serde_json::Map<String, Value> = app
        .client
        .walk(&prefix)
        .iter()
        .map(|t| (t.ns.as_str().to_owned(), thing_json(t)))
        .collect();
    Json(Value::Object(map)).into_response()
}

async fn thing(State(app): State<App>, Path(ns): Path<String>) -> Response {
    match app.client.get(&ns) {
        Some(t) => {
            let mut v = thing_json(&t);
            v["ns"] = json!(t.ns.as_str());
            Json(v).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no thing {ns:?}\n")).into_response(),
    }
}

async fn events(State(app): State<App>, Query(q): Query<Prefix>) -> Response {
    let prefix = q.prefix.unwrap_or_default();
    let Some(slot) = StreamSlot::take(&app.streams) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many event streams open (at most {SSE_CLIENTS})\n"),
        )
            .into_response();
    };
    let sub = match app.client.subscribe(
        &prefix,
        SubscribeOptions::new().tree(true).capacity(SSE_QUEUE),
    ) {
        Ok(s) => s,
        Err(e) => return bad_prefix(e),
    };
    // A client too slow to keep up lags; it is then dropped (its browser reconnects and
    // starts over), so it never holds anything up. Its slot goes with the stream.
    let stream = futures_util::stream::unfold((sub, slot), |(mut sub, slot)| async move {
        match sub.next().await {
            Some(Ok(e)) => {
                let kind = match e.kind {
                    EventKind::Expired => "expired",
                    _ => "update",
                };
                let mut data = thing_json(&e.thing);
                data["ns"] = json!(e.thing.ns.as_str());
                let event = Event::default().event(kind).data(data.to_string());
                Some((Ok::<Event, Infallible>(event), (sub, slot)))
            }
            Some(Err(lagged)) => {
                tracing::debug!(%lagged, "dropping a slow SSE client");
                None
            }
            None => None,
        }
    });
    // A first comment flushes the response head at once, before any event.
    let hello = futures_util::stream::once(async {
        Ok::<Event, Infallible>(Event::default().comment("thingsbus events"))
    });
    Sse::new(futures_util::StreamExt::chain(hello, stream))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The Prometheus text format.
async fn metrics(State(app): State<App>) -> Response {
    let text = render_metrics(&app.stats, &app.client, app.thing_metrics);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn render_metrics(st: &Stats, client: &Client, per_thing: bool) -> String {
    let mut out = String::with_capacity(8192);
    st.write_metrics(&mut out);
    let all = client.walk("");
    let live = all.iter().filter(|t| !t.stale).count() as u64;
    stats::write_family(
        &mut out,
        "thingsbus_live_things",
        stats::Kind::Gauge,
        "Things within the live window.",
        [("", live)].into_iter(),
    );
    if per_thing {
        let _ = writeln!(
            out,
            "# HELP thingsbus_thing_last_update_timestamp_seconds Time of each thing's last value."
        );
        let _ = writeln!(
            out,
            "# TYPE thingsbus_thing_last_update_timestamp_seconds gauge"
        );
        for t in &all {
            // Namespaces need no escaping in a label value (a-z, 0-9, '_', '-', '.').
            let _ = writeln!(
                out,
                "thingsbus_thing_last_update_timestamp_seconds{{ns=\"{}\"}} {}",
                t.ns, t.ts
            );
        }
    }
    out
}
