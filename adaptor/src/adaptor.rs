//! The adaptor handle and its builder.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use thingsbus_protocol::discovery::Discovery;
use thingsbus_protocol::endpoint::connect_url;
use thingsbus_protocol::signed::{self, BoardSecret, Direction};
use thingsbus_protocol::Namespace;

use crate::serve::{HandlerResult, ServeCounters, Server};
use crate::zmq_sender::{Counters, ZmqSender};
use crate::Error;

/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// How an update is laid out in a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UdpForm {
    /// The 4-item list `[ns, ts, data, documentation_url]` that small boards send.
    #[default]
    Compact,
    /// A map shaped like the JSON `thing_update`.
    Map,
}

#[derive(Debug, Clone)]
enum Target {
    Zone(String),
    /// ZMQ input URLs, tried in order.
    Zmq(Vec<String>),
    Udp(String),
}

/// Builds an [`Adaptor`]; see [`Adaptor::builder`].
#[derive(Debug, Clone)]
#[must_use = "call .connect() or .connect_blocking()"]
pub struct AdaptorBuilder {
    ns: String,
    documentation_url: Option<String>,
    target: Option<Target>,
    prefer_udp: bool,
    udp_form: UdpForm,
    queue_capacity: usize,
    discovery: Discovery,
    failover_timeout: Duration,
    command_url: Option<String>,
    signing: Option<(String, BoardSecret)>,
    signing_boot: Option<u32>,
    curve: Option<thingsbus_protocol::transport::ClientKeys>,
    key_pair: Option<thingsbus_protocol::keys::KeyPair>,
}

impl AdaptorBuilder {
    /// This adaptor's own CURVE key pair (a key file's), used with the broker's key when a zone
    /// publishes it (a TXT record `curve=<key>` beside the SRV record). Without it, such a zone
    /// is reached with a new key pair, which a broker that checks keys treats as anonymous. Keys
    /// given with [`AdaptorBuilder::curve`] win over the zone's.
    pub fn key_pair(mut self, keys: thingsbus_protocol::keys::KeyPair) -> Self {
        self.key_pair = Some(keys);
        self
    }

    /// Talk CURVE to the broker (its public key and this adaptor's key pair: from a key file,
    /// or a new one with `ClientKeys::new(server, None)`) on the input and command sockets.
    /// Without it, plain ZMQ as in 0.2.x. UDP cannot do CURVE: with it, the adaptor refuses UDP.
    pub fn curve(mut self, keys: thingsbus_protocol::transport::ClientKeys) -> Self {
        self.curve = Some(keys);
        self
    }

    /// Sign every UDP datagram as the board `name` with its shared `secret` (the auth file's
    /// `[boards.NAME] secret`), as described in `docs/authenticated-datagrams.md`: a broker with
    /// an auth file then knows the datagrams are this board's and new. Only for UDP targets;
    /// one sender per name at a time.
    ///
    /// Replay protection numbers each datagram with a boot and a counter. The boot is, unless
    /// [`AdaptorBuilder::signing_boot`] says otherwise, the time of `connect` in whole seconds
    /// since 1970, so a restarted sender starts a higher boot (restart it at most once a second).
    pub fn sign_udp(mut self, name: &str, secret: BoardSecret) -> Self {
        self.signing = Some((name.to_owned(), secret));
        self
    }

    /// With [`AdaptorBuilder::sign_udp`]: the boot number to start with, instead of the time.
    /// It must be higher than any boot this name used before, or the broker refuses the
    /// datagrams as replayed.
    pub fn signing_boot(mut self, boot: u32) -> Self {
        self.signing_boot = Some(boot);
        self
    }

    /// The broker's command endpoint for [`Adaptor::serve`], when it is not where the
    /// target says (directory port + 3, i.e. input port + 2).
    pub fn command_url(mut self, url: &str) -> Self {
        self.command_url = Some(url.to_owned());
        self
    }

    /// With several brokers in SRV: how long the current one may stay unreachable before the
    /// adaptor moves to the next (default 3 s).
    pub fn failover_timeout(mut self, timeout: Duration) -> Self {
        self.failover_timeout = timeout;
        self
    }

