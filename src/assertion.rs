//! The signed identity assertion (`x-auth-jwt`): a short-lived JWT an upstream verifies against
//! `/.well-known/jwks.json` instead of trusting plain headers and the network path.
//!
//! Keys are `<kid>:<base64 PKCS#8>` entries; the algorithm follows the key (P-256 → ES256, Ed25519 →
//! EdDSA). The first key signs, all are published, so a new key can be published before it signs.
//! Signing is off the hot path: one assertion per (session, audience) is reused while at least a third of
//! its lifetime is left and the identity it states is unchanged.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use moka::future::Cache;
use serde::{Deserialize, Serialize};

use crate::authz::Allowed;
use crate::config::AssertionConfig;
use crate::idp::Identity;

/// Context extension naming the `aud` of the assertion on a route.
pub const AUDIENCE: &str = "portcullis.audience";
/// At most this many (session, audience) assertions are kept.
const CACHE_CAPACITY: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("entry {0} is not <kid>:<base64 PKCS#8> with a kid of letters, digits, '.', '_' or '-'")]
    Format(usize),
    #[error("key {0:?} is not base64")]
    Base64(String),
    #[error("key {0:?} is not a PKCS#8 P-256 (ES256) or Ed25519 (EdDSA) private key")]
    UnknownKey(String),
    #[error("key id {0:?} appears more than once")]
    DuplicateKid(String),
    #[error("no signing key")]
    Empty,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// The algorithms `portcullis keygen --assertion --alg` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyAlg {
    Es256,
    Eddsa,
}

/// One signing key: its id, algorithm, the key jsonwebtoken signs with, and its public JWK.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: serde_json::Value,
}

/// The configured keys: the first signs, all are published.
pub struct KeySet {
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| (&k.kid, k.alg))).finish()
    }
}

impl KeySet {
    pub fn parse(entries: &[&str]) -> Result<Self, AssertionError> {
        let mut keys: Vec<SigningKey> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let k = parse_entry(i + 1, entry.trim())?;
            if keys.iter().any(|o| o.kid == k.kid) {
                return Err(AssertionError::DuplicateKid(k.kid));
            }
            keys.push(k);
        }
        if keys.is_empty() {
            return Err(AssertionError::Empty);
        }
        Ok(Self { keys })
    }

    /// The JWKS document: every public key with its kid, alg and `use: sig`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    fn signer(&self) -> Result<&SigningKey, AssertionError> {
        self.keys.first().ok_or(AssertionError::Empty)
    }
}

fn parse_entry(n: usize, entry: &str) -> Result<SigningKey, AssertionError> {
    let (kid, b64) = entry.split_once(':').ok_or(AssertionError::Format(n))?;
    if kid.is_empty() || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(AssertionError::Format(n));
    }
    let der = STANDARD.decode(b64.trim()).map_err(|_| AssertionError::Base64(kid.to_string()))?;
    let b64u = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    use p256::pkcs8::DecodePrivateKey;
    if let Ok(sk) = p256::SecretKey::from_pkcs8_der(&der) {
        let point = sk.public_key().to_sec1_bytes();
        // Uncompressed SEC1: 0x04 || x (32) || y (32).
        let (x, y) = match (point.get(1..33), point.get(33..65)) {
            (Some(x), Some(y)) if point.len() == 65 => (x, y),
            _ => return Err(AssertionError::UnknownKey(kid.to_string())),
        };
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64u(x), "y": b64u(y),
                                     "kid": kid, "alg": "ES256", "use": "sig"});
        return Ok(SigningKey { kid: kid.into(), alg: Algorithm::ES256, key: EncodingKey::from_ec_der(&der), jwk });
    }
    if let Ok(sk) = ed25519_dalek::SigningKey::from_pkcs8_der(&der) {
        let x = b64u(&sk.verifying_key().to_bytes());
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
        return Ok(SigningKey { kid: kid.into(), alg: Algorithm::EdDSA, key: EncodingKey::from_ed_der(&der), jwk });
    }
    Err(AssertionError::UnknownKey(kid.to_string()))
}

