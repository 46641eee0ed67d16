//! The binary as an operator runs it.

use std::process::Command;

use crate::served::{portcullis, Served};

fn write(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn good() -> String {
    let key = String::from_utf8(portcullis().arg("keygen").output().unwrap().stdout).unwrap();
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/portcullis.example.toml"))
        .unwrap()
        .replace("REPLACE_WITH_KEYGEN_OUTPUT", key.trim())
}

#[test]
fn keygen_prints_a_usable_key() {
    let out = portcullis().arg("keygen").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(portcullis::crypto::KeyRing::parse(&[line.trim()]).is_ok(), "{line}");
}

#[test]
fn keygen_assertion_prints_entries_that_check_config_accepts() {
    let mut entries = Vec::new();
    for args in [&["keygen", "--assertion"][..], &["keygen", "--assertion", "--alg", "eddsa"]] {
        let out = portcullis().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        entries.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
    }
    let jwks = portcullis::assertion::KeySet::parse(&[&entries[0], &entries[1]]).unwrap().jwks();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    assert_eq!(jwks["keys"][1]["alg"], "EdDSA");
    assert_ne!(jwks["keys"][0]["kid"], jwks["keys"][1]["kid"], "a fresh kid each time");

    // The example's own [assertion] section, switched on.
    let with = |keys: &str, ttl: &str| {
        let text = good()
            .replacen("enabled = false", "enabled = true", 1)
            .replacen("signing_keys = []", &format!("signing_keys = [{keys}]"), 1)
            .replacen("ttl = \"60s\"", &format!("ttl = {ttl:?}"), 1);
        assert!(text.contains("enabled = true") && text.contains(ttl), "the example's [assertion] changed");
        write(&text)
    };
    let f = with(&format!("{:?}, {:?}", entries[0], entries[1]), "60s");
    let out = portcullis().args(["check-config", "--config"]).arg(f.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("server.grpc_addr") && said.contains("need a restart"), "no reload note: {said}");
    let f = with("", "1h");
    let out = portcullis().args(["check-config", "--config"]).arg(f.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("assertion.ttl") && err.contains("assertion.signing_keys"), "{err}");
    // --alg belongs to --assertion.
    assert!(!portcullis().args(["keygen", "--alg", "eddsa"]).output().unwrap().status.success());
}

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let f = write(&good());
    let out = portcullis().args(["check-config", "--config"]).arg(f.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = write(&good().replace("redis://127.0.0.1:6379", "tcp://nowhere"));
    let out = portcullis().args(["check-config", "--config"]).arg(bad.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redis.url"), "{err}");

    // Environment overrides are checked too, by the key they set.
    let out = portcullis()
        .args(["check-config", "--config"])
        .arg(f.path())
        .env("PORTCULLIS__SESSION__IDLE_TIMEOUT", "whenever")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("session.idle_timeout"), "{err}");

    let out = portcullis().args(["check-config", "--config", "/nonexistent.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn version_names_the_revision() {
    let out = portcullis().arg("--version").output().unwrap();
    let v = String::from_utf8(out.stdout).unwrap();
    assert!(v.starts_with("portcullis 0.") && v.contains('('), "{v}");
}

/// `portcullis healthcheck --url URL`, run off the async runtime: (exit code, stdout + stderr).
async fn healthcheck(url: String) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let out = portcullis().args(["healthcheck", "--timeout-secs", "2", "--url", &url]).output().unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    })
    .await
    .unwrap()
}

/// The image's HEALTHCHECK and the sidecar's exec probes: 0 while /readyz answers 200, 1 once Redis is gone
/// (503) and 1 when nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_follows_readiness() {
    use crate::harness::app::{config, StaticValidator, TestApp};
    let mut redis = crate::harness::redis::RedisServer::start();
    let app = TestApp::with_validator(config(&redis.url(), ""), StaticValidator::new()).await;
    let url = format!("http://{}/readyz", app.server.http_addr);

    let (code, out) = healthcheck(url.clone()).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("200"), "{out}");

    redis.stop();
    let (code, out) = healthcheck(url).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("503"), "{out}");

    let (code, out) = healthcheck(format!("http://127.0.0.1:{}/readyz", crate::harness::free_port())).await;
    assert_eq!(code, Some(1), "{out}");
}

fn check_config(text: &str) -> std::process::Output {
    let f = write(text);
    portcullis().args(["check-config", "--config"]).arg(f.path()).output().unwrap()
}

