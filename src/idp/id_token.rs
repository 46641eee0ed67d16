//! ID token verification: signature against the provider's JWKS, `iss`, `aud`, `azp`, `nbf` and `iat`
//! (OIDC Core §3.1.3.7), and `exp` against the caller's clock. Only asymmetric algorithms are accepted: `alg: none` does not even parse, and `HS*`
//! would let anyone who knows the client secret (or a public key used as one) forge tokens.

use jsonwebtoken::{decode, decode_header, Algorithm, Validation};
use serde_json::{Map, Value};

use super::discovery::Discovery;
use super::jwks::Jwks;
use super::transport::Transport;
use super::IdpError;

pub(crate) const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Clock skew tolerated on `nbf` and `iat`.
const LEEWAY: i64 = 60;

/// The checks jsonwebtoken leaves to us (OIDC Core §3.1.3.7): with several audiences `azp` is required,
/// and `azp`, when present, must be this client; a token not yet valid (`nbf`) or issued in the future
/// (`iat`), beyond [`LEEWAY`], is refused. A non-numeric `nbf` or `iat` is refused too.
pub fn check_claims(claims: &Map<String, Value>, client_id: &str, now: i64) -> Result<(), IdpError> {
    let bad = |why: &str| Err(IdpError::Invalid(format!("id token {why}")));
    let several_audiences = claims.get("aud").and_then(Value::as_array).is_some_and(|a| a.len() > 1);
    match claims.get("azp") {
        Some(azp) if azp.as_str() != Some(client_id) => return bad("azp names another client"),
        None if several_audiences => return bad("has several audiences and no azp"),
        _ => {}
    }
    let time = |k: &str| claims.get(k).map(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)));
    for claim in ["nbf", "iat"] {
        match time(claim) {
            None => {}
            Some(Some(t)) if t <= now + LEEWAY => {}
            Some(Some(_)) => return bad(&format!("{claim} is in the future")),
            Some(None) => return bad(&format!("{claim} is not a number")),
        }
    }
    Ok(())
}

/// A verified ID token's claims.
#[derive(Debug, Clone)]
pub struct IdToken {
    pub claims: Map<String, Value>,
    pub exp: i64,
}

impl IdToken {
    pub fn expired(&self, now: i64) -> bool {
        self.exp <= now
    }

    pub fn text(&self, claim: &str) -> Option<&str> {
        self.claims.get(claim).and_then(Value::as_str)
    }
}

/// What a verifier needs to know about its provider.
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
}

/// Verifies signature, issuer and audience. Expiry is the caller's call (an expired ID token may be
/// refreshed), so `exp` is only required here and returned.
pub async fn verify(
    token: &str,
    expect: &Expect<'_>,
    jwks: &Jwks,
    http: &Transport,
    disc: &Discovery,
) -> Result<IdToken, IdpError> {
    let header = decode_header(token).map_err(|e| IdpError::Invalid(format!("id token header: {e}")))?;
    if !ALLOWED.contains(&header.alg) {
        return Err(IdpError::Invalid(format!("id token algorithm {:?} not accepted", header.alg)));
    }
    let key = jwks.key(header.kid.as_deref(), http, disc).await?;
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[expect.issuer]);
    v.set_audience(&[expect.audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.validate_exp = false;
    let data =
        decode::<Map<String, Value>>(token, &key, &v).map_err(|e| IdpError::Invalid(format!("id token: {e}")))?;
    let exp = data
        .claims
        .get("exp")
        .and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f as i64)))
        .ok_or_else(|| IdpError::Invalid("id token exp".into()))?;
    check_claims(&data.claims, expect.audience, crate::now())?;
    Ok(IdToken { claims: data.claims, exp })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn check(v: Value) -> Result<(), IdpError> {
        check_claims(v.as_object().unwrap(), "portcullis", NOW)
    }

    #[test]
    fn azp_must_be_this_client_and_is_required_with_several_audiences() {
        assert!(check(json!({"aud": "portcullis"})).is_ok());
        assert!(check(json!({"aud": ["portcullis"]})).is_ok());
        assert!(check(json!({"aud": ["portcullis", "api"], "azp": "portcullis"})).is_ok());
        assert!(check(json!({"aud": "portcullis", "azp": "portcullis"})).is_ok());
        assert!(check(json!({"aud": ["portcullis", "api"]})).is_err(), "several audiences, no azp");
        assert!(check(json!({"aud": ["portcullis", "api"], "azp": "api"})).is_err());
        assert!(check(json!({"aud": "portcullis", "azp": "other"})).is_err(), "azp present must match");
        assert!(check(json!({"aud": "portcullis", "azp": 7})).is_err());
    }

    #[test]
    fn nbf_and_iat_in_the_future_are_refused_beyond_the_leeway() {
        assert!(check(json!({"iat": NOW, "nbf": NOW})).is_ok());
        assert!(check(json!({"iat": NOW + 60, "nbf": NOW + 60})).is_ok(), "within the leeway");
        assert!(check(json!({"iat": NOW - 3600})).is_ok());
        assert!(check(json!({"iat": NOW + 61})).is_err());
        assert!(check(json!({"nbf": NOW + 3600})).is_err());
        assert!(check(json!({"nbf": NOW as f64 + 0.5})).is_ok());
        assert!(check(json!({"iat": "soon"})).is_err());
        assert!(check(json!({"nbf": null})).is_err());
    }
}
