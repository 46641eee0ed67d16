//! The admin listener (off unless `server.admin_addr` is set): bearer-token protected operations for
//! operators. It never returns a token, a cookie value or a session's Redis key: sessions are named by a
//! short handle (the first 16 hex digits of their id).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::m2m::M2mManager;
use crate::session::store::user_key;
use crate::session::{Session, SessionStore};

pub struct AdminState {
    pub store: SessionStore,
    pub m2m: Option<Arc<M2mManager>>,
    /// SHA-256 of the admin token: compared digest to digest. Swapped by a config reload.
    token_digest: arc_swap::ArcSwap<[u8; 32]>,
}

impl AdminState {
    pub fn new(store: SessionStore, m2m: Option<Arc<M2mManager>>, token: &str) -> Self {
        Self { store, m2m, token_digest: arc_swap::ArcSwap::from_pointee(digest(token)) }
    }

    /// A new admin token (a config reload): the old one is refused from the next request on.
    pub fn set_token(&self, token: &str) {
        self.token_digest.store(Arc::new(digest(token)));
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/admin/sessions", get(list).delete(revoke_user))
        .route("/admin/sessions/{handle}", delete(revoke_one))
        .route("/admin/stats", get(stats))
        .route("/admin/delegations", get(delegations))
        .route("/admin/m2m", get(m2m_status))
        .route("/admin/m2m/{provider}/refresh", post(m2m_refresh))
        .route("/admin/m2m/{provider}", delete(m2m_forget))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

async fn auth(State(s): State<Arc<AdminState>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| <[u8; 32]>::from(Sha256::digest(t.as_bytes())));
    if presented != Some(**s.token_digest.load()) {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized").into_response();
    }
    next.run(req).await
}

/// The public face of a session.
pub fn describe(s: &Session) -> serde_json::Value {
    json!({
        "handle": s.id.get(..16).unwrap_or_default(),
        "userId": s.user_id,
        "provider": s.provider,
        "createdAt": s.created_at,
        "lastAccess": s.last_access,
        "expiresAt": s.expires_at,
    })
}

#[derive(Deserialize)]
struct UserQuery {
    user: String,
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "unavailable"}))).into_response()
}

async fn list(State(s): State<Arc<AdminState>>, Query(q): Query<UserQuery>) -> Response {
    match s.store.user_sessions(&q.user).await {
        Ok(sessions) => Json(json!({"sessions": sessions.iter().map(describe).collect::<Vec<_>>()})).into_response(),
        Err(_) => unavailable(),
    }
}

async fn revoke_user(State(s): State<Arc<AdminState>>, Query(q): Query<UserQuery>) -> Response {
    match s.store.delete_indexed(&user_key(&q.user)).await {
        Ok(n) => {
            metrics::counter!("portcullis_sessions_revoked_total", "reason" => "admin").increment(n as u64);
            Json(json!({"revoked": n})).into_response()
        }
        Err(_) => unavailable(),
    }
}

#[derive(Deserialize)]
struct HandleQuery {
    user: String,
}

/// Deletes one session of a user by handle (`?user=` scopes the search to that user's index).
async fn revoke_one(
    State(s): State<Arc<AdminState>>,
    Path(handle): Path<String>,
    Query(q): Query<HandleQuery>,
) -> Response {
    if handle.len() < 8 {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "handle too short"}))).into_response();
    }
    let sessions = match s.store.user_sessions(&q.user).await {
        Ok(v) => v,
        Err(_) => return unavailable(),
    };
    let Some(session) = sessions.iter().find(|x| x.id.starts_with(&handle)) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "no such session"}))).into_response();
    };
    match s.store.delete(session).await {
        Ok(()) => {
            metrics::counter!("portcullis_sessions_revoked_total", "reason" => "admin").increment(1);
            Json(json!({"revoked": 1})).into_response()
        }
        Err(_) => unavailable(),
    }
}

async fn stats(_: State<Arc<AdminState>>, _: HeaderMap) -> Response {
    let text = crate::telemetry::metrics().render();
    let pick = |name: &str| -> f64 {
        text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    Json(json!({
        "checks": pick("portcullis_check_total"),
        "allowed": pick("portcullis_check_total{decision=\"allow\""),
        "redisErrors": pick("portcullis_redis_errors_total"),
        "sessionsRevoked": pick("portcullis_sessions_revoked_total"),
        "version": crate::telemetry::version_string(),
    }))
    .into_response()
}

/// Delegated tokens cached per provider and scope (a SCAN over the sessions); never a token.
async fn delegations(State(s): State<Arc<AdminState>>) -> Response {
    match crate::delegate::report::cached(&s.store, crate::now()).await {
        Ok(rows) => Json(json!({"delegations": rows})).into_response(),
        Err(_) => unavailable(),
    }
}

fn no_m2m() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "no shared M2M manager in this process"}))).into_response()
}

/// Per provider: seconds left on the shared and local tokens, and whether a refresh holds the lock.
async fn m2m_status(State(s): State<Arc<AdminState>>) -> Response {
    let Some(m) = &s.m2m else { return no_m2m() };
    match m.status().await {
        Ok(list) => Json(json!({"providers": list.iter().map(|p| json!({
            "provider": p.provider,
            "sharedExpiresIn": p.shared_expires_in,
            "localExpiresIn": p.local_expires_in,
            "locked": p.locked,
        })).collect::<Vec<_>>()}))
        .into_response(),
        Err(_) => unavailable(),
    }
}

/// Fetches a new token through the same lock the Check path uses.
async fn m2m_refresh(State(s): State<Arc<AdminState>>, Path(provider): Path<String>) -> Response {
    let Some(m) = &s.m2m else { return no_m2m() };
    if !m.providers().contains(&provider) {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "unknown provider"}))).into_response();
    }
    match m.force_refresh(&provider).await {
        Ok(t) => Json(json!({"provider": provider, "expiresIn": t.expires_in(crate::now())})).into_response(),
        Err(_) => unavailable(),
    }
}

/// Drops the shared token (e.g. after the IdP revoked it); the next use fetches a new one.
async fn m2m_forget(State(s): State<Arc<AdminState>>, Path(provider): Path<String>) -> Response {
    let Some(m) = &s.m2m else { return no_m2m() };
    match m.forget(&provider).await {
        Ok(existed) => Json(json!({"provider": provider, "deleted": existed})).into_response(),
        Err(_) => unavailable(),
    }
}
