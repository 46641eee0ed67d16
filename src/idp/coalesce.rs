//! Revalidation modes around any validator, and single-flight ([`SingleFlight`], also used by delegated
//! tokens): concurrent checks of one session share one IdP call. `every_request` remembers nothing once a
//! call is done; `max_staleness` reuses a success for that long (errors are never reused: a 503 must not
//! stick, a deny deletes the session anyway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use tracing::Instrument;

use super::{IdpError, Validated, Validator};
use crate::config::{RevalidationConfig, RevalidationMode};
use crate::session::{Session, Tokens};

/// Most sessions remembered in `max_staleness` mode.
const MAX_CACHED: u64 = 100_000;

/// One call per key at a time: latecomers await the first caller's result. The call runs as its own task:
/// Envoy gives up on a Check after its timeout (200 ms by default) and tonic then drops the handler, but a
/// refresh the IdP has already rotated (or a delegated token it has already issued) must still be written
/// to the session, and its lock released. Nothing is remembered once a call is done.
pub struct SingleFlight<T> {
    in_flight: Arc<Mutex<HashMap<String, Shared<BoxFuture<'static, T>>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self { in_flight: Arc::default() }
    }
}

impl<T> SingleFlight<T> {
    /// Whether a call for `key` is in flight now (a check may join it rather than fail fast).
    pub fn in_flight(&self, key: &str) -> bool {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).contains_key(key)
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// The result of the call in flight for `key`, or of `make()` started now. `lost` names the result
    /// of a task that panicked.
    pub async fn run<F>(&self, key: String, make: impl FnOnce() -> F, lost: fn(String) -> T) -> T
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let call = {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let (map_ref, k, fut) = (self.in_flight.clone(), key.clone(), make());
                    // In the first caller's span: the IdP call shows in that check's trace.
                    let task = tokio::spawn(
                        async move {
                            let r = fut.await;
                            map_ref.lock().unwrap_or_else(|e| e.into_inner()).remove(&k);
                            r
                        }
                        .in_current_span(),
                    );
                    let call = async move { task.await.unwrap_or_else(|e| lost(e.to_string())) }.boxed().shared();
                    map.insert(key, call.clone());
                    call
                }
            }
        };
        call.await
    }
}

pub struct Coalescing {
    inner: Arc<dyn Validator>,
    in_flight: SingleFlight<Result<Validated, IdpError>>,
    cache: Option<moka::future::Cache<String, Validated>>,
}

/// Wraps `inner` in the configured mode.
pub fn wrap(inner: Arc<dyn Validator>, cfg: &RevalidationConfig) -> Arc<dyn Validator> {
    let cache = (cfg.mode == RevalidationMode::MaxStaleness)
        .then(|| moka::future::Cache::builder().max_capacity(MAX_CACHED).time_to_live(cfg.max_staleness).build());
    Arc::new(Coalescing { inner, in_flight: SingleFlight::default(), cache })
}

impl Coalescing {
    /// One call per session id at a time; latecomers await the same result.
    async fn single_flight(&self, s: &Session, tokens: &Tokens, now: i64) -> Result<Validated, IdpError> {
        let make = || {
            let (inner, s, t) = (self.inner.clone(), s.clone(), tokens.clone());
            async move { inner.validate(&s, &t, now).await }
        };
        self.in_flight.run(s.id.clone(), make, |e| Err(IdpError::Unavailable(format!("revalidation task: {e}")))).await
    }
}

#[async_trait::async_trait]
impl Validator for Coalescing {
    async fn cached(&self, s: &Session) -> Option<Validated> {
        self.cache.as_ref()?.get(&s.id).await
    }

    /// A check that can join a call already in flight for its session (maybe the half-open probe) waits
    /// for that call's answer instead.
    fn circuit_open(&self, s: &Session) -> bool {
        let joinable = self.in_flight.in_flight(&s.id);
        !joinable && self.inner.circuit_open(s)
    }

    async fn validate(&self, s: &Session, tokens: &Tokens, now: i64) -> Result<Validated, IdpError> {
        match &self.cache {
            None => self.single_flight(s, tokens, now).await,
            // moka's try_get_with runs one init per key and hands its result to every waiter.
            Some(cache) => cache
                .try_get_with(s.id.clone(), self.single_flight(s, tokens, now))
                .await
                .map_err(|e: Arc<IdpError>| (*e).clone()),
        }
    }
}
