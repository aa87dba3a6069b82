//! `--state-file`: the directory survives a restart; a damaged file is recovered, never fatal.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use thingsbus_tests::process::{Process, Stream};
use thingsbus_tests::*;

/// A fresh path in the system's temp folder, removed (with its siblings) on drop.
struct TempState(PathBuf);

impl TempState {
    fn new(name: &str) -> TempState {
        let dir = std::env::temp_dir().join(format!(
            "thingsbus-test-{}-{name}-{}",
            std::process::id(),
            now().to_bits()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempState(dir.join("state.journal"))
    }
}

impl Drop for TempState {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn with_state(path: &std::path::Path) -> impl Fn(&mut Config) + '_ {
    move |c: &mut Config| {
        c.stats_interval = Duration::ZERO;
        c.state_file = Some(path.to_owned());
        c.fsync_interval = Duration::from_millis(50);
        c.snapshot_interval = Duration::from_secs(3600);
    }
}

/// The first periodic snapshot (sent at start) as ns → entry.
fn first_snapshot(broker: &Broker) -> serde_json::Map<String, Value> {
    let sub = Subscriber::connect(broker);
    // The start-up snapshot may be gone before we connect: ask the snapshot endpoint instead.
    drop(sub);
    let d = ctx().socket(zmq::DEALER).expect("dealer");
    d.set_rcvtimeo(10_000).expect("timeout");
    d.connect(&broker.endpoints().snapshot).expect("connect");
    d.send(&br#"{"type":"snapshot_request","stale":true}"#[..], 0)
        .expect("send");
    let mut all = serde_json::Map::new();
    loop {
        let v: Value = serde_json::from_slice(&d.recv_bytes(0).expect("reply")).expect("json");
        all.extend(v["data"].as_object().expect("data").clone());
        if v["last"] == true {
            return all;
        }
    }
}

fn wait_synced(broker: &Broker) {
    let seq = broker.stats().accepted.load(Ordering::Relaxed);
    eventually(DEADLINE, "the journal to be synced", || {
        (broker.stats().journal_synced_seq.load(Ordering::Relaxed) >= seq).then_some(())
    });
}

#[test]
fn a_restart_brings_back_values_seq_and_documentation_urls() {
    let state = TempState::new("restart");
    let broker = spawn_broker(with_state(&state.0));
    let input = ZmqInput::connect(&broker);
    let sub = Subscriber::connect(&broker);
    sync(&sub, &input);
    input.send_json(
        &json!({"type": "thing_update", "ns": "shop.door", "data": {"open": true},
                            "documentation_url": "https://wiki/Door"}),
    );
    input.send_json(&json!(["shop.door", null, {"open": false}, null]));
    let old = now() - 7200.0;
    input.send_json(&json!(["garden.old", old, 1, null]));
    for i in 0..200 {
        input.send_json(&json!([format!("bulk.t{i}"), null, i, null]));
    }
    let last = sub.update_for("bulk.t199");
    let last_seq = last["seq"].as_u64().expect("seq");
    wait_synced(&broker);
    drop(input);
    drop(sub);
    drop(broker);

    let broker = spawn_broker(with_state(&state.0));
    let all = first_snapshot(&broker);
    assert_eq!(all["shop.door"]["data"], json!({"open": false}));
    assert_eq!(
        all["shop.door"]["documentation_url"], "https://wiki/Door",
        "URLs are sticky across restarts"
    );
    assert_eq!(
        all["garden.old"]["ts"],
        json!(old),
        "a stale thing comes back with its ts"
    );
    assert_eq!(all["bulk.t199"]["seq"], json!(last_seq));
    for i in 0..200 {
        assert_eq!(all[&format!("bulk.t{i}")]["data"], json!(i));
    }
    // Numbering goes on after the restored seq.
    let input = ZmqInput::connect(&broker);
    let sub = Subscriber::connect(&broker);
    sync(&sub, &input);
    input.send_json(&json!(["after.restart", null, 1, null]));
    let v = sub.update_for("after.restart");
    assert!(v["seq"].as_u64().expect("seq") > last_seq, "{v}");
    // The restored things are in the periodic snapshot too (it went out at start; ask again).
    assert!(broker.stats().things.load(Ordering::Relaxed) >= 203);
}

#[test]
fn things_past_forget_after_are_not_restored() {
    let state = TempState::new("forget");
    let broker = spawn_broker(with_state(&state.0));
    let input = ZmqInput::connect(&broker);
    let sub = Subscriber::connect(&broker);
    sync(&sub, &input);
    input.send_json(&json!(["old.thing", now() - 50.0, 1, null]));
    input.send_json(&json!(["new.thing", null, 2, null]));
    sub.update_for("new.thing");
    wait_synced(&broker);
    drop(broker);
    let broker = spawn_broker(|c| {
        with_state(&state.0)(c);
        c.forget_after = Duration::from_secs(30);
    });
    let all = first_snapshot(&broker);
    assert!(all.contains_key("new.thing"));
    assert!(!all.contains_key("old.thing"), "{all:?}");
}

#[test]
fn a_damaged_file_is_recovered_up_to_the_last_good_record() {
    let state = TempState::new("damaged");
    let broker = spawn_broker(with_state(&state.0));
    let input = ZmqInput::connect(&broker);
    let sub = Subscriber::connect(&broker);
    sync(&sub, &input);
    for i in 0..50 {
        input.send_json(&json!([format!("t.n{i}"), null, i, null]));
    }
    sub.update_for("t.n49");
    wait_synced(&broker);
    drop(broker);

    // A crash in the middle of a write: the last record is cut, and garbage follows.
    let mut bytes = std::fs::read(&state.0).expect("state file");
    let len = bytes.len();
    bytes.truncate(len - 5);
    bytes.extend_from_slice(b"\x07\x00\x00\x00garbage");
    std::fs::write(&state.0, &bytes).expect("write");
    let broker = spawn_broker(with_state(&state.0));
    let all = first_snapshot(&broker);
    let kept = (0..50)
        .filter(|i| all.contains_key(&format!("t.n{i}")))
        .count();
    assert!(
        kept >= 48,
        "only the damaged record may be lost: kept {kept}"
    );
    // The file was rewritten clean: a second restart finds no damage and the same things.
    drop(broker);
    let broker = spawn_broker(with_state(&state.0));
    let again = first_snapshot(&broker);
    assert_eq!(again.keys().filter(|k| k.starts_with("t.")).count(), kept);
    drop(broker);

    // Not a journal at all: moved aside, the broker starts empty, the file is kept.
    std::fs::write(&state.0, b"{\"this is\": \"somebody's config\"}").expect("write");
    let broker = spawn_broker(with_state(&state.0));
    assert!(first_snapshot(&broker).keys().all(|k| !k.starts_with("t.")));
    let dir = state.0.parent().expect("parent");
    let aside = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
    assert!(aside, "the foreign file was kept beside");
}

#[test]
fn an_unwritable_state_file_is_a_clear_error() {
    let config = {
        let mut c = Config::ephemeral();
        c.state_file = Some(PathBuf::from("/proc/thingsbus-cannot-write-here/state"));
        c
    };
    let Err(err) = Broker::start(config) else {
        panic!("a broker started with a state file it cannot write");
    };
    let text = err.to_string();
    assert!(
        text.contains("state file /proc/thingsbus-cannot-write-here/state"),
        "{text}"
    );
}

#[test]
fn a_writer_that_dies_stops_the_broker_and_says_why() {
    let state = TempState::new("writer-dies");
    let broker = spawn_broker(|c| {
        with_state(&state.0)(c);
        c.fault = Some("thingsbus-journal=panic".into());
    });
    let failure = eventually(DEADLINE, "the broker to fail", || {
        broker.stats().health.failure()
    });
    assert!(failure.contains("thingsbus-journal panicked"), "{failure}");
}

// Fault injection on real files. A broker that is killed or whose writes are made to fail runs
// in a process of its own: `tests/bin/child_broker.rs`.

/// Names the state file of a child broker (`tests/bin/child_broker.rs`).
const CHILD_STATE: &str = "THINGSBUS_TEST_CHILD_STATE";
/// The things these tests send are under this prefix.
const TEST_NS: &str = "f.";

/// A child broker (`tests/bin/child_broker.rs`), started with SIGXFSZ ignored (a shell's `trap`
/// survives `exec`), so that a file-size limit makes its writes fail with `EFBIG` as a full
/// disk makes them fail with `ENOSPC`. Killed with SIGKILL on drop.
fn spawn_child(state: &std::path::Path) -> Process {
    Process::build(
        std::process::Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_thingsbus-test-child-broker"))
            .env(CHILD_STATE, state),
    )
    .name("the child broker")
    .stdin_piped()
    .stderr(Stream::Inherit)
    .start()
}

struct Child {
    process: Process,
    directory: String,
    input: String,
    http: String,
}

impl Child {
    fn start(state: &std::path::Path) -> Child {
        let process = spawn_child(state);
        let line = process.expect_line("the child broker's endpoints", |l| l.starts_with("CHILD "));
        let line = line.trim_start_matches("CHILD ");
        let v: Value = serde_json::from_str(line).expect("json");
        let s = |k: &str| v[k].as_str().expect("endpoint").to_owned();
        Child {
            process,
            directory: s("directory"),
            input: s("input"),
            http: s("http"),
        }
    }

    /// Sets the largest file the broker may write (`None`: no limit), as `prlimit` does.
    fn limit_file_size(&self, bytes: Option<u64>) {
        let limit = bytes.map_or("unlimited".to_owned(), |b| b.to_string());
        let status = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(self.process.id().to_string())
            .arg(format!("--fsize={limit}:"))
            .status()
            .expect("run prlimit (util-linux)");
        assert!(status.success(), "prlimit failed");
    }

    /// `GET path` on the HTTP side: status and body.
    fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.http);
        match ureq::get(&url).timeout(DEADLINE).call() {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("GET {url}: {e}"),
        }
    }

    /// A sample of `/metrics`.
    fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    fn synced(&self) -> u64 {
        self.metric("thingsbus_journal_synced_seq")
    }

    /// An input and a subscriber, both connected.
    fn connect(&self) -> (ZmqInput, Seen) {
        let input = ctx().socket(zmq::PUB).expect("PUB");
        input.set_sndhwm(1_000_000).expect("hwm");
        input.set_linger(1000).expect("linger");
        input.connect(&self.input).expect("connect input");
        let sub = ctx().socket(zmq::SUB).expect("SUB");
        sub.set_subscribe(b"").expect("subscribe");
        sub.set_rcvhwm(1_000_000).expect("hwm");
        sub.connect(&self.directory).expect("connect directory");
        let (input, sub) = (ZmqInput(input), Subscriber(sub));
        sync(&sub, &input);
        (
            input,
            Seen {
                sub,
                updates: BTreeMap::new(),
                broker: Value::Null,
            },
        )
    }

    fn kill9(mut self) {
        self.process.kill();
    }
}

use std::collections::BTreeMap;

/// A thing's value as the tests compare it: its `seq` and its data.
type Value1 = (u64, Value);

/// What a subscriber saw: every update of the test's things by namespace, and the broker's
/// own thing as last published.
struct Seen {
    sub: Subscriber,
    updates: BTreeMap<String, Vec<Value1>>,
    broker: Value,
}

impl Seen {
    /// Reads what the broker publishes until `done` holds.
    fn until(&mut self, what: &str, mut done: impl FnMut(&Seen) -> bool) {
        let end = std::time::Instant::now() + DEADLINE * 3;
        while !done(self) {
            assert!(
                std::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            let Some(v) = self.sub.recv_json(Duration::from_millis(100)) else {
                continue;
            };
            if v["type"] != "thing_update" {
                continue;
            }
            let ns = v["ns"].as_str().unwrap_or_default();
            if ns == "thingsbus.broker" {
                self.broker = v["data"].clone();
            } else if ns.starts_with(TEST_NS) {
                let seq = v["seq"].as_u64().expect("seq");
                self.updates
                    .entry(ns.to_owned())
                    .or_default()
                    .push((seq, v["data"].clone()));
            }
        }
    }

    fn has(&self, ns: &str, data: &Value) -> bool {
        self.updates
            .get(ns)
            .is_some_and(|u| u.iter().any(|(_, d)| d == data))
    }

    fn last_seq(&self) -> u64 {
        self.updates
            .values()
            .flat_map(|u| u.iter().map(|(s, _)| *s))
            .max()
            .unwrap_or(0)
    }

    /// Every test thing's last value with `seq <= upto`.
    fn state_at(&self, upto: u64) -> BTreeMap<String, Value1> {
        self.updates
            .iter()
            .filter_map(|(ns, u)| {
                let last = u
                    .iter()
                    .filter(|(s, _)| *s <= upto)
                    .max_by_key(|(s, _)| *s)?;
                Some((ns.clone(), last.clone()))
            })
            .collect()
    }
}

/// What a broker started on `state` holds of the test's things.
fn restored(state: &std::path::Path) -> BTreeMap<String, Value1> {
    let broker = spawn_broker(with_state(state));
    first_snapshot(&broker)
        .into_iter()
        .filter(|(ns, _)| ns.starts_with(TEST_NS))
        .map(|(ns, e)| (ns, (e["seq"].as_u64().expect("seq"), e["data"].clone())))
        .collect()
}

/// Asserts that what came back is the state as of one moment at or after `synced`: every
/// update up to some `seq >= synced`, nothing after it, nothing missing in between. Returns
/// that `seq`.
fn assert_prefix(back: &BTreeMap<String, Value1>, seen: &Seen, synced: u64) -> u64 {
    let upto = back
        .values()
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(0)
        .max(synced);
    let expected = seen.state_at(upto);
    assert_eq!(
        back.len(),
        expected.len(),
        "things back after the restart (synced {synced}, back up to {upto})"
    );
    for (ns, want) in &expected {
        assert_eq!(
            back.get(ns),
            Some(want),
            "{ns} (synced {synced}, back up to {upto})"
        );
    }
    upto
}

/// The records of a state file by offset, read by their lengths only (no checksum): `None`
/// when the file does not end with a whole record.
fn framing(bytes: &[u8]) -> Option<Vec<(usize, Value)>> {
    assert_eq!(bytes.get(..8), Some(&b"TBJRNL01"[..]), "the magic");
    let mut at = 8;
    let mut out = Vec::new();
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let body = bytes.get(at + 8..at + 8 + len)?;
        out.push((at, serde_json::from_slice(body).ok()?));
        at += 8 + len;
    }
    Some(out)
}

fn pad(n: usize) -> String {
    "x".repeat(n)
}

/// A child broker with 40 things synced, then a file-size limit 100 bytes above the file's
/// size and 40 more things: the first append after it is torn by the limit.
fn fill_disk(state: &TempState) -> (Child, ZmqInput, Seen, u64) {
    let child = Child::start(&state.0);
    let (input, mut seen) = child.connect();
    for i in 0..40 {
        input.send_json(&json!([format!("f.a{i}"), null, {"v": i}, null]));
    }
    seen.until("the first things", |s| s.has("f.a39", &json!({"v": 39})));
    let before = seen.last_seq();
    eventually(DEADLINE, "the first things to be synced", || {
        (child.synced() >= before).then_some(())
    });
    let size = std::fs::metadata(&state.0).expect("state file").len();
    child.limit_file_size(Some(size + 100));
    for i in 0..40 {
        input.send_json(&json!([format!("f.b{i}"), null, {"v": i, "pad": pad(120)}, null]));
    }
    seen.until("the next things", |s| {
        s.has("f.b39", &json!({"v": 39, "pad": pad(120)}))
    });
    // Ingest went on publishing; the journal says it cannot keep up.
    let (code, body) = eventually(DEADLINE, "/healthz to report the journal", || {
        let (code, body) = child.get("/healthz");
        (code == 503).then_some((code, body))
    });
    assert_eq!(code, 503);
    assert!(
        body.starts_with("journal: ") && body.contains("failed: File too large"),
        "{body}"
    );
    seen.until("the broker's thing to say the journal fails", |s| {
        s.broker["journal"]["failing"] == true
    });
    // Rewriting is tried again and fails again while the limit holds.
    eventually(DEADLINE, "a failed compaction to be retried", || {
        (child.metric("thingsbus_journal_errors_total") >= 3).then_some(())
    });
    assert_eq!(child.metric("thingsbus_journal_compactions_total"), 1);
    let synced = child.synced();
    assert!(synced >= before, "synced {synced} < {before}");
    assert!(
        seen.state_at(synced).keys().all(|ns| ns.starts_with("f.a")),
        "nothing after the limit was synced"
    );
    // The torn batch was cut off: the file is what it was, whole records only.
    let bytes = std::fs::read(&state.0).expect("state file");
    assert_eq!(bytes.len() as u64, size, "the torn record was cut off");
    assert!(
        framing(&bytes).is_some(),
        "the file ends with a whole record"
    );
    (child, input, seen, synced)
}

#[test]
fn a_full_disk_is_a_fault_until_space_returns_then_everything_is_kept() {
    let state = TempState::new("disk-full");
    let (child, input, mut seen, synced) = fill_disk(&state);
    child.limit_file_size(None);
    let (code, body) = eventually(DEADLINE * 2, "/healthz to recover", || {
        let (code, body) = child.get("/healthz");
        (code == 200).then_some((code, body))
    });
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    seen.until("the broker's thing to say the journal is well", |s| {
        s.broker["journal"]["failing"] == false
    });
    let all = seen.last_seq();
    assert!(
        child.synced() >= all,
        "a compaction rewrote what was missed"
    );
    assert!(child.synced() > synced);
    // Appends work again.
    input.send_json(&json!(["f.c", null, "after", null]));
    seen.until("one more", |s| s.has("f.c", &json!("after")));
    let last = seen.last_seq();
    eventually(DEADLINE, "it to be synced", || {
        (child.synced() >= last).then_some(())
    });
    child.kill9();
    let back = restored(&state.0);
    assert_eq!(assert_prefix(&back, &seen, last), last);
    assert_eq!(back, seen.state_at(u64::MAX), "everything came back");
}

#[test]
fn a_broker_killed_while_its_disk_is_full_comes_back_with_exactly_what_was_synced() {
    let state = TempState::new("disk-full-kill");
    let (child, _input, seen, synced) = fill_disk(&state);
    child.kill9();
    let back = restored(&state.0);
    assert_eq!(back, seen.state_at(synced), "exactly what was synced");
    assert_eq!(back.len(), 40);
}

#[test]
fn a_kill_during_compaction_keeps_the_old_file() {
    let state = TempState::new("kill-compaction");
    let child = Child::start(&state.0);
    let (input, mut seen) = child.connect();
    // Big enough for a compaction to take a while.
    for i in 0..6000 {
        input.send_json(&json!([format!("f.k{i}"), null, {"v": i, "pad": pad(300)}, null]));
    }
    seen.until("every thing", |s| {
        s.has("f.k5999", &json!({"v": 5999, "pad": pad(300)}))
    });
    let last = seen.last_seq();
    eventually(DEADLINE, "everything to be synced", || {
        (child.synced() >= last).then_some(())
    });
    child.kill9();
    // Each start rewrites the file from what it read; kill the broker while it does.
    let tmp = PathBuf::from(format!("{}.compacting", state.0.display()));
    let mut caught = false;
    for _ in 0..20 {
        let mut child = spawn_child(&state.0);
        let end = std::time::Instant::now() + DEADLINE;
        while !tmp.exists() && std::time::Instant::now() < end {}
        child.kill();
        if tmp.exists() {
            caught = true;
            break;
        }
    }
    assert!(caught, "never killed the broker while it was compacting");
    let back = restored(&state.0);
    assert_eq!(back, seen.state_at(last), "everything synced came back");
    let leftovers: Vec<_> = std::fs::read_dir(state.0.parent().expect("dir"))
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("corrupt"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A state file written by a broker that stopped cleanly after `n` things were synced, and
/// what it saw.
fn clean_file(name: &str, n: usize) -> (TempState, BTreeMap<String, Value1>) {
    let state = TempState::new(name);
    let broker = spawn_broker(with_state(&state.0));
    let input = ZmqInput::connect(&broker);
    let sub = Subscriber::connect(&broker);
    sync(&sub, &input);
    let mut sent = BTreeMap::new();
    for i in 0..n {
        input.send_json(&json!([format!("f.t{i}"), null, i, null]));
    }
    for i in 0..n {
        let v = sub.update_for(&format!("f.t{i}"));
        sent.insert(
            format!("f.t{i}"),
            (v["seq"].as_u64().expect("seq"), v["data"].clone()),
        );
    }
    wait_synced(&broker);
    drop(broker);
    (state, sent)
}

/// The test things of a state file's records, by namespace, with each record's offset.
fn file_things(bytes: &[u8]) -> Vec<(usize, String, Value1)> {
    framing(bytes)
        .expect("a whole file")
        .into_iter()
        .filter_map(|(at, v)| {
            let ns = v["ns"].as_str()?.to_owned();
            ns.starts_with(TEST_NS)
                .then(|| (at, ns, (v["seq"].as_u64().expect("seq"), v["data"].clone())))
        })
        .collect()
}

fn corrupt_copies(state: &std::path::Path) -> Vec<PathBuf> {
    let name = state
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    std::fs::read_dir(state.parent().expect("dir"))
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}.corrupt-")))
        })
        .collect()
}

