//! The Check path against a real redis-server, with a static provider validator.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use portcullis::idp::IdpError;
use portcullis::session::store::session_key;
use serde_json::json;

use crate::harness::app::{config, config_with_keys, request, StaticValidator, TestApp};
use crate::harness::redis::RedisServer;

async fn setup(extra: &str) -> (RedisServer, TestApp, Arc<StaticValidator>) {
    let redis = RedisServer::start();
    let v = StaticValidator::new();
    let app = TestApp::with_validator(config(&redis.url(), extra), v.clone()).await;
    (redis, app, v)
}

fn cookie(app: &TestApp, value: &str) -> String {
    format!("{}={value}", app.cookie_name())
}

const API: &[(&str, &str)] = &[("accept", "application/json")];

#[tokio::test]
async fn valid_session_allows_with_identity_and_strips_the_cookie() {
    let (_redis, app, v) = setup("").await;
    let (value, _) = app.login("alice", json!({"email": "alice@example.com", "groups": ["dev"]})).await;
    let client = [
        ("cookie", format!("theme=dark; {}; lang=en", cookie(&app, &value))),
        ("x-auth-user-id", "mallory".to_string()),
        ("x-auth-name", "Mallory".to_string()),
        ("x-auth-jwt", "forged".to_string()),
    ];
    let client: Vec<(&str, &str)> = client.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = app.check(request("GET", "/api/me", &client)).await;
    assert_eq!(r.status(), 200, "{r:?}");
    let up = r.upstream_headers(&client);
    assert_eq!(up.get("x-auth-user-id").map(String::as_str), Some("alice"));
    assert_eq!(up.get("x-auth-provider").map(String::as_str), Some("corp"));
    assert_eq!(up.get("x-auth-email").map(String::as_str), Some("alice@example.com"));
    assert_eq!(up.get("x-auth-groups").map(String::as_str), Some("dev"));
    assert_eq!(up.get("x-auth-name"), None, "an absent claim must remove the client's header");
    assert_eq!(up.get("x-auth-jwt"), None);
    assert_eq!(up.get("cookie").map(String::as_str), Some("theme=dark; lang=en"));
    assert_eq!(v.calls(), 1);

    // Every injected header overwrites, and nothing set is also removed (Envoy removes after setting).
    let resp = &r.0;
    let Some(envoy_types::ext_authz::v3::pb::HttpResponse::OkResponse(ok)) = &resp.http_response else { panic!() };
    for h in &ok.headers {
        #[allow(deprecated)]
        let append = h.append.as_ref().map(|b| b.value);
        assert_eq!(append, Some(false));
        assert_eq!(h.append_action, 2, "OVERWRITE_IF_EXISTS_OR_ADD");
        let key = &h.header.as_ref().unwrap().key;
        assert!(!ok.headers_to_remove.contains(key), "{key} both set and removed");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn only_cookie_is_removed_from_upstream() {
    let (_redis, app, _v) = setup("").await;
    let (value, _) = app.login("alice", json!({})).await;
    let c = cookie(&app, &value);
    let r = app.check(request("GET", "/", &[("cookie", &c)])).await;
    assert_eq!(r.status(), 200);
    assert!(r.removed().contains(&"cookie".to_string()));
    assert_eq!(r.upstream_headers(&[("cookie", &c)]).get("cookie"), None);
    app.shutdown().await;
}

#[tokio::test]
async fn no_cookie_or_unknown_cookie_is_401_json() {
    let (_redis, app, v) = setup("").await;
    let r = app.check(request("GET", "/api", API)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.body(), r#"{"error":"unauthenticated"}"#);
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(r.grpc_code(), 16, "UNAUTHENTICATED");
    assert_eq!(r.header("set-cookie"), None, "nothing to clear");

    let unknown = cookie(&app, &portcullis::session::cookie::new_value());
    let r = app.check(request("GET", "/api", &[("accept", "application/json"), ("cookie", &unknown)])).await;
    assert_eq!(r.status(), 401);
    let cleared = r.header("set-cookie").expect("stale cookie cleared");
    assert!(cleared.starts_with("GATEWAY_SESSION=;") && cleared.contains("Max-Age=0"), "{cleared}");

    let garbage = cookie(&app, "not-a-real-session-value");
    let r = app.check(request("GET", "/api", &[("cookie", &garbage)])).await;
    assert_eq!(r.status(), 401);
    assert_eq!(v.calls(), 0, "no session, no IdP call");
    app.shutdown().await;
}

#[tokio::test]
async fn only_browser_navigations_are_redirected_to_login() {
    let (_redis, app, _v) = setup("").await;
    let nav = [("accept", "text/html,application/xhtml+xml"), ("sec-fetch-mode", "navigate")];
    let r = app.check(request("GET", "/reports?q=1&x=y", &nav)).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.header("location").as_deref(), Some("/oauth2/login?rd=%2Freports%3Fq%3D1%26x%3Dy"));
    assert_eq!(r.grpc_code(), 16);

    let old_browser = [("accept", "text/html")];
    assert_eq!(app.check(request("GET", "/", &old_browser)).await.status(), 302);
    for headers in [
        vec![("accept", "text/html"), ("sec-fetch-mode", "cors")],
        vec![("accept", "text/html"), ("x-requested-with", "XMLHttpRequest")],
        vec![("accept", "*/*")],
    ] {
        assert_eq!(app.check(request("GET", "/", &headers)).await.status(), 401, "{headers:?}");
    }
    assert_eq!(app.check(request("POST", "/", &old_browser)).await.status(), 401);
    app.shutdown().await;
}

#[tokio::test]
async fn idle_and_absolute_expiry_deny_and_delete() {
    let (redis, app, v) = setup("idle_timeout = \"30m\"\nabsolute_timeout = \"8h\"").await;
    let store = app.server.authorizer.store();
    let now = portcullis::now();

    let (idle_cookie, mut idle) = app.login("alice", json!({})).await;
    idle.last_access = now - 31 * 60;
    store.write(&idle).await.unwrap();
    let (abs_cookie, mut abs) = app.login("bob", json!({})).await;
    abs.created_at = now - 9 * 3600;
    abs.expires_at = now - 3600;
    abs.last_access = now - 60;
    store.write(&abs).await.unwrap();

    for (c, s) in [(idle_cookie, idle), (abs_cookie, abs)] {
        assert!(redis.exists(&session_key(&s.id)));
        let r = app.check(request("GET", "/", &[("cookie", &cookie(&app, &c))])).await;
        assert_eq!(r.status(), 401);
        assert!(!redis.exists(&session_key(&s.id)), "expired session must be deleted");
        let members: Vec<String> =
            redis::cmd("SMEMBERS").arg(format!("user_sessions:{}", s.user_id)).query(&mut redis.conn()).unwrap();
        assert!(!members.contains(&s.id), "and removed from user_sessions");
    }
    assert_eq!(v.calls(), 0);
    app.shutdown().await;
}

#[tokio::test]
async fn sliding_expiry_moves_only_when_due() {
    let (redis, app, _v) = setup("idle_timeout = \"30m\"\nslide_after = \"60s\"").await;
    let store = app.server.authorizer.store();
    let (value, mut s) = app.login("alice", json!({})).await;
    let key = session_key(&s.id);
    let c = cookie(&app, &value);

    let fresh: i64 = redis::cmd("HGET").arg(&key).arg("lastAccess").query(&mut redis.conn()).unwrap();
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);
    let after: i64 = redis::cmd("HGET").arg(&key).arg("lastAccess").query(&mut redis.conn()).unwrap();
    assert_eq!(fresh, after, "not due: no write");

    s.last_access = portcullis::now() - 300;
    store.write(&s).await.unwrap();
    redis::cmd("EXPIRE").arg(&key).arg(100).query::<()>(&mut redis.conn()).unwrap();
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);
    let slid: i64 = redis::cmd("HGET").arg(&key).arg("lastAccess").query(&mut redis.conn()).unwrap();
    assert!(slid >= portcullis::now() - 5, "lastAccess moved");
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut redis.conn()).unwrap();
    assert!(ttl > 1700, "idle TTL renewed, got {ttl}");
    app.shutdown().await;
}

