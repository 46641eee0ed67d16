//! The mutating admission webhook's decision (AdmissionReview v1, JSON in, JSON out): the same injection as
//! `portcullis inject`, as a JSON patch of the Pod. Anything it does not understand, an already-injected
//! pod, or a pod that would need its own Envoy ConfigMap (which a webhook cannot create) is allowed with no
//! patch: the webhook never blocks a pod and never injects twice. Which namespaces reach it is the
//! MutatingWebhookConfiguration's `namespaceSelector` (`portcullis.io/inject=enabled`).

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::pod::{self, Outcome};

/// The AdmissionReview v1 answer to `body`.
pub fn review(body: &[u8]) -> Value {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let uid = request.pointer("/request/uid").and_then(Value::as_str).unwrap_or("").to_string();
    let (patch, warning) = match decide(&request) {
        Ok(p) => (p, None),
        Err(w) => (None, Some(w)),
    };
    let mut response = json!({ "uid": uid, "allowed": true });
    if let Some(ops) = patch {
        response["patchType"] = "JSONPatch".into();
        response["patch"] = base64::engine::general_purpose::STANDARD.encode(ops.to_string()).into();
    }
    if let Some(w) = warning {
        response["warnings"] = json!([format!("portcullis: not injected: {w}")]);
    }
    json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response })
}

/// The JSON patch for a Pod CREATE, `None` when nothing is to be done, `Err` (a warning) when the request
/// is not understood.
fn decide(review: &Value) -> Result<Option<Value>, String> {
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err("not an AdmissionReview".into());
    }
    let req = review.get("request").ok_or("no request")?;
    let resource = req.pointer("/resource/resource").and_then(Value::as_str);
    if resource != Some("pods") || req.get("operation").and_then(Value::as_str) != Some("CREATE") {
        return Ok(None);
    }
    let obj = req.get("object").ok_or("no object")?;
    let pod: Pod = serde_json::from_value(obj.clone()).map_err(|e| format!("pod: {e}"))?;
    let workload = pod.metadata.clone();
    let mut meta = pod.metadata.clone();
    let mut spec = pod.spec.clone().ok_or("pod without spec")?;
    let injected = match pod::inject_pod(&workload, &mut meta, &mut spec).map_err(|e| e.to_string())? {
        Outcome::Disabled | Outcome::Already => return Ok(None),
        Outcome::Injected(i) => i,
    };
    if injected.envoy_config.is_some() {
        return Err(format!(
            "app port {} or route options need their own Envoy config: use `portcullis inject`",
            injected.app_port
        ));
    }
    let before = serde_json::to_value(&pod).map_err(|e| e.to_string())?;
    let after = serde_json::to_value(Pod { metadata: meta, spec: Some(spec), status: pod.status.clone() })
        .map_err(|e| e.to_string())?;
    let mut ops = Vec::new();
    for path in [
        "/metadata/labels",
        "/metadata/annotations",
        "/spec/initContainers",
        "/spec/volumes",
        "/spec/topologySpreadConstraints",
    ] {
        let new = after.pointer(path);
        if new != before.pointer(path) {
            if let Some(v) = new {
                // `add` of an object member replaces it when present.
                ops.push(json!({ "op": "add", "path": path, "value": v }));
            }
        }
    }
    Ok((!ops.is_empty()).then_some(Value::Array(ops)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(pod: Value) -> Value {
        let r = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": "shop",
                "operation": "CREATE",
                "object": pod,
            }
        });
        review(r.to_string().as_bytes())
    }

    fn patch(answer: &Value) -> Option<Value> {
        let p = answer.pointer("/response/patch")?.as_str()?;
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(p).ok()?).ok()
    }

    fn app_pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "generateName": "web-", "labels": { "app": "web" } },
            "spec": { "containers": [{ "name": "app", "image": "nginx:1.27", "ports": [{ "containerPort": 8081 }] }] }
        })
    }

    #[test]
    fn a_pod_gets_the_sidecars_as_a_json_patch() {
        let answer = review_of(app_pod());
        assert_eq!(answer["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        let ops = patch(&answer).unwrap();
        let init = ops.as_array().unwrap().iter().find(|o| o["path"] == "/spec/initContainers").unwrap();
        let names: Vec<_> = init["value"].as_array().unwrap().iter().map(|c| c["name"].clone()).collect();
        assert_eq!(names, ["portcullis", "envoy"]);
        let ann = ops.as_array().unwrap().iter().find(|o| o["path"] == "/metadata/annotations").unwrap();
        assert_eq!(ann["value"][pod::STATUS], pod::STATUS_VALUE);
        // The patched pod, fed back (a reinvocation), is left alone: never twice.
        let mut patched = app_pod();
        for op in ops.as_array().unwrap() {
            let path = op["path"].as_str().unwrap();
            let (parent, member) = path.rsplit_once('/').unwrap();
            patched.pointer_mut(parent).unwrap()[member] = op["value"].clone();
        }
        let again = review_of(patched);
        assert_eq!(again["response"]["allowed"], true);
        assert!(again["response"].get("patch").is_none(), "{again}");
    }

    #[test]
    fn disabled_other_ports_and_garbage_are_allowed_without_a_patch() {
        let mut disabled = app_pod();
        disabled["metadata"]["annotations"] = json!({ "portcullis.io/inject": "disabled" });
        let mut port = app_pod();
        port["spec"]["containers"][0]["ports"][0]["containerPort"] = 3000.into();
        for answer in [
            review_of(disabled),
            review_of(port.clone()),
            review_of(json!({ "spec": "not a pod spec" })),
            review(b"{not json"),
            review(br#"{"kind":"AdmissionReview","request":{"uid":"u","resource":{"resource":"services"},"operation":"CREATE"}}"#),
        ] {
            assert_eq!(answer["response"]["allowed"], true, "{answer}");
            assert!(answer["response"].get("patch").is_none(), "{answer}");
        }
        let w = review_of(port);
        assert!(w["response"]["warnings"][0].as_str().unwrap().contains("app port 3000"));
    }
}
