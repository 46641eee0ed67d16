//! One provider's way out: every call to an IdP (discovery, JWKS, introspection, Graph, refresh, the M2M
//! client_credentials call, the login's code exchange, delegated-token exchanges) goes through
//! [`Transport`]: one shared pooled rustls client that follows no redirect (a redirected token request could forward the client secret), a
//! timeout, the provider's circuit breaker, and the `portcullis_idp_*` metrics. JSON calls use
//! [`Transport::send`]: whatever goes wrong on the way (down, timeout, 5xx, a 2xx that is not the JSON we
//! asked for) comes back as [`IdpError::Unavailable`], never as something a caller could mistake for an
//! answer. The `oauth2` crate's calls use [`OAuthHttp`], the same path with the raw reply handed back.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::breaker::{Breaker, Permit};
use super::IdpError;

/// Largest IdP reply we read; anything bigger is nonsense.
const MAX_BODY: usize = 1 << 20;

/// The `kind` label: which IdP call this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Discovery,
    Jwks,
    Introspection,
    Refresh,
    Graph,
    /// The M2M client_credentials grant.
    Token,
    /// The login's authorization-code exchange.
    CodeExchange,
    /// A delegated token: Entra On-Behalf-Of or RFC 8693 token exchange.
    TokenExchange,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Discovery => "discovery",
            Kind::Jwks => "jwks",
            Kind::Introspection => "introspection",
            Kind::Refresh => "refresh",
            Kind::Graph => "graph",
            Kind::Token => "token",
            Kind::CodeExchange => "code_exchange",
            Kind::TokenExchange => "token_exchange",
        }
    }
}

/// A reply the IdP meant: either the expected JSON (2xx) or a client error (4xx) with its body.
#[derive(Debug)]
pub enum Reply<T> {
    Ok(T),
    Refused { status: u16, body: serde_json::Value },
}

/// The HTTP client the providers share (connections are pooled per host); a provider with its own
/// `ca_file` gets one of its own that trusts those CAs instead of the public roots.
pub fn client(ca: Option<&crate::config::Pem>) -> Result<reqwest::Client, reqwest::Error> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca {
        b = b.tls_built_in_root_certs(false);
        for cert in reqwest::Certificate::from_pem_bundle(ca.bytes())? {
            b = b.add_root_certificate(cert);
        }
    }
    b.build()
}

/// Why a call got no reply from the IdP (no body: it could hold a token).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    CircuitOpen(String),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Failed(String),
}

/// A reply as received, for callers that parse it themselves (the `oauth2` crate).
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// One provider's way out: client, timeout, breaker.
#[derive(Debug)]
pub struct Transport {
    pub client: reqwest::Client,
    provider: String,
    timeout: Duration,
    breaker: Breaker,
}

impl Transport {
    /// A provider's transport on the shared `client`, with its own breaker from the provider's config.
    pub fn for_provider(client: reqwest::Client, name: &str, cfg: &crate::config::ProviderConfig) -> Self {
        let breaker = Breaker::new(name, cfg.circuit_failure_threshold, cfg.circuit_open_duration);
        Self::new(client, name, cfg.timeout, breaker)
    }

    pub fn new(client: reqwest::Client, provider: &str, timeout: Duration, breaker: Breaker) -> Self {
        Self { client, provider: provider.to_string(), timeout, breaker }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a `kind` call would be refused by the open breaker right now; counted as that call's
    /// `circuit_open`, as [`Transport::send`] would. Lets a caller answer before preparing the call
    /// (a Check: no decrypt, no ID-token verification, no M2M token).
    pub fn circuit_open(&self, kind: Kind) -> bool {
        let open = self.breaker.refusing();
        if open {
            self.count(kind, "circuit_open", None);
        }
        open
    }

    /// One IdP call's span: provider, kind and outcome, never the URL (Graph URLs carry user ids) nor a body.
    fn span(&self, kind: Kind) -> tracing::Span {
        tracing::info_span!(
            "portcullis.idp",
            otel.kind = "client",
            provider = %self.provider,
            kind = kind.label(),
            outcome = tracing::field::Empty,
        )
    }

    fn count(&self, kind: Kind, outcome: &'static str, started: Option<Instant>) {
        tracing::Span::current().record("outcome", outcome);
        metrics::counter!("portcullis_idp_requests_total", "provider" => self.provider.clone(), "kind" => kind.label(), "outcome" => outcome)
            .increment(1);
        if let Some(t) = started {
            metrics::histogram!("portcullis_idp_request_duration_seconds", "provider" => self.provider.clone(), "kind" => kind.label())
                .record(t.elapsed().as_secs_f64());
        }
    }

    /// The common path: breaker permit, send under the timeout, read the body (`None` when too large).
    /// Failures to get any reply are settled here (breaker, metrics); a reply is the caller's to settle.
    async fn call(&self, kind: Kind, req: reqwest::RequestBuilder) -> Result<Received<'_>, SendError> {
        let permit = self.breaker.permit().map_err(|e| {
            self.count(kind, "circuit_open", None);
            SendError::CircuitOpen(e.to_string())
        })?;
        let started = Instant::now();
        // One timer for the whole call, the body included: reqwest's own per-request timeout would arm a
        // second one on every introspection.
        let res = tokio::time::timeout(self.timeout, async {
            let mut resp = req.send().await?;
            let status = resp.status().as_u16();
            let headers = std::mem::take(resp.headers_mut());
            let body = read_limited(resp).await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        })
        .await;
        match res {
            Err(_) => {
                permit.failure();
                self.count(kind, "timeout", Some(started));
                Err(SendError::Timeout)
            }
            Ok(Err(e)) if e.is_timeout() => {
                permit.failure();
                self.count(kind, "timeout", Some(started));
                Err(SendError::Timeout)
            }
            Ok(Err(e)) => {
                permit.failure();
                self.count(kind, "error", Some(started));
                Err(SendError::Failed(format!("request failed: {}", without_url(&e))))
            }
            Ok(Ok((status, headers, body))) => Ok(Received { permit, started, status, headers, body }),
        }
    }

