//! The client handle, its builder, and the receive thread behind it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use thingsbus_protocol::discovery::Discovery;
use thingsbus_protocol::endpoint::{connect_url, port_plus};
use thingsbus_protocol::transport::{self, Worker};
use thingsbus_protocol::Namespace;

use crate::command::{CommandError, Commander};
use crate::driver::{Driver, DriverOptions, Endpoint};
use crate::mirror::Mirror;
use crate::shared::{lock, Counters, Shared};
use crate::subscription::{self, Slot, SubscribeOptions, Subscription};
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
    snapshot_url: Option<String>,
    command_url: Option<String>,
    options: DriverOptions,
    /// This client's own key pair, for a broker whose key comes from DNS.
    key_pair: Option<thingsbus_protocol::keys::KeyPair>,
    /// Subscriptions made before the client starts.
    subs: Vec<Slot>,
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

    /// With [`ClientBuilder::url`]: the snapshot endpoint, if not the directory port + 2.
    pub fn snapshot_url(mut self, url: &str) -> Self {
        self.snapshot_url = Some(url.to_owned());
        self
    }

    /// With [`ClientBuilder::url`]: the command endpoint, if not the directory port + 3.
    pub fn command_url(mut self, url: &str) -> Self {
        self.command_url = Some(url.to_owned());
        self
    }

    /// Talk CURVE to the broker (its public key, and this client's key pair: from a key file, or
    /// a new one with [`ClientKeys::new`]`(server, None)`) on every socket: directory,
    /// snapshots, commands. Without it, plain ZMQ as in 0.2.x.
    ///
    /// [`ClientKeys::new`]: thingsbus_protocol::transport::ClientKeys::new
    pub fn curve(mut self, keys: thingsbus_protocol::transport::ClientKeys) -> Self {
        self.options.curve = Some(keys);
        self
    }

    /// This client's own CURVE key pair (a key file's), used with the broker's key when a zone
    /// publishes it (a TXT record `curve=<key>` beside the SRV record). Without it, such a zone is
    /// reached with a new key pair, which a broker that checks keys treats as anonymous. Keys
    /// given with [`ClientBuilder::curve`] win over the zone's.
    pub fn key_pair(mut self, keys: thingsbus_protocol::keys::KeyPair) -> Self {
        self.key_pair = Some(keys);
        self
    }

    /// Ask the broker for the whole directory on connect and after a gap (default on). Off, the
    /// client waits for the periodic snapshot, as 0.2.x clients do.
    pub fn instant_snapshot(mut self, yes: bool) -> Self {
        self.options.instant = yes;
        self
    }

    /// Also learn, on joining, the things that stopped reporting (past the broker's live window
    /// but not forgotten yet), marked [`Thing::stale`]. Off by default: as in 0.2.x, a new
    /// client then knows only the live things.
    pub fn include_stale(mut self, yes: bool) -> Self {
        self.options.stale = yes;
        self
    }

    /// How long a snapshot request may go unanswered before the client falls back to the
    /// periodic snapshot (a 0.2.x broker has no snapshot endpoint). Default 2 s.
    pub fn snapshot_timeout(mut self, timeout: Duration) -> Self {
        self.options.snapshot_timeout = timeout;
        self
    }

    /// With several brokers in SRV: how long the current one may be unreachable before the
    /// client moves to the next. Default 3 s.
    pub fn failover_timeout(mut self, timeout: Duration) -> Self {
        self.options.failover_timeout = timeout;
        self
    }

    /// Subscribes before the client starts, so the subscription sees everything from the first
    /// snapshot on; one made on the [`Client`] after `connect` may miss what arrived in between.
    ///
    /// # Errors
    /// [`Error::Namespace`] when `ns` is not a valid namespace.
    pub fn subscribe(
        &mut self,
        ns: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        let (slot, subscription) = subscription::pair(Namespace::new(ns)?, options);
        self.subs.push(slot);
        Ok(subscription)
    }

    /// Resolves the broker and starts mirroring. Returns at once; the mirror fills as updates
    /// and snapshots arrive ([`Client::wait_filled`]).
    ///
    /// # Errors
    /// No target, a failed SRV lookup, or a malformed URL.
    pub async fn connect(mut self) -> Result<Client, Error> {
        let mut command_url = self.command_url.clone();
        let targets = match &self.target {
            Some(Target::Zone(zone)) => {
                let brokers = self.discovery.brokers(zone).await?;
                if brokers.is_empty() {
                    return Err(Error::NoTarget);
                }
                tracing::info!(%zone, broker = %brokers[0], others = brokers.len() - 1, "found brokers through SRV");
                let given = self.options.curve.is_some();
                self.options.curve = transport::keys_for_zone(
                    self.options.curve.take(),
                    self.key_pair.as_ref(),
                    &brokers[0],
                )
                .map_err(Error::Keys)?;
                if let (false, Some(key)) = (given, &brokers[0].server_key) {
                    tracing::info!(%zone, server_key = %key, "CURVE with the broker key the zone publishes");
                }
                command_url.get_or_insert_with(|| brokers[0].command_url());
                brokers
                    .iter()
                    .map(|b| Endpoint {
                        directory: b.directory_url(),
                        snapshot: Some(b.snapshot_url()),
                    })
                    .collect()
            }
            Some(Target::Url(url)) => {
                if self.options.curve.is_none() && self.key_pair.is_some() {
                    return Err(Error::Keys(format!(
                        "a key pair but no broker key for {url}: give the broker's public key \
                         (--server-key, server_key=), or a zone that publishes it"
                    )));
                }
                let (url, rewritten) = connect_url(url);
                if rewritten {
                    tracing::info!(%url, "a '*' host in a connect URL means this machine");
                }
                if command_url.is_none() {
                    command_url = port_plus(&url, 3);
                }
                vec![Endpoint {
                    snapshot: self.snapshot_url.clone().or_else(|| port_plus(&url, 2)),
                    directory: url.into_owned(),
                }]
            }
            None => return Err(Error::NoTarget),
        };
        Client::start(targets, self.options, self.subs, command_url)
    }

    /// [`ClientBuilder::connect`] for code without a tokio runtime.
    ///
    /// # Errors
    /// As [`ClientBuilder::connect`].
    pub fn connect_blocking(self) -> Result<Client, Error> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Start)?
            .block_on(self.connect())
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
    /// Snapshot requests answered (on connect, and to resynchronise after a gap).
    pub snapshot_replies: u64,
    /// Times the client moved to another broker from the SRV list.
    pub failovers: u64,
}

