#!/usr/bin/env bash
# Installs the pinned toolchains for the Python and JavaScript plugins under
# target/guest-tools/ (idempotent; needs only python3 with venv or pip, and
# node with npm, plus access to PyPI and the npm registry):
#  - componentize-py (PyPI), in the venv target/guest-tools/venv (or, where
#    venv is unavailable, `pip install --target target/guest-tools/pylib`);
#  - @bytecodealliance/componentize-js (npm, with jco as its dependency) in
#    target/guest-tools/node, with `npm ci` from plugins/js/package.json and
#    plugins/js/package-lock.json (exact versions).
# Prints the versions it uses. Sourced by scripts/guest-build.sh.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${CB_GUEST_TOOLS:-$root/target/guest-tools}

die() { echo "guest-tools: $*" >&2; exit 1; }

# --- Python: componentize-py ---------------------------------------------
command -v python3 >/dev/null 2>&1 || die "python3 not found: install Python 3.9+ (e.g. apt-get install python3 python3-venv)"

venv=$tools/venv
pylib=$tools/pylib
py_stamp=componentize-py==$COMPONENTIZE_PY_VERSION
if [ -x "$venv/bin/componentize-py" ] && [ "$(cat "$venv/.cb-stamp" 2>/dev/null)" = "$py_stamp" ]; then
  COMPONENTIZE_PY=("$venv/bin/componentize-py")
elif [ -x "$pylib/bin/componentize-py" ] && [ "$(cat "$pylib/.cb-stamp" 2>/dev/null)" = "$py_stamp" ]; then
  COMPONENTIZE_PY=(env "PYTHONPATH=$pylib" python3 "$pylib/bin/componentize-py")
else
  mkdir -p "$tools"
  rm -rf "$venv" "$pylib"
  if python3 -m venv "$venv" >/dev/null 2>&1 && [ -x "$venv/bin/pip" ]; then
    echo "guest-tools: installing $py_stamp into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$py_stamp" \
      || die "pip could not install $py_stamp from PyPI"
    echo "$py_stamp" >"$venv/.cb-stamp"
    COMPONENTIZE_PY=("$venv/bin/componentize-py")
  else
    rm -rf "$venv"
    python3 -m pip --version >/dev/null 2>&1 \
      || die "neither python3 -m venv nor pip works: install python3-venv or python3-pip"
    echo "guest-tools: venv unavailable; installing $py_stamp into $pylib with pip --target"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$pylib" "$py_stamp" \
      || die "pip could not install $py_stamp from PyPI"
    echo "$py_stamp" >"$pylib/.cb-stamp"
    COMPONENTIZE_PY=(env "PYTHONPATH=$pylib" python3 "$pylib/bin/componentize-py")
  fi
fi

# --- JavaScript: componentize-js -----------------------------------------
command -v node >/dev/null 2>&1 || die "node not found: install Node.js 18+ with npm (e.g. apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm not found: install npm (e.g. apt-get install npm)"

node_dir=$tools/node
lock=$root/plugins/js/package-lock.json
js_stamp=$( (cat "$root/plugins/js/package.json" "$lock"; node --version) | sha256sum | cut -d' ' -f1)
if [ ! -x "$node_dir/node_modules/.bin/componentize-js" ] || [ "$(cat "$node_dir/.cb-stamp" 2>/dev/null)" != "$js_stamp" ]; then
  echo "guest-tools: npm ci into $node_dir"
  mkdir -p "$node_dir"
  cp "$root/plugins/js/package.json" "$lock" "$node_dir/"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
    || die "npm ci failed in $node_dir (needs the npm registry)"
  echo "$js_stamp" >"$node_dir/.cb-stamp"
fi
COMPONENTIZE_JS=("$node_dir/node_modules/.bin/componentize-js")
JCO=("$node_dir/node_modules/.bin/jco")

py_version=$("${COMPONENTIZE_PY[@]}" --version) || die "componentize-py does not run: delete $tools and re-run"
js_version=$("${COMPONENTIZE_JS[@]}" --version) || die "componentize-js does not run: delete $tools and re-run"
jco_version=$("${JCO[@]}" --version) || die "jco does not run: delete $tools and re-run"
echo "guest-tools: ${py_version} ($(python3 --version)); componentize-js ${js_version}, jco ${jco_version} (node $(node --version), npm $(npm --version))"
