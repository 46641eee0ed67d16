//! What the logs never contain: the real binary at the most verbose level through a full sign-in, checks,
//! a delegated token (exchanged and cached), a tampered cookie and a logout; then its log is searched for
//! every secret the run produced.

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use crate::harness::app::request;
use crate::harness::free_port;
use crate::harness::idp::{sign_in, IdpOptions, IdpServer, CLIENT_SECRET};
use crate::harness::redis::RedisServer;
use crate::served::{Config, Served};

#[tokio::test]
async fn no_token_cookie_or_session_id_reaches_the_logs_at_any_level() {
    let redis = RedisServer::start();
    let (grpc, http) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{http}");
    let idp = IdpServer::start_with(IdpOptions::redirecting_to(&base)).await;
    let key = portcullis::crypto::generate_key();
    let config = Config { server: "log_format = \"json\"".into(), ..Config::ping(&redis.url(), &idp.issuer(), &key) };
    let mut served = Served::spawn(grpc, http, &config.text(grpc, http), |c| {
        c.env("RUST_LOG", "trace");
    });
    assert!(served.wait_ready().await, "portcullis did not become ready");

    // A full sign-in.
    let browser =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).cookie_store(true).build().unwrap();
    let callback = sign_in(&browser, &base, &idp.issuer(), "alice", "/", |_| {}).await;
    let r = browser.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let set = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    let value = set.strip_prefix("GATEWAY_SESSION=").and_then(|v| v.split(';').next()).unwrap().to_string();
    let session_id = portcullis::session::cookie::session_id(&value);

    // Checks: allowed, tampered, missing.
    let mut grpc_client = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
    let c = format!("GATEWAY_SESSION={value}");
    let tampered = format!("GATEWAY_SESSION={}x", &value[..value.len() - 1]);
    for (cookie, want) in [(c.as_str(), 200), (tampered.as_str(), 401), ("other=1", 401)] {
        let resp = grpc_client.check(request("GET", "/x", &[("cookie", cookie)])).await.unwrap().into_inner();
        assert_eq!(crate::harness::app::Checked(resp).status(), want, "{cookie}");
    }
    // A route with a delegated token (RFC 8693 exchange at the IdP), twice: exchanged, then from the cache.
    let mut delegating = request("GET", "/orders", &[("cookie", c.as_str())]);
    let ext = &mut delegating.attributes.as_mut().unwrap().context_extensions;
    ext.insert("portcullis.delegate".into(), "orders.read".into());
    let mut delegated = Vec::new();
    for _ in 0..2 {
        let resp = grpc_client.check(delegating.clone()).await.unwrap().into_inner();
        let checked = crate::harness::app::Checked(resp);
        assert_eq!(checked.status(), 200, "{checked:?}");
        delegated.push(checked.header("x-auth-delegated-token").expect("a delegated token"));
    }
    assert_eq!(delegated[0], delegated[1]);

    // The secrets of this run, read before logout deletes them.
    // The session's tokens and the shared M2M token, sealed and opened; the delegated token and its sealed copy.
    let mut secrets = vec![value.clone(), session_id.clone(), CLIENT_SECRET.to_string()];
    secrets.extend(crate::tracing::stored_secrets(&redis, &key, &session_id, &idp));
    secrets.push(delegated[0].clone());
    let stored: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(format!("session:{session_id}")).query(&mut redis.conn()).unwrap();
    let sealed = stored.iter().find(|(k, _)| k.starts_with("dlg:")).map(|(_, v)| v.clone()).expect("dlg field");
    secrets.push(sealed);

    let r = browser.post(format!("{base}/oauth2/logout")).header("origin", &base).send().await.unwrap();
    assert_eq!(r.status(), 302);

    served.terminate();
    let log = served.log();
    assert!(log.lines().count() > 10 && log.contains("\"level\":\"TRACE\""), "not at the most verbose level: {log}");
    assert!(log.contains("deny"), "the denies were logged");
    for s in &secrets {
        assert!(s.len() >= 16, "a secret too short to search for: {s}");
        let needle = &s[..s.len().min(24)];
        assert!(!log.contains(needle), "a secret prefix {needle:?}... appears in the log");
    }
}
