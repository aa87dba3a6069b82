//! Replays every saved fuzz input (`fuzz/seeds/<target>/` and the crashes kept in
//! `fuzz/regressions/<target>/`) through the same checks the `cargo fuzz` targets run, on stable.

use std::path::PathBuf;

use thingsbus_protocol::fuzzing;

fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for dir in ["seeds", "regressions"] {
        let dir = fuzz.join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            let bytes = std::fs::read(&path).expect("readable input");
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no saved inputs for {target} under {}",
        fuzz.display()
    );
}

#[test]
fn json_input() {
    replay("json_input", fuzzing::json_input);
}

#[test]
fn msgpack_input() {
    replay("msgpack_input", fuzzing::msgpack_input);
}

#[test]
fn snapshot_request() {
    replay("snapshot_request", fuzzing::snapshot_request);
}

#[test]
fn published() {
    replay("published", fuzzing::published);
}

#[test]
fn signed_datagram() {
    replay("signed_datagram", fuzzing::signed_datagram);
}
