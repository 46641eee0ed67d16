//! The mutating admission webhook's decision (AdmissionReview v1, JSON in, JSON out): the same injection as
//! `portcullis inject`, as a JSON patch of the Pod (a pod on another app port, or with route options, gets
//! its own Envoy config inline in the Envoy sidecar's args, as inject writes it). It never blocks a pod and
//! never injects twice: an already-injected or disabled pod, anything it does not understand, and a pod it
//! cannot inject are allowed with no patch; the last two with a warning in the response, a log line and
//! `portcullis_webhook_reviews_total{outcome}`. Which namespaces reach it is the
//! MutatingWebhookConfiguration's `namespaceSelector` (`portcullis.io/inject=enabled`).

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::pod::{self, Outcome};

/// What the webhook did with one review: the `outcome` label, a bounded set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reviewed {
    /// The sidecars were added (a JSON patch).
    Injected,
    /// The pod already carries them (`portcullis.io/inject-status`), e.g. a reinvocation.
    AlreadyInjected,
    /// `portcullis.io/inject: disabled`.
    Disabled,
    /// Not a Pod CREATE: nothing to do.
    Ignored,
    /// A pod it cannot inject (a bad `portcullis.io/app-port`, a container or volume of the sidecars'
    /// name): admitted unprotected, with a warning.
    NotInjectable,
    /// Not an AdmissionReview it understands: admitted, with a warning.
    Malformed,
}

impl Reviewed {
    pub const ALL: [Reviewed; 6] = [
        Reviewed::Injected,
        Reviewed::AlreadyInjected,
        Reviewed::Disabled,
        Reviewed::Ignored,
        Reviewed::NotInjectable,
        Reviewed::Malformed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reviewed::Injected => "injected",
            Reviewed::AlreadyInjected => "already_injected",
            Reviewed::Disabled => "disabled",
            Reviewed::Ignored => "ignored",
            Reviewed::NotInjectable => "not_injectable",
            Reviewed::Malformed => "malformed",
        }
    }
}

/// The AdmissionReview v1 answer to `body`; counts and, when the pod stays unprotected, logs it.
pub fn review(body: &[u8]) -> Value {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let uid = request.pointer("/request/uid").and_then(Value::as_str).unwrap_or("").to_string();
    let (outcome, patch, why) = match decide(&request) {
        Ok((outcome, patch)) => (outcome, patch, None),
        Err((outcome, why)) => (outcome, None, Some(why)),
    };
    metrics::counter!("portcullis_webhook_reviews_total", "outcome" => outcome.label()).increment(1);
    let mut response = json!({ "uid": uid, "allowed": true });
    if let Some(ops) = patch {
        response["patchType"] = "JSONPatch".into();
        response["patch"] = base64::engine::general_purpose::STANDARD.encode(ops.to_string()).into();
    }
    if let Some(why) = why {
        let req = request.get("request");
        let at = |p: &str| req.and_then(|r| r.pointer(p)).and_then(Value::as_str).unwrap_or("");
        let name = match at("/object/metadata/name") {
            "" => at("/object/metadata/generateName"),
            n => n,
        };
        tracing::warn!(
            outcome = outcome.label(),
            namespace = at("/namespace"),
            pod = name,
            reason = %why,
            "webhook: pod admitted WITHOUT the portcullis sidecars"
        );
        response["warnings"] = json!([format!("portcullis: not injected, this pod is not protected: {why}")]);
    }
    json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response })
}

type Decision = Result<(Reviewed, Option<Value>), (Reviewed, String)>;

/// The JSON patch for a Pod CREATE; `Err` (outcome and warning) when the pod stays unprotected.
fn decide(review: &Value) -> Decision {
    let malformed = |why: &str| (Reviewed::Malformed, why.to_string());
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(malformed("not an AdmissionReview"));
    }
    let req = review.get("request").ok_or_else(|| malformed("no request"))?;
    let resource = req.pointer("/resource/resource").and_then(Value::as_str);
    if resource != Some("pods") || req.get("operation").and_then(Value::as_str) != Some("CREATE") {
        return Ok((Reviewed::Ignored, None));
    }
    let obj = req.get("object").ok_or_else(|| malformed("no object"))?;
    let pod: Pod = serde_json::from_value(obj.clone()).map_err(|e| malformed(&format!("pod: {e}")))?;
    let workload = pod.metadata.clone();
    let mut meta = pod.metadata.clone();
    let mut spec = pod.spec.clone().ok_or_else(|| malformed("pod without spec"))?;
    match pod::inject_pod(&workload, &mut meta, &mut spec) {
        Ok(Outcome::Disabled) => return Ok((Reviewed::Disabled, None)),
        Ok(Outcome::Already) => return Ok((Reviewed::AlreadyInjected, None)),
        Ok(Outcome::Injected(_)) => {}
        Err(e) => return Err((Reviewed::NotInjectable, e.to_string())),
    }
    let internal = |e: serde_json::Error| (Reviewed::NotInjectable, e.to_string());
    let before = serde_json::to_value(&pod).map_err(internal)?;
    let after =
        serde_json::to_value(Pod { metadata: meta, spec: Some(spec), status: pod.status.clone() }).map_err(internal)?;
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
    Ok((Reviewed::Injected, Some(Value::Array(ops))))
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
    fn another_app_port_gets_its_envoy_config_inline() {
        let mut port = app_pod();
        port["spec"]["containers"][0]["ports"][0]["containerPort"] = 3000.into();
        let answer = review_of(port);
        assert!(answer["response"].get("warnings").is_none(), "{answer}");
        let ops = patch(&answer).unwrap();
        let init = ops.as_array().unwrap().iter().find(|o| o["path"] == "/spec/initContainers").unwrap();
        let envoy = init["value"].as_array().unwrap().iter().find(|c| c["name"] == "envoy").unwrap();
        let args: Vec<&str> = envoy["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        let at = args.iter().position(|a| *a == "--config-yaml").unwrap();
        assert!(args[at + 1].contains("port_value: 3000"));
        assert!(!args.contains(&"-c"), "no second bootstrap to merge with");
    }

    #[test]
    fn disabled_unprotectable_and_garbage_are_allowed_without_a_patch() {
        let mut disabled = app_pod();
        disabled["metadata"]["annotations"] = json!({ "portcullis.io/inject": "disabled" });
        let mut clash = app_pod();
        clash["spec"]["containers"][0]["name"] = "envoy".into();
        let mut bad_port = app_pod();
        bad_port["metadata"]["annotations"] = json!({ "portcullis.io/app-port": "nope" });
        for (answer, warned) in [
            (review_of(disabled), false),
            (review_of(clash), true),
            (review_of(bad_port), true),
            (review_of(json!({ "spec": "not a pod spec" })), true),
            (review(b"{not json"), true),
            (review(br#"{"kind":"AdmissionReview","request":{"uid":"u","resource":{"resource":"services"},"operation":"CREATE"}}"#), false),
        ] {
            assert_eq!(answer["response"]["allowed"], true, "{answer}");
            assert!(answer["response"].get("patch").is_none(), "{answer}");
            assert_eq!(answer["response"].get("warnings").is_some(), warned, "{answer}");
        }
    }
}
