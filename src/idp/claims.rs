//! Claims to identity: which claim feeds which header, per provider.

use serde_json::{Map, Value};

use super::Identity;

/// Claim names for one provider.
#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub email: String,
    pub name: String,
    pub groups: String,
    /// An `email_verified: false` claim withholds the email (an absent claim does not: Entra sends none).
    pub require_verified_email: bool,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self { email: "email".into(), name: "name".into(), groups: "groups".into(), require_verified_email: true }
    }
}

impl ClaimNames {
    /// Builds the identity for `user_id` from a claims object; absent or odd-typed claims stay absent.
    pub fn identity(&self, user_id: &str, claims: &Map<String, Value>) -> Identity {
        self.identity_from(user_id, &[claims])
    }

    /// [`ClaimNames::identity`] from claim sets in order of precedence: each claim comes from the first set
    /// that has it (the ID token's, then introspection's), read in place rather than merged into a copy.
    pub fn identity_from(&self, user_id: &str, sources: &[&Map<String, Value>]) -> Identity {
        let get = |k: &str| sources.iter().find_map(|m| m.get(k));
        let text = |k: &str| get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
        let groups = match get(&self.groups) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
            Some(Value::String(s)) => s.split([',', ' ']).filter(|g| !g.is_empty()).map(String::from).collect(),
            _ => Vec::new(),
        };
        let unverified = get("email_verified").and_then(Value::as_bool) == Some(false);
        let email = if self.require_verified_email && unverified {
            tracing::debug!("email withheld: the IdP says it is not verified");
            None
        } else {
            text(&self.email)
        };
        Identity { user_id: user_id.to_string(), email, name: text(&self.name), groups }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unverified_email_is_withheld_unless_configured_otherwise() {
        let claims = |v: Value| serde_json::json!({"email": "a@x", "email_verified": v}).as_object().unwrap().clone();
        let names = ClaimNames::default();
        assert_eq!(names.identity("u", &claims(Value::Bool(false))).email, None);
        assert_eq!(names.identity("u", &claims(Value::Bool(true))).email.as_deref(), Some("a@x"));
        assert_eq!(names.identity("u", &claims(Value::Null)).email.as_deref(), Some("a@x"), "absent claim");
        let lax = ClaimNames { require_verified_email: false, ..ClaimNames::default() };
        assert_eq!(lax.identity("u", &claims(Value::Bool(false))).email.as_deref(), Some("a@x"));
    }

    #[test]
    fn the_first_claim_set_that_has_a_claim_gives_it() {
        let object = |v: Value| v.as_object().unwrap().clone();
        let id_token = object(serde_json::json!({"email": "id@x", "name": "From Id"}));
        let introspection = object(serde_json::json!({"email": "intro@x", "groups": ["ops"], "email_verified": false}));
        let who = ClaimNames::default().identity_from("u", &[&id_token, &introspection]);
        assert_eq!(who.email, None, "introspection's email_verified: false still withholds the email");
        assert_eq!(who.name.as_deref(), Some("From Id"));
        assert_eq!(who.groups, vec!["ops".to_string()], "a claim only the second set has");
        let lax = ClaimNames { require_verified_email: false, ..ClaimNames::default() };
        let who = lax.identity_from("u", &[&id_token, &introspection]);
        assert_eq!(who.email.as_deref(), Some("id@x"), "the ID token's claim wins");
    }
}
