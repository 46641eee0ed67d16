//! Real dependencies for tests, benches and the load kit, started per use and stopped on drop: Redis
//! (standalone, Sentinel, Cluster), the node OpenID provider, Envoy, an upstream, portcullis in-process.
//! A crate of its own so tests, benches and examples share it without `#[path]` includes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod app;
pub mod envoy;
pub mod idp;
pub mod redis;
pub mod tls;
pub mod upstream;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root: where `envoy/`, `tests/idp`, `scripts/` and `.venv` live.
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A port nothing listens on, for a server a test is about to start (Redis, the IdP, Envoy: processes
/// told their port, often one that must be known first, as in a redirect URI). It is taken below Linux's
/// ephemeral range (32768 and up), where the OS picks the local port of every client connection: a port
/// from that range could become some concurrent test's connection before its server bound it, and Envoy
/// and the IdP then failed with "address already in use" under the parallel suite. Never the same port
/// twice in one process.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = *START.get_or_init(|| rand::random::<u32>() % SPAN);
    for _ in 0..SPAN {
        let port = u16::try_from(FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN).expect("port");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
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
