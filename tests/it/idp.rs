//! IdP revalidation against the real OpenID provider (tests/idp) with real logins, and Microsoft Graph as
//! a wiremock mock. Assertions are on status codes, Redis keys and IdP call counts, never on timings.

use std::sync::Arc;
use std::time::Duration;

use portcullis::config::Config;
use portcullis::session::{NewSession, Session, Tokens};
use serde_json::json;
use wiremock::matchers::{header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::app::{config, fake_jwt, request, Checked, TestApp};
use crate::harness::eventually;
use crate::harness::idp::{provider_toml, start_app, IdpM2m, IdpOptions, IdpServer, CLIENT_ID, TENANT};
use crate::harness::redis::RedisServer;

const INTROSPECTION: &str = "/token/introspection";
const REFRESH: &str = "/token:refresh_token";

struct Env {
    redis: RedisServer,
    idp: IdpServer,
    m2m: Arc<IdpM2m>,
    cfg: Config,
    app: TestApp,
}

/// Redis, the IdP and one portcullis with provider `name` (kind `kind`); `extra` is top-level TOML.
async fn setup(name: &str, kind: &str, provider_extra: &str, extra: &str) -> Env {
    let redis = RedisServer::start();
    let idp = IdpServer::start().await;
    let m2m = IdpM2m::new(&idp);
    let toml = format!("{extra}\n{}", provider_toml(name, kind, &idp, provider_extra));
    let mut cfg = config(&redis.url(), &toml);
    // These tests load the machine with concurrent checks; Redis failure is not what they are about.
    cfg.redis.timeout = Duration::from_secs(5);
    let app = start_app(&cfg, m2m.clone()).await;
    Env { redis, idp, m2m, cfg, app }
}

/// Creates a session as the login route would; returns the cookie value and the stored session.
pub(crate) async fn plant(app: &TestApp, provider: &str, user_id: &str, tokens: Tokens) -> (String, Session) {
    let new = NewSession {
        user_id: user_id.to_string(),
        provider: provider.to_string(),
        sid: None,
        tokens,
        client_fingerprint: None,
    };
    app.server.authorizer.store().create(new, portcullis::now()).await.expect("create session")
}

async fn check(app: &TestApp, cookie: &str) -> Checked {
    let c = format!("{}={cookie}", app.cookie_name());
    app.check(request("GET", "/api/me", &[("cookie", c.as_str())])).await
}

fn session_field(redis: &RedisServer, s: &Session, field: &str) -> Option<String> {
    redis::cmd("HGET").arg(format!("session:{}", s.id)).arg(field).query(&mut redis.conn()).expect("HGET")
}

fn exp_of(id_token: &str) -> i64 {
    portcullis::idp::claims::unverified_payload(id_token).and_then(|c| c["exp"].as_i64()).expect("exp")
}

/// Waits until the clock has passed `exp` (the ID token is expired by portcullis's clock).
async fn until_expired(exp: i64) {
    assert!(eventually(Duration::from_secs(10), async || portcullis::now() > exp).await);
}

#[tokio::test]
async fn real_session_allows_and_revocation_denies_the_very_next_check() {
    let e = setup("corp", "ping", "", "").await;
    let tokens = e.idp.login("alice").await;
    let at = tokens.access_token.clone();
    let (cookie, s) = plant(&e.app, "corp", "alice", tokens).await;

    let r = check(&e.app, &cookie).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.header("x-auth-user-id").as_deref(), Some("alice"));
    assert_eq!(r.header("x-auth-email").as_deref(), Some("alice@example.com"));
    assert_eq!(r.header("x-auth-name").as_deref(), Some("User alice"));
    assert_eq!(r.header("x-auth-groups").as_deref(), Some("users,team-alice"));
    assert_eq!(e.idp.count(INTROSPECTION).await, 1, "one introspection per check");

    e.idp.revoke(&at).await;
    let r = check(&e.app, &cookie).await;
    assert_eq!(r.status(), 401, "{r:?}");
    assert!(!e.redis.exists(&format!("session:{}", s.id)), "a revoked session is deleted");
    assert_eq!(e.idp.count(INTROSPECTION).await, 2);
    assert_eq!(e.idp.count(REFRESH).await, 1, "inactive token: the refresh token got its one try");
    assert_eq!(*e.m2m.fetches.lock().unwrap(), 1, "introspection used the cached M2M token");
    e.app.shutdown().await;
}

