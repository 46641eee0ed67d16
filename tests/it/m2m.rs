//! The M2M token manager against a real redis-server and a counting token endpoint (wiremock): one
//! token-endpoint call per expiry whatever the number of callers and replicas, fail closed, locks only
//! released by their owner. Durations are short; assertions are on counts and outcomes, never on timings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use portcullis::config::{ClientAuth, M2mConfig, RedisConfig};
use portcullis::crypto::KeyRing;
use portcullis::idp::breaker::Breaker;
use portcullis::idp::transport::{self, Transport};
use portcullis::lock::LeaderLock;
use portcullis::m2m::{ClientSettings, M2mError, M2mManager, M2mSource, TokenClient};
use portcullis::store::Redis;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::harness::redis::RedisServer;

const P: &str = "corp";
/// Bounds a call that must return (fail closed, never hang); generous, so load cannot make it flaky.
const MUST_RETURN: Duration = Duration::from_secs(20);

/// What the token endpoint does for one call.
#[derive(Clone, Debug)]
enum Answer {
    /// 200 with `tok-N` (N = call number) living `expires_in` seconds, after `delay`.
    Token {
        expires_in: u64,
        delay: Duration,
    },
    Status(u16),
    /// Answers only after `0`: longer than the client's timeout.
    Hang(Duration),
}

fn token(expires_in: u64) -> Answer {
    // The delay makes concurrent callers overlap the call in flight.
    Answer::Token { expires_in, delay: Duration::from_millis(150) }
}

/// A token endpoint that counts its calls; call N gets `script[N-1]` (the last entry repeats).
struct Endpoint {
    calls: AtomicUsize,
    script: Mutex<Vec<Answer>>,
}

impl Endpoint {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn set(&self, script: Vec<Answer>) {
        *self.script.lock().unwrap() = script;
    }
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = {
            let script = self.script.lock().unwrap();
            script.get(n - 1).or(script.last()).cloned().unwrap_or(Answer::Status(500))
        };
        let body =
            |expires_in| json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": expires_in});
        match answer {
            Answer::Token { expires_in, delay } => {
                ResponseTemplate::new(200).set_body_json(body(expires_in)).set_delay(delay)
            }
            Answer::Status(s) => ResponseTemplate::new(s).set_body_string("upstream exploded"),
            Answer::Hang(d) => ResponseTemplate::new(200).set_body_json(body(3600)).set_delay(d),
        }
    }
}

async fn idp(script: Vec<Answer>) -> (MockServer, Arc<Endpoint>) {
    let server = MockServer::start().await;
    let ep = Arc::new(Endpoint { calls: AtomicUsize::new(0), script: Mutex::new(script) });
    let e = ep.clone();
    Mock::given(method("POST")).and(path("/token")).respond_with(move |r: &Request| e.respond(r)).mount(&server).await;
    (server, ep)
}

fn cfg() -> M2mConfig {
    M2mConfig {
        refresh_interval: Duration::from_millis(100),
        refresh_before: Duration::from_secs(60),
        lock_ttl: Duration::from_millis(500),
        follower_retries: 40,
        follower_delay: Duration::from_millis(50),
        safety_margin: Duration::from_secs(5),
    }
}

fn redis_cfg(url: &str) -> RedisConfig {
    let mut c = crate::harness::app::config(url, "").redis;
    c.timeout = Duration::from_secs(2);
    c.pool_size = Some(4);
    c
}

/// The issuer the wiremock token endpoint stands for (it names the token's Redis slot).
const ISSUER: &str = "https://idp.test";

fn settings(idp_uri: &str, auth: ClientAuth) -> ClientSettings {
    ClientSettings {
        issuer: ISSUER.into(),
        token_endpoint: format!("{idp_uri}/token"),
        client_id: "gateway".into(),
        client_secret: "gateway-secret".into(),
        auth,
        scope: Some("m2m.read".into()),
        // The manager cuts this to the lock TTL.
        timeout: Duration::from_secs(2),
    }
}

/// The provider's transport, with a breaker that opens after `threshold` failures.
fn transport_with(threshold: u32) -> Arc<Transport> {
    let breaker = Breaker::new(P, threshold, Duration::from_secs(3600));
    Arc::new(Transport::new(transport::client(None).unwrap(), P, Duration::from_secs(2), breaker))
}

