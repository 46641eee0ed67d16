//! Latency of the Check path and of the M2M token source, against the real parts the integration tests use
//! (redis-server, the node OpenID provider in `tests/idp`, portcullis in-process). Every table has a
//! baseline measured in the same run and a ratio column against it: compare ratios, not absolute times,
//! across machines and runs.
//!
//!   cargo bench --bench latency             # every section
//!   cargo bench --bench latency -- check    # only sections whose name contains an argument (check, m2m,
//!                                           # assertion, delegate)
//!
//! Numbers only, no pass/fail. `cargo test --all-targets` (`make test`) also builds this target and, since
//! it has `harness = false`, runs it without arguments: `main` returns at once unless cargo bench passed
//! `--bench`, so the test run stays fast.

// Test code: a failed expectation is a panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The whole server runs inside this binary's own async fns: its futures nest deeper than the default
// layout-depth limit (128) leaves room for in a fresh build (a clean-clone CI once failed on it).
#![recursion_limit = "256"]

use portcullis_testkit as harness;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::{ClientAuth, Config};
use portcullis::m2m::{ClientSettings, M2mManager, M2mSource, TokenClient};
use portcullis::session::NewSession;
use portcullis::store::Redis;
use serde_json::json;

use harness::app::{config, request, StaticValidator, TestApp};
use harness::idp::{provider_toml, IdpServer, CLIENT_ID, CLIENT_SECRET};
use harness::redis::RedisServer;

const P: &str = "corp";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        // Run by `cargo test --all-targets`: nothing to check here, and the numbers take a while.
        return;
    }
    let filters: Vec<&str> = args.iter().filter(|a| !a.starts_with("--")).map(String::as_str).collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    // Two workers: the machine this was written for has two cores, as a small sidecar would.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        if wanted("check") {
            check_section().await;
        }
        if wanted("m2m") {
            m2m_section().await;
        }
        if wanted("assertion") {
            assertion_section().await;
        }
        if wanted("delegate") {
            delegate_section().await;
        }
    });
}

// ------------------------------------------------------------------------------------------------------
// Measuring and printing.

struct Row {
    name: String,
    n: usize,
    p50: Duration,
    p99: Duration,
    mean: Duration,
    note: String,
}

fn row(name: &str, mut samples: Vec<Duration>, note: String) -> Row {
    assert!(!samples.is_empty());
    samples.sort();
    let n = samples.len();
    let mean = samples.iter().sum::<Duration>() / n as u32;
    Row { name: name.to_string(), n, p50: samples[n / 2], p99: samples[(n * 99 / 100).min(n - 1)], mean, note }
}

/// Runs `f` `warmup` times untimed, then `n` times timed one by one.
async fn measure<F, Fut>(warmup: usize, n: usize, mut f: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..warmup {
        f().await;
    }
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f().await;
        t.push(start.elapsed());
    }
    t
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10.0 {
        format!("{us:.2} µs")
    } else if us < 10_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

fn ratio(x: Duration, base: Duration) -> String {
    format!("{:.2}x", x.as_secs_f64() / base.as_secs_f64().max(1e-12))
}

/// The first row is the baseline.
fn print_table(title: &str, rows: &[Row]) {
    let base = &rows[0];
    let w = rows.iter().map(|r| r.name.chars().count()).max().unwrap_or(0).max(4);
    println!("\n{title}");
    println!(
        "{:<w$}  {:>7}  {:>10}  {:>10}  {:>10}  {:>9}  {:>9}  note",
        "case", "n", "p50", "p99", "mean", "p50/base", "p99/base"
    );
    for r in rows {
        println!(
            "{:<w$}  {:>7}  {:>10}  {:>10}  {:>10}  {:>9}  {:>9}  {}",
            r.name,
            r.n,
            fmt(r.p50),
            fmt(r.p99),
            fmt(r.mean),
            ratio(r.p50, base.p50),
            ratio(r.p99, base.p99),
            r.note
        );
    }
}

