//! The bytes of a state file, and reading them back: pure functions of the file's bytes.
//!
//! An 8-byte magic, then records: `len: u32 LE`, `crc32: u32 LE`, then `len` bytes (one update as
//! the broker published it, so every body starts with [`UPDATE_PREFIX`]).
//!
//! Reading keeps every record that checks out. A bad record (its checksum fails, its length is
//! absurd or runs past the end) is skipped when a good record follows it: first where its own
//! length says the next one starts, else at the next offset where a record with the update
//! prefix and a matching checksum starts (JSON text never holds the NUL bytes of a header, so a
//! record is not found inside another). What no good record follows is the damaged tail.

use std::path::{Path, PathBuf};

use thingsbus_protocol::codec::UPDATE_PREFIX;

/// What a state file starts with.
pub(crate) const MAGIC: &[u8; 8] = b"TBJRNL01";
/// A record longer than this is taken for garbage.
pub(crate) const MAX_RECORD: u32 = 64 << 20;
/// Bytes of a record's header.
const HEADER: usize = 8;

/// Appends one record holding `body` to `out`; returns the bytes it took.
pub(crate) fn encode_record(out: &mut Vec<u8>, body: &[u8]) -> u64 {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    (HEADER + body.len()) as u64
}

/// Why the bytes at an offset are not a good record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flaw {
    /// Fewer than 8 bytes left: a header cut short.
    HeaderCut,
    /// A length beyond [`MAX_RECORD`].
    Absurd(u32),
    /// A sane length that runs past the end of the file.
    BodyCut,
    /// The body does not match its checksum.
    Checksum,
}

impl Flaw {
    /// What a write cut short by a crash leaves at the end of a file (not a sign of damage).
    fn is_cut(self) -> bool {
        matches!(self, Flaw::HeaderCut | Flaw::BodyCut)
    }
}

impl std::fmt::Display for Flaw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flaw::HeaderCut => f.write_str("record header cut short"),
            Flaw::Absurd(len) => write!(f, "impossible record length {len}"),
            Flaw::BodyCut => f.write_str("record cut short"),
            Flaw::Checksum => f.write_str("checksum mismatch"),
        }
    }
}

/// Bytes that were not used: from offset `at`, `bytes` long, starting with a `flaw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Damage {
    pub(crate) at: u64,
    pub(crate) bytes: u64,
    pub(crate) flaw: Flaw,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte {} ({} bytes)",
            self.flaw, self.at, self.bytes
        )
    }
}

/// What reading a journal found.
#[derive(Debug, Default)]
pub(crate) struct Recovery<'a> {
    /// Records read and checked, in file order.
    pub(crate) records: Vec<&'a [u8]>,
    /// The file's size.
    pub(crate) file_bytes: u64,
    /// Bad stretches that good records follow: skipped.
    pub(crate) skipped: Vec<Damage>,
    /// Where the readable part ended before the end of the file, and why.
    pub(crate) tail: Option<Damage>,
    /// The file did not start with the magic: nothing in it was used.
    pub(crate) foreign: bool,
}

impl Recovery<'_> {
    /// Whether the file shows damage beyond a crash's cut-short last record, so that it is
    /// kept aside for a human before the start-up compaction replaces it.
    pub(crate) fn keep_aside(&self) -> bool {
        self.foreign || !self.skipped.is_empty() || self.tail.is_some_and(|t| !t.flaw.is_cut())
    }

    /// Bytes of the file that held no good record.
    pub(crate) fn lost_bytes(&self) -> u64 {
        self.skipped.iter().chain(&self.tail).map(|d| d.bytes).sum()
    }
}

/// The record at `pos`: its body and where the next one starts.
fn record_at(bytes: &[u8], pos: usize) -> Result<(&[u8], usize), Flaw> {
    let head = bytes.get(pos..pos + HEADER).ok_or(Flaw::HeaderCut)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_RECORD {
        return Err(Flaw::Absurd(len));
    }
    let start = pos + HEADER;
    let body = bytes
        .get(start..start + len as usize)
        .ok_or(Flaw::BodyCut)?;
    if crc32fast::hash(body) != crc {
        return Err(Flaw::Checksum);
    }
    Ok((body, start + len as usize))
}

