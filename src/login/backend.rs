//! The login routes' view of an IdP provider ([`LoginBackend`] for [`crate::idp::provider::Provider`]):
//! lazily discovered endpoints, ID tokens checked with the login's nonce, and back-channel logout tokens
//! (OIDC Back-Channel Logout 1.0 §2.6). It lives on the login side so that `idp` never imports `login`.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::logout_token;
use super::provider::{LoginBackend, LoginEndpoints};
use crate::config::ProviderKind;
use crate::idp::provider::Provider;
use crate::idp::IdpError;

/// Clock skew tolerated on `exp`.
const LEEWAY: i64 = 60;

#[async_trait::async_trait]
impl LoginBackend for Provider {
    async fn endpoints(&self) -> Result<LoginEndpoints, IdpError> {
        let e = self.discovery.endpoints(&self.http).await?;
        Ok(LoginEndpoints {
            authorization_endpoint: e
                .authorization_endpoint
                .clone()
                .ok_or_else(|| IdpError::Unavailable("the provider publishes no authorization_endpoint".into()))?,
            token_endpoint: e.token_endpoint.clone(),
            end_session_endpoint: e.end_session_endpoint.clone(),
        })
    }

    async fn verify_id_token(&self, token: &str, nonce: &str) -> Result<Map<String, Value>, IdpError> {
        let id = Provider::verify_id_token(self, token).await?;
        if id.expired(crate::now() - LEEWAY) {
            return Err(IdpError::Invalid("id token expired".into()));
        }
        if id.text("nonce") != Some(nonce) {
            return Err(IdpError::Invalid("id token nonce does not match this login".into()));
        }
        if self.cfg.kind == ProviderKind::Entra && id.text("tid") != self.cfg.tenant.as_deref() {
            return Err(IdpError::Invalid("id token from another tenant".into()));
        }
        Ok(Arc::unwrap_or_clone(id).claims)
    }

    async fn verify_logout_token(&self, token: &str) -> Result<Map<String, Value>, IdpError> {
        let header = logout_token::header(token)?;
        let key = self.jwks.key(header.kid.as_deref(), &self.http, &self.discovery).await?;
        logout_token::verify(token, header.alg, &key, &self.issuer, &self.cfg.client_id, crate::now())
    }

    fn user_id(&self, claims: &Map<String, Value>) -> Option<String> {
        let claim = if self.cfg.kind == ProviderKind::Entra { "oid" } else { "sub" };
        claims.get(claim).and_then(Value::as_str).map(String::from)
    }
}
