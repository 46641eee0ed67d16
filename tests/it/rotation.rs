//! Two-phase key rotation across replicas: a session this replica cannot judge (a key id or provider it
//! lacks) answers 503 and stays in Redis for a replica that can.

use serde_json::json;

use crate::harness::app::{config_with_keys, request, StaticValidator, TestApp};
use crate::harness::redis::RedisServer;
use portcullis::idp::Validators;
use portcullis::session::store::session_key;

fn cookie(app: &TestApp, v: &str) -> String {
    format!("{}={v}", app.cookie_name())
}

/// A replica on `redis` with encrypting keys `enc` and decrypt-only keys `dec`.
async fn replica(redis: &RedisServer, enc: &[&String], dec: &[&String]) -> TestApp {
    let enc: Vec<String> = enc.iter().map(|k| k.to_string()).collect();
    let dec = dec.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ");
    let cfg = config_with_keys(&redis.url(), &enc, &format!("decrypt_only_keys = [{dec}]"));
    TestApp::with_validator(cfg, StaticValidator::new()).await
}

/// Status and deny reason of one Check of `value` through `app`.
async fn judge(app: &TestApp, value: &str) -> (u16, String) {
    let r = app.check(request("GET", "/api", &[("accept", "application/json"), ("cookie", &cookie(app, value))])).await;
    let reason = r.0.status.as_ref().map(|s| s.message.clone()).unwrap_or_default();
    assert!(r.header("set-cookie").is_none() || r.status() == 200, "no cookie cleared: {r:?}");
    (r.status(), reason)
}

#[tokio::test]
async fn two_phase_rotation_never_deletes_a_session() {
    let redis = RedisServer::start();
    let (old, new) = (portcullis::crypto::generate_key(), portcullis::crypto::generate_key());

    // Phase 1 half rolled out: A knows `new` decrypt-only, B does not yet. Both still seal with `old`.
    let a = replica(&redis, &[&old], &[&new]).await;
    let b = replica(&redis, &[&old], &[]).await;
    let (va, sa) = a.login("alice", json!({})).await;
    let (vb, sb) = b.login("bob", json!({})).await;
    for app in [&a, &b] {
        for v in [&va, &vb] {
            assert_eq!(judge(app, v).await.0, 200);
        }
    }
    b.shutdown().await;

    // Phase 2 half rolled out: A seals with `new`; B (phase 1 everywhere now) still seals with `old`.
    a.shutdown().await;
    let a = replica(&redis, &[&new, &old], &[]).await;
    let b = replica(&redis, &[&old], &[&new]).await;
    let (va2, sa2) = a.login("carol", json!({})).await;
    let (vb2, sb2) = b.login("dave", json!({})).await;
    for app in [&a, &b] {
        for v in [&va, &vb, &va2, &vb2] {
            assert_eq!(judge(app, v).await, (200, String::new()));
        }
    }

    // A replica that skipped phase 1 meets a session sealed under `new`: 503 unknown_key, session kept.
    let c = replica(&redis, &[&old], &[]).await;
    assert_eq!(judge(&c, &va2).await, (503, "unknown_key".to_string()));
    assert_eq!(judge(&c, &vb2).await.0, 200, "sessions under a key it has still pass");
    for s in [&sa, &sb, &sa2, &sb2] {
        assert!(redis.exists(&session_key(&s.id)), "session {} kept", s.user_id);
    }
    assert_eq!(judge(&a, &va2).await.0, 200, "the replica that can judge it still allows");
    for app in [a, b, c] {
        app.shutdown().await;
    }
}

#[tokio::test]
async fn a_session_for_a_provider_this_replica_lacks_is_503_and_kept() {
    let redis = RedisServer::start();
    let key = portcullis::crypto::generate_key();
    let a =
        TestApp::with_validator(config_with_keys(&redis.url(), std::slice::from_ref(&key), ""), StaticValidator::new())
            .await;
    let (value, s) = a.login("alice", json!({})).await;
    let b = TestApp::start(config_with_keys(&redis.url(), std::slice::from_ref(&key), ""), Validators::new()).await;
    assert_eq!(judge(&b, &value).await, (503, "unknown_provider".to_string()));
    assert!(redis.exists(&session_key(&s.id)));
    assert_eq!(judge(&a, &value).await.0, 200);
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn a_rotation_without_an_encrypting_key_or_with_a_repeated_kid_is_refused() {
    let key = portcullis::crypto::generate_key();
    let text = |session: &str| crate::served::minimal("redis://127.0.0.1:1", session);
    let both = portcullis::config::Config::from_toml(&text(&format!(
        "encryption_keys = [\"{key}\"]\ndecrypt_only_keys = [\"{key}\"]"
    )));
    assert!(format!("{:?}", both.err()).contains("decrypt_only_keys"));
    let none = portcullis::config::Config::from_toml(&text(&format!("decrypt_only_keys = [\"{key}\"]")));
    assert!(none.is_err());
}
