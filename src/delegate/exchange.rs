//! The IdP's delegation grant for one user access token and one route value, through the provider's
//! [`Transport`](crate::idp::transport::Transport) (breaker, timeout, `kind="token_exchange"` metrics) with
//! the client authentication its token endpoint takes (`client_auth`), as the refresh grant does.
//!
//! - `entra`: On-Behalf-Of — `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`,
//!   `requested_token_use=on_behalf_of`, `assertion` = the user's access token, `scope` = the route value.
//! - `ping`, `oidc`: RFC 8693 token exchange — `subject_token` = the user's access token,
//!   `subject_token_type=urn:ietf:params:oauth:token-type:access_token`, and the route value as `scope` or
//!   `audience` ([`DelegationParam`]).

use std::time::Duration;

use serde::Deserialize;

use crate::config::{DelegationParam, ProviderKind};
use crate::idp::provider::Provider;
use crate::idp::transport::{Kind, Reply};
use crate::idp::IdpError;

pub const OBO_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Lifetime assumed when the IdP omits `expires_in`: short, so an unknown expiry is asked again soon.
const DEFAULT_LIFETIME: Duration = crate::m2m::client::DEFAULT_LIFETIME;

/// Why no delegated token came back. Never carries a token or a reply body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// The user has not consented to the target (`consent_required`; Entra: `invalid_grant` with
    /// `suberror=consent_required`, AADSTS65001).
    #[error("the IdP needs the user's consent")]
    ConsentRequired,
    /// The user must interact first (`interaction_required`: MFA, a conditional-access policy).
    #[error("the IdP needs the user to interact")]
    InteractionRequired,
    /// The IdP refuses to exchange the user's token (`invalid_grant`: revoked, expired, not for this client).
    #[error("the IdP refused to exchange the user's token")]
    InvalidGrant,
    /// Any other refusal (`invalid_scope`, `invalid_target`, `unauthorized_client`...): a configuration
    /// problem between portcullis, the route and the IdP.
    #[error("the IdP refused the exchange: {0}")]
    Refused(String),
    #[error(transparent)]
    Unavailable(#[from] IdpError),
}

/// A token as the IdP issued it.
pub struct Issued {
    pub access_token: String,
    pub expires_in: Duration,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// How `target` is sent in an RFC 8693 exchange.
pub fn param_for(target: &str, how: DelegationParam) -> &'static str {
    match how {
        DelegationParam::Scope => "scope",
        DelegationParam::Audience => "audience",
        DelegationParam::Auto => {
            let uri = url::Url::parse(target).ok().filter(|_| !target.contains(char::is_whitespace));
            match uri {
                Some(u) if u.cannot_be_a_base() || matches!(u.path(), "" | "/") => "audience",
                _ => "scope",
            }
        }
    }
}

/// One delegation grant at `p` for the user's access token `subject`, for `target`.
pub async fn exchange(p: &Provider, subject: &str, target: &str) -> Result<Issued, ExchangeError> {
    let ep = p.discovery.endpoints(&p.http).await?;
    let mut form: Vec<(&'static str, String)> = match p.cfg.kind {
        ProviderKind::Entra => vec![
            ("grant_type", OBO_GRANT.into()),
            ("requested_token_use", "on_behalf_of".into()),
            ("assertion", subject.into()),
            ("scope", target.into()),
        ],
        ProviderKind::Ping | ProviderKind::Oidc => vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT.into()),
            ("subject_token", subject.into()),
            ("subject_token_type", ACCESS_TOKEN_TYPE.into()),
            ("requested_token_type", ACCESS_TOKEN_TYPE.into()),
            (param_for(target, p.cfg.delegation_param.unwrap_or_default()), target.into()),
        ],
    };
    let req = p.client_auth(p.http.client.post(&ep.token_endpoint), p.cfg.client_auth, &mut form);
    match p.http.send::<TokenReply>(Kind::TokenExchange, req.form(&form)).await? {
        Reply::Ok(t) if !t.access_token.is_empty() => Ok(Issued {
            access_token: t.access_token,
            expires_in: t.expires_in.map(Duration::from_secs).unwrap_or(DEFAULT_LIFETIME),
        }),
        Reply::Ok(_) => Err(IdpError::Unavailable("token exchange reply without an access token".into()).into()),
        Reply::Refused { status, body } => Err(refusal(status, &body)),
    }
}

/// Classifies an OAuth error reply by its codes (`error`, and Entra's `suberror`), never by its text.
fn refusal(status: u16, body: &serde_json::Value) -> ExchangeError {
    let code = |k: &str| body.get(k).and_then(|v| v.as_str()).unwrap_or("");
    match (code("error"), code("suberror")) {
        ("consent_required", _) | (_, "consent_required") => ExchangeError::ConsentRequired,
        ("interaction_required", _) | (_, "interaction_required") => ExchangeError::InteractionRequired,
        ("invalid_grant", _) => ExchangeError::InvalidGrant,
        ("", _) => ExchangeError::Refused(format!("HTTP {status}")),
        (e, _) => ExchangeError::Refused(format!("HTTP {status} {}", e.chars().take(64).collect::<String>())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_route_value_maps_to_scope_or_audience() {
        let auto = |t| param_for(t, DelegationParam::Auto);
        assert_eq!(auto("https://orders.example.com"), "audience");
        assert_eq!(auto("https://orders.example.com/"), "audience");
        assert_eq!(auto("urn:example:orders"), "audience");
        assert_eq!(auto("api://orders"), "audience");
        assert_eq!(auto("api://orders/.default"), "scope");
        assert_eq!(auto("https://graph.microsoft.com/User.Read"), "scope");
        assert_eq!(auto("orders.read"), "scope");
        assert_eq!(auto("orders.read orders.write"), "scope");
        assert_eq!(param_for("orders.read", DelegationParam::Audience), "audience");
        assert_eq!(param_for("https://orders.example.com", DelegationParam::Scope), "scope");
    }

    #[test]
    fn refusals_are_classified_by_code() {
        let r = |b| refusal(400, &b);
        assert!(matches!(r(json!({"error": "consent_required"})), ExchangeError::ConsentRequired));
        assert!(matches!(
            r(json!({"error": "invalid_grant", "suberror": "consent_required", "error_codes": [65001]})),
            ExchangeError::ConsentRequired
        ));
        assert!(matches!(r(json!({"error": "interaction_required"})), ExchangeError::InteractionRequired));
        assert!(matches!(r(json!({"error": "invalid_grant"})), ExchangeError::InvalidGrant));
        assert!(matches!(r(json!({"error": "invalid_scope"})), ExchangeError::Refused(_)));
        assert!(matches!(r(serde_json::Value::Null), ExchangeError::Refused(_)));
    }
}
