//! The client's receive thread: owns the SUB and DEALER sockets and carries out what the pure
//! cores decide — [`seq::SeqTracker`] (what a `seq` or a snapshot means for the mirror),
//! [`requests::Requests`] and [`requests::Link`] (when to ask for a snapshot, when to move to
//! another broker). What goes into the mirror is handed to its one writer ([`writer`]).
//!
//! The late-joiner protocol is the ZeroMQ Guide's "Clone" pattern, simplified by per-entry
//! sequence numbers: the SUB socket is connected first and live updates are applied as they come;
//! the snapshot reply (consistent with one `seq`) is applied entry by entry, and an entry never
//! replaces a value that is newer. So nothing is lost and nothing is applied twice, without
//! buffering. A gap in the live `seq` (or a broker restart) triggers a new request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thingsbus_protocol::codec::{decode_published_text, Published, Rejection};
use thingsbus_protocol::transport::{self, Event};

use crate::mirror::Received;
use crate::shared::{lock, Shared};
use crate::thing::now_secs;
use crate::Error;

mod requests;
mod seq;
mod writer;

use requests::{Link, Requests};
use seq::{Header, Live, SeqTracker, Snapshot};
use writer::{Write, Writer};

/// One broker to try.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) directory: String,
    pub(crate) snapshot: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct DriverOptions {
    pub(crate) instant: bool,
    pub(crate) snapshot_timeout: Duration,
    pub(crate) failover_timeout: Duration,
    /// Ask for the things past the live window too.
    pub(crate) stale: bool,
    /// CURVE keys for every socket to the broker.
    pub(crate) curve: Option<transport::ClientKeys>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            instant: true,
            snapshot_timeout: Duration::from_secs(2),
            failover_timeout: Duration::from_secs(3),
            stale: false,
            curve: None,
        }
    }
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
    link: Link,
    requests: Requests,
    seq: SeqTracker,
    /// The mirror's one writer.
    writer: Writer,
}

impl Driver {
    pub(crate) fn new(
        targets: Vec<Endpoint>,
        options: DriverOptions,
        shared: Arc<Shared>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, Error> {
        let ctx = zmq::Context::new();
        let sub = transport::connecting_socket(&ctx, zmq::SUB, Some(100_000))?;
        if let Some(keys) = &options.curve {
            transport::curve_client(&sub, keys)?;
        }
        sub.set_subscribe(b"")
            .map_err(transport::doing("subscribing"))?;
        let monitor = transport::monitor(
            &ctx,
            &sub,
            "client",
            &[Event::Connected, Event::Disconnected],
        )?;
        let writer = Writer::start(shared.clone())?;
        transport::connect(&sub, "directory output", &targets[0].directory)?;
        let mut d = Driver {
            ctx,
            sub,
            monitor,
            dealer: None,
            targets,
            current: 0,
            requests: Requests::new(options.instant, options.snapshot_timeout),
            options,
            shared,
            stop,
            link: Link::new(Instant::now()),
            seq: SeqTracker::default(),
            writer,
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
            self.requests.set_available(false);
            return;
        };
        let dealer = self.ctx.socket(zmq::DEALER).and_then(|d| {
            d.set_ipv6(true)?;
            d.set_linger(0)?;
            d.set_rcvhwm(0)?;
            if let Some(keys) = &self.options.curve {
                transport::curve_client(&d, keys).map_err(|f| f.source)?;
            }
            d.connect(&url)?;
            Ok(d)
        });
        match dealer {
            Ok(d) => {
                self.dealer = Some(d);
                self.requests.set_available(true);
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, "cannot use the snapshot endpoint");
                self.requests.set_available(false);
            }
        }
    }

