//! Private CAs, as an operator starts portcullis: `portcullis serve` from a config file, reaching a TLS-only
//! Redis that requires client certificates and the test IdP on HTTPS, both signed by a CA the `openssl` CLI
//! made for the test, which no public root trusts (`redis.ca_file`, `redis.client_cert_file`/`_key_file`,
//! `providers.<id>.ca_file`).

use crate::harness::idp::{IdpOptions, IdpServer};
use crate::harness::redis::{RedisCluster, RedisSentinel, RedisServer, SENTINEL_MASTER};
use crate::harness::tls::Pki;
use crate::harness::{eventually, free_port};
use crate::served::{Config, Served};

/// A well-formed session cookie naming no session: its Check reads Redis once (401 when Redis answered).
const UNKNOWN: &str = "GATEWAY_SESSION=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// The `[redis]` TLS keys for `pki`: the CA, and the client pair unless `client` is false.
fn redis_tls(pki: &Pki, client: bool) -> String {
    let mut s = format!("ca_file = {:?}\n", pki.path("ca.pem"));
    if client {
        s += &format!(
            "client_cert_file = {:?}\nclient_key_file = {:?}\n",
            pki.path("client.pem"),
            pki.path("client.key")
        );
    }
    s
}

/// The test IdP on HTTPS under `pki`'s CA, redirecting to a portcullis whose HTTP listener is on `http`.
async fn https_idp(pki: &Pki, http: u16) -> IdpServer {
    let base = format!("http://127.0.0.1:{http}");
    IdpServer::start_with(IdpOptions { tls: Some(pki.idp_tls()), ..IdpOptions::redirecting_to(&base) }).await
}

