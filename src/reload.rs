//! Reload without restart: on SIGHUP, or when the config file or a secret file it names changes, the
//! config is loaded and validated again and, if it is valid as a whole, the reloadable part is swapped in
//! at once: a new [`Authorizer`] snapshot (header names, response headers, mode, audit sampling), the
//! session key ring, the assertion signing keys (and so the JWKS), the admin token and the log level.
//! When `[providers.*]` (a client secret), `[revalidation]` or `[bearer]` changed, the providers are rebuilt
//! (validators, bearer verifier, login clients) over the running M2M manager; when `[redis]` changed (a
//! rotated password, CA or client certificate), new Redis connections are made from it, used once they
//! answer a PING (else the reload is refused), and calls in flight finish on the old ones. An invalid config
//! is refused whole and the running one stays. Otherwise caches, breakers, providers, M2M tokens and the
//! Redis connections are kept.
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
use crate::config::{AssertionConfig, Config, SessionConfig};
use crate::delegate::Delegator;
use crate::idp::bearer::BearerVerifier;
use crate::idp::Validators;
use crate::login::LoginState;
use crate::m2m::M2mManager;
use crate::providers::M2mChoice;
use crate::session::SessionStore;

/// How often watched files are read.
const POLL: Duration = Duration::from_secs(1);
/// A change must be stable this long before it is loaded (an editor or `kubectl` writes in steps).
const DEBOUNCE: Duration = Duration::from_millis(500);

/// What `check-config` prints: the keys a reload does not apply.
pub const RESTART_NOTE: &str = "a reload (SIGHUP or a changed file) applies everything except server.grpc_addr, \
server.http_addr, server.admin_addr, server.public_url, server.trusted_proxies, server.log_format, \
server.worker_threads, \
[session] other than its keys, [m2m], [login] and [assertion] other than its keys: those need a restart";

/// The sections a reload keeps as they were at start, by the key named in the warning.
fn restart_only(c: &Config) -> Vec<(&'static str, String)> {
    let mut session = c.session.clone();
    (session.encryption_keys, session.decrypt_only_keys, session.encryption_keys_file) = (vec![], vec![], None);
    let mut assertion = c.assertion.clone();
    (assertion.signing_keys, assertion.signing_keys_file) = (vec![], None);
    vec![
        ("server.grpc_addr", c.server.grpc_addr.clone()),
        ("server.http_addr", c.server.http_addr.clone()),
        ("server.admin_addr", format!("{:?}", c.server.admin_addr)),
        ("server.public_url", c.server.public_url.clone()),
        ("server.trusted_proxies", format!("{:?}", c.server.trusted_proxies)),
        ("server.log_format", format!("{:?}", c.server.log_format)),
        ("server.worker_threads", format!("{:?}", c.server.worker_threads)),
        ("session", format!("{session:?}")),
        ("m2m", format!("{:?}", c.m2m)),
        ("login", format!("{:?}", c.login)),
        ("assertion", format!("{assertion:?}")),
    ]
}

/// The new config with every restart-only part as it was at start.
fn effective(started: &Config, new: &Config) -> Config {
    let mut e = new.clone();
    e.server.grpc_addr.clone_from(&started.server.grpc_addr);
    e.server.http_addr.clone_from(&started.server.http_addr);
    e.server.admin_addr.clone_from(&started.server.admin_addr);
    e.server.public_url.clone_from(&started.server.public_url);
    e.server.trusted_proxies.clone_from(&started.server.trusted_proxies);
    e.server.log_format = started.server.log_format;
    e.session = SessionConfig {
        encryption_keys: new.session.encryption_keys.clone(),
        decrypt_only_keys: new.session.decrypt_only_keys.clone(),
        encryption_keys_file: new.session.encryption_keys_file.clone(),
        ..started.session.clone()
    };
    e.m2m = started.m2m.clone();
    e.login = started.login.clone();
    e.assertion = AssertionConfig {
        signing_keys: new.assertion.signing_keys.clone(),
        signing_keys_file: new.assertion.signing_keys_file.clone(),
        ..started.assertion.clone()
    };
    e
}

/// What the providers are built from: a change rebuilds them. Secrets enter as a digest.
fn providers_digest(c: &Config) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(format!("{:?}{:?}{:?}", c.providers, c.revalidation, c.bearer).as_bytes());
    for p in c.providers.values() {
        h.update(Sha256::digest(p.client_secret().as_bytes()));
    }
    h.finalize().into()
}

/// What the Redis connections are made from: a change makes new ones. Secrets (and the TLS files' contents,
/// through their Debug) enter as a digest.
fn redis_digest(c: &Config) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(format!("{:?}", c.redis).as_bytes());
    if let Some(p) = &c.redis.password {
        h.update(Sha256::digest(p.expose_secret().as_bytes()));
    }
    h.finalize().into()
}

