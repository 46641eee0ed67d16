//! One `portcullis.login` span per `/oauth2/*` request, a child of the browser request's trace when Envoy
//! forwarded a `traceparent`. It names the route and the status only: the query (code, state), cookies and
//! the form (a logout token) stay out.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub async fn span(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let span = tracing::info_span!(
        "portcullis.login",
        otel.kind = "server",
        otel.name = %format_args!("portcullis.login {route}"),
        route = %route,
        method = %req.method(),
        status = tracing::field::Empty,
    );
    crate::otel::adopt_parent(&span, req.headers());
    let resp = next.run(req).instrument(span.clone()).await;
    span.record("status", resp.status().as_u16());
    resp
}