fn manager_on(redis_url: &str, idp_uri: &str, cfg: &M2mConfig, auth: ClientAuth, t: Arc<Transport>) -> Arc<M2mManager> {
    let redis = Redis::connect(&redis_cfg(redis_url)).expect("redis config");
    let clients = HashMap::from([(P.to_string(), TokenClient::new(settings(idp_uri, auth), t).expect("client"))]);
    Arc::new(M2mManager::new(redis, ring(), cfg, clients))
}

/// One key ring for every replica of a test process, as one deployment shares its keys.
fn ring() -> Arc<KeyRing> {
    static RING: std::sync::OnceLock<Arc<KeyRing>> = std::sync::OnceLock::new();
    RING.get_or_init(|| Arc::new(KeyRing::parse(&[portcullis::crypto::generate_key()]).unwrap())).clone()
}

/// The slot of the test's token client (issuer, client id, scope of [`settings`]).
fn slot() -> String {
    settings("http://unused", ClientAuth::ClientSecretBasic).slot()
}

/// `m2m_token:corp:{slot}`.
fn tok_key() -> String {
    portcullis::keys::m2m_token(P, &slot())
}

/// `lock:m2m_token:corp:{slot}`.
fn lock_key() -> String {
    portcullis::keys::m2m_lock(P, &slot())
}

/// The shared token as stored (JSON) and its access token opened with the key ring.
fn stored(redis: &RedisServer) -> (serde_json::Value, String) {
    let v: serde_json::Value = serde_json::from_str(&get(redis, &tok_key()).expect("a shared token")).unwrap();
    let sealed = v["accessToken"].as_str().unwrap().to_string();
    let plain = ring().decrypt(&tok_key(), "accessToken", &sealed).expect("opens under the key ring");
    (v, plain)
}

fn manager_with(redis_url: &str, idp_uri: &str, cfg: &M2mConfig, auth: ClientAuth) -> Arc<M2mManager> {
    // A breaker that never opens here: these tests count token-endpoint calls through failures.
    manager_on(redis_url, idp_uri, cfg, auth, transport_with(u32::MAX))
}

fn manager(redis_url: &str, idp_uri: &str, cfg: &M2mConfig) -> Arc<M2mManager> {
    manager_with(redis_url, idp_uri, cfg, ClientAuth::ClientSecretBasic)
}

async fn callers(m: &Arc<M2mManager>, n: usize) -> Vec<Result<String, M2mError>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.token(P).await })
        })
        .collect();
    let all = tokio::time::timeout(MUST_RETURN, futures::future::join_all(tasks)).await.expect("callers hung");
    all.into_iter().map(|r| r.expect("caller panicked")).collect()
}

/// `n` replicas, each its own thread, tokio runtime, Redis connection and in-process cache, released at
/// once; each runs `per_replica` concurrent callers. Returns each replica's results.
async fn replicas(
    n: usize,
    redis_url: &str,
    idp_uri: &str,
    cfg: &M2mConfig,
    per_replica: usize,
) -> Vec<Vec<Result<String, M2mError>>> {
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (url, uri, cfg, start) = (redis_url.to_string(), idp_uri.to_string(), cfg.clone(), start.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
                rt.block_on(async move {
                    let m = manager(&url, &uri, &cfg);
                    start.wait();
                    callers(&m, per_replica).await
                })
            })
        })
        .collect();
    tokio::task::spawn_blocking(move || threads.into_iter().map(|t| t.join().expect("replica panicked")).collect())
        .await
        .unwrap()
}

fn get(redis: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(&mut redis.conn()).unwrap()
}

