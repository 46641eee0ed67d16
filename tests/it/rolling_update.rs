//! A Kubernetes rolling update, played with real processes: pods (the shipped Envoy + `portcullis serve`
//! from a config file, as the sidecar layout runs them) are replaced one by one under load, twice, with a
//! two-phase key rotation across the two rollouts. A load generator plays the Service: it sends to the pods
//! that are ready and drops a pod once its readiness turns 503 after SIGTERM, as endpoints do. Valid
//! sessions must never see a failed check, and no session may be lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::e2e::{browser, follow_login};
use crate::harness::envoy::Envoy;
use crate::harness::free_port;
use crate::harness::idp::{IdpOptions, IdpServer};
use crate::harness::redis::RedisServer;
use crate::harness::upstream::Upstream;
use crate::served::{Config, Served};

/// One pod: its Envoy in front of its portcullis. Envoy drops first.
struct Pod {
    envoy: Envoy,
    portcullis: Served,
}

/// What every pod shares: where Redis, the IdP, the upstream and the public URL are.
struct Cluster {
    redis: RedisServer,
    idp: IdpServer,
    upstream: Upstream,
    envoy_port: u16,
}

impl Cluster {
    /// A pod whose portcullis seals with `encrypting` and also opens `decrypt_only`. The first pod takes the
    /// public port (the IdP's registered callback); later ones take free ports.
    async fn pod(&self, first: bool, encrypting: &[&str], decrypt_only: &[&str]) -> Pod {
        let list = |keys: &[&str]| keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ");
        let public = format!("http://127.0.0.1:{}", self.envoy_port);
        let keys = format!("encryption_keys = [{}]\ndecrypt_only_keys = [{}]", list(encrypting), list(decrypt_only));
        let portcullis = Served::config(&Config {
            public_url: Some(public),
            server: "drain_delay = \"2s\"\nshutdown_grace = \"2s\"".into(),
            tables: "[revalidation]\nmode = \"max_staleness\"\nmax_staleness = \"1s\"".into(),
            ..Config::oidc(&self.redis.url(), &self.idp.issuer(), keys)
        });
        assert!(portcullis.wait_ready().await, "a new pod's portcullis never became ready");
        let mut vars = crate::harness::envoy::vars(portcullis.grpc, portcullis.http, self.upstream.addr.port());
        if first {
            vars.push(("ENVOY_LISTEN_PORT", self.envoy_port.to_string()));
        }
        let envoy = Envoy::start(&vars).await;
        Pod { envoy, portcullis }
    }
}

/// The Service: the Envoy URLs of the pods that are ready.
type Endpoints = Arc<Mutex<Vec<String>>>;

/// Replaces each pod of `pods` by a new one with these keys, one at a time, as a rolling update does:
/// the new pod is ready and in the Service before the old one gets SIGTERM; the old one leaves the Service
/// when its readiness says so, and its Envoy stops once portcullis has drained and exited.
async fn roll(
    cluster: &Cluster,
    pods: &mut Vec<Pod>,
    endpoints: &Endpoints,
    encrypting: &[&str],
    decrypt_only: &[&str],
) {
    for _ in 0..pods.len() {
        let new = cluster.pod(false, encrypting, decrypt_only).await;
        endpoints.lock().unwrap().push(new.envoy.url(""));
        // minReadySeconds: old and new pods serve side by side for a while.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut old = pods.remove(0);
        let _ = std::process::Command::new("kill").args(["-TERM", &old.portcullis.child.id().to_string()]).status();
        let left =
            crate::harness::eventually(Duration::from_secs(5), async || old.portcullis.readyz().await != Some(200))
                .await;
        assert!(left, "readiness stayed 200 after SIGTERM");
        let url = old.envoy.url("");
        endpoints.lock().unwrap().retain(|u| *u != url);
        let exit = tokio::task::block_in_place(|| old.portcullis.child.wait().unwrap());
        assert!(exit.success(), "portcullis exited with {exit:?}");
        old.envoy.stop();
        pods.push(new);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_replaced_one_by_one_with_a_key_rotation_fail_no_check_and_lose_no_session() {
    let redis = RedisServer::start();
    let envoy_port = free_port();
    let idp = IdpServer::start_with(IdpOptions::redirecting_to(&format!("http://127.0.0.1:{envoy_port}"))).await;
    // Short ID tokens: sessions are refreshed, and so resealed, while the rollouts run.
    idp.set_ttl(serde_json::json!({"IdToken": 3})).await;
    let cluster = Cluster { redis, idp, upstream: Upstream::start().await, envoy_port };
    let old_key = portcullis::crypto::generate_key();
    let new_key = portcullis::crypto::generate_key();
    let new_kid = new_key.split(':').next().unwrap().to_string();

    let mut pods = vec![cluster.pod(true, &[&old_key], &[]).await, cluster.pod(false, &[&old_key], &[]).await];
    let endpoints: Endpoints = Arc::new(Mutex::new(pods.iter().map(|p| p.envoy.url("")).collect()));

    // Four users sign in through the first pod.
    let mut cookies = Vec::new();
    for user in ["alice", "bob", "carol", "dave"] {
        let (b, jar) = browser();
        let page = follow_login(&b, format!("http://127.0.0.1:{envoy_port}/oauth2/login?rd=/home"), user).await;
        assert_eq!(page.header("x-auth-user-id"), Some(user));
        let url = format!("http://127.0.0.1:{envoy_port}/").parse().unwrap();
        let header = reqwest::cookie::CookieStore::cookies(&*jar, &url).expect("a session cookie");
        let value = header
            .to_str()
            .unwrap()
            .split("; ")
            .find_map(|c| c.strip_prefix("GATEWAY_SESSION="))
            .expect("GATEWAY_SESSION")
            .to_string();
        cookies.push((user, value));
    }
    let ids: Vec<String> = cookies.iter().map(|(_, v)| portcullis::session::cookie::session_id(v)).collect();

    // Load: four workers, each a request every 10 ms at most, to a ready pod, as a valid session.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (endpoints, stop, failures, cookies) =
                (endpoints.clone(), stop.clone(), failures.clone(), cookies.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let (base, (user, value)) = {
                        let e = endpoints.lock().unwrap();
                        (e[(sent + w) % e.len()].clone(), cookies[(sent / 3 + w) % cookies.len()].clone())
                    };
                    let r = http
                        .get(format!("{base}/api/orders"))
                        .header("cookie", format!("GATEWAY_SESSION={value}"))
                        .header("accept", "application/json")
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {}
                        Ok(r) => failures.lock().unwrap().push(format!("{user} via {base}: {}", r.status())),
                        Err(e) => failures.lock().unwrap().push(format!("{user} via {base}: {e}")),
                    }
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                sent
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    // Phase 1: every pod learns the new key, decrypt-only. Phase 2: the new key seals, the old one still opens.
    roll(&cluster, &mut pods, &endpoints, &[&old_key], &[&new_key]).await;
    roll(&cluster, &mut pods, &endpoints, &[&new_key, &old_key], &[]).await;
    // Long enough for every session's ID token to expire and be refreshed under the new key.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for w in workers {
        sent += w.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {sent} checks failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(sent > 400, "the load ran: {sent} requests");
    for id in &ids {
        assert!(cluster.redis.exists(&format!("session:{id}")), "session {} lost", &id[..8]);
        let sealed: String = redis::cmd("HGET")
            .arg(format!("session:{id}"))
            .arg("accessToken")
            .query(&mut cluster.redis.conn())
            .unwrap();
        assert!(sealed.starts_with(&format!("v1.{new_kid}.")), "refreshed tokens are sealed with the new key");
    }
}