#[test]
fn check_config_accepts_sentinel_mode() {
    let text = good().replace("mode = \"standalone\"", "mode = \"sentinel\"").replace(
        "url = \"redis://127.0.0.1:6379\"",
        "urls = [\"redis://127.0.0.1:26379\"]\nsentinel_master = \"mymaster\"",
    );
    assert!(text.contains("mode = \"sentinel\""), "the example's redis.url line moved");
    let out = check_config(&text);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Sentinel mode without its master is named.
    let out = check_config(&text.replace("sentinel_master = \"mymaster\"", ""));
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redis.sentinel_master"), "{err}");
}

/// The client cache is wired for a standalone connection only; elsewhere it is refused by name, not ignored.
#[test]
fn check_config_refuses_client_cache_outside_standalone() {
    let on = good().replace("client_cache = false", "client_cache = true");
    assert!(on.contains("client_cache = true"), "the example's client_cache line moved");
    let out = check_config(&on);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for mode in ["cluster", "sentinel"] {
        let text = on
            .replace("mode = \"standalone\"", &format!("mode = \"{mode}\""))
            .replace("# urls = [", "urls = [")
            .replace("# sentinel_master =", "sentinel_master =");
        let out = check_config(&text);
        assert_eq!(out.status.code(), Some(64), "{mode}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("redis.client_cache"), "{mode}: {err}");
    }
}

#[test]
fn check_config_refuses_an_unknown_redis_mode_by_name() {
    let text = good().replace("mode = \"standalone\"", "mode = \"ring\"");
    assert!(text.contains("mode = \"ring\""), "the example's redis.url line moved");
    let out = check_config(&text);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redis.mode"), "{err}");
}

#[test]
fn check_config_refuses_jwt_enabled_pointing_at_assertion() {
    let text = good().replace("[headers]", "[headers]\njwt_enabled = false");
    assert!(text.contains("jwt_enabled"), "the example has no [headers] section");
    let out = check_config(&text);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("headers.jwt_enabled") && err.contains("[assertion]"), "{err}");
}

#[test]
fn check_config_accepts_same_site_in_any_case() {
    for v in ["strict", "STRICT", "Strict"] {
        let text = good().replace("same_site = \"Lax\"", &format!("same_site = \"{v}\""));
        assert!(text.contains(&format!("same_site = \"{v}\"")), "the example's same_site line moved");
        let out = check_config(&text);
        assert!(out.status.success(), "{v}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = check_config(&good().replace("same_site = \"Lax\"", "same_site = \"sideways\""));
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("session.same_site"), "{err}");
}

/// Each Redis mode from a config file through `serve`: ready, and a session lookup answers (an unknown
/// session is 401; a Redis it cannot use would be 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_in_every_redis_mode_from_a_config_file() {
    use crate::harness::redis::{RedisCluster, RedisSentinel, RedisServer, SENTINEL_MASTER};
    let standalone = RedisServer::start();
    let cluster = RedisCluster::start();
    let sentinel = RedisSentinel::start();
    let quoted = |urls: Vec<String>| urls.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(", ");
    let modes = [
        ("standalone", format!("mode = \"standalone\"\nurl = {:?}", standalone.url())),
        ("cluster", format!("mode = \"cluster\"\nurls = [{}]", quoted(cluster.urls()))),
        (
            "sentinel",
            format!("mode = \"sentinel\"\nurls = [{:?}]\nsentinel_master = {SENTINEL_MASTER:?}", sentinel.url()),
        ),
    ];
    for (mode, redis) in modes {
        let served = Served::start(&redis, "");
        assert!(served.wait_ready().await, "{mode}: portcullis did not become ready");
        assert_eq!(served.check(&[]).await, 401, "{mode}: no cookie");
        let unknown = format!("GATEWAY_SESSION={}", "A".repeat(43));
        assert_eq!(served.check(&[("cookie", &unknown)]).await, 401, "{mode}: an unknown session, looked up in Redis");
    }
}

