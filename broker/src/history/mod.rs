//! `--history PATH`: every numeric value the HTTP side mirrors, recorded in an SQLite file, and
//! read back by `GET /api/history/NS`.
//!
//! Two threads, both off the ingest path. The *recorder* follows the HTTP side's mirror (a
//! client of the broker, like any other) and offers each numeric value — a number thing, each
//! number or boolean of an object thing by dotted path — to a bounded hand-off that keeps the
//! newest value per series and resolution window (`handoff.rs`). The *writer* takes what waits
//! there every resolution (at most every second) and writes it in one transaction; once a
//! minute it folds the tiers, expires old points and keeps the file under its bound
//! (`store.rs`). If the recorder's feed lags, it records the mirror's current values instead
//! (the newest of each series) and counts what it missed; if the writer falls behind, later
//! values take the place of earlier ones in the hand-off, counted the same way
//! (`thingsbus_history_conflated_total`).

mod handoff;
pub mod span;
pub mod store;
pub(crate) mod values;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thingsbus_client::{Client, EventKind, SubscribeOptions, Thing};

use crate::config::HistoryConfig;
use crate::error::Error;
use crate::stats::Stats;
use handoff::Handoff;
pub use span::{Plan, Row, Tier};
pub use store::{Maintenance, Point, Store};

/// Events that may wait for the recorder before its feed lags.
const FEED: usize = 65_536;
/// How often the writer folds, expires and bounds the file.
const MAINTAIN_EVERY: Duration = Duration::from_secs(60);
/// How often the threads look at the stop flag while idle.
const TICK: Duration = Duration::from_millis(100);

/// Milliseconds since 1970 now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The running recorder and writer, and what the HTTP side reads through.
pub(crate) struct History {
    threads: Vec<JoinHandle<()>>,
    /// Reading, for `/api/history`.
    pub(crate) reader: Arc<Reader>,
}

/// A read-only connection to the file (reads run while the writer writes).
#[derive(Debug)]
pub(crate) struct Reader {
    conn: Mutex<rusqlite::Connection>,
    /// The recording resolution, in milliseconds.
    pub(crate) resolution_ms: i64,
}

