//! `entra` (Microsoft Entra ID): the v2.0 ID token is verified against the tenant's JWKS (`tid` must be
//! the configured tenant), the user is the `oid` claim (`sub` differs per application), and Microsoft
//! Graph says whether the account still may sign in: disabled, deleted, or sessions revoked after this
//! session's login all end the session.

use std::sync::Arc;

use serde::Deserialize;

use super::id_token::IdToken;
use super::provider::Provider;
use super::transport::{Kind, Reply};
use super::{refresh, IdpError, Validated, Validator};
use crate::session::Session;

const USER_CLAIM: &str = "oid";

pub struct EntraValidator {
    p: Arc<Provider>,
    tenant: String,
    graph_url: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphUser {
    #[serde(default)]
    account_enabled: Option<bool>,
    #[serde(default)]
    sign_in_sessions_valid_from_date_time: Option<String>,
}

impl EntraValidator {
    pub fn new(p: Arc<Provider>) -> Self {
        let tenant = p.cfg.tenant.clone().unwrap_or_default();
        let graph_url = p.cfg.graph_url().trim_end_matches('/').to_string();
        Self { p, tenant, graph_url }
    }

    fn check_token(&self, id: &IdToken, s: &Session) -> Result<(), IdpError> {
        if id.text("tid") != Some(self.tenant.as_str()) {
            return Err(IdpError::Invalid("id token from another tenant".into()));
        }
        if id.text(USER_CLAIM) != Some(s.user_id.as_str()) {
            return Err(IdpError::Invalid("id token names another user".into()));
        }
        Ok(())
    }

    /// `GET /users/{oid}?$select=accountEnabled,signInSessionsValidFromDateTime` with the M2M token.
    async fn graph(&self, s: &Session) -> Result<(), IdpError> {
        let oid: String = url::form_urlencoded::byte_serialize(s.user_id.as_bytes()).collect();
        let url = format!("{}/users/{oid}?$select=accountEnabled,signInSessionsValidFromDateTime", self.graph_url);
        let req = self.p.http.client.get(url).bearer_auth(self.p.m2m_token().await?);
        let user: GraphUser = match self.p.http.send(Kind::Graph, req).await? {
            Reply::Ok(u) => u,
            Reply::Refused { status: 404, .. } => return Err(IdpError::Revoked("user not found in Graph".into())),
            Reply::Refused { status, .. } => {
                return Err(IdpError::Unavailable(format!("Graph refused: HTTP {status}")))
            }
        };
        if user.account_enabled == Some(false) {
            return Err(IdpError::Revoked("account disabled".into()));
        }
        if let Some(t) = user.sign_in_sessions_valid_from_date_time.as_deref() {
            let valid_from = humantime::parse_rfc3339_weak(t)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .ok_or_else(|| {
                    IdpError::Unavailable("Graph sent an unreadable signInSessionsValidFromDateTime".into())
                })?;
            if valid_from.as_secs() as i64 > s.created_at {
                return Err(IdpError::Revoked("sign-in sessions revoked after this login".into()));
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Validator for EntraValidator {
    async fn validate(&self, s: &Session, id_token: &str, now: i64) -> Result<Validated, IdpError> {
        let id = self.p.verify_id_token(id_token).await?;
        self.check_token(&id, s)?;
        let (id, refreshed) = if id.expired(now) && s.refresh_token.is_some() {
            let r = Box::pin(refresh::refresh(&self.p, s, now, USER_CLAIM)).await?;
            self.check_token(&r.id_token, s)?;
            (r.id_token, Some(r.tokens))
        } else {
            (id, None)
        };
        self.graph(s).await?;
        Ok(Validated { identity: self.p.claims.identity(&s.user_id, &id.claims), refreshed })
    }

    fn circuit_open(&self, _: &Session) -> bool {
        self.p.http.circuit_open(Kind::Graph)
    }
}
