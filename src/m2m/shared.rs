//! The Redis copy of each provider's token (`m2m_token:{PROVIDER}:{slot}`): what every replica reads before
//! it considers calling the IdP, and what the one leader writes after it did. The token is sealed under the
//! key ring (a Redis dump yields no usable token), bound to its key: a value copied under another
//! provider's key does not open.

use sha2::{Digest, Sha256};

use super::token::CachedToken;
use crate::crypto::KeyRing;
use crate::store::{Redis, StoreError};

/// The AEAD field name of the sealed token.
const FIELD: &str = "accessToken";

/// Which token a slot holds: one per issuer, client id and scope (16 hex digits of their SHA-256).
pub fn slot(issuer: &str, client_id: &str, scope: Option<&str>) -> String {
    let digest = Sha256::digest(format!("{}\n{client_id}\n{}", issuer.trim_end_matches('/'), scope.unwrap_or("")));
    hex::encode(&digest[..8])
}

/// The token Redis holds for `provider`; a missing key, an unreadable value or one that does not open
/// under this key ring is `None` (the caller fetches a new one, which overwrites it).
pub async fn read(
    redis: &Redis,
    ring: &KeyRing,
    provider: &str,
    slot: &str,
) -> Result<Option<CachedToken>, StoreError> {
    let key = crate::keys::m2m_token(provider, slot);
    let raw: Option<String> = redis.read(redis::cmd("GET").arg(&key)).await?;
    let Some(mut t) = raw.and_then(|text| CachedToken::from_json(provider, &text)) else {
        return Ok(None);
    };
    match ring.decrypt(&key, FIELD, &t.access_token) {
        Ok(plain) => {
            t.access_token = plain;
            Ok(Some(t))
        }
        Err(e) => {
            tracing::warn!(provider, error = %e, "m2m token in redis does not open under this key ring: ignored");
            Ok(None)
        }
    }
}

/// Why the leader's token was not shared (each replica then fetches its own).
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sealing the token: {0}")]
    Seal(#[from] crate::crypto::CryptoError),
}

/// Stores `token`, sealed, with TTL = its remaining lifetime at `now` (at least 60 s).
pub async fn write(redis: &Redis, ring: &KeyRing, token: &CachedToken, slot: &str, now: i64) -> Result<(), ShareError> {
    let key = crate::keys::m2m_token(&token.token_provider, slot);
    let sealed = ring.encrypt(&key, FIELD, &token.access_token)?;
    let stored = CachedToken { access_token: sealed, ..token.clone() };
    let mut cmd = redis::cmd("SET");
    cmd.arg(&key).arg(stored.to_json()).arg("EX").arg(token.redis_ttl_secs(now));
    Ok(redis.query::<()>(&cmd).await?)
}

/// Removes the shared token (admin "forget"): the next caller anywhere fetches a new one.
pub async fn delete(redis: &Redis, provider: &str, slot: &str) -> Result<bool, StoreError> {
    let n: i64 = redis.query(redis::cmd("DEL").arg(crate::keys::m2m_token(provider, slot))).await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_names_issuer_client_and_scope() {
        let a = slot("https://idp.example.com/", "gateway", None);
        assert_eq!(a, slot("https://idp.example.com", "gateway", None), "a trailing slash is the same issuer");
        assert_eq!(a.len(), 16);
        assert_ne!(a, slot("https://other.example.com", "gateway", None));
        assert_ne!(a, slot("https://idp.example.com", "gateway-2", None));
        assert_ne!(a, slot("https://idp.example.com", "gateway", Some("introspect")));
    }
}
