//! Adds the sidecars to one pod template, and removes exactly them. The sidecars are read from the shipped
//! overlay's patch (`k8s/overlays/sidecar/sidecar-patch.yaml`), so `inject` and `kubectl apply -k` cannot
//! drift apart.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{envoy, InjectError};

const PATCH: &str = include_str!("../../k8s/overlays/sidecar/sidecar-patch.yaml");

pub const STATUS: &str = "portcullis.io/inject-status";
pub const INJECT: &str = "portcullis.io/inject";
pub const APP_PORT: &str = "portcullis.io/app-port";
/// What inject added beyond the sidecars and volumes (labels, spread constraints), so uninject takes
/// back only that.
const ADDED: &str = "portcullis.io/injected-extras";
pub const STATUS_VALUE: &str = "injected";
const ENVOY_VOLUME: &str = "envoy-config";
const ENVOY_CONTAINER: &str = "envoy";

/// Annotation suffix -> context extension key (DESIGN.md "Route options").
const ROUTE_OPTIONS: [(&str, &str); 6] = [
    ("require-any", "portcullis.require_any"),
    ("audience", "portcullis.audience"),
    ("bearer", "portcullis.bearer"),
    ("dry-run", "portcullis.dry_run"),
    ("security-headers", "portcullis.security_headers"),
    ("delegate", "portcullis.delegate"),
];

/// The overlay's pod template (labels + spec), parsed once per call; the file is in the binary.
fn overlay() -> Result<(BTreeMap<String, String>, PodSpec), InjectError> {
    let d: Deployment = super::stream::from_yaml(PATCH)
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
        .map_err(InjectError::Overlay)?;
    let tpl = d.spec.map(|s| s.template).ok_or_else(|| InjectError::Overlay("no spec.template".into()))?;
    let labels = tpl.metadata.and_then(|m| m.labels).unwrap_or_default();
    let spec = tpl.spec.ok_or_else(|| InjectError::Overlay("no template spec".into()))?;
    Ok((labels, spec))
}

/// What `inject_pod` did: the app port, and whether the pod carries its own Envoy config (inline) because
/// the shared one (port 8081, no route options) does not fit.
pub struct Injected {
    pub app_port: i32,
    pub own_envoy_config: bool,
    pub labels: BTreeMap<String, String>,
}

pub enum Outcome {
    Injected(Injected),
    Disabled,
    Already,
}

/// Annotations of the workload, overridden by the pod template's.
fn annotations(workload: &ObjectMeta, pod: &ObjectMeta) -> BTreeMap<String, String> {
    let mut a = workload.annotations.clone().unwrap_or_default();
    a.extend(pod.annotations.clone().unwrap_or_default());
    a
}

/// The app's port: `portcullis.io/app-port` (a number or a container port name), else the first
/// container's first port, else the port the shipped envoy.yaml uses.
fn app_port(ann: &BTreeMap<String, String>, spec: &PodSpec) -> Result<i32, InjectError> {
    let ports: Vec<_> = spec.containers.iter().flat_map(|c| c.ports.iter().flatten()).collect();
    if let Some(v) = ann.get(APP_PORT) {
        if let Ok(n) = v.parse::<i32>() {
            if (1..=65535).contains(&n) {
                return Ok(n);
            }
        }
        return ports
            .iter()
            .find(|p| p.name.as_deref() == Some(v.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| InjectError::AppPort(v.clone()));
    }
    Ok(spec
        .containers
        .first()
        .and_then(|c| c.ports.as_ref())
        .and_then(|p| p.first())
        .map_or(envoy::DEFAULT_APP_PORT, |p| p.container_port))
}

pub fn route_options(ann: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    ROUTE_OPTIONS
        .iter()
        .filter_map(|(a, key)| ann.get(&format!("portcullis.io/{a}")).map(|v| (key.to_string(), v.clone())))
        .collect()
}

/// Gives the Envoy sidecar its own config inline (`--config-yaml`, the whole bootstrap, instead of `-c` on
/// the shared ConfigMap's file) and drops the then unused mount and volume. Inline, because a webhook can
/// only patch the pod, never create a ConfigMap beside it: `inject` and the webhook share this one form.
fn inline_envoy_config(side: &mut PodSpec, config: String) -> Result<(), InjectError> {
    let envoy = side
        .init_containers
        .iter_mut()
        .flatten()
        .find(|c| c.name == ENVOY_CONTAINER)
        .ok_or_else(|| InjectError::Overlay(format!("no {ENVOY_CONTAINER} sidecar")))?;
    let args = envoy.args.get_or_insert_with(Vec::new);
    let at = args
        .iter()
        .position(|a| a == "-c")
        .filter(|i| i + 1 < args.len())
        .ok_or_else(|| InjectError::Overlay(format!("the {ENVOY_CONTAINER} sidecar has no `-c FILE` argument")))?;
    args.splice(at..at + 2, ["--config-yaml".to_string(), config]);
    if let Some(m) = envoy.volume_mounts.as_mut() {
        m.retain(|m| m.name != ENVOY_VOLUME);
    }
    if let Some(v) = side.volumes.as_mut() {
        v.retain(|v| v.name != ENVOY_VOLUME);
    }
    Ok(())
}

pub fn inject_pod(workload: &ObjectMeta, pod: &mut ObjectMeta, spec: &mut PodSpec) -> Result<Outcome, InjectError> {
    let ann = annotations(workload, pod);
    if ann.get(INJECT).is_some_and(|v| v == "disabled") {
        return Ok(Outcome::Disabled);
    }
    if pod.annotations.as_ref().is_some_and(|a| a.contains_key(STATUS)) {
        return Ok(Outcome::Already);
    }
    let (labels, mut side) = overlay()?;
    for c in side.init_containers.iter().flatten() {
        let clash = spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|o| o.name == c.name);
        if clash {
            return Err(InjectError::Clash(format!("container {}", c.name)));
        }
    }
    for v in side.volumes.iter().flatten() {
        if spec.volumes.iter().flatten().any(|o| o.name == v.name) {
            return Err(InjectError::Clash(format!("volume {}", v.name)));
        }
    }
    let app_port = app_port(&ann, spec)?;
    let options = route_options(&ann);
    let own_envoy_config = app_port != envoy::DEFAULT_APP_PORT || !options.is_empty();
    if own_envoy_config {
        inline_envoy_config(&mut side, envoy::config_for(app_port, &options).map_err(InjectError::Overlay)?)?;
    }

    let mut extras = Vec::new();
    let pod_labels = pod.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in &labels {
        if !pod_labels.contains_key(k) {
            pod_labels.insert(k.clone(), v.clone());
            extras.push(format!("label:{k}"));
        }
    }
    if spec.topology_spread_constraints.as_ref().is_none_or(Vec::is_empty) {
        spec.topology_spread_constraints = side.topology_spread_constraints.take();
        extras.push("topologySpreadConstraints".to_string());
    }
    spec.init_containers.get_or_insert_with(Vec::new).extend(side.init_containers.take().unwrap_or_default());
    spec.volumes.get_or_insert_with(Vec::new).extend(side.volumes.take().unwrap_or_default());
    let a = pod.annotations.get_or_insert_with(BTreeMap::new);
    a.insert(STATUS.to_string(), STATUS_VALUE.to_string());
    if !extras.is_empty() {
        a.insert(ADDED.to_string(), extras.join(","));
    }
    Ok(Outcome::Injected(Injected { app_port, own_envoy_config, labels: pod_labels.clone() }))
}

