//! The manager each replica holds: an in-process copy of every provider's token so the Check hot path does
//! not touch Redis while the token is fresh, and single-flight acquisition (moka's `try_get_with`) so
//! concurrent callers in one process share one trip through the election. That trip runs in its own task:
//! a caller dropped mid-call (Envoy's ext_authz timeout cancels the Check) must not abandon the IdP call and
//! leave its lock to expire while every replica waits. Also the admin operations (status, forced refresh,
//! forget) and the metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::future::Cache;
use moka::Expiry;
use tracing::Instrument;

use super::client::TokenClient;
use super::election::{secs, AcquireError, Election, Want};
use super::token::CachedToken;
use super::{shared, M2mError, M2mSource};
use crate::config::M2mConfig;
use crate::crypto::KeyRing;
use crate::store::{Redis, StoreError};

/// One replica's M2M token manager. Cheap to clone (all clones share the cache); share it as
/// `Arc<M2mManager>` or `Arc<dyn M2mSource>`.
#[derive(Clone)]
pub struct M2mManager {
    /// Redis, the key ring, the clients and the rules of who calls the IdP.
    pub(super) election: Arc<Election>,
    /// Provider → token, each entry evicted when it enters the safety margin.
    local: Cache<String, CachedToken>,
}

/// What `portcullis m2m status` and the admin API show: never the token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProviderStatus {
    pub provider: String,
    /// Seconds left on the token in Redis, if one is there.
    pub shared_expires_in: Option<i64>,
    /// Seconds left on this process's copy, if it holds one.
    pub local_expires_in: Option<i64>,
    /// Someone holds `lock:m2m_token:{PROVIDER}:{slot}`: a token-endpoint call is in progress (or its leader died
    /// and the lock has not expired yet).
    pub locked: bool,
}

/// Evicts a local entry when it comes within `margin` of its expiry.
struct UntilMargin {
    margin: Duration,
}

impl UntilMargin {
    fn left(&self, t: &CachedToken) -> Duration {
        let margin = Duration::from_secs(u64::try_from(t.margin(secs(self.margin))).unwrap_or(0));
        let stale_at = Duration::from_secs(u64::try_from(t.expires_at).unwrap_or(0)).saturating_sub(margin);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        stale_at.saturating_sub(now)
    }
}

impl Expiry<String, CachedToken> for UntilMargin {
    fn expire_after_create(&self, _: &String, t: &CachedToken, _: Instant) -> Option<Duration> {
        Some(self.left(t))
    }
    fn expire_after_update(&self, _: &String, t: &CachedToken, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(self.left(t))
    }
}

impl M2mManager {
    /// `clients`: one resolved token client per provider id (the ids used in `m2m_token:{PROVIDER}:{slot}`);
    /// `ring` seals the shared token.
    pub fn new(redis: Redis, ring: Arc<KeyRing>, cfg: &M2mConfig, clients: HashMap<String, TokenClient>) -> Self {
        // No size bound: keys are the configured providers only, and a bound would bring moka's admission
        // policy, which may decline an insert.
        let local = Cache::builder().expire_after(UntilMargin { margin: cfg.safety_margin }).build();
        let election = Election {
            redis,
            ring: Arc::new(arc_swap::ArcSwap::new(ring)),
            cfg: cfg.clone(),
            clients: arc_swap::ArcSwap::from_pointee(clients),
        };
        Self { election: Arc::new(election), local }
    }

    /// Seals with the live key ring `ring` (the session store's) instead of a fixed one.
    pub fn sharing_ring(self, ring: Arc<arc_swap::ArcSwap<KeyRing>>) -> Self {
        let e = &self.election;
        let election = Election {
            redis: e.redis.clone(),
            ring,
            cfg: e.cfg.clone(),
            clients: arc_swap::ArcSwap::new(e.clients.load_full()),
        };
        Self { election: Arc::new(election), local: self.local }
    }

    /// Where `provider`'s token lives in Redis (`None` for a provider it does not know).
    pub fn slot(&self, provider: &str) -> Option<String> {
        self.election.slot(provider)
    }

    /// New token clients (a config reload changed a provider's client settings or secret).
    pub fn set_clients(&self, clients: HashMap<String, TokenClient>) {
        self.election.clients.store(Arc::new(clients));
    }

    /// The Redis key of `provider`'s shared token (operators and tests look at it).
    pub fn token_key(&self, provider: &str) -> Option<String> {
        self.slot(provider).map(|s| crate::keys::m2m_token(provider, &s))
    }

