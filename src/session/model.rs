//! The `session:{id}` hash as typed values. Parsing fails on anything missing or malformed, so garbage in
//! Redis becomes a deny, never a panic.

use std::collections::HashMap;

/// Hash field names, as in the design's Redis schema.
pub mod field {
    pub const USER_ID: &str = "userId";
    pub const ID_TOKEN: &str = "idToken";
    pub const ACCESS_TOKEN: &str = "accessToken";
    pub const REFRESH_TOKEN: &str = "refreshToken";
    pub const PROVIDER: &str = "provider";
    pub const SID: &str = "sid";
    pub const CREATED_AT: &str = "createdAt";
    pub const LAST_ACCESS: &str = "lastAccess";
    pub const EXPIRES_AT: &str = "expiresAt";
    pub const FINGERPRINT: &str = "clientFingerprint";
    pub const LAST_TOKEN_UPDATE: &str = "lastTokenUpdate";
    /// MAC over the fields a session states in the clear; see [`super::Session::mac_parts`].
    pub const MAC: &str = "mac";

    /// What a check reads when the identity is already remembered (`max_staleness`): the fields the MAC
    /// covers, the clocks and the MAC; not the sealed tokens, which are most of a session's bytes.
    pub const SMALL: [&str; 9] =
        [USER_ID, PROVIDER, SID, CREATED_AT, LAST_ACCESS, EXPIRES_AT, FINGERPRINT, LAST_TOKEN_UPDATE, MAC];
}

/// Domain label, the first part of every session MAC.
const MAC_LABEL: &[u8] = b"portcullis/session/v1";

/// Why the clock ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Idle,
    Absolute,
}

/// A session as stored. Token fields hold ciphertext; see [`Tokens`] for the opened values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The Redis id (hash of the cookie), not the cookie.
    pub id: String,
    pub user_id: String,
    pub provider: String,
    pub sid: Option<String>,
    pub id_token: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub last_access: i64,
    /// Absolute expiry, unix seconds.
    pub expires_at: i64,
    pub client_fingerprint: Option<String>,
    pub last_token_update: i64,
    /// The stored MAC (`None` on a session written before MACs, refused as tampered).
    pub mac: Option<String>,
    /// Delegated tokens as stored: (`dlg:{slot}` field, sealed value). Each is bound to the session and its
    /// field by its own AEAD, like the tokens, so they stay outside the MAC. Empty for most sessions (no
    /// allocation).
    pub delegated: Vec<(String, String)>,
    /// Read without its tokens ([`field::SMALL`]): the token fields are empty, never to be opened, and
    /// `delegated` is empty whatever Redis holds.
    pub small: bool,
}

/// Decrypted tokens. `Debug` leaves them out.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub id_token: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(<redacted>)")
    }
}

