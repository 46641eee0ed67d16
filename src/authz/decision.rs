//! The decision itself: plain code over a [`CheckInput`] and `now`. Every way to fail is a [`Deny`];
//! a session that fails a check is deleted before the deny goes out.

use std::sync::Arc;

use crate::config::{HeadersConfig, SessionConfig};
use crate::idp::{Identity, IdpError, Validators};
use crate::session::{cookie, fingerprint, LoadError, Session, SessionStore};

use super::CheckInput;

/// Every reason to deny. `reason()` is the bounded `reason` label of `portcullis_check_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    Malformed,
    NoCookie,
    UnknownSession,
    IdleTimeout,
    AbsoluteTimeout,
    Fingerprint,
    Corrupt,
    Tampered,
    UnknownProvider,
    Revoked,
    InvalidToken,
    Forbidden,
    RedisUnavailable,
    IdpUnavailable,
}

impl Deny {
    pub fn reason(self) -> &'static str {
        match self {
            Deny::Malformed => "malformed",
            Deny::NoCookie => "no_cookie",
            Deny::UnknownSession => "unknown_session",
            Deny::IdleTimeout => "idle_timeout",
            Deny::AbsoluteTimeout => "absolute_timeout",
            Deny::Fingerprint => "fingerprint",
            Deny::Corrupt => "corrupt_session",
            Deny::Tampered => "tampered",
            Deny::UnknownProvider => "unknown_provider",
            Deny::Revoked => "revoked",
            Deny::InvalidToken => "invalid_token",
            Deny::Forbidden => "forbidden",
            Deny::RedisUnavailable => "redis_unavailable",
            Deny::IdpUnavailable => "idp_unavailable",
        }
    }

    /// HTTP status before the browser-navigation redirect is considered.
    pub fn status(self) -> u16 {
        match self {
            Deny::Malformed => 400,
            Deny::Forbidden => 403,
            Deny::RedisUnavailable | Deny::IdpUnavailable => 503,
            _ => 401,
        }
    }

    /// Whether a presented session cookie is now worthless and should be cleared.
    pub fn clears_cookie(self) -> bool {
        self.status() == 401 && self != Deny::NoCookie
    }
}

/// An allowed request: who, through which provider.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub identity: Identity,
    pub provider: String,
    pub session_id: String,
}

pub struct Authorizer {
    store: SessionStore,
    validators: Validators,
    pub(crate) session: SessionConfig,
    pub(crate) headers: HeadersConfig,
}

impl Authorizer {
    pub fn new(
        store: SessionStore,
        validators: Validators,
        session: SessionConfig,
        headers: HeadersConfig,
    ) -> Arc<Self> {
        Arc::new(Self { store, validators, session, headers })
    }

    /// The session store behind this authorizer (login routes and tools create sessions through it).
    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    /// Applies the request flow of the design, steps 2 to 6.
    pub async fn decide(&self, input: &CheckInput, now: i64) -> Result<Allowed, Deny> {
        let value =
            input.header("cookie").and_then(|h| cookie::find(h, &self.session.cookie_name)).ok_or(Deny::NoCookie)?;
        if !cookie::well_formed(value) {
            return Err(Deny::UnknownSession);
        }
        let id = cookie::session_id(value);
        let session = match self.store.load(&id, now).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(Deny::UnknownSession),
            Err(LoadError::Store(_)) => return Err(Deny::RedisUnavailable),
            Err(LoadError::Corrupt(e)) => {
                tracing::warn!(session = cookie::short(&id), error = %e, "corrupt session in redis");
                if let Err(e) = self.store.delete_id(&id).await {
                    tracing::warn!(session = cookie::short(&id), error = %e, "could not delete corrupt session");
                }
                return Err(Deny::Corrupt);
            }
        };
        match self.check_session(&session, input, now).await {
            Ok(identity) => {
                let required = input.required_groups();
                if !required.is_empty() && !identity.groups.iter().any(|g| required.contains(&g.as_str())) {
                    return Err(Deny::Forbidden);
                }
                Ok(Allowed { identity, provider: session.provider, session_id: id })
            }
            Err(deny) => {
                if deny.clears_cookie() {
                    self.end(&session, deny).await;
                }
                Err(deny)
            }
        }
    }

    async fn check_session(&self, s: &Session, input: &CheckInput, now: i64) -> Result<Identity, Deny> {
        if now - s.last_access >= self.store.idle_timeout() {
            return Err(Deny::IdleTimeout);
        }
        if now >= s.expires_at {
            return Err(Deny::AbsoluteTimeout);
        }
        if self.session.bind_fingerprint {
            if let Some(bound) = &s.client_fingerprint {
                if *bound != fingerprint(input.header("user-agent").unwrap_or_default()) {
                    return Err(Deny::Fingerprint);
                }
            }
        }
        let tokens = self.store.decrypt(s).map_err(|e| {
            tracing::warn!(session = cookie::short(&s.id), error = %e, "session tokens do not decrypt");
            Deny::Tampered
        })?;
        let validator = self.validators.get(&s.provider).ok_or_else(|| {
            tracing::warn!(session = cookie::short(&s.id), provider = %s.provider, "session names an unconfigured provider");
            Deny::UnknownProvider
        })?;
        match validator.validate(s, &tokens, now).await {
            Ok(v) => Ok(v.identity),
            Err(e) => {
                tracing::info!(session = cookie::short(&s.id), provider = %s.provider, error = %e, "revalidation failed");
                Err(match e {
                    IdpError::Revoked(_) => Deny::Revoked,
                    IdpError::Invalid(_) => Deny::InvalidToken,
                    IdpError::Unavailable(_) => Deny::IdpUnavailable,
                })
            }
        }
    }

    /// Deletes a session that failed a check, counting why.
    async fn end(&self, s: &Session, why: Deny) {
        match self.store.delete(s).await {
            Ok(()) => metrics::counter!("portcullis_sessions_revoked_total", "reason" => why.reason()).increment(1),
            Err(e) => tracing::warn!(session = cookie::short(&s.id), error = %e, "could not delete failed session"),
        }
    }
}
