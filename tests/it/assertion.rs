//! The signed identity assertion, seen by the upstream: a real login through the shipped Envoy and the real
//! IdP, then the test plays the app and verifies `x-auth-jwt` with a standard JWT library against the JWKS
//! it fetches through Envoy.

use std::time::Duration;

use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use portcullis::assertion::{generate_key, Asserter, Claims, KeyAlg, KeySet};
use portcullis::authz::Allowed;
use portcullis::idp::Identity;
use reqwest::cookie::CookieStore;

use crate::e2e::{browser, follow_login, with_route, Stack};
use crate::harness::app::{request, TestApp};
use crate::harness::idp::IdpM2m;
use crate::harness::upstream::Echo;

const BILLING_AUD: &str = "billing-api";

fn assertion_toml(keys: &[&str], extra: &str) -> String {
    let keys = keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ");
    format!("[assertion]\nenabled = true\nsigning_keys = [{keys}]\nttl = \"60s\"\n{extra}\n")
}

/// What an upstream does: find the key by `kid` in the JWKS, check signature, `iss`, `aud` and `exp`.
pub(crate) fn verify(jwks: &JwkSet, token: &str, iss: &str, aud: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
    let kid = jsonwebtoken::decode_header(token)?.kid.ok_or(ErrorKind::InvalidToken)?;
    let jwk = jwks.find(&kid).ok_or(ErrorKind::InvalidToken)?;
    // The algorithm comes from the published key, never from the token's header.
    let alg = match jwk.common.key_algorithm {
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    let mut v = Validation::new(alg);
    v.set_issuer(&[iss]);
    v.set_audience(&[aud]);
    v.leeway = 0;
    Ok(jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_jwk(jwk)?, &v)?.claims)
}

pub(crate) async fn jwks_at(url: &str) -> JwkSet {
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    let cc = r.headers().get("cache-control").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(cc.contains("max-age="), "the JWKS is cacheable for a short while: {cc:?}");
    r.json().await.unwrap()
}

pub(crate) fn kid_of(entry: &str) -> &str {
    entry.split_once(':').unwrap().0
}

async fn get(client: &reqwest::Client, url: String, headers: &[(&str, &str)]) -> Echo {
    let mut rb = client.get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_upstream_verifies_the_assertion_against_the_jwks_fetched_through_envoy() {
    let key = generate_key(KeyAlg::Es256).unwrap();
    let s = Stack::start_with(&assertion_toml(&[&key], ""), |y| {
        with_route(y, "/billing", &[("portcullis.audience", BILLING_AUD)])
    })
    .await;
    let (b, _) = browser();
    let page = follow_login(&b, format!("{}/oauth2/login?rd=/home", s.public), "alice").await;
    let jwks = jwks_at(&s.envoy.url("/.well-known/jwks.json")).await;
    assert_eq!(jwks.keys.len(), 1);
    assert_eq!(jwks.keys[0].common.key_id.as_deref(), Some(kid_of(&key)));

    // The default audience is the public URL; the claims name the user the IdP signed in.
    let token = page.header("x-auth-jwt").expect("x-auth-jwt reached the upstream").to_string();
    let c = verify(&jwks, &token, &s.public, &s.public).unwrap();
    assert_eq!((c.sub.as_str(), c.provider.as_str()), ("alice", "corp"));
    assert_eq!(c.email.as_deref(), Some("alice@example.com"));
    assert!(c.exp - c.iat <= 60 && c.exp > portcullis::now(), "{c:?}");
    assert_eq!(jsonwebtoken::decode_header(&token).unwrap().alg, Algorithm::ES256);

    // A client-sent assertion never reaches the upstream: it gets portcullis's.
    let forged_by_client = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.";
    let echo = get(&b, s.envoy.url("/api"), &[("x-auth-jwt", forged_by_client)]).await;
    let upstream_token = echo.header("x-auth-jwt").unwrap();
    assert_ne!(upstream_token, forged_by_client);
    assert_eq!(verify(&jwks, upstream_token, &s.public, &s.public).unwrap().sub, "alice");
    assert_eq!(upstream_token, token, "reused within the same session and audience: no signing per request");

    // The route's own audience; its assertion is refused where the default audience is expected.
    let billing = get(&b, s.envoy.url("/billing/invoices"), &[]).await;
    let billing_token = billing.header("x-auth-jwt").unwrap();
    assert_eq!(verify(&jwks, billing_token, &s.public, BILLING_AUD).unwrap().aud, BILLING_AUD);
    let e = verify(&jwks, billing_token, &s.public, &s.public).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidAudience);

    // Forged: the same kid, another key.
    let other = generate_key(KeyAlg::Es256).unwrap();
    let forged_entry = format!("{}:{}", kid_of(&key), other.split_once(':').unwrap().1);
    let allowed = Allowed {
        identity: Identity { user_id: "alice".into(), ..Default::default() },
        provider: "corp".into(),
        session_id: "forger".into(),
        assertion: None,
        bearer: None,
        delegated: None,
    };
    let forger = Asserter::new(KeySet::parse(&[&forged_entry]).unwrap(), &s.public, &s.public, Duration::from_secs(60));
    let forged = forger.assertion(&allowed, &s.public, portcullis::now()).await.unwrap();
    assert_eq!(verify(&jwks, &forged, &s.public, &s.public).unwrap_err().kind(), &ErrorKind::InvalidSignature);

    // Expired: the real key, minted an hour ago.
    let real = Asserter::new(KeySet::parse(&[&key]).unwrap(), &s.public, &s.public, Duration::from_secs(60));
    let old = real.assertion(&allowed, &s.public, portcullis::now() - 3600).await.unwrap();
    assert_eq!(verify(&jwks, &old, &s.public, &s.public).unwrap_err().kind(), &ErrorKind::ExpiredSignature);
    let fresh = real.assertion(&allowed, &s.public, portcullis::now()).await.unwrap();
    assert!(verify(&jwks, &fresh, &s.public, &s.public).is_ok(), "the same key, in date: accepted");

    // Metrics: signing is counted, and far fewer times than checks.
    let metrics =
        reqwest::get(format!("http://{}/metrics", s.app.server.http_addr)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("portcullis_assertions_signed_total"), "{metrics}");
}

