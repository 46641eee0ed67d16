//! How long IdP metadata (discovery, JWKS) is trusted before it is fetched again: the reply's
//! `Cache-Control: max-age` (an hour when it says nothing), bounded to [`MIN`]..[`MAX`] and by the
//! provider's `metadata_max_age`. Without a bound, a signing key the IdP withdraws would verify tokens for
//! as long as the process lives.

use std::time::Duration;

use reqwest::header::{HeaderMap, CACHE_CONTROL};

/// An IdP that says `max-age=0` or `no-cache` is still not asked more often than this.
pub const MIN: Duration = Duration::from_secs(60);
/// The longest anything is kept, whatever the IdP says.
pub const MAX: Duration = Duration::from_secs(24 * 3600);
/// When the IdP sends no `Cache-Control`.
pub const DEFAULT: Duration = Duration::from_secs(3600);
/// While the IdP cannot be reached, the last copy is used and asked for again this often.
pub const RETRY: Duration = Duration::from_secs(30);

/// How long a reply with `headers` stays fresh, with the operator's `cap` (`metadata_max_age`) last.
pub fn fresh_for(headers: &HeaderMap, cap: Duration) -> Duration {
    max_age(headers).unwrap_or(DEFAULT).clamp(MIN, MAX).min(cap)
}

/// `max-age` of a `Cache-Control` header; `no-cache`/`no-store` count as 0.
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get_all(CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    let mut found = None;
    for directive in value.split(',').map(str::trim) {
        let (name, arg) = directive.split_once('=').unwrap_or((directive, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "no-cache" | "no-store" => return Some(Duration::ZERO),
            "max-age" => found = arg.trim().trim_matches('"').parse::<u64>().ok().map(Duration::from_secs),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(cc: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, cc.parse().unwrap());
        h
    }

    #[test]
    fn max_age_is_honoured_within_the_bounds() {
        assert_eq!(fresh_for(&with("public, max-age=600"), MAX), Duration::from_secs(600));
        assert_eq!(fresh_for(&with("max-age=5"), MAX), MIN);
        assert_eq!(fresh_for(&with("max-age=99999999"), MAX), MAX);
        assert_eq!(fresh_for(&with("no-store"), MAX), MIN);
        assert_eq!(fresh_for(&with("max-age=nonsense"), MAX), DEFAULT);
        assert_eq!(fresh_for(&HeaderMap::new(), MAX), DEFAULT);
    }

    #[test]
    fn the_operators_cap_wins() {
        assert_eq!(fresh_for(&with("max-age=600"), Duration::from_secs(2)), Duration::from_secs(2));
        assert_eq!(fresh_for(&HeaderMap::new(), Duration::from_secs(120)), Duration::from_secs(120));
    }
}
