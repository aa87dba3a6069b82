//! Several brokers, one directory (`--cluster nats://...`): every accepted update is written to a
//! NATS JetStream key-value bucket (key = the thing's namespace), conflated per thing within a
//! flush interval; every broker watches the bucket and applies what other brokers wrote as
//! ordinary updates with its own `seq`. Newest `ts` wins.
//!
//! The bucket's stream is created explicitly with the key-value settings (`KV_<bucket>`,
//! subjects `$KV.<bucket>.>`, one message per subject, rollups allowed, deletes denied) and then
//! opened as a bucket: that works on Debian's nats-server 2.9 as on current ones. A value is
//! `{"o": "<node name>", "u": <the update as published>}`; a broker skips its own.
//!
//! Conflation starts in ingest: a local update marks its thing in the directory, and ingest
//! hands over the newest value of each marked thing when the writer may next write
//! ([`NextWrite`]), so a thing updated a thousand times per flush costs ingest a flag, not a
//! thousand hand-overs.
//!
//! NATS slow or away costs the local broker nothing: writes wait in a map with the newest value
//! per thing (memory bounded by the number of things) and go out when NATS acknowledges; a failed
//! write is retried unless a newer value of the thing came meanwhile.
//!
//! Commands between brokers go through NATS core request/reply: see [`relay`].

pub(crate) mod relay;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::value::RawValue;

use thingsbus_protocol::codec::{decode_published, Published};
use thingsbus_protocol::namespace::is_within_str;
use thingsbus_protocol::{Directory, Entry, Timestamp, UpdateRef};

use crate::config::{ClusterAuth, ClusterConfig, ClusterTls};
use crate::mailbox::Post;
use crate::stats::{self, BROKER_NS};

/// What ingest hands over: the update as published (its namespace is read from it here, off
/// the ingest thread).
pub(crate) type Outgoing = Arc<[u8]>;

/// The ingest thread's end: local updates out, other brokers' updates in.
pub(crate) struct ClusterLink {
    /// The newest value of each thing changed locally, at most once per `flush`.
    pub(crate) out: SyncSender<Vec<Outgoing>>,
    /// When the writer may write next: ingest hands its changes over then.
    pub(crate) next_write: NextWrite,
    /// Hand-overs the conflate thread has not taken yet.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Seconds another broker's `ts` may be ahead of our clock (`--max-clock-skew`).
    max_clock_skew: f64,
}

/// When the cluster's writer may write next (it writes at most once per `--cluster-flush`),
/// shared with ingest, which holds local changes until then: a thing updated a thousand times
/// in between costs ingest a flag, and goes over once, just in time for the write.
#[derive(Clone)]
pub(crate) struct NextWrite {
    base: std::time::Instant,
    /// Microseconds after `base`.
    at: Arc<AtomicU64>,
}

impl NextWrite {
    fn new() -> Self {
        NextWrite {
            base: std::time::Instant::now(),
            at: Arc::default(),
        }
    }

    fn set(&self, at: std::time::Instant) {
        let micros = at.saturating_duration_since(self.base).as_micros();
        self.at
            .store(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How long until then; zero when it is due.
    pub(crate) fn wait(&self) -> Duration {
        let now = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.at.load(Ordering::Relaxed).saturating_sub(now))
    }
}

/// Hand-overs waiting for the conflate thread at most.
const HAND_OVER_QUEUE: usize = 16;
/// How soon ingest looks again when the conflate thread is behind.
const BEHIND_RETRY: Duration = Duration::from_millis(5);

/// How early [`ClusterLink::hand_over`] may hand changes over.
const HAND_OVER_EARLY: Duration = Duration::from_millis(1);

impl ClusterLink {
    /// Hands the newest value of each thing changed locally (marked in `dir`) to the writer
    /// when it may write (see [`NextWrite`]): at once after a quiet spell, at most once per
    /// `--cluster-flush` under load. As the writer does, less than a millisecond early counts
    /// as due.
    pub(crate) fn hand_over(&self, dir: &mut Directory, stats: &crate::Stats) {
        if !dir.has_changed() || self.next_write.wait() > HAND_OVER_EARLY {
            return;
        }
        if self.queued.load(Ordering::Acquire) >= HAND_OVER_QUEUE {
            // The conflate thread is behind (it yields to local service): the marks stay in the
            // directory, conflating there, and go with a later hand-over. Costs ingest nothing.
            stats::add(&stats.cluster.behind, 1);
            return;
        }
        let (changed, superseded) = dir.take_changed();
        stats::add(&stats.cluster.conflated, superseded);
        self.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(TrySendError::Full(changed)) = self.out.try_send(changed) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            stats::add(&stats.cluster.behind, 1);
            // The conflate thread is behind: the things are marked again, to go with the next
            // hand-over (conflating in the directory meanwhile). Nothing queues up here.
            for bytes in changed {
                dir.mark(encoded_ns(&bytes));
            }
        }
    }

