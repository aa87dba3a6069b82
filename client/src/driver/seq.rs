//! What the broker's sequence numbers and snapshots mean for the mirror, without sockets: a
//! [`SeqTracker`] takes each live `seq` and each snapshot's header and says whether to apply it,
//! drop it, or ask for a snapshot; the receive thread carries that out.
//!
//! The rules:
//! - live `seq`s follow each other by one; a jump forward is a **gap** (updates were lost): apply
//!   the update and ask for a snapshot;
//! - a `seq` at or below the last one means the broker **restarted**: a new run begins (values of
//!   the old run no longer order against the new ones), apply it and ask for a snapshot;
//! - a live update at or below the `seq` a snapshot reply was consistent with is already in that
//!   reply: **skip** it (it was still on its way when the reply was made);
//! - a reply from another broker run (its `epoch` changed) also begins a new run;
//! - a periodic snapshot sent in chunks fills the mirror only if every one of its chunks was
//!   seen, in order: one **joined midway** does not.

use thingsbus_protocol::codec::PublishedSnapshot;

/// What to do with a live update, by its `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Live {
    /// Apply it.
    Apply,
    /// Already in the last snapshot reply: drop it.
    Skip,
    /// Apply it and ask for a snapshot: `missed` updates were lost before it.
    Gap { missed: u64 },
    /// Apply it and ask for a snapshot: the broker started over (`last` was the seq before); a
    /// new run begins.
    Restart { last: u64 },
}

impl Live {
    /// True when the update goes into the mirror.
    pub(crate) fn applies(self) -> bool {
        self != Live::Skip
    }

    /// True when the mirror must be resynchronised with a snapshot.
    pub(crate) fn wants_snapshot(self) -> bool {
        matches!(self, Live::Gap { .. } | Live::Restart { .. })
    }
}

/// What a snapshot message says about its place, read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Header {
    /// A reply to a snapshot request (else a periodic snapshot).
    pub(crate) reply: bool,
    /// The broker run.
    pub(crate) epoch: Option<u64>,
    /// The snapshot's number within the run.
    pub(crate) id: Option<u64>,
    /// This chunk's index (absent: a whole 0.2.x snapshot).
    pub(crate) chunk: Option<u64>,
    /// The last (or only) chunk.
    pub(crate) complete: bool,
    /// The live `seq` the snapshot is consistent with.
    pub(crate) seq: Option<u64>,
}

impl Header {
    pub(crate) fn of(s: &PublishedSnapshot<'_>) -> Self {
        Header {
            reply: s.request.is_some(),
            epoch: s.epoch,
            id: s.id,
            chunk: s.chunk,
            complete: s.is_complete(),
            seq: s.seq,
        }
    }
}

/// What to do with a snapshot message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Snapshot {
    /// A chunk of a reply to this client's request: apply its entries (never over a value with
    /// the same or a newer `seq` of this run); `last` ends the reply, which fills the mirror.
    Reply { generation: u64, last: bool },
    /// A periodic snapshot (or a chunk of one): apply its entries as 0.2.x does; `filled` when
    /// it ends a snapshot this client saw whole.
    Periodic { generation: u64, filled: bool },
}

/// Which periodic snapshot a chunk belongs to: the broker run and the snapshot's number in it.
type SnapshotKey = (Option<u64>, Option<u64>);

/// The state behind those rules.
#[derive(Debug, Default)]
pub(crate) struct SeqTracker {
    /// Counts broker runs as this client sees them (restarts, fail-overs).
    generation: u64,
    /// The last live seq seen.
    live_last: u64,
    /// The seq the last snapshot reply was consistent with: live updates up to it are in it.
    covered: u64,
    /// The broker run the last snapshot reply came from.
    epoch: Option<u64>,
    /// The periodic snapshot being received in chunks, and the chunk that must come next for it
    /// to be whole.
    periodic: Option<(SnapshotKey, u64)>,
}

impl SeqTracker {
    /// The broker run values are applied under now.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The broker restarted, or the client moved to another: sequence numbers start over.
    pub(crate) fn new_run(&mut self) {
        self.generation += 1;
        self.live_last = 0;
        self.covered = 0;
    }

    /// A live update with this `seq`.
    pub(crate) fn live(&mut self, seq: u64) -> Live {
        if self.live_last != 0 && seq <= self.live_last {
            let last = self.live_last;
            self.new_run();
            self.live_last = seq;
            return Live::Restart { last };
        }
        let newest = self.live_last.max(self.covered);
        self.live_last = seq;
        if seq <= self.covered {
            return Live::Skip;
        }
        if newest != 0 && seq > newest + 1 {
            return Live::Gap {
                missed: seq - newest - 1,
            };
        }
        Live::Apply
    }

