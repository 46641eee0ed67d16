//! The Check path against a real redis-server, with a static provider validator.

use std::sync::Arc;

use serde_json::json;

use crate::harness::app::{config, request, StaticValidator, TestApp};
use crate::harness::redis::RedisServer;

async fn setup(extra: &str) -> (RedisServer, TestApp, Arc<StaticValidator>) {
    let redis = RedisServer::start();
    let v = StaticValidator::new();
    let app = TestApp::with_validator(config(&redis.url(), extra), v.clone()).await;
    (redis, app, v)
}

#[tokio::test]
async fn valid_session_allows_with_identity_and_strips_the_cookie() {
    let (_redis, app, v) = setup("").await;
    let (cookie, _) = app.login("alice", json!({"email": "alice@example.com", "groups": ["dev"]})).await;
    let client = [
        ("cookie", format!("theme=dark; {}={cookie}; lang=en", app.cookie_name())),
        ("x-auth-user-id", "mallory".to_string()),
        ("x-auth-name", "Mallory".to_string()),
    ];
    let client: Vec<(&str, &str)> = client.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = app.check(request("GET", "/api/me", &client)).await;
    assert_eq!(r.status(), 200, "{r:?}");
    let up = r.upstream_headers(&client);
    assert_eq!(up.get("x-auth-user-id").map(String::as_str), Some("alice"));
    assert_eq!(up.get("x-auth-email").map(String::as_str), Some("alice@example.com"));
    assert_eq!(up.get("x-auth-groups").map(String::as_str), Some("dev"));
    assert_eq!(up.get("x-auth-name"), None, "absent claim must remove the client's header");
    assert_eq!(up.get("cookie").map(String::as_str), Some("theme=dark; lang=en"));
    assert_eq!(v.calls(), 1);
    app.shutdown().await;
}
