//! The ZMQ plumbing every role shares (with the `zmq` feature): errors that say what was being
//! done, sockets set up the way every connecting peer of a broker wants them, socket monitors and
//! their events, and a worker thread joined when its owner goes.
//!
//! The wire format itself never depends on ZMQ; this module only spares the broker, the client
//! and the adaptor from writing the same set-up three times.

use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::keys::{KeyError, KeyPair, PublicKey};

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

/// This build's libzmq has no CURVE, so a security flag cannot be honoured.
#[derive(Debug, thiserror::Error)]
#[error(
    "this build's libzmq has no CURVE support, so keys cannot be used; build thingsbus from its \
     workspace (its vendor/zmq-sys builds libzmq with libsodium) instead of running without encryption"
)]
pub struct CurveUnavailable;

/// Checks that libzmq has CURVE. Every place that takes a key calls it first: a build without
/// CURVE refuses the security flags instead of running unprotected.
///
/// # Errors
/// [`CurveUnavailable`].
pub fn require_curve() -> Result<(), CurveUnavailable> {
    if zmq::has("curve") == Some(true) {
        Ok(())
    } else {
        Err(CurveUnavailable)
    }
}

/// Turns `ZMQ_ZAP_ENFORCE_DOMAIN` on or off for a socket that has a ZAP domain: with it on, a
/// peer is refused when no ZAP handler answers (a dead handler refuses everyone instead of
/// admitting everyone). Set it before `bind`.
///
/// # Errors
/// A [`ZmqFailure`].
pub fn set_zap_enforce_domain(socket: &mut zmq::Socket, enforce: bool) -> Result<(), ZmqFailure> {
    thingsbus_zmq_extra::set_zap_enforce_domain(socket, enforce)
        .map_err(doing("setting ZMQ_ZAP_ENFORCE_DOMAIN"))
}

/// Makes `socket` a CURVE server with `keys` (set it before `bind`): peers must know
/// `keys.public` and speak CURVE; everything on its connections is encrypted.
///
/// # Errors
/// A [`ZmqFailure`] (a libzmq without CURVE: call [`require_curve`] first for a clearer one).
pub fn curve_server(socket: &zmq::Socket, keys: &KeyPair) -> Result<(), ZmqFailure> {
    socket
        .set_curve_server(true)
        .map_err(doing("making the socket a CURVE server"))?;
    socket
        .set_curve_secretkey(keys.secret.as_bytes())
        .map_err(doing("setting the CURVE secret key"))
}

/// What a client needs to talk CURVE to a broker: the broker's public key and a key pair of its
/// own (the one its key file holds, or a new one for this run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientKeys {
    /// The broker's public key.
    pub server: PublicKey,
    /// The client's own key pair.
    pub own: KeyPair,
}

impl ClientKeys {
    /// Keys for talking to the broker whose public key is `server`, as `own`; with `own` None a
    /// new (ephemeral) key pair, which a broker that checks keys will not know.
    ///
    /// # Errors
    /// [`KeyError::Zmq`] from a libzmq without CURVE.
    pub fn new(server: PublicKey, own: Option<KeyPair>) -> Result<Self, KeyError> {
        let own = match own {
            Some(own) => own,
            None => KeyPair::generate()?,
        };
        Ok(ClientKeys { server, own })
    }

    /// From what a user gives: the broker's public key in Z85 and, if any, the path of a file
    /// with the client's secret key. Checks [`require_curve`] first.
    ///
    /// # Errors
    /// A message naming what was wrong: no CURVE in this build, a bad key, an unreadable file.
    pub fn from_user(server_z85: &str, key_file: Option<&std::path::Path>) -> Result<Self, String> {
        require_curve().map_err(|e| e.to_string())?;
        let server = PublicKey::from_z85(server_z85.trim())
            .map_err(|e| format!("the server key {server_z85:?}: {e}"))?;
        let own = key_file
            .map(KeyPair::read_file)
            .transpose()
            .map_err(|e| e.to_string())?;
        ClientKeys::new(server, own).map_err(|e| e.to_string())
    }
}

