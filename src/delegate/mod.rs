//! Delegated tokens (issue 16): a route's `portcullis.delegate: "<scope or audience>"` gets the upstream a
//! token for that target, issued by the session's IdP on behalf of the user ([`exchange`]: Entra
//! On-Behalf-Of, else RFC 8693 token exchange).
//!
//! One token per session and target, cached as a field of the session hash (`dlg:{slot}`,
//! [`crate::keys::delegated_field`]), sealed under the key ring ([`token`]):
//! - the check's one `HGETALL` already reads it: a cached token costs no extra Redis call;
//! - it lives in the session's hash slot (Redis Cluster safe) and dies with the session by construction:
//!   logout, admin revoke, back-channel logout and tamper-deletes all delete the hash;
//! - a refresh deletes every `dlg:*` field with the old tokens ([`crate::session::SessionStore::update_tokens`]),
//!   and each token names the access token it came from, so one derived from an older token never serves.
//!
//! A miss: one exchange in this process per session and target ([`SingleFlight`]), and one across replicas
//! under `lock:delegate:{id}:{slot}` ([`crate::lock`]): the holder re-reads the field, calls the IdP and
//! stores the token (only while the session still holds the access token it was derived from); the others
//! poll the field, and take the lock over should the holder vanish.

pub mod exchange;
pub mod report;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use self::exchange::ExchangeError;
use self::token::{subject_tag, Delegated};
use crate::crypto::CryptoError;
use crate::idp::coalesce::SingleFlight;
use crate::idp::provider::Provider;
use crate::idp::IdpError;
use crate::lock::RedisLock;
use crate::m2m::CachedToken;
use crate::session::model::field;
use crate::session::Session;

/// The route option naming what to delegate to.
pub const DELEGATE: &str = "portcullis.delegate";

/// How often a replica waiting for another's exchange looks for its result.
const FOLLOWER_POLL: Duration = Duration::from_millis(50);

/// Which field a delegated token lives in: 16 hex digits of SHA-256 over the provider and the route value.
pub fn slot(provider: &str, target: &str) -> String {
    hex::encode(&Sha256::digest(format!("{provider}\n{target}"))[..8])
}

/// Why a delegating route gets no token. Never carries a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DelegationError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("redis: {0}")]
    Redis(String),
    /// A stored delegated token that does not open under its session and field.
    #[error("a stored delegated token fails authentication")]
    Tampered,
    /// Sealed under a key id this replica lacks (another replica is ahead in a key rotation).
    #[error("a stored delegated token names an unknown key id")]
    UnknownKey,
    #[error("the session ended during the exchange")]
    SessionGone,
    #[error("no provider {0:?} to delegate with")]
    UnknownProvider(String),
    #[error("the exchange task failed: {0}")]
    Lost(String),
}

impl From<CryptoError> for DelegationError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::UnknownKey => DelegationError::UnknownKey,
            _ => DelegationError::Tampered,
        }
    }
}

impl From<crate::store::StoreError> for DelegationError {
    fn from(e: crate::store::StoreError) -> Self {
        DelegationError::Redis(e.to_string())
    }
}

type Outcome = Result<String, DelegationError>;

/// Where one session's token for one route value lives, and what it must serve.
struct Place<'a> {
    /// The session id.
    id: &'a str,
    slot: &'a str,
    /// The session-hash field, `dlg:{slot}`.
    name: &'a str,
    /// The route's `portcullis.delegate` value.
    target: &'a str,
}

/// Gets delegated tokens for sessions of the configured providers.
pub struct Delegator {
    providers: HashMap<String, Arc<Provider>>,
    /// `m2m.safety_margin`, scaled down for short-lived tokens as for the M2M token.
    margin_secs: i64,
    flight: SingleFlight<Outcome>,
}

impl Delegator {
    pub fn new(providers: impl IntoIterator<Item = Arc<Provider>>, safety_margin: Duration) -> Arc<Self> {
        Arc::new(Self {
            providers: providers.into_iter().map(|p| (p.name.clone(), p)).collect(),
            margin_secs: i64::try_from(safety_margin.as_secs()).unwrap_or(i64::MAX / 2),
            flight: SingleFlight::default(),
        })
    }

