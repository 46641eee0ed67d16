//! `[redis]`: standalone, cluster or sentinel, as `crate::store` implements all three.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::tls::Pem;

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
    /// PEM file of the CA certificates trusted for `rediss://`, instead of the public (webpki) roots: a Redis
    /// whose certificate a private CA signed. In Sentinel mode, for the sentinels and the master alike.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain and key that portcullis presents to a Redis with `tls-auth-clients` (Redis's
    /// default once TLS is on). Both or neither; read at start, so a renewed pair needs a restart.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// What the three files hold, read when the config loads.
    #[serde(skip)]
    pub ca: Option<Pem>,
    #[serde(skip)]
    pub client_cert: Option<Pem>,
    #[serde(skip)]
    pub client_key: Option<Pem>,
    /// Multiplexed connections to a standalone Redis (default 1). Concurrent checks share a connection, and
    /// their commands go out together in one write and come back in one read: one connection cost a check
    /// half the Redis CPU of 32 (BENCHMARKS.md). Refused with cluster and sentinel, which keep their own.
    pub pool_size: Option<usize>,
    /// Waiting for a pooled connection and running one command each get this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Serve the Check's session read (`HGETALL session:{id}`, or its `HMGET`) from an in-process cache that
    /// Redis keeps fresh with RESP3 `CLIENT TRACKING` invalidations, each hit confirmed by a `PING`
    /// (`store::client_cache`). Off by default: it saves Redis work, not a round trip.
    pub client_cache: bool,
    /// Most sessions the client cache holds.
    pub client_cache_size: usize,
    /// Longest a session read is kept before it is read from Redis again. Freshness comes from the
    /// invalidations and the barrier, not from this; a session checked less often than this gains nothing.
    #[serde(with = "humantime_serde")]
    pub client_cache_ttl: Duration,
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
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            ca: None,
            client_cert: None,
            client_key: None,
            pool_size: None,
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            client_cache: false,
            client_cache_size: 10_000,
            client_cache_ttl: Duration::from_secs(60),
        }
    }
}

fn is_redis_url(u: &str) -> bool {
    u.starts_with("redis://") || u.starts_with("rediss://")
}

impl RedisConfig {
    /// The URLs this mode connects to (sentinels in Sentinel mode).
    fn urls(&self) -> Vec<&str> {
        match self.mode {
            RedisMode::Standalone => self.url.iter().map(String::as_str).collect(),
            _ => self.urls.iter().map(String::as_str).collect(),
        }
    }

    /// Whether the connections use TLS: every URL is `rediss://`. (Sentinel mode reaches the master the way
    /// it reaches the sentinels.)
    pub fn tls(&self) -> bool {
        let urls = self.urls();
        !urls.is_empty() && urls.iter().all(|u| u.starts_with("rediss://"))
    }

    pub(super) fn resolve_files(&mut self, errors: &mut Vec<String>) {
        use super::tls::{read, Holds};
        read(&self.ca_file, Holds::Certificates, &mut self.ca, "redis.ca_file", errors);
        read(&self.client_cert_file, Holds::Certificates, &mut self.client_cert, "redis.client_cert_file", errors);
        read(&self.client_key_file, Holds::PrivateKey, &mut self.client_key, "redis.client_key_file", errors);
    }

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
        let urls = self.urls();
        if urls.iter().any(|u| u.starts_with("rediss://")) && !self.tls() {
            errors.push("redis.urls: mixes redis:// and rediss://; use one scheme for every node".into());
        }
        if !self.tls() {
            for (key, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("client_cert_file", self.client_cert_file.is_some()),
                ("client_key_file", self.client_key_file.is_some()),
            ] {
                if set {
                    errors
                        .push(format!("redis.{key}: used only with rediss:// (TLS) URLs; remove it or use rediss://"));
                }
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            errors.push("redis.client_cert_file, redis.client_key_file: set both (the client pair) or neither".into());
        }
        if self.client_cache {
            if self.mode != RedisMode::Standalone {
                errors.push(
                    "redis.client_cache: supported only with redis.mode = \"standalone\" (cluster and sentinel \
                     connections are not wired for RESP3 invalidations)"
                        .into(),
                );
            }
            if self.client_cache_size == 0 {
                errors.push("redis.client_cache_size: must be at least 1".into());
            }
            if self.client_cache_ttl.is_zero() {
                errors.push("redis.client_cache_ttl: must be more than 0".into());
            }
        }
        match self.pool_size {
            Some(0) => errors.push("redis.pool_size: must be at least 1".into()),
            Some(_) if self.mode != RedisMode::Standalone => errors.push(
                "redis.pool_size: supported only with redis.mode = \"standalone\" (cluster and sentinel keep one \
                 connection per node)"
                    .into(),
            ),
            _ => {}
        }
    }
}
