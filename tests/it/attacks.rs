//! The attack suite (issue 10, Check side): each attack through a real Envoy running the shipped
//! `envoy/envoy.yaml` (or a copy with one option flipped), portcullis in-process over a real redis-server, and
//! an echo upstream that shows what an app would receive. Each refusal is counted by reason.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::harness::app::{config, StaticValidator, TestApp};
use crate::harness::envoy::{self, Envoy};
use crate::harness::redis::RedisServer;
use crate::harness::upstream::{Echo, Upstream};

/// One full stack. Fields drop in order: Envoy first, Redis last.
struct Stack {
    envoy: Envoy,
    upstream: Upstream,
    app: TestApp,
    _validator: Arc<StaticValidator>,
    redis: RedisServer,
    http: reqwest::Client,
}

impl Stack {
    /// The shipped Envoy config after `edit`.
    async fn start(edit: impl Fn(&str) -> String) -> Self {
        let redis = RedisServer::start();
        let validator = StaticValidator::new();
        let app = TestApp::with_validator(config(&redis.url(), ""), validator.clone()).await;
        let upstream = Upstream::start().await;
        let vars = envoy::vars(app.server.grpc_addr.port(), app.server.http_addr.port(), upstream.addr.port());
        let envoy = Envoy::shipped(&vars, edit).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Self { envoy, upstream, app, _validator: validator, redis, http }
    }

    async fn shipped() -> Self {
        Self::start(str::to_string).await
    }

    async fn cookie(&self, user: &str, claims: serde_json::Value) -> String {
        let (value, _) = self.app.login(user, claims).await;
        format!("{}={value}", self.app.cookie_name())
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(self.envoy.url(path)).header("accept", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap_or_else(|e| panic!("GET {path} through Envoy: {e}"))
    }

    async fn echo(&self, path: &str, headers: &[(&str, &str)]) -> Echo {
        let r = self.get(path, headers).await;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path} did not reach the upstream ({e}): {text}"))
    }