// ------------------------------------------------------------------------------------------------------
// Check: sequential gRPC Check calls from one client over loopback.

/// portcullis as `serve` builds it against the real IdP (Redis-shared M2M manager included).
async fn idp_app(redis: &RedisServer, idp: &IdpServer, provider_extra: &str, extra: &str) -> TestApp {
    let mut cfg: Config = config(&redis.url(), &format!("{extra}\n{}", provider_toml(P, "ping", idp, provider_extra)));
    cfg.redis.timeout = Duration::from_secs(5);
    TestApp::serve_like(cfg).await
}

/// A real login at the IdP planted as a session, as the callback route would; returns the Cookie header.
async fn real_session(app: &TestApp, idp: &IdpServer) -> String {
    let new = NewSession {
        user_id: "alice".into(),
        provider: P.into(),
        sid: None,
        tokens: idp.login("alice").await,
        client_fingerprint: None,
    };
    let (value, _) = app.server.authorizer.store().create(new, portcullis::now()).await.expect("create session");
    format!("{}={value}", app.cookie_name())
}

async fn checks(app: &TestApp, cookie: Option<&str>, want: u16, warmup: usize, n: usize) -> Vec<Duration> {
    let headers: Vec<(&str, &str)> = cookie.map(|c| vec![("cookie", c)]).unwrap_or_default();
    let req = request("GET", "/api/me", &headers);
    measure(warmup, n, || {
        let req = req.clone();
        async move {
            let got = app.check(req).await.status();
            assert_eq!(got, want, "the bench measures the wrong thing");
        }
    })
    .await
}

async fn check_section() {
    let redis = RedisServer::start();
    let mut idp = IdpServer::start().await;
    let mut rows = Vec::new();

    // Baseline: no cookie, decided without Redis. Then one Redis round trip and a validator that answers at once.
    let v = StaticValidator::new();
    let app = TestApp::with_validator(config(&redis.url(), ""), v.clone()).await;
    let (value, _) = app.login("alice", json!({"sub": "alice", "email": "alice@example.com"})).await;
    let cookie = format!("{}={value}", app.cookie_name());
    rows.push(row("no cookie -> 401 (baseline: no Redis)", checks(&app, None, 401, 500, 5000).await, String::new()));
    let unknown = format!("{}={}", app.cookie_name(), "x".repeat(43));
    rows.push(row(
        "unknown session cookie -> 401 (1 Redis round trip)",
        checks(&app, Some(&unknown), 401, 500, 5000).await,
        String::new(),
    ));
    rows.push(row(
        "session + static validator (1 Redis round trip)",
        checks(&app, Some(&cookie), 200, 500, 5000).await,
        String::new(),
    ));
    app.shutdown().await;

    for (name, extra) in [
        ("every_request, real IdP (introspection)", ""),
        ("max_staleness 30s, real IdP", "[revalidation]\nmode = \"max_staleness\"\nmax_staleness = \"30s\""),
    ] {
        let app = idp_app(&redis, &idp, "", extra).await;
        let cookie = real_session(&app, &idp).await;
        let n = 1000;
        let warm = checks(&app, Some(&cookie), 200, 50, 0).await;
        drop(warm);
        idp.reset_stats().await;
        let t = checks(&app, Some(&cookie), 200, 0, n).await;
        let calls = idp.count("/token/introspection").await;
        rows.push(row(name, t, format!("{calls} introspections for {n} checks")));
        app.shutdown().await;
    }

    // Fail fast: the IdP is down and the breaker is open, every check is a 503 without an IdP call.
    let app = idp_app(&redis, &idp, "circuit_failure_threshold = 3\ncircuit_open_duration = \"60s\"", "").await;
    let cookie = real_session(&app, &idp).await;
    idp.stop();
    rows.push(row(
        "every_request, IdP down, breaker open -> 503",
        checks(&app, Some(&cookie), 503, 10, 2000).await,
        String::new(),
    ));
    app.shutdown().await;

    print_table("Check: sequential gRPC calls, one client, loopback (2 tokio workers)", &rows);
}

