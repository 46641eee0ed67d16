//! Wiring: builds the shared state from a [`Config`], binds the gRPC and HTTP listeners, and drains both on
//! shutdown so in-flight checks finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::authz::grpc::{AuthzService, LiveAuthorizer};
use crate::authz::Authorizer;
use crate::config::Config;
use crate::reload::{Parts, Reloader};
use secrecy::ExposeSecret;

use crate::http::{self, HttpState};
use crate::idp::Validators;
use crate::login::{self, LoginState};
use crate::providers::{M2mChoice, Providers};

use crate::session::SessionStore;
use crate::store::Redis;

/// Public for the load kit's ceiling (`examples/loadkit.rs`), which can serve through the same transport.
pub mod grpc_io;
mod grpc_routes;

/// How often gRPC health follows Redis reachability.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// The gRPC service name Envoy checks.
const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("bind {what} {addr}: {source}")]
    Bind { what: &'static str, addr: String, source: std::io::Error },
    #[error("redis: {0}")]
    Redis(#[from] crate::store::StoreError),
    #[error("encryption keys: {0}")]
    Keys(#[from] crate::crypto::CryptoError),
    #[error("assertion.signing_keys: {0}")]
    Assertion(#[from] crate::assertion::AssertionError),
}

/// A running portcullis. Drop does not stop it: call [`Server::shutdown`].
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The Authorizer at start (a reload swaps [`Server::live`], not this one).
    pub authorizer: Arc<Authorizer>,
    /// The Authorizer every Check loads; a config reload swaps it.
    pub live: LiveAuthorizer,
    pub redis: Redis,
    /// What a [`Reloader`] rebuilds the Authorizer from; taken by [`Server::watch_config`].
    parts: Option<Parts>,
    draining: CancellationToken,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts with validators only (no login routes): the Check path alone.
    pub async fn start(cfg: &Config, validators: Validators) -> Result<Self, StartError> {
        Self::start_with(cfg, Providers { validators, ..Default::default() }).await
    }

    /// Starts with the given providers (tests inject their own).
    pub async fn start_with(cfg: &Config, providers: Providers) -> Result<Self, StartError> {
        let (redis, store) = core(cfg)?;
        Self::launch(cfg, redis, store, providers).await
    }

    /// Starts as `portcullis serve` does: providers built from config, M2M tokens as `m2m` says.
    pub async fn start_configured(cfg: &Config, m2m: M2mChoice) -> Result<Self, StartError> {
        let (redis, store) = core(cfg)?;
        let providers = crate::providers::build(cfg, m2m, store.clone()).await;
        Self::launch(cfg, redis, store, providers).await
    }

    /// Binds both listeners (port 0 picks a free one) and starts serving.
    async fn launch(cfg: &Config, redis: Redis, store: SessionStore, providers: Providers) -> Result<Self, StartError> {
        let asserter = crate::assertion::Asserter::from_config(&cfg.assertion, &cfg.server.public_url)?;
        let validators = providers.validators.clone();
        let bearer = providers.bearer.clone();
        let delegator = providers.delegator.clone();
        let authorizer = Authorizer::new(
            store.clone(),
            providers.validators,
            cfg,
            asserter.clone(),
            providers.bearer,
            providers.delegator,
        );
        let live: LiveAuthorizer = Arc::new(arc_swap::ArcSwap::new(authorizer.clone()));
        let login = Arc::new(LoginState {
            redis: redis.clone(),
            store,
            providers: arc_swap::ArcSwap::from_pointee(providers.login),
            session: cfg.session.clone(),
            login: cfg.login.clone(),
            trusted_proxies: cfg.server.trusted_proxies.clone(),
            public_origin: login::public_origin(&cfg.server.public_url),
        });

        let grpc = bind("grpc", &cfg.server.grpc_addr).await?;
        let http_l = bind("http", &cfg.server.http_addr).await?;
        let (grpc_addr, http_addr) = (local(&grpc), local(&http_l));
        let cancel = CancellationToken::new();
        let draining = CancellationToken::new();
        let mut tasks = Vec::new();

        if let Some(m2m) = &providers.m2m {
            tasks.push(m2m.spawn_refresher(cancel.clone()));
        }
        let (reporter, health) = tonic_health::server::health_reporter();
        tasks.push(tokio::spawn(follow_redis(redis.clone(), reporter, draining.clone())));
        tasks.push(tokio::spawn(keep_a_timer_armed(cancel.clone())));

        let svc = AuthzService(live.clone());
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let routes = grpc_routes::GrpcRoutes { authz: svc, health };
            let r = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(routes, grpc_io::incoming(grpc), c.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "grpc listener failed");
            }
        }));

        let app = http::router(HttpState {
            redis: redis.clone(),
            draining: draining.clone(),
            jwks: http::Jwks::new(asserter.as_ref()),
        })
        .merge(login::router(login.clone()));
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(http_l, app).with_graceful_shutdown(c.cancelled_owned()).await {
                tracing::error!(error = %e, "http listener failed");
            }
        }));

        let mut admin_addr = None;
        let mut admin = None;
        if let (Some(addr), Some(token)) = (&cfg.server.admin_addr, &cfg.server.admin_token) {
            let l = bind("admin", addr).await?;
            admin_addr = Some(local(&l));
            let state = Arc::new(crate::admin::AdminState::new(
                login.store.clone(),
                providers.m2m.clone(),
                token.expose_secret(),
            ));
            admin = Some(state.clone());
            let app = crate::admin::router(state);
            let c = cancel.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).with_graceful_shutdown(c.cancelled_owned()).await {
                    tracing::error!(error = %e, "admin listener failed");
                }
            }));
        }

        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        tracing::info!(%grpc_addr, %http_addr, ?admin_addr, workers, version = crate::telemetry::version_string(), "portcullis listening");
        let parts = Parts {
            live: live.clone(),
            store: login.store.clone(),
            validators,
            bearer,
            delegator,
            asserter,
            admin,
            login: login.clone(),
            m2m: providers.m2m.clone(),
        };
        Ok(Self {
            grpc_addr,
            http_addr,
            admin_addr,
            authorizer,
            live,
            redis,
            parts: Some(parts),
            draining,
            cancel,
            tasks,
        })
    }

    /// Reloads `path` (which `cfg` was loaded from) on SIGHUP and when it or a secret file it names
    /// changes. Called once; later calls do nothing.
    pub fn watch_config(&mut self, path: PathBuf, cfg: &Config) -> Option<Arc<Reloader>> {
        let reloader = Reloader::new(path, cfg, self.parts.take()?);
        self.tasks.push(reloader.clone().spawn(self.cancel.clone()));
        Some(reloader)
    }

    /// The first step of a shutdown: readiness and gRPC health say NOT_SERVING, checks are still answered
    /// for `delay` so that Envoy's health checks and the kubelet move traffic away before anything closes.
    pub async fn drain(&self, delay: Duration) {
        self.draining.cancel();
        tracing::info!(delay = ?delay, "draining: readiness and gRPC health now NOT_SERVING");
        tokio::time::sleep(delay).await;
    }

    /// Stops accepting, lets in-flight requests finish (up to `grace`), then returns.
    pub async fn shutdown(self, grace: Duration) {
        self.draining.cancel();
        self.cancel.cancel();
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("shutdown grace period elapsed with requests still in flight");
        }
    }
}

