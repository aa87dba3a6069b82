//! Serving commands (PROTOCOL.md Part 3): a thread that owns a DEALER on the broker's command
//! endpoint, keeps the adaptor's registrations alive, and runs the handlers on a small runtime of
//! its own.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use thingsbus_protocol::command::{self, CommandMessage};
use thingsbus_protocol::transport::{self, Event};
use thingsbus_protocol::Namespace;

use crate::Error;

/// What a handler returns: the reply's data, or a text saying why the thing refused.
pub type HandlerResult = Result<Value, String>;

type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(Namespace, Value, SystemTime) -> BoxFuture + Send + Sync>;

/// Handlers running at once; further commands wait for a slot (and may reach their deadline).
pub(crate) const MAX_CONCURRENT: usize = 256;
/// The registration's time to live; it is renewed three times as often.
const TTL: f64 = 30.0;

/// Counters of a serving adaptor.
#[derive(Debug, Default)]
pub(crate) struct ServeCounters {
    pub(crate) commands: AtomicU64,
    pub(crate) replied: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) registered: AtomicBool,
}

struct Shared {
    handlers: Mutex<Vec<(Namespace, Handler)>>,
    /// Encoded replies waiting for the thread.
    replies: Mutex<Vec<Vec<u8>>>,
    /// New registrations to announce at once.
    announce: AtomicBool,
    stop: AtomicBool,
    counters: Arc<ServeCounters>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The handle kept by the adaptor.
pub(crate) struct Server {
    shared: Arc<Shared>,
    wake: Arc<UnixDatagram>,
    thread: transport::Worker,
}

impl Server {
    pub(crate) fn start(
        url: String,
        counters: Arc<ServeCounters>,
        curve: Option<&transport::ClientKeys>,
    ) -> Result<Server, Error> {
        let ctx = zmq::Context::new();
        let socket = transport::connecting_socket(&ctx, zmq::DEALER, None)?;
        if let Some(keys) = curve {
            transport::curve_client(&socket, keys)?;
        }
        // Watched before connecting, so that the first connection is seen too.
        let monitor = transport::monitor(&ctx, &socket, "serve", &[Event::Connected])?;
        transport::connect(&socket, "command endpoint", &url)?;
        let (wake, wake_rx) = UnixDatagram::pair().map_err(Error::Thread)?;
        wake.set_nonblocking(true).map_err(Error::Thread)?;
        wake_rx.set_nonblocking(true).map_err(Error::Thread)?;
        let wake = Arc::new(wake);
        let shared = Arc::new(Shared {
            handlers: Mutex::new(Vec::new()),
            replies: Mutex::new(Vec::new()),
            announce: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            counters,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("thingsbus-handler")
            .enable_time()
            .build()
            .map_err(Error::Thread)?;
        let worker = Worker {
            socket,
            monitor,
            wake_rx,
            wake: wake.clone(),
            shared: shared.clone(),
            runtime,
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT)),
            url,
            _ctx: ctx,
        };
        let thread = std::thread::Builder::new()
            .name("thingsbus-serve".into())
            .spawn(move || worker.run())
            .map_err(Error::Thread)?;
        Ok(Server {
            shared,
            wake,
            thread: transport::Worker::new(thread),
        })
    }

    /// Adds a handler for `prefix` and announces it to the broker at once.
    pub(crate) fn add(&self, prefix: Namespace, handler: Handler) {
        lock(&self.shared.handlers).push((prefix, handler));
        self.shared.announce.store(true, Ordering::Relaxed);
        let _ = self.wake.send(b"a");
    }

