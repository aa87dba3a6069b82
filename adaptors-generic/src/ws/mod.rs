//! `thingsbus-ws-adaptor`'s gateway: nodes speaking pyaiot's WebSocket node protocol (RIOT
//! nodes, pyaiot's `ws_test_client.py`) become things, and obey commands.
//!
//! - [`gateway`]: the protocol's rules, connection events in, actions out (pure);
//! - [`serve`]: the accept loop (TLS, the handshake with its checks: path `/node`, the token, the
//!   node's name), one task per connection, and the one task that owns the gateway and carries
//!   its actions out.

pub mod gateway;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt as _, StreamExt as _};
use thingsbus_adaptor::Adaptor;
use thingsbus_broker::http_access::{presented, Tokens};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use gateway::{Action, Config, Gateway, WsCounts, HANDSHAKE_FOR};

/// How the adaptor serves its nodes.
pub struct Options {
    /// The gateway's limits.
    pub config: Config,
    /// The longest message read from a node, in bytes.
    pub max_message: usize,
    /// How often a node is pinged; one silent (not even a pong) for three of these is closed,
    /// so a node whose network vanished does not stay online.
    pub ping_every: Duration,
    /// `--ws-tls-cert`/`--ws-tls-key`: TLS (`wss://`).
    pub tls: Option<TlsAcceptor>,
    /// `--ws-token-file`: a node must present one of these tokens.
    pub tokens: Option<Tokens>,
    /// Between the counts lines.
    pub report_every: Duration,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("config", &self.config)
            .field("max_message", &self.max_message)
            .field("ping_every", &self.ping_every)
            .field("tls", &self.tls.is_some())
            .field("tokens", &self.tokens.is_some())
            .field("report_every", &self.report_every)
            .finish()
    }
}

/// What a connection's task tells the gateway's task.
enum Event {
    Open {
        conn: u64,
        name: Option<String>,
        ip: IpAddr,
        tx: mpsc::Sender<Out>,
    },
    Text {
        conn: u64,
        text: String,
    },
    Oversized,
    Closed {
        conn: u64,
    },
}

/// What the gateway's task tells a connection's task.
enum Out {
    Text(String),
    Close(u16, String),
}

/// Messages queued for one node at most; a node that does not read them is closed.
const NODE_QUEUE: usize = 64;
/// How long a write to a node may take.
const WRITE_FOR: Duration = Duration::from_secs(10);

