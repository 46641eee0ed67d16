//! API and CLI clients with `Authorization: Bearer`, through the shipped Envoy against the real IdP:
//! client-credentials and user tokens (opaque, introspected with the shared M2M token), JWT access tokens
//! (verified against the IdP's JWKS), revocation, other issuers and audiences, routes that did not opt in.

use portcullis::config::{IntrospectionAuth, ProviderKind};
use serde_json::json;

use crate::e2e::{browser, with_route, Stack};
use crate::harness::idp::CLIENT_ID;
use crate::harness::upstream::Echo;

fn routes(y: &str) -> String {
    let y = with_route(y, "/svc", &[("portcullis.bearer", "allow")]);
    let y = with_route(&y, "/scoped", &[("portcullis.bearer", "allow"), ("portcullis.bearer_scopes", "billing:write")]);
    with_route(&y, "/pass", &[("portcullis.bearer", "allow"), ("portcullis.bearer_pass", "true")])
}

/// Ping-style: introspection authenticated with the shared M2M token.
async fn stack() -> Stack {
    Stack::start_full(
        &format!("[bearer]\naudiences = [{CLIENT_ID:?}, \"orders-api\"]\n"),
        |c| {
            let p = c.providers.get_mut("corp").unwrap();
            p.kind = ProviderKind::Ping;
            p.introspection_auth = IntrospectionAuth::Bearer;
        },
        routes,
    )
    .await
}

async fn call(s: &Stack, path: &str, token: &str, html: bool) -> reqwest::Response {
    let (b, _) = browser();
    let mut r = b.get(s.envoy.url(path)).bearer_auth(token);
    if html {
        r = r.header("accept", "text/html");
    }
    r.send().await.unwrap()
}

async fn echo(s: &Stack, path: &str, token: &str) -> Echo {
    let r = call(s, path, token, false).await;
    assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap_or_default());
    r.json().await.unwrap()
}

