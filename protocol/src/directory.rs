//! The broker's directory: the last value of every thing, already encoded for the wire.
//!
//! A pure model: every function takes `now` as an argument, so tests need no clock and no socket.

use std::sync::Arc;

use indexmap::IndexMap;

use crate::codec::{encode_update, UPDATE_PREFIX};
use crate::message::{Timestamp, UpdateRef};
use crate::namespace::Namespace;

/// One thing's last update.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The timestamp of the last update (the adaptor's, or the arrival time).
    pub ts: Timestamp,
    /// The sequence number of the last update.
    pub seq: u64,
    /// The last non-empty documentation URL the thing was given.
    pub documentation_url: Option<Arc<str>>,
    /// The update as published (see [`crate::codec::encode_update`]); shared, never copied.
    pub encoded: Arc<[u8]>,
    /// True once the thing has left the live window (and `thing_expired` was published).
    pub expired: bool,
    /// Changed by [`Directory::apply_marked`] since the last [`Directory::take_changed`].
    pub marked: bool,
}

impl Entry {
    /// The snapshot form of this entry, without its leading `{` (see [`crate::codec::UPDATE_PREFIX`]).
    pub fn snapshot_body(&self) -> &[u8] {
        &self.encoded[UPDATE_PREFIX.len()..]
    }
}

/// Entries in one dense vector beside a table of indices: a third less memory per thing than an
/// open hash table of entries at a million things, and [`Directory::sweep`] can walk it a slice
/// at a time by position.
type Map = IndexMap<Namespace, Entry, foldhash::fast::RandomState>;

/// The last value of every thing, keyed by namespace, plus the sequence counter.
///
/// ```
/// use thingsbus_protocol::{codec, Directory, Limits, Timestamp};
/// let mut dir = Directory::new();
/// let now = Timestamp::from_secs(1000.0).unwrap();
/// let update = codec::decode_json_input(br#"["a.b", null, 42, null]"#, &Limits::default()).unwrap();
/// let entry = dir.apply(&update, now);
/// assert_eq!(entry.seq, 1);
/// assert_eq!(dir.get("a.b").unwrap().ts, now);
/// ```
#[derive(Debug, Default)]
pub struct Directory {
    things: Map,
    seq: u64,
    scratch: Vec<u8>,
    /// The things [`Directory::apply_marked`] changed since the last [`Directory::take_changed`].
    marked: Vec<Namespace>,
    /// How many of those changes fell on a thing already marked.
    remarked: u64,
    /// What [`Directory::try_apply`] and [`Directory::apply_newest`] let it hold.
    caps: Caps,
    /// The encoded bytes of every entry, summed.
    bytes: usize,
    /// Where the next [`Directory::sweep`] starts.
    sweep_at: usize,
}

/// What one [`Directory::sweep`] step did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Things that left the live window (namespace, last `ts`, last `seq`), each reported once.
    pub expired: Vec<(Namespace, Timestamp, u64)>,
    /// Things forgotten (removed).
    pub forgotten: usize,
    /// True when this step reached the end of the directory: the next starts a new pass.
    pub wrapped: bool,
}

/// What a directory may hold at most (see [`Directory::set_caps`]): unlimited by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Things.
    pub things: usize,
    /// Encoded bytes of all entries together.
    pub bytes: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            things: usize::MAX,
            bytes: usize::MAX,
        }
    }
}

/// Why an update was left out; nothing changed in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The thing holds a value with a later `ts` (see [`Directory::apply_newest`]).
    Older,
    /// A new thing, and the directory holds [`Caps::things`] already.
    TooManyThings,
    /// The entry would take the directory beyond [`Caps::bytes`].
    TooManyBytes,
}

impl Directory {
    /// An empty directory at sequence 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `update` (stamped with `now` when it has no `ts`), gives it the next sequence
    /// number, keeps the documentation URL sticky, and returns the entry as stored. Takes no
    /// notice of the caps: for what the broker itself writes.
    pub fn apply(&mut self, update: &UpdateRef<'_>, now: Timestamp) -> Entry {
        self.apply_inner(update, now, false, false)
            .expect("an uncapped apply refuses nothing")
    }

