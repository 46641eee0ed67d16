//! OpenTelemetry traces as an operator gets them: the real binary, configured by `OTEL_*` only, exports
//! over OTLP/gRPC to a receiver running here (the collector's `TraceService`, messages decoded by
//! opentelemetry-proto). A check carrying Envoy's `traceparent` joins that trace; nothing secret is in it.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::harness::app::{request, Checked};
use crate::harness::idp::{sign_in, IdpOptions, IdpServer, CLIENT_SECRET};
use crate::harness::redis::RedisServer;
use crate::harness::{eventually, free_port};
use crate::served::{Config, Served};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const ENVOY_SPAN: &str = "00f067aa0ba902b7";
const LOGIN_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const LOGIN_PARENT: &str = "b7ad6b7169203331";
const METADATA_TRACE_ID: &str = "11112222333344445555666677778888";
const EXT_AUTHZ_SPAN: &str = "a1b2c3d4e5f60718";
const REFRESH_TRACE_ID: &str = "5c1f0e2d3b4a59687766554433221100";

/// Every export request the receiver got.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves the OTLP trace service on `listener` for the rest of the test.
    fn serve(listener: tokio::net::TcpListener) -> Self {
        Self::serve_with(listener, None)
    }

    /// The same on TLS with `pki`'s server certificate, requiring a client certificate its CA signed: a
    /// collector behind a private CA.
    fn serve_tls(listener: tokio::net::TcpListener, pki: &crate::harness::tls::Pki) -> Self {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        // The test build has both of rustls's providers: tonic's server TLS asks for the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |f: &str| std::fs::read(pki.path(f)).unwrap();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(read("server.pem"), read("server.key")))
            .client_ca_root(Certificate::from_pem(read("ca.pem")));
        Self::serve_with(listener, Some(tls))
    }

    fn serve_with(listener: tokio::net::TcpListener, tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let r = Self::default();
        let svc = TraceServiceServer::new(r.clone());
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).unwrap();
        }
        tokio::spawn(async move {
            server.add_service(svc).serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)).await
        });
        r
    }

    fn spans(&self) -> Vec<Span> {
        let requests = self.0.lock().unwrap();
        let resource_spans = requests.iter().flat_map(|r| &r.resource_spans);
        resource_spans.flat_map(|rs| &rs.scope_spans).flat_map(|ss| ss.spans.clone()).collect()
    }

    fn service_names(&self) -> Vec<String> {
        let requests = self.0.lock().unwrap();
        let resources = requests.iter().flat_map(|r| &r.resource_spans).filter_map(|rs| rs.resource.as_ref());
        resources
            .flat_map(|r| &r.attributes)
            .filter(|kv| kv.key == "service.name")
            .filter_map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .collect()
    }

    /// Everything the exports said, every attribute and event included, as one text to search.
    fn dump(&self) -> String {
        format!("{:?}", self.0.lock().unwrap())
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
}

/// A `portcullis serve` with the `OTEL_*` of `env` only, and the key it seals with.
struct Serve {
    served: Served,
    base: String,
    grpc: u16,
    key: String,
}

impl Serve {
    async fn start(redis: &RedisServer, idp: &IdpServer, http: u16, env: &[(&str, String)]) -> Self {
        let s = Self::spawn(redis, idp, http, env);
        assert!(s.served.wait_ready().await, "portcullis did not become ready: {}", s.log());
        s
    }

