//! OpenTelemetry traces over OTLP/gRPC. Configured only by the standard `OTEL_*` variables (the exporter
//! and the SDK read endpoint, headers, timeout, sampler and batching themselves) and off unless an endpoint
//! or `OTEL_TRACES_EXPORTER=otlp` is set. Only portcullis's own INFO spans are exported, never log events: a
//! log line may name a session by its prefix, a span never names one at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ON: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Why the `OTEL_*` variables cannot be followed (`serve` refuses to start rather than silently not trace).
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("{0}={1:?}: portcullis exports traces over OTLP/gRPC only (\"grpc\")")]
    Protocol(&'static str, String),
    #[error("OTEL_TRACES_EXPORTER={0:?}: portcullis knows \"otlp\" and \"none\"")]
    Exporter(String),
    #[error("OTLP exporter: {0}")]
    Build(String),
    #[error("{0}: {1}")]
    Tls(String, String),
}

/// Whether spans are being exported. Callers skip work (parent extraction) that only a trace needs.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Reads the environment through `var` (a test passes a map): `true` when traces are wanted.
pub fn wanted(var: impl Fn(&str) -> Option<String>) -> Result<bool, OtelError> {
    let set = |k: &str| var(k).map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty());
    if set("OTEL_SDK_DISABLED").as_deref() == Some("true") {
        return Ok(false);
    }
    let on = match set("OTEL_TRACES_EXPORTER").as_deref() {
        Some("none") => return Ok(false),
        Some("otlp") => true,
        Some(other) => return Err(OtelError::Exporter(other.to_string())),
        None => set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT")).is_some(),
    };
    if on {
        for key in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(p) = set(key) {
                if p != "grpc" {
                    return Err(OtelError::Protocol(key, p));
                }
                break;
            }
        }
    }
    Ok(on)
}

/// The tracer when the environment asks for traces. Must run inside the tokio runtime: the gRPC
/// exporter's channel lives on it.
pub fn tracer() -> Result<Option<SdkTracer>, OtelError> {
    if !wanted(|k| std::env::var(k).ok())? {
        return Ok(None);
    }
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    let endpoint = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
    let https = endpoint.is_some_and(|e| e.trim().to_ascii_lowercase().starts_with("https://"));
    if let Some(tls) = tls_config(https, |k| std::env::var(k).ok())? {
        use opentelemetry_otlp::WithTonicConfig;
        builder = builder.with_tls_config(tls);
    }
    let exporter = builder.build().map_err(|e| OtelError::Build(e.to_string()))?;
    let mut resource =
        Resource::builder().with_attribute(opentelemetry::KeyValue::new("service.version", crate::telemetry::VERSION));
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name("portcullis");
    }
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
    let tracer = provider.tracer("portcullis");
    if PROVIDER.set(provider).is_err() {
        return Err(OtelError::Build("tracing was already set up".into()));
    }
    ON.store(true, Ordering::Relaxed);
    Ok(Some(tracer))
}

/// The exporter's TLS for an `https://` endpoint: the CAs of `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE` (a
/// collector behind a private CA) or else the webpki roots (the exporter's own default trusts none), and the
/// client pair of `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY`: the OTLP exporter's standard variables. A
/// file that cannot be read, half a pair, or a file named for a plain `http://` endpoint refuses the start.
fn tls_config(
    https: bool,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<opentelemetry_otlp::tonic_types::transport::ClientTlsConfig>, OtelError> {
    use crate::config::tls::{load, Holds};
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
    let find = |name: &str| {
        ["OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_"]
            .iter()
            .map(|prefix| format!("{prefix}{name}"))
            .find_map(|key| var(&key).filter(|v| !v.trim().is_empty()).map(|path| (key, path)))
    };
    let (ca, cert, key) = (find("CERTIFICATE"), find("CLIENT_CERTIFICATE"), find("CLIENT_KEY"));
    if !https {
        return match ca.iter().chain(&cert).chain(&key).next() {
            Some((k, _)) => Err(OtelError::Tls(k.clone(), "names a TLS file, but the endpoint is not https://".into())),
            None => Ok(None),
        };
    }
    let read = |(key, path): (String, String), holds| {
        load(std::path::Path::new(&path), holds).map(|pem| pem.bytes().to_vec()).map_err(|e| OtelError::Tls(key, e))
    };
    let mut tls = match ca {
        Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, Holds::Certificates)?)),
        None => ClientTlsConfig::new().with_enabled_roots(),
    };
    match (cert, key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(read(cert, Holds::Certificates)?, read(key, Holds::PrivateKey)?))
        }
        (None, None) => {}
        (Some((k, _)), None) | (None, Some((k, _))) => {
            return Err(OtelError::Tls(k, "the client certificate and key come as a pair: set both".into()))
        }
    }
    Ok(Some(tls))
}

