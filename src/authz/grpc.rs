//! The `envoy.service.auth.v3.Authorization` gRPC service, with the check metrics and the audit line.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::wire::{self, CheckResponse};
use super::{audit, metrics, response, Authorizer, CheckInput, Deny};

impl Authorizer {
    /// One Check of what the request holds (`None`: malformed), end to end: decide, answer, count, log;
    /// traced as `portcullis.check`. When Envoy's own tracing is on, its ext_authz span travels in the gRPC
    /// call's `metadata` and is the parent; else the W3C `traceparent` among the request's HTTP headers.
    async fn check_input(
        &self,
        input: Option<CheckInput<'_>>,
        metadata: &(dyn crate::otel::Headers + Sync),
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
        if metadata.get("traceparent").is_some() {
            crate::otel::adopt_parent(&span, metadata);
        } else if let Some(i) = &input {
            crate::otel::adopt_parent(&span, i);
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
        let security = input.security_headers();
        // Observed, not enforced: a dry-run route, unless the deny is one a dry run never lets through.
        let dry_run = input.dry_run(self.dry_run) && outcome.as_ref().err().is_none_or(|d| d.dry_runnable());
        let (decision, reason, resp) = match &outcome {
            Ok(a) => {
                metrics::allowed(dry_run).increment(1);
                ("allow", "ok", response::allow(a, &input, &self.names, &self.headers, &self.session, security))
            }
            Err(d) if dry_run => {
                metrics::denied(*d, true).increment(1);
                ("deny", d.reason(), response::pass(&input, &self.names, &self.session, security))
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

/// The tonic service over the live [`Authorizer`]: envoy-types' generated server, but with [`wire`]'s
/// messages (what the decision reads, without copies; an answer that copies no header name) instead of
/// envoy-types'.
#[derive(Clone)]
pub struct AuthzService(pub LiveAuthorizer);

impl tonic::server::NamedService for AuthzService {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

impl<B> Service<http::Request<B>> for AuthzService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/envoy.service.auth.v3.Authorization/Check" {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let check = Check(self.0.clone());
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<CheckResponse, wire::CheckRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(check, req).await)
        })
    }
}

/// The `Check` method.
struct Check(LiveAuthorizer);

impl tonic::server::UnaryService<wire::CheckRequest> for Check {
    type Response = CheckResponse;
    type Future = BoxFuture<Response<CheckResponse>, Status>;

    fn call(&mut self, request: Request<wire::CheckRequest>) -> Self::Future {
        let authz = self.0.load_full();
        Box::pin(async move {
            let input = CheckInput::from_wire(request.get_ref());
            let resp = authz.check_input(input, request.metadata(), crate::now()).await;
            Ok(Response::new(resp))
        })
    }
}
