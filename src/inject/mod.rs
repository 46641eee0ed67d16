//! `portcullis inject` / `uninject`: a YAML stream (or `kind: List`) in, the same stream out with Envoy and
//! portcullis added to (or removed from) every pod template, the Services that select an injected workload
//! pointed at Envoy. Documents that need no change are written back as their original text. A pod whose
//! app port or route options need another Envoy config carries it inline in the Envoy sidecar's args, as
//! the admission webhook (which can only patch the pod) writes it too.

mod envoy;
mod pod;
pub mod serve;
mod service;
mod stream;
pub mod webhook;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use envoy::{config_for as envoy_config_for, LISTEN_PORT};
pub use pod::{APP_PORT, INJECT, STATUS};

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("the shipped sidecar overlay cannot be read: {0}")]
    Overlay(String),
    #[error("portcullis.io/app-port {0:?} is neither a port number nor a container port name")]
    AppPort(String),
    #[error("the pod already has a {0} of the sidecars' name")]
    Clash(String),
    #[error("{0}")]
    Object(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Inject,
    Uninject,
}

/// An injected workload, for the Services pass.
struct Target {
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    app_port: i32,
    /// Container port names of the pod -> numbers (a Service may target a port by name).
    port_names: BTreeMap<String, i32>,
}

/// The result: the new stream (stdout) and one summary line per change (stderr).
pub struct Output {
    pub yaml: String,
    pub summary: Vec<String>,
}

/// Injects into or uninjects from every object of `input`.
pub fn run(mode: Mode, input: &str) -> Result<Output, InjectError> {
    let mut docs = stream::split(input);
    let mut summary = Vec::new();
    let mut targets = Vec::new();
    for doc in docs.iter_mut() {
        for item in doc.items_mut() {
            workload(mode, item, &mut targets, &mut summary)?;
        }
    }
    for doc in docs.iter_mut() {
        for item in doc.items_mut() {
            if kind(&item.value) == Some("Service") {
                service::apply(mode, item, &targets, &mut summary)?;
            }
        }
    }
    let yaml = stream::join(&docs)?;
    Ok(Output { yaml, summary })
}

fn kind(v: &Value) -> Option<&str> {
    v.get("kind").and_then(Value::as_str)
}

fn describe(v: &Value) -> String {
    let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
    format!("{}/{name}", kind(v).unwrap_or("?"))
}

/// Deserializes the typed object, lets `f` change it, and writes it back when `f` says it changed.
fn edit<T: DeserializeOwned + Serialize, R>(
    item: &mut stream::Item,
    f: impl FnOnce(&mut T) -> Result<Option<R>, InjectError>,
) -> Result<Option<R>, InjectError> {
    let mut obj: T = serde_json::from_value(item.value.clone())
        .map_err(|e| InjectError::Object(format!("{}: {e}", describe(&item.value))))?;
    let r = f(&mut obj)?;
    if r.is_some() {
        item.value = serde_json::to_value(&obj).map_err(|e| InjectError::Object(e.to_string()))?;
        item.changed = true;
    }
    Ok(r)
}

/// The pod template of a workload kind, with the workload's metadata.
fn template<'a>(kind: &str, v: &'a mut Value) -> Option<&'a mut Value> {
    let path = match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return None,
    };
    v.pointer_mut(path)
}

