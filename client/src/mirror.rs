//! The local mirror of the directory: every thing's last value, and the tree of namespaces.
//!
//! Written only by the client's writer thread (`driver/writer.rs`); read from anywhere through
//! `DashMap` (readers get clones, never a reference held across an await).

use std::sync::Arc;

use dashmap::DashMap;
use thingsbus_protocol::codec::PublishedUpdate;
use thingsbus_protocol::Namespace;

use crate::Thing;

#[derive(Debug, Default)]
struct Node {
    thing: Option<Thing>,
    /// Unordered, sorted when read. A child is added once, when its node is created, so a plain
    /// vector holds no duplicates and stays cheap with 100,000 siblings.
    children: Vec<Namespace>,
}

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
fn keeps(cur: &Thing, source: Source, generation: u64, ts: f64, seq: Option<u64>) -> bool {
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

/// An update or snapshot entry with everything allocated: built on the receive thread, which
/// decodes, and applied on the writer thread, so decoding the next message overlaps applying
/// this one.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) ns: Namespace,
    pub(crate) data: Arc<str>,
    pub(crate) ts: f64,
    pub(crate) documentation_url: Option<Arc<str>>,
    pub(crate) seq: Option<u64>,
    /// The broker sent it as past its live window.
    pub(crate) stale: bool,
}

impl Prepared {
    pub(crate) fn new(u: &PublishedUpdate<'_>, now: f64, stale: bool) -> Self {
        Prepared {
            ns: u.ns.to_namespace(),
            data: Arc::from(u.data),
            ts: u.ts.map_or(now, |t| t.as_secs()),
            documentation_url: u.documentation_url.as_deref().map(Arc::from),
            seq: u.seq,
            stale,
        }
    }
}

/// Every thing and every prefix of one (things form a tree, as in 0.2.x).
#[derive(Debug)]
pub(crate) struct Mirror {
    nodes: DashMap<Namespace, Node, foldhash::fast::RandomState>,
}

impl Mirror {
    pub(crate) fn new() -> Self {
        let nodes = DashMap::with_hasher(foldhash::fast::RandomState::default());
        nodes.insert(Namespace::root(), Node::default());
        Mirror { nodes }
    }

    /// Applies a value from `source` under `generation` unless the mirror keeps the one it has
    /// (see [`keeps`]). Returns the thing as stored when it was applied (a copy only if
    /// `want_copy`). A thing new to the mirror is linked into the tree at once, except from a
    /// reply: those go into `fresh`, for [`Mirror::link_all`] once the chunk is applied.
    pub(crate) fn apply(
        &self,
        p: Prepared,
        source: Source,
        generation: u64,
        want_copy: bool,
        fresh: &mut Vec<Namespace>,
    ) -> Option<Option<Thing>> {
        let make_thing = |prev_url: Option<Arc<str>>, p: Prepared| Thing {
            ns: p.ns,
            data: p.data,
            ts: p.ts,
            documentation_url: p.documentation_url.or(prev_url),
            seq: p.seq,
            from_snapshot: source != Source::Live,
            stale: p.stale,
            generation,
        };
        // One lookup either way: a big reply fills an empty mirror, where every entry is new.
        match self.nodes.entry(p.ns.clone()) {
            dashmap::mapref::entry::Entry::Occupied(mut node) => {
                let node = node.get_mut();
                if node
                    .thing
                    .as_ref()
                    .is_some_and(|cur| keeps(cur, source, generation, p.ts, p.seq))
                {
                    return None;
                }
                let prev_url = node
                    .thing
                    .as_ref()
                    .and_then(|t| t.documentation_url.clone());
                let thing = make_thing(prev_url, p);
                let copy = want_copy.then(|| thing.clone());
                node.thing = Some(thing);
                Some(copy)
            }
            dashmap::mapref::entry::Entry::Vacant(slot) => {
                let ns = slot.key().clone();
                let thing = make_thing(None, p);
                let copy = want_copy.then(|| thing.clone());
                drop(slot.insert(Node {
                    thing: Some(thing),
                    children: Vec::new(),
                }));
                if source == Source::Reply {
                    fresh.push(ns);
                } else {
                    self.link(ns);
                }
                Some(copy)
            }
        }
    }