/// Signs `user` in through `served`'s login routes with a browser that trusts `pki` (the IdP is on HTTPS);
/// the session cookie as a `cookie` header value.
async fn sign_in(served: &Served, idp: &IdpServer, pki: &Pki, user: &str) -> String {
    let browser = pki.browser();
    let callback = crate::harness::idp::sign_in(&browser, &served.base(), &idp.issuer(), user, "/", |_| {}).await;
    let resp = browser.get(&callback).send().await.unwrap();
    assert_eq!(resp.status(), 302, "callback: {}", served.log());
    let set = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    set.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn a_private_ca_for_redis_and_the_idp_signs_in_and_allows() {
    let pki = Pki::new();
    let redis = RedisServer::start_tls(&pki);
    assert!(redis.url().starts_with("rediss://"));
    let (grpc, http) = (free_port(), free_port());
    let idp = https_idp(&pki, http).await;
    assert!(idp.issuer().starts_with("https://"));
    let mut config = Config::ping(&redis.url(), &idp.issuer(), &portcullis::crypto::generate_key());
    config.redis += &format!("\n{}", redis_tls(&pki, true));
    config.provider += &format!("\nca_file = {:?}", pki.path("ca.pem"));
    let served = Served::spawn(grpc, http, &config.text(grpc, http), |_| {});
    assert!(served.wait_ready().await, "not ready: {}", served.log());

    let cookie = sign_in(&served, &idp, &pki, "alice").await;
    // every_request: the Check introspects at the HTTPS IdP with the M2M token it fetched there.
    assert_eq!(served.check(&[("cookie", &cookie)]).await, 200, "{}", served.log());
    assert_eq!(served.check(&[("cookie", UNKNOWN)]).await, 401);
    assert!(redis.cli(&["--scan", "--pattern", "session:*"]).contains("session:"), "the session is in the TLS Redis");
    assert!(idp.count("/token/introspection").await >= 1, "{:?}", idp.stats().await);
    assert_eq!(idp.count("/token:client_credentials").await, 1, "{:?}", idp.stats().await);
}

#[tokio::test]
async fn without_the_private_ca_or_the_client_certificate_nothing_is_trusted_and_checks_fail_closed() {
    let pki = Pki::new();
    let redis = RedisServer::start_tls(&pki);
    let cases =
        [("no ca_file", String::new(), "certificate"), ("no client certificate", redis_tls(&pki, false), "redis")];
    for (name, keys, logged) in cases {
        let served = Served::config(&Config::offline(&format!("url = {:?}\n{keys}", redis.url())));
        // Up (it starts while Redis is unreachable) but never ready, and a Check that needs Redis is 503.
        assert!(
            eventually(std::time::Duration::from_secs(10), async || served.readyz().await == Some(503)).await,
            "{name}: {}",
            served.log()
        );
        assert_eq!(served.check(&[("cookie", UNKNOWN)]).await, 503, "{name}");
        assert!(served.log().to_lowercase().contains(logged), "{name}: {}", served.log());
    }

    // The IdP without the provider's ca_file: the login cannot even discover it, and says so.
    let (grpc, http) = (free_port(), free_port());
    let idp = https_idp(&pki, http).await;
    idp.reset_stats().await;
    let mut config = Config::ping(&redis.url(), &idp.issuer(), &portcullis::crypto::generate_key());
    config.redis += &format!("\n{}", redis_tls(&pki, true));
    let served = Served::spawn(grpc, http, &config.text(grpc, http), |_| {});
    assert!(served.wait_ready().await, "{}", served.log());
    let browser = pki.browser();
    let r = browser.get(format!("{}/oauth2/login", served.base())).query(&[("rd", "/")]).send().await.unwrap();
    assert_eq!(r.status(), 503, "{}", served.log());
    assert_eq!(idp.count("/.well-known/openid-configuration").await, 0, "no TLS handshake completed");
}

#[tokio::test]
async fn sentinel_over_tls_reaches_the_master_over_tls() {
    let pki = Pki::new();
    let rs = RedisSentinel::start_tls(&pki);
    let redis = format!(
        "mode = \"sentinel\"\nurls = [{:?}]\nsentinel_master = {SENTINEL_MASTER:?}\ntimeout = \"5s\"\n{}",
        rs.url(),
        redis_tls(&pki, true)
    );
    assert!(rs.url().starts_with("rediss://"));
    let served = Served::config(&Config::offline(&redis));
    // Ready means a PING answered on the master Sentinel named; the master takes TLS only, so that PING
    // went over TLS (redis-rs's default reaches the master in the clear).
    assert!(served.wait_ready().await, "{}", served.log());
    assert_eq!(served.check(&[("cookie", UNKNOWN)]).await, 401, "{}", served.log());
}

#[tokio::test]
async fn a_cluster_over_tls_with_a_private_ca() {
    let pki = Pki::new();
    let cluster = RedisCluster::start_tls(&pki);
    let redis = format!("mode = \"cluster\"\nurls = {:?}\ntimeout = \"5s\"\n{}", cluster.urls(), redis_tls(&pki, true));
    assert!(cluster.urls().iter().all(|u| u.starts_with("rediss://")));
    let served = Served::config(&Config::offline(&redis));
    assert!(served.wait_ready().await, "{}", served.log());
    // Answered 401 by the node that holds the key's slot: a read over TLS, not a 503.
    assert_eq!(served.check(&[("cookie", UNKNOWN)]).await, 401, "{}", served.log());
}

#[tokio::test]
async fn a_providers_ca_file_rewritten_in_place_is_trusted_after_the_reload() {
    let (pki, stranger) = (Pki::new(), Pki::new());
    let redis = RedisServer::start();
    let (grpc, http) = (free_port(), free_port());
    let idp = https_idp(&pki, http).await;
    // The bundle names another CA at first, as a rotation that has not reached this replica yet.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("idp-ca.pem");
    std::fs::copy(stranger.path("ca.pem"), &bundle).unwrap();
    let mut config = Config::ping(&redis.url(), &idp.issuer(), &portcullis::crypto::generate_key());
    config.provider += &format!("\nca_file = {bundle:?}");
    let served = Served::spawn(grpc, http, &config.text(grpc, http), |_| {});
    assert!(served.wait_ready().await, "{}", served.log());
    let login = async || {
        let browser = pki.browser();
        browser.get(format!("{}/oauth2/login", served.base())).query(&[("rd", "/")]).send().await.unwrap().status()
    };
    assert_eq!(login().await, 503, "another CA's bundle does not trust the IdP");

    // Written as a mounted Secret is updated: a new file renamed over the old one.
    let next = dir.path().join("idp-ca.pem.new");
    std::fs::copy(pki.path("ca.pem"), &next).unwrap();
    std::fs::rename(&next, &bundle).unwrap();
    // Polled in the log, not by starting logins: each started login counts toward the pending-login bound.
    // "configuration reloaded" is logged once the rebuilt providers are installed; "rebuilding the providers"
    // comes before the rebuild, and a login started between the two still met the old bundle.
    let reloaded = || {
        let log = served.log();
        log.contains("rebuilding the providers") && log.contains("configuration reloaded")
    };
    assert!(
        eventually(std::time::Duration::from_secs(15), async || reloaded()).await,
        "the rewritten bundle was not picked up: {}",
        served.log()
    );
    let cookie = sign_in(&served, &idp, &pki, "alice").await;
    assert_eq!(served.check(&[("cookie", &cookie)]).await, 200, "{}", served.log());
}

/// A Redis client certificate renewed in place, as cert-manager rewrites its Secret: the reload makes new
/// connections with the new pair, no restart. Before it, a pair from a CA Redis does not trust: 503.
#[tokio::test]
async fn a_redis_client_certificate_renewed_in_place_is_used_after_the_reload() {
    let (pki, stranger) = (Pki::new(), Pki::new());
    let redis = RedisServer::start_tls(&pki);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(stranger.path("client.pem"), &cert).unwrap();
    std::fs::copy(stranger.path("client.key"), &key).unwrap();
    let keys = format!("ca_file = {:?}\nclient_cert_file = {cert:?}\nclient_key_file = {key:?}", pki.path("ca.pem"));
    let served = Served::config(&Config::offline(&format!("url = {:?}\n{keys}", redis.url())));
    let refused = async || served.readyz().await == Some(503);
    assert!(eventually(std::time::Duration::from_secs(10), refused).await, "{}", served.log());
    assert_eq!(served.check(&[("cookie", UNKNOWN)]).await, 503, "a client certificate Redis does not trust");

    for (renewed, path) in [("client.pem", &cert), ("client.key", &key)] {
        let next = path.with_extension("new");
        std::fs::copy(pki.path(renewed), &next).unwrap();
        std::fs::rename(&next, path).unwrap();
    }
    let read = async || served.check(&[("cookie", UNKNOWN)]).await == 401;
    assert!(eventually(std::time::Duration::from_secs(15), read).await, "never read Redis: {}", served.log());
    assert!(served.log().contains("[redis] changed"), "{}", served.log());
    assert!(!served.log().contains("only takes effect on restart"), "{}", served.log());
}
