//! Every reason to deny and the one table that says what each one answers: HTTP status, gRPC code, JSON
//! body, whether the session cookie is cleared, and Retry-After. `response` only renders an [`Answer`].

use tonic::Code;

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECS: u32 = 5;

/// Every reason to deny. `reason()` is the bounded `reason` label of `portcullis_check_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    Malformed,
    /// The client sent a header that reads as an identity header (`x_auth_groups`, `X_Auth_Email`, ...).
    IdentityHeader,
    NoCookie,
    /// The session cookie appears more than once (cookie tossing from a sibling domain or wider path).
    DuplicateCookie,
    UnknownSession,
    IdleTimeout,
    AbsoluteTimeout,
    Fingerprint,
    Corrupt,
    Tampered,
    /// A token sealed under a key id this replica lacks: another replica is ahead in a key rotation.
    UnknownKey,
    UnknownProvider,
    Revoked,
    InvalidToken,
    Forbidden,
    /// The route names `portcullis.require_any` but no group in it (only separators): fail closed.
    Misconfigured,
    RedisUnavailable,
    IdpUnavailable,
    /// The identity assertion could not be signed: no allow without it.
    Assertion,
    /// A bearer token that is invalid, expired, revoked, or of another issuer or audience (RFC 6750).
    BearerInvalid,
    /// A valid bearer token without a scope the route requires (RFC 6750 `insufficient_scope`).
    BearerScope,
    /// The IdP will not issue the route's delegated token until the user consents to it.
    ConsentRequired,
    /// The IdP will not issue the route's delegated token until the user interacts (MFA, a policy).
    InteractionRequired,
    /// The IdP refuses to exchange the user's token (`invalid_grant`): the session is over.
    DelegationInvalidGrant,
    /// The IdP refuses the exchange for another reason (`invalid_scope`, `unauthorized_client`...): a
    /// route or IdP configuration problem. Never an allow without the token.
    DelegationRefused,
}

/// What one [`Deny`] answers, before the browser-navigation redirect is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Never anything but UNAUTHENTICATED or PERMISSION_DENIED: Envoy treats other codes as errors, which
    /// `failure_mode_allow` could turn into an allow.
    pub grpc: Code,
    pub body: &'static str,
    /// Whether a presented session cookie is now worthless and is cleared.
    pub clears_cookie: bool,
    pub retry_after: Option<u32>,
    /// RFC 6750 challenge for API clients: such a 401 is never turned into a login redirect.
    pub www_authenticate: Option<&'static str>,
    /// The body names the route's delegated scope: `{"error":<this>,"scope":<portcullis.delegate>}`, so the
    /// app can send the user to consent to exactly that.
    pub names_scope: Option<&'static str>,
}

