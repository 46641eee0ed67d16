//! Rolling portcullis out: security headers on what the browser gets back, and dry-run routes, through the
//! shipped Envoy with a real login at the real IdP.

use crate::e2e::{browser, follow_login, with_route, Stack};

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[tokio::test]
async fn allowed_answers_carry_the_default_security_headers_unless_the_route_opts_out() {
    let s = Stack::start_with("", |y| with_route(y, "/embed", &[("portcullis.security_headers", "off")])).await;
    let (b, _) = browser();
    follow_login(&b, format!("{}/oauth2/login?rd=/home", s.public), "alice").await;

    let r = b.get(s.envoy.url("/api")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "strict-transport-security").as_deref(), Some("max-age=31536000; includeSubDomains"));
    assert_eq!(header(&r, "x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(header(&r, "x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(header(&r, "referrer-policy").as_deref(), Some("no-referrer"));
    assert_eq!(header(&r, "content-security-policy"), None, "no CSP unless the operator sets one");

    let r = b.get(s.envoy.url("/embed/widget")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for h in ["strict-transport-security", "x-content-type-options", "x-frame-options", "referrer-policy"] {
        assert_eq!(header(&r, h), None, "{h} on a route with portcullis.security_headers = off");
    }
}

#[tokio::test]
async fn an_operator_adds_a_csp_changes_one_default_and_removes_another() {
    let cfg = r#"[response_headers]
"Content-Security-Policy" = "default-src 'self'"
"X-Frame-Options" = ""
"Strict-Transport-Security" = "max-age=63072000; includeSubDomains; preload"
"#;
    let s = Stack::start_with(cfg, |y| y.to_string()).await;
    let (b, _) = browser();
    follow_login(&b, format!("{}/oauth2/login?rd=/home", s.public), "alice").await;
    let r = b.get(s.envoy.url("/api")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-security-policy").as_deref(), Some("default-src 'self'"));
    assert_eq!(header(&r, "x-frame-options"), None, "an empty value removes the default");
    assert_eq!(
        header(&r, "strict-transport-security").as_deref(),
        Some("max-age=63072000; includeSubDomains; preload")
    );
    assert_eq!(header(&r, "x-content-type-options").as_deref(), Some("nosniff"), "the others stay");
    assert_eq!(r.headers().get_all("strict-transport-security").iter().count(), 1);
}
