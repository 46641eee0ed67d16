//! The refresh_token grant for a session, under a short per-session Redis lock.
//!
//! IdPs rotate refresh tokens (Ping does; the test IdP does): a refresh token used twice is rejected and
//! may end the whole grant. So across every replica only one refresh per session may be in flight: the
//! lock holder re-reads the session (someone may have refreshed a moment ago), calls the IdP and writes
//! the new tokens (last write wins); everyone else waits for the lock to go and adopts what was written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::Instrument;

use super::id_token::IdToken;
use super::provider::Provider;
use super::transport::{Kind, Reply};
use super::IdpError;
use crate::config::ProviderKind;
use crate::keys::refresh_lock as refresh_key;
use crate::lock::RedisLock;
use crate::session::{Session, Tokens};

/// How often a waiting replica looks for the holder's result.
const FOLLOWER_POLL: Duration = Duration::from_millis(50);

/// New tokens, already written to the session, and the verified ID token among them.
pub struct Refreshed {
    pub tokens: Tokens,
    pub id_token: Arc<IdToken>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// Refreshes `session`, whose tokens were `tokens` when the caller read it.
pub async fn refresh(p: &Provider, session: &Session, now: i64, user_claim: &str) -> Result<Refreshed, IdpError> {
    let span = tracing::info_span!("portcullis.refresh", role = tracing::field::Empty, ok = tracing::field::Empty);
    let r = refresh_locked(p, session, now, user_claim).instrument(span.clone()).await;
    span.record("ok", r.is_ok());
    r
}

/// Under `lock:refresh:{id}`: the holder calls the IdP, everyone else adopts its result. The span's `role`
/// says which this replica was.
async fn refresh_locked(p: &Provider, session: &Session, now: i64, user_claim: &str) -> Result<Refreshed, IdpError> {
    let redis = p.store.redis();
    let key = refresh_key(&session.id);
    let ttl = p.lock_ttl();
    let deadline = Instant::now() + ttl * 2;
    loop {
        match RedisLock::try_acquire(redis, key.clone(), ttl).await {
            Err(e) => return Err(IdpError::Unavailable(format!("refresh lock: {e}"))),
            Ok(Some(lock)) => {
                tracing::Span::current().record("role", "leader");
                let r = lead(p, session, now, user_claim).await;
                if let Err(e) = lock.release(redis).await {
                    // The TTL frees it soon enough.
                    tracing::warn!(error = %e, "could not release a refresh lock");
                }
                return r;
            }
            Ok(None) => {
                tracing::Span::current().record("role", "follower");
                tokio::time::sleep(FOLLOWER_POLL).await;
                if let Some(r) = adopt(p, session, user_claim).await? {
                    return Ok(r);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(IdpError::Unavailable("waited too long for another replica's refresh".into()));
        }
    }
}

/// Re-reads the session: the tokens someone else wrote since `seen` was read, if any.
async fn adopt(p: &Provider, seen: &Session, user_claim: &str) -> Result<Option<Refreshed>, IdpError> {
    let Some(current) = reread(p, seen).await? else {
        return Err(IdpError::Revoked("session ended while refreshing".into()));
    };
    if current.id_token == seen.id_token && current.access_token == seen.access_token {
        return Ok(None);
    }
    // Sealed by another replica, maybe under a key this one does not have yet: 503, not a deleted session.
    let tokens = p.store.decrypt(&current)?;
    let id_token = verify_for(p, &tokens.id_token, seen, user_claim).await?;
    Ok(Some(Refreshed { tokens, id_token }))
}

async fn reread(p: &Provider, seen: &Session) -> Result<Option<Session>, IdpError> {
    p.store.load(&seen.id).await.map_err(|e| IdpError::Unavailable(format!("session re-read: {e}")))
}

/// The lock holder: adopt a fresh result if there is one, else call the IdP.
async fn lead(p: &Provider, seen: &Session, now: i64, user_claim: &str) -> Result<Refreshed, IdpError> {
    if let Some(r) = adopt(p, seen, user_claim).await? {
        return Ok(r);
    }
    let tokens = p.store.decrypt(seen)?;
    let Some(refresh_token) = tokens.refresh_token.clone() else {
        return Err(IdpError::Revoked("no refresh token".into()));
    };
    let ep = p.discovery.endpoints(&p.http).await?;
    let mut form = vec![("grant_type", "refresh_token".to_string()), ("refresh_token", refresh_token.clone())];
    if p.cfg.kind == ProviderKind::Entra {
        // Entra's v2.0 token endpoint wants the scopes again on a refresh.
        form.push(("scope", p.cfg.login_scopes().join(" ")));
    }
    let req = p.client_auth(p.http.client.post(&ep.token_endpoint), p.cfg.client_auth, &mut form);
    let resp: TokenResponse = match p.http.send(Kind::Refresh, req.form(&form)).await? {
        Reply::Ok(t) => t,
        Reply::Refused { status, body } => {
            let code = body.get("error").and_then(|e| e.as_str()).unwrap_or("");
            return Err(if code == "invalid_grant" {
                IdpError::Revoked("the IdP refused the refresh token".into())
            } else {
                IdpError::Unavailable(format!("refresh refused: HTTP {status} {code}"))
            });
        }
    };
    let new = Tokens {
        id_token: resp.id_token.unwrap_or(tokens.id_token),
        access_token: resp.access_token,
        refresh_token: resp.refresh_token.or(Some(refresh_token)),
    };
    let id_token = verify_for(p, &new.id_token, seen, user_claim).await?;
    match p.store.update_tokens(&seen.id, &new, now).await {
        Ok(true) => {}
        Ok(false) => return Err(IdpError::Revoked("session ended while refreshing".into())),
        Err(e) => return Err(IdpError::Unavailable(format!("storing refreshed tokens: {e}"))),
    }
    Ok(Refreshed { tokens: new, id_token })
}

/// Verifies a refreshed ID token and that it names the session's user.
/// (An IdP that returns no new ID token leaves the old one in place, expired or not.)
async fn verify_for(p: &Provider, token: &str, s: &Session, user_claim: &str) -> Result<Arc<IdToken>, IdpError> {
    let t = p.verify_id_token(token).await?;
    if t.text(user_claim) != Some(s.user_id.as_str()) {
        return Err(IdpError::Invalid(format!("refreshed id token names another {user_claim}")));
    }
    Ok(t)
}
