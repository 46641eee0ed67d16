//! `ping` and `oidc` providers: the ID token is verified against the JWKS on every check, then the
//! access token is introspected (RFC 7662). `active:false` may only mean the access token expired, so a
//! stored refresh token gets one try; a refresh the IdP refuses ends the session.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::provider::Provider;
use super::transport::{Kind, Reply};
use super::{refresh, IdpError, Validated, Validator};
use crate::config::{ClientAuth, IntrospectionAuth};
use crate::session::Session;

/// The claim that must equal the session's `userId`.
const USER_CLAIM: &str = "sub";

pub struct OidcValidator {
    p: Arc<Provider>,
}

impl OidcValidator {
    pub fn new(p: Arc<Provider>) -> Self {
        Self { p }
    }

    async fn introspect(&self, token: &str) -> Result<Map<String, Value>, IdpError> {
        introspect(&self.p, token).await
    }

    /// Boxed where it is awaited: a refresh is rare, and every revalidation's future would carry its state.
    async fn refreshed(&self, s: &Session, now: i64) -> Result<Validated, IdpError> {
        let r = Box::pin(refresh::refresh(&self.p, s, now, USER_CLAIM)).await?;
        Ok(Validated { identity: self.p.claims.identity(&s.user_id, &r.id_token.claims), refreshed: Some(r.tokens) })
    }
}

#[async_trait::async_trait]
impl Validator for OidcValidator {
    async fn validate(&self, s: &Session, id_token: &str, now: i64) -> Result<Validated, IdpError> {
        let id = self.p.verify_id_token(id_token).await?;
        if id.text(USER_CLAIM) != Some(s.user_id.as_str()) {
            return Err(IdpError::Invalid("id token names another user".into()));
        }
        let can_refresh = s.refresh_token.is_some();
        if id.expired(now) && can_refresh {
            return self.refreshed(s, now).await;
        }
        // Without a refresh token an expired ID token is still the IdP's word on who the user is;
        // whether the session lives is introspection's answer.
        let intro = self.introspect(&self.p.store.open_access_token(s)?).await?;
        if intro.get("active").and_then(Value::as_bool) == Some(true) {
            let identity = self.p.claims.identity_from(&s.user_id, &[&id.claims, &intro]);
            return Ok(Validated { identity, refreshed: None });
        }
        if can_refresh {
            return self.refreshed(s, now).await;
        }
        Err(IdpError::Revoked("access token inactive".into()))
    }

    fn circuit_open(&self, _: &Session) -> bool {
        self.p.http.circuit_open(Kind::Introspection)
    }
}

/// RFC 7662 introspection of `token` at `p`, authenticated as configured (`bearer`: the M2M token): the
/// whole response, whose `active` was a boolean.
pub(crate) async fn introspect(p: &Provider, token: &str) -> Result<Map<String, Value>, IdpError> {
    let ep = p.discovery.endpoints(&p.http).await?;
    let url = ep
        .introspection_endpoint
        .clone()
        .ok_or_else(|| IdpError::Unavailable("the provider has no introspection endpoint".into()))?;
    let mut form = vec![("token", token.to_string()), ("token_type_hint", "access_token".to_string())];
    let req = p.http.client.post(url);
    let req = match p.cfg.introspection_auth {
        IntrospectionAuth::Bearer => req.bearer_auth(p.m2m_token().await?),
        IntrospectionAuth::ClientSecretBasic => p.client_auth(req, ClientAuth::ClientSecretBasic, &mut form),
        IntrospectionAuth::ClientSecretPost => p.client_auth(req, ClientAuth::ClientSecretPost, &mut form),
    };
    match p.http.send::<Map<String, Value>>(Kind::Introspection, req.form(&form)).await? {
        Reply::Ok(m) if m.get("active").is_some_and(Value::is_boolean) => Ok(m),
        Reply::Ok(_) => Err(IdpError::Unavailable("introspection reply without a boolean `active`".into())),
        Reply::Refused { status, .. } => {
            Err(IdpError::Unavailable(format!("introspection refused our credentials: HTTP {status}")))
        }
    }
}
