//! `GET /oauth2/login` and `GET /oauth2/callback`: Authorization Code + PKCE (RFC 6749 §4.1, RFC 7636),
//! with OIDC's nonce binding the ID token to this login.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::security::error_page;
use super::{binding, client, failures, pending, redirect, LoginState, LOGIN_TTL_SECS};
use crate::session::{cookie, fingerprint, NewSession};

/// What `pkce:{state}` holds between login and callback.
#[derive(Serialize, Deserialize)]
struct Pending {
    verifier: String,
    nonce: String,
    provider: String,
    rd: String,
    /// Hash of the login-binding cookie's value ([`binding`]).
    binding: String,
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

fn too_many(retry_after: u64, title: &str) -> Response {
    let mut r = error_page(StatusCode::TOO_MANY_REQUESTS, title, "Try again later.");
    if let Ok(v) = header::HeaderValue::from_str(&retry_after.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn count(provider: &str, outcome: &'static str) {
    let provider = provider.to_string();
    metrics::counter!("portcullis_logins_total", "provider" => provider, "outcome" => outcome).increment(1);
}

pub async fn login(
    State(s): State<Arc<LoginState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let providers = s.providers();
    let provider = match (&q.provider, providers.len()) {
        (Some(p), _) => providers.get(p),
        (None, 1) => providers.values().next(),
        (None, _) => None,
    };
    let Some(provider) = provider else {
        return error_page(StatusCode::BAD_REQUEST, "Unknown provider", "Choose a configured identity provider.");
    };
    let rd = q.rd.as_deref().unwrap_or("/");
    if rd.len() > s.login.max_rd_bytes {
        count(&provider.id, "rd_too_long");
        tracing::warn!(provider = %provider.id, bytes = rd.len(), "login refused: rd longer than login.max_rd_bytes");
        return error_page(StatusCode::BAD_REQUEST, "Refused redirect", "The return address is too long.");
    }
    let Some(rd) = redirect::safe(rd, &s.login.allowed_redirect_hosts) else {
        return error_page(StatusCode::BAD_REQUEST, "Refused redirect", "The return address is not allowed.");
    };
    let client = client::client(&headers, peer.ip(), &s.trusted_proxies);
    match pending::admit(&s.redis, &client, &s.login, LOGIN_TTL_SECS).await {
        Ok(None) => {}
        Ok(Some(refused)) => {
            count(&provider.id, refused.outcome());
            tracing::warn!(provider = %provider.id, client = %client, outcome = refused.outcome(), "login refused: too many pending logins");
            return too_many(refused.retry_after(), "Too many sign-ins started");
        }
        Err(_) => return unavailable(),
    }
    let nonce = cookie::new_value();
    let (url, state, verifier) = match provider.authorize(&nonce).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(provider = %provider.id, error = %e, "cannot start a login");
            return unavailable();
        }
    };
    let (set_cookie, binding) = binding::issue(&s.session, state.secret(), LOGIN_TTL_SECS);
    let pending = Pending { verifier: verifier.secret().clone(), nonce, provider: provider.id.clone(), rd, binding };
    let Ok(json) = serde_json::to_string(&pending) else { return unavailable() };
    let set = redis::cmd("SET").arg(crate::keys::pkce(state.secret())).arg(json).arg("EX").arg(LOGIN_TTL_SECS).clone();
    if s.redis.query::<()>(&set).await.is_err() {
        return unavailable();
    }
    with_cookie(found(&url), &set_cookie)
}

fn with_cookie(mut resp: Response, set_cookie: &str) -> Response {
    if let Ok(v) = header::HeaderValue::from_str(set_cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The callback; whatever its outcome, a login-binding cookie the browser sent for this state is cleared
/// (the state is used or refused now, the cookie has no further use).
pub async fn callback(
    State(s): State<Arc<LoginState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let unbind = q
        .state
        .as_deref()
        .filter(|st| binding::sent(&headers, &s.session, st))
        .map(|st| binding::clear(&s.session, st));
    let resp = complete(&s, peer, &headers, q).await;
    match unbind {
        Some(c) => with_cookie(resp, &c),
        None => resp,
    }
}

async fn complete(s: &LoginState, peer: SocketAddr, headers: &HeaderMap, q: CallbackQuery) -> Response {
    let client = client::client(headers, peer.ip(), &s.trusted_proxies);
    match failures::blocked(&s.redis, &client, s.login.max_failures).await {
        Ok(Some(wait)) => return too_many(u64::try_from(wait).unwrap_or(1), "Too many failed sign-ins"),
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

    // The login must be bound to this browser (its binding cookie) before the state is consumed, so a
    // leaked callback URL opened elsewhere neither signs that browser in nor spoils the real login.
    let key = crate::keys::pkce(state);
    let pending = match s.redis.query::<Option<String>>(redis::cmd("GET").arg(&key)).await {
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
    if let Err(e) = binding::verify(headers, &s.session, state, &pending.binding) {
        tracing::warn!(provider = %pending.provider, client = %client, error = %e, "callback refused: not the browser that started this login");
        failures::record(&s.redis, &client, s.login.failure_window.as_secs()).await;
        let page = fail(
            &pending.provider,
            e.outcome(),
            "Sign-in refused",
            "This sign-in was started in another browser. Start again from here.",
        );
        return page;
    }
    // Consume the state exactly once: a replayed or concurrent callback finds nothing.
    match s.redis.query::<Option<String>>(redis::cmd("GETDEL").arg(&key)).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return fail(&pending.provider, "bad_state", "Sign-in expired", "This sign-in link was already used.")
        }
        Err(_) => return unavailable(),
    }
    let Some(provider) = s.provider(&pending.provider) else {
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
    with_cookie(found(&pending.rd), &cookie::set(&s.session, &value))
}