#[tokio::test]
async fn max_staleness_reuses_a_validation_and_denies_once_it_is_stale() {
    let e = setup("corp", "ping", "", "[revalidation]\nmode = \"max_staleness\"\nmax_staleness = \"3s\"").await;
    let tokens = e.idp.login("alice").await;
    let at = tokens.access_token.clone();
    let (cookie, s) = plant(&e.app, "corp", "alice", tokens).await;
    assert_eq!(check(&e.app, &cookie).await.status(), 200);
    for _ in 0..5 {
        assert_eq!(check(&e.app, &cookie).await.status(), 200);
    }
    assert_eq!(e.idp.count(INTROSPECTION).await, 1, "within max_staleness the result is reused");

    e.idp.revoke(&at).await;
    e.idp.reset_stats().await;
    let denied = eventually(Duration::from_secs(20), async || check(&e.app, &cookie).await.status() == 401).await;
    assert!(denied, "revocation must be seen once the cached validation is stale");
    assert!(!e.redis.exists(&format!("session:{}", s.id)));
    // However many checks the loop made, only the first one past max_staleness asked the IdP.
    assert_eq!(e.idp.count(INTROSPECTION).await, 1);
    assert_eq!(e.idp.count(REFRESH).await, 1);
    e.app.shutdown().await;
}

#[tokio::test]
async fn expired_id_token_is_refreshed_and_the_session_updated() {
    let e = setup("corp", "ping", "", "").await;
    e.idp.set_ttl(json!({"IdToken": 1})).await;
    let tokens = e.idp.login("alice").await;
    e.idp.set_ttl(json!({"IdToken": 3600})).await;
    let exp = exp_of(&tokens.id_token);
    let (cookie, s) = plant(&e.app, "corp", "alice", tokens.clone()).await;
    let before = session_field(&e.redis, &s, "idToken");
    until_expired(exp).await;

    let r = check(&e.app, &cookie).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.header("x-auth-email").as_deref(), Some("alice@example.com"));
    assert_eq!(e.idp.count(REFRESH).await, 1);
    let after = session_field(&e.redis, &s, "idToken");
    assert!(after.is_some() && after != before, "the refreshed ID token is stored");
    let stored = e.app.server.authorizer.store().load(&s.id).await.unwrap().unwrap();
    let stored = e.app.server.authorizer.store().decrypt(&stored).unwrap();
    assert_ne!(stored.id_token, tokens.id_token);
    assert_ne!(stored.refresh_token, tokens.refresh_token, "the rotated refresh token is stored");
    assert!(exp_of(&stored.id_token) > portcullis::now());

    // The next check introspects the new access token; no second refresh.
    assert_eq!(check(&e.app, &cookie).await.status(), 200);
    assert_eq!(e.idp.count(REFRESH).await, 1);
    e.app.shutdown().await;
}

