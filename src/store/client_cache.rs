//! `redis.client_cache`: the Check's session read answered from memory, never older than the check.
//!
//! One RESP3 connection with `CLIENT TRACKING ON` does the cached reads; Redis then pushes an
//! invalidation on that same connection whenever any client changes (or expires, or flushes) a key it
//! read. redis-rs hands each push to [`Entries::on_push`] inside the connection's read loop, so a push
//! is applied before any reply that came after it on the socket is handed over.
//!
//! That order is the whole guarantee. A hit is served only after the check's own `PING` has come back on
//! the tracking connection (the barrier): a write Redis acknowledged before the check began queued its
//! invalidation ahead of that PONG, so a logout or revoke on any replica is seen by the very next check.
//! The round trip stays; what the cache saves is Redis's work (a `PING` instead of a hash read) and the
//! reply's bytes. Concurrent checks' PINGs leave in one write, as their reads would. A barrier that fails
//! (timeout, dropped connection) fails the check as any Redis failure does: 503, never an answer from
//! memory. (A `PING` shared by the checks waiting at the same time was tried and cost portcullis more CPU
//! than it saved Redis: BENCHMARKS.md.)
//!
//! A miss reads through the tracking connection and keeps the reply only if no invalidation was applied
//! while it was in flight: a push read between the reply and the store would otherwise be lost, and a
//! revoked session kept.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, ProtocolVersion, PushInfo, PushKind, Value};

use super::StoreError;
use crate::config::RedisConfig;

pub(super) struct ClientCache {
    client: redis::Client,
    config: AsyncConnectionConfig,
    entries: Arc<Entries>,
    /// The tracking connection; `None` until first use and after it failed.
    conn: ArcSwapOption<MultiplexedConnection>,
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
}

impl ClientCache {
    pub(super) fn new(client: &redis::Client, cfg: &RedisConfig) -> Result<Self, StoreError> {
        let info = client.get_connection_info().clone();
        let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(resp3))?;
        let entries = Arc::new(Entries::new(cfg.client_cache_size, cfg.client_cache_ttl));
        let pushed = entries.clone();
        let config = AsyncConnectionConfig::new().set_connection_timeout(Some(cfg.connect_timeout)).set_push_sender(
            move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                pushed.on_push(info);
                Ok(())
            },
        );
        Ok(Self {
            client,
            config,
            entries,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            timeout: cfg.timeout,
        })
    }

    /// `cmd` reads `key` only. From memory once the barrier has passed; otherwise from Redis, kept for the
    /// next check unless an invalidation crossed it. Bounded by `redis.timeout` (the caller adds none).
    pub(super) async fn read(&self, key: &[u8], cmd: &Cmd) -> Result<Value, StoreError> {
        let packed = cmd.get_packed_command();
        if self.entries.get(key, &packed).is_some() {
            self.call::<()>(&redis::cmd("PING")).await?;
            if let Some(hit) = self.entries.get(key, &packed) {
                return Ok(hit.value.clone());
            }
        }
        let epoch = self.entries.epoch();
        let value: Value = self.call(cmd).await?;
        self.entries.keep(epoch, key, packed, &value);
        Ok(value)
    }

    /// Readiness: the tracking connection is up (or can be made) and answers.
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.call(&redis::cmd("PING")).await
    }

    /// One command on the tracking connection. A lost connection is dropped, and the cache with it; so is
    /// one that does not answer in time, which may never deliver the pushes it holds. A command error
    /// (`WRONGTYPE`) is neither.
    async fn call<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let answer = tokio::time::timeout(self.timeout, async {
            let mut conn = self.connection().await?;
            Ok(cmd.query_async(&mut conn).await?)
        })
        .await
        .unwrap_or(Err(StoreError::Timeout));
        if answer.as_ref().is_err_and(StoreError::connection_lost) {
            self.conn.store(None);
            self.entries.clear();
        }
        answer
    }

    /// The tracking connection, made (with `CLIENT TRACKING ON`) by one caller when there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let mut conn = self.client.get_multiplexed_async_connection_with_config(&self.config).await?;
        redis::cmd("CLIENT").arg("TRACKING").arg("ON").query_async::<()>(&mut conn).await?;
        // Nothing read on an earlier connection is kept: its invalidations stopped with it.
        self.entries.clear();
        self.conn.store(Some(Arc::new(conn.clone())));
        tracing::info!("redis client cache: tracking connection up");
        Ok(conn)
    }
}

/// The cached replies, one per key: the command that read it (a session is read whole or without its
/// tokens) and when.
struct Entries {
    map: quick_cache::sync::Cache<Vec<u8>, Arc<Entry>>,
    ttl: Duration,
    /// Moved by every invalidation, under `writes`: a miss keeps its reply only if it did not move.
    epoch: AtomicU64,
    writes: Mutex<()>,
}

struct Entry {
    cmd: Vec<u8>,
    value: Value,
    at: Instant,
}

impl Entries {
    fn new(size: usize, ttl: Duration) -> Self {
        Self { map: quick_cache::sync::Cache::new(size.max(1)), ttl, epoch: AtomicU64::new(0), writes: Mutex::new(()) }
    }

    /// Serialises stores against invalidations (a poisoned lock guards no data: go on).
    fn write(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &[u8], cmd: &[u8]) -> Option<Arc<Entry>> {
        self.map.get(key).filter(|e| e.cmd == cmd && e.at.elapsed() < self.ttl)
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(SeqCst)
    }

    fn keep(&self, epoch: u64, key: &[u8], cmd: Vec<u8>, value: &Value) {
        let _w = self.write();
        if self.epoch.load(SeqCst) == epoch {
            self.map.insert(key.to_vec(), Arc::new(Entry { cmd, value: value.clone(), at: Instant::now() }));
        }
    }

    /// Runs in the tracking connection's read loop. An invalidation names the keys, or none (`FLUSHALL`,
    /// or Redis dropping its tracking table): then everything goes, as it does with the connection.
    fn on_push(&self, info: PushInfo) {
        match info.kind {
            PushKind::Invalidate => {
                let keys = match info.data.first() {
                    Some(Value::Array(keys)) => keys
                        .iter()
                        .map(|k| match k {
                            Value::BulkString(k) => Some(k.as_slice()),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>(),
                    _ => None,
                };
                match keys {
                    Some(keys) => self.forget(&keys),
                    None => self.clear(),
                }
            }
            PushKind::Disconnection => self.clear(),
            _ => {}
        }
    }

    fn forget(&self, keys: &[&[u8]]) {
        let _w = self.write();
        self.epoch.fetch_add(1, SeqCst);
        for k in keys {
            self.map.remove(*k);
        }
    }

    fn clear(&self) {
        let _w = self.write();
        self.epoch.fetch_add(1, SeqCst);
        self.map.clear();
    }
}

#[cfg(test)]
mod tests;
