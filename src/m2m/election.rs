//! Who calls the token endpoint: across all replicas, the one holding `lock:m2m_token:{PROVIDER}:{slot}`. Everyone
//! else re-reads the shared token `follower_retries` times, `follower_delay` apart, also retrying the lock
//! so a dead leader is replaced once its lock expires, then gives up (fail closed). The leader re-reads the
//! shared token after taking the lock, because another leader may have stored one just before.

use std::time::Duration;

use tracing::Instrument;

use std::collections::HashMap;
use std::sync::Arc;

use super::client::{FetchError, TokenClient};
use super::shared;
use super::token::CachedToken;
use crate::config::M2mConfig;
use crate::crypto::KeyRing;
use crate::lock::LeaderLock;
use crate::store::{Redis, StoreError};

const OUTCOME_SUCCESS: &str = "success";
const OUTCOME_FOLLOWER_TIMEOUT: &str = "follower_timeout";

/// What every acquisition needs, shared by a manager's clones: Redis, the key ring that seals the shared
/// token, the M2M settings and one token client per provider.
pub(super) struct Election {
    pub(super) redis: Redis,
    /// The live key ring (shared with the session store, so a reload reaches it).
    pub(super) ring: Arc<arc_swap::ArcSwap<KeyRing>>,
    pub(super) cfg: M2mConfig,
    /// Swapped by a config reload (a new client secret); tokens and the refresher carry on.
    pub(super) clients: arc_swap::ArcSwap<HashMap<String, TokenClient>>,
}

/// What token the caller will take from Redis instead of asking the IdP.
#[derive(Debug, Clone, Copy)]
pub(super) enum Want {
    /// One a caller can use now: more than `safety_margin` left.
    Usable,
    /// A usable one not due for refresh, or one that expires later than `than` (another replica already
    /// replaced the token the caller saw).
    Newer { than: Option<i64> },
    /// A usable one received at or after this unix millisecond (a forced refresh: whoever led since the
    /// request began already fetched for everyone).
    IssuedSince(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("no m2m client for provider {0:?}")]
    UnknownProvider(String),
    #[error("redis: {0}")]
    Redis(#[from] StoreError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("no token from the leader within {0:?}")]
    FollowerTimeout(Duration),
    #[error("m2m acquisition task failed: {0}")]
    Task(String),
}

impl Election {
    /// Where `provider`'s token lives in Redis (`None` for a provider it does not know).
    pub(super) fn slot(&self, provider: &str) -> Option<String> {
        self.clients.load().get(provider).map(|c| c.slot().to_string())
    }

    /// Whether `t` can be handed out at `now`: more than its (lifetime-scaled) safety margin left.
    pub(super) fn usable_now(&self, t: &CachedToken, now: i64) -> bool {
        t.is_fresh(now, t.margin(secs(self.cfg.safety_margin)))
    }

    /// Seconds left at which `t` is due for a background refresh (lifetime-scaled `refresh_before`).
    pub(super) fn refresh_before_secs(&self, t: &CachedToken) -> i64 {
        t.refresh_before(secs(self.cfg.refresh_before))
    }

    pub(super) fn count(&self, provider: &str, outcome: &'static str) {
        metrics::counter!("portcullis_m2m_refresh_total", "provider" => provider.to_string(), "outcome" => outcome)
            .increment(1);
    }

    fn accepts(&self, want: Want, t: &CachedToken, now: i64) -> bool {
        if !self.usable_now(t, now) {
            return false;
        }
        match want {
            Want::Usable => true,
            Want::Newer { than } => {
                t.expires_in(now) > self.refresh_before_secs(t) || than.is_some_and(|e| t.expires_at > e)
            }
            Want::IssuedSince(ms) => t.issued_at_ms.is_some_and(|i| i >= ms),
        }
    }

    /// A token satisfying `want`, from Redis or, as the leader, from the IdP.
    pub(super) async fn acquire(&self, provider: &str, want: Want) -> Result<CachedToken, AcquireError> {
        let span = tracing::info_span!("m2m_acquire", provider, ?want);
        self.acquire_inner(provider, want).instrument(span).await
    }

    async fn acquire_inner(&self, provider: &str, want: Want) -> Result<CachedToken, AcquireError> {
        let Some(slot) = self.slot(provider) else {
            return Err(AcquireError::UnknownProvider(provider.to_string()));
        };
        let retries = self.cfg.follower_retries;
        for attempt in 0..=retries {
            if attempt > 0 {
                tokio::time::sleep(self.cfg.follower_delay).await;
            }
            if let Some(t) = shared::read(&self.redis, &self.ring.load_full(), provider, &slot).await? {
                if self.accepts(want, &t, crate::now()) {
                    return Ok(t);
                }
            }
            if let Some(lock) = LeaderLock::try_acquire(&self.redis, provider, &slot, self.cfg.lock_ttl).await? {
                let out = self.lead(provider, want).await;
                match lock.release(&self.redis).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(provider, "m2m lock expired before the leader released it"),
                    Err(e) => tracing::warn!(provider, error = %e, "m2m lock release failed; it expires by itself"),
                }
                return out;
            }
            tracing::debug!(provider, attempt, "m2m lock held elsewhere: waiting for the leader's token");
        }
        let waited = self.cfg.follower_delay.saturating_mul(retries);
        self.count(provider, OUTCOME_FOLLOWER_TIMEOUT);
        tracing::warn!(provider, ?waited, "no m2m token from the leader: failing closed");
        Err(AcquireError::FollowerTimeout(waited))
    }

    /// Holding the lock: double-check Redis, then call the IdP and share the result.
    async fn lead(&self, provider: &str, want: Want) -> Result<CachedToken, AcquireError> {
        let client =
            self.clients.load().get(provider).cloned().ok_or_else(|| AcquireError::UnknownProvider(provider.into()))?;
        if let Some(t) = shared::read(&self.redis, &self.ring.load_full(), provider, client.slot()).await? {
            if self.accepts(want, &t, crate::now()) {
                return Ok(t);
            }
        }
        // Never outlive the lock while calling: past it another replica may lead, and calls would double.
        let deadline = client.timeout().min(self.cfg.lock_ttl);
        let fetched = match tokio::time::timeout(deadline, client.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(deadline)),
        };
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                self.count(provider, e.outcome());
                tracing::warn!(provider, error = %e, "m2m token request failed");
                return Err(e.into());
            }
        };
        self.count(provider, OUTCOME_SUCCESS);
        let now_ms = crate::now_ms();
        let now = now_ms.div_euclid(1000);
        let lifetime = i64::try_from(fetched.expires_in.as_secs()).unwrap_or(i64::MAX / 2);
        let token = CachedToken {
            token_provider: provider.to_string(),
            access_token: fetched.access_token,
            expires_at: now.saturating_add(lifetime),
            issued_at_ms: Some(now_ms),
        };
        if lifetime <= 0 {
            tracing::error!(provider, lifetime, "m2m token arrived already expired: callers cannot use it");
        }
        if let Err(e) = shared::write(&self.redis, &self.ring.load_full(), &token, client.slot(), now).await {
            tracing::warn!(provider, error = %e, "could not share the m2m token: other replicas will fetch their own");
        }
        tracing::info!(provider, expires_in = lifetime, "m2m token fetched");
        Ok(token)
    }
}

/// Whole seconds of `d`, saturating.
pub(super) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}