    fn request_snapshot(&mut self) {
        let Some(dealer) = &self.dealer else { return };
        let Some(id) = self.requests.next() else {
            return;
        };
        let request = if self.options.stale {
            format!(r#"{{"type":"snapshot_request","id":{id},"stale":true}}"#)
        } else {
            format!(r#"{{"type":"snapshot_request","id":{id}}}"#)
        };
        if dealer.send(request.as_bytes(), zmq::DONTWAIT).is_ok() {
            self.requests.sent(id, Instant::now());
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
            self.writer.flush();
            self.timers();
        }
        let _ = self.sub.set_linger(0);
    }

    fn read_monitor(&mut self) {
        for event in transport::events(&self.monitor) {
            match event {
                Event::Connected => self.link.up(),
                Event::Disconnected => {
                    self.link.down(Instant::now());
                    tracing::info!(broker = %self.targets[self.current].directory, "lost the broker; reconnecting");
                }
                Event::Accepted => {}
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if self.requests.expire(now, self.link.connected()) {
            // Reachable but silent: a broker without the snapshot endpoint (0.2.x).
            tracing::info!(
                broker = %self.targets[self.current].directory,
                "no answer from the snapshot endpoint; waiting for the periodic snapshot"
            );
        }
        if self
            .link
            .failover_due(now, self.options.failover_timeout, self.targets.len())
        {
            self.failover();
            return;
        }
        if self.requests.resync_due(now) {
            self.request_snapshot();
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
        self.seq.new_run();
        self.link.down(Instant::now());
        self.requests.drop_pending();
        self.open_dealer();
        self.request_snapshot();
    }

    /// Counts what a live `seq` meant; false when the update must not be applied.
    fn track_live(&mut self, seq: u64) -> bool {
        let c = &self.shared.counters;
        c.last_seq.store(seq, Ordering::Relaxed);
        let verdict = self.seq.live(seq);
        match verdict {
            Live::Apply | Live::Skip => {}
            Live::Gap { missed } => {
                c.seq_gaps.fetch_add(1, Ordering::Relaxed);
                c.missed_updates.fetch_add(missed, Ordering::Relaxed);
            }
            Live::Restart { last } => {
                c.seq_resets.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    seq,
                    last,
                    "sequence numbers started over: the broker restarted"
                );
            }
        }
        if verdict.wants_snapshot() {
            self.requests.want_resync();
        }
        verdict.applies()
    }

    fn handle(&mut self, bytes: &[u8]) {
        let now = now_secs();
        let Ok(text) = std::str::from_utf8(bytes) else {
            self.bad_message(Rejection::InvalidUtf8);
            return;
        };
        match decode_published_text(text) {
            Ok(Published::Update(u)) => {
                self.shared.counters.updates.fetch_add(1, Ordering::Relaxed);
                if u.seq.is_some_and(|seq| !self.track_live(seq)) {
                    return;
                }
                let Some(received) = Received::new(text, [&u], now, false) else {
                    return;
                };
                self.writer.push(Write::Live {
                    received,
                    generation: self.seq.generation(),
                });
            }
            Ok(Published::Snapshot(s)) => {
                self.shared
                    .counters
                    .snapshot_messages
                    .fetch_add(1, Ordering::Relaxed);
                let header = Header::of(&s);
                let verdict = self.seq.snapshot(&header);
                let stale = matches!(verdict, Snapshot::Reply { .. }) && s.stale;
                let Some(received) = Received::new(text, &s.entries, now, stale) else {
                    self.bad_message(Rejection::TooLarge);
                    return;
                };
                match verdict {
                    Snapshot::Reply { generation, last } => {
                        if let Some(r) = s.request {
                            self.requests.chunk_for(r.get());
                        }
                        if last {
                            self.requests.reply_complete();
                        }
                        self.writer.push(Write::Reply {
                            received,
                            generation,
                            last,
                            total: (s.chunk == Some(0))
                                .then_some(s.total)
                                .flatten()
                                .map(|t| usize::try_from(t).unwrap_or(0).min(10_000_000)),
                        });
                    }
                    Snapshot::Periodic { generation, filled } => {
                        self.writer.push(Write::Periodic {
                            received,
                            generation,
                            filled,
                        });
                    }
                }
            }
            Ok(Published::Expired { ns, .. }) => {
                self.writer.push(Write::Expired(ns.to_namespace()));
            }
            Ok(Published::SnapshotError { error, .. }) => {
                tracing::warn!(%error, "the broker refused a snapshot request; waiting for the periodic snapshot");
                self.requests.drop_pending();
            }
            Ok(_) => {}
            Err(reason) => self.bad_message(reason),
        }
    }

    fn bad_message(&self, reason: Rejection) {
        self.shared
            .counters
            .bad_messages
            .fetch_add(1, Ordering::Relaxed);
        tracing::trace!(%reason, "dropped a message from the broker");
    }
}
