//! `[providers.<id>]`: one identity provider (Ping, Entra or any OIDC provider).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::tls::Pem;

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

/// Which RFC 8693 parameter names a route's `portcullis.delegate` value (`ping`/`oidc`; Entra's On-Behalf-Of
/// grant always sends a scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DelegationParam {
    /// An absolute URI with no path (`https://orders.example.com`, `urn:example:orders`) is an `audience`;
    /// anything else (`orders.read`, `api://orders/.default`, space-separated scopes) is a `scope`.
    #[default]
    Auto,
    Scope,
    Audience,
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

/// `kind` and `client_id` are required, so the section cannot have a `Default`; the optional keys' defaults
/// are the `ProviderConfig::default_*` functions below, the only place they are stated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    #[serde(default)]
    pub issuer: Option<String>,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "ProviderConfig::default_scopes")]
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
    /// A scope the login asks for on top of `scopes`: what the IdP needs in the user's access token before it
    /// exchanges it (Entra On-Behalf-Of: the app's own API scope, e.g. `api://<client id>/access_as_user`).
    #[serde(default)]
    pub delegation_scope: Option<String>,
    /// How a route's `portcullis.delegate` value is sent in an RFC 8693 token exchange (`ping`/`oidc` only).
    #[serde(default)]
    pub delegation_param: Option<DelegationParam>,
    /// Every call to this IdP (discovery, JWKS, introspection, refresh, Graph) gets this long.
    #[serde(default = "ProviderConfig::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed IdP calls that open the provider's circuit breaker.
    #[serde(default = "ProviderConfig::default_circuit_failures")]
    pub circuit_failure_threshold: u32,
    /// How long an open breaker answers 503 at once before it lets one probe through.
    #[serde(default = "ProviderConfig::default_circuit_open", with = "humantime_serde")]
    pub circuit_open_duration: Duration,
    #[serde(default = "ProviderConfig::default_email_claim")]
    pub email_claim: String,
    #[serde(default = "ProviderConfig::default_name_claim")]
    pub name_claim: String,
    #[serde(default = "ProviderConfig::default_groups_claim")]
    pub groups_claim: String,
    /// Withhold the email header when the IdP says `email_verified: false`: an unverified address is
    /// whatever the user typed, and upstreams key accounts on it.
    #[serde(default = "ProviderConfig::default_true")]
    pub require_verified_email: bool,
    /// The longest discovery and JWKS are kept before they are fetched again, whatever the IdP's
    /// `Cache-Control` says: a key the IdP withdraws stops verifying within this bound.
    #[serde(default = "ProviderConfig::default_metadata_max_age", with = "humantime_serde")]
    pub metadata_max_age: Duration,
    /// PEM file of the CA certificates trusted for this provider's HTTPS endpoints, instead of the public
    /// (webpki) roots: an IdP whose certificate a private CA signed. A reload reads it again, so a rotated
    /// bundle applies without a restart.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// What `ca_file` holds, read when the config loads.
    #[serde(skip)]
    pub ca: Option<Pem>,
}

impl ProviderConfig {
    fn default_scopes() -> Vec<String> {
        vec!["openid".into(), "profile".into(), "email".into(), "offline_access".into()]
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(5)
    }
    fn default_circuit_failures() -> u32 {
        5
    }
    fn default_circuit_open() -> Duration {
        Duration::from_secs(30)
    }
    fn default_true() -> bool {
        true
    }
    fn default_metadata_max_age() -> Duration {
        crate::idp::freshness::MAX
    }
    fn default_email_claim() -> String {
        "email".into()
    }
    fn default_name_claim() -> String {
        "name".into()
    }
    fn default_groups_claim() -> String {
        "groups".into()
    }

    /// The client secret for a token request; empty only if validation was bypassed.
    pub fn client_secret(&self) -> String {
        self.client_secret.as_ref().map(|s| s.expose_secret().to_string()).unwrap_or_default()
    }

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

    /// The scopes the login asks for: `scopes`, then `delegation_scope` when set and not already there.
    pub fn login_scopes(&self) -> Vec<String> {
        let mut s = self.scopes.clone();
        if let Some(d) = self.delegation_scope.as_deref().filter(|d| !s.iter().any(|x| x == d)) {
            s.push(d.to_string());
        }
        s
    }

    pub fn m2m_scope(&self) -> Option<String> {
        match (&self.m2m_scope, self.kind) {
            (Some(s), _) => Some(s.clone()),
            (None, ProviderKind::Entra) => Some("https://graph.microsoft.com/.default".to_string()),
            _ => None,
        }
    }

    pub(super) fn resolve_files(&mut self, name: &str, errors: &mut Vec<String>) {
        use super::tls::{read, Holds};
        read(&self.ca_file, Holds::Certificates, &mut self.ca, &format!("providers.{name}.ca_file"), errors);
    }

    pub(super) fn validate(&self, name: &str, errors: &mut Vec<String>) {
        let key = |k: &str| format!("providers.{name}.{k}");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
            errors.push(format!("providers.{name}: provider ids use letters, digits, - and _"));
        }
        if self.client_id.is_empty() {
            errors.push(format!("{}: must not be empty", key("client_id")));
        }
        if self.client_secret().is_empty() {
            errors.push(format!("{}: required (or {})", key("client_secret"), key("client_secret_file")));
        }
        if self.kind == ProviderKind::Entra && self.tenant.as_deref().unwrap_or("").is_empty() {
            errors.push(format!("{}: required for kind = \"entra\"", key("tenant")));
        }
        match self.issuer() {
            Some(i) if url::Url::parse(&i).is_ok() => {
                if self.ca_file.is_some() && !i.starts_with("https://") {
                    errors.push(format!("{}: used only with an https:// issuer; remove it", key("ca_file")));
                }
            }
            Some(i) => errors.push(format!("{}: {i:?} is not a URL", key("issuer"))),
            None => errors.push(format!("{}: required", key("issuer"))),
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            errors.push(format!("{}: must include \"openid\"", key("scopes")));
        }
        if self.delegation_scope.as_deref().is_some_and(|d| d.trim().is_empty() || d.contains(char::is_whitespace)) {
            errors.push(format!("{}: one scope, without spaces", key("delegation_scope")));
        }
        if self.kind == ProviderKind::Entra && self.delegation_param.is_some() {
            errors.push(format!(
                "{}: not used by kind = \"entra\" (On-Behalf-Of always sends a scope); remove it",
                key("delegation_param")
            ));
        }
        if self.timeout.is_zero() {
            errors.push(format!("{}: must be greater than zero", key("timeout")));
        }
        if self.circuit_failure_threshold == 0 {
            errors.push(format!("{}: must be at least 1", key("circuit_failure_threshold")));
        }
        if self.circuit_open_duration.is_zero() {
            errors.push(format!("{}: must be greater than zero", key("circuit_open_duration")));
        }
        if self.metadata_max_age < Duration::from_secs(1) || self.metadata_max_age > crate::idp::freshness::MAX {
            errors.push(format!("{}: must be between 1s and 1d", key("metadata_max_age")));
        }
    }
}
