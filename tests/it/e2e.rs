//! The whole product as an operator runs it: a browser (an HTTP client with a cookie jar, and a real
//! headless Chromium) -> Envoy (the shipped envoy.yaml) -> portcullis (as `serve` builds it, real
//! validators and login routes) -> the real OpenID provider, Redis, and an echo upstream.

use std::time::Duration;

use reqwest::header::LOCATION;

use crate::harness::app::{config, TestApp};
use crate::harness::envoy::{self, Envoy};
use crate::harness::free_port;
use crate::harness::idp::{provider_toml, IdpM2m, IdpOptions, IdpServer};
use crate::harness::redis::RedisServer;
use crate::harness::upstream::{Echo, Upstream};

/// Fields drop in order: Envoy first. All are held for their lifetime; some are never read.
#[allow(dead_code)]
pub struct Stack {
    pub envoy: Envoy,
    pub upstream: Upstream,
    pub app: TestApp,
    pub idp: IdpServer,
    pub redis: RedisServer,
    /// The public URL: Envoy's listener.
    pub public: String,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with("", |t| t.to_string()).await
    }

    /// As [`Stack::start`], with `extra` TOML appended to the portcullis config (after the provider) and the
    /// shipped envoy.yaml passed through `edit` (e.g. [`with_route`]).
    pub async fn start_with(extra: &str, edit: impl Fn(&str) -> String) -> Self {
        Self::start_full(extra, |_| {}, edit).await
    }

    /// As [`Stack::start_with`], with `configure` applied to the parsed config last (keys of tables the
    /// base config already has, such as `server.mode`).
    pub async fn start_full(
        extra: &str,
        configure: impl FnOnce(&mut portcullis::config::Config),
        edit: impl Fn(&str) -> String,
    ) -> Self {
        let redis = RedisServer::start();
        let envoy_port = free_port();
        let public = format!("http://127.0.0.1:{envoy_port}");
        let idp = IdpServer::start_with(IdpOptions {
            backchannel_logout_uri: None,
            // The second one lets a test log in at the IdP directly (`IdpServer::login`) for a user's tokens.
            redirect_uris: vec![format!("{public}/oauth2/callback"), crate::harness::idp::REDIRECT_URI.to_string()],
            ..Default::default()
        })
        .await;
        let provider = provider_toml("corp", "oidc", &idp, "introspection_auth = \"client_secret_basic\"");
        let mut cfg = config(&redis.url(), &format!("{provider}\n{extra}"));
        cfg.server.public_url = public.clone();
        cfg.redis.timeout = Duration::from_secs(5);
        configure(&mut cfg);
        let app = TestApp::configured(cfg, IdpM2m::new(&idp)).await;
        let upstream = Upstream::start().await;
        let mut vars = envoy::vars(app.server.grpc_addr.port(), app.server.http_addr.port(), upstream.addr.port());
        vars.push(("ENVOY_LISTEN_PORT", envoy_port.to_string()));
        let envoy = Envoy::shipped(&vars, edit).await;
        Self { envoy, upstream, app, idp, redis, public }
    }
}

/// An edit of the shipped envoy.yaml: a route for `prefix` (before the catch-all) to the upstream, with
/// these ext_authz `context_extensions`.
pub fn with_route(yaml: &str, prefix: &str, extensions: &[(&str, &str)]) -> String {
    let catch_all = "                        - match: { prefix: / }\n";
    assert!(yaml.contains(catch_all), "the shipped envoy.yaml has no catch-all route");
    let ext: String =
        extensions.iter().map(|(k, v)| format!("                                  {k}: {v:?}\n")).collect();
    let route = format!(
        "                        - match: {{ prefix: {prefix} }}
                          route: {{ cluster: upstream }}
                          typed_per_filter_config:
                            envoy.filters.http.ext_authz:
                              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                              check_settings:
                                context_extensions:
{ext}"
    );
    yaml.replacen(catch_all, &format!("{route}{catch_all}"), 1)
}

/// A browser: no automatic redirects, a cookie jar the test can read.
pub fn browser() -> (reqwest::Client, std::sync::Arc<reqwest::cookie::Jar>) {
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(jar.clone())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (client, jar)
}