/// A Check opens only the tokens its validator uses: the refresh token stays sealed until a refresh needs it,
/// and a tampered one is found then (401, deleted, never sent to the IdP). A tampered access token is found
/// by the introspection that needs it, before any IdP call.
#[tokio::test]
async fn a_stored_token_is_opened_only_when_the_check_uses_it() {
    let e = setup("corp", "ping", "", "").await;
    let tokens = e.idp.login("alice").await;
    let at = tokens.access_token.clone();
    let (cookie, s) = plant(&e.app, "corp", "alice", tokens).await;
    // Another field's valid ciphertext: its AEAD binds it to `idToken`, so as a refresh token it cannot open.
    let sealed_id = session_field(&e.redis, &s, "idToken").expect("idToken");
    let key = format!("session:{}", s.id);
    redis::cmd("HSET").arg(&key).arg("refreshToken").arg(&sealed_id).query::<()>(&mut e.redis.conn()).unwrap();

    let r = check(&e.app, &cookie).await;
    assert_eq!(r.status(), 200, "the refresh token is not needed while the access token is active: {r:?}");
    assert_eq!(e.idp.count(INTROSPECTION).await, 1);

    e.idp.revoke(&at).await;
    let r = check(&e.app, &cookie).await;
    assert_eq!(r.status(), 401, "{r:?}");
    assert_eq!(r.0.status.as_ref().map(|s| s.message.as_str()), Some("tampered"));
    assert!(!e.redis.exists(&key), "a session whose refresh token does not open is deleted");
    assert_eq!(e.idp.count(INTROSPECTION).await, 2);
    assert_eq!(e.idp.count(REFRESH).await, 0, "nothing was sent to the token endpoint");

    let (cookie, s) = plant(&e.app, "corp", "alice", e.idp.login("alice").await).await;
    let key = format!("session:{}", s.id);
    redis::cmd("HSET").arg(&key).arg("accessToken").arg(&sealed_id).query::<()>(&mut e.redis.conn()).unwrap();
    let r = check(&e.app, &cookie).await;
    assert_eq!(r.0.status.as_ref().map(|s| s.message.as_str()), Some("tampered"), "{r:?}");
    assert!(!e.redis.exists(&key));
    assert_eq!(e.idp.count(INTROSPECTION).await, 2, "a tampered access token is never introspected");
    e.app.shutdown().await;
}

