//! The one place that assembles the configured providers, in dependency order, so nothing is bound late:
//! (a) each provider's transport (shared no-redirect client, timeout, its own circuit breaker, IdP metrics)
//! and discovery; (b) the M2M token client over that transport; (c) the Redis-shared M2M manager over those
//! clients; (d) the validators (Check path) and the login providers (`/oauth2/*`), both over the same
//! transport. `server`, the CLI, the test kit and the benches all build through [`build`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::{Config, ProviderKind};
use crate::delegate::Delegator;
use crate::idp::bearer::BearerVerifier;
use crate::idp::discovery::Discovery;
use crate::idp::provider::Provider;
use crate::idp::transport::{self, Transport};
use crate::idp::{coalesce, entra, oidc, Validator, Validators};
use crate::login::LoginProvider;
use crate::m2m::{ClientSettings, M2mManager, M2mSource, TokenClient, TokenEndpoint};
use crate::session::SessionStore;

/// What the configured providers contribute: validators for Check, clients for the login routes.
#[derive(Default)]
pub struct Providers {
    pub validators: Validators,
    pub login: BTreeMap<String, Arc<LoginProvider>>,
    /// The Redis-shared M2M manager, when [`build`] built one (its refresher is the server's to run).
    pub m2m: Option<Arc<M2mManager>>,
    /// Judges `Authorization: Bearer` tokens, when a provider for them can be named (`[bearer]`).
    pub bearer: Option<Arc<BearerVerifier>>,
    /// Delegated tokens (`portcullis.delegate`) through the same providers.
    pub delegator: Option<Arc<Delegator>>,
}

/// Where the providers' M2M tokens come from.
pub enum M2mChoice {
    /// The Redis-shared manager, one token-endpoint call per expiry across replicas (production).
    Shared,
    /// A given source (tests).
    Given(Arc<dyn M2mSource>),
    /// The running manager, given token clients built from this config (a config reload): its tokens,
    /// local cache and refresher carry on.
    Reuse(Arc<M2mManager>),
}

/// A provider's token endpoint: as configured, else discovered (through the provider's transport) on
/// first use, so a provider whose IdP is down at start-up gets its M2M token once the IdP is back.
struct ProviderTokenEndpoint {
    configured: Option<String>,
    transport: Arc<Transport>,
    discovery: Arc<Discovery>,
}

#[async_trait::async_trait]
impl TokenEndpoint for ProviderTokenEndpoint {
    async fn token_endpoint(&self) -> Result<String, String> {
        if let Some(configured) = &self.configured {
            return Ok(configured.clone());
        }
        let e = self.discovery.endpoints(&self.transport).await.map_err(|e| e.to_string())?;
        Ok(e.token_endpoint.clone())
    }
}

/// Builds every configured provider: `ping`/`oidc` revalidate by introspection, `entra` through Microsoft
/// Graph, each wrapped in the configured revalidation mode with single-flight. M2M tokens come from `m2m`;
/// refreshed tokens go to `store`. Discovery and keys are fetched now, concurrently; a provider whose IdP
/// is down at start-up still gets its validator (it fetches on first use and answers 503 until then). Only
/// a provider that cannot be built at all is left out, and its sessions are denied.
pub async fn build(cfg: &Config, m2m: M2mChoice, store: SessionStore) -> Providers {
    let mut out = Providers::default();
    let client = match transport::client(None) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the IdP HTTP client: every provider's sessions are denied");
            return out;
        }
    };

    // (a) Transports and discovery.
    struct Base<'a> {
        name: &'a str,
        cfg: &'a crate::config::ProviderConfig,
        issuer: String,
        transport: Arc<Transport>,
        discovery: Arc<Discovery>,
    }
    let mut bases = Vec::new();
    for (name, p) in &cfg.providers {
        let Some(issuer) = p.issuer() else {
            tracing::error!(provider = %name, "provider has no issuer: its sessions are denied");
            continue;
        };
        let client = match &p.ca {
            None => client.clone(),
            Some(ca) => match transport::client(Some(ca)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(provider = %name, error = %e, "cannot trust ca_file: its sessions are denied");
                    continue;
                }
            },
        };
        let transport = Arc::new(Transport::for_provider(client, name, p));
        let discovery = Arc::new(Discovery::new(&issuer, p));
        bases.push(Base { name, cfg: p, issuer, transport, discovery });
    }

    // (b) + (c) The M2M token clients over those transports, and the manager over the clients.
    let clients = || {
        let mut clients = HashMap::new();
        for b in &bases {
            let settings = ClientSettings::from_provider(b.cfg, "");
            let endpoint = Arc::new(ProviderTokenEndpoint {
                configured: b.cfg.token_endpoint.clone(),
                transport: b.transport.clone(),
                discovery: b.discovery.clone(),
            });
            clients.insert(b.name.to_string(), TokenClient::discovered(settings, b.transport.clone(), endpoint));
        }
        clients
    };
    let source: Arc<dyn M2mSource> = match m2m {
        M2mChoice::Given(s) => s,
        M2mChoice::Reuse(manager) => {
            manager.set_clients(clients());
            manager
        }
        M2mChoice::Shared => {
            let manager = M2mManager::new(store.redis().clone(), store.keys(), &cfg.m2m, clients())
                .sharing_ring(store.key_cell());
            let manager = Arc::new(manager);
            out.m2m = Some(manager.clone());
            manager
        }
    };

    // (d) Validators and login providers.
    let providers: Vec<_> = bases
        .iter()
        .map(|b| {
            let p = Provider::new(
                b.name,
                b.cfg,
                b.issuer.clone(),
                b.transport.clone(),
                b.discovery.clone(),
                source.clone(),
                store.clone(),
            );
            (Arc::new(p), b.transport.clone())
        })
        .collect();
    futures::future::join_all(providers.iter().map(|(p, _)| p.warm_up())).await;
    let names: Vec<&str> = providers.iter().map(|(p, _)| p.name.as_str()).collect();
    if let Some(name) = cfg.bearer.provider_name(&names) {
        if let Some((p, _)) = providers.iter().find(|(p, _)| p.name == name) {
            out.bearer = Some(Arc::new(BearerVerifier::new(p.clone(), &cfg.bearer, &cfg.revalidation)));
        }
    }
    out.delegator = Some(Delegator::new(providers.iter().map(|(p, _)| p.clone()), cfg.m2m.safety_margin));
    let redirect_uri = format!("{}/oauth2/callback", cfg.server.public_url.trim_end_matches('/'));
    for (p, transport) in providers {
        let inner: Arc<dyn Validator> = match p.cfg.kind {
            ProviderKind::Ping | ProviderKind::Oidc => Arc::new(oidc::OidcValidator::new(p.clone())),
            ProviderKind::Entra => Arc::new(entra::EntraValidator::new(p.clone())),
        };
        out.validators.insert(p.name.clone(), coalesce::wrap(inner, &cfg.revalidation));
        let login = LoginProvider::new(&p.name, &p.cfg, &p.issuer, &redirect_uri, p.clone(), transport);
        out.login.insert(p.name.clone(), Arc::new(login));
    }
    out
}
