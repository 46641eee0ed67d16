//! Reload without restart, through `portcullis serve --config FILE` as a child process: SIGHUP and a
//! secret file swapped the Kubernetes way (`..data` symlink) change the key ring and the admin token; an
//! invalid config is refused whole; a listener address waits for a restart; checks in flight never fail.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis::config::Config as Parsed;
use portcullis::session::{NewSession, SessionStore};

use crate::harness::eventually;
use crate::harness::idp::{IdpOptions, IdpServer, CLIENT_ID, CLIENT_SECRET};
use crate::harness::redis::RedisServer;
use crate::served::{Config, Served};

const WAIT: Duration = Duration::from_secs(10);
const BASIC: &str = "introspection_auth = \"client_secret_basic\"";

/// What a test varies in the config file.
#[derive(Clone)]
struct Knobs {
    grpc: u16,
    http: u16,
    encrypting: Vec<String>,
    decrypt_only: Vec<String>,
    /// Extra `[server]` lines.
    server: String,
    /// The provider's secret line.
    secret: String,
    /// The `[revalidation]` body.
    revalidation: String,
}

struct Env {
    redis: RedisServer,
    idp: IdpServer,
    served: Served,
    knobs: Knobs,
}

fn list(keys: &[String]) -> String {
    keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
}

fn text(k: &Knobs, redis: &str, issuer: &str) -> String {
    let keys = format!("encryption_keys = [{}]\ndecrypt_only_keys = [{}]", list(&k.encrypting), list(&k.decrypt_only));
    Config {
        server: k.server.clone(),
        tables: format!("[revalidation]\n{}", k.revalidation),
        provider: format!("kind = \"oidc\"\nissuer = {issuer:?}\nclient_id = {CLIENT_ID:?}\n{}", k.secret),
        ..Config::oidc(redis, issuer, keys)
    }
    .text(k.grpc, k.http)
}

impl Env {
    async fn start(server: &str) -> Self {
        Self::start_with(server, &format!("client_secret = {CLIENT_SECRET:?}\n{BASIC}")).await
    }

    async fn start_with(server: &str, secret: &str) -> Self {
        let redis = RedisServer::start();
        let idp = IdpServer::start().await;
        let mut knobs = Knobs {
            grpc: 0,
            http: 0,
            encrypting: vec![portcullis::crypto::generate_key()],
            decrypt_only: vec![],
            server: server.to_string(),
            secret: secret.to_string(),
            revalidation: "mode = \"max_staleness\"\nmax_staleness = \"1s\"".into(),
        };
        let (url, issuer) = (redis.url(), idp.issuer());
        let k = knobs.clone();
        let served = Served::with_config(|grpc, http| text(&Knobs { grpc, http, ..k }, &url, &issuer));
        (knobs.grpc, knobs.http) = (served.grpc, served.http);
        assert!(served.wait_ready().await, "portcullis did not become ready");
        Self { redis, idp, served, knobs }
    }

    /// Rewrites the config file atomically (as an editor or a ConfigMap update does).
    fn rewrite(&self, k: &Knobs) {
        write_atomically(self.served.config_path(), &text(k, &self.redis.url(), &self.idp.issuer()));
    }

