//! The gRPC listener's two services, routed by path prefix. tonic's own `Routes` is an axum `Router`:
//! every Check paid for a matched-path extension, a percent-decoded path and two boxed service clones,
//! about ten allocations and 5 % of a cached Check's instructions, to choose between two services.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::authz::grpc::AuthzService;

/// Health checks (`/grpc.health.v1.Health/...`) to tonic-health; everything else to [`AuthzService`], which
/// answers UNIMPLEMENTED to any path but `Check`.
pub struct GrpcRoutes<H> {
    pub authz: AuthzService,
    pub health: HealthServer<H>,
}

// Not derived: that would ask `H: Clone`, and the health service is shared behind an `Arc` whatever it is.
impl<H> Clone for GrpcRoutes<H> {
    fn clone(&self) -> Self {
        Self { authz: self.authz.clone(), health: self.health.clone() }
    }
}

/// `/grpc.health.v1.Health/`: the health service's path prefix.
fn is_health(path: &str) -> bool {
    let name = <HealthServer<()> as NamedService>::NAME;
    path.strip_prefix('/').and_then(|p| p.strip_prefix(name)).is_some_and(|rest| rest.starts_with('/'))
}

impl<H: Health> Service<http::Request<Body>> for GrpcRoutes<H> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if is_health(req.uri().path()) {
            self.health.call(req)
        } else {
            self.authz.call(req)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_health;

    #[test]
    fn only_the_health_service_path_goes_to_health() {
        assert!(is_health("/grpc.health.v1.Health/Check"));
        assert!(is_health("/grpc.health.v1.Health/Watch"));
        assert!(!is_health("/envoy.service.auth.v3.Authorization/Check"));
        assert!(!is_health("/grpc.health.v1.HealthX/Check"));
        assert!(!is_health("grpc.health.v1.Health/Check"));
    }
}
