//! One structured log line per decision, target `portcullis::audit`: who (user id, provider), what (method,
//! path without its query), the decision, its reason, whether it was a dry run, and the latency. Denies are
//! always written; allows at info, sampled by `server.audit_allow_sample` for busy routes. Never a cookie,
//! token or session id: the line holds none of them.

use std::time::Duration;

use super::CheckInput;

/// The log target operators route or filter on (`RUST_LOG=portcullis::audit=info`).
pub const TARGET: &str = "portcullis::audit";
/// Paths longer than this are cut: a client must not be able to make one log line arbitrarily long.
const MAX_PATH: usize = 512;

/// Who a decision was about, when a session was found.
#[derive(Debug, Clone, Default)]
pub struct Who {
    pub user_id: String,
    pub provider: String,
}

/// One decision, as the audit line states it.
pub struct Entry<'a> {
    pub input: &'a CheckInput<'a>,
    pub who: Option<&'a Who>,
    pub decision: &'static str,
    pub reason: &'static str,
    pub dry_run: bool,
    pub latency: Duration,
}

/// Writes the line: a deny always, an allow with probability `allow_sample` (0.0 ..= 1.0).
pub fn record(e: &Entry<'_>, allow_sample: f64) {
    let allow = e.decision == "allow";
    if allow && !sampled(allow_sample) {
        return;
    }
    let path = path_only(e.input.path);
    let (user, provider) = e.who.map_or(("-", "-"), |w| (w.user_id.as_str(), w.provider.as_str()));
    tracing::info!(
        target: TARGET,
        request_id = e.input.header("x-request-id").unwrap_or("-"),
        user,
        provider,
        method = %e.input.method,
        path,
        decision = e.decision,
        reason = e.reason,
        dry_run = e.dry_run,
        latency_ms = e.latency.as_secs_f64() * 1000.0,
        "decision"
    );
}

fn sampled(rate: f64) -> bool {
    rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate)
}

/// The path without query or fragment (they may carry tokens or personal data), at most [`MAX_PATH`] bytes.
fn path_only(p: &str) -> &str {
    let end = p.find(['?', '#']).unwrap_or(p.len());
    let mut cut = end.min(MAX_PATH);
    while !p.is_char_boundary(cut) {
        cut -= 1;
    }
    &p[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_never_reaches_the_audit_line() {
        assert_eq!(path_only("/reports?token=abc"), "/reports");
        assert_eq!(path_only("/a#frag?x"), "/a");
        assert_eq!(path_only("/plain"), "/plain");
        let long = format!("/{}", "é".repeat(600));
        assert!(path_only(&long).len() <= MAX_PATH);
    }

    #[test]
    fn sampling_is_all_none_or_some() {
        assert!((0..100).all(|_| sampled(1.0)));
        assert!(!(0..100).any(|_| sampled(0.0)));
        let hits = (0..10_000).filter(|_| sampled(0.5)).count();
        assert!((4_000..6_000).contains(&hits), "{hits}");
    }
}
