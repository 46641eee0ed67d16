//! What the login routes need from a provider: its endpoints, client credentials, and an ID-token verifier.
//! The code exchange goes through the `oauth2` crate with PKCE S256 (RFC 7636), sent over the provider's
//! transport (breaker, timeout, no redirects, `kind="code_exchange"` metrics).

use std::sync::Arc;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet, ExtraTokenFields,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardRevocableToken, StandardTokenResponse,
    TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::ClientAuth;
use crate::idp::transport::{Kind, OAuthHttp, SendError, Transport};
use crate::idp::IdpError;
use crate::session::Tokens;

/// What the login routes need from a provider's IdP side: endpoints (discovered lazily, so a provider that
/// was down at start-up recovers) and verification of the JWTs it hands out.
#[async_trait::async_trait]
pub trait LoginBackend: Send + Sync {
    async fn endpoints(&self) -> Result<LoginEndpoints, IdpError>;
    /// Signature, `iss`, `aud`, `exp`, and the login's `nonce`.
    async fn verify_id_token(&self, token: &str, nonce: &str) -> Result<Map<String, Value>, IdpError>;
    /// A back-channel logout token: signature, `iss`, `aud`, `iat`, the logout `events` claim, no `nonce`.
    async fn verify_logout_token(&self, token: &str) -> Result<Map<String, Value>, IdpError>;
    /// The user id a session is filed under (`sub`; Entra uses `oid`).
    fn user_id(&self, claims: &Map<String, Value>) -> Option<String>;
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
    pub client_id: String,
    client_secret: String,
    client_auth: ClientAuth,
    scopes: Vec<String>,
    redirect_uri: String,
    pub backend: Arc<dyn LoginBackend>,
    transport: Arc<Transport>,
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

/// The endpoints a login uses.
#[derive(Debug, Clone)]
pub struct LoginEndpoints {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub end_session_endpoint: Option<String>,
}

impl LoginProvider {
    pub fn new(
        id: &str,
        cfg: &crate::config::ProviderConfig,
        issuer: &str,
        redirect_uri: &str,
        backend: Arc<dyn LoginBackend>,
        transport: Arc<Transport>,
    ) -> Self {
        Self {
            id: id.to_string(),
            issuer: issuer.to_string(),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret(),
            client_auth: cfg.client_auth,
            scopes: cfg.login_scopes(),
            redirect_uri: redirect_uri.to_string(),
            backend,
            transport,
        }
    }

    fn client(&self, e: &LoginEndpoints) -> Result<CodeClient, IdpError> {
        let bad = |what: &str, err: url::ParseError| IdpError::Unavailable(format!("{what}: {err}"));
        Ok(oauth2::Client::new(ClientId::new(self.client_id.clone()))
            .set_client_secret(ClientSecret::new(self.client_secret.clone()))
            .set_auth_uri(AuthUrl::new(e.authorization_endpoint.clone()).map_err(|x| bad("authorization_endpoint", x))?)
            .set_token_uri(TokenUrl::new(e.token_endpoint.clone()).map_err(|x| bad("token_endpoint", x))?)
            .set_redirect_uri(RedirectUrl::new(self.redirect_uri.clone()).map_err(|x| bad("redirect_uri", x))?)
            .set_auth_type(self.client_auth.into()))
    }

    /// The authorize URL for a new login, with the state and the verifier to keep for the callback.
    pub async fn authorize(&self, nonce: &str) -> Result<(String, CsrfToken, PkceCodeVerifier), IdpError> {
        let client = self.client(&self.backend.endpoints().await?)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(self.scopes.iter().cloned().map(Scope::new))
            .add_extra_param("nonce", nonce)
            .set_pkce_challenge(challenge)
            .url();
        Ok((url.to_string(), state, verifier))
    }

    /// Exchanges the code with its PKCE verifier.
    pub async fn exchange(&self, code: &str, verifier: &str) -> Result<Tokens, ExchangeError> {
        use oauth2::RequestTokenError as E;
        let endpoints = self.backend.endpoints().await.map_err(|e| ExchangeError::Unavailable(e.to_string()))?;
        let client = self.client(&endpoints).map_err(|e| ExchangeError::Unavailable(e.to_string()))?;
        let http = OAuthHttp { transport: &self.transport, kind: Kind::CodeExchange };
        let resp = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(&http)
            .await
            .map_err(|e| match e {
                E::ServerResponse(r) => ExchangeError::Rejected(r.error().to_string()),
                E::Request(e @ (SendError::CircuitOpen(_) | SendError::Timeout | SendError::Failed(_))) => {
                    ExchangeError::Unavailable(e.to_string())
                }
                E::Parse(e, _) => ExchangeError::Unavailable(format!("unparsable token response: {e}")),
                E::Other(e) => ExchangeError::Unavailable(e),
            })?;
        Ok(Tokens {
            id_token: resp.extra_fields().id_token.clone().ok_or(ExchangeError::NoIdToken)?,
            access_token: resp.access_token().secret().clone(),
            refresh_token: resp.refresh_token().map(|r| r.secret().clone()),
        })
    }

    /// Where RP-initiated logout sends the browser, when the IdP has such an endpoint.
    pub async fn end_session_endpoint(&self) -> Option<String> {
        self.backend.endpoints().await.ok()?.end_session_endpoint
    }
}