    /// A snapshot message with this header.
    pub(crate) fn snapshot(&mut self, h: &Header) -> Snapshot {
        if !h.reply {
            let filled = self.periodic_seen_whole(h);
            return Snapshot::Periodic {
                generation: self.generation,
                filled,
            };
        }
        if h.epoch.is_some() {
            if self.epoch.is_some() && h.epoch != self.epoch {
                self.new_run();
            }
            self.epoch = h.epoch;
        }
        let generation = self.generation;
        if h.complete {
            // Live updates up to the snapshot's seq are in it.
            if let Some(seq) = h.seq {
                self.covered = self.covered.max(seq);
            }
        }
        Snapshot::Reply {
            generation,
            last: h.complete,
        }
    }

    /// Follows the chunks of periodic snapshots (0.2.x sends each whole, in one message): true
    /// when `h` ends a snapshot of which this client saw every chunk, in order.
    fn periodic_seen_whole(&mut self, h: &Header) -> bool {
        let Some(chunk) = h.chunk else {
            return h.complete;
        };
        let key = (h.epoch, h.id);
        let follows =
            chunk == 0 || matches!(self.periodic, Some((k, next)) if k == key && next == chunk);
        self.periodic = (follows && !h.complete).then_some((key, chunk + 1));
        follows && h.complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lives(t: &mut SeqTracker, seqs: &[u64]) -> Vec<Live> {
        seqs.iter().map(|s| t.live(*s)).collect()
    }

    fn reply(epoch: u64, seq: u64, complete: bool) -> Header {
        Header {
            reply: true,
            epoch: Some(epoch),
            id: None,
            chunk: None,
            complete,
            seq: Some(seq),
        }
    }

    fn periodic(id: u64, chunk: u64, complete: bool) -> Header {
        Header {
            reply: false,
            epoch: Some(1),
            id: Some(id),
            chunk: Some(chunk),
            complete,
            seq: None,
        }
    }

    #[test]
    fn consecutive_seqs_apply() {
        let mut t = SeqTracker::default();
        assert_eq!(lives(&mut t, &[1, 2, 3]), [Live::Apply; 3]);
        // The first one seen may be anything: a client joins a broker mid-run.
        let mut t = SeqTracker::default();
        assert_eq!(t.live(500), Live::Apply);
        assert_eq!(t.generation(), 0);
    }

    #[test]
    fn a_jump_forward_is_a_gap() {
        let mut t = SeqTracker::default();
        assert_eq!(
            lives(&mut t, &[1, 2, 5, 6, 10]),
            [
                Live::Apply,
                Live::Apply,
                Live::Gap { missed: 2 },
                Live::Apply,
                Live::Gap { missed: 3 }
            ]
        );
        assert!(Live::Gap { missed: 1 }.applies() && Live::Gap { missed: 1 }.wants_snapshot());
        assert_eq!(t.generation(), 0, "a gap is not a new run");
    }

    #[test]
    fn a_seq_going_back_is_a_restart_and_a_new_run() {
        let mut t = SeqTracker::default();
        lives(&mut t, &[1, 2, 10]);
        assert_eq!(t.live(3), Live::Restart { last: 10 });
        assert_eq!(t.generation(), 1);
        // The new run goes on from there.
        assert_eq!(t.live(4), Live::Apply);
        // The same seq again is a restart too (a broker that restarted and got as far).
        assert_eq!(t.live(4), Live::Restart { last: 4 });
        assert_eq!(t.generation(), 2);
        let r = Live::Restart { last: 1 };
        assert!(r.applies() && r.wants_snapshot());
    }

    #[test]
    fn updates_covered_by_a_reply_are_skipped() {
        let mut t = SeqTracker::default();
        assert_eq!(t.live(3), Live::Apply);
        // A reply consistent with seq 7, then live updates that were still on their way.
        assert_eq!(
            t.snapshot(&reply(1, 7, true)),
            Snapshot::Reply {
                generation: 0,
                last: true
            }
        );
        assert_eq!(lives(&mut t, &[4, 7]), [Live::Skip, Live::Skip]);
        assert!(!Live::Skip.applies() && !Live::Skip.wants_snapshot());
        // Right after it: no gap (the reply filled 4..=7).
        assert_eq!(t.live(8), Live::Apply);
        assert_eq!(t.live(10), Live::Gap { missed: 1 });
    }

    #[test]
    fn a_reply_covers_only_once_complete() {
        let mut t = SeqTracker::default();
        t.live(3);
        assert_eq!(
            t.snapshot(&reply(1, 7, false)),
            Snapshot::Reply {
                generation: 0,
                last: false
            }
        );
        assert_eq!(t.live(4), Live::Apply);
        t.snapshot(&reply(1, 7, true));
        assert_eq!(t.live(5), Live::Skip);
    }

    #[test]
    fn a_reply_of_a_gap_counts_from_what_it_covered() {
        let mut t = SeqTracker::default();
        t.live(1);
        t.snapshot(&reply(1, 20, true));
        // Live was at 1, the reply covers up to 20: 21 follows, 25 misses three.
        assert_eq!(t.live(21), Live::Apply);
        assert_eq!(t.live(25), Live::Gap { missed: 3 });
    }

    #[test]
    fn a_reply_from_another_broker_run_begins_a_new_run() {
        let mut t = SeqTracker::default();
        t.snapshot(&reply(1, 50, true));
        assert_eq!(t.generation(), 0, "the first reply sets the run");
        t.snapshot(&reply(1, 60, true));
        assert_eq!(t.generation(), 0, "same run");
        // The broker restarted: its seqs start low again, and are not skipped.
        assert_eq!(
            t.snapshot(&reply(2, 3, true)),
            Snapshot::Reply {
                generation: 1,
                last: true
            }
        );
        assert_eq!(t.live(4), Live::Apply);
        // A reply without an epoch (older broker) changes nothing.
        let mut no_epoch = reply(0, 1, true);
        no_epoch.epoch = None;
        t.snapshot(&no_epoch);
        assert_eq!(t.generation(), 1);
    }

    #[test]
    fn a_new_run_forgets_the_seqs_of_the_last() {
        let mut t = SeqTracker::default();
        t.live(100);
        t.snapshot(&reply(1, 200, true));
        t.new_run();
        assert_eq!(t.generation(), 1);
        assert_eq!(t.live(5), Live::Apply, "not covered, not a restart");
    }

    #[test]
    fn a_periodic_snapshot_in_one_message_fills() {
        let mut t = SeqTracker::default();
        // 0.2.x: no chunk keys, complete.
        let whole = Header {
            complete: true,
            ..Header::default()
        };
        assert_eq!(
            t.snapshot(&whole),
            Snapshot::Periodic {
                generation: 0,
                filled: true
            }
        );
        // It covers nothing: live updates are not skipped after it.
        t.live(1);
        assert_eq!(t.live(2), Live::Apply);
    }

    #[test]
    fn a_periodic_snapshot_fills_only_when_every_chunk_was_seen() {
        let mut t = SeqTracker::default();
        let filled = |s: Snapshot| matches!(s, Snapshot::Periodic { filled: true, .. });
        assert!(!filled(t.snapshot(&periodic(1, 0, false))));
        assert!(!filled(t.snapshot(&periodic(1, 1, false))));
        assert!(filled(t.snapshot(&periodic(1, 2, true))));
        // Joined midway: the tail does not fill.
        assert!(!filled(t.snapshot(&periodic(2, 1, false))));
        assert!(!filled(t.snapshot(&periodic(2, 2, true))));
        // A chunk missing in the middle: not whole either.
        assert!(!filled(t.snapshot(&periodic(3, 0, false))));
        assert!(!filled(t.snapshot(&periodic(3, 2, true))));
        // Chunks of another snapshot in between break the run.
        assert!(!filled(t.snapshot(&periodic(4, 0, false))));
        assert!(!filled(t.snapshot(&periodic(5, 1, false))));
        assert!(!filled(t.snapshot(&periodic(4, 1, true))));
        // A snapshot in one chunk is whole.
        assert!(filled(t.snapshot(&periodic(6, 0, true))));
    }

    #[test]
    fn periodic_chunks_do_not_disturb_a_reply() {
        let mut t = SeqTracker::default();
        t.snapshot(&periodic(1, 0, false));
        assert_eq!(
            t.snapshot(&reply(1, 5, true)),
            Snapshot::Reply {
                generation: 0,
                last: true
            }
        );
        assert!(matches!(
            t.snapshot(&periodic(1, 1, true)),
            Snapshot::Periodic { filled: true, .. }
        ));
    }
}
