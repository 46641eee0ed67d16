//! How many delegated tokens are cached, per provider and target, for the admin API and the CLI: a SCAN
//! over `session:*` (an operator's report, not a hot path), each field opened to read its provider, target
//! and expiry. Never a token.

use std::collections::BTreeMap;

use serde::Serialize;

use super::token::Delegated;
use crate::session::SessionStore;
use crate::store::StoreError;

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cached {
    pub provider: String,
    /// The route's `portcullis.delegate` value.
    pub scope: String,
    pub tokens: u64,
}

/// Unexpired delegated tokens per provider and target at `now`. A value this process cannot open (a key
/// it lacks) is left out. In Redis Cluster mode the SCAN covers the node it lands on only.
pub async fn cached(store: &SessionStore, now: i64) -> Result<Vec<Cached>, StoreError> {
    let ring = store.keys();
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for id in store.scan_sessions().await? {
        let Some(s) = store.peek(&id).await? else { continue };
        for (name, stored) in &s.delegated {
            if let Ok(Some(d)) = Delegated::open(&ring, &s.id, name, stored) {
                if d.token.expires_at > now {
                    *counts.entry((d.token.token_provider, d.target)).or_default() += 1;
                }
            }
        }
    }
    Ok(counts.into_iter().map(|((provider, scope), tokens)| Cached { provider, scope, tokens }).collect())
}
