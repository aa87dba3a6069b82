//! The ingest thread: owns the input sockets and the directory.
//!
//! One wake-up drains everything both inputs offer (up to a budget, for fairness), applies each
//! accepted update to the directory and hands the encoded updates to the publisher in one batch.

use std::borrow::Cow;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thingsbus_protocol::codec::{decode_json_input, decode_msgpack_input, encode_expired};
use thingsbus_protocol::namespace::is_within_str;
use thingsbus_protocol::snapshot::SnapshotHeader;
use thingsbus_protocol::transport::{self, Event};
use thingsbus_protocol::{Directory, Limits, NamespaceRef, Rejection, Timestamp, UpdateRef};

use crate::auth::{AuthCell, AuthView, Who};
use crate::board_auth::BoardAuth;
use crate::reason::Reason;

use crate::access::{AllowList, RateLimiter};
use crate::cluster::ClusterLink;
use crate::commands::Datagram;
use crate::config::Config;
use crate::journal::Journal;
use crate::log_limit::LogLimiter;
use crate::mailbox::{Mailbox, Post};
use crate::publish::{Job, Output};
use crate::snapshot_server::{View, ViewWanted};
use crate::stats::{self, Stats, StatusExtra, BROKER_DOC, BROKER_NS};
use crate::udp_input::{self, Got, UdpReceiver};

/// Messages taken from one input per round before the other gets its turn.
const BUDGET: usize = 1024;
/// Time one input may take per round before the other gets its turn: a flood of expensive
/// datagrams (or a slow debug build on a loaded machine) cannot starve the other input.
const TURN: Duration = Duration::from_millis(2);
/// Messages between two looks at the clock within a turn.
const CLOCK_EVERY: usize = 8;

/// One input's turn: over after [`BUDGET`] messages or [`TURN`], whichever comes first.
struct Turn(Instant);

impl Turn {
    fn start() -> Turn {
        Turn(Instant::now())
    }

    /// Whether the turn is over after `taken` messages.
    fn over(&self, taken: usize) -> bool {
        taken >= BUDGET || (taken % CLOCK_EVERY == 0 && taken > 0 && self.0.elapsed() >= TURN)
    }

    /// Whether the turn is over after `taken` messages, asked between batches of them.
    fn over_after_batch(&self, taken: usize) -> bool {
        taken >= BUDGET || (taken > 0 && self.0.elapsed() >= TURN)
    }
}
/// Batches up to this size are sent by ingest itself when the publish thread is idle.
const DIRECT_MAX: usize = 32;
/// Longest sleep in poll: bounds how long a stop request waits.
const MAX_POLL_MS: i64 = 50;
/// How long one pass over the directory, looking for things that left the live window, takes
/// at most.
const EXPIRY_EVERY: Duration = Duration::from_secs(1);
/// Things looked at in one step of that pass: a pass over a big directory is cut into steps of
/// this many, spread over [`EXPIRY_EVERY`], so live updates wait for one step at most (about
/// 0.1 ms), never for a whole pass.
const SWEEP_STEP: usize = 4096;
/// Things a periodic snapshot copies in one turn of the loop: a snapshot of a million things is
/// taken in 62 slices with input read between them, never in one stall that grows with the
/// directory (one copy of a million entries held live updates back for ~40 ms).
const SNAPSHOT_SLICE: usize = 16_384;

/// A periodic snapshot on its way: its header, and where the next slice starts.
struct SnapshotPass {
    header: SnapshotHeader,
    ts: Timestamp,
    at: usize,
}

enum Source<'a> {
    Zmq(Option<&'a str>),
    Udp(SocketAddr),
}

impl std::fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Zmq(Some(peer)) => write!(f, "zmq {peer}"),
            Source::Zmq(None) => f.write_str("zmq"),
            Source::Udp(addr) => write!(f, "udp {addr}"),
        }
    }
}