#[tokio::test]
async fn exactly_one_redis_command_per_check() {
    let (redis, app, _v) = setup("slide_after = \"60s\"").await;
    let (value, s) = app.login("alice", json!({})).await;
    let c = cookie(&app, &value);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);
    redis.reset_stats();
    for _ in 0..5 {
        assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);
    }
    let five: std::collections::BTreeMap<String, u64> = [("hgetall".to_string(), 5)].into();
    assert_eq!(redis.executed(), five, "steady state: one plain HGETALL per check, nothing else");

    // A due slide is the one rare second call: the same HGETALL, then the slide script on the same key.
    let mut s = s;
    s.last_access = portcullis::now() - 600;
    app.server.authorizer.store().write(&s).await.unwrap();
    redis.reset_stats();
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);
    let stats = redis.executed();
    assert_eq!(stats.get("hgetall"), Some(&1), "{stats:?}");
    assert_eq!(stats.get("hset"), Some(&1), "{stats:?}");
    assert_eq!(stats.get("expire"), Some(&1), "{stats:?}");
    // The script's first run may load it (NOSCRIPT, then SCRIPT LOAD); nothing else runs.
    let slide = ["hgetall", "evalsha", "script|load", "exists", "hset", "expire"];
    assert!(stats.keys().all(|k| slide.contains(&k.as_str())), "{stats:?}");
    // Slid: the next check is back to one command.
    redis.reset_stats();
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);
    assert_eq!(redis.executed(), [("hgetall".to_string(), 1)].into());
    app.shutdown().await;
}