/// What a reload builds on: the parts kept across reloads, and the config the running snapshot came from.
pub struct Reloader {
    path: PathBuf,
    /// The config at start: the restart-only keys are compared against it.
    started: Config,
    live: LiveAuthorizer,
    store: SessionStore,
    asserter: Option<Arc<Asserter>>,
    admin: Option<Arc<AdminState>>,
    login: Arc<LoginState>,
    m2m: Option<Arc<M2mManager>>,
    /// Serialises reloads (SIGHUP and the watcher); never touched by a Check.
    state: tokio::sync::Mutex<State>,
    /// The secret files of the running config (read by the watcher without waiting for a reload).
    files: Mutex<Vec<PathBuf>>,
}

/// The running config and the providers built from it.
struct State {
    cfg: Config,
    validators: Validators,
    bearer: Option<Arc<BearerVerifier>>,
    delegator: Option<Arc<Delegator>>,
    providers: [u8; 32],
    redis: [u8; 32],
}

pub struct Parts {
    pub live: LiveAuthorizer,
    pub store: SessionStore,
    pub validators: Validators,
    pub bearer: Option<Arc<BearerVerifier>>,
    pub delegator: Option<Arc<Delegator>>,
    pub asserter: Option<Arc<Asserter>>,
    pub admin: Option<Arc<AdminState>>,
    pub login: Arc<LoginState>,
    pub m2m: Option<Arc<M2mManager>>,
}

impl Reloader {
    pub fn new(path: PathBuf, cfg: &Config, p: Parts) -> Arc<Self> {
        loaded();
        Arc::new(Self {
            path,
            started: cfg.clone(),
            live: p.live,
            store: p.store,
            asserter: p.asserter,
            admin: p.admin,
            login: p.login,
            m2m: p.m2m,
            state: tokio::sync::Mutex::new(State {
                cfg: cfg.clone(),
                validators: p.validators,
                bearer: p.bearer,
                delegator: p.delegator,
                providers: providers_digest(cfg),
                redis: redis_digest(cfg),
            }),
            files: Mutex::new(secret_files(cfg)),
        })
    }

    /// Loads the file again and applies it, or refuses it whole. True when applied.
    pub async fn reload(&self, why: &str) -> bool {
        let result = match Config::load(&self.path) {
            Ok(cfg) => self.apply(cfg).await,
            Err(e) => Err(e.to_string()),
        };
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
    async fn apply(&self, new: Config) -> Result<(), String> {
        let mut current = self.state.lock().await;
        let ring = new.session.key_ring().map_err(|e| format!("session.encryption_keys: {e}"))?;
        for ((key, was), (_, now)) in restart_only(&self.started).into_iter().zip(restart_only(&new)) {
            if was != now {
                tracing::warn!(
                    key,
                    "changed in the configuration but only takes effect on restart; keeping the running value"
                );
            }
        }
        let eff = effective(&self.started, &new);
        // Without keys (an operator turning [assertion] off, which waits for a restart) the running ones stay.
        let assertion_keys = match &self.asserter {
            Some(_) if !eff.assertion.signing_keys.is_empty() => {
                Some(eff.assertion.key_set().map_err(|e| format!("assertion.signing_keys: {e}"))?)
            }
            _ => None,
        };
        let redis = redis_digest(&eff);
        let fresh = if redis == current.redis {
            None
        } else {
            // Used only once it answers: a ConfigMap reaches every replica at once, and a wrong URL or
            // password must not take them all off Redis together (a rollout would have stopped at one pod).
            let fresh = crate::store::Redis::connect(&eff.redis).map_err(|e| format!("redis: {e}"))?;
            if !fresh.ping().await {
                return Err("redis: the changed [redis] does not reach Redis (PING failed); the running \
                            connections stay"
                    .into());
            }
            Some(fresh)
        };
        let digest = providers_digest(&eff);
        let rebuilt = if digest == current.providers {
            None
        } else {
            // Over the running M2M manager (new token clients): its tokens and refresher carry on.
            let choice = match &self.m2m {
                Some(m) => M2mChoice::Reuse(m.clone()),
                None => M2mChoice::Shared,
            };
            tracing::info!("[providers], [revalidation] or [bearer] changed: rebuilding the providers");
            Some(crate::providers::build(&eff, choice, self.store.clone()).await)
        };
        let (validators, bearer, delegator) = match &rebuilt {
            Some(p) => (p.validators.clone(), p.bearer.clone(), p.delegator.clone()),
            None => (current.validators.clone(), current.bearer.clone(), current.delegator.clone()),
        };
        let authz = Authorizer::new(
            self.store.clone(),
            validators.clone(),
            &eff,
            self.asserter.clone(),
            bearer.clone(),
            delegator.clone(),
        );
        self.store.set_keys(ring);
        if let (Some(asserter), Some(keys)) = (&self.asserter, assertion_keys) {
            asserter.set_keys(keys);
        }
        if let Some(fresh) = &fresh {
            tracing::info!("[redis] changed: new connections from it; calls in flight finish on the old ones");
            self.store.redis().replace(fresh);
        }
        self.live.store(authz);
        if let Some(p) = rebuilt {
            self.login.providers.store(Arc::new(p.login));
        }
        (current.validators, current.bearer, current.delegator, current.providers, current.redis) =
            (validators, bearer, delegator, digest, redis);
        if let (Some(admin), Some(token)) = (&self.admin, &new.server.admin_token) {
            admin.set_token(token.expose_secret());
        }
        crate::telemetry::set_log_level(&new.server.log_level);
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = secret_files(&new);
        current.cfg = new;
        Ok(())
    }

    /// The config file and every secret file the running config names.
    fn watched(&self) -> Vec<PathBuf> {
        let mut v = vec![self.path.clone()];
        v.extend(self.files.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
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
                        self.reload("SIGHUP").await;
                        seen = fingerprint(&self.watched());
                    }
                    _ = tokio::time::sleep(POLL) => {
                        let now = fingerprint(&self.watched());
                        if now == seen {
                            continue;
                        }
                        tokio::time::sleep(DEBOUNCE).await;
                        self.reload("a watched file changed").await;
                        seen = fingerprint(&self.watched());
                    }
                }
            }
        })
    }
}

