//! Persistence (`--state-file`): a write-ahead journal of accepted updates, compacted from time
//! to time, so the directory survives a restart and a `kill -9`.
//!
//! The file is a magic and length + checksum framed records, each an update exactly as the
//! broker published it (`format.rs`); later records of a thing supersede earlier ones.
//!
//! The ingest thread hands each published batch to a writer thread (`writer.rs`), which appends
//! it and makes it durable (`fdatasync`) at most every `fsync_interval`;
//! [`crate::Stats::journal_synced_seq`] names the `seq` up to which a restart reads everything
//! back. When the appended bytes outgrow the last compaction, ingest sends the whole directory
//! (shared pointers, as for a snapshot) and the writer replaces the file with it atomically
//! (write aside, `fsync`, rename, `fsync` the folder).
//!
//! Ingest never waits for the disk: the hand-off is bounded (in batches and bytes) and a batch
//! that does not fit is dropped, counted, and made up for by a compaction sent at once. When a
//! write fails (a full disk) the writer cuts the file back to its last whole record and appends
//! nothing more until a compaction has rewritten what was missed, asking for one again with a
//! growing pause while it fails. Until then the broker reports a `journal` fault (`/healthz`
//! answers 503 naming it) and `journal.failing` in its own thing; when the disk takes writes
//! again it recovers by itself.
//!
//! Reading back keeps every record that checks out and skips bad ones where a good record
//! follows. A file cut short in its last record (a crash while writing) is used as it is; any
//! other damage, or a file that is not a journal, is kept aside as `<path>.corrupt-<unix time>`
//! before the start-up compaction replaces it. Damage never stops the broker from starting.
//!
//! A plain file rather than an embedded store: the directory is one small value per thing, always
//! held in memory, and a journal of the exact published bytes needs no second encoding, no schema
//! and no dependency beyond a checksum.

mod format;
mod writer;

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use thingsbus_protocol::codec::UPDATE_PREFIX;
use thingsbus_protocol::{Directory, Timestamp};

use crate::stats::{self, Stats};
pub(crate) use writer::Writer;

/// Compaction waits until the journal has grown by at least this much.
const MIN_COMPACT_GROWTH: u64 = 4 << 20;
/// Jobs that may wait for the writer; a batch beyond them is dropped (and a compaction sent).
const QUEUE: usize = 4096;
/// Bytes of appended batches that may wait for the writer (a compaction's records are shared
/// with the directory and not counted).
const QUEUE_BYTES: u64 = 64 << 20;

/// Builds the directory from the journal at `path`, saying what it found. A damaged file is
/// kept aside first (a copy; a file that is not a journal is moved).
///
/// # Errors
/// When the file exists but cannot be read, or a foreign file cannot be moved aside.
pub(crate) fn restore(
    path: &Path,
    now: Timestamp,
    live_window: f64,
    forget_after: f64,
    skip_ns: &str,
) -> io::Result<Directory> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let recovery = format::parse(&bytes);
    report_damage(path, now, &recovery)?;
    let mut dir = Directory::new();
    let mut bad = 0usize;
    for record in &recovery.records {
        let ns = thingsbus_protocol::codec::encoded_update_ns(record);
        if std::str::from_utf8(ns)
            .is_ok_and(|ns| thingsbus_protocol::namespace::is_within_str(ns, skip_ns))
        {
            continue;
        }
        if dir.restore(record, now, live_window, forget_after).is_err() {
            bad += 1;
        }
    }
    if bad > 0 {
        tracing::warn!(bad, "state file records that are not updates were skipped");
    }
    if recovery.file_bytes > 0 {
        tracing::info!(
            path = %path.display(),
            things = dir.len(),
            records = recovery.records.len(),
            seq = dir.seq(),
            "directory restored"
        );
    }
    Ok(dir)
}