    fn spawn(redis: &RedisServer, idp: &IdpServer, http: u16, env: &[(&str, String)]) -> Self {
        let grpc = free_port();
        let key = portcullis::crypto::generate_key();
        let config = Config {
            server: "drain_delay = \"0s\"\nshutdown_grace = \"2s\"".into(),
            ..Config::ping(&redis.url(), &idp.issuer(), &key)
        };
        let served = Served::spawn(grpc, http, &config.text(grpc, http), |cmd| {
            for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
                cmd.env_remove(k);
            }
            cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        });
        Self { base: served.base(), served, grpc, key }
    }

    fn log(&self) -> String {
        self.served.log()
    }

    /// SIGTERM, then the exit status: the last spans are flushed on the way out. Waits without blocking
    /// the runtime, which also serves the receiver.
    async fn stop(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill").args(["-TERM", &self.served.child.id().to_string()]).status();
        let exited =
            eventually(Duration::from_secs(20), async || self.served.child.try_wait().unwrap().is_some()).await;
        assert!(exited, "portcullis did not stop: {}", self.log());
        let status = self.served.child.wait().unwrap();
        (status, self.log())
    }
}

/// What Redis holds for this run: the session's tokens (sealed and opened; the ID token last but one) and
/// the shared M2M token (sealed and opened).
pub fn stored_secrets(redis: &RedisServer, key: &str, session_id: &str, idp: &IdpServer) -> Vec<String> {
    let ring = portcullis::crypto::KeyRing::parse(&[key.to_string()]).unwrap();
    let m2m_key = portcullis::keys::m2m_token(
        "corp",
        &portcullis::m2m::shared::slot(&idp.issuer(), crate::harness::idp::CLIENT_ID, None),
    );
    let m2m: String = redis::cmd("GET").arg(&m2m_key).query(&mut redis.conn()).unwrap();
    let m2m: serde_json::Value = serde_json::from_str(&m2m).unwrap();
    let sealed = m2m["accessToken"].as_str().unwrap().to_string();
    let mut out = vec![ring.decrypt(&m2m_key, "accessToken", &sealed).unwrap(), sealed];
    let stored: HashMap<String, String> =
        redis::cmd("HGETALL").arg(format!("session:{session_id}")).query(&mut redis.conn()).unwrap();
    for field in ["accessToken", "refreshToken", "idToken"] {
        let sealed = stored.get(field).unwrap_or_else(|| panic!("{field} stored"));
        out.push(ring.decrypt(session_id, field, sealed).unwrap());
        out.push(sealed.clone());
    }
    out
}

async fn idp_for(http: u16) -> IdpServer {
    IdpServer::start_with(IdpOptions::redirecting_to(&format!("http://127.0.0.1:{http}"))).await
}

/// Signs in as `user`; the callback carries `traceparent`, if any. Returns the cookie value.
async fn login(s: &Serve, idp: &IdpServer, user: &str, traceparent: Option<&str>) -> String {
    let browser =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).cookie_store(true).build().unwrap();
    let callback = sign_in(&browser, &s.base, &idp.issuer(), user, "/", |_| {}).await;
    let mut req = browser.get(&callback);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 302, "callback");
    let set = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    set.strip_prefix("GATEWAY_SESSION=").and_then(|v| v.split(';').next()).unwrap().to_string()
}

async fn check(s: &Serve, headers: &[(&str, &str)]) -> u16 {
    check_with_metadata(s, headers, None).await
}

/// A Check whose gRPC call carries `traceparent` in its metadata, as Envoy's traced ext_authz client sends it.
async fn check_with_metadata(s: &Serve, headers: &[(&str, &str)], traceparent: Option<&str>) -> u16 {
    let mut c = AuthorizationClient::connect(format!("http://127.0.0.1:{}", s.grpc)).await.unwrap();
    let mut req = tonic::Request::new(request("GET", "/x", headers));
    if let Some(tp) = traceparent {
        req.metadata_mut().insert("traceparent", tp.parse().unwrap());
    }
    Checked(c.check(req).await.unwrap().into_inner()).status()
}

/// Whether `span` descends from the span `ancestor` (hex id) through spans of `all`.
fn descends(all: &[Span], span: &Span, ancestor: &str) -> bool {
    let by_id: HashMap<String, &Span> = all.iter().map(|s| (hex::encode(&s.span_id), s)).collect();
    let mut parent = hex::encode(&span.parent_span_id);
    for _ in 0..16 {
        if parent == ancestor {
            return true;
        }
        match by_id.get(&parent) {
            Some(p) => parent = hex::encode(&p.parent_span_id),
            None => return false,
        }
    }
    false
}

