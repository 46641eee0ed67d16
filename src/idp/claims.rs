//! Claims to identity: which claim feeds which header, per provider.

use serde_json::{Map, Value};

use super::Identity;

/// Claim names for one provider.
#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub email: String,
    pub name: String,
    pub groups: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self { email: "email".into(), name: "name".into(), groups: "groups".into() }
    }
}

impl ClaimNames {
    /// Builds the identity for `user_id` from a claims object; absent or odd-typed claims stay absent.
    pub fn identity(&self, user_id: &str, claims: &Map<String, Value>) -> Identity {
        let text = |k: &str| claims.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
        let groups = match claims.get(&self.groups) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
            Some(Value::String(s)) => s.split([',', ' ']).filter(|g| !g.is_empty()).map(String::from).collect(),
            _ => Vec::new(),
        };
        Identity { user_id: user_id.to_string(), email: text(&self.email), name: text(&self.name), groups }
    }
}

/// The payload of a JWT, NOT verified. Only for tokens that were verified when they were stored.
pub fn unverified_payload(jwt: &str) -> Option<Map<String, Value>> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}
