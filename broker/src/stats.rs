//! The broker's counters, shared read-only with whoever wants to look (tests, metrics).

use std::sync::atomic::{AtomicU64, Ordering};

use thingsbus_protocol::Rejection;

/// Counters kept by the broker. All are totals since start except the gauges `things`,
/// `input_connections` and `subscribers`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Updates accepted and republished.
    pub accepted: AtomicU64,
    /// Input messages rejected, indexed like [`Rejection::ALL`].
    rejected: [AtomicU64; 32],
    /// Input bytes received (ZMQ frames and UDP datagrams).
    pub bytes_in: AtomicU64,
    /// Bytes handed to the directory output (updates and snapshot chunks).
    pub bytes_out: AtomicU64,
    /// Messages handed to the directory output.
    pub messages_out: AtomicU64,
    /// Things currently held (gauge).
    pub things: AtomicU64,
    /// Things removed because their last `ts` was older than `forget_after`.
    pub forgotten: AtomicU64,
    /// Snapshots published.
    pub snapshots: AtomicU64,
    /// Snapshot chunks published.
    pub snapshot_chunks: AtomicU64,
    /// Snapshot entries left out because a newer live update for the thing went out while the
    /// snapshot was being sent.
    pub snapshot_entries_superseded: AtomicU64,
    /// ZMQ input connections open now (gauge).
    pub input_connections: AtomicU64,
    /// ZMQ input connections closed, by the peer or by libzmq (for example after a frame larger
    /// than `max_message_bytes`, which libzmq refuses before reading it).
    pub input_disconnects: AtomicU64,
    /// Directory subscribers connected now (gauge).
    pub subscribers: AtomicU64,
    /// Snapshot requests accepted on the snapshot endpoint.
    pub snapshot_requests: AtomicU64,
    /// Snapshot requests refused (malformed, or too many at once).
    pub snapshot_request_errors: AtomicU64,
    /// Snapshot replies sent completely.
    pub snapshot_replies: AtomicU64,
    /// Snapshot replies abandoned (client gone, or not read within 30 s).
    pub snapshot_replies_dropped: AtomicU64,
    /// Total time from request to last chunk sent, over all replies, in microseconds.
    pub snapshot_reply_micros: AtomicU64,
    /// `thing_expired` events published.
    pub expired: AtomicU64,
    /// The command endpoint's counters.
    pub commands: crate::CommandStats,
    /// The cluster link's counters (with `--cluster`).
    pub cluster: ClusterStats,
    /// UDP datagrams the kernel dropped because the input socket's buffer was full (the broker
    /// was behind); read from `/proc/net/udp` on Linux, 0 elsewhere.
    pub udp_drops: AtomicU64,
    /// With `--state-file`: the `seq` up to which the state file is known durable (fsynced).
    pub journal_synced_seq: AtomicU64,
    /// With `--state-file`: its size in bytes.
    pub journal_bytes: AtomicU64,
    /// With `--state-file`: updates appended to it.
    pub journal_records: AtomicU64,
    /// With `--state-file`: times it was rewritten from the directory.
    pub journal_compactions: AtomicU64,
    /// With `--state-file`: writes or syncs that failed (disk full, I/O error).
    pub journal_errors: AtomicU64,
    /// With `--state-file`: batches not journaled because the writer fell behind (the next
    /// compaction makes up for them).
    pub journal_dropped: AtomicU64,
}

const _: () = assert!(Rejection::ALL.len() <= 32, "grow Stats::rejected");

impl Stats {
    /// Counts one rejected message.
    pub fn reject(&self, reason: Rejection) {
        if let Some(i) = Rejection::ALL.iter().position(|r| *r == reason) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Messages rejected for `reason`.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        Rejection::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.rejected[i].load(Ordering::Relaxed))
    }

    /// Messages rejected for any reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Every reason with its count.
    pub fn rejected_by_reason(&self) -> impl Iterator<Item = (Rejection, u64)> + '_ {
        Rejection::ALL.iter().map(|r| (*r, self.rejected(*r)))
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn set(gauge: &AtomicU64, v: u64) {
    gauge.store(v, Ordering::Relaxed);
}

pub(crate) fn dec(gauge: &AtomicU64) {
    // Saturating: a disconnect seen without its accept must not wrap the gauge.
    let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
}

/// Counters of the cluster link.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Values written to the bucket (after conflation).
    pub writes: AtomicU64,
    /// Local updates that a newer value of the same thing replaced before they were written.
    pub conflated: AtomicU64,
    /// Writes that failed (and are retried).
    pub write_errors: AtomicU64,
    /// Things waiting to be written now (gauge).
    pub pending: AtomicU64,
    /// Values from other brokers applied here.
    pub applied: AtomicU64,
    /// Values from other brokers not applied because the local value is newer.
    pub older: AtomicU64,
    /// 1 while connected to NATS (gauge).
    pub connected: AtomicU64,
    /// Times the whole bucket was loaded again because it was younger than what this broker had
    /// seen (NATS lost its storage).
    pub reloads: AtomicU64,
}
