//! The one integration-test binary (every extra binary relinks the whole graph). Each module starts the
//! real parts it needs through `harness`.

mod harness;

mod check;
mod cli;
mod e2e;
mod envoy;
mod idp;
mod login;
mod logs;
mod m2m;
mod sessions;
