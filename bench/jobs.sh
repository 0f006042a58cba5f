#!/usr/bin/env bash
# Jobs on SQLite (one node) and on PostgreSQL (a platform on PostgreSQL), side by
# side in one run on loopback, release builds, interleaved rounds, medians:
#
#   enqueue  wrk posts to a guest route that queues one no-op job per request,
#            on a node running no workers (--job-workers 0): requests/s and
#            latency, beside the same guest's plain GET / for reference;
#   drain    the node restarts with workers (the queue survives it) and runs
#            every queued no-op job: jobs/s from the first claim to an empty queue.
#
# Usage: bench/jobs.sh [--quick]   (env: DURATION=10s ROUNDS=3 CONNECTIONS=32
#   WORKERS=64 WHARF_BENCH_DATABASE=postgres://postgres@127.0.0.1:5432/postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-10s}"; rounds="${ROUNDS:-3}"; connections="${CONNECTIONS:-32}"; workers="${WORKERS:-64}"
if [[ "${1:-}" == "--quick" ]]; then duration=3s; rounds=1; fi
base="${WHARF_BENCH_DATABASE:-postgres://postgres@127.0.0.1:5432/postgres}"

source bench/lib.sh
prepare jobs-lab
wharf=./target/release/wharf
lab=plugins/target/wasm32-wasip2/release/jobs_lab.wasm
db=wharf_bench_jobs
declare -A tokens node_pid

fresh_database() {
    psql "$base" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
    psql "$base" -Atc "SELECT rolname FROM pg_roles WHERE rolname LIKE 'wi\_%'" | while read -r role; do
        psql "$base" -qc "DROP ROLE IF EXISTS $role" >/dev/null 2>&1 || true
    done
    psql "$base" -qc "CREATE DATABASE $db" >/dev/null
}

# start NAME INGRESS ADMIN WORKERS: (re)start a node on NAME's data directory.
start() {
    local name=$1 ingress=$2 admin=$3 jobs=$4 extra=()
    [[ $name == postgres ]] && extra=(--database "${base%/*}/$db")
    mkdir -p "$work/$name"
    RUST_LOG=warn $wharf serve --data "$work/$name" --listen "$ingress" --admin "$admin" --init-admin "ops@$name.bench" \
        --job-workers "$jobs" --quota-pending-jobs 100000000 "${extra[@]}" >"$work/$name/out" 2>"$work/$name/err" &
    node_pid[$name]=$!
    pids+=($!)
    for _ in $(seq 1 400); do
        curl -sf "http://$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.05
    done
    local token; token=$(sed -n 's/^WHARF_TOKEN=//p' "$work/$name/out")
    [[ -n $token ]] && tokens[$name]=$token
    return 0
}

stop() { kill "${node_pid[$1]}"; wait "${node_pid[$1]}" 2>/dev/null || true; }

# setup NAME ADMIN INGRESS: the jobs-lab service, a tenant and an instance.
setup() {
    export WHARF_TOKEN=${tokens[$1]} WHARF_ADMIN_URL=http://$2
    printf '[service]\nname = "lab"\nversion = "1.0.0"\nsql = ["sqlite", "postgres"]\n[[jobs]]\nkind = "noop"\n' >"$work/lab.toml"
    $wharf publish "$work/lab.toml" --component "$lab" >/dev/null
    $wharf tenant create bench >/dev/null
    $wharf instance create --tenant bench --service lab --host lab.bench >/dev/null
    for _ in $(seq 1 200); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: lab.bench' "http://$3/") == 200 ]] && return 0
        sleep 0.05
    done
    echo "the lab instance on $1 never served" >&2; exit 1
}

