//! `[assertion]`: the signed identity assertion (`x-auth-jwt`) for upstreams that verify who is calling.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Longer-lived assertions are bearer tokens an upstream could leak and replay: refused.
pub const MAX_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssertionConfig {
    pub enabled: bool,
    /// `<kid>:<base64 PKCS#8>` entries (`portcullis keygen --assertion`): the first signs, all are published.
    pub signing_keys: Vec<SecretString>,
    /// One entry per line, appended after `signing_keys`.
    pub signing_keys_file: Option<PathBuf>,
    /// Lifetime of one assertion (`exp - iat`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// `aud` on routes that name no `portcullis.audience`; unset: `server.public_url`.
    pub audience: Option<String>,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            signing_keys: Vec::new(),
            signing_keys_file: None,
            ttl: Duration::from_secs(60),
            audience: None,
        }
    }
}

impl AssertionConfig {
    /// The parsed key set; the only place the signing keys are exposed.
    pub fn key_set(&self) -> Result<crate::assertion::KeySet, crate::assertion::AssertionError> {
        let entries: Vec<&str> = self.signing_keys.iter().map(|k| k.expose_secret()).collect();
        crate::assertion::KeySet::parse(&entries)
    }

    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        if self.ttl < Duration::from_secs(1) || self.ttl > MAX_TTL {
            errors.push(format!(
                "assertion.ttl: must be at least 1s and at most {}",
                humantime::format_duration(MAX_TTL)
            ));
        }
        if self.audience.as_deref().is_some_and(|a| a.trim().is_empty()) {
            errors.push("assertion.audience: must not be empty (leave it out to use server.public_url)".into());
        }
        if self.enabled && self.signing_keys.is_empty() {
            errors.push(
                "assertion.signing_keys: required when assertion.enabled = true (generate one with `portcullis keygen --assertion`)"
                    .into(),
            );
        }
        if !self.signing_keys.is_empty() {
            if let Err(e) = self.key_set() {
                errors.push(format!("assertion.signing_keys: {e}"));
            }
        }
    }
}
