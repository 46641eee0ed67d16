//! The Redis connection (standalone, cluster, or a master found through Sentinel) and the calls the
//! rest of the crate makes on it.
//!
//! Connections are redis-rs multiplexed connections (`ConnectionManager`, or the cluster client), shared
//! by every task. A checkout pool such as deadpool-redis PINGs on every checkout, which would double the
//! round trips of the Check hot path; a multiplexed connection needs no checkout. Every call carries a
//! timeout, and every failure is counted in `portcullis_redis_errors_total`.
//!
//! With `redis.client_cache`, one more connection speaks RESP3 with `CLIENT TRACKING ON`: only the Check's
//! session read ([`Redis::query_cached`]) goes through it ([`client_cache`]). Every other command keeps the
//! RESP2 pool and its reply shapes.
//!
//! A reload that changes `[redis]` (a rotated password or certificate) swaps new connections in under every
//! clone ([`Redis::replace`]). A read that meets a dead connection is sent once more ([`again_if_dropped`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, ScriptInvocation, Value};
use tokio::sync::OnceCell;
use tracing::Instrument;

use secrecy::ExposeSecret;

use crate::config::{RedisConfig, RedisMode};

mod client_cache;
use client_cache::ClientCache;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis timed out")]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl StoreError {
    /// The connection, not the command, failed (or did not answer in time): worth a new connection.
    fn connection_lost(&self) -> bool {
        match self {
            StoreError::Timeout => true,
            StoreError::Redis(r) => {
                r.is_io_error()
                    || r.is_connection_dropped()
                    || r.is_connection_refusal()
                    || r.is_timeout()
                    || r.is_unrecoverable_error()
            }
        }
    }
}

/// Shared handle to Redis. Cheap to clone. Every clone sees [`Redis::replace`]: a call takes the
/// connections current when it starts and finishes on them.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<ArcSwap<Inner>>,
}

enum Backend {
    Standalone {
        conns: Vec<ConnectionManager>,
        next: AtomicUsize,
    },
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        conn: OnceCell<ClusterConnection>,
    },
    /// The master Sentinel names; forgotten on a connection error, a timeout or READONLY (a failover made it
    /// a replica), so the next call asks Sentinel again.
    Sentinel {
        sentinel: Box<tokio::sync::Mutex<SentinelClient>>,
        master: tokio::sync::RwLock<Option<ConnectionManager>>,
        config: ConnectionManagerConfig,
    },
}

struct Inner {
    backend: Backend,
    timeout: Duration,
    /// `redis.client_cache` (standalone only).
    cached: Option<ClientCache>,
}

/// One connection for one call.
#[derive(Clone)]
pub enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Redis {
    /// Builds the connections lazily: start-up succeeds while Redis is down, and readiness reports it.
    pub fn connect(cfg: &RedisConfig) -> Result<Self, StoreError> {
        Ok(Self { inner: Arc::new(ArcSwap::from_pointee(Inner::connect(cfg)?)) })
    }

    /// Points every clone at `fresh`'s connections, for a rotated password or certificate (reload): calls in
    /// flight finish on the old ones, which close with the last of them.
    pub fn replace(&self, fresh: &Redis) {
        self.inner.store(fresh.inner.load_full());
    }

    /// Runs one command, once: for writes (a read goes through [`Redis::read`]).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let inner = self.inner.load_full();
        inner
            .timed(async {
                let mut c = inner.conn().await?;
                Ok(cmd.query_async(&mut c).await?)
            })
            .await
    }

    /// Runs `cmd`, a read of `key` alone, from the client cache when it is on (`redis.client_cache`,
    /// [`client_cache`]); without it, the same as [`Redis::read`]. With it the reply is RESP3 (a hash is a
    /// `Value::Map`). Sent again once if it found its connection dead ([`again_if_dropped`]).
    pub async fn query_cached(&self, key: &str, cmd: &Cmd) -> Result<Value, StoreError> {
        let inner = self.inner.load_full();
        let Some(cached) = &inner.cached else { return inner.read(cmd).await };
        // Boxed: off by default, and every check's future would carry its state.
        Box::pin(inner.observed(again_if_dropped(|| cached.read(key.as_bytes(), cmd)))).await
    }

    /// Runs `cmd`, a command that changes nothing, sent again once if it found its connection dead
    /// ([`again_if_dropped`]).
    pub async fn read<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.inner.load_full().read(cmd).await
    }

    /// Runs a pipeline in one round trip. In cluster mode all its keys must share a hash slot.
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, StoreError> {
        let inner = self.inner.load_full();
        inner
            .timed(async {
                let mut c = inner.conn().await?;
                Ok(pipe.query_async(&mut c).await?)
            })
            .await
    }

    /// Runs a Lua script (EVALSHA, loading it once on NOSCRIPT).
    pub async fn script<T: FromRedisValue>(&self, inv: ScriptInvocation<'_>) -> Result<T, StoreError> {
        let inner = self.inner.load_full();
        inner
            .timed(async {
                let mut c = inner.conn().await?;
                Ok(inv.invoke_async(&mut c).await?)
            })
            .await
    }

    /// Readiness probe: the pool answers, and with `redis.client_cache` the tracking connection does too (a
    /// Redis before 6, or an ACL user without `CLIENT`, refuses it, and every check would be a 503).
    pub async fn ping(&self) -> bool {
        let pool = self.read::<String>(&redis::cmd("PING")).await.is_ok();
        let inner = self.inner.load_full();
        match &inner.cached {
            Some(cached) if pool => inner.observed(again_if_dropped(|| cached.ping())).await.is_ok(),
            _ => pool,
        }
    }
}