fn assert_invalid_token(r: &reqwest::Response, why: &str) {
    assert_eq!(r.status(), 401, "{why}");
    let challenge = r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(challenge, r#"Bearer error="invalid_token""#, "{why}");
}

#[tokio::test]
async fn client_and_user_tokens_are_allowed_on_opted_in_routes_and_revocation_ends_them() {
    let s = stack().await;

    // A machine client: identified by its client id, flagged as a client, the token not passed on.
    let cc = s.idp.client_credentials().await;
    let e = echo(&s, "/svc/orders", &cc).await;
    assert_eq!(e.header("x-auth-user-id"), Some(CLIENT_ID));
    assert_eq!(e.header("x-auth-client"), Some("true"));
    assert_eq!(e.header("x-auth-provider"), Some("corp"));
    assert_eq!(e.header("authorization"), None, "the bearer token is removed from the upstream request");

    // A user's access token from a real login: the user, not a client.
    let user = s.idp.login("dave").await;
    let e = echo(&s, "/svc/orders", &user.access_token).await;
    assert_eq!(e.header("x-auth-user-id"), Some("dave"));
    assert_eq!(e.header("x-auth-client"), None);

    // A route that asks for it gets the token.
    let e = echo(&s, "/pass/x", &user.access_token).await;
    assert_eq!(e.header("authorization"), Some(format!("Bearer {}", user.access_token).as_str()));

    // A route that has not opted in: 401 as without a session, and the upstream never sees it.
    let hits = s.upstream.hits();
    assert_eq!(call(&s, "/api", &cc, false).await.status(), 401);
    assert_eq!(s.upstream.hits(), hits);

    // every_request: revocation at the IdP is seen on the next check.
    let before = s.idp.count("/token/introspection").await;
    s.idp.revoke(&user.access_token).await;
    let r = call(&s, "/svc/orders", &user.access_token, true).await;
    assert_invalid_token(&r, "a revoked token, even from a browser navigation (never a 302)");
    assert!(s.idp.count("/token/introspection").await > before, "asked the IdP again");

    // Garbage.
    assert_invalid_token(&call(&s, "/svc/orders", "not-a-token", false).await, "garbage");
}

#[tokio::test]
async fn jwt_access_tokens_are_verified_against_the_jwks_issuer_audience_and_time() {
    let s = stack().await;
    let now = portcullis::now();
    let iss = s.idp.issuer();
    let claims = |aud: &str, iss: &str, exp: i64| {
        json!({"iss": iss, "aud": aud, "sub": "erin", "email": "erin@example.com", "groups": ["ops"],
               "scope": "openid billing:write", "iat": now, "exp": exp})
    };

    let good = s.idp.mint(claims("orders-api", &iss, now + 300), "provider").await;
    let e = echo(&s, "/svc/x", &good).await;
    assert_eq!(e.header("x-auth-user-id"), Some("erin"));
    assert_eq!(e.header("x-auth-email"), Some("erin@example.com"));
    assert_eq!(e.header("x-auth-groups"), Some("ops"));
    assert_eq!(echo(&s, "/scoped/x", &good).await.header("x-auth-user-id"), Some("erin"), "has the scope");

    let no_scope = s
        .idp
        .mint(json!({"iss": iss, "aud": "orders-api", "sub": "erin", "scope": "openid", "exp": now + 300}), "provider")
        .await;
    let r = call(&s, "/scoped/x", &no_scope, false).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers().get("www-authenticate").unwrap(), r#"Bearer error="insufficient_scope""#);

    let other_audience = s.idp.mint(claims("someone-else", &iss, now + 300), "provider").await;
    assert_invalid_token(&call(&s, "/svc/x", &other_audience, false).await, "another audience");
    let other_issuer = s.idp.mint(claims("orders-api", "https://evil.example.com", now + 300), "provider").await;
    assert_invalid_token(&call(&s, "/svc/x", &other_issuer, false).await, "another issuer");
    let stranger = s.idp.mint(claims("orders-api", &iss, now + 300), "stranger").await;
    assert_invalid_token(&call(&s, "/svc/x", &stranger, false).await, "a key the IdP never published");
    let expired = s.idp.mint(claims("orders-api", &iss, now - 600), "provider").await;
    assert_invalid_token(&call(&s, "/svc/x", &expired, false).await, "expired");
    let mut early = claims("orders-api", &iss, now + 900);
    early["nbf"] = json!(now + 600);
    let early = s.idp.mint(early, "provider").await;
    assert_invalid_token(&call(&s, "/svc/x", &early, false).await, "not yet valid");
}

/// `every_request`: concurrent checks of one token share one introspection; `max_staleness`: a result is
/// reused, not past the token's `exp`.
#[tokio::test]
async fn revalidation_modes_bound_the_introspections() {
    let s = stack().await;
    let cc = s.idp.client_credentials().await;
    echo(&s, "/svc/warm", &cc).await;
    s.idp.delay("/token/introspection", 300).await;
    let before = s.idp.count("/token/introspection").await;
    let calls: Vec<_> = (0..8).map(|_| call(&s, "/svc/x", &cc, false)).collect();
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.status(), 200);
    }
    let n = s.idp.count("/token/introspection").await - before;
    assert!(n <= 2, "8 concurrent checks of one token made {n} introspections");
    s.idp.delay("/token/introspection", 0).await;

    let stale = Stack::start_full(
        "[bearer]\n[revalidation]\nmode = \"max_staleness\"\nmax_staleness = \"60s\"\n",
        |c| c.providers.get_mut("corp").unwrap().introspection_auth = IntrospectionAuth::Bearer,
        routes,
    )
    .await;
    let cc = stale.idp.client_credentials().await;
    let before = stale.idp.count("/token/introspection").await;
    for _ in 0..5 {
        echo(&stale, "/svc/x", &cc).await;
    }
    assert_eq!(stale.idp.count("/token/introspection").await - before, 1, "reused within max_staleness");

    // A JWT that expires in 2 s is not reused past its exp, whatever max_staleness says.
    let now = portcullis::now();
    let short = json!({"iss": stale.idp.issuer(), "aud": CLIENT_ID, "sub": "fay", "exp": now + 2});
    let short = stale.idp.mint(short, "provider").await;
    echo(&stale, "/svc/x", &short).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_invalid_token(&call(&stale, "/svc/x", &short, false).await, "expired while cached");
}
