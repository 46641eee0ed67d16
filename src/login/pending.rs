//! Bounds on pending logins (issue 10, hole 3): each `/oauth2/login` stores a `pkce:{state}` record for
//! ten minutes, so without bounds anyone can fill Redis (the shipped Redis refuses writes when full, and
//! then every check fails). `rd` is capped by the caller; here logins are counted per client in
//! `login_starts:{client}` (per `login.pending_window`) and for everyone in `login_starts_total` (per login
//! lifetime), each a counter with a TTL. One key per command group, so Redis Cluster is fine.

use crate::config::LoginConfig;
use crate::keys::{login_starts, login_starts_total};
use crate::store::{Redis, StoreError};

/// Why a login may not start now; the seconds until it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This client started `login.max_pending_per_client` logins within the window.
    Client(u64),
    /// All clients together reached `login.max_pending_total`.
    Total(u64),
}

impl Refused {
    pub fn retry_after(self) -> u64 {
        match self {
            Self::Client(s) | Self::Total(s) => s,
        }
    }

    pub fn outcome(self) -> &'static str {
        match self {
            Self::Client(_) => "rate_limited",
            Self::Total(_) => "too_many_pending",
        }
    }
}

/// Counts one login start of `client`; `Ok(Some(_))` when it is over a limit and must not start.
/// The total only counts logins the per-client limit let through, so one client cannot use it up.
pub async fn admit(
    redis: &Redis,
    client: &str,
    cfg: &LoginConfig,
    lifetime_secs: u64,
) -> Result<Option<Refused>, StoreError> {
    let (n, ttl) = bump(redis, &login_starts(client), cfg.pending_window.as_secs().max(1)).await?;
    if n > u64::from(cfg.max_pending_per_client) {
        return Ok(Some(Refused::Client(ttl)));
    }
    let (n, ttl) = bump(redis, &login_starts_total(), lifetime_secs.max(1)).await?;
    if n > u64::from(cfg.max_pending_total) {
        return Ok(Some(Refused::Total(ttl)));
    }
    Ok(None)
}

/// INCR with the window starting at the first count; the count and the seconds left in the window.
async fn bump(redis: &Redis, key: &str, window: u64) -> Result<(u64, u64), StoreError> {
    let mut p = redis::pipe();
    p.cmd("INCR").arg(key).cmd("EXPIRE").arg(key).arg(window).arg("NX").ignore().cmd("TTL").arg(key);
    let (n, ttl): (u64, i64) = redis.pipeline(&p).await?;
    Ok((n, u64::try_from(ttl).unwrap_or(window).max(1)))
}
