//! One delegated token as sealed in its session field (`dlg:{slot}`): the token and its expiry in the M2M
//! token's shape ([`CachedToken`]), so the same lifetime-scaled safety margin decides when it is too old,
//! plus the route value it was issued for and which of the user's access tokens it was derived from. Redis
//! 7.0 has no per-field TTL, so the expiry travels inside the sealed value.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{CryptoError, KeyRing};
use crate::m2m::CachedToken;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delegated {
    /// `tokenProvider` (the provider name), `accessToken` (the delegated token), `expiresAt`, `issuedAtMs`.
    #[serde(flatten)]
    pub token: CachedToken,
    /// The route's `portcullis.delegate` value it was issued for.
    pub target: String,
    /// [`subject_tag`] of the user's access token it was derived from.
    pub subject: String,
}

/// Which stored user access token a delegated token derives from: 16 hex digits of SHA-256 over its
/// ciphertext as stored (a refresh stores a new one), computed without decrypting anything.
pub fn subject_tag(stored_access_token: &str) -> String {
    hex::encode(&Sha256::digest(stored_access_token.as_bytes())[..8])
}

impl Delegated {
    /// Sealed for `field` of session `session_id` (the AAD binds both).
    pub fn seal(&self, ring: &KeyRing, session_id: &str, field: &str) -> Result<String, CryptoError> {
        let json = serde_json::to_string(self).map_err(|_| CryptoError::Malformed)?;
        ring.encrypt(session_id, field, &json)
    }

    /// Opens a stored value. A value that does not open is the caller's to judge (tampered, or a key this
    /// replica lacks); one that opens but does not parse (an older format) is `None`: fetched again.
    pub fn open(ring: &KeyRing, session_id: &str, field: &str, stored: &str) -> Result<Option<Self>, CryptoError> {
        let json = ring.decrypt(session_id, field, stored)?;
        Ok(serde_json::from_str(&json).ok())
    }

    /// Whether it answers a request for `target` at `provider`, derived from the session's current access
    /// token (`subject`), with more than its lifetime-scaled margin left at `now`.
    pub fn serves(&self, provider: &str, target: &str, subject: &str, now: i64, margin_secs: i64) -> bool {
        self.token.token_provider == provider
            && self.target == target
            && self.subject == subject
            && self.token.is_fresh(now, self.token.margin(margin_secs))
    }
}

/// Never prints the token itself.
impl std::fmt::Debug for Delegated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delegated")
            .field("token", &self.token)
            .field("target", &self.target)
            .field("subject", &self.subject)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: i64, issued_at_ms: i64) -> Delegated {
        Delegated {
            token: CachedToken {
                token_provider: "corp".into(),
                access_token: "delegated-secret".into(),
                expires_at,
                issued_at_ms: Some(issued_at_ms),
            },
            target: "api://orders/.default".into(),
            subject: subject_tag("v1.k.ciphertext"),
        }
    }

    #[test]
    fn sealed_to_its_session_and_field() {
        let ring = KeyRing::parse(&[crate::crypto::generate_key()]).unwrap();
        let t = token(10_000, 0);
        let sealed = t.seal(&ring, "sid", "dlg:a").unwrap();
        assert!(!sealed.contains("delegated-secret"));
        assert_eq!(Delegated::open(&ring, "sid", "dlg:a", &sealed).unwrap(), Some(t));
        assert!(Delegated::open(&ring, "other", "dlg:a", &sealed).is_err(), "another session's value");
        assert!(Delegated::open(&ring, "sid", "dlg:b", &sealed).is_err(), "another scope's field");
    }

    #[test]
    fn serves_its_target_and_subject_until_the_scaled_margin() {
        let t = token(1_000, 0); // 1000 s lifetime: margin min(30, 100) = 30
        let subject = subject_tag("v1.k.ciphertext");
        assert!(t.serves("corp", "api://orders/.default", &subject, 969, 30));
        assert!(!t.serves("corp", "api://orders/.default", &subject, 970, 30), "inside the margin");
        assert!(!t.serves("corp", "api://other", &subject, 0, 30), "another target");
        assert!(!t.serves("corp", "api://orders/.default", &subject_tag("v1.k.refreshed"), 0, 30), "refreshed");
        assert!(!t.serves("other", "api://orders/.default", &subject, 0, 30), "another provider");
        let short = token(1_010, 1_000_000); // 10 s lifetime: margin 1 s, not 30
        assert!(short.serves("corp", "api://orders/.default", &subject, 1_008, 30));
    }

    #[test]
    fn debug_redacts_the_token() {
        assert!(!format!("{:?}", token(1, 0)).contains("delegated-secret"));
    }
}
