//! Envoy's config for one injected workload: the shipped `envoy/envoy.yaml` rendered the way
//! `scripts/render-envoy.sh` does it (the value before a `# ${NAME}` marker replaced), plus the workload's
//! route options in the catch-all route's ext_authz `context_extensions`.

use std::collections::BTreeMap;

use serde_norway::Value;

/// The shipped Envoy config, the one `k8s/base` mounts.
pub const SHIPPED: &str = include_str!("../../envoy/envoy.yaml");

/// The upstream port `SHIPPED` uses unrendered.
pub const DEFAULT_APP_PORT: i32 = 8081;

/// Envoy's client listener in the sidecar (the port named `http`).
pub const LISTEN_PORT: i32 = 8080;

/// Replaces the value on the line ending in `# ${UPSTREAM_PORT}`, like scripts/render-envoy.sh.
pub fn render_upstream_port(template: &str, port: i32) -> String {
    let mut out = String::with_capacity(template.len());
    for line in template.lines() {
        let marker = "# ${UPSTREAM_PORT}";
        let rendered = line.trim_end().strip_suffix(marker).and_then(|head| {
            let colon = head.find(": ")?;
            Some(format!("{}{port} {marker}", &head[..colon + 2]))
        });
        out.push_str(rendered.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The config a pod carries inline (`envoy --config-yaml`): upstream on `port`, and `options` (already
/// `portcullis.*` keys) as ext_authz `context_extensions` on the catch-all route `prefix: /`. Re-serialized
/// without the shipped file's comments, which keeps it about half the size.
pub fn config_for(port: i32, options: &BTreeMap<String, String>) -> Result<String, String> {
    let text = render_upstream_port(SHIPPED, port);
    let mut doc: Value = serde_norway::from_str(&text).map_err(|e| format!("envoy.yaml: {e}"))?;
    if !options.is_empty() {
        let mut done = 0;
        visit_routes(&mut doc, &mut |route| {
            let catch_all =
                route.get("match").and_then(|m| m.get("prefix")).and_then(Value::as_str).is_some_and(|p| p == "/");
            if !catch_all || route.get("route").is_none() {
                return;
            }
            if let Some(m) = route.as_mapping_mut() {
                m.insert(Value::from("typed_per_filter_config"), per_route(options));
                done += 1;
            }
        });
        if done == 0 {
            return Err("envoy.yaml has no catch-all route (prefix: /) for the route options".into());
        }
    }
    serde_norway::to_string(&doc).map_err(|e| e.to_string())
}

/// `typed_per_filter_config` giving ext_authz these context extensions.
fn per_route(options: &BTreeMap<String, String>) -> Value {
    let map = |pairs: Vec<(&str, Value)>| -> Value {
        Value::Mapping(pairs.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
    };
    let ext = options.iter().map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str()))).collect();
    map(vec![(
        "envoy.filters.http.ext_authz",
        map(vec![
            ("@type", Value::from("type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute")),
            ("check_settings", map(vec![("context_extensions", Value::Mapping(ext))])),
        ]),
    )])
}

/// Calls `f` on every mapping in a `routes:` sequence.
fn visit_routes(v: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m.iter_mut() {
                if k.as_str() == Some("routes") {
                    if let Some(seq) = child.as_sequence_mut() {
                        for r in seq.iter_mut() {
                            f(r);
                        }
                        continue;
                    }
                }
                visit_routes(child, f);
            }
        }
        Value::Sequence(s) => s.iter_mut().for_each(|c| visit_routes(c, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_upstream_port_only() {
        let out = render_upstream_port(SHIPPED, 3000);
        assert!(out.contains("port_value: 3000 # ${UPSTREAM_PORT}"));
        assert_eq!(out.lines().count(), SHIPPED.lines().count());
        assert_eq!(render_upstream_port(SHIPPED, DEFAULT_APP_PORT).trim_end(), SHIPPED.trim_end());
    }

    #[test]
    fn options_land_on_the_catch_all_route() {
        let opts = BTreeMap::from([("portcullis.require_any".to_string(), "ops".to_string())]);
        let out = config_for(3000, &opts).unwrap();
        let doc: Value = serde_norway::from_str(&out).unwrap();
        let s = serde_norway::to_string(&doc).unwrap();
        assert!(s.contains("portcullis.require_any: ops"), "{s}");
        assert!(s.contains("port_value: 3000"));
    }

    #[test]
    fn without_options_it_is_the_shipped_config_on_another_port() {
        let inline: Value = serde_norway::from_str(&config_for(DEFAULT_APP_PORT, &BTreeMap::new()).unwrap()).unwrap();
        let shipped: Value = serde_norway::from_str(SHIPPED).unwrap();
        assert_eq!(inline, shipped);
    }
}
