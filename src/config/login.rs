//! `[login]`: redirects after login and logout, the failed-login limit and the bounds on pending logins.

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
    /// Longest `rd` accepted by /oauth2/login (bytes); a longer one is 400, so no login stores a large value.
    pub max_rd_bytes: usize,
    /// Logins one client may start per `pending_window` before /oauth2/login answers 429.
    pub max_pending_per_client: u32,
    #[serde(with = "humantime_serde")]
    pub pending_window: Duration,
    /// Logins all clients together may start per login lifetime (10 minutes): a bound on `pkce:*` keys.
    pub max_pending_total: u32,
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
            max_rd_bytes: 2048,
            max_pending_per_client: 30,
            pending_window: Duration::from_secs(60),
            max_pending_total: 10_000,
        }
    }
}

impl LoginConfig {
    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        if !(1..=8192).contains(&self.max_rd_bytes) {
            errors.push(format!("login.max_rd_bytes: {} must be between 1 and 8192", self.max_rd_bytes));
        }
        for (key, n) in [
            ("login.max_failures", self.max_failures),
            ("login.max_pending_per_client", self.max_pending_per_client),
            ("login.max_pending_total", self.max_pending_total),
        ] {
            if n == 0 {
                errors.push(format!("{key}: must be at least 1"));
            }
        }
        for (key, d) in [("login.failure_window", self.failure_window), ("login.pending_window", self.pending_window)] {
            if d.as_secs() == 0 {
                errors.push(format!("{key}: must be at least 1s"));
            }
        }
    }
}