#[tokio::test]
async fn twenty_concurrent_checks_on_two_instances_refresh_once() {
    let e = setup("corp", "ping", "", "").await;
    let second = start_app(&e.cfg, e.m2m.clone()).await;
    e.idp.set_ttl(json!({"IdToken": 1})).await;
    let tokens = e.idp.login("alice").await;
    e.idp.set_ttl(json!({"IdToken": 3600})).await;
    let exp = exp_of(&tokens.id_token);
    let (cookie, _s) = plant(&e.app, "corp", "alice", tokens).await;
    until_expired(exp).await;
    e.idp.reset_stats().await;

    let checks = (0..20).map(|i| {
        let app = if i % 2 == 0 { &e.app } else { &second };
        check(app, &cookie)
    });
    let results = futures::future::join_all(checks).await;
    let statuses: Vec<u16> = results.iter().map(Checked::status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(e.idp.count(REFRESH).await, 1, "{:?}", e.idp.stats().await);
    assert!(!e.redis.exists(&format!("lock:refresh:{}", _s.id)), "the lock is released");
    second.shutdown().await;
    e.app.shutdown().await;
}

#[tokio::test]
async fn a_check_abandoned_mid_refresh_still_stores_the_rotated_tokens() {
    let e = setup("corp", "ping", "", "").await;
    e.idp.set_ttl(json!({"IdToken": 1})).await;
    let tokens = e.idp.login("alice").await;
    e.idp.set_ttl(json!({"IdToken": 3600})).await;
    let exp = exp_of(&tokens.id_token);
    let (cookie, s) = plant(&e.app, "corp", "alice", tokens).await;
    until_expired(exp).await;
    e.idp.delay("/token", 1500).await;
    // Envoy gives up on the Check long before the IdP answers; the refresh must still land.
    let gave_up = tokio::time::timeout(Duration::from_millis(300), check(&e.app, &cookie)).await;
    assert!(gave_up.is_err(), "the check was expected to be abandoned mid-refresh");
    assert!(
        eventually(Duration::from_secs(20), async || !e.redis.exists(&format!("lock:refresh:{}", s.id))
            && e.idp.count(REFRESH).await == 1)
        .await
    );
    e.idp.delay("/token", 0).await;
    let r = check(&e.app, &cookie).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(e.idp.count(REFRESH).await, 1, "the abandoned refresh was stored, not redone");
    e.app.shutdown().await;
}

#[tokio::test]
async fn hundred_concurrent_checks_share_one_introspection() {
    let e = setup("corp", "ping", "timeout = \"20s\"", "").await;
    let (cookie, _) = plant(&e.app, "corp", "alice", e.idp.login("alice").await).await;
    // Slow introspection, so all hundred are in flight together.
    e.idp.delay(INTROSPECTION, 1500).await;
    e.idp.reset_stats().await;
    let results = futures::future::join_all((0..100).map(|_| check(&e.app, &cookie))).await;
    let statuses: Vec<u16> = results.iter().map(Checked::status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(e.idp.count(INTROSPECTION).await, 1);
    e.app.shutdown().await;
}

#[tokio::test]
async fn forged_id_tokens_are_denied_without_asking_the_idp() {
    let e = setup("corp", "ping", "", "").await;
    let real = e.idp.login("alice").await;
    let now = portcullis::now();
    let claims = |iss: &str, aud: &str| json!({"sub": "alice", "iss": iss, "aud": aud, "exp": now + 3600, "iat": now});
    let with = |mut base: serde_json::Value, over: serde_json::Value| {
        for (k, v) in over.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    };
    let issuer = e.idp.issuer();
    let forged = [
        ("unknown key", e.idp.mint(claims(&issuer, CLIENT_ID), "stranger").await),
        ("wrong aud", e.idp.mint(claims(&issuer, "someone-else"), "provider").await),
        ("wrong iss", e.idp.mint(claims("https://evil.example.com", CLIENT_ID), "provider").await),
        ("alg none", fake_jwt(claims(&issuer, CLIENT_ID))),
        (
            "azp of another client",
            e.idp
                .mint(with(claims(&issuer, CLIENT_ID), json!({"aud": [CLIENT_ID, "api"], "azp": "api"})), "provider")
                .await,
        ),
        (
            "several audiences, no azp",
            e.idp.mint(with(claims(&issuer, CLIENT_ID), json!({"aud": [CLIENT_ID, "api"]})), "provider").await,
        ),
        (
            "nbf in the future",
            e.idp.mint(with(claims(&issuer, CLIENT_ID), json!({"nbf": now + 3600})), "provider").await,
        ),
        (
            "iat in the future",
            e.idp.mint(with(claims(&issuer, CLIENT_ID), json!({"iat": now + 3600})), "provider").await,
        ),
    ];
    // Control: the same minting with the right claims is accepted.
    let good = e.idp.mint(claims(&issuer, CLIENT_ID), "provider").await;
    let (cookie, _) = plant(&e.app, "corp", "alice", Tokens { id_token: good, ..real.clone() }).await;
    assert_eq!(check(&e.app, &cookie).await.status(), 200);
    e.idp.reset_stats().await;

    // More unknown kids do not mean more JWKS fetches.
    for _ in 0..3 {
        let id_token = e.idp.mint(claims(&issuer, CLIENT_ID), "stranger").await;
        let (cookie, _) = plant(&e.app, "corp", "alice", Tokens { id_token, ..real.clone() }).await;
        assert_eq!(check(&e.app, &cookie).await.status(), 401);
    }
    for (what, id_token) in forged {
        let (cookie, s) = plant(&e.app, "corp", "alice", Tokens { id_token, ..real.clone() }).await;
        let r = check(&e.app, &cookie).await;
        assert_eq!(r.status(), 401, "{what}: {r:?}");
        assert!(!e.redis.exists(&format!("session:{}", s.id)), "{what}: session deleted");
    }
    let stats = e.idp.stats().await;
    assert_eq!(stats.get(INTROSPECTION), None, "{stats:?}");
    assert!(stats.get("/jwks").copied().unwrap_or(0) <= 1, "unknown kids are rate-limited: {stats:?}");
    e.app.shutdown().await;
}

#[tokio::test]
async fn a_signing_key_the_idp_withdraws_stops_verifying_within_metadata_max_age() {
    let mut e = setup("corp", "ping", "metadata_max_age = \"2s\"", "").await;
    let before = e.idp.login("alice").await;
    let (old, s) = plant(&e.app, "corp", "alice", before).await;
    assert_eq!(check(&e.app, &old).await.status(), 200, "signed by the published key");

    // The IdP withdraws that key (a compromise) and signs with a new one from now on.
    e.idp.rotate_signing_key().await;
    let after = e.idp.login("bob").await;
    let (new, _) = plant(&e.app, "corp", "bob", after).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    e.idp.reset_stats().await;

    assert_eq!(check(&e.app, &new).await.status(), 200, "the new key is fetched once the set is stale");
    let r = check(&e.app, &old).await;
    assert_eq!(r.status(), 401, "a token signed by the withdrawn key no longer verifies: {r:?}");
    assert!(!e.redis.exists(&format!("session:{}", s.id)));
    assert_eq!(e.idp.count("/jwks").await, 1, "one fetch serves both checks");
    e.app.shutdown().await;
}

#[tokio::test]
async fn idp_down_answers_503_opens_the_breaker_and_recovers() {
    let mut e = setup("brk", "oidc", "circuit_failure_threshold = 3\ncircuit_open_duration = \"10s\"", "").await;
    let (cookie, s) = plant(&e.app, "brk", "alice", e.idp.login("alice").await).await;
    assert_eq!(check(&e.app, &cookie).await.status(), 200);

    e.idp.stop();
    for _ in 0..3 {
        let r = check(&e.app, &cookie).await;
        assert_eq!(r.status(), 503, "{r:?}");
        assert!(r.body().contains("unavailable"));
    }
    let metrics = portcullis::telemetry::metrics().render();
    assert!(metrics.contains("portcullis_circuit_state{provider=\"brk\"} 1"), "{metrics}");
    assert!(e.redis.exists(&format!("session:{}", s.id)), "503 keeps the session");

    // Back up, but the breaker is still open: checks fail fast and the IdP sees nothing.
    e.idp.restart().await;
    e.idp.reset_stats().await;
    for _ in 0..5 {
        assert_eq!(check(&e.app, &cookie).await.status(), 503);
    }
    let stats = e.idp.stats().await;
    assert!(stats.is_empty(), "no IdP call while the breaker is open: {stats:?}");

    assert!(eventually(Duration::from_secs(30), async || check(&e.app, &cookie).await.status() == 200).await);
    let metrics = portcullis::telemetry::metrics().render();
    assert!(metrics.contains("portcullis_circuit_state{provider=\"brk\"} 0"));
    assert!(metrics
        .contains("portcullis_idp_requests_total{provider=\"brk\",kind=\"introspection\",outcome=\"circuit_open\"}"));
    e.app.shutdown().await;
}

/// The value of one `portcullis_*` series in the process-wide registry (0 when absent).
fn metric(series: &str) -> f64 {
    let text = portcullis::telemetry::metrics().render();
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

/// An M2M source that counts how often it is asked.
struct CountingM2m {
    inner: Arc<IdpM2m>,
    asked: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl portcullis::m2m::M2mSource for CountingM2m {
    async fn token(&self, provider: &str) -> Result<String, portcullis::m2m::M2mError> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.token(provider).await
    }
}

#[tokio::test]
async fn breaker_open_answers_503_before_any_other_work() {
    // The IdP is up; only its introspection endpoint is down (a closed port), so the IdP's own counts show
    // whether a fast 503 still fetched keys, discovery or a token.
    let redis = RedisServer::start();
    let idp = IdpServer::start().await;
    let dead = crate::harness::free_port();
    let extra = format!(
        "introspection_endpoint = \"http://127.0.0.1:{dead}/introspect\"\ncircuit_failure_threshold = 1\ncircuit_open_duration = \"60s\""
    );
    let cfg = config(&redis.url(), &provider_toml("fastfail", "ping", &idp, &extra));
    let m2m = Arc::new(CountingM2m { inner: IdpM2m::new(&idp), asked: Default::default() });
    let app = TestApp::configured(cfg, m2m.clone()).await;
    let (cookie, s) = plant(&app, "fastfail", "alice", idp.login("alice").await).await;
    // The first check reaches the dead endpoint and opens the breaker.
    assert_eq!(check(&app, &cookie).await.status(), 503);

    let series = r#"portcullis_idp_requests_total{provider="fastfail",kind="introspection",outcome="circuit_open"}"#;
    let before = metric(series);
    idp.reset_stats().await;
    redis.reset_stats();
    m2m.asked.store(0, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        let r = check(&app, &cookie).await;
        assert_eq!(r.status(), 503, "{r:?}");
        assert!(r.header("retry-after").is_some(), "{r:?}");
    }
    assert_eq!(m2m.asked.load(std::sync::atomic::Ordering::SeqCst), 0, "no M2M token asked for a call not made");
    let stats = idp.stats().await;
    assert!(stats.is_empty(), "no discovery, JWKS or token call: {stats:?}");
    assert_eq!(redis.executed(), [("hgetall".to_string(), 5)].into(), "the session read and nothing else");
    assert!(metric(series) >= before + 5.0, "each fast 503 counted as a refused introspection");
    assert!(redis.exists(&format!("session:{}", s.id)), "503 keeps the session");
    app.shutdown().await;
}

#[tokio::test]
async fn a_check_joins_its_sessions_half_open_probe_instead_of_failing_fast() {
    let e =
        setup("probe", "ping", "timeout = \"1s\"\ncircuit_failure_threshold = 1\ncircuit_open_duration = \"1s\"", "")
            .await;
    let (cookie, _) = plant(&e.app, "probe", "alice", e.idp.login("alice").await).await;
    e.idp.delay(INTROSPECTION, 1500).await;
    assert_eq!(check(&e.app, &cookie).await.status(), 503, "timed out: the breaker opens");
    e.idp.delay(INTROSPECTION, 800).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    e.idp.reset_stats().await;
    // The first check is the half-open probe; the second arrives while it is in flight, for the same session.
    let probe = check(&e.app, &cookie);
    let joiner = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        check(&e.app, &cookie).await
    };
    let (a, b) = tokio::join!(probe, joiner);
    assert_eq!((a.status(), b.status()), (200, 200), "{a:?} {b:?}");
    assert_eq!(e.idp.count(INTROSPECTION).await, 1, "one call, shared");
    e.app.shutdown().await;
}

#[tokio::test]
async fn a_remembered_id_token_verification_is_never_another_users() {
    let e = setup("corp", "ping", "", "").await;
    let alice = e.idp.login("alice").await;
    let (cookie, _) = plant(&e.app, "corp", "alice", alice.clone()).await;
    assert_eq!(check(&e.app, &cookie).await.status(), 200, "alice's ID token verified and remembered");
    // The same ID token in a session that claims to be bob's: the remembered claims name alice.
    let (cookie, s) = plant(&e.app, "corp", "bob", alice).await;
    let r = check(&e.app, &cookie).await;
    assert_eq!(r.status(), 401, "{r:?}");
    assert!(!e.redis.exists(&format!("session:{}", s.id)));
    e.app.shutdown().await;
}

#[tokio::test]
async fn idp_timeout_is_503_never_an_allow() {
    let e = setup("corp", "ping", "", "").await;
    let (cookie, s) = plant(&e.app, "corp", "alice", e.idp.login("alice").await).await;
    e.idp.delay(INTROSPECTION, 4000).await;
    let r = check(&e.app, &cookie).await;
    assert_eq!(r.status(), 503, "{r:?}");
    assert!(e.redis.exists(&format!("session:{}", s.id)));
    e.app.shutdown().await;
}

async fn graph_user(graph: &MockServer, oid: &str, body: serde_json::Value, status: u16) {
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/users/{oid}")))
        .and(header_exists("authorization"))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(graph)
        .await;
}

#[tokio::test]
async fn entra_revalidates_with_graph() {
    let graph = MockServer::start().await;
    let extra = format!("tenant = \"{TENANT}\"\ngraph_url = \"{}/v1.0\"", graph.uri());
    let e = setup("entra", "entra", &extra, "").await;
    let now = portcullis::now();
    let iso = |t: i64| humantime::format_rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(t as u64)).to_string();
    graph_user(
        &graph,
        "oid-carol",
        json!({"accountEnabled": true, "signInSessionsValidFromDateTime": iso(now - 86400)}),
        200,
    )
    .await;
    graph_user(&graph, "oid-alice", json!({"accountEnabled": false}), 200).await;
    graph_user(
        &graph,
        "oid-bob",
        json!({"accountEnabled": true, "signInSessionsValidFromDateTime": iso(now + 3600)}),
        200,
    )
    .await;
    graph_user(&graph, "oid-dave", json!({"error": {"code": "Request_ResourceNotFound"}}), 404).await;

    // The user id is `oid`, not `sub`.
    let (cookie, s) = plant(&e.app, "entra", "oid-carol", e.idp.login("carol").await).await;
    let r = check(&e.app, &cookie).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.header("x-auth-user-id").as_deref(), Some("oid-carol"));
    assert_eq!(r.header("x-auth-email").as_deref(), Some("carol@example.com"));
    // Graph is asked about the user, not the user's access token: the check leaves it sealed.
    let key = format!("session:{}", s.id);
    redis::cmd("HSET").arg(&key).arg("accessToken").arg("v1.gone.AAAA").query::<()>(&mut e.redis.conn()).unwrap();
    assert_eq!(check(&e.app, &cookie).await.status(), 200, "the access token was not opened");
    // The ID token is opened on every check: the same edit there is refused.
    redis::cmd("HSET").arg(&key).arg("idToken").arg("v1.gone.AAAA").query::<()>(&mut e.redis.conn()).unwrap();
    let r = check(&e.app, &cookie).await;
    assert_eq!(r.status(), 503, "a token sealed under a key this replica lacks: {r:?}");
    assert_eq!(r.0.status.as_ref().map(|s| s.message.as_str()), Some("unknown_key"));

    for (user, why) in
        [("alice", "accountEnabled:false"), ("bob", "sessions revoked after login"), ("dave", "user gone")]
    {
        let (cookie, s) = plant(&e.app, "entra", &format!("oid-{user}"), e.idp.login(user).await).await;
        let r = check(&e.app, &cookie).await;
        assert_eq!(r.status(), 401, "{why}: {r:?}");
        assert!(!e.redis.exists(&format!("session:{}", s.id)), "{why}");
    }

    // A session whose userId is not the token's oid (e.g. stored from `sub`) is not trusted.
    let (cookie, _) = plant(&e.app, "entra", "carol", e.idp.login("carol").await).await;
    assert_eq!(check(&e.app, &cookie).await.status(), 401);

    // Graph down: 503, not allow.
    graph.reset().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(500)).mount(&graph).await;
    let (cookie, _) = plant(&e.app, "entra", "oid-carol", e.idp.login("carol").await).await;
    assert_eq!(check(&e.app, &cookie).await.status(), 503);
    e.app.shutdown().await;
}

