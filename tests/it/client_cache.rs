//! `redis.client_cache`: two `portcullis serve` replicas share one redis-server; a session cached on A is
//! revoked through B's admin API, and A's very next check must deny it, in every one of 1,000 rounds, with
//! the cache's TTL at 10 minutes (so only Redis's invalidation, and the barrier that waits for it, can
//! clear the entry). Redis's own command counts show that A answered checks from its cache. With the cache
//! on, a hung or restarted Redis still answers 503 or 401, never a 200 from memory.

use std::sync::Arc;

use portcullis::config::Config as Parsed;
use portcullis::keys::session as session_key;
use portcullis::session::{NewSession, SessionStore};

use crate::harness::eventually;
use crate::harness::free_port;
use crate::harness::idp::IdpServer;
use crate::harness::redis::RedisServer;
use crate::served::{Config, Served};

const ROUNDS: usize = 1000;
/// Checks on A that find the session cached, per round.
const HITS: usize = 3;
const ADMIN_TOKEN: &str = "client-cache-admin-token";

/// A replica's config: the cache on, `max_staleness` so a cached check asks neither Redis nor the IdP.
fn replica(grpc: u16, http: u16, admin: u16, redis: &str, issuer: &str, key: &str) -> String {
    Config {
        server: format!("admin_addr = \"127.0.0.1:{admin}\"\nadmin_token = \"{ADMIN_TOKEN}\""),
        redis: format!("url = {redis:?}\nclient_cache = true\nclient_cache_ttl = \"10m\""),
        tables: "[revalidation]\nmode = \"max_staleness\"\nmax_staleness = \"10m\"".into(),
        ..Config::oidc(redis, issuer, format!("encryption_keys = [{key:?}]"))
    }
    .text(grpc, http)
}

/// Sessions are planted as a replica creates them, all holding one real login's tokens.
async fn planter(redis: &RedisServer, idp: &IdpServer, key: &str) -> (SessionStore, portcullis::session::Tokens) {
    let cfg = Parsed::from_toml(&replica(1, 2, 3, &redis.url(), &idp.issuer(), key)).unwrap();
    let store = SessionStore::new(
        portcullis::store::Redis::connect(&cfg.redis).unwrap(),
        Arc::new(cfg.session.key_ring().unwrap()),
        &cfg.session,
    );
    (store, idp.login("cached-user").await)
}

