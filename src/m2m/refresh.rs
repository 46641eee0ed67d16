//! The background refresh: every `refresh_interval`, each provider whose token expires within
//! `refresh_before` (or that has none) gets a new one through the same election, so callers keep using the
//! current token and never wait for the IdP. Stops when its `CancellationToken` is cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::election::Want;
use super::manager::M2mManager;
use super::shared;

/// Shortest refresh period accepted (a zero period would spin).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

impl M2mManager {
    /// Starts the background refresh on the current runtime. Await the handle after cancelling to know it
    /// has stopped.
    pub fn spawn_refresher(self: &Arc<Self>, cancel: CancellationToken) -> JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move { me.refresh_loop(cancel).await })
    }

    async fn refresh_loop(&self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.election.cfg.refresh_interval.max(MIN_INTERVAL));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let round = futures::future::join_all(self.providers().into_iter().map(|p| async move {
                self.refresh_if_due(&p).await;
            }));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = round => {}
            }
        }
        tracing::debug!("m2m background refresh stopped");
    }

    /// One provider, one round. Failures are logged; callers keep the current token while it is fresh.
    pub async fn refresh_if_due(&self, provider: &str) {
        let now = crate::now();
        let current = match self.local(provider).await {
            Some(t) => Some(t),
            None => match self.slot(provider) {
                Some(slot) => shared::read(&self.election.redis, &self.election.ring.load_full(), provider, &slot)
                    .await
                    .ok()
                    .flatten(),
                None => None,
            },
        };
        if let Some(t) = &current {
            if self.election.usable_now(t, now) && t.expires_in(now) > self.election.refresh_before_secs(t) {
                self.keep(t).await;
                return;
            }
        }
        let want = Want::Newer { than: current.as_ref().map(|t| t.expires_at) };
        match self.election.acquire(provider, want).await {
            Ok(t) => self.keep(&t).await,
            Err(e) => {
                self.gauge(provider, current.as_ref());
                tracing::warn!(provider, error = %e, "background m2m refresh failed; callers keep the current token while it is fresh")
            }
        }
    }
}
