//! ID token verification: signature against the provider's JWKS, `iss`, `aud`, and `exp` against the
//! caller's clock. Only asymmetric algorithms are accepted: `alg: none` does not even parse, and `HS*`
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
    Ok(IdToken { claims: data.claims, exp })
}
