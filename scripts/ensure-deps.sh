#!/usr/bin/env bash
# Installs what the tests and the demo need, when it is missing. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing: $* — install with: sudo apt-get install $*" >&2
    exit 1
  fi
}

command -v redis-server >/dev/null || apt_install redis-server
command -v cargo >/dev/null || { echo "missing: cargo (install Rust with rustup)" >&2; exit 1; }
command -v curl >/dev/null || apt_install curl
# The browser test drives Debian's Chromium through chromedriver.
{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || apt_install chromium chromium-driver
command -v node >/dev/null || apt_install nodejs npm

# `make lint` checks licences, bans and sources with cargo-deny (built from crates.io: no release downloads here).
command -v cargo-deny >/dev/null || cargo install --locked --quiet cargo-deny@0.20.2

# Parts with their own scripts (the manifest checkers of `make test` included).
for s in scripts/ensure-idp.sh scripts/ensure-envoy.sh scripts/ensure-k8s-tools.sh; do
  if [ -x "$s" ]; then "$s"; fi
done