/// Exports what is still queued and stops the exporter; nothing when tracing is off. Blocking: runs on a
/// blocking thread so the exporter's channel keeps being polled.
pub async fn shutdown() {
    let Some(provider) = PROVIDER.get() else { return };
    let provider = provider.clone();
    let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(Duration::from_secs(5))).await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not flush the last spans"),
        Err(e) => tracing::warn!(error = %e, "span flush task failed"),
    }
}

/// Makes `span` a child of the W3C `traceparent`/`tracestate` in `headers` (lower-cased names), when
/// tracing is on and they are there and well formed; otherwise the span starts its own trace.
pub fn adopt_parent(span: &tracing::Span, headers: &dyn Headers) {
    if !enabled() || headers.get("traceparent").is_none() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Extract(headers));
    // Only fails for a span no layer records, where there is nothing to join.
    let _ = span.set_parent(cx);
}

/// Header lookup by lower-cased name: the CheckRequest's map, gRPC metadata, axum's `HeaderMap`.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&str>;
}

impl Headers for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

impl Headers for axum::http::HeaderMap {
    fn get(&self, name: &str) -> Option<&str> {
        axum::http::HeaderMap::get(self, name).and_then(|v| v.to_str().ok())
    }
}

impl Headers for tonic::metadata::MetadataMap {
    fn get(&self, name: &str) -> Option<&str> {
        tonic::metadata::MetadataMap::get(self, name).and_then(|v| v.to_str().ok())
    }
}

struct Extract<'a>(&'a dyn Headers);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(&key.to_ascii_lowercase())
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn off_unless_an_endpoint_or_the_exporter_says_otherwise() {
        assert!(!wanted(env(&[])).unwrap());
        assert!(!wanted(env(&[("OTEL_SERVICE_NAME", "x"), ("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])).unwrap());
        assert!(wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])).unwrap());
        assert!(wanted(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")])).unwrap());
        assert!(wanted(env(&[("OTEL_TRACES_EXPORTER", "otlp")])).unwrap());
        let none = [("OTEL_TRACES_EXPORTER", "none"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")];
        assert!(!wanted(env(&none)).unwrap());
        let disabled = [("OTEL_SDK_DISABLED", "true"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")];
        assert!(!wanted(env(&disabled)).unwrap());
    }

    #[test]
    fn a_protocol_or_exporter_we_cannot_honour_is_refused_by_name() {
        let http = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        assert!(wanted(env(&http)).unwrap_err().to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let grpc = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        assert!(wanted(env(&grpc)).unwrap());
        let signal = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ];
        assert!(wanted(env(&signal)).unwrap(), "the signal-specific variable wins");
        assert!(wanted(env(&[("OTEL_TRACES_EXPORTER", "zipkin")])).unwrap_err().to_string().contains("zipkin"));
    }

    #[test]
    fn a_traceparent_header_is_read_case_insensitively() {
        let mut h = HashMap::new();
        h.insert("traceparent".to_string(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string());
        let cx = TraceContextPropagator::new().extract(&Extract(&h));
        use opentelemetry::trace::TraceContextExt;
        assert_eq!(cx.span().span_context().trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
    }
}
