//! Running the tools as binaries, through the harness's [`Process`](thingsbus_tests::process):
//! output collected on threads, signals through `kill(1)`, the process killed if a test fails
//! half-way.

#![allow(dead_code, unreachable_pub)]

use std::process::{Command, ExitStatus};

/// A running tool.
pub use thingsbus_tests::process::Process as Proc;
pub use thingsbus_tests::DEADLINE;

/// `thingsbus` or `thingsbus-zmq-adaptor`, with RUST_LOG cleared so tests see the defaults.
pub fn tool(name: &str) -> Command {
    let path = match name {
        "thingsbus" => env!("CARGO_BIN_EXE_thingsbus"),
        "thingsbus-zmq-adaptor" => env!("CARGO_BIN_EXE_thingsbus-zmq-adaptor"),
        "thingsbus-mqtt-bridge" => env!("CARGO_BIN_EXE_thingsbus-mqtt-bridge"),
        "thingsbus-coap-adaptor" => env!("CARGO_BIN_EXE_thingsbus-coap-adaptor"),
        "thingsbus-ws-adaptor" => env!("CARGO_BIN_EXE_thingsbus-ws-adaptor"),
        other => panic!("no tool {other}"),
    };
    let mut c = Command::new(path);
    c.env_remove("RUST_LOG");
    for var in [
        "THINGSBUS_ZONE",
        "THINGSBUS_URL",
        "THINGSBUS_INPUT_URL",
        "THINGSBUS_NAMESERVER",
    ] {
        c.env_remove(var);
    }
    c
}

/// Runs to completion; panics if it takes longer than [`DEADLINE`].
pub fn run(cmd: &mut Command) -> Output {
    let mut p = Proc::spawn(cmd);
    let status = p.wait(DEADLINE).expect("the command finishes in time");
    // The reader threads may still hold the last bytes the process wrote.
    p.finish_output();
    let stdout = p.all_stdout();
    Output {
        status,
        stdout,
        stderr: p.stderr(),
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The exit code (panics on death by signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }
}

/// `key=value` from a tracing text line (the value up to the next space).
pub fn field(line: &str, key: &str) -> Option<u64> {
    let prefix = format!("{key}=");
    line.split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.strip_prefix("reasons=").unwrap_or(w))
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim_matches('"').parse().ok())
}
