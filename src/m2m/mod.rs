//! Machine-to-machine tokens: the gateway's own client-credentials token per provider, shared by all
//! replicas through Redis (see the design's "M2M token manager").

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
