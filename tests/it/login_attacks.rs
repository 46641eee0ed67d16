//! The attack suite, login side (issue 10): each attack on `/oauth2/*` through a real Envoy running the
//! shipped `envoy/envoy.yaml`, the real OpenID provider, portcullis and Redis. Each refusal is a
//! `portcullis_logins_total{outcome=...}` (or `portcullis_logout_refused_total`) and a log line.

use crate::e2e::{browser_from, follow_login, Stack};

/// `portcullis_logins_total{provider,outcome}`, from portcullis's /metrics (0 when absent).
async fn logins(s: &Stack, provider: &str, outcome: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", s.app.server.http_addr)).await.unwrap().text().await.unwrap();
    let series = format!("portcullis_logins_total{{provider=\"{provider}\",outcome=\"{outcome}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn used_memory(s: &Stack) -> i64 {
    let info: String = redis::cmd("INFO").arg("memory").query(&mut s.redis.conn()).unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap()
}

/// Login CSRF through the shipped Envoy: a callback URL completes only in the browser that started the
/// login; another browser gets 400 and no session.
#[tokio::test]
async fn through_envoy_a_callback_url_only_completes_in_the_browser_that_started_it() {
    let s = Stack::start().await;
    let (attacker, victim) = (browser_from("127.0.0.1"), browser_from("127.0.0.1"));
    let cb = crate::harness::idp::sign_in(&attacker, &s.public, &s.idp.issuer(), "mallory", "/", |_| {}).await;
    let r = victim.get(&cb).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let keys: Vec<String> = redis::cmd("KEYS").arg("session:*").query(&mut s.redis.conn()).unwrap();
    assert!(keys.is_empty(), "no session for the victim: {keys:?}");
    let r = attacker.get(&cb).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(s.upstream.hits(), 0);
}

/// The shipped layout: Envoy (use_remote_address) on loopback is portcullis's only trusted proxy, so the
/// address Envoy saw is the client of the failed-callback limit. A client-written X-Forwarded-For neither
/// escapes the lock nor shifts it onto someone else. Clients come from 127.0.0.2 and 127.0.0.3 (loopback,
/// but not the trusted 127.0.0.1).
#[tokio::test]
async fn through_envoy_the_login_limits_count_the_address_envoy_saw() {
    let s =
        Stack::start_full("", |c| c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()], |y| y.to_string())
            .await;
    let bad = async |from: &str, forged: &str| {
        browser_from(from)
            .get(format!("{}/oauth2/callback?code=x&state=forged", s.public))
            .header("x-forwarded-for", forged)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for i in 0..10 {
        assert_eq!(bad("127.0.0.2", &format!("198.51.100.{i}")).await, 400);
    }
    assert_eq!(bad("127.0.0.2", "203.0.113.1").await, 429, "a forged header does not escape the lock");
    assert_eq!(bad("127.0.0.3", "127.0.0.2").await, 400, "another client is not locked out");
    assert!(s.redis.exists("auth:failures:127.0.0.2"));
    assert!(!s.redis.exists("auth:failures:198.51.100.0"));
}

/// Pending logins filling Redis: 300 logins with a 40 kB `rd` are refused (400) and store nothing; 300 from
/// one client are bounded per client (429 with Retry-After past the limit). Redis grows far less than 2 MB.
#[tokio::test]
async fn pending_logins_cannot_fill_redis_through_envoy() {
    let s = Stack::start().await;
    let b = browser_from("127.0.0.1");
    // Warm the path (one connection, discovery) so the measurement sees only what the logins store.
    assert_eq!(b.get(format!("{}/oauth2/login?rd=/warm", s.public)).send().await.unwrap().status(), 302);
    let before = used_memory(&s);
    // The recorder is process-wide: other tests count rd_too_long too, so this one reads its own increase.
    let refused_before = logins(&s, "corp", "rd_too_long").await;
    let long = format!("/{}", "a".repeat(40_000));
    for _ in 0..300 {
        let r = b.get(format!("{}/oauth2/login", s.public)).query(&[("rd", &long)]).send().await.unwrap();
        assert_eq!(r.status(), 400);
    }
    assert!(logins(&s, "corp", "rd_too_long").await >= refused_before + 300, "each refusal is counted");
    let mut limited = 0;
    for i in 0..300 {
        let r = b.get(format!("{}/oauth2/login?rd=/p{i}", s.public)).send().await.unwrap();
        match r.status().as_u16() {
            302 => {}
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("login {i}: {other}"),
        }
    }
    assert!(limited >= 250, "past login.max_pending_per_client the client waits: {limited} of 300 limited");
    let grown = used_memory(&s) - before;
    assert!(grown < 2_000_000, "Redis grew by {grown} bytes");
    let pending: Vec<String> = redis::cmd("KEYS").arg("pkce:*").query(&mut s.redis.conn()).unwrap();
    assert!(pending.len() <= 31, "{} pending logins stored", pending.len());
}

/// Logout CSRF: a cross-site POST (or a GET from a link or an image) ends nothing; the same-origin POST
/// of the sign-out page does.
#[tokio::test]
async fn a_cross_site_logout_through_envoy_ends_nothing() {
    let s = Stack::start().await;
    let b = browser_from("127.0.0.1");
    follow_login(&b, format!("{}/oauth2/login?rd=/home", s.public), "alice").await;
    let me = || b.get(format!("{}/api/me", s.public)).header("accept", "application/json");
    assert_eq!(me().send().await.unwrap().status(), 200);

    let r = b.post(format!("{}/oauth2/logout", s.public)).header("origin", "https://evil.example").send().await;
    assert_eq!(r.unwrap().status(), 403);
    let r = b.get(format!("{}/oauth2/logout", s.public)).header("sec-fetch-site", "cross-site").send().await;
    assert_eq!(r.unwrap().status(), 200, "a GET shows the sign-out page");
    assert_eq!(me().send().await.unwrap().status(), 200, "still signed in");

    let r = b.post(format!("{}/oauth2/logout", s.public)).header("origin", s.public.as_str()).send().await;
    assert!(r.unwrap().status().is_redirection(), "the same-origin POST signs out");
    assert_eq!(me().send().await.unwrap().status(), 401);
}

/// A replayed back-channel logout token, POSTed through Envoy's `/oauth2/` route as the IdP would: the
/// first ends the user's sessions, the replay is 400 and ends the session opened since.
#[tokio::test]
async fn a_replayed_backchannel_logout_token_through_envoy_is_refused() {
    let s = Stack::start().await;
    let b = browser_from("127.0.0.1");
    follow_login(&b, format!("{}/oauth2/login?rd=/home", s.public), "alice").await;
    let claims = serde_json::json!({"iss": s.idp.issuer(), "aud": crate::harness::idp::CLIENT_ID,
        "iat": portcullis::now(), "jti": "replayed-once", "sub": "alice",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
    let token = s.idp.mint(claims, "provider").await;
    let post = async || {
        reqwest::Client::new()
            .post(format!("{}/oauth2/backchannel-logout", s.public))
            .form(&[("logout_token", token.as_str())])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post().await, 200);
    let me = || b.get(format!("{}/api/me", s.public)).header("accept", "application/json");
    assert_eq!(me().send().await.unwrap().status(), 401, "the first token ended the session");

    let again = browser_from("127.0.0.1");
    follow_login(&again, format!("{}/oauth2/login?rd=/home", s.public), "alice").await;
    assert_eq!(post().await, 400, "the replay is refused");
    let me = again.get(format!("{}/api/me", s.public)).header("accept", "application/json");
    assert_eq!(me.send().await.unwrap().status(), 200, "and ends nothing");
}
