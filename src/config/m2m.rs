//! `[m2m]`: refreshing the client_credentials tokens, and the lock that lets one replica do it.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct M2mConfig {
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub refresh_before: Duration,
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    pub follower_retries: u32,
    #[serde(with = "humantime_serde")]
    pub follower_delay: Duration,
    /// A cached token is not handed out when it expires within this margin.
    #[serde(with = "humantime_serde")]
    pub safety_margin: Duration,
}

impl Default for M2mConfig {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(60),
            refresh_before: Duration::from_secs(300),
            lock_ttl: Duration::from_secs(10),
            follower_retries: 15,
            follower_delay: Duration::from_millis(300),
            safety_margin: Duration::from_secs(30),
        }
    }
}

impl M2mConfig {
    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        if self.follower_retries == 0 {
            errors.push("m2m.follower_retries: must be at least 1".into());
        }
        for (key, d) in [
            ("m2m.refresh_interval", self.refresh_interval),
            ("m2m.lock_ttl", self.lock_ttl),
            ("m2m.follower_delay", self.follower_delay),
        ] {
            if d.is_zero() {
                errors.push(format!("{key}: must be greater than zero"));
            }
        }
    }
}