fn all_ok(results: &[Result<String, M2mError>]) -> Vec<String> {
    results.iter().map(|r| r.clone().unwrap_or_else(|e| panic!("caller failed: {e}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_callers_share_one_call_and_then_stay_off_redis() {
    let redis = RedisServer::start();
    let (server, ep) = idp(vec![token(3600)]).await;
    let m = manager(&redis.url(), &server.uri(), &cfg());
    redis.reset_stats();

    let tokens = all_ok(&callers(&m, 200).await);
    assert_eq!(ep.calls(), 1, "token-endpoint calls");
    assert!(tokens.iter().all(|t| t == "tok-1"), "{tokens:?}");

    // One trip through the election for the whole process: GET, SET NX, GET (double check), SET token, and
    // the release script (its own GET and DEL count too). Without single flight: ~200 SET NX.
    let stats = redis.commandstats();
    let (gets, sets) = (stats.get("get").copied().unwrap_or(0), stats.get("set").copied().unwrap_or(0));
    assert!(gets <= 3 && sets <= 2, "single flight: expected at most 3 GET and 2 SET, got {stats:?}");
    assert!(!redis.exists(&lock_key()), "the leader releases its lock");

    let (v, plain) = stored(&redis);
    assert_eq!(v["tokenProvider"], "corp");
    assert_eq!(plain, "tok-1");
    assert!(!get(&redis, &tok_key()).unwrap().contains("tok-1"), "the token is sealed at rest");
    let left = v["expiresAt"].as_i64().unwrap() - portcullis::now();
    assert!((3590..=3600).contains(&left), "expiresAt is now + expires_in: {left}");
    let ttl: i64 = redis::cmd("TTL").arg(tok_key()).query(&mut redis.conn()).unwrap();
    assert!((3590..=3600).contains(&ttl), "TTL = remaining lifetime: {ttl}");

    // Fresh token: the hot path does not touch Redis.
    redis.reset_stats();
    for _ in 0..1000 {
        assert_eq!(m.token(P).await.unwrap(), "tok-1");
    }
    let stats = redis.commandstats();
    for cmd in ["get", "set", "evalsha", "eval"] {
        assert!(!stats.contains_key(cmd), "hot path used redis: {stats:?}");
    }
    assert_eq!(ep.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_started_at_once_make_one_call() {
    let redis = RedisServer::start();
    let (server, ep) = idp(vec![token(3600)]).await;
    let results = replicas(4, &redis.url(), &server.uri(), &cfg(), 50).await;
    for r in &results {
        let tokens = all_ok(r);
        assert!(tokens.iter().all(|t| t == "tok-1"), "{tokens:?}");
    }
    assert_eq!(ep.calls(), 1, "token-endpoint calls across 4 replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn background_refresh_replaces_an_expiring_token_while_callers_keep_the_old_one() {
    let redis = RedisServer::start();
    // tok-1 is usable for ~10 s (15 s minus the 5 s margin) but due for refresh at once (refresh_before 60 s);
    // tok-2 takes a second to arrive, so callers run while the refresh is in flight.
    let slow = Answer::Token { expires_in: 3600, delay: Duration::from_secs(1) };
    let (server, ep) = idp(vec![token(15), slow]).await;
    let m = manager(&redis.url(), &server.uri(), &M2mConfig { lock_ttl: Duration::from_secs(3), ..cfg() });
    assert_eq!(m.token(P).await.unwrap(), "tok-1");

    let cancel = CancellationToken::new();
    let refresher = m.spawn_refresher(cancel.clone());
    // Each caller records the token it got and how many endpoint calls had begun by then.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (m, ep) = (m.clone(), ep.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..1500 {
                    let t = m.token(P).await;
                    let done = matches!(&t, Ok(t) if t == "tok-2");
                    seen.push((t, ep.calls()));
                    if done {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                seen
            })
        })
        .collect();
    let seen: Vec<_> = futures::future::join_all(tasks).await.into_iter().flat_map(|r| r.unwrap()).collect();

    for (t, _) in &seen {
        match t {
            Ok(t) => assert!(t == "tok-1" || t == "tok-2", "unexpected token {t}"),
            Err(e) => panic!("a caller failed during the refresh: {e}"),
        }
    }
    assert!(seen.iter().any(|(t, _)| matches!(t, Ok(t) if t == "tok-2")), "the refresh never landed");
    let served_during_refresh =
        seen.iter().filter(|(t, calls)| *calls >= 2 && matches!(t, Ok(t) if t == "tok-1")).count();
    assert!(served_during_refresh > 0, "callers waited for the refresh instead of using the current token");
    assert_eq!(ep.calls(), 2, "one initial fetch, one background refresh");
    assert_eq!(stored(&redis).1, "tok-2");

    // A few more rounds: tok-2 is not due, so nothing is fetched; then the task stops on cancel.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ep.calls(), 2);
    cancel.cancel();
    tokio::time::timeout(MUST_RETURN, refresher).await.expect("refresher did not stop").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leaders_lock_expires_and_another_replica_takes_over() {
    let redis = RedisServer::start();
    let (server, ep) = idp(vec![token(3600)]).await;
    // A leader that took the lock and died: another owner's value, a short PX, no token.
    redis::cmd("SET").arg(lock_key()).arg("dead-leader").arg("PX").arg(500).query::<()>(&mut redis.conn()).unwrap();

    let results = replicas(4, &redis.url(), &server.uri(), &cfg(), 20).await;
    for r in &results {
        assert!(all_ok(r).iter().all(|t| t == "tok-1"));
    }
    assert!(ep.calls() >= 1 && ep.calls() <= 2, "calls: {}", ep.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_errors_fail_closed_then_recover() {
    let redis = RedisServer::start();
    let (server, ep) = idp(vec![Answer::Status(500)]).await;
    let c = cfg();

    let results = replicas(3, &redis.url(), &server.uri(), &c, 10).await;
    for r in results.iter().flatten() {
        assert!(matches!(r, Err(M2mError::Unavailable(_))), "500 must fail closed: {r:?}");
    }
    assert!(ep.calls() >= 1);
    assert!(!redis.exists(&tok_key()), "nothing stored from a failed call");
    assert!(!redis.exists(&lock_key()), "the failed leader released its lock");

    // The endpoint answers again: the next attempt anywhere succeeds, with one more call in all.
    ep.set(vec![token(3600)]);
    let before = ep.calls();
    let results = replicas(3, &redis.url(), &server.uri(), &c, 10).await;
    for r in &results {
        assert!(all_ok(r).iter().all(|t| *t == format!("tok-{}", before + 1)));
    }
    assert_eq!(ep.calls(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_token_endpoint_times_out_closed_then_recovers() {
    let redis = RedisServer::start();
    let (server, ep) = idp(vec![Answer::Hang(Duration::from_secs(3))]).await;
    let m = manager(&redis.url(), &server.uri(), &cfg());

    for r in callers(&m, 50).await {
        match r {
            Err(M2mError::Unavailable(msg)) => assert!(msg.contains("timed out"), "{msg}"),
            Ok(_) => panic!("a timed-out call handed out a token"),
        }
    }
    assert_eq!(ep.calls(), 1, "concurrent callers share the failing call too");

    ep.set(vec![token(3600)]);
    assert_eq!(m.token(P).await.unwrap(), "tok-2");
    assert_eq!(ep.calls(), 2);
}

#[tokio::test]
async fn a_lock_owned_by_someone_else_is_never_deleted() {
    let redis = RedisServer::start();
    let (server, ep) = idp(vec![token(3600)]).await;
    redis::cmd("SET").arg(lock_key()).arg("someone-else").arg("PX").arg(20_000).query::<()>(&mut redis.conn()).unwrap();
    let c = M2mConfig { follower_retries: 3, ..cfg() };
    let m = manager(&redis.url(), &server.uri(), &c);

    // A follower that never sees a token gives up (fail closed) and leaves the lock alone.
    let r = tokio::time::timeout(MUST_RETURN, m.token(P)).await.expect("follower hung");
    assert!(matches!(r, Err(M2mError::Unavailable(_))), "{r:?}");
    assert_eq!(ep.calls(), 0, "a follower never calls the endpoint");
    assert_eq!(get(&redis, &lock_key()).as_deref(), Some("someone-else"));

    // Release by a non-owner: refused, the key keeps the other owner's value.
    let store = Redis::connect(&redis_cfg(&redis.url())).unwrap();
    assert!(!LeaderLock::assume(P, &slot(), "me").release(&store).await.unwrap());
    assert_eq!(get(&redis, &lock_key()).as_deref(), Some("someone-else"));

    // A leader whose lock expired and was taken by another: its late release deletes nothing.
    let ten = Duration::from_secs(10);
    let mine = LeaderLock::try_acquire(&store, "other", &slot(), ten).await.unwrap().expect("free lock");
    assert!(LeaderLock::try_acquire(&store, "other", &slot(), ten).await.unwrap().is_none(), "NX");
    let other = portcullis::keys::m2m_lock("other", &slot());
    redis::cmd("SET").arg(&other).arg("new-owner").query::<()>(&mut redis.conn()).unwrap();
    assert!(!mine.release(&store).await.unwrap());
    assert_eq!(get(&redis, &other).as_deref(), Some("new-owner"));

    // The owner's own release works.
    let own = LeaderLock::try_acquire(&store, "third", &slot(), ten).await.unwrap().unwrap();
    let third = portcullis::keys::m2m_lock("third", &slot());
    assert_eq!(get(&redis, &third).as_deref(), Some(own.owner()));
    assert!(own.release(&store).await.unwrap());
    assert!(!redis.exists(&third));
}

#[tokio::test]
async fn garbage_or_expired_tokens_in_redis_are_treated_as_missing() {
    let redis = RedisServer::start();
    let (server, ep) = idp(vec![token(3600)]).await;
    redis::cmd("SET").arg(tok_key()).arg("{not json").query::<()>(&mut redis.conn()).unwrap();
    let m = manager(&redis.url(), &server.uri(), &cfg());
    assert_eq!(m.token(P).await.unwrap(), "tok-1");
    assert_eq!(ep.calls(), 1);
    assert_eq!(stored(&redis).1, "tok-1");

    // A token within the safety margin is never handed out, even from Redis.
    let handle = Redis::connect(&redis_cfg(&redis.url())).unwrap();
    let near = portcullis::m2m::CachedToken {
        token_provider: P.into(),
        access_token: "almost-expired".into(),
        expires_at: portcullis::now() + 2,
        issued_at_ms: None,
    };
    portcullis::m2m::shared::write(&handle, &ring(), &near, &slot(), portcullis::now()).await.unwrap();
    let fresh = manager(&redis.url(), &server.uri(), &cfg());
    assert_eq!(fresh.token(P).await.unwrap(), "tok-2");

    // A valid token in Redis is shared without a call.
    let other = manager(&redis.url(), &server.uri(), &cfg());
    assert_eq!(other.token(P).await.unwrap(), "tok-2");
    assert_eq!(ep.calls(), 2);

    // A plaintext token (written by hand, or by an older version) or one sealed under another key ring is
    // never handed out: it is missing, and the next fetch overwrites it.
    let far = portcullis::now() + 3600;
    let plain = json!({"tokenProvider": "corp", "accessToken": "planted", "expiresAt": far});
    redis::cmd("SET").arg(tok_key()).arg(plain.to_string()).query::<()>(&mut redis.conn()).unwrap();
    assert_eq!(manager(&redis.url(), &server.uri(), &cfg()).token(P).await.unwrap(), "tok-3");
    let stranger = KeyRing::parse(&[portcullis::crypto::generate_key()]).unwrap();
    let foreign = portcullis::m2m::CachedToken { access_token: "foreign".into(), expires_at: far, ..near };
    portcullis::m2m::shared::write(&handle, &stranger, &foreign, &slot(), portcullis::now()).await.unwrap();
    assert_eq!(manager(&redis.url(), &server.uri(), &cfg()).token(P).await.unwrap(), "tok-4");
    assert_eq!(ep.calls(), 4);
    assert!(matches!(other.token("unknown").await, Err(M2mError::Unavailable(_))));
}

/// Two deployments share one Redis and both call their provider `corp`, at different IdPs: each gets its own
/// token from its own IdP, never the other's.
#[tokio::test]
async fn two_deployments_naming_their_provider_alike_never_share_a_token() {
    let redis = RedisServer::start();
    let (server_a, ep_a) = idp(vec![token(3600)]).await;
    let (server_b, ep_b) = idp(vec![token(3600)]).await;
    let a = manager(&redis.url(), &server_a.uri(), &cfg());
    let mut s = settings(&server_b.uri(), ClientAuth::ClientSecretBasic);
    s.issuer = "https://another-idp.test".into();
    let b_slot = s.slot();
    let clients = HashMap::from([(P.to_string(), TokenClient::new(s, transport_with(u32::MAX)).unwrap())]);
    let b = M2mManager::new(Redis::connect(&redis_cfg(&redis.url())).unwrap(), ring(), &cfg(), clients);

    assert_eq!(a.token(P).await.unwrap(), "tok-1");
    assert_eq!(b.token(P).await.unwrap(), "tok-1");
    assert_eq!((ep_a.calls(), ep_b.calls()), (1, 1), "each deployment asked its own IdP");
    assert_ne!(slot(), b_slot);
    assert!(redis.exists(&tok_key()) && redis.exists(&portcullis::keys::m2m_token(P, &b_slot)));
}

#[tokio::test]
async fn client_auth_basic_or_post_with_the_scope() {
    let redis = RedisServer::start();
    let (server, _ep) = idp(vec![token(3600)]).await;
    manager_with(&redis.url(), &server.uri(), &cfg(), ClientAuth::ClientSecretBasic).token(P).await.unwrap();
    let _ = redis::cmd("DEL").arg(tok_key()).query::<i64>(&mut redis.conn());
    manager_with(&redis.url(), &server.uri(), &cfg(), ClientAuth::ClientSecretPost).token(P).await.unwrap();

    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 2);
    let form = |r: &Request| -> HashMap<String, String> { url::form_urlencoded::parse(&r.body).into_owned().collect() };
    let (basic, post) = (&reqs[0], &reqs[1]);
    let auth = basic.headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
    use base64::Engine;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("gateway:gateway-secret"));
    assert_eq!(auth.as_deref(), Some(expected.as_str()));
    assert_eq!(form(basic).get("grant_type").map(String::as_str), Some("client_credentials"));
    assert_eq!(form(basic).get("scope").map(String::as_str), Some("m2m.read"));
    assert!(!form(basic).contains_key("client_secret"));

    assert!(post.headers.get("authorization").is_none());
    assert_eq!(form(post).get("client_id").map(String::as_str), Some("gateway"));
    assert_eq!(form(post).get("client_secret").map(String::as_str), Some("gateway-secret"));
    assert_eq!(form(post).get("scope").map(String::as_str), Some("m2m.read"));
}

#[tokio::test]
async fn status_forced_refresh_and_forget() {
    let redis = RedisServer::start();
    let (server, ep) = idp(vec![token(3600)]).await;
    let m = manager(&redis.url(), &server.uri(), &cfg());
    let s = m.status().await.unwrap();
    assert_eq!(
        (s[0].provider.as_str(), s[0].shared_expires_in, s[0].local_expires_in, s[0].locked),
        (P, None, None, false)
    );

    assert_eq!(m.token(P).await.unwrap(), "tok-1");
    let t = m.force_refresh(P).await.unwrap();
    assert_eq!(t.access_token, "tok-2", "a forced refresh calls even with a fresh token");
    assert_eq!(m.token(P).await.unwrap(), "tok-2", "and replaces the local copy");
    let s = m.status().await.unwrap();
    assert!(s[0].shared_expires_in.unwrap() > 3500 && s[0].local_expires_in.unwrap() > 3500, "{s:?}");
    assert!(!format!("{s:?} {t:?} {m:?}").contains("tok-"), "status and Debug never show the token");

    assert!(m.forget(P).await.unwrap());
    assert!(!redis.exists(&tok_key()));
    assert_eq!(m.token(P).await.unwrap(), "tok-3");
    assert_eq!(ep.calls(), 3);
}

#[tokio::test]
async fn cli_m2m_refresh_and_status() {
    let redis = RedisServer::start();
    let (server, ep) = idp(vec![token(3600)]).await;
    let text = crate::served::Config {
        public_url: Some("https://app.example.com".into()),
        redis: format!("url = {:?}", redis.url()),
        session: format!("encryption_keys = [{:?}]", portcullis::crypto::generate_key()),
        provider: format!(
            "kind = \"oidc\"\nissuer = {uri:?}\ntoken_endpoint = \"{uri}/token\"\nclient_id = \"gateway\"\n\
             client_secret = \"gateway-secret\"",
            uri = server.uri()
        ),
        ..Default::default()
    }
    .text(9001, 9002);
    let file = std::sync::Arc::new(crate::served::file(&text));
    let run = move |args: &[&str]| {
        let out =
            crate::served::portcullis().args(["m2m"]).args(args).arg("--config").arg(file.path()).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    };

    let (ok, out) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["status"])
    })
    .await
    .unwrap();
    assert!(ok && out.contains("corp: not cached"), "{out}");
    assert!(!out.contains("lock held"), "{out}");
    let (ok, out) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["refresh"])
    })
    .await
    .unwrap();
    assert!(ok && out.contains("corp: refreshed"), "{out}");
    assert_eq!(ep.calls(), 1);
    let (ok, _) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["refresh", "nope"])
    })
    .await
    .unwrap();
    assert!(!ok, "an unknown provider is an error");
    let (ok, out) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["status"])
    })
    .await
    .unwrap();
    assert!(ok && out.contains("corp: cached, expires in"), "{out}");
    assert!(!out.contains("tok-"), "status never prints the token: {out}");
    let lock = portcullis::keys::m2m_lock(P, &portcullis::m2m::shared::slot(&server.uri(), "gateway", None));
    redis::cmd("SET").arg(lock).arg("x").arg("PX").arg(20_000).query::<()>(&mut redis.conn()).unwrap();
    let (ok, out) = tokio::task::spawn_blocking(move || run(&["status"])).await.unwrap();
    assert!(ok && out.contains("lock held"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_dropped_mid_call_does_not_abandon_the_fetch_or_the_lock() {
    let redis = RedisServer::start();
    let slow = Answer::Token { expires_in: 3600, delay: Duration::from_millis(400) };
    let (server, ep) = idp(vec![slow]).await;
    let m = manager(&redis.url(), &server.uri(), &M2mConfig { lock_ttl: Duration::from_secs(10), ..cfg() });

    // Envoy's ext_authz timeout drops the Check while the token call is in flight.
    let dropped = tokio::time::timeout(Duration::from_millis(50), m.token(P)).await;
    assert!(dropped.is_err(), "the call should still have been in flight");

    // The fetch completes anyway: the token is shared and the lock released, not left to its 10 s TTL.
    let stored = crate::harness::eventually(Duration::from_secs(10), async || redis.exists(&tok_key())).await;
    assert!(stored, "the abandoned fetch never stored its token");
    assert!(crate::harness::eventually(Duration::from_secs(10), async || !redis.exists(&lock_key())).await);
    let other = manager(&redis.url(), &server.uri(), &cfg());
    assert_eq!(other.token(P).await.unwrap(), "tok-1");
    assert_eq!(m.token(P).await.unwrap(), "tok-1");
    assert_eq!(ep.calls(), 1);
}

/// The real provider's client_credentials grant, through the manager exactly as `serve` wires it: Ping-style
/// introspection with `Authorization: Bearer <M2M token>`, the token endpoint found by discovery, one grant
/// for two replicas and many checks.
#[tokio::test]
async fn real_idp_client_credentials_back_ping_style_introspection_in_two_replicas() {
    use crate::harness::app::{config, request, TestApp};
    use crate::harness::idp::{provider_toml, IdpServer};
    let redis = RedisServer::start();
    let idp = IdpServer::start().await;
    let mut cfg = config(&redis.url(), &provider_toml("corp", "ping", &idp, ""));
    cfg.redis.timeout = Duration::from_secs(5);
    let b = TestApp::serve_like(cfg.clone()).await;
    cfg.server.admin_addr = Some("127.0.0.1:0".into());
    cfg.server.admin_token = Some("admin-token-for-tests-only".into());
    let a = TestApp::serve_like(cfg).await;

    let tokens = idp.login("alice").await;
    let store = a.server.authorizer.store();
    let new = portcullis::session::NewSession {
        user_id: "alice".into(),
        provider: "corp".into(),
        sid: None,
        tokens,
        client_fingerprint: None,
    };
    let (value, _) = store.create(new, portcullis::now()).await.unwrap();
    let c = format!("GATEWAY_SESSION={value}");
    let checks = (0..10).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let req = request("GET", "/", &[("cookie", c.as_str())]);
        async move { app.check(req).await.status() }
    });
    let statuses = futures::future::join_all(checks).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Both replicas pre-warm at start and every check needs the token: still one grant in all.
    assert_eq!(idp.count("/token:client_credentials").await, 1, "{:?}", idp.stats().await);
    assert!(idp.count("/token/introspection").await >= 1);
    let slot = portcullis::m2m::shared::slot(&idp.issuer(), crate::harness::idp::CLIENT_ID, None);
    let key = portcullis::keys::m2m_token(P, &slot);
    let shared = get(&redis, &key).expect("m2m token shared in redis");
    assert!(shared.contains("\"tokenProvider\":\"corp\""), "{shared}");

    // The admin API shows, refreshes and drops it, never printing it.
    let sealed: serde_json::Value = serde_json::from_str(&shared).unwrap();
    let ring = a.server.authorizer.store().keys();
    let token = ring.decrypt(&key, "accessToken", sealed["accessToken"].as_str().unwrap()).unwrap();
    let admin = format!("http://{}/admin/m2m", a.server.admin_addr.unwrap());
    let http = reqwest::Client::new();
    let status = http.get(&admin).bearer_auth("admin-token-for-tests-only").send().await.unwrap().text().await.unwrap();
    assert!(status.contains("\"provider\":\"corp\"") && !status.contains(&token), "{status}");
    let r = http.post(format!("{admin}/corp/refresh")).bearer_auth("admin-token-for-tests-only").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.text().await.unwrap().contains(&token));
    assert_eq!(idp.count("/token:client_credentials").await, 2);
    let r = http.delete(format!("{admin}/corp")).bearer_auth("admin-token-for-tests-only").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(get(&redis, &key).is_none());
    a.shutdown().await;
    b.shutdown().await;
}