/// A new session of "cached-user": its cookie header and the session.
async fn plant(store: &SessionStore, tokens: &portcullis::session::Tokens) -> (String, portcullis::session::Session) {
    let new = NewSession {
        user_id: "cached-user".into(),
        provider: "corp".into(),
        sid: None,
        tokens: tokens.clone(),
        client_fingerprint: None,
    };
    let (value, session) = store.create(new, portcullis::now()).await.unwrap();
    (format!("GATEWAY_SESSION={value}"), session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_on_one_replica_clears_the_cache_of_another_1000_times() {
    let redis = RedisServer::start();
    let idp = IdpServer::start().await;
    let key = portcullis::crypto::generate_key();
    let (admin_a, admin_b) = (free_port(), free_port());
    let a = Served::with_config(|g, h| replica(g, h, admin_a, &redis.url(), &idp.issuer(), &key));
    let b = Served::with_config(|g, h| replica(g, h, admin_b, &redis.url(), &idp.issuer(), &key));
    assert!(a.wait_ready().await, "A not ready: {}", a.log());
    assert!(b.wait_ready().await, "B not ready: {}", b.log());

    let (store, tokens) = planter(&redis, &idp, &key).await;
    let http = reqwest::Client::new();
    let before = redis.commandstats();

    let reads = |stats: &std::collections::HashMap<String, u64>| {
        ["hgetall", "hmget"].iter().map(|c| stats.get(*c).copied().unwrap_or(0)).sum::<u64>()
    };
    let mut direct = redis.conn();
    let (mut checks_on_a, mut missed) = (0u64, Vec::new());
    for round in 0..ROUNDS {
        let (cookie, session) = plant(&store, &tokens).await;
        for _ in 0..=HITS {
            let status = a.check(&[("cookie", &cookie)]).await;
            assert_eq!(status, 200, "round {round}: a live session on A: {}", a.log());
        }
        if round % 2 == 0 {
            let revoke =
                format!("http://127.0.0.1:{admin_b}/admin/sessions/{}?user=cached-user", session.id.get(..16).unwrap());
            let r = http.delete(revoke).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
            assert_eq!(r.status(), 200, "round {round}: revoke on B");
        } else {
            // What a logout on another replica does to the session, with nothing between Redis's answer and
            // A's check: the narrowest window for an invalidation still on its way.
            let deleted: u32 = redis::cmd("DEL").arg(session_key(&session.id)).query(&mut direct).unwrap();
            assert_eq!(deleted, 1, "round {round}");
        }
        // The first check after the revoke, then one every millisecond until A denies (bounded: 5 s).
        let mut late = 0;
        while a.check(&[("cookie", &cookie)]).await != 401 {
            late += 1;
            assert!(late < 5000, "round {round}: A still allows a revoked session after {late} checks");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        if late > 0 {
            missed.push((round, late));
        }
        checks_on_a += HITS as u64 + 2 + late;
    }
    assert!(
        missed.is_empty(),
        "the very next check on A allowed a revoked session in {} of {ROUNDS} rounds: {missed:?} (round, checks)",
        missed.len()
    );

    // A read each session whole on first sight, then without its tokens (max_staleness remembers the
    // identity), and once after its revoke (the barrier dropped the entry); B read it once to find it by
    // handle in half the rounds. So at most 4 reads a round where A alone, uncached, runs HITS + 2.
    let after = redis.commandstats();
    let (read, pings) = (reads(&after) - reads(&before), after["ping"] - before.get("ping").copied().unwrap_or(0));
    println!("client cache: {checks_on_a} checks on A, {read} session reads and {pings} PINGs in Redis");
    assert!(read <= 4 * ROUNDS as u64, "{read} session reads for {checks_on_a} checks on A: the cache was not hit");
    // Every check on A that Redis did not read (B read once in half the rounds) was a hit, and waited for
    // a PING.
    let hits = checks_on_a - (read - ROUNDS as u64 / 2);
    assert!(pings >= hits, "{pings} PINGs for {hits} hits: a hit was served without its barrier");
}

/// With the cache on, a hung Redis is still a 503 for a session A holds in memory (its barrier cannot
/// pass), and a restarted one, whose data went with it, a 401: nothing is served from memory alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_restarted_redis_is_never_answered_from_the_cache() {
    let mut redis = RedisServer::start();
    let idp = IdpServer::start().await;
    let key = portcullis::crypto::generate_key();
    let a = Served::with_config(|g, h| replica(g, h, free_port(), &redis.url(), &idp.issuer(), &key));
    assert!(a.wait_ready().await, "A not ready: {}", a.log());
    let (store, tokens) = planter(&redis, &idp, &key).await;
    let (cookie, _) = plant(&store, &tokens).await;
    for _ in 0..3 {
        assert_eq!(a.check(&[("cookie", &cookie)]).await, 200, "{}", a.log());
    }

    redis.pause();
    for _ in 0..3 {
        assert_eq!(a.check(&[("cookie", &cookie)]).await, 503, "a hung Redis: {}", a.log());
    }
    redis.resume();
    assert!(eventually(std::time::Duration::from_secs(5), async || a.check(&[("cookie", &cookie)]).await == 200).await);

    redis.restart();
    assert!(
        eventually(std::time::Duration::from_secs(5), async || a.check(&[("cookie", &cookie)]).await == 401).await,
        "the session went with the old Redis: {}",
        a.log()
    );
}

/// A Redis user that may not run `CLIENT` (so no `CLIENT TRACKING`) would turn every check into a 503:
/// the replica says so by staying unready, logs Redis's refusal, and recovers once the ACL allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracking_connection_redis_refuses_keeps_the_replica_unready() {
    let redis = RedisServer::start();
    let idp = IdpServer::start().await;
    let key = portcullis::crypto::generate_key();
    let mut admin = redis.conn();
    let acl = |rules: &[&str]| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg("gateway").arg("on").arg(">gateway-pw").arg("~*").arg("&*").arg(rules);
        cmd
    };
    let _: () = acl(&["+@all", "-client"]).query(&mut admin).unwrap();
    let a = Served::with_config(|g, h| {
        replica(g, h, free_port(), &redis.url(), &idp.issuer(), &key)
            .replace("client_cache = true", "client_cache = true\nusername = \"gateway\"\npassword = \"gateway-pw\"")
    });
    let (store, tokens) = planter(&redis, &idp, &key).await;
    let (cookie, _) = plant(&store, &tokens).await;

    // The HTTP listener first (on a loaded machine the first probe can come before it is bound), then
    // unready, probe after probe.
    assert!(eventually(std::time::Duration::from_secs(20), async || a.readyz().await.is_some()).await, "{}", a.log());
    for _ in 0..20 {
        assert_eq!(a.readyz().await, Some(503), "ready without a tracking connection: {}", a.log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(a.check(&[("cookie", &cookie)]).await, 503);
    assert!(a.log().contains("client|tracking"), "the log should carry Redis's refusal: {}", a.log());

    let _: () = acl(&["+client"]).query(&mut admin).unwrap();
    assert!(a.wait_ready().await, "ready once the ACL allows CLIENT: {}", a.log());
    assert_eq!(a.check(&[("cookie", &cookie)]).await, 200, "{}", a.log());
}
