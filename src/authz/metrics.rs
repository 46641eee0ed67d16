//! The Check metrics as handles registered once per series: a check increments an atomic instead of
//! building a label vector and looking the series up in the recorder every time. Every series carries
//! `dry_run` ("false" when enforced, "true" when a dry run let the request through).

use std::sync::OnceLock;

use metrics::{Counter, Histogram};

use super::Deny;

static ALLOW: [OnceLock<Counter>; 2] = [const { OnceLock::new() }; 2];
static DENY: [[OnceLock<Counter>; Deny::ALL.len()]; 2] = [const { [const { OnceLock::new() }; Deny::ALL.len()] }; 2];
static DURATION: OnceLock<Histogram> = OnceLock::new();

fn label(dry_run: bool) -> &'static str {
    if dry_run {
        "true"
    } else {
        "false"
    }
}

/// `portcullis_check_total{decision="allow",reason="ok",dry_run=...}`.
pub fn allowed(dry_run: bool) -> &'static Counter {
    ALLOW[usize::from(dry_run)].get_or_init(|| {
        crate::telemetry::metrics();
        metrics::counter!("portcullis_check_total", "decision" => "allow", "reason" => "ok", "dry_run" => label(dry_run))
    })
}

/// `portcullis_check_total{decision="deny",reason=...,dry_run=...}`; a series appears on its first use.
pub fn denied(d: Deny, dry_run: bool) -> &'static Counter {
    DENY[usize::from(dry_run)][d as usize].get_or_init(|| {
        crate::telemetry::metrics();
        metrics::counter!("portcullis_check_total", "decision" => "deny", "reason" => d.reason(), "dry_run" => label(dry_run))
    })
}

/// `portcullis_check_duration_seconds`.
pub fn duration() -> &'static Histogram {
    DURATION.get_or_init(|| {
        crate::telemetry::metrics();
        metrics::histogram!("portcullis_check_duration_seconds")
    })
}
