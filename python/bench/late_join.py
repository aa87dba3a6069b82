"""Late join from Python: how long a new client takes to hold a directory of N things (100,000
by default), thingsbus_rs beside the original thingsbus 0.2.1, against one broker in one run.

    python python/bench/late_join.py [--things 100000] [--runs 5]

Run it with an interpreter that has thingsbus_rs (for figures, a release build:
`maturin build --release -m python/Cargo.toml` and pip install the wheel); the original runs
under target/py02/bin/python (scripts/python-peers.sh). The broker is target/release/thingsbus-broker
when it exists, else target/debug/thingsbus-broker, with its periodic snapshot every 2 s (as
the Rust bench's latejoin). Figures are printed, never asserted. Each join is a fresh client:

- thingsbus_rs.Client: connect, ask the broker's snapshot endpoint, wait_filled(), every thing
  in the mirror;
- thingsbus_rs.compat client.Client: the same client under the 0.2.x API (what a script gets by
  changing its import line), until get_thing(last).get_data() has the value;
- thingsbus 0.2.1 client.Client (in its own interpreter): waits for the next periodic snapshot
  and decodes it in Python, until its directory has every thing.
"""

import argparse
import os
import socket
import statistics
import subprocess
import time
from pathlib import Path

import thingsbus_rs
from thingsbus_rs.compat import client as compat_client

ROOT = Path(__file__).resolve().parents[2]

ORIGINAL = r"""
import sys, time
from thingsbus import client
url, n = sys.argv[1], int(sys.argv[2])
t0 = time.monotonic()
c = client.Client(broker_url=url)
names = c.directory._name_to_thing
# Root, the prefix "late" and n things: the last one is made just before its value is set.
while len(names) < n + 2:
    time.sleep(0.005)
last = c.directory.get_thing("late.t%06d" % (n - 1))
while last.get_data() is None:
    time.sleep(0.001)
print(time.monotonic() - t0)
"""


def free_base():
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        try:
            held = [socket.socket() for _ in range(4)]
            for i, s in enumerate(held):
                s.bind(("127.0.0.1", base + i))
            for s in held:
                s.close()
            return base
        except OSError:
            continue
    raise SystemExit("no free ports")


def broker_binary():
    for profile in ("release", "debug"):
        path = ROOT / "target" / profile / "thingsbus-broker"
        if path.exists():
            return path, profile
    raise SystemExit("no thingsbus-broker binary: cargo build --release -p thingsbus-broker")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--things", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5, help="joins per client (the median is shown)")
    ap.add_argument("--original-runs", type=int, default=3, help="joins of the 0.2.1 client")
    ap.add_argument("--py02", default=str(ROOT / "target" / "py02" / "bin" / "python"))
    args = ap.parse_args()
    n = args.things

    binary, profile = broker_binary()
    base = free_base()
    broker = subprocess.Popen([str(binary), "--bind", "127.0.0.1", "--port", str(base),
                               "--snapshot-interval", "2", "--stats-interval", "0", "-q"])
    directory = "tcp://127.0.0.1:%d" % base
    try:
        filler = thingsbus_rs.Client(url=directory)
        a = thingsbus_rs.Adaptor("late", url="tcp://127.0.0.1:%d" % (base + 1), queue_capacity=n + 1)
        for i in range(n):
            a.send_to("t%06d" % i, {"n": i, "v": i * 0.5})
        a.close(120)
        deadline = time.monotonic() + 120
        while len(filler) < n:
            if time.monotonic() > deadline:
                raise SystemExit("the broker holds %d of %d things" % (len(filler), n))
            time.sleep(0.05)
        filler.close()
        rows = []

        def rs_join():
            t0 = time.monotonic()
            c = thingsbus_rs.Client(url=directory)
            c.wait_filled(120)
            while len(c) < n:
                time.sleep(0.0005)
            took = time.monotonic() - t0
            c.close()
            return took

        def compat_join():
            t0 = time.monotonic()
            c = compat_client.Client(broker_url=directory)
            last = c.directory.get_thing("late.t%06d" % (n - 1))
            while last.get_data() is None or len(c._native) < n:
                time.sleep(0.0005)
            took = time.monotonic() - t0
            c.stop()
            c._native.close()
            return took

        def original_join():
            out = subprocess.run([args.py02, "-c", ORIGINAL, directory, str(n)],
                                 capture_output=True, text=True, timeout=600, check=True)
            return float(out.stdout.strip().splitlines()[-1])

        for label, join, runs in (
            ("thingsbus_rs.Client (snapshot request)", rs_join, args.runs),
            ("thingsbus_rs.compat client.Client", compat_join, args.runs),
            ("thingsbus 0.2.1 client.Client (periodic snapshot every 2 s)", original_join,
             args.original_runs if os.path.exists(args.py02) else 0),
        ):
            if runs == 0:
                rows.append((label, None, []))
                continue
            times = [join() for _ in range(runs)]
            rows.append((label, statistics.median(times), times))
        print("late join of %d things from Python (broker: %s build; thingsbus_rs: %s)"
              % (n, profile, thingsbus_rs.__file__))
        print("| client | median | runs |")
        print("|---|---|---|")
        for label, med, times in rows:
            if med is None:
                print("| %s | – | not run (%s missing) |" % (label, args.py02))
            else:
                print("| %s | %.1f ms | %s |" % (label, med * 1e3,
                                                 ", ".join("%.1f" % (t * 1e3) for t in times)))
    finally:
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    main()
