//! The publish thread: owns the directory output socket.
//!
//! Live updates go out as they come. A snapshot is cut into chunks, and live updates waiting
//! between two chunks go out before the next chunk, so a big snapshot never holds them back.
//! A snapshot entry whose thing got a newer live update meanwhile is left out of the remaining
//! chunks: subscribers already have the newer value, and a 0.2.x client would otherwise go back
//! to the older one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};

use thingsbus_protocol::codec::{encoded_update_ns, UPDATE_PREFIX};
use thingsbus_protocol::snapshot::{ChunkWriter, SnapshotHeader};

use crate::stats::{self, Stats};

/// Work for the publish thread, in the order it must go out.
pub(crate) enum Job {
    /// Encoded `thing_update`s.
    Updates(Vec<Arc<[u8]>>),
    /// One slice of a snapshot taken after `header.seq`: the encoded last update of live
    /// things, as they were when the slice was copied; `last` ends the snapshot. Ingest counts
    /// the whole snapshot as one job (see [`Output::begin`]), ended with its last slice.
    Snapshot {
        header: SnapshotHeader,
        entries: Vec<Arc<[u8]>>,
        last: bool,
    },
}

/// A snapshot whose slices are going out.
struct Open {
    writer: ChunkWriter,
    /// Namespaces that went out live since the snapshot began: their entries in later slices
    /// are left out (subscribers have them, newer or the same).
    superseded: HashSet<Box<[u8]>>,
    header: SnapshotHeader,
    chunks: u64,
    skipped: u64,
    things: usize,
    started: std::time::Instant,
}

/// The directory output socket, shared by the ingest and publish threads under a mutex (the
/// mutex is the full fence libzmq asks for when a socket changes threads).
///
/// At low load ingest sends its few updates itself: one thread hand-off less, so latency stays
/// near libzmq's own. When a wake-up brings a big batch, or the publish thread still has work,
/// ingest queues the batch instead, and parsing and sending run on two cores. `in_flight` counts
/// queued jobs, so ingest never sends ahead of queued work (order is kept) nor during a snapshot
/// (whose chunks must see every live update that overtakes them).
pub(crate) struct Output {
    socket: Mutex<zmq::Socket>,
    in_flight: AtomicUsize,
    stats: Arc<Stats>,
}

