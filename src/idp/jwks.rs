//! The provider's signing keys (JWKS), cached in process. Fetched at start; again when the set is no
//! longer fresh (its `Cache-Control: max-age`, bounded, see [`super::freshness`]), so a key the IdP
//! withdraws stops verifying within that bound; and when a token names a `kid` we do not know (key
//! rotation), at most once per [`MIN_REFETCH`], so a flood of tokens with made-up kids cannot turn into a
//! flood of JWKS requests. While the IdP cannot be reached the last set is used, and asked for again every
//! [`MIN_REFETCH`].

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::DecodingKey;

use super::discovery::Discovery;
use super::freshness;
use super::transport::{Kind, Reply, Transport};
use super::IdpError;

/// Fewest seconds between two JWKS fetches triggered by unknown kids, or retried after a failure.
pub const MIN_REFETCH: Duration = freshness::RETRY;

#[derive(serde::Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
struct Cached {
    set: Option<Arc<JwkSet>>,
    fetched: Option<Instant>,
    fresh_until: Option<Instant>,
    /// Counts the sets fetched: what was verified under one generation is not trusted under the next.
    generation: u64,
}

impl Cached {
    fn fresh(&self) -> bool {
        self.fresh_until.is_some_and(|t| Instant::now() < t)
    }
}

#[derive(Debug)]
pub struct Jwks {
    cached: RwLock<Cached>,
    /// Serialises fetches: concurrent misses share one.
    fetching: tokio::sync::Mutex<()>,
    /// The provider's `metadata_max_age`.
    cap: Duration,
}

impl Jwks {
    pub fn new(cap: Duration) -> Self {
        Self { cached: RwLock::default(), fetching: tokio::sync::Mutex::new(()), cap }
    }

    fn snapshot(&self) -> Cached {
        self.cached.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The generation of the key set, while it is fresh; `None` when the next key lookup would fetch.
    /// A verification remembered under a generation holds exactly as long as this still returns it
    /// (see [`super::verified`]).
    pub fn fresh_generation(&self) -> Option<u64> {
        let c = self.cached.read().unwrap_or_else(|e| e.into_inner());
        c.fresh().then_some(c.generation)
    }

    /// The key for `kid` (or the only key, for a token without kid).
    pub async fn key(&self, kid: Option<&str>, http: &Transport, disc: &Discovery) -> Result<DecodingKey, IdpError> {
        let c = self.snapshot();
        if c.fresh() {
            if let Some(k) = c.set.as_deref().and_then(|s| find(s, kid)) {
                return k;
            }
        }
        let _guard = self.fetching.lock().await;
        // Someone may have fetched while we waited.
        let c = self.snapshot();
        let known = c.set.as_deref().and_then(|s| find(s, kid));
        if c.fresh() {
            if let Some(k) = known {
                return k;
            }
            if c.fetched.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
                return Err(IdpError::Invalid("token signed by an unknown key".into()));
            }
        }
        match self.fetch(http, disc).await {
            Ok(fresh) => {
                find(&fresh, kid).unwrap_or_else(|| Err(IdpError::Invalid("token signed by an unknown key".into())))
            }
            // Stale keys are better than none while the IdP is away; ask again soon.
            Err(e) if known.is_some() => {
                tracing::warn!(error = %e, "could not refresh the provider's keys; using the last set for now");
                let mut w = self.cached.write().unwrap_or_else(|e| e.into_inner());
                w.fresh_until = Some(Instant::now() + MIN_REFETCH);
                known.unwrap_or_else(|| Err(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Fetches the key set now (start-up, a miss, or no longer fresh).
    pub async fn fetch(&self, http: &Transport, disc: &Discovery) -> Result<Arc<JwkSet>, IdpError> {
        let ep = disc.endpoints(http).await?;
        let (raw, headers) = match http.send_with_headers::<RawSet>(Kind::Jwks, http.client.get(&ep.jwks_uri)).await? {
            (Reply::Ok(s), h) => (s, h),
            (Reply::Refused { status, .. }, _) => {
                return Err(IdpError::Unavailable(format!("jwks answered HTTP {status}")))
            }
        };
        // Keys are read one by one: a key of a type we cannot parse (IdPs publish encryption keys and
        // new curves too) must not make the whole set unusable.
        let keys: Vec<Jwk> = raw.keys.into_iter().filter_map(|k| serde_json::from_value(k).ok()).collect();
        if keys.is_empty() {
            return Err(IdpError::Unavailable("jwks has no usable key".into()));
        }
        let set = Arc::new(JwkSet { keys });
        let now = Instant::now();
        let mut c = self.cached.write().unwrap_or_else(|e| e.into_inner());
        *c = Cached {
            set: Some(set.clone()),
            fetched: Some(now),
            fresh_until: Some(now + freshness::fresh_for(&headers, self.cap)),
            generation: c.generation + 1,
        };
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