    /// How long until [`ClusterLink::hand_over`] has something to do, if it will.
    pub(crate) fn hand_over_due(&self, dir: &Directory) -> Option<Duration> {
        if self.queued.load(Ordering::Acquire) >= HAND_OVER_QUEUE {
            // Nothing to do until the conflate thread catches up: look again a little later
            // rather than spin.
            return dir.has_changed().then_some(BEHIND_RETRY);
        }
        dir.has_changed()
            .then(|| self.next_write.wait().saturating_sub(HAND_OVER_EARLY))
    }

    /// Applies one value another broker wrote to the bucket: see [`apply_remote`].
    pub(crate) fn apply_remote(
        &self,
        dir: &mut Directory,
        bytes: &[u8],
        now: Timestamp,
        stats: &crate::Stats,
    ) -> Option<Entry> {
        apply_remote(dir, bytes, now, self.max_clock_skew, stats)
    }
}

/// The namespace of an update as published (`""` when it is not one).
pub(crate) fn encoded_ns(bytes: &[u8]) -> &str {
    std::str::from_utf8(thingsbus_protocol::codec::encoded_update_ns(bytes)).unwrap_or("")
}

/// Applies one update written by another broker (as published there) to `dir` with our own
/// `seq`, unless our value of the thing is newer ([`Directory::apply_newest`]). Updates of the
/// broker's own thing are each broker's own and are left out; so is a value whose `ts` is more
/// than `max_clock_skew` seconds ahead of `now` (counted as `future_ts`), which would otherwise
/// win over every later value, and a new thing beyond `--max-things` or `--max-bytes` (counted
/// as for local input).
fn apply_remote(
    dir: &mut Directory,
    bytes: &[u8],
    now: Timestamp,
    max_clock_skew: f64,
    stats: &crate::Stats,
) -> Option<Entry> {
    let Ok(Published::Update(u)) = decode_published(bytes) else {
        return None;
    };
    if is_within_str(u.ns.as_str(), BROKER_NS) {
        return None;
    }
    if u.ts
        .is_some_and(|ts| ts.as_secs() > now.as_secs() + max_clock_skew)
    {
        stats.reject(crate::Reason::FutureTs);
        return None;
    }
    let update = UpdateRef {
        ns: u.ns.clone(),
        ts: Some(u.ts.unwrap_or(now)),
        data: Cow::Borrowed(u.data),
        documentation_url: u.documentation_url.clone(),
    };
    match dir.apply_newest(&update, now, false) {
        Ok(entry) => {
            stats::add(&stats.cluster.applied, 1);
            Some(entry)
        }
        Err(refused) => {
            match crate::Reason::of_refusal(refused) {
                Some(reason) => stats.reject(reason),
                None => stats::add(&stats.cluster.older, 1),
            }
            None
        }
    }
}

#[derive(serde::Deserialize)]
struct Value<'a> {
    o: &'a str,
    #[serde(borrow)]
    u: &'a RawValue,
}

/// The nice value the cluster's threads add to their own: when the CPU is short, ingest and
/// publishing (local service) come first, and the cluster writes less often, each time with the
/// newest values (conflation absorbs the difference).
const CLUSTER_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`CLUSTER_NICE`] (on Linux a nice value is per
/// thread). Not being allowed is no reason to stop.
fn yield_to_local_service() {
    if let Err(e) = rustix::process::nice(CLUSTER_NICE) {
        tracing::debug!(error = %e, "cannot lower the cluster thread's priority");
    }
}

/// Credentials as read at start: a file that cannot be read stops the start with a clear error
/// instead of a retry loop.
#[derive(Clone)]
enum Secret {
    None,
    Token(String),
    UserPassword(String, String),
    Creds(String),
    Nkey(String),
}

fn read_secret(auth: &ClusterAuth) -> std::io::Result<Secret> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot read the NATS {what} file {}: {e}", p.display()),
            )
        })
    };
    Ok(match auth {
        ClusterAuth::None => Secret::None,
        ClusterAuth::Token(t) => Secret::Token(t.clone()),
        ClusterAuth::UserPassword(u, p) => Secret::UserPassword(u.clone(), p.clone()),
        ClusterAuth::CredsFile(p) => {
            let creds = read("credentials", p)?;
            // Parsed once here, so that a damaged file is reported at start.
            async_nats::ConnectOptions::new()
                .credentials(&creds)
                .map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "the NATS credentials file {} is not usable: {e}",
                            p.display()
                        ),
                    )
                })?;
            Secret::Creds(creds)
        }
        ClusterAuth::NkeyFile(p) => Secret::Nkey(read("NKey seed", p)?.trim().to_owned()),
    })
}

