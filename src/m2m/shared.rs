//! The Redis copy of each provider's token (`m2m_token:{PROVIDER}`): what every replica reads before it
//! considers calling the IdP, and what the one leader writes after it did.

use crate::store::{Redis, StoreError};

use super::token::CachedToken;

pub use crate::keys::m2m_token as token_key;

/// The token Redis holds for `provider`; a missing key or an unreadable value is `None`.
pub async fn read(redis: &Redis, provider: &str) -> Result<Option<CachedToken>, StoreError> {
    let raw: Option<String> = redis.query(redis::cmd("GET").arg(token_key(provider))).await?;
    Ok(raw.and_then(|text| CachedToken::from_json(provider, &text)))
}

/// Stores `token` with TTL = its remaining lifetime at `now` (at least 60 s).
pub async fn write(redis: &Redis, token: &CachedToken, now: i64) -> Result<(), StoreError> {
    let mut cmd = redis::cmd("SET");
    cmd.arg(token_key(&token.token_provider)).arg(token.to_json()).arg("EX").arg(token.redis_ttl_secs(now));
    redis.query::<()>(&cmd).await
}

/// Removes the shared token (admin "forget"): the next caller anywhere fetches a new one.
pub async fn delete(redis: &Redis, provider: &str) -> Result<bool, StoreError> {
    let n: i64 = redis.query(redis::cmd("DEL").arg(token_key(provider))).await?;
    Ok(n > 0)
}
