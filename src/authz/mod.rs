//! The Check path: a CheckRequest in, an allow with identity headers or a deny out.
//!
//! `request` reads what Envoy sent, `decision` applies the session rules and asks the provider,
//! `response` turns the outcome into Envoy's answer, `grpc` serves it (decoding with `wire`), `audit` writes one line per decision.

pub mod audit;
pub mod decision;
pub mod deny;
pub mod grpc;
mod metrics;
pub mod request;
pub mod response;
pub mod wire;

pub use decision::{Allowed, Authorizer, BearerUse};
pub use deny::{Answer, Deny};
pub use request::CheckInput;
