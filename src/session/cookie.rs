//! The session cookie: finding it, stripping it from the upstream's `cookie` header, setting and clearing it.
//!
//! The cookie value is 32 random bytes; Redis only ever sees its SHA-256 ([`session_id`]), so a Redis dump
//! yields no usable cookie.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::config::SessionConfig;

/// Length of an encoded cookie value (32 bytes, base64url without padding).
const VALUE_LEN: usize = 43;

/// A fresh random cookie value.
pub fn new_value() -> String {
    let raw: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(raw)
}

/// Whether a presented value could be one we issued; anything else is not worth a Redis lookup.
pub fn well_formed(value: &str) -> bool {
    value.len() == VALUE_LEN && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The Redis session id for a cookie value: a one-way hash.
pub fn session_id(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// A loggable prefix of a session id; never log one whole.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or("")
}

/// Iterates `name=value` pairs of a `cookie` header (tolerating the `, ` that joins repeated headers).
fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|p| {
        let (n, v) = p.trim().split_once('=')?;
        Some((n.trim(), v.trim().trim_matches('"')))
    })
}

/// The value of cookie `name`, if present.
pub fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    pairs(header).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// How many times cookie `name` appears.
pub fn count(header: &str, name: &str) -> usize {
    pairs(header).filter(|(n, _)| *n == name).count()
}

/// The `cookie` header without cookie `name`; `None` when nothing else remains.
pub fn strip(header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.split('=').next().map(str::trim) != Some(name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// The attributes every portcullis cookie carries: Path=/, HttpOnly, Secure when configured, the
/// configured Domain (host-only without one), and `same_site`.
pub fn attributes(cfg: &SessionConfig, same_site: &str) -> String {
    let mut a = String::from("; Path=/; HttpOnly");
    if cfg.cookie_secure {
        a.push_str("; Secure");
    }
    if let Some(d) = &cfg.cookie_domain {
        a.push_str("; Domain=");
        a.push_str(d);
    }
    a.push_str("; SameSite=");
    a.push_str(same_site);
    a
}

/// `Set-Cookie` for a new session.
pub fn set(cfg: &SessionConfig, value: &str) -> String {
    format!(
        "{}={value}{}; Max-Age={}",
        cfg.cookie_name,
        attributes(cfg, cfg.same_site.as_str()),
        cfg.absolute_timeout.as_secs()
    )
}

/// `Set-Cookie` that makes the browser drop the session cookie.
pub fn clear(cfg: &SessionConfig) -> String {
    format!("{}={}; Max-Age=0", cfg.cookie_name, attributes(cfg, cfg.same_site.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_and_strip() {
        let h = "a=1; GATEWAY_SESSION=abc; b=2";
        assert_eq!(find(h, "GATEWAY_SESSION"), Some("abc"));
        assert_eq!(find(h, "GATEWAY"), None);
        assert_eq!(strip(h, "GATEWAY_SESSION").as_deref(), Some("a=1; b=2"));
        assert_eq!(strip("GATEWAY_SESSION=abc", "GATEWAY_SESSION"), None);
        assert_eq!(strip("x_GATEWAY_SESSION=1", "GATEWAY_SESSION").as_deref(), Some("x_GATEWAY_SESSION=1"));
        assert_eq!(find(";;=;a", "a"), None);
    }

    #[test]
    fn values_are_checked_and_hashed() {
        let v = new_value();
        assert!(well_formed(&v));
        assert!(!well_formed("short"));
        assert!(!well_formed(&format!("{}!", &v[..42])));
        let id = session_id(&v);
        assert_eq!(id.len(), 64);
        assert!(!id.contains(&v));
    }
}

/// Any byte string a client sends: no panic, and stripping the session cookie keeps every other cookie as sent.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const NAME: &str = "GATEWAY_SESSION";

    proptest! {
        #[test]
        fn no_header_makes_the_parser_panic(header in any::<String>()) {
            let _ = find(&header, NAME);
            let _ = count(&header, NAME);
            let _ = strip(&header, NAME);
        }

        #[test]
        fn strip_keeps_every_other_cookie_unaltered(
            others in proptest::collection::vec(("[A-Za-z0-9_-]{1,12}", "[!#-+./-:<-\\[\\]-~]{0,20}"), 0..6),
            session in proptest::option::of("[A-Za-z0-9_-]{1,43}"),
            at in 0usize..6,
        ) {
            let others: Vec<(String, String)> = others.into_iter().filter(|(n, _)| n != NAME).collect();
            let mut pairs: Vec<String> = others.iter().map(|(n, v)| format!("{n}={v}")).collect();
            if let Some(s) = &session {
                pairs.insert(at.min(pairs.len()), format!("{NAME}={s}"));
            }
            let header = pairs.join("; ");
            prop_assert_eq!(find(&header, NAME), session.as_deref());
            let kept = strip(&header, NAME);
            let expect: Vec<String> = others.iter().map(|(n, v)| format!("{n}={v}")).collect();
            prop_assert_eq!(kept, (!expect.is_empty()).then(|| expect.join("; ")));
        }
    }
}
