//! `portcullis m2m status|refresh`: what an operator runs to see (never the token) or force the shared M2M
//! tokens. `refresh` goes through the same lock as the servers, so it adds no extra token-endpoint call when
//! a replica is refreshing at that moment.

use std::io::Write;

use super::client::ClientSettings;
use super::manager::{shared_status, M2mManager, ProviderStatus};
use crate::config::Config;
use crate::store::Redis;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("redis: {0}")]
    Redis(#[from] crate::store::StoreError),
    #[error("unknown provider {0:?}")]
    UnknownProvider(String),
    #[error("no M2M manager could be built from this configuration")]
    NoManager,
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    #[error("session.encryption_keys: {0}")]
    Keys(#[from] crate::crypto::CryptoError),
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
    let ring = cfg.session.key_ring()?;
    let slots: Vec<(String, String)> =
        cfg.providers.iter().map(|(name, p)| (name.clone(), ClientSettings::from_provider(p, "").slot())).collect();
    for s in shared_status(&redis, &ring, &slots, crate::now()).await? {
        writeln!(out, "{}", describe(&s))?;
    }
    Ok(())
}

/// `portcullis m2m refresh [PROVIDER]`: a new token for one or every provider of `manager` (built exactly
/// as the server builds it, so endpoints come from the same discovery). Returns whether all succeeded.
pub async fn refresh(manager: &M2mManager, only: Option<&str>, out: &mut impl Write) -> Result<bool, CommandError> {
    let providers = manager.providers();
    if let Some(p) = only {
        if !providers.iter().any(|x| x == p) {
            return Err(CommandError::UnknownProvider(p.to_string()));
        }
    }
    let mut all_ok = true;
    for p in providers.iter().filter(|n| only.is_none_or(|o| o == n.as_str())) {
        match manager.force_refresh(p).await {
            Ok(t) => writeln!(out, "{p}: refreshed, expires in {} s", t.expires_in(crate::now()))?,
            Err(e) => {
                all_ok = false;
                writeln!(out, "{p}: FAILED: {e}")?;
            }
        }
    }
    Ok(all_ok)
}