#[tokio::test]
async fn a_check_with_a_traceparent_joins_envoys_trace_and_carries_no_secret() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let receiver = Receiver::serve(listener);
    let redis = RedisServer::start();
    let http = free_port();
    let idp = idp_for(http).await;
    // A long batch delay: what arrives, arrives through the flush on shutdown.
    // RUST_LOG=debug: the allow lines are logged inside the check span, which must not show in them.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_string()),
        ("RUST_LOG", "debug".to_string()),
    ];
    let s = Serve::start(&redis, &idp, http, &env).await;

    // Alice's check introspects her access token.
    let cookie_value = login(&s, &idp, "alice", Some(&format!("00-{LOGIN_TRACE_ID}-{LOGIN_PARENT}-01"))).await;
    let session_id = portcullis::session::cookie::session_id(&cookie_value);
    let mut secrets = vec![cookie_value.clone(), session_id.clone(), CLIENT_SECRET.to_string()];
    secrets.extend(stored_secrets(&redis, &s.key, &session_id, &idp));
    let cookie = format!("GATEWAY_SESSION={cookie_value}");
    let traceparent = format!("00-{TRACE_ID}-{ENVOY_SPAN}-01");
    // Through the shipped Envoy, as a browser request: its traceparent reaches the Check among the headers.
    let upstream = crate::harness::upstream::Upstream::start().await;
    let envoy =
        crate::harness::envoy::Envoy::start(&crate::harness::envoy::vars(s.grpc, http, upstream.addr.port())).await;
    let r = reqwest::Client::new()
        .get(envoy.url("/x"))
        .header("accept", "application/json")
        .header("cookie", &cookie)
        .header("traceparent", &traceparent)
        .header("tracestate", "envoy=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the logged-in request through Envoy is allowed");
    assert_eq!(upstream.hits(), 1);

    // With Envoy's tracing on, its ext_authz span comes in the gRPC metadata: that is the closer parent.
    let metadata_tp = format!("00-{METADATA_TRACE_ID}-{EXT_AUTHZ_SPAN}-01");
    let cookie = format!("GATEWAY_SESSION={cookie_value}");
    assert_eq!(
        check_with_metadata(&s, &[("cookie", &cookie), ("traceparent", &traceparent)], Some(&metadata_tp)).await,
        200
    );

    // Bob's ID token expires at once, so his check refreshes it.
    idp.set_ttl(serde_json::json!({"IdToken": 1})).await;
    let bob_value = login(&s, &idp, "bob", None).await;
    idp.set_ttl(serde_json::json!({"IdToken": 3600})).await;
    let bob_id = portcullis::session::cookie::session_id(&bob_value);
    secrets.extend([bob_value.clone(), bob_id.clone()]);
    secrets.extend(stored_secrets(&redis, &s.key, &bob_id, &idp));
    let id_token = secrets[secrets.len() - 2].clone();
    let exp = portcullis::idp::claims::unverified_payload(&id_token).and_then(|c| c["exp"].as_i64()).unwrap();
    assert!(eventually(Duration::from_secs(10), async || portcullis::now() > exp).await);
    let cookie = format!("GATEWAY_SESSION={bob_value}");
    let traceparent = format!("00-{REFRESH_TRACE_ID}-{ENVOY_SPAN}-01");
    assert_eq!(check(&s, &[("cookie", &cookie), ("traceparent", &traceparent)]).await, 200);
    secrets.extend(stored_secrets(&redis, &s.key, &bob_id, &idp));
    assert_ne!(secrets[secrets.len() - 2], id_token, "the check refreshed the tokens");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.spans().is_empty(), "batched until shutdown (OTEL_BSP_SCHEDULE_DELAY is honoured)");
    let (exit, log) = s.stop().await;
    assert!(exit.success(), "clean exit: {log}");
    for name in ["portcullis.check", "portcullis.redis", "portcullis.idp", "portcullis.login"] {
        assert!(!log.contains(name), "log lines read as without tracing, no {name} in them: {log}");
    }
    assert!(log.contains("m2m_acquire"), "the span logs always had is still there");
    assert!(log.contains("\"decision\":\"allow\""), "the audit line of the allow was logged: {log}");
    let spans = receiver.spans();
    let names = |t: &str| -> Vec<String> {
        spans.iter().filter(|sp| hex::encode(&sp.trace_id) == t).map(|sp| sp.name.clone()).collect()
    };
    let in_trace: Vec<&Span> = spans.iter().filter(|sp| hex::encode(&sp.trace_id) == TRACE_ID).collect();
    assert!(
        !in_trace.is_empty(),
        "no span joined Envoy's trace; got {:?}; all: {:?}; log: {log}",
        names(TRACE_ID),
        spans.iter().map(|s| (s.name.clone(), hex::encode(&s.trace_id))).collect::<Vec<_>>()
    );
    assert_eq!(receiver.service_names().first().map(String::as_str), Some("portcullis"));

    // The check span is the child of Envoy's span and says what was decided.
    let checks: Vec<&&Span> = in_trace.iter().filter(|sp| sp.name == "portcullis.check").collect();
    assert_eq!(checks.len(), 1, "one check span in {:?}", names(TRACE_ID));
    let check_span = checks[0];
    eprintln!("spans in the check trace: {:?}", names(TRACE_ID));
    assert_eq!(hex::encode(&check_span.parent_span_id), ENVOY_SPAN, "the check's parent is Envoy's span");
    assert_eq!(attr(check_span, "decision").as_deref(), Some("allow"));
    assert_eq!(attr(check_span, "provider").as_deref(), Some("corp"));
    let check_id = hex::encode(&check_span.span_id);

    // Redis, revalidation and the introspection call are its children, in the same trace.
    let find = |name: &str, pred: &dyn Fn(&Span) -> bool| -> &Span {
        in_trace
            .iter()
            .copied()
            .find(|sp| sp.name == name && pred(sp))
            .unwrap_or_else(|| panic!("no {name} span in Envoy's trace: {:?}", names(TRACE_ID)))
    };
    let redis_span = find("portcullis.redis", &|_| true);
    assert_eq!(hex::encode(&redis_span.parent_span_id), check_id, "the session read is the check's child");
    let reval = find("portcullis.revalidate", &|_| true);
    assert_eq!(hex::encode(&reval.parent_span_id), check_id);
    assert_eq!(attr(reval, "outcome").as_deref(), Some("ok"));
    let introspection = find("portcullis.idp", &|sp| attr(sp, "kind").as_deref() == Some("introspection"));
    assert!(descends(&spans, introspection, &check_id), "the introspection call is under the check");
    assert_eq!(attr(introspection, "outcome").as_deref(), Some("ok"));
    assert_eq!(attr(introspection, "provider").as_deref(), Some("corp"));

    let by_metadata: Vec<&Span> = spans
        .iter()
        .filter(|sp| hex::encode(&sp.trace_id) == METADATA_TRACE_ID && sp.name == "portcullis.check")
        .collect();
    assert_eq!(by_metadata.len(), 1, "the metadata's traceparent wins: {:?}", names(METADATA_TRACE_ID));
    assert_eq!(hex::encode(&by_metadata[0].parent_span_id), EXT_AUTHZ_SPAN);

    // Redis calls are traced inside an operation only: the readiness PINGs make no traces of their own.
    let roots: Vec<&Span> =
        spans.iter().filter(|sp| sp.name == "portcullis.redis" && sp.parent_span_id.is_empty()).collect();
    assert!(roots.is_empty(), "{} Redis spans without a parent", roots.len());

    // Bob's check: the refresh ran under the lock, as the leader, inside the check; its IdP call beneath it.
    let bob: Vec<&Span> = spans.iter().filter(|sp| hex::encode(&sp.trace_id) == REFRESH_TRACE_ID).collect();
    let in_bob = |name: &str, pred: &dyn Fn(&Span) -> bool| -> &Span {
        bob.iter()
            .copied()
            .find(|sp| sp.name == name && pred(sp))
            .unwrap_or_else(|| panic!("no {name} span in bob's trace: {:?}", names(REFRESH_TRACE_ID)))
    };
    let bob_check = in_bob("portcullis.check", &|_| true);
    assert_eq!(hex::encode(&bob_check.parent_span_id), ENVOY_SPAN);
    let refresh = in_bob("portcullis.refresh", &|_| true);
    assert!(descends(&spans, refresh, &hex::encode(&bob_check.span_id)), "the refresh is under the check");
    assert_eq!(attr(refresh, "role").as_deref(), Some("leader"));
    assert_eq!(attr(refresh, "ok").as_deref(), Some("true"));
    let refresh_id = hex::encode(&refresh.span_id);
    let refresh_call = in_bob("portcullis.idp", &|sp| attr(sp, "kind").as_deref() == Some("refresh"));
    assert!(descends(&spans, refresh_call, &refresh_id), "the refresh call is under the refresh span");
    let lock = in_bob("portcullis.redis", &|sp| hex::encode(&sp.parent_span_id) == refresh_id);
    assert!(lock.end_time_unix_nano <= refresh_call.start_time_unix_nano, "the lock is taken before the call");

    // The login callback joined the browser request's trace, with its code exchange beneath it.
    let callback = spans
        .iter()
        .find(|sp| {
            hex::encode(&sp.trace_id) == LOGIN_TRACE_ID && attr(sp, "route").as_deref() == Some("/oauth2/callback")
        })
        .unwrap_or_else(|| panic!("no callback span: {:?}", names(LOGIN_TRACE_ID)));
    assert_eq!(hex::encode(&callback.parent_span_id), LOGIN_PARENT);
    assert_eq!(attr(callback, "status").as_deref(), Some("302"));
    let exchange = spans
        .iter()
        .find(|sp| attr(sp, "kind").as_deref() == Some("code_exchange"))
        .unwrap_or_else(|| panic!("no code exchange span: {:?}", names(LOGIN_TRACE_ID)));
    assert!(descends(&spans, exchange, &hex::encode(&callback.span_id)));

    // No token, cookie, session id or client secret anywhere: names, attributes, events, resource.
    let dump = receiver.dump();
    for secret in &secrets {
        assert!(secret.len() >= 16, "a secret too short to search for: {secret}");
        let needle = &secret[..secret.len().min(16)];
        assert!(!dump.contains(needle), "a secret prefix {needle:?}... is in the exported spans");
    }
    assert!(!dump.contains("GATEWAY_SESSION"), "a cookie is in the exported spans");
}

