//! The per-session refresh lock `lock:refresh:{id}` (a [`crate::lock::RedisLock`]): one refresh per session
//! across replicas, because IdPs that rotate refresh tokens reject one used twice.

/// The lock key for a session's refresh.
pub fn refresh_key(session_id: &str) -> String {
    format!("lock:refresh:{session_id}")
}
