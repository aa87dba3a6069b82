//! The journal's writer thread: appends batches, syncs them, rewrites the file on compaction,
//! and, after a failure, appends nothing until a compaction has rewritten what was missed.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{encode_record, MAGIC};
use super::{Job, Shared};
use crate::health::Beat;
use crate::stats;

/// The first pause before a failed compaction is tried again; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// The writer's loop turns (and beats) at least this often.
const TURN: Duration = Duration::from_secs(1);

/// How long to wait before the next compaction after `failures` failed in a row.
fn pause_after(failures: u32) -> Duration {
    FIRST_PAUSE
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_PAUSE)
}

/// The file as the writer uses it: a trait, so that its rules can be tested on a file that
/// fails on cue.
pub(super) trait Store {
    /// Writes `bytes` at the end.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Cuts the file to `len` bytes; the next append goes there.
    fn cut(&mut self, len: u64) -> io::Result<()>;
    /// Makes what was written durable.
    fn sync(&mut self) -> io::Result<()>;
}

impl Store for File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    fn cut(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        self.seek(SeekFrom::Start(len)).map(|_| ())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// The file being appended to: its length in whole records and what is not yet durable.
pub(super) struct Tail<S> {
    /// `None` after a failure: nothing is appended until the file is replaced.
    store: Option<S>,
    /// Bytes of whole records: where the next append goes.
    len: u64,
    /// The `seq` of the last batch written and not yet synced.
    unsynced: Option<u64>,
}

/// An append that failed.
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) error: io::Error,
    /// The batches written before it, synced now: the `seq` a restart reads back up to.
    pub(super) synced: Option<u64>,
    /// Cutting the torn batch off failed too.
    pub(super) cut: Option<io::Error>,
}

impl<S: Store> Tail<S> {
    pub(super) fn none() -> Self {
        Tail {
            store: None,
            len: 0,
            unsynced: None,
        }
    }

    /// A new file of `len` bytes, all durable.
    pub(super) fn replaced(store: S, len: u64) -> Self {
        Tail {
            store: Some(store),
            len,
            unsynced: None,
        }
    }

    /// Whether appends go anywhere.
    pub(super) fn usable(&self) -> bool {
        self.store.is_some()
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    pub(super) fn unsynced(&self) -> Option<u64> {
        self.unsynced
    }

    /// Appends whole records ending at `seq`. When that fails, the file is cut back to its last
    /// whole record (never is a record appended behind a torn one), what came before is synced,
    /// and the file is given up until replaced.
    pub(super) fn append(&mut self, bytes: &[u8], seq: u64) -> Result<(), Failed> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let error = match store.append(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.unsynced = Some(seq);
                return Ok(());
            }
            Err(e) => e,
        };
        let mut store = self.store.take().expect("checked above");
        let cut = store.cut(self.len).err();
        // Only a clean file may be called durable.
        let synced = match (&cut, self.unsynced.take()) {
            (None, Some(seq)) => store.sync().ok().map(|()| seq),
            _ => None,
        };
        Err(Failed { error, synced, cut })
    }

    /// Makes what was appended durable: the `seq` it reaches, if anything was waiting. After
    /// a failed sync the file is given up (what the kernel kept of it is not known).
    pub(super) fn sync(&mut self) -> io::Result<Option<u64>> {
        let (Some(store), Some(seq)) = (self.store.as_mut(), self.unsynced) else {
            return Ok(None);
        };
        match store.sync() {
            Ok(()) => {
                self.unsynced = None;
                Ok(Some(seq))
            }
            Err(e) => {
                self.store = None;
                self.unsynced = None;
                Err(e)
            }
        }
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    path: PathBuf,
    tail: Tail<File>,
    fsync_interval: Duration,
    shared: Arc<Shared>,
    rx: Receiver<Job>,
    stop: Arc<AtomicBool>,
    /// Failures in a row (a compaction that works resets it).
    failures: u32,
    errors_logged: u64,
    buf: Vec<u8>,
}

impl Writer {
    pub(super) fn new(
        path: PathBuf,
        fsync_interval: Duration,
        shared: Arc<Shared>,
        rx: Receiver<Job>,
        stop: Arc<AtomicBool>,
    ) -> Writer {
        Writer {
            path,
            tail: Tail::none(),
            fsync_interval,
            shared,
            rx,
            stop,
            failures: 0,
            errors_logged: 0,
            buf: Vec::with_capacity(1 << 16),
        }
    }

