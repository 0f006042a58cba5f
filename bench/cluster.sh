#!/usr/bin/env bash
# Several nodes, measured on this one machine: 3 release nodes on one PostgreSQL
# control plane and Redis, HAProxy in front (all sharing the machine's cores, so
# throughput cannot grow with nodes here: the figures show the cost of the path,
# not capacity).
#
#  1. propagation: `activate` on node 1, then the first response of the new
#     version on nodes 2 and 3 (asked directly, every ~5 ms), ROUNDS switches;
#  2. throughput through HAProxy with 1, 2 and 3 nodes, beside node 1 direct;
#  3. node 3 killed with SIGKILL under load: failed requests, and when HAProxy
#     marked it down.
#
#   ROUNDS (20), DURATION of each wrk run in s (5), CONNECTIONS (64),
#   PGURL (postgres://postgres@127.0.0.1:5432/postgres), REDIS (redis://127.0.0.1:6379)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
declare -A rps p50 p99
rounds="${ROUNDS:-20}"
duration="${DURATION:-5}s"
connections="${CONNECTIONS:-64}"
pgurl="${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}"
redis="${REDIS:-redis://127.0.0.1:6379}"
database="${pgurl%/*}/wharf_bench"

prepare hello echo
command -v haproxy >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }
psql -q "$pgurl" -c "DROP DATABASE IF EXISTS wharf_bench WITH (FORCE)" -c "CREATE DATABASE wharf_bench"
wharf=./target/release/wharf
wasm=plugins/target/wasm32-wasip2/release

declare -A node_pid
start_node() {
    local i=$1 extra=()
    [[ $i == 1 ]] && extra=(--init-admin ops@bench.localhost)
    "$wharf" serve --data "$work/node$i" --database "$database" --redis "$redis" \
        --listen "127.0.0.1:$((19000 + i))" --admin "127.0.0.1:$((19100 + i))" "${extra[@]}" \
        >"$work/node$i.out" 2>"$work/node$i.log" &
    node_pid[$i]=$!
    pids+=($!)
    for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$((19100 + i))/readyz" >/dev/null && return; sleep 0.05; done
    echo "node $i did not become ready; see $work/node$i.log" >&2; exit 1
}
start_node 1
export WHARF_TOKEN=$(sed -n 's/^WHARF_TOKEN=//p' "$work/node1.out") WHARF_ADMIN_URL=http://127.0.0.1:19101
start_node 2
start_node 3

# Two versions of one service: hello 1.0.0 (hello) and 2.0.0 (the echo component).
printf '[service]\nname = "hello"\nversion = "1.0.0"\n' >"$work/v1.toml"
printf '[service]\nname = "hello"\nversion = "2.0.0"\n' >"$work/v2.toml"
"$wharf" publish "$work/v1.toml" --component "$wasm/hello.wasm" >/dev/null
"$wharf" publish "$work/v2.toml" --component "$wasm/echo.wasm" >/dev/null
"$wharf" tenant create bench >/dev/null
"$wharf" instance create --tenant bench --service hello --host hello.bench >/dev/null
for i in 2 3; do
    until curl -sf -H 'Host: hello.bench' "http://127.0.0.1:$((19000 + i))/" >/dev/null; do sleep 0.05; done
done

echo "== 1. propagation: activate on node 1 -> first new-version response on nodes 2 and 3 ($rounds switches)"
now_ms() { date +%s%3N; }
samples=()
for r in $(seq 1 "$rounds"); do
    if (( r % 2 )); then version=2.0.0; else version=1.0.0; fi
    "$wharf" activate hello "$version" >/dev/null
    returned=$(now_ms)
    # Both nodes asked at once, each until it answers with the new version.
    for i in 2 3; do
        (
            while :; do
                body=$(curl -s -H 'Host: hello.bench' "http://127.0.0.1:$((19000 + i))/")
                if [[ $version == 1.0.0 && $body == *"Hello from Wharf"* ]] || [[ $version == 2.0.0 && $body != *"Hello from Wharf"* ]]; then
                    break
                fi
                sleep 0.005
            done
            echo $(( $(now_ms) - returned )) >"$work/switch-$r-$i"
        ) &
    done
    wait "${!}" 2>/dev/null || true
    while [[ ! -s "$work/switch-$r-2" || ! -s "$work/switch-$r-3" ]]; do sleep 0.01; done
    samples+=($(cat "$work/switch-$r-2") $(cat "$work/switch-$r-3"))
done
sorted=$(printf '%s\n' "${samples[@]}" | sort -n)
count=${#samples[@]}
printf 'ms after activate returned, over %d node-switches: min %s, median %s, p90 %s, max %s (polling every ~5 ms)\n' \
    "$count" "$(head -1 <<<"$sorted")" "$(sed -n "$(( (count + 1) / 2 ))p" <<<"$sorted")" "$(sed -n "$(( count * 9 / 10 ))p" <<<"$sorted")" "$(tail -1 <<<"$sorted")"
echo "all: $(tr '\n' ' ' <<<"$sorted")"
"$wharf" activate hello 1.0.0 >/dev/null

haproxy_with() {
    local n=$1 nodes=()
    for i in $(seq 1 "$n"); do nodes+=($((19000 + i)) $((19100 + i))); done
    haproxy_config "$work/haproxy.cfg" 18080 "${nodes[@]}"
    haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
    haproxy_pid=$!
    pids+=($!)
    until curl -sf -H 'Host: hello.bench' http://127.0.0.1:18080/ >/dev/null; do sleep 0.05; done
    sleep 2.5 # every server's first health checks
}

echo "== 2. throughput (wrk -c$connections -d$duration, hello)"
printf "%-44s %10s %9s %9s\n" "" "req/s" "p50 ms" "p99 ms"
run_wrk direct hello.bench http://127.0.0.1:19001/
report direct "node 1 direct (no HAProxy)"
for n in 1 2 3; do
    haproxy_with "$n"
    run_wrk "ha$n" hello.bench http://127.0.0.1:18080/
    report "ha$n" "HAProxy -> $n node(s)"
    kill "$haproxy_pid"; wait "$haproxy_pid" 2>/dev/null || true
done

echo "== 3. node 3 killed with SIGKILL 3 s into 10 s of load through HAProxy (3 nodes)"
haproxy_with 3
wrk -t1 -c"$connections" -d10s -H 'Host: hello.bench' http://127.0.0.1:18080/ >"$work/kill.txt" &
load=$!
sleep 3
kill -KILL "${node_pid[3]}"
killed=$(now_ms)
wait "${node_pid[3]}" 2>/dev/null || true
down=""
for _ in $(seq 1 200); do
    if curl -s 'http://127.0.0.1:18099/stats;csv' | awk -F, '$1=="nodes" && $2=="node3" {print $18}' | grep -q DOWN; then
        down=$(( $(now_ms) - killed )); break
    fi
    sleep 0.05
done
wait "$load" || true
total=$(awk '/requests in/ {print $1}' "$work/kill.txt")
bad=$(awk '/Non-2xx/ {print $5}' "$work/kill.txt")
errors=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' "$work/kill.txt")
echo "requests: ${total:-?}, failed (non-2xx): ${bad:-0}, socket errors: ${errors:-0}; HAProxy marked node 3 down after ${down:-?} ms (checks every 1 s, 2 failures)"
