//! A short Redis lock: `SET key owner NX PX ttl` with a random owner, released only by its owner through a
//! compare-and-delete script, so a holder that outlived its TTL never frees someone else's lock. One key:
//! Redis Cluster safe. The one lock module: the M2M leader ([`LeaderLock`], `lock:m2m_token:{PROVIDER}:{slot}`) and
//! session refreshes (`lock:refresh:{id}`, taken by `idp::refresh`); the keys themselves live in [`crate::keys`].

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::store::{Redis, StoreError};

/// Deletes KEYS[1] only while it still holds ARGV[1].
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0",
    )
});

/// A held lock. Dropping it without [`RedisLock::release`] leaves it to expire after its TTL.
#[derive(Debug)]
pub struct RedisLock {
    key: String,
    owner: String,
}

impl RedisLock {
    /// Tries once; `None` when someone else holds it.
    pub async fn try_acquire(redis: &Redis, key: String, ttl: Duration) -> Result<Option<Self>, StoreError> {
        let owner = hex::encode(rand::random::<[u8; 16]>());
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> =
            redis.query(redis::cmd("SET").arg(&key).arg(&owner).arg("NX").arg("PX").arg(ttl_ms)).await?;
        Ok(set.map(|_| Self { key, owner }))
    }

    /// The random value this holder wrote.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Deletes the lock if this holder still owns it; `false` when it had expired or passed to another.
    pub async fn release(self, redis: &Redis) -> Result<bool, StoreError> {
        let mut inv = RELEASE.prepare_invoke();
        inv.key(&self.key).arg(&self.owner);
        let deleted: i64 = redis.script(inv).await?;
        Ok(deleted == 1)
    }

    /// A lock on `key` with a chosen owner value, without touching Redis (tests of release).
    pub fn assume(key: String, owner: &str) -> Self {
        Self { key, owner: owner.to_string() }
    }
}

/// The per-provider M2M leader lock `lock:m2m_token:{PROVIDER}:{slot}`. A leader that stalls past the TTL
/// loses the lock to another replica; its late release must then not delete the new owner's lock.
pub struct LeaderLock;

impl LeaderLock {
    /// Tries once to take the lock for `provider`'s `slot`; `None` when someone else holds it.
    pub async fn try_acquire(
        redis: &Redis,
        provider: &str,
        slot: &str,
        ttl: Duration,
    ) -> Result<Option<RedisLock>, StoreError> {
        RedisLock::try_acquire(redis, crate::keys::m2m_lock(provider, slot), ttl).await
    }

    /// The lock with a chosen owner value, without touching Redis (tests of release).
    pub fn assume(provider: &str, slot: &str, owner: &str) -> RedisLock {
        RedisLock::assume(crate::keys::m2m_lock(provider, slot), owner)
    }
}
