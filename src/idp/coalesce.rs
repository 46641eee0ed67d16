//! Revalidation modes around any validator, and single-flight: concurrent checks of one session share
//! one IdP call. `every_request` remembers nothing once a call is done; `max_staleness` reuses a success
//! for that long (errors are never reused: a 503 must not stick, a deny deletes the session anyway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use tracing::Instrument;

use super::{IdpError, Validated, Validator};
use crate::config::{RevalidationConfig, RevalidationMode};
use crate::session::{Session, Tokens};

/// Most sessions remembered in `max_staleness` mode.
const MAX_CACHED: u64 = 100_000;

type Call = Shared<BoxFuture<'static, Result<Validated, IdpError>>>;

pub struct Coalescing {
    inner: Arc<dyn Validator>,
    in_flight: Arc<Mutex<HashMap<String, Call>>>,
    cache: Option<moka::future::Cache<String, Validated>>,
}

/// Wraps `inner` in the configured mode.
pub fn wrap(inner: Arc<dyn Validator>, cfg: &RevalidationConfig) -> Arc<dyn Validator> {
    let cache = (cfg.mode == RevalidationMode::MaxStaleness)
        .then(|| moka::future::Cache::builder().max_capacity(MAX_CACHED).time_to_live(cfg.max_staleness).build());
    Arc::new(Coalescing { inner, in_flight: Arc::default(), cache })
}

impl Coalescing {
    /// One call per session id at a time; latecomers await the same result. The call runs as its own
    /// task: Envoy gives up on a Check after its timeout (200 ms by default) and tonic then drops the
    /// handler, but a refresh the IdP has already rotated must still be written to the session, and its
    /// lock released, or the session is lost.
    async fn single_flight(&self, s: &Session, tokens: &Tokens, now: i64) -> Result<Validated, IdpError> {
        let key = s.id.clone();
        let call = {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let (inner, map_ref, k) = (self.inner.clone(), self.in_flight.clone(), key.clone());
                    let (s, t) = (s.clone(), tokens.clone());
                    // In the first caller's span: the IdP call shows in that check's trace.
                    let task = tokio::spawn(
                        async move {
                            let r = inner.validate(&s, &t, now).await;
                            map_ref.lock().unwrap_or_else(|e| e.into_inner()).remove(&k);
                            r
                        }
                        .in_current_span(),
                    );
                    let call = async move {
                        task.await.unwrap_or_else(|e| Err(IdpError::Unavailable(format!("revalidation task: {e}"))))
                    }
                    .boxed()
                    .shared();
                    map.insert(key, call.clone());
                    call
                }
            }
        };
        call.await
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
        let joinable = self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&s.id);
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