    /// Find the broker through the SRV record `_thingsbus._tcp.<zone>`.
    pub fn zone(mut self, zone: &str) -> Self {
        self.target = Some(Target::Zone(zone.to_owned()));
        self
    }

    /// Connect to this ZMQ input URL, e.g. `tcp://broker:7955`. `tcp://*:7955` (from 0.2.x
    /// service files) means this machine.
    pub fn url(mut self, url: &str) -> Self {
        self.target = Some(Target::Zmq(vec![url.to_owned()]));
        self
    }

    /// Send MessagePack datagrams to this UDP address, e.g. `broker:7955`.
    pub fn udp(mut self, addr: &str) -> Self {
        self.target = Some(Target::Udp(addr.to_owned()));
        self
    }

    /// With [`AdaptorBuilder::zone`]: send over UDP (to P + 1) instead of ZMQ.
    pub fn prefer_udp(mut self, yes: bool) -> Self {
        self.prefer_udp = yes;
        self
    }

    /// The layout of UDP datagrams (default: the compact 4-list).
    pub fn udp_form(mut self, form: UdpForm) -> Self {
        self.udp_form = form;
        self
    }

    /// Sent with every update; a thing keeps the last one it was given.
    pub fn documentation_url(mut self, url: &str) -> Self {
        self.documentation_url = Some(url.to_owned()).filter(|u| !u.is_empty());
        self
    }

    /// How many updates may wait while the broker is unreachable (default 10,000); beyond it
    /// the oldest is dropped.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
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

    /// Resolves the broker and starts the adaptor. Returns at once: the connection itself is
    /// made in the background, and updates wait in the queue until it is up.
    ///
    /// # Errors
    /// An invalid namespace, no target, a failed SRV lookup, or a malformed URL or address.
    pub async fn connect(mut self) -> Result<Adaptor, Error> {
        let target = match self.target.clone() {
            Some(Target::Zone(zone)) => {
                let brokers = self.discovery.brokers(&zone).await?;
                let first = brokers.first().ok_or(Error::NoTarget)?;
                if self.command_url.is_none() {
                    self.command_url = Some(first.command_url());
                }
                tracing::info!(%zone, broker = %first, others = brokers.len() - 1, "found brokers through SRV");
                if !self.prefer_udp {
                    let given = self.curve.is_some();
                    self.curve = thingsbus_protocol::transport::keys_for_zone(
                        self.curve.take(),
                        self.key_pair.as_ref(),
                        first,
                    )
                    .map_err(Error::Keys)?;
                    if let (false, Some(key)) = (given, &first.server_key) {
                        tracing::info!(%zone, server_key = %key, "CURVE with the broker key the zone publishes");
                    }
                }
                if self.prefer_udp {
                    // UDP cannot tell whether anyone listens: the first broker it is.
                    Target::Udp(first.udp_addr())
                } else {
                    Target::Zmq(brokers.iter().map(|b| b.input_url()).collect())
                }
            }
            Some(t) => t,
            None => return Err(Error::NoTarget),
        };
        self.start(target)
    }

