//! Delegated tokens (`portcullis.delegate`): RFC 8693 token exchange at the real test IdP (its
//! `registerGrantType` grant, introspected to prove what it issued), Entra On-Behalf-Of against a wiremock
//! token endpoint, through the shipped Envoy where the route option lives, and over two replicas sharing one
//! Redis. Assertions are on statuses, headers the upstream received, Redis fields and IdP call counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use portcullis::config::Config;
use serde_json::{json, Value};
use wiremock::matchers::{body_string_contains, header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::e2e::{browser, follow_login, with_route, Stack};
use crate::harness::app::{config, request, Checked, TestApp};
use crate::harness::eventually;
use crate::harness::idp::{provider_toml, start_app, IdpM2m, IdpServer, CLIENT_ID, CLIENT_SECRET, TENANT};
use crate::harness::redis::RedisServer;
use crate::idp::plant;
use crate::served;

const EXCHANGE: &str = "/token:urn:ietf:params:oauth:grant-type:token-exchange";
const REFRESH: &str = "/token:refresh_token";
const HEADER: &str = "x-auth-delegated-token";

struct Env {
    redis: RedisServer,
    idp: IdpServer,
    m2m: Arc<IdpM2m>,
    cfg: Config,
    app: TestApp,
}

/// Redis, the IdP and one portcullis with provider `corp` (`ping`); `extra` is top-level TOML.
async fn setup(provider_extra: &str, extra: &str) -> Env {
    setup_with(provider_extra, extra, |_| {}).await
}

async fn setup_with(provider_extra: &str, extra: &str, configure: impl FnOnce(&mut Config)) -> Env {
    let redis = RedisServer::start();
    let idp = IdpServer::start().await;
    let m2m = IdpM2m::new(&idp);
    let toml = format!("{extra}\n{}", provider_toml("corp", "ping", &idp, provider_extra));
    let mut cfg = config(&redis.url(), &toml);
    cfg.redis.timeout = Duration::from_secs(5);
    configure(&mut cfg);
    let app = start_app(&cfg, m2m.clone()).await;
    Env { redis, idp, m2m, cfg, app }
}

/// A Check of `cookie` on a route with these `context_extensions`, the client sending `headers` too.
fn on_route(app: &TestApp, cookie: &str, extensions: &[(&str, &str)], headers: &[(&str, &str)]) -> CheckRequest {
    let c = format!("{}={cookie}", app.cookie_name());
    let mut all = vec![("cookie", c.as_str()), ("accept", "application/json")];
    all.extend_from_slice(headers);
    let mut req = request("GET", "/api/orders", &all);
    let attrs = req.attributes.as_mut().unwrap();
    for (k, v) in extensions {
        attrs.context_extensions.insert(k.to_string(), v.to_string());
    }
    req
}

async fn delegating(app: &TestApp, cookie: &str, target: &str) -> Checked {
    app.check(on_route(app, cookie, &[("portcullis.delegate", target)], &[])).await
}

/// The session's `dlg:*` fields as stored.
fn delegated_fields(redis: &RedisServer, session_id: &str) -> HashMap<String, String> {
    let all: HashMap<String, String> =
        redis::cmd("HGETALL").arg(format!("session:{session_id}")).query(&mut redis.conn()).unwrap();
    all.into_iter().filter(|(k, _)| k.starts_with("dlg:")).collect()
}

/// RFC 7662 introspection at the test IdP, as the API receiving the delegated token would do.
async fn introspect(idp: &IdpServer, token: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{}/token/introspection", idp.issuer()))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `portcullis_idp_requests_total{provider, kind="token_exchange", outcome}` now.
fn exchanges(provider: &str, outcome: &str) -> f64 {
    let needle = format!(
        "portcullis_idp_requests_total{{provider=\"{provider}\",kind=\"token_exchange\",outcome=\"{outcome}\"}} "
    );
    let text = portcullis::telemetry::metrics().render();
    text.lines().find_map(|l| l.strip_prefix(&needle)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

fn exp_of(id_token: &str) -> i64 {
    portcullis::idp::claims::unverified_payload(id_token).and_then(|c| c["exp"].as_i64()).expect("exp")
}

#[tokio::test]
async fn through_envoy_only_the_asking_route_gets_a_token_the_idp_issued_for_that_user_and_scope() {
    let s = Stack::start_with("", |y| with_route(y, "/orders", &[("portcullis.delegate", "orders.read")])).await;
    let (b, _) = browser();
    let home = follow_login(&b, format!("{}/oauth2/login?rd=/home", s.public), "alice").await;
    assert_eq!(home.header("x-auth-user-id"), Some("alice"));
    assert_eq!(home.header(HEADER), None, "a route that does not ask gets nothing");

    let get = |path: &str| b.get(format!("{}{path}", s.public)).header(HEADER, "forged-by-the-client").send();
    let orders: crate::harness::upstream::Echo = get("/orders").await.unwrap().json().await.unwrap();
    let token = orders.header(HEADER).expect("the delegated token reached the upstream").to_string();
    assert_ne!(token, "forged-by-the-client");
    let claims = introspect(&s.idp, &token).await;
    assert_eq!(claims["active"], true, "{claims}");
    assert_eq!(claims["sub"], "alice", "issued for the signed-in user: {claims}");
    assert_eq!(claims["scope"], "orders.read", "and the route's scope: {claims}");
    assert_eq!(claims["act"]["sub"], CLIENT_ID, "portcullis acts for the user: {claims}");

    let other: crate::harness::upstream::Echo = get("/home").await.unwrap().json().await.unwrap();
    assert_eq!(other.header(HEADER), None, "a client-sent header never reaches the upstream");
    let again: crate::harness::upstream::Echo = get("/orders").await.unwrap().json().await.unwrap();
    assert_eq!(again.header(HEADER), Some(token.as_str()), "cached for the session and scope");
    assert_eq!(s.idp.count(EXCHANGE).await, 1, "{:?}", s.idp.stats().await);

    // Cached in the session hash, sealed: Redis holds no usable token.
    let sessions: Vec<String> = redis::cmd("KEYS").arg("session:*").query(&mut s.redis.conn()).unwrap();
    assert_eq!(sessions.len(), 1);
    let id = sessions[0].strip_prefix("session:").unwrap().to_string();
    let fields = delegated_fields(&s.redis, &id);
    assert_eq!(fields.len(), 1, "one token per session and scope: {:?}", fields.keys());
    assert!(fields.values().all(|v| !v.contains(&token)));
    let store = s.app.server.authorizer.store();
    let own = store.decrypt(&store.load(&id).await.unwrap().unwrap()).unwrap();
    assert!(token != own.access_token && token != own.id_token, "never the user's own tokens");

    // Logout deletes it with the session.
    let r = b.post(format!("{}/oauth2/logout", s.public)).header("origin", &s.public).send().await.unwrap();
    assert!(r.status().is_redirection() || r.status().is_success(), "{}", r.status());
    assert!(!s.redis.exists(&format!("session:{id}")));
    assert!(delegated_fields(&s.redis, &id).is_empty(), "the delegated token went with the session");
}

#[tokio::test]
async fn an_audience_route_gets_a_token_for_that_audience_and_admin_counts_without_showing_it() {
    let admin_token = "admin-token-for-delegation-tests";
    let e = setup_with("", "", |cfg| {
        cfg.server.admin_addr = Some("127.0.0.1:0".into());
        cfg.server.admin_token = Some(admin_token.into());
    })
    .await;
    let (cookie, s) = plant(&e.app, "corp", "alice", e.idp.login("alice").await).await;
    let r = delegating(&e.app, &cookie, "https://orders.example.com").await;
    assert_eq!(r.status(), 200, "{r:?}");
    let token = r.header(HEADER).unwrap();
    let claims = introspect(&e.idp, &token).await;
    assert_eq!(
        (claims["sub"].as_str(), claims["delegated_audience"].as_str()),
        (Some("alice"), Some("https://orders.example.com"))
    );
    assert!(claims.get("scope").is_none_or(Value::is_null), "sent as the audience, not a scope: {claims}");
    assert_eq!(delegating(&e.app, &cookie, "orders.read").await.status(), 200);
    assert_eq!(delegated_fields(&e.redis, &s.id).len(), 2, "one field per scope");

    let base = format!("http://{}", e.app.server.admin_addr.unwrap());
    let r =
        reqwest::Client::new().get(format!("{base}/admin/delegations")).bearer_auth(admin_token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&token), "never a token: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let mut rows = body["delegations"].as_array().unwrap().clone();
    rows.sort_by_key(|r| r["scope"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        rows,
        vec![
            json!({"provider": "corp", "scope": "https://orders.example.com", "tokens": 1}),
            json!({"provider": "corp", "scope": "orders.read", "tokens": 1}),
        ]
    );

    // The CLI reads the same report from Redis with the same key ring.
    let key = secrecy::ExposeSecret::expose_secret(&e.cfg.session.encryption_keys[0]).to_string();
    let file = served::file(&served::minimal(&e.redis.url(), &format!("encryption_keys = [\"{key}\"]")));
    let out = served::portcullis().args(["delegations", "--config"]).arg(file.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains(&token), "never a token: {stdout}");
    let listed: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed, rows, "{stdout}");
    e.app.shutdown().await;
}

#[tokio::test]
async fn concurrent_checks_over_two_replicas_make_one_exchange() {
    let e = setup("", "").await;
    let second = start_app(&e.cfg, e.m2m.clone()).await;
    let (cookie, s) = plant(&e.app, "corp", "alice", e.idp.login("alice").await).await;
    e.idp.delay("/token", 300).await; // the exchange is slow: every check arrives while it is in flight
    let checks = (0..20).map(|i| delegating(if i % 2 == 0 { &e.app } else { &second }, &cookie, "orders.read"));
    let results = futures::future::join_all(checks).await;
    assert!(results.iter().all(|r| r.status() == 200), "{results:?}");
    let tokens: std::collections::HashSet<_> = results.iter().map(|r| r.header(HEADER).unwrap()).collect();
    assert_eq!(tokens.len(), 1, "every check got the one token");
    assert_eq!(e.idp.count(EXCHANGE).await, 1, "{:?}", e.idp.stats().await);
    let slot = portcullis::delegate::slot("corp", "orders.read");
    assert!(!e.redis.exists(&portcullis::keys::delegation_lock(&s.id, &slot)), "the lock is released");
    second.shutdown().await;
    e.app.shutdown().await;
}

#[tokio::test]
async fn a_refresh_invalidates_the_delegated_token_derived_from_the_old_access_token() {
    let e = setup("", "").await;
    e.idp.set_ttl(json!({"IdToken": 2})).await;
    let tokens = e.idp.login("alice").await;
    e.idp.set_ttl(json!({"IdToken": 3600})).await;
    let exp = exp_of(&tokens.id_token);
    let (cookie, s) = plant(&e.app, "corp", "alice", tokens).await;
    let first = delegating(&e.app, &cookie, "orders.read").await;
    assert_eq!(first.status(), 200, "{first:?}");
    let first = first.header(HEADER).unwrap();
    assert_eq!(delegating(&e.app, &cookie, "orders.write").await.status(), 200);
    let before = delegated_fields(&e.redis, &s.id);
    assert_eq!(before.len(), 2);

    assert!(eventually(Duration::from_secs(10), async || portcullis::now() > exp).await);
    let second = delegating(&e.app, &cookie, "orders.read").await;
    assert_eq!(second.status(), 200, "{second:?}");
    assert_eq!(e.idp.count(REFRESH).await, 1, "the check refreshed the user's tokens");
    let second = second.header(HEADER).unwrap();
    assert_ne!(second, first, "a token derived from the old access token no longer serves");
    assert_eq!(e.idp.count(EXCHANGE).await, 3);
    let after = delegated_fields(&e.redis, &s.id);
    assert_eq!(after.len(), 1, "the refresh deleted both old tokens, this check stored one new");
    let read = portcullis::keys::delegated_field(&portcullis::delegate::slot("corp", "orders.read"));
    assert_ne!(after.get(&read), before.get(&read));
    assert_eq!(introspect(&e.idp, &second).await["sub"], "alice");
    e.app.shutdown().await;
}

#[tokio::test]
async fn consent_and_interaction_are_403_naming_the_scope_and_a_refused_user_token_is_401() {
    // max_staleness: the user's token is not asked about again, so the exchange is what meets its revocation.
    let e = setup("", "[revalidation]\nmode = \"max_staleness\"\nmax_staleness = \"60s\"").await;
    let tokens = e.idp.login("alice").await;
    let at = tokens.access_token.clone();
    let (cookie, s) = plant(&e.app, "corp", "alice", tokens).await;
    let refused = exchanges("corp", "refused");

    let r = delegating(&e.app, &cookie, "needs-consent").await;
    assert_eq!(r.status(), 403, "{r:?}");
    let body: Value = serde_json::from_str(&r.body()).unwrap();
    assert_eq!(body, json!({"error": "consent_required", "scope": "needs-consent"}));
    let r = delegating(&e.app, &cookie, "needs-interaction").await;
    assert_eq!(r.status(), 403);
    assert_eq!(serde_json::from_str::<Value>(&r.body()).unwrap()["error"], "interaction_required");
    assert!(e.redis.exists(&format!("session:{}", s.id)), "the session stays: the user only has to consent");
    assert_eq!(delegating(&e.app, &cookie, "orders.read").await.status(), 200, "other scopes still work");

    e.idp.revoke(&at).await;
    let r = delegating(&e.app, &cookie, "orders.write").await;
    assert_eq!(r.status(), 401, "the IdP refuses to exchange a revoked token: {r:?}");
    assert!(r.header("set-cookie").is_some(), "the cookie is cleared");
    assert!(!e.redis.exists(&format!("session:{}", s.id)), "and the session ended");
    assert!(exchanges("corp", "refused") >= refused + 3.0, "refusals are counted");
    e.app.shutdown().await;
}

#[tokio::test]
async fn idp_down_is_503_while_a_cached_token_still_serves() {
    let mut e = setup("", "[revalidation]\nmode = \"max_staleness\"\nmax_staleness = \"60s\"").await;
    let (cookie, s) = plant(&e.app, "corp", "alice", e.idp.login("alice").await).await;
    let cached = delegating(&e.app, &cookie, "orders.read").await;
    assert_eq!(cached.status(), 200);
    let failed = exchanges("corp", "error");

    e.idp.stop();
    let r = delegating(&e.app, &cookie, "orders.write").await;
    assert_eq!(r.status(), 503, "{r:?}");
    assert_eq!(r.body(), r#"{"error":"unavailable"}"#);
    assert!(r.header("retry-after").is_some());
    assert!(e.redis.exists(&format!("session:{}", s.id)), "503 keeps the session");
    let again = delegating(&e.app, &cookie, "orders.read").await;
    assert_eq!(again.status(), 200, "the cached token needs no IdP: {again:?}");
    assert_eq!(again.header(HEADER), cached.header(HEADER));
    assert!(exchanges("corp", "error") >= failed + 1.0, "counted as an IdP error");
    e.app.shutdown().await;
}

#[tokio::test]
async fn entra_uses_on_behalf_of_and_the_login_asks_for_the_api_scope() {
    let ms = MockServer::start().await;
    let extra = format!(
        "tenant = \"{TENANT}\"\ngraph_url = \"{uri}/v1.0\"\ntoken_endpoint = \"{uri}/oauth2/v2.0/token\"\n\
         delegation_scope = \"api://portcullis/access_as_user\"",
        uri = ms.uri()
    );
    let redis = RedisServer::start();
    let idp = IdpServer::start().await;
    let mut cfg = config(&redis.url(), &provider_toml("entra", "entra", &idp, &extra));
    cfg.redis.timeout = Duration::from_secs(5);
    let app = start_app(&cfg, IdpM2m::new(&idp)).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/oid-carol"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"accountEnabled": true})))
        .mount(&ms)
        .await;
    let tokens = idp.login("carol").await;
    let assertion: String = url::form_urlencoded::byte_serialize(tokens.access_token.as_bytes()).collect();
    let obo = |scope: &str| {
        let scope: String = url::form_urlencoded::byte_serialize(scope.as_bytes()).collect();
        Mock::given(method("POST"))
            .and(path("/oauth2/v2.0/token"))
            .and(header_exists("authorization"))
            .and(body_string_contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"))
            .and(body_string_contains("requested_token_use=on_behalf_of"))
            .and(body_string_contains(format!("assertion={assertion}")))
            .and(body_string_contains(format!("scope={scope}")))
    };
    obo("https://graph.microsoft.com/User.Read")
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"token_type": "Bearer", "access_token": "obo-graph-token-for-carol", "expires_in": 3600}),
        ))
        .expect(1)
        .mount(&ms)
        .await;
    obo("api://orders/.default")
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_grant",
            "error_description": "AADSTS65001: The user or administrator has not consented",
            "error_codes": [65001],
            "suberror": "consent_required"
        })))
        .mount(&ms)
        .await;
    let (cookie, _) = plant(&app, "entra", "oid-carol", tokens).await;

    for _ in 0..2 {
        let r = delegating(&app, &cookie, "https://graph.microsoft.com/User.Read").await;
        assert_eq!(r.status(), 200, "{r:?}");
        assert_eq!(r.header(HEADER).as_deref(), Some("obo-graph-token-for-carol"));
    }
    let r = delegating(&app, &cookie, "api://orders/.default").await;
    assert_eq!(r.status(), 403, "{r:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&r.body()).unwrap(),
        json!({"error": "consent_required", "scope": "api://orders/.default"})
    );

    // The login asks for the scope On-Behalf-Of needs on top of the configured ones.
    let login = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = login.get(format!("http://{}/oauth2/login", app.server.http_addr)).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let scope = to.query_pairs().find(|(k, _)| k == "scope").map(|(_, v)| v.to_string()).unwrap();
    assert!(scope.split(' ').any(|s| s == "api://portcullis/access_as_user"), "{scope}");
    assert!(scope.split(' ').any(|s| s == "openid"), "{scope}");
    app.shutdown().await;
    ms.verify().await;
}

