//! The original Python thingsbus 0.2.1 as a real peer: installed on first use by
//! `scripts/python-peers.sh` (a virtual environment under `target/py02`), driven through
//! `tests/py/peer.py` over JSON lines.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// A running `peer.py ROLE ...`, killed on drop.
pub struct PyPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    pending: Mutex<VecDeque<Value>>,
    stderr: Arc<Mutex<String>>,
    role: String,
}

impl PyPeer {
    /// Starts `peer.py` with `args` (the first is the role).
    pub fn start(args: &[&str]) -> PyPeer {
        let mut child = Command::new(python())
            .arg("-u")
            .arg(root().join("tests/py/peer.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Python peer");
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&l)
                    .unwrap_or_else(|e| panic!("peer.py printed non-JSON ({e}): {l}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("stderr")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        PyPeer {
            stdin: child.stdin.take(),
            child,
            lines,
            pending: Mutex::new(VecDeque::new()),
            stderr,
            role: args.first().copied().unwrap_or("?").to_owned(),
        }
    }

    /// Starts a peer and waits for its `{"ready": true}` line.
    pub fn ready(args: &[&str]) -> PyPeer {
        let p = PyPeer::start(args);
        p.wait_for("ready", |v| v["ready"] == true);
        p
    }

    /// Writes one line to the peer's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to the Python peer");
        stdin.flush().expect("flush");
    }

    /// Closes stdin: the peer finishes what it was given and exits.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The first line matching `pred` within [`DEADLINE`]; lines that do not match are kept for
    /// later calls.
    pub fn wait_for(&self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        self.try_wait_for(DEADLINE, &mut pred).unwrap_or_else(|| {
            panic!(
                "the Python {} printed no {what} within {DEADLINE:?}; stderr:\n{}",
                self.role,
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
        {
            let mut pending = self.pending.lock().expect("pending");
            if let Some(i) = pending.iter().position(&mut *pred) {
                return pending.remove(i);
            }
        }
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let v = self.lines.recv_timeout(left).ok()?;
            if pred(&v) {
                return Some(v);
            }
            self.pending.lock().expect("pending").push_back(v);
        }
    }

    /// Sends a command and waits for the reply that carries `key`.
    pub fn ask(&mut self, command: &str, key: &str) -> Value {
        self.send(command);
        self.wait_for(&format!("an answer to {command:?}"), |v| {
            v.get(key).is_some()
        })
    }

    /// Lines not consumed yet, removing them.
    pub fn drain(&self) -> Vec<Value> {
        let mut out: Vec<Value> = self.pending.lock().expect("pending").drain(..).collect();
        while let Ok(v) = self.lines.try_recv() {
            out.push(v);
        }
        out
    }

    /// What the peer wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