    /// [`AdaptorBuilder::connect`] for code without a tokio runtime.
    ///
    /// # Errors
    /// As [`AdaptorBuilder::connect`].
    pub fn connect_blocking(self) -> Result<Adaptor, Error> {
        match &self.target {
            Some(Target::Zone(_)) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(Error::Thread)?;
                runtime.block_on(self.connect())
            }
            Some(t) => {
                let t = t.clone();
                self.start(t)
            }
            None => Err(Error::NoTarget),
        }
    }

    fn start(self, target: Target) -> Result<Adaptor, Error> {
        let ns = Namespace::new(&self.ns)?;
        let signer = match self.signing {
            None => None,
            Some(_) if !matches!(target, Target::Udp(_)) => return Err(Error::SigningNeedsUdp),
            Some((name, secret)) => {
                if !signed::is_valid_name(&name) {
                    return Err(Error::Signing(signed::SealError::BadName(name).to_string()));
                }
                let boot = self.signing_boot.unwrap_or_else(|| {
                    // Whole seconds since 1970 fit in u32 until 2106.
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
                });
                Some(Signer {
                    name,
                    secret,
                    next: AtomicU64::new(u64::from(boot) << 32),
                })
            }
        };
        let command_url = self.command_url.clone().or_else(|| match &target {
            Target::Zmq(urls) => urls
                .first()
                .and_then(|u| thingsbus_protocol::endpoint::port_plus(&connect_url(u).0, 2)),
            Target::Udp(addr) => {
                thingsbus_protocol::endpoint::port_plus(&format!("tcp://{addr}"), 2)
            }
            Target::Zone(_) => None,
        });
        if let (None, Some(_), Target::Zmq(urls)) = (&self.curve, &self.key_pair, &target) {
            return Err(Error::Keys(format!(
                "a key pair but no broker key for {}: give the broker's public key \
                 (--server-key, server_key=), or a zone that publishes it",
                urls.join(", ")
            )));
        }
        if let (Some(_), Target::Udp(addr)) = (&self.curve, &target) {
            return Err(Error::Udp {
                addr: addr.clone(),
                reason: "UDP cannot carry CURVE: give the broker's ZMQ input (.url) with keys"
                    .into(),
            });
        }
        let counters = Arc::new(Counters::default());
        let transport = match target {
            Target::Zmq(urls) => {
                let urls = urls
                    .iter()
                    .map(|u| {
                        let (url, rewritten) = connect_url(u);
                        if rewritten {
                            tracing::info!(%url, "a '*' host in a connect URL means this machine");
                        }
                        url.into_owned()
                    })
                    .collect();
                Transport::Zmq(ZmqSender::start(
                    urls,
                    self.failover_timeout,
                    self.queue_capacity,
                    counters.clone(),
                    self.curve.as_ref(),
                )?)
            }
            Target::Udp(addr) => {
                let to = addr
                    .to_socket_addrs()
                    .map_err(|e| Error::Udp {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?
                    .next()
                    .ok_or_else(|| Error::Udp {
                        addr: addr.clone(),
                        reason: "resolves to no address".into(),
                    })?;
                let local: SocketAddr = if to.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local).map_err(|e| Error::Udp {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
                socket.set_nonblocking(true).map_err(|e| Error::Udp {
                    addr,
                    reason: e.to_string(),
                })?;
                Transport::Udp { socket, to }
            }
            Target::Zone(_) => return Err(Error::NoTarget),
        };
        Ok(Adaptor {
            inner: Arc::new(Inner {
                ns,
                documentation_url: self.documentation_url,
                udp_form: self.udp_form,
                signer,
                transport,
                counters,
                command_url,
                curve: self.curve,
                server: std::sync::Mutex::new(None),
                serve_counters: Arc::new(ServeCounters::default()),
            }),
        })
    }
}

enum Transport {
    Zmq(ZmqSender),
    Udp { socket: UdpSocket, to: SocketAddr },
}

/// Signs UDP datagrams as a board.
struct Signer {
    name: String,
    secret: BoardSecret,
    /// The next boot (high 32 bits) and counter (low 32 bits): one `fetch_add` numbers a
    /// datagram, and a counter that runs over moves to the next boot by itself.
    next: AtomicU64,
}

impl Signer {
    fn seal(&self, payload: &[u8]) -> Result<Vec<u8>, Error> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (boot, counter) = ((n >> 32) as u32, n as u32);
        signed::seal_to_vec(
            Direction::ToBroker,
            &self.name,
            boot,
            counter,
            payload,
            &self.secret,
        )
        .map_err(|e| match e {
            signed::SealError::TooBig { size } => Error::TooBigForUdp { size },
            e => Error::Signing(e.to_string()),
        })
    }
}

struct Inner {
    ns: Namespace,
    documentation_url: Option<String>,
    udp_form: UdpForm,
    signer: Option<Signer>,
    transport: Transport,
    counters: Arc<Counters>,
    command_url: Option<String>,
    curve: Option<thingsbus_protocol::transport::ClientKeys>,
    server: std::sync::Mutex<Option<Server>>,
    serve_counters: Arc<ServeCounters>,
}

/// What an adaptor has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdaptorStats {
    /// Updates handed to the network.
    pub sent: u64,
    /// Updates dropped: the oldest when the queue was full, or a datagram the kernel refused.
    pub dropped: u64,
    /// Updates waiting in the queue now.
    pub queued: usize,
    /// Whether a broker is connected now (always true over UDP, which cannot tell).
    pub connected: bool,
    /// Commands received by [`Adaptor::serve`] handlers.
    pub commands: u64,
    /// Command replies sent.
    pub command_replies: u64,
    /// Commands whose handler was still running at the deadline.
    pub commands_abandoned: u64,
}

