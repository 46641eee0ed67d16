//! Login, callback, logout and back-channel logout against the real OpenID provider, driven by an HTTP
//! client with a cookie jar as a browser would.

use std::time::Duration;

use portcullis::session::store::session_key;
use reqwest::header::{LOCATION, SET_COOKIE};

use crate::harness::app::{config, request, TestApp};
use crate::harness::idp::{provider_toml, IdpM2m, IdpOptions, IdpServer};
use crate::harness::redis::RedisServer;
use crate::harness::{eventually, free_port};

struct Env {
    redis: RedisServer,
    idp: IdpServer,
    app: TestApp,
    /// Where the browser reaches portcullis's HTTP listener (the public URL in these tests).
    base: String,
    browser: reqwest::Client,
}

/// Redis, the IdP (with our callback registered, and back-channel logout when asked), portcullis with its
/// login routes on a known port. `extra` is TOML after `[session]`; `tweak` edits the parsed config.
async fn setup(extra: &str, backchannel: bool, tweak: impl FnOnce(&mut portcullis::config::Config)) -> Env {
    let redis = RedisServer::start();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let idp = IdpServer::start_with(IdpOptions {
        backchannel_logout_uri: backchannel.then(|| format!("{base}/oauth2/backchannel-logout")),
        ..IdpOptions::redirecting_to(&base)
    })
    .await;
    let toml =
        format!("{extra}\n{}", provider_toml("corp", "oidc", &idp, "introspection_auth = \"client_secret_basic\""));
    let mut cfg = config(&redis.url(), &toml);
    cfg.server.http_addr = format!("127.0.0.1:{port}");
    cfg.server.public_url = base.clone();
    cfg.redis.timeout = Duration::from_secs(5);
    tweak(&mut cfg);
    let app = TestApp::configured(cfg, IdpM2m::new(&idp)).await;
    let browser =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).cookie_store(true).build().unwrap();
    Env { redis, idp, app, base, browser }
}

fn location(r: &reqwest::Response) -> String {
    r.headers().get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

impl Env {
    /// /oauth2/login → the IdP's form → back to our callback; returns the callback URL (not yet visited).
    async fn to_callback(&self, user: &str, rd: &str) -> String {
        self.to_callback_in(&self.browser, user, rd).await
    }

    /// As [`to_callback`](Self::to_callback) in another browser (its own IdP session).
    async fn to_callback_in(&self, browser: &reqwest::Client, user: &str, rd: &str) -> String {
        let state_key = |next: &str| {
            let q: Vec<(String, String)> = url::Url::parse(next).unwrap().query_pairs().into_owned().collect();
            let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));
            assert!(param("nonce").is_some());
            format!("pkce:{}", param("state").expect("state"))
        };
        let cb = crate::harness::idp::sign_in(browser, &self.base, &self.idp.issuer(), user, rd, |authorize| {
            assert!(self.redis.exists(&state_key(authorize)), "login state stored");
        })
        .await;
        cb
    }

    /// A full login; returns the session cookie value and the Set-Cookie line.
    async fn login(&self, user: &str) -> (String, String) {
        self.login_in(&self.browser, user).await
    }

    async fn login_in(&self, browser: &reqwest::Client, user: &str) -> (String, String) {
        let cb = self.to_callback_in(browser, user, "/reports?x=1").await;
        let r = browser.get(&cb).send().await.unwrap();
        assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
        assert_eq!(location(&r), "/reports?x=1");
        let set = r.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).expect("session cookie set").to_string();
        let name = &self.app.cfg.session.cookie_name;
        let value = set.strip_prefix(&format!("{name}=")).and_then(|v| v.split(';').next()).unwrap().to_string();
        (value, set)
    }

    async fn check(&self, value: &str) -> u16 {
        let c = format!("{}={value}", self.app.cfg.session.cookie_name);
        self.app.check(request("GET", "/api", &[("cookie", &c), ("accept", "application/json")])).await.status()
    }
}

