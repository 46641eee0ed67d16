//! The one integration-test binary (every extra binary relinks the whole graph). Each module starts the
//! real parts it needs through `harness`.

// Test code: a failed expectation is a panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_testkit as harness;

mod assertion;
mod attacks;
mod audit;
mod bearer;
mod check;
mod cli;
mod client_cache;
mod delegate;
mod e2e;
mod envoy;
mod idp;
mod inject;
mod login;
mod login_attacks;
mod logs;
mod m2m;
mod reload;
mod rolling_update;
mod rollout;
mod rotation;
mod served;
mod sessions;
mod tls;
mod tracing;