    /// Stops serving; handlers still running are abandoned.
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(b"s");
        self.thread.join();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    socket: zmq::Socket,
    monitor: zmq::Socket,
    wake_rx: UnixDatagram,
    wake: Arc<UnixDatagram>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
    permits: Arc<tokio::sync::Semaphore>,
    url: String,
    // Declared last: the sockets above close before their context ends.
    _ctx: zmq::Context,
}

impl Worker {
    fn run(self) {
        let renew_every = Duration::from_secs_f64(TTL / 3.0);
        let mut next_renew = Instant::now();
        let mut buf = [0u8; 64];
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_renew || self.shared.announce.swap(false, Ordering::Relaxed) {
                self.register();
                next_renew = now + renew_every;
            }
            let timeout = i64::try_from(next_renew.saturating_duration_since(now).as_millis())
                .unwrap_or(1000)
                .min(1000);
            let mut items = [
                self.socket.as_poll_item(zmq::POLLIN),
                self.monitor.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(self.wake_rx.as_raw_fd(), zmq::POLLIN),
            ];
            if let Err(e) = zmq::poll(&mut items, timeout) {
                if e != zmq::Error::EINTR {
                    tracing::error!(error = %e, "command socket poll failed; serving stops");
                    break;
                }
            }
            while self.wake_rx.recv(&mut buf).is_ok() {}
            // (Re)connected, e.g. after a broker restart: register again at once.
            let connected = transport::events(&self.monitor).count() > 0;
            if connected {
                tracing::debug!(url = %self.url, "command endpoint connected; registering");
                self.register();
                next_renew = Instant::now() + renew_every;
            }
            while let Ok(body) = self.socket.recv_bytes(zmq::DONTWAIT) {
                self.message(&body);
            }
            let replies = std::mem::take(&mut *lock(&self.shared.replies));
            for r in replies {
                if self.socket.send(r, zmq::DONTWAIT).is_ok() {
                    self.shared.counters.replied.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.runtime.shutdown_background();
    }

    fn register(&self) {
        let ns: Vec<Namespace> = lock(&self.shared.handlers)
            .iter()
            .map(|(p, _)| p.clone())
            .collect();
        if ns.is_empty() {
            return;
        }
        let serve = CommandMessage::Serve { ns, ttl: Some(TTL) };
        if let Err(e) = self.socket.send(serve.to_json(), zmq::DONTWAIT) {
            tracing::debug!(error = %e, "serve not sent (broker unreachable?)");
        }
    }

    fn message(&self, body: &[u8]) {
        match command::decode_json(body) {
            Ok(CommandMessage::Serving { ns, ttl }) => {
                self.shared
                    .counters
                    .registered
                    .store(true, Ordering::Relaxed);
                tracing::debug!(prefixes = ns.len(), ttl, "serving");
            }
            Ok(CommandMessage::Command {
                id,
                ns,
                data,
                deadline,
                ..
            }) => self.command(id, ns, data, deadline),
            Ok(_) => {}
            Err(bad) => tracing::debug!(detail = %bad.detail, "unreadable message from the broker"),
        }
    }

    fn command(&self, id: Value, ns: Namespace, data: Value, deadline: Option<f64>) {
        self.shared
            .counters
            .commands
            .fetch_add(1, Ordering::Relaxed);
        let handler = lock(&self.shared.handlers)
            .iter()
            .filter(|(p, _)| ns.is_within(p))
            .max_by_key(|(p, _)| p.as_str().len())
            .map(|(_, h)| h.clone());
        let deadline_at = deadline.map_or_else(
            || SystemTime::now() + Duration::from_secs_f64(command::DEFAULT_TIMEOUT),
            |d| UNIX_EPOCH + Duration::from_secs_f64(d.max(0.0)),
        );
        let left = deadline_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let shared = self.shared.clone();
        let wake = self.wake.clone();
        let reply = move |result: HandlerResult| {
            let m = CommandMessage::Reply {
                id,
                result: result.map_err(|e| (e, None)),
            };
            let mut q = lock(&shared.replies);
            let was_empty = q.is_empty();
            q.push(m.to_json());
            drop(q);
            if was_empty {
                let _ = wake.send(b"r");
            }
        };
        let Some(handler) = handler else {
            reply(Err(format!("this adaptor serves nothing for {ns}")));
            return;
        };
        let permits = self.permits.clone();
        let shared = self.shared.clone();
        let mut task: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            let work = async {
                let _permit = permits.acquire_owned().await;
                handler(ns, data, deadline_at).await
            };
            match tokio::time::timeout(left, work).await {
                Ok(result) => reply(result),
                // Past the deadline the broker has answered `timeout` already: abandon.
                Err(_) => {
                    shared.counters.abandoned.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // Most handlers answer at once: run them here, and hand only those that wait to the
        // runtime (two thread hops less per command).
        let _inside = self.runtime.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if task.as_mut().poll(&mut cx).is_pending() {
            self.runtime.spawn(task);
        }
    }
}