#[tokio::test]
async fn an_edited_or_moved_delegated_token_is_a_tampered_session() {
    let e = setup("", "").await;
    let (cookie, s) = plant(&e.app, "corp", "alice", e.idp.login("alice").await).await;
    assert_eq!(delegating(&e.app, &cookie, "orders.read").await.status(), 200);
    let (field, sealed) = delegated_fields(&e.redis, &s.id).into_iter().next().unwrap();

    // Moved to another scope's field: it does not open there (the AAD names the field).
    let other = portcullis::keys::delegated_field(&portcullis::delegate::slot("corp", "orders.write"));
    let _: () = redis::cmd("HSET")
        .arg(format!("session:{}", s.id))
        .arg(&other)
        .arg(&sealed)
        .query(&mut e.redis.conn())
        .unwrap();
    // The session's own fields and MAC are untouched: a route that does not delegate still passes, and
    // removes a client-sent token header (Envoy strips it too).
    let forged = [(HEADER, "forged-by-the-client")];
    let r = e.app.check(on_route(&e.app, &cookie, &[], &forged)).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert!(r.removed().iter().any(|h| h == HEADER) && !r.upstream_headers(&forged).contains_key(HEADER));
    let r = delegating(&e.app, &cookie, "orders.write").await;
    assert_eq!(r.status(), 401, "{r:?}");
    assert!(!e.redis.exists(&format!("session:{}", s.id)), "a tampered session is deleted");

    // Edited in place.
    let (cookie, s) = plant(&e.app, "corp", "alice", e.idp.login("alice").await).await;
    assert_eq!(delegating(&e.app, &cookie, "orders.read").await.status(), 200);
    let (f, v) = delegated_fields(&e.redis, &s.id).into_iter().next().unwrap();
    assert_eq!(f, field, "the field is named by provider and scope, not by session");
    let edited = format!("{}{}", &v[..v.len() - 2], if v.ends_with("AA") { "BB" } else { "AA" });
    let _: () =
        redis::cmd("HSET").arg(format!("session:{}", s.id)).arg(&f).arg(edited).query(&mut e.redis.conn()).unwrap();
    assert_eq!(delegating(&e.app, &cookie, "orders.read").await.status(), 401);
    assert!(!e.redis.exists(&format!("session:{}", s.id)));
    e.app.shutdown().await;
}

#[tokio::test]
async fn a_cached_delegated_token_costs_no_redis_command_beyond_the_checks_hgetall() {
    let e = setup("", "").await;
    let (cookie, _) = plant(&e.app, "corp", "alice", e.idp.login("alice").await).await;
    let first = delegating(&e.app, &cookie, "orders.read").await;
    assert_eq!(first.status(), 200);
    e.redis.reset_stats();
    for _ in 0..5 {
        let r = delegating(&e.app, &cookie, "orders.read").await;
        assert_eq!(r.header(HEADER), first.header(HEADER));
    }
    assert_eq!(e.redis.executed(), [("hgetall".to_string(), 5)].into(), "the token came with the session's HGETALL");
    assert_eq!(e.idp.count(EXCHANGE).await, 1);
    e.app.shutdown().await;
}
