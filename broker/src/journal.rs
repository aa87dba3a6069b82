//! Persistence (`--state-file`): a write-ahead journal of accepted updates, compacted from time
//! to time, so the directory survives a restart and a `kill -9`.
//!
//! The file is an 8-byte magic followed by records, each `len: u32 LE`, `crc32: u32 LE`, then
//! `len` bytes: one update exactly as the broker published it (`ns`, `data`, `ts`,
//! `documentation_url`, `seq`). Later records of a thing supersede earlier ones.
//!
//! The ingest thread hands each published batch to a writer thread, which appends it and makes it
//! durable (`fdatasync`) at most every `fsync_interval`; [`crate::Stats::journal_synced_seq`] says
//! up to which `seq` the file is known durable. When the appended bytes outgrow the last
//! compaction, ingest sends the whole directory (shared pointers, as for a snapshot) and the writer
//! replaces the file with it atomically (write aside, `fsync`, rename, `fsync` the folder).
//!
//! Reading stops at the first record that is cut short or fails its checksum: everything before
//! it is restored, the rest is reported and dropped, never a refusal to start. A file without the
//! magic is moved aside, not overwritten.
//!
//! A plain file rather than an embedded store: the directory is one small value per thing, always
//! held in memory, and a journal of the exact published bytes needs no second encoding, no schema
//! and no dependency beyond a checksum.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thingsbus_protocol::codec::UPDATE_PREFIX;
use thingsbus_protocol::{Directory, Timestamp};

use crate::stats::{self, Stats};

const MAGIC: &[u8; 8] = b"TBJRNL01";
/// A record longer than this is taken for garbage.
const MAX_RECORD: u32 = 64 << 20;
/// Compaction waits until the journal has grown by at least this much.
const MIN_COMPACT_GROWTH: u64 = 4 << 20;
/// Batches that may wait for the writer before new ones are dropped (and a compaction scheduled).
const QUEUE: usize = 4096;

/// What reading a journal found.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Records read and checked.
    pub(crate) records: Vec<Vec<u8>>,
    /// Bytes of the file that held good records (magic included).
    pub(crate) good_bytes: u64,
    /// The file's size.
    pub(crate) file_bytes: u64,
    /// Why reading stopped early, if it did.
    pub(crate) damage: Option<String>,
    /// The file did not start with the magic: nothing in it was used.
    pub(crate) foreign: bool,
}

/// Reads every good record of the journal at `path` (none if it does not exist).
pub(crate) fn read(path: &Path) -> io::Result<Recovery> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Recovery::default()),
        Err(e) => return Err(e),
    }
    Ok(parse(&bytes))
}

fn parse(bytes: &[u8]) -> Recovery {
    let mut r = Recovery {
        file_bytes: bytes.len() as u64,
        ..Recovery::default()
    };
    if bytes.is_empty() {
        return r;
    }
    if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        r.foreign = true;
        r.damage = Some("not a thingsbus state file (no magic at the start)".into());
        return r;
    }
    let mut pos = MAGIC.len();
    while pos < bytes.len() {
        let Some(head) = bytes.get(pos..pos + 8) else {
            r.damage = Some(format!("record header cut short at byte {pos}"));
            break;
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD {
            r.damage = Some(format!("impossible record length {len} at byte {pos}"));
            break;
        }
        let start = pos + 8;
        let Some(body) = bytes.get(start..start + len as usize) else {
            r.damage = Some(format!("record cut short at byte {pos}"));
            break;
        };
        if crc32fast::hash(body) != crc {
            r.damage = Some(format!("checksum mismatch in the record at byte {pos}"));
            break;
        }
        r.records.push(body.to_vec());
        pos = start + len as usize;
    }
    r.good_bytes = if r.damage.is_some() {
        pos as u64
    } else {
        bytes.len() as u64
    };
    r
}

fn append_record(out: &mut impl Write, body: &[u8]) -> io::Result<u64> {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&crc32fast::hash(body).to_le_bytes())?;
    out.write_all(body)?;
    Ok(8 + body.len() as u64)
}

