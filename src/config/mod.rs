//! Configuration: one TOML file, overridden by `PORTCULLIS__SECTION__KEY` environment variables, secrets
//! optionally read from `*_file` paths. [`Config::load`] reports every bad key at once, by name.
//!
//! One file per section; each section states its defaults once (its `Default`) and validates its own keys.
//! Secrets are `SecretString`s, so no `Debug` of a config struct prints one.

mod assertion;
mod bearer;
mod headers;
mod login;
mod m2m;
mod provider;
mod redis;
mod response_headers;
mod revalidation;
mod server;
mod session;
pub mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::Deserialize;

pub use assertion::AssertionConfig;
pub use bearer::BearerConfig;
pub use headers::HeadersConfig;
pub use login::LoginConfig;
pub use m2m::M2mConfig;
pub use provider::{ClientAuth, DelegationParam, IntrospectionAuth, ProviderConfig, ProviderKind};
pub use redis::{RedisConfig, RedisMode};
pub use response_headers::ResponseHeadersConfig;
pub use revalidation::{RevalidationConfig, RevalidationMode};
pub use server::{LogFormat, Mode, ServerConfig};
pub use session::{SameSite, SessionConfig};
pub use tls::Pem;

/// Environment prefix for overrides: `PORTCULLIS__SESSION__IDLE_TIMEOUT=10m`.
pub const ENV_PREFIX: &str = "PORTCULLIS__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(String),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub redis: RedisConfig,
    pub session: SessionConfig,
    #[serde(default)]
    pub revalidation: RevalidationConfig,
    #[serde(default)]
    pub m2m: M2mConfig,
    #[serde(default)]
    pub headers: HeadersConfig,
    #[serde(default)]
    pub login: LoginConfig,
    #[serde(default)]
    pub assertion: AssertionConfig,
    #[serde(default)]
    pub response_headers: ResponseHeadersConfig,
    #[serde(default)]
    pub bearer: BearerConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
}

impl Config {
    /// Reads `path`, applies environment overrides, resolves `*_file` secrets and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::file_exact(path)).merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    /// Parses TOML text alone (tests and tools).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text)))
    }

    fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let mut cfg: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(describe_figment_error).collect();
            ConfigError::Parse(format!("invalid configuration:\n  - {}", msgs.join("\n  - ")))
        })?;
        let mut errors = Vec::new();
        cfg.session.resolve_cookie_name();
        cfg.resolve_files(&mut errors);
        cfg.validate(&mut errors);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    fn resolve_files(&mut self, errors: &mut Vec<String>) {
        read_secret(&self.server.admin_token_file, &mut self.server.admin_token, "server.admin_token_file", errors);
        read_secret(&self.redis.password_file, &mut self.redis.password, "redis.password_file", errors);
        self.redis.resolve_files(errors);
        read_lines(
            &self.session.encryption_keys_file,
            &mut self.session.encryption_keys,
            "session.encryption_keys_file",
            errors,
        );
        read_lines(
            &self.assertion.signing_keys_file,
            &mut self.assertion.signing_keys,
            "assertion.signing_keys_file",
            errors,
        );
        for (name, p) in self.providers.iter_mut() {
            let key = format!("providers.{name}.client_secret_file");
            read_secret(&p.client_secret_file, &mut p.client_secret, &key, errors);
            p.resolve_files(name, errors);
        }
    }

    /// Each section checks its own keys; every bad key is named, not just the first.
    fn validate(&self, errors: &mut Vec<String>) {
        self.server.validate(errors);
        self.redis.validate(errors);
        self.session.validate(errors);
        self.revalidation.validate(errors);
        self.m2m.validate(errors);
        self.headers.validate(errors);
        self.login.validate(errors);
        self.assertion.validate(errors);
        self.response_headers.validate(errors);
        let names: Vec<&str> = self.providers.keys().map(String::as_str).collect();
        self.bearer.validate(&names, errors);
        for (name, p) in &self.providers {
            p.validate(name, errors);
        }
    }
}

fn read_secret(file: &Option<PathBuf>, into: &mut Option<SecretString>, key: &str, errors: &mut Vec<String>) {
    if let Some(path) = file {
        match std::fs::read_to_string(path) {
            Ok(s) => *into = Some(SecretString::from(s.trim().to_string())),
            Err(e) => errors.push(format!("{key}: cannot read {}: {e}", path.display())),
        }
    }
}

/// A file of secrets, one a line (`#` comments and blank lines skipped), appended to `into`.
fn read_lines(file: &Option<PathBuf>, into: &mut Vec<SecretString>, key: &str, errors: &mut Vec<String>) {
    if let Some(path) = file {
        match std::fs::read_to_string(path) {
            Ok(text) => into.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| SecretString::from(l.to_string())),
            ),
            Err(e) => errors.push(format!("{key}: cannot read {}: {e}", path.display())),
        }
    }
}

/// Figment's messages already name the key path; make sure the message leads with it.
fn describe_figment_error(e: figment::Error) -> String {
    let path = e.path.join(".");
    let msg = e.kind.to_string();
    if path.is_empty() {
        msg
    } else {
        format!("{path}: {msg}")
    }
}

#[cfg(test)]
mod tests;
