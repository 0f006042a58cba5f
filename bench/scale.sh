#!/usr/bin/env bash
# Issue 23's benchmark: what one node pays for the size of the platform. For each
# count of instances (a generator fills the control plane directly: copies of one
# instance made through the API, each its own tenant and hostname), one SQLite
# node is started on it and measured:
#   - start: from `wharf serve` to ready, and the memory it holds idle (per
#     instance: beyond what the same node held with one instance);
#   - one admin change of one instance (PATCH its settings), median of 15;
#   - the activation of a new version of the service every instance follows.
# Usage: bench/scale.sh   (env: COUNTS="1 10000 100000" PATCHES=15)
set -euo pipefail
cd "$(dirname "$0")/.."
counts="${COUNTS:-1 10000 100000}"; patches="${PATCHES:-15}"

source bench/lib.sh
prepare hello
command -v sqlite3 >/dev/null || { apt-get update -qq && apt-get install -y -qq sqlite3; }

rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
now_ms() { date +%s%3N; }

# serve DIR PORT — start a node on DIR (admin on PORT+1); sets $node_pid and
# $started_ms (how long until it served).
serve() {
    local t0; t0=$(now_ms)
    RUST_LOG=warn ./target/release/wharf serve --data "$1" --listen "127.0.0.1:$2" \
        --admin "127.0.0.1:$(($2 + 1))" --init-admin ops@scale.bench >"$1/out" 2>"$1/err" &
    node_pid=$!; pids+=("$node_pid")
    until curl -sf "http://127.0.0.1:$(($2 + 1))/readyz" >/dev/null 2>&1; do
        kill -0 "$node_pid" 2>/dev/null || { cat "$1/err" >&2; exit 1; }
        sleep 0.05
    done
    started_ms=$(( $(now_ms) - t0 ))
}

stop() { kill -TERM "$node_pid"; wait "$node_pid" 2>/dev/null || true; }

# fill DB N — N-1 copies of the instance `seed` (tenant t0), each in a tenant of
# its own with a hostname (and the seed's subscription events), written straight
# into the control plane.
fill() {
    local db=$1 n=$(($2 - 1))
    [[ $n -gt 0 ]] || return 0
    local columns; columns=$(sqlite3 "$db" "SELECT group_concat(name, ', ') FROM pragma_table_info('instances')")
    local select; select=$(sed -E "s/(^|, )id(,|$)/\1'i' || n\2/; s/(^|, )tenant_id(,|$)/\1't' || n\2/; s/(^|, )name(,|$)/\1'hello'\2/" <<<"$columns")
    # Its subscription events too, as if each had been billed from the start.
    local events; events=$(sqlite3 "$db" "SELECT group_concat(name, ', ') FROM pragma_table_info('subscription_events')")
    local events_select; events_select=$(sed -E "s/(^|, )instance_id(,|$)/\1'i' || n\2/; s/(^|, )tenant_id(,|$)/\1't' || n\2/" <<<"$events")
    sqlite3 "$db" >/dev/null <<SQL
PRAGMA journal_mode = WAL;
BEGIN;
CREATE TEMP TABLE numbers (n INTEGER PRIMARY KEY);
WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < $n) INSERT INTO numbers SELECT n FROM c;
INSERT INTO tenants (id, display_name, created_at) SELECT 't' || n, 't' || n, created_at FROM numbers, tenants WHERE id = 't0';
INSERT INTO instances ($columns) SELECT $select FROM numbers, (SELECT * FROM instances WHERE tenant_id = 't0');
INSERT INTO instance_hosts (hostname, instance_id) SELECT 'h' || n || '.scale.bench', 'i' || n FROM numbers;
INSERT INTO subscription_events ($events) SELECT $events_select FROM numbers, (SELECT * FROM subscription_events WHERE tenant_id = 't0');
COMMIT;
SQL
}

printf "%-12s %10s %12s %14s %14s %16s\n" instances "start s" "idle MiB" "KiB/instance" "PATCH ms" "activate ms"
port=18400
for count in $counts; do
    dir="$work/n$count"; mkdir -p "$dir"
    serve "$dir" $port
    export WHARF_ADMIN_URL="http://127.0.0.1:$((port + 1))" WHARF_TOKEN; WHARF_TOKEN=$(sed -n 's/^WHARF_TOKEN=//p' "$dir/out")
    ./target/release/wharf publish plugins/hello >/dev/null
    ./target/release/wharf tenant create t0 >/dev/null
    seed=$(./target/release/wharf instance create --tenant t0 --service hello --host h0.scale.bench --json \
        | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -1)
    base_rss=$(rss_mib "$node_pid")   # this node with one instance
    stop
    fill "$dir/wharf.db" "$count"
    serve "$dir" $port
    sleep 2
    rss=$(rss_mib "$node_pid")
    [[ "$(curl -s -H "Host: h$((count - 1)).scale.bench" "http://127.0.0.1:$port/")" == *Hello* ]] \
        || [[ $count == 1 ]] || { echo "the last generated instance does not answer" >&2; exit 1; }
    samples=()
    for i in $(seq 1 "$patches"); do
        samples+=("$(curl -s -o /dev/null -w '%{time_total}' -X PATCH -H "Authorization: Bearer $WHARF_TOKEN" \
            -H 'content-type: application/json' -d "{\"settings\": {\"round\": \"$i\"}}" \
            "$WHARF_ADMIN_URL/v1/instances/$seed")")
    done
    patch_ms=$(for s in "${samples[@]}"; do awk -v s="$s" 'BEGIN {printf "%.1f\n", s * 1000}'; done | median)
    sed 's/^version = .*/version = "2.0.0"/' plugins/hello/wharf.toml >"$dir/v2.toml"
    ./target/release/wharf publish "$dir/v2.toml" --component plugins/target/wasm32-wasip2/release/hello.wasm >/dev/null
    t0=$(now_ms); ./target/release/wharf activate hello 2.0.0 >/dev/null; activate_ms=$(( $(now_ms) - t0 ))
    per=$(awk -v r="$rss" -v b="$base_rss" -v n="$count" 'BEGIN { if (n > 1) printf "%.2f", (r - b) * 1024 / (n - 1); else print "-" }')
    printf "%-12s %10.2f %12s %14s %14s %16s\n" "$count" "$(awk -v m="$started_ms" 'BEGIN {print m / 1000}')" \
        "$rss" "$per" "$patch_ms" "$activate_ms"
    stop
    port=$((port + 10))
done
