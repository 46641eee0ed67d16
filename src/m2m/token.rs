//! The token value shared between replicas: its JSON form in Redis (the design's `m2m_token:{PROVIDER}`
//! contract) and the freshness rules every reader applies, kept in one place so the hot path, followers and
//! the background refresh cannot disagree about what "fresh" means.

use serde::{Deserialize, Serialize};

/// Redis keeps a token at least this long, even when its remaining lifetime is shorter (the design's floor).
pub const MIN_REDIS_TTL_SECS: i64 = 60;

/// One M2M access token, as stored in `m2m_token:{PROVIDER}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedToken {
    pub token_provider: String,
    pub access_token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl CachedToken {
    /// Seconds left at `now` (negative once expired).
    pub fn expires_in(&self, now: i64) -> i64 {
        self.expires_at - now
    }

    /// True while more than `margin_secs` of lifetime remain: a caller handed this token can still use it.
    pub fn is_fresh(&self, now: i64, margin_secs: i64) -> bool {
        self.expires_in(now) > margin_secs
    }

    /// TTL for the Redis key: the remaining lifetime, at least [`MIN_REDIS_TTL_SECS`].
    pub fn redis_ttl_secs(&self, now: i64) -> i64 {
        self.expires_in(now).max(MIN_REDIS_TTL_SECS)
    }

    pub fn to_json(&self) -> String {
        // Serializing three plain fields cannot fail; fall back to an empty object rather than panic.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }

    /// Parses the Redis value for `provider`. Garbage, or a token of another provider, is `None`: the caller
    /// treats it as missing and fetches a new one, which overwrites it.
    pub fn from_json(provider: &str, text: &str) -> Option<Self> {
        match serde_json::from_str::<CachedToken>(text) {
            Ok(t) if t.token_provider == provider && !t.access_token.is_empty() => Some(t),
            Ok(_) => {
                tracing::warn!(provider, "m2m token in redis names another provider or is empty: ignored");
                None
            }
            Err(e) => {
                tracing::warn!(provider, error = %e, "m2m token in redis is not valid JSON: ignored");
                None
            }
        }
    }
}

/// Never prints the token itself.
impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("token_provider", &self.token_provider)
            .field("access_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(expires_at: i64) -> CachedToken {
        CachedToken { token_provider: "corp".into(), access_token: "secret-value".into(), expires_at }
    }

    #[test]
    fn json_uses_the_contract_field_names() {
        let j: serde_json::Value = serde_json::from_str(&tok(1_000).to_json()).unwrap();
        assert_eq!(j, serde_json::json!({"tokenProvider": "corp", "accessToken": "secret-value", "expiresAt": 1000}));
        assert_eq!(CachedToken::from_json("corp", &tok(1_000).to_json()), Some(tok(1_000)));
    }

    #[test]
    fn garbage_or_foreign_values_are_missing() {
        assert_eq!(CachedToken::from_json("corp", "not json"), None);
        assert_eq!(CachedToken::from_json("corp", r#"{"tokenProvider":"corp"}"#), None);
        assert_eq!(CachedToken::from_json("other", &tok(1_000).to_json()), None);
    }

    #[test]
    fn freshness_keeps_the_margin_and_ttl_has_a_floor() {
        let t = tok(1_000);
        assert!(t.is_fresh(969, 30));
        assert!(!t.is_fresh(970, 30));
        assert!(!t.is_fresh(2_000, 0));
        assert_eq!(t.redis_ttl_secs(990), 60);
        assert_eq!(t.redis_ttl_secs(0), 1_000);
    }

    #[test]
    fn debug_redacts_the_token() {
        assert!(!format!("{:?}", tok(1)).contains("secret-value"));
    }
}
