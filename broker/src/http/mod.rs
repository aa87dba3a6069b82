//! The HTTP side (`--http ADDR:PORT`): Prometheus metrics, health, the directory as JSON,
//! Server-Sent Events, a live web page, commands to things, and with `--history` the recorded
//! values (`/api/history/NS`, see `crate::history`).
//!
//! It is a client of the broker itself: a `thingsbus-client` mirror on the broker's own
//! directory output (asking for stale things too), so it costs the ingest path nothing and shows
//! exactly what every other client sees; its commands go through the broker's command endpoint
//! like any other client's. It runs on its own thread and tokio runtime.
//!
//! Protections (`guard.rs`): a `Host` allow-list always; with `--http-token-file`, bearer tokens
//! (or the cookie `POST /login` sets for the page); with `--http-tls-cert`, HTTPS only
//! (`conn.rs`). Every response carries a Content-Security-Policy that allows no inline script.

pub(crate) mod conn;
pub(crate) mod guard;
mod history;
mod json;
mod sse;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use serde_json::{json, Value};
use thingsbus_client::{Client, CommandError};

use crate::config::Config;
use crate::endpoints::Endpoints;
use crate::error::Error;
use crate::stats::{self, Stats};
use conn::Peer;
use guard::{Hosts, Role, Tokens};
use thingsbus_protocol::transport::ClientKeys;

const PAGE: &str = include_str!("../web/index.html");
const SCRIPT: &str = include_str!("../web/app.js");
const STYLE: &str = include_str!("../web/app.css");
const LOGIN: &str = include_str!("../web/login.html");

/// No inline script or style, nothing from elsewhere, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// How often the mirror's size is compared with the directory's.
const MIRROR_CHECK: Duration = Duration::from_secs(5);
/// Largest command body.
const COMMAND_BYTES: usize = 64 * 1024;
/// How long a command waits for its thing's answer unless `?timeout=` says otherwise (at most
/// [`COMMAND_TIMEOUT_MAX`]).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
const COMMAND_TIMEOUT_MAX: f64 = 60.0;

/// Who may do what (see `guard.rs`).
struct Access {
    tokens: Option<Tokens>,
    hosts: Hosts,
    /// Without tokens, commands are taken from these addresses (`--allow-command`).
    allow_command: Vec<crate::Cidr>,
    /// Whether the server speaks HTTPS (the login cookie is then `Secure`).
    tls: bool,
}

#[derive(Clone)]
struct App {
    /// The mirror served from; replaced by a fresh one when it holds too much (see
    /// [`keep_mirror_bounded`]).
    mirror: Arc<RwLock<Client>>,
    stats: Arc<Stats>,
    thing_metrics: bool,
    /// Each numeric field as a gauge, at most this many series.
    value_metrics: Option<usize>,
    /// Event streams open now.
    streams: Arc<std::sync::atomic::AtomicUsize>,
    /// Bytes of events that may wait for one stream.
    sse_queue_bytes: usize,
    access: Arc<Access>,
    /// With `--history`: the recorded values, for `/api/history`.
    history: Option<Arc<crate::history::Reader>>,
}

