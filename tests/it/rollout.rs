//! Rolling portcullis out: security headers on what the browser gets back, and dry-run routes, through the
//! shipped Envoy with a real login at the real IdP.

use crate::e2e::{browser, follow_login, with_route, Stack};
use crate::harness::upstream::Echo;

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

fn with_dry_run_routes(y: &str) -> String {
    let y = with_route(y, "/preview", &[("portcullis.dry_run", "true")]);
    with_route(&y, "/strict", &[("portcullis.dry_run", "false")])
}

/// The `portcullis_check_total` series with exactly these labels (0 when absent).
async fn checks(s: &Stack, decision: &str, reason: &str, dry_run: &str) -> u64 {
    let url = format!("http://{}/metrics", s.app.server.http_addr);
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let series =
        format!("portcullis_check_total{{decision=\"{decision}\",reason=\"{reason}\",dry_run=\"{dry_run}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn a_dry_run_route_lets_a_would_be_deny_through_without_identity_and_counts_it() {
    let s = Stack::start_with("", with_dry_run_routes).await;
    let (anon, _) = browser();
    let before = checks(&s, "deny", "no_cookie", "true").await;
    // The metrics are process-wide: this test reads its own increase.
    let unknown_before = checks(&s, "deny", "unknown_session", "true").await;

    // No session on the dry-run route: through, with no identity (a client-sent one is stripped too).
    let r = anon.get(s.envoy.url("/preview/page")).header("accept", "text/html").header("x-auth-user-id", "mallory");
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200, "a browser navigation is let through, not redirected");
    let echo: Echo = r.json().await.unwrap();
    for h in ["x-auth-user-id", "x-auth-provider", "x-auth-email", "x-auth-groups", "x-auth-jwt"] {
        assert_eq!(echo.header(h), None, "{h} without a session");
    }
    assert!(checks(&s, "deny", "no_cookie", "true").await > before, "counted as a dry-run deny");

    // Enforcing routes next to it still deny.
    assert_eq!(anon.get(s.envoy.url("/api")).send().await.unwrap().status(), 401);
    assert_eq!(anon.get(s.envoy.url("/strict/x")).send().await.unwrap().status(), 401);
    let hits = s.upstream.hits();

    // A garbage cookie on the dry-run route: through without identity; the session cookie is not passed on.
    let r = anon.get(s.envoy.url("/preview/x")).header("cookie", "GATEWAY_SESSION=garbage; theme=dark").send();
    let echo: Echo = r.await.unwrap().json().await.unwrap();
    assert_eq!(echo.header("x-auth-user-id"), None);
    assert_eq!(echo.header("cookie"), Some("theme=dark"));
    assert_eq!(s.upstream.hits(), hits + 1);
    // Counted as a dry-run deny (other modules' enforced unknown_session denies share the process's metrics).
    assert!(checks(&s, "deny", "unknown_session", "true").await > unknown_before, "counted as a dry-run deny");

    // With a valid session the dry-run route gets the identity, as an enforcing one would.
    let (b, _) = browser();
    follow_login(&b, format!("{}/oauth2/login?rd=/home", s.public), "alice").await;
    let echo: Echo = b.get(s.envoy.url("/preview/x")).send().await.unwrap().json().await.unwrap();
    assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
    assert!(checks(&s, "allow", "ok", "true").await >= 1);
}

#[tokio::test]
async fn global_dry_run_observes_every_route_but_one_that_enforces() {
    let s = Stack::start_full("", |c| c.server.mode = portcullis::config::Mode::DryRun, with_dry_run_routes).await;
    let (anon, _) = browser();
    let r = anon.get(s.envoy.url("/api")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.header("x-auth-user-id"), None);
    assert_eq!(anon.get(s.envoy.url("/strict/x")).send().await.unwrap().status(), 401, "portcullis.dry_run = false");
    assert!(checks(&s, "deny", "no_cookie", "false").await >= 1);
}

/// Smuggling attempts are refused even in dry run: a pass would hand the upstream `x_auth_groups`. Asked of
/// portcullis directly, because the shipped Envoy already refuses underscore headers itself.
#[tokio::test]
async fn a_dry_run_never_lets_an_identity_header_smuggling_attempt_through() {
    use crate::harness::app::{config, request, StaticValidator, TestApp};
    let redis = crate::harness::redis::RedisServer::start();
    let mut cfg = config(&redis.url(), "");
    cfg.server.mode = portcullis::config::Mode::DryRun;
    let app = TestApp::with_validator(cfg, StaticValidator::new()).await;
    let (value, _) = app.login("bob", serde_json::json!({"groups": ["dev"]})).await;
    let cookie = format!("{}={value}", app.cookie_name());

    let r = app.check(request("GET", "/x", &[("cookie", &cookie), ("x_auth_groups", "admins")])).await;
    assert_eq!(r.status(), 400, "{r:?}");
    let r = app.check(request("GET", "/x", &[("cookie", "other=1")])).await;
    assert_eq!(r.status(), 200, "no session is let through in dry run");
    for h in ["x-auth-user-id", "x-auth-groups", "x-auth-jwt"] {
        assert!(r.removed().contains(&h.to_string()), "{h} removed: {r:?}");
    }
    let r = app.check(request("GET", "/x", &[("cookie", &cookie)])).await;
    assert_eq!(r.header("x-auth-user-id").as_deref(), Some("bob"));
}
