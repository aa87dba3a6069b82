//! Sending commands to things (PROTOCOL.md Part 3): a thread that owns a DEALER on the broker's
//! command endpoint and matches each reply to the caller waiting for it.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use thingsbus_protocol::command::{self, errors, CommandMessage};
use thingsbus_protocol::transport::{self, Worker};
use thingsbus_protocol::Namespace;
use tokio::sync::oneshot;

use crate::shared::lock;
use crate::Error;

/// Why a command got no data back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Nobody serves the thing or a prefix of it (`no_route`).
    #[error("nobody serves that thing (no_route): {0}")]
    NoRoute(String),
    /// The serving adaptor did not answer by the deadline (`timeout`).
    #[error("the thing did not answer in time (timeout): {0}")]
    Timeout(String),
    /// The serving adaptor went away while the command was out (`gone`).
    #[error("the serving adaptor went away (gone): {0}")]
    Gone(String),
    /// The broker has too many commands in flight (`busy`).
    #[error("the broker is busy: {0}")]
    Busy(String),
    /// The broker could not read the command (`bad_request`).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// This machine may not send commands to the broker (`not_allowed`, see `--allow-command`).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The thing's adaptor refused: its own error text.
    #[error("the thing refused: {error}")]
    Refused {
        /// The adaptor's error.
        error: String,
        /// More, if it said.
        detail: Option<String>,
    },
    /// No answer from the broker at all (not running, or unreachable).
    #[error("no answer from the command endpoint {0}: is the broker running?")]
    Transport(String),
}

impl CommandError {
    fn from_reply(error: String, detail: Option<String>) -> CommandError {
        let d = detail.clone().unwrap_or_default();
        match error.as_str() {
            errors::NO_ROUTE => CommandError::NoRoute(d),
            errors::TIMEOUT => CommandError::Timeout(d),
            errors::GONE => CommandError::Gone(d),
            errors::BUSY => CommandError::Busy(d),
            errors::BAD_REQUEST => CommandError::BadRequest(d),
            errors::NOT_ALLOWED => CommandError::NotAllowed(d),
            _ => CommandError::Refused { error, detail },
        }
    }
}

type Waiter = oneshot::Sender<Result<Value, CommandError>>;

struct Shared {
    outbox: Mutex<Vec<Vec<u8>>>,
    waiting: Mutex<HashMap<u64, Waiter>>,
    stop: AtomicBool,
}

/// The client's end: sends commands, hands out replies.
pub(crate) struct Commander {
    shared: Arc<Shared>,
    wake: UnixDatagram,
    next_id: AtomicU64,
    url: String,
    thread: Worker,
}

impl Commander {
    pub(crate) fn start(
        url: &str,
        curve: Option<&transport::ClientKeys>,
    ) -> Result<Commander, Error> {
        let ctx = zmq::Context::new();
        let socket = transport::connecting_socket(&ctx, zmq::DEALER, Some(100_000))?;
        if let Some(keys) = curve {
            transport::curve_client(&socket, keys)?;
        }
        transport::connect(&socket, "command endpoint", url)?;
        let (wake, wake_rx) = UnixDatagram::pair().map_err(Error::Start)?;
        wake.set_nonblocking(true).map_err(Error::Start)?;
        wake_rx.set_nonblocking(true).map_err(Error::Start)?;
        let shared = Arc::new(Shared {
            outbox: Mutex::new(Vec::new()),
            waiting: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("thingsbus-commands".into())
            .spawn(move || run(&socket, &wake_rx, &thread_shared, ctx))
            .map_err(Error::Start)?;
        Ok(Commander {
            shared,
            wake,
            next_id: AtomicU64::new(1),
            url: url.to_owned(),
            thread: Worker::new(thread),
        })
    }

    /// Sends a command and waits for its reply, at most `timeout` plus a second for the broker's
    /// own answer.
    pub(crate) async fn call(
        &self,
        ns: Namespace,
        data: Value,
        timeout: Duration,
    ) -> Result<Value, CommandError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.waiting).insert(id, tx);
        let m = CommandMessage::Command {
            id: Value::from(id),
            ns,
            data,
            timeout: Some(timeout.as_secs_f64().max(0.001)),
            deadline: None,
        };
        let was_empty = {
            let mut out = lock(&self.shared.outbox);
            let e = out.is_empty();
            out.push(m.to_json());
            e
        };
        if was_empty {
            let _ = self.wake.send(b"c");
        }
        match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(result)) => result,
            _ => {
                lock(&self.shared.waiting).remove(&id);
                Err(CommandError::Transport(self.url.clone()))
            }
        }
    }
}

impl Drop for Commander {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(b"s");
        self.thread.join();
    }
}

fn run(socket: &zmq::Socket, wake: &UnixDatagram, shared: &Shared, _ctx: zmq::Context) {
    let mut buf = [0u8; 64];
    while !shared.stop.load(Ordering::Relaxed) {
        let mut items = [
            socket.as_poll_item(zmq::POLLIN),
            zmq::PollItem::from_fd(wake.as_raw_fd(), zmq::POLLIN),
        ];
        if let Err(e) = zmq::poll(&mut items, 200) {
            if e != zmq::Error::EINTR {
                tracing::error!(error = %e, "command socket poll failed");
                return;
            }
        }
        while wake.recv(&mut buf).is_ok() {}
        let out = std::mem::take(&mut *lock(&shared.outbox));
        for body in out {
            // DEALER queues while the broker is unreachable (up to its high-water mark).
            if let Err(e) = socket.send(body, zmq::DONTWAIT) {
                tracing::debug!(error = %e, "command not sent");
            }
        }
        while let Ok(body) = socket.recv_bytes(zmq::DONTWAIT) {
            let Ok(CommandMessage::Reply { id, result }) = command::decode_json(&body) else {
                continue;
            };
            let Some(id) = id.as_u64() else { continue };
            if let Some(waiter) = lock(&shared.waiting).remove(&id) {
                let _ = waiter.send(result.map_err(|(e, d)| CommandError::from_reply(e, d)));
            }
        }
    }
}