/// `max_staleness` with the static validator behind the real single-flight cache, as `serve` wraps it.
async fn max_staleness_app() -> (RedisServer, TestApp, Arc<StaticValidator>) {
    let redis = RedisServer::start();
    let v = StaticValidator::new();
    let cfg = config(&redis.url(), "[revalidation]\nmode = \"max_staleness\"\nmax_staleness = \"60s\"");
    let mut validators = portcullis::idp::Validators::new();
    let inner: Arc<dyn portcullis::idp::Validator> = v.clone();
    validators.insert("corp".into(), portcullis::idp::coalesce::wrap(inner, &cfg.revalidation));
    let app = TestApp::start(cfg, validators).await;
    (redis, app, v)
}

#[tokio::test]
async fn max_staleness_cached_checks_leave_the_tokens_sealed() {
    let (redis, app, v) = max_staleness_app().await;
    let (value, s) = app.login("alice", json!({"email": "alice@example.com"})).await;
    let c = cookie(&app, &value);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);
    assert_eq!(v.calls(), 1);
    // Within the window the tokens are not needed, so they are not opened: a ciphertext that no longer
    // opens goes unnoticed until the validator next needs the tokens.
    let key = session_key(&s.id);
    redis::cmd("HSET").arg(&key).arg("idToken").arg("v1.x.AAAA").query::<()>(&mut redis.conn()).unwrap();
    let r = app.check(request("GET", "/", &[("cookie", &c)])).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.upstream_headers(&[]).get("x-auth-email").map(String::as_str), Some("alice@example.com"));
    assert_eq!(v.calls(), 1, "answered from the cache");
    app.shutdown().await;
}

