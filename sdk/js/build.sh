#!/usr/bin/env bash
# Build a JavaScript or TypeScript Wharf service into a component with Wharf's JS
# SDK and ComponentizeJS (pinned in package-lock.json, installed from npm into
# target/js when missing or changed).
#   sdk/js/build.sh APP_DIR OUT.wasm   (APP_DIR holds app.ts or app.js)
#   WHARF_JS_TOOLS   where the toolchain is installed (default target/js)
# app.ts is type-checked (tsc, against src/index.d.ts and the types jco generated
# from wit/platform.wit into types/) before it is built. The app and the SDK are
# bundled into one module (esbuild; `import ... from "wharf"` is this SDK), then
# made a component of the world `wharf:js/service`, or `worker-service` when the
# app exports `worker` (`export const worker = app.worker();`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[[ $# == 2 ]] || { echo "usage: $0 APP_DIR OUT.wasm" >&2; exit 2; }
app=$(cd "$1" && pwd); out=$2
if [[ -f "$app/app.ts" ]]; then entry="$app/app.ts"
elif [[ -f "$app/app.js" ]]; then entry="$app/app.js"
else echo "$app holds neither app.ts nor app.js" >&2; exit 2; fi
command -v npm >/dev/null || { echo "npm (Node.js 20 or later) is needed to build a JavaScript service" >&2; exit 1; }
js="${WHARF_JS_TOOLS:-$root/target/js}" # the toolchain is installed here
mkdir -p "$js"
{
    # One install and one WIT at a time: services are built concurrently in the tests.
    flock 9
    if [[ ! -x "$js/node_modules/.bin/componentize-js" ]] || ! cmp -s "$here/package-lock.json" "$js/package-lock.json"; then
        echo "==> installing ComponentizeJS, jco, esbuild and TypeScript (npm, pinned) into $js" >&2
        cp "$here/package.json" "$here/package-lock.json" "$js/"
        (cd "$js" && npm ci --no-audit --no-fund --loglevel=error >&2)
    fi
    # The world, the platform's interfaces, and WASI at the engine's version
    # (0.2.10): the 0.2.12 files with the one function 0.2.12 added left out.
    wit="$js/wit"
    rm -rf "$wit.new" && mkdir -p "$wit.new/deps"
    cp "$here/wit/world.wit" "$wit.new/"
    cp "$root/wit/platform.wit" "$wit.new/deps/"
    for file in "$root"/bench/python-hello/wit/deps/*.wit; do
        sed -e 's/@0\.2\.12/@0.2.10/g' -e '/@since(version = 0\.2\.12)/,+1d' "$file" >"$wit.new/deps/$(basename "$file")"
    done
    rm -rf "$wit" && mv "$wit.new" "$wit"
} 9>"$js/.lock"
bin="$js/node_modules/.bin"
work=$(mktemp -d "$js/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$here/types.sh" "$work/types"
diff -r "$work/types" "$here/types" >/dev/null \
    || { echo "sdk/js/types/ differs from what jco generates from wit/platform.wit: run sdk/js/types.sh" >&2; exit 1; }
if [[ "$entry" == *.ts ]]; then
    cat >"$work/tsconfig.json" <<JSON
{
  "compilerOptions": {
    "target": "es2022", "module": "es2022", "moduleResolution": "bundler", "strict": true,
    "noEmit": true, "lib": ["es2022", "dom"], "types": [],
    "paths": { "wharf": ["$here/src/index.d.ts"] }
  },
  "files": ["$entry"],
  "include": ["$here/types/**/*.d.ts"]
}
JSON
    "$bin/tsc" -p "$work/tsconfig.json" >&2
fi
"$bin/esbuild" "$entry" --bundle --format=esm --platform=neutral --log-level=warning \
    --alias:wharf="$here/src/index.js" --external:'wharf:*' --external:'wasi:*' --outfile="$work/app.js" >&2
world=service
grep -qE '^export +(const|let|var) +worker\b' "$entry" && world=worker-service
mkdir -p "$(dirname "$out")"
"$bin/componentize-js" "$work/app.js" --wit "$js/wit" --world-name "$world" -o "$out" >&2