/// The first offset after `bad` where a good record (with the update prefix) starts.
fn resync(bytes: &[u8], bad: usize) -> Option<usize> {
    let first = UPDATE_PREFIX[0];
    let mut body = bad + HEADER + 1;
    while let Some(i) = bytes.get(body..)?.iter().position(|&b| b == first) {
        body += i;
        let pos = body - HEADER;
        if bytes[body..].starts_with(UPDATE_PREFIX) && record_at(bytes, pos).is_ok() {
            return Some(pos);
        }
        body += 1;
    }
    None
}

/// Reads every good record of a journal's bytes.
pub(crate) fn parse(bytes: &[u8]) -> Recovery<'_> {
    let mut r = Recovery {
        file_bytes: bytes.len() as u64,
        ..Recovery::default()
    };
    if bytes.is_empty() {
        return r;
    }
    if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        r.foreign = true;
        r.tail = Some(Damage {
            at: 0,
            bytes: r.file_bytes,
            flaw: Flaw::HeaderCut,
        });
        return r;
    }
    let mut pos = MAGIC.len();
    while pos < bytes.len() {
        match record_at(bytes, pos) {
            Ok((body, next)) => {
                r.records.push(body);
                pos = next;
            }
            Err(flaw) => {
                // A bad checksum under a sane length: trust the length if a good record (or
                // the end) is where it points.
                let declared = (flaw == Flaw::Checksum)
                    .then(|| {
                        let len = bytes
                            .get(pos..pos + 4)
                            .map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
                        pos + HEADER + len
                    })
                    .filter(|&next| next == bytes.len() || record_at(bytes, next).is_ok());
                let Some(next) = declared.or_else(|| resync(bytes, pos)) else {
                    r.tail = Some(Damage {
                        at: pos as u64,
                        bytes: (bytes.len() - pos) as u64,
                        flaw,
                    });
                    break;
                };
                r.skipped.push(Damage {
                    at: pos as u64,
                    bytes: (next - pos) as u64,
                    flaw,
                });
                pos = next;
            }
        }
    }
    r
}

