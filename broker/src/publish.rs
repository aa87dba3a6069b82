//! The publish thread: owns the directory output socket.
//!
//! Live updates go out as they come. A snapshot is cut into chunks, and live updates waiting
//! between two chunks go out before the next chunk, so a big snapshot never holds them back.
//! A snapshot entry whose thing got a newer live update meanwhile is left out of the remaining
//! chunks: subscribers already have the newer value, and a 0.2.x client would otherwise go back
//! to the older one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};

use thingsbus_protocol::codec::{encoded_update_ns, UPDATE_PREFIX};
use thingsbus_protocol::snapshot::{ChunkWriter, SnapshotHeader};

use crate::stats::{self, Stats};

/// Work for the publish thread, in the order it must go out.
pub(crate) enum Job {
    /// Encoded `thing_update`s.
    Updates(Vec<Arc<[u8]>>),
    /// A snapshot consistent with `header.seq`: the encoded last update of each live thing.
    Snapshot {
        header: SnapshotHeader,
        entries: Vec<Arc<[u8]>>,
    },
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
    chunk_bytes: usize,
}

impl Publisher {
    pub(crate) fn new(
        output: Arc<Output>,
        rx: Receiver<Job>,
        stats: Arc<Stats>,
        chunk_bytes: usize,
    ) -> Self {
        Publisher {
            output,
            rx,
            stats,
            chunk_bytes,
        }
    }

    pub(crate) fn run(self) {
        let mut queued = Vec::new();
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
                Job::Updates(batch) => self.send_updates(&batch, None),
                Job::Snapshot { header, entries } => {
                    let more = self.send_snapshot(header, entries, &mut queued);
                    self.output.end();
                    if !more {
                        break;
                    }
                }
            }
        }
        tracing::debug!("publish thread stopped");
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

    fn send_snapshot(
        &self,
        header: SnapshotHeader,
        entries: Vec<Arc<[u8]>>,
        queued: &mut Vec<Job>,
    ) -> bool {
        let started = std::time::Instant::now();
        let mut writer = ChunkWriter::new(header, self.chunk_bytes);
        let mut superseded = HashSet::new();
        let mut chunks = 0u64;
        let mut skipped = 0u64;
        for entry in &entries {
            let ns = encoded_update_ns(entry);
            if superseded.contains(ns) {
                skipped += 1;
                continue;
            }
            if writer.is_full_for(ns, entry) {
                self.output.send_one(&writer.take_chunk());
                chunks += 1;
                // The current chunk is empty now, so no entry already written can be superseded.
                if !self.forward_waiting(&mut superseded, queued) {
                    return false;
                }
                if superseded.contains(ns) {
                    skipped += 1;
                    continue;
                }
            }
            writer.push(ns, entry);
        }
        self.output.send_one(&writer.finish());
        chunks += 1;
        stats::add(&self.stats.snapshots, 1);
        stats::add(&self.stats.snapshot_chunks, chunks);
        stats::add(&self.stats.snapshot_entries_superseded, skipped);
        tracing::debug!(
            things = entries.len(),
            chunks,
            superseded = skipped,
            seq = header.seq,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "snapshot sent"
        );
        true
    }
}