/// Which field of a stored session is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("session field {0} is missing or malformed")]
pub struct Corrupt(pub &'static str);

impl Session {
    pub fn from_hash(id: String, mut h: HashMap<String, String>) -> Result<Self, Corrupt> {
        let mut s = Self::parse(id, |k| h.remove(k), false)?;
        let prefix = crate::keys::DELEGATED_FIELD_PREFIX;
        s.delegated = h.into_iter().filter(|(k, v)| k.starts_with(prefix) && !v.is_empty()).collect();
        Ok(s)
    }

    /// A session read as [`field::SMALL`] (no tokens), its values in that order (`None`: Redis had none):
    /// the same rules for every field it holds, without building a map on every cached check.
    pub fn from_small(id: String, mut values: Vec<Option<String>>) -> Result<Self, Corrupt> {
        let at = |k: &str| field::SMALL.iter().position(|f| *f == k);
        Self::parse(id, |k| at(k).and_then(|i| values.get_mut(i)).and_then(Option::take), true)
    }

    /// `take` hands over a field's value once (`None` when absent); an empty value counts as absent.
    fn parse(id: String, mut take: impl FnMut(&'static str) -> Option<String>, small: bool) -> Result<Self, Corrupt> {
        let mut text = |k: &'static str| take(k).filter(|v| !v.is_empty()).ok_or(Corrupt(k));
        let user_id = text(field::USER_ID)?;
        let provider = text(field::PROVIDER)?;
        let (id_token, access_token) = match small {
            true => (String::new(), String::new()),
            false => (text(field::ID_TOKEN)?, text(field::ACCESS_TOKEN)?),
        };
        let created_at = int(text(field::CREATED_AT)?, field::CREATED_AT)?;
        let last_access = int(text(field::LAST_ACCESS)?, field::LAST_ACCESS)?;
        let expires_at = int(text(field::EXPIRES_AT)?, field::EXPIRES_AT)?;
        let refresh_token = text(field::REFRESH_TOKEN).ok();
        let sid = text(field::SID).ok();
        let client_fingerprint = text(field::FINGERPRINT).ok();
        let last_token_update = match text(field::LAST_TOKEN_UPDATE) {
            Ok(v) => int(v, field::LAST_TOKEN_UPDATE)?,
            Err(_) => created_at,
        };
        let mac = text(field::MAC).ok();
        Ok(Self {
            id,
            user_id,
            provider,
            sid,
            id_token,
            access_token,
            refresh_token,
            created_at,
            last_access,
            expires_at,
            client_fingerprint,
            last_token_update,
            mac,
            delegated: Vec::new(),
            small,
        })
    }

    /// What the MAC binds, length-prefixed by the key ring: the session id and every field that decides
    /// who the user is and how long the session lives (`userId`, `provider`, `sid`, `createdAt`,
    /// `expiresAt`) plus the client fingerprint. `lastAccess` and `lastTokenUpdate` move on every slide
    /// and refresh and stay outside; the tokens have their own AEAD binding. An absent optional field is
    /// empty (stored fields are never empty).
    pub fn mac_parts<R>(&self, f: impl FnOnce(&[&[u8]]) -> R) -> R {
        let (created, expires) = (self.created_at.to_be_bytes(), self.expires_at.to_be_bytes());
        f(&[
            MAC_LABEL,
            self.id.as_bytes(),
            self.user_id.as_bytes(),
            self.provider.as_bytes(),
            self.sid.as_deref().unwrap_or_default().as_bytes(),
            &created,
            &expires,
            self.client_fingerprint.as_deref().unwrap_or_default().as_bytes(),
        ])
    }

    /// Whether the clock alone has ended this session: idle for `idle_timeout` seconds, or past its
    /// absolute expiry. Idle is checked first (it is the usual reason, and the label operators watch).
    pub fn expired(&self, now: i64, idle_timeout: i64) -> Option<Expiry> {
        if now - self.last_access >= idle_timeout {
            Some(Expiry::Idle)
        } else if now >= self.expires_at {
            Some(Expiry::Absolute)
        } else {
            None
        }
    }

    /// Whether a session bound to a client fingerprint is presented by another client. A session written
    /// without one (binding switched on later) is not refused: it has nothing to compare.
    pub fn fingerprint_differs(&self, user_agent: &str) -> bool {
        self.client_fingerprint.as_deref().is_some_and(|bound| bound != super::fingerprint(user_agent))
    }

    /// The hash fields to write for this session.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            (field::USER_ID, self.user_id.clone()),
            (field::PROVIDER, self.provider.clone()),
            (field::ID_TOKEN, self.id_token.clone()),
            (field::ACCESS_TOKEN, self.access_token.clone()),
            (field::CREATED_AT, self.created_at.to_string()),
            (field::LAST_ACCESS, self.last_access.to_string()),
            (field::EXPIRES_AT, self.expires_at.to_string()),
            (field::LAST_TOKEN_UPDATE, self.last_token_update.to_string()),
        ];
        if let Some(v) = &self.refresh_token {
            f.push((field::REFRESH_TOKEN, v.clone()));
        }
        if let Some(v) = &self.sid {
            f.push((field::SID, v.clone()));
        }
        if let Some(v) = &self.client_fingerprint {
            f.push((field::FINGERPRINT, v.clone()));
        }
        f
    }
}

fn int(v: String, k: &'static str) -> Result<i64, Corrupt> {
    v.parse().map_err(|_| Corrupt(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(last_access: i64, expires_at: i64, fp: Option<&str>) -> Session {
        Session {
            id: "id".into(),
            user_id: "u".into(),
            provider: "corp".into(),
            sid: None,
            id_token: String::new(),
            access_token: String::new(),
            refresh_token: None,
            created_at: 0,
            last_access,
            expires_at,
            client_fingerprint: fp.map(String::from),
            last_token_update: 0,
            mac: None,
            delegated: Vec::new(),
            small: false,
        }
    }

    #[test]
    fn the_clock_rules() {
        let s = session(1_000, 5_000, None);
        assert_eq!(s.expired(1_000 + 1_799, 1_800), None, "one second before the idle timeout");
        assert_eq!(s.expired(1_000 + 1_800, 1_800), Some(Expiry::Idle), "at the idle timeout");
        let busy = session(4_999, 5_000, None);
        assert_eq!(busy.expired(4_999, 1_800), None);
        assert_eq!(busy.expired(5_000, 1_800), Some(Expiry::Absolute), "at the absolute expiry, however active");
        assert_eq!(session(0, 10, None).expired(20_000, 1_800), Some(Expiry::Idle), "idle is named first");
    }

    #[test]
    fn the_fingerprint_rule() {
        let bound = session(0, 10, Some(&crate::session::fingerprint("firefox")));
        assert!(!bound.fingerprint_differs("firefox"));
        assert!(bound.fingerprint_differs("curl"));
        assert!(!session(0, 10, None).fingerprint_differs("curl"), "a session without a fingerprint is not refused");
    }
}
