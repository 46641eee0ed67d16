//! Helpers for `scripts/load.sh` (not part of the product):
//!
//!   loadkit upstream PORT
//!       a minimal HTTP upstream on 127.0.0.1:PORT answering every request `200 ok` (the load test's app;
//!       Python's http.server is far too slow for this)
//!   loadkit plant --config PORTCULLIS.toml --issuer URL [--provider corp] [--user alice] [--count N]
//!       logs in N times at the test OpenID provider at URL (tests/idp, a real Authorization Code + PKCE
//!       flow), stores each as a session exactly as the callback route would, and prints one cookie value
//!       per line; with --reuse it logs in once and plants N sessions holding those same tokens (cheap for a
//!       10,000-session mix)
//!   loadkit ceiling PORT
//!       a do-nothing `envoy.service.auth.v3.Authorization` gRPC server on 127.0.0.1:PORT that allows every
//!       Check with no I/O: the ceiling of the ext_authz design, swapped in for portcullis on the authz cluster.
//!       Diagnostic variants, to split what an allow costs beyond it (load.sh `ceiling-*` cases):
//!       CEILING_SHAPE=allow answers with the headers portcullis's allow carries (identity headers, removals,
//!       the cookie rewrite, the security response headers), or one part of them: `set`, `remove`,
//!       `response` (a comma list); CEILING_REDIS=URL makes one `HMGET` per Check
//!       on one multiplexed connection; CEILING_EVERY=INTROSPECTION_URL (with CEILING_REDIS) makes the I/O
//!       an `every_request` Check cannot avoid instead: `HGETALL` of the Check's real session hash, then one
//!       RFC 7662 POST (bearer-authenticated, a token-sized form) whose JSON reply is parsed: the floor of
//!       `every_request` without its crypto, verification and decision; CEILING_SESSION=1 (with CEILING_REDIS)
//!       reads what a cached `max_staleness` Check reads instead: `HMGET` of the Check's real session hash,
//!       the fields without the tokens (the floor of `max_staleness`); CEILING_IO=coalesced serves through
//!       portcullis's own gRPC transport (`server::grpc_io`: Nagle off, one batch of answers in one write)
//!       instead of tonic's default one
//!   loadkit introspect PORT
//!       a fast RFC 7662 introspection responder on 127.0.0.1:PORT answering every POST `{"active":true,...}`,
//!       so `every_request` is measured without the node IdP's own speed
//!   loadkit clients INTROSPECTION_URL [--count N] [--concurrency 32] [--only reqwest|hyper]
//!       the introspection client alone: N introspections, CONCURRENCY at a time, with each client
//!       CEILING_EVERY_CLIENT can name (reqwest, as portcullis uses it, and `hyper`), alternated over three
//!       rounds; prints this process's CPU per introspection for each (no Envoy, no Check around it)
//!   loadkit walk URL --cookies FILE [--name GATEWAY_SESSION] [--concurrency 32] [--expect 200]
//!       sends one GET to URL per line of FILE (as the cookie NAME), CONCURRENCY at a time, and fails unless
//!       every answer is EXPECT: the pre-warm pass that has every session of a mix checked once before the
//!       timed run
//!
//! LOADKIT_WORKERS=N runs any of them on N tokio workers (default: one per CPU; 1: the current-thread
//! scheduler, as `portcullis serve` runs by default). The login is the integration tests' own (`testkit`).

// Test code: a failed expectation is a panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The whole server runs inside this binary's own async fns: its futures nest deeper than the default
// layout-depth limit (128) leaves room for in a fresh build (a clean-clone CI once failed on it).
#![recursion_limit = "256"]

use portcullis_testkit as harness;

use std::sync::Arc;

use futures::StreamExt;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction, HeaderValue,
    HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status;
use portcullis::config::Config;
use portcullis::session::{NewSession, SessionStore};
use portcullis::store::Redis;

fn usage() -> ! {
    eprintln!(
        "usage: loadkit upstream PORT | loadkit ceiling PORT | loadkit introspect PORT\n       \
         loadkit clients URL [--count N] [--concurrency N] [--only reqwest|hyper]\n       \
         loadkit plant --config FILE --issuer URL [--provider P] [--user U] [--count N] [--reuse]\n       \
         loadkit walk URL --cookies FILE [--name COOKIE] [--concurrency N] [--expect STATUS]"
    );
    std::process::exit(64);
}

