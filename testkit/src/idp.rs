//! The test OpenID provider (`tests/idp/provider.mjs`, panva's oidc-provider) as a child process on a free
//! port, with its state in a temp dir so `restart()` keeps every token it issued. `login()` drives a real
//! Authorization Code + PKCE flow through its login form; `stats()` reads how often each endpoint was hit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis::m2m::{M2mError, M2mSource};
use portcullis::session::Tokens;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const CLIENT_ID: &str = "portcullis";
pub const CLIENT_SECRET: &str = "portcullis-secret";
pub const REDIRECT_URI: &str = "http://127.0.0.1:8080/oauth2/callback";
/// The `tid` claim of every ID token.
pub const TENANT: &str = "tenant-1";

fn idp_dir() -> PathBuf {
    PathBuf::from(crate::ROOT).join("tests/idp")
}

/// Installs the provider's npm dependencies once per test process, or fails saying what is missing.
fn ensure_installed() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        if idp_dir().join("node_modules/oidc-provider").is_dir() && idp_dir().join("node_modules/jose").is_dir() {
            return Ok(());
        }
        let script = PathBuf::from(crate::ROOT).join("scripts/ensure-idp.sh");
        match Command::new("bash").arg(script).status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("scripts/ensure-idp.sh failed ({s})")),
            Err(e) => Err(format!("cannot run scripts/ensure-idp.sh: {e}")),
        }
    });
    if let Err(e) = r {
        panic!(
            "the test OpenID provider is not installed: {e}. Install Node.js 20+ and npm (Debian: apt-get install nodejs npm), then run scripts/ensure-idp.sh (npm ci in tests/idp)"
        );
    }
}

pub struct IdpServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    opts: IdpOptions,
}

/// Settings of the provider's one client (`portcullis`).
#[derive(Debug, Clone, Default)]
pub struct IdpOptions {
    /// Where the provider POSTs logout tokens (OIDC Back-Channel Logout); loopback is allowed.
    pub backchannel_logout_uri: Option<String>,
    /// Registered redirect URIs; default [`REDIRECT_URI`].
    pub redirect_uris: Vec<String>,
    /// Serve HTTPS (issuer `https://127.0.0.1:PORT`) with a certificate of a private CA.
    pub tls: Option<IdpTls>,
}

impl IdpOptions {
    /// The client's one redirect URI: the callback of the portcullis whose HTTP listener is at `base`.
    pub fn redirecting_to(base: &str) -> Self {
        Self { redirect_uris: vec![format!("{base}/oauth2/callback")], ..Default::default() }
    }
}

/// The IdP's certificate, key and the CA that signed them (see [`crate::tls::Pki::idp_tls`]).
#[derive(Debug, Clone)]
pub struct IdpTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl IdpServer {
    pub async fn start() -> Self {
        Self::start_with(IdpOptions::default()).await
    }

    pub async fn start_with(opts: IdpOptions) -> Self {
        ensure_installed();
        let dir = tempfile::tempdir().expect("temp dir for the IdP state");
        let mut http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = &opts.tls {
            let ca = std::fs::read(&tls.ca).expect("the IdP's CA");
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA certificate"));
        }
        let http = http.build().expect("http client");
        let mut s = Self { port: super::free_port(), child: None, dir, http, opts };
        s.spawn().await;
        s
    }