#[tokio::test]
async fn entra_refreshes_an_expired_id_token_and_still_asks_graph() {
    let graph = MockServer::start().await;
    // Entra refreshes name the scopes again; they must be within the grant (the test IdP drops
    // offline_access without a consent prompt).
    let extra = format!(
        "tenant = \"{TENANT}\"\ngraph_url = \"{}/v1.0\"\nscopes = [\"openid\", \"email\", \"profile\"]",
        graph.uri()
    );
    let e = setup("entra", "entra", &extra, "").await;
    graph_user(&graph, "oid-carol", json!({"accountEnabled": true}), 200).await;
    e.idp.set_ttl(json!({"IdToken": 1})).await;
    let tokens = e.idp.login("carol").await;
    e.idp.set_ttl(json!({"IdToken": 3600})).await;
    let exp = exp_of(&tokens.id_token);
    let (cookie, s) = plant(&e.app, "entra", "oid-carol", tokens).await;
    let before = session_field(&e.redis, &s, "idToken");
    until_expired(exp).await;
    let r = check(&e.app, &cookie).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(e.idp.count(REFRESH).await, 1);
    assert_ne!(session_field(&e.redis, &s, "idToken"), before);
    assert_eq!(graph.received_requests().await.unwrap_or_default().len(), 1);
    e.app.shutdown().await;
}