impl Reader {
    /// Runs `f` on the connection (one reader at a time).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> T) -> T {
        f(&self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl History {
    /// Opens the file (so that a bad path fails the start) and starts both threads, which
    /// follow `mirror` (replaced now and then by the HTTP side) until `stop`.
    pub(crate) fn start(
        config: &HistoryConfig,
        mirror: Arc<RwLock<Client>>,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
        fault: Option<&str>,
    ) -> Result<History, Error> {
        let (supervision, halt) = (stats.clone(), stop.clone());
        let resolution_ms = i64::try_from(config.resolution.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let store = open(&config.path, resolution_ms, config.max_bytes)?;
        stats
            .history_series
            .store(store.series() as u64, Ordering::Relaxed);
        let reader = store::open_reader(&config.path).map_err(|e| file_error(&config.path, &e))?;
        let handoff = Arc::new(Handoff::new(resolution_ms, store::MAX_SERIES));
        let writer = Writer {
            store,
            handoff: handoff.clone(),
            stats: stats.clone(),
            stop: stop.clone(),
            flush: config.resolution.min(Duration::from_secs(1)),
        };
        let recorder = Recorder {
            mirror,
            handoff,
            stats,
            stop,
        };
        // Supervised as the broker's own loops: a recorder or writer that ends or panics while
        // the broker runs stops it, saying which, instead of leaving history silently off.
        let thread = |name: &str, run: Box<dyn FnOnce() + Send>| {
            crate::server::supervised(
                name,
                supervision.clone(),
                halt.clone(),
                crate::server::fault_for(fault, name),
                run,
            )
        };
        let threads = vec![
            thread("thingsbus-history", Box::new(move || writer.run()))?,
            thread("thingsbus-recorder", Box::new(move || recorder.run()))?,
        ];
        Ok(History {
            threads,
            reader: Arc::new(Reader {
                conn: Mutex::new(reader),
                resolution_ms,
            }),
        })
    }

    /// Waits for both threads (after `stop`): the writer writes what waits first.
    pub(crate) fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn file_error(path: &Path, e: &rusqlite::Error) -> Error {
    Error::History(format!(
        "{}: {e} (give --history a file in a directory this user may write)",
        path.display()
    ))
}

fn open(path: &Path, resolution_ms: i64, max_bytes: u64) -> Result<Store, Error> {
    Store::open(path, resolution_ms, max_bytes).map_err(|e| file_error(path, &e))
}

/// Follows the mirror and offers its numeric values to the hand-off.
struct Recorder {
    mirror: Arc<RwLock<Client>>,
    handoff: Arc<Handoff>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the history recorder could not start");
                return;
            }
        };
        runtime.block_on(self.follow());
    }

    /// Subscribes to the mirror of now; when it is replaced (its feed ends), to the new one.
    async fn follow(&self) {
        let mut values = Vec::new();
        let mut key = String::new();
        while !self.stop.load(Ordering::Relaxed) {
            let client = self
                .mirror
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let options = SubscribeOptions::new()
                .tree(true)
                .snapshots(true)
                .capacity(FEED);
            let mut feed = match client.subscribe("", options) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "the history recorder cannot follow the mirror");
                    return;
                }
            };
            // What the mirror holds already (its values came before this subscription).
            self.record_all(&client, &mut values, &mut key);
            drop(client);
            loop {
                let event = tokio::select! {
                    e = feed.next() => e,
                    () = tokio::time::sleep(TICK) => {
                        if self.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        continue;
                    }
                };
                match event {
                    Some(Ok(e)) if e.kind != EventKind::Expired => {
                        self.record(&e.thing, &mut values, &mut key);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(lagged)) => {
                        self.stats
                            .history_conflated
                            .fetch_add(lagged.missed, Ordering::Relaxed);
                        let client = self
                            .mirror
                            .read()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .clone();
                        self.record_all(&client, &mut values, &mut key);
                    }
                    None => break,
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }

    fn record_all(&self, client: &Client, values: &mut Vec<(String, f64)>, key: &mut String) {
        for thing in client.walk("") {
            self.record(&thing, values, key);
        }
    }

    fn record(&self, thing: &Thing, values: &mut Vec<(String, f64)>, key: &mut String) {
        let Ok(data) = serde_json::from_str::<serde_json::Value>(&thing.data) else {
            return;
        };
        values.clear();
        values::numeric(&data, values);
        if values.is_empty() {
            return;
        }
        let lost = self.handoff.offer(thing.ns.as_str(), thing.ts, values, key);
        if lost > 0 {
            self.stats
                .history_conflated
                .fetch_add(lost, Ordering::Relaxed);
        }
    }
}

/// Writes what the hand-off holds, and maintains the file.
struct Writer {
    store: Store,
    handoff: Arc<Handoff>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    flush: Duration,
}

impl Writer {
    fn run(mut self) {
        self.maintain();
        let mut maintained = Instant::now();
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            self.write();
            if stopping {
                return;
            }
            if maintained.elapsed() >= MAINTAIN_EVERY {
                self.maintain();
                maintained = Instant::now();
            }
            // The flush interval, in ticks, so that a stop is seen soon.
            let until = Instant::now() + self.flush;
            while !self.stop.load(Ordering::Relaxed) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(TICK));
            }
        }
    }

    fn write(&mut self) {
        let points = self.handoff.take();
        if points.is_empty() {
            return;
        }
        match self.store.write(&points) {
            Ok(n) => {
                self.stats
                    .history_points
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.stats
                    .history_conflated
                    .fetch_add((points.len() - n) as u64, Ordering::Relaxed);
                self.stats
                    .history_series
                    .store(self.store.series() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.history_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, points = points.len(), "history: a write failed");
            }
        }
    }

    fn maintain(&mut self) {
        match self.store.maintain(now_ms()) {
            Ok(m) => {
                self.stats
                    .history_bytes
                    .store(m.used_bytes, Ordering::Relaxed);
                if m.dropped_for_bytes > 0 {
                    tracing::info!(
                        rows = m.dropped_for_bytes,
                        "history: the oldest points were dropped to stay within \
                         --history-max-bytes"
                    );
                }
                tracing::debug!(?m, "history maintained");
            }
            Err(e) => {
                self.stats.history_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "history: maintenance failed");
            }
        }
    }
}
