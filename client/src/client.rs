//! The client handle, its builder, and the receive thread behind it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thingsbus_protocol::codec::{decode_published, Published, PublishedUpdate};
use thingsbus_protocol::discovery::{BrokerAddr, Discovery};
use thingsbus_protocol::endpoint::connect_url;
use thingsbus_protocol::Namespace;

use crate::mirror::Mirror;
use crate::subscription::{self, Event, EventKind, Slot, SubscribeOptions, Subscription};
use crate::thing::now_secs;
use crate::{Error, Thing};

#[derive(Debug, Clone)]
enum Target {
    Zone(String),
    Url(String),
}

/// Builds a [`Client`]; see [`Client::builder`].
#[derive(Debug, Clone, Default)]
#[must_use = "call .connect() or .connect_blocking()"]
pub struct ClientBuilder {
    target: Option<Target>,
    discovery: Discovery,
}

impl ClientBuilder {
    /// Find the broker through the SRV record `_thingsbus._tcp.<zone>`.
    pub fn zone(mut self, zone: &str) -> Self {
        self.target = Some(Target::Zone(zone.to_owned()));
        self
    }

    /// Connect to this directory URL, e.g. `tcp://broker:7954`.
    pub fn url(mut self, url: &str) -> Self {
        self.target = Some(Target::Url(url.to_owned()));
        self
    }

    /// Ask this DNS server (`IP:PORT`) for the SRV record instead of the system's resolver.
    pub fn nameserver(mut self, addr: SocketAddr) -> Self {
        self.discovery = self.discovery.nameserver(addr);
        self
    }

    /// How long to wait for DNS (default 3 s).
    pub fn discovery_timeout(mut self, timeout: Duration) -> Self {
        self.discovery = self.discovery.timeout(timeout);
        self
    }

    /// Resolves the broker and starts mirroring. Returns at once; the mirror fills as updates
    /// and snapshots arrive ([`Client::wait_filled`]).
    ///
    /// # Errors
    /// No target, a failed SRV lookup, or a malformed URL.
    pub async fn connect(self) -> Result<Client, Error> {
        let url = match self.target {
            Some(Target::Zone(zone)) => {
                let brokers = self.discovery.brokers(&zone).await?;
                let first: &BrokerAddr = brokers.first().ok_or(Error::NoTarget)?;
                tracing::info!(%zone, broker = %first, "found the broker through SRV");
                first.directory_url()
            }
            Some(Target::Url(url)) => url,
            None => return Err(Error::NoTarget),
        };
        Client::start(&url)
    }

    /// [`ClientBuilder::connect`] for code without a tokio runtime.
    ///
    /// # Errors
    /// As [`ClientBuilder::connect`].
    pub fn connect_blocking(self) -> Result<Client, Error> {
        match &self.target {
            Some(Target::Url(url)) => Client::start(url),
            _ => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::Start)?
                .block_on(self.connect()),
        }
    }
}

/// What the client has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClientStats {
    /// Live updates applied.
    pub updates: u64,
    /// Snapshot messages (or chunks) received.
    pub snapshot_messages: u64,
    /// Complete snapshots received.
    pub snapshots: u64,
    /// Messages that could not be decoded (dropped).
    pub bad_messages: u64,
    /// Times the sequence numbers jumped forward: updates were missed.
    pub seq_gaps: u64,
    /// Updates missed, summed over all gaps.
    pub missed_updates: u64,
    /// Times the sequence numbers went backwards (the broker restarted).
    pub seq_resets: u64,
    /// The last live sequence number seen.
    pub last_seq: u64,
}

#[derive(Debug, Default)]
struct Counters {
    updates: AtomicU64,
    snapshot_messages: AtomicU64,
    snapshots: AtomicU64,
    bad_messages: AtomicU64,
    seq_gaps: AtomicU64,
    missed_updates: AtomicU64,
    seq_resets: AtomicU64,
    last_seq: AtomicU64,
}

pub(crate) struct Shared {
    mirror: Mirror,
    subs: Mutex<Vec<Slot>>,
    counters: Counters,
    filled: Mutex<bool>,
    filled_cv: Condvar,
    filled_notify: tokio::sync::Notify,
}

