//! A per-provider circuit breaker: after `threshold` consecutive failures it opens and answers "no" at
//! once for `open_for`, then lets exactly one probe through (half-open); the probe's outcome closes or
//! re-opens it. While open, the IdP receives no calls, so a struggling IdP is not hammered and checks
//! fail closed (503) in microseconds instead of waiting for timeouts.
//!
//! A small typed state machine rather than a crate: the `failsafe` crate fits the shape but brings its
//! own RNG/backoff stack and no hook for "one probe at a time"; this is the whole of what we need.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state; `gauge()` is the value of `portcullis_circuit_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::Open => 1.0,
            CircuitState::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The breaker refused the call.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("circuit open")]
pub struct CircuitOpen;

#[derive(Debug)]
pub struct Breaker {
    provider: String,
    threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

/// Permission for one call. Report its outcome with [`Permit::success`] or [`Permit::failure`]; a permit
/// dropped without either (the caller went away) frees a half-open probe slot without judging the IdP.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    done: bool,
}

impl Breaker {
    pub fn new(provider: &str, threshold: u32, open_for: Duration) -> Self {
        let b = Self {
            provider: provider.to_string(),
            threshold: threshold.max(1),
            open_for,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        };
        b.publish(CircuitState::Closed);
        b
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, s: CircuitState) {
        metrics::gauge!("portcullis_circuit_state", "provider" => self.provider.clone()).set(s.gauge());
    }

    /// The current state (an expired open period reads as half-open).
    pub fn state(&self) -> CircuitState {
        match &*self.lock() {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { until } if Instant::now() < *until => CircuitState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Whether [`Breaker::permit`] would refuse now: open, or half-open with its probe already out. Asks
    /// without taking the probe slot, so a caller can skip the work before a call that would be refused.
    pub fn refusing(&self) -> bool {
        match &*self.lock() {
            Inner::Closed { .. } => false,
            Inner::Open { until } => Instant::now() < *until,
            Inner::HalfOpen { probing } => *probing,
        }
    }

    /// Asks to make one call.
    pub fn permit(&self) -> Result<Permit<'_>, CircuitOpen> {
        let mut g = self.lock();
        match &mut *g {
            Inner::Closed { .. } => {}
            Inner::Open { until } => {
                if Instant::now() < *until {
                    return Err(CircuitOpen);
                }
                *g = Inner::HalfOpen { probing: true };
                drop(g);
                self.publish(CircuitState::HalfOpen);
                tracing::info!(provider = %self.provider, "circuit half-open: probing the IdP");
            }
            Inner::HalfOpen { probing } => {
                if *probing {
                    return Err(CircuitOpen);
                }
                *probing = true;
            }
        }
        Ok(Permit { breaker: self, done: false })
    }

    fn on_success(&self) {
        let mut g = self.lock();
        let was_closed = matches!(*g, Inner::Closed { .. });
        *g = Inner::Closed { failures: 0 };
        drop(g);
        if !was_closed {
            self.publish(CircuitState::Closed);
            tracing::info!(provider = %self.provider, "circuit closed: the IdP answers again");
        }
    }

    fn on_failure(&self) {
        let mut g = self.lock();
        let open = match &mut *g {
            Inner::Closed { failures } => {
                *failures += 1;
                *failures >= self.threshold
            }
            Inner::HalfOpen { .. } => true,
            // A call permitted before the breaker opened: it is open already.
            Inner::Open { .. } => false,
        };
        if open {
            *g = Inner::Open { until: Instant::now() + self.open_for };
            drop(g);
            self.publish(CircuitState::Open);
            tracing::warn!(provider = %self.provider, open_for = ?self.open_for, "circuit open: IdP calls fail fast");
        }
    }

    fn on_abandon(&self) {
        if let Inner::HalfOpen { probing } = &mut *self.lock() {
            *probing = false;
        }
    }
}

impl Permit<'_> {
    pub fn success(mut self) {
        self.done = true;
        self.breaker.on_success();
    }
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.on_failure();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.on_abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once() {
        let b = Breaker::new("t", 2, Duration::from_millis(0));
        b.permit().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Closed);
        b.permit().unwrap().success();
        b.permit().unwrap().failure();
        b.permit().unwrap().failure();
        // open_for = 0: the next caller is the probe, a concurrent one is refused.
        let probe = b.permit().unwrap();
        assert!(b.permit().is_err());
        probe.failure();
        let probe = b.permit().unwrap();
        probe.success();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn open_refuses_until_the_period_ends() {
        let b = Breaker::new("t", 1, Duration::from_secs(3600));
        b.permit().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.permit().is_err());
    }

    #[test]
    fn refusing_says_what_permit_would_do_without_taking_the_probe() {
        let b = Breaker::new("t", 1, Duration::from_millis(0));
        assert!(!b.refusing());
        b.permit().unwrap().failure();
        // Open period over: the next caller may probe, and asking does not take its slot.
        assert!(!b.refusing());
        assert!(!b.refusing());
        let probe = b.permit().unwrap();
        assert!(b.refusing(), "the probe is out");
        probe.success();
        assert!(!b.refusing());
        let b = Breaker::new("t", 1, Duration::from_secs(3600));
        b.permit().unwrap().failure();
        assert!(b.refusing());
    }

    #[test]
    fn abandoned_probe_frees_the_slot() {
        let b = Breaker::new("t", 1, Duration::from_millis(0));
        b.permit().unwrap().failure();
        drop(b.permit().unwrap());
        assert!(b.permit().is_ok());
    }
}