    fn hup(&self) {
        let ok = Command::new("kill").args(["-HUP", &self.served.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// A session for `user` sealed under `key`, as a replica with that key would create it.
    async fn plant(&self, key: &str, user: &str) -> String {
        let toml = text(
            &Knobs { encrypting: vec![key.to_string()], decrypt_only: vec![], ..self.knobs.clone() },
            &self.redis.url(),
            &self.idp.issuer(),
        );
        let cfg = Parsed::from_toml(&toml).unwrap();
        let redis = portcullis::store::Redis::connect(&cfg.redis).unwrap();
        let store = SessionStore::new(redis, Arc::new(cfg.session.key_ring().unwrap()), &cfg.session);
        let tokens = self.idp.login(user).await;
        let new =
            NewSession { user_id: user.into(), provider: "corp".into(), sid: None, tokens, client_fingerprint: None };
        let (cookie, _) = store.create(new, portcullis::now()).await.unwrap();
        format!("GATEWAY_SESSION={cookie}")
    }

    async fn check(&self, cookie: &str) -> u16 {
        self.served.check(&[("cookie", cookie)]).await
    }

    async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.served.http);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    /// The value of the sample line that starts with `series` (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let body = self.metrics().await;
        body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }

    async fn reloads(&self, result: &str) -> f64 {
        self.metric(&format!("portcullis_config_reload_total{{result=\"{result}\"}}")).await
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("next");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Key rotation by editing the file and sending SIGHUP: a session sealed by the new key B is refused until
/// the reload, accepted after it, and a session sealed by the old key A still works (A kept decrypt-only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_key_ring() {
    let env = Env::start("").await;
    let a = env.knobs.encrypting[0].clone();
    let b = portcullis::crypto::generate_key();
    let old = env.plant(&a, "alice").await;
    let new = env.plant(&b, "bob").await;
    assert_eq!(env.check(&old).await, 200, "a session under the running key");
    // A kid the ring does not hold is a replica configuration problem, not a forged cookie: 503.
    assert_eq!(env.check(&new).await, 503, "a key the running ring does not hold");

    env.rewrite(&Knobs { encrypting: vec![b.clone()], decrypt_only: vec![a.clone()], ..env.knobs.clone() });
    env.hup();
    assert!(eventually(WAIT, async || env.check(&new).await == 200).await, "key B never accepted after SIGHUP");
    assert_eq!(env.check(&old).await, 200, "key A is decrypt-only now and still opens old sessions");
    assert!(env.reloads("success").await >= 1.0);
}

/// An invalid config (a bad key entry) and SIGHUP: the old config keeps serving, the failure is counted
/// and the success timestamp does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_whole() {
    let env = Env::start("").await;
    let a = env.knobs.encrypting[0].clone();
    let old = env.plant(&a, "alice").await;
    let stamp = env.metric("portcullis_config_last_reload_success_timestamp_seconds").await;
    assert!(stamp > 0.0, "the timestamp is set at start");

    // A good new header name, but a bad key entry: nothing of it may apply.
    let bad = Knobs { encrypting: vec!["k9:not-base64!".into()], ..env.knobs.clone() };
    env.rewrite(&bad);
    env.hup();
    assert!(eventually(WAIT, async || env.reloads("failure").await >= 1.0).await, "failure never counted");
    assert_eq!(env.check(&old).await, 200, "still serving with the old key ring");
    assert_eq!(env.reloads("success").await, 0.0);
    assert_eq!(env.metric("portcullis_config_last_reload_success_timestamp_seconds").await, stamp);
    // Lines reach the file through the log thread: wait for them rather than race it.
    let refused = async || {
        let log = env.served.log();
        log.contains("configuration reload refused") && log.contains("session.encryption_keys")
    };
    assert!(eventually(WAIT, refused).await, "{}", env.served.log());
}

/// A listener address only changes on restart: the reload applies the rest, the old gRPC port serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_grpc_addr_waits_for_a_restart() {
    let env = Env::start("").await;
    let old = env.plant(&env.knobs.encrypting[0], "alice").await;
    let moved = crate::harness::free_port();
    env.rewrite(&Knobs { grpc: moved, ..env.knobs.clone() });
    env.hup();
    assert!(eventually(WAIT, async || env.reloads("success").await >= 1.0).await, "the reload did not apply");
    assert_eq!(env.check(&old).await, 200, "the old listener still serves");
    assert!(std::net::TcpStream::connect(("127.0.0.1", moved)).is_err(), "nothing listens on the new address");
    let warned = async || {
        let log = env.served.log();
        log.lines().any(|l| l.contains("\"key\":\"server.grpc_addr\"") && l.contains("only takes effect on restart"))
    };
    assert!(eventually(WAIT, warned).await, "no warning naming server.grpc_addr: {}", env.served.log());
}

/// A Secret volume as the kubelet writes it: each version in a fresh `..<timestamp>` directory, then the
/// `..data` symlink renamed over atomically; `<key>` links to `..data/<key>`.
fn secret_version(mount: &Path, version: &str, key: &str, value: &str) {
    std::fs::create_dir(mount.join(version)).unwrap();
    std::fs::write(mount.join(version).join(key), value).unwrap();
    let tmp = mount.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, mount.join("..data")).unwrap();
    if !mount.join(key).exists() {
        std::os::unix::fs::symlink(format!("..data/{key}"), mount.join(key)).unwrap();
    }
}

