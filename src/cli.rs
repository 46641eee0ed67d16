//! The command line: `serve`, `check-config`, `keygen`. Exit codes: 0 ok, 1 runtime failure, 64 bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::m2m::{M2mError, M2mSource};

/// Stand-in until the Redis-shared M2M token manager is wired here: Bearer introspection and Graph calls
/// answer 503 (fail closed); `oidc` providers with client-authenticated introspection work.
struct NoM2m;

#[async_trait::async_trait]
impl M2mSource for NoM2m {
    async fn token(&self, _provider: &str) -> Result<String, M2mError> {
        Err(M2mError::Unavailable("no M2M token manager is configured in this build".into()))
    }
}

#[derive(Parser, Debug)]
#[command(name = "portcullis", version = crate::telemetry::version_string(), about = "Envoy ext_authz sidecar: session cookie to IdP-revalidated identity")]
pub struct Cli {
    /// Configuration file (TOML); every key can be overridden by PORTCULLIS__SECTION__KEY.
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG", default_value = "/etc/portcullis/portcullis.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve Check (gRPC) and the HTTP routes until SIGTERM/SIGINT.
    Serve,
    /// Load and validate the configuration, naming every bad key, then exit.
    CheckConfig,
    /// Print a new AES-256 session encryption key entry (`<kid>:<base64>`).
    Keygen,
}

const EX_CONFIG: u8 = 64;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen => {
            println!("{}", crate::crypto::generate_key());
            ExitCode::SUCCESS
        }
        Command::CheckConfig => match Config::load(&cli.config) {
            Ok(cfg) => {
                println!("{}: ok ({} provider(s))", cli.config.display(), cfg.providers.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", cli.config.display());
                ExitCode::from(EX_CONFIG)
            }
        },
        Command::Serve => {
            let cfg = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", cli.config.display());
                    return ExitCode::from(EX_CONFIG);
                }
            };
            crate::telemetry::init_logs(&cfg.server.log_format);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(async {
                // Refreshes write sessions through their own store handle on the same Redis and keys.
                let redis = crate::store::Redis::connect(&cfg.redis)?;
                let keys = Arc::new(crate::crypto::KeyRing::parse(&cfg.session.encryption_keys)?);
                let store = crate::session::SessionStore::new(redis, keys, &cfg.session);
                let m2m: Arc<dyn M2mSource> = Arc::new(NoM2m);
                let validators = crate::idp::from_config(&cfg, m2m, store).await;
                crate::server::serve(cfg, validators).await
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "portcullis failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
