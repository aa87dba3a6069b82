//! The client's receive thread: owns the SUB and DEALER sockets, keeps the mirror, and decides
//! when to ask for a snapshot and when to move to another broker.
//!
//! The late-joiner protocol is the ZeroMQ Guide's "Clone" pattern, simplified by per-entry
//! sequence numbers: the SUB socket is connected first and live updates are applied as they come;
//! the snapshot reply (consistent with one `seq`) is applied entry by entry, and an entry never
//! replaces a value that is newer. So nothing is lost and nothing is applied twice, without
//! buffering. A gap in the live `seq` (or a broker restart) triggers a new request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thingsbus_protocol::codec::{decode_published, Published, PublishedSnapshot, PublishedUpdate};

use crate::client::Shared;
use crate::mirror::{Prepared, Source};
use crate::subscription::{Event, EventKind};
use crate::thing::now_secs;
use crate::Error;

/// Locks, ignoring poisoning (the data stays valid).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One broker to try.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) directory: String,
    pub(crate) snapshot: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct DriverOptions {
    pub(crate) instant: bool,
    pub(crate) snapshot_timeout: Duration,
    pub(crate) failover_timeout: Duration,
    /// Ask for the things past the live window too.
    pub(crate) stale: bool,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            instant: true,
            snapshot_timeout: Duration::from_secs(2),
            failover_timeout: Duration::from_secs(3),
            stale: false,
        }
    }
}

struct Pending {
    id: u64,
    sent: Instant,
    answered: bool,
}

pub(crate) struct Driver {
    ctx: zmq::Context,
    sub: zmq::Socket,
    monitor: zmq::Socket,
    dealer: Option<zmq::Socket>,
    targets: Vec<Endpoint>,
    current: usize,
    options: DriverOptions,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    connected: bool,
    /// Since when the current broker has been unreachable (or since we started on it).
    unreachable_since: Option<Instant>,
    /// False once the current broker left a request unanswered while connected (a 0.2.x broker).
    instant_available: bool,
    pending: Option<Pending>,
    resync_wanted: bool,
    last_request: Option<Instant>,
    next_id: u64,
    /// Applies snapshot replies on its own thread.
    applier: std::sync::mpsc::Sender<ApplyJob>,
    /// Counts broker runs as this client sees them (restarts, fail-overs).
    generation: u64,
    /// The last live seq seen.
    live_last: u64,
    /// The seq the last snapshot reply was consistent with: live updates up to it are in it.
    covered: u64,
    /// The broker run the last snapshot reply came from.
    epoch: Option<u64>,
    /// The periodic snapshot being received in chunks, and the chunk that must come next for it
    /// to be whole.
    periodic: Option<(SnapshotKey, u64)>,
}

/// Which snapshot a chunk belongs to: the broker run (`epoch`) and the snapshot's number in it.
type SnapshotKey = (Option<u64>, Option<u64>);

fn zmq_err(what: &str) -> impl FnOnce(zmq::Error) -> Error + '_ {
    move |source| Error::Zmq {
        what: what.to_owned(),
        source,
    }
}