#[test]
fn a_file_cut_mid_record_comes_back_up_to_the_cut() {
    let (state, sent) = clean_file("cut", 60);
    let bytes = std::fs::read(&state.0).expect("state file");
    let records = file_things(&bytes);
    assert_eq!(records.len(), 60, "one record per thing");
    // Cut in the middle of the 41st record: a crash while writing.
    let (at, _, _) = &records[40];
    std::fs::write(&state.0, &bytes[..at + 20]).expect("cut");
    let expected: BTreeMap<String, Value1> = records[..40]
        .iter()
        .map(|(_, ns, v)| (ns.clone(), v.clone()))
        .collect();
    assert!(expected.iter().all(|(ns, v)| sent.get(ns) == Some(v)));
    assert_eq!(restored(&state.0), expected);
    assert!(
        corrupt_copies(&state.0).is_empty(),
        "a cut last record is a crash, not damage"
    );
    // The start-up compaction wrote a whole file: the same comes back again.
    assert_eq!(restored(&state.0), expected);
}

#[test]
fn a_flipped_byte_mid_file_loses_that_record_only_and_the_file_is_kept_aside() {
    let (state, sent) = clean_file("flip", 60);
    let mut bytes = std::fs::read(&state.0).expect("state file");
    let records = file_things(&bytes);
    let (at, lost, _) = records[30].clone();
    // A byte of its data (not its header) flips.
    bytes[at + 8 + 30] ^= 0x10;
    std::fs::write(&state.0, &bytes).expect("flip");
    let mut expected = sent.clone();
    expected.remove(&lost);
    assert_eq!(restored(&state.0), expected, "every record but {lost}");
    let copies = corrupt_copies(&state.0);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(
        std::fs::read(&copies[0]).expect("copy"),
        bytes,
        "the damaged file is kept as it was"
    );
    assert_eq!(restored(&state.0), expected);
    assert_eq!(
        corrupt_copies(&state.0).len(),
        1,
        "the rewritten file is clean"
    );
}
