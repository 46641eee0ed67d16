//! The HTTP listener: health, readiness, metrics and the assertion JWKS (login routes join here).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use tokio_util::sync::CancellationToken;

use crate::store::Redis;

#[derive(Clone)]
pub struct HttpState {
    pub redis: Redis,
    /// Cancelled when SIGTERM starts the drain: readiness turns 503 while requests are still served.
    pub draining: CancellationToken,
    /// The rendered `/.well-known/jwks.json`; `None` when `[assertion]` is off (the route answers 404).
    pub jwks: Option<Jwks>,
}

/// The JWKS document of the running keys (a reload may change them), rendered per request: upstreams fetch
/// it every few minutes.
#[derive(Clone)]
pub struct Jwks(Arc<crate::assertion::Asserter>);

impl Jwks {
    pub fn new(asserter: Option<&Arc<crate::assertion::Asserter>>) -> Option<Self> {
        asserter.map(|a| Self(a.clone()))
    }
}

/// Short, so that an upstream sees a rotation's new key within minutes.
const JWKS_CACHE_CONTROL: &str = "public, max-age=300";

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(state)
}

/// Ready when Redis answers (the config was loaded, or we would not be running).
async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if s.redis.ping().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable")
    }
}

async fn jwks(State(s): State<HttpState>) -> axum::response::Response {
    match s.jwks {
        Some(Jwks(asserter)) => (
            [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, JWKS_CACHE_CONTROL)],
            asserter.jwks().to_string(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::metrics().render())
}
