//! Machine-to-machine tokens: the gateway's own client-credentials token per provider, shared by all
//! replicas through Redis (see the design's "M2M token manager").
//!
//! Files by concern: `token` (the shared JSON value and freshness), `shared` (its Redis copy; the leader lock
//! is `crate::lock::LeaderLock`), `client` (the token-endpoint call), `election` (who calls the IdP, who waits), `manager`
//! (the in-process cache, hot path and admin operations), `refresh` (the background task), `command` (the
//! `portcullis m2m` CLI).

pub mod client;
pub mod command;
mod election;
mod manager;
mod refresh;
pub mod shared;
pub mod token;

pub use client::{ClientSettings, TokenClient, TokenEndpoint};
pub use manager::{M2mManager, ProviderStatus};
pub use token::CachedToken;

/// Why no M2M token could be had. Always a 503 at the edge, never an allow.
#[derive(Debug, Clone, thiserror::Error)]
pub enum M2mError {
    #[error("m2m token unavailable: {0}")]
    Unavailable(String),
}

/// Where validators get the M2M token for a provider.
#[async_trait::async_trait]
pub trait M2mSource: Send + Sync {
    async fn token(&self, provider: &str) -> Result<String, M2mError>;
}
