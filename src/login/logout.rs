//! `/oauth2/logout` (RP-initiated logout, OIDC RP-Initiated Logout 1.0) and `/oauth2/backchannel-logout`
//! (OIDC Back-Channel Logout 1.0).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::security::error_page;
use super::{origin, LoginState};
use crate::session::store::idp_key;
use crate::session::{cookie, Session};

fn revoked(reason: &'static str, n: usize) {
    metrics::counter!("portcullis_sessions_revoked_total", "reason" => reason).increment(n as u64);
}

/// `GET /oauth2/logout`: changes nothing; a page whose button POSTs here (a link or image elsewhere cannot
/// log anyone out).
pub async fn confirm() -> Response {
    let body = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign out</title></head>\
        <body><h1>Sign out</h1><form method=\"post\" action=\"/oauth2/logout\">\
        <button type=\"submit\">Sign out</button></form></body></html>";
    // Same-origin referrer policy: the form's POST then carries this origin in `Origin` (under no-referrer
    // browsers send `Origin: null`).
    (StatusCode::OK, [(header::REFERRER_POLICY, "same-origin")], Html(body)).into_response()
}

/// `POST /oauth2/logout`, same-origin only ([`origin::check`]): delete the session, clear the cookie, then
/// send the browser to the IdP's end_session_endpoint (with `id_token_hint`) or to the configured page.
pub async fn logout(State(s): State<Arc<LoginState>>, headers: HeaderMap) -> Response {
    if let Err(why) = origin::check(&headers, &s.public_origin) {
        metrics::counter!("portcullis_logout_refused_total", "reason" => why.reason()).increment(1);
        tracing::warn!(reason = why.reason(), "logout refused: not a same-origin request");
        return error_page(
            StatusCode::FORBIDDEN,
            "Sign-out refused",
            "Sign out with the button on this site's sign-out page.",
        );
    }
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| cookie::find(h, &s.session.cookie_name).map(String::from))
        .filter(|v| cookie::well_formed(v));
    let mut target = s.login.logout_redirect.clone();
    if let Some(value) = value {
        let id = cookie::session_id(&value);
        match s.store.load(&id).await {
            Ok(Some(session)) => {
                if let Err(e) = s.store.delete(&session).await {
                    tracing::warn!(error = %e, "logout could not delete the session");
                    return cleared(&s, unavailable());
                }
                revoked("logout", 1);
                if let Some(url) = end_session_url(&s, &session).await {
                    target = url;
                }
            }
            Ok(None) => {}
            Err(crate::session::LoadError::Corrupt(_)) => {
                let _ = s.store.delete_id(&id).await;
            }
            Err(crate::session::LoadError::Store(_)) => return cleared(&s, unavailable()),
        }
    }
    cleared(&s, (StatusCode::FOUND, [(header::LOCATION, target)]).into_response())
}

fn unavailable() -> Response {
    error_page(StatusCode::SERVICE_UNAVAILABLE, "Sign-out unavailable", "Please try again shortly.")
}

fn cleared(s: &LoginState, mut resp: Response) -> Response {
    if let Ok(v) = header::HeaderValue::from_str(&cookie::clear(&s.session)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn end_session_url(s: &LoginState, session: &Session) -> Option<String> {
    if !s.login.rp_initiated_logout {
        return None;
    }
    let provider = s.provider(&session.provider)?;
    let mut url = url::Url::parse(&provider.end_session_endpoint().await?).ok()?;
    {
        let mut q = url.query_pairs_mut();
        if let Ok(id_token) = s.store.open_id_token(session) {
            q.append_pair("id_token_hint", &id_token);
        }
        q.append_pair("client_id", &provider.client_id);
        if let Some(p) = &s.login.post_logout_redirect_uri {
            q.append_pair("post_logout_redirect_uri", p);
        }
    }
    Some(url.to_string())
}

#[derive(Deserialize)]
pub struct BackchannelForm {
    logout_token: String,
}

/// Verifies the logout token and deletes the sessions it names: by `sid` when present, else its subject's
/// sessions of this provider (§2.6, §2.7). A replayed `jti` is refused. Answers 200 on success, 400
/// otherwise, never cached (§2.8).
pub async fn backchannel(State(s): State<Arc<LoginState>>, Form(f): Form<BackchannelForm>) -> Response {
    let bad = |why: &str| {
        tracing::info!(why, "back-channel logout rejected");
        (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], r#"{"error":"invalid_request"}"#)
            .into_response()
    };
    let iss = crate::idp::claims::unverified_payload(&f.logout_token)
        .and_then(|c| c.get("iss").and_then(|v| v.as_str()).map(String::from));
    let providers = s.providers();
    let Some(provider) = iss.and_then(|iss| providers.values().find(|p| p.issuer == iss)) else {
        return bad("unknown issuer");
    };
    let claims = match provider.backend.verify_logout_token(&f.logout_token).await {
        Ok(c) => c,
        Err(e) => return bad(&e.to_string()),
    };
    // A token is used once (§2.6 "jti"): remembered for as long as it could still be accepted.
    let jti = claims.get("jti").and_then(|v| v.as_str()).unwrap_or_default();
    let seen = crate::keys::backchannel_jti(&provider.id, jti);
    let ttl = super::logout_token::replay_ttl(&claims, crate::now());
    let first = s.redis.query::<Option<String>>(redis::cmd("SET").arg(&seen).arg(1).arg("NX").arg("EX").arg(ttl)).await;
    match first {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::warn!(provider = %provider.id, "back-channel logout refused: replayed jti");
            return bad("replayed jti");
        }
        Err(_) => return unavailable(),
    }
    // By `sid`: that IdP session's sessions. By `sub` alone: that user's sessions of THIS provider only.
    let deleted = match (claims.get("sid").and_then(|v| v.as_str()), provider.backend.user_id(&claims)) {
        (Some(sid), _) => s.store.delete_indexed(&idp_key(&provider.id, sid)).await,
        (None, Some(user)) => s.store.delete_user_sessions_of(&user, &provider.id).await,
        (None, None) => return bad("neither sid nor sub"),
    };
    match deleted {
        Ok(n) => {
            revoked("backchannel_logout", n);
            tracing::info!(provider = %provider.id, sessions = n, "back-channel logout");
            StatusCode::OK.into_response()
        }
        Err(_) => {
            // Not done: let the IdP's retry through.
            let _ = s.redis.query::<()>(redis::cmd("DEL").arg(&seen)).await;
            unavailable()
        }
    }
}