impl Deny {
    /// Every variant, in declaration order (`d as usize` indexes it).
    pub const ALL: [Deny; 25] = [
        Deny::Malformed,
        Deny::IdentityHeader,
        Deny::NoCookie,
        Deny::DuplicateCookie,
        Deny::UnknownSession,
        Deny::IdleTimeout,
        Deny::AbsoluteTimeout,
        Deny::Fingerprint,
        Deny::Corrupt,
        Deny::Tampered,
        Deny::UnknownKey,
        Deny::UnknownProvider,
        Deny::Revoked,
        Deny::InvalidToken,
        Deny::Forbidden,
        Deny::Misconfigured,
        Deny::RedisUnavailable,
        Deny::IdpUnavailable,
        Deny::Assertion,
        Deny::BearerInvalid,
        Deny::BearerScope,
        Deny::ConsentRequired,
        Deny::InteractionRequired,
        Deny::DelegationInvalidGrant,
        Deny::DelegationRefused,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Deny::Malformed => "malformed",
            Deny::IdentityHeader => "identity_header",
            Deny::NoCookie => "no_cookie",
            Deny::DuplicateCookie => "duplicate_cookie",
            Deny::UnknownSession => "unknown_session",
            Deny::IdleTimeout => "idle_timeout",
            Deny::AbsoluteTimeout => "absolute_timeout",
            Deny::Fingerprint => "fingerprint",
            Deny::Corrupt => "corrupt_session",
            Deny::Tampered => "tampered",
            Deny::UnknownKey => "unknown_key",
            Deny::UnknownProvider => "unknown_provider",
            Deny::Revoked => "revoked",
            Deny::InvalidToken => "invalid_token",
            Deny::Forbidden => "forbidden",
            Deny::Misconfigured => "misconfigured_route",
            Deny::RedisUnavailable => "redis_unavailable",
            Deny::IdpUnavailable => "idp_unavailable",
            Deny::Assertion => "assertion_failed",
            Deny::BearerInvalid => "bearer_invalid",
            Deny::BearerScope => "bearer_scope",
            Deny::ConsentRequired => "consent_required",
            Deny::InteractionRequired => "interaction_required",
            Deny::DelegationInvalidGrant => "delegation_invalid_grant",
            Deny::DelegationRefused => "delegation_refused",
        }
    }

    /// The answer table.
    pub fn answer(self) -> Answer {
        const fn a(status: u16, grpc: Code, body: &'static str, clears_cookie: bool) -> Answer {
            Answer { status, grpc, body, clears_cookie, retry_after: None, www_authenticate: None, names_scope: None }
        }
        const UNAUTH: &str = r#"{"error":"unauthenticated"}"#;
        match self {
            Deny::Malformed | Deny::IdentityHeader => {
                a(400, Code::PermissionDenied, r#"{"error":"bad_request"}"#, false)
            }
            Deny::NoCookie => a(401, Code::Unauthenticated, UNAUTH, false),
            // Which of the two cookies is ours is unknown: clearing would only clear one of them.
            Deny::DuplicateCookie => a(401, Code::Unauthenticated, UNAUTH, false),
            Deny::UnknownSession
            | Deny::IdleTimeout
            | Deny::AbsoluteTimeout
            | Deny::Fingerprint
            | Deny::Corrupt
            | Deny::Tampered
            | Deny::Revoked
            | Deny::InvalidToken
            | Deny::DelegationInvalidGrant => a(401, Code::Unauthenticated, UNAUTH, true),
            Deny::BearerInvalid => Answer {
                www_authenticate: Some(r#"Bearer error="invalid_token""#),
                ..a(401, Code::Unauthenticated, UNAUTH, false)
            },
            Deny::BearerScope => Answer {
                www_authenticate: Some(r#"Bearer error="insufficient_scope""#),
                ..a(403, Code::PermissionDenied, r#"{"error":"forbidden"}"#, false)
            },
            Deny::Forbidden | Deny::Misconfigured => a(403, Code::PermissionDenied, r#"{"error":"forbidden"}"#, false),
            Deny::ConsentRequired => Answer {
                names_scope: Some("consent_required"),
                ..a(403, Code::PermissionDenied, r#"{"error":"consent_required"}"#, false)
            },
            Deny::InteractionRequired => Answer {
                names_scope: Some("interaction_required"),
                ..a(403, Code::PermissionDenied, r#"{"error":"interaction_required"}"#, false)
            },
            Deny::DelegationRefused => a(403, Code::PermissionDenied, r#"{"error":"delegation_refused"}"#, false),
            // UnknownKey/UnknownProvider: this replica cannot judge the session (replicas differ mid-rollout),
            // so it stays in Redis for one that can.
            Deny::RedisUnavailable
            | Deny::IdpUnavailable
            | Deny::UnknownKey
            | Deny::UnknownProvider
            | Deny::Assertion => Answer {
                retry_after: Some(RETRY_AFTER_SECS),
                ..a(503, Code::PermissionDenied, r#"{"error":"unavailable"}"#, false)
            },
        }
    }

    /// Whether a dry run may let this deny through. Malformed requests and identity-header smuggling are
    /// always refused: letting them through would hand the upstream a header that reads as an identity.
    pub fn dry_runnable(self) -> bool {
        !matches!(self, Deny::Malformed | Deny::IdentityHeader)
    }

    /// Whether a presented session cookie is now worthless and should be cleared (and its session ended).
    pub fn clears_cookie(self) -> bool {
        self.answer().clears_cookie
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unauthenticated_or_permission_denied_ever_leave() {
        for (i, d) in Deny::ALL.into_iter().enumerate() {
            assert_eq!(d as usize, i, "Deny::ALL is in declaration order");
            let a = d.answer();
            assert!(matches!(a.grpc, Code::Unauthenticated | Code::PermissionDenied), "{d:?}");
            assert_eq!(a.grpc == Code::Unauthenticated, a.status == 401, "{d:?}");
            assert_eq!(a.retry_after.is_some(), a.status == 503, "{d:?}");
            assert!(!a.clears_cookie || a.status == 401, "{d:?}");
        }
        assert_eq!(Deny::ALL.len(), Deny::DelegationRefused as usize + 1, "a new variant goes last and into ALL");
    }
}