fn secret_files(c: &Config) -> Vec<PathBuf> {
    let mut v = Vec::new();
    v.extend(c.server.admin_token_file.clone());
    v.extend(c.redis.password_file.clone());
    v.extend([&c.redis.ca_file, &c.redis.client_cert_file, &c.redis.client_key_file].into_iter().flatten().cloned());
    v.extend(c.session.encryption_keys_file.clone());
    v.extend(c.assertion.signing_keys_file.clone());
    v.extend(c.providers.values().filter_map(|p| p.client_secret_file.clone()));
    v.extend(c.providers.values().filter_map(|p| p.ca_file.clone()));
    v
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(grpc: &str, secret: &str, key: &str) -> Config {
        Config::from_toml(&format!(
            r#"
[server]
grpc_addr = "{grpc}"
http_addr = "127.0.0.1:9002"
public_url = "https://app.example.com"
[redis]
url = "redis://127.0.0.1:6379"
[session]
encryption_keys = ["{key}"]
[providers.corp]
kind = "oidc"
issuer = "https://idp.example.com"
client_id = "portcullis"
client_secret = "{secret}"
"#
        ))
        .unwrap()
    }

    #[test]
    fn a_client_secret_change_rebuilds_the_providers_and_a_key_change_does_not() {
        let k = crate::crypto::generate_key();
        let a = cfg("127.0.0.1:9001", "one", &k);
        assert_ne!(providers_digest(&a), providers_digest(&cfg("127.0.0.1:9001", "two", &k)));
        let other_key = cfg("127.0.0.1:9001", "one", &crate::crypto::generate_key());
        assert_eq!(providers_digest(&a), providers_digest(&other_key));
    }

    #[test]
    fn restart_only_keys_keep_their_running_value_and_the_key_ring_does_not() {
        let (k1, k2) = (crate::crypto::generate_key(), crate::crypto::generate_key());
        let started = cfg("127.0.0.1:9001", "one", &k1);
        let new = cfg("127.0.0.1:9101", "one", &k2);
        let changed: Vec<_> = restart_only(&started)
            .into_iter()
            .zip(restart_only(&new))
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect();
        assert_eq!(changed, ["server.grpc_addr"], "a new session key is not a restart-only change");
        let eff = effective(&started, &new);
        assert_eq!(eff.server.grpc_addr, "127.0.0.1:9001");
        assert_eq!(eff.session.encryption_keys[0].expose_secret(), k2);
    }

    #[test]
    fn a_redis_password_change_makes_new_connections_and_nothing_else_does() {
        let k = crate::crypto::generate_key();
        let a = cfg("127.0.0.1:9001", "one", &k);
        let mut b = cfg("127.0.0.1:9101", "two", &crate::crypto::generate_key());
        assert_eq!(redis_digest(&a), redis_digest(&b), "other sections do not touch the connections");
        b.redis.password = Some("rotated".to_string().into());
        assert_ne!(redis_digest(&a), redis_digest(&b), "the password is in the digest, though Debug hides it");
        let mut c = b.clone();
        c.redis.password = Some("rotated-again".to_string().into());
        assert_ne!(redis_digest(&b), redis_digest(&c));
        assert!(restart_only(&a).iter().all(|(key, _)| !key.starts_with("redis")), "[redis] is reloadable");
    }
}
