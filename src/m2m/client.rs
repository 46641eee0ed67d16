//! One provider's client-credentials call to its token endpoint (oauth2 crate), sent through the
//! provider's [`Transport`] (breaker, timeout, no redirects, `kind="token"` metrics) like every other IdP
//! call. The endpoint URL comes from a [`TokenEndpoint`] (config or OIDC discovery, resolved by
//! `crate::providers`), so this file knows nothing of discovery.

use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, EndpointNotSet, EndpointSet, Scope, TokenResponse, TokenUrl};

use crate::config::{ClientAuth, ProviderConfig};
use crate::idp::transport::{Kind, OAuthHttp, SendError, Transport};

/// Lifetime assumed when the token endpoint omits `expires_in`: short, so an unknown expiry is re-asked soon.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

type Oauth2Client = BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// Everything needed to ask one provider for a client-credentials token.
#[derive(Clone)]
pub struct ClientSettings {
    /// With `client_id` and `scope`, names the token's Redis slot.
    pub issuer: String,
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
            issuer: p.issuer().unwrap_or_default(),
            token_endpoint: token_endpoint.to_string(),
            client_id: p.client_id.clone(),
            client_secret: p.client_secret(),
            auth: p.client_auth,
            scope: p.m2m_scope(),
            timeout: p.timeout,
        }
    }
}

impl ClientSettings {
    /// The Redis slot of the token these settings fetch.
    pub fn slot(&self) -> String {
        super::shared::slot(&self.issuer, &self.client_id, self.scope.as_deref())
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
    oauth: Arc<tokio::sync::OnceCell<Oauth2Client>>,
    resolver: Option<Arc<dyn TokenEndpoint>>,
    settings: ClientSettings,
    transport: Arc<Transport>,
    scope: Option<String>,
    timeout: Duration,
    endpoint: String,
    slot: String,
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
    /// A client for the fixed endpoint `s.token_endpoint`, calling through `transport`.
    pub fn new(s: ClientSettings, transport: Arc<Transport>) -> Result<Self, ClientError> {
        let oauth = oauth_client(&s, &s.token_endpoint)?;
        let mut c = Self::build(s, transport, None);
        c.oauth = Arc::new(tokio::sync::OnceCell::new_with(Some(oauth)));
        Ok(c)
    }

    /// A client whose endpoint `resolver` finds on first use (`s.token_endpoint` is ignored).
    pub fn discovered(s: ClientSettings, transport: Arc<Transport>, resolver: Arc<dyn TokenEndpoint>) -> Self {
        Self::build(s, transport, Some(resolver))
    }

    fn build(s: ClientSettings, transport: Arc<Transport>, resolver: Option<Arc<dyn TokenEndpoint>>) -> Self {
        Self {
            oauth: Arc::new(tokio::sync::OnceCell::new()),
            resolver,
            scope: s.scope.clone(),
            timeout: s.timeout,
            endpoint: s.token_endpoint.clone(),
            slot: s.slot(),
            settings: s,
            transport,
        }
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

    /// Where its token lives in Redis (see [`super::shared::slot`]).
    pub fn slot(&self) -> &str {
        &self.slot
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
        let http = OAuthHttp { transport: &self.transport, kind: Kind::Token };
        let resp = match tokio::time::timeout(self.timeout, req.request_async(&http)).await {
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
    e: oauth2::RequestTokenError<SendError, oauth2::StandardErrorResponse<oauth2::basic::BasicErrorResponseType>>,
    timeout: Duration,
) -> FetchError {
    use oauth2::RequestTokenError;
    match e {
        RequestTokenError::ServerResponse(r) => FetchError::Refused(r.error().to_string()),
        RequestTokenError::Request(SendError::Timeout) => FetchError::Timeout(timeout),
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
