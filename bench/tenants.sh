#!/usr/bin/env bash
# Issue 4's benchmark, side by side in one run on loopback (wrk, keep-alive,
# interleaved rounds, medians):
#   - requests/s of plugins/hello on a node with 1 tenant and on a node with
#     10,000 tenants (each with an instance and a hostname);
#   - resident memory of both nodes, idle, after populating;
#   - a request doing one indexed SQL read through the instance database vs hello.
# Usage: bench/tenants.sh [--quick]   (env: TENANTS=10000 DURATION=10s ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
tenants="${TENANTS:-10000}"; duration="${DURATION:-10s}"; rounds="${ROUNDS:-3}"; connections="${CONNECTIONS:-32}"
if [[ "${1:-}" == "--quick" ]]; then duration=3s; rounds=1; fi

source bench/lib.sh
prepare hello misbehave

start_node() { # name ingress admin
    mkdir -p "$work/$1"
    RUST_LOG=warn ./target/release/wharf serve --data "$work/$1" --listen "$2" --admin "$3" --init-admin "ops@$1.bench" >"$work/$1/out" &
    pids+=($!)
    for _ in $(seq 1 200); do grep -q '^WHARF_TOKEN=' "$work/$1/out" 2>/dev/null && break; sleep 0.05; done
}
start_node one 127.0.0.1:18380 127.0.0.1:18381; one_pid=${pids[-1]}
start_node many 127.0.0.1:18390 127.0.0.1:18391; many_pid=${pids[-1]}
token() { sed -n 's/^WHARF_TOKEN=//p' "$work/$1/out"; }

for node in one:18381 many:18391; do
    name=${node%%:*}; admin=http://127.0.0.1:${node##*:}
    WHARF_TOKEN=$(token "$name") ./target/release/wharf --admin-url "$admin" publish plugins/hello >/dev/null
done
echo "==> 1 tenant on one node, $tenants tenants on the other"
WHARF_TOKEN=$(token one) ./target/release/populate --admin http://127.0.0.1:18381 --service hello --count 1
WHARF_TOKEN=$(token many) ./target/release/populate --admin http://127.0.0.1:18391 --service hello --count "$tenants"

# The SQL probe on the 1-tenant node: a table with 1,000 rows, read by primary key.
export WHARF_TOKEN=$(token one) WHARF_ADMIN_URL=http://127.0.0.1:18381
printf '[service]\nname = "probe"\nversion = "1.0.0"\n' >"$work/probe.toml"
./target/release/wharf publish "$work/probe.toml" --component plugins/target/wasm32-wasip2/release/misbehave.wasm >/dev/null
./target/release/wharf tenant create sql >/dev/null
./target/release/wharf instance create --tenant sql --service probe --host sql.bench >/dev/null
curl -sf -H 'Host: sql.bench' -d 'CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)' http://127.0.0.1:18380/sql/execute >/dev/null
curl -sf -H 'Host: sql.bench' -d "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 1000) INSERT INTO notes SELECT i, 'Hello from Wharf!' FROM n" http://127.0.0.1:18380/sql/execute >/dev/null
[[ "$(curl -s -H 'Host: sql.bench' http://127.0.0.1:18380/sql/read/500)" == "Hello from Wharf!" ]] || { echo "the SQL probe does not answer" >&2; exit 1; }

rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
sleep 2
rss_one=$(rss "$one_pid"); rss_many=$(rss "$many_pid")

declare -A rps p50 p99
echo "==> wrk -t1 -c$connections -d$duration, $rounds interleaved rounds"
for r in $(seq 1 "$rounds"); do
    run_wrk hello-1 t0.bench http://127.0.0.1:18380/
    run_wrk hello-many t0.bench http://127.0.0.1:18390/
    run_wrk hello-many-last "t$((tenants - 1)).bench" http://127.0.0.1:18390/
    run_wrk sql-read sql.bench http://127.0.0.1:18380/sql/read/500
    echo "    round $r done"
done
printf "\n%-44s %10s %9s %9s\n" "(median)" "req/s" "p50 ms" "p99 ms"
report hello-1 "hello, node with 1 tenant"
report hello-many "hello, node with $tenants tenants (first)"
report hello-many-last "hello, node with $tenants tenants (last)"
report sql-read "one indexed SQL read (1-tenant node)"
declare -A med
for name in hello-1 hello-many hello-many-last sql-read; do med[$name]=$(median <<<"${rps[$name]}"); done
awk -v a="${med[hello-1]}" -v b="${med[hello-many]}" -v s="${med[sql-read]}" 'BEGIN {
    printf "\n%s tenants / 1 tenant: %.2f   SQL read / hello: %.2f\n", "'"$tenants"'", b/a, s/a }'
printf "resident memory, idle: 1 tenant %s MiB, %s tenants %s MiB (%.1f KiB per instance)\n" \
    "$rss_one" "$tenants" "$rss_many" "$(awk -v a="$rss_one" -v b="$rss_many" -v n="$tenants" 'BEGIN {print (b-a)*1024/n}')"
