#!/usr/bin/env bash
# Wharf's benchmarks, side by side in one run on loopback (same load generator,
# wrk with keep-alive; rounds interleaved so machine noise hits every row alike;
# medians reported with ratios):
#
#   1. HTTP hello (plugins/hello, wrk -c32): through Wharf (fuel, epochs, routing,
#      usage on) with a fresh sandbox per request and with `reuse` on; through a
#      minimal tuned wasmtime host (pooling, fresh instance per request, nothing
#      else: bench/src/bin/tuned-host.rs); under `wasmtime serve` 48 (default
#      options, `-S cli`); and a native hyper server returning the same bytes.
#   2. The same hello with a credential — a session token and an API key — on a
#      node on SQLite and, when PostgreSQL is reachable, on a node with a
#      PostgreSQL control plane.
#   3. A Python hello (bench/python-hello, built with componentize-py from PyPI):
#      steady latency per request (wrk -c1) through Wharf fresh and with reuse,
#      and under `wasmtime serve`; and the same hello written with Wharf's Python
#      SDK (bench/sdk-hello/python), fresh and reused.
#   4. A JavaScript hello (ComponentizeJS from npm): plain (bench/js-hello, the
#      fetch event) through Wharf and under `wasmtime serve`, and written with
#      Wharf's JS SDK (bench/sdk-hello/js), fresh and reused (wrk -c1).
#   5. One instantiate + call, pooling allocator vs on-demand (in process).
#   6. Restart with 20 published versions: compiled cache vs recompiling.
#
# Usage: bench/run.sh [--quick]   (env: DURATION=10s CONNECTIONS=32 ROUNDS=3,
#                                  WHARF_TEST_DATABASE=postgres://…/postgres)
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${DURATION:-10s}"
connections="${CONNECTIONS:-32}"
rounds="${ROUNDS:-3}"
if [[ "${1:-}" == "--quick" ]]; then duration=3s; rounds=1; fi
postgres="${WHARF_TEST_DATABASE:-postgres://postgres@127.0.0.1:5432/postgres}"

./scripts/setup
if ! command -v wrk >/dev/null; then
    echo "==> installing wrk"
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq wrk; else sudo apt-get update -qq && sudo apt-get install -y -qq wrk; fi
fi
if ! wasmtime --version 2>/dev/null | grep -q '^wasmtime 48\.0\.8'; then
    echo "==> installing wasmtime-cli 48.0.8 (the reference; about 15 minutes, once)"
    cargo install wasmtime-cli@48.0.8 --locked
fi

echo "==> building (release)"
cargo build --release --locked -p wharf -p wharf-bench
(cd plugins && cargo build --release --locked --target wasm32-wasip2 -p hello -p echo)
hello=$PWD/plugins/target/wasm32-wasip2/release/hello.wasm
echo_wasm=plugins/target/wasm32-wasip2/release/echo.wasm
python_hello=$(bench/python-hello/build.sh)
python_sdk_hello=$PWD/target/bench/python-sdk-hello.wasm
sdk/python/build.sh bench/sdk-hello/python "$python_sdk_hello"
js_hello=$(bench/js-hello/build.sh)   # also builds the SDK's hello:
js_sdk_hello=$PWD/target/bench/js-sdk-hello.wasm

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n "${pgdb:-}" ]] && psql "$postgres" -qc "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() { for _ in $(seq 1 400); do curl -s -o /dev/null -H "Host: $2" "http://$1/" && return 0; sleep 0.05; done; echo "nothing answered on $1" >&2; exit 1; }

# A service directory publishing COMPONENT as NAME, with `reuse` when REUSE is set.
service_dir() {
    local dir="$work/services/$1"
    mkdir -p "$dir"
    {
        printf '[service]\nname = "%s"\nversion = "1.0.0"\nsql = []\ncomponent = "%s"\n' "$1" "$2"
        [[ -n "${3:-}" ]] && printf 'reuse = { requests = 100000, idle_seconds = 60 }\n'
    } >"$dir/wharf.toml"
    echo "$dir"
}