#[tokio::test]
async fn entra_rejects_another_tenant() {
    let graph = MockServer::start().await;
    let extra = format!("tenant = \"another-tenant\"\ngraph_url = \"{}/v1.0\"", graph.uri());
    let e = setup("entra", "entra", &extra, "").await;
    graph_user(&graph, "oid-carol", json!({"accountEnabled": true}), 200).await;
    let (cookie, _) = plant(&e.app, "entra", "oid-carol", e.idp.login("carol").await).await;
    assert_eq!(check(&e.app, &cookie).await.status(), 401);
    assert_eq!(graph.received_requests().await.unwrap_or_default().len(), 0);
    e.app.shutdown().await;
}

#[tokio::test]
async fn client_authenticated_introspection_needs_no_m2m_token() {
    let e = setup("corp", "oidc", "introspection_auth = \"client_secret_basic\"", "").await;
    let (cookie, _) = plant(&e.app, "corp", "alice", e.idp.login("alice").await).await;
    assert_eq!(check(&e.app, &cookie).await.status(), 200);
    assert_eq!(e.idp.count(INTROSPECTION).await, 1);
    assert_eq!(*e.m2m.fetches.lock().unwrap(), 0);
    e.app.shutdown().await;
}

#[tokio::test]
async fn nonsense_from_the_introspection_endpoint_is_503() {
    // Endpoint overrides: keys and tokens from the real IdP, introspection from a mock that talks nonsense.
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/html"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/odd"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"active": "yes"})))
        .mount(&mock)
        .await;
    for endpoint in ["html", "odd"] {
        let redis = RedisServer::start();
        let idp = IdpServer::start().await;
        let extra = format!(
            "jwks_uri = \"{0}/jwks\"\ntoken_endpoint = \"{0}/token\"\nintrospection_endpoint = \"{1}/{endpoint}\"",
            idp.issuer(),
            mock.uri()
        );
        let cfg = config(&redis.url(), &provider_toml("corp", "ping", &idp, &extra));
        let app = start_app(&cfg, IdpM2m::new(&idp)).await;
        let (cookie, s) = plant(&app, "corp", "alice", idp.login("alice").await).await;
        assert_eq!(check(&app, &cookie).await.status(), 503, "{endpoint}");
        assert!(redis.exists(&format!("session:{}", s.id)));
        assert_eq!(idp.count("/.well-known/openid-configuration").await, 1, "configured endpoints skip discovery");
        app.shutdown().await;
    }
}