impl Driver {
    pub(crate) fn new(
        targets: Vec<Endpoint>,
        options: DriverOptions,
        shared: Arc<Shared>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, Error> {
        let ctx = zmq::Context::new();
        let sub = ctx
            .socket(zmq::SUB)
            .map_err(zmq_err("creating the socket"))?;
        sub.set_subscribe(b"").map_err(zmq_err("subscribing"))?;
        sub.set_ipv6(true).map_err(zmq_err("enabling IPv6"))?;
        sub.set_rcvhwm(100_000)
            .map_err(zmq_err("setting the high-water mark"))?;
        sub.set_reconnect_ivl_max(2_000)
            .map_err(zmq_err("setting the reconnect interval"))?;
        let events = zmq::SocketEvent::CONNECTED.to_raw() | zmq::SocketEvent::DISCONNECTED.to_raw();
        sub.monitor("inproc://thingsbus-client-monitor", i32::from(events))
            .map_err(zmq_err("monitoring the socket"))?;
        let monitor = ctx
            .socket(zmq::PAIR)
            .map_err(zmq_err("creating the monitor"))?;
        monitor
            .connect("inproc://thingsbus-client-monitor")
            .map_err(zmq_err("connecting the monitor"))?;
        let (applier, jobs) = std::sync::mpsc::channel();
        {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("thingsbus-apply".into())
                .spawn(move || run_applier(&jobs, &shared))
                .map_err(Error::Start)?;
        }
        let directory = targets[0].directory.clone();
        sub.connect(&directory)
            .map_err(zmq_err(&format!("connecting to {directory}")))?;
        let mut d = Driver {
            ctx,
            sub,
            monitor,
            dealer: None,
            targets,
            current: 0,
            options,
            shared,
            stop,
            connected: false,
            unreachable_since: Some(Instant::now()),
            instant_available: options.instant,
            pending: None,
            resync_wanted: false,
            last_request: None,
            next_id: 1,
            applier,
            generation: 0,
            live_last: 0,
            covered: 0,
            epoch: None,
            periodic: None,
        };
        d.open_dealer();
        d.request_snapshot();
        Ok(d)
    }

    fn open_dealer(&mut self) {
        self.dealer = None;
        if !self.options.instant {
            return;
        }
        let Some(url) = self.targets[self.current].snapshot.clone() else {
            self.instant_available = false;
            return;
        };
        let dealer = self.ctx.socket(zmq::DEALER).and_then(|d| {
            d.set_ipv6(true)?;
            d.set_linger(0)?;
            d.set_rcvhwm(0)?;
            d.connect(&url)?;
            Ok(d)
        });
        match dealer {
            Ok(d) => {
                self.dealer = Some(d);
                self.instant_available = true;
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, "cannot use the snapshot endpoint");
                self.instant_available = false;
            }
        }
    }

