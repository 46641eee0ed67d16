//! The `envoy.service.auth.v3.Authorization` gRPC service, with the check metrics and log line.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};

use super::{metrics, response, Authorizer, CheckInput, Deny};

impl Authorizer {
    /// One Check, end to end: read, decide, answer, count, log.
    pub async fn check(&self, req: &CheckRequest, now: i64) -> CheckResponse {
        let started = Instant::now();
        let input = CheckInput::from_request(req);
        let outcome = match &input {
            Some(i) => self.decide(i, now).await,
            None => Err(Deny::Malformed),
        };
        let input = input.unwrap_or_default();
        let request_id = input.header("x-request-id").unwrap_or("-");
        let resp = match &outcome {
            Ok(a) => {
                tracing::debug!(request_id, provider = %a.provider, "allow");
                metrics::allowed().increment(1);
                response::allow(a, &input, &self.headers, &self.session)
            }
            Err(d) => {
                tracing::info!(request_id, reason = d.reason(), method = %input.method, "deny");
                metrics::denied(*d).increment(1);
                response::deny(*d, &input, &self.session)
            }
        };
        metrics::duration().record(started.elapsed().as_secs_f64());
        resp
    }
}

/// The tonic service over a shared [`Authorizer`].
pub struct AuthzService(pub Arc<Authorizer>);

impl AuthzService {
    pub fn server(authz: Arc<Authorizer>) -> AuthorizationServer<Self> {
        AuthorizationServer::new(Self(authz))
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.0.check(request.get_ref(), crate::now()).await))
    }
}