/// Serves nodes on `listener` (at `ws://ADDR:PORT/node`, or `wss://` with TLS), publishing
/// through `adaptor` (whose namespace is the nodes' base) and serving commands below it, until
/// `shutdown` resolves; logs the counts every `report_every` and on the way out, then closes the
/// adaptor.
///
/// # Errors
/// When the command handler cannot be registered with the adaptor.
pub async fn serve<S>(
    listener: TcpListener,
    adaptor: Adaptor,
    options: Options,
    shutdown: S,
) -> anyhow::Result<()>
where
    S: Future<Output = std::io::Result<&'static str>>,
{
    let mut commands = crate::pyaiot::commands::accept(&adaptor, "WebSocket gateway")?;
    let counts = Arc::new(WsCounts::default());
    let (events_tx, mut events) = mpsc::channel::<Event>(1024);
    let accept = tokio::spawn(accept_loop(
        listener,
        Arc::new(Shared {
            tls: options.tls,
            tokens: options.tokens,
            max_message: options.max_message,
            ping_every: options.ping_every,
            counts: counts.clone(),
            events: events_tx,
        }),
        options.config.max_nodes,
    ));
    let seed = u64::from(std::process::id()) << 32
        | SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
    let mut gateway = Gateway::new(options.config, counts, seed);
    let mut senders: HashMap<u64, mpsc::Sender<Out>> = HashMap::new();
    let mut replies = HashMap::new();
    let mut next_id = 0u64;
    let mut report = tokio::time::interval(options.report_every);
    report.tick().await;
    tokio::pin!(shutdown);
    loop {
        let wake = gateway.next_wake();
        let actions = tokio::select! {
            s = &mut shutdown => {
                tracing::info!(signal = s.unwrap_or("?"), "stopping");
                break;
            }
            Some(e) = events.recv() => match e {
                Event::Open { conn, name, ip, tx } => {
                    senders.insert(conn, tx);
                    gateway.open(conn, name.as_deref(), ip, Instant::now(), crate::pyaiot::epoch(SystemTime::now()))
                }
                Event::Text { conn, text } => gateway.message(conn, &text),
                Event::Oversized => {
                    gateway.oversized();
                    continue;
                }
                Event::Closed { conn } => {
                    senders.remove(&conn);
                    gateway.closed(conn)
                }
            },
            Some(c) = commands.recv() => {
                next_id += 1;
                let deadline = c.deadline_at(Instant::now());
                replies.insert(next_id, c.reply);
                gateway.command(next_id, &c.rel, &c.data, deadline)
            }
            () = sleep_until(wake) => gateway.tick(Instant::now()),
            _ = report.tick() => {
                gateway.counts().log("ws report");
                continue;
            }
        };
        for action in actions {
            match action {
                Action::Send { conn, text } => {
                    let full = senders
                        .get(&conn)
                        .is_some_and(|tx| tx.try_send(Out::Text(text)).is_err());
                    if full {
                        // Dropping its queue closes the connection; its task reports it closed.
                        senders.remove(&conn);
                        gateway.counts().too_slow.inc();
                    }
                }
                Action::Close { conn, code, reason } => {
                    if let Some(tx) = senders.remove(&conn) {
                        let _ = tx.try_send(Out::Close(code, reason));
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
    accept.abort();
    gateway.counts().log("ws adaptor stopped");
    adaptor.close(Duration::from_secs(1));
    Ok(())
}

/// What every connection's task needs.
struct Shared {
    tls: Option<TlsAcceptor>,
    tokens: Option<Tokens>,
    max_message: usize,
    ping_every: Duration,
    counts: Arc<WsCounts>,
    events: mpsc::Sender<Event>,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, max_connections: usize) {
    // Beyond the limit, connections wait in the listen backlog until one closes.
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut conn = 0u64;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "cannot accept a WebSocket connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        conn += 1;
        tokio::spawn(connection(stream, peer, conn, shared.clone(), permit));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    conn: u64,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    match &shared.tls {
        None => node(stream, peer, conn, &shared).await,
        Some(tls) => match tokio::time::timeout(HANDSHAKE_FOR, tls.accept(stream)).await {
            Ok(Ok(stream)) => node(stream, peer, conn, &shared).await,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                shared.counts.refused.inc();
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake took too long");
                shared.counts.refused.inc();
            }
        },
    }
}

fn refusal(status: StatusCode, text: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(format!("{text}\n")));
    *r.status_mut() = status;
    r
}

/// The handshake's checks: the path, the token, the node's name; a refusal is the status and
/// the text for the node.
fn check_request(
    req: &Request,
    tokens: Option<&Tokens>,
) -> Result<Option<String>, (StatusCode, String)> {
    if req.uri().path() != "/node" {
        return Err((
            StatusCode::NOT_FOUND,
            "nodes connect to /node (ws://HOST:PORT/node)".into(),
        ));
    }
    if let Some(tokens) = tokens {
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let cookies = req
            .headers()
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok());
        if presented(authorization, cookies)
            .and_then(|t| tokens.check(t))
            .is_none()
        {
            return Err((
                StatusCode::UNAUTHORIZED,
                "a node presents a token of --ws-token-file: Authorization: Bearer TOKEN".into(),
            ));
        }
    }
    gateway::name_from_query(req.uri().query()).map_err(|e| (StatusCode::BAD_REQUEST, e))
}

async fn node<T>(stream: T, peer: SocketAddr, conn: u64, shared: &Shared)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut name = None;
    let config = WebSocketConfig::default()
        .max_message_size(Some(shared.max_message))
        .max_frame_size(Some(shared.max_message));
    // The callback's error type is tungstenite's HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        name = check_request(req, shared.tokens.as_ref())
            .map_err(|(status, text)| refusal(status, &text))?;
        Ok(resp)
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    let mut ws = match tokio::time::timeout(HANDSHAKE_FOR, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebSocket handshake refused or failed");
            shared.counts.refused.inc();
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket handshake took too long");
            shared.counts.refused.inc();
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel(NODE_QUEUE);
    let open = Event::Open {
        conn,
        name,
        ip: peer.ip().to_canonical(),
        tx,
    };
    if shared.events.send(open).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(shared.ping_every);
    ping.tick().await;
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if heard.elapsed() > 3 * shared.ping_every {
                    tracing::debug!(%peer, "node silent (no pong): closing");
                    shared.counts.silent.inc();
                    let frame = CloseFrame { code: CloseCode::Away, reason: "silent".into() };
                    let _ = tokio::time::timeout(WRITE_FOR, ws.close(Some(frame))).await;
                    break;
                }
                let sent = tokio::time::timeout(WRITE_FOR, ws.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    heard = Instant::now();
                    let e = Event::Text { conn, text: t.as_str().to_owned() };
                    if shared.events.send(e).await.is_err() {
                        break;
                    }
                }
                // pyaiot reads binary frames as JSON too.
                Some(Ok(Message::Binary(b))) => {
                    heard = Instant::now();
                    let text = String::from_utf8_lossy(&b).into_owned();
                    if shared.events.send(Event::Text { conn, text }).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => heard = Instant::now(),
                Some(Err(WsError::Capacity(e))) => {
                    tracing::debug!(%peer, error = %e, "message too large: closing");
                    let _ = shared.events.send(Event::Oversized).await;
                    let frame = CloseFrame {
                        code: CloseCode::Size,
                        reason: "message too large".into(),
                    };
                    let _ = tokio::time::timeout(WRITE_FOR, ws.close(Some(frame))).await;
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "WebSocket connection failed");
                    break;
                }
            },
            o = rx.recv() => match o {
                Some(Out::Text(text)) => {
                    let sent = tokio::time::timeout(WRITE_FOR, ws.send(Message::text(text))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                }
                Some(Out::Close(code, reason)) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let _ = tokio::time::timeout(WRITE_FOR, ws.close(Some(frame))).await;
                    break;
                }
                None => {
                    let _ = tokio::time::timeout(WRITE_FOR, ws.close(None)).await;
                    break;
                }
            },
        }
    }
    let _ = shared.events.send(Event::Closed { conn }).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
