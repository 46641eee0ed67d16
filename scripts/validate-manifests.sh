#!/usr/bin/env bash
# Validates the deployment files with the tools made for them; every tool is mandatory (installed by
# scripts/ensure-k8s-tools.sh and scripts/ensure-envoy.sh, a missing one fails). Called by `make test`.
#   kustomize            each overlay under k8s/overlays builds (`kubectl kustomize`, or `kustomize build`)
#   kubernetes-validate  the built-in kinds of each build, against the Kubernetes $K8S_VERSION schema (strict)
#   check-jsonschema     the custom resources of each build, against the CRD schemas vendored in k8s/schemas/
#   promtool             `check rules` and the unit tests k8s/monitoring/alerts.test.yaml
#   envoy --mode validate  envoy/envoy.yaml
#   portcullis check-config  k8s/base/portcullis.toml and config/portcullis.compose.toml
#   scripts/validate_manifests.py  what no tool checks: the Envoy contract, metric names, runbook links
#
#   K8S_VERSION=1.33.0 STRICT_METRICS=1 scripts/validate-manifests.sh
#   scripts/validate-manifests.sh --fix   # first copy envoy/envoy.yaml to k8s/base/envoy.yaml
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/ensure-envoy.sh
scripts/ensure-k8s-tools.sh
export PATH="$root/.venv/bin:$PATH"
K8S_VERSION="${K8S_VERSION:-1.33.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
step() { echo "== $*"; }
bad() { echo "FAIL: $*" >&2; failed=1; }

if [[ "${1:-}" = "--fix" ]]; then
    scripts/render-envoy.sh > k8s/base/envoy.yaml
    echo "rewrote k8s/base/envoy.yaml from envoy/envoy.yaml"
fi

build() {
    if command -v kubectl >/dev/null; then kubectl kustomize "$1"; else kustomize build "$1"; fi
}

# Custom resource kind -> vendored schema (from the CRDs: see k8s/schemas/README.md).
declare -A schema=(
    [ServiceMonitor]=servicemonitor_v1.json [PodMonitor]=podmonitor_v1.json
    [PrometheusRule]=prometheusrule_v1.json [EnvoyFilter]=envoyfilter_v1alpha3.json
    [AuthorizationPolicy]=authorizationpolicy_v1.json [VirtualService]=virtualservice_v1.json
)

for overlay in k8s/overlays/*/ k8s/webhook/; do
    name="$(basename "$overlay")"
    out="$work/$name"
    mkdir -p "$out"
    step "kustomize $overlay"
    if ! build "$overlay" > "$out/all.yaml"; then bad "kustomize $overlay"; continue; fi
    # One file per object: built-ins together for kubernetes-validate, each custom resource by kind.
    .venv/bin/python - "$out" <<'PY'
import sys, yaml, pathlib
out = pathlib.Path(sys.argv[1])
docs = [d for d in yaml.safe_load_all((out / "all.yaml").read_text()) if d]
builtin = []
for i, d in enumerate(docs):
    group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
    if "." in group and not group.endswith(".k8s.io"):
        (out / f"cr-{d['kind']}-{i}.yaml").write_text(yaml.safe_dump(d))
    else:
        builtin.append(d)
(out / "builtin.yaml").write_text(yaml.safe_dump_all(builtin))
PY
    step "kubernetes-validate $name (Kubernetes $K8S_VERSION, strict)"
    kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$out/builtin.yaml" || bad "kubernetes-validate $name"
    for cr in "$out"/cr-*.yaml; do
        [[ -e "$cr" ]] || continue
        kind="$(basename "$cr" | cut -d- -f2)"
        if [[ -z "${schema[$kind]:-}" ]]; then bad "$name: no vendored schema for $kind"; continue; fi
        step "check-jsonschema $name $kind (k8s/schemas/${schema[$kind]})"
        check-jsonschema --schemafile "k8s/schemas/${schema[$kind]}" "$cr" || bad "check-jsonschema $name $kind"
    done
done

step "promtool check rules + test rules k8s/monitoring/alerts.test.yaml"
.venv/bin/python -c 'import sys, yaml; print(yaml.safe_dump(yaml.safe_load(open("k8s/monitoring/alerts.yaml"))["spec"]))' \
    > "$work/portcullis.rules.yml"
cp k8s/monitoring/alerts.test.yaml "$work/"
(cd "$work" && promtool check rules portcullis.rules.yml && promtool test rules alerts.test.yaml) || bad promtool

step "envoy --mode validate envoy/envoy.yaml"
envoy --mode validate -c envoy/envoy.yaml --log-level error || bad "envoy validate"

step "portcullis check-config"
bin="${PORTCULLIS_BIN:-target/debug/portcullis}"
[[ -x "$bin" ]] || cargo build --quiet --bin portcullis
"$bin" keygen > "$work/keys"
echo example-secret > "$work/secret"
for toml in k8s/base/portcullis.toml config/portcullis.compose.toml; do
    PORTCULLIS__SESSION__ENCRYPTION_KEYS_FILE="$work/keys" PORTCULLIS__PROVIDERS__CORP__CLIENT_SECRET_FILE="$work/secret" \
    PORTCULLIS__REDIS__PASSWORD_FILE="$work/secret" \
        "$bin" check-config --config "$toml" || bad "check-config $toml"
done

step "scripts/validate_manifests.py (Envoy contract, metric names, runbooks)"
.venv/bin/python scripts/validate_manifests.py || bad validate_manifests.py

if [[ $failed != 0 ]]; then echo "manifests: FAILED" >&2; exit 1; fi
echo "manifests: all checks passed"