impl Output {
    pub(crate) fn new(socket: zmq::Socket, stats: Arc<Stats>) -> Self {
        Output {
            socket: Mutex::new(socket),
            in_flight: AtomicUsize::new(0),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, zmq::Socket> {
        self.socket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True when nothing is queued for the publish thread.
    pub(crate) fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Counts a job handed to the publish thread.
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        let before = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a job ended that was never begun");
    }

    /// Sends messages in order, holding the socket once.
    pub(crate) fn send_all(&self, msgs: &[Arc<[u8]>]) {
        let socket = self.lock();
        for m in msgs {
            self.send_on(&socket, m);
        }
    }

    fn send_one(&self, bytes: &[u8]) {
        let socket = self.lock();
        self.send_on(&socket, bytes);
    }

    fn send_on(&self, socket: &zmq::Socket, bytes: &[u8]) {
        // PUB never blocks: a subscriber at its high-water mark loses this message, alone.
        match socket.send(bytes, zmq::DONTWAIT) {
            Ok(()) => {
                stats::add(&self.stats.messages_out, 1);
                stats::add(&self.stats.bytes_out, bytes.len() as u64);
            }
            Err(e) => tracing::debug!(error = %e, "directory send failed"),
        }
    }
}

pub(crate) struct Publisher {
    output: Arc<Output>,
    rx: Receiver<Job>,
    stats: Arc<Stats>,
    /// Set when the broker stops; see [`crate::server::upstream_gone`].
    stop: Arc<AtomicBool>,
    chunk_bytes: usize,
}

impl Publisher {
    pub(crate) fn new(
        output: Arc<Output>,
        rx: Receiver<Job>,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
        chunk_bytes: usize,
    ) -> Self {
        Publisher {
            output,
            rx,
            stats,
            stop,
            chunk_bytes,
        }
    }

    pub(crate) fn run(self) {
        let mut queued = Vec::new();
        let mut open: Option<Open> = None;
        let heart = self.stats.health.beat("thingsbus-publish");
        loop {
            heart.beat();
            let job = match queued.pop() {
                Some(job) => job,
                // Woken every second when idle, to show it is alive.
                None => match self.rx.recv_timeout(std::time::Duration::from_secs(1)) {
                    Ok(job) => job,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            match job {
                Job::Updates(batch) => {
                    self.send_updates(&batch, open.as_mut().map(|o| &mut o.superseded));
                }
                Job::Snapshot {
                    header,
                    entries,
                    last,
                } => {
                    let o = open.get_or_insert_with(|| Open {
                        writer: ChunkWriter::new(header, self.chunk_bytes),
                        superseded: HashSet::new(),
                        header,
                        chunks: 0,
                        skipped: 0,
                        things: 0,
                        started: std::time::Instant::now(),
                    });
                    if !self.send_slice(o, &entries, &mut queued) {
                        break;
                    }
                    if last {
                        if let Some(o) = open.take() {
                            self.finish_snapshot(o);
                        }
                        self.output.end();
                    } else if o.writer.has_entries() {
                        // Live updates may go out before the next slice: nothing already
                        // written may wait in a chunk behind them.
                        self.output.send_one(&o.writer.take_chunk());
                        o.chunks += 1;
                    }
                }
            }
        }
        tracing::debug!("publish thread stopped");
        // Only ingest's end closes the channel.
        crate::server::upstream_gone(&self.stop);
    }

    /// Sends a queued batch, remembering each namespace while a snapshot is going out.
    fn send_updates(&self, batch: &[Arc<[u8]>], superseded: Option<&mut HashSet<Box<[u8]>>>) {
        if let Some(set) = superseded {
            for update in batch.iter().filter(|u| u.starts_with(UPDATE_PREFIX)) {
                set.insert(encoded_update_ns(update).into());
            }
        }
        self.output.send_all(batch);
        self.output.end();
    }

    /// Sends live updates that are already waiting; a snapshot found there is queued.
    /// Returns false when the ingest side has gone away.
    fn forward_waiting(&self, superseded: &mut HashSet<Box<[u8]>>, queued: &mut Vec<Job>) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Job::Updates(batch)) => self.send_updates(&batch, Some(superseded)),
                Ok(snapshot @ Job::Snapshot { .. }) => queued.insert(0, snapshot),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Sends one slice of the open snapshot, chunk by chunk, with the live updates waiting
    /// between two chunks. Returns false when the ingest side has gone away.
    fn send_slice(&self, o: &mut Open, entries: &[Arc<[u8]>], queued: &mut Vec<Job>) -> bool {
        o.things += entries.len();
        for entry in entries {
            let ns = encoded_update_ns(entry);
            if o.superseded.contains(ns) {
                o.skipped += 1;
                continue;
            }
            if o.writer.is_full_for(ns, entry) {
                self.output.send_one(&o.writer.take_chunk());
                o.chunks += 1;
                // The current chunk is empty now, so no entry already written can be superseded.
                if !self.forward_waiting(&mut o.superseded, queued) {
                    return false;
                }
                if o.superseded.contains(ns) {
                    o.skipped += 1;
                    continue;
                }
            }
            o.writer.push(ns, entry);
        }
        true
    }

    fn finish_snapshot(&self, o: Open) {
        self.output.send_one(&o.writer.finish());
        let chunks = o.chunks + 1;
        stats::add(&self.stats.snapshots, 1);
        stats::add(&self.stats.snapshot_chunks, chunks);
        stats::add(&self.stats.snapshot_entries_superseded, o.skipped);
        tracing::debug!(
            things = o.things,
            chunks,
            superseded = o.skipped,
            seq = o.header.seq,
            elapsed_ms = o.started.elapsed().as_secs_f64() * 1e3,
            "snapshot sent"
        );
    }
}