fn location(r: &reqwest::Response) -> String {
    r.headers().get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

fn absolute(base: &str, loc: &str) -> String {
    url::Url::parse(base).and_then(|b| b.join(loc)).map(|u| u.to_string()).unwrap()
}

#[tokio::test]
async fn a_browser_logs_in_through_envoy_and_reaches_the_upstream_as_itself() {
    let s = Stack::start().await;
    let (browser, _) = browser();
    let html = |url: String| browser.get(url).header("accept", "text/html");

    // Not logged in: the page redirects to the login route, an API call is 401.
    let r = html(format!("{}/reports?q=1", s.public)).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let next = absolute(&s.public, &location(&r));
    assert!(next.starts_with(&format!("{}/oauth2/login?rd=", s.public)), "{next}");
    let api = browser.get(format!("{}/api", s.public)).header("accept", "application/json").send().await.unwrap();
    assert_eq!(api.status(), 401);
    assert_eq!(s.upstream.hits(), 0);

    let page = follow_login(&browser, next, "alice").await;
    assert_eq!(page.path, "/reports?q=1", "rd brought the browser back");
    assert_eq!(page.header("x-auth-user-id"), Some("alice"));
    assert_eq!(page.header("x-auth-provider"), Some("corp"));
    assert_eq!(page.header("x-auth-email"), Some("alice@example.com"));
    let cookies = page.header("cookie").unwrap_or_default();
    assert!(!cookies.contains("GATEWAY_SESSION"), "the session cookie never reaches the upstream: {cookies}");

    // A spoofed identity header is replaced, logout ends it all.
    let r = browser.get(format!("{}/api", s.public)).header("x-auth-user-id", "mallory").send().await.unwrap();
    assert_eq!(r.json::<Echo>().await.unwrap().header("x-auth-user-id"), Some("alice"));
    let r = browser.post(format!("{}/oauth2/logout", s.public)).header("origin", &s.public).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let r = browser.get(format!("{}/api", s.public)).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// Follows the redirects like a browser from `next` (the login route): login -> IdP -> form (signed in as
/// `login`) -> callback -> the page, which the echo upstream answers.
pub async fn follow_login(browser: &reqwest::Client, mut next: String, login: &str) -> Echo {
    let html = |url: String| browser.get(url).header("accept", "text/html");
    let mut page = None;
    for _ in 0..12 {
        let r = if next.contains("/interaction/") && !next.ends_with("/login") {
            let form = html(next.clone()).send().await.unwrap();
            if form.status().is_redirection() {
                next = absolute(&next, &location(&form));
                continue;
            }
            browser.post(&next).form(&[("prompt", "login"), ("login", login), ("password", "x")]).send().await
        } else {
            html(next.clone()).send().await
        }
        .unwrap();
        if r.status().is_redirection() {
            next = absolute(&next, &location(&r));
        } else {
            assert_eq!(r.status(), 200, "{next}: {}", r.text().await.unwrap_or_default());
            page = Some(r.json::<Echo>().await.unwrap());
            break;
        }
    }
    page.expect("landed on the protected page")
}

/// The IdP marks `unverified-*` accounts `email_verified: false`: the upstream gets no email for them.
#[tokio::test]
async fn an_email_the_idp_has_not_verified_never_reaches_the_upstream() {
    let s = Stack::start().await;
    let (browser, _) = browser();
    let page = follow_login(&browser, format!("{}/oauth2/login?rd=/home", s.public), "unverified-mallory").await;
    assert_eq!(page.header("x-auth-user-id"), Some("unverified-mallory"));
    assert_eq!(page.header("x-auth-email"), None, "an unverified email is withheld");
    assert_eq!(page.header("x-auth-name"), Some("User unverified-mallory"));
}

/// A browser whose connections come from `local` (a loopback address other than 127.0.0.1 plays another
/// client).
pub fn browser_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .local_address(local.parse::<std::net::IpAddr>().ok())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// chromedriver on a free port, killed on drop.
struct ChromeDriver {
    port: u16,
    child: std::process::Child,
}

impl ChromeDriver {
    async fn start() -> Self {
        let port = free_port();
        let child = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}): apt-get install chromium chromium-driver"));
        let d = Self { port, child };
        let ok = crate::harness::eventually(Duration::from_secs(10), async || {
            reqwest::get(format!("http://127.0.0.1:{port}/status")).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ok, "chromedriver did not come up");
        d
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn headless_chromium_logs_in_through_envoy_and_sees_its_identity() {
    use fantoccini::{ClientBuilder, Locator};
    // Two rustls providers are linked into the tests (see Cargo.toml): choose the binary's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = Stack::start().await;
    let driver = ChromeDriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let caps = serde_json::json!({"goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 format!("--user-data-dir={}", profile.path().display())],
    }});
    let serde_json::Value::Object(caps) = caps else { unreachable!() };
    let c = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session");

    c.goto(&format!("{}/reports", s.public)).await.unwrap();
    // Envoy -> portcullis (302) -> the IdP's login form, in a real browser.
    let login = c.wait().for_element(Locator::Css("input[name=login]")).await.unwrap();
    assert!(c.current_url().await.unwrap().as_str().starts_with(&s.idp.issuer()));
    login.send_keys("alice").await.unwrap();
    c.find(Locator::Css("input[name=password]")).await.unwrap().send_keys("x").await.unwrap();
    c.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();

    // Back through the callback (SameSite=Lax cookie set on a redirect) to the protected page.
    let target = format!("{}/reports", s.public);
    let arrived = crate::harness::eventually(Duration::from_secs(15), async || {
        c.current_url().await.is_ok_and(|u| u.as_str().starts_with(&target))
    })
    .await;
    assert!(arrived, "stuck at {:?}", c.current_url().await);
    let body = c.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
    let echo: Echo = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(echo.header("x-auth-user-id"), Some("alice"), "{body}");
    assert!(!echo.header("cookie").unwrap_or_default().contains("GATEWAY_SESSION"));
    let cookies = c.get_all_cookies().await.unwrap();
    let session = cookies.iter().find(|k| k.name() == "GATEWAY_SESSION").expect("session cookie in the browser");
    assert_eq!(session.http_only(), Some(true));

    // Sign out the way a user does: the GET page's button POSTs (same origin) and ends the session.
    let sessions = || -> usize {
        let keys: Vec<String> = redis::cmd("KEYS").arg("session:*").query(&mut s.redis.conn()).unwrap();
        keys.len()
    };
    assert_eq!(sessions(), 1);
    c.goto(&format!("{}/oauth2/logout", s.public)).await.unwrap();
    assert_eq!(sessions(), 1, "showing the sign-out page changes nothing");
    c.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    let at_idp = crate::harness::eventually(Duration::from_secs(15), async || {
        c.current_url().await.is_ok_and(|u| u.as_str().starts_with(&s.idp.issuer()))
    })
    .await;
    assert!(at_idp, "RP-initiated logout at the IdP, at {:?}", c.current_url().await);
    assert_eq!(sessions(), 0, "the session is gone");
    c.close().await.unwrap();
}