    /// Sends `req` behind the breaker and the timeout and hands the reply back as received, for callers
    /// that parse it themselves. A 5xx counts against the breaker; a 4xx is the IdP's answer.
    pub async fn send_raw(&self, kind: Kind, req: reqwest::RequestBuilder) -> Result<RawReply, SendError> {
        self.send_raw_in_span(kind, req).instrument(self.span(kind)).await
    }

    async fn send_raw_in_span(&self, kind: Kind, req: reqwest::RequestBuilder) -> Result<RawReply, SendError> {
        let r = self.call(kind, req).await?;
        let Some(body) = r.body else {
            r.permit.failure();
            self.count(kind, "invalid_reply", Some(r.started));
            return Err(SendError::Failed(format!("HTTP {} with a reply over {MAX_BODY} bytes", r.status)));
        };
        match r.status {
            200..=299 => {
                r.permit.success();
                self.count(kind, "ok", Some(r.started));
            }
            400..=499 => {
                r.permit.success();
                self.count(kind, "refused", Some(r.started));
            }
            _ => {
                r.permit.failure();
                self.count(kind, "error", Some(r.started));
            }
        }
        Ok(RawReply { status: r.status, headers: r.headers, body })
    }

    /// Sends `req` behind the breaker and the timeout, and reads a JSON reply.
    pub async fn send<T: DeserializeOwned>(
        &self,
        kind: Kind,
        req: reqwest::RequestBuilder,
    ) -> Result<Reply<T>, IdpError> {
        self.send_with_headers(kind, req).await.map(|(reply, _)| reply)
    }

    /// [`Transport::send`], with the reply's headers (metadata reads their `Cache-Control`).
    pub async fn send_with_headers<T: DeserializeOwned>(
        &self,
        kind: Kind,
        req: reqwest::RequestBuilder,
    ) -> Result<(Reply<T>, reqwest::header::HeaderMap), IdpError> {
        self.send_json_in_span(kind, req).instrument(self.span(kind)).await
    }

    async fn send_json_in_span<T: DeserializeOwned>(
        &self,
        kind: Kind,
        req: reqwest::RequestBuilder,
    ) -> Result<(Reply<T>, reqwest::header::HeaderMap), IdpError> {
        let unavailable = |what: String| IdpError::Unavailable(format!("{} {}: {what}", self.provider, kind.label()));
        let Received { permit, started, status, headers, body } =
            self.call(kind, req).await.map_err(|e| unavailable(e.to_string()))?;
        match status {
            200..=299 => match body.as_deref().map(serde_json::from_slice::<T>) {
                Some(Ok(v)) => {
                    permit.success();
                    self.count(kind, "ok", Some(started));
                    Ok((Reply::Ok(v), headers))
                }
                _ => {
                    permit.failure();
                    self.count(kind, "invalid_reply", Some(started));
                    Err(unavailable(format!("HTTP {status} without the expected JSON")))
                }
            },
            400..=499 => {
                permit.success();
                self.count(kind, "refused", Some(started));
                let body = body.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(serde_json::Value::Null);
                Ok((Reply::Refused { status, body }, headers))
            }
            _ => {
                permit.failure();
                self.count(kind, "error", Some(started));
                Err(unavailable(format!("HTTP {status}")))
            }
        }
    }
}

/// A reply on its way to being settled.
struct Received<'a> {
    permit: Permit<'a>,
    started: Instant,
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Option<Vec<u8>>,
}

/// The `oauth2` crate's HTTP client over a [`Transport`]: its token requests (M2M client_credentials, the
/// login's code exchange) get the breaker, the timeout, the no-redirect policy and the metrics of every
/// other IdP call. A newtype, not a closure: the future must be `Send` inside an axum handler.
pub struct OAuthHttp<'t> {
    pub transport: &'t Transport,
    pub kind: Kind,
}

impl<'c> oauth2::AsyncHttpClient<'c> for OAuthHttp<'_> {
    type Error = SendError;
    type Future = Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, SendError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let req = reqwest::Request::try_from(request).map_err(|e| SendError::Failed(without_url(&e)))?;
            let builder = reqwest::RequestBuilder::from_parts(self.transport.client.clone(), req);
            let reply = self.transport.send_raw(self.kind, builder).await?;
            let mut resp = oauth2::HttpResponse::new(reply.body);
            *resp.status_mut() =
                oauth2::http::StatusCode::from_u16(reply.status).map_err(|e| SendError::Failed(e.to_string()))?;
            *resp.headers_mut() = reply.headers;
            Ok(resp)
        })
    }
}

/// The body, or `None` when it is larger than [`MAX_BODY`].
async fn read_limited(mut resp: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > MAX_BODY {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf))
}

/// A reqwest error without its URL: Graph URLs carry user ids, and query strings may carry more.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = if e.is_connect() { "connect error".to_string() } else { "transport error".to_string() };
    if let Some(src) = std::error::Error::source(e) {
        s.push_str(": ");
        s.push_str(&src.to_string());
    }
    s
}
