//! `[bearer]`: API and CLI clients calling with `Authorization: Bearer` instead of the session cookie.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BearerConfig {
    /// Every route accepts bearer tokens; otherwise only routes with `portcullis.bearer: "allow"`.
    pub enabled: bool,
    /// `aud` values a JWT access token (or an introspection reply that names one) must contain one of;
    /// empty: the provider's `client_id`.
    pub audiences: Vec<String>,
    /// The provider whose JWKS and introspection judge tokens; unset: the only configured provider.
    pub provider: Option<String>,
}

impl BearerConfig {
    /// The provider that judges bearer tokens, if one can be named.
    pub fn provider_name<'a>(&'a self, providers: &'a [&'a str]) -> Option<&'a str> {
        match (&self.provider, providers) {
            (Some(p), _) => Some(p.as_str()),
            (None, [only]) => Some(only),
            _ => None,
        }
    }

    pub(super) fn validate(&self, providers: &[&str], errors: &mut Vec<String>) {
        if let Some(p) = &self.provider {
            if !providers.contains(&p.as_str()) {
                errors.push(format!("bearer.provider: {p:?} is not a configured provider"));
            }
        } else if self.enabled && providers.len() != 1 {
            errors.push("bearer.provider: required with bearer.enabled when there is not exactly one provider".into());
        }
        if self.audiences.iter().any(|a| a.trim().is_empty()) {
            errors.push("bearer.audiences: an empty audience".into());
        }
    }
}
