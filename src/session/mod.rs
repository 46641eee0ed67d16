//! Server-side sessions: the cookie that names one, its Redis hash, and the rules it must pass.

pub mod cookie;
pub mod model;
pub mod store;

pub use model::{Expiry, Session, Tokens};
pub use store::{LoadError, NewSession, SessionStore, SessionWriteError};

/// The client fingerprint a session may be bound to: a hash of the user agent.
pub fn fingerprint(user_agent: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(format!("ua:{user_agent}").as_bytes())[..16])
}
