//! ID tokens already verified, remembered per provider. A session presents the same ID token on every
//! check, and checking its signature again each time was the largest part of an `every_request` check's
//! CPU; revalidation with the IdP (introspection, Graph) still happens on every check.
//!
//! A remembered verification is only as good as the key set that made it: it is used only while that set
//! (its [`super::jwks::Jwks::fresh_generation`]) is still the fresh one, so a key the IdP withdraws stops
//! verifying exactly when it would without this cache, at the next JWKS fetch. An entry also goes at the
//! token's `exp`, and the number of entries is bounded. The key is the token's SHA-256: the claims are a
//! function of the token alone (issuer and audience are the provider's), and callers still check that
//! they name the session's user.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::future::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use super::id_token::IdToken;

/// Most verifications remembered per provider (an ID token's claims are about a kilobyte).
const MAX_ENTRIES: u64 = 10_000;

/// A token's cache key.
pub type TokenDigest = [u8; 32];

#[derive(Clone)]
struct Entry {
    token: Arc<IdToken>,
    /// The key-set generation that verified it.
    keys: u64,
}

/// Evicts an entry at its token's `exp`.
struct AtExp;

impl AtExp {
    fn left(e: &Entry) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Duration::from_secs(u64::try_from(e.token.exp).unwrap_or(0)).saturating_sub(now)
    }
}

impl Expiry<TokenDigest, Entry> for AtExp {
    fn expire_after_create(&self, _: &TokenDigest, e: &Entry, _: Instant) -> Option<Duration> {
        Some(Self::left(e))
    }
}

/// One provider's remembered verifications.
pub struct Verified {
    cache: Cache<TokenDigest, Entry>,
}

impl Default for Verified {
    fn default() -> Self {
        Self { cache: Cache::builder().max_capacity(MAX_ENTRIES).expire_after(AtExp).build() }
    }
}

impl Verified {
    pub fn digest(token: &str) -> TokenDigest {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The verified token, if it was verified under `keys`, the generation of the key set fresh now
    /// (`None`, no fresh set: nothing is trusted).
    pub async fn get(&self, digest: &TokenDigest, keys: Option<u64>) -> Option<Arc<IdToken>> {
        let keys = keys?;
        let e = self.cache.get(digest).await?;
        (e.keys == keys).then_some(e.token)
    }

    /// Remembers `token`, verified under key-set generation `keys` (read before the verification began,
    /// so a set fetched meanwhile makes the entry stale rather than wrongly current). An expired token is
    /// not remembered: its verification is redone, as the caller refreshes it or ends the session.
    pub async fn insert(&self, digest: TokenDigest, token: Arc<IdToken>, keys: u64, now: i64) {
        if token.exp > now {
            self.cache.insert(digest, Entry { token, keys }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    fn token(exp: i64) -> Arc<IdToken> {
        Arc::new(IdToken { claims: Map::new(), exp })
    }

    #[tokio::test]
    async fn a_verification_holds_only_under_the_key_set_that_made_it() {
        let v = Verified::default();
        let now = crate::now();
        let d = Verified::digest("header.payload.signature");
        assert!(v.get(&d, Some(1)).await.is_none(), "nothing remembered yet");
        v.insert(d, token(now + 3600), 1, now).await;
        assert!(v.get(&d, Some(1)).await.is_some(), "same token, same key set");
        assert!(v.get(&d, Some(2)).await.is_none(), "a new key set is fetched: verify again");
        assert!(v.get(&d, None).await.is_none(), "the key set is stale: verify again (and fetch)");
        assert!(v.get(&Verified::digest("another.token.sig"), Some(1)).await.is_none());
    }

    #[tokio::test]
    async fn expired_tokens_are_not_remembered() {
        let v = Verified::default();
        let now = crate::now();
        let d = Verified::digest("a.b.c");
        v.insert(d, token(now), 1, now).await;
        assert!(v.get(&d, Some(1)).await.is_none());
        assert!((59..=60).contains(&AtExp::left(&Entry { token: token(now + 60), keys: 1 }).as_secs()), "gone at exp");
    }
}