impl App {
    /// The mirror now (a cheap handle).
    fn client(&self) -> Client {
        self.mirror
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A connection to the broker's own outputs, asking for stale things too; under CURVE with
/// `keys` (a key pair made for this run, which the ZAP handler knows).
async fn mirror(
    endpoints: &Endpoints,
    keys: Option<&ClientKeys>,
) -> Result<Client, thingsbus_client::Error> {
    let mut builder = Client::builder()
        .url(&endpoints.directory)
        .snapshot_url(&endpoints.snapshot)
        .command_url(&endpoints.command)
        .include_stale(true);
    if let Some(keys) = keys {
        builder = builder.curve(keys.clone());
    }
    builder.connect().await
}

/// Most things the HTTP side's mirror may hold while the directory holds `things`: the mirror
/// never forgets a thing by itself, so once it holds this many it is loaded afresh.
fn mirror_bound(things: u64) -> u64 {
    things + things / 10 + 1_000
}

/// The machine's own name (and `NAME.local`): a page opened by it is no rebinding.
fn own_host_names() -> Vec<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .map(|h| vec![format!("{h}.local"), h])
        .unwrap_or_default()
}

/// Binds `addr` now (so a taken port, or a bad TLS or token file, fails the start) and serves on
/// a thread until `stop`.
pub(crate) fn start(
    addr: SocketAddr,
    endpoints: &Endpoints,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    config: &Config,
    keys: Option<ClientKeys>,
) -> Result<(JoinHandle<()>, SocketAddr), Error> {
    let opts = &config.http_options;
    let tls = match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => Some(conn::tls_acceptor(cert, key).map_err(Error::Http)?),
        (None, None) => None,
        _ => {
            return Err(Error::Http(
                "--http-tls-cert and --http-tls-key go together: give both, or neither".into(),
            ))
        }
    };
    let tokens = match &opts.token_file {
        Some(path) => Some(Tokens::load(path).map_err(Error::Http)?),
        None => None,
    };
    if !addr.ip().is_loopback() {
        match (&tokens, &tls) {
            (None, _) => tracing::warn!(
                %addr,
                "the HTTP endpoint is open beyond this machine without tokens: whoever reaches it \
                 reads every thing (give --http-token-file, and --http-tls-cert/--http-tls-key)"
            ),
            (Some(_), None) => tracing::warn!(
                %addr,
                "the HTTP endpoint takes tokens beyond this machine without TLS: they cross the \
                 network in clear (give --http-tls-cert and --http-tls-key)"
            ),
            (Some(_), Some(_)) => {}
        }
    }
    let mut names = opts.allowed_hosts.clone();
    names.extend(own_host_names());
    let access = Access {
        tokens,
        hosts: Hosts::new(addr.ip(), &names),
        allow_command: config.allow_command.clone(),
        tls: tls.is_some(),
    };
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
        .block_on(mirror(endpoints, keys.as_ref()))
        .map_err(|e| Error::Bind {
            what: "HTTP endpoint's mirror",
            endpoint: endpoints.directory.clone(),
            reason: e.to_string(),
        })?;
    let mirror = Arc::new(RwLock::new(client));
    let recording = match &config.history {
        Some(h) => Some(crate::history::History::start(
            h,
            mirror.clone(),
            stats.clone(),
            stop.clone(),
            config.fault.as_deref(),
        )?),
        None => None,
    };
    let app = App {
        history: recording.as_ref().map(|h| h.reader.clone()),
        mirror,
        stats: stats.clone(),
        thing_metrics: config.http_thing_metrics,
        value_metrics: config.http_value_metrics,
        streams: Arc::default(),
        sse_queue_bytes: opts.sse_queue_bytes,
        access: Arc::new(access),
    };
    let write_timeout = opts.write_timeout;
    let endpoints = endpoints.clone();
    let thread = std::thread::Builder::new()
        .name("thingsbus-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener)
                    .and_then(|l| conn::Listener::start(l, tls, write_timeout, stats))
                {
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
                tokio::spawn(keep_mirror_bounded(app.clone(), endpoints, keys));
                let server = axum::serve(
                    listener,
                    router(app).into_make_service_with_connect_info::<Peer>(),
                )
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
            // The writer writes what waits before it ends.
            if let Some(h) = recording {
                h.join();
            }
        })?;
    Ok((thread, bound))
}