impl Inner {
    /// [`Redis::read`] on these connections. Not an `async fn`, for the reason [`Inner::timed`] gives.
    fn read<'a, T: FromRedisValue + 'a>(
        &'a self,
        cmd: &'a Cmd,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + 'a {
        self.timed(again_if_dropped(move || async move {
            let mut c = self.conn().await?;
            Ok(cmd.query_async(&mut c).await?)
        }))
    }

    fn connect(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let mut cached = None;
        let backend = match cfg.mode {
            RedisMode::Cluster => {
                let urls: Vec<String> = cfg.urls.iter().map(|u| with_credentials(u, cfg)).collect();
                let mut builder = redis::cluster::ClusterClientBuilder::new(urls)
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.timeout);
                if let Some(certs) = certificates(cfg) {
                    builder = builder.certs(certs);
                }
                let client = builder.build()?;
                Backend::Cluster { client: Box::new(client), conn: OnceCell::new() }
            }
            RedisMode::Sentinel => {
                let sentinel = sentinel_client(cfg)?;
                Backend::Sentinel {
                    sentinel: Box::new(tokio::sync::Mutex::new(sentinel)),
                    master: tokio::sync::RwLock::new(None),
                    config: manager_config(cfg),
                }
            }
            RedisMode::Standalone => {
                let url = with_credentials(cfg.url.as_deref().unwrap_or_default(), cfg);
                let client = match certificates(cfg) {
                    Some(certs) => redis::Client::build_with_tls(url, certs)?,
                    None => redis::Client::open(url)?,
                };
                let mcfg = manager_config(cfg);
                let conns = (0..cfg.pool_size.unwrap_or(1).max(1))
                    .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), mcfg.clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                if cfg.client_cache {
                    cached = Some(ClientCache::new(&client, cfg)?);
                }
                Backend::Standalone { conns, next: AtomicUsize::new(0) }
            }
        };
        Ok(Self { backend, timeout: cfg.timeout, cached })
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        match &self.backend {
            Backend::Standalone { conns, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % conns.len();
                Ok(Conn::Standalone(conns[i].clone()))
            }
            // Connecting is rare and its future large: boxed, so every command's future does not carry it.
            Backend::Cluster { client, conn } => match conn.get() {
                Some(c) => Ok(Conn::Cluster(c.clone())),
                None => {
                    Ok(Conn::Cluster(Box::pin(conn.get_or_try_init(|| client.get_async_connection())).await?.clone()))
                }
            },
            Backend::Sentinel { sentinel, master, config } => {
                if let Some(m) = master.read().await.as_ref() {
                    return Ok(Conn::Standalone(m.clone()));
                }
                Box::pin(Self::resolve_master(sentinel, master, config)).await
            }
        }
    }

    /// Asks Sentinel for the master and connects to it, once for every caller waiting meanwhile.
    async fn resolve_master(
        sentinel: &tokio::sync::Mutex<SentinelClient>,
        master: &tokio::sync::RwLock<Option<ConnectionManager>>,
        config: &ConnectionManagerConfig,
    ) -> Result<Conn, StoreError> {
        let mut slot = master.write().await;
        if let Some(m) = slot.as_ref() {
            return Ok(Conn::Standalone(m.clone()));
        }
        let client = sentinel.lock().await.async_get_client().await?;
        let m = ConnectionManager::new_with_config(client, config.clone()).await?;
        *slot = Some(m.clone());
        tracing::info!("redis master resolved through sentinel");
        Ok(Conn::Standalone(m))
    }

    /// After a failed call in Sentinel mode, forget the master unless the error was the command's own.
    async fn after_error(&self, e: &StoreError) {
        let Backend::Sentinel { master, .. } = &self.backend else { return };
        let read_only = |r: &redis::RedisError| r.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if e.connection_lost() || matches!(e, StoreError::Redis(r) if read_only(r)) {
            *master.write().await = None;
        }
    }

    /// Runs `fut` within `redis.timeout`, observed. Not an `async fn`: every level of nested future counts
    /// against the compiler's layout depth, which the benches' Check futures came within reach of.
    fn timed<'a, T, F>(&'a self, fut: F) -> impl std::future::Future<Output = Result<T, StoreError>> + 'a
    where
        F: std::future::Future<Output = Result<T, StoreError>> + 'a,
        T: 'a,
    {
        use futures::FutureExt;
        let timed = tokio::time::timeout(self.timeout, fut).map(|r| r.unwrap_or(Err(StoreError::Timeout)));
        self.observed(timed)
    }

    /// A span, and a log line and `portcullis_redis_errors_total` for a failure.
    async fn observed<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        // One span per round trip; never the key (a session key holds the session id) nor a value. Only
        // inside a traced operation: the readiness PING every few seconds is no trace of its own.
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "portcullis.redis",
                otel.kind = "client",
                db.system = "redis",
                error = tracing::field::Empty
            )
        };
        let out = fut.instrument(span.clone()).await;
        if let Err(e) = &out {
            span.record("error", true);
            metrics::counter!("portcullis_redis_errors_total").increment(1);
            tracing::warn!(error = %e, "redis call failed");
            self.after_error(e).await;
        }
        out
    }
}