/// A new `<kid>:<base64 PKCS#8>` entry for `[assertion] signing_keys`.
pub fn generate_key(alg: KeyAlg) -> Result<String, String> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let kid = hex::encode(rand::random::<[u8; 6]>());
    let der = match alg {
        KeyAlg::Es256 => {
            // A random 32-byte string is a valid P-256 scalar except with negligible probability: retry then.
            let sk = (0..8)
                .find_map(|_| p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()).ok())
                .ok_or("could not generate a P-256 key")?;
            sk.to_pkcs8_der().map_err(|e| e.to_string())?
        }
        KeyAlg::Eddsa => ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>())
            .to_pkcs8_der()
            .map_err(|e| e.to_string())?,
    };
    Ok(format!("{kid}:{}", STANDARD.encode(der.as_bytes())))
}

/// What `x-auth-jwt` states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub provider: String,
}

/// One minted assertion and what it states, so a changed identity is never served from the cache.
struct Minted {
    identity: Identity,
    provider: String,
    exp: i64,
    token: String,
}

/// Mints and caches the assertions of allowed checks.
pub struct Asserter {
    /// Swapped by a reload ([`Asserter::set_keys`]).
    keys: ArcSwap<KeySet>,
    issuer: String,
    default_audience: String,
    ttl: i64,
    cache: Cache<(String, String), Arc<Minted>>,
}

impl Asserter {
    /// `None` when `[assertion]` is off.
    pub fn from_config(cfg: &AssertionConfig, public_url: &str) -> Result<Option<Arc<Self>>, AssertionError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let audience = cfg.audience.clone().unwrap_or_else(|| public_url.to_string());
        Ok(Some(Arc::new(Self::new(cfg.key_set()?, public_url, &audience, cfg.ttl))))
    }

    pub fn new(keys: KeySet, issuer: &str, default_audience: &str, ttl: Duration) -> Self {
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(60).max(1);
        Self {
            keys: ArcSwap::from_pointee(keys),
            issuer: issuer.to_string(),
            default_audience: default_audience.to_string(),
            ttl: ttl_secs,
            cache: Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(ttl).build(),
        }
    }

    pub fn jwks(&self) -> serde_json::Value {
        self.keys.load().jwks()
    }

    /// The keys of a reloaded config: published from the next JWKS request, the first signing from the next
    /// assertion. Assertions minted under the old keys are dropped from the cache, so none signed by a key
    /// that is no longer published is served again. True when something changed.
    pub fn set_keys(&self, keys: KeySet) -> bool {
        // The JWKS lists the keys in order, the signer first: equal documents, the same keys.
        if self.keys.load().jwks() == keys.jwks() {
            return false;
        }
        let signer = keys.signer().map(|k| k.kid.clone()).unwrap_or_default();
        tracing::info!(published = keys.keys.len(), signer, "assertion keys changed");
        self.keys.store(Arc::new(keys));
        self.cache.invalidate_all();
        true
    }

    /// The `aud` for a route: its `portcullis.audience`, else the configured default.
    pub fn audience<'a>(&'a self, route: Option<&'a str>) -> &'a str {
        route.filter(|a| !a.trim().is_empty()).unwrap_or(&self.default_audience)
    }

    /// The assertion for an allowed check: the cached one while it is fresh and states the same identity,
    /// else a new one.
    pub async fn assertion(&self, a: &Allowed, audience: &str, now: i64) -> Result<String, AssertionError> {
        let key = (a.session_id.clone(), audience.to_string());
        if let Some(m) = self.cache.get(&key).await {
            if 3 * (m.exp - now) >= self.ttl && m.identity == a.identity && m.provider == a.provider {
                return Ok(m.token.clone());
            }
        }
        let exp = now + self.ttl;
        let token = self.mint(a, audience, now, exp)?;
        metrics::counter!("portcullis_assertions_signed_total").increment(1);
        let minted = Minted { identity: a.identity.clone(), provider: a.provider.clone(), exp, token: token.clone() };
        self.cache.insert(key, Arc::new(minted)).await;
        Ok(token)
    }

    fn mint(&self, a: &Allowed, audience: &str, iat: i64, exp: i64) -> Result<String, AssertionError> {
        let keys = self.keys.load();
        let k = keys.signer()?;
        let mut header = Header::new(k.alg);
        header.kid = Some(k.kid.clone());
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: audience.to_string(),
            sub: a.identity.user_id.clone(),
            iat,
            exp,
            jti: hex::encode(rand::random::<[u8; 16]>()),
            email: a.identity.email.clone(),
            name: a.identity.name.clone(),
            groups: a.identity.groups.clone(),
            provider: a.provider.clone(),
        };
        Ok(jsonwebtoken::encode(&header, &claims, &k.key)?)
    }
}

#[cfg(test)]
mod tests;
