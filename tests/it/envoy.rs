//! End to end through a real Envoy running the shipped `envoy/envoy.yaml`: client -> Envoy (header
//! mutation, ext_authz) -> portcullis (in-process, real redis-server, static validator) -> echo upstream.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::json;

use crate::harness::app::{config, StaticValidator, TestApp};
use crate::harness::envoy::{self, Envoy};
use crate::harness::redis::RedisServer;
use crate::harness::upstream::{Echo, Upstream};

/// Identity headers portcullis owns: a client may never set them.
const IDENTITY: [&str; 6] =
    ["x-auth-user-id", "x-auth-provider", "x-auth-email", "x-auth-name", "x-auth-groups", "x-auth-jwt"];

/// Where Envoy's `/oauth2/` route goes.
enum OAuth2Route {
    /// portcullis's HTTP listener, as shipped.
    Portcullis,
    /// The echo upstream, to see exactly what that route forwards.
    Echo,
}

/// One full stack. Fields drop in order: Envoy first, Redis last.
struct Stack {
    envoy: Envoy,
    upstream: Upstream,
    app: Option<TestApp>,
    validator: Arc<StaticValidator>,
    redis: RedisServer,
    http: reqwest::Client,
}

impl Stack {
    async fn start(oauth2: OAuth2Route) -> Self {
        let redis = RedisServer::start();
        let validator = StaticValidator::new();
        let app = TestApp::with_validator(config(&redis.url(), ""), validator.clone()).await;
        let upstream = Upstream::start().await;
        let oauth2_port = match oauth2 {
            OAuth2Route::Portcullis => app.server.http_addr.port(),
            OAuth2Route::Echo => upstream.addr.port(),
        };
        let envoy = Envoy::start(&envoy::vars(app.server.grpc_addr.port(), oauth2_port, upstream.addr.port())).await;
        eprintln!("envoy ready after {:?}", envoy.ready_after);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Self { envoy, upstream, app: Some(app), validator, redis, http }
    }

    fn app(&self) -> &TestApp {
        self.app.as_ref().expect("portcullis was shut down")
    }

    /// A session for `user`: the `cookie` header a browser would send with it and two other cookies.
    async fn login(&self, user: &str, claims: serde_json::Value) -> String {
        let only = self.login_only(user, claims).await;
        format!("theme=dark; {only}; lang=en")
    }

