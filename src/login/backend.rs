//! The login routes' view of an IdP provider ([`LoginBackend`] for [`crate::idp::provider::Provider`]):
//! lazily discovered endpoints, ID tokens checked with the login's nonce, and back-channel logout tokens
//! (OIDC Back-Channel Logout 1.0 §2.6). It lives on the login side so that `idp` never imports `login`.

use jsonwebtoken::{decode, decode_header, Validation};
use serde_json::{Map, Value};

use super::provider::{LoginBackend, LoginEndpoints};
use crate::config::ProviderKind;
use crate::idp::id_token::ALLOWED;
use crate::idp::provider::Provider;
use crate::idp::IdpError;

/// Clock skew tolerated on `exp` and `iat`.
const LEEWAY: i64 = 60;
/// How old a logout token may be.
const LOGOUT_TOKEN_MAX_AGE: i64 = 600;
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How long a verified logout token could still be accepted (seconds from `now`), i.e. how long its `jti`
/// must be remembered to refuse a replay: until `iat` is too old or `exp` has passed, leeway included.
pub fn logout_token_replay_ttl(claims: &Map<String, Value>, now: i64) -> u64 {
    let int = |k: &str| claims.get(k).and_then(Value::as_i64);
    let by_age = int("iat").map_or(now + LOGOUT_TOKEN_MAX_AGE, |iat| iat + LOGOUT_TOKEN_MAX_AGE);
    let until = int("exp").map_or(by_age, |exp| by_age.min(exp + LEEWAY));
    u64::try_from((until - now).clamp(1, LOGOUT_TOKEN_MAX_AGE + 2 * LEEWAY)).unwrap_or(1)
}

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
        Ok(id.claims)
    }

    async fn verify_logout_token(&self, token: &str) -> Result<Map<String, Value>, IdpError> {
        let header = decode_header(token).map_err(|e| IdpError::Invalid(format!("logout token header: {e}")))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(IdpError::Invalid(format!("logout token algorithm {:?} not accepted", header.alg)));
        }
        let key = self.jwks.key(header.kid.as_deref(), &self.http, &self.discovery).await?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.cfg.client_id]);
        v.set_required_spec_claims(&["iss", "aud", "iat"]);
        v.validate_exp = false;
        let claims = decode::<Map<String, Value>>(token, &key, &v)
            .map_err(|e| IdpError::Invalid(format!("logout token: {e}")))?
            .claims;
        let now = crate::now();
        let int = |k: &str| claims.get(k).and_then(Value::as_i64);
        match int("iat") {
            Some(iat) if iat <= now + LEEWAY && iat >= now - LOGOUT_TOKEN_MAX_AGE => {}
            _ => return Err(IdpError::Invalid("logout token iat out of range".into())),
        }
        if int("exp").is_some_and(|exp| exp < now - LEEWAY) {
            return Err(IdpError::Invalid("logout token expired".into()));
        }
        if !claims.get("events").and_then(Value::as_object).is_some_and(|e| e.contains_key(BACKCHANNEL_EVENT)) {
            return Err(IdpError::Invalid("logout token lacks the back-channel logout event".into()));
        }
        if claims.contains_key("nonce") {
            return Err(IdpError::Invalid("logout token must not carry a nonce".into()));
        }
        if !claims.contains_key("sid") && !claims.contains_key("sub") {
            return Err(IdpError::Invalid("logout token names neither sid nor sub".into()));
        }
        // §2.4: jti is REQUIRED; it is how a replay is recognised.
        if !claims.get("jti").and_then(Value::as_str).is_some_and(|j| !j.is_empty() && j.len() <= 256) {
            return Err(IdpError::Invalid("logout token lacks a usable jti".into()));
        }
        Ok(claims)
    }

    fn user_id(&self, claims: &Map<String, Value>) -> Option<String> {
        let claim = if self.cfg.kind == ProviderKind::Entra { "oid" } else { "sub" };
        claims.get(claim).and_then(Value::as_str).map(String::from)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_jti_is_remembered_for_as_long_as_its_token_would_be_accepted() {
        let now = 1_000_000;
        assert_eq!(logout_token_replay_ttl(&claims(json!({"iat": now})), now), 600);
        assert_eq!(logout_token_replay_ttl(&claims(json!({"iat": now - 590})), now), 10);
        assert_eq!(logout_token_replay_ttl(&claims(json!({"iat": now, "exp": now + 30})), now), 90);
        assert_eq!(logout_token_replay_ttl(&claims(json!({"iat": now + 60})), now), 660);
        // Never unbounded, never zero.
        assert_eq!(logout_token_replay_ttl(&claims(json!({"iat": now + 100_000})), now), 720);
        assert_eq!(logout_token_replay_ttl(&claims(json!({"iat": now - 100_000})), now), 1);
    }
}