/// A handle that publishes things under a base namespace. Cheap to clone; every clone shares one
/// connection. Dropping the last clone delivers what is queued (for up to a second).
#[derive(Clone)]
pub struct Adaptor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Adaptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adaptor")
            .field("ns", &self.inner.ns)
            .field("stats", &self.stats())
            .finish()
    }
}

#[derive(Serialize)]
struct JsonUpdate<'a, T: ?Sized> {
    #[serde(rename = "type")]
    ty: &'static str,
    ns: &'a str,
    data: &'a T,
    ts: Option<f64>,
    documentation_url: Option<&'a str>,
}

impl Adaptor {
    /// Starts building an adaptor whose things live under `ns` (e.g. `"shop.shopbot"`).
    pub fn builder(ns: &str) -> AdaptorBuilder {
        AdaptorBuilder {
            ns: ns.to_owned(),
            documentation_url: None,
            target: None,
            prefer_udp: false,
            udp_form: UdpForm::default(),
            queue_capacity: 10_000,
            discovery: Discovery::new(),
            failover_timeout: Duration::from_secs(3),
            command_url: None,
            signing: None,
            signing_boot: None,
            curve: None,
            key_pair: None,
        }
    }

    /// Serves commands for the things at and below `<base>.<sub_ns>` (`""` for the base itself):
    /// each command a caller sends there runs `handler(ns, data, deadline)`, and its `Ok(data)` or
    /// `Err(reason)` is the caller's reply. The registration with the broker's command endpoint is
    /// renewed in the background and made again after a broker restart. Handlers run
    /// concurrently (up to 256 at once) on the adaptor's own runtime; one still running at the
    /// command's deadline is abandoned (the caller has had `timeout` from the broker by then).
    /// A handler that changes a thing should also `send` its new state, so every mirror sees it.
    ///
    /// # Errors
    /// [`Error::Namespace`] for a bad `sub_ns`; [`Error::Zmq`] or [`Error::Thread`] when serving
    /// cannot start; [`Error::NoCommandEndpoint`] when no command URL is known.
    pub fn serve<F, Fut>(&self, sub_ns: &str, handler: F) -> Result<(), Error>
    where
        F: Fn(Namespace, serde_json::Value, std::time::SystemTime) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        let prefix = self.inner.ns.join(sub_ns)?;
        let handler: crate::serve::Handler =
            Arc::new(move |ns, data, deadline| Box::pin(handler(ns, data, deadline)));
        let mut server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if server.is_none() {
            let url = self
                .inner
                .command_url
                .clone()
                .ok_or(Error::NoCommandEndpoint)?;
            *server = Some(Server::start(
                url,
                self.inner.serve_counters.clone(),
                self.inner.curve.as_ref(),
            )?);
        }
        if let Some(s) = server.as_ref() {
            s.add(prefix, handler);
        }
        Ok(())
    }

    /// [`Adaptor::serve`] with a plain (blocking) function, run on a thread pool.
    ///
    /// # Errors
    /// As [`Adaptor::serve`].
    pub fn serve_blocking<F>(&self, sub_ns: &str, handler: F) -> Result<(), Error>
    where
        F: Fn(Namespace, serde_json::Value, std::time::SystemTime) -> HandlerResult
            + Send
            + Sync
            + 'static,
    {
        let handler = Arc::new(handler);
        self.serve(sub_ns, move |ns, data, deadline| {
            let handler = handler.clone();
            async move {
                tokio::task::spawn_blocking(move || handler(ns, data, deadline))
                    .await
                    .unwrap_or_else(|e| Err(format!("the handler panicked: {e}")))
            }
        })
    }

    /// True once the broker has confirmed a `serve` registration.
    pub fn is_serving(&self) -> bool {
        self.inner.serve_counters.registered.load(Ordering::Relaxed)
    }

    /// The base namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.ns
    }

    /// Publishes `data` (anything serde can turn into JSON) as the base thing, stamped by the
    /// broker on arrival.
    ///
    /// # Errors
    /// [`Error::Encode`] when `data` cannot be encoded, [`Error::Closed`] after `close`.
    pub fn send<T: Serialize + ?Sized>(&self, data: &T) -> Result<(), Error> {
        self.publish(&self.inner.ns, data, None)
    }

    /// Publishes `data` as the thing `<base>.<sub_ns>`; `ts` in seconds since 1970, or `None`
    /// for "now" (the broker stamps it).
    ///
    /// # Errors
    /// [`Error::Namespace`] when `sub_ns` is not a valid namespace, otherwise as [`Adaptor::send`].
    pub fn send_to<T: Serialize + ?Sized>(
        &self,
        sub_ns: &str,
        data: &T,
        ts: Option<f64>,
    ) -> Result<(), Error> {
        let ns = self.inner.ns.join(sub_ns)?;
        self.publish(&ns, data, ts)
    }

    fn publish<T: Serialize + ?Sized>(
        &self,
        ns: &Namespace,
        data: &T,
        ts: Option<f64>,
    ) -> Result<(), Error> {
        if ts.is_some_and(|t| !t.is_finite()) {
            return Err(Error::Encode(
                "ts must be a finite number of seconds".into(),
            ));
        }
        let url = self.inner.documentation_url.as_deref();
        match &self.inner.transport {
            Transport::Zmq(sender) => {
                let msg = serde_json::to_vec(&JsonUpdate {
                    ty: "thing_update",
                    ns: ns.as_str(),
                    data,
                    ts,
                    documentation_url: url,
                })
                .map_err(|e| Error::Encode(e.to_string()))?;
                sender.push(msg)
            }
            Transport::Udp { socket, to } => {
                let encoded = match self.inner.udp_form {
                    UdpForm::Compact => rmp_serde::to_vec(&(ns.as_str(), ts, data, url)),
                    UdpForm::Map => rmp_serde::to_vec_named(&JsonUpdate {
                        ty: "thing_update",
                        ns: ns.as_str(),
                        data,
                        ts,
                        documentation_url: url,
                    }),
                }
                .map_err(|e| Error::Encode(e.to_string()))?;
                let encoded = match &self.inner.signer {
                    Some(signer) => signer.seal(&encoded)?,
                    None => encoded,
                };
                if encoded.len() > MAX_DATAGRAM {
                    return Err(Error::TooBigForUdp {
                        size: encoded.len(),
                    });
                }
                match socket.send_to(&encoded, to) {
                    Ok(_) => self.inner.counters.sent.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::debug!(error = %e, %to, "datagram not sent");
                        self.inner.counters.dropped.fetch_add(1, Ordering::Relaxed)
                    }
                };
                Ok(())
            }
        }
    }

    /// Counters and state.
    pub fn stats(&self) -> AdaptorStats {
        let (queued, connected) = match &self.inner.transport {
            Transport::Zmq(s) => (s.queued(), s.connected()),
            Transport::Udp { .. } => (0, true),
        };
        AdaptorStats {
            sent: self.inner.counters.sent.load(Ordering::Relaxed),
            dropped: self.inner.counters.dropped.load(Ordering::Relaxed),
            queued,
            connected,
            commands: self.inner.serve_counters.commands.load(Ordering::Relaxed),
            command_replies: self.inner.serve_counters.replied.load(Ordering::Relaxed),
            commands_abandoned: self.inner.serve_counters.abandoned.load(Ordering::Relaxed),
        }
    }

    /// Waits until every queued update has been handed to the network, at most `timeout`.
    /// Returns false on time-out (for example while no broker is reachable).
    pub fn flush(&self, timeout: Duration) -> bool {
        match &self.inner.transport {
            Transport::Zmq(s) => s.flush(timeout),
            Transport::Udp { .. } => true,
        }
    }

    /// Stops taking updates and delivers what is queued, for at most `timeout`. Every clone is
    /// closed. Returns false if updates were left undelivered.
    pub fn close(&self, timeout: Duration) -> bool {
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(s) = server {
            s.stop();
        }
        match &self.inner.transport {
            Transport::Zmq(s) => s.close(timeout),
            Transport::Udp { .. } => true,
        }
    }
}