#[tokio::test]
async fn max_staleness_cached_checks_read_only_the_small_fields_and_still_see_a_revoke() {
    let (redis, app, v) = max_staleness_app().await;
    let (value, s) = app.login("alice", json!({"email": "alice@example.com"})).await;
    let c = cookie(&app, &value);
    redis.reset_stats();
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);
    assert_eq!(redis.executed(), [("hgetall".to_string(), 1)].into(), "first sight: the whole session");
    redis.reset_stats();
    for _ in 0..5 {
        let r = app.check(request("GET", "/", &[("cookie", &c)])).await;
        assert_eq!(r.status(), 200, "{r:?}");
        assert_eq!(r.upstream_headers(&[]).get("x-auth-email").map(String::as_str), Some("alice@example.com"));
    }
    assert_eq!(redis.executed(), [("hmget".to_string(), 5)].into(), "remembered: the small fields, no tokens");
    assert_eq!(v.calls(), 1);

    // Logout or revoke on any replica deletes the key: the very next check sees it, cache or not.
    redis::cmd("DEL").arg(session_key(&s.id)).query::<()>(&mut redis.conn()).unwrap();
    let r = app.check(request("GET", "/", &[("cookie", &c)])).await;
    assert_eq!(r.status(), 401, "{r:?}");
    assert_eq!(r.0.status.as_ref().map(|s| s.message.as_str()), Some("unknown_session"));

    // Garbage under a remembered session's key: denied and deleted, as on a whole read.
    let (value, s) = app.login("bob", json!({})).await;
    let c = cookie(&app, &value);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);
    for garbage in [
        redis::cmd("SET").arg(session_key(&s.id)).arg("garbage").clone(),
        redis::cmd("HSET").arg(session_key(&s.id)).arg("lastAccess").arg("soon").clone(),
    ] {
        redis::cmd("DEL").arg(session_key(&s.id)).query::<()>(&mut redis.conn()).unwrap();
        app.server.authorizer.store().write(&s).await.unwrap();
        assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200, "still remembered");
        garbage.query::<()>(&mut redis.conn()).unwrap();
        let r = app.check(request("GET", "/", &[("cookie", &c)])).await;
        assert_eq!(r.status(), 401, "{r:?}");
        assert_eq!(r.0.status.as_ref().map(|s| s.message.as_str()), Some("corrupt_session"));
        assert!(!redis.exists(&session_key(&s.id)), "garbage session deleted");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn max_staleness_cached_checks_still_verify_the_session_mac() {
    let (redis, app, v) = max_staleness_app().await;
    let (value, s) = app.login("alice", json!({})).await;
    let c = cookie(&app, &value);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);
    let key = session_key(&s.id);
    let later = (s.created_at + 3600).to_string();
    redis::cmd("HSET").arg(&key).arg("createdAt").arg(&later).query::<()>(&mut redis.conn()).unwrap();
    let r = app.check(request("GET", "/", &[("cookie", &c)])).await;
    assert_eq!(r.status(), 401, "{r:?}");
    assert_eq!(r.0.status.as_ref().map(|s| s.message.as_str()), Some("tampered"));
    assert!(!redis.exists(&key), "a tampered session is deleted");
    assert_eq!(v.calls(), 1, "refused before any validator");
    app.shutdown().await;
}

#[tokio::test]
async fn tampered_or_garbage_sessions_deny_and_are_deleted() {
    let (redis, app, v) = setup("").await;
    let (value, s) = app.login("alice", json!({})).await;
    let key = session_key(&s.id);
    // Move a valid ciphertext into another field: AAD binding must reject it.
    let at: String = redis::cmd("HGET").arg(&key).arg("accessToken").query(&mut redis.conn()).unwrap();
    redis::cmd("HSET").arg(&key).arg("idToken").arg(&at).query::<()>(&mut redis.conn()).unwrap();
    let r = app.check(request("GET", "/", &[("cookie", &cookie(&app, &value))])).await;
    assert_eq!(r.status(), 401);
    assert!(!redis.exists(&key));

    // A hash missing fields, a key of the wrong type, a non-numeric timestamp.
    let plants: [&dyn Fn(&str) -> redis::Cmd; 3] = [
        &|k| redis::cmd("HSET").arg(k).arg("userId").arg("x").clone(),
        &|k| redis::cmd("SET").arg(k).arg("garbage").clone(),
        &|k| {
            redis::cmd("HSET")
                .arg(k)
                .arg(&["userId", "x", "provider", "corp", "idToken", "a", "accessToken", "b"])
                .arg(&["createdAt", "yesterday", "lastAccess", "1", "expiresAt", "2"])
                .clone()
        },
    ];
    for plant in plants {
        let value = portcullis::session::cookie::new_value();
        let key = session_key(&portcullis::session::cookie::session_id(&value));
        plant(&key).query::<()>(&mut redis.conn()).unwrap();
        let r = app.check(request("GET", "/", &[("cookie", &cookie(&app, &value))])).await;
        assert_eq!(r.status(), 401, "{r:?}");
        assert!(!redis.exists(&key), "garbage session deleted");
    }
    assert_eq!(v.calls(), 0);
    app.shutdown().await;
}

