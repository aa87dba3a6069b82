//! Snapshots split into chunks of bounded size.
//!
//! A chunk is an ordinary `thing_snapshot`, so a 0.2.x client applies chunks one after another:
//!
//! ```json
//! {"type":"thing_snapshot","ts":1700000000.0,"seq":812,"epoch":1699990000000000,"snapshot":3,"chunk":0,
//!  "data":{"a.b":{"ns":"a.b","data":1,"ts":1699999990.0,"documentation_url":null,"seq":805}},
//!  "last":true}
//! ```
//!
//! `seq` is the sequence number of the last update the snapshot includes; `epoch` identifies the
//! broker run; `snapshot` numbers the snapshots of one broker run; `chunk` counts from 0; `last`
//! marks the final chunk. Replies to snapshot requests add `"request"` (the request's `id`) and
//! `"subtree"` (the namespace asked for).

use crate::codec::{write_f64, UPDATE_PREFIX};
use crate::message::Timestamp;

/// Default bound on one chunk, in bytes.
pub const DEFAULT_CHUNK_BYTES: usize = 256 * 1024;

const TAIL_MORE: &[u8] = b"},\"last\":false}";
const TAIL_LAST: &[u8] = b"},\"last\":true}";

/// What every chunk of one snapshot carries.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotHeader {
    /// When the snapshot was taken.
    pub ts: Timestamp,
    /// The sequence number the snapshot is consistent with.
    pub seq: u64,
    /// The snapshot's number within this broker run.
    pub id: u64,
    /// Identifies the broker run (its start time in microseconds): a client that sees it change
    /// knows the broker restarted and its `seq` started over.
    pub epoch: u64,
}

/// Builds the chunks of one snapshot from encoded updates.
///
/// ```
/// use thingsbus_protocol::snapshot::{ChunkWriter, SnapshotHeader};
/// use thingsbus_protocol::Timestamp;
/// let header = SnapshotHeader { ts: Timestamp::from_secs(5.0).unwrap(), seq: 0, id: 1, epoch: 7 };
/// let w = ChunkWriter::new(header, 1024);
/// let last = w.finish();
/// assert_eq!(last, br#"{"type":"thing_snapshot","ts":5.0,"seq":0,"epoch":7,"snapshot":1,"chunk":0,"data":{},"last":true}"#);
/// ```
#[derive(Debug)]
pub struct ChunkWriter {
    header: SnapshotHeader,
    extra: String,
    max_bytes: usize,
    chunk: u64,
    buf: Vec<u8>,
    entries: usize,
}

impl ChunkWriter {
    /// Starts the first chunk. A chunk stays within `max_bytes` unless a single entry is larger.
    pub fn new(header: SnapshotHeader, max_bytes: usize) -> Self {
        Self::with_extra(header, max_bytes, String::new())
    }

    /// Like [`ChunkWriter::new`], with more header fields: `extra` is written as is after the
    /// standard ones and must be `,"key":value` pairs of valid JSON.
    pub fn with_extra(header: SnapshotHeader, max_bytes: usize, extra: String) -> Self {
        let mut w = ChunkWriter {
            header,
            extra,
            max_bytes,
            chunk: 0,
            buf: Vec::new(),
            entries: 0,
        };
        w.start();
        w
    }

    fn start(&mut self) {
        self.buf.clear();
        self.buf.reserve(self.max_bytes.min(1 << 20));
        self.entries = 0;
        self.buf
            .extend_from_slice(b"{\"type\":\"thing_snapshot\",\"ts\":");
        write_f64(&mut self.buf, self.header.ts.as_secs());
        let rest = format!(
            ",\"seq\":{},\"epoch\":{},\"snapshot\":{},\"chunk\":{}{},\"data\":{{",
            self.header.seq, self.header.epoch, self.header.id, self.chunk, self.extra
        );

        self.buf.extend_from_slice(rest.as_bytes());
    }