pub(crate) struct Ingest {
    sub: zmq::Socket,
    udp: UdpSocket,
    input_monitor: zmq::Socket,
    output_monitor: zmq::Socket,
    tx: SyncSender<Job>,
    output: Arc<Output>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    dir: Directory,
    limits: Limits,
    max_message_bytes: usize,
    snapshot_interval: Duration,
    live_window: f64,
    forget_after: f64,
    /// Seconds a `ts` may be ahead of this broker's clock (`--max-clock-skew`).
    max_clock_skew: f64,
    batch: Vec<Arc<[u8]>>,
    bad_input_log: LogLimiter,
    snapshot_id: u64,
    /// The periodic snapshot being taken, a slice per turn of the loop.
    pass: Option<SnapshotPass>,
    want_view: Mailbox<ViewWanted>,
    views: Post<View>,
    stats_interval: Duration,
    epoch: u64,
    started: Instant,
    journal: Option<Journal>,
    allow: AllowList,
    rate: Option<RateLimiter>,
    datagrams: Post<Datagram>,
    remote: Mailbox<Vec<u8>>,
    cluster: Option<ClusterLink>,
    /// With `--auth-file`: the rights in force, and the key name of the ZMQ message at hand.
    auth: Option<AuthView>,
    key: String,
    /// With `--auth-file`: the replay state of boards that sign their datagrams.
    /// Shared with the command thread, which signs the commands it sends to boards.
    board_auth: Arc<Mutex<BoardAuth>>,
}

/// With an auth file, whether `who` may publish `ns` (without one, everyone may).
fn permitted(auth: &mut Option<AuthView>, who: Who<'_>, ns: &str) -> bool {
    auth.as_mut().is_none_or(|a| a.get().may_publish(who, ns))
}

/// The sockets ingest owns.
pub(crate) struct IngestSockets {
    pub(crate) sub: zmq::Socket,
    pub(crate) udp: UdpSocket,
    pub(crate) input_monitor: zmq::Socket,
    pub(crate) output_monitor: zmq::Socket,
}

/// Where ingest's results go.
pub(crate) struct IngestLinks {
    pub(crate) tx: SyncSender<Job>,
    pub(crate) output: Arc<Output>,
    /// The snapshot endpoint asks for views here...
    pub(crate) want_view: Mailbox<ViewWanted>,
    /// ...and gets them here.
    pub(crate) views: Post<View>,
    /// Command datagrams, to the command endpoint.
    pub(crate) datagrams: Post<Datagram>,
    /// Other brokers' updates, from the cluster link.
    pub(crate) remote: Mailbox<Vec<u8>>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stop: Arc<AtomicBool>,
}

