//! `portcullis inject` / `uninject` (issue 15), run as the binary a user runs: YAML on stdout, a summary on
//! stderr. Output is checked by `kubernetes-validate` and the real Envoy, never only by our own parser.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const KINDS: &str = include_str!("../fixtures/inject/kinds.yaml");
const BARE_APP: &str = include_str!("../../k8s/overlays/sidecar/app.yaml");
/// AdmissionReviews as an API server sends them for a ReplicaSet's pod (defaults and the service account
/// volume already in): an app on port 3000, and an app on 8081 with route-option annotations.
const REVIEW_APP_PORT: &str = include_str!("../fixtures/inject/review-app-port.json");
const REVIEW_ROUTE_OPTIONS: &str = include_str!("../fixtures/inject/review-route-options.json");
const WORKLOADS: [&str; 7] = ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"];

struct Run {
    stdout: String,
    stderr: String,
}

fn run_as(bin: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(bin)
        .args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    Run { stdout: String::from_utf8(out.stdout).unwrap(), stderr }
}

fn portcullis(args: &[&str], stdin: &str) -> Run {
    run_as(Path::new(env!("CARGO_BIN_EXE_portcullis")), args, stdin)
}

fn inject(input: &str) -> Run {
    portcullis(&["inject", "-"], input)
}

/// Every object of a stream, `kind: List` items flattened, as JSON.
fn objects(yaml: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        match v.get("kind").and_then(Value::as_str) {
            Some("List") => out.extend(v["items"].as_array().unwrap().iter().cloned()),
            Some(_) => out.push(v),
            None => {}
        }
    }
    out
}

fn named<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name).unwrap_or_else(|| panic!("{kind}/{name}"))
}