/// The M2M token call goes through the provider's transport: once failures open its breaker, the next
/// call is refused without reaching the token endpoint, and `portcullis_idp_requests_total` counts it.
#[tokio::test]
async fn an_open_breaker_refuses_the_token_call_without_reaching_the_idp() {
    let metrics = portcullis::telemetry::metrics();
    let redis = RedisServer::start();
    let (server, ep) = idp(vec![Answer::Status(500)]).await;
    let breaker = Breaker::new("m2m-brk", 2, Duration::from_secs(3600));
    let t = Arc::new(Transport::new(transport::client(None).unwrap(), "m2m-brk", Duration::from_secs(2), breaker));
    let m = manager_on(&redis.url(), &server.uri(), &cfg(), ClientAuth::ClientSecretBasic, t.clone());
    for _ in 0..10 {
        if t.breaker().state() == portcullis::idp::breaker::CircuitState::Open {
            break;
        }
        assert!(m.token(P).await.is_err(), "a 500 gives no token");
    }
    assert_eq!(t.breaker().state(), portcullis::idp::breaker::CircuitState::Open, "two failures open it");
    let reached = ep.calls();
    assert_eq!(reached, 2);
    let err = m.token(P).await.expect_err("refused while the circuit is open");
    assert_eq!(ep.calls(), reached, "the IdP never saw the refused call");
    assert!(err.to_string().contains("circuit"), "{err}");
    let text = metrics.render();
    assert!(
        text.contains(r#"portcullis_idp_requests_total{provider="m2m-brk",kind="token",outcome="error"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"portcullis_idp_requests_total{provider="m2m-brk",kind="token",outcome="circuit_open"}"#),
        "{text}"
    );
}

/// A replica's manager against the real provider's token endpoint (no scope: the provider grants none).
fn real_idp_manager(redis_url: &str, idp: &crate::harness::idp::IdpServer, cfg: &M2mConfig) -> Arc<M2mManager> {
    let redis = Redis::connect(&redis_cfg(redis_url)).expect("redis config");
    let mut s = settings(&idp.issuer(), ClientAuth::ClientSecretBasic);
    s.scope = None;
    s.client_id = crate::harness::idp::CLIENT_ID.into();
    s.client_secret = crate::harness::idp::CLIENT_SECRET.into();
    let clients = HashMap::from([(P.to_string(), TokenClient::new(s, transport_with(u32::MAX)).expect("client"))]);
    Arc::new(M2mManager::new(redis, ring(), cfg, clients))
}

/// A token living 10 s, far shorter than `refresh_before` (60 s) and the safety margin (5 s here): the margins
/// scale to its lifetime, so three replicas refreshing every 100 ms and calling all along make about one
/// token call per lifetime, not one per round.
#[tokio::test]
async fn a_short_lived_token_costs_about_one_call_per_lifetime_across_three_replicas() {
    use crate::harness::idp::IdpServer;
    let redis = RedisServer::start();
    let idp = IdpServer::start().await;
    idp.set_ttl(json!({"ClientCredentials": 10})).await;
    let cancel = CancellationToken::new();
    let managers: Vec<_> = (0..3).map(|_| real_idp_manager(&redis.url(), &idp, &cfg())).collect();
    let refreshers: Vec<_> = managers.iter().map(|m| m.spawn_refresher(cancel.clone())).collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut failures = 0;
    while tokio::time::Instant::now() < until {
        for m in &managers {
            if m.token(P).await.is_err() {
                failures += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    for r in refreshers {
        r.await.unwrap();
    }
    let calls = idp.count("/token:client_credentials").await;
    assert_eq!(failures, 0);
    // Fetched at about 0, 8 and 16 s (refresh at 80 % of the lifetime).
    assert!((2..=4).contains(&calls), "token calls in 20 s of a 10 s token: {calls}");
}

/// Three replicas forced to refresh at the same moment make one token call and all take its token.
#[tokio::test]
async fn a_forced_refresh_from_three_replicas_at_once_makes_one_call() {
    use crate::harness::idp::IdpServer;
    let redis = RedisServer::start();
    let idp = IdpServer::start().await;
    let managers: Vec<_> = (0..3).map(|_| real_idp_manager(&redis.url(), &idp, &cfg())).collect();
    let first = managers[0].token(P).await.unwrap();
    assert_eq!(idp.count("/token:client_credentials").await, 1);
    let forced = futures::future::join_all(managers.iter().map(|m| m.force_refresh(P))).await;
    let tokens: Vec<String> = forced.into_iter().map(|r| r.unwrap().access_token).collect();
    assert_eq!(idp.count("/token:client_credentials").await, 2, "one call for three forced replicas");
    assert!(tokens.iter().all(|t| *t == tokens[0] && *t != first), "all take the one new token");
    for m in &managers {
        assert_eq!(m.token(P).await.unwrap(), tokens[0]);
    }
}
