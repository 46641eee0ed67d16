//! Adds the sidecars to one pod template, and removes exactly them. The sidecars are read from the shipped
//! overlay's patch (`k8s/overlays/sidecar/sidecar-patch.yaml`), so `inject` and `kubectl apply -k` cannot
//! drift apart.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, PodSpec};
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

/// What `inject_pod` did: the app port, and the Envoy config the pod needs when the shared one (port
/// 8081, no route options) does not fit.
pub struct Injected {
    pub app_port: i32,
    pub envoy_config: Option<String>,
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

/// The ConfigMap name a workload's own Envoy config goes into.
pub fn envoy_configmap_name(workload: &str) -> String {
    format!("{workload}-portcullis-envoy")
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
    let envoy_config = if app_port == envoy::DEFAULT_APP_PORT && options.is_empty() {
        None
    } else {
        let name = envoy_configmap_name(workload.name.as_deref().unwrap_or("pod"));
        for v in side.volumes.iter_mut().flatten().filter(|v| v.name == ENVOY_VOLUME) {
            v.config_map =
                Some(ConfigMapVolumeSource { name: name.clone(), ..v.config_map.take().unwrap_or_default() });
        }
        Some(envoy::config_for(app_port, &options).map_err(InjectError::Overlay)?)
    };

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
    Ok(Outcome::Injected(Injected { app_port, envoy_config, labels: pod_labels.clone() }))
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
