//! Why a login or callback did not complete, and the one table of what each answers: HTTP status, the
//! `outcome` label of `portcullis_logins_total`, the page, Retry-After, and whether it counts toward the
//! client's failed-login limit (`auth:failures:{client}`, 429 past `login.max_failures`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

use super::binding::BindingError;
use super::pending;
use super::security::error_page;

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_UNAVAILABLE: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginFailure {
    /// `/oauth2/login` names no configured provider.
    UnknownProvider,
    /// `rd` longer than `login.max_rd_bytes`.
    RdTooLong,
    /// `rd` neither relative nor an allow-listed host.
    RdRefused,
    /// Too many logins started by this client, or by all together.
    TooManyPending(pending::Refused),
    /// This client failed too often: it waits this many seconds.
    Blocked(u64),
    /// The IdP sent the browser back with `error=` (its description, shown escaped).
    IdpError(String),
    /// A callback without `code` or `state`.
    Incomplete,
    /// A state that is unknown, expired or already used.
    UnknownState,
    /// The callback came to another browser than the one that started the login.
    Binding(BindingError),
    /// A concurrent callback consumed the state first.
    AlreadyUsed,
    /// The pending login names a provider this replica does not have.
    StateForUnknownProvider,
    /// The IdP refused the code (its error, shown escaped).
    Exchange(String),
    InvalidIdToken,
    /// A valid ID token without the claim that names the user.
    NoUser,
    IdpUnavailable,
    RedisUnavailable,
}

impl LoginFailure {
    /// The `outcome` label (a bounded set).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::UnknownProvider => "unknown_provider",
            Self::RdTooLong => "rd_too_long",
            Self::RdRefused => "rd_refused",
            Self::TooManyPending(r) => r.outcome(),
            Self::Blocked(_) => "blocked",
            Self::IdpError(_) => "idp_error",
            Self::Incomplete => "bad_request",
            Self::UnknownState | Self::AlreadyUsed | Self::StateForUnknownProvider => "bad_state",
            Self::Binding(e) => e.outcome(),
            Self::Exchange(_) => "exchange_failed",
            Self::InvalidIdToken | Self::NoUser => "invalid_id_token",
            Self::IdpUnavailable => "idp_unavailable",
            Self::RedisUnavailable => "redis_unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooManyPending(_) | Self::Blocked(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::IdpUnavailable | Self::RedisUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether it counts toward the client's failed-login limit: what a guessing client would cause, not
    /// our own outages, races or refusals before any state was touched.
    pub fn counts_toward_limit(&self) -> bool {
        matches!(
            self,
            Self::IdpError(_)
                | Self::Incomplete
                | Self::UnknownState
                | Self::Binding(_)
                | Self::Exchange(_)
                | Self::InvalidIdToken
        )
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::TooManyPending(r) => Some(r.retry_after()),
            Self::Blocked(secs) => Some(*secs),
            Self::IdpUnavailable | Self::RedisUnavailable => Some(RETRY_AFTER_UNAVAILABLE),
            _ => None,
        }
    }

    /// The page's title and text.
    fn page(&self) -> (&'static str, &str) {
        match self {
            Self::UnknownProvider => ("Unknown provider", "Choose a configured identity provider."),
            Self::RdTooLong => ("Refused redirect", "The return address is too long."),
            Self::RdRefused => ("Refused redirect", "The return address is not allowed."),
            Self::TooManyPending(_) => ("Too many sign-ins started", "Try again later."),
            Self::Blocked(_) => ("Too many failed sign-ins", "Try again later."),
            Self::IdpError(detail) => ("Sign-in was not completed", detail),
            Self::Incomplete => ("Sign-in failed", "The identity provider's answer was incomplete."),
            Self::UnknownState => ("Sign-in expired", "This sign-in link is unknown, expired or already used."),
            Self::Binding(_) => {
                ("Sign-in refused", "This sign-in was started in another browser. Start again from here.")
            }
            Self::AlreadyUsed => ("Sign-in expired", "This sign-in link was already used."),
            Self::StateForUnknownProvider => ("Sign-in failed", "Unknown identity provider."),
            Self::Exchange(detail) => ("Sign-in failed", detail),
            Self::InvalidIdToken => ("Sign-in failed", "The identity token was not valid."),
            Self::NoUser => ("Sign-in failed", "The identity token names no user."),
            Self::IdpUnavailable | Self::RedisUnavailable => ("Sign-in unavailable", "Please try again shortly."),
        }
    }

    /// Counts it for `provider` (`"unknown"` before one is known), logs it and renders the page.
    pub fn respond(&self, provider: &str) -> Response {
        let outcome = self.outcome();
        metrics::counter!("portcullis_logins_total", "provider" => provider.to_string(), "outcome" => outcome)
            .increment(1);
        if self.status() == StatusCode::BAD_REQUEST {
            tracing::info!(provider, outcome, "login failed");
        } else {
            tracing::warn!(provider, outcome, "login refused");
        }
        let (title, detail) = self.page();
        let mut resp = error_page(self.status(), title, detail);
        if let Some(secs) = self.retry_after() {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_guessing_client_causes_counts_toward_the_limit() {
        assert!(LoginFailure::Binding(BindingError::Missing).counts_toward_limit());
        assert!(LoginFailure::UnknownState.counts_toward_limit());
        assert!(!LoginFailure::RedisUnavailable.counts_toward_limit());
        assert!(!LoginFailure::AlreadyUsed.counts_toward_limit(), "a race between two tabs is not guessing");
        assert!(!LoginFailure::Blocked(3).counts_toward_limit());
    }

    #[test]
    fn the_table_gives_status_and_retry_after() {
        assert_eq!(LoginFailure::Blocked(7).status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(LoginFailure::Blocked(7).retry_after(), Some(7));
        assert_eq!(LoginFailure::IdpUnavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(LoginFailure::IdpUnavailable.retry_after(), Some(5));
        assert_eq!(LoginFailure::InvalidIdToken.status(), StatusCode::BAD_REQUEST);
        assert_eq!(LoginFailure::InvalidIdToken.retry_after(), None);
        assert_eq!(LoginFailure::TooManyPending(pending::Refused::Total(9)).outcome(), "too_many_pending");
    }
}
