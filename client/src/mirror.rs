//! The local mirror of the directory: every thing's last value, and the tree of namespaces.
//!
//! Written only by the client's writer thread (`driver/writer.rs`); read from anywhere. Things
//! live in one vector of slots, found through a [`HashTable`] of indices hashed on the
//! namespace, all under one `RwLock`: the writer takes it once for a whole snapshot chunk.
//! A slot keeps its namespace and value as ranges of the message they came in (shared by every
//! thing of a snapshot chunk), so applying a chunk allocates nothing per thing; readers get owned
//! copies ([`Thing`]), built when they ask.
//!
//! Two costs follow. A value keeps its whole message alive until every thing it carried has a
//! newer one (a snapshot chunk, some hundred kilobytes, stays while one of its things is
//! unchanged). And the tree of namespaces is not kept as nodes: `walk`, `children` and `exists`
//! read an order of all things sorted by namespace, made when first asked for and brought up to
//! date (new things sorted and merged in) when asked again; they hold the read lock meanwhile, so
//! a walk of a million things holds back the writer for as long as it copies them out.

use std::cmp::Ordering;
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::hash_table::{Entry, HashTable};
use thingsbus_protocol::codec::PublishedUpdate;
use thingsbus_protocol::Namespace;

use crate::shared::lock;
use crate::Thing;

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A live `thing_update`.
    Live,
    /// A periodic `thing_snapshot` on the directory output.
    Periodic,
    /// A reply to this client's snapshot request.
    Reply,
}

/// True when the mirror keeps `cur` rather than take a value from `source` with this `ts` and
/// `seq`, applied under `generation`. Within one broker run, `seq` orders live updates and
/// snapshot replies (a reply does not re-apply what the mirror already has, nor undo a live
/// update that overtook it); a periodic snapshot entry never replaces a newer value (by
/// timestamp, then `seq`) but is replayed when equal, as 0.2.x does.
fn keeps(cur: &Slot, source: Source, generation: u64, ts: f64, seq: Option<u64>) -> bool {
    let same_run = cur.generation == generation;
    match (source, cur.seq, seq) {
        (Source::Live | Source::Reply, Some(c), Some(s)) if same_run => c >= s,
        (Source::Live | Source::Reply, _, _) => false,
        (Source::Periodic, _, _) => cur
            .ts
            .total_cmp(&ts)
            .then(cur.seq.unwrap_or(0).cmp(&seq.unwrap_or(0)))
            .is_gt(),
    }
}

/// A range of a message's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(self) -> Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }
}

/// One update or snapshot entry, decoded on the receive thread (so decoding the next message
/// overlaps applying this one) as ranges of its message's text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prepared {
    ns: Span,
    data: Span,
    documentation_url: Option<Span>,
    ts: f64,
    seq: Option<u64>,
}

/// A message's text with the entries it carries, ready for the mirror.
#[derive(Debug)]
pub(crate) struct Received {
    /// The message as received, followed by any value the decoder had to unescape.
    pub(crate) text: Arc<str>,
    pub(crate) entries: Vec<Prepared>,
    /// The broker sent these things as past its live window.
    pub(crate) stale: bool,
}