    fn needed(ns: &[u8], encoded_update: &[u8]) -> usize {
        // `,"<ns>":{` + body
        ns.len() + 5 + encoded_update.len().saturating_sub(UPDATE_PREFIX.len())
    }

    /// True when the current chunk holds something and this entry would push it past the bound:
    /// call [`ChunkWriter::take_chunk`] before [`ChunkWriter::push`].
    pub fn is_full_for(&self, ns: &[u8], encoded_update: &[u8]) -> bool {
        self.entries > 0
            && self.buf.len() + Self::needed(ns, encoded_update) + TAIL_MORE.len() > self.max_bytes
    }

    /// True when the current chunk holds at least one entry.
    pub fn has_entries(&self) -> bool {
        self.entries > 0
    }

    /// Closes the current chunk (not the last one), returns it and starts the next.
    pub fn take_chunk(&mut self) -> Vec<u8> {
        self.buf.extend_from_slice(TAIL_MORE);
        let chunk = std::mem::take(&mut self.buf);
        self.chunk += 1;
        self.start();
        chunk
    }

    /// Adds one thing, given its namespace and its update as written by
    /// [`crate::codec::encode_update`].
    pub fn push(&mut self, ns: &[u8], encoded_update: &[u8]) {
        let Some(body) = encoded_update.get(UPDATE_PREFIX.len()..) else {
            return;
        };
        if self.entries > 0 {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(ns);
        self.buf.extend_from_slice(b"\":{");
        self.buf.extend_from_slice(body);
        self.entries += 1;
    }

    /// Starts a section whose chunks carry `extra` in their header instead (e.g. the stale
    /// things of a reply, marked `"stale":true`). Returns the chunk that had to be closed for it,
    /// if the current one held entries.
    pub fn begin_section(&mut self, extra: String) -> Option<Vec<u8>> {
        self.extra = extra;
        if self.entries > 0 {
            return Some(self.take_chunk());
        }
        self.start();
        None
    }

    /// Adds one thing, first closing the current chunk if the entry does not fit; returns the
    /// closed chunk.
    pub fn push_or_take(&mut self, ns: &[u8], encoded_update: &[u8]) -> Option<Vec<u8>> {
        let finished = self
            .is_full_for(ns, encoded_update)
            .then(|| self.take_chunk());
        self.push(ns, encoded_update);
        finished
    }

    /// Closes and returns the last chunk (possibly with no entries).
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(TAIL_LAST);
        self.buf
    }
}

/// A late joiner's request to the snapshot endpoint (`P + 2`), as the broker reads it:
/// `{"type":"snapshot_request","ns":"shop","id":17,"stale":true}`, every key but `type` optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The subtree asked for; `""` for the whole directory.
    pub subtree: String,
    /// The request's `id` as JSON text (`null` when absent), echoed in every reply.
    pub id_json: String,
    /// Also the things past the live window that are not forgotten yet.
    pub stale: bool,
}

/// Why a snapshot request was refused, with its `id` when it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequestError {
    /// The request's `id` as JSON text, `null` when unreadable.
    pub id_json: String,
    /// What was wrong, for the `detail` of the `snapshot_error` reply.
    pub detail: String,
}

#[derive(serde::Deserialize)]
struct RequestFields<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    #[serde(default)]
    ns: Option<String>,
    #[serde(default, borrow)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    stale: bool,
}