struct Inner {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Worker,
    command_url: Option<String>,
    curve: Option<thingsbus_protocol::transport::ClientKeys>,
    commander: Mutex<Option<Arc<Commander>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join();
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
        f.debug_struct("Client").field("url", &self.url()).finish()
    }
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    fn start(
        targets: Vec<Endpoint>,
        options: DriverOptions,
        subs: Vec<Slot>,
        command_url: Option<String>,
    ) -> Result<Client, Error> {
        let subscribers = subs.len();
        let shared = Arc::new(Shared {
            mirror: Mirror::new(),
            subs: Mutex::new(subs),
            counters: Counters::default(),
            filled: Mutex::new(false),
            filled_cv: Condvar::new(),
            filled_notify: tokio::sync::Notify::new(),
            current: Mutex::new(targets[0].directory.clone()),
            subscribers: std::sync::atomic::AtomicUsize::new(subscribers),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let curve = options.curve.clone();
        let driver = Driver::new(targets, options, shared.clone(), stop.clone())?;
        let thread = std::thread::Builder::new()
            .name("thingsbus-client".into())
            .spawn(move || driver.run())
            .map_err(Error::Start)?;
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                stop,
                thread: Worker::new(thread),
                command_url,
                curve,
                commander: Mutex::new(None),
            }),
        })
    }

    /// The directory URL of the broker this client uses now.
    pub fn url(&self) -> String {
        lock(&self.inner.shared.current).clone()
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
        self.inner
            .shared
            .subscribers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(subscription)
    }

    /// Sends `data` as a command to the thing `ns` through the broker's command endpoint and
    /// waits for the reply of the adaptor that serves it, at most `timeout`: `Ok(data)` from the
    /// thing, or a [`CommandError`] saying which outcome it was. Many commands may be in flight
    /// on one client. Delivery is at most once: a command is never repeated; to retry, call again.
    ///
    /// # Errors
    /// See [`CommandError`].
    pub async fn command<T: serde::Serialize + ?Sized>(
        &self,
        ns: &str,
        data: &T,
        timeout: Duration,
    ) -> Result<serde_json::Value, CommandError> {
        let ns = Namespace::new(ns).map_err(|e| CommandError::BadRequest(e.to_string()))?;
        let data =
            serde_json::to_value(data).map_err(|e| CommandError::BadRequest(e.to_string()))?;
        let commander = self.commander()?;
        commander.call(ns, data, timeout).await
    }

    /// [`Client::command`] for code without an async runtime.
    ///
    /// # Errors
    /// See [`CommandError`].
    pub fn command_blocking<T: serde::Serialize + ?Sized>(
        &self,
        ns: &str,
        data: &T,
        timeout: Duration,
    ) -> Result<serde_json::Value, CommandError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| CommandError::Transport(e.to_string()))?;
        runtime.block_on(self.command(ns, data, timeout))
    }

    fn commander(&self) -> Result<Arc<Commander>, CommandError> {
        let url = self.inner.command_url.clone().ok_or_else(|| {
            CommandError::Transport("(none known: give .command_url() to the builder)".into())
        })?;
        let mut slot = lock(&self.inner.commander);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(
            Commander::start(&url, self.inner.curve.as_ref())
                .map_err(|e| CommandError::Transport(format!("{url}: {e}")))?,
        );
        *slot = Some(c.clone());
        Ok(c)
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
            snapshot_replies: l(&c.snapshot_replies),
            failovers: l(&c.failovers),
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
