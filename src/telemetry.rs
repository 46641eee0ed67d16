//! Logs (JSON by default) and the Prometheus recorder. Both are process-global, so they are installed
//! once; tests that start several servers share them.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

mod batch;
mod json;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_REV: &str = env!("PORTCULLIS_GIT_REV");

/// `0.1.0 (abc123def456)`
pub fn version_string() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| format!("{VERSION} ({GIT_REV})"))
}

type FilterHandle = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Set when the filter comes from the config (not `RUST_LOG`), so a reload can change the level.
static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Installs the tracing subscriber with the `info` level. Safe to call twice.
pub fn init_logs(format: LogFormat) {
    init_logs_at(format, "info");
}

/// Installs the log layer: `RUST_LOG` filters when set (and then wins over reloads), else `level`
/// (`server.log_level`). Safe to call twice.
pub fn init_logs_at(format: LogFormat, level: &str) {
    install(format, level, None);
}

/// [`init_logs_at`], plus OTLP span export when the `OTEL_*` variables ask for it. Must run inside the
/// tokio runtime (see [`crate::otel::tracer`]).
pub fn init_logs_and_traces(format: LogFormat, level: &str) -> Result<(), crate::otel::OtelError> {
    let tracer = crate::otel::tracer()?;
    install(format, level, tracer);
    Ok(())
}

/// The log layer sees events only (and no `portcullis.*` span, so log lines read as they did before
/// tracing), through a filter a reload can change; the OTel layer sees `portcullis` spans only, never an
/// event, whatever `RUST_LOG` says.
fn install(format: LogFormat, level: &str, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::reload;
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let env = from_env.unwrap_or_else(|| EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")));
    let (env, handle) = reload::Layer::new(env);
    let logs = env.and(filter_fn(|m| !(m.is_span() && m.name().starts_with("portcullis."))));
    // Lines are written in batches by a thread of their own (`batch`): not on the Check's thread, and no
    // wake-up per line. If the thread cannot start, lines are written where they are made.
    let (writer, guard) = batch::stderr();
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = if format == LogFormat::Text {
        fmt.with_filter(logs).boxed()
    } else {
        fmt.json().flatten_event(true).event_format(json::Lines::default()).with_filter(logs).boxed()
    };
    let spans = tracer.map(|t| {
        let only =
            filter_fn(|m| m.is_span() && m.target().starts_with("portcullis") && *m.level() <= tracing::Level::INFO);
        tracing_opentelemetry::layer().with_tracer(t).with_filter(only).boxed()
    });
    // Never `.with(None)`: an absent `Option` layer makes the registry build every span of every crate,
    // trace level included (h2 opens several per frame), which cost a cached check a tenth of its CPU.
    let registry = tracing_subscriber::registry().with(fmt);
    let installed = match spans {
        Some(spans) => registry.with(spans).try_init(),
        None => registry.try_init(),
    };
    if installed.is_ok() {
        *LOG_WRITER.lock().unwrap_or_else(|e| e.into_inner()) = guard;
        if !env_set {
            let _ = FILTER.set(handle);
        }
    }
}

/// The log writer thread's handle: dropping it writes out what is queued.
static LOG_WRITER: std::sync::Mutex<Option<batch::Guard>> = std::sync::Mutex::new(None);

/// Writes out every queued log line; call before the process exits (statics are never dropped).
pub fn flush_logs() {
    drop(LOG_WRITER.lock().unwrap_or_else(|e| e.into_inner()).take());
}

/// Applies a reloaded `server.log_level`; a no-op when `RUST_LOG` set the filter.
pub fn set_log_level(level: &str) {
    let Some(handle) = FILTER.get() else { return };
    match tracing_subscriber::EnvFilter::try_new(level) {
        Ok(f) => {
            if let Err(e) = handle.reload(f) {
                tracing::warn!(error = %e, "cannot change the log level");
            }
        }
        Err(e) => tracing::warn!(error = %e, "server.log_level: not a log filter"),
    }
}

/// The process's Prometheus handle, installing the recorder on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "portcullis_check_total",
        "Check decisions by decision, reason and dry_run (true: decided on a dry-run route, not enforced)"
    );
    describe_counter!(
        "portcullis_assertions_signed_total",
        "x-auth-jwt assertions signed (a cached one is reused per session and audience)"
    );
    describe_histogram!("portcullis_check_duration_seconds", Unit::Seconds, "Time to answer one Check");
    describe_counter!("portcullis_redis_errors_total", "Redis calls that failed or timed out");
    describe_counter!("portcullis_sessions_revoked_total", "Sessions deleted, by reason");
    describe_counter!(
        "portcullis_idp_requests_total",
        "Calls to identity providers by provider, kind (discovery, jwks, introspection, refresh, graph) and outcome (ok, refused, error, timeout, invalid_reply, circuit_open)"
    );
    describe_histogram!(
        "portcullis_idp_request_duration_seconds",
        Unit::Seconds,
        "Time of one IdP call, by provider and kind"
    );
    describe_gauge!("portcullis_circuit_state", "IdP circuit breaker per provider: 0 closed, 1 open, 2 half-open");
    describe_counter!(
        "portcullis_m2m_refresh_total",
        "M2M token-endpoint calls and follower give-ups, by provider and outcome (success, error, timeout, follower_timeout)"
    );
    describe_gauge!(
        "portcullis_m2m_token_expires_in_seconds",
        Unit::Seconds,
        "Seconds left on this replica's M2M token per provider (updated on fetch and each refresh round)"
    );
    describe_counter!(
        "portcullis_config_reload_total",
        "Configuration reloads (SIGHUP or a watched file changed), by result"
    );
    describe_gauge!(
        "portcullis_config_last_reload_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time the running configuration was loaded (at start and on each successful reload)"
    );
    describe_counter!(
        "portcullis_webhook_reviews_total",
        "Admission reviews answered by `portcullis webhook`, by outcome (injected, already_injected, disabled, ignored; not_injectable and malformed: admitted without the sidecars)"
    );
    describe_gauge!("portcullis_build_info", "Always 1; labels say what is running");
    metrics::gauge!("portcullis_build_info", "version" => VERSION, "revision" => GIT_REV).set(1.0);
}

#[cfg(test)]
mod tests {
    use crate::config::LogFormat;

    /// Without a tracer no span is built: neither portcullis's nor a library's trace-level ones (h2 opens
    /// several per frame). Every install in this process goes through the same function, so whichever test
    /// installed first, the answer is the same.
    #[test]
    fn without_traces_no_span_is_built() {
        super::init_logs_at(LogFormat::Text, "info");
        assert!(tracing::trace_span!(target: "h2::proto", "poll").is_disabled());
        assert!(tracing::info_span!(target: "portcullis::authz", "portcullis.check").is_disabled());
        assert!(tracing::enabled!(target: "portcullis::authz", tracing::Level::INFO), "info events still log");
    }
}