#[tokio::test]
async fn full_login_then_check_allows_with_the_idp_subject() {
    let env = setup("", false, |_| {}).await;
    let (value, set_cookie) = env.login("alice").await;
    for attr in ["HttpOnly", "Path=/", "SameSite=Lax", "Max-Age="] {
        assert!(set_cookie.contains(attr), "{attr} missing in {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "cookie_secure = false in this test");
    let c = format!("GATEWAY_SESSION={value}");
    let r = env.app.check(request("GET", "/api", &[("cookie", &c)])).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.header("x-auth-user-id").as_deref(), Some("alice"));
    assert_eq!(r.header("x-auth-provider").as_deref(), Some("corp"));
    // Each login is a new session (no fixation).
    let (again, _) = env.login("alice").await;
    assert_ne!(again, value);
    env.app.shutdown().await;
}

#[tokio::test]
async fn callback_replay_wrong_verifier_and_open_redirect_fail() {
    let env = setup("", false, |_| {}).await;
    // Replay: the state is consumed by the first use.
    let cb = env.to_callback("alice", "/").await;
    assert_eq!(env.browser.get(&cb).send().await.unwrap().status(), 302);
    let replay = env.browser.get(&cb).send().await.unwrap();
    assert_eq!(replay.status(), 400);
    assert_eq!(replay.headers().get("cache-control").unwrap(), "no-store");
    assert!(replay.headers().get(SET_COOKIE).is_none());

    // A wrong verifier is refused by the IdP at the code exchange.
    let cb = env.to_callback("alice", "/").await;
    let state = url::Url::parse(&cb).unwrap().query_pairs().find(|(k, _)| k == "state").unwrap().1.to_string();
    let key = format!("pkce:{state}");
    let mut conn = env.redis.conn();
    let stored: String = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&stored).unwrap();
    v["verifier"] = "A".repeat(64).into();
    redis::cmd("SET").arg(&key).arg(v.to_string()).query::<()>(&mut conn).unwrap();
    env.idp.reset_stats().await;
    let r = env.browser.get(&cb).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let sets: Vec<&str> = r.headers().get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
    assert!(sets.iter().all(|c| c.starts_with("portcullis_login_") && c.contains("Max-Age=0")), "{sets:?}");
    assert_eq!(env.sessions(), 1, "only the first login's session");
    assert!(env.idp.count("/token:authorization_code").await >= 1, "{:?}", env.idp.stats().await);

    // Open redirects are refused before the IdP is involved.
    for rd in ["https://evil.example", "//evil.example/x", "https://evil.example@127.0.0.1/"] {
        let r = env.browser.get(format!("{}/oauth2/login", env.base)).query(&[("rd", rd)]).send().await.unwrap();
        assert_eq!(r.status(), 400, "{rd}");
        assert!(location(&r).is_empty());
    }
    // The IdP's own error is a clear page, not a session.
    let r = env.browser.get(format!("{}/oauth2/callback?error=access_denied&state=x", env.base)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("access_denied"));
    env.app.shutdown().await;
}

fn new_browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).cookie_store(true).build().unwrap()
}

impl Env {
    /// Session keys in Redis (`session:*`).
    fn sessions(&self) -> usize {
        let keys: Vec<String> = redis::cmd("KEYS").arg("session:*").query(&mut self.redis.conn()).unwrap();
        keys.len()
    }

