#!/usr/bin/env bash
# Builds the Python package thingsbus-rs (python/, PyO3) into a virtual environment,
# target/py-rs by default (THINGSBUS_PY_RS overrides), with what its tests need (pytest, pyzmq),
# and builds the broker binary its tests start. Prints the environment's python.
#
# zmqfan 0.8.0 (without its dead pinned dependencies, as scripts/python-peers.sh) is there for
# one test: the original package's own example, generic_zmq_adaptor.py, imports it.
#
# A debug build with `maturin develop`, in the workspace's own target/ directory: the Rust
# crates it links (libzmq, libsodium, the client and adaptor) are the ones the rest of the
# workspace has already built, so only the bindings themselves are compiled here.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${THINGSBUS_PY_RS:-$root/target/py-rs}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import maturin, pytest, zmq, zmqfan' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check 'maturin>=1.9.4,<2' pytest pyzmq >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps zmqfan==0.8.0 >&2
fi
cd "$root"
cargo build -q --locked -p thingsbus-broker >&2
(
  export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
  maturin develop -q --locked -m python/Cargo.toml >&2
)
echo "$venv/bin/python"