#[tokio::test]
async fn idp_down_at_start_up_recovers_on_first_use() {
    let redis = RedisServer::start();
    let mut idp = IdpServer::start().await;
    let tokens = idp.login("alice").await;
    idp.stop();
    let cfg = config(&redis.url(), &provider_toml("late", "oidc", &idp, "circuit_open_duration = \"1s\""));
    let app = start_app(&cfg, IdpM2m::new(&idp)).await;
    let (cookie, _) = plant(&app, "late", "alice", tokens).await;
    assert_eq!(check(&app, &cookie).await.status(), 503);
    idp.restart().await;
    assert!(eventually(Duration::from_secs(30), async || check(&app, &cookie).await.status() == 200).await);
    app.shutdown().await;
}

#[tokio::test]
async fn back_channel_logout_reaches_a_loopback_receiver() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/backchannel-logout"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let opts = IdpOptions {
        backchannel_logout_uri: Some(format!("{}/oauth2/backchannel-logout", receiver.uri())),
        ..Default::default()
    };
    let idp = IdpServer::start_with(opts).await;
    let (browser, tokens) = idp.browser_login("alice").await;
    let claims = portcullis::idp::claims::unverified_payload(&tokens.id_token).unwrap();
    assert!(claims.get("sid").is_some(), "ID tokens carry sid for back-channel logout");
    idp.logout(&browser, &tokens.id_token).await;
    let got = receiver.received_requests().await.unwrap_or_default();
    assert_eq!(got.len(), 1, "one logout token POSTed to 127.0.0.1");
    assert!(String::from_utf8_lossy(&got[0].body).starts_with("logout_token="));
}
