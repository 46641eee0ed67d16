//! Identity providers: the validator each provider kind implements for the Check path.

use std::collections::HashMap;
use std::sync::Arc;

use crate::session::{Session, Tokens};

pub mod claims;

/// Who the upstream is told the user is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
}

/// Revalidates a session with its provider.
#[async_trait::async_trait]
pub trait Validator: Send + Sync {
    async fn validate(&self, session: &Session, tokens: &Tokens, now: i64) -> Result<Validated, IdpError>;
}

/// Validators by provider id (the session's `provider` field).
pub type Validators = HashMap<String, Arc<dyn Validator>>;

/// What the configured providers contribute: validators for Check, clients for the login routes.
#[derive(Default)]
pub struct Providers {
    pub validators: Validators,
    pub login: std::collections::BTreeMap<String, Arc<crate::login::LoginProvider>>,
}

/// Builds a validator for every configured provider. A provider whose validator cannot be built is left
/// out, and its sessions are denied (fail closed).
pub async fn from_config(cfg: &crate::config::Config) -> Providers {
    let v = Providers::default();
    for (name, p) in &cfg.providers {
        tracing::warn!(provider = %name, kind = ?p.kind, "no validator for this provider kind yet: its sessions are denied");
    }
    v
}
