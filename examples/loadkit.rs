//! Helpers for `scripts/load.sh` (not part of the product):
//!
//!   loadkit upstream PORT
//!       a minimal HTTP upstream on 127.0.0.1:PORT answering every request `200 ok` (the load test's app;
//!       Python's http.server is far too slow for this)
//!   loadkit plant --config PORTCULLIS.toml --issuer URL [--provider corp] [--user alice] [--count N]
//!       logs in N times at the test OpenID provider at URL (tests/idp, a real Authorization Code + PKCE
//!       flow), stores each as a session exactly as the callback route would, and prints one cookie value
//!       per line
//!
//! The login is the integration tests' own (`testkit`).

// Test code: a failed expectation is a panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_testkit as harness;

use std::sync::Arc;

use portcullis::config::Config;
use portcullis::session::{NewSession, SessionStore};
use portcullis::store::Redis;

fn usage() -> ! {
    eprintln!(
        "usage: loadkit upstream PORT | loadkit plant --config FILE --issuer URL [--provider P] [--user U] [--count N]"
    );
    std::process::exit(64);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("upstream") => upstream(args.get(1).and_then(|p| p.parse().ok()).unwrap_or_else(|| usage())).await,
        Some("plant") => plant(&args[1..]).await,
        _ => usage(),
    }
}

async fn upstream(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind upstream");
    let app = axum::Router::new().fallback(|| async { "ok" });
    axum::serve(listener, app).await.expect("upstream");
}

async fn plant(args: &[String]) {
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let (Some(config), Some(issuer)) = (opt("--config"), opt("--issuer")) else { usage() };
    let provider = opt("--provider").unwrap_or_else(|| "corp".into());
    let user = opt("--user").unwrap_or_else(|| "alice".into());
    let count: usize = opt("--count").and_then(|n| n.parse().ok()).unwrap_or(1);

    let cfg = Config::load(std::path::Path::new(&config)).unwrap_or_else(|e| panic!("{config}: {e}"));
    let redis = Redis::connect(&cfg.redis).expect("redis config");
    let keys = cfg.session.key_ring().expect("session.encryption_keys");
    let store = SessionStore::new(redis, Arc::new(keys), &cfg.session);
    for _ in 0..count {
        let (_browser, tokens) = harness::idp::login_at(&issuer, &user).await;
        let new = NewSession {
            user_id: user.clone(),
            provider: provider.clone(),
            sid: None,
            tokens,
            client_fingerprint: None,
        };
        let (value, _) = store.create(new, portcullis::now()).await.expect("create session");
        println!("{value}");
    }
}
