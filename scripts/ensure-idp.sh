#!/usr/bin/env bash
# Installs the test OpenID provider's npm dependencies (tests/idp) when they are missing.
# Needs Node.js 20+ and npm (Debian: apt-get install nodejs npm).
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/tests/idp"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "ensure-idp: node and npm are required for the test OpenID provider (apt-get install nodejs npm)" >&2
  exit 1
fi
if [ ! -d "$dir/node_modules/oidc-provider" ] || [ ! -d "$dir/node_modules/jose" ]; then
  (cd "$dir" && npm ci --no-audit --no-fund)
fi
