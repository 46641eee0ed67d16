//! The HTTP listener: health, readiness and metrics (login routes join here).

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
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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

async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::metrics().render())
}