#[tokio::test]
async fn replicas_sharing_keys_and_a_rotation_verify_against_each_others_jwks() {
    let (k1, k2) = (generate_key(KeyAlg::Es256).unwrap(), generate_key(KeyAlg::Eddsa).unwrap());
    let s = Stack::start_with(&assertion_toml(&[&k1], ""), |y| y.to_string()).await;
    let (b, jar) = browser();
    let page = follow_login(&b, format!("{}/oauth2/login?rd=/home", s.public), "bob").await;
    let from_a = page.header("x-auth-jwt").unwrap().to_string();
    let cookie = jar.cookies(&s.public.parse().unwrap()).unwrap();
    let cookie = cookie.to_str().unwrap();

    // Replica B: the same config (same Redis, session keys and assertion keys).
    let b_app = TestApp::configured(s.app.cfg.clone(), IdpM2m::new(&s.idp)).await;
    // Replica C: mid-rotation, the new EdDSA key signs and the old one is still published.
    let mut c_cfg = s.app.cfg.clone();
    c_cfg.assertion.signing_keys = vec![k2.clone().into(), k1.clone().into()];
    let c_app = TestApp::configured(c_cfg, IdpM2m::new(&s.idp)).await;

    let jwks_envoy = jwks_at(&s.envoy.url("/.well-known/jwks.json")).await;
    let jwks_b = jwks_at(&format!("http://{}/.well-known/jwks.json", b_app.server.http_addr)).await;
    let jwks_c = jwks_at(&format!("http://{}/.well-known/jwks.json", c_app.server.http_addr)).await;
    assert_eq!(jwks_c.keys.len(), 2, "both keys are published during a rotation");

    let check = |app: &TestApp| {
        let req = request("GET", "/api", &[("cookie", cookie)]);
        let client = app.client.clone();
        async move {
            let r = crate::harness::app::Checked(client.clone().check(req).await.unwrap().into_inner());
            assert_eq!(r.status(), 200);
            r.header("x-auth-jwt").unwrap()
        }
    };
    let from_b = check(&b_app).await;
    let from_c = check(&c_app).await;
    assert_eq!(jsonwebtoken::decode_header(&from_c).unwrap().kid.as_deref(), Some(kid_of(&k2)));

    for (name, t) in [("A", &from_a), ("B", &from_b)] {
        for jwks in [&jwks_envoy, &jwks_b, &jwks_c] {
            assert_eq!(verify(jwks, t, &s.public, &s.public).unwrap().sub, "bob", "replica {name}");
        }
    }
    // The new key verifies where it is published, and only there.
    assert_eq!(verify(&jwks_c, &from_c, &s.public, &s.public).unwrap().sub, "bob");
    assert!(verify(&jwks_envoy, &from_c, &s.public, &s.public).is_err(), "A does not publish k2 yet");
    b_app.shutdown().await;
    c_app.shutdown().await;
}

#[tokio::test]
async fn without_assertion_the_jwks_route_is_404_and_no_assertion_is_sent() {
    let s = Stack::start().await;
    let r = reqwest::get(s.envoy.url("/.well-known/jwks.json")).await.unwrap();
    assert_eq!(r.status(), 404, "routed to portcullis without ext_authz, which has no keys");
    let (b, _) = browser();
    let page = follow_login(&b, format!("{}/oauth2/login?rd=/home", s.public), "carol").await;
    assert_eq!(page.header("x-auth-jwt"), None);
    let echo = get(&b, s.envoy.url("/api"), &[("x-auth-jwt", "client-made")]).await;
    assert_eq!(echo.header("x-auth-jwt"), None, "a client-sent assertion is stripped");
}