/// Runs `call` once more when its first try found the connection dead (Redis restarted, failed over, or
/// closed it): redis-rs fails the call that meets a dead connection and reconnects behind it, so without
/// this the check that came first after a Redis restart would be a 503. Reads only: a command whose reply
/// was lost may have run, and running a read twice changes nothing. A refused connection is tried again too:
/// the connection manager keeps its last reconnect's refusal until a call asks again, which is the first
/// check after Redis is back. While Redis is down that costs the 503 one more connect (and redis-rs's
/// backoff, about 100 ms), within `redis.timeout`.
async fn again_if_dropped<T, F, Fut>(call: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    match call().await {
        Err(StoreError::Redis(e)) if e.is_connection_dropped() => {
            tracing::info!(error = %e, "redis connection lost; sending the read again on a new one");
            call().await
        }
        other => other,
    }
}

fn manager_config(cfg: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(Some(cfg.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1))
}

/// What `rediss://` connections trust and present beyond the URL: `redis.ca_file` (instead of the public
/// roots) and the client pair. `None`: the URL alone.
fn certificates(cfg: &RedisConfig) -> Option<redis::TlsCertificates> {
    if cfg.ca.is_none() && cfg.client_cert.is_none() {
        return None;
    }
    let client_tls = cfg.client_cert.as_ref().zip(cfg.client_key.as_ref()).map(|(cert, key)| redis::ClientTlsConfig {
        client_cert: cert.bytes().to_vec(),
        client_key: key.bytes().to_vec(),
    });
    Some(redis::TlsCertificates { client_tls, root_cert: cfg.ca.as_ref().map(|ca| ca.bytes().to_vec()) })
}

/// The sentinels at `redis.urls` (with the credentials of the first URL that has any), the master with
/// `redis.username`/`password`. With `rediss://` sentinels the master is reached over TLS too, with the same
/// certificates: redis-rs's default would reach it in the clear, password included.
fn sentinel_client(cfg: &RedisConfig) -> Result<SentinelClient, StoreError> {
    use redis::IntoConnectionInfo;
    let infos = cfg.urls.iter().map(|u| u.as_str().into_connection_info()).collect::<Result<Vec<_>, _>>()?;
    let master = cfg.sentinel_master.clone().unwrap_or_default();
    let mut b = SentinelClientBuilder::new(infos.iter().map(|i| i.addr().clone()), master, SentinelServerType::Master)?;
    if let Some(own) = infos.iter().map(|i| i.redis_settings()).find(|r| r.password().is_some()) {
        if let Some(u) = own.username() {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = own.password() {
            b = b.set_client_to_sentinel_password(p);
        }
    }
    if let Some(u) = &cfg.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &cfg.password {
        b = b.set_client_to_redis_password(p.expose_secret());
    }
    if cfg.tls() {
        b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(certs) = certificates(cfg) {
            b = b.set_client_to_sentinel_certificates(certs.clone()).set_client_to_redis_certificates(certs);
        }
    }
    Ok(b.build()?)
}

fn with_credentials(url: &str, cfg: &RedisConfig) -> String {
    let Ok(mut u) = url::Url::parse(url) else { return url.to_string() };
    if let Some(user) = &cfg.username {
        let _ = u.set_username(user);
    }
    if let Some(pw) = &cfg.password {
        let _ = u.set_password(Some(pw.expose_secret()));
    }
    u.to_string()
}
