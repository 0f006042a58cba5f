#!/usr/bin/env bash
# Build the plain JavaScript hello (world wasi:http/proxy, no Wharf imports, so
# `wasmtime serve` runs it) with the JS SDK's pinned ComponentizeJS, and print the
# component's path. Usage: bench/js-hello/build.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/target/bench/js-hello.wasm"
# The SDK's build installs the toolchain and writes target/js/wit (WASI 0.2.10).
"$root/sdk/js/build.sh" "$root/bench/sdk-hello/js" "$root/target/bench/js-sdk-hello.wasm"
"$root/target/js/node_modules/.bin/componentize-js" "$here/app.js" --wit "$root/target/js/wit" \
    --world-name 'wasi:http/proxy@0.2.10' -o "$out" >&2
echo "$out"
