//! The one integration-test binary (every extra binary relinks the whole graph). Each module starts the
//! real parts it needs through `harness`.

mod harness;

mod check;
mod m2m;
