//! The `envoy.service.auth.v3.Authorization` gRPC service, with the check metrics and the audit line.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{audit, metrics, response, Authorizer, CheckInput, Deny};

impl Authorizer {
    /// One Check, end to end: read, decide, answer, count, log; traced as `portcullis.check`, a child of
    /// the W3C `traceparent` among the request's HTTP headers.
    pub async fn check(&self, req: &CheckRequest, now: i64) -> CheckResponse {
        self.check_under(req, None, now).await
    }

    /// [`Authorizer::check`], with the gRPC call's metadata: when Envoy's own tracing is on, its ext_authz
    /// span travels there and is the closer parent; the HTTP headers' `traceparent` is the fallback.
    pub async fn check_under(
        &self,
        req: &CheckRequest,
        metadata: Option<&(dyn crate::otel::Headers + Sync)>,
        now: i64,
    ) -> CheckResponse {
        let span = tracing::info_span!(
            "portcullis.check",
            otel.kind = "server",
            decision = tracing::field::Empty,
            reason = tracing::field::Empty,
            provider = tracing::field::Empty,
            dry_run = tracing::field::Empty,
        );
        let started = Instant::now();
        let input = CheckInput::from_request(req);
        match (metadata, &input) {
            (Some(m), _) if m.get("traceparent").is_some() => crate::otel::adopt_parent(&span, m),
            (_, Some(i)) => crate::otel::adopt_parent(&span, i.headers.as_ref()),
            _ => {}
        }
        self.check_traced(input, started, now).instrument(span).await
    }

    async fn check_traced(&self, input: Option<CheckInput<'_>>, started: Instant, now: i64) -> CheckResponse {
        let mut who = None;
        let outcome = match &input {
            Some(i) => self.decide(i, now, &mut who).await,
            None => Err(Deny::Malformed),
        };
        let input = input.unwrap_or_default();
        let outcome = match outcome {
            Ok(a) => self.assert(a, &input, now).await,
            Err(d) => Err(d),
        };
        let extra: &[(String, String)] = if input.security_headers() { &self.response_headers } else { &[] };
        // Observed, not enforced: a dry-run route, unless the deny is one a dry run never lets through.
        let dry_run = input.dry_run(self.dry_run) && outcome.as_ref().err().is_none_or(|d| d.dry_runnable());
        let (decision, reason, resp) = match &outcome {
            Ok(a) => {
                metrics::allowed(dry_run).increment(1);
                ("allow", "ok", response::allow(a, &input, &self.headers, &self.session, extra))
            }
            Err(d) if dry_run => {
                metrics::denied(*d, true).increment(1);
                ("deny", d.reason(), response::pass(&input, &self.headers, &self.session, extra))
            }
            Err(d) => {
                metrics::denied(*d, false).increment(1);
                ("deny", d.reason(), response::deny(*d, &input, &self.session))
            }
        };
        let latency = started.elapsed();
        let entry = audit::Entry { input: &input, who: who.as_ref(), decision, reason, dry_run, latency };
        audit::record(&entry, self.audit_allow_sample);
        metrics::duration().record(latency.as_secs_f64());
        let span = tracing::Span::current();
        if !span.is_disabled() {
            match &outcome {
                Ok(a) => span.record("decision", "allow").record("provider", a.provider.as_str()),
                Err(d) => span.record("decision", "deny").record("reason", d.reason()),
            };
            span.record("dry_run", dry_run);
        }
        resp
    }
}

/// The live [`Authorizer`]: a config reload swaps in a new one whole; a Check runs to its end on the one
/// it loaded, the next Check sees the new one. Loading is lock-free.
pub type LiveAuthorizer = Arc<arc_swap::ArcSwap<Authorizer>>;

/// The tonic service over the live [`Authorizer`].
pub struct AuthzService(pub LiveAuthorizer);

impl AuthzService {
    pub fn server(authz: LiveAuthorizer) -> AuthorizationServer<Self> {
        AuthorizationServer::new(Self(authz))
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let authz = self.0.load_full();
        let resp = authz.check_under(request.get_ref(), Some(request.metadata()), crate::now()).await;
        Ok(Response::new(resp))
    }
}
