//! portcullis in-process on free ports, a gRPC client for Check, and helpers to build CheckRequests and read
//! CheckResponses the way Envoy would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use portcullis::config::Config;
use portcullis::idp::{claims::ClaimNames, IdpError, Validated, Validator, Validators};
use portcullis::server::Server;
use portcullis::session::{NewSession, Session, Tokens};
use tonic::transport::Channel;

/// A config on free ports against `redis_url`; `extra` is TOML appended to the `[session]` table and after.
pub fn config(redis_url: &str, extra: &str) -> Config {
    config_with_keys(redis_url, &[portcullis::crypto::generate_key()], extra)
}

/// As [`config`], with the given encryption key ring (first key encrypts).
pub fn config_with_keys(redis_url: &str, keys: &[String], extra: &str) -> Config {
    let keys = keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ");
    // `PORTCULLIS_TEST_CLIENT_CACHE=1` runs every in-process app with `redis.client_cache` (RESP3 session reads).
    let client_cache = std::env::var("PORTCULLIS_TEST_CLIENT_CACHE").is_ok_and(|v| v == "1");
    let text = format!(
        r#"
[server]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"

[redis]
url = "{redis_url}"
timeout = "300ms"
connect_timeout = "300ms"
client_cache = {client_cache}

[session]
cookie_secure = false
encryption_keys = [{keys}]
{extra}
"#
    );
    Config::from_toml(&text).expect("test config")
}

/// A validator whose answer the test sets, counting its calls. Identity comes from the (unverified) ID token.
pub struct StaticValidator {
    pub calls: AtomicUsize,
    pub answer: Mutex<Option<IdpError>>,
    pub delay_ms: AtomicUsize,
}

impl StaticValidator {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { calls: AtomicUsize::new(0), answer: Mutex::new(None), delay_ms: AtomicUsize::new(0) })
    }
    pub fn fail_with(&self, e: Option<IdpError>) {
        *self.answer.lock().unwrap() = e;
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Validator for StaticValidator {
    async fn validate(&self, s: &Session, id_token: &str, _now: i64) -> Result<Validated, IdpError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst) as u64;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if let Some(e) = self.answer.lock().unwrap().clone() {
            return Err(e);
        }
        let claims = portcullis::idp::claims::unverified_payload(id_token).unwrap_or_default();
        Ok(Validated { identity: ClaimNames::default().identity(&s.user_id, &claims), refreshed: None })
    }
}

/// An unsigned JWT-shaped token carrying `claims` (the static validator reads it).
pub fn fake_jwt(claims: serde_json::Value) -> String {
    format!("eyJhbGciOiJub25lIn0.{}.sig", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

pub struct TestApp {
    pub server: Server,
    pub cfg: Config,
    pub client: AuthorizationClient<Channel>,
}

impl TestApp {
    pub async fn start(cfg: Config, validators: Validators) -> Self {
        let server = Server::start(&cfg, validators).await.expect("start portcullis");
        Self::around(server, cfg).await
    }

    /// As `portcullis serve` starts: providers (validators and login routes) built from `cfg`.
    pub async fn configured(cfg: Config, m2m: Arc<dyn portcullis::m2m::M2mSource>) -> Self {
        let server = Server::start_configured(&cfg, portcullis::providers::M2mChoice::Given(m2m))
            .await
            .expect("start portcullis");
        Self::around(server, cfg).await
    }

    /// Exactly as `portcullis serve` starts, Redis-shared M2M manager included.
    pub async fn serve_like(cfg: Config) -> Self {
        let server =
            Server::start_configured(&cfg, portcullis::providers::M2mChoice::Shared).await.expect("start portcullis");
        Self::around(server, cfg).await
    }

    async fn around(server: Server, cfg: Config) -> Self {
        let client = AuthorizationClient::connect(format!("http://{}", server.grpc_addr)).await.expect("grpc connect");
        Self { server, cfg, client }
    }

    /// Starts with one provider `corp` answered by `v`.
    pub async fn with_validator(cfg: Config, v: Arc<StaticValidator>) -> Self {
        let mut vs = Validators::new();
        vs.insert("corp".to_string(), v as Arc<dyn Validator>);
        Self::start(cfg, vs).await
    }

    pub async fn check(&self, req: CheckRequest) -> Checked {
        let resp = self.client.clone().check(req).await.expect("grpc Check").into_inner();
        Checked(resp)
    }

    /// Plants a session for `user` (provider `corp`), as a login would; returns the cookie value.
    pub async fn login(&self, user: &str, claims: serde_json::Value) -> (String, Session) {
        let store = &self.server.authorizer.store();
        let tokens = Tokens { id_token: fake_jwt(claims), access_token: "at-".to_string() + user, refresh_token: None };
        let new = NewSession {
            user_id: user.to_string(),
            provider: "corp".into(),
            sid: None,
            tokens,
            client_fingerprint: None,
        };
        store.create(new, portcullis::now()).await.expect("create session")
    }

    pub fn cookie_name(&self) -> &str {
        &self.cfg.session.cookie_name
    }

    pub async fn shutdown(self) {
        self.server.shutdown(Duration::from_secs(5)).await;
    }
}

/// A CheckRequest as Envoy sends it.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let headers: HashMap<String, String> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "app.example.com".into(),
                    scheme: "https".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A CheckResponse read as Envoy would apply it.
#[derive(Debug)]
pub struct Checked(pub CheckResponse);

impl Checked {
    /// 200 for OK, else the denied HTTP status (403 when Envoy would default it).
    pub fn status(&self) -> u16 {
        match &self.0.http_response {
            Some(HttpResponse::OkResponse(_)) => 200,
            Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map(|s| s.code as u16).unwrap_or(403),
            _ => {
                if self.grpc_code() == 0 {
                    200
                } else {
                    403
                }
            }
        }
    }
    pub fn grpc_code(&self) -> i32 {
        self.0.status.as_ref().map(|s| s.code).unwrap_or(0)
    }
    /// A header the response sets (upstream headers for OK, client headers for a deny).
    pub fn header(&self, name: &str) -> Option<String> {
        let hs = match &self.0.http_response {
            Some(HttpResponse::OkResponse(ok)) => &ok.headers,
            Some(HttpResponse::DeniedResponse(d)) => &d.headers,
            _ => return None,
        };
        hs.iter().filter_map(|h| h.header.as_ref()).find(|h| h.key == name).map(|h| h.value.clone())
    }
    pub fn removed(&self) -> Vec<String> {
        match &self.0.http_response {
            Some(HttpResponse::OkResponse(ok)) => ok.headers_to_remove.clone(),
            _ => Vec::new(),
        }
    }
    pub fn body(&self) -> String {
        match &self.0.http_response {
            Some(HttpResponse::DeniedResponse(d)) => d.body.clone(),
            _ => String::new(),
        }
    }

    /// What the upstream would receive given the client's headers: Envoy applies sets, then removals.
    pub fn upstream_headers(&self, client: &[(&str, &str)]) -> HashMap<String, String> {
        let mut h: HashMap<String, String> = client.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Some(HttpResponse::OkResponse(ok)) = &self.0.http_response {
            for o in &ok.headers {
                if let Some(hv) = &o.header {
                    h.insert(hv.key.clone(), hv.value.clone());
                }
            }
            for r in &ok.headers_to_remove {
                h.remove(r);
            }
        }
        h
    }
}