/// Checks at start that each TLS file can be read and holds PEM, so that a wrong path stops the
/// start with a clear error instead of a retry loop.
fn check_tls(tls: &ClusterTls) -> std::io::Result<()> {
    if tls.cert.is_some() != tls.key.is_some() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--cluster-cert and --cluster-key go together: give both or neither",
        ));
    }
    for (what, path) in [
        ("--cluster-ca-file", &tls.ca_file),
        ("--cluster-cert", &tls.cert),
        ("--cluster-key", &tls.key),
    ] {
        let Some(path) = path else { continue };
        let text = std::fs::read_to_string(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
        })?;
        if !text.contains("-----BEGIN ") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{what} {}: not a PEM file (no -----BEGIN line)",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// What to add to a failed connection's log line when TLS is the cause.
fn tls_hint(e: &async_nats::ConnectError) -> &'static str {
    let text = e.to_string();
    if e.kind() == async_nats::ConnectErrorKind::Tls
        || text.contains("certificate")
        || text.contains("alert")
    {
        "TLS failed: --cluster-ca-file must name the CA that signed the NATS server's \
         certificate (made out to the host in the URL), and a server with `verify: true` needs \
         --cluster-cert and --cluster-key signed by a CA it trusts"
    } else {
        ""
    }
}

fn connect_options(secret: &Secret, config: &ClusterConfig) -> async_nats::ConnectOptions {
    let node = &config.node_name;
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("thingsbus-broker {node}"))
        .connection_timeout(Duration::from_secs(2));
    if let Some(ca) = &config.tls.ca_file {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    match secret {
        Secret::None => o,
        Secret::Token(t) => o.token(t.clone()),
        Secret::UserPassword(u, p) => o.user_and_password(u.clone(), p.clone()),
        // Checked by `read_secret`.
        Secret::Creds(c) => o
            .credentials(c)
            .unwrap_or_else(|_| async_nats::ConnectOptions::new()),
        Secret::Nkey(seed) => o.nkey(seed.clone()),
    }
}

fn server_addrs(urls: &[String]) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.iter()
        .map(|u| u.parse().map_err(|e| format!("{u}: {e}")))
        .collect()
}

/// With `--cluster`: starts the cluster thread (into `threads`) and loads the whole cluster's
/// directory into `dir` before anything serves. Returns the directory and ingest's link.
pub(crate) fn join(
    config: &crate::Config,
    mut dir: Directory,
    stats: &Arc<crate::Stats>,
    stop: &Arc<AtomicBool>,
    incoming: Post<Vec<u8>>,
    relay: Option<relay::RelayEnds>,
    threads: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<(Directory, Option<ClusterLink>), crate::Error> {
    let Some(cc) = &config.cluster else {
        return Ok((dir, None));
    };
    let (link, loaded, thread) = start(Start {
        config: cc.clone(),
        stats: stats.clone(),
        stop: stop.clone(),
        incoming,
        forget_after: config.forget_after,
        max_clock_skew: config.max_clock_skew,
        load_timeout: Duration::from_secs(10),
        relay,
        conflate_stall: conflate_stall(config.fault.as_deref()),
    })?;
    threads.push(thread);
    let now = Timestamp::now();
    let mut applied = 0;
    for bytes in &loaded {
        applied += usize::from(link.apply_remote(&mut dir, bytes, now, stats).is_some());
    }
    stats::set(&stats.things, dir.len() as u64);
    tracing::info!(things = applied, "loaded the cluster's directory");
    Ok((dir, Some(link)))
}

/// What the cluster thread is started with.
struct Start {
    config: ClusterConfig,
    stats: Arc<crate::Stats>,
    stop: Arc<AtomicBool>,
    /// Other brokers' updates, to ingest.
    incoming: Post<Vec<u8>>,
    /// `--forget-after`: how long the bucket keeps a value.
    forget_after: Duration,
    /// `--max-clock-skew`: for other brokers' values and route announcements alike.
    max_clock_skew: Duration,
    /// How long the start waits for the bucket's contents.
    load_timeout: Duration,
    relay: Option<relay::RelayEnds>,
    /// Tests only (debug builds): the conflate thread sleeps this long on its first batch, so
    /// that ingest finds it behind.
    conflate_stall: Option<Duration>,
}

/// `thingsbus-conflate=stall:MS` in the test-only fault hook (`Config::fault`), in debug builds.
fn conflate_stall(fault: Option<&str>) -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let (thread, what) = fault?.split_once('=')?;
    let ms = what.strip_prefix("stall:")?.parse().ok()?;
    (thread == "thingsbus-conflate").then(|| Duration::from_millis(ms))
}

