//! `portcullis serve --config FILE` as an operator starts it: the config file written from [`Config`], the
//! process on free ports (or ports the test chose), its stderr (the log) in a file; killed when dropped.
//! Here and not in `harness`: only this crate knows `CARGO_BIN_EXE_portcullis`.

use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::harness::{eventually, free_port};

/// The binary, without a `PORTCULLIS_CONFIG` from the environment.
pub fn portcullis() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    c.env_remove("PORTCULLIS_CONFIG");
    c
}

/// The smallest config the offline subcommands (`sessions`, `delegations`) read: listeners on port 0, no
/// provider; `session` is the `[session]` body.
pub fn minimal(redis_url: &str, session: &str) -> String {
    format!(
        "[server]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\npublic_url = \"http://x\"\n\
         [redis]\nurl = \"{redis_url}\"\n[session]\n{session}\n"
    )
}

/// `text` in a temp file, removed when dropped.
pub fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

/// A config file's sections. `[server]` always has the two listeners on the ports it is started with;
/// each field is TOML lines for its section, so a test adds keys where they belong.
#[derive(Clone, Default)]
pub struct Config {
    /// `public_url`; left out, the HTTP listener's own URL.
    pub public_url: Option<String>,
    /// `[server]` keys after the listeners and `public_url`.
    pub server: String,
    /// The `[redis]` body.
    pub redis: String,
    /// The `[session]` body after `cookie_secure = false` (the keys go here).
    pub session: String,
    /// Whole tables (`[revalidation]`, ...) between `[session]` and `[providers.corp]`.
    pub tables: String,
    /// The `[providers.corp]` body.
    pub provider: String,
}

impl Config {
    /// Against the Redis at `redis_url` (timeout 5 s), sealing with `key`, signing in at the test IdP
    /// (`kind = "ping"`) at `issuer`.
    pub fn ping(redis_url: &str, issuer: &str, key: &str) -> Self {
        use crate::harness::idp::CLIENT_SECRET;
        Self {
            redis: format!("url = {redis_url:?}\ntimeout = \"5s\""),
            session: format!("encryption_keys = [{key:?}]"),
            provider: format!(
                "kind = \"ping\"\nissuer = {issuer:?}\nclient_id = \"portcullis\"\nclient_secret = {CLIENT_SECRET:?}"
            ),
            ..Self::default()
        }
    }

    /// `[redis]` is `redis`, a fresh key, and an OIDC provider that is never reached.
    pub fn offline(redis: &str) -> Self {
        Self {
            redis: redis.to_string(),
            session: format!("encryption_keys = [{:?}]", portcullis::crypto::generate_key()),
            provider: "kind = \"oidc\"\nissuer = \"http://127.0.0.1:1\"\nclient_id = \"portcullis\"\n\
                       client_secret = \"not-a-real-secret\""
                .into(),
            ..Self::default()
        }
    }

    /// The test IdP's OIDC client (`CLIENT_ID`, `CLIENT_SECRET`, basic auth at introspection) at `issuer`,
    /// the Redis at `redis_url`; `session` is the `[session]` body (the keys).
    pub fn oidc(redis_url: &str, issuer: &str, session: String) -> Self {
        use crate::harness::idp::{CLIENT_ID, CLIENT_SECRET};
        Self {
            redis: format!("url = {redis_url:?}"),
            session,
            provider: format!(
                "kind = \"oidc\"\nissuer = {issuer:?}\nclient_id = {CLIENT_ID:?}\nclient_secret = {CLIENT_SECRET:?}\n\
                 introspection_auth = \"client_secret_basic\""
            ),
            ..Self::default()
        }
    }

    /// The file's text for these ports.
    pub fn text(&self, grpc: u16, http: u16) -> String {
        let public_url = self.public_url.clone().unwrap_or_else(|| format!("http://127.0.0.1:{http}"));
        format!(
            r#"
[server]
grpc_addr = "127.0.0.1:{grpc}"
http_addr = "127.0.0.1:{http}"
public_url = "{public_url}"
{server}
[redis]
{redis}
[session]
cookie_secure = false
{session}
{tables}
[providers.corp]
{provider}
"#,
            server = self.server,
            redis = self.redis,
            session = self.session,
            tables = self.tables,
            provider = self.provider,
        )
    }
}

/// Signs `user` in at `idp` through the login routes at `base` and returns the session cookie as a `cookie`
/// header value.
pub async fn sign_in_at(base: &str, idp: &crate::harness::idp::IdpServer, user: &str) -> String {
    let browser =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).cookie_store(true).build().unwrap();
    let callback = crate::harness::idp::sign_in(&browser, base, &idp.issuer(), user, "/", |_| {}).await;
    let resp = browser.get(&callback).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let set = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    set.split(';').next().unwrap().to_string()
}

/// A running `portcullis serve`.
pub struct Served {
    pub child: std::process::Child,
    pub grpc: u16,
    pub http: u16,
    _config: tempfile::NamedTempFile,
    /// Its stderr (the log).
    log: tempfile::NamedTempFile,
}

impl Served {
    /// `redis` is the body of the `[redis]` section; `server` adds keys to `[server]`.
    pub fn start(redis: &str, server: &str) -> Self {
        Self::config(&Config { server: server.into(), ..Config::offline(redis) })
    }

    /// `config` on two free ports.
    pub fn config(config: &Config) -> Self {
        Self::with_config(|grpc, http| config.text(grpc, http))
    }

    /// The config file `text(grpc_port, http_port)` makes for two free ports.
    pub fn with_config(text: impl FnOnce(u16, u16) -> String) -> Self {
        let (grpc, http) = (free_port(), free_port());
        Self::spawn(grpc, http, &text(grpc, http), |_| {})
    }

    /// `text` on these ports; `env` sets the process's environment (`RUST_LOG` is unset unless it sets it).
    pub fn spawn(grpc: u16, http: u16, text: &str, env: impl FnOnce(&mut Command)) -> Self {
        let config = file(text);
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = portcullis();
        cmd.args(["serve", "--config"]).arg(config.path()).env_remove("RUST_LOG");
        env(&mut cmd);
        let child = cmd.stdout(Stdio::null()).stderr(log.reopen().unwrap()).spawn().unwrap();
        Self { child, grpc, http, _config: config, log }
    }

    /// Its public URL as the config's default sets it.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    pub async fn readyz(&self) -> Option<u16> {
        let url = format!("http://127.0.0.1:{}/readyz", self.http);
        reqwest::get(url).await.map(|r| r.status().as_u16()).ok()
    }

    /// Readiness means Redis answered in the configured mode.
    pub async fn wait_ready(&self) -> bool {
        eventually(Duration::from_secs(20), async || self.readyz().await == Some(200)).await
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGTERM, and waits for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().unwrap()
    }

    /// The config file it was started with (rewrite it, then SIGHUP, to reload).
    pub fn config_path(&self) -> &std::path::Path {
        self._config.path()
    }

    /// Signs `user` in at `idp` through this replica's login routes (its `public_url` is its own HTTP
    /// listener) and returns the session cookie as a `cookie` header value.
    pub async fn sign_in(&self, idp: &crate::harness::idp::IdpServer, user: &str) -> String {
        sign_in_at(&self.base(), idp, user).await
    }

    /// A Check through the gRPC listener.
    pub async fn check(&self, headers: &[(&str, &str)]) -> u16 {
        use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
        let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{}", self.grpc)).await.unwrap();
        let resp = client.check(crate::harness::app::request("GET", "/", headers)).await.unwrap().into_inner();
        crate::harness::app::Checked(resp).status()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
