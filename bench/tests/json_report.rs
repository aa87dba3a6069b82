//! A short real run writes its report with --json, and `compare` reads two of them.

use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_thingsbus-bench");

#[test]
fn a_real_run_writes_a_json_report_that_compare_reads() {
    let dir = std::env::temp_dir().join(format!("thingsbus-bench-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("run.json");
    let out = Command::new(BENCH)
        .args([
            "fanout-many",
            "--seconds",
            "0.2",
            "--against",
            "floor",
            "--json",
        ])
        .arg(&file)
        .output()
        .expect("the bench runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).expect("the report was written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    // The file holds what the last stdout line holds.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("stdout")).expect("a JSON line");
    assert_eq!(v, last);
    let scenario = &v["scenarios"][0];
    assert_eq!(scenario["scenario"], "fanout-many @ 1,000/s");
    let metric = &scenario["metrics"][0];
    assert_eq!(metric["unit"], "fraction");
    assert!(
        metric["ours"].is_number() && metric["floor"].is_number(),
        "{metric}"
    );
    assert!(!scenario["ceilings"]
        .as_array()
        .expect("ceilings")
        .is_empty());

    let out = Command::new(BENCH)
        .arg("compare")
        .args([&file, &file])
        .output()
        .expect("compare runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(
            "| fanout-many @ 1,000/s | 10 subscribers: least fraction of updates received | ours |"
        ),
        "{table}"
    );
    // The same run on both sides: every new / old is 1.00×.
    assert!(table.contains("| 1.00× |"), "{table}");

    let out = Command::new(BENCH)
        .args(["compare", "/nonexistent/old.json"])
        .arg(&file)
        .output()
        .expect("compare runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/old.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
