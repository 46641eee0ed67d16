//! The browser-facing OAuth2/OIDC routes on the HTTP listener: login, callback, logout and back-channel
//! logout. Handlers are thin; the protocol steps are commented where they happen. `backend` is how an IdP
//! provider serves them; `crate::providers` builds the [`LoginProvider`]s, each over its provider's transport.

mod backend;
mod binding;
mod client;
mod failure;
mod failures;
mod flow;
mod logout;
mod logout_token;
mod origin;
mod pending;
pub mod provider;
pub mod redirect;
mod security;
mod trace;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

pub use provider::{LoginBackend, LoginEndpoints, LoginProvider};

use crate::config::{LoginConfig, SessionConfig};
use crate::session::SessionStore;
use crate::store::Redis;

/// How long a login may take between /oauth2/login and the callback.
pub const LOGIN_TTL_SECS: u64 = 600;

/// Everything the login routes share.
pub struct LoginState {
    pub redis: Redis,
    pub store: SessionStore,
    /// Swapped whole when a config reload rebuilds the providers (a new client secret).
    pub providers: arc_swap::ArcSwap<BTreeMap<String, Arc<LoginProvider>>>,
    pub session: SessionConfig,
    pub login: LoginConfig,
    /// Peers whose `X-Forwarded-For` is believed (`server.trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `server.public_url`'s origin: the only one a logout POST may come from.
    pub public_origin: String,
}

impl LoginState {
    /// The login providers as of now.
    pub fn providers(&self) -> Arc<BTreeMap<String, Arc<LoginProvider>>> {
        self.providers.load_full()
    }

    pub fn provider(&self, name: &str) -> Option<Arc<LoginProvider>> {
        self.providers.load().get(name).cloned()
    }
}

/// The `/oauth2/*` routes.
pub fn router(state: Arc<LoginState>) -> Router {
    let hsts = state.session.cookie_secure;
    Router::new()
        .route("/oauth2/login", get(flow::login))
        .route("/oauth2/callback", get(flow::callback))
        .route("/oauth2/logout", get(logout::confirm).post(logout::logout))
        .route("/oauth2/backchannel-logout", post(logout::backchannel))
        .layer(axum::middleware::from_fn_with_state(hsts, security::headers))
        .route_layer(axum::middleware::from_fn(trace::span))
        .with_state(state)
}

/// The login-binding cookie's name for a login's state (tests and tools look for it).
pub fn binding_cookie_name(cfg: &SessionConfig, state: &str) -> String {
    binding::name(cfg, state)
}

/// The origin of a public URL, as a browser sends it in `Origin`.
pub fn public_origin(public_url: &str) -> String {
    origin::of(public_url)
}
