//! Real dependencies for tests, benches and the load kit, started per use and stopped on drop: Redis
//! (standalone, Sentinel, Cluster), the node OpenID provider, Envoy, an upstream, portcullis in-process.
//! A crate of its own so tests, benches and examples share it without `#[path]` includes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod app;
pub mod envoy;
pub mod idp;
pub mod redis;
pub mod upstream;

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// The repository root: where `envoy/`, `tests/idp`, `scripts/` and `.venv` live.
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
