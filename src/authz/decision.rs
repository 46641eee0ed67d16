//! The decision itself: plain code over a [`CheckInput`] and `now`. Every way to fail is a [`Deny`];
//! a session that fails a check is deleted before the deny goes out.
//!
//! The rare paths (bearer tokens, delegation, the assertion, the slide, deleting a session) are awaited
//! boxed: an async fn's future is as large as its largest path, and every Check's future is built and
//! moved into its box whole, so the common check would otherwise carry and copy their state too.

use std::sync::Arc;

use tracing::Instrument;

use crate::assertion::Asserter;
use crate::config::{Config, HeadersConfig, SessionConfig};
use crate::crypto::CryptoError;
use crate::delegate::exchange::ExchangeError;
use crate::delegate::{DelegationError, Delegator};
use crate::idp::bearer::BearerVerifier;
use crate::idp::{Identity, IdpError, Validators};
use crate::session::{cookie, Expiry, LoadError, Session, SessionStore, Tokens};

use super::audit::Who;
use super::{CheckInput, Deny};

/// The prefix the identity headers share up to a `-` (`x-auth-` by default), when it is specific enough to
/// refuse on: at least two segments, so that a mixed naming never turns `x-` into a refusal of every
/// `x-request-id`.
fn identity_prefix<'a>(names: &[&'a str]) -> Option<&'a str> {
    let first = names.first()?;
    let mut len = first.len();
    for n in names {
        len = len.min(first.bytes().zip(n.bytes()).take_while(|(a, b)| a == b).count());
    }
    let cut = first.get(..len)?.rfind('-')? + 1;
    let prefix = first.get(..cut)?;
    (prefix.matches('-').count() >= 2).then_some(prefix)
}

/// An allowed request: who, through which provider.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub identity: Identity,
    pub provider: String,
    pub session_id: String,
    /// The signed `x-auth-jwt`, when `[assertion]` is on (filled in after the decision).
    pub assertion: Option<String>,
    /// Set when a bearer token, not a session, was the credential.
    pub bearer: Option<BearerUse>,
    /// The route's delegated token (`portcullis.delegate`), for the upstream only.
    pub delegated: Option<String>,
}

/// A session that passed every check, with what the delegation may need.
struct Passed {
    identity: Identity,
    /// The tokens in the clear when the check refreshed them; otherwise they stay sealed in the session.
    tokens: Option<Tokens>,
    /// The check refreshed the tokens: the loaded session no longer shows what Redis holds.
    refreshed: bool,
}

/// How a bearer-token allow is passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BearerUse {
    /// A machine client (client credentials): `x-auth-client: true`.
    pub client: bool,
    /// The route passes the token on (`portcullis.bearer_pass`); removed from the upstream request otherwise.
    pub pass: bool,
}

pub struct Authorizer {
    store: SessionStore,
    validators: Validators,
    pub(crate) session: SessionConfig,
    pub(crate) headers: HeadersConfig,
    pub(crate) asserter: Option<Arc<Asserter>>,
    /// The answers' header names, and `[response_headers]` merged over the defaults (added to every OK
    /// answer unless the route opts out).
    pub(crate) names: super::response::Names,
    /// `server.mode = "dry_run"`: routes without their own `portcullis.dry_run` only observe.
    pub(crate) dry_run: bool,
    pub(crate) audit_allow_sample: f64,
    bearer: Option<Arc<BearerVerifier>>,
    /// `[bearer] enabled`: every route accepts bearer tokens.
    bearer_everywhere: bool,
    /// Delegated tokens for routes with `portcullis.delegate` (`None`: such routes are refused).
    delegator: Option<Arc<Delegator>>,
}