// ------------------------------------------------------------------------------------------------------
// M2M: the token every IdP call needs, against a raw Redis GET of the same key.

async fn m2m_section() {
    let redis = RedisServer::start();
    let idp = IdpServer::start().await;
    let mut cfg = config(&redis.url(), "");
    cfg.redis.timeout = Duration::from_secs(2);
    let r = Redis::connect(&cfg.redis).expect("redis");
    let settings = ClientSettings {
        issuer: idp.issuer(),
        token_endpoint: format!("{}/token", idp.issuer()),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        auth: ClientAuth::ClientSecretBasic,
        scope: None,
        timeout: Duration::from_secs(2),
    };
    let breaker = portcullis::idp::breaker::Breaker::new(P, 5, Duration::from_secs(30));
    let client = portcullis::idp::transport::client(None).expect("http client");
    let transport = Arc::new(portcullis::idp::transport::Transport::new(client, P, Duration::from_secs(2), breaker));
    let clients = HashMap::from([(P.to_string(), TokenClient::new(settings, transport).expect("token client"))]);
    let m = Arc::new(M2mManager::new(r.clone(), Arc::new(cfg.session.key_ring().expect("keys")), &cfg.m2m, clients));
    m.token(P).await.expect("first token");

    let mut rows = Vec::new();
    let get = redis::cmd("GET").arg(m.token_key(P).expect("the provider's key")).clone();
    let t = measure(1000, 20_000, || async {
        let v: Option<String> = r.query(&get).await.expect("GET");
        assert!(v.is_some());
    })
    .await;
    rows.push(row("raw Redis GET m2m_token:corp:{slot} (baseline)", t, String::new()));

    let t = measure(10_000, 200_000, || async {
        m.token(P).await.expect("token");
    })
    .await;
    rows.push(row("M2M token, hot (in-process cache), 1 task", t, String::new()));

    // Eight tasks on two workers: latency per call as each caller sees it, and the total rate.
    let per_task = 25_000;
    let start = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move {
                measure(1000, per_task, || async {
                    m.token(P).await.expect("token");
                })
                .await
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in futures::future::join_all(tasks).await {
        all.extend(t.expect("task"));
    }
    let rate = (8 * (per_task + 1000)) as f64 / start.elapsed().as_secs_f64();
    rows.push(row("M2M token, hot, 8 tasks on 2 workers", all, format!("{:.1} M calls/s in all", rate / 1e6)));

    // Cold: nothing cached anywhere, so GET (miss), SET NX lock, GET, token call to the IdP, SET, release.
    let t = measure(3, 100, || async {
        m.forget(P).await.expect("forget");
        m.token(P).await.expect("token");
    })
    .await;
    rows.push(row("M2M token, cold (lock + IdP client_credentials)", t, "includes the DEL of forget()".into()));

    print_table("M2M token source (2 tokio workers)", &rows);
}

// ------------------------------------------------------------------------------------------------------
// Assertion: what `x-auth-jwt` adds to a Check, and what one signature costs against a cache hit.

async fn assertion_section() {
    use portcullis::assertion::{generate_key, Asserter, KeyAlg, KeySet};
    let redis = RedisServer::start();
    let mut rows = Vec::new();
    for (name, alg) in [
        ("no assertion (baseline)", None),
        ("ES256 assertion, reused", Some(KeyAlg::Es256)),
        ("EdDSA assertion, reused", Some(KeyAlg::Eddsa)),
    ] {
        let extra = match alg {
            Some(a) => format!("[assertion]\nenabled = true\nsigning_keys = [{:?}]", generate_key(a).unwrap()),
            None => String::new(),
        };
        let app = TestApp::with_validator(config(&redis.url(), &extra), StaticValidator::new()).await;
        let (value, _) = app.login("alice", json!({"sub": "alice", "email": "alice@example.com"})).await;
        let cookie = format!("{}={value}", app.cookie_name());
        rows.push(row(
            &format!("session + static validator, {name}"),
            checks(&app, Some(&cookie), 200, 500, 3000).await,
            String::new(),
        ));
        app.shutdown().await;
    }
    print_table("Check with x-auth-jwt: sequential gRPC calls, one client, loopback", &rows);

    let mut rows = Vec::new();
    let allowed = |session: String| portcullis::authz::Allowed {
        identity: portcullis::idp::Identity {
            user_id: "alice".into(),
            email: Some("alice@example.com".into()),
            name: Some("Alice".into()),
            groups: vec!["dev".into(), "ops".into()],
        },
        provider: P.into(),
        session_id: session,
        assertion: None,
        bearer: None,
        delegated: None,
    };
    let es = generate_key(KeyAlg::Es256).unwrap();
    let a = Asserter::new(KeySet::parse(&[&es]).unwrap(), "https://app", "https://app", Duration::from_secs(60));
    let hit = allowed("hit".into());
    let now = portcullis::now();
    let t = measure(1000, 20_000, || async {
        a.assertion(&hit, "https://app", now).await.unwrap();
    })
    .await;
    rows.push(row("cache hit (baseline)", t, String::new()));
    for (name, alg) in [("ES256 sign (cache miss)", KeyAlg::Es256), ("EdDSA sign (cache miss)", KeyAlg::Eddsa)] {
        let k = generate_key(alg).unwrap();
        let a = Asserter::new(KeySet::parse(&[&k]).unwrap(), "https://app", "https://app", Duration::from_secs(60));
        let mut i = 0u64;
        let t = measure(50, 2000, || {
            i += 1;
            let u = allowed(format!("s{i}"));
            let a = &a;
            async move {
                a.assertion(&u, "https://app", now).await.unwrap();
            }
        })
        .await;
        rows.push(row(name, t, "a new session each call".into()));
    }
    print_table("One assertion: cache hit against signing", &rows);
}

// ------------------------------------------------------------------------------------------------------
// Delegated tokens: what a cached `portcullis.delegate` token adds to a Check (open the sealed field, two
// SHA-256s), against the same session on a route that does not delegate. `max_staleness` keeps the IdP out
// of both loops, so the difference is the delegation's own cost.

async fn delegate_section() {
    let redis = RedisServer::start();
    let idp = IdpServer::start().await;
    let app = idp_app(&redis, &idp, "", "[revalidation]\nmode = \"max_staleness\"\nmax_staleness = \"300s\"").await;
    let cookie = real_session(&app, &idp).await;
    let plain = request("GET", "/api/me", &[("cookie", cookie.as_str())]);
    let mut delegating = plain.clone();
    let ext = &mut delegating.attributes.as_mut().expect("attributes").context_extensions;
    ext.insert("portcullis.delegate".into(), "orders.read".into());
    let mut rows = Vec::new();
    for _round in 0..2 {
        for (name, req) in [
            ("route without portcullis.delegate (baseline)", &plain),
            ("portcullis.delegate, token cached", &delegating),
        ] {
            let t = measure(300, 3000, || {
                let req = req.clone();
                async { assert_eq!(app.check(req).await.status(), 200, "the bench measures the wrong thing") }
            })
            .await;
            rows.push(row(name, t, String::new()));
        }
    }
    let exchanges = idp.count("/token:urn:ietf:params:oauth:grant-type:token-exchange").await;
    let last = rows.len() - 1;
    rows[last].note = format!("{exchanges} token exchange(s) in all");
    print_table("Check with a delegated token: sequential gRPC calls, one client, loopback (two rounds)", &rows);
    app.shutdown().await;
}