fn main() {
    // Like `portcullis serve`'s `server.worker_threads`: 1 is the current-thread scheduler.
    let mut rt = match std::env::var("LOADKIT_WORKERS").ok().and_then(|n| n.parse().ok()) {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    rt.enable_all().build().expect("tokio runtime").block_on(run());
}

async fn run() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("upstream") => upstream(port(&args)).await,
        Some("plant") => plant(&args[1..]).await,
        Some("ceiling") => ceiling(port(&args)).await,
        Some("introspect") => introspect(port(&args)).await,
        Some("walk") => walk(&args[1..]).await,
        Some("clients") => clients(&args[1..]).await,
        _ => usage(),
    }
}

fn port(args: &[String]) -> u16 {
    args.get(1).and_then(|p| p.parse().ok()).unwrap_or_else(|| usage())
}

/// Allows everything, reads nothing: what Envoy + any ext_authz gRPC server costs at the least.
/// The `CEILING_*` variants add one part of a real allow at a time (see the module doc).
struct Ceiling {
    /// The parts of an allow's shape to answer with (`CEILING_SHAPE`).
    shape: String,
    redis: Option<redis::aio::MultiplexedConnection>,
    /// `CEILING_EVERY`: the introspection endpoint, and the client every call shares.
    every: Option<(reqwest::Url, Http)>,
    /// `CEILING_SESSION=1`: read the Check's own session as a cached check does.
    session: bool,
}

/// The introspection's client: reqwest, as portcullis, or (`CEILING_EVERY_CLIENT=hyper`) hyper-util's own
/// pooled client under it, without reqwest's layers (redirect and retry policies, URL re-parsing).
#[allow(clippy::large_enum_variant)] // one per process
enum Http {
    Reqwest(reqwest::Client),
    Hyper(
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            http_body_util::Full<bytes::Bytes>,
        >,
        hyper::Uri,
    ),
}

impl Http {
    /// The client `name`d (`hyper`, else reqwest) for `url`.
    fn new(url: &str, name: &str) -> Self {
        match name {
            "hyper" => {
                let builder = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
                let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
                connector.set_nodelay(true);
                Http::Hyper(builder.build(connector), url.parse().expect("URL"))
            }
            _ => {
                let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build();
                Http::Reqwest(http.expect("http client"))
            }
        }
    }

    /// One introspection POST; its JSON reply.
    async fn introspect(&self, url: &reqwest::Url) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let form = [("token", TOKEN), ("token_type_hint", "access_token")];
        match self {
            Http::Reqwest(http) => {
                let resp = http.post(url.clone()).bearer_auth(TOKEN).form(&form).send().await;
                resp.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())
            }
            Http::Hyper(http, uri) => {
                use http_body_util::BodyExt;
                let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
                let req = hyper::Request::post(uri.clone())
                    .header(hyper::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                    .header(hyper::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .map_err(|e| e.to_string())?;
                let resp = http.request(req).await.map_err(|e| e.to_string())?;
                let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
                serde_json::from_slice(&body).map_err(|e| e.to_string())
            }
        }
    }
}

/// A stand-in access token of a real one's length (the test IdP's opaque tokens are 43 characters; a JWT
/// access token would be longer, which only makes this floor lower).
const TOKEN: &str = "k3ZtJ8cX0pQvR2sW5yU7aB9dE1fG4hI6jL8mN0oP2qS";

