#!/usr/bin/env bash
# Issue 7's benchmark, open loop since issue 21: a canary tenant's hello at a
# fixed rate (half what the calm node serves to a closed loop, `RATE` to choose),
# calm and while a hostile tenant (and anonymous clients) attack the same node,
# one attack at a time and then all at once. Latency is measured from when each
# request was meant to be sent (bench/src/bin/canary.rs), so a stall shows as
# the requests it delayed, not as requests a closed loop never sent. Reports the
# canary's p99 and errors in each phase, its p99 against the calm median, and
# what each attack got back.
# Usage: bench/neighbours.sh [--quick]   (env: DURATION=8 ROUNDS=3 RATE=, and
#        WHARF_BIN=path/to/wharf to measure another build, e.g. an older commit's)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${DURATION:-8}"; rounds="${ROUNDS:-3}"
if [[ "${1:-}" == "--quick" ]]; then seconds=3; rounds=1; fi
duration="${seconds}s"

source bench/lib.sh
prepare hello misbehave
ulimit -n 65536 2>/dev/null || true

ingress=127.0.0.1:18480; admin=http://127.0.0.1:18481
wharf_bin=$(realpath "${WHARF_BIN:-./target/release/wharf}")
RUST_LOG=warn "$wharf_bin" serve --data "$work/data" --listen "$ingress" --admin "${admin#http://}" \
    --init-admin ops@neighbours.bench >"$work/out" 2>"$work/log" &
pids+=($!); node_pid=$!
for _ in $(seq 1 200); do grep -q '^WHARF_TOKEN=' "$work/out" 2>/dev/null && break; sleep 0.05; done
export WHARF_TOKEN=$(sed -n 's/^WHARF_TOKEN=//p' "$work/out") WHARF_ADMIN_URL=$admin
wharf() { "$wharf_bin" "$@" >/dev/null; }
wharf publish plugins/hello
printf '[service]\nname = "hostile"\nversion = "1.0.0"\n' >"$work/hostile.toml"
wharf publish "$work/hostile.toml" --component plugins/target/wasm32-wasip2/release/misbehave.wasm
wharf tenant create canary; wharf instance create --tenant canary --service hello --host canary.bench
wharf tenant create mallory; wharf instance create --tenant mallory --service hostile --host bad.bench
curl -sf -H 'Host: bad.bench' -d 'CREATE TABLE IF NOT EXISTS t (a)' "http://$ingress/sql/execute" >/dev/null

# attack KIND CONCURRENCY — the attack in the background for the canary run's length.
# The reference "outside" is not an attack on Wharf: CONCURRENCY busy loops in
# other processes at the lowest priority the kernel has (SCHED_IDLE), the floor
# of what any CPU-burning neighbour costs the canary on this machine.
attack() {
    if [[ $1 == outside ]]; then
        for _ in $(seq 1 "$2"); do
            chrt -i 0 bash -c "end=\$((SECONDS + $seconds + 1)); while [ \$SECONDS -lt \$end ]; do :; done" &
        done
        wait
        echo "outside x$2: busy loops under SCHED_IDLE"
        return
    fi
    ./target/release/attack --ingress "$ingress" --host bad.bench --kind "$1" --concurrency "$2" --seconds "$((seconds + 1))"
}

# The canary's rate: half of what the calm node serves it to a closed loop.
capacity=$(wrk -t1 -c8 -d"$duration" -H "Host: canary.bench" "http://$ingress/" | awk '/^Requests\/sec/ {printf "%.0f", $2}')
rate="${RATE:-$((capacity / 2))}"

declare -A p99 errors outcomes
# label KIND:N — a phase's name: the kind, or for the reference the kind and count.
label() { if [[ $1 == outside:* ]]; then echo "reference: ${1/:/ x}"; else echo "${1%%:*}"; fi; }
# phase NAME [KIND CONCURRENCY]... — the canary's load while the attacks run.
phase() {
    local name=$1; shift
    local attackers=() pid
    while (($#)); do attack "$1" "$2" >>"$work/attacks-$name" & attackers+=($!); shift 2; done
    sleep 0.5
    local out
    out=$(./target/release/canary --connect "$ingress" --host canary.bench --rate "$rate" --seconds "$seconds")
    for pid in "${attackers[@]}"; do wait "$pid"; done
    p99[$name]+="$(sed -E 's/.* p99 ([0-9.]+) .*/\1/' <<<"$out") "
    errors[$name]=$(( ${errors[$name]:-0} + $(sed -E 's/.*non-2xx ([0-9]+), failed ([0-9]+).*/\1 + \2/' <<<"$out") ))
    kill -0 "$node_pid" || { echo "the node died during $name" >&2; exit 1; }
}

# ATTACKS="spin:3 sql-endless:8" runs only those.
read -r -a attacks <<<"${ATTACKS:-outside:1 outside:2 spin:3 memory:3 recurse:3 sql-endless:8 sql-wide:4 sql-flood:4 log-flood:3 open-tx:4 slow-body:1000}"
echo "==> canary: $rate req/s open loop (the calm node serves $capacity/s to wrk -c8) for $duration; $rounds round(s); each attack alone, then all at once"
for r in $(seq 1 "$rounds"); do
    phase calm
    all=()
    for a in "${attacks[@]}"; do
        phase "$(label "$a")" "${a%%:*}" "${a##*:}"
        [[ $a == outside:* ]] || all+=("${a%%:*}" "${a##*:}")
    done
    phase everything "${all[@]}"
    echo "    round $r done"
done
# "everything" runs every attack on Wharf at once (not the reference).

calm=$(median <<<"${p99[calm]}")
names=(calm); for a in "${attacks[@]}"; do names+=("$(label "$a")"); done; names+=(everything)
printf "\n%-28s %14s %10s %12s\n" "canary under" "p99 ms (med)" "x calm" "errors"
for name in "${names[@]}"; do
    m=$(median <<<"${p99[$name]}")
    printf "%-28s %14s %10.2f %12s\n" "$name" "$m" "$(awk -v a="$m" -v c="$calm" 'BEGIN {print a/c}')" "${errors[$name]}"
done
echo
echo "what the attacks got back (last round):"
for a in "${attacks[@]}"; do tail -n1 "$work/attacks-$(label "$a")"; done
printf "node: peak resident memory %s MiB, log %s KiB\n" \
    "$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$node_pid/status")" "$(( $(stat -c %s "$work/log") / 1024 ))"