    /// As [`Directory::apply`], and marks the thing as changed until the next
    /// [`Directory::take_changed`]: a thing changed a thousand times between two takes costs
    /// one flag here and is taken once, with its newest value.
    pub fn apply_marked(&mut self, update: &UpdateRef<'_>, now: Timestamp) -> Entry {
        self.apply_inner(update, now, true, false)
            .expect("an uncapped apply refuses nothing")
    }

    /// As [`Directory::apply`] (marked with `mark`, as [`Directory::apply_marked`]), within the
    /// caps: a new thing when [`Caps::things`] are held is refused, and so is an entry that
    /// would grow the held bytes beyond [`Caps::bytes`]. A thing already held can always
    /// change to a value no larger than the one it has.
    ///
    /// # Errors
    /// [`Refused::TooManyThings`] or [`Refused::TooManyBytes`]; nothing changed.
    pub fn try_apply(
        &mut self,
        update: &UpdateRef<'_>,
        now: Timestamp,
        mark: bool,
    ) -> Result<Entry, Refused> {
        self.apply_inner(update, now, mark, true)
    }

    /// Newest `ts` wins: as [`Directory::try_apply`], unless the thing holds a value with a
    /// later `ts`. An update without `ts` is stamped `now` by this broker and always wins. This
    /// is the rule that makes every broker of a cluster end on the same value, whatever order
    /// the updates reached each one in.
    ///
    /// # Errors
    /// [`Refused::Older`], or what [`Directory::try_apply`] refuses; nothing changed.
    pub fn apply_newest(
        &mut self,
        update: &UpdateRef<'_>,
        now: Timestamp,
        mark: bool,
    ) -> Result<Entry, Refused> {
        let older = update.ts.is_some_and(|ts| {
            self.things
                .get(update.ns.as_str())
                .is_some_and(|held| held.ts.as_secs() > ts.as_secs())
        });
        if older {
            return Err(Refused::Older);
        }
        self.apply_inner(update, now, mark, true)
    }

    /// Limits what [`Directory::try_apply`] and [`Directory::apply_newest`] take in. What is
    /// held already stays.
    pub fn set_caps(&mut self, caps: Caps) {
        self.caps = caps;
    }

    /// The caps in force.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// The encoded bytes of every entry, summed: what [`Caps::bytes`] limits.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The newest value of every thing changed through [`Directory::apply_marked`] since the
    /// last call (forgotten things left out), and how many changes fell on a thing already
    /// marked (superseded before they were taken). Clears the marks.
    pub fn take_changed(&mut self) -> (Vec<Arc<[u8]>>, u64) {
        let mut out = Vec::with_capacity(self.marked.len());
        for ns in self.marked.drain(..) {
            if let Some(e) = self.things.get_mut(&ns).filter(|e| e.marked) {
                e.marked = false;
                out.push(e.encoded.clone());
            }
        }
        (out, std::mem::take(&mut self.remarked))
    }

    /// Marks a thing held as changed, as [`Directory::apply_marked`] would (for changes taken
    /// that could not be passed on: they go with the next take). False when it is not held.
    pub fn mark(&mut self, ns: &str) -> bool {
        let Some((key, _)) = self.things.get_key_value(ns) else {
            return false;
        };
        let key = key.clone();
        if let Some(e) = self.things.get_mut(ns).filter(|e| !e.marked) {
            e.marked = true;
            self.marked.push(key);
        }
        true
    }

    /// True when [`Directory::take_changed`] has something to give.
    pub fn has_changed(&self) -> bool {
        !self.marked.is_empty()
    }