/// The admin token lives in a Secret mounted as a directory, swapped the Kubernetes way. No SIGHUP: the
/// watcher sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_follows_a_kubernetes_secret_swap() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path();
    let version = |name: &str, token: &str| secret_version(mount, name, "admin-token", token);
    let (old, new) = ("old-admin-token-0123456789", "new-admin-token-9876543210");
    version("..2026_12_06_01_00_00.1", old);
    let admin = crate::harness::free_port();
    let file = mount.join("admin-token");
    let env = Env::start(&format!("admin_addr = \"127.0.0.1:{admin}\"\nadmin_token_file = {file:?}")).await;

    let stats = async |token: &str| {
        let url = format!("http://127.0.0.1:{admin}/admin/stats");
        reqwest::Client::new().get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    assert_eq!(stats(old).await, 200);
    assert_eq!(stats(new).await, 401);

    version("..2026_12_06_02_00_00.2", new);
    assert!(eventually(WAIT, async || stats(new).await == 200).await, "the new token never worked");
    assert_eq!(stats(old).await, 401, "the old token is refused after the swap");
    assert!(env.reloads("success").await >= 1.0);
}

/// A provider's client secret from a Secret file: a wrong one makes introspection fail; the right one,
/// swapped in the Kubernetes way without SIGHUP, rebuilds the providers and the session is accepted.
/// `introspection_auth` decides who uses the secret: the introspection client itself, or the M2M token
/// client whose token introspection presents (the running M2M manager gets new token clients).
async fn provider_secret_swap(introspection_auth: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path();
    secret_version(mount, "..2026_12_06_01_00_00.1", "client-secret", "a-wrong-secret");
    let file = mount.join("client-secret");
    let secret = format!("client_secret_file = {file:?}\nintrospection_auth = {introspection_auth:?}");
    let env = Env::start_with("", &secret).await;
    let cookie = env.plant(&env.knobs.encrypting[0], "alice").await;
    assert_ne!(env.check(&cookie).await, 200, "{introspection_auth}: a wrong client secret");

    secret_version(mount, "..2026_12_06_02_00_00.2", "client-secret", CLIENT_SECRET);
    let accepted = eventually(WAIT, async || env.check(&cookie).await == 200).await;
    assert!(accepted, "{introspection_auth}: the new secret was never used");
    assert!(env.reloads("success").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_secret_swap_reaches_introspection() {
    provider_secret_swap("client_secret_basic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_secret_swap_reaches_the_m2m_client() {
    provider_secret_swap("bearer").await;
}

/// The revalidation mode follows a reload: under a long max_staleness repeated checks reuse one
/// introspection; after switching to every_request each check asks the IdP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revalidation_mode_follows_a_reload() {
    let env = Env::start("").await;
    let cookie = env.plant(&env.knobs.encrypting[0], "alice").await;
    let relaxed =
        Knobs { revalidation: "mode = \"max_staleness\"\nmax_staleness = \"1h\"".into(), ..env.knobs.clone() };
    env.rewrite(&relaxed);
    env.hup();
    assert!(eventually(WAIT, async || env.reloads("success").await >= 1.0).await);
    assert_eq!(env.check(&cookie).await, 200);
    let introspections = async || env.idp.count("/token/introspection").await;
    let before = introspections().await;
    // Spread over more than the old max_staleness (1s), so the old mode would have asked again.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(env.check(&cookie).await, 200);
    }
    assert_eq!(introspections().await, before, "max_staleness = 1h: answered from the cache");

    let strict = Knobs { revalidation: "mode = \"every_request\"".into(), ..env.knobs.clone() };
    env.rewrite(&strict);
    env.hup();
    // Applied once a check asks the IdP again (a late reload of the previous file cannot fake that).
    let asks = async || {
        let before = introspections().await;
        env.check(&cookie).await == 200 && introspections().await == before + 1
    };
    assert!(eventually(WAIT, asks).await, "every_request never applied");
    let before = introspections().await;
    for _ in 0..3 {
        assert_eq!(env.check(&cookie).await, 200);
    }
    assert_eq!(introspections().await, before + 3, "every_request: one introspection per check");
}

/// A Redis password rotated the way Redis ACLs allow: the user gets a second password, the Secret is
/// swapped, then the first password is removed and the user's connections killed. A password Redis does not
/// accept is refused by the reload. The reload made new
/// connections with the second password, so the signed-in session is allowed throughout; without them the
/// killed connections would come back with the first password and every check would be a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_redis_password_reconnects_and_logs_nobody_out() {
    let redis = RedisServer::start();
    let acl = |args: &[&str]| {
        let out = redis.cli(&[&["ACL", "SETUSER", "portcullis"][..], args].concat());
        assert!(out.contains("OK"), "ACL SETUSER {args:?}: {out}");
    };
    acl(&["on", ">first-password", "~*", "&*", "+@all"]);
    let (grpc, http) = (crate::harness::free_port(), crate::harness::free_port());
    let idp = IdpServer::start_with(IdpOptions::redirecting_to(&format!("http://127.0.0.1:{http}"))).await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path();
    secret_version(mount, "..2026_12_08_01_00_00.1", "redis-password", "first-password");
    let mut config = Config::ping(&redis.url(), &idp.issuer(), &portcullis::crypto::generate_key());
    config.redis += &format!("\nusername = \"portcullis\"\npassword_file = {:?}", mount.join("redis-password"));
    let served = Served::spawn(grpc, http, &config.text(grpc, http), |_| {});
    assert!(served.wait_ready().await, "{}", served.log());
    let cookie = served.sign_in(&idp, "alice").await;
    assert_eq!(served.check(&[("cookie", &cookie)]).await, 200);

    // A password Redis does not know is refused whole, not installed: the running connections stay.
    secret_version(mount, "..2026_12_08_01_30_00.w", "redis-password", "a-wrong-password");
    let refused = async || served.log().contains("does not reach Redis");
    assert!(eventually(WAIT, refused).await, "a wrong password was not refused: {}", served.log());
    assert_eq!(served.check(&[("cookie", &cookie)]).await, 200, "{}", served.log());

    acl(&[">second-password"]);
    secret_version(mount, "..2026_12_08_02_00_00.2", "redis-password", "second-password");
    let reloaded = async || served.log().contains("[redis] changed") && served.log().contains("configuration reloaded");
    assert!(eventually(WAIT, reloaded).await, "the new password was not picked up: {}", served.log());
    assert_eq!(served.check(&[("cookie", &cookie)]).await, 200, "{}", served.log());

    acl(&["<first-password"]);
    let killed = redis.cli(&["CLIENT", "KILL", "USER", "portcullis"]);
    assert!(killed.trim().parse::<u32>().is_ok_and(|n| n >= 1), "no connection of the user to kill: {killed}");
    // A killed connection fails the call that finds it dead (503) while it reconnects, with the second
    // password; with the first the reconnect is refused and no check passes again.
    let allowed = async || served.check(&[("cookie", &cookie)]).await == 200;
    assert!(eventually(WAIT, allowed).await, "never allowed after the kill: {}", served.log());
    for _ in 0..5 {
        assert_eq!(served.check(&[("cookie", &cookie)]).await, 200, "{}", served.log());
    }
    assert!(!served.log().contains("only takes effect on restart"), "{}", served.log());
}