    /// A session for `user`: a `cookie` header with the session cookie alone.
    async fn login_only(&self, user: &str, claims: serde_json::Value) -> String {
        let (value, _) = self.app().login(user, claims).await;
        format!("{}={value}", self.app().cookie_name())
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(self.envoy.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap_or_else(|e| panic!("GET {path} through Envoy: {e}"))
    }

    /// GET that must reach the upstream: its echo.
    async fn echo(&self, path: &str, headers: &[(&str, &str)]) -> Echo {
        let r = self.get(path, headers).await;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {path} did not reach the echo upstream ({e}): {text}"))
    }

    async fn shutdown(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

/// Every identity header a client tries to smuggle, mixing cases.
fn spoofed() -> Vec<(&'static str, &'static str)> {
    vec![
        ("X-Auth-User-Id", "mallory"),
        ("x-auth-provider", "evil"),
        ("X-AUTH-EMAIL", "mallory@evil.example"),
        ("x-auth-name", "Mallory"),
        ("x-auth-groups", "admins"),
        ("x-auth-jwt", "eyJhbGciOiJub25lIn0.e30."),
    ]
}

fn with(extra: &[(&'static str, &'static str)], more: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    extra.iter().chain(more).map(|(k, v)| (*k, v.to_string())).collect()
}

fn refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn logged_in_request_reaches_upstream_with_identity_and_without_the_session_cookie() {
    let s = Stack::start(OAuth2Route::Portcullis).await;
    let cookie =
        s.login("alice", json!({"email": "alice@example.com", "name": "Alice", "groups": ["dev", "ops"]})).await;
    let headers =
        with(&spoofed(), &[("cookie", &cookie), ("accept", "application/json"), ("x-request-id", "req-e2e-1")]);

    let echo = s.echo("/api/me?x=1", &refs(&headers)).await;
    assert_eq!(echo.path, "/api/me?x=1");
    assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
    assert_eq!(echo.header("x-auth-provider"), Some("corp"));
    assert_eq!(echo.header("x-auth-email"), Some("alice@example.com"));
    assert_eq!(echo.header("x-auth-name"), Some("Alice"));
    assert_eq!(echo.header("x-auth-groups"), Some("dev,ops"));
    assert_eq!(echo.header("x-auth-jwt"), None, "a client-sent JWT header must not pass");
    assert_eq!(echo.header("cookie"), Some("theme=dark; lang=en"), "session cookie removed, others kept");
    assert_eq!(echo.header("x-request-id"), Some("req-e2e-1"), "the client's request id is propagated");
    assert_eq!(s.validator.calls(), 1);

    // Only the session cookie: no cookie header at all upstream; a request id is generated and echoed.
    let only = s.login_only("alice", json!({})).await;
    let r = s.get("/api/me", &[("cookie", &only)]).await;
    let generated = header(r.headers(), "x-request-id").map(str::to_string).expect("x-request-id in the response");
    let echo: Echo = r.json().await.expect("echo");
    assert_eq!(echo.header("cookie"), None);
    assert_eq!(echo.header("x-auth-user-id"), Some("alice"));
    assert_eq!(echo.header("x-request-id"), Some(generated.as_str()));
    assert_eq!(s.upstream.hits(), 2);
}

#[tokio::test]
async fn without_a_session_api_calls_get_401_and_browser_navigations_get_302_to_login() {
    let s = Stack::start(OAuth2Route::Portcullis).await;

    let r = s.get("/api/data", &[("accept", "application/json")]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(r.headers(), "content-type"), Some("application/json"));
    assert_eq!(r.json::<serde_json::Value>().await.expect("json"), json!({"error": "unauthenticated"}));

    let nav = [("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"), ("sec-fetch-mode", "navigate")];
    let r = s.get("/reports/q3?year=2026", &nav).await;
    assert_eq!(r.status(), 302);
    let location = header(r.headers(), "location").expect("location");
    assert_eq!(location, "/oauth2/login?rd=%2Freports%2Fq3%3Fyear%3D2026");

    // XHR and fetch never get a redirect; neither does a stale cookie's navigation escape the check.
    let r = s.get("/reports", &[("accept", "text/html"), ("x-requested-with", "XMLHttpRequest")]).await;
    assert_eq!(r.status(), 401);
    let r = s.get("/reports", &[("accept", "text/html"), ("sec-fetch-mode", "cors")]).await;
    assert_eq!(r.status(), 401);
    let r = s.get("/reports", &[("accept", "text/html"), ("cookie", "GATEWAY_SESSION=not-a-session")]).await;
    assert_eq!(r.status(), 302);

    // The login route itself is reachable without a session: Envoy hands it to portcullis's HTTP listener,
    // which answers exactly as it does when asked directly.
    let path = "/oauth2/login?provider=corp&rd=%2F";
    let via_envoy = s.get(path, &[("accept", "text/html")]).await;
    let direct = s.http.get(format!("http://{}{path}", s.app().server.http_addr)).send().await.expect("direct");
    assert_eq!(via_envoy.status(), direct.status(), "/oauth2/ must reach portcullis, not ext_authz");
    assert_eq!(header(via_envoy.headers(), "location"), header(direct.headers(), "location"));
    assert_eq!(s.upstream.hits(), 0, "a denied request reached the upstream");

    // What the alert rules and the dashboard read (k8s/monitoring) is on portcullis's /metrics.
    let metrics = s.http.get(format!("http://{}/metrics", s.app().server.http_addr)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("metrics text");
    assert!(
        metrics.contains(r#"portcullis_check_total{decision="deny",reason="no_cookie",dry_run="false"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_check_duration_seconds_bucket{le="), "{metrics}");
}

#[tokio::test]
async fn logout_through_envoy_ends_the_session() {
    let s = Stack::start(OAuth2Route::Portcullis).await;
    let cookie = s.login("frank", json!({})).await;
    assert_eq!(s.echo("/api/me", &[("cookie", &cookie)]).await.header("x-auth-user-id"), Some("frank"));

    // A GET only shows the sign-out page: nothing changes.
    let r = s.get("/oauth2/logout", &[("cookie", &cookie), ("accept", "text/html")]).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("method=\"post\""));
    assert_eq!(s.echo("/api/me", &[("cookie", &cookie)]).await.header("x-auth-user-id"), Some("frank"));

    // Envoy routes the same-origin POST to portcullis, which ends the session.
    let origin = portcullis::login::public_origin(&s.app().cfg.server.public_url);
    let r = s
        .http
        .post(s.envoy.url("/oauth2/logout"))
        .header("cookie", &cookie)
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(header(r.headers(), "location"), Some("/"));
    let cleared = header(r.headers(), "set-cookie").expect("the session cookie is cleared");
    assert!(cleared.starts_with(&format!("{}=", s.app().cookie_name())), "{cleared}");

    let r = s.get("/api/me", &[("cookie", &cookie), ("accept", "application/json")]).await;
    assert_eq!(r.status(), 401, "the session must be gone after logout");
    assert_eq!(s.upstream.hits(), 2);
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream_on_any_route() {
    let s = Stack::start(OAuth2Route::Echo).await;
    let plain = s.login("dana", json!({"groups": ["admins"]})).await;
    let spoof = spoofed();

    // Routes without ext_authz: nothing an attacker sends as identity arrives, with or without a session.
    for path in ["/oauth2/login?rd=%2F", "/oauth2/callback?code=c&state=s", "/oauth2/logout"] {
        for cookie in ["", plain.as_str()] {
            let headers = with(&spoof, &[("cookie", cookie)]);
            let echo = s.echo(path, &refs(&headers)).await;
            assert_eq!(echo.path, path);
            for h in IDENTITY {
                assert_eq!(echo.header(h), None, "{h} reached the upstream on {path}");
            }
        }
    }
    let calls = s.validator.calls();
    assert_eq!(calls, 0, "the /oauth2/ route must not call ext_authz");

    // Routes with ext_authz: only portcullis's values, and none for claims the user does not have.
    for path in ["/", "/api/x", "/admin", "/admin/users"] {
        let headers = with(&spoof, &[("cookie", &plain)]);
        let echo = s.echo(path, &refs(&headers)).await;
        assert_eq!(echo.header("x-auth-user-id"), Some("dana"), "{path}");
        assert_eq!(echo.header("x-auth-provider"), Some("corp"), "{path}");
        assert_eq!(echo.header("x-auth-groups"), Some("admins"), "{path}");
        for h in ["x-auth-email", "x-auth-name", "x-auth-jwt"] {
            assert_eq!(echo.header(h), None, "{h} reached the upstream on {path}");
        }
    }
    // And a denied request carries nothing anywhere.
    let hits = s.upstream.hits();
    let r = s.get("/api/x", &refs(&with(&spoof, &[("accept", "application/json")]))).await;
    assert_eq!(r.status(), 401);
    assert_eq!(s.upstream.hits(), hits);
}

/// `x_auth_groups` is `X-Auth-Groups` to WSGI/CGI-style apps: the shipped Envoy refuses such names (400)
/// before any filter runs, so nothing reaches portcullis or the upstream.
#[tokio::test]
async fn header_names_with_underscores_are_refused_by_the_shipped_envoy() {
    let s = Stack::start(OAuth2Route::Echo).await;
    let plain = s.login("erin", json!({"groups": ["dev"]})).await;
    let hits = s.upstream.hits();
    let calls = s.validator.calls();
    for (name, value) in
        [("x_auth_groups", "admins"), ("x_auth_user_id", "alice"), ("X_Auth_Email", "a@x"), ("x_other", "1")]
    {
        for path in ["/", "/admin", "/oauth2/login?rd=%2F"] {
            let r = s.get(path, &[("cookie", plain.as_str()), (name, value)]).await;
            assert_eq!(r.status(), 400, "{name} on {path}");
        }
    }
    assert_eq!(s.upstream.hits(), hits, "a refused request reached the upstream");
    assert_eq!(s.validator.calls(), calls, "a refused request reached portcullis");
}

#[tokio::test]
async fn admin_route_requires_the_admins_group() {
    let s = Stack::start(OAuth2Route::Portcullis).await;
    let bob = s.login("bob", json!({"groups": ["dev"]})).await;
    let carol = s.login("carol", json!({"groups": ["dev", "admins"]})).await;

    for path in ["/admin", "/admin/users?page=2"] {
        let r = s.get(path, &[("cookie", &bob), ("accept", "application/json")]).await;
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(r.json::<serde_json::Value>().await.expect("json"), json!({"error": "forbidden"}));
    }
    assert_eq!(s.upstream.hits(), 0);
    // The group requirement is per route: bob may use the rest, and a path that merely starts with
    // "/admin" is not the admin route.
    assert_eq!(s.echo("/api/me", &[("cookie", &bob)]).await.header("x-auth-user-id"), Some("bob"));
    assert_eq!(s.echo("/administrivia", &[("cookie", &bob)]).await.header("x-auth-user-id"), Some("bob"));

    let echo = s.echo("/admin/users", &[("cookie", &carol)]).await;
    assert_eq!(echo.header("x-auth-user-id"), Some("carol"));
    assert_eq!(echo.header("x-auth-groups"), Some("dev,admins"));
}

#[tokio::test]
async fn fails_closed_with_503_when_portcullis_or_redis_is_down() {
    let mut s = Stack::start(OAuth2Route::Portcullis).await;
    let cookie = s.login("erin", json!({})).await;
    assert_eq!(s.echo("/api/me", &[("cookie", &cookie)]).await.header("x-auth-user-id"), Some("erin"));
    let hits = s.upstream.hits();

    // Redis unreachable: portcullis itself answers 503 with Retry-After, and Envoy passes it on.
    s.redis.pause();
    let r = s.get("/api/me", &[("cookie", &cookie), ("accept", "application/json")]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(r.headers(), "retry-after"), Some("5"));
    assert_eq!(r.json::<serde_json::Value>().await.expect("json"), json!({"error": "unavailable"}));
    s.redis.resume();

    // portcullis gone: Envoy's status_on_error, never the upstream (failure_mode_allow: false).
    s.shutdown().await;
    for headers in [vec![("cookie", cookie.as_str())], vec![("accept", "text/html")], vec![]] {
        let r = s.get("/api/me", &headers).await;
        assert_eq!(r.status(), 503, "{headers:?}");
    }
    let r = s.get("/admin", &[("cookie", &cookie)]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(s.upstream.hits(), hits, "a request reached the upstream while portcullis was down");
}

#[tokio::test]
async fn ops_listener_exposes_only_readiness_and_prometheus_stats() {
    let s = Stack::start(OAuth2Route::Portcullis).await;
    let ops = |path: &str| format!("http://127.0.0.1:{}{path}", s.envoy.ops_port);

    let r = s.http.get(ops("/ready")).send().await.expect("ops /ready");
    assert_eq!(r.status(), 200);
    let r = s.http.get(ops("/stats/prometheus")).send().await.expect("ops /stats/prometheus");
    assert_eq!(r.status(), 200);
    let stats = r.text().await.expect("stats");
    assert!(stats.contains("envoy_http_ext_authz_"), "ext_authz counters (used by the alert rules) missing");

    // portcullis's own metrics, through Envoy: its HTTP listener stays on the pod's loopback (k8s sidecar).
    let r = s.http.get(ops("/portcullis/metrics")).send().await.expect("ops /portcullis/metrics");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("metrics").contains("portcullis_"), "portcullis metrics missing");

    // The rest of the admin interface (config dump with secrets, shutdown, log levels) stays on loopback.
    for path in ["/config_dump", "/clusters", "/stats", "/logging", "/"] {
        let r = s.http.get(ops(path)).send().await.expect("ops GET");
        assert_eq!(r.status(), 404, "GET {path} on the ops listener");
    }
    for path in ["/quitquitquit", "/healthcheck/fail", "/drain_listeners"] {
        let r = s.http.post(ops(path)).send().await.expect("ops POST");
        assert_eq!(r.status(), 404, "POST {path} on the ops listener");
    }
    let r = s.http.get(ops("/ready")).send().await.expect("ops /ready");
    assert_eq!(r.status(), 200, "Envoy must still be up");
}

#[tokio::test]
async fn http2_clients_with_split_cookie_headers_are_recognised() {
    let s = Stack::start(OAuth2Route::Portcullis).await;
    let session = s.login_only("gina", json!({})).await;
    // HTTP/2 lets a browser send each cookie as its own `cookie` field (RFC 9113 8.2.3).
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("h2 client");
    let r = h2
        .get(s.envoy.url("/api/me"))
        .header("cookie", "theme=dark")
        .header("cookie", session.as_str())
        .header("cookie", "lang=en")
        .send()
        .await
        .expect("h2 request through Envoy");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.expect("echo");
    assert_eq!(echo.header("x-auth-user-id"), Some("gina"));
    let cookies = echo.headers.get("cookie").cloned().unwrap_or_default().join("; ");
    assert!(!cookies.contains(s.app().cookie_name()), "session cookie reached the upstream: {cookies}");
    assert!(cookies.contains("theme=dark") && cookies.contains("lang=en"), "other cookies lost: {cookies}");
}

/// Sends `path` exactly as written (an HTTP client would normalise it first); returns the status code.
async fn raw_get(envoy: &Envoy, path: &str, cookie: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", envoy.port)).await.expect("connect to Envoy");
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: app.example.com\r\naccept: application/json\r\ncookie: {cookie}\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut resp))
        .await
        .expect("response in time")
        .expect("read");
    let resp = String::from_utf8_lossy(&resp);
    resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line for {path}: {resp}"))
}

#[tokio::test]
async fn other_spellings_of_the_admin_path_do_not_skip_the_group_check() {
    let s = Stack::start(OAuth2Route::Portcullis).await;
    let bob = s.login("bob", json!({"groups": ["dev"]})).await;
    for path in [
        "/admin",
        "/api/../admin",
        "/./admin/users",
        "//admin",
        "/api/..//admin",
        "/ADMIN",
        "/Admin/users",
        "/%61dmin",
        "/admin%2Fusers",
        "/x/..%2Fadmin",
    ] {
        let status = raw_get(&s.envoy, path, &bob).await;
        // 307: an escaped slash is redirected to its unescaped spelling, which then gets the 403.
        assert!(status == 403 || status == 307, "{path}: {status}");
    }
    assert_eq!(s.upstream.hits(), 0, "a spelling of /admin reached the upstream without the group check");
    assert_eq!(raw_get(&s.envoy, "/api/../me", &bob).await, 200, "normalised paths still work");
}

#[test]
fn the_harness_renders_envoy_yaml_as_scripts_render_envoy_sh_does() {
    use crate::harness::envoy::{render, SHIPPED_CONFIG};
    let vars = [("ENVOY_LISTEN_PORT", "18080"), ("PORTCULLIS_GRPC_HOST", "portcullis"), ("UPSTREAM_PORT", "3000")];
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/render-envoy.sh");
    let path = std::env::var("PATH").unwrap_or_default();
    let out = std::process::Command::new(script)
        .env_clear()
        .env("PATH", path)
        .envs(vars)
        .output()
        .expect("run scripts/render-envoy.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let template = std::fs::read_to_string(SHIPPED_CONFIG).expect("envoy.yaml");
    let ours = render(&template, &vars.iter().map(|(k, v)| (*k, v.to_string())).collect());
    assert_eq!(ours, String::from_utf8_lossy(&out.stdout));
    assert!(
        ours.contains("port_value: 3000 # ${UPSTREAM_PORT}")
            && ours.contains("address: portcullis # ${PORTCULLIS_GRPC_HOST}")
    );
    // Unrendered, the file is its own default rendering.
    assert_eq!(render(&template, &Default::default()), template);
}