impl Authorizer {
    pub fn new(
        store: SessionStore,
        validators: Validators,
        cfg: &Config,
        asserter: Option<Arc<Asserter>>,
        bearer: Option<Arc<BearerVerifier>>,
        delegator: Option<Arc<Delegator>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            validators,
            session: cfg.session.clone(),
            headers: cfg.headers.clone(),
            asserter,
            names: super::response::Names::new(&cfg.headers, cfg.response_headers.effective()),
            dry_run: cfg.server.mode == crate::config::Mode::DryRun,
            audit_allow_sample: cfg.server.audit_allow_sample,
            bearer,
            bearer_everywhere: cfg.bearer.enabled,
            delegator,
        })
    }

    /// Adds the signed assertion to an allow when `[assertion]` is on; a signing failure fails closed.
    pub(crate) async fn assert(&self, mut a: Allowed, input: &CheckInput<'_>, now: i64) -> Result<Allowed, Deny> {
        if let Some(asserter) = &self.asserter {
            let aud = asserter.audience(input.extension(crate::assertion::AUDIENCE));
            match Box::pin(asserter.assertion(&a, aud, now)).await {
                Ok(t) => a.assertion = Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot sign the identity assertion");
                    return Err(Deny::Assertion);
                }
            }
        }
        Ok(a)
    }

    /// The session store behind this authorizer (login routes and tools create sessions through it).
    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    /// Applies the request flow of the design, steps 2 to 6. `who` is filled in once a session is found, so
    /// that a deny can be attributed too.
    pub async fn decide(&self, input: &CheckInput<'_>, now: i64, who: &mut Option<Who>) -> Result<Allowed, Deny> {
        if let Some(name) = input.headers.iter().map(|(n, _)| n).find(|n| self.smuggles_identity(n)) {
            tracing::warn!(header = %name, "client sent a header that reads as an identity header");
            return Err(Deny::IdentityHeader);
        }
        let cookies = input.header("cookie").unwrap_or_default();
        if cookie::count(cookies, &self.session.cookie_name) > 1 {
            tracing::warn!(cookie = %self.session.cookie_name, "session cookie sent more than once");
            return Err(Deny::DuplicateCookie);
        }
        let Some(value) = cookie::find(cookies, &self.session.cookie_name) else {
            return match (input.bearer_token(), &self.bearer) {
                (Some(token), Some(v)) if input.bearer_allowed(self.bearer_everywhere) => {
                    Box::pin(self.decide_bearer(v, token, input, now, who)).await
                }
                _ => Err(Deny::NoCookie),
            };
        };
        if !cookie::well_formed(value) {
            return Err(Deny::UnknownSession);
        }
        let id = cookie::session_id(value);
        // `max_staleness`: a session whose identity is remembered is read without its tokens, unless the route
        // delegates (the delegated tokens come with the whole hash).
        let remembered = self.validators.iter().find_map(|(p, v)| Some((p.as_str(), v.remembered(&id)?)));
        let delegating = input.extension(crate::delegate::DELEGATE).is_some();
        let mut session = self.load(&id, remembered.is_some() && !delegating).await?;
        let identity = match remembered {
            Some((provider, identity)) if provider == session.provider => Some(identity),
            Some(_) if session.small => {
                // Remembered under another provider than the session names: read it all, ask its own.
                session = self.load(&id, false).await?;
                None
            }
            _ => None,
        };
        *who = Some(Who { user_id: session.user_id.clone(), provider: session.provider.clone() });
        match self.check_session(&session, identity, input, now).await {
            Ok(passed) => {
                if self.store.slide_due(&session, now) {
                    // The rare second call; a session that could not slide is still valid for this request.
                    if let Err(e) = Box::pin(self.store.slide(&session, now)).await {
                        tracing::warn!(session = cookie::short(&id), error = %e, "could not slide the idle expiry");
                    }
                }
                let Some(required) = input.required_groups() else {
                    tracing::warn!(path = %input.path, "route requires groups but names none: denied");
                    return Err(Deny::Misconfigured);
                };
                if !required.is_empty() && !passed.identity.groups.iter().any(|g| required.contains(&g.as_str())) {
                    return Err(Deny::Forbidden);
                }
                let delegated = match input.extension(crate::delegate::DELEGATE) {
                    None => None,
                    Some(target) => Some(Box::pin(self.delegate(&session, &passed, target, now)).await?),
                };
                Ok(Allowed {
                    identity: passed.identity,
                    provider: session.provider,
                    session_id: id,
                    assertion: None,
                    bearer: None,
                    delegated,
                })
            }
            Err(deny) => {
                if deny.clears_cookie() {
                    Box::pin(self.end(&session, deny)).await;
                }
                Err(deny)
            }
        }
    }

    /// The session `id`, whole or only its small fields; a corrupt one is deleted.
    async fn load(&self, id: &str, small: bool) -> Result<Session, Deny> {
        let loaded = match small {
            true => self.store.load_small(id).await,
            false => self.store.load(id).await,
        };
        match loaded {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(Deny::UnknownSession),
            Err(LoadError::Store(_)) => Err(Deny::RedisUnavailable),
            Err(LoadError::Corrupt(e)) => {
                tracing::warn!(session = cookie::short(id), error = %e, "corrupt session in redis");
                if let Err(e) = Box::pin(self.store.delete_id(id)).await {
                    tracing::warn!(session = cookie::short(id), error = %e, "could not delete corrupt session");
                }
                Err(Deny::Corrupt)
            }
        }
    }

    /// The route's delegated token for this session; no token, no allow. A deny that ends the session
    /// (the IdP refuses the user's token, a tampered stored token) deletes it.
    async fn delegate(&self, s: &Session, passed: &Passed, target: &str, now: i64) -> Result<String, Deny> {
        let target = target.trim();
        let Some(delegator) = self.delegator.as_ref().filter(|_| !target.is_empty()) else {
            tracing::warn!("route asks for a delegated token but names no scope, or this server has no providers");
            return Err(Deny::Misconfigured);
        };
        let subject = passed.tokens.as_ref().map(|t| t.access_token.as_str());
        let e = match delegator.token(s, subject, passed.refreshed, target, now).await {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        tracing::info!(session = cookie::short(&s.id), provider = %s.provider, scope = %target, error = %e, "no delegated token");
        let deny = match e {
            DelegationError::Exchange(ExchangeError::ConsentRequired) => Deny::ConsentRequired,
            DelegationError::Exchange(ExchangeError::InteractionRequired) => Deny::InteractionRequired,
            DelegationError::Exchange(ExchangeError::InvalidGrant) => Deny::DelegationInvalidGrant,
            DelegationError::Exchange(ExchangeError::Refused(_)) => Deny::DelegationRefused,
            DelegationError::Exchange(ExchangeError::Unavailable(_)) | DelegationError::Lost(_) => Deny::IdpUnavailable,
            DelegationError::Redis(_) => Deny::RedisUnavailable,
            DelegationError::Tampered => Deny::Tampered,
            DelegationError::UnknownKey => Deny::UnknownKey,
            DelegationError::SessionGone => Deny::UnknownSession,
            DelegationError::UnknownProvider(_) => Deny::UnknownProvider,
        };
        if deny.clears_cookie() {
            Box::pin(self.end(s, deny)).await;
        }
        Err(deny)
    }

    /// A request with a bearer token instead of a session on a route that accepts them: the token's
    /// identity, under the same group rules; the route's scopes on top.
    async fn decide_bearer(
        &self,
        v: &BearerVerifier,
        token: &str,
        input: &CheckInput<'_>,
        now: i64,
        who: &mut Option<Who>,
    ) -> Result<Allowed, Deny> {
        let p = v.verify(token, now).await.map_err(|e| {
            tracing::info!(provider = v.provider(), error = %e, "bearer token refused");
            match e {
                IdpError::Unavailable(_) => Deny::IdpUnavailable,
                IdpError::Revoked(_) | IdpError::Invalid(_) | IdpError::Sealed(_) => Deny::BearerInvalid,
            }
        })?;
        *who = Some(Who { user_id: p.identity.user_id.clone(), provider: v.provider().to_string() });
        let Some(required) = input.required_groups() else {
            tracing::warn!(path = %input.path, "route requires groups but names none: denied");
            return Err(Deny::Misconfigured);
        };
        if !required.is_empty() && !p.identity.groups.iter().any(|g| required.contains(&g.as_str())) {
            return Err(Deny::Forbidden);
        }
        if !input.bearer_scopes().iter().all(|s| p.scopes.iter().any(|have| have == s)) {
            return Err(Deny::BearerScope);
        }
        if input.extension(crate::delegate::DELEGATE).is_some() {
            // Delegated tokens are cached per session; a bearer request has none.
            tracing::info!(path = %input.path, "a bearer request on a delegating route: refused");
            return Err(Deny::DelegationRefused);
        }
        Ok(Allowed {
            identity: p.identity.clone(),
            provider: v.provider().to_string(),
            session_id: format!("bearer:{}", BearerVerifier::token_id(token)),
            assertion: None,
            bearer: Some(BearerUse { client: p.client, pass: input.bearer_pass() }),
            delegated: None,
        })
    }

    /// Whether a client header name, lower-cased with `_` read as `-`, is an identity header or carries the
    /// identity-header prefix. Envoy strips the exact names; an app server that reads `x_auth_groups` as
    /// `X-Auth-Groups` (WSGI/CGI style) would otherwise trust a forged value. Exact dash names are not
    /// refused: they are overwritten or removed in the allow (and Envoy strips them first).
    fn smuggles_identity(&self, name: &str) -> bool {
        if !name.contains('_') {
            return false;
        }
        let name = name.to_ascii_lowercase().replace('_', "-");
        let all = self.headers.all();
        all.contains(&name.as_str()) || identity_prefix(&all).is_some_and(|p| name.starts_with(p))
    }

    /// `remembered`: the identity `max_staleness` still holds for this session, looked up once, before the read.
    async fn check_session(
        &self,
        s: &Session,
        remembered: Option<Identity>,
        input: &CheckInput<'_>,
        now: i64,
    ) -> Result<Passed, Deny> {
        // First, on every check (cached or not): the clock fields below are only worth reading if authentic.
        self.store.verify(s).map_err(|e| {
            tracing::warn!(session = cookie::short(&s.id), error = %e, "session fields fail their MAC");
            crypto_deny(e)
        })?;
        match s.expired(now, self.store.idle_timeout()) {
            Some(Expiry::Idle) => return Err(Deny::IdleTimeout),
            Some(Expiry::Absolute) => return Err(Deny::AbsoluteTimeout),
            None => {}
        }
        if self.session.bind_fingerprint && s.fingerprint_differs(input.header("user-agent").unwrap_or_default()) {
            return Err(Deny::Fingerprint);
        }
        let validator = self.validators.get(&s.provider).ok_or_else(|| {
            tracing::warn!(session = cookie::short(&s.id), provider = %s.provider, "session names an unconfigured provider");
            Deny::UnknownProvider
        })?;
        if let Some(identity) = remembered {
            // `max_staleness` within its window: the tokens are not needed, so they stay sealed.
            return Ok(Passed { identity, tokens: None, refreshed: false });
        }
        if s.small {
            // Cannot happen: a session is read without its tokens only together with its identity.
            tracing::error!(session = cookie::short(&s.id), "session read without its tokens needs them");
            return Err(Deny::RedisUnavailable);
        }
        if validator.circuit_open(s) {
            // The IdP call would be refused: no decrypt, no key lookup, no M2M token for a 503.
            return Err(Deny::IdpUnavailable);
        }
        // Only the ID token, which every validator verifies; the others are opened where they are used.
        let id_token = self.store.open_id_token(s).map_err(|e| sealed_deny(s, e))?;
        let span =
            tracing::info_span!("portcullis.revalidate", provider = %s.provider, outcome = tracing::field::Empty);
        let validated = validator.validate(s, &id_token, now).instrument(span.clone()).await;
        span.record(
            "outcome",
            match &validated {
                Ok(_) => "ok",
                Err(IdpError::Revoked(_)) => "revoked",
                Err(IdpError::Invalid(_)) => "invalid",
                Err(IdpError::Unavailable(_)) => "unavailable",
                Err(IdpError::Sealed(_)) => "sealed",
            },
        );
        match validated {
            Ok(v) => {
                let refreshed = v.refreshed.is_some();
                Ok(Passed { identity: v.identity, tokens: v.refreshed, refreshed })
            }
            Err(IdpError::Sealed(e)) => Err(sealed_deny(s, e)),
            Err(e) => {
                tracing::info!(session = cookie::short(&s.id), provider = %s.provider, error = %e, "revalidation failed");
                Err(match e {
                    IdpError::Revoked(_) => Deny::Revoked,
                    IdpError::Invalid(_) => Deny::InvalidToken,
                    IdpError::Unavailable(_) | IdpError::Sealed(_) => Deny::IdpUnavailable,
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

/// A stored token that does not open, logged.
fn sealed_deny(s: &Session, e: CryptoError) -> Deny {
    tracing::warn!(session = cookie::short(&s.id), error = %e, "session tokens do not decrypt");
    crypto_deny(e)
}

/// A key this replica lacks is ours to fix (503, session kept); anything else is tampering.
fn crypto_deny(e: CryptoError) -> Deny {
    match e {
        CryptoError::UnknownKey => Deny::UnknownKey,
        _ => Deny::Tampered,
    }
}

#[cfg(test)]
mod tests {
    use super::identity_prefix;

    #[test]
    fn the_identity_prefix_is_specific_or_absent() {
        assert_eq!(identity_prefix(&["x-auth-user-id", "x-auth-groups", "x-auth-jwt"]), Some("x-auth-"));
        assert_eq!(identity_prefix(&["x-auth-user", "x-authz-groups"]), None);
        assert_eq!(identity_prefix(&["x-user", "x-groups"]), None);
        assert_eq!(identity_prefix(&[]), None);
    }
}