/// Starts the cluster thread. Returns the link for ingest, the updates of the whole bucket as it
/// is now (to load before serving; empty when NATS could not be reached within `load_timeout`),
/// and the thread.
fn start(
    start: Start,
) -> std::io::Result<(ClusterLink, Vec<Vec<u8>>, std::thread::JoinHandle<()>)> {
    let Start {
        config,
        stats,
        stop,
        incoming,
        forget_after,
        max_clock_skew,
        load_timeout,
        relay,
        conflate_stall,
    } = start;
    let secret = read_secret(&config.auth)?;
    check_tls(&config.tls)?;
    let next_write = NextWrite::new();
    let addrs = server_addrs(&config.urls)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // Bounded: should the conflate thread fall behind, ingest keeps its marks (one flag per
    // thing) and hands over later, instead of queueing batches here.
    let (out_tx, out_rx) = std::sync::mpsc::sync_channel::<Vec<Outgoing>>(HAND_OVER_QUEUE);
    // A rendezvous: the load is either taken by the start below or, once it has given up
    // waiting (and dropped the receiver), refused back to the sender, which hands it to ingest.
    // Never left in a buffer nobody reads.
    let (loaded_tx, loaded_rx) = std::sync::mpsc::sync_channel::<Vec<Vec<u8>>>(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("thingsbus-cluster")
        .on_thread_start(yield_to_local_service)
        .enable_all()
        .build()?;
    let writer_clock = next_write.clone();
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let conflate_queued = queued.clone();
    let thread = std::thread::Builder::new()
        .name("thingsbus-cluster".into())
        .spawn(move || {
            let pending: Arc<Mutex<Pending>> = Arc::default();
            // Tells the writer that something is pending.
            let wanted = Arc::new(tokio::sync::Notify::new());
            // Local updates are merged into `pending` as they come, never waiting for NATS.
            let merger = {
                let pending = pending.clone();
                let wanted = wanted.clone();
                let stats = stats.clone();
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name("thingsbus-conflate".into())
                    .spawn(move || {
                        let mut stall = conflate_stall;
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(batch) = out_rx.recv_timeout(Duration::from_millis(100)) else {
                                continue;
                            };
                            if let Some(stall) = stall.take() {
                                std::thread::sleep(stall);
                            }
                            conflate_queued.fetch_sub(1, Ordering::AcqRel);
                            let mut p = pending
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            for bytes in batch {
                                let ns = encoded_ns(&bytes);
                                if let Some(held) = p.get_mut(ns) {
                                    *held = bytes;
                                    stats::add(&stats.cluster.conflated, 1);
                                } else {
                                    p.insert(ns.to_owned(), bytes);
                                }
                            }
                            stats::set(&stats.cluster.pending, p.len() as u64);
                            drop(p);
                            wanted.notify_one();
                        }
                    })
            };
            // The conflation thread keeps normal priority (it must keep up with ingest, or its
            // queue would grow); this one, which writes and watches, yields.
            yield_to_local_service();
            let relay = relay.map(|ends| {
                runtime.spawn(start_relay(
                    config.clone(),
                    secret.clone(),
                    addrs.clone(),
                    relay_parts(&config, ends, max_clock_skew, &stats, &stop),
                ))
            });
            let value_head = format!(
                r#"{{"o":{},"u":"#,
                serde_json::Value::String(config.node_name.clone())
            );
            let bucket = Bucket {
                next_write: writer_clock,
                config,
                addrs,
                secret,
                stats,
                stop,
                pending,
                wanted,
                incoming,
                value_head,
                forget_after,
            };
            runtime.block_on(bucket.run(loaded_tx));
            if let Ok(m) = merger {
                let _ = m.join();
            }
            // The relay withdraws this broker's routes before it goes.
            if let Some(relay) = relay {
                runtime.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(1), relay).await;
                });
            }
            runtime.shutdown_timeout(Duration::from_millis(200));
        })?;
    let loaded = loaded_rx.recv_timeout(load_timeout).unwrap_or_else(|_| {
        tracing::warn!("the cluster could not be loaded in time; serving locally and catching up when NATS answers");
        Vec::new()
    });
    drop(loaded_rx);
    Ok((
        ClusterLink {
            out: out_tx,
            next_write,
            max_clock_skew: max_clock_skew.as_secs_f64(),
            queued,
        },
        loaded,
        thread,
    ))
}

