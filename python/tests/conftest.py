"""Fixtures for the thingsbus_rs tests: a real broker process (target/debug/thingsbus-broker) on
127.0.0.1 with free ports, and `eventually` for waits with a deadline.

Run through scripts/test, or by hand after scripts/python-rs.sh:

    target/py-rs/bin/python -m pytest python/tests
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Generous: the tests must pass on a busy 2-core machine. Nothing asserts on durations.
DEADLINE = 60.0


def eventually(check, what, deadline=DEADLINE, every=0.02):
    """Calls `check()` until it returns something truthy and returns that; fails the test,
    saying `what` was awaited, once `deadline` seconds have passed."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail("waited %.0f s for %s" % (deadline, what))
        time.sleep(every)


def broker_binary():
    path = Path(os.environ.get("THINGSBUS_BROKER_BIN", ROOT / "target" / "debug" / "thingsbus-broker"))
    if not path.exists():
        pytest.fail(
            "%s is missing: build it with `cargo build -p thingsbus-broker` (scripts/python-rs.sh does)"
            % path
        )
    return path


def free_ports(n):
    """A port P with P .. P+n-1 free for TCP (and P+1 for UDP too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        held = []
        try:
            for p in range(base, base + n):
                t = socket.socket()
                t.bind(("127.0.0.1", p))
                held.append(t)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("127.0.0.1", base + 1))
            held.append(u)
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no 4 consecutive free ports on 127.0.0.1")


class Broker:
    """A thingsbus-broker process; ports P (directory), P+1 (input, ZMQ and UDP), P+2
    (snapshots), P+3 (commands)."""

    def __init__(self, *extra):
        self.port = free_ports(4)
        self.directory = "tcp://127.0.0.1:%d" % self.port
        self.input = "tcp://127.0.0.1:%d" % (self.port + 1)
        self.udp = "127.0.0.1:%d" % (self.port + 1)
        self.commands = "tcp://127.0.0.1:%d" % (self.port + 3)
        self.proc = subprocess.Popen(
            [str(broker_binary()), "--bind", "127.0.0.1", "--port", str(self.port),
             "--stats-interval", "0", "-q", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        eventually(self._listening, "the broker to listen on %d..%d" % (self.port, self.port + 3))

    def _listening(self):
        if self.proc.poll() is not None:
            pytest.fail("the broker exited (%s): %s" % (self.proc.returncode, self.proc.stderr.read().decode()))
        for p in range(self.port, self.port + 4):
            try:
                socket.create_connection(("127.0.0.1", p), timeout=1).close()
            except OSError:
                return False
        return True

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def broker():
    b = Broker()
    yield b
    b.stop()


@pytest.fixture
def fast_snapshots():
    """A broker that sends its periodic snapshot every half second."""
    b = Broker("--snapshot-interval", "0.5")
    yield b
    b.stop()


def python02():
    """The interpreter of the original thingsbus 0.2.1 (scripts/python-peers.sh)."""
    env = os.environ.get("THINGSBUS_PY02")
    path = Path(env) / "bin" / "python" if env else ROOT / "target" / "py02" / "bin" / "python"
    if not path.exists():
        pytest.fail("%s is missing: run scripts/python-peers.sh (scripts/test does)" % path)
    return str(path)


@pytest.fixture
def py02():
    return python02()


def run_python(python, args, timeout=DEADLINE, **kw):
    """Runs a Python script to its end; fails the test with its output if it does not exit 0."""
    done = subprocess.run([python, *args], capture_output=True, text=True, timeout=timeout, **kw)
    if done.returncode != 0:
        pytest.fail("%s %s exited %d\nstdout:\n%s\nstderr:\n%s"
                    % (python, " ".join(args), done.returncode, done.stdout, done.stderr))
    return done.stdout


THIS_PYTHON = sys.executable