/// Where a damaged file at `path` is kept: `<path>.corrupt-<unix time>`, with `-2`, `-3`…
/// added while `taken` says a name is in use.
pub(crate) fn aside_path(path: &Path, unix_secs: u64, taken: impl Fn(&Path) -> bool) -> PathBuf {
    let base = format!("{}.corrupt-{unix_secs}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 2;
    while taken(&candidate) {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(name: &str) -> Vec<u8> {
        let mut u = UPDATE_PREFIX.to_vec();
        u.extend_from_slice(format!("\"ns\":\"{name}\"}}").as_bytes());
        u
    }

    /// A journal of updates named `names`, and each record's offset.
    fn journal(names: &[&str]) -> (Vec<u8>, Vec<usize>) {
        let mut out = MAGIC.to_vec();
        let mut at = Vec::new();
        for n in names {
            at.push(out.len());
            encode_record(&mut out, &update(n));
        }
        (out, at)
    }

    fn names(r: &Recovery<'_>) -> Vec<String> {
        r.records
            .iter()
            .map(|b| {
                let s = String::from_utf8_lossy(&b[UPDATE_PREFIX.len()..]).into_owned();
                s.trim_start_matches("\"ns\":\"")
                    .trim_end_matches("\"}")
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn a_whole_file_comes_back_without_damage() {
        let (file, _) = journal(&["one", "two", "three"]);
        let r = parse(&file);
        assert_eq!(names(&r), ["one", "two", "three"]);
        assert!(r.skipped.is_empty() && r.tail.is_none() && !r.keep_aside());
        assert_eq!(r.lost_bytes(), 0);
        // Empty, or the magic alone: nothing, no damage.
        for empty in [&b""[..], &MAGIC[..]] {
            let r = parse(empty);
            assert!(r.records.is_empty() && r.tail.is_none() && !r.keep_aside());
        }
    }

    #[test]
    fn a_cut_last_record_is_a_crash_not_damage() {
        let (file, at) = journal(&["one", "two", "three"]);
        for cut in at[2] + 1..file.len() {
            let r = parse(&file[..cut]);
            assert_eq!(names(&r), ["one", "two"], "cut at {cut}");
            let tail = r.tail.expect("a tail");
            assert_eq!(tail.at, at[2] as u64);
            assert_eq!(tail.bytes, (cut - at[2]) as u64);
            assert!(!r.keep_aside(), "cut at {cut}");
        }
    }

    #[test]
    fn a_bad_checksum_is_skipped_where_its_length_points() {
        let (mut file, at) = journal(&["one", "two", "three"]);
        // A flipped byte in the second record's body.
        file[at[1] + HEADER + 5] ^= 0x20;
        let r = parse(&file);
        assert_eq!(names(&r), ["one", "three"]);
        assert_eq!(
            r.skipped,
            [Damage {
                at: at[1] as u64,
                bytes: (at[2] - at[1]) as u64,
                flaw: Flaw::Checksum
            }]
        );
        assert!(r.keep_aside());
        // The last record bad: nothing follows, the length points at the end.
        let (mut file, at) = journal(&["one", "two"]);
        file[at[1] + HEADER + 3] ^= 1;
        let r = parse(&file);
        assert_eq!(names(&r), ["one"]);
        assert_eq!(r.skipped.len(), 1);
        assert!(r.tail.is_none() && r.keep_aside());
    }

    #[test]
    fn a_wrong_length_is_passed_by_finding_the_next_good_record() {
        // A flipped bit in the second record's length: still sane, points into the third.
        let (mut file, at) = journal(&["one", "two", "three", "four"]);
        file[at[1]] ^= 0x04;
        let r = parse(&file);
        assert_eq!(names(&r), ["one", "three", "four"]);
        assert_eq!(r.skipped[0].at, at[1] as u64);
        assert_eq!(r.skipped[0].bytes, (at[2] - at[1]) as u64);
        // An absurd length, and one that runs past the end: the same.
        for flip in [0x80, 0x01] {
            let (mut file, at) = journal(&["one", "two", "three"]);
            file[at[1] + 3 - usize::from(flip == 0x01)] ^= flip;
            let r = parse(&file);
            assert_eq!(names(&r), ["one", "three"], "flip {flip:#x}");
            assert!(r.keep_aside());
        }
    }

    #[test]
    fn garbage_that_no_good_record_follows_ends_the_readable_part() {
        let (mut file, _) = journal(&["one", "two"]);
        let end = file.len();
        file.extend_from_slice(&u32::MAX.to_le_bytes());
        file.extend_from_slice(&[0; 4]);
        file.extend_from_slice(b"garbage");
        let r = parse(&file);
        assert_eq!(names(&r), ["one", "two"]);
        let tail = r.tail.expect("tail");
        assert_eq!((tail.at, tail.flaw), (end as u64, Flaw::Absurd(u32::MAX)));
        assert!(r.keep_aside(), "garbage is not a crash's cut");
        assert_eq!(r.lost_bytes(), (file.len() - end) as u64);
        // Records appended behind a torn one (what older brokers did) are found again.
        let (mut file, _) = journal(&["one"]);
        let (torn, _) = journal(&["two"]);
        file.extend_from_slice(&torn[MAGIC.len()..torn.len() - 3]);
        let (more, _) = journal(&["three", "four"]);
        file.extend_from_slice(&more[MAGIC.len()..]);
        assert_eq!(names(&parse(&file)), ["one", "three", "four"]);
    }

    #[test]
    fn a_file_without_the_magic_is_foreign() {
        let r = parse(b"hello world, this is not a journal");
        assert!(r.foreign && r.records.is_empty() && r.keep_aside());
    }

    #[test]
    fn a_damaged_file_goes_aside_under_a_free_name() {
        let p = Path::new("/var/lib/thingsbus/state");
        assert_eq!(
            aside_path(p, 1700000000, |_| false),
            Path::new("/var/lib/thingsbus/state.corrupt-1700000000")
        );
        let taken = |c: &Path| !c.to_string_lossy().ends_with("-3");
        assert_eq!(
            aside_path(p, 1700000000, taken),
            Path::new("/var/lib/thingsbus/state.corrupt-1700000000-3")
        );
    }
}
