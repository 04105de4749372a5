#!/usr/bin/env bash
# Everything `make test` runs after lint: the Rust tests (against real
# nats-server processes), the doc tests, and every example plugin's case
# files through `cb-host plugin test`. Ends with one total line.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_BIN="$(cat target/nats-server-bin)"
export NATS_SERVER_BIN
# One compile cache for every test and `plugin test` run (the Python and
# JavaScript components take seconds each to compile), kept in target/.
export XDG_CACHE_HOME="$PWD/target/xdg-cache"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

cargo test --workspace --lib --bins --tests --examples 2>&1 | tee "$log"
cargo test --workspace --doc 2>&1 | tee -a "$log"

echo "== each example plugin's own cargo tests (the Rust harness API)"
# Native test builds of the plugin crates share target/ with the host; the
# harness builds each plugin for wasm32-wasip2 into target/wasm, where the
# test plugins already are. Guards and actions in two invocations: the
# SDK's world is a cargo feature.
export CB_HARNESS_TARGET_DIR="$PWD/target/wasm"
cargo test --manifest-path plugins/Cargo.toml --target-dir target \
  -p amount-limit -p require-fields -p siblings-in-place -p business-hours 2>&1 | tee -a "$log"
cargo test --manifest-path plugins/Cargo.toml --target-dir target -p auto-advance -p audit-log 2>&1 | tee -a "$log"

echo "== examples/nats_timing_test (the original's five scenarios, exits 1 on any failure)"
cargo run --quiet --example nats_timing_test -- --tokens 100 2>&1 | tee -a "$log"

echo "== plugin case files (cb-host plugin test)"
for p in amount-limit require-fields siblings-in-place business-hours auto-advance audit-log; do
  RUST_LOG=warn target/debug/cb-host plugin test "target/test-plugins/$p.wasm" "plugins/$p/cases" 2>&1 | tee -a "$log"
done
for p in python/py-amount-limit python/py-auto-advance js/js-require-fields js/js-auto-advance; do
  RUST_LOG=warn target/debug/cb-host plugin test "target/test-plugins/${p#*/}.wasm" "plugins/$p/cases" 2>&1 | tee -a "$log"
done

awk '
  /^test result: /      { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^[0-9]+ passed, [0-9]+ failed$/ { p += $1; f += $3 }
  END { printf "total: %d passed, %d failed\n", p, f }
' "$log"
