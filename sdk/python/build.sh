#!/usr/bin/env bash
# Build a Python Wharf service into a component with componentize-py (pinned,
# from PyPI, installed into target/py when missing) and Wharf's Python SDK.
#   sdk/python/build.sh APP_DIR OUT.wasm   (APP_DIR holds app.py)
#   WHARF_PY_TOOLS   where componentize-py is installed (default target/py)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
app=$(cd "$1" && pwd); out=$2
venv="${WHARF_PY_TOOLS:-$root/target/py}" # componentize-py is installed here
if [[ ! -x "$venv/bin/componentize-py" ]]; then
    echo "==> installing componentize-py 0.25.1 (PyPI) into $venv" >&2
    [[ -x "$venv/bin/pip" ]] || python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q componentize-py==0.25.1 >&2
fi
# A service that defines `Worker` (app.worker()) runs jobs: it exports the worker.
world=service
grep -qE '^Worker *=' "$app/app.py" && world=worker-service
mkdir -p "$(dirname "$out")"
"$venv/bin/componentize-py" -d "$here/wit" -w "wharf:python/$world" componentize -p "$app" -p "$here" app -o "$out" >&2
