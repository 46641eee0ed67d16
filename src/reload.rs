//! Reload without restart: on SIGHUP, or when the config file or a secret file it names changes, the
//! config is loaded and validated again and, if it is valid as a whole, the reloadable part is swapped in
//! at once: a new [`Authorizer`] snapshot (session rules, header names, response headers, mode, audit
//! sampling), the session key ring, the admin token and the log level. An invalid config is refused
//! whole and the running one stays. Caches, breakers, providers and the Redis pool are kept.
//!
//! Files are polled (content digest every [`POLL`]), not watched through inotify: reading the path
//! follows Kubernetes' `..data` symlink swap, which directory events report only indirectly.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::assertion::Asserter;
use crate::authz::grpc::LiveAuthorizer;
use crate::authz::Authorizer;
use crate::config::Config;
use crate::idp::bearer::BearerVerifier;
use crate::idp::Validators;
use crate::session::SessionStore;

/// How often watched files are read.
const POLL: Duration = Duration::from_secs(1);
/// A change must be stable this long before it is loaded (an editor or `kubectl` writes in steps).
const DEBOUNCE: Duration = Duration::from_millis(500);

/// What `check-config` prints: the keys a reload does not apply.
pub const RESTART_NOTE: &str = "a reload (SIGHUP or a changed file) applies everything except server.grpc_addr, \
server.http_addr, server.admin_addr, server.log_format, [redis], [providers.*], [revalidation], [m2m], [login], \
[bearer] and [assertion]: those need a restart";

/// The sections a reload keeps as they were at start, by the key named in the warning.
fn restart_only(c: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("server.grpc_addr", c.server.grpc_addr.clone()),
        ("server.http_addr", c.server.http_addr.clone()),
        ("server.admin_addr", format!("{:?}", c.server.admin_addr)),
        ("server.log_format", format!("{:?}", c.server.log_format)),
        ("redis", format!("{:?}", c.redis)),
        ("providers", format!("{:?}", c.providers)),
        ("revalidation", format!("{:?}", c.revalidation)),
        ("m2m", format!("{:?}", c.m2m)),
        ("login", format!("{:?}", c.login)),
        ("bearer", format!("{:?}", c.bearer)),
        ("assertion", format!("{:?}", c.assertion)),
    ]
}

/// What a reload builds on: the parts kept across reloads, and the config the running snapshot came from.
pub struct Reloader {
    path: PathBuf,
    /// The config at start: the restart-only keys are compared against it.
    started: Config,
    live: LiveAuthorizer,
    store: SessionStore,
    validators: Validators,
    bearer: Option<Arc<BearerVerifier>>,
    asserter: Option<Arc<Asserter>>,
    admin: Option<Arc<AdminState>>,
    /// Serialises reloads (SIGHUP and the watcher); never touched by a Check.
    current: Mutex<Config>,
}

pub struct Parts {
    pub live: LiveAuthorizer,
    pub store: SessionStore,
    pub validators: Validators,
    pub bearer: Option<Arc<BearerVerifier>>,
    pub asserter: Option<Arc<Asserter>>,
    pub admin: Option<Arc<AdminState>>,
}

impl Reloader {
    pub fn new(path: PathBuf, cfg: &Config, p: Parts) -> Arc<Self> {
        loaded();
        Arc::new(Self {
            path,
            started: cfg.clone(),
            live: p.live,
            store: p.store,
            validators: p.validators,
            bearer: p.bearer,
            asserter: p.asserter,
            admin: p.admin,
            current: Mutex::new(cfg.clone()),
        })
    }

    /// Loads the file again and applies it, or refuses it whole. True when applied.
    pub fn reload(&self, why: &str) -> bool {
        let result = Config::load(&self.path).map_err(|e| e.to_string()).and_then(|cfg| self.apply(cfg));
        match result {
            Ok(()) => {
                metrics::counter!("portcullis_config_reload_total", "result" => "success").increment(1);
                loaded();
                tracing::info!(why, "configuration reloaded");
                true
            }
            Err(error) => {
                metrics::counter!("portcullis_config_reload_total", "result" => "failure").increment(1);
                tracing::error!(why, %error, "configuration reload refused; the running configuration stays");
                false
            }
        }
    }

    /// Builds everything first, then installs it, so a failure leaves nothing half-applied.
    fn apply(&self, new: Config) -> Result<(), String> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let ring = new.session.key_ring().map_err(|e| format!("session.encryption_keys: {e}"))?;
        for ((key, was), (_, now)) in restart_only(&self.started).into_iter().zip(restart_only(&new)) {
            if was != now {
                tracing::warn!(
                    key,
                    "changed in the configuration but only takes effect on restart; keeping the running value"
                );
            }
        }
        let authz = Authorizer::new(
            self.store.clone(),
            self.validators.clone(),
            &new,
            self.asserter.clone(),
            self.bearer.clone(),
        );
        self.store.set_keys(ring);
        self.live.store(authz);
        if let (Some(admin), Some(token)) = (&self.admin, &new.server.admin_token) {
            admin.set_token(token.expose_secret());
        }
        crate::telemetry::set_log_level(&new.server.log_level);
        *current = new;
        Ok(())
    }

    /// The config file and every secret file the running config names.
    fn watched(&self) -> Vec<PathBuf> {
        let c = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = vec![self.path.clone()];
        v.extend(c.server.admin_token_file.clone());
        v.extend(c.redis.password_file.clone());
        v.extend(c.session.encryption_keys_file.clone());
        v.extend(c.assertion.signing_keys_file.clone());
        v.extend(c.providers.values().filter_map(|p| p.client_secret_file.clone()));
        v
    }

    /// Reloads on SIGHUP and when a watched file's content changes, until `cancel`.
    pub fn spawn(self: Arc<Self>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut hup = hangup();
            let mut seen = fingerprint(&self.watched());
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = recv(&mut hup) => {
                        let me = self.clone();
                        let _ = tokio::task::spawn_blocking(move || me.reload("SIGHUP")).await;
                        seen = fingerprint(&self.watched());
                    }
                    _ = tokio::time::sleep(POLL) => {
                        let now = fingerprint(&self.watched());
                        if now == seen {
                            continue;
                        }
                        tokio::time::sleep(DEBOUNCE).await;
                        let me = self.clone();
                        let _ = tokio::task::spawn_blocking(move || me.reload("a watched file changed")).await;
                        seen = fingerprint(&self.watched());
                    }
                }
            }
        })
    }
}

/// Sets the last-success gauge to now.
fn loaded() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    metrics::gauge!("portcullis_config_last_reload_success_timestamp_seconds").set(now.as_secs_f64());
}

/// A digest of the files' contents (a missing file counts as its error), following symlinks.
fn fingerprint(paths: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.as_os_str().as_encoded_bytes());
        match std::fs::read(Path::new(p)) {
            Ok(bytes) => h.update(Sha256::digest(&bytes)),
            Err(e) => h.update(e.kind().to_string().as_bytes()),
        }
    }
    h.finalize().into()
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup() -> Hangup {}

#[cfg(unix)]
async fn recv(h: &mut Hangup) {
    match h {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn recv(_: &mut Hangup) {
    std::future::pending().await
}