#[tonic::async_trait]
impl Authorization for Ceiling {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let cookie = request.get_ref().attributes.as_ref().and_then(|a| a.request.as_ref());
        let cookie = cookie.and_then(|r| r.http.as_ref()).and_then(|h| h.headers.get("cookie"));
        let session_key = || {
            let value = cookie.and_then(|c| portcullis::session::cookie::find(c, "GATEWAY_SESSION")).unwrap_or("");
            portcullis::keys::session(&portcullis::session::cookie::session_id(value))
        };
        if let (Some(mut redis), true) = (self.redis.clone(), self.session) {
            let fields: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(session_key())
                .arg(&portcullis::session::model::field::SMALL[..])
                .query_async(&mut redis)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            if fields.iter().all(Option::is_none) {
                return Err(tonic::Status::unauthenticated("no such session"));
            }
        } else if let (Some(mut redis), Some((url, http))) = (self.redis.clone(), &self.every) {
            let key = session_key();
            let hash: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            if hash.is_empty() {
                return Err(tonic::Status::unauthenticated("no such session"));
            }
            let reply = http.introspect(url).await.map_err(tonic::Status::unavailable)?;
            if reply.get("active") != Some(&serde_json::Value::Bool(true)) {
                return Err(tonic::Status::permission_denied("inactive"));
            }
        } else if let Some(mut redis) = self.redis.clone() {
            let key = format!("ceiling:{}", cookie.map_or(0, |c| c.len()));
            let _: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&key)
                .arg(&["userId", "provider", "createdAt", "lastAccess", "expiresAt"])
                .query_async(&mut redis)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        }
        let ok = allow_shape(&self.shape);
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Status { code: 0, ..Default::default() }),
            http_response: Some(HttpResponse::OkResponse(ok)),
            ..Default::default()
        }))
    }
}

/// The shape of portcullis's allow for the load's user, or the parts of it `shape` names (`allow`: all):
/// `set` four identity headers, `remove` the absent claims', the assertion's, client and cookie headers,
/// `response` the four default security headers for the browser.
fn allow_shape(shape: &str) -> OkHttpResponse {
    let part = |p: &str| shape.split(',').any(|s| s == p || s == "allow");
    #[allow(deprecated)]
    fn header(key: &str, value: &str) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue { key: key.into(), value: value.into(), ..Default::default() }),
            append: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        }
    }
    let mut ok = OkHttpResponse {
        headers: vec![
            header("x-auth-user-id", "alice"),
            header("x-auth-provider", "corp"),
            header("x-auth-email", "alice@example.com"),
            header("x-auth-name", "Alice Example"),
        ],
        headers_to_remove: vec!["x-auth-groups".into(), "x-auth-jwt".into(), "x-auth-client".into(), "cookie".into()],
        response_headers_to_add: vec![
            header("strict-transport-security", "max-age=31536000; includeSubDomains"),
            header("x-content-type-options", "nosniff"),
            header("x-frame-options", "DENY"),
            header("referrer-policy", "no-referrer"),
        ],
        ..Default::default()
    };
    if !part("set") {
        ok.headers.clear();
    }
    if !part("remove") {
        ok.headers_to_remove.clear();
    }
    if !part("response") {
        ok.response_headers_to_add.clear();
    }
    ok
}

async fn ceiling(port: u16) {
    let shape = std::env::var("CEILING_SHAPE").unwrap_or_default();
    let redis = match std::env::var("CEILING_REDIS") {
        Ok(url) => Some(
            redis::Client::open(url)
                .expect("CEILING_REDIS")
                .get_multiplexed_async_connection()
                .await
                .expect("CEILING_REDIS connection"),
        ),
        Err(_) => None,
    };
    let client = std::env::var("CEILING_EVERY_CLIENT").unwrap_or_default();
    let session = std::env::var("CEILING_SESSION").as_deref() == Ok("1");
    let every =
        std::env::var("CEILING_EVERY").ok().map(|url| (url.parse().expect("CEILING_EVERY"), Http::new(&url, &client)));
    let server = tonic::transport::Server::builder().add_service(AuthorizationServer::new(Ceiling {
        shape,
        redis,
        every,
        session,
    }));
    let served = if std::env::var("CEILING_IO").as_deref() == Ok("coalesced") {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind ceiling");
        server.serve_with_incoming(portcullis::server::grpc_io::incoming(listener)).await
    } else {
        server.serve(([127, 0, 0, 1], port).into()).await
    };
    served.expect("ceiling gRPC server");
}