/// The `[assertion]` signing keys from a Secret, rotated in its three steps without a restart: a new key is
/// published, then signs, then the old one goes. At each step the JWKS and the upstream's `x-auth-jwt`
/// follow, and the assertion verifies against the JWKS served at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertion_keys_rotate_by_reload() {
    use crate::assertion::{jwks_at, kid_of, verify};
    use portcullis::assertion::{generate_key, KeyAlg};
    let redis = RedisServer::start();
    let (grpc, http) = (crate::harness::free_port(), crate::harness::free_port());
    let idp = IdpServer::start_with(IdpOptions::redirecting_to(&format!("http://127.0.0.1:{http}"))).await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path();
    let (old, new) = (generate_key(KeyAlg::Es256).unwrap(), generate_key(KeyAlg::Eddsa).unwrap());
    let keys = |version: &str, entries: &[&str]| secret_version(mount, version, "assertion-keys", &entries.join("\n"));
    keys("..2026_12_08_01_00_00.1", &[&old]);
    let file = mount.join("assertion-keys");
    let mut config = Config::ping(&redis.url(), &idp.issuer(), &portcullis::crypto::generate_key());
    config.tables = format!("[assertion]\nenabled = true\nsigning_keys_file = {file:?}\nttl = \"60s\"");
    let served = Served::spawn(grpc, http, &config.text(grpc, http), |_| {});
    assert!(served.wait_ready().await, "{}", served.log());
    let cookie = served.sign_in(&idp, "alice").await;
    let base = served.base();
    let jwks_url = format!("{base}/.well-known/jwks.json");
    let kids = async || {
        let jwks = jwks_at(&jwks_url).await;
        jwks.keys.iter().filter_map(|k| k.common.key_id.clone()).collect::<Vec<_>>()
    };
    // The upstream's view: the assertion's signer, checked against the JWKS served now.
    let signed_by = async || {
        use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
        let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
        let req = crate::harness::app::request("GET", "/", &[("cookie", &cookie)]);
        let checked = crate::harness::app::Checked(client.check(req).await.unwrap().into_inner());
        assert_eq!(checked.status(), 200, "{}", served.log());
        let token = checked.header("x-auth-jwt").expect("an assertion");
        let claims = verify(&jwks_at(&jwks_url).await, &token, &base, &base);
        assert_eq!(claims.expect("verifies against the JWKS served now").sub, "alice");
        jsonwebtoken::decode_header(&token).unwrap().kid.unwrap()
    };
    assert_eq!(kids().await, [kid_of(&old)]);
    assert_eq!(signed_by().await, kid_of(&old));

    // 1. The new key published, not signing yet.
    keys("..2026_12_08_02_00_00.2", &[&old, &new]);
    assert!(eventually(WAIT, async || kids().await.len() == 2).await, "never published: {}", served.log());
    assert_eq!(kids().await, [kid_of(&old), kid_of(&new)]);
    assert_eq!(signed_by().await, kid_of(&old));
    // 2. It signs; the old one stays published for the assertions upstreams still hold.
    keys("..2026_12_08_03_00_00.3", &[&new, &old]);
    assert!(eventually(WAIT, async || signed_by().await == kid_of(&new)).await, "never signed: {}", served.log());
    assert_eq!(kids().await, [kid_of(&new), kid_of(&old)]);
    // 3. The old key withdrawn.
    keys("..2026_12_08_04_00_00.4", &[&new]);
    assert!(eventually(WAIT, async || kids().await.len() == 1).await, "never withdrawn: {}", served.log());
    assert_eq!(kids().await, [kid_of(&new)]);
    assert_eq!(signed_by().await, kid_of(&new));
    assert!(!served.log().contains("only takes effect on restart"), "{}", served.log());
}

