#!/usr/bin/env bash
# Renders envoy/envoy.yaml (or the file given) to stdout: on every line ending in `# ${NAME}`, the value
# before the comment is replaced by $NAME when NAME is set in the environment; otherwise the default in the
# file stays. Fails when a set variable would produce an empty value. The variables and their defaults are
# listed at the top of envoy/envoy.yaml.
#
#   ENVOY_LISTEN_PORT=10000 UPSTREAM_HOST=app scripts/render-envoy.sh > /tmp/envoy.yaml
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${1:-$root/envoy/envoy.yaml}"

awk '
match($0, /# \$\{[A-Z0-9_]+\}[ \t]*$/) {
    marker = substr($0, RSTART, RLENGTH)
    name = marker
    sub(/^# \$\{/, "", name); sub(/\}[ \t]*$/, "", name)
    if (name in ENVIRON) {
        value = ENVIRON[name]
        if (value == "") { printf "render-envoy: %s is set but empty\n", name > "/dev/stderr"; exit 2 }
        head = substr($0, 1, RSTART - 1)
        if (!match(head, /^[^:]*: /)) { printf "render-envoy: line %d: no `key: value` before %s\n", NR, marker > "/dev/stderr"; exit 2 }
        print substr(head, 1, RLENGTH) value " " marker
        next
    }
}
{ print }
' "$src"