/// `server.worker_threads` from the file sets how many threads serve requests (the start-up line reports the
/// runtime's own count); left out, it is one per CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_configured_number_of_worker_threads() {
    let redis = crate::harness::redis::RedisServer::start();
    let url = format!("url = {:?}", redis.url());
    for (server, workers) in [("worker_threads = 2", 2), ("worker_threads = 3", 3), ("", 1)] {
        let served = Served::start(&url, server);
        assert!(served.wait_ready().await, "{server:?}: portcullis did not become ready");
        assert_eq!(served.check(&[]).await, 401, "{server:?}: a Check is answered");
        let wait = std::time::Duration::from_secs(5);
        crate::harness::eventually(wait, async || served.log().contains("portcullis listening")).await;
        let log = served.log();
        let line = log.lines().find(|l| l.contains("portcullis listening")).unwrap_or_else(|| panic!("{log}"));
        assert!(line.contains(&format!("\"workers\":{workers},")), "{server:?}: {line}");
    }
}

/// SIGTERM as Kubernetes sends it: readiness turns 503 at once while checks are still answered for
/// `drain_delay`, then the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_before_it_stops() {
    let redis = crate::harness::redis::RedisServer::start();
    let mut served =
        Served::start(&format!("url = {:?}", redis.url()), "drain_delay = \"3s\"\nshutdown_grace = \"2s\"");
    assert!(served.wait_ready().await, "portcullis did not become ready");

    let sent = std::time::Instant::now();
    let _ = Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status();
    let draining =
        crate::harness::eventually(std::time::Duration::from_secs(2), async || served.readyz().await == Some(503))
            .await;
    assert!(draining, "readiness did not turn 503 after SIGTERM");
    // Still answering checks while draining (a request without a cookie: a deny, not a closed connection).
    assert_eq!(served.check(&[]).await, 401);
    assert!(served.child.try_wait().unwrap().is_none(), "exited before the drain delay");

    let exit = tokio::task::block_in_place(|| served.child.wait().unwrap());
    assert!(exit.success(), "{exit:?}");
    assert!(sent.elapsed() >= std::time::Duration::from_secs(3), "stopped before drain_delay: {:?}", sent.elapsed());
}

/// `server.worker_threads` = 1 (the default: tokio's current-thread scheduler) and 2 (the multi-threaded
/// one), each started from a config file: 64 concurrent checks of a signed-in session all pass with its
/// identity, a check without a cookie is 401, and the session's deletion is seen by the next check.
#[tokio::test]
async fn serve_answers_concurrent_checks_on_one_worker_or_several() {
    use crate::harness::app::{request, Checked};
    use crate::harness::idp::{IdpOptions, IdpServer};
    use crate::harness::redis::RedisServer;
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

    for workers in [1, 2] {
        let redis = RedisServer::start();
        let (grpc, http) = (crate::harness::free_port(), crate::harness::free_port());
        let idp = IdpServer::start_with(IdpOptions::redirecting_to(&format!("http://127.0.0.1:{http}"))).await;
        let config = crate::served::Config {
            server: format!("worker_threads = {workers}"),
            ..crate::served::Config::ping(&redis.url(), &idp.issuer(), &portcullis::crypto::generate_key())
        };
        let served = Served::spawn(grpc, http, &config.text(grpc, http), |_| {});
        assert!(served.wait_ready().await, "worker_threads = {workers}: not ready\n{}", served.log());
        let cookie = served.sign_in(&idp, "alice").await;

        let client = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
        let checks = (0..64).map(|_| {
            let (mut client, cookie) = (client.clone(), cookie.clone());
            async move { Checked(client.check(request("GET", "/", &[("cookie", &cookie)])).await.unwrap().into_inner()) }
        });
        let answers = tokio::time::timeout(std::time::Duration::from_secs(30), futures::future::join_all(checks)).await;
        for answer in
            answers.unwrap_or_else(|_| panic!("worker_threads = {workers}: 64 checks still unanswered after 30 s"))
        {
            assert_eq!(answer.status(), 200, "worker_threads = {workers}");
            assert_eq!(answer.header("x-auth-user-id").as_deref(), Some("alice"), "worker_threads = {workers}");
        }
        assert_eq!(served.check(&[]).await, 401, "worker_threads = {workers}");

        let mut conn = redis.conn();
        let sessions: Vec<String> = redis::cmd("KEYS").arg("session:*").query(&mut conn).unwrap();
        assert_eq!(sessions.len(), 1, "one session signed in");
        let _: () = redis::cmd("DEL").arg(&sessions).query(&mut conn).unwrap();
        assert_eq!(served.check(&[("cookie", &cookie)]).await, 401, "worker_threads = {workers}: a deleted session");
    }
}
