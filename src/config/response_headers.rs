//! `[response_headers]`: security headers added to every response an allowed request gets back (Envoy's
//! `response_headers_to_add` on the OK answer). The operator's table is merged over the defaults: a name
//! set here replaces the default of that name, an empty value removes it.

use std::collections::BTreeMap;

use serde::Deserialize;

/// On unless the operator removes them.
pub const DEFAULTS: [(&str, &str); 4] = [
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct ResponseHeadersConfig {
    /// What the file says, name as written: merged over [`DEFAULTS`] by [`ResponseHeadersConfig::effective`].
    pub overrides: BTreeMap<String, String>,
}

impl ResponseHeadersConfig {
    /// The headers to add: the defaults, overridden by name (case-insensitively), without the emptied ones.
    pub fn effective(&self) -> Vec<(String, String)> {
        let mut all: BTreeMap<String, String> = DEFAULTS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for (k, v) in &self.overrides {
            all.insert(k.to_ascii_lowercase(), v.trim().to_string());
        }
        all.into_iter().filter(|(_, v)| !v.is_empty()).collect()
    }

    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        for (k, v) in &self.overrides {
            if axum::http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                errors.push(format!("response_headers.{k}: {k:?} is not a valid header name"));
            } else if k.eq_ignore_ascii_case("set-cookie") || k.eq_ignore_ascii_case("content-length") {
                errors.push(format!("response_headers.{k}: portcullis does not set {k} on every response"));
            }
            if axum::http::HeaderValue::from_str(v).is_err() || v.chars().any(char::is_control) {
                errors.push(format!("response_headers.{k}: the value is not a valid header value"));
            }
        }
    }
}
