//! What every validator of one configured provider shares: its transport (timeout + breaker + metrics)
//! and discovery (both built first by `crate::providers`, and shared with the M2M token client and the
//! login routes), keys, M2M tokens, claim names and the session store (for refreshes).

use std::sync::Arc;
use std::time::Duration;

use super::claims::ClaimNames;
use super::discovery::Discovery;
use super::id_token::{self, Expect, IdToken};
use super::jwks::Jwks;
use super::transport::Transport;
use super::verified::Verified;
use super::IdpError;
use crate::config::{ClientAuth, ProviderConfig};
use crate::m2m::M2mSource;
use crate::session::SessionStore;

pub struct Provider {
    pub name: String,
    pub cfg: ProviderConfig,
    pub issuer: String,
    pub http: Arc<Transport>,
    pub discovery: Arc<Discovery>,
    pub jwks: Jwks,
    pub m2m: Arc<dyn M2mSource>,
    pub store: SessionStore,
    pub claims: ClaimNames,
    /// ID tokens already verified under the current key set.
    verified: Verified,
}

impl Provider {
    pub fn new(
        name: &str,
        cfg: &ProviderConfig,
        issuer: String,
        http: Arc<Transport>,
        discovery: Arc<Discovery>,
        m2m: Arc<dyn M2mSource>,
        store: SessionStore,
    ) -> Self {
        Self {
            name: name.to_string(),
            http,
            discovery,
            issuer,
            jwks: Jwks::new(cfg.metadata_max_age),
            m2m,
            store,
            claims: ClaimNames {
                email: cfg.email_claim.clone(),
                name: cfg.name_claim.clone(),
                groups: cfg.groups_claim.clone(),
                require_verified_email: cfg.require_verified_email,
            },
            cfg: cfg.clone(),
            verified: Verified::default(),
        }
    }

    /// Start-up warm-up: discovery and keys. Failure is logged, not fatal: both are fetched on first use.
    pub async fn warm_up(&self) {
        if let Err(e) = self.jwks.fetch(&self.http, &self.discovery).await {
            tracing::warn!(provider = %self.name, error = %e, "could not load discovery/JWKS at start; will retry on use");
        }
    }

    /// Verifies an ID token (signature, issuer, audience; see [`id_token::verify`]), or finds it verified
    /// already under the key set that is fresh now.
    pub async fn verify_id_token(&self, token: &str) -> Result<Arc<IdToken>, IdpError> {
        let digest = Verified::digest(token);
        let keys = self.jwks.fresh_generation();
        if let Some(t) = self.verified.get(&digest, keys).await {
            return Ok(t);
        }
        let expect = Expect { issuer: &self.issuer, audience: &self.cfg.client_id };
        // Boxed: the first sight of a token (keys may be fetched) is rare; the check's future stays small.
        let t = Arc::new(Box::pin(id_token::verify(token, &expect, &self.jwks, &self.http, &self.discovery)).await?);
        if let Some(keys) = keys {
            self.verified.insert(digest, t.clone(), keys, crate::now()).await;
        }
        Ok(t)
    }

    /// The M2M token; without one the IdP cannot be asked, which is ours to fix: 503.
    pub async fn m2m_token(&self) -> Result<String, IdpError> {
        self.m2m.token(&self.name).await.map_err(|e| IdpError::Unavailable(e.to_string()))
    }

    /// Adds client authentication (RFC 6749 §2.3.1) to a token-endpoint style request.
    pub fn client_auth(
        &self,
        req: reqwest::RequestBuilder,
        how: ClientAuth,
        form: &mut Vec<(&'static str, String)>,
    ) -> reqwest::RequestBuilder {
        let secret = self.cfg.client_secret();
        match how {
            ClientAuth::ClientSecretBasic => {
                req.basic_auth(form_encode(&self.cfg.client_id), Some(form_encode(&secret)))
            }
            ClientAuth::ClientSecretPost => {
                form.push(("client_id", self.cfg.client_id.clone()));
                form.push(("client_secret", secret));
                req
            }
        }
    }

    /// How long a refresh lock lives: longer than the holder's IdP calls can take (discovery, keys and the
    /// token endpoint, each bounded by the timeout), so it never lapses while a refresh is in flight.
    pub fn lock_ttl(&self) -> Duration {
        self.cfg.timeout * 3 + Duration::from_secs(1)
    }
}

/// `application/x-www-form-urlencoded` of one value, as client_secret_basic requires.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
