#!/usr/bin/env bash
# `make demo`: Redis, the OpenID provider (tests/idp), an upstream app, portcullis and Envoy on free local
# ports; signs a user in through Envoy and shows what the upstream received. Ctrl-C stops everything.
#   DEMO_ONESHOT=1  stop after showing the request, and fail unless the upstream got the identity and not the
#                   session cookie (`make test` runs it so)
#   DEMO_DIR        where configs, data and logs go (default .demo)
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO="${DEMO_DIR:-.demo}"
rm -rf "$DEMO" && mkdir -p "$DEMO"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 150); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $1 (logs in $DEMO/)" >&2; return 1
}

echo "building portcullis..."
cargo build --quiet
BIN=target/debug/portcullis
REDIS=$(free_port); IDP=$(free_port); APP=$(free_port); GRPC=$(free_port); HTTP=$(free_port)
ENVOY=$(free_port); ENVOY_ADMIN=$(free_port); ENVOY_OPS=$(free_port)
PUBLIC="http://127.0.0.1:$ENVOY"

redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no --dir "$DEMO" >"$DEMO/redis.log" 2>&1 &
pids+=($!)
IDP_PORT=$IDP IDP_REDIRECT_URIS="$PUBLIC/oauth2/callback" node tests/idp/provider.mjs >"$DEMO/idp.log" 2>&1 &
pids+=($!)
python3 scripts/demo_helpers.py echo "$APP" >"$DEMO/app.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$IDP/.well-known/openid-configuration"

cat >"$DEMO/portcullis.toml" <<TOML
[server]
grpc_addr = "127.0.0.1:$GRPC"
http_addr = "127.0.0.1:$HTTP"
public_url = "$PUBLIC"
log_format = "text"

[redis]
url = "redis://127.0.0.1:$REDIS"

[session]
cookie_secure = false                   # plain http on loopback
encryption_keys = ["$($BIN keygen)"]

[providers.corp]
kind = "ping"                           # introspection with the shared M2M token (Bearer)
issuer = "http://127.0.0.1:$IDP"
client_id = "portcullis"
client_secret = "portcullis-secret"     # the test IdP's demo client, not a real credential
TOML
$BIN check-config --config "$DEMO/portcullis.toml" >/dev/null
RUST_LOG=info $BIN serve --config "$DEMO/portcullis.toml" >"$DEMO/portcullis.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$HTTP/readyz"

ENVOY_LISTEN_ADDR=127.0.0.1 ENVOY_LISTEN_PORT=$ENVOY ENVOY_ADMIN_PORT=$ENVOY_ADMIN \
ENVOY_OPS_ADDR=127.0.0.1 ENVOY_OPS_PORT=$ENVOY_OPS PORTCULLIS_GRPC_PORT=$GRPC PORTCULLIS_HTTP_PORT=$HTTP \
UPSTREAM_PORT=$APP scripts/render-envoy.sh >"$DEMO/envoy.yaml"
"${ENVOY_BIN:-.venv/bin/envoy}" -c "$DEMO/envoy.yaml" --base-id "$ENVOY_ADMIN" --disable-hot-restart \
  --concurrency 1 --log-level warn >"$DEMO/envoy.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$ENVOY_ADMIN/ready"

echo
echo "== Without a session, an API call through Envoy:"
curl -s -o /dev/null -w '   HTTP %{http_code}\n' -H 'accept: application/json' "$PUBLIC/api"
echo "== A browser signs in as demo-user (Envoy -> portcullis -> IdP login -> callback -> the app)."
echo "   What the upstream app received (identity headers set by portcullis, no session cookie):"
seen=$(python3 scripts/demo_helpers.py login "$PUBLIC/hello" demo-user)
sed 's/^/   /' <<<"$seen"
echo
echo "Open $PUBLIC/ in a browser and sign in with any name (the IdP accepts any password)."
echo "Metrics: http://127.0.0.1:$HTTP/metrics   Logs: $DEMO/*.log"
if [ "${DEMO_ONESHOT:-}" = 1 ]; then
  grep -q '"x-auth-user-id": "demo-user"' <<<"$seen" || { echo "demo: the upstream got no identity (logs in $DEMO/)" >&2; exit 1; }
  if grep -q GATEWAY_SESSION <<<"$seen"; then echo "demo: the session cookie reached the upstream" >&2; exit 1; fi
  exit 0
fi
echo "Ctrl-C stops everything."
wait
