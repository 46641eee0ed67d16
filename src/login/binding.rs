//! The login-binding cookie: a login completes only in the browser that started it (login CSRF and
//! session swap, issue 10 hole 2).
//!
//! `/oauth2/login` sets a short-lived HttpOnly cookie whose value is random and whose name carries a tag of
//! the state, so logins started in parallel tabs each have their own cookie. `pkce:{state}` keeps only a
//! hash of the value; the callback requires the cookie and a matching hash. A callback URL that leaks
//! (logs, referrer) or that an attacker sends to a victim is refused in any other browser.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::SessionConfig;
use crate::session::cookie;

/// The cookie name's stem; the tag of the state follows it.
const STEM: &str = "portcullis_login_";
/// Hex characters of the state's hash in the name: enough to keep parallel logins apart, not a secret.
const TAG_LEN: usize = 12;

/// Why a callback is not bound to this browser; each is a bounded `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("the login-binding cookie is missing")]
    Missing,
    #[error("the login-binding cookie does not match this login")]
    Mismatch,
}

impl BindingError {
    pub fn outcome(self) -> &'static str {
        match self {
            Self::Missing => "binding_missing",
            Self::Mismatch => "binding_mismatch",
        }
    }
}

/// The binding cookie's name for one login: `__Host-` prefixed when cookies are Secure and host-only (no
/// sibling subdomain can set or shadow it); `__Secure-` when `session.cookie_domain` shares cookies across
/// hosts (the login may start on one host and come back on another, as the session cookie does).
pub fn name(cfg: &SessionConfig, state: &str) -> String {
    let tag = &hex::encode(Sha256::digest(state.as_bytes()))[..TAG_LEN];
    let prefix = match (cfg.cookie_secure, &cfg.cookie_domain) {
        (true, None) => "__Host-",
        (true, Some(_)) => "__Secure-",
        (false, _) => "",
    };
    format!("{prefix}{STEM}{tag}")
}

/// What `pkce:{state}` stores of a binding value.
pub fn hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// A new binding for `state`: the `Set-Cookie` line and the hash to store with the pending login.
pub fn issue(cfg: &SessionConfig, state: &str, ttl_secs: u64) -> (String, String) {
    let value = cookie::new_value();
    let set = format!("{}={value}{}; Max-Age={ttl_secs}", name(cfg, state), attributes(cfg));
    (set, hash(&value))
}

/// `Set-Cookie` that drops the binding of `state` once the callback used it (or refused it).
pub fn clear(cfg: &SessionConfig, state: &str) -> String {
    format!("{}={}; Max-Age=0", name(cfg, state), attributes(cfg))
}

fn value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| cookie::find(h, name))
}

/// Whether the request carries a binding cookie for `state` at all (then the callback clears it).
pub fn sent(headers: &HeaderMap, cfg: &SessionConfig, state: &str) -> bool {
    value(headers, &name(cfg, state)).is_some()
}

/// Whether the request carries the binding cookie of `state` with a value whose hash is `stored`.
pub fn verify(headers: &HeaderMap, cfg: &SessionConfig, state: &str, stored: &str) -> Result<(), BindingError> {
    let value = value(headers, &name(cfg, state)).filter(|v| cookie::well_formed(v)).ok_or(BindingError::Missing)?;
    // Hashes of a secret compared in constant time: nothing about `stored` leaks through timing.
    if bool::from(hash(value).as_bytes().ct_eq(stored.as_bytes())) {
        Ok(())
    } else {
        Err(BindingError::Mismatch)
    }
}

/// The session cookie's attributes with SameSite=Lax whatever the session uses: the IdP's redirect back
/// is a top-level GET navigation, which Lax cookies accompany and Strict ones would not.
fn attributes(cfg: &SessionConfig) -> String {
    cookie::attributes(cfg, "Lax")
}

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderMap, HeaderValue};

    use super::*;

    fn cfg(secure: bool) -> SessionConfig {
        SessionConfig { cookie_secure: secure, ..SessionConfig::default() }
    }

    fn with_cookie(c: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(c).unwrap());
        h
    }

    #[test]
    fn each_state_has_its_own_cookie_and_secure_ones_are_host_prefixed() {
        let (a, b) = (name(&cfg(false), "state-a"), name(&cfg(false), "state-b"));
        assert_ne!(a, b);
        assert!(a.starts_with("portcullis_login_"), "{a}");
        assert!(name(&cfg(true), "state-a").starts_with("__Host-portcullis_login_"));
        let (set, _) = issue(&cfg(true), "s", 600);
        for attr in ["HttpOnly", "Secure", "Path=/", "SameSite=Lax", "Max-Age=600"] {
            assert!(set.contains(attr), "{attr} in {set}");
        }
        assert!(!set.contains("Domain"), "{set}");
        assert!(clear(&cfg(false), "s").contains("Max-Age=0"));
        let shared = SessionConfig { cookie_domain: Some("example.com".into()), ..cfg(true) };
        assert!(name(&shared, "s").starts_with("__Secure-portcullis_login_"));
        assert!(issue(&shared, "s", 600).0.contains("; Domain=example.com"));
    }

    #[test]
    fn only_the_issued_value_for_that_state_verifies() {
        let c = cfg(false);
        let (set, stored) = issue(&c, "st", 600);
        let pair = set.split(';').next().unwrap();
        assert_eq!(verify(&with_cookie(&format!("x=1; {pair}")), &c, "st", &stored), Ok(()));
        assert_eq!(verify(&HeaderMap::new(), &c, "st", &stored), Err(BindingError::Missing));
        assert_eq!(verify(&with_cookie(pair), &c, "other", &stored), Err(BindingError::Missing));
        let forged = format!("{}={}", name(&c, "st"), cookie::new_value());
        assert_eq!(verify(&with_cookie(&forged), &c, "st", &stored), Err(BindingError::Mismatch));
        assert_eq!(verify(&with_cookie(pair), &c, "st", ""), Err(BindingError::Mismatch));
    }
}