    fn apply_inner(
        &mut self,
        update: &UpdateRef<'_>,
        now: Timestamp,
        mark: bool,
        capped: bool,
    ) -> Result<Entry, Refused> {
        let ts = update.ts.unwrap_or(now);
        let ns = update.ns.as_str();
        let seq = self.seq + 1;
        let held_things = self.things.len();
        // One look-up, by &str: a known thing costs no namespace allocation.
        let mut slot = self.things.get_mut(ns);
        // The URL is sticky: a new one replaces it, none keeps it (shared, not copied).
        let prev_url = slot.as_ref().and_then(|e| e.documentation_url.clone());
        let documentation_url = match (update.documentation_url.as_deref(), prev_url) {
            (Some(new), Some(prev)) if *prev == *new => Some(prev),
            (Some(new), _) => Some(Arc::from(new)),
            (None, prev) => prev,
        };
        self.scratch.clear();
        encode_update(
            &mut self.scratch,
            ns,
            &update.data,
            ts,
            documentation_url.as_deref(),
            seq,
        );
        let held_len = slot.as_ref().map_or(0, |e| e.encoded.len());
        let new_len = self.scratch.len();
        let bytes = self.bytes - held_len + new_len;
        if capped {
            if slot.is_none() && held_things >= self.caps.things {
                return Err(Refused::TooManyThings);
            }
            if new_len > held_len && bytes > self.caps.bytes {
                return Err(Refused::TooManyBytes);
            }
        }
        self.seq = seq;
        self.bytes = bytes;
        let entry = Entry {
            ts,
            seq,
            encoded: Arc::from(&self.scratch[..]),
            documentation_url,
            expired: false,
            marked: mark,
        };
        match slot.as_mut() {
            Some(slot) => {
                match (slot.marked, mark) {
                    // Marked again before it was taken.
                    (true, true) => self.remarked += 1,
                    (false, true) => self.marked.push(update.ns.to_namespace()),
                    // An unmarked change (another broker's) supersedes the marked one: nothing
                    // of ours is left to take.
                    (_, false) => {}
                }
                **slot = entry.clone();
            }
            None => {
                let ns = update.ns.to_namespace();
                if mark {
                    self.marked.push(ns.clone());
                }
                self.things.insert(ns, entry.clone());
            }
        }
        Ok(entry)
    }

    /// Puts back an update as the broker published it (see [`crate::codec::encode_update`]), for a
    /// broker that restores its saved directory: the entry keeps its `ts`, documentation URL and
    /// `seq`, and the sequence counter moves past it. A thing already held with a higher `seq`
    /// stays; one whose `ts` is more than `forget_after` seconds before `now` is not restored;
    /// one past `live_window` comes back already expired (no `thing_expired` for it again).
    /// Returns whether the entry was taken.
    ///
    /// # Errors
    /// The bytes are not an encoded update with a `ts` and a `seq`.
    pub fn restore(
        &mut self,
        encoded: &[u8],
        now: Timestamp,
        live_window: f64,
        forget_after: f64,
    ) -> Result<bool, crate::Rejection> {
        let crate::codec::Published::Update(u) = crate::codec::decode_published(encoded)? else {
            return Err(crate::Rejection::UnknownType);
        };
        let (Some(ts), Some(seq)) = (u.ts, u.seq) else {
            return Err(crate::Rejection::BadTs);
        };
        self.seq = self.seq.max(seq);
        if ts.as_secs() < now.as_secs() - forget_after {
            return Ok(false);
        }
        if self.things.get(u.ns.as_str()).is_some_and(|e| e.seq >= seq) {
            return Ok(false);
        }
        let entry = Entry {
            ts,
            seq,
            documentation_url: u.documentation_url.as_deref().map(Arc::from),
            encoded: Arc::from(encoded),
            expired: ts.as_secs() < now.as_secs() - live_window,
            marked: false,
        };
        self.bytes += encoded.len();
        if let Some(old) = self.things.insert(u.ns.to_namespace(), entry) {
            self.bytes -= old.encoded.len();
        }
        Ok(true)
    }

    /// The sequence number of the last applied update (0 before any).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Continues numbering after `seq` (for a broker that restores a saved directory).
    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Number of things held.
    pub fn len(&self) -> usize {
        self.things.len()
    }

    /// True when no thing is held.
    pub fn is_empty(&self) -> bool {
        self.things.is_empty()
    }

    /// The entry of one thing.
    pub fn get(&self, ns: &str) -> Option<&Entry> {
        self.things.get(ns)
    }