    /// The delegated token for `target` on behalf of session `s` as the check read it. `subject` is the
    /// user's access token in the clear when the check has it; `refreshed` says the check refreshed the
    /// tokens, so `s` no longer shows what Redis holds.
    pub async fn token(
        self: &Arc<Self>,
        s: &Session,
        subject: Option<&str>,
        refreshed: bool,
        target: &str,
        now: i64,
    ) -> Outcome {
        let p = self.providers.get(&s.provider).ok_or_else(|| DelegationError::UnknownProvider(s.provider.clone()))?;
        let slot = slot(&s.provider, target);
        let name = crate::keys::delegated_field(&slot);
        let at = Place { id: &s.id, slot: &slot, name: &name, target };
        if !refreshed {
            if let Some((_, stored)) = s.delegated.iter().find(|(f, _)| *f == name) {
                if let Some(t) = self.usable(p, &at, stored, &subject_tag(&s.access_token), now)? {
                    return Ok(t);
                }
            }
        }
        let key = format!("{}:{slot}", s.id);
        let make = || {
            let (me, p) = (self.clone(), p.clone());
            let seen = (!refreshed).then(|| (s.access_token.clone(), subject.map(str::to_string)));
            let (id, target) = (s.id.clone(), target.to_string());
            async move {
                let at = Place { id: &id, slot: &slot, name: &name, target: &target };
                me.elect(&p, &at, seen).await
            }
        };
        self.flight.run(key, make, |e| Err(DelegationError::Lost(e))).await
    }

    /// The token in `stored` if it serves `at.target` for the access token tagged `subject` at `now`.
    fn usable(
        &self,
        p: &Provider,
        at: &Place<'_>,
        stored: &str,
        subject: &str,
        now: i64,
    ) -> Result<Option<String>, DelegationError> {
        let d = Delegated::open(&p.store.keys(), at.id, at.name, stored)?;
        Ok(d.filter(|d| d.serves(&p.name, at.target, subject, now, self.margin_secs)).map(|d| d.token.access_token))
    }

    /// Across replicas: the lock holder exchanges, the others wait for its token (or for the lock).
    async fn elect(&self, p: &Provider, at: &Place<'_>, seen: Option<(String, Option<String>)>) -> Outcome {
        let redis = p.store.redis();
        let key = crate::keys::delegation_lock(at.id, at.slot);
        let ttl = p.lock_ttl();
        let deadline = Instant::now() + ttl * 2;
        loop {
            if let Some(lock) = RedisLock::try_acquire(redis, key.clone(), ttl).await? {
                let r = self.lead(p, at, seen).await;
                if let Err(e) = lock.release(redis).await {
                    tracing::warn!(error = %e, "could not release a delegation lock; it expires by itself");
                }
                return r;
            }
            tokio::time::sleep(FOLLOWER_POLL).await;
            if let Some(t) = self.reread(p, at).await?.1 {
                return Ok(t);
            }
            if Instant::now() >= deadline {
                let e = IdpError::Unavailable("waited too long for another replica's token exchange".into());
                return Err(ExchangeError::Unavailable(e).into());
            }
        }
    }

    /// The session's access token (as stored) and the token its field holds, if that one serves.
    async fn reread(&self, p: &Provider, at: &Place<'_>) -> Result<(String, Option<String>), DelegationError> {
        let (current, stored) = p.store.delegated(at.id, at.name).await?;
        let current = current.ok_or(DelegationError::SessionGone)?;
        let found = match stored {
            Some(v) => self.usable(p, at, &v, &subject_tag(&current), crate::now())?,
            None => None,
        };
        Ok((current, found))
    }

    /// Holding the lock: a token someone stored meanwhile, else one exchange, stored for everyone.
    async fn lead(&self, p: &Provider, at: &Place<'_>, seen: Option<(String, Option<String>)>) -> Outcome {
        let (current, found) = self.reread(p, at).await?;
        if let Some(t) = found {
            return Ok(t);
        }
        let subject = match seen {
            Some((ciphertext, Some(plain))) if ciphertext == current => plain,
            _ => p.store.keys().decrypt(at.id, field::ACCESS_TOKEN, &current)?,
        };
        let issued = exchange::exchange(p, &subject, at.target).await?;
        let now_ms = crate::now_ms();
        let lifetime = i64::try_from(issued.expires_in.as_secs()).unwrap_or(i64::MAX / 2);
        let d = Delegated {
            token: CachedToken {
                token_provider: p.name.clone(),
                access_token: issued.access_token,
                expires_at: now_ms.div_euclid(1000).saturating_add(lifetime),
                issued_at_ms: Some(now_ms),
            },
            target: at.target.to_string(),
            subject: subject_tag(&current),
        };
        tracing::info!(provider = %p.name, expires_in = lifetime, "delegated token issued");
        let stored = match d.seal(&p.store.keys(), at.id, at.name) {
            Ok(sealed) => p.store.put_delegated(at.id, &current, at.name, &sealed).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(provider = %p.name, "delegated token not cached: the session changed meanwhile")
            }
            Err(e) => tracing::warn!(provider = %p.name, error = %e, "could not cache the delegated token"),
        }
        Ok(d.token.access_token)
    }
}
