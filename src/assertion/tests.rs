use super::*;
use jsonwebtoken::{DecodingKey, Validation};

fn allowed(user: &str, groups: &[&str]) -> Allowed {
    Allowed {
        identity: Identity {
            user_id: user.into(),
            email: Some(format!("{user}@example.com")),
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        },
        provider: "corp".into(),
        session_id: format!("session-of-{user}"),
        assertion: None,
        bearer: None,
        delegated: None,
    }
}

fn asserter(alg: KeyAlg, ttl: u64) -> Asserter {
    let entry = generate_key(alg).unwrap();
    let keys = KeySet::parse(&[entry.as_str()]).unwrap();
    Asserter::new(keys, "https://app.example.com", "https://app.example.com", Duration::from_secs(ttl))
}

fn verify(a: &Asserter, token: &str, aud: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
    let kid = jsonwebtoken::decode_header(token)?.kid.unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(a.jwks()).unwrap();
    let jwk = jwks.find(&kid).unwrap();
    let alg = match jwk.common.key_algorithm {
        Some(jsonwebtoken::jwk::KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        other => panic!("{other:?}"),
    };
    let mut v = Validation::new(alg);
    v.set_audience(&[aud]);
    v.set_issuer(&["https://app.example.com"]);
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_jwk(jwk)?, &v).map(|d| d.claims)
}

#[tokio::test]
async fn both_algorithms_sign_what_their_published_key_verifies() {
    for alg in [KeyAlg::Es256, KeyAlg::Eddsa] {
        let a = asserter(alg, 60);
        let now = crate::now();
        let token = a.assertion(&allowed("alice", &["admins"]), "billing", now).await.unwrap();
        let c = verify(&a, &token, "billing").unwrap();
        assert_eq!((c.sub.as_str(), c.aud.as_str(), c.provider.as_str()), ("alice", "billing", "corp"));
        assert_eq!(c.exp - c.iat, 60);
        assert_eq!(c.groups, vec!["admins".to_string()]);
        assert!(verify(&a, &token, "other").is_err(), "{alg:?}: another audience is refused");
    }
}

#[tokio::test]
async fn an_assertion_is_reused_until_a_third_of_its_life_is_left() {
    let a = asserter(KeyAlg::Es256, 60);
    let u = allowed("alice", &[]);
    let t0 = 1_000_000;
    let first = a.assertion(&u, "aud", t0).await.unwrap();
    assert_eq!(a.assertion(&u, "aud", t0 + 40).await.unwrap(), first, "40 s in, 20 s left: reused");
    let later = a.assertion(&u, "aud", t0 + 41).await.unwrap();
    assert_ne!(later, first, "less than a third left: a new one");
    assert_eq!(a.assertion(&u, "aud", t0 + 42).await.unwrap(), later);
}

#[tokio::test]
async fn audiences_sessions_and_changed_identities_get_their_own() {
    let a = asserter(KeyAlg::Eddsa, 60);
    let u = allowed("alice", &["dev"]);
    let t0 = 1_000_000;
    let first = a.assertion(&u, "aud", t0).await.unwrap();
    assert_ne!(a.assertion(&u, "other", t0).await.unwrap(), first);
    let mut other_session = u.clone();
    other_session.session_id = "another".into();
    assert_ne!(a.assertion(&other_session, "aud", t0).await.unwrap(), first);
    let mut promoted = u.clone();
    promoted.identity.groups.push("admins".into());
    let fresh = a.assertion(&promoted, "aud", t0 + 1).await.unwrap();
    assert_ne!(fresh, first, "a changed identity is never served from the cache");
    let claims: Claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(fresh.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims.groups, vec!["dev".to_string(), "admins".to_string()]);
}

#[test]
fn bad_entries_are_refused_without_echoing_the_key() {
    let good = generate_key(KeyAlg::Es256).unwrap();
    let (kid, _) = good.split_once(':').unwrap();
    for (entry, want) in [
        ("no-colon", "entry 1 is not"),
        ("k1:!!!", "\"k1\" is not base64"),
        ("k1:aGVsbG8=", "\"k1\" is not a PKCS#8"),
        (":aGVsbG8=", "entry 1 is not"),
    ] {
        let e = KeySet::parse(&[entry]).unwrap_err().to_string();
        assert!(e.contains(want), "{entry}: {e}");
    }
    let e = KeySet::parse(&[good.as_str(), good.as_str()]).unwrap_err().to_string();
    assert!(e.contains(kid) && e.contains("more than once"), "{e}");
    // A session encryption key (AES) is not an assertion key.
    let aes = crate::crypto::generate_key();
    assert!(KeySet::parse(&[aes.as_str()]).is_err());
}

#[test]
fn every_key_is_published_and_the_first_signs() {
    let (es, ed) = (generate_key(KeyAlg::Es256).unwrap(), generate_key(KeyAlg::Eddsa).unwrap());
    let set = KeySet::parse(&[ed.as_str(), es.as_str()]).unwrap();
    let jwks = set.jwks();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!((keys[0]["alg"].as_str(), keys[0]["crv"].as_str()), (Some("EdDSA"), Some("Ed25519")));
    assert_eq!((keys[1]["alg"].as_str(), keys[1]["crv"].as_str()), (Some("ES256"), Some("P-256")));
    assert!(keys.iter().all(|k| k["use"] == "sig" && k.get("d").is_none()), "public parts only: {jwks}");
    assert_eq!(set.signer().unwrap().kid, ed.split_once(':').unwrap().0);
}

#[tokio::test]
async fn new_keys_drop_the_assertions_cached_under_the_old_ones_and_the_same_keys_change_nothing() {
    let (old, new) = (generate_key(KeyAlg::Es256).unwrap(), generate_key(KeyAlg::Eddsa).unwrap());
    let a = Asserter::new(KeySet::parse(&[&old]).unwrap(), "https://app.example.com", "aud", Duration::from_secs(60));
    let (u, now) = (allowed("alice", &[]), crate::now());
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    let first = a.assertion(&u, "aud", now).await.unwrap();
    assert!(!a.set_keys(KeySet::parse(&[&old]).unwrap()), "the same keys");
    assert_eq!(a.assertion(&u, "aud", now).await.unwrap(), first, "still cached");

    assert!(a.set_keys(KeySet::parse(&[&old, &new]).unwrap()), "a key published");
    assert_eq!(a.jwks()["keys"].as_array().unwrap().len(), 2);
    let second = a.assertion(&u, "aud", now).await.unwrap();
    assert_ne!(second, first, "re-minted after the change");
    assert_eq!(kid(&second), old.split_once(':').unwrap().0);

    assert!(a.set_keys(KeySet::parse(&[&new]).unwrap()), "the new key signs alone");
    let third = a.assertion(&u, "aud", now).await.unwrap();
    assert_eq!(kid(&third), new.split_once(':').unwrap().0);
    assert_eq!(verify(&a, &third, "aud").unwrap().sub, "alice");
}
