//! The Check metrics as handles registered once per series: a check increments an atomic instead of
//! building a label vector and looking the series up in the recorder every time.

use std::sync::OnceLock;

use metrics::{Counter, Histogram};

use super::Deny;

static ALLOW: OnceLock<Counter> = OnceLock::new();
static DENY: [OnceLock<Counter>; Deny::ALL.len()] = [const { OnceLock::new() }; Deny::ALL.len()];
static DURATION: OnceLock<Histogram> = OnceLock::new();

/// `portcullis_check_total{decision="allow",reason="ok"}`.
pub fn allowed() -> &'static Counter {
    ALLOW.get_or_init(|| {
        crate::telemetry::metrics();
        metrics::counter!("portcullis_check_total", "decision" => "allow", "reason" => "ok")
    })
}

/// `portcullis_check_total{decision="deny",reason=...}`; a series appears on its first use, as before.
pub fn denied(d: Deny) -> &'static Counter {
    DENY[d as usize].get_or_init(|| {
        crate::telemetry::metrics();
        metrics::counter!("portcullis_check_total", "decision" => "deny", "reason" => d.reason())
    })
}

/// `portcullis_check_duration_seconds`.
pub fn duration() -> &'static Histogram {
    DURATION.get_or_init(|| {
        crate::telemetry::metrics();
        metrics::histogram!("portcullis_check_duration_seconds")
    })
}
