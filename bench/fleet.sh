#!/usr/bin/env bash
# Issue 23's control-plane benchmark: what one PostgreSQL control plane carries
# for a fleet of 3 and of 20 nodes on this one machine (release builds, serve
# only, small pools: job workers 2, 16 guest slots, control-plane connections
# 90 / N - 1 at most 8 — the server's 100 shared), and how fast a change
# reaches every node.
#
# For each fleet size: the nodes start on a fresh database, INSTANCES
# instances of hello are made through node 1, then
#   - idle load: control-plane transactions per second over IDLE seconds (from
#     pg_stat_database: each statement outside a transaction is one) and the
#     connections the nodes hold (pg_stat_activity);
#   - propagation: ROUNDS changes of one instance's hostnames through node 1,
#     and ROUNDS activations of the service (two versions in turn), each until
#     every node serves it (bench/src/bin/propagate.rs: every node asked every
#     millisecond; median and slowest time to the last node);
#   - which nodes ran the platform's passes (GET /v1/node `runs_passes`).
#
#   NODES ("3 20"), INSTANCES (100), IDLE (20), ROUNDS (10),
#   PGURL (postgres://postgres@127.0.0.1:5432/postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
fleets="${NODES:-3 20}"
instances="${INSTANCES:-100}"
idle="${IDLE:-20}"
rounds="${ROUNDS:-10}"
pgurl="${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}"

prepare hello
wharf=./target/release/wharf
wasm=plugins/target/wasm32-wasip2/release
now_ms() { date +%s%3N; }
sql() { psql -qAt "$pgurl" -c "$1"; }

printf '[service]\nname = "hello"\nversion = "1.0.0"\nsql = ["sqlite", "postgres"]\n' >"$work/v1.toml"
printf '[service]\nname = "hello"\nversion = "2.0.0"\nsql = ["sqlite", "postgres"]\n' >"$work/v2.toml"

results=()
for n in $fleets; do
    # The server's max_connections (100 by default) shared by the nodes, each
    # also holding one to listen for changes.
    pool=$(( 90 / n - 1 )); (( pool > 8 )) && pool=8; (( pool < 2 )) && pool=2
    database=wharf_fleet_$n
    sql "DROP DATABASE IF EXISTS $database WITH (FORCE)"
    sql "CREATE DATABASE $database"
    url="${pgurl%/*}/$database"
    node_pids=()
    start_node() {
        local i=$1 extra=()
        [[ $i == 1 ]] && extra=(--init-admin ops@fleet.bench)
        RUST_LOG=warn "$wharf" serve --data "$work/f$n-node$i" --database "$url" \
            --listen "127.0.0.1:$((19200 + i))" --admin "127.0.0.1:$((19300 + i))" \
            --job-workers 2 --max-instances 16 --instance-connections 2 \
            --control-plane-connections "$pool" "${extra[@]}" \
            >"$work/f$n-node$i.out" 2>"$work/f$n-node$i.log" &
        node_pids+=($!); pids+=($!)
    }
    wait_ready() {
        for _ in $(seq 1 1200); do curl -sf "http://127.0.0.1:$((19300 + $1))/readyz" >/dev/null && return; sleep 0.05; done
        echo "node $1 did not become ready:" >&2; tail -5 "$work/f$n-node$1.log" >&2; exit 1
    }
    start_node 1; wait_ready 1
    export WHARF_ADMIN_URL=http://127.0.0.1:19301 WHARF_TOKEN
    WHARF_TOKEN=$(sed -n 's/^WHARF_TOKEN=//p' "$work/f$n-node1.out")
    for i in $(seq 2 "$n"); do start_node "$i"; done
    for i in $(seq 2 "$n"); do wait_ready "$i"; done
    "$wharf" publish "$work/v1.toml" --component "$wasm/hello.wasm" >/dev/null
    "$wharf" publish "$work/v2.toml" --component "$wasm/hello.wasm" >/dev/null
    "$wharf" activate hello 1.0.0 >/dev/null
    "$wharf" tenant create bench >/dev/null
    first=""
    for k in $(seq 1 "$instances"); do
        id=$("$wharf" instance create --tenant bench --service hello --host "i$k.fleet.bench" --json \
            | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -1)
        first=${first:-$id}
    done
    ingresses=$(for i in $(seq 1 "$n"); do printf '127.0.0.1:%s,' $((19200 + i)); done)
    ingresses=${ingresses%,}
    for i in $(seq 1 "$n"); do
        until curl -sf -H "Host: i$instances.fleet.bench" "http://127.0.0.1:$((19200 + i))/" >/dev/null; do sleep 0.05; done
    done
    sleep 5   # the passes' first rounds, connections settling

    x0=$(sql "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '$database'")
    t0=$(now_ms)
    sleep "$idle"
    x1=$(sql "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '$database'")
    t1=$(now_ms)
    connections=$(sql "SELECT count(*) FROM pg_stat_activity WHERE datname = '$database'")
    tps=$(awk -v a="$x0" -v b="$x1" -v ms=$((t1 - t0)) 'BEGIN {printf "%.1f", (b - a) * 1000 / ms}')
    per_node=$(awk -v t="$tps" -v n="$n" 'BEGIN {printf "%.2f", t / n}')

    hosts=$(./target/release/propagate --change hosts --admin "$WHARF_ADMIN_URL" --nodes "$ingresses" \
        --instance "$first" --rounds "$rounds")
    activate=$(./target/release/propagate --change activate --admin "$WHARF_ADMIN_URL" --nodes "$ingresses" \
        --service hello --versions 2.0.0,1.0.0 --host "i2.fleet.bench" --rounds "$rounds")
    runners=0
    for i in $(seq 1 "$n"); do
        if curl -sf -H "Authorization: Bearer $WHARF_TOKEN" "http://127.0.0.1:$((19300 + i))/v1/node" \
            | grep -q '"runs_passes": *true'; then runners=$((runners + 1)); fi
    done
    results+=("$(printf "%-6s %12s %12s %12s %22s %22s %8s" "$n" "$tps" "$per_node" "$connections" \
        "$(awk '{print $4 " / " $6}' <<<"$hosts")" "$(awk '{print $4 " / " $6}' <<<"$activate")" "$runners")")
    for p in "${node_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${node_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    sql "DROP DATABASE IF EXISTS $database WITH (FORCE)"
done

echo
echo "control plane idle (after $instances instances were made), and a change to every node (median / slowest of $rounds)"
printf "%-6s %12s %12s %12s %22s %22s %8s\n" nodes "xact/s" "per node" connections "hostnames ms" "activation ms" passes
for r in "${results[@]}"; do echo "$r"; done
