//! `[server]`: listeners, public URL, admin API and log format.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

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
    pub admin_token: Option<SecretString>,
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// How long shutdown waits for in-flight requests.
    #[serde(default = "shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long readiness and gRPC health say NOT_SERVING while checks are still answered,
    /// so Envoy and the kubelet stop sending before the listeners close.
    #[serde(default = "drain_delay", with = "humantime_serde")]
    pub drain_delay: Duration,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `portcullis=debug,info`); `RUST_LOG` wins when set. Reloadable.
    #[serde(default = "log_level")]
    pub log_level: String,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed when they are the direct peer of the HTTP
    /// listener. Default none: the direct peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `enforce`, or `dry_run`: decide, log and count, but let every request through (see the README).
    #[serde(default)]
    pub mode: Mode,
    /// Share of allows that get an audit line (0.0 ..= 1.0); denies always do.
    #[serde(default = "audit_allow_sample")]
    pub audit_allow_sample: f64,
    /// Threads that serve requests. Default 1, tokio's current-thread scheduler: a check is a few tens of
    /// microseconds of CPU, and on one thread the Redis reads of the checks that are ready leave in one
    /// write (a third less CPU per check than on the multi-threaded scheduler, BENCHMARKS.md). Above 1, tokio's
    /// multi-threaded scheduler with that many workers, where one core is not enough (a shared gateway).
    #[serde(default = "worker_threads")]
    pub worker_threads: usize,
}

/// Whether decisions are enforced. A route overrides it with `portcullis.dry_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    DryRun,
}

/// Log lines as JSON (the default, for collectors) or as text (for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// `[server]` has required keys, so it has no `Default`; this is its one optional duration's default.
fn shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

fn log_level() -> String {
    "info".into()
}

fn audit_allow_sample() -> f64 {
    1.0
}

fn worker_threads() -> usize {
    1
}

fn drain_delay() -> Duration {
    Duration::from_secs(5)
}

impl ServerConfig {
    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        for (key, addr) in [("server.grpc_addr", &self.grpc_addr), ("server.http_addr", &self.http_addr)] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                errors.push(format!("{key}: {addr:?} is not a socket address such as 127.0.0.1:9001"));
            }
        }
        if let Some(addr) = &self.admin_addr {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                errors.push(format!("server.admin_addr: {addr:?} is not a socket address"));
            }
            if self.admin_token.as_ref().map_or(0, |t| t.expose_secret().len()) < 16 {
                errors
                    .push("server.admin_token: required (at least 16 characters) when server.admin_addr is set".into());
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            errors.push(format!("server.log_level: {:?} is not a log filter: {e}", self.log_level));
        }
        if self.worker_threads == 0 {
            errors.push("server.worker_threads: must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.audit_allow_sample) {
            errors.push(format!("server.audit_allow_sample: {} must be between 0.0 and 1.0", self.audit_allow_sample));
        }
        match url::Url::parse(&self.public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => errors.push(format!("server.public_url: {:?} is not an http(s) URL", self.public_url)),
        }
    }
}
