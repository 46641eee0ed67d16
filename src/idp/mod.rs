//! Identity providers: the validator each provider kind implements for the Check path.
//!
//! Built by `crate::providers` (the one place that assembles them, with the M2M manager and the login side).
//! One concern per file: `transport` (every IdP call: shared client, timeout, no redirects, breaker,
//! metrics, and the `oauth2` crate's client) over `breaker`; `discovery` and `jwks` (what a provider
//! publishes); `id_token` (verification) and `verified` (verifications remembered per key set);
//! `provider` (what one configured provider's validators share); `oidc` (ping + oidc: introspection) and `entra` (Graph); `refresh`
//! (refresh_token grant under a per-session `crate::lock`); `coalesce` (revalidation modes, single-flight).
//! Every failure to get an answer is [`IdpError::Unavailable`]: the Check path turns it into a 503.

use std::collections::HashMap;
use std::sync::Arc;

use crate::crypto::CryptoError;
use crate::session::{Session, Tokens};

pub mod bearer;
pub mod breaker;
pub mod claims;
pub mod coalesce;
pub mod discovery;
pub mod entra;
pub mod freshness;
pub mod id_token;
pub mod jwks;
pub mod oidc;
pub mod provider;
pub mod refresh;
pub mod transport;
pub mod verified;

/// Who the upstream is told the user is.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub user_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

/// A successful revalidation.
#[derive(Debug, Clone)]
pub struct Validated {
    pub identity: Identity,
    /// New tokens from a refresh, already written to the session by the validator.
    pub refreshed: Option<Tokens>,
}

/// Why a revalidation did not succeed. The split decides the answer: the first two are the user's
/// problem (401, session deleted), the last is ours (503, session kept).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdpError {
    /// The IdP says the session is over: inactive token, disabled account, revoked sessions, refresh refused.
    #[error("revoked: {0}")]
    Revoked(String),
    /// A token failed verification (signature, issuer, audience, algorithm).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The IdP could not answer: down, timed out, circuit open, nonsense reply, M2M token unavailable.
    #[error("idp unavailable: {0}")]
    Unavailable(String),
    /// A stored token the validator opened did not open: tampered (401, deleted) or sealed under a key this
    /// replica lacks (503, kept), as when the check opens one.
    #[error("stored token: {0}")]
    Sealed(#[from] CryptoError),
}

/// Revalidates a session with its provider.
#[async_trait::async_trait]
pub trait Validator: Send + Sync {
    /// `id_token`: the session's ID token, opened by the check (every provider verifies it). The other
    /// tokens stay sealed in `session` until the validator needs one: the access token for introspection
    /// ([`crate::session::SessionStore::open_access_token`]), the refresh token inside a refresh.
    async fn validate(&self, session: &Session, id_token: &str, now: i64) -> Result<Validated, IdpError>;

    /// The identity of a success still good for this session id without asking anyone (`max_staleness`):
    /// the Check path then reads only the session's small fields and never opens its tokens. Most
    /// validators remember nothing.
    fn remembered(&self, _session_id: &str) -> Option<Identity> {
        None
    }

    /// Whether the provider's circuit breaker would refuse `session`'s revalidation call now. The Check
    /// path asks before decrypting or verifying anything and answers 503 at once: failing fast must be fast.
    fn circuit_open(&self, _session: &Session) -> bool {
        false
    }
}

/// Validators by provider id (the session's `provider` field).
pub type Validators = HashMap<String, Arc<dyn Validator>>;
