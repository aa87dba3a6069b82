//! `/api/events`: Server-Sent Events. Each stream has a task that moves events from its
//! subscription into a queue bounded in events and in bytes; a client that falls so far behind
//! that either bound is reached is dropped (its browser reconnects and starts over), and one
//! that stops reading altogether is closed by the write timeout (`conn.rs`). So a stuck client
//! pins at most its byte bound, and never holds anyone else up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use thingsbus_client::{EventKind, SubscribeOptions};
use tokio::sync::mpsc;

use super::{bad_prefix, App, Prefix};

/// Events that may wait for one stream before it is dropped.
const SSE_QUEUE: usize = 4_096;
/// Event streams open at once at most; more are refused with 503.
pub(super) const SSE_CLIENTS: usize = 256;

/// One open event stream, counted while it lives.
pub(super) struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    /// A slot, unless [`SSE_CLIENTS`] are taken.
    fn take(open: &Arc<AtomicUsize>) -> Option<StreamSlot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < SSE_CLIENTS).then_some(n + 1)
        })
        .ok()
        .map(|_| StreamSlot(open.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The bytes waiting in one stream's queue, against its bound.
#[derive(Debug)]
struct Budget {
    queued: AtomicUsize,
    max: usize,
    /// Set when the stream fell too far behind: it ends with an error, so the connection is
    /// closed at once rather than finishing the response (and kept alive, idle).
    overflowed: AtomicBool,
}

impl Budget {
    /// Takes `n` bytes; false (taking nothing) when that would pass the bound.
    fn take(&self, n: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + n <= self.max).then_some(q + n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One event as queued: its kind and its JSON.
struct Queued {
    kind: &'static str,
    data: String,
}

impl Queued {
    /// What it is counted as: its text and the `event:`/`data:` framing.
    fn cost(&self) -> usize {
        self.data.len() + self.kind.len() + 16
    }
}

pub(super) async fn events(State(app): State<App>, Query(q): Query<Prefix>) -> Response {
    let prefix = q.prefix.unwrap_or_default();
    let Some(slot) = StreamSlot::take(&app.streams) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many event streams open (at most {SSE_CLIENTS})\n"),
        )
            .into_response();
    };
    let mut sub = match app.client().subscribe(
        &prefix,
        SubscribeOptions::new().tree(true).capacity(SSE_QUEUE),
    ) {
        Ok(s) => s,
        Err(e) => return bad_prefix(e),
    };
    let budget = Arc::new(Budget {
        queued: AtomicUsize::new(0),
        max: app.sse_queue_bytes,
        overflowed: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::channel::<Queued>(SSE_QUEUE);
    let stats = app.stats.clone();
    let feeder_budget = budget.clone();
    // Ends when the stream is gone (the receiver dropped) or the client fell too far behind.
    tokio::spawn(async move {
        loop {
            let e = tokio::select! {
                () = tx.closed() => return,
                e = sub.next() => e,
            };
            let e = match e {
                Some(Ok(e)) => e,
                Some(Err(lagged)) => {
                    tracing::debug!(%lagged, "dropping a slow SSE client");
                    stats.http_streams_dropped.fetch_add(1, Ordering::Relaxed);
                    feeder_budget.overflowed.store(true, Ordering::Release);
                    return;
                }
                None => return,
            };
            let kind = match e.kind {
                EventKind::Expired => "expired",
                _ => "update",
            };
            let mut data = Vec::with_capacity(e.thing.data.len() + 96);
            super::json::write_thing(&mut data, &e.thing, true);
            // Made of JSON text and ASCII: always UTF-8.
            let data = String::from_utf8(data).unwrap_or_default();
            let q = Queued { kind, data };
            let cost = q.cost();
            if !feeder_budget.take(cost) || tx.try_send(q).is_err() {
                tracing::debug!(
                    bound = feeder_budget.max,
                    "dropping an SSE client that fell too far behind"
                );
                stats.http_streams_dropped.fetch_add(1, Ordering::Relaxed);
                feeder_budget.overflowed.store(true, Ordering::Release);
                return;
            }
        }
    });
    // Its slot goes with the stream.
    let stream = futures_util::stream::unfold(Some((rx, budget, slot)), |state| async move {
        let (mut rx, budget, slot) = state?;
        let next = rx.recv().await;
        if budget.overflowed.load(Ordering::Acquire) {
            let e = std::io::Error::other("the client fell too far behind");
            return Some((Err(e), None));
        }
        let q = next?;
        budget.give(q.cost());
        let event = Event::default().event(q.kind).data(q.data);
        Some((Ok(event), Some((rx, budget, slot))))
    });
    // A first comment flushes the response head at once, before any event.
    let hello = futures_util::stream::once(async {
        Ok::<Event, std::io::Error>(Event::default().comment("thingsbus events"))
    });
    Sse::new(futures_util::StreamExt::chain(hello, stream))
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_what_would_pass_its_bound_and_takes_back_what_is_sent() {
        let b = Budget {
            queued: AtomicUsize::new(0),
            max: 100,
            overflowed: AtomicBool::new(false),
        };
        assert!(b.take(60));
        assert!(!b.take(41));
        assert!(b.take(40));
        assert!(!b.take(1));
        b.give(60);
        assert!(b.take(60));
        assert_eq!(b.queued.load(Ordering::Relaxed), 100);
    }
}
