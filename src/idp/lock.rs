//! A short Redis lock: `SET key owner NX PX ttl`, released only by its owner (compare-and-delete), so a
//! holder that outlived its TTL never frees someone else's lock. One key: Redis Cluster safe.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::store::{Redis, StoreError};

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

pub struct Lock {
    key: String,
    owner: String,
}

/// The lock key for a session's refresh.
pub fn refresh_key(session_id: &str) -> String {
    format!("lock:refresh:{session_id}")
}

impl Lock {
    /// Tries once; `None` when someone else holds it.
    pub async fn try_acquire(redis: &Redis, key: String, ttl: Duration) -> Result<Option<Lock>, StoreError> {
        let owner = hex::encode(rand::random::<[u8; 16]>());
        let ok: Option<String> = redis
            .query(redis::cmd("SET").arg(&key).arg(&owner).arg("NX").arg("PX").arg(ttl.as_millis() as u64))
            .await?;
        Ok(ok.map(|_| Lock { key, owner }))
    }

    pub async fn release(self, redis: &Redis) {
        let mut inv = RELEASE.prepare_invoke();
        inv.key(&self.key).arg(&self.owner);
        if let Err(e) = redis.script::<i64>(inv).await {
            // The TTL frees it soon enough.
            tracing::warn!(error = %e, "could not release a refresh lock");
        }
    }
}