impl Received {
    /// Keeps `text` once and each of `updates` (decoded from it) as ranges of it; `now` stands
    /// for a missing timestamp. `None` when the text is too long for 32-bit ranges (4 GiB: no
    /// broker sends that).
    pub(crate) fn new<'a>(
        text: &'a str,
        updates: impl IntoIterator<Item = &'a PublishedUpdate<'a>>,
        now: f64,
        stale: bool,
    ) -> Option<Self> {
        let mut spans = Spans {
            base: text,
            extra: String::new(),
        };
        let entries = updates
            .into_iter()
            .map(|u| {
                Some(Prepared {
                    ns: spans.of(u.ns.as_str())?,
                    data: spans.of(u.data)?,
                    documentation_url: match u.documentation_url.as_deref() {
                        Some(url) => Some(spans.of(url)?),
                        None => None,
                    },
                    ts: u.ts.map_or(now, |t| t.as_secs()),
                    seq: u.seq,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let text = if spans.extra.is_empty() {
            Arc::from(text)
        } else {
            Arc::from(format!("{text}{}", spans.extra))
        };
        Some(Received {
            text,
            entries,
            stale,
        })
    }
}

/// Finds the ranges of a message's pieces: where the decoder borrowed a piece from the text it
/// lies there; a piece it had to unescape goes after the text, in `extra`.
struct Spans<'a> {
    base: &'a str,
    extra: String,
}

impl Spans<'_> {
    fn of(&mut self, piece: &str) -> Option<Span> {
        let base = self.base.as_ptr() as usize;
        let at = piece.as_ptr() as usize;
        let start = if at >= base && at + piece.len() <= base + self.base.len() {
            at - base
        } else {
            let start = self.base.len() + self.extra.len();
            self.extra.push_str(piece);
            start
        };
        Some(Span {
            start: u32::try_from(start).ok()?,
            len: u32::try_from(piece.len()).ok()?,
        })
    }
}

/// One thing's last value.
#[derive(Debug)]
struct Slot {
    /// The message the value came in (see [`Received::text`]).
    text: Arc<str>,
    ns: Span,
    data: Span,
    /// Sticky: a value without one keeps the last.
    documentation_url: Option<Arc<str>>,
    ts: f64,
    seq: Option<u64>,
    /// Which broker run `seq` belongs to, as the client counts them (it goes up when the broker
    /// restarts or the client fails over): sequence numbers compare only within one.
    generation: u64,
    from_snapshot: bool,
    stale: bool,
}

impl Slot {
    fn ns(&self) -> &str {
        &self.text[self.ns.range()]
    }

    fn thing(&self) -> Thing {
        Thing {
            ns: Namespace::new(self.ns()).expect("validated when the message was decoded"),
            data: Arc::from(&self.text[self.data.range()]),
            ts: self.ts,
            documentation_url: self.documentation_url.clone(),
            seq: self.seq,
            from_snapshot: self.from_snapshot,
            stale: self.stale,
        }
    }
}

#[derive(Debug, Default)]
struct Things {
    slots: Vec<Slot>,
    /// Indices into `slots`, hashed on the namespace.
    index: HashTable<u32>,
}

/// Every thing held, in namespace order, as indices into the slots; the first `upto` slots are
/// in it (slots are never removed, so the rest are the things added since).
#[derive(Debug, Default)]
struct Order {
    sorted: Vec<u32>,
    upto: usize,
}

/// Every thing the client knows, and the tree their namespaces form (as in 0.2.x).
#[derive(Debug)]
pub(crate) struct Mirror {
    things: RwLock<Things>,
    hasher: foldhash::fast::RandomState,
    /// Made by readers, under the read lock.
    order: Mutex<Order>,
}

impl Mirror {
    pub(crate) fn new() -> Self {
        Mirror {
            things: RwLock::default(),
            hasher: foldhash::fast::RandomState::default(),
            order: Mutex::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Things> {
        self.things
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Things> {
        self.things
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn find(&self, things: &Things, ns: &str) -> Option<usize> {
        let slots = &things.slots;
        things
            .index
            .find(self.hasher.hash_one(ns), |&i| slots[i as usize].ns() == ns)
            .map(|&i| i as usize)
    }

    /// Applies the entries of `received` from `source` under `generation`, each unless the
    /// mirror keeps the value it has (see [`keeps`]), under one write lock. Returns copies of
    /// the things as stored, when `want_copies` (for the subscriptions' events).
    pub(crate) fn apply(
        &self,
        received: &Received,
        source: Source,
        generation: u64,
        want_copies: bool,
    ) -> Vec<Thing> {
        let mut copies = Vec::new();
        let mut things = self.write();
        let Things { slots, index } = &mut *things;
        let text = &received.text;
        for e in &received.entries {
            let ns = &text[e.ns.range()];
            let hash = self.hasher.hash_one(ns);
            let url = e.documentation_url.map(|s| &text[s.range()]);
            let applied = match index.entry(
                hash,
                |&i| slots[i as usize].ns() == ns,
                |&i| self.hasher.hash_one(slots[i as usize].ns()),
            ) {
                Entry::Occupied(o) => {
                    let i = *o.get() as usize;
                    let cur = &mut slots[i];
                    if keeps(cur, source, generation, e.ts, e.seq) {
                        continue;
                    }
                    // The same URL again (the usual case) keeps its copy.
                    if let Some(url) = url {
                        if cur.documentation_url.as_deref() != Some(url) {
                            cur.documentation_url = Some(Arc::from(url));
                        }
                    }
                    cur.text = Arc::clone(text);
                    cur.ns = e.ns;
                    cur.data = e.data;
                    cur.ts = e.ts;
                    cur.seq = e.seq;
                    cur.generation = generation;
                    cur.from_snapshot = source != Source::Live;
                    cur.stale = received.stale;
                    i
                }
                Entry::Vacant(v) => {
                    let Ok(i) = u32::try_from(slots.len()) else {
                        tracing::warn!(%ns, "the mirror holds 4 billion things; dropped one more");
                        continue;
                    };
                    v.insert(i);
                    slots.push(Slot {
                        text: Arc::clone(text),
                        ns: e.ns,
                        data: e.data,
                        documentation_url: url.map(Arc::from),
                        ts: e.ts,
                        seq: e.seq,
                        generation,
                        from_snapshot: source != Source::Live,
                        stale: received.stale,
                    });
                    i as usize
                }
            };
            if want_copies {
                copies.push(slots[applied].thing());
            }
        }
        copies
    }

    /// Makes room for `total` things at once (beyond those already held nothing is reserved), so
    /// that filling a big directory does not grow, and rehash, the table again and again.
    pub(crate) fn reserve_for(&self, total: usize) {
        let mut things = self.write();
        let Things { slots, index } = &mut *things;
        let additional = total.saturating_sub(slots.len());
        slots.reserve(additional);
        index.reserve(additional, |&i| {
            self.hasher.hash_one(slots[i as usize].ns())
        });
    }

    /// Marks a thing stale; returns it when it had a value and was not stale yet.
    pub(crate) fn mark_stale(&self, ns: &str) -> Option<Thing> {
        let mut things = self.write();
        let i = self.find(&things, ns)?;
        let slot = &mut things.slots[i];
        if slot.stale {
            return None;
        }
        slot.stale = true;
        Some(slot.thing())
    }

    pub(crate) fn get(&self, ns: &str) -> Option<Thing> {
        let things = self.read();
        self.find(&things, ns).map(|i| things.slots[i].thing())
    }

    /// Indices of the things at or below `ns`, in namespace order, given to `f` under the read
    /// lock.
    fn below<R>(&self, ns: &str, f: impl FnOnce(&[Slot], &[u32]) -> R) -> R {
        let things = self.read();
        let slots = &things.slots;
        let mut order = lock(&self.order);
        if order.upto < slots.len() {
            let fresh = sort_tree(slots, (order.upto..slots.len()).map(as_index).collect());
            order.sorted = merge(slots, std::mem::take(&mut order.sorted), fresh);
            order.upto = slots.len();
        }
        let sorted = order.sorted.as_slice();
        let name = |i: &u32| slots[*i as usize].ns();
        let from = sorted.partition_point(|i| tree_cmp(name(i), ns).is_lt());
        let len = sorted[from..].partition_point(|i| at_or_below(name(i), ns));
        f(slots, &sorted[from..from + len])
    }

    /// True when `ns` exists in the tree (as a thing or as a prefix of one).
    pub(crate) fn exists(&self, ns: &str) -> bool {
        ns.is_empty() || self.below(ns, |_, below| !below.is_empty())
    }

    /// The direct children of `ns`, in namespace order.
    pub(crate) fn children(&self, ns: &str) -> Vec<Namespace> {
        let skip = if ns.is_empty() { 0 } else { ns.len() + 1 };
        self.below(ns, |slots, below| {
            let mut kids: Vec<Namespace> = Vec::new();
            for &i in below {
                let name = slots[i as usize].ns();
                let Some(rest) = name.get(skip..).filter(|r| !r.is_empty()) else {
                    continue; // `ns` itself
                };
                let child = &name[..skip + rest.find('.').unwrap_or(rest.len())];
                // Things below one child come together: a new child differs from the last.
                if kids.last().is_none_or(|k| k.as_str() != child) {
                    kids.push(Namespace::new(child).expect("a prefix of a valid namespace"));
                }
            }
            kids
        })
    }

    /// Every thing with a value at or below `ns`, in namespace order.
    pub(crate) fn walk(&self, ns: &str) -> Vec<Thing> {
        self.below(ns, |slots, below| {
            below.iter().map(|&i| slots[i as usize].thing()).collect()
        })
    }

    /// Number of things with a value.
    pub(crate) fn things(&self) -> usize {
        self.read().slots.len()
    }
}

fn as_index(i: usize) -> u32 {
    u32::try_from(i).expect("the mirror holds fewer than 4 billion things")
}

/// True when `name` is `ns` or below it.
fn at_or_below(name: &str, ns: &str) -> bool {
    ns.is_empty()
        || name
            .strip_prefix(ns)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// A namespace's bytes as the tree orders them: the separator below every other byte, so a
/// thing comes before everything below it and that before its next sibling (`a`, `a.b`, `a-b`;
/// by plain bytes `a-b` would come before `a.b`, since `-` is below `.`). Zero is left for
/// padding.
fn tree_byte(b: u8) -> u8 {
    if b == b'.' {
        1
    } else {
        b
    }
}

/// Namespace order: depth-first, siblings sorted (as a walk of 0.2.x's tree visits them).
fn tree_cmp(a: &str, b: &str) -> Ordering {
    let common = a
        .bytes()
        .zip(b.bytes())
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    match (a.as_bytes().get(common), b.as_bytes().get(common)) {
        (Some(&x), Some(&y)) => tree_byte(x).cmp(&tree_byte(y)),
        _ => a.len().cmp(&b.len()),
    }
}

/// `indices` of `slots` in namespace order. Names sorted together often share a long prefix
/// (`late.t000…`): past it, their next 8 bytes are packed in a `u64` kept beside each index, and
/// names are compared whole only on a tie, so sorting a million things reads a contiguous array
/// instead of following a pointer into the heap for every comparison.
fn sort_tree(slots: &[Slot], indices: Vec<u32>) -> Vec<u32> {
    let name = |i: u32| slots[i as usize].ns().as_bytes();
    let Some(&first) = indices.first() else {
        return indices;
    };
    let shared = indices.iter().fold(name(first).len(), |shared, &i| {
        let n = name(i);
        name(first)[..shared]
            .iter()
            .zip(n)
            .take_while(|(a, b)| a == b)
            .count()
    });
    let mut keyed: Vec<(u64, u32)> = indices
        .into_iter()
        .map(|i| {
            let mut head = [0u8; 8];
            for (h, &b) in head.iter_mut().zip(&name(i)[shared..]) {
                *h = tree_byte(b);
            }
            (u64::from_be_bytes(head), i)
        })
        .collect();
    // Padding (zero) sorts below every byte, so a shorter name ties with a longer one only when
    // their common bytes are equal: the whole comparison then orders them.
    keyed.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| tree_cmp(slots[a.1 as usize].ns(), slots[b.1 as usize].ns()))
    });
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Two lists in namespace order, merged.
fn merge(slots: &[Slot], a: Vec<u32>, b: Vec<u32>) -> Vec<u32> {
    if a.is_empty() {
        return b;
    }
    let name = |i: u32| slots[i as usize].ns();
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while let (Some(&x), Some(&y)) = (a.peek(), b.peek()) {
        if tree_cmp(name(x), name(y)).is_le() {
            out.push(x);
            a.next();
        } else {
            out.push(y);
            b.next();
        }
    }
    out.extend(a);
    out.extend(b);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use thingsbus_protocol::codec::{decode_published_text, Published};

    /// A message's entries, as the receive thread prepares them.
    fn received(json: &str, stale: bool) -> Received {
        match decode_published_text(json).unwrap() {
            Published::Update(u) => Received::new(json, [&u], 1000.0, stale),
            Published::Snapshot(s) => Received::new(json, &s.entries, 1000.0, stale),
            other => panic!("{other:?}"),
        }
        .unwrap()
    }

    fn apply(m: &Mirror, json: &str, from_snapshot: bool) -> Option<Thing> {
        let source = if from_snapshot {
            Source::Periodic
        } else {
            Source::Live
        };
        m.apply(&received(json, false), source, 0, true).pop()
    }

    fn update(ns: &str, data: &str, ts: f64, seq: Option<u64>) -> Received {
        let seq = seq.map_or("null".to_owned(), |s| s.to_string());
        received(
            &format!(
                r#"{{"type":"thing_update","ns":"{ns}","data":{data},"ts":{ts},"seq":{seq}}}"#
            ),
            false,
        )
    }

    fn names<T: AsRef<str>>(v: impl IntoIterator<Item = T>) -> Vec<String> {
        v.into_iter().map(|n| n.as_ref().to_owned()).collect()
    }

    fn walked(m: &Mirror, ns: &str) -> Vec<String> {
        names(m.walk(ns).iter().map(|t| t.ns.to_string()))
    }

    #[test]
    fn things_come_in_namespace_order() {
        let mut all = vec![
            "p.b",
            "p.a",
            "p.aaaaaaaab",
            "p.aaaaaaaa",
            "p.aaaaaaaaa",
            "p.a-",
            "p.a_",
            "p.a.b",
            "p.a.b.c",
            "p.a-.x",
            "p.z9",
            "p.z10",
            "p.t0000001",
            "p.t0000010",
            "p.t000001",
            "p.y9",
            "p.y0",
            "q",
            "p",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        all.extend((0..200).map(|i| format!("p.x{}", i * 7919 % 1000)));
        all.extend((0..100).map(|i| format!("r{}", 99 - i)));
        // Depth first, siblings in byte order: what a walk of a tree of nodes gives.
        let mut want = all.clone();
        want.sort_by(|a, b| a.split('.').cmp(b.split('.')));
        want.dedup();
        let m = Mirror::new();
        // In two halves: the second is sorted and merged into the first's order.
        let (first, second) = all.split_at(all.len() / 2);
        for half in [first, second] {
            for ns in half {
                m.apply(&update(ns, "1", 1.0, None), Source::Live, 0, false);
            }
            assert!(m.walk("").len() <= want.len());
        }
        assert_eq!(walked(&m, ""), want);
        let below_p: Vec<String> = want
            .iter()
            .filter(|n| *n == "p" || n.starts_with("p."))
            .cloned()
            .collect();
        assert_eq!(walked(&m, "p"), below_p);
        assert_eq!(walked(&m, "p.a"), ["p.a", "p.a.b", "p.a.b.c"]);
        assert_eq!(walked(&m, "p.a.b.c"), ["p.a.b.c"]);
        assert!(walked(&m, "p.c").is_empty());
        assert_eq!(names(m.children("p.a")), ["p.a.b"]);
        let top = names(m.children(""));
        assert_eq!(top[..3], ["p", "q", "r0"]);
        assert_eq!(top.len(), 102);
    }

    #[test]
    fn a_walk_of_thousands_in_any_order_comes_in_namespace_order() {
        let m = Mirror::new();
        let n = 6000;
        // Nine in ten under "b": a walk of "b" covers most of the mirror.
        let name = |i: usize| format!("{}.t{i}", if i % 10 == 0 { "o" } else { "b" });
        let mut body = Vec::new();
        for k in 0..n {
            let i = k * 7919 % n;
            let ns = name(i);
            body.push(format!(
                r#""{ns}":{{"ns":"{ns}","data":{i},"ts":1.0,"documentation_url":null,"seq":1}}"#
            ));
        }
        let chunk = format!(
            r#"{{"type":"thing_snapshot","seq":1,"data":{{{}}},"last":true}}"#,
            body.join(",")
        );
        m.apply(&received(&chunk, false), Source::Periodic, 0, false);
        for prefix in ["", "b"] {
            let mut want: Vec<String> = (0..n)
                .map(name)
                .filter(|ns| at_or_below(ns, prefix))
                .collect();
            want.sort();
            let walk = m.walk(prefix);
            assert_eq!(names(walk.iter().map(|t| t.ns.to_string())), want);
            assert!(walk.iter().all(|t| t.ns.as_str()[3..] == *t.data));
        }
    }

    #[test]
    fn tree_order_puts_a_thing_before_what_is_below_it() {
        assert!(tree_cmp("a", "a.b").is_lt());
        assert!(tree_cmp("a.b", "a-b").is_lt());
        assert!(tree_cmp("a.b.c", "a.bc").is_lt());
        assert!(tree_cmp("a.b", "a.b").is_eq());
        assert!(tree_cmp("", "a").is_lt());
        assert!(at_or_below("a.b", "a") && at_or_below("a", "a") && at_or_below("a", ""));
        assert!(!at_or_below("ab", "a") && !at_or_below("a", "a.b"));
    }

    #[test]
    fn tree_and_values() {
        let m = Mirror::new();
        apply(
            &m,
            r#"{"type":"thing_update","ns":"a.b.c","data":1,"ts":5.0}"#,
            false,
        )
        .unwrap();
        apply(
            &m,
            r#"{"type":"thing_update","ns":"a.x","data":2,"ts":null,"documentation_url":"u"}"#,
            false,
        )
        .unwrap();
        assert_eq!(m.get("a.b.c").unwrap().data.as_ref(), "1");
        assert!(m.get("a.b").is_none(), "prefixes exist but have no value");
        assert!(m.exists("a.b"));
        assert!(m.exists("") && m.exists("a") && m.exists("a.b.c"));
        assert!(!m.exists("a.b.c.d") && !m.exists("a.y") && !m.exists("b"));
        assert_eq!(m.get("a.x").unwrap().ts, 1000.0);
        assert_eq!(names(m.children("a")), ["a.b", "a.x"]);
        assert_eq!(m.children("").len(), 1);
        assert!(m.children("a.x").is_empty());
        assert_eq!(walked(&m, ""), ["a.b.c", "a.x"]);
        // Sticky documentation URL.
        let t = apply(
            &m,
            r#"{"type":"thing_update","ns":"a.x","data":3,"ts":2.0}"#,
            false,
        )
        .unwrap();
        assert_eq!(t.documentation_url.as_deref(), Some("u"));
        assert_eq!(m.things(), 2);
    }

    #[test]
    fn escaped_pieces_are_kept_after_the_message() {
        let m = Mirror::new();
        let t = apply(
            &m,
            r#"{"type":"thing_update","ns":"\u0061.b","data":"x\ny","ts":1.0,"documentation_url":"http://\u0075"}"#,
            false,
        )
        .unwrap();
        assert_eq!(t.ns.as_str(), "a.b");
        assert_eq!(t.data.as_ref(), r#""x\ny""#);
        assert_eq!(t.documentation_url.as_deref(), Some("http://u"));
        assert_eq!(m.get("a.b").unwrap().data.as_ref(), r#""x\ny""#);
    }

    #[test]
    fn a_snapshot_chunk_shares_its_text_and_keeps_its_entries_apart() {
        let m = Mirror::new();
        let chunk = r#"{"type":"thing_snapshot","seq":3,"request":1,"chunk":0,"total":3,"last":true,"data":{"a.b.c":{"ns":"a.b.c","data":1,"ts":1.0,"documentation_url":null,"seq":1},"x.y":{"ns":"x.y","data":[2],"ts":2.0,"documentation_url":null,"seq":2},"a":{"ns":"a","data":{"v":3},"ts":3.0,"documentation_url":null,"seq":3}}}"#;
        let r = received(chunk, true);
        m.reserve_for(3);
        let copies = m.apply(&r, Source::Reply, 0, true);
        assert_eq!(copies.len(), 3);
        assert!(copies.iter().all(|t| t.stale && t.from_snapshot));
        // The mirror's three slots and `r` hold the one text.
        assert_eq!(Arc::strong_count(&r.text), 4);
        assert_eq!(walked(&m, ""), ["a", "a.b.c", "x.y"]);
        assert_eq!(m.get("x.y").unwrap().data.as_ref(), "[2]");
        assert_eq!(m.get("a").unwrap().data.as_ref(), r#"{"v":3}"#);
        assert_eq!(names(m.children("")), ["a", "x"]);
        assert_eq!(names(m.children("a")), ["a.b"]);
        // Replaced, a value lets its message go.
        m.apply(&update("x.y", "5", 9.0, Some(9)), Source::Live, 0, false);
        assert_eq!(Arc::strong_count(&r.text), 3);
        assert_eq!(m.get("x.y").unwrap().data.as_ref(), "5");
        // Expired: marked stale once.
        m.apply(&update("a", "4", 9.0, Some(10)), Source::Live, 0, false);
        assert!(!m.get("a").unwrap().stale);
        assert!(m.mark_stale("a").is_some_and(|t| t.stale));
        assert!(m.mark_stale("a").is_none());
        assert!(m.mark_stale("nope").is_none());
    }

    #[test]
    fn snapshot_never_overwrites_newer() {
        let m = Mirror::new();
        apply(
            &m,
            r#"{"type":"thing_update","ns":"t","data":"new","ts":10.0,"seq":5}"#,
            false,
        )
        .unwrap();
        assert!(apply(
            &m,
            r#"{"type":"thing_update","ns":"t","data":"old","ts":9.0,"seq":4}"#,
            true
        )
        .is_none());
        assert!(apply(
            &m,
            r#"{"type":"thing_update","ns":"t","data":"old","ts":10.0,"seq":4}"#,
            true
        )
        .is_none());
        assert_eq!(m.get("t").unwrap().data.as_ref(), "\"new\"");
        // A live update always applies, even with an older timestamp.
        apply(
            &m,
            r#"{"type":"thing_update","ns":"t","data":"live","ts":1.0}"#,
            false,
        )
        .unwrap();
        assert_eq!(m.get("t").unwrap().data.as_ref(), "\"live\"");
        // A newer snapshot value applies.
        let t = apply(
            &m,
            r#"{"type":"thing_update","ns":"t","data":"snap","ts":20.0}"#,
            true,
        )
        .unwrap();
        assert!(t.from_snapshot);
    }

    fn data(m: &Mirror, ns: &str) -> String {
        m.get(ns).unwrap().data.to_string()
    }

    #[test]
    fn within_a_run_seq_orders_live_updates_and_replies() {
        let m = Mirror::new();
        for (source, d, seq, applied) in [
            (Source::Live, "1", 5, true),
            (Source::Live, "2", 5, false),
            (Source::Live, "3", 4, false),
            (Source::Reply, "4", 5, false),
            (Source::Reply, "5", 6, true),
            (Source::Live, "6", 6, false),
            (Source::Live, "7", 7, true),
        ] {
            let did = m.apply(&update("t", d, 1.0, Some(seq)), source, 0, true);
            assert_eq!(did.len() == 1, applied, "{source:?} {d}");
        }
        assert_eq!(data(&m, "t"), "7");
        // A new run: anything of it replaces the old run's value.
        assert_eq!(
            m.apply(&update("t", "8", 1.0, Some(1)), Source::Reply, 1, true)
                .len(),
            1
        );
        assert_eq!(
            m.apply(&update("t", "9", 1.0, Some(1)), Source::Live, 2, true)
                .len(),
            1
        );
        // Without a seq (0.2.x), a live update always applies.
        assert_eq!(
            m.apply(&update("t", "10", 0.0, None), Source::Live, 2, true)
                .len(),
            1
        );
        assert_eq!(data(&m, "t"), "10");
        // No copies unless asked for.
        assert!(m
            .apply(&update("t", "11", 0.0, None), Source::Live, 2, false)
            .is_empty());
        assert_eq!(data(&m, "t"), "11");
        assert!(m.get("t").is_some_and(|t| !t.from_snapshot));
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release -p thingsbus-client --lib timing -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing, for a release build"]
    fn walk_a_million() {
        let n: u64 = 1_000_000;
        let m = Mirror::new();
        let mut body = String::new();
        for k in 0..n {
            let i = k.wrapping_mul(7_919) % n;
            if !body.is_empty() {
                body.push(',');
            }
            body.push_str(&format!(
                r#""late.t{i:07}":{{"ns":"late.t{i:07}","data":{{"n":{i}}},"ts":1.0,"documentation_url":null,"seq":{k}}}"#
            ));
        }
        let text =
            format!(r#"{{"type":"thing_snapshot","seq":{n},"data":{{{body}}},"last":true}}"#);
        let t = std::time::Instant::now();
        let s = match thingsbus_protocol::codec::decode_published_text(&text).unwrap() {
            thingsbus_protocol::codec::Published::Snapshot(s) => s,
            other => panic!("{other:?}"),
        };
        let r = Received::new(&text, &s.entries, 0.0, false).unwrap();
        eprintln!("decode {:?}", t.elapsed());
        let t = std::time::Instant::now();
        m.reserve_for(1_000_000);
        m.apply(&r, Source::Reply, 0, false);
        eprintln!("apply {:?}", t.elapsed());
        let things = m.read();
        let t = std::time::Instant::now();
        let sorted = sort_tree(
            &things.slots,
            (0..things.slots.len()).map(as_index).collect(),
        );
        eprintln!("sort {:?}", t.elapsed());
        let t = std::time::Instant::now();
        let copies: Vec<Thing> = sorted
            .iter()
            .map(|&i| things.slots[i as usize].thing())
            .collect();
        eprintln!("copy {:?} {}", t.elapsed(), copies.len());
        drop(things);
        let t = std::time::Instant::now();
        let w = m.walk("");
        eprintln!("walk {:?} {}", t.elapsed(), w.len());
        assert!(w
            .windows(2)
            .all(|p| tree_cmp(p[0].ns.as_str(), p[1].ns.as_str()).is_lt()));
    }
}