async fn introspect(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind introspect");
    // The form is read, as an IdP reads it (hyper resets an HTTP/2 stream answered unread, and ends the
    // connection after a run of those: seen when this responder was tried over h2c).
    let app = axum::Router::new().fallback(|_form: axum::body::Bytes| async {
        (
            [("content-type", "application/json")],
            r#"{"active":true,"sub":"alice","client_id":"portcullis","token_type":"Bearer","scope":"openid"}"#,
        )
    });
    axum::serve(listener, app).await.expect("introspect");
}

async fn upstream(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind upstream");
    let app = axum::Router::new().fallback(|| async { "ok" });
    axum::serve(listener, app).await.expect("upstream");
}

/// CPU time (user + system) this process has used, from /proc: clock ticks of 10 ms.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

async fn clients(args: &[String]) {
    let url: reqwest::Url = args.first().unwrap_or_else(|| usage()).parse().expect("URL");
    let count: usize = opt(args, "--count").and_then(|n| n.parse().ok()).unwrap_or(50_000);
    let concurrency: usize = opt(args, "--concurrency").and_then(|n| n.parse().ok()).unwrap_or(32);
    let only = opt(args, "--only");
    for round in 1..=3 {
        for name in ["reqwest", "hyper"].into_iter().filter(|n| only.as_deref().is_none_or(|o| o == *n)) {
            let http = Http::new(url.as_str(), name);
            let before = cpu_ticks();
            let started = std::time::Instant::now();
            let failed = futures::stream::iter(0..count)
                .map(|_| http.introspect(&url))
                .buffer_unordered(concurrency)
                .filter(|r| std::future::ready(r.is_err()))
                .count()
                .await;
            let us = (cpu_ticks() - before) as f64 * 10_000.0 / count as f64;
            let rate = count as f64 / started.elapsed().as_secs_f64();
            println!("round {round} {name:8} {us:6.1} us CPU per introspection  {rate:8.0} /s  failed {failed}");
        }
    }
}

/// The value after `--name` in `args`.
fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

async fn walk(args: &[String]) {
    let (Some(url), Some(file)) = (args.first().cloned(), opt(args, "--cookies")) else { usage() };
    let name = opt(args, "--name").unwrap_or_else(|| "GATEWAY_SESSION".into());
    let concurrency: usize = opt(args, "--concurrency").and_then(|n| n.parse().ok()).unwrap_or(32);
    let expect: u16 = opt(args, "--expect").and_then(|n| n.parse().ok()).unwrap_or(200);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let cookies: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("http client");
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    let mut answers =
        futures::stream::iter(&cookies)
            .map(|c| {
                let request = http.get(&url).header(reqwest::header::COOKIE, format!("{name}={c}"));
                async move {
                    request.send().await.map(|r| r.status().as_u16().to_string()).unwrap_or_else(|e| e.to_string())
                }
            })
            .buffer_unordered(concurrency);
    while let Some(status) = answers.next().await {
        *statuses.entry(status).or_default() += 1;
    }
    eprintln!("walked {} sessions: {statuses:?}", cookies.len());
    if statuses.get(&expect.to_string()) != Some(&cookies.len()) {
        std::process::exit(1);
    }
}

async fn plant(args: &[String]) {
    let (Some(config), Some(issuer)) = (opt(args, "--config"), opt(args, "--issuer")) else { usage() };
    let provider = opt(args, "--provider").unwrap_or_else(|| "corp".into());
    let user = opt(args, "--user").unwrap_or_else(|| "alice".into());
    let count: usize = opt(args, "--count").and_then(|n| n.parse().ok()).unwrap_or(1);
    let reuse = args.iter().any(|a| a == "--reuse");

    let cfg = Config::load(std::path::Path::new(&config)).unwrap_or_else(|e| panic!("{config}: {e}"));
    let redis = Redis::connect(&cfg.redis).expect("redis config");
    let keys = cfg.session.key_ring().expect("session.encryption_keys");
    let store = SessionStore::new(redis, Arc::new(keys), &cfg.session);
    let mut once = None;
    for _ in 0..count {
        let tokens = match (&once, reuse) {
            (Some(t), true) => Clone::clone(t),
            _ => {
                let (_browser, tokens) = harness::idp::login_at(&issuer, &user).await;
                once = Some(Clone::clone(&tokens));
                tokens
            }
        };
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