/// The mirror holds every thing it ever saw (stale ones too), while the directory forgets things
/// after `--forget-after`: when the mirror holds more than [`mirror_bound`] of what the directory
/// holds, a fresh mirror is filled from the broker and takes its place.
async fn keep_mirror_bounded(app: App, endpoints: Endpoints, keys: Option<ClientKeys>) {
    loop {
        tokio::time::sleep(MIRROR_CHECK).await;
        // Counting walks the whole mirror: not on this runtime's only worker.
        let client = app.client();
        let held = tokio::task::spawn_blocking(move || client.len())
            .await
            .unwrap_or(0) as u64;
        let things = app.stats.things.load(Ordering::Relaxed);
        if held <= mirror_bound(things) {
            continue;
        }
        tracing::info!(
            held,
            things,
            "the HTTP side's copy holds things the directory forgot: loading it afresh"
        );
        let fresh = match mirror(&endpoints, keys.as_ref()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the HTTP side could not load the directory afresh");
                continue;
            }
        };
        let filled = tokio::time::timeout(Duration::from_secs(60), async {
            while !fresh.is_filled() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if filled.is_err() {
            tracing::warn!("the HTTP side's fresh copy of the directory did not fill in 60 s");
            continue;
        }
        let old = std::mem::replace(
            &mut *app
                .mirror
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            fresh,
        );
        app.stats
            .http_mirror_reloads
            .fetch_add(1, Ordering::Relaxed);
        // The last handle joins the mirror's thread: not on this runtime's only worker. Event
        // streams on the old mirror end; their browsers reconnect to the new one.
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/login", post(login))
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/api/session", get(session))
        .route("/api/things", get(things))
        .route("/api/things/{ns}", get(thing))
        .route(
            "/api/things/{ns}/command",
            post(command).layer(DefaultBodyLimit::max(COMMAND_BYTES)),
        )
        .route("/api/events", get(sse::events))
        .route("/api/history/{ns}", get(history::history))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Refuses unknown `Host` names, checks the token (with `--http-token-file`), gives the request
/// its [`Role`], and adds the security headers to every answer.
async fn guard(
    State(app): State<App>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    // Health has nothing to steal: probes reach it by any name, without a token.
    let open = path == "/healthz" || path == "/readyz";
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"));
    if let Some(host) = host.filter(|h| !open && !app.access.hosts.allows(h)) {
        return secured(
            (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this server does not answer to the name {host:?}; if that is its name, give \
                     it to the broker with --http-allowed-hosts\n"
                ),
            )
                .into_response(),
        );
    }
    let role = match &app.access.tokens {
        None if app
            .access
            .allow_command
            .iter()
            .any(|c| c.contains(peer.ip())) =>
        {
            Role::Command
        }
        None => Role::Read,
        Some(tokens) => {
            let headers = req.headers();
            let given = guard::presented(
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
                headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            match given.and_then(|t| tokens.check(t)) {
                Some(role) => role,
                None if open || path == "/login" => Role::Read,
                None => return secured(unauthorized(path == "/", given.is_some())),
            }
        }
    };
    req.extensions_mut().insert(role);
    secured(next.run(req).await)
}

/// 401 asking for a bearer token; the page's address answers with the sign-in form.
fn unauthorized(page: bool, given: bool) -> Response {
    let challenge = if given {
        "Bearer realm=\"thingsbus\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"thingsbus\""
    };
    let headers = [(header::WWW_AUTHENTICATE, challenge)];
    if page {
        (StatusCode::UNAUTHORIZED, headers, Html(LOGIN)).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            headers,
            "a token is needed: send `Authorization: Bearer TOKEN` (see --http-token-file)\n",
        )
            .into_response()
    }
}

/// Adds the headers every answer carries.
fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// The sign-in form's target: a good token becomes an `HttpOnly`, `SameSite=Strict` cookie,
/// which the page's requests (its event stream too) then carry.
async fn login(State(app): State<App>, Form(form): Form<LoginForm>) -> Response {
    let Some(tokens) = &app.access.tokens else {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "./")]).into_response();
    };
    if tokens.check(form.token.trim()).is_none() {
        return unauthorized(true, true);
    }
    // A token from the file: its characters are all cookie-safe (see `guard::Tokens::parse`).
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict{}",
        guard::COOKIE,
        form.token.trim(),
        if app.access.tls { "; Secure" } else { "" }
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "./".to_owned()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
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
    } else if !app.client().is_filled() {
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

fn bad_prefix(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
}

fn json_bytes(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn things(State(app): State<App>, Query(q): Query<Prefix>) -> Response {
    let prefix = q.prefix.unwrap_or_default();
    if let Err(e) = thingsbus_protocol::namespace::validate(&prefix) {
        return bad_prefix(e);
    }
    let all = app.client().walk(&prefix);
    let mut out = Vec::with_capacity(all.iter().map(|t| t.data.len() + 112).sum::<usize>() + 2);
    json::write_things(&mut out, &all);
    json_bytes(out)
}

async fn thing(State(app): State<App>, Path(ns): Path<String>) -> Response {
    match app.client().get(&ns) {
        Some(t) => {
            let mut out = Vec::with_capacity(t.data.len() + 128);
            json::write_thing(&mut out, &t, true);
            json_bytes(out)
        }
        None => (StatusCode::NOT_FOUND, format!("no thing {ns:?}\n")).into_response(),
    }
}

/// What the page needs to know about its caller: whether it may send commands, which prefixes
/// are served (their things obey commands), and whether `/api/history` has anything to give
/// (without `--history` the page draws no sparkline and asks for none).
async fn session(State(app): State<App>, Extension(role): Extension<Role>) -> Response {
    let served = app
        .stats
        .commands
        .served
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Json(json!({
        "command": role == Role::Command,
        "served": served,
        "history": app.history.is_some(),
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct CommandQuery {
    /// Seconds to wait for the thing's answer.
    timeout: Option<f64>,
}

/// `POST /api/things/NS/command` with the command's data as a JSON body: sends it to the thing
/// through the broker's command endpoint and answers `{"ok":true,"data":…}` with the thing's
/// reply, or `{"ok":false,"error":…,"detail":…}` with a status saying why not.
async fn command(
    State(app): State<App>,
    Extension(role): Extension<Role>,
    Path(ns): Path<String>,
    Query(q): Query<CommandQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if role != Role::Command {
        let why = if app.access.tokens.is_some() {
            "this token may only read: sending commands needs a `command` token"
        } else {
            "commands over HTTP come only from the addresses of --allow-command (this machine \
             by default), or with a `command` token of --http-token-file"
        };
        return command_error(StatusCode::FORBIDDEN, "not_allowed", why);
    }
    // A JSON content type cannot be sent cross-site without the browser asking first (CORS),
    // which this server never allows.
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().starts_with("application/json"));
    if !json_type {
        return command_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "send the command's data as JSON, with Content-Type: application/json",
        );
    }
    let data: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return command_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("the body is not JSON: {e}"),
            )
        }
    };
    let timeout = match q.timeout {
        None => COMMAND_TIMEOUT,
        Some(s) if s > 0.0 && s <= COMMAND_TIMEOUT_MAX => Duration::from_secs_f64(s),
        Some(_) => {
            return command_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "timeout is in seconds, above 0 and at most 60",
            )
        }
    };
    match app.client().command(&ns, &data, timeout).await {
        Ok(reply) => Json(json!({"ok": true, "data": reply})).into_response(),
        Err(e) => {
            let (status, error, detail) = match e {
                CommandError::NoRoute(d) => (StatusCode::NOT_FOUND, "no_route", d),
                CommandError::Timeout(d) => (StatusCode::GATEWAY_TIMEOUT, "timeout", d),
                CommandError::Gone(d) => (StatusCode::BAD_GATEWAY, "gone", d),
                CommandError::Busy(d) => (StatusCode::SERVICE_UNAVAILABLE, "busy", d),
                CommandError::BadRequest(d) => (StatusCode::BAD_REQUEST, "bad_request", d),
                CommandError::NotAllowed(d) => (StatusCode::FORBIDDEN, "not_allowed", d),
                CommandError::Refused { error, detail } => {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        Json(json!({"ok": false, "error": error, "detail": detail})),
                    )
                        .into_response()
                }
                CommandError::Transport(d) => (StatusCode::BAD_GATEWAY, "unavailable", d),
                other => (StatusCode::BAD_GATEWAY, "unavailable", other.to_string()),
            };
            command_error(status, error, &detail)
        }
    }
}