/// Removes what `inject_pod` added; false when the pod was not injected.
pub fn uninject_pod(pod: &mut ObjectMeta, spec: &mut PodSpec) -> Result<bool, InjectError> {
    let Some(mut ann) = pod.annotations.take() else { return Ok(false) };
    if ann.remove(STATUS).is_none() {
        pod.annotations = Some(ann);
        return Ok(false);
    }
    let extras = ann.remove(ADDED).unwrap_or_default();
    pod.annotations = (!ann.is_empty()).then_some(ann);
    let (_, side) = overlay()?;
    let names: Vec<&str> = side.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    let vols: Vec<&str> = side.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    if let Some(ic) = spec.init_containers.as_mut() {
        ic.retain(|c| !names.contains(&c.name.as_str()));
    }
    if spec.init_containers.as_ref().is_some_and(Vec::is_empty) {
        spec.init_containers = None;
    }
    if let Some(v) = spec.volumes.as_mut() {
        v.retain(|v| !vols.contains(&v.name.as_str()));
    }
    if spec.volumes.as_ref().is_some_and(Vec::is_empty) {
        spec.volumes = None;
    }
    for extra in extras.split(',').filter(|e| !e.is_empty()) {
        if let Some(label) = extra.strip_prefix("label:") {
            if let Some(l) = pod.labels.as_mut() {
                l.remove(label);
            }
        } else if extra == "topologySpreadConstraints" {
            spec.topology_spread_constraints = None;
        }
    }
    if pod.labels.as_ref().is_some_and(BTreeMap::is_empty) {
        pod.labels = None;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: &[(&str, &str)]) -> (ObjectMeta, PodSpec) {
        let meta = ObjectMeta {
            annotations: (!annotations.is_empty())
                .then(|| annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        };
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{ "name": "app", "image": "x", "ports": [{ "containerPort": 8081 }, { "name": "api", "containerPort": 3000 }] }]
        }))
        .unwrap();
        (meta, spec)
    }

    fn envoy_args(spec: &PodSpec) -> Vec<String> {
        let c = spec.init_containers.iter().flatten().find(|c| c.name == ENVOY_CONTAINER).unwrap();
        c.args.clone().unwrap()
    }

    #[test]
    fn the_app_port_annotation_may_name_a_container_port() {
        let (mut meta, mut spec) = pod(&[(APP_PORT, "api")]);
        let Outcome::Injected(i) = inject_pod(&ObjectMeta::default(), &mut meta, &mut spec).unwrap() else {
            panic!("not injected")
        };
        assert_eq!(i.app_port, 3000);
        assert!(i.own_envoy_config);
        let args = envoy_args(&spec);
        assert_eq!(args[0], "--config-yaml");
        assert!(args[1].contains("port_value: 3000"));
        assert!(spec.volumes.iter().flatten().all(|v| v.name != ENVOY_VOLUME));
        let (mut meta, mut spec) = pod(&[(APP_PORT, "nope")]);
        assert!(matches!(inject_pod(&ObjectMeta::default(), &mut meta, &mut spec), Err(InjectError::AppPort(_))));
    }

    #[test]
    fn the_default_port_keeps_the_shared_config_and_uninject_is_exact() {
        for ann in [&[][..], &[(APP_PORT, "api"), ("portcullis.io/dry-run", "true")][..]] {
            let (meta0, spec0) = pod(ann);
            let (mut meta, mut spec) = (meta0.clone(), spec0.clone());
            let Outcome::Injected(i) = inject_pod(&ObjectMeta::default(), &mut meta, &mut spec).unwrap() else {
                panic!("not injected")
            };
            assert_eq!(i.own_envoy_config, !ann.is_empty());
            assert_eq!(envoy_args(&spec)[0] == "-c", ann.is_empty());
            assert!(uninject_pod(&mut meta, &mut spec).unwrap());
            assert_eq!((meta, spec), (meta0, spec0));
        }
    }
}