# node NAME PORT [DATABASE_URL] — a Wharf node: hello at bench.local (fresh) and
# reuse.local (reused), the Python hellos at py.local, pyreuse.local,
# pysdk.local and pysdkreuse.local, the JavaScript ones at js.local, jssdk.local
# and jssdkreuse.local, and a member of the tenant with a session token (session_NAME) and an API key (key_NAME).
node() {
    local name=$1 port=$2 admin=$(($2 + 1)) database=()
    [[ -n "${3:-}" ]] && database=(--database "$3")
    mkdir -p "$work/$name"
    RUST_LOG=warn ./target/release/wharf serve --data "$work/$name" --listen 127.0.0.1:"$port" \
        --admin 127.0.0.1:"$admin" --init-admin bench@wharf.local "${database[@]}" >"$work/$name.out" &
    pids+=($!)
    for _ in $(seq 1 400); do grep -q '^WHARF_TOKEN=' "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
    local api="http://127.0.0.1:$admin" operator
    operator=$(sed -n 's/^WHARF_TOKEN=//p' "$work/$name.out")
    wharf() { WHARF_ADMIN_URL=$api WHARF_TOKEN=$operator ./target/release/wharf "$@" >/dev/null; }
    wharf publish "$(service_dir hello "$hello")"
    wharf publish "$(service_dir hello-reuse "$hello" reuse)"
    wharf publish "$(service_dir py-hello "$python_hello")"
    wharf publish "$(service_dir py-reuse "$python_hello" reuse)"
    wharf publish "$(service_dir py-sdk "$python_sdk_hello")"
    wharf publish "$(service_dir py-sdk-reuse "$python_sdk_hello" reuse)"
    wharf publish "$(service_dir js-hello "$js_hello")"
    wharf publish "$(service_dir js-sdk "$js_sdk_hello")"
    wharf publish "$(service_dir js-sdk-reuse "$js_sdk_hello" reuse)"
    wharf tenant create bench
    wharf instance create --tenant bench --service hello --host bench.local
    wharf instance create --tenant bench --service hello-reuse --host reuse.local
    wharf instance create --tenant bench --service py-hello --host py.local
    wharf instance create --tenant bench --service py-reuse --host pyreuse.local
    wharf instance create --tenant bench --service py-sdk --host pysdk.local
    wharf instance create --tenant bench --service py-sdk-reuse --host pysdkreuse.local
    wharf instance create --tenant bench --service js-hello --host js.local
    wharf instance create --tenant bench --service js-sdk --host jssdk.local
    wharf instance create --tenant bench --service js-sdk-reuse --host jssdkreuse.local
    # A member of the tenant, as a request with a credential carries one.
    curl -sf -H "Authorization: Bearer $operator" -H 'content-type: application/json' "$api/v1/users" \
        -d '{"email":"member@bench.local","password":"correct horse battery staple"}' >/dev/null
    wharf member add --tenant bench member@bench.local
    local session key
    session=$(curl -sf -H 'content-type: application/json' "$api/v1/login" \
        -d '{"email":"member@bench.local","password":"correct horse battery staple"}' | sed -E 's/.*"token":"([^"]+)".*/\1/')
    key=$(curl -sf -H "Authorization: Bearer $session" -H 'content-type: application/json' "$api/v1/keys" \
        -d '{"name":"bench"}' | sed -E 's/.*"key":"([^"]+)".*/\1/')
    printf -v "session_$name" '%s' "$session"
    printf -v "key_$name" '%s' "$key"
    for host in bench.local reuse.local py.local pyreuse.local pysdk.local pysdkreuse.local js.local jssdk.local \
        jssdkreuse.local; do wait_for "127.0.0.1:$port" "$host"; done
}

names=(sqlite)
node sqlite 18180
if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && command -v psql >/dev/null; then
    pgdb="wharf_bench_$$"
    psql "$postgres" -qc "CREATE DATABASE $pgdb" >/dev/null
    node postgres 18190 "${postgres%/*}/$pgdb"
    names+=(postgres)