    /// Every thing and its entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Namespace, &Entry)> {
        self.things.iter()
    }

    /// The entries whose `ts` is within `live_window` seconds of `now`, in no particular order.
    /// Cheap: shares the encoded bytes.
    pub fn live_entries(&self, now: Timestamp, live_window: f64) -> Vec<Arc<[u8]>> {
        let cutoff = now.as_secs() - live_window;
        self.things
            .values()
            .filter(|e| e.ts.as_secs() >= cutoff)
            .map(|e| e.encoded.clone())
            .collect()
    }

    /// [`Directory::live_entries`] a slice at a time: the live entries among at most `max`
    /// things from position `from`, and the position to go on from (`None` at the end). A
    /// broker takes a big snapshot this way, one slice per turn of its loop, so the time it
    /// holds the directory for a snapshot does not grow with the directory.
    ///
    /// Positions move only when a thing is forgotten ([`Directory::sweep`]): a caller walking the
    /// directory this way forgets nothing until it reaches the end. A thing added meanwhile is at the end, and is met.
    pub fn live_entries_from(
        &self,
        from: usize,
        max: usize,
        now: Timestamp,
        live_window: f64,
    ) -> (Vec<Arc<[u8]>>, Option<usize>) {
        let cutoff = now.as_secs() - live_window;
        let end = from.saturating_add(max).min(self.things.len());
        let entries = self
            .things
            .get_range(from.min(end)..end)
            .map(|slice| {
                slice
                    .values()
                    .filter(|e| e.ts.as_secs() >= cutoff)
                    .map(|e| e.encoded.clone())
                    .collect()
            })
            .unwrap_or_default();
        (entries, (end < self.things.len()).then_some(end))
    }

    /// The things whose last `ts` is older than the live window but which are not forgotten
    /// yet, encoded as updates: what a snapshot request that asks for stale things adds.
    pub fn stale_entries(&self, now: Timestamp, live_window: f64) -> Vec<Arc<[u8]>> {
        let cutoff = now.as_secs() - live_window;
        self.things
            .values()
            .filter(|e| e.ts.as_secs() < cutoff)
            .map(|e| e.encoded.clone())
            .collect()
    }

    /// Visits at most `budget` things from where the last step stopped: marks and returns
    /// (namespace, last `ts`, last `seq`) those whose last `ts` fell out of the live window
    /// since they were last visited, so each expiry is reported once, and removes those whose
    /// last `ts` is more than `forget_after` seconds before `now`. A broker calls it often with
    /// a small budget, so that the time it holds the directory does not grow with the directory
    /// (a whole pass over a million things at once held live updates back for tens of
    /// milliseconds).
    ///
    /// A pass visits every thing held from its start to its end: one added meanwhile is visited
    /// too (it goes at the end), and forgetting one moves the last thing into its place, where
    /// it is visited next.
    pub fn sweep(
        &mut self,
        now: Timestamp,
        live_window: f64,
        forget_after: f64,
        budget: usize,
    ) -> Swept {
        let live_cutoff = now.as_secs() - live_window;
        let forget_cutoff = now.as_secs() - forget_after;
        let mut swept = Swept::default();
        let mut i = self.sweep_at;
        let mut seen = 0;
        while seen < budget {
            let Some((ns, e)) = self.things.get_index_mut(i) else {
                break;
            };
            seen += 1;
            let ts = e.ts.as_secs();
            if ts < forget_cutoff {
                let len = e.encoded.len();
                self.things.swap_remove_index(i);
                self.bytes -= len;
                swept.forgotten += 1;
                continue; // the last thing is at `i` now
            }
            if !e.expired && ts < live_cutoff {
                e.expired = true;
                swept.expired.push((ns.clone(), e.ts, e.seq));
            }
            i += 1;
        }
        if i >= self.things.len() {
            swept.wrapped = true;
            i = 0;
        }
        self.sweep_at = i;
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_json_input, Limits};

    fn apply(dir: &mut Directory, json: &str, now: f64) -> Entry {
        let u = decode_json_input(json.as_bytes(), &Limits::default()).unwrap();
        dir.apply(&u, Timestamp::from_secs(now).unwrap())
    }

    #[test]
    fn stamps_numbers_and_keeps_url() {
        let mut d = Directory::new();
        let e = apply(&mut d, r#"["a", null, 1, "http://doc"]"#, 100.0);
        assert_eq!((e.seq, e.ts.as_secs()), (1, 100.0));
        let e = apply(&mut d, r#"["a", 50.0, 2, null]"#, 101.0);
        assert_eq!((e.seq, e.ts.as_secs()), (2, 50.0));
        assert_eq!(e.documentation_url.as_deref(), Some("http://doc"));
        let text = std::str::from_utf8(&e.encoded).unwrap();
        assert!(
            text.contains(r#""documentation_url":"http://doc""#),
            "{text}"
        );
        let e = apply(&mut d, r#"["a", null, 3, "http://new"]"#, 102.0);
        assert_eq!(e.documentation_url.as_deref(), Some("http://new"));
        assert_eq!(d.len(), 1);
        assert_eq!(d.seq(), 3);
    }

    #[test]
    fn caps_refuse_new_things_and_growth_but_let_held_things_change() {
        let mut d = Directory::new();
        let now = Timestamp::from_secs(1000.0).unwrap();
        let put = |d: &mut Directory, json: &str| {
            let u = decode_json_input(json.as_bytes(), &Limits::default()).unwrap();
            d.try_apply(&u, now, false).map(|e| e.seq)
        };
        assert_eq!(put(&mut d, r#"["a", null, 1, null]"#), Ok(1));
        let one = d.bytes();
        assert_eq!(one, d.get("a").unwrap().encoded.len());
        d.set_caps(Caps {
            things: 2,
            bytes: 3 * one,
        });
        assert_eq!(put(&mut d, r#"["b", null, 1, null]"#), Ok(2));
        // A third thing: refused, and nothing moved (not even seq).
        assert_eq!(
            put(&mut d, r#"["c", null, 1, null]"#),
            Err(Refused::TooManyThings)
        );
        assert_eq!((d.len(), d.seq(), d.bytes()), (2, 2, 2 * one));
        // Held things still change.
        assert_eq!(put(&mut d, r#"["a", null, 2, null]"#), Ok(3));
        // Growth beyond the byte cap is refused; shrinking back is not.
        let big = format!(r#"["a", null, "{}", null]"#, "x".repeat(2 * one));
        assert_eq!(put(&mut d, &big), Err(Refused::TooManyBytes));
        assert_eq!(put(&mut d, r#"["b", null, 2, null]"#), Ok(4));
        // apply (the broker's own writes) and apply_newest's own refusal.
        let u = decode_json_input(br#"["c", null, 1, null]"#, &Limits::default()).unwrap();
        assert_eq!(
            d.apply_newest(&u, now, false).map(|e| e.seq),
            Err(Refused::TooManyThings)
        );
        assert_eq!(d.apply(&u, now).seq, 5);
        assert_eq!(d.len(), 3);
        // Forgetting gives the bytes back.
        let later = Timestamp::from_secs(5000.0).unwrap();
        assert_eq!(d.sweep(later, 1.0, 10.0, usize::MAX).forgotten, 3);
        assert_eq!(d.bytes(), 0);
    }

    #[test]
    fn a_thing_taken_can_be_marked_again_once() {
        let mut d = Directory::new();
        let now = Timestamp::from_secs(100.0).unwrap();
        let u = decode_json_input(br#"["a", null, 1, null]"#, &Limits::default()).unwrap();
        d.apply_marked(&u, now);
        assert_eq!(d.take_changed().0.len(), 1);
        assert!(!d.has_changed());
        assert!(d.mark("a") && d.mark("a"));
        assert!(!d.mark("b"), "not held");
        let (again, superseded) = d.take_changed();
        assert_eq!((again.len(), superseded), (1, 0), "marked once, taken once");
    }

    #[test]
    fn newest_ts_wins() {
        let mut d = Directory::new();
        let now = Timestamp::from_secs(1000.0).unwrap();
        let newest = |d: &mut Directory, json: &str, mark: bool| {
            let u = decode_json_input(json.as_bytes(), &Limits::default()).unwrap();
            d.apply_newest(&u, now, mark).ok().map(|e| e.seq)
        };
        // Unknown thing: taken.
        assert_eq!(newest(&mut d, r#"["a", 100.0, 1, null]"#, false), Some(1));
        // Older than held: left out, nothing changes (not even seq).
        assert_eq!(newest(&mut d, r#"["a", 99.5, 2, null]"#, false), None);
        assert_eq!((d.seq(), d.get("a").unwrap().ts.as_secs()), (1, 100.0));
        // Same ts: taken (the later arrival wins a tie, as in 0.2.x).
        assert_eq!(newest(&mut d, r#"["a", 100.0, 3, null]"#, false), Some(2));
        // Newer: taken.
        assert_eq!(newest(&mut d, r#"["a", 101.0, 4, null]"#, false), Some(3));
        // No ts: stamped now, always taken, even behind a value from the future.
        assert_eq!(newest(&mut d, r#"["b", 5000.0, 5, null]"#, false), Some(4));
        assert_eq!(newest(&mut d, r#"["b", null, 6, null]"#, false), Some(5));
        assert_eq!(d.get("b").unwrap().ts, now);
        // With `mark`, a taken update is marked for take_changed; a left-out one is not.
        assert!(!d.has_changed());
        assert_eq!(newest(&mut d, r#"["a", 50.0, 7, null]"#, true), None);
        assert!(!d.has_changed());
        assert_eq!(newest(&mut d, r#"["a", 102.0, 8, null]"#, true), Some(6));
        assert_eq!(d.take_changed().0.len(), 1);
    }

    #[test]
    fn marked_changes_are_taken_once_with_their_newest_value() {
        let mut d = Directory::new();
        let now = Timestamp::from_secs(100.0).unwrap();
        let marked = |d: &mut Directory, json: &str| {
            let u = decode_json_input(json.as_bytes(), &Limits::default()).unwrap();
            d.apply_marked(&u, now)
        };
        let data = |e: &Arc<[u8]>| {
            let text = std::str::from_utf8(e).unwrap().to_owned();
            text[text.find("\"data\":").unwrap() + 7..text.find(",\"ts\"").unwrap()].to_owned()
        };
        assert!(!d.has_changed());
        marked(&mut d, r#"["a", null, 1, null]"#);
        marked(&mut d, r#"["b", null, 1, null]"#);
        marked(&mut d, r#"["a", null, 2, null]"#);
        marked(&mut d, r#"["a", null, 3, null]"#);
        assert!(d.has_changed());
        let (out, remarked) = d.take_changed();
        assert_eq!(out.iter().map(data).collect::<Vec<_>>(), ["3", "1"]);
        assert_eq!(remarked, 2);
        assert!(!d.has_changed());
        assert_eq!(d.take_changed(), (Vec::new(), 0));
        // An unmarked change (another broker's) supersedes a marked one; a later marked one
        // counts again; a forgotten thing is left out.
        marked(&mut d, r#"["a", null, 4, null]"#);
        apply(&mut d, r#"["a", null, 5, null]"#, 100.0);
        marked(&mut d, r#"["b", null, 6, null]"#);
        let (out, _) = d.take_changed();
        assert_eq!(out.iter().map(data).collect::<Vec<_>>(), ["6"]);
        marked(&mut d, r#"["a", null, 7, null]"#);
        apply(&mut d, r#"["a", null, 8, null]"#, 100.0);
        marked(&mut d, r#"["a", null, 9, null]"#);
        let (out, _) = d.take_changed();
        assert_eq!(out.iter().map(data).collect::<Vec<_>>(), ["9"]);
        marked(&mut d, r#"["gone", 1.0, 1, null]"#);
        d.sweep(now, 1.0, 10.0, usize::MAX);
        assert_eq!(d.take_changed().0.len(), 0);
    }

    #[test]
    fn live_window_and_forgetting() {
        let mut d = Directory::new();
        apply(&mut d, r#"["old", 10.0, 1, null]"#, 0.0);
        apply(&mut d, r#"["mid", 80.0, 1, null]"#, 0.0);
        apply(&mut d, r#"["new", 99.0, 1, null]"#, 0.0);
        let now = Timestamp::from_secs(100.0).unwrap();
        assert_eq!(d.live_entries(now, 60.0).len(), 2);
        let expired = d.sweep(now, 15.0, f64::INFINITY, usize::MAX).expired;
        let mut names: Vec<&str> = expired.iter().map(|(n, _, _)| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["mid", "old"]);
        assert!(
            d.sweep(now, 15.0, f64::INFINITY, usize::MAX)
                .expired
                .is_empty(),
            "each expiry is reported once"
        );
        apply(&mut d, r#"["mid", 100.0, 2, null]"#, 0.0);
        assert!(!d.get("mid").unwrap().expired, "a new value is live again");

        assert_eq!(d.sweep(now, 15.0, 50.0, usize::MAX).forgotten, 1);
        assert!(d.get("old").is_none());
        assert!(d.get("mid").is_some());
    }

    #[test]
    fn a_sweep_in_small_steps_expires_and_forgets_each_thing_once() {
        let mut d = Directory::new();
        // 100 things: every third one old enough to forget, every other one past the window.
        for i in 0..100 {
            let ts = if i % 3 == 0 {
                1.0
            } else if i % 2 == 0 {
                50.0
            } else {
                99.0
            };
            apply(&mut d, &format!(r#"["t{i}", {ts}, 1, null]"#), 0.0);
        }
        let now = Timestamp::from_secs(100.0).unwrap();
        let (mut expired, mut forgotten, mut steps) = (Vec::new(), 0, 0);
        loop {
            let s = d.sweep(now, 30.0, 90.0, 7);
            steps += 1;
            expired.extend(s.expired.into_iter().map(|(ns, _, _)| ns.to_string()));
            forgotten += s.forgotten;
            if steps == 3 {
                // Added during the pass: visited in this same pass.
                apply(&mut d, r#"["late", 60.0, 1, null]"#, 0.0);
            }
            if s.wrapped {
                break;
            }
            assert!(steps < 100, "the pass ends");
        }
        let mut want: Vec<String> = (0..100)
            .filter(|i| i % 3 != 0 && i % 2 == 0)
            .map(|i| format!("t{i}"))
            .chain(["late".to_owned()])
            .collect();
        want.sort();
        expired.sort();
        assert_eq!(expired, want);
        assert_eq!(forgotten, 34);
        assert_eq!(d.len(), 100 - 34 + 1);
        let bytes: usize = d.iter().map(|(_, e)| e.encoded.len()).sum();
        assert_eq!(d.bytes(), bytes, "forgetting gives the bytes back");
        // A second pass finds nothing new: each expiry is reported once.
        loop {
            let s = d.sweep(now, 30.0, 90.0, 7);
            assert!(s.expired.is_empty() && s.forgotten == 0);
            if s.wrapped {
                break;
            }
        }
    }

    #[test]
    fn live_entries_a_slice_at_a_time_meet_every_live_thing_once() {
        let mut d = Directory::new();
        for i in 0..50 {
            let ts = if i % 5 == 0 { 10.0 } else { 99.0 };
            apply(&mut d, &format!(r#"["t{i}", {ts}, 1, null]"#), 0.0);
        }
        let now = Timestamp::from_secs(100.0).unwrap();
        let mut whole: Vec<Vec<u8>> = d
            .live_entries(now, 60.0)
            .iter()
            .map(|e| e.to_vec())
            .collect();
        let mut sliced = Vec::new();
        let mut at = Some(0);
        let mut turns = 0;
        while let Some(from) = at {
            let (part, next) = d.live_entries_from(from, 7, now, 60.0);
            assert!(part.len() <= 7);
            sliced.extend(part.iter().map(|e| e.to_vec()));
            at = next;
            turns += 1;
            if turns == 2 {
                // Added during the walk: met at the end.
                apply(&mut d, r#"["late", 99.0, 1, null]"#, 0.0);
                whole.push(d.get("late").unwrap().encoded.to_vec());
            }
        }
        assert_eq!(turns, 8, "51 things, 7 at a time");
        whole.sort();
        sliced.sort();
        assert_eq!(sliced.len(), 41);
        assert_eq!(sliced, whole);
        assert_eq!(d.live_entries_from(51, 7, now, 60.0), (Vec::new(), None));
    }
}