/// Logs what reading found wrong, and keeps a damaged file aside.
fn report_damage(path: &Path, now: Timestamp, r: &format::Recovery<'_>) -> io::Result<()> {
    let first = r.skipped.first().or(r.tail.as_ref());
    let Some(first) = first else {
        return Ok(());
    };
    if !r.keep_aside() {
        tracing::warn!(
            path = %path.display(),
            damage = %first,
            kept_records = r.records.len(),
            "the state file's last record was cut short (a crash while writing); restored up to it"
        );
        return Ok(());
    }
    let aside = format::aside_path(path, now.as_secs().max(0.0) as u64, Path::exists);
    if r.foreign {
        std::fs::rename(path, &aside)?;
        tracing::warn!(
            path = %path.display(),
            moved_to = %aside.display(),
            "the state file is not a thingsbus journal; it was moved aside and the broker starts empty"
        );
        return Ok(());
    }
    // A copy: the file stays where it is until the start-up compaction has replaced it.
    let kept = std::fs::copy(path, &aside).and_then(|_| File::open(&aside)?.sync_all());
    let last = r.tail.map(|t| t.to_string()).unwrap_or_default();
    match kept {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            kept_aside = %aside.display(),
            damage = %first,
            bad_stretches = r.skipped.len() + usize::from(r.tail.is_some()),
            damaged_tail = %last,
            kept_records = r.records.len(),
            lost_bytes = r.lost_bytes(),
            "the state file is damaged; every good record was restored and the file kept aside"
        ),
        Err(e) => tracing::error!(
            path = %path.display(),
            aside = %aside.display(),
            error = %e,
            damage = %first,
            kept_records = r.records.len(),
            lost_bytes = r.lost_bytes(),
            "the state file is damaged and could not be kept aside; every good record was restored"
        ),
    }
    Ok(())
}

enum Job {
    /// Updates published since the last batch, the `seq` of the last of them and their bytes.
    Append(Vec<Arc<[u8]>>, u64, u64),
    /// The whole directory as of `seq`: it replaces the file. The number is the job's.
    Compact(Vec<Arc<[u8]>>, u64, u64),
}

/// What the ingest thread and the writer share.
struct Shared {
    stats: Arc<Stats>,
    /// Bytes of appended batches waiting for the writer.
    queued: AtomicU64,
    /// When the writer wants a compaction (after a failure), in milliseconds after `epoch`;
    /// [`NO_REQUEST`] when it does not.
    compact_at: AtomicU64,
    epoch: Instant,
    /// What is wrong now; shown as the `journal` fault.
    trouble: Mutex<Trouble>,
}

const NO_REQUEST: u64 = u64::MAX;

/// Why the file misses what the broker accepted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Trouble {
    /// The last write, sync or compaction failed.
    failed: Option<String>,
    /// Batches dropped at the hand-off: how many, and the number of the last such job.
    dropped: Option<(u64, u64)>,
    /// The writer thread is gone.
    writer_gone: bool,
}

impl Trouble {
    /// The fault to show, if any.
    fn fault(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.writer_gone {
            parts.push("the writer stopped: nothing is written any more".to_owned());
        }
        if let Some(why) = &self.failed {
            parts.push(why.clone());
        }
        if let Some((n, _)) = self.dropped {
            parts.push(format!(
                "{n} batches of updates were dropped because the writer fell behind"
            ));
        }
        if parts.is_empty() {
            return None;
        }
        Some(format!(
            "{}; what was accepted since journal.synced_seq would not survive a restart",
            parts.join("; ")
        ))
    }

    /// A compaction handed over as job `job` succeeded: it holds everything the failures and
    /// the drops before it missed.
    fn compacted(&mut self, job: u64) {
        self.failed = None;
        if self.dropped.is_some_and(|(_, last)| last < job) {
            self.dropped = None;
        }
    }
}

impl Shared {
    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NO_REQUEST - 1)
    }

    /// Changes what is wrong, and shows it.
    fn trouble(&self, change: impl FnOnce(&mut Trouble)) {
        let mut t = self.trouble.lock().unwrap_or_else(PoisonError::into_inner);
        let before = t.fault();
        change(&mut t);
        let now = t.fault();
        if now != before {
            stats::set(&self.stats.journal_failing, u64::from(now.is_some()));
            self.stats.health.set_fault("journal", now);
        }
    }

    /// The writer asks for a compaction after `pause`.
    fn request_compaction(&self, pause: Duration) {
        let at = self
            .millis()
            .saturating_add(u64::try_from(pause.as_millis()).unwrap_or(NO_REQUEST));
        self.compact_at
            .store(at.min(NO_REQUEST - 1), Ordering::Relaxed);
    }
}

/// The ingest thread's end of the journal.
pub(crate) struct Journal {
    tx: SyncSender<Job>,
    shared: Arc<Shared>,
    /// The number of the next job handed over (or dropped).
    next_job: u64,
    since_compaction: u64,
    last_compaction: u64,
    /// A batch was dropped: nothing more is appended until a compaction is handed over.
    need_compaction: bool,
    /// Things under this namespace are not kept.
    skip_ns: String,
}