fn workload(
    mode: Mode,
    item: &mut stream::Item,
    targets: &mut Vec<Target>,
    summary: &mut Vec<String>,
) -> Result<(), InjectError> {
    let Some(k) = kind(&item.value).map(str::to_string) else { return Ok(()) };
    // Type-check the whole object with k8s-openapi first: a malformed workload is an error, not a guess.
    let typed_ok = match k.as_str() {
        "Deployment" => check::<Deployment>(item),
        "StatefulSet" => check::<StatefulSet>(item),
        "DaemonSet" => check::<DaemonSet>(item),
        "ReplicaSet" => check::<ReplicaSet>(item),
        "Job" => check::<Job>(item),
        "CronJob" => check::<CronJob>(item),
        "Pod" => check::<Pod>(item),
        _ => return Ok(()),
    };
    typed_ok?;
    let name = describe(&item.value);
    let wmeta: ObjectMeta = item
        .value
        .get("metadata")
        .map(|m| serde_json::from_value(m.clone()))
        .transpose()
        .map_err(|e| InjectError::Object(format!("{name}: {e}")))?
        .unwrap_or_default();
    // The pod part, typed: a PodTemplateSpec (or the Pod itself).
    let is_pod = k == "Pod";
    let mut tpl: PodTemplateSpec = if is_pod {
        PodTemplateSpec {
            metadata: Some(wmeta.clone()),
            spec: item.value.get("spec").map(|s| serde_json::from_value(s.clone())).transpose().ok().flatten(),
        }
    } else {
        let Some(t) = template(&k, &mut item.value) else { return Ok(()) };
        serde_json::from_value(t.clone()).map_err(|e| InjectError::Object(format!("{name}: {e}")))?
    };
    let mut meta = tpl.metadata.take().unwrap_or_default();
    let mut spec: PodSpec = tpl.spec.take().unwrap_or_default();
    let changed = match mode {
        Mode::Inject => match pod::inject_pod(&wmeta, &mut meta, &mut spec)? {
            pod::Outcome::Disabled => {
                summary.push(format!("skipped {name} ({INJECT}: disabled)"));
                false
            }
            pod::Outcome::Already => {
                summary.push(format!("unchanged {name} (already injected)"));
                false
            }
            pod::Outcome::Injected(inj) => {
                let port_names = spec
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter_map(|p| p.name.clone().map(|n| (n, p.container_port)))
                    .collect();
                targets.push(Target {
                    namespace: wmeta.namespace.clone(),
                    labels: inj.labels,
                    app_port: inj.app_port,
                    port_names,
                });
                let inline = if inj.own_envoy_config { ", its own Envoy config inline" } else { "" };
                summary.push(format!("injected {name} (app port {}{inline})", inj.app_port));
                true
            }
        },
        Mode::Uninject => {
            let done = pod::uninject_pod(&mut meta, &mut spec)?;
            if done {
                summary.push(format!("uninjected {name}"));
            }
            done
        }
    };
    if !changed {
        return Ok(());
    }
    let to_json = |v: &dyn erased::Ser| v.json();
    if is_pod {
        item.value["metadata"] = to_json(&meta)?;
        item.value["spec"] = to_json(&spec)?;
    } else if let Some(t) = template(&k, &mut item.value) {
        // Empty metadata (a template that had none before inject) is left out again.
        let metadata = (meta != ObjectMeta::default()).then_some(meta);
        *t = to_json(&PodTemplateSpec { metadata, spec: Some(spec) })?;
    }
    item.changed = true;
    // Round-trip through the typed object so the output is what k8s-openapi considers the object.
    match k.as_str() {
        "Deployment" => normalize::<Deployment>(item),
        "StatefulSet" => normalize::<StatefulSet>(item),
        "DaemonSet" => normalize::<DaemonSet>(item),
        "ReplicaSet" => normalize::<ReplicaSet>(item),
        "Job" => normalize::<Job>(item),
        "CronJob" => normalize::<CronJob>(item),
        _ => normalize::<Pod>(item),
    }
}

mod erased {
    use super::InjectError;
    pub trait Ser {
        fn json(&self) -> Result<serde_json::Value, InjectError>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> Result<serde_json::Value, InjectError> {
            serde_json::to_value(self).map_err(|e| InjectError::Object(e.to_string()))
        }
    }
}

fn check<T: DeserializeOwned>(item: &stream::Item) -> Result<(), InjectError> {
    serde_json::from_value::<T>(item.value.clone())
        .map(|_| ())
        .map_err(|e| InjectError::Object(format!("{}: {e}", describe(&item.value))))
}

fn normalize<T: DeserializeOwned + Serialize>(item: &mut stream::Item) -> Result<(), InjectError> {
    edit::<T, ()>(item, |_| Ok(Some(()))).map(|_| ())
}