#[tokio::test]
async fn rotated_out_key_still_decrypts() {
    let redis = RedisServer::start();
    let (old, new) = (portcullis::crypto::generate_key(), portcullis::crypto::generate_key());
    let v = StaticValidator::new();
    let before =
        TestApp::with_validator(config_with_keys(&redis.url(), std::slice::from_ref(&old), ""), v.clone()).await;
    let (value, _) = before.login("alice", json!({})).await;
    before.shutdown().await;

    let after = TestApp::with_validator(config_with_keys(&redis.url(), &[new.clone(), old], ""), v.clone()).await;
    let r = after.check(request("GET", "/", &[("cookie", &cookie(&after, &value))])).await;
    assert_eq!(r.status(), 200, "{r:?}");
    after.shutdown().await;

    let dropped = TestApp::with_validator(config_with_keys(&redis.url(), &[new], ""), v).await;
    let r = dropped.check(request("GET", "/", &[("cookie", &cookie(&dropped, &value))])).await;
    // A replica without the key cannot judge the session: 503 unknown_key, and it stays for one that can.
    assert_eq!(r.status(), 503, "a key removed from the ring no longer decrypts");
    assert_eq!(r.0.status.as_ref().map(|s| s.message.as_str()), Some("unknown_key"));
    dropped.shutdown().await;
}

#[tokio::test]
async fn missing_group_is_403() {
    let (_redis, app, _v) = setup("").await;
    let (value, _) = app.login("alice", json!({"groups": ["dev", "ops"]})).await;
    let c = cookie(&app, &value);
    let with = |groups: &str| {
        let mut r = request("GET", "/admin", &[("cookie", &c), ("accept", "text/html")]);
        let a = r.attributes.as_mut().unwrap();
        a.context_extensions.insert("portcullis.require_any".into(), groups.into());
        r
    };
    let r = app.check(with("admins, auditors")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.body(), r#"{"error":"forbidden"}"#);
    assert_eq!(r.grpc_code(), 7, "PERMISSION_DENIED");
    assert_eq!(app.check(with("admins,ops")).await.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn revoked_or_unavailable_idp() {
    let (redis, app, v) = setup("").await;
    let (value, s) = app.login("alice", json!({})).await;
    let c = cookie(&app, &value);
    v.fail_with(Some(IdpError::Unavailable("down".into())));
    let r = app.check(request("GET", "/", &[("cookie", &c), ("accept", "text/html")])).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.body(), r#"{"error":"unavailable"}"#);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.grpc_code(), 7);
    assert!(redis.exists(&session_key(&s.id)), "our outage does not end the session");

    v.fail_with(Some(IdpError::Revoked("inactive".into())));
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 401);
    assert!(!redis.exists(&session_key(&s.id)), "revoked session deleted");
    app.shutdown().await;
}

#[tokio::test]
async fn fingerprint_binding() {
    let (redis, app, _v) = setup("bind_fingerprint = true").await;
    let store = app.server.authorizer.store();
    let (value, mut s) = app.login("alice", json!({})).await;
    s.client_fingerprint = Some(portcullis::session::fingerprint("Firefox"));
    store.write(&s).await.unwrap();
    let c = cookie(&app, &value);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c), ("user-agent", "Firefox")])).await.status(), 200);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c), ("user-agent", "curl")])).await.status(), 401);
    assert!(!redis.exists(&session_key(&s.id)));
    app.shutdown().await;
}

