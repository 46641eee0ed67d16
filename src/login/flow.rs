//! `GET /oauth2/login` and `GET /oauth2/callback`: Authorization Code + PKCE (RFC 6749 §4.1, RFC 7636),
//! with OIDC's nonce binding the ID token to this login.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::security::error_page;
use super::{failures, redirect, LoginState, LOGIN_TTL_SECS};
use crate::session::{cookie, fingerprint, NewSession};

/// What `pkce:{state}` holds between login and callback.
#[derive(Serialize, Deserialize)]
struct Pending {
    verifier: String,
    nonce: String,
    provider: String,
    rd: String,
}

#[derive(Deserialize)]
pub struct LoginQuery {
    provider: Option<String>,
    rd: Option<String>,
}

fn found(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_string())]).into_response()
}

fn unavailable() -> Response {
    let mut r = error_page(StatusCode::SERVICE_UNAVAILABLE, "Sign-in unavailable", "Please try again shortly.");
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    r
}

fn count(provider: &str, outcome: &'static str) {
    let provider = provider.to_string();
    metrics::counter!("portcullis_logins_total", "provider" => provider, "outcome" => outcome).increment(1);
}

pub async fn login(State(s): State<Arc<LoginState>>, Query(q): Query<LoginQuery>) -> Response {
    let provider = match (&q.provider, s.providers.len()) {
        (Some(p), _) => s.providers.get(p),
        (None, 1) => s.providers.values().next(),
        (None, _) => None,
    };
    let Some(provider) = provider else {
        return error_page(StatusCode::BAD_REQUEST, "Unknown provider", "Choose a configured identity provider.");
    };
    let Some(rd) = redirect::safe(q.rd.as_deref().unwrap_or("/"), &s.login.allowed_redirect_hosts) else {
        return error_page(StatusCode::BAD_REQUEST, "Refused redirect", "The return address is not allowed.");
    };
    let nonce = cookie::new_value();
    let (url, state, verifier) = match provider.authorize(&nonce).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(provider = %provider.id, error = %e, "cannot start a login");
            return unavailable();
        }
    };
    let pending = Pending { verifier: verifier.secret().clone(), nonce, provider: provider.id.clone(), rd };
    let Ok(json) = serde_json::to_string(&pending) else { return unavailable() };
    let set = redis::cmd("SET").arg(crate::keys::pkce(state.secret())).arg(json).arg("EX").arg(LOGIN_TTL_SECS).clone();
    if s.redis.query::<()>(&set).await.is_err() {
        return unavailable();
    }
    found(&url)
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub async fn callback(
    State(s): State<Arc<LoginState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let client = failures::client(&headers, Some(peer));
    match failures::blocked(&s.redis, &client, s.login.max_failures).await {
        Ok(Some(wait)) => {
            let mut r = error_page(StatusCode::TOO_MANY_REQUESTS, "Too many failed sign-ins", "Try again later.");
            if let Ok(v) = header::HeaderValue::from_str(&wait.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Ok(None) => {}
        Err(_) => return unavailable(),
    }
    let fail = |provider: &str, outcome: &'static str, title: &str, detail: &str| {
        count(provider, outcome);
        tracing::info!(provider, outcome, "login failed");
        error_page(StatusCode::BAD_REQUEST, title, detail)
    };

    // The IdP answered with an error (RFC 6749 §4.1.2.1): the state is still consumed below if present.
    if let Some(err) = &q.error {
        if let Some(state) = &q.state {
            let _ = s.redis.query::<Option<String>>(redis::cmd("GETDEL").arg(crate::keys::pkce(state))).await;
        }
        failures::record(&s.redis, &client, s.login.failure_window.as_secs()).await;
        let detail = q.error_description.as_deref().unwrap_or(err);
        return fail("unknown", "idp_error", "Sign-in was not completed", detail);
    }
    let (Some(code), Some(state)) = (&q.code, &q.state) else {
        failures::record(&s.redis, &client, s.login.failure_window.as_secs()).await;
        return fail("unknown", "bad_request", "Sign-in failed", "The identity provider's answer was incomplete.");
    };

    // Consume the state exactly once: a replayed callback finds nothing.
    let pending = match s.redis.query::<Option<String>>(redis::cmd("GETDEL").arg(crate::keys::pkce(state))).await {
        Ok(p) => p.and_then(|j| serde_json::from_str::<Pending>(&j).ok()),
        Err(_) => return unavailable(),
    };
    let Some(pending) = pending else {
        failures::record(&s.redis, &client, s.login.failure_window.as_secs()).await;
        return fail(
            "unknown",
            "bad_state",
            "Sign-in expired",
            "This sign-in link is unknown, expired or already used.",
        );
    };
    let Some(provider) = s.providers.get(&pending.provider) else {
        return fail("unknown", "bad_state", "Sign-in failed", "Unknown identity provider.");
    };

    let tokens = match provider.exchange(code, &pending.verifier).await {
        Ok(t) => t,
        Err(super::provider::ExchangeError::Unavailable(e)) => {
            tracing::warn!(provider = %provider.id, error = %e, "code exchange failed");
            count(&provider.id, "idp_unavailable");
            return unavailable();
        }
        Err(e) => {
            failures::record(&s.redis, &client, s.login.failure_window.as_secs()).await;
            return fail(&provider.id, "exchange_failed", "Sign-in failed", &e.to_string());
        }
    };
    let claims = match provider.backend.verify_id_token(&tokens.id_token, &pending.nonce).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(provider = %provider.id, error = %e, "id token rejected at login");
            failures::record(&s.redis, &client, s.login.failure_window.as_secs()).await;
            return fail(&provider.id, "invalid_id_token", "Sign-in failed", "The identity token was not valid.");
        }
    };
    let Some(user_id) = provider.backend.user_id(&claims) else {
        return fail(&provider.id, "invalid_id_token", "Sign-in failed", "The identity token names no user.");
    };
    let new = NewSession {
        user_id,
        provider: provider.id.clone(),
        sid: claims.get("sid").and_then(|v| v.as_str()).map(String::from),
        tokens,
        client_fingerprint: s
            .session
            .bind_fingerprint
            .then(|| fingerprint(headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default())),
    };
    let value = match s.store.create(new, crate::now()).await {
        Ok((value, _)) => value,
        Err(e) => {
            tracing::warn!(error = %e, "could not create session");
            return unavailable();
        }
    };
    count(&provider.id, "success");
    let mut resp = found(&pending.rd);
    if let Ok(v) = header::HeaderValue::from_str(&cookie::set(&s.session, &value)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}
