//! The instant snapshot endpoint (ZMQ ROUTER on P + 2): late joiners get the whole directory, or
//! one subtree, at once instead of waiting for the next periodic snapshot.
//!
//! Request (one frame from a DEALER): `{"type":"snapshot_request","ns":"shop","id":17,"stale":true}`
//! — `ns` (the subtree, default the whole directory), `id` (echoed back) and `stale` (also the
//! things that left the live window but are not forgotten yet) are optional.
//! Reply: one or more `thing_snapshot` chunks, as on the directory output, with `"request"` and
//! `"subtree"` added, the last marked `"last":true`; stale things come last, in chunks marked
//! `"stale":true`. A refusal is
//! `{"type":"snapshot_error","request":…,"error":"bad_request"|"busy","detail":…}`.
//!
//! The view is taken by the ingest thread (it owns the directory) as a list of shared entries,
//! consistent with one `seq`; requests waiting at the same time share one view. Chunks are built
//! and sent here, one at a time per client in turn, so a slow or vanished client costs one
//! list of pointers, never a pile of chunks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thingsbus_protocol::codec::encoded_update_ns;
use thingsbus_protocol::namespace::is_within_str;
use thingsbus_protocol::snapshot::{ChunkWriter, SnapshotHeader, SnapshotRequest};

use crate::log_limit::LogLimiter;
use crate::mailbox::{Mailbox, Post};
use crate::stats::{self, Stats};

/// Requests being served or waiting at once; more are refused with `busy`.
const MAX_JOBS: usize = 64;
/// A reply not taken by its client within this long is dropped.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks sent to one client before the next client's turn.
const CHUNKS_PER_TURN: usize = 4;
/// Largest request accepted.
const MAX_REQUEST_BYTES: i64 = 4096;

/// A consistent copy of the live directory, taken by the ingest thread.
pub(crate) struct View {
    pub(crate) header: SnapshotHeader,
    pub(crate) entries: Vec<Arc<[u8]>>,
    /// Things past the live window, when a request asked for them.
    pub(crate) stale: Option<Vec<Arc<[u8]>>>,
}

/// What the snapshot server asks the ingest thread for: a view, with stale things or without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ViewWanted {
    pub(crate) with_stale: bool,
}

struct Job {
    identity: Vec<u8>,
    /// A REQ client puts an empty delimiter frame before its payload; replies must carry it.
    delimiter: bool,
    request_id: String,
    subtree: String,
    /// Also the things past the live window.
    stale: bool,
    /// In the stale section of the reply.
    in_stale: bool,
    view: Option<Arc<View>>,
    writer: Option<ChunkWriter>,
    pos: usize,
    /// A chunk the client had no room for yet.
    pending: Option<(Vec<u8>, bool)>,
    done: bool,
    started: Instant,
}

pub(crate) struct SnapshotServer {
    pub(crate) router: zmq::Socket,
    /// To ingest: a view is wanted.
    pub(crate) want_view: Post<ViewWanted>,
    /// From ingest: the views.
    pub(crate) views: Mailbox<View>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) chunk_bytes: usize,
}

impl SnapshotServer {
    pub(crate) fn configure(router: &zmq::Socket) -> zmq::Result<()> {
        router.set_router_mandatory(true)?;
        router.set_sndhwm(CHUNKS_PER_TURN as i32 * 4)?;
        router.set_maxmsgsize(MAX_REQUEST_BYTES)?;
        router.set_linger(0)
    }

