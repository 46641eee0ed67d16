//! `[headers]`: the identity header names sent to the upstream.

use serde::de::IgnoredAny;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    pub user_id: String,
    pub provider: String,
    pub email: String,
    pub name: String,
    pub groups: String,
    pub jwt: String,
    /// `true` when a bearer token belongs to a machine client (client credentials), absent otherwise.
    pub client: String,
    /// The delegated token on a route with `portcullis.delegate`; never the user's own tokens.
    pub delegated: String,
    /// Read by nothing: kept only so start-up can refuse it by name (the `[assertion]` section replaces it).
    jwt_enabled: Option<IgnoredAny>,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            user_id: "x-auth-user-id".into(),
            provider: "x-auth-provider".into(),
            email: "x-auth-email".into(),
            name: "x-auth-name".into(),
            groups: "x-auth-groups".into(),
            jwt: "x-auth-jwt".into(),
            client: "x-auth-client".into(),
            delegated: "x-auth-delegated-token".into(),
            jwt_enabled: None,
        }
    }
}

impl HeadersConfig {
    /// Every identity header name: these never pass from the client to the upstream.
    pub fn all(&self) -> [&str; 8] {
        [&self.user_id, &self.provider, &self.email, &self.name, &self.groups, &self.jwt, &self.client, &self.delegated]
    }

    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        if self.jwt_enabled.is_some() {
            errors.push(
                "headers.jwt_enabled: no longer supported; set [assertion] enabled = true with signing_keys instead (remove this key)"
                    .into(),
            );
        }
        for h in self.all() {
            if h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase() || !(b.is_ascii_alphanumeric() || b == b'-')) {
                errors.push(format!("headers: {h:?} must be a lower-case header name"));
            }
        }
    }
}
