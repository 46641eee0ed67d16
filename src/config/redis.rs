//! `[redis]`: standalone, cluster or sentinel, as `crate::store` implements all three.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One server at `url`.
    #[default]
    Standalone,
    /// Seed nodes in `urls`.
    Cluster,
    /// Sentinels in `urls`, watching `sentinel_master`.
    Sentinel,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub mode: RedisMode,
    pub url: Option<String>,
    pub urls: Vec<String>,
    pub sentinel_master: Option<String>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
    pub pool_size: usize,
    /// Waiting for a pooled connection and running one command each get this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            mode: RedisMode::default(),
            url: None,
            urls: Vec::new(),
            sentinel_master: None,
            username: None,
            password: None,
            password_file: None,
            pool_size: 32,
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

fn is_redis_url(u: &str) -> bool {
    u.starts_with("redis://") || u.starts_with("rediss://")
}

impl RedisConfig {
    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        match self.mode {
            RedisMode::Standalone => match &self.url {
                Some(u) if is_redis_url(u) => {}
                Some(u) => errors.push(format!("redis.url: {u:?} must start with redis:// or rediss://")),
                None => errors.push("redis.url: required when redis.mode = \"standalone\"".into()),
            },
            RedisMode::Cluster => {
                if self.urls.is_empty() {
                    errors.push("redis.urls: required (seed nodes) when redis.mode = \"cluster\"".into());
                }
            }
            RedisMode::Sentinel => {
                if self.urls.is_empty() {
                    errors.push("redis.urls: required (the sentinels) when redis.mode = \"sentinel\"".into());
                }
                if self.sentinel_master.as_deref().unwrap_or("").is_empty() {
                    errors.push("redis.sentinel_master: required when redis.mode = \"sentinel\"".into());
                }
            }
        }
        if self.pool_size == 0 {
            errors.push("redis.pool_size: must be at least 1".into());
        }
    }
}
