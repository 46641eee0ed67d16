//! What the login routes need from a provider: its endpoints, client credentials, and an ID-token verifier.
//! The code exchange goes through the `oauth2` crate with PKCE S256 (RFC 7636).

use std::sync::Arc;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::ClientAuth;
use crate::idp::IdpError;
use crate::session::Tokens;

/// Verifies the JWTs an IdP hands the login routes.
#[async_trait::async_trait]
pub trait IdTokenVerify: Send + Sync {
    /// Signature, `iss`, `aud`, `exp`, and `nonce` when given.
    async fn verify_id_token(&self, token: &str, nonce: Option<&str>) -> Result<Map<String, Value>, IdpError>;
    /// A back-channel logout token: signature, `iss`, `aud`, `iat`, the logout `events` claim, no `nonce`.
    async fn verify_logout_token(&self, token: &str) -> Result<Map<String, Value>, IdpError>;
    /// The user id a session is filed under (`sub`; Entra uses `oid`).
    fn user_id(&self, claims: &Map<String, Value>) -> Option<String> {
        claims.get("sub").and_then(Value::as_str).map(String::from)
    }
}

/// The OIDC part of a token response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}
impl ExtraTokenFields for IdTokenField {}

pub type OidcTokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;

type CodeClient = oauth2::Client<
    BasicErrorResponse,
    OidcTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// One provider as the login routes see it.
pub struct LoginProvider {
    pub id: String,
    pub issuer: String,
    pub scopes: Vec<String>,
    pub end_session_endpoint: Option<String>,
    pub client_id: String,
    pub verifier: Arc<dyn IdTokenVerify>,
    client: CodeClient,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The IdP refused the code (bad verifier, replayed or expired code).
    #[error("the identity provider refused the code: {0}")]
    Rejected(String),
    /// The IdP could not be reached or answered nonsense.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    #[error("the token response has no id_token")]
    NoIdToken,
}

/// A login's settings, resolved from config and discovery.
pub struct LoginEndpoints {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub end_session_endpoint: Option<String>,
}

impl LoginProvider {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: &str,
        issuer: &str,
        endpoints: LoginEndpoints,
        client_id: &str,
        client_secret: &str,
        client_auth: ClientAuth,
        scopes: Vec<String>,
        redirect_uri: &str,
        verifier: Arc<dyn IdTokenVerify>,
    ) -> Result<Self, url::ParseError> {
        let client = oauth2::Client::new(ClientId::new(client_id.to_string()))
            .set_client_secret(ClientSecret::new(client_secret.to_string()))
            .set_auth_uri(AuthUrl::new(endpoints.authorization_endpoint)?)
            .set_token_uri(TokenUrl::new(endpoints.token_endpoint)?)
            .set_redirect_uri(RedirectUrl::new(redirect_uri.to_string())?)
            .set_auth_type(match client_auth {
                ClientAuth::ClientSecretBasic => AuthType::BasicAuth,
                ClientAuth::ClientSecretPost => AuthType::RequestBody,
            });
        Ok(Self {
            id: id.to_string(),
            issuer: issuer.to_string(),
            scopes,
            end_session_endpoint: endpoints.end_session_endpoint,
            client_id: client_id.to_string(),
            verifier,
            client,
        })
    }

    /// The authorize URL for a new login, with the verifier to keep for the callback.
    pub fn authorize(&self, nonce: &str) -> (String, CsrfToken, PkceCodeVerifier) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = self
            .client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(self.scopes.iter().cloned().map(Scope::new))
            .add_extra_param("nonce", nonce)
            .set_pkce_challenge(challenge)
            .url();
        (url.to_string(), state, verifier)
    }

    /// Exchanges the code with its PKCE verifier.
    pub async fn exchange(&self, http: &reqwest::Client, code: &str, verifier: &str) -> Result<Tokens, ExchangeError> {
        use oauth2::RequestTokenError as E;
        let resp = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(http)
            .await
            .map_err(|e| match e {
                E::ServerResponse(r) => ExchangeError::Rejected(r.error().to_string()),
                E::Request(e) => ExchangeError::Unavailable(e.to_string()),
                E::Parse(e, _) => ExchangeError::Unavailable(format!("unparsable token response: {e}")),
                E::Other(e) => ExchangeError::Unavailable(e),
            })?;
        Ok(Tokens {
            id_token: resp.extra_fields().id_token.clone().ok_or(ExchangeError::NoIdToken)?,
            access_token: resp.access_token().secret().clone(),
            refresh_token: resp.refresh_token().map(|r| r.secret().clone()),
        })
    }
}
