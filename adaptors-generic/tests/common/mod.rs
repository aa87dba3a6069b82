//! Running the tools as binaries: output collected on threads, signals through `kill(1)`,
//! the process killed if a test fails half-way.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use thingsbus_tests::DEADLINE;

/// `thingsbus` or `thingsbus-zmq-adaptor`, with RUST_LOG cleared so tests see the defaults.
pub fn tool(name: &str) -> Command {
    let path = match name {
        "thingsbus" => env!("CARGO_BIN_EXE_thingsbus"),
        "thingsbus-zmq-adaptor" => env!("CARGO_BIN_EXE_thingsbus-zmq-adaptor"),
        "thingsbus-mqtt-bridge" => env!("CARGO_BIN_EXE_thingsbus-mqtt-bridge"),
        "thingsbus-coap-adaptor" => env!("CARGO_BIN_EXE_thingsbus-coap-adaptor"),
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

/// A running tool.
pub struct Proc {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tool starts");
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("stdout piped");
        let out_reader = std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("stderr buffer")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            child,
            lines,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    /// Once the process has exited: waits until everything it wrote has been read.
    pub fn finish_output(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// The next stdout line within `timeout`.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// What stderr holds so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer").clone()
    }

    /// Waits for the stderr text to contain `needle`.
    pub fn wait_stderr(&self, needle: &str) -> String {
        thingsbus_tests::eventually(DEADLINE, &format!("{needle:?} on stderr"), || {
            let s = self.stderr();
            s.contains(needle).then_some(s)
        })
    }

    /// The rest of stdout, once the process has ended.
    pub fn all_stdout(&self) -> String {
        let mut s = String::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }

    /// Sends a signal by name (`TERM`, `INT`) through `kill(1)`, keeping the tests free of unsafe.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