/// NATS connection events waiting for the relay at most; more are dropped and counted (the
/// relay only needs to see that the connection came back, and a later event says so again).
const EVENTS_QUEUE: usize = 64;

/// What the relay is started with, but its connection and events.
struct RelayParts {
    ends: relay::RelayEnds,
    policy: relay::RoutePolicy,
    stats: Arc<crate::Stats>,
    stop: Arc<AtomicBool>,
}

fn relay_parts(
    config: &ClusterConfig,
    ends: relay::RelayEnds,
    max_clock_skew: Duration,
    stats: &Arc<crate::Stats>,
    stop: &Arc<AtomicBool>,
) -> RelayParts {
    RelayParts {
        ends,
        policy: relay::RoutePolicy {
            accept_nodes: config.accept_nodes.clone(),
            max_clock_skew,
        },
        stats: stats.clone(),
        stop: stop.clone(),
    }
}

/// Hands a connection event to the relay without waiting: dropped and counted when the relay
/// has not taken the earlier ones yet.
fn pass_event(
    tx: &tokio::sync::mpsc::Sender<async_nats::Event>,
    event: async_nats::Event,
    stats: &crate::Stats,
) {
    if tx.try_send(event).is_err() {
        stats::add(&stats.cluster.events_dropped, 1);
    }
}

/// The relay's own connection, beside the bucket's: it lives as long as the broker (the client
/// reconnects by itself).
async fn start_relay(
    config: ClusterConfig,
    secret: Secret,
    addrs: Vec<async_nats::ServerAddr>,
    parts: RelayParts,
) {
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(EVENTS_QUEUE);
    let event_stats = parts.stats.clone();
    let client = connect_options(&secret, &config)
        .retry_on_initial_connect()
        .event_callback(move |e| {
            pass_event(&events_tx, e, &event_stats);
            async {}
        })
        .connect(addrs)
        .await;
    match client {
        Ok(client) => {
            relay::run(
                client,
                relay::Relay {
                    bucket: config.bucket,
                    node: config.node_name,
                    policy: parts.policy,
                    ends: parts.ends,
                    events: events_rx,
                    stats: parts.stats,
                    stop: parts.stop,
                },
            )
            .await;
        }
        Err(e) => tracing::error!(error = %e, "cannot connect the cluster's command relay"),
    }
}

/// The bucket's side of the cluster thread: writing, watching and what they share.
struct Bucket {
    config: ClusterConfig,
    /// `config.urls`, parsed (and checked) at start.
    addrs: Vec<async_nats::ServerAddr>,
    secret: Secret,
    stats: Arc<crate::Stats>,
    stop: Arc<AtomicBool>,
    /// Newest unwritten value per thing.
    pending: Arc<Mutex<Pending>>,
    /// Notified when `pending` gets something.
    wanted: Arc<tokio::sync::Notify>,
    /// When the next write may begin, for ingest.
    next_write: NextWrite,
    /// Other brokers' updates, to ingest.
    incoming: Post<Vec<u8>>,
    forget_after: Duration,
    /// How every value this broker writes starts: `{"o":"<node>","u":`.
    value_head: String,
}