/// Hands a `serve`, `command` or `command_reply` datagram to the command endpoint; false when
/// the datagram is none of those.
fn command_datagram(
    (bytes, from, who): (&[u8], SocketAddr, Who<'_>),
    datagrams: &Post<Datagram>,
    stats: &Stats,
) -> bool {
    let Ok(message) = rmp_serde::from_slice::<serde_json::Value>(bytes) else {
        return false;
    };
    if !thingsbus_protocol::command::is_command_type(&message) {
        return false;
    }
    let board = match who {
        Who::Board(name) => Some(name.to_owned()),
        Who::Anonymous | Who::Key(_) => None,
    };
    if datagrams
        .try_send(Datagram {
            from,
            message,
            board,
        })
        .is_err()
    {
        stats::add(&stats.commands.busy, 1);
    }
    true
}

impl Ingest {
    pub(crate) fn new(
        config: &Config,
        sockets: IngestSockets,
        links: IngestLinks,
        dir: Directory,
        journal: Option<Journal>,
        cluster: Option<ClusterLink>,
    ) -> Self {
        Ingest {
            sub: sockets.sub,
            udp: sockets.udp,
            input_monitor: sockets.input_monitor,
            output_monitor: sockets.output_monitor,
            want_view: links.want_view,
            tx: links.tx,
            output: links.output,
            views: links.views,
            stats: links.stats,
            stop: links.stop,
            dir,
            limits: Limits {
                max_depth: config.max_depth,
            },
            max_message_bytes: config.max_message_bytes,
            snapshot_interval: config.snapshot_interval,
            stats_interval: config.stats_interval,
            live_window: config.live_window.as_secs_f64(),
            forget_after: config.forget_after.as_secs_f64(),
            max_clock_skew: config.max_clock_skew.as_secs_f64(),
            batch: Vec::with_capacity(BUDGET),
            bad_input_log: LogLimiter::new(Duration::from_secs(10), 20),
            snapshot_id: 0,
            pass: None,
            epoch: (Timestamp::now().as_secs() * 1e6) as u64,
            started: Instant::now(),
            journal,
            allow: AllowList::new(config.allow_input.clone()),
            rate: config.rate_limit.map(RateLimiter::new),
            datagrams: links.datagrams,
            remote: links.remote,
            cluster,
            auth: None,
            key: String::new(),
            board_auth: Arc::new(Mutex::new(BoardAuth::new(4096))),
        }
    }

    /// Checks every update against the rights of an auth file.
    pub(crate) fn with_auth(
        mut self,
        auth: Option<Arc<AuthCell>>,
        board_auth: Arc<Mutex<BoardAuth>>,
    ) -> Self {
        self.auth = auth.map(AuthView::new);
        self.board_auth = board_auth;
        self
    }

    pub(crate) fn run(mut self) {
        let mut next_snapshot = Instant::now();
        let mut next_expiry = Instant::now() + EXPIRY_EVERY;
        let mut next_stats = Instant::now();
        let udp_fd = self.udp.as_raw_fd();
        let heart = self.stats.health.beat("thingsbus-ingest");
        // Made here, on the ingest thread, because its receive headers may not change threads.
        let mut udp_in = UdpReceiver::new(self.max_message_bytes);
        loop {
            heart.beat();
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            // Not while a snapshot is being taken: forgetting moves things, and the snapshot
            // walks them by position.
            if now >= next_expiry && self.pass.is_none() {
                next_expiry = now + self.expire();
            }
            if !self.stats_interval.is_zero() && now >= next_stats {
                self.publish_stats();
                next_stats = now + self.stats_interval;
            }
            if now >= next_snapshot && self.pass.is_none() {
                if self.flush().is_err() {
                    break;
                }
                self.start_snapshot();
                next_snapshot = now + self.snapshot_interval;
            }
            if self.pass.is_some() && (self.flush().is_err() || self.snapshot_slice().is_err()) {
                break;
            }
            if self.flush().is_err() {
                break;
            }
            if let Some(j) = self.journal.as_mut().filter(|j| j.wants_compaction()) {
                j.compact(&self.dir, BROKER_NS);
            }
            let mut wait = next_snapshot
                .min(next_expiry)
                .saturating_duration_since(Instant::now());
            if let Some(due) = self.hand_over_due() {
                wait = wait.min(due);
            }
            let timeout = if self.pass.is_some() {
                0 // the next slice is due: read what came in, then go on
            } else {
                i64::try_from(wait.as_millis())
                    .unwrap_or(MAX_POLL_MS)
                    .clamp(0, MAX_POLL_MS)
            };
            let (monitors, view_wanted, from_cluster) = {
                let mut items = [
                    self.sub.as_poll_item(zmq::POLLIN),
                    zmq::PollItem::from_fd(udp_fd, zmq::POLLIN),
                    self.input_monitor.as_poll_item(zmq::POLLIN),
                    self.output_monitor.as_poll_item(zmq::POLLIN),
                    self.want_view.poll_item(),
                    self.remote.poll_item(),
                ];
                match zmq::poll(&mut items, timeout) {
                    Ok(_) => (
                        items[2].is_readable() || items[3].is_readable(),
                        items[4].is_readable(),
                        items[5].is_readable(),
                    ),
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed; stopping");
                        break;
                    }
                }
            };
            // Drain both inputs in turns until neither has anything waiting.
            loop {
                let now = Timestamp::now();
                let zmq_more = self.drain_zmq(now);
                let udp_more = self.drain_udp(&mut udp_in, now);
                if self.flush().is_err() {
                    return;
                }
                if !zmq_more && !udp_more {
                    break;
                }
            }
            if view_wanted {
                self.send_view();
            }
            if from_cluster {
                self.apply_remote();
                if self.flush().is_err() {
                    break;
                }
            }
            if monitors {
                self.read_monitors();
            }
        }
        tracing::debug!("ingest thread stopped");
    }

    /// A consistent copy of the live directory for the snapshot endpoint.
    fn send_view(&mut self) {
        // Every request waiting is answered by this one view: take them all (`any` would stop
        // at the first that wants stale things and leave the rest for a second view).
        let wanted: Vec<ViewWanted> = self.want_view.drain().collect();
        let with_stale = wanted.iter().any(|w| w.with_stale);
        let now = Timestamp::now();
        let view = View {
            header: SnapshotHeader {
                ts: now,
                seq: self.dir.seq(),
                id: 0,
                epoch: self.epoch,
            },
            entries: self.dir.live_entries(now, self.live_window),
            stale: with_stale.then(|| self.dir.stale_entries(now, self.live_window)),
        };
        let _ = self.views.try_send(view);
    }

    /// One step of the pass over the directory: publishes `thing_expired` for things that left
    /// the live window and forgets those not heard of within `forget_after`. Returns when the
    /// next step is due: a pass takes [`EXPIRY_EVERY`] whatever the size.
    fn expire(&mut self) -> Duration {
        let now = Timestamp::now();
        let steps = u32::try_from(self.dir.len() / SWEEP_STEP + 1).unwrap_or(u32::MAX);
        let swept = self
            .dir
            .sweep(now, self.live_window, self.forget_after, SWEEP_STEP);
        if swept.forgotten > 0 {
            stats::add(&self.stats.forgotten, swept.forgotten as u64);
            stats::set(&self.stats.things, self.dir.len() as u64);
            tracing::debug!(
                forgotten = swept.forgotten,
                "forgot things not heard of within forget_after"
            );
        }
        let next = EXPIRY_EVERY / steps;
        let expired = swept.expired;
        if expired.is_empty() {
            return next;
        }
        stats::add(&self.stats.expired, expired.len() as u64);
        for (ns, ts, seq) in expired {
            let mut out = Vec::with_capacity(64 + ns.as_str().len());
            encode_expired(&mut out, ns.as_str(), ts, seq);
            self.batch.push(Arc::from(out));
        }
        next
    }

    /// Publishes the broker's own counters as the thing `thingsbus.broker`.
    fn publish_stats(&mut self) {
        stats::set(&self.stats.things, self.dir.len() as u64);
        let data = self.stats.status(&StatusExtra {
            uptime_s: self.started.elapsed().as_secs(),
            cluster: self.cluster.is_some(),
            journal: self.journal.is_some(),
        });
        let update = UpdateRef {
            ns: NamespaceRef::new(Cow::Borrowed(BROKER_NS)).expect("the broker namespace is valid"),
            ts: None,
            data: Cow::Owned(data.to_string()),
            documentation_url: Some(Cow::Borrowed(BROKER_DOC)),
        };
        let entry = self.dir.apply(&update, Timestamp::now());
        self.batch.push(entry.encoded);
    }

    /// Takes one turn of ZMQ input; true when it ended with messages still waiting.
    fn drain_zmq(&mut self, now: Timestamp) -> bool {
        let mut n = 0;
        let mut msg = zmq::Message::new();
        let turn = Turn::start();
        loop {
            if turn.over(n) {
                return true;
            }
            match self.sub.recv(&mut msg, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => return false,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "receiving on the ZMQ input failed");
                    return false;
                }
            }
            n += 1;
            stats::add(&self.stats.bytes_in, msg.len() as u64);
            if msg.get_more() {
                // Take the rest of the message off the socket, then drop it whole.
                let mut part = zmq::Message::new();
                while self.sub.recv(&mut part, zmq::DONTWAIT).is_ok() {
                    stats::add(&self.stats.bytes_in, part.len() as u64);
                    if !part.get_more() {
                        break;
                    }
                }
                self.reject_zmq(Rejection::Multipart, &mut msg);
                continue;
            }
            if msg.len() > self.max_message_bytes {
                self.reject_zmq(Rejection::TooLarge, &mut msg);
                continue;
            }
            if let Some(rate) = self.rate.as_mut() {
                let peer = msg.gets("Peer-Address").and_then(|a| a.parse().ok());
                if peer.is_some_and(|ip| !rate.allow(ip, Instant::now())) {
                    self.reject_zmq(Reason::RateLimited, &mut msg);
                    continue;
                }
            }
            if self.auth.is_some() {
                // The ZAP handler named the key of the connection (empty: none).
                self.key.clear();
                self.key.push_str(msg.gets("User-Id").unwrap_or_default());
            }
            let taken = match decode_json_input(&msg, &self.limits) {
                Ok(update) => {
                    let who = if self.key.is_empty() {
                        Who::Anonymous
                    } else {
                        Who::Key(&self.key)
                    };
                    if permitted(&mut self.auth, who, update.ns.as_str()) {
                        self.accept(&update, now)
                    } else {
                        self.stats
                            .refuse_by(who.label(), Reason::NotPermitted.as_str());
                        Err(Reason::NotPermitted)
                    }
                }
                Err(reason) => Err(reason.into()),
            };
            if let Err(reason) = taken {
                self.reject_zmq(reason, &mut msg);
            }
        }
    }

    /// Takes one decoded update from either input into the directory and the next batch, or
    /// says why not.
    fn accept(&mut self, update: &UpdateRef<'_>, now: Timestamp) -> Result<(), Reason> {
        if is_within_str(update.ns.as_str(), BROKER_NS) {
            return Err(Rejection::ReservedNs.into());
        }
        if update
            .ts
            .is_some_and(|ts| ts.as_secs() > now.as_secs() + self.max_clock_skew)
        {
            return Err(Reason::FutureTs);
        }
        // With `--cluster`, newest `ts` wins for local input as for other brokers' updates, so
        // that every broker ends on the same value; without it, the last update received wins,
        // as in 0.2.x. Either way within --max-things and --max-bytes.
        let applied = if self.cluster.is_some() {
            self.dir.apply_newest(update, now, true)
        } else {
            self.dir.try_apply(update, now, false)
        };
        let entry = match applied {
            Ok(entry) => entry,
            Err(refused) => {
                return match Reason::of_refusal(refused) {
                    Some(reason) => Err(reason),
                    None => {
                        stats::add(&self.stats.cluster.older, 1);
                        Ok(())
                    }
                }
            }
        };
        self.batch.push(entry.encoded);
        stats::add(&self.stats.accepted, 1);
        Ok(())
    }

    /// Takes one turn of UDP input, a batch of datagrams per system call; true when it ended
    /// with datagrams still waiting.
    fn drain_udp(&mut self, udp_in: &mut UdpReceiver, now: Timestamp) -> bool {
        let mut n = 0;
        let turn = Turn::start();
        loop {
            if turn.over_after_batch(n) {
                return true;
            }
            let received = match udp_in.recv(&self.udp, (BUDGET - n).min(udp_input::BATCH)) {
                Ok(received) => received,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors and the like surface here; they concern one peer only.
                    tracing::debug!(error = %e, "UDP receive error");
                    return false;
                }
            };
            n += received;
            for i in 0..received {
                let (bytes, got) = udp_in.datagram(i);
                self.take_datagram(bytes, got, now);
            }
        }
    }

    /// Checks one datagram and takes it in, or counts and logs why not. `bytes` is what was kept
    /// of it: all of it unless `got.truncated`.
    fn take_datagram(&mut self, bytes: &[u8], got: Got, now: Timestamp) {
        let len = got.len;
        stats::add(&self.stats.bytes_in, len as u64);
        let Some(from) = got.from else {
            // UDP always names the sender; nothing to check a datagram without one against.
            tracing::debug!(bytes = len, "UDP datagram without a sender address dropped");
            return;
        };
        if !self.allow.allows(from.ip()) {
            self.reject(Reason::NotAllowed, Source::Udp(from), len, &[]);
            return;
        }
        if let Some(rate) = self.rate.as_mut() {
            if !rate.allow(from.ip(), Instant::now()) {
                self.reject(Reason::RateLimited, Source::Udp(from), len, &[]);
                return;
            }
        }
        if got.truncated || len > self.max_message_bytes {
            self.reject(Rejection::TooLarge, Source::Udp(from), len, &[]);
            return;
        }
        let mut datagram = bytes;
        let mut who = Who::Anonymous;
        // With an auth file, a signed datagram is checked and unwrapped; without one it is
        // not MessagePack, and dropped as 0.2.x brokers drop it.
        let mut refused = None;
        if let Some(view) = self
            .auth
            .as_mut()
            .filter(|_| BoardAuth::is_signed(datagram))
        {
            let auth = view.get();
            let lookup = |name: &str| auth.board(name).map(|b| b.secret.clone());
            let verified = self
                .board_auth
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .verify(datagram, from, lookup);
            match verified {
                Ok(signed) => {
                    datagram = signed.payload;
                    who = Who::Board(signed.board);
                }
                Err(refusal) => {
                    // Counted by board when the file knows the name (a name made up by a
                    // sender must not grow the counts).
                    let name = thingsbus_protocol::signed::parse(datagram)
                        .ok()
                        .map(|s| s.name)
                        .filter(|n| auth.board(n).is_some())
                        .unwrap_or("(unknown board)");
                    refused = Some((name.to_owned(), refusal.as_str()));
                }
            }
        }
        if let Some((name, why)) = refused {
            self.stats.refuse_by(&name, why);
            let head = &bytes[..bytes.len().min(48)];
            self.reject(Reason::BadSignature, Source::Udp(from), len, head);
            return;
        }
        let taken = match decode_msgpack_input(datagram, &self.limits) {
            Ok(update) if !permitted(&mut self.auth, who, update.ns.as_str()) => {
                self.stats
                    .refuse_by(who.label(), Reason::NotPermitted.as_str());
                Err(Reason::NotPermitted)
            }
            Ok(update) => self.accept(&update, now),
            // A map of another type: maybe a board serving commands, or answering one
            // (only those are decoded a second time, as commands).
            Err(Rejection::UnknownType)
                if command_datagram((datagram, from, who), &self.datagrams, &self.stats) =>
            {
                Ok(())
            }
            Err(reason) => Err(reason.into()),
        };
        if let Err(reason) = taken {
            let head = &datagram[..datagram.len().min(48)];
            self.reject(reason, Source::Udp(from), len, head);
        }
    }

    /// With `--cluster`, hands local changes to the cluster link when it may write.
    fn hand_over(&mut self) {
        if let Some(c) = &self.cluster {
            c.hand_over(&mut self.dir, &self.stats);
        }
    }

    /// How long until [`Ingest::hand_over`] has something to do, if it will.
    fn hand_over_due(&self) -> Option<Duration> {
        self.cluster.as_ref()?.hand_over_due(&self.dir)
    }

    /// Applies what other brokers wrote to the cluster's bucket, unless our value of the thing
    /// is newer.
    fn apply_remote(&mut self) {
        let Some(c) = &self.cluster else { return };
        let now = Timestamp::now();
        for bytes in self.remote.drain() {
            if let Some(entry) = c.apply_remote(&mut self.dir, &bytes, now, &self.stats) {
                self.batch.push(entry.encoded);
            }
        }
    }

    fn reject_zmq(&mut self, reason: impl Into<Reason>, msg: &mut zmq::Message) {
        let reason = reason.into();
        self.stats.reject(reason);
        // A flood of refusals costs a count each: the message is only read for the log line.
        if self.log_allowed() {
            let len = msg.len();
            let head = msg[..len.min(48)].to_vec();
            let peer = msg.gets("Peer-Address").map(str::to_owned);
            Self::log_reject(reason, Source::Zmq(peer.as_deref()), len, &head);
        }
    }

    fn reject(&mut self, reason: impl Into<Reason>, source: Source<'_>, len: usize, head: &[u8]) {
        let reason = reason.into();
        self.stats.reject(reason);
        if self.log_allowed() {
            Self::log_reject(reason, source, len, head);
        }
    }

    /// Whether a refusal may be logged now (at a bounded rate).
    fn log_allowed(&mut self) -> bool {
        self.bad_input_log.allow(Instant::now(), |suppressed| {
            tracing::warn!(suppressed, "more bad input was dropped without a log line");
        })
    }

    fn log_reject(reason: Reason, source: Source<'_>, len: usize, head: &[u8]) {
        tracing::warn!(
            reason = reason.as_str(),
            from = %source,
            bytes = len,
            head = %head.escape_ascii(),
            "dropped bad input: {reason}"
        );
    }

    fn flush(&mut self) -> Result<(), ()> {
        self.hand_over();
        if self.batch.is_empty() {
            return Ok(());
        }
        if let Some(j) = self.journal.as_mut() {
            j.append(&self.batch, self.dir.seq());
        }
        stats::set(&self.stats.things, self.dir.len() as u64);
        stats::set(&self.stats.bytes_held, self.dir.bytes() as u64);
        if self.batch.len() <= DIRECT_MAX && self.output.idle() {
            self.output.send_all(&self.batch);
            self.batch.clear();
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BUDGET));
        self.output.begin();
        self.tx.send(Job::Updates(batch)).map_err(|_| ())
    }

    /// Starts a periodic snapshot: its header now (consistent with every update applied so
    /// far), its entries a slice at a time (see [`Ingest::snapshot_slice`]).
    fn start_snapshot(&mut self) {
        let now = Timestamp::now();
        self.snapshot_id += 1;
        self.pass = Some(SnapshotPass {
            header: SnapshotHeader {
                ts: now,
                seq: self.dir.seq(),
                id: self.snapshot_id,
                epoch: self.epoch,
            },
            ts: now,
            at: 0,
        });
        // Counted once for the whole snapshot: until its last slice is sent, every live update
        // goes through the publish thread, after the slices taken before it.
        self.output.begin();
    }

    /// Hands the next slice of the snapshot being taken to the publish thread. A thing changed
    /// after the header and before its slice is copied goes out with its newer value, which
    /// went out live first (never an older value after a newer one).
    fn snapshot_slice(&mut self) -> Result<(), ()> {
        let Some(pass) = self.pass.as_mut() else {
            return Ok(());
        };
        let (entries, next) =
            self.dir
                .live_entries_from(pass.at, SNAPSHOT_SLICE, pass.ts, self.live_window);
        let header = pass.header;
        match next {
            Some(at) => pass.at = at,
            None => self.pass = None,
        }
        self.tx
            .send(Job::Snapshot {
                header,
                entries,
                last: next.is_none(),
            })
            .map_err(|_| ())
    }

    fn read_monitors(&mut self) {
        for (socket, open, closed) in [
            (
                &self.input_monitor,
                &self.stats.input_connections,
                Some(&self.stats.input_disconnects),
            ),
            (&self.output_monitor, &self.stats.subscribers, None),
        ] {
            for event in transport::events(socket) {
                match event {
                    Event::Accepted => stats::add(open, 1),
                    Event::Disconnected => {
                        stats::dec(open);
                        if let Some(c) = closed {
                            stats::add(c, 1);
                        }
                    }
                    Event::Connected => {}
                }
            }
        }
    }
}
