#!/usr/bin/env bash
# Builds every Python and JavaScript plugin into OUTDIR/<name>.wasm:
#   plugins/python/<name>/app.py, plugins/hostile/py-<name>/app.py (componentize-py)
#   plugins/js/<name>/app.js,     plugins/hostile/js-<name>/app.js (componentize-js)
# The world (guard or action) comes from the `cb-world: <world>` line at the
# top of the source. Tools come from scripts/guest-tools.sh (run first).
# A plugin is rebuilt only when the sha256 of its inputs (its files but
# cases/, the WIT, the tool versions) differs from OUTDIR/<name>.wasm.sha256.
#
# JS components are built with componentize-js's default features, so they
# import wasi:http (the host links it). For a component without it, set
# CB_JS_DISABLE="http fetch-event" (passed as `-d http fetch-event`).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
wit=$root/wit
js_disable=${CB_JS_DISABLE:-}

# shellcheck source=guest-tools.sh
source "$root/scripts/guest-tools.sh"
py_tool=$("${COMPONENTIZE_PY[@]}" --version)
js_tool="componentize-js $("${COMPONENTIZE_JS[@]}" --version) $(sha256sum "$root/plugins/js/package-lock.json" | cut -d' ' -f1) disable=[$js_disable]"

die() { echo "guest-build: $*" >&2; exit 1; }

# sha256 over the plugin's files (but cases/), the WIT and the tool.
inputs_hash() {
  local dir=$1 tool=$2
  {
    echo "$tool"
    (cd "$dir" && find . -type f -not -path './cases/*' -not -path '*/__pycache__/*' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum)
    (cd "$wit" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -d' ' -f1
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
built=0 skipped=0
build() {
  local dir=$1 lang=$2 name src world tool hash wasm stamp started
  name=$(basename "$dir")
  src=$dir/app.$lang
  [ -f "$src" ] || die "$dir has no app.$lang"
  world=$(grep -m1 -oE 'cb-world: *(guard|action)' "$src" | awk '{print $NF}') \
    || die "$src has no 'cb-world: guard|action' line"
  if [ "$lang" = py ]; then tool=$py_tool; else tool=$js_tool; fi
  hash=$(inputs_hash "$dir" "$tool")
  wasm=$out/$name.wasm
  stamp=$wasm.sha256
  if [ -f "$wasm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
    echo "guest-build: $name is up to date"
    skipped=$((skipped + 1))
    return
  fi
  rm -f "$stamp"
  started=$(date +%s%N)
  if [ "$lang" = py ]; then
    # From a copy: componentize-py writes __pycache__ next to the sources.
    rm -rf "$scratch/$name" && cp -R "$dir" "$scratch/$name"
    "${COMPONENTIZE_PY[@]}" -q -d "$wit" -w "$world" componentize app -p "$scratch/$name" -o "$wasm.tmp" \
      || die "componentize-py failed for $name"
  else
    local disable=()
    # shellcheck disable=SC2206
    [ -n "$js_disable" ] && disable=(-d $js_disable)
    "${COMPONENTIZE_JS[@]}" "$src" --wit "$wit" -n "$world" "${disable[@]}" -o "$wasm.tmp" >/dev/null \
      || die "componentize-js failed for $name"
  fi
  mv "$wasm.tmp" "$wasm"
  echo "$hash" >"$stamp"
  echo "guest-build: built $name ($world, $(stat -c %s "$wasm") bytes, $((($(date +%s%N) - started) / 1000000)) ms)"
  built=$((built + 1))
}

shopt -s nullglob
for d in "$root"/plugins/python/*/ "$root"/plugins/hostile/py-*/; do build "${d%/}" py; done
for d in "$root"/plugins/js/*/ "$root"/plugins/hostile/js-*/; do
  [ "$(basename "$d")" = node_modules ] && continue
  build "${d%/}" js
done
echo "guest-build: $built built, $skipped up to date, in $out"
