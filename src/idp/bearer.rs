//! Bearer tokens of API and CLI clients (`Authorization: Bearer`). A JWT access token is verified against
//! the provider's JWKS (`iss`, `aud` one of the configured audiences, `exp`, `nbf`); anything else is
//! introspected (RFC 7662, with the shared M2M token when the provider says `introspection_auth = "bearer"`).
//!
//! Revalidation follows the session modes: `every_request` asks again on every check, concurrent checks of
//! one token sharing one call; `max_staleness` reuses a result for that long and never past the token's
//! `exp`. Tokens are keyed by their SHA-256, never stored or logged as they are.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{decode, decode_header, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::id_token::ALLOWED;
use super::provider::Provider;
use super::{oidc, Identity, IdpError};
use crate::config::{BearerConfig, RevalidationConfig, RevalidationMode};

/// Most tokens remembered.
const MAX_CACHED: u64 = 100_000;
/// In `every_request` mode an entry only lives while its call is shared; this bounds a forgotten one.
const IN_FLIGHT_TTL: Duration = Duration::from_secs(10);

/// Who a valid bearer token stands for.
#[derive(Debug, Clone)]
pub struct Principal {
    pub identity: Identity,
    /// A machine client (client credentials): the user id is its client id.
    pub client: bool,
    pub scopes: Vec<String>,
    pub exp: i64,
}

pub struct BearerVerifier {
    p: Arc<Provider>,
    audiences: Vec<String>,
    reuse: bool,
    /// `max_staleness` for unexpired results; in `every_request` only the call in flight (single-flight).
    cache: moka::future::Cache<String, Arc<Principal>>,
}

impl BearerVerifier {
    pub fn new(p: Arc<Provider>, cfg: &BearerConfig, reval: &RevalidationConfig) -> Self {
        let reuse = reval.mode == RevalidationMode::MaxStaleness;
        let ttl = if reuse { reval.max_staleness } else { IN_FLIGHT_TTL };
        let audiences = if cfg.audiences.is_empty() { vec![p.cfg.client_id.clone()] } else { cfg.audiences.clone() };
        Self {
            p,
            audiences,
            reuse,
            cache: moka::future::Cache::builder().max_capacity(MAX_CACHED).time_to_live(ttl).build(),
        }
    }

    /// The provider's name (the `x-auth-provider` of a bearer request).
    pub fn provider(&self) -> &str {
        &self.p.name
    }

    /// The SHA-256 of a token, hex: its cache key and its name in an assertion cache.
    pub fn token_id(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    pub async fn verify(&self, token: &str, now: i64) -> Result<Arc<Principal>, IdpError> {
        let key = Self::token_id(token);
        if self.reuse {
            if let Some(p) = self.cache.get(&key).await {
                if p.exp > now {
                    return Ok(p);
                }
                self.cache.invalidate(&key).await;
            }
        }
        // moka runs one init per key and hands its result to every concurrent waiter.
        let r = self.cache.try_get_with(key.clone(), self.judge(token, now)).await.map_err(|e| (*e).clone());
        if !self.reuse {
            self.cache.invalidate(&key).await;
        }
        let p = r?;
        if p.exp <= now {
            return Err(IdpError::Revoked("bearer token expired".into()));
        }
        Ok(p)
    }

    async fn judge(&self, token: &str, now: i64) -> Result<Arc<Principal>, IdpError> {
        let p = match decode_header(token) {
            Ok(h) => self.jwt(token, h, now).await?,
            Err(_) => self.introspected(token).await?,
        };
        Ok(Arc::new(p))
    }

    async fn jwt(&self, token: &str, h: jsonwebtoken::Header, now: i64) -> Result<Principal, IdpError> {
        if !ALLOWED.contains(&h.alg) {
            return Err(IdpError::Invalid(format!("bearer algorithm {:?} not accepted", h.alg)));
        }
        let key = self.p.jwks.key(h.kid.as_deref(), &self.p.http, &self.p.discovery).await?;
        let mut v = Validation::new(h.alg);
        v.set_issuer(&[&self.p.issuer]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        let claims = decode::<Map<String, Value>>(token, &key, &v)
            .map_err(|e| IdpError::Invalid(format!("bearer token: {e}")))?
            .claims;
        let p = self.principal(&claims, now)?;
        Ok(p)
    }

    async fn introspected(&self, token: &str) -> Result<Principal, IdpError> {
        let m = oidc::introspect(&self.p, token).await?;
        if m.get("active").and_then(Value::as_bool) != Some(true) {
            return Err(IdpError::Revoked("bearer token inactive".into()));
        }
        if let Some(iss) = m.get("iss").and_then(Value::as_str) {
            if iss.trim_end_matches('/') != self.p.issuer.trim_end_matches('/') {
                return Err(IdpError::Invalid("bearer token of another issuer".into()));
            }
        }
        if m.contains_key("aud") && !self.audience_ok(&m) {
            return Err(IdpError::Invalid("bearer token for another audience".into()));
        }
        self.principal(&m, crate::now())
    }

    fn audience_ok(&self, m: &Map<String, Value>) -> bool {
        match m.get("aud") {
            Some(Value::String(a)) => self.audiences.contains(a),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).any(|a| self.audiences.iter().any(|x| x == a)),
            _ => false,
        }
    }

    /// Identity from verified claims or an introspection reply: a token without `sub`, or whose `sub` is its
    /// `client_id`, belongs to a machine client, named by its client id.
    fn principal(&self, m: &Map<String, Value>, now: i64) -> Result<Principal, IdpError> {
        let text = |k: &str| m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let client_id = text("client_id").or_else(|| text("azp"));
        let (user, client) = match (text("sub"), client_id) {
            (Some(sub), Some(cid)) if sub == cid => (cid, true),
            (Some(sub), _) => (sub, false),
            (None, Some(cid)) => (cid, true),
            (None, None) => return Err(IdpError::Invalid("bearer token names no subject or client".into())),
        };
        let exp = m.get("exp").and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f as i64)));
        let scopes = match m.get("scope").or_else(|| m.get("scp")) {
            Some(Value::String(s)) => s.split(' ').filter(|s| !s.is_empty()).map(String::from).collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
            _ => Vec::new(),
        };
        Ok(Principal {
            identity: self.p.claims.identity(user, m),
            client,
            scopes,
            // An introspection reply without `exp`: judged anew once the cache entry lapses.
            exp: exp.unwrap_or(now + 3600),
        })
    }
}