fn pod_spec(o: &Value) -> &Value {
    match o["kind"].as_str().unwrap() {
        "Pod" => &o["spec"],
        "CronJob" => &o["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &o["spec"]["template"]["spec"],
    }
}

/// `kubernetes-validate --strict` (as scripts/validate-manifests.sh runs it) on the built-in objects, each
/// written as JSON (no YAML reading of its own in the way).
fn kubernetes_validate(objs: &[Value]) {
    let builtin: Vec<String> = objs
        .iter()
        .filter(|o| !o["apiVersion"].as_str().unwrap_or("").contains("example.com"))
        .map(|o| serde_json::to_string(o).unwrap())
        .collect();
    kubernetes_validate_yaml(&builtin.join("\n---\n"));
}

/// `kubernetes-validate --strict` on a YAML stream as it is.
fn kubernetes_validate_yaml(yaml: &str) {
    let bin = PathBuf::from(ROOT).join(".venv/bin/kubernetes-validate");
    assert!(bin.is_file(), "{} missing: run scripts/ensure-k8s-tools.sh", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("builtin.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(bin).args(["--strict", "--quiet", "-k", "1.33.0"]).arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate refused the output:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shipped_k8s_app_yaml_is_inject_of_the_bare_example_app() {
    let out = inject(BARE_APP);
    let shipped = std::fs::read_to_string(Path::new(ROOT).join("k8s/app.yaml")).unwrap();
    assert_eq!(
        out.stdout, shipped,
        "k8s/app.yaml drifted: target/debug/portcullis inject -f k8s/overlays/sidecar/app.yaml > k8s/app.yaml"
    );
    assert!(out.stderr.contains("injected Deployment/example-app (app port 8081)"), "{}", out.stderr);
    let objs = objects(&out.stdout);
    kubernetes_validate(&objs);
    // The Service already targets the port named http (Envoy): nothing to retarget, so byte for byte.
    assert!(out.stdout.contains("    - { name: http, port: 80, targetPort: http }\n"));
    // The sidecars are the overlay's, in order, as native sidecars.
    let spec = pod_spec(named(&objs, "Deployment", "example-app"));
    let init: Vec<_> = spec["initContainers"].as_array().unwrap().iter().collect();
    assert_eq!(init.iter().map(|c| c["name"].as_str().unwrap()).collect::<Vec<_>>(), ["portcullis", "envoy"]);
    assert!(init.iter().all(|c| c["restartPolicy"] == "Always" && c["startupProbe"].is_object()));
    let volumes: Vec<_> = spec["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert!(volumes.contains(&"portcullis-secrets") && volumes.contains(&"envoy-config"), "{volumes:?}");
    let secrets = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "portcullis-secrets").unwrap();
    assert_eq!(secrets["secret"]["defaultMode"], 0o444, "YAML 1.1 octal read as Kubernetes reads it");
}

#[test]
fn every_workload_kind_is_injected_and_validates() {
    let out = inject(KINDS);
    let objs = objects(&out.stdout);
    kubernetes_validate(&objs);
    for kind in WORKLOADS {
        let o = objs.iter().find(|o| o["kind"] == kind).unwrap();
        let names: Vec<_> =
            pod_spec(o)["initContainers"].as_array().unwrap().iter().map(|c| c["name"].clone()).collect();
        assert_eq!(names, ["portcullis", "envoy"], "{kind}");
    }
    let listed = named(&objs, "Deployment", "listed");
    assert_eq!(pod_spec(listed)["initContainers"].as_array().unwrap().len(), 2, "kind: List items too");
    for line in [
        "injected Deployment/web (app port 3000, its own Envoy config inline)",
        "injected DaemonSet/node-ui (app port 8081)",
        "injected CronJob/nightly (app port 9000, its own Envoy config inline)",
        "retargeted Service/web",
    ] {
        assert!(out.stderr.contains(line), "{line} not in\n{}", out.stderr);
    }
    // The summary goes to stderr only: stdout is YAML and nothing else.
    assert!(!out.stdout.contains("injected Deployment"));
}

#[test]
fn a_selecting_service_is_retargeted_and_the_rest_passes_through() {
    let out = inject(KINDS);
    let objs = objects(&out.stdout);
    let ports = named(&objs, "Service", "web")["spec"]["ports"].as_array().unwrap().clone();
    assert_eq!(ports[0]["targetPort"], 8080, "the port that reached the app (named web = 3000) reaches Envoy");
    assert_eq!(ports[1]["targetPort"], 6060, "a port that never reached the app is left alone");
    for untouched in [
        "# A Service that selects nothing inject touched: byte for byte.\napiVersion: v1\nkind: Service\nmetadata: { name: elsewhere }\n",
        "spec: { size: 3 }   # a comment that must survive\n",
    ] {
        assert!(out.stdout.contains(untouched), "not passed through: {untouched}");
    }
}

/// The Envoy sidecar's own config, inline (`--config-yaml`), and no second one (`-c`) to merge with.
fn inline_envoy_config(spec: &Value) -> String {
    let envoy = spec["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "envoy").unwrap();
    let args: Vec<&str> = envoy["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(!args.contains(&"-c"), "{args:?}");
    let at = args.iter().position(|a| *a == "--config-yaml").expect("--config-yaml");
    let mounts = envoy["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().all(|m| m["name"] != "envoy-config"), "the shared config is not mounted: {mounts:?}");
    args[at + 1].to_string()
}

/// `envoy --mode validate --config-yaml CONFIG` with the real Envoy, as the sidecar is started.
fn envoy_accepts_inline(config: &str) {
    let v = Command::new(portcullis_testkit::envoy::envoy_bin())
        .args(["--mode", "validate", "--log-level", "error", "--config-yaml", config])
        .output()
        .unwrap();
    assert!(v.status.success(), "envoy refused the inline config: {}", String::from_utf8_lossy(&v.stderr));
}

/// Where the inline config sends the app's traffic, and the catch-all route's context extensions.
fn upstream_and_route_options(config: &str) -> (i64, Value) {
    let doc: Value = serde_norway::from_str(config).unwrap();
    let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
    let upstream = clusters.iter().find(|c| c["name"] == "upstream").unwrap();
    let port = upstream["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        ["port_value"]
        .as_i64()
        .unwrap();
    let text = serde_json::to_string(&doc).unwrap();
    let routes: Vec<Value> = doc["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["filter_chains"].as_array().unwrap().iter())
        .flat_map(|fc| fc["filters"].as_array().unwrap().iter())
        .flat_map(|f| f["typed_config"]["route_config"]["virtual_hosts"].as_array().cloned().unwrap_or_default())
        .flat_map(|vh| vh["routes"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["match"]["prefix"] == "/" && r["route"]["cluster"] == "upstream")
        .collect();
    assert_eq!(routes.len(), 1, "one catch-all route to the app in {text}");
    let ext = routes[0]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["check_settings"]
        ["context_extensions"]
        .clone();
    (port, ext)
}

#[test]
fn a_non_default_port_gets_its_own_inline_envoy_config_that_envoy_accepts() {
    let input = KINDS.replacen(
        "metadata: { name: web }\nspec:\n  selector",
        "metadata: { name: web, annotations: { portcullis.io/require-any: \"ops,admins\" } }\nspec:\n  selector",
        1,
    );
    let out = inject(&input);
    let objs = objects(&out.stdout);
    assert!(objs.iter().all(|o| o["kind"] != "ConfigMap"), "no per-workload ConfigMap");
    let config = inline_envoy_config(pod_spec(named(&objs, "Deployment", "web")));
    let (port, ext) = upstream_and_route_options(&config);
    assert_eq!(port, 3000, "upstream is the app's port");
    assert_eq!(ext, serde_json::json!({ "portcullis.require_any": "ops,admins" }), "the route option reaches Envoy");
    envoy_accepts_inline(&config);
    // The default port keeps the shared config file.
    let node_ui = pod_spec(named(&objs, "DaemonSet", "node-ui"));
    let envoy = node_ui["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "envoy").unwrap();
    assert_eq!(envoy["args"][0], "-c");
}

#[test]
fn injecting_twice_equals_once_and_uninject_is_exact() {
    for input in [KINDS, BARE_APP] {
        let once = inject(input).stdout;
        let twice = inject(&once);
        assert_eq!(twice.stdout, once, "inject is idempotent");
        assert!(twice.stderr.contains("(already injected)"));
        let back = portcullis(&["uninject", "-"], &once);
        assert_eq!(objects(&back.stdout), objects(input), "uninject removes exactly what inject added");
        assert!(back.stderr.contains("uninjected"));
        assert!(!back.stdout.contains("--config-yaml") && !back.stdout.contains("inject-status"));
    }
}

#[test]
fn a_disabled_workload_is_left_alone() {
    let input = KINDS.replacen(
        "metadata: { name: lone, labels: { app: lone } }",
        "metadata: { name: lone, labels: { app: lone }, annotations: { portcullis.io/inject: disabled } }",
        1,
    );
    let out = inject(&input);
    assert!(out
        .stdout
        .contains("portcullis.io/inject: disabled } }\nspec:\n  containers: [{ name: app, image: nginx:1.27 }]\n"));
    assert!(out.stderr.contains("skipped Pod/lone (portcullis.io/inject: disabled)"), "{}", out.stderr);
}

#[test]
fn works_as_the_kubectl_plugin_and_reads_files() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-portcullis");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_portcullis"), &plugin).unwrap();
    let file = Path::new(ROOT).join("k8s/overlays/sidecar/app.yaml");
    let via_plugin = run_as(&plugin, &["inject", "-f", file.to_str().unwrap()], "");
    assert_eq!(via_plugin.stdout, inject(BARE_APP).stdout);
    let help = Command::new(&plugin).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("kubectl portcullis"));
    // The real kubectl finds it on the PATH (plugins need no cluster).
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    match Command::new("kubectl").env("PATH", &path).args(["portcullis", "inject", "-f"]).arg(&file).output() {
        Ok(out) => {
            assert!(out.status.success(), "kubectl portcullis: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8(out.stdout).unwrap(), via_plugin.stdout);
        }
        Err(e) => eprintln!("NOTE: kubectl not runnable ({e}): `kubectl portcullis` checked without kubectl"),
    }
}

/// The README's one-line injection, on what `kubectl get deploy web -o yaml` prints (server-set fields and
/// a status): the output is a valid Deployment, protected, on the app's port, with the pod's route option.
#[test]
fn the_readme_one_liner_injects_kubectl_get_output() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    assert!(readme.contains("kubectl get deploy web -o yaml | portcullis inject - | kubectl apply -f -"));
    let got = include_str!("../fixtures/inject/kubectl-get-deploy.yaml");
    let out = inject(got);
    // Read as a YAML 1.1 tool reads it: the timestamps stay strings.
    kubernetes_validate_yaml(&out.stdout);
    let objs = objects(&out.stdout);
    let web = named(&objs, "Deployment", "web");
    assert_eq!(web["status"]["readyReplicas"], 2, "the rest of the object is kept");
    let config = inline_envoy_config(pod_spec(web));
    let (port, ext) = upstream_and_route_options(&config);
    assert_eq!((port, ext), (3000, serde_json::json!({ "portcullis.require_any": "ops" })));
    assert!(out.stderr.contains("injected Deployment/web (app port 3000"), "{}", out.stderr);
}

#[test]
fn a_malformed_workload_fails_without_output() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["inject", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: x }\nspec: { template: 3 }\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no half-written stream on stdout");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Deployment/x"));
}

/// A self-signed certificate for `localhost` (the real `openssl` CLI), written to `dir/tls.{crt,key}`.
fn self_signed(dir: &Path) -> Vec<u8> {
    new_pair(dir);
    // Key first, then the certificate, each by rename, as a Secret update lands.
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    std::fs::read(dir.join("tls.crt")).unwrap()
}

/// A new certificate and key in `dir/tls.{crt,key}.new`.
fn new_pair(dir: &Path) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
        // An end-entity certificate: webpki refuses a CA certificate as a server certificate.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("tls.key.new"))
        .arg("-out")
        .arg(dir.join("tls.crt.new"))
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
}

fn trusting(ca: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
        .build()
        .unwrap()
}

/// `portcullis webhook` on a free port with a self-signed certificate, as the API server reaches it.
struct Webhook {
    url: String,
    client: reqwest::Client,
    first_cert: Vec<u8>,
    dir: tempfile::TempDir,
    child: tokio::process::Child,
}

impl Webhook {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let first_cert = self_signed(dir.path());
        let port = portcullis_testkit::free_port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["webhook", "--listen", &format!("127.0.0.1:{port}"), "--tls-cert"])
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("webhook.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("https://localhost:{port}");
        let client = trusting(&first_cert);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Err(e) = client.get(format!("{url}/healthz")).send().await {
            assert!(std::time::Instant::now() < deadline, "webhook did not come up: {e:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Self { url, client, first_cert, dir, child }
    }

    async fn review(&self, body: impl Into<reqwest::Body>) -> Value {
        let r = self.client.post(format!("{}/mutate", self.url)).body(body).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.json().await.unwrap()
    }

    /// `portcullis_webhook_reviews_total` by outcome, from the webhook's own `/metrics`.
    async fn reviews(&self) -> std::collections::BTreeMap<String, f64> {
        let text = self.client.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("portcullis_webhook_reviews_total{outcome=\""))
            .filter_map(|l| l.split_once("\"} "))
            .map(|(o, n)| (o.to_string(), n.parse().unwrap()))
            .collect()
    }
}

/// The JSON patch of an answer, decoded.
fn patch_of(answer: &Value) -> Option<Vec<Value>> {
    use base64::Engine;
    let p = answer["response"].get("patch")?.as_str().unwrap();
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    Some(serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(p).unwrap()).unwrap())
}

/// Applies the patch as the API server does (RFC 6902): only `add` of an object member is expected, and its
/// parent must exist.
fn apply(mut obj: Value, ops: &[Value]) -> Value {
    for op in ops {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().unwrap();
        let (parent, member) = path.rsplit_once('/').unwrap();
        let parent = obj.pointer_mut(parent).unwrap_or_else(|| panic!("{path}: no parent"));
        parent.as_object_mut().unwrap().insert(member.replace("~1", "/").replace("~0", "~"), op["value"].clone());
    }
    obj
}

/// The webhook over TLS, as the API server calls it: a Pod gets a JSON patch, garbage is allowed without
/// one, and a renewed certificate is served without a restart.
#[tokio::test]
async fn the_webhook_serves_admission_reviews_over_tls_and_reloads_its_certificate() {
    let mut hook = Webhook::start().await;
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": { "uid": "u-1", "resource": { "group": "", "version": "v1", "resource": "pods" },
                     "operation": "CREATE", "namespace": "shop",
                     "object": { "metadata": { "name": "p" }, "spec": { "containers": [{ "name": "a", "image": "x" }] } } }
    });
    let answer = hook.review(review.to_string()).await;
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let garbage = hook.review("{oops").await;
    assert_eq!(garbage["response"]["allowed"], true);
    assert!(garbage["response"].get("patch").is_none());

    let url = hook.url.clone();
    // Half a renewal (the new key beside the old certificate) is refused: the old pair keeps serving.
    new_pair(hook.dir.path());
    std::fs::rename(hook.dir.path().join("tls.key.new"), hook.dir.path().join("tls.key")).unwrap();
    let r = trusting(&hook.first_cert).get(format!("{url}/healthz")).send().await;
    assert!(r.expect("the old pair serves while the key does not match").status().is_success());
    let second = self_signed(hook.dir.path());
    assert_ne!(hook.first_cert, second);
    let renewed = trusting(&second);
    let r = renewed.get(format!("{url}/healthz")).send().await.expect("the renewed certificate is served");
    assert!(r.status().is_success());
    assert!(trusting(&hook.first_cert).get(format!("{url}/healthz")).send().await.is_err(), "the old one is not");
    hook.child.kill().await.unwrap();
}

