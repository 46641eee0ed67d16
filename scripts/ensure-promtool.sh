#!/usr/bin/env bash
# Puts `promtool` at .venv/bin/promtool when it is missing, taken from Debian's `prometheus` package
# WITHOUT installing it (no Prometheus server, no service): `apt-get download` + `dpkg-deb -x`.
# Idempotent and quiet. When it cannot (not Debian, no apt lists and not root) it says so and exits 0;
# scripts/ensure-k8s-tools.sh then fails, naming promtool: the alert tests are never skipped.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.venv/bin/promtool"
if [[ -x "$dest" ]] || command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "ensure-promtool: no apt-get/dpkg-deb here; install promtool to run the alert rule tests" >&2
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 0777 "$work"   # apt-get download runs as the _apt user when it can
download() { (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); }
if ! download; then
    if [[ "$(id -u)" = 0 ]] && apt-get update -qq >/dev/null 2>&1 && download; then
        :
    else
        echo "ensure-promtool: could not download Debian's prometheus package" >&2
        exit 0
    fi
fi
dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
mkdir -p "$(dirname "$dest")"
install -m 0755 "$work/x/usr/bin/promtool" "$dest"
