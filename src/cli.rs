//! The command line: `serve`, `check-config`, `keygen`, `m2m status|refresh`. Exit codes: 0 ok, 1 runtime failure, 64 bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

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
    /// The shared M2M (client-credentials) tokens in Redis.
    M2m {
        #[command(subcommand)]
        command: M2mCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum M2mCommand {
    /// Per provider: is a token cached in Redis, and when does it expire (never the token itself).
    Status,
    /// Fetch a new token now, through the same lock the servers use.
    Refresh {
        /// Only this provider (default: every configured provider).
        provider: Option<String>,
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
        Command::M2m { command } => {
            let cfg = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", cli.config.display());
                    return ExitCode::from(EX_CONFIG);
                }
            };
            crate::telemetry::init_logs("text");
            m2m(&cfg, command)
        }
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
                let validators = crate::idp::from_config(&cfg).await;
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

fn m2m(cfg: &Config, command: M2mCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let result = rt.block_on(async {
        match command {
            M2mCommand::Status => crate::m2m::command::status(cfg, &mut out).await.map(|()| true),
            M2mCommand::Refresh { provider } => crate::m2m::command::refresh(cfg, provider.as_deref(), &mut out).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("m2m: {e}");
            ExitCode::FAILURE
        }
    }
}