#[tokio::test]
async fn redis_down_is_503_never_ok_then_recovers() {
    let (mut redis, app, _v) = setup("").await;
    let (value, _) = app.login("alice", json!({})).await;
    let c = cookie(&app, &value);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);

    // Hung Redis: every check times out into a 503.
    redis.pause();
    for _ in 0..3 {
        let r = app.check(request("GET", "/", &[("cookie", &c)])).await;
        assert_eq!(r.status(), 503, "{r:?}");
        assert!(r.header("retry-after").is_some());
    }
    redis.resume();
    assert!(
        crate::harness::eventually(Duration::from_secs(5), async || {
            app.check(request("GET", "/", &[("cookie", &c)])).await.status() == 200
        })
        .await
    );

    // Redis gone: 503, and gRPC health reports NOT_SERVING; back: serving again.
    redis.stop();
    for _ in 0..3 {
        assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 503);
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.server.grpc_addr)).unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.connect().await.unwrap());
    let status = |h: &mut tonic_health::pb::health_client::HealthClient<_>| {
        let mut h = h.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest { service: "envoy.service.auth.v3.Authorization".into() })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1)
        }
    };
    assert!(crate::harness::eventually(Duration::from_secs(5), async || status(&mut health).await == 2).await);
    let http = format!("http://{}/readyz", app.server.http_addr);
    assert_eq!(reqwest::get(&http).await.unwrap().status(), 503);

    redis.restart();
    let (value, _) = app.login("alice", json!({})).await; // the old data went with the old server
    let c = cookie(&app, &value);
    assert!(
        crate::harness::eventually(Duration::from_secs(5), async || {
            app.check(request("GET", "/", &[("cookie", &c)])).await.status() == 200
        })
        .await
    );
    assert!(crate::harness::eventually(Duration::from_secs(5), async || status(&mut health).await == 1).await);
    assert_eq!(reqwest::get(&http).await.unwrap().status(), 200);
    app.shutdown().await;
}

/// The gRPC listener routes health checks to tonic-health and Check to the authorizer; any other method, of
/// either service or of none, is UNIMPLEMENTED and never reaches a decision.
#[tokio::test]
async fn the_grpc_listener_answers_only_check_and_health() {
    let (_redis, app, _v) = setup("").await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.server.grpc_addr)).unwrap();
    let channel = channel.connect().await.unwrap();
    for path in
        ["/envoy.service.auth.v3.Authorization/Nope", "/grpc.health.v1.Health/Nope", "/other.Service/Check", "/"]
    {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let r = grpc.unary(tonic::Request::new(()), path.parse().unwrap(), codec).await;
        assert_eq!(r.map(|_| ()).unwrap_err().code(), tonic::Code::Unimplemented, "{path}");
    }
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = async || {
        let asked = tonic_health::pb::HealthCheckRequest { service: "envoy.service.auth.v3.Authorization".into() };
        health.clone().check(asked).await.is_ok_and(|r| r.into_inner().status == 1)
    };
    assert!(crate::harness::eventually(Duration::from_secs(5), serving).await, "health: SERVING");
    assert_eq!(app.check(request("GET", "/", &[])).await.status(), 401, "Check still answers");
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_are_denied_without_panic() {
    let (_redis, app, v) = setup("").await;
    let r = app.check(CheckRequest::default()).await;
    assert_eq!(r.status(), 400);
    assert_ne!(r.grpc_code(), 0);
    let weird_cookie = format!("{}=;;;==={}", app.cookie_name(), "\u{0}\u{7f}é");
    let long = "x".repeat(64 * 1024);
    for headers in [
        vec![("cookie", weird_cookie.as_str())],
        vec![("cookie", long.as_str())],
        vec![("cookie", "="), ("accept", "\u{1}")],
        vec![("cookie", "GATEWAY_SESSION")],
    ] {
        let r = app.check(request("", "", &headers)).await;
        assert_eq!(r.status(), 401, "{headers:?}");
    }
    assert_eq!(v.calls(), 0);
    // The server is still alive.
    assert_eq!(app.check(request("GET", "/", API)).await.status(), 401);
    app.shutdown().await;
}

