//! One provider's client-credentials call to its token endpoint (oauth2 crate, reqwest). Settings come in
//! already resolved (endpoint URL from config or OIDC discovery), so this file knows nothing of discovery.

use std::time::Duration;

use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, EndpointNotSet, EndpointSet, Scope, TokenResponse, TokenUrl};

use crate::config::{ClientAuth, ProviderConfig};

/// Lifetime assumed when the token endpoint omits `expires_in`: short, so an unknown expiry is re-asked soon.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

type Oauth2Client = BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// Everything needed to ask one provider for a client-credentials token.
#[derive(Clone)]
pub struct ClientSettings {
    pub token_endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    pub auth: ClientAuth,
    pub scope: Option<String>,
    pub timeout: Duration,
}

impl ClientSettings {
    /// Settings from a provider's config, with the token endpoint resolved by the caller (discovery or
    /// `providers.X.token_endpoint`).
    pub fn from_provider(p: &ProviderConfig, token_endpoint: &str) -> Self {
        Self {
            token_endpoint: token_endpoint.to_string(),
            client_id: p.client_id.clone(),
            client_secret: p.client_secret(),
            auth: p.client_auth,
            scope: p.m2m_scope(),
            timeout: p.timeout,
        }
    }
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("auth", &self.auth)
            .field("scope", &self.scope)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("token endpoint {0:?} is not a URL")]
    BadEndpoint(String),
    #[error("http client: {0}")]
    Http(String),
}

/// Why a token-endpoint call gave no token. Never carries the response body (it could hold a token).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("token endpoint timed out after {0:?}")]
    Timeout(Duration),
    #[error("token endpoint refused: {0}")]
    Refused(String),
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
    #[error("token endpoint sent an unreadable response")]
    BadResponse,
}

impl FetchError {
    /// The `outcome` label of `portcullis_m2m_refresh_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            FetchError::Timeout(_) => "timeout",
            _ => "error",
        }
    }
}

/// A token as the endpoint returned it.
pub struct Fetched {
    pub access_token: String,
    pub expires_in: Duration,
}

/// Resolves a provider's token endpoint on first use (OIDC discovery), so a provider whose IdP is down at
/// start-up gets its M2M token once the IdP is back.
#[async_trait::async_trait]
pub trait TokenEndpoint: Send + Sync {
    async fn token_endpoint(&self) -> Result<String, String>;
}

/// Asks one provider's token endpoint for client-credentials tokens.
#[derive(Clone)]
pub struct TokenClient {
    oauth: std::sync::Arc<tokio::sync::OnceCell<Oauth2Client>>,
    resolver: Option<std::sync::Arc<dyn TokenEndpoint>>,
    settings: ClientSettings,
    http: reqwest::Client,
    scope: Option<String>,
    timeout: Duration,
    endpoint: String,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("endpoint", &self.endpoint)
            .field("scope", &self.scope)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenClient {
    /// A client for the fixed endpoint `s.token_endpoint`.
    pub fn new(s: ClientSettings) -> Result<Self, ClientError> {
        let oauth = oauth_client(&s, &s.token_endpoint)?;
        let mut c = Self::build(s, None)?;
        c.oauth = std::sync::Arc::new(tokio::sync::OnceCell::new_with(Some(oauth)));
        Ok(c)
    }

    /// A client whose endpoint `resolver` finds on first use (`s.token_endpoint` is ignored).
    pub fn discovered(s: ClientSettings, resolver: std::sync::Arc<dyn TokenEndpoint>) -> Result<Self, ClientError> {
        Self::build(s, Some(resolver))
    }

    fn build(s: ClientSettings, resolver: Option<std::sync::Arc<dyn TokenEndpoint>>) -> Result<Self, ClientError> {
        // No redirects: a token endpoint that redirects could forward the client secret (oauth2's advice).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(s.timeout)
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Self {
            oauth: std::sync::Arc::new(tokio::sync::OnceCell::new()),
            resolver,
            scope: s.scope.clone(),
            timeout: s.timeout,
            endpoint: s.token_endpoint.clone(),
            settings: s,
            http,
        })
    }

    async fn oauth(&self) -> Result<&Oauth2Client, FetchError> {
        self.oauth
            .get_or_try_init(|| async {
                let Some(r) = &self.resolver else { return Err(FetchError::Transport("no token endpoint".into())) };
                let url = r.token_endpoint().await.map_err(FetchError::Transport)?;
                oauth_client(&self.settings, &url).map_err(|e| FetchError::Transport(e.to_string()))
            })
            .await
    }

    /// The call's own deadline; the manager may cut it shorter (to the lock TTL).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One client_credentials grant.
    pub async fn fetch(&self) -> Result<Fetched, FetchError> {
        let mut req = self.oauth().await?.exchange_client_credentials();
        if let Some(scope) = &self.scope {
            req = req.add_scope(Scope::new(scope.clone()));
        }
        let resp = match tokio::time::timeout(self.timeout, req.request_async(&self.http)).await {
            Err(_) => return Err(FetchError::Timeout(self.timeout)),
            Ok(r) => r.map_err(|e| classify(e, self.timeout))?,
        };
        let access_token = resp.access_token().secret().clone();
        if access_token.is_empty() {
            return Err(FetchError::BadResponse);
        }
        Ok(Fetched { access_token, expires_in: resp.expires_in().unwrap_or(DEFAULT_LIFETIME) })
    }
}

fn classify(
    e: oauth2::RequestTokenError<
        oauth2::HttpClientError<reqwest::Error>,
        oauth2::StandardErrorResponse<oauth2::basic::BasicErrorResponseType>,
    >,
    timeout: Duration,
) -> FetchError {
    use oauth2::{HttpClientError, RequestTokenError};
    match e {
        RequestTokenError::ServerResponse(r) => FetchError::Refused(r.error().to_string()),
        RequestTokenError::Request(HttpClientError::Reqwest(e)) if e.is_timeout() => FetchError::Timeout(timeout),
        RequestTokenError::Request(e) => FetchError::Transport(error_chain(&e)),
        // A 5xx with a non-JSON body lands here; the body is left out on purpose.
        RequestTokenError::Parse(_, _) => FetchError::BadResponse,
        RequestTokenError::Other(s) => FetchError::Refused(s),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn oauth_client(s: &ClientSettings, endpoint: &str) -> Result<Oauth2Client, ClientError> {
    let url = TokenUrl::new(endpoint.to_string()).map_err(|_| ClientError::BadEndpoint(endpoint.to_string()))?;
    Ok(BasicClient::new(ClientId::new(s.client_id.clone()))
        .set_client_secret(ClientSecret::new(s.client_secret.clone()))
        .set_auth_type(s.auth.into())
        .set_token_uri(url))
}