/// In a labelled namespace, a pod on another app port and a pod with route options get the sidecars with
/// their own Envoy config inline (a webhook cannot create a ConfigMap): the patched Pod validates, the real
/// Envoy accepts the config, it routes to the app's port and carries the route options, and it is the pod
/// `portcullis inject` makes. A reinvocation is left alone; what cannot be protected is admitted with a
/// warning and counted.
#[tokio::test]
async fn the_webhook_protects_pods_on_another_port_or_with_route_options_as_inject_does() {
    let hook = Webhook::start().await;
    let before = hook.reviews().await;
    let options = serde_json::json!({ "portcullis.require_any": "ops,admins", "portcullis.bearer": "allow" });
    for (fixture, port, ext) in [(REVIEW_APP_PORT, 3000, Value::Null), (REVIEW_ROUTE_OPTIONS, 8081, options)] {
        let review: Value = serde_json::from_str(fixture).unwrap();
        let answer = hook.review(fixture).await;
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("warnings").is_none(), "{answer}");
        let ops = patch_of(&answer).expect("a JSON patch");
        let pod = apply(review["request"]["object"].clone(), &ops);
        kubernetes_validate(std::slice::from_ref(&pod));
        let config = inline_envoy_config(&pod["spec"]);
        let (upstream, route_options) = upstream_and_route_options(&config);
        assert_eq!(upstream, port, "Envoy sends the app's traffic to its port");
        assert_eq!(route_options, ext, "the annotations' route options reach ext_authz");
        envoy_accepts_inline(&config);
        // Linux takes up to 128 KiB per argument; the pod object should stay small.
        assert!(config.len() < 16 * 1024, "inline config of {} bytes", config.len());
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert!(volumes.iter().any(|v| v["name"] == "kube-api-access-x7k2p"), "the pod's own volumes are kept");

        // One mechanism: the pod `portcullis inject` writes for the same object.
        let injected = &objects(&inject(&serde_norway::to_string(&review["request"]["object"]).unwrap()).stdout)[0];
        for field in ["/metadata/annotations", "/metadata/labels", "/spec/initContainers", "/spec/volumes"] {
            assert_eq!(pod.pointer(field), injected.pointer(field), "{field} differs from portcullis inject's");
        }

        // The API server calls again after other webhooks (reinvocationPolicy IfNeeded): never twice.
        let mut again = review.clone();
        again["request"]["object"] = pod;
        let again = hook.review(again.to_string()).await;
        assert_eq!(again["response"]["allowed"], true);
        assert!(again["response"].get("patch").is_none(), "{again}");
    }

    // A pod it cannot protect (a container already named like a sidecar) and a malformed review: admitted,
    // no patch, a warning the user sees.
    let mut clash: Value = serde_json::from_str(REVIEW_APP_PORT).unwrap();
    clash["request"]["object"]["spec"]["containers"][0]["name"] = "envoy".into();
    let mut malformed: Value = serde_json::from_str(REVIEW_APP_PORT).unwrap();
    malformed["request"]["object"]["spec"]["containers"] = "not a list".into();
    for review in [clash, malformed] {
        let answer = hook.review(review.to_string()).await;
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none(), "{answer}");
        let warning = answer["response"]["warnings"][0].as_str().unwrap();
        assert!(warning.contains("not protected"), "{warning}");
    }

    // The operator's side: a log line per unprotected pod, naming it (written by the log thread, so it may
    // land just after the answer).
    let path = hook.dir.path().join("webhook.log");
    let count =
        || std::fs::read_to_string(&path).unwrap_or_default().matches("WITHOUT the portcullis sidecars").count();
    crate::harness::eventually(std::time::Duration::from_secs(5), async || count() >= 2).await;
    let log = std::fs::read_to_string(&path).unwrap();
    let unprotected: Vec<&str> = log.lines().filter(|l| l.contains("WITHOUT the portcullis sidecars")).collect();
    assert_eq!(unprotected.len(), 2, "{log}");
    assert!(unprotected[0].contains(r#""outcome":"not_injectable""#) && unprotected[0].contains("web-7c9d8b6f5d-"));
    assert!(unprotected[1].contains(r#""outcome":"malformed""#) && unprotected[1].contains(r#""namespace":"shop""#));

    let after = hook.reviews().await;
    let grew = |o: &str| after.get(o).copied().unwrap_or(0.0) - before.get(o).copied().unwrap_or(0.0);
    assert_eq!(grew("injected"), 2.0, "{after:?}");
    assert_eq!(grew("already_injected"), 2.0, "{after:?}");
    assert_eq!(grew("not_injectable"), 1.0, "{after:?}");
    assert_eq!(grew("malformed"), 1.0, "{after:?}");
    assert!(before.contains_key("not_injectable"), "every outcome is a series from the start: {before:?}");
}

/// Which Pods reach the webhook is the shipped configuration's business: labelled namespaces only, never a
/// pod labelled disabled, Pod CREATE only, and a webhook that is down never blocks a pod.
#[test]
fn the_shipped_webhook_configuration_selects_labelled_namespaces() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("k8s/webhook/webhook.yaml")).unwrap();
    let cfg = &objects(&text)[0];
    let hook = &cfg["webhooks"][0];
    assert_eq!(hook["namespaceSelector"]["matchLabels"]["portcullis.io/inject"], "enabled");
    assert_eq!(hook["objectSelector"]["matchExpressions"][0]["values"][0], "disabled");
    assert_eq!(hook["rules"][0]["resources"][0], "pods");
    assert_eq!(hook["rules"][0]["operations"], serde_json::json!(["CREATE"]));
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["clientConfig"]["service"]["path"], "/mutate");
    assert!(hook["timeoutSeconds"].as_i64().unwrap() <= 10);
}
