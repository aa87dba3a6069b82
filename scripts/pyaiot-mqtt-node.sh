#!/usr/bin/env bash
# Runs pyaiot's own MQTT test node (utils/mqtt/mqtt-test-node.py, unchanged) against a
# Mosquitto on localhost:1886 (the port the node is written for), a thingsbus broker and
# `thingsbus-mqtt-bridge --pyaiot-nodes`: its resources must appear, its LED must switch through
# `thingsbus call`, and it must go offline once stopped. The acceptance check of issue #28; not
# part of scripts/test, since it needs port 1886 free and a checkout of pyaiot.
#
#   scripts/pyaiot-mqtt-node.sh PATH/TO/pyaiot
#
# The node imports hbmqtt, whose maintained fork is amqtt (hbmqtt itself no longer runs on
# current Pythons); a small `hbmqtt` package that re-exports amqtt lets the file run as it is.
# The file also calls create_task(send_values(client)) where send_values is a plain function
# (it starts its own tasks and returns None): asyncio refuses that with a TypeError, which ends
# the node before it ever checks in. A sitecustomize.py makes create_task(None) a no-op for that
# one call, so the file itself still runs unchanged.
# Needs mosquitto, python3 with venv, and PyPI (for amqtt). Exits non-zero on failure.
set -euo pipefail

pyaiot=${1:?usage: $0 PATH/TO/pyaiot (a checkout of github.com/pyaiot/pyaiot)}
node_py="$pyaiot/utils/mqtt/mqtt-test-node.py"
[ -f "$node_py" ] || { echo "no $node_py: give the path of a pyaiot checkout" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/pyaiot-mqtt.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if (exec 3<>/dev/tcp/127.0.0.1/1886) 2>/dev/null; then
  echo "port 1886 is in use: the test node only talks to localhost:1886; free it first" >&2
  exit 2
fi

venv=${PYAIOT_VENV:-$root/target/pyaiot-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q amqtt
fi
shim="$work/shim/hbmqtt"
mkdir -p "$shim/mqtt"
printf 'from amqtt.client import MQTTClient\nfrom amqtt.client import ClientError as ClientException\n' >"$shim/client.py"
printf 'from amqtt.mqtt.constants import *\n' >"$shim/mqtt/constants.py"
touch "$shim/__init__.py" "$shim/mqtt/__init__.py"
cat >"$work/shim/sitecustomize.py" <<'PY'
import asyncio.base_events

_create_task = asyncio.base_events.BaseEventLoop.create_task


def create_task(self, coro, **kw):
    if coro is None:  # mqtt-test-node.py: create_task(send_values(...)), not a coroutine
        f = self.create_future()
        f.set_result(None)
        return f
    return _create_task(self, coro, **kw)


asyncio.base_events.BaseEventLoop.create_task = create_task
PY

cargo build -q --locked -p thingsbus-broker -p thingsbus-adaptors-generic --bins
bin="$root/target/debug"
tb() { "$bin/thingsbus" -u tcp://127.0.0.1:17954 "$@"; }

printf 'listener 1886 127.0.0.1\nallow_anonymous true\npersistence false\n' >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
"$bin/thingsbus-broker" --bind 127.0.0.1 --port 17954 >"$work/broker.log" 2>&1 &
pids+=($!)
sleep 1
# --max-time 40: the node checks in every 30 s; the script need not wait pyaiot's 120 s.
"$bin/thingsbus-mqtt-bridge" -u tcp://127.0.0.1:17954 --mqtt mqtt://127.0.0.1:1886 \
  --pyaiot-nodes pyaiot.mqtt --max-time 40 --report-interval 5 >"$work/bridge.log" 2>&1 &
pids+=($!)
sleep 1
PYTHONPATH="$work/shim" "$venv/bin/python" "$node_py" >"$work/node.log" 2>&1 &
node=$!
pids+=($node)

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then echo "ok: $what"; return 0; fi
    sleep 0.5
  done
  echo "FAILED: $what" >&2
  tail -n 20 "$work/bridge.log" "$work/node.log" >&2
  return 1
}
has() { tb get --json "$1" 2>/dev/null | grep -q -- "$2"; }

wait_for "temperature with its unit" has pyaiot.mqtt.mqtt_test_node.temperature '°C'
wait_for "pressure with its unit" has pyaiot.mqtt.mqtt_test_node.pressure 'hPa'
wait_for "the node online" has pyaiot.mqtt.mqtt_test_node '"online": *true'
tb get pyaiot.mqtt.mqtt_test_node
tb call pyaiot.mqtt.mqtt_test_node.led '"1"'
wait_for "the LED on" has pyaiot.mqtt.mqtt_test_node.led '1'
tb call pyaiot.mqtt.mqtt_test_node.led '"0"'
wait_for "the LED off" has pyaiot.mqtt.mqtt_test_node.led '0'
kill "$node"
echo "node stopped; waiting up to 40 s for it to go offline"
wait_for "the node offline" has pyaiot.mqtt.mqtt_test_node '"online": *false'
grep "pyaiot nodes report" "$work/bridge.log" | tail -n 1
echo "pyaiot's MQTT test node: PASSED"
