#!/usr/bin/env bash
# Installs the original Python thingsbus 0.2.1 (the deployed peers we must interoperate with) into
# a virtual environment, target/py02 by default (THINGSBUS_PY02 overrides), and prints its python.
#
#   pip install --no-deps thingsbus==0.2.1 zmqfan==0.8.0   # their pinned deps (dnspython3,
#   pip install pyzmq msgpack dnspython six                  #  msgpack-python) are dead names
#
# One compatibility shim is applied, because today's msgpack broke the 0.2.1 broker: it calls
# msgpack.Unpacker(encoding='utf-8'), an argument msgpack 1.0 removed; the TypeError is swallowed
# by a bare except, so every UDP datagram would be silently lost. The shim maps it to raw=False,
# which is what encoding='utf-8' meant. Nothing else is changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${THINGSBUS_PY02:-$root/target/py02}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import thingsbus.broker, zmq, msgpack, dns, thingsbus_msgpack_compat' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps thingsbus==0.2.1 zmqfan==0.8.0 >&2
  "$venv/bin/pip" install -q --disable-pip-version-check pyzmq msgpack dnspython six >&2
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cat > "$site/thingsbus_msgpack_compat.py" <<'PY'
"""Lets thingsbus 0.2.1 run on msgpack >= 1.0 (see scripts/python-peers.sh)."""
import msgpack

_Unpacker = msgpack.Unpacker


class Unpacker(_Unpacker):
    def __init__(self, *args, **kwargs):
        if kwargs.pop("encoding", None) is not None:
            kwargs.setdefault("raw", False)
        super().__init__(*args, **kwargs)


msgpack.Unpacker = Unpacker
PY
  echo "import thingsbus_msgpack_compat" > "$site/thingsbus_msgpack_compat.pth"
fi
echo "$venv/bin/python"
