//! OIDC discovery (`{issuer}/.well-known/openid-configuration`), with every endpoint overridable in the
//! provider's config. Fetched at start; if the IdP is down then, fetched again on first use, so a
//! provider that was down at start-up recovers by itself; and again once no longer fresh (see
//! [`super::freshness`]), so endpoints the IdP moves are followed without a restart. While the IdP cannot
//! be reached the last document is used, and asked for again every [`super::freshness::RETRY`].

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::freshness;
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
    /// Parsed once here: parsing it for every introspection cost an `every_request` check a few % of its CPU.
    pub introspection_endpoint: Option<reqwest::Url>,
    pub revocation_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
}

/// `introspection_endpoint` as a URL; one that is not is logged, and the provider then has none (its
/// introspections are 503s, as a request to it would have failed).
fn introspection_url(s: Option<String>) -> Option<reqwest::Url> {
    let s = s?;
    reqwest::Url::parse(&s)
        .inspect_err(|e| tracing::warn!(url = %s, error = %e, "introspection_endpoint is not a URL: not used"))
        .ok()
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

/// Discovery for one provider, fetched on first use and again once stale.
#[derive(Debug)]
pub struct Discovery {
    issuer: String,
    overrides: Overrides,
    /// The endpoints and until when they are fresh (`None`: for ever, all from config).
    cached: RwLock<Option<(Arc<Endpoints>, Option<Instant>)>>,
    /// Serialises fetches: concurrent users of a stale document share one.
    fetching: tokio::sync::Mutex<()>,
    /// The provider's `metadata_max_age`.
    cap: Duration,
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
            cached: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
            cap: cfg.metadata_max_age,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn fresh(&self) -> Option<Arc<Endpoints>> {
        let c = self.cached.read().unwrap_or_else(|e| e.into_inner());
        match c.as_ref() {
            Some((e, until)) if until.is_none_or(|t| Instant::now() < t) => Some(e.clone()),
            _ => None,
        }
    }

    /// The endpoints, fetching the discovery document unless config names the ones we need.
    pub async fn endpoints(&self, http: &Transport) -> Result<Arc<Endpoints>, IdpError> {
        if let Some(e) = self.fresh() {
            return Ok(e);
        }
        let _guard = self.fetching.lock().await;
        if let Some(e) = self.fresh() {
            return Ok(e);
        }
        let resolved = self.resolve(http).await;
        let mut c = self.cached.write().unwrap_or_else(|e| e.into_inner());
        match resolved {
            Ok((e, until)) => {
                *c = Some((e.clone(), until));
                Ok(e)
            }
            Err(err) => match c.as_mut() {
                // A stale document is better than none while the IdP is away; ask again soon.
                Some((e, until)) => {
                    tracing::warn!(provider_issuer = %self.issuer, error = %err, "could not refresh discovery; using the last document for now");
                    *until = Some(Instant::now() + freshness::RETRY);
                    Ok(e.clone())
                }
                None => Err(err),
            },
        }
    }

    /// The endpoints and until when they are fresh.
    async fn resolve(&self, http: &Transport) -> Result<(Arc<Endpoints>, Option<Instant>), IdpError> {
        let o = &self.overrides;
        if let (Some(jwks_uri), Some(token_endpoint)) = (&o.jwks_uri, &o.token_endpoint) {
            if o.introspection_endpoint.is_some() {
                let e = Endpoints {
                    authorization_endpoint: o.authorization_endpoint.clone(),
                    jwks_uri: jwks_uri.clone(),
                    token_endpoint: token_endpoint.clone(),
                    introspection_endpoint: introspection_url(o.introspection_endpoint.clone()),
                    revocation_endpoint: o.revocation_endpoint.clone(),
                    end_session_endpoint: o.end_session_endpoint.clone(),
                };
                return Ok((Arc::new(e), None));
            }
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let (doc, headers) = match http.send_with_headers::<Document>(Kind::Discovery, http.client.get(&url)).await? {
            (Reply::Ok(d), h) => (d, h),
            (Reply::Refused { status, .. }, _) => {
                return Err(IdpError::Unavailable(format!("discovery answered HTTP {status}")));
            }
        };
        if doc.issuer.trim_end_matches('/') != self.issuer {
            // OIDC Discovery 1.0 §4.3: the document's issuer MUST match. ID tokens are checked against
            // the configured issuer regardless; say loudly that they will not verify.
            tracing::warn!(configured = %self.issuer, discovered = %doc.issuer, "discovery issuer differs from the configured issuer");
        }
        let until = Instant::now() + freshness::fresh_for(&headers, self.cap);
        let e = Arc::new(Endpoints {
            authorization_endpoint: o.authorization_endpoint.clone().or(doc.authorization_endpoint),
            jwks_uri: o.jwks_uri.clone().unwrap_or(doc.jwks_uri),
            token_endpoint: o.token_endpoint.clone().unwrap_or(doc.token_endpoint),
            introspection_endpoint: introspection_url(o.introspection_endpoint.clone().or(doc.introspection_endpoint)),
            revocation_endpoint: o.revocation_endpoint.clone().or(doc.revocation_endpoint),
            end_session_endpoint: o.end_session_endpoint.clone().or(doc.end_session_endpoint),
        });
        Ok((e, Some(until)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_introspection_endpoint_is_parsed_once_and_nonsense_is_none() {
        let url = introspection_url(Some("https://idp.example/as/introspect.oauth2".into()));
        assert_eq!(url.as_ref().map(reqwest::Url::as_str), Some("https://idp.example/as/introspect.oauth2"));
        assert_eq!(introspection_url(Some("not a url".into())), None);
        assert_eq!(introspection_url(None), None);
    }
}