impl Journal {
    /// The journal for `path` and its writer (to run on a thread of its own); the first job
    /// rewrites the file with `dir`. The writer ends when the journal is dropped and `stop` set.
    ///
    /// # Errors
    /// When the file cannot be opened for writing.
    pub(crate) fn start(
        path: PathBuf,
        fsync_interval: Duration,
        dir: &Directory,
        skip_ns: &str,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<(Journal, Writer)> {
        // Fail at start, with the path, rather than in the writer thread later.
        OpenOptions::new().create(true).append(true).open(&path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let shared = Arc::new(Shared {
            stats,
            queued: AtomicU64::new(0),
            compact_at: AtomicU64::new(NO_REQUEST),
            epoch: Instant::now(),
            trouble: Mutex::default(),
        });
        let writer = Writer::new(path, fsync_interval, shared.clone(), rx, stop);
        let mut journal = Journal {
            tx,
            shared,
            next_job: 0,
            since_compaction: 0,
            last_compaction: 0,
            need_compaction: false,
            skip_ns: skip_ns.to_owned(),
        };
        journal.compact(dir, skip_ns);
        Ok((journal, writer))
    }

    /// Journals a published batch (only its updates are kept); `seq` is the directory's now.
    /// Never waits: a batch the writer has no room for is dropped and counted.
    pub(crate) fn append(&mut self, batch: &[Arc<[u8]>], seq: u64) {
        if self.writer_wants_compaction() {
            // The writer appends nothing until it has a compaction, which will hold these.
            return;
        }
        let records: Vec<Arc<[u8]>> = batch
            .iter()
            .filter(|b| b.starts_with(UPDATE_PREFIX) && !self.skipped(b))
            .cloned()
            .collect();
        if records.is_empty() {
            return;
        }
        let bytes: u64 = records.iter().map(|r| 8 + r.len() as u64).sum();
        let job = self.next_job;
        self.next_job += 1;
        let queued = self.shared.queued.load(Ordering::Relaxed);
        let sent = if self.need_compaction || queued + bytes > QUEUE_BYTES {
            Err(None)
        } else {
            self.shared.queued.fetch_add(bytes, Ordering::Relaxed);
            self.tx
                .try_send(Job::Append(records, seq, bytes))
                .map_err(Some)
        };
        match sent {
            Ok(()) => self.since_compaction += bytes,
            Err(refused) => {
                if refused.is_some() {
                    self.shared.queued.fetch_sub(bytes, Ordering::Relaxed);
                }
                if let Some(TrySendError::Disconnected(_)) = refused {
                    self.writer_gone();
                    return;
                }
                stats::add(&self.shared.stats.journal_dropped, 1);
                self.shared.trouble(|t| {
                    let n = t.dropped.map_or(0, |(n, _)| n);
                    t.dropped = Some((n + 1, job));
                });
                if !self.need_compaction {
                    tracing::warn!(
                        "the state file's writer fell behind; a batch of updates was dropped and a compaction will replace what it missed"
                    );
                }
                self.need_compaction = true;
            }
        }
    }

    /// Whether an update is of a thing that is not kept (the broker's own): restoring would
    /// skip it, and its appends would grow the file for nothing.
    fn skipped(&self, update: &[u8]) -> bool {
        std::str::from_utf8(thingsbus_protocol::codec::encoded_update_ns(update))
            .is_ok_and(|ns| thingsbus_protocol::namespace::is_within_str(ns, &self.skip_ns))
    }

    fn writer_wants_compaction(&self) -> bool {
        self.shared.compact_at.load(Ordering::Relaxed) != NO_REQUEST
    }

    fn writer_gone(&self) {
        let known = self
            .shared
            .trouble
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .writer_gone;
        if !known {
            stats::add(&self.shared.stats.journal_errors, 1);
            self.shared.trouble(|t| t.writer_gone = true);
        }
    }

    /// True when the journal has grown enough, lost a batch, or its writer asks, and a
    /// compaction is due.
    pub(crate) fn wants_compaction(&self) -> bool {
        let asked = self.shared.compact_at.load(Ordering::Relaxed);
        (asked != NO_REQUEST && asked <= self.shared.millis())
            || self.need_compaction
            || self.since_compaction > MIN_COMPACT_GROWTH.max(self.last_compaction)
    }

    /// Hands the directory as it is now to the writer, to replace the file. Never waits: when
    /// the writer has no room, [`Journal::wants_compaction`] stays true and ingest tries again.
    pub(crate) fn compact(&mut self, dir: &Directory, skip_ns: &str) {
        let records: Vec<Arc<[u8]>> = dir
            .iter()
            .filter(|(ns, _)| !thingsbus_protocol::namespace::is_within_str(ns.as_str(), skip_ns))
            .map(|(_, e)| e.encoded.clone())
            .collect();
        let bytes: u64 = records.iter().map(|r| 8 + r.len() as u64).sum();
        let asked = self.shared.compact_at.load(Ordering::Relaxed);
        let job = self.next_job;
        match self.tx.try_send(Job::Compact(records, dir.seq(), job)) {
            Ok(()) => {
                self.next_job += 1;
                self.need_compaction = false;
                self.since_compaction = 0;
                self.last_compaction = bytes;
                // Answered; unless the writer has asked again meanwhile.
                let _ = self.shared.compact_at.compare_exchange(
                    asked,
                    NO_REQUEST,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Err(TrySendError::Full(_)) => self.need_compaction = true,
            Err(TrySendError::Disconnected(_)) => self.writer_gone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(ns: &str) -> Arc<[u8]> {
        let mut u = UPDATE_PREFIX.to_vec();
        u.extend_from_slice(format!("\"ns\":\"{ns}\",\"data\":1}}").as_bytes());
        Arc::from(u)
    }

    /// A journal whose writer takes `room` jobs and never reads them.
    fn stalled(room: usize) -> (Journal, std::sync::mpsc::Receiver<Job>, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(room);
        let shared = Arc::new(Shared {
            stats: stats.clone(),
            queued: AtomicU64::new(0),
            compact_at: AtomicU64::new(NO_REQUEST),
            epoch: Instant::now(),
            trouble: Mutex::default(),
        });
        let journal = Journal {
            tx,
            shared,
            next_job: 0,
            since_compaction: 0,
            last_compaction: 0,
            need_compaction: false,
            skip_ns: "thingsbus.broker".into(),
        };
        (journal, rx, stats)
    }

    #[test]
    fn a_writer_that_falls_behind_costs_dropped_batches_and_a_fault_never_a_wait() {
        let (mut j, rx, stats) = stalled(1);
        j.append(&[update("a.one")], 1);
        assert!(!j.wants_compaction());
        // The queue is full: neither call waits.
        j.append(&[update("a.two")], 2);
        j.compact(&Directory::new(), "thingsbus.broker");
        assert_eq!(stats.journal_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(stats.journal_failing.load(Ordering::Relaxed), 1);
        assert!(j.wants_compaction(), "the compaction is tried again");
        // Until it is handed over, appends are dropped too (the file would have a hole).
        let _ = rx.recv();
        j.append(&[update("a.three")], 3);
        assert_eq!(stats.journal_dropped.load(Ordering::Relaxed), 2);
        j.compact(&Directory::new(), "thingsbus.broker");
        assert!(!j.wants_compaction());
        let Ok(Job::Compact(_, _, job)) = rx.recv() else {
            panic!("a compaction");
        };
        // The writer's success with it clears the fault: it holds what was dropped.
        j.shared.trouble(|t| t.compacted(job));
        assert_eq!(stats.journal_failing.load(Ordering::Relaxed), 0);
        assert!(stats.health.problems().is_empty());
        // The broker's own thing is not journaled.
        j.append(&[update("thingsbus.broker")], 4);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn appends_are_left_to_the_compaction_the_writer_asks_for() {
        let (mut j, rx, _) = stalled(8);
        j.shared.request_compaction(Duration::from_secs(3600));
        assert!(!j.wants_compaction(), "not before its pause");
        j.append(&[update("a.one")], 1);
        assert!(rx.try_recv().is_err(), "the writer would discard it");
        j.shared.request_compaction(Duration::ZERO);
        assert!(j.wants_compaction());
        j.compact(&Directory::new(), "thingsbus.broker");
        assert!(!j.wants_compaction(), "answered");
        j.append(&[update("a.two")], 2);
        assert!(matches!(rx.try_recv(), Ok(Job::Compact(..))));
        assert!(matches!(rx.try_recv(), Ok(Job::Append(..))));
    }

    #[test]
    fn the_fault_names_every_trouble_and_a_later_compaction_clears_it() {
        let mut t = Trouble::default();
        assert_eq!(t.fault(), None);
        t.failed = Some("appending to /s failed: No space left on device".into());
        t.dropped = Some((3, 7));
        let fault = t.fault().expect("a fault");
        assert!(fault.starts_with("appending to /s failed: No space left on device; 3 batches"));
        assert!(fault.ends_with("would not survive a restart"), "{fault}");
        // A compaction handed over before the last drop clears the failure, not the drop.
        t.compacted(7);
        assert_eq!(t.failed, None);
        assert_eq!(t.dropped, Some((3, 7)));
        t.compacted(8);
        assert_eq!(t, Trouble::default());
        // A writer that is gone stays a fault.
        t.writer_gone = true;
        t.compacted(9);
        assert!(t.fault().is_some_and(|f| f.contains("writer stopped")));
    }
}
