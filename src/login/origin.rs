//! Logout changes state only for a same-origin POST: a cross-site link, image or form cannot log a user out
//! of portcullis and the IdP (logout CSRF). Browsers send `Origin` on every POST; older ones at least
//! `Sec-Fetch-Site` or a `Referer`. A request with none of them is refused too: fail closed.

use axum::http::{header, HeaderMap};

/// Why a logout POST is refused; each is a bounded `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `Origin` names another origin (or is `null`).
    CrossOrigin,
    /// `Sec-Fetch-Site` says the request came from another site or origin.
    CrossSite,
    /// `Referer` from another origin, or no header that names the request's origin at all.
    NoOrigin,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Self::CrossOrigin => "cross_origin",
            Self::CrossSite => "cross_site",
            Self::NoOrigin => "no_origin",
        }
    }
}

/// The origin (`scheme://host[:port]`) of `public_url`, as browsers write it in `Origin`.
pub fn of(public_url: &str) -> String {
    url::Url::parse(public_url).map(|u| u.origin().ascii_serialization()).unwrap_or_default()
}

/// `Ok` when the request demonstrably comes from a page of `origin`: a real `Origin` must be it; else the
/// browser's `Sec-Fetch-Site` must say `same-origin` (a page under `Referrer-Policy: no-referrer` sends
/// `Origin: null` even to its own origin); else a same-origin `Referer`. Nothing of the kind: refused.
pub fn check(headers: &HeaderMap, origin: &str) -> Result<(), Refused> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let same = |o: &str| !origin.is_empty() && o.eq_ignore_ascii_case(origin);
    let sent_origin = text(header::ORIGIN);
    if let Some(o) = sent_origin.filter(|o| *o != "null") {
        return same(o).then_some(()).ok_or(Refused::CrossOrigin);
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return (site == "same-origin").then_some(()).ok_or(Refused::CrossSite);
    }
    if sent_origin.is_some() {
        return Err(Refused::CrossOrigin);
    }
    match text(header::REFERER).and_then(|r| url::Url::parse(r).ok()) {
        Some(r) if same(&r.origin().ascii_serialization()) => Ok(()),
        _ => Err(Refused::NoOrigin),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_public_origin_may_log_out() {
        let o = of("https://app.example.com/some/path");
        assert_eq!(o, "https://app.example.com");
        assert_eq!(of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(check(&headers(&[("origin", "https://app.example.com")]), &o), Ok(()));
        assert_eq!(check(&headers(&[("sec-fetch-site", "same-origin")]), &o), Ok(()));
        // Chromium under `Referrer-Policy: no-referrer`: Origin null, but the fetch metadata is same-origin.
        assert_eq!(check(&headers(&[("origin", "null"), ("sec-fetch-site", "same-origin")]), &o), Ok(()));
        assert_eq!(check(&headers(&[("referer", "https://app.example.com/reports?x=1")]), &o), Ok(()));
        for (h, why) in [
            (headers(&[("origin", "https://evil.example")]), Refused::CrossOrigin),
            (headers(&[("origin", "null")]), Refused::CrossOrigin),
            (headers(&[("origin", "null"), ("sec-fetch-site", "cross-site")]), Refused::CrossSite),
            (headers(&[("origin", "null"), ("referer", "https://app.example.com/")]), Refused::CrossOrigin),
            (headers(&[("origin", "https://app.example.com.evil.example")]), Refused::CrossOrigin),
            (headers(&[("origin", "http://app.example.com")]), Refused::CrossOrigin),
            // A matching Referer does not excuse a foreign Origin.
            (
                headers(&[("origin", "https://evil.example"), ("referer", "https://app.example.com/")]),
                Refused::CrossOrigin,
            ),
            (headers(&[("sec-fetch-site", "cross-site")]), Refused::CrossSite),
            (headers(&[("sec-fetch-site", "same-site")]), Refused::CrossSite),
            (headers(&[("referer", "https://evil.example/")]), Refused::NoOrigin),
            (headers(&[]), Refused::NoOrigin),
        ] {
            assert_eq!(check(&h, &o), Err(why), "{h:?}");
        }
        assert_eq!(check(&headers(&[("origin", "null")]), ""), Err(Refused::CrossOrigin));
    }
}
