//! The token value shared between replicas: its JSON form in Redis (the design's `m2m_token:{PROVIDER}:{slot}`
//! contract) and the freshness rules every reader applies, kept in one place so the hot path, followers and
//! the background refresh cannot disagree about what "fresh" means.

use serde::{Deserialize, Serialize};

/// Redis keeps a token at least this long, even when its remaining lifetime is shorter (the design's floor).
pub const MIN_REDIS_TTL_SECS: i64 = 60;

/// One M2M access token, as stored in `m2m_token:{PROVIDER}:{slot}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedToken {
    pub token_provider: String,
    pub access_token: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix milliseconds when the leader received it. Absent in values written before it existed: then the
    /// lifetime is unknown and the configured margins apply unscaled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at_ms: Option<i64>,
}

/// Refresh once this share of the lifetime is left (at 80 % of it), when shorter than `refresh_before`.
const REFRESH_AT_LEFT_PERCENT: i64 = 20;
/// The safety margin never exceeds this share of the lifetime.
const MARGIN_MAX_PERCENT: i64 = 10;

impl CachedToken {
    /// Seconds left at `now` (negative once expired).
    pub fn expires_in(&self, now: i64) -> i64 {
        self.expires_at - now
    }

    /// True while more than `margin_secs` of lifetime remain: a caller handed this token can still use it.
    pub fn is_fresh(&self, now: i64, margin_secs: i64) -> bool {
        self.expires_in(now) > margin_secs
    }

    /// Lifetime in seconds, when known.
    pub fn lifetime(&self) -> Option<i64> {
        self.issued_at_ms.map(|ms| self.expires_at - ms.div_euclid(1000))
    }

    /// The safety margin for this token: the configured one, at most 10 % of the lifetime, so a token that
    /// lives less than the configured margin is still usable for most of its life.
    pub fn margin(&self, configured: i64) -> i64 {
        self.scaled(configured, MARGIN_MAX_PERCENT)
    }

    /// Seconds left at which a refresh is due: `refresh_before`, at most 20 % of the lifetime, so any
    /// lifetime costs about one token call per lifetime instead of one per refresh round.
    pub fn refresh_before(&self, configured: i64) -> i64 {
        self.scaled(configured, REFRESH_AT_LEFT_PERCENT)
    }

    fn scaled(&self, configured: i64, percent: i64) -> i64 {
        match self.lifetime() {
            Some(l) => configured.min(l.max(0).saturating_mul(percent) / 100),
            None => configured,
        }
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
        CachedToken {
            token_provider: "corp".into(),
            access_token: "secret-value".into(),
            expires_at,
            issued_at_ms: None,
        }
    }

    #[test]
    fn margins_scale_with_a_short_lifetime_only() {
        let ten_s = CachedToken { issued_at_ms: Some(990_500), ..tok(1_000) };
        assert_eq!(ten_s.lifetime(), Some(10));
        assert_eq!(ten_s.margin(30), 1);
        assert_eq!(ten_s.refresh_before(300), 2);
        let day = CachedToken { issued_at_ms: Some(0), ..tok(86_400) };
        assert_eq!(day.margin(30), 30);
        assert_eq!(day.refresh_before(300), 300);
        assert_eq!(tok(1_000).margin(30), 30, "unknown lifetime: configured margin");
        let j = CachedToken::from_json("corp", &ten_s.to_json()).unwrap();
        assert_eq!(j.issued_at_ms, Some(990_500));
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
