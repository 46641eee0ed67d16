//! Configuration: one TOML file, overridden by `PORTCULLIS__SECTION__KEY` environment variables, secrets
//! optionally read from `*_file` paths. [`Config::load`] reports every bad key at once, by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

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
    pub providers: BTreeMap<String, ProviderConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub grpc_addr: String,
    pub http_addr: String,
    /// Where browsers reach Envoy; the OAuth2 redirect URI is `public_url` + `/oauth2/callback`.
    pub public_url: String,
    #[serde(default)]
    pub admin_addr: Option<String>,
    #[serde(default)]
    pub admin_token: Option<String>,
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// How long shutdown waits for in-flight requests.
    #[serde(default = "d_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Log format: "json" (default) or "text".
    #[serde(default = "d_log_format")]
    pub log_format: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(default = "d_redis_mode")]
    pub mode: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub sentinel_master: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "d_pool_size")]
    pub pool_size: usize,
    /// Waiting for a pooled connection and running one command each get this long.
    #[serde(default = "d_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "d_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    #[serde(default = "d_cookie_name")]
    pub cookie_name: String,
    #[serde(default = "d_true")]
    pub cookie_secure: bool,
    #[serde(default = "d_same_site")]
    pub same_site: String,
    #[serde(default)]
    pub cookie_domain: Option<String>,
    #[serde(default = "d_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(default = "d_absolute", with = "humantime_serde")]
    pub absolute_timeout: Duration,
    /// The idle expiry slides only when the last slide is older than this, so most checks write nothing.
    #[serde(default = "d_slide_after", with = "humantime_serde")]
    pub slide_after: Duration,
    #[serde(default)]
    pub encryption_keys: Vec<String>,
    #[serde(default)]
    pub encryption_keys_file: Option<PathBuf>,
    #[serde(default)]
    pub bind_fingerprint: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RevalidationMode {
    #[default]
    EveryRequest,
    MaxStaleness,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevalidationConfig {
    #[serde(default)]
    pub mode: RevalidationMode,
    #[serde(default = "d_staleness", with = "humantime_serde")]
    pub max_staleness: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct M2mConfig {
    #[serde(default = "d_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    #[serde(default = "d_refresh_before", with = "humantime_serde")]
    pub refresh_before: Duration,
    #[serde(default = "d_lock_ttl", with = "humantime_serde")]
    pub lock_ttl: Duration,
    #[serde(default = "d_follower_retries")]
    pub follower_retries: u32,
    #[serde(default = "d_follower_delay", with = "humantime_serde")]
    pub follower_delay: Duration,
    /// A cached token is not handed out when it expires within this margin.
    #[serde(default = "d_safety_margin", with = "humantime_serde")]
    pub safety_margin: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    #[serde(default = "d_h_user")]
    pub user_id: String,
    #[serde(default = "d_h_provider")]
    pub provider: String,
    #[serde(default = "d_h_email")]
    pub email: String,
    #[serde(default = "d_h_name")]
    pub name: String,
    #[serde(default = "d_h_groups")]
    pub groups: String,
    #[serde(default = "d_h_jwt")]
    pub jwt: String,
    #[serde(default)]
    pub jwt_enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// Hosts `rd` may point at besides relative paths.
    #[serde(default)]
    pub allowed_redirect_hosts: Vec<String>,
    /// Where logout lands when the IdP has no end_session_endpoint (or RP-initiated logout is off).
    #[serde(default = "d_logout_redirect")]
    pub logout_redirect: String,
    #[serde(default)]
    pub post_logout_redirect_uri: Option<String>,
    #[serde(default = "d_true")]
    pub rp_initiated_logout: bool,
    #[serde(default = "d_max_failures")]
    pub max_failures: u32,
    #[serde(default = "d_failure_window", with = "humantime_serde")]
    pub failure_window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Ping,
    Entra,
    Oidc,
}

/// How portcullis authenticates to the introspection endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IntrospectionAuth {
    /// `Authorization: Bearer <M2M token>` (Ping's way).
    #[default]
    Bearer,
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

impl From<ClientAuth> for oauth2::AuthType {
    /// How the oauth2 crate sends the client credentials to a token endpoint (RFC 6749 §2.3.1).
    fn from(a: ClientAuth) -> Self {
        match a {
            ClientAuth::ClientSecretBasic => oauth2::AuthType::BasicAuth,
            ClientAuth::ClientSecretPost => oauth2::AuthType::RequestBody,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    #[serde(default)]
    pub issuer: Option<String>,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "d_scopes")]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub introspection_auth: IntrospectionAuth,
    /// Scope asked for the M2M (client_credentials) token.
    #[serde(default)]
    pub m2m_scope: Option<String>,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub graph_url: Option<String>,
    /// Every call to this IdP (discovery, JWKS, introspection, refresh, Graph) gets this long.
    #[serde(default = "d_idp_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed IdP calls that open the provider's circuit breaker.
    #[serde(default = "d_circuit_failures")]
    pub circuit_failure_threshold: u32,
    /// How long an open breaker answers 503 at once before it lets one probe through.
    #[serde(default = "d_circuit_open", with = "humantime_serde")]
    pub circuit_open_duration: Duration,
    #[serde(default = "d_email_claim")]
    pub email_claim: String,
    #[serde(default = "d_name_claim")]
    pub name_claim: String,
    #[serde(default = "d_groups_claim")]
    pub groups_claim: String,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ProviderConfig {
    /// The issuer, with Entra's default derived from the tenant.
    pub fn issuer(&self) -> Option<String> {
        match (&self.issuer, self.kind, &self.tenant) {
            (Some(i), _, _) => Some(i.trim_end_matches('/').to_string()),
            (None, ProviderKind::Entra, Some(t)) => Some(format!("https://login.microsoftonline.com/{t}/v2.0")),
            _ => None,
        }
    }

    pub fn graph_url(&self) -> String {
        self.graph_url.clone().unwrap_or_else(|| "https://graph.microsoft.com/v1.0".to_string())
    }

    pub fn m2m_scope(&self) -> Option<String> {
        match (&self.m2m_scope, self.kind) {
            (Some(s), _) => Some(s.clone()),
            (None, ProviderKind::Entra) => Some("https://graph.microsoft.com/.default".to_string()),
            _ => None,
        }
    }
}

impl Default for RevalidationConfig {
    fn default() -> Self {
        Self { mode: RevalidationMode::default(), max_staleness: d_staleness() }
    }
}
impl Default for M2mConfig {
    fn default() -> Self {
        Self {
            refresh_interval: d_refresh_interval(),
            refresh_before: d_refresh_before(),
            lock_ttl: d_lock_ttl(),
            follower_retries: d_follower_retries(),
            follower_delay: d_follower_delay(),
            safety_margin: d_safety_margin(),
        }
    }
}
impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            user_id: d_h_user(),
            provider: d_h_provider(),
            email: d_h_email(),
            name: d_h_name(),
            groups: d_h_groups(),
            jwt: d_h_jwt(),
            jwt_enabled: false,
        }
    }
}
impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            allowed_redirect_hosts: Vec::new(),
            logout_redirect: d_logout_redirect(),
            post_logout_redirect_uri: None,
            rp_initiated_logout: true,
            max_failures: d_max_failures(),
            failure_window: d_failure_window(),
        }
    }
}

