#!/usr/bin/env bash
# Wharf's benchmarks, side by side in one run on loopback:
#
#   1. HTTP hello: requests/s and p50/p99 latency of plugins/hello through Wharf
#      (fuel metering and epochs on), of the same component under `wasmtime serve`
#      48 (default options, `-S cli`), and of a native hyper server returning the
#      same bytes. Same load generator (wrk, keep-alive), rounds interleaved so
#      machine noise hits all three alike; medians reported with ratios.
#   2. One instantiate + call, pooling allocator vs on-demand.
#   3. Restart with 20 published versions: compiled cache vs recompiling.
#
# Usage: bench/run.sh [--quick]       (env: DURATION=10s CONNECTIONS=32 ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${DURATION:-10s}"
connections="${CONNECTIONS:-32}"
rounds="${ROUNDS:-3}"
if [[ "${1:-}" == "--quick" ]]; then duration=3s; rounds=1; fi

./scripts/setup
if ! command -v wrk >/dev/null; then
    echo "==> installing wrk"
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq wrk; else sudo apt-get update -qq && sudo apt-get install -y -qq wrk; fi
fi
if ! wasmtime --version 2>/dev/null | grep -q '^wasmtime 48\.0\.8'; then
    echo "==> installing wasmtime-cli 48.0.8 (the reference; about 15 minutes, once)"
    cargo install wasmtime-cli@48.0.8 --locked
fi

echo "==> building (release)"
cargo build --release --locked -p wharf -p wharf-bench
(cd plugins && cargo build --release --locked --target wasm32-wasip2 -p hello -p echo)
hello=plugins/target/wasm32-wasip2/release/hello.wasm
echo_wasm=plugins/target/wasm32-wasip2/release/echo.wasm

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { for _ in $(seq 1 200); do curl -s -o /dev/null -H "Host: $2" "http://$1/" && return 0; sleep 0.05; done; echo "nothing answered on $1" >&2; exit 1; }

# Wharf
mkdir -p "$work/wharf"
RUST_LOG=warn ./target/release/wharf serve --data "$work/wharf" --listen 127.0.0.1:18180 --admin 127.0.0.1:18181 \
    --init-admin bench@wharf.local >"$work/serve.out" &
pids+=($!)
export WHARF_ADMIN_URL=http://127.0.0.1:18181
for _ in $(seq 1 200); do grep -q '^WHARF_TOKEN=' "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
export WHARF_TOKEN=$(sed -n 's/^WHARF_TOKEN=//p' "$work/serve.out")
./target/release/wharf publish plugins/hello >/dev/null
./target/release/wharf tenant create bench >/dev/null
./target/release/wharf instance create --tenant bench --service hello --host bench.local >/dev/null
wait_for 127.0.0.1:18180 bench.local

# wasmtime serve, default options (the pooling allocator as it decides, no keep-resident tuning).
wasmtime serve -S cli --addr 127.0.0.1:18182 "$hello" 2>"$work/wasmtime.log" &
pids+=($!)
wait_for 127.0.0.1:18182 bench.local

# native hyper
./target/release/native-hello --addr 127.0.0.1:18183 2>/dev/null &
pids+=($!)
wait_for 127.0.0.1:18183 bench.local

for target in 127.0.0.1:18180 127.0.0.1:18182 127.0.0.1:18183; do
    body=$(curl -s -H 'Host: bench.local' "http://$target/")
    [[ "$body" == "Hello from Wharf!" ]] || { echo "unexpected body from $target: $body" >&2; exit 1; }
done

source bench/lib.sh
declare -A rps p50 p99
echo "==> HTTP hello: wrk -t1 -c$connections -d$duration, $rounds interleaved rounds"
for name in wharf wasmtime native; do # warm-up
    case $name in wharf) a=127.0.0.1:18180;; wasmtime) a=127.0.0.1:18182;; native) a=127.0.0.1:18183;; esac
    wrk -t1 -c"$connections" -d2s -H 'Host: bench.local' "http://$a/" >/dev/null
done
for r in $(seq 1 "$rounds"); do
    run_wrk wharf bench.local http://127.0.0.1:18180/
    run_wrk wasmtime bench.local http://127.0.0.1:18182/
    run_wrk native bench.local http://127.0.0.1:18183/
    echo "    round $r done"
done

printf "\n%-44s %10s %9s %9s\n" "hello over HTTP (median)" "req/s" "p50 ms" "p99 ms"
report wharf "Wharf (fuel + epochs on)"
report wasmtime "wasmtime serve 48 (defaults)"
report native "native hyper"
declare -A med
for name in wharf wasmtime native; do med[$name]=$(median <<<"${rps[$name]}"); done
awk -v w="${med[wharf]}" -v t="${med[wasmtime]}" -v n="${med[native]}" 'BEGIN {
    printf "\nWharf / wasmtime serve: %.2fx   Wharf / native: %.2f   wasmtime serve / native: %.3f\n", w/t, w/n, t/n }'

for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done

echo
echo "==> instantiate + call (in process, no HTTP)"
./target/release/instantiate "$hello" --iterations "${ITERATIONS:-5000}" --rounds "$rounds" 2>/dev/null
echo
echo "==> restart with 20 published versions"
./target/release/restart "$echo_wasm" --versions 20 --rounds "$rounds" 2>/dev/null