    pub(crate) fn run(self) {
        let mut waiting: Vec<Job> = Vec::new();
        let mut jobs: VecDeque<Job> = VecDeque::new();
        let mut view_asked = false;
        let mut log = LogLimiter::new(Duration::from_secs(10), 20);
        // What the last round of sending achieved: keep going at once while chunks move.
        let mut progress = false;
        let heart = self.stats.health.beat("thingsbus-snapshots");
        while !self.stop.load(Ordering::Relaxed) {
            heart.beat();
            let timeout = match (jobs.is_empty(), progress) {
                (true, _) => 50,
                (false, true) => 0,
                // Every client's queue is full: give them a moment to read.
                (false, false) => 1,
            };
            let (requests, ready) = {
                let mut items = [
                    self.router.as_poll_item(zmq::POLLIN),
                    self.views.poll_item(),
                ];
                match zmq::poll(&mut items, timeout) {
                    Ok(_) => (items[0].is_readable(), items[1].is_readable()),
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "snapshot endpoint poll failed; stopping it");
                        return;
                    }
                }
            };
            if requests {
                while let Ok(frames) = self.router.recv_multipart(zmq::DONTWAIT) {
                    match self.parse(frames, waiting.len() + jobs.len()) {
                        Ok(job) => {
                            stats::add(&self.stats.snapshot_requests, 1);
                            waiting.push(job);
                        }
                        Err((identity, delimiter, id, error, detail)) => {
                            stats::add(&self.stats.snapshot_request_errors, 1);
                            if log.allow(Instant::now(), |n| {
                                tracing::warn!(suppressed = n, "more snapshot requests refused")
                            }) {
                                tracing::warn!(error, detail, "snapshot request refused");
                            }
                            let reply = serde_json::json!({
                                "type": "snapshot_error", "request": id, "error": error, "detail": detail
                            });
                            let _ = self.send(&identity, delimiter, reply.to_string().as_bytes());
                        }
                    }
                }
                if !waiting.is_empty() && !view_asked {
                    view_asked = self.ask_view(&waiting);
                }
            }
            if ready {
                for view in self.views.drain() {
                    view_asked = false;
                    let view = Arc::new(view);
                    // A job that wants stale things waits for a view that has them.
                    let (fits, wait): (Vec<Job>, Vec<Job>) = waiting
                        .drain(..)
                        .partition(|j| !j.stale || view.stale.is_some());
                    waiting = wait;
                    for mut job in fits {
                        job.view = Some(view.clone());
                        jobs.push_back(job);
                    }
                }
                if !waiting.is_empty() && !view_asked {
                    view_asked = self.ask_view(&waiting);
                }
            }
            progress = self.serve(&mut jobs);
        }
    }

    /// Asks the ingest thread for a view (with stale things if a waiting job wants them).
    fn ask_view(&self, waiting: &[Job]) -> bool {
        let with_stale = waiting.iter().any(|j| j.stale);
        self.want_view.try_send(ViewWanted { with_stale }).is_ok()
    }

    #[allow(clippy::type_complexity)]
    fn parse(
        &self,
        mut frames: Vec<Vec<u8>>,
        busy_count: usize,
    ) -> Result<Job, (Vec<u8>, bool, serde_json::Value, &'static str, String)> {
        let identity = if frames.is_empty() {
            Vec::new()
        } else {
            frames.remove(0)
        };
        let delimiter = frames.len() == 2 && frames[0].is_empty();
        if delimiter {
            frames.remove(0);
        }
        let refuse = |id: serde_json::Value, error: &'static str, detail: String| {
            (identity.clone(), delimiter, id, error, detail)
        };
        if frames.len() != 1 {
            return Err(refuse(
                serde_json::Value::Null,
                "bad_request",
                "expected one frame".into(),
            ));
        }
        let req = SnapshotRequest::decode(&frames[0]).map_err(|e| {
            let id = serde_json::from_str(&e.id_json).unwrap_or(serde_json::Value::Null);
            refuse(id, "bad_request", e.detail)
        })?;
        let id_value: serde_json::Value =
            serde_json::from_str(&req.id_json).unwrap_or(serde_json::Value::Null);
        if busy_count >= MAX_JOBS {
            return Err(refuse(
                id_value,
                "busy",
                format!("{MAX_JOBS} requests in progress; retry shortly"),
            ));
        }
        Ok(Job {
            identity,
            delimiter,
            request_id: req.id_json,
            subtree: req.subtree,
            stale: req.stale,
            in_stale: false,
            view: None,
            writer: None,
            pos: 0,
            pending: None,
            done: false,
            started: Instant::now(),
        })
    }

    fn send(&self, identity: &[u8], delimiter: bool, payload: &[u8]) -> zmq::Result<()> {
        self.router.send(identity, zmq::SNDMORE | zmq::DONTWAIT)?;
        if delimiter {
            self.router.send(&b""[..], zmq::SNDMORE | zmq::DONTWAIT)?;
        }
        self.router.send(payload, zmq::DONTWAIT)
    }

    /// Sends a few chunks of each reply in turn; true when anything was sent.
    fn serve(&self, jobs: &mut VecDeque<Job>) -> bool {
        let mut progress = false;
        for _ in 0..jobs.len() {
            let Some(mut job) = jobs.pop_front() else {
                break;
            };
            if job.started.elapsed() > JOB_TIMEOUT {
                stats::add(&self.stats.snapshot_replies_dropped, 1);
                continue;
            }
            let mut gone = false;
            for _ in 0..CHUNKS_PER_TURN {
                let Some(chunk) = self.next_chunk(&mut job) else {
                    break;
                };
                match self.send(&job.identity, job.delimiter, &chunk.0) {
                    Ok(()) => {
                        progress = true;
                        stats::add(&self.stats.bytes_out, chunk.0.len() as u64);
                        if chunk.1 {
                            job.done = true;
                            let ms = job.started.elapsed().as_secs_f64() * 1e3;
                            stats::add(&self.stats.snapshot_replies, 1);
                            stats::add(&self.stats.snapshot_reply_micros, (ms * 1e3) as u64);
                            break;
                        }
                    }
                    Err(zmq::Error::EAGAIN) => {
                        // The client's queue is full: keep this chunk for its next turn.
                        job.pending = Some(chunk);
                        break;
                    }
                    Err(_) => {
                        // EHOSTUNREACH: the client is gone.
                        stats::add(&self.stats.snapshot_replies_dropped, 1);
                        gone = true;
                        break;
                    }
                }
            }
            if !gone && !job.done {
                jobs.push_back(job);
            }
        }
        progress
    }

    /// The next chunk of a reply and whether it is the last.
    fn next_chunk(&self, job: &mut Job) -> Option<(Vec<u8>, bool)> {
        if let Some(c) = job.pending.take() {
            return Some(c);
        }
        if job.done {
            return None;
        }
        let view = job.view.clone()?;
        if job.writer.is_none() && job.pos == 0 {
            // How many things the reply holds, so the client can make room once.
            let stale: &[Arc<[u8]>] = match (&view.stale, job.stale) {
                (Some(s), true) => s,
                _ => &[],
            };
            let total = if job.subtree.is_empty() {
                view.entries.len() + stale.len()
            } else {
                view.entries
                    .iter()
                    .chain(stale)
                    .filter(|e| {
                        std::str::from_utf8(encoded_update_ns(e))
                            .is_ok_and(|ns| is_within_str(ns, &job.subtree))
                    })
                    .count()
            };
            let extra = format!(
                ",\"request\":{},\"subtree\":{},\"total\":{total}",
                job.request_id,
                serde_json::Value::String(job.subtree.clone())
            );
            job.writer = Some(ChunkWriter::with_extra(
                view.header,
                self.chunk_bytes,
                extra,
            ));
        }
        let writer = job.writer.as_mut()?;
        let live = view.entries.len();
        let stale: &[Arc<[u8]>] = match (&view.stale, job.stale) {
            (Some(s), true) => s,
            _ => &[],
        };
        while job.pos < live + stale.len() {
            if job.pos >= live && !job.in_stale {
                // Stale things go in chunks of their own, marked so.
                job.in_stale = true;
                let extra = format!(
                    ",\"request\":{},\"subtree\":{},\"stale\":true",
                    job.request_id,
                    serde_json::Value::String(job.subtree.clone())
                );
                if let Some(chunk) = writer.begin_section(extra) {
                    return Some((chunk, false));
                }
            }
            let entry = match job.pos.checked_sub(live) {
                None => &view.entries[job.pos],
                Some(i) => &stale[i],
            };
            let ns = encoded_update_ns(entry);
            let inside = std::str::from_utf8(ns).is_ok_and(|ns| is_within_str(ns, &job.subtree));
            if inside && writer.is_full_for(ns, entry) {
                return Some((writer.take_chunk(), false));
            }
            if inside {
                writer.push(ns, entry);
            }
            job.pos += 1;
        }
        let last = job.writer.take()?.finish();
        Some((last, true))
    }
}
