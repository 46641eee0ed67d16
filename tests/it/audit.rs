//! The audit line: the real binary (JSON logs), a real sign-in at the real IdP, then checks; every decision's
//! line is read back from its log.

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde_json::Value;

use crate::harness::app::{request, Checked};
use crate::harness::free_port;
use crate::harness::idp::{IdpOptions, IdpServer};
use crate::harness::redis::RedisServer;
use crate::served::{sign_in_at, Config, Served};

struct Running {
    served: Served,
    grpc: u16,
    base: String,
}

impl Running {
    /// Stops the binary and returns its audit lines.
    fn audit_lines(mut self) -> Vec<Value> {
        self.served.terminate();
        let log = self.served.log();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "portcullis::audit")
            .collect()
    }
}

async fn serve(redis: &RedisServer, idp_for: impl FnOnce(&str) -> IdpOptions, sample: &str) -> (Running, IdpServer) {
    let (grpc, http) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{http}");
    let idp = IdpServer::start_with(idp_for(&base)).await;
    let config = Config {
        server: format!("log_format = \"json\"\naudit_allow_sample = {sample}"),
        ..Config::ping(&redis.url(), &idp.issuer(), &portcullis::crypto::generate_key())
    };
    let served = Served::spawn(grpc, http, &config.text(grpc, http), |c| {
        c.env("RUST_LOG", "info");
    });
    assert!(served.wait_ready().await, "portcullis did not become ready");
    (Running { served, grpc, base }, idp)
}

#[tokio::test]
async fn every_decision_gets_one_audit_line_without_query_or_secrets() {
    let redis = RedisServer::start();
    let (r, idp) = serve(&redis, IdpOptions::redirecting_to, "1.0").await;
    let cookie = sign_in_at(&r.base, &idp, "alice").await;
    let mut grpc = AuthorizationClient::connect(format!("http://127.0.0.1:{}", r.grpc)).await.unwrap();
    let mut check = async |method: &str, path: &str, headers: &[(&str, &str)]| {
        Checked(grpc.check(request(method, path, headers)).await.unwrap().into_inner()).status()
    };
    assert_eq!(
        check("GET", "/reports?token=s3cr3t-query", &[("cookie", &cookie), ("x-request-id", "req-1")]).await,
        200
    );
    assert_eq!(check("POST", "/api/x?q=1", &[("x-request-id", "req-2")]).await, 401);
    let session_value = cookie.split_once('=').unwrap().1.to_string();
    let lines = r.audit_lines();

    let allow = lines.iter().find(|l| l["request_id"] == "req-1").expect("the allow's audit line");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["reason"], "ok");
    assert_eq!(allow["user"], "alice");
    assert_eq!(allow["provider"], "corp");
    assert_eq!(allow["method"], "GET");
    assert_eq!(allow["path"], "/reports", "the query is left out");
    assert_eq!(allow["dry_run"], false);
    assert_eq!(allow["level"], "INFO");
    assert!(allow["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{allow}");

    let deny = lines.iter().find(|l| l["request_id"] == "req-2").expect("the deny's audit line");
    assert_eq!((deny["decision"].as_str(), deny["reason"].as_str()), (Some("deny"), Some("no_cookie")));
    assert_eq!(
        (deny["user"].as_str(), deny["method"].as_str(), deny["path"].as_str()),
        (Some("-"), Some("POST"), Some("/api/x"))
    );
    assert_eq!(lines.iter().filter(|l| l["request_id"] == "req-1").count(), 1, "one line per decision");

    let text = lines.iter().map(Value::to_string).collect::<String>();
    let session_id = portcullis::session::cookie::session_id(&session_value);
    for secret in ["s3cr3t-query", session_value.as_str(), session_id.as_str()] {
        assert!(!text.contains(&secret[..secret.len().min(24)]), "{secret} in an audit line");
    }
}

#[tokio::test]
async fn sampling_drops_allows_but_never_denies() {
    let redis = RedisServer::start();
    let (r, idp) = serve(&redis, IdpOptions::redirecting_to, "0.0").await;
    let cookie = sign_in_at(&r.base, &idp, "bob").await;
    let mut grpc = AuthorizationClient::connect(format!("http://127.0.0.1:{}", r.grpc)).await.unwrap();
    for i in 0..5 {
        let id = format!("allow-{i}");
        let resp = grpc.check(request("GET", "/x", &[("cookie", &cookie), ("x-request-id", &id)])).await.unwrap();
        assert_eq!(Checked(resp.into_inner()).status(), 200);
        let id = format!("deny-{i}");
        let resp = grpc.check(request("GET", "/x", &[("x-request-id", &id)])).await.unwrap();
        assert_eq!(Checked(resp.into_inner()).status(), 401);
    }
    let lines = r.audit_lines();
    let count =
        |prefix: &str| lines.iter().filter(|l| l["request_id"].as_str().is_some_and(|s| s.starts_with(prefix))).count();
    assert_eq!(count("deny-"), 5, "every deny is audited");
    assert_eq!(count("allow-"), 0, "audit_allow_sample = 0.0 drops every allow");
}
