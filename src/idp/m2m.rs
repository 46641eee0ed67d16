//! Binds the shared M2M manager to the providers: the manager finds each token endpoint through the
//! provider's own discovery (and breaker), and the providers get their tokens from the manager. The two
//! refer to each other, so the manager holds providers weakly and providers reach it through a slot
//! filled once both exist.

use std::sync::{Arc, OnceLock, Weak};

use super::provider::Provider;
use crate::m2m::{M2mError, M2mSource, TokenEndpoint};

/// The provider's token endpoint: as configured, else discovered on first use.
pub struct DiscoveredTokenEndpoint(pub Weak<Provider>);

#[async_trait::async_trait]
impl TokenEndpoint for DiscoveredTokenEndpoint {
    async fn token_endpoint(&self) -> Result<String, String> {
        let p = self.0.upgrade().ok_or("provider is gone")?;
        if let Some(configured) = &p.cfg.token_endpoint {
            return Ok(configured.clone());
        }
        let e = p.discovery.endpoints(&p.http).await.map_err(|e| e.to_string())?;
        Ok(e.token_endpoint.clone())
    }
}

/// An [`M2mSource`] filled in after construction.
#[derive(Default)]
pub struct LateM2m(OnceLock<Arc<dyn M2mSource>>);

impl LateM2m {
    pub fn set(&self, source: Arc<dyn M2mSource>) {
        let _ = self.0.set(source);
    }
}

#[async_trait::async_trait]
impl M2mSource for LateM2m {
    async fn token(&self, provider: &str) -> Result<String, M2mError> {
        match self.0.get() {
            Some(s) => s.token(provider).await,
            None => Err(M2mError::Unavailable("the M2M manager is not started".into())),
        }
    }
}