impl Bucket {
    /// Until the broker stops: open the bucket, load it (into `loaded` while the broker is
    /// starting), then write and watch. One NATS client serves the broker's whole life (it
    /// reconnects by itself), and neither a failed write nor a broken watch tears anything down:
    /// writes are retried, and the watch (an ordered consumer) resumes after the last revision it
    /// delivered. That matters when a stream leader dies: every rebuild would wait out time-outs
    /// while a new leader is elected.
    async fn run(self, loaded: SyncSender<Vec<Vec<u8>>>) {
        let Some((js, kv)) = self.open().await else {
            return;
        };
        let mut last_ensure = tokio::time::Instant::now();
        let mut health = Health::new(&self.stats);
        let mut watch = loop {
            match kv.watch_with_history(">").await {
                Ok(w) => break w,
                Err(e) => {
                    health.watch(false, &e.to_string());
                    if self.pause(Duration::from_secs(1)).await {
                        return;
                    }
                }
            }
        };
        let mut last_revision = 0;
        // First the bucket as it is: before this broker serves, if it is starting.
        let mut initial = Vec::new();
        let has_values = match kv.status().await {
            Ok(s) => s.values() > 0,
            Err(_) => true,
        };
        while has_values && !self.stop.load(Ordering::Relaxed) {
            match watch.next().await {
                Some(Ok(e)) => {
                    last_revision = e.revision;
                    if let Some(u) = self.written_elsewhere(&e) {
                        initial.push(u);
                    }
                    if e.delta == 0 || e.seen_current {
                        break;
                    }
                }
                // The ordered consumer recreates itself on the next poll.
                Some(Err(e)) => health.watch(false, &e.to_string()),
                None => break,
            }
        }
        // Before the broker serves, the load goes to its start; later (a start that gave up
        // waiting) it goes to ingest like any other update.
        let initial = loaded.send(initial).err().map(|e| e.0).unwrap_or_default();
        for u in initial {
            self.deliver(u).await;
        }

        // A write goes out as soon as something is pending, but no sooner than `flush` after
        // the previous one began: at a low rate every update is written at once, at a high rate
        // each thing is written at most once per `flush` (the newest value).
        let flush = self.config.flush.max(Duration::from_millis(1));
        let mut last_write = tokio::time::Instant::now() - flush;
        let mut next_write: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut check = tokio::time::interval(Duration::from_secs(5));
        let mut write_now = false;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(e)) => {
                        health.watch(true, "");
                        last_revision = e.revision;
                        if let Some(u) = self.written_elsewhere(&e) {
                            self.deliver(u).await;
                        }
                    }
                    Some(Err(e)) => health.watch(false, &e.to_string()),
                    None => match kv.watch_from_revision(">", last_revision + 1).await {
                        Ok(w) => watch = w,
                        Err(e) => {
                            health.watch(false, &e.to_string());
                            if self.pause(Duration::from_secs(1)).await {
                                return;
                            }
                        }
                    },
                },
                () = self.wanted.notified(), if next_write.is_none() => {
                    let due = last_write + flush;
                    // Less than a millisecond early counts as due: a timer would round up to
                    // its next millisecond, late by as much again.
                    if tokio::time::Instant::now() + Duration::from_millis(1) >= due {
                        write_now = true;
                    } else {
                        next_write = Some(due);
                    }
                }
                () = tokio::time::sleep_until(next_write.unwrap_or_else(tokio::time::Instant::now)),
                    if next_write.is_some() =>
                {
                    next_write = None;
                    write_now = true;
                }
                // Looks at `stop` now and then.
                _ = tick.tick() => {}
                // A NATS that lost its storage starts the stream again at 1, and a watch that
                // resumes after our last revision would miss everything up to it: watch it all
                // again instead.
                _ = check.tick() => {
                    // Asked of the server each time (`Store::status` only returns what was
                    // known when the bucket was opened).
                    let last = kv.stream.get_info().await.map(|i| i.state.last_sequence);
                    // In a quiet bucket the watch says nothing either way: JetStream not
                    // answering counts as the link down, and a watch caught up with the bucket
                    // as working again.
                    match &last {
                        Err(e) => health.watch(false, &e.to_string()),
                        Ok(l) if !health.watch_ok && *l == last_revision => health.watch(true, ""),
                        Ok(_) => {}
                    }
                    if let Some(bucket_last) = last.as_ref().ok().copied().filter(|l| *l < last_revision) {
                        tracing::warn!(
                            last_revision,
                            bucket_last,
                            "the bucket is younger than what this broker has seen (NATS lost its storage?); \
                             loading it again; things written before reappear when next updated"
                        );
                        match kv.watch_with_history(">").await {
                            Ok(w) => {
                                stats::add(&self.stats.cluster.reloads, 1);
                                watch = w;
                                last_revision = 0;
                            }
                            Err(e) => health.watch(false, &e.to_string()),
                        }
                    }
                }
            }
            if !std::mem::take(&mut write_now) {
                continue;
            }
            last_write = tokio::time::Instant::now();
            self.next_write.set((last_write + flush).into_std());
            match self.write(&kv).await {
                Ok(()) => health.write(true, ""),
                Err(e) => {
                    health.write(false, &e);
                    let now = tokio::time::Instant::now();
                    // What failed is pending again: retried in a while.
                    next_write = Some(now + Duration::from_millis(250));
                    // A NATS that lost its storage has no stream any more: make it again (now
                    // and then, not per failure).
                    if now - last_ensure > Duration::from_secs(5) {
                        last_ensure = now;
                        if let Err(e) = self.ensure_stream(&js).await {
                            tracing::debug!(error = %e, "the bucket's stream is not there yet");
                        }
                    }
                }
            }
        }
    }

    /// Sleeps, or less when the broker stops; true when it stops.
    async fn pause(&self, d: Duration) -> bool {
        let end = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < end {
            if self.stop.load(Ordering::Relaxed) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.load(Ordering::Relaxed)
    }

    /// Connects and opens the bucket, creating its stream if need be; `None` when the broker
    /// stopped first.
    async fn open(
        &self,
    ) -> Option<(
        async_nats::jetstream::Context,
        async_nats::jetstream::kv::Store,
    )> {
        let config = &self.config;
        let client = loop {
            match connect_options(&self.secret, config)
                .connect(self.addrs.clone())
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    let hint = tls_hint(&e);
                    tracing::warn!(error = %e, hint, urls = %config.urls.join(","), "cannot connect to NATS; serving locally, retrying in a second");
                    if self.pause(Duration::from_secs(1)).await {
                        return None;
                    }
                }
            }
        };
        // Requests time out after 3 s rather than 10: while a new cluster (or a cluster that lost
        // a server) elects its leaders, a quicker retry gets through sooner.
        let timeout = Duration::from_secs(3);
        let js = match &config.domain {
            Some(domain) => async_nats::jetstream::ContextBuilder::new()
                .timeout(timeout)
                .domain(domain.as_str())
                .build(client),
            None => async_nats::jetstream::ContextBuilder::new()
                .timeout(timeout)
                .build(client),
        };
        let bucket = &config.bucket;
        loop {
            let opened = async {
                self.ensure_stream(&js).await?;
                js.get_key_value(bucket)
                    .await
                    .map_err(|e| format!("cannot open the bucket {bucket}: {e}"))
            };
            match opened.await {
                Ok(kv) => {
                    stats::set(&self.stats.cluster.connected, 1);
                    tracing::info!(bucket = %bucket, node = %config.node_name, "cluster link up");
                    return Some((js, kv));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster bucket not available; serving locally, retrying in a second");
                    if self.pause(Duration::from_secs(1)).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Creates the bucket's stream with the key-value settings unless it is there.
    async fn ensure_stream(&self, js: &async_nats::jetstream::Context) -> Result<(), String> {
        let bucket = &self.config.bucket;
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: self.forget_after,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            num_replicas: self.config.replicas.max(1),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot create the bucket's stream KV_{bucket}: {e}"))
    }

    /// What another broker wrote, as the update it published; `None` for this broker's own.
    fn written_elsewhere(&self, e: &async_nats::jetstream::kv::Entry) -> Option<Vec<u8>> {
        if e.operation != async_nats::jetstream::kv::Operation::Put
            || e.value.starts_with(self.value_head.as_bytes())
        {
            // This broker's own writes come back through the watch too: skipped unparsed.
            return None;
        }
        let v: Value<'_> = serde_json::from_slice(&e.value).ok()?;
        (v.o != self.config.node_name).then(|| v.u.get().as_bytes().to_vec())
    }

    /// Into ingest's bounded queue; when it is full, waits for ingest to take some (nothing
    /// that other brokers wrote is dropped here).
    async fn deliver(&self, mut bytes: Vec<u8>) {
        loop {
            match self.incoming.try_send(bytes) {
                Ok(()) | Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
                Err(std::sync::mpsc::TrySendError::Full(b)) => {
                    bytes = b;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    /// Writes what is pending, many puts in flight at once. What failed stays pending, unless
    /// a newer value of the thing came meanwhile.
    async fn write(&self, kv: &async_nats::jetstream::kv::Store) -> Result<(), String> {
        let batch: Vec<(String, Arc<[u8]>)> = {
            let mut p = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            p.drain().collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let head = &self.value_head;
        let results: Vec<(String, Arc<[u8]>, PutResult)> = futures_util::stream::iter(batch)
            .map(|(ns, bytes)| {
                let mut value = Vec::with_capacity(head.len() + bytes.len() + 1);
                value.extend_from_slice(head.as_bytes());
                value.extend_from_slice(&bytes);
                value.push(b'}');
                async move {
                    let r = kv
                        .put(&ns, value.into())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    (ns, bytes, r)
                }
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        let mut first_error = None;
        let mut p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (ns, bytes, r) in results {
            match r {
                Ok(()) => stats::add(&self.stats.cluster.writes, 1),
                Err(e) => {
                    stats::add(&self.stats.cluster.write_errors, 1);
                    p.entry(ns).or_insert(bytes);
                    first_error.get_or_insert(e);
                }
            }
        }
        stats::set(&self.stats.cluster.pending, p.len() as u64);
        first_error.map_or(Ok(()), |e| Err(format!("write failed: {e}")))
    }
}

type PutResult = Result<(), String>;

/// The newest unwritten value of each thing (fast hashing: one insert per local update).
type Pending = HashMap<String, Arc<[u8]>, foldhash::fast::RandomState>;

/// Puts awaiting their acknowledgement at once.
const WRITES_IN_FLIGHT: usize = 256;

/// Whether the link works, as the last write and the watch found it: logged when it changes,
/// never per failure.
struct Health<'a> {
    stats: &'a crate::Stats,
    write_ok: bool,
    watch_ok: bool,
    /// When the backlog was last logged, while writes fail.
    backlog_logged: Option<std::time::Instant>,
}

impl<'a> Health<'a> {
    fn new(stats: &'a crate::Stats) -> Health<'a> {
        Health {
            stats,
            write_ok: true,
            watch_ok: true,
            backlog_logged: None,
        }
    }

    fn write(&mut self, ok: bool, error: &str) {
        let was = self.write_ok && self.watch_ok;
        self.write_ok = ok;
        self.changed(was, error);
        // While writes fail, the backlog every 10 s (it is also in the broker's thing).
        let now = std::time::Instant::now();
        if ok {
            self.backlog_logged = None;
        } else if self
            .backlog_logged
            .is_none_or(|t| now - t >= Duration::from_secs(10))
        {
            self.backlog_logged = Some(now);
            let pending = self.stats.cluster.pending.load(Ordering::Relaxed);
            tracing::warn!(pending, error = %error, "cluster writes failing; the newest value of each of these things waits");
        }
    }

    fn watch(&mut self, ok: bool, error: &str) {
        let was = self.write_ok && self.watch_ok;
        self.watch_ok = ok;
        self.changed(was, error);
    }

    fn changed(&self, was: bool, error: &str) {
        let is = self.write_ok && self.watch_ok;
        stats::set(&self.stats.cluster.connected, u64::from(is));
        if was && !is {
            tracing::warn!(error = %error, "cluster link down; serving locally, retrying");
        } else if is && !was {
            let pending = self.stats.cluster.pending.load(Ordering::Relaxed);
            tracing::info!(pending, "cluster link back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflate_stall_hook_is_read_in_debug_builds_only() {
        let stall = conflate_stall(Some("thingsbus-conflate=stall:1500"));
        if cfg!(debug_assertions) {
            assert_eq!(stall, Some(Duration::from_millis(1500)));
        } else {
            assert_eq!(stall, None);
        }
        assert_eq!(conflate_stall(Some("thingsbus-ingest=stall:1500")), None);
        assert_eq!(conflate_stall(Some("thingsbus-conflate=panic")), None);
        assert_eq!(conflate_stall(None), None);
    }

    #[test]
    fn connection_events_beyond_the_queue_are_dropped_and_counted() {
        let stats = crate::Stats::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(EVENTS_QUEUE);
        for _ in 0..EVENTS_QUEUE + 5 {
            pass_event(&tx, async_nats::Event::Connected, &stats);
        }
        assert_eq!(stats.cluster.events_dropped.load(Ordering::Relaxed), 5);
        let mut taken = 0;
        while rx.try_recv().is_ok() {
            taken += 1;
        }
        assert_eq!(taken, EVENTS_QUEUE);
        pass_event(&tx, async_nats::Event::Connected, &stats);
        assert_eq!(stats.cluster.events_dropped.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn tls_files_are_checked_at_start_with_the_flag_named() {
        let dir =
            std::env::temp_dir().join(format!("thingsbus-cluster-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pem = dir.join("ok.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").expect("write");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "hello\n").expect("write");
        let err = |tls: ClusterTls| check_tls(&tls).expect_err("refused").to_string();
        assert!(check_tls(&ClusterTls::default()).is_ok());
        assert!(check_tls(&ClusterTls {
            ca_file: Some(pem.clone()),
            cert: Some(pem.clone()),
            key: Some(pem.clone()),
        })
        .is_ok());
        let e = err(ClusterTls {
            ca_file: Some(dir.join("missing.pem")),
            ..ClusterTls::default()
        });
        assert!(
            e.contains("--cluster-ca-file") && e.contains("missing.pem"),
            "{e}"
        );
        let e = err(ClusterTls {
            cert: Some(pem.clone()),
            key: Some(junk),
            ..ClusterTls::default()
        });
        assert!(
            e.contains("--cluster-key") && e.contains("not a PEM file"),
            "{e}"
        );
        let e = err(ClusterTls {
            cert: Some(pem),
            ..ClusterTls::default()
        });
        assert!(e.contains("go together"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