/// The Redis connection and the session store every part shares.
fn core(cfg: &Config) -> Result<(Redis, SessionStore), StartError> {
    crate::telemetry::metrics();
    let redis = Redis::connect(&cfg.redis)?;
    let keys = Arc::new(cfg.session.key_ring()?);
    let store = SessionStore::new(redis.clone(), keys, &cfg.session);
    Ok((redis, store))
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what, addr: addr.to_string(), source })
}

fn local(l: &TcpListener) -> SocketAddr {
    l.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// gRPC health is NOT_SERVING while Redis does not answer, and for good once the drain begins.
async fn follow_redis(redis: Redis, reporter: tonic_health::server::HealthReporter, draining: CancellationToken) {
    let mut last = None;
    loop {
        let status = if redis.ping().await { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(AUTHZ_SERVICE, status).await;
            tracing::info!(?status, "grpc health");
            last = Some(status);
        }
        tokio::select! {
            _ = draining.cancelled() => {
                reporter.set_service_status("", ServingStatus::NotServing).await;
                reporter.set_service_status(AUTHZ_SERVICE, ServingStatus::NotServing).await;
                return;
            }
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
}

/// Due well before any timeout a Check arms (`redis.timeout` is 500 ms by default).
const TICK: Duration = Duration::from_millis(100);

/// Keeps a timer due within [`TICK`] in tokio's timer wheel. tokio wakes its driver (an `eventfd` write)
/// whenever a timer is armed that is due before the wake the driver planned when it last parked, and after
/// parking with no timer at all, that is every timer armed until it parks again: each Check's Redis
/// timeouts after an idle moment, about 0.75 `eventfd` writes per cached Check at load. With this tick
/// armed, the driver's planned wake is never later than the tick, and the Checks' longer timeouts wake
/// nothing. It costs ten wake-ups a second.
async fn keep_a_timer_armed(cancel: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

/// `portcullis serve`: runs until SIGTERM or SIGINT, then drains; reloads `path` on SIGHUP and file changes.
pub async fn serve(cfg: Config, path: PathBuf) -> Result<(), StartError> {
    let mut server = Server::start_configured(&cfg, M2mChoice::Shared).await?;
    server.watch_config(path, &cfg);
    shutdown_signal().await;
    server.drain(cfg.server.drain_delay).await;
    tracing::info!("shutting down: finishing in-flight requests");
    server.shutdown(cfg.server.shutdown_grace).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
