//! The broker process of the journal's fault-injection tests (`tests/persistence.rs`): a broker
//! with its state file at `$THINGSBUS_TEST_CHILD_STATE`, fast fsyncs and an HTTP side. It prints
//! one line, `CHILD {"directory": ..., "input": ..., "http": ...}`, and serves until its stdin
//! closes or it is killed. A binary of its own, so that a test can limit its file size
//! (`prlimit`) and kill it with SIGKILL.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use thingsbus_tests::spawn_broker;

fn main() {
    let Some(state) = std::env::var_os("THINGSBUS_TEST_CHILD_STATE") else {
        eprintln!("thingsbus-test-child-broker: THINGSBUS_TEST_CHILD_STATE names no state file");
        std::process::exit(2);
    };
    let broker = spawn_broker(|c| {
        c.state_file = Some(PathBuf::from(state));
        c.fsync_interval = Duration::from_millis(20);
        c.stats_interval = Duration::from_millis(100);
        c.snapshot_interval = Duration::from_secs(3600);
        c.http = Some("127.0.0.1:0".parse().expect("address"));
    });
    let e = broker.endpoints();
    println!(
        "CHILD {}",
        json!({
            "directory": e.directory,
            "input": e.input,
            "http": e.http.map(|a| a.to_string()),
        })
    );
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
}
