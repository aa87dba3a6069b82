//! The ZMQ plumbing every role shares (with the `zmq` feature): errors that say what was being
//! done, sockets set up the way every connecting peer of a broker wants them, socket monitors and
//! their events, and a worker thread joined when its owner goes.
//!
//! The wire format itself never depends on ZMQ; this module only spares the broker, the client
//! and the adaptor from writing the same set-up three times.

use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

/// A libzmq call that failed, and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct ZmqFailure {
    /// What was being done, as "creating the socket" or "connecting to tcp://...".
    pub what: String,
    /// What libzmq said.
    #[source]
    pub source: zmq::Error,
}

/// Names what was being done when libzmq fails: `.map_err(doing("enabling IPv6"))`.
pub fn doing(what: impl Into<String>) -> impl FnOnce(zmq::Error) -> ZmqFailure {
    let what = what.into();
    move |source| ZmqFailure { what, source }
}

/// Longest wait between two reconnection attempts, in milliseconds, unless a role says otherwise.
pub const RECONNECT_IVL_MAX_MS: i32 = 2_000;

/// A socket of `kind` that connects to brokers: no linger at close (nothing is left to deliver
/// to a broker that went away), IPv6 allowed, reconnecting at most every
/// [`RECONNECT_IVL_MAX_MS`], with high-water mark `hwm` on both directions when given.
///
/// # Errors
/// A [`ZmqFailure`] naming the step that failed.
pub fn connecting_socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    hwm: Option<i32>,
) -> Result<zmq::Socket, ZmqFailure> {
    let socket = ctx.socket(kind).map_err(doing("creating the socket"))?;
    socket.set_linger(0).map_err(doing("setting ZMQ_LINGER"))?;
    socket.set_ipv6(true).map_err(doing("enabling IPv6"))?;
    socket
        .set_reconnect_ivl_max(RECONNECT_IVL_MAX_MS)
        .map_err(doing("setting the reconnect interval"))?;
    if let Some(hwm) = hwm {
        socket
            .set_sndhwm(hwm)
            .map_err(doing("setting the high-water mark"))?;
        socket
            .set_rcvhwm(hwm)
            .map_err(doing("setting the high-water mark"))?;
    }
    Ok(socket)
}

/// Connects `socket` to `url`, naming `what` it is when that fails.
///
/// # Errors
/// A [`ZmqFailure`]: `url` is not a ZMQ endpoint.
pub fn connect(socket: &zmq::Socket, what: &str, url: &str) -> Result<(), ZmqFailure> {
    socket
        .connect(url)
        .map_err(doing(format!("connecting to the {what} {url}")))
}

/// What a socket monitor reports that the roles act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A connection this socket made is up.
    Connected,
    /// A peer connected to this (bound) socket.
    Accepted,
    /// A connection ended.
    Disconnected,
}

impl Event {
    fn raw(self) -> u16 {
        match self {
            Event::Connected => zmq::SocketEvent::CONNECTED.to_raw(),
            Event::Accepted => zmq::SocketEvent::ACCEPTED.to_raw(),
            Event::Disconnected => zmq::SocketEvent::DISCONNECTED.to_raw(),
        }
    }

    /// The event a monitor message reports: its first frame starts with the event number
    /// (little-endian u16). `None` for other events and malformed messages.
    pub fn from_frames(frames: &[Vec<u8>]) -> Option<Event> {
        let raw = frames
            .first()
            .and_then(|f| f.get(..2))
            .map(|b| u16::from_le_bytes([b[0], b[1]]))?;
        [Event::Connected, Event::Accepted, Event::Disconnected]
            .into_iter()
            .find(|e| e.raw() == raw)
    }
}

/// Watches `socket` for `events`: the returned PAIR socket receives one message per event (read
/// them with [`events`]). `name` makes the inproc endpoint unique within `ctx`.
///
/// # Errors
/// A [`ZmqFailure`] naming the step that failed (for example a `name` already used).
pub fn monitor(
    ctx: &zmq::Context,
    socket: &zmq::Socket,
    name: &str,
    events: &[Event],
) -> Result<zmq::Socket, ZmqFailure> {
    let endpoint = format!("inproc://thingsbus-monitor-{name}");
    let mask = events.iter().fold(0u16, |m, e| m | e.raw());
    socket
        .monitor(&endpoint, i32::from(mask))
        .map_err(doing("monitoring the socket"))?;
    let pair = ctx
        .socket(zmq::PAIR)
        .map_err(doing("creating the monitor socket"))?;
    pair.connect(&endpoint)
        .map_err(doing("connecting the monitor"))?;
    Ok(pair)
}

/// The events waiting on a `monitor` socket, without blocking.
pub fn events(monitor: &zmq::Socket) -> impl Iterator<Item = Event> + '_ {
    std::iter::from_fn(move || monitor.recv_multipart(zmq::DONTWAIT).ok())
        .filter_map(|frames| Event::from_frames(&frames))
}

/// A worker thread that its owner joins when asked, or at the latest when dropped; joining twice
/// is harmless.
#[derive(Debug, Default)]
pub struct Worker(Mutex<Option<JoinHandle<()>>>);

impl Worker {
    /// Owns `handle`.
    pub fn new(handle: JoinHandle<()>) -> Self {
        Worker(Mutex::new(Some(handle)))
    }

    /// Waits for the thread to end (at once when it has, or was joined before). True when it
    /// ended without panicking.
    pub fn join(&self) -> bool {
        let handle = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        handle.is_none_or(|h| h.join().is_ok())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_from_real_monitors() {
        let ctx = zmq::Context::new();
        let server = ctx.socket(zmq::ROUTER).expect("socket");
        server.bind("tcp://127.0.0.1:*").expect("bind");
        let url = server
            .get_last_endpoint()
            .expect("endpoint")
            .expect("utf-8");
        let accepted = monitor(
            &ctx,
            &server,
            "t-server",
            &[Event::Accepted, Event::Disconnected],
        )
        .expect("monitor");
        let client = connecting_socket(&ctx, zmq::DEALER, Some(10)).expect("socket");
        let connected = monitor(&ctx, &client, "t-client", &[Event::Connected]).expect("monitor");
        connect(&client, "test endpoint", &url).expect("connect");
        let wait = |m: &zmq::Socket, want: Event| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if events(m).any(|e| e == want) {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "no {want:?}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        wait(&connected, Event::Connected);
        wait(&accepted, Event::Accepted);
        drop(client);
        wait(&accepted, Event::Disconnected);
    }

    #[test]
    fn failures_say_what_was_being_done() {
        let ctx = zmq::Context::new();
        let s = connecting_socket(&ctx, zmq::DEALER, None).expect("socket");
        let e = connect(&s, "command endpoint", "not a url").expect_err("refused");
        assert!(
            e.to_string()
                .starts_with("connecting to the command endpoint not a url: "),
            "{e}"
        );
        assert_eq!(Event::from_frames(&[vec![0xff]]), None);
        assert_eq!(Event::from_frames(&[]), None);
    }

    #[test]
    fn a_worker_is_joined_once() {
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = ran.clone();
        let w = Worker::new(std::thread::spawn(move || {
            r.store(true, std::sync::atomic::Ordering::Relaxed);
        }));
        assert!(w.join());
        assert!(ran.load(std::sync::atomic::Ordering::Relaxed));
        assert!(w.join());
        let w = Worker::new(std::thread::spawn(|| panic!("worker panics")));
        assert!(!w.join());
    }
}