else
    echo "(PostgreSQL unreachable at $postgres: credentials on SQLite only)"
fi

# The references.
wasmtime serve -S cli --addr 127.0.0.1:18182 "$hello" 2>"$work/wasmtime.log" &
pids+=($!)
wasmtime serve -S cli --addr 127.0.0.1:18185 "$python_hello" 2>"$work/wasmtime-py.log" &
pids+=($!)
wasmtime serve -S cli --addr 127.0.0.1:18186 "$js_hello" 2>"$work/wasmtime-js.log" &
pids+=($!)
./target/release/native-hello --addr 127.0.0.1:18183 2>/dev/null &
pids+=($!)
./target/release/tuned-host "$hello" --addr 127.0.0.1:18184 2>/dev/null &
pids+=($!)
for a in 18182 18183 18184 18185 18186; do wait_for "127.0.0.1:$a" bench.local; done

for target in 18180/bench.local 18180/reuse.local 18182/x 18183/x 18184/x 18180/py.local 18180/pyreuse.local 18185/x \
    18180/pysdk.local 18180/pysdkreuse.local 18180/js.local 18180/jssdk.local 18180/jssdkreuse.local 18186/x; do
    body=$(curl -s -H "Host: ${target#*/}" "http://127.0.0.1:${target%/*}/")
    [[ "$body" == "Hello from Wharf!" ]] || { echo "unexpected body from $target: $body" >&2; exit 1; }
done

source bench/lib.sh
declare -A rps p50 p99
# one NAME CONNECTIONS HOST URL [HEADER] — one wrk run, appended to NAME's samples.
one() {
    local out extra=()
    [[ -n "${5:-}" ]] && extra=(-H "$5")
    out=$(wrk -t1 -c"$2" -d"$duration" --latency -H "Host: $3" "${extra[@]}" "$4")
    # A failed request is fast: figures that count failures would flatter.
    if grep -q 'Non-2xx' <<<"$out"; then
        echo "$1 ($3): $(grep 'Non-2xx' <<<"$out" | xargs); not a figure" >&2
        exit 1
    fi
    rps[$1]+="$(awk '/^Requests\/sec/ {print $2}' <<<"$out") "
    p50[$1]+="$(awk '$1=="50%" {print $2}' <<<"$out") "
    p99[$1]+="$(awk '$1=="99%" {print $2}' <<<"$out") "
}

c=$connections
# Every ratio is taken within a round, between runs next to each other (the
# machine's speed drifts over minutes), and the median and range over rounds
# reported: Wharf beside wasmtime serve and the tuned host, reuse beside native
# hyper, and each credential between two anonymous runs on the same node.
round() {
    one tuned "$c" x http://127.0.0.1:18184/
    one wharf "$c" bench.local http://127.0.0.1:18180/
    one wasmtime "$c" x http://127.0.0.1:18182/
    one wharf-reuse "$c" reuse.local http://127.0.0.1:18180/
    one native "$c" x http://127.0.0.1:18183/
    for name in "${names[@]}"; do
        local port session_var="session_$name" key_var="key_$name"
        port=$([[ $name == sqlite ]] && echo 18180 || echo 18190)
        one "$name-anonymous" "$c" bench.local "http://127.0.0.1:$port/"
        one "$name-session" "$c" bench.local "http://127.0.0.1:$port/" "Authorization: Bearer ${!session_var}"
        one "$name-key" "$c" bench.local "http://127.0.0.1:$port/" "Authorization: Bearer ${!key_var}"
        one "$name-anonymous-after" "$c" bench.local "http://127.0.0.1:$port/"
    done
    one py-fresh 1 py.local http://127.0.0.1:18180/
    one py-reuse 1 pyreuse.local http://127.0.0.1:18180/
    one py-wasmtime 1 x http://127.0.0.1:18185/
    one py-sdk 1 pysdk.local http://127.0.0.1:18180/
    one py-sdk-reuse 1 pysdkreuse.local http://127.0.0.1:18180/
    one js-fresh 1 js.local http://127.0.0.1:18180/
    one js-wasmtime 1 x http://127.0.0.1:18186/
    one js-sdk 1 jssdk.local http://127.0.0.1:18180/
    one js-sdk-reuse 1 jssdkreuse.local http://127.0.0.1:18180/
}
echo "==> warm-up"
(duration=2s; round >/dev/null)
rps=(); p50=(); p99=()
echo "==> wrk -t1 -d$duration, $rounds interleaved rounds (hello: -c$c; Python, JavaScript: -c1)"
for r in $(seq 1 "$rounds"); do
    round
    echo "    round $r done"
