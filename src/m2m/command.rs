//! `portcullis m2m status|refresh`: what an operator runs to see (never the token) or force the shared M2M
//! tokens. `refresh` goes through the same lock as the servers, so it adds no extra token-endpoint call when
//! a replica is refreshing at that moment.

use std::collections::HashMap;
use std::io::Write;

use super::client::{ClientSettings, TokenClient};
use super::manager::{shared_status, M2mManager, ProviderStatus};
use crate::config::{Config, ProviderConfig};
use crate::store::Redis;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("redis: {0}")]
    Redis(#[from] crate::store::StoreError),
    #[error("unknown provider {0:?}")]
    UnknownProvider(String),
    #[error("providers.{provider}: {message}")]
    Provider { provider: String, message: String },
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
}

/// One line per provider, e.g. `corp: cached, expires in 3541 s`.
pub fn describe(s: &ProviderStatus) -> String {
    let state = match s.shared_expires_in {
        None => "not cached".to_string(),
        Some(left) if left > 0 => format!("cached, expires in {left} s"),
        Some(left) => format!("cached but expired {} s ago", -left),
    };
    let mut line = format!("{}: {state}", s.provider);
    if let Some(local) = s.local_expires_in {
        line.push_str(&format!(" (this process: expires in {local} s)"));
    }
    if s.locked {
        line.push_str(", lock held (a refresh is in progress)");
    }
    line
}

/// `portcullis m2m status`: reads Redis only.
pub async fn status(cfg: &Config, out: &mut impl Write) -> Result<(), CommandError> {
    let redis = Redis::connect(&cfg.redis)?;
    let providers: Vec<String> = cfg.providers.keys().cloned().collect();
    for s in shared_status(&redis, &providers, crate::now()).await? {
        writeln!(out, "{}", describe(&s))?;
    }
    Ok(())
}

/// `portcullis m2m refresh [PROVIDER]`: a new token for one or every provider. Returns whether all succeeded.
pub async fn refresh(cfg: &Config, only: Option<&str>, out: &mut impl Write) -> Result<bool, CommandError> {
    if let Some(p) = only {
        if !cfg.providers.contains_key(p) {
            return Err(CommandError::UnknownProvider(p.to_string()));
        }
    }
    let mut clients = HashMap::new();
    for (name, p) in cfg.providers.iter().filter(|(n, _)| only.is_none_or(|o| o == n.as_str())) {
        let endpoint = resolve_token_endpoint(p)
            .await
            .map_err(|message| CommandError::Provider { provider: name.clone(), message })?;
        let client = TokenClient::new(ClientSettings::from_provider(p, &endpoint))
            .map_err(|e| CommandError::Provider { provider: name.clone(), message: e.to_string() })?;
        clients.insert(name.clone(), client);
    }
    let manager = M2mManager::new(Redis::connect(&cfg.redis)?, &cfg.m2m, clients);
    let mut all_ok = true;
    for p in manager.providers() {
        match manager.force_refresh(&p).await {
            Ok(t) => writeln!(out, "{p}: refreshed, expires in {} s", t.expires_in(crate::now()))?,
            Err(e) => {
                all_ok = false;
                writeln!(out, "{p}: FAILED: {e}")?;
            }
        }
    }
    Ok(all_ok)
}

/// `providers.X.token_endpoint`, else the issuer's discovery document. The server gets endpoints from the
/// IdP module's discovery; this keeps the CLI standalone.
pub async fn resolve_token_endpoint(p: &ProviderConfig) -> Result<String, String> {
    if let Some(e) = &p.token_endpoint {
        return Ok(e.clone());
    }
    let issuer = p.issuer().ok_or("no issuer and no token_endpoint")?;
    let url = format!("{issuer}/.well-known/openid-configuration");
    let http = reqwest::Client::builder().timeout(p.timeout).build().map_err(|e| e.to_string())?;
    let doc: serde_json::Value = http
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("discovery {url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("discovery {url}: {e}"))?;
    doc.get("token_endpoint")
        .and_then(|v| v.as_str())
        .map(String::from)
        .ok_or_else(|| format!("discovery {url}: no token_endpoint"))
}
