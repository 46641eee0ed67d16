//! Services that select an injected workload: the ports that reached the app reach Envoy instead, and the
//! original `targetPort`s are recorded so uninject restores them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{edit, envoy, stream::Item, InjectError, Mode, Target};

/// Service port number -> its original targetPort (JSON), written by inject.
pub const RETARGETED: &str = "portcullis.io/original-target-ports";

pub(super) fn apply(
    mode: Mode,
    item: &mut Item,
    targets: &[Target],
    summary: &mut Vec<String>,
) -> Result<(), InjectError> {
    let done = edit::<Service, String>(item, |svc| match mode {
        Mode::Inject => Ok(retarget(svc, targets)),
        Mode::Uninject => restore(svc),
    })?;
    if let Some(line) = done {
        summary.push(line);
    }
    Ok(())
}

fn selects(svc: &Service, t: &Target) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else { return false };
    !sel.is_empty() && svc.metadata.namespace == t.namespace && sel.iter().all(|(k, v)| t.labels.get(k) == Some(v))
}

fn retarget(svc: &mut Service, targets: &[Target]) -> Option<String> {
    if svc.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(RETARGETED)) {
        return None;
    }
    let t = targets.iter().find(|t| selects(svc, t))?;
    let mut original = BTreeMap::new();
    for p in svc.spec.as_mut()?.ports.iter_mut().flatten() {
        let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
        let reaches_app = match &target {
            IntOrString::Int(n) => *n == t.app_port,
            IntOrString::String(name) => t.port_names.get(name) == Some(&t.app_port),
        };
        if reaches_app {
            original.insert(p.port.to_string(), serde_json::to_value(&p.target_port).ok()?);
            p.target_port = Some(IntOrString::Int(envoy::LISTEN_PORT));
        }
    }
    if original.is_empty() {
        return None;
    }
    let json = serde_json::to_string(&original).ok()?;
    svc.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(RETARGETED.to_string(), json);
    Some(format!(
        "retargeted Service/{} to Envoy (:{})",
        svc.metadata.name.as_deref().unwrap_or("?"),
        envoy::LISTEN_PORT
    ))
}

fn restore(svc: &mut Service) -> Result<Option<String>, InjectError> {
    let Some(ann) = svc.metadata.annotations.as_mut() else { return Ok(None) };
    let Some(json) = ann.remove(RETARGETED) else { return Ok(None) };
    if ann.is_empty() {
        svc.metadata.annotations = None;
    }
    let name = svc.metadata.name.clone().unwrap_or_default();
    let original: BTreeMap<String, Option<IntOrString>> =
        serde_json::from_str(&json).map_err(|e| InjectError::Object(format!("Service/{name}: {RETARGETED}: {e}")))?;
    for p in svc.spec.as_mut().and_then(|s| s.ports.as_mut()).into_iter().flatten() {
        if let Some(t) = original.get(&p.port.to_string()) {
            p.target_port = t.clone();
        }
    }
    Ok(Some(format!("restored Service/{name}")))
}
