#!/usr/bin/env bash
# What the usage journal costs: the same guest (hello) on two nodes side by side,
# one appending every request's usage to its journal before counting it (the
# default: a SIGKILL loses none), one keeping it in memory until the
# once-a-second flush (--no-usage-journal: a SIGKILL loses up to a second).
# Release builds, loopback, interleaved rounds, medians and the ratio.
#
# Usage: bench/usage.sh [--quick]   (env: DURATION=10s ROUNDS=3 CONNECTIONS=32)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-10s}"; rounds="${ROUNDS:-3}"; connections="${CONNECTIONS:-32}"
if [[ "${1:-}" == "--quick" ]]; then duration=3s; rounds=1; fi

source bench/lib.sh
prepare hello
wharf=./target/release/wharf
hello=plugins/target/wasm32-wasip2/release/hello.wasm

# start NAME INGRESS ADMIN [FLAGS...]: a node with hello served at hello.bench.
start() {
    local name=$1 ingress=$2 admin=$3; shift 3
    mkdir -p "$work/$name"
    RUST_LOG=warn $wharf serve --data "$work/$name" --listen "$ingress" --admin "$admin" --init-admin "ops@$name.bench" \
        "$@" >"$work/$name/out" 2>"$work/$name/err" &
    pids+=($!)
    for _ in $(seq 1 400); do
        curl -sf "http://$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.05
    done
    export WHARF_TOKEN; WHARF_TOKEN=$(sed -n 's/^WHARF_TOKEN=//p' "$work/$name/out")
    export WHARF_ADMIN_URL=http://$admin
    printf '[service]\nname = "hello"\nversion = "1.0.0"\n' >"$work/hello.toml"
    $wharf publish "$work/hello.toml" --component "$hello" >/dev/null
    $wharf tenant create bench >/dev/null
    $wharf instance create --tenant bench --service hello --host hello.bench >/dev/null
}

start journal 127.0.0.1:18680 127.0.0.1:18681
start memory 127.0.0.1:18690 127.0.0.1:18691 --no-usage-journal

declare -A rps p50 p99
echo "==> wrk -t1 -c$connections -d$duration, $rounds interleaved rounds"
for r in $(seq 1 "$rounds"); do
    run_wrk journal hello.bench http://127.0.0.1:18680/
    run_wrk memory hello.bench http://127.0.0.1:18690/
    echo "    round $r done"
done
printf "\n%-44s %10s %9s %9s\n" "(median)" "req/s" "p50 ms" "p99 ms"
report journal "usage journaled before it counts (default)"
report memory "usage in memory until the flush"
ratio=$(awk -v a="$(median <<<"${rps[journal]}")" -v b="$(median <<<"${rps[memory]}")" 'BEGIN { printf "%.2f", a / b }')
echo
echo "journal / memory throughput: ${ratio}x   (runs: journal ${rps[journal]}; memory ${rps[memory]})"
