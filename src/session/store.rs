//! Sessions in Redis: `session:{id}` hashes, the `user_sessions:{userId}` and `idp_sessions:{provider}:{sid}`
//! indexes, and token encryption on the way in and out.
//!
//! The Check hot path costs one command: [`SessionStore::load`] is a plain `HGETALL`, or
//! [`SessionStore::load_small`] an `HMGET` of the unsealed fields when `max_staleness` remembers the
//! identity. Only when the last slide is older than `slide_after` does a check make a second call,
//! [`SessionStore::slide`], a small script on the one key (Redis Cluster safe) that moves `lastAccess` and
//! the TTL.

use std::collections::HashMap;
use std::sync::Arc;

use redis::Script;

use super::cookie;
use super::model::{field, Corrupt, Session, Tokens};
use crate::config::SessionConfig;
use crate::crypto::{CryptoError, KeyRing};
use crate::store::{Redis, StoreError};

/// Slide the idle expiry, only while the session still exists (a logout in between must not leave a stub).
/// KEYS[1] = session key; ARGV = now, TTL seconds. Run only when a slide is due: most checks never call it.
const SLIDE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'lastAccess', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Write token fields only while the session still exists, so a refresh never resurrects a logout; the
/// delegated tokens (`dlg:*`, `{DLG}` below) derived from the old access token go with it.
/// KEYS[1] = session key; ARGV = field, value pairs.
const UPDATE_IF_EXISTS: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
local stale, prefix = {}, '{DLG}'
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then stale[#stale + 1] = f end
end
if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
return 1
"#;

/// Store a delegated token only while the session still holds the access token it was derived from: a
/// refresh (or a logout) in the meantime wins. KEYS[1] = session key; ARGV = that access token as stored
/// (ciphertext), field, value.
const PUT_DELEGATED: &str = r#"
if redis.call('HGET', KEYS[1], 'accessToken') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"#;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// What a login hands over to become a session.
pub struct NewSession {
    pub user_id: String,
    pub provider: String,
    pub sid: Option<String>,
    pub tokens: Tokens,
    pub client_fingerprint: Option<String>,
}

#[derive(Clone)]
pub struct SessionStore {
    redis: Redis,
    /// Swapped whole on a config reload; every clone of the store (Check, login, admin) sees the new ring.
    keys: Arc<arc_swap::ArcSwap<KeyRing>>,
    idle: i64,
    absolute: i64,
    slide_after: i64,
    slide_script: Arc<Script>,
    update_script: Arc<Script>,
    delegated_script: Arc<Script>,
}

pub use crate::keys::{idp_sessions as idp_key, session as session_key, user_sessions as user_key};

impl SessionStore {
    pub fn new(redis: Redis, keys: Arc<KeyRing>, cfg: &SessionConfig) -> Self {
        Self {
            redis,
            keys: Arc::new(arc_swap::ArcSwap::new(keys)),
            idle: cfg.idle_timeout.as_secs().max(1) as i64,
            absolute: cfg.absolute_timeout.as_secs().max(1) as i64,
            slide_after: cfg.slide_after.as_secs() as i64,
            slide_script: Arc::new(Script::new(SLIDE)),
            update_script: Arc::new(Script::new(
                &UPDATE_IF_EXISTS.replace("{DLG}", crate::keys::DELEGATED_FIELD_PREFIX),
            )),
            delegated_script: Arc::new(Script::new(PUT_DELEGATED)),
        }
    }

    /// The Redis handle behind the store (refresh locks sit next to the sessions they guard).
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The key ring that seals the tokens (the shared M2M token uses it too).
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.load_full()
    }

    /// The live key ring itself, for others that seal with it (the M2M manager).
    pub fn key_cell(&self) -> Arc<arc_swap::ArcSwap<KeyRing>> {
        self.keys.clone()
    }

    /// Installs a new key ring (a config reload); operations already running finish on the old one.
    pub fn set_keys(&self, keys: KeyRing) {
        self.keys.store(Arc::new(keys));
    }

    pub fn idle_timeout(&self) -> i64 {
        self.idle
    }

    /// One plain `HGETALL` (one command, one round trip; none on a client-cache hit, `redis.client_cache`):
    /// the session, or `None` when there is none. A key
    /// of another type or bytes that are not text are [`Corrupt`], so the caller denies and deletes.
    pub async fn load(&self, id: &str) -> Result<Option<Session>, LoadError> {
        let key = session_key(id);
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&key);
        let hash = text_pairs(self.read(&key, cmd).await?)?;
        if hash.is_empty() {
            return Ok(None);
        }
        Ok(Some(Session::from_hash(id.to_string(), hash)?))
    }

    /// [`SessionStore::load`] without the tokens: one `HMGET` of [`field::SMALL`], for a check whose identity
    /// is already remembered (`max_staleness`). The sealed tokens are most of a session's bytes; Redis,
    /// the socket and the parser skip them. Same answers: `None` for no session, [`Corrupt`] for garbage.
    pub async fn load_small(&self, id: &str) -> Result<Option<Session>, LoadError> {
        let key = session_key(id);
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&key).arg(&field::SMALL[..]);
        let redis::Value::Array(values) = self.read(&key, cmd).await? else { return Err(Corrupt("<reply>").into()) };
        if values.len() != field::SMALL.len() {
            return Err(Corrupt("<reply>").into());
        }
        let values = values
            .into_iter()
            .map(|v| if v == redis::Value::Nil { Ok(None) } else { text(v).map(Some) })
            .collect::<Result<Vec<_>, _>>()?;
        if values.iter().all(Option::is_none) {
            return Ok(None);
        }
        Ok(Some(Session::from_small(id.to_string(), values)?))
    }

    /// The check's one read of a session key (from the client cache when it is on); a key of another type
    /// is [`Corrupt`].
    async fn read(&self, key: &str, cmd: redis::Cmd) -> Result<redis::Value, LoadError> {
        match self.redis.query_cached(key, &cmd).await {
            Ok(v) => Ok(v),
            Err(StoreError::Redis(e)) if e.code() == Some("WRONGTYPE") => Err(Corrupt("<type>").into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a check at `now` should move the idle expiry: the last slide is `slide_after` old and the
    /// session is still within both timeouts.
    pub fn slide_due(&self, s: &Session, now: i64) -> bool {
        let since = now - s.last_access;
        since >= self.slide_after && since < self.idle && now < s.expires_at
    }

    /// The rare second call of a check: moves `lastAccess` and the key's TTL (one key: Cluster safe).
    pub async fn slide(&self, s: &Session, now: i64) -> Result<(), StoreError> {
        let ttl = self.idle.min(s.expires_at - now).max(1);
        let mut inv = self.slide_script.prepare_invoke();
        inv.key(session_key(&s.id)).arg(now).arg(ttl);
        self.redis.script::<i64>(inv).await.map(|_| ())
    }

    /// Creates a session under a fresh cookie value (a new id every login: no fixation).
    pub async fn create(&self, new: NewSession, now: i64) -> Result<(String, Session), SessionWriteError> {
        let value = cookie::new_value();
        let id = cookie::session_id(&value);
        let keys = self.keys.load();
        let session = Session {
            user_id: new.user_id,
            provider: new.provider,
            sid: new.sid,
            id_token: keys.encrypt(&id, field::ID_TOKEN, &new.tokens.id_token)?,
            access_token: keys.encrypt(&id, field::ACCESS_TOKEN, &new.tokens.access_token)?,
            refresh_token: match &new.tokens.refresh_token {
                Some(r) => Some(keys.encrypt(&id, field::REFRESH_TOKEN, r)?),
                None => None,
            },
            created_at: now,
            last_access: now,
            expires_at: now + self.absolute,
            client_fingerprint: new.client_fingerprint,
            last_token_update: now,
            mac: None,
            delegated: Vec::new(),
            small: false,
            id,
        };
        self.write(&session).await?;
        Ok((value, session))
    }

    /// Writes a whole session with its indexes (also used by tests and tools to plant sessions). One
    /// pipeline per key, so no pipeline spans Redis Cluster hash slots.
    /// The session's MAC is computed here, over what is written.
    pub async fn write(&self, s: &Session) -> Result<(), SessionWriteError> {
        let key = session_key(&s.id);
        let ttl = self.idle.min(s.expires_at - s.last_access).max(1);
        let mac = s.mac_parts(|parts| self.keys.load().mac(parts))?;
        let mut p = redis::pipe();
        p.cmd("HSET").arg(&key).arg(s.to_fields()).arg(field::MAC).arg(mac).ignore();
        p.cmd("EXPIRE").arg(&key).arg(ttl).ignore();
        let mut indexes = vec![user_key(&s.user_id)];
        if let Some(sid) = &s.sid {
            indexes.push(idp_key(&s.provider, sid));
        }
        let adds = indexes.iter().map(|k| {
            let mut p = redis::pipe();
            p.cmd("SADD").arg(k).arg(&s.id).ignore();
            p.cmd("EXPIRE").arg(k).arg(self.absolute).ignore();
            p
        });
        let adds: Vec<_> = adds.collect();
        let (first, rest) = futures::join!(
            self.redis.pipeline::<()>(&p),
            futures::future::try_join_all(adds.iter().map(|p| self.redis.pipeline::<()>(p)))
        );
        Ok(first.and(rest.map(|_| ()))?)
    }

    /// Whether the fields a session states in the clear are the ones it was written with. A session
    /// without a MAC (written before MACs existed) is [`CryptoError::Malformed`]: refused as tampered.
    pub fn verify(&self, s: &Session) -> Result<(), CryptoError> {
        let mac = s.mac.as_deref().ok_or(CryptoError::Malformed)?;
        s.mac_parts(|parts| self.keys.load().verify_mac(parts, mac))
    }

    /// Opens the stored tokens. Any failure means tampering or a lost key: the caller denies and deletes.
    /// A Check opens only what its validator uses: [`Self::open_id_token`], [`Self::open_access_token`].
    pub fn decrypt(&self, s: &Session) -> Result<Tokens, CryptoError> {
        let keys = self.keys.load();
        Ok(Tokens {
            id_token: keys.decrypt(&s.id, field::ID_TOKEN, &s.id_token)?,
            access_token: keys.decrypt(&s.id, field::ACCESS_TOKEN, &s.access_token)?,
            refresh_token: match &s.refresh_token {
                Some(r) => Some(keys.decrypt(&s.id, field::REFRESH_TOKEN, r)?),
                None => None,
            },
        })
    }

    /// Opens the stored ID token alone (every validator verifies it).
    pub fn open_id_token(&self, s: &Session) -> Result<String, CryptoError> {
        self.keys.load().decrypt(&s.id, field::ID_TOKEN, &s.id_token)
    }

    /// Opens the stored access token alone (introspection needs it; Graph does not).
    pub fn open_access_token(&self, s: &Session) -> Result<String, CryptoError> {
        self.keys.load().decrypt(&s.id, field::ACCESS_TOKEN, &s.access_token)
    }

    /// Replaces the tokens after a refresh (last write wins). Returns false if the session is gone.
    pub async fn update_tokens(&self, id: &str, t: &Tokens, now: i64) -> Result<bool, SessionWriteError> {
        let mut inv = self.update_script.prepare_invoke();
        inv.key(session_key(id));
        let keys = self.keys.load();
        inv.arg(field::ID_TOKEN).arg(keys.encrypt(id, field::ID_TOKEN, &t.id_token)?);
        inv.arg(field::ACCESS_TOKEN).arg(keys.encrypt(id, field::ACCESS_TOKEN, &t.access_token)?);
        if let Some(r) = &t.refresh_token {
            inv.arg(field::REFRESH_TOKEN).arg(keys.encrypt(id, field::REFRESH_TOKEN, r)?);
        }
        drop(keys);
        inv.arg(field::LAST_TOKEN_UPDATE).arg(now);
        let n: i64 = self.redis.script(inv).await?;
        Ok(n == 1)
    }

    /// One delegated-token field of a session and the access token (as stored) it must derive from; both
    /// `None` when the session is gone. One command on one key.
    pub async fn delegated(&self, id: &str, name: &str) -> Result<(Option<String>, Option<String>), StoreError> {
        self.redis.read(redis::cmd("HMGET").arg(session_key(id)).arg(field::ACCESS_TOKEN).arg(name)).await
    }

    /// Stores a sealed delegated token in its session field, unless the session is gone or its access token
    /// is no longer `derived_from` (ciphertext as stored). Returns whether it was stored.
    pub async fn put_delegated(
        &self,
        id: &str,
        derived_from: &str,
        field: &str,
        sealed: &str,
    ) -> Result<bool, StoreError> {
        let mut inv = self.delegated_script.prepare_invoke();
        inv.key(session_key(id)).arg(derived_from).arg(field).arg(sealed);
        let n: i64 = self.redis.script(inv).await?;
        Ok(n == 1)
    }

    /// Every `session:*` key, by SCAN (admin reports only: it walks the whole keyspace of one node).
    pub async fn scan_sessions(&self) -> Result<Vec<String>, StoreError> {
        let mut cursor = 0u64;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .redis
                .read(redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(session_key("*")).arg("COUNT").arg(500))
                .await?;
            out.extend(keys.into_iter().filter_map(|k| k.strip_prefix(&session_key("")).map(str::to_string)));
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Deletes a session and its index entries (one command per key: cluster safe).
    pub async fn delete(&self, s: &Session) -> Result<(), StoreError> {
        let mut cmds = vec![redis::cmd("DEL").arg(session_key(&s.id)).clone()];
        cmds.push(redis::cmd("SREM").arg(user_key(&s.user_id)).arg(&s.id).clone());
        if let Some(sid) = &s.sid {
            cmds.push(redis::cmd("SREM").arg(idp_key(&s.provider, sid)).arg(&s.id).clone());
        }
        futures::future::try_join_all(cmds.iter().map(|c| self.redis.query::<()>(c))).await.map(|_| ())
    }

    /// Deletes a session known only by id (its hash may be garbage); returns whether it existed.
    pub async fn delete_id(&self, id: &str) -> Result<bool, StoreError> {
        let n: i64 = self.redis.query(redis::cmd("DEL").arg(session_key(id))).await?;
        Ok(n > 0)
    }

    /// The ids in an index set (`user_sessions:` or `idp_sessions:`).
    pub async fn members(&self, set_key: &str) -> Result<Vec<String>, StoreError> {
        self.redis.read(redis::cmd("SMEMBERS").arg(set_key)).await
    }

    /// A session as stored, without sliding its expiry (admin and tools); `None` if gone or unreadable.
    pub async fn peek(&self, id: &str) -> Result<Option<Session>, StoreError> {
        match self.load(id).await {
            Ok(s) => Ok(s),
            Err(LoadError::Store(e)) => Err(e),
            Err(LoadError::Corrupt(_)) => Ok(None),
        }
    }

    /// A user's live sessions; index entries whose session expired are pruned on the way.
    pub async fn user_sessions(&self, user_id: &str) -> Result<Vec<Session>, StoreError> {
        let mut out = Vec::new();
        for id in self.members(&user_key(user_id)).await? {
            match self.peek(&id).await? {
                Some(s) => out.push(s),
                None => self.redis.query::<()>(redis::cmd("SREM").arg(user_key(user_id)).arg(&id)).await?,
            }
        }
        Ok(out)
    }

    /// Deletes the sessions `user_id` opened through `provider` and no others: `user_sessions:{userId}` is
    /// shared by every provider, and one IdP must not end sessions another IdP vouched for (back-channel
    /// logout by `sub`). Returns how many were deleted; entries whose session is gone are pruned.
    pub async fn delete_user_sessions_of(&self, user_id: &str, provider: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for id in self.members(&user_key(user_id)).await? {
            match self.peek(&id).await? {
                Some(s) if s.provider == provider => {
                    self.delete(&s).await?;
                    n += 1;
                }
                Some(_) => {}
                None => self.redis.query::<()>(redis::cmd("SREM").arg(user_key(user_id)).arg(&id)).await?,
            }
        }
        Ok(n)
    }

    /// Deletes every session in an index set and the set; returns how many sessions existed.
    pub async fn delete_indexed(&self, set_key: &str) -> Result<usize, StoreError> {
        let ids = self.members(set_key).await?;
        let mut n = 0;
        for id in &ids {
            if self.delete_id(id).await? {
                n += 1;
            }
        }
        self.redis.query::<()>(redis::cmd("DEL").arg(set_key)).await?;
        Ok(n)
    }
}

/// One reply value as text; bytes that are not UTF-8 are garbage.
fn text(v: redis::Value) -> Result<String, Corrupt> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b).map_err(|_| Corrupt("<utf-8>")),
        redis::Value::SimpleString(s) => Ok(s),
        _ => Err(Corrupt("<reply>")),
    }
}

/// An `HGETALL` reply (RESP2 array or RESP3 map) as text pairs; anything else is [`Corrupt`].
fn text_pairs(v: redis::Value) -> Result<HashMap<String, String>, Corrupt> {
    use redis::Value;
    match v {
        Value::Nil => Ok(HashMap::new()),
        Value::Array(items) => {
            let mut out = HashMap::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let Some(k) = it.next() {
                let v = it.next().ok_or(Corrupt("<reply>"))?;
                out.insert(text(k)?, text(v)?);
            }
            Ok(out)
        }
        Value::Map(pairs) => pairs.into_iter().map(|(k, v)| Ok((text(k)?, text(v)?))).collect(),
        _ => Err(Corrupt("<reply>")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionWriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}