    /// Links new things into the tree, as [`Mirror::link`] does one by one; siblings come
    /// together in a snapshot, so a run of them takes one look-up of their parent.
    pub(crate) fn link_all(&self, fresh: Vec<Namespace>) {
        fn parent_of(ns: &Namespace) -> &str {
            ns.as_str().rfind('.').map_or("", |i| &ns.as_str()[..i])
        }
        let mut rest = fresh.as_slice();
        while let Some(first) = rest.first() {
            let parent = parent_of(first);
            let run = rest
                .iter()
                .position(|ns| parent_of(ns) != parent)
                .unwrap_or(rest.len());
            let (siblings, after) = rest.split_at(run);
            match self.nodes.get_mut(parent) {
                Some(mut p) if !first.is_root() => p.children.extend(siblings.iter().cloned()),
                // A parent not there yet: made with its own parents by `link`; the rest of the
                // run finds it.
                _ => {
                    for ns in siblings {
                        self.link(ns.clone());
                    }
                }
            }
            rest = after;
        }
    }

    /// Makes every prefix of `ns` exist and know its child. Stops at the first prefix that
    /// already existed (its own ancestors are linked), and allocates nothing for it.
    fn link(&self, mut child: Namespace) {
        loop {
            let parent_str = match child.as_str().rfind('.') {
                Some(i) => &child.as_str()[..i],
                None if child.is_root() => return,
                None => "",
            };
            if let Some(mut parent) = self.nodes.get_mut(parent_str) {
                parent.children.push(child);
                return;
            }
            let Some(parent) = child.parent() else { return };
            self.nodes
                .entry(parent.clone())
                .or_default()
                .children
                .push(child);
            child = parent;
        }
    }

    /// Makes room for `total` things at once (beyond those already held nothing is reserved), so
    /// that filling a big directory does not grow, and rehash, the table again and again.
    pub(crate) fn reserve_for(&self, total: usize) {
        use std::hash::BuildHasher;
        let additional = total.saturating_sub(self.nodes.len());
        if additional < 1024 {
            return;
        }
        let hasher = self.nodes.hasher().clone();
        let shards = self.nodes.shards();
        let per_shard = additional / shards.len() + 1;
        for shard in shards {
            shard
                .write()
                .reserve(per_shard, |(k, _)| hasher.hash_one(k));
        }
    }

    /// Marks a thing stale; returns it when it had a value and was not stale yet.
    pub(crate) fn mark_stale(&self, ns: &str) -> Option<Thing> {
        let mut node = self.nodes.get_mut(ns)?;
        let thing = node.thing.as_mut()?;
        if thing.stale {
            return None;
        }
        thing.stale = true;
        Some(thing.clone())
    }

    pub(crate) fn get(&self, ns: &str) -> Option<Thing> {
        self.nodes.get(ns).and_then(|n| n.thing.clone())
    }

    /// True when `ns` exists in the tree (as a thing or as a prefix of one).
    pub(crate) fn exists(&self, ns: &str) -> bool {
        self.nodes.contains_key(ns)
    }

    pub(crate) fn children(&self, ns: &str) -> Vec<Namespace> {
        let kids: Vec<Namespace> = self
            .nodes
            .get(ns)
            .map(|n| n.children.to_vec())
            .unwrap_or_default();
        sorted_siblings(kids)
    }

    /// Every thing with a value at or below `ns`, in namespace order.
    pub(crate) fn walk(&self, ns: &str) -> Vec<Thing> {
        let mut out = Vec::new();
        let Some(start) = self.nodes.get(ns).map(|n| n.key().clone()) else {
            return out;
        };
        let mut stack = vec![start];
        while let Some(ns) = stack.pop() {
            let Some(node) = self.nodes.get(&ns) else {
                continue;
            };
            if let Some(t) = &node.thing {
                out.push(t.clone());
            }
            // Sorted, reversed: popping visits children in order.
            let kids: Vec<Namespace> = node.children.to_vec();
            drop(node);
            stack.extend(sorted_siblings(kids).into_iter().rev());
        }
        out
    }