    fn request_snapshot(&mut self) {
        let Some(dealer) = &self.dealer else { return };
        if !self.instant_available {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let request = if self.options.stale {
            format!(r#"{{"type":"snapshot_request","id":{id},"stale":true}}"#)
        } else {
            format!(r#"{{"type":"snapshot_request","id":{id}}}"#)
        };
        if dealer.send(request.as_bytes(), zmq::DONTWAIT).is_ok() {
            self.pending = Some(Pending {
                id,
                sent: Instant::now(),
                answered: false,
            });
            self.last_request = Some(Instant::now());
            self.resync_wanted = false;
        }
    }

    pub(crate) fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let (sub_in, dealer_in, monitor_in) = {
                let mut items = vec![
                    self.sub.as_poll_item(zmq::POLLIN),
                    self.monitor.as_poll_item(zmq::POLLIN),
                ];
                if let Some(d) = &self.dealer {
                    items.push(d.as_poll_item(zmq::POLLIN));
                }
                match zmq::poll(&mut items, 50) {
                    Ok(_) => (
                        items[0].is_readable(),
                        items.get(2).is_some_and(zmq::PollItem::is_readable),
                        items[1].is_readable(),
                    ),
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "client poll failed; stopping");
                        break;
                    }
                }
            };
            if monitor_in {
                self.read_monitor();
            }
            if sub_in {
                while let Ok(bytes) = self.sub.recv_bytes(zmq::DONTWAIT) {
                    self.handle(&bytes);
                }
            }
            if dealer_in {
                while let Some(Ok(bytes)) =
                    self.dealer.as_ref().map(|d| d.recv_bytes(zmq::DONTWAIT))
                {
                    self.handle(&bytes);
                }
            }
            self.timers();
        }
        let _ = self.sub.set_linger(0);
    }

    fn read_monitor(&mut self) {
        while let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            let Some(event) = frames
                .first()
                .and_then(|f| f.get(..2))
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
            else {
                continue;
            };
            if event == zmq::SocketEvent::CONNECTED.to_raw() {
                self.connected = true;
                self.unreachable_since = None;
            } else if event == zmq::SocketEvent::DISCONNECTED.to_raw() {
                self.connected = false;
                self.unreachable_since = Some(Instant::now());
                tracing::info!(broker = %self.targets[self.current].directory, "lost the broker; reconnecting");
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if let Some(p) = &self.pending {
            if !p.answered && now.duration_since(p.sent) > self.options.snapshot_timeout {
                self.pending = None;
                if self.connected {
                    // Reachable but silent: a broker without the snapshot endpoint (0.2.x).
                    tracing::info!(
                        broker = %self.targets[self.current].directory,
                        "no answer from the snapshot endpoint; waiting for the periodic snapshot"
                    );
                    self.instant_available = false;
                }
            }
        }
        if self.targets.len() > 1 {
            if let Some(since) = self.unreachable_since {
                if now.duration_since(since) > self.options.failover_timeout {
                    self.failover();
                    return;
                }
            }
        }
        if self.resync_wanted && self.pending.is_none() && self.instant_available {
            let recent = self
                .last_request
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
            if !recent {
                self.request_snapshot();
            }
        }
    }

    fn failover(&mut self) {
        let from = self.targets[self.current].directory.clone();
        let _ = self.sub.disconnect(&from);
        self.current = (self.current + 1) % self.targets.len();
        let to = self.targets[self.current].directory.clone();
        tracing::warn!(%from, %to, "broker unreachable; moving to the next one in the SRV list");
        self.shared
            .counters
            .failovers
            .fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.sub.connect(&to) {
            tracing::error!(%to, error = %e, "cannot connect");
        }
        *lock(&self.shared.current) = to;
        self.shared.counters.last_seq.store(0, Ordering::Relaxed);
        self.new_run();
        self.connected = false;
        self.unreachable_since = Some(Instant::now());
        self.pending = None;
        self.open_dealer();
        self.request_snapshot();
    }

    /// The broker restarted, or we moved to another: sequence numbers start over.
    fn new_run(&mut self) {
        self.generation += 1;
        self.live_last = 0;
        self.covered = 0;
    }

    /// Decides what a live update's `seq` means; false when the update is already covered by a
    /// snapshot reply (an older update that was still on its way) and must not be applied.
    fn track_live(&mut self, seq: u64) -> bool {
        let c = &self.shared.counters;
        c.last_seq.store(seq, Ordering::Relaxed);
        if self.live_last != 0 && seq <= self.live_last {
            c.seq_resets.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                seq,
                last = self.live_last,
                "sequence numbers started over: the broker restarted"
            );
            self.new_run();
            self.live_last = seq;
            self.resync_wanted = true;
            return true;
        }
        let newest = self.live_last.max(self.covered);
        self.live_last = seq;
        if seq <= self.covered {
            return false;
        }
        if newest != 0 && seq > newest + 1 {
            c.seq_gaps.fetch_add(1, Ordering::Relaxed);
            c.missed_updates
                .fetch_add(seq - newest - 1, Ordering::Relaxed);
            self.resync_wanted = true;
        }
        true
    }

    fn handle(&mut self, bytes: &[u8]) {
        let now = now_secs();
        match decode_published(bytes) {
            Ok(Published::Update(u)) => {
                self.shared.counters.updates.fetch_add(1, Ordering::Relaxed);
                if u.seq.is_some_and(|seq| !self.track_live(seq)) {
                    return;
                }
                let _order = lock(&self.shared.apply_lock);
                apply(&self.shared, &u, Source::Live, self.generation, now);
            }
            Ok(Published::Snapshot(s)) => {
                self.shared
                    .counters
                    .snapshot_messages
                    .fetch_add(1, Ordering::Relaxed);
                let is_reply = s.request.is_some();
                if is_reply && s.epoch.is_some() && self.epoch.is_some() && s.epoch != self.epoch {
                    self.new_run();
                }
                if is_reply && s.epoch.is_some() {
                    self.epoch = s.epoch;
                }
                // A periodic snapshot in chunks holds the whole directory only if this client
                // saw every chunk of it: one joined midway does not fill the mirror.
                let whole = is_reply || self.periodic_seen_whole(&s);
                let shared = &*self.shared;
                let c = &shared.counters;
                if is_reply {
                    // Decoded and allocated here, applied on the applier thread: the next chunk
                    // is decoded while this one goes into the mirror.
                    let job = ApplyJob {
                        entries: s
                            .entries
                            .iter()
                            .map(|e| Prepared::new(e, now, s.stale))
                            .collect(),
                        generation: self.generation,
                        last: s.is_complete(),
                        total: (s.chunk == Some(0))
                            .then_some(s.total)
                            .flatten()
                            .map(|t| usize::try_from(t).unwrap_or(0).min(10_000_000)),
                    };
                    if self.applier.send(job).is_err() {
                        tracing::error!("the client's applier thread is gone");
                    }
                } else {
                    let _order = lock(&shared.apply_lock);
                    for e in &s.entries {
                        apply(shared, e, Source::Periodic, self.generation, now);
                    }
                }
                if is_reply {
                    if let Some(p) = &mut self.pending {
                        if s.request.is_some_and(|r| r.get() == p.id.to_string()) {
                            p.answered = true;
                        }
                    }
                }
                if s.is_complete() {
                    if is_reply {
                        if self.pending.as_ref().is_some_and(|p| p.answered) {
                            self.pending = None;
                        }
                        // Live updates up to the snapshot's seq are in it.
                        if let Some(seq) = s.seq {
                            self.covered = self.covered.max(seq);
                        }
                    } else if whole {
                        c.snapshots.fetch_add(1, Ordering::Relaxed);
                        mark_filled(shared);
                    }
                }
            }
            Ok(Published::Expired { ns, .. }) => {
                let shared = &*self.shared;
                let _order = lock(&shared.apply_lock);
                if let Some(thing) = shared.mirror.mark_stale(ns.as_str()) {
                    dispatch(
                        shared,
                        Event {
                            thing,
                            kind: EventKind::Expired,
                        },
                    );
                }
            }
            Ok(Published::SnapshotError { error, .. }) => {
                tracing::warn!(%error, "the broker refused a snapshot request; waiting for the periodic snapshot");
                self.pending = None;
            }
            Ok(_) => {}
            Err(reason) => {
                self.shared
                    .counters
                    .bad_messages
                    .fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%reason, "dropped a message from the broker");
            }
        }
    }
}

