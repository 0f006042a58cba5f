#!/usr/bin/env bash
# Two builds of Wharf side by side in one run: hello through build A and build B
# (and `wasmtime serve` 48 as the common reference, where installed), interleaved rounds of wrk on
# loopback, medians and ratios. For "did this change slow the request path?" on
# a machine whose absolute speed varies from hour to hour.
#
# Usage: bench/ab.sh A_BINARY B_BINARY   (env: DURATION=8s CONNECTIONS=32 ROUNDS=5)
#   e.g. git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release -p wharf)
#        bench/ab.sh /tmp/old/target/release/wharf target/release/wharf
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 2 ]] || { echo "usage: bench/ab.sh A_BINARY B_BINARY" >&2; exit 2; }
a_bin=$(realpath "$1"); b_bin=$(realpath "$2")
duration="${DURATION:-8s}"
connections="${CONNECTIONS:-32}"
rounds="${ROUNDS:-5}"

source bench/lib.sh
./scripts/setup
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
(cd plugins && cargo build --release --locked --target wasm32-wasip2 -p hello)
hello=plugins/target/wasm32-wasip2/release/hello.wasm
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
wait_for() { for _ in $(seq 1 200); do curl -s -o /dev/null -H "Host: $2" "http://$1/" && return 0; sleep 0.05; done; echo "nothing answered on $1" >&2; exit 1; }

# start NAME BINARY PORT — a node of BINARY serving hello at bench.local.
start() {
    local dir="$work/$1" admin=$(($3 + 1))
    mkdir -p "$dir"
    RUST_LOG=warn "$2" serve --data "$dir" --listen "127.0.0.1:$3" --admin "127.0.0.1:$admin" \
        --init-admin bench@wharf.local >"$dir/serve.out" &
    pids+=($!)
    for _ in $(seq 1 200); do grep -q '^WHARF_TOKEN=' "$dir/serve.out" 2>/dev/null && break; sleep 0.05; done
    local token
    token=$(sed -n 's/^WHARF_TOKEN=//p' "$dir/serve.out")
    WHARF_ADMIN_URL="http://127.0.0.1:$admin" WHARF_TOKEN="$token" "$2" publish plugins/hello >/dev/null
    WHARF_ADMIN_URL="http://127.0.0.1:$admin" WHARF_TOKEN="$token" "$2" tenant create bench >/dev/null
    WHARF_ADMIN_URL="http://127.0.0.1:$admin" WHARF_TOKEN="$token" \
        "$2" instance create --tenant bench --service hello --host bench.local >/dev/null
    wait_for "127.0.0.1:$3" bench.local
}
start a "$a_bin" 18280
start b "$b_bin" 18290
# The common reference, where it is installed (cargo install wasmtime-cli@48.0.8 --locked).
reference=(); command -v wasmtime >/dev/null && reference=(wasmtime)
if [[ ${#reference[@]} -gt 0 ]]; then
    wasmtime serve -S cli --addr 127.0.0.1:18282 "$hello" 2>"$work/wasmtime.log" &
    pids+=($!)
    wait_for 127.0.0.1:18282 bench.local
else
    echo "==> wasmtime is not installed: A and B only (cargo install wasmtime-cli@48.0.8 --locked for the reference)"
fi

declare -A rps p50 p99
echo "==> hello: wrk -t1 -c$connections -d$duration, $rounds interleaved rounds (A: $a_bin, B: $b_bin)"
urls=(18280 18290); [[ ${#reference[@]} -gt 0 ]] && urls+=(18282)
for url in "${urls[@]}"; do wrk -t1 -c"$connections" -d2s -H 'Host: bench.local' "http://127.0.0.1:$url/" >/dev/null; done
for r in $(seq 1 "$rounds"); do
    run_wrk a bench.local http://127.0.0.1:18280/
    run_wrk b bench.local http://127.0.0.1:18290/
    [[ ${#reference[@]} -eq 0 ]] || run_wrk wasmtime bench.local http://127.0.0.1:18282/
    echo "    round $r: A $(awk '{print $NF}' <<<"${rps[a]}") B $(awk '{print $NF}' <<<"${rps[b]}") req/s"
done
printf "\n%-44s %10s %9s %9s\n" "hello over HTTP (median)" "req/s" "p50 ms" "p99 ms"
report a "A"
report b "B"
declare -A med
for name in a b; do med[$name]=$(median <<<"${rps[$name]}"); done
if [[ ${#reference[@]} -gt 0 ]]; then
    report wasmtime "wasmtime serve 48 (defaults)"
    med[wasmtime]=$(median <<<"${rps[wasmtime]}")
    awk -v a="${med[a]}" -v b="${med[b]}" -v t="${med[wasmtime]}" 'BEGIN {
        printf "\nB / A: %.3f   A / wasmtime serve: %.2fx   B / wasmtime serve: %.2fx\n", b/a, a/t, b/t }'
else
    awk -v a="${med[a]}" -v b="${med[b]}" 'BEGIN { printf "\nB / A: %.3f\n", b/a }'
fi