    /// Number of things with a value.
    pub(crate) fn things(&self) -> usize {
        self.nodes.iter().filter(|n| n.thing.is_some()).count()
    }
}

/// Siblings (namespaces with one parent) in namespace order. They differ only after the parent's
/// prefix, so they are sorted on the first 8 bytes of that rest, packed in a `u64` kept beside
/// each name, and compared whole only on a tie: sorting a million siblings then reads a
/// contiguous array instead of following two pointers into the heap for every comparison
/// (seconds, for `thingsbus ls` of a million things, came down to milliseconds).
fn sorted_siblings(kids: Vec<Namespace>) -> Vec<Namespace> {
    if kids.len() < 64 {
        let mut kids = kids;
        kids.sort_unstable();
        return kids;
    }
    let parent_len = kids[0].as_str().rfind('.').map_or(0, |i| i + 1);
    let mut keyed: Vec<(u64, Namespace)> = kids
        .into_iter()
        .map(|ns| {
            let rest = ns.as_str().as_bytes().get(parent_len..).unwrap_or_default();
            let mut head = [0u8; 8];
            let n = rest.len().min(8);
            head[..n].copy_from_slice(&rest[..n]);
            (u64::from_be_bytes(head), ns)
        })
        .collect();
    // A shorter name padded with zero bytes ties with a longer one only when their common
    // bytes are equal: the whole comparison then orders them, as it orders any tie.
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, ns)| ns).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use thingsbus_protocol::codec::{decode_published, Published};

    fn update(json: &str) -> Published<'_> {
        decode_published(json.as_bytes()).unwrap()
    }

    fn apply(m: &Mirror, json: &str, from_snapshot: bool) -> Option<Thing> {
        let source = if from_snapshot {
            Source::Periodic
        } else {
            Source::Live
        };
        match update(json) {
            Published::Update(u) => m
                .apply(
                    Prepared::new(&u, 1000.0, false),
                    source,
                    0,
                    true,
                    &mut Vec::new(),
                )
                .flatten(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn many_siblings_come_in_namespace_order() {
        let names = [
            "p.b",
            "p.a",
            "p.aaaaaaaab",
            "p.aaaaaaaa",
            "p.aaaaaaaaa",
            "p.a-",
            "p.a_",
            "p.z9",
            "p.z10",
            "p.t0000001",
            "p.t0000010",
            "p.t000001",
            "p.y9",
            "p.y0",
        ];
        let mut kids: Vec<Namespace> = (0..200)
            .map(|i| Namespace::new(&format!("p.x{}", i * 7919 % 1000)).expect("ns"))
            .chain(names.iter().map(|n| Namespace::new(n).expect("ns")))
            .collect();
        kids.reverse();
        let mut want: Vec<String> = kids.iter().map(ToString::to_string).collect();
        want.sort();
        let got: Vec<String> = sorted_siblings(kids)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, want);
        // The root's children: no parent prefix.
        let kids: Vec<Namespace> = (0..100)
            .map(|i| Namespace::new(&format!("r{}", 99 - i)).expect("ns"))
            .collect();
        let mut want: Vec<String> = kids.iter().map(ToString::to_string).collect();
        want.sort();
        let got: Vec<String> = sorted_siblings(kids)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, want);
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
        assert_eq!(m.get("a.x").unwrap().ts, 1000.0);
        let kids: Vec<String> = m.children("a").iter().map(ToString::to_string).collect();
        assert_eq!(kids, ["a.b", "a.x"]);
        assert_eq!(m.children("").len(), 1);
        let walked: Vec<String> = m.walk("").iter().map(|t| t.ns.to_string()).collect();
        assert_eq!(walked, ["a.b.c", "a.x"]);
        // Sticky documentation URL.
        let t = apply(
            &m,
            r#"{"type":"thing_update","ns":"a.x","data":3,"ts":2.0}"#,
            false,
        )
        .unwrap();
        assert_eq!(t.documentation_url.as_deref(), Some("u"));
    }

    #[test]
    fn a_reply_chunk_links_its_things_in_any_order() {
        let m = Mirror::new();
        let mut fresh = Vec::new();
        // Children before their parent, two parents, and one new top-level name.
        for ns in ["a.b.c", "a.b.d", "x.y", "a", "a.e"] {
            let p = Prepared {
                ns: Namespace::new(ns).unwrap(),
                data: Arc::from("1"),
                ts: 1.0,
                documentation_url: None,
                seq: Some(1),
                stale: false,
            };
            m.apply(p, Source::Reply, 0, false, &mut fresh).unwrap();
        }
        m.link_all(fresh);
        let names = |v: Vec<Namespace>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(names(m.children("")), ["a", "x"]);
        assert_eq!(names(m.children("a")), ["a.b", "a.e"]);
        assert_eq!(names(m.children("a.b")), ["a.b.c", "a.b.d"]);
        let walked: Vec<String> = m.walk("").iter().map(|t| t.ns.to_string()).collect();
        assert_eq!(walked, ["a", "a.b.c", "a.b.d", "a.e", "x.y"]);
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

    fn entry(ns: &str, data: &str, ts: f64, seq: Option<u64>) -> Prepared {
        Prepared {
            ns: Namespace::new(ns).unwrap(),
            data: Arc::from(data),
            ts,
            documentation_url: None,
            seq,
            stale: false,
        }
    }

    fn data(m: &Mirror, ns: &str) -> String {
        m.get(ns).unwrap().data.to_string()
    }

    #[test]
    fn within_a_run_seq_orders_live_updates_and_replies() {
        let m = Mirror::new();
        let mut fresh = Vec::new();
        for (source, d, seq, applied) in [
            (Source::Live, "1", 5, true),
            (Source::Live, "2", 5, false),
            (Source::Live, "3", 4, false),
            (Source::Reply, "4", 5, false),
            (Source::Reply, "5", 6, true),
            (Source::Live, "6", 6, false),
            (Source::Live, "7", 7, true),
        ] {
            let did = m.apply(entry("t", d, 1.0, Some(seq)), source, 0, false, &mut fresh);
            assert_eq!(did.is_some(), applied, "{source:?} {d}");
        }
        assert_eq!(data(&m, "t"), "7");
        // A new run: anything of it replaces the old run's value.
        assert!(m
            .apply(
                entry("t", "8", 1.0, Some(1)),
                Source::Reply,
                1,
                false,
                &mut fresh
            )
            .is_some());
        assert!(m
            .apply(
                entry("t", "9", 1.0, Some(1)),
                Source::Live,
                2,
                false,
                &mut fresh
            )
            .is_some());
        // Without a seq (0.2.x), a live update always applies.
        assert!(m
            .apply(
                entry("t", "10", 0.0, None),
                Source::Live,
                2,
                false,
                &mut fresh
            )
            .is_some());
        assert_eq!(data(&m, "t"), "10");
    }

    #[test]
    fn only_reply_entries_wait_to_be_linked() {
        let m = Mirror::new();
        let mut fresh = Vec::new();
        m.apply(
            entry("a.live", "1", 1.0, None),
            Source::Live,
            0,
            false,
            &mut fresh,
        );
        m.apply(
            entry("a.periodic", "1", 1.0, None),
            Source::Periodic,
            0,
            false,
            &mut fresh,
        );
        assert!(fresh.is_empty());
        m.apply(
            entry("a.reply", "1", 1.0, None),
            Source::Reply,
            0,
            false,
            &mut fresh,
        );
        assert_eq!(fresh.len(), 1);
        let kids: Vec<String> = m.children("a").iter().map(ToString::to_string).collect();
        assert_eq!(kids, ["a.live", "a.periodic"]);
        m.link_all(fresh);
        assert_eq!(m.children("a").len(), 3);
        assert!(m.get("a.reply").unwrap().from_snapshot);
        assert!(!m.get("a.live").unwrap().from_snapshot);
    }
}
