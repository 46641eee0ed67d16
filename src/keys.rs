//! Every Redis key portcullis reads or writes, in one place, mirroring DESIGN.md's "Redis schema" table.
//! No other module spells a key: a renamed or new key is a change here and in the table, nothing else.
//! Each key names one hash slot, so Redis Cluster never sees a multi-key operation across slots.

/// `session:{id}`: one session's hash (`id` is the one-way hash of the cookie value).
pub fn session(id: &str) -> String {
    format!("session:{id}")
}

/// `user_sessions:{userId}`: the user's session ids (bulk logout).
pub fn user_sessions(user_id: &str) -> String {
    format!("user_sessions:{user_id}")
}

/// `idp_sessions:{provider}:{sid}`: sessions opened under one IdP session (back-channel logout by `sid`).
pub fn idp_sessions(provider: &str, sid: &str) -> String {
    format!("idp_sessions:{provider}:{sid}")
}

/// `m2m_token:{PROVIDER}:{slot}`: the M2M token shared by every replica (JSON, the token itself sealed
/// under the key ring). `slot` names the issuer, client id and scope ([`crate::m2m::shared::slot`]): two
/// deployments sharing one Redis that both call their provider `corp` never read each other's token.
pub fn m2m_token(provider: &str, slot: &str) -> String {
    format!("m2m_token:{provider}:{slot}")
}

/// `lock:m2m_token:{PROVIDER}:{slot}`: the leader lock of one provider's token-endpoint call.
pub fn m2m_lock(provider: &str, slot: &str) -> String {
    format!("lock:m2m_token:{provider}:{slot}")
}

/// `lock:refresh:{id}`: one session refresh at a time across replicas (IdPs that rotate refresh tokens
/// reject one used twice). Not in DESIGN.md's table yet.
pub fn refresh_lock(session_id: &str) -> String {
    format!("lock:refresh:{session_id}")
}

/// `dlg:{slot}`: not a key but a FIELD of `session:{id}`, holding one delegated token (sealed under the key
/// ring, AAD = the session id and this field name). `slot` is 16 hex digits of SHA-256 over the provider and
/// the route's `portcullis.delegate` value ([`crate::delegate::slot`]). In the session's hash it is read by
/// the check's one `HGETALL`, lives in the session's hash slot, and is deleted with the session.
pub fn delegated_field(slot: &str) -> String {
    format!("{DELEGATED_FIELD_PREFIX}{slot}")
}

/// What every delegated-token field of a session hash starts with.
pub const DELEGATED_FIELD_PREFIX: &str = "dlg:";

/// `lock:delegate:{id}:{slot}`: one token exchange per session and scope at a time across replicas.
pub fn delegation_lock(session_id: &str, slot: &str) -> String {
    format!("lock:delegate:{session_id}:{slot}")
}

/// `pkce:{state}`: a pending login (PKCE verifier, nonce, return URL), used once.
pub fn pkce(state: &str) -> String {
    format!("pkce:{state}")
}

/// `auth:failures:{client}`: failed logins of one client (INCR counter with TTL).
pub fn auth_failures(client: &str) -> String {
    format!("auth:failures:{client}")
}

/// `login_starts:{client}`: logins one client started in the current window (INCR counter with TTL).
pub fn login_starts(client: &str) -> String {
    format!("login_starts:{client}")
}

/// `login_starts_total`: logins all clients started in the current login lifetime (INCR counter with TTL).
pub fn login_starts_total() -> String {
    "login_starts_total".into()
}

/// `bcl_jti:{provider}:{jti}`: a back-channel logout token already used (SET NX, TTL = its remaining
/// lifetime), so a replayed token is refused.
pub fn backchannel_jti(provider: &str, jti: &str) -> String {
    format!("bcl_jti:{provider}:{jti}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_design_schema() {
        assert_eq!(session("a"), "session:a");
        assert_eq!(user_sessions("u"), "user_sessions:u");
        assert_eq!(idp_sessions("p", "s"), "idp_sessions:p:s");
        assert_eq!(m2m_token("P", "s"), "m2m_token:P:s");
        assert_eq!(m2m_lock("P", "s"), "lock:m2m_token:P:s");
        assert_eq!(refresh_lock("a"), "lock:refresh:a");
        assert_eq!(pkce("st"), "pkce:st");
        assert_eq!(delegated_field("0123456789abcdef"), "dlg:0123456789abcdef");
        assert_eq!(delegation_lock("a", "s"), "lock:delegate:a:s");
        assert_eq!(auth_failures("c"), "auth:failures:c");
        assert_eq!(login_starts("c"), "login_starts:c");
        assert_eq!(login_starts_total(), "login_starts_total");
        assert_eq!(backchannel_jti("p", "j"), "bcl_jti:p:j");
    }
}
