"""What no tool checks (scripts/validate-manifests.sh runs the tools first):

- the Envoy contract the product relies on, in envoy/envoy.yaml, its copy k8s/base/envoy.yaml and the Istio
  EnvoyFilter: identity headers stripped first, underscore headers refused, ext_authz fail-closed over HTTP/2,
  paths normalised, /oauth2/ unchecked, admin on loopback, portcullis's metrics on the ops listener;
- every portcullis_ metric named in the alerts and the dashboard is emitted by src/;
- every alert has a runbook_url into docs/runbooks.md, at a heading that exists.

STRICT_METRICS=1: a design metric that src/ does not emit yet fails instead of warning.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STRICT_METRICS = os.environ.get("STRICT_METRICS") == "1"
IDENTITY_HEADERS = ["x-auth-user-id", "x-auth-provider", "x-auth-email", "x-auth-name", "x-auth-groups", "x-auth-jwt", "x-auth-client", "x-auth-delegated-token"]
# DESIGN.md "Metrics", which src/ may not all emit yet.
DESIGN_METRICS = {
    "portcullis_check_total", "portcullis_check_duration_seconds", "portcullis_idp_requests_total",
    "portcullis_idp_request_duration_seconds", "portcullis_m2m_refresh_total",
    "portcullis_m2m_token_expires_in_seconds", "portcullis_circuit_state", "portcullis_redis_errors_total",
    "portcullis_logins_total", "portcullis_sessions_revoked_total",
}
RUNBOOKS = "https://github.com/example/portcullis/blob/main/docs/runbooks.md#"

problems: list[str] = []


def check(cond: bool, what: str) -> None:
    if not cond:
        problems.append(what)


def removals(filter_cfg: dict) -> list[str]:
    return [m["remove"] for m in filter_cfg["typed_config"]["mutations"]["request_mutations"] if "remove" in m]


def hcm_of(listener: dict) -> dict:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def check_envoy(cfg: dict) -> None:
    listeners = {l["name"]: l for l in cfg["static_resources"]["listeners"]}
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    for name, l in listeners.items():
        action = hcm_of(l).get("common_http_protocol_options", {}).get("headers_with_underscores_action")
        check(action == "REJECT_REQUEST", f"envoy: listener {name} must set headers_with_underscores_action: REJECT_REQUEST")
    hcm = hcm_of(listeners["ingress"])
    filters = hcm["http_filters"]
    names = [f["name"] for f in filters]
    check(names[:2] == ["envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz"],
          f"envoy: http_filters must start with header_mutation then ext_authz, got {names}")
    check(sorted(removals(filters[0])) == sorted(IDENTITY_HEADERS), f"envoy: header_mutation must remove {IDENTITY_HEADERS}")
    authz = filters[1]["typed_config"]
    check(authz.get("transport_api_version") == "V3", "envoy: ext_authz transport_api_version V3")
    check(authz.get("failure_mode_allow") is False, "envoy: ext_authz failure_mode_allow must be false")
    check(authz.get("status_on_error", {}).get("code") in ("ServiceUnavailable", 503), "envoy: status_on_error 503")
    check("with_request_body" not in authz, "envoy: ext_authz must not buffer bodies")
    grpc = authz.get("grpc_service", {})
    check(bool(grpc.get("timeout")), "envoy: ext_authz grpc_service needs a timeout")
    opts = clusters.get(grpc.get("envoy_grpc", {}).get("cluster_name"), {}).get("typed_extension_protocol_options", {})
    check(any("http2_protocol_options" in o.get("explicit_http_config", {}) for o in opts.values()),
          "envoy: the ext_authz cluster must speak HTTP/2")
    check("request_headers_to_remove" not in json.dumps(cfg), "envoy: request_headers_to_remove runs after ext_authz")
    for k, v in {"normalize_path": True, "merge_slashes": True, "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT"}.items():
        check(hcm.get(k) == v, f"envoy: ingress needs {k}: {v}")
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    oauth2 = [r for r in routes if r["match"].get("prefix") == "/oauth2/"]
    check(bool(oauth2) and oauth2[0].get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz", {}).get("disabled") is True,
          "envoy: /oauth2/ must disable ext_authz per route")
    check(cfg["admin"]["address"]["socket_address"]["address"] == "127.0.0.1", "envoy: admin on 127.0.0.1")
    ops = [r for r in hcm_of(listeners["ops"])["route_config"]["virtual_hosts"][0]["routes"]]
    check(any(r["match"].get("path") == "/portcullis/metrics" and r["route"].get("cluster") == "portcullis_http" for r in ops),
          "envoy: the ops listener must route /portcullis/metrics to portcullis_http (the sidecar ServiceMonitor scrapes it)")


def check_istio() -> None:
    ef = yaml.safe_load((ROOT / "k8s/overlays/istio/strip-identity-headers.yaml").read_text())
    patches = ef["spec"]["configPatches"]
    strip = [p for p in patches if p["applyTo"] == "HTTP_FILTER"]
    check(len(strip) == 1 and strip[0]["patch"]["operation"] == "INSERT_FIRST"
          and sorted(removals(strip[0]["patch"]["value"])) == sorted(IDENTITY_HEADERS),
          f"istio: the EnvoyFilter must INSERT_FIRST a header_mutation removing {IDENTITY_HEADERS}")
    check("headers_with_underscores_action: REJECT_REQUEST" in yaml.safe_dump(patches),
          "istio: the EnvoyFilter must set headers_with_underscores_action: REJECT_REQUEST")


def check_metrics() -> None:
    known: set[str] = set()
    for p in (ROOT / "src").rglob("*.rs"):
        known.update(re.findall(r'"(portcullis_[a-z0-9_]+)"', p.read_text()))
    rules = yaml.safe_load((ROOT / "k8s/monitoring/alerts.yaml").read_text())
    alerts = [r for g in rules["spec"]["groups"] for r in g["rules"] if "alert" in r]
    dash = json.loads((ROOT / "k8s/monitoring/grafana-dashboard.json").read_text())
    exprs = [("alerts.yaml " + r["alert"], r["expr"]) for r in alerts]
    exprs += [("dashboard " + p.get("title", "?"), t["expr"]) for p in dash["panels"] for t in p.get("targets", []) if "expr" in t]
    for where, expr in exprs:
        for name in set(re.findall(r"\bportcullis_[a-z0-9_]+", expr)):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in known or base in known:
                continue
            if base in DESIGN_METRICS and not STRICT_METRICS:
                print(f"warn  {where}: {base} is in the design but not emitted by src/ yet")
                continue
            problems.append(f"{where}: {name} is not emitted by src/")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    check({"namespace", "job", "pod"} <= variables, "dashboard: needs namespace, job and pod variables")
    # Runbooks: each alert links to a heading of docs/runbooks.md (GitHub anchors: lower case, no punctuation).
    text = (ROOT / "docs/runbooks.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for r in alerts:
        url = r.get("annotations", {}).get("runbook_url", "")
        check(url.startswith(RUNBOOKS) and url[len(RUNBOOKS):] in anchors,
              f"alerts.yaml {r['alert']}: runbook_url must be {RUNBOOKS}<a heading of docs/runbooks.md>, got {url!r}")


def main() -> int:
    shipped = (ROOT / "envoy/envoy.yaml").read_text()
    check_envoy(yaml.safe_load(shipped))
    rendered = subprocess.run([str(ROOT / "scripts/render-envoy.sh")], capture_output=True, text=True,
                              env={"PATH": os.environ["PATH"]}, check=True).stdout
    check((ROOT / "k8s/base/envoy.yaml").read_text() == rendered,
          "k8s/base/envoy.yaml differs from envoy/envoy.yaml: run scripts/validate-manifests.sh --fix")
    check_istio()
    check_metrics()
    for p in problems:
        print(f"FAIL  {p}")
    print(f"contract: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
