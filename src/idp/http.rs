//! Every call to an IdP goes through [`IdpHttp::send`]: one shared pooled rustls client, a timeout, the
//! provider's circuit breaker, and the `portcullis_idp_*` metrics. Whatever goes wrong on the way (down,
//! timeout, 5xx, a 2xx that is not the JSON we asked for) comes back as [`IdpError::Unavailable`], never
//! as something a caller could mistake for an answer.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::breaker::Breaker;
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
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Discovery => "discovery",
            Kind::Jwks => "jwks",
            Kind::Introspection => "introspection",
            Kind::Refresh => "refresh",
            Kind::Graph => "graph",
        }
    }
}

/// A reply the IdP meant: either the expected JSON (2xx) or a client error (4xx) with its body.
#[derive(Debug)]
pub enum Reply<T> {
    Ok(T),
    Refused { status: u16, body: serde_json::Value },
}

/// The shared HTTP client. One per process: connections are pooled per host.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// One provider's way out: client, timeout, breaker.
#[derive(Debug)]
pub struct IdpHttp {
    pub client: reqwest::Client,
    provider: String,
    timeout: Duration,
    breaker: Breaker,
}

impl IdpHttp {
    pub fn new(client: reqwest::Client, provider: &str, timeout: Duration, breaker: Breaker) -> Self {
        Self { client, provider: provider.to_string(), timeout, breaker }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn count(&self, kind: Kind, outcome: &'static str, started: Option<Instant>) {
        metrics::counter!("portcullis_idp_requests_total", "provider" => self.provider.clone(), "kind" => kind.label(), "outcome" => outcome)
            .increment(1);
        if let Some(t) = started {
            metrics::histogram!("portcullis_idp_request_duration_seconds", "provider" => self.provider.clone(), "kind" => kind.label())
                .record(t.elapsed().as_secs_f64());
        }
    }

    /// Sends `req` behind the breaker and the timeout, and reads a JSON reply.
    pub async fn send<T: DeserializeOwned>(
        &self,
        kind: Kind,
        req: reqwest::RequestBuilder,
    ) -> Result<Reply<T>, IdpError> {
        let permit = self.breaker.permit().map_err(|e| {
            self.count(kind, "circuit_open", None);
            IdpError::Unavailable(format!("{} {}: {e}", self.provider, kind.label()))
        })?;
        let started = Instant::now();
        let res = tokio::time::timeout(self.timeout, async {
            let resp = req.timeout(self.timeout).send().await?;
            let status = resp.status().as_u16();
            let body = read_limited(resp).await?;
            Ok::<_, reqwest::Error>((status, body))
        })
        .await;
        let unavailable = |what: String| IdpError::Unavailable(format!("{} {}: {what}", self.provider, kind.label()));
        let (status, body) = match res {
            Err(_) => {
                permit.failure();
                self.count(kind, "timeout", Some(started));
                return Err(unavailable("timed out".into()));
            }
            Ok(Err(e)) if e.is_timeout() => {
                permit.failure();
                self.count(kind, "timeout", Some(started));
                return Err(unavailable("timed out".into()));
            }
            Ok(Err(e)) => {
                permit.failure();
                self.count(kind, "error", Some(started));
                return Err(unavailable(format!("request failed: {}", without_url(&e))));
            }
            Ok(Ok(r)) => r,
        };
        match status {
            200..=299 => match body.as_deref().map(serde_json::from_slice::<T>) {
                Some(Ok(v)) => {
                    permit.success();
                    self.count(kind, "ok", Some(started));
                    Ok(Reply::Ok(v))
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
                Ok(Reply::Refused { status, body })
            }
            _ => {
                permit.failure();
                self.count(kind, "error", Some(started));
                Err(unavailable(format!("HTTP {status}")))
            }
        }
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
