//! The per-provider leader lock `lock:m2m_token:{PROVIDER}` (a [`RedisLock`]). A leader that stalls past the
//! TTL loses the lock to another replica; its late release must then not delete the new owner's lock.

use std::time::Duration;

use crate::lock::RedisLock;
use crate::store::{Redis, StoreError};

/// `lock:m2m_token:{PROVIDER}`
pub fn lock_key(provider: &str) -> String {
    format!("lock:m2m_token:{provider}")
}

/// The leader lock of one provider.
pub struct LeaderLock;

impl LeaderLock {
    /// Tries once to take the lock for `provider`; `None` when someone else holds it.
    pub async fn try_acquire(redis: &Redis, provider: &str, ttl: Duration) -> Result<Option<RedisLock>, StoreError> {
        RedisLock::try_acquire(redis, lock_key(provider), ttl).await
    }

    /// The lock for `provider` with a chosen owner value, without touching Redis (tests of release).
    pub fn assume(provider: &str, owner: &str) -> RedisLock {
        RedisLock::assume(lock_key(provider), owner)
    }
}
