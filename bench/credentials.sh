#!/usr/bin/env bash
# What a credential costs a request: plugins/hello anonymous vs with an API key
# (`Authorization: Bearer whk_…`: the credential resolved, then the caller's
# role and grants in the instance's tenant, cached in memory after the first
# request), on one node (SQLite) and, when PostgreSQL is reachable, on a node
# with a PostgreSQL control plane (where cached entries live at most 2 s).
# Rounds interleaved; medians and the credentialed ÷ anonymous ratio.
#
# Usage: bench/credentials.sh [--quick]   (env: DURATION=5s CONNECTIONS=32 ROUNDS=3,
#                                          WHARF_TEST_DATABASE=postgres://…/postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

duration="${DURATION:-5s}"
connections="${CONNECTIONS:-32}"
rounds="${ROUNDS:-3}"
if [[ "${1:-}" == "--quick" ]]; then duration=3s; rounds=1; fi
postgres="${WHARF_TEST_DATABASE:-postgres://postgres@127.0.0.1:5432/postgres}"

prepare hello
declare -A rps p50 p99

# run_wrk_with NAME HOST URL HEADER — like run_wrk, with one more header.
run_wrk_with() {
    local out
    out=$(wrk -t1 -c"$connections" -d"$duration" --latency -H "Host: $2" -H "$4" "$3")
    rps[$1]+="$(awk '/^Requests\/sec/ {print $2}' <<<"$out") "
    p50[$1]+="$(awk '$1=="50%" {print $2}' <<<"$out") "
    p99[$1]+="$(awk '$1=="99%" {print $2}' <<<"$out") "
}

# node NAME PORT [DATABASE_URL] — a node serving hello at bench.local; sets key_NAME.
node() {
    local name=$1 port=$2 admin=$(($2 + 1)) database=()
    [[ -n "${3:-}" ]] && database=(--database "$3")
    mkdir -p "$work/$name"
    RUST_LOG=warn ./target/release/wharf serve --data "$work/$name" --listen 127.0.0.1:"$port" \
        --admin 127.0.0.1:"$admin" --init-admin bench@wharf.local "${database[@]}" >"$work/$name.out" &
    pids+=($!)
    for _ in $(seq 1 200); do grep -q '^WHARF_TOKEN=' "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
    local key
    key=$(sed -n 's/^WHARF_TOKEN=//p' "$work/$name.out")
    WHARF_ADMIN_URL=http://127.0.0.1:$admin WHARF_TOKEN=$key ./target/release/wharf publish plugins/hello >/dev/null
    WHARF_ADMIN_URL=http://127.0.0.1:$admin WHARF_TOKEN=$key ./target/release/wharf tenant create bench >/dev/null
    WHARF_ADMIN_URL=http://127.0.0.1:$admin WHARF_TOKEN=$key \
        ./target/release/wharf instance create --tenant bench --service hello --host bench.local >/dev/null
    for _ in $(seq 1 200); do curl -s -o /dev/null -H "Host: bench.local" "http://127.0.0.1:$port/" && break; sleep 0.05; done
    printf -v "key_$name" '%s' "$key"
}

names=(sqlite)
node sqlite 18280
if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    db="wharf_bench_$$"
    psql "$postgres" -qc "CREATE DATABASE $db" >/dev/null
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; psql "$postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null; rm -rf "$work"' EXIT
    node postgres 18290 "${postgres%/*}/$db"
    names+=(postgres)
else
    echo "(PostgreSQL unreachable at $postgres: SQLite only)"
fi

echo "==> hello, anonymous vs an API key: wrk -t1 -c$connections -d$duration, $rounds interleaved rounds"
for _ in $(seq 1 "$rounds"); do
    for name in "${names[@]}"; do
        port=$([[ $name == sqlite ]] && echo 18280 || echo 18290)
        key_var="key_$name"
        run_wrk "$name-anonymous" bench.local "http://127.0.0.1:$port/"
        run_wrk_with "$name-key" bench.local "http://127.0.0.1:$port/" "Authorization: Bearer ${!key_var}"
    done
done
printf "%-44s %10s %9s %9s\n" "" "req/s" "p50 ms" "p99 ms"
for name in "${names[@]}"; do
    report "$name-anonymous" "$name: anonymous"
    report "$name-key" "$name: with an API key"
done
for name in "${names[@]}"; do
    a=$(median <<<"${rps[$name-anonymous]}")
    k=$(median <<<"${rps[$name-key]}")
    awk -v n="$name" -v a="$a" -v k="$k" 'BEGIN { printf "%s: credentialed / anonymous = %.2f\n", n, k / a }'
done