#[tokio::test]
async fn without_otel_variables_nothing_is_exported_and_a_dead_collector_breaks_no_check() {
    // The default OTLP endpoint: an exporter switched on by mistake would send here.
    let default = tokio::net::TcpListener::bind("127.0.0.1:4317").await;
    let default_bound = default.is_ok();
    let default = default.ok().map(Receiver::serve);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let explicit = Receiver::serve(listener);
    let redis = RedisServer::start();
    let http = free_port();
    let idp = idp_for(http).await;

    // No OTEL_* at all; then an endpoint with the exporter turned off.
    let env_off = [("OTEL_TRACES_EXPORTER", "none".to_string()), ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone())];
    // And a collector that is down, over TLS: checks must not notice it.
    let dead = [("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://127.0.0.1:{}", free_port()))];
    for env in [&[][..], &env_off[..], &dead[..]] {
        let s = Serve::start(&redis, &idp, http, env).await;
        let cookie = format!(
            "GATEWAY_SESSION={}",
            login(&s, &idp, "alice", Some(&format!("00-{TRACE_ID}-{ENVOY_SPAN}-01"))).await
        );
        let tp = format!("00-{TRACE_ID}-{ENVOY_SPAN}-01");
        assert_eq!(check(&s, &[("cookie", &cookie), ("traceparent", &tp)]).await, 200);
        assert_eq!(check(&s, &[("traceparent", &tp)]).await, 401);
        let (exit, log) = s.stop().await;
        assert!(exit.success(), "clean exit: {log}");
        assert!(!log.contains("portcullis.check"), "log lines carry no span of ours: {log}");
    }
    assert!(explicit.spans().is_empty(), "OTEL_TRACES_EXPORTER=none exported");
    if let Some(d) = default {
        assert!(d.spans().is_empty(), "exported to the default endpoint without being asked");
    }
    eprintln!("default endpoint 127.0.0.1:4317 watched: {default_bound}");

    // A protocol portcullis cannot speak is refused by name, not silently ignored.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_string())];
    let mut s = Serve::spawn(&redis, &idp, http, &env);
    let exited = eventually(Duration::from_secs(20), async || s.served.child.try_wait().unwrap().is_some()).await;
    assert!(exited, "serve started with a protocol it cannot speak: {}", s.log());
    let status = s.served.child.wait().unwrap();
    assert!(!status.success());
    assert!(s.log().contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "the refusal names the variable: {}", s.log());
}

