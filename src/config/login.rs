//! `[login]`: redirects after login and logout, and the failed-login limit.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// Hosts `rd` may point at besides relative paths.
    pub allowed_redirect_hosts: Vec<String>,
    /// Where logout lands when the IdP has no end_session_endpoint (or RP-initiated logout is off).
    pub logout_redirect: String,
    pub post_logout_redirect_uri: Option<String>,
    pub rp_initiated_logout: bool,
    pub max_failures: u32,
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            allowed_redirect_hosts: Vec::new(),
            logout_redirect: "/".into(),
            post_logout_redirect_uri: None,
            rp_initiated_logout: true,
            max_failures: 10,
            failure_window: Duration::from_secs(300),
        }
    }
}
