#!/usr/bin/env bash
# Installs the manifest checkers `make test` runs (scripts/validate-manifests.sh), failing with a message
# when one cannot be had (never a silent skip):
#   kubernetes-validate, check-jsonschema, PyYAML   PyPI, into .venv
#   promtool                                        Debian's prometheus package, unpacked (ensure-promtool.sh)
#   kustomize                                       `kubectl kustomize` (kubectl has it built in); without
#                                                   kubectl, a `kustomize` binary, else built from the Go
#                                                   module proxy (`go install`) when Go is installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

[[ -x .venv/bin/python ]] || python3 -m venv .venv
if ! .venv/bin/python -c 'import kubernetes_validate, check_jsonschema, yaml' >/dev/null 2>&1; then
    .venv/bin/pip install --quiet --disable-pip-version-check \
        'kubernetes-validate==1.37.0' 'check-jsonschema==0.39.0' 'PyYAML>=6'
fi

scripts/ensure-promtool.sh
if ! [[ -x .venv/bin/promtool ]] && ! command -v promtool >/dev/null; then
    echo "missing: promtool (Debian package prometheus; scripts/ensure-promtool.sh could not fetch it)" >&2
    exit 1
fi

if ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null && ! [[ -x .venv/bin/kustomize ]]; then
    if command -v go >/dev/null; then
        GOBIN="$root/.venv/bin" go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
    else
        echo "missing: kubectl (or kustomize). Install kubectl from https://pkgs.k8s.io (apt repository," \
             "package kubectl), or Go and re-run (go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0)." >&2
        exit 1
    fi
fi
