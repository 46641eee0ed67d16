//! Bulk revocation by operators: `portcullis sessions revoke --user` and the admin API.

use serde_json::{json, Value};

use crate::harness::app::{config_with_keys, request, StaticValidator, TestApp};
use crate::harness::redis::RedisServer;
use crate::served;

fn cookie(app: &TestApp, v: &str) -> String {
    format!("{}={v}", app.cookie_name())
}

#[tokio::test]
async fn cli_revoke_ends_every_session_of_that_user_and_no_other() {
    let redis = RedisServer::start();
    let key = portcullis::crypto::generate_key();
    let app =
        TestApp::with_validator(config_with_keys(&redis.url(), std::slice::from_ref(&key), ""), StaticValidator::new())
            .await;
    let (a1, _) = app.login("alice", json!({})).await;
    let (a2, _) = app.login("alice", json!({})).await;
    let (b1, _) = app.login("bob", json!({})).await;

    let file = served::file(&served::minimal(&redis.url(), &format!("encryption_keys = [\"{key}\"]")));
    let run = |args: &[&str]| {
        let out = served::portcullis().args(args).arg("--config").arg(file.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = run(&["sessions", "list", "--user", "alice"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(!listed.contains(&portcullis::session::cookie::session_id(&a1)), "no full session id");

    let out = run(&["sessions", "revoke", "--user", "alice"]);
    assert!(out.contains("revoked 2"), "{out}");
    for a in [&a1, &a2] {
        assert_eq!(app.check(request("GET", "/", &[("cookie", &cookie(&app, a))])).await.status(), 401);
    }
    assert_eq!(app.check(request("GET", "/", &[("cookie", &cookie(&app, &b1))])).await.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn admin_api_needs_its_token_and_never_returns_secrets() {
    let redis = RedisServer::start();
    let token = "admin-token-for-tests-only";
    // Admin settings live in [server]: set them on the parsed config.
    let mut cfg = config_with_keys(&redis.url(), &[portcullis::crypto::generate_key()], "");
    cfg.server.admin_addr = Some("127.0.0.1:0".into());
    cfg.server.admin_token = Some(token.into());
    let app = TestApp::with_validator(cfg, StaticValidator::new()).await;
    let (a1, s1) = app.login("alice", json!({})).await;
    let (b1, _) = app.login("bob", json!({})).await;
    let base = format!("http://{}", app.server.admin_addr.unwrap());
    let http = reqwest::Client::new();

    let r = http.get(format!("{base}/admin/sessions?user=alice")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(format!("{base}/admin/sessions?user=alice")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);

    let body = http.get(format!("{base}/admin/sessions?user=alice")).bearer_auth(token).send().await.unwrap();
    let text = body.text().await.unwrap();
    assert!(!text.contains(&s1.id) && !text.contains(&a1) && !text.contains("session:"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let handle = v["sessions"][0]["handle"].as_str().unwrap().to_string();

    let r = http.delete(format!("{base}/admin/sessions/{handle}?user=alice")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &cookie(&app, &a1))])).await.status(), 401);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &cookie(&app, &b1))])).await.status(), 200);

    let r = http.delete(format!("{base}/admin/sessions?user=bob")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["revoked"], 1);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &cookie(&app, &b1))])).await.status(), 401);
    app.shutdown().await;
}