    fn metric(&self, line_start: &str) -> u64 {
        let text = portcullis::telemetry::metrics().render();
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

/// Login CSRF / session swap (issue 10, hole 2): a callback URL completes only in the browser that
/// started the login; opened in another browser it is refused with no session, and the rightful browser
/// can still finish.
#[tokio::test]
async fn a_callback_url_opened_in_another_browser_is_refused() {
    let env = setup("", false, |_| {}).await;
    let cb = env.to_callback("mallory", "/").await;
    let victim = new_browser();
    let refused_before = env.metric(r#"portcullis_logins_total{provider="corp",outcome="binding_missing"}"#);
    let r = victim.get(&cb).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.headers().get_all(SET_COOKIE).iter().all(|v| !v.to_str().unwrap().starts_with("GATEWAY_SESSION=")),
        "no session cookie for the other browser"
    );
    assert_eq!(env.sessions(), 0, "no session created");
    // Process-wide counters (other tests refuse bindings too): at least this refusal.
    assert!(env.metric(r#"portcullis_logins_total{provider="corp",outcome="binding_missing"}"#) > refused_before);

    // A forged binding cookie of the right name does not help either.
    let state = url::Url::parse(&cb).unwrap().query_pairs().find(|(k, _)| k == "state").unwrap().1.to_string();
    let name = portcullis::login::binding_cookie_name(&env.app.cfg.session, &state);
    let forged = format!("{name}={}", portcullis::session::cookie::new_value());
    let r = victim.get(&cb).header("cookie", forged).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(env.sessions(), 0);

    // The browser that started the login still completes it, and its binding cookie is cleared.
    let r = env.browser.get(&cb).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    let sets: Vec<String> = r.headers().get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert!(sets.iter().any(|c| c.starts_with("GATEWAY_SESSION=")), "{sets:?}");
    assert!(sets.iter().any(|c| c.starts_with(&format!("{name}=")) && c.contains("Max-Age=0")), "{sets:?}");
    assert_eq!(env.sessions(), 1);
    env.app.shutdown().await;
}

/// Two logins started in parallel tabs of one browser each keep their own binding and both complete.
#[tokio::test]
async fn two_logins_started_in_parallel_in_one_browser_both_complete() {
    let env = setup("", false, |_| {}).await;
    let first = env.to_callback("alice", "/one").await;
    let second = env.to_callback("alice", "/two").await;
    for (cb, rd) in [(&second, "/two"), (&first, "/one")] {
        let r = env.browser.get(cb).send().await.unwrap();
        assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
        assert_eq!(location(&r), rd);
    }
    assert_eq!(env.sessions(), 2);
    env.app.shutdown().await;
}

impl Env {
    fn used_memory(&self) -> i64 {
        let info: String = redis::cmd("INFO").arg("memory").query(&mut self.redis.conn()).unwrap();
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
    }

    /// `n` login starts with `rd` from this test's one client; the statuses seen.
    async fn start_logins(&self, n: usize, rd: &str) -> Vec<u16> {
        let mut out = Vec::new();
        for _ in 0..n {
            let r = new_browser().get(format!("{}/oauth2/login", self.base)).query(&[("rd", rd)]).send().await.unwrap();
            out.push(r.status().as_u16());
        }
        out
    }
}

/// Pending logins fill Redis (issue 10, hole 3): 300 logins with a 40 kB `rd` are all 400 and Redis
/// grows by less than 2 MB (today: 12.5 MB).
#[tokio::test]
async fn logins_with_a_huge_rd_are_refused_and_store_nothing() {
    let env = setup("", false, |_| {}).await;
    let before = env.used_memory();
    let rd = format!("/{}", "a".repeat(40_000));
    let statuses = env.start_logins(300, &rd).await;
    assert!(statuses.iter().all(|s| *s == 400), "{statuses:?}");
    let grown = env.used_memory() - before;
    eprintln!("300 logins with a 40 kB rd: Redis grew by {grown} bytes");
    assert!(grown < 2_000_000, "Redis grew by {grown} bytes");
    let pending: Vec<String> = redis::cmd("KEYS").arg("pkce:*").query(&mut env.redis.conn()).unwrap();
    assert!(pending.is_empty(), "{} pending logins stored", pending.len());
    // An rd at the limit is still fine.
    let ok = env.start_logins(1, &format!("/{}", "a".repeat(2047))).await;
    assert_eq!(ok, vec![302]);
    env.app.shutdown().await;
}

/// One client starting 300 logins gets 429 with Retry-After past `login.max_pending_per_client`; Redis
/// growth stays bounded. The total cap refuses everyone once reached.
#[tokio::test]
async fn pending_logins_are_bounded_per_client_and_in_total() {
    // One pooled connection, opened by a first login, so that connections (about 37 kB each in Redis's
    // client buffers) are not counted as growth.
    let env = setup("", false, |c| c.redis.pool_size = Some(1)).await;
    assert_eq!(env.start_logins(1, "/").await, vec![302]);
    let before = env.used_memory();
    let statuses = env.start_logins(299, "/reports").await;
    let started = statuses.iter().filter(|s| **s == 302).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(started, 29, "the default per-client limit (30): {statuses:?}");
    assert_eq!(limited, 270);
    let grown = env.used_memory() - before;
    eprintln!("300 logins from one client: Redis grew by {grown} bytes");
    let r = env.browser.get(format!("{}/oauth2/login", env.base)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(env.redis.exists("login_starts:127.0.0.1"));
    env.app.shutdown().await;

    let env = setup("[login]\nmax_pending_per_client = 100\nmax_pending_total = 5", false, |_| {}).await;
    let statuses = env.start_logins(8, "/").await;
    assert_eq!(statuses, vec![302, 302, 302, 302, 302, 429, 429, 429]);
    env.app.shutdown().await;
}

#[tokio::test]
async fn repeated_failures_get_429() {
    let env = setup("[login]\nmax_failures = 3\nfailure_window = \"60s\"", false, |_| {}).await;
    for _ in 0..3 {
        let r = env.browser.get(format!("{}/oauth2/callback?code=x&state=forged", env.base)).send().await.unwrap();
        assert_eq!(r.status(), 400);
    }
    let r = env.browser.get(format!("{}/oauth2/callback?code=x&state=forged", env.base)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    env.app.shutdown().await;
}

impl Env {
    async fn bad_callback(&self, xff: Option<&str>) -> u16 {
        let mut req = new_browser().get(format!("{}/oauth2/callback?code=x&state=forged", self.base));
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        req.send().await.unwrap().status().as_u16()
    }
}

/// `X-Forwarded-For` (issue 10, hole 5): with no trusted proxies the direct peer is the client, so 10 bad
/// callbacks lock that peer out and a forged header does not escape the lock (nor lock out someone else).
#[tokio::test]
async fn a_forged_forwarded_for_neither_escapes_nor_shifts_the_failure_limit() {
    let env = setup("", false, |_| {}).await;
    for i in 0..10 {
        assert_eq!(env.bad_callback(Some(&format!("198.51.100.{i}"))).await, 400);
    }
    assert_eq!(env.bad_callback(None).await, 429);
    assert_eq!(env.bad_callback(Some("203.0.113.99")).await, 429, "a forged header does not escape");
    assert!(env.redis.exists("auth:failures:127.0.0.1"));
    assert!(!env.redis.exists("auth:failures:198.51.100.0"));
    env.app.shutdown().await;
}

/// Behind a trusted proxy (Envoy on loopback), the address it appended is the client: one client's
/// failures lock out that client only.
#[tokio::test]
async fn behind_a_trusted_proxy_forwarded_for_names_the_client() {
    let env = setup("", false, |c| c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    for _ in 0..10 {
        assert_eq!(env.bad_callback(Some("6.6.6.6, 203.0.113.1")).await, 400);
    }
    assert_eq!(env.bad_callback(Some("203.0.113.1")).await, 429);
    assert_eq!(env.bad_callback(Some("203.0.113.2")).await, 400, "another client is not locked out");
    assert!(env.redis.exists("auth:failures:203.0.113.1"));
    assert!(!env.redis.exists("auth:failures:6.6.6.6"), "the client-written entry is not believed");
    env.app.shutdown().await;
}

#[tokio::test]
async fn logout_ends_the_session_and_goes_to_the_idp() {
    let env = setup("", false, |_| {}).await;
    let (value, _) = env.login("alice").await;
    assert_eq!(env.check(&value).await, 200);
    let id = portcullis::session::cookie::session_id(&value);
    assert!(env.redis.exists(&session_key(&id)));

    // A GET changes nothing: a page whose form POSTs to the logout route.
    let r = env
        .browser
        .get(format!("{}/oauth2/logout", env.base))
        .header("cookie", format!("GATEWAY_SESSION={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get(SET_COOKIE).is_none());
    // Under no-referrer a browser's form POST would carry `Origin: null`.
    assert_eq!(r.headers().get("referrer-policy").unwrap(), "same-origin");
    let page = r.text().await.unwrap();
    assert!(page.contains(r#"<form method="post" action="/oauth2/logout">"#), "{page}");
    assert!(env.redis.exists(&session_key(&id)));
    assert_eq!(env.check(&value).await, 200);

    let r = env
        .browser
        .post(format!("{}/oauth2/logout", env.base))
        .header("cookie", format!("GATEWAY_SESSION={value}"))
        .header("origin", &env.base)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = location(&r);
    assert!(loc.starts_with(&format!("{}/session/end", env.idp.issuer())), "{loc}");
    assert!(loc.contains("id_token_hint="), "{loc}");
    let cleared = r.headers().get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(r.headers().get("x-frame-options").unwrap(), "DENY");
    assert!(r.headers().get("content-security-policy").is_some());

    assert!(!env.redis.exists(&session_key(&id)), "session key gone");
    assert_eq!(env.check(&value).await, 401);
    env.app.shutdown().await;
}

/// Logout CSRF: a cross-site POST (another Origin, a cross-site fetch, or no origin at all) is refused
/// with 403, counted, and the session survives; a same-origin POST (Sec-Fetch-Site or Referer) logs out.
#[tokio::test]
async fn a_cross_site_logout_is_refused_and_the_session_survives() {
    let env = setup("", false, |_| {}).await;
    let (value, _) = env.login("alice").await;
    let id = portcullis::session::cookie::session_id(&value);
    let cookie = format!("GATEWAY_SESSION={value}");
    let before = env.metric(r#"portcullis_logout_refused_total{reason="cross_origin"}"#);
    for headers in [
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("referer", "https://evil.example/page")],
        vec![],
    ] {
        let mut req = env.browser.post(format!("{}/oauth2/logout", env.base)).header("cookie", &cookie);
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "{headers:?}");
        assert!(r.headers().get(SET_COOKIE).is_none(), "{headers:?}");
        assert!(env.redis.exists(&session_key(&id)), "the session survives {headers:?}");
    }
    assert!(env.metric(r#"portcullis_logout_refused_total{reason="cross_origin"}"#) >= before + 2, "both counted");
    assert_eq!(env.check(&value).await, 200);

    for same in [("sec-fetch-site", "same-origin".to_string()), ("referer", format!("{}/reports", env.base))] {
        let (value, _) = env.login("alice").await;
        let id = portcullis::session::cookie::session_id(&value);
        let r = env
            .browser
            .post(format!("{}/oauth2/logout", env.base))
            .header("cookie", format!("GATEWAY_SESSION={value}"))
            .header(same.0, &same.1)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302, "{same:?}");
        assert!(!env.redis.exists(&session_key(&id)), "{same:?}");
    }
    env.app.shutdown().await;
}

#[tokio::test]
async fn backchannel_logout_from_the_idp_ends_the_session() {
    let env = setup("", true, |_| {}).await;
    let (value, _) = env.login("alice").await;
    // Bob signs in from another browser: another IdP session, another `sid`.
    let other_browser =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).cookie_store(true).build().unwrap();
    let (other, _) = env.login_in(&other_browser, "bob").await;
    assert_eq!(env.check(&value).await, 200);

    // The IdP session lives in the browser's jar; ending it there makes the IdP POST a logout token to us.
    let id = portcullis::session::cookie::session_id(&value);
    let stored = env.app.server.authorizer.store().peek(&id).await.unwrap().unwrap();
    let tokens = env.app.server.authorizer.store().decrypt(&stored).unwrap();
    env.idp.logout(&env.browser, &tokens.id_token).await;
    assert!(
        eventually(Duration::from_secs(5), async || !env.redis.exists(&session_key(&id))).await,
        "the back-channel logout deleted the session"
    );
    assert_eq!(env.check(&value).await, 401);

    // A forged logout token is refused.
    let forged = env
        .idp
        .mint(
            serde_json::json!({"iss": env.idp.issuer(), "aud": "portcullis", "iat": portcullis::now(),
                "sub": "bob", "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
            "stranger",
        )
        .await;
    let r = reqwest::Client::new()
        .post(format!("{}/oauth2/backchannel-logout", env.base))
        .form(&[("logout_token", forged)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(env.check(&other).await, 200, "bob's session survives alice's logout and a forged token");
    env.app.shutdown().await;
}

/// Back-channel logout by `sub` alone ends that user's sessions of the provider that sent it, not those of
/// another provider (two issuers, one `sub`); a replayed `jti` is refused and ends nothing.
#[tokio::test]
async fn backchannel_logout_by_sub_ends_only_that_providers_sessions_and_refuses_a_replay() {
    let partner = IdpServer::start().await;
    let extra = provider_toml("partner", "oidc", &partner, "introspection_auth = \"client_secret_basic\"");
    let env = setup(&extra, false, |_| {}).await;
    let store = env.app.server.authorizer.store();
    let plant = async |provider: &str| {
        let tokens =
            portcullis::session::Tokens { id_token: "id".into(), access_token: "at".into(), refresh_token: None };
        let new = portcullis::session::NewSession {
            user_id: "alice".into(),
            provider: provider.into(),
            sid: None,
            tokens,
            client_fingerprint: None,
        };
        let (_, s) = store.create(new, portcullis::now()).await.unwrap();
        session_key(&s.id)
    };
    let at_corp = plant("corp").await;
    let at_partner = plant("partner").await;
    let logout_token = async |jti: &str| {
        partner
            .mint(
                serde_json::json!({"iss": partner.issuer(), "aud": "portcullis", "iat": portcullis::now(),
                    "jti": jti, "sub": "alice",
                    "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
                "provider",
            )
            .await
    };
    let post = async |token: &str| {
        reqwest::Client::new()
            .post(format!("{}/oauth2/backchannel-logout", env.base))
            .form(&[("logout_token", token)])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    let token = logout_token("jti-1").await;
    assert_eq!(post(&token).await, 200);
    assert!(!env.redis.exists(&at_partner), "the partner session is ended");
    assert!(env.redis.exists(&at_corp), "the partner IdP cannot end alice's corp session");
    assert!(env.redis.exists("bcl_jti:partner:jti-1"));
    let ttl: i64 = redis::cmd("TTL").arg("bcl_jti:partner:jti-1").query(&mut env.redis.conn()).unwrap();
    assert!((1..=660).contains(&ttl), "{ttl}");

    // Alice signs in again through the partner; a replay of the old token is refused and ends nothing.
    let again = plant("partner").await;
    assert_eq!(post(&token).await, 400);
    assert!(env.redis.exists(&again), "a replayed logout token ends nothing");
    // A token without a jti is refused; a fresh one is honoured.
    let no_jti = partner
        .mint(
            serde_json::json!({"iss": partner.issuer(), "aud": "portcullis", "iat": portcullis::now(), "sub": "alice",
                "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
            "provider",
        )
        .await;
    assert_eq!(post(&no_jti).await, 400);
    assert!(env.redis.exists(&again));
    assert_eq!(post(&logout_token("jti-2").await).await, 200);
    assert!(!env.redis.exists(&again));
    assert!(env.redis.exists(&at_corp));
    env.app.shutdown().await;
}

#[tokio::test]
async fn cookie_carries_the_configured_attributes() {
    let env = setup("", false, |c| {
        c.session.cookie_name = "__Host-GATEWAY_SESSION".into();
        c.session.cookie_secure = true;
        c.session.same_site = portcullis::config::SameSite::Strict;
    })
    .await;
    let cb = env.to_callback("alice", "/").await;
    let r = env.browser.get(&cb).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let set = r.headers().get(SET_COOKIE).unwrap().to_str().unwrap().to_string();
    assert!(set.starts_with("__Host-GATEWAY_SESSION="), "{set}");
    for attr in ["HttpOnly", "Secure", "Path=/", "SameSite=Strict"] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    assert!(!set.contains("Domain="), "{set}");
    assert!(r.headers().get("strict-transport-security").is_some(), "HSTS when Secure");
    env.app.shutdown().await;
}

/// A login backend with fixed endpoints (the code exchange is what is under test).
struct FixedEndpoints(String);

#[async_trait::async_trait]
impl portcullis::login::LoginBackend for FixedEndpoints {
    async fn endpoints(&self) -> Result<portcullis::login::LoginEndpoints, portcullis::idp::IdpError> {
        Ok(portcullis::login::LoginEndpoints {
            authorization_endpoint: format!("{}/authorize", self.0),
            token_endpoint: format!("{}/token", self.0),
            end_session_endpoint: None,
        })
    }
    async fn verify_id_token(
        &self,
        _: &str,
        _: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, portcullis::idp::IdpError> {
        Err(portcullis::idp::IdpError::Invalid("not under test".into()))
    }
    async fn verify_logout_token(
        &self,
        _: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, portcullis::idp::IdpError> {
        Err(portcullis::idp::IdpError::Invalid("not under test".into()))
    }
    fn user_id(&self, _: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        None
    }
}

/// The code exchange goes through the provider's transport: it reaches the token endpoint while the
/// breaker is closed, is refused without reaching it once the breaker is open, and
/// `portcullis_idp_requests_total{kind="code_exchange"}` counts both.
#[tokio::test]
async fn the_code_exchange_goes_through_the_providers_breaker() {
    use portcullis::idp::breaker::Breaker;
    use portcullis::idp::transport::{self, Transport};
    use portcullis::login::provider::ExchangeError;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let metrics = portcullis::telemetry::metrics();
    let idp = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": "invalid_grant"})))
        .mount(&idp)
        .await;
    let toml = r#"
[providers.xbrk]
kind = "oidc"
issuer = "http://127.0.0.1:1"
client_id = "gateway"
client_secret = "secret"
"#;
    let cfg = config("redis://127.0.0.1:1", toml);
    let pcfg = &cfg.providers["xbrk"];
    let breaker = Breaker::new("xbrk", 1, Duration::from_secs(3600));
    let t =
        std::sync::Arc::new(Transport::new(transport::client(None).unwrap(), "xbrk", Duration::from_secs(2), breaker));
    let backend = std::sync::Arc::new(FixedEndpoints(idp.uri()));
    let login =
        portcullis::login::LoginProvider::new("xbrk", pcfg, "http://127.0.0.1:1", "http://rp/cb", backend, t.clone());

    // Closed: the IdP answers (a refused code is its answer, not a failure).
    assert!(matches!(login.exchange("code", "verifier").await, Err(ExchangeError::Rejected(_))));
    assert_eq!(idp.received_requests().await.unwrap().len(), 1);

    // Open: refused here.
    t.breaker().permit().unwrap().failure();
    assert!(matches!(login.exchange("code", "verifier").await, Err(ExchangeError::Unavailable(_))));
    assert_eq!(idp.received_requests().await.unwrap().len(), 1, "the IdP never saw the refused exchange");
    let text = metrics.render();
    for outcome in ["refused", "circuit_open"] {
        let line =
            format!(r#"portcullis_idp_requests_total{{provider="xbrk",kind="code_exchange",outcome="{outcome}"}} 1"#);
        assert!(text.contains(&line), "{line} in {text}");
    }
}
