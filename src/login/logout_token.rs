//! Back-channel logout tokens (OIDC Back-Channel Logout 1.0 §2.4, §2.6), parsed and checked as plain
//! functions over the token, the key and `now`: signature (asymmetric algorithms only), `iss`, `aud`, `iat`
//! within the last ten minutes, `exp` if present, the logout event, no `nonce`, `sid` or `sub`, and a
//! `jti` (replays are refused by the caller, which remembers it for [`replay_ttl`] seconds).

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::idp::id_token::ALLOWED;
use crate::idp::IdpError;

/// Clock skew tolerated on `exp` and `iat`.
const LEEWAY: i64 = 60;
/// How old a logout token may be.
const MAX_AGE: i64 = 600;
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

fn invalid(why: impl Into<String>) -> IdpError {
    IdpError::Invalid(why.into())
}

/// The token's header, when its algorithm is one we accept (the key is looked up by its `kid`).
pub fn header(token: &str) -> Result<Header, IdpError> {
    let header = decode_header(token).map_err(|e| invalid(format!("logout token header: {e}")))?;
    if !ALLOWED.contains(&header.alg) {
        return Err(invalid(format!("logout token algorithm {:?} not accepted", header.alg)));
    }
    Ok(header)
}

/// The verified claims of a logout token signed with `alg` under `key`.
pub fn verify(
    token: &str,
    alg: Algorithm,
    key: &DecodingKey,
    issuer: &str,
    client_id: &str,
    now: i64,
) -> Result<Map<String, Value>, IdpError> {
    if !ALLOWED.contains(&alg) {
        return Err(invalid(format!("logout token algorithm {alg:?} not accepted")));
    }
    let mut v = Validation::new(alg);
    v.set_issuer(&[issuer]);
    v.set_audience(&[client_id]);
    v.set_required_spec_claims(&["iss", "aud", "iat"]);
    v.validate_exp = false;
    let claims =
        decode::<Map<String, Value>>(token, key, &v).map_err(|e| invalid(format!("logout token: {e}")))?.claims;
    let int = |k: &str| claims.get(k).and_then(Value::as_i64);
    match int("iat") {
        Some(iat) if iat <= now + LEEWAY && iat >= now - MAX_AGE => {}
        _ => return Err(invalid("logout token iat out of range")),
    }
    if claims.get("exp").is_some_and(|e| e.as_i64().is_none_or(|exp| exp < now - LEEWAY)) {
        return Err(invalid("logout token expired"));
    }
    if !claims.get("events").and_then(Value::as_object).is_some_and(|e| e.contains_key(BACKCHANNEL_EVENT)) {
        return Err(invalid("logout token lacks the back-channel logout event"));
    }
    if claims.contains_key("nonce") {
        return Err(invalid("logout token must not carry a nonce"));
    }
    let text = |k: &str| claims.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    if text("sid").is_none() && text("sub").is_none() {
        return Err(invalid("logout token names neither sid nor sub"));
    }
    // §2.4: jti is REQUIRED; it is how a replay is recognised.
    if text("jti").is_none_or(|j| j.len() > 256) {
        return Err(invalid("logout token lacks a usable jti"));
    }
    Ok(claims)
}

