//! The mirror's one writer: a thread that applies what the receive thread decided, in the order
//! it decided it — live updates, periodic snapshots, reply chunks, expiries — and offers each
//! resulting event to the subscriptions. Being the only thread that changes the mirror, it needs
//! no lock to keep each thing's events in the order the mirror took its values; readers use the
//! mirror directly (it takes its write lock once a message).
//!
//! The receive thread hands over work in batches (a reply chunk ends one), so it decodes the
//! next message while this thread applies the last. The queue is bounded: a writer that falls
//! behind holds the receive thread back, as applying inline would, and the broker's high-water
//! mark does the rest.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use thingsbus_protocol::Namespace;

use super::lock;
use crate::mirror::{Received, Source};
use crate::shared::Shared;
use crate::subscription::{Event, EventKind};
use crate::Error;

/// Batches waiting for the writer at most.
const QUEUE: usize = 16;
/// Writes in one batch at most.
const BATCH: usize = 256;

/// One change to the mirror.
#[derive(Debug)]
pub(crate) enum Write {
    /// A live update.
    Live { received: Received, generation: u64 },
    /// A periodic snapshot message; `filled` when it ends a snapshot seen whole.
    Periodic {
        received: Received,
        generation: u64,
        filled: bool,
    },
    /// One chunk of a reply to a snapshot request; `last` ends the reply.
    Reply {
        received: Received,
        generation: u64,
        last: bool,
        /// From the first chunk: how many things the reply holds.
        total: Option<usize>,
    },
    /// The broker says the thing left the live window.
    Expired(Namespace),
}

/// The receive thread's end: collects writes and hands them over in batches.
pub(crate) struct Writer {
    tx: SyncSender<Vec<Write>>,
    batch: Vec<Write>,
}

impl Writer {
    /// Starts the writer thread; it ends when this end is dropped.
    pub(crate) fn start(shared: Arc<Shared>) -> Result<Self, Error> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("thingsbus-apply".into())
            .spawn(move || run(&rx, &shared))
            .map_err(Error::Start)?;
        Ok(Writer {
            tx,
            batch: Vec::new(),
        })
    }

    /// Queues a write; a snapshot message (or a full batch) is handed over at once.
    pub(crate) fn push(&mut self, w: Write) {
        let snapshot = matches!(w, Write::Reply { .. } | Write::Periodic { .. });
        self.batch.push(w);
        if snapshot || self.batch.len() >= BATCH {
            self.flush();
        }
    }

    /// Hands over what was queued.
    pub(crate) fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        if self.tx.send(batch).is_err() {
            tracing::error!("the client's writer thread is gone");
        }
    }
}

fn run(batches: &Receiver<Vec<Write>>, shared: &Shared) {
    while let Ok(batch) = batches.recv() {
        for w in batch {
            write(shared, w);
        }
    }
}

fn write(shared: &Shared, w: Write) {
    match w {
        Write::Live {
            received,
            generation,
        } => apply(shared, &received, Source::Live, generation),
        Write::Periodic {
            received,
            generation,
            filled,
        } => {
            apply(shared, &received, Source::Periodic, generation);
            if filled {
                shared.counters.snapshots.fetch_add(1, Ordering::Relaxed);
                mark_filled(shared);
            }
        }
        Write::Reply {
            received,
            generation,
            last,
            total,
        } => {
            if let Some(total) = total {
                // Room for the whole reply at once: the table does not grow by steps.
                shared.mirror.reserve_for(total);
            }
            apply(shared, &received, Source::Reply, generation);
            if last {
                let c = &shared.counters;
                c.snapshot_replies.fetch_add(1, Ordering::Relaxed);
                c.snapshots.fetch_add(1, Ordering::Relaxed);
                mark_filled(shared);
            }
        }
        Write::Expired(ns) => {
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
    }
}

fn apply(shared: &Shared, received: &Received, source: Source, generation: u64) {
    // Without subscribers, no event: the mirror keeps its values and hands out no copies.
    let want = shared.subscribers.load(Ordering::Relaxed) > 0;
    let kind = if source == Source::Live {
        EventKind::Update
    } else {
        EventKind::Snapshot
    };
    // Events go out once the mirror's lock is released.
    for thing in shared.mirror.apply(received, source, generation, want) {
        dispatch(shared, Event { thing, kind });
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
