//! `--state-file`: the directory survives a restart; a damaged file is recovered, never fatal.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
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
