#!/usr/bin/env bash
# A bounded load test through a real Envoy (the shipped envoy/envoy.yaml), loopback only; stops by itself
# and stops everything it started. Numbers are reported as ratios against a baseline measured in the same
# run (see BENCHMARKS.md):
#
#   a. baseline       Envoy -> upstream on a route without ext_authz (/oauth2/*, whose cluster is pointed at
#                     the upstream for this run)
#   b. deny           through ext_authz, no cookie: portcullis answers 401 without Redis (the gRPC hop alone);
#                     deny-unknown-session: a well-formed cookie naming no session (one Redis read, 401)
#   c. max_staleness  through ext_authz with a real session, revalidation.mode = max_staleness (30s)
#   d. every_request  through ext_authz with a real session, every Check introspects at the node IdP
#
# It starts redis-server, the test OpenID provider (tests/idp), a minimal upstream (examples/loadkit.rs),
# portcullis (release build, `serve` with a generated config) and Envoy, logs in SESSIONS times at the IdP
# and plants those sessions in Redis, then runs wrk against each case. wrk rotates the session cookies
# (one connection does not always present the same session). portcullis's RSS comes from /proc.
#
#   scripts/load.sh                       # 10 s per case
#   DURATION=5s CONNECTIONS=16 scripts/load.sh
#
#   DURATION     per measured run (default 10s)      WARMUP       untimed run before each (default 2s)
#   CONNECTIONS  wrk connections (default 32)        THREADS      wrk threads (default 1)
#   SESSIONS     sessions to rotate (default 32)     ENVOY_CONCURRENCY  Envoy workers (default 1)
#   PROFILE      cargo profile to build (default release)
#   CASES        comma list of cases to run (default all: baseline,ceiling,deny-no-cookie,
#                deny-unknown-session,max_staleness,max_staleness-10k,every_request,breaker_open)
#   MIX          sessions of the big mix (default 10000)
#   KEEP=1       keep the work directory (configs and logs) instead of deleting it
#   BIN_DIR      use the portcullis and loadkit binaries in this directory instead of building them
#   PERF=PREFIX  also `perf record` portcullis (DWARF call graphs) for 5 s right after each PERF_CASES
#                run (comma list, default max_staleness; any portcullis case: deny-no-cookie, max_staleness,
#                max_staleness-10k, every_request, breaker_open): flat self time to PREFIX.CASE, time
#                with callees by function to PREFIX.CASE.callers
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"
SESSIONS="${SESSIONS:-32}"
ENVOY_CONCURRENCY="${ENVOY_CONCURRENCY:-1}"
PROFILE="${PROFILE:-release}"
CASES="${CASES:-baseline,ceiling,deny-no-cookie,deny-unknown-session,max_staleness,max_staleness-10k,every_request,breaker_open}"
MIX="${MIX:-10000}"
PERF_CASES="${PERF_CASES:-max_staleness}"
want_case() { [[ ",$CASES," == *",$1,"* ]]; }

work="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-load.XXXXXX")"
pids=()
portcullis_pid=""

stop_pid() {
    local pid="$1"
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n "$portcullis_pid" ]] && stop_pid "$portcullis_pid"
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[$i]}"; done
    wait 2>/dev/null || true
    if [[ "${KEEP:-}" == 1 || $rc -ne 0 ]]; then
        echo "work directory (configs, logs): $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "load: $*" >&2; }