impl Driver {
    /// Follows the chunks of periodic snapshots (0.2.x sends each whole, in one message): true
    /// when `s` ends a snapshot of which this client saw every chunk, in order.
    fn periodic_seen_whole(&mut self, s: &PublishedSnapshot<'_>) -> bool {
        let Some(chunk) = s.chunk else {
            return s.is_complete();
        };
        let key = (s.epoch, s.id);
        let follows =
            chunk == 0 || matches!(self.periodic, Some((k, next)) if k == key && next == chunk);
        let complete = s.is_complete();
        self.periodic = (follows && !complete).then_some((key, chunk + 1));
        follows && complete
    }
}

fn apply(shared: &Shared, u: &PublishedUpdate<'_>, source: Source, generation: u64, now: f64) {
    // Without subscribers, no event: the mirror keeps its value and hands out no copy.
    let want = shared.subscribers.load(Ordering::Relaxed) > 0;
    let Some(thing) = shared.mirror.apply(u, source, generation, now, want) else {
        return;
    };
    let Some(thing) = thing else { return };
    let kind = if source == Source::Live {
        EventKind::Update
    } else {
        EventKind::Snapshot
    };
    dispatch(shared, Event { thing, kind });
}

/// One chunk of a snapshot reply, ready to apply.
struct ApplyJob {
    entries: Vec<Prepared>,
    generation: u64,
    last: bool,
    /// From the first chunk: how many things the reply holds.
    total: Option<usize>,
}

/// Applies snapshot replies chunk by chunk, in the order they came; ends when the driver does.
fn run_applier(jobs: &std::sync::mpsc::Receiver<ApplyJob>, shared: &Shared) {
    while let Ok(job) = jobs.recv() {
        let _order = lock(&shared.apply_lock);
        if let Some(total) = job.total {
            // Room for the whole reply at once: the table does not grow by steps.
            shared.mirror.reserve_for(total);
        }
        let want = shared.subscribers.load(Ordering::Relaxed) > 0;
        let mut fresh = Vec::new();
        for p in job.entries {
            if let Some(Some(thing)) =
                shared
                    .mirror
                    .apply_prepared(p, job.generation, want, &mut fresh)
            {
                dispatch(
                    shared,
                    Event {
                        thing,
                        kind: EventKind::Snapshot,
                    },
                );
            }
        }
        shared.mirror.link_all(fresh);
        if job.last {
            let c = &shared.counters;
            c.snapshot_replies.fetch_add(1, Ordering::Relaxed);
            c.snapshots.fetch_add(1, Ordering::Relaxed);
            mark_filled(shared);
        }
    }
}

/// The mirror holds a whole directory: wake whoever waits for that.
fn mark_filled(shared: &Shared) {
    let mut filled = lock(&shared.filled);
    if !*filled {
        *filled = true;
        shared.filled_cv.notify_all();
        shared.filled_notify.notify_waiters();
    }
}

fn dispatch(shared: &Shared, event: Event) {
    let mut subs = lock(&shared.subs);
    if subs.is_empty() {
        return;
    }
    subs.retain(|s| !s.is_closed());
    shared.subscribers.store(subs.len(), Ordering::Relaxed);
    for s in subs.iter().filter(|s| s.wants(&event)) {
        s.offer(&event);
    }
}
