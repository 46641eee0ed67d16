//! The per-provider leader lock `lock:m2m_token:{PROVIDER}`: `SET NX PX` with a random owner value, released
//! only by its owner through a compare-and-delete script. A leader that stalls past the TTL loses the lock
//! to another replica; its late release must then not delete the new owner's lock.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::store::{invoke, Redis, StoreError};

/// Deletes KEYS[1] only while it still holds ARGV[1].
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0",
    )
});

/// `lock:m2m_token:{PROVIDER}`
pub fn lock_key(provider: &str) -> String {
    format!("lock:m2m_token:{provider}")
}

/// A held lock. Dropping it without [`LeaderLock::release`] leaves it to expire after its TTL.
#[derive(Debug)]
pub struct LeaderLock {
    key: String,
    owner: String,
}

impl LeaderLock {
    /// Tries once to take the lock for `provider`; `None` when someone else holds it.
    pub async fn try_acquire(redis: &Redis, provider: &str, ttl: Duration) -> Result<Option<Self>, StoreError> {
        let key = lock_key(provider);
        let owner = hex::encode(rand::random::<[u8; 16]>());
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(&owner).arg("NX").arg("PX").arg(ttl_ms);
        let set: Option<String> = redis.query(&cmd).await?;
        Ok(set.map(|_| Self { key, owner }))
    }

    /// The random value this holder wrote.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Deletes the lock if this holder still owns it; `false` when it had expired or passed to another.
    pub async fn release(self, redis: &Redis) -> Result<bool, StoreError> {
        let mut inv = invoke(&RELEASE);
        inv.key(&self.key).arg(&self.owner);
        let deleted: i64 = redis.script(inv).await?;
        Ok(deleted == 1)
    }

    /// A lock for `provider` with a chosen owner value, without touching Redis (tests of release).
    pub fn assume(provider: &str, owner: &str) -> Self {
        Self { key: lock_key(provider), owner: owner.to_string() }
    }
}
