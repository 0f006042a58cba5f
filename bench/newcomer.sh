#!/usr/bin/env bash
# The newcomer's path, timed (issue 24): from `wharf new NAME --lang python|js` to a
# published, permission-guarded service with its own table, answering on a node
# like the quick start's, following the README the template writes. Each
# language's toolchain is installed from scratch (an empty install directory and
# empty pip/npm caches), as on a fresh machine; the Wharf binary is built before
# the clock starts (the quick start's first command builds it).
#
# Usage: bench/newcomer.sh [python|js ...]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
langs=("$@"); [[ ${#langs[@]} -gt 0 ]] || langs=(python js)
./scripts/setup >/dev/null
cargo build --release --locked --bin wharf
wharf_bin=$PWD/target/release/wharf
work=$(mktemp -d)
server=
cleanup() { [[ -n "$server" ]] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

admin=127.0.0.1:18281 ingress=127.0.0.1:18280
RUST_LOG=warn "$wharf_bin" serve --data "$work/node" --listen "$ingress" --admin "$admin" \
    --init-admin operator@newcomer.local >"$work/serve.out" &
server=$!
for _ in $(seq 1 200); do grep -q '^WHARF_TOKEN=' "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
export WHARF_ADMIN_URL=http://$admin WHARF_TOKEN
WHARF_TOKEN=$(sed -n 's/^WHARF_TOKEN=//p' "$work/serve.out")
wharf() { "$wharf_bin" "$@"; }
# A tenant and a member who will hold the new service's permission.
wharf tenant create acme >/dev/null
password="correct horse battery staple"
curl -sf -H "Authorization: Bearer $WHARF_TOKEN" -H 'content-type: application/json' "$WHARF_ADMIN_URL/v1/users" \
    -d "{\"email\":\"someone@acme.test\",\"password\":\"$password\"}" >/dev/null
wharf member add --tenant acme someone@acme.test >/dev/null
member=$(curl -sf -H 'content-type: application/json' "$WHARF_ADMIN_URL/v1/login" \
    -d "{\"email\":\"someone@acme.test\",\"password\":\"$password\"}" | sed -E 's/.*"token":"([^"]+)".*/\1/')

now() { date +%s.%N; }
declare -A took
# step LANG NAME COMMAND... — run it, record how long it took, stop on failure.
step() {
    local lang=$1 name=$2 t0; shift 2
    t0=$(now)
    if ! "$@" >"$work/step.log" 2>&1; then
        echo "$lang: $name failed:" >&2; cat "$work/step.log" >&2; exit 1
    fi
    took[$lang,$name]=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    echo "    $lang: $name ${took[$lang,$name]} s" >&2
}
get() { curl -s -H "Host: $1" "http://$ingress$2"; }
# served SERVICE — wait until the new instance answers, then check what the
# template promises: the guarded route refuses the anonymous, takes the member's
# item into the table, and lists it.
served() {
    local host="$1.acme.test"
    for _ in $(seq 1 600); do [[ "$(get "$host" /)" == "Hello from $1!" ]] && break; sleep 0.1; done
    [[ "$(get "$host" /)" == "Hello from $1!" ]] || { echo "$host never answered"; return 1; }
    local anonymous
    anonymous=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $host" -d '{"name":"first"}' "http://$ingress/items")
    [[ "$anonymous" == 401 || "$anonymous" == 403 ]] || { echo "anonymous POST /items: $anonymous"; return 1; }
    curl -sf -H "Host: $host" -H "Authorization: Bearer $member" -H 'content-type: application/json' \
        -d '{"name":"first"}' "http://$ingress/items"
    get "$host" /items | grep -q 'someone@acme.test'
}

for lang in "${langs[@]}"; do
    name="demo-$lang" dir="$work/demo-$lang"
    echo "==> $lang" >&2
    t0=$(now)
    step "$lang" "wharf new" wharf new "$name" --lang "$lang" --dir "$dir"
    step "$lang" "build (toolchain from scratch)" env WHARF_PY_TOOLS="$work/tools-py" WHARF_JS_TOOLS="$work/tools-js" \
        PIP_NO_CACHE_DIR=1 npm_config_cache="$work/npm-cache" "sdk/$lang/build.sh" "$dir" "$dir/build/$name.wasm"
    step "$lang" "build again" env WHARF_PY_TOOLS="$work/tools-py" WHARF_JS_TOOLS="$work/tools-js" \
        "sdk/$lang/build.sh" "$dir" "$dir/build/$name.wasm"
    step "$lang" "wharf publish" wharf publish "$dir"
    step "$lang" "instance + grant" bash -c "'$wharf_bin' instance create --tenant acme --service $name --host $name.acme.test \
        && '$wharf_bin' grant --tenant acme someone@acme.test $name.write"
    step "$lang" "served and guarded" served "$name"
    took[$lang,total]=$(awk -v a="$t0" -v b="$(now)" -v again="${took[$lang,build again]}" 'BEGIN { printf "%.1f", b - a - again }')
done

printf "\n%-34s" "seconds"
for lang in "${langs[@]}"; do printf "%10s" "$lang"; done
echo
for s in "wharf new" "build (toolchain from scratch)" "build again" "wharf publish" "instance + grant" "served and guarded" total; do
    printf "%-34s" "$s"
    for lang in "${langs[@]}"; do printf "%10s" "${took[$lang,$s]}"; done
    echo
done
echo "(total: the path once, without the second build)"
