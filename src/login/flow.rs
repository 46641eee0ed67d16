//! `GET /oauth2/login` and `GET /oauth2/callback`: Authorization Code + PKCE (RFC 6749 §4.1, RFC 7636),
//! with OIDC's nonce binding the ID token to this login.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::failure::LoginFailure;
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
        return LoginFailure::UnknownProvider.respond("unknown");
    };
    match start(&s, provider, peer, &headers, q.rd.as_deref().unwrap_or("/")).await {
        Ok(resp) => resp,
        Err(f) => f.respond(&provider.id),
    }
}

/// Checks the return address and the pending-login bounds, stores the login and sends the browser to the IdP.
async fn start(
    s: &LoginState,
    provider: &super::LoginProvider,
    peer: SocketAddr,
    headers: &HeaderMap,
    rd: &str,
) -> Result<Response, LoginFailure> {
    if rd.len() > s.login.max_rd_bytes {
        tracing::warn!(provider = %provider.id, bytes = rd.len(), "login refused: rd longer than login.max_rd_bytes");
        return Err(LoginFailure::RdTooLong);
    }
    let rd = redirect::safe(rd, &s.login.allowed_redirect_hosts).ok_or(LoginFailure::RdRefused)?;
    let client = client::client(headers, peer.ip(), &s.trusted_proxies);
    match pending::admit(&s.redis, &client, &s.login, LOGIN_TTL_SECS).await {
        Ok(None) => {}
        Ok(Some(refused)) => {
            tracing::warn!(provider = %provider.id, client = %client, "login refused: too many pending logins");
            return Err(LoginFailure::TooManyPending(refused));
        }
        Err(_) => return Err(LoginFailure::RedisUnavailable),
    }
    let nonce = cookie::new_value();
    let (url, state, verifier) = provider.authorize(&nonce).await.map_err(|e| {
        tracing::warn!(provider = %provider.id, error = %e, "cannot start a login");
        LoginFailure::IdpUnavailable
    })?;
    let (set_cookie, binding) = binding::issue(&s.session, state.secret(), LOGIN_TTL_SECS);
    let pending = Pending { verifier: verifier.secret().clone(), nonce, provider: provider.id.clone(), rd, binding };
    let json = serde_json::to_string(&pending).map_err(|_| LoginFailure::RedisUnavailable)?;
    let set = redis::cmd("SET").arg(crate::keys::pkce(state.secret())).arg(json).arg("EX").arg(LOGIN_TTL_SECS).clone();
    s.redis.query::<()>(&set).await.map_err(|_| LoginFailure::RedisUnavailable)?;
    Ok(with_cookie(found(&url), &set_cookie))
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
    let client = client::client(&headers, peer.ip(), &s.trusted_proxies);
    let resp = match complete(&s, &client, &headers, q).await {
        Ok(resp) => resp,
        Err((provider, f)) => {
            if f.counts_toward_limit() {
                failures::record(&s.redis, &client, s.login.failure_window.as_secs()).await;
            }
            f.respond(&provider)
        }
    };
    match unbind {
        Some(c) => with_cookie(resp, &c),
        None => resp,
    }
}

/// A failed callback and the provider it is counted for (`"unknown"` before one is known).
type Failed = (String, LoginFailure);

fn unknown(f: LoginFailure) -> Failed {
    ("unknown".to_string(), f)
}

async fn complete(s: &LoginState, client: &str, headers: &HeaderMap, q: CallbackQuery) -> Result<Response, Failed> {
    match failures::blocked(&s.redis, client, s.login.max_failures).await {
        Ok(Some(wait)) => return Err(unknown(LoginFailure::Blocked(u64::try_from(wait).unwrap_or(1)))),
        Ok(None) => {}
        Err(_) => return Err(unknown(LoginFailure::RedisUnavailable)),
    }

    // The IdP answered with an error (RFC 6749 §4.1.2.1): the state is still consumed if present.
    if let Some(err) = &q.error {
        if let Some(state) = &q.state {
            let _ = s.redis.query::<Option<String>>(redis::cmd("GETDEL").arg(crate::keys::pkce(state))).await;
        }
        let detail = q.error_description.as_deref().unwrap_or(err);
        return Err(unknown(LoginFailure::IdpError(detail.to_string())));
    }
    let (Some(code), Some(state)) = (&q.code, &q.state) else {
        return Err(unknown(LoginFailure::Incomplete));
    };

    // The login must be bound to this browser (its binding cookie) before the state is consumed, so a
    // leaked callback URL opened elsewhere neither signs that browser in nor spoils the real login.
    let key = crate::keys::pkce(state);
    let pending = match s.redis.read::<Option<String>>(redis::cmd("GET").arg(&key)).await {
        Ok(p) => p.and_then(|j| serde_json::from_str::<Pending>(&j).ok()),
        Err(_) => return Err(unknown(LoginFailure::RedisUnavailable)),
    };
    let pending = pending.ok_or_else(|| unknown(LoginFailure::UnknownState))?;
    let fail = |f: LoginFailure| (pending.provider.clone(), f);
    if let Err(e) = binding::verify(headers, &s.session, state, &pending.binding) {
        tracing::warn!(provider = %pending.provider, client = %client, error = %e, "callback refused: not the browser that started this login");
        return Err(fail(LoginFailure::Binding(e)));
    }
    // Consume the state exactly once: a replayed or concurrent callback finds nothing.
    match s.redis.query::<Option<String>>(redis::cmd("GETDEL").arg(&key)).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(fail(LoginFailure::AlreadyUsed)),
        Err(_) => return Err(fail(LoginFailure::RedisUnavailable)),
    }
    let provider = s.provider(&pending.provider).ok_or_else(|| unknown(LoginFailure::StateForUnknownProvider))?;

    let tokens = provider.exchange(code, &pending.verifier).await.map_err(|e| match e {
        super::provider::ExchangeError::Unavailable(e) => {
            tracing::warn!(provider = %provider.id, error = %e, "code exchange failed");
            fail(LoginFailure::IdpUnavailable)
        }
        e => fail(LoginFailure::Exchange(e.to_string())),
    })?;
    let claims = provider.backend.verify_id_token(&tokens.id_token, &pending.nonce).await.map_err(|e| {
        tracing::warn!(provider = %provider.id, error = %e, "id token rejected at login");
        fail(LoginFailure::InvalidIdToken)
    })?;
    let user_id = provider.backend.user_id(&claims).ok_or_else(|| fail(LoginFailure::NoUser))?;
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
    let (value, _) = s.store.create(new, crate::now()).await.map_err(|e| {
        tracing::warn!(error = %e, "could not create session");
        fail(LoginFailure::RedisUnavailable)
    })?;
    metrics::counter!("portcullis_logins_total", "provider" => provider.id.clone(), "outcome" => "success")
        .increment(1);
    Ok(with_cookie(found(&pending.rd), &cookie::set(&s.session, &value)))
}