impl HeadersConfig {
    /// Every identity header name: these never pass from the client to the upstream.
    pub fn all(&self) -> [&str; 6] {
        [&self.user_id, &self.provider, &self.email, &self.name, &self.groups, &self.jwt]
    }
}

fn d_true() -> bool {
    true
}
fn d_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
fn d_log_format() -> String {
    "json".into()
}
fn d_redis_mode() -> String {
    "standalone".into()
}
fn d_pool_size() -> usize {
    32
}
fn d_redis_timeout() -> Duration {
    Duration::from_millis(500)
}
fn d_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn d_cookie_name() -> String {
    "GATEWAY_SESSION".into()
}
fn d_same_site() -> String {
    "Lax".into()
}
fn d_idle() -> Duration {
    Duration::from_secs(30 * 60)
}
fn d_absolute() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn d_slide_after() -> Duration {
    Duration::from_secs(60)
}
fn d_staleness() -> Duration {
    Duration::from_secs(30)
}
fn d_refresh_interval() -> Duration {
    Duration::from_secs(60)
}
fn d_refresh_before() -> Duration {
    Duration::from_secs(300)
}
fn d_lock_ttl() -> Duration {
    Duration::from_secs(10)
}
fn d_follower_retries() -> u32 {
    15
}
fn d_follower_delay() -> Duration {
    Duration::from_millis(300)
}
fn d_safety_margin() -> Duration {
    Duration::from_secs(30)
}
fn d_h_user() -> String {
    "x-auth-user-id".into()
}
fn d_h_provider() -> String {
    "x-auth-provider".into()
}
fn d_h_email() -> String {
    "x-auth-email".into()
}
fn d_h_name() -> String {
    "x-auth-name".into()
}
fn d_h_groups() -> String {
    "x-auth-groups".into()
}
fn d_h_jwt() -> String {
    "x-auth-jwt".into()
}
fn d_logout_redirect() -> String {
    "/".into()
}
fn d_max_failures() -> u32 {
    10
}
fn d_failure_window() -> Duration {
    Duration::from_secs(300)
}
fn d_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into(), "offline_access".into()]
}
fn d_idp_timeout() -> Duration {
    Duration::from_secs(5)
}
fn d_circuit_failures() -> u32 {
    5
}
fn d_circuit_open() -> Duration {
    Duration::from_secs(30)
}
fn d_email_claim() -> String {
    "email".into()
}
fn d_name_claim() -> String {
    "name".into()
}
fn d_groups_claim() -> String {
    "groups".into()
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
        if let Some(path) = &self.session.encryption_keys_file {
            match std::fs::read_to_string(path) {
                Ok(text) => self.session.encryption_keys.extend(
                    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
                ),
                Err(e) => errors.push(format!("session.encryption_keys_file: cannot read {}: {e}", path.display())),
            }
        }
        for (name, p) in self.providers.iter_mut() {
            let key = format!("providers.{name}.client_secret_file");
            read_secret(&p.client_secret_file, &mut p.client_secret, &key, errors);
        }
    }

    fn validate(&self, errors: &mut Vec<String>) {
        for (key, addr) in [("server.grpc_addr", &self.server.grpc_addr), ("server.http_addr", &self.server.http_addr)]
        {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                errors.push(format!("{key}: {addr:?} is not a socket address such as 127.0.0.1:9001"));
            }
        }
        if let Some(addr) = &self.server.admin_addr {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                errors.push(format!("server.admin_addr: {addr:?} is not a socket address"));
            }
            if self.server.admin_token.as_deref().unwrap_or("").len() < 16 {
                errors
                    .push("server.admin_token: required (at least 16 characters) when server.admin_addr is set".into());
            }
        }
        if !matches!(self.server.log_format.as_str(), "json" | "text") {
            errors.push("server.log_format: must be \"json\" or \"text\"".into());
        }
        match url::Url::parse(&self.server.public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => errors.push(format!("server.public_url: {:?} is not an http(s) URL", self.server.public_url)),
        }
        match self.redis.mode.as_str() {
            "standalone" => match &self.redis.url {
                Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {}
                Some(u) => errors.push(format!("redis.url: {u:?} must start with redis:// or rediss://")),
                None => errors.push("redis.url: required when redis.mode = \"standalone\"".into()),
            },
            "cluster" => {
                if self.redis.urls.is_empty() {
                    errors.push("redis.urls: required (seed nodes) when redis.mode = \"cluster\"".into());
                }
            }
            "sentinel" => {
                errors.push("redis.mode: \"sentinel\" is not supported yet; use standalone or cluster".into())
            }
            other => errors.push(format!("redis.mode: {other:?} must be \"standalone\" or \"cluster\"")),
        }
        if self.redis.pool_size == 0 {
            errors.push("redis.pool_size: must be at least 1".into());
        }
        let s = &self.session;
        let name_ok = !s.cookie_name.is_empty()
            && s.cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            errors.push(format!("session.cookie_name: {:?} is not a valid cookie name", s.cookie_name));
        }
        if s.cookie_name.starts_with("__Host-") && (!s.cookie_secure || s.cookie_domain.is_some()) {
            errors.push("session.cookie_name: a __Host- cookie needs cookie_secure = true and no cookie_domain".into());
        }
        if !matches!(s.same_site.to_ascii_lowercase().as_str(), "lax" | "strict" | "none") {
            errors.push(format!("session.same_site: {:?} must be Lax, Strict or None", s.same_site));
        }
        if s.same_site.eq_ignore_ascii_case("none") && !s.cookie_secure {
            errors.push("session.same_site: None requires cookie_secure = true".into());
        }
        if s.idle_timeout.is_zero() {
            errors.push("session.idle_timeout: must be greater than zero".into());
        }
        if s.absolute_timeout < s.idle_timeout {
            errors.push("session.absolute_timeout: must not be shorter than session.idle_timeout".into());
        }
        if let Err(e) = crate::crypto::KeyRing::parse(&s.encryption_keys) {
            errors.push(format!("session.encryption_keys: {e} (generate one with `portcullis keygen`)"));
        }
        if self.revalidation.mode == RevalidationMode::MaxStaleness && self.revalidation.max_staleness.is_zero() {
            errors.push("revalidation.max_staleness: must be greater than zero in max_staleness mode".into());
        }
        if self.m2m.follower_retries == 0 {
            errors.push("m2m.follower_retries: must be at least 1".into());
        }
        for (key, d) in [
            ("m2m.refresh_interval", self.m2m.refresh_interval),
            ("m2m.lock_ttl", self.m2m.lock_ttl),
            ("m2m.follower_delay", self.m2m.follower_delay),
        ] {
            if d.is_zero() {
                errors.push(format!("{key}: must be greater than zero"));
            }
        }
        for h in self.headers.all() {
            if h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase() || !(b.is_ascii_alphanumeric() || b == b'-')) {
                errors.push(format!("headers: {h:?} must be a lower-case header name"));
            }
        }
        for (name, p) in &self.providers {
            let key = |k: &str| format!("providers.{name}.{k}");
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                errors.push(format!("providers.{name}: provider ids use letters, digits, - and _"));
            }
            if p.client_id.is_empty() {
                errors.push(format!("{}: must not be empty", key("client_id")));
            }
            if p.client_secret.as_deref().unwrap_or("").is_empty() {
                errors.push(format!("{}: required (or {})", key("client_secret"), key("client_secret_file")));
            }
            if p.kind == ProviderKind::Entra && p.tenant.as_deref().unwrap_or("").is_empty() {
                errors.push(format!("{}: required for kind = \"entra\"", key("tenant")));
            }
            match p.issuer() {
                Some(i) if url::Url::parse(&i).is_ok() => {}
                Some(i) => errors.push(format!("{}: {i:?} is not a URL", key("issuer"))),
                None => errors.push(format!("{}: required", key("issuer"))),
            }
            if !p.scopes.iter().any(|s| s == "openid") {
                errors.push(format!("{}: must include \"openid\"", key("scopes")));
            }
            if p.timeout.is_zero() {
                errors.push(format!("{}: must be greater than zero", key("timeout")));
            }
            if p.circuit_failure_threshold == 0 {
                errors.push(format!("{}: must be at least 1", key("circuit_failure_threshold")));
            }
            if p.circuit_open_duration.is_zero() {
                errors.push(format!("{}: must be greater than zero", key("circuit_open_duration")));
            }
        }
    }
}

fn read_secret(file: &Option<PathBuf>, into: &mut Option<String>, key: &str, errors: &mut Vec<String>) {
    if let Some(path) = file {
        match std::fs::read_to_string(path) {
            Ok(s) => *into = Some(s.trim().to_string()),
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
