#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after another, on nightly Rust with
# cargo-fuzz (`cargo install cargo-fuzz`). The corpus grows in fuzz/corpus/<target> (not kept in
# git); a crash lands in fuzz/artifacts/<target>: copy it to fuzz/regressions/<target>/ so that
# `cargo test -p thingsbus-protocol --test fuzz_regressions` replays it on stable forever.
#
#   fuzz/run.sh 600        # ten minutes per target
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
targets=(json_input msgpack_input snapshot_request published signed_datagram)
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${seconds}s" >&2
  if ! cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" "regressions/$t" -- \
      -max_total_time="$seconds" -max_len=8192 -timeout=10 -print_final_stats=1; then
    echo "!! $t found a crash: see fuzz/artifacts/$t" >&2
    status=1
  fi
done
exit "$status"