die() { log "$*"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
    die "timed out waiting for $1"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# --- tools -------------------------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
    if [[ "$(id -u)" == 0 ]]; then
        log "installing wrk"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    else
        die "wrk is missing: sudo apt-get install wrk"
    fi
fi
command -v redis-server >/dev/null || die "redis-server is missing: run scripts/ensure-deps.sh"
scripts/ensure-envoy.sh
scripts/ensure-idp.sh
ENVOY="${ENVOY_BIN:-$root/.venv/bin/envoy}"

if [[ -n "${BIN_DIR:-}" ]]; then
    # Binaries built elsewhere (e.g. from an earlier commit, to compare before/after with the same script).
    BIN="$BIN_DIR/portcullis"; KIT="$BIN_DIR/loadkit"
    [[ -x "$BIN" && -x "$KIT" ]] || die "BIN_DIR must hold portcullis and loadkit"
else
    log "building portcullis and examples/loadkit ($PROFILE)"
    cargo build --quiet --profile "$PROFILE" --bin portcullis --example loadkit
    dir="$root/target/$([[ "$PROFILE" == dev ]] && echo debug || echo "$PROFILE")"
    BIN="$dir/portcullis"
    KIT="$dir/examples/loadkit"
fi

# --- dependencies --------------------------------------------------------------------------------------
REDIS_PORT=$(free_port); IDP_PORT=$(free_port); UP_PORT=$(free_port)
GRPC_PORT=$(free_port); HTTP_PORT=$(free_port)
LISTEN_PORT=$(free_port); OPS_PORT=$(free_port); ADMIN_PORT=$(free_port)

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
IDP_PORT=$IDP_PORT node tests/idp/provider.mjs >"$work/idp.log" 2>&1 &
pids+=($!)
"$KIT" upstream "$UP_PORT" >"$work/upstream.log" 2>&1 &
pids+=($!)
ISSUER="http://127.0.0.1:$IDP_PORT"
wait_http "$ISSUER/.well-known/openid-configuration"
wait_http "http://127.0.0.1:$UP_PORT/"
redis-cli -p "$REDIS_PORT" ping >/dev/null

cat >"$work/portcullis.toml" <<TOML
[server]
grpc_addr = "127.0.0.1:$GRPC_PORT"
http_addr = "127.0.0.1:$HTTP_PORT"
public_url = "http://127.0.0.1:$LISTEN_PORT"

[redis]
url = "redis://127.0.0.1:$REDIS_PORT"

[session]
cookie_secure = false
encryption_keys = ["$("$BIN" keygen)"]

[providers.corp]
kind = "ping"
issuer = "$ISSUER"
client_id = "portcullis"
client_secret = "portcullis-secret"
TOML
"$BIN" check-config --config "$work/portcullis.toml" >/dev/null

log "logging in $SESSIONS times at the IdP and planting the sessions"
"$KIT" plant --config "$work/portcullis.toml" --issuer "$ISSUER" --count "$SESSIONS" >"$work/cookies"
[[ $(wc -l <"$work/cookies") -eq $SESSIONS ]] || die "planted $(wc -l <"$work/cookies") sessions, wanted $SESSIONS"
if want_case max_staleness-10k; then
    log "planting $MIX sessions (one login, tokens reused)"
    "$KIT" plant --config "$work/portcullis.toml" --issuer "$ISSUER" --count "$MIX" --reuse >"$work/cookies-mix"
fi
INTRO_PORT=$(free_port); DEAD_PORT=$(free_port)
"$KIT" introspect "$INTRO_PORT" >"$work/introspect.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$INTRO_PORT/"
: >"$work/no-cookies"
# Well-formed session cookies (43 URL-safe characters) that name no session.
for _ in $(seq "$SESSIONS"); do head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' | cut -c1-43; done >"$work/unknown-cookies"

# wrk: every request carries the next cookie of COOKIES (none when the file is empty).
cat >"$work/rotate.lua" <<'LUA'
local cookies = {}
for line in io.lines(os.getenv("COOKIES")) do
  if #line > 0 then cookies[#cookies + 1] = "GATEWAY_SESSION=" .. line end
end
local i = 0
request = function()
  i = i + 1
  if #cookies == 0 then return wrk.format("GET", wrk.path) end
  return wrk.format("GET", wrk.path, { ["Cookie"] = cookies[(i % #cookies) + 1] })
end
LUA

# Envoy: the shipped config; /oauth2/* (ext_authz disabled) goes to the upstream for the baseline.
ENVOY_LISTEN_ADDR=127.0.0.1 ENVOY_LISTEN_PORT=$LISTEN_PORT ENVOY_OPS_ADDR=127.0.0.1 ENVOY_OPS_PORT=$OPS_PORT \
ENVOY_ADMIN_ADDR=127.0.0.1 ENVOY_ADMIN_PORT=$ADMIN_PORT PORTCULLIS_GRPC_PORT=$GRPC_PORT \
PORTCULLIS_HTTP_PORT=$UP_PORT UPSTREAM_PORT=$UP_PORT \
    scripts/render-envoy.sh >"$work/envoy.yaml"
"$ENVOY" -c "$work/envoy.yaml" --base-id "$ADMIN_PORT" --disable-hot-restart --concurrency "$ENVOY_CONCURRENCY" \
    --log-level warn >"$work/envoy.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$ADMIN_PORT/ready"

start_portcullis() { # mode [introspection endpoint]
    local env=(PORTCULLIS__REVALIDATION__MODE="$1")
    [[ -n "${2:-}" ]] && env+=(PORTCULLIS__PROVIDERS__CORP__INTROSPECTION_ENDPOINT="$2")
    [[ "$1" == max_staleness ]] && env+=(PORTCULLIS__REVALIDATION__MAX_STALENESS=30s)
    env "${env[@]}" "$BIN" serve --config "$work/portcullis.toml" >>"$work/portcullis.log" 2>&1 &
    portcullis_pid=$!
    wait_http "http://127.0.0.1:$HTTP_PORT/readyz"
}
start_ceiling() { "$KIT" ceiling "$GRPC_PORT" >>"$work/ceiling.log" 2>&1 & portcullis_pid=$!; sleep 0.5; }
stop_portcullis() { stop_pid "$portcullis_pid"; wait "$portcullis_pid" 2>/dev/null || true; portcullis_pid=""; }
introspections() { curl -fsS "$ISSUER/__stats" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("/token/introspection", 0))'; }

# wrk's duration ("12.34ms", "850.00us", "1.02s") in ms.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }

# Redis: commands executed (INFO commandstats, scripts' inner commands included) and CPU seconds (INFO cpu).
redis_calls() { redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[=,]' '/^cmdstat_/ && !/cmdstat_info/ {n += $2} END {print n + 0}'; }
redis_cpu_us() { redis-cli -p "$REDIS_PORT" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%d", s * 1e6}'; }
# utime + stime of PID in µs (/proc/PID/stat fields 14 and 15, clock ticks).
proc_cpu_us() { [[ -n "${1:-}" ]] || { echo 0; return; }; awk -v hz="$(getconf CLK_TCK)" '{printf "%d", ($14 + $15) * 1e6 / hz}' "/proc/$1/stat"; }

results=()
run_case() { # name path cookies-file expected-status
    local name="$1" path="$2" cookies="$3" want="$4" got header=()
    [[ -s "$cookies" ]] && header=(-H "Cookie: GATEWAY_SESSION=$(head -1 "$cookies")")
    got=$(curl -s -o /dev/null -w '%{http_code}' "${header[@]}" "http://127.0.0.1:$LISTEN_PORT$path")
    [[ "$got" == "$want" ]] || die "$name: $path answered $got, expected $want (logs in $work)"
    COOKIES="$cookies" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$work/rotate.lua" \
        "http://127.0.0.1:$LISTEN_PORT$path" >/dev/null
    local before_idp rss_before out rps p50 p99 other rc0 rcpu0 pcpu0
    before_idp=$(introspections)
    rc0=$(redis_calls); rcpu0=$(redis_cpu_us); pcpu0=$(proc_cpu_us "$portcullis_pid")
    rss_before=$([[ -n "$portcullis_pid" ]] && rss_kb "$portcullis_pid" || echo -)
    out=$(COOKIES="$cookies" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/rotate.lua" \
        "http://127.0.0.1:$LISTEN_PORT$path")
    echo "$out" >"$work/wrk-$name.txt"
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    other=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
    local reqs idp_calls
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    idp_calls=$(( $(introspections) - before_idp ))
    local rcmd rcpu pcpu
    rcmd=$(awk -v a="$(redis_calls)" -v b="$rc0" -v n="$reqs" 'BEGIN {printf "%.2f", (a - b) / n}')
    rcpu=$(awk -v a="$(redis_cpu_us)" -v b="$rcpu0" -v n="$reqs" 'BEGIN {printf "%.1f", (a - b) / n}')
    pcpu=$(awk -v a="$(proc_cpu_us "$portcullis_pid")" -v b="$pcpu0" -v n="$reqs" 'BEGIN {printf "%.1f", (a - b) / n}')
    local rss_after
    rss_after=$([[ -n "$portcullis_pid" ]] && rss_kb "$portcullis_pid" || echo -)
    results+=("$name|$want|$rps|$p50|$p99|${other:-0}|$reqs|$idp_calls|$rss_before|$rss_after|$rcmd|$rcpu|$pcpu|$(cut -d' ' -f1 /proc/loadavg)")
    log "$name: $rps req/s, p99 ${p99} ms"
    [[ -n "${PERF:-}" && ",$PERF_CASES," == *",$name,"* && -n "$portcullis_pid" ]] && profile "$name" "$path" "$cookies"
    return 0
}

# perf record (DWARF call graphs) on portcullis under the same load as the case just run: flat self time
# to $PERF.CASE, the same samples with their callees' time (children) to $PERF.CASE.callers.
profile() { # name path cookies-file
    command -v perf >/dev/null || die "PERF is set but perf is missing: apt-get install linux-perf"
    log "perf record on portcullis during a $1 run"
    perf record -F 997 --call-graph dwarf -o "$work/perf-$1.data" -p "$portcullis_pid" -- sleep 5 >/dev/null 2>&1 &
    local perf_pid=$!
    COOKIES="$3" wrk -t"$THREADS" -c"$CONNECTIONS" -d5s -s "$work/rotate.lua" "http://127.0.0.1:$LISTEN_PORT$2" >/dev/null
    wait "$perf_pid" || true
    perf report -i "$work/perf-$1.data" --no-children --stdio -g none --percent-limit 0.5 >"$PERF.$1" 2>/dev/null || true
    perf report -i "$work/perf-$1.data" --children --stdio -g none --percent-limit 1 >"$PERF.$1.callers" 2>/dev/null || true
}

if want_case ceiling; then
    log "ceiling: loadkit ceiling (allows everything, no I/O) on the authz cluster's port"
    start_ceiling
    run_case ceiling /api/bench "$work/no-cookies" 200
    stop_portcullis
fi
log "portcullis: max_staleness (30s)"
start_portcullis max_staleness
rss_start=$(rss_kb "$portcullis_pid")
want_case baseline && run_case baseline /oauth2/bench "$work/cookies" 200
want_case deny-no-cookie && run_case deny-no-cookie /api/bench "$work/no-cookies" 401
want_case deny-unknown-session && run_case deny-unknown-session /api/bench "$work/unknown-cookies" 401
want_case max_staleness && run_case max_staleness /api/bench "$work/cookies" 200
if want_case max_staleness-10k; then
    run_case max_staleness-10k /api/bench "$work/cookies-mix" 200
    rss_mix=$(rss_kb "$portcullis_pid")
fi
stop_portcullis
if want_case every_request; then
    log "portcullis: every_request against loadkit introspect"
    start_portcullis every_request "http://127.0.0.1:$INTRO_PORT/introspect"
    run_case every_request /api/bench "$work/cookies" 200
    stop_portcullis
fi
if want_case breaker_open; then
    log "portcullis: every_request, introspection endpoint down (breaker opens)"
    start_portcullis every_request "http://127.0.0.1:$DEAD_PORT/introspect"
    run_case breaker_open /api/bench "$work/cookies" 503
    stop_portcullis
fi

# --- report --------------------------------------------------------------------------------------------------
echo
echo "Through Envoy ($ENVOY_CONCURRENCY worker), wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $SESSIONS sessions rotated, $(nproc) cores"
echo "portcullis RSS right after start: $((rss_start / 1024)) MiB; after the $MIX-session mix: $(( ${rss_mix:-0} / 1024 )) MiB"
printf '%-21s %6s %9s %8s %8s %8s %8s %8s %8s %8s %9s %9s %4s %4s %9s %6s\n' \
    case status req/s p50_ms p99_ms non-2xx 'rps/base' 'p99/base' 'rps/ceil' 'p99/ceil' 'IdP/req' \
    'RSS b->a' 'r.cmd' 'r.us' 'authz_us' load1
base_rps="" base_p99="" ceil_rps="" ceil_p99=""
for r in "${results[@]}"; do
    IFS='|' read -r name _ rps _ p99 _ <<<"$r"
    [[ "$name" == baseline ]] && base_rps=$rps && base_p99=$p99
    [[ "$name" == ceiling ]] && ceil_rps=$rps && ceil_p99=$p99
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b + 0 > 0) printf "%.2f", a / b; else printf "-"}'; }
for r in "${results[@]}"; do
    IFS='|' read -r name want rps p50 p99 other reqs idp rb ra rcmd rcpu pcpu load <<<"$r"
    rss="-"
    [[ "$rb" != - ]] && rss="$((rb / 1024))->$((ra / 1024))"
    # 401 is the expected answer of the deny case: wrk counts it as non-2xx.
    [[ "$want" != 200 ]] && other="($other)"
    printf '%-21s %6s %9s %8s %8s %8s %8s %8s %8s %8s %9s %9s %4s %4s %9s %6s\n' "$name" "$want" "$rps" "$p50" "$p99" \
        "$other" "$(ratio "$rps" "$base_rps")" "$(ratio "$p99" "$base_p99")" "$(ratio "$rps" "$ceil_rps")" \
        "$(ratio "$p99" "$ceil_p99")" "$(awk -v a="$idp" -v b="$reqs" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')" \
        "$rss" "$rcmd" "$rcpu" "$pcpu" "$load"
done
echo "authz us/chk: CPU (utime+stime) of the authz server (portcullis or the ceiling) per request; x1000 for CPU per 1,000 checks"
