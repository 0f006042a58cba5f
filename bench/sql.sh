#!/usr/bin/env bash
# Instance SQL on SQLite (one node) and on PostgreSQL (a platform on PostgreSQL),
# side by side in one run on loopback (wrk, keep-alive, interleaved rounds,
# medians): one indexed read by primary key, one insert, and hello for
# reference, each through a node in release build.
# Usage: bench/sql.sh [--quick]   (env: DURATION=10s ROUNDS=3 CONNECTIONS=32
#   WHARF_BENCH_DATABASE=postgres://postgres@127.0.0.1:5432/postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-10s}"; rounds="${ROUNDS:-3}"; connections="${CONNECTIONS:-32}"
if [[ "${1:-}" == "--quick" ]]; then duration=3s; rounds=1; fi
base="${WHARF_BENCH_DATABASE:-postgres://postgres@127.0.0.1:5432/postgres}"

source bench/lib.sh
prepare hello misbehave

# A fresh database for the PostgreSQL node (its instance roles go with it).
db=wharf_bench_sql
psql "$base" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
# Instance roles are the server's: those the dropped database left owning nothing go too.
psql "$base" -Atc "SELECT rolname FROM pg_roles WHERE rolname LIKE 'wi\_%'" | while read -r role; do
    psql "$base" -qc "DROP ROLE IF EXISTS $role" >/dev/null 2>&1 || true
done
psql "$base" -qc "CREATE DATABASE $db" >/dev/null
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT

start_node() { # name ingress admin [serve args...]
    local name=$1 ingress=$2 admin=$3; shift 3
    mkdir -p "$work/$name"
    RUST_LOG=warn ./target/release/wharf serve --data "$work/$name" --listen "$ingress" --admin "$admin" \
        --init-admin "ops@$name.bench" "$@" >"$work/$name/out" &
    pids+=($!)
    for _ in $(seq 1 400); do grep -q '^WHARF_TOKEN=' "$work/$name/out" 2>/dev/null && break; sleep 0.05; done
}
start_node sqlite 127.0.0.1:18480 127.0.0.1:18481
start_node postgres 127.0.0.1:18490 127.0.0.1:18491 --database "${base%/*}/$db"

setup() { # name ingress-port admin-port
    export WHARF_TOKEN=$(sed -n 's/^WHARF_TOKEN=//p' "$work/$1/out") WHARF_ADMIN_URL=http://127.0.0.1:$3
    printf '[service]\nname = "probe"\nversion = "1.0.0"\nsql = ["sqlite", "postgres"]\n' >"$work/probe.toml"
    ./target/release/wharf publish "$work/probe.toml" --component plugins/target/wasm32-wasip2/release/misbehave.wasm >/dev/null
    ./target/release/wharf publish plugins/hello >/dev/null
    ./target/release/wharf tenant create bench >/dev/null
    ./target/release/wharf instance create --tenant bench --service probe --host sql.bench >/dev/null
    ./target/release/wharf instance create --tenant bench --service hello --host hello.bench >/dev/null
    local url=http://127.0.0.1:$2
    curl -sf -H 'Host: sql.bench' -d 'CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)' "$url/sql/execute" >/dev/null
    curl -sf -H 'Host: sql.bench' -d "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) INSERT INTO notes SELECT i, 'Hello from Wharf!' FROM n" "$url/sql/execute" >/dev/null
    curl -sf -H 'Host: sql.bench' -d 'CREATE TABLE hits (id INTEGER, at TEXT)' "$url/sql/execute" >/dev/null
    [[ "$(curl -s -H 'Host: sql.bench' "$url/sql/read/500")" == "Hello from Wharf!" ]] || { echo "the SQL probe on $1 does not answer" >&2; exit 1; }
    [[ "$(curl -s -H 'Host: sql.bench' "$url/sql/dialect")" == "$1" ]] || { echo "the $1 node does not speak $1" >&2; exit 1; }
}
setup sqlite 18480 18481
setup postgres 18490 18491

# One insert per request: wrk posts the statement.
cat >"$work/insert.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "INSERT INTO hits VALUES (1, 'now')"
LUA
run_wrk_post() { # NAME HOST URL
    local out
    out=$(wrk -t1 -c"$connections" -d"$duration" --latency -s "$work/insert.lua" -H "Host: $2" "$3")
    rps[$1]+="$(awk '/^Requests\/sec/ {print $2}' <<<"$out") "
    p50[$1]+="$(awk '$1=="50%" {print $2}' <<<"$out") "
    p99[$1]+="$(awk '$1=="99%" {print $2}' <<<"$out") "
}

declare -A rps p50 p99
echo "==> wrk -t1 -c$connections -d$duration, $rounds interleaved rounds"
for r in $(seq 1 "$rounds"); do
    run_wrk hello hello.bench http://127.0.0.1:18480/
    run_wrk read-sqlite sql.bench http://127.0.0.1:18480/sql/read/500
    run_wrk read-postgres sql.bench http://127.0.0.1:18490/sql/read/500
    run_wrk_post insert-sqlite sql.bench http://127.0.0.1:18480/sql/execute
    run_wrk_post insert-postgres sql.bench http://127.0.0.1:18490/sql/execute
    echo "    round $r done"
done
printf "\n%-44s %10s %9s %9s\n" "(median)" "req/s" "p50 ms" "p99 ms"
report hello "hello (no SQL), SQLite node"
report read-sqlite "one indexed read, SQLite"
report read-postgres "one indexed read, PostgreSQL"
report insert-sqlite "one insert, SQLite"
report insert-postgres "one insert, PostgreSQL"
declare -A med
for name in hello read-sqlite read-postgres insert-sqlite insert-postgres; do med[$name]=$(median <<<"${rps[$name]}"); done
awk -v h="${med[hello]}" -v rs="${med[read-sqlite]}" -v rp="${med[read-postgres]}" \
    -v is="${med[insert-sqlite]}" -v ip="${med[insert-postgres]}" 'BEGIN {
    printf "\nread: SQLite / hello %.2f, PostgreSQL / hello %.2f, PostgreSQL / SQLite %.2f\n", rs/h, rp/h, rp/rs
    printf "insert: PostgreSQL / SQLite %.2f\n", ip/is }'
