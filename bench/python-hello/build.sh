#!/usr/bin/env bash
# Build the Python hello with componentize-py (pinned, from PyPI, in a virtual
# environment under target/) and print the component's path. Rebuilt only when
# app.py changes. Usage: bench/python-hello/build.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/target/bench/python-hello.wasm"
venv="$root/target/bench/venv"
if [[ ! -f "$out" || "$here/app.py" -nt "$out" ]]; then
    mkdir -p "$root/target/bench"
    if [[ ! -x "$venv/bin/componentize-py" ]]; then
        echo "==> installing componentize-py 0.25.1 (PyPI)" >&2
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install -q componentize-py==0.25.1 >&2
    fi
    echo "==> building the Python hello" >&2
    "$venv/bin/componentize-py" -d "$here/wit" -w wasi:http/proxy componentize -p "$here" app -o "$out" >&2
fi
echo "$out"
