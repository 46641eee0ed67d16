#!/usr/bin/env bash
# The local demo: starts Redis and portcullis on free ports and shows them answering. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=.demo
mkdir -p "$DEMO"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out waiting for $1" >&2; return 1; }

cargo build --quiet
BIN=target/debug/portcullis
REDIS_PORT=$(free_port); GRPC_PORT=$(free_port); HTTP_PORT=$(free_port)

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$DEMO/redis.log" 2>&1 &
pids+=($!)

cat >"$DEMO/portcullis.toml" <<TOML
[server]
grpc_addr = "127.0.0.1:$GRPC_PORT"
http_addr = "127.0.0.1:$HTTP_PORT"
public_url = "http://127.0.0.1:$HTTP_PORT"
log_format = "text"

[redis]
url = "redis://127.0.0.1:$REDIS_PORT"

[session]
cookie_secure = false
encryption_keys = ["$($BIN keygen)"]
TOML
$BIN check-config --config "$DEMO/portcullis.toml"
$BIN serve --config "$DEMO/portcullis.toml" >"$DEMO/portcullis.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$HTTP_PORT/readyz"

echo
echo "portcullis is up: Check (gRPC) on 127.0.0.1:$GRPC_PORT, HTTP on 127.0.0.1:$HTTP_PORT"
echo "readyz:  $(curl -fsS http://127.0.0.1:$HTTP_PORT/readyz)"
echo "metrics: $(curl -fsS http://127.0.0.1:$HTTP_PORT/metrics | grep -c '^portcullis_') portcullis_ series"
echo "logs in $DEMO/. Ctrl-C stops everything."
if [ "${DEMO_ONESHOT:-}" = 1 ]; then exit 0; fi
wait