/// The keys for talking to a broker found in DNS: the keys given by hand when there are any
/// (they win over DNS, which can be forged); otherwise, when the zone publishes the brokers' key
/// ([`BrokerAddr::server_key`](crate::discovery::BrokerAddr::server_key)), that key with `own`
/// (a key file's pair) or a new key pair; otherwise none, and plain ZMQ.
///
/// # Errors
/// A message naming the zone's key and what is wrong: not a key, or no CURVE in this build.
pub fn keys_for_zone(
    given: Option<ClientKeys>,
    own: Option<&KeyPair>,
    found: &crate::discovery::BrokerAddr,
) -> Result<Option<ClientKeys>, String> {
    if given.is_some() {
        return Ok(given);
    }
    let Some(z85) = found.server_key.as_deref() else {
        return Ok(None);
    };
    require_curve().map_err(|e| format!("the zone publishes the broker's CURVE key, but {e}"))?;
    let server = PublicKey::from_z85(z85)
        .map_err(|e| format!("the broker key {z85:?} the zone publishes: {e}"))?;
    ClientKeys::new(server, own.cloned())
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Makes `socket` a CURVE client of the server whose public key is `keys.server`, as
/// `keys.own` (set it before `connect`).
///
/// # Errors
/// A [`ZmqFailure`] (a libzmq without CURVE: call [`require_curve`] first for a clearer one).
pub fn curve_client(socket: &zmq::Socket, keys: &ClientKeys) -> Result<(), ZmqFailure> {
    socket
        .set_curve_serverkey(keys.server.as_bytes())
        .map_err(doing("setting the CURVE server key"))?;
    socket
        .set_curve_publickey(keys.own.public.as_bytes())
        .map_err(doing("setting the CURVE public key"))?;
    socket
        .set_curve_secretkey(keys.own.secret.as_bytes())
        .map_err(doing("setting the CURVE secret key"))
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
    fn this_build_has_curve() {
        require_curve().expect("the workspace's zmq-sys builds libzmq with CURVE");
    }

    /// What became of a client's messages to a CURVE server.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Delivered(Vec<u8>),
        /// The server's monitor reported a failed handshake, and nothing arrived.
        Refused,
    }

    /// A CURVE server ROUTER with `server_keys`; a DEALER made a client by `curve_client` with
    /// `client` (or a plain one with None) sends `hello`.
    fn client_to_server(server_keys: &KeyPair, client: Option<&ClientKeys>) -> Outcome {
        let ctx = zmq::Context::new();
        let server = ctx.socket(zmq::ROUTER).expect("socket");
        server.set_linger(0).expect("linger");
        curve_server(&server, server_keys).expect("curve server");
        let failed = zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH.to_raw();
        server
            .monitor("inproc://curve-monitor", failed.into())
            .expect("monitor");
        let monitor = ctx.socket(zmq::PAIR).expect("socket");
        monitor.connect("inproc://curve-monitor").expect("connect");
        server.bind("tcp://127.0.0.1:*").expect("bind");
        let url = server
            .get_last_endpoint()
            .expect("endpoint")
            .expect("utf-8");
        let dealer = connecting_socket(&ctx, zmq::DEALER, Some(10)).expect("socket");
        if let Some(keys) = client {
            curve_client(&dealer, keys).expect("curve client");
        }
        connect(&dealer, "test server", &url).expect("connect");
        let _ = dealer.send("hello", zmq::DONTWAIT);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut until = deadline;
        let mut refused = false;
        while std::time::Instant::now() < until {
            if server.poll(zmq::POLLIN, 50).expect("poll") > 0 {
                let frames = server.recv_multipart(0).expect("recv");
                return Outcome::Delivered(frames.last().cloned().unwrap_or_default());
            }
            while monitor.recv_multipart(zmq::DONTWAIT).is_ok() {
                refused = true;
                until = until.min(std::time::Instant::now() + std::time::Duration::from_secs(1));
            }
        }
        assert!(refused, "neither delivered nor refused within 30 s");
        Outcome::Refused
    }

    #[test]
    fn a_curve_client_that_knows_the_servers_key_gets_through() {
        let server = KeyPair::generate().expect("keys");
        let own = KeyPair::generate().expect("keys");
        let keys = ClientKeys::new(server.public, Some(own)).expect("keys");
        assert_eq!(
            client_to_server(&server, Some(&keys)),
            Outcome::Delivered(b"hello".to_vec())
        );
        // An ephemeral key pair does as well (no ZAP handler checks keys here).
        let keys = ClientKeys::new(server.public, None).expect("keys");
        assert_eq!(
            client_to_server(&server, Some(&keys)),
            Outcome::Delivered(b"hello".to_vec())
        );
    }

    #[test]
    fn a_wrong_server_key_or_no_curve_gets_nothing_through() {
        let server = KeyPair::generate().expect("keys");
        let other = KeyPair::generate().expect("keys");
        let wrong = ClientKeys::new(other.public, None).expect("keys");
        assert_eq!(client_to_server(&server, Some(&wrong)), Outcome::Refused);
        assert_eq!(client_to_server(&server, None), Outcome::Refused);
    }

    #[test]
    fn user_given_keys_are_checked() {
        let server = KeyPair::generate().expect("keys");
        let keys = ClientKeys::from_user(&format!(" {}\n", server.public), None).expect("keys");
        assert_eq!(keys.server, server.public);
        let e = ClientKeys::from_user("short", None).expect_err("refused");
        assert!(
            e.contains("the server key \"short\"") && e.contains("40 characters"),
            "{e}"
        );
        let e = ClientKeys::from_user(
            &server.public.to_string(),
            Some(std::path::Path::new("/nonexistent/k")),
        )
        .expect_err("refused");
        assert!(e.contains("reading the key file /nonexistent/k"), "{e}");
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