    /// Runs until the journal is dropped; then waits for the broker's stop flag, so that an
    /// ingest thread that died is reported as such, not as a journal that stopped.
    pub(crate) fn run(mut self) {
        let heart = self.shared.stats.health.beat("thingsbus-journal");
        let mut next_sync = Instant::now() + self.fsync_interval;
        loop {
            heart.beat();
            let wait = match self.tail.unsynced() {
                Some(_) => next_sync.saturating_duration_since(Instant::now()),
                None => TURN,
            };
            match self.rx.recv_timeout(wait.min(TURN)) {
                Ok(Job::Append(records, seq, bytes)) => {
                    self.shared
                        .queued
                        .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
                    self.append(&records, seq);
                }
                Ok(Job::Compact(records, seq, job)) => self.compact(&records, seq, job, &heart),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.sync();
                    tracing::debug!("journal writer stopped");
                    crate::server::upstream_gone(&self.stop);
                    return;
                }
            }
            if self.tail.unsynced().is_none() {
                next_sync = Instant::now() + self.fsync_interval;
            } else if Instant::now() >= next_sync {
                self.sync();
                next_sync = Instant::now() + self.fsync_interval;
            }
        }
    }

    fn append(&mut self, records: &[Arc<[u8]>], seq: u64) {
        if !self.tail.usable() {
            // Given up after a failure: the compaction asked for will hold these.
            return;
        }
        self.buf.clear();
        for r in records {
            encode_record(&mut self.buf, r);
        }
        match self.tail.append(&self.buf, seq) {
            Ok(()) => {
                stats::set(&self.shared.stats.journal_bytes, self.tail.len());
                stats::add(&self.shared.stats.journal_records, records.len() as u64);
            }
            Err(failed) => {
                if let Some(seq) = failed.synced {
                    stats::set(&self.shared.stats.journal_synced_seq, seq);
                }
                if let Some(e) = &failed.cut {
                    tracing::error!(path = %self.path.display(), error = %e,
                        "cutting the torn batch off the state file failed too; nothing is appended to it until a compaction replaces it");
                }
                self.failed("appending to", &failed.error, Duration::ZERO);
            }
        }
    }

    fn sync(&mut self) {
        match self.tail.sync() {
            Ok(Some(seq)) => stats::set(&self.shared.stats.journal_synced_seq, seq),
            Ok(None) => {}
            Err(e) => self.failed("syncing", &e, Duration::ZERO),
        }
    }

    /// Replaces the file with the directory as of `seq` (handed over as job number `job`).
    fn compact(&mut self, records: &[Arc<[u8]>], seq: u64, job: u64, heart: &Beat) {
        // The compaction supersedes whatever of the old file is not yet durable.
        self.tail = Tail::none();
        let tmp = PathBuf::from(format!("{}.compacting", self.path.display()));
        match self.rewrite(&tmp, records, heart) {
            Ok((file, bytes)) => {
                self.tail = Tail::replaced(file, bytes);
                self.failures = 0;
                stats::set(&self.shared.stats.journal_synced_seq, seq);
                stats::set(&self.shared.stats.journal_bytes, bytes);
                stats::add(&self.shared.stats.journal_compactions, 1);
                if self.errors_logged > 0 {
                    tracing::info!(path = %self.path.display(), seq,
                        "the state file was rewritten and holds everything again");
                    self.errors_logged = 0;
                }
                self.shared.trouble(|t| t.compacted(job));
            }
            Err(e) => {
                // Do not leave a half-written copy taking the space a retry needs.
                let _ = std::fs::remove_file(&tmp);
                self.failures = self.failures.saturating_add(1);
                self.failed("rewriting", &e, pause_after(self.failures));
            }
        }
    }

    /// Writes the whole directory beside the file, makes it durable, and renames it over.
    fn rewrite(
        &mut self,
        tmp: &PathBuf,
        records: &[Arc<[u8]>],
        heart: &Beat,
    ) -> io::Result<(File, u64)> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)?;
        self.buf.clear();
        self.buf.extend_from_slice(MAGIC);
        let mut bytes = 0;
        for (i, r) in records.iter().enumerate() {
            encode_record(&mut self.buf, r);
            if self.buf.len() >= 1 << 16 {
                file.write_all(&self.buf)?;
                bytes += self.buf.len() as u64;
                self.buf.clear();
            }
            if i % 4096 == 0 {
                heart.beat();
            }
        }
        file.write_all(&self.buf)?;
        bytes += self.buf.len() as u64;
        self.buf.clear();
        file.sync_all()?;
        std::fs::rename(tmp, &self.path)?;
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        Ok((file, bytes))
    }

    /// A write failed: count it, show it, and ask for a compaction after `pause`.
    fn failed(&mut self, what: &str, e: &io::Error, pause: Duration) {
        self.tail = Tail::none();
        stats::add(&self.shared.stats.journal_errors, 1);
        let synced = self
            .shared
            .stats
            .journal_synced_seq
            .load(std::sync::atomic::Ordering::Relaxed);
        let why = format!(
            "{what} {} failed: {e} (a restart reads back up to seq {synced})",
            self.path.display()
        );
        self.shared.trouble(|t| t.failed = Some(why));
        self.shared.request_compaction(pause);
        self.errors_logged += 1;
        if self.errors_logged <= 10 || self.errors_logged.is_power_of_two() {
            tracing::error!(path = %self.path.display(), error = %e, errors = self.errors_logged,
                retry_in_ms = pause.as_millis() as u64,
                "{what} the state file failed; the broker keeps serving and rewrites the file once it can, but what it accepts until then would not survive a restart");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::parse;
    use super::*;
    use thingsbus_protocol::codec::UPDATE_PREFIX;

    /// A file in memory with `room` bytes left, failing like a full disk (a short write, then
    /// an error).
    struct Disk {
        bytes: Vec<u8>,
        durable: usize,
        room: usize,
        cut_fails: bool,
        sync_fails: bool,
    }

    impl Disk {
        fn new(room: usize) -> Disk {
            Disk {
                bytes: MAGIC.to_vec(),
                durable: MAGIC.len(),
                room,
                cut_fails: false,
                sync_fails: false,
            }
        }

        fn tail(&mut self) -> Tail<&mut Disk> {
            let len = self.bytes.len() as u64;
            Tail::replaced(self, len)
        }
    }

    impl Store for &mut Disk {
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            let n = bytes.len().min(self.room);
            self.bytes.extend_from_slice(&bytes[..n]);
            self.room -= n;
            if n < bytes.len() {
                return Err(io::Error::other("no space left"));
            }
            Ok(())
        }

        fn cut(&mut self, len: u64) -> io::Result<()> {
            if self.cut_fails {
                return Err(io::Error::other("I/O error"));
            }
            let len = len as usize;
            self.room += self.bytes.len().saturating_sub(len);
            self.bytes.truncate(len);
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            if self.sync_fails {
                return Err(io::Error::other("I/O error"));
            }
            self.durable = self.bytes.len();
            Ok(())
        }
    }

    fn batch(names: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in names {
            let mut u = UPDATE_PREFIX.to_vec();
            u.extend_from_slice(format!("\"ns\":\"{n}\"}}").as_bytes());
            encode_record(&mut out, &u);
        }
        out
    }

    #[test]
    fn appends_are_durable_only_once_synced() {
        let mut disk = Disk::new(1000);
        let mut t = disk.tail();
        t.append(&batch(&["a", "b"]), 2).expect("room");
        t.append(&batch(&["c"]), 3).expect("room");
        assert_eq!(t.unsynced(), Some(3));
        assert_eq!(t.sync().expect("syncs"), Some(3));
        assert_eq!(t.sync().expect("nothing to sync"), None);
        let len = t.len();
        assert_eq!(disk.durable, disk.bytes.len());
        assert_eq!(len, disk.bytes.len() as u64);
        assert_eq!(parse(&disk.bytes).records.len(), 3);
    }

    #[test]
    fn a_failed_append_is_cut_off_what_came_before_is_synced_and_nothing_follows() {
        let first = batch(&["a"]);
        let mut disk = Disk::new(first.len() + 10);
        let mut t = disk.tail();
        t.append(&first, 1).expect("room");
        let failed = t.append(&batch(&["b", "c"]), 3).expect_err("disk full");
        assert_eq!(failed.synced, Some(1), "the batch before is durable");
        assert!(failed.cut.is_none());
        assert!(!t.usable());
        // Nothing more goes to the file.
        assert!(t.append(&batch(&["d"]), 4).is_ok());
        assert_eq!(t.sync().expect("nothing"), None);
        // The file ends with its last whole record, all of it durable.
        let mut expect = MAGIC.to_vec();
        expect.extend_from_slice(&first);
        assert_eq!(disk.bytes, expect);
        assert_eq!(disk.durable, expect.len());
        let r = parse(&disk.bytes);
        assert!(r.tail.is_none() && r.skipped.is_empty());
    }

    #[test]
    fn when_cutting_or_syncing_fails_nothing_more_is_called_durable() {
        let first = batch(&["a"]);
        let mut disk = Disk::new(first.len() + 5);
        disk.cut_fails = true;
        let mut t = disk.tail();
        t.append(&first, 1).expect("room");
        let failed = t.append(&batch(&["b"]), 2).expect_err("full");
        assert!(failed.cut.is_some());
        assert_eq!(failed.synced, None, "a torn file is not synced as good");
        assert!(!t.usable());
        assert_eq!(disk.durable, MAGIC.len());

        let mut disk = Disk::new(1000);
        let mut t = disk.tail();
        t.append(&first, 1).expect("room");
        t.store.as_mut().expect("usable").sync_fails = true;
        assert!(t.sync().is_err());
        assert!(
            !t.usable(),
            "after a failed fsync the file is rewritten, not trusted"
        );
        assert_eq!(t.unsynced(), None);
    }

    #[test]
    fn failed_compactions_are_retried_after_a_growing_pause() {
        assert_eq!(pause_after(1), FIRST_PAUSE);
        assert_eq!(pause_after(2), FIRST_PAUSE * 2);
        assert_eq!(pause_after(3), FIRST_PAUSE * 4);
        assert_eq!(pause_after(20), MAX_PAUSE);
        assert_eq!(pause_after(u32::MAX), MAX_PAUSE);
    }
}
