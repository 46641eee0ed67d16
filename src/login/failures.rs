//! Failed logins per client in `auth:failures:{client}`: past `max_failures` within `failure_window` the
//! client gets 429 until the window ends.

use crate::store::{Redis, StoreError};

use crate::keys::auth_failures as key;

/// Seconds the client must still wait, when it is over the limit.
pub async fn blocked(redis: &Redis, client: &str, max: u32) -> Result<Option<i64>, StoreError> {
    let mut p = redis::pipe();
    p.cmd("GET").arg(key(client)).cmd("TTL").arg(key(client));
    let (count, ttl): (Option<u32>, i64) = redis.pipeline(&p).await?;
    Ok((count.unwrap_or(0) >= max).then_some(ttl.max(1)))
}

/// Counts one failure; the window starts with the first.
pub async fn record(redis: &Redis, client: &str, window_secs: u64) {
    let mut p = redis::pipe();
    p.cmd("INCR").arg(key(client)).ignore().cmd("EXPIRE").arg(key(client)).arg(window_secs).arg("NX").ignore();
    if let Err(e) = redis.pipeline::<()>(&p).await {
        tracing::warn!(error = %e, "could not count a login failure");
    }
}