/// How long a verified logout token could still be accepted (seconds from `now`), i.e. how long its `jti`
/// must be remembered to refuse a replay: until `iat` is too old or `exp` has passed, leeway included.
pub fn replay_ttl(claims: &Map<String, Value>, now: i64) -> u64 {
    let int = |k: &str| claims.get(k).and_then(Value::as_i64);
    let by_age = int("iat").map_or(now + MAX_AGE, |iat| iat + MAX_AGE);
    let until = int("exp").map_or(by_age, |exp| by_age.min(exp + LEEWAY));
    u64::try_from((until - now).clamp(1, MAX_AGE + 2 * LEEWAY)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_jti_is_remembered_for_as_long_as_its_token_would_be_accepted() {
        let now = 1_000_000;
        assert_eq!(replay_ttl(&claims(json!({"iat": now})), now), 600);
        assert_eq!(replay_ttl(&claims(json!({"iat": now - 590})), now), 10);
        assert_eq!(replay_ttl(&claims(json!({"iat": now, "exp": now + 30})), now), 90);
        assert_eq!(replay_ttl(&claims(json!({"iat": now + 60})), now), 660);
        // Never unbounded, never zero.
        assert_eq!(replay_ttl(&claims(json!({"iat": now + 100_000})), now), 720);
        assert_eq!(replay_ttl(&claims(json!({"iat": now - 100_000})), now), 1);
    }
}

/// Any input: no panic; only a token signed by the provider's key with every rule met is accepted.
#[cfg(test)]
mod properties {
    use jsonwebtoken::{encode, EncodingKey};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Test-only Ed25519 keys (generated for these tests, never used elsewhere).
    const PROVIDER_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEICHd9KGSN9/vrPmq9JAaDs52lRM1oxkr98vJE6M+ZO0y\n-----END PRIVATE KEY-----\n";
    const PROVIDER_PUB: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAzJRjbh/oR8mxUmv7S4z0hE2pqd+nP/VDTEmjWg/Zi+M=\n-----END PUBLIC KEY-----\n";
    const STRANGER_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIF+9MUaFzAT8uzDJutQ9cRL6mmSJBA53of+qxwBgGAGl\n-----END PRIVATE KEY-----\n";
    const ISS: &str = "https://idp.example.com";
    const AUD: &str = "portcullis";
    const NOW: i64 = 1_700_000_000;

    fn public() -> DecodingKey {
        DecodingKey::from_ed_pem(PROVIDER_PUB.as_bytes()).unwrap()
    }

    fn sign(claims: &Value, private: &str) -> String {
        let key = EncodingKey::from_ed_pem(private.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::EdDSA), claims, &key).unwrap()
    }

    fn check(token: &str) -> Result<Map<String, Value>, IdpError> {
        verify(token, Algorithm::EdDSA, &public(), ISS, AUD, NOW)
    }

    /// One logout token's claims, each rule either kept or broken.
    #[derive(Debug, Clone)]
    struct Shape {
        right_iss: bool,
        right_aud: bool,
        iat_offset: i64,
        has_event: bool,
        has_nonce: bool,
        sid: bool,
        sub: bool,
        jti: bool,
        exp_offset: Option<i64>,
    }

    impl Shape {
        fn claims(&self) -> Value {
            let mut c = json!({
                "iss": if self.right_iss { ISS } else { "https://evil.example" },
                "aud": if self.right_aud { AUD } else { "someone-else" },
                "iat": NOW + self.iat_offset,
            });
            if self.has_event {
                c["events"] = json!({BACKCHANNEL_EVENT: {}});
            }
            if self.has_nonce {
                c["nonce"] = json!("n");
            }
            if self.sid {
                c["sid"] = json!("sid-1");
            }
            if self.sub {
                c["sub"] = json!("alice");
            }
            if self.jti {
                c["jti"] = json!("jti-1");
            }
            if let Some(e) = self.exp_offset {
                c["exp"] = json!(NOW + e);
            }
            c
        }

        fn valid(&self) -> bool {
            self.right_iss
                && self.right_aud
                && (-MAX_AGE..=LEEWAY).contains(&self.iat_offset)
                && self.has_event
                && !self.has_nonce
                && (self.sid || self.sub)
                && self.jti
                && self.exp_offset.is_none_or(|e| e >= -LEEWAY)
        }
    }

    fn shapes() -> impl Strategy<Value = Shape> {
        (
            (any::<bool>(), any::<bool>(), -1000i64..200, any::<bool>(), any::<bool>()),
            (any::<bool>(), any::<bool>(), any::<bool>(), proptest::option::of(-200i64..200)),
        )
            .prop_map(
                |((right_iss, right_aud, iat_offset, has_event, has_nonce), (sid, sub, jti, exp_offset))| Shape {
                    right_iss,
                    right_aud,
                    iat_offset,
                    has_event,
                    has_nonce,
                    sid,
                    sub,
                    jti,
                    exp_offset,
                },
            )
    }

    proptest! {
        // Each case signs and verifies with Ed25519: fewer cases than the default keep the unit tests quick.
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn no_input_makes_the_parser_panic_or_accept(token in any::<String>()) {
            let _ = header(&token);
            prop_assert!(check(&token).is_err());
        }

        #[test]
        fn jwt_shaped_garbage_is_refused(parts in proptest::collection::vec("[A-Za-z0-9_-]{0,60}", 0..5)) {
            let token = parts.join(".");
            let _ = header(&token);
            prop_assert!(check(&token).is_err());
        }

        #[test]
        fn a_signed_token_is_accepted_exactly_when_every_rule_holds(shape in shapes()) {
            let token = sign(&shape.claims(), PROVIDER_KEY);
            prop_assert_eq!(check(&token).is_ok(), shape.valid(), "{:?}", shape);
            // The same claims under a key the provider never published: always refused.
            prop_assert!(check(&sign(&shape.claims(), STRANGER_KEY)).is_err());
        }

        #[test]
        fn a_valid_token_with_any_payload_byte_changed_is_refused(at in 0usize..1000, with in "[A-Za-z0-9_-]") {
            let shape = Shape { right_iss: true, right_aud: true, iat_offset: 0, has_event: true, has_nonce: false,
                sid: true, sub: true, jti: true, exp_offset: None };
            let token = sign(&shape.claims(), PROVIDER_KEY);
            prop_assert!(check(&token).is_ok());
            let dots: Vec<usize> = token.match_indices('.').map(|(i, _)| i).collect();
            // A character strictly inside the payload (not its last, whose low bits may be padding).
            let (start, end) = (dots[0] + 1, dots[1] - 1);
            let i = start + at % (end - start);
            prop_assume!(&token[i..=i] != with.as_str());
            let mut changed = token.clone();
            changed.replace_range(i..=i, &with);
            prop_assert!(check(&changed).is_err());
        }
    }
}