/// Ten reloads under a loop of checks on a valid session: not one check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_check_fails_during_reloads() {
    let env = Arc::new(Env::start("").await);
    let cookie = env.plant(&env.knobs.encrypting[0], "alice").await;
    assert_eq!(env.check(&cookie).await, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let looping = {
        let (env, stop, ok, failed, cookie) = (env.clone(), stop.clone(), ok.clone(), failed.clone(), cookie.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = if env.check(&cookie).await == 200 { &ok } else { &failed };
                n.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for i in 1..=10 {
        // Each reload changes something reloadable: the log level and the key ring (a new primary key,
        // the original kept decrypt-only).
        let level = if i % 2 == 0 { "info" } else { "debug" };
        let k = Knobs {
            encrypting: vec![portcullis::crypto::generate_key()],
            decrypt_only: env.knobs.encrypting.clone(),
            server: format!("log_level = \"{level}\""),
            ..env.knobs.clone()
        };
        env.rewrite(&k);
        env.hup();
        let want = f64::from(i);
        assert!(eventually(WAIT, async || env.reloads("success").await >= want).await, "reload {i} did not apply");
        // Some checks on the new snapshot before the next reload.
        let seen = ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        let moved = async || ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= seen + 3;
        assert!(eventually(WAIT, moved).await, "the check loop stalled");
    }
    stop.store(true, Ordering::Relaxed);
    looping.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} checks failed during the reloads", ok + failed);
    assert!(ok >= 30, "the loop barely ran: {ok} checks");
}
