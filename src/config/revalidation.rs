//! `[revalidation]`: how often a session's tokens are checked with the IdP.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RevalidationMode {
    #[default]
    EveryRequest,
    MaxStaleness,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevalidationConfig {
    pub mode: RevalidationMode,
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
}

impl Default for RevalidationConfig {
    fn default() -> Self {
        Self { mode: RevalidationMode::default(), max_staleness: Duration::from_secs(30) }
    }
}

impl RevalidationConfig {
    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        if self.mode == RevalidationMode::MaxStaleness && self.max_staleness.is_zero() {
            errors.push("revalidation.max_staleness: must be greater than zero in max_staleness mode".into());
        }
    }
}