/// Builds the directory from the journal at `path`, saying what it found.
pub(crate) fn restore(
    path: &Path,
    now: Timestamp,
    live_window: f64,
    forget_after: f64,
    skip_ns: &str,
) -> io::Result<Directory> {
    let recovery = read(path)?;
    if recovery.foreign {
        let aside = path.with_extension(format!("corrupt-{}", now.as_secs() as u64));
        std::fs::rename(path, &aside)?;
        tracing::warn!(
            path = %path.display(),
            moved_to = %aside.display(),
            "the state file is not a thingsbus journal; it was moved aside and the broker starts empty"
        );
    } else if let Some(damage) = &recovery.damage {
        tracing::warn!(
            path = %path.display(),
            %damage,
            kept_records = recovery.records.len(),
            lost_bytes = recovery.file_bytes - recovery.good_bytes,
            "the state file is damaged (a crash while writing?); restored up to the last good record"
        );
    }
    let mut dir = Directory::new();
    let (mut kept, mut bad) = (0usize, 0usize);
    for record in &recovery.records {
        let ns = thingsbus_protocol::codec::encoded_update_ns(record);
        if std::str::from_utf8(ns)
            .is_ok_and(|ns| thingsbus_protocol::namespace::is_within_str(ns, skip_ns))
        {
            continue;
        }
        match dir.restore(record, now, live_window, forget_after) {
            Ok(true) => kept += 1,
            Ok(false) => {}
            Err(_) => bad += 1,
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
    let _ = kept;
    Ok(dir)
}

enum Job {
    /// Updates published since the last batch, and the `seq` of the last of them.
    Append(Vec<Arc<[u8]>>, u64),
    /// The whole directory as of `seq`: it replaces the file.
    Compact(Vec<Arc<[u8]>>, u64),
}

/// The ingest thread's end of the journal.
pub(crate) struct Journal {
    tx: SyncSender<Job>,
    since_compaction: u64,
    last_compaction: u64,
    /// A batch was dropped: the file misses something until the next compaction.
    need_compaction: bool,
    stats: Arc<Stats>,
}

impl Journal {
    /// Starts the writer thread for `path`; the first job rewrites the file with `dir`.
    pub(crate) fn start(
        path: PathBuf,
        fsync_interval: Duration,
        dir: &Directory,
        skip_ns: &str,
        stats: Arc<Stats>,
    ) -> io::Result<(Journal, std::thread::JoinHandle<()>)> {
        // Fail at start, with the path, rather than in the writer thread later.
        OpenOptions::new().create(true).append(true).open(&path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = Writer {
            path,
            file: None,
            fsync_interval,
            stats: stats.clone(),
            errors_logged: 0,
        };
        let thread = std::thread::Builder::new()
            .name("thingsbus-journal".into())
            .spawn(move || writer.run(&rx))?;
        let mut journal = Journal {
            tx,
            since_compaction: 0,
            last_compaction: 0,
            need_compaction: false,
            stats,
        };
        journal.compact(dir, skip_ns);
        Ok((journal, thread))
    }

    /// Journals a published batch (only its updates are kept); `seq` is the directory's now.
    pub(crate) fn append(&mut self, batch: &[Arc<[u8]>], seq: u64) {
        let records: Vec<Arc<[u8]>> = batch
            .iter()
            .filter(|b| b.starts_with(UPDATE_PREFIX))
            .cloned()
            .collect();
        if records.is_empty() {
            return;
        }
        let bytes: u64 = records.iter().map(|r| 8 + r.len() as u64).sum();
        match self.tx.try_send(Job::Append(records, seq)) {
            Ok(()) => self.since_compaction += bytes,
            Err(TrySendError::Full(_)) => {
                stats::add(&self.stats.journal_dropped, 1);
                self.need_compaction = true;
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// True when the journal has grown enough (or lost a batch) to be rewritten.
    pub(crate) fn wants_compaction(&self) -> bool {
        self.need_compaction || self.since_compaction > MIN_COMPACT_GROWTH.max(self.last_compaction)
    }

    /// Replaces the file with the directory as it is now.
    pub(crate) fn compact(&mut self, dir: &Directory, skip_ns: &str) {
        let records: Vec<Arc<[u8]>> = dir
            .iter()
            .filter(|(ns, _)| !thingsbus_protocol::namespace::is_within_str(ns.as_str(), skip_ns))
            .map(|(_, e)| e.encoded.clone())
            .collect();
        let bytes: u64 = records.iter().map(|r| 8 + r.len() as u64).sum();
        // Waits if the writer is behind: a compaction must not be lost.
        if self.tx.send(Job::Compact(records, dir.seq())).is_ok() {
            self.need_compaction = false;
            self.since_compaction = 0;
            self.last_compaction = bytes;
        }
    }
}

struct Writer {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    fsync_interval: Duration,
    stats: Arc<Stats>,
    errors_logged: u64,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Job>) {
        let mut dirty_seq: Option<u64> = None;
        let mut next_sync = Instant::now() + self.fsync_interval;
        loop {
            let wait = next_sync.saturating_duration_since(Instant::now());
            let job = match rx.recv_timeout(if dirty_seq.is_some() {
                wait
            } else {
                Duration::from_secs(3600)
            }) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    if let Some(seq) = dirty_seq {
                        self.sync(seq);
                    }
                    tracing::debug!("journal writer stopped");
                    return;
                }
            };
            match job {
                Some(Job::Append(records, seq)) => {
                    let result = self.append(&records);
                    match result {
                        Ok(()) => dirty_seq = Some(seq),
                        Err(e) => self.failed("appending to", &e),
                    }
                }
                Some(Job::Compact(records, seq)) => match self.compact(&records) {
                    Ok(bytes) => {
                        dirty_seq = None;
                        stats::set(&self.stats.journal_synced_seq, seq);
                        stats::set(&self.stats.journal_bytes, bytes);
                        stats::add(&self.stats.journal_compactions, 1);
                        self.stats.health.set_fault("journal", None);
                    }
                    Err(e) => self.failed("rewriting", &e),
                },
                None => {}
            }
            if let Some(seq) = dirty_seq {
                if Instant::now() >= next_sync {
                    self.sync(seq);
                    dirty_seq = None;
                    next_sync = Instant::now() + self.fsync_interval;
                }
            }
        }
    }

    fn append(&mut self, records: &[Arc<[u8]>]) -> io::Result<()> {
        if self.file.is_none() {
            let f = OpenOptions::new().append(true).open(&self.path)?;
            self.file = Some(BufWriter::with_capacity(1 << 16, f));
        }
        let file = self.file.as_mut().expect("opened above");
        let mut bytes = 0;
        for r in records {
            bytes += append_record(file, r)?;
        }
        stats::add(&self.stats.journal_bytes, bytes);
        stats::add(&self.stats.journal_records, records.len() as u64);
        Ok(())
    }

    fn sync(&mut self, seq: u64) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let result = file.flush().and_then(|()| file.get_ref().sync_data());
        match result {
            Ok(()) => {
                stats::set(&self.stats.journal_synced_seq, seq);
                self.stats.health.set_fault("journal", None);
            }
            Err(e) => self.failed("syncing", &e),
        }
    }

    /// Writes the whole directory beside the file, makes it durable, and renames it over.
    fn compact(&mut self, records: &[Arc<[u8]>]) -> io::Result<u64> {
        if let Some(mut f) = self.file.take() {
            // What is buffered is superseded by this compaction; flush it anyway so nothing
            // half-written stays behind in the old file.
            let _ = f.flush();
        }
        let tmp = self.path.with_extension("compacting");
        let mut out = BufWriter::with_capacity(1 << 16, File::create(&tmp)?);
        out.write_all(MAGIC)?;
        let mut bytes = MAGIC.len() as u64;
        for r in records {
            bytes += append_record(&mut out, r)?;
        }
        let f = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        Ok(bytes)
    }

    fn failed(&mut self, what: &str, e: &io::Error) {
        stats::add(&self.stats.journal_errors, 1);
        self.stats.health.set_fault(
            "journal",
            Some(format!("{what} {} failed: {e}", self.path.display())),
        );
        // The file handle may be broken: reopen on the next append.
        self.file = None;
        self.errors_logged += 1;
        if self.errors_logged <= 10 || self.errors_logged.is_power_of_two() {
            tracing::error!(path = %self.path.display(), error = %e, errors = self.errors_logged,
                "{what} the state file failed; the broker keeps serving, but what it accepts now may not survive a restart");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(records: &[&[u8]]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for r in records {
            append_record(&mut out, r).unwrap();
        }
        out
    }

    #[test]
    fn good_records_come_back_and_a_damaged_tail_is_cut() {
        let file = journal(&[b"one", b"two", b"three"]);
        let r = parse(&file);
        assert_eq!(
            r.records,
            [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert!(r.damage.is_none());
        assert_eq!(r.good_bytes, file.len() as u64);

        // Cut anywhere inside the last record: the first two stay.
        for cut in file.len() - 12..file.len() {
            let r = parse(&file[..cut]);
            assert_eq!(r.records.len(), 2, "cut at {cut}");
            assert!(r.damage.is_some());
        }
        // A flipped bit in the second record: only the first stays.
        let mut flipped = file.clone();
        let second = MAGIC.len() + 8 + 3 + 8;
        flipped[second] ^= 0x20;
        assert_eq!(parse(&flipped).records, [b"one".to_vec()]);
        // An absurd length.
        let mut absurd = journal(&[b"one"]);
        absurd.extend_from_slice(&u32::MAX.to_le_bytes());
        absurd.extend_from_slice(&[0; 4]);
        assert_eq!(parse(&absurd).records.len(), 1);
        // Not ours at all.
        let r = parse(b"hello world, this is not a journal");
        assert!(r.foreign && r.records.is_empty());
        assert!(parse(b"").damage.is_none());
    }
}