struct Inner {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    url: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// A live mirror of a broker's directory. Cheap to clone; every clone shares one connection and
/// one mirror, kept by a background thread. Dropping the last clone stops it.
///
/// Reads ([`Client::get`], [`Client::children`], [`Client::walk`]) return owned values and never
/// wait for the network.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    fn start(url: &str) -> Result<Client, Error> {
        let (url, rewritten) = connect_url(url);
        if rewritten {
            tracing::info!(%url, "a '*' host in a connect URL means this machine");
        }
        let zmq_err = |what: String| move |source| Error::Zmq { what, source };
        let ctx = zmq::Context::new();
        let sub = ctx
            .socket(zmq::SUB)
            .map_err(zmq_err("creating the socket".into()))?;
        sub.set_subscribe(b"")
            .map_err(zmq_err("subscribing".into()))?;
        sub.set_rcvhwm(100_000)
            .map_err(zmq_err("setting the high-water mark".into()))?;
        sub.set_reconnect_ivl_max(5_000)
            .map_err(zmq_err("setting the reconnect interval".into()))?;
        sub.connect(&url)
            .map_err(zmq_err(format!("connecting to {url}")))?;
        let shared = Arc::new(Shared {
            mirror: Mirror::new(),
            subs: Mutex::new(Vec::new()),
            counters: Counters::default(),
            filled: Mutex::new(false),
            filled_cv: Condvar::new(),
            filled_notify: tokio::sync::Notify::new(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("thingsbus-client".into())
                .spawn(move || receive(sub, ctx, &shared, &stop))
                .map_err(Error::Start)?
        };
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                stop,
                thread: Mutex::new(Some(thread)),
                url: url.into_owned(),
            }),
        })
    }

    /// The directory URL this client is connected to.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The thing's last value, or `None` if it never had one (or `ns` is not a valid namespace).
    pub fn get(&self, ns: &str) -> Option<Thing> {
        self.inner.shared.mirror.get(ns)
    }

    /// True when `ns` is known, as a thing or as a prefix of one.
    pub fn exists(&self, ns: &str) -> bool {
        self.inner.shared.mirror.exists(ns)
    }

    /// The direct children of `ns` (`""` is the root), in order.
    pub fn children(&self, ns: &str) -> Vec<Namespace> {
        self.inner.shared.mirror.children(ns)
    }

    /// Every thing with a value at or below `ns`, in namespace order.
    pub fn walk(&self, ns: &str) -> Vec<Thing> {
        self.inner.shared.mirror.walk(ns)
    }

    /// Number of things with a value.
    pub fn len(&self) -> usize {
        self.inner.shared.mirror.things()
    }

    /// True when no thing has a value yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events of `ns` (and, with `tree`, of everything below it) from now on.
    ///
    /// # Errors
    /// [`Error::Namespace`] when `ns` is not a valid namespace.
    pub fn subscribe(&self, ns: &str, options: SubscribeOptions) -> Result<Subscription, Error> {
        let ns = Namespace::new(ns)?;
        let (slot, subscription) = subscription::pair(ns, options);
        self.inner
            .shared
            .subs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(slot);
        Ok(subscription)
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            updates: l(&c.updates),
            snapshot_messages: l(&c.snapshot_messages),
            snapshots: l(&c.snapshots),
            bad_messages: l(&c.bad_messages),
            seq_gaps: l(&c.seq_gaps),
            missed_updates: l(&c.missed_updates),
            seq_resets: l(&c.seq_resets),
            last_seq: l(&c.last_seq),
        }
    }

    /// True once a complete snapshot has been applied: the mirror then holds the whole directory.
    pub fn is_filled(&self) -> bool {
        *self
            .inner
            .shared
            .filled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the mirror holds the whole directory, at most `timeout`; false on time-out.
    pub async fn wait_filled(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.shared.filled_notify.notified();
            if self.is_filled() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_filled();
            }
        }
    }

    /// [`Client::wait_filled`] for code without an async runtime.
    pub fn wait_filled_blocking(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let shared = &self.inner.shared;
        let mut filled = shared
            .filled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !*filled {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            filled = shared
                .filled_cv
                .wait_timeout(filled, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }
}

fn receive(sub: zmq::Socket, ctx: zmq::Context, shared: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match sub.poll(zmq::POLLIN, 50) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "client poll failed; stopping");
                break;
            }
        }
        while let Ok(bytes) = sub.recv_bytes(zmq::DONTWAIT) {
            handle(shared, &bytes);
        }
    }
    let _ = sub.set_linger(0);
    drop(sub);
    drop(ctx);
}

fn handle(shared: &Shared, bytes: &[u8]) {
    let c = &shared.counters;
    let now = now_secs();
    match decode_published(bytes) {
        Ok(Published::Update(u)) => {
            c.updates.fetch_add(1, Ordering::Relaxed);
            if let Some(seq) = u.seq {
                track_seq(c, seq);
            }
            apply(shared, &u, false, now);
        }
        Ok(Published::Snapshot(s)) => {
            c.snapshot_messages.fetch_add(1, Ordering::Relaxed);
            for e in &s.entries {
                apply(shared, e, true, now);
            }
            if s.is_complete() {
                c.snapshots.fetch_add(1, Ordering::Relaxed);
                let mut filled = shared
                    .filled
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !*filled {
                    *filled = true;
                    shared.filled_cv.notify_all();
                    shared.filled_notify.notify_waiters();
                }
            }
        }
        Ok(_) => {}
        Err(reason) => {
            c.bad_messages.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(%reason, "dropped a message from the broker");
        }
    }
}

fn track_seq(c: &Counters, seq: u64) {
    let last = c.last_seq.swap(seq, Ordering::Relaxed);
    if last == 0 {
        return;
    }
    if seq > last + 1 {
        c.seq_gaps.fetch_add(1, Ordering::Relaxed);
        c.missed_updates
            .fetch_add(seq - last - 1, Ordering::Relaxed);
    } else if seq <= last {
        c.seq_resets.fetch_add(1, Ordering::Relaxed);
    }
}

fn apply(shared: &Shared, u: &PublishedUpdate<'_>, from_snapshot: bool, now: f64) {
    let Some(thing) = shared.mirror.apply(u, from_snapshot, now) else {
        return;
    };
    let mut subs = shared
        .subs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if subs.is_empty() {
        return;
    }
    subs.retain(|s| !s.is_closed());
    let event = Event {
        thing,
        kind: if from_snapshot {
            EventKind::Snapshot
        } else {
            EventKind::Update
        },
    };
    for s in subs.iter().filter(|s| s.wants(&event)) {
        s.offer(&event);
    }
}