impl SnapshotRequest {
    /// Reads one request frame.
    ///
    /// # Errors
    /// Not a JSON object with `"type":"snapshot_request"`, a key of the wrong type, or an
    /// invalid namespace.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotRequest, SnapshotRequestError> {
        let f: RequestFields<'_> =
            serde_json::from_slice(bytes).map_err(|e| SnapshotRequestError {
                id_json: "null".into(),
                detail: format!("not a snapshot request: {e}"),
            })?;
        // The id is pasted into every reply: it must be JSON that every peer can read, which a
        // number beyond f64 (`1e999`) is not, although the JSON grammar allows it. (Found by
        // fuzzing; kept in fuzz/regressions/snapshot_request/.)
        let id_json = match f.id {
            None => "null".to_owned(),
            Some(raw) => match serde_json::from_str::<serde_json::Value>(raw.get()) {
                Ok(v) => v.to_string(),
                Err(e) => {
                    return Err(SnapshotRequestError {
                        id_json: "null".into(),
                        detail: format!("id is not a usable JSON value: {e}"),
                    })
                }
            },
        };
        let refuse = |detail: String| SnapshotRequestError {
            id_json: id_json.clone(),
            detail,
        };
        if f.ty != "snapshot_request" {
            return Err(refuse(format!("unknown type {:?}", f.ty)));
        }
        let subtree = f.ns.unwrap_or_default();
        crate::namespace::validate(&subtree).map_err(|e| refuse(e.to_string()))?;
        Ok(SnapshotRequest {
            subtree,
            id_json,
            stale: f.stale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_update, encoded_update_ns};

    #[test]
    fn chunks_are_bounded_valid_json_and_complete() {
        let header = SnapshotHeader {
            ts: Timestamp::from_secs(10.0).unwrap(),
            seq: 500,
            id: 2,
            epoch: 1,
        };

        let max = 2048;
        let mut w = ChunkWriter::new(header, max);
        let mut chunks = Vec::new();
        for i in 0..500 {
            let mut e = Vec::new();
            encode_update(&mut e, &format!("t.n{i}"), "[1,2,3]", header.ts, None, i);
            if let Some(c) = w.push_or_take(encoded_update_ns(&e), &e) {
                chunks.push(c);
            }
        }
        chunks.push(w.finish());
        assert!(chunks.len() > 10);
        let mut seen = std::collections::HashSet::new();
        for (i, c) in chunks.iter().enumerate() {
            assert!(c.len() <= max, "chunk {i} is {} bytes", c.len());
            let v: serde_json::Value = serde_json::from_slice(c).unwrap();
            assert_eq!(v["type"], "thing_snapshot");
            assert_eq!(v["seq"], 500);
            assert_eq!(v["chunk"], i as u64);
            assert_eq!(v["last"], i + 1 == chunks.len());
            for (k, entry) in v["data"].as_object().unwrap() {
                assert_eq!(entry["ns"], k.as_str());
                assert!(entry["ts"].is_f64());
                assert!(seen.insert(k.clone()));
            }
        }
        assert_eq!(seen.len(), 500);
    }

    #[test]
    fn snapshot_requests_are_read_or_refused_with_their_id() {
        let r = SnapshotRequest::decode(
            br#"{"type":"snapshot_request","ns":"a.b","id":{"k":[1]},"stale":true}"#,
        )
        .unwrap();
        assert_eq!(r.subtree, "a.b");
        assert_eq!(r.id_json, r#"{"k":[1]}"#);
        assert!(r.stale);
        let r = SnapshotRequest::decode(br#"{"type":"snapshot_request"}"#).unwrap();
        assert_eq!(
            (r.subtree.as_str(), r.id_json.as_str(), r.stale),
            ("", "null", false)
        );
        for (bytes, id) in [
            (&br#"{"type":"other","id":5}"#[..], "5"),
            (
                br#"{"type":"snapshot_request","ns":"A","id":"x"}"#,
                r#""x""#,
            ),
            (br#"{"type":"snapshot_request","stale":"yes"}"#, "null"),
            (br#"[1]"#, "null"),
            (br#"{"type":"snapshot_request","id":1e999}"#, "null"),
            (b"\xff", "null"),
        ] {
            let e = SnapshotRequest::decode(bytes).unwrap_err();
            assert_eq!(e.id_json, id, "{}", String::from_utf8_lossy(bytes));
            assert!(!e.detail.is_empty());
        }
    }
}
