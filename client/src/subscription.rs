//! Subscriptions: a stream of events per subscriber, each with its own bounded queue.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use thingsbus_protocol::Namespace;
use tokio::sync::mpsc;

use crate::Thing;

/// What to receive; 0.2.x's `F_TREE` and `F_SNAPSHOT` flags.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Also the events of every thing below the namespace.
    pub tree: bool,
    /// Also values replayed from snapshots (without it, only live updates).
    pub snapshots: bool,
    /// Events that may wait for this subscriber before it lags (default 1,024).
    pub capacity: usize,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            tree: false,
            snapshots: false,
            capacity: 1024,
        }
    }
}

impl SubscribeOptions {
    /// Only live updates of the thing itself.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also descendants' events.
    #[must_use]
    pub fn tree(mut self, yes: bool) -> Self {
        self.tree = yes;
        self
    }

    /// Also snapshot-replayed values.
    #[must_use]
    pub fn snapshots(mut self, yes: bool) -> Self {
        self.snapshots = yes;
        self
    }

    /// Queue length before lagging.
    #[must_use]
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A live `thing_update`.
    Update,
    /// A value replayed from a snapshot.
    Snapshot,
    /// The thing left the broker's live window (`thing_expired`): [`Thing::stale`] is now true.
    Expired,
}

/// One event of a subscription: a thing's new value and where it came from.
#[derive(Debug, Clone)]
pub struct Event {
    /// The thing as it is now.
    pub thing: Thing,
    /// Live update or snapshot replay.
    pub kind: EventKind,
}

impl Event {
    /// The thing's namespace.
    pub fn ns(&self) -> &Namespace {
        &self.thing.ns
    }

    /// True for snapshot-replayed values.
    pub fn from_snapshot(&self) -> bool {
        self.kind == EventKind::Snapshot
    }
}

/// The subscriber was too slow: `missed` events were dropped for it (and only for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("subscriber lagged: {missed} events dropped")]
pub struct Lagged {
    /// How many events this subscriber lost.
    pub missed: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Slot {
    ns: Namespace,
    tree: bool,
    snapshots: bool,
    tx: mpsc::Sender<Event>,
    lagged: Arc<AtomicU64>,
}

impl Slot {
    pub(crate) fn wants(&self, event: &Event) -> bool {
        if event.from_snapshot() && !self.snapshots {
            return false;
        }
        let ns = &event.thing.ns;
        *ns == self.ns || (self.tree && ns.is_within(&self.ns))
    }

    /// Hands `event` over without waiting; a full queue counts a lag instead.
    pub(crate) fn offer(&self, event: &Event) {
        if self.tx.try_send(event.clone()).is_err() {
            self.lagged.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A stream of [`Event`]s for one namespace; `Err(Lagged)` tells a slow consumer what it lost.
/// Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Event>,
    lagged: Arc<AtomicU64>,
}

pub(crate) fn pair(ns: Namespace, options: SubscribeOptions) -> (Slot, Subscription) {
    let (tx, rx) = mpsc::channel(options.capacity);
    let lagged = Arc::new(AtomicU64::new(0));
    (
        Slot {
            ns,
            tree: options.tree,
            snapshots: options.snapshots,
            tx,
            lagged: lagged.clone(),
        },
        Subscription { rx, lagged },
    )
}

impl Subscription {
    fn take_lag(&self) -> Option<Lagged> {
        match self.lagged.swap(0, Ordering::Relaxed) {
            0 => None,
            missed => Some(Lagged { missed }),
        }
    }

    /// The next event; `None` once the client is gone.
    pub async fn next(&mut self) -> Option<Result<Event, Lagged>> {
        if let Some(l) = self.take_lag() {
            return Some(Err(l));
        }
        self.rx.recv().await.map(Ok)
    }

    /// [`Subscription::next`] for code outside an async runtime (it panics inside one).
    pub fn blocking_next(&mut self) -> Option<Result<Event, Lagged>> {
        if let Some(l) = self.take_lag() {
            return Some(Err(l));
        }
        self.rx.blocking_recv().map(Ok)
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<Result<Event, Lagged>> {
        if let Some(l) = self.take_lag() {
            return Some(Err(l));
        }
        self.rx.try_recv().ok().map(Ok)
    }
}

impl futures_core::Stream for Subscription {
    type Item = Result<Event, Lagged>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(l) = this.take_lag() {
            return Poll::Ready(Some(Err(l)));
        }
        this.rx.poll_recv(cx).map(|o| o.map(Ok))
    }
}
