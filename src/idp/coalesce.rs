//! Revalidation modes around any validator, and single-flight ([`SingleFlight`], also used by delegated
//! tokens): concurrent checks of one session share one IdP call. `every_request` remembers nothing once a
//! call is done; `max_staleness` reuses a success for that long (errors are never reused: a 503 must not
//! stick, a deny deletes the session anyway).
//!
//! The `max_staleness` cache holds up to [`MAX_CACHED`] sessions, so its entry size is the sidecar's memory:
//! a quick_cache entry keyed by the session id's 32 bytes, holding a deadline and the identity packed into
//! one allocation (postcard), is under 400 resident bytes where a moka `String → Validated` entry was about 800.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use tracing::Instrument;

use super::{Identity, IdpError, Validated, Validator};
use crate::config::{RevalidationConfig, RevalidationMode};
use crate::session::Session;

/// Most sessions remembered in `max_staleness` mode.
const MAX_CACHED: usize = 100_000;

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

/// A success remembered for one session: good while [`Remembered::millis`] is below `until`; the identity as
/// postcard bytes. 24 bytes inline plus one allocation (an `Instant` and an `Arc` made it 32 plus 16).
#[derive(Clone)]
struct Fresh {
    until: u64,
    identity: Box<[u8]>,
}

/// The `max_staleness` memory: session id bytes → its last success.
struct Remembered {
    entries: quick_cache::sync::Cache<[u8; 32], Fresh>,
    ttl: Duration,
    /// What the deadlines count from.
    epoch: Instant,
}

impl Remembered {
    /// The cache key: the session id is the hex SHA-256 of the cookie; anything else is not remembered.
    fn key(id: &str) -> Option<[u8; 32]> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(id, &mut key).ok().map(|()| key)
    }

    fn new(capacity: usize, ttl: Duration) -> Self {
        Self { entries: quick_cache::sync::Cache::new(capacity), ttl, epoch: Instant::now() }
    }

    /// Milliseconds since `epoch`, rounded down: a deadline is never passed late.
    fn millis(&self, after: Duration) -> u64 {
        u64::try_from((self.epoch.elapsed() + after).as_millis()).unwrap_or(u64::MAX)
    }

    fn get(&self, id: &str) -> Option<Identity> {
        let fresh = self.entries.get(&Self::key(id)?)?;
        // An expired entry is left for the next success to overwrite or for eviction to drop.
        (fresh.until > self.millis(Duration::ZERO)).then_some(())?;
        postcard::from_bytes(&fresh.identity).ok()
    }

    fn remember(&self, id: &str, identity: &Identity) {
        let (Some(key), Ok(bytes)) = (Self::key(id), postcard::to_allocvec(identity)) else { return };
        self.entries.insert(key, Fresh { until: self.millis(self.ttl), identity: bytes.into_boxed_slice() });
    }
}

pub struct Coalescing {
    inner: Arc<dyn Validator>,
    in_flight: SingleFlight<Result<Validated, IdpError>>,
    remembered: Option<Arc<Remembered>>,
}

/// Wraps `inner` in the configured mode.
pub fn wrap(inner: Arc<dyn Validator>, cfg: &RevalidationConfig) -> Arc<dyn Validator> {
    let remembered =
        (cfg.mode == RevalidationMode::MaxStaleness).then(|| Arc::new(Remembered::new(MAX_CACHED, cfg.max_staleness)));
    Arc::new(Coalescing { inner, in_flight: SingleFlight::default(), remembered })
}

#[async_trait::async_trait]
impl Validator for Coalescing {
    fn remembered(&self, session_id: &str) -> Option<Identity> {
        self.remembered.as_ref()?.get(session_id)
    }

    /// A check that can join a call already in flight for its session (maybe the half-open probe) waits
    /// for that call's answer instead.
    fn circuit_open(&self, s: &Session) -> bool {
        let joinable = self.in_flight.in_flight(&s.id);
        !joinable && self.inner.circuit_open(s)
    }

    /// One call per session id at a time; latecomers await the same result. A success is remembered by
    /// the call itself, once, even if every check waiting for it has gone.
    async fn validate(&self, s: &Session, id_token: &str, now: i64) -> Result<Validated, IdpError> {
        let make = || {
            let (inner, s, t, remembered) =
                (self.inner.clone(), s.clone(), id_token.to_string(), self.remembered.clone());
            async move {
                let r = inner.validate(&s, &t, now).await;
                if let (Some(m), Ok(v)) = (&remembered, &r) {
                    m.remember(&s.id, &v.identity);
                }
                r
            }
        };
        self.in_flight.run(s.id.clone(), make, |e| Err(IdpError::Unavailable(format!("revalidation task: {e}")))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn remembered(ttl: Duration) -> Remembered {
        Remembered::new(8, ttl)
    }

    fn alice() -> Identity {
        Identity {
            user_id: "alice".into(),
            email: Some("alice@example.com".into()),
            name: None,
            groups: vec!["admins".into(), "ops,eu".into()],
        }
    }

    #[test]
    fn a_remembered_identity_comes_back_whole_until_its_deadline() {
        let m = remembered(Duration::from_secs(60));
        assert_eq!(m.get(ID), None);
        m.remember(ID, &alice());
        assert_eq!(m.get(ID), Some(alice()));
        assert_eq!(m.get(&ID.replace('0', "1")), None, "another session's id finds nothing");
    }

    #[test]
    fn an_expired_entry_is_not_served() {
        let m = remembered(Duration::ZERO);
        m.remember(ID, &alice());
        assert_eq!(m.get(ID), None);
    }

    #[test]
    fn an_entry_is_served_until_its_deadline_and_not_after() {
        let m = remembered(Duration::from_millis(300));
        m.remember(ID, &alice());
        assert_eq!(m.get(ID), Some(alice()));
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(m.get(ID), None);
    }

    #[test]
    fn an_id_that_is_not_a_hash_is_never_remembered() {
        let m = remembered(Duration::from_secs(60));
        m.remember("not-hex", &alice());
        assert_eq!(m.get("not-hex"), None);
        assert_eq!(m.entries.len(), 0);
    }
}
