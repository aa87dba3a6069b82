#!/usr/bin/env bash
# Runs pyaiot's own WebSocket test client (utils/ws/ws_test_client.py, unchanged) as a node of
# `thingsbus-ws-adaptor`: its resources must appear, its LED must switch through `thingsbus
# call` (the client reads the command's `payload`), and it must be offline once it is stopped.
# Not part of scripts/test: it needs a checkout of pyaiot.
#
#   scripts/pyaiot-ws-node.sh PATH/TO/pyaiot
#
# The client's main(args) reads args.host and args.port while its argument parser defines
# --gateway-host and --gateway-port, so run as a script it stops with an AttributeError; here
# main() is called with host and port, the file itself unchanged. It imports pyaiot's messaging
# module from the checkout, and websocket-client. Needs python3 with venv and PyPI.
set -euo pipefail

pyaiot=${1:?usage: $0 PATH/TO/pyaiot (a checkout of github.com/pyaiot/pyaiot)}
client_py="$pyaiot/utils/ws/ws_test_client.py"
[ -f "$client_py" ] || { echo "no $client_py: give the path of a pyaiot checkout" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/pyaiot-ws.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

venv=${PYAIOT_VENV:-$root/target/pyaiot-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import websocket' 2>/dev/null || "$venv/bin/pip" install -q websocket-client

cargo build -q --locked -p thingsbus-broker -p thingsbus-adaptors-generic --bins
bin="$root/target/debug"
tb() { "$bin/thingsbus" -u tcp://127.0.0.1:18954 "$@"; }
port=${PYAIOT_WS_PORT:-18001}

"$bin/thingsbus-broker" --bind 127.0.0.1 --port 18954 >"$work/broker.log" 2>&1 &
pids+=($!)
sleep 1
"$bin/thingsbus-ws-adaptor" -u tcp://127.0.0.1:18954 --ws-bind "127.0.0.1:$port" \
  --ns pyaiot.ws --report-interval 5 >"$work/adaptor.log" 2>&1 &
pids+=($!)
sleep 1
PYTHONPATH="$pyaiot" "$venv/bin/python" -c '
import argparse, runpy, sys
client = runpy.run_path(sys.argv[1])
client["main"](argparse.Namespace(host="127.0.0.1", port=sys.argv[2]))
' "$client_py" "$port" >"$work/client.log" 2>&1 &
client=$!
pids+=($client)

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then echo "ok: $what"; return 0; fi
    sleep 0.5
  done
  echo "FAILED: $what" >&2
  tail -n 20 "$work/adaptor.log" "$work/client.log" >&2
  return 1
}
node_ns() { tb ls --json pyaiot.ws 2>/dev/null | grep -o '"pyaiot\.ws\.ws-[0-9a-f]*"' | head -n 1 | tr -d '"'; }
has() { tb get --json "$1" 2>/dev/null | grep -q -- "$2"; }

found() { test -n "$(node_ns)"; }
wait_for "the node" found
ns=$(node_ns)
wait_for "its os" has "$ns.os" riot
wait_for "its LED" has "$ns.led" 0
tb get "$ns"
tb call "$ns.led" 1
wait_for "the LED on" has "$ns.led" 1
tb call "$ns.led" 0
wait_for "the LED off" has "$ns.led" 0
kill "$client"
wait_for "the node offline" has "$ns" '"online": *false'
grep "ws report" "$work/adaptor.log" | tail -n 1 || true
echo "pyaiot's WebSocket test client: PASSED"
