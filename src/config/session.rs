//! `[session]`: the cookie, the two timeouts and the encryption keys.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// The cookie's `SameSite` attribute; the file may spell it in any case ("lax", "Lax", "LAX").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
    None,
}

impl SameSite {
    /// The attribute value as RFC 6265bis spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lax => "Lax",
            Self::Strict => "Strict",
            Self::None => "None",
        }
    }
}

impl<'de> Deserialize<'de> for SameSite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.to_ascii_lowercase().as_str() {
            "lax" => Ok(Self::Lax),
            "strict" => Ok(Self::Strict),
            "none" => Ok(Self::None),
            _ => Err(serde::de::Error::custom(format!("{s:?} must be Lax, Strict or None"))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Unset in the file: `__Host-GATEWAY_SESSION` when the cookie is secure and host-only (a sibling
    /// subdomain cannot plant or shadow it), else `GATEWAY_SESSION`; see [`SessionConfig::resolve_cookie_name`].
    #[serde(default)]
    pub cookie_name: String,
    pub cookie_secure: bool,
    pub same_site: SameSite,
    pub cookie_domain: Option<String>,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub absolute_timeout: Duration,
    /// The idle expiry slides only when the last slide is older than this, so most checks write nothing.
    #[serde(with = "humantime_serde")]
    pub slide_after: Duration,
    pub encryption_keys: Vec<SecretString>,
    pub encryption_keys_file: Option<PathBuf>,
    /// Keys that decrypt but never encrypt: phase one of a rotation (see the README).
    pub decrypt_only_keys: Vec<SecretString>,
    pub bind_fingerprint: bool,
}

/// The cookie name when the file names none: the `__Host-` prefix wherever the browser will honour it.
pub const DEFAULT_COOKIE_NAME: &str = "GATEWAY_SESSION";

impl SessionConfig {
    /// Fills in the cookie name the file left out (the field deserializes to "" when absent).
    pub fn resolve_cookie_name(&mut self) {
        if self.cookie_name.is_empty() {
            self.cookie_name = if self.cookie_secure && self.cookie_domain.is_none() {
                format!("__Host-{DEFAULT_COOKIE_NAME}")
            } else {
                DEFAULT_COOKIE_NAME.into()
            };
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            cookie_name: DEFAULT_COOKIE_NAME.into(),
            cookie_secure: true,
            same_site: SameSite::default(),
            cookie_domain: None,
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(8 * 3600),
            slide_after: Duration::from_secs(60),
            encryption_keys: Vec::new(),
            encryption_keys_file: None,
            decrypt_only_keys: Vec::new(),
            bind_fingerprint: false,
        }
    }
}

impl SessionConfig {
    /// The key ring built from `encryption_keys` then `decrypt_only_keys`; the only place the keys are exposed.
    pub fn key_ring(&self) -> Result<crate::crypto::KeyRing, crate::crypto::CryptoError> {
        let keys: Vec<&str> = self.encryption_keys.iter().map(|k| k.expose_secret()).collect();
        let decrypt_only: Vec<&str> = self.decrypt_only_keys.iter().map(|k| k.expose_secret()).collect();
        crate::crypto::KeyRing::parse_with_decrypt_only(&keys, &decrypt_only)
    }

    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        let name_ok = !self.cookie_name.is_empty()
            && self.cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            errors.push(format!("session.cookie_name: {:?} is not a valid cookie name", self.cookie_name));
        }
        if self.cookie_name.starts_with("__Host-") && (!self.cookie_secure || self.cookie_domain.is_some()) {
            errors.push("session.cookie_name: a __Host- cookie needs cookie_secure = true and no cookie_domain".into());
        }
        if self.same_site == SameSite::None && !self.cookie_secure {
            errors.push("session.same_site: None requires cookie_secure = true".into());
        }
        if self.idle_timeout.is_zero() {
            errors.push("session.idle_timeout: must be greater than zero".into());
        }
        if self.absolute_timeout < self.idle_timeout {
            errors.push("session.absolute_timeout: must not be shorter than session.idle_timeout".into());
        }
        if let Err(e) = self.key_ring() {
            errors.push(format!(
                "session.encryption_keys/decrypt_only_keys: {e} (generate one with `portcullis keygen`)"
            ));
        }
    }
}