/// A Check as the service decodes it (`portcullis::authz::wire`), so a header can hold bytes envoy-types'
/// `String`s cannot: what a broken or hostile client of the gRPC port could send.
async fn raw_check(app: &TestApp, cookie: Vec<u8>) -> crate::harness::app::Checked {
    use portcullis::authz::wire;
    let http = wire::HttpRequest {
        method: "GET".into(),
        path: "/api/me".into(),
        headers: vec![wire::Entry { key: "cookie".into(), value: cookie.into() }],
        ..Default::default()
    };
    let request = wire::Request { http: Some(http) };
    let req = wire::CheckRequest {
        attributes: Some(wire::AttributeContext { request: Some(request), ..Default::default() }),
    };
    let url = format!("http://{}", app.server.grpc_addr);
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check");
    let codec = tonic_prost::ProstCodec::default();
    crate::harness::app::Checked(grpc.unary(tonic::Request::new(req), path, codec).await.unwrap().into_inner())
}

#[tokio::test]
async fn a_header_that_is_not_utf8_is_a_bad_request() {
    let (_redis, app, v) = setup("").await;
    let (value, _) = app.login("alice", json!({})).await;
    let good = cookie(&app, &value).into_bytes();
    assert_eq!(raw_check(&app, good.clone()).await.status(), 200, "the same request with a valid cookie");
    let calls = v.calls();
    let mut bad = good;
    bad.extend_from_slice(b"; theme=\xff\xfe");
    let r = raw_check(&app, bad).await;
    assert_eq!(r.status(), 400, "{r:?}");
    assert_eq!(r.header("x-auth-user-id"), None);
    assert_eq!(v.calls(), calls, "denied before any session was read or revalidated");
    assert_eq!(app.check(request("GET", "/", API)).await.status(), 401, "the server is still serving");
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_checks() {
    let (_redis, app, v) = setup("").await;
    let (value, _) = app.login("alice", json!({})).await;
    v.delay_ms.store(500, Ordering::SeqCst);
    let mut client = app.client.clone();
    let req = request("GET", "/", &[("cookie", &cookie(&app, &value))]);
    let inflight = tokio::spawn(async move { client.check(req).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.shutdown().await;
    let resp = inflight.await.unwrap().expect("in-flight check answered").into_inner();
    assert_eq!(crate::harness::app::Checked(resp).status(), 200);
}

#[tokio::test]
async fn metrics_are_exposed() {
    let (_redis, app, _v) = setup("").await;
    app.check(request("GET", "/", API)).await;
    let body = reqwest::get(format!("http://{}/metrics", app.server.http_addr)).await.unwrap().text().await.unwrap();
    assert!(
        body.contains("portcullis_check_total{decision=\"deny\",reason=\"no_cookie\",dry_run=\"false\"}"),
        "{body}"
    );
    assert!(body.contains("portcullis_check_duration_seconds_bucket"), "{body}");
    assert!(body.contains("portcullis_build_info{"), "{body}");
    assert_eq!(reqwest::get(format!("http://{}/healthz", app.server.http_addr)).await.unwrap().status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn redis_cluster_mode_serves_checks() {
    let cluster = crate::harness::redis::RedisCluster::start();
    let mut cfg = config("redis://127.0.0.1:1", "");
    cfg.redis.mode = portcullis::config::RedisMode::Cluster;
    cfg.redis.url = None;
    cfg.redis.urls = cluster.urls();
    let v = StaticValidator::new();
    let app = TestApp::with_validator(cfg, v.clone()).await;
    // Sessions spread over the slots: several users, each checked, then one revoked.
    let mut cookies = Vec::new();
    for user in ["alice", "bob", "carol", "dave"] {
        let (value, s) = app.login(user, json!({"groups": ["dev"]})).await;
        cookies.push((cookie(&app, &value), s));
    }
    for (c, s) in &cookies {
        let r = app.check(request("GET", "/", &[("cookie", c)])).await;
        assert_eq!(r.status(), 200, "{r:?}");
        assert_eq!(r.header("x-auth-user-id").as_deref(), Some(s.user_id.as_str()));
    }
    v.fail_with(Some(IdpError::Revoked("gone".into())));
    assert_eq!(app.check(request("GET", "/", &[("cookie", &cookies[0].0)])).await.status(), 401);
    v.fail_with(None);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &cookies[0].0)])).await.status(), 401, "deleted");
    assert_eq!(app.check(request("GET", "/", &[("cookie", &cookies[1].0)])).await.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn redis_sentinel_mode_follows_a_failover() {
    use crate::harness::redis::{RedisSentinel, SENTINEL_MASTER};
    let mut rs = RedisSentinel::start();
    let mut cfg = config("redis://127.0.0.1:1", "");
    cfg.redis.mode = portcullis::config::RedisMode::Sentinel;
    cfg.redis.url = None;
    cfg.redis.urls = vec![rs.url()];
    cfg.redis.sentinel_master = Some(SENTINEL_MASTER.into());
    let v = StaticValidator::new();
    let app = TestApp::with_validator(cfg, v).await;
    let (value, s) = app.login("alice", json!({})).await;
    let c = cookie(&app, &value);
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200);
    assert!(rs.exists_on(rs.master, &session_key(&s.id)), "written to the master Sentinel named");
    // Replication is asynchronous: kill the master only once the replica holds alice's session, or a loaded
    // machine loses it with the master (the test's flake, not the product's).
    let mut replicated = false;
    for _ in 0..100 {
        if rs.exists_on(rs.replica, &session_key(&s.id)) {
            replicated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(replicated, "the replica never received alice's session");

    rs.kill_master();
    // The master is gone: a call fails (503, never OK on a stale answer), which makes portcullis ask
    // Sentinel again (the health task may be the one to notice first).
    let store = app.server.authorizer.store();
    let mut created = None;
    for _ in 0..20 {
        let new = portcullis::session::NewSession {
            user_id: "bob".into(),
            provider: "corp".into(),
            sid: None,
            tokens: portcullis::session::Tokens {
                id_token: crate::harness::app::fake_jwt(json!({})),
                access_token: "at".into(),
                refresh_token: None,
            },
            client_fingerprint: None,
        };
        if let Ok(ok) = store.create(new, portcullis::now()).await {
            created = Some(ok);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (value2, s2) = created.expect("a session could be created after the failover");
    assert_eq!(app.check(request("GET", "/", &[("cookie", &c)])).await.status(), 200, "alice's replicated session");
    assert!(rs.exists_on(rs.replica, &session_key(&s2.id)), "new sessions go to the new master");
    assert_eq!(app.check(request("GET", "/", &[("cookie", &cookie(&app, &value2))])).await.status(), 200);
    app.shutdown().await;
}

/// Redis closing portcullis's connections (a restart, a failover, `CLIENT KILL`, a proxy's idle timeout)
/// costs no check once Redis answers again: the read that meets the dead connection is sent again on a new one. Before, the first
/// check after each close was a 503. `portcullis serve` from a config file, with the client cache off and on.
#[tokio::test]
async fn redis_closing_the_connections_fails_no_check() {
    use crate::served::{Config, Served};
    const UNKNOWN: &str = "GATEWAY_SESSION=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for cache in [false, true] {
        let mut redis = RedisServer::start();
        let served = Served::config(&Config::offline(&format!(
            "url = {:?}\ntimeout = \"5s\"\nclient_cache = {cache}",
            redis.url()
        )));
        assert!(served.wait_ready().await, "{}", served.log());
        for round in 0..5 {
            assert_eq!(served.check(&[("cookie", UNKNOWN)]).await, 401, "cache {cache}, round {round}");
            if round == 3 {
                redis.restart();
            } else if round == 4 {
                // Down long enough for the readiness probe to meet the refusal first.
                redis.stop();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                redis.restart();
            } else {
                let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
                assert!(killed.trim().parse::<u32>().is_ok_and(|n| n >= 1), "nothing to kill: {killed}");
                if round == 1 {
                    // The readiness probe first: it too meets the dead connections (both, with the cache).
                    assert_eq!(served.readyz().await, Some(200), "cache {cache}: readiness after the kill");
                }
            }
            // 401: the session read reached Redis (an unknown session); 503 would be the dead connection.
            for _ in 0..3 {
                assert_eq!(served.check(&[("cookie", UNKNOWN)]).await, 401, "cache {cache}, round {round}");
            }
        }
        assert!(served.log().contains("redis connection lost"), "{}", served.log());
    }
}
