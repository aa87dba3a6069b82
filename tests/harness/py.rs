//! The original Python thingsbus 0.2.1 as a real peer: installed on first use by
//! `scripts/python-peers.sh` (a virtual environment under `target/py02`), driven through
//! `tests/py/peer.py` over JSON lines.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::process::Process;
use crate::DEADLINE;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Installs the 0.2.1 environment the first time (`scripts/python-peers.sh`) and returns its
/// Python interpreter, or why it could not be installed.
pub fn install() -> Result<PathBuf, String> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PY.get_or_init(|| crate::run_script("python-peers.sh").map(|out| PathBuf::from(out.trim())))
        .clone()
}

/// The Python interpreter of the 0.2.1 environment. Panics, with what to do, when it cannot be
/// installed: a test names [`PYTHON_02`](crate::peers::PYTHON_02) with
/// [`require_peers!`](crate::require_peers) first, so that it fails or is skipped on purpose.
pub fn python() -> PathBuf {
    install().unwrap_or_else(|e| {
        panic!(
            "the Python thingsbus 0.2.1 peers are required for the interoperability tests and \
             could not be installed (needs python3 with venv and access to PyPI): {e}"
        )
    })
}

/// A running `peer.py ROLE ...`, killed on drop. It prints one JSON object a line.
pub struct PyPeer {
    process: Process,
}

impl PyPeer {
    /// Starts `peer.py` with `args` (the first is the role).
    pub fn start(args: &[&str]) -> PyPeer {
        let role = args.first().copied().unwrap_or("?");
        let process = Process::build(
            Command::new(python())
                .arg("-u")
                .arg(root().join("tests/py/peer.py"))
                .args(args),
        )
        .name(&format!("Python {role}"))
        .stdin_piped()
        .start();
        PyPeer { process }
    }

    /// Starts a peer and waits for its `{"ready": true}` line.
    pub fn ready(args: &[&str]) -> PyPeer {
        let p = PyPeer::start(args);
        p.wait_for("ready", |v| v["ready"] == true);
        p
    }

    /// Writes one line to the peer's stdin.
    pub fn send(&mut self, line: &str) {
        if let Err(e) = self.process.write_line(line) {
            panic!(
                "cannot write to the {} ({e}); its stderr:\n{}",
                self.process.name(),
                self.stderr()
            );
        }
    }

    /// Closes stdin: the peer finishes what it was given and exits.
    pub fn close_stdin(&mut self) {
        self.process.close_stdin();
    }

    /// The first line matching `pred` within [`DEADLINE`]; lines that do not match are kept for
    /// later calls.
    pub fn wait_for(&self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        self.try_wait_for(DEADLINE, &mut pred).unwrap_or_else(|| {
            panic!(
                "the {} printed no {what} within {DEADLINE:?}; unread lines: {:?}; stderr:\n{}",
                self.process.name(),
                self.process.out().drain(),
                self.stderr()
            )
        })
    }

    /// Like [`PyPeer::wait_for`] with a time-out and no panic.
    pub fn try_wait_for(
        &self,
        timeout: Duration,
        pred: &mut impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        let line = self
            .process
            .out()
            .take(timeout, |l| json(l).is_some_and(|v| pred(&v)))?;
        json(&line)
    }

    /// Sends a command and waits for the reply that carries `key`.
    pub fn ask(&mut self, command: &str, key: &str) -> Value {
        self.send(command);
        self.wait_for(&format!("an answer to {command:?}"), |v| {
            v.get(key).is_some()
        })
    }

    /// Lines not consumed yet, removing them. Panics on a line that is not JSON.
    pub fn drain(&self) -> Vec<Value> {
        self.process
            .out()
            .drain()
            .iter()
            .map(|l| json(l).unwrap_or_else(|| panic!("peer.py printed non-JSON: {l}")))
            .collect()
    }

    /// What the peer wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.process.running()
    }
}

fn json(line: &str) -> Option<Value> {
    serde_json::from_str(line).ok()
}

/// A Python 0.2.1 broker on 127.0.0.1: directory port, input port (ZMQ and UDP).
pub struct PyBroker {
    /// The running broker.
    pub peer: PyPeer,
    /// `tcp://127.0.0.1:P`.
    pub directory: String,
    /// `tcp://127.0.0.1:P+1`.
    pub input: String,
    /// `127.0.0.1:P+1`.
    pub udp: std::net::SocketAddr,
}

impl PyBroker {
    /// Starts one with periodic snapshots every `interval` seconds.
    pub fn start(interval: f64) -> PyBroker {
        let (d, i) = free_port_pair();
        let peer = PyPeer::ready(&[
            "broker",
            "--directory-port",
            &d.to_string(),
            "--input-port",
            &i.to_string(),
            "--interval",
            &interval.to_string(),
        ]);
        PyBroker {
            peer,
            directory: format!("tcp://127.0.0.1:{d}"),
            input: format!("tcp://127.0.0.1:{i}"),
            udp: ([127, 0, 0, 1], i).into(),
        }
    }
}

/// Two consecutive free ports, TCP and UDP both free on the second.
fn free_port_pair() -> (u16, u16) {
    for _ in 0..100 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = a.local_addr().expect("addr").port();
        if p == u16::MAX {
            continue;
        }
        let free = std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
            && std::net::UdpSocket::bind(("0.0.0.0", p + 1)).is_ok();
        if free {
            return (p, p + 1);
        }
    }
    panic!("no free port pair");
}
