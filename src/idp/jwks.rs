//! The provider's signing keys (JWKS), cached in process. Fetched at start and again when a token names
//! a `kid` we do not know (key rotation), at most once per [`MIN_REFETCH`], so a flood of tokens with
//! made-up kids cannot turn into a flood of JWKS requests.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::DecodingKey;

use super::discovery::Discovery;
use super::transport::{Kind, Reply, Transport};
use super::IdpError;

/// Fewest seconds between two JWKS fetches triggered by unknown kids.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);

#[derive(serde::Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Debug, Default)]
struct Cached {
    set: Option<Arc<JwkSet>>,
    fetched: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Jwks {
    cached: RwLock<Cached>,
    /// Serialises fetches: concurrent misses share one.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    fn snapshot(&self) -> (Option<Arc<JwkSet>>, Option<Instant>) {
        let c = self.cached.read().unwrap_or_else(|e| e.into_inner());
        (c.set.clone(), c.fetched)
    }

    /// The key for `kid` (or the only key, for a token without kid).
    pub async fn key(&self, kid: Option<&str>, http: &Transport, disc: &Discovery) -> Result<DecodingKey, IdpError> {
        let (set, _) = self.snapshot();
        if let Some(k) = set.as_deref().and_then(|s| find(s, kid)) {
            return k;
        }
        let _guard = self.fetching.lock().await;
        // Someone may have fetched while we waited.
        let (set, fetched) = self.snapshot();
        if let Some(k) = set.as_deref().and_then(|s| find(s, kid)) {
            return k;
        }
        if set.is_some() && fetched.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return Err(IdpError::Invalid("token signed by an unknown key".into()));
        }
        let fresh = self.fetch(http, disc).await?;
        find(&fresh, kid).unwrap_or_else(|| Err(IdpError::Invalid("token signed by an unknown key".into())))
    }

    /// Fetches the key set now (start-up, or a miss).
    pub async fn fetch(&self, http: &Transport, disc: &Discovery) -> Result<Arc<JwkSet>, IdpError> {
        let ep = disc.endpoints(http).await?;
        let raw: RawSet = match http.send(Kind::Jwks, http.client.get(&ep.jwks_uri)).await? {
            Reply::Ok(s) => s,
            Reply::Refused { status, .. } => return Err(IdpError::Unavailable(format!("jwks answered HTTP {status}"))),
        };
        // Keys are read one by one: a key of a type we cannot parse (IdPs publish encryption keys and
        // new curves too) must not make the whole set unusable.
        let keys: Vec<Jwk> = raw.keys.into_iter().filter_map(|k| serde_json::from_value(k).ok()).collect();
        if keys.is_empty() {
            return Err(IdpError::Unavailable("jwks has no usable key".into()));
        }
        let set = Arc::new(JwkSet { keys });
        let mut c = self.cached.write().unwrap_or_else(|e| e.into_inner());
        c.set = Some(set.clone());
        c.fetched = Some(Instant::now());
        Ok(set)
    }
}

fn find(set: &JwkSet, kid: Option<&str>) -> Option<Result<DecodingKey, IdpError>> {
    let jwk = match kid {
        Some(kid) => set.find(kid)?,
        None if set.keys.len() == 1 => set.keys.first()?,
        None => return None,
    };
    Some(DecodingKey::from_jwk(jwk).map_err(|e| IdpError::Invalid(format!("unusable signing key: {e}"))))
}
