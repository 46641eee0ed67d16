//! Identity providers: the validator each provider kind implements for the Check path.
//!
//! One concern per file: `http` (shared client, timeout, breaker, metrics) over `breaker`; `discovery`
//! and `jwks` (what a provider publishes); `id_token` (verification); `provider` (what one configured
//! provider's validators share); `oidc` (ping + oidc: introspection) and `entra` (Graph); `refresh`
//! (refresh_token grant under a per-session `crate::lock`); `coalesce` (revalidation modes, single-flight).
//! Every failure to get an answer is [`IdpError::Unavailable`]: the Check path turns it into a 503.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ProviderKind};
use crate::login::LoginProvider;
use crate::m2m::M2mSource;
use crate::session::{Session, SessionStore, Tokens};

pub mod breaker;
pub mod claims;
pub mod coalesce;
pub mod discovery;
pub mod entra;
pub mod http;
pub mod id_token;
pub mod jwks;
pub mod login;
pub mod m2m;
pub mod oidc;
pub mod provider;
pub mod refresh;

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
    pub login: std::collections::BTreeMap<String, Arc<LoginProvider>>,
    /// The Redis-shared M2M manager, when [`from_config`] built one (its refresher is the server's to run).
    pub m2m: Option<Arc<crate::m2m::M2mManager>>,
}

/// Where the providers' M2M tokens come from.
pub enum M2mChoice {
    /// The Redis-shared manager, one token-endpoint call per expiry across replicas (production).
    Shared,
    /// A given source (tests).
    Given(Arc<dyn M2mSource>),
}

/// Builds a validator for every configured provider: `ping`/`oidc` revalidate by introspection, `entra`
/// through Microsoft Graph, each wrapped in the configured revalidation mode with single-flight. M2M tokens
/// come from `m2m`; refreshed tokens go to `store`. Discovery and keys are fetched now, concurrently; a
/// provider whose IdP is down at start-up still gets its validator (it fetches on first use and answers
/// 503 until then). Only a provider that cannot be built at all is left out, and its sessions are denied.
pub async fn from_config(cfg: &Config, m2m: M2mChoice, store: SessionStore) -> Providers {
    let mut out = Providers::default();
    let (m2m, shared): (Arc<dyn M2mSource>, _) = match m2m {
        M2mChoice::Given(s) => (s, None),
        M2mChoice::Shared => {
            let late = Arc::new(m2m::LateM2m::default());
            (late.clone(), Some(late))
        }
    };
    let client = match http::client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the IdP HTTP client: every provider's sessions are denied");
            return out;
        }
    };
    let mut providers = Vec::new();
    for (name, p) in &cfg.providers {
        let Some(issuer) = p.issuer() else {
            tracing::error!(provider = %name, "provider has no issuer: its sessions are denied");
            continue;
        };
        let built = provider::Provider::new(name, p, issuer, client.clone(), m2m.clone(), store.clone());
        providers.push(Arc::new(built));
    }
    if let Some(late) = shared {
        let mut clients = HashMap::new();
        for p in &providers {
            let settings = crate::m2m::ClientSettings::from_provider(&p.cfg, "");
            let resolver = Arc::new(m2m::DiscoveredTokenEndpoint(Arc::downgrade(p)));
            match crate::m2m::TokenClient::discovered(settings, resolver) {
                Ok(c) => {
                    clients.insert(p.name.clone(), c);
                }
                Err(e) => tracing::error!(provider = %p.name, error = %e, "no M2M client: its checks answer 503"),
            }
        }
        let manager = Arc::new(crate::m2m::M2mManager::new(store.redis().clone(), &cfg.m2m, clients));
        late.set(manager.clone());
        out.m2m = Some(manager);
    }
    futures::future::join_all(providers.iter().map(|p| p.warm_up())).await;
    for p in providers {
        let inner: Arc<dyn Validator> = match p.cfg.kind {
            ProviderKind::Ping | ProviderKind::Oidc => Arc::new(oidc::OidcValidator::new(p.clone())),
            ProviderKind::Entra => Arc::new(entra::EntraValidator::new(p.clone())),
        };
        out.validators.insert(p.name.clone(), coalesce::wrap(inner, &cfg.revalidation));
        let redirect_uri = format!("{}/oauth2/callback", cfg.server.public_url.trim_end_matches('/'));
        let login = LoginProvider::new(&p.name, &p.cfg, &p.issuer, &redirect_uri, p.clone());
        out.login.insert(p.name.clone(), Arc::new(login));
    }
    out
}