#[tokio::test]
async fn a_collector_behind_a_private_ca_gets_the_spans_over_mutual_tls() {
    let pki = crate::harness::tls::Pki::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let receiver = Receiver::serve_tls(listener, &pki);
    let redis = RedisServer::start();
    let http = free_port();
    let idp = idp_for(http).await;
    let path = |f: &str| pki.path(f).display().to_string();
    let tp = format!("00-{TRACE_ID}-{ENVOY_SPAN}-01");
    let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()), ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_string())];

    // The public roots do not trust the collector: nothing arrives, and checks carry on.
    let s = Serve::start(&redis, &idp, http, &base).await;
    assert_eq!(check(&s, &[("traceparent", &tp)]).await, 401);
    let (exit, log) = s.stop().await;
    assert!(exit.success(), "clean exit: {log}");
    assert!(receiver.spans().is_empty(), "exported to a collector it should not trust");

    // The OTLP exporter's standard variables: the CA, and the client pair the collector requires.
    let mut env = base.to_vec();
    env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE", path("ca.pem")));
    env.push(("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", path("client.pem")));
    env.push(("OTEL_EXPORTER_OTLP_CLIENT_KEY", path("client.key")));
    let s = Serve::start(&redis, &idp, http, &env).await;
    assert_eq!(check(&s, &[("traceparent", &tp)]).await, 401);
    let (exit, log) = s.stop().await;
    assert!(exit.success(), "clean exit: {log}");
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|sp| hex::encode(&sp.trace_id) == TRACE_ID && sp.name == "portcullis.check"),
        "the check's span reached the collector over TLS: {}",
        receiver.dump()
    );

    // Half a client pair, or a TLS file for a plain endpoint, refuses the start by name.
    let half = [base[0].clone(), ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", path("client.key"))];
    let plain = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.replace("https", "http")),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", path("ca.pem")),
    ];
    for (env, named) in
        [(&half[..], "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY"), (&plain[..], "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    {
        let mut s = Serve::spawn(&redis, &idp, http, env);
        let exited = eventually(Duration::from_secs(20), async || s.served.child.try_wait().unwrap().is_some()).await;
        assert!(exited, "serve started with {named} wrong: {}", s.log());
        assert!(!s.served.child.wait().unwrap().success());
        assert!(s.log().contains(named), "the refusal names {named}: {}", s.log());
    }
}