    pub fn issuer(&self) -> String {
        let scheme = if self.opts.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    async fn spawn(&mut self) {
        self.spawn_with(false).await
    }

    async fn spawn_with(&mut self, new_key: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("idp.log"))
            .expect("idp log file");
        let mut cmd = Command::new("node");
        if let Some(uri) = &self.opts.backchannel_logout_uri {
            cmd.env("IDP_BACKCHANNEL_LOGOUT_URI", uri);
        }
        if new_key {
            cmd.env("IDP_NEW_KEY", "1");
        }
        if let Some(tls) = &self.opts.tls {
            cmd.env("IDP_TLS_CERT", &tls.cert).env("IDP_TLS_KEY", &tls.key).env("IDP_ISSUER", self.issuer());
        }
        if !self.opts.redirect_uris.is_empty() {
            cmd.env("IDP_REDIRECT_URIS", self.opts.redirect_uris.join(","));
        }
        let child = cmd
            .arg("provider.mjs")
            .current_dir(idp_dir())
            .env("IDP_PORT", self.port.to_string())
            .env("IDP_STATE", self.dir.path().join("state.json"))
            .env("IDP_TENANT", TENANT)
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start node ({e}): install Node.js 20+ (Debian: apt-get install nodejs npm)")
            });
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            let r = self.http.get(self.url("/.well-known/openid-configuration")).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the test IdP exited ({status}): {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the test IdP did not come up on port {}: {}", self.port, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("idp.log")).unwrap_or_default()
    }

    /// Kills the provider: its port refuses connections until `restart()`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same state (tokens, grants, keys); counters start at 0.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Restarts it having withdrawn its signing key and published a new one (what it issued is kept).
    pub async fn rotate_signing_key(&mut self) {
        self.stop();
        self.spawn_with(true).await;
    }

    /// Requests per path, and per `/token:<grant_type>`.
    pub async fn stats(&self) -> HashMap<String, u64> {
        self.http.get(self.url("/__stats")).send().await.expect("stats").json().await.expect("stats json")
    }

    pub async fn count(&self, key: &str) -> u64 {
        self.stats().await.get(key).copied().unwrap_or(0)
    }

    pub async fn reset_stats(&self) {
        self.http.post(self.url("/__stats/reset")).send().await.expect("reset stats");
    }

    /// Lifetimes (seconds) of tokens issued from now on, e.g. `json!({"IdToken": 1})`.
    pub async fn set_ttl(&self, ttl: Value) {
        self.http.post(self.url("/__ttl")).json(&ttl).send().await.expect("set ttl");
    }

    /// Answers `path` `ms` late.
    pub async fn delay(&self, path: &str, ms: u64) {
        let body = serde_json::json!({"path": path, "ms": ms});
        self.http.post(self.url("/__delay")).json(&body).send().await.expect("set delay");
    }

    /// A JWT with `claims`, signed by the provider's key (`"provider"`) or one it never published (`"stranger"`).
    pub async fn mint(&self, claims: Value, key: &str) -> String {
        let body = serde_json::json!({"claims": claims, "key": key});
        self.http.post(self.url("/__mint")).json(&body).send().await.expect("mint").text().await.expect("mint text")
    }

    /// Revokes a token at the revocation endpoint (this provider ends the whole grant).
    pub async fn revoke(&self, token: &str) {
        let r = self
            .http
            .post(self.url("/token/revocation"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .expect("revoke");
        assert!(r.status().is_success(), "revocation answered {}", r.status());
    }

    /// A client_credentials token for the portcullis client.
    pub async fn client_credentials(&self) -> String {
        let r: Value = self
            .http
            .post(self.url("/token"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("client_credentials")
            .json()
            .await
            .expect("token json");
        r["access_token"].as_str().expect("access_token").to_string()
    }

    /// A real Authorization Code + PKCE login of `user` through the provider's login form.
    pub async fn login(&self, user: &str) -> Tokens {
        self.browser_login(user).await.1
    }

    /// Like [`login`](Self::login), also returning the browser (its cookie jar holds the IdP session).
    pub async fn browser_login(&self, user: &str) -> (reqwest::Client, Tokens) {
        login_at(&self.issuer(), user).await
    }

    /// RP-initiated logout in `browser`: end_session with `id_token_hint`, then the confirmation form.
    /// The provider sends back-channel logout tokens before it answers.
    pub async fn logout(&self, browser: &reqwest::Client, id_token: &str) {
        let page = browser
            .get(self.url("/session/end"))
            .query(&[("id_token_hint", id_token)])
            .send()
            .await
            .expect("end_session")
            .text()
            .await
            .expect("logout page");
        let xsrf = page
            .split("name=\"xsrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no xsrf in the logout page: {page}"))
            .to_string();
        let r = browser
            .post(self.url("/session/end/confirm"))
            .form(&[("xsrf", xsrf.as_str()), ("logout", "yes")])
            .send()
            .await
            .expect("logout confirm");
        assert!(r.status().is_redirection() || r.status().is_success(), "logout answered {}", r.status());
    }
}

impl Drop for IdpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test-only M2M source: one client_credentials token from the test IdP, fetched on first use.
pub struct IdpM2m {
    token_url: String,
    token: tokio::sync::Mutex<Option<String>>,
    http: reqwest::Client,
    pub fetches: Mutex<u32>,
}

impl IdpM2m {
    pub fn new(idp: &IdpServer) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            token_url: idp.url("/token"),
            token: tokio::sync::Mutex::new(None),
            http: reqwest::Client::new(),
            fetches: Mutex::new(0),
        })
    }
}

#[async_trait::async_trait]
impl M2mSource for IdpM2m {
    async fn token(&self, _provider: &str) -> Result<String, M2mError> {
        let mut t = self.token.lock().await;
        if let Some(t) = t.as_ref() {
            return Ok(t.clone());
        }
        let r = self
            .http
            .post(&self.token_url)
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| M2mError::Unavailable(e.to_string()))?;
        let v: Value = r.json().await.map_err(|e| M2mError::Unavailable(e.to_string()))?;
        let token = v["access_token"].as_str().ok_or_else(|| M2mError::Unavailable(v.to_string()))?.to_string();
        *self.fetches.lock().unwrap() += 1;
        *t = Some(token.clone());
        Ok(token)
    }
}

