//! The command line: `serve`, `check-config`, `keygen`. Exit codes: 0 ok, 1 runtime failure, 64 bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Stand-in until the Redis-shared M2M token manager is wired here: Bearer introspection and Graph calls
/// answer 503 (fail closed); `oidc` providers with client-authenticated introspection work.
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
    /// List or revoke a user's sessions.
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionsAction {
    /// One line per live session of the user (never a token, cookie or key).
    List {
        #[arg(long)]
        user: String,
    },
    /// Delete every session of the user.
    Revoke {
        #[arg(long)]
        user: String,
    },
}

const EX_CONFIG: u8 = 64;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen => {
            println!("{}", crate::crypto::generate_key());
            ExitCode::SUCCESS
        }
        Command::Sessions { action } => {
            let cfg = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", cli.config.display());
                    return ExitCode::from(EX_CONFIG);
                }
            };
            run_async(sessions(cfg, action))
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
            match rt.block_on(async { crate::server::serve(cfg).await }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "portcullis failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_async(fut: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn sessions(cfg: Config, action: SessionsAction) -> Result<(), String> {
    let redis = crate::store::Redis::connect(&cfg.redis).map_err(|e| e.to_string())?;
    let keys = crate::crypto::KeyRing::parse(&cfg.session.encryption_keys).map_err(|e| e.to_string())?;
    let store = crate::session::SessionStore::new(redis, std::sync::Arc::new(keys), &cfg.session);
    match action {
        SessionsAction::List { user } => {
            for s in store.user_sessions(&user).await.map_err(|e| format!("redis: {e}"))? {
                println!("{}", crate::admin::describe(&s));
            }
        }
        SessionsAction::Revoke { user } => {
            let key = crate::session::store::user_key(&user);
            let n = store.delete_indexed(&key).await.map_err(|e| format!("redis: {e}"))?;
            println!("revoked {n} session(s) of {user}");
        }
    }
    Ok(())
}
