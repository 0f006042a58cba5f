# Shared by bench/*.sh: wrk runs collected per name, medians and unit conversion.
# Callers set $connections and $duration and declare: declare -A rps p50 p99

# run_wrk NAME HOST URL — one wrk run, appended to NAME's samples.
run_wrk() {
    local out
    out=$(wrk -t1 -c"$connections" -d"$duration" --latency -H "Host: $2" "$3")
    rps[$1]+="$(awk '/^Requests\/sec/ {print $2}' <<<"$out") "
    p50[$1]+="$(awk '$1=="50%" {print $2}' <<<"$out") "
    p99[$1]+="$(awk '$1=="99%" {print $2}' <<<"$out") "
}

# median — of whitespace-separated numbers on stdin.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# paired A B [B2] — A's samples over B's (over the mean of B's and B2's, runs on
# either side of A), round by round: "median (min-max)". Samples are in round
# order, one per round, so a ratio compares runs minutes apart at most.
paired() {
    local -a a b c
    read -r -a a <<<"${rps[$1]}"; read -r -a b <<<"${rps[$2]}"; read -r -a c <<<"${rps[${3:-$2}]}"
    local ratios=() i
    for i in "${!a[@]}"; do ratios+=("$(awk -v a="${a[$i]}" -v b="${b[$i]}" -v c="${c[$i]}" 'BEGIN {printf "%.3f", 2*a/(b+c)}')"); done
    local sorted
    sorted=$(printf '%s\n' "${ratios[@]}" | sort -g)
    printf "%.2f (%.2f-%.2f)" "$(median <<<"${ratios[*]}")" "$(head -n1 <<<"$sorted")" "$(tail -n1 <<<"$sorted")"
}

# to_ms — wrk's "850.00us" / "1.20ms" / "1.02s" as milliseconds.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub("us","",v); v/=1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v*=1000}; printf "%.3f", v}'; }

# report NAME LABEL — one table row: median req/s, p50 and p99 of NAME's samples.
report() {
    local m50 m99
    m50=$(for v in ${p50[$1]}; do to_ms <<<"$v"; echo; done | median)
    m99=$(for v in ${p99[$1]}; do to_ms <<<"$v"; echo; done | median)
    printf "%-44s %10.0f %9s %9s\n" "$2" "$(median <<<"${rps[$1]}")" "$m50" "$m99"
}

# prepare GUEST... — what a benchmark needs: set-up, wrk, release builds of the
# host, the bench tools and GUEST..., and a work directory ($work) whose
# background processes ($pids) are stopped on exit.
prepare() {
    ./scripts/setup
    command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
    cargo build --release --locked -p wharf -p wharf-bench
    local guests=()
    for g in "$@"; do guests+=(-p "$g"); done
    (cd plugins && cargo build --release --locked --target wasm32-wasip2 "${guests[@]}")
    work=$(mktemp -d); pids=()
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
}

# haproxy_config FILE PORT ADMIN_PORT NODE_PORTS... — HAProxy in front of the nodes
# listening on NODE_PORTS (ingress) with their admin API on ADMIN_PORT + the
# same offset: health checks on /readyz, idempotent requests retried on another
# node, stats at 127.0.0.1:18099/stats.
haproxy_config() {
    local file=$1 port=$2; shift 2
    local servers="" i=1
    while (( $# >= 2 )); do
        servers+="    server node$i 127.0.0.1:$1 check port $2"$'\n'
        shift 2; i=$((i + 1))
    done
    cat >"$file" <<CFG
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option redispatch
    retries 2
    retry-on conn-failure empty-response response-timeout 502 503 504
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 2 rise 1
frontend ingress
    bind 127.0.0.1:$port
    default_backend nodes
backend nodes
    balance roundrobin
    http-request disable-l7-retry unless { method GET HEAD PUT DELETE OPTIONS }
$servers
listen stats
    bind 127.0.0.1:18099
    stats enable
    stats uri /stats
CFG
}