fn command_error(status: StatusCode, error: &str, detail: &str) -> Response {
    (
        status,
        Json(json!({"ok": false, "error": error, "detail": detail})),
    )
        .into_response()
}

/// The Prometheus text format.
async fn metrics(State(app): State<App>) -> Response {
    let text = render_metrics(
        &app.stats,
        &app.client(),
        app.thing_metrics,
        app.value_metrics,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn render_metrics(st: &Stats, client: &Client, per_thing: bool, values: Option<usize>) -> String {
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
    if let Some(max) = values {
        let live = all
            .iter()
            .filter(|t| !t.stale)
            .map(|t| (t.ns.as_str(), t.value()));
        write_values(&mut out, live, max);
    }
    out
}

/// `thingsbus_value{ns,field}` for each number in each thing's value (the fields history
/// records), at most `max` series, then how many were left out.
fn write_values<'a>(out: &mut String, things: impl Iterator<Item = (&'a str, Value)>, max: usize) {
    let _ = writeln!(
        out,
        "# HELP thingsbus_value Each numeric field of each live thing (booleans as 0/1)."
    );
    let _ = writeln!(out, "# TYPE thingsbus_value gauge");
    let mut shown = 0usize;
    let mut omitted = 0u64;
    let mut fields = Vec::new();
    for (ns, value) in things {
        fields.clear();
        crate::history::values::numeric(&value, &mut fields);
        for (field, x) in &fields {
            if shown >= max {
                omitted += 1;
                continue;
            }
            shown += 1;
            // Namespaces need no escaping; field names are JSON keys and may hold anything.
            let _ = writeln!(
                out,
                "thingsbus_value{{ns=\"{ns}\",field=\"{}\"}} {x}",
                label_value(field)
            );
        }
    }
    stats::write_family(
        out,
        "thingsbus_value_series_omitted",
        stats::Kind::Gauge,
        "Numeric fields not shown as thingsbus_value: past --http-value-series-max.",
        [("", omitted)].into_iter(),
    );
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return s.into();
    }
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_gauges_by_field_escaped_and_capped() {
        let things = vec![
            ("garden.temp", json!(21.5)),
            (
                "kitchen.fridge",
                json!({"temp": 4, "door": {"open": true}, "name": "x"}),
            ),
            ("odd", json!({"a\"b\\c\nd": 1})),
        ];
        let mut out = String::new();
        write_values(&mut out, things.clone().into_iter(), 100);
        for line in [
            "thingsbus_value{ns=\"garden.temp\",field=\"\"} 21.5",
            "thingsbus_value{ns=\"kitchen.fridge\",field=\"temp\"} 4",
            "thingsbus_value{ns=\"kitchen.fridge\",field=\"door.open\"} 1",
            "thingsbus_value{ns=\"odd\",field=\"a\\\"b\\\\c\\nd\"} 1",
            "thingsbus_value_series_omitted 0",
        ] {
            assert!(out.contains(line), "{line:?} missing:\n{out}");
        }
        assert!(!out.contains("name"), "strings are no series:\n{out}");
        let mut capped = String::new();
        write_values(&mut capped, things.into_iter(), 2);
        assert_eq!(capped.matches("thingsbus_value{").count(), 2, "{capped}");
        assert!(
            capped.contains("thingsbus_value_series_omitted 2"),
            "{capped}"
        );
    }

    #[test]
    fn the_mirror_may_hold_a_tenth_more_than_the_directory_and_a_thousand() {
        assert_eq!(mirror_bound(0), 1_000);
        assert_eq!(mirror_bound(10_000), 12_000);
        assert!(mirror_bound(2_000_000) < 2_300_000);
    }
}
