#!/usr/bin/env bash
# The rollout load test: 3 release nodes on one PostgreSQL control plane and
# Redis, HAProxy in front (health-checking /readyz), continuous load on three
# instances through HAProxy, while the service is promoted and rolled back
# SWAPS times (bench/src/bin/rollout-load.rs). It fails if any request fails or
# any response comes from neither version; it reports p99 steady vs during the
# swaps, and the time from `promote` returning to the first new-version
# response on every node.
#
# Usage: bench/rollout.sh [--quick]   (env: SWAPS=50 STEADY=5 CONNECTIONS=32
#   PGURL=postgres://postgres@127.0.0.1:5432/postgres REDIS=redis://127.0.0.1:6379)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
swaps="${SWAPS:-50}"; steady="${STEADY:-5}"; connections="${CONNECTIONS:-32}"
if [[ "${1:-}" == "--quick" ]]; then swaps=10; steady=2; fi
pgurl="${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}"
redis="${REDIS:-redis://127.0.0.1:6379}"
database="${pgurl%/*}/wharf_bench_rollout"

prepare hello wstd-hello
command -v haproxy >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }
psql -q "$pgurl" -c "DROP DATABASE IF EXISTS wharf_bench_rollout WITH (FORCE)" -c "CREATE DATABASE wharf_bench_rollout"
wharf=./target/release/wharf
wasm=plugins/target/wasm32-wasip2/release

start_node() {
    local i=$1 extra=()
    [[ $i == 1 ]] && extra=(--init-admin ops@bench.localhost)
    RUST_LOG=warn "$wharf" serve --data "$work/node$i" --database "$database" --redis "$redis" \
        --listen "127.0.0.1:$((19200 + i))" --admin "127.0.0.1:$((19300 + i))" "${extra[@]}" \
        >"$work/node$i.out" 2>"$work/node$i.log" &
    pids+=($!)
    for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$((19300 + i))/readyz" >/dev/null && return; sleep 0.05; done
    echo "node $i did not become ready; see $work/node$i.log" >&2; exit 1
}
start_node 1
export WHARF_TOKEN=$(sed -n 's/^WHARF_TOKEN=//p' "$work/node1.out") WHARF_ADMIN_URL=http://127.0.0.1:19301
start_node 2
start_node 3

printf '[service]\nname = "site"\nversion = "1.0.0"\nsql = ["sqlite", "postgres"]\n' >"$work/v1.toml"
printf '[service]\nname = "site"\nversion = "2.0.0"\nsql = ["sqlite", "postgres"]\n' >"$work/v2.toml"
"$wharf" publish "$work/v1.toml" --component "$wasm/hello.wasm" >/dev/null
"$wharf" publish "$work/v2.toml" --component "$wasm/wstd-hello.wasm" >/dev/null
"$wharf" tenant create bench >/dev/null
for i in 1 2 3; do "$wharf" instance create --tenant bench --service site --host "site$i.bench" >/dev/null; done
"$wharf" stage site 2.0.0

haproxy_config "$work/haproxy.cfg" 18180 19201 19301 19202 19302 19203 19303
haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
until curl -sf -H 'Host: site1.bench' http://127.0.0.1:18180/ >/dev/null; do sleep 0.05; done
sleep 2.5 # every server's first health checks

echo "==> $swaps promotions and rollbacks under load (-c$connections through HAProxy, 3 instances, 3 nodes)"
./target/release/rollout-load --url http://127.0.0.1:18180 --hosts site1.bench,site2.bench,site3.bench \
    --nodes http://127.0.0.1:19201,http://127.0.0.1:19202,http://127.0.0.1:19203 \
    --admin http://127.0.0.1:19301 --token "$WHARF_TOKEN" --service site --from 1.0.0 --to 2.0.0 \
    --swaps "$swaps" --steady-secs "$steady" --connections "$connections"
