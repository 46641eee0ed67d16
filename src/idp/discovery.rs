//! OIDC discovery (`{issuer}/.well-known/openid-configuration`), with every endpoint overridable in the
//! provider's config. Fetched at start; if the IdP is down then, fetched again on first use, so a
//! provider that was down at start-up recovers by itself.

use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::OnceCell;

use super::transport::{Kind, Reply, Transport};
use super::IdpError;
use crate::config::ProviderConfig;

/// The endpoints a validator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Only the login routes need it; validators do not.
    pub authorization_endpoint: Option<String>,
    pub jwks_uri: String,
    pub token_endpoint: String,
    pub introspection_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
}

/// The parts of a discovery document we read.
#[derive(Debug, Deserialize)]
struct Document {
    issuer: String,
    #[serde(default)]
    authorization_endpoint: Option<String>,
    jwks_uri: String,
    token_endpoint: String,
    #[serde(default)]
    introspection_endpoint: Option<String>,
    #[serde(default)]
    revocation_endpoint: Option<String>,
    #[serde(default)]
    end_session_endpoint: Option<String>,
}

/// Discovery for one provider, fetched once (retried on use while it has not succeeded).
#[derive(Debug)]
pub struct Discovery {
    issuer: String,
    overrides: Overrides,
    cell: OnceCell<Arc<Endpoints>>,
}

#[derive(Debug, Clone, Default)]
struct Overrides {
    authorization_endpoint: Option<String>,
    jwks_uri: Option<String>,
    token_endpoint: Option<String>,
    introspection_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
}

impl Discovery {
    pub fn new(issuer: &str, cfg: &ProviderConfig) -> Self {
        Self {
            issuer: issuer.trim_end_matches('/').to_string(),
            overrides: Overrides {
                authorization_endpoint: cfg.authorization_endpoint.clone(),
                jwks_uri: cfg.jwks_uri.clone(),
                token_endpoint: cfg.token_endpoint.clone(),
                introspection_endpoint: cfg.introspection_endpoint.clone(),
                revocation_endpoint: cfg.revocation_endpoint.clone(),
                end_session_endpoint: cfg.end_session_endpoint.clone(),
            },
            cell: OnceCell::new(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The endpoints, fetching the discovery document unless config names the ones we need.
    pub async fn endpoints(&self, http: &Transport) -> Result<Arc<Endpoints>, IdpError> {
        self.cell.get_or_try_init(|| self.resolve(http)).await.cloned()
    }

    async fn resolve(&self, http: &Transport) -> Result<Arc<Endpoints>, IdpError> {
        let o = &self.overrides;
        if let (Some(jwks_uri), Some(token_endpoint)) = (&o.jwks_uri, &o.token_endpoint) {
            if o.introspection_endpoint.is_some() {
                return Ok(Arc::new(Endpoints {
                    authorization_endpoint: o.authorization_endpoint.clone(),
                    jwks_uri: jwks_uri.clone(),
                    token_endpoint: token_endpoint.clone(),
                    introspection_endpoint: o.introspection_endpoint.clone(),
                    revocation_endpoint: o.revocation_endpoint.clone(),
                    end_session_endpoint: o.end_session_endpoint.clone(),
                }));
            }
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let doc: Document = match http.send(Kind::Discovery, http.client.get(&url)).await? {
            Reply::Ok(d) => d,
            Reply::Refused { status, .. } => {
                return Err(IdpError::Unavailable(format!("discovery answered HTTP {status}")));
            }
        };
        if doc.issuer.trim_end_matches('/') != self.issuer {
            // OIDC Discovery 1.0 §4.3: the document's issuer MUST match. ID tokens are checked against
            // the configured issuer regardless; say loudly that they will not verify.
            tracing::warn!(configured = %self.issuer, discovered = %doc.issuer, "discovery issuer differs from the configured issuer");
        }
        Ok(Arc::new(Endpoints {
            authorization_endpoint: o.authorization_endpoint.clone().or(doc.authorization_endpoint),
            jwks_uri: o.jwks_uri.clone().unwrap_or(doc.jwks_uri),
            token_endpoint: o.token_endpoint.clone().unwrap_or(doc.token_endpoint),
            introspection_endpoint: o.introspection_endpoint.clone().or(doc.introspection_endpoint),
            revocation_endpoint: o.revocation_endpoint.clone().or(doc.revocation_endpoint),
            end_session_endpoint: o.end_session_endpoint.clone().or(doc.end_session_endpoint),
        }))
    }
}
