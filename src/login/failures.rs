//! Failed logins per client in `auth:failures:{client}`: past `max_failures` within `failure_window` the
//! client gets 429 until the window ends.

use std::net::SocketAddr;

use axum::http::HeaderMap;

use crate::store::{Redis, StoreError};

use crate::keys::auth_failures as key;

/// The client: the address Envoy appended last to `x-forwarded-for` (the one a client cannot forge when
/// Envoy is the edge), else the peer.
pub fn client(headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    let forwarded = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 64);
    match (forwarded, peer) {
        (Some(f), _) => f.to_string(),
        (None, Some(p)) => p.ip().to_string(),
        (None, None) => "unknown".into(),
    }
}

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