    /// The deny counter for `reason`, read from portcullis's /metrics (0 when absent).
    async fn denied(&self, reason: &str) -> u64 {
        let url = format!("http://{}/metrics", self.app.server.http_addr);
        let text = self.http.get(url).send().await.expect("metrics").text().await.expect("metrics text");
        let series = format!("portcullis_check_total{{decision=\"deny\",reason=\"{reason}\",dry_run=\"false\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }
}

/// Identity headers spelled with underscores, which WSGI/CGI-style apps read as the dash names.
const UNDERSCORED: [(&str, &str); 4] =
    [("x_auth_groups", "admins"), ("x_auth_user_id", "alice"), ("x_auth_jwt", "forged"), ("X_Auth_Email", "a@x")];

#[tokio::test]
async fn underscore_identity_headers_are_refused_by_the_shipped_envoy() {
    let s = Stack::shipped().await;
    let bob = s.cookie("bob", json!({"groups": ["dev"]})).await;
    for (name, value) in UNDERSCORED {
        let r = s.get("/api/x", &[("cookie", &bob), (name, value)]).await;
        assert_eq!(r.status(), 400, "{name} must be refused");
    }
    assert_eq!(s.upstream.hits(), 0, "a smuggled header reached the upstream");
}

#[tokio::test]
async fn underscore_identity_headers_are_refused_by_portcullis_when_envoy_allows_them() {
    let allow = |t: &str| {
        let flipped =
            t.replace("headers_with_underscores_action: REJECT_REQUEST", "headers_with_underscores_action: ALLOW");
        assert_ne!(flipped, t, "the shipped envoy.yaml must set headers_with_underscores_action: REJECT_REQUEST");
        flipped
    };
    let s = Stack::start(allow).await;
    let bob = s.cookie("bob", json!({"groups": ["dev"]})).await;
    let before = s.denied("identity_header").await;
    for (name, value) in UNDERSCORED.into_iter().chain([("X_AUTH_something", "x")]) {
        let r = s.get("/api/x", &[("cookie", &bob), (name, value)]).await;
        assert_eq!(r.status(), 400, "{name} must be refused by portcullis");
        assert_eq!(r.json::<serde_json::Value>().await.expect("json"), json!({"error": "bad_request"}));
    }
    assert_eq!(s.upstream.hits(), 0, "a smuggled header reached the upstream");
    assert!(s.denied("identity_header").await >= before + 5, "each refusal counted");
    // An ordinary underscore header is not an identity header.
    assert_eq!(s.echo("/api/x", &[("cookie", &bob), ("x_trace_id", "1")]).await.header("x-auth-user-id"), Some("bob"));
}

#[tokio::test]
async fn two_session_cookies_of_one_name_are_never_allowed() {
    let s = Stack::shipped().await;
    let victim = s.cookie("victim", json!({})).await;
    let attacker = s.cookie("attacker", json!({})).await;
    let before = s.denied("duplicate_cookie").await;
    for pair in
        [format!("{attacker}; {victim}"), format!("{victim}; theme=dark; {attacker}"), format!("{victim}; {victim}")]
    {
        let r = s.get("/api/x", &[("cookie", &pair)]).await;
        assert_eq!(r.status(), 401, "{pair}");
    }
    assert_eq!(s.upstream.hits(), 0);
    assert!(s.denied("duplicate_cookie").await >= before + 3, "each refusal counted");
    // Each alone still works: nothing was ended.
    assert_eq!(s.echo("/api/x", &[("cookie", &victim)]).await.header("x-auth-user-id"), Some("victim"));
}

#[tokio::test]
async fn a_group_with_a_comma_cannot_forge_another_group() {
    let s = Stack::shipped().await;
    let eve = s.cookie("eve", json!({"groups": ["dev,admins", "100%"]})).await;
    let echo = s.echo("/api/x", &[("cookie", &eve)]).await;
    assert_eq!(echo.header("x-auth-groups"), Some("dev%2Cadmins,100%25"));
    let r = s.get("/admin", &[("cookie", &eve)]).await;
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn a_requirement_made_only_of_separators_denies() {
    let sep = |t: &str| {
        let edited = t.replace("portcullis.require_any: admins", r#"portcullis.require_any: " , ,""#);
        assert_ne!(edited, t, "the shipped admin route names portcullis.require_any: admins");
        edited
    };
    let s = Stack::start(sep).await;
    let bob = s.cookie("bob", json!({"groups": ["dev"]})).await;
    let before = s.denied("misconfigured_route").await;
    let r = s.get("/admin", &[("cookie", &bob)]).await;
    assert_eq!(r.status(), 403);
    assert_eq!(s.upstream.hits(), 0);
    assert!(s.denied("misconfigured_route").await > before, "the refusal is counted");
}

#[tokio::test]
async fn the_admin_route_cannot_be_bypassed_by_spelling() {
    let s = Stack::shipped().await;
    let bob = s.cookie("bob", json!({"groups": ["dev"]})).await;
    let carol = s.cookie("carol", json!({"groups": ["admins"]})).await;
    let before = s.denied("forbidden").await;
    let paths = ["/admin;x=1", "/%61dmin", "/ADMIN", "//admin", "/Admin/users", "/%61%64%6D%69%6E/x", "/admin/;x"];
    for path in paths {
        let r = s.get(path, &[("cookie", &bob)]).await;
        // A redirect to the normalized path (Envoy's choice for some spellings) is fine too: it is not a pass.
        assert!(r.status() == 403 || r.status().is_redirection() || r.status() == 400, "{path}: {}", r.status());
    }
    assert_eq!(s.upstream.hits(), 0, "a spelling of /admin reached the upstream without the admins group");
    assert!(s.denied("forbidden").await >= before + 4);
    // The admins still get in, and a path that only starts with "admin" is another route.
    assert_eq!(s.echo("/admin;x=1", &[("cookie", &carol)]).await.header("x-auth-user-id"), Some("carol"));
    assert_eq!(s.echo("/administrivia", &[("cookie", &bob)]).await.header("x-auth-user-id"), Some("bob"));
}

/// Someone who can write to Redis edits what a session states in the clear: who it belongs to, which
/// provider vouches for it, its IdP session, its clock. Each edit breaks the session's MAC: 401, the session
/// deleted, counted as `tampered`, and the upstream never sees the request.
#[tokio::test]
async fn editing_a_session_in_redis_is_tampering() {
    use portcullis::session::store::session_key;
    let s = Stack::shipped().await;
    let now = portcullis::now();
    let edits: [(&str, String); 6] = [
        ("createdAt", (now + 3600).to_string()),
        ("expiresAt", (now + 365 * 86400).to_string()),
        ("userId", "admin".into()),
        ("provider", "other".into()),
        ("sid", "someone-elses-idp-session".into()),
        ("mac", String::new()), // filled in below: the stored MAC with its tag changed
    ];
    let before = s.denied("tampered").await;
    for (field, value) in &edits {
        let (cookie, session) = s.app.login("alice", json!({"groups": ["admins"]})).await;
        let cookie = format!("{}={cookie}", s.app.cookie_name());
        assert_eq!(s.echo("/api/x", &[("cookie", &cookie)]).await.header("x-auth-user-id"), Some("alice"));
        let key = session_key(&session.id);
        let mut value = value.clone();
        if *field == "mac" {
            let stored: String = redis::cmd("HGET").arg(&key).arg("mac").query(&mut s.redis.conn()).expect("HGET");
            let (head, tag) = stored.rsplit_once('.').expect("v1.<kid>.<tag>");
            value = format!("{head}.{}", tag.chars().rev().collect::<String>());
        }
        redis::cmd("HSET").arg(&key).arg(*field).arg(&value).query::<()>(&mut s.redis.conn()).expect("HSET");
        let hits = s.upstream.hits();
        let r = s.get("/api/x", &[("cookie", &cookie)]).await;
        assert_eq!(r.status(), 401, "edited {field}");
        assert_eq!(s.upstream.hits(), hits, "edited {field}: reached the upstream");
        assert!(!s.redis.exists(&key), "edited {field}: the session must be deleted");
    }
    // A session whose MAC was removed (or that was written before MACs) is refused the same way.
    let (cookie, session) = s.app.login("alice", json!({})).await;
    let key = session_key(&session.id);
    redis::cmd("HDEL").arg(&key).arg("mac").query::<()>(&mut s.redis.conn()).expect("HDEL");
    let r = s.get("/api/x", &[("cookie", &format!("{}={cookie}", s.app.cookie_name()))]).await;
    assert_eq!(r.status(), 401);
    assert!(!s.redis.exists(&key));
    assert!(s.denied("tampered").await > before + edits.len() as u64, "each refusal counted");
}