done

printf "\n%-52s %10s %9s %9s\n" "hello over HTTP, -c$c (median)" "req/s" "p50 ms" "p99 ms"
report wharf "Wharf (fresh sandbox per request)"
report wharf-reuse "Wharf with reuse"
report tuned "minimal tuned wasmtime host (pooling, fresh)"
report wasmtime "wasmtime serve 48 (defaults)"
report native "native hyper"
for name in "${names[@]}"; do
    report "$name-anonymous" "$name control plane: anonymous"
    report "$name-session" "$name control plane: session token"
    report "$name-key" "$name control plane: API key"
done
printf "\n%-52s %10s %9s %9s\n" "Python hello, -c1 (median)" "req/s" "p50 ms" "p99 ms"
report py-fresh "Wharf (fresh sandbox per request)"
report py-reuse "Wharf with reuse"
report py-wasmtime "wasmtime serve 48 (defaults)"
report py-sdk "Wharf, the hello written with the SDK (fresh)"
report py-sdk-reuse "Wharf, the hello written with the SDK, reuse"
printf "\n%-52s %10s %9s %9s\n" "JavaScript hello, -c1 (median)" "req/s" "p50 ms" "p99 ms"
report js-fresh "Wharf (fresh sandbox per request)"
report js-wasmtime "wasmtime serve 48 (defaults)"
report js-sdk "Wharf, the hello written with the SDK (fresh)"
report js-sdk-reuse "Wharf, the hello written with the SDK, reuse"

declare -A med
for name in "${!rps[@]}"; do med[$name]=$(median <<<"${rps[$name]}"); done
echo
echo "ratios of req/s within each round: median (range over $rounds rounds)"
printf "  Wharf / wasmtime serve: %s   Wharf / tuned host: %s   Wharf / native: %s\n" \
    "$(paired wharf wasmtime)" "$(paired wharf tuned)" "$(paired wharf native)"
printf "  Wharf with reuse / native: %s   with reuse / fresh: %s\n" "$(paired wharf-reuse native)" "$(paired wharf-reuse wharf)"
for name in "${names[@]}"; do
    printf "  %s: session token / anonymous = %s   API key / anonymous = %s\n" "$name" \
        "$(paired "$name-session" "$name-anonymous" "$name-anonymous-after")" \
        "$(paired "$name-key" "$name-anonymous" "$name-anonymous-after")"
done
awk -v p="${med[py-fresh]}" -v pr="${med[py-reuse]}" -v ps="${med[py-sdk]}" -v psr="${med[py-sdk-reuse]}" \
    -v j="${med[js-fresh]}" -v jw="${med[js-wasmtime]}" -v js="${med[js-sdk]}" -v jsr="${med[js-sdk-reuse]}" 'BEGIN {
    printf "Python: SDK hello / plain hello = %.2f fresh, %.2f reused\n", ps/p, psr/pr
    printf "JavaScript: Wharf / wasmtime serve = %.2fx   SDK hello / plain = %.2f   SDK reused / SDK fresh = %.2fx\n", j/jw, js/j, jsr/js }'

for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done

echo
echo "==> instantiate + call (in process, no HTTP)"
./target/release/instantiate "$hello" --iterations "${ITERATIONS:-5000}" --rounds "$rounds" 2>/dev/null
echo
echo "==> restart with 20 published versions"
./target/release/restart "$echo_wasm" --versions 20 --rounds "$rounds" 2>/dev/null