# stats NAME ADMIN: "queued running" of the lab service (curl: cheaper than the
# CLI while the node is being measured).
stats() {
    local json; json=$(curl -sf -H "Authorization: Bearer ${tokens[$1]}" "http://$2/v1/jobs/stats")
    local queued running
    queued=$(grep -o '"queued": *[0-9]*' <<<"$json" | grep -o '[0-9]*$' || echo 0)
    running=$(grep -o '"running": *[0-9]*' <<<"$json" | grep -o '[0-9]*$' || echo 0)
    echo "${queued:-0} ${running:-0}"
}

cat >"$work/enqueue.lua" <<'LUA'
wrk.method = "POST"
wrk.path = "/enqueue?kind=noop"
LUA
run_enqueue() { # NAME INGRESS
    local out
    out=$(wrk -t1 -c"$connections" -d"$duration" --latency -s "$work/enqueue.lua" -H "Host: lab.bench" "http://$2/enqueue?kind=noop")
    rps[$1]+="$(awk '/^Requests\/sec/ {print $2}' <<<"$out") "
    p50[$1]+="$(awk '$1=="50%" {print $2}' <<<"$out") "
    p99[$1]+="$(awk '$1=="99%" {print $2}' <<<"$out") "
    if grep -q 'Non-2xx' <<<"$out"; then echo "enqueue on $1 failed: $out" >&2; exit 1; fi
}

# drain NAME INGRESS ADMIN: restart with workers; jobs/s until the queue is empty.
drain() {
    local name=$1 queued
    read -r queued _ < <(stats "$name" "$3")
    stop "$name"
    start "$name" "$2" "$3" "$workers"
    local first="" now q r
    while :; do
        read -r q r < <(stats "$name" "$3")
        now=$(date +%s.%N)
        if [[ -z $first && ( $q -lt $queued || $r -gt 0 ) ]]; then first=$now; fi
        if [[ $q -eq 0 && $r -eq 0 ]]; then break; fi
        sleep 0.2
    done
    local rate; rate=$(awk -v n="$queued" -v a="$first" -v b="$now" 'BEGIN { printf "%.0f", n / (b - a) }')
    drained[$name]+="$rate "
    echo "    $name: drained $queued no-op jobs at $rate jobs/s"
    stop "$name"
    start "$name" "$2" "$3" 0
}

fresh_database
# With workers while the instances are set up (their seeder is a job), then
# without, so that the enqueue rounds only fill the queue.
start sqlite 127.0.0.1:18580 127.0.0.1:18581 "$workers"
start postgres 127.0.0.1:18590 127.0.0.1:18591 "$workers"
setup sqlite 127.0.0.1:18581 127.0.0.1:18580
setup postgres 127.0.0.1:18591 127.0.0.1:18590
stop sqlite; start sqlite 127.0.0.1:18580 127.0.0.1:18581 0
stop postgres; start postgres 127.0.0.1:18590 127.0.0.1:18591 0

declare -A rps p50 p99 drained
echo "==> wrk -t1 -c$connections -d$duration, $rounds interleaved rounds; $workers workers per node to drain"
for r in $(seq 1 "$rounds"); do
    run_wrk hello lab.bench http://127.0.0.1:18580/
    run_enqueue enqueue-sqlite 127.0.0.1:18580
    run_enqueue enqueue-postgres 127.0.0.1:18590
    drain sqlite 127.0.0.1:18580 127.0.0.1:18581
    drain postgres 127.0.0.1:18590 127.0.0.1:18591
    echo "    round $r done"
done
printf "\n%-44s %10s %9s %9s\n" "(median)" "req/s" "p50 ms" "p99 ms"
report hello "GET / of the same guest, SQLite node"
report enqueue-sqlite "one enqueue per request, SQLite"
report enqueue-postgres "one enqueue per request, PostgreSQL"
printf "\n%-44s %10s   (runs: %s)\n" "no-op jobs run per second, SQLite" "$(median <<<"${drained[sqlite]}")" "${drained[sqlite]}"
printf "%-44s %10s   (runs: %s)\n" "no-op jobs run per second, PostgreSQL" "$(median <<<"${drained[postgres]}")" "${drained[postgres]}"
