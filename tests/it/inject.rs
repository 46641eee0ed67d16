//! `portcullis inject` / `uninject` (issue 15), run as the binary a user runs: YAML on stdout, a summary on
//! stderr. Output is checked by `kubernetes-validate` and the real Envoy, never only by our own parser.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const KINDS: &str = include_str!("../fixtures/inject/kinds.yaml");
const BARE_APP: &str = include_str!("../../k8s/overlays/sidecar/app.yaml");
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

/// `kubernetes-validate --strict` (as scripts/validate-manifests.sh runs it) on the built-in objects.
fn kubernetes_validate(objs: &[Value]) {
    let bin = PathBuf::from(ROOT).join(".venv/bin/kubernetes-validate");
    assert!(bin.is_file(), "{} missing: run scripts/ensure-k8s-tools.sh", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("builtin.yaml");
    let builtin: Vec<String> = objs
        .iter()
        .filter(|o| !o["apiVersion"].as_str().unwrap_or("").contains("example.com"))
        .map(|o| serde_norway::to_string(o).unwrap())
        .collect();
    std::fs::write(&file, builtin.join("---\n")).unwrap();
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
        "injected Deployment/web (app port 3000)",
        "injected DaemonSet/node-ui (app port 8081)",
        "injected CronJob/nightly (app port 9000)",
        "added ConfigMap/web-portcullis-envoy",
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

#[test]
fn a_non_default_port_gets_its_own_envoy_config_that_envoy_accepts() {
    let input = KINDS.replacen(
        "metadata: { name: web }\nspec:\n  selector",
        "metadata: { name: web, annotations: { portcullis.io/require-any: \"ops,admins\" } }\nspec:\n  selector",
        1,
    );
    let out = inject(&input);
    let objs = objects(&out.stdout);
    let cm = named(&objs, "ConfigMap", "web-portcullis-envoy");
    let config = cm["data"]["envoy.yaml"].as_str().unwrap();
    assert!(config.contains("port_value: 3000"), "upstream is the app's port");
    assert!(config.contains("portcullis.require_any: ops,admins"), "the route option reaches context_extensions");
    let web = named(&objs, "Deployment", "web");
    let envoy_cfg = pod_spec(web)["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "envoy-config").unwrap();
    assert_eq!(envoy_cfg["configMap"]["name"], "web-portcullis-envoy");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    std::fs::write(&file, config).unwrap();
    let v = Command::new(portcullis_testkit::envoy::envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(v.status.success(), "envoy refused the rendered config: {}", String::from_utf8_lossy(&v.stderr));
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
        assert!(!back.stdout.contains("portcullis-envoy") && !back.stdout.contains("inject-status"));
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
    // Key first, then the certificate, each by rename, as a Secret update lands.
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    std::fs::read(dir.join("tls.crt")).unwrap()
}

fn trusting(ca: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
        .build()
        .unwrap()
}

/// The webhook over TLS, as the API server calls it: a Pod gets a JSON patch, garbage is allowed without
/// one, and a renewed certificate is served without a restart.
#[tokio::test]
async fn the_webhook_serves_admission_reviews_over_tls_and_reloads_its_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let first = self_signed(dir.path());
    let port = portcullis_testkit::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["webhook", "--listen", &format!("127.0.0.1:{port}"), "--tls-cert"])
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("https://localhost:{port}");
    let client = trusting(&first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Err(e) = client.get(format!("{url}/healthz")).send().await {
        assert!(std::time::Instant::now() < deadline, "webhook did not come up: {e:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": { "uid": "u-1", "resource": { "group": "", "version": "v1", "resource": "pods" },
                     "operation": "CREATE", "namespace": "shop",
                     "object": { "metadata": { "name": "p" }, "spec": { "containers": [{ "name": "a", "image": "x" }] } } }
    });
    let answer: Value = client.post(format!("{url}/mutate")).json(&review).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let garbage: Value = client.post(format!("{url}/mutate")).body("{oops").send().await.unwrap().json().await.unwrap();
    assert_eq!(garbage["response"]["allowed"], true);
    assert!(garbage["response"].get("patch").is_none());

    let second = self_signed(dir.path());
    assert_ne!(first, second);
    let renewed = trusting(&second);
    let r = renewed.get(format!("{url}/healthz")).send().await.expect("the renewed certificate is served");
    assert!(r.status().is_success());
    assert!(trusting(&first).get(format!("{url}/healthz")).send().await.is_err(), "the old one is not");
    child.kill().await.unwrap();
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
