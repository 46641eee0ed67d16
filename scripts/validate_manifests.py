"""Offline checks of everything under k8s/, envoy/envoy.yaml and docker-compose.yml.

Run by scripts/validate-manifests.sh (which provides Envoy, kubernetes-validate and PyYAML in .venv).
Prints one line per check and a closing `N passed, N failed`; exits 1 when anything failed.

Environment: ENVOY_BIN, PORTCULLIS_BIN (default target/debug/portcullis), K8S_VERSION (schema version for
kubernetes-validate), STRICT_METRICS=1 (a design metric that src/ does not emit yet is an error, not a
warning).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import kubernetes_validate
import promql_parser
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
ENVOY_YAML = ROOT / "envoy" / "envoy.yaml"
ENVOY_BIN = os.environ.get("ENVOY_BIN") or str(ROOT / ".venv" / "bin" / "envoy")
PORTCULLIS_BIN = os.environ.get("PORTCULLIS_BIN") or str(ROOT / "target" / "debug" / "portcullis")
K8S_VERSION = os.environ.get("K8S_VERSION", kubernetes_validate.utils.latest_version())
STRICT_METRICS = os.environ.get("STRICT_METRICS") == "1"

IDENTITY_HEADERS = ["x-auth-user-id", "x-auth-provider", "x-auth-email", "x-auth-name", "x-auth-groups", "x-auth-jwt"]
# Custom resources: no schema offline, checked as YAML with apiVersion/kind/metadata.name.
CRD_GROUPS = {
    "monitoring.coreos.com",
    "networking.istio.io",
    "security.istio.io",
    "install.istio.io",
    "kustomize.config.k8s.io",
}
# Files that are not whole objects: checked by what they do (the sidecar patch is applied and validated,
# the alert tests run with promtool).
PARTIAL = {K8S / "sidecar-patch.yaml", K8S / "monitoring" / "alerts.test.yaml"}
# The design's metric contract (DESIGN.md, "Metrics"), besides what src/ defines.
DESIGN_METRICS = {
    "portcullis_check_total",
    "portcullis_check_duration_seconds",
    "portcullis_idp_requests_total",
    "portcullis_idp_request_duration_seconds",
    "portcullis_m2m_refresh_total",
    "portcullis_m2m_token_expires_in_seconds",
    "portcullis_circuit_state",
    "portcullis_redis_errors_total",
    "portcullis_logins_total",
    "portcullis_sessions_revoked_total",
}

passed: list[str] = []
failed: list[str] = []
warnings: list[str] = []


def ok(what: str) -> None:
    passed.append(what)
    print(f"ok    {what}")


def fail(what: str, why: str) -> None:
    failed.append(what)
    print(f"FAIL  {what}: {why}")


def warn(what: str) -> None:
    warnings.append(what)
    print(f"warn  {what}")


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def load_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---------------------------------------------------------------------------------------------------------
# Kubernetes objects


def check_k8s_files() -> dict[str, list[dict]]:
    """Every manifest: built-in kinds against the Kubernetes schema (strict), CRDs as YAML."""
    docs_by_file: dict[str, list[dict]] = {}
    files = sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))
    for path in files:
        try:
            docs = load_docs(path)
        except yaml.YAMLError as e:
            fail(rel(path), f"YAML: {e}")
            continue
        docs_by_file[rel(path)] = docs
        if path in PARTIAL:
            continue
        for doc in docs:
            name = f"{rel(path)} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            api = str(doc.get("apiVersion", ""))
            group = api.split("/")[0] if "/" in api else ""
            if not api or not doc.get("kind"):
                fail(name, "apiVersion and kind are required")
            elif group in CRD_GROUPS:
                if doc.get("kind") != "Kustomization" and not (doc.get("metadata") or {}).get("name"):
                    fail(name, "metadata.name is required")
                else:
                    ok(f"{name} (custom resource: YAML only)")
            else:
                try:
                    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                    ok(f"{name} (Kubernetes {K8S_VERSION} schema, strict)")
                except kubernetes_validate.utils.SchemaNotFoundError:
                    fail(name, f"no Kubernetes {K8S_VERSION} schema for {api} {doc.get('kind')}")
                except kubernetes_validate.utils.ValidationError as e:
                    fail(name, f"{'.'.join(str(x) for x in e.path)}: {e.message}")
    return docs_by_file


def find(docs_by_file: dict[str, list[dict]], file: str, kind: str, name: str) -> dict:
    for d in docs_by_file.get(file, []):
        if d.get("kind") == kind and (d.get("metadata") or {}).get("name") == name:
            return d
    raise KeyError(f"{file}: no {kind}/{name}")


def strategic_merge(base, patch):
    """The part of Kubernetes' strategic merge patch the sidecar patch uses: maps merge, lists of named
    objects merge by name, other values replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = [copy.deepcopy(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = strategic_merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def check_sidecar_patch(docs_by_file: dict[str, list[dict]]) -> None:
    """The patch turns the bare app (app.yaml without its sidecars) back into app.yaml, and validates."""
    what = "k8s/sidecar-patch.yaml applied to the bare example app"
    try:
        app = find(docs_by_file, "k8s/app.yaml", "Deployment", "example-app")
        (patch,) = docs_by_file["k8s/sidecar-patch.yaml"]
    except (KeyError, ValueError) as e:
        fail(what, str(e))
        return
    sidecars = {c["name"] for c in patch["spec"]["template"]["spec"]["containers"]}
    volumes = {v["name"] for v in patch["spec"]["template"]["spec"]["volumes"]}
    bare = copy.deepcopy(app)
    pod = bare["spec"]["template"]
    pod["spec"]["containers"] = [c for c in pod["spec"]["containers"] if c["name"] not in sidecars]
    pod["spec"]["volumes"] = [v for v in pod["spec"]["volumes"] if v["name"] not in volumes]
    pod["metadata"].pop("annotations", None)
    if not pod["spec"]["containers"]:
        fail(what, "the example app has no container besides the sidecars")
        return
    patched = strategic_merge(bare, patch)
    try:
        kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    except kubernetes_validate.utils.ValidationError as e:
        fail(what, f"{'.'.join(str(x) for x in e.path)}: {e.message}")
        return
    if patched != app:
        fail(what, "the patch's containers, volumes or annotations differ from k8s/app.yaml's")
        return
    ok(f"{what} (gives k8s/app.yaml, valid)")


# ---------------------------------------------------------------------------------------------------------
# Envoy


def envoy_validate(path: Path, what: str) -> None:
    r = subprocess.run([ENVOY_BIN, "--mode", "validate", "-c", str(path), "--log-level", "error"], capture_output=True, text=True)
    if r.returncode == 0:
        ok(f"{what} (envoy --mode validate)")
    else:
        fail(what, f"envoy --mode validate:\n{r.stdout}{r.stderr}")


def header_mutation_removals(filter_cfg: dict) -> list[str]:
    muts = filter_cfg["typed_config"]["mutations"]["request_mutations"]
    return [m["remove"] for m in muts if "remove" in m]


def check_envoy_contract(cfg: dict) -> None:
    """What the design and the security model need from envoy.yaml, beyond Envoy's own validation."""
    what = "envoy/envoy.yaml contract"
    problems = []
    ingress = next(l for l in cfg["static_resources"]["listeners"] if l["name"] == "ingress")
    hcm = ingress["filter_chains"][0]["filters"][0]["typed_config"]
    filters = hcm["http_filters"]
    names = [f["name"] for f in filters]
    if names[:2] != ["envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz"]:
        problems.append(f"http_filters must start with header_mutation then ext_authz, got {names}")
    else:
        if sorted(header_mutation_removals(filters[0])) != sorted(IDENTITY_HEADERS):
            problems.append(f"header_mutation must remove exactly {IDENTITY_HEADERS}")
        authz = filters[1]["typed_config"]
        expect = {"transport_api_version": "V3", "failure_mode_allow": False}
        for k, v in expect.items():
            if authz.get(k) != v:
                problems.append(f"ext_authz {k} must be {v!r}")
        if authz.get("status_on_error", {}).get("code") not in ("ServiceUnavailable", 503):
            problems.append("ext_authz status_on_error must be 503")
        if "with_request_body" in authz:
            problems.append("ext_authz must not buffer request bodies (with_request_body)")
        if not authz.get("grpc_service", {}).get("timeout"):
            problems.append("ext_authz grpc_service needs a timeout")
        authz_cluster = authz.get("grpc_service", {}).get("envoy_grpc", {}).get("cluster_name")
        cluster = next((c for c in cfg["static_resources"]["clusters"] if c["name"] == authz_cluster), None)
        opts = (cluster or {}).get("typed_extension_protocol_options", {})
        if not any("http2_protocol_options" in o.get("explicit_http_config", {}) for o in opts.values()):
            problems.append(f"the authz cluster {authz_cluster} must speak HTTP/2")
    if "request_headers_to_remove" in json.dumps(cfg):
        problems.append("request_headers_to_remove runs after ext_authz: strip identity headers in header_mutation")
    for k, v in {"normalize_path": True, "merge_slashes": True, "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT"}.items():
        if hcm.get(k) != v:
            problems.append(f"the ingress listener needs {k}: {v} (other spellings of a path would skip its route)")
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    oauth2 = [r for r in routes if r["match"].get("prefix") == "/oauth2/"]
    if not oauth2 or not oauth2[0].get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz", {}).get("disabled"):
        problems.append("the /oauth2/ route must disable ext_authz per route")
    if "portcullis.require_any" not in json.dumps(routes):
        problems.append("an example route with context_extensions portcullis.require_any is expected")
    if cfg.get("admin", {}).get("address", {}).get("socket_address", {}).get("address") != "127.0.0.1":
        problems.append("the admin interface must default to 127.0.0.1")
    if problems:
        fail(what, "; ".join(problems))
    else:
        ok(f"{what} (strip first, fail closed, HTTP/2, paths normalised, /oauth2/ unchecked, admin on loopback)")


def check_envoy(docs_by_file: dict[str, list[dict]]) -> None:
    envoy_validate(ENVOY_YAML, "envoy/envoy.yaml")
    shipped = ENVOY_YAML.read_text()
    cfg = yaml.safe_load(shipped)
    check_envoy_contract(cfg)

    # The pod's copy in the ConfigMap: the shipped file rendered with the pod's addresses (the defaults).
    what = "k8s/configmap.yaml envoy.yaml"
    try:
        cm = find(docs_by_file, "k8s/configmap.yaml", "ConfigMap", "portcullis-config")
        copy_text = cm["data"]["envoy.yaml"]
    except KeyError as e:
        fail(what, str(e))
        return
    rendered = subprocess.run([str(ROOT / "scripts" / "render-envoy.sh")], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    if rendered.returncode != 0:
        fail(what, f"scripts/render-envoy.sh failed: {rendered.stderr}")
    elif copy_text != rendered.stdout:
        fail(what, "differs from envoy/envoy.yaml rendered with its defaults: run scripts/validate-manifests.sh --fix")
    else:
        ok(f"{what} (same as the shipped file rendered with the pod's addresses)")

    # The Istio EnvoyFilter strips the same headers.
    what = "k8s/istio/strip-identity-headers.yaml"
    try:
        ef = find(docs_by_file, what, "EnvoyFilter", "portcullis-strip-identity-headers")
        patch = ef["spec"]["configPatches"][0]
        removed = header_mutation_removals(patch["patch"]["value"])
        if patch["patch"]["operation"] != "INSERT_FIRST" or sorted(removed) != sorted(IDENTITY_HEADERS):
            fail(what, f"must INSERT_FIRST a header_mutation removing {IDENTITY_HEADERS}")
        else:
            ok(f"{what} (removes every identity header before ext_authz)")
    except (KeyError, IndexError, TypeError) as e:
        fail(what, f"unexpected shape: {e}")


# ---------------------------------------------------------------------------------------------------------
# portcullis configuration files


def portcullis_bin() -> str | None:
    if Path(PORTCULLIS_BIN).is_file():
        return PORTCULLIS_BIN
    r = subprocess.run(["cargo", "build", "--quiet", "--bin", "portcullis"], cwd=ROOT)
    return PORTCULLIS_BIN if r.returncode == 0 and Path(PORTCULLIS_BIN).is_file() else None


def check_config(what: str, text: str, tmp: Path) -> None:
    """`portcullis check-config` on the file, with secret files replaced by throwaway ones."""
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(what, f"TOML: {e}")
        return
    binary = portcullis_bin()
    if binary is None:
        fail(what, "cannot build target/debug/portcullis to run check-config")
        return
    key = subprocess.run([binary, "keygen"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp / "keys").write_text(key + "\n")
    (tmp / "secret").write_text("example-secret\n")
    env = {"PATH": os.environ["PATH"]}
    if cfg.get("session", {}).get("encryption_keys_file"):
        env["PORTCULLIS__SESSION__ENCRYPTION_KEYS_FILE"] = str(tmp / "keys")
    for name, p in cfg.get("providers", {}).items():
        if p.get("client_secret_file"):
            env[f"PORTCULLIS__PROVIDERS__{name.upper()}__CLIENT_SECRET_FILE"] = str(tmp / "secret")
    path = tmp / "portcullis.toml"
    path.write_text(text)
    r = subprocess.run([binary, "check-config", "--config", str(path)], capture_output=True, text=True, env=env)
    if r.returncode == 0:
        ok(f"{what} (portcullis check-config)")
    else:
        fail(what, (r.stdout + r.stderr).strip())


def check_configs(docs_by_file: dict[str, list[dict]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        try:
            cm = find(docs_by_file, "k8s/configmap.yaml", "ConfigMap", "portcullis-config")
            check_config("k8s/configmap.yaml portcullis.toml", cm["data"]["portcullis.toml"], tmp)
        except KeyError as e:
            fail("k8s/configmap.yaml portcullis.toml", str(e))
        check_config("config/portcullis.compose.toml", (ROOT / "config" / "portcullis.compose.toml").read_text(), tmp)


# ---------------------------------------------------------------------------------------------------------
# Monitoring


def metrics_in_src() -> set[str]:
    names: set[str] = set()
    for p in (ROOT / "src").rglob("*.rs"):
        names.update(re.findall(r'"(portcullis_[a-z0-9_]+)"', p.read_text()))
    return names


GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def check_metric_names(what: str, exprs: list[str], known: set[str]) -> bool:
    """Each expression parses as PromQL, and each portcullis_ metric it names is emitted by src/."""
    good = True
    for expr in exprs:
        text = expr
        for var, value in GRAFANA_VARIABLES.items():
            text = text.replace(var, value)
        try:
            promql_parser.parse(text)
        except ValueError as e:
            fail(what, f"PromQL: {e}: {expr.strip()!r}")
            good = False
        for name in set(re.findall(r"\bportcullis_[a-z0-9_]+", expr)):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in known or base in known:
                continue
            if name in DESIGN_METRICS or base in DESIGN_METRICS:
                msg = f"{what}: {base} is in the design but not emitted by src/ yet"
                if STRICT_METRICS:
                    fail(what, msg)
                    good = False
                else:
                    warn(msg)
                continue
            fail(what, f"{name} is neither in src/ nor in the design's metrics")
            good = False
    return good


DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def check_alerts(docs_by_file: dict[str, list[dict]], known: set[str]) -> None:
    what = "k8s/monitoring/alerts.yaml rules"
    try:
        rule = find(docs_by_file, "k8s/monitoring/alerts.yaml", "PrometheusRule", "portcullis")
        groups = rule["spec"]["groups"]
    except (KeyError, TypeError) as e:
        fail(what, f"a PrometheusRule `portcullis` with spec.groups is expected: {e}")
        return
    exprs, alerts, problems = [], [], []
    for g in groups:
        if not g.get("name") or not g.get("rules"):
            problems.append("every group needs a name and rules")
            continue
        for r in g["rules"]:
            name = r.get("alert") or r.get("record")
            if not name or not isinstance(r.get("expr"), str):
                problems.append(f"rule {r!r} needs alert/record and expr")
                continue
            exprs.append(r["expr"])
            if "alert" in r:
                alerts.append(name)
                if "for" in r and not DURATION.match(str(r["for"])):
                    problems.append(f"{name}: `for` {r['for']!r} is not a duration")
                if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    problems.append(f"{name}: labels.severity must be critical, warning or info")
                if not r.get("annotations", {}).get("summary"):
                    problems.append(f"{name}: annotations.summary is required")
    if len(set(alerts)) != len(alerts):
        problems.append("alert names must be unique")
    # The alerts the operators asked for.
    for needed, pattern in [
        ("deny-rate spike", r'decision="deny"'),
        ("503s", r"unavailable"),
        ("circuit open", r"portcullis_circuit_state"),
        ("M2M refresh failures", r"portcullis_m2m_refresh_total"),
        ("p99 latency", r"histogram_quantile\(0\.99"),
    ]:
        if not any(re.search(pattern, e) for e in exprs):
            problems.append(f"no alert covers {needed}")
    if problems:
        fail(what, "; ".join(problems))
    elif check_metric_names(what, exprs, known):
        ok(f"{what} ({len(alerts)} alerts, PromQL parsed, metric names checked)")
    promtool = shutil.which("promtool")
    if not promtool:
        warn(f"{what}: promtool not installed: `promtool check rules` and the alert unit tests were skipped")
        return
    with tempfile.TemporaryDirectory() as d:
        rules = Path(d) / "portcullis.rules.yml"
        rules.write_text(yaml.safe_dump(rule["spec"]))
        tests = Path(d) / "alerts.test.yaml"
        tests.write_text((K8S / "monitoring" / "alerts.test.yaml").read_text())
        for args, label in [(["check", "rules", str(rules)], "promtool check rules"),
                            (["test", "rules", str(tests)], "promtool test rules: k8s/monitoring/alerts.test.yaml")]:
            r = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=d)
            if r.returncode == 0:
                ok(f"{what} ({label})")
            else:
                fail(what, f"{label}:\n{r.stdout}{r.stderr}")


def check_dashboard(known: set[str]) -> None:
    path = K8S / "monitoring" / "grafana-dashboard.json"
    what = rel(path)
    try:
        dash = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(what, str(e))
        return
    panels = dash.get("panels", [])
    ids = [p.get("id") for p in panels]
    exprs = [t["expr"] for p in panels for t in p.get("targets", []) if "expr" in t]
    if len(set(ids)) != len(ids) or not dash.get("uid") or not exprs:
        fail(what, "needs a uid, unique panel ids and queries")
    elif check_metric_names(what, exprs, known):
        ok(f"{what} ({len(panels)} panels, PromQL parsed, metric names checked)")


# ---------------------------------------------------------------------------------------------------------
# docker-compose.yml


def check_compose() -> None:
    path = ROOT / "docker-compose.yml"
    what = rel(path)
    try:
        compose = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(what, str(e))
        return
    problems = []
    services = compose.get("services", {})
    for needed in ("envoy", "portcullis", "redis", "idp", "echo"):
        if needed not in services:
            problems.append(f"service {needed} is missing")
    for name, svc in services.items():
        if "image" not in svc and "build" not in svc:
            problems.append(f"{name}: image or build required")
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith(".") and not (ROOT / src).exists():
                if src == "./tests/idp":
                    warn(f"{what}: {name}: ./tests/idp (the test IdP) is not in this tree yet")
                else:
                    problems.append(f"{name}: {src} does not exist")
        mode = svc.get("network_mode", "")
        if mode.startswith("service:") and mode.split(":", 1)[1] not in services:
            problems.append(f"{name}: network_mode names an unknown service")
    if not (ROOT / "Dockerfile").is_file():
        problems.append("Dockerfile is missing")
    if problems:
        fail(what, "; ".join(problems))
    else:
        ok(f"{what} (services, volumes, shared network namespace; not run: no Docker engine here)")


def fix_configmap_envoy() -> None:
    """--fix: replaces the ConfigMap's envoy.yaml (its last key) with the shipped file."""
    path = K8S / "configmap.yaml"
    text = path.read_text()
    marker = "  envoy.yaml: |\n"
    head = text[: text.index(marker) + len(marker)]
    body = "".join(("    " + line) if line.strip() else "\n" for line in ENVOY_YAML.read_text().splitlines(keepends=True))
    path.write_text(head + body)
    print(f"rewrote {rel(path)} envoy.yaml from {rel(ENVOY_YAML)}")


def check_kustomization(docs_by_file: dict[str, list[dict]]) -> None:
    """`kubectl kustomize k8s` (offline) builds exactly the objects of the files it lists."""
    what = "k8s/kustomization.yaml"
    kubectl = shutil.which("kubectl")
    if not kubectl:
        warn(f"{what}: kubectl not installed: `kubectl kustomize k8s` skipped")
        return
    r = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        fail(what, f"kubectl kustomize: {r.stderr.strip()}")
        return
    built = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(r.stdout) if d)
    (kust,) = docs_by_file[what]
    listed = sorted(
        (d["kind"], d["metadata"]["name"]) for f in kust["resources"] for d in docs_by_file[f"k8s/{f}"]
    )
    if built != listed:
        fail(what, f"kubectl kustomize built {built}, the listed files hold {listed}")
    else:
        ok(f"{what} (kubectl kustomize builds {len(built)} objects)")


def main() -> int:
    if "--fix" in sys.argv[1:]:
        fix_configmap_envoy()
    docs_by_file = check_k8s_files()
    check_sidecar_patch(docs_by_file)
    check_kustomization(docs_by_file)
    check_envoy(docs_by_file)
    check_configs(docs_by_file)
    known = metrics_in_src()
    check_alerts(docs_by_file, known)
    check_dashboard(known)
    check_compose()
    if warnings:
        print(f"{len(warnings)} warnings (STRICT_METRICS=1 makes missing design metrics failures)")
    print(f"manifests: {len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