    /// The configured provider ids, sorted.
    pub fn providers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.election.clients.load().keys().cloned().collect();
        v.sort();
        v
    }

    pub(super) fn gauge(&self, provider: &str, t: Option<&CachedToken>) {
        let left = t.map_or(0, |t| t.expires_in(crate::now()).max(0));
        metrics::gauge!("portcullis_m2m_token_expires_in_seconds", "provider" => provider.to_string()).set(left as f64);
    }

    /// This process's fresh copy, if any (no Redis).
    pub(super) async fn local(&self, provider: &str) -> Option<CachedToken> {
        self.local.get(provider).await.filter(|t| self.election.usable_now(t, crate::now()))
    }

    pub(super) async fn keep(&self, t: &CachedToken) {
        self.local.insert(t.token_provider.clone(), t.clone()).await;
        self.gauge(&t.token_provider, Some(t));
    }

    /// A token with more than `safety_margin` left: from this process's copy, else through one shared
    /// acquisition per process. Fails closed.
    pub async fn usable(&self, provider: &str) -> Result<CachedToken, M2mError> {
        if !self.election.clients.load().contains_key(provider) {
            return Err(M2mError::Unavailable(format!("no m2m client for provider {provider:?}")));
        }
        // Twice at most: the local expiry and the unix clock may disagree by a fraction of a second.
        for _ in 0..2 {
            let t = self
                .local
                .try_get_with_by_ref(provider, self.acquire_detached(provider, Want::Usable))
                .await
                .map_err(|e| M2mError::Unavailable(e.to_string()))?;
            if self.election.usable_now(&t, crate::now()) {
                return Ok(t);
            }
            self.local.invalidate(provider).await;
        }
        Err(M2mError::Unavailable("the m2m token is within its safety margin".into()))
    }

    /// Fetches a new token through the same lock, whatever the cache holds (CLI and admin "refresh"). A token
    /// fetched after this request began (by another replica forced at the same moment) is taken instead of
    /// calling again: N replicas forced at once make one call.
    pub async fn force_refresh(&self, provider: &str) -> Result<CachedToken, M2mError> {
        let want = Want::IssuedSince(crate::now_ms());
        let t = self.acquire_detached(provider, want).await.map_err(|e| M2mError::Unavailable(e.to_string()))?;
        self.keep(&t).await;
        Ok(t)
    }

    /// [`Self::acquire`] in a task of its own, which finishes (stores the token, releases the lock) even when
    /// the caller is dropped.
    async fn acquire_detached(&self, provider: &str, want: Want) -> Result<CachedToken, AcquireError> {
        let (me, p) = (self.clone(), provider.to_string());
        let task = tokio::spawn(
            async move {
                let r = me.election.acquire(&p, want).await;
                if let Ok(t) = &r {
                    me.gauge(&p, Some(t));
                }
                r
            }
            .in_current_span(),
        );
        task.await.unwrap_or_else(|e| Err(AcquireError::Task(e.to_string())))
    }

    /// Drops the token everywhere (Redis and this process): the next caller fetches a new one.
    pub async fn forget(&self, provider: &str) -> Result<bool, StoreError> {
        self.local.invalidate(provider).await;
        self.gauge(provider, None);
        match self.slot(provider) {
            Some(slot) => shared::delete(&self.election.redis, provider, &slot).await,
            None => Ok(false),
        }
    }

    /// Per provider: what Redis and this process hold, as seconds left.
    pub async fn status(&self) -> Result<Vec<ProviderStatus>, StoreError> {
        let now = crate::now();
        let slots: Vec<(String, String)> =
            self.election.clients.load().iter().map(|(p, c)| (p.clone(), c.slot().to_string())).collect();
        let mut out = shared_status(&self.election.redis, &self.election.ring.load_full(), &slots, now).await?;
        for s in &mut out {
            s.local_expires_in = self.local.get(&s.provider).await.map(|t| t.expires_in(now));
        }
        Ok(out)
    }
}

/// What Redis holds for each `(provider, slot)` (no manager needed: the CLI's `m2m status`), sorted.
pub async fn shared_status(
    redis: &Redis,
    ring: &KeyRing,
    slots: &[(String, String)],
    now: i64,
) -> Result<Vec<ProviderStatus>, StoreError> {
    let mut slots = slots.to_vec();
    slots.sort();
    let mut out = Vec::with_capacity(slots.len());
    for (p, slot) in &slots {
        let t = shared::read(redis, ring, p, slot).await?;
        let locked: bool = redis.read(redis::cmd("EXISTS").arg(crate::keys::m2m_lock(p, slot))).await?;
        out.push(ProviderStatus {
            provider: p.clone(),
            shared_expires_in: t.map(|t| t.expires_in(now)),
            local_expires_in: None,
            locked,
        });
    }
    Ok(out)
}

#[async_trait::async_trait]
impl M2mSource for M2mManager {
    async fn token(&self, provider: &str) -> Result<String, M2mError> {
        let span = tracing::info_span!("portcullis.m2m.token", provider);
        self.usable(provider).instrument(span).await.map(|t| t.access_token)
    }
}

impl std::fmt::Debug for M2mManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("M2mManager").field("providers", &self.providers()).field("cfg", &self.election.cfg).finish()
    }
}

// The error type moka shares between coalesced callers must be Send + Sync.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<AcquireError>();
};