/// Provider `name` of `kind` against the test IdP; `extra` adds keys to its table (timeout 2s unless it sets one).
pub fn provider_toml(name: &str, kind: &str, idp: &IdpServer, extra: &str) -> String {
    format!(
        r#"
[providers.{name}]
kind = "{kind}"
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
{timeout}
{extra}
"#,
        issuer = idp.issuer(),
        timeout = if extra.contains("timeout =") { "" } else { "timeout = \"2s\"" },
    )
}

/// portcullis as `serve` builds it (real validators and login routes), with a test M2M source.
pub async fn start_app(cfg: &portcullis::config::Config, m2m: std::sync::Arc<IdpM2m>) -> super::app::TestApp {
    super::app::TestApp::configured(cfg.clone(), m2m).await
}

/// Drives a sign-in through portcullis's login route at `base` like a browser: /oauth2/login -> the IdP
/// (`issuer`) -> its login form as `user` -> back to portcullis's callback. Returns the callback URL, not yet
/// visited. `at_authorize` sees the IdP authorize URL portcullis redirected to.
pub async fn sign_in(
    browser: &reqwest::Client,
    base: &str,
    issuer: &str,
    user: &str,
    rd: &str,
    at_authorize: impl FnOnce(&str),
) -> String {
    let location = |r: &reqwest::Response| {
        let loc = r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        url::Url::parse(issuer).and_then(|b| b.join(&loc)).map(|u| u.to_string()).unwrap_or(loc)
    };
    let r = browser.get(format!("{base}/oauth2/login")).query(&[("rd", rd)]).send().await.expect("login route");
    assert_eq!(r.status(), 302, "login route: {}", r.text().await.unwrap_or_default());
    let mut next = location(&r);
    assert!(next.starts_with(issuer), "login must send the browser to the IdP: {next}");
    at_authorize(&next);
    for _ in 0..8 {
        if next.starts_with(&format!("{base}/oauth2/callback")) {
            return next;
        }
        let r = if next.contains("/interaction/") && !next.ends_with("/login") {
            let form = browser.get(&next).send().await.expect("login form");
            if form.status().is_redirection() {
                next = location(&form);
                continue;
            }
            browser.post(&next).form(&[("prompt", "login"), ("login", user), ("password", "x")]).send().await
        } else {
            browser.get(&next).send().await
        }
        .expect("idp step");
        next = location(&r);
    }
    panic!("never came back to the callback: {next}");
}

/// A real Authorization Code + PKCE login of `user` through the login form of the provider at `issuer`
/// (any running `tests/idp/provider.mjs`, e.g. one a load script started); returns the browser (its cookie
/// jar holds the IdP session) and the tokens.
pub async fn login_at(issuer: &str, user: &str) -> (reqwest::Client, Tokens) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("http client");
    let at = |path: &str| format!("{issuer}{path}");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .expect("browser client");
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut auth = url::Url::parse(&at("/auth")).expect("auth url");
    auth.query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email profile groups offline_access")
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("state", "st")
        .append_pair("nonce", "nn")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    // /auth -> /interaction/<uid> (login form)
    let form_url = follow(issuer, browser.get(auth.as_str())).await;
    assert!(form_url.contains("/interaction/"), "expected the login form, got {form_url}");
    // POST the form -> /auth/<uid> -> redirect_uri?code=...
    let mut next =
        follow(issuer, browser.post(&form_url).form(&[("prompt", "login"), ("login", user), ("password", "x")])).await;
    for _ in 0..5 {
        if next.starts_with(REDIRECT_URI) {
            break;
        }
        next = follow(issuer, browser.get(&next)).await;
    }
    let code = url::Url::parse(&next)
        .expect("callback url")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| panic!("no code in {next}"));
    let r: Value = http
        .post(at("/token"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .expect("code exchange")
        .json()
        .await
        .expect("token json");
    let text = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("no {k} in {r}")).to_string();
    let tokens = Tokens {
        id_token: text("id_token"),
        access_token: text("access_token"),
        refresh_token: Some(text("refresh_token")),
    };
    (browser, tokens)
}

/// Sends `req` and returns its absolute `Location`.
async fn follow(issuer: &str, req: reqwest::RequestBuilder) -> String {
    let r = req.send().await.expect("idp request");
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no redirect from the IdP (HTTP {})", r.status()))
        .to_string();
    url::Url::parse(issuer).and_then(|b| b.join(&loc)).map(|u| u.to_string()).expect("location")
}
