//! portcullis: an Envoy ext_authz sidecar that turns a session cookie into an IdP-revalidated identity.
//!
//! Layout by concern: `assertion` (the signed `x-auth-jwt` and its JWKS), `authz` (the Check decision and its gRPC service), `session` (cookie, Redis hash,
//! timeouts), `crypto` (tokens at rest), `idp` (provider validators and their transport), `m2m` (the
//! shared M2M token), `login` (the `/oauth2/*` routes), `providers` (assembles transports, M2M and login
//! providers, in that order), `keys` (every Redis key), `lock` (the Redis lock), `store` (the Redis
//! connection), `config`, `telemetry`, `otel` (OTLP traces), `http` (health/metrics listener), `server` (wiring), `cli`.

// Instrumented futures nest deeply; clippy's future-size lints compute their layout past the default 128.
#![recursion_limit = "256"]

pub mod admin;
pub mod assertion;
pub mod authz;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod delegate;
pub mod healthcheck;
pub mod http;
pub mod idp;
pub mod inject;
pub mod keys;
pub mod lock;
pub mod login;
pub mod m2m;
pub mod otel;
pub mod providers;
pub mod reload;
pub mod server;
pub mod session;
pub mod store;
pub mod telemetry;

/// Unix time in seconds: the clock every decision takes as an argument.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Unix time in milliseconds (orders M2M token fetches finer than a second).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
